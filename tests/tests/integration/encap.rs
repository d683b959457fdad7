//! End to end, encapsulated: ipip and gue VIPs in front of backends behind a router (two
//! dual-stack backends in two subnets, one IPv6-only), each decapsulating with `xdp_decap`
//! attached by `lb decap attach`. Real HTTP over new connections and UDP from the client,
//! over IPv4 (in IPv4, and in IPv6 to the IPv6-only backend) and IPv6, and requests of
//! full-size segments through path MTU discovery.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

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
    let backends = |v6: bool| {
        let addrs: Vec<String> = lab
            .backends
            .iter()
            .map(|b| {
                format!(
                    "{{ address = \"{}\" }}",
                    if v6 || b.v4.is_unspecified() { b.addr(true) } else { b.addr(false) }
                )
            })
            .collect();
        format!("backend = [{}]", addrs.join(", "))
    };
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
