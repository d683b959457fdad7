//! Locality-aware failover: which of a VIP's backends take new flows, given this balancer's
//! region and zone and each backend's availability (active health, outlier ejection,
//! draining). Pure: the caller builds the Maglev table from the plan's weights.

use crate::config::{BackendConfig, VipConfig};

/// What the health checks, outlier ejection and the operator say about one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Failed its active health checks.
    Unhealthy,
    /// Ejected by outlier detection.
    Ejected,
    /// Takes no new flows (like `draining = true` in the config); its flows stay.
    Draining,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Priority level serving new flows (0 = the balancer's zone, 1 = other zones of its
    /// region, 2.. = other regions in failover order); None when nothing is available and
    /// no panic either (empty table).
    pub level: Option<usize>,
    /// Balancing over all (non-draining, weight > 0) backends of the level, ignoring
    /// health, because too few are available.
    pub panic: bool,
    /// Per backend (same order as `vip.backends`): its Maglev weight; 0 = not in the table.
    pub weights: Vec<u32>,
}

/// Which backends of `vip` serve new flows, and with which weights.
///
/// A backend is *eligible* when its weight is above 0 and it is not draining (by config or
/// by `availability`); only eligible backends ever get new flows, in panic too. Eligible
/// backends that are `Available` serve from the best level that has any, at their
/// configured weights (the default weight 1 makes it "by replica count").
///
/// Panic (as a service mesh's panic threshold): when `panic_threshold` > 0, there are
/// eligible backends, and fewer than `panic_threshold` percent of them are available,
/// VIP-wide (exactly at the threshold is not panic). Then the plan spreads over every
/// eligible backend, healthy or not, of the level it serves: the best level with an
/// available backend, or, when none is available anywhere, the best level that has
/// eligible backends. (Panic ignores health within a level, as Envoy's per-level panic
/// does; it never sends flows back to a better level none of whose backends is available
/// while a worse one still has some.)
///
/// With nothing available and `panic_threshold` = 0, the table is empty: the operator
/// asked for a black hole rather than unhealthy backends.
///
/// Panics if `availability` does not have one entry per backend.
pub fn plan(balancer_region: &str, balancer_zone: &str, vip: &VipConfig, availability: &[Availability]) -> Plan {
    assert_eq!(availability.len(), vip.backends.len(), "one availability per backend of VIP {:?}", vip.name);
    let levels: Vec<usize> = vip
        .backends
        .iter()
        .map(|backend| level_of(balancer_region, balancer_zone, &vip.failover_regions, backend))
        .collect();
    let eligible: Vec<bool> = vip
        .backends
        .iter()
        .zip(availability)
        .map(|(backend, &state)| backend.weight > 0 && !backend.draining && state != Availability::Draining)
        .collect();
    let available: Vec<bool> = eligible
        .iter()
        .zip(availability)
        .map(|(&eligible, &state)| eligible && state == Availability::Available)
        .collect();
    let best_level =
        |members: &[bool]| levels.iter().zip(members).filter_map(|(&level, &member)| member.then_some(level)).min();

    let total = eligible.iter().filter(|&&e| e).count() as u64;
    let up = available.iter().filter(|&&a| a).count() as u64;
    let panic = vip.panic_threshold > 0 && total > 0 && up * 100 < u64::from(vip.panic_threshold) * total;
    let level = best_level(&available).or_else(|| best_level(&eligible).filter(|_| panic));
    let serving = if panic { &eligible } else { &available };
    let weights = vip
        .backends
        .iter()
        .zip(&levels)
        .zip(serving)
        .map(
            |((backend, &backend_level), &serves)| {
                if serves && Some(backend_level) == level { backend.weight } else { 0 }
            },
        )
        .collect();
    Plan { level, panic, weights }
}

/// The priority level of a backend for this balancer (exposed for status/metrics): 0 =
/// same region and zone, 1 = same region, other zone, 2 + i = `failover_regions[i]`, and
/// 2 + `failover_regions.len()` for every region not listed. An empty region or zone on
/// the backend means the balancer's (unlabelled = local).
pub fn level_of(
    balancer_region: &str,
    balancer_zone: &str,
    failover_regions: &[String],
    backend: &BackendConfig,
) -> usize {
    let region = if backend.region.is_empty() { balancer_region } else { &backend.region };
    let zone = if backend.zone.is_empty() { balancer_zone } else { &backend.zone };
    if region == balancer_region {
        return if zone == balancer_zone { 0 } else { 1 };
    }
    2 + failover_regions.iter().position(|r| r == region).unwrap_or(failover_regions.len())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::config::{ForwardingMode, Protocol};
    use Availability::*;

    fn backend(region: &str, zone: &str) -> BackendConfig {
        BackendConfig {
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            port: 80,
            weight: 1,
            region: region.into(),
            zone: zone.into(),
            draining: false,
        }
    }

    fn weighted(weight: u32, region: &str, zone: &str) -> BackendConfig {
        BackendConfig { weight, ..backend(region, zone) }
    }

    /// Failover to r3, then r2; panic threshold as given.
    fn vip(panic_threshold: u32, backends: Vec<BackendConfig>) -> VipConfig {
        VipConfig {
            name: "web".into(),
            address: IpAddr::V4(Ipv4Addr::new(10, 100, 0, 1)),
            port: 80,
            protocol: Protocol::Tcp,
            mode: ForwardingMode::Nat,
            new_flow_limit: None,
            packet_limit: None,
            source_limit: None,
            health_check: None,
            outlier_detection: None,
            http: false,
            panic_threshold,
            failover_regions: vec!["r3".into(), "r2".into()],
            backends,
        }
    }

    /// The plan of a balancer in r1/z1.
    fn plan_here(vip: &VipConfig, availability: &[Availability]) -> Plan {
        plan("r1", "z1", vip, availability)
    }

    fn serving(level: usize, weights: &[u32]) -> Plan {
        Plan { level: Some(level), panic: false, weights: weights.to_vec() }
    }

    fn panicking(level: usize, weights: &[u32]) -> Plan {
        Plan { level: Some(level), panic: true, weights: weights.to_vec() }
    }

    fn empty(n: usize) -> Plan {
        Plan { level: None, panic: false, weights: vec![0; n] }
    }

    #[test]
    fn levels_are_zone_then_region_then_failover_regions_then_the_rest() {
        let failover = ["r3".to_string(), "r2".to_string()];
        let level = |region, zone| level_of("r1", "z1", &failover, &backend(region, zone));
        assert_eq!(level("r1", "z1"), 0);
        assert_eq!(level("r1", "z2"), 1);
        assert_eq!(level("r3", "z1"), 2);
        assert_eq!(level("r2", "z9"), 3);
        assert_eq!((level("r4", "z1"), level("r5", "z5")), (4, 4));
        assert_eq!(level_of("r1", "z1", &[], &backend("r2", "z1")), 2);
    }

    #[test]
    fn unlabelled_backends_are_local() {
        let level = |region, zone| level_of("r1", "z1", &[], &backend(region, zone));
        assert_eq!((level("", ""), level("r1", ""), level("", "z1")), (0, 0, 0));
        assert_eq!(level("", "z2"), 1);
        assert_eq!(level("r2", ""), 2);
    }

    #[test]
    fn unlabelled_balancer_puts_unlabelled_backends_at_level_0() {
        let level = |region, zone| level_of("", "", &["r2".to_string()], &backend(region, zone));
        assert_eq!(level("", ""), 0);
        assert_eq!(level("", "z1"), 1);
        assert_eq!((level("r2", "z1"), level("r1", "z1")), (2, 3));
    }

    #[test]
    fn serves_the_balancers_zone_at_configured_weights() {
        let vip = vip(50, vec![backend("r1", "z2"), backend("r1", "z1"), backend("r2", "z1"), weighted(3, "r1", "z1")]);
        assert_eq!(plan_here(&vip, &[Available; 4]), serving(0, &[0, 1, 0, 3]));
    }

    #[test]
    fn fails_over_zone_then_region_then_failover_regions_in_order_then_the_rest() {
        let backends = ["z1", "z2"].map(|zone| backend("r1", zone)).into_iter();
        let vip = vip(0, backends.chain(["r2", "r3", "r4", "r5"].map(|region| backend(region, "z1"))).collect());
        let mut availability = [Available; 6];
        assert_eq!(plan_here(&vip, &availability), serving(0, &[1, 0, 0, 0, 0, 0]));
        availability[0] = Unhealthy;
        assert_eq!(plan_here(&vip, &availability), serving(1, &[0, 1, 0, 0, 0, 0]));
        availability[1] = Ejected;
        assert_eq!(plan_here(&vip, &availability), serving(2, &[0, 0, 0, 1, 0, 0]), "r3 first");
        availability[3] = Unhealthy;
        assert_eq!(plan_here(&vip, &availability), serving(3, &[0, 0, 1, 0, 0, 0]), "then r2");
        availability[2] = Unhealthy;
        assert_eq!(plan_here(&vip, &availability), serving(4, &[0, 0, 0, 0, 1, 1]), "unlisted regions together");
        availability[5] = Unhealthy;
        assert_eq!(plan_here(&vip, &availability), serving(4, &[0, 0, 0, 0, 1, 0]));
    }

    #[test]
    fn fails_back_when_a_better_level_is_available_again() {
        let vip = vip(0, vec![backend("r1", "z1"), backend("r1", "z2"), backend("r3", "z1")]);
        assert_eq!(plan_here(&vip, &[Unhealthy, Unhealthy, Available]), serving(2, &[0, 0, 1]));
        assert_eq!(plan_here(&vip, &[Unhealthy, Available, Available]), serving(1, &[0, 1, 0]));
        assert_eq!(plan_here(&vip, &[Available, Available, Available]), serving(0, &[1, 0, 0]));
    }

    #[test]
    fn draining_and_zero_weight_backends_get_no_new_flows() {
        let draining = BackendConfig { draining: true, ..backend("r1", "z1") };
        let vip = vip(0, vec![draining, weighted(0, "r1", "z1"), backend("r1", "z1"), backend("r1", "z2")]);
        // Level 0 has nothing eligible: level 1 serves.
        assert_eq!(plan_here(&vip, &[Available, Available, Draining, Available]), serving(1, &[0, 0, 0, 1]));
        assert_eq!(plan_here(&vip, &[Available; 4]), serving(0, &[0, 0, 1, 0]));
    }

    #[test]
    fn draining_and_zero_weight_backends_get_no_new_flows_in_panic_either() {
        let draining = BackendConfig { draining: true, ..backend("r1", "z1") };
        let vip = vip(100, vec![draining, weighted(0, "r1", "z1"), backend("r1", "z1"), weighted(2, "r1", "z1")]);
        // Eligible: the last two, one available: 50% < 100%.
        assert_eq!(plan_here(&vip, &[Available, Available, Unhealthy, Available]), panicking(0, &[0, 0, 1, 2]));
    }

    #[test]
    fn panic_below_threshold_spreads_over_the_served_level() {
        let vip = vip(50, [("r1", "z1"); 4].into_iter().chain([("r1", "z2"); 4]).map(|(r, z)| backend(r, z)).collect());
        // 3 of 8 available.
        let availability = [Available, Unhealthy, Ejected, Unhealthy, Available, Available, Ejected, Unhealthy];
        assert_eq!(plan_here(&vip, &availability), panicking(0, &[1, 1, 1, 1, 0, 0, 0, 0]));
    }

    #[test]
    fn exactly_at_panic_threshold_is_not_panic() {
        let vip = vip(50, [("r1", "z1"); 4].into_iter().chain([("r1", "z2"); 4]).map(|(r, z)| backend(r, z)).collect());
        // 4 of 8 available.
        let availability = [Available, Unhealthy, Ejected, Unhealthy, Available, Available, Available, Unhealthy];
        assert_eq!(plan_here(&vip, &availability), serving(0, &[1, 0, 0, 0, 0, 0, 0, 0]));
        let vip = VipConfig { panic_threshold: 51, ..vip };
        assert!(plan_here(&vip, &availability).panic);
    }

    #[test]
    fn panic_stays_on_the_served_level_rather_than_a_dead_better_one() {
        let vip = vip(50, vec![backend("r1", "z1"), backend("r1", "z1"), backend("r1", "z2"), backend("r1", "z2")]);
        // 1 of 4 available, in level 1: level 0 has none, so level 1 serves, all of it.
        assert_eq!(plan_here(&vip, &[Unhealthy, Ejected, Unhealthy, Available]), panicking(1, &[0, 0, 1, 1]));
    }

    #[test]
    fn nothing_available_panics_onto_the_best_level_with_eligible_backends() {
        let draining = BackendConfig { draining: true, ..backend("r1", "z1") };
        let vip = vip(50, vec![draining, backend("r1", "z2"), weighted(4, "r1", "z2"), backend("r2", "z1")]);
        assert_eq!(plan_here(&vip, &[Available, Unhealthy, Ejected, Unhealthy]), panicking(1, &[0, 1, 4, 0]));
    }

    #[test]
    fn panic_disabled_serves_the_few_available_or_black_holes() {
        let vip = vip(0, vec![backend("r1", "z1"), backend("r1", "z1"), backend("r1", "z2")]);
        assert_eq!(plan_here(&vip, &[Unhealthy, Unhealthy, Available]), serving(1, &[0, 0, 1]));
        assert_eq!(plan_here(&vip, &[Unhealthy, Ejected, Unhealthy]), empty(3));
    }

    #[test]
    fn no_eligible_backends_is_an_empty_table_without_panic() {
        let draining = BackendConfig { draining: true, ..backend("r1", "z1") };
        let vip_without_eligible = vip(50, vec![draining, weighted(0, "r1", "z2")]);
        assert_eq!(plan_here(&vip_without_eligible, &[Unhealthy, Available]), empty(2));
        assert_eq!(plan_here(&vip(50, vec![]), &[]), empty(0));
    }

    #[test]
    #[should_panic(expected = "one availability per backend")]
    fn availability_must_cover_every_backend() {
        plan_here(&vip(50, vec![backend("r1", "z1")]), &[]);
    }
}
