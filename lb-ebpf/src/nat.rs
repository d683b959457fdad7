//! nat: the balancer-side port of a new flow, and replies translated back to the client.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_smp_processor_id, programs::XdpContext};
use lb_common::*;

use crate::flow_table;
use crate::forward::{forward, unsent_verdict};
use crate::keys::own_addr;
use crate::maps::*;
use crate::mem::{copy_addr, copy_words, words_eq};
use crate::packet::{TCP_FIN, TCP_RST};
use crate::parse::{Headers, set_flow_key_tail};
use crate::rewrite::rewrite;
use crate::signals::observe_reply;
use crate::stats::Reason;

/// Source-port candidates tried for a new nat flow before giving up: the one from the flow
/// hash, then the ones after this CPU's cursor for the backend (in this CPU's stretch of
/// the range, see `nat_cursor_start`).
pub const NAT_PORT_TRIES: u32 = 8;

/// Why a new nat flow got no port.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NoPort {
    /// Every candidate is held by a connection that is not over.
    InUse,
    /// The nat table is full.
    TableFull,
}

/// `E2BIG`: what an insert into a full hash map fails with.
const E2BIG: i32 = 7;

/// Picks the balancer-side source port of the nat flow `s.nat` towards `backend` and
/// records the reverse entry. The first candidate comes from the flow hash (so a flow whose entry was swept
/// while idle finds its port again); the others follow this CPU's cursor, which trails the
/// oldest ports it took, the likeliest to be free again. Each CPU's cursor starts in a
/// stretch of its own: cursors that all started at 0 walked into each other's ports, held
/// in TIME_WAIT, and refused new flows with most of the range free.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn reserve_nat_port(s: &mut Scratch, backend_id: u32, backend: &Backend, now: u64) -> Result<u16, NoPort> {
    let settings = SETTINGS.get(0).ok_or(NoPort::InUse)?;
    let span = (settings.nat_port_max as u32).wrapping_sub(settings.nat_port_min as u32) + 1;
    if span == 0 || span > 0x1_0000 {
        return Err(NoPort::InUse);
    }
    let cursor = NAT_PORT_CURSORS.get_ptr_mut(backend_id).ok_or(NoPort::InUse)?;
    // SAFETY: this CPU's value.
    let cursor = unsafe { &mut *cursor };
    let hashed = flow_hash(&s.nat.client, !settings.hash_seed);
    copy_addr(&mut s.reply.src, &backend.addr);
    copy_addr(&mut s.reply.dst, own_addr(settings, backend.family));
    set_flow_key_tail(&mut s.reply, backend.port, 0, s.nat.client.proto, backend.family);
    let mut full = false;
    // Where this CPU's candidates start: found once, at the first fallback (most new flows
    // take their hashed port and never need it).
    let mut fallback = 0;
    for i in 0..NAT_PORT_TRIES {
        if i == 1 {
            // SAFETY: a helper without arguments.
            let cpu = unsafe { bpf_get_smp_processor_id() };
            fallback = nat_cursor_start(cpu, span).wrapping_add(*cursor);
        }
        let offset = if i == 0 { hashed } else { fallback.wrapping_add(i) };
        let port = (settings.nat_port_min as u32 + offset % span) as u16;
        s.reply.dport = port;
        let inserted = match NAT.insert(&s.reply, &s.nat, BPF_NOEXIST as u64) {
            Ok(()) => true,
            Err(e) => {
                full |= e == -E2BIG;
                take_over(s, port, now, settings)
            }
        };
        if inserted {
            if i > 0 {
                *cursor = cursor.wrapping_add(i);
            }
            return Ok(port);
        }
    }
    *cursor = cursor.wrapping_add(NAT_PORT_TRIES);
    Err(if full { NoPort::TableFull } else { NoPort::InUse })
}

/// Takes the port in `s.reply` from the reverse entry that holds it, if that entry is this
/// flow's own or its connection is over: the old connection's flow entry goes first, so
/// that no entry is left to send packets with the port once the new one has it.
#[inline(always)]
fn take_over(s: &mut Scratch, port: u16, now: u64, settings: &Settings) -> bool {
    let Some(held) = NAT.get_ptr_mut(&s.reply) else {
        return false;
    };
    // SAFETY: a map value, alive while the program runs.
    let held = unsafe { &*held };
    let detached = held.backend & NAT_DETACHED != 0;
    if !detached && words_eq(&held.client, &s.nat.client) {
        // The same client flow, picked again (its entry was swept, or the insert lost).
        return NAT.insert(&s.reply, &s.nat, 0).is_ok();
    }
    let flow =
        flow_table::get(&held.client).filter(|f| !detached && f.nat_port == port && f.backend_id == held.backend_id);
    let conn = match flow {
        Some(flow) => Conn::of_flow(flow).with_reverse(held),
        // Detached, or its flow entry is gone: what it knows itself.
        None => Conn::of_reverse(held),
    };
    if now < conn.deadline(&settings.timeouts) {
        return false;
    }
    if flow.is_some() {
        flow_table::remove(&held.client);
    }
    let backend_id = held.backend_id;
    let taken = NAT.insert(&s.reply, &s.nat, 0).is_ok();
    if taken && let Some(stats) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        unsafe { (*stats).nat_ports_taken_over += 1 };
    }
    taken
}

/// Backend -> balancer: translate a nat reply back to the client's view and forward it.
/// Anything else to the balancer's own address is the kernel's, as are late replies of a
/// connection whose 4-tuple a new one took over (detached).
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn to_client(ctx: &XdpContext, s: &mut Scratch) -> Result<u32, Reason> {
    s.headers.flow_key_into(&mut s.reply);
    let nat = NAT.get_ptr_mut(&s.reply).ok_or(Reason::Passed)?;
    // SAFETY: a map value, alive while the program runs; the backend's side is written in
    // place (racing writers only repeat the same bits).
    let nat = unsafe { &mut *nat };
    if nat.backend & NAT_DETACHED != 0 {
        return Err(Reason::Passed);
    }
    let now = s.clock.now();
    track_backend(nat, &s.headers, now);
    copy_words(&mut s.nat, nat);
    s.mark = Mark { vip_id: s.nat.vip_id, backend_id: s.nat.backend_id, drop: 0, reply: true };
    let h = &s.headers;
    let vip_stats = VIP_STATS.get_ptr_mut(s.nat.vip_id).ok_or(Reason::Internal)?;
    // SAFETY: per-CPU value.
    let vip_stats = unsafe { &mut *vip_stats };
    vip_stats.reply_packets += 1;
    vip_stats.reply_bytes += h.frame_len as u64;
    if let Some(b) = BACKEND_STATS.get_ptr_mut(s.nat.backend_id) {
        // SAFETY: per-CPU value.
        let b = unsafe { &mut *b };
        b.reply_packets += 1;
        b.reply_bytes += h.frame_len as u64;
    }
    if s.nat.watch & !s.nat.seen != 0 {
        observe_reply(ctx, s);
    }
    let h = &s.headers;
    let client = &s.nat.client;
    copy_addr(&mut s.to.src, &client.dst);
    copy_addr(&mut s.to.dst, &client.src);
    s.to.sport = client.dport;
    s.to.dport = client.sport;
    rewrite(ctx, h, &s.to)?;
    Ok(forward(ctx, h, &s.nat.client.src, None)
        .unwrap_or_else(|unsent| unsent_verdict(unsent, true, vip_stats, &mut s.mark.drop)))
}

/// Records what the backend's reply says: FIN (and whether it came before the client's,
/// which leaves the backend in TIME_WAIT), RST, the time.
#[inline(always)]
fn track_backend(nat: &mut NatState, h: &Headers, now: u64) {
    if h.proto == PROTO_TCP && h.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        record_backend_close(nat, h.tcp_flags);
    }
    // At most one store per tick: the clock is coarse.
    if nat.last_seen_ns != now {
        nat.last_seen_ns = now;
    }
}

/// The backend sent FIN or RST. Whether its FIN came first is read from the client's side
/// (the flow entry), once.
// A BPF subprogram of its own: rare.
#[inline(never)]
fn record_backend_close(nat: &mut NatState, tcp_flags: u8) {
    if tcp_flags & TCP_RST != 0 {
        nat.backend |= SIDE_RST;
    }
    if tcp_flags & TCP_FIN != 0 && nat.backend & SIDE_FIN == 0 {
        let client_closed = flow_table::get(&nat.client).is_some_and(|f| f.client & SIDE_FIN != 0);
        nat.backend |= if client_closed { SIDE_FIN } else { SIDE_FIN | SIDE_CLOSED_FIRST };
    }
}
