//! Site failover through DNS, end to end: two balancer sites with their own VIPs and
//! controllers (`lb_tests::sites`), asked by `dig` from the client. Site A's VIP goes down
//! and comes back; one prober is cut off from a healthy site. The answers move within the
//! detection bound (checks x unhealthy_threshold, plus one peer exchange), come back after
//! the healthy threshold, and do not move on one vantage point's word.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use lb_tests::lab::{LB_V4, VIP_V4};
use lb_tests::sites::{NAME, SITE_B_VIP, Timing, TwoSites, dig};

const TIMING: Timing =
    Timing { interval: Duration::from_millis(300), unhealthy_threshold: 2, healthy_threshold: 2, ttl: 1 };
/// What a loaded machine may add to the detection bound (tests run in parallel).
const SLACK: Duration = Duration::from_secs(4);

fn only(address: Ipv4Addr) -> Vec<String> {
    vec![address.to_string()]
}

/// Polls both sites' DNS servers until both answer `want`; the time it took.
fn until_both_answer(sites: &TwoSites, want: Ipv4Addr, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let (a, b) = sites.answers()?;
        if a == only(want) && b == only(want) {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < within, "after {within:?} site A answers {a:?}, site B {b:?}; wanted {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn answers_move_to_the_backup_site_when_the_primary_vip_dies_and_come_back() -> Result<()> {
    let mut sites = TwoSites::build("dnsf", 2, TIMING)?;
    until_both_answer(&sites, VIP_V4, SLACK)?;
    // Over TCP, and a name that does not exist.
    assert_eq!(dig(&sites.lab.client, LB_V4, NAME, &["+tcp"])?, only(VIP_V4));
    let nx =
        sites.lab.client.output(&["dig", "+time=1", "+tries=1", &format!("@{LB_V4}"), "nope.example.test", "A"])?;
    ensure!(nx.contains("status: NXDOMAIN") && nx.contains("flags: qr aa"), "{nx}");

    sites.site_a_backends(false)?;
    let bound = TIMING.detection_bound();
    let moved = until_both_answer(&sites, SITE_B_VIP, bound + SLACK)?;
    println!(
        "answers moved to site B {} ms after site A's VIP died (bound {} ms + TTL {} s)",
        moved.as_millis(),
        bound.as_millis(),
        TIMING.ttl
    );
    for lb in [&sites.a, &sites.b] {
        let dns = TwoSites::status(lb)?.dns.expect("dns status");
        let site_a = dns.targets.iter().find(|t| t.name == "site-a").unwrap();
        ensure!(!site_a.up && site_a.views.values().all(|up| !up), "{dns:?}");
        ensure!(dns.policies[0].state == "backup", "{dns:?}");
    }

    sites.site_a_backends(true)?;
    let back = until_both_answer(&sites, VIP_V4, TIMING.interval * TIMING.healthy_threshold * 2 + bound + SLACK)?;
    println!("answers back on site A {} ms after it healed", back.as_millis());
    // Down once, up once: no flapping.
    for lb in [&sites.a, &sites.b] {
        let dns = TwoSites::status(lb)?.dns.expect("dns status");
        let site_a = dns.targets.iter().find(|t| t.name == "site-a").unwrap();
        ensure!(site_a.up && site_a.transitions == 2, "{site_a:?}");
    }

    // The manual switch, on site A's server only: its answers go to the backup at once.
    sites.a.cli(&["trickle", "www.example.test", "A", "1"])?;
    ensure!(sites.answers()? == (only(SITE_B_VIP), only(VIP_V4)), "{:?}", sites.answers()?);
    sites.a.cli(&["trickle", "www.example.test", "A", "config"])?;
    ensure!(sites.answers()? == (only(VIP_V4), only(VIP_V4)), "{:?}", sites.answers()?);
    Ok(())
}

#[test]
fn one_cut_off_prober_does_not_fail_a_healthy_site() -> Result<()> {
    let sites = TwoSites::build("dnsc", 1, TIMING)?;
    until_both_answer(&sites, VIP_V4, SLACK)?;
    sites.cut_b_from_a(true)?;
    // Site B's prober sees site A down...
    let started = Instant::now();
    loop {
        let dns = TwoSites::status(&sites.b)?.dns.expect("dns status");
        let site_a = dns.targets.iter().find(|t| t.name == "site-a").unwrap();
        if site_a.views.get("site-b") == Some(&false) {
            ensure!(site_a.views.get("site-a") == Some(&true), "{site_a:?}");
            break;
        }
        ensure!(started.elapsed() < TIMING.detection_bound() + SLACK, "site B never saw site A down: {site_a:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and for several more detection periods, nobody answers with anything but site A.
    let watch = Instant::now();
    let mut asked = 0;
    while watch.elapsed() < TIMING.detection_bound() * 3 {
        let (a, b) = sites.answers()?;
        ensure!(a == only(VIP_V4) && b == only(VIP_V4), "one vantage point failed site A: {a:?} {b:?}");
        asked += 1;
    }
    for lb in [&sites.a, &sites.b] {
        let dns = TwoSites::status(lb)?.dns.expect("dns status");
        let site_a = dns.targets.iter().find(|t| t.name == "site-a").unwrap();
        ensure!(site_a.up && site_a.transitions == 0, "{site_a:?}");
    }
    println!("{asked} answers from each site while site B's prober was cut off: all site A");
    sites.cut_b_from_a(false)
}
