//! The encapsulated modes (`ipip`, `gue`): their families, outer sources, ports and the
//! settings they refuse.

use super::*;

/// GOOD's dns VIP (vip[1], dsr) in `mode`, with its backends replaced by `backends`.
fn encapsulated(mode: &str, backends: &str) -> String {
    let text = replace(GOOD, "mode = \"dsr\"", &format!("mode = \"{mode}\""));
    replace(&text, "  { address = \"10.0.2.11\" },\n  { address = \"10.0.2.12\", port = 53, weight = 0 },\n", backends)
}

#[test]
fn encapsulated_modes_carry_ipv4_in_ipv4_and_ipv6_and_ipv6_in_ipv6() {
    let text = encapsulated("ipip", "  { address = \"10.0.2.11\" },\n  { address = \"fd00:3::11\" },\n");
    let c = parse(&text, "t").unwrap();
    assert_eq!((c.vips[1].mode, c.vips[1].mode.number()), (ForwardingMode::Ipip, lb_common::MODE_IPIP));
    assert_eq!(c.balancer.gue_port, 6080);
    let text = replace(&text, "mode = \"ipip\"", "mode = \"gue\"");
    let text = replace(&text, "zone = \"z1\"\n", "zone = \"z1\"\ngue_port = 7000\n");
    let c = parse(&text, "t").unwrap();
    assert_eq!((c.vips[1].mode.number(), c.balancer.gue_port), (lb_common::MODE_GUE, 7000));
    // IPv6 in IPv6.
    let text = replace(GOOD, "port = 443\n", "port = 443\nmode = \"gue\"\n");
    let text = replace(&text, "address = \"fd00:1::11\"", "address = \"fd00:1::11\"\nport = 443");
    assert_eq!(parse(&text, "t").unwrap().vips[2].mode, ForwardingMode::Gue);
}

#[test]
fn ipv6_vips_are_not_carried_in_ipv4() {
    let text = replace(GOOD, "port = 443\n", "port = 443\nmode = \"ipip\"\n");
    let text = replace(&text, "address = \"fd00:1::11\"", "address = \"10.0.3.11\"\nport = 443");
    expect(
        &text,
        "vip[2].backend[0].address",
        line_with(&text, "10.0.3.11", 0),
        "IPv4 backend 10.0.3.11 for an IPv6 VIP (fd00:100::1): ipip carries IPv6 VIPs in IPv6 only",
    );
}

#[test]
fn encapsulated_backends_need_the_outer_source_of_their_family() {
    let text = encapsulated("gue", "  { address = \"fd00:3::11\" },\n");
    let text = replace(&text, "ipv6 = \"fd00::1\"\n", "");
    let text = replace(
        &text,
        "[[vip]]\nname = \"web6\"\naddress = \"fd00:100::1\"\nport = 443\n\n[[vip.backend]]\naddress = \"fd00:1::11\"\n",
        "",
    );
    expect(
        &text,
        "vip[1].backend[0].address",
        line_with(&text, "fd00:3::11", 0),
        "IPv6 backend fd00:3::11 of a gue mode VIP needs balancer.ipv6 (the outer source address of encapsulated packets)",
    );
}

#[test]
fn encapsulated_backends_use_the_vip_port_and_no_passive_signals() {
    let text = encapsulated("ipip", "  { address = \"10.0.2.11\", port = 5353 },\n");
    expect(
        &text,
        "vip[1].backend[0].port",
        line_with(&text, "port = 5353", 0),
        "ipip backends must use the VIP's port 53 (got 5353)",
    );
    let text = encapsulated("gue", "  { address = \"10.0.2.11\" },\n");
    let text = replace(&text, "mode = \"gue\"\n", "mode = \"gue\"\noutlier_detection = {}\n");
    expect(
        &text,
        "vip[1].outlier_detection",
        line_with(&text, "outlier_detection", 0),
        "needs nat mode: in gue mode replies bypass the balancer, so it sees no failures (no passive signals)",
    );
    let text = replace(GOOD, "zone = \"z1\"\n", "zone = \"z1\"\ngue_port = 0\n");
    expect(&text, "balancer.gue_port", line_with(&text, "gue_port", 0), "must be 1..65535");
}

#[test]
fn encapsulated_checks_need_the_source_of_the_vips_family() {
    // Through the tunnel, a check goes to the VIP from the balancer's own address.
    let text = replace(GOOD, "port = 443\n", "port = 443\nmode = \"gue\"\nhealth_check = { type = \"tcp\" }\n");
    let text = replace(&text, "address = \"fd00:1::11\"", "address = \"fd00:1::11\"\nport = 443");
    assert!(parse(&text, "t").is_ok());
    let text = replace(&text, "ipv6 = \"fd00::1\"\n", "");
    expect(
        &text,
        "vip[2].health_check",
        line_with(&text, "health_check", 0),
        "the checks of a gue mode VIP go through the tunnel to the VIP from balancer.ipv6: set it",
    );
}

#[test]
fn at_most_max_check_tunnels_backends_are_checked_through_tunnels() {
    // 8193 addresses in ipip and in gue: 16386 tunnel ends, two more than there are marks.
    let backends: String = (0..8193u32)
        .map(|n| format!("  {{ address = \"10.{}.{}.{}\" }},\n", 8 + n / 65536, (n / 256) % 256, n % 256))
        .collect();
    let vip = |name: &str, port: u16, mode: &str| {
        format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"10.100.0.9\"\nport = {port}\nmode = \"{mode}\"\nhealth_check = {{ type = \"tcp\" }}\nbackend = [\n{backends}]\n"
        )
    };
    let head =
        "[balancer]\ninterfaces = [\"eth0\"]\nipv4 = \"10.0.0.1\"\nmaglev_table_size = 16411\nmax_backends = 20000\n";
    let ipip_only = format!("{head}{}", vip("a", 80, "ipip"));
    assert!(parse(&ipip_only, "t").is_ok(), "8193 ends are within the limit");
    let text = format!("{ipip_only}{}", vip("b", 81, "gue"));
    expect(
        &text,
        "vip[1].health_check",
        line_with(&text, "health_check", 1),
        "more than 16384 backends (by address and mode) checked through ipip or gue tunnels",
    );
}
