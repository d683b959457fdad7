//! The only module that talks to the kernel's BPF interfaces (through aya): loads the XDP
//! object with map sizes from the config, pins the maps, attaches the program, writes the
//! maps for the sync step and reads the counters, and opens packet capture's maps.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{SchedClassifier, Xdp, XdpMode, links::FdLink, links::PinnedLink},
};
use lb_common::*;
use tracing::{debug, info, warn};

mod capture;
mod check_tunnel;
mod counters;
mod decap;
mod flows;
mod host;
mod maglev;
mod signals;
mod writer;

pub use capture::{CaptureError, PacketCapture, PinnedIds, pinned_ids, pinned_records_lost};
pub use decap::{DecapConfig, MAX_DECAP_ADDRS, decap_link_pin, host_addresses};
pub use flows::SweepReport;
pub use host::{PRIVATE_PINS_ADVICE, ensure_bpffs, pass_link_pin, pins_are_private};
use host::{prepare_interface, raise_memlock_limit};
pub use signals::HealthSignals;

use crate::config::{BalancerConfig, XdpModeSetting};
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
    /// The smallest maps, for an object loaded only for one of its small programs.
    pub const SMALLEST: Self = Self { max_vips: 1, max_backends: 1, table_size: 2, flow_entries: 1, source_entries: 1 };

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

/// The program and its maps: loaded by this controller, or adopted from an earlier one
/// whose program is still attached (the maps, the program and the attachments are pinned).
pub struct Dataplane {
    /// The object, when this controller loaded it.
    ebpf: Option<Ebpf>,
    /// VIP ids by key, and each id's `VipEntry`: written together by `set_vip`.
    vips: HashMap<MapData, VipKey, u32>,
    vip_entries: Array<MapData, VipEntry>,
    vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    backends: Array<MapData, Backend>,
    maglev: maglev::MaglevSlots,
    settings: Array<MapData, Settings>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    global_stats: PerCpuArray<MapData, GlobalStats>,
    next_hops: PerCpuArray<MapData, NextHop>,
    flow_tables: FlowTables,
    logger: Option<PacketLogger>,
    health_signals: Option<HealthSignals>,
    pin_dir: Option<PathBuf>,
    /// The `lb-check` device and its program, while any check goes through a tunnel.
    check_tunnels: Option<check_tunnel::CheckTunnels>,
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
        let mut ebpf = load_object(sizes)?;
        if let Some(dir) = pin_dir {
            ensure_bpffs()?;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, map) in ebpf.maps() {
                // Internal maps: aya-log's ring buffer and the frozen .rodata/.bss; and
                // CHECK_TUNNELS, which `check_tunnel`'s object of its own holds.
                if name.starts_with("AYA_") || name.starts_with('.') || name == MAP_CHECK_TUNNELS {
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
        for name in PROGRAMS {
            let program: &mut Xdp =
                ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?;
            load_program(|| program.load()).with_context(|| format!("verifier rejected {name}"))?;
        }
        let checks: &mut SchedClassifier =
            ebpf.program_mut(PROG_CHECK_TUNNEL).context("program tc_check_tunnel missing")?.try_into()?;
        load_program(|| checks.load()).context("verifier rejected tc_check_tunnel")?;
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
            vip_entries: take(&mut ebpf, MAP_VIP_ENTRIES)?,
            vip_addrs: take(&mut ebpf, MAP_VIP_ADDRS)?,
            backends: take(&mut ebpf, MAP_BACKENDS)?,
            maglev: maglev::MaglevSlots::new(ebpf.take_map(MAP_MAGLEV).context("map MAGLEV missing from the object")?)?,
            settings: take(&mut ebpf, MAP_SETTINGS)?,
            vip_stats: take(&mut ebpf, MAP_VIP_STATS)?,
            backend_stats: take(&mut ebpf, MAP_BACKEND_STATS)?,
            global_stats: take(&mut ebpf, MAP_GLOBAL_STATS)?,
            next_hops: take(&mut ebpf, MAP_NEXT_HOPS)?,
            flow_tables: FlowTables {
                flows_v4: take(&mut ebpf, MAP_FLOWS_V4)?,
                flows_v6: take(&mut ebpf, MAP_FLOWS_V6)?,
                nat: take(&mut ebpf, MAP_NAT)?,
            },
            health_signals: Some(HealthSignals(take(&mut ebpf, MAP_HEALTH_SIGNALS)?)),
            ebpf: Some(ebpf),
            logger,
            pin_dir: pin_dir.map(Path::to_owned),
            check_tunnels: None,
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
            // A program of an lb version whose maps were laid out otherwise has other pins.
            let map = MapData::from_pin(&path).with_context(|| {
                format!(
                    "opening the pinned map {} (the running program may be another lb version's: run `lb stop --detach` first)",
                    path.display()
                )
            })?;
            Ok(map.info()?.max_entries())
        };
        let max_vips = max_entries(MAP_VIPS)?;
        let pinned_sizes = MapSizes {
            max_vips,
            max_backends: max_entries(MAP_BACKENDS)?,
            table_size: max_entries(MAP_MAGLEV)? / (max_vips * 2).max(1),
            flow_entries: max_entries(MAP_FLOWS_V4)?,
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
        capture::switch_off_stale(pin_dir);
        Ok(Some(Self {
            ebpf: None,
            vips: open_pinned(pin_dir, MAP_VIPS, Map::HashMap)?,
            vip_entries: open_pinned(pin_dir, MAP_VIP_ENTRIES, Map::Array)?,
            vip_addrs: open_pinned(pin_dir, MAP_VIP_ADDRS, Map::HashMap)?,
            backends: open_pinned(pin_dir, MAP_BACKENDS, Map::Array)?,
            maglev: maglev::MaglevSlots::new(Map::Array(MapData::from_pin(pin_dir.join(MAP_MAGLEV))?))?,
            settings: open_pinned(pin_dir, MAP_SETTINGS, Map::Array)?,
            vip_stats: open_pinned(pin_dir, MAP_VIP_STATS, Map::PerCpuArray)?,
            backend_stats: open_pinned(pin_dir, MAP_BACKEND_STATS, Map::PerCpuArray)?,
            global_stats: open_pinned(pin_dir, MAP_GLOBAL_STATS, Map::PerCpuArray)?,
            next_hops: open_pinned(pin_dir, MAP_NEXT_HOPS, Map::PerCpuArray)?,
            flow_tables: FlowTables {
                flows_v4: open_pinned(pin_dir, MAP_FLOWS_V4, Map::HashMap)?,
                flows_v6: open_pinned(pin_dir, MAP_FLOWS_V6, Map::HashMap)?,
                nat: open_pinned(pin_dir, MAP_NAT, Map::HashMap)?,
            },
            health_signals: Some(HealthSignals(open_pinned(pin_dir, MAP_HEALTH_SIGNALS, Map::RingBuf)?)),
            logger,
            pin_dir: Some(pin_dir.to_owned()),
            check_tunnels: None,
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
        let mut vips = Vec::new();
        for entry in self.vips.iter() {
            let (key, id) = entry?;
            vips.push((key, self.vip_entries.get(&id, 0)?.info));
        }
        Ok(Existing {
            settings: self.settings.get(&0, 0)?,
            vips,
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
        let link = attach_link(program, iface, mode)?;
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

    /// A loaded XDP program of the object, for BPF_PROG_TEST_RUN and attaching baselines.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let ebpf = self.ebpf.as_mut().context("an adopted program's object is not loaded here")?;
        Ok(ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?)
    }
}

/// The object with its maps created at `sizes`; no program loaded yet.
fn load_object(sizes: MapSizes) -> Result<Ebpf> {
    let maglev_slots = sizes
        .max_vips
        .checked_mul(2)
        .and_then(|n| n.checked_mul(sizes.table_size))
        .context("max_vips * 2 * maglev_table_size overflows")?;
    EbpfLoader::new()
        .map_max_entries(MAP_VIPS, sizes.max_vips)
        .map_max_entries(MAP_VIP_ENTRIES, sizes.max_vips)
        .map_max_entries(MAP_VIP_ADDRS, sizes.max_vips)
        .map_max_entries(MAP_VIP_STATS, sizes.max_vips)
        .map_max_entries(MAP_BACKENDS, sizes.max_backends)
        .map_max_entries(MAP_BACKEND_STATS, sizes.max_backends)
        .map_max_entries(MAP_NEXT_HOPS, sizes.max_backends)
        .map_max_entries(MAP_NAT_PORT_CURSORS, sizes.max_backends)
        .map_max_entries(MAP_MAGLEV, maglev_slots)
        .map_max_entries(MAP_FLOWS_V4, sizes.flow_entries)
        .map_max_entries(MAP_FLOWS_V6, sizes.flow_entries)
        .map_max_entries(MAP_NAT, sizes.flow_entries)
        .map_max_entries(MAP_RATE_STATE, sizes.max_vips)
        .map_max_entries(MAP_RATE_CPU_TOKENS, sizes.max_vips)
        .map_max_entries(MAP_SOURCE_BUCKETS, sizes.source_entries)
        .load(crate::EBPF_OBJECT)
        .context("loading the XDP object")
}

/// Attaches `program` to `iface` in `mode` (`auto`: driver mode, falling back to generic
/// (skb) mode with a warning); its attachment as a bpf_link, to be pinned.
fn attach_link(program: &mut Xdp, iface: &str, mode: XdpModeSetting) -> Result<FdLink> {
    let link = match mode {
        XdpModeSetting::Driver => program.attach(iface, XdpMode::Driver),
        XdpModeSetting::Skb => program.attach(iface, XdpMode::Skb),
        XdpModeSetting::Auto => program.attach(iface, XdpMode::Driver).or_else(|e| {
            warn!(iface, "driver-mode XDP failed ({e}); falling back to generic (skb) mode, which is much slower");
            program.attach(iface, XdpMode::Skb)
        }),
    }
    .with_context(|| format!("attaching XDP to {iface}"))?;
    FdLink::try_from(program.take_link(link)?).context("the kernel attached XDP without a bpf_link")
}

/// How often a program load that the kernel interrupted (EAGAIN: a signal arrived while the
/// verifier ran) is tried again, as libbpf does.
const LOAD_ATTEMPTS: u32 = 5;

fn load_program(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut attempt = 1;
    loop {
        match load() {
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
