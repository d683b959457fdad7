//! The run's traffic: HTTP GETs at a steady rate through both VIPs from the client, a DNS
//! query of [`DNS_NAME`] a second, and one fault in the middle: a backend's servers stopped
//! (connections refused, so health, outlier ejection and the levels move), then restarted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lb_tests::lab::{Backend, HTTP_PORT, LB_V4, Netns, VIP_V4, http_get};
use lb_tests::metrics_lab::{DNS_NAME, NAT_VIP};
use lb_tests::sites::resolve_a;

/// Threads sending the HTTP requests: a request to a backend that vanished may wait out
/// the lab's I/O timeout, the others keep the rate meanwhile.
const WORKERS: u32 = 8;
const DNS_EVERY: Duration = Duration::from_secs(1);

/// When things happen, from the start of the traffic.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub total: Duration,
    pub fault_from: Duration,
    pub fault_until: Duration,
    /// HTTP requests per second, over both VIPs.
    pub rate: u32,
}

/// What the traffic got back.
#[derive(Debug, Default)]
pub struct Tally {
    pub http_ok: AtomicU64,
    pub http_failed: AtomicU64,
    pub dns_ok: AtomicU64,
    pub dns_failed: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("{what}: {error:#}")]
    Lab { what: &'static str, error: anyhow::Error },
}

fn lab_error(what: &'static str) -> impl FnOnce(anyhow::Error) -> TrafficError {
    move |error| TrafficError::Lab { what, error }
}

/// Runs the traffic from `client` for `schedule.total`, stopping `victim`'s servers during
/// the fault; returns once every request has ended.
pub fn drive(client: &Netns, victim: &mut Backend, schedule: Schedule) -> Result<Arc<Tally>, TrafficError> {
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let end = start + schedule.total;
    let interval = Duration::from_secs_f64(f64::from(WORKERS) / f64::from(schedule.rate.max(1)));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let vip = if worker % 2 == 0 { NAT_VIP } else { VIP_V4 };
        let tally = tally.clone();
        let requests = move || {
            paced(end, interval, || {
                count(http_get(SocketAddr::from((vip, HTTP_PORT))), &tally.http_ok, &tally.http_failed)
            })
        };
        workers.push(client.spawn(requests).map_err(lab_error("starting a client thread"))?);
    }
    let dns_tally = tally.clone();
    let dns = move || {
        paced(end, DNS_EVERY, || {
            count(resolve_a(LB_V4, DNS_NAME, Duration::from_secs(1)), &dns_tally.dns_ok, &dns_tally.dns_failed)
        })
    };
    workers.push(client.spawn(dns).map_err(lab_error("starting the DNS client thread"))?);

    std::thread::sleep((start + schedule.fault_from).saturating_duration_since(Instant::now()));
    victim.stop();
    println!("{:>5.1} s: stopped the servers of backend {}", start.elapsed().as_secs_f64(), victim.spec.name);
    std::thread::sleep((start + schedule.fault_until).saturating_duration_since(Instant::now()));
    victim.restart().map_err(lab_error("restarting the backend's servers"))?;
    println!("{:>5.1} s: restarted them", start.elapsed().as_secs_f64());
    for worker in workers {
        worker.join().map_err(|_| TrafficError::Lab { what: "a client thread", error: anyhow::anyhow!("panicked") })?;
    }
    Ok(tally)
}

/// Calls `send` every `interval` until `end`; a slot missed while a call waited is skipped
/// rather than made up for in a burst.
fn paced(end: Instant, interval: Duration, mut send: impl FnMut()) {
    let mut due = Instant::now();
    while due < end {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        send();
        due += interval;
        if due + interval < Instant::now() {
            due = Instant::now();
        }
    }
}

fn count<T>(result: anyhow::Result<T>, ok: &AtomicU64, failed: &AtomicU64) {
    let counter = if result.is_ok() { ok } else { failed };
    counter.fetch_add(1, Ordering::Relaxed);
}
