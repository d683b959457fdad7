//! Locality-aware failover: which of a VIP's backends take new flows, and how much of
//! them each, given this balancer's region and zone and each backend's availability
//! (active health, outlier ejection, draining). Priority levels share the VIP's new flows
//! as Envoy's priority load does (`priority`); within a level, by the backends' weights,
//! or by the VIP's `locality_weights` as Envoy's locality-weighted balancing. Pure: the
//! caller builds the Maglev table from the plan's weights.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::priority::{self, LevelWeight};
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

/// Maglev weight per percent of a VIP's new flows: a backend's weight is its share in
/// millionths, so table shares follow the plan within a hundredth of a point.
pub const WEIGHT_PER_PERCENT: u32 = 10_000;

/// One priority level that has eligible backends, as the plan serves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelShare {
    /// 0 = the balancer's zone, 1 = other zones of its region, 2.. = other regions.
    pub level: usize,
    /// min(100, overprovisioning factor x available share of the level's weight).
    pub health: u32,
    /// Percent of the VIP's new flows the level takes.
    pub load: u32,
    /// The level spreads its load over all its eligible backends, available or not.
    pub panic: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The best priority level taking new flows (0 = the balancer's zone, 1 = other zones
    /// of its region, 2.. = other regions in failover order); None when no level takes any
    /// (empty table).
    pub level: Option<usize>,
    /// Some level taking new flows is in panic.
    pub panic: bool,
    /// Every level that has eligible backends, best first, with its share.
    pub levels: Vec<LevelShare>,
    /// Per backend (same order as `vip.backends`): its Maglev weight, its share of the
    /// VIP's new flows in units of 1/`WEIGHT_PER_PERCENT` percent; 0 = not in the table.
    pub weights: Vec<u32>,
}

/// One backend as the plan sees it.
struct Member {
    level: usize,
    /// The most specific `locality_weights` key it falls under (or its own region/zone),
    /// and that key's weight (0 when unlisted).
    locality: String,
    locality_weight: u32,
    weight: u64,
    /// Weight > 0 and not draining: may ever take new flows, in panic too.
    eligible: bool,
    /// Eligible and `Available`.
    available: bool,
}

/// Which backends of `vip` serve new flows, and how much of them each.
///
/// A backend is *eligible* when its weight is above 0 and it is not draining (by config or
/// by `availability`); only eligible backends ever get new flows. Eligible backends make
/// priority levels ([`level_of`]), and the levels share the VIP's new flows by Envoy's
/// priority load (`priority::priority_load`): a level's health is
/// `overprovisioning_factor` x its available share of eligible weight, capped at 100%;
/// the load goes to levels in order, scaled up when the healths sum below 100; a level
/// is in panic when that sum is below 100 and less than `panic_threshold` percent of its
/// weight is available, and then its load goes to all its eligible backends. Within a
/// level, the load follows the backends' weights, or the VIP's `locality_weights`
/// ([`level_shares`]).
///
/// Panics if `availability` does not have one entry per backend.
pub fn plan(balancer_region: &str, balancer_zone: &str, vip: &VipConfig, availability: &[Availability]) -> Plan {
    assert_eq!(availability.len(), vip.backends.len(), "one availability per backend of VIP {:?}", vip.name);
    let members: Vec<Member> = vip
        .backends
        .iter()
        .zip(availability)
        .map(|(backend, &state)| member(balancer_region, balancer_zone, vip, backend, state))
        .collect();
    let mut by_level: BTreeMap<usize, LevelWeight> = BTreeMap::new();
    for m in members.iter().filter(|m| m.eligible) {
        let level = by_level.entry(m.level).or_default();
        level.eligible += m.weight;
        level.available += if m.available { m.weight } else { 0 };
    }
    let weights_by_level: Vec<LevelWeight> = by_level.values().copied().collect();
    let load =
        priority::priority_load(&weights_by_level, vip.overprovisioning_factor.hundredths(), vip.panic_threshold);
    let levels: Vec<LevelShare> = by_level
        .keys()
        .enumerate()
        .map(|(i, &level)| LevelShare { level, health: load.health[i], load: load.load[i], panic: load.panic[i] })
        .collect();
    let mut weights = vec![0; members.len()];
    for share in levels.iter().filter(|s| s.load > 0) {
        for (index, fraction) in level_shares(vip, &members, share) {
            let weight = (f64::from(share.load * WEIGHT_PER_PERCENT) * fraction).round() as u32;
            weights[index] = weight.max(1);
        }
    }
    let served = || levels.iter().filter(|s| s.load > 0);
    Plan { level: served().map(|s| s.level).next(), panic: served().any(|s| s.panic), levels, weights }
}

fn member(region: &str, zone: &str, vip: &VipConfig, backend: &BackendConfig, state: Availability) -> Member {
    let eligible = backend.weight > 0 && !backend.draining && state != Availability::Draining;
    let (locality, locality_weight) = locality_of(vip, backend.locality(region, zone));
    Member {
        level: level_of(region, zone, &vip.failover_regions, backend),
        locality,
        locality_weight,
        weight: u64::from(backend.weight),
        eligible,
        available: eligible && state == Availability::Available,
    }
}

/// The `locality_weights` key a backend in `region`/`zone` falls under, with its weight:
/// `"region/zone"` if listed, else `"region"` if listed (the whole region one locality),
/// else its own `"region/zone"` with weight 0.
fn locality_of(vip: &VipConfig, (region, zone): (&str, &str)) -> (String, u32) {
    let zone_key = format!("{region}/{zone}");
    if let Some(&weight) = vip.locality_weights.get(&zone_key) {
        return (zone_key, weight);
    }
    match vip.locality_weights.get(region) {
        Some(&weight) => (region.to_owned(), weight),
        None => (zone_key, 0),
    }
}

/// How a level's load is split among its backends: (backend index, fraction), the
/// fractions summing to 1.
///
/// In panic, or without `locality_weights`, by weight over the level's serving backends
/// (all eligible ones in panic, else the available ones). With `locality_weights`, as
/// Envoy's locality-weighted balancing: each locality of the level takes its effective
/// weight, `locality weight x min(1, overprovisioning factor x its available share)`,
/// split among its available backends by weight; an unlisted locality has weight 0. A
/// level none of whose available localities has weight falls back to the backends'
/// weights (as Envoy falls back to the level's healthy hosts).
fn level_shares(vip: &VipConfig, members: &[Member], share: &LevelShare) -> Vec<(usize, f64)> {
    let in_level = |m: &Member| m.eligible && m.level == share.level;
    let serving = |m: &Member| in_level(m) && (share.panic || m.available);
    let by_weight = || {
        let total: u64 = members.iter().filter(|m| serving(m)).map(|m| m.weight).sum();
        let fractions = members.iter().enumerate().filter(|(_, m)| serving(m));
        fractions.map(|(i, m)| (i, m.weight as f64 / total as f64)).collect()
    };
    if share.panic || vip.locality_weights.is_empty() {
        return by_weight();
    }
    // Per locality of the level: (locality weight, eligible weight, available weight).
    let mut localities: BTreeMap<&str, (u32, u64, u64)> = BTreeMap::new();
    for m in members.iter().filter(|m| in_level(m)) {
        let entry = localities.entry(&m.locality).or_insert((m.locality_weight, 0, 0));
        entry.1 += m.weight;
        entry.2 += if m.available { m.weight } else { 0 };
    }
    let factor = f64::from(vip.overprovisioning_factor.hundredths()) / 100.0;
    let effective: BTreeMap<&str, f64> = localities
        .iter()
        .map(|(&name, &(weight, eligible, available))| {
            (name, f64::from(weight) * (factor * available as f64 / eligible as f64).min(1.0))
        })
        .collect();
    let total: f64 = effective.values().sum();
    if total <= 0.0 {
        return by_weight();
    }
    members
        .iter()
        .enumerate()
        .filter(|(_, m)| serving(m) && effective[m.locality.as_str()] > 0.0)
        .map(|(i, m)| {
            let available = localities[m.locality.as_str()].2 as f64;
            (i, effective[m.locality.as_str()] / total * m.weight as f64 / available)
        })
        .collect()
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
    let (region, zone) = backend.locality(balancer_region, balancer_zone);
    if region == balancer_region {
        return if zone == balancer_zone { 0 } else { 1 };
    }
    2 + failover_regions.iter().position(|r| r == region).unwrap_or(failover_regions.len())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::config::{ForwardingMode, OverprovisioningFactor, Protocol};
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

    fn draining(region: &str, zone: &str) -> BackendConfig {
        BackendConfig { draining: true, ..backend(region, zone) }
    }

    /// `n` backends in each of the given localities, in order.
    fn backends(n: usize, localities: &[(&str, &str)]) -> Vec<BackendConfig> {
        localities.iter().flat_map(|&(region, zone)| vec![backend(region, zone); n]).collect()
    }

    /// Failover to r3, then r2; panic threshold as given; default overprovisioning (1.4).
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
            overprovisioning_factor: OverprovisioningFactor::default(),
            failover_regions: vec!["r3".into(), "r2".into()],
            locality_weights: BTreeMap::new(),
            backends,
        }
    }

    fn with_locality_weights(vip: VipConfig, weights: &[(&str, u32)]) -> VipConfig {
        VipConfig { locality_weights: weights.iter().map(|&(k, w)| (k.to_owned(), w)).collect(), ..vip }
    }

    /// The plan of a balancer in r1/z1.
    fn plan_here(vip: &VipConfig, availability: &[Availability]) -> Plan {
        plan("r1", "z1", vip, availability)
    }

    /// Each backend's share of new flows, in percent.
    fn percents(plan: &Plan) -> Vec<f64> {
        plan.weights.iter().map(|&w| f64::from(w) / f64::from(WEIGHT_PER_PERCENT)).collect()
    }

    fn assert_percents(plan: &Plan, expected: &[f64]) {
        let got = percents(plan);
        let close = got.len() == expected.len() && got.iter().zip(expected).all(|(g, e)| (g - e).abs() < 0.01);
        assert!(close, "shares {got:?}, expected {expected:?} ({plan:?})");
    }

    /// (level, load, panic) of every level with eligible backends.
    fn loads(plan: &Plan) -> Vec<(usize, u32, bool)> {
        plan.levels.iter().map(|s| (s.level, s.load, s.panic)).collect()
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
        let plan = plan_here(&vip, &[Available; 4]);
        assert_percents(&plan, &[0.0, 25.0, 0.0, 75.0]);
        assert_eq!((plan.level, plan.panic), (Some(0), false));
        assert_eq!(loads(&plan), [(0, 100, false), (1, 0, false), (3, 0, false)]);
    }

    #[test]
    fn spills_over_to_the_next_level_as_envoy() {
        let vip = vip(50, backends(4, &[("r1", "z1"), ("r1", "z2")]));
        let mut availability = [Available; 8];
        availability[0] = Unhealthy;
        assert_percents(&plan_here(&vip, &availability), &[0.0, 33.333, 33.333, 33.333, 0.0, 0.0, 0.0, 0.0]);
        availability[1] = Ejected;
        // 2 of 4 local: 2/4 x 1.4 = 70% stays, 30% goes to the other zone.
        let plan = plan_here(&vip, &availability);
        assert_percents(&plan, &[0.0, 0.0, 35.0, 35.0, 7.5, 7.5, 7.5, 7.5]);
        assert_eq!((plan.level, plan.panic), (Some(0), false));
        availability[2] = Unhealthy;
        // 1 of 4: 35% / 65%, and no panic: the total health is 100.
        let plan = plan_here(&vip, &availability);
        assert_percents(&plan, &[0.0, 0.0, 0.0, 35.0, 16.25, 16.25, 16.25, 16.25]);
        assert_eq!(loads(&plan), [(0, 35, false), (1, 65, false)]);
        assert_percents(&plan_here(&vip, &[Available; 8]), &[25.0, 25.0, 25.0, 25.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn overprovisioning_factor_is_the_vips() {
        let vip =
            VipConfig { overprovisioning_factor: OverprovisioningFactor::from_hundredths(100), ..vip(50, vec![]) };
        let vip = VipConfig { backends: backends(4, &[("r1", "z1"), ("r1", "z2")]), ..vip };
        let availability = [Unhealthy, Available, Available, Available, Available, Available, Available, Available];
        assert_eq!(loads(&plan_here(&vip, &availability)), [(0, 75, false), (1, 25, false)]);
    }

    #[test]
    fn fails_over_zone_then_region_then_failover_regions_in_order_then_the_rest() {
        let local = ["z1", "z2"].map(|zone| backend("r1", zone)).into_iter();
        let vip = vip(0, local.chain(["r2", "r3", "r4", "r5"].map(|region| backend(region, "z1"))).collect());
        let mut availability = [Available; 6];
        assert_percents(&plan_here(&vip, &availability), &[100.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        availability[0] = Unhealthy;
        assert_percents(&plan_here(&vip, &availability), &[0.0, 100.0, 0.0, 0.0, 0.0, 0.0]);
        availability[1] = Ejected;
        let plan = plan_here(&vip, &availability);
        assert_eq!(plan.level, Some(2), "r3 first");
        assert_percents(&plan, &[0.0, 0.0, 0.0, 100.0, 0.0, 0.0]);
        availability[3] = Unhealthy;
        assert_percents(&plan_here(&vip, &availability), &[0.0, 0.0, 100.0, 0.0, 0.0, 0.0]);
        availability[2] = Unhealthy;
        assert_percents(&plan_here(&vip, &availability), &[0.0, 0.0, 0.0, 0.0, 50.0, 50.0]);
        availability[5] = Unhealthy;
        // The last level, half available: 70% health scaled up to all of it.
        let plan = plan_here(&vip, &availability);
        assert_percents(&plan, &[0.0, 0.0, 0.0, 0.0, 100.0, 0.0]);
        assert_eq!(plan.level, Some(4));
    }

    #[test]
    fn fails_back_when_a_better_level_is_available_again() {
        let vip = vip(0, vec![backend("r1", "z1"), backend("r1", "z2"), backend("r3", "z1")]);
        assert_percents(&plan_here(&vip, &[Unhealthy, Unhealthy, Available]), &[0.0, 0.0, 100.0]);
        assert_percents(&plan_here(&vip, &[Unhealthy, Available, Available]), &[0.0, 100.0, 0.0]);
        assert_percents(&plan_here(&vip, &[Available, Available, Available]), &[100.0, 0.0, 0.0]);
    }

    #[test]
    fn draining_and_zero_weight_backends_get_no_new_flows() {
        let vip = vip(0, vec![draining("r1", "z1"), weighted(0, "r1", "z1"), backend("r1", "z1"), backend("r1", "z2")]);
        // Level 0 has nothing eligible: level 1 serves.
        assert_percents(&plan_here(&vip, &[Available, Available, Draining, Available]), &[0.0, 0.0, 0.0, 100.0]);
        assert_percents(&plan_here(&vip, &[Available; 4]), &[0.0, 0.0, 100.0, 0.0]);
    }

    #[test]
    fn draining_and_zero_weight_backends_get_no_new_flows_in_panic_either() {
        let vip =
            vip(100, vec![draining("r1", "z1"), weighted(0, "r1", "z1"), backend("r1", "z1"), weighted(2, "r1", "z1")]);
        // Eligible: the last two, 2 of 3 weight available: 66% < 100%, all of it in panic.
        let plan = plan_here(&vip, &[Available, Available, Unhealthy, Available]);
        assert_percents(&plan, &[0.0, 0.0, 33.333, 66.667]);
        assert!(plan.panic);
    }

    #[test]
    fn a_dead_remote_region_puts_no_healthy_level_in_panic() {
        let vip = vip(50, backends(4, &[("r1", "z1"), ("r2", "z1")]));
        let availability = [[Available; 4], [Unhealthy; 4]].concat();
        let plan = plan_here(&vip, &availability);
        assert_eq!(loads(&plan), [(0, 100, false), (3, 0, false)]);
        assert!(!plan.panic);
    }

    #[test]
    fn panic_is_per_level_once_total_health_is_below_100() {
        // Envoy's 5% / 65% row: 1 of 20 local, 13 of 20 in the other zone (health 7 + 91).
        let vip = vip(50, backends(20, &[("r1", "z1"), ("r1", "z2")]));
        let mut availability = vec![Unhealthy; 40];
        availability[0] = Available;
        availability[20..33].fill(Available);
        let plan = plan_here(&vip, &availability);
        assert_eq!(loads(&plan), [(0, 8, true), (1, 92, false)]);
        assert!(plan.panic);
        // Level 0's 8% over all of its 20 backends; level 1's 92% over its 13 available.
        let shares = percents(&plan);
        assert!(shares[..20].iter().all(|&s| (s - 0.4).abs() < 0.01), "{shares:?}");
        assert!(shares[20..33].iter().all(|&s| (s - 92.0 / 13.0).abs() < 0.01), "{shares:?}");
        assert!(shares[33..].iter().all(|&s| s == 0.0), "{shares:?}");
    }

    #[test]
    fn nothing_available_is_total_panic_by_level_size() {
        let vip =
            vip(50, vec![draining("r1", "z1"), backend("r1", "z2"), weighted(3, "r1", "z2"), backend("r2", "z1")]);
        let plan = plan_here(&vip, &[Available, Unhealthy, Ejected, Unhealthy]);
        assert_eq!(loads(&plan), [(1, 80, true), (3, 20, true)]);
        assert_percents(&plan, &[0.0, 20.0, 60.0, 20.0]);
        assert_eq!((plan.level, plan.panic), (Some(1), true));
    }

    #[test]
    fn panic_disabled_serves_the_few_available_or_black_holes() {
        let vip = vip(0, vec![backend("r1", "z1"), backend("r1", "z1"), backend("r1", "z2")]);
        assert_percents(&plan_here(&vip, &[Unhealthy, Unhealthy, Available]), &[0.0, 0.0, 100.0]);
        let plan = plan_here(&vip, &[Unhealthy, Ejected, Unhealthy]);
        assert_eq!((plan.level, plan.panic, plan.weights), (None, false, vec![0; 3]));
    }

    #[test]
    fn no_eligible_backends_is_an_empty_table_without_panic() {
        let vip_without_eligible = vip(50, vec![draining("r1", "z1"), weighted(0, "r1", "z2")]);
        let plan = plan_here(&vip_without_eligible, &[Unhealthy, Available]);
        assert_eq!((plan.level, plan.panic, plan.weights, plan.levels), (None, false, vec![0; 2], vec![]));
        assert_eq!(plan_here(&vip(50, vec![]), &[]).weights, Vec::<u32>::new());
    }

    #[test]
    fn locality_weights_split_a_level_between_its_zones() {
        let vip = vip(50, backends(2, &[("r1", "z1"), ("r1", "z2"), ("r1", "z3")]));
        let vip = with_locality_weights(vip, &[("r1/z2", 80), ("r1/z3", 20)]);
        let mut availability = [&[Unhealthy; 2][..], &[Available; 4]].concat();
        assert_percents(&plan_here(&vip, &availability), &[0.0, 0.0, 40.0, 40.0, 10.0, 10.0]);
        // One of z2's two down: z2's effective weight is 80 x min(1, 1.4 x 1/2) = 56.
        availability[2] = Unhealthy;
        let z2 = 100.0 * 56.0 / 76.0;
        let z3 = 100.0 - z2;
        assert_percents(&plan_here(&vip, &availability), &[0.0, 0.0, 0.0, z2, z3 / 2.0, z3 / 2.0]);
    }

    #[test]
    fn unlisted_localities_of_a_weighted_level_get_none() {
        let vip = vip(0, backends(1, &[("r1", "z2"), ("r1", "z3"), ("r1", "z4")]));
        let vip = with_locality_weights(vip, &[("r1/z2", 3), ("r1/z3", 1)]);
        assert_percents(&plan_here(&vip, &[Available; 3]), &[75.0, 25.0, 0.0]);
        // Only the unlisted locality left: the level's backends by weight, as Envoy.
        assert_percents(&plan_here(&vip, &[Unhealthy, Unhealthy, Available]), &[0.0, 0.0, 100.0]);
    }

    #[test]
    fn a_region_key_weighs_the_whole_region() {
        // Level 4 (regions not in failover_regions) holds r4 and r5.
        let vip = vip(50, vec![backend("r4", "z1"), backend("r4", "z2"), backend("r5", "z1")]);
        let vip = with_locality_weights(vip, &[("r4", 1), ("r5", 3)]);
        assert_percents(&plan_here(&vip, &[Available; 3]), &[12.5, 12.5, 75.0]);
        // A zone key is more specific than its region's.
        let vip = with_locality_weights(vip, &[("r4", 1), ("r4/z2", 2), ("r5", 1)]);
        assert_percents(&plan_here(&vip, &[Available; 3]), &[25.0, 50.0, 25.0]);
    }

    #[test]
    fn panic_ignores_locality_weights() {
        let vip = vip(50, backends(2, &[("r1", "z2"), ("r1", "z3")]));
        let vip = with_locality_weights(vip, &[("r1/z2", 9), ("r1/z3", 1)]);
        let plan = plan_here(&vip, &[Available, Unhealthy, Unhealthy, Unhealthy]);
        assert!(plan.panic);
        assert_percents(&plan, &[25.0; 4]);
    }

    #[test]
    #[should_panic(expected = "one availability per backend")]
    fn availability_must_cover_every_backend() {
        plan_here(&vip(50, vec![backend("r1", "z1")]), &[]);
    }
}
