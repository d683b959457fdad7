//! The BIRD include file lb writes: the router id, a static protocol per family holding
//! the announced prefixes, the export filter with their attributes, BFD, and a BGP
//! protocol per peer. Pure text from the config and the announcements; its first lines
//! record the host state, so that the next controller adopts a drain.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::policy::{Announcements, HostState};
use crate::config::bgp::BgpConfig;

/// The static protocols' names: an export filter accepts only their routes.
pub const STATIC_V4: &str = "lb_vips4";
pub const STATIC_V6: &str = "lb_vips6";
const STATE_LINE: &str = "# lb-host-state: ";

/// The whole include file.
/// `drained` is recorded for the next controller (a stopping host may be drained too).
pub fn render(bgp: &BgpConfig, router_id: Ipv4Addr, drained: bool, routes: &Announcements) -> String {
    let mut out = String::new();
    out.push_str("# Written by lb from the [bgp] table of its config; lb rewrites it whole: do not edit.\n");
    let kept = if drained { HostState::Drained } else { HostState::Serving };
    let _ = writeln!(out, "{STATE_LINE}{}", kept.as_str());
    let _ = writeln!(out, "router id {router_id};\n");
    for (name, channel, v6) in [(STATIC_V4, "ipv4", false), (STATIC_V6, "ipv6", true)] {
        let _ = writeln!(out, "protocol static {name} {{\n  {channel};");
        for prefix in routes.prefixes.iter().filter(|p| p.addr().is_ipv6() == v6) {
            let _ = writeln!(out, "  route {prefix} blackhole;");
        }
        out.push_str("}\n\n");
    }
    out.push_str(&export_filter(bgp, routes));
    if bgp.peers.iter().any(|p| p.bfd) {
        out.push_str("protocol bfd lb_bfd {\n}\n\n");
    }
    for (i, peer) in bgp.peers.iter().enumerate() {
        let _ = writeln!(out, "protocol bgp {} {{", peer.protocol_name(i));
        let _ = writeln!(out, "  local as {};\n  neighbor {} as {};", bgp.asn, peer.address, peer.asn);
        if peer.bfd {
            let ms = peer.bfd_interval.as_millis();
            let _ = writeln!(
                out,
                "  bfd {{ min rx interval {ms} ms; min tx interval {ms} ms; multiplier {}; }};",
                peer.bfd_multiplier
            );
        }
        let channel = if peer.address.is_ipv6() { "ipv6" } else { "ipv4" };
        let _ = writeln!(out, "  {channel} {{ import none; export filter lb_export; }};\n}}\n");
    }
    out
}

/// Only lb's routes leave, with the host's MED, prepends and communities.
fn export_filter(bgp: &BgpConfig, routes: &Announcements) -> String {
    let mut out = String::from("filter lb_export {\n");
    let _ = writeln!(out, "  if proto != \"{STATIC_V4}\" && proto != \"{STATIC_V6}\" then reject;");
    let _ = writeln!(out, "  bgp_med = {};", routes.med);
    for _ in 0..routes.prepend {
        let _ = writeln!(out, "  bgp_path.prepend({});", bgp.asn);
    }
    for c in &routes.communities {
        let _ = writeln!(out, "  bgp_community.add(({},{}));", c.0, c.1);
    }
    out.push_str("  accept;\n}\n\n");
    out
}

/// The host state an earlier controller wrote into `text` (its include file).
pub fn adopted_state(text: &str) -> Option<HostState> {
    text.lines().take(5).find_map(|l| match l.strip_prefix(STATE_LINE)?.trim() {
        "serving" => Some(HostState::Serving),
        "drained" => Some(HostState::Drained),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::policy::announcements;

    fn bgp() -> BgpConfig {
        toml::from_str(
            "asn = 65001\ncommunities = [\"65001:100\"]\n[drain]\naction = \"prepend\"\nprepend = 2\n\
             [[peer]]\naddress = \"10.0.0.254\"\nasn = 65000\nbfd_interval = \"300ms\"\n\
             [[peer]]\nname = \"tor_b\"\naddress = \"fd00::fe\"\nasn = 65000\nbfd = false",
        )
        .unwrap()
    }

    #[test]
    fn the_file_holds_the_prefixes_by_family_the_peers_and_their_bfd() {
        let vips = [("10.100.0.1".parse().unwrap(), true), ("fd00:100::1".parse().unwrap(), true)];
        let routes = announcements(&bgp(), vips, HostState::Serving);
        let text = render(&bgp(), Ipv4Addr::new(10, 0, 0, 1), false, &routes);
        assert!(text.contains("router id 10.0.0.1;"), "{text}");
        assert!(text.contains("protocol static lb_vips4 {\n  ipv4;\n  route 10.100.0.1/32 blackhole;\n}"), "{text}");
        assert!(text.contains("protocol static lb_vips6 {\n  ipv6;\n  route fd00:100::1/128 blackhole;\n}"), "{text}");
        assert!(text.contains("protocol bgp lb_peer1 {\n  local as 65001;\n  neighbor 10.0.0.254 as 65000;\n  bfd { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };\n  ipv4 {"), "{text}");
        assert!(
            text.contains("protocol bgp lb_tor_b {\n  local as 65001;\n  neighbor fd00::fe as 65000;\n  ipv6 {"),
            "{text}"
        );
        assert!(text.contains("protocol bfd lb_bfd"), "{text}");
        assert!(text.contains("  bgp_med = 0;\n  bgp_community.add((65001,100));\n  accept;"), "{text}");
        assert!(!text.contains("prepend"), "{text}");
    }

    #[test]
    fn a_drained_host_is_recorded_in_the_file_and_adopted_from_it() {
        let vips = [("10.100.0.1".parse().unwrap(), true)];
        let drained = announcements(&bgp(), vips, HostState::Drained);
        let text = render(&bgp(), Ipv4Addr::new(10, 0, 0, 1), true, &drained);
        assert_eq!(text.matches("bgp_path.prepend(65001);").count(), 2, "{text}");
        assert_eq!(adopted_state(&text), Some(HostState::Drained));
        let serving = render(&bgp(), Ipv4Addr::new(10, 0, 0, 1), false, &Announcements::default());
        assert_eq!(adopted_state(&serving), Some(HostState::Serving));
        // A stop withdraws everything; a drained host stays drained for the next controller.
        let stopping = announcements(&bgp(), vips, HostState::Stopping);
        let text = render(&bgp(), Ipv4Addr::new(10, 0, 0, 1), true, &stopping);
        assert_eq!(adopted_state(&text), Some(HostState::Drained));
        assert!(!text.contains("route "), "{text}");
        assert_eq!(adopted_state("router id 1.2.3.4;"), None);
    }
}
