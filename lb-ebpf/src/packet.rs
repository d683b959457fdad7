//! Header parsing and rewriting. Every access is bounds-checked against `data_end` right
//! before it, which is what the verifier needs; offsets are constant past the L3 start.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use crate::Reason;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;
const TCP_CSUM_OFF: usize = 16;
const UDP_CSUM_OFF: usize = 6;
const ICMP_CSUM_OFF: usize = 2;
const IPV4_CSUM_OFF: usize = 10;
const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers that are not fragments (hop-by-hop, routing, AH, destination
/// options, mobility, HIP, shim6).
const IPV6_EXTENSIONS: [u8; 7] = [0, 43, 51, 60, 135, 139, 140];

/// The headers of a packet the program may act on: IPv4 without options or fragmentation,
/// or IPv6 with TCP/UDP/ICMPv6 as the first next header.
/// Positions are offsets from the start of the frame: the verifier forbids arithmetic
/// beyond add/sub on packet pointers, and LLVM would shift pointers stored in a struct.
#[derive(Default)]
pub struct Headers {
    pub l3: usize,
    pub l4_start: usize,
    pub frame_len: u32,
    /// The IP packet's length, for the FIB's MTU check.
    pub ip_len: u16,
    pub family: u8,
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub l4: L4,
    /// With `L4::Ports`.
    pub sport: u16,
    pub dport: u16,
    /// With `L4::IcmpError`: where the quoted packet's IP header starts.
    pub inner_l3: usize,
}

impl Headers {
    /// The connection this TCP/UDP packet belongs to, as seen in its direction.
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// What follows the IP header. A field-less enum with the details in `Headers`: enums with
/// payloads let LLVM store undefined bytes, which the verifier refuses.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum L4 {
    /// TCP or UDP.
    Ports,
    /// An ICMP/ICMPv6 error.
    IcmpError,
    #[default]
    Other,
}

/// What `parse` found; it fills in the caller's `Headers` rather than returning them, so
/// the entry function's stack holds one copy (the BPF stack is 512 bytes for a call chain).
pub enum Parsed {
    /// All of `Headers` is valid.
    Ip,
    /// IP traffic whose ports can't be read in place (fragments, options, extension
    /// headers): dropped for the reason if `dst` is a VIP address, passed otherwise.
    /// Only `dst` and `family` of `Headers` are valid.
    Unusual(Reason),
}

/// New addresses and ports for a packet (or for the packet quoted in an ICMP error).
#[derive(Default)]
pub struct Translation {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
}

/// The packet quoted inside an ICMP error.
#[derive(Default)]
pub struct Quoted {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
}

#[inline(always)]
fn check(addr: usize, len: usize, end: usize) -> Result<(), Reason> {
    if addr + len > end { Err(Reason::Malformed) } else { Ok(()) }
}

/// Header offsets never reach this; masking with it gives the verifier a bound on offsets
/// that passed through the stack into a subprogram and lost their known range there.
const MAX_HEADER_OFFSET: usize = 0xfff;

/// The address of `len` bytes at offset `off` of the frame, if they are all inside it.
/// `data` and `data_end` are read from the context right here, with volatile reads: LLVM
/// would otherwise pass them into subprograms as plain integers, which the verifier no
/// longer recognises as packet pointers.
#[inline(always)]
fn at(ctx: &XdpContext, off: usize, len: usize) -> Result<usize, Reason> {
    // SAFETY: `ctx.ctx` is the live xdp_md of this run.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    };
    let addr = data + (off & MAX_HEADER_OFFSET);
    check(addr, len, end)?;
    Ok(addr)
}

#[inline(always)]
fn read_u8(addr: usize) -> u8 {
    // SAFETY: callers checked `addr + 1 <= end`.
    unsafe { *(addr as *const u8) }
}

#[inline(always)]
fn read_be16(addr: usize) -> u16 {
    // SAFETY: callers checked `addr + 2 <= end`.
    u16::from_be(unsafe { core::ptr::read_unaligned(addr as *const u16) })
}

#[inline(always)]
fn write_be16(addr: usize, value: u16) {
    // SAFETY: callers checked `addr + 2 <= end`.
    unsafe { core::ptr::write_unaligned(addr as *mut u16, value.to_be()) }
}

#[inline(always)]
fn read_addr(addr: usize, family: u8) -> Addr {
    let mut out = [0u8; 16];
    // SAFETY: callers checked the address bytes are inside the packet.
    unsafe {
        if family == FAMILY_V4 {
            core::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), 4);
        } else {
            core::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), 16);
        }
    }
    out
}

#[inline(always)]
fn write_addr(addr: usize, value: &Addr, family: u8) {
    // SAFETY: callers checked the address bytes are inside the packet.
    unsafe {
        if family == FAMILY_V4 {
            core::ptr::copy_nonoverlapping(value.as_ptr(), addr as *mut u8, 4);
        } else {
            core::ptr::copy_nonoverlapping(value.as_ptr(), addr as *mut u8, 16);
        }
    }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, h: &mut Headers) -> Result<Parsed, Reason> {
    let eth = at(ctx, 0, ETH_HLEN)?;
    let mut ethertype = read_be16(eth + 12);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tagged = at(ctx, 0, ETH_HLEN + 4)?;
        ethertype = read_be16(tagged + 16);
        l3 = ETH_HLEN + 4;
    }
    let frame_len = (ctx.data_end() - ctx.data()) as u32;
    match ethertype {
        ETH_P_IP => parse_v4(ctx, h, l3, frame_len),
        ETH_P_IPV6 => parse_v6(ctx, h, l3, frame_len),
        _ => Err(Reason::Passed),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, h: &mut Headers, l3: usize, frame_len: u32) -> Result<Parsed, Reason> {
    let ip = at(ctx, l3, IPV4_HLEN)?;
    let version_ihl = read_u8(ip);
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let tot_len = read_be16(ip + 2);
    if version_ihl >> 4 != 4 || ihl < IPV4_HLEN || (tot_len as usize) < ihl || l3 + tot_len as usize > frame_len as usize {
        return Err(Reason::Malformed);
    }
    h.dst = read_addr(ip + 16, FAMILY_V4);
    h.family = FAMILY_V4;
    if read_be16(ip + 6) & 0x3fff != 0 {
        return Ok(Parsed::Unusual(Reason::Fragment));
    }
    if ihl != IPV4_HLEN {
        return Ok(Parsed::Unusual(Reason::IpOptions));
    }
    h.proto = read_u8(ip + 9);
    h.src = read_addr(ip + 12, FAMILY_V4);
    h.l3 = l3;
    h.l4_start = l3 + IPV4_HLEN;
    h.frame_len = frame_len;
    h.ip_len = tot_len;
    parse_l4(ctx, h, PROTO_ICMP)?;
    Ok(Parsed::Ip)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, h: &mut Headers, l3: usize, frame_len: u32) -> Result<Parsed, Reason> {
    let ip = at(ctx, l3, IPV6_HLEN)?;
    let payload_len = read_be16(ip + 4) as usize;
    if read_u8(ip) >> 4 != 6 || l3 + IPV6_HLEN + payload_len > frame_len as usize {
        return Err(Reason::Malformed);
    }
    let next_header = read_u8(ip + 6);
    h.dst = read_addr(ip + 24, FAMILY_V6);
    h.family = FAMILY_V6;
    if next_header == IPV6_FRAGMENT {
        return Ok(Parsed::Unusual(Reason::Fragment));
    }
    if IPV6_EXTENSIONS.contains(&next_header) {
        return Ok(Parsed::Unusual(Reason::IpOptions));
    }
    h.proto = next_header;
    h.src = read_addr(ip + 8, FAMILY_V6);
    h.l3 = l3;
    h.l4_start = l3 + IPV6_HLEN;
    h.frame_len = frame_len;
    h.ip_len = (IPV6_HLEN + payload_len) as u16;
    parse_l4(ctx, h, PROTO_ICMPV6)?;
    Ok(Parsed::Ip)
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, h: &mut Headers, icmp_proto: u8) -> Result<(), Reason> {
    let (off, proto) = (h.l4_start, h.proto);
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let l4 = at(ctx, off, if proto == PROTO_TCP { TCP_MIN_HLEN } else { UDP_HLEN })?;
        h.sport = read_be16(l4);
        h.dport = read_be16(l4 + 2);
        h.l4 = L4::Ports;
        return Ok(());
    }
    if proto == icmp_proto {
        let l4 = at(ctx, off, ICMP_HLEN)?;
        let icmp_type = read_u8(l4);
        // v4: destination unreachable (incl. fragmentation needed), time exceeded.
        // v6: destination unreachable, packet too big, time exceeded.
        let is_error = if proto == PROTO_ICMP {
            icmp_type == 3 || icmp_type == 11
        } else {
            (1..=3).contains(&icmp_type)
        };
        if is_error {
            h.inner_l3 = off + ICMP_HLEN;
            h.l4 = L4::IcmpError;
            return Ok(());
        }
    }
    h.l4 = L4::Other;
    Ok(())
}

/// Reads the IP and port header of the packet quoted in an ICMP error. Only a TCP or UDP
/// packet without IPv4 options can belong to a flow.
#[inline(always)]
pub fn parse_quoted(ctx: &XdpContext, family: u8, l3: usize) -> Option<Quoted> {
    let (l4, proto, src, dst) = if family == FAMILY_V4 {
        let ip = at(ctx, l3, IPV4_HLEN).ok()?;
        if read_u8(ip) != 0x45 {
            return None;
        }
        (l3 + IPV4_HLEN, read_u8(ip + 9), read_addr(ip + 12, FAMILY_V4), read_addr(ip + 16, FAMILY_V4))
    } else {
        let ip = at(ctx, l3, IPV6_HLEN).ok()?;
        (l3 + IPV6_HLEN, read_u8(ip + 6), read_addr(ip + 8, FAMILY_V6), read_addr(ip + 24, FAMILY_V6))
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ports = at(ctx, l4, 4).ok()?;
    Some(Quoted { l3, l4, proto, src, dst, sport: read_be16(ports), dport: read_be16(ports + 2) })
}

/// Offsets of the source and destination address in an IP header.
#[inline(always)]
fn addr_offsets(family: u8) -> (usize, usize) {
    if family == FAMILY_V4 { (12, 16) } else { (8, 24) }
}

/// Rewrites addresses and ports of a TCP/UDP packet, updating checksums incrementally.
#[inline(never)]
pub fn rewrite(ctx: &XdpContext, h: &Headers, to: &Translation) -> Result<(), Reason> {
    let family = h.family;
    let (src_off, dst_off) = addr_offsets(family);
    let ip = at(ctx, h.l3, if family == FAMILY_V4 { IPV4_HLEN } else { IPV6_HLEN })?;
    if family == FAMILY_V4 {
        let mut csum = read_be16(ip + IPV4_CSUM_OFF);
        csum = csum_replace_addr(csum, &h.src, &to.src, family);
        csum = csum_replace_addr(csum, &h.dst, &to.dst, family);
        write_be16(ip + IPV4_CSUM_OFF, csum);
    }
    write_addr(ip + src_off, &to.src, family);
    write_addr(ip + dst_off, &to.dst, family);
    // Each access gets its own bounds check: the verifier can't relate a length chosen by
    // protocol to an offset chosen by protocol.
    let csum_off = if h.proto == PROTO_TCP { TCP_CSUM_OFF } else { UDP_CSUM_OFF };
    let csum_at = at(ctx, h.l4_start + csum_off, 2)?;
    let l4 = at(ctx, h.l4_start, 4)?;
    let (old_sport, old_dport) = (read_be16(l4), read_be16(l4 + 2));
    let old_csum = read_be16(csum_at);
    // A UDP/IPv4 datagram may be sent without a checksum (zero); it stays without.
    if !(h.proto == PROTO_UDP && family == FAMILY_V4 && old_csum == 0) {
        let mut csum = csum_replace_addr(old_csum, &h.src, &to.src, family);
        csum = csum_replace_addr(csum, &h.dst, &to.dst, family);
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
fn update_icmp_csum(ctx: &XdpContext, h: &Headers, update: impl FnOnce(u16) -> u16) -> Result<(), Reason> {
    let at_csum = at(ctx, h.l4_start + ICMP_CSUM_OFF, 2)?;
    write_be16(at_csum, update(read_be16(at_csum)));
    Ok(())
}

#[inline(never)]
fn icmp_outer_destination(ctx: &XdpContext, h: &Headers, to: &Translation) -> Result<(), Reason> {
    let family = h.family;
    let ip = at(ctx, h.l3, if family == FAMILY_V4 { IPV4_HLEN } else { IPV6_HLEN })?;
    if family == FAMILY_V4 {
        let ip_csum = csum_replace_addr(read_be16(ip + IPV4_CSUM_OFF), &h.dst, &to.src, family);
        write_be16(ip + IPV4_CSUM_OFF, ip_csum);
    } else {
        // ICMPv6 checksums cover the pseudo-header, so the outer destination counts too.
        update_icmp_csum(ctx, h, |c| csum_replace_addr(c, &h.dst, &to.src, family))?;
    }
    write_addr(ip + addr_offsets(family).1, &to.src, family);
    Ok(())
}

#[inline(never)]
fn icmp_quoted_addresses(ctx: &XdpContext, h: &Headers, quoted: &Quoted, to: &Translation) -> Result<(), Reason> {
    let family = h.family;
    let (src_off, dst_off) = addr_offsets(family);
    let inner = at(ctx, quoted.l3, if family == FAMILY_V4 { IPV4_HLEN } else { IPV6_HLEN })?;
    let mut inner_csum = (0, 0);
    if family == FAMILY_V4 {
        // The quoted IPv4 header has its own checksum, itself covered by the ICMP one.
        let old = read_be16(inner + IPV4_CSUM_OFF);
        let new = csum_replace_addr(csum_replace_addr(old, &quoted.src, &to.src, family), &quoted.dst, &to.dst, family);
        write_be16(inner + IPV4_CSUM_OFF, new);
        inner_csum = (old, new);
    }
    write_addr(inner + src_off, &to.src, family);
    write_addr(inner + dst_off, &to.dst, family);
    update_icmp_csum(ctx, h, |c| {
        let c = csum_replace2(c, inner_csum.0, inner_csum.1);
        csum_replace_addr(csum_replace_addr(c, &quoted.src, &to.src, family), &quoted.dst, &to.dst, family)
    })
}

#[inline(never)]
fn icmp_quoted_ports(ctx: &XdpContext, h: &Headers, quoted: &Quoted, to: &Translation) -> Result<(), Reason> {
    let ports = at(ctx, quoted.l4, 4)?;
    write_be16(ports, to.sport);
    write_be16(ports + 2, to.dport);
    update_icmp_csum(ctx, h, |c| csum_replace2(csum_replace2(c, quoted.sport, to.sport), quoted.dport, to.dport))
}

#[inline(always)]
pub fn set_macs(ctx: &XdpContext, src: &[u8; 6], dst: &[u8; 6]) {
    if let Ok(eth) = at(ctx, 0, ETH_HLEN) {
        // SAFETY: `at` checked the 14 bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(dst.as_ptr(), eth as *mut u8, 6);
            core::ptr::copy_nonoverlapping(src.as_ptr(), (eth + 6) as *mut u8, 6);
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
