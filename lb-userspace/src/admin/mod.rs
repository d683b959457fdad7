//! The admin HTTP interface (axum): status, metrics, drain/undrain, reload. Handlers ask
//! the controller loop, which owns all state, through a channel and wait for its answer,
//! so an admin request is one more event of the loop. With `admin.token` set, every
//! request needs `Authorization: Bearer <token>`.
//!
//! Connections are bounded ([`Limits`]): idle or slow clients are closed and at most a
//! fixed number are open, so the admin port can't use up the process's file descriptors
//! (which health checks need).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

use crate::api::flows::{FlowSnapshot, Names};
use crate::api::status::Status;
pub use error::AdminError;

mod error;
mod flows;
pub mod metrics;

/// What the admin interface asks the controller loop.
pub enum AdminRequest {
    Status(oneshot::Sender<Status>),
    /// Drain (`drained`) or undrain a backend of a VIP; `Err` says why not.
    Drain {
        vip: String,
        backend: SocketAddr,
        drained: bool,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// Reload the config file: the new generation, or why the config was refused.
    Reload(oneshot::Sender<Result<u64, AdminError>>),
    /// End the controller; with `detach`, also detach the program and remove the pins.
    /// The answer says what is left once the controller has ended.
    Stop {
        detach: bool,
        reply: oneshot::Sender<LeftBehind>,
    },
    /// This vantage point's view of the DNS targets (none without `[dns]`), for peers.
    DnsView(oneshot::Sender<Option<crate::api::dns::VantageView>>),
    /// Set (`Some`) or clear the run-time trickle ratio of a DNS policy record.
    Trickle {
        name: String,
        rtype: String,
        ratio: Option<f64>,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// The flow tables as read now, and the names of the ids in them; `vip` must name a
    /// configured VIP.
    Flows {
        vip: Option<String>,
        reply: oneshot::Sender<Result<(FlowSnapshot, Names), AdminError>>,
    },
    /// Drain (`drained`) or undrain this whole host: its BGP announcements move traffic
    /// away as `bgp.drain` says.
    Host {
        drained: bool,
        reply: oneshot::Sender<Result<crate::api::bgp::HostReport, AdminError>>,
    },
}

#[derive(Clone)]
struct AdminState {
    requests: mpsc::Sender<AdminRequest>,
    token: Option<String>,
}

/// Bounds on the admin interface's connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection must send a request's headers within this from its start or from its
    /// previous answer (so an idle keep-alive connection is closed after it too).
    pub header_read_timeout: Duration,
    /// A connection is closed this long after it was accepted, whatever it is doing.
    pub connection_lifetime: Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(60),
            max_connections: 64,
        }
    }
}

/// Binds `listen` (failing at once if it can't) and serves from a task of its own.
pub async fn start(
    listen: SocketAddr,
    token: Option<String>,
    requests: mpsc::Sender<AdminRequest>,
    limits: Limits,
) -> Result<(SocketAddr, OpenConnections)> {
    let with_token = token.is_some();
    let state = AdminState { requests, token };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/flows", get(flows::flows))
        .route("/v1/reload", post(reload))
        .route("/v1/stop", post(stop))
        .route("/v1/stop-and-detach", post(stop_and_detach))
        .route("/v1/vips/{vip}/backends/{backend}/drain", post(drain))
        .route("/v1/vips/{vip}/backends/{backend}/undrain", post(undrain))
        .route("/v1/host/drain", post(drain_host))
        .route("/v1/host/undrain", post(undrain_host))
        .route("/v1/dns/view", get(dns_view))
        .route("/v1/dns/policies/{name}/{rtype}/trickle", post(set_trickle).delete(clear_trickle))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("admin interface: binding {listen}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, token = with_token, max_connections = limits.max_connections, "admin interface listening");
    let open = OpenConnections {
        open: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
        max: limits.max_connections,
    };
    tokio::spawn(serve(listener, app, limits, open.open.clone()));
    Ok((bound, open))
}

/// The admin interface's open connections: an ending controller waits for them, so that
/// the answers in flight (the one to `lb stop` above all) reach their clients.
#[derive(Clone)]
pub struct OpenConnections {
    open: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl OpenConnections {
    /// Waits until every connection is closed, or `within` has passed.
    pub async fn closed(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.open.acquire_many(self.max as u32)).await;
    }
}

const TOO_MANY_CONNECTIONS: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 60\r\nConnection: close\r\n\r\n\
    too many admin connections open; try again in a few seconds\n";

/// Accepts connections for ever, each served on a task of its own within `limits`.
async fn serve(listener: tokio::net::TcpListener, app: Router, limits: Limits, open: Arc<tokio::sync::Semaphore>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be closed.
                tracing::warn!("admin interface: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(max = limits.max_connections, "admin interface: connection limit reached, closing one");
            // Said without waiting for the request (a fresh socket's buffer takes it), so
            // `lb status` tells why instead of reading nothing.
            let _ = stream.try_write(TOO_MANY_CONNECTIONS.as_bytes());
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Errors are the client's (a timeout, a reset, bad HTTP): nothing to report.
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
            drop(permit);
        });
    }
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
        }
    }
    next.run(request).await
}

/// Sends `request` to the controller loop and waits for its answer.
async fn ask<T>(state: &AdminState, request: impl FnOnce(oneshot::Sender<T>) -> AdminRequest) -> Result<T, Response> {
    let (reply, answer) = oneshot::channel();
    let unavailable = || (StatusCode::SERVICE_UNAVAILABLE, "the controller is shutting down\n").into_response();
    state.requests.send(request(reply)).await.map_err(|_| unavailable())?;
    answer.await.map_err(|_| unavailable())
}

async fn status(State(state): State<AdminState>) -> Response {
    match ask(&state, AdminRequest::Status).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(response) => response,
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match ask(&state, AdminRequest::Status).await {
        Ok(status) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], metrics::render(&status)).into_response(),
        Err(response) => response,
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    match ask(&state, AdminRequest::Reload).await {
        Ok(Ok(generation)) => (StatusCode::OK, format!("config applied: generation {generation}\n")).into_response(),
        Ok(Err(error)) => error.into_response(),
        Err(response) => response,
    }
}

async fn stop(state: State<AdminState>) -> Response {
    stop_controller(state, false).await
}

async fn stop_and_detach(state: State<AdminState>) -> Response {
    stop_controller(state, true).await
}

/// What a controller leaves behind as it ends, for the answer to `lb stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftBehind {
    /// The program and its pinned maps, unless detached.
    PinnedProgram,
    /// Nothing: the pins are in a bpffs private to the controller's mount namespace.
    PrivatePins,
    /// Nothing ever was: a DNS vantage point has no packet path.
    NoPacketPath,
}

async fn stop_controller(State(state): State<AdminState>, detach: bool) -> Response {
    match ask(&state, |reply| AdminRequest::Stop { detach, reply }).await {
        Ok(LeftBehind::NoPacketPath) => {
            (StatusCode::OK, "stopping; a DNS vantage point has no program to leave or detach\n").into_response()
        }
        Ok(_) if detach => (StatusCode::OK, "stopping; the program is detached and its pins removed\n").into_response(),
        Ok(LeftBehind::PinnedProgram) => {
            (StatusCode::OK, "stopping; the program stays attached with its pinned maps\n").into_response()
        }
        Ok(LeftBehind::PrivatePins) => (
            StatusCode::OK,
            format!(
                "stopping; the program is detached as the controller ends: {}\n",
                crate::dataplane::PRIVATE_PINS_ADVICE
            ),
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn drain(state: State<AdminState>, path: Path<(String, String)>) -> Response {
    set_drained(state, path, true).await
}

async fn undrain(state: State<AdminState>, path: Path<(String, String)>) -> Response {
    set_drained(state, path, false).await
}

async fn set_drained(
    State(state): State<AdminState>,
    Path((vip, backend)): Path<(String, String)>,
    drained: bool,
) -> Response {
    let Ok(backend) = backend.parse::<SocketAddr>() else {
        return (StatusCode::BAD_REQUEST, format!("{backend:?} is not an address:port\n")).into_response();
    };
    let what = if drained { "draining" } else { "undrained" };
    match ask(&state, |reply| AdminRequest::Drain { vip: vip.clone(), backend, drained, reply }).await {
        Ok(Ok(())) => (StatusCode::OK, format!("{backend} of {vip}: {what}\n")).into_response(),
        Ok(Err(error)) => error.into_response(),
        Err(response) => response,
    }
}

async fn drain_host(state: State<AdminState>) -> Response {
    set_host_drained(state, true).await
}

async fn undrain_host(state: State<AdminState>) -> Response {
    set_host_drained(state, false).await
}

/// The host's state after the change, as JSON (`lb host` prints its line).
async fn set_host_drained(State(state): State<AdminState>, drained: bool) -> Response {
    match ask(&state, |reply| AdminRequest::Host { drained, reply }).await {
        Ok(Ok(report)) => axum::Json(report).into_response(),
        Ok(Err(error)) => error.into_response(),
        Err(response) => response,
    }
}

async fn dns_view(State(state): State<AdminState>) -> Response {
    match ask(&state, AdminRequest::DnsView).await {
        Ok(Some(view)) => axum::Json(view).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "this controller serves no DNS (no [dns] section)\n").into_response(),
        Err(response) => response,
    }
}

#[derive(serde::Deserialize)]
struct TrickleQuery {
    ratio: f64,
}

async fn set_trickle(
    state: State<AdminState>,
    path: Path<(String, String)>,
    Query(query): Query<TrickleQuery>,
) -> Response {
    trickle(state, path, Some(query.ratio)).await
}

async fn clear_trickle(state: State<AdminState>, path: Path<(String, String)>) -> Response {
    trickle(state, path, None).await
}

/// POST `?ratio=R` sends that share of the record's answers to its backups (1 = all: the
/// manual failover switch); DELETE goes back to the configured ratio.
async fn trickle(
    State(state): State<AdminState>,
    Path((name, rtype)): Path<(String, String)>,
    ratio: Option<f64>,
) -> Response {
    match ask(&state, |reply| AdminRequest::Trickle { name: name.clone(), rtype: rtype.clone(), ratio, reply }).await {
        Ok(Ok(())) => match ratio {
            Some(r) => (StatusCode::OK, format!("{name} {rtype}: trickle ratio {r}\n")).into_response(),
            None => (StatusCode::OK, format!("{name} {rtype}: configured trickle ratio\n")).into_response(),
        },
        Ok(Err(error)) => error.into_response(),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Idle clients beyond the connection cap neither stay open nor keep an answer from
    /// the next client for longer than the header-read timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed_and_capped() {
        let (requests, _keep) = mpsc::channel(1);
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            connection_lifetime: Duration::from_secs(30),
            max_connections: 8,
        };
        let (addr, _) = start("127.0.0.1:0".parse().unwrap(), None, requests, limits).await.unwrap();
        let result = tokio::task::spawn_blocking(move || {
            let idle: Vec<std::net::TcpStream> = (0..40).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
            let mut told_too_many = 0;
            for mut stream in idle {
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                // The server closes it (EOF or a reset), instead of the read timing out.
                let mut said = Vec::new();
                let closed = match stream.read_to_end(&mut said) {
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                };
                assert!(closed, "an idle admin connection stayed open");
                // Closed at once beyond the cap, with the reason; within it, silently after the timeout.
                assert!(said.is_empty() || said.starts_with(b"HTTP/1.1 503"), "{}", String::from_utf8_lossy(&said));
                told_too_many += !said.is_empty() as usize;
            }
            assert!(told_too_many > 0, "40 connections at once and none over the cap of 8");
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(client, "GET /nowhere HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n").unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).unwrap();
            answer
        });
        let answer = result.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    }
}
