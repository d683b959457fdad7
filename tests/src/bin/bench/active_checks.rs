//! 8. Active health checks at scale.

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::Sizes;

/// Backends checked at once, each a loopback HTTP server, plus one that never answers.
const CHECKED_BACKENDS: usize = 2000;
const CHECK_RUN: Duration = Duration::from_secs(6);

/// The controller's active checks (`probe::Prober`) against thousands of backends on one
/// runtime: whether every backend is checked on its own timer, whether a silent backend
/// delays the others, and what it costs in CPU.
pub fn active_checks(_: &Sizes) -> Result<()> {
    use lb_userspace::backends::probe::{Prober, Target};
    use lb_userspace::config::{HealthCheckConfig, HealthCheckKind, StatusRange};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let check = HealthCheckConfig {
        kind: HealthCheckKind::Http,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        jitter: Duration::from_millis(100),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
        port: None,
        path: "/healthz".into(),
        host: None,
        expected_statuses: vec![StatusRange { from: 200, to: 299 }],
    };
    let (results, cpu) = runtime.block_on(async move {
        let mut targets = Vec::new();
        for i in 0..=CHECKED_BACKENDS {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            // The last one accepts and reads, but never answers.
            let silent = i == CHECKED_BACKENDS;
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 512];
                        let _ = stream.read(&mut buf).await;
                        if silent {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
                    });
                }
            });
            targets.push(Target { key: (format!("b{i}"), addr), check: check.clone(), through: None });
        }
        let silent = targets.last().map(|t| t.key.1).context("no targets")?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut prober = Prober::new(tx);
        let cpu_before = cpu_time()?;
        let started = tokio::time::Instant::now();
        prober.set_targets(targets);
        let mut seen: std::collections::BTreeMap<std::net::SocketAddr, Vec<(Duration, bool)>> = Default::default();
        while let Ok(Some(result)) = tokio::time::timeout_at(started + CHECK_RUN, rx.recv()).await {
            seen.entry(result.key.1).or_default().push((started.elapsed(), result.outcome.is_ok()));
        }
        let cpu = cpu_time()? - cpu_before;
        drop(prober);
        anyhow::Ok(((seen, silent), cpu))
    })?;
    let (seen, silent) = results;
    let healthy: Vec<&Vec<(Duration, bool)>> = seen.iter().filter(|(a, _)| **a != silent).map(|(_, v)| v).collect();
    let passed: usize = healthy.iter().map(|v| v.iter().filter(|(_, ok)| *ok).count()).sum();
    let failed_healthy: usize = healthy.iter().map(|v| v.iter().filter(|(_, ok)| !ok).count()).sum();
    let mut counts: Vec<usize> = healthy.iter().map(|v| v.len()).collect();
    counts.sort_unstable();
    // From the second result on, a check's start follows the previous one's by interval
    // plus up to the jitter; the largest gap shows whether any backend was held up.
    let max_gap =
        healthy.iter().flat_map(|v| v.windows(2).map(|w| w[1].0.saturating_sub(w[0].0))).max().unwrap_or_default();
    let silent_results = seen.get(&silent).map(Vec::as_slice).unwrap_or_default();
    println!(
        "{CHECKED_BACKENDS} HTTP backends + 1 that never answers, interval 1 s, jitter 100 ms, timeout 500 ms, for {} s:",
        CHECK_RUN.as_secs()
    );
    println!(
        "  checks done: {} ({:.0}/s); backends checked: {} of {CHECKED_BACKENDS}; checks per backend min {} median {} max {}",
        passed + failed_healthy,
        (passed + failed_healthy) as f64 / CHECK_RUN.as_secs_f64(),
        healthy.len(),
        counts.first().copied().unwrap_or(0),
        counts.get(counts.len() / 2).copied().unwrap_or(0),
        counts.last().copied().unwrap_or(0)
    );
    println!(
        "  healthy backends' checks failed: {failed_healthy}; largest gap between two checks of one backend: {:.0} ms (interval + jitter = 1100 ms)",
        max_gap.as_secs_f64() * 1000.0
    );
    println!(
        "  the silent backend: {} checks, {} failed (timed out) meanwhile",
        silent_results.len(),
        silent_results.iter().filter(|(_, ok)| !ok).count()
    );
    println!(
        "  CPU: {:.2} s for {:.0} checks = {:.1} us per check ({:.1}% of one core at this rate)",
        cpu.as_secs_f64(),
        (passed + failed_healthy) as f64,
        cpu.as_secs_f64() * 1e6 / (passed + failed_healthy).max(1) as f64,
        100.0 * cpu.as_secs_f64() / CHECK_RUN.as_secs_f64()
    );
    println!("  (the servers run in the same process, so their share is counted too)");
    Ok(())
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Result<Duration> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    Ok(tv(usage.user_time()) + tv(usage.system_time()))
}
