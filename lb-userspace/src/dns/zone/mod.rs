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
pub(crate) mod tests;
