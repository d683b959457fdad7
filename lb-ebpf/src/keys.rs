//! Keys of the VIP maps, the VIP of a key or of a flow entry, and the balancer's own
//! address by family.

use lb_common::*;

use crate::maps::{VIP_ADDRS, VIP_ENTRIES, VIPS};
use crate::mem::{Words, addr_words};

#[inline(always)]
pub fn own_addr(settings: &Settings, family: u8) -> &Addr {
    if family == FAMILY_V4 { &settings.ipv4 } else { &settings.ipv6 }
}

/// `VipKey { addr, port, proto, family }`.
#[inline(always)]
fn vip_key(addr: &Addr, port: u16, proto: u8, family: u8) -> Words<VipKey, 5> {
    let a = addr_words(addr);
    Words(
        [a[0], a[1], a[2], a[3], port as u32 | (proto as u32) << 16 | (family as u32) << 24],
        core::marker::PhantomData,
    )
}

/// The VIP at (address, port, protocol): a `VIPS` lookup, then its element by id.
#[inline(always)]
pub fn vip_at(addr: &Addr, port: u16, proto: u8, family: u8) -> Option<&'static VipInfo> {
    let key = vip_key(addr, port, proto, family);
    // SAFETY: values are only replaced whole by the controller (never written in place).
    let id = unsafe { VIPS.get(key.as_key()) }?;
    VIP_ENTRIES.get(*id).map(|entry| &entry.info)
}

/// The VIP of a flow entry whose key is `flow`: the element of the entry's VIP id, if that
/// still is the VIP the flow is addressed to (ids are reused once a VIP is gone).
#[inline(always)]
pub fn vip_of_flow(vip_id: u32, flow: &FlowKey) -> Option<&'static VipInfo> {
    let entry = VIP_ENTRIES.get(vip_id)?;
    let k = (&entry.key as *const VipKey).cast::<u32>();
    let f = (flow as *const FlowKey).cast::<u32>();
    // SAFETY: both 4-byte aligned (asserted in lb-common); words 4-7 of a `FlowKey` are its
    // destination, words 8 and 9 hold sport | dport << 16 and proto | family << 8; word 4
    // of a `VipKey` holds port | proto << 16 | family << 24 (little-endian target).
    let differ = unsafe {
        let r = |p: *const u32, i: usize| core::ptr::read(p.add(i));
        (r(k, 0) ^ r(f, 4))
            | (r(k, 1) ^ r(f, 5))
            | (r(k, 2) ^ r(f, 6))
            | (r(k, 3) ^ r(f, 7))
            | (r(k, 4) ^ ((r(f, 8) >> 16) | (r(f, 9) << 16)))
    };
    (differ == 0).then_some(&entry.info)
}

#[inline(always)]
pub fn is_vip_addr(addr: &Addr, family: u8) -> bool {
    let a = addr_words(addr);
    let key: Words<VipAddrKey, 5> = Words([a[0], a[1], a[2], a[3], family as u32], core::marker::PhantomData);
    VIP_ADDRS.get_ptr(key.as_key()).is_some()
}
