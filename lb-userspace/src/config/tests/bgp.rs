//! The `[bgp]` table.

use super::*;
use crate::config::bgp::DrainAction;

/// GOOD with a [bgp] table (appended: its lines follow the VIPs').
fn with_bgp(table: &str) -> String {
    format!("{GOOD}\n[bgp]\n{table}")
}

const PEER: &str = "[[bgp.peer]]\naddress = \"10.0.0.254\"\nasn = 65000\n";

#[test]
fn a_bgp_table_parses_with_defaults_and_the_router_id_of_the_balancer() {
    let c = parse(&with_bgp(&format!("asn = 65001\n{PEER}")), "t").unwrap();
    let bgp = c.bgp.unwrap();
    assert_eq!(bgp.router_id(c.balancer.ipv4), Some("10.0.0.1".parse().unwrap()));
    assert_eq!(bgp.drain.action, DrainAction::Med);
    assert_eq!(bgp.stop_timeout, std::time::Duration::from_secs(5));
}

#[test]
fn bgp_settings_are_validated_with_their_key_and_line() {
    let cases = [
        ("asn = 0", "bgp.asn", "an AS number"),
        ("asn = 65001\ninclude_file = \"bird-lb.conf\"", "bgp.include_file", "absolute"),
        ("asn = 65001\nbird_socket = \"/\"", "bgp.bird_socket", "absolute file path"),
        ("asn = 65001\nstop_timeout = \"0s\"", "bgp.stop_timeout", "more than 0"),
        ("asn = 65001\nmed = 10\n[bgp.drain]\nmed = 10", "bgp.drain.med", "above bgp.med (10)"),
        ("asn = 65001\n[bgp.drain]\naction = \"prepend\"\nprepend = 0", "bgp.drain.prepend", "1..=16"),
    ];
    // The key at fault is the last line of each table.
    for (table, key, msg) in cases {
        let text = with_bgp(&format!("{table}\n{PEER}"));
        let at_fault = table.lines().last().unwrap();
        let line = text.lines().collect::<Vec<_>>().iter().rposition(|l| *l == at_fault).unwrap() + 1;
        expect(&text, key, line, msg);
    }
}

#[test]
fn peers_are_required_unique_and_validated() {
    let text = with_bgp("asn = 65001");
    expect(&text, "bgp.peer", line_with(&text, "[bgp]", 0), "at least one");
    let twice = with_bgp(&format!("asn = 65001\n{PEER}{PEER}"));
    expect(&twice, "bgp.peer[1].address", line_with(&twice, "address = \"10.0.0.254\"", 1), "also bgp.peer[0]");
    let other = PEER.replace("10.0.0.254", "10.0.0.253");
    let same = with_bgp(&format!("asn = 65001\n{PEER}name = \"a\"\n{other}name = \"a\""));
    expect(&same, "bgp.peer[1].name", line_with(&same, "name = \"a\"", 1), "the same name as bgp.peer[0]");
    for (extra, key, msg) in [
        ("name = \"tor-1\"", "bgp.peer[0].name", "letters, digits or '_'"),
        ("bfd_interval = \"5ms\"", "bgp.peer[0].bfd_interval", "between 10ms and 10s"),
        ("bfd_multiplier = 0", "bgp.peer[0].bfd_multiplier", "1..=255"),
    ] {
        let text = with_bgp(&format!("asn = 65001\n{PEER}{extra}"));
        expect(&text, key, line_with(&text, extra, 0), msg);
    }
    let bad = with_bgp("asn = 65001\n[[bgp.peer]]\naddress = \"10.0.0.254\"\nasn = 23456");
    expect(&bad, "bgp.peer[0].asn", line_with(&bad, "asn = 23456", 0), "AS_TRANS");
    let community = with_bgp(&format!("asn = 65001\ncommunities = [\"65001\"]\n{PEER}"));
    let e = err(&community);
    assert!(e.key.starts_with("bgp.communities") && e.message.contains("ASN:VALUE"), "{e}");
}

#[test]
fn a_router_id_is_needed_without_a_balancer_ipv4() {
    let text = replace(&with_bgp(&format!("asn = 65001\n{PEER}")), "ipv4 = \"10.0.0.1\"\n", "");
    // Its nat IPv4 VIP would need balancer.ipv4 first: make it dsr.
    let text = text.replace(
        "name = \"web\"\naddress = \"10.100.0.1\"\nport = 80",
        "name = \"web\"\naddress = \"10.100.0.1\"\nport = 80\nmode = \"dsr\"",
    );
    let text = text.replace("port = 8080\n", "");
    let e = err(&text);
    assert_eq!(e.key, "bgp.router_id", "{e}");
    let with_id = text.replace("[bgp]\n", "[bgp]\nrouter_id = \"192.0.2.1\"\n");
    assert_eq!(parse(&with_id, "t").unwrap().bgp.unwrap().router_id, Some("192.0.2.1".parse().unwrap()));
}

#[test]
fn a_dns_vantage_point_has_nothing_to_announce() {
    let vantage = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/dns-vantage.toml")).unwrap();
    let text = format!("{vantage}\n[bgp]\nasn = 65001\nrouter_id = \"192.0.2.30\"\n{PEER}");
    expect(&text, "bgp", line_with(&text, "[bgp]", 0), "has no VIPs to announce");
}
