//! Existing flows are found before their VIP: a flow entry names its VIP by id, and
//! `VIP_ENTRIES` holds each id's VIP. Ids are reused once a VIP is gone, so an entry's id
//! is trusted only while that id's VIP is the flow's destination.

use anyhow::{Result, ensure};
use lb_tests::packet_env::{LB_MAC, PacketEnv};
use lb_tests::packets::*;

/// The balancer section of [`CONFIG`] and dsr TCP VIPs of (name, address, port, backend).
fn vips(list: &[(&str, &str, u16, u8)]) -> String {
    let mut text = CONFIG.split("[[vip]]").next().expect("balancer section").to_owned();
    for (name, address, port, backend) in list {
        text += &format!(
            "[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nmode = \"dsr\"\n[[vip.backend]]\naddress = \"10.0.1.{backend}\"\n"
        );
    }
    text
}

#[test]
fn a_flow_of_a_removed_vip_is_not_taken_by_the_vip_that_got_its_id() -> Result<()> {
    // "first" has id 0; "keeper" keeps its address a VIP address once "first" is gone.
    let mut env = PacketEnv::new(
        "fxvipid",
        &vips(&[("first", "10.100.0.2", 80, 13), ("keeper", "10.100.0.2", 81, 14)]),
        NEIGHBOURS,
    )?;
    let to_first = |syn| tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, CPORT, 80, syn);
    let other_client = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, CPORT + 1, 80, true);
    for packet in [to_first(true), other_client] {
        let (verdict, out) = env.run("xdp_lb", &packet)?;
        ensure!(verdict == XDP_TX && out[5] == 13, "first's flows: verdict {verdict}, to backend {}", out[5]);
    }
    ensure!(env.dataplane.vip_stats(0)?.new_flows == 2, "first has id 0");

    // "first" goes and "second", at another address, takes id 0; the flow entry stays.
    env.reconfigure(&vips(&[("keeper", "10.100.0.2", 81, 14), ("second", "10.100.0.1", 80, 12)]))?;
    let (verdict, out) = env.run("xdp_lb", &tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true))?;
    ensure!(verdict == XDP_TX && out[5] == 12, "second's flow: verdict {verdict}, to backend {}", out[5]);
    ensure!(env.dataplane.vip_stats(0)?.new_flows == 1, "second took id 0, with its counters zeroed");

    // The old flow's entry names id 0, which is second's now: its packets have no VIP.
    let unknown_before = env.dataplane.global_stats()?.drop_unknown_vip_port;
    let (verdict, _) = env.run("xdp_lb", &to_first(false))?;
    ensure!(verdict == XDP_DROP, "a packet of the removed VIP's flow: verdict {verdict}, want a drop");
    ensure!(env.dataplane.global_stats()?.drop_unknown_vip_port == unknown_before + 1, "counted as no VIP's port");
    ensure!(env.dataplane.vip_stats(0)?.packets == 1, "second counted none of it");

    // "first" comes back with another id. The old entry's backend id 0 names second's
    // backend now: the flow is not followed there but picks again from first's table.
    env.reconfigure(&vips(&[
        ("keeper", "10.100.0.2", 81, 14),
        ("second", "10.100.0.1", 80, 12),
        ("first", "10.100.0.2", 80, 13),
    ]))?;
    let (verdict, out) = env.run("xdp_lb", &to_first(false))?;
    ensure!(verdict == XDP_TX && out[5] == 13, "first's flow again: verdict {verdict}, to backend {}", out[5]);
    ensure!(env.dataplane.vip_stats(2)?.reopened_flows == 1, "a new flow over the old entry");
    Ok(())
}
