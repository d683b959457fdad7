//! Backends behind a router, for the encapsulated modes: a router namespace `<prefix>-r`
//! on the lab's segment (10.0.0.254, fd00::fe), and each routed backend on a link of its own
//! behind it, in a subnet of its own (k counts from 0, the IPv6 subnet in hex: fd00:14::/64
//! for k = 0). The balancer routes those subnets via the router. A routed backend holds the VIPs on loopback (as dsr backends do); an
//! IPv6-only one has no IPv4 address and routes IPv4 (its replies from the IPv4 VIP) via the
//! router's IPv6 address.
//!
//! | routed backend k | namespace | router side | backend (`eth0`) |
//! | --- | --- | --- | --- |
//! | dual-stack | `<prefix>-b<i>` | 10.(20+k).0.1/24, fd00:(20+k)::1/64 | 10.(20+k).0.11, fd00:(20+k)::11 |
//! | IPv6-only | `<prefix>-b<i>` | fd00:(20+k)::1/64 | fd00:(20+k)::11 |

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;

use super::*;

pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xfe);

impl Lab {
    /// Adds a backend behind the router (made on first use), in subnet `20 + k` for the
    /// lab's `k`-th routed backend; `ipv6_only` gives it no IPv4 address. Returns its index.
    pub fn add_routed_backend(&mut self, spec: BackendSpec, ipv6_only: bool) -> Result<usize> {
        if self.router.is_none() {
            self.router = Some(self.add_router()?);
        }
        let router = self.router.as_ref().expect("made above");
        let k = self.backends.iter().filter(|b| b.routed).count() as u16;
        let subnet = 20 + k;
        let (v4, v6) = (Ipv4Addr::new(10, subnet as u8, 0, 11), Ipv6Addr::new(0xfd00, subnet, 0, 0, 0, 0, 0, 0x11));
        let (gw4, gw6) = (Ipv4Addr::new(10, subnet as u8, 0, 1), Ipv6Addr::new(0xfd00, subnet, 0, 0, 0, 0, 0, 1));
        let i = self.backends.len();
        let ns = Netns::new(&format!("{}-b{i}", self.prefix))?;
        let link = format!("rb{k}");
        run_cmd(
            "ip",
            &["link", "add", "eth0", "netns", ns.name(), "type", "veth", "peer", "name", &link, "netns", router.name()],
        )?;
        for (host, dev) in [(router, link.as_str()), (&ns, "eth0")] {
            for setting in ["ipv6.conf.all.accept_dad=0", "ipv4.conf.all.rp_filter=0", "ipv4.conf.default.rp_filter=0"]
            {
                host.sysctl(&format!("net.{setting}"))?;
            }
            host.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter=0"))?;
            host.ip(&["link", "set", dev, "up"])?;
            host.exec(&["ethtool", "-K", dev, "tx", "off"])?;
        }
        router.ip(&["addr", "add", &format!("{gw6}/64"), "dev", &link, "nodad"])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()])?;
        if ipv6_only {
            ns.ip(&["-4", "route", "add", "default", "via", "inet6", &gw6.to_string(), "dev", "eth0"])?;
        } else {
            router.ip(&["addr", "add", &format!("{gw4}/24"), "dev", &link])?;
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
            ns.ip(&["route", "add", "default", "via", &gw4.to_string()])?;
        }
        if !ipv6_only {
            self.lb.ip(&["route", "add", &format!("10.{subnet}.0.0/24"), "via", &ROUTER_V4.to_string()])?;
        }
        self.lb.ip(&["-6", "route", "add", &format!("fd00:{subnet:x}::/64"), "via", &ROUTER_V6.to_string()])?;
        ns.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"])?;
        ns.ip(&["addr", "add", &format!("{VIP_V6}/128"), "dev", "lo", "nodad"])?;
        let v4 = if ipv6_only { Ipv4Addr::UNSPECIFIED } else { v4 };
        let mut backend = Backend::start(spec, v4, v6, true, ns)?;
        backend.routed = true;
        self.backends.push(backend);
        Ok(i)
    }

    /// The router: on the segment, forwarding both families.
    fn add_router(&self) -> Result<Netns> {
        let name = format!("{}-r", self.prefix);
        let router = host(self.switch(), &name, "pr", &[&format!("{ROUTER_V4}/16"), &format!("{ROUTER_V6}/64")])?;
        router.sysctl("net.ipv4.conf.all.forwarding=1")?;
        router.sysctl("net.ipv6.conf.all.forwarding=1")?;
        Ok(router)
    }
}
