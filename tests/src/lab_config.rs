//! The controller configs of lab tests, built as TOML values and written out whole: tests
//! set keys (`balancer`, `vip`, `merge`), never patch the text.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use toml::{Table, Value};

use crate::lab::{LB_V4, LB_V6, Lab};

/// A `[[vip]]` of a lab config, by backend index in the lab.
pub struct VipSpec {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: &'static str,
    pub mode: &'static str,
    /// (backend index in the lab, weight)
    pub backends: Vec<(usize, u32)>,
}

impl VipSpec {
    pub fn new(
        name: &str,
        address: IpAddr,
        port: u16,
        protocol: &'static str,
        mode: &'static str,
        backends: Vec<(usize, u32)>,
    ) -> Self {
        Self { name: name.to_owned(), address, port, protocol, mode, backends }
    }
}

/// A controller config: TOML values, written out by `Display`.
#[derive(Clone, Debug, PartialEq)]
pub struct LabConfig(Table);

impl LabConfig {
    /// A balancer on interface `eth0` in driver mode with addresses `own` (the nat sources)
    /// and maps pinned at `pin_dir`, serving `vips` over `lab`'s backends (addresses of the
    /// VIP's family, with their locality labels).
    pub fn new(lab: &Lab, own: (Ipv4Addr, Ipv6Addr), pin_dir: &Path, vips: &[VipSpec]) -> Self {
        let vips = vips.iter().map(|vip| Value::Table(vip_table(lab, vip))).collect();
        let mut config = Table::new();
        config.insert("balancer".into(), Value::Table(balancer_table(own, pin_dir)));
        config.insert("vip".into(), Value::Array(vips));
        Self(config)
    }

    /// Sets `[balancer]` keys, given as TOML (`key = value` lines; `[flow_timeouts]` and
    /// the like for its sub-tables).
    pub fn balancer(mut self, keys: &str) -> Self {
        merge(table_at(&mut self.0, "balancer"), parse(keys));
        self
    }

    /// Sets keys of the `[[vip]]` named `name`, given as TOML.
    pub fn vip(mut self, name: &str, keys: &str) -> Self {
        let vips = self.0.get_mut("vip").and_then(Value::as_array_mut).expect("a config has VIPs");
        let vip = vips
            .iter_mut()
            .filter_map(Value::as_table_mut)
            .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no VIP {name:?}"));
        merge(vip, parse(keys));
        self
    }

    /// Merges top-level TOML into the config (`[admin]`, `[dns]`, ...).
    pub fn merge(mut self, toml: &str) -> Self {
        merge(&mut self.0, parse(toml));
        self
    }
}

impl fmt::Display for LabConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&toml::to_string(&self.0).map_err(|_| fmt::Error)?)
    }
}

fn balancer_table(own: (Ipv4Addr, Ipv6Addr), pin_dir: &Path) -> Table {
    parse(&format!(
        "interfaces = [\"eth0\"]\nxdp_mode = \"driver\"\nipv4 = \"{}\"\nipv6 = \"{}\"\nmaglev_table_size = 65537",
        own.0, own.1
    ))
    .into_iter()
    .chain([("pin_dir".to_owned(), Value::String(pin_dir.display().to_string()))])
    .collect()
}

fn vip_table(lab: &Lab, vip: &VipSpec) -> Table {
    let backends = vip
        .backends
        .iter()
        .map(|&(index, weight)| {
            let b = &lab.backends[index];
            let mut backend = Table::new();
            backend.insert("address".into(), Value::String(b.addr(vip.address.is_ipv6()).to_string()));
            backend.insert("weight".into(), Value::Integer(weight.into()));
            backend.insert("region".into(), Value::String(b.spec.region.clone()));
            backend.insert("zone".into(), Value::String(b.spec.zone.clone()));
            Value::Table(backend)
        })
        .collect();
    let mut table = Table::new();
    table.insert("name".into(), Value::String(vip.name.clone()));
    table.insert("address".into(), Value::String(vip.address.to_string()));
    table.insert("port".into(), Value::Integer(vip.port.into()));
    table.insert("protocol".into(), Value::String(vip.protocol.into()));
    table.insert("mode".into(), Value::String(vip.mode.into()));
    table.insert("backend".into(), Value::Array(backends));
    table
}

fn parse(toml: &str) -> Table {
    toml.parse().unwrap_or_else(|e| panic!("not TOML ({e}): {toml}"))
}

fn table_at<'a>(table: &'a mut Table, key: &str) -> &'a mut Table {
    table.entry(key).or_insert_with(|| Value::Table(Table::new())).as_table_mut().expect("a table")
}

/// Merges `from` into `into`: tables key by key, anything else replaced.
fn merge(into: &mut Table, from: Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Table(existing)), Value::Table(more)) => merge(existing, more),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// The lab's own balancer at its pin directory: [`LabConfig::new`] with [`LB_V4`] and
/// [`LB_V6`].
pub fn lb_config(lab: &Lab, vips: &[VipSpec]) -> LabConfig {
    LabConfig::new(lab, (LB_V4, LB_V6), &lab.pin_dir(), vips)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_set_by_value_are_what_the_controller_reads() {
        let pin_dir = Path::new("/sys/fs/bpf/ut-lab-config");
        let vip = |name: &str| {
            let mut t = Table::new();
            t.insert("name".into(), Value::String(name.into()));
            t.insert("address".into(), Value::String("10.100.0.1".into()));
            t.insert("port".into(), Value::Integer(80));
            t.insert("backend".into(), Value::Array(vec![parse("address = \"10.0.1.11\"\nzone = 'z \"1\"'").into()]));
            Value::Array(vec![Value::Table(t)])
        };
        let mut table = Table::new();
        table.insert("balancer".into(), Value::Table(balancer_table((LB_V4, LB_V6), pin_dir)));
        table.insert("vip".into(), vip("web"));
        let config = LabConfig(table)
            .balancer("region = \"r1\"\nnat_port_max = 21000\n[flow_timeouts]\ntcp_closed = \"200ms\"")
            .vip("web", "mode = \"nat\"\noutlier_detection = { consecutive_5xx = 2 }")
            .merge("[admin]\nlisten = \"127.0.0.1:9999\"");
        let text = config.to_string();
        let parsed = lb_userspace::config::parse(&text, "generated").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(parsed.balancer.pin_dir, pin_dir);
        assert_eq!((parsed.balancer.region.as_str(), parsed.balancer.nat_port_max), ("r1", 21000));
        assert_eq!(parsed.balancer.flow_timeouts.tcp_closed, std::time::Duration::from_millis(200));
        assert_eq!(parsed.vips[0].mode, lb_userspace::config::ForwardingMode::Nat);
        assert_eq!(parsed.vips[0].backends[0].zone, "z \"1\"", "quotes escaped");
        assert_eq!(parsed.vips[0].backends[0].port, 80, "defaults to the VIP's port");
        assert!(parsed.vips[0].outlier_detection.is_some());
        assert_eq!(parsed.admin.listen.port(), 9999);
    }
}
