//! `tc_check_tunnel`, on the egress of the controller's `lb-check` device. A health check of
//! an ipip or gue VIP's backend is a real connection to the VIP, from the balancer's own
//! address, whose socket mark names the backend (`CHECK_TUNNELS`); the mark routes it to
//! `lb-check`. Here each of its packets is encapsulated for that backend as `xdp_lb`
//! encapsulates a client's (`encap::wrap`), and sent on towards it with the kernel's FIB
//! and neighbour table. The backend answers the balancer directly. So a backend that lost
//! its decapsulation or its VIP fails its check, though its plain port still answers.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_fib_lookup as FibParams,
        bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use lb_common::*;

use crate::encap::{Prepend, wrap};
use crate::forward::{AF_INET, fib_query};
use crate::maps::{CHECK_TUNNELS, SETTINGS};
use crate::packet::*;
use crate::parse::{Headers, L4, Parsed, parse};
use crate::stats::Reason;

impl Prepend for TcContext {
    #[inline(always)]
    fn prepend(&self, l3: usize, added: usize, outer_v4: bool, gue: bool) -> Result<(), Reason> {
        let encap = if outer_v4 { BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 } else { BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 };
        let udp = if gue { BPF_F_ADJ_ROOM_ENCAP_L4_UDP } else { 0 };
        // The kernel also sets the socket buffer's protocol and inner headers (for offloads).
        self.adjust_room(added as i32, BPF_ADJ_ROOM_MAC, (encap | udp) as u64).map_err(|_| Reason::Internal)?;
        write_be16(at(self, l3 - 2, 2)?, if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 });
        Ok(())
    }
}

/// A check's packet encapsulated and redirected towards its backend; anything else on the
/// device (no mark of a known check, not TCP) is dropped: nothing else should go there.
#[inline(always)]
pub fn send(ctx: &TcContext) -> i32 {
    try_send(ctx).unwrap_or(TC_ACT_SHOT)
}

#[inline(always)]
fn try_send(ctx: &TcContext) -> Result<i32, Reason> {
    // SAFETY: the live __sk_buff of this run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    // SAFETY: a map value, copied out before anything else runs.
    let tunnel = *unsafe { CHECK_TUNNELS.get(&mark) }.ok_or(Reason::Passed)?;
    let settings = SETTINGS.get(0).ok_or(Reason::Internal)?;
    // All of it in the linear part, where `parse` reads (a segment's payload may be in
    // pages of its own); a check's packets are small.
    ctx.pull_data(ctx.len()).map_err(|_| Reason::Malformed)?;
    let mut h = Headers::default();
    if !matches!(parse(ctx, &mut h)?, Parsed::Ip) || h.l4 != L4::Ports || h.proto != PROTO_TCP {
        return Err(Reason::Malformed);
    }
    // The flow's hash, as `xdp_lb` takes it: gue's source port and IPv6's flow label vary
    // with the check's connection as with a client's.
    let mut flow = FlowKey::default();
    h.flow_key_into(&mut flow);
    let hash = flow_hash(&flow, settings.hash_seed);
    wrap(ctx, &mut h, &tunnel.backend, settings, (tunnel.gue as u64) << 32 | hash as u64)?;
    // The way to the backend is the host's own: the check's mark would route it back here.
    // SAFETY: as above; tc programs may write the mark.
    unsafe { (*ctx.skb.skb).mark = 0 };
    let mut fib_mem = core::mem::MaybeUninit::<FibParams>::uninit();
    // SAFETY: the live __sk_buff of this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let fib = fib_query(&mut fib_mem, &h, &tunnel.backend.addr, ifindex);
    // SAFETY: the helper reads and writes only `fib`.
    let rc = unsafe {
        bpf_fib_lookup(ctx.skb.skb.cast(), fib, core::mem::size_of::<FibParams>() as i32, BPF_FIB_LOOKUP_SKIP_NEIGH)
    };
    if rc != 0 {
        return Err(Reason::Internal);
    }
    // The next hop the FIB named; the neighbour table gives (or resolves) its MAC address.
    // SAFETY: all-zero is a valid bpf_redir_neigh; the union's members are plain words.
    let mut next_hop: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    next_hop.nh_family = fib.family as u32;
    unsafe {
        if fib.family == AF_INET {
            next_hop.__bindgen_anon_1.ipv4_nh = fib.__bindgen_anon_4.ipv4_dst;
        } else {
            next_hop.__bindgen_anon_1.ipv6_nh = fib.__bindgen_anon_4.ipv6_dst;
        }
    }
    let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
    // SAFETY: plain helper call with a valid `next_hop`.
    Ok(unsafe { bpf_redirect_neigh(fib.ifindex, &mut next_hop, size, 0) } as i32)
}
