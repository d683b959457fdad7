//! The DNS server: hickory-server's UDP and TCP listeners in the controller's runtime, with
//! a request handler that answers from the current [`Answers`] and does the protocol's
//! part: opcode, class, EDNS version (BADVERS), Client Subnet echo with a scope, UDP size
//! (truncation is hickory's: records that do not fit are left out and TC is set).
//! Messages that do not parse get FORMERR from hickory when their header is readable, and
//! nothing otherwise.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::{DNSClass, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use socket2::{Domain, Protocol, Socket, Type};

use super::zone::Answers;

/// Largest UDP answer, whatever the client offers: the size that avoids IP fragmentation
/// on common paths (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// An idle TCP connection is closed after this.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Response codes counted by [`DnsStats`].
pub const COUNTED_CODES: [ResponseCode; 7] = [
    ResponseCode::NoError,
    ResponseCode::NXDomain,
    ResponseCode::Refused,
    ResponseCode::FormErr,
    ResponseCode::NotImp,
    ResponseCode::ServFail,
    ResponseCode::BADVERS,
];

/// Answers sent, by response code, and how many were truncated.
#[derive(Debug, Default)]
pub struct DnsStats {
    by_code: [AtomicU64; COUNTED_CODES.len()],
    pub truncated: AtomicU64,
}

impl DnsStats {
    fn count(&self, info: &ResponseInfo) {
        if let Some(i) = COUNTED_CODES.iter().position(|&c| c == info.response_code) {
            self.by_code[i].fetch_add(1, Ordering::Relaxed);
        }
        if info.truncation {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (code name, responses) for every counted code.
    pub fn responses(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        COUNTED_CODES.iter().zip(&self.by_code).map(|(code, n)| (code.to_str().to_ascii_lowercase(), n.load(Ordering::Relaxed)))
    }
}

/// The current answers, replaced whole by the controller.
pub type SharedAnswers = Arc<RwLock<Arc<Answers>>>;

pub struct DnsHandler {
    pub answers: SharedAnswers,
    pub stats: Arc<DnsStats>,
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response_handle: R) -> ResponseInfo {
        let request_edns = request.edns.as_ref();
        let mut edns = request_edns.map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns
        });
        let refusal = if request_edns.is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.queries.len() != 1 {
            Some(ResponseCode::FormErr)
        } else {
            let query = &request.queries.queries()[0];
            let transfer = matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR);
            (query.query_class() != DNSClass::IN || transfer).then_some(ResponseCode::Refused)
        };
        let builder_edns;
        let result = if let Some(code) = refusal {
            builder_edns = edns;
            let builder = MessageResponseBuilder::new(&request.queries, builder_edns.as_ref());
            response_handle.send_response(builder.error_msg(&request.metadata, code)).await
        } else {
            let query = &request.queries.queries()[0];
            let subnet = request_edns.and_then(|e| match e.option(EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(s)) if s.source_prefix() > 0 => Some(s.clone()),
                _ => None,
            });
            let client = subnet.as_ref().map_or(request.src().ip(), ClientSubnet::addr);
            let answers = self.answers.read().expect("not poisoned").clone();
            let response = answers.resolve(query.name(), query.query_type(), client);
            if let (Some(edns), Some(subnet)) = (edns.as_mut(), subnet) {
                // RFC 7871 7.2.1: echo the option; the scope says how far the answer applies.
                let scope = if response.by_client_region { answers.zones.region_scope(client) } else { 0 };
                edns.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(client, subnet.source_prefix(), scope)));
            }
            builder_edns = edns;
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = response.code;
            metadata.authoritative = response.code != ResponseCode::Refused;
            metadata.recursion_available = false;
            let builder = MessageResponseBuilder::new(&request.queries, builder_edns.as_ref());
            let message = builder.build(metadata, response.answers.iter(), response.authority.iter(), std::iter::empty(), std::iter::empty());
            response_handle.send_response(message).await
        };
        match result {
            Ok(info) => {
                self.stats.count(&info);
                info
            }
            Err(error) => {
                tracing::debug!(%error, "a DNS answer could not be sent");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header { metadata, counts: HeaderCounts::default() })
            }
        }
    }
}

/// Starts answering on every address: over TCP, and over UDP with one SO_REUSEPORT socket
/// per worker thread so the kernel spreads queries over the cores.
pub fn serve(listen: &[SocketAddr], handler: DnsHandler) -> Result<Server<DnsHandler>> {
    let mut server = Server::new(handler);
    let sockets = std::thread::available_parallelism().map_or(1, |n| n.get());
    for &addr in listen {
        for _ in 0..sockets {
            server.register_socket(udp_socket(addr).with_context(|| format!("DNS: binding UDP {addr}"))?);
        }
        let tcp = std::net::TcpListener::bind(addr).with_context(|| format!("DNS: binding TCP {addr}"))?;
        tcp.set_nonblocking(true)?;
        server.register_listener(tokio::net::TcpListener::from_std(tcp)?, TCP_TIMEOUT, 64);
    }
    Ok(server)
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if let IpAddr::V6(_) = addr.ip() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}
