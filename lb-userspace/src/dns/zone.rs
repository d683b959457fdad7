//! The zones served: compiled once per config ([`Zones::compile`], which also validates
//! them), then looked up per query ([`Answers::resolve`]) with the policy records' current
//! selections. Plain Rust over hickory-proto's record types; the server only encodes.
//!
//! Lookup rules (RFC 1034 4.3.2, RFC 2308): a name outside every zone is REFUSED; a name
//! with no records and nothing below it is NXDOMAIN; a name that exists without the type
//! asked for (including empty non-terminals) is NODATA; both carry the zone's SOA, with the
//! TTL of negative caching. A CNAME answers every type but CNAME itself, followed inside
//! the zone. Wildcards are not supported.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::BinEncodable as _;
use ipnet::IpNet;

use super::policy::{Choice, Policy, PolicyCounters, Selection, Source, Target};
use crate::config::dns::{DnsConfig, DnsZone};

/// Where in `dns.zone[i]` a problem is, for config errors: the key, and the index inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneError {
    pub zone: usize,
    /// Key path inside the zone, e.g. `record[2].data`.
    pub path: Vec<Step>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Key(&'static str),
    Index(usize),
}

type ZonePathError = (Vec<Step>, String);

/// A policy record: an A or AAAA name whose answers follow target health.
#[derive(Debug, Clone)]
pub struct PolicyRecord {
    /// Its index in `Zones::policies`.
    pub index: usize,
    pub name: Name,
    pub rtype: RecordType,
    pub ttl: u32,
    pub policy: Policy,
}

impl PolicyRecord {
    /// "www.example.com. A": names the record in logs, metrics and the admin interface.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.rtype)
    }
}

#[derive(Debug, Default)]
struct Node {
    rrsets: Vec<(RecordType, Vec<Record>)>,
    /// (type, index into `Zones::policies`).
    policies: Vec<(RecordType, usize)>,
}

impl Node {
    fn rrset(&self, rtype: RecordType) -> Option<&[Record]> {
        self.rrsets.iter().find(|(t, _)| *t == rtype).map(|(_, r)| r.as_slice())
    }

    fn policy(&self, rtype: RecordType) -> Option<usize> {
        self.policies.iter().find(|(t, _)| *t == rtype).map(|&(_, i)| i)
    }
}

#[derive(Debug)]
struct Zone {
    origin: LowerName,
    /// The SOA as answered in authority sections of negative answers.
    negative_soa: Record,
    nodes: HashMap<LowerName, Node>,
    /// Names with nothing of their own but names below them.
    empty_non_terminals: HashSet<LowerName>,
}

/// Every zone of the config, and the targets and policies they refer to.
#[derive(Debug)]
pub struct Zones {
    zones: Vec<Zone>,
    pub policies: Vec<PolicyRecord>,
    pub targets: Vec<Target>,
    pub target_names: Vec<String>,
    /// Client prefixes by region, longest first.
    client_regions: Vec<(IpNet, String)>,
    /// The longest configured client prefix per family: the scope of answers chosen by region.
    scope_v4: u8,
    scope_v6: u8,
    /// Policy records by lowercase wire-format name: (A, AAAA) indexes into `policies`.
    by_wire_name: HashMap<Box<[u8]>, [Option<usize>; 2]>,
}

fn parse_name(text: &str) -> Result<Name, String> {
    let mut name = Name::from_utf8(text).map_err(|e| format!("{text:?} is not a domain name: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// An owner name in a zone: "@" is the origin, a name ending in '.' is absolute, anything
/// else is relative to the origin.
fn owner_name(text: &str, origin: &Name) -> Result<Name, String> {
    let name = if text == "@" {
        origin.clone()
    } else if text.ends_with('.') {
        parse_name(text)?
    } else {
        let relative = Name::from_utf8(text).map_err(|e| format!("{text:?} is not a domain name: {e}"))?;
        relative.append_domain(origin).map_err(|e| format!("{text:?}: {e}"))?
    };
    if !origin.zone_of(&name) {
        return Err(format!("{name} is not inside the zone {origin}"));
    }
    Ok(name)
}

fn record_type(text: &str) -> Result<RecordType, String> {
    RecordType::from_str(&text.to_ascii_uppercase()).map_err(|_| format!("{text:?} is not a record type"))
}

impl Zones {
    /// Builds the zones; every problem names the zone and the key.
    pub fn compile(dns: &DnsConfig) -> Result<Self, ZoneError> {
        let target_index: HashMap<&str, usize> =
            dns.targets.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        let targets = dns
            .targets
            .iter()
            .map(|t| Target { address: t.address, region: t.region.clone(), weight: t.weight })
            .collect();
        let mut client_regions: Vec<(IpNet, String)> =
            dns.client_regions.iter().map(|c| (c.prefix.trunc(), c.region.clone())).collect();
        client_regions.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        let longest = |v4: bool| {
            client_regions.iter().filter(|(n, _)| matches!(n, IpNet::V4(_)) == v4).map(|(n, _)| n.prefix_len()).max()
        };
        let mut zones = Zones {
            zones: Vec::new(),
            policies: Vec::new(),
            targets,
            target_names: dns.targets.iter().map(|t| t.name.clone()).collect(),
            scope_v4: longest(true).unwrap_or(0),
            scope_v6: longest(false).unwrap_or(0),
            by_wire_name: HashMap::new(),
            client_regions,
        };
        let mut origins = HashMap::new();
        for (i, zone) in dns.zones.iter().enumerate() {
            let err = |path: Vec<Step>, message: String| ZoneError { zone: i, path, message };
            let compiled =
                zones.compile_zone(zone, &target_index, &dns.targets).map_err(|(path, message)| err(path, message))?;
            if let Some(j) = origins.insert(compiled.origin.clone(), i) {
                return Err(err(vec![Step::Key("origin")], format!("zone {} is also dns.zone[{j}]", compiled.origin)));
            }
            zones.zones.push(compiled);
        }
        Ok(zones)
    }

    #[allow(clippy::type_complexity)]
    fn compile_zone(
        &mut self,
        zone: &DnsZone,
        target_index: &HashMap<&str, usize>,
        targets: &[crate::config::dns::DnsTarget],
    ) -> Result<Zone, ZonePathError> {
        let origin = parse_name(&zone.origin).map_err(|m| (vec![Step::Key("origin")], m))?;
        if origin.is_root() {
            return Err((vec![Step::Key("origin")], "the root zone cannot be served".into()));
        }
        let ns = name_servers(zone)?;
        let (soa_record, negative_soa) = soa_records(zone, &origin, &ns[0])?;
        let mut nodes: HashMap<LowerName, Node> = HashMap::new();
        add_record(&mut nodes, &origin, soa_record);
        for n in &ns {
            add_record(&mut nodes, &origin, Record::from_rdata(origin.clone(), zone.ttl, RData::NS(NS(n.clone()))));
        }
        add_records(zone, &origin, &mut nodes)?;
        for (j, p) in zone.policies.iter().enumerate() {
            let at = |keys: &[Step]| {
                [Step::Key("policy"), Step::Index(j)].into_iter().chain(keys.iter().copied()).collect::<Vec<_>>()
            };
            self.compile_policy(p, &origin, &mut nodes, &at, target_index, targets)?;
        }
        let empty_non_terminals = empty_non_terminals(&nodes, &origin)?;
        Ok(Zone { origin: LowerName::new(&origin), negative_soa, nodes, empty_non_terminals })
    }

    /// One policy record of a zone: its name, type and targets checked (`at` makes the key
    /// path of an error), added to its node and indexed by its wire name.
    fn compile_policy(
        &mut self,
        p: &crate::config::dns::PolicyRecordConfig,
        origin: &Name,
        nodes: &mut HashMap<LowerName, Node>,
        at: &dyn Fn(&[Step]) -> Vec<Step>,
        target_index: &HashMap<&str, usize>,
        targets: &[crate::config::dns::DnsTarget],
    ) -> Result<(), ZonePathError> {
        let name = owner_name(&p.name, origin).map_err(|m| (at(&[Step::Key("name")]), m))?;
        let rtype = record_type(&p.rtype).map_err(|m| (at(&[Step::Key("type")]), m))?;
        let v4 = match rtype {
            RecordType::A => true,
            RecordType::AAAA => false,
            other => {
                return Err((at(&[Step::Key("type")]), format!("policy records are A or AAAA (got {other})")));
            }
        };
        if !(0.0..=1.0).contains(&p.trickle_ratio.0) {
            return Err((at(&[Step::Key("trickle_ratio")]), format!("a share, 0..=1 (got {})", p.trickle_ratio.0)));
        }
        let mut seen = HashSet::new();
        let mut resolve = |names: &[String], key: &[Step]| -> Result<Vec<usize>, ZonePathError> {
            names
                .iter()
                .enumerate()
                .map(|(k, n)| {
                    let error = |message: String| (at(&[key, &[Step::Index(k)]].concat()), message);
                    let i = *target_index.get(n.as_str()).ok_or_else(|| error(format!("no dns.target named {n:?}")))?;
                    if targets[i].address.is_ipv4() != v4 {
                        let address = targets[i].address;
                        return Err(error(format!("target {n:?} has address {address}, not one for {rtype} records")));
                    }
                    if !seen.insert(i) {
                        return Err(error(format!("target {n:?} appears twice in this policy")));
                    }
                    Ok(i)
                })
                .collect()
        };
        let primary = resolve(&p.primary, &[Step::Key("primary")])?;
        if primary.is_empty() {
            return Err((at(&[Step::Key("primary")]), "at least one target".into()));
        }
        if p.backup.is_empty() {
            return Err((at(&[Step::Key("backup")]), "at least one backup set, e.g. [[\"site-b\"]]".into()));
        }
        let mut backups = Vec::new();
        for (k, set) in p.backup.iter().enumerate() {
            if set.is_empty() {
                return Err((at(&[Step::Key("backup"), Step::Index(k)]), "an empty backup set".into()));
            }
            backups.push(resolve(set, &[Step::Key("backup"), Step::Index(k)])?);
        }
        let node = nodes.entry(LowerName::new(&name)).or_default();
        if node.policy(rtype).is_some() || node.rrset(rtype).is_some() {
            return Err((at(&[Step::Key("name")]), format!("{name} already has {rtype} records")));
        }
        let index = self.policies.len();
        node.policies.push((rtype, index));
        let wire = name.to_lowercase().to_bytes().map_err(|e| (at(&[Step::Key("name")]), e.to_string()))?;
        self.by_wire_name.entry(wire.into_boxed_slice()).or_default()[usize::from(!v4)] = Some(index);
        let policy = Policy { primary, backups, trickle_ratio: p.trickle_ratio.0, geo: p.geo };
        self.policies.push(PolicyRecord { index, name, rtype, ttl: p.ttl, policy });
        Ok(())
    }

    /// The policy record for a lowercase wire-format name and a type (A or AAAA).
    pub fn policy_by_wire_name(&self, name: &[u8], rtype: RecordType) -> Option<&PolicyRecord> {
        let family = match rtype {
            RecordType::A => 0,
            RecordType::AAAA => 1,
            _ => return None,
        };
        let index = self.by_wire_name.get(name)?[family]?;
        Some(&self.policies[index])
    }

    /// The region of a client address (longest configured prefix).
    pub fn client_region(&self, client: IpAddr) -> Option<&str> {
        self.client_regions.iter().find(|(net, _)| net.contains(&client)).map(|(_, r)| r.as_str())
    }

    /// The ECS scope of answers chosen by the client's region: the longest configured
    /// prefix of the family, so no resolver shares an answer across two regions.
    pub fn region_scope(&self, client: IpAddr) -> u8 {
        if client.is_ipv4() { self.scope_v4 } else { self.scope_v6 }
    }

    fn zone_of(&self, name: &LowerName) -> Option<&Zone> {
        self.zones.iter().filter(|z| z.origin.zone_of(name)).max_by_key(|z| z.origin.num_labels())
    }
}

/// A query's outcome, ready to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA of negative answers.
    pub authority: Option<Record>,
    /// The answer depends on the client's region (ECS scope must say so).
    pub by_client_region: bool,
}

impl Response {
    fn refused() -> Self {
        Self { code: ResponseCode::Refused, answers: Vec::new(), authority: None, by_client_region: false }
    }
}

/// The zones with the policies' selections for the targets' current health: what the
/// server reads per query. Replaced whole when health, overrides or the config change.
#[derive(Debug)]
pub struct Answers {
    pub zones: Arc<Zones>,
    pub selections: Vec<Selection>,
    /// Per policy, kept across replacements (same order as `zones.policies`).
    pub counters: Vec<Arc<PolicyCounters>>,
}

/// How many CNAMEs are followed inside a zone.
const MAX_CNAME_CHAIN: usize = 8;

impl Answers {
    /// Answers `qtype` for `qname`; `client` is the ECS address or the resolver's.
    pub fn resolve(&self, qname: &LowerName, qtype: RecordType, client: IpAddr) -> Response {
        let Some(zone) = self.zones.zone_of(qname) else {
            return Response::refused();
        };
        let region = self.zones.client_region(client);
        let mut response =
            Response { code: ResponseCode::NoError, answers: Vec::new(), authority: None, by_client_region: false };
        let mut name = qname.clone();
        for _ in 0..=MAX_CNAME_CHAIN {
            let Some(node) = zone.nodes.get(&name) else {
                if response.answers.is_empty() {
                    response.authority = Some(zone.negative_soa.clone());
                    if !zone.empty_non_terminals.contains(&name) {
                        response.code = ResponseCode::NXDomain;
                    }
                }
                return response;
            };
            if let (Some(cname), false) = (node.rrset(RecordType::CNAME), qtype == RecordType::CNAME) {
                response.answers.extend_from_slice(cname);
                let RData::CNAME(target) = &cname[0].data else { unreachable!("a CNAME rrset") };
                name = LowerName::new(&target.0);
                if !zone.origin.zone_of(&name) {
                    return response;
                }
                continue;
            }
            let before = response.answers.len();
            if qtype == RecordType::ANY {
                node.rrsets.iter().for_each(|(_, set)| response.answers.extend_from_slice(set));
                for &(_, p) in &node.policies {
                    self.answer_policy(p, region, &mut response);
                }
            } else if let Some(p) = node.policy(qtype) {
                self.answer_policy(p, region, &mut response);
            } else if let Some(set) = node.rrset(qtype) {
                response.answers.extend_from_slice(set);
            }
            if response.answers.len() == before {
                response.authority = Some(zone.negative_soa.clone());
            }
            return response;
        }
        response
    }

    /// The next answer of policy record `index` for a client in `region`.
    pub fn choose(&self, index: usize, region: Option<&str>) -> Choice {
        self.selections[index].choose(&self.counters[index], region)
    }

    fn answer_policy(&self, index: usize, region: Option<&str>, response: &mut Response) {
        let record = &self.zones.policies[index];
        let Choice { addresses, by_client_region, .. } = self.choose(index, region);
        response.by_client_region |= by_client_region;
        response.answers.extend(addresses.into_iter().map(|a| {
            let data = match a {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            Record::from_rdata(record.name.clone(), record.ttl, data)
        }));
    }

    /// How each policy answers now.
    pub fn states(&self) -> impl Iterator<Item = (&PolicyRecord, Source)> {
        self.zones.policies.iter().zip(&self.selections).map(|(p, s)| (p, s.state()))
    }
}

/// A zone's name servers: absolute names, at least one.
fn name_servers(zone: &DnsZone) -> Result<Vec<Name>, ZonePathError> {
    if zone.ns.is_empty() {
        return Err((vec![Step::Key("ns")], "at least one name server".into()));
    }
    zone.ns
        .iter()
        .enumerate()
        .map(|(j, n)| {
            if n.ends_with('.') {
                parse_name(n)
            } else {
                Err(format!("{n:?}: name servers are absolute names (end with '.')"))
            }
            .map_err(|m| (vec![Step::Key("ns"), Step::Index(j)], m))
        })
        .collect()
}

/// The zone's SOA record, and the one negative answers carry (its TTL capped by the
/// SOA's minimum). `mname` defaults to the first name server, `rname` to hostmaster.
fn soa_records(zone: &DnsZone, origin: &Name, first_ns: &Name) -> Result<(Record, Record), ZonePathError> {
    let soa_at = |key: &'static str| vec![Step::Key("soa"), Step::Key(key)];
    let mname = match &zone.soa.mname {
        Some(m) => parse_name(m).map_err(|e| (soa_at("mname"), e))?,
        None => first_ns.clone(),
    };
    let rname = match &zone.soa.rname {
        Some(r) => parse_name(r).map_err(|e| (soa_at("rname"), e))?,
        None => Name::from_ascii("hostmaster")
            .expect("a label")
            .append_domain(origin)
            .map_err(|e| (soa_at("rname"), e.to_string()))?,
    };
    let s = &zone.soa;
    let clamp = |v: u32| v.min(i32::MAX as u32) as i32;
    let soa = SOA::new(mname, rname, s.serial, clamp(s.refresh), clamp(s.retry), clamp(s.expire), s.minimum);
    let soa_record = Record::from_rdata(origin.clone(), zone.ttl, RData::SOA(soa));
    let negative_soa = Record::from_rdata(origin.clone(), zone.ttl.min(s.minimum), soa_record.data.clone());
    Ok((soa_record, negative_soa))
}

/// Adds a record to its name's node, in the RRset of its type.
fn add_record(nodes: &mut HashMap<LowerName, Node>, name: &Name, record: Record) {
    let node = nodes.entry(LowerName::new(name)).or_default();
    let rtype = record.record_type();
    match node.rrsets.iter_mut().find(|(t, _)| *t == rtype) {
        Some((_, set)) => set.push(record),
        None => node.rrsets.push((rtype, vec![record])),
    }
}

/// The zone's static records; its own SOA and NS come from `soa` and `ns`, not from here.
fn add_records(zone: &DnsZone, origin: &Name, nodes: &mut HashMap<LowerName, Node>) -> Result<(), ZonePathError> {
    for (j, r) in zone.records.iter().enumerate() {
        let at = |key: &'static str| vec![Step::Key("record"), Step::Index(j), Step::Key(key)];
        let name = owner_name(&r.name, origin).map_err(|m| (at("name"), m))?;
        let rtype = record_type(&r.rtype).map_err(|m| (at("type"), m))?;
        if matches!(rtype, RecordType::SOA | RecordType::NS) && name == *origin {
            let key = if rtype == RecordType::SOA { "soa" } else { "ns" };
            return Err((at("type"), format!("the zone's {rtype} comes from dns.zone.{key}")));
        }
        if matches!(rtype, RecordType::OPT | RecordType::ANY | RecordType::AXFR | RecordType::IXFR) {
            return Err((at("type"), format!("{rtype} is not a record type that can be served")));
        }
        let data = RData::try_from_str(rtype, &r.data)
            .map_err(|e| (at("data"), format!("{:?} is not {rtype} data: {e}", r.data)))?;
        add_record(nodes, &name, Record::from_rdata(name.clone(), r.ttl.unwrap_or(zone.ttl), data));
    }
    Ok(())
}

/// Names in the zone above nodes that have no node of their own (they exist, with no
/// data: NODATA, not NXDOMAIN); refuses a CNAME beside other data.
fn empty_non_terminals(nodes: &HashMap<LowerName, Node>, origin: &Name) -> Result<HashSet<LowerName>, ZonePathError> {
    let mut empty = HashSet::new();
    for (name, node) in nodes {
        let has_cname = node.rrset(RecordType::CNAME).is_some();
        if has_cname && (node.rrsets.len() > 1 || !node.policies.is_empty()) {
            return Err((vec![Step::Key("record")], format!("{name} has a CNAME and other records")));
        }
        let mut parent = name.base_name();
        while LowerName::new(origin).zone_of(&parent) && !nodes.contains_key(&parent) {
            empty.insert(parent.clone());
            parent = parent.base_name();
        }
    }
    Ok(empty)
}

#[cfg(test)]
pub(crate) mod tests {
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
}
