//! Every integration test, in one binary (as aya and hickory keep theirs): one link, and
//! tests of different features run side by side. Each module is one feature; a module's
//! tests are selected by its name, e.g.
//! `cargo xtask test -- -p lb-tests --test integration failover::`.
//! Most need root: they build their own namespaces, and fail when they can't.

mod capture;
mod capture_fixtures;
mod connections;
mod deploy_rules;
mod dns;
mod drain;
mod encap;
mod encap_fixtures;
mod end_to_end;
mod failover;
mod fixtures;
mod fleet;
mod flows_cli;
mod lifecycle;
mod operations;
mod ops_cli;
mod ops_namespace;
mod outlier_rates;
mod package;
mod packet_fuzz;
mod priority_load;
mod rate_limits;
mod scale;
mod soak;
mod vip_entries;
