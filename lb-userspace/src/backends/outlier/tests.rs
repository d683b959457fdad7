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
        interval: secs(10),
        base_ejection_time: secs(30),
        max_ejection_time: secs(300),
        max_ejection_percent: 100,
        ..OutlierDetectionConfig::default()
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
    assert_eq!(d.stats().detected_total[Detector::ConsecutiveLocalOrigin as usize], 0);
}

#[test]
fn with_split_local_origin_and_5xx_count_apart() {
    let t0 = Instant::now();
    let mut d = detector(split_config(), 4);
    // Each kind of success resets only its own counter.
    let pattern = [Http5xx, LocalOriginFailure, HttpOk, LocalOriginSuccess, Http5xx, Http5xx, LocalOriginFailure];
    feed_quietly(&mut d, t0, 0, &pattern);
    assert_eq!(d.record(t0, &0, LocalOriginFailure), ejected(0, t0 + secs(30), 1, Detector::ConsecutiveLocalOrigin));

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
    assert_eq!(d.stats().detected_total[Detector::ConsecutiveLocalOrigin as usize], 0);
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
    assert_eq!(fail_until_decision(&mut d, t0, 2), Decision::Refused { backend: 2, reason: Detector::Consecutive5xx });
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
            detected_total: [2, 2, 0, 0, 0, 0],
            enforced_total: [1, 1, 0, 0, 0, 0],
        }
    );
    d.sweep(t0 + secs(30));
    let stats = d.stats();
    assert_eq!((stats.ejections_active, stats.ejections_enforced_total), (0, 2));
}

/// Feeds each of ten backends 200 responses in one interval: backend 0 answers 5xx at 30%,
/// backend 1 at 2% (every 50th), the others never; then sweeps.
fn sweep_ten_backends(d: &mut OutlierDetector<u32>, now: Instant) -> Vec<Decision<u32>> {
    for backend in 0..10 {
        for i in 0..200 {
            let fails = match backend {
                0 => i % 10 < 3,
                1 => i % 50 == 0,
                _ => false,
            };
            // Streaks are off here: only the interval detectors judge.
            assert_eq!(d.record(now, &backend, if fails { Http5xx } else { HttpOk }), None);
        }
    }
    d.sweep(now)
}

fn rates_only() -> OutlierDetectionConfig {
    OutlierDetectionConfig { consecutive_5xx: 0, consecutive_local_origin_failures: 0, ..config() }
}

#[test]
fn success_rate_ejects_the_backend_at_30_percent_5xx_not_the_one_at_2() {
    let t0 = Instant::now();
    let mut d = detector(rates_only(), 10);
    assert_eq!(sweep_ten_backends(&mut d, t0), vec![ejected(0, t0 + secs(30), 1, Detector::SuccessRate).unwrap()]);
    assert!(!d.is_ejected(&1));
    let stats = d.stats();
    assert_eq!(stats.detected_total[Detector::SuccessRate as usize], 1);
    assert_eq!(stats.enforced_total[Detector::SuccessRate as usize], 1);
    // Failure percentage is on at its default threshold (85%) but not enforced by default.
    assert_eq!(stats.detected_total[Detector::FailurePercentage as usize], 0);
}

#[test]
fn failure_percentage_ejects_the_backend_at_30_percent_5xx_not_the_one_at_2() {
    let t0 = Instant::now();
    let config = OutlierDetectionConfig {
        enforcing_success_rate: 0,
        failure_percentage_threshold: 20,
        enforcing_failure_percentage: 100,
        ..rates_only()
    };
    let mut d = detector(config, 10);
    assert_eq!(
        sweep_ten_backends(&mut d, t0),
        vec![ejected(0, t0 + secs(30), 1, Detector::FailurePercentage).unwrap()]
    );
    assert!(!d.is_ejected(&1));
    let stats = d.stats();
    // Success rate still finds backend 0 (before failure percentage) but does not enforce.
    assert_eq!(stats.detected_total[Detector::SuccessRate as usize], 1);
    assert_eq!(stats.enforced_total[Detector::SuccessRate as usize], 0);
    assert_eq!(stats.enforced_total[Detector::FailurePercentage as usize], 1);
}

#[test]
fn interval_counts_start_over_at_each_sweep() {
    let t0 = Instant::now();
    let mut d = detector(rates_only(), 10);
    for backend in 0..10 {
        for _ in 0..60 {
            d.record(t0, &backend, if backend == 0 { Http5xx } else { HttpOk });
        }
    }
    // 60 requests each: below success_rate_request_volume (100).
    assert_eq!(d.sweep(t0), vec![]);
    for backend in 0..10 {
        for _ in 0..60 {
            d.record(t0 + secs(10), &backend, HttpOk);
        }
    }
    assert_eq!(d.sweep(t0 + secs(10)), vec![]);
}

#[test]
fn an_enforcing_chance_ejects_about_that_share_of_outliers() {
    let t0 = Instant::now();
    let mut d = detector(OutlierDetectionConfig { enforcing_success_rate: 30, ..rates_only() }, 10);
    let mut now = t0;
    for _ in 0..200 {
        sweep_ten_backends(&mut d, now);
        now += secs(1000);
    }
    let stats = d.stats();
    let enforced = stats.enforced_total[Detector::SuccessRate as usize];
    assert!(stats.detected_total[Detector::SuccessRate as usize] >= 100);
    let share = enforced as f64 / stats.detected_total[Detector::SuccessRate as usize] as f64;
    assert!((0.2..0.4).contains(&share), "{enforced} of {:?}", stats.detected_total);
}

#[test]
fn with_split_local_origin_failures_have_their_own_interval_detectors() {
    let t0 = Instant::now();
    let config = OutlierDetectionConfig { split_external_local_origin_errors: true, ..rates_only() };
    let mut d = detector(config, 10);
    for backend in 0..10 {
        for i in 0..200 {
            let failed = backend == 3 && i % 10 < 3;
            d.record(t0, &backend, if failed { LocalOriginFailure } else { LocalOriginSuccess });
            d.record(t0, &backend, HttpOk);
        }
    }
    assert_eq!(d.sweep(t0), vec![ejected(3, t0 + secs(30), 1, Detector::LocalOriginSuccessRate).unwrap()]);
}

#[test]
fn interval_detectors_respect_max_ejection_percent() {
    let t0 = Instant::now();
    let config = OutlierDetectionConfig { consecutive_5xx: 1, max_ejection_percent: 10, ..config() };
    let mut d = detector(config, 10);
    assert!(matches!(d.record(t0, &9, Http5xx), Some(Decision::Ejected { .. })));
    // Backend 0's streaks are refused as they come (one of ten is ejected already)...
    for backend in 0..9 {
        for i in 0..200 {
            d.record(t0, &backend, if backend == 0 && i % 10 < 3 { Http5xx } else { HttpOk });
        }
    }
    let overflow_before = d.stats().ejections_overflow_total;
    // ...and so is its success rate.
    assert_eq!(d.sweep(t0), vec![Decision::Refused { backend: 0, reason: Detector::SuccessRate }]);
    assert_eq!(d.stats().ejections_overflow_total, overflow_before + 1);
}
