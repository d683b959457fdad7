//! Health checks through the tunnel, for the encapsulated modes: the socket mark of each
//! backend's checks, and `CHECK_TUNNELS`, which tells the tc program on `lb-check` the
//! backend a mark stands for. The check itself is a connection to the VIP (`probe::Tunnel`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use lb_common::{BACKEND_ACTIVE, Backend, CHECK_MARK_BASE, CheckTunnel};

use super::addr_bytes;
use crate::backends::probe::Tunnel;
use crate::config::{BackendConfig, Config, ForwardingMode, VipConfig};

/// A backend as the far end of a tunnel: the marks of checks are per end, shared by the
/// VIPs that reach the backend the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunnelEnd {
    pub address: IpAddr,
    pub gue: bool,
}

/// Marks of the tunnel ends in use. An end keeps its mark while any VIP checks it; a new
/// end takes the next mark in turn (round 2^16), not one just given up, so the packets of a
/// check that a reload stopped are never sent to a backend that took over its mark.
#[derive(Debug, Default, Clone)]
pub struct CheckMarks {
    marks: BTreeMap<TunnelEnd, u32>,
    next: u16,
}

impl CheckMarks {
    /// Marks for exactly the ends `config` checks through a tunnel. Validation keeps their
    /// number within `MAX_CHECK_TUNNELS`, far below the 2^16 marks there are.
    pub fn assign(&mut self, config: &Config) {
        let wanted: BTreeSet<TunnelEnd> = checked_through_tunnel(config).map(|(_, _, end)| end).collect();
        self.marks.retain(|end, _| wanted.contains(end));
        let taken: BTreeSet<u32> = self.marks.values().copied().collect();
        for end in wanted {
            if self.marks.contains_key(&end) {
                continue;
            }
            let mark = loop {
                let mark = CHECK_MARK_BASE | self.next as u32;
                self.next = self.next.wrapping_add(1);
                if !taken.contains(&mark) {
                    break mark;
                }
            };
            self.marks.insert(end, mark);
        }
    }

    /// How the checks of `backend` of `vip` go: through its tunnel for the encapsulated
    /// modes (`None` otherwise, or before `assign` saw the backend).
    pub fn tunnel(&self, config: &Config, vip: &VipConfig, backend: &BackendConfig) -> Option<Tunnel> {
        let end = tunnel_end(vip, backend)?;
        let port = vip.health_check.as_ref()?.port.unwrap_or(vip.port);
        let source = match vip.address {
            IpAddr::V4(_) => IpAddr::V4(config.balancer.ipv4?),
            IpAddr::V6(_) => IpAddr::V6(config.balancer.ipv6?),
        };
        Some(Tunnel { vip: SocketAddr::new(vip.address, port), source, mark: *self.marks.get(&end)? })
    }

    /// `CHECK_TUNNELS` as it should be: each mark's backend.
    pub fn tunnels(&self) -> BTreeMap<u32, CheckTunnel> {
        self.marks
            .iter()
            .map(|(end, &mark)| {
                let (addr, family) = addr_bytes(end.address);
                let backend = Backend { addr, port: 0, family, flags: BACKEND_ACTIVE };
                (mark, CheckTunnel { backend, gue: end.gue as u8, _pad: [0; 3] })
            })
            .collect()
    }
}

fn tunnel_end(vip: &VipConfig, backend: &BackendConfig) -> Option<TunnelEnd> {
    vip.mode.encapsulated().then_some(TunnelEnd { address: backend.address, gue: vip.mode == ForwardingMode::Gue })
}

/// Every backend of an encapsulated VIP with active checks, with its tunnel's end.
pub fn checked_through_tunnel(config: &Config) -> impl Iterator<Item = (&VipConfig, &BackendConfig, TunnelEnd)> {
    config
        .vips
        .iter()
        .filter(|vip| vip.health_check.is_some())
        .flat_map(|vip| vip.backends.iter().filter_map(move |b| Some((vip, b, tunnel_end(vip, b)?))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn config(extra_backend: bool) -> Config {
        let extra = if extra_backend { "[[vip.backend]]\naddress = \"10.1.0.3\"\n" } else { "" };
        parse(
            &format!(
                r#"
[balancer]
interfaces = ["eth0"]
ipv4 = "10.0.0.1"
[[vip]]
name = "web"
address = "10.9.0.1"
port = 80
mode = "ipip"
health_check = {{ type = "http", port = 8080 }}
[[vip.backend]]
address = "10.1.0.1"
[[vip.backend]]
address = "10.1.0.2"
{extra}
[[vip]]
name = "dns"
address = "10.9.0.1"
port = 53
protocol = "udp"
mode = "gue"
health_check = {{ type = "tcp" }}
[[vip.backend]]
address = "10.1.0.1"
[[vip]]
name = "plain"
address = "10.9.0.2"
port = 80
mode = "dsr"
health_check = {{ type = "tcp" }}
[[vip.backend]]
address = "10.0.0.7"
"#
            ),
            "check_tunnels.toml",
        )
        .unwrap()
    }

    #[test]
    fn each_tunnel_end_has_a_mark_and_checks_go_to_the_vip_from_the_balancer() {
        let config = config(false);
        let mut marks = CheckMarks::default();
        marks.assign(&config);
        let tunnels = marks.tunnels();
        // 10.1.0.1 in ipip and in gue, 10.1.0.2 in ipip; the dsr VIP's backend is checked directly.
        assert_eq!(tunnels.len(), 3);
        assert!(tunnels.keys().all(|m| m & lb_common::CHECK_MARK_MASK == CHECK_MARK_BASE));
        let web = &config.vips[0];
        let tunnel = marks.tunnel(&config, web, &web.backends[0]).unwrap();
        assert_eq!(tunnel.vip, "10.9.0.1:8080".parse().unwrap());
        assert_eq!(tunnel.source, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(tunnels[&tunnel.mark].gue, 0);
        let dns = &config.vips[1];
        let gue = marks.tunnel(&config, dns, &dns.backends[0]).unwrap();
        assert_eq!(gue.vip.port(), 53);
        assert_ne!(gue.mark, tunnel.mark);
        assert_eq!(tunnels[&gue.mark].gue, 1);
        let plain = &config.vips[2];
        assert_eq!(marks.tunnel(&config, plain, &plain.backends[0]), None);
    }

    #[test]
    fn marks_stay_while_their_end_is_checked_and_are_not_given_again_at_once() {
        let mut marks = CheckMarks::default();
        marks.assign(&config(true));
        let before = marks.tunnels();
        marks.assign(&config(false));
        let after = marks.tunnels();
        assert_eq!(after.len(), before.len() - 1);
        assert!(after.iter().all(|(mark, t)| before.get(mark) == Some(t)), "kept ends keep their marks");
        // The end given up comes back under a mark never used before.
        marks.assign(&config(true));
        let again = marks.tunnels();
        let new: Vec<_> = again.keys().filter(|m| !after.contains_key(m)).collect();
        assert_eq!(new.len(), 1);
        assert!(!before.contains_key(new[0]));
    }

    #[test]
    fn marks_go_round_and_skip_those_in_use() {
        let mut marks = CheckMarks::default();
        marks.assign(&config(false));
        // Three ends hold marks 0..=2; the counter is about to go round.
        marks.next = u16::MAX;
        marks.assign(&config(true));
        let got: Vec<u32> = marks.tunnels().keys().map(|m| m & 0xffff).collect();
        assert_eq!(got, [0, 1, 2, 0xffff]);
        marks.marks.retain(|end, _| end.address != "10.1.0.3".parse::<IpAddr>().unwrap());
        marks.assign(&config(true));
        // After 0xffff comes 0, taken, then 1 and 2, taken: 3.
        let got: Vec<u32> = marks.tunnels().keys().map(|m| m & 0xffff).collect();
        assert_eq!(got, [0, 1, 2, 3]);
    }
}
