//! What the soak does to the running balancer, in turn on a schedule: its neighbour table
//! flushed, a reload with a changed weight, a backend drained and undrained, a flood of
//! idle connections to the admin port and a flood of malformed DNS queries (UDP and TCP).
//! The floods run on their own thread, so the soak keeps sampling while they last.

use std::io::Write as _;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use hickory_server::proto::op::{Message, MessageType, OpCode, Query};
use hickory_server::proto::rr::{Name, RecordType};

use crate::lab::{Lab, LbProcess};

use super::{ADMIN, DNS, DNS_NAME, Options, VIP_NAME, config};

/// How long flood connections are held open before they are closed.
const HOLD: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    NeighbourFlush,
    Reload,
    Drain,
    Undrain,
    AdminFlood,
    DnsFlood,
}

/// The schedule, repeated: the drain lasts over the next fault, and reloads alternate the
/// first backend's weight.
pub const SCHEDULE: [Fault; 6] =
    [Fault::NeighbourFlush, Fault::Reload, Fault::Drain, Fault::AdminFlood, Fault::Undrain, Fault::DnsFlood];

/// A fault as it ran: since the start of the run, from when to when, and what it did.
pub struct FaultRun {
    pub fault: Fault,
    pub from: Duration,
    pub to: Duration,
    pub note: String,
    /// `lb`'s resident memory after the fault less before it.
    pub rss_growth_kib: i64,
}

/// A fault under way: done at once, or a flood still running.
pub enum Applied {
    Done(String),
    Running(JoinHandle<Result<String>>),
}

/// Applies the `n`th fault of the schedule.
pub fn apply(n: usize, lab: &Lab, lb: &LbProcess, opts: &Options) -> Result<(Fault, Applied)> {
    let fault = SCHEDULE[n % SCHEDULE.len()];
    let applied = match fault {
        Fault::NeighbourFlush => {
            lab.lb.ip(&["neigh", "flush", "all"])?;
            Applied::Done("ip neigh flush all".into())
        }
        Fault::Reload => {
            let weight = if (n / SCHEDULE.len()).is_multiple_of(2) { 2 } else { 1 };
            std::fs::write(lb.config_path(), config(lab, opts, weight).to_string())?;
            Applied::Done(format!("first backend's weight {weight}: {}", lb.cli(&["reload"])?.trim()))
        }
        Fault::Drain | Fault::Undrain => {
            let verb = if fault == Fault::Drain { "drain" } else { "undrain" };
            let backend = drained_backend(lab).to_string();
            Applied::Done(format!("{verb} {backend}: {}", lb.cli(&[verb, VIP_NAME, &backend])?.trim()))
        }
        Fault::AdminFlood => {
            let n = opts.admin_flood;
            Applied::Running(lab.client.spawn(move || admin_flood(n))?)
        }
        Fault::DnsFlood => {
            let (udp, tcp) = (opts.dns_udp_flood, opts.dns_tcp_flood);
            Applied::Running(lab.client.spawn(move || dns_flood(udp, tcp, n as u64))?)
        }
    };
    Ok((fault, applied))
}

/// Waits for a running flood; its note.
pub fn finish(flood: JoinHandle<Result<String>>) -> String {
    match flood.join().map_err(|_| anyhow!("the flood panicked")).and_then(|r| r) {
        Ok(note) => note,
        Err(e) => format!("the flood failed: {e:#}"),
    }
}

/// `n` idle connections to the admin port, held for [`HOLD`], then closed.
fn admin_flood(n: usize) -> Result<String> {
    let conns: Vec<_> = (0..n).map(|_| TcpStream::connect_timeout(&ADMIN, CONNECT_TIMEOUT)).collect();
    let connected = conns.iter().filter(|c| c.is_ok()).count();
    std::thread::sleep(HOLD);
    Ok(format!("{connected} of {n} idle admin connections opened, held {} s, closed", HOLD.as_secs()))
}

/// `udp` datagrams to the DNS port, random bytes and mutated queries in turn, and `tcp`
/// connections that each send a length-prefixed mutated query or random bytes (some
/// shorter than their prefix says), held for [`HOLD`], then closed.
fn dns_flood(udp: usize, tcp: usize, seed: u64) -> Result<String> {
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let query = valid_query()?;
    let socket = UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
    let mut sent = 0;
    for i in 0..udp {
        if socket.send_to(&rng.junk(i, &query), DNS).is_ok() {
            sent += 1;
        }
    }
    let mut conns = Vec::new();
    for i in 0..tcp {
        let Ok(mut conn) = TcpStream::connect_timeout(&DNS, CONNECT_TIMEOUT) else { continue };
        let message = rng.junk(i, &query);
        // Every third one claims more bytes than it sends, and so keeps the server waiting.
        let claimed = if i.is_multiple_of(3) { message.len() + 100 } else { message.len() };
        let mut framed = (claimed as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&message);
        let _ = conn.write_all(&framed);
        conns.push(conn);
    }
    let opened = conns.len();
    std::thread::sleep(HOLD);
    Ok(format!("{sent} of {udp} malformed datagrams sent, {opened} of {tcp} TCP connections with garbage, closed"))
}

/// A well-formed query for the zone's name: what the mutations start from.
fn valid_query() -> Result<Vec<u8>> {
    let mut query = Message::new(0x50a4, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_ascii(DNS_NAME)?, RecordType::A));
    query.to_vec().context("encoding the query")
}

/// A small generator for junk bytes: the floods need variety, not quality.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Even `i`: random bytes of a random length; odd: `query` with a few bytes changed,
    /// cut at a random length.
    fn junk(&mut self, i: usize, query: &[u8]) -> Vec<u8> {
        if i.is_multiple_of(2) {
            let len = 1 + self.next() as usize % 512;
            (0..len).map(|_| self.next() as u8).collect()
        } else {
            let mut mutated = query.to_vec();
            for _ in 0..1 + self.next() % 4 {
                let at = self.next() as usize % mutated.len();
                mutated[at] = self.next() as u8;
            }
            mutated.truncate(1 + self.next() as usize % mutated.len());
            mutated
        }
    }
}

impl FaultRun {
    pub fn new(fault: Fault, from: Instant, start: Instant, note: String) -> Self {
        let from = from.duration_since(start);
        Self { fault, from, to: start.elapsed(), note, rss_growth_kib: 0 }
    }
}

/// The address of `lab`'s drained backend, as `lb drain` names it.
pub fn drained_backend(lab: &Lab) -> SocketAddr {
    SocketAddr::new(lab.backends[1].addr(false), crate::lab::LINE_PORT)
}
