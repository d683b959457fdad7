//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016), as used by Katran and
//! Cilium, computed in plain Rust for the XDP program's per-VIP lookup tables.
//!
//! Every backend has a preference list over the table's slots, the permutation
//! `slot_j = (offset + j * skip) mod M` with `M` prime, `offset = h1 % M` and
//! `skip = h2 % (M - 1) + 1`, so it visits every slot exactly once. Backends take turns
//! claiming their next still-free preferred slot until the table is full. Weights: in each
//! round every backend adds its weight to a credit, and takes a turn only when its credit
//! reaches the largest weight (then pays that much back), so over the table a backend takes
//! `weight / max_weight` turns per round and its share of slots is `weight / sum(weights)`.
//!
//! The result depends only on the backends' identities and weights, the table size and the
//! seed: not on the order the backends are given in (they are sorted by identity inside),
//! not on the platform, not on the Rust version. Several balancer hosts fronting the same
//! VIP therefore compute identical tables. The hash is fixed: see [`identity_hash`].

use lb_common::{murmur_fmix, murmur_round};

/// Default number of slots of a VIP's table (a prime; > 100 x the backends of any
/// reasonable pool, which keeps every backend's share within 1% of its weight share).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Seed tweaks of the two hashes of an identity (from the hex digits of pi), so the offset
/// and the skip of a backend are independent.
const OFFSET_SEED: u32 = 0x243f_6a88;
const SKIP_SEED: u32 = 0x85a3_08d3;

/// Marks a slot not yet claimed while the table is built.
const EMPTY: u32 = u32::MAX;

/// A backend's stable identity (e.g. `"10.0.1.11:8080"` as bytes) and weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    pub identity: &'a [u8],
    pub weight: u32,
}

/// Whether `n` is prime (trial division by 6k +/- 1; at most ~11k steps for a u32).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = n as u64;
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The version-stable hash of a backend identity: the bytes are read as little-endian u32
/// words (the last one zero-padded), each mixed in with `murmur_round` starting from
/// `seed`, then the length is xored in and the result finalised with `murmur_fmix`.
pub fn identity_hash(identity: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut words = identity.chunks_exact(4);
    for w in &mut words {
        h = murmur_round(h, u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 4];
        w[..rest.len()].copy_from_slice(rest);
        h = murmur_round(h, u32::from_le_bytes(w));
    }
    murmur_fmix(h ^ identity.len() as u32)
}

/// The first slot and the stride of a backend's preference permutation over a table of
/// `table_size` (prime) slots.
pub fn offset_and_skip(identity: &[u8], table_size: u32, seed: u32) -> (u32, u32) {
    let offset = identity_hash(identity, seed ^ OFFSET_SEED) % table_size;
    let skip = identity_hash(identity, seed ^ SKIP_SEED) % (table_size - 1) + 1;
    (offset, skip)
}

/// Per-backend state while the table is built.
struct Cursor {
    /// Next slot of this backend's permutation to try.
    next: u32,
    skip: u32,
    weight: u64,
    credit: u64,
    /// Index into the caller's `backends`.
    index: u32,
}

/// Returns a table of `table_size` slots, each an index into `backends`; an empty Vec if no
/// backend has a weight above zero. Backends with weight 0 get no slot. If more backends
/// have a weight than there are slots, some get none.
///
/// Deterministic given the backends' identities and weights, `table_size` and `seed`, and
/// independent of the order of `backends` (two backends with the same identity and weight
/// are interchangeable; avoid duplicate identities).
///
/// # Panics
/// If `table_size` is not prime (the permutations would not cover the table).
pub fn build(backends: &[MaglevBackend], table_size: u32, seed: u32) -> Vec<u32> {
    assert!(is_prime(table_size), "maglev table size {table_size} is not prime");
    assert!(backends.len() < EMPTY as usize, "too many backends");

    let mut order: Vec<u32> = (0..backends.len() as u32).filter(|&i| backends[i as usize].weight > 0).collect();
    if order.is_empty() {
        return Vec::new();
    }
    order.sort_unstable_by(|&a, &b| {
        let (x, y) = (&backends[a as usize], &backends[b as usize]);
        x.identity.cmp(y.identity).then(x.weight.cmp(&y.weight)).then(a.cmp(&b))
    });
    let max_weight = order.iter().map(|&i| backends[i as usize].weight).max().unwrap_or(1) as u64;
    let mut cursors: Vec<Cursor> = order
        .iter()
        .map(|&i| {
            let b = &backends[i as usize];
            let (offset, skip) = offset_and_skip(b.identity, table_size, seed);
            Cursor { next: offset, skip, weight: b.weight as u64, credit: 0, index: i }
        })
        .collect();

    let m = table_size as u64;
    let mut table = vec![EMPTY; table_size as usize];
    let mut filled = 0u32;
    loop {
        for c in cursors.iter_mut() {
            c.credit += c.weight;
            if c.credit < max_weight {
                continue;
            }
            c.credit -= max_weight;
            // The permutation visits every slot once and the table is not full, so this
            // finds a free slot.
            loop {
                let slot = c.next as usize;
                let n = c.next as u64 + c.skip as u64;
                c.next = if n >= m { (n - m) as u32 } else { n as u32 };
                let entry = &mut table[slot];
                if *entry == EMPTY {
                    *entry = c.index;
                    break;
                }
            }
            filled += 1;
            if filled == table_size {
                return table;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Instant;

    fn identities(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("10.{}.{}.{}:8080", i / 65536, (i / 256) % 256, i % 256).into_bytes()).collect()
    }

    fn backends<'a>(ids: &'a [Vec<u8>], weights: &[u32]) -> Vec<MaglevBackend<'a>> {
        ids.iter().zip(weights).map(|(id, &weight)| MaglevBackend { identity: id, weight }).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &s in table {
            c[s as usize] += 1;
        }
        c
    }

    /// Largest |share - weight share| over the backends, as a fraction of the table.
    fn max_share_error(table: &[u32], weights: &[u32]) -> f64 {
        let total_w: u64 = weights.iter().map(|&w| w as u64).sum();
        counts(table, weights.len())
            .iter()
            .zip(weights)
            .map(|(&c, &w)| (c as f64 / table.len() as f64 - w as f64 / total_w as f64).abs())
            .fold(0.0, f64::max)
    }

    /// The table as identities, to compare tables built from differently ordered inputs.
    fn owners<'a>(table: &[u32], b: &[MaglevBackend<'a>]) -> Vec<&'a [u8]> {
        table.iter().map(|&i| b[i as usize].identity).collect()
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]);
        assert!(is_prime(65537));
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(65535));
        assert!(!is_prime(u32::MAX));
        assert!(!is_prime(65521 * 65521)); // square of a prime: checks the loop bound
        assert!(is_prime(DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn hash_is_version_stable() {
        // Golden values: changing them changes every table, so every balancer host must be
        // upgraded at once. Do not update them casually.
        assert_eq!(identity_hash(b"", 0), 0);
        assert_eq!(identity_hash(b"10.0.1.11:8080", 0), 0x5df4_1df1);
        assert_eq!(identity_hash(b"10.0.1.11:8080", 7), 0x94af_d030);
        let ids = identities(3);
        assert_eq!(build(&backends(&ids, &[1, 1, 1]), 13, 0), [2, 0, 0, 0, 0, 1, 0, 2, 1, 1, 2, 2, 1]);
        assert_eq!(build(&backends(&ids, &[1, 2, 3]), 13, 0), [2, 0, 0, 1, 2, 1, 2, 2, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn empty_and_zero_weight_inputs_give_empty_table() {
        assert!(build(&[], 65537, 0).is_empty());
        let ids = identities(3);
        assert!(build(&backends(&ids, &[0, 0, 0]), 65537, 0).is_empty());
    }

    #[test]
    #[should_panic(expected = "not prime")]
    fn non_prime_size_panics() {
        let ids = identities(2);
        build(&backends(&ids, &[1, 1]), 65536, 0);
    }

    #[test]
    fn every_slot_filled_with_a_valid_index() {
        for (n, m) in [(1, 101), (3, 101), (100, 101), (150, 101), (7, 65537)] {
            let ids = identities(n);
            let t = build(&backends(&ids, &vec![1; n]), m, 1);
            assert_eq!(t.len(), m as usize);
            assert!(t.iter().all(|&i| (i as usize) < n), "n={n} m={m}");
        }
        // With fewer slots than backends, each slot still goes to a distinct backend.
        let ids = identities(150);
        let t = build(&backends(&ids, &[1; 150]), 101, 1);
        let mut seen = t.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 101);
    }

    #[test]
    fn zero_weight_backends_get_no_slots() {
        let ids = identities(6);
        let w = [3, 0, 1, 0, 2, 5];
        let t = build(&backends(&ids, &w), 65537, 9);
        let c = counts(&t, 6);
        assert_eq!((c[1], c[3]), (0, 0));
        assert!(c[0] > 0 && c[2] > 0 && c[4] > 0 && c[5] > 0);
        assert!(max_share_error(&t, &w) < 0.01);
    }

    #[test]
    fn weighted_shares_within_one_percent() {
        let n = 10;
        let ids = identities(n);
        let w: Vec<u32> = (0..n as u32).map(|i| i % 5 + 1).collect();
        let t = build(&backends(&ids, &w), 65537, 42);
        let err = max_share_error(&t, &w);
        println!("10 backends, weights 1..5, M=65537: max share error {:.4}%", err * 100.0);
        assert!(err < 0.01, "{err}");

        // Very unequal weights.
        let w2 = [1, 100, 10_000, 65_535];
        let ids2 = identities(4);
        let t2 = build(&backends(&ids2, &w2), 65537, 0);
        let err2 = max_share_error(&t2, &w2);
        println!("weights 1/100/10000/65535: max share error {:.4}%", err2 * 100.0);
        assert!(err2 < 0.01, "{err2}");
    }

    #[test]
    fn equal_shares_within_one_percent() {
        for n in [100, 655] {
            let ids = identities(n);
            let w = vec![1; n];
            let t = build(&backends(&ids, &w), 65537, 3);
            let err = max_share_error(&t, &w);
            let c = counts(&t, n);
            println!(
                "{n} equal backends, M=65537: max share error {:.4}%, slots min {} max {}",
                err * 100.0,
                c.iter().min().unwrap(),
                c.iter().max().unwrap()
            );
            assert!(err < 0.01, "{err}");
            // Round robin turns: counts differ by at most one.
            assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn order_independent() {
        let n = 50;
        let ids = identities(n);
        let w: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
        let fwd = backends(&ids, &w);
        let mut shuffled = fwd.clone();
        // Deterministic Fisher-Yates with a small LCG.
        let mut s = 0x1234_5678u64;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut rev = fwd.clone();
        rev.reverse();
        let a = owners(&build(&fwd, 65537, 5), &fwd);
        assert_eq!(a, owners(&build(&shuffled, 65537, 5), &shuffled));
        assert_eq!(a, owners(&build(&rev, 65537, 5), &rev));
        // And deterministic across calls, but seed dependent.
        assert_eq!(a, owners(&build(&fwd, 65537, 5), &fwd));
        assert_ne!(a, owners(&build(&fwd, 65537, 6), &fwd));
    }

    /// Removes backend `k` and returns the fraction of all slots whose owner changed.
    fn disruption(ids: &[Vec<u8>], w: &[u32], k: usize, m: u32) -> f64 {
        let all = backends(ids, w);
        let before = owners(&build(&all, m, 11), &all);
        let mut rest = all.clone();
        rest.remove(k);
        let after = owners(&build(&rest, m, 11), &rest);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        moved as f64 / m as f64
    }

    #[test]
    fn removing_a_backend_moves_few_slots() {
        for n in [10usize, 100, 500] {
            let ids = identities(n);
            let w = vec![1; n];
            let d = disruption(&ids, &w, n / 3, 65537);
            println!(
                "remove 1 of {n} equal backends (M=65537): {:.3}% of slots moved (1/N = {:.3}%)",
                d * 100.0,
                100.0 / n as f64
            );
            assert!(d <= 1.0 / n as f64 + 0.01, "n={n}: {d}");
        }
        // Weighted: removing a backend of weight w_k moves about its share plus a little.
        let ids = identities(10);
        let w: Vec<u32> = (0..10).map(|i| i % 5 + 1).collect();
        let share = w[4] as f64 / w.iter().sum::<u32>() as f64;
        let d = disruption(&ids, &w, 4, 65537);
        println!("remove weight-5 of 10 weighted backends: {:.3}% moved (its share {:.3}%)", d * 100.0, share * 100.0);
        assert!(d <= share + 0.01, "{d}");
    }

    #[test]
    fn build_speed_1000_backends() {
        let n = 1000;
        let ids = identities(n);
        let b = backends(&ids, &vec![1; n]);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = Instant::now();
            let t = build(&b, 65537, 0);
            let dt = t0.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(t.len(), 65537);
            best = best.min(dt);
        }
        let wb = backends(&ids, &(0..n as u32).map(|i| i % 5 + 1).collect::<Vec<_>>());
        let t0 = Instant::now();
        build(&wb, 65537, 0);
        let weighted = t0.elapsed().as_secs_f64() * 1000.0;
        println!(
            "maglev build 1000 backends x 65537 slots: best of 5 {best:.3} ms (weights 1..5: {weighted:.3} ms){}",
            if cfg!(debug_assertions) { " [debug build; target applies to release]" } else { "" }
        );
        if !cfg!(debug_assertions) {
            assert!(best < 5.0, "{best} ms");
        }
    }

    #[test]
    fn slot_counts_by_identity_match_between_hosts() {
        // Two "hosts" with the same config listed differently get the same per-identity counts.
        let ids = identities(20);
        let w: Vec<u32> = (0..20).map(|i| i % 3 + 1).collect();
        let a = backends(&ids, &w);
        let mut b = a.clone();
        b.rotate_left(7);
        let count = |t: &[u32], bs: &[MaglevBackend]| {
            let mut m: HashMap<Vec<u8>, usize> = HashMap::new();
            for &i in t {
                *m.entry(bs[i as usize].identity.to_vec()).or_default() += 1;
            }
            m
        };
        assert_eq!(count(&build(&a, 1009, 1), &a), count(&build(&b, 1009, 1), &b));
    }
}
