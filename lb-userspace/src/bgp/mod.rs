//! VIPs announced by BGP through BIRD 2, so that a fleet of balancer hosts shares them by
//! ECMP. The controller loop owns a [`BgpService`]: the VIPs' state (the same "can take
//! new flows" as a DNS site target), drains and stops update it; [`policy::announcements`]
//! says what to announce; [`bird_conf::render`] makes BIRD's include file of it; the
//! [`driver`] task writes the file and has BIRD read it, retrying while BIRD is away.
//!
//! A controller that ends leaves the file and BIRD's routes as they are: the next one
//! adopts them (and a drain, recorded in the file). Only a stop with detach withdraws.

pub mod bird_conf;
pub mod bird_socket;
mod driver;
pub mod policy;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::bgp::{BgpStatus, HostReport};
use crate::config::Config;
use crate::config::bgp::BgpConfig;
use driver::{Desired, Paths, SharedState, lock};
use policy::{Announcements, HostState};

pub struct BgpService {
    config: BgpConfig,
    router_id: Ipv4Addr,
    drained: bool,
    stopping: bool,
    /// Each VIP's address and whether it can take new flows, as last given.
    vips: Vec<(IpAddr, bool)>,
    announced: Announcements,
    desired: watch::Sender<Desired>,
    state: SharedState,
    driver: JoinHandle<()>,
}

impl Drop for BgpService {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl BgpService {
    /// `None` without `[bgp]`. A drain recorded in the include file by an earlier
    /// controller is adopted; nothing is written until the VIPs' state is known.
    pub fn start(config: &Config) -> Option<Self> {
        let bgp = config.bgp.clone()?;
        let router_id = bgp.router_id(config.balancer.ipv4).expect("validated: a router id");
        let adopted = std::fs::read_to_string(&bgp.include_file).ok().and_then(|t| bird_conf::adopted_state(&t));
        let drained = adopted == Some(HostState::Drained);
        match adopted {
            Some(state) => {
                info!(file = %bgp.include_file.display(), host = state.as_str(), "adopting the BGP announcements of an earlier controller")
            }
            None => info!(file = %bgp.include_file.display(), "BGP: no include file of an earlier controller"),
        }
        let (desired, receiver) = watch::channel(Desired::default());
        let state = SharedState::default();
        let paths = Paths { socket: bgp.bird_socket.clone(), include_file: bgp.include_file.clone() };
        let driver = tokio::spawn(driver::run(paths, receiver, state.clone()));
        Some(Self {
            config: bgp,
            router_id,
            drained,
            stopping: false,
            vips: Vec::new(),
            announced: Announcements::default(),
            desired,
            state,
            driver,
        })
    }

    /// A reloaded config (adding or removing `[bgp]` needs a restart). The paths are
    /// the driver's: changing them needs a restart too (checked by the reload).
    pub fn reconfigure(&mut self, config: &Config) {
        let bgp = config.bgp.clone().expect("the BGP section stays while the service runs");
        self.router_id = bgp.router_id(config.balancer.ipv4).expect("validated: a router id");
        self.config = bgp;
        self.publish();
    }

    /// The VIPs' state: address, and whether the VIP can take new flows.
    pub fn on_vips(&mut self, vips: Vec<(IpAddr, bool)>) {
        self.vips = vips;
        self.publish();
    }

    pub fn host_state(&self) -> HostState {
        match (self.stopping, self.drained) {
            (true, _) => HostState::Stopping,
            (false, true) => HostState::Drained,
            (false, false) => HostState::Serving,
        }
    }

    /// `lb host drain` / `undrain`.
    pub fn set_drained(&mut self, drained: bool, open_flows: u64) -> HostReport {
        if self.drained != drained {
            info!(drained, action = self.config.drain.action.as_str(), open_flows, "host drain set by the operator");
        }
        self.drained = drained;
        self.publish();
        HostReport {
            host: self.host_state(),
            drain_action: self.config.drain.action.as_str().to_owned(),
            announced: self.prefixes(),
            open_flows,
        }
    }

    /// Recomputes the announcements; BIRD is told only when the file's text changes.
    fn publish(&mut self) {
        self.announced = policy::announcements(&self.config, self.vips.iter().copied(), self.host_state());
        let text = bird_conf::render(&self.config, self.router_id, self.drained, &self.announced);
        self.desired.send_if_modified(|d| {
            if d.text == text {
                return false;
            }
            *d = Desired { generation: d.generation + 1, text };
            true
        });
    }

    fn prefixes(&self) -> Vec<String> {
        self.announced.prefixes.iter().map(ToString::to_string).collect()
    }

    /// `lb stop --detach`: withdraws everything, waits (up to `stop_timeout`) until BIRD
    /// has taken the withdrawal and its table holds none of lb's routes, then gives the
    /// routers `stop_settle` to move the traffic.
    pub async fn withdraw(&mut self) -> Result<()> {
        self.stopping = true;
        self.publish();
        let generation = self.desired.borrow().generation;
        let deadline = Instant::now() + self.config.stop_timeout;
        while lock(&self.state).applied < generation || !self.routes_gone().await {
            if Instant::now() >= deadline {
                let why = lock(&self.state).last_error.clone().unwrap_or_else(|| "BIRD still holds them".into());
                bail!("the VIPs' routes were not withdrawn within {:?}: {why}", self.config.stop_timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        info!(
            settle_ms = self.config.stop_settle.as_millis() as u64,
            "BGP routes withdrawn; letting the routers move the traffic"
        );
        tokio::time::sleep(self.config.stop_settle).await;
        Ok(())
    }

    /// Whether BIRD's table holds none of lb's static routes.
    async fn routes_gone(&self) -> bool {
        let query =
            format!("show route where proto = \"{}\" || proto = \"{}\"", bird_conf::STATIC_V4, bird_conf::STATIC_V6);
        match bird_socket::command(&self.config.bird_socket, &query, Duration::from_secs(2)).await {
            Ok(lines) => !lines.iter().any(|l| l.contains("blackhole")),
            Err(e) => {
                warn!("asking BIRD for lb's routes: {e}");
                false
            }
        }
    }

    /// The status, with `open_flows` connections open on this host.
    pub fn status(&self, open_flows: u64) -> BgpStatus {
        let s = lock(&self.state).clone();
        BgpStatus {
            host: self.host_state(),
            drain_action: self.config.drain.action.as_str().to_owned(),
            announced: self.prefixes(),
            in_sync: s.applied == self.desired.borrow().generation,
            bird_socket: self.config.bird_socket.display().to_string(),
            include_file: self.config.include_file.display().to_string(),
            bird_up: s.bird_up,
            last_error: s.last_error,
            retry_in_ms: s.retry_at.map(|at| at.saturating_duration_since(Instant::now()).as_millis() as u64),
            configure_failures: s.configure_failures,
            configured: s.configured,
            sessions: s.sessions,
            open_flows,
        }
    }
}
