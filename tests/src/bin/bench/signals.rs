//! 7. Passive health signals.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use etherparse::PacketBuilder;
use lb_common::PROG_LB;
use lb_tests::packet_env::{LB_MAC, PacketEnv, neighbour_mac};

use crate::Sizes;
use crate::common::*;

/// Section 7 adds two nat TCP VIPs with one backend each (the same one): the first
/// watched by outlier detection, the second not.
const VIP_WATCHED: [u8; 4] = [10, 100, 0, 6];
const VIP_UNWATCHED: [u8; 4] = [10, 100, 0, 7];
const SIGNAL_BACKEND: [u8; 4] = [10, 0, 1, 11];

fn signal_config() -> String {
    let mut c = bench_config();
    for (name, [a, b, c3, d], extra) in
        [("watched", VIP_WATCHED, "outlier_detection = {}\n"), ("unwatched", VIP_UNWATCHED, "")]
    {
        c += &format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{a}.{b}.{c3}.{d}\"\nport = 80\n{extra}[[vip.backend]]\naddress = \"10.0.1.11\"\nport = 8080\n"
        );
    }
    c
}

/// The backend's SYN-ACK to the balancer's `nat_port`.
fn syn_ack(nat_port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_LEN);
    PacketBuilder::ethernet2(neighbour_mac(11), LB_MAC)
        .ipv4(SIGNAL_BACKEND, [10, 0, 0, 1], 64)
        .tcp(8080, nat_port, 7000, 64240)
        .syn()
        .ack(1001)
        .write(&mut out, &[0u8; FRAME_LEN - 54])
        .expect("build syn-ack");
    out
}

/// (case, ns watched, ns unwatched, signals read).
type SignalRow = (&'static str, f64, f64, usize);

pub fn passive_signals(sizes: &Sizes) -> Result<()> {
    // Replies go back to a client with a route: CLIENT4, one source port per flow, and
    // every run's flows must fit in its port range.
    let calls = sizes.calls.min(10_000);
    let row = on_thread("passive-signals", move || -> Result<SignalRow> {
        let n = neighbours();
        let refs: Vec<&str> = n.iter().map(String::as_str).collect();
        let mut env = PacketEnv::new("lbb-sig", &signal_config(), &refs)?;
        let mut signals = env.dataplane.take_health_signals().context("no health signal reader")?;
        let mut sports = 1024u16..;
        let (mut watched, mut unwatched, mut read) = (Vec::new(), Vec::new(), 0);
        for _ in 0..REPS {
            for (vip, results) in [(VIP_WATCHED, &mut watched), (VIP_UNWATCHED, &mut unwatched)] {
                // A SYN refused for lack of a free nat port (rare: every flow here shares one
                // backend's port space) has no reply to measure.
                let mut nat_ports = Vec::with_capacity(calls);
                while nat_ports.len() < calls {
                    let sport = sports.next().context("out of client ports")?;
                    let (verdict, out) = env.run(PROG_LB, &tcp4(CLIENT4, vip, sport, 80, true))?;
                    if verdict == XDP_TX {
                        // The source port of the SYN as sent to the backend.
                        nat_ports.push(u16::from_be_bytes([out[34], out[35]]));
                    }
                }
                let mut replies = nat_ports.iter().map(|&port| syn_ack(port));
                let c = per_call(&mut env, PROG_LB, calls, XDP_TX, || replies.next().expect("one reply per flow"))?;
                ensure!(
                    c.wrong * 100 <= calls,
                    "{} of {calls} SYN-ACKs not translated (verdict {})",
                    c.wrong,
                    c.last_wrong
                );
                results.push(c.ns);
                read += signals.drain().len();
            }
        }
        Ok(("first reply (SYN-ACK) of a nat flow", median_f64(&watched), median_f64(&unwatched), read))
    })?;
    let (name, watched, unwatched, read) = row;
    println!("{:<40} {:>12} {:>14} {:>7}", "case", "watched ns", "unwatched ns", "ratio");
    println!("{name:<40} {watched:>12.1} {unwatched:>14.1} {:>6.2}x", watched / unwatched);
    println!(
        "(B, {calls} single-run calls per run, median of {REPS}: the reply that reports the connect through the HEALTH_SIGNALS ring\n buffer, against the same reply on a VIP without outlier detection; {read} signals read. Later replies of a flow\n cost one byte test more.)"
    );
    ejection_latency()
}

/// From the first refused connection to the map update that ejects the backend: a lab with
/// `lb run`, `consecutive_5xx = 1`, and the VIP's entry in the pinned `VIPS` map polled.
fn ejection_latency() -> Result<()> {
    use lb_tests::lab::{HTTP_PORT, Lab, LbProcess, VIP_V4, VipSpec, backends_across, lb_config};
    let lab = Lab::build("lbb-ej", backends_across(1, 1, 4), false)?;
    let vip =
        VipSpec::new("web", std::net::IpAddr::V4(VIP_V4), HTTP_PORT, "tcp", "nat", (0..4).map(|i| (i, 1)).collect());
    let config = lb_config(&lab, &[vip]).vip(
        "web",
        "outlier_detection = { consecutive_5xx = 1, interval = \"200ms\", base_ejection_time = \"500ms\", max_ejection_time = \"500ms\" }",
    );
    let mut lb = LbProcess::start(&lab, &config)?;
    let entries_pin = lab.pin_dir().join(lb_common::MAP_VIP_ENTRIES);
    let mut lab = lab;
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let before = vip_table_offset(&entries_pin)?;
        // Watches the map from before the fault, so the switch is timed when it happens.
        let watcher = {
            let pin = entries_pin.clone();
            std::thread::spawn(move || -> Result<Instant> {
                let deadline = Instant::now() + Duration::from_secs(10);
                while vip_table_offset(&pin)? == before {
                    ensure!(Instant::now() < deadline, "the VIP's table did not switch within 10 s");
                }
                Ok(Instant::now())
            })
        };
        lab.backends[0].stop();
        let target = std::net::SocketAddr::new(std::net::IpAddr::V4(VIP_V4), HTTP_PORT);
        // Connections until one is refused; the time is taken when the refusal arrived.
        let refused_at = lab.client.run(move || -> Result<Instant> {
            for _ in 0..1000 {
                if std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_err() {
                    return Ok(Instant::now());
                }
            }
            bail!("no connection refused in 1000 attempts")
        })??;
        let switched_at = watcher.join().map_err(|_| anyhow::anyhow!("watcher panicked"))??;
        latencies.push(switched_at.saturating_duration_since(refused_at).as_secs_f64() * 1000.0);
        lab.backends[0].restart()?;
        lb.wait_for("ejected backend returned", Duration::from_secs(10))?;
        // The return's own table switch, which the next round must not take for its ejection.
        lb.wait_for("tables synced", Duration::from_secs(10))?;
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "\npassive ejection, first refused connection seen by the client -> VIP entry switched: median {:.1} ms, max {:.1} ms\n over {} rounds (target < 50 ms: {})",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len(),
        if latencies[latencies.len() - 1] < 50.0 { "yes" } else { "NO" }
    );
    println!(
        "(consecutive_5xx = 1; packet path -> ring buffer -> controller -> Maglev rebuild -> diff written -> VIP entry switch;\n 0 when the switch came before the client saw its refusal)"
    );
    Ok(())
}

/// The active table offset of the (only) VIP, id 0, in the pinned `VIP_ENTRIES` map.
fn vip_table_offset(pin: &std::path::Path) -> Result<u32> {
    let map = aya::maps::Map::Array(aya::maps::MapData::from_pin(pin)?);
    let entries: aya::maps::Array<_, lb_common::VipEntry> = aya::maps::Array::try_from(map)?;
    Ok(entries.get(&0, 0)?.info.table_offset)
}
