//! Test support: the netns lab, the deploy/ files (alerts, dashboard), and the environment for packet fixtures and benchmarks, and
//! the soak mode of the fault drill.

pub mod deploy;
pub mod fuzz;
pub mod lab;
pub mod lab_config;
pub mod packet_env;
pub mod packets;
pub mod sites;
pub mod soak;
