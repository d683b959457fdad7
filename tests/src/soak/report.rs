//! What the soak measured and whether it met its targets: failed requests by the fault
//! they fall in, nat ports held against connections alive, `lb`'s memory and descriptors
//! at start and end, and packets dropped by reason.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use lb_common::{Counter, Counters, GlobalStats, VipStats};
use lb_userspace::api::status::Status;

use super::faults::FaultRun;
use super::load::{Failure, Traffic};

/// Failures this long after a fault ended still count as its own.
pub const GRACE: Duration = Duration::from_secs(2);
/// Growth of `lb`'s resident memory that still counts as flat: allocator arenas and
/// buffers grown to the load's peak.
const RSS_ALLOWANCE_KIB: u64 = 16 * 1024;
/// Descriptors `lb` may hold beyond its start (sockets closing at the moment of the sample).
const FD_ALLOWANCE: u64 = 8;
/// Drop reasons that mean a table ran out or a bug, never a fault's cost.
const NEVER_DROPPED: [&str; 3] = ["nat_ports_exhausted", "flow_table_full", "internal"];

/// `lb`'s resident memory and open descriptors, from /proc.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub fds: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        Ok(Self { rss_kib, fds })
    }
}

/// One look at the balancer during the run.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: Duration,
    /// nat ports held and flows in the tables, over every backend.
    pub nat_ports: u64,
    pub flows: u64,
    /// Connections the load had open.
    pub alive: u64,
    pub process: ProcSample,
}

impl Sample {
    pub fn new(at: Duration, status: &Status, alive: u64, process: ProcSample) -> Self {
        let backends = status.vips.iter().flat_map(|v| &v.backends);
        let (nat_ports, flows) = backends.fold((0, 0), |(p, f), b| (p + b.flows.nat_ports, f + b.flows.flows));
        Self { at, nat_ports, flows, alive, process }
    }
}

pub struct Report {
    pub duration: Duration,
    pub nat_range: u16,
    pub faults: Vec<FaultRun>,
    pub failures: Vec<Failure>,
    pub ok: BTreeMap<Traffic, u64>,
    pub answered_by: BTreeMap<String, u64>,
    pub reopened: u64,
    pub samples: Vec<Sample>,
    /// The first sample (load running, no fault yet) and the last (load over, settled).
    pub first: Sample,
    pub last: Sample,
    /// Packets dropped by reason over the run ([`drops`]).
    pub drops: BTreeMap<&'static str, u64>,
}

/// Packets dropped by reason in `status` (VIP counters and the global ones), those not zero.
pub fn drops(status: &Status) -> BTreeMap<&'static str, u64> {
    let reason = |c: &Counter| c.label.map_or(c.field, |(_, value)| value);
    let mut drops = BTreeMap::new();
    for vip in &status.vips {
        for (counter, value) in VipStats::COUNTERS.iter().zip(vip.counters.values()) {
            if counter.family == "lb_vip_dropped_packets" {
                *drops.entry(reason(counter)).or_default() += value;
            }
        }
    }
    for (counter, value) in GlobalStats::COUNTERS.iter().zip(status.global.values()) {
        if counter.family == "lb_dropped_packets" {
            *drops.entry(reason(counter)).or_default() += value;
        }
    }
    drops.retain(|_, n| *n > 0);
    drops
}

impl Report {
    /// The fault a failure at `at` is put down to, if any.
    fn fault_at(&self, at: Duration) -> Option<&FaultRun> {
        self.faults.iter().find(|f| f.from <= at && at <= f.to + GRACE)
    }

    fn failures_by_phase(&self) -> BTreeMap<String, BTreeMap<Traffic, usize>> {
        let mut by_phase: BTreeMap<String, BTreeMap<Traffic, usize>> = BTreeMap::new();
        for failure in &self.failures {
            let phase = self.fault_at(failure.at).map_or("outside faults".to_owned(), |f| format!("{:?}", f.fault));
            *by_phase.entry(phase).or_default().entry(failure.traffic).or_default() += 1;
        }
        by_phase
    }

    /// The targets missed, each said in a line; none: the soak passed.
    pub fn misses(&self) -> Vec<String> {
        let mut misses = Vec::new();
        let outside: Vec<&Failure> = self.failures.iter().filter(|f| self.fault_at(f.at).is_none()).collect();
        if !outside.is_empty() {
            let first: Vec<String> = outside
                .iter()
                .take(5)
                .map(|f| format!("{:.1} s {:?}: {}", f.at.as_secs_f64(), f.traffic, f.error))
                .collect();
            misses.push(format!(
                "{} requests failed outside the faults (target 0), first: {}",
                outside.len(),
                first.join("; ")
            ));
        }
        for reason in NEVER_DROPPED {
            if let Some(n) = self.drops.get(reason) {
                misses.push(format!("{n} packets dropped for {reason} (target 0)"));
            }
        }
        if self.last.nat_ports > self.last.alive {
            misses.push(format!(
                "{} nat ports held at the end for {} connections alive (target: no more than alive)",
                self.last.nat_ports, self.last.alive
            ));
        }
        let (start, end) = (self.first.process, self.last.process);
        if end.rss_kib > start.rss_kib + (start.rss_kib / 4).max(RSS_ALLOWANCE_KIB) {
            misses.push(format!("lb's RSS grew from {} to {} KiB (target flat)", start.rss_kib, end.rss_kib));
        }
        if end.fds > start.fds + FD_ALLOWANCE {
            misses.push(format!("lb's open descriptors grew from {} to {} (target flat)", start.fds, end.fds));
        }
        misses
    }

    pub fn print(&self) {
        // Each kind: how often it ran and what it did to lb's RSS over all its runs.
        let ran = self.faults.iter().fold(BTreeMap::<String, (usize, i64)>::new(), |mut m, f| {
            let kind = m.entry(format!("{:?}", f.fault)).or_default();
            *kind = (kind.0 + 1, kind.1 + f.rss_growth_kib);
            m
        });
        println!("\nfaults run, and lb's RSS growth (KiB) over their runs: {ran:?}");
        let in_faults: i64 = self.faults.iter().map(|f| f.rss_growth_kib).sum();
        let total = self.last.process.rss_kib as i64 - self.first.process.rss_kib as i64;
        println!("lb's RSS growth outside the faults: {:+} KiB of {total:+} KiB", total - in_faults);
        println!(
            "\nrequests ok: {:?}; new connections by backend: {:?}; long-lived reopened: {}",
            self.ok, self.answered_by, self.reopened
        );
        println!("failed requests by phase (a fault's phase lasts {} s past its end):", GRACE.as_secs());
        for (phase, failed) in self.failures_by_phase() {
            println!("  {phase:<16} {failed:?}");
        }
        let kinds = self.failures.iter().fold(BTreeMap::<&str, usize>::new(), |mut m, f| {
            // The innermost cause: refused, reset, timed out.
            *m.entry(f.error.rsplit(": ").next().unwrap_or(&f.error)).or_default() += 1;
            m
        });
        println!("failures by kind: {kinds:?}");
        let peak = self.samples.iter().max_by_key(|s| s.nat_ports);
        if let Some(peak) = peak {
            println!(
                "\nnat ports (range {} per backend): at most {} held ({} flows) with {} connections alive, at {:.0} s",
                self.nat_range,
                peak.nat_ports,
                peak.flows,
                peak.alive,
                peak.at.as_secs_f64()
            );
        }
        println!(
            "at the end: {} nat ports held, {} flows, {} connections alive",
            self.last.nat_ports, self.last.flows, self.last.alive
        );
        let max_rss = self.samples.iter().map(|s| s.process.rss_kib).max().unwrap_or(0);
        println!(
            "lb: RSS {} KiB at start, {} KiB at the end (at most {max_rss}); descriptors {} at start, {} at the end",
            self.first.process.rss_kib, self.last.process.rss_kib, self.first.process.fds, self.last.process.fds
        );
        let stride = self.samples.len().div_ceil(10).max(1);
        let trend: Vec<String> = self
            .samples
            .iter()
            .step_by(stride)
            .map(|s| format!("{:.0} s: {}", s.at.as_secs_f64(), s.process.rss_kib))
            .collect();
        println!("lb's RSS over the run (KiB): {}", trend.join(", "));
        println!("packets dropped by reason: {:?}", self.drops);
        println!("run: {:.0} s, {} samples", self.duration.as_secs_f64(), self.samples.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::faults::Fault;

    fn sample(at: u64, nat_ports: u64, alive: u64, rss_kib: u64, fds: u64) -> Sample {
        Sample { at: Duration::from_secs(at), nat_ports, flows: nat_ports, alive, process: ProcSample { rss_kib, fds } }
    }

    /// A run that met every target: a failure inside a drain's grace, flat memory.
    fn passing() -> Report {
        let (first, last) = (sample(10, 40, 32, 20_000, 40), sample(100, 32, 32, 22_000, 41));
        Report {
            duration: Duration::from_secs(100),
            nat_range: 1000,
            faults: vec![FaultRun {
                fault: Fault::Drain,
                from: Duration::from_secs(20),
                to: Duration::from_secs(21),
                note: String::new(),
                rss_growth_kib: 0,
            }],
            failures: vec![failure(22)],
            ok: BTreeMap::new(),
            answered_by: BTreeMap::new(),
            reopened: 0,
            samples: vec![first, last],
            first,
            last,
            drops: BTreeMap::from([("no_neighbour", 3)]),
        }
    }

    fn failure(at: u64) -> Failure {
        Failure { at: Duration::from_secs(at), traffic: Traffic::NewConnection, error: "refused".into() }
    }

    #[test]
    fn a_run_within_its_targets_misses_none() {
        assert_eq!(passing().misses(), Vec::<String>::new());
    }

    #[test]
    fn each_target_missed_is_said() {
        let mut outside = passing();
        outside.failures.push(failure(21 + GRACE.as_secs() + 1));
        let mut exhausted = passing();
        exhausted.drops.insert("nat_ports_exhausted", 1);
        let mut ports_kept = passing();
        ports_kept.last.nat_ports = 33;
        let mut rss = passing();
        rss.last.process.rss_kib = 20_000 + RSS_ALLOWANCE_KIB + 1;
        let mut fds = passing();
        fds.last.process.fds = 40 + FD_ALLOWANCE + 1;
        for (report, says) in [
            (outside, "failed outside the faults"),
            (exhausted, "nat_ports_exhausted"),
            (ports_kept, "33 nat ports held at the end for 32"),
            (rss, "RSS grew"),
            (fds, "descriptors grew"),
        ] {
            let misses = report.misses();
            assert!(misses.len() == 1 && misses[0].contains(says), "{says}: {misses:?}");
        }
    }
}
