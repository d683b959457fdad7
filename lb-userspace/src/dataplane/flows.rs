//! The flow and nat tables as the controller's sweep sees them: read whole in batches,
//! and entries removed only if they did not change since they were read.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result};
use aya::Pod;
use aya::maps::{HashMap, IterableMap, MapData};
use lb_common::{FAMILY_V4, FlowKey, FlowKeyV4, FlowState, FlowTimeouts, NatState};

use crate::api::flows::FlowSnapshot;
use crate::flows::{FlowSummary, sweep};

/// `BPF_MAP_LOOKUP_BATCH` (linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per batch; a hash bucket never holds more.
const BATCH: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of a hash map, a batch per syscall (aya reads entries one at a time, two
/// syscalls each, which is slow for a table of a million flows).
pub fn dump<K: Pod, V: Pod>(map: &MapData) -> Result<Vec<(K, V)>> {
    let mut entries = Vec::new();
    let (mut keys, mut values) = (vec![K::zeroed(); BATCH], vec![V::zeroed(); BATCH]);
    // The hash map's batch token: a bucket index.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &token_in as *const u64 as u64 },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the attr points at buffers of `count` keys and values, alive for the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>())
        };
        let error = (rc < 0).then(std::io::Error::last_os_error);
        let n = attr.count as usize;
        entries.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match error {
            None => {}
            // The end of the map (with the last entries in this batch).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Some(e) => return Err(e).context("reading a map in batches (BPF_MAP_LOOKUP_BATCH)"),
        }
        token_in = token_out;
        first = false;
    }
}

trait Zeroed {
    fn zeroed() -> Self;
}

impl<T: Pod> Zeroed for T {
    fn zeroed() -> Self {
        // SAFETY: `Pod` types are plain integers, for which zero is valid.
        unsafe { std::mem::zeroed() }
    }
}

/// A table's entries, as read.
pub type Entries<V> = Vec<(FlowKey, V)>;

/// The flow table (a map per family) and the nat table. Above this module every flow is
/// keyed as a `FlowKey`; IPv4 keys are converted on the way in and out.
pub struct FlowTables {
    pub flows_v4: HashMap<MapData, FlowKeyV4, FlowState>,
    pub flows_v6: HashMap<MapData, FlowKey, FlowState>,
    pub nat: HashMap<MapData, FlowKey, NatState>,
}

impl FlowTables {
    /// Every flow entry (IPv4's first) and every reverse entry.
    pub fn read(&self) -> Result<(Entries<FlowState>, Entries<NatState>)> {
        let mut flows: Entries<FlowState> = dump::<FlowKeyV4, FlowState>(self.flows_v4.map())?
            .into_iter()
            .map(|(key, state)| (key.to_flow_key(), state))
            .collect();
        flows.extend(dump(self.flows_v6.map())?);
        Ok((flows, dump(self.nat.map())?))
    }

    /// Removes the flow entry `key` if it still holds `seen` (a packet since the sweep read
    /// it means its connection is alive after all). Returns whether it was removed.
    pub fn remove_flow_if(&mut self, key: &FlowKey, seen: &FlowState) -> bool {
        if key.family == FAMILY_V4 {
            remove_if(&mut self.flows_v4, &FlowKeyV4::of(key), seen)
        } else {
            remove_if(&mut self.flows_v6, key, seen)
        }
    }

    /// Likewise for the reverse entry `key`.
    pub fn remove_nat_if(&mut self, key: &FlowKey, seen: &NatState) -> bool {
        remove_if(&mut self.nat, key, seen)
    }
}

fn remove_if<K: Pod, V: Pod + PartialEq>(map: &mut HashMap<MapData, K, V>, key: &K, seen: &V) -> bool {
    matches!(map.get(key, 0), Ok(now) if now == *seen) && map.remove(key).is_ok()
}

impl super::Dataplane {
    /// Both tables as they are now, for `lb flows`.
    pub fn read_flows(&self) -> Result<FlowSnapshot> {
        let (flows, nat) = self.flow_tables.read()?;
        Ok(FlowSnapshot { flows, nat, now_ns: coarse_now_ns() })
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
