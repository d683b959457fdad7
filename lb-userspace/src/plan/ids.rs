//! Stable small ids for VIPs and backends, and what an adopted program's maps hold.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use lb_common::{Backend, Settings, VipAddrKey, VipInfo, VipKey};

use super::tables::{backend_address, backend_identity, vip_key};
use crate::config::Config;

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
        let wanted: BTreeSet<K> = keys.iter().copied().collect();
        self.by_key.retain(|k, _| wanted.contains(k));
        self.by_id.retain(|_, k| wanted.contains(k));
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
