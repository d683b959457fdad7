//! Rate limits end to end: real TCP connection attempts from a client namespace, through
//! `lb run` in the lab, at several times the configured rates, from every CPU.
//!
//! The accepted count is compared with what the bucket allows over the time the flood
//! actually took (burst + rate x elapsed, both measured in the same run), so a slow or busy
//! machine changes the expectation, not the verdict.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use lb_tests::lab::{
    CLIENT_V4, Flood, LINE_PORT, Lab, LbProcess, LineConnection, VIP_V4, VipSpec, backends_across, connect_flood,
    lb_config,
};

const FLOOD_TIME: Duration = Duration::from_secs(3);
/// The second client's address, next to [`CLIENT_V4`] in the client namespace.
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

/// A lab with four backends behind a nat VIP on the line port, whose `[[vip]]` table also
/// holds `limits`; the balancer runs it.
fn limited_lab(tag: &str, limits: &str) -> Result<(Lab, LbProcess)> {
    let lab = Lab::build(tag, backends_across(1, 2, 2), false)?;
    lab.client.ip(&["addr", "add", &format!("{OTHER_CLIENT}/16"), "dev", "eth0"])?;
    // Replies to the clients leave through XDP, which can't resolve a neighbour: the
    // balancer host learns a client's MAC only from that client's own ARP request, which
    // is sent from whichever of the two addresses talks first.
    let mac = lab.client.output(&["cat", "/sys/class/net/eth0/address"])?;
    for client in [CLIENT_V4, OTHER_CLIENT] {
        lab.lb.ip(&[
            "neigh",
            "replace",
            &client.to_string(),
            "lladdr",
            mac.trim(),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
    }
    let vip = VipSpec::new("line", IpAddr::V4(VIP_V4), LINE_PORT, "tcp", "nat", (0..4).map(|i| (i, 1)).collect());
    let config = lb_config(&lab, &[vip]).vip("line", limits);
    let lb = LbProcess::start(&lab, &config)?;
    Ok((lab, lb))
}

/// Floods from `source` on each CPU in `cpus` (together `rate` per second) and adds up.
fn flood(lab: &Lab, source: Ipv4Addr, rate: f64, cpus: &[usize]) -> Result<Flood> {
    let target = SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT);
    let senders = cpus
        .iter()
        .map(|&cpu| {
            let share = rate / cpus.len() as f64;
            lab.client.spawn(move || connect_flood(IpAddr::V4(source), target, share, FLOOD_TIME, Some(cpu)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total: Option<Flood> = None;
    for sender in senders {
        let f = sender.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        total = Some(match total {
            None => f,
            Some(t) => Flood {
                sent: t.sent + f.sent,
                connected: t.connected + f.connected,
                first_sent: t.first_sent.min(f.first_sent),
                last_sent: t.last_sent.max(f.last_sent),
            },
        });
    }
    total.ok_or_else(|| anyhow::anyhow!("no CPU to flood from"))
}

/// Asserts that `flood` got what a bucket of `rate` per second and `burst` admits over the
/// time the flood took, within 10%, and that it offered at least 3x that.
fn assert_admitted(what: &str, flood: &Flood, rate: f64, burst: f64) {
    let elapsed = flood.last_sent.duration_since(flood.first_sent).as_secs_f64();
    let allowed = burst + rate * elapsed;
    let got = flood.connected as f64;
    eprintln!(
        "{what}: {} attempts, {} connected over {elapsed:.2} s; the bucket allows {allowed:.0}",
        flood.sent, flood.connected
    );
    assert!(flood.sent as f64 >= 3.0 * allowed, "{what}: only {} attempts for {allowed:.0} allowed", flood.sent);
    assert!((got - allowed).abs() <= 0.1 * allowed, "{what}: {got} connected, allowed {allowed:.0} ± 10%");
}

/// The CPUs this process may run on (the flood uses every one of them).
fn cpus() -> Vec<usize> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("CPU affinity");
    (0..nix::sched::CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect()
}

#[test]
fn new_flow_limit_holds_on_every_cpu_and_spares_established_connections() -> Result<()> {
    let (lab, _lb) = limited_lab("rlvip", "new_flow_limit = { quota = 100, burst = 20 }")?;
    let cpus = cpus();
    ensure!(cpus.len() >= 2, "the test needs two CPUs to show the bucket is shared, found {cpus:?}");
    let target = SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT);

    // An established connection keeps talking through the flood.
    let mut established = lab.client.run(move || LineConnection::open(target))??;
    let done = Arc::new(AtomicBool::new(false));
    let talker = {
        let done = done.clone();
        std::thread::spawn(move || -> Result<u32> {
            let mut answers = 0;
            while !done.load(Ordering::Relaxed) {
                established.ask()?;
                answers += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(answers)
        })
    };
    let result = flood(&lab, CLIENT_V4, 500.0, &cpus);
    done.store(true, Ordering::Relaxed);
    let answers = talker.join().map_err(|_| anyhow::anyhow!("talker panicked"))??;
    let result = result?;
    assert_admitted("5x the VIP's new-flow limit", &result, 100.0, 20.0);
    assert!(answers >= 20, "the established connection answered only {answers} times during the flood");
    Ok(())
}

#[test]
fn source_limit_holds_a_flooding_client_while_another_is_served() -> Result<()> {
    // The VIP's own limit is well above what both sources may open together: a flooding
    // source's refused attempts must not use it up.
    let (lab, _lb) = limited_lab(
        "rlsrc",
        "source_limit = { quota = 60, burst = 10 }\nnew_flow_limit = { quota = 150, burst = 10 }",
    )?;
    let cpus = cpus();
    let polite = {
        let cpus = cpus.clone();
        let target = SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT);
        let cpu = *cpus.last().expect("a CPU");
        lab.client.spawn(move || connect_flood(IpAddr::V4(OTHER_CLIENT), target, 30.0, FLOOD_TIME, Some(cpu)))?
    };
    let flooding = flood(&lab, CLIENT_V4, 300.0, &cpus)?;
    let polite = polite.join().map_err(|_| anyhow::anyhow!("polite client panicked"))??;
    assert_admitted("5x the source limit", &flooding, 60.0, 10.0);
    assert_eq!(polite.connected, polite.sent, "the client under its source limit: every connection served");
    assert!(polite.sent >= 60, "the polite client sent only {}", polite.sent);
    Ok(())
}
