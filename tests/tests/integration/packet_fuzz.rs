//! Fuzzing the packet path: random and mutated frames through BPF_PROG_TEST_RUN, every
//! output checked against the invariants of `lb_tests::fuzz`. A fixed seed and a bounded
//! number of cases by default; `LB_FUZZ_CASES` and `LB_FUZZ_SEED` for long runs.

use anyhow::Result;
use lb_tests::fuzz::{Fuzzer, Sent, Summary, fuzz_config};
use lb_tests::packets::{XDP_DROP, XDP_PASS, XDP_TX};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

fn fuzz(tag: &str, config: &str, seed: u64, cases: u64) -> Result<Summary> {
    let mut fuzzer = Fuzzer::new(tag, config, seed)?;
    fuzzer.run(cases)?;
    Ok(fuzzer.summary)
}

#[test]
fn random_and_mutated_frames_keep_the_invariants() -> Result<()> {
    let cases = env_number("LB_FUZZ_CASES", 40_000);
    let seed = env_number("LB_FUZZ_SEED", 16);
    // A quarter against small tables (32 flows, 16 nat ports), where entries are taken over.
    let small = cases / 4;
    let summaries = [
        fuzz("lfzbig", &fuzz_config(""), seed, cases - small)?,
        fuzz("lfzsmall", &fuzz_config("flow_table_size = 32\nnat_port_max = 20015"), seed + 1, small)?,
    ];
    for summary in &summaries {
        println!("{summary}");
    }
    for s in &summaries {
        assert!(s.findings.is_empty(), "{}: {} kinds of broken invariants (see above)", s.name, s.findings.len());
        for verdict in [XDP_DROP, XDP_PASS, XDP_TX] {
            assert!(s.verdicts.contains_key(&verdict), "{}: no case had verdict {verdict}", s.name);
        }
        for kind in [Sent::Forwarded, Sent::Reply, Sent::IcmpError] {
            assert!(s.sent.get(&kind).copied().unwrap_or(0) > 0, "{}: nothing {kind:?} went out", s.name);
        }
    }
    Ok(())
}
