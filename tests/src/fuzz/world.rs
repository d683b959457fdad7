//! What the fuzzer knows: the configured VIPs and backends, the clients it sends from, and
//! a model of the flows, learnt from what the program sent out (which client opened which
//! nat port), against which replies and ICMP errors are checked.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use anyhow::{Context as _, Result};
use lb_userspace::config::{self, ForwardingMode};

use super::frame::Layout;

/// A TCP/UDP packet's (or connection's) addresses and ports, in its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl Tuple {
    pub fn reversed(self) -> Tuple {
        Tuple { proto: self.proto, src: self.dst, sport: self.dport, dst: self.src, dport: self.sport }
    }

    /// The tuple of the TCP/UDP packet whose IP header is at `l3` (IPv4 or IPv6 by its
    /// version) and whose ports lie before `end`.
    pub fn at(frame: &[u8], l3: usize, end: usize) -> Option<Tuple> {
        let version = frame.get(l3)? >> 4;
        let (proto, l4, alen, src_at, dst_at) = match version {
            4 => (*frame.get(l3 + 9)?, l3 + (frame[l3] & 0x0f) as usize * 4, 4, 12, 16),
            6 => (*frame.get(l3 + 6)?, l3 + 40, 16, 8, 24),
            _ => return None,
        };
        if (proto != 6 && proto != 17) || l4 + 4 > end.min(frame.len()) || l3 + dst_at + alen > frame.len() {
            return None;
        }
        let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
        Some(Tuple {
            proto,
            src: addr(&frame[l3 + src_at..l3 + src_at + alen]),
            sport: port(l4),
            dst: addr(&frame[l3 + dst_at..l3 + dst_at + alen]),
            dport: port(l4 + 2),
        })
    }

    /// The tuple of a frame's unfragmented TCP/UDP packet.
    pub fn of(frame: &[u8]) -> Option<Tuple> {
        let layout = Layout::of(frame)?;
        if layout.fragment {
            return None;
        }
        Tuple::at(frame, layout.l3, layout.end)
    }
}

pub fn addr(bytes: &[u8]) -> IpAddr {
    match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes"))),
        _ => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))),
    }
}

pub fn last_byte(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    }
}

pub struct Vip {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub nat: bool,
    /// Address and port of each backend.
    pub backends: Vec<(IpAddr, u16)>,
}

pub struct World {
    pub vips: Vec<Vip>,
    pub lb4: IpAddr,
    pub lb6: IpAddr,
    pub nat_ports: RangeInclusive<u16>,
    /// Clients on the balancer's wire, the last ones without neighbour entries.
    pub clients: Vec<IpAddr>,
}

impl World {
    pub fn of_config(config_toml: &str, clients: &[&str]) -> Result<World> {
        let config = config::parse(config_toml, "fuzz.toml").map_err(|e| anyhow::anyhow!("{e}"))?;
        let vips = config
            .vips
            .iter()
            .map(|v| Vip {
                addr: v.address,
                port: v.port,
                proto: v.protocol.number(),
                nat: v.mode == ForwardingMode::Nat,
                backends: v.backends.iter().map(|b| (b.address, b.port)).collect(),
            })
            .collect();
        let b = &config.balancer;
        Ok(World {
            vips,
            lb4: IpAddr::V4(b.ipv4.context("balancer.ipv4")?),
            lb6: IpAddr::V6(b.ipv6.context("balancer.ipv6")?),
            nat_ports: b.nat_port_min..=b.nat_port_max,
            clients: clients.iter().map(|c| c.parse()).collect::<Result<_, _>>()?,
        })
    }

    pub fn lb(&self, of: IpAddr) -> IpAddr {
        if of.is_ipv4() { self.lb4 } else { self.lb6 }
    }

    pub fn vip(&self, addr: IpAddr, port: u16, proto: u8) -> Option<&Vip> {
        self.vips.iter().find(|v| v.addr == addr && v.port == port && v.proto == proto)
    }

    pub fn is_vip_addr(&self, addr: IpAddr) -> bool {
        self.vips.iter().any(|v| v.addr == addr)
    }
}

/// The flows as the program's outputs showed them.
#[derive(Default)]
pub struct Model {
    /// Reply tuple (backend -> balancer:nat port) -> the client flow (client -> VIP) that the
    /// last forwarded packet with that port belonged to.
    pub nat: BTreeMap<Tuple, Tuple>,
    /// Client flow -> the backend it was last forwarded to.
    pub flows: BTreeMap<Tuple, IpAddr>,
    /// The keys of `nat` and `flows` in the order first seen, to pick seeds from.
    pub nat_seen: Vec<Tuple>,
    pub flows_seen: Vec<Tuple>,
}

impl Model {
    /// Learns that a packet of `client_flow` went to `backend`, in nat as `reply` reversed.
    /// Returns the other client flow that had the same nat port and backend before, if any.
    pub fn forwarded(&mut self, client_flow: Tuple, backend: IpAddr, reply: Option<Tuple>) -> Option<Tuple> {
        if self.flows.insert(client_flow, backend).is_none() {
            self.flows_seen.push(client_flow);
        }
        let reply = reply?;
        match self.nat.insert(reply, client_flow) {
            None => {
                self.nat_seen.push(reply);
                None
            }
            Some(before) => (before != client_flow).then_some(before),
        }
    }
}
