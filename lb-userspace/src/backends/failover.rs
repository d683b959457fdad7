//! The state of every (VIP, backend) pair that decides whether it takes new flows: active
//! checks with thresholds, passive outlier ejection per VIP, and draining. Events come in
//! (check results, packet-path signals, sweeps, reloads); `availability` comes out, which
//! `plan::desired_with` turns into Maglev tables. Pure: the caller passes the time in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use lb_common::{SIGNAL_CONNECT_FAILED, SIGNAL_CONNECTED, SIGNAL_HTTP_5XX, SIGNAL_HTTP_OK};
use tracing::{info, warn};

use crate::backends::health::CheckStatus;
use crate::backends::locality::Availability;
use crate::backends::outlier::{Decision, Outcome, OutlierDetector, OutlierStats};
use crate::backends::probe::{CheckResult, Target, TargetKey};
use crate::config::{BackendConfig, Config, VipConfig};
use crate::plan::CheckMarks;

/// What every backend of every VIP is known to be doing.
#[derive(Default)]
pub struct BackendStates {
    checks: BTreeMap<TargetKey, CheckStatus>,
    outliers: BTreeMap<String, VipOutliers>,
    /// Drained at run time (by the operator), on top of the config's `draining`.
    drained: BTreeSet<TargetKey>,
}

struct VipOutliers {
    detector: OutlierDetector<SocketAddr>,
    interval: std::time::Duration,
    next_sweep: Instant,
    /// Ejections are being refused (`max_ejection_percent`): logged once, when it starts,
    /// not once per signal of a failing backend.
    refusing: bool,
}

impl VipOutliers {
    /// Logs a decision of this VIP's detector made at `now`.
    fn log(&mut self, vip: &str, decision: &Decision<SocketAddr>, now: Instant) {
        match decision {
            Decision::Ejected { backend, until, ejections, reason } => {
                self.refusing = false;
                let for_secs = until.saturating_duration_since(now).as_secs();
                warn!(vip, %backend, ?reason, ejections, for_secs, "backend ejected")
            }
            Decision::Refused { backend, reason } if !self.refusing => {
                self.refusing = true;
                warn!(
                    vip,
                    %backend,
                    ?reason,
                    "ejection refused: max_ejection_percent already reached (further refusals are counted, \
                     not logged, until a backend returns)"
                )
            }
            Decision::Refused { .. } => {}
            Decision::Returned { backend } => {
                if std::mem::take(&mut self.refusing) {
                    info!(vip, "ejections allowed again");
                }
                info!(vip, %backend, "ejected backend returned")
            }
        }
    }
}

impl BackendStates {
    /// Follows a (new) config: the state of pairs that remain is kept, that of pairs that
    /// are gone is forgotten, new pairs start healthy and not ejected.
    pub fn reconfigure(&mut self, config: &Config, now: Instant) {
        let keys: BTreeSet<TargetKey> = pairs(config).map(|(vip, b)| key(vip, b)).collect();
        let checked: BTreeSet<TargetKey> =
            pairs(config).filter(|(vip, _)| vip.health_check.is_some()).map(|(vip, b)| key(vip, b)).collect();
        self.checks.retain(|k, _| checked.contains(k));
        for k in checked {
            self.checks.entry(k).or_default();
        }
        self.drained.retain(|k| keys.contains(k));
        let mut outliers = BTreeMap::new();
        for vip in &config.vips {
            let Some(outlier) = &vip.outlier_detection else { continue };
            let mut state = self.outliers.remove(&vip.name).unwrap_or_else(|| VipOutliers {
                detector: OutlierDetector::new(outlier.clone()),
                interval: outlier.interval,
                next_sweep: now + outlier.interval,
                refusing: false,
            });
            state.interval = outlier.interval;
            state.detector.reconfigure(outlier.clone(), vip.backends.iter().map(BackendConfig::socket_addr));
            outliers.insert(vip.name.clone(), state);
        }
        self.outliers = outliers;
    }

    /// The active checks `config` asks for; those of the encapsulated modes go through the
    /// backends' tunnels, with the marks `marks` gave them.
    pub fn check_targets(config: &Config, marks: &CheckMarks) -> Vec<Target> {
        pairs(config)
            .filter_map(|(vip, b)| {
                let check = vip.health_check.clone()?;
                Some(Target { key: key(vip, b), check, through: marks.tunnel(config, vip, b) })
            })
            .collect()
    }

    /// One active check result; true when a backend's availability changed.
    pub fn on_check(&mut self, config: &Config, result: &CheckResult) -> bool {
        let (vip_name, backend) = &result.key;
        let Some(check) = config.vips.iter().find(|v| &v.name == vip_name).and_then(|v| v.health_check.as_ref()) else {
            return false;
        };
        let Some(status) = self.checks.get_mut(&result.key) else { return false };
        let flipped = status.record(result.outcome.is_ok(), check.healthy_threshold, check.unhealthy_threshold);
        match (flipped, &result.outcome) {
            (Some(false), Err(why)) => {
                warn!(vip = %vip_name, %backend, reason = %why, "backend unhealthy: active checks failing")
            }
            (Some(true), _) => info!(vip = %vip_name, %backend, "backend healthy again: active checks passing"),
            _ => {}
        }
        let returned = result.outcome.is_ok()
            && self.outliers.get_mut(vip_name).is_some_and(|o| {
                o.detector.health_check_passed(backend).inspect(|d| o.log(vip_name, d, Instant::now())).is_some()
            });
        flipped.is_some() || returned
    }

    /// One passive signal from the packet path; true when a backend's availability changed.
    pub fn on_signal(&mut self, config: &Config, now: Instant, vip: &str, backend: SocketAddr, kind: u32) -> bool {
        let outcome = match kind {
            SIGNAL_CONNECT_FAILED => Outcome::LocalOriginFailure,
            // Every HTTP flow reports its connect before its status: when both count in one
            // streak (not split), the connect would reset it before every 5xx, so for HTTP
            // VIPs only the status counts as success, as a mesh ignores connect successes.
            SIGNAL_CONNECTED if counts_5xx_only(config, vip) => return false,
            SIGNAL_CONNECTED => Outcome::LocalOriginSuccess,
            SIGNAL_HTTP_5XX => Outcome::Http5xx,
            SIGNAL_HTTP_OK => Outcome::HttpOk,
            _ => return false,
        };
        let Some(outliers) = self.outliers.get_mut(vip) else { return false };
        match outliers.detector.record(now, &backend, outcome) {
            Some(decision) => {
                outliers.log(vip, &decision, now);
                matches!(decision, Decision::Ejected { .. })
            }
            None => false,
        }
    }

    /// Runs the ejection sweeps that are due; true when a backend returned or was ejected.
    pub fn sweep(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for (vip, state) in &mut self.outliers {
            if now < state.next_sweep {
                continue;
            }
            for decision in state.detector.sweep(now) {
                state.log(vip, &decision, now);
                changed |= !matches!(decision, Decision::Refused { .. });
            }
            state.next_sweep = now + state.interval;
        }
        changed
    }

    /// When the next sweep is due.
    pub fn next_sweep(&self) -> Option<Instant> {
        self.outliers.values().map(|o| o.next_sweep).min()
    }

    /// Drains (or undrains) a backend of a VIP at run time; false if there is no such pair.
    pub fn set_drained(&mut self, config: &Config, vip: &str, backend: SocketAddr, drained: bool) -> bool {
        if !pairs(config).any(|(v, b)| v.name == vip && b.socket_addr() == backend) {
            return false;
        }
        let k = (vip.to_owned(), backend);
        if drained {
            self.drained.insert(k)
        } else {
            self.drained.remove(&k)
        };
        true
    }

    /// Whether a backend takes new flows, as far as its own state goes (locality and panic
    /// are decided per VIP, in `locality::plan`). Draining wins over everything, then a
    /// failing active check, then an ejection.
    pub fn availability(&self, vip: &VipConfig, backend: &BackendConfig) -> Availability {
        let k = key(vip, backend);
        if backend.draining || self.drained.contains(&k) {
            Availability::Draining
        } else if self.checks.get(&k).is_some_and(|c| !c.is_healthy()) {
            Availability::Unhealthy
        } else if self.outliers.get(&vip.name).is_some_and(|o| o.detector.is_ejected(&k.1)) {
            Availability::Ejected
        } else {
            Availability::Available
        }
    }

    pub fn outlier_stats(&self, vip: &str) -> Option<OutlierStats> {
        self.outliers.get(vip).map(|o| o.detector.stats())
    }
}

/// Whether `vip` is an HTTP VIP whose outlier detection counts local-origin failures in
/// the 5xx streak.
fn counts_5xx_only(config: &Config, vip: &str) -> bool {
    config.vips.iter().any(|v| {
        v.name == vip && v.http && v.outlier_detection.as_ref().is_some_and(|o| !o.split_external_local_origin_errors)
    })
}

fn pairs(config: &Config) -> impl Iterator<Item = (&VipConfig, &BackendConfig)> {
    config.vips.iter().flat_map(|v| v.backends.iter().map(move |b| (v, b)))
}

fn key(vip: &VipConfig, backend: &BackendConfig) -> TargetKey {
    (vip.name.clone(), backend.socket_addr())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::probe::CheckFailure;
    use crate::config;
    use std::time::Duration;

    const CONFIG: &str = r#"
[balancer]
interfaces = ["eth0"]
ipv4 = "10.0.0.1"

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80
http = true
health_check = { type = "tcp", healthy_threshold = 2, unhealthy_threshold = 2 }
outlier_detection = { consecutive_5xx = 2, base_ejection_time = "10s", interval = "1s", max_ejection_percent = 50 }
backend = [{ address = "10.0.1.1" }, { address = "10.0.1.2" }, { address = "10.0.1.3", draining = true }]
"#;

    fn setup(text: &str) -> (Config, BackendStates, Instant) {
        let config = config::parse(text, "test.toml").expect("valid config");
        let mut states = BackendStates::default();
        let t0 = Instant::now();
        states.reconfigure(&config, t0);
        (config, states, t0)
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 1, last], 80))
    }

    fn availability(config: &Config, states: &BackendStates) -> Vec<Availability> {
        let vip = &config.vips[0];
        vip.backends.iter().map(|b| states.availability(vip, b)).collect()
    }

    fn check(states: &mut BackendStates, config: &Config, last: u8, passed: bool) -> bool {
        let refused = CheckFailure::Io { step: "connect", message: "refused".into() };
        let outcome = if passed { Ok(()) } else { Err(refused) };
        states.on_check(config, &CheckResult { key: ("web".into(), addr(last)), outcome })
    }

    use Availability::*;

    /// What `run` logged (without ANSI colours or timestamps).
    fn logged(run: impl FnOnce()) -> String {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || SharedBuffer(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        let bytes = buffer.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_ejection_log_line_says_the_whole_ejection_time() {
        let (config, mut states, t0) = setup(CONFIG);
        let log = logged(|| {
            for _ in 0..2 {
                states.on_signal(&config, t0, "web", addr(1), SIGNAL_HTTP_5XX);
            }
        });
        assert!(log.contains("for_secs=10"), "{log}");
    }

    #[test]
    fn refused_ejections_are_logged_once_until_a_backend_returns() {
        let (config, mut states, t0) = setup(CONFIG);
        let log = logged(|| {
            for last in [1, 1, 2, 2, 2, 2, 2, 2, 2, 2] {
                states.on_signal(&config, t0, "web", addr(last), SIGNAL_HTTP_5XX);
            }
        });
        // Backend 1 is ejected (1 of 3 = the cap of 50 %); backend 2 reaches the threshold 4 times.
        assert_eq!(states.outlier_stats("web").map(|s| s.ejections_overflow_total), Some(4));
        assert_eq!(log.matches("ejection refused").count(), 1, "{log}");
        let log = logged(|| {
            states.sweep(t0 + Duration::from_secs(11));
            for _ in 0..2 {
                states.on_signal(&config, t0 + Duration::from_secs(11), "web", addr(2), SIGNAL_HTTP_5XX);
            }
        });
        assert!(log.contains("ejections allowed again"), "{log}");
        assert!(log.contains("backend ejected"), "{log}");
    }

    #[test]
    fn checks_apply_thresholds_and_draining_wins() {
        let (config, mut states, _) = setup(CONFIG);
        assert_eq!(availability(&config, &states), [Available, Available, Draining]);
        assert!(!check(&mut states, &config, 1, false), "one failure is not enough");
        assert!(check(&mut states, &config, 1, false));
        assert!(!check(&mut states, &config, 3, false));
        assert!(check(&mut states, &config, 3, false));
        assert_eq!(availability(&config, &states), [Unhealthy, Available, Draining]);
        assert!(!check(&mut states, &config, 1, true));
        assert!(check(&mut states, &config, 1, true));
        assert_eq!(availability(&config, &states)[0], Available);
        assert_eq!(BackendStates::check_targets(&config, &CheckMarks::default()).len(), 3);
    }

    #[test]
    fn signals_eject_and_sweeps_return() {
        let (config, mut states, t0) = setup(CONFIG);
        let signal = |states: &mut BackendStates, last, kind| states.on_signal(&config, t0, "web", addr(last), kind);
        // An HTTP VIP without split: connects don't break a 5xx streak.
        assert!(!signal(&mut states, 2, SIGNAL_HTTP_5XX));
        assert!(!signal(&mut states, 2, SIGNAL_CONNECTED));
        assert!(signal(&mut states, 2, SIGNAL_HTTP_5XX));
        assert_eq!(availability(&config, &states), [Available, Ejected, Draining]);
        assert_eq!(states.outlier_stats("web").map(|s| s.ejections_active), Some(1));
        // Refused connections are local-origin failures, counted with the 5xx.
        assert!(!signal(&mut states, 1, SIGNAL_CONNECT_FAILED));
        assert!(!signal(&mut states, 1, SIGNAL_HTTP_OK));
        assert!(!signal(&mut states, 1, SIGNAL_CONNECT_FAILED), "the OK reset the streak");
        assert!(!states.sweep(t0 + Duration::from_secs(5)), "not yet");
        assert_eq!(states.next_sweep(), Some(t0 + Duration::from_secs(6)));
        assert!(states.sweep(t0 + Duration::from_secs(11)));
        assert_eq!(availability(&config, &states), [Available, Available, Draining]);
        assert!(!states.on_signal(&config, t0, "nope", addr(1), SIGNAL_HTTP_5XX));
    }

    #[test]
    fn a_passing_check_returns_an_ejected_backend() {
        let (config, mut states, t0) = setup(CONFIG);
        for _ in 0..2 {
            states.on_signal(&config, t0, "web", addr(1), SIGNAL_CONNECT_FAILED);
        }
        assert_eq!(availability(&config, &states)[0], Ejected);
        assert!(check(&mut states, &config, 1, true));
        assert_eq!(availability(&config, &states)[0], Available);
    }

    #[test]
    fn reloads_keep_the_state_of_what_remains() {
        let (config, mut states, t0) = setup(CONFIG);
        check(&mut states, &config, 1, false);
        check(&mut states, &config, 1, false);
        assert!(states.set_drained(&config, "web", addr(2), true));
        assert!(!states.set_drained(&config, "web", addr(9), true));
        let fewer = CONFIG.replace(", { address = \"10.0.1.3\", draining = true }", "");
        let fewer = config::parse(&fewer, "test.toml").expect("valid config");
        states.reconfigure(&fewer, t0);
        assert_eq!(availability(&fewer, &states), [Unhealthy, Draining]);
        let unchecked = config::parse(
            &CONFIG.replace("health_check = { type = \"tcp\", healthy_threshold = 2, unhealthy_threshold = 2 }\n", ""),
            "t",
        )
        .unwrap();
        states.reconfigure(&unchecked, t0);
        assert_eq!(availability(&unchecked, &states)[0], Available, "no checks, no check state");
        assert!(BackendStates::check_targets(&unchecked, &CheckMarks::default()).is_empty());
    }
}
