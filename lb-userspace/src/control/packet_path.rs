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
