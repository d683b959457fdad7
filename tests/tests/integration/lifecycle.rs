//! Connection lifecycle fixtures, through BPF_PROG_TEST_RUN, with time compressed (small
//! port ranges, short timeouts, many sequential connections): flow entries live as long
//! as their connection; a nat port comes back once its connection is over and not before;
//! each CPU falls back on nat ports of its own; new connections on an old 4-tuple pick
//! afresh; a missing neighbour entry does not black-hole nat; lengths that don't cover
//! their headers are dropped.

use std::time::Duration;

use anyhow::{Result, ensure};
use etherparse::{Icmpv4Type, PacketBuilder, icmpv4::DestUnreachableHeader};
use lb_common::{FAMILY_V4, FlowKey, PROTO_TCP, SIGNAL_NEIGHBOUR_MISSING, flow_hash};
use lb_tests::packet_env::{LB_MAC, PacketEnv, neighbour_mac};
use lb_tests::packets::*;

fn fixtures(tag: &str, config: &str) -> Fixtures {
    Fixtures { env: PacketEnv::new(tag, config, NEIGHBOURS).expect("fixture environment") }
}

/// A TCP segment from the client `client`:`cport` to the nat VIP.
fn to_vip(client: [u8; 4], cport: u16, flags: fn(&mut etherparse::TcpHeader)) -> Vec<u8> {
    tcp4_segment(CLIENT_MAC, LB_MAC, client, VIP4, cport, 80, flags)
}

/// A TCP segment from the nat VIP's backend to the balancer's `port`.
fn to_balancer(port: u16, flags: fn(&mut etherparse::TcpHeader)) -> Vec<u8> {
    tcp4_segment(neighbour_mac(11), LB_MAC, BACKEND4, LB4, 8080, port, flags)
}

/// Runs `input`, which must be transmitted; returns the packet as it went out.
fn sent(f: &mut Fixtures, what: &str, input: &[u8]) -> Result<Vec<u8>> {
    let (verdict, out) = f.env.run("xdp_lb", input)?;
    ensure!(verdict == XDP_TX, "{what}: verdict {verdict}, want XDP_TX");
    Ok(out)
}

/// A whole nat connection of `client`:`cport`, closed by the client first; returns its
/// balancer-side port.
fn connection(f: &mut Fixtures, client: [u8; 4], cport: u16) -> Result<u16> {
    let (port, _) = ports_of(&sent(f, "SYN", &to_vip(client, cport, syn))?);
    sent(f, "SYN-ACK", &to_balancer(port, syn_ack))?;
    sent(f, "ACK", &to_vip(client, cport, ack))?;
    sent(f, "client FIN", &to_vip(client, cport, fin_ack))?;
    sent(f, "backend FIN", &to_balancer(port, fin_ack))?;
    sent(f, "last ACK", &to_vip(client, cport, ack))?;
    Ok(port)
}

#[test]
fn replies_of_one_nat_client_never_reach_another() -> Result<()> {
    // Small tables, so that other flows fill them.
    let config = config_with("flow_table_size = 32\nnat_port_max = 20063");
    let mut f = fixtures("lcleak", &config);
    let a = CLIENT4;
    let (port_a, _) = ports_of(&sent(&mut f, "A's SYN", &to_vip(a, CPORT, syn))?);
    sent(&mut f, "A's ACK", &to_vip(a, CPORT, ack))?;
    // Many other nat flows (to the UDP VIP's backend) while A keeps sending: with tables
    // that evict, A's reverse entry went and its port was free for the next client.
    for i in 0..200u16 {
        let other = [10, 0, 2, (i % 250) as u8];
        f.env.run("xdp_lb", &udp4(CLIENT_MAC, LB_MAC, other, VIP4, 1000 + i, 53))?;
        sent(&mut f, "A's data", &to_vip(a, CPORT, ack))?;
    }
    // Client B on the 4-tuple whose first port candidate is A's port.
    let b = [10, 0, 0, 3];
    // The config's range: 64 ports from 20000.
    let b_port = *cports_hashing_to(b, port_a, 64, 1).first().expect("a client port whose first candidate is A's");
    let (verdict, out) = f.env.run("xdp_lb", &to_vip(b, b_port, syn))?;
    if verdict == XDP_TX {
        ensure!(ports_of(&out).0 != port_a, "B was given A's port {port_a} while A's connection is alive");
    }
    // The backend answers A's connection: the answer goes to A.
    let out = sent(&mut f, "backend's answer to A", &to_balancer(port_a, ack))?;
    let sliced = etherparse::SlicedPacket::from_ethernet(&out)?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else { anyhow::bail!("not IPv4") };
    ensure!(
        ip.header().destination() == a && ports_of(&out).1 == CPORT,
        "A's reply went to {:?}",
        ip.header().destination()
    );
    Ok(())
}

#[test]
fn nat_ports_come_back_once_connections_end() -> Result<()> {
    // 16 ports, and a closed connection's port free 10 ms after its last packet.
    let config = config_with("nat_port_max = 20015\n[balancer.flow_timeouts]\ntcp_closed = \"10ms\"");
    let mut f = fixtures("lcports", &config);
    let mut used = std::collections::BTreeSet::new();
    for i in 0..600u16 {
        used.insert(connection(&mut f, CLIENT4, 30000 + i)?);
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = f.env.dataplane.vip_stats(0)?;
    assert_eq!((stats.new_flows, stats.drop_nat_ports_exhausted), (600, 0));
    assert!(used.iter().all(|p| (20000..=20015).contains(p)), "{used:?}");
    // The VIP's one backend had 16 ports to give: every connection past those took its port
    // over from one that was over (nothing sweeps here), and the backend counted it.
    let mut taken_over = 0;
    for id in 0..16 {
        taken_over += f.env.dataplane.backend_stats(id)?.nat_ports_taken_over;
    }
    assert!((600 - 16..=600).contains(&taken_over), "{taken_over} ports taken over");
    Ok(())
}

/// Ports of `client` whose first nat port candidate towards the nat VIP, in a range of
/// `span` ports from 20000, is `port`.
fn cports_hashing_to(client: [u8; 4], port: u16, span: u32, n: usize) -> Vec<u16> {
    let first_candidate = |cport: u16| {
        let flow = FlowKey {
            src: addr16(client),
            dst: addr16(VIP4),
            sport: cport,
            dport: 80,
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        NAT_MIN as u32 + flow_hash(&flow, !SEED) % span
    };
    (1024..u16::MAX).filter(|&p| first_candidate(p) == port as u32).take(n).collect()
}

/// Moves the calling thread to `cpu`: BPF_PROG_TEST_RUN runs the program on the caller's.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

#[test]
fn each_cpu_falls_back_on_nat_ports_of_its_own() -> Result<()> {
    let cpus = std::thread::available_parallelism()?.get();
    ensure!(cpus >= 2, "this test needs 2 CPUs, the machine has {cpus}");
    let mut f = fixtures("lccpu", &config_with("nat_port_max = 20255"));
    let cports = cports_hashing_to(CLIENT4, 20200, 256, 10);
    // On CPU 0, nine open connections whose first candidate is the same port: one takes
    // it, eight fall back on CPU 0's cursor.
    pin_to_cpu(0)?;
    let mut taken = std::collections::BTreeSet::new();
    for &cport in &cports[..9] {
        taken.insert(ports_of(&sent(&mut f, "SYN on CPU 0", &to_vip(CLIENT4, cport, syn))?).0);
    }
    ensure!(taken.len() == 9 && taken.contains(&20200), "{taken:?}");
    // On CPU 1, the same first candidate: CPU 1's cursor has ports of its own to offer (when
    // every cursor started at 0, its seven candidates were the ones CPU 0 had just taken).
    pin_to_cpu(1)?;
    let port = ports_of(&sent(&mut f, "SYN on CPU 1", &to_vip(CLIENT4, cports[9], syn))?).0;
    ensure!(!taken.contains(&port), "CPU 1 was given CPU 0's port {port}");
    assert_eq!(f.env.dataplane.vip_stats(0)?.drop_nat_ports_exhausted, 0);
    Ok(())
}

#[test]
fn a_port_waits_out_the_backends_time_wait_before_another_connection_gets_it() -> Result<()> {
    let config =
        config_with("nat_port_max = 20000\n[balancer.flow_timeouts]\ntcp_closed = \"10ms\"\ntcp_time_wait = \"400ms\"");
    let mut f = fixtures("lctw", &config);
    // The backend closes first (HTTP/1.0 style): its socket waits in TIME_WAIT.
    let (port, _) = ports_of(&sent(&mut f, "SYN", &to_vip(CLIENT4, 41000, syn))?);
    assert_eq!(port, 20000);
    sent(&mut f, "SYN-ACK", &to_balancer(port, syn_ack))?;
    sent(&mut f, "ACK", &to_vip(CLIENT4, 41000, ack))?;
    sent(&mut f, "backend FIN", &to_balancer(port, fin_ack))?;
    sent(&mut f, "client FIN", &to_vip(CLIENT4, 41000, fin_ack))?;
    sent(&mut f, "last ACK", &to_balancer(port, ack))?;
    let closed = std::time::Instant::now();
    let next = to_vip(CLIENT4, 41001, syn);
    assert_eq!(f.env.run("xdp_lb", &next)?.0, XDP_DROP, "the only port is in TIME_WAIT at the backend");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(f.env.run("xdp_lb", &next)?.0, XDP_DROP, "still in TIME_WAIT");
    std::thread::sleep(Duration::from_millis(450).saturating_sub(closed.elapsed()));
    assert_eq!(ports_of(&sent(&mut f, "SYN after TIME_WAIT", &next)?).0, 20000);
    assert_eq!(f.env.dataplane.vip_stats(0)?.drop_nat_ports_exhausted, 2);
    // Closed by the client first: the backend has no TIME_WAIT, the port is free soon.
    sent(&mut f, "SYN-ACK", &to_balancer(port, syn_ack))?;
    sent(&mut f, "client FIN", &to_vip(CLIENT4, 41001, fin_ack))?;
    sent(&mut f, "backend FIN", &to_balancer(port, fin_ack))?;
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(ports_of(&sent(&mut f, "SYN of a third client port", &to_vip(CLIENT4, 41002, syn))?).0, 20000);
    Ok(())
}

/// Two backends (10.0.1.12 and .13) behind one VIP in `mode`, weighted `w12`:`w13`.
fn two_backends(mode: &str, proto: &str, w12: u32, w13: u32) -> String {
    let balancer = config_with("flow_table_size = 4096\n[balancer.flow_timeouts]\nudp = \"50ms\"");
    let (balancer, _) = balancer.split_once("[[vip]]").expect("VIPs");
    let port = if mode == "dsr" { "" } else { "port = 8080\n" };
    format!(
        "{balancer}[[vip]]\nname = \"two\"\naddress = \"10.100.0.2\"\nport = 80\nprotocol = \"{proto}\"\nmode = \"{mode}\"\n\
         [[vip.backend]]\naddress = \"10.0.1.12\"\n{port}weight = {w12}\n[[vip.backend]]\naddress = \"10.0.1.13\"\n{port}weight = {w13}\n"
    )
}

/// Share of new flows (out of `ports`) that went to 10.0.1.13, by destination MAC.
fn share_of_13(f: &mut Fixtures, packet: impl Fn(u16) -> Vec<u8>, ports: std::ops::Range<u16>) -> Result<f64> {
    let (mut to_13, mut all) = (0, 0);
    for p in ports {
        let (verdict, out) = f.env.run("xdp_lb", &packet(p))?;
        ensure!(verdict == XDP_TX, "port {p}: verdict {verdict}");
        to_13 += (out[5] == 13) as u32;
        all += 1;
    }
    Ok(to_13 as f64 / all as f64)
}

#[test]
fn new_connections_on_the_4_tuples_of_closed_flows_follow_the_new_weights() -> Result<()> {
    let ports = 1000..1800;
    for mode in ["dsr", "nat"] {
        let mut f = fixtures(&format!("lcw{mode}"), &two_backends(mode, "tcp", 1, 1));
        let seg = |flags: fn(&mut etherparse::TcpHeader)| {
            move |p: u16| tcp4_segment(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, p, 80, flags)
        };
        let before = share_of_13(&mut f, seg(syn), ports.clone())?;
        assert!((before - 0.5).abs() < 0.06, "{mode}: 1:1 gave {before}");
        // The client closes each connection, and the weights change to 1:3.
        share_of_13(&mut f, seg(fin_ack), ports.clone())?;
        f.env.reconfigure(&two_backends(mode, "tcp", 1, 3))?;
        // The client reuses each port for a new connection: the new weights apply.
        let after = share_of_13(&mut f, seg(syn), ports.clone())?;
        assert!((after - 0.75).abs() < 0.05, "{mode}: after the change to 1:3, {after} of new connections went to .13");
        assert_eq!(f.env.dataplane.vip_stats(0)?.reopened_flows, ports.len() as u64);
        // And their packets follow the new entries.
        assert!((share_of_13(&mut f, seg(ack), ports.clone())? - after).abs() < 1e-9);
    }
    // UDP: a datagram after the flow's timeout is a new flow.
    let mut f = fixtures("lcwudp", &two_backends("dsr", "udp", 1, 1));
    let datagram = |p: u16| udp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, p, 80);
    share_of_13(&mut f, datagram, ports.clone())?;
    f.env.reconfigure(&two_backends("dsr", "udp", 1, 3))?;
    assert!((share_of_13(&mut f, datagram, ports.clone())? - 0.5).abs() < 0.06, "within the timeout: old entries");
    std::thread::sleep(Duration::from_millis(80));
    let after = share_of_13(&mut f, datagram, ports.clone())?;
    assert!((after - 0.75).abs() < 0.05, "after the UDP timeout: {after}");
    Ok(())
}

#[test]
fn a_missing_neighbour_hands_nat_to_the_kernel_and_has_dsr_neighbours_resolved() -> Result<()> {
    // Backends and a client the kernel has never resolved (no neighbour entries).
    let config = format!(
        "{}[[vip]]\nname = \"nat\"\naddress = \"10.100.0.3\"\nport = 80\n[[vip.backend]]\naddress = \"10.0.1.21\"\nport = 8080\n\
         [[vip]]\nname = \"dsr\"\naddress = \"10.100.0.4\"\nport = 80\nmode = \"dsr\"\n[[vip.backend]]\naddress = \"10.0.1.22\"\n",
        CONFIG
    );
    let mut f = fixtures("lcneigh", &config);
    let mut signals = f.env.dataplane.take_health_signals().expect("signal reader");
    let (verdict, out) =
        f.env.run("xdp_lb", &tcp4_segment(CLIENT_MAC, LB_MAC, CLIENT4, [10, 100, 0, 3], CPORT, 80, syn))?;
    assert_eq!(verdict, XDP_PASS, "nat: to the kernel, which resolves and forwards");
    let port = nat_port(addr16(CLIENT4), addr16([10, 100, 0, 3]), CPORT, 80, PROTO_TCP, FAMILY_V4);
    expect_bytes(
        "rewritten",
        &out[14..],
        &tcp4_segment(CLIENT_MAC, LB_MAC, LB4, [10, 0, 1, 21], port, 8080, syn)[14..],
    )?;
    let nat_id = 5;
    assert_eq!(f.env.dataplane.vip_stats(nat_id)?.passed_no_neighbour, 1);

    let dsr = tcp4_segment(CLIENT_MAC, LB_MAC, CLIENT4, [10, 100, 0, 4], CPORT, 80, syn);
    assert_eq!(f.env.run("xdp_lb", &dsr)?.0, XDP_DROP, "dsr: still addressed to the VIP");
    assert_eq!(f.env.run("xdp_lb", &dsr)?.0, XDP_DROP);
    assert_eq!(f.env.dataplane.vip_stats(nat_id + 1)?.drop_no_neighbour, 2);
    // The controller is asked to resolve each backend's neighbour, once a second at most.
    let asked: Vec<u32> =
        signals.drain().into_iter().filter(|s| s.kind == SIGNAL_NEIGHBOUR_MISSING).map(|s| s.backend_id).collect();
    assert_eq!(asked, [5, 6], "backend ids of 10.0.1.21 and .22");

    // The reply direction: a nat client the kernel has not resolved.
    let client = [10, 0, 0, 9];
    let (port, _) = ports_of(&sent(&mut f, "SYN of an unresolved client", &to_vip(client, CPORT, syn))?);
    let (verdict, out) = f.env.run("xdp_lb", &to_balancer(port, syn_ack))?;
    assert_eq!(verdict, XDP_PASS);
    expect_bytes("reply", &out[14..], &tcp4_segment(CLIENT_MAC, LB_MAC, VIP4, client, 80, CPORT, syn_ack)[14..])?;
    Ok(())
}

#[test]
fn lengths_that_do_not_cover_their_headers_are_dropped() -> Result<()> {
    let mut f = Fixtures::new("lclen");
    let syn_frame = to_vip(CLIENT4, CPORT, syn);
    let with_ip_len = |frame: &[u8], len: u16| {
        let mut frame = frame.to_vec();
        frame[16..18].copy_from_slice(&len.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = ipv4_header_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        frame
    };
    f.case("IP length inside the TCP header", &with_ip_len(&syn_frame, 30), XDP_DROP, None)?;
    let mut short_offset = syn_frame.clone();
    short_offset[14 + 20 + 12] = 4 << 4;
    f.case("TCP data offset below 5 words", &short_offset, XDP_DROP, None)?;
    let mut long_udp = udp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 53);
    long_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&200u16.to_be_bytes());
    f.case("UDP length beyond the IP packet", &long_udp, XDP_DROP, None)?;
    assert_eq!(f.global().drop_malformed, 3);

    // An ICMP error about a nat flow whose IP length ends before the quoted ports.
    sent(&mut f, "open the flow", &syn_frame)?;
    let quoted = quoted_v4(VIP4, CLIENT4, 80, CPORT);
    let icmp = write(|out| {
        PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4([10, 0, 0, 254], VIP4, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1400,
            }))
            .write(out, &quoted)
            .expect("icmp")
    });
    let cut = with_ip_len(&icmp, 20 + 8 + 20 + 2);
    f.case("ICMP error whose IP length ends inside the quote", &cut, XDP_DROP, None)?;
    assert_eq!(f.global().drop_icmp_unmatched, 1);
    Ok(())
}

/// The IPv4 header checksum of `header` (with its checksum field zeroed).
fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let sum: u32 = header.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    !((folded & 0xffff) + (folded >> 16)) as u16
}

fn expect_bytes(what: &str, got: &[u8], want: &[u8]) -> Result<()> {
    lb_tests::packet_env::expect_bytes(what, got, want)
}
