//! `[balancer.flow_timeouts]`: how long a connection's flow entries live after its last
//! packet, by state. The defaults follow what connection trackers use (Linux conntrack,
//! Cilium): long enough that a connection with traffic never loses its entry, short enough
//! that the tables don't fill with connections that ended without a word.

use std::time::Duration;

use lb_common::FlowTimeouts;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTimeoutsConfig {
    /// TCP, after the client's SYN until the client sends more (the handshake).
    #[serde(default = "default_tcp_syn", with = "humantime_serde")]
    pub tcp_syn: Duration,
    /// TCP, an open connection without traffic.
    #[serde(default = "default_tcp_established", with = "humantime_serde")]
    pub tcp_established: Duration,
    /// TCP, after one side's FIN (a half-closed connection).
    #[serde(default = "default_tcp_fin", with = "humantime_serde")]
    pub tcp_fin: Duration,
    /// TCP, after both FINs (the client's first) or a RST: room for the last ACK and
    /// retransmitted FINs. A nat port is free again after this.
    #[serde(default = "default_tcp_closed", with = "humantime_serde")]
    pub tcp_closed: Duration,
    /// TCP, after both FINs when the backend's came first: the backend's socket stays in
    /// TIME_WAIT (60 s on Linux), and the nat port must not carry a new connection to it
    /// before then.
    #[serde(default = "default_tcp_time_wait", with = "humantime_serde")]
    pub tcp_time_wait: Duration,
    /// UDP, since the last datagram either way.
    #[serde(default = "default_udp", with = "humantime_serde")]
    pub udp: Duration,
}

impl Default for FlowTimeoutsConfig {
    fn default() -> Self {
        Self {
            tcp_syn: default_tcp_syn(),
            tcp_established: default_tcp_established(),
            tcp_fin: default_tcp_fin(),
            tcp_closed: default_tcp_closed(),
            tcp_time_wait: default_tcp_time_wait(),
            udp: default_udp(),
        }
    }
}

/// Bounds of every timeout: at least a tick of the coarse clock the packet path reads
/// (10 ms at HZ=100), at most a month.
pub const MIN_FLOW_TIMEOUT: Duration = Duration::from_millis(10);
pub const MAX_FLOW_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

impl FlowTimeoutsConfig {
    /// Every timeout with its key.
    pub fn all(&self) -> [(&'static str, Duration); 6] {
        [
            ("tcp_syn", self.tcp_syn),
            ("tcp_established", self.tcp_established),
            ("tcp_fin", self.tcp_fin),
            ("tcp_closed", self.tcp_closed),
            ("tcp_time_wait", self.tcp_time_wait),
            ("udp", self.udp),
        ]
    }

    /// The timeouts as the packet path reads them.
    pub fn to_map(&self) -> FlowTimeouts {
        let ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        FlowTimeouts {
            tcp_syn_ns: ns(self.tcp_syn),
            tcp_established_ns: ns(self.tcp_established),
            tcp_fin_ns: ns(self.tcp_fin),
            tcp_closed_ns: ns(self.tcp_closed),
            tcp_time_wait_ns: ns(self.tcp_time_wait),
            udp_ns: ns(self.udp),
        }
    }
}

fn default_tcp_syn() -> Duration {
    Duration::from_secs(30)
}
fn default_tcp_established() -> Duration {
    Duration::from_secs(3600)
}
fn default_tcp_fin() -> Duration {
    Duration::from_secs(120)
}
fn default_tcp_closed() -> Duration {
    Duration::from_secs(10)
}
fn default_tcp_time_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_udp() -> Duration {
    Duration::from_secs(30)
}
