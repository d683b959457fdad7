//! `cargo xtask demo`: a lab with 2 regions x 2 zones x 2 backends, the balancer in front
//! with an HTTP VIP (nat) and a UDP VIP (dsr), traffic from a client, and where it went.
//! Everything is removed at the end, also on failure, on a panic and on Ctrl-C.
//!
//! Options: `--http N` and `--udp N` (requests to send; 400 and 200 by default), `--hold`
//! (keep the lab and the balancer up after the traffic until Ctrl-C, to look at the maps).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use lb_tests::lab::{
    self, HTTP_PORT, Lab, LbProcess, UDP_PORT, VIP_V4, VipSpec, backends_across, http_get, interrupted, tally,
    udp_request,
};

struct Options {
    http: usize,
    udp: usize,
    hold: bool,
}

fn options() -> Result<Options> {
    let mut opts = Options { http: 400, udp: 200, hold: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--http" => opts.http = args.next().context("--http needs a number")?.parse().context("--http")?,
            "--udp" => opts.udp = args.next().context("--udp needs a number")?.parse().context("--udp")?,
            "--hold" => opts.hold = true,
            "-h" | "--help" => {
                println!("lb-demo [--http N] [--udp N] [--hold]   (needs root; LB_BIN names the `lb` binary)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    // The demo stops at the next request and cleans up.
    if let Err(e) = lab::stop_on_interrupt() {
        eprintln!("{e:#}");
        return ExitCode::FAILURE;
    }
    match options().and_then(demo) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(opts: Options) -> Result<()> {
    println!("building the lab: a client, the balancer, 2 regions x 2 zones x 2 backends (network namespaces)");
    let lab = Lab::build("demo", backends_across(2, 2, 2), true)?;
    interrupted()?;
    let all: Vec<(usize, u32)> = (0..lab.backends.len()).map(|i| (i, 1)).collect();
    let vip = IpAddr::V4(VIP_V4);
    let vips = [
        VipSpec::new("web", vip, HTTP_PORT, "tcp", "nat", all.clone()),
        VipSpec::new("game", vip, UDP_PORT, "udp", "dsr", all),
    ];
    let config = lab::lb_config(&lab, &vips);
    println!("starting `lb run` in namespace {}", lab.lb.name());
    let lb = LbProcess::start(&lab, &config)?;
    println!("config ({}):\n{}", lb.config_path().display(), indent(&config.to_string()));

    let pins = lab.pin_dir();
    println!("while the balancer runs, its maps can be read from another shell, e.g.:");
    for map in [
        "VIPS",
        "VIP_ENTRIES",
        "BACKENDS",
        "MAGLEV",
        "FLOWS_V4",
        "FLOWS_V6",
        "VIP_STATS",
        "BACKEND_STATS",
        "GLOBAL_STATS",
    ] {
        println!("  bpftool map dump pinned {}/{map}", pins.display());
    }
    println!("  ip netns exec {} ip link show eth0     # the attached XDP program", lab.lb.name());
    if !opts.hold {
        println!("(run with --hold to keep everything up after the traffic until Ctrl-C)");
    }

    let (http_n, udp_n) = (opts.http, opts.udp);
    println!(
        "\nsending {http_n} HTTP requests (nat, a new connection each) and {udp_n} UDP requests (dsr, a new source port each) to {vip}"
    );
    let (http, udp) = lab.client.run(move || -> Result<_> {
        let mut http = Vec::with_capacity(http_n);
        for _ in 0..http_n {
            interrupted()?;
            http.push(http_get(SocketAddr::new(vip, HTTP_PORT))?);
        }
        let mut udp = Vec::with_capacity(udp_n);
        for _ in 0..udp_n {
            interrupted()?;
            udp.push(udp_request(SocketAddr::new(vip, UDP_PORT))?);
        }
        Ok((tally(http), tally(udp)))
    })??;

    let share = |n: usize, total: usize| {
        if total == 0 { 0.0 } else { 100.0 * n as f64 / total as f64 }
    };
    println!(
        "\n{:<10} {:<7} {:<5} {:>6} {:>7} {:>6} {:>7}",
        "backend", "region", "zone", "http", "share", "udp", "share"
    );
    for b in &lab.backends {
        let (h, u) = (http.get(&b.spec.name).copied().unwrap_or(0), udp.get(&b.spec.name).copied().unwrap_or(0));
        println!(
            "{:<10} {:<7} {:<5} {:>6} {:>6.1}% {:>6} {:>6.1}%",
            b.spec.name,
            b.spec.region,
            b.spec.zone,
            h,
            share(h, http_n),
            u,
            share(u, udp_n)
        );
    }
    let served = lab.served();
    let (served_http, served_udp): (u64, u64) = served.values().fold((0, 0), |(h, u), s| (h + s.http, u + s.udp));
    println!(
        "every request was answered; the backends' own counters say {served_http} HTTP and {served_udp} UDP requests served"
    );

    println!("\nthe per-CPU counters of the first VIP now:");
    match std::process::Command::new("bpftool")
        .args(["map", "lookup", "pinned"])
        .arg(pins.join("VIP_STATS"))
        .args(["key", "0", "0", "0", "0"])
        .output()
    {
        Ok(out) if out.status.success() => {
            print!("{}", indent(&String::from_utf8_lossy(&out.stdout)))
        }
        Ok(out) => println!("  (bpftool: {})", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => println!("  (bpftool not available: {e})"),
    }

    if opts.hold {
        println!("\nholding the lab up; press Ctrl-C to tear it down");
        while interrupted().is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("cleaning up the lab");
    drop(lb);
    drop(lab);
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
