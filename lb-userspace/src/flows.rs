//! The sweep of the flow and nat tables: which entries belong to connections that are
//! over (the packet path removes such entries only when it needs their port or 4-tuple),
//! and what the live ones add up to (flows per state, nat ports per backend). Plain Rust
//! over the tables' contents, judged with the packet path's own rule (`Conn::deadline`).

use std::collections::{BTreeMap, HashMap};

use lb_common::{CONN_STATE_NAMES, Conn, FlowKey, FlowState, FlowTimeouts, NAT_DETACHED, NatState};
use serde::{Deserialize, Serialize};

/// What one sweep found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Entries of connections that are over: flow entries first, then reverse entries
    /// (so no flow entry is left to send packets with a port that could be reused).
    pub over_flows: Vec<(FlowKey, FlowState)>,
    pub over_nat: Vec<(FlowKey, NatState)>,
    pub summary: FlowSummary,
}

/// The live entries, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowSummary {
    /// By VIP id: flows per state (`CONN_STATE_NAMES`).
    pub by_vip: BTreeMap<u32, StateCounts>,
    /// By backend id.
    pub by_backend: BTreeMap<u32, BackendFlows>,
    /// By (VIP id, backend id): the connections still open, neither closed nor in
    /// TIME_WAIT; what a drain waits for.
    pub open_by_vip_backend: BTreeMap<(u32, u32), u64>,
}

/// Flows in each state of `CONN_STATE_NAMES`, in that order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts(pub [u64; CONN_STATE_NAMES.len()]);

impl StateCounts {
    fn count(&mut self, conn: &Conn) {
        let i = CONN_STATE_NAMES.iter().position(|n| *n == conn.state_name()).expect("a known state");
        self.0[i] += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// (state name, flows) pairs.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        CONN_STATE_NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendFlows {
    /// Flows in the flow table on this backend, whatever their state.
    pub flows: u64,
    /// nat ports held towards it: its connections, and those whose guard (TIME_WAIT, the
    /// last packets of a closed connection) has not passed.
    pub nat_ports: u64,
}

/// Judges every entry at `now` (CLOCK_MONOTONIC_COARSE, as the packet path's clock).
pub fn sweep(flows: &[(FlowKey, FlowState)], nat: &[(FlowKey, NatState)], now: u64, t: &FlowTimeouts) -> Sweep {
    let by_key: HashMap<&FlowKey, &FlowState> = flows.iter().map(|(k, f)| (k, f)).collect();
    let mut result = Sweep::default();
    // Flow entries judged with their reverse entry: the connection, and whether it is over.
    let mut judged: HashMap<&FlowKey, (Conn, bool)> = HashMap::new();
    for (reply, n) in nat {
        let named = by_key.get(&n.client).filter(|f| is_reverse_of(reply, n, f));
        let conn = match named {
            Some(f) => Conn::of_flow(f).with_reverse(n),
            None => Conn::of_reverse(n),
        };
        let over = now >= conn.deadline(t);
        if let Some(f) = named {
            judged.insert(&n.client, (conn, over));
            if over {
                result.over_flows.push((n.client, **f));
            }
        }
        if over {
            result.over_nat.push((*reply, *n));
        } else {
            result.summary.by_backend.entry(n.backend_id).or_default().nat_ports += 1;
        }
    }
    for (key, f) in flows {
        let (conn, over) = judged.get(key).copied().unwrap_or_else(|| {
            // dsr, or a nat entry whose reverse entry is gone: the client's side alone.
            let conn = Conn::of_flow(f);
            (conn, now >= conn.deadline(t))
        });
        if over {
            if !judged.contains_key(key) {
                result.over_flows.push((*key, *f));
            }
            continue;
        }
        let summary = &mut result.summary;
        summary.by_vip.entry(f.vip_id).or_default().count(&conn);
        summary.by_backend.entry(f.backend_id).or_default().flows += 1;
        if !matches!(conn.state_name(), "closed" | "time_wait") {
            *summary.open_by_vip_backend.entry((f.vip_id, f.backend_id)).or_default() += 1;
        }
    }
    result
}

/// Whether the reverse entry (`reply`, `n`) is the one the flow entry `f` of `n.client`
/// names: not detached, on its nat port, towards its backend.
pub fn is_reverse_of(reply: &FlowKey, n: &NatState, f: &FlowState) -> bool {
    n.backend & NAT_DETACHED == 0 && f.nat_port == reply.dport && f.backend_id == n.backend_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{FLOW_ESTABLISHED, FLOW_SYN, FLOW_UDP, SIDE_CLOSED_FIRST, SIDE_FIN};

    const S: u64 = 1_000_000_000;
    const T: FlowTimeouts = FlowTimeouts {
        tcp_syn_ns: 30 * S,
        tcp_established_ns: 3600 * S,
        tcp_fin_ns: 120 * S,
        tcp_closed_ns: 10 * S,
        tcp_time_wait_ns: 60 * S,
        udp_ns: 30 * S,
    };

    fn key(sport: u16) -> FlowKey {
        FlowKey { sport, dport: 80, proto: 6, family: 4, ..Default::default() }
    }

    fn flow(nat_port: u16, state: u8, client: u8, last: u64) -> FlowState {
        FlowState { backend_id: 1, vip_id: 0, nat_port, state, client, last_seen_ns: last, ..Default::default() }
    }

    fn reverse(client: FlowKey, port: u16, backend: u8, last: u64) -> (FlowKey, NatState) {
        let reply = FlowKey { sport: 8080, dport: port, proto: 6, family: 4, ..Default::default() };
        (reply, NatState { client, backend_id: 1, backend, last_seen_ns: last, ..Default::default() })
    }

    #[test]
    fn a_closed_nat_connection_goes_as_a_pair_and_time_wait_holds_its_port() {
        // Closed by the client first at 100 s: over 10 s later.
        let flows = [(key(1), flow(20001, FLOW_ESTABLISHED, SIDE_FIN, 100 * S))];
        let nat = [reverse(key(1), 20001, SIDE_FIN, 100 * S)];
        let s = sweep(&flows, &nat, 109 * S, &T);
        assert!(s.over_flows.is_empty() && s.over_nat.is_empty());
        assert_eq!(s.summary.by_backend[&1], BackendFlows { flows: 1, nat_ports: 1 });
        assert_eq!(s.summary.by_vip[&0].named().find(|(n, _)| *n == "closed"), Some(("closed", 1)));
        assert!(s.summary.open_by_vip_backend.is_empty(), "closed: nothing left for a drain to wait for");
        let s = sweep(&flows, &nat, 110 * S, &T);
        assert_eq!((s.over_flows.len(), s.over_nat.len()), (1, 1));
        assert_eq!(s.summary, FlowSummary::default());
        // The backend closed first: its TIME_WAIT keeps the port for 60 s.
        let nat = [reverse(key(1), 20001, SIDE_FIN | SIDE_CLOSED_FIRST, 100 * S)];
        assert!(sweep(&flows, &nat, 159 * S, &T).over_nat.is_empty());
        assert_eq!(sweep(&flows, &nat, 160 * S, &T).over_nat.len(), 1);
    }

    #[test]
    fn replies_keep_a_connection_alive_that_the_client_is_quiet_on() {
        let flows = [(key(2), flow(20002, FLOW_UDP, 0, 0))];
        let nat = [reverse(key(2), 20002, 0, 25 * S)];
        assert!(sweep(&flows, &nat, 40 * S, &T).over_flows.is_empty());
        assert_eq!(sweep(&flows, &nat, 55 * S, &T).over_flows.len(), 1);
    }

    #[test]
    fn detached_and_orphaned_reverse_entries_go_by_themselves_and_dsr_flows_by_the_client() {
        // A new connection took the 4-tuple: the old reverse entry (detached, time-wait)
        // holds port 20003 while the new flow lives on port 20004.
        let mut old = reverse(key(3), 20003, SIDE_FIN | SIDE_CLOSED_FIRST | NAT_DETACHED, 100 * S);
        old.1.client_state = FLOW_ESTABLISHED;
        old.1.client_flags = SIDE_FIN;
        let flows = [(key(3), flow(20004, FLOW_ESTABLISHED, 0, 101 * S)), (key(4), flow(0, FLOW_SYN, 0, 101 * S))];
        let nat = [old, reverse(key(3), 20004, 0, 101 * S)];
        let s = sweep(&flows, &nat, 150 * S, &T);
        assert!(s.over_nat.is_empty());
        assert_eq!(s.over_flows.iter().map(|(k, _)| k.sport).collect::<Vec<_>>(), [4], "the dsr flow's syn timeout");
        assert_eq!(s.summary.by_backend[&1], BackendFlows { flows: 1, nat_ports: 2 });
        assert_eq!(s.summary.open_by_vip_backend, [((0, 1), 1)].into(), "the new connection is open");
        let s = sweep(&flows, &nat, 160 * S, &T);
        assert_eq!(s.over_nat.iter().map(|(k, _)| k.dport).collect::<Vec<_>>(), [20003], "time-wait ended");
        assert_eq!(s.summary.by_vip[&0].total(), 1);
    }
}
