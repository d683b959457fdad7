//! What `lb status`, `/v1/status` and `/metrics` report: one snapshot of the running
//! balancer (config generation, every VIP's priority level and counters, every backend's
//! state and counters), taken by the controller loop, and its rendering: the full table,
//! one VIP's, or a summary line per VIP when there are many.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use lb_common::{BackendStats, Counters, GlobalStats, VipStats};
use serde::{Deserialize, Serialize};

use crate::backends::locality::{Availability, LevelShare};
use crate::backends::outlier::OutlierStats;
use crate::flows::{BackendFlows, StateCounts};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    /// 1 at start, +1 for every applied reload.
    pub generation: u64,
    /// The last reload (SIGHUP or the admin API), if any.
    pub last_reload: Option<ReloadOutcome>,
    pub vips: Vec<VipStatus>,
    /// Packets that belong to no VIP, by what happened to them.
    pub global: GlobalStats,
    /// The DNS server for site failover, when configured.
    #[serde(default)]
    pub dns: Option<crate::api::dns::DnsStatus>,
    /// BGP through BIRD, when configured.
    #[serde(default)]
    pub bgp: Option<crate::api::bgp::BgpStatus>,
    /// Health checks that failed for a local reason (out of file descriptors, buffers,
    /// memory, ports) since start: the balancer's fault, never counted against a backend.
    #[serde(default)]
    pub health_check_local_failures: u64,
    /// nat source ports towards each backend (`balancer.nat_port_min..=nat_port_max`).
    #[serde(default)]
    pub nat_ports_per_backend: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub applied: bool,
    /// What was wrong with a refused config (its key and line), or the new generation.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    /// The priority level serving new flows; none when no backend can.
    pub level: Option<usize>,
    pub panic: bool,
    /// Every priority level with eligible backends: its health, its share of new flows
    /// (percent) and its panic.
    #[serde(default)]
    pub levels: Vec<LevelShare>,
    pub counters: VipStats,
    /// Live flows by state (as of the last sweep of the flow tables, at most a second old).
    #[serde(default)]
    pub flows: StateCounts,
    /// With outlier detection: the mesh's ejection counters.
    pub outlier: Option<OutlierStats>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: SocketAddr,
    pub region: String,
    pub zone: String,
    /// Its priority level for this balancer.
    pub level: usize,
    /// The configured weight, and the weight it has in the VIP's table now (0: no new flows).
    pub weight: u32,
    pub serving_weight: u32,
    /// available, unhealthy, ejected or draining.
    pub state: String,
    /// Counted per backend address and port, over every VIP it serves.
    pub counters: BackendStats,
    /// Its live flows and the nat ports held towards it (per address and port too).
    #[serde(default)]
    pub flows: BackendFlows,
    /// Its connections in this VIP that are still open (neither closed nor in TIME_WAIT):
    /// what `lb drain` waits for.
    #[serde(default)]
    pub open_flows: u64,
}

pub fn state_name(availability: Availability) -> &'static str {
    match availability {
        Availability::Available => "available",
        Availability::Unhealthy => "unhealthy",
        Availability::Ejected => "ejected",
        Availability::Draining => "draining",
    }
}

/// The levels taking new flows and their shares, as "level 0 70%, level 1 30%"; a level
/// in panic is marked.
fn level_loads(levels: &[LevelShare]) -> String {
    let served = levels.iter().filter(|l| l.load > 0);
    let each = served.map(|l| format!("level {} {}%{}", l.level, l.load, if l.panic { " (panic)" } else { "" }));
    each.collect::<Vec<_>>().join(", ")
}

/// With more VIPs than this, `lb status` prints a summary line per VIP (unless `--full`).
pub const SUMMARY_ABOVE_VIPS: usize = 10;

/// What `lb status` prints of the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View<'a> {
    /// Every VIP in detail up to [`SUMMARY_ABOVE_VIPS`], a line per VIP above.
    Auto,
    /// Every VIP in detail.
    Full,
    /// This VIP only, in detail.
    Vip(&'a str),
}

#[derive(Debug, thiserror::Error)]
#[error("no VIP is named {name:?} (`lb status` lists them)")]
pub struct UnknownVip {
    pub name: String,
}

impl Status {
    /// The status with only the VIP `name` (and without the DNS server's part).
    pub fn only_vip(&self, name: &str) -> Result<Status, UnknownVip> {
        let vip = self.vips.iter().find(|v| v.name == name).ok_or_else(|| UnknownVip { name: name.to_owned() })?;
        Ok(Status { vips: vec![vip.clone()], dns: None, ..self.clone() })
    }
}

/// The status as `lb status` prints it, in `view`.
pub fn render(status: &Status, view: View) -> Result<String, UnknownVip> {
    Ok(match view {
        View::Vip(name) => table(&status.only_vip(name)?),
        View::Auto if status.vips.len() > SUMMARY_ABOVE_VIPS => summary(status),
        View::Auto | View::Full => table(status),
    })
}

fn heading(out: &mut String, status: &Status) {
    let reload = match &status.last_reload {
        None => "none".to_owned(),
        Some(r) if r.applied => format!("applied ({})", r.message),
        Some(r) => format!("REFUSED: {}", r.message),
    };
    let _ = writeln!(out, "lb {}  config generation {}  last reload: {reload}", status.version, status.generation);
}

fn serving(vip: &VipStatus) -> String {
    match (vip.level, vip.panic) {
        (None, _) => "NO BACKEND".to_owned(),
        (Some(_), panic) => level_loads(&vip.levels) + if panic { ", PANIC" } else { "" },
    }
}

/// A line per VIP: the priority level it serves new flows from (NONE: no backend can), how
/// many of its backends can take them, why the others can't, and its flows.
pub fn summary(status: &Status) -> String {
    let mut out = String::new();
    heading(&mut out, status);
    let header = [
        "vip",
        "address",
        "mode",
        "level",
        "backends",
        "unhealthy",
        "ejected",
        "draining",
        "panic",
        "new flows",
        "live flows",
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 11]> = status.vips.iter().map(summary_cells).collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let _ = writeln!(out);
    for row in std::iter::once(&header).chain(&rows) {
        // Names and addresses to the left, numbers to the right.
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(
                |(i, (cell, w))| {
                    if (3..8).contains(&i) || i > 8 { format!("{cell:>w$}") } else { format!("{cell:<w$}") }
                },
            )
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let _ = writeln!(
        out,
        "\n{} VIPs: `lb status --vip NAME` shows one with its backends, `lb status --full` all of them",
        status.vips.len()
    );
    if let Some(dns) = &status.dns {
        dns_table(&mut out, dns);
    }
    if let Some(bgp) = &status.bgp {
        out.push_str(&crate::api::bgp::section(bgp));
    }
    out
}

fn summary_cells(vip: &VipStatus) -> [String; 11] {
    let count = |state: &str| vip.backends.iter().filter(|b| b.state == state).count();
    [
        vip.name.clone(),
        format!("{}/{}", SocketAddr::new(vip.address, vip.port), vip.protocol),
        vip.mode.clone(),
        vip.level.map_or_else(|| "NONE".to_owned(), |level| level.to_string()),
        format!("{}/{}", count("available"), vip.backends.len()),
        count("unhealthy").to_string(),
        count("ejected").to_string(),
        count("draining").to_string(),
        if vip.panic { "PANIC" } else { "no" }.to_owned(),
        compact(vip.counters.new_flows),
        compact(vip.flows.total()),
    ]
}

/// A count in at most 6 characters: exact below 100000, else 123.4k, 5.6M, 789.0G.
fn compact(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1_000_000_000_000, "T"), (1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")];
    match UNITS.iter().find(|(unit, _)| n >= 100_000 && n >= *unit) {
        Some((unit, suffix)) => format!("{:.1}{suffix}", n as f64 / *unit as f64),
        None => n.to_string(),
    }
}

/// Every VIP with its backends, as `lb status --full` prints it.
pub fn table(status: &Status) -> String {
    let mut out = String::new();
    heading(&mut out, status);
    for vip in &status.vips {
        let serving = serving(vip);
        let c = &vip.counters;
        let _ = writeln!(
            out,
            "\nVIP {} {}/{} {} ({}): {} packets, {} new flows, {} rate-limited, {} dropped, {} live flows ({})",
            vip.name,
            SocketAddr::new(vip.address, vip.port),
            vip.protocol,
            vip.mode,
            serving,
            c.packets,
            c.new_flows,
            c.family_sum("lb_vip_rate_limited_packets"),
            c.family_sum("lb_vip_dropped_packets"),
            vip.flows.total(),
            vip.flows.named().filter(|(_, n)| *n > 0).map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", "),
        );
        if let Some(o) = &vip.outlier {
            let _ = writeln!(
                out,
                "  ejections: {} active, {} enforced, {} refused by max_ejection_percent",
                o.ejections_active, o.ejections_enforced_total, o.ejections_overflow_total
            );
        }
        let _ = writeln!(
            out,
            "  {:<42} {:<10} {:>5} {:>7} {:>7} {:>12} {:>10} {:>8} {:>9}",
            "backend", "state", "level", "weight", "serving", "packets", "new flows", "flows", "nat ports"
        );
        for b in &vip.backends {
            let _ = writeln!(
                out,
                "  {:<42} {:<10} {:>5} {:>7} {:>7} {:>12} {:>10} {:>8} {:>9}",
                format!("{} ({}/{})", b.address, b.region, b.zone),
                b.state,
                b.level,
                b.weight,
                b.serving_weight,
                b.counters.packets,
                b.counters.new_flows,
                b.flows.flows,
                b.flows.nat_ports
            );
        }
    }
    if let Some(dns) = &status.dns {
        dns_table(&mut out, dns);
    }
    if let Some(bgp) = &status.bgp {
        out.push_str(&crate::api::bgp::section(bgp));
    }
    out
}

fn dns_table(out: &mut String, dns: &crate::api::dns::DnsStatus) {
    let answered: u64 = dns.responses.values().sum();
    let _ = writeln!(
        out,
        "
DNS vantage {} (quorum {}): {answered} answers, {} truncated",
        dns.vantage, dns.quorum, dns.truncated
    );
    let _ = writeln!(out, "  {:<24} {:<40} {:<5} {:>11}  views", "target", "address", "state", "transitions");
    for t in &dns.targets {
        let views: Vec<String> =
            t.views.iter().map(|(v, up)| format!("{v}={}", if *up { "up" } else { "down" })).collect();
        let state = if t.up { "up" } else { "DOWN" };
        let _ =
            writeln!(out, "  {:<24} {:<40} {:<5} {:>11}  {}", t.name, t.address, state, t.transitions, views.join(" "));
    }
    for p in &dns.policies {
        let ratio = match p.trickle_override {
            Some(r) => format!("{r} (set by operator)"),
            None => p.trickle_ratio.to_string(),
        };
        let answers: Vec<String> = p.answers.iter().map(|(s, n)| format!("{s} {n}")).collect();
        let _ = writeln!(
            out,
            "  policy {}: answering {}, trickle {ratio}; answers: {}",
            p.record,
            p.state,
            answers.join(", ")
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `vips` VIPs of `backends` backends each, IPv4 and IPv6, in every state.
    pub(crate) fn sample_status(vips: usize, backends: usize) -> Status {
        let states = ["available", "unhealthy", "ejected", "draining"];
        let vips = (0..vips)
            .map(|i| VipStatus {
                name: format!("service-{i:03}"),
                address: if i % 2 == 0 { format!("10.100.0.{i}") } else { format!("fd00:100::{i:x}") }.parse().unwrap(),
                port: 443,
                protocol: "tcp".into(),
                mode: if i % 3 == 0 { "dsr" } else { "nat" }.into(),
                level: (i != 7).then_some(i % 2),
                panic: i == 9,
                levels: (i != 7)
                    .then_some(LevelShare { level: i % 2, health: 100, load: 100, panic: i == 9 })
                    .into_iter()
                    .collect(),
                counters: VipStats { new_flows: 123_456_789_012, ..Default::default() },
                flows: StateCounts([1_000_000, 2_000_000, 0, 0, 0, 0]),
                outlier: None,
                backends: (0..backends)
                    .map(|b| BackendStatus {
                        address: SocketAddr::new(format!("10.1.{i}.{b}").parse().unwrap(), 8443),
                        region: "eu".into(),
                        zone: "eu-1".into(),
                        level: 0,
                        weight: 1,
                        serving_weight: 1,
                        state: states[b % (1 + i % 4)].into(),
                        counters: BackendStats::default(),
                        flows: BackendFlows::default(),
                        open_flows: 0,
                    })
                    .collect(),
            })
            .collect();
        Status {
            version: "1.0.0".into(),
            generation: 3,
            last_reload: None,
            vips,
            global: GlobalStats::default(),
            dns: None,
            bgp: None,
            health_check_local_failures: 0,
            nat_ports_per_backend: 40000,
        }
    }

    #[test]
    fn many_vips_make_a_summary_line_each_that_fits_a_terminal() {
        let status = sample_status(100, 50);
        let text = render(&status, View::Auto).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Heading, blank, column names, 100 VIPs, blank, the hint.
        assert_eq!(lines.len(), 105, "{text}");
        for (vip, line) in status.vips.iter().zip(&lines[3..103]) {
            assert!(line.starts_with(&format!("{}  ", vip.name)), "{line}");
            assert!(line.len() <= 120, "{} columns: {line}", line.len());
        }
        let columns: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(columns[..5], ["vip", "address", "mode", "level", "backends"]);
        let words = |i: usize| lines[3 + i].split_whitespace().collect::<Vec<_>>();
        // service-003: states cycle over all four, 50 backends: 13 available, 13 unhealthy, 12, 12.
        assert_eq!(
            words(3),
            ["service-003", "[fd00:100::3]:443/tcp", "dsr", "1", "13/50", "13", "12", "12", "no", "123.5G", "3.0M"]
        );
        assert_eq!(words(7)[3], "NONE");
        assert_eq!(words(9)[8], "PANIC");
        assert_eq!([99_999, 100_000, 123_456_789].map(compact), ["99999", "100.0k", "123.5M"]);
        assert!(lines[104].contains("lb status --vip NAME"), "{text}");
    }

    #[test]
    fn a_vip_or_full_shows_backends_and_few_vips_show_them_by_default() {
        let mut status = sample_status(100, 50);
        let one = render(&status, View::Vip("service-042")).unwrap();
        assert_eq!(one.lines().filter(|l| l.starts_with("VIP ")).count(), 1, "{one}");
        assert!(one.contains("VIP service-042 10.100.0.42:443/tcp dsr (level 0 100%)"), "{one}");
        assert_eq!(one.lines().filter(|l| l.contains("(eu/eu-1)")).count(), 50);
        let e = render(&status, View::Vip("nope")).unwrap_err();
        assert_eq!(e.to_string(), "no VIP is named \"nope\" (`lb status` lists them)");
        assert_eq!(render(&status, View::Full).unwrap().lines().filter(|l| l.contains("(eu/eu-1)")).count(), 5000);
        status.vips.truncate(SUMMARY_ABOVE_VIPS);
        assert_eq!(render(&status, View::Auto).unwrap(), table(&status));
    }
}
