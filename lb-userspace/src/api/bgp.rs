//! The BGP part's wire types: its section of the status, and the answer of `lb host drain`
//! and `lb host undrain`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use crate::bgp::bird_socket::Session;
pub use crate::bgp::policy::HostState;

/// BGP through BIRD, for `lb status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpStatus {
    pub host: HostState,
    /// What a drain does: med, prepend or withdraw.
    pub drain_action: String,
    /// The prefixes lb wants announced.
    pub announced: Vec<String>,
    /// Whether BIRD has taken the latest announcements.
    pub in_sync: bool,
    pub bird_socket: String,
    pub include_file: String,
    /// Whether BIRD answered on its control socket last time it was asked.
    pub bird_up: bool,
    /// Why the last attempt failed, while it has not succeeded since.
    pub last_error: Option<String>,
    /// When the next attempt is due, after a failure.
    pub retry_in_ms: Option<u64>,
    pub configure_failures: u64,
    /// Times BIRD took a new include file.
    pub configured: u64,
    /// lb's BGP sessions as BIRD lists them.
    pub sessions: Vec<Session>,
    /// Connections still open on this host (what a drained host waits for).
    pub open_flows: u64,
}

/// What `lb host drain` and `lb host undrain` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub host: HostState,
    pub drain_action: String,
    pub announced: Vec<String>,
    /// Connections still open on this host (as of the last sweep of the flow tables).
    pub open_flows: u64,
}

impl HostReport {
    pub fn line(&self) -> String {
        let routes = match (self.host, self.announced.len()) {
            (_, 0) => "no route announced".to_owned(),
            (HostState::Drained, n) => format!("{n} routes announced, less preferred ({})", self.drain_action),
            (_, n) => format!("{n} routes announced"),
        };
        format!("host {}: {routes}; {} open connections left on this host\n", self.host.as_str(), self.open_flows)
    }
}

/// The BGP lines of `lb status`.
pub fn section(bgp: &BgpStatus) -> String {
    let mut out = String::new();
    let bird = match (&bgp.last_error, bgp.in_sync) {
        (None, true) => format!("BIRD at {} in sync", bgp.bird_socket),
        (Some(e), _) => format!(
            "NOT IN SYNC: {e}; retrying in {:.1} s ({} failures)",
            bgp.retry_in_ms.unwrap_or(0) as f64 / 1000.0,
            bgp.configure_failures
        ),
        (None, false) => format!("BIRD at {}: applying", bgp.bird_socket),
    };
    let _ = writeln!(out, "\nBGP: host {} (drain: {}), {bird}", bgp.host.as_str(), bgp.drain_action);
    let announced = if bgp.announced.is_empty() { "none".to_owned() } else { bgp.announced.join(", ") };
    let _ = writeln!(out, "  announced: {announced}; {} open connections on this host", bgp.open_flows);
    for s in &bgp.sessions {
        let _ = writeln!(out, "  session {:<16} {:<6} {}", s.name, s.state, s.info);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn status() -> BgpStatus {
        BgpStatus {
            host: HostState::Drained,
            drain_action: "med".into(),
            announced: vec!["10.100.0.1/32".into()],
            in_sync: false,
            bird_socket: "/run/bird/bird.ctl".into(),
            include_file: "/var/lib/lb/bird-lb.conf".into(),
            bird_up: false,
            last_error: Some("cannot reach BIRD at /run/bird/bird.ctl".into()),
            retry_in_ms: Some(1500),
            configure_failures: 3,
            configured: 1,
            sessions: vec![Session { name: "lb_peer1".into(), state: "up".into(), info: "Established".into() }],
            open_flows: 7,
        }
    }

    #[test]
    fn the_status_says_when_bird_is_away_and_when_it_retries() {
        let text = section(&status());
        assert!(text.contains("BGP: host drained (drain: med), NOT IN SYNC: cannot reach BIRD"), "{text}");
        assert!(text.contains("retrying in 1.5 s (3 failures)"), "{text}");
        assert!(text.contains("announced: 10.100.0.1/32; 7 open connections"), "{text}");
        assert!(text.contains("session lb_peer1"), "{text}");
        let synced = BgpStatus { in_sync: true, last_error: None, bird_up: true, ..status() };
        assert!(section(&synced).contains("BIRD at /run/bird/bird.ctl in sync"));
    }

    #[test]
    fn a_drain_report_says_where_the_routes_are_and_the_flows_left() {
        let report = HostReport {
            host: HostState::Drained,
            drain_action: "prepend".into(),
            announced: vec!["10.100.0.1/32".into()],
            open_flows: 4,
        };
        assert_eq!(
            report.line(),
            "host drained: 1 routes announced, less preferred (prepend); 4 open connections left on this host\n"
        );
        let withdrawn = HostReport { announced: vec![], ..report };
        assert!(withdrawn.line().contains("no route announced"));
    }
}
