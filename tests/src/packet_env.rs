//! A place to run the XDP program on single packets through BPF_PROG_TEST_RUN, with the
//! maps written from a real config and a kernel FIB the program can query: a network
//! namespace with one veth (the "wire" of the balancer), its addresses, and permanent
//! neighbour entries with known MAC addresses, so forwarded packets are predictable.
//!
//! The calling thread enters the namespace for the life of the `PacketEnv` (BPF_PROG_TEST_RUN
//! resolves `ingress_ifindex` and the FIB in the caller's namespace) and leaves it on drop.

use std::fs::File;
use std::os::fd::AsFd;

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::{Array, HashMap};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use lb_common::*;
use lb_userspace::config;
use lb_userspace::dataplane::{Dataplane, MapSizes};
use lb_userspace::plan::{IdAllocator, desired};
use lb_userspace::sync::{Applied, MapWriter};
use nix::sched::{CloneFlags, setns};

use crate::lab::{Netns, require_root, run_cmd, unique_prefix};

/// The balancer's interface inside the environment.
pub const IFACE: &str = "fx0";
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Every neighbour (client, router, backends) has a MAC derived from its last address byte.
pub fn neighbour_mac(last_byte: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, last_byte]
}

pub struct PacketEnv {
    pub dataplane: Dataplane,
    pub ifindex: u32,
    ids: IdAllocator,
    applied: Applied,
    /// Another build of the object, loaded by [`Self::load_other_build`].
    other: Option<Ebpf>,
    home: File,
    _ns: Netns,
}

/// Which of the environment's objects a run goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// The object `lb` embeds (this tree's).
    Current,
    /// The one loaded by [`PacketEnv::load_other_build`].
    Other,
}

/// The veth peer of [`IFACE`] in the environment.
pub const PEER: &str = "fx1";

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it for its context.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl PacketEnv {
    /// Builds the namespace with `neighbours` (IPv4 and IPv6 addresses on the wire, each
    /// with a permanent MAC from [`neighbour_mac`] of its last byte), loads the program,
    /// and writes the tables of `config_toml`.
    pub fn new(tag: &str, config_toml: &str, neighbours: &[&str]) -> Result<Self> {
        require_root();
        let ns = Netns::new(&unique_prefix(tag))?;
        ns.ip(&["link", "add", IFACE, "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", PEER])?;
        for link in [IFACE, PEER, "lo"] {
            ns.ip(&["link", "set", link, "up"])?;
        }
        ns.ip(&["addr", "add", "10.0.0.1/16", "dev", IFACE])?;
        ns.ip(&["addr", "add", "fd00::1/64", "dev", IFACE, "nodad"])?;
        for addr in neighbours {
            let ip: std::net::IpAddr = addr.parse().with_context(|| format!("neighbour {addr}"))?;
            let last = match ip {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(v6) => v6.octets()[15],
            };
            let mac = neighbour_mac(last).map(|b| format!("{b:02x}")).join(":");
            ns.ip(&["neigh", "replace", addr, "lladdr", &mac, "dev", IFACE, "nud", "permanent"])?;
        }
        for family in ["ipv4", "ipv6"] {
            run_cmd(
                "ip",
                &["netns", "exec", ns.name(), "sysctl", "-qw", &format!("net.{family}.conf.{IFACE}.forwarding=1")],
            )?;
        }
        let config = parse_config(config_toml)?;
        let dataplane = Dataplane::load(MapSizes::from_config(&config.balancer), None)?;
        let ids = IdAllocator::new(config.balancer.max_vips, config.balancer.max_backends);

        let home = File::open("/proc/thread-self/ns/net").context("opening this thread's netns")?;
        let target = File::open(format!("/run/netns/{}", ns.name())).context("opening the fixture netns")?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).context("entering the fixture netns")?;
        let ifindex = nix::net::if_::if_nametoindex(IFACE).context("fixture interface index")?;
        let mut env = Self { dataplane, ifindex, ids, applied: Applied::default(), other: None, home, _ns: ns };
        env.reconfigure(config_toml)?;
        Ok(env)
    }

    /// Writes the tables of `config_toml` as a reload would: only the differences.
    pub fn reconfigure(&mut self, config_toml: &str) -> Result<()> {
        let config = parse_config(config_toml)?;
        self.applied.sync(&desired(&config, &mut self.ids), &mut self.dataplane)?;
        Ok(())
    }

    /// Runs `program` once on `input`, arriving on the environment's interface.
    /// Returns the verdict and the packet as the program left it.
    pub fn run(&mut self, program: &str, input: &[u8]) -> Result<(u32, Vec<u8>)> {
        let (verdict, output, _) = self.run_timed(program, input, 1)?;
        Ok((verdict, output))
    }

    /// Like [`Self::run`], `repeat` times in the kernel; also returns the kernel's mean time
    /// per run. With `repeat > 1` the kernel reuses the buffer, so a program that rewrites
    /// the packet sees its own output from the second run on.
    pub fn run_timed(
        &mut self,
        program: &str,
        input: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        self.run_timed_in(Build::Current, program, input, repeat)
    }

    /// Like [`Self::run_timed`], on `build`'s `program`.
    pub fn run_timed_in(
        &mut self,
        build: Build,
        program: &str,
        input: &[u8],
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        let ctx = xdp_context(input.len(), self.ifindex);
        let mut output = vec![0u8; input.len() + 256];
        let program: &Xdp = match build {
            Build::Current => self.dataplane.program(program)?,
            Build::Other => self
                .other
                .as_ref()
                .context("no other build loaded")?
                .program(program)
                .with_context(|| format!("program {program} missing from the other build"))?
                .try_into()?,
        };
        let result = program.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })?;
        output.truncate(result.data_size_out as usize);
        Ok((result.return_value, output, result.duration))
    }

    /// Runs `tc_check_tunnel` once on `input` as the egress of the environment's interface
    /// would from a socket marked `mark`: the verdict and the packet as the program left it.
    pub fn run_check_tunnel(&mut self, input: &[u8], mark: u32) -> Result<(u32, Vec<u8>)> {
        // The head of `struct __sk_buff`, up to `ifindex` (the kernel zeroes the rest).
        let mut ctx = [0u8; 44];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        ctx[40..44].copy_from_slice(&self.ifindex.to_ne_bytes());
        let mut output = vec![0u8; input.len() + 256];
        let result = self.dataplane.check_tunnel_program()?.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..TestRunOptions::new()
        })?;
        output.truncate(result.data_size_out as usize);
        Ok((result.return_value, output))
    }
}

/// The maps sized at load time, as `Dataplane::load` sizes them.
fn map_sizes(sizes: &MapSizes) -> [(&'static str, u32); 16] {
    [
        (MAP_VIPS, sizes.max_vips),
        (MAP_VIP_ENTRIES, sizes.max_vips),
        (MAP_VIP_ADDRS, sizes.max_vips),
        (MAP_VIP_STATS, sizes.max_vips),
        (MAP_BACKENDS, sizes.max_backends),
        (MAP_BACKEND_STATS, sizes.max_backends),
        (MAP_NEXT_HOPS, sizes.max_backends),
        (MAP_NAT_PORT_CURSORS, sizes.max_backends),
        (MAP_MAGLEV, sizes.max_vips * 2 * sizes.table_size),
        (MAP_FLOWS_V4, sizes.flow_entries),
        (MAP_FLOWS_V6, sizes.flow_entries),
        // An older object's single flow table.
        ("FLOWS", sizes.flow_entries),
        (MAP_NAT, sizes.flow_entries),
        (MAP_RATE_STATE, sizes.max_vips),
        (MAP_RATE_CPU_TOKENS, sizes.max_vips),
        (MAP_SOURCE_BUCKETS, sizes.source_entries),
    ]
}

impl PacketEnv {
    /// Loads `object`, another build of the XDP program (an older revision's, say), beside
    /// the environment's, with the tables of `config_toml` written as today's controller
    /// writes them; runs reach it through [`Build::Other`]. Its maps may be of an older
    /// shape: a `SETTINGS` value that ends before `timeouts` (the flow timeouts came later)
    /// or before `gue_port` is written without what it lacks. Maps the object lacks are not
    /// sized, programs it lacks not loaded.
    pub fn load_other_build(&mut self, object: &[u8], config_toml: &str) -> Result<()> {
        let config = parse_config(config_toml)?;
        let sizes = MapSizes::from_config(&config.balancer);
        let mut loader = EbpfLoader::new();
        for (name, size) in map_sizes(&sizes) {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader.load(object).context("loading the other build's object")?;
        // Programs that came after it (`xdp_gen_flows`, `xdp_decap`) it lacks.
        for name in PROGRAMS {
            let Some(program) = ebpf.program_mut(name) else { continue };
            let program: &mut Xdp = program.try_into()?;
            program.load().with_context(|| format!("verifier rejected the other build's {name}"))?;
        }
        let mut ids = IdAllocator::new(config.balancer.max_vips, config.balancer.max_backends);
        Applied::default().sync(&desired(&config, &mut ids), &mut OtherMaps(&mut ebpf))?;
        self.other = Some(ebpf);
        Ok(())
    }
}

/// The table writes of a sync, into another build's maps.
struct OtherMaps<'a>(&'a mut Ebpf);

impl OtherMaps<'_> {
    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.0.map_mut(name).with_context(|| format!("map {name} missing from the other build"))
    }
}

impl OtherMaps<'_> {
    /// Writes the first `N` bytes of `settings`: an older object's `SETTINGS` ended there.
    fn set_settings_prefix<const N: usize>(&mut self, settings: &Settings) -> Result<()> {
        // SAFETY: Settings is repr(C) plain integers, at least N bytes long.
        let prefix: [u8; N] = unsafe { std::ptr::read((settings as *const Settings).cast()) };
        Ok(Array::<_, [u8; N]>::try_from(self.map(MAP_SETTINGS)?)?.set(0, prefix, 0)?)
    }
}

impl MapWriter for OtherMaps<'_> {
    fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        const BEFORE_TIMEOUTS: usize = std::mem::offset_of!(Settings, timeouts);
        const BEFORE_GUE_PORT: usize = std::mem::offset_of!(Settings, gue_port);
        match Array::<_, Settings>::try_from(self.map(MAP_SETTINGS)?) {
            Ok(mut map) => Ok(map.set(0, settings, 0)?),
            Err(aya::maps::MapError::InvalidValueSize { expected: BEFORE_TIMEOUTS, .. }) => {
                self.set_settings_prefix::<BEFORE_TIMEOUTS>(settings)
            }
            Err(aya::maps::MapError::InvalidValueSize { expected: BEFORE_GUE_PORT, .. }) => {
                self.set_settings_prefix::<BEFORE_GUE_PORT>(settings)
            }
            Err(e) => Err(e).context("SETTINGS of an unknown shape"),
        }
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        Ok(Array::<_, Backend>::try_from(self.map(MAP_BACKENDS)?)?.set(id, backend, 0)?)
    }
    /// A freshly loaded object's slots are zero: the others are written, one syscall each.
    fn write_slots(&mut self, offset: u32, table: &[u32]) -> Result<usize> {
        let mut slots = Array::<_, u32>::try_from(self.map(MAP_MAGLEV)?)?;
        let mut written = 0;
        for (index, &id) in (offset..).zip(table).filter(|&(_, &id)| id != 0) {
            slots.set(index, id, 0)?;
            written += 1;
        }
        Ok(written)
    }
    /// Today's shape (ids in `VIPS`, entries in `VIP_ENTRIES`), or an older object's, whose
    /// `VIPS` holds each `VipInfo` itself.
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<()> {
        if self.0.map(MAP_VIP_ENTRIES).is_none() {
            return Ok(HashMap::<_, VipKey, VipInfo>::try_from(self.map(MAP_VIPS)?)?.insert(key, info, 0)?);
        }
        let entry = VipEntry { info: *info, key: *key, _pad: 0 };
        Array::<_, VipEntry>::try_from(self.map(MAP_VIP_ENTRIES)?)?.set(info.vip_id, entry, 0)?;
        Ok(HashMap::<_, VipKey, u32>::try_from(self.map(MAP_VIPS)?)?.insert(key, info.vip_id, 0)?)
    }
    /// Nothing is removed from a freshly loaded object's tables.
    fn remove_vip(&mut self, _: &VipKey) -> Result<()> {
        bail!("the other build's tables are written once")
    }
    fn set_vip_addr(&mut self, key: &VipAddrKey, count: u32) -> Result<()> {
        Ok(HashMap::<_, VipAddrKey, u32>::try_from(self.map(MAP_VIP_ADDRS)?)?.insert(key, count, 0)?)
    }
    fn remove_vip_addr(&mut self, key: &VipAddrKey) -> Result<()> {
        Ok(HashMap::<_, VipAddrKey, u32>::try_from(self.map(MAP_VIP_ADDRS)?)?.remove(key)?)
    }
    /// A freshly loaded object's counters and next hops are zero already.
    fn reset_vip(&mut self, _: u32) -> Result<()> {
        Ok(())
    }
    fn reset_backend(&mut self, _: u32) -> Result<()> {
        Ok(())
    }
}

fn parse_config(text: &str) -> Result<config::Config> {
    config::parse(text, "fixture.toml").map_err(|e| anyhow::anyhow!("{e}"))
}

/// The context of a BPF_PROG_TEST_RUN of an XDP program: a frame of `len` bytes arriving
/// on interface `ifindex`, as the bytes of a `struct xdp_md`.
pub fn xdp_context(len: usize, ifindex: u32) -> Vec<u8> {
    let ctx = XdpMd { data_end: len as u32, ingress_ifindex: ifindex, ..Default::default() };
    // SAFETY: XdpMd is repr(C), plain integers without padding.
    unsafe { std::slice::from_raw_parts((&ctx as *const XdpMd).cast::<u8>(), std::mem::size_of::<XdpMd>()) }.to_vec()
}

impl Drop for PacketEnv {
    fn drop(&mut self) {
        if let Err(e) = setns(self.home.as_fd(), CloneFlags::CLONE_NEWNET) {
            panic!("could not return to the original netns: {e}");
        }
    }
}

/// Fails unless `cond`, naming the fixture.
pub fn expect(cond: bool, what: impl std::fmt::Display) -> Result<()> {
    ensure!(cond, "{what}");
    Ok(())
}

/// Compares two packets, printing a hex diff on mismatch.
pub fn expect_bytes(name: &str, got: &[u8], want: &[u8]) -> Result<()> {
    if got == want {
        return Ok(());
    }
    let diff: Vec<String> = (0..got.len().max(want.len()))
        .filter(|&i| got.get(i) != want.get(i))
        .take(16)
        .map(|i| format!("@{i}: got {:02x?} want {:02x?}", got.get(i), want.get(i)))
        .collect();
    bail!("{name}: output differs ({} vs {} bytes): {}", got.len(), want.len(), diff.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{
        CLIENT_MAC, CLIENT4, CONFIG, CPORT, NEIGHBOURS, VIP4, VIP4_DSR, XDP_PASS, XDP_TX, tcp4, udp4,
    };

    /// This tree's object loaded a second time as the other build: with the same config's
    /// tables it must forward every packet exactly as the environment's own object does.
    #[test]
    fn another_build_gets_the_same_tables_and_forwards_alike() -> Result<()> {
        let mut env = PacketEnv::new("lbn-other", CONFIG, NEIGHBOURS)?;
        ensure!(env.run_timed_in(Build::Other, PROG_LB, &[0; 64], 1).is_err(), "ran an other build never loaded");
        env.load_other_build(lb_userspace::EBPF_OBJECT, CONFIG)?;
        let cases = [
            ("nat SYN", tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, true), XDP_TX),
            ("nat ACK", tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 80, false), XDP_TX),
            ("dsr SYN", tcp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4_DSR, CPORT, 80, true), XDP_TX),
            ("nat UDP", udp4(CLIENT_MAC, LB_MAC, CLIENT4, VIP4, CPORT, 53), XDP_TX),
            ("not a VIP", udp4(CLIENT_MAC, LB_MAC, CLIENT4, [10, 0, 9, 9], CPORT, 53), XDP_PASS),
        ];
        for (name, packet, verdict) in cases {
            let (v_current, out_current, _) = env.run_timed_in(Build::Current, PROG_LB, &packet, 1)?;
            let (v_other, out_other, _) = env.run_timed_in(Build::Other, PROG_LB, &packet, 1)?;
            ensure!(v_current == verdict && v_other == verdict, "{name}: verdicts {v_current} and {v_other}");
            expect_bytes(name, &out_other, &out_current)?;
        }
        Ok(())
    }
}
