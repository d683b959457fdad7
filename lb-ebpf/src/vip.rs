//! Client -> VIP: find the flow's backend or pick one for a new flow, rewrite, forward.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::*;

use crate::forward::forward_to_backend;
use crate::keys::own_addr;
use crate::limits::{Admission, admit_new_flow, take_vip_token};
use crate::maps::*;
use crate::mem::{Words, copy_addr, copy_words};
use crate::nat::reserve_nat_port;
use crate::rewrite::rewrite;
use crate::stats::Reason;

/// Client -> VIP: find or choose the backend, rewrite, forward.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn to_backend(ctx: &XdpContext, s: &mut Scratch, vip: &VipInfo) -> Result<u32, Reason> {
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
        rewrite(ctx, h, &s.to)?;
    }
    let action = forward_to_backend(ctx, h, backend_id, &backend.addr);
    if action == xdp_action::XDP_DROP {
        vip_stats.drop_no_route += 1;
    }
    Ok(action)
}

/// The backend for a new flow from the VIP's Maglev table, if it has one.
#[inline(always)]
pub fn pick_backend(vip: &VipInfo, flow: &FlowKey, seed: u32) -> Option<(u32, &'static Backend)> {
    if vip.table_size == 0 {
        return None;
    }
    let slot = vip.table_offset + flow_hash(flow, seed) % vip.table_size;
    let backend_id = *MAGLEV.get(slot)?;
    let backend = BACKENDS.get(backend_id)?;
    (backend.flags & BACKEND_ACTIVE != 0).then_some((backend_id, backend))
}
