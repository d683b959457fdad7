//! Types shared by the XDP program and the controller: map keys and values, constants,
//! and the pure functions both sides must compute identically (flow hash, checksums).
//!
//! Every map type is `#[repr(C)]`, padded explicitly (no implicit holes, so keys hash the
//! same on both sides) and stores ports in host byte order so `bpftool map dump` reads well.
//! Types holding an `Addr` are 4-byte aligned (their sizes are multiples of 4, so this adds
//! no padding): the XDP program copies and compares addresses as 32-bit words, where
//! byte-aligned fields would cost a load and a store per byte.
#![no_std]

mod conn;
mod counters;

pub use conn::*;
pub use counters::{BackendStats, Counter, Counters, GlobalStats, VipStats};

/// Address family tags used in keys (not the kernel's AF_* numbers, which differ by OS).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Forwarding modes (`VipInfo::mode`).
pub const MODE_NAT: u8 = 0;
pub const MODE_DSR: u8 = 1;

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
pub const MAP_VIP_ADDRS: &str = "VIP_ADDRS";
pub const MAP_BACKENDS: &str = "BACKENDS";
pub const MAP_MAGLEV: &str = "MAGLEV";
pub const MAP_FLOWS: &str = "FLOWS";
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

/// Program names in the object.
pub const PROG_LB: &str = "xdp_lb";
/// Attached to the far end of a veth so that XDP_TX/XDP_REDIRECT frames are received.
pub const PROG_PASS: &str = "xdp_pass";
/// Baselines for benchmarks: the cheapest possible program and a MAC-swapping reflector.
pub const PROG_DROP: &str = "xdp_drop";
pub const PROG_MAC_SWAP: &str = "xdp_mac_swap";

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
    assert!(core::mem::size_of::<FlowState>() == 24);
    assert!(core::mem::size_of::<NatState>() == 64);
    assert!(core::mem::size_of::<SourceKey>() == 20);
    assert!(core::mem::size_of::<VipInfo>() == 88);
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

/// The shortest tolerance of a per-source bucket. Those buckets read the kernel's coarse
/// clock, which only moves at each timer tick (at most 10 ms: HZ is at least 100): with a
/// tolerance below a tick, a bucket would admit fewer tokens per tick than its rate.
pub const SOURCE_TOLERANCE_MIN_NS: u64 = 10_000_000;

/// `VipInfo::limits` bits.
pub const LIMIT_NEW_FLOWS: u8 = 1;
pub const LIMIT_PACKETS: u8 = 2;
pub const LIMIT_SOURCES: u8 = 4;

/// A token bucket in its GCRA form: its whole state is one timestamp, the theoretical
/// arrival time (TAT). The bucket is full when the TAT is not ahead of now; each token
/// taken moves it `emission_ns` (one token's worth of refill time) forward; tokens may be
/// taken while that keeps the TAT within `tolerance_ns` (burst x emission) of now. One
/// timestamp updated with compare-and-swap makes the bucket exact when every CPU shares it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub emission_ns: u64,
    pub tolerance_ns: u64,
    /// Tokens a CPU takes from a VIP's shared bucket at once and then spends without
    /// touching the shared TAT (see `VipCpuTokens`): about a millisecond's worth, so CPUs
    /// hold back at most that much of the rate each. 1 means every token is taken alone.
    pub batch: u32,
    pub _pad: u32,
}

impl TokenBucket {
    /// The bucket's next TAT if a token can be taken at `now` from a bucket at `tat`.
    #[inline(always)]
    pub fn take(&self, tat: u64, now: u64) -> Option<u64> {
        self.take_n(tat, now, 1)
    }

    /// The bucket's next TAT if `n` tokens can be taken at `now` from a bucket at `tat`.
    /// Taking tokens never moves a TAT beyond the tolerance, so one that is beyond it was
    /// left by an earlier configuration of the bucket (or an earlier VIP with the same
    /// id): the bucket starts over, full.
    #[inline(always)]
    pub fn take_n(&self, tat: u64, now: u64, n: u32) -> Option<u64> {
        let limit = now + self.tolerance_ns;
        let start = if tat > now && tat <= limit { tat } else { now };
        let next = start + self.emission_ns * n as u64;
        if next <= limit { Some(next) } else { None }
    }
}

/// Value of `RATE_CPU_TOKENS` (per CPU, per VIP id): tokens this CPU took from the VIP's
/// shared buckets in a batch and has not spent yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipCpuTokens {
    pub new_flows: u32,
    pub packets: u32,
}

/// Value of `RATE_STATE`, per VIP id: the TATs of the VIP's shared buckets, each on a
/// cache line of its own (every CPU writes them).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipRateState {
    pub new_flows_tat_ns: u64,
    pub _pad1: [u64; 7],
    pub packets_tat_ns: u64,
    pub _pad2: [u64; 7],
}

/// Key of `SOURCE_BUCKETS` (an LRU map, so a flood of sources evicts the least recent
/// ones instead of exhausting memory): a client prefix of one VIP. The value is the
/// bucket's TAT.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// The client address masked to `VipInfo::source_prefix_len` bits.
    pub addr: Addr,
    pub vip_id: u32,
}

/// The 32-bit word `i` (memory order, as read from an `Addr`) of the mask that keeps the
/// first `prefix_len` bits of an address.
#[inline(always)]
pub fn prefix_mask_word(prefix_len: u8, i: u32) -> u32 {
    let bits = (prefix_len as u32).saturating_sub(i * 32);
    let mask = if bits >= 32 {
        u32::MAX
    } else if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    // Addresses are kept in network byte order; words are read little-endian.
    mask.swap_bytes()
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

/// Balancer-wide settings, one element in `SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The balancer's own addresses, used as the source of NATed packets.
    pub ipv4: Addr,
    pub ipv6: Addr,
    pub hash_seed: u32,
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Bit `vip_addr_filter_bit(a)` is set for every VIP address `a`: a packet whose
    /// destination's bit is clear is not for a VIP, with no hash lookup at all.
    pub vip_addr_filter: [u64; 4],
    pub timeouts: FlowTimeouts,
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
    unsafe impl aya::Pod for VipAddrKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for NatState {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for GlobalStats {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for VipRateState {}
    unsafe impl aya::Pod for VipCpuTokens {}
    unsafe impl aya::Pod for HealthSignal {}
    unsafe impl aya::Pod for SourceKey {}
}

/// Flow hash: deterministic given the key and the shared seed, so every balancer host
/// that fronts a VIP (ECMP) picks the same Maglev slot for a flow. Mixes 32-bit words with
/// the murmur3 round and finalizer; cheap enough for the packet path (no loops over bytes).
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < 4 {
        h = murmur_round(h, word(&key.src, i));
        h = murmur_round(h, word(&key.dst, i));
        i += 1;
    }
    h = murmur_round(h, ((key.sport as u32) << 16) | key.dport as u32);
    h = murmur_round(h, ((key.proto as u32) << 8) | key.family as u32);
    murmur_fmix(h ^ 40)
}

#[inline(always)]
fn word(addr: &Addr, i: usize) -> u32 {
    u32::from_le_bytes([addr[i * 4], addr[i * 4 + 1], addr[i * 4 + 2], addr[i * 4 + 3]])
}

#[inline(always)]
pub fn murmur_round(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub fn murmur_fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Incremental Internet checksum update (RFC 1624, eqn. 3) for one 16-bit word that
/// changed from `old` to `new`. Checksums and words are in the order they sit on the wire
/// read as big-endian numbers.
#[inline(always)]
pub fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    let sum = (!csum as u32) + (!old as u32) + new as u32;
    !fold(sum)
}

/// Same as [`csum_replace2`] for a 32-bit field (an IPv4 address, or part of IPv6).
#[inline(always)]
pub fn csum_replace4(csum: u16, old: u32, new: u32) -> u16 {
    let sum = (!csum as u32) + (!(old >> 16) & 0xffff) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
    !fold(sum)
}

/// Same as [`csum_replace2`] for an address of the given family.
#[inline(always)]
pub fn csum_replace_addr(mut csum: u16, old: &Addr, new: &Addr, family: u8) -> u16 {
    let words = if family == FAMILY_V4 { 1 } else { 4 };
    let mut i = 0;
    while i < 4 {
        if i < words {
            csum = csum_replace4(
                csum,
                u32::from_be_bytes([old[i * 4], old[i * 4 + 1], old[i * 4 + 2], old[i * 4 + 3]]),
                u32::from_be_bytes([new[i * 4], new[i * 4 + 1], new[i * 4 + 2], new[i * 4 + 3]]),
            );
        }
        i += 1;
    }
    csum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn full_csum(words: &[u16]) -> u16 {
        let sum: u32 = words.iter().map(|&w| w as u32).sum();
        !fold(sum)
    }

    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut words = [0x4500u16, 0x0054, 0x1c46, 0x4000, 0x4006, 0, 0xc0a8, 0x0001, 0xc0a8, 0x00c7];
        let before = full_csum(&words);
        let old = ((words[8] as u32) << 16) | words[9] as u32;
        let new = 0x0a00_0105u32;
        words[8] = (new >> 16) as u16;
        words[9] = new as u16;
        assert_eq!(csum_replace4(before, old, new), full_csum(&words));
        let old_word = words[3];
        words[3] = 0x1234;
        let after = full_csum(&words);
        let step = csum_replace4(before, old, new);
        assert_eq!(csum_replace2(step, old_word, 0x1234), after);
    }

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

    /// 10 tokens a second (100 ms each), burst 3.
    const BUCKET: TokenBucket = TokenBucket { emission_ns: 100_000_000, tolerance_ns: 300_000_000, batch: 1, _pad: 0 };
    const SECOND: u64 = 1_000_000_000;

    /// Takes tokens at `now` until the bucket refuses; returns how many and the TAT.
    fn drain(bucket: &TokenBucket, mut tat: u64, now: u64) -> (u32, u64) {
        let mut taken = 0;
        while let Some(next) = bucket.take(tat, now) {
            tat = next;
            taken += 1;
        }
        (taken, tat)
    }

    #[test]
    fn token_bucket_starts_full_and_empties_after_its_burst() {
        let (taken, tat) = drain(&BUCKET, 0, 50 * SECOND);
        assert_eq!(taken, 3);
        assert_eq!(tat, 50 * SECOND + 300_000_000);
        assert_eq!(BUCKET.take(tat, 50 * SECOND + 99_999_999), None, "no token before one refill");
    }

    #[test]
    fn token_bucket_refills_one_token_per_emission_interval() {
        let now = 50 * SECOND;
        let (_, tat) = drain(&BUCKET, 0, now);
        assert_eq!(drain(&BUCKET, tat, now + 100_000_000).0, 1);
        assert_eq!(drain(&BUCKET, tat, now + 250_000_000).0, 2);
        // Refill stops at the burst, however long the bucket rested.
        assert_eq!(drain(&BUCKET, tat, now + 100 * SECOND).0, 3);
    }

    #[test]
    fn token_bucket_admits_its_rate_under_steady_overload() {
        // 1000 attempts a second for 10 s: burst + rate x time, exactly.
        let (mut tat, mut admitted) = (0, 0);
        for i in 0..10_000u64 {
            if let Some(next) = BUCKET.take(tat, 50 * SECOND + i * 1_000_000) {
                tat = next;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3 + 100 - 1);
    }

    #[test]
    fn token_bucket_gives_batches_only_whole() {
        let now = 50 * SECOND;
        assert_eq!(BUCKET.take_n(0, now, 3), Some(now + 300_000_000));
        assert_eq!(BUCKET.take_n(0, now, 4), None);
        let one = BUCKET.take(0, now).unwrap();
        assert_eq!(BUCKET.take_n(one, now, 3), None);
        assert_eq!(BUCKET.take_n(one, now, 2), Some(now + 300_000_000));
    }

    #[test]
    fn token_bucket_starts_over_from_a_tat_beyond_its_tolerance() {
        // Left by an earlier configuration with a longer burst: an hour ahead.
        let now = 50 * SECOND;
        assert_eq!(drain(&BUCKET, now + 3600 * SECOND, now).0, 3);
    }

    #[test]
    fn prefix_masks_keep_the_leading_bits_in_network_order() {
        let addr: Addr = [192, 168, 37, 201, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let masked = |len: u8| {
            let mut out = [0u8; 16];
            for i in 0..4 {
                let w = word(&addr, i as usize) & prefix_mask_word(len, i);
                out[i as usize * 4..i as usize * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            out
        };
        assert_eq!(masked(32)[..4], [192, 168, 37, 201]);
        assert_eq!(masked(24)[..4], [192, 168, 37, 0]);
        assert_eq!(masked(20)[..4], [192, 168, 32, 0]);
        assert_eq!(masked(8)[..4], [192, 0, 0, 0]);
        let v6: Addr = [0x20, 0x01, 0x0d, 0xb8, 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4, 5, 6, 7, 8];
        let w = |len: u8, i: u32| word(&v6, i as usize) & prefix_mask_word(len, i);
        assert_eq!(
            [w(48, 0), w(48, 1), w(48, 2), w(48, 3)],
            [word(&v6, 0), u32::from_le_bytes([0xaa, 0xbb, 0, 0]), 0, 0]
        );
        assert_eq!(w(128, 3), word(&v6, 3));
    }

    #[test]
    fn flow_hash_depends_on_seed_and_every_field() {
        let key = FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 1234,
            dport: 80,
            proto: PROTO_TCP,
            family: FAMILY_V4,
            ..Default::default()
        };
        let base = flow_hash(&key, 7);
        assert_eq!(base, flow_hash(&key, 7));
        assert_ne!(base, flow_hash(&key, 8));
        assert_ne!(base, flow_hash(&FlowKey { sport: 1235, ..key }, 7));
        assert_ne!(base, flow_hash(&FlowKey { dport: 81, ..key }, 7));
        assert_ne!(base, flow_hash(&FlowKey { proto: PROTO_UDP, ..key }, 7));
        let mut dst = key;
        dst.dst[15] = 1;
        assert_ne!(base, flow_hash(&dst, 7));
    }
}
