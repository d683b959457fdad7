//! The controller loop: load and attach, then keep the maps equal to what the config and
//! the backends' state say. Events (SIGHUP reload, active check results, passive signals
//! from the packet path, ejection sweeps) update one state (`Controller`);
//! `plan::desired_with` turns it into tables; `sync` writes the difference.

mod packet_path;
mod state;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use lb_common::HealthSignal;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{error, info, warn};

use crate::admin::{AdminRequest, OpenConnections};
use crate::backends::probe::{CheckResult, Prober};
use crate::bgp::BgpService;
use crate::config::{self, Config};
use crate::dataplane::{Dataplane, HealthSignals, MapSizes, PacketLogger};
use crate::dns::{DnsService, PeerReport};
use crate::plan::IdAllocator;
use crate::sync::Applied;
use packet_path::NoPacketPath;
pub use packet_path::PacketPath;
use state::{Controller, Event, Step};

/// How long a stopping controller waits for the admin interface's connections to close
/// (the answer to `lb stop` among them; an idle kept-alive one waits it out).
const STOP_ANSWER_GRACE: Duration = Duration::from_secs(2);
/// How often neighbour entries of backends are refreshed.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(10);
/// How often due ejection sweeps run (each VIP sweeps at its own `interval`).
const SWEEP_TICK: Duration = Duration::from_millis(250);
/// How often the flow tables are swept of connections that are over.
const FLOW_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the controller until SIGTERM/SIGINT or `lb stop`. The program stays attached and
/// forwarding with its pinned maps when the controller ends (or dies); the next `lb run`
/// adopts it. Only `lb stop --detach` takes it away. Every event becomes the state's
/// changes and the maps' writes (`Controller::handle`). A config without interfaces runs a
/// DNS vantage point: the same loop, with no program.
pub async fn run(config_path: PathBuf) -> Result<()> {
    let config = config::load(&config_path)?;
    match raise_open_files_limit() {
        Ok(limit) => info!(limit, "open files limit (RLIMIT_NOFILE)"),
        Err(e) => warn!("cannot raise the open files limit (RLIMIT_NOFILE): {e}"),
    }
    if !config.has_packet_path() {
        return run_vantage_point(config_path, config).await;
    }
    let (mut dataplane, adopted, tables) = open_dataplane(&config)?;
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
    let (signal_tx, signals) = tokio::sync::mpsc::unbounded_channel();
    if let Some(reader) = dataplane.take_health_signals() {
        tokio::spawn(on_readable(reader, "passive health signals", move |reader: &mut HealthSignals| {
            let batch = reader.drain();
            batch.is_empty() || signal_tx.send(batch).is_ok()
        }));
    }
    let mut events = Events::start(config_path, config, tables, signals, &mut dataplane).await?;
    let balancer = &events.lb.config().balancer;
    if !adopted {
        for iface in &balancer.interfaces {
            dataplane.attach(iface, balancer.xdp_mode)?;
        }
    }
    info!(vips = events.lb.config().vips.len(), pin_dir = %balancer.pin_dir.display(), adopted, "ready");
    let detach = events.serve(&mut dataplane).await?;
    let pin_dir = events.lb.config().balancer.pin_dir.clone();
    drop(dataplane);
    stopped(&pin_dir, detach)
}

/// A DNS vantage point: checks, peer views and answers, no program, no pins.
async fn run_vantage_point(config_path: PathBuf, config: Config) -> Result<()> {
    let balancer = &config.balancer;
    let tables = (IdAllocator::new(balancer.max_vips, balancer.max_backends), Applied::default());
    // No packet path, so no passive signals: the channel's sender is gone from the start.
    let (_, signals) = tokio::sync::mpsc::unbounded_channel();
    let mut events = Events::start(config_path, config, tables, signals, &mut NoPacketPath).await?;
    info!("ready: a DNS vantage point (no balancer.interfaces), without a packet path");
    events.serve(&mut NoPacketPath).await?;
    info!("stopping: a DNS vantage point leaves no program behind");
    Ok(())
}

/// The controller and every source of its events.
struct Events {
    lb: Controller,
    admin_connections: OpenConnections,
    admin_requests: tokio::sync::mpsc::Receiver<AdminRequest>,
    checks: UnboundedReceiver<CheckResult>,
    signals: UnboundedReceiver<Vec<HealthSignal>>,
    target_checks: UnboundedReceiver<CheckResult>,
    peer_views: UnboundedReceiver<PeerReport>,
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Events {
    /// Starts the admin interface, the DNS service and the checks, writes the first
    /// tables, and installs the signal handlers.
    async fn start(
        config_path: PathBuf,
        config: Config,
        tables: (IdAllocator, Applied),
        signals: UnboundedReceiver<Vec<HealthSignal>>,
        maps: &mut impl PacketPath,
    ) -> Result<Self> {
        let (check_tx, checks) = tokio::sync::mpsc::unbounded_channel();
        let (admin_tx, admin_requests) = tokio::sync::mpsc::channel(16);
        let (_, admin_connections) =
            crate::admin::start(config.admin.listen, config.admin.token.clone(), admin_tx, Default::default()).await?;
        let (target_check_tx, target_checks) = tokio::sync::mpsc::unbounded_channel();
        let (peer_view_tx, peer_views) = tokio::sync::mpsc::unbounded_channel();
        let dns = DnsService::start(&config, target_check_tx, peer_view_tx)?;
        let bgp = BgpService::start(&config);
        let mut lb = Controller::new(config_path, config, tables, Prober::new(check_tx), dns, bgp);
        lb.start(maps)?;
        // Handlers before `ready`: a SIGHUP sent once ready (`systemctl reload` right after
        // start) reloads, where the default action would end the controller.
        Ok(Self {
            lb,
            admin_connections,
            admin_requests,
            checks,
            signals,
            target_checks,
            peer_views,
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Handles events until SIGTERM, SIGINT or `lb stop`; whether to detach the program.
    async fn serve(&mut self, maps: &mut impl PacketPath) -> Result<bool> {
        let mut neighbor_tick = tokio::time::interval(NEIGHBOR_REFRESH);
        let mut sweep_tick = tokio::time::interval(SWEEP_TICK);
        let mut flow_sweep_tick = tokio::time::interval(FLOW_SWEEP_INTERVAL);
        loop {
            let event = tokio::select! {
                _ = self.hangup.recv() => Event::Hangup,
                Some(request) = self.admin_requests.recv() => Event::Admin(request),
                Some(result) = self.checks.recv() => Event::Check(result),
                Some(batch) = self.signals.recv() => Event::Signals(batch),
                _ = sweep_tick.tick() => Event::EjectionSweep,
                _ = flow_sweep_tick.tick() => Event::FlowSweep,
                Some(result) = self.target_checks.recv() => Event::TargetCheck(result),
                Some(report) = self.peer_views.recv() => Event::PeerView(report),
                _ = neighbor_tick.tick() => Event::NeighbourRefresh,
                _ = self.terminate.recv() => return Ok(false),
                _ = self.interrupt.recv() => return Ok(false),
            };
            if let Step::Stop { detach } = self.lb.handle(event, maps)? {
                // A deliberate stop withdraws the routes first, so the routers move the
                // traffic away before the program goes; a failure is said and the stop
                // goes on (bounded).
                if detach
                    && let Some(bgp) = self.lb.bgp_mut()
                    && let Err(e) = bgp.withdraw().await
                {
                    warn!("stopping: {e:#}; detaching anyway");
                }
                // The answer to `lb stop` is still on its way: ending the process now
                // would cut it off.
                self.admin_connections.closed(STOP_ANSWER_GRACE).await;
                return Ok(detach);
            }
        }
    }
}

/// The program this controller drives: the one an earlier controller left attached
/// (adopted, with the ids and tables its maps hold), or a new one, not yet attached.
fn open_dataplane(config: &Config) -> Result<(Dataplane, bool, (IdAllocator, Applied))> {
    let balancer = &config.balancer;
    let sizes = MapSizes::from_config(balancer);
    let Some(dataplane) = Dataplane::adopt(sizes, &balancer.pin_dir, &balancer.interfaces)? else {
        let dataplane = Dataplane::load(sizes, Some(&balancer.pin_dir))?;
        return Ok((
            dataplane,
            false,
            (IdAllocator::new(balancer.max_vips, balancer.max_backends), Applied::default()),
        ));
    };
    let existing = dataplane.existing()?;
    info!(
        vips = existing.vips.len(),
        backends = existing.backends.len(),
        "adopting the program left attached by an earlier controller"
    );
    let ids = IdAllocator::adopt(balancer.max_vips, balancer.max_backends, &existing);
    Ok((dataplane, true, (ids, Applied::adopt(&existing, sizes.table_size))))
}

/// Says what happens to the program as the controller ends, and detaches it if asked to.
fn stopped(pin_dir: &Path, detach: bool) -> Result<()> {
    if detach {
        info!(pin_dir = %pin_dir.display(), "stopping: detaching the program and removing its pins");
        Dataplane::detach_pinned(pin_dir)
    } else if crate::dataplane::pins_are_private() {
        warn!("stopping: the program is detached as this process ends; {}", crate::dataplane::PRIVATE_PINS_ADVICE);
        Ok(())
    } else {
        info!(pin_dir = %pin_dir.display(), "stopping: the program stays attached with its pinned maps; the next `lb run` adopts it");
        Ok(())
    }
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
mod limits {
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
