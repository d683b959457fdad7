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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml_edit::{Array, ArrayOfTables, ImDocument, InlineTable, Item, Table, Value};

use crate::maglev;

pub mod dns;
pub mod flows;

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
    pub balancer: BalancerConfig,
    /// The admin HTTP interface (status, metrics, drain, reload).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The DNS server for site failover.
    #[serde(default)]
    pub dns: Option<dns::DnsConfig>,
    #[serde(rename = "vip", default)]
    pub vips: Vec<VipConfig>,
}

/// Where the admin interface listens, and the token it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Default 127.0.0.1:9180. Any address other than a loopback one needs `token`.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: default_admin_listen(), token: None }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9180))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    /// Interfaces the XDP program attaches to (required, non-empty).
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
    /// The balancer's own IPv4 address: the source of NATed packets. Required if any IPv4
    /// VIP uses nat mode.
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    /// Likewise for IPv6 nat VIPs.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// Where maps are pinned; must be under /sys/fs/bpf.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Seed of the flow hash and the Maglev tables; the same on every balancer host that
    /// fronts the same VIPs.
    #[serde(default)]
    pub hash_seed: u32,
    /// Slots of each VIP's Maglev table: a prime, at least the number of backends of any
    /// VIP (ideally > 100 x that, for shares within 1% of the weights).
    #[serde(default = "default_table_size")]
    pub maglev_table_size: u32,
    #[serde(default = "default_max_vips")]
    pub max_vips: u32,
    #[serde(default = "default_max_backends")]
    pub max_backends: u32,
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// Entries of the LRU map of per-source rate-limit buckets (all VIPs together).
    #[serde(default = "default_source_table_size")]
    pub source_table_size: u32,
    #[serde(default = "default_nat_port_min")]
    pub nat_port_min: u16,
    #[serde(default = "default_nat_port_max")]
    pub nat_port_max: u16,
    /// How long flow entries live after a connection's last packet, by state.
    #[serde(default)]
    pub flow_timeouts: flows::FlowTimeoutsConfig,
    /// Locality labels of this balancer (compared with the backends' for failover order).
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    Driver,
    Skb,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// Unique name (used in logs, metrics and the admin interface).
    pub name: String,
    pub address: IpAddr,
    /// 1..=65535.
    #[serde(deserialize_with = "deserialize_port")]
    pub port: u16,
    /// Defaults to tcp.
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: ForwardingMode,
    /// Token bucket for new flows to the VIP (TCP SYNs, first datagrams of UDP flows).
    #[serde(default)]
    pub new_flow_limit: Option<RateLimitConfig>,
    /// Token bucket for every packet to the VIP.
    #[serde(default)]
    pub packet_limit: Option<RateLimitConfig>,
    /// Token bucket for new flows from each source prefix (`prefix_len`).
    #[serde(default)]
    pub source_limit: Option<RateLimitConfig>,
    /// Active health checks of every backend of the VIP.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier ejection from what the packet path sees (nat VIPs only: dsr replies
    /// bypass the balancer).
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// The VIP speaks plain HTTP/1: the status line of each response's first segment
    /// counts for `outlier_detection.consecutive_5xx` (nat mode).
    #[serde(default)]
    pub http: bool,
    /// Percent of the VIP's backends that must be available (healthy, not ejected); below
    /// it the VIP balances over all its backends, ignoring health, rather than overload the
    /// few left or black-hole the VIP. 0 disables (default 50, as a service mesh).
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold: u32,
    /// Regions to fail over to, in order, after the balancer's own region; regions not
    /// listed come last, together.
    #[serde(default)]
    pub failover_regions: Vec<String>,
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
}

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

/// A token bucket, as a gateway's local rate limiter describes one: `quota` tokens every
/// `fill_interval`, at most `burst` held. (Refill is continuous, at quota / fill_interval.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub quota: u64,
    /// Like "1s" or "100ms"; default 1 s.
    #[serde(default = "default_fill_interval", with = "humantime_serde")]
    pub fill_interval: Duration,
    /// Tokens the bucket holds when full; defaults to `quota`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// `source_limit` only: leading bits of the client address that make a source
    /// (IPv4 8..=32, default 32; IPv6 32..=128, default 64).
    #[serde(default)]
    pub prefix_len: Option<u8>,
}

impl RateLimitConfig {
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.quota)
    }

    /// The time one token stands for, in whole nanoseconds.
    pub fn token_ns(&self) -> u64 {
        (self.fill_interval.as_nanos() / self.quota.max(1) as u128) as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number (`lb_common::PROTO_TCP` / `PROTO_UDP`).
    pub fn number(&self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardingMode {
    /// Destination and source rewritten; replies come back through the balancer.
    #[default]
    Nat,
    /// Direct server return (L2): only the destination MAC is rewritten.
    Dsr,
}

impl ForwardingMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ForwardingMode::Nat => "nat",
            ForwardingMode::Dsr => "dsr",
        }
    }

    /// The value of `lb_common::VipInfo::mode` (`MODE_NAT` / `MODE_DSR`).
    pub fn number(&self) -> u8 {
        match self {
            ForwardingMode::Nat => lb_common::MODE_NAT,
            ForwardingMode::Dsr => lb_common::MODE_DSR,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Same family as the VIP.
    pub address: IpAddr,
    /// The VIP's port when omitted (0 straight out of serde, resolved by [`parse`]). In dsr
    /// mode it must equal the VIP's port.
    #[serde(default, deserialize_with = "deserialize_backend_port")]
    pub port: u16,
    /// 0..=65535, default 1; 0 takes no new flows.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    /// Takes no new flows; its existing flows stay (default false).
    #[serde(default)]
    pub draining: bool,
}

impl BackendConfig {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}
fn default_table_size() -> u32 {
    maglev::DEFAULT_TABLE_SIZE
}
fn default_max_vips() -> u32 {
    lb_common::DEFAULT_MAX_VIPS
}
fn default_max_backends() -> u32 {
    lb_common::DEFAULT_MAX_BACKENDS
}
fn default_flow_table_size() -> u32 {
    lb_common::DEFAULT_FLOW_ENTRIES
}
fn default_panic_threshold() -> u32 {
    50
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
fn default_source_table_size() -> u32 {
    lb_common::DEFAULT_SOURCE_ENTRIES
}
fn default_fill_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_nat_port_min() -> u16 {
    20000
}
fn default_nat_port_max() -> u16 {
    59999
}
fn default_weight() -> u32 {
    1
}

fn deserialize_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(serde::de::Error::custom("port must be 1..65535 (got 0)")),
        p => Ok(p),
    }
}

fn deserialize_backend_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(serde::de::Error::custom("port must be 1..65535 (got 0); leave it out to use the VIP's port")),
        p => Ok(p),
    }
}

/// A configuration that cannot be read, parsed or accepted. Displays as
/// `origin:line: key: message` (parts that are unknown are left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name (or other origin) given to [`parse`].
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Key path such as `vip[1].backend[0].port`; empty when the error is not about a key
    /// (unreadable file, TOML syntax).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

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
}

impl Default for ControlBalancer {
    fn default() -> Self {
        Self { pin_dir: default_pin_dir() }
    }
}

/// Reads only [`Control`] from a config file, leniently: the commands that talk to a
/// running controller must work while the file holds a config it refused. A file that is
/// not TOML at all gives the defaults.
pub fn load_control(path: &Path) -> Result<Control, ConfigError> {
    let text = read(path)?;
    let origin = path.display().to_string();
    let doc = syntax(&text, &origin)?;
    toml::from_str(&text).map_err(|e| Ctx { origin: &origin, text: &text, doc: &doc }.serde_error(&e))
}

/// The TOML document of `text`, or its syntax error with the line.
fn syntax<'t>(text: &'t str, origin: &str) -> Result<ImDocument<&'t str>, ConfigError> {
    ImDocument::parse(text).map_err(|e| ConfigError {
        origin: origin.to_string(),
        line: e.span().map(|s| line_of(text, s.start)),
        key: String::new(),
        message: format!("invalid TOML: {}", one_line(e.message())),
    })
}

/// Parses and validates a configuration; `origin` (the file name) prefixes error messages.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let doc = syntax(text, origin)?;
    let cx = Ctx { origin, text, doc: &doc };
    let mut config: Config = toml::from_str(text).map_err(|e| cx.serde_error(&e))?;
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

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

macro_rules! path {
    ($($s:expr),* $(,)?) => { [$(Seg::from($s)),*] };
}

fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

fn one_line(s: &str) -> String {
    s.trim().replace('\n', "; ")
}

/// A node of the parsed document, for walking key paths.
#[derive(Clone, Copy)]
enum Node<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
    Tables(&'a ArrayOfTables),
    Array(&'a Array),
    Leaf(&'a Value),
    Empty,
}

impl<'a> Node<'a> {
    fn of_item(item: &'a Item) -> Self {
        match item {
            Item::Table(t) => Node::Table(t),
            Item::ArrayOfTables(a) => Node::Tables(a),
            Item::Value(v) => Node::of_value(v),
            Item::None => Node::Empty,
        }
    }

    fn of_value(v: &'a Value) -> Self {
        match v {
            Value::InlineTable(t) => Node::Inline(t),
            Value::Array(a) => Node::Array(a),
            v => Node::Leaf(v),
        }
    }

    fn span(&self) -> Option<Range<usize>> {
        match self {
            Node::Table(t) => t.span(),
            Node::Inline(t) => t.span(),
            Node::Tables(a) => a.span(),
            Node::Array(a) => a.span(),
            Node::Leaf(v) => v.span(),
            Node::Empty => None,
        }
    }

    /// The key's own span and the value under it.
    fn key(&self, k: &str) -> Option<(Option<Range<usize>>, Node<'a>)> {
        let (key, item) = match self {
            Node::Table(t) => t.get_key_value(k)?,
            Node::Inline(t) => t.get_key_value(k)?,
            _ => return None,
        };
        Some((key.span(), Node::of_item(item)))
    }

    fn index(&self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Tables(a) => a.get(i).map(Node::Table),
            Node::Array(a) => a.get(i).map(Node::of_value),
            _ => None,
        }
    }

    /// Every child: its path step, the span of its key (for keyed children) and the node.
    fn children(&self) -> Vec<(Seg, Option<Range<usize>>, Node<'a>)> {
        let keys: Vec<&str> = match self {
            Node::Table(t) => t.iter().map(|(k, _)| k).collect(),
            Node::Inline(t) => t.iter().map(|(k, _)| k).collect(),
            Node::Tables(a) => {
                return a.iter().enumerate().map(|(i, t)| (Seg::Index(i), None, Node::Table(t))).collect();
            }
            Node::Array(a) => {
                return a.iter().enumerate().map(|(i, v)| (Seg::Index(i), None, Node::of_value(v))).collect();
            }
            Node::Leaf(_) | Node::Empty => return Vec::new(),
        };
        keys.into_iter().filter_map(|k| self.key(k).map(|(span, node)| (Seg::from(k), span, node))).collect()
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The most specific key path whose key or value span contains `target`.
fn path_at(node: Node, target: &Range<usize>, path: &mut Vec<Seg>, best: &mut Option<(usize, Vec<Seg>)>) {
    fn consider(span: Option<Range<usize>>, target: &Range<usize>, path: &[Seg], best: &mut Option<(usize, Vec<Seg>)>) {
        if let Some(span) = span
            && contains(&span, target)
            && best.as_ref().is_none_or(|(len, _)| span.len() <= *len)
        {
            *best = Some((span.len(), path.to_vec()));
        }
    }
    for (seg, key_span, child) in node.children() {
        path.push(seg);
        consider(key_span, target, path, best);
        consider(child.span(), target, path, best);
        path_at(child, target, path, best);
        path.pop();
    }
}

struct Ctx<'a> {
    origin: &'a str,
    text: &'a str,
    doc: &'a ImDocument<&'a str>,
}

impl Ctx<'_> {
    fn root(&self) -> Node<'_> {
        Node::Table(self.doc.as_table())
    }

    /// The line of a key path: the key's own line, or the line of the closest enclosing
    /// table or value that exists in the text.
    fn line(&self, path: &[Seg]) -> Option<usize> {
        let mut node = self.root();
        let mut offset = None;
        for seg in path {
            let found = match seg {
                Seg::Key(k) => node.key(k).map(|(key_span, child)| (key_span.or(child.span()), child)),
                Seg::Index(i) => node.index(*i).map(|child| (child.span(), child)),
            };
            let Some((span, child)) = found else { break };
            if let Some(span) = span {
                offset = Some(span.start);
            }
            node = child;
        }
        offset.map(|o| line_of(self.text, o))
    }

    fn err(&self, path: &[Seg], message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_string(),
            line: self.line(path),
            key: path_string(path),
            message: message.into(),
        }
    }

    /// A deserialisation error (wrong type, unknown or missing key, bad value), with the
    /// key path recovered from the error's span.
    fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut message = one_line(e.message());
        let mut path = Vec::new();
        if let Some(span) = e.span() {
            let mut best = None;
            path_at(self.root(), &span, &mut Vec::new(), &mut best);
            if let Some((_, p)) = best {
                path = p;
            }
        }
        // "missing field `x`" is reported on the enclosing table, whose span may equal an
        // outer one's (a lone [[vip]] spans the whole file): climb to the table whose
        // schema has the field, then name the key.
        if let Some(field) = message.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
            while !path.is_empty() && !fields_at(&path).iter().any(|f| f == field) {
                path.pop();
            }
            path.push(Seg::from(field));
            message = "required key is missing".to_string();
        }
        ConfigError {
            origin: self.origin.to_string(),
            line: e.span().map(|s| line_of(self.text, s.start)),
            key: path_string(&path),
            message,
        }
    }
}

/// The keys of the table at a key path, as the config's own types (serde) declare them: a
/// document holding only an unknown key at that path is refused with the list of the keys
/// expected there (`deny_unknown_fields`), before anything else is checked.
fn fields_at(path: &[Seg]) -> Vec<String> {
    const PROBE: &str = "lb-schema-probe";
    let mut value = toml::Value::Table([(PROBE.to_owned(), toml::Value::Integer(0))].into_iter().collect());
    for seg in path.iter().rev() {
        value = match seg {
            Seg::Key(k) => toml::Value::Table([(k.clone(), value)].into_iter().collect()),
            Seg::Index(_) => toml::Value::Array(vec![value]),
        };
    }
    let Ok(probe) = toml::to_string(&value) else { return Vec::new() };
    let Err(e) = toml::from_str::<Config>(&probe) else { return Vec::new() };
    let message = e.message();
    let Some(expected) = message.strip_prefix(&format!("unknown field `{PROBE}`, expected")) else {
        return Vec::new();
    };
    expected.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

fn bad_address(a: IpAddr) -> Option<&'static str> {
    match a {
        IpAddr::V4(v) if v.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(v) if v.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v) if v.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v) if v.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(v) if v.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn validate(c: &Config, cx: &Ctx) -> Result<(), ConfigError> {
    let b = &c.balancer;

    if b.interfaces.is_empty() {
        return Err(cx.err(&path!["balancer", "interfaces"], "at least one interface is required"));
    }
    let mut seen_if = HashSet::new();
    for (i, name) in b.interfaces.iter().enumerate() {
        if !valid_ifname(name) {
            return Err(cx.err(
                &path!["balancer", "interfaces", i],
                format!("{name:?} is not a valid interface name (1 to {MAX_IFNAME_LEN} characters, no '/', ':' or whitespace)"),
            ));
        }
        if !seen_if.insert(name) {
            return Err(cx.err(&path!["balancer", "interfaces", i], format!("interface {name:?} is listed twice")));
        }
    }

    let pin = &b.pin_dir;
    if !pin.starts_with(BPF_FS) || pin == Path::new(BPF_FS) || pin.components().any(|c| c == Component::ParentDir) {
        return Err(cx.err(
            &path!["balancer", "pin_dir"],
            format!("must be a directory under {BPF_FS} (got {:?})", pin.display().to_string()),
        ));
    }

    let m = b.maglev_table_size;
    if !(MIN_TABLE_SIZE..=MAX_TABLE_SIZE).contains(&m) {
        return Err(cx.err(
            &path!["balancer", "maglev_table_size"],
            format!("must be a prime between {MIN_TABLE_SIZE} and {MAX_TABLE_SIZE} (got {m}); 65537 is a good choice"),
        ));
    }
    if !maglev::is_prime(m) {
        return Err(cx.err(
            &path!["balancer", "maglev_table_size"],
            format!("must be a prime number (got {m}); 65537 is a good choice"),
        ));
    }
    for (key, value) in [
        ("max_vips", b.max_vips),
        ("max_backends", b.max_backends),
        ("flow_table_size", b.flow_table_size),
        ("source_table_size", b.source_table_size),
    ] {
        if value == 0 {
            return Err(cx.err(&path!["balancer", key], "must be at least 1"));
        }
    }
    // Room for every VIP's table twice (the new one is written aside, then switched in)
    // must stay addressable by the u32 `VipInfo::table_offset`.
    if (b.max_vips as u64) * 2 * (m as u64) > u32::MAX as u64 {
        return Err(cx.err(
            &path!["balancer", "max_vips"],
            format!("max_vips ({}) x 2 x maglev_table_size ({m}) slots do not fit in 32 bits", b.max_vips),
        ));
    }
    if b.nat_port_min < MIN_NAT_PORT {
        return Err(cx.err(
            &path!["balancer", "nat_port_min"],
            format!("must be at least {MIN_NAT_PORT} (got {})", b.nat_port_min),
        ));
    }
    for (key, timeout) in b.flow_timeouts.all() {
        if !(flows::MIN_FLOW_TIMEOUT..=flows::MAX_FLOW_TIMEOUT).contains(&timeout) {
            return Err(cx.err(
                &path!["balancer", "flow_timeouts", key],
                format!(
                    "must be between {} and {} (got {})",
                    humantime::format_duration(flows::MIN_FLOW_TIMEOUT),
                    humantime::format_duration(flows::MAX_FLOW_TIMEOUT),
                    humantime::format_duration(timeout)
                ),
            ));
        }
    }
    if b.nat_port_max < b.nat_port_min {
        return Err(cx.err(
            &path!["balancer", "nat_port_max"],
            format!("must not be below nat_port_min ({}) (got {})", b.nat_port_min, b.nat_port_max),
        ));
    }
    if let Some(a) = b.ipv4
        && let Some(what) = bad_address(IpAddr::V4(a))
    {
        return Err(cx.err(&path!["balancer", "ipv4"], format!("{a} is {what}")));
    }
    if let Some(a) = b.ipv6
        && let Some(what) = bad_address(IpAddr::V6(a))
    {
        return Err(cx.err(&path!["balancer", "ipv6"], format!("{a} is {what}")));
    }

    let admin = &c.admin;
    if let Some(token) = &admin.token
        && !valid_token(token)
    {
        return Err(cx.err(&path!["admin", "token"], "must be at least 16 characters, without spaces"));
    }
    if !admin.listen.ip().is_loopback() && admin.token.is_none() {
        return Err(cx.err(
            &path!["admin", "listen"],
            format!("{} is not a loopback address: set admin.token, or listen on 127.0.0.1", admin.listen),
        ));
    }

    if c.vips.len() > b.max_vips as usize {
        return Err(cx.err(
            &path!["vip", b.max_vips as usize],
            format!("{} VIPs configured, more than balancer.max_vips ({})", c.vips.len(), b.max_vips),
        ));
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut services: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
    let mut all_backends: HashSet<SocketAddr> = HashSet::new();
    for (i, vip) in c.vips.iter().enumerate() {
        if !plain_name(&vip.name) {
            return Err(cx.err(
                &path!["vip", i, "name"],
                format!(
                    "{:?}: use letters, digits, '.', '_' and '-' (it names the VIP in metrics and admin URLs)",
                    vip.name
                ),
            ));
        }
        if let Some(&j) = names.get(vip.name.as_str()) {
            return Err(cx.err(
                &path!["vip", i, "name"],
                format!("duplicate VIP name {:?} (also vip[{j}]{})", vip.name, at_line(cx, &path!["vip", j, "name"])),
            ));
        }
        names.insert(&vip.name, i);

        let a = vip.address;
        if let Some(what) = bad_address(a) {
            return Err(cx.err(&path!["vip", i, "address"], format!("{a} is {what}")));
        }
        let own = match a {
            IpAddr::V4(v) => b.ipv4 == Some(v),
            IpAddr::V6(v) => b.ipv6 == Some(v),
        };
        if own {
            return Err(cx.err(
                &path!["vip", i, "address"],
                format!(
                    "{a} is the balancer's own address (balancer.ipv{}); a VIP needs an address of its own",
                    if a.is_ipv4() { 4 } else { 6 }
                ),
            ));
        }
        if let Some(&j) = services.get(&(a, vip.port, vip.protocol)) {
            return Err(cx.err(
                &path!["vip", i, "address"],
                format!(
                    "{}/{} is already served by vip[{j}] ({:?})",
                    SocketAddr::new(a, vip.port),
                    vip.protocol,
                    c.vips[j].name
                ),
            ));
        }
        services.insert((a, vip.port, vip.protocol), i);

        if vip.mode == ForwardingMode::Nat {
            let missing = match a {
                IpAddr::V4(_) if b.ipv4.is_none() => Some("balancer.ipv4"),
                IpAddr::V6(_) if b.ipv6.is_none() => Some("balancer.ipv6"),
                _ => None,
            };
            if let Some(key) = missing {
                return Err(cx.err(
                    &path!["vip", i, "address"],
                    format!("a nat mode {} VIP needs {key} (the source address of NATed packets)", family_name(a)),
                ));
            }
        }

        validate_rate_limits(vip, i, cx)?;
        validate_health(vip, i, cx)?;

        if vip.backends.len() > m as usize {
            return Err(cx.err(
                &path!["vip", i, "backend"],
                format!("{} backends, more than balancer.maglev_table_size ({m})", vip.backends.len()),
            ));
        }

        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for (j, be) in vip.backends.iter().enumerate() {
            let ba = be.address;
            if ba.is_ipv4() != a.is_ipv4() {
                return Err(cx.err(
                    &path!["vip", i, "backend", j, "address"],
                    format!(
                        "{} backend {ba} for an {} VIP ({a}); families must match",
                        family_name(ba),
                        family_name(a)
                    ),
                ));
            }
            if let Some(what) = bad_address(ba) {
                return Err(cx.err(&path!["vip", i, "backend", j, "address"], format!("{ba} is {what}")));
            }
            if vip.mode == ForwardingMode::Dsr && be.port != vip.port {
                return Err(cx.err(
                    &path!["vip", i, "backend", j, "port"],
                    format!("dsr backends must use the VIP's port {} (got {})", vip.port, be.port),
                ));
            }
            if be.weight > MAX_WEIGHT {
                return Err(cx.err(
                    &path!["vip", i, "backend", j, "weight"],
                    format!("must be 0..={MAX_WEIGHT} (got {})", be.weight),
                ));
            }
            let sa = be.socket_addr();
            if let Some(&k) = seen.get(&sa) {
                return Err(cx.err(
                    &path!["vip", i, "backend", j, "address"],
                    format!(
                        "duplicate backend {sa} (also backend[{k}]{})",
                        at_line(cx, &path!["vip", i, "backend", k])
                    ),
                ));
            }
            seen.insert(sa, j);
            if all_backends.insert(sa) && all_backends.len() > b.max_backends as usize {
                return Err(cx.err(
                    &path!["vip", i, "backend", j],
                    format!("more than balancer.max_backends ({}) distinct backends (address, port)", b.max_backends),
                ));
            }
        }
    }
    if let Some(dns) = &c.dns {
        validate_dns(c, dns, cx)?;
    }
    Ok(())
}

/// An admin token: 16 characters or more, none of them spaces or control characters.
fn valid_token(token: &str) -> bool {
    token.len() >= 16 && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A name that appears in metrics, URLs and peers' views.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn validate_dns(c: &Config, dns: &dns::DnsConfig, cx: &Ctx) -> Result<(), ConfigError> {
    if dns.listen.is_empty() {
        return Err(cx.err(&path!["dns", "listen"], "at least one address, e.g. [\"0.0.0.0:53\"]"));
    }
    let mut seen = HashSet::new();
    for (i, addr) in dns.listen.iter().enumerate() {
        if !seen.insert(addr) {
            return Err(cx.err(&path!["dns", "listen", i], format!("{addr} is listed twice")));
        }
    }
    if dns.udp_sockets.is_some_and(|n| !(1..=64).contains(&n)) {
        return Err(cx.err(&path!["dns", "udp_sockets"], "1..=64"));
    }
    let vantage = dns.vantage_name(&c.balancer.region);
    if !plain_name(vantage) {
        return Err(cx.err(&path!["dns", "vantage"], format!("{vantage:?}: use letters, digits, '.', '_' and '-'")));
    }
    if dns.peer_interval < Duration::from_millis(100) {
        return Err(cx.err(&path!["dns", "peer_interval"], "must be at least 100ms"));
    }
    if dns.peer_timeout.is_zero() || dns.peer_timeout > dns.peer_interval {
        return Err(cx.err(&path!["dns", "peer_timeout"], "must be more than 0 and at most peer_interval"));
    }
    if dns.peer_stale_after() < dns.peer_interval {
        return Err(cx.err(&path!["dns", "peer_stale_after"], "must be at least peer_interval"));
    }
    let mut peers = HashSet::from([vantage]);
    for (i, peer) in dns.peers.iter().enumerate() {
        if !plain_name(&peer.name) {
            return Err(cx.err(
                &path!["dns", "peer", i, "name"],
                format!("{:?}: use letters, digits, '.', '_' and '-'", peer.name),
            ));
        }
        if !peers.insert(&peer.name) {
            return Err(cx.err(
                &path!["dns", "peer", i, "name"],
                format!("{:?} is this vantage point or another peer", peer.name),
            ));
        }
        if peer.token.as_deref().is_some_and(|t| !valid_token(t)) {
            return Err(cx.err(&path!["dns", "peer", i, "token"], "must be at least 16 characters, without spaces"));
        }
    }
    let vantage_points = dns.peers.len() as u32 + 1;
    if let Some(q) = dns.quorum
        && !(1..=vantage_points).contains(&q)
    {
        return Err(cx.err(
            &path!["dns", "quorum"],
            format!("1..={vantage_points} (this controller and {} peers; got {q})", dns.peers.len()),
        ));
    }
    for (i, region) in dns.client_regions.iter().enumerate() {
        if region.region.is_empty() {
            return Err(cx.err(&path!["dns", "client_region", i, "region"], "must not be empty"));
        }
    }
    let mut targets = HashMap::new();
    for (i, t) in dns.targets.iter().enumerate() {
        if !plain_name(&t.name) {
            return Err(cx.err(
                &path!["dns", "target", i, "name"],
                format!("{:?}: use letters, digits, '.', '_' and '-'", t.name),
            ));
        }
        if let Some(j) = targets.insert(t.name.as_str(), i) {
            return Err(cx.err(
                &path!["dns", "target", i, "name"],
                format!("duplicate target name {:?} (also dns.target[{j}])", t.name),
            ));
        }
        if let Some(what) = bad_address(t.address) {
            return Err(cx.err(&path!["dns", "target", i, "address"], format!("{} is {what}", t.address)));
        }
        if !(1..=MAX_WEIGHT).contains(&t.weight) {
            return Err(cx.err(&path!["dns", "target", i, "weight"], format!("1..={MAX_WEIGHT} (got {})", t.weight)));
        }
        match (&t.health_check, &t.vip) {
            (Some(check), None) => {
                validate_check(check, &path!["dns", "target", i, "health_check"], cx)?;
                if check.port.is_none() {
                    return Err(
                        cx.err(&path!["dns", "target", i, "health_check", "port"], "a target's check needs its port")
                    );
                }
            }
            (None, Some(vip)) => {
                if !c.vips.iter().any(|v| &v.name == vip) {
                    return Err(
                        cx.err(&path!["dns", "target", i, "vip"], format!("no [[vip]] named {vip:?} on this balancer"))
                    );
                }
            }
            _ => {
                return Err(cx.err(
                    &path!["dns", "target", i],
                    "needs exactly one of health_check (probe it) or vip (a VIP of this balancer)",
                ));
            }
        }
    }
    crate::dns::zone::Zones::compile(dns).map_err(|e| {
        let mut path = path!["dns", "zone", e.zone].to_vec();
        path.extend(e.path.into_iter().map(|step| match step {
            crate::dns::zone::Step::Key(key) => Seg::from(key),
            crate::dns::zone::Step::Index(index) => Seg::from(index),
        }));
        cx.err(&path, e.message)
    })?;
    Ok(())
}

fn validate_rate_limits(vip: &VipConfig, i: usize, cx: &Ctx) -> Result<(), ConfigError> {
    for (key, limit) in [
        ("new_flow_limit", &vip.new_flow_limit),
        ("packet_limit", &vip.packet_limit),
        ("source_limit", &vip.source_limit),
    ] {
        let Some(limit) = limit else { continue };
        if limit.quota == 0 {
            return Err(cx.err(&path!["vip", i, key, "quota"], "must be at least 1 token"));
        }
        if !(MIN_FILL_INTERVAL..=MAX_FILL_INTERVAL).contains(&limit.fill_interval) {
            return Err(cx.err(
                &path!["vip", i, key, "fill_interval"],
                format!("must be between 1ms and 1h (got {})", humantime::format_duration(limit.fill_interval)),
            ));
        }
        if limit.token_ns() < MIN_TOKEN_NS {
            return Err(cx.err(
                &path!["vip", i, key, "quota"],
                format!(
                    "{} tokens every {} is more than the packet path enforces accurately ({} per second)",
                    limit.quota,
                    humantime::format_duration(limit.fill_interval),
                    1_000_000_000 / MIN_TOKEN_NS
                ),
            ));
        }
        if limit.burst() == 0 {
            return Err(cx.err(&path!["vip", i, key, "burst"], "must be at least 1 token"));
        }
        if limit.burst() as u128 * limit.token_ns() as u128 > MAX_REFILL.as_nanos() {
            return Err(cx.err(
                &path!["vip", i, key, "burst"],
                format!("{} tokens take more than 24h to refill at this rate", limit.burst()),
            ));
        }
        match (key, limit.prefix_len) {
            ("source_limit", Some(len)) => {
                let (min, max, _) = if vip.address.is_ipv4() { SOURCE_PREFIX_V4 } else { SOURCE_PREFIX_V6 };
                if !(min..=max).contains(&len) {
                    return Err(cx.err(
                        &path!["vip", i, key, "prefix_len"],
                        format!("must be {min}..={max} for an {} VIP (got {len})", family_name(vip.address)),
                    ));
                }
            }
            ("source_limit", None) => {}
            (_, Some(_)) => {
                return Err(cx.err(&path!["vip", i, key, "prefix_len"], "only source_limit groups clients by prefix"));
            }
            (_, None) => {}
        }
    }
    Ok(())
}

fn validate_health(vip: &VipConfig, i: usize, cx: &Ctx) -> Result<(), ConfigError> {
    if vip.panic_threshold > 100 {
        return Err(
            cx.err(&path!["vip", i, "panic_threshold"], format!("a percentage, 0..=100 (got {})", vip.panic_threshold))
        );
    }
    if let Some(check) = &vip.health_check {
        validate_check(check, &path!["vip", i, "health_check"], cx)?;
    }
    if let Some(outlier) = &vip.outlier_detection {
        let fail = |key: &str, message: String| cx.err(&path!["vip", i, "outlier_detection", key], message);
        if vip.mode == ForwardingMode::Dsr {
            return Err(cx.err(
                &path!["vip", i, "outlier_detection"],
                "needs nat mode: in dsr mode replies bypass the balancer, so it sees no failures",
            ));
        }
        if outlier.interval < Duration::from_millis(100) {
            return Err(fail("interval", "must be at least 100ms".into()));
        }
        if outlier.base_ejection_time.is_zero() {
            return Err(fail("base_ejection_time", "must be more than 0".into()));
        }
        if outlier.max_ejection_time < outlier.base_ejection_time {
            return Err(fail("max_ejection_time", "must be at least base_ejection_time".into()));
        }
        if outlier.max_ejection_percent > 100 {
            return Err(fail(
                "max_ejection_percent",
                format!("a percentage, 0..=100 (got {})", outlier.max_ejection_percent),
            ));
        }
    }
    if vip.http && vip.mode == ForwardingMode::Dsr {
        return Err(cx.err(&path!["vip", i, "http"], "needs nat mode: in dsr mode responses bypass the balancer"));
    }
    for (j, region) in vip.failover_regions.iter().enumerate() {
        if region.is_empty() || vip.failover_regions[..j].contains(region) {
            return Err(cx.err(&path!["vip", i, "failover_regions", j], format!("empty or repeated region {region:?}")));
        }
    }
    Ok(())
}

/// ", line N" for a key path, or nothing when the line is unknown.
/// Rules of a `health_check` table at `at`.
fn validate_check(check: &HealthCheckConfig, at: &[Seg], cx: &Ctx) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| {
        let mut path = at.to_vec();
        path.push(Seg::from(key));
        cx.err(&path, message)
    };
    if check.interval < Duration::from_millis(100) {
        return Err(fail("interval", "must be at least 100ms".into()));
    }
    if check.timeout.is_zero() || check.timeout > check.interval {
        return Err(fail(
            "timeout",
            format!("must be more than 0 and at most the interval ({})", humantime::format_duration(check.interval)),
        ));
    }
    if check.jitter > check.interval {
        return Err(fail("jitter", "must be at most the interval".into()));
    }
    for key in ["healthy_threshold", "unhealthy_threshold"] {
        let value = if key == "healthy_threshold" { check.healthy_threshold } else { check.unhealthy_threshold };
        if value == 0 {
            return Err(fail(key, "must be at least 1".into()));
        }
    }
    if check.port == Some(0) {
        return Err(fail("port", "must be 1..65535".into()));
    }
    if !check.path.starts_with('/') || check.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail("path", format!("must start with '/' and hold no spaces (got {:?})", check.path)));
    }
    if check.host.as_deref().is_some_and(|h| h.is_empty() || h.chars().any(|c| c.is_whitespace() || c.is_control())) {
        return Err(fail("host", "must be a host name without spaces".into()));
    }
    if check.expected_statuses.is_empty() {
        return Err(fail("expected_statuses", "at least one status code or range".into()));
    }
    Ok(())
}

fn at_line(cx: &Ctx, path: &[Seg]) -> String {
    cx.line(path).map(|l| format!(", line {l}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of the test's own under the temp dir (removed by the caller).
    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("lop-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn control_commands_show_the_syntax_error_of_the_config() {
        let path = temp_file("syntax.toml", b"[admin]\nlisten = \"127.0.0.1:9999\"\n[balancer\n");
        let result = load_control(&path);
        std::fs::remove_file(&path).unwrap();
        let e = result.unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.starts_with("invalid TOML"), "{e}");
    }

    #[test]
    fn control_commands_show_a_wrongly_typed_admin_section() {
        let path = temp_file("admin-type.toml", b"[admin]\nlisten = 9999\n");
        let result = load_control(&path);
        std::fs::remove_file(&path).unwrap();
        let e = result.unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(2), "admin.listen"), "{e}");
    }

    #[test]
    fn a_config_that_is_not_utf8_is_refused_with_line_and_column() {
        let path = temp_file("latin1.toml", b"[balancer]\ninterfaces = [\"eth0\"]\nregion = \"z\xfcrich\"\n");
        let (full, control) = (load(&path), load_control(&path));
        std::fs::remove_file(&path).unwrap();
        for e in [full.unwrap_err(), control.unwrap_err()] {
            assert_eq!(e.line, Some(3), "{e}");
            assert!(e.message.contains("0xfc at column 12"), "{e}");
        }
    }

    const GOOD: &str = r#"# a test config
[balancer]
interfaces = ["eth0", "eth1"]
ipv4 = "10.0.0.1"
ipv6 = "fd00::1"
region = "r1"
zone = "z1"

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80

[[vip.backend]]
address = "10.0.1.11"
port = 8080
weight = 2
region = "r1"
zone = "z1"

[[vip.backend]]
address = "10.0.1.12"

[[vip]]
name = "dns"
address = "10.100.0.2"
port = 53
protocol = "udp"
mode = "dsr"
backend = [
  { address = "10.0.2.11" },
  { address = "10.0.2.12", port = 53, weight = 0 },
]

[[vip]]
name = "web6"
address = "fd00:100::1"
port = 443

[[vip.backend]]
address = "fd00:1::11"
"#;

    /// 1-based line of the first line of `text` containing `needle` (after `after` lines).
    fn line_with(text: &str, needle: &str, nth: usize) -> usize {
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .nth(nth)
            .unwrap_or_else(|| panic!("{needle:?} not in text"))
            .0
            + 1
    }

    fn err(text: &str) -> ConfigError {
        match parse(text, "test.toml") {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the error names `key` on `line` and its message contains `msg`.
    fn expect(text: &str, key: &str, line: usize, msg: &str) -> ConfigError {
        let e = err(text);
        let shown = e.to_string();
        assert_eq!(e.key, key, "{shown}");
        assert_eq!(e.line, Some(line), "{shown}");
        assert!(shown.starts_with(&format!("test.toml:{line}: {key}: ")), "{shown}");
        assert!(e.message.contains(msg), "{shown} lacks {msg:?}");
        e
    }

    fn replace(text: &str, from: &str, to: &str) -> String {
        assert!(text.contains(from), "{from:?}");
        text.replacen(from, to, 1)
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD, "test.toml").unwrap();
        let b = &c.balancer;
        assert_eq!(b.interfaces, ["eth0", "eth1"]);
        assert_eq!(b.xdp_mode, XdpModeSetting::Auto);
        assert_eq!(b.ipv4, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(b.ipv6, Some("fd00::1".parse().unwrap()));
        assert_eq!(b.pin_dir, PathBuf::from("/sys/fs/bpf/lb"));
        assert_eq!(b.hash_seed, 0);
        assert_eq!(b.maglev_table_size, 65537);
        assert_eq!((b.max_vips, b.max_backends, b.flow_table_size), (64, 4096, 262_144));
        assert_eq!((b.nat_port_min, b.nat_port_max), (20000, 59999));
        assert_eq!((b.region.as_str(), b.zone.as_str()), ("r1", "z1"));

        assert_eq!(c.vips.len(), 3);
        let web = &c.vips[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.address, "10.100.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((web.port, web.protocol, web.mode), (80, Protocol::Tcp, ForwardingMode::Nat));
        assert_eq!(web.protocol.number(), lb_common::PROTO_TCP);
        assert_eq!(
            web.backends[0],
            BackendConfig {
                address: "10.0.1.11".parse().unwrap(),
                port: 8080,
                weight: 2,
                region: "r1".into(),
                zone: "z1".into(),
                draining: false,
            }
        );
        // Port defaults to the VIP's, weight to 1, labels to "".
        assert_eq!(
            web.backends[1],
            BackendConfig {
                address: "10.0.1.12".parse().unwrap(),
                port: 80,
                weight: 1,
                region: "".into(),
                zone: "".into(),
                draining: false,
            }
        );
        let dns = &c.vips[1];
        assert_eq!((dns.protocol, dns.mode), (Protocol::Udp, ForwardingMode::Dsr));
        assert_eq!(dns.protocol.number(), lb_common::PROTO_UDP);
        assert_eq!(dns.mode.number(), lb_common::MODE_DSR);
        assert_eq!(dns.backends.iter().map(|b| (b.port, b.weight)).collect::<Vec<_>>(), [(53, 1), (53, 0)]);
        assert_eq!(c.vips[2].backends[0].socket_addr().to_string(), "[fd00:1::11]:443");
    }

    #[test]
    fn explicit_settings_are_read() {
        let text = r#"
[balancer]
interfaces = ["ens5"]
xdp_mode = "skb"
pin_dir = "/sys/fs/bpf/lb2"
hash_seed = 4294967295
maglev_table_size = 101
max_vips = 2
max_backends = 3
flow_table_size = 1000
nat_port_min = 1024
nat_port_max = 1024
"#;
        let b = parse(text, "t").unwrap().balancer;
        assert_eq!(b.xdp_mode, XdpModeSetting::Skb);
        assert_eq!(b.pin_dir, PathBuf::from("/sys/fs/bpf/lb2"));
        assert_eq!(
            (b.hash_seed, b.maglev_table_size, b.max_vips, b.max_backends, b.flow_table_size),
            (u32::MAX, 101, 2, 3, 1000)
        );
        assert_eq!((b.nat_port_min, b.nat_port_max), (1024, 1024));
        assert_eq!(b.ipv4, None);
        assert_eq!(
            parse(&replace(text, "\"skb\"", "\"driver\""), "t").unwrap().balancer.xdp_mode,
            XdpModeSetting::Driver
        );
    }

    #[test]
    fn unknown_key_refused_with_line() {
        let text = replace(GOOD, "weight = 2", "wieght = 2");
        let e = expect(&text, "vip[0].backend[0].wieght", line_with(&text, "wieght", 0), "unknown field `wieght`");
        assert!(e.message.contains("weight"), "{e}");
        // In an inline table, in [balancer], and a whole unknown table.
        let text = replace(GOOD, "port = 53, weight = 0", "port = 53, wait = 0");
        expect(&text, "vip[1].backend[1].wait", line_with(&text, "wait", 0), "unknown field `wait`");
        let text = replace(GOOD, "zone = \"z1\"\n\n[[vip]]", "zone = \"z1\"\nxdp = \"skb\"\n\n[[vip]]");
        expect(&text, "balancer.xdp", line_with(&text, "xdp =", 0), "unknown field `xdp`");
        let text = format!("{GOOD}\n[health]\ninterval = 1\n");
        expect(&text, "health", line_with(&text, "[health]", 0), "unknown field `health`");
    }

    #[test]
    fn wrong_type_refused_with_line() {
        let text = replace(GOOD, "port = 8080", "port = \"8080\"");
        expect(&text, "vip[0].backend[0].port", line_with(&text, "\"8080\"", 0), "invalid type");
        let text = replace(GOOD, "interfaces = [\"eth0\", \"eth1\"]", "interfaces = \"eth0\"");
        expect(&text, "balancer.interfaces", 3, "invalid type");
        let text = replace(GOOD, "port = 8080", "port = 70000");
        expect(&text, "vip[0].backend[0].port", line_with(&text, "70000", 0), "70000");
        let text = replace(GOOD, "protocol = \"udp\"", "protocol = \"sctp\"");
        expect(&text, "vip[1].protocol", line_with(&text, "sctp", 0), "unknown variant `sctp`");
        let text = replace(GOOD, "address = \"10.0.2.11\"", "address = \"10.0.2.300\"");
        expect(&text, "vip[1].backend[0].address", line_with(&text, "10.0.2.300", 0), "invalid IP address");
        let text = replace(GOOD, "ipv4 = \"10.0.0.1\"", "ipv4 = \"fd00::2\"");
        expect(&text, "balancer.ipv4", 4, "invalid IPv4");
        let text = replace(GOOD, "[balancer]", "[balancer]\nhash_seed = -1");
        expect(&text, "balancer.hash_seed", 3, "-1");
    }

    #[test]
    fn missing_required_key_refused_with_line() {
        let text = replace(GOOD, "name = \"dns\"\n", "");
        let l = line_with(&text, "[[vip]]", 1);
        expect(&text, "vip[1].name", l, "required key is missing");
        let text = replace(GOOD, "address = \"10.0.1.12\"\n", "");
        expect(&text, "vip[0].backend[1].address", line_with(&text, "[[vip.backend]]", 1), "required key is missing");
        let text = replace(GOOD, "interfaces = [\"eth0\", \"eth1\"]\n", "");
        expect(&text, "balancer.interfaces", 2, "required key is missing");
        let e = err("[[vip]]\nname = \"a\"\naddress = \"10.100.0.1\"\nport = 80\n");
        assert_eq!(e.key, "balancer", "{e}");
        assert_eq!(e.to_string(), "test.toml:1: balancer: required key is missing");
        let e = err("");
        assert_eq!(e.key, "balancer", "{e}");
        let e = err("# nothing\n\n[[vip]]\nname = \"a\"\naddress = \"10.100.0.1\"\nport = 80\n");
        assert_eq!(e.key, "balancer", "{e}");
        // A lone [[vip]] spans the same text as the array: the field is still placed right.
        let e = err("[balancer]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"a\"\nport = 80\n");
        assert_eq!(e.to_string(), "test.toml:3: vip[0].address: required key is missing");
    }

    #[test]
    fn syntax_error_has_line() {
        let text = replace(GOOD, "port = 8080", "port = = 8080");
        let e = err(&text);
        assert_eq!(e.line, Some(line_with(&text, "= =", 0)), "{e}");
        assert!(e.to_string().starts_with(&format!("test.toml:{}: invalid TOML", line_with(&text, "= =", 0))), "{e}");
    }

    #[test]
    fn interfaces_required_and_valid() {
        let text = replace(GOOD, "interfaces = [\"eth0\", \"eth1\"]", "interfaces = []");
        expect(&text, "balancer.interfaces", 3, "at least one interface");
        let text = replace(GOOD, "\"eth1\"", "\"averyveryverylongname\"");
        expect(&text, "balancer.interfaces[1]", 3, "not a valid interface name");
        let text = replace(GOOD, "\"eth1\"", "\"\"");
        expect(&text, "balancer.interfaces[1]", 3, "not a valid interface name");
        let text = replace(GOOD, "\"eth1\"", "\"eth/1\"");
        expect(&text, "balancer.interfaces[1]", 3, "not a valid interface name");
        let text = replace(GOOD, "\"eth1\"", "\"eth0\"");
        expect(&text, "balancer.interfaces[1]", 3, "listed twice");
    }

    #[test]
    fn pin_dir_under_bpffs() {
        for bad in ["/tmp/lb", "/sys/fs/bpf", "/sys/fs/bpf/../lb", "sys/fs/bpf/lb", "/sys/fs/bpfx"] {
            let text =
                replace(GOOD, "zone = \"z1\"\n\n[[vip]]", &format!("zone = \"z1\"\npin_dir = \"{bad}\"\n\n[[vip]]"));
            expect(&text, "balancer.pin_dir", line_with(&text, "pin_dir", 0), "under /sys/fs/bpf");
        }
    }

    #[test]
    fn table_size_prime_and_in_range() {
        for (size, msg) in [("65536", "prime"), ("100", "between"), ("99991", "ok"), ("2000003", "between")] {
            let text = replace(GOOD, "[balancer]", &format!("[balancer]\nmaglev_table_size = {size}"));
            if msg == "ok" {
                assert_eq!(parse(&text, "t").unwrap().balancer.maglev_table_size, 99991);
            } else {
                expect(&text, "balancer.maglev_table_size", 3, msg);
            }
        }
        // More backends in a VIP than slots.
        let mut text = replace(GOOD, "[balancer]", "[balancer]\nmaglev_table_size = 101");
        for i in 0..101 {
            text.push_str(&format!("[[vip.backend]]\naddress = \"fd00:1::{:x}\"\n", i + 100));
        }
        expect(&text, "vip[2].backend", line_with(&text, "[[vip.backend]]", 2), "more than balancer.maglev_table_size");
    }

    #[test]
    fn sizes_at_least_one_and_addressable() {
        for key in ["max_vips", "max_backends", "flow_table_size"] {
            let text = replace(GOOD, "[balancer]", &format!("[balancer]\n{key} = 0"));
            expect(&text, &format!("balancer.{key}"), 3, "at least 1");
        }
        let text = replace(GOOD, "[balancer]", "[balancer]\nmax_vips = 40000");
        expect(&text, "balancer.max_vips", 3, "32 bits");
    }

    #[test]
    fn nat_port_range() {
        let text = replace(GOOD, "[balancer]", "[balancer]\nnat_port_min = 1000");
        expect(&text, "balancer.nat_port_min", 3, "at least 1024");
        let text = replace(GOOD, "[balancer]", "[balancer]\nnat_port_min = 30000\nnat_port_max = 29999");
        expect(&text, "balancer.nat_port_max", 4, "must not be below nat_port_min (30000)");
    }

    #[test]
    fn the_keys_of_a_table_come_from_the_schema() {
        let keys = |path: &[Seg]| fields_at(path);
        assert_eq!(keys(&[]), ["balancer", "admin", "dns", "vip"]);
        assert!(keys(&path!["balancer"]).contains(&"flow_timeouts".to_owned()));
        assert_eq!(keys(&path!["balancer", "flow_timeouts"]).len(), 6);
        assert!(keys(&path!["vip", 0, "health_check"]).contains(&"expected_statuses".to_owned()));
        assert!(keys(&path!["dns", "zone", 0, "policy", 0]).contains(&"trickle_ratio".to_owned()));
        assert_eq!(keys(&path!["vip", 0, "backend", 0]), ["address", "port", "weight", "region", "zone", "draining"]);
    }

    #[test]
    fn flow_timeouts_parse_with_defaults_and_are_bounded() {
        let c = parse(GOOD, "t.toml").expect("valid");
        assert_eq!(c.balancer.flow_timeouts, flows::FlowTimeoutsConfig::default());
        assert_eq!(c.balancer.flow_timeouts.tcp_time_wait, Duration::from_secs(60));
        let text = format!("{GOOD}\n[balancer.flow_timeouts]\ntcp_closed = \"200ms\"\nudp = \"2m\"\n");
        let c = parse(&text, "t.toml").expect("valid");
        assert_eq!(
            (c.balancer.flow_timeouts.tcp_closed, c.balancer.flow_timeouts.udp),
            (Duration::from_millis(200), Duration::from_secs(120))
        );
        assert_eq!(c.balancer.flow_timeouts.to_map().tcp_closed_ns, 200_000_000);
        let text = format!("{GOOD}\n[balancer.flow_timeouts]\ntcp_fin = \"1ms\"\n");
        expect(
            &text,
            "balancer.flow_timeouts.tcp_fin",
            line_with(&text, "tcp_fin", 0),
            "must be between 10ms and 30days",
        );
        let text = format!("{GOOD}\n[balancer.flow_timeouts]\ntcp_finn = \"1s\"\n");
        expect(&text, "balancer.flow_timeouts.tcp_finn", line_with(&text, "tcp_finn", 0), "unknown");
    }

    #[test]
    fn balancer_addresses_must_be_unicast() {
        let text = replace(GOOD, "ipv4 = \"10.0.0.1\"", "ipv4 = \"0.0.0.0\"");
        expect(&text, "balancer.ipv4", 4, "unspecified");
        let text = replace(GOOD, "ipv6 = \"fd00::1\"", "ipv6 = \"ff02::1\"");
        expect(&text, "balancer.ipv6", 5, "multicast");
    }

    #[test]
    fn vip_names_unique_and_plain() {
        let text = replace(GOOD, "name = \"dns\"", "name = \"web\"");
        let e = expect(&text, "vip[1].name", line_with(&text, "name = \"web\"", 1), "duplicate VIP name \"web\"");
        assert!(e.message.contains(&format!("vip[0], line {}", line_with(&text, "name = \"web\"", 0))), "{e}");
        for bad in ["", "a b", "web/1"] {
            let text = replace(GOOD, "name = \"dns\"", &format!("name = \"{bad}\""));
            expect(&text, "vip[1].name", line_with(&text, &format!("name = \"{bad}\""), 0), "use letters, digits");
        }
    }

    #[test]
    fn vip_service_unique() {
        let text = replace(
            GOOD,
            "address = \"10.100.0.2\"\nport = 53\nprotocol = \"udp\"",
            "address = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"",
        );
        expect(
            &text,
            "vip[1].address",
            line_with(&text, "address = \"10.100.0.1\"", 1),
            "10.100.0.1:80/tcp is already served by vip[0] (\"web\")",
        );
        // Same address and port with another protocol is fine.
        let text = replace(GOOD, "address = \"10.100.0.2\"\nport = 53", "address = \"10.100.0.1\"\nport = 80");
        let text = replace(&text, "port = 53, weight", "weight");
        let c = parse(&text, "t").unwrap();
        assert_eq!(c.vips[1].backends[1].port, 80);
    }

    #[test]
    fn vip_port_not_zero() {
        let text = replace(GOOD, "port = 443", "port = 0");
        expect(&text, "vip[2].port", line_with(&text, "port = 0", 0), "port must be 1..65535");
        let text = replace(GOOD, "port = 8080", "port = 0");
        expect(&text, "vip[0].backend[0].port", line_with(&text, "port = 0", 0), "leave it out");
    }

    #[test]
    fn vip_address_checks() {
        let text = replace(GOOD, "address = \"10.100.0.1\"", "address = \"224.0.0.1\"");
        expect(&text, "vip[0].address", line_with(&text, "224.0.0.1", 0), "multicast");
        let text = replace(GOOD, "address = \"10.100.0.1\"", "address = \"10.0.0.1\"");
        expect(&text, "vip[0].address", line_with(&text, "address = \"10.0.0.1\"", 0), "balancer's own address");
    }

    #[test]
    fn too_many_vips() {
        let text = replace(GOOD, "[balancer]", "[balancer]\nmax_vips = 2");
        expect(&text, "vip[2]", line_with(&text, "[[vip]]", 2), "3 VIPs configured, more than balancer.max_vips (2)");
    }

    #[test]
    fn too_many_backends() {
        // 5 distinct backends (address, port) in GOOD.
        let text = replace(GOOD, "[balancer]", "[balancer]\nmax_backends = 3");
        expect(&text, "vip[1].backend[1]", line_with(&text, "10.0.2.12", 0), "more than balancer.max_backends (3)");
        let text = replace(GOOD, "[balancer]", "[balancer]\nmax_backends = 5");
        parse(&text, "t").unwrap();
        // The same backend in two VIPs counts once.
        let text = replace(GOOD, "[balancer]", "[balancer]\nmax_backends = 5");
        let text = format!(
            "{text}\n[[vip]]\nname = \"web2\"\naddress = \"10.100.0.9\"\nport = 8080\n[[vip.backend]]\naddress = \"10.0.1.11\"\n"
        );
        parse(&text, "t").unwrap();
    }

    #[test]
    fn backend_family_matches_vip() {
        let text = replace(GOOD, "address = \"10.0.1.12\"", "address = \"fd00:1::12\"");
        expect(
            &text,
            "vip[0].backend[1].address",
            line_with(&text, "fd00:1::12", 0),
            "IPv6 backend fd00:1::12 for an IPv4 VIP",
        );
        let text = replace(GOOD, "address = \"fd00:1::11\"", "address = \"10.0.1.11\"");
        expect(&text, "vip[2].backend[0].address", line_with(&text, "address = \"10.0.1.11\"", 1), "IPv4 backend");
    }

    #[test]
    fn backend_address_unicast() {
        let text = replace(GOOD, "address = \"10.0.1.12\"", "address = \"0.0.0.0\"");
        expect(&text, "vip[0].backend[1].address", line_with(&text, "0.0.0.0", 0), "unspecified");
    }

    #[test]
    fn dsr_backends_use_vip_port() {
        let text = replace(GOOD, "port = 53, weight = 0", "port = 5353, weight = 0");
        expect(
            &text,
            "vip[1].backend[1].port",
            line_with(&text, "5353", 0),
            "dsr backends must use the VIP's port 53 (got 5353)",
        );
        // Block-style tables too, as in the documented example.
        let text = format!(
            "{GOOD}\n[[vip]]\nname = \"d2\"\naddress = \"10.100.0.3\"\nport = 80\nmode = \"dsr\"\n\n[[vip.backend]]\naddress = \"10.0.3.1\"\nport = 8080\n"
        );
        let e = expect(&text, "vip[3].backend[0].port", line_with(&text, "port = 8080", 1), "(got 8080)");
        assert_eq!(
            e.to_string(),
            format!(
                "test.toml:{}: vip[3].backend[0].port: dsr backends must use the VIP's port 80 (got 8080)",
                e.line.unwrap()
            )
        );
    }

    #[test]
    fn backend_weight_range() {
        let text = replace(GOOD, "weight = 2", "weight = 65536");
        expect(&text, "vip[0].backend[0].weight", line_with(&text, "65536", 0), "0..=65535");
    }

    #[test]
    fn duplicate_backend_in_vip() {
        // 10.0.1.12 defaults to port 80; make the first backend the same.
        let text = replace(GOOD, "address = \"10.0.1.11\"\nport = 8080", "address = \"10.0.1.12\"\nport = 80");
        let e = expect(
            &text,
            "vip[0].backend[1].address",
            line_with(&text, "10.0.1.12", 1),
            "duplicate backend 10.0.1.12:80",
        );
        assert!(
            e.message.contains(&format!("also backend[0], line {}", line_with(&text, "[[vip.backend]]", 0))),
            "{e}"
        );
        // Same address on another port is a different backend.
        let text = replace(GOOD, "address = \"10.0.1.11\"", "address = \"10.0.1.12\"");
        parse(&text, "t").unwrap();
    }

    #[test]
    fn nat_vip_needs_balancer_address_of_its_family() {
        let text = replace(GOOD, "ipv4 = \"10.0.0.1\"\n", "");
        expect(&text, "vip[0].address", line_with(&text, "10.100.0.1", 0), "needs balancer.ipv4");
        let text = replace(GOOD, "ipv6 = \"fd00::1\"\n", "");
        expect(&text, "vip[2].address", line_with(&text, "fd00:100::1", 0), "needs balancer.ipv6");
        // dsr VIPs do not need it.
        let text = "[balancer]\ninterfaces = [\"eth0\"]\n[[vip]]\nname = \"a\"\naddress = \"10.100.0.1\"\nport = 80\nmode = \"dsr\"\n";
        parse(text, "t").unwrap();
    }

    #[test]
    fn rate_limits_parse_with_defaults() {
        let text = replace(
            GOOD,
            "port = 80\n",
            "port = 80\nnew_flow_limit = { quota = 100 }\npacket_limit = { quota = 5, fill_interval = \"10ms\", burst = 50 }\n\n[vip.source_limit]\nquota = 10\nprefix_len = 24\n",
        );
        let c = parse(&text, "t").unwrap();
        let web = &c.vips[0];
        let flows = web.new_flow_limit.as_ref().unwrap();
        assert_eq!(
            (flows.quota, flows.fill_interval, flows.burst(), flows.token_ns()),
            (100, Duration::from_secs(1), 100, 10_000_000)
        );
        let packets = web.packet_limit.as_ref().unwrap();
        assert_eq!((packets.burst(), packets.token_ns()), (50, 2_000_000));
        assert_eq!(web.source_limit.as_ref().unwrap().prefix_len, Some(24));
        assert_eq!(c.vips[1].new_flow_limit, None);
        assert_eq!(c.balancer.source_table_size, 65536);
    }

    #[test]
    fn rate_limits_validated() {
        let with = |limit: &str| replace(GOOD, "port = 80\n", &format!("port = 80\n{limit}\n"));
        let line = line_with(GOOD, "port = 80", 0) + 1;
        expect(&with("new_flow_limit = { quota = 0 }"), "vip[0].new_flow_limit.quota", line, "at least 1");
        expect(&with("source_limit = { quota = 1, burst = 0 }"), "vip[0].source_limit.burst", line, "at least 1");
        expect(
            &with("packet_limit = { quota = 1, fill_interval = \"2h\" }"),
            "vip[0].packet_limit.fill_interval",
            line,
            "between 1ms and 1h (got 2h)",
        );
        expect(
            &with("packet_limit = { quota = 100000000 }"),
            "vip[0].packet_limit.quota",
            line,
            "enforces accurately (20000000 per second)",
        );
        expect(
            &with("packet_limit = { quota = 1, burst = 100000 }"),
            "vip[0].packet_limit.burst",
            line,
            "more than 24h",
        );
        expect(
            &with("source_limit = { quota = 1, prefix_len = 33 }"),
            "vip[0].source_limit.prefix_len",
            line,
            "8..=32 for an IPv4 VIP (got 33)",
        );
        expect(
            &with("new_flow_limit = { quota = 1, prefix_len = 24 }"),
            "vip[0].new_flow_limit.prefix_len",
            line,
            "only source_limit",
        );
        let e = err(&with("new_flow_limit = { quota = 1, fill_interval = \"soon\" }"));
        assert_eq!((e.key.as_str(), e.line), ("vip[0].new_flow_limit.fill_interval", Some(line)), "{e}");
        let e = err(&with("new_flow_limit = { quota = 1, rate = 2 }"));
        assert_eq!((e.key.as_str(), e.line), ("vip[0].new_flow_limit.rate", Some(line)), "{e}");
        let v6 = replace(GOOD, "port = 443\n", "port = 443\nsource_limit = { quota = 1, prefix_len = 16 }\n");
        expect(
            &v6,
            "vip[2].source_limit.prefix_len",
            line_with(GOOD, "port = 443", 0) + 1,
            "32..=128 for an IPv6 VIP (got 16)",
        );
    }

    #[test]
    fn health_and_outlier_settings_parse_with_defaults() {
        let text = replace(
            GOOD,
            "port = 80\n",
            "port = 80\nhttp = true\nfailover_regions = [\"r3\", \"r2\"]\nhealth_check = { type = \"http\", path = \"/healthz\", expected_statuses = [200, \"300-302\"] }\noutlier_detection = { consecutive_5xx = 3 }\n",
        );
        let c = parse(&text, "t").unwrap();
        let web = &c.vips[0];
        assert!(web.http);
        assert_eq!(web.panic_threshold, 50);
        assert_eq!(web.failover_regions, ["r3", "r2"]);
        let check = web.health_check.as_ref().unwrap();
        assert_eq!(check.kind, HealthCheckKind::Http);
        assert_eq!(
            (check.interval, check.timeout, check.jitter),
            (Duration::from_secs(5), Duration::from_secs(1), Duration::ZERO)
        );
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold, check.port), (2, 3, None));
        assert_eq!(check.expected_statuses, [StatusRange { from: 200, to: 200 }, StatusRange { from: 300, to: 302 }]);
        let outlier = web.outlier_detection.as_ref().unwrap();
        assert_eq!((outlier.consecutive_5xx, outlier.consecutive_local_origin_failures), (3, 5));
        assert!(!outlier.split_external_local_origin_errors && outlier.uneject_on_healthy_check);
        assert_eq!(
            (outlier.interval, outlier.base_ejection_time, outlier.max_ejection_time, outlier.max_ejection_percent),
            (Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(300), 10)
        );
        assert!(!web.backends[0].draining);
    }

    #[test]
    fn health_and_outlier_settings_validated() {
        let with = |extra: &str| replace(GOOD, "port = 80\n", &format!("port = 80\n{extra}\n"));
        let line = line_with(GOOD, "port = 80", 0) + 1;
        expect(&with("panic_threshold = 101"), "vip[0].panic_threshold", line, "0..=100");
        expect(
            &with("health_check = { type = \"tcp\", timeout = \"6s\" }"),
            "vip[0].health_check.timeout",
            line,
            "at most the interval",
        );
        expect(
            &with("health_check = { type = \"tcp\", unhealthy_threshold = 0 }"),
            "vip[0].health_check.unhealthy_threshold",
            line,
            "at least 1",
        );
        expect(
            &with("health_check = { type = \"http\", path = \"healthz\" }"),
            "vip[0].health_check.path",
            line,
            "start with '/'",
        );
        let e = err(&with("health_check = { type = \"http\", expected_statuses = [\"299-200\"] }"));
        assert_eq!((e.key.as_str(), e.line), ("vip[0].health_check.expected_statuses", Some(line)), "{e}");
        let e = err(&with("health_check = { type = \"icmp\" }"));
        assert_eq!((e.key.as_str(), e.line), ("vip[0].health_check.type", Some(line)), "{e}");
        expect(
            &with("outlier_detection = { max_ejection_time = \"1s\" }"),
            "vip[0].outlier_detection.max_ejection_time",
            line,
            "at least base_ejection_time",
        );
        expect(&with("failover_regions = [\"r2\", \"r2\"]"), "vip[0].failover_regions[1]", line, "repeated region");
        let dsr_line = line_with(GOOD, "mode = \"dsr\"", 0) + 1;
        let dsr = replace(GOOD, "mode = \"dsr\"\n", "mode = \"dsr\"\noutlier_detection = {}\n");
        expect(&dsr, "vip[1].outlier_detection", dsr_line, "needs nat mode");
    }

    #[test]
    fn admin_listens_on_loopback_unless_a_token_is_set() {
        let c = parse(GOOD, "t").unwrap();
        assert_eq!(c.admin, AdminConfig { listen: "127.0.0.1:9180".parse().unwrap(), token: None });
        let open = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9180\"\n");
        let line = open.lines().count();
        expect(&open, "admin.listen", line, "not a loopback address");
        let short = format!("{GOOD}\n[admin]\ntoken = \"abc\"\n");
        expect(&short, "admin.token", short.lines().count(), "at least 16 characters");
        let good = format!("{GOOD}\n[admin]\nlisten = \"[::]:9000\"\ntoken = \"0123456789abcdef\"\n");
        assert_eq!(parse(&good, "t").unwrap().admin.token.as_deref(), Some("0123456789abcdef"));
    }

    #[test]
    fn load_reports_unreadable_file() {
        let e = load(Path::new("/nonexistent/lb.toml")).unwrap_err();
        assert_eq!(e.line, None);
        assert!(e.to_string().starts_with("/nonexistent/lb.toml: cannot read the file"), "{e}");
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config"));
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(!c.balancer.interfaces.is_empty());
                n += 1;
            }
        }
        assert!(n >= 2, "only {n} example configs in {}", dir.display());
    }
}
