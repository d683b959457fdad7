//! The only module that talks to the kernel's BPF interfaces (through aya): loads the XDP
//! object with map sizes from the config, pins the maps, attaches the program, writes the
//! maps for the sync step and reads the counters.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::*;
use tracing::{debug, info, warn};

use crate::config::{BalancerConfig, XdpModeSetting};
use crate::sync::MapWriter;

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

/// The loaded program and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    vips: HashMap<MapData, VipKey, VipInfo>,
    vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    settings: Array<MapData, Settings>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    global_stats: PerCpuArray<MapData, GlobalStats>,
    logger: Option<PacketLogger>,
    health_signals: Option<HealthSignals>,
    pin_dir: Option<PathBuf>,
    links: Vec<(String, XdpLinkId)>,
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
        let logger = aya_log::EbpfLogger::init(&mut ebpf)
            .inspect_err(|e| warn!("packet-path logging unavailable: {e}"))
            .ok();
        for name in [PROG_LB, PROG_PASS, PROG_DROP, PROG_MAC_SWAP] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            program.load().with_context(|| format!("verifier rejected {name}"))?;
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
            health_signals: Some(HealthSignals(take(&mut ebpf, MAP_HEALTH_SIGNALS)?)),
            ebpf,
            logger,
            pin_dir: pin_dir.map(Path::to_owned),
            links: Vec::new(),
        })
    }

    /// Attaches the balancer to `iface` in the configured mode; `auto` tries driver mode and
    /// falls back to generic (skb) mode with a warning.
    pub fn attach(&mut self, iface: &str, mode: XdpModeSetting) -> Result<()> {
        let program: &mut Xdp = self.ebpf.program_mut(PROG_LB).context("program missing")?.try_into()?;
        let link = match mode {
            XdpModeSetting::Driver => program.attach(iface, XdpMode::Driver),
            XdpModeSetting::Skb => program.attach(iface, XdpMode::Skb),
            XdpModeSetting::Auto => program.attach(iface, XdpMode::Driver).or_else(|e| {
                warn!(iface, "driver-mode XDP failed ({e}); falling back to generic (skb) mode, which is much slower");
                program.attach(iface, XdpMode::Skb)
            }),
        }
        .with_context(|| format!("attaching XDP to {iface}"))?;
        enable_forwarding(iface)?;
        info!(iface, ?mode, "XDP program attached");
        self.links.push((iface.to_owned(), link));
        Ok(())
    }

    /// Detaches from every interface and removes the pins.
    pub fn shutdown(mut self) -> Result<()> {
        let program: &mut Xdp = self.ebpf.program_mut(PROG_LB).context("program missing")?.try_into()?;
        for (iface, link) in self.links.drain(..) {
            if let Err(e) = program.detach(link) {
                warn!(iface, "detaching: {e}");
            }
        }
        if let Some(dir) = &self.pin_dir {
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", dir.display()));
                }
                _ => {}
            }
        }
        Ok(())
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
        Ok(self.ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?)
    }

    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        let per_cpu = self.vip_stats.get(&vip_id, 0)?;
        Ok(per_cpu.iter().fold(VipStats::default(), |a, s| VipStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            reply_packets: a.reply_packets + s.reply_packets,
            reply_bytes: a.reply_bytes + s.reply_bytes,
            icmp_errors_forwarded: a.icmp_errors_forwarded + s.icmp_errors_forwarded,
            drop_no_backend: a.drop_no_backend + s.drop_no_backend,
            drop_no_route: a.drop_no_route + s.drop_no_route,
            drop_nat_ports_exhausted: a.drop_nat_ports_exhausted + s.drop_nat_ports_exhausted,
            rate_limited_new_flows: a.rate_limited_new_flows + s.rate_limited_new_flows,
            rate_limited_sources: a.rate_limited_sources + s.rate_limited_sources,
            rate_limited_packets: a.rate_limited_packets + s.rate_limited_packets,
        }))
    }

    pub fn backend_stats(&self, backend_id: u32) -> Result<BackendStats> {
        let per_cpu = self.backend_stats.get(&backend_id, 0)?;
        Ok(per_cpu.iter().fold(BackendStats::default(), |a, s| BackendStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
            reply_packets: a.reply_packets + s.reply_packets,
            reply_bytes: a.reply_bytes + s.reply_bytes,
            connect_failures: a.connect_failures + s.connect_failures,
            responses_5xx: a.responses_5xx + s.responses_5xx,
        }))
    }

    pub fn global_stats(&self) -> Result<GlobalStats> {
        let per_cpu = self.global_stats.get(&0, 0)?;
        Ok(per_cpu.iter().fold(GlobalStats::default(), |a, s| GlobalStats {
            passed: a.passed + s.passed,
            drop_malformed: a.drop_malformed + s.drop_malformed,
            drop_fragment: a.drop_fragment + s.drop_fragment,
            drop_ip_options: a.drop_ip_options + s.drop_ip_options,
            drop_unknown_vip_port: a.drop_unknown_vip_port + s.drop_unknown_vip_port,
            drop_icmp_unmatched: a.drop_icmp_unmatched + s.drop_icmp_unmatched,
            drop_internal: a.drop_internal + s.drop_internal,
            health_signals_lost: a.health_signals_lost + s.health_signals_lost,
        }))
    }
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
}

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

/// The kernel's FIB lookup from XDP refuses interfaces that don't forward.
fn enable_forwarding(iface: &str) -> Result<()> {
    for family in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
        if std::fs::read_to_string(&path).map(|v| v.trim() == "1").unwrap_or(false) {
            continue;
        }
        std::fs::write(&path, "1").with_context(|| format!("enabling forwarding: {path}"))?;
        info!(iface, family, "enabled forwarding (needed by the FIB lookup in XDP)");
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
