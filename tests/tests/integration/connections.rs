//! End to end, what time does to connections: tens of thousands of sequential connections
//! through a 1000-port nat range, a client that cycles through its source ports across a
//! weight change, and neighbour entries flushed under load, with real TCP from the client
//! namespace through `lb run`.
//!
//! The clients here close first (the line protocol, port 7), so backends hold no TIME_WAIT
//! and a port is free `tcp_closed` (200 ms here) after its connection closed: time runs
//! fast, as the packet fixtures (tests/lifecycle.rs) check the TIME_WAIT guard itself.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{
    CLIENT_V4, CLIENT_V6, LINE_PORT, Lab, LbProcess, VIP_V4, VIP_V6, VipSpec, backends_across, lb_config,
};
use lb_userspace::api::status::Status;
use socket2::{Domain, Socket, Type};

const TIMEOUT: Duration = Duration::from_secs(2);

/// One connection from the client's `port` to the line service of `vip` (its family tells
/// the client's address), closed by the client after one answer; returns the backend that
/// answered.
fn ask_once_from(vip: IpAddr, port: u16) -> Result<String> {
    let (domain, client) =
        if vip.is_ipv4() { (Domain::IPV4, IpAddr::V4(CLIENT_V4)) } else { (Domain::IPV6, IpAddr::V6(CLIENT_V6)) };
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(client, port).into())?;
    socket.connect_timeout(&SocketAddr::new(vip, LINE_PORT).into(), TIMEOUT)?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"who\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    ensure!(!line.is_empty(), "closed without an answer");
    Ok(line.trim().to_owned())
}

/// Connections from each of `ports` in turn: the backends that answered, or the first
/// failure (with its port).
fn cycle(lab: &Lab, ports: std::ops::Range<u16>) -> Result<BTreeMap<String, usize>> {
    lab.client.run(move || -> Result<BTreeMap<String, usize>> {
        let mut answered = BTreeMap::new();
        for port in ports {
            let name = ask_once_from(IpAddr::V4(VIP_V4), port)
                .with_context(|| format!("connection from client port {port}"))?;
            *answered.entry(name).or_default() += 1;
        }
        Ok(answered)
    })?
}

fn status(lb: &LbProcess) -> Result<Status> {
    Ok(serde_json::from_str(&lb.cli(&["status", "--json"])?)?)
}

/// Shares by backend name, in order.
fn shares(answered: &BTreeMap<String, usize>) -> Vec<f64> {
    let total: usize = answered.values().sum();
    answered.values().map(|&n| n as f64 / total as f64).collect()
}

#[test]
fn sequential_connections_through_a_small_nat_range_never_fail_and_follow_weight_changes() -> Result<()> {
    let lab = Lab::build("e2conn", backends_across(1, 1, 3), false)?;
    // Busy clients reuse their ports as soon as TIME_WAIT allows.
    lab.client.sysctl("net.ipv4.tcp_tw_reuse=1")?;
    let config = |weights: [u32; 3]| {
        let backends = weights.iter().enumerate().map(|(i, &w)| (i, w)).collect();
        lb_config(&lab, &[VipSpec::new("line", IpAddr::V4(VIP_V4), LINE_PORT, "tcp", "nat", backends)])
            .balancer("nat_port_min = 20000\nnat_port_max = 20999\n[flow_timeouts]\ntcp_closed = \"200ms\"")
    };
    let mut lb = LbProcess::start(&lab, &config([1, 1, 1]))?;
    // 10,000 client ports, each used once per phase: 20,000 connections through 1000
    // nat ports. Shares are within 2 points at 4 standard deviations for 10,000 flows.
    let ports = 40000..50000;
    let started = Instant::now();
    let before = cycle(&lab, ports.clone())?;
    for share in shares(&before) {
        assert!((share - 1.0 / 3.0).abs() < 0.02, "1:1:1 gave {before:?}");
    }
    lb.reload(&config([3, 1, 1]))?;
    let after = cycle(&lab, ports.clone())?;
    let elapsed = started.elapsed();
    for (share, want) in shares(&after).into_iter().zip([0.6, 0.2, 0.2]) {
        assert!((share - want).abs() < 0.02, "after the change to 3:1:1 the same client ports gave {after:?}");
    }
    let s = status(&lb)?;
    let vip = &s.vips[0];
    assert_eq!(vip.counters.new_flows, 2 * ports.len() as u64);
    assert_eq!(vip.counters.drop_nat_ports_exhausted, 0);
    assert_eq!(vip.counters.reopened_flows, 0, "the first phase's entries were over and swept before reuse");
    let held: u64 = vip.backends.iter().map(|b| b.flows.nat_ports).sum();
    assert!(held < 1000, "{held} ports held after the load stopped");
    eprintln!("20,000 connections in {elapsed:?}; {held} nat ports held at the end");
    Ok(())
}

/// Connections to `vip` in a loop for `duration`, while `fault` runs every `every`:
/// failures, and how many connections were made.
fn under_load(
    lab: &Lab,
    vip: IpAddr,
    duration: Duration,
    every: Duration,
    fault: impl Fn() -> Result<()>,
) -> Result<(usize, usize)> {
    let load = lab.client.spawn(move || {
        let (mut made, mut failed) = (0, 0);
        let end = Instant::now() + duration;
        let mut port = 30000u16;
        while Instant::now() < end {
            port = if port >= 39999 { 30000 } else { port + 1 };
            match ask_once_from(vip, port) {
                Ok(_) => made += 1,
                Err(e) => {
                    eprintln!("connection from {port} failed: {e:#}");
                    failed += 1;
                }
            }
        }
        (made, failed)
    })?;
    let end = Instant::now() + duration;
    while Instant::now() + every < end {
        std::thread::sleep(every);
        fault()?;
    }
    let (made, failed) = load.join().map_err(|_| anyhow::anyhow!("the load panicked"))?;
    Ok((failed, made))
}

#[test]
fn flushed_neighbour_entries_cost_nat_nothing_and_dsr_at_most_a_retransmission() -> Result<()> {
    for (mode, address) in [("nat", IpAddr::V4(VIP_V4)), ("nat", IpAddr::V6(VIP_V6)), ("dsr", IpAddr::V4(VIP_V4))] {
        let lab = Lab::build(&format!("e2nb{mode}"), backends_across(1, 1, 2), mode == "dsr")?;
        lab.client.sysctl("net.ipv4.tcp_tw_reuse=1")?;
        let vip = VipSpec::new("line", address, LINE_PORT, "tcp", mode, vec![(0, 1), (1, 1)]);
        let lb = LbProcess::start(&lab, &lb_config(&lab, &[vip]).balancer("[flow_timeouts]\ntcp_closed = \"200ms\""))?;
        // The balancer's kernel forgets the client and the backends, as its neighbour
        // garbage collection does: nat every 1.5 s; dsr every 4 s, so that a connection
        // meets one flush at most (its SYN dropped once, resolved before its retransmission).
        let flush = || lab.lb.ip(&["neigh", "flush", "all"]);
        let every = Duration::from_millis(if mode == "nat" { 1500 } else { 4000 });
        let (failed, made) = under_load(&lab, address, Duration::from_secs(9), every, flush)?;
        let c = status(&lb)?.vips[0].counters;
        eprintln!("{mode} {address}: {made} connections, {failed} failed; {c:?}");
        assert_eq!(failed, 0, "{mode} {address}: connections failed while neighbour entries were flushed");
        assert!(made > 100, "{mode} {address}: only {made} connections in 9 s");
        if mode == "nat" {
            assert!(c.passed_no_neighbour > 0, "the kernel resolved neighbours for nat packets: {c:?}");
            assert_eq!(c.drop_no_route + c.drop_no_neighbour, 0);
        } else {
            assert!(c.drop_no_neighbour > 0, "dsr packets met the flushed entries: {c:?}");
        }
    }
    Ok(())
}
