//! Two balancer sites on the lab's segment, each with its own VIP, backends and
//! controller, both serving the zone `example.test.` whose `www` A record fails over from
//! site A to site B. Each controller is a vantage point: it judges its own site by its
//! VIP's backends and probes the other site's VIP through that site's XDP program; they
//! exchange views over their admin interfaces, with a quorum of 2.
//!
//! | site | balancer | VIP (HTTP, port 80) | backends | DNS and admin |
//! | --- | --- | --- | --- | --- |
//! | A | `lab.lb`, 10.0.0.1 | 10.100.0.1 | the lab's first `per_site` | 10.0.0.1:53, 10.0.0.1:9180 |
//! | B | `lab.more_balancers[0]`, 10.0.0.3 | 10.100.0.2 | the next `per_site` | 10.0.0.3:53, 10.0.0.3:9180 |
//!
//! Every host routes each VIP to its own site's balancer.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lb_userspace::status::Status;

use crate::lab::{HTTP_PORT, LB_V4, LB_V6, Lab, LbProcess, Netns, VIP_V4, VipSpec, lb_config_for, require_tool};

pub const SITE_B_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
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

pub struct TwoSites {
    pub lab: Lab,
    pub a: LbProcess,
    pub b: LbProcess,
    /// Site B's balancer address.
    pub b_address: Ipv4Addr,
    /// Backend indexes of each site.
    pub a_backends: Vec<usize>,
    pub b_backends: Vec<usize>,
}

/// One site's controller config: its VIP with HTTP checks of its backends, and `[dns]`
/// with this site judged by its VIP and the other probed.
fn site_config(lab: &Lab, own: (Ipv4Addr, std::net::Ipv6Addr), pin_dir: &std::path::Path, site: char, peer: (char, Ipv4Addr), backends: &[usize], timing: Timing) -> String {
    let own_vip = if site == 'a' { VIP_V4 } else { SITE_B_VIP };
    let vip = VipSpec::new(&format!("web-{site}"), IpAddr::V4(own_vip), HTTP_PORT, "tcp", "nat", backends.iter().map(|&i| (i, 1)).collect());
    let ms = timing.interval.as_millis();
    let check = format!(
        "type = \"http\", interval = \"{ms}ms\", timeout = \"{}ms\", healthy_threshold = {}, unhealthy_threshold = {}",
        ms / 2,
        timing.healthy_threshold,
        timing.unhealthy_threshold
    );
    let mut config = lb_config_for(lab, own, pin_dir, &[vip]).replacen("mode = \"nat\"\n", &format!("mode = \"nat\"\nhealth_check = {{ {check} }}\n"), 1);
    let mut dns = String::new();
    let _ = write!(
        dns,
        "[admin]\nlisten = \"{}:9180\"\ntoken = \"{TOKEN}\"\n\n[dns]\nlisten = [\"{}:53\"]\nvantage = \"site-{site}\"\nquorum = 2\npeer_interval = \"{ms}ms\"\npeer_timeout = \"{}ms\"\n\n",
        own.0,
        own.0,
        ms / 2
    );
    let _ = write!(dns, "[[dns.peer]]\nname = \"site-{}\"\nadmin = \"{}:9180\"\ntoken = \"{TOKEN}\"\n\n", peer.0, peer.1);
    for (target, address) in [('a', VIP_V4), ('b', SITE_B_VIP)] {
        let _ = write!(dns, "[[dns.target]]\nname = \"site-{target}\"\naddress = \"{address}\"\n");
        if target == site {
            let _ = writeln!(dns, "vip = \"web-{site}\"\n");
        } else {
            let _ = writeln!(dns, "health_check = {{ {check}, port = {HTTP_PORT} }}\n");
        }
    }
    let _ = write!(
        dns,
        "[[dns.zone]]\norigin = \"example.test.\"\nns = [\"ns1.example.test.\"]\n\n[[dns.zone.record]]\nname = \"ns1\"\ntype = \"A\"\ndata = \"{LB_V4}\"\n\n\
         [[dns.zone.policy]]\nname = \"www\"\ntype = \"A\"\nttl = {}\nprimary = [\"site-a\"]\nbackup = [[\"site-b\"]]\n\n",
        timing.ttl
    );
    // Before `[balancer]`: the generated config ends inside its last `[[vip.backend]]`.
    config.insert_str(0, &dns);
    config
}

impl TwoSites {
    /// `per_site` backends (HTTP) per site; `tag` starts every name.
    pub fn build(tag: &str, per_site: usize, timing: Timing) -> Result<Self> {
        require_tool("dig", "bind9-dnsutils");
        let mut lab = Lab::build(tag, crate::lab::backends_across(2, 1, per_site), false)?;
        let (b_v4, b_v6) = lab.add_balancer()?;
        let b_ns = &lab.more_balancers[0].0;
        lab.client.ip(&["route", "add", &format!("{SITE_B_VIP}/32"), "via", &b_v4.to_string()])?;
        lab.lb.ip(&["route", "add", &format!("{SITE_B_VIP}/32"), "via", &b_v4.to_string()])?;
        b_ns.ip(&["route", "add", &format!("{VIP_V4}/32"), "via", &LB_V4.to_string()])?;
        let a_backends: Vec<usize> = (0..per_site).collect();
        let b_backends: Vec<usize> = (per_site..2 * per_site).collect();
        let a_pins = lab.pin_dir();
        let b_pins = PathBuf::from(format!("{}-b", a_pins.display()));
        let a_config = site_config(&lab, (LB_V4, LB_V6), &a_pins, 'a', ('b', b_v4), &a_backends, timing);
        let b_config = site_config(&lab, (b_v4, b_v6), &b_pins, 'b', ('a', LB_V4), &b_backends, timing);
        let a = LbProcess::start(&lab, &a_config)?;
        let b = LbProcess::start_in(b_ns, &format!("{}-b", lab.prefix), b_pins, &b_config)?;
        Ok(Self { lab, a, b, b_address: b_v4, a_backends, b_backends })
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
