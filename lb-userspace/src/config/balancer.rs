//! `[balancer]`: interfaces, addresses, table sizes, nat ports, flow timeouts, locality.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::Deserialize;

use super::{DEFAULT_PIN_DIR, flows};
use crate::plan::maglev;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    /// Interfaces the XDP program attaches to (required, non-empty, except on a DNS
    /// vantage point: see [`super::Config::has_packet_path`]).
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
    /// The balancer's own IPv4 address: the source of NATed packets. Required if any IPv4
    /// VIP uses nat mode.
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    /// Likewise for IPv6 nat VIPs.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Where maps are pinned; must be under /sys/fs/bpf.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Seed of the flow hash and the Maglev tables; the same on every balancer host that
    /// fronts the same VIPs.
    #[serde(default)]
    pub hash_seed: u32,
    /// Slots of each VIP's Maglev table: a prime, at least the number of backends of any
    /// VIP (ideally > 100 x that, for shares within 1% of the weights).
    #[serde(default = "default_table_size")]
    pub maglev_table_size: u32,
    #[serde(default = "default_max_vips")]
    pub max_vips: u32,
    #[serde(default = "default_max_backends")]
    pub max_backends: u32,
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// Entries of the LRU map of per-source rate-limit buckets (all VIPs together).
    #[serde(default = "default_source_table_size")]
    pub source_table_size: u32,
    #[serde(default = "default_nat_port_min")]
    pub nat_port_min: u16,
    #[serde(default = "default_nat_port_max")]
    pub nat_port_max: u16,
    /// How long flow entries live after a connection's last packet, by state.
    #[serde(default)]
    pub flow_timeouts: flows::FlowTimeoutsConfig,
    /// Locality labels of this balancer (compared with the backends' for failover order).
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
}

impl Default for BalancerConfig {
    /// The defaults of every key, as an empty `[balancer]` gives them (a DNS vantage point's
    /// config may leave the table out).
    fn default() -> Self {
        toml::Table::new().try_into().expect("every key of [balancer] has a default")
    }
}

impl BalancerConfig {
    /// nat source ports a new flow can take towards one backend (the nat table is keyed by
    /// the backend's address and port, so each backend has the whole range).
    pub fn nat_ports_per_backend(&self) -> u32 {
        u32::from(self.nat_port_max).saturating_sub(u32::from(self.nat_port_min)) + 1
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    Driver,
    Skb,
}

pub(super) fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}
fn default_table_size() -> u32 {
    maglev::DEFAULT_TABLE_SIZE
}
fn default_max_vips() -> u32 {
    lb_common::DEFAULT_MAX_VIPS
}
fn default_max_backends() -> u32 {
    lb_common::DEFAULT_MAX_BACKENDS
}
fn default_flow_table_size() -> u32 {
    lb_common::DEFAULT_FLOW_ENTRIES
}
fn default_source_table_size() -> u32 {
    lb_common::DEFAULT_SOURCE_ENTRIES
}
fn default_nat_port_min() -> u16 {
    20000
}
fn default_nat_port_max() -> u16 {
    59999
}
