//! The pure part of the controller: from the configuration (and, later, health state) to
//! the tables the XDP program should see. No BPF here, so unit tests drive it directly.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::{
    BACKEND_ACTIVE, BACKEND_SERVING, Backend, LIMIT_NEW_FLOWS, LIMIT_PACKETS, LIMIT_SOURCES, SOURCE_TOLERANCE_MIN_NS,
    Settings, TokenBucket, VipAddrKey, VipKey, WATCH_CONNECT, WATCH_HTTP, vip_addr_filter_bit,
};

use super::ids::{IdAllocator, addr_bytes, backend_identity, vip_key};
use super::maglev::{self, MaglevBackend};
use crate::backends::locality::{self, Availability, Plan};
use crate::config::{
    BackendConfig, BalancerConfig, Config, RateLimitConfig, SOURCE_PREFIX_V4, SOURCE_PREFIX_V6, VipConfig,
};

/// Everything the maps should hold, keyed the way the maps are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTables {
    pub settings: Settings,
    pub backends: BTreeMap<u32, Backend>,
    pub vips: BTreeMap<VipKey, DesiredVip>,
    /// Every VIP address, with how many VIPs use it.
    pub vip_addrs: BTreeMap<VipAddrKey, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVip {
    pub name: String,
    pub vip_id: u32,
    pub mode: u8,
    /// What the VIP's Maglev table is built from (built by the sync, one VIP at a time, and
    /// only when these changed).
    pub maglev: MaglevInputs,
    pub limits: RateLimits,
    /// `WATCH_*` bits: the passive health signals the packet path reports for the VIP.
    pub watch: u8,
    /// Which backends serve new flows, from which priority level, in panic or not.
    pub plan: Plan,
}

/// The inputs of a VIP's Maglev table: equal inputs build equal tables, so a VIP whose
/// inputs did not change is not rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevInputs {
    pub table_size: u32,
    pub seed: u32,
    pub backends: Vec<TableBackend>,
}

/// A backend as its VIP's table sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableBackend {
    /// The text its permutation is derived from ([`maglev_identity`]).
    pub identity: String,
    /// Its weight in the VIP's plan (0: no slot).
    pub weight: u32,
    pub id: u32,
}

impl MaglevInputs {
    /// Whether the table has no slot (no backend with a weight).
    pub fn is_empty(&self) -> bool {
        self.backends.iter().all(|b| b.weight == 0)
    }

    /// The table of backend ids; empty when the VIP has no backend to offer.
    pub fn build(&self) -> Vec<u32> {
        let candidates: Vec<MaglevBackend> =
            self.backends.iter().map(|b| MaglevBackend { identity: b.identity.as_bytes(), weight: b.weight }).collect();
        let mut table = maglev::build(&candidates, self.table_size, self.seed);
        for slot in &mut table {
            *slot = self.backends[*slot as usize].id;
        }
        table
    }
}

/// A VIP's rate limits as the packet path reads them (the limit fields of `VipInfo`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// `LIMIT_*` bits of the buckets in force.
    pub flags: u8,
    pub source_prefix_len: u8,
    pub new_flows: TokenBucket,
    pub packets: TokenBucket,
    pub sources: TokenBucket,
}

impl RateLimits {
    fn of(vip: &VipConfig) -> Self {
        let mut limits = RateLimits::default();
        for (limit, flag, bucket) in [
            (&vip.new_flow_limit, LIMIT_NEW_FLOWS, &mut limits.new_flows),
            (&vip.packet_limit, LIMIT_PACKETS, &mut limits.packets),
            (&vip.source_limit, LIMIT_SOURCES, &mut limits.sources),
        ] {
            if let Some(limit) = limit {
                limits.flags |= flag;
                *bucket = token_bucket(limit);
            }
        }
        if limits.flags & LIMIT_SOURCES != 0 {
            limits.sources.tolerance_ns = limits.sources.tolerance_ns.max(SOURCE_TOLERANCE_MIN_NS);
        }
        let (_, _, default_prefix) = if vip.address.is_ipv4() { SOURCE_PREFIX_V4 } else { SOURCE_PREFIX_V6 };
        limits.source_prefix_len = vip.source_limit.as_ref().and_then(|l| l.prefix_len).unwrap_or(default_prefix);
        limits
    }
}

/// Most tokens a CPU takes from a VIP's shared bucket at once.
const MAX_TOKEN_BATCH: u64 = 64;
/// A batch is about this much of the bucket's refill time.
const TOKEN_BATCH_NS: u64 = 1_000_000;

fn token_bucket(limit: &RateLimitConfig) -> TokenBucket {
    let emission_ns = limit.token_ns();
    let burst = limit.burst();
    // Never more than a quarter of the burst, so that CPUs holding batches can't make a
    // full bucket look empty to the others.
    let batch = (TOKEN_BATCH_NS / emission_ns).min(MAX_TOKEN_BATCH).min(burst / 4).max(1);
    TokenBucket { emission_ns, tolerance_ns: emission_ns * burst, batch: batch as u32, _pad: 0 }
}

/// The text a backend's Maglev permutation is derived from: the same on every balancer
/// host, whatever ids the hosts assigned.
fn maglev_identity(backend: &BackendConfig) -> String {
    std::net::SocketAddr::new(backend.address, backend.port).to_string()
}

/// Computes the tables for `config` with every backend taking new flows unless the config
/// drains it, assigning ids through `ids`.
pub fn desired(config: &Config, ids: &mut IdAllocator) -> DesiredTables {
    let by_config =
        |_: &VipConfig, b: &BackendConfig| if b.draining { Availability::Draining } else { Availability::Available };
    desired_with(config, &by_config, ids)
}

/// The settings from `[balancer]` alone (the VIP address filter is the tables' to mark).
pub fn own_settings(balancer: &BalancerConfig) -> Settings {
    let mut settings = Settings {
        hash_seed: balancer.hash_seed,
        nat_port_min: balancer.nat_port_min,
        nat_port_max: balancer.nat_port_max,
        timeouts: balancer.flow_timeouts.to_map(),
        gue_port: balancer.gue_port,
        ..Default::default()
    };
    if let Some(v4) = balancer.ipv4 {
        settings.ipv4 = addr_bytes(IpAddr::V4(v4)).0;
    }
    if let Some(v6) = balancer.ipv6 {
        settings.ipv6 = addr_bytes(IpAddr::V6(v6)).0;
    }
    settings
}

/// Computes the tables for `config` given each backend's `availability` (health, ejection,
/// draining): every VIP serves from its best priority level (`locality::plan`).
pub fn desired_with(
    config: &Config,
    availability: &dyn Fn(&VipConfig, &BackendConfig) -> Availability,
    ids: &mut IdAllocator,
) -> DesiredTables {
    ids.assign(config);
    let balancer = &config.balancer;
    let mut settings = own_settings(balancer);
    let mut backends = BTreeMap::new();
    let mut vips = BTreeMap::new();
    let mut vip_addrs = BTreeMap::new();
    for vip in &config.vips {
        let key = vip_key(vip);
        let available: Vec<Availability> = vip.backends.iter().map(|b| availability(vip, b)).collect();
        let plan = locality::plan(&balancer.region, &balancer.zone, vip, &available);
        let ids_by_index: Vec<u32> =
            vip.backends.iter().map(|b| ids.backend_id(&backend_identity(b)).expect("assigned above")).collect();
        let maglev = MaglevInputs {
            table_size: balancer.maglev_table_size,
            seed: balancer.hash_seed,
            backends: vip
                .backends
                .iter()
                .zip(&ids_by_index)
                .zip(&plan.weights)
                .map(|((b, &id), &weight)| TableBackend { identity: maglev_identity(b), weight, id })
                .collect(),
        };
        for ((backend, &id), &weight) in vip.backends.iter().zip(&ids_by_index).zip(&plan.weights) {
            let (addr, family) = addr_bytes(backend.address);
            let entry =
                backends.entry(id).or_insert(Backend { addr, port: backend.port, family, flags: BACKEND_ACTIVE });
            if weight > 0 {
                entry.flags |= BACKEND_SERVING;
            }
        }
        *vip_addrs.entry(VipAddrKey { addr: key.addr, family: key.family, _pad: [0; 3] }).or_insert(0) += 1;
        let mode = vip.mode.number();
        let vip_id = ids.vip_id(&key).expect("assigned above");
        let watch = match (&vip.outlier_detection, vip.http) {
            (None, _) => 0,
            (Some(_), false) => WATCH_CONNECT,
            (Some(_), true) => WATCH_CONNECT | WATCH_HTTP,
        };
        vips.insert(
            key,
            DesiredVip { name: vip.name.clone(), vip_id, mode, maglev, limits: RateLimits::of(vip), watch, plan },
        );
    }
    // The balancer's own addresses pass the filter too: nat replies come to them.
    let own = [settings.ipv4, settings.ipv6].into_iter().filter(|a| *a != [0; 16]);
    for addr in vip_addrs.keys().map(|key| key.addr).chain(own) {
        settings.mark_vip_addr_bit(vip_addr_filter_bit(&addr));
    }
    DesiredTables { settings, backends, vips, vip_addrs }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const BASE: &str = r#"
[balancer]
interfaces = ["eth0"]
ipv4 = "10.0.0.1"
maglev_table_size = 1009

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80
protocol = "tcp"

[[vip.backend]]
address = "10.0.1.11"
[[vip.backend]]
address = "10.0.1.12"
weight = 3
"#;

    fn tables(text: &str, ids: &mut IdAllocator) -> DesiredTables {
        let config = config::parse(text, "test.toml").expect("valid config");
        desired(&config, ids)
    }

    #[test]
    fn tables_follow_the_config() {
        let mut ids = IdAllocator::new(64, 4096);
        let t = tables(BASE, &mut ids);
        assert_eq!(t.settings.ipv4[..4], [10, 0, 0, 1]);
        assert_eq!(t.backends.len(), 2);
        assert!(t.backends.values().all(|b| b.flags == BACKEND_ACTIVE | BACKEND_SERVING && b.port == 80));
        let vip = t.vips.values().next().expect("one vip");
        let table = vip.maglev.build();
        assert_eq!(table.len(), 1009);
        let heavy = table.iter().filter(|&&id| id == 1).count() as f64 / 1009.0;
        assert!((heavy - 0.75).abs() < 0.02, "weight 3 of 4 got {heavy}");
        assert_eq!(t.vip_addrs.values().copied().collect::<Vec<_>>(), vec![1]);
        // The VIP's address and the balancer's own.
        let bits = [vip_addr_filter_bit(&t.vip_addrs.keys().next().expect("one address").addr), {
            vip_addr_filter_bit(&t.settings.ipv4)
        }];
        assert_eq!(t.settings.vip_addr_filter.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
        assert!(bits.iter().all(|&bit| t.settings.may_be_vip_addr_bit(bit)));
    }

    #[test]
    fn ids_stay_stable_across_reloads_and_are_reused_after_release() {
        let mut ids = IdAllocator::new(64, 4096);
        let first = tables(BASE, &mut ids);
        let without_first = BASE.replacen("[[vip.backend]]\naddress = \"10.0.1.11\"\n", "", 1);
        let second = tables(&without_first, &mut ids);
        assert_eq!(second.backends.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(first.backends[&1], second.backends[&1]);
        let replaced = BASE.replace("10.0.1.11", "10.0.1.99");
        let third = tables(&replaced, &mut ids);
        assert_eq!(third.backends[&0].addr[..4], [10, 0, 1, 99]);
    }

    #[test]
    fn rate_limits_become_token_buckets() {
        let mut ids = IdAllocator::new(64, 4096);
        let vip = |text: &str, ids: &mut IdAllocator| tables(text, ids).vips.into_values().next().expect("one vip");
        assert_eq!(vip(BASE, &mut ids).limits, RateLimits { source_prefix_len: 32, ..Default::default() });
        let limited = BASE.replace(
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\nnew_flow_limit = { quota = 100, burst = 20 }\nsource_limit = { quota = 5, fill_interval = \"100ms\", prefix_len = 24 }\n",
        );
        let limits = vip(&limited, &mut ids).limits;
        assert_eq!(limits.flags, LIMIT_NEW_FLOWS | LIMIT_SOURCES);
        assert_eq!(
            limits.new_flows,
            TokenBucket { emission_ns: 10_000_000, tolerance_ns: 200_000_000, batch: 1, _pad: 0 }
        );
        assert_eq!(
            limits.sources,
            TokenBucket { emission_ns: 20_000_000, tolerance_ns: 100_000_000, batch: 1, _pad: 0 }
        );
        // Per-source buckets run on the coarse clock: at least a tick of tolerance.
        let fast_source =
            BASE.replace("protocol = \"tcp\"\n", "protocol = \"tcp\"\nsource_limit = { quota = 1000, burst = 1 }\n");
        assert_eq!(vip(&fast_source, &mut ids).limits.sources.tolerance_ns, SOURCE_TOLERANCE_MIN_NS);
        // Fast buckets are taken from in batches of about a millisecond, at most 64, at
        // most a quarter of the burst.
        let batch = |quota: u64, burst: u64| {
            let limit = RateLimitConfig {
                quota,
                fill_interval: std::time::Duration::from_secs(1),
                burst: Some(burst),
                prefix_len: None,
            };
            token_bucket(&limit).batch
        };
        assert_eq!((batch(5000, 50), batch(5000, 8), batch(1_000_000, 10_000), batch(100, 100)), (5, 2, 64, 1));
        assert_eq!(limits.source_prefix_len, 24);
        let v6 = BASE
            .replace("10.100.0.1", "fd00::100")
            .replace("10.0.1.1", "fd00::1")
            .replace("ipv4 = \"10.0.0.1\"", "ipv6 = \"fd00::1:1\"");
        assert_eq!(vip(&v6, &mut IdAllocator::new(64, 4096)).limits.source_prefix_len, 64);
    }

    #[test]
    fn tables_serve_from_the_plan_of_each_vip() {
        let mut ids = IdAllocator::new(64, 4096);
        let text = BASE
            .replace("maglev_table_size = 1009\n", "maglev_table_size = 1009\nregion = \"r1\"\nzone = \"z1\"\n")
            .replace("address = \"10.0.1.11\"\n", "address = \"10.0.1.11\"\nzone = \"z1\"\n")
            .replace("address = \"10.0.1.12\"\n", "address = \"10.0.1.12\"\nzone = \"z2\"\n")
            .replace("protocol = \"tcp\"\n", "protocol = \"tcp\"\npanic_threshold = 0\n");
        let config = config::parse(&text, "test.toml").expect("valid config");
        let ids_in = |t: &DesiredTables| -> std::collections::BTreeSet<u32> {
            t.vips.values().next().expect("one vip").maglev.build().into_iter().collect()
        };
        let all = desired(&config, &mut ids);
        assert_eq!(ids_in(&all), [0].into(), "the local zone only");
        let local_down = desired_with(
            &config,
            &|_, b| if b.zone == "z1" { Availability::Unhealthy } else { Availability::Available },
            &mut ids,
        );
        assert_eq!(ids_in(&local_down), [1].into(), "the next zone of the region");
        let vip = local_down.vips.values().next().expect("one vip");
        assert_eq!((vip.plan.level, vip.plan.panic), (Some(1), false));
        // Every backend stays in BACKENDS: flows already on the unhealthy one keep going,
        // but it is no longer marked as serving (a SYN reusing its flow picks again).
        assert_eq!(local_down.backends.len(), 2);
        assert_eq!(local_down.backends[&0].flags, BACKEND_ACTIVE);
        assert_eq!(local_down.backends[&1].flags, BACKEND_ACTIVE | BACKEND_SERVING);
        let none = desired_with(&config, &|_, _| Availability::Ejected, &mut ids);
        let maglev = &none.vips.values().next().expect("one vip").maglev;
        assert!(maglev.is_empty() && maglev.build().is_empty());
    }

    #[test]
    fn a_vip_without_backends_has_an_empty_table() {
        let mut ids = IdAllocator::new(64, 4096);
        let text = BASE.replace("weight = 3", "weight = 0").replace("[[vip.backend]]\naddress = \"10.0.1.11\"\n", "");
        let t = tables(&text, &mut ids);
        let maglev = &t.vips.values().next().expect("one vip").maglev;
        assert!(maglev.is_empty() && maglev.build().is_empty());
    }
}
