//! The packet path's counters, read per CPU and summed.

use super::*;

impl Dataplane {
    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        sum_over_cpus(&self.vip_stats, vip_id)
    }

    pub fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        sum_over_cpus(&self.backend_stats, backend_id)
    }

    pub fn global_stats(&self) -> Result<GlobalStats> {
        sum_over_cpus(&self.global_stats, 0)
    }
}

/// The counters at `index` of a per-CPU map, summed over CPUs.
fn sum_over_cpus<T: Counters + aya::Pod>(map: &PerCpuArray<MapData, T>, index: u32) -> Result<T> {
    Ok(map.get(&index, 0)?.iter().fold(T::default(), |mut total, cpu| {
        total.add(cpu);
        total
    }))
}
