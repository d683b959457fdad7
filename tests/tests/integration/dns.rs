//! Site failover through DNS, end to end: two balancer sites with their own VIPs and
//! controllers (`lb_tests::sites`), asked by `dig` from the client. Site A's VIP goes down
//! and comes back; one prober is cut off from a healthy site. The answers move within the
//! detection bound (checks x unhealthy_threshold, plus one peer exchange), come back after
//! the healthy threshold, and do not move on one vantage point's word. With a third vantage
//! point that has no packet path (a witness), a site that dies with its controller fails
//! over. A long run of random and malformed queries does not grow the server's memory.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_server::proto::rr::{Name, RecordType};
use lb_tests::lab::{LB_V4, VIP_V4};
use lb_tests::sites::{NAME, SITE_B_VIP, Timing, TwoSites, WITNESS_V4, dig};

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

/// Two sites and a witness, a vantage point without a packet path (`lb run` with only
/// `[admin]` and `[dns]`). Site A dies whole, its controller with it: the votes of site B
/// and the witness still make the quorum of 2 and take it out of the answers. (With two
/// vantage points and a quorum of 2, one vote is left and nothing moves.)
#[test]
fn a_site_that_dies_with_its_controller_fails_over_on_the_other_site_and_a_witness() -> Result<()> {
    let mut sites = TwoSites::build_with_witness("dnsw", 1, TIMING)?;
    until_both_answer(&sites, VIP_V4, SLACK)?;
    ensure!(dig(&sites.lab.client, WITNESS_V4, NAME, &[])? == only(VIP_V4), "the witness answers for the zone");
    let links = sites.lab.more_balancers[1].0.output(&["ip", "-d", "link", "show"])?;
    ensure!(!links.contains("xdp"), "the witness attached a program: {links}");
    let witness = sites.witness.as_ref().context("no witness")?;
    let status = TwoSites::status(witness)?;
    ensure!(status.vips.is_empty() && status.dns.is_some(), "{status:?}");

    // Site A dies: its backends, and its controller killed as a power cut would.
    sites.site_a_backends(false)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sites.a.pid() as i32), nix::sys::signal::Signal::SIGKILL)?;
    let started = Instant::now();
    let within = TIMING.detection_bound() + SLACK;
    loop {
        let answers =
            (dig(&sites.lab.client, sites.b_address, NAME, &[])?, dig(&sites.lab.client, WITNESS_V4, NAME, &[])?);
        if answers == (only(SITE_B_VIP), only(SITE_B_VIP)) {
            break;
        }
        ensure!(started.elapsed() < within, "after {within:?} site B and the witness answer {answers:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "answers moved to site B {} ms after site A died with its controller (bound {} ms + TTL {} s)",
        started.elapsed().as_millis(),
        TIMING.detection_bound().as_millis(),
        TIMING.ttl
    );
    let witness = sites.witness.as_ref().context("no witness")?;
    for lb in [&sites.b, witness] {
        let dns = TwoSites::status(lb)?.dns.context("dns status")?;
        let site_a = dns.targets.iter().find(|t| t.name == "site-a").context("no target site-a")?;
        let votes = ["site-b", "witness"].map(|vantage| site_a.views.get(vantage).copied());
        ensure!(!site_a.up && votes == [Some(false), Some(false)], "{site_a:?}");
    }
    let said = witness.cli(&["stop", "--detach"])?;
    ensure!(said.contains("a DNS vantage point has no program to leave or detach"), "lb stop said: {said}");
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

/// Queries sent before the first measurement (the allocator and buffers settle), and
/// between the two.
const WARM_UP: usize = 30_000;
const MEASURED: usize = 120_000;
/// What RSS may still move after the warm-up (allocator noise), in KiB. Without the TCP
/// limit, the 500 more connections held cost about 1.9 MiB.
const RSS_MARGIN_KIB: u64 = 1024;
/// TCP connections held open with half a query, in the warm-up and in the measured run
/// (the test's own descriptor limit is 1024).
const WARM_UP_CONNECTIONS: usize = 300;
const MEASURED_CONNECTIONS: usize = 800;

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// A query for a random name (new names, new client subnets: what per-name or per-client
/// state would keep), often with EDNS and Client Subnet, then sometimes bent: a flipped
/// bit, a cut, or a second question.
fn random_query(rng: &mut fastrand::Rng) -> Vec<u8> {
    let label: String = (0..rng.usize(1..20)).map(|_| rng.lowercase()).collect();
    let name = match rng.u8(0..3) {
        0 => NAME.to_owned(),
        1 => format!("{label}.example.test"),
        _ => format!("{label}.example.org"),
    };
    let rtype = [RecordType::A, RecordType::AAAA, RecordType::TXT, RecordType::NS][rng.usize(0..4)];
    let mut message = Message::new(rng.u16(..), MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(&name).expect("a name"), rtype));
    if rng.bool() {
        let mut edns = Edns::new();
        edns.set_max_payload(rng.u16(512..4096));
        if rng.bool() {
            let client = Ipv4Addr::from(rng.u32(..));
            edns.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(client.into(), 24, 0)));
        }
        message.edns = Some(edns);
    }
    let mut bytes = message.to_vec().expect("encodes");
    match rng.u8(0..4) {
        0 => {
            let at = rng.usize(..bytes.len());
            bytes[at] ^= 1 << rng.u8(0..8);
        }
        1 => bytes.truncate(rng.usize(..bytes.len())),
        2 => {
            let question = bytes[12..12 + name.len() + 6].to_vec();
            bytes.extend_from_slice(&question);
            bytes[5] = 2;
        }
        _ => {}
    }
    bytes
}

/// Sends `count` random queries to `server` in windows of 32, each window's answers awaited
/// (briefly: malformed ones may get none); how many answers came.
fn flood(server: SocketAddr, seed: u64, count: usize) -> Result<usize> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut answered = 0;
    let mut buf = [0; 4096];
    for _ in 0..count / 32 {
        for _ in 0..32 {
            socket.send_to(&random_query(&mut rng), server)?;
        }
        for _ in 0..32 {
            if socket.recv(&mut buf).is_err() {
                break;
            }
            answered += 1;
        }
    }
    Ok(answered)
}

/// `n` TCP connections to `server`, each with half a query sent: what an attacker holds open.
fn half_queries(server: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    (0..n)
        .map(|_| {
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
            // Says 512 bytes, sends 10; a closed connection refuses them, which is fine.
            let _ = stream.write_all(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            Ok(stream)
        })
        .collect()
}

#[test]
fn random_and_malformed_queries_do_not_grow_the_servers_memory() -> Result<()> {
    let sites = TwoSites::build("ldnm", 1, TIMING)?;
    until_both_answer(&sites, VIP_V4, SLACK)?;
    let server = SocketAddr::from((LB_V4, 53));
    let pid = sites.a.pid();
    let before = rss_kib(pid)?;
    // The warm-up holds more TCP connections than the limit (256), the measured run many more.
    let warm_answers = sites.lab.client.run(move || flood(server, 1, WARM_UP))??;
    let held = sites.lab.client.run(move || half_queries(server, WARM_UP_CONNECTIONS))??;
    let warm = rss_kib(pid)?;
    drop(held);
    let answers = sites.lab.client.run(move || flood(server, 2, MEASURED))??;
    let held = sites.lab.client.run(move || half_queries(server, MEASURED_CONNECTIONS))??;
    let after = rss_kib(pid)?;
    drop(held);
    println!(
        "RSS {before} KiB at start, {warm} KiB after {WARM_UP} queries ({warm_answers} answered) with \
         {WARM_UP_CONNECTIONS} TCP connections held, {after} KiB after {MEASURED} more ({answers} answered) \
         with {MEASURED_CONNECTIONS} held"
    );
    ensure!(answers > MEASURED / 2, "only {answers} of {MEASURED} queries answered");
    ensure!(after <= warm + RSS_MARGIN_KIB, "RSS grew from {warm} to {after} KiB over {MEASURED} queries");
    let refused = TwoSites::status(&sites.a)?.dns.expect("dns status").tcp_refused;
    ensure!(refused > 0, "no TCP connection refused past the limit");
    // The server still answers.
    ensure!(dig(&sites.lab.client, LB_V4, NAME, &[])? == only(VIP_V4));
    Ok(())
}
