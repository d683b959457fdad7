//! Test doubles shared by unit tests: a packet path that records the writes a sync makes,
//! as the maps would see them, and holds no counters; files of a test's own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;
use lb_common::{
    Backend, BackendStats, CheckTunnel, FlowTimeouts, GlobalStats, Settings, VipAddrKey, VipInfo, VipKey, VipStats,
};

use crate::control::PacketPath;
use crate::dataplane::SweepReport;
use crate::sync::MapWriter;

/// Records writes in order, like the maps would see them.
#[derive(Default)]
pub struct Recorder {
    pub ops: Vec<String>,
    pub slots: BTreeMap<u32, u32>,
    pub vips: BTreeMap<VipKey, VipInfo>,
    pub check_tunnels: BTreeMap<u32, CheckTunnel>,
    /// When set, every write fails (a map the kernel refuses to update).
    pub failing: bool,
}

impl Recorder {
    fn write(&mut self) -> Result<()> {
        anyhow::ensure!(!self.failing, "the map refused the update");
        Ok(())
    }

    /// The backend ids in the active table of the VIP with `vip_id`.
    pub fn serving(&self, vip_id: u32) -> BTreeSet<u32> {
        let Some(info) = self.vips.values().find(|v| v.vip_id == vip_id) else { return BTreeSet::new() };
        (info.table_offset..info.table_offset + info.table_size).filter_map(|i| self.slots.get(&i).copied()).collect()
    }
}

impl MapWriter for Recorder {
    fn set_settings(&mut self, _: &Settings) -> Result<()> {
        self.write()?;
        self.ops.push("settings".into());
        Ok(())
    }
    fn set_backend(&mut self, id: u32, b: &Backend) -> Result<()> {
        self.write()?;
        self.ops.push(format!("backend {id} flags {}", b.flags));
        Ok(())
    }
    fn write_slots(&mut self, offset: u32, table: &[u32]) -> Result<usize> {
        self.write()?;
        let mut written = 0;
        for (index, &backend_id) in (offset..).zip(table) {
            if self.slots.insert(index, backend_id) != Some(backend_id) {
                written += 1;
            }
        }
        self.ops.push(format!("slots {offset} +{written}"));
        Ok(written)
    }
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        self.write()?;
        self.vips.insert(*key, *info);
        self.ops.push(format!("vip offset {}", info.table_offset));
        Ok(())
    }
    fn remove_vip(&mut self, _: &VipKey) -> Result<()> {
        self.write()?;
        self.ops.push("remove vip".into());
        Ok(())
    }
    fn set_vip_addr(&mut self, _: &VipAddrKey, count: u32) -> Result<()> {
        self.write()?;
        self.ops.push(format!("vip addr {count}"));
        Ok(())
    }
    fn remove_vip_addr(&mut self, _: &VipAddrKey) -> Result<()> {
        self.write()?;
        self.ops.push("remove vip addr".into());
        Ok(())
    }
    fn reset_vip(&mut self, id: u32) -> Result<()> {
        self.write()?;
        self.ops.push(format!("reset vip {id}"));
        Ok(())
    }
    fn reset_backend(&mut self, id: u32) -> Result<()> {
        self.write()?;
        self.ops.push(format!("reset backend {id}"));
        Ok(())
    }
}

impl PacketPath for Recorder {
    fn vip_stats(&self, _: u32) -> Result<VipStats> {
        Ok(VipStats::default())
    }
    fn backend_stats(&self, _: u32) -> Result<BackendStats> {
        Ok(BackendStats::default())
    }
    fn global_stats(&self) -> Result<GlobalStats> {
        Ok(GlobalStats::default())
    }
    fn sweep_flows(&mut self, _: &FlowTimeouts) -> Result<SweepReport> {
        Ok(SweepReport::default())
    }
    fn read_flows(&self) -> Result<crate::api::flows::FlowSnapshot> {
        Ok(Default::default())
    }
    fn set_check_tunnels(&mut self, _: &Settings, tunnels: &BTreeMap<u32, CheckTunnel>) -> Result<()> {
        self.write()?;
        self.check_tunnels = tunnels.clone();
        Ok(())
    }
}

/// A file of the test's own under the temp dir, removed on drop (also when the test fails).
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn new(name: &str, bytes: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("lb-test-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
