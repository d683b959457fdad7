//! The `[balancer]` and `[admin]` tables.

use super::*;

#[test]
fn interfaces_required_and_valid() {
    let text = replace(GOOD, "interfaces = [\"eth0\", \"eth1\"]", "interfaces = []");
    expect(&text, "balancer.interfaces", 3, "at least one interface");
    let text = replace(GOOD, "\"eth1\"", "\"averyveryverylongname\"");
    expect(&text, "balancer.interfaces[1]", 3, "not a valid interface name");
    let text = replace(GOOD, "\"eth1\"", "\"\"");
    expect(&text, "balancer.interfaces[1]", 3, "not a valid interface name");
    let text = replace(GOOD, "\"eth1\"", "\"eth/1\"");
    expect(&text, "balancer.interfaces[1]", 3, "not a valid interface name");
    let text = replace(GOOD, "\"eth1\"", "\"eth0\"");
    expect(&text, "balancer.interfaces[1]", 3, "listed twice");
}

#[test]
fn a_vantage_point_has_dns_and_neither_interfaces_nor_vips() {
    let vantage = include_str!("../../../../config/dns-vantage.toml");
    let c = parse(vantage, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.has_packet_path());
    assert_eq!(c.balancer, BalancerConfig::default());
    let with_vip = format!("{vantage}\n[[vip]]\nname = \"a\"\naddress = \"10.100.0.1\"\nport = 80\n");
    let e = err(&with_vip);
    assert_eq!(e.key, "balancer.interfaces", "{e}");
    assert!(e.message.contains("no [[vip]]"), "{e}");
    let without_dns = replace(GOOD, "interfaces = [\"eth0\", \"eth1\"]", "interfaces = []");
    assert!(parse(&without_dns, "test.toml").is_err());
    assert!(err("[admin]\nlisten = \"127.0.0.1:9180\"\n").message.contains("at least one interface"));
}

#[test]
fn pin_dir_under_bpffs() {
    for bad in ["/tmp/lb", "/sys/fs/bpf", "/sys/fs/bpf/../lb", "sys/fs/bpf/lb", "/sys/fs/bpfx"] {
        let text = replace(GOOD, "zone = \"z1\"\n\n[[vip]]", &format!("zone = \"z1\"\npin_dir = \"{bad}\"\n\n[[vip]]"));
        expect(&text, "balancer.pin_dir", line_with(&text, "pin_dir", 0), "under /sys/fs/bpf");
    }
}

#[test]
fn table_size_prime_and_in_range() {
    for (size, msg) in [("65536", "prime"), ("100", "between"), ("99991", "ok"), ("2000003", "between")] {
        let text = replace(GOOD, "[balancer]", &format!("[balancer]\nmaglev_table_size = {size}"));
        if msg == "ok" {
            assert_eq!(parse(&text, "t").unwrap().balancer.maglev_table_size, 99991);
        } else {
            expect(&text, "balancer.maglev_table_size", 3, msg);
        }
    }
    // More backends in a VIP than slots.
    let mut text = replace(GOOD, "[balancer]", "[balancer]\nmaglev_table_size = 101");
    for i in 0..101 {
        text.push_str(&format!("[[vip.backend]]\naddress = \"fd00:1::{:x}\"\n", i + 100));
    }
    expect(&text, "vip[2].backend", line_with(&text, "[[vip.backend]]", 2), "more than balancer.maglev_table_size");
}

#[test]
fn sizes_at_least_one_and_addressable() {
    for key in ["max_vips", "max_backends", "flow_table_size"] {
        let text = replace(GOOD, "[balancer]", &format!("[balancer]\n{key} = 0"));
        expect(&text, &format!("balancer.{key}"), 3, "at least 1");
    }
    let text = replace(GOOD, "[balancer]", "[balancer]\nmax_vips = 40000");
    expect(&text, "balancer.max_vips", 3, "32 bits");
}

#[test]
fn nat_port_range() {
    let text = replace(GOOD, "[balancer]", "[balancer]\nnat_port_min = 1000");
    expect(&text, "balancer.nat_port_min", 3, "at least 1024");
    let text = replace(GOOD, "[balancer]", "[balancer]\nnat_port_min = 30000\nnat_port_max = 29999");
    expect(&text, "balancer.nat_port_max", 4, "must not be below nat_port_min (30000)");
}

#[test]
fn flow_timeouts_parse_with_defaults_and_are_bounded() {
    let c = parse(GOOD, "t.toml").expect("valid");
    assert_eq!(c.balancer.flow_timeouts, flows::FlowTimeoutsConfig::default());
    assert_eq!(c.balancer.flow_timeouts.tcp_time_wait, Duration::from_secs(60));
    let text = format!("{GOOD}\n[balancer.flow_timeouts]\ntcp_closed = \"200ms\"\nudp = \"2m\"\n");
    let c = parse(&text, "t.toml").expect("valid");
    assert_eq!(
        (c.balancer.flow_timeouts.tcp_closed, c.balancer.flow_timeouts.udp),
        (Duration::from_millis(200), Duration::from_secs(120))
    );
    assert_eq!(c.balancer.flow_timeouts.to_map().tcp_closed_ns, 200_000_000);
    let text = format!("{GOOD}\n[balancer.flow_timeouts]\ntcp_fin = \"1ms\"\n");
    expect(&text, "balancer.flow_timeouts.tcp_fin", line_with(&text, "tcp_fin", 0), "must be between 10ms and 30days");
    let text = format!("{GOOD}\n[balancer.flow_timeouts]\ntcp_finn = \"1s\"\n");
    expect(&text, "balancer.flow_timeouts.tcp_finn", line_with(&text, "tcp_finn", 0), "unknown");
}

#[test]
fn balancer_addresses_must_be_unicast() {
    let text = replace(GOOD, "ipv4 = \"10.0.0.1\"", "ipv4 = \"0.0.0.0\"");
    expect(&text, "balancer.ipv4", 4, "unspecified");
    let text = replace(GOOD, "ipv6 = \"fd00::1\"", "ipv6 = \"ff02::1\"");
    expect(&text, "balancer.ipv6", 5, "multicast");
}

#[test]
fn admin_listens_on_loopback_unless_a_token_is_set() {
    let c = parse(GOOD, "t").unwrap();
    assert_eq!(c.admin, AdminConfig { listen: "127.0.0.1:9180".parse().unwrap(), token: None });
    let open = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9180\"\n");
    let line = open.lines().count();
    expect(&open, "admin.listen", line, "not a loopback address");
    let short = format!("{GOOD}\n[admin]\ntoken = \"abc\"\n");
    expect(&short, "admin.token", short.lines().count(), "at least 16 characters");
    let good = format!("{GOOD}\n[admin]\nlisten = \"[::]:9000\"\ntoken = \"0123456789abcdef\"\n");
    assert_eq!(parse(&good, "t").unwrap().admin.token.as_deref(), Some("0123456789abcdef"));
}
