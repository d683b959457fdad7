//! 6. Rate limits.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_common::PROG_LB;
use lb_tests::packet_env::PacketEnv;

use crate::Sizes;
use crate::common::*;

/// Section 6 adds dsr TCP VIPs on port 80 to [`bench_config`]'s, with the same backends:
/// two with limits so generous that everything is admitted (what enforcing costs): every
/// limit, and only the VIP-wide ones (new flows, packets); one limited for real (how
/// accurate it is).
const VIP_ALL_LIMITS: [u8; 4] = [10, 100, 0, 3];
const VIP_WIDE_LIMITS: [u8; 4] = [10, 100, 0, 4];
const VIP_ACCURACY: [u8; 4] = [10, 100, 0, 5];
/// New flows per second admitted by `VIP_ACCURACY`, and its burst.
const ACCURACY_RATE: f64 = 5000.0;
const ACCURACY_BURST: f64 = 50.0;
const ACCURACY_WINDOW: Duration = Duration::from_secs(2);

fn rate_limit_config() -> String {
    let generous = "{ quota = 20000000, burst = 20000000 }";
    let mut c = bench_config();
    for (name, addr, limits) in [
        (
            "all-limits",
            VIP_ALL_LIMITS,
            format!("new_flow_limit = {generous}\npacket_limit = {generous}\nsource_limit = {generous}"),
        ),
        ("vip-wide-limits", VIP_WIDE_LIMITS, format!("new_flow_limit = {generous}\npacket_limit = {generous}")),
        ("accuracy", VIP_ACCURACY, format!("new_flow_limit = {{ quota = {ACCURACY_RATE}, burst = {ACCURACY_BURST} }}")),
    ] {
        let [a, b, c3, d] = addr;
        c += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{a}.{b}.{c3}.{d}\"\nport = 80\nmode = \"dsr\"\n{limits}\n"
        );
        for backend in 0..BACKENDS_PER_VIP {
            c += &format!("[[vip.backend]]\naddress = \"10.0.1.{}\"\n", 11 + backend);
        }
    }
    c
}

/// (case, method, ns with limits, ns without).
type RateRow = (&'static str, &'static str, f64, f64);

/// (multiple of the rate offered, new flows sent, admitted, allowed).
type AccuracyRow = (f64, u64, u64, f64);

pub fn rate_limits(sizes: &Sizes) -> Result<()> {
    let (repeat, calls) = (sizes.repeat, sizes.calls);
    let cpus = std::thread::available_parallelism()?.get();
    let (rows, accuracy) = on_thread("rate-limits", move || -> Result<(Vec<RateRow>, Vec<AccuracyRow>)> {
        let n = neighbours();
        let refs: Vec<&str> = n.iter().map(String::as_str).collect();
        let mut env = PacketEnv::new("lbb-rate", &rate_limit_config(), &refs)?;
        let mut rows = Vec::new();
        let limited = tcp4(CLIENT4, VIP_ALL_LIMITS, 40000, 80, false);
        let plain = tcp4(CLIENT4, VIP_DSR, 40000, 80, false);
        for pkt in [&limited, &plain] {
            ensure!(env.run(PROG_LB, pkt)?.0 == XDP_TX, "the flow's first packet was not forwarded");
        }
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            without.push(in_kernel(&mut env, PROG_LB, &plain, repeat, XDP_TX)?);
            with.push(in_kernel(&mut env, PROG_LB, &limited, repeat, XDP_TX)?);
        }
        rows.push(("existing: TCP ACK, every limit", "A", median_f64(&with), median_f64(&without)));
        let mut clients = FreshClients::default();
        for (name, vip) in [
            ("new flow: TCP SYN, VIP-wide limits", VIP_WIDE_LIMITS),
            ("new flow: TCP SYN, + per-source limit", VIP_ALL_LIMITS),
        ] {
            let (mut with, mut without) = (Vec::new(), Vec::new());
            for _ in 0..REPS {
                without.push(per_call_exact(&mut env, PROG_LB, calls, XDP_TX, || clients.syn(VIP_DSR))?);
                with.push(per_call_exact(&mut env, PROG_LB, calls, XDP_TX, || clients.syn(vip))?);
            }
            rows.push((name, "B new", median_f64(&with), median_f64(&without)));
        }

        let ifindex = env.ifindex;
        let first_client = clients.0;
        let accuracy = with_pinned_lb(&mut env, "lbb-rate", |pin| {
            let mut results = Vec::new();
            for (run, multiple) in [1.0, 2.0, 10.0].into_iter().enumerate() {
                // Let the bucket fill up again (its burst takes 10 ms).
                std::thread::sleep(Duration::from_millis(100));
                let offered = ACCURACY_RATE * multiple;
                let start_client = first_client + run as u32 * 10_000_000;
                let floods = std::thread::scope(|scope| -> Result<Vec<PacedRun>> {
                    let workers: Vec<_> = (0..cpus)
                        .map(|cpu| {
                            scope.spawn(move || {
                                paced_new_flows(pin, cpu, cpus, start_client, offered / cpus as f64, ifindex)
                            })
                        })
                        .collect();
                    workers.into_iter().map(|w| w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?).collect()
                })?;
                let sent: u64 = floods.iter().map(|f| f.sent).sum();
                let admitted: u64 = floods.iter().map(|f| f.admitted).sum();
                let first = floods.iter().map(|f| f.first).min().context("no worker")?;
                let last = floods.iter().map(|f| f.last).max().context("no worker")?;
                let allowed =
                    (ACCURACY_BURST + ACCURACY_RATE * last.duration_since(first).as_secs_f64()).min(sent as f64);
                results.push((multiple, sent, admitted, allowed));
            }
            Ok(results)
        })?;
        Ok((rows, accuracy))
    })?;
    println!(
        "{:<44} {:<7} {:>10} {:>13} {:>7} {:>7}  within",
        "case (dsr VIP)", "method", "limits ns", "no limits ns", "ratio", "target"
    );
    for (name, method, with, without) in rows {
        let ratio = with / without;
        println!(
            "{name:<44} {method:<7} {with:>10.1} {without:>13.1} {ratio:>6.2}x {:>6.2}x  {}",
            1.15,
            if ratio <= 1.15 { "yes" } else { "NO" }
        );
    }
    println!(
        "(the same VIP setup with and without limits whose buckets always have tokens, median of {REPS} runs; A = in-kernel\n loop of {repeat} runs, B = interquartile mean of {calls} single-run calls, new clients each)"
    );
    println!(
        "\n{:<10} {:>12} {:>10} {:>10} {:>10}  within 10%",
        "offered", "new flows", "admitted", "allowed", "accuracy"
    );
    for (multiple, sent, admitted, allowed) in accuracy {
        let accuracy = admitted as f64 / allowed;
        println!(
            "{:<10} {sent:>12} {admitted:>10} {allowed:>10.0} {:>9.3}x  {}",
            format!("{multiple}x"),
            accuracy,
            if (accuracy - 1.0).abs() <= 0.1 { "yes" } else { "NO" }
        );
    }
    println!(
        "(new_flow_limit {ACCURACY_RATE}/s, burst {ACCURACY_BURST}: SYNs of new flows from {cpus} CPUs at once, each pinned and paced, for {} s;\n allowed = burst + rate x the time the SYNs took, or all of them when fewer were offered; one bucket shared by\n every CPU, updated with compare-and-swap)",
        ACCURACY_WINDOW.as_secs()
    );
    Ok(())
}

/// What one worker of the accuracy measurement sent and saw admitted.
struct PacedRun {
    sent: u64,
    admitted: u64,
    first: Instant,
    last: Instant,
}

/// Sends SYNs of new flows to `VIP_ACCURACY` through the pinned program from CPU `cpu` at
/// `rate` per second for [`ACCURACY_WINDOW`], clients `first_client + cpu + k * stride`.
fn paced_new_flows(
    pin: &std::path::Path,
    cpu: usize,
    stride: usize,
    first_client: u32,
    rate: f64,
    ifindex: u32,
) -> Result<PacedRun> {
    let program = pinned_on_cpu(pin, cpu)?;
    let mut clients = FreshClients(first_client + cpu as u32);
    let first = Instant::now();
    let (mut sent, mut admitted, mut last) = (0u64, 0u64, first);
    loop {
        let due = first + Duration::from_secs_f64(sent as f64 / rate);
        if due.duration_since(first) >= ACCURACY_WINDOW {
            break;
        }
        let now = Instant::now();
        if now < due {
            // Busy-wait: sleeps are too coarse for gaps of tens of microseconds.
            std::hint::spin_loop();
            continue;
        }
        let syn = clients.syn(VIP_ACCURACY);
        clients.0 += stride as u32 - 1;
        let (verdict, _) = run_pinned(&program, &syn, ifindex)?;
        ensure!(verdict == XDP_TX || verdict == XDP_DROP, "accuracy run on cpu {cpu}: verdict {verdict}");
        admitted += (verdict == XDP_TX) as u64;
        sent += 1;
        last = now;
    }
    Ok(PacedRun { sent, admitted, first, last })
}
