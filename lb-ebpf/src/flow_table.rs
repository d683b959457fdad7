//! The flow table, a map per family: an IPv4 flow is keyed in 16 bytes (`FlowKeyV4`), which
//! the kernel hashes and compares in less than half the time of an IPv6 flow's 40.

use lb_common::*;

use crate::maps::{FLOWS_V4, FLOWS_V6};
use crate::mem::Words;

/// The IPv4 flow `key` in 16 bytes: its addresses' first words, its ports, protocol and
/// family word for word.
#[inline(always)]
fn v4(key: &FlowKey) -> Words<FlowKeyV4, 4> {
    let w = (key as *const FlowKey).cast::<u32>();
    // SAFETY: a 40-byte, 4-byte aligned key: words 0 and 4 start the addresses, 8 and 9
    // hold the ports, protocol, family and padding.
    let word = |i: usize| unsafe { core::ptr::read(w.add(i)) };
    Words([word(0), word(4), word(8), word(9)], core::marker::PhantomData)
}

/// The entry of `key`, to be read and written in place (a map value, alive while the
/// program runs).
#[inline(always)]
pub fn get_ptr_mut(key: &FlowKey) -> Option<*mut FlowState> {
    if key.family == FAMILY_V4 { FLOWS_V4.get_ptr_mut(v4(key).as_key()) } else { FLOWS_V6.get_ptr_mut(key) }
}

/// The entry of `key`, read in place.
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<&'static FlowState> {
    // SAFETY: a map value, alive while the program runs; read, not kept.
    get_ptr_mut(key).map(|f| unsafe { &*f })
}

#[inline(always)]
pub fn insert(key: &FlowKey, state: &FlowState) -> Result<(), i32> {
    if key.family == FAMILY_V4 { FLOWS_V4.insert(v4(key).as_key(), state, 0) } else { FLOWS_V6.insert(key, state, 0) }
}

#[inline(always)]
pub fn remove(key: &FlowKey) {
    let _ = if key.family == FAMILY_V4 { FLOWS_V4.remove(v4(key).as_key()) } else { FLOWS_V6.remove(key) };
}
