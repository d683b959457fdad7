//! Test support: the netns lab, the deploy/ files (alerts, dashboard), the lab programs' font, and the environment for packet fixtures and benchmarks, and
//! the soak mode of the fault drill.

pub mod deploy;
pub mod encap_packets;
pub mod fleet;
pub mod font;
pub mod fuzz;
pub mod lab;
pub mod lab_config;
pub mod metrics_lab;
pub mod packet_env;
pub mod packets;
pub mod sites;
pub mod soak;
