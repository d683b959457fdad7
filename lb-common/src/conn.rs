//! Connection tracking: the flow table's entries and nat's reverse entries, the states a
//! connection goes through, and when it is over. The XDP program and the controller's
//! sweep judge a connection with the same functions ([`Conn::deadline`]).
//!
//! Each side writes only what it sees: the client's packets update the flow entry
//! (`FlowState`), the backend's replies the reverse entry (`NatState`). A connection is the
//! two read together. A nat source port is reused only once the connection that holds it
//! is over (see `Conn::deadline`), so a reply can never reach another client.

use crate::FlowKey;

/// `FlowState::state`: what the client's packets showed of the connection.
/// TCP: the client's SYN was seen, and nothing else from it yet.
pub const FLOW_SYN: u8 = 0;
/// TCP: the client sent more than its SYN (or the flow was picked up mid-stream).
pub const FLOW_ESTABLISHED: u8 = 1;
/// UDP: no states, only a timeout.
pub const FLOW_UDP: u8 = 2;

/// `FlowState::client` and `NatState::backend`: what one side sent.
pub const SIDE_FIN: u8 = 1;
pub const SIDE_RST: u8 = 2;
/// `NatState::backend` only: the backend's FIN came before the client's, so the backend's
/// socket waits in TIME_WAIT, and the 4-tuple it knows (backend, balancer:port) must not
/// be given to another connection until `tcp_time_wait` has passed.
pub const SIDE_CLOSED_FIRST: u8 = 4;
/// `NatState::backend` only: the client's 4-tuple began a new connection (or went to
/// another backend), so no flow entry names this one any more; it holds its port until its
/// own deadline, judged from what it copied of the client's side (`client_state`,
/// `client_flags`).
pub const NAT_DETACHED: u8 = 8;

/// Value of `FLOWS`, keyed by the client's `FlowKey` (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub backend_id: u32,
    pub vip_id: u32,
    /// Source port on the balancer's address (nat mode only; 0 in dsr).
    pub nat_port: u16,
    /// `FLOW_*`.
    pub state: u8,
    /// `SIDE_*` bits the client sent.
    pub client: u8,
    /// When the flow began, in whole seconds of CLOCK_MONOTONIC_COARSE: its age in
    /// `lb flows` (u32 seconds last 136 years).
    pub started_s: u32,
    /// When a packet of the client was last seen (CLOCK_MONOTONIC_COARSE).
    pub last_seen_ns: u64,
}

/// Value of `NAT`, keyed by the reply's `FlowKey` (backend -> balancer address:nat_port):
/// the client-side flow to translate the reply back into, and the backend's side of the
/// connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatState {
    pub client: FlowKey,
    pub vip_id: u32,
    pub backend_id: u32,
    /// `WATCH_*` bits of the VIP when the flow began.
    pub watch: u8,
    /// `SEEN_*` bits: signals already reported for this flow (written in place).
    pub seen: u8,
    /// `SIDE_*` bits the backend sent, `SIDE_CLOSED_FIRST` and `NAT_DETACHED`.
    pub backend: u8,
    /// The flow entry's `state` and `client`, copied when the entry was detached.
    pub client_state: u8,
    pub client_flags: u8,
    pub _pad: [u8; 3],
    /// When a packet of the backend was last seen (when detached: of either side).
    pub last_seen_ns: u64,
}

/// How long a connection's entries live after its last packet, by state (`SETTINGS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// TCP: the client's SYN, not answered by more from the client.
    pub tcp_syn_ns: u64,
    pub tcp_established_ns: u64,
    /// TCP: one side sent FIN.
    pub tcp_fin_ns: u64,
    /// TCP: both sides sent FIN (the client first), or either sent RST.
    pub tcp_closed_ns: u64,
    /// TCP: both sides sent FIN, the backend first: its TIME_WAIT.
    pub tcp_time_wait_ns: u64,
    pub udp_ns: u64,
}

/// A connection as its entries describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub state: u8,
    /// `SIDE_*` bits the client sent.
    pub client: u8,
    /// `SIDE_*` bits the backend sent (nat only: dsr replies bypass the balancer).
    pub backend: u8,
    pub last_seen_ns: u64,
}

impl Conn {
    /// The connection as its flow entry alone shows it (dsr, or nat before its replies
    /// are looked at).
    #[inline(always)]
    pub fn of_flow(flow: &FlowState) -> Self {
        Conn { state: flow.state, client: flow.client, backend: 0, last_seen_ns: flow.last_seen_ns }
    }

    /// The connection with its backend's side added.
    #[inline(always)]
    pub fn with_reverse(self, nat: &NatState) -> Self {
        Conn {
            backend: nat.backend,
            last_seen_ns: if nat.last_seen_ns > self.last_seen_ns { nat.last_seen_ns } else { self.last_seen_ns },
            ..self
        }
    }

    /// A reverse entry that no flow entry names (detached, or its flow entry is gone):
    /// what it copied of the client's side, and its own.
    #[inline(always)]
    pub fn of_reverse(nat: &NatState) -> Self {
        Conn { state: nat.client_state, client: nat.client_flags, backend: nat.backend, last_seen_ns: nat.last_seen_ns }
    }

    /// Either side sent FIN or RST: a SYN on this 4-tuple starts a new connection.
    #[inline(always)]
    pub fn is_ending(&self) -> bool {
        (self.client | self.backend) & (SIDE_FIN | SIDE_RST) != 0
    }

    /// When the connection is over if nothing more is seen of it: its entries may be
    /// removed, and its nat port given to another connection.
    #[inline(always)]
    pub fn deadline(&self, t: &FlowTimeouts) -> u64 {
        let sides = self.client | self.backend;
        let timeout = if self.state == FLOW_UDP {
            t.udp_ns
        } else if sides & SIDE_RST != 0 {
            t.tcp_closed_ns
        } else if self.client & self.backend & SIDE_FIN != 0 {
            if self.backend & SIDE_CLOSED_FIRST != 0 { t.tcp_time_wait_ns } else { t.tcp_closed_ns }
        } else if sides & SIDE_FIN != 0 {
            t.tcp_fin_ns
        } else if self.state == FLOW_ESTABLISHED {
            t.tcp_established_ns
        } else {
            t.tcp_syn_ns
        };
        self.last_seen_ns.saturating_add(timeout)
    }

    /// The name of the connection's state, as `lb status` and the metrics show it.
    pub fn state_name(&self) -> &'static str {
        let sides = self.client | self.backend;
        if self.state == FLOW_UDP {
            "udp"
        } else if sides & SIDE_RST != 0 || self.client & self.backend & SIDE_FIN != 0 {
            if self.backend & SIDE_CLOSED_FIRST != 0 && sides & SIDE_RST == 0 { "time_wait" } else { "closed" }
        } else if sides & SIDE_FIN != 0 {
            "fin"
        } else if self.state == FLOW_ESTABLISHED {
            "established"
        } else {
            "syn"
        }
    }
}

/// Every state [`Conn::state_name`] gives, in the order of a connection's life.
pub const CONN_STATE_NAMES: [&str; 6] = ["syn", "established", "fin", "closed", "time_wait", "udp"];

#[cfg(test)]
mod tests {
    use super::*;

    const T: FlowTimeouts = FlowTimeouts {
        tcp_syn_ns: 1,
        tcp_established_ns: 2,
        tcp_fin_ns: 3,
        tcp_closed_ns: 4,
        tcp_time_wait_ns: 5,
        udp_ns: 6,
    };

    fn conn(state: u8, client: u8, backend: u8) -> Conn {
        Conn { state, client, backend, last_seen_ns: 100 }
    }

    #[test]
    fn each_state_has_its_timeout_from_the_last_packet() {
        let cases = [
            (conn(FLOW_SYN, 0, 0), 101, "syn"),
            (conn(FLOW_ESTABLISHED, 0, 0), 102, "established"),
            (conn(FLOW_ESTABLISHED, SIDE_FIN, 0), 103, "fin"),
            (conn(FLOW_ESTABLISHED, 0, SIDE_FIN | SIDE_CLOSED_FIRST), 103, "fin"),
            (conn(FLOW_ESTABLISHED, SIDE_FIN, SIDE_FIN), 104, "closed"),
            (conn(FLOW_ESTABLISHED, SIDE_FIN, SIDE_FIN | SIDE_CLOSED_FIRST), 105, "time_wait"),
            (conn(FLOW_SYN, 0, SIDE_RST), 104, "closed"),
            (conn(FLOW_ESTABLISHED, SIDE_RST, SIDE_FIN | SIDE_CLOSED_FIRST), 104, "closed"),
            (conn(FLOW_UDP, 0, 0), 106, "udp"),
        ];
        for (c, deadline, name) in cases {
            assert_eq!((c.deadline(&T), c.state_name()), (deadline, name), "{c:?}");
            assert!(CONN_STATE_NAMES.contains(&name));
        }
    }

    #[test]
    fn a_connection_ends_with_a_fin_or_rst_from_either_side() {
        assert!(!conn(FLOW_ESTABLISHED, 0, 0).is_ending());
        assert!(conn(FLOW_ESTABLISHED, SIDE_FIN, 0).is_ending());
        assert!(conn(FLOW_ESTABLISHED, 0, SIDE_RST).is_ending());
    }

    #[test]
    fn both_sides_count_and_the_later_packet_decides() {
        let flow = FlowState { state: FLOW_ESTABLISHED, client: SIDE_FIN, last_seen_ns: 50, ..Default::default() };
        let nat = NatState { backend: SIDE_FIN | SIDE_CLOSED_FIRST, last_seen_ns: 70, ..Default::default() };
        let c = Conn::of_flow(&flow).with_reverse(&nat);
        assert_eq!(c.deadline(&T), 75);
        assert_eq!(Conn::of_flow(&flow).deadline(&T), 53, "the flow entry alone");
        let detached = NatState { client_state: FLOW_ESTABLISHED, client_flags: SIDE_FIN, ..nat };
        assert_eq!(Conn::of_reverse(&detached), c);
    }
}
