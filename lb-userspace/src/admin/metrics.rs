//! `/metrics`: the status snapshot in the Prometheus (OpenMetrics) text format, written
//! with `prometheus-client`. The packet path's counters are per CPU in the maps and summed
//! by the dataplane; they are exposed as counters (the text encoder adds `_total`).
//! Ejection metrics carry a service mesh's names and meanings.

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use lb_common::{BackendStats, Counters, VipStats};

use crate::api::status::Status;
use crate::backends::outlier::Detector;

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics of one status snapshot, in the text format.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(status.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

#[derive(Debug)]
struct Snapshot(Status);

type Labels = Vec<(&'static str, String)>;

/// One metric family: its samples, each a label set and a value.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, i64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: MetricType) -> Self {
        Self { name, help, kind, samples: Vec::new() }
    }

    fn add(&mut self, labels: Labels, value: impl TryInto<i64>) {
        self.samples.push((labels, value.try_into().unwrap_or(i64::MAX)));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, self.kind)?;
        match self.samples.as_slice() {
            // A single sample without labels is written bare, not as `name{} value`.
            [(labels, value)] if labels.is_empty() => self.encode_value(*value, metric),
            samples => {
                samples.iter().try_for_each(|(labels, value)| self.encode_value(*value, metric.encode_family(labels)?))
            }
        }
    }

    fn encode_value(&self, value: i64, sample: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.kind {
            MetricType::Counter => ConstCounter::new(value as u64).encode(sample),
            _ => ConstGauge::new(value).encode(sample),
        }
    }
}

fn counter(name: &'static str, help: &'static str) -> Family {
    Family::new(name, help, MetricType::Counter)
}

fn gauge(name: &'static str, help: &'static str) -> Family {
    Family::new(name, help, MetricType::Gauge)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in families(&self.0) {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

fn families(status: &Status) -> Vec<Family> {
    let mut all = process_families(status);
    all.extend(vip_families(status));
    all.extend(backend_families(status));
    all.extend(counter_families(&[(vec![], status.global)]));
    if let Some(dns) = &status.dns {
        all.extend(dns_families(dns));
    }
    if let Some(bgp) = &status.bgp {
        all.extend(bgp_families(bgp));
    }
    all
}

/// The controller's own: build, config generation, last reload, local check failures.
fn process_families(status: &Status) -> Vec<Family> {
    let mut info = gauge("lb_build_info", "The running lb's version (value 1).");
    info.add(vec![("version", status.version.clone())], 1);
    let mut generation = gauge("lb_config_generation", "Configs applied since start (1 = the first).");
    generation.add(vec![], status.generation as i64);
    let mut reload = gauge("lb_last_reload_applied", "1 if the last reload was applied, 0 if its config was refused.");
    if let Some(r) = &status.last_reload {
        reload.add(vec![], r.applied as i64);
    }
    let mut local_failures = counter(
        "lb_health_check_local_failures",
        "Health checks that failed for a local reason (file descriptors, buffers, memory, ports), not counted against the backend.",
    );
    local_failures.add(vec![], status.health_check_local_failures);
    vec![info, generation, reload, local_failures]
}

/// Per VIP: priority level, panic, outlier ejections, live flows, and the packet path's
/// counters.
fn vip_families(status: &Status) -> Vec<Family> {
    let mut level =
        gauge("lb_vip_priority_level", "Priority level serving new flows (0 = local zone); -1 when none can.");
    let mut panic = gauge("lb_vip_panic", "1 while the VIP balances over all its backends for lack of available ones.");
    let mut level_load =
        gauge("lb_vip_level_load", "Percent of the VIP's new flows each priority level takes (Envoy's priority load).");
    let mut level_health =
        gauge("lb_vip_level_health", "A priority level's health: overprovisioning factor x available share, max 100.");
    let mut ejections_active = gauge("lb_outlier_ejections_active", "Backends of the VIP ejected now.");
    let mut ejections_enforced = counter("lb_outlier_ejections_enforced", "Ejections enforced.");
    let mut ejections_overflow =
        counter("lb_outlier_ejections_overflow", "Ejections refused because max_ejection_percent was reached.");
    let mut detected = Detector::ALL
        .map(|d| counter(detector_metrics(d).0, "Outliers the detector found (ejected, refused or not enforced)."));
    let mut enforced = Detector::ALL.map(|d| counter(detector_metrics(d).1, "Ejections the detector enforced."));
    let mut vip_flows = gauge("lb_vip_flows", "Live flows of the VIP in the flow table, by connection state.");
    for vip in &status.vips {
        let v = || vec![("vip", vip.name.clone())];
        level.add(v(), vip.level.map_or(-1, |l| l as i64));
        for (state, n) in vip.flows.named() {
            vip_flows.add(vec![("vip", vip.name.clone()), ("state", state.into())], n);
        }
        panic.add(v(), vip.panic as i64);
        for l in &vip.levels {
            let at = || vec![("vip", vip.name.clone()), ("level", l.level.to_string())];
            level_load.add(at(), l.load);
            level_health.add(at(), l.health);
        }
        if let Some(o) = &vip.outlier {
            ejections_active.add(v(), o.ejections_active);
            ejections_enforced.add(v(), o.ejections_enforced_total);
            ejections_overflow.add(v(), o.ejections_overflow_total);
            for (family, n) in
                detected.iter_mut().zip(o.detected_total).chain(enforced.iter_mut().zip(o.enforced_total))
            {
                family.add(v(), n);
            }
        }
    }
    let mut all = vec![
        level,
        panic,
        level_load,
        level_health,
        ejections_active,
        ejections_enforced,
        ejections_overflow,
        vip_flows,
    ];
    all.extend(detected.into_iter().chain(enforced));
    let vip_counters: Vec<(Labels, VipStats)> =
        status.vips.iter().map(|vip| (vec![("vip", vip.name.clone())], vip.counters)).collect();
    all.extend(counter_families(&vip_counters));
    all
}

/// Envoy's per-detector stats: (detected, enforced), named by Envoy's suffix.
fn detector_metrics(detector: Detector) -> (&'static str, &'static str) {
    macro_rules! named {
        ($suffix:literal) => {
            (concat!("lb_outlier_ejections_detected_", $suffix), concat!("lb_outlier_ejections_enforced_", $suffix))
        };
    }
    match detector {
        Detector::Consecutive5xx => named!("consecutive_5xx"),
        Detector::ConsecutiveLocalOrigin => named!("consecutive_local_origin_failure"),
        Detector::SuccessRate => named!("success_rate"),
        Detector::FailurePercentage => named!("failure_percentage"),
        Detector::LocalOriginSuccessRate => named!("local_origin_success_rate"),
        Detector::LocalOriginFailurePercentage => named!("local_origin_failure_percentage"),
    }
}

/// Per backend of a VIP: state and serving weight; per backend address and port, whichever
/// VIPs it serves: live flows, nat ports and the packet path's counters.
fn backend_families(status: &Status) -> Vec<Family> {
    let mut state =
        gauge("lb_backend_state", "1 for the backend's state in the VIP: available, unhealthy, ejected or draining.");
    let mut serving_weight =
        gauge("lb_backend_serving_weight", "The backend's weight in the VIP's table now (0: no new flows).");
    let mut open_flows = gauge(
        "lb_vip_backend_open_flows",
        "Connections of the VIP on the backend still open (not closed or in TIME_WAIT): what a drain waits for.",
    );
    let mut backend_flows = gauge("lb_backend_flows", "Live flows on the backend, over all its VIPs.");
    let mut backend_nat_ports =
        gauge("lb_backend_nat_ports", "nat source ports held towards the backend (open connections and their guard).");
    let mut by_backend = BTreeMap::new();
    for vip in &status.vips {
        for b in &vip.backends {
            let labels = |extra: Option<(&'static str, &str)>| {
                let mut l = vec![("vip", vip.name.clone()), ("backend", b.address.to_string())];
                l.extend(extra.map(|(k, v)| (k, v.to_owned())));
                l
            };
            for s in ["available", "unhealthy", "ejected", "draining"] {
                state.add(labels(Some(("state", s))), (b.state == s) as i64);
            }
            serving_weight.add(labels(None), b.serving_weight);
            open_flows.add(labels(None), b.open_flows);
            by_backend.insert(b.address, (b.counters, b.flows));
        }
    }
    let mut backend_counters: Vec<(Labels, BackendStats)> = Vec::new();
    for (address, (counters, flows)) in by_backend {
        let labels = vec![("backend", address.to_string())];
        backend_flows.add(labels.clone(), flows.flows);
        backend_nat_ports.add(labels.clone(), flows.nat_ports);
        backend_counters.push((labels, counters));
    }
    let mut nat_ports_per_backend = gauge(
        "lb_nat_ports_per_backend",
        "nat source ports a backend has (the size of nat_port_min..=nat_port_max): lb_backend_nat_ports' ceiling.",
    );
    nat_ports_per_backend.add(vec![], status.nat_ports_per_backend);
    let mut all = vec![state, serving_weight, open_flows, backend_flows, backend_nat_ports, nat_ports_per_backend];
    all.extend(counter_families(&backend_counters));
    all
}

/// The metric families of counters declared with `lb_common::counters!`: a sample per
/// member and labelled item.
fn counter_families<T: Counters>(items: &[(Labels, T)]) -> Vec<Family> {
    let mut families: Vec<Family> = Vec::new();
    for (i, c) in T::COUNTERS.iter().enumerate() {
        if !families.iter().any(|f| f.name == c.family) {
            families.push(counter(c.family, T::family_help(c.family)));
        }
        let family = families.iter_mut().find(|f| f.name == c.family).expect("pushed above");
        for (labels, counters) in items {
            let mut labels = labels.clone();
            labels.extend(c.label.map(|(k, v)| (k, v.to_owned())));
            family.add(labels, counters.values()[i]);
        }
    }
    families
}

fn dns_families(dns: &crate::api::dns::DnsStatus) -> Vec<Family> {
    let mut up = gauge(
        "lb_dns_target_up",
        "1 while the target is in the answers (fewer than a quorum of vantage points see it down).",
    );
    let mut view =
        gauge("lb_dns_target_view", "1 if the vantage point sees the target up, 0 if down (fresh views only).");
    let mut transitions = counter("lb_dns_target_transitions", "Times the quorum's decision about the target changed.");
    for t in &dns.targets {
        up.add(vec![("target", t.name.clone())], t.up as i64);
        transitions.add(vec![("target", t.name.clone())], t.transitions);
        for (vantage, seen_up) in &t.views {
            view.add(vec![("target", t.name.clone()), ("vantage", vantage.clone())], *seen_up as i64);
        }
    }
    let mut state =
        gauge("lb_dns_policy_state", "1 for what the policy record answers with now: primary, backup or all_down.");
    let mut answers = counter("lb_dns_policy_answers", "Answers of the policy record, by where they came from.");
    for p in &dns.policies {
        for s in ["primary", "backup", "all_down"] {
            state.add(vec![("record", p.record.clone()), ("state", s.into())], (p.state == s) as i64);
        }
        for (source, n) in &p.answers {
            answers.add(vec![("record", p.record.clone()), ("source", source.clone())], *n);
        }
    }
    let mut responses = counter("lb_dns_responses", "DNS responses sent, by response code.");
    for (code, n) in &dns.responses {
        responses.add(vec![("code", code.clone())], *n);
    }
    let mut truncated = counter("lb_dns_truncated_responses", "UDP responses truncated (TC set) for size.");
    truncated.add(vec![], dns.truncated);
    let mut tcp_refused =
        counter("lb_dns_tcp_refused_connections", "DNS TCP connections closed at once: at the limit.");
    tcp_refused.add(vec![], dns.tcp_refused);
    vec![up, view, transitions, state, answers, responses, truncated, tcp_refused]
}

fn bgp_families(bgp: &crate::api::bgp::BgpStatus) -> Vec<Family> {
    let mut bird_up = gauge("lb_bgp_bird_up", "1 if BIRD answered on its control socket when last asked.");
    bird_up.add(vec![], bgp.bird_up as i64);
    let mut in_sync = gauge("lb_bgp_in_sync", "1 if BIRD has taken the latest announcements, 0 while lb retries.");
    in_sync.add(vec![], bgp.in_sync as i64);
    let mut announced = gauge("lb_bgp_announced_prefixes", "VIP prefixes this host wants announced.");
    announced.add(vec![], bgp.announced.len() as i64);
    let mut host = gauge("lb_bgp_host_state", "1 for the host's state: serving, drained or stopping.");
    for state in ["serving", "drained", "stopping"] {
        host.add(vec![("state", state.into())], (bgp.host.as_str() == state) as i64);
    }
    let mut failures =
        counter("lb_bgp_configure_failures", "Attempts to have BIRD take the announcements that failed.");
    failures.add(vec![], bgp.configure_failures);
    let mut session = gauge("lb_bgp_session_established", "1 while the BGP session to the peer is established.");
    for s in &bgp.sessions {
        session.add(vec![("peer", s.name.clone())], s.info.starts_with("Established") as i64);
    }
    vec![bird_up, in_sync, announced, host, failures, session]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::{BackendStatus, ReloadOutcome, VipStatus};
    use lb_common::{BackendStats, Counters, GlobalStats, VipStats};

    /// Every metric family is documented in the README's metrics list.
    #[test]
    fn the_readme_names_every_family() {
        let readme = include_str!("../../../README.md");
        let families = VipStats::COUNTERS.iter().chain(BackendStats::COUNTERS).chain(GlobalStats::COUNTERS);
        for c in families {
            assert!(readme.contains(&format!("`{}`", c.family)), "README.md does not mention `{}`", c.family);
        }
        let text = render(&full_status());
        let rendered: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(rendered.len() > 20, "{text}");
        for family in rendered {
            assert!(readme.contains(&format!("`{family}`")), "README.md does not mention `{family}`");
        }
    }

    /// A snapshot with every kind of metric in it.
    fn full_status() -> Status {
        Status {
            version: "0.1.0".into(),
            generation: 3,
            last_reload: Some(ReloadOutcome { applied: false, message: "lb.toml:3: vip[0].port: ...".into() }),
            vips: vec![VipStatus {
                name: "web".into(),
                address: "10.100.0.1".parse().unwrap(),
                port: 80,
                protocol: "tcp".into(),
                mode: "nat".into(),
                level: Some(1),
                panic: false,
                levels: vec![crate::backends::locality::LevelShare { level: 1, health: 70, load: 100, panic: false }],
                counters: VipStats { packets: 10, new_flows: 4, rate_limited_sources: 2, ..Default::default() },
                flows: crate::flows::StateCounts([1, 2, 0, 0, 3, 0]),
                outlier: Some(crate::backends::outlier::OutlierStats {
                    ejections_active: 1,
                    ejections_enforced_total: 2,
                    ..Default::default()
                }),
                backends: vec![BackendStatus {
                    address: "10.0.1.1:8080".parse().unwrap(),
                    region: "r1".into(),
                    zone: "z2".into(),
                    level: 1,
                    weight: 1,
                    serving_weight: 0,
                    state: "ejected".into(),
                    counters: BackendStats { new_flows: 4, connect_failures: 3, ..Default::default() },
                    flows: crate::flows::BackendFlows { flows: 6, nat_ports: 9 },
                    open_flows: 2,
                }],
            }],
            global: GlobalStats { drop_fragment: 7, ..Default::default() },
            dns: Some(crate::api::dns::DnsStatus {
                vantage: "eu".into(),
                quorum: 2,
                targets: vec![crate::api::dns::TargetStatus {
                    name: "site-a".into(),
                    address: "10.100.0.1".parse().unwrap(),
                    up: false,
                    views: [("eu".to_owned(), false), ("us".to_owned(), false)].into(),
                    transitions: 1,
                }],
                policies: vec![crate::api::dns::PolicyStatus {
                    record: "www.example.com. A".into(),
                    state: "backup".into(),
                    trickle_ratio: 0.0,
                    trickle_override: None,
                    answers: [("primary".to_owned(), 5), ("backup".to_owned(), 7)].into(),
                }],
                responses: [("noerror".to_owned(), 12), ("refused".to_owned(), 1)].into(),
                truncated: 0,
                tcp_refused: 0,
            }),
            bgp: None,
            health_check_local_failures: 5,
            nat_ports_per_backend: 40000,
        }
    }

    /// `lb_nat_ports_per_backend` is the configured range's size: the ceiling alerts divide
    /// `lb_backend_nat_ports` by.
    #[test]
    fn nat_ports_per_backend_is_the_configured_range() {
        let text = "[balancer]\ninterfaces = [\"eth0\"]\nnat_port_min = 30000\nnat_port_max = 30999\n";
        let config = crate::config::parse(text, "test.toml").unwrap();
        let status = Status { nat_ports_per_backend: config.balancer.nat_ports_per_backend(), ..full_status() };
        assert!(render(&status).lines().any(|l| l == "lb_nat_ports_per_backend 1000"), "{}", render(&status));
    }

    #[test]
    fn metrics_carry_the_snapshot() {
        let status = full_status();
        let text = render(&status);
        for line in [
            "lb_build_info{version=\"0.1.0\"} 1",
            "lb_config_generation 3",
            "lb_last_reload_applied 0",
            "lb_health_check_local_failures_total 5",
            "lb_vip_packets_total{vip=\"web\"} 10",
            "lb_vip_new_flows_total{vip=\"web\"} 4",
            "lb_vip_rate_limited_packets_total{vip=\"web\",limit=\"source_limit\"} 2",
            "lb_vip_priority_level{vip=\"web\"} 1",
            "lb_vip_level_load{vip=\"web\",level=\"1\"} 100",
            "lb_vip_level_health{vip=\"web\",level=\"1\"} 70",
            "lb_outlier_ejections_active{vip=\"web\"} 1",
            "lb_outlier_ejections_enforced_total{vip=\"web\"} 2",
            "lb_backend_state{vip=\"web\",backend=\"10.0.1.1:8080\",state=\"ejected\"} 1",
            "lb_backend_state{vip=\"web\",backend=\"10.0.1.1:8080\",state=\"available\"} 0",
            "lb_backend_connect_failures_total{backend=\"10.0.1.1:8080\"} 3",
            "lb_vip_flows{vip=\"web\",state=\"established\"} 2",
            "lb_vip_flows{vip=\"web\",state=\"time_wait\"} 3",
            "lb_backend_flows{backend=\"10.0.1.1:8080\"} 6",
            "lb_vip_backend_open_flows{vip=\"web\",backend=\"10.0.1.1:8080\"} 2",
            "lb_backend_nat_ports{backend=\"10.0.1.1:8080\"} 9",
            "lb_nat_ports_per_backend 40000",
            "lb_dropped_packets_total{reason=\"fragment\"} 7",
            "lb_dns_target_up{target=\"site-a\"} 0",
            "lb_dns_target_view{target=\"site-a\",vantage=\"us\"} 0",
            "lb_dns_target_transitions_total{target=\"site-a\"} 1",
            "lb_dns_policy_state{record=\"www.example.com. A\",state=\"backup\"} 1",
            "lb_dns_policy_answers_total{record=\"www.example.com. A\",source=\"backup\"} 7",
            "lb_dns_responses_total{code=\"refused\"} 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }
    }
}
