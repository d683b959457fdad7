//! Where a frame's headers are, read from the raw bytes (not by etherparse, which refuses
//! some of what the fuzzer sends), and its checksums: which are wrong, and setting them right.

use etherparse::checksum::Sum16BitWords;

const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

pub fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// The IP packet inside a frame, as its headers describe it, if its lengths fit the frame.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub l3: usize,
    pub v6: bool,
    /// The first byte after the fixed IP header and, for IPv4, its options.
    pub l4: usize,
    /// Where the IP packet ends by its length field.
    pub end: usize,
    /// The IPv4 protocol or IPv6 first next header.
    pub proto: u8,
    pub fragment: bool,
}

impl Layout {
    pub fn of(frame: &[u8]) -> Option<Layout> {
        let (mut l3, mut ethertype) = (14, be16(frame, 12)?);
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            (l3, ethertype) = (18, be16(frame, 16)?);
        }
        let layout = match ethertype {
            ETH_P_IP => {
                let ihl = (*frame.get(l3)? & 0x0f) as usize * 4;
                let len = be16(frame, l3 + 2)? as usize;
                (frame[l3] >> 4 == 4 && ihl >= 20 && len >= ihl && l3 + len <= frame.len()).then(|| Layout {
                    l3,
                    v6: false,
                    l4: l3 + ihl,
                    end: l3 + len,
                    proto: frame[l3 + 9],
                    fragment: be16(frame, l3 + 6).is_some_and(|f| f & 0x3fff != 0),
                })?
            }
            ETH_P_IPV6 => {
                let len = be16(frame, l3 + 4)? as usize;
                (frame.get(l3)? >> 4 == 6 && l3 + 40 + len <= frame.len()).then(|| Layout {
                    l3,
                    v6: true,
                    l4: l3 + 40,
                    end: l3 + 40 + len,
                    proto: frame[l3 + 6],
                    fragment: frame[l3 + 6] == 44,
                })?
            }
            _ => return None,
        };
        Some(layout)
    }

    pub fn addr_len(&self) -> usize {
        if self.v6 { 16 } else { 4 }
    }

    pub fn src<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        let at = self.l3 + if self.v6 { 8 } else { 12 };
        &frame[at..at + self.addr_len()]
    }

    pub fn dst<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        let at = self.l3 + if self.v6 { 24 } else { 16 };
        &frame[at..at + self.addr_len()]
    }

    /// Where the packet quoted by an ICMP/ICMPv6 error starts, if this is one.
    pub fn quote(&self, frame: &[u8]) -> Option<usize> {
        let icmp_type = *frame.get(self.l4)?;
        let is_error = match self.proto {
            ICMP => icmp_type == 3 || icmp_type == 11,
            ICMPV6 => (1..=3).contains(&icmp_type),
            _ => false,
        };
        (is_error && !self.fragment && self.l4 + 8 <= self.end).then_some(self.l4 + 8)
    }
}

/// A checksum of the frame: its field, the bytes it covers, and the pseudo-header before them.
struct Checksum {
    name: &'static str,
    field: usize,
    covers: std::ops::Range<usize>,
    pseudo: Vec<u8>,
}

fn pseudo_header(frame: &[u8], layout: &Layout, proto: u8) -> Vec<u8> {
    let mut pseudo = [layout.src(frame), layout.dst(frame)].concat();
    let len = layout.end - layout.l4;
    if layout.v6 {
        pseudo.extend_from_slice(&(len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    }
    pseudo
}

/// The checksums a frame carries: the IPv4 header's, the TCP/UDP/ICMP/ICMPv6 one (with its
/// pseudo-header) when the packet is whole, and the header checksum of an IPv4 packet quoted
/// in an ICMP error when the quote holds all of that header. A UDP/IPv4 zero (no checksum)
/// is not one.
fn checksums(frame: &[u8]) -> Vec<Checksum> {
    let Some(layout) = Layout::of(frame) else {
        return Vec::new();
    };
    let mut sums = Vec::new();
    if !layout.v6 {
        sums.push(Checksum {
            name: "ipv4 header",
            field: layout.l3 + 10,
            covers: layout.l3..layout.l4,
            pseudo: vec![],
        });
    }
    let l4_len = layout.end - layout.l4;
    let (l4, proto) = (layout.l4, layout.proto);
    let field = match proto {
        TCP if l4_len >= 20 => Some(("tcp", l4 + 16)),
        UDP if l4_len >= 8 && (layout.v6 || be16(frame, l4 + 6) != Some(0)) => Some(("udp", l4 + 6)),
        ICMP if l4_len >= 8 => Some(("icmp", l4 + 2)),
        ICMPV6 if l4_len >= 8 => Some(("icmpv6", l4 + 2)),
        _ => None,
    };
    if let (Some((name, field)), false) = (field, layout.fragment) {
        let pseudo = if proto == ICMP { vec![] } else { pseudo_header(frame, &layout, proto) };
        sums.push(Checksum { name, field, covers: l4..layout.end, pseudo });
    }
    if let Some(inner) = layout.quote(frame).filter(|_| !layout.v6) {
        let version_ihl = frame.get(inner).copied().unwrap_or(0);
        let ihl = (version_ihl & 0x0f) as usize * 4;
        if version_ihl >> 4 == 4 && ihl >= 20 && inner + ihl <= layout.end {
            sums.push(Checksum {
                name: "quoted ipv4 header",
                field: inner + 10,
                covers: inner..inner + ihl,
                pseudo: vec![],
            });
        }
    }
    sums
}

fn sum(frame: &[u8], c: &Checksum) -> u16 {
    Sum16BitWords::new().add_slice(&c.pseudo).add_slice(&frame[c.covers.clone()]).ones_complement()
}

/// The names of the checksums of `frame` that are wrong.
pub fn wrong_checksums(frame: &[u8]) -> Vec<&'static str> {
    checksums(frame).into_iter().filter(|c| sum(frame, c) != 0).map(|c| c.name).collect()
}

/// Sets every checksum of `frame` right, inner ones first (the ICMP checksum covers them).
pub fn fix_checksums(frame: &mut [u8]) {
    for c in checksums(frame).iter().rev() {
        frame[c.field..c.field + 2].copy_from_slice(&[0, 0]);
        let mut value = sum(frame, c);
        if c.name == "udp" && value == 0 {
            value = 0xffff;
        }
        frame[c.field..c.field + 2].copy_from_slice(&value.to_be_bytes());
    }
}
