//! Keeps the kernel's neighbour (ARP/NDP) entries for backends resolved. The XDP program
//! reads MAC addresses from the kernel's FIB and neighbour table, but never triggers a
//! resolution itself, so the controller sends each backend an ICMP echo request now and
//! then: the kernel resolves the neighbour to send it, and the entry stays valid.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::debug;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// Sends one echo request to each address; failures are logged and otherwise ignored
/// (a backend that doesn't answer is the health checker's business, not this one's).
pub fn prime(addrs: impl IntoIterator<Item = IpAddr>) {
    let v4 = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4));
    let v6 = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6));
    for (seq, addr) in addrs.into_iter().enumerate() {
        let (socket, kind) = match addr {
            IpAddr::V4(_) => (&v4, ICMP_ECHO_REQUEST),
            IpAddr::V6(_) => (&v6, ICMPV6_ECHO_REQUEST),
        };
        let result = socket
            .as_ref()
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
            .and_then(|s| s.send_to(&echo_request(kind, seq as u16), &SockAddr::from(SocketAddr::new(addr, 0))));
        if let Err(e) = result {
            debug!(%addr, "neighbour priming echo not sent: {e}");
        }
    }
}

/// An ICMP echo request; for ICMPv6 the kernel fills in the checksum on raw sockets.
fn echo_request(kind: u8, seq: u16) -> [u8; 8] {
    let mut packet = [kind, 0, 0, 0, 0x4c, 0x42, (seq >> 8) as u8, seq as u8];
    if kind == ICMP_ECHO_REQUEST {
        let sum: u32 = packet.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        let csum = !((folded & 0xffff) + (folded >> 16)) as u16;
        packet[2..4].copy_from_slice(&csum.to_be_bytes());
    }
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum_verifies() {
        let packet = echo_request(ICMP_ECHO_REQUEST, 7);
        let sum: u32 = packet.chunks(2).map(|w| u16::from_be_bytes([w[0], w[1]]) as u32).sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!((folded & 0xffff) + (folded >> 16), 0xffff);
    }
}
