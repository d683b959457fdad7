//! A VIP's (or DNS target's) `health_check` table.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Active health checking of a VIP's backends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `tcp` (a connect) or `http` (a GET whose status must be expected).
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Time between checks of one backend (default 5 s).
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A check not finished after this fails (default 1 s; less than the interval).
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Up to this much random time is added to each interval, so checks of many backends
    /// spread out (default 0).
    #[serde(default, with = "humantime_serde")]
    pub jitter: Duration,
    /// Consecutive passes that make an unhealthy backend healthy (default 2).
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy backend unhealthy (default 3).
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Port to check; defaults to the backend's.
    #[serde(default)]
    pub port: Option<u16>,
    /// `http`: the request path (default "/").
    #[serde(default = "default_check_path")]
    pub path: String,
    /// `http`: the Host header (default: the backend's address).
    #[serde(default)]
    pub host: Option<String>,
    /// `http`: status codes that pass, as codes or "from-to" ranges (default ["200-299"]).
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<StatusRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    Tcp,
    Http,
}

/// An inclusive range of HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub from: u16,
    pub to: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.from..=self.to).contains(&status)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u16),
            Range(String),
        }
        let range = match Raw::deserialize(d)? {
            Raw::Code(c) => StatusRange { from: c, to: c },
            Raw::Range(text) => {
                let parsed =
                    text.split_once('-').and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
                let Some((from, to)) = parsed else {
                    return Err(serde::de::Error::custom(format!(
                        "{text:?} is neither a status code nor a range like \"200-299\""
                    )));
                };
                StatusRange { from, to }
            }
        };
        if !(100..=599).contains(&range.from) || !(100..=599).contains(&range.to) || range.from > range.to {
            return Err(serde::de::Error::custom(format!(
                "status codes must be 100..=599, ranges low-high (got {}-{})",
                range.from, range.to
            )));
        }
        Ok(range)
    }
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_check_path() -> String {
    "/".to_owned()
}
fn default_expected_statuses() -> Vec<StatusRange> {
    vec![StatusRange { from: 200, to: 299 }]
}
