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
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::XdpMode;
use lb_common::PROG_PASS;
use lb_userspace::dataplane::{Dataplane, MapSizes};
use nix::sched::{CloneFlags, setns};

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

pub fn run_cmd(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    ensure!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// A network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    name: String,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name prefix unique to this process and call: `tag-pid-n`.
pub fn unique_prefix(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        run_cmd("ip", &["netns", "add", name])?;
        let ns = Self { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_cmd("ip", &all)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(cmd);
        run_cmd("ip", &all)
    }

    /// Runs a command inside the namespace and returns its standard output.
    pub fn output(&self, cmd: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", self.name.as_str()])
            .args(cmd)
            .output()
            .with_context(|| format!("running {}", cmd.join(" ")))?;
        ensure!(
            out.status.success(),
            "{} (in {}): {}",
            cmd.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn sysctl(&self, setting: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", setting])
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let handle = self.spawn(f)?;
        handle.join().map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))
    }

    /// Like [`Self::run`], without waiting.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<JoinHandle<T>> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        Ok(std::thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("entering the namespace");
            f()
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd("ip", &["netns", "del", &self.name]) {
            eprintln!("lab cleanup: {e:#}");
        }
    }
}

#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub name: String,
    pub region: String,
    pub zone: String,
}

/// `regions` x `zones_per_region` x `per_zone` backends named r1-z1-b1 and so on.
pub fn backends_across(regions: usize, zones_per_region: usize, per_zone: usize) -> Vec<BackendSpec> {
    let mut out = Vec::new();
    for r in 1..=regions {
        for z in 1..=zones_per_region {
            for b in 1..=per_zone {
                out.push(BackendSpec {
                    name: format!("r{r}-z{z}-b{b}"),
                    region: format!("r{r}"),
                    zone: format!("z{z}"),
                });
            }
        }
    }
    out
}

pub struct Backend {
    pub spec: BackendSpec,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    // Declared before `ns`: fields drop in order, so the servers stop before the namespace goes.
    servers: Option<Servers>,
    served: Arc<ServedCounters>,
    dsr: bool,
    pub ns: Netns,
}

/// Requests a backend's servers have answered, by protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// HTTP requests on port 80.
    pub http: u64,
    /// Lines on port 7 (not connections).
    pub line: u64,
    /// Datagrams on port 9000.
    pub udp: u64,
}

/// Each is incremented just before the answer is sent, so a client that got an answer
/// always finds it counted.
#[derive(Default)]
struct ServedCounters {
    http: AtomicU64,
    line: AtomicU64,
    udp: AtomicU64,
}

impl Backend {
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.v6) } else { IpAddr::V4(self.v4) }
    }

    /// Drops (`on`) or lets through again every packet of the backend, while its servers
    /// keep running: its link goes down.
    pub fn black_hole(&self, on: bool) -> Result<()> {
        // Linux drops IPv6 addresses of a link that goes down, unless told to keep them.
        self.ns.sysctl("net.ipv6.conf.eth0.keep_addr_on_down=1")?;
        self.ns.ip(&["link", "set", "eth0", if on { "down" } else { "up" }])
    }

    /// Stops the backend's servers: new connections are refused from then on (connections
    /// already open are closed within a few hundred milliseconds).
    pub fn stop(&mut self) {
        self.servers.take();
    }

    /// Starts the servers again after [`Self::stop`] (a no-op if they run).
    pub fn restart(&mut self) -> Result<()> {
        if self.servers.is_none() {
            self.servers = Some(Servers::start(&self.ns, &self.spec.name, &self.local_addrs(), self.served.clone())?);
        }
        Ok(())
    }

    /// Requests answered so far (counted since the lab was built; never reset).
    pub fn served(&self) -> Served {
        Served {
            http: self.served.http.load(Ordering::Relaxed),
            line: self.served.line.load(Ordering::Relaxed),
            udp: self.served.udp.load(Ordering::Relaxed),
        }
    }

    /// The addresses its UDP server answers on (the VIPs too in a dsr lab).
    fn local_addrs(&self) -> Vec<IpAddr> {
        let mut local: Vec<IpAddr> = vec![self.v4.into(), self.v6.into()];
        if self.dsr {
            local.extend([IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)]);
        }
        local
    }
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
            let mut backend = Backend { spec, v4, v6, servers: None, served: Arc::default(), dsr, ns };
            backend.restart()?;
            hosts.push(backend);
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
    let sizes = MapSizes { max_vips: 1, max_backends: 1, table_size: 2, flow_entries: 1, source_entries: 1 };
    switch.run(move || -> Result<Dataplane> {
        let mut dataplane = Dataplane::load(sizes, None)?;
        dataplane
            .program(PROG_PASS)?
            .attach(&iface, XdpMode::Driver)
            .context("attaching xdp_pass to the switch port")?;
        Ok(dataplane)
    })?
}

/// A backend's servers: threads that stop when this is dropped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns, name: &str, local: &[IpAddr], served: Arc<ServedCounters>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready, ready_rx) = mpsc::channel::<Result<()>>();
        for port in [HTTP_PORT, LINE_PORT] {
            let (stop, name, served) = (stop.clone(), name.to_owned(), served.clone());
            threads.push(spawn_server(
                ns,
                &ready,
                // Dual-stack: also accepts IPv4 (v4-mapped).
                move || {
                    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                },
                move |listener| serve_tcp(&listener, &stop, &name, port, &served),
            )?);
        }
        for &addr in local {
            let (stop, name, served) = (stop.clone(), name.to_owned(), served.clone());
            // One socket per local address, so replies leave from the address asked (the VIP in dsr).
            threads.push(spawn_server(
                ns,
                &ready,
                move || {
                    let socket = UdpSocket::bind((addr, UDP_PORT))?;
                    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
                    Ok(socket)
                },
                move |socket| {
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((_, from)) = socket.recv_from(&mut buf) {
                            // Counted before answering: whoever sees the answer sees the count.
                            served.udp.fetch_add(1, Ordering::Relaxed);
                            let _ = socket.send_to(name.as_bytes(), from);
                        }
                    }
                },
            )?);
        }
        for _ in 0..threads.len() {
            ready_rx.recv_timeout(Duration::from_secs(10)).context("backend server did not start")??;
        }
        Ok(Self { stop, threads })
    }
}

/// Spawns a server thread in `ns`: `bind` runs there and its outcome is reported on
/// `ready`; on success `serve` runs with what it bound.
fn spawn_server<S: 'static>(
    ns: &Netns,
    ready: &mpsc::Sender<Result<()>>,
    bind: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    serve: impl FnOnce(S) + Send + 'static,
) -> Result<JoinHandle<()>> {
    let ready = ready.clone();
    ns.spawn(move || match bind() {
        Ok(bound) => {
            let _ = ready.send(Ok(()));
            serve(bound);
        }
        Err(e) => {
            let _ = ready.send(Err(e.into()));
        }
    })
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Accepts until `stop`; each connection gets a thread (threads spawned here inherit the
/// namespace of this one). Connection threads also end soon after `stop`.
fn serve_tcp(listener: &TcpListener, stop: &Arc<AtomicBool>, name: &str, port: u16, served: &Arc<ServedCounters>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (name, stop, served) = (name.to_owned(), stop.clone(), served.clone());
                std::thread::spawn(move || {
                    let _ = if port == HTTP_PORT {
                        answer_http(stream, &name, &served)
                    } else {
                        answer_lines(stream, &name, &stop, &served)
                    };
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn answer_http(mut stream: TcpStream, name: &str, served: &ServedCounters) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = format!("{name}\n");
    served.http.fetch_add(1, Ordering::Relaxed);
    write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// Answers every line with the backend's name and keeps the connection open until the
/// client closes it or the servers stop.
fn answer_lines(stream: TcpStream, name: &str, stop: &AtomicBool, served: &ServedCounters) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if line.ends_with(b"\n") => {
                served.line.fetch_add(1, Ordering::Relaxed);
                writeln!(writer, "{name}")?;
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One HTTP GET over a new connection; returns the body (the backend's name).
pub fn http_get(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
    ensure!(head.starts_with("HTTP/1.0 200"), "unexpected response: {head}");
    Ok(body.trim().to_owned())
}

/// One UDP request from a new socket (so a new source port); returns the answering backend.
pub fn udp_request(addr: SocketAddr) -> Result<String> {
    let bind: SocketAddr =
        if addr.is_ipv6() { (Ipv6Addr::UNSPECIFIED, 0).into() } else { (Ipv4Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send(b"who")?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).with_context(|| format!("no UDP answer from {addr}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One ICMP echo (IPv4 or IPv6, by the address) with a timeout of one second; `Ok` when the
/// echo reply came back. Uses a datagram ICMP socket (the lab allows them in its namespaces
/// through `net.ipv4.ping_group_range`), so no `ping` binary is needed.
pub fn ping(addr: IpAddr) -> Result<()> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, recv, sendto, setsockopt, socket,
        sockopt,
    };
    use nix::sys::time::TimeVal;
    let (family, protocol, echo_request, echo_reply) = match addr {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8u8, 0u8),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128u8, 129u8),
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, protocol).context("opening an ICMP socket")?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    // type, code, checksum (the kernel fills it in), identifier (the kernel's), sequence 1.
    let mut request = [echo_request, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    request[8..].copy_from_slice(b"lb-lab!!");
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    match addr {
        IpAddr::V4(a) => sendto(
            raw,
            &request,
            &SockaddrIn::from(std::net::SocketAddrV4::new(a, 0)),
            nix::sys::socket::MsgFlags::empty(),
        ),
        IpAddr::V6(a) => sendto(
            raw,
            &request,
            &SockaddrIn6::from(std::net::SocketAddrV6::new(a, 0, 0, 0)),
            nix::sys::socket::MsgFlags::empty(),
        ),
    }
    .with_context(|| format!("sending an echo request to {addr}"))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    loop {
        ensure!(Instant::now() < deadline, "no echo reply from {addr}");
        let n = recv(raw, &mut buf, nix::sys::socket::MsgFlags::empty())
            .with_context(|| format!("no echo reply from {addr}"))?;
        // The socket is connected to nothing, so skip anything but our reply.
        if n >= 8 && buf[0] == echo_reply && buf[6..8] == [0, 1] {
            return Ok(());
        }
    }
}

/// A connection that stays open; each `ask` answers with the backend's name.
pub struct LineConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineConnection {
    pub fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Self { writer: stream.try_clone()?, reader: BufReader::new(stream) })
    }

    pub fn ask(&mut self) -> Result<String> {
        self.writer.write_all(b"who\n")?;
        let mut line = String::new();
        ensure!(self.reader.read_line(&mut line)? > 0, "connection closed");
        Ok(line.trim().to_owned())
    }
}

/// What one [`connect_flood`] sender saw.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Connection attempts (SYNs) sent.
    pub sent: u64,
    /// Attempts that were answered (connected) within [`FLOOD_ANSWER_WAIT`].
    pub connected: u64,
    pub first_sent: Instant,
    pub last_sent: Instant,
}

/// How long a flood attempt may take to connect: far above the lab's RTT, well below the
/// kernel's first SYN retransmission (1 s), so every attempt is exactly one SYN.
pub const FLOOD_ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Opens TCP connections from `source` to `target` at `rate` per second for `duration`,
/// each a new flow (a fresh ephemeral port), closing each as soon as it connects or after
/// [`FLOOD_ANSWER_WAIT`]. With `cpu`, the thread first pins itself to that CPU, so the
/// packets it sends are processed there (veth delivers on the sending CPU). Runs in the
/// calling thread's network namespace.
pub fn connect_flood(
    source: IpAddr,
    target: SocketAddr,
    rate: f64,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<Flood> {
    use socket2::{Domain, Socket, Type};
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    }
    let mut pending: std::collections::VecDeque<(Socket, Instant)> = Default::default();
    let mut connected = 0;
    let mut reap = |pending: &mut std::collections::VecDeque<(Socket, Instant)>, now: Instant| {
        pending.retain(|(socket, sent)| {
            if socket.peer_addr().is_ok() {
                connected += 1;
                return false;
            }
            now.duration_since(*sent) < FLOOD_ANSWER_WAIT
        })
    };
    let start = Instant::now();
    let (mut sent, mut last_sent, mut last_reap) = (0u64, start, start);
    loop {
        let due = start + Duration::from_secs_f64(sent as f64 / rate);
        let now = Instant::now();
        if due.duration_since(start) >= duration {
            break;
        }
        if now.duration_since(last_reap) >= Duration::from_millis(10) {
            reap(&mut pending, now);
            last_reap = now;
        }
        if now < due {
            std::thread::sleep((due - now).min(Duration::from_millis(2)));
            continue;
        }
        let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        match socket.connect(&target.into()) {
            Err(e) if e.raw_os_error() != Some(nix::errno::Errno::EINPROGRESS as i32) => {
                return Err(e).context("connect");
            }
            _ => {}
        }
        pending.push_back((socket, now));
        sent += 1;
        last_sent = now;
    }
    while !pending.is_empty() {
        std::thread::sleep(Duration::from_millis(10));
        reap(&mut pending, Instant::now());
    }
    Ok(Flood { sent, connected, first_sent: start, last_sent })
}

/// Counts answers by backend name.
pub fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// The `lb run` process inside the lab's balancer namespace.
pub struct LbProcess {
    child: Child,
    /// Whether dropping it removes the pins and the config (not after `crash`: the next
    /// controller takes them over).
    owns_pins: bool,
    /// The balancer's namespace, where its admin interface listens.
    netns: String,
    config_path: PathBuf,
    pin_dir: PathBuf,
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
}

/// Where `cargo xtask test` put the controller binary.
pub fn lb_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LB_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "LB_BIN={} does not exist (run `cargo xtask build`, or unset LB_BIN)", bin.display());
        return bin;
    }
    let fallback = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/lb"));
    assert!(
        fallback.exists(),
        "no controller binary: set LB_BIN or run `cargo xtask test` (looked for {})",
        fallback.display()
    );
    fallback
}

impl LbProcess {
    pub fn start(lab: &Lab, config: &(impl std::fmt::Display + ?Sized)) -> Result<Self> {
        Self::start_in(&lab.lb, &lab.prefix, lab.pin_dir(), config)
    }

    /// `lb run` in the balancer namespace `ns`, its config written under the name `name`;
    /// `pin_dir` is the config's (removed when this is dropped).
    pub fn start_in(
        ns: &Netns,
        name: &str,
        pin_dir: PathBuf,
        config: &(impl std::fmt::Display + ?Sized),
    ) -> Result<Self> {
        let config_path = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(&config_path, config.to_string())?;
        // nsenter switches only the network namespace: `ip netns exec` would also remount
        // /sys and with it bpffs, hiding the pinned maps.
        let mut command = Command::new("nsenter");
        // If the test process dies without running destructors (a signal), the controller
        // dies with it. (PDEATHSIG follows the spawning *thread*: keep the LbProcess on the
        // thread that started it, as tests do.)
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .arg(format!("--net={}", ns.path()))
            .arg(lb_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lb")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lb = Self { child, owns_pins: true, netns: ns.path(), config_path, pin_dir, log, lines: Vec::new() };
        lb.wait_for(" ready", Duration::from_secs(60))?;
        Ok(lb)
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.lines.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(_) => {
                    let status = match self.child.try_wait() {
                        Ok(Some(status)) => format!("it exited ({status})"),
                        _ => "it is still running".to_owned(),
                    };
                    bail!("lb never logged {needle:?} ({status}); its log:\n{}", self.lines.join("\n"))
                }
            }
        }
    }

    /// The controller's process id (nsenter execs it, so this is `lb` itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the config is written.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Log lines read so far (stderr of `lb`); lines not yet waited for are drained first.
    pub fn log(&mut self) -> &[String] {
        while let Ok(line) = self.log.try_recv() {
            self.lines.push(line);
        }
        &self.lines
    }

    /// Kills the controller with SIGKILL, as a crash would, leaving its pins and config for
    /// the next one to adopt.
    pub fn crash(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.owns_pins = false;
        Ok(())
    }

    /// Runs `lb ARGS --config <its config>` in the balancer's namespace (where the admin
    /// interface listens): stdout, or an error with stderr when it fails.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("nsenter")
            .arg(format!("--net={}", self.netns))
            .arg(lb_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .output()
            .context("running lb")?;
        ensure!(output.status.success(), "lb {args:?}: {}", String::from_utf8_lossy(&output.stderr).trim());
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Replaces the config and reloads it with SIGHUP.
    pub fn reload(&mut self, config: &(impl std::fmt::Display + ?Sized)) -> Result<()> {
        std::fs::write(&self.config_path, config.to_string())?;
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
        self.wait_for("config applied", Duration::from_secs(30))
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.owns_pins {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
            let _ = std::fs::remove_file(&self.config_path);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The lab without a balancer: these prove the topology, the servers and the clients.

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
