//! Passive health signals: how nat backends answer connection attempts and requests.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use crate::maps::*;
use crate::mem::copy_addr;
use crate::packet::{TCP_ACK, TCP_RST, TCP_SYN};
use crate::parse::{http_status_class, parse_quoted, set_flow_key_tail};

/// Reports how a watched nat flow's backend answers: the answer to the connection attempt
/// (SYN-ACK, RST, or for UDP any reply) and the status class of the first HTTP response.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn observe_reply(ctx: &XdpContext, s: &mut Scratch) {
    let (h, nat) = (&s.headers, &s.nat);
    // `WATCH_*` and `SEEN_*` share their bit values: pending = watched and not yet seen.
    let pending = nat.watch & !nat.seen;
    let (mut kind, mut seen) = (0, 0);
    if pending & WATCH_CONNECT != 0 {
        if h.proto == PROTO_UDP || h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            (kind, seen) = (SIGNAL_CONNECTED, SEEN_CONNECT_ANSWER);
        } else if h.tcp_flags & TCP_RST != 0 {
            (kind, seen) = (SIGNAL_CONNECT_FAILED, SEEN_CONNECT_ANSWER);
        }
    }
    if kind == 0 && pending & WATCH_HTTP != 0 && h.proto == PROTO_TCP {
        match http_status_class(ctx, h) {
            Some(5) => (kind, seen) = (SIGNAL_HTTP_5XX, SEEN_HTTP_STATUS),
            Some(_) => (kind, seen) = (SIGNAL_HTTP_OK, SEEN_HTTP_STATUS),
            None => {}
        }
    }
    if kind == 0 {
        return;
    }
    if let Some(state) = NAT.get_ptr_mut(&s.reply) {
        // SAFETY: a map value; a racing writer of the same byte only repeats a signal.
        unsafe { (*state).seen |= seen };
    }
    signal(s.nat.backend_id, s.nat.vip_id, kind);
}

/// An ICMP destination unreachable sent to the balancer's own address may quote a packet it
/// sent to a backend: if that opened a watched nat flow that has no answer yet, the
/// connection attempt failed.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn observe_unreachable_backend(ctx: &XdpContext, s: &mut Scratch, inner_l3: usize) {
    let family = s.headers.family;
    let end = s.headers.l3 + s.headers.ip_len as usize;
    if !parse_quoted(ctx, family, inner_l3, end, &mut s.quoted) {
        return;
    }
    // The quoted packet went balancer -> backend; the flow's replies are keyed the other way.
    let q = &s.quoted;
    copy_addr(&mut s.reply.src, &q.dst);
    copy_addr(&mut s.reply.dst, &q.src);
    set_flow_key_tail(&mut s.reply, q.dport, q.sport, q.proto, family);
    let Some(state) = NAT.get_ptr_mut(&s.reply) else {
        return;
    };
    // SAFETY: a map value, read and written in place (see `observe_reply`).
    let (watch, seen, backend_id, vip_id) =
        unsafe { ((*state).watch, (*state).seen, (*state).backend_id, (*state).vip_id) };
    if watch & WATCH_CONNECT == 0 || seen & SEEN_CONNECT_ANSWER != 0 {
        return;
    }
    unsafe { (*state).seen = seen | SEEN_CONNECT_ANSWER };
    signal(backend_id, vip_id, SIGNAL_CONNECT_FAILED);
}

/// Counts a passive health signal for the backend and hands it to the controller.
#[inline(always)]
pub fn signal(backend_id: u32, vip_id: u32, kind: u32) {
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        let stats = unsafe { &mut *stats };
        match kind {
            SIGNAL_CONNECT_FAILED => stats.connect_failures += 1,
            SIGNAL_HTTP_5XX => stats.responses_5xx += 1,
            _ => {}
        }
    }
    if HEALTH_SIGNALS.output(HealthSignal { backend_id, vip_id, kind, _pad: 0 }, 0).is_err()
        && let Some(stats) = GLOBAL_STATS.get_ptr_mut(0)
    {
        // SAFETY: per-CPU value.
        unsafe { (*stats).health_signals_lost += 1 };
    }
}
