//! Which prefixes this host announces, with which attributes: a pure function of the
//! VIPs' state and whether the host is drained or stopping.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::bgp::{BgpConfig, Community, DrainAction};

/// What the operator asked of this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Announcing every VIP that can take new flows.
    #[default]
    Serving,
    /// `lb host drain`: traffic moved away as `bgp.drain` says.
    Drained,
    /// `lb stop --detach`: everything withdrawn before the program goes.
    Stopping,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Serving => "serving",
            HostState::Drained => "drained",
            HostState::Stopping => "stopping",
        }
    }
}

/// The routes to announce: every prefix shares the attributes (a drain is host-wide).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcements {
    /// Sorted, each a /32 or /128.
    pub prefixes: Vec<IpNet>,
    pub med: u32,
    /// Extra copies of this host's ASN on the AS path.
    pub prepend: u32,
    pub communities: Vec<Community>,
}

/// The announcements for VIPs given as (address, can take new flows). An address is
/// announced while any VIP on it can take new flows (VIPs on other ports still serve).
pub fn announcements(
    bgp: &BgpConfig,
    vips: impl IntoIterator<Item = (IpAddr, bool)>,
    host: HostState,
) -> Announcements {
    let mut up: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for (address, takes_flows) in vips {
        *up.entry(address).or_default() |= takes_flows;
    }
    let withdrawn = match host {
        HostState::Serving => false,
        HostState::Drained => bgp.drain.action == DrainAction::Withdraw,
        HostState::Stopping => true,
    };
    let prefixes = if withdrawn {
        Vec::new()
    } else {
        up.into_iter().filter(|&(_, up)| up).map(|(address, _)| IpNet::from(address)).collect()
    };
    let mut communities = bgp.communities.clone();
    let (mut med, mut prepend) = (bgp.med, 0);
    if host == HostState::Drained {
        communities.extend(&bgp.drain.communities);
        match bgp.drain.action {
            DrainAction::Med => med = bgp.drain.med,
            DrainAction::Prepend => prepend = bgp.drain.prepend,
            DrainAction::Withdraw => {}
        }
    }
    communities.sort();
    communities.dedup();
    Announcements { prefixes, med, prepend, communities }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bgp(drain: &str) -> BgpConfig {
        toml::from_str(&format!(
            "asn = 65001\ncommunities = [\"65001:100\"]\n[drain]\n{drain}\n[[peer]]\naddress = \"10.0.0.254\"\nasn = 65000"
        ))
        .unwrap()
    }

    fn vips() -> Vec<(IpAddr, bool)> {
        vec![
            ("10.100.0.2".parse().unwrap(), false),
            ("10.100.0.1".parse().unwrap(), true),
            ("fd00:100::1".parse().unwrap(), true),
            // A second VIP (another port) on the first address still serves it.
            ("10.100.0.2".parse().unwrap(), true),
            ("10.100.0.3".parse().unwrap(), false),
        ]
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_serving_host_announces_each_address_with_a_vip_that_takes_new_flows() {
        let a = announcements(&bgp(""), vips(), HostState::Serving);
        assert_eq!(a.prefixes, nets(&["10.100.0.1/32", "10.100.0.2/32", "fd00:100::1/128"]));
        assert_eq!((a.med, a.prepend, a.communities), (0, 0, vec![Community(65001, 100)]));
    }

    #[test]
    fn a_vip_that_cannot_take_new_flows_is_withdrawn_and_comes_back_when_it_can() {
        let down = vec![("10.100.0.1".parse().unwrap(), false)];
        assert!(announcements(&bgp(""), down, HostState::Serving).prefixes.is_empty());
        let up = vec![("10.100.0.1".parse().unwrap(), true)];
        assert_eq!(announcements(&bgp(""), up, HostState::Serving).prefixes, nets(&["10.100.0.1/32"]));
    }

    #[test]
    fn a_drain_raises_the_med_or_prepends_or_withdraws_as_configured() {
        let med = announcements(&bgp("med = 500\ncommunities = [\"65535:0\"]"), vips(), HostState::Drained);
        assert_eq!((med.prefixes.len(), med.med, med.prepend), (3, 500, 0));
        assert_eq!(med.communities, vec![Community(65001, 100), Community(65535, 0)]);
        let prepend = announcements(&bgp("action = \"prepend\"\nprepend = 2"), vips(), HostState::Drained);
        assert_eq!((prepend.prefixes.len(), prepend.med, prepend.prepend), (3, 0, 2));
        let withdraw = announcements(&bgp("action = \"withdraw\""), vips(), HostState::Drained);
        assert!(withdraw.prefixes.is_empty());
    }

    #[test]
    fn a_stopping_host_withdraws_everything_whatever_the_drain_action() {
        for drain in ["", "action = \"prepend\""] {
            assert!(announcements(&bgp(drain), vips(), HostState::Stopping).prefixes.is_empty());
        }
    }
}
