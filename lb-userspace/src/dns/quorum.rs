//! Site health by quorum: every vantage point (this controller and its peers) judges each
//! target with its own thresholds; a target is down when at least `quorum` of them say so,
//! so one prober cut off from a healthy site cannot fail it. Peers' views count only while
//! fresh; a peer that cannot be reached has no vote (it does not vote "down").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::backends::health::CheckStatus;

/// One vantage point's view: target name -> up.
pub use crate::api::dns::View;

#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerView {
    received: Instant,
    view: View,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetHealth {
    /// This vantage point's view, with thresholds.
    local: CheckStatus,
    /// The decision: up unless a quorum says down.
    up: bool,
}

/// A change of a target's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub target: String,
    pub up: bool,
    /// Vantage points that saw it down, and how many voted at all.
    pub down_votes: u32,
    pub voters: u32,
}

#[derive(Debug, Clone)]
pub struct SiteHealth {
    vantage: String,
    quorum: u32,
    stale_after: Duration,
    targets: BTreeMap<String, TargetHealth>,
    peers: BTreeMap<String, PeerView>,
    /// Decision changes so far, per target (for metrics).
    transitions: BTreeMap<String, u64>,
}

impl SiteHealth {
    pub fn new(vantage: &str, quorum: u32, stale_after: Duration) -> Self {
        Self {
            vantage: vantage.to_owned(),
            quorum: quorum.max(1),
            stale_after,
            targets: BTreeMap::new(),
            peers: BTreeMap::new(),
            transitions: BTreeMap::new(),
        }
    }

    /// Takes a new config: targets and peers that stay keep their state; new targets
    /// start up.
    pub fn reconfigure<'a>(
        &mut self,
        vantage: &str,
        quorum: u32,
        stale_after: Duration,
        targets: impl IntoIterator<Item = &'a str>,
        peers: &[&str],
    ) {
        self.vantage = vantage.to_owned();
        self.quorum = quorum.max(1);
        self.stale_after = stale_after;
        let mut kept = BTreeMap::new();
        for name in targets {
            let health = self.targets.remove(name).unwrap_or(TargetHealth { local: CheckStatus::new(), up: true });
            kept.insert(name.to_owned(), health);
        }
        self.targets = kept;
        self.peers.retain(|name, _| peers.contains(&name.as_str()));
        self.transitions.retain(|name, _| self.targets.contains_key(name));
    }

    /// A local probe result; returns whether this vantage point's view changed.
    pub fn record_check(
        &mut self,
        target: &str,
        passed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> bool {
        self.targets
            .get_mut(target)
            .and_then(|t| t.local.record(passed, healthy_threshold, unhealthy_threshold))
            .is_some()
    }

    /// A local view that needs no thresholds (a VIP this controller balances); returns
    /// whether it changed.
    pub fn set_local(&mut self, target: &str, up: bool) -> bool {
        match self.targets.get_mut(target) {
            Some(t) if t.local.is_healthy() != up => {
                // A threshold of 1 flips at once.
                t.local.record(up, 1, 1);
                true
            }
            _ => false,
        }
    }

    pub fn peer_view(&mut self, peer: &str, view: View, now: Instant) {
        self.peers.insert(peer.to_owned(), PeerView { received: now, view });
    }

    /// This vantage point's view, as served to peers.
    pub fn local_view(&self) -> View {
        self.targets.iter().map(|(name, t)| (name.clone(), t.local.is_healthy())).collect()
    }

    pub fn is_up(&self, target: &str) -> bool {
        self.targets.get(target).is_none_or(|t| t.up)
    }

    pub fn transitions(&self, target: &str) -> u64 {
        self.transitions.get(target).copied().unwrap_or(0)
    }

    /// Vantage point -> its view of `target` (this one included; fresh peers only).
    pub fn views(&self, target: &str, now: Instant) -> Option<View> {
        let t = self.targets.get(target)?;
        let mut views = BTreeMap::from([(self.vantage.clone(), t.local.is_healthy())]);
        for (peer, view) in self.fresh_peers(now) {
            if let Some(&up) = view.view.get(target) {
                views.insert(peer.clone(), up);
            }
        }
        Some(views)
    }

    fn fresh_peers(&self, now: Instant) -> impl Iterator<Item = (&String, &PeerView)> {
        self.peers.iter().filter(move |(_, p)| now.saturating_duration_since(p.received) <= self.stale_after)
    }

    /// Counts the votes again (after any view changed or aged) and returns the targets
    /// whose decision changed.
    pub fn decide(&mut self, now: Instant) -> Vec<Change> {
        let mut tallies = Vec::new();
        for (name, t) in &self.targets {
            let mut voters = 1;
            let mut down_votes = u32::from(!t.local.is_healthy());
            for (_, peer) in self.fresh_peers(now) {
                if let Some(&up) = peer.view.get(name) {
                    voters += 1;
                    down_votes += u32::from(!up);
                }
            }
            let up = down_votes < self.quorum;
            if up != t.up {
                tallies.push(Change { target: name.clone(), up, down_votes, voters });
            }
        }
        for change in &tallies {
            if let Some(t) = self.targets.get_mut(&change.target) {
                t.up = change.up;
            }
            *self.transitions.entry(change.target.clone()).or_default() += 1;
        }
        tallies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(3);

    fn view(entries: &[(&str, bool)]) -> View {
        entries.iter().map(|&(n, up)| (n.to_owned(), up)).collect()
    }

    /// Vantage "a" with peers "b" and "c", quorum 2, targets "site-a" and "site-b".
    fn three() -> SiteHealth {
        let mut health = SiteHealth::new("a", 2, STALE);
        health.reconfigure("a", 2, STALE, ["site-a", "site-b"], &["b", "c"]);
        health
    }

    fn fail(health: &mut SiteHealth, target: &str, times: u32) -> bool {
        (0..times).map(|_| health.record_check(target, false, 2, 3)).fold(false, |a, b| a | b)
    }

    #[test]
    fn one_vantage_point_alone_cannot_take_a_target_down() {
        let now = Instant::now();
        let mut health = three();
        assert!(fail(&mut health, "site-b", 3), "the local view flips after the threshold");
        health.peer_view("b", view(&[("site-b", true)]), now);
        health.peer_view("c", view(&[("site-b", true)]), now);
        assert!(health.decide(now).is_empty());
        assert!(health.is_up("site-b"));
        assert_eq!(health.local_view(), view(&[("site-a", true), ("site-b", false)]));
    }

    #[test]
    fn a_quorum_takes_it_down_and_failback_follows_the_healthy_threshold() {
        let now = Instant::now();
        let mut health = three();
        fail(&mut health, "site-b", 3);
        health.peer_view("b", view(&[("site-b", false)]), now);
        let changes = health.decide(now);
        assert_eq!(changes, vec![Change { target: "site-b".into(), up: false, down_votes: 2, voters: 2 }]);
        assert!(!health.is_up("site-b"));
        assert!(health.decide(now).is_empty(), "no change, no report");

        // The peer heals first: one down vote left, below the quorum.
        health.peer_view("b", view(&[("site-b", true)]), now);
        assert!(health.decide(now)[0].up);
        assert_eq!(health.transitions("site-b"), 2);
    }

    #[test]
    fn local_failback_needs_the_healthy_threshold() {
        let now = Instant::now();
        let mut health = SiteHealth::new("a", 1, STALE);
        health.reconfigure("a", 1, STALE, ["site-b"], &[]);
        fail(&mut health, "site-b", 3);
        assert_eq!(health.decide(now).len(), 1);
        assert!(!health.record_check("site-b", true, 2, 3), "one pass is not enough");
        assert!(health.decide(now).is_empty());
        assert!(health.record_check("site-b", true, 2, 3));
        assert!(health.decide(now)[0].up);
    }

    #[test]
    fn stale_and_silent_peers_do_not_vote() {
        let start = Instant::now();
        let mut health = three();
        fail(&mut health, "site-b", 3);
        health.peer_view("b", view(&[("site-b", false)]), start);
        assert_eq!(health.decide(start).len(), 1);
        // b's view ages out: only the local vote is left, and the target comes back.
        let later = start + STALE + Duration::from_millis(1);
        let changes = health.decide(later);
        assert_eq!(changes, vec![Change { target: "site-b".into(), up: true, down_votes: 1, voters: 1 }]);
        // A peer that does not know the target does not vote on it.
        health.peer_view("c", view(&[("site-a", true)]), later);
        assert_eq!(health.views("site-b", later).unwrap(), BTreeMap::from([("a".to_owned(), false)]));
    }

    #[test]
    fn reconfigure_keeps_state_of_targets_that_stay() {
        let now = Instant::now();
        let mut health = three();
        fail(&mut health, "site-b", 3);
        health.peer_view("b", view(&[("site-b", false)]), now);
        health.decide(now);
        health.reconfigure("a", 2, STALE, ["site-b", "site-c"], &["b"]);
        assert!(!health.is_up("site-b"));
        assert!(health.is_up("site-c"));
        assert!(!health.is_up("site-b") && health.decide(now).is_empty());
        // Quorum raised to 3 with two down votes: up again.
        health.reconfigure("a", 3, STALE, ["site-b"], &["b"]);
        assert!(health.decide(now)[0].up);
    }

    #[test]
    fn set_local_flips_at_once() {
        let mut health = SiteHealth::new("a", 1, STALE);
        health.reconfigure("a", 1, STALE, ["site-a"], &[]);
        assert!(!health.set_local("site-a", true));
        assert!(health.set_local("site-a", false));
        assert!(!health.decide(Instant::now())[0].up);
    }
}
