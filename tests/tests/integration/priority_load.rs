//! Envoy's priority load end to end: `lb run` in the lab with 4 backends in the
//! balancer's zone (level 0) and 4 in another zone of its region (level 1). As local
//! backends fail their active checks, new connections spill over to level 1 by the
//! table of Envoy's priority levels (overprovisioning factor 1.4), and come back when
//! they heal. Connections are counted by what each backend's own server answered.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, ensure};
use lb_tests::lab::{LINE_PORT, Lab, LbProcess, LineConnection, VIP_V4, VipSpec, backends_across, lb_config};

const DETECTION_WAIT: Duration = Duration::from_secs(20);
const CONNECTIONS: usize = 1000;
/// The largest gap allowed between the measured share of a level and the table's, in
/// points: 1000 connections on a 70/30 split have a standard deviation of 1.45 points.
const TOLERANCE: f64 = 5.0;

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT)
}

/// Waits until `needle` has been logged `times` times in all, then for the table sync
/// that follows the last one.
fn wait_for_nth(lb: &mut LbProcess, needle: &str, times: usize) -> Result<()> {
    let count = |lb: &mut LbProcess| lb.log().iter().filter(|l| l.contains(needle)).count();
    while count(lb) < times {
        lb.wait_for(needle, DETECTION_WAIT)?;
    }
    let at = lb.log().iter().rposition(|l| l.contains(needle)).expect("counted above");
    if !lb.log()[at..].iter().any(|l| l.contains("tables synced")) {
        lb.wait_for("tables synced", DETECTION_WAIT)?;
    }
    Ok(())
}

/// Lines each backend's server answered so far, by backend name.
fn served(lab: &Lab) -> BTreeMap<String, u64> {
    lab.served().into_iter().map(|(name, s)| (name, s.line)).collect()
}

/// Opens `CONNECTIONS` new connections one after the other, each asking once, and
/// returns the percent of them each zone's backends answered (by their own counts).
fn zone_shares(lab: &Lab) -> Result<BTreeMap<String, f64>> {
    let before = served(lab);
    let failed = lab
        .client
        .run(|| (0..CONNECTIONS).filter(|_| LineConnection::open(vip()).and_then(|mut c| c.ask()).is_err()).count())?;
    ensure!(failed == 0, "{failed} of {CONNECTIONS} connections failed");
    let mut by_zone = BTreeMap::new();
    for (name, lines) in served(lab) {
        let zone = name.split('-').nth(1).expect("names are rR-zZ-bB").to_owned();
        *by_zone.entry(zone).or_insert(0) += lines - before.get(&name).copied().unwrap_or(0);
    }
    let total: u64 = by_zone.values().sum();
    ensure!(total == CONNECTIONS as u64, "the backends answered {total} lines for {CONNECTIONS} connections");
    Ok(by_zone.into_iter().map(|(zone, n)| (zone, 100.0 * n as f64 / total as f64)).collect())
}

/// Asserts the local zone (z1) took `local` percent of new connections and z2 the rest,
/// within [`TOLERANCE`].
fn assert_split(lab: &Lab, local: f64) -> Result<()> {
    let shares = zone_shares(lab)?;
    let share = |zone: &str| shares.get(zone).copied().unwrap_or(0.0);
    ensure!(
        (share("z1") - local).abs() <= TOLERANCE && (share("z2") - (100.0 - local)).abs() <= TOLERANCE,
        "expected {local}% local and {}% on level 1, got {shares:?}",
        100.0 - local
    );
    // Shown with --nocapture: the measured split, for the README's figures.
    eprintln!("expected {local}% local: measured {shares:?}");
    Ok(())
}

#[test]
fn failing_local_backends_spill_over_to_the_next_level_by_envoys_table() -> Result<()> {
    // r1-z1-b1..4 (level 0), r1-z2-b1..4 (level 1).
    let mut lab = Lab::build("prload", backends_across(1, 2, 4), false)?;
    let vip = VipSpec::new("line", IpAddr::V4(VIP_V4), LINE_PORT, "tcp", "nat", (0..8).map(|i| (i, 1)).collect());
    let check = "health_check = { type = \"tcp\", interval = \"300ms\", timeout = \"200ms\", unhealthy_threshold = 2, healthy_threshold = 2 }";
    let config = lb_config(&lab, &[vip]).balancer("region = \"r1\"\nzone = \"z1\"").vip("line", check);
    let mut lb = LbProcess::start(&lab, &config)?;
    assert_split(&lab, 100.0)?;

    // 2 of 4 local: health 2/4 x 1.4 = 70%.
    lab.backends[0].stop();
    lab.backends[1].stop();
    wait_for_nth(&mut lb, "backend unhealthy", 2)?;
    assert_split(&lab, 70.0)?;

    // 1 of 4: 35%, and no panic: level 1 makes the total health 100%.
    lab.backends[2].stop();
    wait_for_nth(&mut lb, "backend unhealthy", 3)?;
    assert_split(&lab, 35.0)?;
    ensure!(!lb.log().iter().any(|l| l.contains("panic: too few")), "panic with a healthy level 1: {:#?}", lb.log());

    // Healed: all of it local again.
    for backend in &mut lab.backends[..3] {
        backend.restart()?;
    }
    wait_for_nth(&mut lb, "backend healthy again", 3)?;
    assert_split(&lab, 100.0)
}
