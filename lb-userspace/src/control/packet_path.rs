//! What the controller needs of the packet path: the sync step's writes, the counters,
//! and the sweep of the flow tables. The dataplane is it in production; unit tests use a
//! recorder; a DNS vantage point has none (`NoPacketPath`).

use anyhow::{Result, bail};
use std::collections::BTreeMap;

use lb_common::{
    Backend, BackendStats, CheckTunnel, FlowTimeouts, GlobalStats, Settings, VipAddrKey, VipInfo, VipKey, VipStats,
};

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
    /// The backends that checks through a tunnel go to, by their socket marks (from
    /// `settings`' own addresses): the `lb-check` device is there while any is.
    fn set_check_tunnels(&mut self, settings: &Settings, tunnels: &BTreeMap<u32, CheckTunnel>) -> Result<()>;
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
    fn set_check_tunnels(&mut self, settings: &Settings, tunnels: &BTreeMap<u32, CheckTunnel>) -> Result<()> {
        Dataplane::set_check_tunnels(self, settings, tunnels)
    }
}

/// The packet path of a DNS vantage point: none. Its config has no VIPs (validation
/// refuses them without interfaces, and a reload cannot add interfaces), so the sync only
/// ever writes the settings, which have nowhere to go; no packet passes, so the counters
/// and the flow tables are empty.
pub struct NoPacketPath;

const NO_PACKET_PATH: &str = "a DNS vantage point (no balancer.interfaces) has no packet path";

impl MapWriter for NoPacketPath {
    fn set_settings(&mut self, _: &Settings) -> Result<()> {
        Ok(())
    }
    fn set_backend(&mut self, _: u32, _: &Backend) -> Result<()> {
        bail!(NO_PACKET_PATH)
    }
    fn write_slots(&mut self, _: u32, _: &[u32]) -> Result<usize> {
        bail!(NO_PACKET_PATH)
    }
    fn set_vip(&mut self, _: &VipKey, _: &VipInfo) -> Result<()> {
        bail!(NO_PACKET_PATH)
    }
    fn remove_vip(&mut self, _: &VipKey) -> Result<()> {
        bail!(NO_PACKET_PATH)
    }
    fn set_vip_addr(&mut self, _: &VipAddrKey, _: u32) -> Result<()> {
        bail!(NO_PACKET_PATH)
    }
    fn remove_vip_addr(&mut self, _: &VipAddrKey) -> Result<()> {
        bail!(NO_PACKET_PATH)
    }
    fn reset_vip(&mut self, _: u32) -> Result<()> {
        bail!(NO_PACKET_PATH)
    }
    fn reset_backend(&mut self, _: u32) -> Result<()> {
        bail!(NO_PACKET_PATH)
    }
}

impl PacketPath for NoPacketPath {
    fn vip_stats(&self, _: u32) -> Result<VipStats> {
        bail!(NO_PACKET_PATH)
    }
    fn backend_stats(&self, _: u32) -> Result<BackendStats> {
        bail!(NO_PACKET_PATH)
    }
    fn global_stats(&self) -> Result<GlobalStats> {
        Ok(GlobalStats::default())
    }
    fn sweep_flows(&mut self, _: &FlowTimeouts) -> Result<SweepReport> {
        Ok(SweepReport::default())
    }
    fn read_flows(&self) -> Result<FlowSnapshot> {
        bail!(NO_PACKET_PATH)
    }
    fn set_check_tunnels(&mut self, _: &Settings, tunnels: &BTreeMap<u32, CheckTunnel>) -> Result<()> {
        if tunnels.is_empty() { Ok(()) } else { bail!(NO_PACKET_PATH) }
    }
}
