//! Packet capture for `lb capture`: while `CAPTURE` is on, a packet's frame is kept as it
//! came in, and once its verdict is known, a packet that matches the filters is sent to
//! `CAPTURE_RING` twice: as it came in and as it leaves (rewritten), with the verdict.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::*;

use crate::maps::{CAPTURE, CAPTURE_FRAME, CAPTURE_RING, GLOBAL_STATS, Mark, Scratch};
use crate::mem::addr_eq;

/// The switch, which is the one branch an uncaptured packet pays. A bool, not the config:
/// LLVM turns an `Option` of the config chosen by its flag into a mask on the pointer,
/// which the verifier refuses.
#[inline(always)]
pub fn capture_on() -> bool {
    CAPTURE.get(0).is_some_and(|config| config.flags & CAPTURE_ON != 0)
}

/// Keeps the frame as it came in and clears the marks its way will set.
// A BPF subprogram of its own: only captured packets run it.
#[inline(never)]
pub fn capture_in(ctx: &XdpContext, s: &mut Scratch) {
    s.mark = Mark { vip_id: CAPTURE_NONE, backend_id: CAPTURE_NONE, drop: 0, reply: false };
    if let Some(record) = CAPTURE_FRAME.get_ptr_mut(0) {
        // SAFETY: per-CPU value, not shared while the program runs.
        let record = unsafe { &mut *record };
        record.ns = unsafe { bpf_ktime_get_ns() };
        copy_frame(ctx, record);
    }
}

/// Sends the kept frame and the frame as it leaves, if the packet matches the filters;
/// `drop` is the reason of a drop before any VIP (else a VIP's drop is in the marks).
// A BPF subprogram of its own: only captured packets run it.
#[inline(never)]
pub fn capture_out(ctx: &XdpContext, s: &Scratch, verdict: u32, drop: u8) {
    if !CAPTURE.get(0).is_some_and(|config| matches(config, s)) {
        return;
    }
    let Some(record) = CAPTURE_FRAME.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `capture_in`.
    let record = unsafe { &mut *record };
    record.ifindex = ctx.ingress_ifindex() as u32;
    record.vip_id = s.mark.vip_id;
    record.backend_id = s.mark.backend_id;
    record.verdict = verdict as u8;
    record.drop_reason = match verdict {
        xdp_action::XDP_DROP if drop == 0 => s.mark.drop,
        xdp_action::XDP_DROP => drop,
        _ => 0,
    };
    record.direction = CAPTURE_IN;
    send(record);
    record.direction = CAPTURE_OUT;
    copy_frame(ctx, record);
    send(record);
}

#[inline(always)]
fn matches(config: &CaptureConfig, s: &Scratch) -> bool {
    let flags = config.flags;
    if flags & CAPTURE_BY_VIP != 0 && config.vip_id != s.mark.vip_id {
        return false;
    }
    if flags & CAPTURE_BY_BACKEND != 0 && config.backend_id != s.mark.backend_id {
        return false;
    }
    if flags & CAPTURE_BY_CLIENT != 0 {
        let client = if s.mark.reply { &s.nat.client.src } else { &s.headers.src };
        return addr_eq(client, &config.client);
    }
    true
}

/// Copies the first `CAPTURE_SNAP_LEN` bytes of the frame (fewer if it is shorter).
#[inline(always)]
fn copy_frame(ctx: &XdpContext, record: &mut CaptureRecord) {
    // Computed in 64 bits: the verifier bounds the helper's length by the comparison
    // itself, which a 32-bit truncation in between would hide from it.
    let len = ctx.data_end() - ctx.data();
    record.len = len as u32;
    let cap = if len > CAPTURE_SNAP_LEN { CAPTURE_SNAP_LEN } else { len };
    record.cap_len = 0;
    if cap == 0 {
        return;
    }
    let buf = record.data.as_mut_ptr().cast();
    // SAFETY: `cap` is within 1..=CAPTURE_SNAP_LEN, the size of `data`.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, buf, cap as u32) } == 0 {
        record.cap_len = cap as u32;
    }
}

#[inline(always)]
fn send(record: &CaptureRecord) {
    if CAPTURE_RING.output(record, 0).is_err()
        && let Some(stats) = GLOBAL_STATS.get_ptr_mut(0)
    {
        // SAFETY: per-CPU value.
        unsafe { (*stats).capture_records_lost += 1 };
    }
}
