//! A VIP's `outlier_detection` table: passive ejection with a service mesh's meanings.

use std::time::Duration;

use serde::Deserialize;

/// Outlier ejection, with a service mesh's meanings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// Consecutive 5xx responses (and, unless split, local-origin failures) that eject a
    /// backend (default 5; 0 disables).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_5xx: u32,
    /// With `split_external_local_origin_errors`: consecutive local-origin failures
    /// (connection refused or reset, ICMP unreachable, answering a connection attempt)
    /// that eject a backend (default 5; 0 disables).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_local_origin_failures: u32,
    /// Count local-origin failures apart from 5xx responses (default false: they count as
    /// 5xx).
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    /// Time between ejection sweeps: ejected backends whose time is up return, and the
    /// ejection multiplier of backends that stayed well decreases (default 10 s).
    #[serde(default = "default_outlier_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// An ejection lasts this times the number of times the backend was ejected (default 30 s)...
    #[serde(default = "default_base_ejection_time", with = "humantime_serde")]
    pub base_ejection_time: Duration,
    /// ...but never longer than this (default 300 s).
    #[serde(default = "default_max_ejection_time", with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// At most this percent of the VIP's backends are ejected at once; at least one may
    /// always be (default 10).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// An ejected backend that passes an active health check returns at once (default true).
    #[serde(default = "default_true")]
    pub uneject_on_healthy_check: bool,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_outlier_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_base_ejection_time() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection_time() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    10
}
fn default_true() -> bool {
    true
}
