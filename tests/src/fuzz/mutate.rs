//! Mutations of a frame: bit flips, bytes set, truncation, padding, length fields set to
//! boundary values, garbage after the Ethernet header, header fields swapped, the protocol
//! changed, TCP flags, UDP checksums, fragments, IPv4 options and IPv6 extension headers,
//! VLAN tags.

use std::ops::Range;

use fastrand::Rng;

use super::frame::{ETH_P_IPV6, Layout, be16};

/// BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
pub const MIN_FRAME: usize = 14;
const IP_PROTOCOLS: [u8; 9] = [1, 6, 17, 47, 58, 132, 0, 44, 255];

fn set16(frame: &mut [u8], at: usize, value: u16) {
    if at + 2 <= frame.len() {
        frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }
}

/// Lengths are set to zero, the edges of headers, one off the true value, and the largest.
fn boundary(rng: &mut Rng, actual: u16) -> u16 {
    *rng.choice(&[0, 1, 7, 8, 19, 20, 40, actual.wrapping_sub(1), actual.wrapping_add(1), u16::MAX]).expect("values")
}

/// Applies one random mutation to `frame`.
pub fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    let Some(layout) = Layout::of(frame) else {
        return mutate_bytes(rng, frame);
    };
    match rng.u8(0..12) {
        0..3 => mutate_bytes(rng, frame),
        3..5 => set_length(rng, frame, &layout),
        5 => swap_fields(rng, frame, &layout),
        6 => frame[layout.l3 + if layout.v6 { 6 } else { 9 }] = *rng.choice(&IP_PROTOCOLS).expect("protocols"),
        7 => fragment(rng, frame, &layout),
        8 => insert_ip_extension(frame, &layout),
        9 => insert_vlan_tag(rng, frame),
        10 => set_l4_field(rng, frame, &layout),
        _ => garbage(rng, frame, &layout),
    }
}

fn mutate_bytes(rng: &mut Rng, frame: &mut Vec<u8>) {
    let at = rng.usize(..frame.len());
    match rng.u8(0..4) {
        0 => frame[at] ^= 1 << rng.u8(0..8),
        1 => {
            let random = rng.u8(..);
            frame[at] = *rng.choice(&[0, 0xff, 0x7f, 0x80, random]).expect("bytes");
        }
        2 => frame.truncate(rng.usize(MIN_FRAME..=frame.len())),
        _ => extend_random(rng, frame, 1..64),
    }
}

/// One of the IP, UDP or TCP length fields (or the IPv4 header length) set to a boundary.
fn set_length(rng: &mut Rng, frame: &mut [u8], layout: &Layout) {
    let (l3, l4) = (layout.l3, layout.l4);
    match rng.u8(0..4) {
        0 if layout.v6 => set16(frame, l3 + 4, boundary(rng, (layout.end - l4) as u16)),
        0 => set16(frame, l3 + 2, boundary(rng, (layout.end - l3) as u16)),
        1 if !layout.v6 => frame[l3] = 0x40 | rng.u8(0..16),
        2 if layout.proto == 17 => set16(frame, l4 + 4, boundary(rng, (layout.end - l4) as u16)),
        _ if layout.proto == 6 && l4 + 13 <= frame.len() => frame[l4 + 12] = rng.u8(0..16) << 4,
        _ => set16(frame, l3 + 2, boundary(rng, be16(frame, l3 + 2).unwrap_or(0))),
    }
}

/// TCP flags set at random, or a UDP checksum set to zero (none, over IPv4).
fn set_l4_field(rng: &mut Rng, frame: &mut [u8], layout: &Layout) {
    match layout.proto {
        6 if layout.l4 + 14 <= frame.len() => frame[layout.l4 + 13] = rng.u8(..),
        17 => set16(frame, layout.l4 + 6, 0),
        _ => {}
    }
}

/// Source and destination swapped: MACs, IP addresses, or ports.
fn swap_fields(rng: &mut Rng, frame: &mut [u8], layout: &Layout) {
    let (a, b, len) = match rng.u8(0..3) {
        0 => (0, 6, 6),
        1 if layout.v6 => (layout.l3 + 8, layout.l3 + 24, 16),
        1 => (layout.l3 + 12, layout.l3 + 16, 4),
        _ => (layout.l4, layout.l4 + 2, 2),
    };
    if b + len <= frame.len() {
        for i in 0..len {
            frame.swap(a + i, b + i);
        }
    }
}

/// IPv4 with more-fragments or an offset, or IPv6 with a fragment header.
fn fragment(rng: &mut Rng, frame: &mut Vec<u8>, layout: &Layout) {
    if layout.v6 {
        let more = rng.bool() as u8;
        insert_v6_header(frame, layout, 44, [0, 0, 0, more, 0, 0, 0, 1]);
    } else {
        let flags = *rng.choice(&[0x2000u16, 0x0001, 0x2001, 0x1fff, 0x4000]).expect("fragment bits");
        set16(frame, layout.l3 + 6, flags);
    }
}

/// IPv4 options (a no-op and an end of list) or an IPv6 extension header.
fn insert_ip_extension(frame: &mut Vec<u8>, layout: &Layout) {
    if layout.v6 {
        insert_v6_header(frame, layout, 0, [0, 1, 4, 0, 0, 0, 0, 0]);
    } else if layout.l4 == layout.l3 + 20 {
        frame.splice(layout.l4..layout.l4, [1, 1, 1, 0]);
        frame[layout.l3] = 0x46;
        set16(frame, layout.l3 + 2, (layout.end - layout.l3 + 4) as u16);
    }
}

/// An 8-byte IPv6 extension header `next` (its own next header set to the old one).
fn insert_v6_header(frame: &mut Vec<u8>, layout: &Layout, next: u8, mut header: [u8; 8]) {
    header[0] = layout.proto;
    frame.splice(layout.l4..layout.l4, header);
    frame[layout.l3 + 6] = next;
    set16(frame, layout.l3 + 4, (layout.end - layout.l4 + 8) as u16);
}

fn insert_vlan_tag(rng: &mut Rng, frame: &mut Vec<u8>) {
    let tpid: u16 = if rng.bool() { 0x8100 } else { 0x88a8 };
    let [a, b] = tpid.to_be_bytes();
    frame.splice(12..12, [a, b, 0, rng.u8(1..100)]);
}

/// Random bytes after the IP header's version (kept half of the time).
fn garbage(rng: &mut Rng, frame: &mut Vec<u8>, layout: &Layout) {
    let keep = layout.l3 + rng.bool() as usize;
    frame.truncate(keep);
    extend_random(rng, frame, 0..120);
    if keep > layout.l3 {
        let version = if be16(frame, layout.l3 - 2) == Some(ETH_P_IPV6) { 0x60 } else { 0x45 };
        frame[layout.l3] = version;
    }
}

fn extend_random(rng: &mut Rng, frame: &mut Vec<u8>, len: Range<usize>) {
    let len = rng.usize(len);
    frame.extend(std::iter::repeat_with(|| rng.u8(..)).take(len));
}
