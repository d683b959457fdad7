//! The controller's TOML configuration: types (serde), defaults, and validation whose
//! errors name the file, the line and the key, e.g.
//! `config/lb.toml:14: vip[1].backend[0].port: dsr backends must use the VIP's port 80 (got 8080)`.
//!
//! [`parse`] deserialises with `toml` (unknown keys are refused), resolves defaults that
//! depend on other keys (a backend's port defaults to its VIP's port), then checks the rules
//! that types cannot express. Lines are found with `toml_edit`'s spans: for serde errors by
//! mapping the error's span back to the key path, for semantic errors by looking the key
//! path up in the same text (falling back to the enclosing table's header when the key was
//! left out).

mod admin;
mod balancer;
pub mod bgp;
mod checks;
pub mod dns;
mod errors;
pub mod flows;
mod outlier;
mod validate;
mod vip;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml_edit::ImDocument;

pub use admin::AdminConfig;
pub use balancer::{BalancerConfig, XdpModeSetting};
pub use checks::{HealthCheckConfig, HealthCheckKind, StatusRange};
pub use errors::ConfigError;
pub use outlier::OutlierDetectionConfig;
pub use vip::{BackendConfig, ForwardingMode, OverprovisioningFactor, Protocol, RateLimitConfig, VipConfig};

use balancer::default_pin_dir;
use errors::{Ctx, line_of, one_line};
use validate::validate;

/// Default of `balancer.pin_dir`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";
/// Maps must be pinned below this directory (the BPF filesystem).
pub const BPF_FS: &str = "/sys/fs/bpf";
/// Bounds of `balancer.maglev_table_size` (which must also be prime).
pub const MIN_TABLE_SIZE: u32 = 101;
pub const MAX_TABLE_SIZE: u32 = 1_048_573; // largest prime below 2^20
/// Largest backend weight.
pub const MAX_WEIGHT: u32 = 65_535;
/// Lowest allowed `balancer.nat_port_min` (stay out of the well-known ports).
pub const MIN_NAT_PORT: u16 = 1024;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Fastest rate a token bucket may have: one token per 50 ns keeps the rounding of the
/// per-token time (whole nanoseconds, in the packet path) under 1%.
pub const MIN_TOKEN_NS: u64 = 50;
/// Longest time an empty bucket may take to refill completely.
pub const MAX_REFILL: Duration = Duration::from_secs(24 * 3600);
/// Bounds of `fill_interval`.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(1);
pub const MAX_FILL_INTERVAL: Duration = Duration::from_secs(3600);
/// Allowed and default `source_limit.prefix_len` per family: one IPv6 host usually holds
/// a whole /64.
pub const SOURCE_PREFIX_V4: (u8, u8, u8) = (8, 32, 32);
pub const SOURCE_PREFIX_V6: (u8, u8, u8) = (32, 128, 64);

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Left out (or without interfaces) only on a DNS vantage point.
    #[serde(default)]
    pub balancer: BalancerConfig,
    /// The admin HTTP interface (status, metrics, drain, reload).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The DNS server for site failover.
    #[serde(default)]
    pub dns: Option<dns::DnsConfig>,
    /// VIPs announced by BGP through BIRD (a fleet of balancer hosts behind ECMP routers).
    #[serde(default)]
    pub bgp: Option<bgp::BgpConfig>,
    #[serde(rename = "vip", default)]
    pub vips: Vec<VipConfig>,
}

impl Config {
    /// Whether this controller drives an XDP program. Without interfaces (and then without
    /// VIPs, with `[dns]`) it is a DNS vantage point only: it checks the DNS targets,
    /// exchanges views with its peers and answers queries, so that two sites and a small
    /// third host make a quorum of 2 of 3.
    pub fn has_packet_path(&self) -> bool {
        !self.balancer.interfaces.is_empty()
    }
}

/// Reads and parses a configuration file; an unreadable file is a [`ConfigError`] too.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse(&read(path)?, &path.display().to_string())
}

fn read(path: &Path) -> Result<String, ConfigError> {
    let error = |line, message| ConfigError { origin: path.display().to_string(), line, key: String::new(), message };
    let bytes = std::fs::read(path).map_err(|e| error(None, format!("cannot read the file: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let offset = e.utf8_error().valid_up_to();
        let line_start = bytes[..offset].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = offset - line_start + 1;
        error(Some(line), format!("not UTF-8: invalid byte 0x{:02x} at column {column} (byte {offset})", bytes[offset]))
    })
}

/// What the commands that control a running balancer need from its config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Control {
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub balancer: ControlBalancer,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ControlBalancer {
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// None on a DNS vantage point, which has no program and no pins to detach.
    #[serde(default)]
    pub interfaces: Vec<String>,
}

impl Default for ControlBalancer {
    fn default() -> Self {
        Self { pin_dir: default_pin_dir(), interfaces: Vec::new() }
    }
}

impl Control {
    /// [`Config::has_packet_path`]'s rule, for the commands: without interfaces, a DNS
    /// vantage point, which has no program and no pins.
    pub fn has_packet_path(&self) -> bool {
        !self.balancer.interfaces.is_empty()
    }
}

/// Reads only [`Control`] from a config file, leniently: the commands that talk to a
/// running controller must work while the file holds a config it refused. A file that is
/// not TOML at all gives the defaults.
pub fn load_control(path: &Path) -> Result<Control, ConfigError> {
    let text = read(path)?;
    let origin = path.display().to_string();
    deserialize(&text, &origin)
}

/// `text` deserialised; an error names the line and key, and a syntax error says so.
fn deserialize<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| match syntax(text, origin) {
        Ok(()) => Ctx::new(origin, text).serde_error(&e),
        Err(syntax_error) => syntax_error,
    })
}

/// Whether `text` is TOML, or its syntax error with the line.
fn syntax(text: &str, origin: &str) -> Result<(), ConfigError> {
    ImDocument::parse(text).map(drop).map_err(|e| ConfigError {
        origin: origin.to_string(),
        line: e.span().map(|s| line_of(text, s.start)),
        key: String::new(),
        message: format!("invalid TOML: {}", one_line(e.message())),
    })
}

/// Parses and validates a configuration; `origin` (the file name) prefixes error messages.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut config: Config = deserialize(text, origin)?;
    let cx = Ctx::new(origin, text);
    for vip in &mut config.vips {
        // An explicit port is never 0 (refused while deserialising), so 0 means "omitted".
        for b in &mut vip.backends {
            if b.port == 0 {
                b.port = vip.port;
            }
        }
    }
    validate(&config, &cx)?;
    Ok(config)
}

#[cfg(test)]
mod tests;
