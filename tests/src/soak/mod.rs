//! The soak mode of the fault drill (`lb-drill --soak MINUTES`): hours of ordinary
//! traffic, compressed into minutes, with small faults on a schedule, watching for what
//! only time shows: nat ports not given back, memory or descriptors that grow, requests
//! that fail when nothing should make them.
//!
//! One balancer (nat, a VIP on the lab's line service, a nat range of `--nat-ports` ports
//! and short flow timeouts, so ports are reused many times) over three backends; its
//! controller also serves the admin API on 10.0.0.1:9180 and DNS (a static zone) on
//! 10.0.0.1:53. The client makes `--rate` new connections per second (one line each, the
//! client closing first), keeps `--long-lived` connections open that exchange a line every
//! `--line-every` seconds and must stay on their backend, and looks the zone's name up
//! every second. Every `--fault-every` seconds the next fault of [`faults::SCHEDULE`]
//! runs. [`report::Report`] says what happened and which targets were missed.

mod faults;
mod load;
mod options;
mod report;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lb_userspace::api::status::Status;

use self::faults::{Applied, FaultRun};
pub use self::faults::{Fault, SCHEDULE};
pub use self::load::Traffic;
use self::load::{Load, Outcomes};
pub use self::options::{Options, USAGE};
pub use self::report::Report;
use self::report::{ProcSample, Sample};
use crate::lab::{LB_V4, LINE_PORT, Lab, LabConfig, LbProcess, VIP_V4, VipSpec, backends_across, lb_config};

pub const VIP_NAME: &str = "line";
pub const DNS_NAME: &str = "www.example.test";
pub const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(LB_V4), 9180);
pub const DNS: SocketAddr = SocketAddr::new(IpAddr::V4(LB_V4), 53);
const TOKEN: &str = "soak-admin-token-0123";
const NAT_PORT_MIN: u16 = 20000;
/// How often the soak looks at its clock, floods and samples.
const TICK: Duration = Duration::from_millis(100);
/// After the load: long enough for every guard (`tcp_time_wait` 1 s, `tcp_closed`
/// 200 ms) to pass and a sweep of the flow tables (every second) to see it.
const SETTLE: Duration = Duration::from_secs(4);

/// The controller's config, the first backend with weight `first_weight`.
fn config(lab: &Lab, opts: &Options, first_weight: u32) -> LabConfig {
    let backends = (0..lab.backends.len()).map(|i| (i, if i == 0 { first_weight } else { 1 })).collect();
    let vip = VipSpec::new(VIP_NAME, IpAddr::V4(VIP_V4), LINE_PORT, "tcp", "nat", backends);
    lb_config(lab, &[vip])
        .balancer(&format!(
            "nat_port_min = {NAT_PORT_MIN}\nnat_port_max = {}\n[flow_timeouts]\ntcp_closed = \"200ms\"\ntcp_time_wait = \"1s\"\ntcp_established = \"{}ms\"",
            NAT_PORT_MIN + opts.nat_ports - 1,
            opts.established_timeout.as_millis()
        ))
        .merge(&format!(
            "[admin]\nlisten = \"{ADMIN}\"\ntoken = \"{TOKEN}\"\n\n[dns]\nlisten = [\"{DNS}\"]\n\n\
             [[dns.zone]]\norigin = \"example.test.\"\nns = [\"ns1.example.test.\"]\n\n\
             [[dns.zone.record]]\nname = \"ns1\"\ntype = \"A\"\ndata = \"{LB_V4}\"\n\n\
             [[dns.zone.record]]\nname = \"www\"\ntype = \"A\"\ndata = \"{VIP_V4}\"\n"
        ))
}

/// Runs the soak: builds the lab, runs load and faults for `opts.duration`, and reports.
pub fn run(opts: &Options) -> Result<Report> {
    let lab = Lab::build("lsk", backends_across(1, 1, 3), false)?;
    // The client reuses its ports as soon as TIME_WAIT allows, as busy clients do.
    lab.client.sysctl("net.ipv4.tcp_tw_reuse=1")?;
    let lb = LbProcess::start(&lab, &config(&lab, opts, 1))?;
    println!(
        "soak: {:.0} s, {} new connections/s, {} long-lived (a line every {:.1} s), a fault every {:.0} s, nat range {} ports",
        opts.duration.as_secs_f64(),
        opts.rate,
        opts.long_lived,
        opts.line_every.as_secs_f64(),
        opts.fault_every.as_secs_f64(),
        opts.nat_ports
    );
    let outcomes = Arc::new(Outcomes::new());
    let mut load = Load::start(&lab, &outcomes, opts.duration, opts.rate, opts.long_lived, opts.line_every)?;
    let start = outcomes.start;
    let mut soak = Soak {
        lab: &lab,
        lb: &lb,
        opts,
        outcomes: &outcomes,
        start,
        samples: Vec::new(),
        faults: Vec::new(),
        rss_before_kib: 0,
    };
    soak.schedule()?;
    load.wait_new_connections()?;
    std::thread::sleep(SETTLE);
    let last = soak.sample()?.context("lb status failed at the end")?;
    let drops = report::drops(&status(&lb)?);
    load.stop()?;
    let Soak { samples, faults, .. } = soak;
    let outcomes = Arc::into_inner(outcomes).context("the load still holds its outcomes")?;
    let first = *samples.first().context("no sample taken")?;
    Ok(Report {
        duration: start.elapsed(),
        nat_range: opts.nat_ports,
        faults,
        failures: outcomes.failures.into_inner().expect("failures"),
        ok: outcomes.ok.into_inner().expect("ok"),
        answered_by: outcomes.answered_by.into_inner().expect("answered_by"),
        reopened: outcomes.reopened.into_inner(),
        samples,
        first,
        last,
        drops,
    })
}

fn status(lb: &LbProcess) -> Result<Status> {
    serde_json::from_str(&lb.cli(&["status", "--json"])?).context("decoding lb status --json")
}

/// The run under way: what it has seen so far.
struct Soak<'a> {
    lab: &'a Lab,
    lb: &'a LbProcess,
    opts: &'a Options,
    outcomes: &'a Outcomes,
    start: Instant,
    samples: Vec<Sample>,
    faults: Vec<FaultRun>,
    /// `lb`'s resident memory just before the fault under way.
    rss_before_kib: u64,
}

impl Soak<'_> {
    /// Faults on the schedule and samples, until the load's duration is over and the last
    /// flood has ended.
    fn schedule(&mut self) -> Result<()> {
        let (mut next_fault, mut next_sample) = (self.opts.fault_every, self.opts.sample_every);
        let mut flood = None;
        while self.start.elapsed() < self.opts.duration || flood.is_some() {
            crate::lab::interrupted()?;
            let now = self.start.elapsed();
            if now >= next_sample {
                self.sample()?;
                next_sample += self.opts.sample_every;
            }
            if let Some((fault, from, handle)) = flood.take_if(|(_, _, h): &mut (_, _, JoinHandle<_>)| h.is_finished())
            {
                self.ran(FaultRun::new(fault, from, self.start, faults::finish(handle)))?;
            }
            // Faults stop a fault-interval before the end, so the last one's failures show
            // and the settled end is not in one; a flood runs to its end first.
            if flood.is_none() && now >= next_fault && now + self.opts.fault_every <= self.opts.duration {
                let from = Instant::now();
                self.rss_before_kib = ProcSample::read(self.lb.pid())?.rss_kib;
                match faults::apply(self.faults.len(), self.lab, self.lb, self.opts)? {
                    (fault, Applied::Done(note)) => self.ran(FaultRun::new(fault, from, self.start, note))?,
                    (fault, Applied::Running(handle)) => flood = Some((fault, from, handle)),
                }
                next_fault += self.opts.fault_every;
            }
            std::thread::sleep(TICK);
        }
        Ok(())
    }

    /// Keeps a fault that ran with what it did to `lb`'s memory, and says so.
    fn ran(&mut self, mut run: FaultRun) -> Result<()> {
        let rss_kib = ProcSample::read(self.lb.pid())?.rss_kib;
        run.rss_growth_kib = rss_kib as i64 - self.rss_before_kib as i64;
        println!(
            "{:>7.1} s  {:?}: {} (lb's RSS {rss_kib} KiB, {:+} KiB)",
            run.from.as_secs_f64(),
            run.fault,
            run.note,
            run.rss_growth_kib
        );
        self.faults.push(run);
        Ok(())
    }

    /// Looks at `lb status` and /proc of `lb`; a status that fails is a failed admin
    /// request (no sample).
    fn sample(&mut self) -> Result<Option<Sample>> {
        let status = status(self.lb);
        let ok = status.as_ref().map(|_| ()).map_err(|e| anyhow::anyhow!("lb status: {e:#}"));
        self.outcomes.record(Traffic::Admin, ok);
        let Ok(status) = status else { return Ok(None) };
        let alive = self.outcomes.alive.load(std::sync::atomic::Ordering::Relaxed);
        let sample = Sample::new(self.start.elapsed(), &status, alive, ProcSample::read(self.lb.pid())?);
        self.samples.push(sample);
        Ok(Some(sample))
    }
}
