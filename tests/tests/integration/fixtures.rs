//! Packet fixtures, run through BPF_PROG_TEST_RUN: each case is an input packet, the
//! verdict we expect and the exact packet we expect out. Expected packets are built by
//! etherparse with freshly computed checksums, so equal bytes also prove that the
//! program's incremental checksum updates are right.

use anyhow::Result;
use etherparse::{
    Icmpv4Type, Icmpv6Type, IpNumber, Ipv6FlowLabel, Ipv6Header, PacketBuilder, VlanId, icmpv4::DestUnreachableHeader,
};
use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, SIGNAL_CONNECT_FAILED, SIGNAL_CONNECTED, SIGNAL_HTTP_5XX};
use lb_tests::packet_env::{LB_MAC, PacketEnv, neighbour_mac};
use lb_tests::packets::*;

#[test]
fn nat_ipv4_tcp_forward_and_reply() -> Result<()> {
    let mut f = Fixtures::new("fxnat4");
    let port = nat_port(addr16(CLIENT4), addr16(VIP4), CPORT, 80, PROTO_TCP, FAMILY_V4);
    let syn = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true);
    let want = tcp4(LB_MAC, neighbour_mac(11), LB4, BACKEND4, port, 8080, true);
    f.case("v4 tcp syn to nat vip", &syn, XDP_TX, Some(&want))?;

    // The next packet of the flow takes the same backend and port (flow table).
    let ack = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, false);
    let want = tcp4(LB_MAC, neighbour_mac(11), LB4, BACKEND4, port, 8080, false);
    f.case("v4 tcp ack of the flow", &ack, XDP_TX, Some(&want))?;

    // The backend's reply is translated back to VIP -> client.
    let reply = tcp4(neighbour_mac(11), LB_MAC, BACKEND4, LB4, 8080, port, false);
    let want = tcp4(LB_MAC, CLIENT_MAC, VIP4, CLIENT4, 80, CPORT, false);
    f.case("v4 tcp reply from backend", &reply, XDP_TX, Some(&want))?;

    let stats = f.env.dataplane.vip_stats(0)?;
    assert_eq!((stats.packets, stats.new_flows, stats.reply_packets), (2, 1, 1));
    let backend = f.env.dataplane.backend_stats(0)?;
    assert_eq!((backend.packets, backend.new_flows, backend.reply_packets), (2, 1, 1));
    Ok(())
}

#[test]
fn nat_ipv4_udp_and_vlan() -> Result<()> {
    let mut f = Fixtures::new("fxudp4");
    let port = nat_port(addr16(CLIENT4), addr16(VIP4), CPORT, 53, PROTO_UDP, FAMILY_V4);
    let query = udp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 53);
    let want = udp4(LB_MAC, neighbour_mac(12), LB4, BACKEND4_UDP, port, 5353);
    f.case("v4 udp to nat vip", &query, XDP_TX, Some(&want))?;

    let reply = udp4(neighbour_mac(12), LB_MAC, BACKEND4_UDP, LB4, 5353, port);
    let want = udp4(LB_MAC, CLIENT_MAC, VIP4, CLIENT4, 53, CPORT);
    f.case("v4 udp reply", &reply, XDP_TX, Some(&want))?;

    // One 802.1Q tag: parsed through, kept on the way out.
    let vlan = |smac, dmac, src, dst, sport, dport| {
        write(|out| {
            PacketBuilder::ethernet2(smac, dmac)
                .single_vlan(VlanId::try_new(42).expect("vlan id"))
                .ipv4(src, dst, 64)
                .tcp(sport, dport, 1000, 64240)
                .syn()
                .write(out, PAYLOAD)
                .expect("build vlan packet")
        })
    };
    let port = nat_port(addr16(CLIENT4), addr16(VIP4), CPORT + 1, 80, PROTO_TCP, FAMILY_V4);
    let input = vlan(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT + 1, 80);
    let want = vlan(LB_MAC, neighbour_mac(11), LB4, BACKEND4, port, 8080);
    f.case("v4 tcp syn with a vlan tag", &input, XDP_TX, Some(&want))
}

#[test]
fn dsr_ipv4_tcp_rewrites_only_the_mac() -> Result<()> {
    let mut f = Fixtures::new("fxdsr4");
    let syn = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, CPORT, 80, true);
    let want = tcp4(LB_MAC, neighbour_mac(13), CLIENT4, VIP4_DSR, CPORT, 80, true);
    f.case("v4 tcp syn to dsr vip", &syn, XDP_TX, Some(&want))
}

#[test]
fn ipv6_nat_tcp_and_dsr_udp() -> Result<()> {
    let mut f = Fixtures::new("fxv6");
    let (client, vip, lb, backend) = (v6("fd00::2"), v6("fd00:100::1"), v6("fd00::1"), v6("fd00::1:11"));
    let port = nat_port(client, vip, CPORT, 80, PROTO_TCP, FAMILY_V6);
    let syn = tcp6(CLIENT_MAC, LB_MAC, client, vip, CPORT, 80);
    let want = tcp6(LB_MAC, neighbour_mac(0x11), lb, backend, port, 8080);
    f.case("v6 tcp syn to nat vip", &syn, XDP_TX, Some(&want))?;
    let reply = tcp6(neighbour_mac(0x11), LB_MAC, backend, lb, 8080, port);
    let want = tcp6(LB_MAC, CLIENT_MAC, vip, client, 80, CPORT);
    f.case("v6 tcp reply from backend", &reply, XDP_TX, Some(&want))?;

    let dsr_vip = v6("fd00:100::2");
    let query = udp6(CLIENT_MAC, LB_MAC, client, dsr_vip, CPORT, 9000);
    let want = udp6(LB_MAC, neighbour_mac(0x13), client, dsr_vip, CPORT, 9000);
    f.case("v6 udp to dsr vip", &query, XDP_TX, Some(&want))
}

#[test]
fn icmp_errors_about_a_vip_flow_go_to_its_backend() -> Result<()> {
    let mut f = Fixtures::new("fxicmp");
    let router = [10, 0, 0, 254];
    // Open the nat flow first.
    let port = nat_port(addr16(CLIENT4), addr16(VIP4), CPORT, 80, PROTO_TCP, FAMILY_V4);
    let syn = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true);
    f.case("open the flow", &syn, XDP_TX, None)?;

    // "Fragmentation needed" about a VIP -> client segment.
    let frag_needed =
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 });
    let icmp = |dst, quoted: &[u8], dmac| {
        write(|out| {
            PacketBuilder::ethernet2(CLIENT_MAC, dmac)
                .ipv4(router, dst, 64)
                .icmpv4(frag_needed.clone())
                .write(out, quoted)
                .expect("icmp")
        })
    };
    let input = icmp(VIP4, &quoted_v4(VIP4, CLIENT4, 80, CPORT), LB_MAC);
    // The backend must see an error about what it sent: backend:8080 -> balancer:port.
    // (The quote holds 8 bytes of TCP: ports and sequence number, no checksum.)
    let mut want = icmp(BACKEND4, &quoted_v4(BACKEND4, LB4, 8080, port), neighbour_mac(11));
    want[6..12].copy_from_slice(&LB_MAC);
    f.case("icmp frag-needed to nat vip", &input, XDP_TX, Some(&want))?;

    // Quoting a flow nobody has: dropped and counted.
    let before = f.global().drop_icmp_unmatched;
    let stray = icmp(VIP4, &quoted_v4(VIP4, CLIENT4, 80, CPORT + 7), LB_MAC);
    f.case("icmp error quoting an unknown flow", &stray, XDP_DROP, None)?;
    assert_eq!(f.global().drop_icmp_unmatched, before + 1);

    // ICMPv6 packet-too-big about a dsr flow: forwarded unchanged but for the MACs.
    let (client, vip) = (v6("fd00::2"), v6("fd00:100::2"));
    let query = udp6(CLIENT_MAC, LB_MAC, client, vip, CPORT, 9000);
    f.case("open the v6 dsr flow", &query, XDP_TX, None)?;
    let quoted =
        write(|out| PacketBuilder::ipv6(vip, client, 63).udp(9000, CPORT).write(out, b"answer").expect("quoted6"));
    let too_big = |smac, dmac| {
        write(|out| {
            PacketBuilder::ethernet2(smac, dmac)
                .ipv6(v6("fd00::fe"), vip, 64)
                .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                .write(out, &quoted)
                .expect("icmpv6")
        })
    };
    f.case(
        "icmpv6 packet-too-big to dsr vip",
        &too_big(CLIENT_MAC, LB_MAC),
        XDP_TX,
        Some(&too_big(LB_MAC, neighbour_mac(0x13))),
    )
}

#[test]
fn unusual_packets_are_passed_or_dropped_on_purpose_and_counted() -> Result<()> {
    let mut f = Fixtures::new("fxbad");

    let fragment = tcp4_with(VIP4, |ip| ip.more_fragments = true);
    f.case("v4 fragment to a vip address", &fragment, XDP_DROP, None)?;
    let fragment_elsewhere = tcp4_with([10, 0, 9, 9], |ip| ip.more_fragments = true);
    f.case("v4 fragment to another host", &fragment_elsewhere, XDP_PASS, Some(&fragment_elsewhere))?;
    assert_eq!(f.global().drop_fragment, 1);

    let options = tcp4_with(VIP4, |ip| ip.options = [1u8, 1, 1, 0][..].try_into().expect("options"));
    f.case("v4 options to a vip", &options, XDP_DROP, None)?;
    assert_eq!(f.global().drop_ip_options, 1);

    let ext = Ipv6Header {
        traffic_class: 0,
        flow_label: Ipv6FlowLabel::ZERO,
        payload_length: 8,
        next_header: IpNumber::IPV6_HEADER_HOP_BY_HOP,
        hop_limit: 64,
        source: v6("fd00::2"),
        destination: v6("fd00:100::1"),
    };
    let mut hbh = write(|out| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv6(ext.source, ext.destination, 64)
            .udp(1, 2)
            .write(out, &[])
            .expect("v6")
    });
    hbh.truncate(14);
    ext.write(&mut hbh).expect("v6 header");
    hbh.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
    f.case("v6 hop-by-hop header to a vip", &hbh, XDP_DROP, None)?;
    assert_eq!(f.global().drop_ip_options, 2);

    let syn = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true);
    f.case("truncated ipv4 header", &syn[..14 + 12], XDP_DROP, None)?;
    f.case("truncated tcp header", &syn[..14 + 20 + 10], XDP_DROP, None)?;
    let mut long = syn.clone();
    long[14 + 2..14 + 4].copy_from_slice(&2000u16.to_be_bytes());
    f.case("ipv4 total length beyond the frame", &long, XDP_DROP, None)?;
    // (Frames shorter than an Ethernet header never reach XDP: BPF_PROG_TEST_RUN refuses them.)
    assert_eq!(f.global().drop_malformed, 3);

    let unknown_port = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 81, true);
    f.case("unknown port on a vip address", &unknown_port, XDP_DROP, None)?;
    assert_eq!(f.global().drop_unknown_vip_port, 1);

    let to_lb = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, LB4, CPORT, 22, true);
    f.case("tcp to the balancer's own address", &to_lb, XDP_PASS, Some(&to_lb))?;
    let elsewhere = udp4(CLIENT_MAC, LB_MAC, CLIENT4, [10, 0, 9, 9], CPORT, 53);
    f.case("non-vip udp", &elsewhere, XDP_PASS, Some(&elsewhere))?;
    let v6_elsewhere = udp6(CLIENT_MAC, LB_MAC, v6("fd00::2"), v6("fd00::9"), CPORT, 53);
    f.case("non-vip ipv6", &v6_elsewhere, XDP_PASS, Some(&v6_elsewhere))?;
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    f.case("arp", &arp, XDP_PASS, Some(&arp))?;
    let ping = write(|out| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT4, LB4, 64)
            .icmpv4_echo_request(1, 1)
            .write(out, b"ping")
            .expect("ping")
    });
    f.case("ping to the balancer", &ping, XDP_PASS, Some(&ping))?;
    assert_eq!(f.global().passed, 6);
    Ok(())
}

/// A bucket that refills one token an hour: within a test, it only empties.
const HOURLY: &str = r#"fill_interval = "1h""#;

#[test]
fn new_flow_limit_admits_its_burst_then_drops_only_new_flows() -> Result<()> {
    let mut f = Fixtures::with_limits("fxrlnew", &format!("new_flow_limit = {{ quota = 1, burst = 3, {HOURLY} }}"));
    assert_eq!(f.syns(CLIENT4, 1000..1005)?, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP], "burst of 3 SYNs");
    // A retransmitted SYN of an admitted flow and its later packets are not new flows.
    assert_eq!(f.tcp(CLIENT4, 1000, true)?, XDP_TX, "SYN retransmission of an admitted flow");
    assert_eq!(f.tcp(CLIENT4, 1001, false)?, XDP_TX, "ACK of an admitted flow");
    // A non-SYN packet without a flow entry belongs to a connection that exists elsewhere
    // (evicted entry, ECMP change): never cut by the new-flow limit.
    assert_eq!(f.tcp(CLIENT4, 1010, false)?, XDP_TX, "ACK of an unknown connection");
    let stats = f.vip(LIMITED_TCP);
    assert_eq!((stats.new_flows, stats.rate_limited_new_flows), (4, 2));
    assert_eq!((stats.rate_limited_sources, stats.rate_limited_packets), (0, 0));

    // UDP: every datagram of a new flow counts; the flow's next datagrams don't.
    let verdicts: Vec<u32> = (2000..2004).map(|port| f.udp(port)).collect::<Result<_>>()?;
    assert_eq!(verdicts, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP], "burst of 3 UDP flows");
    assert_eq!(f.udp(2000)?, XDP_TX, "second datagram of an admitted UDP flow");
    assert_eq!(f.udp(2003)?, XDP_DROP, "a refused flow stays refused while the bucket is empty");
    let stats = f.vip(LIMITED_UDP);
    assert_eq!((stats.new_flows, stats.rate_limited_new_flows), (3, 2));
    Ok(())
}

#[test]
fn source_limit_groups_clients_by_prefix_and_goes_before_the_vip_limit() -> Result<()> {
    let mut f = Fixtures::with_limits(
        "fxrlsrc",
        &format!(
            "source_limit = {{ quota = 1, burst = 2, prefix_len = 24, {HOURLY} }}\nnew_flow_limit = {{ quota = 1, burst = 3, {HOURLY} }}"
        ),
    );
    assert_eq!(f.syns(CLIENT4, 1000..1005)?, [XDP_TX, XDP_TX, XDP_DROP, XDP_DROP, XDP_DROP], "2 per source prefix");
    assert_eq!(f.syns([10, 0, 0, 77], 1000..1001)?, [XDP_DROP], "same /24, same bucket");
    // The 3 refused SYNs above took no VIP token: another prefix still gets the VIP's third.
    assert_eq!(f.syns([10, 0, 5, 2], 1000..1002)?, [XDP_TX, XDP_DROP], "other prefix: VIP limit");
    let stats = f.vip(LIMITED_TCP);
    assert_eq!((stats.new_flows, stats.rate_limited_sources, stats.rate_limited_new_flows), (3, 4, 1));
    Ok(())
}

#[test]
fn packet_limit_counts_packets_of_every_flow() -> Result<()> {
    let mut f = Fixtures::with_limits("fxrlpkt", &format!("packet_limit = {{ quota = 1, burst = 3, {HOURLY} }}"));
    let verdicts = [
        f.tcp(CLIENT4, 1000, true)?,
        f.tcp(CLIENT4, 1000, false)?,
        f.tcp(CLIENT4, 1001, true)?,
        f.tcp(CLIENT4, 1000, false)?,
    ];
    assert_eq!(verdicts, [XDP_TX, XDP_TX, XDP_TX, XDP_DROP]);
    let stats = f.vip(LIMITED_TCP);
    assert_eq!((stats.packets, stats.rate_limited_packets, stats.new_flows), (4, 1, 2));
    Ok(())
}

#[test]
fn buckets_refill_at_their_rate() -> Result<()> {
    // One token every 500 ms, burst 1.
    let mut f = Fixtures::with_limits("fxrlfill", r#"new_flow_limit = { quota = 2, burst = 1 }"#);
    assert_eq!(f.syns(CLIENT4, 1000..1002)?, [XDP_TX, XDP_DROP]);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(f.syns(CLIENT4, 1002..1004)?, [XDP_TX, XDP_DROP], "one token after one refill interval");
    Ok(())
}

#[test]
fn limits_change_with_the_config_without_reloading_the_program() -> Result<()> {
    let limits = |burst: u32| format!("new_flow_limit = {{ quota = 1, burst = {burst}, {HOURLY} }}");
    let mut f = Fixtures::with_limits("fxrlreload", &limits(1));
    assert_eq!(f.syns(CLIENT4, 1000..1002)?, [XDP_TX, XDP_DROP]);
    f.env.reconfigure(&limited(""))?;
    assert_eq!(f.syns(CLIENT4, 1100..1104)?, [XDP_TX; 4], "limit removed");
    // A bigger burst: the token taken above still counts against it.
    f.env.reconfigure(&limited(&limits(5)))?;
    assert_eq!(f.syns(CLIENT4, 1200..1206)?, [XDP_TX, XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP]);
    Ok(())
}

/// [`CONFIG`]'s IPv4 nat TCP VIP with outlier detection on, as an HTTP VIP.
fn watched() -> String {
    CONFIG.replacen("protocol = \"tcp\"\n", "protocol = \"tcp\"\nhttp = true\noutlier_detection = {}\n", 1)
}

#[test]
fn passive_health_signals_report_how_backends_answer() -> Result<()> {
    let mut f = Fixtures { env: PacketEnv::new("fxsig", &watched(), NEIGHBOURS).expect("fixture environment") };
    let mut signals = f.env.dataplane.take_health_signals().expect("health signal reader");
    let kinds = |signals: &mut lb_userspace::dataplane::HealthSignals| -> Vec<(u32, u32, u32)> {
        signals.drain().into_iter().map(|s| (s.vip_id, s.backend_id, s.kind)).collect()
    };
    let open = |f: &mut Fixtures, cport: u16| -> Result<u16> {
        f.case("SYN", &tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, cport, 80, true), XDP_TX, None)?;
        Ok(nat_port(addr16(CLIENT4), addr16(VIP4), cport, 80, PROTO_TCP, FAMILY_V4))
    };

    // Accepted, then a 503: one signal each, then nothing more for the flow.
    let port = open(&mut f, CPORT)?;
    f.case(
        "SYN-ACK",
        &from_backend(port, b"", |t| {
            t.syn = true;
            t.ack = true;
        }),
        XDP_TX,
        None,
    )?;
    let response = |status: &str| {
        from_backend(port, format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(), |t| {
            t.ack = true;
            t.psh = true;
        })
    };
    f.case("503 response", &response("503 Service Unavailable"), XDP_TX, None)?;
    f.case("a later response", &response("200 OK"), XDP_TX, None)?;
    assert_eq!(kinds(&mut signals), [(0, 0, SIGNAL_CONNECTED), (0, 0, SIGNAL_HTTP_5XX)]);

    // Refused: a RST answers the SYN, and goes on to the client.
    let port = open(&mut f, CPORT + 1)?;
    f.case(
        "RST",
        &from_backend(port, b"", |t| {
            t.rst = true;
            t.ack = true;
        }),
        XDP_TX,
        None,
    )?;
    assert_eq!(kinds(&mut signals), [(0, 0, SIGNAL_CONNECT_FAILED)]);

    // Unreachable: an ICMP error to the balancer quoting the SYN it sent the backend.
    let port = open(&mut f, CPORT + 2)?;
    let quoted = write(|out| {
        PacketBuilder::ipv4(LB4, BACKEND4, 63).tcp(port, 8080, 1000, 64240).syn().write(out, b"").expect("quoted")
    });
    let unreachable = write(|out| {
        PacketBuilder::ethernet2(neighbour_mac(11), LB_MAC)
            .ipv4([10, 0, 0, 254], LB4, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host))
            .write(out, &quoted[..28])
            .expect("icmp")
    });
    f.case("host unreachable about a backend leg", &unreachable, XDP_PASS, None)?;
    f.case("the same, again", &unreachable, XDP_PASS, None)?;
    assert_eq!(kinds(&mut signals), [(0, 0, SIGNAL_CONNECT_FAILED)]);

    let backend = f.env.dataplane.backend_stats(0)?;
    assert_eq!((backend.connect_failures, backend.responses_5xx), (2, 1));

    // Unwatched VIPs (here the UDP one) report nothing.
    f.case("unwatched UDP query", &udp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 53), XDP_TX, None)?;
    let port = nat_port(addr16(CLIENT4), addr16(VIP4), CPORT, 53, PROTO_UDP, FAMILY_V4);
    let answer = write(|out| {
        PacketBuilder::ethernet2(neighbour_mac(12), LB_MAC)
            .ipv4(BACKEND4_UDP, LB4, 64)
            .udp(5353, port)
            .write(out, b"answer")
            .expect("udp answer")
    });
    f.case("unwatched UDP answer", &answer, XDP_TX, None)?;
    assert_eq!(kinds(&mut signals), []);
    Ok(())
}

#[test]
fn nat_flows_through_every_limit_are_translated_both_ways() -> Result<()> {
    let limits = "source_limit = { quota = 100 }\nnew_flow_limit = { quota = 100 }\npacket_limit = { quota = 100 }\n";
    let config = CONFIG.replacen("protocol = \"tcp\"\n", &format!("protocol = \"tcp\"\n{limits}"), 1);
    let mut f = Fixtures { env: PacketEnv::new("fxrlnat", &config, NEIGHBOURS).expect("fixture environment") };
    let port = nat_port(addr16(CLIENT4), addr16(VIP4), CPORT, 80, PROTO_TCP, FAMILY_V4);
    let syn = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true);
    let want = tcp4(LB_MAC, neighbour_mac(11), LB4, BACKEND4, port, 8080, true);
    f.case("limited nat syn", &syn, XDP_TX, Some(&want))?;
    let reply = tcp4(neighbour_mac(11), LB_MAC, BACKEND4, LB4, 8080, port, false);
    let want = tcp4(LB_MAC, CLIENT_MAC, VIP4, CLIENT4, 80, CPORT, false);
    f.case("its reply", &reply, XDP_TX, Some(&want))
}

#[test]
fn a_syn_reusing_the_flow_of_a_backend_out_of_service_picks_again() -> Result<()> {
    let config = |drain: Option<u8>| {
        let backend =
            |last: u8| format!("[[vip.backend]]\naddress = \"10.0.1.{last}\"\ndraining = {}\n", drain == Some(last));
        format!(
            "{}\n[[vip]]\nname = \"two\"\naddress = \"10.100.0.2\"\nport = 80\nmode = \"dsr\"\n{}{}",
            CONFIG.split("[[vip]]").next().expect("balancer"),
            backend(12),
            backend(13)
        )
    };
    let mut f = Fixtures { env: PacketEnv::new("fxsyn", &config(None), NEIGHBOURS).expect("fixture environment") };
    let to = |f: &mut Fixtures, syn: bool| -> Result<u8> {
        let (verdict, out) = f.env.run("xdp_lb", &tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, CPORT, 80, syn))?;
        anyhow::ensure!(verdict == XDP_TX, "verdict {verdict}");
        Ok(out[5])
    };
    let first = to(&mut f, true)?;
    f.env.reconfigure(&config(Some(first)))?;
    assert_eq!(to(&mut f, false)?, first, "the flow's packets stay on the draining backend");
    assert_eq!(to(&mut f, true)?, first ^ 12 ^ 13, "a new connection on the same 4-tuple goes elsewhere");
    assert_eq!(to(&mut f, false)?, first ^ 12 ^ 13, "and its packets follow");
    Ok(())
}

/// Found by the fuzzer (tests/tests/packet_fuzz.rs): bytes after the IP packet went out
/// with it. What goes out is the packet whose lengths and checksums were kept right, padded
/// to a minimum Ethernet frame at most.
#[test]
fn frames_go_out_cut_to_their_ip_packet() -> Result<()> {
    let mut f = Fixtures::new("fxpad");
    let padded = |frame: Vec<u8>, pad: usize| [frame, vec![0xab; pad]].concat();
    let port = nat_port(addr16(CLIENT4), addr16(VIP4), CPORT, 80, PROTO_TCP, FAMILY_V4);
    let (client6, dsr6) = (v6("fd00::2"), v6("fd00:100::2"));
    let dsr_ack = |smac, dmac| tcp4_segment(smac, dmac, CLIENT4, VIP4_DSR, CPORT, 80, ack);
    let cases = [
        (
            "nat v4 tcp syn with 40 bytes after its packet",
            padded(tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true), 40),
            tcp4(LB_MAC, neighbour_mac(11), LB4, BACKEND4, port, 8080, true),
        ),
        (
            "nat v4 reply with 3 bytes after its packet",
            padded(tcp4(neighbour_mac(11), LB_MAC, BACKEND4, LB4, 8080, port, false), 3),
            tcp4(LB_MAC, CLIENT_MAC, VIP4, CLIENT4, 80, CPORT, false),
        ),
        (
            "dsr v6 udp with 7 bytes after its packet",
            padded(udp6(CLIENT_MAC, LB_MAC, client6, dsr6, CPORT, 9000), 7),
            udp6(LB_MAC, neighbour_mac(0x13), client6, dsr6, CPORT, 9000),
        ),
        // A 54-byte segment: its padding to 60 bytes stays, what lies beyond goes.
        (
            "dsr v4 ack padded to a minimum frame",
            padded(dsr_ack(CLIENT_MAC, LB_MAC), 6),
            padded(dsr_ack(LB_MAC, neighbour_mac(13)), 6),
        ),
        (
            "dsr v4 ack padded beyond a minimum frame",
            padded(dsr_ack(CLIENT_MAC, LB_MAC), 20),
            padded(dsr_ack(LB_MAC, neighbour_mac(13)), 6),
        ),
    ];
    for (name, input, want) in cases {
        f.case(name, &input, XDP_TX, Some(&want))?;
    }
    Ok(())
}

/// Found by the fuzzer: an ICMPv6 error whose quoted "IPv6 header" had another version was
/// read as IPv6 and delivered to a backend (IPv4 quotes were checked).
#[test]
fn icmpv6_errors_quoting_no_ipv6_header_are_unmatched() -> Result<()> {
    let mut f = Fixtures::new("fxquote6");
    let (client, vip) = (v6("fd00::2"), v6("fd00:100::2"));
    f.case("open the v6 dsr flow", &udp6(CLIENT_MAC, LB_MAC, client, vip, CPORT, 9000), XDP_TX, None)?;
    let error_quoting = |version: u8| {
        let mut quoted =
            write(|out| PacketBuilder::ipv6(vip, client, 63).udp(9000, CPORT).write(out, b"answer").expect("quoted"));
        quoted[0] = version << 4;
        write(|out| {
            PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
                .ipv6(v6("fd00::fe"), vip, 64)
                .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                .write(out, &quoted)
                .expect("icmpv6")
        })
    };
    f.case("quoted version 6", &error_quoting(6), XDP_TX, None)?;
    for version in [0, 4, 13] {
        f.case(&format!("quoted version {version}"), &error_quoting(version), XDP_DROP, None)?;
    }
    assert_eq!(f.global().drop_icmp_unmatched, 3);
    Ok(())
}
