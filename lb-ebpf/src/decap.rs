//! `xdp_decap`, the program backends of the encapsulated modes attach (`lb decap attach`):
//! strips the outer header of IPv4 or IPv6 in IPv4/IPv6 (ipip) and of gue (UDP to the
//! configured port) from packets whose outer destination is one of the host's addresses,
//! and passes the inner packet to the stack, which delivers it to the VIP on its loopback.
//! Every other packet passes untouched.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::*;

use crate::keys::addr_key;
use crate::maps::{DECAP_ADDRS, DECAP_SETTINGS, DECAP_STATS};
use crate::packet::*;
use crate::stats::Reason;

/// Strips the outer headers of an encapsulated packet for this host, counting what it did;
/// the verdict is always XDP_PASS.
#[inline(always)]
pub fn decapsulate(ctx: &XdpContext) {
    let Some(stats) = DECAP_STATS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value.
    let stats = unsafe { &mut *stats };
    match strip(ctx) {
        Ok(Stripped::Yes) => stats.decapsulated += 1,
        Ok(Stripped::NotForHost) => stats.not_for_host += 1,
        Err(_) => stats.passed += 1,
    }
}

enum Stripped {
    Yes,
    /// Encapsulated, but to an address that is not the host's: left for the kernel.
    NotForHost,
}

/// Removes the outer header of an encapsulated packet to this host; an error for any packet
/// that is not one this program reads as encapsulated.
#[inline(always)]
fn strip(ctx: &XdpContext) -> Result<Stripped, Reason> {
    let eth = at(ctx, 0, ETH_HLEN)?;
    let mut ethertype = read_be16(eth + 12);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = read_be16(at(ctx, 0, ETH_HLEN + 4)? + 16);
        l3 = ETH_HLEN + 4;
    }
    let settings = DECAP_SETTINGS.get(0).ok_or(Reason::Internal)?;
    let (outer_len, dst_family, inner_proto) = match ethertype {
        ETH_P_IP => {
            let ip = at(ctx, l3, IPV4_HLEN)?;
            // Options or fragments: the kernel's (it reassembles; no tunnel takes them).
            if read_u8(ip) != 0x45 || read_be16(ip + 6) & 0x3fff != 0 {
                return Err(Reason::Passed);
            }
            let len = outer_len(ctx, l3 + IPV4_HLEN, read_u8(ip + 9), settings.gue_port)?;
            (IPV4_HLEN + len.0, (ip + 16, FAMILY_V4), len.1)
        }
        ETH_P_IPV6 => {
            let ip = at(ctx, l3, IPV6_HLEN)?;
            let len = outer_len(ctx, l3 + IPV6_HLEN, read_u8(ip + 6), settings.gue_port)?;
            (IPV6_HLEN + len.0, (ip + 24, FAMILY_V6), len.1)
        }
        _ => return Err(Reason::Passed),
    };
    let (at_dst, family) = dst_family;
    let dst = if family == FAMILY_V4 {
        [read_word(at_dst), 0, 0, 0]
    } else {
        [read_word(at_dst), read_word(at_dst + 4), read_word(at_dst + 8), read_word(at_dst + 12)]
    };
    if DECAP_ADDRS.get_ptr(addr_key(dst, family).as_key()).is_none() {
        return Ok(Stripped::NotForHost);
    }
    // The Ethernet header (and VLAN tag) moves up to where the inner packet starts.
    for i in 0..(ETH_HLEN + 4) / 2 {
        if 2 * i + 2 < l3 {
            let value = read_be16(at(ctx, 2 * i, 2)?);
            write_be16(at(ctx, outer_len + 2 * i, 2)?, value);
        }
    }
    let inner_ethertype = if inner_proto == PROTO_IPIP { ETH_P_IP } else { ETH_P_IPV6 };
    write_be16(at(ctx, outer_len + l3 - 2, 2)?, inner_ethertype);
    // SAFETY: plain helper call; the frame is reached through `at` only, after it too.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(Reason::Internal);
    }
    Ok(Stripped::Yes)
}

/// After an outer IP header with protocol `proto` (at `l4`): the length of what follows it
/// up to the inner packet (0 for ipip, the UDP header for gue) and the inner packet's
/// family as an IP protocol (`PROTO_IPIP` or `PROTO_IPV6_IN_IP`), checked against the inner
/// header's version.
#[inline(always)]
fn outer_len(ctx: &XdpContext, l4: usize, proto: u8, gue_port: u16) -> Result<(usize, u8), Reason> {
    let (after, inner) = match proto {
        PROTO_IPIP | PROTO_IPV6_IN_IP => (0, proto),
        PROTO_UDP => {
            let udp = at(ctx, l4, UDP_HLEN)?;
            if read_be16(udp + 2) != gue_port {
                return Err(Reason::Passed);
            }
            // GUE variant 1: the inner IP header's version tells its family.
            let version = read_u8(at(ctx, l4 + UDP_HLEN, 1)?) >> 4;
            (UDP_HLEN, if version == 4 { PROTO_IPIP } else { PROTO_IPV6_IN_IP })
        }
        _ => return Err(Reason::Passed),
    };
    let version = read_u8(at(ctx, l4 + after, 1)?) >> 4;
    let expected = if inner == PROTO_IPIP { 4 } else { 6 };
    if version != expected {
        return Err(Reason::Malformed);
    }
    Ok((after, inner))
}
