//! ICMP errors about VIP flows, steered to the flow's backend (translated in nat,
//! encapsulated in ipip and gue).

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use crate::encap::encapsulate;
use crate::flow_table;
use crate::forward::{forward_to_backend, unsent_verdict};
use crate::keys::{own_addr, vip_at};
use crate::maps::*;
use crate::mem::copy_addr;
use crate::parse::{parse_quoted, set_flow_key_tail};
use crate::rewrite::rewrite_icmp_error;
use crate::stats::Reason;

/// An ICMP error sent to a VIP address quotes a packet the VIP sent to a client: deliver it
/// to the backend that owns that flow, so path MTU discovery and unreachables work.
// A BPF subprogram of its own: its stack frame is not added to its siblings'.
#[inline(never)]
pub fn icmp_error_to_backend(ctx: &XdpContext, s: &mut Scratch, inner_l3: usize) -> Result<u32, Reason> {
    let family = s.headers.family;
    let end = s.headers.l3 + s.headers.ip_len as usize;
    if !parse_quoted(ctx, family, inner_l3, end, &mut s.quoted) {
        return Err(Reason::IcmpUnmatched);
    }
    let quoted = &s.quoted;
    // The quoted packet went VIP -> client; the flow was keyed client -> VIP.
    copy_addr(&mut s.flow.src, &quoted.dst);
    copy_addr(&mut s.flow.dst, &quoted.src);
    set_flow_key_tail(&mut s.flow, quoted.dport, quoted.sport, quoted.proto, family);
    let vip = vip_at(&s.flow).ok_or(Reason::IcmpUnmatched)?;
    let state = flow_table::get(&s.flow).copied().ok_or(Reason::IcmpUnmatched)?;
    let backend = BACKENDS.get(state.backend_id).ok_or(Reason::IcmpUnmatched)?;
    s.mark.vip_id = vip.vip_id;
    s.mark.backend_id = state.backend_id;
    let settings = SETTINGS.get(0).ok_or(Reason::Internal)?;
    if vip.mode == MODE_NAT {
        copy_addr(&mut s.to.src, &backend.addr);
        copy_addr(&mut s.to.dst, own_addr(settings, family));
        s.to.sport = backend.port;
        s.to.dport = state.nat_port;
        rewrite_icmp_error(ctx, &s.headers, &s.quoted, &s.to)?;
    } else if vip.mode != MODE_DSR {
        // To the backend as the flow's packets go: encapsulated (gue with the flow's port).
        let gue = (vip.mode == MODE_GUE) as u64;
        let hash = flow_hash(&s.flow, settings.hash_seed) as u64;
        if !encapsulate(ctx, &mut s.headers, backend, settings, gue << 32 | hash) {
            return Err(Reason::Malformed);
        }
    }
    let stats = VIP_STATS.get_ptr_mut(vip.vip_id).ok_or(Reason::Internal)?;
    // SAFETY: per-CPU value.
    let stats = unsafe { &mut *stats };
    stats.icmp_errors_forwarded += 1;
    let sent = forward_to_backend(ctx, &s.headers, state.backend_id, &backend.addr);
    let addressed = vip.mode != MODE_DSR;
    Ok(sent.unwrap_or_else(|unsent| unsent_verdict(unsent, addressed, stats, &mut s.mark.drop)))
}
