//! A lab of network namespaces on one L2 segment: a switch (a Linux bridge), a client,
//! the balancer and backends labelled with region and zone. Backends serve HTTP (port 80),
//! a line protocol that keeps connections open (port 7) and UDP (port 9000), each answering
//! with the backend's name. Everything the lab creates is removed when it is dropped.
//!
//! Addresses are the same in every lab (namespaces isolate them); names are unique per lab,
//! so tests run in parallel.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::XdpMode;
use lb_common::PROG_PASS;
use lb_userspace::dataplane::{Dataplane, MapSizes};
use nix::sched::{CloneFlags, setns};

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
    assert!(nix::unistd::Uid::effective().is_root(), "this test needs root (netns, XDP, BPF); run it through `cargo xtask test`");
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
                out.push(BackendSpec { name: format!("r{r}-z{z}-b{b}"), region: format!("r{r}"), zone: format!("z{z}") });
            }
        }
    }
    out
}

pub struct Backend {
    pub spec: BackendSpec,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub ns: Netns,
    servers: Option<Servers>,
}

impl Backend {
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.v6) } else { IpAddr::V4(self.v4) }
    }

    /// Stops the backend's servers: new connections are refused from then on.
    pub fn stop(&mut self) {
        self.servers.take();
    }
}

pub struct Lab {
    pub prefix: String,
    pub backends: Vec<Backend>,
    pub client: Netns,
    pub lb: Netns,
    /// XDP_TX on a veth only delivers when the peer has an XDP program: this one passes all.
    _peer_pass: Option<Dataplane>,
    _switch: Netns,
}

impl Lab {
    /// Builds the lab; with `dsr`, backends also hold the VIPs on loopback.
    pub fn build(tag: &str, backends: Vec<BackendSpec>, dsr: bool) -> Result<Self> {
        require_root();
        let prefix = unique_prefix(tag);
        let switch = Netns::new(&format!("{prefix}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let client = host(&switch, &format!("{prefix}-c"), "pc", &[&format!("{CLIENT_V4}/16"), &format!("{CLIENT_V6}/64")])?;
        client.ip(&["route", "add", "10.100.0.0/16", "via", &LB_V4.to_string()])?;
        client.ip(&["-6", "route", "add", "fd00:100::/64", "via", &LB_V6.to_string()])?;
        let lb = host(&switch, &format!("{prefix}-lb"), "plb", &[&format!("{LB_V4}/16"), &format!("{LB_V6}/64")])?;
        let mut hosts = Vec::new();
        for (i, spec) in backends.into_iter().enumerate() {
            let v4 = Ipv4Addr::new(10, 0, 1, 11 + i as u8);
            let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 0x11 + i as u16);
            let ns = host(&switch, &format!("{prefix}-b{i}"), &format!("pb{i}"), &[&format!("{v4}/16"), &format!("{v6}/64")])?;
            let mut local: Vec<IpAddr> = vec![v4.into(), v6.into()];
            if dsr {
                ns.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"])?;
                ns.ip(&["addr", "add", &format!("{VIP_V6}/128"), "dev", "lo", "nodad"])?;
                ns.sysctl("net.ipv4.conf.all.arp_ignore=1")?;
                ns.sysctl("net.ipv4.conf.all.arp_announce=2")?;
                local.extend([IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)]);
            }
            let servers = Servers::start(&ns, &spec.name, &local)?;
            hosts.push(Backend { spec, v4, v6, ns, servers: Some(servers) });
        }
        let peer_pass = attach_pass(&switch, "plb")?;
        Ok(Self { prefix, backends: hosts, client, lb, _peer_pass: Some(peer_pass), _switch: switch })
    }

    pub fn backend(&mut self, name: &str) -> &mut Backend {
        self.backends.iter_mut().find(|b| b.spec.name == name).expect("no such backend")
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}", self.prefix))
    }
}

/// A host namespace plugged into the switch, with its addresses.
fn host(switch: &Netns, name: &str, peer: &str, addrs: &[&str]) -> Result<Netns> {
    let ns = Netns::new(name)?;
    for setting in ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"] {
        ns.sysctl(setting)?;
    }
    run_cmd("ip", &["link", "add", "eth0", "netns", ns.name(), "type", "veth", "peer", "name", peer, "netns", switch.name()])?;
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

fn attach_pass(switch: &Netns, iface: &'static str) -> Result<Dataplane> {
    let sizes = MapSizes { max_vips: 1, max_backends: 1, table_size: 2, flow_entries: 1 };
    switch.run(move || -> Result<Dataplane> {
        let mut dataplane = Dataplane::load(sizes, None)?;
        dataplane.program(PROG_PASS)?.attach(iface, XdpMode::Driver).context("attaching xdp_pass to the switch port")?;
        Ok(dataplane)
    })?
}

/// A backend's servers: threads that stop when this is dropped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns, name: &str, local: &[IpAddr]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let started = 3 + local.len();
        for port in [HTTP_PORT, LINE_PORT] {
            let (stop, name, ready) = (stop.clone(), name.to_owned(), ready_tx.clone());
            threads.push(ns.spawn(move || {
                // Dual-stack: also accepts IPv4 (v4-mapped).
                let listener = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => l,
                    Err(e) => return ready.send(Err(e.into())).unwrap_or(()),
                };
                let _ = ready.send(Ok(()));
                serve_tcp(&listener, &stop, &name, port);
            })?);
        }
        {
            let (stop, ready) = (stop.clone(), ready_tx.clone());
            threads.push(ns.spawn(move || {
                let _ = ready.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            })?);
        }
        for &addr in local {
            let (stop, name, ready) = (stop.clone(), name.to_owned(), ready_tx.clone());
            // One socket per local address, so replies leave from the address asked (the VIP in dsr).
            threads.push(ns.spawn(move || {
                let socket = match UdpSocket::bind((addr, UDP_PORT)).and_then(|s| s.set_read_timeout(Some(Duration::from_millis(20))).map(|()| s)) {
                    Ok(s) => s,
                    Err(e) => return ready.send(Err(e.into())).unwrap_or(()),
                };
                let _ = ready.send(Ok(()));
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(name.as_bytes(), from);
                    }
                }
            })?);
        }
        for _ in 0..started {
            ready_rx.recv_timeout(Duration::from_secs(10)).context("backend server did not start")??;
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: &TcpListener, stop: &AtomicBool, name: &str, port: u16) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let name = name.to_owned();
                std::thread::spawn(move || {
                    let _ = if port == HTTP_PORT { answer_http(stream, &name) } else { answer_lines(stream, &name) };
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn answer_http(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
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
    write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn answer_lines(stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        line?;
        writeln!(writer, "{name}")?;
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
    let bind: SocketAddr = if addr.is_ipv6() { (Ipv6Addr::UNSPECIFIED, 0).into() } else { (Ipv4Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send(b"who")?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).with_context(|| format!("no UDP answer from {addr}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
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

/// Counts answers by backend name.
pub fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// A VIP of the generated config.
#[derive(Clone, Debug)]
pub struct VipSpec {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub mode: &'static str,
    /// (backend index in the lab, weight)
    pub backends: Vec<(usize, u32)>,
}

impl VipSpec {
    pub fn new(name: &str, address: IpAddr, port: u16, protocol: &'static str, mode: &'static str, backends: Vec<(usize, u32)>) -> Self {
        Self { name: name.to_owned(), address, port, protocol, mode, backends }
    }
}

/// The balancer's config for this lab.
pub fn lb_config(lab: &Lab, vips: &[VipSpec]) -> String {
    let mut out = format!(
        "[balancer]\ninterfaces = [\"eth0\"]\nxdp_mode = \"driver\"\nipv4 = \"{LB_V4}\"\nipv6 = \"{LB_V6}\"\npin_dir = \"{}\"\nmaglev_table_size = 65537\n",
        lab.pin_dir().display()
    );
    for vip in vips {
        let _ = write!(
            out,
            "\n[[vip]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nprotocol = \"{}\"\nmode = \"{}\"\n",
            vip.name, vip.address, vip.port, vip.protocol, vip.mode
        );
        for &(index, weight) in &vip.backends {
            let b = &lab.backends[index];
            let _ = write!(
                out,
                "\n[[vip.backend]]\naddress = \"{}\"\nweight = {weight}\nregion = \"{}\"\nzone = \"{}\"\n",
                b.addr(vip.address.is_ipv6()),
                b.spec.region,
                b.spec.zone
            );
        }
    }
    out
}

/// The `lb run` process inside the lab's balancer namespace.
pub struct LbProcess {
    child: Child,
    config_path: PathBuf,
    pin_dir: PathBuf,
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
}

/// Where `cargo xtask test` put the controller binary.
pub fn lb_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LB_BIN") {
        return PathBuf::from(bin);
    }
    let fallback = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/lb"));
    assert!(fallback.exists(), "no controller binary: set LB_BIN or run `cargo xtask test` (looked for {})", fallback.display());
    fallback
}

impl LbProcess {
    pub fn start(lab: &Lab, config: &str) -> Result<Self> {
        let config_path = std::env::temp_dir().join(format!("{}.toml", lab.prefix));
        std::fs::write(&config_path, config)?;
        // nsenter switches only the network namespace: `ip netns exec` would also remount
        // /sys and with it bpffs, hiding the pinned maps.
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", lab.lb.path()))
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
        let mut lb = Self { child, config_path, pin_dir: lab.pin_dir(), log, lines: Vec::new() };
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
                Err(_) => bail!("lb never logged {needle:?}; its log:\n{}", self.lines.join("\n")),
            }
        }
    }

    /// Replaces the config and reloads it with SIGHUP.
    pub fn reload(&mut self, config: &str) -> Result<()> {
        std::fs::write(&self.config_path, config)?;
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
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_file(&self.config_path);
    }
}
