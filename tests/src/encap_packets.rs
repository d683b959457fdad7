//! The encapsulated modes' fixture world: a VIP for each mode (`ipip`, `gue`), family
//! (IPv4 in IPv4, IPv6 in IPv6, IPv4 in IPv6) and protocol, and the packets the program must
//! make of a client's: built here with etherparse (checksums computed afresh), so equal
//! bytes also prove the program's outer checksums. Shared by the fixture tests and the bench.

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Type, Icmpv6Type, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
    SingleVlanHeader, UdpHeader, VlanId, icmpv4::DestUnreachableHeader,
};
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, flow_hash, gue_source_port};

use crate::packet_env::{LB_MAC, neighbour_mac};
use crate::packets::{CLIENT_MAC, CLIENT4, CONFIG, LB4, SEED, addr16, tcp4, tcp6, udp4, udp6, v6};

/// The balancers' gue port in [`encap_config`].
pub const GUE_PORT: u16 = 6080;
pub const LB6: &str = "fd00::1";
pub const CLIENT6: &str = "fd00::2";

/// How a VIP's packets travel to its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carriage {
    /// IPv4 in IPv4.
    V4InV4,
    /// IPv6 in IPv6.
    V6InV6,
    /// IPv4 in IPv6 (an IPv6-only backend).
    V4InV6,
}

/// One VIP of [`encap_config`]: its mode, carriage and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapVip {
    pub gue: bool,
    pub carriage: Carriage,
    pub udp: bool,
}

impl EncapVip {
    /// Every combination, in the order of [`encap_config`]'s VIPs (the VIP id is the index).
    pub fn all() -> Vec<EncapVip> {
        let mut all = Vec::new();
        for gue in [false, true] {
            for carriage in [Carriage::V4InV4, Carriage::V6InV6, Carriage::V4InV6] {
                for udp in [false, true] {
                    all.push(EncapVip { gue, carriage, udp });
                }
            }
        }
        all
    }

    fn index(&self) -> u8 {
        EncapVip::all().iter().position(|v| v == self).expect("a combination") as u8
    }

    pub fn name(&self) -> String {
        let mode = if self.gue { "gue" } else { "ipip" };
        let proto = if self.udp { "udp" } else { "tcp" };
        format!("{mode}-{:?}-{proto}", self.carriage).to_lowercase()
    }

    pub fn inner_v4(&self) -> bool {
        self.carriage != Carriage::V6InV6
    }

    pub fn outer_v4(&self) -> bool {
        self.carriage == Carriage::V4InV4
    }

    pub fn port(&self) -> u16 {
        if self.udp { 53 } else { 80 }
    }

    /// The VIP's address: one per mode and carriage (TCP and UDP share it).
    pub fn vip(&self) -> [u8; 16] {
        let n = 10 + self.index() / 2;
        if self.inner_v4() { addr16([10, 100, 1, n]) } else { v6(&format!("fd00:100::1:{n}")) }
    }

    /// The backend's last address byte (its MAC's too): one backend per VIP.
    pub fn backend_byte(&self) -> u8 {
        0x40 + self.index()
    }

    pub fn backend(&self) -> [u8; 16] {
        let b = self.backend_byte();
        if self.outer_v4() { addr16([10, 0, 1, b]) } else { v6(&format!("fd00::1:{b:x}")) }
    }

    /// The backend's address, as the config and `DecapConfig` have it.
    pub fn backend_ip(&self) -> std::net::IpAddr {
        EncapVip::addr_text(self.backend(), self.outer_v4()).parse().expect("an address")
    }

    fn addr_text(a: [u8; 16], v4: bool) -> String {
        if v4 {
            std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
        } else {
            std::net::Ipv6Addr::from(a).to_string()
        }
    }

    /// A client's packet to the VIP from `sport` (a SYN for TCP).
    pub fn client_packet(&self, sport: u16) -> Vec<u8> {
        let (vip, port) = (self.vip(), self.port());
        match (self.inner_v4(), self.udp) {
            (true, false) => tcp4(CLIENT_MAC, LB_MAC, CLIENT4, v4(vip), sport, port, true),
            (true, true) => udp4(CLIENT_MAC, LB_MAC, CLIENT4, v4(vip), sport, port),
            (false, false) => tcp6(CLIENT_MAC, LB_MAC, v6(CLIENT6), vip, sport, port),
            (false, true) => udp6(CLIENT_MAC, LB_MAC, v6(CLIENT6), vip, sport, port),
        }
    }

    /// A client's packet to the VIP from `sport` whose IP packet is `ip_len` bytes long.
    pub fn client_packet_of(&self, sport: u16, ip_len: usize) -> Vec<u8> {
        let (vip, port) = (self.vip(), self.port());
        let l4 = if self.udp { 8 } else { 20 };
        let payload = vec![0x5a; ip_len - if self.inner_v4() { 20 } else { 40 } - l4];
        let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        let ip = if self.inner_v4() { builder.ipv4(CLIENT4, v4(vip), 64) } else { builder.ipv6(v6(CLIENT6), vip, 64) };
        let mut out = Vec::new();
        if self.udp {
            ip.udp(sport, port).write(&mut out, &payload).expect("udp");
        } else {
            ip.tcp(sport, port, 1000, 64240).ack(2000).write(&mut out, &payload).expect("tcp");
        }
        out
    }

    /// The answer to a client's `input` too big once encapsulated: ICMP "fragmentation
    /// needed" or ICMPv6 "packet too big" with `mtu`, from the VIP, quoting the IP header
    /// and 8 bytes.
    pub fn too_big_answer(&self, input: &[u8], mtu: u32) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC);
        let mut out = Vec::new();
        if self.inner_v4() {
            let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu as u16,
            });
            let quoted = &input[ETH_LEN..ETH_LEN + 28];
            builder.ipv4(v4(self.vip()), CLIENT4, 64).icmpv4(kind).write(&mut out, quoted).expect("icmp");
        } else {
            let quoted = &input[ETH_LEN..ETH_LEN + 48];
            let kind = Icmpv6Type::PacketTooBig { mtu };
            builder.ipv6(self.vip(), v6(CLIENT6), 64).icmpv6(kind).write(&mut out, quoted).expect("icmpv6");
        }
        out
    }

    /// The bytes the outer headers add.
    pub fn added(&self) -> usize {
        (if self.outer_v4() { 20 } else { 40 }) + if self.gue { 8 } else { 0 }
    }

    /// The flow hash of the client's flow from `sport` (gue's source port, IPv6's label).
    pub fn flow_hash(&self, sport: u16) -> u32 {
        let (src, family) = if self.inner_v4() { (addr16(CLIENT4), FAMILY_V4) } else { (v6(CLIENT6), FAMILY_V6) };
        let proto = if self.udp { PROTO_UDP } else { PROTO_TCP };
        let flow = FlowKey { src, dst: self.vip(), sport, dport: self.port(), proto, family, _pad: [0; 2] };
        flow_hash(&flow, SEED)
    }

    /// What the balancer sends for `input` (a client's frame, [`ETH_LEN`] of Ethernet and
    /// `vlan` tag before its IP packet) of the flow from `sport`: the frame to the backend's
    /// MAC, the same tag, the outer header(s), and the IP packet untouched.
    pub fn encapsulated(&self, input: &[u8], sport: u16, vlan: Option<u16>) -> Vec<u8> {
        let inner = &input[ETH_LEN + vlan.map_or(0, |_| 4)..];
        let hash = self.flow_hash(sport);
        let udp_len = if self.gue { 8 } else { 0 };
        let payload_len = udp_len + inner.len();
        let (outer_type, mut out) = (if self.outer_v4() { EtherType::IPV4 } else { EtherType::IPV6 }, Vec::new());
        let mut eth =
            Ethernet2Header { source: LB_MAC, destination: neighbour_mac(self.backend_byte()), ether_type: outer_type };
        if let Some(id) = vlan {
            eth.ether_type = EtherType::VLAN_TAGGED_FRAME;
            eth.write(&mut out).expect("ethernet");
            let tag = SingleVlanHeader {
                vlan_id: VlanId::try_new(id).expect("vlan id"),
                ether_type: outer_type,
                ..Default::default()
            };
            tag.write(&mut out).expect("vlan");
        } else {
            eth.write(&mut out).expect("ethernet");
        }
        let next = if self.gue {
            IpNumber::UDP
        } else if self.inner_v4() {
            IpNumber::IPV4
        } else {
            IpNumber::IPV6
        };
        let sport_out = gue_source_port(hash);
        if self.outer_v4() {
            let mut ip = Ipv4Header::new(payload_len as u16, 64, next, LB4, v4(self.backend())).expect("outer ipv4");
            ip.dont_fragment = true;
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).expect("outer ipv4");
            if self.gue {
                // IPv4: gue goes without a UDP checksum, as the kernel's fou sends it.
                let udp = UdpHeader {
                    source_port: sport_out,
                    destination_port: GUE_PORT,
                    length: payload_len as u16,
                    checksum: 0,
                };
                udp.write(&mut out).expect("udp");
            }
        } else {
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::try_new(hash & 0xf_ffff).expect("flow label"),
                payload_length: payload_len as u16,
                next_header: next,
                hop_limit: 64,
                source: v6(LB6),
                destination: self.backend(),
            };
            ip.write(&mut out).expect("outer ipv6");
            if self.gue {
                let udp = UdpHeader::with_ipv6_checksum(sport_out, GUE_PORT, &ip, inner).expect("udp");
                udp.write(&mut out).expect("udp");
            }
        }
        out.extend_from_slice(inner);
        out
    }

    /// What `xdp_decap` passes on for the balancer's `encapsulated` frame: its Ethernet
    /// header (the backend's MAC) and tag, and the client's IP packet of `input`.
    pub fn decapsulated(&self, input: &[u8], encapsulated: &[u8], vlan: bool) -> Vec<u8> {
        let l2 = ETH_LEN + if vlan { 4 } else { 0 };
        let mut out = encapsulated[..l2].to_vec();
        let ethertype: u16 = if self.inner_v4() { 0x0800 } else { 0x86dd };
        out[l2 - 2..].copy_from_slice(&ethertype.to_be_bytes());
        out.extend_from_slice(&input[l2..]);
        out
    }
}

pub const ETH_LEN: usize = 14;

fn v4(a: [u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// The fixtures' balancer section with a VIP per [`EncapVip::all`].
pub fn encap_config() -> String {
    let balancer = CONFIG.split("[[vip]]").next().expect("balancer section");
    let balancer = balancer.replace("max_vips = 8", "max_vips = 16").replace("max_backends = 16", "max_backends = 32");
    let mut text = format!("{balancer}gue_port = {GUE_PORT}\n");
    for v in EncapVip::all() {
        text += &format!(
            "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\nmode = \"{}\"\n[[vip.backend]]\naddress = \"{}\"\n",
            v.name(),
            EncapVip::addr_text(v.vip(), v.inner_v4()),
            v.port(),
            if v.udp { "udp" } else { "tcp" },
            if v.gue { "gue" } else { "ipip" },
            EncapVip::addr_text(v.backend(), v.outer_v4()),
        );
    }
    text
}

/// Every backend of [`encap_config`], for the environment's neighbour table.
pub fn encap_neighbours() -> Vec<String> {
    let mut all: Vec<String> = ["10.0.0.2", "fd00::2"].map(String::from).to_vec();
    all.extend(EncapVip::all().iter().map(|v| EncapVip::addr_text(v.backend(), v.outer_v4())));
    all
}
