//! The sync step's writes into the maps.

use super::*;

impl MapWriter for Dataplane {
    fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        Ok(self.settings.set(0, settings, 0)?)
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        Ok(self.backends.set(id, backend, 0)?)
    }
    fn write_slots(&mut self, offset: u32, table: &[u32]) -> Result<usize> {
        self.maglev.write(offset, table)
    }
    /// The id's entry first, then the key: a packet that finds the key finds its entry.
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        self.vip_entries.set(info.vip_id, VipEntry { info: *info, key: *key, _pad: 0 }, 0)?;
        if self.vips.get(key, 0).ok() != Some(info.vip_id) {
            self.vips.insert(key, info.vip_id, 0)?;
        }
        Ok(())
    }
    /// The key first, then the id's entry, zeroed: the flows that name the id find no VIP.
    /// Removals come last in a sync, so the id may name a new VIP already: its entry stays.
    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let id = self.vips.get(key, 0)?;
        self.vips.remove(key)?;
        if self.vip_entries.get(&id, 0)?.key == *key {
            self.vip_entries.set(id, VipEntry::default(), 0)?;
        }
        Ok(())
    }
    fn set_vip_addr(&mut self, key: &VipAddrKey, count: u32) -> Result<()> {
        Ok(self.vip_addrs.insert(key, count, 0)?)
    }
    fn remove_vip_addr(&mut self, key: &VipAddrKey) -> Result<()> {
        Ok(self.vip_addrs.remove(key)?)
    }
    fn reset_vip(&mut self, id: u32) -> Result<()> {
        zero_per_cpu(&mut self.vip_stats, id)
    }
    fn reset_backend(&mut self, id: u32) -> Result<()> {
        zero_per_cpu(&mut self.backend_stats, id)?;
        zero_per_cpu(&mut self.next_hops, id)
    }
}

/// Sets every CPU's value at `index` to the default (zero).
fn zero_per_cpu<T: aya::Pod + Default>(map: &mut PerCpuArray<MapData, T>, index: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
    let zeros = aya::maps::PerCpuValues::try_from(vec![T::default(); cpus])?;
    Ok(map.set(index, zeros, 0)?)
}
