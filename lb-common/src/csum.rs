//! Incremental Internet checksum updates, for the rewrites of the packet path.

use crate::{Addr, FAMILY_V4};

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

/// A one's complement sum of 16-bit words, carried into 16 bits (not complemented).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
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
}
