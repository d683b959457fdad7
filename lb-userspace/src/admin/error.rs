//! Why the controller did not do what an admin request asked, each reason with its own
//! HTTP status.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::dns::TrickleError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("VIP {vip:?} has no backend {backend}")]
    NoSuchBackend { vip: String, backend: SocketAddr },
    /// The config file was refused (unreadable, invalid): the running config stays.
    #[error("reload refused, the running config stays: {0}")]
    ConfigRefused(String),
    #[error(transparent)]
    Trickle(#[from] TrickleError),
    #[error("this controller serves no DNS (no [dns] section)")]
    NoDns,
    /// The change was accepted but writing it into the maps failed: the controller ends,
    /// as it does when it cannot write them at start.
    #[error("writing the maps failed: {0}")]
    Maps(String),
    #[error("no VIP is named {0:?}")]
    NoSuchVip(String),
    #[error("reading the flow tables failed: {0}")]
    FlowTables(String),
    #[error("this controller announces no VIP by BGP (no [bgp] section)")]
    NoBgp,
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::NoSuchBackend { .. } | AdminError::NoDns | AdminError::NoSuchVip(_) | AdminError::NoBgp => {
                StatusCode::NOT_FOUND
            }
            AdminError::Trickle(TrickleError::NoSuchPolicy(_)) => StatusCode::NOT_FOUND,
            AdminError::Trickle(TrickleError::BadRatio(_)) => StatusCode::BAD_REQUEST,
            AdminError::ConfigRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Maps(_) | AdminError::FlowTables(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.status(), format!("{self}\n")).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_status() {
        let backend = "10.0.1.1:80".parse().unwrap();
        let cases = [
            (AdminError::NoSuchBackend { vip: "web".into(), backend }, 404),
            (AdminError::NoDns, 404),
            (TrickleError::NoSuchPolicy("www.example.test. A".into()).into(), 404),
            (TrickleError::BadRatio(2.0).into(), 400),
            (AdminError::ConfigRefused("lb.toml:3: invalid TOML".into()), 422),
            (AdminError::Maps("EPERM".into()), 500),
            (AdminError::NoSuchVip("web".into()), 404),
            (AdminError::FlowTables("EPERM".into()), 500),
            (AdminError::NoBgp, 404),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
    }
}
