//! `lb flows` and `lb status --vip` against a running `lb`: the flow table lists exactly the
//! connections the client holds open through a nat and a dsr VIP, and its UDP flows, each
//! with the backend that answered it and an age that grows; the filters select what they
//! say; closed connections show as closed (nat sees both FINs, dsr only the client's) and
//! then go.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{LINE_PORT, Lab, LbProcess, UDP_PORT, VIP_V4, VipSpec, backends_across, lb_config};
use lb_userspace::api::flows::{FlowList, FlowRow};

/// The nat VIP's address (the dsr VIP is `VIP_V4`, which the backends hold on loopback).
const NAT_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
const TIMEOUT: Duration = Duration::from_secs(2);

/// What the test expects of a flow: (client, VIP name, backend, mode, state).
type Expected = (SocketAddr, String, SocketAddr, String, String);

/// A line connection held open, with the client's address and the backend that answered.
struct Held {
    stream: TcpStream,
    client: SocketAddr,
    answered: String,
}

fn hold(vip: SocketAddr) -> Result<Held> {
    let stream = TcpStream::connect_timeout(&vip, TIMEOUT).with_context(|| format!("connecting to {vip}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    (&stream).write_all(b"who\n")?;
    let mut answered = String::new();
    BufReader::new(&stream).read_line(&mut answered)?;
    ensure!(!answered.is_empty(), "{vip} closed without an answer");
    Ok(Held { client: stream.local_addr()?, stream, answered: answered.trim().to_owned() })
}

/// One UDP request from a socket of its own: the client's address and who answered.
fn udp_flow(vip: SocketAddr) -> Result<(SocketAddr, String)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(vip)?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    socket.send(b"who")?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).with_context(|| format!("no UDP answer from {vip}"))?;
    Ok((socket.local_addr()?, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

fn flows(lb: &LbProcess, args: &[&str]) -> Result<FlowList> {
    let mut all = vec!["flows", "--json"];
    all.extend_from_slice(args);
    Ok(serde_json::from_str(&lb.cli(&all)?)?)
}

fn described(rows: &[FlowRow]) -> BTreeSet<Expected> {
    rows.iter()
        .map(|r| (r.client, r.vip.clone(), r.backend.expect("a configured backend"), r.mode.clone(), r.state.clone()))
        .collect()
}

#[test]
fn lb_flows_lists_the_connections_a_client_holds_with_their_backends() -> Result<()> {
    let lab = Lab::build("flcli", backends_across(1, 1, 2), true)?;
    let both = vec![(0, 1), (1, 1)];
    let vips = [
        VipSpec::new("line-nat", IpAddr::V4(NAT_VIP), LINE_PORT, "tcp", "nat", both.clone()),
        VipSpec::new("line-dsr", IpAddr::V4(VIP_V4), LINE_PORT, "tcp", "dsr", both.clone()),
        VipSpec::new("udp-nat", IpAddr::V4(NAT_VIP), UDP_PORT, "udp", "nat", both),
    ];
    let config =
        lb_config(&lab, &vips).balancer("[flow_timeouts]\ntcp_fin = \"3s\"\ntcp_closed = \"3s\"\nudp = \"3s\"");
    let lb = LbProcess::start(&lab, &config)?;
    let opened = Instant::now();
    let address_of = |name: &str, port: u16| {
        let b = lab.backends.iter().find(|b| b.spec.name == name).expect("a lab backend");
        SocketAddr::new(IpAddr::V4(b.v4), port)
    };
    let (nat, dsr, udp) = (
        SocketAddr::new(NAT_VIP.into(), LINE_PORT),
        SocketAddr::new(VIP_V4.into(), LINE_PORT),
        SocketAddr::new(NAT_VIP.into(), UDP_PORT),
    );
    let (held, datagrams) = lab.client.run(move || -> Result<_> {
        let held = [nat, dsr].into_iter().flat_map(|vip| (0..6).map(move |_| (vip, hold(vip)))).collect::<Vec<_>>();
        let datagrams = (0..3).map(|_| udp_flow(udp)).collect::<Result<Vec<_>>>()?;
        Ok((held.into_iter().map(|(vip, h)| h.map(|h| (vip, h))).collect::<Result<Vec<_>>>()?, datagrams))
    })??;
    let vip_name = |vip: SocketAddr| if vip == nat { "line-nat" } else { "line-dsr" };
    let mode = |vip: SocketAddr| if vip == nat { "nat" } else { "dsr" };
    let mut expected: BTreeSet<Expected> = held
        .iter()
        .map(|(vip, h)| {
            let backend = address_of(&h.answered, LINE_PORT);
            (h.client, vip_name(*vip).into(), backend, mode(*vip).into(), "established".into())
        })
        .collect();
    expected.extend(datagrams.iter().map(|(client, answered)| {
        (*client, "udp-nat".into(), address_of(answered, UDP_PORT), "nat".into(), "udp".into())
    }));

    let all = flows(&lb, &[])?;
    assert_eq!(described(&all.flows), expected, "lb flows lists exactly the flows opened");
    assert_eq!((all.entries, all.matched), (15, 15));
    assert!(all.flows.iter().all(|r| (r.mode == "nat") == r.nat_port.is_some()), "{:?}", all.flows);
    // The filters.
    let only = |pick: &dyn Fn(&Expected) -> bool| expected.iter().filter(|e| pick(e)).cloned().collect::<BTreeSet<_>>();
    assert_eq!(described(&flows(&lb, &["--vip", "line-nat"])?.flows), only(&|e| e.1 == "line-nat"));
    let b0 = address_of("r1-z1-b1", LINE_PORT);
    assert_eq!(described(&flows(&lb, &["--backend", &b0.to_string()])?.flows), only(&|e| e.2 == b0));
    let one = held[0].1.client;
    assert_eq!(described(&flows(&lb, &["--client", &one.to_string()])?.flows), only(&|e| e.0 == one));
    assert_eq!(flows(&lb, &["--client", "10.0.0.0/24"])?.matched, 15);
    assert_eq!(flows(&lb, &["--client", "10.0.9.0/24"])?.matched, 0);
    let capped = flows(&lb, &["--limit", "4"])?;
    assert_eq!((capped.flows.len(), capped.matched), (4, 15));
    let table = lb.cli(&["flows", "--limit", "4"])?;
    assert!(table.starts_with("client ") && table.contains("11 more flows match"), "{table}");
    let e = lb.cli(&["flows", "--vip", "nope"]).unwrap_err();
    assert!(format!("{e:#}").contains("no VIP is named \"nope\""), "{e:#}");

    // `lb status --vip`: that VIP and its backends only.
    let status = lb.cli(&["status", "--vip", "line-dsr"])?;
    assert!(status.contains("VIP line-dsr ") && !status.contains("VIP line-nat"), "{status}");
    assert_eq!(status.lines().filter(|l| l.contains("(r1/z1)")).count(), 2, "{status}");

    // Ages in whole seconds of the packet path's clock: none older than the test's flows.
    let oldest = opened.elapsed().as_secs() + 1;
    assert!(all.flows.iter().all(|r| r.age_s <= oldest), "ages over {oldest} s: {:?}", all.flows);
    std::thread::sleep(Duration::from_secs(2));
    let later = flows(&lb, &[])?; // UDP flows may be gone by now (udp = 3s)
    let aged = |r: &FlowRow| {
        all.flows.iter().find(|a| (a.client, &a.protocol) == (r.client, &r.protocol)).is_some_and(|a| r.age_s > a.age_s)
    };
    assert!(later.flows.iter().all(aged), "2 s later every flow is at least 1 s older: {:?}", later.flows);

    // The client closes: nat sees both sides' FINs (closed), dsr only the client's (fin);
    // then the sweep removes them once their timeouts pass.
    drop(held.into_iter().map(|(_, h)| h.stream).collect::<Vec<_>>());
    let closing =
        |e: &Expected| (e.0, e.1.clone(), e.2, e.3.clone(), if e.3 == "nat" { "closed" } else { "fin" }.into());
    let want: BTreeSet<Expected> = expected.iter().filter(|e| e.4 != "udp").map(closing).collect();
    let tcp = || -> Result<BTreeSet<Expected>> {
        let list = flows(&lb, &[])?;
        Ok(described(&list.flows).into_iter().filter(|e| e.4 != "udp").collect())
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = tcp()?;
    while seen != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        seen = tcp()?;
    }
    assert_eq!(seen, want, "after the client closed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !flows(&lb, &[])?.flows.is_empty() {
        ensure!(Instant::now() < deadline, "flows left 10 s after their timeouts: {:?}", flows(&lb, &[])?.flows);
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
