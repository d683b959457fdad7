//! `[[vip]]`: a service, its forwarding mode, rate limits and backends.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::checks::HealthCheckConfig;
use super::outlier::OutlierDetectionConfig;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// Unique name (used in logs, metrics and the admin interface).
    pub name: String,
    pub address: IpAddr,
    /// 1..=65535.
    #[serde(deserialize_with = "deserialize_port")]
    pub port: u16,
    /// Defaults to tcp.
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: ForwardingMode,
    /// Token bucket for new flows to the VIP (TCP SYNs, first datagrams of UDP flows).
    #[serde(default)]
    pub new_flow_limit: Option<RateLimitConfig>,
    /// Token bucket for every packet to the VIP.
    #[serde(default)]
    pub packet_limit: Option<RateLimitConfig>,
    /// Token bucket for new flows from each source prefix (`prefix_len`).
    #[serde(default)]
    pub source_limit: Option<RateLimitConfig>,
    /// Active health checks of every backend of the VIP.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier ejection from what the packet path sees (nat VIPs only: dsr replies
    /// bypass the balancer).
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// The VIP speaks plain HTTP/1: the status line of each response's first segment
    /// counts for `outlier_detection.consecutive_5xx` (nat mode).
    #[serde(default)]
    pub http: bool,
    /// Percent of a priority level's weight that must be available (healthy, not ejected)
    /// once the levels' total health is below 100%; below it the level spreads its load
    /// over all its backends, ignoring health, rather than overload the few left or
    /// black-hole the VIP. 0 disables (default 50, as Envoy's).
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: u32,
    /// A priority level keeps all its load while this factor x its available share of
    /// weight is at least 100% (default 1.4, as Envoy's); below, the next level takes the
    /// rest.
    #[serde(default)]
    pub overprovisioning_factor: OverprovisioningFactor,
    /// Regions to fail over to, in order, after the balancer's own region; regions not
    /// listed come last, together.
    #[serde(default)]
    pub failover_regions: Vec<String>,
    /// How a priority level's load is split between its localities: `"region/zone"` or
    /// `"region"` (all its zones as one) -> weight. Unlisted localities of a level that
    /// has listed ones take none; empty (default): by the backends' weights.
    #[serde(default)]
    pub locality_weights: BTreeMap<String, u32>,
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
}

/// Envoy's overprovisioning factor, kept in hundredths (140 = 1.4) as Envoy computes
/// with it; written as a number above 0 in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverprovisioningFactor(u32);

impl OverprovisioningFactor {
    pub fn from_hundredths(hundredths: u32) -> Self {
        Self(hundredths)
    }

    pub fn hundredths(&self) -> u32 {
        self.0
    }
}

impl Default for OverprovisioningFactor {
    fn default() -> Self {
        Self(140)
    }
}

impl<'de> Deserialize<'de> for OverprovisioningFactor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let factor = f64::deserialize(d)?;
        if !(0.01..=100.0).contains(&factor) {
            return Err(serde::de::Error::custom(format!("must be 0.01..=100 (got {factor})")));
        }
        Ok(Self((factor * 100.0).round() as u32))
    }
}

/// A token bucket, as a gateway's local rate limiter describes one: `quota` tokens every
/// `fill_interval`, at most `burst` held. (Refill is continuous, at quota / fill_interval.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub quota: u64,
    /// Like "1s" or "100ms"; default 1 s.
    #[serde(default = "default_fill_interval", with = "humantime_serde")]
    pub fill_interval: Duration,
    /// Tokens the bucket holds when full; defaults to `quota`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// `source_limit` only: leading bits of the client address that make a source
    /// (IPv4 8..=32, default 32; IPv6 32..=128, default 64).
    #[serde(default)]
    pub prefix_len: Option<u8>,
}

impl RateLimitConfig {
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.quota)
    }

    /// The time one token stands for, in whole nanoseconds.
    pub fn token_ns(&self) -> u64 {
        (self.fill_interval.as_nanos() / self.quota.max(1) as u128) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number (`lb_common::PROTO_TCP` / `PROTO_UDP`).
    pub fn number(&self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingMode {
    /// Destination and source rewritten; replies come back through the balancer.
    #[default]
    Nat,
    /// Direct server return (L2): only the destination MAC is rewritten.
    Dsr,
    /// Encapsulated direct server return: the packet, untouched, inside an outer IP header
    /// from the balancer to the backend (IPv4 in IPv4, IPv6 in IPv6, IPv4 in IPv6).
    Ipip,
    /// As `ipip`, with a UDP header between (GUE variant 1, `balancer.gue_port`) whose
    /// source port comes from the flow's hash, so backends spread flows over their queues.
    Gue,
}

impl ForwardingMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ForwardingMode::Nat => "nat",
            ForwardingMode::Dsr => "dsr",
            ForwardingMode::Ipip => "ipip",
            ForwardingMode::Gue => "gue",
        }
    }

    /// The value of `lb_common::VipInfo::mode` (`MODE_*`).
    pub fn number(&self) -> u8 {
        match self {
            ForwardingMode::Nat => lb_common::MODE_NAT,
            ForwardingMode::Dsr => lb_common::MODE_DSR,
            ForwardingMode::Ipip => lb_common::MODE_IPIP,
            ForwardingMode::Gue => lb_common::MODE_GUE,
        }
    }

    /// Replies bypass the balancer (dsr and the encapsulated modes).
    pub fn direct_return(&self) -> bool {
        *self != ForwardingMode::Nat
    }

    /// The packet goes to the backend inside an outer IP header (`ipip`, `gue`).
    pub fn encapsulated(&self) -> bool {
        matches!(self, ForwardingMode::Ipip | ForwardingMode::Gue)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Same family as the VIP; an IPv4 VIP in an encapsulated mode may have IPv6 backends.
    pub address: IpAddr,
    /// The VIP's port when omitted (0 straight out of serde, resolved by [`parse`]). In dsr
    /// and the encapsulated modes it must equal the VIP's port.
    #[serde(default, deserialize_with = "deserialize_backend_port")]
    pub port: u16,
    /// 0..=65535, default 1; 0 takes no new flows.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    /// Takes no new flows; its existing flows stay (default false).
    #[serde(default)]
    pub draining: bool,
}

impl BackendConfig {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// Its region and zone, an empty label standing for the balancer's.
    pub fn locality<'a>(&'a self, balancer_region: &'a str, balancer_zone: &'a str) -> (&'a str, &'a str) {
        let region = if self.region.is_empty() { balancer_region } else { &self.region };
        let zone = if self.zone.is_empty() { balancer_zone } else { &self.zone };
        (region, zone)
    }
}

fn default_panic_threshold() -> u32 {
    50
}
fn default_fill_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_weight() -> u32 {
    1
}

fn deserialize_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(serde::de::Error::custom("port must be 1..65535 (got 0)")),
        p => Ok(p),
    }
}

fn deserialize_backend_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(serde::de::Error::custom("port must be 1..65535 (got 0); leave it out to use the VIP's port")),
        p => Ok(p),
    }
}
