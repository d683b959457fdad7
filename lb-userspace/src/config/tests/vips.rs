//! VIPs, their backends, rate limits and health settings.

use super::*;

#[test]
fn vip_names_unique_and_plain() {
    let text = replace(GOOD, "name = \"dns\"", "name = \"web\"");
    let e = expect(&text, "vip[1].name", line_with(&text, "name = \"web\"", 1), "duplicate VIP name \"web\"");
    assert!(e.message.contains(&format!("vip[0], line {}", line_with(&text, "name = \"web\"", 0))), "{e}");
    for bad in ["", "a b", "web/1"] {
        let text = replace(GOOD, "name = \"dns\"", &format!("name = \"{bad}\""));
        expect(&text, "vip[1].name", line_with(&text, &format!("name = \"{bad}\""), 0), "use letters, digits");
    }
}

#[test]
fn vip_service_unique() {
    let text = replace(
        GOOD,
        "address = \"10.100.0.2\"\nport = 53\nprotocol = \"udp\"",
        "address = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"",
    );
    expect(
        &text,
        "vip[1].address",
        line_with(&text, "address = \"10.100.0.1\"", 1),
        "10.100.0.1:80/tcp is already served by vip[0] (\"web\")",
    );
    // Same address and port with another protocol is fine.
    let text = replace(GOOD, "address = \"10.100.0.2\"\nport = 53", "address = \"10.100.0.1\"\nport = 80");
    let text = replace(&text, "port = 53, weight", "weight");
    let c = parse(&text, "t").unwrap();
    assert_eq!(c.vips[1].backends[1].port, 80);
}

#[test]
fn vip_port_not_zero() {
    let text = replace(GOOD, "port = 443", "port = 0");
    expect(&text, "vip[2].port", line_with(&text, "port = 0", 0), "port must be 1..65535");
    let text = replace(GOOD, "port = 8080", "port = 0");
    expect(&text, "vip[0].backend[0].port", line_with(&text, "port = 0", 0), "leave it out");
}

#[test]
fn vip_address_checks() {
    let text = replace(GOOD, "address = \"10.100.0.1\"", "address = \"224.0.0.1\"");
    expect(&text, "vip[0].address", line_with(&text, "224.0.0.1", 0), "multicast");
    let text = replace(GOOD, "address = \"10.100.0.1\"", "address = \"10.0.0.1\"");
    expect(&text, "vip[0].address", line_with(&text, "address = \"10.0.0.1\"", 0), "balancer's own address");
}

#[test]
fn too_many_vips() {
    let text = replace(GOOD, "[balancer]", "[balancer]\nmax_vips = 2");
    expect(&text, "vip[2]", line_with(&text, "[[vip]]", 2), "3 VIPs configured, more than balancer.max_vips (2)");
}

#[test]
fn too_many_backends() {
    // 5 distinct backends (address, port) in GOOD.
    let text = replace(GOOD, "[balancer]", "[balancer]\nmax_backends = 3");
    expect(&text, "vip[1].backend[1]", line_with(&text, "10.0.2.12", 0), "more than balancer.max_backends (3)");
    let text = replace(GOOD, "[balancer]", "[balancer]\nmax_backends = 5");
    parse(&text, "t").unwrap();
    // The same backend in two VIPs counts once.
    let text = replace(GOOD, "[balancer]", "[balancer]\nmax_backends = 5");
    let text = format!(
        "{text}\n[[vip]]\nname = \"web2\"\naddress = \"10.100.0.9\"\nport = 8080\n[[vip.backend]]\naddress = \"10.0.1.11\"\n"
    );
    parse(&text, "t").unwrap();
}

#[test]
fn backend_family_matches_vip() {
    let text = replace(GOOD, "address = \"10.0.1.12\"", "address = \"fd00:1::12\"");
    expect(
        &text,
        "vip[0].backend[1].address",
        line_with(&text, "fd00:1::12", 0),
        "IPv6 backend fd00:1::12 for an IPv4 VIP",
    );
    let text = replace(GOOD, "address = \"fd00:1::11\"", "address = \"10.0.1.11\"");
    expect(&text, "vip[2].backend[0].address", line_with(&text, "address = \"10.0.1.11\"", 1), "IPv4 backend");
}

#[test]
fn backend_address_unicast() {
    let text = replace(GOOD, "address = \"10.0.1.12\"", "address = \"0.0.0.0\"");
    expect(&text, "vip[0].backend[1].address", line_with(&text, "0.0.0.0", 0), "unspecified");
}

#[test]
fn dsr_backends_use_vip_port() {
    let text = replace(GOOD, "port = 53, weight = 0", "port = 5353, weight = 0");
    expect(
        &text,
        "vip[1].backend[1].port",
        line_with(&text, "5353", 0),
        "dsr backends must use the VIP's port 53 (got 5353)",
    );
    // Block-style tables too, as in the documented example.
    let text = format!(
        "{GOOD}\n[[vip]]\nname = \"d2\"\naddress = \"10.100.0.3\"\nport = 80\nmode = \"dsr\"\n\n[[vip.backend]]\naddress = \"10.0.3.1\"\nport = 8080\n"
    );
    let e = expect(&text, "vip[3].backend[0].port", line_with(&text, "port = 8080", 1), "(got 8080)");
    assert_eq!(
        e.to_string(),
        format!(
            "test.toml:{}: vip[3].backend[0].port: dsr backends must use the VIP's port 80 (got 8080)",
            e.line.unwrap()
        )
    );
}

#[test]
fn backend_weight_range() {
    let text = replace(GOOD, "weight = 2", "weight = 65536");
    expect(&text, "vip[0].backend[0].weight", line_with(&text, "65536", 0), "0..=65535");
}

#[test]
fn duplicate_backend_in_vip() {
    // 10.0.1.12 defaults to port 80; make the first backend the same.
    let text = replace(GOOD, "address = \"10.0.1.11\"\nport = 8080", "address = \"10.0.1.12\"\nport = 80");
    let e =
        expect(&text, "vip[0].backend[1].address", line_with(&text, "10.0.1.12", 1), "duplicate backend 10.0.1.12:80");
    assert!(e.message.contains(&format!("also backend[0], line {}", line_with(&text, "[[vip.backend]]", 0))), "{e}");
    // Same address on another port is a different backend.
    let text = replace(GOOD, "address = \"10.0.1.11\"", "address = \"10.0.1.12\"");
    parse(&text, "t").unwrap();
}

#[test]
fn nat_vip_needs_balancer_address_of_its_family() {
    let text = replace(GOOD, "ipv4 = \"10.0.0.1\"\n", "");
    expect(&text, "vip[0].address", line_with(&text, "10.100.0.1", 0), "needs balancer.ipv4");
    let text = replace(GOOD, "ipv6 = \"fd00::1\"\n", "");
    expect(&text, "vip[2].address", line_with(&text, "fd00:100::1", 0), "needs balancer.ipv6");
    // dsr VIPs do not need it.
    let text = "[balancer]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"a\"\naddress = \"10.100.0.1\"\nport = 80\nmode = \"dsr\"\n";
    parse(text, "t").unwrap();
}

#[test]
fn rate_limits_parse_with_defaults() {
    let text = replace(
        GOOD,
        "port = 80\n",
        "port = 80\nnew_flow_limit = { quota = 100 }\npacket_limit = { quota = 5, fill_interval = \"10ms\", burst = 50 }\n\n[vip.source_limit]\nquota = 10\nprefix_len = 24\n",
    );
    let c = parse(&text, "t").unwrap();
    let web = &c.vips[0];
    let flows = web.new_flow_limit.as_ref().unwrap();
    assert_eq!(
        (flows.quota, flows.fill_interval, flows.burst(), flows.token_ns()),
        (100, Duration::from_secs(1), 100, 10_000_000)
    );
    let packets = web.packet_limit.as_ref().unwrap();
    assert_eq!((packets.burst(), packets.token_ns()), (50, 2_000_000));
    assert_eq!(web.source_limit.as_ref().unwrap().prefix_len, Some(24));
    assert_eq!(c.vips[1].new_flow_limit, None);
    assert_eq!(c.balancer.source_table_size, 65536);
}

#[test]
fn rate_limits_validated() {
    let with = |limit: &str| replace(GOOD, "port = 80\n", &format!("port = 80\n{limit}\n"));
    let line = line_with(GOOD, "port = 80", 0) + 1;
    expect(&with("new_flow_limit = { quota = 0 }"), "vip[0].new_flow_limit.quota", line, "at least 1");
    expect(&with("source_limit = { quota = 1, burst = 0 }"), "vip[0].source_limit.burst", line, "at least 1");
    expect(
        &with("packet_limit = { quota = 1, fill_interval = \"2h\" }"),
        "vip[0].packet_limit.fill_interval",
        line,
        "between 1ms and 1h (got 2h)",
    );
    expect(
        &with("packet_limit = { quota = 100000000 }"),
        "vip[0].packet_limit.quota",
        line,
        "enforces accurately (20000000 per second)",
    );
    expect(&with("packet_limit = { quota = 1, burst = 100000 }"), "vip[0].packet_limit.burst", line, "more than 24h");
    expect(
        &with("source_limit = { quota = 1, prefix_len = 33 }"),
        "vip[0].source_limit.prefix_len",
        line,
        "8..=32 for an IPv4 VIP (got 33)",
    );
    expect(
        &with("new_flow_limit = { quota = 1, prefix_len = 24 }"),
        "vip[0].new_flow_limit.prefix_len",
        line,
        "only source_limit",
    );
    let e = err(&with("new_flow_limit = { quota = 1, fill_interval = \"soon\" }"));
    assert_eq!((e.key.as_str(), e.line), ("vip[0].new_flow_limit.fill_interval", Some(line)), "{e}");
    let e = err(&with("new_flow_limit = { quota = 1, rate = 2 }"));
    assert_eq!((e.key.as_str(), e.line), ("vip[0].new_flow_limit.rate", Some(line)), "{e}");
    let v6 = replace(GOOD, "port = 443\n", "port = 443\nsource_limit = { quota = 1, prefix_len = 16 }\n");
    expect(
        &v6,
        "vip[2].source_limit.prefix_len",
        line_with(GOOD, "port = 443", 0) + 1,
        "32..=128 for an IPv6 VIP (got 16)",
    );
}

#[test]
fn health_and_outlier_settings_parse_with_defaults() {
    let text = replace(
        GOOD,
        "port = 80\n",
        "port = 80\nhttp = true\nfailover_regions = [\"r3\", \"r2\"]\nhealth_check = { type = \"http\", path = \"/healthz\", expected_statuses = [200, \"300-302\"] }\noutlier_detection = { consecutive_5xx = 3 }\n",
    );
    let c = parse(&text, "t").unwrap();
    let web = &c.vips[0];
    assert!(web.http);
    assert_eq!(web.panic_threshold, 50);
    assert_eq!(web.failover_regions, ["r3", "r2"]);
    let check = web.health_check.as_ref().unwrap();
    assert_eq!(check.kind, HealthCheckKind::Http);
    assert_eq!(
        (check.interval, check.timeout, check.jitter),
        (Duration::from_secs(5), Duration::from_secs(1), Duration::ZERO)
    );
    assert_eq!((check.healthy_threshold, check.unhealthy_threshold, check.port), (2, 3, None));
    assert_eq!(check.expected_statuses, [StatusRange { from: 200, to: 200 }, StatusRange { from: 300, to: 302 }]);
    let outlier = web.outlier_detection.as_ref().unwrap();
    assert_eq!((outlier.consecutive_5xx, outlier.consecutive_local_origin_failures), (3, 5));
    assert!(!outlier.split_external_local_origin_errors && outlier.uneject_on_healthy_check);
    assert_eq!(
        (outlier.interval, outlier.base_ejection_time, outlier.max_ejection_time, outlier.max_ejection_percent),
        (Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(300), 10)
    );
    // Envoy's defaults for the interval detectors.
    assert_eq!(
        (outlier.success_rate_minimum_hosts, outlier.success_rate_request_volume, outlier.success_rate_stdev_factor),
        (5, 100, 1900)
    );
    assert_eq!(
        (
            outlier.failure_percentage_threshold,
            outlier.failure_percentage_minimum_hosts,
            outlier.failure_percentage_request_volume
        ),
        (85, 5, 50)
    );
    assert_eq!((outlier.enforcing_success_rate, outlier.enforcing_failure_percentage), (100, 0));
    assert!(!web.backends[0].draining);
}

#[test]
fn health_and_outlier_settings_validated() {
    let with = |extra: &str| replace(GOOD, "port = 80\n", &format!("port = 80\n{extra}\n"));
    let line = line_with(GOOD, "port = 80", 0) + 1;
    expect(&with("panic_threshold = 101"), "vip[0].panic_threshold", line, "0..=100");
    expect(
        &with("health_check = { type = \"tcp\", timeout = \"6s\" }"),
        "vip[0].health_check.timeout",
        line,
        "at most the interval",
    );
    expect(
        &with("health_check = { type = \"tcp\", unhealthy_threshold = 0 }"),
        "vip[0].health_check.unhealthy_threshold",
        line,
        "at least 1",
    );
    expect(
        &with("health_check = { type = \"http\", path = \"healthz\" }"),
        "vip[0].health_check.path",
        line,
        "start with '/'",
    );
    let e = err(&with("health_check = { type = \"http\", expected_statuses = [\"299-200\"] }"));
    assert_eq!((e.key.as_str(), e.line), ("vip[0].health_check.expected_statuses", Some(line)), "{e}");
    let e = err(&with("health_check = { type = \"icmp\" }"));
    assert_eq!((e.key.as_str(), e.line), ("vip[0].health_check.type", Some(line)), "{e}");
    expect(
        &with("outlier_detection = { max_ejection_time = \"1s\" }"),
        "vip[0].outlier_detection.max_ejection_time",
        line,
        "at least base_ejection_time",
    );
    expect(
        &with("outlier_detection = { enforcing_failure_percentage = 101 }"),
        "vip[0].outlier_detection.enforcing_failure_percentage",
        line,
        "0..=100",
    );
    expect(&with("failover_regions = [\"r2\", \"r2\"]"), "vip[0].failover_regions[1]", line, "repeated region");
    let dsr_line = line_with(GOOD, "mode = \"dsr\"", 0) + 1;
    let dsr = replace(GOOD, "mode = \"dsr\"\n", "mode = \"dsr\"\noutlier_detection = {}\n");
    expect(&dsr, "vip[1].outlier_detection", dsr_line, "needs nat mode");
}
