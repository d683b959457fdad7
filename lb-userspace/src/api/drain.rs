//! `lb drain --timeout`: after the controller has stopped sending new flows to a backend of
//! a VIP, wait until the backend's open connections in that VIP reach 0, as the status
//! counts them (from the flow sweep, at most a second old), or the timeout passes; and the
//! same for a whole host (`lb host drain --timeout`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::status::{Status, UnknownVip};

/// How often the status is asked again: the flow sweep counts once a second.
pub const POLL: Duration = Duration::from_millis(250);

/// A drain whose backend still had open connections when the timeout passed. The backend
/// stays draining.
#[derive(Debug, thiserror::Error)]
#[error(
    "the drain of {backend} in VIP {vip} timed out after {}: {open} open connection(s) left (it stays draining)",
    humantime::format_duration(*timeout)
)]
pub struct DrainTimedOut {
    pub vip: String,
    pub backend: SocketAddr,
    pub open: u64,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    UnknownVip(#[from] UnknownVip),
    #[error("VIP {vip} has no backend {backend}")]
    UnknownBackend { vip: String, backend: SocketAddr },
    #[error(transparent)]
    TimedOut(#[from] DrainTimedOut),
}

/// The open connections of `backend` in `vip`.
pub fn open_flows(status: &Status, vip: &str, backend: SocketAddr) -> Result<u64, DrainError> {
    let only = status.only_vip(vip)?;
    let row = only.vips[0].backends.iter().find(|b| b.address == backend);
    let row = row.ok_or_else(|| DrainError::UnknownBackend { vip: vip.to_owned(), backend })?;
    Ok(row.open_flows)
}

/// Asks `status` every [`POLL`] until `backend` has no open connection left in `vip`;
/// returns how long that took, or [`DrainTimedOut`] with the connections left.
pub fn wait_drained(
    status: impl FnMut() -> anyhow::Result<Status>,
    vip: &str,
    backend: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let open = |s: &Status| Ok(open_flows(s, vip, backend)?);
    wait_for_none(status, open, timeout).map_err(|e| match e {
        Waited::Left(open) => DrainError::from(DrainTimedOut { vip: vip.to_owned(), backend, open, timeout }).into(),
        Waited::Failed(e) => e,
    })
}

/// A host drain (`lb host drain --timeout`) whose host still had open connections when the
/// timeout passed. The host stays drained.
#[derive(Debug, thiserror::Error)]
#[error(
    "the host drain timed out after {}: {open} open connection(s) left (it stays drained)",
    humantime::format_duration(*timeout)
)]
pub struct HostDrainTimedOut {
    pub open: u64,
    pub timeout: Duration,
}

/// Asks `status` every [`POLL`] until this host has no open connection left; returns how
/// long that took, or [`HostDrainTimedOut`].
pub fn wait_host_drained(
    status: impl FnMut() -> anyhow::Result<Status>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let open = |s: &Status| match &s.bgp {
        Some(bgp) => Ok(bgp.open_flows),
        None => anyhow::bail!("the controller announces no VIP by BGP (no [bgp] section)"),
    };
    wait_for_none(status, open, timeout).map_err(|e| match e {
        Waited::Left(open) => HostDrainTimedOut { open, timeout }.into(),
        Waited::Failed(e) => e,
    })
}

enum Waited {
    /// Connections were left when the timeout passed.
    Left(u64),
    Failed(anyhow::Error),
}

/// Polls until `open` counts none in the status, or `timeout` passes.
fn wait_for_none(
    mut status: impl FnMut() -> anyhow::Result<Status>,
    open: impl Fn(&Status) -> anyhow::Result<u64>,
    timeout: Duration,
) -> Result<Duration, Waited> {
    let start = Instant::now();
    loop {
        let open = status().and_then(|s| open(&s)).map_err(Waited::Failed)?;
        let waited = start.elapsed();
        if open == 0 {
            return Ok(waited);
        }
        if waited >= timeout {
            return Err(Waited::Left(open));
        }
        std::thread::sleep(POLL.min(timeout.saturating_sub(waited)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::tests::sample_status;

    fn with_open(open: u64) -> Status {
        let mut status = sample_status(1, 2);
        status.vips[0].backends[1].open_flows = open;
        status
    }

    #[test]
    fn waits_until_the_backend_has_no_open_connection_in_the_vip() {
        let (vip, backend) = {
            let s = with_open(0);
            (s.vips[0].name.clone(), s.vips[0].backends[1].address)
        };
        let mut left = [3, 1, 0].into_iter();
        let waited = wait_drained(|| Ok(with_open(left.next().unwrap())), &vip, backend, Duration::from_secs(5));
        assert!(waited.unwrap() >= 2 * POLL, "two polls saw connections");
        assert_eq!(left.next(), None);
    }

    #[test]
    fn a_timeout_reports_the_connections_left_and_unknown_names_are_errors() {
        let status = with_open(2);
        let (vip, backend) = (status.vips[0].name.clone(), status.vips[0].backends[1].address);
        let err = wait_drained(|| Ok(with_open(2)), &vip, backend, Duration::from_millis(300)).unwrap_err();
        let timed_out = err.downcast_ref::<DrainError>().expect("a drain error");
        assert!(matches!(timed_out, DrainError::TimedOut(DrainTimedOut { open: 2, .. })), "{timed_out}");
        assert!(err.to_string().contains("timed out after 300ms: 2 open connection(s) left"), "{err}");
        assert!(matches!(open_flows(&status, "nope", backend), Err(DrainError::UnknownVip(_))));
        let elsewhere: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert!(matches!(open_flows(&status, &vip, elsewhere), Err(DrainError::UnknownBackend { .. })));
    }

    #[test]
    fn a_host_drain_waits_for_the_hosts_open_connections_or_says_how_many_are_left() {
        let with_host_open = |open: u64| Status {
            bgp: Some(crate::api::bgp::BgpStatus { open_flows: open, ..crate::api::bgp::tests::status() }),
            ..sample_status(1, 1)
        };
        let mut left = [5, 2, 0].into_iter();
        let waited = wait_host_drained(|| Ok(with_host_open(left.next().unwrap())), Duration::from_secs(5)).unwrap();
        assert!(waited >= 2 * POLL, "two polls saw connections");
        let err = wait_host_drained(|| Ok(with_host_open(3)), Duration::from_millis(300)).unwrap_err();
        assert!(
            err.to_string().contains("timed out after 300ms: 3 open connection(s) left (it stays drained)"),
            "{err}"
        );
        let without_bgp = wait_host_drained(|| Ok(sample_status(1, 1)), Duration::from_secs(1)).unwrap_err();
        assert!(without_bgp.to_string().contains("no [bgp] section"), "{without_bgp}");
    }
}
