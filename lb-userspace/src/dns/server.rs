//! The DNS server's listeners in the controller's runtime: UDP sockets answered in
//! batches ([`udp`], with the [`fast`] path for plain policy queries) and TCP ([`tcp`]),
//! each query answered by [`respond`].

use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use hickory_server::net::xfer::Protocol as Transport;
use hickory_server::proto::op::ResponseCode;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinHandle;

use super::respond::{DnsHandler, Encoded, Tally, answer_query};
use super::tcp::{self, TcpLimits};
use super::{fast, udp};

/// Binds every address and starts answering: over TCP within `limits`, and over UDP with
/// `sockets` SO_REUSEPORT sockets (the kernel spreads queries over them), each read by a
/// task that answers in place. Aborting the returned task stops it all.
pub fn serve(listen: &[SocketAddr], sockets: usize, limits: TcpLimits, handler: DnsHandler) -> Result<JoinHandle<()>> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for &addr in listen {
        for _ in 0..sockets {
            udp.push(udp_socket(addr).with_context(|| format!("DNS: binding UDP {addr}"))?);
        }
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("DNS: binding TCP {addr}"))?;
        listener.set_nonblocking(true)?;
        tcp.push(tokio::net::TcpListener::from_std(listener)?);
    }
    Ok(tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for socket in udp {
            tasks.spawn(answer_udp(socket, handler.clone()));
        }
        for listener in tcp {
            tasks.spawn(tcp::serve(listener, handler.clone(), limits));
        }
        while tasks.join_next().await.is_some() {}
        tracing::error!("DNS server stopped");
    }))
}

/// Answers the queries arriving on one UDP socket, a batch at a time.
async fn answer_udp(socket: tokio::net::UdpSocket, handler: DnsHandler) {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;
    let fd = socket.as_raw_fd();
    let mut receiver = udp::Receiver::default();
    let answer = Encoded::udp();
    let mut replies: Vec<(SocketAddr, Vec<u8>)> = Vec::with_capacity(udp::BATCH);
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut name = Vec::with_capacity(255);
    loop {
        let received = match socket.try_io(Interest::READABLE, || receiver.receive(fd)) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(error) = socket.readable().await {
                    tracing::error!(%error, "DNS: UDP socket failed");
                    return;
                }
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "DNS: receiving on UDP");
                continue;
            }
        };
        // One look at the current answers per batch.
        let answers = handler.answers.read().expect("not poisoned").clone();
        let mut tally = Tally::default();
        for i in 0..received {
            let datagram = receiver.received[i];
            let Some(src) = datagram.src.filter(|s| s.port() != 0 && !datagram.truncated) else {
                continue;
            };
            let mut out = spare.pop().unwrap_or_default();
            if fast::answer(&answers, receiver.bytes(i), src.ip(), &mut name, &mut out) {
                tally.count_code(ResponseCode::NoError);
            } else {
                answer.swap(&mut out);
                answer_query(&answers, receiver.bytes(i), src, Transport::Udp, &answer, &mut tally).await;
                answer.swap(&mut out);
            }
            if out.is_empty() {
                spare.push(out);
            } else {
                replies.push((src, out));
            }
        }
        let mut sent = 0;
        while sent < replies.len() {
            match socket.try_io(Interest::WRITABLE, || udp::send(fd, &replies[sent..])) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    // One answer the kernel refuses (an unroutable source) must not hold up
                    // the others.
                    tracing::debug!(%error, to = %replies[sent].0, "DNS: sending on UDP");
                    sent += 1;
                }
            }
        }
        handler.stats.add(&tally);
        spare.extend(replies.drain(..).map(|(_, mut bytes)| {
            bytes.clear();
            bytes
        }));
    }
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.ip().is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{Ipv4Addr, UdpSocket};
    use std::time::Duration;

    use hickory_server::proto::op::{Message, MessageType, Query};
    use hickory_server::proto::rr::Name;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use std::sync::atomic::Ordering;
    use std::sync::{Arc, RwLock};

    use hickory_server::proto::op::{Edns, OpCode};
    use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
    use hickory_server::proto::rr::{DNSClass, RecordType};

    use super::*;
    use crate::dns::respond::{DnsStats, MAX_UDP_PAYLOAD};
    use crate::dns::zone::tests::answers;

    const IDLE: Duration = Duration::from_millis(300);
    const IO: Duration = Duration::from_millis(300);
    /// Longer than any limit of the test server: what a closed connection must beat.
    const CLOSED_WITHIN: Duration = Duration::from_secs(5);

    /// A server on a free loopback port with the test zone (every target up but site-a),
    /// 4 TCP connections at most.
    async fn server() -> (SocketAddr, Arc<DnsStats>, tokio::task::JoinHandle<()>) {
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stats = Arc::new(DnsStats::default());
        let shared = Arc::new(RwLock::new(Arc::new(answers(&|i| i != 0))));
        let limits = TcpLimits { max_connections: 4, idle_timeout: IDLE, io_timeout: IO };
        let task = serve(&[addr], 2, limits, DnsHandler { answers: shared, stats: stats.clone() }).expect("binds");
        (addr, stats, task)
    }

    fn query(name: &str, rtype: RecordType, edns: Option<Edns>) -> Message {
        let mut message = Message::new(4711, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        message.edns = edns;
        message
    }

    async fn ask_udp(addr: SocketAddr, bytes: &[u8]) -> Option<Message> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(bytes, addr).await.unwrap();
        let mut buf = vec![0; 65535];
        let n = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await.ok()?.unwrap();
        Some(Message::from_vec(&buf[..n]).expect("a DNS message"))
    }

    /// `message` over UDP: its answer, which must come.
    async fn ask(addr: SocketAddr, message: &Message) -> Message {
        ask_udp(addr, &message.to_vec().unwrap()).await.expect("an answer")
    }

    async fn ask_tcp(addr: SocketAddr, message: &Message) -> Message {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let bytes = message.to_vec().unwrap();
        stream.write_all(&(bytes.len() as u16).to_be_bytes()).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        let len = stream.read_u16().await.unwrap() as usize;
        let mut buf = vec![0; len];
        stream.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    }

    fn edns(payload: u16) -> Edns {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        edns
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_over_udp_and_tcp_with_the_right_codes() {
        let (addr, stats, task) = server().await;
        let answer = ask(addr, &query("www.example.test.", RecordType::A, None)).await;
        assert_eq!(answer.metadata.id, 4711);
        assert!(answer.metadata.authoritative);
        assert_eq!(answer.answers.len(), 1, "one backup while site-a is down");
        let nx = ask_tcp(addr, &query("nope.example.test.", RecordType::A, None)).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let refused = ask(addr, &query("example.org.", RecordType::A, None)).await;
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert!(!refused.metadata.authoritative);

        let mut chaos = query("version.bind.", RecordType::TXT, None);
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(ask(addr, &chaos).await.metadata.response_code, ResponseCode::Refused);
        let axfr = ask_tcp(addr, &query("example.test.", RecordType::AXFR, None)).await;
        assert_eq!(axfr.metadata.response_code, ResponseCode::Refused);
        let mut two = query("www.example.test.", RecordType::A, None);
        two.add_query(Query::query(Name::from_ascii("big.example.test.").unwrap(), RecordType::TXT));
        assert_eq!(ask(addr, &two).await.metadata.response_code, ResponseCode::FormErr);
        let mut notify = query("example.test.", RecordType::SOA, None);
        notify.metadata.op_code = OpCode::Notify;
        assert_eq!(ask(addr, &notify).await.metadata.response_code, ResponseCode::NotImp);
        let responses: std::collections::BTreeMap<String, u64> = stats.responses().collect();
        assert_eq!(responses["refused"], 3);
        assert_eq!(responses["noerror"], 1);
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncates_over_udp_by_the_offered_size_and_not_over_tcp() {
        let (addr, stats, task) = server().await;
        let big = |edns| query("big.example.test.", RecordType::TXT, edns);
        let plain = ask(addr, &big(None)).await;
        assert!(plain.metadata.truncation, "9 x 100 bytes do not fit in 512");
        assert!(plain.answers.len() < 9);
        let offered = ask(addr, &big(Some(edns(4096)))).await;
        assert!(!offered.metadata.truncation);
        assert_eq!(offered.answers.len(), 9);
        assert_eq!(offered.edns.as_ref().unwrap().max_payload(), MAX_UDP_PAYLOAD);
        let tcp = ask_tcp(addr, &big(None)).await;
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 9);
        assert_eq!(stats.truncated.load(Ordering::Relaxed), 1);
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn edns_version_and_client_subnet() {
        let (addr, _, task) = server().await;
        let mut future = edns(1232);
        future.set_version(1);
        let badvers = ask(addr, &query("www.example.test.", RecordType::A, Some(future))).await;
        // BADVERS and BADSIG share the number 16; the decoder names it BADSIG.
        assert_eq!(u16::from(badvers.metadata.response_code), u16::from(ResponseCode::BADVERS));
        assert!(badvers.edns.is_some(), "BADVERS travels in the OPT record");

        // The client subnet (10.1.2.0/24, region "us") picks site-b; the scope covers the
        // longest configured client prefix (/16).
        let mut with_subnet = edns(1232);
        with_subnet.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new("10.1.2.0".parse().unwrap(), 24, 0)));
        let answer = ask(addr, &query("www.example.test.", RecordType::A, Some(with_subnet))).await;
        assert_eq!(answer.answers[0].data.to_string(), "10.100.0.2");
        let Some(EdnsOption::Subnet(echo)) = answer.edns.as_ref().unwrap().option(EdnsCode::Subnet) else {
            panic!("no ECS echo in {answer:?}");
        };
        assert_eq!((echo.source_prefix(), echo.scope_prefix()), (24, 16));
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_queries_get_an_error_or_nothing_and_the_server_goes_on() {
        let (addr, _, task) = server().await;
        // Shorter than a header: dropped.
        assert!(ask_udp(addr, &[0x12, 0x34, 0x01]).await.is_none());
        // A header announcing a question that is not there: FORMERR.
        let header_only = [0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        assert_eq!(ask_udp(addr, &header_only).await.unwrap().metadata.response_code, ResponseCode::FormErr);
        // A name whose label runs past the end, and random bytes.
        let mut cut = query("www.example.test.", RecordType::A, None).to_vec().unwrap();
        cut.truncate(20);
        assert!(ask_udp(addr, &cut).await.is_none_or(|m| m.metadata.response_code == ResponseCode::FormErr));
        for seed in 0..200u32 {
            let junk: Vec<u8> =
                (0..64).map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8).collect();
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.send_to(&junk, addr).unwrap();
        }
        let still = ask(addr, &query("www.example.test.", RecordType::A, None)).await;
        assert_eq!(still.metadata.response_code, ResponseCode::NoError);
        task.abort();
    }

    /// Whether the server closes `stream` (EOF or reset) within [`CLOSED_WITHIN`].
    async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
        let mut buf = [0; 64];
        matches!(tokio::time::timeout(CLOSED_WITHIN, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_connections_that_idle_or_stall_mid_message_are_closed() {
        let (addr, _, task) = server().await;
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut idle).await, "an idle connection stays open");
        // Half a message: the length says 100 bytes, 10 come.
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(&100u16.to_be_bytes()).await.unwrap();
        half.write_all(&[0; 10]).await.unwrap();
        assert!(closed(&mut half).await, "a stalled query keeps its connection");
        // A connection that keeps asking stays open past the idle timeout.
        let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(IDLE / 2).await;
            let bytes = query("www.example.test.", RecordType::A, None).to_vec().unwrap();
            busy.write_all(&(bytes.len() as u16).to_be_bytes()).await.unwrap();
            busy.write_all(&bytes).await.unwrap();
            let len = busy.read_u16().await.unwrap() as usize;
            let mut answer = vec![0; len];
            busy.read_exact(&mut answer).await.unwrap();
            assert_eq!(Message::from_vec(&answer).unwrap().metadata.id, 4711);
        }
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp_connections_past_the_limit_are_closed_at_once_and_counted() {
        let (addr, stats, task) = server().await;
        let mut open = Vec::new();
        for _ in 0..4 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            // An answer: the server holds this connection.
            let bytes = query("www.example.test.", RecordType::A, None).to_vec().unwrap();
            stream.write_all(&(bytes.len() as u16).to_be_bytes()).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            let len = stream.read_u16().await.unwrap() as usize;
            stream.read_exact(&mut vec![0; len]).await.unwrap();
            open.push(stream);
        }
        let mut fifth = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0; 2];
        let refused = tokio::time::timeout(IDLE / 2, fifth.read(&mut buf)).await;
        assert!(matches!(refused, Ok(Ok(0) | Err(_))), "the fifth connection is not closed at once: {refused:?}");
        assert_eq!(stats.tcp_refused.load(Ordering::Relaxed), 1);
        // One closes: a new one is served.
        drop(open.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = ask_tcp(addr, &query("www.example.test.", RecordType::A, None)).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        task.abort();
    }
}
