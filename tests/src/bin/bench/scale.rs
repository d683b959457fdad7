//! 12. Scale.
//!
//! `lb run` with 1000 VIPs x 16 backends x 65537 slots, against 100 VIPs in the same run: the
//! time to "ready", the controller's peak memory, and a reload that changes one backend of
//! one VIP, against writing the same slots one syscall at a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{Lab, LbProcess, lb_config};

use crate::Sizes;
use crate::common::median_f64;

const BACKENDS_PER_VIP: usize = 16;
const TABLE_SIZE: u32 = 65537;
/// Reloads timed per run (alternately removing and restoring the changed backend).
const RELOADS: usize = 6;

/// The config's `[[vip]]`s: VIP `i` at 10.100.(i / 250).(i % 250 + 1):80 with backends
/// 10.0.1.(11 + j):(10000 + i) (every backend its own id), the first one left out of VIP
/// `without_first` when given.
fn vips_toml(count: usize, without_first: Option<usize>) -> String {
    let mut text = String::new();
    for i in 0..count {
        text += &format!(
            "[[vip]]\nname = \"v{i}\"\naddress = \"10.100.{}.{}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"nat\"\n",
            i / 250,
            i % 250 + 1
        );
        let first = if without_first == Some(i) { 1 } else { 0 };
        for j in first..BACKENDS_PER_VIP {
            text += &format!("[[vip.backend]]\naddress = \"10.0.1.{}\"\nport = {}\n", 11 + j, 10000 + i);
        }
    }
    text
}

/// A config of `vips` VIPs in `lab`, maps sized for the largest run.
fn config(lab: &Lab, vips: usize, max_vips: usize, without_first: Option<usize>) -> String {
    let max_backends = (max_vips * BACKENDS_PER_VIP).next_power_of_two();
    let mut text = lb_config(lab, &[])
        .balancer(&format!("maglev_table_size = {TABLE_SIZE}\nmax_vips = {max_vips}\nmax_backends = {max_backends}"))
        .to_string();
    text = text.replace("vip = []\n", "");
    text + "\n" + &vips_toml(vips, without_first)
}

/// What one start measured.
struct Start {
    seconds: f64,
    peak_rss_mib: f64,
    maglev_memlock_mib: f64,
    /// Per reload: (ms from SIGHUP to "config applied", ms of the sync, slots written).
    reloads: Vec<(f64, f64, u64)>,
}

pub fn scale(sizes: &Sizes) -> Result<()> {
    let (small, large) = if sizes.maglev_runs < 10 { (25, 250) } else { (100, 1000) };
    let lab = Lab::build("lbb-scale", Vec::new(), false)?;
    let mut starts = BTreeMap::new();
    for vips in [small, large] {
        starts.insert(vips, start_and_reload(&lab, vips, large)?);
    }
    let slot_syscall_ms = one_syscall_per_slot(&lab, large)?;
    println!("{:<28} {:>10} {:>14} {:>14}", "VIPs x 16 backends x 65537", "start s", "peak RSS MiB", "MAGLEV MiB");
    for (vips, s) in &starts {
        println!("{vips:<28} {:>10.2} {:>14.1} {:>14.1}", s.seconds, s.peak_rss_mib, s.maglev_memlock_mib);
    }
    let (s, l) = (&starts[&small], &starts[&large]);
    println!(
        "{large} vs {small} VIPs: start {:.2}x, peak RSS {:.2}x (targets at 1000: < 5 s: {}, < 600 MiB: {})",
        l.seconds / s.seconds,
        l.peak_rss_mib / s.peak_rss_mib,
        verdict(l.seconds < 5.0, large),
        verdict(l.peak_rss_mib < 600.0, large)
    );
    for (vips, start) in &starts {
        let applied = median_f64(&start.reloads.iter().map(|r| r.0).collect::<Vec<_>>());
        let synced = median_f64(&start.reloads.iter().map(|r| r.1).collect::<Vec<_>>());
        let slots: Vec<u64> = start.reloads.iter().map(|r| r.2).collect();
        let per_slot = slot_syscall_ms * median_f64(&slots.iter().map(|&n| n as f64).collect::<Vec<_>>());
        println!(
            "reload of one backend of one VIP among {vips}: SIGHUP -> applied {applied:.1} ms (target < 20 ms at 1000: {}), sync {synced:.2} ms, slots written {slots:?};\n the same slots one syscall each: {per_slot:.2} ms (sync {:.2}x that)",
            verdict(applied < 20.0, *vips),
            synced / per_slot
        );
    }
    println!(
        "(peak RSS: VmHWM of `lb run` once ready; MAGLEV: the kernel's memlock for the table map, not the controller's;\n one syscall per slot: {:.3} us a slot, BPF_MAP_UPDATE_ELEM on the pinned MAGLEV; {RELOADS} reloads, medians)",
        slot_syscall_ms * 1000.0
    );
    Ok(())
}

/// Whether a target for 1000 VIPs is met, when `vips` is 1000.
fn verdict(met: bool, vips: usize) -> &'static str {
    match (vips, met) {
        (1000, true) => "yes",
        (1000, false) => "NO",
        _ => "-",
    }
}

/// Starts `lb run` on `vips` VIPs, takes its figures, then reloads one backend of one VIP
/// away and back `RELOADS` times.
fn start_and_reload(lab: &Lab, vips: usize, max_vips: usize) -> Result<Start> {
    let started = Instant::now();
    let mut lb = LbProcess::start(lab, &config(lab, vips, max_vips, None))?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mib = vm_hwm_kib(lb.pid())? as f64 / 1024.0;
    let maglev_memlock_mib = memlock_bytes(&lab.pin_dir().join(lb_common::MAP_MAGLEV))? as f64 / (1 << 20) as f64;
    let mut reloads = Vec::new();
    for round in 0..RELOADS {
        let changed = if round % 2 == 0 { Some(vips / 2) } else { None };
        let text = config(lab, vips, max_vips, changed);
        let seen = lb.log().len();
        let sent = Instant::now();
        lb.reload(&text)?;
        let applied_ms = sent.elapsed().as_secs_f64() * 1000.0;
        let synced = lb.log()[seen..].iter().find(|l| l.contains("tables synced")).cloned();
        let synced = synced.context("the reload logged no \"tables synced\"")?;
        let field = |name: &str| -> Result<f64> {
            let value = synced.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")));
            Ok(value.with_context(|| format!("no {name} in {synced:?}"))?.parse()?)
        };
        reloads.push((applied_ms, field("took_ms")?, field("slots")? as u64));
    }
    Ok(Start { seconds, peak_rss_mib, maglev_memlock_mib, reloads })
}

/// The time of one BPF_MAP_UPDATE_ELEM on MAGLEV, in ms: the slots of a table that no VIP
/// uses (the last id's spare half) written one at a time, by a controller serving none.
fn one_syscall_per_slot(lab: &Lab, max_vips: usize) -> Result<f64> {
    let _lb = LbProcess::start(lab, &config(lab, 1, max_vips, None))?;
    let pin = lab.pin_dir().join(lb_common::MAP_MAGLEV);
    let map = aya::maps::Map::Array(aya::maps::MapData::from_pin(&pin)?);
    let mut maglev: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)?;
    let first = (max_vips as u32 * 2 - 1) * TABLE_SIZE;
    let started = Instant::now();
    for slot in first..first + TABLE_SIZE {
        maglev.set(slot, slot % 16, 0)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / TABLE_SIZE as f64)
}

/// The peak resident set of process `pid` (VmHWM), in KiB.
fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM without a value")?.parse()?)
}

/// The kernel memory charged to the map pinned at `pin` (bpftool's `bytes_memlock`).
fn memlock_bytes(pin: &Path) -> Result<u64> {
    let out = std::process::Command::new("bpftool").args(["-j", "map", "show", "pinned"]).arg(pin).output()?;
    ensure!(out.status.success(), "bpftool map show: {}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    info["bytes_memlock"].as_u64().context("no bytes_memlock in bpftool's answer")
}
