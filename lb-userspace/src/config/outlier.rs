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
    /// Percent chance that reaching `consecutive_5xx` ejects (default 100).
    #[serde(default = "default_always")]
    pub enforcing_consecutive_5xx: u32,
    /// Percent chance that reaching `consecutive_local_origin_failures` ejects (default 100).
    #[serde(default = "default_always")]
    pub enforcing_consecutive_local_origin_failure: u32,
    /// Success rate, over each interval: a backend whose success rate is below
    /// mean - `success_rate_stdev_factor` / 1000 x stdev of the backends with at least
    /// `success_rate_request_volume` requests is an outlier, if at least
    /// `success_rate_minimum_hosts` backends have that many (defaults 5, 100, 1900).
    #[serde(default = "default_minimum_hosts")]
    pub success_rate_minimum_hosts: u32,
    #[serde(default = "default_success_rate_request_volume")]
    pub success_rate_request_volume: u32,
    #[serde(default = "default_success_rate_stdev_factor")]
    pub success_rate_stdev_factor: u32,
    /// Percent chance that a success-rate outlier (5xx, or all signals unless split) is
    /// ejected (default 100).
    #[serde(default = "default_always")]
    pub enforcing_success_rate: u32,
    /// With split: the same for the local-origin success rate (default 100).
    #[serde(default = "default_always")]
    pub enforcing_local_origin_success_rate: u32,
    /// Failure percentage, over each interval: a backend with at least
    /// `failure_percentage_request_volume` requests whose failures are at least this percent
    /// is an outlier, if at least `failure_percentage_minimum_hosts` backends have that many
    /// requests (defaults 85, 5, 50).
    #[serde(default = "default_failure_percentage_threshold")]
    pub failure_percentage_threshold: u32,
    #[serde(default = "default_minimum_hosts")]
    pub failure_percentage_minimum_hosts: u32,
    #[serde(default = "default_failure_percentage_request_volume")]
    pub failure_percentage_request_volume: u32,
    /// Percent chance that a failure-percentage outlier is ejected (default 0: counted, not
    /// ejected).
    #[serde(default)]
    pub enforcing_failure_percentage: u32,
    /// With split: the same for local-origin failures (default 0).
    #[serde(default)]
    pub enforcing_failure_percentage_local_origin: u32,
}

impl OutlierDetectionConfig {
    /// The keys whose values are percentages (0..=100), with their values.
    pub fn percentages(&self) -> [(&'static str, u32); 8] {
        [
            ("max_ejection_percent", self.max_ejection_percent),
            ("enforcing_consecutive_5xx", self.enforcing_consecutive_5xx),
            ("enforcing_consecutive_local_origin_failure", self.enforcing_consecutive_local_origin_failure),
            ("enforcing_success_rate", self.enforcing_success_rate),
            ("enforcing_local_origin_success_rate", self.enforcing_local_origin_success_rate),
            ("failure_percentage_threshold", self.failure_percentage_threshold),
            ("enforcing_failure_percentage", self.enforcing_failure_percentage),
            ("enforcing_failure_percentage_local_origin", self.enforcing_failure_percentage_local_origin),
        ]
    }
}

impl Default for OutlierDetectionConfig {
    /// The defaults of an empty `outlier_detection` table.
    fn default() -> Self {
        toml::from_str("").expect("every key has a default")
    }
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
fn default_always() -> u32 {
    100
}
fn default_minimum_hosts() -> u32 {
    5
}
fn default_success_rate_request_volume() -> u32 {
    100
}
fn default_success_rate_stdev_factor() -> u32 {
    1900
}
fn default_failure_percentage_threshold() -> u32 {
    85
}
fn default_failure_percentage_request_volume() -> u32 {
    50
}
