//! The priority load as Envoy computes it (`LoadBalancerBase::recalculatePerPriorityState`
//! and `recalculatePerPriorityPanic`): how much of a VIP's new flows each priority level
//! takes, given the weight of its backends that is available, and which levels are in
//! panic. Pure integer percents, as Envoy's, so its documented tables replay exactly.

/// The backends of one priority level as the load computation sees them: the weight of
/// those that may take new flows (eligible: weight > 0, not draining) and of those of them
/// that are available.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelWeight {
    pub available: u64,
    pub eligible: u64,
}

/// Per level (in the order given): its health, its load and whether it is in panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityLoad {
    /// min(100, overprovisioning x available share), in percent.
    pub health: Vec<u32>,
    /// Percent of new flows; sums to 100, or to 0 when no level may serve (nothing
    /// available and panic off, or nothing eligible).
    pub load: Vec<u32>,
    /// The level balances over all its eligible backends, available or not.
    pub panic: Vec<bool>,
}

/// A level's health: `overprovisioning` (in hundredths: 140 = 1.4) x its available share
/// of eligible weight, in whole percent, capped at 100. An empty level has none.
pub fn level_health(level: LevelWeight, overprovisioning: u32) -> u32 {
    if level.eligible == 0 {
        return 0;
    }
    (u64::from(overprovisioning) * level.available / level.eligible).min(100) as u32
}

/// Envoy's priority load over `levels` (best first), with `panic_threshold` in percent
/// (0 = never panic):
///
/// - Each level's health is [`level_health`]; the normalized total health is their sum,
///   capped at 100.
/// - The load goes to levels in order, each taking health x 100 / normalized total (so
///   when the total is below 100 the loads are scaled up to fill 100), until 100 is given
///   out; what rounding leaves goes to the first level with health.
/// - A level is in panic when the normalized total is below 100 and less than
///   `panic_threshold` percent of its eligible weight is available. When every level is
///   in panic (total panic), the load follows each level's eligible weight instead.
/// - With nothing available and panic off, no level serves (every load 0).
pub fn priority_load(levels: &[LevelWeight], overprovisioning: u32, panic_threshold: u32) -> PriorityLoad {
    let health: Vec<u32> = levels.iter().map(|&level| level_health(level, overprovisioning)).collect();
    let normalized_total = health.iter().sum::<u32>().min(100);
    let threshold = u64::from(panic_threshold.min(100));
    let panic: Vec<bool> = levels
        .iter()
        .map(|level| normalized_total < 100 && threshold > 0 && level.available * 100 < threshold * level.eligible)
        .collect();
    let load = if !panic.is_empty() && panic.iter().all(|&p| p) {
        total_panic_load(levels)
    } else if normalized_total == 0 {
        vec![0; levels.len()]
    } else {
        distribute(&health, normalized_total)
    };
    PriorityLoad { health, load, panic }
}

/// Gives out 100 percent by health, scaled by the normalized total; the rounding rest
/// goes to the first level with health.
fn distribute(health: &[u32], normalized_total: u32) -> Vec<u32> {
    let mut remaining = 100;
    let mut load: Vec<u32> = health
        .iter()
        .map(|&h| {
            let take = remaining.min(h * 100 / normalized_total);
            remaining -= take;
            take
        })
        .collect();
    if let Some(first) = health.iter().position(|&h| h > 0) {
        load[first] += remaining;
    }
    load
}

/// Every level in panic: the load follows each level's eligible weight, whatever its
/// health; the rounding rest goes to the first level with any.
fn total_panic_load(levels: &[LevelWeight]) -> Vec<u32> {
    let total: u64 = levels.iter().map(|l| l.eligible).sum();
    if total == 0 {
        return vec![0; levels.len()];
    }
    let mut load: Vec<u32> = levels.iter().map(|l| (100 * l.eligible / total) as u32).collect();
    let rest = 100 - load.iter().sum::<u32>();
    if let Some(first) = levels.iter().position(|l| l.eligible > 0) {
        load[first] += rest;
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy's default overprovisioning factor, 1.4, and panic threshold, 50%.
    const FACTOR: u32 = 140;
    const THRESHOLD: u32 = 50;

    /// A level of 100 equal backends of which `percent` are available.
    fn healthy(percent: u64) -> LevelWeight {
        LevelWeight { available: percent, eligible: 100 }
    }

    fn load_of(percents: &[u64], panic_threshold: u32) -> PriorityLoad {
        let levels: Vec<LevelWeight> = percents.iter().map(|&p| healthy(p)).collect();
        priority_load(&levels, FACTOR, panic_threshold)
    }

    /// Asserts each level's load within 1 point of Envoy's documented one, and the panic
    /// column where the table has one (then with the default panic threshold; the
    /// priority levels page describes the load alone, without panic).
    fn assert_row(percents: &[u64], expected_load: &[u32], expected_panic: Option<&[bool]>) {
        let got = load_of(percents, if expected_panic.is_some() { THRESHOLD } else { 0 });
        assert_eq!(got.load.iter().sum::<u32>(), 100, "{percents:?}: {got:?}");
        for (level, (&load, &expected)) in got.load.iter().zip(expected_load).enumerate() {
            assert!(load.abs_diff(expected) <= 1, "{percents:?}: P={level} got {load}%, Envoy's docs {expected}%");
        }
        if let Some(panic) = expected_panic {
            assert_eq!(got.panic, panic, "{percents:?}: panic per level");
        }
    }

    /// Envoy's priority levels page, first table: two levels, P=1 100% healthy.
    #[test]
    fn envoy_priority_levels_with_a_healthy_second_level() {
        for (p0, load) in
            [(100, [100, 0]), (72, [100, 0]), (71, [99, 1]), (50, [70, 30]), (25, [35, 65]), (0, [0, 100])]
        {
            assert_row(&[p0, 100], &load, None);
        }
    }

    /// Its second table: both levels degrade; below 100 total health the loads are
    /// normalized ({35, 35} -> {50, 50}).
    #[test]
    fn envoy_priority_levels_normalized_total_health() {
        for (levels, load) in [
            ([100, 100], [100, 0]),
            ([72, 72], [100, 0]),
            ([71, 71], [99, 1]),
            ([50, 50], [70, 30]),
            ([25, 100], [35, 65]),
            ([25, 25], [50, 50]),
        ] {
            assert_row(&levels, &load, None);
        }
    }

    /// Its third table: three levels.
    #[test]
    fn envoy_priority_levels_three_levels() {
        for (levels, load) in [
            ([100, 100, 100], [100, 0, 0]),
            ([72, 72, 100], [100, 0, 0]),
            ([71, 71, 100], [99, 1, 0]),
            ([50, 50, 100], [70, 30, 0]),
            ([25, 100, 100], [35, 65, 0]),
            ([25, 25, 100], [35, 35, 30]),
            ([25, 25, 20], [36, 36, 28]),
        ] {
            assert_row(&levels, &load, None);
        }
    }

    /// The panic threshold page, first table: P=1 100% healthy, so the normalized total is
    /// 100 and P=0 never panics, however few of its backends are left.
    #[test]
    fn envoy_panic_threshold_with_a_healthy_second_level() {
        for (p0, load) in [(72, [100, 0]), (71, [99, 1]), (50, [70, 30]), (25, [35, 65]), (0, [0, 100])] {
            assert_row(&[p0, 100], &load, Some(&[false, false]));
        }
    }

    /// Its second table, panic per level once the normalized total is below 100. Two of
    /// its rows (50%/60% -> 50/50, 25%/100% -> 25/75) contradict the priority levels page
    /// and Envoy's code, where those healths (70+84, 35+100) give 70/30 and 35/65: those
    /// rows are replayed as the code computes them.
    #[test]
    fn envoy_panic_threshold_per_level() {
        let no = [false, false];
        assert_row(&[72, 72], &[100, 0], Some(&no));
        assert_row(&[71, 71], &[99, 1], Some(&no));
        assert_row(&[50, 60], &[70, 30], Some(&no));
        assert_row(&[25, 100], &[35, 65], Some(&no));
        assert_row(&[25, 25], &[50, 50], Some(&[true, true]));
        assert_row(&[5, 65], &[7, 93], Some(&[true, false]));
        assert_eq!(load_of(&[25, 25], THRESHOLD).health, [35, 35], "normalized total 70");
        assert_eq!(load_of(&[5, 65], THRESHOLD).health, [7, 91], "normalized total 98");
    }

    #[test]
    fn total_panic_spreads_by_eligible_weight() {
        // Nothing available anywhere: every level is in panic, the load follows the
        // levels' sizes (Envoy's recalculateLoadInTotalPanic).
        let levels = [LevelWeight { available: 0, eligible: 4 }, LevelWeight { available: 0, eligible: 2 }];
        let got = priority_load(&levels, FACTOR, THRESHOLD);
        assert_eq!((got.load, got.panic), (vec![67, 33], vec![true, true]));
        // A few available in each: still total panic.
        let levels = [LevelWeight { available: 1, eligible: 5 }, LevelWeight { available: 1, eligible: 5 }];
        assert_eq!(priority_load(&levels, FACTOR, THRESHOLD).load, [50, 50]);
        // The priority page's 25% / 25% / 20% row (36/36/28 without panic) is total
        // panic with the default threshold: all three levels are below 50%.
        let got = load_of(&[25, 25, 20], THRESHOLD);
        assert_eq!((got.load, got.panic), (vec![34, 33, 33], vec![true; 3]));
    }

    #[test]
    fn panic_off_with_nothing_available_serves_nothing() {
        let levels = [LevelWeight { available: 0, eligible: 4 }, LevelWeight { available: 0, eligible: 2 }];
        let got = priority_load(&levels, FACTOR, 0);
        assert_eq!((got.load, got.panic), (vec![0, 0], vec![false, false]));
        // Panic off, a few available: they take all of it, without panic.
        let levels = [LevelWeight { available: 1, eligible: 10 }];
        let got = priority_load(&levels, FACTOR, 0);
        assert_eq!((got.load, got.panic), (vec![100], vec![false]));
    }

    #[test]
    fn overprovisioning_factor_sets_where_spillover_starts() {
        let levels = [LevelWeight { available: 3, eligible: 4 }, LevelWeight { available: 4, eligible: 4 }];
        assert_eq!(priority_load(&levels, 140, THRESHOLD).load, [100, 0], "3 of 4 x 1.4 > 100%");
        assert_eq!(priority_load(&levels, 100, THRESHOLD).load, [75, 25], "no overprovisioning");
        assert_eq!(priority_load(&levels, 200, THRESHOLD).health, [100, 100]);
    }

    #[test]
    fn weights_count_not_backends() {
        // A level of weights 3 and 1 whose heavy backend is down has 25% available.
        let levels = [LevelWeight { available: 1, eligible: 4 }, LevelWeight { available: 2, eligible: 2 }];
        assert_eq!(priority_load(&levels, FACTOR, THRESHOLD).load, [35, 65]);
    }

    #[test]
    fn no_levels_no_load() {
        let got = priority_load(&[], FACTOR, THRESHOLD);
        assert!(got.load.is_empty() && got.panic.is_empty());
    }
}
