//! `cargo xtask demo`: a lab with 2 regions x 2 zones x 2 backends, the balancer in front
//! with an HTTP VIP (nat) and a UDP VIP (dsr), traffic from a client, and where it went.
//! Everything is removed at the end, also on failure.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Result;
use lb_tests::lab::{self, HTTP_PORT, Lab, LbProcess, UDP_PORT, VIP_V4, VipSpec, backends_across, http_get, tally, udp_request};

const HTTP_REQUESTS: usize = 400;
const UDP_REQUESTS: usize = 200;

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    println!("building the lab: a client, the balancer, 2 regions x 2 zones x 2 backends (network namespaces)");
    let lab = Lab::build("demo", backends_across(2, 2, 2), true)?;
    let all: Vec<(usize, u32)> = (0..lab.backends.len()).map(|i| (i, 1)).collect();
    let vip = IpAddr::V4(VIP_V4);
    let vips = [
        VipSpec::new("web", vip, HTTP_PORT, "tcp", "nat", all.clone()),
        VipSpec::new("game", vip, UDP_PORT, "udp", "dsr", all),
    ];
    let config = lab::lb_config(&lab, &vips);
    let config_path = std::env::temp_dir().join(format!("{}.toml", lab.prefix));
    println!("starting `lb run` in namespace {} (config: {}, kept for the demo's duration)", lab.lb.name(), config_path.display());
    let lb = LbProcess::start(&lab, &config)?;

    println!("sending {HTTP_REQUESTS} HTTP requests (nat, a new connection each) and {UDP_REQUESTS} UDP requests (dsr) to {vip}");
    let (http, udp) = lab.client.run(move || -> Result<_> {
        let http = (0..HTTP_REQUESTS).map(|_| http_get(SocketAddr::new(vip, HTTP_PORT))).collect::<Result<Vec<_>>>()?;
        let udp = (0..UDP_REQUESTS).map(|_| udp_request(SocketAddr::new(vip, UDP_PORT))).collect::<Result<Vec<_>>>()?;
        Ok((tally(http), tally(udp)))
    })??;

    println!("\n{:<10} {:<7} {:<5} {:>6} {:>7} {:>6} {:>7}", "backend", "region", "zone", "http", "share", "udp", "share");
    for b in &lab.backends {
        let (h, u) = (http.get(&b.spec.name).copied().unwrap_or(0), udp.get(&b.spec.name).copied().unwrap_or(0));
        println!(
            "{:<10} {:<7} {:<5} {:>6} {:>6.1}% {:>6} {:>6.1}%",
            b.spec.name,
            b.spec.region,
            b.spec.zone,
            h,
            100.0 * h as f64 / HTTP_REQUESTS as f64,
            u,
            100.0 * u as f64 / UDP_REQUESTS as f64
        );
    }
    let pins = lab.pin_dir();
    println!("\nevery request was answered. While a balancer runs, its maps can be read with bpftool, e.g.:");
    for map in ["VIPS", "BACKENDS", "VIP_STATS", "GLOBAL_STATS"] {
        println!("  bpftool map dump pinned {}/{map}", pins.display());
    }
    println!("\nhere are the counters of the first VIP now, one entry per CPU:");
    let out = std::process::Command::new("bpftool")
        .args(["map", "lookup", "pinned"])
        .arg(pins.join("VIP_STATS"))
        .args(["key", "0", "0", "0", "0"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    drop(lb);
    println!("cleaning up the lab");
    Ok(())
}
