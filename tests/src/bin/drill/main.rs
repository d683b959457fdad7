//! `lb-drill` (`cargo xtask drill`): the fault drill. A steady stream of requests, each a
//! lookup of `www.example.test`, a new TCP connection to the address answered and an HTTP
//! GET, goes through `lb run` to a lab of backends while faults are injected on a schedule:
//! a backend's process killed (connections refused), a backend black-holed (packets
//! dropped), a whole zone killed, a whole region killed, each healed in the next phase; then
//! every backend of site A stopped, so that the name fails over to site B, and restarted.
//! Prints per phase what was sent, what failed and for how long, latency percentiles and
//! who answered; draws success rate and latency over time, the phases and their table, as
//! SVG and PNG (`chart`).
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
//! (4 s phases), `--out FILE.svg` (default target/drill.svg), `--png FILE.png` (default: the
//! SVG's path with the extension `.png`).
//!
//! `--soak MINUTES [...]` runs the soak mode instead (`lb_tests::soak`, options in
//! `lb_tests::soak::USAGE`); `--fleet` the phases of a fleet of balancer hosts (`fleet`:
//! a host killed, added, drained and stopped, added), with `--rate` and `--phase`.

mod chart;
mod fleet;
mod labels;
mod report;
mod resolver;
mod schedule;
mod table;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use lb_tests::lab::{self, BackendSpec, HTTP_PORT, LB_V4, http_get};
use lb_tests::sites::{NAME, Site, TwoSites};
use lb_tests::soak;

use report::{Record, phase_stats, report};
use resolver::Resolver;
use schedule::{Fault, HEALTH, PHASES, TIMING, phase_bounds, phase_length};

/// Requests in flight at most: a black-holed request waits out the lab's I/O timeout.
const WORKERS: usize = 400;

struct Options {
    /// `--fleet`: the fleet's phases instead of the sites'.
    fleet: bool,
    rate: f64,
    phase: Duration,
    out: PathBuf,
    /// The PNG's path; `None`: `out` with the extension `.png`.
    png: Option<PathBuf>,
}

fn options() -> Result<Options> {
    let mut opts = Options {
        fleet: false,
        rate: 200.0,
        phase: Duration::from_secs(10),
        out: "target/drill.svg".into(),
        png: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--rate" => opts.rate = value("--rate")?.parse().context("--rate")?,
            "--phase" => opts.phase = Duration::from_secs_f64(value("--phase")?.parse().context("--phase")?),
            "--quick" => opts.phase = Duration::from_secs(4),
            "--fleet" => opts.fleet = true,
            "--out" => opts.out = value("--out")?.into(),
            "--png" => opts.png = Some(value("--png")?.into()),
            "-h" | "--help" => {
                println!(
                    "lb-drill [--fleet] [--rate N] [--phase SECS] [--quick] [--out FILE.svg] [--png FILE.png]   (needs root; LB_BIN names `lb`)\n{}",
                    soak::USAGE
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(opts)
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
    if opts.fleet {
        return fleet::run(opts.rate, opts.phase);
    }
    // Before the run rather than after it: a missing font must not cost a whole drill.
    chart::load_font()?;
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
    let stats = phase_stats(&records, &fault_at, &bounds);
    report(&records, &stats);
    let png = opts.png.unwrap_or_else(|| opts.out.with_extension("png"));
    chart::write(&opts.out, &png, &records, &stats, &bounds)?;
    println!("\npicture: {} and {}", opts.out.display(), png.display());
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
