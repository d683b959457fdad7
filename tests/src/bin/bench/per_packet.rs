//! 1. Per-packet cost.

use anyhow::{Result, ensure};
use lb_common::{PROG_DROP, PROG_LB};

use crate::Sizes;
use crate::common::*;

/// case, method, ns per packet, baseline ns, target ratio.
type Row = (String, String, f64, f64, f64);

#[derive(Clone, Copy, PartialEq)]
pub enum Method {
    /// In-kernel loop, the kernel's mean.
    A,
    /// `repeat = 1`, the same packet every call (the first call creates the flow).
    BSame,
    /// `repeat = 1`, a new flow every call.
    BNew,
}

pub struct Case {
    pub name: &'static str,
    pub method: Method,
    pub packet: Vec<u8>,
    pub verdict: u32,
    /// The target ratio against `xdp_drop`.
    pub target: f64,
}

impl Case {
    /// The VIP the case's packet goes to.
    pub fn vip(&self) -> [u8; 4] {
        if self.packet[30..34] == VIP_NAT { VIP_NAT } else { VIP_DSR }
    }
}

/// What section 1 measures (and section 10 compares with an older build).
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "new flow: TCP SYN, nat VIP",
            method: Method::BNew,
            packet: tcp4(CLIENT4, VIP_NAT, 1, 80, true),
            verdict: XDP_TX,
            target: 14.0,
        },
        Case {
            name: "new flow: TCP SYN, dsr VIP",
            method: Method::BNew,
            packet: tcp4(CLIENT4, VIP_DSR, 1, 80, true),
            verdict: XDP_TX,
            target: 10.0,
        },
        Case {
            name: "existing: TCP ACK, dsr VIP",
            method: Method::A,
            packet: tcp4(CLIENT4, VIP_DSR, 40000, 80, false),
            verdict: XDP_TX,
            target: 6.0,
        },
        Case {
            name: "existing: TCP ACK, dsr VIP",
            method: Method::BSame,
            packet: tcp4(CLIENT4, VIP_DSR, 40000, 80, false),
            verdict: XDP_TX,
            target: 3.2,
        },
        Case {
            name: "existing: TCP ACK, nat VIP",
            method: Method::BSame,
            packet: tcp4(CLIENT4, VIP_NAT, 40000, 80, false),
            verdict: XDP_TX,
            target: 3.2,
        },
        Case {
            name: "existing: UDP, dsr VIP",
            method: Method::A,
            packet: udp4(CLIENT4, VIP_DSR, 40000, UDP_DSR_PORT),
            verdict: XDP_TX,
            target: 6.0,
        },
        Case {
            name: "existing: UDP, nat VIP",
            method: Method::BSame,
            packet: udp4(CLIENT4, VIP_NAT, 40000, UDP_NAT_PORT),
            verdict: XDP_TX,
            target: 3.2,
        },
        Case {
            name: "non-VIP: UDP to 10.0.9.9",
            method: Method::A,
            packet: udp4(CLIENT4, NOT_A_VIP, 40000, 53),
            verdict: XDP_PASS,
            target: 1.6,
        },
    ]
}

pub fn per_packet(sizes: &Sizes) -> Result<()> {
    let repeat = sizes.repeat;
    let calls = sizes.calls;
    let (rows, notes) = on_thread("per-packet", move || -> Result<(Vec<Row>, Vec<String>)> {
        let mut env = new_env("lbb-pkt")?;
        let mut clients = FreshClients::default();
        let cases = cases();
        let (mut rows, mut notes) = (Vec::new(), Vec::new());
        for case in &cases {
            let vip = case.vip();
            if case.method != Method::BNew {
                // Creates the flow; every later run finds it.
                let (v, _) = env.run(PROG_LB, &case.packet)?;
                ensure!(v == case.verdict, "{}: first packet gave verdict {v}, expected {}", case.name, case.verdict);
            }
            let (mut vals, mut bases) = (Vec::new(), Vec::new());
            let drops_before = vip_drops(&env);
            let mut wrong = 0;
            for _ in 0..REPS {
                let (base, val) = match case.method {
                    Method::A => (
                        in_kernel(&mut env, PROG_DROP, &case.packet, repeat, XDP_DROP)?,
                        in_kernel(&mut env, PROG_LB, &case.packet, repeat, case.verdict)?,
                    ),
                    Method::BSame => (
                        per_call_exact(&mut env, PROG_DROP, calls, XDP_DROP, || case.packet.clone())?,
                        per_call_exact(&mut env, PROG_LB, calls, case.verdict, || case.packet.clone())?,
                    ),
                    Method::BNew => {
                        let base = per_call_exact(&mut env, PROG_DROP, calls, XDP_DROP, || case.packet.clone())?;
                        // A new nat flow can be refused when its few source-port candidates
                        // are all taken: counted and reported, not fatal unless frequent.
                        let c = per_call(&mut env, PROG_LB, calls, case.verdict, || clients.syn(vip))?;
                        ensure!(
                            c.wrong * 100 <= calls,
                            "{}: {} of {calls} calls gave verdict {}, expected {}",
                            case.name,
                            c.wrong,
                            c.last_wrong,
                            case.verdict
                        );
                        wrong += c.wrong;
                        (base, c.ns)
                    }
                };
                bases.push(base);
                vals.push(val);
            }
            if wrong > 0 {
                let after = vip_drops(&env);
                notes.push(format!(
                    "{}: {wrong} of {} new flows not forwarded (nat ports exhausted {}, no route {}, no backend {}); {} flows created so far",
                    case.name,
                    calls * REPS,
                    after.0 - drops_before.0,
                    after.1 - drops_before.1,
                    after.2 - drops_before.2,
                    clients.0
                ));
            }
            let method = match case.method {
                Method::A => format!("A rep {}k", repeat / 1000),
                Method::BSame => format!("B {}k same", calls / 1000),
                Method::BNew => format!("B {}k new", calls / 1000),
            };
            rows.push((case.name.to_owned(), method, median_f64(&vals), median_f64(&bases), case.target));
        }
        Ok((rows, notes))
    })?;
    println!(
        "{:<28} {:<13} {:>8} {:>8} {:>7} {:>7} {:>7}  within",
        "case", "method", "ns/pkt", "base ns", "net ns", "ratio", "target"
    );
    for (name, method, ns, base, target) in rows {
        let ratio = ns / base;
        println!(
            "{name:<28} {method:<13} {ns:>8.1} {base:>8.1} {:>7.1} {:>6.2}x {:>6.1}x  {}",
            ns - base,
            ratio,
            target,
            if ratio <= target { "yes" } else { "NO" }
        );
    }
    println!(
        "(baseline: xdp_drop on the same packet, same method; median of {REPS} runs. A = the kernel's mean over an in-kernel\n loop of {repeat} runs; B = interquartile mean of the kernel's time of {calls} single-run calls, which includes the\n timer's own ~30-40 ns in both columns; net = ns - base)"
    );
    for note in notes {
        println!("note: {note}");
    }
    Ok(())
}
