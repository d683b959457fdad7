//! Header parsing: what the packet is, and where its headers are.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use crate::mem::copy_addr;
use crate::packet::*;
use crate::stats::Reason;

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
pub fn parse(ctx: &impl Frame, h: &mut Headers) -> Result<Parsed, Reason> {
    let eth = at(ctx, 0, ETH_HLEN)?;
    let mut ethertype = read_be16(eth + 12);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tagged = at(ctx, 0, ETH_HLEN + 4)?;
        ethertype = read_be16(tagged + 16);
        l3 = ETH_HLEN + 4;
    }
    let frame_len = frame_len(ctx);
    match ethertype {
        ETH_P_IP => parse_v4(ctx, h, l3, frame_len),
        ETH_P_IPV6 => parse_v6(ctx, h, l3, frame_len),
        _ => Err(Reason::Passed),
    }
}

#[inline(always)]
pub fn parse_v4(ctx: &impl Frame, h: &mut Headers, l3: usize, frame_len: u32) -> Result<Parsed, Reason> {
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
pub fn parse_v6(ctx: &impl Frame, h: &mut Headers, l3: usize, frame_len: u32) -> Result<Parsed, Reason> {
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
pub fn parse_l4(ctx: &impl Frame, h: &mut Headers, icmp_proto: u8) -> Result<(), Reason> {
    let (off, proto) = (h.l4_start, h.proto);
    // What the IP header says the packet holds: the frame may be longer (padding), and what
    // lies beyond the IP length is no part of the packet, nor of its checksums.
    let ip_end = h.l3 + h.ip_len as usize;
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let l4 = at(ctx, off, if proto == PROTO_TCP { TCP_MIN_HLEN } else { UDP_HLEN })?;
        let len = if proto == PROTO_TCP {
            ((read_u8(l4 + TCP_DATA_OFFSET_OFF) >> 4) as usize) * 4
        } else {
            read_be16(l4 + UDP_LEN_OFF) as usize
        };
        let min = if proto == PROTO_TCP { TCP_MIN_HLEN } else { UDP_HLEN };
        // The TCP header (with its options), or the whole UDP datagram, within the packet.
        if len < min || off + len > ip_end {
            return Err(Reason::Malformed);
        }
        h.sport = read_be16(l4);
        h.dport = read_be16(l4 + 2);
        h.tcp_flags = if proto == PROTO_TCP { read_u8(l4 + TCP_FLAGS_OFF) } else { 0 };
        h.l4 = L4::Ports;
        return Ok(());
    }
    if proto == icmp_proto {
        let l4 = at(ctx, off, ICMP_HLEN)?;
        if off + ICMP_HLEN > ip_end {
            return Err(Reason::Malformed);
        }
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
/// or UDP packet of the error's IP version, without IPv4 options, can belong to a flow.
/// Both must lie within the ICMP message (`end`: where the outer IP packet ends), which its
/// checksum covers: a rewrite of bytes beyond it would be applied to a checksum that never
/// counted them.
#[inline(always)]
pub fn parse_quoted(ctx: &XdpContext, family: u8, l3: usize, end: usize, q: &mut Quoted) -> bool {
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
        if read_u8(ip) >> 4 != 6 {
            return false;
        }
        read_addr(&mut q.src, ip + 8, FAMILY_V6);
        read_addr(&mut q.dst, ip + 24, FAMILY_V6);
        (l3 + IPV6_HLEN, read_u8(ip + 6))
    };
    if (proto != PROTO_TCP && proto != PROTO_UDP) || l4 + 4 > end {
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
