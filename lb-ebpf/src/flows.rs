//! The flow table's side of connection tracking: what the client's packets say about their
//! connection, whether an entry still holds its connection when a SYN (or a UDP datagram)
//! arrives on its 4-tuple, and what a new connection leaves of the one it replaces.

use lb_common::*;

use crate::keys::own_addr;
use crate::maps::{BACKENDS, NAT, Scratch};
use crate::mem::{copy_addr, words_eq};
use crate::packet::{TCP_FIN, TCP_RST, TCP_SYN};
use crate::parse::{Headers, set_flow_key_tail};

/// The backend of the packet's flow entry, if the packet belongs to the connection the
/// entry holds; `None` when it starts a new one (or the backend can't have it).
#[inline(always)]
pub fn follow(s: &mut Scratch, flow: &mut FlowState, settings: &Settings, now: u64) -> Option<&'static Backend> {
    let backend = BACKENDS.get(flow.backend_id)?;
    if backend.flags & BACKEND_ACTIVE == 0 {
        return None;
    }
    let syn = s.headers.is_syn();
    // A SYN is a new connection reusing the 4-tuple: it goes by the backend's state now.
    if syn && backend.flags & BACKEND_SERVING == 0 {
        return None;
    }
    let due = syn || (flow.state == FLOW_UDP && now >= Conn::of_flow(flow).deadline(&settings.timeouts));
    if due && is_over(s, flow, backend, settings, now) {
        return None;
    }
    track_client(flow, &s.headers, now);
    Some(backend)
}

/// Records what the client's packet says: the end of the handshake, FIN, RST, the time.
#[inline(always)]
fn track_client(flow: &mut FlowState, h: &Headers, now: u64) {
    if h.proto == PROTO_TCP {
        let flags = h.tcp_flags;
        if flow.state == FLOW_SYN && flags & TCP_SYN == 0 {
            flow.state = FLOW_ESTABLISHED;
        }
        let sent = if flags & TCP_FIN != 0 { SIDE_FIN } else { 0 } | if flags & TCP_RST != 0 { SIDE_RST } else { 0 };
        if sent & !flow.client != 0 {
            flow.client |= sent;
        }
    }
    // At most one store per tick: the clock is coarse.
    if flow.last_seen_ns != now {
        flow.last_seen_ns = now;
    }
}

/// A SYN (or a UDP datagram) on an existing entry: whether the connection that holds the
/// entry is over, so that the packet starts a new one. Looks at the backend's side of a
/// nat connection too, which only its reverse entry knows (the backend may have reset or
/// closed it, or kept a UDP flow alive with replies).
// A BPF subprogram of its own: rare, and its stack frame is not added to its siblings'.
#[inline(never)]
fn is_over(s: &mut Scratch, flow: &FlowState, backend: &Backend, settings: &Settings, now: u64) -> bool {
    let syn = s.headers.is_syn();
    let timeouts = &settings.timeouts;
    let mut conn = Conn::of_flow(flow);
    let over = (syn && conn.is_ending()) || now >= conn.deadline(timeouts);
    if flow.nat_port == 0 || !(syn || over) {
        return over;
    }
    if let Some(nat) = reverse_of(s, flow, backend, settings) {
        conn = conn.with_reverse(nat);
    }
    (syn && conn.is_ending()) || now >= conn.deadline(timeouts)
}

/// The reverse entry of the nat flow entry `flow` (keyed in `s.reply`), if it still names
/// the flow `s.flow`.
#[inline(always)]
fn reverse_of(
    s: &mut Scratch,
    flow: &FlowState,
    backend: &Backend,
    settings: &Settings,
) -> Option<&'static mut NatState> {
    copy_addr(&mut s.reply.src, &backend.addr);
    copy_addr(&mut s.reply.dst, own_addr(settings, backend.family));
    set_flow_key_tail(&mut s.reply, backend.port, flow.nat_port, s.flow.proto, backend.family);
    let nat = NAT.get_ptr_mut(&s.reply)?;
    // SAFETY: a map value, alive while the program runs; fields are read and written in
    // place (racing writers only repeat the same bits).
    let nat = unsafe { &mut *nat };
    (nat.backend & NAT_DETACHED == 0 && words_eq(&nat.client, &s.flow)).then_some(nat)
}

/// A new connection replaces the nat flow entry `old` of the same 4-tuple: its reverse
/// entry keeps its port until the old connection's own deadline (a backend that closed
/// first holds the old 4-tuple in TIME_WAIT), judged from the client's side copied into it.
// A BPF subprogram of its own: rare, and its stack frame is not added to its siblings'.
#[inline(never)]
pub fn detach(s: &mut Scratch, old: &FlowState, settings: &Settings) {
    if old.nat_port == 0 {
        return;
    }
    // A backend that left the config has no address any more: its reverse entries are
    // judged as orphans (see `nat::reusable`).
    let Some(backend) = BACKENDS.get(old.backend_id).filter(|b| b.flags & BACKEND_ACTIVE != 0) else {
        return;
    };
    if let Some(nat) = reverse_of(s, old, backend, settings) {
        nat.client_state = old.state;
        nat.client_flags = old.client;
        if old.last_seen_ns > nat.last_seen_ns {
            nat.last_seen_ns = old.last_seen_ns;
        }
        nat.backend |= NAT_DETACHED;
    }
}

/// The `FLOW_*` state a new flow starts in: a TCP packet other than a SYN belongs to a
/// connection that exists already (its entry was swept after a long idle time, or ECMP
/// moved it here).
#[inline(always)]
pub fn initial_state(h: &Headers) -> u8 {
    if h.proto == PROTO_UDP {
        FLOW_UDP
    } else if h.is_syn() {
        FLOW_SYN
    } else {
        FLOW_ESTABLISHED
    }
}
