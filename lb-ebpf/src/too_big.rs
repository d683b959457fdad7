//! Packets that no longer fit once encapsulated: answered to the client with ICMP
//! "fragmentation needed" (IPv4) or ICMPv6 "packet too big", from the VIP, with the MTU
//! that fits, quoting the packet's IP header and first 8 bytes (as Katran does). Never
//! fragmented, never dropped silently.

use aya_ebpf::{
    helpers::{bpf_check_mtu, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::*;

use crate::encap::{addr_sum, move_l2_header, write_ipv4, write_ipv6};
use crate::maps::NEXT_HOPS;
use crate::packet::*;
use crate::parse::Headers;
use crate::rewrite::swap_macs;
use crate::stats::Reason;

/// What an answer quotes of the packet: its IP header and the first 8 bytes after it.
const QUOTED_V4: usize = IPV4_HLEN + 8;
const QUOTED_V6: usize = IPV6_HLEN + 8;
const ICMP_FRAG_NEEDED: u16 = 3 << 8 | 4;
const ICMPV6_PACKET_TOO_BIG: u16 = 2 << 8;

/// The MTU left for the inner packet when the packet of `h`, `added` bytes longer, does not
/// fit the interface it leaves by (the backend's cached next hop's, else the one it came
/// in on); `None` when it fits.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, h: &Headers, added: usize, backend_id: u32) -> Option<u32> {
    let ifindex = NEXT_HOPS.get(backend_id).map_or(0, |hop| hop.ifindex);
    let mut mtu = h.ip_len as u32 + added as u32;
    // SAFETY: plain helper call; `mtu` is this frame's L3 length in, the device's MTU out.
    let rc = unsafe { bpf_check_mtu(ctx.ctx.cast(), ifindex, &mut mtu, 0, 0) };
    (rc > 0).then(|| mtu.saturating_sub(added as u32))
}

/// Turns the frame into the ICMP answer to its client, with `mtu`; false if it can't.
// A BPF subprogram of its own, answering a bool (see `encap::encapsulate`).
#[inline(never)]
pub fn answer_too_big(ctx: &XdpContext, h: &Headers, mtu: u32) -> bool {
    answer(ctx, h, mtu).is_ok()
}

#[inline(always)]
fn answer(ctx: &XdpContext, h: &Headers, mtu: u32) -> Result<(), Reason> {
    let v4 = h.family == FAMILY_V4;
    let (ip_hlen, quoted) = if v4 { (IPV4_HLEN, QUOTED_V4) } else { (IPV6_HLEN, QUOTED_V6) };
    let added = ip_hlen + ICMP_HLEN;
    let (l3, frame_len) = (h.l3, h.frame_len as usize);
    // SAFETY (both): plain helper calls; the frame is reached through `at` only, after them.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(added as i32)) } != 0 {
        return Err(Reason::Internal);
    }
    let keep = l3 + added + quoted;
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - (frame_len + added) as i32) } != 0 {
        return Err(Reason::Internal);
    }
    // The Ethernet header (and VLAN tag) to the new start, and back to the client.
    move_l2_header(ctx, l3, added, if v4 { ETH_P_IP } else { ETH_P_IPV6 })?;
    if !swap_macs(ctx) {
        return Err(Reason::Malformed);
    }
    let icmp_len = (ICMP_HLEN + quoted) as u16;
    let icmp = at(ctx, l3 + ip_hlen, ICMP_HLEN)?;
    let mut sum = if v4 {
        write_ipv4(ctx, l3, 0, IPV4_HLEN as u16 + icmp_len, PROTO_ICMP, &h.dst, &h.src)?;
        write_be16(icmp, ICMP_FRAG_NEEDED);
        write_be16(icmp + 4, 0);
        write_be16(icmp + 6, mtu as u16);
        ICMP_FRAG_NEEDED as u32 + (mtu & 0xffff)
    } else {
        write_ipv6(ctx, l3, 0, 0, icmp_len, PROTO_ICMPV6, &h.dst, &h.src)?;
        write_be16(icmp, ICMPV6_PACKET_TOO_BIG);
        write_be16(icmp + 4, (mtu >> 16) as u16);
        write_be16(icmp + 6, mtu as u16);
        // The pseudo-header, then the message.
        let pseudo = addr_sum(&h.src, FAMILY_V6) + addr_sum(&h.dst, FAMILY_V6) + icmp_len as u32 + PROTO_ICMPV6 as u32;
        pseudo + ICMPV6_PACKET_TOO_BIG as u32 + (mtu >> 16) + (mtu & 0xffff)
    };
    // The quoted bytes, as 16-bit words.
    let quote = l3 + ip_hlen + ICMP_HLEN;
    for i in 0..QUOTED_V6 / 2 {
        if 2 * i < quoted {
            sum += read_be16(at(ctx, quote + 2 * i, 2)?) as u32;
        }
    }
    write_be16(at(ctx, l3 + ip_hlen + ICMP_CSUM_OFF, 2)?, !fold(sum));
    Ok(())
}
