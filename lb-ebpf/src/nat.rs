//! nat: the balancer-side port of a new flow, and replies translated back to the client.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    programs::XdpContext,
};
use lb_common::*;

use crate::forward::forward;
use crate::keys::own_addr;
use crate::maps::*;
use crate::mem::{copy_addr, copy_words, words_eq};
use crate::parse::set_flow_key_tail;
use crate::rewrite::rewrite;
use crate::signals::observe_reply;
use crate::stats::Reason;

/// Source-port candidates tried for a new nat flow before giving up.
pub const NAT_PORT_TRIES: u32 = 4;
/// Candidate ports are spread over the range (a stride coprime to any span that is not a
/// multiple of it), so that taken ports don't cluster the way consecutive probes would.
pub const NAT_PORT_STRIDE: u32 = 0x9e37;

/// Picks the balancer-side source port of the nat flow `s.nat` and records the reverse
/// mapping; 0 when every candidate is taken. The first candidate comes from the flow hash,
/// so it is the same on every balancer host.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn reserve_nat_port(s: &mut Scratch, backend: &Backend) -> u32 {
    let Some(settings) = SETTINGS.get(0) else {
        return 0;
    };
    let span = (settings.nat_port_max as u32).wrapping_sub(settings.nat_port_min as u32) + 1;
    if span == 0 || span > 0x1_0000 {
        return 0;
    }
    let start = flow_hash(&s.nat.client, !settings.hash_seed);
    copy_addr(&mut s.reply.src, &backend.addr);
    copy_addr(&mut s.reply.dst, own_addr(settings, backend.family));
    set_flow_key_tail(&mut s.reply, backend.port, 0, s.nat.client.proto, backend.family);
    for i in 0..NAT_PORT_TRIES {
        s.reply.dport = (settings.nat_port_min as u32 + start.wrapping_add(i * NAT_PORT_STRIDE) % span) as u16;
        if NAT.insert(&s.reply, &s.nat, BPF_NOEXIST as u64).is_ok() {
            return s.reply.dport as u32;
        }
        // The port may already be ours: the same client flow picked again.
        // SAFETY: read in place, compared, not kept.
        if unsafe { NAT.get(&s.reply) }.is_some_and(|held| words_eq(&held.client, &s.nat.client)) {
            let _ = NAT.insert(&s.reply, &s.nat, 0);
            return s.reply.dport as u32;
        }
    }
    0
}

/// Backend -> balancer: translate a nat reply back to the client's view and forward it.
/// Anything else to the balancer's own address is the kernel's.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn to_client(ctx: &XdpContext, s: &mut Scratch) -> Result<u32, Reason> {
    s.headers.flow_key_into(&mut s.reply);
    // SAFETY: copied out; a concurrent LRU reuse only makes the copy stale.
    let Some(nat) = (unsafe { NAT.get(&s.reply) }) else {
        return Err(Reason::Passed);
    };
    copy_words(&mut s.nat, nat);
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
    let action = forward(ctx, h, &s.nat.client.src, None);
    if action == xdp_action::XDP_DROP {
        vip_stats.drop_no_route += 1;
    }
    Ok(action)
}
