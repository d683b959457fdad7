//! Active health-check status of one backend: consecutive results with thresholds, so one
//! lost probe does not flap a backend out of its VIP.

/// Active-check status of one backend with thresholds: starts healthy (so a controller
/// restart never black-holes a VIP); `unhealthy_threshold` consecutive failures make it
/// unhealthy, `healthy_threshold` consecutive passes make it healthy again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckStatus {
    healthy: bool,
    /// Consecutive results contradicting `healthy` (a result agreeing with it resets this).
    contrary_streak: u32,
}

impl Default for CheckStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckStatus {
    pub fn new() -> Self {
        CheckStatus { healthy: true, contrary_streak: 0 }
    }

    /// Records one check result; returns `Some(new_healthy)` when the status flips.
    /// A threshold of 0 acts as 1 (config validation refuses 0 anyway).
    pub fn record(&mut self, passed: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Option<bool> {
        if passed == self.healthy {
            self.contrary_streak = 0;
            return None;
        }
        self.contrary_streak += 1;
        let threshold = if passed { healthy_threshold } else { unhealthy_threshold };
        if self.contrary_streak < threshold.max(1) {
            return None;
        }
        self.healthy = passed;
        self.contrary_streak = 0;
        Some(passed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` with thresholds (healthy 2, unhealthy 3); returns the flips.
    fn feed(status: &mut CheckStatus, results: &[bool]) -> Vec<Option<bool>> {
        results.iter().map(|&passed| status.record(passed, 2, 3)).collect()
    }

    #[test]
    fn starts_healthy() {
        assert!(CheckStatus::new().is_healthy());
        assert!(CheckStatus::default().is_healthy());
    }

    #[test]
    fn unhealthy_after_unhealthy_threshold_failures() {
        let mut status = CheckStatus::new();
        assert_eq!(feed(&mut status, &[false, false]), [None, None]);
        assert!(status.is_healthy());
        assert_eq!(status.record(false, 2, 3), Some(false));
        assert!(!status.is_healthy());
        // Further failures do not flip again.
        assert_eq!(feed(&mut status, &[false, false, false]), [None, None, None]);
    }

    #[test]
    fn healthy_again_after_healthy_threshold_passes() {
        let mut status = CheckStatus::new();
        feed(&mut status, &[false, false, false]);
        assert_eq!(status.record(true, 2, 3), None);
        assert!(!status.is_healthy());
        assert_eq!(status.record(true, 2, 3), Some(true));
        assert!(status.is_healthy());
        assert_eq!(status.record(true, 2, 3), None);
    }

    #[test]
    fn single_lost_probe_does_not_flip() {
        let mut status = CheckStatus::new();
        assert_eq!(feed(&mut status, &[true, false, true, true, false, true]), [None; 6]);
        assert!(status.is_healthy());
    }

    #[test]
    fn interrupted_failure_streak_starts_over() {
        let mut status = CheckStatus::new();
        assert_eq!(feed(&mut status, &[false, false, true, false, false]), [None; 5]);
        assert!(status.is_healthy());
        assert_eq!(status.record(false, 2, 3), Some(false));
    }

    #[test]
    fn flapping_backend_never_flips_with_thresholds_above_one() {
        let alternating: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        let mut healthy = CheckStatus::new();
        assert!(feed(&mut healthy, &alternating).iter().all(Option::is_none));
        assert!(healthy.is_healthy());

        let mut unhealthy = CheckStatus::new();
        feed(&mut unhealthy, &[false, false, false]);
        assert!(feed(&mut unhealthy, &alternating).iter().all(Option::is_none));
        assert!(!unhealthy.is_healthy());
    }

    #[test]
    fn thresholds_of_one_flip_on_every_change() {
        let mut status = CheckStatus::new();
        assert_eq!(status.record(false, 1, 1), Some(false));
        assert_eq!(status.record(true, 1, 1), Some(true));
        assert_eq!(status.record(true, 1, 1), None);
    }

    #[test]
    fn zero_threshold_acts_as_one() {
        let mut status = CheckStatus::new();
        assert_eq!(status.record(false, 0, 0), Some(false));
        assert_eq!(status.record(true, 0, 0), Some(true));
    }
}
