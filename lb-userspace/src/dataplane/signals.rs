//! The reader of the passive health signals the XDP program sends through a ring buffer.

use super::*;

/// The reader of `HEALTH_SIGNALS`; the owner polls its fd for readability.
pub struct HealthSignals(pub(super) RingBuf<MapData>);

impl HealthSignals {
    /// Every signal the program wrote since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<HealthSignal> {
        let mut signals = Vec::new();
        while let Some(record) = self.0.next() {
            if record.len() >= std::mem::size_of::<HealthSignal>() {
                // SAFETY: the program writes whole `HealthSignal`s (plain integers); the
                // read is unaligned-safe.
                signals.push(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<HealthSignal>()) });
            }
        }
        signals
    }
}

impl std::os::fd::AsRawFd for HealthSignals {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
