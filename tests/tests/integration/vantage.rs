//! A DNS vantage point without a packet path: `lb run` with only `[dns]` (no interfaces, no
//! VIPs) on a host of the lab's segment. It loads and attaches nothing and pins no map, yet
//! probes its targets, answers the zone, moves the answers when the primary dies and back,
//! and serves its view to peers.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{HTTP_PORT, Lab, LbProcess, backends_across, xdp_programs};
use lb_tests::sites::{NAME, dig};

const VANTAGE_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);

fn config(primary: Ipv4Addr, backup: Ipv4Addr) -> String {
    let check = format!(
        "health_check = {{ type = \"http\", port = {HTTP_PORT}, interval = \"200ms\", timeout = \"150ms\", \
         unhealthy_threshold = 2, healthy_threshold = 2 }}"
    );
    format!(
        "[balancer]\ninterfaces = []\n\n[dns]\nlisten = [\"{VANTAGE_V4}:53\"]\nvantage = \"third\"\n\n\
         [[dns.target]]\nname = \"site-a\"\naddress = \"{primary}\"\n{check}\n\n\
         [[dns.target]]\nname = \"site-b\"\naddress = \"{backup}\"\n{check}\n\n\
         [[dns.zone]]\norigin = \"example.test.\"\nns = [\"ns1.example.test.\"]\n\n\
         [[dns.zone.policy]]\nname = \"www\"\ntype = \"A\"\nttl = 1\nprimary = [\"site-a\"]\nbackup = [[\"site-b\"]]\n"
    )
}

/// Asks the vantage point until it answers `want` for the name (at most `within`).
fn until_answers(lab: &Lab, want: Ipv4Addr, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let answer = dig(&lab.client, VANTAGE_V4, NAME, &[])?;
        if answer == vec![want.to_string()] {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < within, "after {within:?} the vantage point answers {answer:?}, not {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_dns_only_vantage_point_runs_without_a_packet_path_and_fails_over() -> Result<()> {
    let mut lab = Lab::build("vant", backends_across(1, 1, 2), false)?;
    let ns = lab.plug(&format!("{}-v", lab.prefix), "pv", &[&format!("{VANTAGE_V4}/16")])?;
    let (primary, backup) = (lab.backends[0].v4, lab.backends[1].v4);
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/{}-v", lab.prefix));
    let mut lb = LbProcess::start_in(&ns, &format!("{}-v", lab.prefix), pin_dir.clone(), &config(primary, backup))?;
    assert!(lb.log().iter().any(|l| l.contains("a DNS vantage point, without a packet path")), "{:?}", lb.log());
    assert!(xdp_programs(&ns, "eth0")?.is_empty(), "nothing attached");
    assert!(!pin_dir.exists(), "nothing pinned");

    until_answers(&lab, primary, Duration::from_secs(10))?;
    lab.backends[0].stop();
    let moved = until_answers(&lab, backup, Duration::from_secs(10))?;
    println!("vantage point: answers moved to the backup {} ms after the primary died", moved.as_millis());
    let view = lb.cli(&["status", "--json"])?;
    let status: lb_userspace::api::status::Status = serde_json::from_str(&view)?;
    let dns = status.dns.context("the status has the DNS section")?;
    let site_a = dns.targets.iter().find(|t| t.name == "site-a").context("target site-a")?;
    assert!(!site_a.up && status.vips.is_empty(), "{dns:?}");
    let peers_view = ns.output(&["curl", "-sf", "http://127.0.0.1:9180/v1/dns/view"])?;
    assert!(peers_view.contains("\"site-a\":false") && peers_view.contains("\"site-b\":true"), "{peers_view}");
    lab.backends[0].restart()?;
    until_answers(&lab, primary, Duration::from_secs(10))?;
    Ok(())
}
