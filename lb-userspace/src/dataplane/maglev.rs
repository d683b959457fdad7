//! The `MAGLEV` array's slots, written through a memory mapping of the map (it is created
//! `BPF_F_MMAPABLE`): a table of 65537 slots is compared and written with plain loads and
//! stores, where one `BPF_MAP_UPDATE_ELEM` per slot took about a microsecond each. A map
//! pinned by an older program (without the flag) is written one syscall per slot.
//!
//! Only the pages of the table being written are mapped, and only while it is written, so
//! the map's memory (gigabytes for a thousand VIPs) never counts as the controller's.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result};
use aya::maps::{Array, Map, MapData};
use lb_common::MAGLEV_MAP_FLAGS;

pub(super) struct MaglevSlots {
    map: Map,
    /// Bytes from one slot to the next in the mapping (the kernel rounds array values up
    /// to 8 bytes); `None` when the map cannot be mapped.
    stride: Option<usize>,
}

impl MaglevSlots {
    pub(super) fn new(map: Map) -> Result<Self> {
        let Map::Array(data) = &map else { anyhow::bail!("MAGLEV is not an array") };
        let info = data.info()?;
        let mmapable = info.map_flags() as usize & MAGLEV_MAP_FLAGS == MAGLEV_MAP_FLAGS;
        let stride = mmapable.then(|| (info.value_size() as usize).next_multiple_of(8));
        Ok(Self { map, stride })
    }

    /// Makes the slots from `offset` hold `table`, writing only those that differ.
    pub(super) fn write(&mut self, offset: u32, table: &[u32]) -> Result<usize> {
        if table.is_empty() {
            return Ok(0);
        }
        match self.stride {
            Some(stride) => {
                let window = Window::map(self.data(), offset as usize * stride, table.len() * stride)?;
                let mut written = 0;
                for (i, &id) in table.iter().enumerate() {
                    let slot = window.slot(i * stride);
                    if slot.load(Ordering::Relaxed) != id {
                        slot.store(id, Ordering::Relaxed);
                        written += 1;
                    }
                }
                Ok(written)
            }
            None => self.write_each(offset, table),
        }
    }

    /// One lookup, and an update where it differs, per slot.
    fn write_each(&mut self, offset: u32, table: &[u32]) -> Result<usize> {
        let mut slots = Array::<_, u32>::try_from(&mut self.map)?;
        let mut written = 0;
        for (index, &id) in (offset..).zip(table) {
            if slots.get(&index, 0)? != id {
                slots.set(index, id, 0)?;
                written += 1;
            }
        }
        Ok(written)
    }

    fn data(&self) -> &MapData {
        match &self.map {
            Map::Array(data) => data,
            _ => unreachable!("checked in new"),
        }
    }
}

/// A shared, writable mapping of the map's bytes `[start, start + len)`, widened to pages;
/// unmapped on drop.
struct Window {
    base: NonNull<libc::c_void>,
    len: usize,
    /// Where `start` is from `base`.
    skew: usize,
}

impl Window {
    fn map(data: &MapData, start: usize, len: usize) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let first = start / page * page;
        let mapped = (start + len).next_multiple_of(page) - first;
        // SAFETY: a new mapping chosen by the kernel, of a BPF map's fd: no Rust object
        // lives there. The kernel refuses a range beyond the map.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                first as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping MAGLEV's slots");
        }
        let base = NonNull::new(base).context("mmap returned null")?;
        Ok(Self { base, len: mapped, skew: start - first })
    }

    /// The u32 slot `at` bytes from the window's start. The XDP program reads slots
    /// concurrently: atomics, never references to plain integers.
    fn slot(&self, at: usize) -> &AtomicU32 {
        assert!(self.skew + at + 4 <= self.len, "slot outside the window");
        // SAFETY: inside the mapping (checked), 4-aligned (page-aligned base, 8-byte
        // strides), valid while `self` is.
        unsafe { &*self.base.as_ptr().cast::<u8>().add(self.skew + at).cast::<AtomicU32>() }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no reference outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr(), self.len) };
    }
}
