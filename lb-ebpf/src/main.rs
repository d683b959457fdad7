//! The packet path: one XDP program that finds the VIP of a packet, keeps flows on their
//! backend, picks a backend for new flows from the VIP's Maglev table, and forwards in
//! `nat` or `dsr` mode. Everything else goes to the kernel untouched, or is dropped on
//! purpose and counted by reason (see `GlobalStats`).
//!
//! A packet's path through the modules: `filter` (is it for us at all), `parse` (headers) -> `vip` (client -> VIP: the
//! flow's backend, `limits`, `nat` port) or `nat::to_client` (backend -> balancer) or
//! `icmp` (errors about a flow) -> `rewrite` -> `forward`. `signals` reports what nat
//! replies say about backends; `maps` holds every map; `stats` counts what leaves the path;
//! `capture` copies packets for `lb capture` around all of it, while switched on.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values are passed by reference on purpose: they live in per-CPU scratch
// memory, and a copy would land on the 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod capture;
mod check_tunnel;
mod decap;
mod encap;
mod filter;
mod flow_table;
mod flows;
mod forward;
mod icmp;
mod keys;
mod limits;
mod maps;
mod mem;
mod nat;
mod packet;
mod parse;
mod rewrite;
mod signals;
mod stats;
mod too_big;
mod vip;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::*;

use capture::{capture_in, capture_on, capture_out};
use filter::may_concern_us;
use icmp::icmp_error_to_backend;
use keys::{is_vip_addr, own_addr, vip_at, vip_of_flow};
use maps::{SCRATCH, SETTINGS, Scratch};
use mem::addr_eq;
use nat::to_client;
use parse::{L4, Parsed, parse};
use rewrite::swap_macs;
use signals::observe_unreachable_backend;
use stats::{Reason, count_global};
use vip::to_backend;

#[xdp]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    let capturing = capture_on();
    let concerns_us = may_concern_us(&ctx);
    if !concerns_us && !capturing {
        count_global(Reason::Passed);
        return xdp_action::XDP_PASS;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        count_global(Reason::Internal);
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU, large and aligned enough (asserted in `maps`); an XDP run is not
    // preempted by another run on the same CPU. Zeroed memory is a valid `Scratch`.
    let s = unsafe { &mut *scratch.cast::<Scratch>() };
    if capturing {
        capture_in(&ctx, s);
    }
    let result = if concerns_us { try_xdp_lb(&ctx, s) } else { Err(Reason::Passed) };
    let (verdict, drop) = match result {
        Ok(action) => (action, 0),
        Err(reason) => {
            count_global(reason);
            if reason == Reason::Passed {
                (xdp_action::XDP_PASS, 0)
            } else {
                (xdp_action::XDP_DROP, reason.drop_code())
            }
        }
    };
    if capturing {
        capture_out(&ctx, s, verdict, drop);
    }
    verdict
}

/// A packet that may be for a VIP or the balancer (see `filter`).
#[inline(always)]
fn try_xdp_lb(ctx: &XdpContext, s: &mut Scratch) -> Result<u32, Reason> {
    // `parse` writes every field of the headers that this packet's path reads (no reset:
    // all stores are of defined values, and a reset costs as much as the parse).
    let h = &mut s.headers;
    if let Parsed::Unusual(reason) = parse(ctx, h)? {
        // Fragments, options and extension headers are fine for the kernel's own
        // traffic, but a VIP flow cannot be classified without its ports.
        return Err(if is_vip_addr(&h.dst, h.family) { reason } else { Reason::Passed });
    }
    let settings = SETTINGS.get(0).ok_or(Reason::Internal)?;
    let to_own_addr = addr_eq(&h.dst, own_addr(settings, h.family));
    match h.l4 {
        L4::Ports if !to_own_addr => to_vip(ctx, s, settings),
        L4::Ports => {
            // The balancer's own address: nat replies, unless a VIP has the address too.
            h.flow_key_into(&mut s.flow);
            if let Some(vip) = vip_at(&s.flow) {
                return to_backend(ctx, s, vip, flow_entry(&s.flow), settings);
            }
            to_client(ctx, s)
        }
        L4::IcmpError => {
            if h.icmp_unreachable && to_own_addr {
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

/// TCP or UDP to an address other than the balancer's: existing flows first, whose entry
/// names their VIP (an array element away), then the VIP of a new flow by its key.
#[inline(always)]
fn to_vip(ctx: &XdpContext, s: &mut Scratch, settings: &Settings) -> Result<u32, Reason> {
    s.headers.flow_key_into(&mut s.flow);
    let flow = flow_entry(&s.flow);
    if let Some(vip) = flow.as_ref().and_then(|f| vip_of_flow(f.vip_id, &s.flow)) {
        return to_backend(ctx, s, vip, flow, settings);
    }
    if let Some(vip) = vip_at(&s.flow) {
        return to_backend(ctx, s, vip, flow, settings);
    }
    let h = &s.headers;
    Err(if is_vip_addr(&h.dst, h.family) { Reason::UnknownVipPort } else { Reason::Passed })
}

/// The flow table's entry of `key`, to be read and written in place.
#[inline(always)]
fn flow_entry(key: &FlowKey) -> Option<&'static mut FlowState> {
    // SAFETY: a map value, alive while the program runs (see `to_backend`).
    flow_table::get_ptr_mut(key).map(|f| unsafe { &mut *f })
}

/// For backends of the encapsulated modes: the inner packet of ipip and gue to the stack.
#[xdp]
pub fn xdp_decap(ctx: XdpContext) -> u32 {
    decap::decapsulate(&ctx);
    xdp_action::XDP_PASS
}

/// On the egress of the controller's `lb-check` device: health checks of ipip and gue
/// backends, encapsulated for the backend their socket mark names.
#[classifier]
pub fn tc_check_tunnel(ctx: TcContext) -> i32 {
    check_tunnel::send(&ctx)
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
    if swap_macs(&ctx) { xdp_action::XDP_TX } else { xdp_action::XDP_DROP }
}

/// Benchmark generator of many flows: as `xdp_mac_swap`, and the frame (Ethernet, IPv4
/// without options, TCP, as the bench builds it) gets a random one of `GEN_FLOWS` source
/// ports from `GEN_FLOWS_FIRST_PORT`, its checksum updated, so that the receiver sees that
/// many flows.
#[xdp]
pub fn xdp_gen_flows(ctx: XdpContext) -> u32 {
    const SPORT: usize = packet::ETH_HLEN + 20;
    let Ok(tcp) = packet::at(&ctx, SPORT, 20) else {
        return xdp_action::XDP_DROP;
    };
    if !swap_macs(&ctx) {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: a helper without arguments.
    let random = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() };
    let port = GEN_FLOWS_FIRST_PORT + (random % GEN_FLOWS) as u16;
    let old = packet::read_be16(tcp);
    packet::write_be16(tcp, port);
    packet::write_be16(tcp + 16, csum_replace2(packet::read_be16(tcp + 16), old, port));
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
pub fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
