//! Parsing, defaults, and an error at the right line and key for every rule.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

mod balancer;
mod bgp;
mod encap;
mod priority;
mod vips;

use super::errors::{Seg, fields_at, key_path};
use super::*;
use crate::testing::TempFile;

#[test]
fn control_commands_show_the_syntax_error_of_the_config() {
    let file = TempFile::new("syntax.toml", b"[admin]\nlisten = \"127.0.0.1:9999\"\n[balancer\n");
    let result = load_control(file.path());
    let e = result.unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.starts_with("invalid TOML"), "{e}");
}

#[test]
fn control_commands_show_a_wrongly_typed_admin_section() {
    let file = TempFile::new("admin-type.toml", b"[admin]\nlisten = 9999\n");
    let result = load_control(file.path());
    let e = result.unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (Some(2), "admin.listen"), "{e}");
}

#[test]
fn a_config_that_is_not_utf8_is_refused_with_line_and_column() {
    let file = TempFile::new("latin1.toml", b"[balancer]\ninterfaces = [\"eth0\"]\nregion = \"z\xfcrich\"\n");
    let (full, control) = (load(file.path()), load_control(file.path()));
    for e in [full.unwrap_err(), control.unwrap_err()] {
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("0xfc at column 12"), "{e}");
    }
}

const GOOD: &str = r#"# a test config
[balancer]
interfaces = ["eth0", "eth1"]
ipv4 = "10.0.0.1"
ipv6 = "fd00::1"
region = "r1"
zone = "z1"

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80

[[vip.backend]]
address = "10.0.1.11"
port = 8080
weight = 2
region = "r1"
zone = "z1"

[[vip.backend]]
address = "10.0.1.12"

[[vip]]
name = "dns"
address = "10.100.0.2"
port = 53
protocol = "udp"
mode = "dsr"
backend = [
  { address = "10.0.2.11" },
  { address = "10.0.2.12", port = 53, weight = 0 },
]

[[vip]]
name = "web6"
address = "fd00:100::1"
port = 443

[[vip.backend]]
address = "fd00:1::11"
"#;

/// 1-based line of the first line of `text` containing `needle` (after `after` lines).
fn line_with(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
        .0
        + 1
}

fn err(text: &str) -> ConfigError {
    match parse(text, "test.toml") {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

/// Asserts the error names `key` on `line` and its message contains `msg`.
fn expect(text: &str, key: &str, line: usize, msg: &str) -> ConfigError {
    let e = err(text);
    let shown = e.to_string();
    assert_eq!(e.key, key, "{shown}");
    assert_eq!(e.line, Some(line), "{shown}");
    assert!(shown.starts_with(&format!("test.toml:{line}: {key}: ")), "{shown}");
    assert!(e.message.contains(msg), "{shown} lacks {msg:?}");
    e
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?}");
    text.replacen(from, to, 1)
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse(GOOD, "test.toml").unwrap();
    let b = &c.balancer;
    assert_eq!(b.interfaces, ["eth0", "eth1"]);
    assert_eq!(b.xdp_mode, XdpModeSetting::Auto);
    assert_eq!(b.ipv4, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(b.ipv6, Some("fd00::1".parse().unwrap()));
    assert_eq!(b.pin_dir, PathBuf::from("/sys/fs/bpf/lb"));
    assert_eq!(b.hash_seed, 0);
    assert_eq!(b.maglev_table_size, 65537);
    assert_eq!((b.max_vips, b.max_backends, b.flow_table_size), (64, 4096, 262_144));
    assert_eq!((b.nat_port_min, b.nat_port_max), (20000, 59999));
    assert_eq!(b.nat_ports_per_backend(), 40000);
    assert_eq!((b.region.as_str(), b.zone.as_str()), ("r1", "z1"));

    assert_eq!(c.vips.len(), 3);
    let web = &c.vips[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.address, "10.100.0.1".parse::<IpAddr>().unwrap());
    assert_eq!((web.port, web.protocol, web.mode), (80, Protocol::Tcp, ForwardingMode::Nat));
    assert_eq!(web.protocol.number(), lb_common::PROTO_TCP);
    assert_eq!(
        web.backends[0],
        BackendConfig {
            address: "10.0.1.11".parse().unwrap(),
            port: 8080,
            weight: 2,
            region: "r1".into(),
            zone: "z1".into(),
            draining: false,
        }
    );
    // Port defaults to the VIP's, weight to 1, labels to "".
    assert_eq!(
        web.backends[1],
        BackendConfig {
            address: "10.0.1.12".parse().unwrap(),
            port: 80,
            weight: 1,
            region: "".into(),
            zone: "".into(),
            draining: false,
        }
    );
    let dns = &c.vips[1];
    assert_eq!((dns.protocol, dns.mode), (Protocol::Udp, ForwardingMode::Dsr));
    assert_eq!(dns.protocol.number(), lb_common::PROTO_UDP);
    assert_eq!(dns.mode.number(), lb_common::MODE_DSR);
    assert_eq!(dns.backends.iter().map(|b| (b.port, b.weight)).collect::<Vec<_>>(), [(53, 1), (53, 0)]);
    assert_eq!(c.vips[2].backends[0].socket_addr().to_string(), "[fd00:1::11]:443");
}

#[test]
fn explicit_settings_are_read() {
    let text = r#"
[balancer]
interfaces = ["ens5"]
xdp_mode = "skb"
pin_dir = "/sys/fs/bpf/lb2"
hash_seed = 4294967295
maglev_table_size = 101
max_vips = 2
max_backends = 3
flow_table_size = 1000
nat_port_min = 1024
nat_port_max = 1024
"#;
    let b = parse(text, "t").unwrap().balancer;
    assert_eq!(b.xdp_mode, XdpModeSetting::Skb);
    assert_eq!(b.pin_dir, PathBuf::from("/sys/fs/bpf/lb2"));
    assert_eq!(
        (b.hash_seed, b.maglev_table_size, b.max_vips, b.max_backends, b.flow_table_size),
        (u32::MAX, 101, 2, 3, 1000)
    );
    assert_eq!((b.nat_port_min, b.nat_port_max), (1024, 1024));
    assert_eq!(b.nat_ports_per_backend(), 1, "a range of one port");
    assert_eq!(b.ipv4, None);
    assert_eq!(parse(&replace(text, "\"skb\"", "\"driver\""), "t").unwrap().balancer.xdp_mode, XdpModeSetting::Driver);
}

#[test]
fn unknown_key_refused_with_line() {
    let text = replace(GOOD, "weight = 2", "wieght = 2");
    let e = expect(&text, "vip[0].backend[0].wieght", line_with(&text, "wieght", 0), "unknown field `wieght`");
    assert!(e.message.contains("weight"), "{e}");
    // In an inline table, in [balancer], and a whole unknown table.
    let text = replace(GOOD, "port = 53, weight = 0", "port = 53, wait = 0");
    expect(&text, "vip[1].backend[1].wait", line_with(&text, "wait", 0), "unknown field `wait`");
    let text = replace(GOOD, "zone = \"z1\"\n\n[[vip]]", "zone = \"z1\"\nxdp = \"skb\"\n\n[[vip]]");
    expect(&text, "balancer.xdp", line_with(&text, "xdp =", 0), "unknown field `xdp`");
    let text = format!("{GOOD}\n[health]\ninterval = 1\n");
    expect(&text, "health", line_with(&text, "[health]", 0), "unknown field `health`");
}

#[test]
fn wrong_type_refused_with_line() {
    let text = replace(GOOD, "port = 8080", "port = \"8080\"");
    expect(&text, "vip[0].backend[0].port", line_with(&text, "\"8080\"", 0), "invalid type");
    let text = replace(GOOD, "interfaces = [\"eth0\", \"eth1\"]", "interfaces = \"eth0\"");
    expect(&text, "balancer.interfaces", 3, "invalid type");
    let text = replace(GOOD, "port = 8080", "port = 70000");
    expect(&text, "vip[0].backend[0].port", line_with(&text, "70000", 0), "70000");
    let text = replace(GOOD, "protocol = \"udp\"", "protocol = \"sctp\"");
    expect(&text, "vip[1].protocol", line_with(&text, "sctp", 0), "unknown variant `sctp`");
    let text = replace(GOOD, "address = \"10.0.2.11\"", "address = \"10.0.2.300\"");
    expect(&text, "vip[1].backend[0].address", line_with(&text, "10.0.2.300", 0), "invalid IP address");
    let text = replace(GOOD, "ipv4 = \"10.0.0.1\"", "ipv4 = \"fd00::2\"");
    expect(&text, "balancer.ipv4", 4, "invalid IPv4");
    let text = replace(GOOD, "[balancer]", "[balancer]\nhash_seed = -1");
    expect(&text, "balancer.hash_seed", 3, "-1");
}

#[test]
fn missing_required_key_refused_with_line() {
    let text = replace(GOOD, "name = \"dns\"\n", "");
    let l = line_with(&text, "[[vip]]", 1);
    expect(&text, "vip[1].name", l, "required key is missing");
    let text = replace(GOOD, "address = \"10.0.1.12\"\n", "");
    expect(&text, "vip[0].backend[1].address", line_with(&text, "[[vip.backend]]", 1), "required key is missing");
    // Interfaces may be left out only by a DNS vantage point (balancer::a_vantage_point_*).
    let text = replace(GOOD, "interfaces = [\"eth0\", \"eth1\"]\n", "");
    expect(&text, "balancer.interfaces", 2, "at least one interface is required");
    let e = err("[[vip]]\nname = \"a\"\naddress = \"10.100.0.1\"\nport = 80\n");
    assert_eq!(e.key, "balancer.interfaces", "{e}");
    assert!(e.to_string().starts_with("test.toml: balancer.interfaces: at least one interface is required"), "{e}");
    let e = err("");
    assert_eq!(e.key, "balancer.interfaces", "{e}");
    // A lone [[vip]] spans the same text as the array: the field is still placed right.
    let e = err("[balancer]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"a\"\nport = 80\n");
    assert_eq!(e.to_string(), "test.toml:3: vip[0].address: required key is missing");
}

#[test]
fn syntax_error_has_line() {
    let text = replace(GOOD, "port = 8080", "port = = 8080");
    let e = err(&text);
    assert_eq!(e.line, Some(line_with(&text, "= =", 0)), "{e}");
    assert!(e.to_string().starts_with(&format!("test.toml:{}: invalid TOML", line_with(&text, "= =", 0))), "{e}");
}

#[test]
fn the_keys_of_a_table_come_from_the_schema() {
    let keys = |path: &[Seg]| fields_at(path);
    assert_eq!(keys(&[]), ["balancer", "admin", "dns", "bgp", "vip"]);
    assert!(keys(&key_path!["bgp", "peer", 0]).contains(&"bfd_multiplier".to_owned()));
    assert!(keys(&key_path!["balancer"]).contains(&"flow_timeouts".to_owned()));
    assert_eq!(keys(&key_path!["balancer", "flow_timeouts"]).len(), 6);
    assert!(keys(&key_path!["vip", 0, "health_check"]).contains(&"expected_statuses".to_owned()));
    assert!(keys(&key_path!["dns", "zone", 0, "policy", 0]).contains(&"trickle_ratio".to_owned()));
    assert_eq!(keys(&key_path!["vip", 0, "backend", 0]), ["address", "port", "weight", "region", "zone", "draining"]);
}

#[test]
fn load_reports_unreadable_file() {
    let e = load(Path::new("/nonexistent/lb.toml")).unwrap_err();
    assert_eq!(e.line, None);
    assert!(e.to_string().starts_with("/nonexistent/lb.toml: cannot read the file"), "{e}");
}

#[test]
fn example_configs_parse() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config"));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
            let vantage_point = path.file_name().is_some_and(|name| name == "dns-vantage.toml");
            assert_eq!(c.has_packet_path(), !vantage_point, "{}", path.display());
            n += 1;
        }
    }
    assert!(n >= 2, "only {n} example configs in {}", dir.display());
}
