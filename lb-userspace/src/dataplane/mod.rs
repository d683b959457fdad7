//! The only module that talks to the kernel's BPF interfaces (through aya): loads the XDP
//! object with map sizes from the config, pins the maps, attaches the program, writes the
//! maps for the sync step and reads the counters.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{Xdp, XdpMode, links::FdLink, links::PinnedLink},
};
use lb_common::*;
use tracing::{debug, info, warn};

mod flows;

use crate::config::{BalancerConfig, XdpModeSetting};
use crate::flows::{FlowSummary, sweep};
use crate::plan::Existing;
use crate::sync::MapWriter;
use flows::FlowTables;

/// Map sizes chosen at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub max_vips: u32,
    pub max_backends: u32,
    pub table_size: u32,
    pub flow_entries: u32,
    pub source_entries: u32,
}

impl MapSizes {
    pub fn from_config(balancer: &BalancerConfig) -> Self {
        Self {
            max_vips: balancer.max_vips,
            max_backends: balancer.max_backends,
            table_size: balancer.maglev_table_size,
            flow_entries: balancer.flow_table_size,
            source_entries: balancer.source_table_size,
        }
    }
}

/// Rare events the XDP program reports through aya-log; the owner polls it.
pub type PacketLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The reader of `HEALTH_SIGNALS`; the owner polls its fd for readability.
pub struct HealthSignals(RingBuf<MapData>);

impl HealthSignals {
    /// Every signal the program wrote since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<HealthSignal> {
        let mut signals = Vec::new();
        while let Some(record) = self.0.next() {
            if record.len() >= std::mem::size_of::<HealthSignal>() {
                // SAFETY: the program writes whole `HealthSignal`s (plain integers); the
                // read is unaligned-safe.
                signals.push(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<HealthSignal>()) });
            }
        }
        signals
    }
}

impl std::os::fd::AsRawFd for HealthSignals {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The program and its maps: loaded by this controller, or adopted from an earlier one
/// whose program is still attached (the maps, the program and the attachments are pinned).
pub struct Dataplane {
    /// The object, when this controller loaded it.
    ebpf: Option<Ebpf>,
    vips: HashMap<MapData, VipKey, VipInfo>,
    vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    settings: Array<MapData, Settings>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    global_stats: PerCpuArray<MapData, GlobalStats>,
    next_hops: PerCpuArray<MapData, NextHop>,
    flow_tables: FlowTables,
    logger: Option<PacketLogger>,
    health_signals: Option<HealthSignals>,
    pin_dir: Option<PathBuf>,
}

/// Where the program is pinned, and each interface's attachment (a bpf_link).
fn program_pin(dir: &Path) -> PathBuf {
    dir.join(PROG_LB)
}

fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link-{iface}"))
}

/// Opens the map pinned as `dir/name`, as `variant` of aya's `Map`.
fn open_pinned<T: TryFrom<Map>>(dir: &Path, name: &str, variant: fn(MapData) -> Map) -> Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening the pinned map {}", path.display()))?;
    T::try_from(variant(data)).with_context(|| format!("map {name} has an unexpected type"))
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Dataplane {
    /// Loads the object and its programs (not attached yet) and pins every map under
    /// `pin_dir` (mounting bpffs first if needed), so `bpftool map dump pinned DIR/NAME`
    /// shows them with field names. Pins left by an earlier run are replaced.
    pub fn load(sizes: MapSizes, pin_dir: Option<&Path>) -> Result<Self> {
        raise_memlock_limit();
        let maglev_slots = sizes
            .max_vips
            .checked_mul(2)
            .and_then(|n| n.checked_mul(sizes.table_size))
            .context("max_vips * 2 * maglev_table_size overflows")?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_VIPS, sizes.max_vips)
            .map_max_entries(MAP_VIP_ADDRS, sizes.max_vips)
            .map_max_entries(MAP_VIP_STATS, sizes.max_vips)
            .map_max_entries(MAP_BACKENDS, sizes.max_backends)
            .map_max_entries(MAP_BACKEND_STATS, sizes.max_backends)
            .map_max_entries(MAP_NEXT_HOPS, sizes.max_backends)
            .map_max_entries(MAP_NAT_PORT_CURSORS, sizes.max_backends)
            .map_max_entries(MAP_MAGLEV, maglev_slots)
            .map_max_entries(MAP_FLOWS, sizes.flow_entries)
            .map_max_entries(MAP_NAT, sizes.flow_entries)
            .map_max_entries(MAP_RATE_STATE, sizes.max_vips)
            .map_max_entries(MAP_RATE_CPU_TOKENS, sizes.max_vips)
            .map_max_entries(MAP_SOURCE_BUCKETS, sizes.source_entries)
            .load(crate::EBPF_OBJECT)
            .context("loading the XDP object")?;
        if let Some(dir) = pin_dir {
            ensure_bpffs()?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, map) in ebpf.maps() {
                // Internal maps: aya-log's ring buffer and the frozen .rodata/.bss.
                if name.starts_with("AYA_") || name.starts_with('.') {
                    continue;
                }
                let path = dir.join(name);
                if path.exists() {
                    warn!(path = %path.display(), "replacing a pin left by an earlier run");
                    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                }
                map.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
            }
        }
        let logger =
            aya_log::EbpfLogger::init(&mut ebpf).inspect_err(|e| warn!("packet-path logging unavailable: {e}")).ok();
        for name in [PROG_LB, PROG_PASS, PROG_DROP, PROG_MAC_SWAP] {
            let program: &mut Xdp =
                ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?;
            load_program(program).with_context(|| format!("verifier rejected {name}"))?;
        }
        if let Some(dir) = pin_dir {
            let path = program_pin(dir);
            if path.exists() {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            let program: &mut Xdp = ebpf.program_mut(PROG_LB).context("program missing")?.try_into()?;
            program.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(Self {
            vips: take(&mut ebpf, MAP_VIPS)?,
            vip_addrs: take(&mut ebpf, MAP_VIP_ADDRS)?,
            backends: take(&mut ebpf, MAP_BACKENDS)?,
            maglev: take(&mut ebpf, MAP_MAGLEV)?,
            settings: take(&mut ebpf, MAP_SETTINGS)?,
            vip_stats: take(&mut ebpf, MAP_VIP_STATS)?,
            backend_stats: take(&mut ebpf, MAP_BACKEND_STATS)?,
            global_stats: take(&mut ebpf, MAP_GLOBAL_STATS)?,
            next_hops: take(&mut ebpf, MAP_NEXT_HOPS)?,
            flow_tables: FlowTables { flows: take(&mut ebpf, MAP_FLOWS)?, nat: take(&mut ebpf, MAP_NAT)? },
            health_signals: Some(HealthSignals(take(&mut ebpf, MAP_HEALTH_SIGNALS)?)),
            ebpf: Some(ebpf),
            logger,
            pin_dir: pin_dir.map(Path::to_owned),
        })
    }

    /// Adopts the program an earlier controller left attached to `interfaces` with its maps
    /// pinned under `pin_dir`; `None` when nothing is attached there. Refuses when the pinned
    /// maps' sizes or the attached interfaces differ from what the config asks (those
    /// need `lb stop --detach` and a fresh start).
    pub fn adopt(sizes: MapSizes, pin_dir: &Path, interfaces: &[String]) -> Result<Option<Self>> {
        let attached: Vec<&String> = interfaces.iter().filter(|i| link_pin(pin_dir, i).exists()).collect();
        if attached.is_empty() {
            return Ok(None);
        }
        if attached.len() != interfaces.len() {
            bail!(
                "the running program is attached to {attached:?}, the config lists {interfaces:?}: run `lb stop --detach` first"
            );
        }
        raise_memlock_limit();
        let max_entries = |name: &str| -> Result<u32> {
            let path = pin_dir.join(name);
            let map = MapData::from_pin(&path).with_context(|| format!("opening the pinned map {}", path.display()))?;
            Ok(map.info()?.max_entries())
        };
        let max_vips = max_entries(MAP_VIPS)?;
        let pinned_sizes = MapSizes {
            max_vips,
            max_backends: max_entries(MAP_BACKENDS)?,
            table_size: max_entries(MAP_MAGLEV)? / (max_vips * 2).max(1),
            flow_entries: max_entries(MAP_FLOWS)?,
            source_entries: max_entries(MAP_SOURCE_BUCKETS)?,
        };
        if pinned_sizes != sizes {
            bail!(
                "the running program's maps are sized {pinned_sizes:?}, the config asks {sizes:?}: run `lb stop --detach` first"
            );
        }
        let program = Xdp::from_pin(program_pin(pin_dir), aya_obj::programs::XdpAttachType::Interface)
            .context("opening the pinned program")?;
        let logger = program
            .info()
            .map_err(anyhow::Error::from)
            .and_then(|info| Ok(aya_log::EbpfLogger::init_from_id(info.id())?))
            .inspect_err(|e| warn!("packet-path logging unavailable: {e:#}"))
            .ok();
        for iface in interfaces {
            prepare_interface(iface)?;
        }
        Ok(Some(Self {
            ebpf: None,
            vips: open_pinned(pin_dir, MAP_VIPS, Map::HashMap)?,
            vip_addrs: open_pinned(pin_dir, MAP_VIP_ADDRS, Map::HashMap)?,
            backends: open_pinned(pin_dir, MAP_BACKENDS, Map::Array)?,
            maglev: open_pinned(pin_dir, MAP_MAGLEV, Map::Array)?,
            settings: open_pinned(pin_dir, MAP_SETTINGS, Map::Array)?,
            vip_stats: open_pinned(pin_dir, MAP_VIP_STATS, Map::PerCpuArray)?,
            backend_stats: open_pinned(pin_dir, MAP_BACKEND_STATS, Map::PerCpuArray)?,
            global_stats: open_pinned(pin_dir, MAP_GLOBAL_STATS, Map::PerCpuArray)?,
            next_hops: open_pinned(pin_dir, MAP_NEXT_HOPS, Map::PerCpuArray)?,
            flow_tables: FlowTables {
                flows: open_pinned(pin_dir, MAP_FLOWS, Map::HashMap)?,
                nat: open_pinned(pin_dir, MAP_NAT, Map::HashMap)?,
            },
            health_signals: Some(HealthSignals(open_pinned(pin_dir, MAP_HEALTH_SIGNALS, Map::RingBuf)?)),
            logger,
            pin_dir: Some(pin_dir.to_owned()),
        }))
    }

    /// What the maps hold: the VIPs, their addresses, the active backends, the settings.
    pub fn existing(&self) -> Result<Existing> {
        let mut backends = Vec::new();
        for id in 0..self.backends.len() {
            let backend = self.backends.get(&id, 0)?;
            if backend.flags & BACKEND_ACTIVE != 0 {
                backends.push((id, backend));
            }
        }
        Ok(Existing {
            settings: self.settings.get(&0, 0)?,
            vips: self.vips.iter().collect::<Result<_, _>>()?,
            vip_addrs: self.vip_addrs.iter().collect::<Result<_, _>>()?,
            backends,
        })
    }

    /// Attaches the balancer to `iface` in the configured mode (`auto` tries driver mode
    /// and falls back to generic (skb) mode with a warning), and pins the attachment, so the
    /// program stays attached and forwarding when this process ends.
    pub fn attach(&mut self, iface: &str, mode: XdpModeSetting) -> Result<()> {
        let dir = self.pin_dir.clone().context("attaching needs a pin directory")?;
        let program: &mut Xdp = self
            .ebpf
            .as_mut()
            .context("an adopted program is attached already")?
            .program_mut(PROG_LB)
            .context("program missing")?
            .try_into()?;
        let link = match mode {
            XdpModeSetting::Driver => program.attach(iface, XdpMode::Driver),
            XdpModeSetting::Skb => program.attach(iface, XdpMode::Skb),
            XdpModeSetting::Auto => program.attach(iface, XdpMode::Driver).or_else(|e| {
                warn!(iface, "driver-mode XDP failed ({e}); falling back to generic (skb) mode, which is much slower");
                program.attach(iface, XdpMode::Skb)
            }),
        }
        .with_context(|| format!("attaching XDP to {iface}"))?;
        let link = FdLink::try_from(program.take_link(link)?).context("the kernel attached XDP without a bpf_link")?;
        let path = link_pin(&dir, iface);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        prepare_interface(iface)?;
        info!(iface, ?mode, "XDP program attached");
        Ok(())
    }

    /// Detaches the program pinned under `pin_dir` from every interface and removes the
    /// pins (the maps go with the last reference). Nothing pinned there is not an error.
    pub fn detach_pinned(pin_dir: &Path) -> Result<()> {
        let entries = match std::fs::read_dir(pin_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            entries => entries.with_context(|| format!("reading {}", pin_dir.display()))?,
        };
        for entry in entries {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("link-")) {
                // Unpinned and dropped: the last reference to the link, which detaches it.
                let link = PinnedLink::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
                link.unpin().with_context(|| format!("unpinning {}", path.display()))?;
                info!(link = %path.display(), "detached");
            }
        }
        std::fs::remove_dir_all(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))
    }

    /// The reader of the program's log records, to be polled by the caller.
    pub fn take_logger(&mut self) -> Option<PacketLogger> {
        self.logger.take()
    }

    /// The reader of the program's passive health signals, to be polled by the caller.
    pub fn take_health_signals(&mut self) -> Option<HealthSignals> {
        self.health_signals.take()
    }

    /// Attaches the object's `xdp_pass` program to `iface` in driver mode and pins the
    /// attachment (see [`pass_link_pin`]), so it stays after this process ends: on veth, a
    /// frame the balancer sends with XDP_TX is only delivered if the peer has an XDP program.
    pub fn attach_pass_pinned(iface: &str) -> Result<PathBuf> {
        ensure_bpffs()?;
        let path = pass_link_pin(iface);
        anyhow::ensure!(!path.exists(), "{} exists: xdp_pass is attached to {iface} already", path.display());
        let sizes = MapSizes { max_vips: 1, max_backends: 1, table_size: 2, flow_entries: 1, source_entries: 1 };
        let mut dataplane = Self::load(sizes, None)?;
        let program = dataplane.program(PROG_PASS)?;
        let link = program.attach(iface, XdpMode::Driver).with_context(|| format!("attaching xdp_pass to {iface}"))?;
        let link = FdLink::try_from(program.take_link(link)?).context("the kernel attached XDP without a bpf_link")?;
        link.pin(&path).with_context(|| format!("pinning {}", path.display()))?;
        Ok(path)
    }

    /// Detaches what [`attach_pass_pinned`](Self::attach_pass_pinned) attached to `iface`.
    pub fn detach_pass_pinned(iface: &str) -> Result<()> {
        let path = pass_link_pin(iface);
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening {} (was `lb xdp-pass attach {iface}` run?)", path.display()))?;
        link.unpin().with_context(|| format!("unpinning {}", path.display()))?;
        Ok(())
    }

    /// A loaded XDP program of the object, for BPF_PROG_TEST_RUN and attaching baselines.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let ebpf = self.ebpf.as_mut().context("an adopted program's object is not loaded here")?;
        Ok(ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?)
    }

    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        sum_over_cpus(&self.vip_stats, vip_id)
    }

    pub fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        sum_over_cpus(&self.backend_stats, backend_id)
    }

    pub fn global_stats(&self) -> Result<GlobalStats> {
        sum_over_cpus(&self.global_stats, 0)
    }

    /// Removes the entries of connections that are over (the packet path's clock is
    /// CLOCK_MONOTONIC_COARSE) and counts the others. An entry that changed since it was
    /// read is kept: a packet came, its connection is alive.
    pub fn sweep_flows(&mut self, timeouts: &FlowTimeouts) -> Result<SweepReport> {
        let (flows, nat) = self.flow_tables.read()?;
        let found = sweep(&flows, &nat, coarse_now_ns(), timeouts);
        let mut report = SweepReport { summary: found.summary, ..Default::default() };
        let mut kept = std::collections::HashSet::new();
        for (key, seen) in &found.over_flows {
            if self.flow_tables.remove_flow_if(key, seen) {
                report.flows_removed += 1;
            } else {
                kept.insert(*key);
            }
        }
        for (key, seen) in &found.over_nat {
            // The reverse entry of a flow entry that came alive stays with it.
            if !kept.contains(&seen.client) && self.flow_tables.remove_nat_if(key, seen) {
                report.nat_removed += 1;
            }
        }
        Ok(report)
    }
}

/// What a sweep of the flow tables did and found.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub flows_removed: usize,
    pub nat_removed: usize,
    pub summary: FlowSummary,
}

/// The packet path's clock.
fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: plain syscall (vDSO) on a valid struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The counters at `index` of a per-CPU map, summed over CPUs.
fn sum_over_cpus<T: Counters + aya::Pod>(map: &PerCpuArray<MapData, T>, index: u32) -> Result<T> {
    Ok(map.get(&index, 0)?.iter().fold(T::default(), |mut total, cpu| {
        total.add(cpu);
        total
    }))
}

impl MapWriter for Dataplane {
    fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        Ok(self.settings.set(0, settings, 0)?)
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        Ok(self.backends.set(id, backend, 0)?)
    }
    fn set_maglev_slot(&mut self, index: u32, backend_id: u32) -> Result<()> {
        Ok(self.maglev.set(index, backend_id, 0)?)
    }
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        Ok(self.vips.insert(key, info, 0)?)
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        Ok(self.vips.remove(key)?)
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

/// How often a program load that the kernel interrupted (EAGAIN: a signal arrived while the
/// verifier ran) is tried again, as libbpf does.
const LOAD_ATTEMPTS: u32 = 5;

fn load_program(program: &mut Xdp) -> Result<(), aya::programs::ProgramError> {
    let mut attempt = 1;
    loop {
        match program.load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                debug!(attempt, "program load interrupted, trying again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether the bpffs at /sys/fs/bpf here is not the one the process that started lb sees:
/// `ip netns exec` (or `unshare -m`) gives its command a mount namespace with a /sys of its
/// own, where lb mounts a bpffs that ends with this process, and with it the pins, the
/// pinned attachments and so the program. (A shell started that way, which then starts
/// lb, shares lb's view: that case is not recognised.)
pub fn pins_are_private() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let here = std::fs::metadata(crate::config::BPF_FS);
    let parent =
        std::fs::metadata(format!("/proc/{}/root{}", std::os::unix::process::parent_id(), crate::config::BPF_FS));
    match (here, parent) {
        (Ok(here), Ok(parent)) => here.dev() != parent.dev(),
        // Not mounted yet, or the parent's view is not readable: nothing to tell.
        _ => false,
    }
}

/// Where `lb xdp-pass attach IFACE` pins its attachment: named after the interface and
/// the network namespace, whose interfaces may have the same names as another's.
pub fn pass_link_pin(iface: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    Path::new(crate::config::BPF_FS).join(format!("lb-xdp-pass-{netns}-{iface}"))
}

/// What a user who ran `lb run` in a private mount namespace should do instead.
pub const PRIVATE_PINS_ADVICE: &str = "the bpffs at /sys/fs/bpf is private to this process's mount namespace \
     (`ip netns exec` remounts /sys): the pins, and with them the attached program, end when lb exits; \
     enter only the network namespace instead: `nsenter --net=/run/netns/NAME lb run ...`";

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")) {
        return Ok(());
    }
    info!("mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf")?;
    let status = std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status()?;
    if !status.success() {
        bail!("mounting bpffs at /sys/fs/bpf failed ({status})");
    }
    Ok(())
}

/// What the kernel must allow on an attached interface, and why.
const INTERFACE_SETTINGS: [(&str, &str, &str); 4] = [
    ("ipv4", "forwarding", "the FIB lookup in XDP refuses interfaces that don't forward"),
    ("ipv6", "forwarding", "the FIB lookup in XDP refuses interfaces that don't forward"),
    (
        "ipv4",
        "accept_local",
        "nat packets handed to the kernel to resolve their next hop carry the balancer's own source address",
    ),
    // IPv6 forwards by the global `all.forwarding` only, unless an interface forces it
    // (Linux 6.17 and later): the host's other interfaces keep their behaviour.
    ("ipv6", "force_forwarding", "the kernel forwards IPv6 nat packets handed to it to resolve their next hop"),
];

/// Sets [`INTERFACE_SETTINGS`] on `iface`.
fn prepare_interface(iface: &str) -> Result<()> {
    for (family, setting, why) in INTERFACE_SETTINGS {
        let path = format!("/proc/sys/net/{family}/conf/{iface}/{setting}");
        match std::fs::read_to_string(&path) {
            Ok(value) if value.trim() == "1" => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && setting == "force_forwarding" => {
                if std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").is_ok_and(|v| v.trim() != "1") {
                    warn!(
                        iface,
                        "this kernel has no per-interface IPv6 force_forwarding: IPv6 nat packets whose next hop has \
                         no neighbour entry yet are dropped by the kernel unless net.ipv6.conf.all.forwarding=1"
                    );
                }
                continue;
            }
            _ => {}
        }
        std::fs::write(&path, "1").with_context(|| format!("setting {path}"))?;
        info!(iface, family, setting, "set to 1: {why}");
    }
    Ok(())
}

fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall on a valid struct. Kernels with memcg accounting ignore it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; only kernels before 5.11 need it");
    }
}
