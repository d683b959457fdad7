//! `xdp_decap` for backends of the encapsulated modes: its settings (the gue port, the
//! host's addresses), attached and pinned by `lb decap attach IFACE`, removed by
//! `lb decap detach IFACE`, and its counters.

use std::net::IpAddr;

use super::*;
use crate::plan::addr_bytes;

/// The program's settings: the gue port and the addresses whose packets it decapsulates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecapConfig {
    pub gue_port: u16,
    pub addresses: Vec<IpAddr>,
}

/// At most this many host addresses (`DECAP_ADDRS`'s size).
pub const MAX_DECAP_ADDRS: usize = 256;

impl Dataplane {
    /// Writes `config` into the object's decap maps (those `xdp_decap` of this object reads).
    pub fn configure_decap(&mut self, config: &DecapConfig) -> Result<()> {
        anyhow::ensure!(
            config.addresses.len() <= MAX_DECAP_ADDRS,
            "{} addresses, more than the {MAX_DECAP_ADDRS} the decap program holds",
            config.addresses.len()
        );
        let ebpf = self.ebpf.as_mut().context("an adopted program's object is not loaded here")?;
        let settings = DecapSettings { gue_port: config.gue_port, _pad: 0 };
        Array::<_, DecapSettings>::try_from(ebpf.map_mut(MAP_DECAP_SETTINGS).context("DECAP_SETTINGS missing")?)?
            .set(0, settings, 0)?;
        let mut addrs =
            HashMap::<_, VipAddrKey, u32>::try_from(ebpf.map_mut(MAP_DECAP_ADDRS).context("DECAP_ADDRS missing")?)?;
        for &a in &config.addresses {
            let (addr, family) = addr_bytes(a);
            addrs.insert(VipAddrKey { addr, family, _pad: [0; 3] }, 1, 0)?;
        }
        Ok(())
    }

    /// The decap program's counters, summed over CPUs.
    pub fn decap_stats(&self) -> Result<DecapStats> {
        let ebpf = self.ebpf.as_ref().context("an adopted program's object is not loaded here")?;
        let map = PerCpuArray::<_, DecapStats>::try_from(ebpf.map(MAP_DECAP_STATS).context("DECAP_STATS missing")?)?;
        Ok(map.get(&0, 0)?.iter().fold(DecapStats::default(), |mut total, cpu| {
            total.add(cpu);
            total
        }))
    }

    /// Attaches `xdp_decap` with `config` to `iface` (driver mode, else generic with a
    /// warning) and pins the attachment at [`decap_link_pin`], so it stays after this
    /// process ends; one attached before is replaced.
    pub fn attach_decap_pinned(iface: &str, config: &DecapConfig) -> Result<PathBuf> {
        let path = decap_link_pin(iface);
        if path.exists() {
            Self::detach_decap_pinned(iface)?;
        }
        Self::attach_small_pinned(PROG_DECAP, iface, &path, XdpModeSetting::Auto, |dataplane| {
            dataplane.configure_decap(config)
        })
    }

    /// Detaches what [`attach_decap_pinned`](Self::attach_decap_pinned) attached to `iface`.
    pub fn detach_decap_pinned(iface: &str) -> Result<()> {
        host::detach_pinned_link(&decap_link_pin(iface), &format!("lb decap attach {iface}"))
    }
}

/// Where `lb decap attach IFACE` pins its attachment (as [`pass_link_pin`] does).
pub fn decap_link_pin(iface: &str) -> PathBuf {
    host::netns_pin("lb-decap", iface)
}

/// The host's addresses (every interface's, in this network namespace).
pub fn host_addresses() -> Result<Vec<IpAddr>> {
    let mut addresses: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .context("listing the host's addresses")?
        .filter_map(|ifa| {
            let a = ifa.address?;
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}
