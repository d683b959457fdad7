//! Packet capture (`lb capture`): the switch and filters the controller writes into
//! `CAPTURE`, and the records the XDP program sends through `CAPTURE_RING`, one as a
//! packet enters the program and one as it leaves it (after the rewrite, with the verdict).

use crate::Addr;

/// How many bytes of a frame a record holds at most (the rest is counted in `len`).
pub const CAPTURE_SNAP_LEN: usize = 256;

/// `CaptureConfig::flags`: capture is on; the other bits say which filters apply.
pub const CAPTURE_ON: u32 = 1;
pub const CAPTURE_BY_VIP: u32 = 2;
pub const CAPTURE_BY_BACKEND: u32 = 4;
pub const CAPTURE_BY_CLIENT: u32 = 8;

/// `CaptureRecord::vip_id` and `backend_id` of a packet that reached no VIP or backend.
pub const CAPTURE_NONE: u32 = u32::MAX;

/// The one entry of `CAPTURE`: all zero is off. A filter whose bit is clear matches any packet.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    pub flags: u32,
    pub vip_id: u32,
    pub backend_id: u32,
    /// The client's address: the source of a packet to a VIP, the destination of a nat reply.
    pub client: Addr,
}

/// `CaptureRecord::direction`.
pub const CAPTURE_IN: u8 = 1;
pub const CAPTURE_OUT: u8 = 2;

/// `CaptureRecord::drop_reason` of an `XDP_DROP`: an index into [`CAPTURE_DROP_REASONS`],
/// named as the `reason` labels of the drop counters; zero for any other verdict.
pub const DROP_MALFORMED: u8 = 1;
pub const DROP_FRAGMENT: u8 = 2;
pub const DROP_IP_OPTIONS: u8 = 3;
pub const DROP_UNKNOWN_VIP_PORT: u8 = 4;
pub const DROP_ICMP_UNMATCHED: u8 = 5;
pub const DROP_INTERNAL: u8 = 6;
pub const DROP_NO_BACKEND: u8 = 7;
pub const DROP_NO_ROUTE: u8 = 8;
pub const DROP_NAT_PORTS_EXHAUSTED: u8 = 9;
pub const DROP_FLOW_TABLE_FULL: u8 = 10;
pub const DROP_NO_NEIGHBOUR: u8 = 11;
pub const DROP_RATE_LIMITED_PACKETS: u8 = 12;
pub const DROP_RATE_LIMITED_NEW_FLOWS: u8 = 13;
pub const DROP_RATE_LIMITED_SOURCES: u8 = 14;

pub const CAPTURE_DROP_REASONS: [&str; 15] = [
    "",
    "malformed",
    "fragment",
    "ip_options",
    "unknown_vip_port",
    "icmp_unmatched",
    "internal",
    "no_backend",
    "no_route",
    "nat_ports_exhausted",
    "flow_table_full",
    "no_neighbour",
    "packet_limit",
    "new_flow_limit",
    "source_limit",
];

/// A record of `CAPTURE_RING`: the first `cap_len` bytes of a frame of `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureRecord {
    /// When the program saw it (CLOCK_MONOTONIC).
    pub ns: u64,
    pub len: u32,
    pub cap_len: u32,
    /// The interface it came in on.
    pub ifindex: u32,
    pub vip_id: u32,
    pub backend_id: u32,
    pub direction: u8,
    /// The XDP action (`XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3, `XDP_REDIRECT` 4).
    pub verdict: u8,
    pub drop_reason: u8,
    pub _pad: u8,
    pub data: [u8; CAPTURE_SNAP_LEN],
}

impl Default for CaptureRecord {
    fn default() -> Self {
        Self {
            ns: 0,
            len: 0,
            cap_len: 0,
            ifindex: 0,
            vip_id: CAPTURE_NONE,
            backend_id: CAPTURE_NONE,
            direction: 0,
            verdict: 0,
            drop_reason: 0,
            _pad: 0,
            data: [0; CAPTURE_SNAP_LEN],
        }
    }
}

impl CaptureRecord {
    /// The captured bytes.
    pub fn frame(&self) -> &[u8] {
        &self.data[..(self.cap_len as usize).min(CAPTURE_SNAP_LEN)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counters, GlobalStats, VipStats};

    /// Capture names a drop as the drop counters label it: each name is one of their
    /// `reason` (or rate limits' `limit`) labels, so a renamed counter can't leave it behind.
    #[test]
    fn drop_reasons_are_the_drop_counters_labels() {
        let labels = || VipStats::COUNTERS.iter().chain(GlobalStats::COUNTERS).filter_map(|c| c.label);
        for reason in &CAPTURE_DROP_REASONS[1..] {
            assert!(
                labels().any(|(key, value)| matches!(key, "reason" | "limit") && value == *reason),
                "{reason:?} labels no drop counter"
            );
        }
    }
}
