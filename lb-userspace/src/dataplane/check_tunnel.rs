//! The way health checks of ipip and gue backends go through their tunnel: `lb-check`, one
//! end of a veth pair without ARP, with `tc_check_tunnel` on its egress; a policy rule sends
//! what sockets marked `CHECK_MARK_BASE/CHECK_MARK_MASK` send to a table whose one route is
//! that device. The program encapsulates each packet for the backend its mark names
//! (`CHECK_TUNNELS`) and redirects it towards the backend. Made when the first such check
//! starts, removed when the last one ends and when the controller stops (a controller
//! that did not stop leaves them, and the next one replaces them).

use std::collections::BTreeMap;
use std::process::Command;

use aya::programs::tc::TcAttachType;

use super::*;

/// The device the checks' packets are routed to.
pub const CHECK_DEVICE: &str = "lb-check";
const CHECK_PEER: &str = "lb-check-peer";
/// The routing table (and the priority of the rule that picks it) for marked checks.
pub const CHECK_TABLE: u32 = 0x4c42;
/// Room for the outer headers (IPv6 and UDP: 48 bytes) on a path of 1500 bytes, with margin.
const CHECK_MTU: &str = "1400";

pub struct CheckTunnels {
    /// An object of its own, with the smallest maps: the program and the two maps it reads
    /// (SETTINGS, CHECK_TUNNELS).
    object: Ebpf,
    written: BTreeMap<u32, CheckTunnel>,
}

impl CheckTunnels {
    /// Makes the device, routes and rules (replacing any left by an earlier controller) and
    /// attaches the program.
    pub fn create() -> Result<Self> {
        remove_device_and_rules();
        make_device_and_rules().inspect_err(|_| remove_device_and_rules())?;
        let mut object = load_object(MapSizes::SMALLEST)?;
        let program: &mut SchedClassifier =
            object.program_mut(PROG_CHECK_TUNNEL).context("program tc_check_tunnel missing")?.try_into()?;
        load_program(|| program.load()).context("verifier rejected tc_check_tunnel")?;
        program
            .attach(CHECK_DEVICE, TcAttachType::Egress)
            .with_context(|| format!("attaching {PROG_CHECK_TUNNEL} to the egress of {CHECK_DEVICE}"))?;
        info!(
            device = CHECK_DEVICE,
            table = CHECK_TABLE,
            "health checks through tunnels: device, rules and program set up"
        );
        Ok(Self { object, written: BTreeMap::new() })
    }

    /// Writes `settings` (the checks' outer source addresses, gue's port) and exactly
    /// `tunnels` into the program's maps.
    pub fn write(&mut self, settings: &Settings, tunnels: &BTreeMap<u32, CheckTunnel>) -> Result<()> {
        let map = self.object.map_mut(MAP_SETTINGS).context("map SETTINGS missing")?;
        Array::<_, Settings>::try_from(map)?.set(0, settings, 0).context("writing tc_check_tunnel's SETTINGS")?;
        write_tunnels(&mut self.object, &self.written, tunnels)?;
        self.written = tunnels.clone();
        Ok(())
    }
}

/// Turns `CHECK_TUNNELS` of `object` from `written` into `tunnels`.
fn write_tunnels(
    object: &mut Ebpf,
    written: &BTreeMap<u32, CheckTunnel>,
    tunnels: &BTreeMap<u32, CheckTunnel>,
) -> Result<()> {
    let map = object.map_mut(MAP_CHECK_TUNNELS).context("map CHECK_TUNNELS missing")?;
    let mut map = HashMap::<_, u32, CheckTunnel>::try_from(map)?;
    for (mark, tunnel) in tunnels {
        if written.get(mark) != Some(tunnel) {
            map.insert(mark, tunnel, 0).with_context(|| format!("writing CHECK_TUNNELS[{mark:#x}]"))?;
        }
    }
    for mark in written.keys().filter(|m| !tunnels.contains_key(m)) {
        map.remove(mark).with_context(|| format!("removing CHECK_TUNNELS[{mark:#x}]"))?;
    }
    Ok(())
}

impl Drop for CheckTunnels {
    fn drop(&mut self) {
        remove_device_and_rules();
        info!(device = CHECK_DEVICE, "health checks through tunnels: device and rules removed");
    }
}

/// The rule's match: `CHECK_MARK_BASE/CHECK_MARK_MASK`.
fn mark_match() -> String {
    format!("{CHECK_MARK_BASE:#x}/{CHECK_MARK_MASK:#x}")
}

/// The families the host has: IPv6 may be disabled at boot (`ipv6.disable=1`).
fn families() -> &'static [&'static str] {
    if std::path::Path::new("/proc/sys/net/ipv6").exists() { &["-4", "-6"] } else { &["-4"] }
}

fn make_device_and_rules() -> Result<()> {
    ip(&["link", "add", CHECK_DEVICE, "type", "veth", "peer", "name", CHECK_PEER])?;
    let ipv6 = families().contains(&"-6");
    if ipv6 {
        // No IPv6 link-local address, so the device sends nothing of its own.
        for dev in [CHECK_DEVICE, CHECK_PEER] {
            write_sysctl(&format!("ipv6/conf/{dev}/addr_gen_mode"), "1")?;
        }
        write_sysctl(&format!("ipv6/conf/{CHECK_DEVICE}/forwarding"), "1")?;
    }
    // The program asks the FIB the way on from the device, as a forwarded packet's.
    write_sysctl(&format!("ipv4/conf/{CHECK_DEVICE}/forwarding"), "1")?;
    ip(&["link", "set", CHECK_PEER, "arp", "off", "up"])?;
    ip(&["link", "set", CHECK_DEVICE, "mtu", CHECK_MTU, "arp", "off", "up"])?;
    let (table, marks) = (CHECK_TABLE.to_string(), mark_match());
    for &family in families() {
        ip(&[family, "route", "replace", "default", "dev", CHECK_DEVICE, "table", &table])?;
        ip(&[family, "rule", "add", "fwmark", &marks, "lookup", &table, "priority", &table])?;
    }
    Ok(())
}

/// Removes the rules and the device (its routes go with it); what is not there is fine.
fn remove_device_and_rules() {
    let priority = CHECK_TABLE.to_string();
    for &family in families() {
        while ip(&[family, "rule", "del", "priority", &priority]).is_ok() {}
    }
    let _ = ip(&["link", "del", CHECK_DEVICE]);
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/{key}");
    std::fs::write(&path, value).with_context(|| format!("setting {path} to {value}"))
}

/// `ip ARGS` (iproute2), its error output in the error.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    anyhow::ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

impl Dataplane {
    /// Writes `tunnels` into this object's `CHECK_TUNNELS` (which `tc_check_tunnel` of this
    /// object reads, with its `SETTINGS`): for fixtures.
    pub fn configure_check_tunnels(&mut self, tunnels: &BTreeMap<u32, CheckTunnel>) -> Result<()> {
        let ebpf = self.ebpf.as_mut().context("an adopted program's object is not loaded here")?;
        write_tunnels(ebpf, &BTreeMap::new(), tunnels)
    }

    /// The object's `tc_check_tunnel`, loaded: for fixtures.
    pub fn check_tunnel_program(&mut self) -> Result<&mut SchedClassifier> {
        let ebpf = self.ebpf.as_mut().context("an adopted program's object is not loaded here")?;
        Ok(ebpf.program_mut(PROG_CHECK_TUNNEL).context("program tc_check_tunnel missing")?.try_into()?)
    }

    /// See `PacketPath::set_check_tunnels`.
    pub fn set_check_tunnels(&mut self, settings: &Settings, tunnels: &BTreeMap<u32, CheckTunnel>) -> Result<()> {
        if tunnels.is_empty() {
            self.check_tunnels = None;
            return Ok(());
        }
        if self.check_tunnels.is_none() {
            self.check_tunnels = Some(CheckTunnels::create()?);
        }
        self.check_tunnels.as_mut().expect("made above").write(settings, tunnels)
    }
}
