//! 5. The shared flow table across CPUs.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::Sizes;
use crate::common::*;

/// New flows per second with one CPU creating them, then with every CPU at once, all into
/// the one shared flow table (and NAT table). The shared table is the design choice this
/// checks: per-CPU tables would avoid contention, but nat replies and ICMP errors can arrive
/// on any CPU and must find their flow, and RSS or ECMP changes move flows between CPUs.
pub fn flows_across_cpus(sizes: &Sizes) -> Result<()> {
    let per_thread = sizes.calls as u32 * 5;
    let cpus = std::thread::available_parallelism()?.get();
    let rows = on_thread("flows-across-cpus", move || -> Result<Vec<(usize, f64, f64)>> {
        let mut env = new_env("lbb-cpu")?;
        let ifindex = env.ifindex;
        with_pinned_lb(&mut env, "lbb-cpu", |pin| {
            let mut rows = Vec::new();
            for threads in [1, cpus] {
                let started = Instant::now();
                let kernel_ns = std::thread::scope(|scope| -> Result<Vec<f64>> {
                    let handles: Vec<_> = (0..threads)
                        // Threads inherit the netns of the thread that spawns them.
                        .map(|cpu| scope.spawn(move || new_flows_on_cpu(pin, cpu, threads, per_thread, ifindex)))
                        .collect();
                    handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?).collect()
                })?;
                let rate = (threads as u32 * per_thread) as f64 / started.elapsed().as_secs_f64();
                rows.push((threads, rate, kernel_ns.iter().sum::<f64>() / kernel_ns.len() as f64));
            }
            Ok(rows)
        })
    })?;
    println!("{:<8} {:>14} {:>18} {:>10}", "CPUs", "new flows/s", "kernel ns per SYN", "speedup");
    let single = rows[0].1;
    for (threads, rate, ns) in &rows {
        println!("{threads:<8} {rate:>14.0} {ns:>18.1} {:>9.2}x", rate / single);
    }
    println!(
        "(new dsr flows, {per_thread} per CPU, each worker pinned to its CPU and sending distinct clients, all into one shared\n BPF_MAP_TYPE_HASH; speedup = aggregate rate over the one-CPU rate, ideal {cpus}.00x)"
    );
    Ok(())
}

/// One worker of [`flows_across_cpus`]: `count` new flows through the pinned program, from
/// CPU `cpu`; returns the kernel's mean time per SYN.
fn new_flows_on_cpu(pin: &std::path::Path, cpu: usize, stride: usize, count: u32, ifindex: u32) -> Result<f64> {
    let program = pinned_on_cpu(pin, cpu)?;
    // Distinct clients per worker: interleave the sequence of fresh clients.
    let mut clients = FreshClients(cpu as u32);
    let mut total = Duration::ZERO;
    for _ in 0..count {
        let syn = clients.syn(VIP_DSR);
        clients.0 += stride as u32 - 1;
        let (verdict, took) = run_pinned(&program, &syn, ifindex)?;
        ensure!(verdict == XDP_TX, "new flow on cpu {cpu}: verdict {verdict}");
        total += took;
    }
    Ok(total.as_nanos() as f64 / count as f64)
}
