//! Passive outlier ejection for one VIP, with a service mesh's (Envoy's) meanings:
//! consecutive 5xx and consecutive local-origin failures eject a backend at once; each
//! periodic sweep returns backends whose time is up, then ejects the outliers by success
//! rate and by failure percentage over the interval. An ejection lasts
//! `base_ejection_time` times the number of times the backend was ejected (capped), as long
//! as `max_ejection_percent` allows, and each detector ejects only its `enforcing_*`
//! percent of what it finds.
//!
//! Pure state: the caller passes the time in, feeds signals from the packet path and
//! active health checks, and applies the returned [`Decision`]s to the tables.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::time::Instant;

use crate::config::OutlierDetectionConfig;

use backend::BackendState;
use rates::{IntervalCounts, Sample, failure_percentage_outliers, success_rate_outliers};

mod backend;
mod rates;
#[cfg(test)]
mod tests;

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

/// Which detector found the outlier. Without split, the success-rate and
/// failure-percentage detectors count every signal; with split, 5xx and other responses
/// only, and their local-origin twins count connection outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detector {
    Consecutive5xx,
    ConsecutiveLocalOrigin,
    SuccessRate,
    FailurePercentage,
    LocalOriginSuccessRate,
    LocalOriginFailurePercentage,
}

impl Detector {
    /// Every detector, in the order of [`OutlierStats`]' arrays.
    pub const ALL: [Detector; 6] = [
        Detector::Consecutive5xx,
        Detector::ConsecutiveLocalOrigin,
        Detector::SuccessRate,
        Detector::FailurePercentage,
        Detector::LocalOriginSuccessRate,
        Detector::LocalOriginFailurePercentage,
    ];

    /// The percent chance that what it finds is ejected.
    fn enforcing(self, config: &OutlierDetectionConfig) -> u32 {
        match self {
            Detector::Consecutive5xx => config.enforcing_consecutive_5xx,
            Detector::ConsecutiveLocalOrigin => config.enforcing_consecutive_local_origin_failure,
            Detector::SuccessRate => config.enforcing_success_rate,
            Detector::FailurePercentage => config.enforcing_failure_percentage,
            Detector::LocalOriginSuccessRate => config.enforcing_local_origin_success_rate,
            Detector::LocalOriginFailurePercentage => config.enforcing_failure_percentage_local_origin,
        }
    }
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
    /// Outliers each detector found (enforced, refused or left by its `enforcing_*`), in
    /// the order of [`Detector::ALL`].
    pub detected_total: [u64; Detector::ALL.len()],
    /// Ejections each detector enforced, in the same order.
    pub enforced_total: [u64; Detector::ALL.len()],
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
    /// Rolls the `enforcing_*` chances; seeded, so that a run replays.
    dice: fastrand::Rng,
}

impl<K: Ord + Clone> OutlierDetector<K> {
    /// A detector without backends (see [`reconfigure`](Self::reconfigure)).
    pub fn new(config: OutlierDetectionConfig) -> Self {
        OutlierDetector {
            config,
            backends: BTreeMap::new(),
            stats: OutlierStats::default(),
            dice: fastrand::Rng::with_seed(0x006f_7574_6c69_6572),
        }
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
    /// Reaching a threshold ejects at once (see [`decide`](Self::decide)) and the counter
    /// starts over. An ejected backend ignores signals.
    pub fn record(&mut self, now: Instant, backend: &K, outcome: Outcome) -> Option<Decision<K>> {
        let state = self.backends.get_mut(backend)?;
        if state.ejected_until.is_some() {
            return None;
        }
        let reason = state.count(outcome, &self.config)?;
        self.decide(now, backend, reason)
    }

    /// Periodic sweep (the caller calls it every `interval`): backends whose ejection time
    /// is over return; a backend that was not ejected and had no failure signal since the
    /// previous sweep has its multiplier decreased by one (never below 0). Then the
    /// success-rate and failure-percentage detectors judge the interval's counts of the
    /// backends not ejected, and the counts start over.
    pub fn sweep(&mut self, now: Instant) -> Vec<Decision<K>> {
        let mut decisions = Vec::new();
        for (key, state) in &mut self.backends {
            if state.sweep(now) {
                decisions.push(Decision::Returned { backend: key.clone() });
            }
        }
        for (reason, backend) in self.rate_outliers() {
            decisions.extend(self.decide(now, &backend, reason));
        }
        self.backends.values_mut().for_each(BackendState::start_interval);
        decisions
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

    /// A detector found `backend`: unless it is ejected already, eject it, if
    /// max(1, floor(backends x `max_ejection_percent` / 100)) allows (else the refusal is
    /// counted as overflow) and the detector's `enforcing_*` roll says so.
    fn decide(&mut self, now: Instant, backend: &K, reason: Detector) -> Option<Decision<K>> {
        if self.is_ejected(backend) {
            return None;
        }
        self.stats.detected_total[reason as usize] += 1;
        if !self.may_eject_one_more() {
            self.stats.ejections_overflow_total += 1;
            return Some(Decision::Refused { backend: backend.clone(), reason });
        }
        let chance = reason.enforcing(&self.config);
        if chance < 100 && self.dice.u32(0..100) >= chance {
            return None;
        }
        let state = self.backends.get_mut(backend)?;
        let until = state.eject(now, &self.config);
        self.stats.ejections_enforced_total += 1;
        self.stats.enforced_total[reason as usize] += 1;
        Some(Decision::Ejected { backend: backend.clone(), until, ejections: state.multiplier, reason })
    }

    /// What the interval detectors find in the counts of the backends not ejected.
    fn rate_outliers(&self) -> Vec<(Detector, K)> {
        let config = &self.config;
        let counts = |bucket: fn(&BackendState) -> IntervalCounts| -> Vec<(K, IntervalCounts)> {
            let serving = self.backends.iter().filter(|(_, s)| s.ejected_until.is_none());
            serving.map(|(k, s)| (k.clone(), bucket(s))).collect()
        };
        let success_rate = Sample {
            minimum_hosts: config.success_rate_minimum_hosts,
            request_volume: config.success_rate_request_volume,
        };
        let failure_percentage = Sample {
            minimum_hosts: config.failure_percentage_minimum_hosts,
            request_volume: config.failure_percentage_request_volume,
        };
        let mut buckets = vec![(counts(|s| s.external), Detector::SuccessRate, Detector::FailurePercentage)];
        if config.split_external_local_origin_errors {
            buckets.push((
                counts(|s| s.local_origin),
                Detector::LocalOriginSuccessRate,
                Detector::LocalOriginFailurePercentage,
            ));
        }
        let mut found = Vec::new();
        for (counts, by_rate, by_percentage) in buckets {
            let rate = success_rate_outliers(&counts, success_rate, config.success_rate_stdev_factor);
            found.extend(rate.into_iter().map(|k| (by_rate, k)));
            let percentage =
                failure_percentage_outliers(&counts, failure_percentage, config.failure_percentage_threshold);
            found.extend(percentage.into_iter().map(|k| (by_percentage, k)));
        }
        found
    }

    /// At least one backend may always be ejected, as Envoy does.
    fn may_eject_one_more(&self) -> bool {
        let limit = (self.backends.len() * self.config.max_ejection_percent as usize / 100).max(1);
        self.ejected_count() < limit
    }
}
