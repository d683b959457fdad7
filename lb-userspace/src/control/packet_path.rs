//! What the controller needs of the packet path: the sync step's writes, the counters,
//! and the sweep of the flow tables. The dataplane is it in production; unit tests use a
//! recorder.

use anyhow::Result;
use lb_common::{BackendStats, FlowTimeouts, GlobalStats, VipStats};

use crate::api::flows::FlowSnapshot;
use crate::dataplane::{Dataplane, SweepReport};
use crate::sync::MapWriter;

pub trait PacketPath: MapWriter {
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats>;
    fn backend_stats(&self, backend_id: u32) -> Result<BackendStats>;
    fn global_stats(&self) -> Result<GlobalStats>;
    /// Removes the entries of connections that are over and counts the others.
    fn sweep_flows(&mut self, timeouts: &FlowTimeouts) -> Result<SweepReport>;
    /// The flow and nat tables, read whole.
    fn read_flows(&self) -> Result<FlowSnapshot>;
}

impl PacketPath for Dataplane {
    fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        Dataplane::vip_stats(self, vip_id)
    }
    fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        Dataplane::backend_stats(self, backend_id)
    }
    fn global_stats(&self) -> Result<GlobalStats> {
        Dataplane::global_stats(self)
    }
    fn sweep_flows(&mut self, timeouts: &FlowTimeouts) -> Result<SweepReport> {
        Dataplane::sweep_flows(self, timeouts)
    }
    fn read_flows(&self) -> Result<FlowSnapshot> {
        Dataplane::read_flows(self)
    }
}

/// The packet path of a controller without one: a DNS vantage point (`[dns]` only, no
/// interfaces, no VIPs). There are no tables to write and nothing to count.
pub struct NoPacketPath;

impl MapWriter for NoPacketPath {
    fn set_settings(&mut self, _: &lb_common::Settings) -> Result<()> {
        Ok(())
    }
    fn set_backend(&mut self, _: u32, _: &lb_common::Backend) -> Result<()> {
        anyhow::bail!("no packet path: a DNS vantage point has no backends")
    }
    fn write_slots(&mut self, _: u32, _: &[u32]) -> Result<usize> {
        anyhow::bail!("no packet path: a DNS vantage point has no Maglev tables")
    }
    fn set_vip(&mut self, _: &lb_common::VipKey, _: &lb_common::VipInfo) -> Result<()> {
        anyhow::bail!("no packet path: a DNS vantage point has no VIPs")
    }
    fn remove_vip(&mut self, _: &lb_common::VipKey) -> Result<()> {
        Ok(())
    }
    fn set_vip_addr(&mut self, _: &lb_common::VipAddrKey, _: u32) -> Result<()> {
        anyhow::bail!("no packet path: a DNS vantage point has no VIPs")
    }
    fn remove_vip_addr(&mut self, _: &lb_common::VipAddrKey) -> Result<()> {
        Ok(())
    }
    fn reset_vip(&mut self, _: u32) -> Result<()> {
        Ok(())
    }
    fn reset_backend(&mut self, _: u32) -> Result<()> {
        Ok(())
    }
}

impl PacketPath for NoPacketPath {
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
    fn read_flows(&self) -> Result<FlowSnapshot> {
        anyhow::bail!("no packet path: a DNS vantage point has no flow table")
    }
}
