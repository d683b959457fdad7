//! Capture records as pcapng: one Ethernet interface (snap length `CAPTURE_SNAP_LEN`,
//! nanosecond timestamps), an enhanced packet block per record, its direction in the
//! block's flags and a comment giving direction, VIP, backend and verdict.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use lb_common::*;
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};

use crate::api::flows::Names;

/// `epb_flags` direction bits (pcapng): inbound, outbound.
const EPB_INBOUND: u32 = 1;
const EPB_OUTBOUND: u32 = 2;
/// `if_tsresol`: timestamps in 10^-9 s.
const NANOSECONDS: u8 = 9;

pub struct PcapngSink<W: Write> {
    writer: PcapNgWriter<W>,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC: records carry monotonic times.
    monotonic_to_real: Duration,
}

impl<W: Write> PcapngSink<W> {
    pub fn new(out: W) -> Result<Self, pcap_file::PcapError> {
        let mut writer = PcapNgWriter::new(out)?;
        writer.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: CAPTURE_SNAP_LEN as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed("xdp_lb")),
                InterfaceDescriptionOption::IfTsResol(NANOSECONDS),
            ],
        })?;
        Ok(Self { writer, monotonic_to_real: clock(libc::CLOCK_REALTIME).saturating_sub(clock(libc::CLOCK_MONOTONIC)) })
    }

    pub fn write(&mut self, record: &CaptureRecord, names: &Names) -> Result<(), pcap_file::PcapError> {
        let flags = if record.direction == CAPTURE_IN { EPB_INBOUND } else { EPB_OUTBOUND };
        self.writer.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: self.monotonic_to_real + Duration::from_nanos(record.ns),
            original_len: record.len,
            data: Cow::Borrowed(record.frame()),
            options: vec![
                EnhancedPacketOption::Flags(flags),
                EnhancedPacketOption::Comment(Cow::Owned(comment(record, names))),
            ],
        })?;
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.writer.get_mut().flush()
    }
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What a record's comment says: `in vip=web backend=10.0.1.11:8080 XDP_TX` (or
/// `XDP_DROP reason=no_backend`), ids for what has no name.
pub fn comment(record: &CaptureRecord, names: &Names) -> String {
    let direction = if record.direction == CAPTURE_IN { "in" } else { "out" };
    let mut said = format!("{direction} ifindex={}", record.ifindex);
    if record.vip_id != CAPTURE_NONE {
        match names.vips.get(&record.vip_id) {
            Some(name) => said += &format!(" vip={name}"),
            None => said += &format!(" vip=id{}", record.vip_id),
        }
    }
    if record.backend_id != CAPTURE_NONE {
        match names.backends.get(&record.backend_id) {
            Some(addr) => said += &format!(" backend={addr}"),
            None => said += &format!(" backend=id{}", record.backend_id),
        }
    }
    said += &format!(" {}", verdict_name(record.verdict));
    if let Some(reason) = CAPTURE_DROP_REASONS.get(record.drop_reason as usize).filter(|r| !r.is_empty()) {
        said += &format!(" reason={reason}");
    }
    said
}

fn verdict_name(verdict: u8) -> &'static str {
    match verdict {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "XDP_UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_name_the_direction_vip_backend_and_verdict() {
        let names = Names {
            vips: [(3, "web".to_string())].into(),
            backends: [(7, "10.0.1.11:8080".parse().unwrap())].into(),
            ..Default::default()
        };
        let record = |direction, vip_id, backend_id, verdict, drop_reason| CaptureRecord {
            direction,
            vip_id,
            backend_id,
            verdict,
            drop_reason,
            ifindex: 2,
            ..Default::default()
        };
        assert_eq!(
            comment(&record(CAPTURE_OUT, 3, 7, 3, 0), &names),
            "out ifindex=2 vip=web backend=10.0.1.11:8080 XDP_TX"
        );
        assert_eq!(
            comment(&record(CAPTURE_IN, 3, CAPTURE_NONE, 1, DROP_NO_BACKEND), &names),
            "in ifindex=2 vip=web XDP_DROP reason=no_backend"
        );
        assert_eq!(comment(&record(CAPTURE_IN, CAPTURE_NONE, 9, 2, 0), &names), "in ifindex=2 backend=id9 XDP_PASS");
    }

    #[test]
    fn pcapng_has_one_block_per_record_with_its_comment() {
        let mut sink = PcapngSink::new(Vec::new()).unwrap();
        let mut record =
            CaptureRecord { len: 1000, cap_len: 60, direction: CAPTURE_OUT, verdict: 3, ..Default::default() };
        record.data[..6].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        sink.write(&record, &Names::default()).unwrap();
        let bytes = sink.writer.into_inner();
        let mut reader = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
        let first = reader.next_block().unwrap().unwrap();
        assert!(matches!(first, pcap_file::pcapng::Block::InterfaceDescription(_)), "{first:?}");
        let block = reader.next_block().unwrap().unwrap();
        let pcap_file::pcapng::Block::EnhancedPacket(packet) = block else { panic!("{block:?}") };
        assert_eq!((packet.original_len, packet.data.len(), &packet.data[..6]), (1000, 60, &[1, 2, 3, 4, 5, 6][..]));
        assert!(packet.options.contains(&EnhancedPacketOption::Comment("out ifindex=0 XDP_TX".into())));
        assert!(reader.next_block().is_none());
    }
}
