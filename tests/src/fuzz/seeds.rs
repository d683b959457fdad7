//! Valid frames of every kind the program handles: client -> VIP (TCP with any flags, UDP),
//! nat replies from backends, ICMP/ICMPv6 errors quoting the flows seen so far (to the VIP,
//! and to the balancer about its own nat packets), other traffic to VIP addresses and to
//! the balancer, traffic for other hosts, ARP. Fragments, options, extension headers and
//! VLAN tags come from the mutations.

use std::net::IpAddr;

use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, TcpHeader};
use fastrand::Rng;

use super::world::{Model, Tuple, World, last_byte};
use crate::packet_env::{LB_MAC, neighbour_mac};

/// The TCP flag combinations of a connection's life, and odd ones.
const TCP_FLAGS: [u8; 9] = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x03, 0x00];

/// A TCP (`flags`) or UDP frame from `t.src` to `t.dst`, sent by the host of `t.src`'s MAC.
pub fn frame(t: &Tuple, flags: u8, payload: &[u8]) -> Vec<u8> {
    let smac = neighbour_mac(last_byte(t.src));
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(smac, LB_MAC);
    let mut tcp = TcpHeader::new(t.sport, t.dport, 1000, 64240);
    (tcp.fin, tcp.syn, tcp.rst, tcp.psh, tcp.ack) =
        (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0, flags & 8 != 0, flags & 0x10 != 0);
    let built = match (t.src, t.dst, t.proto) {
        (IpAddr::V4(s), IpAddr::V4(d), 6) => {
            eth.ipv4(s.octets(), d.octets(), 64).tcp_header(tcp).write(&mut out, payload)
        }
        (IpAddr::V4(s), IpAddr::V4(d), _) => {
            eth.ipv4(s.octets(), d.octets(), 64).udp(t.sport, t.dport).write(&mut out, payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d), 6) => {
            eth.ipv6(s.octets(), d.octets(), 64).tcp_header(tcp).write(&mut out, payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d), _) => {
            eth.ipv6(s.octets(), d.octets(), 64).udp(t.sport, t.dport).write(&mut out, payload)
        }
        _ => panic!("mixed families in {t:?}"),
    };
    built.expect("seed frame");
    out
}

/// An ICMP (v4) or ICMPv6 message of `icmp_type`/`code` from `router` to `dst`, quoting `quoted`.
fn icmp(router: IpAddr, dst: IpAddr, icmp_type: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(neighbour_mac(last_byte(router)), LB_MAC);
    let mut out = Vec::new();
    let built = match (router, dst) {
        (IpAddr::V4(r), IpAddr::V4(d)) => eth
            .ipv4(r.octets(), d.octets(), 64)
            .icmpv4(Icmpv4Type::Unknown { type_u8: icmp_type, code_u8: code, bytes5to8: rest })
            .write(&mut out, quoted),
        (IpAddr::V6(r), IpAddr::V6(d)) => eth
            .ipv6(r.octets(), d.octets(), 64)
            .icmpv6(Icmpv6Type::Unknown { type_u8: icmp_type, code_u8: code, bytes5to8: rest })
            .write(&mut out, quoted),
        _ => panic!("mixed families: {router} {dst}"),
    };
    built.expect("icmp seed");
    out
}

pub struct Seeds<'a> {
    pub rng: &'a mut Rng,
    pub world: &'a World,
    pub model: &'a Model,
}

impl Seeds<'_> {
    pub fn next(&mut self) -> Vec<u8> {
        match self.rng.u8(0..100) {
            0..40 => self.client_to_vip(),
            40..60 => self.reply(),
            60..75 => self.icmp_about_a_flow(),
            75..80 => self.icmp_to_the_balancer(),
            80..88 => self.odd_port_or_protocol(),
            _ => self.not_for_a_vip(),
        }
    }

    /// Random bytes, or the start of an HTTP response (which nat replies are watched for).
    fn payload(&mut self) -> Vec<u8> {
        if self.rng.u8(0..8) == 0 {
            let status = self.rng.choice(["200 OK", "503 Busy", "404 No", "999 ?"]).expect("statuses");
            return format!("HTTP/1.1 {status}\r\n\r\n").into_bytes();
        }
        let len = *self.rng.choice(&[0usize, 1, 5, 18, 64, 300]).expect("lengths");
        std::iter::repeat_with(|| self.rng.u8(..)).take(len).collect()
    }

    fn client(&mut self, v4: bool) -> IpAddr {
        let same: Vec<IpAddr> = self.world.clients.iter().copied().filter(|c| c.is_ipv4() == v4).collect();
        *self.rng.choice(&same).expect("clients of both families")
    }

    fn flags(&mut self) -> u8 {
        *self.rng.choice(&TCP_FLAGS).expect("flags")
    }

    /// A client's packet to a VIP, from a small range of ports so that flows repeat.
    fn client_to_vip(&mut self) -> Vec<u8> {
        let vip = self.rng.choice(&self.world.vips).expect("vips");
        let (addr, port, proto) = (vip.addr, vip.port, vip.proto);
        let t =
            Tuple { proto, src: self.client(addr.is_ipv4()), sport: self.rng.u16(1000..1100), dst: addr, dport: port };
        let (flags, payload) = (self.flags(), self.payload());
        frame(&t, flags, &payload)
    }

    /// A backend's packet on a nat flow seen so far (a tenth of them to another port).
    fn reply(&mut self) -> Vec<u8> {
        let Some(&(mut t)) = self.rng.choice(&self.model.nat_seen) else {
            return self.client_to_vip();
        };
        if self.rng.u8(0..10) == 0 {
            t.dport = self.rng.u16(self.world.nat_ports.clone());
        }
        let (flags, payload) = (self.flags(), self.payload());
        frame(&t, flags, &payload)
    }

    /// The first `len` bytes of the IP packet of `t`, or all of it.
    fn quote(&mut self, t: &Tuple) -> Vec<u8> {
        let payload = self.payload();
        let packet = frame(t, 0x10, &payload)[14..].to_vec();
        let header = if t.src.is_ipv4() { 20 } else { 40 };
        let len = *self.rng.choice(&[header + 8, header + 4, header + 20, packet.len()]).expect("quote lengths");
        packet[..len.min(packet.len())].to_vec()
    }

    fn icmp_type(&mut self, v4: bool) -> (u8, u8) {
        if v4 {
            *self
                .rng
                .choice(&[(3, 4), (3, 1), (3, 3), (3, 13), (11, 0), (11, 1), (5, 1), (12, 0), (0, 0)])
                .expect("types")
        } else {
            *self.rng.choice(&[(1, 4), (1, 0), (2, 0), (3, 0), (3, 1), (4, 0), (128, 0)]).expect("types")
        }
    }

    /// An ICMP error from a router to a VIP about the VIP's packet to a client of a flow seen.
    fn icmp_about_a_flow(&mut self) -> Vec<u8> {
        let Some(&flow) = self.rng.choice(&self.model.flows_seen) else {
            return self.client_to_vip();
        };
        let v4 = flow.src.is_ipv4();
        let router = if v4 { "10.0.0.254".parse() } else { "fd00::fe".parse() }.expect("router");
        let quoted = self.quote(&flow.reversed());
        let (icmp_type, code) = self.icmp_type(v4);
        icmp(router, flow.dst, icmp_type, code, [0, 0, 5, 0xdc], &quoted)
    }

    /// An ICMP error from a backend to the balancer about a nat packet it sent the backend.
    fn icmp_to_the_balancer(&mut self) -> Vec<u8> {
        let Some(&reply) = self.rng.choice(&self.model.nat_seen) else {
            return self.client_to_vip();
        };
        let quoted = self.quote(&reply.reversed());
        let (icmp_type, code) = self.icmp_type(reply.src.is_ipv4());
        icmp(reply.src, reply.dst, icmp_type, code, [0; 4], &quoted)
    }

    /// A VIP address with a port or protocol it doesn't serve, or the balancer's own address.
    fn odd_port_or_protocol(&mut self) -> Vec<u8> {
        let vip = self.rng.choice(&self.world.vips).expect("vips");
        let (addr, proto) = (vip.addr, if self.rng.bool() { 6 } else { 17 });
        let dst = if self.rng.bool() { addr } else { self.world.lb(addr) };
        let t = Tuple {
            proto,
            src: self.client(addr.is_ipv4()),
            sport: self.rng.u16(1000..1100),
            dst,
            dport: self.rng.u16(..),
        };
        let (flags, payload) = (self.flags(), self.payload());
        frame(&t, flags, &payload)
    }

    /// Traffic between hosts other than the VIPs, pings, ARP.
    fn not_for_a_vip(&mut self) -> Vec<u8> {
        let v4 = self.rng.bool();
        let client = self.client(v4);
        match self.rng.u8(0..3) {
            0 => {
                let other = if v4 { "10.0.9.9".parse() } else { "fd00::9:9".parse() }.expect("other host");
                let t = Tuple {
                    proto: *self.rng.choice(&[6, 17]).expect("proto"),
                    src: client,
                    sport: 5000,
                    dst: other,
                    dport: 53,
                };
                let (flags, payload) = (self.flags(), self.payload());
                frame(&t, flags, &payload)
            }
            1 => {
                let dst = self.world.lb(client);
                let (icmp_type, rest) = if v4 { (8, [0, 1, 0, 1]) } else { (128, [0, 1, 0, 1]) };
                icmp(client, dst, icmp_type, 0, rest, b"ping")
            }
            _ => {
                let mut arp = vec![0xff; 6];
                arp.extend_from_slice(&neighbour_mac(last_byte(client)));
                arp.extend_from_slice(&[0x08, 0x06]);
                arp.extend_from_slice(&[0u8; 28]);
                arp
            }
        }
    }
}
