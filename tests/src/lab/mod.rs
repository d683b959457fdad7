//! A lab of network namespaces on one L2 segment: a switch (a Linux bridge), a client,
//! the balancer and backends labelled with region and zone. Backends serve HTTP (port 80),
//! a line protocol that keeps connections open (port 7) and UDP (port 9000), each answering
//! with the backend's name. Everything the lab creates is removed when it is dropped.
//!
//! Addresses are the same in every lab (namespaces isolate them); names are unique per lab,
//! so tests run in parallel.
//!
//! Layout (IPv4 10.0.0.0/16, IPv6 fd00::/64, one bridge `br0` in the switch namespace):
//!
//! | host | namespace | addresses on `eth0` | switch port |
//! | --- | --- | --- | --- |
//! | client | `<prefix>-c` | 10.0.0.2, fd00::2; routes 10.100.0.0/16 via 10.0.0.1, fd00:100::/64 via fd00::1 | `pc` |
//! | balancer | `<prefix>-lb` | 10.0.0.1, fd00::1 | `plb` |
//! | backend i | `<prefix>-b<i>` | 10.0.1.(11+i), fd00::1:(0x11+i) (10.0.1.11 and fd00::1:11, ...) | `pb<i>` |
//!
//! Code that opens sockets must run inside a namespace: [`Netns::run`] / [`Netns::spawn`]
//! run a closure on a thread that entered it (`setns`), and the client helpers
//! ([`http_get`], [`udp_request`], [`LineConnection`], [`ping`]) are meant to be called there.
//!
//! veth and XDP_TX: frames a driver-mode XDP program sends back out with XDP_TX are queued
//! on the peer (`plb`), which only delivers them when it has an XDP program itself; GRO on
//! the peer is not enough (on kernel 6.18 the frames then sit in the peer's ring until some
//! other packet wakes it up). The lab therefore attaches `xdp_pass` to `plb`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use lb_common::PROG_PASS;
use lb_userspace::dataplane::{Dataplane, MapSizes};

mod backend;
mod client;
mod decap;
mod lb_process;
mod netns;
mod routed;

pub use backend::*;
pub use client::*;
pub use decap::{Decap, decap_on_backends};
pub use lb_process::*;
pub use netns::*;
pub use routed::{ROUTER_V4, ROUTER_V6};

pub use crate::lab_config::{LabConfig, VipSpec, lb_config};

pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub const HTTP_PORT: u16 = 80;
pub const LINE_PORT: u16 = 7;
pub const UDP_PORT: u16 = 9000;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Panics unless running as root: these tests cannot do their job otherwise.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (netns, XDP, BPF); run it through `cargo xtask test`"
    );
}

/// Panics unless every tool the lab runs is installed (`ip`, `ethtool`, `nsenter`).
pub fn require_tools() {
    for (tool, package) in [("ip", "iproute2"), ("ethtool", "ethtool"), ("nsenter", "util-linux")] {
        require_tool(tool, package);
    }
}

/// Panics unless `tool` is on PATH, naming the Debian package that has it.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "this test needs `{tool}` on PATH (apt install {package}; or `cargo xtask setup`)");
}

pub struct Lab {
    pub prefix: String,
    /// Whether the backends hold the VIPs on loopback (built for dsr).
    pub dsr: bool,
    pub backends: Vec<Backend>,
    pub client: Netns,
    pub lb: Netns,
    /// More balancer hosts on the same segment ([`Lab::add_balancer`]), with the
    /// `xdp_pass` of their switch ports.
    pub more_balancers: Vec<(Netns, Dataplane)>,
    /// The router in front of routed backends ([`Lab::add_routed_backend`]), once there is one.
    pub router: Option<Netns>,
    /// XDP_TX on a veth only delivers when the peer has an XDP program: this one passes all.
    _peer_pass: Option<Dataplane>,
    _switch: Netns,
}

impl Lab {
    /// Builds the lab; with `dsr`, backends also hold the VIPs ([`VIP_V4`], [`VIP_V6`]) on
    /// loopback and neither answer ARP for them nor use them as ARP sources. `tag` (a few
    /// letters) starts every name the lab creates. Panics when not root or a tool is missing.
    pub fn build(tag: &str, backends: Vec<BackendSpec>, dsr: bool) -> Result<Self> {
        require_root();
        require_tools();
        let prefix = unique_prefix(tag);
        let switch = Netns::new(&format!("{prefix}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let client =
            host(&switch, &format!("{prefix}-c"), "pc", &[&format!("{CLIENT_V4}/16"), &format!("{CLIENT_V6}/64")])?;
        client.ip(&["route", "add", "10.100.0.0/16", "via", &LB_V4.to_string()])?;
        client.ip(&["-6", "route", "add", "fd00:100::/64", "via", &LB_V6.to_string()])?;
        let lb = host(&switch, &format!("{prefix}-lb"), "plb", &[&format!("{LB_V4}/16"), &format!("{LB_V6}/64")])?;
        let mut hosts = Vec::new();
        for (i, spec) in backends.into_iter().enumerate() {
            let v4 = Ipv4Addr::new(10, 0, 1, 11 + i as u8);
            let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 0x11 + i as u16);
            let ns = host(
                &switch,
                &format!("{prefix}-b{i}"),
                &format!("pb{i}"),
                &[&format!("{v4}/16"), &format!("{v6}/64")],
            )?;
            if dsr {
                ns.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"])?;
                ns.ip(&["addr", "add", &format!("{VIP_V6}/128"), "dev", "lo", "nodad"])?;
                for setting in ["all.arp_ignore=1", "all.arp_announce=2", "eth0.arp_ignore=1", "eth0.arp_announce=2"] {
                    ns.sysctl(&format!("net.ipv4.conf.{setting}"))?;
                }
            }
            hosts.push(Backend::start(spec, v4, v6, dsr, ns)?);
        }
        // Offloads of the switch port do not matter with xdp_pass attached, but GRO keeps the
        // peer's NAPI (and so XDP_REDIRECT into it) working should the program go away.
        switch.exec(&["ethtool", "-K", "plb", "gro", "on"])?;
        let peer_pass = attach_pass(&switch, "plb")?;
        Ok(Self {
            prefix,
            dsr,
            backends: hosts,
            client,
            lb,
            more_balancers: Vec::new(),
            router: None,
            _peer_pass: Some(peer_pass),
            _switch: switch,
        })
    }

    /// Plugs another balancer host into the segment: namespace `<prefix>-lb<n>` with
    /// 10.0.0.(2+n) and fd00::(2+n) (n = 1, 2, ...), on switch port `plb<n>`. Returns its
    /// addresses.
    pub fn add_balancer(&mut self) -> Result<(Ipv4Addr, Ipv6Addr)> {
        let n = self.more_balancers.len() + 1;
        let (v4, v6) = (Ipv4Addr::new(10, 0, 0, 2 + n as u8), Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2 + n as u16));
        let port = format!("plb{n}");
        let ns =
            host(&self._switch, &format!("{}-lb{n}", self.prefix), &port, &[&format!("{v4}/16"), &format!("{v6}/64")])?;
        self._switch.exec(&["ethtool", "-K", &port, "gro", "on"])?;
        let pass = attach_pass(&self._switch, &port)?;
        self.more_balancers.push((ns, pass));
        Ok((v4, v6))
    }

    /// Plugs a host of the caller's into the segment: namespace `name` with `addrs` on its
    /// `eth0`, on switch port `port` (a router, say). It is the caller's to drop.
    pub fn plug(&self, name: &str, port: &str, addrs: &[&str]) -> Result<Netns> {
        host(&self._switch, name, port, addrs)
    }

    pub fn backend(&mut self, name: &str) -> &mut Backend {
        self.backends.iter_mut().find(|b| b.spec.name == name).expect("no such backend")
    }

    /// Requests served so far, by backend name.
    pub fn served(&self) -> BTreeMap<String, Served> {
        self.backends.iter().map(|b| (b.spec.name.clone(), b.served())).collect()
    }

    /// The switch namespace (the bridge `br0` and the switch ports `pc`, `plb`, `pb<i>`).
    pub fn switch(&self) -> &Netns {
        &self._switch
    }

    /// Names of every namespace of this lab.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names = vec![self._switch.name().to_owned(), self.client.name().to_owned(), self.lb.name().to_owned()];
        names.extend(self.more_balancers.iter().map(|(ns, _)| ns.name().to_owned()));
        names.extend(self.router.iter().map(|ns| ns.name().to_owned()));
        names.extend(self.backends.iter().map(|b| b.ns.name().to_owned()));
        names
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}", self.prefix))
    }
}

/// Set by SIGINT/SIGTERM once [`stop_on_interrupt`] is installed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set a flag that [`interrupted`] reports, so a long-running lab
/// program stops at its next step and its guards clean up.
pub fn stop_on_interrupt() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let handler = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &handler) }.with_context(|| format!("installing the {signal} handler"))?;
    }
    Ok(())
}

/// An error once SIGINT or SIGTERM arrived (see [`stop_on_interrupt`]).
pub fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The ids of the XDP programs attached to `iface` in `ns` (`ip -j link`).
pub fn xdp_programs(ns: &Netns, iface: &str) -> Result<Vec<u64>> {
    let json = ns.output(&["ip", "-j", "-d", "link", "show", "dev", iface])?;
    // Each attached program appears as `"prog":{"id":N,...}`, once under `xdp` and once
    // more in its `attached` list.
    let ids: std::collections::BTreeSet<u64> = json
        .match_indices("\"prog\":{\"id\":")
        .filter_map(|(at, m)| json[at + m.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect();
    Ok(ids.into_iter().collect())
}

/// A host namespace plugged into the switch, with its addresses.
fn host(switch: &Netns, name: &str, peer: &str, addrs: &[&str]) -> Result<Netns> {
    let ns = Netns::new(name)?;
    for setting in [
        "net.ipv6.conf.all.accept_dad=0",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        // ICMP echo from unprivileged-style datagram sockets, for `ping`.
        "net.ipv4.ping_group_range=0 2147483647",
    ] {
        ns.sysctl(setting)?;
    }
    run_cmd(
        "ip",
        &["link", "add", "eth0", "netns", ns.name(), "type", "veth", "peer", "name", peer, "netns", switch.name()],
    )?;
    for setting in ["net.ipv6.conf.eth0.accept_dad=0", "net.ipv4.conf.eth0.rp_filter=0"] {
        ns.sysctl(setting)?;
    }
    switch.ip(&["link", "set", peer, "master", "br0"])?;
    switch.ip(&["link", "set", peer, "up"])?;
    for addr in addrs {
        let mut args = vec!["addr", "add", addr, "dev", "eth0"];
        if addr.contains(':') {
            args.push("nodad");
        }
        ns.ip(&args)?;
    }
    ns.ip(&["link", "set", "eth0", "up"])?;
    // Locally generated packets on veth carry partial checksums; XDP rewrites need full ones.
    ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    Ok(ns)
}

/// Attaches `xdp_pass` in driver mode to `iface` in the switch namespace (see the module
/// documentation for why XDP_TX on the peer needs it).
fn attach_pass(switch: &Netns, iface: &str) -> Result<Dataplane> {
    let iface = iface.to_owned();
    switch.run(move || -> Result<Dataplane> {
        let mut dataplane = Dataplane::load(MapSizes::SMALLEST, None)?;
        dataplane
            .program(PROG_PASS)?
            .attach(&iface, XdpMode::Driver)
            .context("attaching xdp_pass to the switch port")?;
        Ok(dataplane)
    })?
}

#[cfg(test)]
mod tests {
    //! The lab without a balancer: these prove the topology, the servers and the clients.

    use std::net::{IpAddr, SocketAddr};
    use std::process::Command;

    use super::*;

    fn sock(addr: IpAddr, port: u16) -> SocketAddr {
        SocketAddr::new(addr, port)
    }

    #[test]
    fn client_reaches_every_backend_and_the_balancer_directly_over_v4_and_v6() -> Result<()> {
        let lab = Lab::build("ut", backends_across(1, 2, 1), false)?;
        let targets: Vec<(String, IpAddr, IpAddr)> =
            lab.backends.iter().map(|b| (b.spec.name.clone(), b.addr(false), b.addr(true))).collect();
        lab.client.run(move || -> Result<()> {
            for (name, v4, v6) in &targets {
                for addr in [*v4, *v6] {
                    assert_eq!(http_get(sock(addr, HTTP_PORT))?, *name, "http to {addr}");
                    assert_eq!(udp_request(sock(addr, UDP_PORT))?, *name, "udp to {addr}");
                    let mut conn = LineConnection::open(sock(addr, LINE_PORT))?;
                    assert_eq!(conn.ask()?, *name, "line to {addr}");
                    assert_eq!(conn.ask()?, *name, "second line to {addr}");
                    ping(addr)?;
                }
            }
            ping(IpAddr::V4(LB_V4))?;
            ping(IpAddr::V6(LB_V6))?;
            // Nobody holds this address on the lab's segment: ping must say so.
            assert!(ping("10.0.0.99".parse()?).is_err(), "ping to an unused address succeeded");
            Ok(())
        })??;
        for backend in &lab.backends {
            assert_eq!(backend.served(), Served { http: 2, line: 4, udp: 2 }, "{}", backend.spec.name);
        }
        Ok(())
    }

    #[test]
    fn hosts_are_set_up_as_the_balancer_needs() -> Result<()> {
        let lab = Lab::build("ut", backends_across(1, 1, 1), false)?;
        // Routes to the VIP ranges go through the balancer.
        let route = lab.client.output(&["ip", "route", "get", &VIP_V4.to_string()])?;
        assert!(route.contains(&format!("via {LB_V4}")), "{route}");
        let route = lab.client.output(&["ip", "-6", "route", "get", &VIP_V6.to_string()])?;
        assert!(route.contains(&format!("via {LB_V6}")), "{route}");
        // Locally generated packets carry full checksums.
        for ns in [&lab.client, &lab.lb, &lab.backends[0].ns] {
            let features = ns.output(&["ethtool", "-k", "eth0"])?;
            assert!(features.contains("tx-checksumming: off"), "{}: {features}", ns.name());
            assert_eq!(ns.output(&["sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"])?.trim(), "0");
        }
        // No address is left tentative (DAD off), so IPv6 works at once.
        let addrs = lab.client.output(&["ip", "-6", "addr", "show", "dev", "eth0"])?;
        assert!(!addrs.contains("tentative"), "{addrs}");
        // The switch port of the balancer has an XDP program, so XDP_TX frames are delivered.
        let port = lab.switch().output(&["ip", "link", "show", "plb"])?;
        assert!(port.contains("prog/xdp"), "{port}");
        Ok(())
    }

    #[test]
    fn dsr_backends_hold_the_vips_on_loopback_and_answer_from_them() -> Result<()> {
        let lab = Lab::build("ut", backends_across(1, 1, 1), true)?;
        let backend = &lab.backends[0];
        let lo = backend.ns.output(&["ip", "addr", "show", "dev", "lo"])?;
        assert!(lo.contains(&format!("{VIP_V4}/32")) && lo.contains(&format!("{VIP_V6}/128")), "{lo}");
        for (key, want) in
            [("all.arp_ignore", "1"), ("eth0.arp_ignore", "1"), ("all.arp_announce", "2"), ("eth0.arp_announce", "2")]
        {
            let got = backend.ns.output(&["sysctl", "-n", &format!("net.ipv4.conf.{key}")])?;
            assert_eq!(got.trim(), want, "{key}");
        }
        // The servers answer on the VIPs (asked from the backend itself) and the UDP reply
        // comes from the VIP (the client socket is connected, so it takes no other source).
        let name = backend.spec.name.clone();
        let answers = backend.ns.run(|| -> Result<Vec<String>> {
            Ok(vec![
                udp_request(sock(IpAddr::V4(VIP_V4), UDP_PORT))?,
                udp_request(sock(IpAddr::V6(VIP_V6), UDP_PORT))?,
                http_get(sock(IpAddr::V4(VIP_V4), HTTP_PORT))?,
                http_get(sock(IpAddr::V6(VIP_V6), HTTP_PORT))?,
            ])
        })??;
        assert_eq!(answers, vec![name; 4]);
        // Its own addresses still work from the client.
        let v4 = backend.addr(false);
        assert_eq!(lab.client.run(move || udp_request(sock(v4, UDP_PORT)))??, backend.spec.name);
        Ok(())
    }

    #[test]
    fn a_stopped_backend_refuses_and_a_restarted_one_answers_again() -> Result<()> {
        let mut lab = Lab::build("ut", backends_across(1, 1, 1), false)?;
        let addr = sock(lab.backends[0].addr(false), HTTP_PORT);
        let line = sock(lab.backends[0].addr(true), LINE_PORT);
        let mut conn = lab.client.run(move || LineConnection::open(line))??;
        lab.client.run(move || conn.ask().map(|_| conn))??;
        lab.backends[0].stop();
        let refused = lab.client.run(move || http_get(addr))?;
        assert!(refused.is_err(), "a stopped backend answered: {refused:?}");
        lab.backends[0].restart()?;
        assert_eq!(lab.client.run(move || http_get(addr))??, lab.backends[0].spec.name);
        Ok(())
    }

    #[test]
    fn dropping_a_lab_removes_its_namespaces() -> Result<()> {
        let lab = Lab::build("ut", backends_across(1, 1, 2), true)?;
        let names = lab.namespaces();
        assert_eq!(names.len(), 5);
        let listed = |names: &[String]| -> Result<Vec<String>> {
            let out = Command::new("ip").args(["netns", "list"]).output()?;
            let list = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok(names
                .iter()
                .filter(|n| list.lines().any(|l| l.split_whitespace().next() == Some(n.as_str())))
                .cloned()
                .collect())
        };
        assert_eq!(listed(&names)?, names);
        drop(lab);
        assert!(listed(&names)?.is_empty(), "left behind: {:?}", listed(&names)?);
        Ok(())
    }

    #[test]
    fn unique_prefixes_differ() {
        let a = unique_prefix("e2flow");
        let b = unique_prefix("e2flow");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("e2flow-{}-", std::process::id())), "{a}");
    }
}
