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
const TCP_FLAGS_OFF: usize = 13;
pub const TCP_RST: u8 = 0x04;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers that are not fragments (hop-by-hop, routing, AH, destination
/// options, mobility, HIP, shim6).
const IPV6_EXTENSIONS: [u8; 7] = [0, 43, 51, 60, 135, 139, 140];

/// The headers of a packet the program may act on: IPv4 without options or fragmentation,
/// or IPv6 with TCP/UDP/ICMPv6 as the first next header.
/// Positions are offsets from the start of the frame: the verifier forbids arithmetic
/// beyond add/sub on packet pointers, and LLVM would shift pointers stored in a struct.
/// Laid out by hand and aligned, so that addresses are copied and compared as words.
/// `parse` writes every field a path reads, so it needs no reset per packet.
#[repr(C, align(8))]
pub struct Headers {
    pub src: Addr,
    pub dst: Addr,
    pub l3: usize,
    pub l4_start: usize,
    /// With `L4::IcmpError`: where the quoted packet's IP header starts.
    pub inner_l3: usize,
    pub frame_len: u32,
    /// The IP packet's length, for the FIB's MTU check.
    pub ip_len: u16,
    pub family: u8,
    pub proto: u8,
    /// With `L4::Ports`.
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    /// With `L4::Ports` and TCP: the flags byte (`TCP_SYN`, `TCP_ACK`, ...); zero for UDP.
    pub tcp_flags: u8,
    /// With `L4::IcmpError`: whether it reports a destination unreachable (not a packet too
    /// big or a time exceeded).
    pub icmp_unreachable: bool,
    pub _pad: [u8; 5],
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            src: [0; 16],
            dst: [0; 16],
            l3: 0,
            l4_start: 0,
            inner_l3: 0,
            frame_len: 0,
            ip_len: 0,
            family: 0,
            proto: 0,
            sport: 0,
            dport: 0,
            l4: L4::Other,
            tcp_flags: 0,
            icmp_unreachable: false,
            _pad: [0; 5],
        }
    }
}

impl Headers {
    /// Whether the packet may open a flow: a TCP SYN (without ACK) or any UDP datagram.
    /// Other TCP packets without a flow entry belong to connections that already exist
    /// (their entry was evicted, or ECMP moved them to this host): no new-flow limit applies.
    #[inline(always)]
    pub fn opens_flow(&self) -> bool {
        self.proto == PROTO_UDP || self.is_syn()
    }

    /// A TCP SYN without ACK: the first packet of a connection (or its retransmission).
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// Writes the connection this TCP/UDP packet belongs to, as seen in its direction.
    #[inline(always)]
    pub fn flow_key_into(&self, key: &mut FlowKey) {
        copy_addr(&mut key.src, &self.src);
        copy_addr(&mut key.dst, &self.dst);
        set_flow_key_tail(key, self.sport, self.dport, self.proto, self.family);
    }
}

/// Ports, protocol, family and padding of a `FlowKey`, as two word stores.
#[inline(always)]
pub fn set_flow_key_tail(key: &mut FlowKey, sport: u16, dport: u16, proto: u8, family: u8) {
    let p = (key as *mut FlowKey).cast::<u32>();
    // SAFETY: words 8 and 9 of the 40-byte, 4-byte aligned key hold sport, dport (host
    // order), proto, family and two bytes of padding (little-endian target).
    unsafe {
        core::ptr::write_volatile(p.add(8), sport as u32 | (dport as u32) << 16);
        core::ptr::write_volatile(p.add(9), proto as u32 | (family as u32) << 8);
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
#[repr(C, align(8))]
pub struct Translation {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
}

/// The packet quoted inside an ICMP error.
#[derive(Default)]
#[repr(C, align(8))]
pub struct Quoted {
    pub src: Addr,
    pub dst: Addr,
    pub l3: usize,
    pub l4: usize,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
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
        (core::ptr::read_volatile(&(*ctx.ctx).data) as usize, core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize)
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

// Packet accesses below assume what XDP guarantees in practice: the frame starts at least
// 2-byte aligned, so every 16-bit header field is 2-byte aligned (the Ethernet header is
// 14 bytes, a VLAN tag 4). 32-bit fields are accessed as two 16-bit halves: the BPF
// backend would split a misaligned 32-bit access into four byte accesses.

#[inline(always)]
fn read_be16(addr: usize) -> u16 {
    // SAFETY: callers checked `addr + 2 <= end`; aligned as said above.
    u16::from_be(unsafe { core::ptr::read(addr as *const u16) })
}

#[inline(always)]
fn write_be16(addr: usize, value: u16) {
    // SAFETY: callers checked `addr + 2 <= end`; aligned as said above.
    unsafe { core::ptr::write(addr as *mut u16, value.to_be()) }
}

/// 4 bytes of the packet as a word in memory order (as `Addr` words are kept).
#[inline(always)]
fn read_word(addr: usize) -> u32 {
    // SAFETY: callers checked `addr + 4 <= end`; aligned as said above.
    unsafe {
        let lo = core::ptr::read(addr as *const u16) as u32;
        let hi = core::ptr::read((addr + 2) as *const u16) as u32;
        lo | hi << 16
    }
}

#[inline(always)]
fn write_word(addr: usize, value: u32) {
    // SAFETY: callers checked `addr + 4 <= end`; aligned as said above.
    unsafe {
        core::ptr::write(addr as *mut u16, value as u16);
        core::ptr::write((addr + 2) as *mut u16, (value >> 16) as u16);
    }
}

/// The address `a` as four words in memory order. Every `Addr` the program touches sits
/// 4-byte aligned in a `#[repr(C, align(..))]` struct (see lb-common).
#[inline(always)]
pub fn addr_words(a: &Addr) -> [u32; 4] {
    // SAFETY: 16 bytes, 4-byte aligned as said above.
    unsafe { core::ptr::read(a.as_ptr() as *const [u32; 4]) }
}

/// Stores four words into `a` (4-byte aligned, see `addr_words`). The words go out one by
/// one and volatile, so that LLVM can't merge zeros into a `memset` call (the BPF backend
/// here lowers every memset to a call of a byte loop).
#[inline(always)]
pub fn set_addr_words(a: &mut Addr, w: [u32; 4]) {
    let p = a.as_mut_ptr() as *mut u32;
    // SAFETY: 16 bytes, 4-byte aligned as said above.
    unsafe {
        core::ptr::write_volatile(p, w[0]);
        core::ptr::write_volatile(p.add(1), w[1]);
        core::ptr::write_volatile(p.add(2), w[2]);
        core::ptr::write_volatile(p.add(3), w[3]);
    }
}

/// Copies an address (both 4-byte aligned, see `addr_words`).
#[inline(always)]
pub fn copy_addr(to: &mut Addr, from: &Addr) {
    set_addr_words(to, addr_words(from));
}

#[inline(always)]
pub fn addr_eq(a: &Addr, b: &Addr) -> bool {
    let (a, b) = (addr_words(a), addr_words(b));
    ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0
}

/// Reads the address at `pkt` into `to`; IPv4 fills the first word and zeroes the rest.
#[inline(always)]
fn read_addr(to: &mut Addr, pkt: usize, family: u8) {
    if family == FAMILY_V4 {
        set_addr_words(to, [read_word(pkt), 0, 0, 0]);
    } else {
        set_addr_words(to, [read_word(pkt), read_word(pkt + 4), read_word(pkt + 8), read_word(pkt + 12)]);
    }
}

#[inline(always)]
fn write_addr(pkt: usize, value: &Addr, family: u8) {
    let w = addr_words(value);
    write_word(pkt, w[0]);
    if family != FAMILY_V4 {
        write_word(pkt + 4, w[1]);
        write_word(pkt + 8, w[2]);
        write_word(pkt + 12, w[3]);
    }
}

/// `csum_replace_addr` on words: a big-endian 32-bit value is the byte swap of the word.
#[inline(always)]
fn csum_addr(mut csum: u16, old: &Addr, new: &Addr, family: u8) -> u16 {
    let (old, new) = (addr_words(old), addr_words(new));
    csum = csum_replace4(csum, old[0].swap_bytes(), new[0].swap_bytes());
    if family != FAMILY_V4 {
        csum = csum_replace4(csum, old[1].swap_bytes(), new[1].swap_bytes());
        csum = csum_replace4(csum, old[2].swap_bytes(), new[2].swap_bytes());
        csum = csum_replace4(csum, old[3].swap_bytes(), new[3].swap_bytes());
    }
    csum
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
    if version_ihl >> 4 != 4
        || ihl < IPV4_HLEN
        || (tot_len as usize) < ihl
        || l3 + tot_len as usize > frame_len as usize
    {
        return Err(Reason::Malformed);
    }
    read_addr(&mut h.dst, ip + 16, FAMILY_V4);
    h.family = FAMILY_V4;
    if read_be16(ip + 6) & 0x3fff != 0 {
        return Ok(Parsed::Unusual(Reason::Fragment));
    }
    if ihl != IPV4_HLEN {
        return Ok(Parsed::Unusual(Reason::IpOptions));
    }
    h.proto = read_u8(ip + 9);
    read_addr(&mut h.src, ip + 12, FAMILY_V4);
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
    read_addr(&mut h.dst, ip + 24, FAMILY_V6);
    h.family = FAMILY_V6;
    if next_header == IPV6_FRAGMENT {
        return Ok(Parsed::Unusual(Reason::Fragment));
    }
    if IPV6_EXTENSIONS.contains(&next_header) {
        return Ok(Parsed::Unusual(Reason::IpOptions));
    }
    h.proto = next_header;
    read_addr(&mut h.src, ip + 8, FAMILY_V6);
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
        h.tcp_flags = if proto == PROTO_TCP { read_u8(l4 + TCP_FLAGS_OFF) } else { 0 };
        h.l4 = L4::Ports;
        return Ok(());
    }
    if proto == icmp_proto {
        let l4 = at(ctx, off, ICMP_HLEN)?;
        let icmp_type = read_u8(l4);
        // v4: destination unreachable (incl. fragmentation needed), time exceeded.
        // v6: destination unreachable, packet too big, time exceeded.
        let is_error =
            if proto == PROTO_ICMP { icmp_type == 3 || icmp_type == 11 } else { (1..=3).contains(&icmp_type) };
        if is_error {
            // v4 code 4 is "fragmentation needed": path MTU, not unreachability.
            let code = read_u8(l4 + 1);
            h.icmp_unreachable = if proto == PROTO_ICMP { icmp_type == 3 && code != 4 } else { icmp_type == 1 };
            h.inner_l3 = off + ICMP_HLEN;
            h.l4 = L4::IcmpError;
            return Ok(());
        }
    }
    h.l4 = L4::Other;
    Ok(())
}

/// The first digit of the status code if the TCP segment's payload starts with an HTTP/1
/// status line (`HTTP/1.x NNN`).
#[inline(always)]
pub fn http_status_class(ctx: &XdpContext, h: &Headers) -> Option<u8> {
    let tcp = at(ctx, h.l4_start, TCP_MIN_HLEN).ok()?;
    let data_offset = ((read_u8(tcp + 12) >> 4) as usize) * 4;
    let line = at(ctx, h.l4_start + (data_offset & 0x3c), 12).ok()?;
    let prefix =
        [read_u8(line), read_u8(line + 1), read_u8(line + 2), read_u8(line + 3), read_u8(line + 4), read_u8(line + 5)];
    let class = read_u8(line + 9);
    (prefix == *b"HTTP/1" && read_u8(line + 8) == b' ' && (b'1'..=b'5').contains(&class)).then_some(class - b'0')
}

/// Reads the IP and port header of the packet quoted in an ICMP error into `q`. Only a TCP
/// or UDP packet without IPv4 options can belong to a flow.
#[inline(always)]
pub fn parse_quoted(ctx: &XdpContext, family: u8, l3: usize, q: &mut Quoted) -> bool {
    let (l4, proto) = if family == FAMILY_V4 {
        let Ok(ip) = at(ctx, l3, IPV4_HLEN) else {
            return false;
        };
        if read_u8(ip) != 0x45 {
            return false;
        }
        read_addr(&mut q.src, ip + 12, FAMILY_V4);
        read_addr(&mut q.dst, ip + 16, FAMILY_V4);
        (l3 + IPV4_HLEN, read_u8(ip + 9))
    } else {
        let Ok(ip) = at(ctx, l3, IPV6_HLEN) else {
            return false;
        };
        read_addr(&mut q.src, ip + 8, FAMILY_V6);
        read_addr(&mut q.dst, ip + 24, FAMILY_V6);
        (l3 + IPV6_HLEN, read_u8(ip + 6))
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return false;
    }
    let Ok(ports) = at(ctx, l4, 4) else {
        return false;
    };
    q.l3 = l3;
    q.l4 = l4;
    q.proto = proto;
    q.sport = read_be16(ports);
    q.dport = read_be16(ports + 2);
    true
}

/// Rewrites the source and destination of the IP header at offset `l3` from `old_*` to
/// `to`, keeping an IPv4 header checksum right; returns that checksum before and after
/// (zeros for IPv6, which has none). One bounds check per family, with constant offsets
/// after it: the verifier can't relate a length chosen by family to offsets chosen by family.
#[inline(always)]
fn rewrite_ip_addrs(
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
fn update_icmp_csum(ctx: &XdpContext, h: &Headers, update: impl FnOnce(u16) -> u16) -> Result<(), Reason> {
    let at_csum = at(ctx, h.l4_start + ICMP_CSUM_OFF, 2)?;
    write_be16(at_csum, update(read_be16(at_csum)));
    Ok(())
}

#[inline(never)]
fn icmp_outer_destination(ctx: &XdpContext, h: &Headers, to: &Translation) -> Result<(), Reason> {
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
fn icmp_quoted_addresses(ctx: &XdpContext, h: &Headers, quoted: &Quoted, to: &Translation) -> Result<(), Reason> {
    let family = h.family;
    // The quoted IPv4 header has its own checksum, itself covered by the ICMP one.
    let inner_csum = rewrite_ip_addrs(ctx, quoted.l3, family, &quoted.src, &quoted.dst, to)?;
    update_icmp_csum(ctx, h, |c| {
        let c = csum_replace2(c, inner_csum.0, inner_csum.1);
        csum_addr(csum_addr(c, &quoted.src, &to.src, family), &quoted.dst, &to.dst, family)
    })
}

#[inline(never)]
fn icmp_quoted_ports(ctx: &XdpContext, h: &Headers, quoted: &Quoted, to: &Translation) -> Result<(), Reason> {
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
