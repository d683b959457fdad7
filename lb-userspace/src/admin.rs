//! The admin HTTP interface (axum): status, metrics, drain/undrain, reload. Handlers ask
//! the controller loop, which owns all state, through a channel and wait for its answer,
//! so an admin request is one more event of the loop. With `admin.token` set, every
//! request needs `Authorization: Bearer <token>`.

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

use crate::status::Status;

/// What the admin interface asks the controller loop.
pub enum AdminRequest {
    Status(oneshot::Sender<Status>),
    /// Drain (`drained`) or undrain a backend of a VIP; `Err` says why not.
    Drain {
        vip: String,
        backend: SocketAddr,
        drained: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Reload the config file: the new generation, or why the config was refused.
    Reload(oneshot::Sender<Result<u64, String>>),
    /// End the controller; with `detach`, also detach the program and remove the pins.
    Stop {
        detach: bool,
        reply: oneshot::Sender<()>,
    },
    /// This vantage point's view of the DNS targets (none without `[dns]`), for peers.
    DnsView(oneshot::Sender<Option<crate::dns::VantageView>>),
    /// Set (`Some`) or clear the run-time trickle ratio of a DNS policy record.
    Trickle {
        name: String,
        rtype: String,
        ratio: Option<f64>,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

#[derive(Clone)]
struct AdminState {
    requests: mpsc::Sender<AdminRequest>,
    token: Option<String>,
}

/// Binds `listen` (failing at once if it can't) and serves from a task of its own.
pub async fn start(listen: SocketAddr, token: Option<String>, requests: mpsc::Sender<AdminRequest>) -> Result<()> {
    let with_token = token.is_some();
    let state = AdminState { requests, token };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/reload", post(reload))
        .route("/v1/stop", post(stop))
        .route("/v1/stop-and-detach", post(stop_and_detach))
        .route("/v1/vips/{vip}/backends/{backend}/drain", post(drain))
        .route("/v1/vips/{vip}/backends/{backend}/undrain", post(undrain))
        .route("/v1/dns/view", get(dns_view))
        .route("/v1/dns/policies/{name}/{rtype}/trickle", post(set_trickle).delete(clear_trickle))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("admin interface: binding {listen}"))?;
    tracing::info!(%listen, token = with_token, "admin interface listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("admin interface stopped: {e}");
        }
    });
    Ok(())
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
        Ok(status) => {
            ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], crate::metrics::render(&status)).into_response()
        }
        Err(response) => response,
    }
}

async fn reload(State(state): State<AdminState>) -> Response {
    match ask(&state, AdminRequest::Reload).await {
        Ok(Ok(generation)) => (StatusCode::OK, format!("config applied: generation {generation}\n")).into_response(),
        Ok(Err(why)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("reload refused, the running config stays: {why}\n"))
                .into_response()
        }
        Err(response) => response,
    }
}

async fn stop(state: State<AdminState>) -> Response {
    stop_controller(state, false).await
}

async fn stop_and_detach(state: State<AdminState>) -> Response {
    stop_controller(state, true).await
}

async fn stop_controller(State(state): State<AdminState>, detach: bool) -> Response {
    match ask(&state, |reply| AdminRequest::Stop { detach, reply }).await {
        Ok(()) if detach => {
            (StatusCode::OK, "stopping; the program is detached and its pins removed\n").into_response()
        }
        Ok(()) => (StatusCode::OK, "stopping; the program stays attached with its pinned maps\n").into_response(),
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
        Ok(Err(why)) => (StatusCode::NOT_FOUND, format!("{why}\n")).into_response(),
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
        Ok(Err(why)) => (StatusCode::NOT_FOUND, format!("{why}\n")).into_response(),
        Err(response) => response,
    }
}
