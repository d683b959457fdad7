//! The packet fixtures' world: the addresses, MACs and config of `PacketEnv` runs, the
//! packet builders (etherparse, with checksums computed afresh), and the runner of cases.
//! Shared by the fixture tests and the benchmark.

use std::net::Ipv6Addr;

use anyhow::Result;
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder};
use lb_common::{FlowKey, GlobalStats, flow_hash};

use crate::packet_env::{LB_MAC, PacketEnv, expect_bytes, neighbour_mac};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const SEED: u32 = 42;
pub const NAT_MIN: u16 = 20000;
pub const NAT_MAX: u16 = 59999;

pub const CONFIG: &str = r#"
[balancer]
interfaces = ["fx0"]
ipv4 = "10.0.0.1"
ipv6 = "fd00::1"
pin_dir = "/sys/fs/bpf/lb-fixtures-unused"
maglev_table_size = 1009
max_vips = 8
max_backends = 16
flow_table_size = 1024
hash_seed = 42
nat_port_min = 20000
nat_port_max = 59999

[[vip]]
name = "v4-tcp-nat"
address = "10.100.0.1"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "10.0.1.11"
port = 8080

[[vip]]
name = "v4-udp-nat"
address = "10.100.0.1"
port = 53
protocol = "udp"
[[vip.backend]]
address = "10.0.1.12"
port = 5353

[[vip]]
name = "v4-tcp-dsr"
address = "10.100.0.2"
port = 80
protocol = "tcp"
mode = "dsr"
[[vip.backend]]
address = "10.0.1.13"

[[vip]]
name = "v6-tcp-nat"
address = "fd00:100::1"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "fd00::1:11"
port = 8080

[[vip]]
name = "v6-udp-dsr"
address = "fd00:100::2"
port = 9000
protocol = "udp"
mode = "dsr"
[[vip.backend]]
address = "fd00::1:13"
"#;

pub const NEIGHBOURS: &[&str] =
    &["10.0.0.2", "10.0.1.11", "10.0.1.12", "10.0.1.13", "fd00::2", "fd00::1:11", "fd00::1:13"];

pub const CLIENT4: [u8; 4] = [10, 0, 0, 2];
pub const LB4: [u8; 4] = [10, 0, 0, 1];
pub const VIP4: [u8; 4] = [10, 100, 0, 1];
pub const VIP4_DSR: [u8; 4] = [10, 100, 0, 2];
pub const BACKEND4: [u8; 4] = [10, 0, 1, 11];
pub const BACKEND4_UDP: [u8; 4] = [10, 0, 1, 12];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 2];
pub const CPORT: u16 = 40000;
pub const PAYLOAD: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("ipv6 literal").octets()
}

pub fn addr16(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0; 16];
    a[..4].copy_from_slice(&v4);
    a
}

/// The balancer-side port the program picks for a new nat flow (first candidate).
pub fn nat_port(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, proto: u8, family: u8) -> u16 {
    let flow = FlowKey { src, dst, sport, dport, proto, family, _pad: [0; 2] };
    let span = (NAT_MAX - NAT_MIN) as u32 + 1;
    (NAT_MIN as u32 + flow_hash(&flow, !SEED) % span) as u16
}

pub fn write(builder: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    builder(&mut out);
    out
}

pub fn tcp4(smac: [u8; 6], dmac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    write(|out| {
        let b = PacketBuilder::ethernet2(smac, dmac).ipv4(src, dst, 64).tcp(sport, dport, 1000, 64240);
        let b = if syn { b.syn() } else { b.ack(2000) };
        b.write(out, PAYLOAD).expect("build tcp4");
    })
}

pub fn udp4(smac: [u8; 6], dmac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    write(|out| {
        PacketBuilder::ethernet2(smac, dmac)
            .ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(out, b"query")
            .expect("build udp4")
    })
}

pub fn tcp6(smac: [u8; 6], dmac: [u8; 6], src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    write(|out| {
        PacketBuilder::ethernet2(smac, dmac)
            .ipv6(src, dst, 64)
            .tcp(sport, dport, 1000, 64240)
            .syn()
            .write(out, PAYLOAD)
            .expect("build tcp6")
    })
}

pub fn udp6(smac: [u8; 6], dmac: [u8; 6], src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    write(|out| {
        PacketBuilder::ethernet2(smac, dmac)
            .ipv6(src, dst, 64)
            .udp(sport, dport)
            .write(out, b"query")
            .expect("build udp6")
    })
}

/// An IPv4 TCP packet with the given header tweaks (options, fragment bits).
pub fn tcp4_with(dst: [u8; 4], tweak: impl FnOnce(&mut Ipv4Header)) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, CLIENT4, dst).expect("ipv4 header");
    tweak(&mut ip);
    write(|out| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .tcp(CPORT, 80, 1000, 64240)
            .syn()
            .write(out, PAYLOAD)
            .expect("build tweaked tcp4")
    })
}

pub struct Fixtures {
    pub env: PacketEnv,
}

impl Fixtures {
    pub fn new(tag: &str) -> Self {
        Self { env: PacketEnv::new(tag, CONFIG, NEIGHBOURS).expect("fixture environment") }
    }

    /// Runs one case: `input` must give `verdict`, and (for TX and PASS) exactly `want`.
    pub fn case(&mut self, name: &str, input: &[u8], verdict: u32, want: Option<&[u8]>) -> Result<()> {
        let (got_verdict, got) = self.env.run("xdp_lb", input)?;
        anyhow::ensure!(got_verdict == verdict, "{name}: verdict {got_verdict}, want {verdict}");
        if let Some(want) = want {
            expect_bytes(name, &got, want)?;
        }
        Ok(())
    }

    pub fn global(&self) -> GlobalStats {
        self.env.dataplane.global_stats().expect("global stats")
    }
}

/// A TCP segment from the v4 nat backend to the balancer's `port`, with `flags` set by
/// `tweak` and `payload`.
pub fn from_backend(port: u16, payload: &[u8], tweak: impl FnOnce(&mut etherparse::TcpHeader)) -> Vec<u8> {
    let mut tcp = etherparse::TcpHeader::new(8080, port, 7000, 64240);
    tweak(&mut tcp);
    write(|out| {
        PacketBuilder::ethernet2(neighbour_mac(11), LB_MAC)
            .ipv4(BACKEND4, LB4, 64)
            .tcp_header(tcp)
            .write(out, payload)
            .expect("backend segment")
    })
}

/// The balancer section of [`CONFIG`], then a dsr TCP VIP (id 0, 10.100.0.2:80) and a nat
/// UDP VIP (id 1, 10.100.0.1:53), both with the rate-limit tables `limits`.
pub fn limited(limits: &str) -> String {
    let balancer = CONFIG.split("[[vip]]").next().expect("balancer section");
    format!(
        r#"{balancer}
[[vip]]
name = "limited-tcp"
address = "10.100.0.2"
port = 80
mode = "dsr"
{limits}
[[vip.backend]]
address = "10.0.1.13"

[[vip]]
name = "limited-udp"
address = "10.100.0.1"
port = 53
protocol = "udp"
{limits}
[[vip.backend]]
address = "10.0.1.12"
port = 5353
"#
    )
}

pub const LIMITED_TCP: u32 = 0;
pub const LIMITED_UDP: u32 = 1;

impl Fixtures {
    pub fn with_limits(tag: &str, limits: &str) -> Self {
        Self { env: PacketEnv::new(tag, &limited(limits), NEIGHBOURS).expect("fixture environment") }
    }

    /// The verdicts of a TCP packet from `client`:`port` to the limited dsr VIP.
    pub fn tcp(&mut self, client: [u8; 4], port: u16, syn: bool) -> Result<u32> {
        Ok(self.env.run("xdp_lb", &tcp4(CLIENT_MAC, LB_MAC, client, VIP4_DSR, port, 80, syn))?.0)
    }

    /// The verdicts of SYNs from `client` on each of `ports`.
    pub fn syns(&mut self, client: [u8; 4], ports: std::ops::Range<u16>) -> Result<Vec<u32>> {
        ports.map(|port| self.tcp(client, port, true)).collect()
    }

    pub fn udp(&mut self, port: u16) -> Result<u32> {
        Ok(self.env.run("xdp_lb", &udp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, port, 53))?.0)
    }

    pub fn vip(&self, vip_id: u32) -> lb_common::VipStats {
        self.env.dataplane.vip_stats(vip_id).expect("vip stats")
    }
}

/// An IPv4 TCP segment with the flags `tweak` sets, from `src`:`sport` to `dst`:`dport`.
#[allow(clippy::too_many_arguments)]
pub fn tcp4_segment(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    tweak: impl FnOnce(&mut etherparse::TcpHeader),
) -> Vec<u8> {
    let mut tcp = etherparse::TcpHeader::new(sport, dport, 1000, 64240);
    tweak(&mut tcp);
    write(|out| {
        PacketBuilder::ethernet2(smac, dmac).ipv4(src, dst, 64).tcp_header(tcp).write(out, b"").expect("segment")
    })
}

/// The TCP flags of a handshake and a close, for [`tcp4_segment`].
pub fn syn(t: &mut etherparse::TcpHeader) {
    t.syn = true;
}
pub fn syn_ack(t: &mut etherparse::TcpHeader) {
    t.syn = true;
    t.ack = true;
}
pub fn ack(t: &mut etherparse::TcpHeader) {
    t.ack = true;
}
pub fn fin_ack(t: &mut etherparse::TcpHeader) {
    t.fin = true;
    t.ack = true;
}
pub fn rst(t: &mut etherparse::TcpHeader) {
    t.rst = true;
}

/// [`CONFIG`] with `extra` at the end of its `[balancer]` section: keys (which replace
/// those of the same name), then sub-tables such as `[balancer.flow_timeouts]`.
pub fn config_with(extra: &str) -> String {
    let (balancer, vips) = CONFIG.split_once("[[vip]]").expect("CONFIG has VIPs");
    let keys: Vec<&str> = extra
        .lines()
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let kept: Vec<&str> =
        balancer.lines().filter(|l| !l.split_once('=').is_some_and(|(k, _)| keys.contains(&k.trim()))).collect();
    format!("{}\n{extra}\n\n[[vip]]{vips}", kept.join("\n"))
}

/// The ports of a TCP or UDP packet (after the Ethernet, VLAN and IP headers).
pub fn ports_of(frame: &[u8]) -> (u16, u16) {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).expect("a parsable frame");
    match sliced.transport.expect("a transport header") {
        etherparse::TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
        etherparse::TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
        other => panic!("not TCP or UDP: {other:?}"),
    }
}

/// The packet a router quotes in an ICMP error: the first 28 (v4) bytes of what it dropped.
pub fn quoted_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let full = write(|out| {
        PacketBuilder::ipv4(src, dst, 63).tcp(sport, dport, 5000, 64240).ack(1001).write(out, PAYLOAD).expect("quoted")
    });
    full[..28].to_vec()
}
