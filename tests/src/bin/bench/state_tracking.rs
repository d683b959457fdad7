//! Section 10, connection-lifecycle state tracking (e8430fe: plain hash maps with TCP states
//! per flow) against the revision before it: both objects in one environment with the tables
//! of the same config, measured in alternation.

use anyhow::{Result, ensure};
use lb_common::PROG_LB;
use lb_tests::packet_env::{Build, PacketEnv};

use crate::Sizes;
use crate::baseline;
use crate::common::*;
use crate::per_packet::{Case, Method, cases};

/// The most an existing flow may cost over the baseline.
const EXISTING_TARGET: f64 = 1.05;

/// case, method, ns now, ns at the baseline revision (medians), median of the rounds' ratios.
type Row = (String, String, f64, f64, f64);

pub fn state_tracking(sizes: &Sizes) -> Result<()> {
    let rev = sizes.baseline_rev.clone();
    let object = baseline::object_of(&rev)?;
    let (rounds, repeat, calls) = (sizes.rounds, sizes.repeat / 5, sizes.calls / 5);
    // The fullest level of section 2 that the table holds without evicting (today's
    // tables never evict a live flow).
    let (fill_label, fill) =
        sizes.fills.iter().filter(|(_, n)| *n < FLOW_TABLE_SIZE).max_by_key(|(_, n)| *n).cloned().unwrap_or_default();
    let rows = on_thread("state-tracking", move || -> Result<Vec<Row>> {
        let mut env = new_env("lbn-state")?;
        env.load_other_build(&object, &bench_config())?;
        // Each build sees the same sequence of new flows.
        let mut clients = [FreshClients::default(), FreshClients::default()];
        let row = |env: &mut PacketEnv, name: String, case: &Case, clients: &mut [FreshClients; 2]| {
            compare(env, case, clients, rounds, repeat, calls)
                .map(|(method, now, before, ratio)| (name, method, now, before, ratio))
        };
        let cases = cases();
        // Existing flows first: the new nat flows measured later take many ports, and a
        // flow that found none would be dropped.
        for case in cases.iter().filter(|c| c.method != Method::BNew) {
            first_packet(&mut env, case)?;
        }
        let mut rows = Vec::new();
        for case in &cases {
            rows.push(row(&mut env, case.name.to_owned(), case, &mut clients)?);
        }
        // Section 2's comparison: both tables filled with dsr flows.
        for (i, build) in [Build::Current, Build::Other].into_iter().enumerate() {
            while clients[i].0 < fill {
                let (v, _, _) = env.run_timed_in(build, PROG_LB, &clients[i].syn(VIP_DSR), 1)?;
                ensure!(v == XDP_TX, "filling the flow table ({build:?}): verdict {v}");
            }
        }
        let (src, sport) = clients[0].next();
        clients[1].0 = clients[0].0;
        let filled = [
            Case {
                name: "existing: TCP ACK, dsr VIP",
                method: Method::BSame,
                packet: tcp4(src, VIP_DSR, sport, 80, false),
                verdict: XDP_TX,
                target: 0.0,
            },
            Case {
                name: "new flow: TCP SYN, dsr VIP",
                method: Method::BNew,
                // Only its VIP counts: every call is a fresh client.
                packet: tcp4(CLIENT4, VIP_DSR, 1, 80, true),
                verdict: XDP_TX,
                target: 0.0,
            },
        ];
        first_packet(&mut env, &filled[0])?;
        for case in &filled {
            rows.push(row(&mut env, format!("{}, {fill_label} flows", case.name), case, &mut clients)?);
        }
        Ok(rows)
    })?;
    println!(
        "{:<40} {:<13} {:>8} {:>9} {:>7} {:>7}  within",
        "case", "method", "now ns", "before ns", "ratio", "target"
    );
    for (name, method, now, before, ratio) in rows {
        let existing = !name.starts_with("new flow");
        let (target, within) = if existing {
            (format!("{EXISTING_TARGET:.2}x"), if ratio <= EXISTING_TARGET { "yes" } else { "NO" })
        } else {
            ("-".to_owned(), "-")
        };
        println!("{name:<40} {method:<13} {now:>8.1} {before:>9.1} {ratio:>6.3}x {target:>7}  {within}");
    }
    println!(
        "(now = this tree's xdp_lb, before = {rev}'s, loaded side by side in one netns with the tables of the same config;\n {rounds} rounds alternating A B / B A; ns = median of the rounds, ratio = median of the rounds' now/before;\n A = the kernel's mean over {repeat} in-kernel runs, B = interquartile mean of {calls} single-run calls;\n the last two rows with {fill} dsr flows created in each build's table; the target applies to all but new flows)"
    );
    Ok(())
}

/// Creates the flow of `case` in both builds.
fn first_packet(env: &mut PacketEnv, case: &Case) -> Result<()> {
    for build in [Build::Current, Build::Other] {
        let (v, _, _) = env.run_timed_in(build, PROG_LB, &case.packet, 1)?;
        ensure!(v == case.verdict, "{} ({build:?}): first packet gave verdict {v}", case.name);
    }
    Ok(())
}

/// `case` on both builds in alternating rounds (its flow, unless new, created already): the
/// method's label, the median ns now and before, and the median of the rounds' ratios.
fn compare(
    env: &mut PacketEnv,
    case: &Case,
    clients: &mut [FreshClients; 2],
    rounds: usize,
    repeat: u32,
    calls: usize,
) -> Result<(String, f64, f64, f64)> {
    let mut ns = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        // A B, then B A: drift within a pair of rounds cancels.
        let order = if round % 2 == 0 { [Build::Current, Build::Other] } else { [Build::Other, Build::Current] };
        for build in order {
            let i = (build == Build::Other) as usize;
            ns[i].push(measure(env, build, case, &mut clients[i], repeat, calls)?);
        }
    }
    let method = match case.method {
        Method::A => format!("A rep {}k", repeat / 1000),
        Method::BSame => format!("B {}k same", calls / 1000),
        Method::BNew => format!("B {}k new", calls / 1000),
    };
    // The ratio within each round, whose two measurements ran back to back, cancels the
    // load that changes between rounds (the machine is shared).
    let ratios: Vec<f64> = ns[0].iter().zip(&ns[1]).map(|(now, before)| now / before).collect();
    Ok((method, median_f64(&ns[0]), median_f64(&ns[1]), median_f64(&ratios)))
}

/// One measurement of `case` on `build`.
fn measure(
    env: &mut PacketEnv,
    build: Build,
    case: &Case,
    clients: &mut FreshClients,
    repeat: u32,
    calls: usize,
) -> Result<f64> {
    let c = match case.method {
        Method::A => return in_kernel_of(env, build, PROG_LB, &case.packet, repeat, case.verdict),
        Method::BSame => per_call_of(env, build, PROG_LB, calls, case.verdict, || case.packet.clone())?,
        Method::BNew => per_call_of(env, build, PROG_LB, calls, case.verdict, || clients.syn(case.vip()))?,
    };
    // A new nat flow can be refused when its few source-port candidates are all taken (seen
    // on this tree's object at up to 2% of a round's new flows).
    let allowed = if case.method == Method::BNew { calls / 20 } else { 0 };
    ensure!(
        c.wrong <= allowed,
        "{} ({build:?}): {} of {calls} calls gave verdict {}, expected {}; this tree's VIP drops so far \
         (nat ports exhausted, no route, no backend): {:?}",
        case.name,
        c.wrong,
        c.last_wrong,
        case.verdict,
        vip_drops(env)
    );
    Ok(c.ns)
}
