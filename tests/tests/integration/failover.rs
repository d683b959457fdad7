//! Failover end to end: `lb run` in the lab with health checks, outlier ejection and
//! locality, while backends are killed, black-holed and healed; the black hole and the
//! zone and region failures also in encapsulated modes (ipip, gue). Each test waits for the
//! controller's log line that says it acted, then checks where new connections go.
//! Timing only enters as lower bounds (a backend may not come back sooner than its
//! thresholds allow), which a slow machine cannot break.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{
    BackendSpec, Decap, LINE_PORT, Lab, LabConfig, LbProcess, LineConnection, VIP_V4, VipSpec, backends_across,
    decap_on_backends, lb_config, tally,
};

const DETECTION_WAIT: Duration = Duration::from_secs(20);

/// A nat VIP on the line port over every backend of `lab`, with `extra` keys in its
/// `[[vip]]` table; the balancer is in region r1, zone z1.
fn config(lab: &Lab, extra: &str) -> LabConfig {
    config_in(lab, "nat", extra)
}

/// [`config`] in `mode`.
fn config_in(lab: &Lab, mode: &'static str, extra: &str) -> LabConfig {
    let vip = VipSpec::new(
        "line",
        IpAddr::V4(VIP_V4),
        LINE_PORT,
        "tcp",
        mode,
        (0..lab.backends.len()).map(|i| (i, 1)).collect(),
    );
    lb_config(lab, &[vip]).balancer("region = \"r1\"\nzone = \"z1\"").vip("line", extra)
}

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT)
}

/// Waits for a log line with `needle` (or finds it already read), then for the table sync
/// that follows it: the moment the maps say what the line says.
fn wait_until_applied(lb: &mut LbProcess, needle: &str) -> Result<()> {
    if !lb.log().iter().any(|l| l.contains(needle)) {
        lb.wait_for(needle, DETECTION_WAIT)?;
    }
    let at = lb.log().iter().rposition(|l| l.contains(needle)).expect("seen above");
    if !lb.log()[at..].iter().any(|l| l.contains("tables synced")) {
        lb.wait_for("tables synced", DETECTION_WAIT)?;
    }
    Ok(())
}

/// When the controller logged the last line containing `needle`, by the line's own
/// timestamp: the test reads the log later, by as much as a loaded machine delays it.
fn logged_at(lb: &mut LbProcess, needle: &str) -> Result<std::time::SystemTime> {
    let line = lb.log().iter().rev().find(|l| l.contains(needle)).with_context(|| format!("no {needle:?} logged"))?;
    let stamp = line.split_whitespace().next().with_context(|| format!("no timestamp in {line:?}"))?;
    humantime::parse_rfc3339(stamp).with_context(|| format!("the timestamp of {line:?}"))
}

/// `n` new connections, one after the other, each asking once: the backends that answered
/// and the number of attempts that failed.
fn connections(lab: &Lab, n: usize) -> Result<(BTreeMap<String, usize>, usize)> {
    lab.client.run(move || {
        let mut answers = Vec::new();
        let mut failed = 0;
        for _ in 0..n {
            match LineConnection::open(vip()).and_then(|mut c| c.ask()) {
                Ok(name) => answers.push(name),
                Err(_) => failed += 1,
            }
        }
        (tally(answers), failed)
    })
}

/// Opens `n` connections that stay open, with the backend each landed on.
fn open_connections(lab: &Lab, n: usize) -> Result<Vec<(LineConnection, String)>> {
    lab.client.run(move || {
        (0..n)
            .map(|_| {
                let mut c = LineConnection::open(vip())?;
                let name = c.ask()?;
                Ok((c, name))
            })
            .collect::<Result<Vec<_>>>()
    })?
}

/// Every open connection not on `dead` still answers, from the same backend.
fn assert_untouched(open: &mut [(LineConnection, String)], dead: &[&str]) -> Result<()> {
    let mut checked = 0;
    for (connection, name) in open.iter_mut().filter(|(_, name)| !dead.contains(&name.as_str())) {
        ensure!(connection.ask()? == *name, "a connection on {name} moved");
        checked += 1;
    }
    ensure!(checked > 0, "no open connection on a healthy backend to check");
    Ok(())
}

#[test]
fn a_refused_backend_is_ejected_from_the_packet_path_and_returns_after_its_ejection_time() -> Result<()> {
    let mut lab = Lab::build("foeject", backends_across(1, 1, 4), false)?;
    let mut lb = LbProcess::start(
        &lab,
        &config(&lab, "outlier_detection = { consecutive_5xx = 3, interval = \"500ms\", base_ejection_time = \"2s\" }"),
    )?;
    let mut open = open_connections(&lab, 16)?;
    let dead = lab.backends[0].spec.name.clone();
    lab.backends[0].stop();

    // Connections to the dead backend are refused until it has refused 3 in a row.
    let (mut failed, mut attempts) = (0, 0);
    while !lb.log().iter().any(|l| l.contains("backend ejected")) {
        ensure!(attempts < 400, "no ejection after {attempts} connections ({failed} refused)");
        failed += connections(&lab, 1)?.1;
        attempts += 1;
    }
    ensure!(failed >= 3, "ejected after only {failed} refused connections");
    wait_until_applied(&mut lb, "backend ejected")?;
    let ejected_at = logged_at(&mut lb, "backend ejected")?;
    let (answers, failed) = connections(&lab, 100)?;
    assert_eq!(failed, 0, "connections failed after the ejection: {answers:?}");
    assert!(!answers.contains_key(&dead), "{dead} got connections after its ejection: {answers:?}");
    assert_untouched(&mut open, &[&dead])?;

    // Back up: it returns at a sweep after its 2 s ejection, not before.
    lab.backends[0].restart()?;
    wait_until_applied(&mut lb, "ejected backend returned")?;
    let ejected_for = logged_at(&mut lb, "ejected backend returned")?.duration_since(ejected_at)?;
    assert!(
        ejected_for >= Duration::from_secs(2),
        "returned {ejected_for:?} after its ejection (base_ejection_time 2s)"
    );
    let (answers, failed) = connections(&lab, 200)?;
    assert_eq!(failed, 0);
    assert!(answers.get(&dead).is_some_and(|&n| n > 20), "{dead} not back in the rotation: {answers:?}");
    Ok(())
}

/// A lab of `backends` for a VIP in `mode`: in the encapsulated modes the backends hold
/// the VIP and decapsulate with `lb decap attach` (the guards detach it).
fn lab_for(tag: &str, backends: Vec<BackendSpec>, mode: &str) -> Result<(Lab, Vec<Decap>)> {
    let lab = Lab::build(tag, backends, mode != "nat")?;
    let decaps = if mode == "nat" { Vec::new() } else { decap_on_backends(&lab)? };
    Ok((lab, decaps))
}

#[test]
fn a_black_holed_backend_fails_its_checks_and_fails_back_after_healthy_threshold() -> Result<()> {
    black_hole_in("fohole", "nat")
}

#[test]
fn an_ipip_backend_black_holed_fails_its_checks_and_fails_back() -> Result<()> {
    black_hole_in("foholei", "ipip")
}

fn black_hole_in(tag: &str, mode: &'static str) -> Result<()> {
    let (lab, _decaps) = lab_for(tag, backends_across(1, 1, 4), mode)?;
    let check = "health_check = { type = \"tcp\", interval = \"300ms\", timeout = \"200ms\", unhealthy_threshold = 2, healthy_threshold = 3 }";
    let mut lb = LbProcess::start(&lab, &config_in(&lab, mode, check))?;
    let mut open = open_connections(&lab, 16)?;
    let dead = lab.backends[0].spec.name.clone();
    lab.backends[0].black_hole(true)?;
    wait_until_applied(&mut lb, "backend unhealthy")?;
    let (answers, failed) = connections(&lab, 100)?;
    assert_eq!(failed, 0, "connections failed after detection: {answers:?}");
    assert!(!answers.contains_key(&dead), "{dead} chosen while unhealthy: {answers:?}");
    assert_untouched(&mut open, &[&dead])?;

    lab.backends[0].black_hole(false)?;
    let healed = Instant::now();
    wait_until_applied(&mut lb, "backend healthy again")?;
    // Three passing checks, 300 ms apart, take at least 600 ms.
    assert!(healed.elapsed() >= Duration::from_millis(600), "healthy again after {:?}", healed.elapsed());
    let (answers, failed) = connections(&lab, 200)?;
    assert_eq!(failed, 0);
    assert!(answers.get(&dead).is_some_and(|&n| n > 20), "{dead} not back in the rotation: {answers:?}");
    Ok(())
}

#[test]
fn a_flapping_backend_is_not_let_back_in_before_healthy_threshold() -> Result<()> {
    let lab = Lab::build("foflap", backends_across(1, 1, 2), false)?;
    let check = "health_check = { type = \"tcp\", interval = \"200ms\", timeout = \"100ms\", unhealthy_threshold = 3, healthy_threshold = 3 }";
    let mut lb = LbProcess::start(&lab, &config(&lab, check))?;
    // Down for 1 s (about 5 failed checks: out), then up for 300 ms (at most 2 passes: not
    // enough to come back), four times over; then up for good.
    for _ in 0..4 {
        lab.backends[0].black_hole(true)?;
        std::thread::sleep(Duration::from_millis(1000));
        lab.backends[0].black_hole(false)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    lb.wait_for("backend healthy again", DETECTION_WAIT)?;
    let count = |lb: &mut LbProcess, needle: &str| lb.log().iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count(&mut lb, "backend unhealthy"), 1, "flapped out more than once: {:#?}", lb.log());
    assert_eq!(count(&mut lb, "backend healthy again"), 1, "let back in during a short up: {:#?}", lb.log());
    Ok(())
}

#[test]
fn zone_and_region_failures_move_traffic_down_the_priority_levels_and_back() -> Result<()> {
    zone_and_region_in("fozone", "nat")
}

#[test]
fn zone_and_region_failures_in_gue_reach_the_other_region_and_come_back() -> Result<()> {
    zone_and_region_in("fozoneg", "gue")
}

fn zone_and_region_in(tag: &str, mode: &'static str) -> Result<()> {
    // r1-z1-b1 (level 0), r1-z2-b1 (level 1), r2-z1-b1 and r2-z2-b1 (level 2).
    let (mut lab, _decaps) = lab_for(tag, backends_across(2, 2, 1), mode)?;
    let check = "health_check = { type = \"tcp\", interval = \"300ms\", timeout = \"200ms\", unhealthy_threshold = 2, healthy_threshold = 2 }\npanic_threshold = 0";
    let mut lb = LbProcess::start(&lab, &config_in(&lab, mode, check))?;
    let only = |lab: &Lab, names: &[&str]| -> Result<()> {
        let (answers, failed) = connections(lab, 60)?;
        ensure!(failed == 0, "{failed} connections failed: {answers:?}");
        ensure!(answers.keys().all(|n| names.contains(&n.as_str())), "expected only {names:?}: {answers:?}");
        Ok(())
    };
    only(&lab, &["r1-z1-b1"])?;

    lab.backends[0].stop();
    lb.wait_for("serving from priority level 1", DETECTION_WAIT)?;
    only(&lab, &["r1-z2-b1"])?;

    lab.backends[1].stop();
    lb.wait_for("serving from priority level 2", DETECTION_WAIT)?;
    only(&lab, &["r2-z1-b1", "r2-z2-b1"])?;

    // Failback to the local zone once it passes its checks again; the connections opened
    // on level 2 meanwhile stay where they are.
    let mut on_level_2 = open_connections(&lab, 8)?;
    lab.backends[0].restart()?;
    lb.wait_for("serving from priority level 0", DETECTION_WAIT)?;
    only(&lab, &["r1-z1-b1"])?;
    assert_untouched(&mut on_level_2, &[])?;
    Ok(())
}
