//! Forwarding: the next hop from the kernel's FIB (cached per backend), the MAC
//! addresses, and XDP_TX or a redirect.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_redirect, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::*;

use crate::maps::NEXT_HOPS;
use crate::mem::addr_words;
use crate::parse::Headers;
use crate::rewrite::set_macs;
use crate::signals::signal;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
/// How long a cached next hop is used before the FIB is asked again.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;
/// An upper bound on the length of a jiffy: HZ is at least 20 on every Linux configuration.
pub const MAX_JIFFY_NS: u64 = 50_000_000;

/// The jiffies value below which a next hop with `remaining_ns` of its time to live left
/// (read from the coarse clock now) is certainly still fresh by that clock. The coarse
/// clock and jiffies advance together at the tick; two ticks of margin cover a tick that
/// falls between reading the one and the other, here and when the bound is used.
#[inline(always)]
pub fn fresh_until_jiffies(jiffies: u64, remaining_ns: u64) -> u64 {
    match (remaining_ns / MAX_JIFFY_NS).checked_sub(2) {
        Some(ticks) if ticks > 0 => jiffies + ticks,
        _ => 0,
    }
}

/// Why `forward` could not send a packet out itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// The FIB has a route, but the kernel has not resolved the next hop's MAC address.
    NoNeighbour,
    /// No route, or one the kernel would not forward on.
    NoRoute,
}

/// The verdict for a packet that `forward` could not send, counted in the VIP's `stats`;
/// a drop's reason goes to `drop` (packet capture's mark).
/// A nat packet is addressed to its next hop once rewritten, and an encapsulated one by its
/// outer header, so the kernel can forward it (`addressed`): it is passed, and the kernel
/// resolves the neighbour on the way. A dsr packet is still addressed to the VIP, which the
/// kernel would not send to the backend: it is dropped.
#[inline(always)]
pub fn unsent_verdict(unsent: Unsent, addressed: bool, stats: &mut VipStats, drop: &mut u8) -> u32 {
    match unsent {
        Unsent::NoNeighbour if addressed => {
            stats.passed_no_neighbour += 1;
            xdp_action::XDP_PASS
        }
        Unsent::NoNeighbour => {
            stats.drop_no_neighbour += 1;
            *drop = DROP_NO_NEIGHBOUR;
            xdp_action::XDP_DROP
        }
        Unsent::NoRoute => {
            stats.drop_no_route += 1;
            *drop = DROP_NO_ROUTE;
            xdp_action::XDP_DROP
        }
    }
}

/// How often one CPU asks the controller to resolve a backend's neighbour entry.
const NEIGHBOUR_ASK_INTERVAL_NS: u64 = 1_000_000_000;

/// Forwards towards a backend through its cached next hop, refreshing it when stale. When
/// the kernel has no neighbour entry for the backend's next hop, the controller is asked to
/// resolve it (XDP can't make the kernel do so).
#[inline(always)]
pub fn forward_to_backend(ctx: &XdpContext, h: &Headers, backend_id: u32, addr: &Addr) -> Result<u32, Unsent> {
    let Some(hop) = NEXT_HOPS.get_ptr_mut(backend_id) else {
        return forward(ctx, h, addr, None);
    };
    // SAFETY: per-CPU value.
    let hop = unsafe { &mut *hop };
    // SAFETY: plain helper call (inlined by the kernel: a load of jiffies_64).
    let jiffies = unsafe { bpf_jiffies64() };
    if jiffies < hop.fresh_until_jiffies {
        return Ok(transmit_hop(ctx, h, hop));
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let age = now.wrapping_sub(hop.refreshed_ns);
    if hop.refreshed_ns != 0 && age < NEXT_HOP_TTL_NS {
        hop.fresh_until_jiffies = fresh_until_jiffies(jiffies, NEXT_HOP_TTL_NS - age);
        return Ok(transmit_hop(ctx, h, hop));
    }
    let sent = forward(ctx, h, addr, Some(&mut *hop));
    if sent == Err(Unsent::NoNeighbour) && now.wrapping_sub(hop.neighbour_asked_ns) >= NEIGHBOUR_ASK_INTERVAL_NS {
        hop.neighbour_asked_ns = now;
        signal(backend_id, 0, SIGNAL_NEIGHBOUR_MISSING);
    }
    sent
}

/// Routes the (rewritten) packet towards `next` with the kernel's FIB and neighbour table,
/// fills in the MAC addresses and transmits it; the answer is also stored in `cache`.
/// A missing route or neighbour entry is for the caller to handle (see `unsent_verdict`).
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn forward(ctx: &XdpContext, h: &Headers, next: &Addr, cache: Option<&mut NextHop>) -> Result<u32, Unsent> {
    let mut fib_mem = core::mem::MaybeUninit::<FibParams>::uninit();
    let fib = fib_query(&mut fib_mem, h, next, ctx.ingress_ifindex() as u32);
    // SAFETY: the helper reads and writes only `fib`.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), fib, core::mem::size_of::<FibParams>() as i32, 0) };
    match rc as u32 {
        0 => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(Unsent::NoNeighbour),
        _ => return Err(Unsent::NoRoute),
    }
    if let Some(cache) = cache {
        // SAFETY: plain helper calls.
        let jiffies = unsafe { bpf_jiffies64() };
        cache.refreshed_ns = unsafe { bpf_ktime_get_coarse_ns() };
        cache.fresh_until_jiffies = fresh_until_jiffies(jiffies, NEXT_HOP_TTL_NS);
        cache.ifindex = fib.ifindex;
        copy_mac(&mut cache.smac, &fib.smac);
        copy_mac(&mut cache.dmac, &fib.dmac);
    }
    Ok(transmit(ctx, h, fib.ifindex, &fib.smac, &fib.dmac))
}

/// The FIB question for the packet of `h` towards `next`, as it came in on `ifindex`.
#[inline(always)]
pub fn fib_query<'a>(
    mem: &'a mut core::mem::MaybeUninit<FibParams>,
    h: &Headers,
    next: &Addr,
    ifindex: u32,
) -> &'a mut FibParams {
    // SAFETY: all-zero is a valid bpf_fib_lookup; zeroed by 4-byte word, its alignment
    // (volatile: not a memset call), before any field is set.
    let fib: &mut FibParams = unsafe {
        let words = mem.as_mut_ptr().cast::<u32>();
        for i in 0..core::mem::size_of::<FibParams>() / 4 {
            core::ptr::write_volatile(words.add(i), 0);
        }
        mem.assume_init_mut()
    };
    fib.l4_protocol = h.proto;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_1.tot_len = h.ip_len;
    if h.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = addr_words(&h.src)[0];
        fib.__bindgen_anon_4.ipv4_dst = addr_words(next)[0];
    } else {
        fib.family = AF_INET6;
        // SAFETY: both are 16 bytes.
        fib.__bindgen_anon_3.ipv6_src = addr_words(&h.src);
        fib.__bindgen_anon_4.ipv6_dst = addr_words(next);
    }
    fib
}

/// Copies a MAC address between 2-byte aligned arrays (`NextHop`, `bpf_fib_lookup`).
#[inline(always)]
pub fn copy_mac(to: &mut [u8; 6], from: &[u8; 6]) {
    let (to, from) = (to.as_mut_ptr().cast::<u16>(), from.as_ptr().cast::<u16>());
    for i in 0..3 {
        // SAFETY: 6 bytes each, 2-byte aligned as said above.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read(from.add(i))) };
    }
}

#[inline(always)]
pub fn transmit_hop(ctx: &XdpContext, h: &Headers, hop: &NextHop) -> u32 {
    transmit(ctx, h, hop.ifindex, &hop.smac, &hop.dmac)
}

/// The shortest Ethernet frame (without its FCS): shorter ones are padded up to it.
pub const MIN_FRAME_LEN: u32 = 60;

/// Cuts what the frame holds after its IP packet: bytes the sender put beyond the IP length,
/// which no length or checksum covers, are not sent on. The padding of a minimum frame stays.
#[inline(always)]
fn cut_to_packet(ctx: &XdpContext, h: &Headers) {
    let keep = ((h.l3 + h.ip_len as usize) as u32).max(MIN_FRAME_LEN);
    if h.frame_len > keep {
        // SAFETY: plain helper call; the frame is reached through `at` only, after it too.
        let _ = unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - h.frame_len as i32) };
    }
}

#[inline(always)]
pub fn transmit(ctx: &XdpContext, h: &Headers, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> u32 {
    cut_to_packet(ctx, h);
    set_macs(ctx, smac, dmac);
    if ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
}
