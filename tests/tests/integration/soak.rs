//! The short soak (`lb_tests::soak` with `Options::short`): a minute of new and long-lived
//! connections and DNS lookups through a nat VIP with a 200-port range, while every fault
//! of the schedule (neighbour flush, reload, drain, undrain, admin flood, DNS flood) runs
//! at least once; it must meet the soak's targets.

use anyhow::Result;
use lb_tests::soak::{self, Options, SCHEDULE, Traffic};

#[test]
fn a_short_soak_with_every_fault_meets_the_targets() -> Result<()> {
    let opts = Options::short();
    let report = soak::run(&opts)?;
    report.print();
    for fault in SCHEDULE {
        assert!(report.faults.iter().any(|f| f.fault == fault), "{fault:?} never ran: {:?}", report.faults.len());
    }
    let failed = |traffic| report.failures.iter().filter(|f| f.traffic == traffic).count() as u64;
    let made = report.ok.get(&Traffic::NewConnection).copied().unwrap_or(0) + failed(Traffic::NewConnection);
    let due = (opts.rate * opts.duration.as_secs_f64()) as u64;
    assert_eq!(made, due, "every due connection was made");
    // Every nat port of every backend taken several times over.
    let ports = u64::from(opts.nat_ports) * report.answered_by.len() as u64;
    assert!(made > 5 * ports, "{made} connections through {ports} nat ports");
    let lines = report.ok.get(&Traffic::LongLived).copied().unwrap_or(0);
    let rounds = opts.duration.as_secs_f64() / opts.line_every.as_secs_f64();
    assert!(lines as f64 >= 0.9 * rounds * opts.long_lived as f64, "{lines} lines on the long-lived connections");
    assert!(report.ok.get(&Traffic::Dns).copied().unwrap_or(0) > 0, "no DNS lookup answered");
    let misses = report.misses();
    assert!(misses.is_empty(), "targets missed:\n{}", misses.join("\n"));
    Ok(())
}
