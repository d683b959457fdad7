//! Rules of the `[dns]` table.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{bad_address, plain_name, valid_token, vip::validate_check};
use crate::config::errors::{ConfigError, Ctx, Seg, key_path};
use crate::config::{Config, MAX_WEIGHT, dns};

pub(super) fn validate_dns(c: &Config, dns: &dns::DnsConfig, cx: &Ctx) -> Result<(), ConfigError> {
    if dns.listen.is_empty() {
        return Err(cx.err(&key_path!["dns", "listen"], "at least one address, e.g. [\"0.0.0.0:53\"]"));
    }
    let mut seen = HashSet::new();
    for (i, addr) in dns.listen.iter().enumerate() {
        if !seen.insert(addr) {
            return Err(cx.err(&key_path!["dns", "listen", i], format!("{addr} is listed twice")));
        }
    }
    if dns.udp_sockets.is_some_and(|n| !(1..=64).contains(&n)) {
        return Err(cx.err(&key_path!["dns", "udp_sockets"], "1..=64"));
    }
    let vantage = dns.vantage_name(&c.balancer.region);
    if !plain_name(vantage) {
        return Err(cx.err(&key_path!["dns", "vantage"], format!("{vantage:?}: use letters, digits, '.', '_' and '-'")));
    }
    if dns.peer_interval < Duration::from_millis(100) {
        return Err(cx.err(&key_path!["dns", "peer_interval"], "must be at least 100ms"));
    }
    if dns.peer_timeout.is_zero() || dns.peer_timeout > dns.peer_interval {
        return Err(cx.err(&key_path!["dns", "peer_timeout"], "must be more than 0 and at most peer_interval"));
    }
    if dns.peer_stale_after() < dns.peer_interval {
        return Err(cx.err(&key_path!["dns", "peer_stale_after"], "must be at least peer_interval"));
    }
    validate_peers(dns, vantage, cx)?;
    validate_targets(c, dns, cx)?;
    crate::dns::zone::Zones::compile(dns).map_err(|e| {
        let mut path = key_path!["dns", "zone", e.zone].to_vec();
        path.extend(e.path.into_iter().map(|step| match step {
            crate::dns::zone::Step::Key(key) => Seg::from(key),
            crate::dns::zone::Step::Index(index) => Seg::from(index),
        }));
        cx.err(&path, e.message)
    })?;
    Ok(())
}

/// Peers: plain, unique names other than this vantage point, good tokens; a quorum they can reach;
/// client regions named.
fn validate_peers(dns: &dns::DnsConfig, vantage: &str, cx: &Ctx) -> Result<(), ConfigError> {
    let mut peers = HashSet::from([vantage]);
    for (i, peer) in dns.peers.iter().enumerate() {
        if !plain_name(&peer.name) {
            return Err(cx.err(
                &key_path!["dns", "peer", i, "name"],
                format!("{:?}: use letters, digits, '.', '_' and '-'", peer.name),
            ));
        }
        if !peers.insert(&peer.name) {
            return Err(cx.err(
                &key_path!["dns", "peer", i, "name"],
                format!("{:?} is this vantage point or another peer", peer.name),
            ));
        }
        if peer.token.as_deref().is_some_and(|t| !valid_token(t)) {
            return Err(cx.err(&key_path!["dns", "peer", i, "token"], "must be at least 16 characters, without spaces"));
        }
    }
    let vantage_points = dns.peers.len() as u32 + 1;
    if let Some(q) = dns.quorum
        && !(1..=vantage_points).contains(&q)
    {
        return Err(cx.err(
            &key_path!["dns", "quorum"],
            format!("1..={vantage_points} (this controller and {} peers; got {q})", dns.peers.len()),
        ));
    }
    for (i, region) in dns.client_regions.iter().enumerate() {
        if region.region.is_empty() {
            return Err(cx.err(&key_path!["dns", "client_region", i, "region"], "must not be empty"));
        }
    }
    Ok(())
}

/// Targets: plain, unique names, unicast addresses, weights, and exactly one source of health.
fn validate_targets(c: &Config, dns: &dns::DnsConfig, cx: &Ctx) -> Result<(), ConfigError> {
    let mut targets = HashMap::new();
    for (i, t) in dns.targets.iter().enumerate() {
        if !plain_name(&t.name) {
            return Err(cx.err(
                &key_path!["dns", "target", i, "name"],
                format!("{:?}: use letters, digits, '.', '_' and '-'", t.name),
            ));
        }
        if let Some(j) = targets.insert(t.name.as_str(), i) {
            return Err(cx.err(
                &key_path!["dns", "target", i, "name"],
                format!("duplicate target name {:?} (also dns.target[{j}])", t.name),
            ));
        }
        if let Some(what) = bad_address(t.address) {
            return Err(cx.err(&key_path!["dns", "target", i, "address"], format!("{} is {what}", t.address)));
        }
        if !(1..=MAX_WEIGHT).contains(&t.weight) {
            return Err(
                cx.err(&key_path!["dns", "target", i, "weight"], format!("1..={MAX_WEIGHT} (got {})", t.weight))
            );
        }
        match (&t.health_check, &t.vip) {
            (Some(check), None) => {
                validate_check(check, &key_path!["dns", "target", i, "health_check"], cx)?;
                if check.port.is_none() {
                    return Err(cx.err(
                        &key_path!["dns", "target", i, "health_check", "port"],
                        "a target's check needs its port",
                    ));
                }
            }
            (None, Some(vip)) => {
                if !c.vips.iter().any(|v| &v.name == vip) {
                    return Err(cx.err(
                        &key_path!["dns", "target", i, "vip"],
                        format!("no [[vip]] named {vip:?} on this balancer"),
                    ));
                }
            }
            _ => {
                return Err(cx.err(
                    &key_path!["dns", "target", i],
                    "needs exactly one of health_check (probe it) or vip (a VIP of this balancer)",
                ));
            }
        }
    }
    Ok(())
}
