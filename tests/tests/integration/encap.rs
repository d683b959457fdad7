//! End to end, encapsulated: ipip and gue VIPs in front of backends behind a router (two
//! dual-stack backends in two subnets, one IPv6-only), each decapsulating with `xdp_decap`
//! attached by `lb decap attach`. Real HTTP over new connections and UDP from the client,
//! over IPv4 (in IPv4, and in IPv6 to the IPv6-only backend) and IPv6, and requests of
//! full-size segments through path MTU discovery. Health checks through the tunnels: a
//! backend without its decapsulation or its VIP fails them, though its plain port answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{
    self, BackendSpec, CLIENT_V4, CLIENT_V6, HTTP_PORT, Lab, LbProcess, UDP_PORT, VIP_V4, VIP_V6, VipSpec, http_get,
    http_get_padded, tally, udp_request,
};
use lb_userspace::api::status::Status;

fn routed_lab(tag: &str) -> Result<Lab> {
    let mut lab = Lab::build(tag, Vec::new(), false)?;
    for (i, ipv6_only) in [false, false, true].into_iter().enumerate() {
        let spec = BackendSpec { name: format!("routed-{i}"), region: String::new(), zone: String::new() };
        lab.add_routed_backend(spec, ipv6_only)?;
    }
    Ok(lab)
}

/// Backend `b`'s address for a VIP of family `v6`: its own of that family, or for an
/// IPv6-only backend its IPv6 one (IPv4 in IPv6).
fn address_for(b: &lab::Backend, v6: bool) -> IpAddr {
    b.addr(v6 || b.v4.is_unspecified())
}

/// `backend = [...]` of a VIP of family `v6` over every backend of `lab`.
fn backend_list(lab: &Lab, v6: bool) -> String {
    let addrs: Vec<String> =
        lab.backends.iter().map(|b| format!("{{ address = \"{}\" }}", address_for(b, v6))).collect();
    format!("backend = [{}]", addrs.join(", "))
}

/// A config of `vips` (name, address, mode, check type) over every backend of `lab`, each
/// VIP checked with `timing` (its interval and timeout), thresholds 2 and no panic mode.
fn checked_config(lab: &Lab, timing: &str, vips: &[(&str, IpAddr, &'static str, &str)]) -> lab::LabConfig {
    let specs: Vec<VipSpec> = vips
        .iter()
        .map(|&(name, addr, mode, _)| VipSpec::new(name, addr, HTTP_PORT, "tcp", mode, Vec::new()))
        .collect();
    vips.iter().fold(lab::lb_config(lab, &specs), |config, &(name, addr, _, kind)| {
        let check = format!(
            "health_check = {{ type = \"{kind}\", {timing}, unhealthy_threshold = 2, healthy_threshold = 2 }}\npanic_threshold = 0"
        );
        config.vip(name, &format!("{}\n{check}", backend_list(lab, addr.is_ipv6())))
    })
}

/// `n` HTTP requests (a new connection each) and `n` UDP requests to `vip`; all answered.
fn requests(lab: &Lab, vip: IpAddr, n: usize) -> Result<(Vec<String>, Vec<String>)> {
    lab.client.run(move || -> Result<_> {
        let http = (0..n).map(|_| http_get(SocketAddr::new(vip, HTTP_PORT))).collect::<Result<Vec<_>>>()?;
        let udp = (0..n).map(|_| udp_request(SocketAddr::new(vip, UDP_PORT))).collect::<Result<Vec<_>>>()?;
        Ok((http, udp))
    })?
}

#[test]
fn ipip_and_gue_reach_routed_and_ipv6_only_backends_that_answer_clients_directly() -> Result<()> {
    let lab = routed_lab("e2enc")?;
    let _decaps = lab::decap_on_backends(&lab)?;
    // IPv4 VIPs: two IPv4 backends and the IPv6-only one (IPv4 in IPv6); IPv6 VIPs: all three.
    let backends = |v6: bool| backend_list(&lab, v6);
    let (v4, v6) = (IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6));
    let vips = [
        VipSpec::new("http4", v4, HTTP_PORT, "tcp", "ipip", Vec::new()),
        VipSpec::new("udp4", v4, UDP_PORT, "udp", "gue", Vec::new()),
        VipSpec::new("http6", v6, HTTP_PORT, "tcp", "gue", Vec::new()),
        VipSpec::new("udp6", v6, UDP_PORT, "udp", "ipip", Vec::new()),
    ];
    let config = lab::lb_config(&lab, &vips)
        .vip("http4", &backends(false))
        .vip("udp4", &backends(false))
        .vip("http6", &backends(true))
        .vip("udp6", &backends(true));
    let lb = LbProcess::start(&lab, &config)?;
    // 60 requests over 3 backends: one left without any has odds of 3 x (2/3)^60 < 1e-10.
    let n = 60;
    for vip in [v4, v6] {
        let (http, udp) = requests(&lab, vip, n)?;
        for (what, answers) in [("http", http), ("udp", udp)] {
            let counts = tally(answers);
            ensure!(counts.len() == lab.backends.len(), "{what} to {vip}: answered by {counts:?}");
        }
    }
    for b in &lab.backends {
        let served = b.served();
        ensure!(served.http as usize + served.udp as usize > 0, "{} served nothing", b.spec.name);
        // Every request came from the client's own addresses: the inner packet is untouched.
        let want: BTreeSet<IpAddr> = [IpAddr::V4(CLIENT_V4), IpAddr::V6(CLIENT_V6)].into();
        ensure!(b.clients() == want, "{}: clients {:?}", b.spec.name, b.clients());
    }
    // Requests of full-size (1500-byte) segments on 1500-MTU links: too big once encapsulated,
    // answered by the balancer with the MTU that fits, resent smaller by the client's path
    // MTU discovery, and served.
    for vip in [v4, v6] {
        let name = lab.client.run(move || http_get_padded(SocketAddr::new(vip, HTTP_PORT), 4000))??;
        ensure!(lab.backends.iter().any(|b| b.spec.name == name), "a big request to {vip} answered by {name:?}");
    }
    // Replies went from the backends to the client directly: none crossed the balancer.
    let status: Status = serde_json::from_str(&lb.cli(&["status", "--json"])?).context("lb status --json")?;
    for vip in &status.vips {
        let c = &vip.counters;
        ensure!(c.reply_packets == 0, "{}: {} replies crossed the balancer", vip.name, c.reply_packets);
        let answered = c.icmp_too_big_sent;
        ensure!(
            c.encapsulated_packets + answered == c.packets,
            "{}: every packet goes encapsulated or is answered: {c:?}",
            vip.name
        );
        ensure!(c.new_flows > 0 && c.packets >= n as u64, "{}: {c:?}", vip.name);
        let too_big = c.icmp_too_big_sent;
        ensure!((too_big > 0) == vip.name.starts_with("http"), "{}: {too_big} too-big answers", vip.name);
    }
    Ok(())
}

/// Each backend's state in each VIP (`lb status`), by (VIP name, backend address).
fn states(lb: &LbProcess) -> Result<BTreeMap<(String, IpAddr), String>> {
    let status: Status = serde_json::from_str(&lb.cli(&["status", "--json"])?).context("lb status --json")?;
    Ok(status
        .vips
        .into_iter()
        .flat_map(|v| v.backends.into_iter().map(move |b| ((v.name.clone(), b.address.ip()), b.state)))
        .collect())
}

/// Waits (at most 20 s) until every backend of `lab` is in the state `want` gives it.
fn wait_for_states(lb: &LbProcess, lab: &Lab, want: impl Fn(&str, usize) -> &'static str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states = states(lb)?;
        let wrong: Vec<_> = states
            .iter()
            .filter(|((vip, addr), state)| {
                let i = lab.backends.iter().position(|b| IpAddr::V4(b.v4) == *addr || IpAddr::V6(b.v6) == *addr);
                i.is_none_or(|i| state.as_str() != want(vip, i))
            })
            .collect();
        if wrong.is_empty() && !states.is_empty() {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "backends not yet as wanted: {wrong:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Backends start healthy: this checks that they stay as `want` says over `span` (five
/// check intervals and more; two failures in a row would flip one).
fn states_hold(lb: &LbProcess, lab: &Lab, want: impl Fn(&str, usize) -> &'static str, span: Duration) -> Result<()> {
    let until = Instant::now() + span;
    while Instant::now() < until {
        for ((vip, addr), state) in states(lb)? {
            let i = lab.backends.iter().position(|b| IpAddr::V4(b.v4) == addr || IpAddr::V6(b.v6) == addr);
            ensure!(i.is_some_and(|i| state == want(&vip, i)), "{vip}: backend {addr} went {state}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A plain TCP connection from the balancer to backend `i`'s own address answers.
fn plain_port_answers(lab: &Lab, i: usize) -> Result<()> {
    let addr = SocketAddr::new(address_for(&lab.backends[i], false), HTTP_PORT);
    lab.lb
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?
        .with_context(|| format!("{addr}"))?;
    Ok(())
}

#[test]
fn checks_go_through_the_tunnel_so_a_backend_without_its_decap_or_its_vip_fails_them() -> Result<()> {
    let lab = routed_lab("e2hck")?;
    let mut decaps = lab::decap_on_backends(&lab)?;
    let (v4, v6) = (IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6));
    let vips = [("http4", v4, "ipip", "http"), ("http6", v6, "gue", "tcp")];
    let config = checked_config(&lab, "interval = \"200ms\", timeout = \"150ms\"", &vips);
    let lb = LbProcess::start(&lab, &config)?;
    // The IPv4 VIP's third backend is IPv6-only: its checks go IPv4 in IPv6.
    states_hold(&lb, &lab, |_, _| "available", Duration::from_millis(1500)).context("healthy through their tunnels")?;

    // Backend 0 loses its decapsulation: its checks fail, though its port still answers.
    decaps.remove(0);
    let only_0 = |_: &str, i| if i == 0 { "unhealthy" } else { "available" };
    wait_for_states(&lb, &lab, only_0)?;
    states_hold(&lb, &lab, only_0, Duration::from_millis(1000))?;
    plain_port_answers(&lab, 0)?;
    // Backend 1 loses the VIPs on its loopback: the same.
    let b1 = &lab.backends[1].ns;
    b1.ip(&["addr", "del", &format!("{VIP_V4}/32"), "dev", "lo"])?;
    b1.ip(&["addr", "del", &format!("{VIP_V6}/128"), "dev", "lo"])?;
    wait_for_states(&lb, &lab, |_, i| if i == 2 { "available" } else { "unhealthy" })?;
    plain_port_answers(&lab, 1)?;
    // New connections go to the one backend left, through its tunnel.
    for vip in [v4, v6] {
        let http = lab
            .client
            .run(move || (0..10).map(|_| http_get(SocketAddr::new(vip, HTTP_PORT))).collect::<Result<Vec<_>>>())??;
        let counts = tally(http);
        ensure!(counts.keys().eq([&lab.backends[2].spec.name]), "{vip}: answered by {counts:?}");
    }

    // Both repaired: healthy again.
    decaps.insert(0, lab::Decap::attach(&lab.backends[0].ns)?);
    b1.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"])?;
    b1.ip(&["addr", "add", &format!("{VIP_V6}/128"), "dev", "lo", "nodad"])?;
    wait_for_states(&lb, &lab, |_, _| "available")?;

    // The device and rules are the controller's: gone when it stops.
    ensure!(lab.lb.exec(&["ip", "link", "show", "lb-check"]).is_ok(), "lb-check is up while checks run");
    drop(lb);
    ensure!(lab.lb.exec(&["ip", "link", "show", "lb-check"]).is_err(), "lb-check left behind");
    let rules = lab.lb.run(|| std::process::Command::new("ip").args(["rule", "show"]).output())??;
    ensure!(!String::from_utf8_lossy(&rules.stdout).contains("0x4c42"), "rule left behind");
    Ok(())
}

/// Every check through a tunnel to a VIP goes from the balancer's one address to the VIP's
/// one address and port, whichever backend it checks: they share the local ports. Checks
/// that left each port in TIME_WAIT (60 s) would run out of them; with 32 local ports and
/// 30 checks a second to each VIP, they must not.
#[test]
fn checks_through_the_tunnel_keep_going_on_few_local_ports() -> Result<()> {
    let lab = routed_lab("e2hcp")?;
    let decaps = lab::decap_on_backends(&lab)?;
    lab.lb.sysctl("net.ipv4.ip_local_port_range=40000 40031")?;
    let (v4, v6) = (IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6));
    let vips = [("tcp4", v4, "ipip", "tcp"), ("http6", v6, "gue", "http")];
    let config = checked_config(&lab, "interval = \"100ms\", timeout = \"80ms\"", &vips);
    let mut lb = LbProcess::start(&lab, &config)?;
    // Some 120 checks per VIP, over 32 ports. (The controller's log tells, not `lb status`,
    // whose connections would take the ports too.)
    std::thread::sleep(Duration::from_secs(4));
    let unhealthy = |lb: &mut LbProcess| lb.log().iter().filter(|l| l.contains("backend unhealthy")).count();
    ensure!(unhealthy(&mut lb) == 0, "backends went unhealthy: {:?}", lb.log());
    let status: Status = serde_json::from_str(&lb.cli(&["status", "--json"])?)?;
    ensure!(status.health_check_local_failures == 0, "{} checks failed locally", status.health_check_local_failures);
    // And they still tell broken backends: every one, in both VIPs.
    drop(decaps);
    let (n, deadline) = (2 * lab.backends.len(), Instant::now() + Duration::from_secs(20));
    while unhealthy(&mut lb) < n {
        ensure!(Instant::now() < deadline, "{} of {n} went unhealthy: {:?}", unhealthy(&mut lb), lb.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
