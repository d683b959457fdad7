//! One sync step: compares the desired tables with what the maps hold and writes only the
//! difference, in an order that never shows packets a half-built table:
//! new backends first, then each VIP's new Maglev table into its inactive half, then the
//! VIP entry that switches to it (one map update), and removals last.

use std::collections::BTreeMap;

use anyhow::Result;
use lb_common::{Backend, Settings, VipAddrKey, VipInfo, VipKey};

use crate::plan::{DesiredTables, DesiredVip, Existing};

/// The map writes a sync needs; the dataplane implements it with BPF maps, tests with a log.
pub trait MapWriter {
    fn set_settings(&mut self, settings: &Settings) -> Result<()>;
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    fn set_maglev_slot(&mut self, index: u32, backend_id: u32) -> Result<()>;
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    fn set_vip_addr(&mut self, key: &VipAddrKey, count: u32) -> Result<()>;
    fn remove_vip_addr(&mut self, key: &VipAddrKey) -> Result<()>;
    /// Zeroes what the packet path keeps per VIP id, for a VIP that takes the id: counters
    /// must not carry over from a VIP that had it before.
    fn reset_vip(&mut self, id: u32) -> Result<()>;
    /// Likewise per backend id: counters, and the cached next hop of the backend before.
    fn reset_backend(&mut self, id: u32) -> Result<()>;
}

/// What the maps hold now, as far as this controller wrote them.
#[derive(Debug, Default)]
pub struct Applied {
    settings: Option<Settings>,
    backends: BTreeMap<u32, Backend>,
    vips: BTreeMap<VipKey, AppliedVip>,
    vip_addrs: BTreeMap<VipAddrKey, u32>,
}

#[derive(Debug)]
struct AppliedVip {
    info: VipInfo,
    active_half: usize,
    /// What each half of the VIP's table region holds (empty: never written).
    halves: [Vec<u32>; 2],
}

/// Where a VIP's half of the `MAGLEV` array starts.
pub fn table_offset(vip_id: u32, half: usize, table_size: u32) -> u32 {
    (vip_id * 2 + half as u32) * table_size
}

/// Counts of what one sync wrote, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub slots_written: usize,
    pub vips_switched: usize,
    pub vips_removed: usize,
    pub backends_written: usize,
}

impl Applied {
    /// What an earlier controller wrote. The tables' contents are not read back: each
    /// VIP's next table is written whole into its spare half, then switched in as usual.
    pub fn adopt(existing: &Existing, table_size: u32) -> Self {
        let vips = existing
            .vips
            .iter()
            .map(|(key, info)| {
                let active_half =
                    (info.table_offset / table_size.max(1)).saturating_sub(info.vip_id * 2).min(1) as usize;
                (*key, AppliedVip { info: *info, active_half, halves: [Vec::new(), Vec::new()] })
            })
            .collect();
        Self {
            settings: Some(existing.settings),
            backends: existing.backends.iter().copied().collect(),
            vips,
            vip_addrs: existing.vip_addrs.iter().copied().collect(),
        }
    }

    /// Writes the difference between `desired` and what the maps hold, in the order above.
    pub fn sync(&mut self, desired: &DesiredTables, maps: &mut impl MapWriter) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        // While VIPs come and go, the VIP address filter must let through both the old and
        // the new addresses; it narrows to the new ones once the old VIPs are gone.
        let mut widened = desired.settings;
        if let Some(old) = &self.settings {
            for (word, old_word) in widened.vip_addr_filter.iter_mut().zip(old.vip_addr_filter) {
                *word |= old_word;
            }
        }
        self.write_settings(&widened, maps)?;
        self.write_backends(desired, maps, &mut report)?;
        for (key, vip) in &desired.vips {
            self.write_vip(key, vip, desired.table_size, maps, &mut report)?;
        }
        for (key, &count) in &desired.vip_addrs {
            if self.vip_addrs.get(key) != Some(&count) {
                maps.set_vip_addr(key, count)?;
                self.vip_addrs.insert(*key, count);
            }
        }
        self.remove_what_is_gone(desired, maps, &mut report)?;
        self.write_settings(&desired.settings, maps)?;
        Ok(report)
    }

    /// New and changed backends; a backend id that now names another backend starts with
    /// zeroed counters and next hop.
    fn write_backends(
        &mut self,
        desired: &DesiredTables,
        maps: &mut impl MapWriter,
        report: &mut SyncReport,
    ) -> Result<()> {
        for (&id, backend) in &desired.backends {
            let before = self.backends.get(&id);
            if before != Some(backend) {
                if before.is_none_or(|b| (b.addr, b.port, b.family) != (backend.addr, backend.port, backend.family)) {
                    maps.reset_backend(id)?;
                }
                maps.set_backend(id, backend)?;
                self.backends.insert(id, *backend);
                report.backends_written += 1;
            }
        }
        Ok(())
    }

    /// One VIP: its new table into the spare half (the whole table for a new VIP), then the
    /// VIP entry that switches to it, in one map update.
    fn write_vip(
        &mut self,
        key: &VipKey,
        vip: &DesiredVip,
        table_size: u32,
        maps: &mut impl MapWriter,
        report: &mut SyncReport,
    ) -> Result<()> {
        let applied = self.vips.get_mut(key).filter(|a| a.info.vip_id == vip.vip_id);
        let (half, slots_written) = match applied {
            Some(a) if a.halves[a.active_half] == vip.table => (a.active_half, 0),
            Some(a) => {
                let half = 1 - a.active_half;
                let written = write_table(maps, vip.vip_id, half, table_size, &a.halves[half], &vip.table)?;
                a.halves[half] = vip.table.clone();
                (half, written)
            }
            None => {
                maps.reset_vip(vip.vip_id)?;
                let written = write_table(maps, vip.vip_id, 0, table_size, &[], &vip.table)?;
                let halves = [vip.table.clone(), Vec::new()];
                self.vips.insert(*key, AppliedVip { info: VipInfo::default(), active_half: 0, halves });
                (0, written)
            }
        };
        let info = VipInfo {
            vip_id: vip.vip_id,
            table_offset: table_offset(vip.vip_id, half, table_size),
            table_size: if vip.table.is_empty() { 0 } else { table_size },
            mode: vip.mode,
            limits: vip.limits.flags,
            source_prefix_len: vip.limits.source_prefix_len,
            watch: vip.watch,
            new_flow_limit: vip.limits.new_flows,
            packet_limit: vip.limits.packets,
            source_limit: vip.limits.sources,
        };
        let applied = self.vips.get_mut(key).expect("inserted above");
        if applied.info != info {
            maps.set_vip(key, &info)?;
            applied.info = info;
            applied.active_half = half;
            report.slots_written += slots_written;
            report.vips_switched += 1;
        }
        Ok(())
    }

    /// Removals, last: VIPs and their addresses, and backends, which are deactivated, not
    /// deleted, so that flows still pinned to the id re-pick a backend.
    fn remove_what_is_gone(
        &mut self,
        desired: &DesiredTables,
        maps: &mut impl MapWriter,
        report: &mut SyncReport,
    ) -> Result<()> {
        let gone: Vec<VipKey> = self.vips.keys().filter(|k| !desired.vips.contains_key(k)).copied().collect();
        for key in gone {
            maps.remove_vip(&key)?;
            self.vips.remove(&key);
            report.vips_removed += 1;
        }
        let gone: Vec<VipAddrKey> =
            self.vip_addrs.keys().filter(|k| !desired.vip_addrs.contains_key(k)).copied().collect();
        for key in gone {
            maps.remove_vip_addr(&key)?;
            self.vip_addrs.remove(&key);
        }
        let gone: Vec<u32> = self.backends.keys().filter(|k| !desired.backends.contains_key(k)).copied().collect();
        for id in gone {
            maps.set_backend(id, &Backend::default())?;
            self.backends.remove(&id);
            report.backends_written += 1;
        }
        Ok(())
    }

    fn write_settings(&mut self, settings: &Settings, maps: &mut impl MapWriter) -> Result<()> {
        if self.settings.as_ref() != Some(settings) {
            maps.set_settings(settings)?;
            self.settings = Some(*settings);
        }
        Ok(())
    }
}

/// Writes the slots of `new` that differ from what the half holds (`old`).
fn write_table(
    maps: &mut impl MapWriter,
    vip_id: u32,
    half: usize,
    table_size: u32,
    old: &[u32],
    new: &[u32],
) -> Result<usize> {
    let offset = table_offset(vip_id, half, table_size);
    let mut written = 0;
    for (slot, &backend_id) in new.iter().enumerate() {
        if old.get(slot) != Some(&backend_id) {
            maps.set_maglev_slot(offset + slot as u32, backend_id)?;
            written += 1;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::plan::{IdAllocator, desired};
    use crate::testing::Recorder;

    fn config_with(backends: &[&str]) -> String {
        let mut text = String::from(
            "[balancer]\ninterfaces = [\"eth0\"]\nipv4 = \"10.0.0.1\"\nmaglev_table_size = 211\n\n[[vip]]\nname = \"web\"\naddress = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n",
        );
        for b in backends {
            text.push_str(&format!("\n[[vip.backend]]\naddress = \"{b}\"\n"));
        }
        text
    }

    fn tables(text: &str, ids: &mut IdAllocator) -> DesiredTables {
        desired(&config::parse(text, "test.toml").expect("valid"), ids)
    }

    /// The table the VIP entry points at, read back from the recorded slots.
    fn active_table(rec: &Recorder, size: u32) -> Vec<u32> {
        let info = rec.vips.values().next().expect("vip written");
        (info.table_offset..info.table_offset + size).map(|i| rec.slots[&i]).collect()
    }

    #[test]
    fn first_sync_writes_backends_then_table_then_vip() {
        let mut ids = IdAllocator::new(64, 4096);
        let t = tables(&config_with(&["10.0.1.11", "10.0.1.12"]), &mut ids);
        let mut rec = Recorder::default();
        let report = Applied::default().sync(&t, &mut rec).expect("sync");
        assert_eq!(
            rec.ops,
            [
                "settings",
                "reset backend 0",
                "backend 0 flags 3",
                "reset backend 1",
                "backend 1 flags 3",
                "reset vip 0",
                "slots",
                "vip offset 0",
                "vip addr 1"
            ]
        );
        assert_eq!(report.slots_written, 211);
        assert_eq!(active_table(&rec, 211), t.vips.values().next().expect("vip").table);
    }

    #[test]
    fn a_change_is_built_in_the_other_half_and_switched_in_one_write() {
        let mut ids = IdAllocator::new(64, 4096);
        let mut applied = Applied::default();
        let mut rec = Recorder::default();
        applied.sync(&tables(&config_with(&["10.0.1.11", "10.0.1.12"]), &mut ids), &mut rec).expect("sync");
        rec.ops.clear();
        let three = tables(&config_with(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]), &mut ids);
        let report = applied.sync(&three, &mut rec).expect("sync");
        assert_eq!(rec.ops, ["reset backend 2", "backend 2 flags 3", "slots", "vip offset 211"]);
        assert_eq!(active_table(&rec, 211), three.vips.values().next().expect("vip").table);
        assert_eq!(report.vips_switched, 1);

        // Back to two backends: the first half is rewritten only where it differs (nowhere).
        rec.ops.clear();
        let two = tables(&config_with(&["10.0.1.11", "10.0.1.12"]), &mut ids);
        let report = applied.sync(&two, &mut rec).expect("sync");
        assert_eq!(report.slots_written, 0);
        assert_eq!(rec.ops, ["vip offset 0", "backend 2 flags 0"]);

        // Nothing changed: nothing written.
        rec.ops.clear();
        assert_eq!(applied.sync(&two, &mut rec).expect("sync"), SyncReport::default());
        assert!(rec.ops.is_empty());
    }

    #[test]
    fn removing_a_vip_removes_its_entry_and_address() {
        let mut ids = IdAllocator::new(64, 4096);
        let mut applied = Applied::default();
        let mut rec = Recorder::default();
        applied.sync(&tables(&config_with(&["10.0.1.11"]), &mut ids), &mut rec).expect("sync");
        rec.ops.clear();
        let empty = "[balancer]\ninterfaces = [\"eth0\"]\nipv4 = \"10.0.0.1\"\nmaglev_table_size = 211\n";
        applied.sync(&tables(empty, &mut ids), &mut rec).expect("sync");
        assert_eq!(rec.ops, ["remove vip", "remove vip addr", "backend 0 flags 0", "settings"]);
    }

    #[test]
    fn an_id_taken_by_another_vip_or_backend_starts_from_zero() {
        let mut ids = IdAllocator::new(64, 4096);
        let mut applied = Applied::default();
        let mut rec = Recorder::default();
        applied.sync(&tables(&config_with(&["10.0.1.11"]), &mut ids), &mut rec).expect("sync");
        // The backend is replaced by another (which gets its id 0), the VIP by another.
        let other = config_with(&["10.0.1.99"]).replace("10.100.0.1", "10.100.0.9");
        rec.ops.clear();
        applied.sync(&tables(&other, &mut ids), &mut rec).expect("sync");
        assert!(rec.ops.contains(&"reset backend 0".to_owned()), "{:?}", rec.ops);
        assert!(rec.ops.contains(&"reset vip 0".to_owned()), "{:?}", rec.ops);
        // A backend whose flags change (drained) keeps its counters.
        rec.ops.clear();
        let drained = other.replace("address = \"10.0.1.99\"\n", "address = \"10.0.1.99\"\ndraining = true\n");
        applied.sync(&tables(&drained, &mut ids), &mut rec).expect("sync");
        assert!(!rec.ops.iter().any(|op| op.starts_with("reset")), "{:?}", rec.ops);
    }
}
