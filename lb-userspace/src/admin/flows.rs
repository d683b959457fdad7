//! `GET /v1/flows?vip=&backend=&client=&limit=`: the flow table decoded. The controller
//! loop only reads the tables (as its sweep does every second); filtering and decoding a
//! table of a million entries runs on a blocking thread, and the answer holds at most
//! `limit` rows.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{AdminRequest, AdminState, ask};
use crate::api::flows::{FlowQuery, list};

pub(super) async fn flows(
    State(state): State<AdminState>,
    query: Result<Query<FlowQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return (StatusCode::BAD_REQUEST, format!("{}\n", rejection.body_text())).into_response(),
    };
    let (tables, names) = match ask(&state, |reply| AdminRequest::Flows { vip: query.vip.clone(), reply }).await {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => return error.into_response(),
        Err(response) => return response,
    };
    match tokio::task::spawn_blocking(move || list(&tables, &names, &query)).await {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("listing the flows failed: {e}\n")).into_response(),
    }
}
