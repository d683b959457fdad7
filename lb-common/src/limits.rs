//! Rate limits: token buckets in their GCRA form, and the per-CPU and per-source state
//! the packet path keeps for them.

use crate::Addr;

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

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::*;

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
}
