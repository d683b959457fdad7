//! Prometheus itself (Debian's `prometheus`), run in the balancer's network namespace with
//! a generated config that scrapes `lb`'s admin /metrics every second, its storage in a
//! temp dir; asked over its HTTP API. Dropping it kills the process (by its PID) and
//! removes the storage.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lb_tests::lab::Netns;

/// How long Prometheus may take to answer `/-/ready` after its start.
const READY_WITHIN: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("setting up Prometheus's files or namespace: {0}")]
    Setup(String),
    #[error("starting prometheus (Debian package prometheus; scripts/setup.sh installs it): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("prometheus exited before it was ready ({0}); its log: {1}")]
    Exited(std::process::ExitStatus, String),
    #[error("prometheus was not ready within {READY_WITHIN:?}")]
    NotReady,
    #[error("asking Prometheus for {path}: {error}")]
    Http { path: String, error: String },
}

/// The running Prometheus, listening on `addr` inside `netns` (borrowed: it
/// must stop before the lab's namespace goes).
pub struct Prometheus<'lab> {
    child: Child,
    addr: SocketAddr,
    netns: &'lab Netns,
    dir: tempfile::TempDir,
}

/// The config: one job `lb` (the dashboard's `up{job="lb"}`) scraping `target`.
fn config(target: SocketAddr) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: lb\n    static_configs:\n      - targets: [\"{target}\"]\n"
    )
}

impl<'lab> Prometheus<'lab> {
    /// Starts Prometheus in `netns`, scraping `target` there, and waits until it is ready.
    pub fn start(netns: &'lab Netns, target: SocketAddr) -> Result<Self, PrometheusError> {
        let setup = |e: &dyn std::fmt::Display| PrometheusError::Setup(e.to_string());
        let dir = tempfile::Builder::new().prefix("lb-panels-prometheus").tempdir().map_err(|e| setup(&e))?;
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config(target)).map_err(|e| setup(&e))?;
        let port = netns.run(free_port).map_err(|e| setup(&e))?.map_err(|e| setup(&e))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| setup(&e))?;
        // If this program dies without running destructors (a signal), Prometheus dies with it.
        let child = netns
            .command("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(PrometheusError::Spawn)?;
        let mut prometheus = Prometheus { child, addr, netns, dir };
        prometheus.wait_ready()?;
        Ok(prometheus)
    }

    fn wait_ready(&mut self) -> Result<(), PrometheusError> {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
                return Err(PrometheusError::Exited(status, log));
            }
            if self.get("/-/ready").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(PrometheusError::NotReady)
    }

    /// `query_range` of `expr` from `start` to `end` (Unix seconds) every `step`: the
    /// answer's JSON text.
    pub fn query_range(&self, expr: &str, start: f64, end: f64, step: Duration) -> Result<String, PrometheusError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("start", &format!("{start:.3}"))
            .append_pair("end", &format!("{end:.3}"))
            .append_pair("step", &format!("{}s", step.as_secs().max(1)))
            .finish();
        self.get(&format!("/api/v1/query_range?{query}"))
    }

    /// A GET inside the namespace; the body, also of an error answer (the API's errors are
    /// JSON too). HTTP/1.0, so that the answer is never chunked and ends with the connection.
    fn get(&self, path: &str) -> Result<String, PrometheusError> {
        let (addr, request) = (self.addr, format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr));
        let answer = self.netns.run(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        });
        let failed = |error: String| PrometheusError::Http { path: path.to_owned(), error };
        let text = answer.map_err(|e| failed(e.to_string()))?.map_err(|e| failed(e.to_string()))?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| failed(format!("malformed answer: {text}")))?;
        let code = head.split_whitespace().nth(1).unwrap_or_default();
        if code != "200" && !body.starts_with('{') {
            return Err(failed(format!("status {code}: {body}")));
        }
        Ok(body.to_owned())
    }
}

/// A port nobody listens on in the calling thread's namespace.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        // nsenter execs prometheus: the child's PID is Prometheus's own.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
