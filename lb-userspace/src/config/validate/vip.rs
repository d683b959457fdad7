//! Rules of a VIP's rate limits, health checks and outlier detection.

use std::time::Duration;

use super::family_name;
use crate::config::errors::{ConfigError, Ctx, Seg, key_path};
use crate::config::*;

pub(super) fn validate_rate_limits(vip: &VipConfig, i: usize, cx: &Ctx) -> Result<(), ConfigError> {
    for (key, limit) in [
        ("new_flow_limit", &vip.new_flow_limit),
        ("packet_limit", &vip.packet_limit),
        ("source_limit", &vip.source_limit),
    ] {
        let Some(limit) = limit else { continue };
        if limit.quota == 0 {
            return Err(cx.err(&key_path!["vip", i, key, "quota"], "must be at least 1 token"));
        }
        if !(MIN_FILL_INTERVAL..=MAX_FILL_INTERVAL).contains(&limit.fill_interval) {
            return Err(cx.err(
                &key_path!["vip", i, key, "fill_interval"],
                format!("must be between 1ms and 1h (got {})", humantime::format_duration(limit.fill_interval)),
            ));
        }
        if limit.token_ns() < MIN_TOKEN_NS {
            return Err(cx.err(
                &key_path!["vip", i, key, "quota"],
                format!(
                    "{} tokens every {} is more than the packet path enforces accurately ({} per second)",
                    limit.quota,
                    humantime::format_duration(limit.fill_interval),
                    1_000_000_000 / MIN_TOKEN_NS
                ),
            ));
        }
        if limit.burst() == 0 {
            return Err(cx.err(&key_path!["vip", i, key, "burst"], "must be at least 1 token"));
        }
        if limit.burst() as u128 * limit.token_ns() as u128 > MAX_REFILL.as_nanos() {
            return Err(cx.err(
                &key_path!["vip", i, key, "burst"],
                format!("{} tokens take more than 24h to refill at this rate", limit.burst()),
            ));
        }
        match (key, limit.prefix_len) {
            ("source_limit", Some(len)) => {
                let (min, max, _) = if vip.address.is_ipv4() { SOURCE_PREFIX_V4 } else { SOURCE_PREFIX_V6 };
                if !(min..=max).contains(&len) {
                    return Err(cx.err(
                        &key_path!["vip", i, key, "prefix_len"],
                        format!("must be {min}..={max} for an {} VIP (got {len})", family_name(vip.address)),
                    ));
                }
            }
            ("source_limit", None) => {}
            (_, Some(_)) => {
                return Err(
                    cx.err(&key_path!["vip", i, key, "prefix_len"], "only source_limit groups clients by prefix")
                );
            }
            (_, None) => {}
        }
    }
    Ok(())
}

pub(super) fn validate_health(vip: &VipConfig, i: usize, cx: &Ctx) -> Result<(), ConfigError> {
    if vip.panic_threshold > 100 {
        return Err(cx.err(
            &key_path!["vip", i, "panic_threshold"],
            format!("a percentage, 0..=100 (got {})", vip.panic_threshold),
        ));
    }
    if let Some(check) = &vip.health_check {
        validate_check(check, &key_path!["vip", i, "health_check"], cx)?;
    }
    if let Some(outlier) = &vip.outlier_detection {
        let fail = |key: &str, message: String| cx.err(&key_path!["vip", i, "outlier_detection", key], message);
        if vip.mode.direct_return() {
            return Err(cx.err(
                &key_path!["vip", i, "outlier_detection"],
                format!(
                    "needs nat mode: in {} mode replies bypass the balancer, so it sees no failures (no passive signals)",
                    vip.mode.as_str()
                ),
            ));
        }
        if outlier.interval < Duration::from_millis(100) {
            return Err(fail("interval", "must be at least 100ms".into()));
        }
        if outlier.base_ejection_time.is_zero() {
            return Err(fail("base_ejection_time", "must be more than 0".into()));
        }
        if outlier.max_ejection_time < outlier.base_ejection_time {
            return Err(fail("max_ejection_time", "must be at least base_ejection_time".into()));
        }
        if let Some((key, value)) = outlier.percentages().into_iter().find(|(_, value)| *value > 100) {
            return Err(fail(key, format!("a percentage, 0..=100 (got {value})")));
        }
    }
    if vip.http && vip.mode.direct_return() {
        return Err(cx.err(
            &key_path!["vip", i, "http"],
            format!("needs nat mode: in {} mode responses bypass the balancer", vip.mode.as_str()),
        ));
    }
    for (j, region) in vip.failover_regions.iter().enumerate() {
        if region.is_empty() || vip.failover_regions[..j].contains(region) {
            return Err(
                cx.err(&key_path!["vip", i, "failover_regions", j], format!("empty or repeated region {region:?}"))
            );
        }
    }
    Ok(())
}

/// `locality_weights`: keys `region` or `region/zone` that name some backend's locality
/// (empty labels being the balancer's), weights of at least 1.
pub(super) fn validate_locality_weights(
    vip: &VipConfig,
    i: usize,
    b: &BalancerConfig,
    cx: &Ctx,
) -> Result<(), ConfigError> {
    let localities: Vec<(&str, &str)> = vip.backends.iter().map(|be| be.locality(&b.region, &b.zone)).collect();
    for (key, &weight) in &vip.locality_weights {
        let at = key_path!["vip", i, "locality_weights", key.as_str()];
        let (region, zone) = match key.split_once('/') {
            Some((region, zone)) => (region, Some(zone)),
            None => (key.as_str(), None),
        };
        if region.is_empty() || zone.is_some_and(|z| z.is_empty() || z.contains('/')) {
            return Err(cx.err(&at, format!("{key:?}: a locality is \"region\" or \"region/zone\"")));
        }
        if !localities.iter().any(|&(r, z)| r == region && zone.is_none_or(|zone| zone == z)) {
            return Err(cx.err(&at, format!("{key:?} is the locality of none of the VIP's backends")));
        }
        if weight == 0 {
            return Err(cx.err(&at, "must be at least 1 (leave a locality out to give it none)"));
        }
    }
    Ok(())
}

/// ", line N" for a key path, or nothing when the line is unknown.
/// Rules of a `health_check` table at `at`.
pub(super) fn validate_check(check: &HealthCheckConfig, at: &[Seg], cx: &Ctx) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| {
        let mut path = at.to_vec();
        path.push(Seg::from(key));
        cx.err(&path, message)
    };
    if check.interval < Duration::from_millis(100) {
        return Err(fail("interval", "must be at least 100ms".into()));
    }
    if check.timeout.is_zero() || check.timeout > check.interval {
        return Err(fail(
            "timeout",
            format!("must be more than 0 and at most the interval ({})", humantime::format_duration(check.interval)),
        ));
    }
    if check.jitter > check.interval {
        return Err(fail("jitter", "must be at most the interval".into()));
    }
    for key in ["healthy_threshold", "unhealthy_threshold"] {
        let value = if key == "healthy_threshold" { check.healthy_threshold } else { check.unhealthy_threshold };
        if value == 0 {
            return Err(fail(key, "must be at least 1".into()));
        }
    }
    if check.port == Some(0) {
        return Err(fail("port", "must be 1..65535".into()));
    }
    if !check.path.starts_with('/') || check.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail("path", format!("must start with '/' and hold no spaces (got {:?})", check.path)));
    }
    if check.host.as_deref().is_some_and(|h| h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control())) {
        return Err(fail("host", "must be a host name without spaces".into()));
    }
    if check.expected_statuses.is_empty() {
        return Err(fail("expected_statuses", "at least one status code or range".into()));
    }
    Ok(())
}
