//! Rules of the `[bgp]` table.

use std::collections::HashMap;
use std::time::Duration;

use super::bad_address;
use crate::config::Config;
use crate::config::bgp::{BgpConfig, DrainAction};
use crate::config::errors::{ConfigError, Ctx, Seg, key_path};

/// BFD intervals BIRD accepts and a host can keep: 10 ms to 10 s.
const BFD_INTERVALS: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(10));
/// At most this many prepends: more only makes the AS path long for every router.
const MAX_PREPEND: u32 = 16;

pub(super) fn validate_bgp(c: &Config, bgp: &BgpConfig, cx: &Ctx) -> Result<(), ConfigError> {
    if c.balancer.interfaces.is_empty() {
        return Err(cx.err(
            &key_path!["bgp"],
            "a controller without balancer.interfaces (a DNS vantage point) has no VIPs to announce: \
             remove [bgp] or give it interfaces",
        ));
    }
    if !(1..=u32::MAX).contains(&bgp.asn) || bgp.asn == 23456 {
        return Err(cx.err(&key_path!["bgp", "asn"], "an AS number 1..=4294967295, not 0 or 23456 (AS_TRANS)"));
    }
    if bgp.router_id(c.balancer.ipv4).is_none() {
        return Err(cx.err(&key_path!["bgp", "router_id"], "required when balancer.ipv4 is not set (an IPv4 address)"));
    }
    for (key, path) in [("include_file", &bgp.include_file), ("bird_socket", &bgp.bird_socket)] {
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(cx.err(&key_path!["bgp", key], format!("an absolute file path (got {:?})", path.display())));
        }
    }
    if bgp.stop_timeout.is_zero() || bgp.stop_timeout > Duration::from_secs(30) {
        return Err(cx.err(&key_path!["bgp", "stop_timeout"], "more than 0 and at most 30s"));
    }
    if bgp.stop_settle > Duration::from_secs(30) {
        return Err(cx.err(&key_path!["bgp", "stop_settle"], "at most 30s"));
    }
    validate_drain(bgp, cx)?;
    validate_peers(bgp, cx)
}

fn validate_drain(bgp: &BgpConfig, cx: &Ctx) -> Result<(), ConfigError> {
    let drain = &bgp.drain;
    match drain.action {
        DrainAction::Med if drain.med <= bgp.med => Err(cx.err(
            &key_path!["bgp", "drain", "med"],
            format!("must be above bgp.med ({}) to make a drained host's routes less preferred", bgp.med),
        )),
        DrainAction::Prepend if !(1..=MAX_PREPEND).contains(&drain.prepend) => {
            Err(cx.err(&key_path!["bgp", "drain", "prepend"], format!("1..={MAX_PREPEND} (got {})", drain.prepend)))
        }
        _ => Ok(()),
    }
}

fn validate_peers(bgp: &BgpConfig, cx: &Ctx) -> Result<(), ConfigError> {
    if bgp.peers.is_empty() {
        return Err(cx.err(&key_path!["bgp", "peer"], "at least one [[bgp.peer]] (a router to announce the VIPs to)"));
    }
    let mut addresses = HashMap::new();
    let mut names = HashMap::new();
    for (i, peer) in bgp.peers.iter().enumerate() {
        if let Some(name) = &peer.name
            && (name.is_empty() || name.len() > 32 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(cx.err(
                &key_path!["bgp", "peer", i, "name"],
                format!("{name:?}: 1 to 32 letters, digits or '_' (it names the BIRD protocol lb_<name>)"),
            ));
        }
        if let Some(j) = names.insert(peer.protocol_name(i), i) {
            return Err(cx.err(&key_path!["bgp", "peer", i, "name"], format!("the same name as bgp.peer[{j}]")));
        }
        if let Some(what) = bad_address(peer.address) {
            return Err(cx.err(&key_path!["bgp", "peer", i, "address"], format!("{} is {what}", peer.address)));
        }
        if let Some(j) = addresses.insert(peer.address, i) {
            return Err(
                cx.err(&key_path!["bgp", "peer", i, "address"], format!("{} is also bgp.peer[{j}]", peer.address))
            );
        }
        if peer.asn == 0 || peer.asn == 23456 {
            return Err(cx.err(&key_path!["bgp", "peer", i, "asn"], "an AS number, not 0 or 23456 (AS_TRANS)"));
        }
        if !(BFD_INTERVALS.0..=BFD_INTERVALS.1).contains(&peer.bfd_interval) {
            return Err(cx.err(&key_path!["bgp", "peer", i, "bfd_interval"], "between 10ms and 10s"));
        }
        if !(1..=255).contains(&peer.bfd_multiplier) {
            return Err(cx.err(&key_path!["bgp", "peer", i, "bfd_multiplier"], "1..=255"));
        }
    }
    Ok(())
}
