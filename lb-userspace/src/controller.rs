//! The controller loop: load and attach, then keep the maps equal to what the config says.
//! Events (start, SIGHUP reload, a periodic tick) update one state; `tables::desired` turns
//! it into tables; `sync` writes the difference.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::dataplane::{Dataplane, MapSizes, PacketLogger};
use crate::sync::Applied;
use crate::tables::{self, IdAllocator};

/// How often neighbour entries of backends are refreshed.
const NEIGHBOR_REFRESH: Duration = Duration::from_secs(10);

pub async fn run(config_path: PathBuf) -> Result<()> {
    let config = config::load(&config_path)?;
    let balancer = &config.balancer;
    let mut dataplane = Dataplane::load(MapSizes::from_config(balancer), Some(&balancer.pin_dir))?;
    if let Some(logger) = dataplane.take_logger() {
        tokio::spawn(forward_packet_logs(logger));
    }
    let mut ids = IdAllocator::new(balancer.max_vips, balancer.max_backends);
    let mut applied = Applied::default();
    let mut current = config;
    apply(&current, &mut ids, &mut applied, &mut dataplane)?;
    crate::neighbors::prime(neighbors_of(&current));
    for iface in &current.balancer.interfaces {
        dataplane.attach(iface, current.balancer.xdp_mode)?;
    }
    info!(vips = current.vips.len(), pin_dir = %current.balancer.pin_dir.display(), "ready");

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(NEIGHBOR_REFRESH);
    let mut generation = 1u64;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                match reload(&config_path, &current) {
                    Ok(next) => {
                        apply(&next, &mut ids, &mut applied, &mut dataplane)?;
                        crate::neighbors::prime(neighbors_of(&next));
                        current = next;
                        generation += 1;
                        info!(generation, vips = current.vips.len(), "config applied");
                    }
                    Err(e) => error!("reload refused, keeping the running config: {e:#}"),
                }
            }
            _ = tick.tick() => crate::neighbors::prime(neighbors_of(&current)),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("stopping: detaching and removing pins");
    dataplane.shutdown()
}

/// Reads and validates the new config; settings that size or place the maps can only
/// change with a restart.
fn reload(path: &std::path::Path, current: &Config) -> Result<Config> {
    let next = config::load(path)?;
    let (old, new) = (&current.balancer, &next.balancer);
    if MapSizes::from_config(old) != MapSizes::from_config(new)
        || old.pin_dir != new.pin_dir
        || old.interfaces != new.interfaces
        || old.xdp_mode != new.xdp_mode
    {
        anyhow::bail!("balancer interfaces, xdp_mode, pin_dir and map sizes need a restart");
    }
    Ok(next)
}

fn apply(config: &Config, ids: &mut IdAllocator, applied: &mut Applied, dataplane: &mut Dataplane) -> Result<()> {
    let desired = tables::desired(config, ids);
    let report = applied.sync(&desired, dataplane).context("writing the maps")?;
    info!(
        slots = report.slots_written,
        vips_switched = report.vips_switched,
        vips_removed = report.vips_removed,
        backends = report.backends_written,
        "tables synced"
    );
    Ok(())
}

fn neighbors_of(config: &Config) -> impl Iterator<Item = IpAddr> + '_ {
    let mut seen = std::collections::BTreeSet::new();
    config.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.address)).filter(move |a| seen.insert(*a))
}

async fn forward_packet_logs(logger: PacketLogger) {
    // SAFETY: the logger owns its ring buffer fd, which stays open as long as it lives,
    // and the AsyncFd owns the logger.
    let mut fd = match unsafe { AsyncFd::register(logger) } {
        Ok(fd) => fd,
        Err(e) => return warn!("packet-path logs not readable: {e}"),
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => return warn!("packet-path logs stopped: {e}"),
        }
    }
}
