//! Keys of the VIP maps, the VIP of a key or of a flow entry, and the balancer's own
//! address by family.

use lb_common::*;

use crate::maps::{VIP_ADDRS, VIP_ENTRIES, VIPS};
use crate::mem::{Words, addr_words};

#[inline(always)]
pub fn own_addr(settings: &Settings, family: u8) -> &Addr {
    if family == FAMILY_V4 { &settings.ipv4 } else { &settings.ipv6 }
}

/// The `VipKey` of the VIP that the flow `key` (client -> VIP) is addressed to, as words.
#[inline(always)]
fn vip_key_of(flow: &FlowKey) -> Words<VipKey, 5> {
    let f = (flow as *const FlowKey).cast::<u32>();
    // SAFETY: a 40-byte, 4-byte aligned key: words 4-7 are its destination, words 8 and 9
    // hold sport | dport << 16 and proto | family << 8 (little-endian target); word 4 of a
    // `VipKey` holds port | proto << 16 | family << 24.
    let r = |i: usize| unsafe { core::ptr::read(f.add(i)) };
    Words([r(4), r(5), r(6), r(7), (r(8) >> 16) | (r(9) << 16)], core::marker::PhantomData)
}

/// The VIP that the flow `key` is addressed to: a `VIPS` lookup, then its element by id.
#[inline(always)]
pub fn vip_at(flow: &FlowKey) -> Option<&'static VipInfo> {
    // SAFETY: values are only replaced whole by the controller (never written in place).
    let id = unsafe { VIPS.get(vip_key_of(flow).as_key()) }?;
    vip_of_flow(*id, flow)
}

/// The VIP with id `vip_id`, if it is the VIP the flow `key` is addressed to: ids are
/// reused once a VIP is gone, and in the moment between a new VIP taking an id and the old
/// one's key leaving `VIPS`, both keys lead to it.
#[inline(always)]
pub fn vip_of_flow(vip_id: u32, flow: &FlowKey) -> Option<&'static VipInfo> {
    let entry = VIP_ENTRIES.get(vip_id)?;
    let (want, have) = (vip_key_of(flow), &entry.key as *const VipKey as *const u32);
    // SAFETY: 20 bytes, 4-byte aligned (asserted in lb-common).
    let r = |i: usize| unsafe { core::ptr::read(have.add(i)) };
    let differ = (want.0[0] ^ r(0)) | (want.0[1] ^ r(1)) | (want.0[2] ^ r(2)) | (want.0[3] ^ r(3)) | (want.0[4] ^ r(4));
    (differ == 0).then_some(&entry.info)
}

#[inline(always)]
pub fn is_vip_addr(addr: &Addr, family: u8) -> bool {
    VIP_ADDRS.get_ptr(addr_key(addr_words(addr), family).as_key()).is_some()
}

/// The `VipAddrKey` (as words) of the address whose words are `a`.
#[inline(always)]
pub fn addr_key(a: [u32; 4], family: u8) -> Words<VipAddrKey, 5> {
    Words([a[0], a[1], a[2], a[3], family as u32], core::marker::PhantomData)
}
