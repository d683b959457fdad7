//! 3. Maglev build.

use std::time::Instant;

use anyhow::{Result, ensure};
use lb_userspace::plan::maglev::{self, MaglevBackend};

use crate::Sizes;
use crate::common::median_f64;

pub fn maglev_build(sizes: &Sizes) -> Result<()> {
    const SLOTS: u32 = maglev::DEFAULT_TABLE_SIZE;
    println!(
        "{:<10} {:>7} {:>9} {:>11} {:>12} {:>7}  within",
        "backends", "slots", "best ms", "median ms", "ns/slot(med)", "target"
    );
    for count in [100usize, 1000] {
        let identities: Vec<String> = (0..count).map(|i| format!("10.1.{}.{}:80", i / 256, i % 256)).collect();
        let backends: Vec<MaglevBackend> =
            identities.iter().map(|id| MaglevBackend { identity: id.as_bytes(), weight: 1 }).collect();
        let mut times = Vec::new();
        for _ in 0..sizes.maglev_runs {
            let start = Instant::now();
            let table = maglev::build(std::hint::black_box(&backends), SLOTS, 42);
            times.push(start.elapsed().as_secs_f64() * 1e3);
            ensure!(table.len() == SLOTS as usize, "maglev table has {} slots", table.len());
            std::hint::black_box(table);
        }
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median_f64(&times);
        println!(
            "{count:<10} {SLOTS:>7} {best:>9.3} {med:>11.3} {:>12.1} {:>5.1}ms  {}",
            med * 1e6 / SLOTS as f64,
            5.0,
            if med < 5.0 { "yes" } else { "NO" }
        );
    }
    println!("({} runs each, weight 1, seed 42)", sizes.maglev_runs);
    Ok(())
}
