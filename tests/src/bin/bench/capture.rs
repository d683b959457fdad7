//! 11. Packet capture: what an existing dsr flow's packet costs with capture off, on with
//!     a filter that matches nothing, and on matching everything (each packet copied into
//!     the ring twice), against `xdp_drop` measured in the same run.

use anyhow::{Context as _, Result};
use lb_common::{CAPTURE_BY_VIP, CaptureConfig, PROG_DROP, PROG_LB};

use crate::Sizes;
use crate::common::*;

/// Runs per in-kernel call: the records of one call (two per run) fit the 4 MiB ring, which
/// is drained between calls, so "everything" measures records written, not records lost.
const REPEAT: u32 = 5_000;
/// A VIP id no VIP of the bench config has: the filter of "matching nothing".
const NO_VIP: u32 = 7;

/// (case, ns per packet).
type Row = (&'static str, f64);

pub fn capture_cost(sizes: &Sizes) -> Result<()> {
    let calls = (sizes.repeat / REPEAT).max(5) as usize;
    let (drop_ns, rows) = on_thread("capture-cost", move || -> Result<(f64, Vec<Row>)> {
        let mut env = new_env("lbb-cap")?;
        let mut capture = env.dataplane.take_packet_capture().context("the capture maps")?;
        let packet = tcp4(CLIENT4, VIP_DSR, 40000, 80, false);
        let nothing = CaptureConfig { flags: CAPTURE_BY_VIP, vip_id: NO_VIP, ..Default::default() };
        let cases: [(&'static str, Option<CaptureConfig>); 3] = [
            ("capture off", None),
            ("capture on, filter matching nothing", Some(nothing)),
            ("capture on, matching everything", Some(CaptureConfig::default())),
        ];
        let (mut drop, mut times) = (Vec::new(), vec![Vec::new(); cases.len()]);
        // Alternating, so that the VM's drift falls on every case alike.
        for _ in 0..REPS * calls {
            drop.push(in_kernel(&mut env, PROG_DROP, &packet, REPEAT, XDP_DROP)?);
            for ((_, switch), times) in cases.iter().zip(&mut times) {
                match switch {
                    Some(filter) => capture.start(*filter)?,
                    None => capture.stop()?,
                }
                times.push(in_kernel(&mut env, PROG_LB, &packet, REPEAT, XDP_TX)?);
                capture.stop()?;
                while capture.next_record().is_some() {}
            }
        }
        let lost = env.dataplane.global_stats()?.capture_records_lost;
        anyhow::ensure!(lost == 0, "{lost} capture records lost: the ring was not drained in time");
        Ok((median_f64(&drop), cases.iter().zip(&times).map(|((name, _), t)| (*name, median_f64(t))).collect()))
    })?;
    let off = rows[0].1;
    println!("{:<40} {:>8} {:>10} {:>12}", "existing flow: TCP ACK, dsr VIP (A)", "ns", "/xdp_drop", "/capture off");
    for (name, ns) in &rows {
        println!("{name:<40} {ns:>8.1} {:>9.2}x {:>11.3}x", ns / drop_ns, ns / off);
    }
    println!(
        "(A, median of {} in-kernel calls of {REPEAT} runs each, alternating; xdp_drop {drop_ns:.1} ns in the same run;\n \"everything\" writes two {}-byte records per packet into CAPTURE_RING, drained between calls)",
        REPS * calls,
        std::mem::size_of::<lb_common::CaptureRecord>()
    );
    Ok(())
}
