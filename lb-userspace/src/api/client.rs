//! The `lb` command's side of the admin interface: HTTP/1.1 requests to the running
//! controller on its admin address. A few lines over a TCP stream are enough for a local,
//! plain-text API, so no HTTP client library is pulled into the binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::api::status::Status;
use crate::config::AdminConfig;

pub struct AdminClient {
    addr: SocketAddr,
    token: Option<String>,
    /// Bounds connecting, and each read of the answer.
    timeout: Duration,
}

impl AdminClient {
    /// The client of the controller whose config has this `[admin]` section. An unspecified
    /// listen address (0.0.0.0, ::) is reached on loopback.
    pub fn new(admin: &AdminConfig) -> Self {
        let mut addr = admin.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        Self { addr, token: admin.token.clone(), timeout: Duration::from_secs(30) }
    }

    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// Sends a request without a body; returns the body of a 2xx answer, the body as the
    /// error otherwise. An error before the request was sent is a [`NotRunning`].
    pub fn call(&self, method: &str, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, self.timeout.min(Duration::from_secs(5)))
            .map_err(|e| NotRunning { addr: self.addr, error: e })?;
        stream.set_read_timeout(Some(self.timeout))?;
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        // One write: `write!` on the stream would send each piece in a segment of its own.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).context("sending the request")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).context("reading the answer")?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("malformed HTTP response ({} bytes)", response.len()))?;
        let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("malformed status line")?;
        // axum answers with a fixed length; a chunked body would need decoding.
        if head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked")) {
            bail!("unexpected chunked answer");
        }
        if !(200..300).contains(&code) {
            return Err(Refused { code, body: body.trim_end().to_owned() }.into());
        }
        Ok(body.to_owned())
    }

    pub fn status(&self) -> Result<Status> {
        serde_json::from_str(&self.call("GET", "/v1/status")?).context("decoding the status")
    }

    /// Asks the controller to end (with `detach`, also to detach the program) and waits,
    /// up to `within`, until nothing answers on its address any more. A controller that
    /// is ending may close the connection before its answer is complete: that counts as
    /// stopping too, once it is verified. Returns what it said.
    pub fn stop(&self, detach: bool, within: Duration) -> Result<String> {
        let path = if detach { "/v1/stop-and-detach" } else { "/v1/stop" };
        let said = match self.call("POST", path) {
            Ok(said) => said,
            Err(e) if e.is::<NotRunning>() || e.is::<Refused>() => return Err(e),
            Err(e) => {
                tracing::debug!("the stopping controller's answer was cut short: {e:#}");
                "stopping (the controller closed the connection)\n".to_owned()
            }
        };
        let deadline = Instant::now() + within;
        loop {
            match TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) {
                Err(_) => return Ok(said),
                Ok(_) if Instant::now() >= deadline => bail!(
                    "the controller at {} still answers {} after being asked to stop",
                    self.addr,
                    humantime::format_duration(within)
                ),
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// The controller answered with an error status.
#[derive(Debug, thiserror::Error)]
#[error("{body} (HTTP {code})")]
pub struct Refused {
    pub code: u16,
    pub body: String,
}

/// Nothing answered on the admin address: no controller runs there.
#[derive(Debug, thiserror::Error)]
#[error("connecting to the admin interface at {addr} (is `lb run` running?): {error}")]
pub struct NotRunning {
    pub addr: SocketAddr,
    pub error: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A fake controller on loopback: reads one request, answers with `answer` (nothing:
    /// closes the connection at once), and stops listening after `listening_after` more.
    fn fake_controller(answer: &'static str, listening_after: Duration) -> AdminClient {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = AdminConfig { listen: listener.local_addr().unwrap(), token: None };
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.read(&mut [0; 1024]);
            let _ = stream.write_all(answer.as_bytes());
            drop(stream);
            std::thread::sleep(listening_after);
        });
        AdminClient::new(&admin)
    }

    #[test]
    fn stop_counts_a_connection_closed_mid_answer_by_a_controller_that_then_ends() {
        let client = fake_controller("", Duration::from_millis(300));
        client.stop(false, Duration::from_secs(5)).unwrap();
        let client = fake_controller("HTTP/1.1 200 OK\r\nContent-Len", Duration::ZERO);
        client.stop(false, Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn stop_waits_until_the_controller_is_gone() {
        let client =
            fake_controller("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstopping\n", Duration::from_millis(300));
        let started = Instant::now();
        assert_eq!(client.stop(true, Duration::from_secs(5)).unwrap(), "stopping\n");
        assert!(started.elapsed() >= Duration::from_millis(300));
        let client = fake_controller("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Duration::from_secs(3));
        let e = client.stop(false, Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("still answers"), "{e:#}");
    }

    #[test]
    fn stop_refused_by_the_controller_says_why_at_once() {
        let client =
            fake_controller("HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\n\r\ntoken\n", Duration::from_secs(3));
        let e = client.stop(false, Duration::from_secs(2)).unwrap_err();
        assert!(e.is::<Refused>(), "{e:#}");
    }

    #[test]
    fn stop_without_a_controller_says_none_runs() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = AdminClient::new(&AdminConfig { listen: addr, token: None })
            .stop(false, Duration::from_secs(1))
            .unwrap_err();
        assert!(e.is::<NotRunning>(), "{e:#}");
    }
}
