//! The encapsulated modes through BPF_PROG_TEST_RUN: each mode (`ipip`, `gue`), carriage
//! (IPv4 in IPv4, IPv6 in IPv6, IPv4 in IPv6) and protocol, new and existing flows, a VLAN
//! tag, gue's source port per flow, and `xdp_decap` on each encapsulation; and
//! `tc_check_tunnel`, which encapsulates health checks as `xdp_lb` does clients' packets. Expected packets
//! are etherparse's (see `lb_tests::encap_packets`).

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;
use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, VlanId, icmpv4::DestUnreachableHeader};
use lb_common::{BACKEND_ACTIVE, Backend, CHECK_MARK_BASE, CheckTunnel, PROG_DECAP, PROG_LB};
use lb_tests::encap_packets::*;
use lb_tests::packet_env::{LB_MAC, PacketEnv, expect_bytes};
use lb_tests::packets::*;
use lb_userspace::dataplane::DecapConfig;

fn fixtures(tag: &str) -> Fixtures {
    let neighbours = encap_neighbours();
    let neighbours: Vec<&str> = neighbours.iter().map(String::as_str).collect();
    Fixtures { env: PacketEnv::new(tag, &encap_config(), &neighbours).expect("fixture environment") }
}

/// `xdp_decap` set up as on every backend of [`encap_config`] at once.
fn configure_decap(f: &mut Fixtures) -> Result<()> {
    let addresses = EncapVip::all().iter().map(|v| v.backend_ip()).collect();
    f.env.dataplane.configure_decap(&DecapConfig { gue_port: GUE_PORT, addresses })
}

#[test]
fn each_mode_and_family_encapsulates_new_and_existing_flows_and_decap_restores_them() -> Result<()> {
    let mut f = fixtures("fxencap");
    configure_decap(&mut f)?;
    for v in EncapVip::all() {
        let input = v.client_packet(CPORT);
        let want = v.encapsulated(&input, CPORT, None);
        // The first packet opens the flow; the second follows its entry.
        f.case(&format!("{} new flow", v.name()), &input, XDP_TX, Some(&want))?;
        f.case(&format!("{} existing flow", v.name()), &input, XDP_TX, Some(&want))?;
        let (verdict, out) = f.env.run(PROG_DECAP, &want)?;
        assert_eq!(verdict, XDP_PASS, "{}", v.name());
        expect_bytes(&format!("{} decapsulated", v.name()), &out, &v.decapsulated(&input, &want, false))?;
    }
    for (id, v) in EncapVip::all().iter().enumerate() {
        let stats = f.env.dataplane.vip_stats(id as u32)?;
        assert_eq!((stats.packets, stats.new_flows, stats.encapsulated_packets), (2, 1, 2), "{}", v.name());
        assert_eq!(stats.reply_packets, 0, "{}", v.name());
    }
    let decap = f.env.dataplane.decap_stats()?;
    assert_eq!((decap.decapsulated, decap.not_for_host, decap.passed), (EncapVip::all().len() as u64, 0, 0));
    Ok(())
}

#[test]
fn a_vlan_tag_stays_on_the_encapsulated_frame_and_on_the_decapsulated_one() -> Result<()> {
    let mut f = fixtures("fxencvl");
    configure_decap(&mut f)?;
    for v in EncapVip::all().into_iter().filter(|v| !v.udp && v.inner_v4()) {
        let input = write(|out| {
            PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
                .single_vlan(VlanId::try_new(42).expect("vlan id"))
                .ipv4(CLIENT4, v.vip()[..4].try_into().expect("v4"), 64)
                .tcp(CPORT, 80, 1000, 64240)
                .syn()
                .write(out, PAYLOAD)
                .expect("vlan packet")
        });
        let want = v.encapsulated(&input, CPORT, Some(42));
        f.case(&format!("{} with a vlan tag", v.name()), &input, XDP_TX, Some(&want))?;
        let (verdict, out) = f.env.run(PROG_DECAP, &want)?;
        assert_eq!(verdict, XDP_PASS);
        expect_bytes(&format!("{} decapsulated with its tag", v.name()), &out, &v.decapsulated(&input, &want, true))?;
    }
    Ok(())
}

#[test]
fn gue_source_ports_stay_with_their_flow_and_vary_across_flows() -> Result<()> {
    let mut f = fixtures("fxgueport");
    for v in EncapVip::all().into_iter().filter(|v| v.gue) {
        let mut ports = HashSet::new();
        for sport in 30000..30064 {
            let input = v.client_packet(sport);
            let first = f.env.run(PROG_LB, &input)?;
            let again = f.env.run(PROG_LB, &input)?;
            assert_eq!((first.0, again.0), (XDP_TX, XDP_TX), "{}", v.name());
            let outer_sport = |frame: &[u8]| {
                let l4 = ETH_LEN + if v.outer_v4() { 20 } else { 40 };
                u16::from_be_bytes([frame[l4], frame[l4 + 1]])
            };
            assert_eq!(outer_sport(&first.1), outer_sport(&again.1), "{} flow {sport}: the port moved", v.name());
            assert!(outer_sport(&first.1) >= 0xc000, "{}: below the dynamic range", v.name());
            ports.insert(outer_sport(&first.1));
        }
        // 64 flows over 16384 ports: all distinct but for a rare collision.
        assert!(ports.len() >= 60, "{}: only {} source ports for 64 flows", v.name(), ports.len());
    }
    Ok(())
}

#[test]
fn decap_passes_other_hosts_packets_and_plain_ones_untouched() -> Result<()> {
    let mut f = fixtures("fxdecapno");
    let v = EncapVip::all()[0];
    let input = v.client_packet(CPORT);
    let encapsulated = v.encapsulated(&input, CPORT, None);
    // Configured for other addresses only: the outer destination is not this host's.
    let other = DecapConfig { gue_port: GUE_PORT, addresses: vec!["10.9.9.9".parse()?] };
    f.env.dataplane.configure_decap(&other)?;
    for (name, packet) in [("not for this host", &encapsulated), ("not encapsulated", &input)] {
        let (verdict, out) = f.env.run(PROG_DECAP, packet)?;
        assert_eq!(verdict, XDP_PASS, "{name}");
        expect_bytes(name, &out, packet)?;
    }
    // UDP to another port than gue's is no gue packet.
    let gue = EncapVip::all().into_iter().find(|v| v.gue && v.outer_v4()).expect("a gue vip");
    configure_decap(&mut f)?;
    let mut other_port = gue.encapsulated(&gue.client_packet(CPORT), CPORT, None);
    other_port[ETH_LEN + 22..ETH_LEN + 24].copy_from_slice(&(GUE_PORT + 1).to_be_bytes());
    let (verdict, out) = f.env.run(PROG_DECAP, &other_port)?;
    assert_eq!(verdict, XDP_PASS);
    expect_bytes("udp to another port", &out, &other_port)?;
    let decap = f.env.dataplane.decap_stats()?;
    assert_eq!((decap.decapsulated, decap.not_for_host, decap.passed), (0, 1, 2));
    Ok(())
}

#[test]
fn a_packet_too_big_once_encapsulated_is_answered_with_the_mtu_that_fits() -> Result<()> {
    let mut f = fixtures("fxtoobig");
    // The fixture interface's MTU is 1500: a 1500-byte packet no longer fits once wrapped.
    for (id, v) in EncapVip::all().iter().enumerate() {
        let input = v.client_packet_of(CPORT, 1500);
        let mtu = (1500 - v.added()) as u32;
        f.case(&format!("{} too big", v.name()), &input, XDP_TX, Some(&v.too_big_answer(&input, mtu)))?;
        // One that fits exactly goes through, encapsulated.
        let fits = v.client_packet_of(CPORT, mtu as usize);
        f.case(&format!("{} fitting", v.name()), &fits, XDP_TX, Some(&v.encapsulated(&fits, CPORT, None)))?;
        let stats = f.env.dataplane.vip_stats(id as u32)?;
        assert_eq!((stats.icmp_too_big_sent, stats.encapsulated_packets), (1, 1), "{}", v.name());
    }
    Ok(())
}

#[test]
fn icmp_errors_about_an_encapsulated_flow_go_to_its_backend_encapsulated() -> Result<()> {
    let mut f = fixtures("fxencicmp");
    for (id, v) in EncapVip::all().iter().enumerate().filter(|(_, v)| !v.udp) {
        f.case(&format!("{} opens the flow", v.name()), &v.client_packet(CPORT), XDP_TX, None)?;
        // A router's error about a VIP -> client segment of the flow.
        let input = if v.inner_v4() {
            let vip: [u8; 4] = v.vip()[..4].try_into()?;
            let kind =
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 });
            write(|out| {
                PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
                    .ipv4([10, 0, 0, 254], vip, 64)
                    .icmpv4(kind)
                    .write(out, &quoted_v4(vip, CLIENT4, 80, CPORT))
                    .expect("icmp")
            })
        } else {
            let quoted = write(|out| {
                PacketBuilder::ipv6(v.vip(), v6(CLIENT6), 63)
                    .tcp(80, CPORT, 5000, 64240)
                    .write(out, PAYLOAD)
                    .expect("quoted6")
            });
            write(|out| {
                PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
                    .ipv6(v6("fd00::fe"), v.vip(), 64)
                    .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
                    .write(out, &quoted)
                    .expect("icmpv6")
            })
        };
        // Encapsulated as the flow's own packets are (gue: the flow's source port).
        let want = v.encapsulated(&input, CPORT, None);
        f.case(&format!("{} icmp error", v.name()), &input, XDP_TX, Some(&want))?;
        assert_eq!(f.env.dataplane.vip_stats(id as u32)?.icmp_errors_forwarded, 1, "{}", v.name());
    }
    Ok(())
}

/// `tc_check_tunnel`'s verdicts (`TC_ACT_*`).
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

#[test]
fn a_check_is_encapsulated_for_the_backend_its_mark_names_as_a_client_flow_would_be() -> Result<()> {
    let mut f = fixtures("fxchktn");
    let vips = EncapVip::all();
    let tunnels: BTreeMap<u32, CheckTunnel> = vips
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let family = if v.outer_v4() { lb_common::FAMILY_V4 } else { lb_common::FAMILY_V6 };
            let backend = Backend { addr: v.backend(), port: 0, family, flags: BACKEND_ACTIVE };
            (CHECK_MARK_BASE | i as u32, CheckTunnel { backend, gue: v.gue as u8, _pad: [0; 3] })
        })
        .collect();
    f.env.dataplane.configure_check_tunnels(&tunnels)?;
    for (i, v) in vips.iter().enumerate() {
        let input = v.client_packet(CPORT);
        let (verdict, out) = f.env.run_check_tunnel(&input, CHECK_MARK_BASE | i as u32)?;
        if v.udp {
            // Checks are TCP: nothing else is sent through the device.
            assert_eq!(verdict, TC_ACT_SHOT, "{}", v.name());
            continue;
        }
        assert_eq!(verdict, TC_ACT_REDIRECT, "{}", v.name());
        // Byte for byte what xdp_lb sends for the same packet, from the ethertype on: the
        // MAC addresses are the neighbour table's, filled in on the way out.
        let want = v.encapsulated(&input, CPORT, None);
        expect_bytes(&format!("{} check, MACs", v.name()), &out[..12], &input[..12])?;
        expect_bytes(&format!("{} check", v.name()), &out[12..], &want[12..])?;
    }
    // A packet with no check's mark (or another check's unknown one) is dropped.
    let input = vips[0].client_packet(CPORT);
    for mark in [0, CHECK_MARK_BASE | 0xffff] {
        assert_eq!(f.env.run_check_tunnel(&input, mark)?.0, TC_ACT_SHOT, "mark {mark:#x}");
    }
    Ok(())
}
