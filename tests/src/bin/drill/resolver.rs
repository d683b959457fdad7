//! The load generator's caching stub resolver.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use lb_tests::sites::{NAME, resolve_a};

/// How long the stub resolver waits for one DNS server before asking the next.
const DNS_TIMEOUT: Duration = Duration::from_millis(300);

/// The load generator's stub resolver, shared by the workers as a host's caching stub is:
/// asks the servers in order, the next when one does not answer, and keeps the answer for
/// its TTL.
pub struct Resolver {
    pub servers: [Ipv4Addr; 2],
    /// The address answered and when it expires.
    pub cached: Mutex<Option<(Ipv4Addr, Instant)>>,
}

impl Resolver {
    /// The address to connect to. The cache stays locked while asking, so that one worker
    /// asks and the others take its answer.
    pub fn address(&self) -> Result<Ipv4Addr> {
        let mut cached = self.cached.lock().expect("DNS cache");
        if let Some((address, expires)) = *cached
            && Instant::now() < expires
        {
            return Ok(address);
        }
        let mut errors = Vec::new();
        for server in self.servers {
            match resolve_a(server, NAME, DNS_TIMEOUT) {
                // Policy records answer one address.
                Ok((addresses, ttl)) => {
                    *cached = Some((addresses[0], Instant::now() + ttl));
                    return Ok(addresses[0]);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("resolving {NAME}: {}", errors.join("; "))
    }
}
