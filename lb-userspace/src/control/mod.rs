//! The controller loop: load and attach, then keep the maps equal to what the config and
//! the backends' state say. Events (SIGHUP reload, active check results, passive signals
//! from the packet path, ejection sweeps) update one state (`Controller`);
//! `plan::desired_with` turns it into tables; `sync` writes the difference.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lb_common::SIGNAL_NEIGHBOUR_MISSING;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, error, info, warn};

use crate::admin::{AdminError, AdminRequest};
use crate::api::status::{BackendStatus, ReloadOutcome, Status, VipStatus};
use crate::backends::failover::BackendStates;
use crate::backends::locality::{Availability, Plan};
use crate::backends::probe::Prober;
use crate::config::{self, Config};
use crate::dataplane::{Dataplane, HealthSignals, MapSizes, PacketLogger};
use crate::dns::DnsService;
use crate::flows::FlowSummary;
use crate::plan::{self, IdAllocator};
use crate::sync::Applied;

/// How often neighbour entries of backends are refreshed.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(10);
/// How often due ejection sweeps run (each VIP sweeps at its own `interval`).
const SWEEP_TICK: Duration = Duration::from_millis(250);
/// How often the flow tables are swept of connections that are over.
const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Everything the controller knows; `apply` makes the maps match it.
struct Controller {
    config_path: PathBuf,
    config: Config,
    /// 1 for the config loaded at start, +1 for each applied reload.
    generation: u64,
    last_reload: Option<ReloadOutcome>,
    states: BackendStates,
    prober: Prober,
    ids: IdAllocator,
    applied: Applied,
    /// Each VIP's plan as last applied, to log failovers and failbacks.
    plans: BTreeMap<String, Plan>,
    /// The DNS server for site failover, with `[dns]`.
    dns: Option<DnsService>,
    /// The live flows as the last sweep of the flow tables counted them.
    flows: FlowSummary,
}

impl Controller {
    /// Reads, validates and applies the config file again; a refused config leaves the
    /// running one in place. Returns the new generation, or why the file was refused; the
    /// outer error is a failure to write the maps, which ends the controller as at start.
    fn reload(&mut self, dataplane: &mut Dataplane) -> Result<Result<u64, AdminError>> {
        let next = match read_reload(&self.config_path, &self.config) {
            Ok(next) => next,
            Err(e) => {
                error!("reload refused, keeping the running config: {e:#}");
                let why = format!("{e:#}");
                self.last_reload = Some(ReloadOutcome { applied: false, message: why.clone() });
                return Ok(Err(AdminError::ConfigRefused(why)));
            }
        };
        self.states.reconfigure(&next, Instant::now());
        self.prober.set_targets(BackendStates::check_targets(&next));
        crate::backends::neighbors::prime(neighbors_of(&next));
        if let Some(dns) = &mut self.dns {
            dns.reconfigure(&next)?;
        }
        self.config = next;
        self.apply(dataplane)?;
        self.generation += 1;
        info!(generation = self.generation, vips = self.config.vips.len(), "config applied");
        self.last_reload = Some(ReloadOutcome { applied: true, message: format!("generation {}", self.generation) });
        Ok(Ok(self.generation))
    }

    /// Answers the admin interface. A drain changes the tables (written before the answer).
    /// Returns `Some(detach)` for a stop request: the loop ends.
    fn admin(&mut self, request: AdminRequest, dataplane: &mut Dataplane) -> Result<Option<bool>> {
        match request {
            AdminRequest::Status(reply) => {
                let _ = reply.send(self.status(dataplane));
            }
            AdminRequest::Drain { vip, backend, drained, reply } => {
                let result = if self.states.set_drained(&self.config, &vip, backend, drained) {
                    info!(vip, %backend, drained, "drain set by the operator");
                    self.apply(dataplane)
                } else {
                    let _ = reply.send(Err(AdminError::NoSuchBackend { vip, backend }));
                    return Ok(None);
                };
                let _ = reply.send(result.as_ref().map(|_| ()).map_err(|e| AdminError::Maps(format!("{e:#}"))));
                result?;
            }
            AdminRequest::Reload(reply) => {
                let outcome = self.reload(dataplane)?;
                let _ = reply.send(outcome);
            }
            AdminRequest::Stop { detach, reply } => {
                let _ = reply.send(!crate::dataplane::pins_are_private());
                return Ok(Some(detach));
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
        }
        Ok(None)
    }

    /// A snapshot for `lb status` and the metrics: the counters summed over CPUs.
    fn status(&self, dataplane: &Dataplane) -> Status {
        let balancer = &self.config.balancer;
        let vips = self
            .config
            .vips
            .iter()
            .map(|vip| {
                let key = plan::vip_key(vip);
                let vip_id = self.ids.vip_id(&key);
                let counters = vip_id.and_then(|id| dataplane.vip_stats(id).ok()).unwrap_or_default();
                let plan = self.plans.get(&vip.name);
                let backends = vip
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BackendStatus {
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
                        counters: self
                            .ids
                            .backend_id(&(b.address, b.port))
                            .and_then(|id| dataplane.backend_stats(id).ok())
                            .unwrap_or_default(),
                        flows: self
                            .ids
                            .backend_id(&(b.address, b.port))
                            .and_then(|id| self.flows.by_backend.get(&id).copied())
                            .unwrap_or_default(),
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
            global: dataplane.global_stats().unwrap_or_default(),
            dns: self.dns.as_ref().map(DnsService::status),
            health_check_local_failures: crate::backends::probe::local_failures(),
        }
    }

    /// Recomputes the tables from the config and the backends' state, writes the
    /// difference, and logs every VIP whose priority level or panic state changed.
    fn apply(&mut self, dataplane: &mut Dataplane) -> Result<()> {
        let started = Instant::now();
        let states = &self.states;
        let desired = plan::desired_with(&self.config, &|vip, b| states.availability(vip, b), &mut self.ids);
        let report = self.applied.sync(&desired, dataplane).context("writing the maps")?;
        if report != Default::default() {
            info!(
                slots = report.slots_written,
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
        if let Some(dns) = &mut self.dns {
            // A DNS target that is one of our VIPs is up while any of its backends can
            // take new flows.
            let (config, states) = (&self.config, &self.states);
            dns.on_vips(&|name| {
                let vip = config.vips.iter().find(|v| v.name == name)?;
                Some(vip.backends.iter().any(|b| states.availability(vip, b) == Availability::Available))
            });
        }
        Ok(())
    }

    /// Sweeps the flow tables of connections that are over; a failure is logged, and the
    /// packet path goes on (it takes over the ports of connections that are over itself).
    fn sweep_flows(&mut self, dataplane: &mut Dataplane) {
        let started = Instant::now();
        match dataplane.sweep_flows(&self.config.balancer.flow_timeouts.to_map()) {
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

/// Runs the controller until SIGTERM/SIGINT or `lb stop`. The program stays attached and
/// forwarding with its pinned maps when the controller ends (or dies); the next `lb run`
/// adopts it. Only `lb stop --detach` takes it away.
pub async fn run(config_path: PathBuf) -> Result<()> {
    let config = config::load(&config_path)?;
    match raise_open_files_limit() {
        Ok(limit) => info!(limit, "open files limit (RLIMIT_NOFILE)"),
        Err(e) => warn!("cannot raise the open files limit (RLIMIT_NOFILE): {e}"),
    }
    let balancer = &config.balancer;
    let sizes = MapSizes::from_config(balancer);
    let (mut dataplane, adopted) = match Dataplane::adopt(sizes, &balancer.pin_dir, &balancer.interfaces)? {
        Some(running) => (running, true),
        None => (Dataplane::load(sizes, Some(&balancer.pin_dir))?, false),
    };
    let (ids, applied) = if adopted {
        let existing = dataplane.existing()?;
        info!(
            vips = existing.vips.len(),
            backends = existing.backends.len(),
            "adopting the program left attached by an earlier controller"
        );
        (
            IdAllocator::adopt(balancer.max_vips, balancer.max_backends, &existing),
            Applied::adopt(&existing, sizes.table_size),
        )
    } else {
        (IdAllocator::new(balancer.max_vips, balancer.max_backends), Applied::default())
    };
    if crate::dataplane::pins_are_private() {
        warn!("{}", crate::dataplane::PRIVATE_PINS_ADVICE);
    }
    if let Some(logger) = dataplane.take_logger() {
        tokio::spawn(on_readable(logger, "packet-path logs", |logger: &mut PacketLogger| {
            logger.flush();
            true
        }));
    }
    // Passive health signals reach the loop as soon as the packet path writes them.
    let (signal_tx, mut signals) = tokio::sync::mpsc::unbounded_channel();
    if let Some(reader) = dataplane.take_health_signals() {
        tokio::spawn(on_readable(reader, "passive health signals", move |reader: &mut HealthSignals| {
            let batch = reader.drain();
            batch.is_empty() || signal_tx.send(batch).is_ok()
        }));
    }
    let (check_tx, mut checks) = tokio::sync::mpsc::unbounded_channel();
    let prober = Prober::new(check_tx);
    let mut states = BackendStates::default();
    states.reconfigure(&config, Instant::now());
    let (admin_tx, mut admin_requests) = tokio::sync::mpsc::channel(16);
    crate::admin::start(config.admin.listen, config.admin.token.clone(), admin_tx, Default::default()).await?;
    let (target_check_tx, mut target_checks) = tokio::sync::mpsc::unbounded_channel();
    let (peer_view_tx, mut peer_views) = tokio::sync::mpsc::unbounded_channel();
    let dns = DnsService::start(&config, target_check_tx, peer_view_tx)?;
    let mut lb = Controller {
        ids,
        config_path,
        config,
        generation: 1,
        last_reload: None,
        states,
        prober,
        applied,
        plans: BTreeMap::new(),
        dns,
        flows: FlowSummary::default(),
    };
    lb.prober.set_targets(BackendStates::check_targets(&lb.config));
    lb.apply(&mut dataplane)?;
    crate::backends::neighbors::prime(neighbors_of(&lb.config));
    if !adopted {
        for iface in &lb.config.balancer.interfaces {
            dataplane.attach(iface, lb.config.balancer.xdp_mode)?;
        }
    }
    info!(vips = lb.config.vips.len(), pin_dir = %lb.config.balancer.pin_dir.display(), adopted, "ready");

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut neighbor_tick = tokio::time::interval(NEIGHBOR_REFRESH);
    let mut sweep_tick = tokio::time::interval(SWEEP_TICK);
    let mut flow_sweep_tick = tokio::time::interval(FLOW_SWEEP_INTERVAL);
    let detach = loop {
        let changed = tokio::select! {
            _ = hangup.recv() => {
                // Refusals are logged and reported in the status; the loop goes on.
                let _ = lb.reload(&mut dataplane)?;
                false
            }
            Some(request) = admin_requests.recv() => match lb.admin(request, &mut dataplane)? {
                Some(detach) => break detach,
                None => false,
            },
            Some(result) = checks.recv() => lb.states.on_check(&lb.config, &result),
            Some(batch) = signals.recv() => {
                let now = Instant::now();
                let mut changed = false;
                for signal in batch {
                    if signal.kind == SIGNAL_NEIGHBOUR_MISSING {
                        lb.resolve_neighbour(signal.backend_id);
                    } else if let Some((vip, backend)) = lb.signal_target(signal.vip_id, signal.backend_id) {
                        changed |= lb.states.on_signal(&lb.config, now, &vip, backend, signal.kind);
                    }
                }
                changed
            }
            _ = sweep_tick.tick() => lb.states.sweep(Instant::now()),
            _ = flow_sweep_tick.tick() => {
                lb.sweep_flows(&mut dataplane);
                false
            }
            Some(result) = target_checks.recv() => {
                if let Some(dns) = &mut lb.dns {
                    dns.on_check(&result);
                }
                false
            }
            Some(report) = peer_views.recv() => {
                if let Some(dns) = &mut lb.dns {
                    dns.on_peer(report, Instant::now());
                }
                false
            }
            _ = neighbor_tick.tick() => {
                crate::backends::neighbors::prime(neighbors_of(&lb.config));
                false
            }
            _ = terminate.recv() => break false,
            _ = interrupt.recv() => break false,
        };
        if changed {
            lb.apply(&mut dataplane)?;
        }
    };
    let pin_dir = lb.config.balancer.pin_dir.clone();
    drop(dataplane);
    if detach {
        info!(pin_dir = %pin_dir.display(), "stopping: detaching the program and removing its pins");
        Dataplane::detach_pinned(&pin_dir)
    } else if crate::dataplane::pins_are_private() {
        warn!("stopping: the program is detached as this process ends; {}", crate::dataplane::PRIVATE_PINS_ADVICE);
        Ok(())
    } else {
        info!(pin_dir = %pin_dir.display(), "stopping: the program stays attached with its pinned maps; the next `lb run` adopts it");
        Ok(())
    }
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
    Ok(next)
}

fn neighbors_of(config: &Config) -> impl Iterator<Item = IpAddr> + '_ {
    let mut seen = std::collections::BTreeSet::new();
    config.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).filter(move |a| seen.insert(*a))
}

/// Calls `read` on `source` each time its fd becomes readable, until `read` returns false
/// or the fd fails; `what` names the source in logs.
async fn on_readable<T: std::os::fd::AsRawFd>(source: T, what: &'static str, mut read: impl FnMut(&mut T) -> bool) {
    // SAFETY: `source` owns its fd, which stays open as long as it lives, and the AsyncFd
    // owns `source`.
    let mut fd = match unsafe { AsyncFd::register(source) } {
        Ok(fd) => fd,
        Err(e) => return error!("{what} not readable: {e}"),
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                // Cleared before reading: what is written meanwhile wakes the next wait.
                guard.clear_ready();
                if !read(guard.get_inner_mut()) {
                    return;
                }
            }
            Err(e) => return error!("{what} stopped: {e}"),
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit (health checks, the
/// admin interface and DNS each need descriptors; the usual soft 1024 is easily reached);
/// returns the limit now in force.
fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill in and read.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: a valid rlimit to fill in and read.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        let hard = limit.rlim_max;
        // Lowered to what most systems start a service with (other tests of this process
        // hold far fewer files).
        limit.rlim_cur = limit.rlim_cur.min(1024).min(hard.saturating_sub(1));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        assert_eq!(raise_open_files_limit().unwrap(), hard);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!(limit.rlim_cur, hard);
    }
}
