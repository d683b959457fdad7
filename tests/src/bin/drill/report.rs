//! What the drill prints: per phase what was sent, what failed and for how long, latency
//! percentiles and who answered, then each target's verdict.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::schedule::{DETECTION_WINDOW, Fault, PHASES, TIMING, failover_bound, failover_target};

/// One request: when it was due (since the start), how long it took from then, and what came of it.
pub struct Record {
    pub due: Duration,
    pub latency: Duration,
    pub outcome: Result<String, String>,
}

pub fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted.get((sorted.len().saturating_sub(1)) * p / 100).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// What one phase's requests came to.
pub struct PhaseStats {
    pub name: &'static str,
    pub fault: Fault,
    pub sent: usize,
    pub failed: usize,
    /// Failed, in percent of sent.
    pub share: f64,
    /// From the phase's fault to the due time of its last failed request.
    pub last_failure: Option<Duration>,
    /// Failed requests due later than the active detection window after the fault.
    pub failed_after_window: usize,
    /// Latency percentiles of the successful requests, in ms.
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// Successful requests by the backend that answered.
    pub answered_by: BTreeMap<String, usize>,
}

/// Every phase's figures: `records` sorted by due time, `fault_at` when each phase's fault
/// was applied, `bounds` the phases' limits (see [`crate::schedule::phase_bounds`]).
pub fn phase_stats(records: &[Record], fault_at: &[Duration], bounds: &[Duration]) -> Vec<PhaseStats> {
    PHASES
        .iter()
        .enumerate()
        .map(|(i, &(name, fault))| {
            let in_phase: Vec<&Record> =
                records.iter().filter(|r| r.due >= bounds[i] && r.due < bounds[i + 1]).collect();
            let failed: Vec<Duration> =
                in_phase.iter().filter(|r| r.outcome.is_err()).map(|r| r.due.saturating_sub(fault_at[i])).collect();
            let mut ok: Vec<Duration> = in_phase.iter().filter(|r| r.outcome.is_ok()).map(|r| r.latency).collect();
            ok.sort();
            let mut answered_by = BTreeMap::new();
            for backend in in_phase.iter().filter_map(|r| r.outcome.as_ref().ok()) {
                *answered_by.entry(backend.clone()).or_default() += 1;
            }
            PhaseStats {
                name,
                fault,
                sent: in_phase.len(),
                failed: failed.len(),
                share: 100.0 * failed.len() as f64 / in_phase.len().max(1) as f64,
                last_failure: failed.last().copied(),
                failed_after_window: failed.iter().filter(|&&d| d > DETECTION_WINDOW).count(),
                p50: percentile(&ok, 50),
                p90: percentile(&ok, 90),
                p99: percentile(&ok, 99),
                answered_by,
            }
        })
        .collect()
}

pub fn report(records: &[Record], stats: &[PhaseStats]) {
    println!(
        "\n{:<26} {:>7} {:>7} {:>8} {:>16} {:>8} {:>8} {:>8}  answered by",
        "phase", "sent", "failed", "failed%", "last failure at", "p50 ms", "p90 ms", "p99 ms"
    );
    let mut verdicts = Vec::new();
    for phase in stats {
        let spread: Vec<String> = phase.answered_by.iter().map(|(b, n)| format!("{b}:{n}")).collect();
        println!(
            "{:<26} {:>7} {:>7} {:>7.2}% {:>16} {:>8.1} {:>8.1} {:>8.1}  {}",
            phase.name,
            phase.sent,
            phase.failed,
            phase.share,
            phase.last_failure.map_or("-".to_owned(), |d| format!("+{:.2} s", d.as_secs_f64())),
            phase.p50,
            phase.p90,
            phase.p99,
            spread.join(" ")
        );
        verdicts.extend(verdict(phase));
    }
    println!();
    for verdict in verdicts {
        println!("{verdict}");
    }
    let failures: BTreeMap<String, usize> =
        records.iter().filter_map(|r| r.outcome.as_ref().err()).fold(BTreeMap::new(), |mut m, e| {
            // The innermost cause: refused, reset, timed out.
            *m.entry(e.rsplit(": ").next().unwrap_or(e).to_owned()).or_default() += 1;
            m
        });
    println!("failures by kind: {failures:?}");
}

/// The target a phase is held to and whether it met it, for the phases that have one.
fn verdict(phase: &PhaseStats) -> Option<String> {
    let share = phase.share;
    let verdict = match phase.fault {
        Fault::KillProcess(_) => {
            format!("kill one backend process: {share:.3}% failed (target < 0.1%): {}", mark(share < 0.1))
        }
        Fault::BlackHole(_) => format!(
            "black-hole one backend: {} failed, {} of them due after the {} s detection window (target 0): {}",
            phase.failed,
            phase.failed_after_window,
            DETECTION_WINDOW.as_secs(),
            mark(phase.failed_after_window == 0)
        ),
        Fault::KillBackends(b) if b.len() == 4 => {
            format!("kill a zone: {share:.3}% failed (target < 1%): {}", mark(share < 1.0))
        }
        Fault::KillSiteA => {
            let target = failover_target();
            format!(
                "site A down: last failure {} after the fault (bound TTL {} s + interval {} s x unhealthy_threshold {} + peer interval {} s = {} s; target ≤ {} s): {}",
                phase.last_failure.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
                TIMING.ttl,
                TIMING.interval.as_secs_f64(),
                TIMING.unhealthy_threshold,
                TIMING.interval.as_secs_f64(),
                failover_bound().as_secs_f64(),
                target.as_secs_f64(),
                mark(phase.last_failure.is_none_or(|d| d <= target))
            )
        }
        _ => return None,
    };
    Some(verdict)
}

fn mark(met: bool) -> &'static str {
    if met { "✔" } else { "✘" }
}
