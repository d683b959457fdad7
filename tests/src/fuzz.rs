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
use lb_common::{GlobalStats, VipStats};

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

/// The fixtures' config with `keys` in its `[balancer]` table (see `config_with`), and more
/// for the program to do: a second backend for the nat TCP VIPs (a flow's backend is a
/// choice), passive health signals from the IPv4 one's replies (it speaks HTTP), and rate
/// limits on the dsr VIPs that run out within a run. Connections live an hour after their
/// last packet whatever their state, so none is over during a run: a nat port given to
/// one client flow is never another's.
pub fn fuzz_config(keys: &str) -> String {
    let slow = "fill_interval = \"1m\"";
    let timeouts = ["tcp_syn", "tcp_established", "tcp_fin", "tcp_closed", "tcp_time_wait", "udp"]
        .map(|t| format!("{t} = \"1h\"\n"))
        .concat();
    let mut config = config_with(&format!("{keys}\n[balancer.flow_timeouts]\n{timeouts}"));
    for first in ["10.0.1.11", "fd00::1:11"] {
        let second = first.replace("11", "14");
        let backend = format!("address = \"{first}\"\nport = 8080\n");
        config = add_after(&config, &backend, &format!("[[vip.backend]]\naddress = \"{second}\"\nport = 8080\n"));
    }
    config = add_after(&config, "protocol = \"tcp\"\n", "http = true\noutlier_detection = {}\n");
    let source_limit = format!("source_limit = {{ quota = 1, burst = 20, prefix_len = 32, {slow} }}\n");
    config = add_after(&config, "port = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n", &source_limit);
    let limits = format!(
        "new_flow_limit = {{ quota = 1, burst = 500, {slow} }}\npacket_limit = {{ quota = 1, burst = 1000, {slow} }}\n"
    );
    add_after(&config, "protocol = \"udp\"\nmode = \"dsr\"\n", &limits)
}

/// `text` with `added` after the first `anchor`, which must be there.
fn add_after(text: &str, anchor: &str, added: &str) -> String {
    assert!(text.contains(anchor), "the fixtures' config has no {anchor:?}");
    text.replacen(anchor, &format!("{anchor}{added}"), 1)
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
    /// The program's own counters at the end: what the cases made it do.
    pub global: GlobalStats,
    pub vips: Vec<VipStats>,
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
        writeln!(f, "  before a VIP: {:?}", self.global)?;
        let sum = |field: fn(&VipStats) -> u64| self.vips.iter().map(field).sum::<u64>();
        writeln!(
            f,
            "  VIPs: new flows {}, replies {}, icmp errors {}, rate limited {} (sources), {} (new flows), {} (packets)",
            sum(|v| v.new_flows),
            sum(|v| v.reply_packets),
            sum(|v| v.icmp_errors_forwarded),
            sum(|v| v.rate_limited_sources),
            sum(|v| v.rate_limited_new_flows),
            sum(|v| v.rate_limited_packets),
        )?;
        writeln!(
            f,
            "  tables: nat ports exhausted {}, flow table full {}, untracked dsr flows {}, reopened flows {}",
            sum(|v| v.drop_nat_ports_exhausted),
            sum(|v| v.drop_flow_table_full),
            sum(|v| v.untracked_flows),
            sum(|v| v.reopened_flows),
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
        self.summary.global = self.env.dataplane.global_stats()?;
        let vip_ids = 0..self.world.vips.len() as u32;
        self.summary.vips = vip_ids.map(|id| self.env.dataplane.vip_stats(id)).collect::<Result<_, _>>()?;
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
