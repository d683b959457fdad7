//! Rate limits: the VIP's token buckets (GCRA) and the per-source buckets.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use lb_common::*;

use crate::maps::*;
use crate::mem::{Words, addr_words};

/// Compare-and-swap attempts on a contended bucket before the packet counts as over the
/// limit (each failure means another CPU just took a token).
pub const TOKEN_TRIES: u32 = 4;

/// What the new-flow limits say about a flow's first packet.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Admission {
    Admitted,
    SourceLimited,
    VipLimited,
}

/// Applies the VIP's per-source limit, then its new-flow limit, to the new `flow`. The
/// source goes first so that a flooding source's excess does not use up the VIP's tokens,
/// which the other sources need.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn admit_new_flow(flow: &FlowKey, vip: &VipInfo) -> Admission {
    if vip.limits & LIMIT_SOURCES != 0 {
        // The coarse clock (a timer tick old at most) is a load, not a clock read; the
        // controller makes per-source tolerances at least a tick long, which keeps the rate
        // exact (see `SOURCE_TOLERANCE_MIN_NS`).
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let a = addr_words(&flow.src);
        let p = vip.source_prefix_len;
        let key: Words<SourceKey, 5> = Words(
            [
                a[0] & prefix_mask_word(p, 0),
                a[1] & prefix_mask_word(p, 1),
                a[2] & prefix_mask_word(p, 2),
                a[3] & prefix_mask_word(p, 3),
                vip.vip_id,
            ],
            core::marker::PhantomData,
        );
        let admitted = match SOURCE_BUCKETS.get_ptr_mut(key.as_key()) {
            Some(tat) => take_tokens(tat, &vip.source_limit, now, 1),
            None => match vip.source_limit.take(0, now) {
                // A source seen for the first time (or evicted since) starts full. Two
                // CPUs racing on its first packets may each insert: one token too many.
                Some(tat) => {
                    let _ = SOURCE_BUCKETS.insert(key.as_key(), &tat, 0);
                    true
                }
                None => false,
            },
        };
        if !admitted {
            return Admission::SourceLimited;
        }
    }
    if vip.limits & LIMIT_NEW_FLOWS != 0 && !take_vip_token(vip, LIMIT_NEW_FLOWS) {
        return Admission::VipLimited;
    }
    Admission::Admitted
}

/// Takes a token for the VIP's bucket `which` (`LIMIT_PACKETS` or `LIMIT_NEW_FLOWS`): from
/// what this CPU holds, else a batch (or, when the bucket has fewer, one) from the bucket
/// all CPUs share. Most packets thus cost a per-CPU decrement, no clock and no atomic.
#[inline(always)]
pub fn take_vip_token(vip: &VipInfo, which: u8) -> bool {
    let Some(held) = RATE_CPU_TOKENS.get_ptr_mut(vip.vip_id) else {
        return false;
    };
    // SAFETY: this CPU's value.
    let held = unsafe { if which == LIMIT_PACKETS { &mut (*held).packets } else { &mut (*held).new_flows } };
    if *held > 0 {
        *held -= 1;
        return true;
    }
    let Some(state) = RATE_STATE.get_ptr_mut(vip.vip_id) else {
        return false;
    };
    // SAFETY: shared by all CPUs; only touched through atomics (in `take_tokens`).
    let (tat, bucket) = unsafe {
        if which == LIMIT_PACKETS {
            (&raw mut (*state).packets_tat_ns, &vip.packet_limit)
        } else {
            (&raw mut (*state).new_flows_tat_ns, &vip.new_flow_limit)
        }
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if bucket.batch > 1 && take_tokens(tat, bucket, now, bucket.batch) {
        *held = bucket.batch - 1;
        return true;
    }
    take_tokens(tat, bucket, now, 1)
}

/// Takes `n` tokens from the bucket whose TAT is at `tat` (shared by all CPUs).
#[inline(always)]
pub fn take_tokens(tat: *mut u64, bucket: &TokenBucket, now: u64, n: u32) -> bool {
    // SAFETY (both): `tat` points into a map value, 8-byte aligned, alive while the
    // program runs; every CPU accesses it atomically. (The BPF target has no
    // `AtomicU64::compare_exchange`, but the instruction exists: the intrinsic emits it.)
    // An aligned 8-byte load is atomic (the BPF backend has no `AtomicLoad` before v4).
    let mut seen = unsafe { core::ptr::read_volatile(tat) };
    for _ in 0..TOKEN_TRIES {
        let Some(next) = bucket.take_n(seen, now, n) else {
            return false;
        };
        let (current, swapped) =
            unsafe { atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(tat, seen, next) };
        if swapped {
            return true;
        }
        seen = current;
    }
    false
}
