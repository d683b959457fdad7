//! Packet capture in the packet path, run through BPF_PROG_TEST_RUN: the records a packet
//! leaves in `CAPTURE_RING` (as it came in, and as the program sent it, with the verdict,
//! VIP, backend and drop reason), the filters, and nothing at all while capture is off.

use anyhow::{Result, ensure};
use lb_common::*;
use lb_tests::packet_env::{LB_MAC, neighbour_mac};
use lb_tests::packets::*;
use lb_userspace::dataplane::PacketCapture;

/// Fixture ids: VIPs and backends in the order of `CONFIG`.
const NAT_VIP: u32 = 0;
const DSR_VIP: u32 = 2;
const NAT_BACKEND: u32 = 0;
const DSR_BACKEND: u32 = 2;

struct Captured {
    f: Fixtures,
    capture: PacketCapture,
}

impl Captured {
    fn new(tag: &str) -> Self {
        let mut f = Fixtures::new(tag);
        let capture = f.env.dataplane.take_packet_capture().expect("the capture maps");
        Self { f, capture }
    }

    /// Runs `input`, checks the verdict, and returns what the program sent and the records.
    fn run(&mut self, input: &[u8], verdict: u32) -> Result<(Vec<u8>, Vec<CaptureRecord>)> {
        let (got, out) = self.f.env.run("xdp_lb", input)?;
        ensure!(got == verdict, "verdict {got}, want {verdict}");
        Ok((out, std::iter::from_fn(|| self.capture.next_record()).collect()))
    }
}

/// The pair of records of one packet: `input` as it came, `output` as it went.
fn expect_pair(records: &[CaptureRecord], input: &[u8], output: &[u8], verdict: u32, ids: (u32, u32)) -> Result<()> {
    ensure!(records.len() == 2, "{} records, want an in and an out", records.len());
    let (rin, rout) = (&records[0], &records[1]);
    ensure!((rin.direction, rout.direction) == (CAPTURE_IN, CAPTURE_OUT), "directions {rin:?} {rout:?}");
    ensure!(rin.frame() == input && rin.len as usize == input.len(), "the in record is not the input");
    ensure!(rout.frame() == output && rout.len as usize == output.len(), "the out record is not the output");
    for r in records {
        ensure!(r.verdict as u32 == verdict, "record verdict {}, want {verdict}", r.verdict);
        ensure!((r.vip_id, r.backend_id) == ids, "vip and backend {:?}, want {ids:?}", (r.vip_id, r.backend_id));
        ensure!(r.drop_reason == 0 && r.ns != 0 && r.ifindex != 0, "record header {r:?}");
    }
    Ok(())
}

#[test]
fn records_show_each_packet_as_it_came_and_as_it_was_sent() -> Result<()> {
    let mut c = Captured::new("cfxpair");
    let syn = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true);
    let (_, records) = c.run(&syn, XDP_TX)?;
    ensure!(records.is_empty(), "capture is off, yet {} records", records.len());

    c.capture.start(CaptureConfig::default())?;
    let port = nat_port(addr16(CLIENT4), addr16(VIP4), CPORT, 80, PROTO_TCP, FAMILY_V4);
    let ack = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, false);
    let (out, records) = c.run(&ack, XDP_TX)?;
    ensure!(out == tcp4(LB_MAC, neighbour_mac(11), LB4, BACKEND4, port, 8080, false), "nat rewrite");
    expect_pair(&records, &ack, &out, XDP_TX, (NAT_VIP, NAT_BACKEND))?;

    let reply = tcp4(neighbour_mac(11), LB_MAC, BACKEND4, LB4, 8080, port, false);
    let (out, records) = c.run(&reply, XDP_TX)?;
    ensure!(out == tcp4(LB_MAC, CLIENT_MAC, VIP4, CLIENT4, 80, CPORT, false), "nat reply rewrite");
    expect_pair(&records, &reply, &out, XDP_TX, (NAT_VIP, NAT_BACKEND))?;

    let dsr = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, CPORT, 80, true);
    let (out, records) = c.run(&dsr, XDP_TX)?;
    ensure!(out == tcp4(LB_MAC, neighbour_mac(13), CLIENT4, VIP4_DSR, CPORT, 80, true), "dsr rewrite");
    expect_pair(&records, &dsr, &out, XDP_TX, (DSR_VIP, DSR_BACKEND))?;

    let elsewhere = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, [10, 0, 9, 9], CPORT, 80, true);
    let (out, records) = c.run(&elsewhere, XDP_PASS)?;
    expect_pair(&records, &elsewhere, &out, XDP_PASS, (CAPTURE_NONE, CAPTURE_NONE))?;

    c.capture.stop()?;
    let (_, records) = c.run(&ack, XDP_TX)?;
    ensure!(records.is_empty(), "capture was switched off, yet {} records", records.len());
    Ok(())
}

#[test]
fn drops_carry_their_reason_and_long_frames_their_real_length() -> Result<()> {
    let mut c = Captured::new("cfxdrop");
    c.capture.start(CaptureConfig::default())?;
    let unknown_port = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 81, true);
    let (_, records) = c.run(&unknown_port, XDP_DROP)?;
    ensure!(records.len() == 2, "{} records", records.len());
    for r in &records {
        let reason = CAPTURE_DROP_REASONS[r.drop_reason as usize];
        ensure!(r.verdict as u32 == XDP_DROP && reason == "unknown_vip_port", "reason {reason:?} of {r:?}");
    }

    let long = write(|out| {
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
            .ipv4(CLIENT4, VIP4_DSR, 64)
            .tcp(CPORT, 80, 1000, 64240)
            .ack(1)
            .write(out, &[7; 1000])
            .expect("long segment")
    });
    let (out, records) = c.run(&long, XDP_TX)?;
    ensure!(records.len() == 2, "{} records", records.len());
    ensure!(records[0].len as usize == long.len() && records[0].frame() == &long[..CAPTURE_SNAP_LEN], "in snap");
    ensure!(records[1].len as usize == out.len() && records[1].frame() == &out[..CAPTURE_SNAP_LEN], "out snap");
    Ok(())
}

#[test]
fn filters_pick_the_vip_the_backend_and_the_client() -> Result<()> {
    let mut c = Captured::new("cfxfilter");
    let nat = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true);
    let dsr = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, CPORT, 80, true);
    let other_client = tcp4(CLIENT_MAC, LB_MAC, [10, 0, 0, 3], VIP4_DSR, CPORT, 80, true);
    let count = |c: &mut Captured, input: &[u8]| -> Result<usize> { Ok(c.run(input, XDP_TX)?.1.len()) };

    c.capture.start(CaptureConfig { flags: CAPTURE_BY_VIP, vip_id: DSR_VIP, ..Default::default() })?;
    ensure!((count(&mut c, &nat)?, count(&mut c, &dsr)?) == (0, 2), "by vip");

    c.capture.start(CaptureConfig { flags: CAPTURE_BY_BACKEND, backend_id: NAT_BACKEND, ..Default::default() })?;
    ensure!((count(&mut c, &nat)?, count(&mut c, &dsr)?) == (2, 0), "by backend");

    let client = addr16(CLIENT4);
    c.capture.start(CaptureConfig { flags: CAPTURE_BY_CLIENT, client, ..Default::default() })?;
    ensure!((count(&mut c, &dsr)?, count(&mut c, &other_client)?) == (2, 0), "by client");
    // A nat reply is the client's too, though it comes from the backend.
    let port = nat_port(client, addr16(VIP4), CPORT, 80, PROTO_TCP, FAMILY_V4);
    let reply = tcp4(neighbour_mac(11), LB_MAC, BACKEND4, LB4, 8080, port, false);
    ensure!(count(&mut c, &reply)? == 2, "a nat reply by client");

    let all = CAPTURE_BY_VIP | CAPTURE_BY_BACKEND | CAPTURE_BY_CLIENT;
    c.capture.start(CaptureConfig { flags: all, vip_id: DSR_VIP, backend_id: DSR_BACKEND, client })?;
    ensure!((count(&mut c, &nat)?, count(&mut c, &dsr)?, count(&mut c, &other_client)?) == (0, 2, 0), "all");
    Ok(())
}

#[test]
fn a_full_ring_counts_the_records_it_lost() -> Result<()> {
    let mut c = Captured::new("cfxlost");
    c.capture.start(CaptureConfig::default())?;
    let packet = tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, CPORT, 80, false);
    // 4 MiB of ring holds about 14,000 records of 296 bytes: 10,000 packets overflow it.
    let runs = 10_000u64;
    for _ in 0..runs {
        c.f.env.run("xdp_lb", &packet)?;
    }
    let read = std::iter::from_fn(|| c.capture.next_record()).count() as u64;
    let lost = c.f.global().capture_records_lost;
    ensure!(lost > 0 && read + lost == 2 * runs, "{read} records read and {lost} lost of {}", 2 * runs);
    Ok(())
}
