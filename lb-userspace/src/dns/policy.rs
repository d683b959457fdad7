//! Failover routing policy: which addresses a policy record answers with, given which
//! targets are up. [`Selection::build`] runs once per change of health, override or
//! config; [`Selection::choose`] runs per query and only reads it and bumps counters.
//!
//! - While any primary is up, the answer is every up primary, rotated per answer.
//! - A `trickle_ratio` share of those answers goes to the backups instead (exactly: answer
//!   n is a trickle answer when floor((n+1) r) > floor(n r)); 1.0 is the manual switch.
//! - With every primary down, the answer is one target of the first backup set that has an
//!   up target, by smooth weighted round robin; with `geo`, among the set's up targets in
//!   the client's region when there are any.
//! - With every target down, the answer is every primary: a DNS answer that moves nowhere
//!   is better than none (the way cloud DNS failover treats "all unhealthy").

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// A site as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: IpAddr,
    pub region: String,
    pub weight: u32,
}

/// A policy over targets given by index.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub primary: Vec<usize>,
    pub backups: Vec<Vec<usize>>,
    pub trickle_ratio: f64,
    pub geo: bool,
}

/// Where an answer came from (counted per policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Primary,
    /// Every primary is down.
    Backup,
    /// A primary is up, but the trickle ratio sent this answer to a backup.
    Trickle,
    /// Every target is down: the primaries are answered anyway.
    AllDown,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Primary, Source::Backup, Source::Trickle, Source::AllDown];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Primary => "primary",
            Source::Backup => "backup",
            Source::Trickle => "trickle",
            Source::AllDown => "all_down",
        }
    }
}

/// Per-policy counters, kept across rebuilds of the selection so the trickle share and the
/// round robin go on where they were.
#[derive(Debug, Default)]
pub struct PolicyCounters {
    answers: AtomicU64,
    backup_answers: AtomicU64,
    by_source: [AtomicU64; 4],
}

impl PolicyCounters {
    pub fn answers_from(&self, source: Source) -> u64 {
        self.by_source[source as usize].load(Ordering::Relaxed)
    }
}

/// A weighted round-robin order: each address appears `weight` times, spread out (nginx's
/// smooth weighted round robin), so consecutive answers alternate between targets.
fn smooth_order(targets: &[(IpAddr, u32)]) -> Vec<IpAddr> {
    let total: i64 = targets.iter().map(|t| t.1 as i64).sum();
    let mut current = vec![0i64; targets.len()];
    (0..total)
        .map(|_| {
            for (c, t) in current.iter_mut().zip(targets) {
                *c += t.1 as i64;
            }
            let best = (0..targets.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).expect("non-empty");
            current[best] -= total;
            targets[best].0
        })
        .collect()
}

/// The backup set that answers: its up targets in round-robin order, overall and per region.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BackupChoice {
    order: Vec<IpAddr>,
    by_region: BTreeMap<String, Vec<IpAddr>>,
}

impl BackupChoice {
    fn build(set: &[usize], targets: &[Target], up: &dyn Fn(usize) -> bool) -> Option<Self> {
        let live: Vec<&Target> = set.iter().filter(|&&i| up(i)).map(|&i| &targets[i]).collect();
        if live.is_empty() {
            return None;
        }
        let weighted = |ts: &mut dyn Iterator<Item = &&Target>| {
            smooth_order(&ts.map(|t| (t.address, t.weight.max(1))).collect::<Vec<_>>())
        };
        let mut by_region = BTreeMap::new();
        for region in live.iter().map(|t| &t.region).filter(|r| !r.is_empty()) {
            if !by_region.contains_key(region) {
                by_region.insert(region.clone(), weighted(&mut live.iter().filter(|t| &t.region == region)));
            }
        }
        Some(Self { order: weighted(&mut live.iter()), by_region })
    }
}

/// What a policy answers with while the targets' health stays as it was at `build`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Up primaries; every primary when nothing at all is up.
    primary: Vec<IpAddr>,
    backup: Option<BackupChoice>,
    primary_up: bool,
    trickle_ratio: f64,
    geo: bool,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub addresses: Vec<IpAddr>,
    pub source: Source,
    /// The client's region chose the answer (an ECS answer must say so with its scope).
    pub by_client_region: bool,
}

impl Selection {
    /// `trickle_ratio` is the policy's, or the operator's override.
    pub fn build(policy: &Policy, targets: &[Target], up: &dyn Fn(usize) -> bool, trickle_ratio: f64) -> Self {
        let live: Vec<IpAddr> = policy.primary.iter().filter(|&&i| up(i)).map(|&i| targets[i].address).collect();
        let backup = policy.backups.iter().find_map(|set| BackupChoice::build(set, targets, up));
        let primary_up = !live.is_empty();
        let primary = if primary_up { live } else { policy.primary.iter().map(|&i| targets[i].address).collect() };
        Self { primary, backup, primary_up, trickle_ratio: trickle_ratio.clamp(0.0, 1.0), geo: policy.geo }
    }

    /// Which of the answers goes where, in one phrase (for logs and status).
    pub fn state(&self) -> Source {
        match (self.primary_up, &self.backup) {
            (true, _) => Source::Primary,
            (false, Some(_)) => Source::Backup,
            (false, None) => Source::AllDown,
        }
    }

    /// The next answer for a client in `client_region`.
    pub fn choose(&self, counters: &PolicyCounters, client_region: Option<&str>) -> Choice {
        let n = counters.answers.fetch_add(1, Ordering::Relaxed);
        let trickle = self.primary_up && is_trickle_answer(n, self.trickle_ratio);
        let choice = match (&self.backup, self.primary_up, trickle) {
            (Some(backup), false, _) | (Some(backup), true, true) => {
                let k = counters.backup_answers.fetch_add(1, Ordering::Relaxed);
                let regional = if self.geo { client_region.and_then(|r| backup.by_region.get(r)) } else { None };
                let order = regional.unwrap_or(&backup.order);
                Choice {
                    addresses: vec![order[(k % order.len() as u64) as usize]],
                    source: if self.primary_up { Source::Trickle } else { Source::Backup },
                    by_client_region: self.geo && !backup.by_region.is_empty(),
                }
            }
            _ => {
                let mut addresses = self.primary.clone();
                if !addresses.is_empty() {
                    let len = addresses.len();
                    addresses.rotate_left((n % len as u64) as usize);
                }
                Choice {
                    addresses,
                    source: if self.primary_up { Source::Primary } else { Source::AllDown },
                    by_client_region: false,
                }
            }
        };
        counters.by_source[choice.source as usize].fetch_add(1, Ordering::Relaxed);
        choice
    }
}

/// Whether answer `n` (from 0) is one of the `ratio` share sent to the backups: exactly
/// floor(N x ratio) of any first N answers are, evenly spread.
fn is_trickle_answer(n: u64, ratio: f64) -> bool {
    if ratio <= 0.0 {
        return false;
    }
    if ratio >= 1.0 {
        return true;
    }
    ((n + 1) as f64 * ratio).floor() > (n as f64 * ratio).floor()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn target(last: u8, region: &str, weight: u32) -> Target {
        Target { address: IpAddr::from([10, 100, 0, last]), region: region.into(), weight }
    }

    /// Primary 1 (eu); backups: [2 (us, weight 3), 3 (ap, weight 1)], then [4 (eu)].
    fn sites() -> (Vec<Target>, Policy) {
        let targets = vec![target(1, "eu", 1), target(2, "us", 3), target(3, "ap", 1), target(4, "eu", 1)];
        let policy = Policy { primary: vec![0], backups: vec![vec![1, 2], vec![3]], trickle_ratio: 0.0, geo: false };
        (targets, policy)
    }

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([10, 100, 0, last])
    }

    fn tally(selection: &Selection, n: usize, region: Option<&str>) -> BTreeMap<IpAddr, usize> {
        let counters = PolicyCounters::default();
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            for a in selection.choose(&counters, region).addresses {
                *seen.entry(a).or_default() += 1;
            }
        }
        seen
    }

    #[test]
    fn answers_the_up_primaries_while_any_is_up() {
        let (targets, mut policy) = sites();
        policy.primary = vec![0, 3];
        let all_up = Selection::build(&policy, &targets, &|_| true, 0.0);
        let counters = PolicyCounters::default();
        let first = all_up.choose(&counters, None);
        assert_eq!(first.source, Source::Primary);
        assert_eq!(first.addresses, vec![addr(1), addr(4)]);
        assert_eq!(all_up.choose(&counters, None).addresses, vec![addr(4), addr(1)], "rotated per answer");

        let one_down = Selection::build(&policy, &targets, &|i| i != 0, 0.0);
        assert_eq!(one_down.choose(&counters, None).addresses, vec![addr(4)]);
        assert_eq!(one_down.state(), Source::Primary);
    }

    #[test]
    fn primary_down_answers_one_backup_of_the_first_set_with_an_up_target() {
        let (targets, policy) = sites();
        let selection = Selection::build(&policy, &targets, &|i| i != 0, 0.0);
        assert_eq!(selection.state(), Source::Backup);
        let choice = selection.choose(&PolicyCounters::default(), None);
        assert_eq!(choice.source, Source::Backup);
        assert_eq!(choice.addresses.len(), 1);

        // The whole first backup set down: the second set answers.
        let selection = Selection::build(&policy, &targets, &|i| i == 3, 0.0);
        assert_eq!(tally(&selection, 10, None), BTreeMap::from([(addr(4), 10)]));
    }

    #[test]
    fn backups_share_answers_by_weight_and_alternate() {
        let (targets, policy) = sites();
        let selection = Selection::build(&policy, &targets, &|i| i != 0, 0.0);
        let shares = tally(&selection, 4000, None);
        assert_eq!(shares, BTreeMap::from([(addr(2), 3000), (addr(3), 1000)]));
        // Smooth: the weight-1 target never waits more than 4 answers.
        let counters = PolicyCounters::default();
        let order: Vec<IpAddr> = (0..8).map(|_| selection.choose(&counters, None).addresses[0]).collect();
        assert_eq!(order.iter().filter(|&&a| a == addr(3)).count(), 2);
        assert!(order.windows(4).all(|w| w.contains(&addr(3)) || w.iter().all(|&a| a == addr(2))));
    }

    #[test]
    fn everything_down_answers_the_primaries() {
        let (targets, policy) = sites();
        let selection = Selection::build(&policy, &targets, &|_| false, 0.0);
        assert_eq!(selection.state(), Source::AllDown);
        let choice = selection.choose(&PolicyCounters::default(), None);
        assert_eq!((choice.addresses, choice.source), (vec![addr(1)], Source::AllDown));
    }

    #[test]
    fn trickle_sends_its_share_to_the_backups_while_the_primary_is_up() {
        let (targets, policy) = sites();
        for ratio in [0.01, 0.05, 0.1, 0.25, 0.5, 0.9] {
            let selection = Selection::build(&policy, &targets, &|_| true, ratio);
            let counters = PolicyCounters::default();
            let n = 10_000;
            for _ in 0..n {
                selection.choose(&counters, None);
            }
            let trickled = counters.answers_from(Source::Trickle) as f64 / n as f64;
            assert!((trickled - ratio).abs() < 0.01 * ratio.max(0.1), "ratio {ratio}: {trickled}");
            assert_eq!(counters.answers_from(Source::Primary) + counters.answers_from(Source::Trickle), n);
        }
    }

    #[test]
    fn trickle_of_one_is_the_manual_switch_and_never_answers_a_dead_backup() {
        let (targets, policy) = sites();
        let switched = Selection::build(&policy, &targets, &|_| true, 1.0);
        let shares = tally(&switched, 100, None);
        assert!(!shares.contains_key(&addr(1)), "{shares:?}");
        // No backup up: the primary answers even with the switch on.
        let no_backup = Selection::build(&policy, &targets, &|i| i == 0, 1.0);
        assert_eq!(tally(&no_backup, 10, None), BTreeMap::from([(addr(1), 10)]));
        let zero = Selection::build(&policy, &targets, &|_| true, 0.0);
        assert_eq!(tally(&zero, 100, None), BTreeMap::from([(addr(1), 100)]));
    }

    #[test]
    fn geo_prefers_backups_in_the_clients_region() {
        let (mut targets, mut policy) = sites();
        policy.geo = true;
        targets.push(target(5, "ap", 1));
        policy.backups[0].push(4);
        let selection = Selection::build(&policy, &targets, &|i| i != 0, 0.0);
        assert_eq!(tally(&selection, 10, Some("us")), BTreeMap::from([(addr(2), 10)]));
        assert_eq!(tally(&selection, 10, Some("ap")), BTreeMap::from([(addr(3), 5), (addr(5), 5)]));
        // A region without backups, or no region: every backup by weight.
        assert_eq!(tally(&selection, 5, Some("sa")), BTreeMap::from([(addr(2), 3), (addr(3), 1), (addr(5), 1)]));
        assert_eq!(tally(&selection, 5, None).values().sum::<usize>(), 5);
        assert!(selection.choose(&PolicyCounters::default(), Some("us")).by_client_region);
        // The region's backup down: the others answer.
        let selection = Selection::build(&policy, &targets, &|i| i != 0 && i != 1, 0.0);
        assert_eq!(tally(&selection, 4, Some("us")), BTreeMap::from([(addr(3), 2), (addr(5), 2)]));
    }

    #[test]
    fn smooth_order_interleaves_by_weight() {
        let order = smooth_order(&[(addr(1), 5), (addr(2), 1), (addr(3), 1)]);
        let (a, b, c) = (addr(1), addr(2), addr(3));
        assert_eq!(order, vec![a, a, b, a, c, a, a]);
    }
}
