//! `lb-bench`: what the XDP balancer costs, always as a ratio against a baseline measured in
//! the same run (plus the absolute numbers). Prints figures and asserts nothing about speed;
//! exits non-zero only when it cannot measure (not root, a section failed to set up).
//!
//! 1. Per-packet cost through BPF_PROG_TEST_RUN against `xdp_drop`:
//!    method A = one call with the kernel looping `repeat` times (its mean), used only where
//!    rerunning on the already rewritten buffer is the same work (existing dsr flows, passed
//!    packets, the baseline); method B = many calls with `repeat = 1` (interquartile mean of the
//!    kernel's per-call time), for new flows (a fresh client port each call) and existing nat flows
//!    (which rewrite addresses and ports, so a rerun would not match the flow any more).
//! 2. The shared flow table: new-flow and existing-flow cost at several fill levels.
//! 3. Maglev table build time.
//! 4. Throughput on a veth pair in driver mode: `xdp_lb` (an existing dsr flow, XDP_TX)
//!    against `xdp_mac_swap` (XDP_TX), traffic from BPF_PROG_RUN live frames on the peer.
//!
//! 5. The shared flow table across CPUs.
//! 6. Rate limits: per-packet cost with limits against the same VIP without, and the accepted
//!    rate at 1x, 2x and 10x a new-flow limit with every CPU sending.
//!
//! 7. Passive health signals: the cost of reporting a connection's answer, and the time from
//!    a refused connection to the ejection landing in the maps (a lab with `lb run`).
//!
//! 8. Active health checks of 2000 backends from one runtime, one of them silent.
//!
//! 9. DNS site failover: queries per second of a policy record under dnsperf, against
//!    gdnsd serving the same zone with a health-checked failover record (simplefo), both on
//!    loopback in the same run; and the time from a site's VIP going down to the first
//!    changed answer (two sites, `lb_tests::sites`).
//!
//! 10. Connection state tracking: section 1's cases on this tree's object and on the one of
//!     the revision before state tracking (`--baseline-rev`, default 1fbd7e7, built from
//!     git), side by side in one environment, measured in alternation.
//!
//! 11. Packet capture: the cost of capture off and on.
//!
//! 12. Scale: `lb run` with 1000 VIPs x 16 backends x 65537 slots against 100: start time,
//!     peak memory, and a one-backend reload against the same slots one syscall each.
//!
//! 13. Encapsulated dsr: new and existing flows of `ipip` and `gue` against `xdp_drop` and
//!     `dsr`.
//!
//! Usage: `lb-bench [--quick] [--only 1,2,3,4,5,6,7,8,9,10,11,12,13] [--baseline-rev REV]`.

mod across_cpus;
mod active_checks;
mod baseline;
mod capture;
mod common;
mod dns;
mod encap;
mod flow_table;
mod maglev_build;
mod per_packet;
mod rate_limits;
mod scale;
mod signals;
mod state_tracking;
mod throughput;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;

use common::FLOW_TABLE_SIZE;

struct Sizes {
    /// Method A: in-kernel repeat count.
    repeat: u32,
    /// Method B: separate calls per measurement.
    calls: usize,
    /// Section 2: fill levels of the flow table.
    fills: Vec<(String, u32)>,
    maglev_runs: usize,
    /// Section 4: target wall time of one generator run.
    tput_window: Duration,
    /// Section 10: the revision compared with, and the alternating rounds per case.
    baseline_rev: String,
    rounds: usize,
}

// ---------------------------------------------------------------------------------------

/// The namespaces' tags (PacketEnv names them `TAG-PID-N`).
const NETNS_TAGS: [&str; 8] =
    ["lbb-pkt", "lbb-lru", "lbb-tput", "lbb-cpu", "lbb-rate", "lbb-sig", "lbn-state", "lbb-cap"];

/// Deletes namespaces left by an lb-bench that was killed (a guard cannot run on SIGKILL or
/// an unhandled SIGINT): ours by name, and only when their process is gone.
fn sweep_stale_netns() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(_n), Some(pid), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if NETNS_TAGS.contains(&tag)
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let ok = std::process::Command::new("ip").args(["netns", "del", &name]).status().is_ok_and(|s| s.success());
            eprintln!("removed netns {name} left by an earlier lb-bench run{}", if ok { "" } else { " (failed)" });
        }
    }
}

type Section = fn(&Sizes) -> Result<()>;

fn main() -> ExitCode {
    let mut quick = false;
    let mut only: Vec<u32> = (1..=13).collect();
    let mut baseline_rev = baseline::DEFAULT_REV.to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let Some(list) = args.next() else {
                    eprintln!("--only needs a list such as 1,3");
                    return ExitCode::from(2);
                };
                only = list.split(',').filter_map(|s| s.trim().parse().ok()).collect();
            }
            "--baseline-rev" => {
                let Some(rev) = args.next() else {
                    eprintln!("--baseline-rev needs a git revision");
                    return ExitCode::from(2);
                };
                baseline_rev = rev;
            }
            "-h" | "--help" => {
                println!(
                    "usage: lb-bench [--quick] [--only 1,2,3,4,5,6,7,8,9,10,11,12,13] [--baseline-rev REV (default {})]\n sections: 1 per-packet cost, 2 flow table fill, 3 maglev build, 4 veth throughput, 5 flow table across CPUs,\n 6 rate limits (cost and accuracy), 7 passive health signals (cost, ejection latency),\n 8 active health checks at scale, 9 DNS site failover (qps vs gdnsd, time to a changed answer),\n 10 state tracking: section 1's cases against REV's eBPF object (built from git, cached under target/),\n 11 packet capture: cost off and on,\n 12 scale: 1000 VIPs x 16 backends, start, memory and a one-backend reload,\n 13 encapsulated dsr: ipip and gue flows vs xdp_drop and dsr",
                    baseline::DEFAULT_REV
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other}; see --help");
                return ExitCode::from(2);
            }
        }
    }
    if (only.iter().any(|s| [1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13].contains(s)))
        && !nix::unistd::Uid::effective().is_root()
    {
        eprintln!("lb-bench: sections 1, 2, 4 to 7, 9 to 13 need root (BPF, network namespaces); try --only 3");
        return ExitCode::from(2);
    }
    sweep_stale_netns();
    let sizes = if quick {
        Sizes {
            repeat: 50_000,
            calls: 5_000,
            fills: vec![("empty".into(), 0), ("100k".into(), 100_000)],
            maglev_runs: 5,
            tput_window: Duration::from_millis(200),
            baseline_rev,
            rounds: 16,
        }
    } else {
        Sizes {
            repeat: 200_000,
            calls: 20_000,
            fills: vec![
                ("empty".into(), 0),
                ("500k".into(), 500_000),
                ("full, then untracked".into(), FLOW_TABLE_SIZE + FLOW_TABLE_SIZE / 8),
            ],
            maglev_runs: 10,
            tput_window: Duration::from_millis(700),
            baseline_rev,
            rounds: 40,
        }
    };
    let sections: [(u32, &str, Section); 13] = [
        (1, "per-packet cost (BPF_PROG_TEST_RUN) vs xdp_drop", per_packet::per_packet),
        (2, "flow table (shared hash map) by fill level", flow_table::flow_table),
        (3, "Maglev table build", maglev_build::maglev_build),
        (4, "throughput, veth in driver mode, vs xdp_mac_swap", throughput::throughput),
        (5, "the shared flow table across CPUs", across_cpus::flows_across_cpus),
        (6, "rate limits: cost and accuracy", rate_limits::rate_limits),
        (7, "passive health signals: cost and ejection latency", signals::passive_signals),
        (8, "active health checks at scale", active_checks::active_checks),
        (9, "DNS site failover: qps vs gdnsd, time to a changed answer", dns::dns_failover),
        (10, "connection state tracking vs the revision before it", state_tracking::state_tracking),
        (11, "packet capture: cost off and on, vs xdp_drop", capture::capture_cost),
        (12, "scale: 1000 VIPs x 16 backends, start, memory, one-backend reload", scale::scale),
        (13, "encapsulated dsr: ipip and gue vs xdp_drop and dsr", encap::encap_cost),
    ];
    let total = Instant::now();
    let mut failed = 0;
    for (n, title, run) in sections {
        if !only.contains(&n) {
            continue;
        }
        println!("\n== {n}. {title} ==");
        let start = Instant::now();
        match run(&sizes) {
            Ok(()) => println!("[section {n}: {:.1} s]", start.elapsed().as_secs_f64()),
            Err(e) => {
                failed += 1;
                println!("section {n} could not measure: {e:#}");
            }
        }
    }
    println!("\ntotal {:.1} s", total.elapsed().as_secs_f64());
    if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
