//! What the sections share: the config and addresses of their environments, packet
//! builders, the two ways of timing BPF_PROG_TEST_RUN, medians, threads.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use lb_common::PROG_LB;
use lb_tests::packet_env::{Build, IFACE, LB_MAC, PacketEnv, xdp_context};

pub use lb_tests::packets::{CLIENT_MAC, CLIENT4, XDP_DROP, XDP_PASS, XDP_TX};

/// Every frame is 64 bytes long (no FCS).
pub const FRAME_LEN: usize = 64;
pub const FLOW_TABLE_SIZE: u32 = 1_048_576;
pub const BACKENDS_PER_VIP: u8 = 16;
/// Runs of each measurement; the median is reported.
pub const REPS: usize = 3;

pub const VIP_NAT: [u8; 4] = lb_tests::packets::VIP4;
pub const VIP_DSR: [u8; 4] = lb_tests::packets::VIP4_DSR;
pub const NOT_A_VIP: [u8; 4] = [10, 0, 9, 9];
pub const UDP_DSR_PORT: u16 = 9000;
pub const UDP_NAT_PORT: u16 = 53;

/// Four VIPs (tcp/udp x nat/dsr), 16 backends each, tables of production size.
pub fn bench_config() -> String {
    let mut c = format!(
        r#"
[balancer]
interfaces = ["{IFACE}"]
ipv4 = "10.0.0.1"
pin_dir = "/sys/fs/bpf/lb-bench-unused"
maglev_table_size = 65537
max_vips = 8
max_backends = 128
flow_table_size = {FLOW_TABLE_SIZE}
hash_seed = 42
nat_port_min = 1024
nat_port_max = 65535
"#
    );
    for (name, addr, port, proto, mode, backend_port) in [
        ("tcp-nat", "10.100.0.1", 80, "tcp", "nat", Some(8080)),
        ("udp-nat", "10.100.0.1", UDP_NAT_PORT, "udp", "nat", Some(5353)),
        ("tcp-dsr", "10.100.0.2", 80, "tcp", "dsr", None),
        ("udp-dsr", "10.100.0.2", UDP_DSR_PORT, "udp", "dsr", None),
    ] {
        c += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = {port}\nprotocol = \"{proto}\"\nmode = \"{mode}\"\n"
        );
        for b in 0..BACKENDS_PER_VIP {
            c += &format!("[[vip.backend]]\naddress = \"10.0.1.{}\"\n", 11 + b);
            if let Some(p) = backend_port {
                c += &format!("port = {p}\n");
            }
        }
    }
    c
}

pub fn neighbours() -> Vec<String> {
    let mut n = vec!["10.0.0.2".to_owned()];
    n.extend((0..BACKENDS_PER_VIP).map(|b| format!("10.0.1.{}", 11 + b)));
    n
}

pub fn new_env(tag: &str) -> Result<PacketEnv> {
    let n = neighbours();
    let refs: Vec<&str> = n.iter().map(String::as_str).collect();
    PacketEnv::new(tag, &bench_config(), &refs)
}

/// Like `lb_tests::packets::tcp4` from the client, padded to [`FRAME_LEN`] instead of the
/// fixtures' HTTP payload: the benchmark's frames are all minimum-size.
pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC).ipv4(src, dst, 64).tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(2000) };
    let mut out = Vec::with_capacity(FRAME_LEN);
    b.write(&mut out, &[0u8; FRAME_LEN - 54]).expect("build tcp4");
    out
}

/// Like [`tcp4`], for UDP.
pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_LEN);
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, &[0u8; FRAME_LEN - 42])
        .expect("build udp4");
    out
}

/// Client addresses and ports that never repeat within one environment: every SYN built
/// from it is a new flow.
#[derive(Default)]
pub struct FreshClients(pub u32);

impl FreshClients {
    pub fn next(&mut self) -> ([u8; 4], u16) {
        let i = self.0;
        self.0 += 1;
        let host = i / 60_000;
        ([10, 64, (host >> 8) as u8, host as u8], 1024 + (i % 60_000) as u16)
    }
    pub fn syn(&mut self, vip: [u8; 4]) -> Vec<u8> {
        let (src, sport) = self.next();
        tcp4(src, vip, sport, 80, true)
    }
}

pub fn median_f64(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Method A: the kernel's mean time per run over `repeat` runs of one call.
pub fn in_kernel(env: &mut PacketEnv, prog: &str, pkt: &[u8], repeat: u32, want: u32) -> Result<f64> {
    in_kernel_of(env, Build::Current, prog, pkt, repeat, want)
}

/// [`in_kernel`] on `build`'s program.
pub fn in_kernel_of(env: &mut PacketEnv, build: Build, prog: &str, pkt: &[u8], repeat: u32, want: u32) -> Result<f64> {
    let (verdict, _, mean) = env.run_timed_in(build, prog, pkt, repeat)?;
    ensure!(verdict == want, "{prog}: verdict {verdict}, expected {want}");
    Ok(mean.as_nanos() as f64)
}

/// What a method-B measurement found.
pub struct Calls {
    /// Interquartile mean of the kernel's per-call time, ns. The kernel's clock here ticks in
    /// ~10 ns steps, so a plain median of a ~40 ns baseline jumps by 25% between runs; the
    /// mean of the middle half is as robust and averages the steps out.
    pub ns: f64,
    /// Calls whose verdict was not the expected one, and the last such verdict.
    pub wrong: usize,
    pub last_wrong: u32,
}

/// Method B: `calls` calls with `repeat = 1`, each on the packet `next` gives.
pub fn per_call(
    env: &mut PacketEnv,
    prog: &str,
    calls: usize,
    want: u32,
    next: impl FnMut() -> Vec<u8>,
) -> Result<Calls> {
    per_call_of(env, Build::Current, prog, calls, want, next)
}

/// [`per_call`] on `build`'s program.
pub fn per_call_of(
    env: &mut PacketEnv,
    build: Build,
    prog: &str,
    calls: usize,
    want: u32,
    mut next: impl FnMut() -> Vec<u8>,
) -> Result<Calls> {
    let mut ns = Vec::with_capacity(calls);
    let (mut wrong, mut last_wrong) = (0usize, 0u32);
    for _ in 0..calls {
        let pkt = next();
        let (verdict, _, took) = env.run_timed_in(build, prog, &pkt, 1)?;
        if verdict != want {
            wrong += 1;
            last_wrong = verdict;
        }
        ns.push(took.as_nanos() as u64);
    }
    ns.sort_unstable();
    let middle = &ns[ns.len() / 4..ns.len() - ns.len() / 4];
    let iqm = middle.iter().sum::<u64>() as f64 / middle.len() as f64;
    if std::env::var_os("LB_BENCH_DEBUG").is_some() {
        let pct = |p: usize| ns[(ns.len() - 1) * p / 100];
        eprintln!(
            "  [{prog}] iqm {iqm:.1} p1 {} p10 {} p50 {} p90 {} p99 {} (ns); wrong verdicts {wrong}",
            pct(1),
            pct(10),
            pct(50),
            pct(90),
            pct(99)
        );
    }
    Ok(Calls { ns: iqm, wrong, last_wrong })
}

/// Like [`per_call`], failing on any unexpected verdict.
pub fn per_call_exact(
    env: &mut PacketEnv,
    prog: &str,
    calls: usize,
    want: u32,
    next: impl FnMut() -> Vec<u8>,
) -> Result<f64> {
    let c = per_call(env, prog, calls, want, next)?;
    ensure!(c.wrong == 0, "{prog}: {} of {calls} calls gave verdict {}, expected {want}", c.wrong, c.last_wrong);
    Ok(c.ns)
}

/// VIP packets and new flows (summed over VIP ids).
pub fn vip_traffic(env: &PacketEnv) -> (u64, u64) {
    (0..8).filter_map(|id| env.dataplane.vip_stats(id).ok()).fold((0, 0), |a, s| (a.0 + s.packets, a.1 + s.new_flows))
}

/// Drops counted by the VIPs (summed over VIP ids): (nat ports exhausted, no route, no backend).
pub fn vip_drops(env: &PacketEnv) -> (u64, u64, u64) {
    (0..8)
        .filter_map(|id| env.dataplane.vip_stats(id).ok())
        .fold((0, 0, 0), |a, s| (a.0 + s.drop_nat_ports_exhausted, a.1 + s.drop_no_route, a.2 + s.drop_no_backend))
}

/// Runs `f` on a thread of its own (the environments enter a netns in the calling thread),
/// turning a panic into an error.
pub fn on_thread<T: Send + 'static>(name: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let handle = std::thread::Builder::new().name(name.to_owned()).spawn(f)?;
    match handle.join() {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!("{name} panicked: {msg}")
        }
    }
}

/// Pins the calling thread to `cpu` and opens the program pinned at `pin` (each worker
/// thread of a multi-CPU measurement has its own handle).
pub fn pinned_on_cpu(pin: &std::path::Path, cpu: usize) -> Result<aya::programs::Xdp> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(aya::programs::Xdp::from_pin(pin, aya_obj::programs::XdpAttachType::Interface)?)
}

/// One BPF_PROG_TEST_RUN of `program` on `pkt`: the verdict and the kernel's time.
pub fn run_pinned(program: &aya::programs::Xdp, pkt: &[u8], ifindex: u32) -> Result<(u32, Duration)> {
    let ctx = xdp_context(pkt.len(), ifindex);
    let mut out = vec![0u8; pkt.len() + 64];
    let result = program.test_run(TestRunOptions {
        data_in: Some(pkt),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..TestRunOptions::new()
    })?;
    Ok((result.return_value, result.duration))
}

/// Runs `work(pin)` with the environment's `xdp_lb` pinned at a path of this process, and
/// removes the pin whatever happens.
pub fn with_pinned_lb<T>(
    env: &mut PacketEnv,
    tag: &str,
    work: impl FnOnce(&std::path::Path) -> Result<T>,
) -> Result<T> {
    let pin = std::path::PathBuf::from(format!("/sys/fs/bpf/{tag}-{}", std::process::id()));
    env.dataplane.program(PROG_LB)?.pin(&pin)?;
    let result = work(&pin);
    std::fs::remove_file(&pin)?;
    result
}
