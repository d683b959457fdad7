//! A fleet of balancer hosts behind an ECMP router, on the lab ([`crate::lab`]): three
//! balancer hosts (the lab's own and two more on its segment), each running `lb run` and
//! BIRD 2 on the shipped config/bird-fleet.conf, all fronting the same dsr VIP over the
//! lab's backends; a router namespace on the segment whose BIRD peers with every host (BGP
//! with BFD) and merges their paths into one ECMP route; and a client behind the router.
//!
//! | host | namespace | address |
//! | --- | --- | --- |
//! | router | `<prefix>-rt` | 10.0.0.254 on the segment, 10.200.0.1 towards the far client |
//! | far client | `<prefix>-fc` | 10.200.0.2, default route via the router |
//! | balancer host i | the lab's `lb`, `lb1`, `lb2` | 10.0.0.1, 10.0.0.3, 10.0.0.4 |
//!
//! The backends answer the far client directly (dsr) through the router. Faults are
//! nftables tables in a host's namespace, removed with it: a cut of the backend link drops
//! the host's own packets towards the backends (its health checks; XDP_TX frames pass, as
//! XDP runs before nftables), a silent host drops everything on its uplink.

mod bird;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

pub use bird::{Bird, check_config, router_config};

use crate::lab::*;

pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
pub const FAR_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const ROUTER_FAR_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const FAR_NET: &str = "10.200.0.0/24";
pub const HOST_ASN: u32 = 65001;
pub const ROUTER_ASN: u32 = 65000;
/// The same on every host: they all pick the same backend for a flow.
const HASH_SEED: u32 = 7;
pub const HOSTS: usize = 3;
/// Active checks of the VIPs: a host sees its backends gone within 2 x 200 ms.
pub const CHECK: &str = "health_check = { type = \"tcp\", interval = \"200ms\", timeout = \"150ms\", \
                         unhealthy_threshold = 2, healthy_threshold = 1 }";
/// BFD (interval in ms, multiplier) of the BFD test: the 100 ms x 3, a silent host
/// declared down after 300 ms.
pub const BFD: (u32, u32) = (100, 3);
/// BFD of the tests that time other things: a busy machine (tests run side by side) must
/// not flap a session and with it the routes they watch.
pub const BFD_RELAXED: (u32, u32) = (200, 5);

/// The shipped BIRD config of a balancer host.
pub const BIRD_FLEET_CONF: &str = include_str!("../../../config/bird-fleet.conf");
/// Where the shipped config includes lb's file.
pub const SHIPPED_INCLUDE: &str = "/var/lib/lb/bird-lb.conf";

pub struct FleetHost {
    pub address: Ipv4Addr,
    /// Both addresses, for a restart.
    own: (Ipv4Addr, Ipv6Addr),
    pub lb: Option<LbProcess>,
    pub bird: Option<Bird>,
    pub include_file: PathBuf,
}

pub struct Fleet {
    // Fields drop in order: the processes first, then the namespaces and their files.
    pub hosts: Vec<FleetHost>,
    /// `[bgp.drain]` and BFD of every host, for a host started again.
    drain: String,
    bfd: (u32, u32),
    pub router_bird: Bird,
    pub far_client: Netns,
    pub router: Netns,
    pub dir: tempfile::TempDir,
    pub lab: Lab,
}

impl Fleet {
    /// Builds the fleet with `drain` as `[bgp.drain]`'s keys and BFD at `bfd` (interval in
    /// ms, multiplier) on both ends, and waits until the router routes the VIP over all
    /// three hosts.
    pub fn build(tag: &str, drain: &str, bfd: (u32, u32)) -> Result<Self> {
        require_tool("bird", "bird2");
        require_tool("birdc", "bird2");
        require_tool("nft", "nftables");
        let mut lab = Lab::build(tag, backends_across(1, 1, 3), true)?;
        let mut addresses = vec![(LB_V4, LB_V6)];
        for _ in 1..HOSTS {
            addresses.push(lab.add_balancer()?);
        }
        let (router, far_client) = router_and_client(&lab)?;
        for b in &lab.backends {
            b.ns.ip(&["route", "add", FAR_NET, "via", &ROUTER_V4.to_string()])?;
        }
        let dir = tempfile::Builder::new().prefix(&format!("{}-", lab.prefix)).tempdir()?;
        let mut hosts = Vec::new();
        for (i, &own) in addresses.iter().enumerate() {
            hosts.push(start_host(&lab, &dir, i, own, drain, bfd)?);
        }
        let host_addresses: Vec<Ipv4Addr> = hosts.iter().map(|h| h.address).collect();
        let router_conf = router_config(ROUTER_V4, ROUTER_ASN, HOST_ASN, &host_addresses, bfd);
        let router_bird = Bird::start(&router, dir.path(), "router", &router_conf)?;
        let fleet = Self { hosts, drain: drain.to_owned(), bfd, router_bird, far_client, router, dir, lab };
        fleet.wait_nexthops(HOSTS, Duration::from_secs(60))?;
        Ok(fleet)
    }

    /// The namespace of balancer host `i`.
    pub fn host_ns(&self, i: usize) -> &Netns {
        if i == 0 { &self.lab.lb } else { &self.lab.more_balancers[i - 1].0 }
    }

    pub fn lb(&self, i: usize) -> &LbProcess {
        self.hosts[i].lb.as_ref().expect("host's lb is running")
    }

    /// The hosts the router's FIB sends the VIP to.
    pub fn nexthops(&self) -> Result<Vec<Ipv4Addr>> {
        nexthops_in(self.router.name())
    }

    /// Watches the router's FIB every 10 ms from a thread of its own, until the watch is
    /// stopped: the fewest nexthops it saw.
    pub fn watch_nexthops(&self) -> NexthopWatch {
        let (stop, router) = (Arc::new(AtomicBool::new(false)), self.router.name().to_owned());
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut fewest = usize::MAX;
            while !flag.load(Ordering::Relaxed) {
                fewest = fewest.min(nexthops_in(&router).map_or(0, |h| h.len()));
                std::thread::sleep(Duration::from_millis(10));
            }
            fewest
        });
        NexthopWatch { stop, thread }
    }

    /// Waits (at most `within`) until the router's FIB has `n` nexthops for the VIP; how long it took.
    pub fn wait_nexthops(&self, n: usize, within: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let hops = self.nexthops()?;
            if hops.len() == n {
                return Ok(start.elapsed());
            }
            ensure!(
                start.elapsed() < within,
                "the router has {hops:?} for {VIP_V4} after {within:?}, not {n} nexthops\nrouter: {}\n{}",
                self.router_bird.birdc("show protocols all").unwrap_or_default(),
                self.router_bird.log_text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Cuts host `i`'s link to the backends (drops its own packets to them) or heals it.
    pub fn cut_backends(&self, i: usize, cut: bool) -> Result<()> {
        self.nft(i, "lbcut", cut, "chain out { type filter hook output priority 0; ip daddr 10.0.1.0/24 drop; };")
    }

    /// Makes host `i` silent with its link up: everything in and out of its uplink dropped.
    pub fn silence(&self, i: usize) -> Result<()> {
        self.nft(
            i,
            "lbsilent",
            true,
            "chain in { type filter hook input priority 0; iifname \"eth0\" drop; }; \
             chain out { type filter hook output priority 0; oifname \"eth0\" drop; };",
        )
    }

    fn nft(&self, i: usize, table: &str, add: bool, chains: &str) -> Result<()> {
        let ns = self.host_ns(i);
        if add {
            ns.exec(&["nft", &format!("table inet {table} {{ {chains} }}")])
        } else {
            ns.exec(&["nft", "delete", "table", "inet", table])
        }
    }

    /// Host `i` dies: its link goes down (its program with it), then its controller and BIRD
    /// are killed; the routers find out by BFD.
    pub fn kill_host(&mut self, i: usize) -> Result<()> {
        self.host_ns(i).ip(&["link", "set", "eth0", "down"])?;
        if let Some(lb) = self.hosts[i].lb.take() {
            lb.crash()?;
        }
        self.hosts[i].bird.take();
        Ok(())
    }

    /// Host `i` (killed or stopped) comes back: link up, `lb run` (adopting what is
    /// pinned), then BIRD.
    pub fn add_host(&mut self, i: usize) -> Result<()> {
        self.hosts[i].lb.take();
        self.hosts[i].bird.take();
        self.host_ns(i).ip(&["link", "set", "eth0", "up"])?;
        let own = self.hosts[i].own;
        self.hosts[i] = start_host(&self.lab, &self.dir, i, own, &self.drain, self.bfd)?;
        Ok(())
    }

    /// `lb ARGS` against host `i`'s controller.
    pub fn cli(&self, i: usize, args: &[&str]) -> Result<String> {
        self.lb(i).cli(args)
    }
}

/// A watch of the router's FIB ([`Fleet::watch_nexthops`]).
pub struct NexthopWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl NexthopWatch {
    /// The fewest nexthops seen.
    pub fn fewest(self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| anyhow::anyhow!("the nexthop watch panicked"))
    }
}

/// The VIP's nexthops in the FIB of namespace `router` (`ip -n ROUTER route show`).
fn nexthops_in(router: &str) -> Result<Vec<Ipv4Addr>> {
    let out =
        std::process::Command::new("ip").args(["-n", router, "route", "show", &format!("{VIP_V4}/32")]).output()?;
    ensure!(out.status.success(), "ip route show in {router}: {}", String::from_utf8_lossy(&out.stderr));
    let out = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = out.split_whitespace().collect();
    Ok(words.windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect())
}

/// The router on the segment and the far client behind it, on a link of their own.
fn router_and_client(lab: &Lab) -> Result<(Netns, Netns)> {
    let router = lab.plug(&format!("{}-rt", lab.prefix), "prt", &[&format!("{ROUTER_V4}/16")])?;
    let far = Netns::new(&format!("{}-fc", lab.prefix))?;
    run_cmd(
        "ip",
        &["link", "add", "eth1", "netns", router.name(), "type", "veth", "peer", "name", "eth0", "netns", far.name()],
    )?;
    router.ip(&["addr", "add", &format!("{ROUTER_FAR_V4}/24"), "dev", "eth1"])?;
    router.ip(&["link", "set", "eth1", "up"])?;
    far.ip(&["addr", "add", &format!("{FAR_CLIENT_V4}/24"), "dev", "eth0"])?;
    far.ip(&["link", "set", "eth0", "up"])?;
    far.ip(&["route", "add", "default", "via", &ROUTER_FAR_V4.to_string()])?;
    far.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
    router.exec(&["ethtool", "-K", "eth1", "tx", "off"])?;
    for setting in [
        "net.ipv4.ip_forward=1",
        // ECMP by the 4-tuple: one client's connections spread over the hosts.
        "net.ipv4.fib_multipath_hash_policy=1",
        "net.ipv4.conf.eth1.rp_filter=0",
    ] {
        router.sysctl(setting)?;
    }
    far.sysctl("net.ipv4.conf.all.rp_filter=0")?;
    Ok((router, far))
}

/// Balancer host `i`: `lb run` with `[bgp]`, then (once lb has written its include file)
/// BIRD on the shipped config, which includes it.
fn start_host(
    lab: &Lab,
    dir: &tempfile::TempDir,
    i: usize,
    own: (Ipv4Addr, Ipv6Addr),
    drain: &str,
    bfd: (u32, u32),
) -> Result<FleetHost> {
    let ns = if i == 0 { &lab.lb } else { &lab.more_balancers[i - 1].0 };
    let name = format!("{}-h{i}", lab.prefix);
    let pin_dir = if i == 0 { lab.pin_dir() } else { PathBuf::from(format!("/sys/fs/bpf/{name}")) };
    let include_file = dir.path().join(format!("h{i}-bird-lb.conf"));
    let socket = dir.path().join(format!("h{i}.ctl"));
    let config = host_config(lab, own, &pin_dir, &include_file, &socket, drain, bfd);
    let lb = LbProcess::start_in(ns, &name, pin_dir, &config)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !include_file.exists() {
        ensure!(Instant::now() < deadline, "lb never wrote {}", include_file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let conf = BIRD_FLEET_CONF
        .replace(SHIPPED_INCLUDE, &include_file.display().to_string())
        .replace("log syslog all;", "log stderr all;");
    let bird = Bird::start(ns, dir.path(), &format!("h{i}"), &conf)?;
    Ok(FleetHost { address: own.0, own, lb: Some(lb), bird: Some(bird), include_file })
}

/// A host's controller config: the VIP (HTTP and line services, dsr, checked) over every
/// backend, the fleet's hash seed, and `[bgp]` towards the router.
pub fn host_config(
    lab: &Lab,
    own: (Ipv4Addr, Ipv6Addr),
    pin_dir: &std::path::Path,
    include_file: &std::path::Path,
    socket: &std::path::Path,
    drain: &str,
    bfd: (u32, u32),
) -> String {
    let all: Vec<(usize, u32)> = (0..lab.backends.len()).map(|b| (b, 1)).collect();
    let vips = [
        VipSpec::new("web", IpAddr::V4(VIP_V4), HTTP_PORT, "tcp", "dsr", all.clone()),
        VipSpec::new("lines", IpAddr::V4(VIP_V4), LINE_PORT, "tcp", "dsr", all),
    ];
    let (interval, multiplier) = bfd;
    let bgp = format!(
        "[bgp]\nasn = {HOST_ASN}\ninclude_file = \"{}\"\nbird_socket = \"{}\"\nstop_settle = \"500ms\"\n\
         [bgp.drain]\n{drain}\n\
         [[bgp.peer]]\nname = \"router\"\naddress = \"{ROUTER_V4}\"\nasn = {ROUTER_ASN}\n\
         bfd_interval = \"{interval}ms\"\nbfd_multiplier = {multiplier}\n",
        include_file.display(),
        socket.display()
    );
    LabConfig::new(lab, own, pin_dir, &vips)
        .balancer(&format!("hash_seed = {HASH_SEED}"))
        .vip("web", CHECK)
        .vip("lines", CHECK)
        .merge(&bgp)
        .to_string()
}

/// The VIP's services as the far client reaches them.
pub const WEB: SocketAddr = SocketAddr::new(IpAddr::V4(VIP_V4), HTTP_PORT);
pub const LINES: SocketAddr = SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT);
