//! Client -> VIP: find the flow's backend or pick one for a new flow, rewrite, forward.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::*;

use crate::encap::{encapsulate, outer_len};
use crate::flow_table;
use crate::flows::{detach, follow, initial_state};
use crate::forward::{forward_to_backend, unsent_verdict};
use crate::keys::own_addr;
use crate::limits::{Admission, admit_new_flow, take_vip_token};
use crate::maps::*;
use crate::mem::{copy_addr, copy_words};
use crate::nat::{NoPort, reserve_nat_port};
use crate::rewrite::rewrite;
use crate::stats::Reason;
use crate::too_big::{answer_too_big, too_big};

/// Client -> VIP: follow the flow's entry (`flow`, keyed `s.flow`: a map value, written in
/// place by this flow's packets only, where a racing writer repeats the same bits) or
/// choose a backend, rewrite, forward.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn to_backend(
    ctx: &XdpContext,
    s: &mut Scratch,
    vip: &VipInfo,
    flow: Option<&mut FlowState>,
    settings: &Settings,
) -> Result<u32, Reason> {
    s.mark.vip_id = vip.vip_id;
    let vip_stats = VIP_STATS.get_ptr_mut(vip.vip_id).ok_or(Reason::Internal)?;
    // SAFETY: per-CPU value.
    let vip_stats = unsafe { &mut *vip_stats };
    vip_stats.packets += 1;
    vip_stats.bytes += s.headers.frame_len as u64;
    if vip.limits & LIMIT_PACKETS != 0 && !take_vip_token(vip, LIMIT_PACKETS) {
        vip_stats.rate_limited_packets += 1;
        s.mark.drop = DROP_RATE_LIMITED_PACKETS;
        return Ok(xdp_action::XDP_DROP);
    }
    let now = s.clock.now();
    let replaces = flow.is_some();
    // An entry made under another VIP id belongs to a VIP that is gone (the VIP at its
    // address came back with a new id): its backend id may name another backend by now.
    let ours = flow.filter(|f| f.vip_id == vip.vip_id);
    let followed = ours.and_then(|f| Some((follow(s, f, settings, now)?, f)));
    let (backend_id, backend, nat_port) = match followed {
        Some((backend, f)) => (f.backend_id, backend, f.nat_port),
        None => match new_flow(ctx, s, vip, vip_stats, replaces, settings, now) {
            Ok(picked) => picked,
            Err(drop) => {
                s.mark.drop = drop;
                return Ok(xdp_action::XDP_DROP);
            }
        },
    };
    s.mark.backend_id = backend_id;
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        let b = unsafe { &mut *b };
        b.packets += 1;
        b.bytes += s.headers.frame_len as u64;
    }
    if vip.mode == MODE_NAT {
        let h = &s.headers;
        copy_addr(&mut s.to.src, own_addr(settings, h.family));
        copy_addr(&mut s.to.dst, &backend.addr);
        s.to.sport = nat_port;
        s.to.dport = backend.port;
        rewrite(ctx, h, &s.to)?;
    } else if vip.mode != MODE_DSR {
        let gue = vip.mode == MODE_GUE;
        if let Some(mtu) = too_big(ctx, &s.headers, outer_len(backend.family, gue), backend_id) {
            vip_stats.icmp_too_big_sent += 1;
            if answer_too_big(ctx, &s.headers, mtu) {
                return Ok(xdp_action::XDP_TX);
            }
            return Err(Reason::Malformed);
        }
        let hash = flow_hash(&s.flow, settings.hash_seed) as u64;
        if !encapsulate(ctx, &mut s.headers, backend, settings, (gue as u64) << 32 | hash) {
            return Err(Reason::Malformed);
        }
        vip_stats.encapsulated_packets += 1;
    }
    let sent = forward_to_backend(ctx, &s.headers, backend_id, &backend.addr);
    // A nat or encapsulated packet is addressed to the backend: the kernel can forward it.
    let addressed = vip.mode != MODE_DSR;
    Ok(sent.unwrap_or_else(|unsent| unsent_verdict(unsent, addressed, vip_stats, &mut s.mark.drop)))
}

/// How often one CPU logs that nat ports ran out.
const PORTS_EXHAUSTED_LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// A new flow (or a new connection on the 4-tuple of an entry that `replaces`): admitted
/// by the limits, given a backend and, in nat, a port; entered in the flow table. Returns
/// the backend and port, or why a flow can't be had (a `DROP_*` reason: it is dropped).
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    s: &mut Scratch,
    vip: &VipInfo,
    vip_stats: &mut VipStats,
    replaces: bool,
    settings: &Settings,
    now: u64,
) -> Result<(u32, &'static Backend, u16), u8> {
    admitted(s, vip, vip_stats)?;
    let Some((backend_id, backend)) = pick_backend(vip, &s.flow, settings.hash_seed) else {
        vip_stats.drop_no_backend += 1;
        return Err(DROP_NO_BACKEND);
    };
    let state = initial_state(&s.headers);
    let nat = vip.mode == MODE_NAT;
    let nat_port = if nat {
        if replaces {
            // Read in place before the entry is replaced below.
            if let Some(old) = flow_table::get(&s.flow) {
                detach(s, old, settings);
            }
        }
        new_reverse_entry(s, vip, backend_id, state, now);
        match reserve_nat_port(s, backend_id, backend, now) {
            Ok(port) => port,
            Err(NoPort::TableFull) => {
                vip_stats.drop_flow_table_full += 1;
                return Err(DROP_FLOW_TABLE_FULL);
            }
            Err(NoPort::InUse) => {
                vip_stats.drop_nat_ports_exhausted += 1;
                if now.wrapping_sub(s.ports_exhausted_logged_ns) >= PORTS_EXHAUSTED_LOG_INTERVAL_NS {
                    s.ports_exhausted_logged_ns = now;
                    warn!(ctx, "nat source ports exhausted for vip {} backend {}", vip.vip_id, backend_id);
                }
                return Err(DROP_NAT_PORTS_EXHAUSTED);
            }
        }
    } else {
        0
    };
    let entry = &mut s.state;
    entry.backend_id = backend_id;
    entry.vip_id = vip.vip_id;
    entry.nat_port = nat_port;
    entry.state = state;
    entry.client = 0;
    entry.started_s = (now / 1_000_000_000) as u32;
    entry.last_seen_ns = now;
    if flow_table::insert(&s.flow, &s.state).is_err() {
        // The table is full of live connections. A dsr flow still goes by the Maglev
        // table (its packets pick the same backend while the table stays); nat can't
        // translate its replies without the entry.
        if nat {
            let _ = NAT.remove(&s.reply);
            vip_stats.drop_flow_table_full += 1;
            return Err(DROP_FLOW_TABLE_FULL);
        }
        vip_stats.untracked_flows += 1;
    }
    if replaces {
        vip_stats.reopened_flows += 1;
    }
    vip_stats.new_flows += 1;
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU value.
        unsafe { (*b).new_flows += 1 };
    }
    Ok((backend_id, backend, nat_port))
}

/// Whether the VIP's new-flow and source limits let the packet open a flow (packets that
/// open none, and VIPs without those limits, always pass); a refusal is counted, and its
/// `DROP_*` reason returned.
#[inline(always)]
fn admitted(s: &Scratch, vip: &VipInfo, vip_stats: &mut VipStats) -> Result<(), u8> {
    if vip.limits & (LIMIT_NEW_FLOWS | LIMIT_SOURCES) == 0 || !s.headers.opens_flow() {
        return Ok(());
    }
    match admit_new_flow(&s.flow, vip) {
        Admission::Admitted => Ok(()),
        Admission::SourceLimited => {
            vip_stats.rate_limited_sources += 1;
            Err(DROP_RATE_LIMITED_SOURCES)
        }
        Admission::VipLimited => {
            vip_stats.rate_limited_new_flows += 1;
            Err(DROP_RATE_LIMITED_NEW_FLOWS)
        }
    }
}

/// Fills `s.nat`: the reverse entry of the new nat flow `s.flow`.
#[inline(always)]
fn new_reverse_entry(s: &mut Scratch, vip: &VipInfo, backend_id: u32, state: u8, now: u64) {
    copy_words(&mut s.nat.client, &s.flow);
    let nat = &mut s.nat;
    nat.vip_id = vip.vip_id;
    nat.backend_id = backend_id;
    nat.watch = vip.watch;
    nat.seen = 0;
    nat.backend = 0;
    nat.client_state = state;
    nat.client_flags = 0;
    nat.last_seen_ns = now;
}

/// The backend for a new flow from the VIP's Maglev table, if it has one that serves.
/// `VIP_ENTRIES` elements are rewritten in place, not swapped whole: in the moment of a
/// switch a packet may read the new table's size with the old one's offset, or the other
/// way round, and so a slot of an older table. One that names a backend no table serves
/// from is refused.
#[inline(always)]
pub fn pick_backend(vip: &VipInfo, flow: &FlowKey, seed: u32) -> Option<(u32, &'static Backend)> {
    if vip.table_size == 0 {
        return None;
    }
    let slot = vip.table_offset + flow_hash(flow, seed) % vip.table_size;
    let backend_id = *MAGLEV.get(slot)?;
    let backend = BACKENDS.get(backend_id)?;
    (backend.flags & SERVES == SERVES).then_some((backend_id, backend))
}

const SERVES: u8 = BACKEND_ACTIVE | BACKEND_SERVING;
