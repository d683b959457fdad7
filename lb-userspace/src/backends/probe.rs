//! Active health checks: one tokio task per (VIP, backend), each on its own timer, so
//! thousands of backends are checked from one controller and a slow backend only delays
//! its own checks. Results go to the controller loop as events; thresholds are applied
//! there (`health::CheckStatus`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::config::{HealthCheckConfig, HealthCheckKind};

/// What a check is about: the VIP's name and the backend's address.
pub type TargetKey = (String, SocketAddr);

/// One backend to check, as the VIP's `health_check` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: TargetKey,
    pub check: HealthCheckConfig,
    /// For the encapsulated modes: the check goes to the VIP through the backend's tunnel.
    pub through: Option<Tunnel>,
}

/// A check through a backend's tunnel: a connection to the VIP from the balancer's own
/// address, whose socket mark routes it to the tc program that encapsulates it for the
/// backend (see `plan::check_tunnels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// The VIP's address and the port checked.
    pub vip: SocketAddr,
    /// The balancer's own address of the VIP's family.
    pub source: IpAddr,
    pub mark: u32,
}

/// How one backend is checked.
type Check = (HealthCheckConfig, Option<Tunnel>);

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub key: TargetKey,
    pub outcome: Result<(), CheckFailure>,
}

/// Why a check failed at the backend's end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    /// Connecting, sending the request or reading the answer failed (refused, reset...).
    #[error("{step}: {message}")]
    Io { step: &'static str, message: String },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("not an HTTP status line: {0:?}")]
    NotHttp(String),
    /// An HTTP status the check does not expect.
    #[error("status {0}")]
    Status(u16),
}

/// The running checks.
pub struct Prober {
    results: UnboundedSender<CheckResult>,
    running: BTreeMap<TargetKey, (Check, JoinHandle<()>)>,
}

impl Prober {
    pub fn new(results: UnboundedSender<CheckResult>) -> Self {
        Self { results, running: BTreeMap::new() }
    }

    /// Checks exactly `targets` from now on: new ones start, removed ones stop, and ones
    /// whose check changed restart; the others go on undisturbed.
    pub fn set_targets(&mut self, targets: Vec<Target>) {
        let wanted: BTreeMap<TargetKey, Check> = targets.into_iter().map(|t| (t.key, (t.check, t.through))).collect();
        self.running.retain(|key, (check, task)| {
            let keep = wanted.get(key) == Some(check);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, check) in wanted {
            if !self.running.contains_key(&key) {
                let task = tokio::spawn(check_forever(key.clone(), check.clone(), self.results.clone()));
                self.running.insert(key, (check, task));
            }
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

/// Checks one backend every interval (plus jitter) until aborted. The first check comes
/// after a random part of the interval, so checks of many backends don't start in step.
async fn check_forever(key: TargetKey, (check, through): Check, results: UnboundedSender<CheckResult>) {
    tokio::time::sleep(random_part_of(check.interval)).await;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(check.timeout, check_once(key.1, &check, through)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Backend(CheckFailure::TimedOut(check.timeout))),
        };
        if let Some(outcome) = reported(&key, outcome)
            && results.send(CheckResult { key: key.clone(), outcome }).is_err()
        {
            return;
        }
        tokio::time::sleep_until(started + check.interval + random_part_of(check.jitter)).await;
    }
}

fn random_part_of(span: Duration) -> Duration {
    span.mul_f64(fastrand::f64())
}

/// Why a check failed: the backend's fault, or the balancer's own (out of file
/// descriptors, buffers, memory or local ports: EADDRNOTAVAIL at connect, EADDRINUSE at a
/// bind), which says nothing about the backend.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Backend(CheckFailure),
    Local(String),
}

impl Failure {
    fn of_io(step: &'static str, e: std::io::Error) -> Self {
        let local = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL | libc::EADDRINUSE)
        );
        if local {
            Failure::Local(format!("{step}: {e}"))
        } else {
            Failure::Backend(CheckFailure::Io { step, message: e.to_string() })
        }
    }
}

/// Checks that failed for a local reason since start, over every prober of the process.
static LOCAL_FAILURES: AtomicU64 = AtomicU64::new(0);
/// When a local failure was last logged.
static LOCAL_FAILURE_LOGGED: Mutex<Option<Instant>> = Mutex::new(None);
/// At most one log line about local failures per this span.
const LOCAL_FAILURE_LOG_SPAN: Duration = Duration::from_secs(10);

/// Health checks that failed for a local reason (not counted against their backends).
pub fn local_failures() -> u64 {
    LOCAL_FAILURES.load(Ordering::Relaxed)
}

/// What a check reports to the controller loop: nothing for a local failure, which is
/// counted and logged (rate-limited) instead.
fn reported(key: &TargetKey, outcome: Result<(), Failure>) -> Option<Result<(), CheckFailure>> {
    match outcome {
        Ok(()) => Some(Ok(())),
        Err(Failure::Backend(why)) => Some(Err(why)),
        Err(Failure::Local(why)) => {
            let total = LOCAL_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
            let mut logged = LOCAL_FAILURE_LOGGED.lock().unwrap_or_else(|e| e.into_inner());
            if logged.is_none_or(|at| at.elapsed() >= LOCAL_FAILURE_LOG_SPAN) {
                *logged = Some(Instant::now());
                tracing::error!(
                    vip = %key.0, backend = %key.1, reason = %why, total,
                    "health check failed for a local reason: not counted against the backend (see lb_health_check_local_failures_total)"
                );
            }
            None
        }
    }
}

/// One check: a TCP connect (to the backend, or to the VIP through its tunnel), and for
/// `http` a GET whose status must be expected.
async fn check_once(backend: SocketAddr, check: &HealthCheckConfig, through: Option<Tunnel>) -> Result<(), Failure> {
    let (addr, stream) = match through {
        None => {
            let addr = SocketAddr::new(backend.ip(), check.port.unwrap_or(backend.port()));
            (addr, TcpStream::connect(addr).await)
        }
        Some(tunnel) => (tunnel.vip, connect_through(tunnel).await),
    };
    let mut stream = stream.map_err(|e| Failure::of_io("connect", e))?;
    if check.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health-check\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| Failure::of_io("sending the request", e))?;
    // Only the status line matters; the rest of the response is not read.
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .await
        .map_err(|e| Failure::of_io("reading the status line", e))?;
    let status = parse_status_line(&status_line)
        .ok_or_else(|| Failure::Backend(CheckFailure::NotHttp(status_line.trim_end().to_owned())))?;
    if check.expected_statuses.iter().any(|r| r.contains(status)) {
        Ok(())
    } else {
        Err(Failure::Backend(CheckFailure::Status(status)))
    }
}

/// A connection to the VIP from the balancer's own address, marked for the backend's tunnel.
/// Every check of a VIP's backends goes between the same two addresses, so they share the
/// local ports: the port is chosen at connect (for the 4-tuple, not at bind for the
/// address alone), and the connection ends with a reset, leaving no port in TIME_WAIT.
async fn connect_through(tunnel: Tunnel) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{setsockopt, sockopt};
    let socket = if tunnel.vip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    setsockopt(&socket, sockopt::Mark, &tunnel.mark)?;
    setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)?;
    setsockopt(&socket, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 })?;
    socket.bind(SocketAddr::new(tunnel.source, 0))?;
    socket.connect(tunnel.vip).await
}

/// The status code of an HTTP/1 status line (`HTTP/1.1 200 OK`).
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_ascii_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok().filter(|s| (100..=599).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatusRange;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn http_check() -> HealthCheckConfig {
        HealthCheckConfig {
            kind: HealthCheckKind::Http,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            jitter: Duration::ZERO,
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            port: None,
            path: "/healthz".into(),
            host: Some("svc.example".into()),
            expected_statuses: vec![StatusRange { from: 200, to: 299 }],
        }
    }

    /// A loopback HTTP server answering every connection with `status`; returns its
    /// address and the first request it received.
    async fn server(status: &'static str) -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut first = Some(tx);
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if let Some(tx) = first.take() {
                    let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                let _ = stream.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        (addr, rx)
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status_line("HTTP/2 200\r\n"), None);
        assert_eq!(parse_status_line("HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[tokio::test]
    async fn http_check_sends_path_and_host_and_expects_the_status() {
        let (addr, request) = server("204 No Content").await;
        assert_eq!(check_once(addr, &http_check(), None).await, Ok(()));
        let request = request.await.unwrap();
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\nHost: svc.example\r\n"), "{request}");
        let (addr, _) = server("503 Service Unavailable").await;
        assert_eq!(check_once(addr, &http_check(), None).await, Err(Failure::Backend(CheckFailure::Status(503))));
    }

    #[tokio::test]
    async fn tcp_check_needs_only_a_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let check = HealthCheckConfig { kind: HealthCheckKind::Tcp, ..http_check() };
        assert_eq!(check_once(addr, &check, None).await, Ok(()));
        drop(listener);
        assert!(matches!(
            check_once(addr, &check, None).await,
            Err(Failure::Backend(CheckFailure::Io { step: "connect", .. }))
        ));
    }

    #[test]
    fn local_failures_are_counted_and_never_reported_against_the_backend() {
        let key = ("web".to_owned(), "10.0.1.1:80".parse().unwrap());
        let before = local_failures();
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EADDRNOTAVAIL, libc::EADDRINUSE] {
            let failure = Failure::of_io("connect", std::io::Error::from_raw_os_error(errno));
            assert_eq!(reported(&key, Err(failure)), None, "errno {errno}");
        }
        assert!(local_failures() >= before + 5);
        let refused = Failure::of_io("connect", std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(matches!(reported(&key, Err(refused)), Some(Err(CheckFailure::Io { step: "connect", .. }))));
    }

    #[tokio::test]
    async fn prober_reports_each_target_on_its_own_timer_and_stops_removed_ones() {
        let (ok, _) = server("200 OK").await;
        // A backend that accepts but never answers: its checks time out without holding up the other's.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let slow = silent.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut prober = Prober::new(tx);
        let target = |addr| Target { key: ("web".to_owned(), addr), check: http_check(), through: None };
        prober.set_targets(vec![target(ok), target(slow)]);
        let (mut passes, mut failures) = (0, 0);
        while passes < 4 || failures < 1 {
            let result = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            match result.key.1 {
                a if a == ok => passes += result.outcome.map(|_| 1).unwrap(),
                _ => failures += result.outcome.map(|_| 0).unwrap_or(1),
            }
        }
        prober.set_targets(vec![target(ok)]);
        assert_eq!(prober.running.len(), 1);
        drop(silent);
    }
}
