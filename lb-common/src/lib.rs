//! Types shared by the XDP program and the controller: map keys and values, constants,
//! and the pure functions both sides must compute identically (flow hash, checksums).
//!
//! Every map type is `#[repr(C)]`, padded explicitly (no implicit holes, so keys hash the
//! same on both sides) and stores ports in host byte order so `bpftool map dump` reads well.
//! Types holding an `Addr` are 4-byte aligned (their sizes are multiples of 4, so this adds
//! no padding): the XDP program copies and compares addresses as 32-bit words, where
//! byte-aligned fields would cost a load and a store per byte.
#![no_std]

mod capture;
mod conn;
mod counters;
mod csum;
mod hash;
use hash::word;
mod limits;

pub use capture::*;
pub use conn::*;
pub use counters::{BackendStats, Counter, Counters, DecapStats, GlobalStats, VipStats};
pub use csum::{csum_replace_addr, csum_replace2, csum_replace4, fold};
pub use hash::{flow_hash, gue_source_port, murmur_fmix, murmur_round, nat_cursor_start};
pub use limits::*;

/// Address family tags used in keys (not the kernel's AF_* numbers, which differ by OS).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
/// The outer header's protocol of encapsulated IPv4 (`IPPROTO_IPIP`) and IPv6
/// (`IPPROTO_IPV6`) packets.
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6_IN_IP: u8 = 41;

/// Forwarding modes (`VipInfo::mode`).
pub const MODE_NAT: u8 = 0;
pub const MODE_DSR: u8 = 1;
/// Encapsulated dsr: the packet inside an outer IPv4/IPv6 header to the backend.
pub const MODE_IPIP: u8 = 2;
/// Encapsulated dsr in UDP (GUE variant 1: the inner IP header right after the UDP one).
pub const MODE_GUE: u8 = 3;

/// `Backend::flags`: the slot holds a live backend. A cleared slot makes flows that were
/// pinned to it pick again from the Maglev table.
pub const BACKEND_ACTIVE: u8 = 1;
/// `Backend::flags`: some VIP's table gives the backend new flows. A TCP SYN whose flow
/// entry points at a backend without it is a new connection reusing an old 4-tuple (the
/// client reused its port): it picks again instead of following the stale entry to a
/// backend that was ejected, failed its checks or is draining.
pub const BACKEND_SERVING: u8 = 2;

/// Map names, as pinned under the pin directory.
pub const MAP_VIPS: &str = "VIPS";
pub const MAP_VIP_ENTRIES: &str = "VIP_ENTRIES";
pub const MAP_VIP_ADDRS: &str = "VIP_ADDRS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_MAGLEV: &str = "MAGLEV";
/// The flow table, a map per family (see `FlowKeyV4`).
pub const MAP_FLOWS_V4: &str = "FLOWS_V4";
pub const MAP_FLOWS_V6: &str = "FLOWS_V6";
pub const MAP_NAT: &str = "NAT";
pub const MAP_SETTINGS: &str = "SETTINGS";
pub const MAP_VIP_STATS: &str = "VIP_STATS";
pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
pub const MAP_GLOBAL_STATS: &str = "GLOBAL_STATS";
pub const MAP_NEXT_HOPS: &str = "NEXT_HOPS";
pub const MAP_RATE_STATE: &str = "RATE_STATE";
pub const MAP_RATE_CPU_TOKENS: &str = "RATE_CPU_TOKENS";
pub const MAP_SOURCE_BUCKETS: &str = "SOURCE_BUCKETS";
pub const MAP_HEALTH_SIGNALS: &str = "HEALTH_SIGNALS";
pub const MAP_NAT_PORT_CURSORS: &str = "NAT_PORT_CURSORS";
pub const MAP_CAPTURE: &str = "CAPTURE";
pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING";

/// `MAGLEV`'s map flags: `BPF_F_MMAPABLE`, so that the controller writes tables through a
/// memory mapping instead of a syscall per slot.
pub const MAGLEV_MAP_FLAGS: usize = 1 << 10;

/// Program names in the object.
pub const PROG_LB: &str = "xdp_lb";
/// Attached to the far end of a veth so that XDP_TX/XDP_REDIRECT frames are received.
pub const PROG_PASS: &str = "xdp_pass";
/// Baselines for benchmarks: the cheapest possible program and a MAC-swapping reflector.
pub const PROG_DROP: &str = "xdp_drop";
pub const PROG_MAC_SWAP: &str = "xdp_mac_swap";
/// The benchmark's generator of many flows: `xdp_mac_swap` with a random TCP source port
/// of `GEN_FLOWS` from `GEN_FLOWS_FIRST_PORT`.
pub const PROG_GEN_FLOWS: &str = "xdp_gen_flows";
pub const GEN_FLOWS: u32 = 10_000;
pub const GEN_FLOWS_FIRST_PORT: u16 = 20_000;
/// Every program of the object, each loaded (and so verified) with it.
pub const PROGRAMS: [&str; 6] = [PROG_LB, PROG_PASS, PROG_DROP, PROG_MAC_SWAP, PROG_GEN_FLOWS, PROG_DECAP];
/// For backends of the encapsulated modes (`lb decap attach`).
pub const PROG_DECAP: &str = "xdp_decap";
pub const MAP_DECAP_SETTINGS: &str = "DECAP_SETTINGS";
pub const MAP_DECAP_ADDRS: &str = "DECAP_ADDRS";
pub const MAP_DECAP_STATS: &str = "DECAP_STATS";

/// Health checks of the encapsulated modes' backends through their tunnel: the tc program
/// on the controller's `CHECK_DEVICE`, and its map from a check's socket mark to the backend.
pub const PROG_CHECK_TUNNEL: &str = "tc_check_tunnel";
pub const MAP_CHECK_TUNNELS: &str = "CHECK_TUNNELS";
/// At most this many backends (by address and encapsulation) checked through a tunnel.
pub const MAX_CHECK_TUNNELS: u32 = 16_384;
/// A check's socket mark is `CHECK_MARK_BASE | n` (n < 2^16); the policy rule that routes
/// such marks to `CHECK_DEVICE` matches `CHECK_MARK_BASE/CHECK_MARK_MASK`.
pub const CHECK_MARK_BASE: u32 = 0x4c42_0000;
pub const CHECK_MARK_MASK: u32 = 0xffff_0000;

/// `CHECK_TUNNELS`'s value: the backend a check's packets are encapsulated for, and how.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckTunnel {
    pub backend: Backend,
    /// 1 for gue (`Settings::gue_port`), 0 for ipip.
    pub gue: u8,
    pub _pad: [u8; 3],
}

/// `xdp_decap`'s settings, one element in `DECAP_SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapSettings {
    /// The UDP port of gue packets (`balancer.gue_port` of the balancers).
    pub gue_port: u16,
    pub _pad: u16,
}

/// Compiled-in map sizes; the controller overrides them at load time from the config.
pub const DEFAULT_MAX_VIPS: u32 = 64;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
pub const DEFAULT_RING_SIZE: u32 = 65537;
pub const DEFAULT_FLOW_ENTRIES: u32 = 262_144;
pub const DEFAULT_SOURCE_ENTRIES: u32 = 65_536;

/// An IP address in 16 bytes: IPv4 in the first 4 bytes, the rest zero.
pub type Addr = [u8; 16];

// The alignment of the key types must not change their layout (shared with the kernel).
const _: () = {
    assert!(core::mem::size_of::<VipKey>() == 20);
    assert!(core::mem::size_of::<VipAddrKey>() == 20);
    assert!(core::mem::size_of::<Backend>() == 20);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowKeyV4>() == 16);
    assert!(core::mem::size_of::<FlowState>() == 24);
    assert!(core::mem::size_of::<NatState>() == 64);
    assert!(core::mem::size_of::<SourceKey>() == 20);
    assert!(core::mem::size_of::<VipInfo>() == 88);
    assert!(core::mem::size_of::<VipEntry>() == 112);
    assert!(core::mem::offset_of!(VipEntry, key).is_multiple_of(8));
};

#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKey {
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// What packets need to know about a VIP. Replaced as one map element, which is how a new
/// Maglev table is switched in atomically: the table is written aside, then `table_offset`
/// changes in a single update. Rate limits change the same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    pub vip_id: u32,
    /// First slot of the active table in `MAGLEV`.
    pub table_offset: u32,
    /// Number of slots in the table (a prime); zero means no backend is available.
    pub table_size: u32,
    pub mode: u8,
    /// Which of the buckets below are enforced (`LIMIT_*` bits); zero costs one test.
    pub limits: u8,
    /// Sources that share a `source_limit` bucket: the client address masked to this
    /// many leading bits.
    pub source_prefix_len: u8,
    /// Which passive health signals the program reports for the VIP's nat flows
    /// (`WATCH_*` bits, copied into each flow's `NatState`).
    pub watch: u8,
    /// New flows to the VIP (TCP SYNs and first packets of UDP flows).
    pub new_flow_limit: TokenBucket,
    /// Every packet to the VIP, of new and established flows.
    pub packet_limit: TokenBucket,
    /// New flows from one source prefix (see `source_prefix_len`), tracked in `SOURCE_BUCKETS`.
    pub source_limit: TokenBucket,
}

/// A VIP's element of `VIP_ENTRIES`, by VIP id: its `VipInfo`, and the key it has in
/// `VIPS`. A flow entry names its VIP by id, and ids are reused once a VIP is gone: the
/// key tells whether the id still names the VIP of the flow's destination. A removed VIP's
/// element is zeroed (no mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipEntry {
    pub info: VipInfo,
    pub key: VipKey,
    pub _pad: u32,
}

/// `VipInfo::watch` / `NatState::watch` bits: report how connection attempts are answered
/// (SYN-ACK, or RST / ICMP unreachable), and the status class of the first HTTP response.
pub const WATCH_CONNECT: u8 = 1;
pub const WATCH_HTTP: u8 = 2;

/// `NatState::seen` bits: what of the flow's replies was already reported.
pub const SEEN_CONNECT_ANSWER: u8 = 1;
pub const SEEN_HTTP_STATUS: u8 = 2;

/// `HealthSignal::kind`: what the packet path saw a backend do.
pub const SIGNAL_CONNECT_FAILED: u32 = 1;
pub const SIGNAL_CONNECTED: u32 = 2;
pub const SIGNAL_HTTP_5XX: u32 = 3;
pub const SIGNAL_HTTP_OK: u32 = 4;
/// Not about health: a dsr packet for the backend was dropped because the kernel has no
/// neighbour entry for its next hop; the controller resolves it at once.
pub const SIGNAL_NEIGHBOUR_MISSING: u32 = 5;

/// A record of `HEALTH_SIGNALS` (a ring buffer the controller reads as they come): a
/// passive health signal about one backend of a nat VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthSignal {
    pub backend_id: u32,
    pub vip_id: u32,
    pub kind: u32,
    pub _pad: u32,
}

/// Key of `VIP_ADDRS`: every address that has at least one VIP, so traffic to a VIP
/// address that the program cannot or will not serve is dropped and counted, not passed.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipAddrKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}

#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    pub port: u16,
    pub family: u8,
    pub flags: u8,
}

/// A connection as seen on the wire in one direction.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// An IPv4 `FlowKey` in 16 bytes, the key of the IPv4 flow table: hashed and compared in
/// less than half the time of the 40 bytes an IPv6 flow needs. Its last two words are the
/// `FlowKey`'s (ports, protocol, family).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKeyV4 {
    /// The IPv4 flow `key` in 16 bytes (its addresses' first words).
    pub fn of(key: &FlowKey) -> Self {
        let word = |a: &Addr| [a[0], a[1], a[2], a[3]];
        let (sport, dport, proto, family) = (key.sport, key.dport, key.proto, key.family);
        FlowKeyV4 { src: word(&key.src), dst: word(&key.dst), sport, dport, proto, family, _pad: [0; 2] }
    }

    pub fn to_flow_key(&self) -> FlowKey {
        let addr = |w: [u8; 4]| {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&w);
            a
        };
        let (sport, dport, proto, family) = (self.sport, self.dport, self.proto, self.family);
        FlowKey { src: addr(self.src), dst: addr(self.dst), sport, dport, proto, family, _pad: [0; 2] }
    }
}

/// Balancer-wide settings, one element in `SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The balancer's own addresses, used as the source of NATed packets and the outer
    /// source of encapsulated ones.
    pub ipv4: Addr,
    pub ipv6: Addr,
    pub hash_seed: u32,
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Bit `vip_addr_filter_bit(a)` is set for every VIP address `a` and the balancer's own
    /// addresses: a packet whose destination's bit is clear is for neither, with no hash
    /// lookup at all.
    pub vip_addr_filter: [u64; 4],
    pub timeouts: FlowTimeouts,
    /// The UDP destination port of `MODE_GUE` packets.
    pub gue_port: u16,
    pub _pad: [u16; 3],
}

impl Settings {
    /// Sets `bit` (from [`vip_addr_filter_bit`]) in the VIP address filter.
    pub fn mark_vip_addr_bit(&mut self, bit: u32) {
        self.vip_addr_filter[(bit / 64) as usize & 3] |= 1 << (bit % 64);
    }

    /// Whether `bit` is set in the VIP address filter; clear means certainly no VIP.
    #[inline(always)]
    pub fn may_be_vip_addr_bit(&self, bit: u32) -> bool {
        self.vip_addr_filter[(bit / 64) as usize & 3] & (1 << (bit % 64)) != 0
    }
}

/// Which bit of `Settings::vip_addr_filter` stands for `addr`.
#[inline(always)]
pub fn vip_addr_filter_bit(addr: &Addr) -> u32 {
    vip_addr_filter_bit_words([word(addr, 0), word(addr, 1), word(addr, 2), word(addr, 3)])
}

/// [`vip_addr_filter_bit`] of the address whose 32-bit words (little-endian, in address
/// order) are `w`. Runs for every packet the balancer sees, so it is as cheap as it can be
/// while spreading addresses: xor-fold to one word, then multiply-shift (the top 8 bits of
/// the product depend on every bit of the word; addresses that differ only in their last
/// byte, as VIPs of one subnet do, always get different bits). A collision only costs a
/// `VIP_ADDRS` lookup for the non-VIP traffic to the other address.
#[inline(always)]
pub fn vip_addr_filter_bit_words(w: [u32; 4]) -> u32 {
    (w[0] ^ w[1] ^ w[2] ^ w[3]).wrapping_mul(0x9e37_79b1) >> 24
}

/// Where the balancer sends packets for a backend: a per-CPU cache of the kernel's FIB and
/// neighbour answer, so that packets of existing flows skip the FIB lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// When the entry was filled (CLOCK_MONOTONIC, coarse); zero: never.
    pub refreshed_ns: u64,
    /// While `jiffies` is below this, the entry is known to be younger than its time to
    /// live without reading the clock (an inlined load instead of a helper call); then the
    /// clock decides, as without it. Zero: ask the clock.
    pub fresh_until_jiffies: u64,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// When this CPU last asked the controller to resolve the backend's neighbour entry
    /// (`SIGNAL_NEIGHBOUR_MISSING`), so that it asks at most once a second.
    pub neighbour_asked_ns: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, made only of integers, with no implicit padding.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for VipEntry {}
    unsafe impl aya::Pod for VipAddrKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowKeyV4 {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for NatState {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for GlobalStats {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for DecapSettings {}
    unsafe impl aya::Pod for CheckTunnel {}
    unsafe impl aya::Pod for DecapStats {}
    unsafe impl aya::Pod for VipRateState {}
    unsafe impl aya::Pod for VipCpuTokens {}
    unsafe impl aya::Pod for HealthSignal {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for CaptureConfig {}
    unsafe impl aya::Pod for CaptureRecord {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn vip_addr_filter_bits_spread_addresses() {
        // Addresses that differ in the last byte (v4 and v6) never share a bit.
        for family_len in [4, 16] {
            let mut seen = [false; 256];
            for v in 0..=255u8 {
                let mut a: Addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                a[family_len - 1] = v;
                let bit = vip_addr_filter_bit(&a) as usize;
                assert!(!seen[bit], "last byte {v} of a {family_len}-byte address");
                seen[bit] = true;
            }
        }
        // Any single byte that changes moves the bit most of the time.
        let base: Addr = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let bit = vip_addr_filter_bit(&base);
        let mut same = 0;
        for i in 0..16 {
            for v in 1..=255u8 {
                let mut b = base;
                b[i] ^= v;
                same += (vip_addr_filter_bit(&b) == bit) as u32;
            }
        }
        assert!(same < 16 * 255 / 64, "{same} of {} one-byte changes keep the bit", 16 * 255);
    }
}
