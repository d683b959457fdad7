//! What `lb status`, `/v1/status` and `/metrics` report: one snapshot of the running
//! balancer (config generation, every VIP's priority level and counters, every backend's
//! state and counters), taken by the controller loop, and its rendering as a table.

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
    /// Health checks that failed for a local reason (out of file descriptors, buffers,
    /// memory, ports) since start: the balancer's fault, never counted against a backend.
    #[serde(default)]
    pub health_check_local_failures: u64,
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

/// The status as `lb status` prints it.
pub fn table(status: &Status) -> String {
    let mut out = String::new();
    let reload = match &status.last_reload {
        None => "none".to_owned(),
        Some(r) if r.applied => format!("applied ({})", r.message),
        Some(r) => format!("REFUSED: {}", r.message),
    };
    let _ = writeln!(out, "lb {}  config generation {}  last reload: {reload}", status.version, status.generation);
    for vip in &status.vips {
        let serving = match (vip.level, vip.panic) {
            (None, _) => "NO BACKEND".to_owned(),
            (Some(_), panic) => level_loads(&vip.levels) + if panic { ", PANIC" } else { "" },
        };
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
