//! Header rewriting, with checksums updated incrementally.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use crate::mem::addr_words;
use crate::packet::*;
use crate::parse::{Headers, Quoted};
use crate::stats::Reason;

/// New addresses and ports for a packet (or for the packet quoted in an ICMP error).
#[derive(Default)]
#[repr(C, align(8))]
pub struct Translation {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
}

/// `csum_replace_addr` on words: a big-endian 32-bit value is the byte swap of the word.
#[inline(always)]
pub fn csum_addr(mut csum: u16, old: &Addr, new: &Addr, family: u8) -> u16 {
    let (old, new) = (addr_words(old), addr_words(new));
    csum = csum_replace4(csum, old[0].swap_bytes(), new[0].swap_bytes());
    if family != FAMILY_V4 {
        csum = csum_replace4(csum, old[1].swap_bytes(), new[1].swap_bytes());
        csum = csum_replace4(csum, old[2].swap_bytes(), new[2].swap_bytes());
        csum = csum_replace4(csum, old[3].swap_bytes(), new[3].swap_bytes());
    }
    csum
}

/// Rewrites the source and destination of the IP header at offset `l3` from `old_*` to
/// `to`, keeping an IPv4 header checksum right; returns that checksum before and after
/// (zeros for IPv6, which has none). One bounds check per family, with constant offsets
/// after it: the verifier can't relate a length chosen by family to offsets chosen by family.
#[inline(always)]
pub fn rewrite_ip_addrs(
    ctx: &XdpContext,
    l3: usize,
    family: u8,
    old_src: &Addr,
    old_dst: &Addr,
    to: &Translation,
) -> Result<(u16, u16), Reason> {
    if family == FAMILY_V4 {
        let ip = at(ctx, l3, IPV4_HLEN)?;
        let old = read_be16(ip + IPV4_CSUM_OFF);
        let new = csum_addr(csum_addr(old, old_src, &to.src, FAMILY_V4), old_dst, &to.dst, FAMILY_V4);
        write_be16(ip + IPV4_CSUM_OFF, new);
        write_addr(ip + 12, &to.src, FAMILY_V4);
        write_addr(ip + 16, &to.dst, FAMILY_V4);
        Ok((old, new))
    } else {
        let ip = at(ctx, l3, IPV6_HLEN)?;
        write_addr(ip + 8, &to.src, FAMILY_V6);
        write_addr(ip + 24, &to.dst, FAMILY_V6);
        Ok((0, 0))
    }
}

/// Rewrites addresses and ports of a TCP/UDP packet, updating checksums incrementally.
#[inline(never)]
pub fn rewrite(ctx: &XdpContext, h: &Headers, to: &Translation) -> Result<(), Reason> {
    let family = h.family;
    rewrite_ip_addrs(ctx, h.l3, family, &h.src, &h.dst, to)?;
    // Each access gets its own bounds check: the verifier can't relate a length chosen by
    // protocol to an offset chosen by protocol.
    let csum_off = if h.proto == PROTO_TCP { TCP_CSUM_OFF } else { UDP_CSUM_OFF };
    let csum_at = at(ctx, h.l4_start + csum_off, 2)?;
    let l4 = at(ctx, h.l4_start, 4)?;
    let (old_sport, old_dport) = (read_be16(l4), read_be16(l4 + 2));
    let old_csum = read_be16(csum_at);
    // A UDP/IPv4 datagram may be sent without a checksum (zero); it stays without.
    if !(h.proto == PROTO_UDP && family == FAMILY_V4 && old_csum == 0) {
        let mut csum = csum_addr(old_csum, &h.src, &to.src, family);
        csum = csum_addr(csum, &h.dst, &to.dst, family);
        csum = csum_replace2(csum, old_sport, to.sport);
        csum = csum_replace2(csum, old_dport, to.dport);
        if h.proto == PROTO_UDP && csum == 0 {
            csum = 0xffff;
        }
        write_be16(csum_at, csum);
    }
    write_be16(l4, to.sport);
    write_be16(l4 + 2, to.dport);
    Ok(())
}

/// Translates an ICMP error about a VIP -> client packet for a nat backend: the outer
/// destination becomes the backend, and the quoted packet becomes what the backend actually
/// sent (`to`: backend -> balancer), so the backend's stack matches it to its socket.
/// The quoted L4 checksum is left alone: receivers don't verify it (it is often truncated).
/// Done in three steps, each a subprogram that updates the ICMP checksum in place, because
/// together they would not fit the stack budget of the call chain.
#[inline(always)]
pub fn rewrite_icmp_error(ctx: &XdpContext, h: &Headers, quoted: &Quoted, to: &Translation) -> Result<(), Reason> {
    icmp_outer_destination(ctx, h, to)?;
    icmp_quoted_addresses(ctx, h, quoted, to)?;
    icmp_quoted_ports(ctx, h, quoted, to)
}

#[inline(always)]
pub fn update_icmp_csum(ctx: &XdpContext, h: &Headers, update: impl FnOnce(u16) -> u16) -> Result<(), Reason> {
    let at_csum = at(ctx, h.l4_start + ICMP_CSUM_OFF, 2)?;
    write_be16(at_csum, update(read_be16(at_csum)));
    Ok(())
}

#[inline(never)]
pub fn icmp_outer_destination(ctx: &XdpContext, h: &Headers, to: &Translation) -> Result<(), Reason> {
    if h.family == FAMILY_V4 {
        let ip = at(ctx, h.l3, IPV4_HLEN)?;
        let ip_csum = csum_addr(read_be16(ip + IPV4_CSUM_OFF), &h.dst, &to.src, FAMILY_V4);
        write_be16(ip + IPV4_CSUM_OFF, ip_csum);
        write_addr(ip + 16, &to.src, FAMILY_V4);
    } else {
        // ICMPv6 checksums cover the pseudo-header, so the outer destination counts too.
        update_icmp_csum(ctx, h, |c| csum_addr(c, &h.dst, &to.src, FAMILY_V6))?;
        let ip = at(ctx, h.l3, IPV6_HLEN)?;
        write_addr(ip + 24, &to.src, FAMILY_V6);
    }
    Ok(())
}

#[inline(never)]
pub fn icmp_quoted_addresses(ctx: &XdpContext, h: &Headers, quoted: &Quoted, to: &Translation) -> Result<(), Reason> {
    let family = h.family;
    // The quoted IPv4 header has its own checksum, itself covered by the ICMP one.
    let inner_csum = rewrite_ip_addrs(ctx, quoted.l3, family, &quoted.src, &quoted.dst, to)?;
    update_icmp_csum(ctx, h, |c| {
        let c = csum_replace2(c, inner_csum.0, inner_csum.1);
        csum_addr(csum_addr(c, &quoted.src, &to.src, family), &quoted.dst, &to.dst, family)
    })
}

#[inline(never)]
pub fn icmp_quoted_ports(ctx: &XdpContext, h: &Headers, quoted: &Quoted, to: &Translation) -> Result<(), Reason> {
    let ports = at(ctx, quoted.l4, 4)?;
    write_be16(ports, to.sport);
    write_be16(ports + 2, to.dport);
    update_icmp_csum(ctx, h, |c| csum_replace2(csum_replace2(c, quoted.sport, to.sport), quoted.dport, to.dport))
}

/// Sets the Ethernet addresses; both arrays must be 2-byte aligned (they are in `NextHop`).
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, src: &[u8; 6], dst: &[u8; 6]) {
    if let Ok(eth) = at(ctx, 0, ETH_HLEN) {
        let (src, dst, eth) = (src.as_ptr().cast::<u16>(), dst.as_ptr().cast::<u16>(), eth as *mut u16);
        // SAFETY: `at` checked the 14 bytes; 2-byte aligned as said above.
        unsafe {
            for i in 0..3 {
                core::ptr::write_volatile(eth.add(i), core::ptr::read(dst.add(i)));
                core::ptr::write_volatile(eth.add(3 + i), core::ptr::read(src.add(i)));
            }
        }
    }
}

#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> bool {
    let Ok(eth) = at(ctx, 0, ETH_HLEN) else {
        return false;
    };
    // SAFETY: `at` checked the 14 bytes.
    unsafe {
        let dst = core::ptr::read_unaligned(eth as *const [u8; 6]);
        let src = core::ptr::read_unaligned((eth + 6) as *const [u8; 6]);
        core::ptr::write_unaligned(eth as *mut [u8; 6], src);
        core::ptr::write_unaligned((eth + 6) as *mut [u8; 6], dst);
    }
    true
}
