//! `lb-drill` (`cargo xtask drill`): the fault drill. A steady stream of requests, each a
//! new TCP connection and an HTTP GET, goes through `lb run` to a lab of 8 backends while
//! faults are injected on a schedule: a backend's process killed (connections refused), a
//! backend black-holed (packets dropped), a whole zone killed, a whole region killed, each
//! healed in the next phase. Prints per phase what was sent, what failed and for how long,
//! and latency percentiles; writes an SVG of success rate and latency over time.
//!
//! The balancer is in r1/z1; backends: 4 in r1/z1 (priority level 0), 2 in r1/z2 (level 1),
//! 2 in r2/z1 (level 2). Options: `--rate N` (requests/s, default 200), `--phase SECS`
//! (default 10), `--quick` (4 s phases), `--out FILE` (default target/drill.svg).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use lb_tests::lab::{self, BackendSpec, HTTP_PORT, Lab, LbProcess, VIP_V4, VipSpec, http_get};

/// Requests in flight at most: a black-holed request waits out the lab's I/O timeout.
const WORKERS: usize = 400;
/// Buckets of the picture.
const BUCKET: Duration = Duration::from_millis(250);

/// The VIP's health settings: what the targets below assume.
const HEALTH: &str = r#"http = true
health_check = { type = "http", interval = "1s", timeout = "500ms", unhealthy_threshold = 2, healthy_threshold = 2 }
outlier_detection = { split_external_local_origin_errors = true, consecutive_local_origin_failures = 1, consecutive_5xx = 3, interval = "1s", base_ejection_time = "10s", max_ejection_percent = 100 }"#;
/// Active detection window of a black-holed backend: interval x unhealthy_threshold.
const DETECTION_WINDOW: Duration = Duration::from_secs(2);

struct Options {
    rate: f64,
    phase: Duration,
    out: std::path::PathBuf,
}

fn options() -> Result<Options> {
    let mut opts = Options { rate: 200.0, phase: Duration::from_secs(10), out: "target/drill.svg".into() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rate" => opts.rate = value("--rate")?.parse().context("--rate")?,
            "--phase" => opts.phase = Duration::from_secs_f64(value("--phase")?.parse().context("--phase")?),
            "--quick" => opts.phase = Duration::from_secs(4),
            "--out" => opts.out = value("--out")?.into(),
            "-h" | "--help" => {
                println!("lb-drill [--rate N] [--phase SECS] [--quick] [--out FILE.svg]   (needs root; LB_BIN names `lb`)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(opts)
}

/// What is done to the lab at the start of a phase.
#[derive(Clone, Copy)]
enum Fault {
    None,
    KillProcess(usize),
    BlackHole(usize),
    KillBackends(&'static [usize]),
    Heal,
}

/// The schedule: (phase name, what happens at its start).
const PHASES: [(&str, Fault); 9] = [
    ("baseline", Fault::None),
    ("kill one backend process", Fault::KillProcess(0)),
    ("heal", Fault::Heal),
    ("black-hole one backend", Fault::BlackHole(1)),
    ("heal", Fault::Heal),
    ("kill zone r1/z1", Fault::KillBackends(&[0, 1, 2, 3])),
    ("heal", Fault::Heal),
    ("kill region r1", Fault::KillBackends(&[0, 1, 2, 3, 4, 5])),
    ("heal", Fault::Heal),
];

fn backends() -> Vec<BackendSpec> {
    [("r1", "z1", 4), ("r1", "z2", 2), ("r2", "z1", 2)]
        .into_iter()
        .flat_map(|(region, zone, n)| {
            (1..=n).map(move |i| BackendSpec { name: format!("{region}-{zone}-b{i}"), region: region.into(), zone: zone.into() })
        })
        .collect()
}

/// One request: when it was due (since the start), how long it took from then, and what came of it.
struct Record {
    due: Duration,
    latency: Duration,
    outcome: Result<String, String>,
}

fn main() -> ExitCode {
    if let Err(e) = lab::stop_on_interrupt() {
        eprintln!("{e:#}");
        return ExitCode::FAILURE;
    }
    match options().and_then(drill) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drill failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn drill(opts: Options) -> Result<()> {
    let mut lab = Lab::build("drill", backends(), false)?;
    let all: Vec<(usize, u32)> = (0..lab.backends.len()).map(|i| (i, 1)).collect();
    let config = lab::lb_config(&lab, &[VipSpec::new("web", IpAddr::V4(VIP_V4), HTTP_PORT, "tcp", "nat", all)])
        .replacen("[balancer]\n", "[balancer]\nregion = \"r1\"\nzone = \"z1\"\n", 1)
        // 8 backends: a table of 4099 slots keeps shares within 1% and, at a sixteenth of
        // the default size, writes a failover into the maps sixteen times faster.
        .replacen("maglev_table_size = 65537", "maglev_table_size = 4099", 1)
        .replacen("mode = \"nat\"\n", &format!("mode = \"nat\"\n{HEALTH}\n"), 1);
    let _lb = LbProcess::start(&lab, &config)?;
    println!("VIP settings:\n{HEALTH}\n");
    println!("{} requests/s, a new connection each, {} s per phase", opts.rate, opts.phase.as_secs_f64());

    let total = opts.phase * PHASES.len() as u32;
    let records = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let workers = (0..WORKERS)
        .map(|_| {
            let (records, next, rate) = (records.clone(), next.clone(), opts.rate);
            lab.client.spawn(move || load(start, total, rate, &next, &records))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut fault_at = Vec::new();
    for (i, (name, fault)) in PHASES.iter().enumerate() {
        std::thread::sleep((start + opts.phase * i as u32).saturating_duration_since(Instant::now()));
        lab::interrupted()?;
        println!("{:>6.1} s  {name}", start.elapsed().as_secs_f64());
        fault_at.push(start.elapsed());
        apply(&mut lab, *fault)?;
    }
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a load worker panicked"))?;
    }
    let mut records = std::mem::take(&mut *records.lock().expect("records"));
    records.sort_by_key(|r| r.due);
    report(&records, &fault_at, opts.phase);
    std::fs::write(&opts.out, svg(&records, opts.phase)).with_context(|| format!("writing {}", opts.out.display()))?;
    println!("\npicture: {}", opts.out.display());
    Ok(())
}

/// A load worker: takes the next due request until the run is over.
fn load(start: Instant, total: Duration, rate: f64, next: &AtomicU64, records: &Mutex<Vec<Record>>) {
    let target = SocketAddr::new(IpAddr::V4(VIP_V4), HTTP_PORT);
    loop {
        let due = Duration::from_secs_f64(next.fetch_add(1, Ordering::Relaxed) as f64 / rate);
        if due >= total || lab::interrupted().is_err() {
            return;
        }
        std::thread::sleep((start + due).saturating_duration_since(Instant::now()));
        let outcome = http_get(target).map_err(|e| format!("{e:#}"));
        let latency = start.elapsed().saturating_sub(due);
        records.lock().expect("records").push(Record { due, latency, outcome });
    }
}

fn apply(lab: &mut Lab, fault: Fault) -> Result<()> {
    match fault {
        Fault::None => {}
        Fault::KillProcess(i) => lab.backends[i].stop(),
        Fault::BlackHole(i) => lab.backends[i].black_hole(true)?,
        Fault::KillBackends(which) => which.iter().for_each(|&i| lab.backends[i].stop()),
        Fault::Heal => {
            for backend in &mut lab.backends {
                backend.black_hole(false)?;
                backend.restart()?;
            }
        }
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted.get((sorted.len().saturating_sub(1)) * p / 100).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn report(records: &[Record], fault_at: &[Duration], phase: Duration) {
    println!(
        "\n{:<26} {:>7} {:>7} {:>8} {:>16} {:>8} {:>8} {:>8}  answered by",
        "phase", "sent", "failed", "failed%", "last failure at", "p50 ms", "p90 ms", "p99 ms"
    );
    let mut verdicts = Vec::new();
    for (i, (name, fault)) in PHASES.iter().enumerate() {
        let (from, to) = (phase * i as u32, phase * (i as u32 + 1));
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
            Fault::KillProcess(_) => verdicts.push(format!("kill one backend process: {share:.3}% failed (target < 0.1%): {}", mark(share < 0.1))),
            Fault::BlackHole(_) => {
                let late = failed.iter().filter(|r| r.due.saturating_sub(fault_at[i]) > DETECTION_WINDOW).count();
                verdicts.push(format!(
                    "black-hole one backend: {} failed, {late} of them due after the {} s detection window (target 0): {}",
                    failed.len(),
                    DETECTION_WINDOW.as_secs(),
                    mark(late == 0)
                ))
            }
            Fault::KillBackends(b) if b.len() == 4 => verdicts.push(format!("kill a zone: {share:.3}% failed (target < 1%): {}", mark(share < 1.0))),
            _ => {}
        }
    }
    println!();
    for verdict in verdicts {
        println!("{verdict}");
    }
    let failures: BTreeMap<String, usize> = records.iter().filter_map(|r| r.outcome.as_ref().err()).fold(BTreeMap::new(), |mut m, e| {
        // The innermost cause: refused, reset, timed out.
        *m.entry(e.rsplit(": ").next().unwrap_or(e).to_owned()).or_default() += 1;
        m
    });
    println!("failures by kind: {failures:?}");
}

fn mark(met: bool) -> &'static str {
    if met { "✔" } else { "✘" }
}

/// Success rate (top) and p99 latency (bottom) per bucket, phases shaded and named.
fn svg(records: &[Record], phase: Duration) -> String {
    let total = phase * PHASES.len() as u32;
    let buckets = (total.as_secs_f64() / BUCKET.as_secs_f64()).ceil() as usize;
    let mut rate = vec![(0usize, 0usize); buckets];
    let mut latencies = vec![Vec::new(); buckets];
    for r in records {
        let b = ((r.due.as_secs_f64() / BUCKET.as_secs_f64()) as usize).min(buckets - 1);
        rate[b].1 += 1;
        if r.outcome.is_ok() {
            rate[b].0 += 1;
            latencies[b].push(r.latency);
        }
    }
    let p99: Vec<f64> = latencies.iter_mut().map(|l| {
        l.sort();
        percentile(l, 99)
    }).collect();
    let max_latency = p99.iter().copied().fold(1.0, f64::max);
    let (width, height, left) = (1000.0, 420.0, 60.0);
    let x = |b: usize| left + (width - left - 10.0) * b as f64 / buckets as f64;
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    let per_phase = buckets / PHASES.len();
    for (i, (name, _)) in PHASES.iter().enumerate() {
        let (x0, x1) = (x(i * per_phase), x((i + 1) * per_phase));
        let fill = if i % 2 == 0 { "#f4f4f4" } else { "#e6eef8" };
        let _ = writeln!(out, "<rect x=\"{x0:.1}\" y=\"22\" width=\"{:.1}\" height=\"378\" fill=\"{fill}\"/>", x1 - x0);
        // Names on two rows, so that long ones don't run into their neighbours.
        let _ = writeln!(out, "<text x=\"{:.1}\" y=\"{}\">{name}</text>", x0 + 2.0, if i % 2 == 0 { 9 } else { 18 });
    }
    let mut line = |values: Vec<f64>, top: f64, span: f64, color: &str, label: &str| {
        let points: Vec<String> = values.iter().enumerate().map(|(b, v)| format!("{:.1},{:.1}", x(b), top + span * (1.0 - v))).collect();
        let _ = writeln!(out, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>", points.join(" "));
        let _ = writeln!(out, "<text x=\"4\" y=\"{:.1}\" fill=\"{color}\">{label}</text>", top + span / 2.0);
    };
    line(rate.iter().map(|&(ok, n)| if n == 0 { 1.0 } else { ok as f64 / n as f64 }).collect(), 30.0, 170.0, "#2a7", "success");
    line(p99.iter().map(|l| l / max_latency).collect(), 220.0, 170.0, "#c33", &format!("p99 ≤{max_latency:.0}ms"));
    out.push_str("</svg>\n");
    out
}
