//! End to end: real TCP (HTTP) and UDP from a client namespace, through the balancer's XDP
//! program, to backends in their own namespaces, in both modes and both address families.
//!
//! Shares are checked with absolute tolerances; request counts are chosen so that a fair
//! split misses them with probability well below 1e-4 per test (binomial tails), since the
//! flow hash sees kernel-chosen source ports that differ from run to run.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};

use anyhow::{Result, ensure};
use lb_tests::lab::{
    self, HTTP_PORT, LB_V4, LB_V6, LINE_PORT, Lab, LbProcess, LineConnection, UDP_PORT, VIP_V4, VIP_V6, VipSpec,
    backends_across, http_get, ping, tally, udp_request,
};

/// Four equal backends in two zones of one region.
fn four_backends(tag: &str, dsr: bool) -> Lab {
    Lab::build(tag, backends_across(1, 2, 2), dsr).expect("lab")
}

fn equal(n: usize) -> Vec<(usize, u32)> {
    (0..n).map(|i| (i, 1)).collect()
}

/// Checks that every backend got its share of `total` answers within `tolerance` (absolute).
fn assert_shares(counts: &BTreeMap<String, usize>, total: usize, expected: &[(&str, f64)], tolerance: f64) {
    assert_eq!(counts.values().sum::<usize>(), total, "every request answered: {counts:?}");
    for (name, share) in expected {
        let got = *counts.get(*name).unwrap_or(&0) as f64 / total as f64;
        assert!(
            (got - share).abs() <= tolerance,
            "{name}: share {got:.3}, expected {share:.3} ± {tolerance}: {counts:?}"
        );
    }
}

fn names(lab: &Lab) -> Vec<String> {
    lab.backends.iter().map(|b| b.spec.name.clone()).collect()
}

/// Sends `n` HTTP requests and `n` UDP requests to the VIP from the client; all must be answered.
fn spread(lab: &Lab, vip: IpAddr, n: usize) -> Result<(BTreeMap<String, usize>, BTreeMap<String, usize>)> {
    lab.client.run(move || -> Result<_> {
        let http = (0..n).map(|_| http_get(SocketAddr::new(vip, HTTP_PORT))).collect::<Result<Vec<_>>>()?;
        let udp = (0..n).map(|_| udp_request(SocketAddr::new(vip, UDP_PORT))).collect::<Result<Vec<_>>>()?;
        Ok((tally(http), tally(udp)))
    })?
}

fn both_protocols(vip: IpAddr, mode: &'static str, backends: Vec<(usize, u32)>) -> Vec<VipSpec> {
    vec![
        VipSpec::new("http", vip, HTTP_PORT, "tcp", mode, backends.clone()),
        VipSpec::new("udp", vip, UDP_PORT, "udp", mode, backends),
    ]
}

/// The answers the client counted are the requests the backends' servers counted (so every
/// answer came from the backend it names, and nothing reached a backend unanswered).
fn assert_served_matches(lab: &Lab, http: &BTreeMap<String, usize>, udp: &BTreeMap<String, usize>) {
    for (name, served) in lab.served() {
        assert_eq!(served.http as usize, http.get(&name).copied().unwrap_or(0), "{name}: HTTP served vs answered");
        assert_eq!(served.udp as usize, udp.get(&name).copied().unwrap_or(0), "{name}: UDP served vs answered");
    }
}

/// 4 equal backends: each share within 0.25 ± 0.10. With 400 requests that is 4.6 standard
/// deviations; the brief's 200 (3.3 sigma, ~1% per test) failed once in early runs.
const SPREAD_REQUESTS: usize = 400;

fn spread_test(tag: &str, vip: IpAddr, mode: &'static str) -> Result<()> {
    let requests = SPREAD_REQUESTS;
    let lab = four_backends(tag, mode == "dsr");
    let _lb = LbProcess::start(&lab, &lab::lb_config(&lab, &both_protocols(vip, mode, equal(4))))?;
    let (http, udp) = spread(&lab, vip, requests)?;
    let expected: Vec<(String, f64)> = names(&lab).into_iter().map(|n| (n, 0.25)).collect();
    let expected: Vec<(&str, f64)> = expected.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    assert_shares(&http, requests, &expected, 0.10);
    assert_shares(&udp, requests, &expected, 0.10);
    assert_served_matches(&lab, &http, &udp);
    Ok(())
}

#[test]
fn nat_ipv4_spreads_tcp_and_udp_over_all_backends() -> Result<()> {
    spread_test("e2n4", IpAddr::V4(VIP_V4), "nat")
}

#[test]
fn nat_ipv6_spreads_tcp_and_udp_over_all_backends() -> Result<()> {
    spread_test("e2n6", IpAddr::V6(VIP_V6), "nat")
}

#[test]
fn dsr_ipv4_spreads_tcp_and_udp_over_all_backends() -> Result<()> {
    spread_test("e2d4", IpAddr::V4(VIP_V4), "dsr")
}

#[test]
fn dsr_ipv6_spreads_tcp_and_udp_over_all_backends() -> Result<()> {
    spread_test("e2d6", IpAddr::V6(VIP_V6), "dsr")
}

#[test]
fn weights_are_honoured() -> Result<()> {
    let lab = four_backends("e2w", false);
    let weights = vec![(0, 1), (1, 1), (2, 2), (3, 4)];
    let vip = IpAddr::V4(VIP_V4);
    let _lb = LbProcess::start(&lab, &lab::lb_config(&lab, &both_protocols(vip, "nat", weights)))?;
    // ±8 points around 50% is 4.5 standard deviations with 800 requests (3.2 with 400).
    let requests = 800;
    let counts = lab.client.run(move || -> Result<_> {
        Ok(tally((0..requests).map(|_| http_get(SocketAddr::new(vip, HTTP_PORT))).collect::<Result<Vec<_>>>()?))
    })??;
    let n = names(&lab);
    assert_shares(&counts, requests, &[(&n[0], 0.125), (&n[1], 0.125), (&n[2], 0.25), (&n[3], 0.5)], 0.08);
    assert_served_matches(&lab, &counts, &BTreeMap::new());
    Ok(())
}

#[test]
fn a_flow_in_progress_keeps_its_backend_when_backends_come_and_go() -> Result<()> {
    let lab = four_backends("e2flow", false);
    let vip = IpAddr::V4(VIP_V4);
    let line_vip = |backends: Vec<(usize, u32)>| vec![VipSpec::new("line", vip, LINE_PORT, "tcp", "nat", backends)];
    let mut lb = LbProcess::start(&lab, &lab::lb_config(&lab, &line_vip(vec![(0, 1), (1, 1), (2, 1)])))?;
    let conn = lab.client.run(move || LineConnection::open(SocketAddr::new(vip, LINE_PORT)))??;
    let mut conn = Some(conn);
    let mut ask = |lab: &Lab| -> Result<String> {
        let mut c = conn.take().expect("connection");
        let (answer, c) = lab.client.run(move || (c.ask(), c))?;
        conn = Some(c);
        answer
    };
    let first = ask(&lab)?;
    let index = names(&lab).iter().position(|n| *n == first).expect("a known backend");

    // Add a backend: the open connection stays where it is.
    lb.reload(&lab::lb_config(&lab, &line_vip(vec![(0, 1), (1, 1), (2, 1), (3, 1)])))?;
    ensure!(ask(&lab)? == first, "connection moved after a backend was added");

    // Remove a backend other than the one in use: still where it was.
    let other = (0..3).find(|&i| i != index).expect("another backend");
    let remaining: Vec<(usize, u32)> = (0..4).filter(|&i| i != other).map(|i| (i, 1)).collect();
    lb.reload(&lab::lb_config(&lab, &line_vip(remaining.clone())))?;
    ensure!(ask(&lab)? == first, "connection moved after another backend was removed");

    // New connections are all answered, and never by the removed backend.
    let removed = names(&lab)[other].clone();
    let answers = lab.client.run(move || -> Result<Vec<String>> {
        (0..60).map(|_| LineConnection::open(SocketAddr::new(vip, LINE_PORT))?.ask()).collect()
    })??;
    ensure!(answers.len() == 60 && !answers.contains(&removed), "new connections: {answers:?}");
    // The long-lived connection's lines were all served by its backend.
    ensure!(lab.backends[index].served().line >= 3, "served: {:?}", lab.served());
    Ok(())
}

#[test]
fn traffic_for_the_balancer_itself_is_untouched() -> Result<()> {
    let lab = four_backends("e2own", false);
    let _lb = LbProcess::start(&lab, &lab::lb_config(&lab, &both_protocols(IpAddr::V4(VIP_V4), "nat", equal(4))))?;
    // The balancer host's own kernel answers pings on its own addresses...
    lab.client.run(|| -> Result<()> {
        ping(IpAddr::V4(LB_V4))?;
        ping(IpAddr::V6(LB_V6))
    })??;
    // ...and serves TCP on them (v4 and v6).
    for addr in [IpAddr::V4(LB_V4), IpAddr::V6(LB_V6)] {
        let listener = lab.lb.run(move || TcpListener::bind((addr, 2222)))??;
        let accepted = std::thread::spawn(move || listener.accept().map(|_| ()));
        lab.client.run(move || {
            std::net::TcpStream::connect_timeout(&SocketAddr::new(addr, 2222), std::time::Duration::from_secs(3))
        })??;
        accepted.join().expect("accept thread")?;
    }
    // Traffic between other hosts of the segment does not involve the balancer at all, and
    // the VIP still works next to all of this.
    let backend = lab.backends[0].addr(false);
    let (direct, via_vip) = lab.client.run(move || -> Result<_> {
        ping(backend)?;
        Ok((http_get(SocketAddr::new(backend, HTTP_PORT))?, http_get(SocketAddr::new(IpAddr::V4(VIP_V4), HTTP_PORT))?))
    })??;
    ensure!(direct == lab.backends[0].spec.name, "direct answer from {direct}");
    ensure!(names(&lab).contains(&via_vip), "VIP answer from {via_vip}");
    Ok(())
}
