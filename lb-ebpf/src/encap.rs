//! Encapsulated dsr (`ipip`, `gue`): the client's packet, untouched, inside an outer
//! IPv4/IPv6 header from the balancer's own address to the backend, with a UDP header in
//! between for gue (GUE variant 1: the inner IP header right after the UDP one). Room is
//! made in front with `bpf_xdp_adjust_head`; the Ethernet header (and VLAN tag) moves to
//! the new start. Afterwards `Headers` describe the outer packet, for `forward`.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::*;

use crate::keys::own_addr;
use crate::mem::{addr_words, copy_addr};
use crate::packet::*;
use crate::parse::Headers;
use crate::stats::Reason;

/// The outer header's TTL / hop limit.
const OUTER_TTL: u16 = 64;
/// IPv4 "don't fragment": a packet too big for the path is answered, never fragmented.
const IPV4_DF: u16 = 0x4000;

/// Wraps the packet of `h` for `backend`, in gue (UDP) when `gue`; `hash` (the flow's)
/// gives gue's source port and IPv6's flow label. `h` then describes the outer packet.
/// False if it can't (a packet too long to wrap, or no room in front of the frame).
// A BPF subprogram of its own: its stack frame is not added to its siblings'. It answers
// a bool, not a `Result`: the caller's `Result` merged with this one's let LLVM read an
// undefined register on another path, which the verifier refuses.
#[inline(never)]
pub fn encapsulate(ctx: &XdpContext, h: &mut Headers, backend: &Backend, settings: &Settings, gue_hash: u64) -> bool {
    wrap(ctx, h, backend, settings, gue_hash).is_ok()
}

/// A frame that can grow in front: XDP moves its start, tc makes room after the L2 header.
pub trait Prepend: Frame {
    /// Makes `added` bytes of room between the L2 header (which ends at `l3`) and the
    /// packet, the L2 header's ethertype the outer family's; gue's outer header ends in UDP.
    fn prepend(&self, l3: usize, added: usize, outer_v4: bool, gue: bool) -> Result<(), Reason>;
}

impl Prepend for XdpContext {
    #[inline(always)]
    fn prepend(&self, l3: usize, added: usize, outer_v4: bool, _gue: bool) -> Result<(), Reason> {
        // SAFETY: plain helper call; the frame is reached through `at` only, after it too.
        if unsafe { bpf_xdp_adjust_head(self.ctx, -(added as i32)) } != 0 {
            return Err(Reason::Internal);
        }
        move_l2_header(self, l3, added, if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 })
    }
}

#[inline(always)]
pub fn wrap(
    ctx: &impl Prepend,
    h: &mut Headers,
    backend: &Backend,
    settings: &Settings,
    gue_hash: u64,
) -> Result<(), Reason> {
    // `gue_hash`: the flow hash in the low 32 bits, bit 32 set for gue (five arguments at
    // most for a BPF subprogram).
    let (gue, hash) = (gue_hash >> 32 != 0, gue_hash as u32);
    let outer_v4 = backend.family == FAMILY_V4;
    let ip_hlen = if outer_v4 { IPV4_HLEN } else { IPV6_HLEN };
    let added = outer_len(backend.family, gue);
    let inner_len = h.ip_len as usize;
    if inner_len + added > u16::MAX as usize {
        return Err(Reason::Malformed);
    }
    let tos = inner_tos(ctx, h)?;
    // gue in IPv6 needs a UDP checksum: the inner packet's sum, read before it moves.
    let inner_sum = if gue && !outer_v4 { inner_packet_sum(ctx, h)? } else { None };
    ctx.prepend(h.l3, added, outer_v4, gue)?;
    let proto = if gue {
        PROTO_UDP
    } else if h.family == FAMILY_V4 {
        PROTO_IPIP
    } else {
        PROTO_IPV6_IN_IP
    };
    let src = own_addr(settings, backend.family);
    if outer_v4 {
        write_ipv4(ctx, h.l3, tos, (added + inner_len) as u16, proto, src, &backend.addr)?;
    } else {
        write_ipv6(ctx, h.l3, tos, hash, (added - IPV6_HLEN + inner_len) as u16, proto, src, &backend.addr)?;
    }
    if gue {
        let udp = at(ctx, h.l3 + ip_hlen, UDP_HLEN)?;
        let (sport, udp_len) = (gue_source_port(hash), (UDP_HLEN + inner_len) as u16);
        write_be16(udp, sport);
        write_be16(udp + 2, settings.gue_port);
        write_be16(udp + 4, udp_len);
        let csum = match inner_sum {
            // The pseudo-header, the UDP header and the inner packet.
            Some(sum) => {
                let header = sport as u32 + settings.gue_port as u32 + 2 * udp_len as u32 + PROTO_UDP as u32;
                let csum = !fold(addr_sum(src, FAMILY_V6) + addr_sum(&backend.addr, FAMILY_V6) + header + sum);
                if csum == 0 { 0xffff } else { csum }
            }
            None => 0,
        };
        write_be16(udp + UDP_CSUM_OFF, csum);
    }
    if h.family != backend.family {
        // IPv4 in IPv6: the FIB is asked in IPv6, from the balancer's own address.
        copy_addr(&mut h.src, src);
    }
    h.family = backend.family;
    h.proto = proto;
    h.ip_len = (added + inner_len) as u16;
    h.frame_len += added as u32;
    Ok(())
}

/// The bytes the outer headers add for a backend of `family`.
#[inline(always)]
pub fn outer_len(family: u8, gue: bool) -> usize {
    (if family == FAMILY_V4 { IPV4_HLEN } else { IPV6_HLEN }) + if gue { UDP_HLEN } else { 0 }
}

/// The inner packet's traffic class (IPv4 TOS, IPv6 traffic class), copied outside.
#[inline(always)]
fn inner_tos(ctx: &impl Frame, h: &Headers) -> Result<u16, Reason> {
    let ip = at(ctx, h.l3, 2)?;
    Ok(if h.family == FAMILY_V4 { read_u8(ip + 1) as u16 } else { (read_be16(ip) >> 4) & 0xff })
}

/// The one's complement sum of the inner packet without reading its payload: its L4
/// checksum makes the segment sum to minus its pseudo-header, and a valid IPv4 header sums
/// to zero (IPv6's pseudo-header addresses cancel its header's); an ICMPv4 message, without
/// a pseudo-header, sums to zero. `None` for UDP in IPv4 sent without a checksum, whose sum
/// is unknown (the outer one is then left zero).
#[inline(always)]
fn inner_packet_sum(ctx: &impl Frame, h: &Headers) -> Result<Option<u32>, Reason> {
    let l4_len = h.ip_len as u32 - (h.l4_start - h.l3) as u32;
    if h.proto == PROTO_ICMP {
        return Ok(Some(0));
    }
    if h.family == FAMILY_V4 {
        if h.proto == PROTO_UDP && read_be16(at(ctx, h.l4_start + UDP_CSUM_OFF, 2)?) == 0 {
            return Ok(None);
        }
        let pseudo = addr_sum(&h.src, FAMILY_V4) + addr_sum(&h.dst, FAMILY_V4) + h.proto as u32 + l4_len;
        return Ok(Some(!fold(pseudo) as u32));
    }
    let ip = at(ctx, h.l3, 8)?;
    let first = read_be16(ip) as u32 + read_be16(ip + 2) as u32 + read_be16(ip + 4) as u32 + read_be16(ip + 6) as u32;
    Ok(Some(first + !fold(h.proto as u32 + l4_len) as u32))
}

/// Moves the Ethernet header (and VLAN tag: `l3` is 14 or 18 bytes) `added` bytes to the
/// front, where the frame now starts, and sets its (inner) ethertype to the outer family's.
#[inline(always)]
pub fn move_l2_header(ctx: &impl Frame, l3: usize, added: usize, ethertype: u16) -> Result<(), Reason> {
    for i in 0..(ETH_HLEN + 4) / 2 {
        if 2 * i + 2 < l3 {
            let from = at(ctx, added + 2 * i, 2)?;
            let value = read_be16(from);
            write_be16(at(ctx, 2 * i, 2)?, value);
        }
    }
    write_be16(at(ctx, l3 - 2, 2)?, ethertype);
    Ok(())
}

/// An IPv4 header without options at `l3`, with DF set, TTL 64 and its checksum.
#[inline(always)]
pub fn write_ipv4(
    ctx: &impl Frame,
    l3: usize,
    tos: u16,
    total: u16,
    proto: u8,
    src: &Addr,
    dst: &Addr,
) -> Result<(), Reason> {
    let ip = at(ctx, l3, IPV4_HLEN)?;
    let (version_tos, ttl_proto) = (0x4500 | tos, OUTER_TTL << 8 | proto as u16);
    write_be16(ip, version_tos);
    write_be16(ip + 2, total);
    write_be16(ip + 4, 0);
    write_be16(ip + 6, IPV4_DF);
    write_be16(ip + 8, ttl_proto);
    write_addr(ip + 12, src, FAMILY_V4);
    write_addr(ip + 16, dst, FAMILY_V4);
    let sum = version_tos as u32 + total as u32 + IPV4_DF as u32 + ttl_proto as u32;
    write_be16(ip + IPV4_CSUM_OFF, !fold(sum + addr_sum(src, FAMILY_V4) + addr_sum(dst, FAMILY_V4)));
    Ok(())
}

/// An IPv6 header at `l3`, hop limit 64, the flow label from `hash`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn write_ipv6(
    ctx: &impl Frame,
    l3: usize,
    tc: u16,
    hash: u32,
    payload_len: u16,
    next_header: u8,
    src: &Addr,
    dst: &Addr,
) -> Result<(), Reason> {
    let ip = at(ctx, l3, IPV6_HLEN)?;
    let label = hash & 0xf_ffff;
    write_be16(ip, 0x6000 | tc << 4 | (label >> 16) as u16);
    write_be16(ip + 2, label as u16);
    write_be16(ip + 4, payload_len);
    write_be16(ip + 6, (next_header as u16) << 8 | OUTER_TTL);
    write_addr(ip + 8, src, FAMILY_V6);
    write_addr(ip + 24, dst, FAMILY_V6);
    Ok(())
}

/// The one's complement sum of an address as big-endian 16-bit words (unfolded).
#[inline(always)]
pub fn addr_sum(a: &Addr, family: u8) -> u32 {
    let w = addr_words(a);
    let half = |w: u32| (w as u16).swap_bytes() as u32 + ((w >> 16) as u16).swap_bytes() as u32;
    if family == FAMILY_V4 { half(w[0]) } else { half(w[0]) + half(w[1]) + half(w[2]) + half(w[3]) }
}
