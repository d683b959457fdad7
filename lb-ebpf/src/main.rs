//! The packet path: one XDP program that finds the VIP of a packet, keeps flows on their
//! backend, picks a backend for new flows from the VIP's Maglev table, and forwards in
//! `nat` or `dsr` mode. Everything else goes to the kernel untouched, or is dropped on
//! purpose and counted by reason (see `GlobalStats`).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod packet;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_fib_lookup as FibParams, xdp_action},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    helpers::{bpf_fib_lookup, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_redirect},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use core::intrinsics::{AtomicOrdering, atomic_cxchg};
use lb_common::*;
use packet::{
    Headers, L4, Parsed, Quoted, TCP_ACK, TCP_RST, TCP_SYN, Translation, addr_eq, copy_addr, set_flow_key_tail,
};

#[btf_map]
static VIPS: HashMap<VipKey, VipInfo, { DEFAULT_MAX_VIPS as usize }> = HashMap::new();
#[btf_map]
static VIP_ADDRS: HashMap<VipAddrKey, u32, { DEFAULT_MAX_VIPS as usize }> = HashMap::new();
#[btf_map]
static BACKENDS: Array<Backend, { DEFAULT_MAX_BACKENDS as usize }> = Array::new();
/// Maglev tables, two per VIP (active and the one being built), `ring size` slots each;
/// a slot holds a backend id. Sized by the controller at load time.
#[btf_map]
static MAGLEV: Array<u32, 1> = Array::new();
#[btf_map]
static FLOWS: LruHashMap<FlowKey, FlowState, { DEFAULT_FLOW_ENTRIES as usize }> = LruHashMap::new();
#[btf_map]
static NAT: LruHashMap<FlowKey, NatState, { DEFAULT_FLOW_ENTRIES as usize }> = LruHashMap::new();
#[btf_map]
static SETTINGS: Array<Settings, 1> = Array::new();
#[btf_map]
static VIP_STATS: PerCpuArray<VipStats, { DEFAULT_MAX_VIPS as usize }> = PerCpuArray::new();
#[btf_map]
static BACKEND_STATS: PerCpuArray<BackendStats, { DEFAULT_MAX_BACKENDS as usize }> = PerCpuArray::new();
/// Per CPU, so that the hot path never writes a cache line another CPU reads.
#[btf_map]
static NEXT_HOPS: PerCpuArray<NextHop, { DEFAULT_MAX_BACKENDS as usize }> = PerCpuArray::new();

/// The shared buckets of each VIP's rate limits (see `TokenBucket`).
#[btf_map]
static RATE_STATE: Array<VipRateState, { DEFAULT_MAX_VIPS as usize }> = Array::new();
/// Tokens each CPU took from each VIP's shared buckets and has yet to spend.
#[btf_map]
static RATE_CPU_TOKENS: PerCpuArray<VipCpuTokens, { DEFAULT_MAX_VIPS as usize }> = PerCpuArray::new();
/// Per-source new-flow buckets: the value is the bucket's TAT.
#[btf_map]
static SOURCE_BUCKETS: LruHashMap<SourceKey, u64, { DEFAULT_SOURCE_ENTRIES as usize }> = LruHashMap::new();

/// Passive health signals for the controller (see `HealthSignal`): a few per connection at
/// most, and only for VIPs with outlier detection.
#[btf_map]
static HEALTH_SIGNALS: RingBuf<HealthSignal, { 256 * 1024 }> = RingBuf::new();

/// Working memory for one packet (see `Scratch`); typed as words so its BTF stays plain.
#[btf_map]
static SCRATCH: PerCpuArray<[u64; SCRATCH_WORDS], 1> = PerCpuArray::new();
const SCRATCH_WORDS: usize = 64;
const _: () = assert!(core::mem::size_of::<Scratch>() <= SCRATCH_WORDS * 8);

#[btf_map]
static GLOBAL_STATS: PerCpuArray<GlobalStats, 1> = PerCpuArray::new();

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Source-port candidates tried for a new nat flow before giving up.
const NAT_PORT_TRIES: u32 = 4;
/// Candidate ports are spread over the range (a stride coprime to any span that is not a
/// multiple of it), so that taken ports don't cluster the way consecutive probes would.
const NAT_PORT_STRIDE: u32 = 0x9e37;
/// Compare-and-swap attempts on a contended bucket before the packet counts as over the
/// limit (each failure means another CPU just took a token).
const TOKEN_TRIES: u32 = 4;
/// How long a cached next hop is used before the FIB is asked again.
const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;
/// An upper bound on the length of a jiffy: HZ is at least 20 on every Linux configuration.
const MAX_JIFFY_NS: u64 = 50_000_000;

/// The jiffies value below which a next hop with `remaining_ns` of its time to live left
/// (read from the coarse clock now) is certainly still fresh by that clock. The coarse
/// clock and jiffies advance together at the tick; two ticks of margin cover a tick that
/// falls between reading the one and the other, here and when the bound is used.
#[inline(always)]
fn fresh_until_jiffies(jiffies: u64, remaining_ns: u64) -> u64 {
    match (remaining_ns / MAX_JIFFY_NS).checked_sub(2) {
        Some(ticks) if ticks > 0 => jiffies + ticks,
        _ => 0,
    }
}

/// What the packet path works on. It lives in a per-CPU map, not on the stack: BPF allows
/// 512 bytes of stack for a whole call chain, and keys of 40 bytes add up quickly.
#[derive(Default)]
pub struct Scratch {
    pub headers: Headers,
    /// The flow as keyed in `FLOWS` (client -> VIP).
    pub flow: FlowKey,
    /// A reply as keyed in `NAT` (backend -> balancer).
    pub reply: FlowKey,
    pub nat: NatState,
    pub quoted: Quoted,
    pub to: Translation,
}

#[xdp]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    match try_xdp_lb(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_global(reason);
            if reason == Reason::Passed { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP }
        }
    }
}

/// Why a packet left the fast path; each maps to one `GlobalStats` counter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Passed,
    Malformed,
    Fragment,
    IpOptions,
    UnknownVipPort,
    IcmpUnmatched,
    Internal,
}

#[inline(always)]
fn count_global(reason: Reason) {
    if let Some(stats) = GLOBAL_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        let stats = unsafe { &mut *stats };
        let counter = match reason {
            Reason::Passed => &mut stats.passed,
            Reason::Malformed => &mut stats.drop_malformed,
            Reason::Fragment => &mut stats.drop_fragment,
            Reason::IpOptions => &mut stats.drop_ip_options,
            Reason::UnknownVipPort => &mut stats.drop_unknown_vip_port,
            Reason::IcmpUnmatched => &mut stats.drop_icmp_unmatched,
            Reason::Internal => &mut stats.drop_internal,
        };
        *counter += 1;
    }
}

#[inline(always)]
fn try_xdp_lb(ctx: &XdpContext) -> Result<u32, Reason> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Reason::Internal)?;
    // SAFETY: per-CPU, large and aligned enough (asserted above); an XDP run is not
    // preempted by another run on the same CPU. Zeroed memory is a valid `Scratch`.
    let s = unsafe { &mut *scratch.cast::<Scratch>() };
    // `parse` writes every field of the headers that this packet's path reads (no reset:
    // all stores are of defined values, and a reset costs as much as the parse).
    let h = &mut s.headers;
    if let Parsed::Unusual(reason) = packet::parse(ctx, h)? {
        // Fragments, options and extension headers are fine for the kernel's own
        // traffic, but a VIP flow cannot be classified without its ports.
        return Err(if is_vip_addr(&h.dst, h.family) { reason } else { Reason::Passed });
    }
    let settings = SETTINGS.get(0).ok_or(Reason::Internal)?;
    let maybe_vip = settings.may_be_vip_addr_bit(vip_addr_filter_bit_words(packet::addr_words(&h.dst)));
    if !maybe_vip && !addr_eq(&h.dst, own_addr(settings, h.family)) {
        return Err(Reason::Passed);
    }
    match h.l4 {
        L4::Ports => {
            let vip_key = vip_key(&h.dst, h.dport, h.proto, h.family);
            // SAFETY: values are only replaced whole by the controller (never written in place).
            if let Some(vip) = unsafe { VIPS.get(vip_key.as_key()) } {
                return to_backend(ctx, s, vip);
            }
            if addr_eq(&h.dst, own_addr(settings, h.family)) {
                return to_client(ctx, s);
            }
            Err(if is_vip_addr(&h.dst, h.family) { Reason::UnknownVipPort } else { Reason::Passed })
        }
        L4::IcmpError => {
            if h.icmp_unreachable && addr_eq(&h.dst, own_addr(settings, h.family)) {
                let inner_l3 = h.inner_l3;
                observe_unreachable_backend(ctx, s, inner_l3);
                return Err(Reason::Passed);
            }
            if !is_vip_addr(&h.dst, h.family) {
                return Err(Reason::Passed);
            }
            let inner_l3 = h.inner_l3;
            icmp_error_to_backend(ctx, s, inner_l3)
        }
        // Any other protocol to a VIP address has no VIP to go to either.
        L4::Other => Err(if is_vip_addr(&h.dst, h.family) { Reason::UnknownVipPort } else { Reason::Passed }),
    }
}

#[inline(always)]
fn own_addr(settings: &Settings, family: u8) -> &Addr {
    if family == FAMILY_V4 { &settings.ipv4 } else { &settings.ipv6 }
}

/// A map key built as words on the stack: field-by-field construction of keys with byte
/// arrays and zero padding makes LLVM emit `memset`/`memmove` calls, which the BPF backend
/// here turns into subprograms with byte loops.
#[repr(C, align(4))]
struct Words<K, const N: usize>([u32; N], core::marker::PhantomData<K>);

impl<K, const N: usize> Words<K, N> {
    #[inline(always)]
    fn as_key(&self) -> &K {
        const { assert!(core::mem::size_of::<K>() == N * 4 && core::mem::align_of::<K>() <= 4) };
        // SAFETY: same size, alignment satisfied, every bit pattern of the keys' integer
        // fields is valid.
        unsafe { &*(self.0.as_ptr().cast::<K>()) }
    }
}

/// `VipKey { addr, port, proto, family }`.
#[inline(always)]
fn vip_key(addr: &Addr, port: u16, proto: u8, family: u8) -> Words<VipKey, 5> {
    let a = packet::addr_words(addr);
    Words(
        [a[0], a[1], a[2], a[3], port as u32 | (proto as u32) << 16 | (family as u32) << 24],
        core::marker::PhantomData,
    )
}

#[inline(always)]
fn is_vip_addr(addr: &Addr, family: u8) -> bool {
    let a = packet::addr_words(addr);
    let key: Words<VipAddrKey, 5> = Words([a[0], a[1], a[2], a[3], family as u32], core::marker::PhantomData);
    VIP_ADDRS.get_ptr(key.as_key()).is_some()
}

/// Copies a value of `T` (4-byte aligned, a multiple of 4 bytes) word by word; the stores
/// are volatile so that LLVM can't turn the copy back into a `memmove` call.
#[inline(always)]
fn copy_words<T>(to: &mut T, from: &T) {
    const { assert!(core::mem::size_of::<T>() % 4 == 0 && core::mem::align_of::<T>() >= 4) };
    let (to, from) = ((to as *mut T).cast::<u32>(), (from as *const T).cast::<u32>());
    for i in 0..core::mem::size_of::<T>() / 4 {
        // SAFETY: in bounds and aligned (asserted above).
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read(from.add(i))) };
    }
}

/// Compares two values of `T` (as `copy_words`) word by word.
#[inline(always)]
fn words_eq<T>(a: &T, b: &T) -> bool {
    const { assert!(core::mem::size_of::<T>() % 4 == 0 && core::mem::align_of::<T>() >= 4) };
    let (a, b) = ((a as *const T).cast::<u32>(), (b as *const T).cast::<u32>());
    let mut diff = 0;
    for i in 0..core::mem::size_of::<T>() / 4 {
        // SAFETY: in bounds and aligned (asserted above).
        diff |= unsafe { core::ptr::read(a.add(i)) ^ core::ptr::read(b.add(i)) };
    }
    diff == 0
}

/// Client -> VIP: find or choose the backend, rewrite, forward.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
fn to_backend(ctx: &XdpContext, s: &mut Scratch, vip: &VipInfo) -> Result<u32, Reason> {
    let Scratch { headers: h, flow, nat, .. } = s;
    h.flow_key_into(flow);
    let vip_stats = VIP_STATS.get_ptr_mut(vip.vip_id).ok_or(Reason::Internal)?;
    // SAFETY: per-CPU value.
    let vip_stats = unsafe { &mut *vip_stats };
    vip_stats.packets += 1;
    vip_stats.bytes += h.frame_len as u64;
    if vip.limits & LIMIT_PACKETS != 0 && !take_vip_token(vip, LIMIT_PACKETS) {
        vip_stats.rate_limited_packets += 1;
        return Ok(xdp_action::XDP_DROP);
    }

    let settings = SETTINGS.get(0).ok_or(Reason::Internal)?;
    // SAFETY: copied out; a concurrent LRU reuse only makes the copy stale.
    let known = unsafe { FLOWS.get(&*flow) }.copied();
    let (backend_id, backend, nat_port) = match known.and_then(|state| {
        let backend = BACKENDS.get(state.backend_id)?;
        let follows = backend.flags & BACKEND_ACTIVE != 0 && (backend.flags & BACKEND_SERVING != 0 || !h.is_syn());
        follows.then_some((state.backend_id, backend, state.nat_port))
    }) {
        Some(found) => found,
        None => {
            if vip.limits & (LIMIT_NEW_FLOWS | LIMIT_SOURCES) != 0 && h.opens_flow() {
                match admit_new_flow(flow, vip) {
                    Admission::Admitted => {}
                    Admission::SourceLimited => {
                        vip_stats.rate_limited_sources += 1;
                        return Ok(xdp_action::XDP_DROP);
                    }
                    Admission::VipLimited => {
                        vip_stats.rate_limited_new_flows += 1;
                        return Ok(xdp_action::XDP_DROP);
                    }
                }
            }
            let Some((backend_id, backend)) = pick_backend(vip, flow, settings.hash_seed) else {
                vip_stats.drop_no_backend += 1;
                return Ok(xdp_action::XDP_DROP);
            };
            let nat_port = if vip.mode == MODE_NAT {
                copy_words(&mut nat.client, flow);
                nat.vip_id = vip.vip_id;
                nat.backend_id = backend_id;
                nat.watch = vip.watch;
                nat.seen = 0;
                match reserve_nat_port(s, backend) {
                    0 => {
                        vip_stats.drop_nat_ports_exhausted += 1;
                        warn!(ctx, "nat source ports exhausted for vip {}", vip.vip_id);
                        return Ok(xdp_action::XDP_DROP);
                    }
                    port => port as u16,
                }
            } else {
                0
            };
            let state: Words<FlowState, 4> =
                Words([backend_id, vip.vip_id, nat_port as u32, 0], core::marker::PhantomData);
            // An LRU insert only fails on allocation failure; the flow then re-hashes to
            // the same backend on its next packet, so forwarding goes on.
            let _ = FLOWS.insert(&s.flow, state.as_key(), 0);
            vip_stats.new_flows += 1;
            if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
                // SAFETY: per-CPU value.
                unsafe { (*b).new_flows += 1 };
            }
            (backend_id, backend, nat_port)
        }
    };
    let h = &s.headers;
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        let b = unsafe { &mut *b };
        b.packets += 1;
        b.bytes += h.frame_len as u64;
    }
    if vip.mode == MODE_NAT {
        copy_addr(&mut s.to.src, own_addr(settings, h.family));
        copy_addr(&mut s.to.dst, &backend.addr);
        s.to.sport = nat_port;
        s.to.dport = backend.port;
        packet::rewrite(ctx, h, &s.to)?;
    }
    let action = forward_to_backend(ctx, h, backend_id, &backend.addr);
    if action == xdp_action::XDP_DROP {
        vip_stats.drop_no_route += 1;
    }
    Ok(action)
}

/// What the new-flow limits say about a flow's first packet.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Admission {
    Admitted,
    SourceLimited,
    VipLimited,
}

/// Applies the VIP's per-source limit, then its new-flow limit, to the new `flow`. The
/// source goes first so that a flooding source's excess does not use up the VIP's tokens,
/// which the other sources need.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
fn admit_new_flow(flow: &FlowKey, vip: &VipInfo) -> Admission {
    if vip.limits & LIMIT_SOURCES != 0 {
        // The coarse clock (a timer tick old at most) is a load, not a clock read; the
        // controller makes per-source tolerances at least a tick long, which keeps the rate
        // exact (see `SOURCE_TOLERANCE_MIN_NS`).
        // SAFETY: plain helper call.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let a = packet::addr_words(&flow.src);
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
fn take_vip_token(vip: &VipInfo, which: u8) -> bool {
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
fn take_tokens(tat: *mut u64, bucket: &TokenBucket, now: u64, n: u32) -> bool {
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

/// Forwards towards a backend through its cached next hop, refreshing it when stale.
#[inline(always)]
fn forward_to_backend(ctx: &XdpContext, h: &Headers, backend_id: u32, addr: &Addr) -> u32 {
    let Some(hop) = NEXT_HOPS.get_ptr_mut(backend_id) else {
        return forward(ctx, h, addr, None);
    };
    // SAFETY: per-CPU value.
    let hop = unsafe { &mut *hop };
    // SAFETY: plain helper call (inlined by the kernel: a load of jiffies_64).
    let jiffies = unsafe { bpf_jiffies64() };
    if jiffies < hop.fresh_until_jiffies {
        return transmit_hop(ctx, hop);
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let age = now.wrapping_sub(hop.refreshed_ns);
    if hop.refreshed_ns != 0 && age < NEXT_HOP_TTL_NS {
        hop.fresh_until_jiffies = fresh_until_jiffies(jiffies, NEXT_HOP_TTL_NS - age);
        return transmit_hop(ctx, hop);
    }
    forward(ctx, h, addr, Some(hop))
}

/// The backend for a new flow from the VIP's Maglev table, if it has one.
#[inline(always)]
fn pick_backend(vip: &VipInfo, flow: &FlowKey, seed: u32) -> Option<(u32, &'static Backend)> {
    if vip.table_size == 0 {
        return None;
    }
    let slot = vip.table_offset + flow_hash(flow, seed) % vip.table_size;
    let backend_id = *MAGLEV.get(slot)?;
    let backend = BACKENDS.get(backend_id)?;
    (backend.flags & BACKEND_ACTIVE != 0).then_some((backend_id, backend))
}

/// Picks the balancer-side source port of the nat flow `s.nat` and records the reverse
/// mapping; 0 when every candidate is taken. The first candidate comes from the flow hash,
/// so it is the same on every balancer host.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
fn reserve_nat_port(s: &mut Scratch, backend: &Backend) -> u32 {
    let Some(settings) = SETTINGS.get(0) else {
        return 0;
    };
    let span = (settings.nat_port_max as u32).wrapping_sub(settings.nat_port_min as u32) + 1;
    if span == 0 || span > 0x1_0000 {
        return 0;
    }
    let start = flow_hash(&s.nat.client, !settings.hash_seed);
    copy_addr(&mut s.reply.src, &backend.addr);
    copy_addr(&mut s.reply.dst, own_addr(settings, backend.family));
    set_flow_key_tail(&mut s.reply, backend.port, 0, s.nat.client.proto, backend.family);
    for i in 0..NAT_PORT_TRIES {
        s.reply.dport = (settings.nat_port_min as u32 + start.wrapping_add(i * NAT_PORT_STRIDE) % span) as u16;
        if NAT.insert(&s.reply, &s.nat, BPF_NOEXIST as u64).is_ok() {
            return s.reply.dport as u32;
        }
        // The port may already be ours: the same client flow picked again.
        // SAFETY: read in place, compared, not kept.
        if unsafe { NAT.get(&s.reply) }.is_some_and(|held| words_eq(&held.client, &s.nat.client)) {
            let _ = NAT.insert(&s.reply, &s.nat, 0);
            return s.reply.dport as u32;
        }
    }
    0
}

/// Backend -> balancer: translate a nat reply back to the client's view and forward it.
/// Anything else to the balancer's own address is the kernel's.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
fn to_client(ctx: &XdpContext, s: &mut Scratch) -> Result<u32, Reason> {
    s.headers.flow_key_into(&mut s.reply);
    // SAFETY: copied out; a concurrent LRU reuse only makes the copy stale.
    let Some(nat) = (unsafe { NAT.get(&s.reply) }) else {
        return Err(Reason::Passed);
    };
    copy_words(&mut s.nat, nat);
    let h = &s.headers;
    let vip_stats = VIP_STATS.get_ptr_mut(s.nat.vip_id).ok_or(Reason::Internal)?;
    // SAFETY: per-CPU value.
    let vip_stats = unsafe { &mut *vip_stats };
    vip_stats.reply_packets += 1;
    vip_stats.reply_bytes += h.frame_len as u64;
    if let Some(b) = BACKEND_STATS.get_ptr_mut(s.nat.backend_id) {
        // SAFETY: per-CPU value.
        let b = unsafe { &mut *b };
        b.reply_packets += 1;
        b.reply_bytes += h.frame_len as u64;
    }
    if s.nat.watch & !s.nat.seen != 0 {
        observe_reply(ctx, s);
    }
    let h = &s.headers;
    let client = &s.nat.client;
    copy_addr(&mut s.to.src, &client.dst);
    copy_addr(&mut s.to.dst, &client.src);
    s.to.sport = client.dport;
    s.to.dport = client.sport;
    packet::rewrite(ctx, h, &s.to)?;
    let action = forward(ctx, h, &s.nat.client.src, None);
    if action == xdp_action::XDP_DROP {
        vip_stats.drop_no_route += 1;
    }
    Ok(action)
}

/// Reports how a watched nat flow's backend answers: the answer to the connection attempt
/// (SYN-ACK, RST, or for UDP any reply) and the status class of the first HTTP response.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
fn observe_reply(ctx: &XdpContext, s: &mut Scratch) {
    let (h, nat) = (&s.headers, &s.nat);
    // `WATCH_*` and `SEEN_*` share their bit values: pending = watched and not yet seen.
    let pending = nat.watch & !nat.seen;
    let (mut kind, mut seen) = (0, 0);
    if pending & WATCH_CONNECT != 0 {
        if h.proto == PROTO_UDP || h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            (kind, seen) = (SIGNAL_CONNECTED, SEEN_CONNECT_ANSWER);
        } else if h.tcp_flags & TCP_RST != 0 {
            (kind, seen) = (SIGNAL_CONNECT_FAILED, SEEN_CONNECT_ANSWER);
        }
    }
    if kind == 0 && pending & WATCH_HTTP != 0 && h.proto == PROTO_TCP {
        match packet::http_status_class(ctx, h) {
            Some(5) => (kind, seen) = (SIGNAL_HTTP_5XX, SEEN_HTTP_STATUS),
            Some(_) => (kind, seen) = (SIGNAL_HTTP_OK, SEEN_HTTP_STATUS),
            None => {}
        }
    }
    if kind == 0 {
        return;
    }
    if let Some(state) = NAT.get_ptr_mut(&s.reply) {
        // SAFETY: a map value; a racing writer of the same byte only repeats a signal.
        unsafe { (*state).seen |= seen };
    }
    signal(s.nat.backend_id, s.nat.vip_id, kind);
}

/// An ICMP destination unreachable sent to the balancer's own address may quote a packet it
/// sent to a backend: if that opened a watched nat flow that has no answer yet, the
/// connection attempt failed.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
fn observe_unreachable_backend(ctx: &XdpContext, s: &mut Scratch, inner_l3: usize) {
    let family = s.headers.family;
    if !packet::parse_quoted(ctx, family, inner_l3, &mut s.quoted) {
        return;
    }
    // The quoted packet went balancer -> backend; the flow's replies are keyed the other way.
    let q = &s.quoted;
    copy_addr(&mut s.reply.src, &q.dst);
    copy_addr(&mut s.reply.dst, &q.src);
    set_flow_key_tail(&mut s.reply, q.dport, q.sport, q.proto, family);
    let Some(state) = NAT.get_ptr_mut(&s.reply) else {
        return;
    };
    // SAFETY: a map value, read and written in place (see `observe_reply`).
    let (watch, seen, backend_id, vip_id) =
        unsafe { ((*state).watch, (*state).seen, (*state).backend_id, (*state).vip_id) };
    if watch & WATCH_CONNECT == 0 || seen & SEEN_CONNECT_ANSWER != 0 {
        return;
    }
    unsafe { (*state).seen = seen | SEEN_CONNECT_ANSWER };
    signal(backend_id, vip_id, SIGNAL_CONNECT_FAILED);
}

/// Counts a passive health signal for the backend and hands it to the controller.
#[inline(always)]
fn signal(backend_id: u32, vip_id: u32, kind: u32) {
    if let Some(stats) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        let stats = unsafe { &mut *stats };
        match kind {
            SIGNAL_CONNECT_FAILED => stats.connect_failures += 1,
            SIGNAL_HTTP_5XX => stats.responses_5xx += 1,
            _ => {}
        }
    }
    if HEALTH_SIGNALS.output(HealthSignal { backend_id, vip_id, kind, _pad: 0 }, 0).is_err()
        && let Some(stats) = GLOBAL_STATS.get_ptr_mut(0)
    {
        // SAFETY: per-CPU value.
        unsafe { (*stats).health_signals_lost += 1 };
    }
}

/// An ICMP error sent to a VIP address quotes a packet the VIP sent to a client: deliver it
/// to the backend that owns that flow, so path MTU discovery and unreachables work.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
fn icmp_error_to_backend(ctx: &XdpContext, s: &mut Scratch, inner_l3: usize) -> Result<u32, Reason> {
    let family = s.headers.family;
    if !packet::parse_quoted(ctx, family, inner_l3, &mut s.quoted) {
        return Err(Reason::IcmpUnmatched);
    }
    let quoted = &s.quoted;
    // The quoted packet went VIP -> client; the flow was keyed client -> VIP.
    copy_addr(&mut s.flow.src, &quoted.dst);
    copy_addr(&mut s.flow.dst, &quoted.src);
    set_flow_key_tail(&mut s.flow, quoted.dport, quoted.sport, quoted.proto, family);
    let vip_key = vip_key(&s.flow.dst, s.flow.dport, s.flow.proto, family);
    // SAFETY: values are only replaced whole by the controller; the flow state is copied.
    let vip = unsafe { VIPS.get(vip_key.as_key()) }.ok_or(Reason::IcmpUnmatched)?;
    let state = unsafe { FLOWS.get(&s.flow) }.copied().ok_or(Reason::IcmpUnmatched)?;
    let backend = BACKENDS.get(state.backend_id).ok_or(Reason::IcmpUnmatched)?;
    if vip.mode == MODE_NAT {
        let settings = SETTINGS.get(0).ok_or(Reason::Internal)?;
        copy_addr(&mut s.to.src, &backend.addr);
        copy_addr(&mut s.to.dst, own_addr(settings, family));
        s.to.sport = backend.port;
        s.to.dport = state.nat_port;
        packet::rewrite_icmp_error(ctx, &s.headers, &s.quoted, &s.to)?;
    }
    if let Some(stats) = VIP_STATS.get_ptr_mut(vip.vip_id) {
        // SAFETY: per-CPU value.
        unsafe { (*stats).icmp_errors_forwarded += 1 };
    }
    Ok(forward_to_backend(ctx, &s.headers, state.backend_id, &backend.addr))
}

/// Routes the (rewritten) packet towards `next` with the kernel's FIB and neighbour table,
/// fills in the MAC addresses and transmits it; the answer is also stored in `cache`.
/// No route or no resolved neighbour is a drop: the kernel could not deliver a packet with
/// a VIP it does not own either.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
fn forward(ctx: &XdpContext, h: &Headers, next: &Addr, cache: Option<&mut NextHop>) -> u32 {
    // SAFETY: all-zero is a valid bpf_fib_lookup; zeroed by word (volatile: not a memset
    // call) before any field is set.
    let mut fib_mem = core::mem::MaybeUninit::<FibParams>::uninit();
    let fib: &mut FibParams = unsafe {
        let words = fib_mem.as_mut_ptr().cast::<u64>();
        for i in 0..core::mem::size_of::<FibParams>() / 8 {
            core::ptr::write_volatile(words.add(i), 0);
        }
        fib_mem.assume_init_mut()
    };
    fib.l4_protocol = h.proto;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_1.tot_len = h.ip_len;
    if h.family == FAMILY_V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = packet::addr_words(&h.src)[0];
        fib.__bindgen_anon_4.ipv4_dst = packet::addr_words(next)[0];
    } else {
        fib.family = AF_INET6;
        // SAFETY: both are 16 bytes.
        fib.__bindgen_anon_3.ipv6_src = packet::addr_words(&h.src);
        fib.__bindgen_anon_4.ipv6_dst = packet::addr_words(next);
    }
    // SAFETY: the helper reads and writes only `fib`.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), fib, core::mem::size_of::<FibParams>() as i32, 0) };
    if rc != 0 {
        return xdp_action::XDP_DROP;
    }
    if let Some(cache) = cache {
        // SAFETY: plain helper calls.
        let jiffies = unsafe { bpf_jiffies64() };
        cache.refreshed_ns = unsafe { bpf_ktime_get_coarse_ns() };
        cache.fresh_until_jiffies = fresh_until_jiffies(jiffies, NEXT_HOP_TTL_NS);
        cache.ifindex = fib.ifindex;
        copy_mac(&mut cache.smac, &fib.smac);
        copy_mac(&mut cache.dmac, &fib.dmac);
    }
    transmit(ctx, fib.ifindex, &fib.smac, &fib.dmac)
}

/// Copies a MAC address between 2-byte aligned arrays (`NextHop`, `bpf_fib_lookup`).
#[inline(always)]
fn copy_mac(to: &mut [u8; 6], from: &[u8; 6]) {
    let (to, from) = (to.as_mut_ptr().cast::<u16>(), from.as_ptr().cast::<u16>());
    for i in 0..3 {
        // SAFETY: 6 bytes each, 2-byte aligned as said above.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read(from.add(i))) };
    }
}

#[inline(always)]
fn transmit_hop(ctx: &XdpContext, hop: &NextHop) -> u32 {
    transmit(ctx, hop.ifindex, &hop.smac, &hop.dmac)
}

#[inline(always)]
fn transmit(ctx: &XdpContext, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> u32 {
    packet::set_macs(ctx, smac, dmac);
    if ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
}

/// Placed on the far end of a veth so that frames the balancer transmits are received.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark baseline: the cheapest program there is.
#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Benchmark baseline for throughput: swap the MAC addresses and send the frame back.
#[xdp]
pub fn xdp_mac_swap(ctx: XdpContext) -> u32 {
    if packet::swap_macs(&ctx) { xdp_action::XDP_TX } else { xdp_action::XDP_DROP }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
