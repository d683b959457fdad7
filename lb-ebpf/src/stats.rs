//! Counting packets that leave the fast path, by reason.

use lb_common::*;

use crate::maps::GLOBAL_STATS;

/// Why a packet left the fast path; each maps to one `GlobalStats` counter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Passed,
    Malformed,
    Fragment,
    IpOptions,
    UnknownVipPort,
    IcmpUnmatched,
    Internal,
}

impl Reason {
    /// The reason as packet capture names a drop (`lb_common::CAPTURE_DROP_REASONS`).
    #[inline(always)]
    pub fn drop_code(self) -> u8 {
        match self {
            Reason::Passed => 0,
            Reason::Malformed => DROP_MALFORMED,
            Reason::Fragment => DROP_FRAGMENT,
            Reason::IpOptions => DROP_IP_OPTIONS,
            Reason::UnknownVipPort => DROP_UNKNOWN_VIP_PORT,
            Reason::IcmpUnmatched => DROP_ICMP_UNMATCHED,
            Reason::Internal => DROP_INTERNAL,
        }
    }
}

#[inline(always)]
pub fn count_global(reason: Reason) {
    if let Some(stats) = GLOBAL_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        let stats = unsafe { &mut *stats };
        let counter = match reason {
            Reason::Passed => &mut stats.passed,
            Reason::Malformed => &mut stats.drop_malformed,
            Reason::Fragment => &mut stats.drop_fragment,
            Reason::IpOptions => &mut stats.drop_ip_options,
            Reason::UnknownVipPort => &mut stats.drop_unknown_vip_port,
            Reason::IcmpUnmatched => &mut stats.drop_icmp_unmatched,
            Reason::Internal => &mut stats.drop_internal,
        };
        *counter += 1;
    }
}
