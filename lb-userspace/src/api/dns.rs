//! The DNS part's wire types: what `GET /v1/dns/view` serves to peers, and the DNS
//! section of the status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Target name -> up, as one vantage point sees it (with its thresholds).
pub type View = BTreeMap<String, bool>;

/// What `GET /v1/dns/view` serves to peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VantageView {
    pub vantage: String,
    /// Target name -> up, as this vantage point sees it (with its thresholds).
    pub targets: View,
}

/// Status of the DNS part, for `lb status` and the metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsStatus {
    pub vantage: String,
    pub quorum: u32,
    pub targets: Vec<TargetStatus>,
    pub policies: Vec<PolicyStatus>,
    /// Responses by code (noerror, nxdomain, refused, ...).
    pub responses: BTreeMap<String, u64>,
    pub truncated: u64,
    /// TCP connections closed at once because `tcp_max_connections` were open.
    #[serde(default)]
    pub tcp_refused: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    pub address: std::net::IpAddr,
    pub up: bool,
    /// Vantage point -> its view (fresh ones only).
    pub views: BTreeMap<String, bool>,
    /// Times the decision changed.
    pub transitions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// "www.example.com. A".
    pub record: String,
    /// primary, backup or all_down.
    pub state: String,
    pub trickle_ratio: f64,
    /// Set by the operator at run time (replaces the configured ratio).
    pub trickle_override: Option<f64>,
    /// Answers by source (primary, backup, trickle, all_down).
    pub answers: BTreeMap<String, u64>,
}
