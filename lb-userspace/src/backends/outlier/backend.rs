//! One backend's detector state: consecutive-failure streaks, ejection and multiplier.

use std::time::Instant;

use super::rates::IntervalCounts;
use super::{Detector, Outcome};
use crate::config::OutlierDetectionConfig;

#[derive(Clone, Debug, Default)]
pub(super) struct BackendState {
    pub(super) consecutive_5xx: u32,
    pub(super) consecutive_local_origin_failures: u32,
    /// Grows by one per ejection (until the ejection time reaches its cap), shrinks by one
    /// per quiet sweep.
    pub(super) multiplier: u32,
    /// Set while ejected.
    pub(super) ejected_until: Option<Instant>,
    /// No failure signal and no ejection since the previous sweep.
    pub(super) quiet_since_sweep: bool,
    /// Since the previous sweep: 5xx and other responses (and, unless split, local-origin
    /// outcomes).
    pub(super) external: IntervalCounts,
    /// Since the previous sweep, with split: local-origin outcomes.
    pub(super) local_origin: IntervalCounts,
}

impl BackendState {
    /// Counts one signal; returns the detector whose threshold it reached (that counter
    /// starts over).
    pub(super) fn count(&mut self, outcome: Outcome, config: &OutlierDetectionConfig) -> Option<Detector> {
        let local_origin = matches!(outcome, Outcome::LocalOriginFailure | Outcome::LocalOriginSuccess);
        let split = local_origin && config.split_external_local_origin_errors;
        let bucket = if split { &mut self.local_origin } else { &mut self.external };
        bucket.add(outcome.is_failure());
        let (counter, threshold, detector) = if split {
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
    pub(super) fn eject(&mut self, now: Instant, config: &OutlierDetectionConfig) -> Instant {
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

    /// The periodic sweep: true when the ejection is over and the backend returns. A
    /// backend that was not ejected and stayed quiet since the previous sweep has its
    /// multiplier decreased by one.
    pub(super) fn sweep(&mut self, now: Instant) -> bool {
        let returned = match self.ejected_until {
            Some(until) => until <= now,
            None => {
                if self.quiet_since_sweep {
                    self.multiplier = self.multiplier.saturating_sub(1);
                }
                false
            }
        };
        if returned {
            self.reinstate();
        }
        self.quiet_since_sweep = true;
        returned
    }

    pub(super) fn start_interval(&mut self) {
        self.external = IntervalCounts::default();
        self.local_origin = IntervalCounts::default();
    }

    pub(super) fn reinstate(&mut self) {
        self.ejected_until = None;
        self.quiet_since_sweep = false;
    }
}
