//! 13. Encapsulated dsr: new and existing flows of `ipip` and `gue` VIPs (IPv4 in IPv4, 16
//!     backends each) against `xdp_drop` and against a `dsr` VIP of the same backends, all
//!     in one environment and measured in alternation. Method B only: an in-kernel loop
//!     would rerun the program on its own (encapsulated) output.

use anyhow::Result;
use lb_common::{PROG_DROP, PROG_LB};

use crate::Sizes;
use crate::common::*;

const VIP_IPIP: [u8; 4] = [10, 100, 0, 3];
const VIP_GUE: [u8; 4] = [10, 100, 0, 4];

/// The bench config with an `ipip` and a `gue` TCP VIP over the dsr VIP's backends.
fn encap_bench_config() -> String {
    let mut c = bench_config();
    for (name, addr, mode) in [("tcp-ipip", VIP_IPIP, "ipip"), ("tcp-gue", VIP_GUE, "gue")] {
        let addr = std::net::Ipv4Addr::from(addr);
        c += &format!("\n[[vip]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = 80\nmode = \"{mode}\"\n");
        for b in 0..BACKENDS_PER_VIP {
            c += &format!("[[vip.backend]]\naddress = \"10.0.1.{}\"\n", 11 + b);
        }
    }
    c
}

/// (mode, existing-flow ns, new-flow ns).
type Row = (&'static str, f64, f64);

pub fn encap_cost(sizes: &Sizes) -> Result<()> {
    let calls = sizes.calls;
    let (drop_ns, rows) = on_thread("encap-cost", move || -> Result<(f64, Vec<Row>)> {
        let n = neighbours();
        let refs: Vec<&str> = n.iter().map(String::as_str).collect();
        let mut env = lb_tests::packet_env::PacketEnv::new("lbb-enc", &encap_bench_config(), &refs)?;
        let mut clients = FreshClients::default();
        let modes = [("dsr", VIP_DSR), ("ipip", VIP_IPIP), ("gue", VIP_GUE)];
        let mut drop = Vec::new();
        let mut times = vec![(Vec::new(), Vec::new()); modes.len()];
        for (_, vip) in modes {
            let ack = tcp4(CLIENT4, vip, 40000, 80, false);
            anyhow::ensure!(env.run(PROG_LB, &ack)?.0 == XDP_TX, "the flow to {vip:?} is not forwarded");
        }
        for _ in 0..REPS {
            drop.push(per_call_exact(&mut env, PROG_DROP, calls, XDP_DROP, || {
                tcp4(CLIENT4, VIP_DSR, 40000, 80, false)
            })?);
            for ((_, vip), (existing, new)) in modes.iter().zip(&mut times) {
                let ack = tcp4(CLIENT4, *vip, 40000, 80, false);
                existing.push(per_call_exact(&mut env, PROG_LB, calls, XDP_TX, || ack.clone())?);
                new.push(per_call_exact(&mut env, PROG_LB, calls, XDP_TX, || clients.syn(*vip))?);
            }
        }
        let rows = modes.iter().zip(&times).map(|((m, _), (e, n))| (*m, median_f64(e), median_f64(n))).collect();
        Ok((median_f64(&drop), rows))
    })?;
    let (dsr_existing, dsr_new) = (rows[0].1, rows[0].2);
    println!(
        "{:<6} {:>12} {:>10} {:>8} {:>12} {:>10} {:>8}",
        "mode", "existing ns", "/xdp_drop", "/dsr", "new flow ns", "/xdp_drop", "/dsr"
    );
    for (mode, existing, new) in &rows {
        println!(
            "{mode:<6} {existing:>12.1} {:>9.2}x {:>7.2}x {new:>12.1} {:>9.2}x {:>7.2}x",
            existing / drop_ns,
            existing / dsr_existing,
            new / drop_ns,
            new / dsr_new
        );
    }
    println!(
        "(B: interquartile mean of {calls} single-run calls, median of {REPS} rounds in alternation; xdp_drop {drop_ns:.1} ns\n in the same run, timer included in both; existing = a TCP ACK of one flow, new = a SYN of a fresh client each call)"
    );
    Ok(())
}
