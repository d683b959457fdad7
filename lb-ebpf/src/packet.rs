//! Frame access: every read and write is bounds-checked against `data_end` right before
//! it, which is what the verifier needs; offsets are constant past the L3 start.

use aya_ebpf::programs::{TcContext, XdpContext};
use lb_common::*;

use crate::mem::{addr_words, set_addr_words};
use crate::stats::Reason;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_MIN_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
pub const ICMP_CSUM_OFF: usize = 2;
pub const IPV4_CSUM_OFF: usize = 10;
pub const TCP_FLAGS_OFF: usize = 13;
pub const TCP_DATA_OFFSET_OFF: usize = 12;
pub const UDP_LEN_OFF: usize = 4;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers that are not fragments (hop-by-hop, routing, AH, destination
/// options, mobility, HIP, shim6).
pub const IPV6_EXTENSIONS: [u8; 7] = [0, 43, 51, 60, 135, 139, 140];

#[inline(always)]
pub fn check(addr: usize, len: usize, end: usize) -> Result<(), Reason> {
    if addr + len > end { Err(Reason::Malformed) } else { Ok(()) }
}

/// Header offsets never reach this; masking with it gives the verifier a bound on offsets
/// that passed through the stack into a subprogram and lost their known range there.
pub const MAX_HEADER_OFFSET: usize = 0xfff;

/// A frame the program reads and writes in place: an XDP frame, or the linear part of a
/// socket buffer (tc). `data` and `data_end` are read from the context on every call, with
/// volatile reads: LLVM would otherwise pass them into subprograms as plain integers, which
/// the verifier no longer recognises as packet pointers.
pub trait Frame {
    fn bounds(&self) -> (usize, usize);
}

impl Frame for XdpContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // SAFETY: `self.ctx` is the live xdp_md of this run.
        unsafe {
            (
                core::ptr::read_volatile(&(*self.ctx).data) as usize,
                core::ptr::read_volatile(&(*self.ctx).data_end) as usize,
            )
        }
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        // SAFETY: `self.skb.skb` is the live __sk_buff of this run.
        unsafe {
            let skb = self.skb.skb;
            (core::ptr::read_volatile(&(*skb).data) as usize, core::ptr::read_volatile(&(*skb).data_end) as usize)
        }
    }
}

/// The address of `len` bytes at offset `off` of the frame, if they are all inside it.
#[inline(always)]
pub fn at(ctx: &impl Frame, off: usize, len: usize) -> Result<usize, Reason> {
    let (data, end) = ctx.bounds();
    let addr = data + (off & MAX_HEADER_OFFSET);
    check(addr, len, end)?;
    Ok(addr)
}

/// The frame's length.
#[inline(always)]
pub fn frame_len(ctx: &impl Frame) -> u32 {
    let (data, end) = ctx.bounds();
    (end - data) as u32
}

#[inline(always)]
pub fn read_u8(addr: usize) -> u8 {
    // SAFETY: callers checked `addr + 1 <= end`.
    unsafe { *(addr as *const u8) }
}

// Packet accesses below assume what XDP guarantees in practice: the frame starts at least
// 2-byte aligned, so every 16-bit header field is 2-byte aligned (the Ethernet header is
// 14 bytes, a VLAN tag 4). 32-bit fields are accessed as two 16-bit halves: the BPF
// backend would split a misaligned 32-bit access into four byte accesses.

#[inline(always)]
pub fn read_be16(addr: usize) -> u16 {
    // SAFETY: callers checked `addr + 2 <= end`; aligned as said above.
    u16::from_be(unsafe { core::ptr::read(addr as *const u16) })
}

#[inline(always)]
pub fn write_be16(addr: usize, value: u16) {
    // SAFETY: callers checked `addr + 2 <= end`; aligned as said above.
    unsafe { core::ptr::write(addr as *mut u16, value.to_be()) }
}

/// 4 bytes of the packet as a word in memory order (as `Addr` words are kept).
#[inline(always)]
pub fn read_word(addr: usize) -> u32 {
    // SAFETY: callers checked `addr + 4 <= end`; aligned as said above.
    unsafe {
        let lo = core::ptr::read(addr as *const u16) as u32;
        let hi = core::ptr::read((addr + 2) as *const u16) as u32;
        lo | hi << 16
    }
}

#[inline(always)]
pub fn write_word(addr: usize, value: u32) {
    // SAFETY: callers checked `addr + 4 <= end`; aligned as said above.
    unsafe {
        core::ptr::write(addr as *mut u16, value as u16);
        core::ptr::write((addr + 2) as *mut u16, (value >> 16) as u16);
    }
}

/// Reads the address at `pkt` into `to`; IPv4 fills the first word and zeroes the rest.
#[inline(always)]
pub fn read_addr(to: &mut Addr, pkt: usize, family: u8) {
    if family == FAMILY_V4 {
        set_addr_words(to, [read_word(pkt), 0, 0, 0]);
    } else {
        set_addr_words(to, [read_word(pkt), read_word(pkt + 4), read_word(pkt + 8), read_word(pkt + 12)]);
    }
}

#[inline(always)]
pub fn write_addr(pkt: usize, value: &Addr, family: u8) {
    let w = addr_words(value);
    write_word(pkt, w[0]);
    if family != FAMILY_V4 {
        write_word(pkt + 4, w[1]);
        write_word(pkt + 8, w[2]);
        write_word(pkt + 12, w[3]);
    }
}
