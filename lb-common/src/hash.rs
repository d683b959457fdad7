//! The flow hash both sides compute identically.

use crate::{Addr, FlowKey};

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

/// The outer UDP source port of a gue packet of the flow whose [`flow_hash`] is `hash`: in
/// the dynamic range (49152..=65535), so that receivers spread flows over their queues by it
/// while it never looks like a well-known service.
#[inline(always)]
pub fn gue_source_port(hash: u32) -> u16 {
    0xc000 | (hash & 0x3fff) as u16
}

#[inline(always)]
pub(crate) fn word(addr: &Addr, i: usize) -> u32 {
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

/// Where a CPU's cursor of fallback nat ports starts in a range of `span` ports: the CPUs'
/// starts are the fractions {cpu x 0.618...} of the span (golden-ratio spacing), so each
/// cursor walks a stretch of its own instead of trying the ports another CPU just took.
#[inline(always)]
pub fn nat_cursor_start(cpu: u32, span: u32) -> u32 {
    ((cpu.wrapping_mul(0x9e37_79b9) as u64 * span as u64) >> 32) as u32
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::*;

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

    #[test]
    fn cpus_start_their_nat_port_cursors_far_apart() {
        for (cpus, span) in [(2u32, 40_000u32), (16, 40_000), (64, 40_000), (2, 256)] {
            let mut starts: std::vec::Vec<u32> = (0..cpus).map(|cpu| nat_cursor_start(cpu, span)).collect();
            assert!(starts.iter().all(|&s| s < span));
            starts.sort_unstable();
            let gaps = starts.windows(2).map(|w| w[1] - w[0]).chain([span - starts[cpus as usize - 1] + starts[0]]);
            // Golden-ratio spacing: the smallest gap is above a third of the even share.
            let smallest = gaps.min().unwrap();
            assert!(smallest >= span / cpus / 3, "{cpus} CPUs over {span} ports: a gap of {smallest}");
        }
    }
}
