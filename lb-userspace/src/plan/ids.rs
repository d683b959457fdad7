//! Stable small ids for VIPs and backends, the keys they are given for, and what an
//! adopted program's maps hold.

use std::collections::BTreeMap;
use std::net::IpAddr;

use lb_common::{Addr, Backend, FAMILY_V4, FAMILY_V6, Settings, VipAddrKey, VipInfo, VipKey};

use crate::config::{BackendConfig, Config, VipConfig};

/// What an adopted program's maps hold, for a new controller to take over its ids and
/// tables.
#[derive(Debug, Default)]
pub struct Existing {
    pub settings: Settings,
    pub vips: Vec<(VipKey, VipInfo)>,
    pub vip_addrs: Vec<(VipAddrKey, u32)>,
    /// Active backend slots.
    pub backends: Vec<(u32, Backend)>,
}

/// Identity of a backend across VIPs and reloads: one id per (address, port).
pub type BackendIdentity = (IpAddr, u16);

/// Stable small ids for VIPs and backends. Ids index per-VIP and per-backend maps, so they
/// stay the same across reloads for what did not change, and are reused only after release.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    vips: Ids<VipKey>,
    backends: Ids<BackendIdentity>,
}

/// Ids of one kind, both ways: the packet path reports by id, the config speaks of keys.
#[derive(Debug, Clone)]
struct Ids<K> {
    by_key: BTreeMap<K, u32>,
    by_id: BTreeMap<u32, K>,
    limit: u32,
}

impl<K: Ord + Copy> Ids<K> {
    fn new(pairs: impl IntoIterator<Item = (K, u32)>, limit: u32) -> Self {
        let by_key: BTreeMap<K, u32> = pairs.into_iter().collect();
        let by_id = by_key.iter().map(|(k, id)| (*id, *k)).collect();
        Self { by_key, by_id, limit }
    }

    /// Keeps ids for exactly `keys`: releases the others, and gives new keys the lowest
    /// free ids in the order given. Validation already bounded the count.
    fn assign(&mut self, keys: impl IntoIterator<Item = K>) {
        let keys: Vec<K> = keys.into_iter().collect();
        let mut wanted = keys.clone();
        wanted.sort_unstable();
        wanted.dedup();
        // The usual reload or health change keeps every key: one ordered comparison, where
        // the lookups below cost several ms for 16000 backends.
        if wanted.iter().eq(self.by_key.keys()) {
            return;
        }
        self.by_key.retain(|k, _| wanted.binary_search(k).is_ok());
        self.by_id.retain(|_, k| wanted.binary_search(k).is_ok());
        let mut free = 0;
        for key in keys {
            if self.by_key.contains_key(&key) {
                continue;
            }
            while self.by_id.contains_key(&free) {
                free += 1;
            }
            assert!(free < self.limit, "validated config exceeds a map's capacity");
            self.by_key.insert(key, free);
            self.by_id.insert(free, key);
        }
    }
}

impl IdAllocator {
    pub fn new(max_vips: u32, max_backends: u32) -> Self {
        Self { vips: Ids::new([], max_vips), backends: Ids::new([], max_backends) }
    }

    /// The ids an earlier controller gave, as its maps hold them: flows in the flow table
    /// refer to backends and VIPs by these ids, so they must not change hands.
    pub fn adopt(max_vips: u32, max_backends: u32, existing: &Existing) -> Self {
        Self {
            vips: Ids::new(existing.vips.iter().map(|(key, info)| (*key, info.vip_id)), max_vips),
            backends: Ids::new(
                existing.backends.iter().map(|(id, b)| ((backend_address(b), b.port), *id)),
                max_backends,
            ),
        }
    }

    /// Releases ids of what `config` no longer has, then assigns ids to what is new.
    pub(super) fn assign(&mut self, config: &Config) {
        self.vips.assign(config.vips.iter().map(vip_key));
        self.backends.assign(config.vips.iter().flat_map(|v| v.backends.iter().map(backend_identity)));
    }

    pub fn backend_id(&self, identity: &BackendIdentity) -> Option<u32> {
        self.backends.by_key.get(identity).copied()
    }

    pub fn vip_id(&self, key: &VipKey) -> Option<u32> {
        self.vips.by_key.get(key).copied()
    }

    /// The VIP that holds `id` (for what the packet path reports by id).
    pub fn vip_of(&self, id: u32) -> Option<VipKey> {
        self.vips.by_id.get(&id).copied()
    }

    /// The backend that holds `id`.
    pub fn backend_of(&self, id: u32) -> Option<BackendIdentity> {
        self.backends.by_id.get(&id).copied()
    }
}

/// The address of a `Backend` entry.
fn backend_address(b: &Backend) -> IpAddr {
    ip_of(&b.addr, b.family)
}

/// An address as the maps hold it (IPv4 in the first 4 bytes), back to an `IpAddr`.
pub fn ip_of(addr: &Addr, family: u8) -> IpAddr {
    if family == FAMILY_V4 { IpAddr::from([addr[0], addr[1], addr[2], addr[3]]) } else { IpAddr::from(*addr) }
}

pub fn addr_bytes(ip: IpAddr) -> (Addr, u8) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

pub fn vip_key(vip: &VipConfig) -> VipKey {
    let (addr, family) = addr_bytes(vip.address);
    VipKey { addr, port: vip.port, proto: vip.protocol.number(), family }
}

pub(super) fn backend_identity(backend: &BackendConfig) -> BackendIdentity {
    (backend.address, backend.port)
}
