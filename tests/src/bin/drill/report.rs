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

pub fn report(records: &[Record], fault_at: &[Duration], bounds: &[Duration]) {
    println!(
        "\n{:<26} {:>7} {:>7} {:>8} {:>16} {:>8} {:>8} {:>8}  answered by",
        "phase", "sent", "failed", "failed%", "last failure at", "p50 ms", "p90 ms", "p99 ms"
    );
    let mut verdicts = Vec::new();
    for (i, (name, fault)) in PHASES.iter().enumerate() {
        let (from, to) = (bounds[i], bounds[i + 1]);
        let in_phase: Vec<&Record> = records.iter().filter(|r| r.due >= from && r.due < to).collect();
        let failed: Vec<&&Record> = in_phase.iter().filter(|r| r.outcome.is_err()).collect();
        let mut ok: Vec<Duration> = in_phase.iter().filter(|r| r.outcome.is_ok()).map(|r| r.latency).collect();
        ok.sort();
        let share = 100.0 * failed.len() as f64 / in_phase.len().max(1) as f64;
        let last = failed.last().map(|r| r.due.saturating_sub(fault_at[i]));
        let mut by_backend: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &in_phase {
            if let Ok(name) = &r.outcome {
                *by_backend.entry(name.as_str()).or_default() += 1;
            }
        }
        let spread: Vec<String> = by_backend.iter().map(|(b, n)| format!("{b}:{n}")).collect();
        println!(
            "{name:<26} {:>7} {:>7} {share:>7.2}% {:>16} {:>8.1} {:>8.1} {:>8.1}  {}",
            in_phase.len(),
            failed.len(),
            last.map_or("-".to_owned(), |d| format!("+{:.2} s", d.as_secs_f64())),
            percentile(&ok, 50),
            percentile(&ok, 90),
            percentile(&ok, 99),
            spread.join(" ")
        );
        match fault {
            Fault::KillProcess(_) => verdicts
                .push(format!("kill one backend process: {share:.3}% failed (target < 0.1%): {}", mark(share < 0.1))),
            Fault::BlackHole(_) => {
                let late = failed.iter().filter(|r| r.due.saturating_sub(fault_at[i]) > DETECTION_WINDOW).count();
                verdicts.push(format!(
                    "black-hole one backend: {} failed, {late} of them due after the {} s detection window (target 0): {}",
                    failed.len(),
                    DETECTION_WINDOW.as_secs(),
                    mark(late == 0)
                ))
            }
            Fault::KillBackends(b) if b.len() == 4 => {
                verdicts.push(format!("kill a zone: {share:.3}% failed (target < 1%): {}", mark(share < 1.0)))
            }
            Fault::KillSiteA => {
                let target = failover_target();
                verdicts.push(format!(
                    "site A down: last failure {} after the fault (bound TTL {} s + interval {} s x unhealthy_threshold {} + peer interval {} s = {} s; target ≤ {} s): {}",
                    last.map_or("-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64())),
                    TIMING.ttl,
                    TIMING.interval.as_secs_f64(),
                    TIMING.unhealthy_threshold,
                    TIMING.interval.as_secs_f64(),
                    failover_bound().as_secs_f64(),
                    target.as_secs_f64(),
                    mark(last.is_none_or(|d| d <= target))
                ))
            }
            _ => {}
        }
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

fn mark(met: bool) -> &'static str {
    if met { "✔" } else { "✘" }
}
