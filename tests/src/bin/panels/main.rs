//! `lb-panels` (`cargo xtask panels`, root): the Grafana dashboard's panels
//! (deploy/grafana/lb-dashboard.json) drawn from real data, since there is no Grafana here.
//! A lab runs `lb` with the config every series exists under (`lb_tests::metrics_lab`) and
//! Prometheus scraping it every second (`prometheus`); HTTP and DNS traffic goes through it
//! for a while with a backend's servers stopped in the middle (`traffic`); then each
//! panel's queries, Grafana's variables set (`query`), are asked of Prometheus with
//! `query_range` and every panel is drawn in a grid (`grid`) into a PNG.
//!
//! Options: `--out FILE.png` (default docs/dashboard.png), `--seconds N` (the traffic's
//! length, default 90; the fault lasts its middle third).

mod grid;
mod prometheus;
mod query;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use lb_tests::deploy::{dashboard_panels, deploy_path, variable_names};
use lb_tests::lab::{LbProcess, require_root, require_tool};
use lb_tests::metrics_lab::{build_lab, every_series_config};
use lb_userspace::config::AdminConfig;

use grid::PanelData;
use prometheus::Prometheus;
use traffic::Schedule;

/// Points of every query: one per 2 s.
const STEP: Duration = Duration::from_secs(2);
/// HTTP requests per second through both VIPs.
const RATE: u32 = 40;
/// Waited after the traffic so that its last seconds are scraped.
const LAST_SCRAPES: Duration = Duration::from_secs(3);

struct Options {
    out: PathBuf,
    seconds: u64,
}

fn options() -> Result<Options> {
    let mut opts =
        Options { out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dashboard.png")), seconds: 90 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => opts.out = PathBuf::from(value()?),
            "--seconds" => opts.seconds = value()?.parse().context("--seconds takes a whole number")?,
            _ => bail!("unknown argument {arg:?} (options: --out FILE.png, --seconds N)"),
        }
    }
    if opts.seconds < 12 {
        bail!("--seconds must be at least 12 (a fault needs room in the middle)");
    }
    Ok(opts)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lb-panels: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let opts = options()?;
    require_root();
    require_tool("prometheus", "prometheus");
    // Before the run rather than after it: a missing font must not cost a whole run.
    lb_tests::font::load()?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_path("grafana/lb-dashboard.json"))?)?;
    let panels = dashboard_panels(&dashboard)?;
    let variables = variable_names(&dashboard)?;

    let mut lab = build_lab("pnl")?;
    let config = every_series_config(&lab);
    let mut lb = LbProcess::start(&lab, &config)?;
    let prometheus = Prometheus::start(&lab.lb, AdminConfig::default().listen)?;
    // A reload makes `lb_last_reload_applied`, the Controller panel's second line.
    lb.reload(&config)?;
    let third = Duration::from_secs(opts.seconds / 3);
    let schedule = Schedule { total: third * 3, fault_from: third, fault_until: third * 2, rate: RATE };
    println!("traffic for {} s at {RATE} requests/s, a DNS query a second", schedule.total.as_secs());
    let start = unix_now();
    let tally = traffic::drive(&lab.client, &mut lab.backends[1], schedule)?;
    println!("{tally:?}");
    std::thread::sleep(LAST_SCRAPES);
    let end = unix_now();

    let mut drawn = Vec::with_capacity(panels.len());
    for panel in &panels {
        let mut series = Vec::new();
        for target in &panel.targets {
            let expr = query::lab_promql(&target.expr, &variables, STEP);
            let body = prometheus.query_range(&expr, start, end, STEP)?;
            series.extend(query::matrix(&body, &target.legend, start).with_context(|| expr.clone())?);
        }
        drawn.push(PanelData { title: panel.title.clone(), series });
    }
    drop(prometheus);
    let (from, until) = (schedule.fault_from.as_secs_f64(), schedule.fault_until.as_secs_f64());
    let heading = format!(
        "lb dashboard over a {} s lab run, from Prometheus (step {} s, rates over {}); shaded: backend {}'s servers stopped",
        schedule.total.as_secs(),
        STEP.as_secs(),
        query::RATE_INTERVAL,
        lab.backends[1].spec.name
    );
    grid::write(&opts.out, &heading, &drawn, end - start, from..until)?;
    let bytes = std::fs::metadata(&opts.out)?.len();
    println!("wrote {} ({} KB)", opts.out.display(), bytes / 1024);
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs_f64()
}
