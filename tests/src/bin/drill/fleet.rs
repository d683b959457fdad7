//! `lb-drill --fleet`: the drill's phases for a fleet of balancer hosts
//! (`lb_tests::fleet`: three hosts with lb and BIRD behind an ECMP router). A steady stream
//! of requests from the client behind the router, each a new connection and an HTTP GET to
//! the VIP, while a host is killed (its link down, its controller and BIRD killed: BFD
//! tells the router), added back, drained and stopped (`lb host drain`, `lb stop --detach`),
//! and added again (started, then undrained). Prints per phase what was sent and failed,
//! with the targets: < 0.5% failed for the killed host, 0 for the drained one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_tests::fleet::{BFD, Fleet, WEB};
use lb_tests::lab::{self, http_get};

use crate::report::{Record, percentile};

/// What is done to the fleet at the start of a phase.
#[derive(Clone, Copy, PartialEq)]
enum Step {
    None,
    Kill(usize),
    Add(usize),
    DrainAndStop(usize),
    AddDrained(usize),
}

const PHASES: [(&str, Step); 5] = [
    ("baseline", Step::None),
    ("host killed", Step::Kill(2)),
    ("host added back", Step::Add(2)),
    ("host drained, stopped", Step::DrainAndStop(1)),
    ("host added", Step::AddDrained(1)),
];

/// Requests in flight at most.
const WORKERS: usize = 200;
/// How long the routers may take to follow a step before the drill says so.
const FOLLOW: Duration = Duration::from_secs(10);

pub fn run(rate: f64, phase: Duration) -> Result<()> {
    let mut fleet = Fleet::build("drfl", "action = \"med\"", BFD)?;
    println!(
        "fleet: 3 hosts behind an ECMP router, BFD {} ms x {}, {rate} requests/s, {} s per phase",
        BFD.0,
        BFD.1,
        phase.as_secs_f64()
    );
    let total = phase * PHASES.len() as u32;
    let (records, next) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let workers = (0..WORKERS)
        .map(|_| {
            let (records, next) = (records.clone(), next.clone());
            fleet.far_client.spawn(move || load(start, total, rate, &next, &records))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut nexthops = Vec::new();
    for (i, &(name, step)) in PHASES.iter().enumerate() {
        std::thread::sleep((start + phase * i as u32).saturating_duration_since(Instant::now()));
        lab::interrupted()?;
        println!("{:>6.1} s  {name}", start.elapsed().as_secs_f64());
        let followed = apply(&mut fleet, step)?;
        nexthops.push((fleet.nexthops()?.len(), followed));
    }
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a load worker panicked"))?;
    }
    let records = std::mem::take(&mut *records.lock().expect("records"));
    report(&records, phase, &nexthops);
    Ok(())
}

/// Applies `step`; how long the router took to follow it.
fn apply(fleet: &mut Fleet, step: Step) -> Result<Option<Duration>> {
    let wait = |fleet: &Fleet, n| fleet.wait_nexthops(n, FOLLOW).map(Some);
    match step {
        Step::None => Ok(None),
        Step::Kill(i) => {
            fleet.kill_host(i)?;
            wait(fleet, 2)
        }
        Step::Add(i) => {
            fleet.add_host(i)?;
            wait(fleet, 3)
        }
        Step::DrainAndStop(i) => {
            fleet.cli(i, &["host", "drain"])?;
            let moved = wait(fleet, 2)?;
            fleet.cli(i, &["stop", "--detach"])?;
            fleet.hosts[i].lb.take();
            Ok(moved)
        }
        Step::AddDrained(i) => {
            // The drain is kept in the include file: the new controller starts drained.
            fleet.add_host(i)?;
            fleet.cli(i, &["host", "undrain"])?;
            wait(fleet, 3)
        }
    }
}

/// A load worker: takes the next due request until the run is over.
fn load(start: Instant, total: Duration, rate: f64, next: &AtomicU64, records: &Mutex<Vec<Record>>) {
    loop {
        let due = Duration::from_secs_f64(next.fetch_add(1, Ordering::Relaxed) as f64 / rate);
        if due >= total || lab::interrupted().is_err() {
            return;
        }
        std::thread::sleep((start + due).saturating_duration_since(Instant::now()));
        let outcome = http_get(WEB).map_err(|e| format!("{e:#}"));
        let latency = start.elapsed().saturating_sub(due);
        records.lock().expect("records").push(Record { due, latency, outcome });
    }
}

fn report(records: &[Record], phase: Duration, nexthops: &[(usize, Option<Duration>)]) {
    println!(
        "\n{:<24} {:>7} {:>7} {:>8} {:>8} {:>8} {:>9} {:>14}",
        "phase", "sent", "failed", "failed%", "p50 ms", "p99 ms", "nexthops", "router moved"
    );
    for (i, &(name, step)) in PHASES.iter().enumerate() {
        let (from, to) = (phase * i as u32, phase * (i as u32 + 1));
        let in_phase: Vec<&Record> = records.iter().filter(|r| r.due >= from && r.due < to).collect();
        let failed = in_phase.iter().filter(|r| r.outcome.is_err()).count();
        let mut ok: Vec<Duration> = in_phase.iter().filter(|r| r.outcome.is_ok()).map(|r| r.latency).collect();
        ok.sort();
        let share = 100.0 * failed as f64 / in_phase.len().max(1) as f64;
        let (hops, followed) = nexthops[i];
        let moved = followed.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
        println!(
            "{name:<24} {:>7} {failed:>7} {share:>7.2}% {:>8.1} {:>8.1} {hops:>9} {moved:>14}",
            in_phase.len(),
            percentile(&ok, 50),
            percentile(&ok, 99)
        );
        match step {
            Step::Kill(_) => {
                println!("  verdict: a killed host: {share:.3}% failed (target < 0.5%): {}", mark(share < 0.5))
            }
            Step::DrainAndStop(_) => {
                println!("  verdict: a drained host: {failed} failed (target 0): {}", mark(failed == 0))
            }
            _ => {}
        }
    }
}

fn mark(met: bool) -> &'static str {
    if met { "✔" } else { "✘" }
}
