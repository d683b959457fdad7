//! The soak's traffic, from the lab's client: new connections at a steady rate (one line
//! each, the client closing first), long-lived connections that exchange a line every few
//! seconds and must stay on their backend, and a DNS lookup every second. Failures are
//! kept with when they happened, so the report can tell which fault they fall in.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};

use crate::lab::{self, LB_V4, LINE_PORT, Lab, LineConnection, VIP_V4};
use crate::sites::resolve_a;

use super::DNS_NAME;

/// Threads making the new connections: a failing one waits out the lab's I/O timeout.
const WORKERS: usize = 48;
const DNS_EVERY: Duration = Duration::from_secs(1);

/// What kind of traffic a failure hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Traffic {
    NewConnection,
    LongLived,
    Dns,
    /// `lb status` asked by the sampler.
    Admin,
}

#[derive(Debug)]
pub struct Failure {
    /// Since the start of the run.
    pub at: Duration,
    pub traffic: Traffic,
    pub error: String,
}

/// What the traffic saw, shared by its threads and the sampler.
pub struct Outcomes {
    pub start: Instant,
    pub failures: Mutex<Vec<Failure>>,
    /// Successful requests by kind.
    pub ok: Mutex<BTreeMap<Traffic, u64>>,
    /// New connections answered, by backend.
    pub answered_by: Mutex<BTreeMap<String, u64>>,
    /// Connections open now: long-lived ones and new ones in flight.
    pub alive: AtomicU64,
    /// Long-lived connections opened again after one failed.
    pub reopened: AtomicU64,
}

impl Outcomes {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            failures: Mutex::default(),
            ok: Mutex::default(),
            answered_by: Mutex::default(),
            alive: AtomicU64::new(0),
            reopened: AtomicU64::new(0),
        }
    }

    pub fn record(&self, traffic: Traffic, outcome: Result<()>) {
        match outcome {
            Ok(()) => *self.ok.lock().expect("ok").entry(traffic).or_default() += 1,
            Err(e) => self.failures.lock().expect("failures").push(Failure {
                at: self.start.elapsed(),
                traffic,
                error: format!("{e:#}"),
            }),
        }
    }
}

/// The running traffic: new connections stop by themselves after the run's duration,
/// the long-lived connections and DNS lookups when [`Self::stop`] is called.
pub struct Load {
    new_connections: Vec<JoinHandle<()>>,
    steady: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

fn line_vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT)
}

impl Load {
    pub fn start(
        lab: &Lab,
        outcomes: &Arc<Outcomes>,
        duration: Duration,
        rate: f64,
        long_lived: usize,
        line_every: Duration,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (opened, opened_rx) = std::sync::mpsc::channel();
        let (o, s) = (outcomes.clone(), stop.clone());
        let mut steady =
            vec![lab.client.spawn(move || long_lived_connections(&o, &s, long_lived, line_every, &opened))?];
        // The run's clock starts once every long-lived connection is open.
        opened_rx.recv().map_err(|_| anyhow!("the long-lived connections never opened"))??;
        let (o, s) = (outcomes.clone(), stop.clone());
        steady.push(lab.client.spawn(move || dns_lookups(&o, &s))?);
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let new_connections = (0..WORKERS)
            .map(|_| {
                let (o, next) = (outcomes.clone(), next.clone());
                lab.client.spawn(move || new_connections(&o, &next, start, duration, rate))
            })
            .collect::<Result<_>>()?;
        Ok(Self { new_connections, steady, stop })
    }

    /// Waits for the new connections to end (the run's duration).
    pub fn wait_new_connections(&mut self) -> Result<()> {
        for worker in self.new_connections.drain(..) {
            worker.join().map_err(|_| anyhow!("a load worker panicked"))?;
        }
        Ok(())
    }

    pub fn stop(mut self) -> Result<()> {
        self.wait_new_connections()?;
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.steady.drain(..) {
            thread.join().map_err(|_| anyhow!("a load thread panicked"))?;
        }
        Ok(())
    }
}

/// A worker: takes the next due connection until the run is over.
fn new_connections(outcomes: &Outcomes, next: &AtomicU64, start: Instant, duration: Duration, rate: f64) {
    loop {
        let due = Duration::from_secs_f64(next.fetch_add(1, Ordering::Relaxed) as f64 / rate);
        if due >= duration || lab::interrupted().is_err() {
            return;
        }
        std::thread::sleep((start + due).saturating_duration_since(Instant::now()));
        outcomes.alive.fetch_add(1, Ordering::Relaxed);
        let answer = LineConnection::open(line_vip()).and_then(|mut conn| conn.ask());
        outcomes.alive.fetch_sub(1, Ordering::Relaxed);
        let outcome = answer.map(|backend| {
            *outcomes.answered_by.lock().expect("answered_by").entry(backend).or_default() += 1;
        });
        outcomes.record(Traffic::NewConnection, outcome);
    }
}

/// A long-lived connection and the backend that answered it first.
struct LongLived {
    conn: LineConnection,
    backend: String,
}

impl LongLived {
    fn open() -> Result<Self> {
        let mut conn = LineConnection::open(line_vip())?;
        let backend = conn.ask()?;
        Ok(Self { conn, backend })
    }

    /// One line: answered by the backend it started on.
    fn exchange(&mut self) -> Result<()> {
        let answer = self.conn.ask()?;
        ensure!(answer == self.backend, "a connection on {} was answered by {answer}", self.backend);
        Ok(())
    }
}

/// `n` connections kept open, each exchanging a line every `every`; one that fails is
/// opened again (and counted). Reports on `opened` once all are open.
fn long_lived_connections(
    outcomes: &Outcomes,
    stop: &AtomicBool,
    n: usize,
    every: Duration,
    opened: &std::sync::mpsc::Sender<Result<()>>,
) {
    let conns: Result<Vec<LongLived>> = (0..n).map(|_| LongLived::open()).collect();
    let mut conns = match conns {
        Ok(conns) => {
            let _ = opened.send(Ok(()));
            conns
        }
        Err(e) => {
            let _ = opened.send(Err(e.context("opening the long-lived connections")));
            return;
        }
    };
    outcomes.alive.fetch_add(n as u64, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) && lab::interrupted().is_ok() {
        // Spread over the interval, so the lines don't all come at once.
        for conn in &mut conns {
            std::thread::sleep(every / n as u32);
            let outcome = conn.exchange();
            if outcome.is_err() {
                outcomes.reopened.fetch_add(1, Ordering::Relaxed);
                if let Ok(fresh) = LongLived::open() {
                    *conn = fresh;
                }
            }
            outcomes.record(Traffic::LongLived, outcome);
        }
    }
    outcomes.alive.fetch_sub(n as u64, Ordering::Relaxed);
}

/// A lookup of the zone's name every second, as a stub resolver asks.
fn dns_lookups(outcomes: &Outcomes, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) && lab::interrupted().is_ok() {
        let outcome = resolve_a(LB_V4, DNS_NAME, DNS_EVERY).and_then(|(addresses, _)| {
            ensure!(addresses == [VIP_V4], "{DNS_NAME} answered {addresses:?}");
            Ok(())
        });
        outcomes.record(Traffic::Dns, outcome);
        std::thread::sleep(DNS_EVERY);
    }
}
