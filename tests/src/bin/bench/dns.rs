//! 9. DNS site failover.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use crate::Sizes;
use crate::common::{REPS, median_f64};

/// The zone both DNS servers serve: `www.example.test.` fails over from 10.100.0.1 (the
/// lab's VIP, up) to 10.100.0.2 (nobody: down), TTL 30.
fn dns_site_config(lab: &lb_tests::lab::Lab, port: u16) -> String {
    use lb_tests::lab::{HTTP_PORT, VIP_V4, VipSpec, lb_config};
    let vip = VipSpec::new("web", std::net::IpAddr::V4(VIP_V4), HTTP_PORT, "tcp", "nat", vec![(0, 1)]);
    let dns = format!(
        r#"[dns]
listen = ["127.0.0.1:{port}"]

[[dns.target]]
name = "site-a"
address = "10.100.0.1"
vip = "web"

[[dns.target]]
name = "site-b"
address = "10.100.0.2"
health_check = {{ type = "tcp", port = 80, interval = "2s" }}

[[dns.zone]]
origin = "example.test."
ns = ["ns1.example.test."]

[[dns.zone.record]]
name = "ns1"
type = "A"
data = "10.0.0.53"

[[dns.zone.policy]]
name = "www"
type = "A"
ttl = 30
primary = ["site-a"]
backup = [["site-b"]]
"#
    );
    lb_config(lab, &[vip]).merge(&dns).to_string()
}

/// gdnsd's config directory for the same zone: a simplefo record checked by tcp_connect.
fn gdnsd_config(dir: &std::path::Path, port: u16) -> Result<()> {
    std::fs::create_dir_all(dir.join("zones"))?;
    std::fs::write(
        dir.join("config"),
        format!(
            "options => {{\n  listen => [ 127.0.0.1:{port} ]\n  run_dir => {run}\n  state_dir => {run}\n}}\n\
             service_types => {{\n  web => {{ plugin => tcp_connect, port => 80, interval => 2, timeout => 1 }}\n}}\n\
             plugins => {{\n  simplefo => {{\n    www => {{ primary => 10.100.0.1, secondary => 10.100.0.2, service_types => [ web ] }}\n  }}\n}}\n",
            run = dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("zones").join("example.test"),
        "$TTL 3600\n@ SOA ns1 hostmaster 1 3600 600 604800 60\n@ NS ns1\nns1 A 10.0.0.53\nwww 30 DYNA simplefo!www\n",
    )?;
    Ok(())
}

/// A process this bench started, ended by its PID when dropped.
struct Started(std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time used so far by process `pid` (all its threads).
fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (in parentheses): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').context("malformed stat")?.1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("no CLK_TCK")? as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// One dnsperf run against a server.
struct DnsRun {
    qps: f64,
    lost: f64,
    /// The server's CPU time per answered query.
    cpu_per_query: Duration,
}

/// dnsperf against 127.0.0.1:`port` in `ns` for `seconds`, with the CPU time that the
/// server process `pid` spent meanwhile.
fn dnsperf(ns: &lb_tests::lab::Netns, port: u16, pid: u32, queries: &std::path::Path, seconds: u32) -> Result<DnsRun> {
    let cpu_before = process_cpu(pid)?;
    let out = ns.output(&[
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-d",
        &queries.display().to_string(),
        "-l",
        &seconds.to_string(),
        "-c",
        "16",
        "-T",
        "1",
    ])?;
    let field = |name: &str| -> Result<f64> {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .with_context(|| format!("no {name:?} in dnsperf's output:\n{out}"))?;
        let value = line.split(':').nth(1).and_then(|v| v.split_whitespace().next()).unwrap_or_default();
        value.parse().with_context(|| format!("{line:?}"))
    };
    let cpu = process_cpu(pid)?.saturating_sub(cpu_before);
    let sent = field("Queries sent")?;
    let lost = field("Queries lost")?;
    Ok(DnsRun {
        qps: field("Queries per second")?,
        lost: lost / sent.max(1.0),
        cpu_per_query: cpu.div_f64((sent - lost).max(1.0)),
    })
}

/// Waits until `dig` at 127.0.0.1:`port` in `ns` answers `www`.
fn wait_for_dns(ns: &lb_tests::lab::Netns, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = ns.output(&[
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "www.example.test",
            "A",
        ]);
        if out.as_ref().is_ok_and(|o| o.trim() == "10.100.0.1") {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "no answer for www from 127.0.0.1:{port}: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn dns_failover(sizes: &Sizes) -> Result<()> {
    use lb_tests::lab::{Lab, LbProcess, backends_across, require_tool};
    for (tool, package) in [("dnsperf", "dnsperf"), ("gdnsd", "gdnsd"), ("dig", "bind9-dnsutils")] {
        require_tool(tool, package);
    }
    let (lb_port, gdnsd_port) = (5300, 5301);
    let lab = Lab::build("lbb-dns", backends_across(1, 1, 1), false)?;
    let lb = LbProcess::start(&lab, &dns_site_config(&lab, lb_port))?;
    let dir = std::env::temp_dir().join(format!("{}-gdnsd", lab.prefix));
    gdnsd_config(&dir, gdnsd_port)?;
    let gdnsd = std::process::Command::new("ip")
        .args(["netns", "exec", lab.lb.name(), "gdnsd", "-c"])
        .arg(&dir)
        .arg("start")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting gdnsd")?;
    let gdnsd = Started(gdnsd);
    let queries = dir.join("queries");
    std::fs::write(&queries, "www.example.test A\n")?;
    let measured = (|| -> Result<()> {
        wait_for_dns(&lab.lb, lb_port)?;
        wait_for_dns(&lab.lb, gdnsd_port)?;
        let seconds = if sizes.repeat < 200_000 { 2 } else { 5 };
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..REPS {
            ours.push(dnsperf(&lab.lb, lb_port, lb.pid(), &queries, seconds)?);
            theirs.push(dnsperf(&lab.lb, gdnsd_port, gdnsd.0.id(), &queries, seconds)?);
        }
        let qps = |v: &[DnsRun]| median_f64(&v.iter().map(|r| r.qps).collect::<Vec<_>>());
        let cpu = |v: &[DnsRun]| median_f64(&v.iter().map(|r| r.cpu_per_query.as_secs_f64() * 1e6).collect::<Vec<_>>());
        let lost = |v: &[DnsRun]| v.iter().map(|r| r.lost).fold(0.0, f64::max) * 100.0;
        let (q_ours, q_theirs) = (qps(&ours), qps(&theirs));
        println!(
            "policy record www.example.test A under dnsperf (16 sockets, 1 thread, {seconds} s x {REPS} alternating, loopback, 2 CPUs shared with dnsperf), medians:"
        );
        for (who, runs) in [("lb run (hickory-server)", &ours), ("gdnsd 3.8 (simplefo)", &theirs)] {
            println!(
                "  {who:<24} {:>9.0} queries/s, {:.2} us of server CPU per query (lost at most {:.2}%)",
                qps(runs),
                cpu(runs),
                lost(runs)
            );
        }
        println!(
            "  ratio lb / gdnsd: {:.2}x the queries per second (target >= 1.0x: {}); {:.2}x the CPU per query",
            q_ours / q_theirs,
            if q_ours >= q_theirs { "yes" } else { "NO" },
            cpu(&ours) / cpu(&theirs)
        );
        Ok(())
    })();
    drop(gdnsd);
    let _ = std::fs::remove_dir_all(&dir);
    measured?;
    drop(lab);
    time_to_changed_answer(sizes)
}

/// Two sites; site A's VIP dies (its backends stop) and heals, several times: the time
/// from the death to the first answer naming site B, at each site's server.
fn time_to_changed_answer(sizes: &Sizes) -> Result<()> {
    use lb_tests::lab::VIP_V4;
    use lb_tests::sites::{SITE_B_VIP, Timing, TwoSites};
    let timing = Timing { interval: Duration::from_millis(500), unhealthy_threshold: 2, healthy_threshold: 2, ttl: 1 };
    let mut sites = TwoSites::build("lbb-site", 1, timing)?;
    let rounds = if sizes.repeat < 200_000 { 2 } else { 5 };
    let mut moved = Vec::new();
    for _ in 0..rounds {
        let wait_for = |sites: &TwoSites, want: std::net::Ipv4Addr| -> Result<[f64; 2]> {
            let started = Instant::now();
            let mut at: [Option<f64>; 2] = [None, None];
            while at.iter().any(Option::is_none) {
                let (a, b) = sites.answers()?;
                for (slot, answer) in at.iter_mut().zip([a, b]) {
                    if slot.is_none() && answer == [want.to_string()] {
                        *slot = Some(started.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                ensure!(started.elapsed() < Duration::from_secs(30), "answers did not become {want} within 30 s");
            }
            Ok([at[0].unwrap_or_default(), at[1].unwrap_or_default()])
        };
        sites.site_a_backends(false)?;
        moved.push(wait_for(&sites, SITE_B_VIP)?);
        sites.site_a_backends(true)?;
        wait_for(&sites, VIP_V4)?;
    }
    let at = |i: usize| {
        let mut v: Vec<f64> = moved.iter().map(|m| m[i]).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let bound = timing.detection_bound().as_secs_f64() * 1000.0;
    println!(
        "\nsite A's VIP down -> first answer naming site B ({rounds} rounds; checks every {} ms, unhealthy_threshold {}, quorum 2 of 2):",
        timing.interval.as_millis(),
        timing.unhealthy_threshold
    );
    for (i, server) in ["site A's server", "site B's server"].iter().enumerate() {
        let (median, max) = at(i);
        println!("  {server}: median {median:.0} ms, max {max:.0} ms");
    }
    println!(
        "  bound interval x unhealthy_threshold + one peer exchange = {bound:.0} ms; clients see it after at most one TTL more ({} s)",
        timing.ttl
    );
    Ok(())
}
