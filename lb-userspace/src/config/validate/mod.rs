//! The rules of a configuration that its types cannot express, each error naming its key.

mod bgp;
mod dns;
mod vip;

use bgp::validate_bgp;
use dns::validate_dns;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path};
use vip::{validate_health, validate_locality_weights, validate_rate_limits};

use super::errors::{ConfigError, Ctx, Seg, at_line, key_path};
use super::*;
use crate::plan::check_tunnels::checked_through_tunnel;
use crate::plan::maglev;

pub(super) fn validate(c: &Config, cx: &Ctx) -> Result<(), ConfigError> {
    if c.has_packet_path() || !c.vips.is_empty() || c.dns.is_none() {
        validate_interfaces(&c.balancer.interfaces, cx)?;
    }
    validate_balancer(&c.balancer, cx)?;
    validate_admin(&c.admin, cx)?;
    validate_vips(c, cx)?;
    if let Some(dns) = &c.dns {
        validate_dns(c, dns, cx)?;
    }
    if let Some(bgp) = &c.bgp {
        validate_bgp(c, bgp, cx)?;
    }
    Ok(())
}

fn validate_interfaces(interfaces: &[String], cx: &Ctx) -> Result<(), ConfigError> {
    if interfaces.is_empty() {
        return Err(cx.err(
            &key_path!["balancer", "interfaces"],
            "at least one interface is required (only a DNS vantage point, with [dns] and no [[vip]], runs without one)",
        ));
    }
    let mut seen_if = HashSet::new();
    for (i, name) in interfaces.iter().enumerate() {
        if !valid_ifname(name) {
            return Err(cx.err(
                &key_path!["balancer", "interfaces", i],
                format!("{name:?} is not a valid interface name (1 to {MAX_IFNAME_LEN} characters, no '/', ':' or whitespace)"),
            ));
        }
        if !seen_if.insert(name) {
            return Err(cx.err(&key_path!["balancer", "interfaces", i], format!("interface {name:?} is listed twice")));
        }
    }
    Ok(())
}

fn validate_balancer(b: &BalancerConfig, cx: &Ctx) -> Result<(), ConfigError> {
    let pin = &b.pin_dir;
    if !pin.starts_with(BPF_FS) || pin == Path::new(BPF_FS) || pin.components().any(|c| c == Component::ParentDir) {
        return Err(cx.err(
            &key_path!["balancer", "pin_dir"],
            format!("must be a directory under {BPF_FS} (got {:?})", pin.display().to_string()),
        ));
    }

    let m = b.maglev_table_size;
    if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&m) {
        return Err(cx.err(
            &key_path!["balancer", "maglev_table_size"],
            format!("must be a prime between {MIN_TABLE_SIZE} and {MAX_TABLE_SIZE} (got {m}); 65537 is a good choice"),
        ));
    }
    if !maglev::is_prime(m) {
        return Err(cx.err(
            &key_path!["balancer", "maglev_table_size"],
            format!("must be a prime number (got {m}); 65537 is a good choice"),
        ));
    }
    for (key, value) in [
        ("max_vips", b.max_vips),
        ("max_backends", b.max_backends),
        ("flow_table_size", b.flow_table_size),
        ("source_table_size", b.source_table_size),
    ] {
        if value == 0 {
            return Err(cx.err(&key_path!["balancer", key], "must be at least 1"));
        }
    }
    // Room for every VIP's table twice (the new one is written aside, then switched in)
    // must stay addressable by the u32 `VipInfo::table_offset`.
    if (b.max_vips as u64) * 2 * (m as u64) > u32::MAX as u64 {
        return Err(cx.err(
            &key_path!["balancer", "max_vips"],
            format!("max_vips ({}) x 2 x maglev_table_size ({m}) slots do not fit in 32 bits", b.max_vips),
        ));
    }
    if b.nat_port_min < MIN_NAT_PORT {
        return Err(cx.err(
            &key_path!["balancer", "nat_port_min"],
            format!("must be at least {MIN_NAT_PORT} (got {})", b.nat_port_min),
        ));
    }
    for (key, timeout) in b.flow_timeouts.all() {
        if !(flows::MIN_FLOW_TIMEOUT..=flows::MAX_FLOW_TIMEOUT).contains(&timeout) {
            return Err(cx.err(
                &key_path!["balancer", "flow_timeouts", key],
                format!(
                    "must be between {} and {} (got {})",
                    humantime::format_duration(flows::MIN_FLOW_TIMEOUT),
                    humantime::format_duration(flows::MAX_FLOW_TIMEOUT),
                    humantime::format_duration(timeout)
                ),
            ));
        }
    }
    if b.gue_port == 0 {
        return Err(cx.err(&key_path!["balancer", "gue_port"], "must be 1..65535 (got 0)"));
    }
    if b.nat_port_max < b.nat_port_min {
        return Err(cx.err(
            &key_path!["balancer", "nat_port_max"],
            format!("must not be below nat_port_min ({}) (got {})", b.nat_port_min, b.nat_port_max),
        ));
    }
    if let Some(a) = b.ipv4
        && let Some(what) = bad_address(IpAddr::V4(a))
    {
        return Err(cx.err(&key_path!["balancer", "ipv4"], format!("{a} is {what}")));
    }
    if let Some(a) = b.ipv6
        && let Some(what) = bad_address(IpAddr::V6(a))
    {
        return Err(cx.err(&key_path!["balancer", "ipv6"], format!("{a} is {what}")));
    }
    Ok(())
}

fn validate_admin(admin: &AdminConfig, cx: &Ctx) -> Result<(), ConfigError> {
    if let Some(token) = &admin.token
        && !valid_token(token)
    {
        return Err(cx.err(&key_path!["admin", "token"], "must be at least 16 characters, without spaces"));
    }
    if !admin.listen.ip().is_loopback() && admin.token.is_none() {
        return Err(cx.err(
            &key_path!["admin", "listen"],
            format!("{} is not a loopback address: set admin.token, or listen on 127.0.0.1", admin.listen),
        ));
    }
    Ok(())
}

/// Every VIP: a unique plain name, a unique service, the addresses its mode needs, and
/// its rate limits, health settings and backends.
fn validate_vips(c: &Config, cx: &Ctx) -> Result<(), ConfigError> {
    let b = &c.balancer;
    if c.vips.len() > b.max_vips as usize {
        return Err(cx.err(
            &key_path!["vip", b.max_vips as usize],
            format!("{} VIPs configured, more than balancer.max_vips ({})", c.vips.len(), b.max_vips),
        ));
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut services: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    let mut all_backends: HashSet<SocketAddr> = HashSet::new();
    for (i, vip) in c.vips.iter().enumerate() {
        if !plain_name(&vip.name) {
            return Err(cx.err(
                &key_path!["vip", i, "name"],
                format!(
                    "{:?}: use letters, digits, '.', '_' and '-' (it names the VIP in metrics and admin URLs)",
                    vip.name
                ),
            ));
        }
        if let Some(&j) = names.get(vip.name.as_str()) {
            return Err(cx.err(
                &key_path!["vip", i, "name"],
                format!(
                    "duplicate VIP name {:?} (also vip[{j}]{})",
                    vip.name,
                    at_line(cx, &key_path!["vip", j, "name"])
                ),
            ));
        }
        names.insert(&vip.name, i);

        let a = vip.address;
        if let Some(what) = bad_address(a) {
            return Err(cx.err(&key_path!["vip", i, "address"], format!("{a} is {what}")));
        }
        let own = match a {
            IpAddr::V4(v) => b.ipv4 == Some(v),
            IpAddr::V6(v) => b.ipv6 == Some(v),
        };
        if own {
            return Err(cx.err(
                &key_path!["vip", i, "address"],
                format!(
                    "{a} is the balancer's own address (balancer.ipv{}); a VIP needs an address of its own",
                    if a.is_ipv4() { 4 } else { 6 }
                ),
            ));
        }
        if let Some(&j) = services.get(&(a, vip.port, vip.protocol)) {
            return Err(cx.err(
                &key_path!["vip", i, "address"],
                format!(
                    "{}/{} is already served by vip[{j}] ({:?})",
                    SocketAddr::new(a, vip.port),
                    vip.protocol,
                    c.vips[j].name
                ),
            ));
        }
        services.insert((a, vip.port, vip.protocol), i);

        validate_nat_source(vip, i, b, cx)?;
        validate_rate_limits(vip, i, cx)?;
        validate_health(vip, i, cx)?;
        validate_locality_weights(vip, i, b, cx)?;
        validate_backends(vip, i, b, &mut all_backends, cx)?;
    }
    validate_tunnel_ends(c, cx)
}

/// Each backend checked through a tunnel (by address and encapsulation) takes one of the
/// `MAX_CHECK_TUNNELS` marks; the error names the VIP whose backends pass the limit.
fn validate_tunnel_ends(c: &Config, cx: &Ctx) -> Result<(), ConfigError> {
    let mut ends = BTreeSet::new();
    for (vip, _, end) in checked_through_tunnel(c) {
        ends.insert(end);
        if ends.len() > lb_common::MAX_CHECK_TUNNELS as usize {
            let i = c.vips.iter().position(|v| std::ptr::eq(v, vip)).expect("a VIP of the config");
            return Err(cx.err(
                &key_path!["vip", i, "health_check"],
                format!(
                    "more than {} backends (by address and mode) checked through ipip or gue tunnels",
                    lb_common::MAX_CHECK_TUNNELS
                ),
            ));
        }
    }
    Ok(())
}

/// A nat VIP needs the balancer's own address of its family: the source of NATed packets.
/// An encapsulated VIP needs the one of each backend's family: the outer source; and with
/// health checks the one of its own family: their source.
fn validate_nat_source(vip: &VipConfig, i: usize, b: &BalancerConfig, cx: &Ctx) -> Result<(), ConfigError> {
    let own_key = |a: IpAddr| match a {
        IpAddr::V4(_) if b.ipv4.is_none() => Some("balancer.ipv4"),
        IpAddr::V6(_) if b.ipv6.is_none() => Some("balancer.ipv6"),
        _ => None,
    };
    if vip.mode == ForwardingMode::Nat
        && let Some(key) = own_key(vip.address)
    {
        return Err(cx.err(
            &key_path!["vip", i, "address"],
            format!("a nat mode {} VIP needs {key} (the source address of NATed packets)", family_name(vip.address)),
        ));
    }
    if !vip.mode.encapsulated() {
        return Ok(());
    }
    if vip.health_check.is_some()
        && let Some(key) = own_key(vip.address)
    {
        return Err(cx.err(
            &key_path!["vip", i, "health_check"],
            format!(
                "the checks of a {} mode VIP go through the tunnel to the VIP from {key}: set it",
                vip.mode.as_str()
            ),
        ));
    }
    for (j, be) in vip.backends.iter().enumerate() {
        if let Some(key) = own_key(be.address) {
            return Err(cx.err(
                &key_path!["vip", i, "backend", j, "address"],
                format!(
                    "{} backend {} of a {} mode VIP needs {key} (the outer source address of encapsulated packets)",
                    family_name(be.address),
                    be.address,
                    vip.mode.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// Which families a backend of `vip` may have: the VIP's own, and in the encapsulated
/// modes IPv6 for an IPv4 VIP too (IPv4 in IPv6, for IPv6-only backends). The error says why.
fn backend_family_error(vip: &VipConfig, ba: IpAddr) -> Option<String> {
    let a = vip.address;
    if ba.is_ipv4() == a.is_ipv4() || (vip.mode.encapsulated() && a.is_ipv4()) {
        return None;
    }
    Some(if vip.mode.encapsulated() {
        format!(
            "IPv4 backend {ba} for an IPv6 VIP ({a}): {} carries IPv6 VIPs in IPv6 only (IPv4 VIPs may have IPv6 backends)",
            vip.mode.as_str()
        )
    } else {
        format!("{} backend {ba} for an {} VIP ({a}); families must match", family_name(ba), family_name(a))
    })
}

/// A VIP's backends: as many as its table has slots, of its family, unique, and (with
/// those of the other VIPs, in `all_backends`) no more than `balancer.max_backends`.
fn validate_backends(
    vip: &VipConfig,
    i: usize,
    b: &BalancerConfig,
    all_backends: &mut HashSet<SocketAddr>,
    cx: &Ctx,
) -> Result<(), ConfigError> {
    let m = b.maglev_table_size;
    if vip.backends.len() > m as usize {
        return Err(cx.err(
            &key_path!["vip", i, "backend"],
            format!("{} backends, more than balancer.maglev_table_size ({m})", vip.backends.len()),
        ));
    }

    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (j, be) in vip.backends.iter().enumerate() {
        let ba = be.address;
        if let Some(message) = backend_family_error(vip, ba) {
            return Err(cx.err(&key_path!["vip", i, "backend", j, "address"], message));
        }
        if let Some(what) = bad_address(ba) {
            return Err(cx.err(&key_path!["vip", i, "backend", j, "address"], format!("{ba} is {what}")));
        }
        if vip.mode.direct_return() && be.port != vip.port {
            return Err(cx.err(
                &key_path!["vip", i, "backend", j, "port"],
                format!("{} backends must use the VIP's port {} (got {})", vip.mode.as_str(), vip.port, be.port),
            ));
        }
        if be.weight > MAX_WEIGHT {
            return Err(cx.err(
                &key_path!["vip", i, "backend", j, "weight"],
                format!("must be 0..={MAX_WEIGHT} (got {})", be.weight),
            ));
        }
        let sa = be.socket_addr();
        if let Some(&k) = seen.get(&sa) {
            return Err(cx.err(
                &key_path!["vip", i, "backend", j, "address"],
                format!(
                    "duplicate backend {sa} (also backend[{k}]{})",
                    at_line(cx, &key_path!["vip", i, "backend", k])
                ),
            ));
        }
        seen.insert(sa, j);
        if all_backends.insert(sa) && all_backends.len() > b.max_backends as usize {
            return Err(cx.err(
                &key_path!["vip", i, "backend", j],
                format!("more than balancer.max_backends ({}) distinct backends (address, port)", b.max_backends),
            ));
        }
    }
    Ok(())
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

pub(super) fn bad_address(a: IpAddr) -> Option<&'static str> {
    match a {
        IpAddr::V4(v) if v.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v) if v.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v) if v.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v) if v.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v) if v.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

pub(super) fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// An admin token: 16 characters or more, none of them spaces or control characters.
pub(super) fn valid_token(token: &str) -> bool {
    token.len() >= 16 && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A name that appears in metrics, URLs and peers' views.
pub(super) fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}
