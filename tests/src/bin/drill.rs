//! `lb-drill` (`cargo xtask drill`): the fault drill. A steady stream of requests, each a
//! lookup of `www.example.test`, a new TCP connection to the address answered and an HTTP
//! GET, goes through `lb run` to a lab of backends while faults are injected on a schedule:
//! a backend's process killed (connections refused), a backend black-holed (packets
//! dropped), a whole zone killed, a whole region killed, each healed in the next phase; then
//! every backend of site A stopped, so that the name fails over to site B, and restarted.
//! Prints per phase what was sent, what failed and for how long, latency percentiles and
//! who answered; writes an SVG of success rate and latency over time.
//!
//! Two sites (`lb_tests::sites`), each a balancer with its own VIP and a controller that
//! also serves the zone `example.test.` (TTL 2 s) and is one of the 2 vantage points that
//! must agree before `www` moves from site A's VIP to site B's. Site A (10.0.0.1) is in
//! r1/z1; its backends: 4 in r1/z1 (priority level 0), 2 in r1/z2 (level 1), 2 in r2/z1
//! (level 2). Site B (10.0.0.3) is in r3/z1 with 2 backends there. The load generator
//! resolves like a caching stub resolver: site A's DNS server first, site B's when A's does
//! not answer in time, the answer kept for its TTL. The site phases are longer than the
//! others by the time the answer may take to move.
//!
//! Options: `--rate N` (requests/s, default 200), `--phase SECS` (default 10), `--quick`
//! (4 s phases), `--out FILE` (default target/drill.svg).
//!
//! `--soak MINUTES [...]` runs the soak mode instead (`lb_tests::soak`, options in
//! `lb_tests::soak::USAGE`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use lb_tests::lab::{self, BackendSpec, HTTP_PORT, LB_V4, http_get};
use lb_tests::sites::{NAME, Site, Timing, TwoSites, resolve_a};
use lb_tests::soak;

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
/// How the sites judge each other: at the pace of [`HEALTH`]'s checks, and the record's
/// short TTL.
const TIMING: Timing =
    Timing { interval: Duration::from_secs(1), unhealthy_threshold: 2, healthy_threshold: 2, ttl: 2 };
/// What the drill allows beyond the failover bound (the controllers' loops, a busy machine).
const FAILOVER_ALLOWANCE: Duration = Duration::from_secs(1);
/// How long the stub resolver waits for one DNS server before asking the next.
const DNS_TIMEOUT: Duration = Duration::from_millis(300);

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
                println!(
                    "lb-drill [--rate N] [--phase SECS] [--quick] [--out FILE.svg]   (needs root; LB_BIN names `lb`)\n{}",
                    soak::USAGE
                );
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
    /// Every backend of site A stopped (both controllers stay up to decide).
    KillSiteA,
    HealSiteA,
}

impl Fault {
    /// Whether the phase waits for the DNS answer to move between the sites.
    fn moves_answer(self) -> bool {
        matches!(self, Fault::KillSiteA | Fault::HealSiteA)
    }
}

/// The schedule: (phase name, what happens at its start).
const PHASES: [(&str, Fault); 11] = [
    ("baseline", Fault::None),
    ("kill one backend process", Fault::KillProcess(0)),
    ("heal", Fault::Heal),
    ("black-hole one backend", Fault::BlackHole(1)),
    ("heal", Fault::Heal),
    ("kill zone r1/z1", Fault::KillBackends(&[0, 1, 2, 3])),
    ("heal", Fault::Heal),
    ("kill region r1", Fault::KillBackends(&[0, 1, 2, 3, 4, 5])),
    ("heal", Fault::Heal),
    ("site A down", Fault::KillSiteA),
    ("site A healed", Fault::HealSiteA),
];

/// Backends named after their labels, `n` per (region, zone).
fn backends(layout: &[(&str, &str, usize)]) -> Vec<BackendSpec> {
    layout
        .iter()
        .flat_map(|&(region, zone, n)| {
            (1..=n).map(move |i| BackendSpec {
                name: format!("{region}-{zone}-b{i}"),
                region: region.into(),
                zone: zone.into(),
            })
        })
        .collect()
}

/// The longest the name may keep answering a dead site A: the sites' detection bound,
/// then one TTL of the last cached answer.
fn failover_bound() -> Duration {
    TIMING.detection_bound() + Duration::from_secs(TIMING.ttl.into())
}

/// The longest the drill accepts between site A's death and the last failed request.
fn failover_target() -> Duration {
    failover_bound() + FAILOVER_ALLOWANCE
}

/// How long a phase of `fault` lasts: the site phases also get the time the answer may
/// take to move, so that it moves within them.
fn phase_length(fault: Fault, phase: Duration) -> Duration {
    if fault.moves_answer() { phase + failover_target() } else { phase }
}

/// Where each phase starts (since the run began), and where the last one ends.
fn phase_bounds(phase: Duration) -> Vec<Duration> {
    let mut bounds = vec![Duration::ZERO];
    for (_, fault) in PHASES {
        bounds.push(bounds[bounds.len() - 1] + phase_length(fault, phase));
    }
    bounds
}

/// The load generator's stub resolver, shared by the workers as a host's caching stub is:
/// asks the servers in order, the next when one does not answer, and keeps the answer for
/// its TTL.
struct Resolver {
    servers: [Ipv4Addr; 2],
    /// The address answered and when it expires.
    cached: Mutex<Option<(Ipv4Addr, Instant)>>,
}

impl Resolver {
    /// The address to connect to. The cache stays locked while asking, so that one worker
    /// asks and the others take its answer.
    fn address(&self) -> Result<Ipv4Addr> {
        let mut cached = self.cached.lock().expect("DNS cache");
        if let Some((address, expires)) = *cached
            && Instant::now() < expires
        {
            return Ok(address);
        }
        let mut errors = Vec::new();
        for server in self.servers {
            match resolve_a(server, NAME, DNS_TIMEOUT) {
                // Policy records answer one address.
                Ok((addresses, ttl)) => {
                    *cached = Some((addresses[0], Instant::now() + ttl));
                    return Ok(addresses[0]);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("resolving {NAME}: {}", errors.join("; "))
    }
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--soak") {
        return soak(&args[1..]);
    }
    match options().and_then(drill) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drill failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--soak MINUTES ...`: the soak mode (`lb_tests::soak`); fails when a target is missed.
fn soak(args: &[String]) -> ExitCode {
    let report = match soak::Options::parse(args).and_then(|opts| soak::run(&opts)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("soak failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    report.print();
    let misses = report.misses();
    for miss in &misses {
        println!("✘ {miss}");
    }
    if misses.is_empty() {
        println!("✔ every target met");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn drill(opts: Options) -> Result<()> {
    let site_a = Site {
        backends: backends(&[("r1", "z1", 4), ("r1", "z2", 2), ("r2", "z1", 2)]),
        locality: Some(("r1", "z1")),
        vip_health: Some(HEALTH),
        // 8 backends: a table of 4099 slots keeps shares within 1% and, at a sixteenth of
        // the default size, writes a failover into the maps sixteen times faster.
        maglev_table_size: Some(4099),
    };
    let site_b = Site { locality: Some(("r3", "z1")), ..Site::new(backends(&[("r3", "z1", 2)])) };
    let mut sites = TwoSites::build_sites("drill", site_a, site_b, TIMING)?;
    println!("site A's VIP settings:\n{HEALTH}\n");
    println!(
        "sites: {NAME} A with TTL {} s, checks every {} ms (down after {}), views exchanged as often, quorum 2",
        TIMING.ttl,
        TIMING.interval.as_millis(),
        TIMING.unhealthy_threshold
    );
    let bounds = phase_bounds(opts.phase);
    println!(
        "{} requests/s, each a lookup (cached for the TTL) and a new connection, {} s per phase ({:.1} s for the site phases)",
        opts.rate,
        opts.phase.as_secs_f64(),
        phase_length(Fault::KillSiteA, opts.phase).as_secs_f64()
    );

    let total = bounds[PHASES.len()];
    let records = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicU64::new(0));
    let resolver = Arc::new(Resolver { servers: [LB_V4, sites.b_address], cached: Mutex::new(None) });
    let start = Instant::now();
    let workers = (0..WORKERS)
        .map(|_| {
            let (records, next, resolver, rate) = (records.clone(), next.clone(), resolver.clone(), opts.rate);
            sites.lab.client.spawn(move || load(start, total, rate, &next, &resolver, &records))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut fault_at = Vec::new();
    for (i, (name, fault)) in PHASES.iter().enumerate() {
        std::thread::sleep((start + bounds[i]).saturating_duration_since(Instant::now()));
        lab::interrupted()?;
        println!("{:>6.1} s  {name}", start.elapsed().as_secs_f64());
        fault_at.push(start.elapsed());
        apply(&mut sites, *fault)?;
    }
    for worker in workers {
        worker.join().map_err(|_| anyhow::anyhow!("a load worker panicked"))?;
    }
    let mut records = std::mem::take(&mut *records.lock().expect("records"));
    records.sort_by_key(|r| r.due);
    report(&records, &fault_at, &bounds);
    std::fs::write(&opts.out, svg(&records, &bounds)).with_context(|| format!("writing {}", opts.out.display()))?;
    println!("\npicture: {}", opts.out.display());
    Ok(())
}

/// A load worker: takes the next due request until the run is over.
fn load(
    start: Instant,
    total: Duration,
    rate: f64,
    next: &AtomicU64,
    resolver: &Resolver,
    records: &Mutex<Vec<Record>>,
) {
    loop {
        let due = Duration::from_secs_f64(next.fetch_add(1, Ordering::Relaxed) as f64 / rate);
        if due >= total || lab::interrupted().is_err() {
            return;
        }
        std::thread::sleep((start + due).saturating_duration_since(Instant::now()));
        let outcome = resolver
            .address()
            .and_then(|address| http_get(SocketAddr::new(IpAddr::V4(address), HTTP_PORT)))
            .map_err(|e| format!("{e:#}"));
        let latency = start.elapsed().saturating_sub(due);
        records.lock().expect("records").push(Record { due, latency, outcome });
    }
}

fn apply(sites: &mut TwoSites, fault: Fault) -> Result<()> {
    let backends = &mut sites.lab.backends;
    match fault {
        Fault::None => {}
        Fault::KillProcess(i) => backends[i].stop(),
        Fault::BlackHole(i) => backends[i].black_hole(true)?,
        Fault::KillBackends(which) => which.iter().for_each(|&i| backends[i].stop()),
        Fault::Heal => {
            for backend in backends {
                backend.black_hole(false)?;
                backend.restart()?;
            }
        }
        Fault::KillSiteA => sites.site_a_backends(false)?,
        Fault::HealSiteA => sites.site_a_backends(true)?,
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted.get((sorted.len().saturating_sub(1)) * p / 100).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn report(records: &[Record], fault_at: &[Duration], bounds: &[Duration]) {
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

/// Success rate (top) and p99 latency (bottom) per bucket, phases (`bounds`, see
/// [`phase_bounds`]) shaded and named.
fn svg(records: &[Record], bounds: &[Duration]) -> String {
    let in_buckets = |d: Duration| d.as_secs_f64() / BUCKET.as_secs_f64();
    let buckets = in_buckets(bounds[PHASES.len()]).ceil() as usize;
    let mut rate = vec![(0usize, 0usize); buckets];
    let mut latencies = vec![Vec::new(); buckets];
    for r in records {
        let b = (in_buckets(r.due) as usize).min(buckets - 1);
        rate[b].1 += 1;
        if r.outcome.is_ok() {
            rate[b].0 += 1;
            latencies[b].push(r.latency);
        }
    }
    let p99: Vec<f64> = latencies
        .iter_mut()
        .map(|l| {
            l.sort();
            percentile(l, 99)
        })
        .collect();
    let max_latency = p99.iter().copied().fold(1.0, f64::max);
    let (width, height, left) = (1000.0, 420.0, 60.0);
    let x = |b: f64| left + (width - left - 10.0) * b / buckets as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    );
    for (i, (name, _)) in PHASES.iter().enumerate() {
        let (x0, x1) = (x(in_buckets(bounds[i])), x(in_buckets(bounds[i + 1])));
        let fill = if i % 2 == 0 { "#f4f4f4" } else { "#e6eef8" };
        let _ = writeln!(out, "<rect x=\"{x0:.1}\" y=\"22\" width=\"{:.1}\" height=\"378\" fill=\"{fill}\"/>", x1 - x0);
        // Names on two rows, so that long ones don't run into their neighbours.
        let _ = writeln!(out, "<text x=\"{:.1}\" y=\"{}\">{name}</text>", x0 + 2.0, if i % 2 == 0 { 9 } else { 18 });
    }
    let mut line = |values: Vec<f64>, top: f64, span: f64, color: &str, label: &str| {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(b, v)| format!("{:.1},{:.1}", x(b as f64), top + span * (1.0 - v)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(out, "<text x=\"4\" y=\"{:.1}\" fill=\"{color}\">{label}</text>", top + span / 2.0);
    };
    line(
        rate.iter().map(|&(ok, n)| if n == 0 { 1.0 } else { ok as f64 / n as f64 }).collect(),
        30.0,
        170.0,
        "#2a7",
        "success",
    );
    line(p99.iter().map(|l| l / max_latency).collect(), 220.0, 170.0, "#c33", &format!("p99 ≤{max_latency:.0}ms"));
    out.push_str("</svg>\n");
    out
}
