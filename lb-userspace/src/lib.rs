//! The controller, a module per role (see ARCHITECTURE.md): configuration, the event loop,
//! and the dataplane module that owns every aya call.

pub mod admin;
pub mod api;
pub mod backend_setup;
pub mod backends;
pub mod bgp;
pub mod capture;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod dns;
pub mod flows;
pub mod plan;
pub mod sync;
#[cfg(test)]
mod testing;

/// The XDP object built from `lb-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
