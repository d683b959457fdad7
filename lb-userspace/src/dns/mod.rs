//! Site failover through DNS answers. The controller loop owns a [`DnsService`]: events
//! (target probe results, peers' views, the local VIPs' state, the operator's trickle
//! override, reloads) update its state ([`quorum::SiteHealth`] and the overrides); each
//! change rebuilds the policies' selections ([`policy::Selection`]) into a new
//! [`zone::Answers`], which the server ([`server`]) reads per query.

mod fast;
pub mod policy;
pub mod quorum;
mod respond;
pub mod server;
mod tcp;
mod udp;
mod wire;
#[cfg(test)]
mod wire_fuzz;
pub mod zone;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::client::AdminClient;
use crate::api::dns::{DnsStatus, PolicyStatus, TargetStatus, VantageView};
use crate::backends::probe::{CheckResult, Prober, Target};
use crate::config::dns::DnsConfig;
use crate::config::{AdminConfig, Config};
use policy::{PolicyCounters, Selection, Source};
use quorum::SiteHealth;
use respond::{DnsHandler, DnsStats, SharedAnswers};
pub use tcp::TcpLimits;
use zone::{Answers, Zones};

/// Why a run-time trickle ratio was not set.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrickleError {
    #[error("no policy record {0}")]
    NoSuchPolicy(String),
    #[error("a trickle ratio is 0..=1 (got {0})")]
    BadRatio(f64),
}

/// A peer's view, or why it could not be had.
pub struct PeerReport {
    pub peer: String,
    pub view: Result<VantageView, String>,
}

/// A peer poller's handle: stops polling when dropped.
struct PeerPoller(JoinHandle<()>);

impl Drop for PeerPoller {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub struct DnsService {
    config: DnsConfig,
    vantage: String,
    zones: Arc<Zones>,
    health: SiteHealth,
    /// Trickle ratios set at run time, by policy label; kept across reloads.
    overrides: BTreeMap<String, f64>,
    counters: BTreeMap<String, Arc<PolicyCounters>>,
    /// Each policy's state as last answered, to log moves.
    states: BTreeMap<String, Source>,
    shared: SharedAnswers,
    stats: Arc<DnsStats>,
    prober: Prober,
    views: UnboundedSender<PeerReport>,
    pollers: Vec<PeerPoller>,
    /// The listeners (none until the first answers are published).
    server: Option<JoinHandle<()>>,
}

impl Drop for DnsService {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

/// Probe targets of the targets with a `health_check`: keyed by (target name, address:port).
fn probe_targets(dns: &DnsConfig) -> Vec<Target> {
    dns.targets
        .iter()
        .filter_map(|t| {
            let check = t.health_check.clone()?;
            let port = check.port.expect("validated: target checks name their port");
            Some(Target { key: (t.name.clone(), SocketAddr::new(t.address, port)), check, through: None })
        })
        .collect()
}

impl DnsService {
    /// Binds the listeners and starts answering; `None` without a `[dns]` section.
    pub fn start(
        config: &Config,
        checks: UnboundedSender<CheckResult>,
        views: UnboundedSender<PeerReport>,
    ) -> Result<Option<Self>> {
        let Some(dns) = &config.dns else {
            return Ok(None);
        };
        let zones = compile(dns)?;
        let vantage = dns.vantage_name(&config.balancer.region).to_owned();
        let health = SiteHealth::new(&vantage, dns.quorum(), dns.peer_stale_after());
        let shared: SharedAnswers = Arc::new(RwLock::new(Arc::new(Answers {
            zones: zones.clone(),
            selections: Vec::new(),
            counters: Vec::new(),
        })));
        let stats = Arc::new(DnsStats::default());
        let mut service = Self {
            config: dns.clone(),
            vantage,
            zones: zones.clone(),
            health,
            overrides: BTreeMap::new(),
            counters: BTreeMap::new(),
            states: BTreeMap::new(),
            shared,
            stats,
            prober: Prober::new(checks),
            views,
            pollers: Vec::new(),
            server: None,
        };
        // The answers are complete before the first query can arrive.
        service.take(config, zones);
        let handler = DnsHandler { answers: service.shared.clone(), stats: service.stats.clone() };
        service.server = Some(server::serve(&dns.listen, dns.udp_sockets(), TcpLimits::of(dns), handler)?);
        info!(listen = ?dns.listen, vantage = %service.vantage, quorum = dns.quorum(), "DNS server listening");
        Ok(Some(service))
    }

    /// Takes a new config (its `listen` is the same: that needs a restart). Target health
    /// and overrides of targets and policies that stay are kept.
    pub fn reconfigure(&mut self, config: &Config) -> Result<()> {
        let dns = config.dns.as_ref().expect("the DNS section stays while the service runs");
        self.take(config, compile(dns)?);
        Ok(())
    }

    /// Takes `config`, whose zones are `zones`.
    fn take(&mut self, config: &Config, zones: Arc<Zones>) {
        let dns = config.dns.as_ref().expect("the DNS section stays while the service runs");
        self.zones = zones;
        self.vantage = dns.vantage_name(&config.balancer.region).to_owned();
        let peers: Vec<&str> = dns.peers.iter().map(|p| p.name.as_str()).collect();
        self.health.reconfigure(
            &self.vantage,
            dns.quorum(),
            dns.peer_stale_after(),
            self.zones.target_names.iter().map(String::as_str),
            &peers,
        );
        self.prober.set_targets(probe_targets(dns));
        self.pollers = dns
            .peers
            .iter()
            .map(|peer| {
                PeerPoller(tokio::spawn(poll_peer(
                    peer.clone(),
                    dns.peer_interval,
                    dns.peer_timeout,
                    self.views.clone(),
                )))
            })
            .collect();
        let labels: Vec<String> = self.zones.policies.iter().map(|p| p.label()).collect();
        self.overrides.retain(|label, _| labels.contains(label));
        self.counters.retain(|label, _| labels.contains(label));
        self.states.retain(|label, _| labels.contains(label));
        self.config = dns.clone();
        self.publish();
    }

    /// A probe result of a target (from this service's prober).
    pub fn on_check(&mut self, result: &CheckResult) {
        let name = &result.key.0;
        let Some(check) = self.config.targets.iter().find(|t| &t.name == name).and_then(|t| t.health_check.as_ref())
        else {
            return;
        };
        if self.health.record_check(name, result.outcome.is_ok(), check.healthy_threshold, check.unhealthy_threshold) {
            match &result.outcome {
                Err(why) => {
                    warn!(target = %name, reason = %why, vantage = %self.vantage, "DNS target down from this vantage point")
                }
                Ok(()) => {
                    info!(target = %name, vantage = %self.vantage, "DNS target up again from this vantage point")
                }
            }
            self.decide(Instant::now());
        }
    }

    /// A peer's view arrived (or could not be had: then it just ages out).
    pub fn on_peer(&mut self, report: PeerReport, now: Instant) {
        match report.view {
            Ok(view) if view.vantage == report.peer => self.health.peer_view(&report.peer, view.targets, now),
            Ok(view) => {
                warn!(peer = %report.peer, answered_as = %view.vantage, "DNS peer answered under another vantage name; its view is ignored")
            }
            Err(why) => tracing::debug!(peer = %report.peer, %why, "DNS peer view not fetched"),
        }
        self.decide(now);
    }

    /// The state of the VIPs this controller balances: targets with `vip` follow it.
    pub fn on_vips(&mut self, vip_up: &dyn Fn(&str) -> Option<bool>) {
        let mut changed = false;
        for target in &self.config.targets {
            if let Some(up) = target.vip.as_deref().and_then(vip_up)
                && self.health.set_local(&target.name, up)
            {
                changed = true;
                let (name, vantage) = (&target.name, &self.vantage);
                if up {
                    info!(target = %name, %vantage, "DNS target up again: its VIP has backends");
                } else {
                    warn!(target = %name, %vantage, "DNS target down from this vantage point: its VIP has no backend left");
                }
            }
        }
        if changed {
            self.decide(Instant::now());
        }
    }

    /// Counts the votes (views age even when nothing arrives) and publishes changes.
    pub fn decide(&mut self, now: Instant) {
        let changes = self.health.decide(now);
        for c in &changes {
            if c.up {
                info!(target = %c.target, down_votes = c.down_votes, voters = c.voters, "DNS target back in the answers");
            } else {
                warn!(target = %c.target, down_votes = c.down_votes, voters = c.voters, "DNS target down by quorum: answers move away from it");
            }
        }
        if !changes.is_empty() {
            self.publish();
        }
    }

    /// Sets (`Some`) or clears the run-time trickle ratio of the policy record `name type`.
    pub fn set_trickle(&mut self, name: &str, rtype: &str, ratio: Option<f64>) -> Result<(), TrickleError> {
        let wanted = format!("{} {}", with_dot(name), rtype.to_ascii_uppercase());
        let Some(record) = self.zones.policies.iter().find(|p| p.label().eq_ignore_ascii_case(&wanted)) else {
            return Err(TrickleError::NoSuchPolicy(wanted));
        };
        let label = record.label();
        match ratio {
            Some(r) if !(0.0..=1.0).contains(&r) => {
                return Err(TrickleError::BadRatio(r));
            }
            Some(r) => {
                warn!(record = %label, ratio = r, "trickle ratio set by the operator");
                self.overrides.insert(label, r);
            }
            None => {
                info!(record = %label, "trickle ratio back to the configured one");
                self.overrides.remove(&label);
            }
        }
        self.publish();
        Ok(())
    }

    /// Rebuilds every selection from the current health and overrides, and swaps it in.
    fn publish(&mut self) {
        let zones = self.zones.clone();
        let health = &self.health;
        let up = |i: usize| health.is_up(&zones.target_names[i]);
        let mut selections = Vec::new();
        let mut counters = Vec::new();
        for record in &zones.policies {
            let label = record.label();
            let ratio = self.overrides.get(&label).copied().unwrap_or(record.policy.trickle_ratio);
            let selection = Selection::build(&record.policy, &zones.targets, &up, ratio);
            let state = selection.state();
            match self.states.insert(label.clone(), state) {
                Some(before) if before != state => {
                    warn!(record = %label, from = before.as_str(), to = state.as_str(), "DNS answers moved")
                }
                None if state != Source::Primary => {
                    warn!(record = %label, state = state.as_str(), "DNS answers start away from the primary")
                }
                _ => {}
            }
            selections.push(selection);
            counters.push(self.counters.entry(label).or_default().clone());
        }
        *self.shared.write().expect("not poisoned") = Arc::new(Answers { zones, selections, counters });
    }

    /// This vantage point's view, for peers.
    pub fn view(&self) -> VantageView {
        VantageView { vantage: self.vantage.clone(), targets: self.health.local_view() }
    }

    pub fn status(&self) -> DnsStatus {
        let now = Instant::now();
        let targets = self
            .config
            .targets
            .iter()
            .map(|t| TargetStatus {
                name: t.name.clone(),
                address: t.address,
                up: self.health.is_up(&t.name),
                views: self.health.views(&t.name, now).unwrap_or_default(),
                transitions: self.health.transitions(&t.name),
            })
            .collect();
        let answers = self.shared.read().expect("not poisoned").clone();
        let policies = answers
            .states()
            .zip(&answers.counters)
            .map(|((record, state), counters)| {
                let label = record.label();
                let trickle_override = self.overrides.get(&label).copied();
                PolicyStatus {
                    trickle_ratio: trickle_override.unwrap_or(record.policy.trickle_ratio),
                    trickle_override,
                    record: label,
                    state: state.as_str().to_owned(),
                    answers: Source::ALL.iter().map(|s| (s.as_str().to_owned(), counters.answers_from(*s))).collect(),
                }
            })
            .collect();
        DnsStatus {
            vantage: self.vantage.clone(),
            quorum: self.config.quorum(),
            targets,
            policies,
            responses: self.stats.responses().collect(),
            truncated: self.stats.truncated.load(std::sync::atomic::Ordering::Relaxed),
            tcp_refused: self.stats.tcp_refused.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The zones of a validated `[dns]` section.
fn compile(dns: &DnsConfig) -> Result<Arc<Zones>> {
    Zones::compile(dns).map(Arc::new).map_err(|e| anyhow::anyhow!("dns zone {}: {}", e.zone, e.message))
}

fn with_dot(name: &str) -> String {
    if name.ends_with('.') { name.to_owned() } else { format!("{name}.") }
}

/// Fetches a peer's view every `interval`, each fetch bounded by `timeout`.
async fn poll_peer(
    peer: crate::config::dns::DnsPeer,
    interval: Duration,
    timeout: Duration,
    views: UnboundedSender<PeerReport>,
) {
    let client = AdminClient::new(&AdminConfig { listen: peer.admin, token: peer.token.clone() }).with_timeout(timeout);
    let client = Arc::new(client);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let fetch = {
            let client = client.clone();
            tokio::task::spawn_blocking(move || client.call("GET", "/v1/dns/view"))
        };
        let view = match tokio::time::timeout(timeout, fetch).await {
            Ok(Ok(Ok(body))) => {
                serde_json::from_str::<VantageView>(&body).map_err(|e| format!("decoding the view: {e}"))
            }
            Ok(Ok(Err(e))) => Err(format!("{e:#}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}", humantime::format_duration(timeout))),
        };
        if views.send(PeerReport { peer: peer.name.clone(), view }).is_err() {
            return;
        }
    }
}
