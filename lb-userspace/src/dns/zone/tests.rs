//! Zone lookups, compile errors with their key paths, and the test zone other DNS tests use.

use std::net::Ipv4Addr;

use super::*;
use crate::config;

const CONFIG: &str = r#"
[balancer]
interfaces = ["eth0"]
ipv4 = "10.0.0.1"

[dns]
listen = ["127.0.0.1:5353"]

[[dns.client_region]]
prefix = "10.1.0.0/16"
region = "us"

[[dns.target]]
name = "site-a"
address = "10.100.0.1"
vip = "web"
[[dns.target]]
name = "site-b"
address = "10.100.0.2"
region = "us"
health_check = { type = "tcp", port = 80 }
[[dns.target]]
name = "site-c"
address = "10.100.0.3"
region = "ap"
health_check = { type = "tcp", port = 80 }

[[dns.zone]]
origin = "example.test."
ns = ["ns1.example.test."]

[[dns.zone.record]]
name = "ns1"
type = "A"
data = "10.0.0.53"
[[dns.zone.record]]
name = "alias"
type = "CNAME"
data = "www.example.test."
[[dns.zone.record]]
name = "txt.deep"
type = "TXT"
data = "hello"

[[dns.zone.record]]
name = "big"
type = "TXT"
data = "BIG"

[[dns.zone.policy]]
name = "www"
type = "A"
ttl = 30
primary = ["site-a"]
backup = [["site-b", "site-c"]]
geo = true

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80
[[vip.backend]]
address = "10.0.1.11"
"#;

/// The test zone; "big" holds 9 TXT records of 100 bytes (more than 512 in all, less than
/// the largest UDP answer).
pub(crate) fn answers(up: &dyn Fn(usize) -> bool) -> Answers {
    let text = "x".repeat(100);
    let big: String = (0..9)
        .map(|i| format!("[[dns.zone.record]]\nname = \"big\"\ntype = \"TXT\"\ndata = \"{i:02}{text}\"\n"))
        .collect();
    let config = config::parse(
        &CONFIG.replace("[[dns.zone.record]]\nname = \"big\"\ntype = \"TXT\"\ndata = \"BIG\"\n", &big),
        "test.toml",
    )
    .expect("valid");
    let zones = Arc::new(Zones::compile(config.dns.as_ref().unwrap()).expect("compiles"));
    let selections = zones
        .policies
        .iter()
        .map(|p| Selection::build(&p.policy, &zones.targets, up, p.policy.trickle_ratio))
        .collect();
    let counters = zones.policies.iter().map(|_| Arc::default()).collect();
    Answers { zones, selections, counters }
}

fn name(s: &str) -> LowerName {
    LowerName::new(&Name::from_ascii(s).unwrap())
}

pub(crate) const RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

fn addresses(response: &Response) -> Vec<String> {
    response.answers.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn policy_record_follows_health() {
    let all_up = answers(&|_| true);
    let r = all_up.resolve(&name("www.example.test."), RecordType::A, RESOLVER);
    assert_eq!((r.code, addresses(&r)), (ResponseCode::NoError, vec!["10.100.0.1".to_owned()]));
    assert_eq!(r.answers[0].ttl, 30);
    let site_a_down = answers(&|i| i != 0);
    let r = site_a_down.resolve(&name("WWW.Example.Test."), RecordType::A, "10.1.2.3".parse().unwrap());
    assert_eq!(addresses(&r), vec!["10.100.0.2".to_owned()], "the client's region (us) picks site-b");
    assert!(r.by_client_region);
    assert_eq!(site_a_down.zones.region_scope(RESOLVER), 16);
}

#[test]
fn negative_answers_carry_the_soa() {
    let a = answers(&|_| true);
    let nx = a.resolve(&name("nope.example.test."), RecordType::A, RESOLVER);
    assert_eq!(nx.code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    let soa = nx.authority.expect("SOA in authority");
    assert_eq!((soa.record_type(), soa.ttl), (RecordType::SOA, 60));

    for (qname, qtype) in [
        ("www.example.test.", RecordType::AAAA),
        ("www.example.test.", RecordType::TXT),
        ("deep.example.test.", RecordType::A),
        ("ns1.example.test.", RecordType::MX),
    ] {
        let nodata = a.resolve(&name(qname), qtype, RESOLVER);
        assert_eq!(nodata.code, ResponseCode::NoError, "{qname} {qtype}");
        assert!(nodata.answers.is_empty() && nodata.authority.is_some(), "{qname} {qtype}");
    }
    assert_eq!(a.resolve(&name("example.org."), RecordType::A, RESOLVER).code, ResponseCode::Refused);
    assert_eq!(a.resolve(&name("test."), RecordType::A, RESOLVER).code, ResponseCode::Refused);
}

#[test]
fn apex_static_records_and_cnames() {
    let a = answers(&|_| true);
    let soa = a.resolve(&name("example.test."), RecordType::SOA, RESOLVER);
    assert_eq!((soa.answers.len(), soa.answers[0].ttl), (1, 3600));
    let ns = a.resolve(&name("example.test."), RecordType::NS, RESOLVER);
    assert_eq!(addresses(&ns), vec!["ns1.example.test.".to_owned()]);
    let txt = a.resolve(&name("txt.deep.example.test."), RecordType::TXT, RESOLVER);
    assert_eq!(txt.answers.len(), 1);
    let alias = a.resolve(&name("alias.example.test."), RecordType::A, RESOLVER);
    assert_eq!(addresses(&alias), vec!["www.example.test.".to_owned(), "10.100.0.1".to_owned()]);
    let cname = a.resolve(&name("alias.example.test."), RecordType::CNAME, RESOLVER);
    assert_eq!(cname.answers.len(), 1);
    let any = a.resolve(&name("www.example.test."), RecordType::ANY, RESOLVER);
    assert_eq!(addresses(&any), vec!["10.100.0.1".to_owned()]);
}

fn compile_error(edit: impl Fn(&str) -> String) -> String {
    config::parse(&edit(CONFIG), "test.toml").expect_err("refused").to_string()
}

#[test]
fn zone_problems_name_the_key() {
    let cases: [(&str, &str, &str); 6] = [
        ("data = \"10.0.0.53\"", "data = \"10.0.0\"", "dns.zone[0].record[0].data"),
        ("type = \"CNAME\"", "type = \"CNAMEX\"", "dns.zone[0].record[1].type"),
        ("primary = [\"site-a\"]", "primary = [\"site-x\"]", "dns.zone[0].policy[0].primary[0]"),
        (
            "backup = [[\"site-b\", \"site-c\"]]",
            "backup = [[\"site-b\", \"site-b\"]]",
            "dns.zone[0].policy[0].backup[0][1]",
        ),
        ("name = \"alias\"", "name = \"www\"", "dns.zone[0].record"),
        ("name = \"txt.deep\"", "name = \"txt.example.org.\"", "dns.zone[0].record[2].name"),
    ];
    for (from, to, key) in cases {
        let message = compile_error(|c| c.replacen(from, to, 1));
        assert!(message.contains(key), "{to}: {message}");
    }
    let message = compile_error(|c| c.replace("ttl = 30", "ttl = 30\ntrickle_ratio = 1.5"));
    assert!(message.contains("dns.zone[0].policy[0].trickle_ratio"), "{message}");
    let message = compile_error(|c| c.replace("type = \"A\"\nttl = 30", "type = \"AAAA\"\nttl = 30"));
    assert!(message.contains("not one for AAAA records"), "{message}");
}

/// The example site config serves what its comments say.
#[test]
fn example_site_config_answers() {
    let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/dns-site.toml"));
    let config = config::load(path).expect("valid");
    let zones = Arc::new(Zones::compile(config.dns.as_ref().unwrap()).expect("compiles"));
    let answers = |up: &dyn Fn(usize) -> bool| Answers {
        selections: zones
            .policies
            .iter()
            .map(|p| Selection::build(&p.policy, &zones.targets, up, p.policy.trickle_ratio))
            .collect(),
        counters: zones.policies.iter().map(|_| Arc::default()).collect(),
        zones: zones.clone(),
    };
    let all_up = answers(&|_| true);
    let www = |a: &Answers, client: &str| {
        addresses(&a.resolve(&name("www.example.com."), RecordType::A, client.parse().unwrap()))
    };
    let firsts: Vec<Vec<String>> = (0..100).map(|_| www(&all_up, "192.0.2.1")).collect();
    assert_eq!(firsts.iter().filter(|a| a[0] == "192.0.2.100").count(), 99, "1% trickle");
    assert_eq!(
        addresses(&all_up.resolve(&name("shop.example.com."), RecordType::A, RESOLVER)).len(),
        2,
        "CNAME, then www"
    );
    assert_eq!(
        addresses(&all_up.resolve(&name("example.com."), RecordType::MX, RESOLVER)),
        vec!["10 mail.example.com.".to_owned()]
    );
    assert_eq!(all_up.resolve(&name("example.com."), RecordType::TXT, RESOLVER).answers.len(), 1);
    let eu_down = answers(&|i| i != 0);
    assert_eq!(www(&eu_down, "198.19.4.4"), vec!["203.0.113.100".to_owned()], "ap-south for its region");
    let spread: Vec<String> = (0..30).flat_map(|_| www(&eu_down, "192.0.2.1")).collect();
    assert_eq!(spread.iter().filter(|a| *a == "198.51.100.100").count(), 20, "2:1 by weight");
}
