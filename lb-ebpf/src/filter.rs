//! Which packets the program looks at: the destination address, read in place before
//! anything is copied, against the address filter in `SETTINGS` (VIP addresses and the
//! balancer's own). Traffic for the host itself goes to the kernel after a few loads.

use aya_ebpf::programs::XdpContext;
use lb_common::*;

use crate::maps::SETTINGS;
use crate::packet::*;

/// Whether the packet may be for a VIP or for the balancer's own address: false only when
/// it certainly is for neither. A frame too short to tell is left to `parse`, which counts
/// it as malformed if it has to.
#[inline(always)]
pub fn may_concern_us(ctx: &XdpContext) -> bool {
    let Ok(eth) = at(ctx, 0, ETH_HLEN + 4) else {
        return true;
    };
    let (ethertype, l3) = match read_be16(eth + 12) {
        ETH_P_8021Q | ETH_P_8021AD => (read_be16(eth + 16), ETH_HLEN + 4),
        ethertype => (ethertype, ETH_HLEN),
    };
    let dst = if ethertype == ETH_P_IP {
        let Ok(ip) = at(ctx, l3, IPV4_HLEN) else {
            return true;
        };
        [read_word(ip + 16), 0, 0, 0]
    } else if ethertype == ETH_P_IPV6 {
        let Ok(ip) = at(ctx, l3, IPV6_HLEN) else {
            return true;
        };
        [read_word(ip + 24), read_word(ip + 28), read_word(ip + 32), read_word(ip + 36)]
    } else {
        return false;
    };
    SETTINGS.get(0).is_none_or(|settings| settings.may_be_vip_addr_bit(vip_addr_filter_bit_words(dst)))
}
