//! The controller: configuration, the pure table computation (Maglev, ids), the sync step,
//! and the dataplane module that owns every aya call.

pub mod admin;
pub mod client;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod dns;
pub mod failover;
pub mod flows;
pub mod health;
pub mod locality;
pub mod maglev;
pub mod metrics;
pub mod neighbors;
pub mod outlier;
pub mod probe;
pub mod status;
pub mod sync;
pub mod tables;

/// The XDP object built from `lb-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
