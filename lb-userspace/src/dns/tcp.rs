//! DNS over TCP (RFC 7766): two-byte length, then the message, several per connection,
//! answered in order. Bounded against any client: at most `max_connections` at once (more
//! are closed as soon as they are accepted, counted, and logged at most every
//! [`REFUSAL_LOG_EVERY`]), a connection waiting longer than `idle_timeout` for its next
//! query is closed, and so is one whose query, once started, or answer takes longer than
//! `io_timeout` (half a message, or a client that does not read).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::warn;

use super::respond::{DnsHandler, Encoded, Tally, answer_query};
use crate::config::dns::DnsConfig;

/// Refused connections are logged at most this often (with how many since the last line).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of descriptors): the error would repeat at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub io_timeout: Duration,
}

impl TcpLimits {
    /// The `[dns]` table's `tcp_*` keys.
    pub fn of(dns: &DnsConfig) -> Self {
        Self {
            max_connections: dns.tcp_max_connections.get() as usize,
            idle_timeout: dns.tcp_idle_timeout,
            io_timeout: dns.tcp_io_timeout,
        }
    }
}

/// Counts refused connections between log lines.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn refused(&mut self, src: SocketAddr, limit: usize) {
        self.unlogged += 1;
        if self.last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            warn!(%src, limit, refused = self.unlogged, "DNS: TCP connections at their limit; new ones are closed");
            self.last = Some(Instant::now());
            self.unlogged = 0;
        }
    }
}

/// Accepts connections on `listener` until aborted (which ends its connections too).
pub async fn serve(listener: TcpListener, handler: DnsHandler, limits: TcpLimits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut refusals = RefusalLog::default();
    loop {
        let (stream, src) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "DNS: accepting on TCP");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            handler.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            refusals.refused(src, limits.max_connections);
            continue;
        };
        let handler = handler.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(why) = connection(stream, src, &handler, limits).await {
                tracing::debug!(%src, why, "DNS: TCP connection closed");
            }
        });
    }
}

/// Answers the queries of one connection until the client closes it or a limit does.
async fn connection(
    mut stream: TcpStream,
    src: SocketAddr,
    handler: &DnsHandler,
    limits: TcpLimits,
) -> Result<(), &'static str> {
    let answer = Encoded::tcp();
    let mut query = Vec::new();
    loop {
        let mut first = [0; 1];
        match timeout(limits.idle_timeout, stream.read(&mut first)).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(_)) => return Err("read error"),
            Err(_) => return Err("idle"),
        }
        let rest = async {
            let len = u16::from_be_bytes([first[0], stream.read_u8().await?]);
            query.resize(usize::from(len), 0);
            stream.read_exact(&mut query).await.map(drop)
        };
        timeout(limits.io_timeout, rest).await.map_err(|_| "query too slow")?.map_err(|_| "query cut")?;
        let answers = handler.answers.read().expect("not poisoned").clone();
        let mut tally = Tally::default();
        answer_query(&answers, &query, src, Protocol::Tcp, &answer, &mut tally).await;
        handler.stats.add(&tally);
        let bytes = answer.take();
        // Nothing to say (a response, a runt): the stream may be out of step; close it.
        if bytes.is_empty() {
            return Err("not a query");
        }
        let mut framed = Vec::with_capacity(2 + bytes.len());
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        timeout(limits.io_timeout, stream.write_all(&framed))
            .await
            .map_err(|_| "answer not read")?
            .map_err(|_| "write error")?;
    }
}
