//! `[bgp]`: the VIPs announced to the routers by BGP through BIRD 2, so that several
//! balancer hosts share them by ECMP. lb writes a BIRD include file (the announced prefixes,
//! the peers, BFD) and asks BIRD to reload it over its control socket.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// This host's AS number (required); every balancer host of a fleet usually shares it.
    pub asn: u32,
    /// BIRD's router id (default: `balancer.ipv4`).
    #[serde(default)]
    pub router_id: Option<Ipv4Addr>,
    /// The BIRD include file lb writes (default /var/lib/lb/bird-lb.conf); BIRD's own
    /// config includes it (config/bird-fleet.conf).
    #[serde(default = "default_include_file")]
    pub include_file: PathBuf,
    /// BIRD's control socket (default /run/bird/bird.ctl, Debian's).
    #[serde(default = "default_bird_socket")]
    pub bird_socket: PathBuf,
    /// MED of the announcements while this host serves (default 0).
    #[serde(default)]
    pub med: u32,
    /// Standard communities ("65001:100") added to every announcement.
    #[serde(default)]
    pub communities: Vec<Community>,
    /// How long `lb stop --detach` waits for BIRD to withdraw the routes (default 5 s).
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// After BIRD has withdrawn them, the time given to the routers to move the traffic
    /// before the program is detached (default 1 s).
    #[serde(default = "default_stop_settle", with = "humantime_serde")]
    pub stop_settle: Duration,
    /// What `lb host drain` does to the announcements.
    #[serde(default)]
    pub drain: DrainConfig,
    /// The routers (required, at least one).
    #[serde(rename = "peer", default)]
    pub peers: Vec<BgpPeer>,
}

impl BgpConfig {
    /// The router id: `router_id`, else the balancer's IPv4 address (validated to exist).
    pub fn router_id(&self, balancer_ipv4: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.router_id.or(balancer_ipv4)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpPeer {
    /// Names the BIRD protocol (`lb_<name>`); letters, digits and '_' (default peer1, peer2...).
    #[serde(default)]
    pub name: Option<String>,
    /// The router's address on the link to this host.
    pub address: IpAddr,
    /// The router's AS number.
    pub asn: u32,
    /// BFD on the session (default on), for sub-second detection of a dead host.
    #[serde(default = "default_true")]
    pub bfd: bool,
    /// BFD's transmit and receive interval (default 100 ms).
    #[serde(default = "default_bfd_interval", with = "humantime_serde")]
    pub bfd_interval: Duration,
    /// Missed BFD packets that take the session down (default 3).
    #[serde(default = "default_bfd_multiplier")]
    pub bfd_multiplier: u32,
}

impl BgpPeer {
    /// The BIRD protocol's name: `lb_` and the peer's name (the `index`th from 0, `peer1` by default).
    pub fn protocol_name(&self, index: usize) -> String {
        match &self.name {
            Some(name) => format!("lb_{name}"),
            None => format!("lb_peer{}", index + 1),
        }
    }
}

/// How a drained host moves traffic away: its routes stay, less preferred (MED, AS-path
/// prepend), or go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// "med" (default), "prepend" or "withdraw".
    #[serde(default)]
    pub action: DrainAction,
    /// MED while drained with "med" (default 1000; above `bgp.med`).
    #[serde(default = "default_drain_med")]
    pub med: u32,
    /// Times this host's ASN is prepended while drained with "prepend" (default 3).
    #[serde(default = "default_drain_prepend")]
    pub prepend: u32,
    /// Communities added while drained (e.g. a graceful-shutdown one, "65535:0").
    #[serde(default)]
    pub communities: Vec<Community>,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            action: DrainAction::default(),
            med: default_drain_med(),
            prepend: default_drain_prepend(),
            communities: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainAction {
    #[default]
    Med,
    Prepend,
    Withdraw,
}

impl DrainAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainAction::Med => "med",
            DrainAction::Prepend => "prepend",
            DrainAction::Withdraw => "withdraw",
        }
    }
}

/// A standard BGP community, written "ASN:VALUE" with both parts 0..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Community(pub u16, pub u16);

impl TryFrom<String> for Community {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a community: write \"ASN:VALUE\", each 0..=65535");
        let (asn, value) = s.split_once(':').ok_or_else(bad)?;
        Ok(Community(asn.trim().parse().map_err(|_| bad())?, value.trim().parse().map_err(|_| bad())?))
    }
}

fn default_include_file() -> PathBuf {
    PathBuf::from("/var/lib/lb/bird-lb.conf")
}
fn default_bird_socket() -> PathBuf {
    PathBuf::from("/run/bird/bird.ctl")
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_stop_settle() -> Duration {
    Duration::from_secs(1)
}
fn default_true() -> bool {
    true
}
fn default_bfd_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_bfd_multiplier() -> u32 {
    3
}
fn default_drain_med() -> u32 {
    1000
}
fn default_drain_prepend() -> u32 {
    3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_bgp_table_takes_the_defaults() {
        let bgp: BgpConfig = toml::from_str("asn = 65001\n[[peer]]\naddress = \"10.0.0.254\"\nasn = 65000").unwrap();
        assert_eq!(bgp.include_file, PathBuf::from("/var/lib/lb/bird-lb.conf"));
        assert_eq!(bgp.bird_socket, PathBuf::from("/run/bird/bird.ctl"));
        assert_eq!((bgp.drain.action, bgp.drain.med, bgp.drain.prepend), (DrainAction::Med, 1000, 3));
        let peer = &bgp.peers[0];
        assert_eq!((peer.bfd, peer.bfd_interval, peer.bfd_multiplier), (true, Duration::from_millis(100), 3));
        assert_eq!(peer.protocol_name(0), "lb_peer1");
        assert_eq!(bgp.router_id(Some(Ipv4Addr::new(10, 0, 0, 1))), Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn communities_are_asn_colon_value() {
        assert_eq!(Community::try_from("65001:666".to_owned()), Ok(Community(65001, 666)));
        for bad in ["65001", "65536:1", "a:b", "1:2:3"] {
            assert!(Community::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
