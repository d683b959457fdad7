//! Packets that no longer fit once encapsulated: answered to the client with ICMP
//! "fragmentation needed" (IPv4) or ICMPv6 "packet too big", from the VIP, with the MTU
//! that fits, quoting the packet's IP header and first 8 bytes (as Katran does). Never
//! fragmented, never dropped silently.

use aya_ebpf::{
    helpers::{bpf_check_mtu, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::*;

use crate::encap::addr_sum;
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
const ANSWER_TTL: u16 = 64;
/// The answer is not fragmented either.
const IPV4_DF: u16 = 0x4000;

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
    for i in 0..(ETH_HLEN + 4) / 2 {
        if 2 * i < l3 {
            let value = read_be16(at(ctx, added + 2 * i, 2)?);
            write_be16(at(ctx, 2 * i, 2)?, value);
        }
    }
    if !swap_macs(ctx) {
        return Err(Reason::Malformed);
    }
    let icmp_len = (ICMP_HLEN + quoted) as u16;
    let mut sum = if v4 {
        let ip = at(ctx, l3, IPV4_HLEN)?;
        let (total, ttl_proto) = (IPV4_HLEN as u16 + icmp_len, ANSWER_TTL << 8 | PROTO_ICMP as u16);
        write_be16(ip, 0x4500);
        write_be16(ip + 2, total);
        write_be16(ip + 4, 0);
        write_be16(ip + 6, IPV4_DF);
        write_be16(ip + 8, ttl_proto);
        write_be16(ip + IPV4_CSUM_OFF, 0);
        write_addr(ip + 12, &h.dst, FAMILY_V4);
        write_addr(ip + 16, &h.src, FAMILY_V4);
        let header = 0x4500 + total as u32 + IPV4_DF as u32 + ttl_proto as u32 + addr_sum(&h.src, FAMILY_V4);
        write_be16(ip + IPV4_CSUM_OFF, !fold(header + addr_sum(&h.dst, FAMILY_V4)));
        let icmp = at(ctx, l3 + IPV4_HLEN, ICMP_HLEN)?;
        write_be16(icmp, ICMP_FRAG_NEEDED);
        write_be16(icmp + 4, 0);
        write_be16(icmp + 6, mtu as u16);
        ICMP_FRAG_NEEDED as u32 + (mtu & 0xffff)
    } else {
        let ip = at(ctx, l3, IPV6_HLEN)?;
        write_be16(ip, 0x6000);
        write_be16(ip + 2, 0);
        write_be16(ip + 4, icmp_len);
        write_be16(ip + 6, (PROTO_ICMPV6 as u16) << 8 | ANSWER_TTL);
        write_addr(ip + 8, &h.dst, FAMILY_V6);
        write_addr(ip + 24, &h.src, FAMILY_V6);
        let icmp = at(ctx, l3 + IPV6_HLEN, ICMP_HLEN)?;
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
