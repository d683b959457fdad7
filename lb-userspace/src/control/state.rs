//! The controller's state and what each event does to it: one owner of the config, the
//! backends' states, the ids and what the maps hold, generic over the packet path so
//! that event sequences are unit tested without BPF.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use lb_common::{HealthSignal, SIGNAL_NEIGHBOUR_MISSING};
use tracing::{debug, error, info, warn};

use super::PacketPath;
use crate::admin::{AdminError, AdminRequest, LeftBehind};
use crate::api::flows::{FlowSnapshot, Names};
use crate::api::status::{BackendStatus, ReloadOutcome, Status, VipStatus};
use crate::backends::failover::BackendStates;
use crate::backends::locality::{Availability, Plan};
use crate::backends::probe::{CheckResult, Prober};
use crate::bgp::BgpService;
use crate::config::{self, Config, VipConfig};
use crate::dataplane::MapSizes;
use crate::dns::{DnsService, PeerReport};
use crate::flows::FlowSummary;
use crate::plan::{self, CheckMarks, IdAllocator, own_settings};
use crate::sync::Applied;

/// What the loop reacts to.
pub(super) enum Event {
    /// SIGHUP: reload the config file.
    Hangup,
    Admin(AdminRequest),
    /// An active check of a VIP's backend.
    Check(CheckResult),
    /// Passive signals from the packet path.
    Signals(Vec<HealthSignal>),
    /// Time for due ejection sweeps.
    EjectionSweep,
    /// Time to sweep the flow tables.
    FlowSweep,
    /// An active check of a DNS target.
    TargetCheck(CheckResult),
    /// A DNS peer's view, or why it could not be had.
    PeerView(PeerReport),
    /// Time to refresh the backends' neighbour entries.
    NeighbourRefresh,
}

/// Whether the loop goes on after an event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Continue,
    /// End the controller; with `detach`, also detach the program and remove the pins.
    Stop {
        detach: bool,
    },
}

/// Everything the controller knows; `apply` makes the maps match it.
pub(super) struct Controller {
    config_path: PathBuf,
    config: Config,
    /// 1 for the config loaded at start, +1 for each applied reload.
    generation: u64,
    last_reload: Option<ReloadOutcome>,
    states: BackendStates,
    prober: Prober,
    /// The socket marks of checks through the encapsulated modes' tunnels.
    check_marks: CheckMarks,
    ids: IdAllocator,
    applied: Applied,
    /// Each VIP's plan as last applied, to log failovers and failbacks.
    plans: BTreeMap<String, Plan>,
    /// The DNS server for site failover, with `[dns]`.
    dns: Option<DnsService>,
    /// The live flows as the last sweep of the flow tables counted them.
    flows: FlowSummary,
    /// The VIPs announced by BGP through BIRD, with `[bgp]`.
    bgp: Option<BgpService>,
}

impl Controller {
    pub(super) fn new(
        config_path: PathBuf,
        config: Config,
        (ids, applied): (IdAllocator, Applied),
        prober: Prober,
        dns: Option<DnsService>,
        bgp: Option<BgpService>,
    ) -> Self {
        let mut states = BackendStates::default();
        states.reconfigure(&config, Instant::now());
        Self {
            config_path,
            config,
            generation: 1,
            last_reload: None,
            states,
            prober,
            check_marks: CheckMarks::default(),
            ids,
            applied,
            plans: BTreeMap::new(),
            dns,
            flows: FlowSummary::default(),
            bgp,
        }
    }

    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    /// Starts the active checks and writes the first tables.
    pub(super) fn start(&mut self, maps: &mut impl PacketPath) -> Result<()> {
        write_check_tunnels(&self.config, &mut self.check_marks, maps)?;
        self.prober.set_targets(BackendStates::check_targets(&self.config, &self.check_marks));
        self.apply(maps)?;
        crate::backends::neighbors::prime(neighbors_of(&self.config));
        Ok(())
    }

    /// One event: the state changes, and when what the tables should hold changed, the
    /// difference is written before the next event.
    pub(super) fn handle(&mut self, event: Event, maps: &mut impl PacketPath) -> Result<Step> {
        let changed = match event {
            // Refusals are logged and reported in the status; the loop goes on.
            Event::Hangup => self.reload(maps).map(|_| false)?,
            Event::Admin(request) => return self.admin(request, maps),
            Event::Check(result) => self.states.on_check(&self.config, &result),
            Event::Signals(batch) => self.on_signals(batch),
            Event::EjectionSweep => self.states.sweep(Instant::now()),
            Event::FlowSweep => {
                self.sweep_flows(maps);
                false
            }
            Event::TargetCheck(result) => {
                if let Some(dns) = &mut self.dns {
                    dns.on_check(&result);
                }
                false
            }
            Event::PeerView(report) => {
                if let Some(dns) = &mut self.dns {
                    dns.on_peer(report, Instant::now());
                }
                false
            }
            Event::NeighbourRefresh => {
                crate::backends::neighbors::prime(neighbors_of(&self.config));
                false
            }
        };
        if changed {
            self.apply(maps)?;
        }
        Ok(Step::Continue)
    }

    /// Passive signals from the packet path; true when a backend's availability changed.
    fn on_signals(&mut self, batch: Vec<HealthSignal>) -> bool {
        let now = Instant::now();
        let mut changed = false;
        for signal in batch {
            if signal.kind == SIGNAL_NEIGHBOUR_MISSING {
                self.resolve_neighbour(signal.backend_id);
            } else if let Some((vip, backend)) = self.signal_target(signal.vip_id, signal.backend_id) {
                changed |= self.states.on_signal(&self.config, now, &vip, backend, signal.kind);
            }
        }
        changed
    }

    /// Reads, validates and applies the config file again; a refused config leaves the
    /// running one in place. Returns the new generation, or why the file was refused; the
    /// outer error is a failure to write the maps, which ends the controller as at start.
    fn reload(&mut self, maps: &mut impl PacketPath) -> Result<Result<u64, AdminError>> {
        let refused = |e: anyhow::Error, last: &mut Option<ReloadOutcome>| {
            error!("reload refused, keeping the running config: {e:#}");
            let why = format!("{e:#}");
            *last = Some(ReloadOutcome { applied: false, message: why.clone() });
            Ok(Err(AdminError::ConfigRefused(why)))
        };
        let next = match read_reload(&self.config_path, &self.config) {
            Ok(next) => next,
            Err(e) => return refused(e, &mut self.last_reload),
        };
        if let Err(e) = write_check_tunnels(&next, &mut self.check_marks, maps) {
            return refused(e, &mut self.last_reload);
        }
        self.states.reconfigure(&next, Instant::now());
        self.prober.set_targets(BackendStates::check_targets(&next, &self.check_marks));
        crate::backends::neighbors::prime(neighbors_of(&next));
        if let Some(dns) = &mut self.dns {
            dns.reconfigure(&next)?;
        }
        if let Some(bgp) = &mut self.bgp {
            bgp.reconfigure(&next);
        }
        self.config = next;
        self.apply(maps)?;
        self.generation += 1;
        info!(generation = self.generation, vips = self.config.vips.len(), "config applied");
        self.last_reload = Some(ReloadOutcome { applied: true, message: format!("generation {}", self.generation) });
        Ok(Ok(self.generation))
    }

    /// Answers the admin interface. A drain changes the tables (written before the answer).
    fn admin(&mut self, request: AdminRequest, maps: &mut impl PacketPath) -> Result<Step> {
        match request {
            AdminRequest::Status(reply) => {
                let _ = reply.send(self.status(maps));
            }
            AdminRequest::Drain { vip, backend, drained, reply } => {
                let result = if self.states.set_drained(&self.config, &vip, backend, drained) {
                    info!(vip, %backend, drained, "drain set by the operator");
                    self.apply(maps)
                } else {
                    let _ = reply.send(Err(AdminError::NoSuchBackend { vip, backend }));
                    return Ok(Step::Continue);
                };
                let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| AdminError::Maps(format!("{e:#}"))));
                result?;
            }
            AdminRequest::Reload(reply) => {
                let outcome = self.reload(maps)?;
                let _ = reply.send(outcome);
            }
            AdminRequest::Stop { detach, reply } => {
                let left = if !self.config.has_packet_path() {
                    LeftBehind::NoPacketPath
                } else if crate::dataplane::pins_are_private() {
                    LeftBehind::PrivatePins
                } else {
                    LeftBehind::PinnedProgram
                };
                let _ = reply.send(left);
                return Ok(Step::Stop { detach });
            }
            AdminRequest::DnsView(reply) => {
                let _ = reply.send(self.dns.as_ref().map(DnsService::view));
            }
            AdminRequest::Trickle { name, rtype, ratio, reply } => {
                let result = match &mut self.dns {
                    Some(dns) => dns.set_trickle(&name, &rtype, ratio).map_err(AdminError::from),
                    None => Err(AdminError::NoDns),
                };
                let _ = reply.send(result);
            }
            AdminRequest::Flows { vip, reply } => {
                let _ = reply.send(self.read_flows(vip.as_deref(), maps));
            }
            AdminRequest::Host { drained, reply } => {
                let open_flows = self.flows.open_by_vip_backend.values().sum();
                let report = self.bgp.as_mut().map(|bgp| bgp.set_drained(drained, open_flows));
                let _ = reply.send(report.ok_or(AdminError::NoBgp));
            }
        }
        Ok(Step::Continue)
    }

    /// The flow tables for `lb flows`, with what their ids stand for.
    fn read_flows(&self, vip: Option<&str>, maps: &impl PacketPath) -> Result<(FlowSnapshot, Names), AdminError> {
        if let Some(name) = vip.filter(|name| !self.config.vips.iter().any(|v| v.name == *name)) {
            return Err(AdminError::NoSuchVip(name.to_owned()));
        }
        let tables = maps.read_flows().map_err(|e| AdminError::FlowTables(format!("{e:#}")))?;
        let vips = self.config.vips.iter();
        let names = Names {
            vips: vips.clone().filter_map(|v| Some((self.ids.vip_id(&plan::vip_key(v))?, v.name.clone()))).collect(),
            modes: vips.clone().filter_map(|v| Some((self.ids.vip_id(&plan::vip_key(v))?, v.mode.as_str()))).collect(),
            backends: vips
                .flat_map(|v| v.backends.iter())
                .filter_map(|b| Some((self.ids.backend_id(&(b.address, b.port))?, b.socket_addr())))
                .collect(),
        };
        Ok((tables, names))
    }

    /// A snapshot for `lb status` and the metrics: the counters summed over CPUs.
    pub(super) fn status(&self, maps: &impl PacketPath) -> Status {
        let balancer = &self.config.balancer;
        let vips = self
            .config
            .vips
            .iter()
            .map(|vip| {
                let key = plan::vip_key(vip);
                let vip_id = self.ids.vip_id(&key);
                let counters = vip_id.and_then(|id| maps.vip_stats(id).ok()).unwrap_or_default();
                let plan = self.plans.get(&vip.name);
                let backends = vip
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i, b, self.ids.backend_id(&(b.address, b.port))))
                    .map(|(i, b, backend_id)| BackendStatus {
                        address: b.socket_addr(),
                        region: b.region.clone(),
                        zone: b.zone.clone(),
                        level: crate::backends::locality::level_of(
                            &balancer.region,
                            &balancer.zone,
                            &vip.failover_regions,
                            b,
                        ),
                        weight: b.weight,
                        serving_weight: plan.and_then(|p| p.weights.get(i).copied()).unwrap_or(0),
                        state: crate::api::status::state_name(self.states.availability(vip, b)).to_owned(),
                        counters: backend_id.and_then(|id| maps.backend_stats(id).ok()).unwrap_or_default(),
                        flows: backend_id.and_then(|id| self.flows.by_backend.get(&id).copied()).unwrap_or_default(),
                        open_flows: vip_id
                            .zip(backend_id)
                            .and_then(|ids| self.flows.open_by_vip_backend.get(&ids).copied())
                            .unwrap_or(0),
                    })
                    .collect();
                VipStatus {
                    name: vip.name.clone(),
                    address: vip.address,
                    port: vip.port,
                    protocol: vip.protocol.to_string(),
                    mode: vip.mode.as_str().to_owned(),
                    level: plan.and_then(|p| p.level),
                    panic: plan.is_some_and(|p| p.panic),
                    levels: plan.map(|p| p.levels.clone()).unwrap_or_default(),
                    counters,
                    flows: vip_id.and_then(|id| self.flows.by_vip.get(&id).copied()).unwrap_or_default(),
                    outlier: self.states.outlier_stats(&vip.name),
                    backends,
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            generation: self.generation,
            last_reload: self.last_reload.clone(),
            vips,
            global: maps.global_stats().unwrap_or_default(),
            dns: self.dns.as_ref().map(DnsService::status),
            bgp: self.bgp.as_ref().map(|bgp| bgp.status(self.flows.open_by_vip_backend.values().sum())),
            health_check_local_failures: crate::backends::probe::local_failures(),
            nat_ports_per_backend: self.config.balancer.nat_ports_per_backend(),
        }
    }

    /// Recomputes the tables from the config and the backends' state, writes the
    /// difference, and logs every VIP whose priority level or panic state changed.
    fn apply(&mut self, maps: &mut impl PacketPath) -> Result<()> {
        let started = Instant::now();
        let states = &self.states;
        let desired = plan::desired_with(&self.config, &|vip, b| states.availability(vip, b), &mut self.ids);
        let report = self.applied.sync(&desired, maps).context("writing the maps")?;
        if report != Default::default() {
            info!(
                slots = report.slots_written,
                slots_caught_up = report.slots_caught_up,
                tables_built = report.tables_built,
                vips_switched = report.vips_switched,
                vips_removed = report.vips_removed,
                backends = report.backends_written,
                took_ms = started.elapsed().as_secs_f64() * 1000.0,
                "tables synced"
            );
        }
        let mut plans = BTreeMap::new();
        for vip in desired.vips.into_values() {
            let before = self.plans.remove(&vip.name);
            log_plan_change(&vip.name, before.as_ref(), &vip.plan);
            plans.insert(vip.name, vip.plan);
        }
        self.plans = plans;
        let (config, states) = (&self.config, &self.states);
        if let Some(dns) = &mut self.dns {
            // A DNS target that is one of our VIPs is up while the VIP can take new flows.
            dns.on_vips(&|name| Some(takes_new_flows(states, config.vips.iter().find(|v| v.name == name)?)));
        }
        if let Some(bgp) = &mut self.bgp {
            // Announced by the same rule.
            bgp.on_vips(config.vips.iter().map(|v| (v.address, takes_new_flows(states, v))).collect());
        }
        Ok(())
    }

    /// The BGP service, for the withdrawal of `lb stop --detach`.
    pub(super) fn bgp_mut(&mut self) -> Option<&mut BgpService> {
        self.bgp.as_mut()
    }

    /// Sweeps the flow tables of connections that are over; a failure is logged, and the
    /// packet path goes on (it takes over the ports of connections that are over itself).
    fn sweep_flows(&mut self, maps: &mut impl PacketPath) {
        let started = Instant::now();
        match maps.sweep_flows(&self.config.balancer.flow_timeouts.to_map()) {
            Ok(report) => {
                if report.flows_removed + report.nat_removed > 0 {
                    debug!(
                        flows = report.flows_removed,
                        nat = report.nat_removed,
                        took_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "flow entries of finished connections removed"
                    );
                }
                self.flows = report.summary;
            }
            Err(e) => warn!("sweeping the flow tables failed: {e:#}"),
        }
    }

    /// Resolves the neighbour entry of a backend whose packets found none in the kernel.
    fn resolve_neighbour(&self, backend_id: u32) {
        if let Some((address, _)) = self.ids.backend_of(backend_id) {
            debug!(%address, "no neighbour entry for a backend: resolving it now");
            crate::backends::neighbors::prime([address]);
        }
    }

    /// The VIP name and backend address of a signal's ids, if they are still configured.
    fn signal_target(&self, vip_id: u32, backend_id: u32) -> Option<(String, SocketAddr)> {
        let key = self.ids.vip_of(vip_id)?;
        let vip = self.config.vips.iter().find(|v| plan::vip_key(v) == key)?;
        let (address, port) = self.ids.backend_of(backend_id)?;
        Some((vip.name.clone(), SocketAddr::new(address, port)))
    }
}

/// Whether `vip` can take new flows: any of its backends can. A DNS site target that is
/// this VIP is up, and BGP announces its address, while it can.
fn takes_new_flows(states: &BackendStates, vip: &VipConfig) -> bool {
    vip.backends.iter().any(|b| states.availability(vip, b) == Availability::Available)
}

fn log_plan_change(vip: &str, before: Option<&Plan>, after: &Plan) {
    if before.map(|p| (p.level, p.panic)) == Some((after.level, after.panic)) {
        return;
    }
    match (after.level, after.panic) {
        (None, _) => error!(vip, "no backend can take new flows: the VIP drops them"),
        (Some(level), true) => warn!(vip, level, "panic: too few backends available, balancing over all of them"),
        (Some(level), false) if before.is_some() => warn!(vip, level, "serving from priority level {level}"),
        (Some(level), false) => info!(vip, level, "serving from priority level {level}"),
    }
}

/// The marks of the checks `config` asks through tunnels, written for the packet path
/// (before any check uses them); on failure `marks` is left as it was.
fn write_check_tunnels(config: &Config, marks: &mut CheckMarks, maps: &mut impl PacketPath) -> Result<()> {
    let mut next = marks.clone();
    next.assign(config);
    maps.set_check_tunnels(&own_settings(&config.balancer), &next.tunnels())
        .context("setting up health checks through the tunnels (lb-check)")?;
    *marks = next;
    Ok(())
}

/// Reads and validates the new config; settings that size or place the maps, and the
/// admin interface's address, can only change with a restart.
fn read_reload(path: &std::path::Path, current: &Config) -> Result<Config> {
    let next = config::load(path)?;
    let (old, new) = (&current.balancer, &next.balancer);
    if MapSizes::from_config(old) != MapSizes::from_config(new)
        || old.pin_dir != new.pin_dir
        || old.interfaces != new.interfaces
        || old.xdp_mode != new.xdp_mode
        || current.admin != next.admin
    {
        anyhow::bail!("balancer interfaces, xdp_mode, pin_dir, map sizes and the admin section need a restart");
    }
    let sockets = |c: &Config| c.dns.as_ref().map(|d| (d.listen.clone(), d.udp_sockets));
    if sockets(current) != sockets(&next) {
        anyhow::bail!("adding or removing [dns], or changing dns.listen or dns.udp_sockets, needs a restart");
    }
    let bird = |c: &Config| c.bgp.as_ref().map(|b| (b.bird_socket.clone(), b.include_file.clone()));
    if bird(current) != bird(&next) {
        anyhow::bail!("adding or removing [bgp], or changing bgp.bird_socket or bgp.include_file, needs a restart");
    }
    Ok(next)
}

fn neighbors_of(config: &Config) -> impl Iterator<Item = IpAddr> + '_ {
    let mut seen = std::collections::BTreeSet::new();
    config.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).filter(move |a| seen.insert(*a))
}
