//! Passive outlier ejection for one VIP, with a service mesh's (Envoy's) meanings:
//! consecutive 5xx and consecutive local-origin failures eject a backend at once, for
//! `base_ejection_time` times the number of times it was ejected (capped), as long as
//! `max_ejection_percent` allows; a periodic sweep returns backends whose time is up.
//!
//! Pure state: the caller passes the time in, feeds signals from the packet path and
//! active health checks, and applies the returned [`Decision`]s to the tables.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Instant;

use crate::config::OutlierDetectionConfig;

/// One passive signal about a backend, as seen by the packet path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A connection attempt failed: refused or reset, ICMP unreachable, timeout.
    LocalOriginFailure,
    /// A connection attempt succeeded. Without `split_external_local_origin_errors` this
    /// resets the same counter as 5xx responses, so for HTTP VIPs it should only be
    /// reported when no HTTP status will follow (or a 5xx-after-connect pattern never
    /// reaches the threshold).
    LocalOriginSuccess,
    /// A response with a 5xx status.
    Http5xx,
    /// A response with any other status.
    HttpOk,
}

impl Outcome {
    fn is_failure(self) -> bool {
        matches!(self, Outcome::LocalOriginFailure | Outcome::Http5xx)
    }
}

/// Which consecutive-failure detector reached its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detector {
    Consecutive5xx,
    ConsecutiveLocalOrigin,
}

/// A change the caller must apply (or, for `Refused`, report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<K> {
    /// Take the backend out of the VIP's table until `until`; `ejections` is its
    /// ejection multiplier (the number of times it was ejected, see [`OutlierDetector`]).
    Ejected { backend: K, until: Instant, ejections: u32, reason: Detector },
    /// A detector fired but `max_ejection_percent` forbade the ejection.
    Refused { backend: K, reason: Detector },
    /// Put the backend back into the VIP's table.
    Returned { backend: K },
}

/// Counters with the meanings of Envoy's `outlier_detection.*` stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutlierStats {
    /// Backends ejected now (a gauge).
    pub ejections_active: u64,
    pub ejections_enforced_total: u64,
    /// Ejections refused by `max_ejection_percent`.
    pub ejections_overflow_total: u64,
    /// Times the consecutive-5xx threshold was reached (enforced or refused).
    pub detected_consecutive_5xx_total: u64,
    /// Times the consecutive-local-origin-failure threshold was reached (enforced or refused).
    pub detected_consecutive_local_origin_failure_total: u64,
}

#[derive(Clone, Debug, Default)]
struct BackendState {
    consecutive_5xx: u32,
    consecutive_local_origin_failures: u32,
    /// Grows by one per ejection (until the ejection time reaches its cap), shrinks by one
    /// per quiet sweep.
    multiplier: u32,
    /// Set while ejected.
    ejected_until: Option<Instant>,
    /// No failure signal and no ejection since the previous sweep.
    quiet_since_sweep: bool,
}

impl BackendState {
    /// Counts one signal; returns the detector whose threshold it reached (that counter
    /// starts over).
    fn count(&mut self, outcome: Outcome, config: &OutlierDetectionConfig) -> Option<Detector> {
        let local_origin = matches!(outcome, Outcome::LocalOriginFailure | Outcome::LocalOriginSuccess);
        let (counter, threshold, detector) = if local_origin && config.split_external_local_origin_errors {
            (
                &mut self.consecutive_local_origin_failures,
                config.consecutive_local_origin_failures,
                Detector::ConsecutiveLocalOrigin,
            )
        } else {
            (&mut self.consecutive_5xx, config.consecutive_5xx, Detector::Consecutive5xx)
        };
        if !outcome.is_failure() {
            *counter = 0;
            return None;
        }
        self.quiet_since_sweep = false;
        if threshold == 0 {
            return None;
        }
        *counter += 1;
        if *counter < threshold {
            return None;
        }
        *counter = 0;
        Some(detector)
    }

    /// Ejects the backend from `now`; returns when the ejection ends.
    fn eject(&mut self, now: Instant, config: &OutlierDetectionConfig) -> Instant {
        let base = config.base_ejection_time;
        let cap = base.max(config.max_ejection_time);
        // As Envoy: the multiplier stops growing once the ejection time reaches the cap, so
        // a backend that later stays well is back to short ejections after a few sweeps.
        if self.multiplier == 0 || base.saturating_mul(self.multiplier) < cap {
            self.multiplier += 1;
        }
        let until = now + base.saturating_mul(self.multiplier).min(cap);
        self.consecutive_5xx = 0;
        self.consecutive_local_origin_failures = 0;
        self.ejected_until = Some(until);
        self.quiet_since_sweep = false;
        until
    }

    fn reinstate(&mut self) {
        self.ejected_until = None;
        self.quiet_since_sweep = false;
    }
}

/// Outlier ejection state of one VIP's backends, keyed by `K` (chosen by the caller, e.g.
/// the backend's socket address). Signals about backends outside the set given to
/// [`reconfigure`](Self::reconfigure) are ignored.
///
/// Ejection time = `base_ejection_time` x multiplier, capped at
/// max(`base_ejection_time`, `max_ejection_time`). The multiplier grows by one on each
/// ejection, except that (as Envoy) it stops growing once the ejection time has reached
/// the cap; it shrinks by one at each sweep the backend spent quiet.
#[derive(Clone, Debug)]
pub struct OutlierDetector<K: Ord + Clone> {
    config: OutlierDetectionConfig,
    backends: BTreeMap<K, BackendState>,
    stats: OutlierStats,
}

impl<K: Ord + Clone> OutlierDetector<K> {
    /// A detector without backends (see [`reconfigure`](Self::reconfigure)).
    pub fn new(config: OutlierDetectionConfig) -> Self {
        OutlierDetector { config, backends: BTreeMap::new(), stats: OutlierStats::default() }
    }

    /// Reload: new config, and the backend set; state is kept for backends that remain,
    /// new ones start clean, removed ones are forgotten. Backends already ejected stay
    /// ejected until their time is up, even if the new `max_ejection_percent` is lower.
    pub fn reconfigure(&mut self, config: OutlierDetectionConfig, backends: impl IntoIterator<Item = K>) {
        let mut kept = BTreeMap::new();
        for key in backends {
            if let Entry::Vacant(slot) = kept.entry(key) {
                let state = self.backends.remove(slot.key()).unwrap_or_default();
                slot.insert(state);
            }
        }
        self.backends = kept;
        self.config = config;
    }

    /// One passive signal. Without `split_external_local_origin_errors`, local-origin
    /// failures count as 5xx (one counter, threshold `consecutive_5xx`) and a
    /// `LocalOriginSuccess` or `HttpOk` resets it; with split, 5xx/`HttpOk` feed
    /// `consecutive_5xx` and local-origin failure/success feed
    /// `consecutive_local_origin_failures`. A threshold of 0 disables that detector.
    /// Reaching a threshold ejects at once, unless more than
    /// max(1, floor(backends x `max_ejection_percent` / 100)) backends would then be
    /// ejected: the refusal is counted (overflow) and the counter starts over. An ejected
    /// backend ignores signals.
    pub fn record(&mut self, now: Instant, backend: &K, outcome: Outcome) -> Option<Decision<K>> {
        let state = self.backends.get_mut(backend)?;
        if state.ejected_until.is_some() {
            return None;
        }
        let reason = state.count(outcome, &self.config)?;
        match reason {
            Detector::Consecutive5xx => self.stats.detected_consecutive_5xx_total += 1,
            Detector::ConsecutiveLocalOrigin => self.stats.detected_consecutive_local_origin_failure_total += 1,
        }
        if !self.may_eject_one_more() {
            self.stats.ejections_overflow_total += 1;
            return Some(Decision::Refused { backend: backend.clone(), reason });
        }
        let state = self.backends.get_mut(backend)?;
        let until = state.eject(now, &self.config);
        self.stats.ejections_enforced_total += 1;
        Some(Decision::Ejected { backend: backend.clone(), until, ejections: state.multiplier, reason })
    }

    /// Periodic sweep (the caller calls it every `interval`): backends whose ejection time
    /// is over return; a backend that was not ejected and had no failure signal since the
    /// previous sweep has its multiplier decreased by one (never below 0).
    pub fn sweep(&mut self, now: Instant) -> Vec<Decision<K>> {
        let mut returned = Vec::new();
        for (key, state) in &mut self.backends {
            match state.ejected_until {
                Some(until) if until <= now => {
                    state.reinstate();
                    returned.push(Decision::Returned { backend: key.clone() });
                }
                Some(_) => {}
                None if state.quiet_since_sweep => state.multiplier = state.multiplier.saturating_sub(1),
                None => {}
            }
            state.quiet_since_sweep = true;
        }
        returned
    }

    /// An active health check passed: with `uneject_on_healthy_check`, an ejected backend
    /// returns at once (its multiplier is kept).
    pub fn health_check_passed(&mut self, backend: &K) -> Option<Decision<K>> {
        if !self.config.uneject_on_healthy_check {
            return None;
        }
        let state = self.backends.get_mut(backend)?;
        state.ejected_until?;
        state.reinstate();
        Some(Decision::Returned { backend: backend.clone() })
    }

    pub fn is_ejected(&self, backend: &K) -> bool {
        self.backends.get(backend).is_some_and(|state| state.ejected_until.is_some())
    }

    pub fn stats(&self) -> OutlierStats {
        OutlierStats { ejections_active: self.ejected_count() as u64, ..self.stats }
    }

    /// When the next ejection ends (so the caller can schedule a sweep sooner than
    /// `interval` if it wants).
    pub fn next_return(&self) -> Option<Instant> {
        self.backends.values().filter_map(|state| state.ejected_until).min()
    }

    fn ejected_count(&self) -> usize {
        self.backends.values().filter(|state| state.ejected_until.is_some()).count()
    }

    /// At least one backend may always be ejected, as Envoy does.
    fn may_eject_one_more(&self) -> bool {
        let limit = (self.backends.len() * self.config.max_ejection_percent as usize / 100).max(1);
        self.ejected_count() < limit
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use Outcome::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Thresholds 3 (5xx) and 2 (local origin), not split; ejections of 30 s up to 300 s;
    /// no ejection limit.
    fn config() -> OutlierDetectionConfig {
        OutlierDetectionConfig {
            consecutive_5xx: 3,
            consecutive_local_origin_failures: 2,
            split_external_local_origin_errors: false,
            interval: secs(10),
            base_ejection_time: secs(30),
            max_ejection_time: secs(300),
            max_ejection_percent: 100,
            uneject_on_healthy_check: true,
        }
    }

    fn split_config() -> OutlierDetectionConfig {
        OutlierDetectionConfig { split_external_local_origin_errors: true, ..config() }
    }

    /// A detector over backends 0..n.
    fn detector(config: OutlierDetectionConfig, n: u32) -> OutlierDetector<u32> {
        let mut d = OutlierDetector::new(config.clone());
        d.reconfigure(config, 0..n);
        d
    }

    /// Records each outcome at `now`, none of which may lead to a decision.
    fn feed_quietly(d: &mut OutlierDetector<u32>, now: Instant, backend: u32, outcomes: &[Outcome]) {
        for (i, &outcome) in outcomes.iter().enumerate() {
            assert_eq!(d.record(now, &backend, outcome), None, "outcome {i} ({outcome:?}) of backend {backend}");
        }
    }

    /// Records failures until the backend's detector fires; returns that decision.
    fn fail_until_decision(d: &mut OutlierDetector<u32>, now: Instant, backend: u32) -> Decision<u32> {
        (0..1000).find_map(|_| d.record(now, &backend, Http5xx)).expect("no decision after 1000 failures")
    }

    fn ejected(backend: u32, until: Instant, ejections: u32, reason: Detector) -> Option<Decision<u32>> {
        Some(Decision::Ejected { backend, until, ejections, reason })
    }

    #[test]
    fn consecutive_5xx_threshold_ejects_at_once() {
        let t0 = Instant::now();
        let mut d = detector(config(), 4);
        feed_quietly(&mut d, t0, 1, &[Http5xx, Http5xx]);
        assert!(!d.is_ejected(&1));
        assert_eq!(d.record(t0, &1, Http5xx), ejected(1, t0 + secs(30), 1, Detector::Consecutive5xx));
        assert!(d.is_ejected(&1));
        assert!(!d.is_ejected(&0));
    }

    #[test]
    fn success_resets_the_consecutive_count() {
        let t0 = Instant::now();
        let mut d = detector(config(), 4);
        let pattern = [Http5xx, Http5xx, HttpOk, Http5xx, LocalOriginFailure, LocalOriginSuccess, Http5xx, Http5xx];
        feed_quietly(&mut d, t0, 0, &pattern);
        assert!(d.record(t0, &0, Http5xx).is_some());
    }

    #[test]
    fn without_split_local_origin_failures_count_as_5xx() {
        let t0 = Instant::now();
        let mut d = detector(config(), 4);
        // The local-origin threshold (2) does not apply; the 5xx one (3) does, over both.
        feed_quietly(&mut d, t0, 0, &[LocalOriginFailure, LocalOriginFailure]);
        assert_eq!(d.record(t0, &0, Http5xx), ejected(0, t0 + secs(30), 1, Detector::Consecutive5xx));
        assert_eq!(d.stats().detected_consecutive_local_origin_failure_total, 0);
    }

    #[test]
    fn with_split_local_origin_and_5xx_count_apart() {
        let t0 = Instant::now();
        let mut d = detector(split_config(), 4);
        // Each kind of success resets only its own counter.
        let pattern = [Http5xx, LocalOriginFailure, HttpOk, LocalOriginSuccess, Http5xx, Http5xx, LocalOriginFailure];
        feed_quietly(&mut d, t0, 0, &pattern);
        assert_eq!(
            d.record(t0, &0, LocalOriginFailure),
            ejected(0, t0 + secs(30), 1, Detector::ConsecutiveLocalOrigin)
        );

        let mut d = detector(split_config(), 4);
        let pattern = [Http5xx, LocalOriginFailure, LocalOriginSuccess, Http5xx];
        feed_quietly(&mut d, t0, 0, &pattern);
        assert_eq!(d.record(t0, &0, Http5xx), ejected(0, t0 + secs(30), 1, Detector::Consecutive5xx));
    }

    #[test]
    fn disabled_detectors_never_eject() {
        let t0 = Instant::now();
        let mut d = detector(OutlierDetectionConfig { consecutive_5xx: 0, ..config() }, 4);
        feed_quietly(&mut d, t0, 0, &[Http5xx, LocalOriginFailure].repeat(50));

        // Split: local origin off, 5xx still on.
        let mut d = detector(OutlierDetectionConfig { consecutive_local_origin_failures: 0, ..split_config() }, 4);
        feed_quietly(&mut d, t0, 0, &[LocalOriginFailure; 100]);
        feed_quietly(&mut d, t0, 0, &[Http5xx; 2]);
        assert!(d.record(t0, &0, Http5xx).is_some());
        assert_eq!(d.stats().detected_consecutive_local_origin_failure_total, 0);
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
        let t0 = Instant::now();
        let config = OutlierDetectionConfig { max_ejection_time: secs(100), ..config() };
        let mut d = detector(config, 4);
        let mut now = t0;
        // 30, 60, 90, then capped at 100 (the multiplier stops at 4).
        for (ejections, length) in [(1, 30), (2, 60), (3, 90), (4, 100), (4, 100)] {
            let decision = fail_until_decision(&mut d, now, 0);
            assert_eq!(Some(decision), ejected(0, now + secs(length), ejections, Detector::Consecutive5xx));
            now += secs(length);
            assert_eq!(d.sweep(now), [Decision::Returned { backend: 0 }]);
        }
    }

    #[test]
    fn max_ejection_time_below_base_caps_at_base() {
        let t0 = Instant::now();
        let mut d = detector(OutlierDetectionConfig { max_ejection_time: secs(5), ..config() }, 4);
        for _ in 0..3 {
            let Decision::Ejected { until, .. } = fail_until_decision(&mut d, t0, 0) else { panic!("not ejected") };
            assert_eq!(until, t0 + secs(30));
            d.sweep(until);
        }
    }

    #[test]
    fn multiplier_decreases_after_quiet_sweeps() {
        let t0 = Instant::now();
        let mut d = detector(config(), 4);
        fail_until_decision(&mut d, t0, 0);
        d.sweep(t0 + secs(30));
        fail_until_decision(&mut d, t0 + secs(30), 0); // multiplier 2, ejected until 90 s
        assert_eq!(d.sweep(t0 + secs(90)), [Decision::Returned { backend: 0 }]);
        // A failure signal in the interval keeps the multiplier.
        d.record(t0 + secs(95), &0, Http5xx);
        d.sweep(t0 + secs(100));
        assert!(matches!(fail_until_decision(&mut d, t0 + secs(100), 0), Decision::Ejected { ejections: 3, .. }));
        d.sweep(t0 + secs(190));
        // Three quiet sweeps take it from 3 to 0, and more do not go below 0.
        for i in 1..=5 {
            d.sweep(t0 + secs(190 + 10 * i));
        }
        let now = t0 + secs(300);
        assert_eq!(Some(fail_until_decision(&mut d, now, 0)), ejected(0, now + secs(30), 1, Detector::Consecutive5xx));
    }

    #[test]
    fn ejected_backend_returns_at_the_sweep_after_its_time() {
        let t0 = Instant::now();
        let mut d = detector(config(), 4);
        assert_eq!(d.next_return(), None);
        fail_until_decision(&mut d, t0, 0);
        fail_until_decision(&mut d, t0 + secs(5), 1);
        assert_eq!(d.next_return(), Some(t0 + secs(30)));
        assert_eq!(d.sweep(t0 + secs(29)), []);
        assert_eq!(d.sweep(t0 + secs(30)), [Decision::Returned { backend: 0 }]);
        assert!(!d.is_ejected(&0) && d.is_ejected(&1));
        assert_eq!(d.next_return(), Some(t0 + secs(35)));
        assert_eq!(d.sweep(t0 + secs(40)), [Decision::Returned { backend: 1 }]);
        assert_eq!(d.next_return(), None);
    }

    #[test]
    fn ejected_backend_ignores_signals() {
        let t0 = Instant::now();
        let mut d = detector(config(), 4);
        fail_until_decision(&mut d, t0, 0);
        feed_quietly(&mut d, t0, 0, &[Http5xx; 10]);
        d.sweep(t0 + secs(30));
        // The failures while ejected did not count: it takes a full threshold again.
        feed_quietly(&mut d, t0 + secs(31), 0, &[Http5xx, Http5xx]);
        assert_eq!(d.stats().ejections_enforced_total, 1);
    }

    #[test]
    fn healthy_check_returns_ejected_backend_early() {
        let t0 = Instant::now();
        let mut d = detector(config(), 4);
        assert_eq!(d.health_check_passed(&0), None);
        fail_until_decision(&mut d, t0, 0);
        assert_eq!(d.health_check_passed(&0), Some(Decision::Returned { backend: 0 }));
        assert!(!d.is_ejected(&0));
        assert_eq!(d.next_return(), None);
        // The multiplier is kept: the next ejection lasts twice as long.
        assert_eq!(Some(fail_until_decision(&mut d, t0, 0)), ejected(0, t0 + secs(60), 2, Detector::Consecutive5xx));
    }

    #[test]
    fn healthy_check_does_not_return_backend_when_disabled() {
        let t0 = Instant::now();
        let mut d = detector(OutlierDetectionConfig { uneject_on_healthy_check: false, ..config() }, 4);
        fail_until_decision(&mut d, t0, 0);
        assert_eq!(d.health_check_passed(&0), None);
        assert!(d.is_ejected(&0));
    }

    #[test]
    fn max_ejection_percent_refuses_and_counts_overflow() {
        let t0 = Instant::now();
        let mut d = detector(OutlierDetectionConfig { max_ejection_percent: 20, ..config() }, 10);
        assert!(matches!(fail_until_decision(&mut d, t0, 0), Decision::Ejected { .. }));
        assert!(matches!(fail_until_decision(&mut d, t0, 1), Decision::Ejected { .. }));
        assert_eq!(
            fail_until_decision(&mut d, t0, 2),
            Decision::Refused { backend: 2, reason: Detector::Consecutive5xx }
        );
        assert!(!d.is_ejected(&2));
        // The refused backend's counter started over.
        feed_quietly(&mut d, t0, 2, &[Http5xx, Http5xx]);
        // Once one returns, the next detection is enforced.
        d.sweep(t0 + secs(30));
        assert!(matches!(d.record(t0 + secs(30), &2, Http5xx), Some(Decision::Ejected { backend: 2, .. })));
    }

    #[test]
    fn at_least_one_backend_may_always_be_ejected() {
        let t0 = Instant::now();
        // floor(3 x 10%) = 0, yet one may be ejected.
        let mut d = detector(OutlierDetectionConfig { max_ejection_percent: 10, ..config() }, 3);
        assert!(matches!(fail_until_decision(&mut d, t0, 0), Decision::Ejected { .. }));
        assert!(matches!(fail_until_decision(&mut d, t0, 1), Decision::Refused { .. }));
        // Even with 0%.
        let mut d = detector(OutlierDetectionConfig { max_ejection_percent: 0, ..config() }, 1);
        assert!(matches!(fail_until_decision(&mut d, t0, 0), Decision::Ejected { .. }));
    }

    #[test]
    fn reconfigure_keeps_state_of_remaining_backends() {
        let t0 = Instant::now();
        let mut d = detector(config(), 3);
        fail_until_decision(&mut d, t0, 0);
        feed_quietly(&mut d, t0, 1, &[Http5xx, Http5xx]);
        fail_until_decision(&mut d, t0, 2);
        d.reconfigure(OutlierDetectionConfig { consecutive_5xx: 5, ..config() }, [0, 1, 7, 1]);
        assert!(d.is_ejected(&0));
        // Backend 1 keeps its two failures under the new threshold.
        feed_quietly(&mut d, t0, 1, &[Http5xx, Http5xx]);
        assert!(d.record(t0, &1, Http5xx).is_some());
        // Removed: forgotten, and its signals ignored.
        assert!(!d.is_ejected(&2));
        feed_quietly(&mut d, t0, 2, &[Http5xx; 10]);
        // New: starts clean.
        feed_quietly(&mut d, t0, 7, &[Http5xx; 4]);
        assert_eq!(d.next_return(), Some(t0 + secs(30)));
        // Removed and added back: clean again (multiplier 1).
        d.reconfigure(config(), [0, 1, 2, 7]);
        assert_eq!(Some(fail_until_decision(&mut d, t0, 2)), ejected(2, t0 + secs(30), 1, Detector::Consecutive5xx));
    }

    #[test]
    fn stats_count_detections_enforcements_and_overflows() {
        let t0 = Instant::now();
        let mut d = detector(OutlierDetectionConfig { max_ejection_percent: 25, ..split_config() }, 8);
        fail_until_decision(&mut d, t0, 0);
        feed_quietly(&mut d, t0, 1, &[LocalOriginFailure]);
        assert!(matches!(d.record(t0, &1, LocalOriginFailure), Some(Decision::Ejected { .. })));
        feed_quietly(&mut d, t0, 2, &[LocalOriginFailure]);
        // 2 of 8 backends at most.
        assert!(matches!(d.record(t0, &2, LocalOriginFailure), Some(Decision::Refused { .. })));
        fail_until_decision(&mut d, t0, 3); // refused
        assert_eq!(
            d.stats(),
            OutlierStats {
                ejections_active: 2,
                ejections_enforced_total: 2,
                ejections_overflow_total: 2,
                detected_consecutive_5xx_total: 2,
                detected_consecutive_local_origin_failure_total: 2,
            }
        );
        d.sweep(t0 + secs(30));
        let stats = d.stats();
        assert_eq!((stats.ejections_active, stats.ejections_enforced_total), (0, 2));
    }
}
