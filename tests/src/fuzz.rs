//! A fuzzer of the XDP program through BPF_PROG_TEST_RUN: valid frames of every kind the
//! program handles (`seeds`), mutated (`mutate`), run one after the other on one program
//! whose flow and nat tables fill up, each output checked against the invariants (`oracle`):
//! never XDP_ABORTED; nothing goes out that is not a VIP flow, a reply of one or an ICMP
//! error about one; checksums right on what goes out if they were on what came in; every
//! destination a backend of the flow's VIP or the client that opened the flow; IP lengths
//! equal to the frame. A seed and a number of cases make a run repeatable.

mod frame;
mod mutate;
mod oracle;
mod seeds;
mod world;

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Result;
use fastrand::Rng;

pub use oracle::Sent;
use oracle::{Run, Violation, check};
use world::{Model, World};

use crate::packet_env::PacketEnv;
use crate::packets::{NEIGHBOURS, config_with};

/// Clients on the balancer's wire: the first five of each family have neighbour entries,
/// the last two don't (their replies are passed to the kernel to resolve).
pub const CLIENTS: &[&str] = &[
    "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "fd00::2", "fd00::3",
    "fd00::4", "fd00::5", "fd00::6", "fd00::7", "fd00::8",
];
const MORE_NEIGHBOURS: &[&str] = &[
    "10.0.0.3",
    "10.0.0.4",
    "10.0.0.5",
    "10.0.0.6",
    "fd00::3",
    "fd00::4",
    "fd00::5",
    "fd00::6",
    "10.0.1.14",
    "fd00::1:14",
];

/// The fixtures' config with `extra` in its `[balancer]` table (see `config_with`), and a
/// second backend for the nat TCP VIPs, so that a flow's backend is a choice.
pub fn fuzz_config(extra: &str) -> String {
    config_with(extra)
        .replacen(
            "address = \"10.0.1.11\"\nport = 8080\n",
            "address = \"10.0.1.11\"\nport = 8080\n[[vip.backend]]\naddress = \"10.0.1.14\"\nport = 8080\n",
            1,
        )
        .replacen(
            "address = \"fd00::1:11\"\nport = 8080\n",
            "address = \"fd00::1:11\"\nport = 8080\n[[vip.backend]]\naddress = \"fd00::1:14\"\nport = 8080\n",
            1,
        )
}

/// A broken invariant's count and its first instance.
pub struct Finding {
    pub count: u64,
    pub detail: String,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
}

/// What a run did.
#[derive(Default)]
pub struct Summary {
    pub name: String,
    pub cases: u64,
    pub verdicts: BTreeMap<u32, u64>,
    pub sent: BTreeMap<Sent, u64>,
    /// By kind of broken invariant.
    pub findings: BTreeMap<String, Finding>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let names = ["ABORTED", "DROP", "PASS", "TX", "REDIRECT"];
        let verdicts: Vec<String> = self
            .verdicts
            .iter()
            .map(|(v, n)| format!("{} {n}", names.get(*v as usize).map_or(v.to_string(), |s| s.to_string())))
            .collect();
        let sent: Vec<String> = self.sent.iter().map(|(kind, n)| format!("{kind:?} {n}")).collect();
        writeln!(
            f,
            "{}: {} cases; verdicts: {}; sent out: {}",
            self.name,
            self.cases,
            verdicts.join(", "),
            sent.join(", ")
        )?;
        writeln!(f, "  findings: {}", if self.findings.is_empty() { "none" } else { "" })?;
        for (kind, found) in &self.findings {
            writeln!(f, "  - {kind}: {} times; first: {}", found.count, found.detail)?;
            writeln!(f, "    input  {}\n    output {}", hex(&found.input), hex(&found.output))?;
        }
        Ok(())
    }
}

pub struct Fuzzer {
    env: PacketEnv,
    rng: Rng,
    world: World,
    model: Model,
    pub summary: Summary,
}

impl Fuzzer {
    /// A program with the tables of `config_toml`, in a namespace named after `tag`.
    pub fn new(tag: &str, config_toml: &str, seed: u64) -> Result<Self> {
        let neighbours: Vec<&str> = NEIGHBOURS.iter().chain(MORE_NEIGHBOURS).copied().collect();
        let env = PacketEnv::new(tag, config_toml, &neighbours)?;
        let world = World::of_config(config_toml, CLIENTS)?;
        let summary = Summary { name: format!("{tag} (seed {seed})"), ..Default::default() };
        Ok(Self { env, rng: Rng::with_seed(seed), world, model: Model::default(), summary })
    }

    /// Runs `cases` frames: six in ten mutated 1 to 3 times, half of those with their
    /// checksums set right again (so that the program sees odd headers that are otherwise valid).
    pub fn run(&mut self, cases: u64) -> Result<()> {
        for _ in 0..cases {
            let mut frame = seeds::Seeds { rng: &mut self.rng, world: &self.world, model: &self.model }.next();
            if self.rng.u8(0..10) < 6 {
                for _ in 0..self.rng.u8(1..=3) {
                    mutate::mutate(&mut self.rng, &mut frame);
                }
                if self.rng.bool() {
                    frame::fix_checksums(&mut frame);
                }
            }
            self.case(&frame)?;
        }
        Ok(())
    }

    fn case(&mut self, input: &[u8]) -> Result<()> {
        let (verdict, output) = self.env.run("xdp_lb", input)?;
        let s = &mut self.summary;
        s.cases += 1;
        *s.verdicts.entry(verdict).or_default() += 1;
        match check(&self.world, &mut self.model, &Run { input, verdict, output: &output }) {
            Ok(Some(sent)) => *s.sent.entry(sent).or_default() += 1,
            Ok(None) => {}
            Err(Violation { kind, detail }) => {
                let found = s.findings.entry(kind).or_insert_with(|| Finding {
                    count: 0,
                    detail: format!("verdict {verdict}: {detail}"),
                    input: input.to_vec(),
                    output: output.clone(),
                });
                found.count += 1;
            }
        }
        Ok(())
    }
}
