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
use aya::programs::{TestRun, TestRunOptions};
use lb_userspace::config;
use lb_userspace::dataplane::{Dataplane, MapSizes};
use lb_userspace::plan::{IdAllocator, desired};
use lb_userspace::sync::Applied;
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
    home: File,
    _ns: Netns,
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
        let mut env = Self { dataplane, ifindex, ids, applied: Applied::default(), home, _ns: ns };
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
        let ctx = xdp_context(input.len(), self.ifindex);
        let mut output = vec![0u8; input.len() + 256];
        let result = self.dataplane.program(program)?.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })?;
        output.truncate(result.data_size_out as usize);
        Ok((result.return_value, output, result.duration))
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
