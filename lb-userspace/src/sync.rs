//! One sync step: compares the desired tables with what the maps hold and writes only the
//! difference, in an order that never shows packets a half-built table:
//! new backends first, then each VIP's new Maglev table into its inactive half, then the
//! VIP entry that switches to it (one map update), then the same table into the half just
//! left (so that both halves match, and the next change writes only the slots it changes),
//! and removals last.
//!
//! A VIP's table is built only when its inputs changed, one VIP at a time, and dropped once
//! written: what is kept per VIP is its entry and its table's inputs, never a table (the
//! map holds those, and `MapWriter::write_slots` compares against it).

use std::collections::BTreeMap;

use anyhow::Result;
use lb_common::{Backend, Settings, VipAddrKey, VipInfo, VipKey};

use crate::plan::{DesiredTables, DesiredVip, Existing, MaglevInputs};

/// The map writes a sync needs; the dataplane implements it with BPF maps, tests with a log.
pub trait MapWriter {
    fn set_settings(&mut self, settings: &Settings) -> Result<()>;
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    /// Makes the `table.len()` slots of `MAGLEV` from `offset` hold `table`, writing only
    /// the slots that hold something else; returns how many it wrote.
    fn write_slots(&mut self, offset: u32, table: &[u32]) -> Result<usize>;
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
    /// What both halves of the VIP's table were built from (`None`: adopted, not known).
    maglev: Option<MaglevInputs>,
}

/// Where a VIP's half of the `MAGLEV` array starts.
pub fn table_offset(vip_id: u32, half: usize, table_size: u32) -> u32 {
    (vip_id * 2 + half as u32) * table_size
}

/// Counts of what one sync wrote, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Slots written into the halves switched to.
    pub slots_written: usize,
    /// Slots written into the halves left, to match the ones switched to.
    pub slots_caught_up: usize,
    /// VIP tables built (the others' inputs had not changed).
    pub tables_built: usize,
    pub vips_switched: usize,
    pub vips_removed: usize,
    pub backends_written: usize,
}

impl Applied {
    /// What an earlier controller wrote. What its tables were built from is not known:
    /// each VIP's table is built again and written into its spare half where that differs
    /// (`write_slots` compares with the map), then switched in as usual.
    pub fn adopt(existing: &Existing, table_size: u32) -> Self {
        let vips = existing
            .vips
            .iter()
            .map(|(key, info)| {
                let active_half =
                    (info.table_offset / table_size.max(1)).saturating_sub(info.vip_id * 2).min(1) as usize;
                (*key, AppliedVip { info: *info, active_half, maglev: None })
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
            self.write_vip(key, vip, maps, &mut report)?;
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

    /// One VIP: when its table's inputs changed, the new table into the spare half (the
    /// first half for a new VIP), the VIP entry that switches to it in one map update, then
    /// the table into the half left; otherwise only the entry, if that changed.
    fn write_vip(
        &mut self,
        key: &VipKey,
        vip: &DesiredVip,
        maps: &mut impl MapWriter,
        report: &mut SyncReport,
    ) -> Result<()> {
        let size = vip.maglev.table_size;
        let applied = self.vips.get(key).filter(|a| a.info.vip_id == vip.vip_id);
        let rebuild = applied.is_none_or(|a| a.maglev.as_ref() != Some(&vip.maglev));
        let (before, mut half) = match applied {
            Some(a) => (a.info, a.active_half),
            None => {
                maps.reset_vip(vip.vip_id)?;
                (VipInfo::default(), 1)
            }
        };
        let table = if rebuild {
            half = 1 - half;
            let table = vip.maglev.build();
            report.tables_built += 1;
            report.slots_written += maps.write_slots(table_offset(vip.vip_id, half, size), &table)?;
            table
        } else {
            Vec::new()
        };
        let info = VipInfo {
            vip_id: vip.vip_id,
            table_offset: table_offset(vip.vip_id, half, size),
            table_size: if vip.maglev.is_empty() { 0 } else { size },
            mode: vip.mode,
            limits: vip.limits.flags,
            source_prefix_len: vip.limits.source_prefix_len,
            watch: vip.watch,
            new_flow_limit: vip.limits.new_flows,
            packet_limit: vip.limits.packets,
            source_limit: vip.limits.sources,
        };
        if before != info {
            maps.set_vip(key, &info)?;
            report.vips_switched += 1;
        }
        if rebuild {
            report.slots_caught_up += maps.write_slots(table_offset(vip.vip_id, 1 - half, size), &table)?;
        }
        match self.vips.get_mut(key) {
            // Unchanged inputs are not copied again (16 strings a VIP, a thousand VIPs).
            Some(applied) if !rebuild => applied.info = info,
            _ => {
                self.vips.insert(*key, AppliedVip { info, active_half: half, maglev: Some(vip.maglev.clone()) });
            }
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

    /// The table of the first VIP of `t`.
    fn first_table(t: &DesiredTables) -> Vec<u32> {
        t.vips.values().next().expect("vip").maglev.build()
    }

    /// In how many slots two tables differ.
    fn differences(a: &[u32], b: &[u32]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn first_sync_writes_backends_then_table_then_vip_then_the_other_half() {
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
                "slots 0 +211",
                "vip offset 0",
                "slots 211 +211",
                "vip addr 1"
            ]
        );
        assert_eq!((report.slots_written, report.slots_caught_up, report.tables_built), (211, 211, 1));
        assert_eq!(active_table(&rec, 211), first_table(&t));
    }

    #[test]
    fn a_change_is_built_in_the_other_half_switched_in_one_write_then_caught_up() {
        let mut ids = IdAllocator::new(64, 4096);
        let mut applied = Applied::default();
        let mut rec = Recorder::default();
        let two = tables(&config_with(&["10.0.1.11", "10.0.1.12"]), &mut ids);
        applied.sync(&two, &mut rec).expect("sync");
        rec.ops.clear();
        let three = tables(&config_with(&["10.0.1.11", "10.0.1.12", "10.0.1.13"]), &mut ids);
        let changed = differences(&first_table(&two), &first_table(&three));
        assert!(changed > 0 && changed < 211, "{changed}");
        let report = applied.sync(&three, &mut rec).expect("sync");
        let (to_other, to_first) = (format!("slots 211 +{changed}"), format!("slots 0 +{changed}"));
        assert_eq!(rec.ops, ["reset backend 2", "backend 2 flags 3", &to_other, "vip offset 211", &to_first]);
        assert_eq!(active_table(&rec, 211), first_table(&three));
        assert_eq!((report.vips_switched, report.slots_written, report.slots_caught_up), (1, changed, changed));

        // Back to two backends: again only the slots that change, in each half.
        rec.ops.clear();
        let two = tables(&config_with(&["10.0.1.11", "10.0.1.12"]), &mut ids);
        let report = applied.sync(&two, &mut rec).expect("sync");
        assert_eq!(report.slots_written, changed);
        assert_eq!(rec.ops, [&to_first, "vip offset 0", &to_other, "backend 2 flags 0"]);

        // Nothing changed: nothing built, nothing written.
        rec.ops.clear();
        assert_eq!(applied.sync(&two, &mut rec).expect("sync"), SyncReport::default());
        assert!(rec.ops.is_empty());
    }

    /// `vips` VIPs of 16 backends each (every backend its own), VIP `changed` without its
    /// first backend when given.
    fn many_vips(vips: usize, changed: Option<usize>) -> String {
        let mut text =
            String::from("[balancer]\ninterfaces = [\"eth0\"]\nipv4 = \"10.0.0.1\"\nmaglev_table_size = 1009\n");
        for i in 0..vips {
            text += &format!(
                "\n[[vip]]\nname = \"v{i}\"\naddress = \"10.100.0.{}\"\nport = 80\nprotocol = \"tcp\"\n",
                i + 1
            );
            for j in usize::from(changed == Some(i))..16 {
                text += &format!("[[vip.backend]]\naddress = \"10.0.{i}.{}\"\n", j + 1);
            }
        }
        text
    }

    /// Which VIP ids own the slots a sync wrote, from the recorded ops.
    fn written_regions(rec: &Recorder) -> Vec<u32> {
        rec.ops
            .iter()
            .filter_map(|op| op.strip_prefix("slots "))
            .map(|op| op.split(' ').next().unwrap().parse::<u32>().unwrap() / 1009 / 2)
            .collect()
    }

    #[test]
    fn one_backend_of_one_vip_among_many_rebuilds_and_writes_only_that_vip() {
        let mut ids = IdAllocator::new(64, 4096);
        let mut applied = Applied::default();
        let mut rec = Recorder::default();
        let before = tables(&many_vips(20, None), &mut ids);
        applied.sync(&before, &mut rec).expect("sync");
        rec.ops.clear();
        let after = tables(&many_vips(20, Some(7)), &mut ids);
        let report = applied.sync(&after, &mut rec).expect("sync");
        let key = |t: &DesiredTables| t.vips.values().find(|v| v.name == "v7").expect("v7").maglev.build();
        let changed = differences(&key(&before), &key(&after));
        // Maglev's minimal disruption: the removed backend's sixteenth moves, and a little more.
        assert!((1009 / 16..1009 / 8).contains(&changed), "{changed} slots changed");
        assert_eq!((report.tables_built, report.vips_switched), (1, 1));
        assert_eq!((report.slots_written, report.slots_caught_up), (changed, changed));
        let v7 = after.vips.values().find(|v| v.name == "v7").expect("v7").vip_id;
        assert_eq!(written_regions(&rec), [v7, v7]);
    }

    #[test]
    fn adopted_tables_are_compared_with_the_maps_and_kept_as_inputs() {
        let mut ids = IdAllocator::new(64, 4096);
        let mut rec = Recorder::default();
        let before = tables(&many_vips(5, None), &mut ids);
        Applied::default().sync(&before, &mut rec).expect("sync");
        // A new controller: what the maps hold, not how they were built.
        let existing = Existing {
            settings: before.settings,
            vips: rec.vips.iter().map(|(k, v)| (*k, *v)).collect(),
            vip_addrs: before.vip_addrs.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: before.backends.iter().map(|(id, b)| (*id, *b)).collect(),
        };
        let mut adopted = Applied::adopt(&existing, 1009);
        rec.ops.clear();
        let report = adopted.sync(&before, &mut rec).expect("sync");
        // Every table built again (its inputs were not known), none of its slots written.
        assert_eq!((report.tables_built, report.slots_written, report.slots_caught_up), (5, 0, 0));
        for vip in before.vips.values() {
            let info = rec.vips.values().find(|i| i.vip_id == vip.vip_id).expect("entry");
            let table: Vec<u32> = (info.table_offset..info.table_offset + 1009).map(|i| rec.slots[&i]).collect();
            assert_eq!(table, vip.maglev.build());
        }
        // From then on the inputs are known: unchanged VIPs are not rebuilt.
        rec.ops.clear();
        let after = tables(&many_vips(5, Some(2)), &mut ids);
        let report = adopted.sync(&after, &mut rec).expect("sync");
        assert_eq!(report.tables_built, 1);
        let v2 = after.vips.values().find(|v| v.name == "v2").expect("v2").vip_id;
        assert_eq!(written_regions(&rec), [v2, v2]);
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
