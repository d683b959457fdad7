//! Two balancer sites on the lab's segment, each with its own VIP, backends and
//! controller, both serving the zone `example.test.` whose `www` A record fails over from
//! site A to site B. Each controller is a vantage point: it judges its own site by its
//! VIP's backends and probes the other site's VIP through that site's XDP program; they
//! exchange views over their admin interfaces, with a quorum of 2.
//!
//! | site | balancer | VIP (HTTP, port 80) | backends | DNS and admin |
//! | --- | --- | --- | --- | --- |
//! | A | `lab.lb`, 10.0.0.1 | 10.100.0.1 | site A's, first in the lab | 10.0.0.1:53, 10.0.0.1:9180 |
//! | B | `lab.more_balancers[0]`, 10.0.0.3 | 10.100.0.2 | site B's, after A's | 10.0.0.3:53, 10.0.0.3:9180 |
//! | witness (optional) | `lab.more_balancers[1]`, 10.0.0.4 | none: a DNS vantage point without a packet path | - | 10.0.0.4:53, 10.0.0.4:9180 |
//!
//! With the witness, the three vantage points keep a quorum of 2: a site that dies with its
//! controller still has two votes against it.
//!
//! Each site ([`Site`]) has its backends with their locality labels, optionally the
//! balancer's own labels and Maglev table size, and its VIP's health settings (by default
//! an HTTP check at the sites' [`Timing`]). Every host routes each VIP to its own site's
//! balancer.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RData, RecordType};
use lb_userspace::api::status::Status;

use crate::lab::{
    BackendSpec, HTTP_PORT, LB_V4, LB_V6, Lab, LabConfig, LbProcess, Netns, VIP_V4, VipSpec, backends_across,
    require_tool,
};

pub const SITE_B_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
/// The witness's address ([`TwoSites::build_with_witness`]), where its DNS server answers.
pub const WITNESS_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
pub const NAME: &str = "www.example.test";
const TOKEN: &str = "two-sites-test-token";

/// How the sites judge each other, and the record's TTL.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Interval of every check (backends and targets) and of the peer exchange.
    pub interval: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub ttl: u32,
}

impl Timing {
    /// The longest a site's VIP may be down before both vantage points say so and each
    /// has the other's view: checks of the backends (site A's own view) or of the VIP (the
    /// peer's), then one peer exchange.
    pub fn detection_bound(&self) -> Duration {
        self.interval * self.unhealthy_threshold + self.interval
    }
}

/// One site of [`TwoSites::build_sites`]: its backends and how its balancer serves them.
#[derive(Clone, Debug)]
pub struct Site {
    pub backends: Vec<BackendSpec>,
    /// The balancer's locality labels (region, zone), if any.
    pub locality: Option<(&'static str, &'static str)>,
    /// The VIP's health settings, lines of its TOML table (`http`, `health_check`,
    /// `outlier_detection`); `None` for an HTTP check at the sites' [`Timing`].
    pub vip_health: Option<&'static str>,
    /// Slots of the balancer's Maglev tables, if not the generated config's.
    pub maglev_table_size: Option<u32>,
}

impl Site {
    /// `backends`, the rest by default.
    pub fn new(backends: Vec<BackendSpec>) -> Self {
        Self { backends, locality: None, vip_health: None, maglev_table_size: None }
    }
}

pub struct TwoSites {
    // Declared before `lab`: fields drop in order, so the controllers stop before their
    // namespaces and links go.
    pub a: LbProcess,
    pub b: LbProcess,
    /// The third vantage point, DNS only ([`TwoSites::build_with_witness`]).
    pub witness: Option<LbProcess>,
    pub lab: Lab,
    /// Site B's balancer address.
    pub b_address: Ipv4Addr,
    /// Backend indexes of each site.
    pub a_backends: Vec<usize>,
    pub b_backends: Vec<usize>,
}

/// Where a site's controller pins its maps.
fn site_pins(lab: &Lab, site: char) -> PathBuf {
    if site == 'a' { lab.pin_dir() } else { PathBuf::from(format!("{}-{site}", lab.pin_dir().display())) }
}

/// One site's controller config: its VIP with `spec`'s settings over `backends` (lab
/// indexes), and `[dns]` with this site judged by its VIP and the other probed, and
/// `peers` (vantage names and admin addresses) asked for their views.
fn site_config(
    lab: &Lab,
    own: (Ipv4Addr, Ipv6Addr),
    site: char,
    peers: &[(&str, Ipv4Addr)],
    spec: &Site,
    backends: &[usize],
    timing: Timing,
) -> String {
    let own_vip = if site == 'a' { VIP_V4 } else { SITE_B_VIP };
    let vip = VipSpec::new(
        &format!("web-{site}"),
        IpAddr::V4(own_vip),
        HTTP_PORT,
        "tcp",
        "nat",
        backends.iter().map(|&i| (i, 1)).collect(),
    );
    let check = target_check(timing);
    let health = spec.vip_health.map_or_else(|| format!("health_check = {{ {check} }}"), str::to_owned);
    let mut config = LabConfig::new(lab, own, &site_pins(lab, site), &[vip]).vip(&format!("web-{site}"), &health);
    if let Some((region, zone)) = spec.locality {
        config = config.balancer(&format!("region = \"{region}\"\nzone = \"{zone}\""));
    }
    if let Some(slots) = spec.maglev_table_size {
        config = config.balancer(&format!("maglev_table_size = {slots}"));
    }
    let dns = dns_tables(own.0, &format!("site-{site}"), peers, Some(site), timing);
    config.merge(&dns).to_string()
}

/// The active check of a site's VIP, at the sites' timing.
fn target_check(timing: Timing) -> String {
    let ms = timing.interval.as_millis();
    format!(
        "type = \"http\", interval = \"{ms}ms\", timeout = \"{}ms\", healthy_threshold = {}, unhealthy_threshold = {}",
        ms / 2,
        timing.healthy_threshold,
        timing.unhealthy_threshold
    )
}

/// `[admin]` and `[dns]` of the vantage point `vantage` at `address`, with its `peers`:
/// both sites as targets (the one of `own_site` judged by its VIP, the others probed) and
/// the zone whose `www` fails over from site A to site B.
fn dns_tables(
    address: Ipv4Addr,
    vantage: &str,
    peers: &[(&str, Ipv4Addr)],
    own_site: Option<char>,
    timing: Timing,
) -> String {
    let ms = timing.interval.as_millis();
    let mut dns = String::new();
    let _ = write!(
        dns,
        "[admin]\nlisten = \"{address}:9180\"\ntoken = \"{TOKEN}\"\n\n[dns]\nlisten = [\"{address}:53\"]\nvantage = \"{vantage}\"\nquorum = 2\npeer_interval = \"{ms}ms\"\npeer_timeout = \"{}ms\"\n\n",
        ms / 2
    );
    for (name, admin) in peers {
        let _ = write!(dns, "[[dns.peer]]\nname = \"{name}\"\nadmin = \"{admin}:9180\"\ntoken = \"{TOKEN}\"\n\n");
    }
    for (target, address) in [('a', VIP_V4), ('b', SITE_B_VIP)] {
        let _ = write!(dns, "[[dns.target]]\nname = \"site-{target}\"\naddress = \"{address}\"\n");
        if own_site == Some(target) {
            let _ = writeln!(dns, "vip = \"web-{target}\"\n");
        } else {
            let _ = writeln!(dns, "health_check = {{ {}, port = {HTTP_PORT} }}\n", target_check(timing));
        }
    }
    let _ = write!(
        dns,
        "[[dns.zone]]\norigin = \"example.test.\"\nns = [\"ns1.example.test.\"]\n\n[[dns.zone.record]]\nname = \"ns1\"\ntype = \"A\"\ndata = \"{LB_V4}\"\n\n\
         [[dns.zone.policy]]\nname = \"www\"\ntype = \"A\"\nttl = {}\nprimary = [\"site-a\"]\nbackup = [[\"site-b\"]]\n\n",
        timing.ttl
    );
    dns
}

/// `per_site` backends (HTTP) per site, site A's in r1/z1 and site B's in r2/z1.
fn default_sites(per_site: usize) -> (Site, Site) {
    let mut a = backends_across(2, 1, per_site);
    let b = a.split_off(per_site);
    (Site::new(a), Site::new(b))
}

impl TwoSites {
    /// `per_site` backends (HTTP) per site, site A's in r1/z1 and site B's in r2/z1, the
    /// rest by default ([`Site::new`]); `tag` starts every name.
    pub fn build(tag: &str, per_site: usize, timing: Timing) -> Result<Self> {
        let (a, b) = default_sites(per_site);
        Self::build_sites(tag, a, b, timing)
    }

    /// Sites `a` and `b` as described; `tag` starts every name.
    pub fn build_sites(tag: &str, a: Site, b: Site, timing: Timing) -> Result<Self> {
        Self::build_all(tag, a, b, timing, false)
    }

    /// As [`build`](Self::build), with a third vantage point that has no packet path (a
    /// witness): the three keep a quorum of 2.
    pub fn build_with_witness(tag: &str, per_site: usize, timing: Timing) -> Result<Self> {
        let (a, b) = default_sites(per_site);
        Self::build_all(tag, a, b, timing, true)
    }

    fn build_all(tag: &str, a: Site, b: Site, timing: Timing, with_witness: bool) -> Result<Self> {
        require_tool("dig", "bind9-dnsutils");
        let a_backends: Vec<usize> = (0..a.backends.len()).collect();
        let b_backends: Vec<usize> = (a.backends.len()..a.backends.len() + b.backends.len()).collect();
        let mut lab = Lab::build(tag, a.backends.iter().chain(&b.backends).cloned().collect(), false)?;
        let (b_v4, b_v6) = lab.add_balancer()?;
        lab.client.ip(&["route", "add", &format!("{SITE_B_VIP}/32"), "via", &b_v4.to_string()])?;
        lab.lb.ip(&["route", "add", &format!("{SITE_B_VIP}/32"), "via", &b_v4.to_string()])?;
        lab.more_balancers[0].0.ip(&["route", "add", &format!("{VIP_V4}/32"), "via", &LB_V4.to_string()])?;
        let witness_v4 = if with_witness { Some(lab.add_balancer()?.0) } else { None };
        ensure!(witness_v4.is_none_or(|address| address == WITNESS_V4), "the witness is at {witness_v4:?}");
        let mut peers_of_a = vec![("site-b", b_v4)];
        let mut peers_of_b = vec![("site-a", LB_V4)];
        if let Some(address) = witness_v4 {
            let ns = &lab.more_balancers[1].0;
            ns.ip(&["route", "add", &format!("{VIP_V4}/32"), "via", &LB_V4.to_string()])?;
            ns.ip(&["route", "add", &format!("{SITE_B_VIP}/32"), "via", &b_v4.to_string()])?;
            peers_of_a.push(("witness", address));
            peers_of_b.push(("witness", address));
        }
        let a_config = site_config(&lab, (LB_V4, LB_V6), 'a', &peers_of_a, &a, &a_backends, timing);
        let b_config = site_config(&lab, (b_v4, b_v6), 'b', &peers_of_b, &b, &b_backends, timing);
        let a = LbProcess::start(&lab, &a_config)?;
        let b_ns = &lab.more_balancers[0].0;
        let b = LbProcess::start_in(b_ns, &format!("{}-b", lab.prefix), site_pins(&lab, 'b'), &b_config)?;
        let witness = match witness_v4 {
            Some(address) => {
                let config = dns_tables(address, "witness", &[("site-a", LB_V4), ("site-b", b_v4)], None, timing);
                let ns = &lab.more_balancers[1].0;
                Some(LbProcess::start_in(ns, &format!("{}-w", lab.prefix), site_pins(&lab, 'w'), &config)?)
            }
            None => None,
        };
        Ok(Self { lab, a, b, witness, b_address: b_v4, a_backends, b_backends })
    }

    pub fn b_netns(&self) -> &Netns {
        &self.lab.more_balancers[0].0
    }

    /// The addresses each site's DNS server answers for [`NAME`] now (A, then B).
    pub fn answers(&self) -> Result<(Vec<String>, Vec<String>)> {
        Ok((dig(&self.lab.client, LB_V4, NAME, &[])?, dig(&self.lab.client, self.b_address, NAME, &[])?))
    }

    /// Stops (or restarts) every backend of site A: its VIP is down (up again).
    pub fn site_a_backends(&mut self, up: bool) -> Result<()> {
        for i in self.a_backends.clone() {
            if up {
                self.lab.backends[i].restart()?;
            } else {
                self.lab.backends[i].stop();
            }
        }
        Ok(())
    }

    /// Cuts site B's balancer off from site A's VIP (a black-hole route), or heals it.
    pub fn cut_b_from_a(&self, cut: bool) -> Result<()> {
        let target = format!("{VIP_V4}/32");
        if cut {
            self.b_netns().ip(&["route", "replace", "blackhole", &target])
        } else {
            self.b_netns().ip(&["route", "replace", &target, "via", &LB_V4.to_string()])
        }
    }

    pub fn status(lb: &LbProcess) -> Result<Status> {
        serde_json::from_str(&lb.cli(&["status", "--json"])?).context("decoding lb status --json")
    }
}

/// `dig +short` for `name` A at `server` from `ns`: the answer's lines.
pub fn dig(ns: &Netns, server: Ipv4Addr, name: &str, extra: &[&str]) -> Result<Vec<String>> {
    let at = format!("@{server}");
    let mut args = vec!["dig", "+short", "+time=1", "+tries=1", at.as_str(), name, "A"];
    args.extend_from_slice(extra);
    let out = ns.output(&args)?;
    ensure!(!out.contains(";;"), "dig {name} {at}: {out}");
    Ok(out.lines().map(str::to_owned).collect())
}

/// One DNS query for `name` A over UDP to `server` port 53, as a stub resolver asks it (from
/// the calling thread's namespace): the addresses answered and the least of their TTLs.
pub fn resolve_a(server: Ipv4Addr, name: &str, timeout: Duration) -> Result<(Vec<Ipv4Addr>, Duration)> {
    static NEXT_ID: AtomicU16 = AtomicU16::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_ascii(name).with_context(|| format!("the name {name:?}"))?, RecordType::A));
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a DNS client socket")?;
    socket.connect((server, 53))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send(&query.to_vec().context("encoding the query")?).with_context(|| format!("asking {server}"))?;
    let mut buf = [0u8; 512];
    let n =
        socket.recv(&mut buf).with_context(|| format!("no answer from {server} within {} ms", timeout.as_millis()))?;
    let answer = Message::from_vec(&buf[..n]).with_context(|| format!("decoding the answer of {server}"))?;
    ensure!(answer.metadata.id == id, "{server} answered query {} instead of {id}", answer.metadata.id);
    ensure!(
        answer.metadata.response_code == ResponseCode::NoError,
        "{server} answered {}",
        answer.metadata.response_code
    );
    let records: Vec<(Ipv4Addr, u32)> = answer
        .answers
        .iter()
        .filter_map(|record| match record.data {
            RData::A(a) => Some((a.0, record.ttl)),
            _ => None,
        })
        .collect();
    let ttl = records
        .iter()
        .map(|&(_, ttl)| ttl)
        .min()
        .with_context(|| format!("{server} answered no A record for {name}"))?;
    Ok((records.into_iter().map(|(address, _)| address).collect(), Duration::from_secs(ttl.into())))
}
