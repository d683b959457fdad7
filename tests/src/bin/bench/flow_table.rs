//! 2. The flow table at several fill levels.

use std::time::Instant;

use anyhow::{Result, ensure};
use lb_common::{PROG_DROP, PROG_LB};

use crate::Sizes;
use crate::common::*;

/// label, flows created, new-flow ns, existing-flow ns, baseline ns.
type Level = (String, u32, f64, f64, f64);

pub fn flow_table(sizes: &Sizes) -> Result<()> {
    let calls = sizes.calls;
    let fills = sizes.fills.clone();
    let rows = on_thread("flow-table", move || -> Result<Vec<Level>> {
        let mut env = new_env("lbb-lru")?;
        let mut clients = FreshClients::default();
        let mut rows = Vec::new();
        for (label, fill) in fills {
            // Fill with new dsr flows (untimed) until `fill` flows were created in total.
            let started = Instant::now();
            while clients.0 < fill {
                let (v, _) = env.run(PROG_LB, &clients.syn(VIP_DSR))?;
                ensure!(v == XDP_TX, "filling the flow table: verdict {v}");
            }
            let filled = clients.0;
            let fill_time = started.elapsed();
            // An existing flow at this fill level.
            let (src, sport) = clients.next();
            let existing = tcp4(src, VIP_DSR, sport, 80, false);
            let (v, _) = env.run(PROG_LB, &existing)?;
            ensure!(v == XDP_TX, "existing flow: verdict {v}");
            let (mut new, mut old, mut base) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..REPS {
                base.push(per_call_exact(&mut env, PROG_DROP, calls, XDP_DROP, || existing.clone())?);
                new.push(per_call_exact(&mut env, PROG_LB, calls, XDP_TX, || clients.syn(VIP_DSR))?);
                old.push(per_call_exact(&mut env, PROG_LB, calls, XDP_TX, || existing.clone())?);
            }
            if fill > 0 {
                eprintln!("  (filled to {filled} flows in {:.1} s)", fill_time.as_secs_f64());
            }
            rows.push((label, filled, median_f64(&new), median_f64(&old), median_f64(&base)));
        }
        Ok(rows)
    })?;
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>12} {:>8} {:>9}",
        "fill level (flows created)", "new ns", "exist ns", "base ns", "new-exist ns", "new/base", "exist/base"
    );
    for (label, filled, new, old, base) in rows {
        println!(
            "{:<34} {new:>9.1} {old:>9.1} {base:>9.1} {:>12.1} {:>7.2}x {:>8.2}x",
            format!("{label} ({filled})"),
            new - old,
            new / base,
            old / base
        );
    }
    println!(
        "(shared BPF_MAP_TYPE_HASH FLOWS, max_entries {FLOW_TABLE_SIZE}, beyond which new dsr flows go untracked; dsr TCP, method B (IQM of {calls} calls, median of {REPS} runs);\n new-exist = Maglev pick + flow insert; each measurement adds {} new flows)",
        calls * REPS
    );
    Ok(())
}
