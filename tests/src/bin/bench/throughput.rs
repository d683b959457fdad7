//! 4. Throughput on veth in driver mode.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, XdpMode};
use lb_common::{GEN_FLOWS, GEN_FLOWS_FIRST_PORT, PROG_DROP, PROG_GEN_FLOWS, PROG_LB, PROG_MAC_SWAP};
use lb_tests::packet_env::{IFACE, LB_MAC, PEER, PacketEnv, neighbour_mac, xdp_context};

use crate::Sizes;
use crate::common::*;

/// The veth counters of `iface` (`ethtool -S`), in the calling thread's netns.
fn ethtool_stats(iface: &str) -> Result<std::collections::BTreeMap<String, u64>> {
    let out = std::process::Command::new("ethtool").args(["-S", iface]).output().context("running ethtool")?;
    ensure!(out.status.success(), "ethtool -S {iface}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

fn delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    key: &str,
) -> u64 {
    after.get(key).copied().unwrap_or(0).saturating_sub(before.get(key).copied().unwrap_or(0))
}

struct TputRun {
    /// Frames B's program processed per second of generator wall time.
    pps: f64,
    generated: u64,
    b_xdp: u64,
    b_tx: u64,
    b_tx_err: u64,
    a_back: u64,
    kernel_ns_per_frame: f64,
}

/// Sends `frames` live frames from the generator side (`generator`, `xdp_mac_swap` or
/// `xdp_gen_flows`, returning XDP_TX on `gen_ifindex`), counting what arrives at
/// `rx_iface`'s XDP program.
fn live_run(
    env: &mut PacketEnv,
    generator: &str,
    frame: &[u8],
    gen_ifindex: u32,
    gen_iface: &str,
    rx_iface: &str,
    frames: u32,
) -> Result<TputRun> {
    let ctx_bytes = xdp_context(frame.len(), gen_ifindex);
    let (b0, a0) = (ethtool_stats(rx_iface)?, ethtool_stats(gen_iface)?);
    let start = Instant::now();
    let result = env.dataplane.program(generator)?.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx_bytes),
        repeat: frames,
        attrs: TestRunAttrs::new().xdp_live_frames(64),
        ..TestRunOptions::new()
    });
    let wall = start.elapsed();
    let result = result.context("BPF_PROG_RUN with BPF_F_TEST_XDP_LIVE_FRAMES")?;
    // Let the last NAPI polls finish before reading the counters.
    std::thread::sleep(Duration::from_millis(20));
    let (b1, a1) = (ethtool_stats(rx_iface)?, ethtool_stats(gen_iface)?);
    let b_xdp = delta(&b0, &b1, "rx_queue_0_xdp_packets");
    Ok(TputRun {
        pps: b_xdp as f64 / wall.as_secs_f64(),
        generated: delta(&a0, &a1, "tx_queue_0_xdp_xmit"),
        b_xdp,
        b_tx: delta(&b0, &b1, "rx_queue_0_xdp_tx"),
        b_tx_err: delta(&b0, &b1, "rx_queue_0_xdp_tx_errors") + delta(&b0, &b1, "rx_queue_0_drops"),
        a_back: delta(&a0, &a1, "rx_queue_0_xdp_packets"),
        kernel_ns_per_frame: result.duration.as_nanos() as f64,
    })
}

/// What the generator sends: one flow (`xdp_mac_swap` reflects the same frame), or
/// `GEN_FLOWS` (`xdp_gen_flows` gives each frame a random source port of them).
struct Case {
    name: &'static str,
    generator: &'static str,
    flows: u32,
    target: f64,
}

const CASES: [Case; 2] = [
    Case { name: "1 flow", generator: PROG_MAC_SWAP, flows: 1, target: 0.85 },
    Case { name: "10k flows", generator: PROG_GEN_FLOWS, flows: GEN_FLOWS, target: 0.75 },
];

/// (case, program on B, run) triples, frames per run, the counters ethtool shows.
type TputRuns = (Vec<(&'static str, String, TputRun)>, u32, String);

/// Creates the dsr flows the generator of `case` sends, before timing.
fn open_flows(env: &mut PacketEnv, case: &Case) -> Result<()> {
    let first = if case.flows == 1 { ONE_FLOW_PORT } else { GEN_FLOWS_FIRST_PORT };
    for port in first..first + case.flows as u16 {
        let (v, out) = env.run(PROG_LB, &tcp4(CLIENT4, VIP_DSR, port, 80, false))?;
        ensure!(v == XDP_TX, "dsr flow setup (port {port}): verdict {v}");
        ensure!(out[..5] == neighbour_mac(0)[..5] && out[6..12] == LB_MAC, "dsr output MACs unexpected");
    }
    Ok(())
}

/// The source port of the one-flow case's frame.
const ONE_FLOW_PORT: u16 = 40001;

pub fn throughput(sizes: &Sizes) -> Result<()> {
    let window = sizes.tput_window;
    let (runs, frames, counters) = on_thread("throughput", move || -> Result<TputRuns> {
        // fx0 (B) is the balancer's wire with its neighbours; fx1 (A), its veth peer, is
        // the traffic generator.
        let mut env = new_env("lbb-tput")?;
        let (rx_iface, gen_iface) = (IFACE, PEER);
        let gen_ifindex = nix::net::if_::if_nametoindex(gen_iface).context("generator ifindex")?;
        let counters = ethtool_stats(rx_iface)?.keys().cloned().collect::<Vec<_>>().join(", ");
        // A TCP segment of a dsr flow (the generators vary its source port or not).
        let frame = tcp4(CLIENT4, VIP_DSR, ONE_FLOW_PORT, 80, false);
        for case in &CASES {
            open_flows(&mut env, case)?;
        }

        // XDP_TX on a veth needs an XDP program on its peer: xdp_drop on the generator side
        // takes the frames B sends back.
        env.dataplane.program(PROG_DROP)?.attach(gen_iface, XdpMode::Driver).context("xdp_drop on fx1 (driver)")?;
        let attach = |env: &mut PacketEnv, prog: &str| -> Result<aya::programs::xdp::XdpLinkId> {
            env.dataplane
                .program(prog)?
                .attach(rx_iface, XdpMode::Driver)
                .with_context(|| format!("{prog} on {rx_iface} (driver)"))
        };

        // Calibrate the frame count to the window with the baseline.
        let link = attach(&mut env, PROG_MAC_SWAP)?;
        let probe = live_run(&mut env, PROG_MAC_SWAP, &frame, gen_ifindex, gen_iface, rx_iface, 200_000)?;
        ensure!(probe.b_xdp > 0, "no frame reached {rx_iface}'s XDP program (generated {})", probe.generated);
        env.dataplane.program(PROG_MAC_SWAP)?.detach(link)?;
        let frames = ((probe.pps * window.as_secs_f64()) as u32).clamp(200_000, 50_000_000) / 64 * 64;

        let mut runs = Vec::new();
        for _ in 0..REPS {
            for case in &CASES {
                for prog in [PROG_MAC_SWAP, PROG_LB] {
                    let link = attach(&mut env, prog)?;
                    let before = vip_traffic(&env);
                    let run = live_run(&mut env, case.generator, &frame, gen_ifindex, gen_iface, rx_iface, frames);
                    env.dataplane.program(prog)?.detach(link)?;
                    let run = run?;
                    if prog == PROG_LB {
                        // Every frame must have been an existing flow of the VIP.
                        let after = vip_traffic(&env);
                        let (packets, new_flows) = (after.0 - before.0, after.1 - before.1);
                        ensure!(
                            new_flows == 0 && packets + 16 >= run.b_xdp,
                            "{}: xdp_lb saw {packets} VIP packets and {new_flows} new flows for {} frames",
                            case.name,
                            run.b_xdp
                        );
                    }
                    runs.push((case.name, prog.to_owned(), run));
                }
            }
        }
        Ok((runs, frames, counters))
    })?;
    println!("veth counters on the receiving side: {counters}");
    println!(
        "{:<10} {:<14} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>9}",
        "flows", "program on B", "Mpps", "generated", "B xdp", "B xdp_tx", "B err", "back at A", "ns/frame"
    );
    for (case, prog, r) in &runs {
        println!(
            "{case:<10} {prog:<14} {:>10.3} {:>10} {:>10} {:>10} {:>8} {:>10} {:>9.1}",
            r.pps / 1e6,
            r.generated,
            r.b_xdp,
            r.b_tx,
            r.b_tx_err,
            r.a_back,
            r.kernel_ns_per_frame
        );
    }
    for case in &CASES {
        let median_of = |name: &str| {
            median_f64(
                &runs
                    .iter()
                    .filter(|(c, p, _)| *c == case.name && p == name)
                    .map(|(_, _, r)| r.pps)
                    .collect::<Vec<_>>(),
            )
        };
        let (base, lb) = (median_of(PROG_MAC_SWAP), median_of(PROG_LB));
        let ratio = lb / base;
        println!(
            "median, {}: {PROG_MAC_SWAP} {:.3} Mpps, {PROG_LB} (existing dsr flows) {:.3} Mpps, ratio {:.2}x (target >= {:.2}x: {})",
            case.name,
            base / 1e6,
            lb / 1e6,
            ratio,
            case.target,
            if ratio >= case.target { "yes" } else { "NO" }
        );
    }
    println!(
        "({frames} live frames of {FRAME_LEN} bytes per run, batch 64; B = fx0 (driver mode), A = its peer fx1 with xdp_drop (driver\n mode) for B's XDP_TX; generator on fx1, run with BPF_F_TEST_XDP_LIVE_FRAMES: xdp_mac_swap (XDP_TX) for 1 flow,\n xdp_gen_flows (the same, with a random one of {GEN_FLOWS} TCP source ports) for 10k flows; Mpps = B's\n rx_queue_0_xdp_packets / generator wall time; generator, B and A all run on the generating CPU (one core end to end);\n ns/frame = the kernel's time per generated frame. xdp_lb runs checked: all frames hit existing flows, 0 new flows)"
    );
    Ok(())
}
