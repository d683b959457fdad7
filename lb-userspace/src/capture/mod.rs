//! `lb capture`: packets as the XDP program sees them and as it sends them. Switches the
//! running balancer's capture on (through its pinned maps) with the filters asked, writes
//! each record as pcapng until the count, the duration or a signal ends it, and switches
//! capture off again on every way out.

mod pcapng;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use lb_common::*;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::api::flows::Names;
use crate::config::{Config, ConfigError};
use crate::dataplane::{CaptureError, PacketCapture, PinnedIds, pinned_ids, pinned_records_lost};
use crate::plan::ids::{addr_bytes, ip_of};
use crate::plan::vip_key;
pub use pcapng::{PcapngSink, comment};

/// What `lb capture` was asked.
#[derive(Debug, Clone)]
pub struct CaptureArgs {
    pub config: PathBuf,
    /// A file, or `-` for standard output.
    pub write: PathBuf,
    pub vip: Option<String>,
    pub client: Option<IpAddr>,
    pub backend: Option<SocketAddr>,
    /// Stop after this many packets (each written twice: in and out).
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureCliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no VIP named {0:?} in the config")]
    UnknownVip(String),
    #[error("the running balancer has no VIP {0:?} (reload it?)")]
    VipNotRunning(String),
    #[error("the running balancer has no active backend {0}")]
    BackendNotRunning(SocketAddr),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("writing the capture")]
    Output(#[from] pcap_file::PcapError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a capture wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub written_in: u64,
    pub written_out: u64,
    /// Records the program could not send because the ring was full.
    pub lost: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (i, o, lost) = (self.written_in, self.written_out, self.lost);
        write!(f, "{} packets written ({i} in, {o} out), {lost} lost", i + o)
    }
}

/// The names of the ids in `pinned`, as the config names them.
pub fn names(config: &Config, pinned: &PinnedIds) -> Names {
    let ids =
        || config.vips.iter().filter_map(|v| Some((v, pinned.vips.iter().find(|(key, _)| *key == vip_key(v))?.1)));
    let vips = ids().map(|(v, id)| (id, v.name.clone())).collect();
    let modes = ids().map(|(v, id)| (id, v.mode.as_str())).collect();
    let backends =
        pinned.backends.iter().map(|(id, b)| (*id, SocketAddr::new(ip_of(&b.addr, b.family), b.port))).collect();
    Names { vips, backends, modes }
}

/// The switch's filters for `args`, with the ids the running balancer gave them.
pub fn filter(args: &CaptureArgs, config: &Config, pinned: &PinnedIds) -> Result<CaptureConfig, CaptureCliError> {
    let mut filter = CaptureConfig::default();
    if let Some(name) = &args.vip {
        let vip =
            config.vips.iter().find(|v| &v.name == name).ok_or_else(|| CaptureCliError::UnknownVip(name.clone()))?;
        let key = vip_key(vip);
        let (_, id) =
            pinned.vips.iter().find(|(k, _)| *k == key).ok_or_else(|| CaptureCliError::VipNotRunning(name.clone()))?;
        filter.flags |= CAPTURE_BY_VIP;
        filter.vip_id = *id;
    }
    if let Some(backend) = args.backend {
        let (addr, family) = addr_bytes(backend.ip());
        let (id, _) = pinned
            .backends
            .iter()
            .find(|(_, b)| b.addr == addr && b.family == family && b.port == backend.port())
            .ok_or(CaptureCliError::BackendNotRunning(backend))?;
        filter.flags |= CAPTURE_BY_BACKEND;
        filter.backend_id = *id;
    }
    if let Some(client) = args.client {
        filter.flags |= CAPTURE_BY_CLIENT;
        filter.client = addr_bytes(client).0;
    }
    Ok(filter)
}

/// Runs a capture as `args` asks; capture is off again when this returns.
pub async fn run(args: &CaptureArgs) -> Result<Summary, CaptureCliError> {
    let config = crate::config::load(&args.config)?;
    let pin_dir = &config.balancer.pin_dir;
    let pinned = pinned_ids(pin_dir)?;
    let filter = filter(args, &config, &pinned)?;
    let names = names(&config, &pinned);
    let out: Box<dyn Write> = if args.write.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(&args.write)?)
    };
    let mut sink = PcapngSink::new(std::io::BufWriter::new(out))?;
    let lost_before = pinned_records_lost(pin_dir)?;
    let capture = PacketCapture::open_pinned(pin_dir)?;
    // SAFETY: the capture owns the ring's fd, open as long as it lives; the AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register(capture) }.map_err(std::io::Error::from)?;
    ring.get_mut().start(filter)?;
    let mut summary = Summary::default();
    let pumped = pump(&mut ring, &mut sink, &names, args, &mut summary).await;
    let capture = ring.get_mut();
    let stopped = capture.stop();
    // What the program sent before the switch went off.
    let drained = write_ready(capture, &mut sink, &names, args.count, &mut summary);
    pumped?;
    stopped?;
    drained?;
    sink.flush()?;
    summary.lost = pinned_records_lost(pin_dir)?.saturating_sub(lost_before);
    Ok(summary)
}

/// Writes records as they come until the count, the duration, SIGINT or SIGTERM.
async fn pump<W: Write>(
    ring: &mut AsyncFd<PacketCapture>,
    sink: &mut PcapngSink<W>,
    names: &Names,
    args: &CaptureArgs,
    summary: &mut Summary,
) -> Result<(), CaptureCliError> {
    let (mut interrupt, mut terminate) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    while args.count.is_none_or(|n| summary.written_out < n) {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                // Cleared before reading: what is written meanwhile wakes the next wait.
                guard.clear_ready();
                write_ready(guard.get_inner_mut(), sink, names, args.count, summary)?;
                sink.flush()?;
            }
            _ = &mut deadline => break,
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    Ok(())
}

/// Writes every record in the ring, up to `count` packets.
fn write_ready<W: Write>(
    capture: &mut PacketCapture,
    sink: &mut PcapngSink<W>,
    names: &Names,
    count: Option<u64>,
    summary: &mut Summary,
) -> Result<(), CaptureCliError> {
    while count.is_none_or(|n| summary.written_out < n)
        && let Some(record) = capture.next_record()
    {
        sink.write(&record, names)?;
        match record.direction {
            CAPTURE_IN => summary.written_in += 1,
            _ => summary.written_out += 1,
        }
    }
    Ok(())
}
