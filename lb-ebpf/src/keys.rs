//! Keys of the VIP maps, and the balancer's own address by family.

use lb_common::*;

use crate::maps::VIP_ADDRS;
use crate::mem::{Words, addr_words};

#[inline(always)]
pub fn own_addr(settings: &Settings, family: u8) -> &Addr {
    if family == FAMILY_V4 { &settings.ipv4 } else { &settings.ipv6 }
}

/// `VipKey { addr, port, proto, family }`.
#[inline(always)]
pub fn vip_key(addr: &Addr, port: u16, proto: u8, family: u8) -> Words<VipKey, 5> {
    let a = addr_words(addr);
    Words(
        [a[0], a[1], a[2], a[3], port as u32 | (proto as u32) << 16 | (family as u32) << 24],
        core::marker::PhantomData,
    )
}

#[inline(always)]
pub fn is_vip_addr(addr: &Addr, family: u8) -> bool {
    let a = addr_words(addr);
    let key: Words<VipAddrKey, 5> = Words([a[0], a[1], a[2], a[3], family as u32], core::marker::PhantomData);
    VIP_ADDRS.get_ptr(key.as_key()).is_some()
}
