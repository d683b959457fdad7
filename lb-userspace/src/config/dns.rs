//! `[dns]`: the authoritative DNS server for the names that front whole sites, with
//! failover routing policies over site targets whose health is decided by a quorum of
//! vantage points (this controller and its peers).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::checks::HealthCheckConfig;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Addresses the server answers on, over UDP and TCP (required, non-empty).
    pub listen: Vec<SocketAddr>,
    /// UDP sockets per address, each read by its own task (default: one per CPU).
    #[serde(default)]
    pub udp_sockets: Option<u32>,
    /// This controller's name among the vantage points; peers list it under that name.
    /// Default: `balancer.region`, else "local".
    #[serde(default)]
    pub vantage: Option<String>,
    /// Vantage points that must see a target down before its answers move away
    /// (default: a majority of this controller and its peers).
    #[serde(default)]
    pub quorum: Option<u32>,
    /// How often each peer's view is fetched (default 1 s).
    #[serde(default = "default_peer_interval", with = "humantime_serde")]
    pub peer_interval: Duration,
    /// A fetch not answered within this fails (default 500 ms; at most the interval).
    #[serde(default = "default_peer_timeout", with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// A peer's view older than this no longer votes (default 3 x peer_interval).
    #[serde(default, with = "humantime_serde")]
    pub peer_stale_after: Option<Duration>,
    /// DNS-over-TCP connections open at once; more are closed as soon as accepted
    /// (default 256).
    #[serde(default = "default_tcp_max_connections")]
    pub tcp_max_connections: NonZeroU32,
    /// A TCP connection that sends no query for this long is closed (default 10 s).
    #[serde(default = "default_tcp_idle_timeout", with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// The rest of a TCP query once its first byte arrived, and the write of its answer,
    /// take at most this, or the connection is closed (default 2 s).
    #[serde(default = "default_tcp_io_timeout", with = "humantime_serde")]
    pub tcp_io_timeout: Duration,
    #[serde(rename = "peer", default)]
    pub peers: Vec<DnsPeer>,
    /// Client prefixes mapped to regions, for policies with `geo = true`.
    #[serde(rename = "client_region", default)]
    pub client_regions: Vec<ClientRegion>,
    #[serde(rename = "target", default)]
    pub targets: Vec<DnsTarget>,
    #[serde(rename = "zone", default)]
    pub zones: Vec<DnsZone>,
}

impl DnsConfig {
    pub fn vantage_name<'a>(&'a self, balancer_region: &'a str) -> &'a str {
        match &self.vantage {
            Some(name) => name,
            None if !balancer_region.is_empty() => balancer_region,
            None => "local",
        }
    }

    /// Down votes needed to take a target out of the answers.
    pub fn quorum(&self) -> u32 {
        let vantage_points = self.peers.len() as u32 + 1;
        self.quorum.unwrap_or(vantage_points / 2 + 1)
    }

    pub fn udp_sockets(&self) -> usize {
        match self.udp_sockets {
            Some(n) => n as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub fn peer_stale_after(&self) -> Duration {
        self.peer_stale_after.unwrap_or(self.peer_interval * 3)
    }
}

/// Another controller whose view of the targets votes here; its admin interface serves
/// `GET /v1/dns/view`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsPeer {
    /// The peer's vantage name (its `dns.vantage`).
    pub name: String,
    /// The peer's admin interface.
    pub admin: SocketAddr,
    /// The peer's `admin.token`.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRegion {
    pub prefix: IpNet,
    pub region: String,
}

/// A site: the address answered for it, and how its health is judged from here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsTarget {
    /// The same on every vantage point: views are exchanged by target name.
    pub name: String,
    /// What the answers hold (usually the site's VIP).
    pub address: IpAddr,
    /// Region of the site, for `geo` backup choice.
    #[serde(default)]
    pub region: String,
    /// Share among backups (weighted round robin; default 1).
    #[serde(default = "super::vip::default_weight")]
    pub weight: u32,
    /// Probe the target (`port` is required).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Or, for the site this controller balances: the target is up while this VIP has a
    /// backend that can take new flows.
    #[serde(default)]
    pub vip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsZone {
    /// The zone's name, e.g. "example.com." (the trailing dot is optional).
    pub origin: String,
    /// TTL of static records that give none, and of SOA and NS (default 3600).
    #[serde(default = "default_zone_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub soa: SoaConfig,
    /// Name servers of the zone (absolute names; required).
    pub ns: Vec<String>,
    #[serde(rename = "record", default)]
    pub records: Vec<StaticRecord>,
    #[serde(rename = "policy", default)]
    pub policies: Vec<PolicyRecordConfig>,
}

/// The zone's SOA; `mname` defaults to the first `ns`, `rname` to `hostmaster.<origin>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoaConfig {
    #[serde(default)]
    pub mname: Option<String>,
    #[serde(default)]
    pub rname: Option<String>,
    #[serde(default = "default_serial")]
    pub serial: u32,
    #[serde(default = "default_refresh")]
    pub refresh: u32,
    #[serde(default = "default_retry")]
    pub retry: u32,
    #[serde(default = "default_expire")]
    pub expire: u32,
    /// TTL of negative answers (NXDOMAIN, NODATA; default 60).
    #[serde(default = "default_minimum")]
    pub minimum: u32,
}

impl Default for SoaConfig {
    fn default() -> Self {
        Self {
            mname: None,
            rname: None,
            serial: default_serial(),
            refresh: default_refresh(),
            retry: default_retry(),
            expire: default_expire(),
            minimum: default_minimum(),
        }
    }
}

/// A record answered as written: `data` in zone-file syntax, names in it absolute.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRecord {
    /// Relative to the origin ("www"), "@" for the origin, or absolute ("www.example.com.").
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub data: String,
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// An A or AAAA record with a failover routing policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecordConfig {
    pub name: String,
    /// "A" or "AAAA".
    #[serde(rename = "type")]
    pub rtype: String,
    /// Default 30 s: failover takes TTL + interval x unhealthy_threshold.
    #[serde(default = "default_policy_ttl")]
    pub ttl: u32,
    /// Targets answered while any of them is up (all the up ones).
    pub primary: Vec<String>,
    /// Sets of targets in order of preference; one target of the first set with an up
    /// target is answered, by weighted round robin.
    pub backup: Vec<Vec<String>>,
    /// Share of answers that go to the backups while a primary is up (0..=1); 1 sends all.
    #[serde(default)]
    pub trickle_ratio: Ratio,
    /// Prefer backups in the client's region (EDNS Client Subnet, else the resolver's
    /// address, mapped by `dns.client_region`).
    #[serde(default)]
    pub geo: bool,
}

/// A share 0..=1 (validated: never NaN, so equality is total).
#[derive(Debug, Clone, Copy, Default, PartialEq, PartialOrd, Deserialize)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl Eq for Ratio {}

fn default_peer_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_peer_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_tcp_max_connections() -> NonZeroU32 {
    NonZeroU32::new(256).expect("not zero")
}
fn default_tcp_idle_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_tcp_io_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_zone_ttl() -> u32 {
    3600
}
fn default_policy_ttl() -> u32 {
    30
}
fn default_serial() -> u32 {
    1
}
fn default_refresh() -> u32 {
    3600
}
fn default_retry() -> u32 {
    600
}
fn default_expire() -> u32 {
    604_800
}
fn default_minimum() -> u32 {
    60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_limits_default_and_refuse_zero_connections() {
        let dns: DnsConfig = toml::from_str("listen = [\"127.0.0.1:53\"]").unwrap();
        let limits = (dns.tcp_max_connections.get(), dns.tcp_idle_timeout, dns.tcp_io_timeout);
        assert_eq!(limits, (256, Duration::from_secs(10), Duration::from_secs(2)));
        let set: DnsConfig = toml::from_str(
            "listen = [\"127.0.0.1:53\"]\ntcp_max_connections = 8\ntcp_idle_timeout = \"1s\"\ntcp_io_timeout = \"250ms\"",
        )
        .unwrap();
        assert_eq!(set.tcp_max_connections.get(), 8);
        assert_eq!(set.tcp_io_timeout, Duration::from_millis(250));
        assert!(toml::from_str::<DnsConfig>("listen = [\"127.0.0.1:53\"]\ntcp_max_connections = 0").is_err());
    }
}
