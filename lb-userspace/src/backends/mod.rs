//! What decides whether a backend takes new flows: active checks (probe, health), passive
//! outlier ejection, draining (failover joins them), locality-aware failover, and the
//! neighbour entries the packet path needs to reach backends. Plain Rust except `probe`
//! and `neighbors`, which do I/O.

pub mod failover;
pub mod health;
pub mod locality;
pub mod neighbors;
pub mod outlier;
pub mod priority;
pub mod probe;
