//! The `lb` command's side of the admin interface: HTTP/1.1 requests to the running
//! controller on its admin address. A few lines over a TCP stream are enough for a local,
//! plain-text API, so no HTTP client library is pulled into the binary.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::config::AdminConfig;
use crate::status::Status;

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
    /// error otherwise.
    pub fn call(&self, method: &str, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, self.timeout.min(Duration::from_secs(5)))
            .with_context(|| format!("connecting to the admin interface at {} (is `lb run` running?)", self.addr))?;
        stream.set_read_timeout(Some(self.timeout))?;
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response.split_once("\r\n\r\n").context("malformed HTTP response")?;
        let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("malformed status line")?;
        // axum answers with a fixed length; a chunked body would need decoding.
        if head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked")) {
            bail!("unexpected chunked answer");
        }
        if !(200..300).contains(&code) {
            bail!("{} (HTTP {code})", body.trim_end());
        }
        Ok(body.to_owned())
    }

    pub fn status(&self) -> Result<Status> {
        serde_json::from_str(&self.call("GET", "/v1/status")?).context("decoding the status")
    }
}
