//! Packet capture's maps: the switch and filters (`CAPTURE`) and the ring of captured frames
//! (`CAPTURE_RING`), opened from the running balancer's pins or from a loaded object.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use super::*;

/// Why packet capture could not start, read its records or stop.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("opening the pinned map {} (is `lb run` running with this pin_dir?)", path.display())]
    Open { path: PathBuf, source: aya::maps::MapError },
    #[error("the pinned map {0} is not what this build of lb expects")]
    MapType(&'static str),
    #[error("map {0} missing from the object")]
    Missing(&'static str),
    #[error("switching capture {what}")]
    Switch { what: &'static str, source: aya::maps::MapError },
    #[error("reading {map}")]
    Read { map: &'static str, source: aya::maps::MapError },
}

/// The capture switch and the ring of its records.
pub struct PacketCapture {
    switch: Array<MapData, CaptureConfig>,
    ring: RingBuf<MapData>,
}

fn pinned(dir: &Path, name: &'static str) -> Result<MapData, CaptureError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|source| CaptureError::Open { path, source })
}

impl PacketCapture {
    /// The capture maps of the balancer whose maps are pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self, CaptureError> {
        Self::from_maps(Map::Array(pinned(dir, MAP_CAPTURE)?), Map::RingBuf(pinned(dir, MAP_CAPTURE_RING)?))
    }

    fn from_maps(switch: Map, ring: Map) -> Result<Self, CaptureError> {
        Ok(Self {
            switch: switch.try_into().map_err(|_| CaptureError::MapType(MAP_CAPTURE))?,
            ring: ring.try_into().map_err(|_| CaptureError::MapType(MAP_CAPTURE_RING))?,
        })
    }

    /// Switches capture on with `filter` (its `CAPTURE_BY_*` bits and values).
    pub fn start(&mut self, filter: CaptureConfig) -> Result<(), CaptureError> {
        let config = CaptureConfig { flags: filter.flags | CAPTURE_ON, ..filter };
        self.switch.set(0, config, 0).map_err(|source| CaptureError::Switch { what: "on", source })
    }

    /// Switches capture off; records already in the ring can still be read.
    pub fn stop(&mut self) -> Result<(), CaptureError> {
        self.switch.set(0, CaptureConfig::default(), 0).map_err(|source| CaptureError::Switch { what: "off", source })
    }

    /// Whether capture is on (an earlier `lb capture` may have been killed before it ended).
    pub fn is_on(&self) -> Result<bool, CaptureError> {
        let config = self.switch.get(&0, 0).map_err(|source| CaptureError::Read { map: MAP_CAPTURE, source })?;
        Ok(config.flags & CAPTURE_ON != 0)
    }

    /// The next record in the ring, if there is one.
    pub fn next_record(&mut self) -> Option<CaptureRecord> {
        let item = self.ring.next()?;
        (item.len() >= std::mem::size_of::<CaptureRecord>()).then(|| {
            // SAFETY: the program writes whole `CaptureRecord`s (plain integers and bytes);
            // the read is unaligned-safe.
            unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<CaptureRecord>()) }
        })
    }
}

impl AsFd for PacketCapture {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for PacketCapture {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// The ids the running balancer gave its VIPs and active backends, read from its pins.
#[derive(Debug, Default)]
pub struct PinnedIds {
    pub vips: Vec<(VipKey, u32)>,
    pub backends: Vec<(u32, Backend)>,
}

pub fn pinned_ids(dir: &Path) -> Result<PinnedIds, CaptureError> {
    let vips: HashMap<MapData, VipKey, u32> =
        Map::HashMap(pinned(dir, MAP_VIPS)?).try_into().map_err(|_| CaptureError::MapType(MAP_VIPS))?;
    let backends: Array<MapData, Backend> =
        Map::Array(pinned(dir, MAP_BACKENDS)?).try_into().map_err(|_| CaptureError::MapType(MAP_BACKENDS))?;
    let read = |map| move |source| CaptureError::Read { map, source };
    let mut ids = PinnedIds::default();
    for entry in vips.iter() {
        ids.vips.push(entry.map_err(read(MAP_VIPS))?);
    }
    for id in 0..backends.len() {
        let backend = backends.get(&id, 0).map_err(read(MAP_BACKENDS))?;
        if backend.flags & BACKEND_ACTIVE != 0 {
            ids.backends.push((id, backend));
        }
    }
    Ok(ids)
}

/// Records lost to a full ring so far (`capture_records_lost`, summed over CPUs), read
/// from the pins under `dir`.
pub fn pinned_records_lost(dir: &Path) -> Result<u64, CaptureError> {
    let stats: PerCpuArray<MapData, GlobalStats> = Map::PerCpuArray(pinned(dir, MAP_GLOBAL_STATS)?)
        .try_into()
        .map_err(|_| CaptureError::MapType(MAP_GLOBAL_STATS))?;
    let per_cpu = stats.get(&0, 0).map_err(|source| CaptureError::Read { map: MAP_GLOBAL_STATS, source })?;
    Ok(per_cpu.iter().map(|cpu| cpu.capture_records_lost).sum())
}

/// Switches off a capture that an `lb capture` left on (it was killed before it could):
/// a controller that starts or adopts the program owns the packet path's cost again.
pub(super) fn switch_off_stale(dir: &Path) {
    match PacketCapture::open_pinned(dir).and_then(|c| Ok((c.is_on()?, c))) {
        Ok((true, mut capture)) => match capture.stop() {
            Ok(()) => warn!("a packet capture was left on; switched it off"),
            Err(e) => warn!("a packet capture was left on and could not be switched off: {:#}", anyhow::Error::from(e)),
        },
        Ok((false, _)) => {}
        Err(e) => warn!("packet capture's maps: {:#}", anyhow::Error::from(e)),
    }
}

impl Dataplane {
    /// The capture maps of the object this controller loaded (for tests and benchmarks:
    /// `lb capture` opens the pins instead).
    pub fn take_packet_capture(&mut self) -> Result<PacketCapture, CaptureError> {
        let ebpf = self.ebpf.as_mut().ok_or(CaptureError::Missing(MAP_CAPTURE))?;
        let switch = ebpf.take_map(MAP_CAPTURE).ok_or(CaptureError::Missing(MAP_CAPTURE))?;
        let ring = ebpf.take_map(MAP_CAPTURE_RING).ok_or(CaptureError::Missing(MAP_CAPTURE_RING))?;
        PacketCapture::from_maps(switch, ring)
    }
}
