//! The pure step from state to desired tables: `tables` (per-VIP entries, rate limits,
//! backends), `ids` (stable small ids for VIPs and backends) and `maglev` (the lookup
//! tables). No I/O; `sync` writes the difference into the maps.

pub mod check_tunnels;
pub mod ids;
pub mod maglev;
pub mod tables;

pub use check_tunnels::CheckMarks;
pub use ids::{BackendIdentity, Existing, IdAllocator};
pub use ids::{addr_bytes, vip_key};
pub use tables::{DesiredTables, DesiredVip, MaglevInputs, TableBackend, desired, desired_with, own_settings};
