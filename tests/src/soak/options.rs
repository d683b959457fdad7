//! The soak's knobs: how long, how much load, how often each fault, how big the floods.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

#[derive(Clone, Debug)]
pub struct Options {
    /// How long the load runs.
    pub duration: Duration,
    /// New connections per second, one request each.
    pub rate: f64,
    /// Connections kept open for the whole run.
    pub long_lived: usize,
    /// How often each long-lived connection exchanges a line.
    pub line_every: Duration,
    /// The next fault of the schedule starts this often.
    pub fault_every: Duration,
    /// How often `lb status` and /proc of `lb` are sampled.
    pub sample_every: Duration,
    /// Idle TCP connections to the admin port per admin flood.
    pub admin_flood: usize,
    /// Malformed DNS datagrams per DNS flood.
    pub dns_udp_flood: usize,
    /// TCP connections per DNS flood, each sending garbage.
    pub dns_tcp_flood: usize,
    /// Ports of the nat range (`nat_port_min`..=`nat_port_max`).
    pub nat_ports: u16,
    /// `tcp_established` of the flow timeouts: the long-lived connections must outlive
    /// many of these by their traffic alone.
    pub established_timeout: Duration,
}

impl Options {
    /// `minutes` of the default soak: 100 new connections/s, 32 long-lived connections, a
    /// fault every 20 s.
    pub fn soak(minutes: f64) -> Self {
        Self {
            duration: Duration::from_secs_f64(minutes * 60.0),
            rate: 100.0,
            long_lived: 32,
            line_every: Duration::from_secs(3),
            fault_every: Duration::from_secs(20),
            sample_every: Duration::from_secs(10),
            admin_flood: 200,
            dns_udp_flood: 2000,
            dns_tcp_flood: 50,
            nat_ports: 1000,
            established_timeout: Duration::from_secs(10),
        }
    }

    /// The short soak of `cargo xtask test`: time compressed so that every fault comes at
    /// least once in about a minute, and a nat range small enough that every port is used
    /// many times.
    pub fn short() -> Self {
        Self {
            duration: Duration::from_secs(60),
            line_every: Duration::from_secs(1),
            fault_every: Duration::from_secs(7),
            sample_every: Duration::from_secs(3),
            established_timeout: Duration::from_secs(4),
            nat_ports: 200,
            ..Self::soak(1.0)
        }
    }

    /// `--soak MINUTES` and the options after it (see [`USAGE`]).
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut args = args.iter();
        let minutes = args.next().context("--soak needs MINUTES")?.parse().context("--soak MINUTES")?;
        let mut opts = Self::soak(minutes);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            let secs = |v: &String| v.parse().map(Duration::from_secs_f64).with_context(|| format!("{arg} {v}"));
            match arg.as_str() {
                "--rate" => opts.rate = value()?.parse().context("--rate")?,
                "--long-lived" => opts.long_lived = value()?.parse().context("--long-lived")?,
                "--line-every" => opts.line_every = secs(value()?)?,
                "--fault-every" => opts.fault_every = secs(value()?)?,
                "--admin-flood" => opts.admin_flood = value()?.parse().context("--admin-flood")?,
                "--dns-udp-flood" => opts.dns_udp_flood = value()?.parse().context("--dns-udp-flood")?,
                "--dns-tcp-flood" => opts.dns_tcp_flood = value()?.parse().context("--dns-tcp-flood")?,
                "--nat-ports" => opts.nat_ports = value()?.parse().context("--nat-ports")?,
                other => bail!("unknown soak argument {other:?}\n{USAGE}"),
            }
        }
        Ok(opts)
    }
}

pub const USAGE: &str = "lb-drill --soak MINUTES [--rate N] [--long-lived N] [--line-every SECS] [--fault-every SECS] \
[--admin-flood N] [--dns-udp-flood N] [--dns-tcp-flood N] [--nat-ports N]";
