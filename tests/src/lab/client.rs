//! What the client does: HTTP gets, UDP requests, pings, line connections that stay open,
//! connection floods, and a tally of who answered.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use super::*;

/// One HTTP GET over a new connection; returns the body (the backend's name).
pub fn http_get(addr: SocketAddr) -> Result<String> {
    http_get_padded(addr, 0)
}

/// [`http_get`] with a header of `pad` bytes more: a request of full-size segments.
pub fn http_get_padded(addr: SocketAddr, pad: usize) -> Result<String> {
    let (status, body) = http_exchange(addr, pad)?;
    ensure!(status == 200, "unexpected status {status} from {body}");
    Ok(body)
}

/// One HTTP GET over a new connection, whatever its status; returns the status and the
/// body (the backend's name).
pub fn http_request(addr: SocketAddr) -> Result<(u16, String)> {
    http_exchange(addr, 0)
}

fn http_exchange(addr: SocketAddr, pad: usize) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let pad = if pad > 0 { format!("X-Pad: {}\r\n", "a".repeat(pad)) } else { String::new() };
    stream.write_all(format!("GET / HTTP/1.0\r\nHost: lab\r\n{pad}\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head.strip_prefix("HTTP/1.0 ").and_then(|rest| rest.get(..3)?.parse().ok());
    let status = status.with_context(|| format!("unexpected response: {head}"))?;
    Ok((status, body.trim().to_owned()))
}

/// One UDP request from a new socket (so a new source port); returns the answering backend.
pub fn udp_request(addr: SocketAddr) -> Result<String> {
    let bind: SocketAddr =
        if addr.is_ipv6() { (Ipv6Addr::UNSPECIFIED, 0).into() } else { (Ipv4Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send(b"who")?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).with_context(|| format!("no UDP answer from {addr}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One ICMP echo (IPv4 or IPv6, by the address) with a timeout of one second; `Ok` when the
/// echo reply came back. Uses a datagram ICMP socket (the lab allows them in its namespaces
/// through `net.ipv4.ping_group_range`), so no `ping` binary is needed.
pub fn ping(addr: IpAddr) -> Result<()> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, recv, sendto, setsockopt, socket,
        sockopt,
    };
    use nix::sys::time::TimeVal;
    let (family, protocol, echo_request, echo_reply) = match addr {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp, 8u8, 0u8),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6, 128u8, 129u8),
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, protocol).context("opening an ICMP socket")?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    // type, code, checksum (the kernel fills it in), identifier (the kernel's), sequence 1.
    let mut request = [echo_request, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    request[8..].copy_from_slice(b"lb-lab!!");
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    match addr {
        IpAddr::V4(a) => sendto(
            raw,
            &request,
            &SockaddrIn::from(std::net::SocketAddrV4::new(a, 0)),
            nix::sys::socket::MsgFlags::empty(),
        ),
        IpAddr::V6(a) => sendto(
            raw,
            &request,
            &SockaddrIn6::from(std::net::SocketAddrV6::new(a, 0, 0, 0)),
            nix::sys::socket::MsgFlags::empty(),
        ),
    }
    .with_context(|| format!("sending an echo request to {addr}"))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    loop {
        ensure!(Instant::now() < deadline, "no echo reply from {addr}");
        let n = recv(raw, &mut buf, nix::sys::socket::MsgFlags::empty())
            .with_context(|| format!("no echo reply from {addr}"))?;
        // The socket is connected to nothing, so skip anything but our reply.
        if n >= 8 && buf[0] == echo_reply && buf[6..8] == [0, 1] {
            return Ok(());
        }
    }
}

/// A connection that stays open; each `ask` answers with the backend's name.
pub struct LineConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineConnection {
    pub fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok(Self { writer: stream.try_clone()?, reader: BufReader::new(stream) })
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.writer.local_addr()?)
    }

    pub fn ask(&mut self) -> Result<String> {
        self.writer.write_all(b"who\n")?;
        let mut line = String::new();
        ensure!(self.reader.read_line(&mut line)? > 0, "connection closed");
        Ok(line.trim().to_owned())
    }
}

/// What one [`connect_flood`] sender saw.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Connection attempts (SYNs) sent.
    pub sent: u64,
    /// Attempts that were answered (connected) within [`FLOOD_ANSWER_WAIT`].
    pub connected: u64,
    pub first_sent: Instant,
    pub last_sent: Instant,
}

/// How long a flood attempt may take to connect: far above the lab's RTT, well below the
/// kernel's first SYN retransmission (1 s), so every attempt is exactly one SYN.
pub const FLOOD_ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Opens TCP connections from `source` to `target` at `rate` per second for `duration`,
/// each a new flow (a fresh ephemeral port), closing each as soon as it connects or after
/// [`FLOOD_ANSWER_WAIT`]. With `cpu`, the thread first pins itself to that CPU, so the
/// packets it sends are processed there (veth delivers on the sending CPU). Runs in the
/// calling thread's network namespace.
pub fn connect_flood(
    source: IpAddr,
    target: SocketAddr,
    rate: f64,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<Flood> {
    use socket2::{Domain, Socket, Type};
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    }
    let mut pending: std::collections::VecDeque<(Socket, Instant)> = Default::default();
    let mut connected = 0;
    let mut reap = |pending: &mut std::collections::VecDeque<(Socket, Instant)>, now: Instant| {
        pending.retain(|(socket, sent)| {
            if socket.peer_addr().is_ok() {
                connected += 1;
                return false;
            }
            now.duration_since(*sent) < FLOOD_ANSWER_WAIT
        })
    };
    let start = Instant::now();
    let (mut sent, mut last_sent, mut last_reap) = (0u64, start, start);
    loop {
        let due = start + Duration::from_secs_f64(sent as f64 / rate);
        let now = Instant::now();
        if due.duration_since(start) >= duration {
            break;
        }
        if now.duration_since(last_reap) >= Duration::from_millis(10) {
            reap(&mut pending, now);
            last_reap = now;
        }
        if now < due {
            std::thread::sleep((due - now).min(Duration::from_millis(2)));
            continue;
        }
        let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        match socket.connect(&target.into()) {
            Err(e) if e.raw_os_error() != Some(nix::errno::Errno::EINPROGRESS as i32) => {
                return Err(e).context("connect");
            }
            _ => {}
        }
        pending.push_back((socket, now));
        sent += 1;
        last_sent = now;
    }
    while !pending.is_empty() {
        std::thread::sleep(Duration::from_millis(10));
        reap(&mut pending, Instant::now());
    }
    Ok(Flood { sent, connected, first_sent: start, last_sent })
}

/// Counts answers by backend name.
pub fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for name in names {
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}
