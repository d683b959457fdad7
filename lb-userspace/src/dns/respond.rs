//! Answering one query: hickory's parser and encoder do the protocol's part (opcode,
//! class, EDNS version (BADVERS), Client Subnet echo with a scope, UDP size: truncation is
//! hickory's, records that do not fit are left out and TC is set). Every answer is DNS:
//! what [`wire::screen`] rejects, what hickory cannot parse (FORMERR) and answers that
//! cannot be encoded (SERVFAIL) get the header alone; runts and responses get nothing.
//! Also the counters of answers by code, shared by the UDP and TCP listeners.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hickory_server::net::xfer::Protocol as Transport;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::{DNSClass, RecordType};
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::wire::{self, Screen};
use super::zone::Answers;

/// Largest UDP answer, whatever the client offers: the size that avoids IP fragmentation
/// on common paths (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Response codes counted by [`DnsStats`], with their names in metrics (NOERROR first).
pub const COUNTED_CODES: [(ResponseCode, &str); 7] = [
    (ResponseCode::NoError, "noerror"),
    (ResponseCode::NXDomain, "nxdomain"),
    (ResponseCode::Refused, "refused"),
    (ResponseCode::FormErr, "formerr"),
    (ResponseCode::NotImp, "notimp"),
    (ResponseCode::ServFail, "servfail"),
    (ResponseCode::BADVERS, "badvers"),
];

/// Answers sent, by response code, and how many were truncated.
#[derive(Debug, Default)]
pub struct DnsStats {
    by_code: [AtomicU64; COUNTED_CODES.len()],
    pub truncated: AtomicU64,
    /// TCP connections closed at once: too many were open.
    pub tcp_refused: AtomicU64,
}

/// Counts of answers sent by one task, added to [`DnsStats`] in one go (the shared
/// counters are written once per batch, not per answer).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    by_code: [u64; COUNTED_CODES.len()],
    truncated: u64,
}

impl Tally {
    fn count(&mut self, info: &ResponseInfo) {
        self.count_code(info.response_code);
        self.truncated += u64::from(info.truncation);
    }

    pub(super) fn count_code(&mut self, code: ResponseCode) {
        if let Some(i) = COUNTED_CODES.iter().position(|&(c, _)| c == code) {
            self.by_code[i] += 1;
        }
    }
}

impl DnsStats {
    pub(crate) fn add(&self, tally: &Tally) {
        for (counter, n) in self.by_code.iter().zip(tally.by_code) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
        if tally.truncated > 0 {
            self.truncated.fetch_add(tally.truncated, Ordering::Relaxed);
        }
    }

    /// (code name, responses) for every counted code.
    pub fn responses(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        COUNTED_CODES.iter().zip(&self.by_code).map(|((_, name), n)| ((*name).to_owned(), n.load(Ordering::Relaxed)))
    }
}

/// The current answers, replaced whole by the controller.
pub type SharedAnswers = Arc<RwLock<Arc<Answers>>>;

#[derive(Clone)]
pub struct DnsHandler {
    pub answers: SharedAnswers,
    pub stats: Arc<DnsStats>,
}

/// Answers `request` from `answers` through `response_handle`, counting what was sent.
async fn respond<R: ResponseHandler>(
    answers: &Answers,
    request: &Request,
    mut response_handle: R,
    tally: &mut Tally,
) -> ResponseInfo {
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
            Some(EdnsOption::Subnet(s)) => Some(*s),
            _ => None,
        });
        // A source prefix of 0 asks that the answer not depend on the client's address.
        let client = subnet.filter(|s| s.source_prefix() > 0).map_or(request.src().ip(), |s| s.addr());
        let response = answers.resolve(query.name(), query.query_type(), client);
        if let (Some(edns), Some(subnet)) = (edns.as_mut(), subnet) {
            // RFC 7871 7.2.1: echo the option; the scope says how far the answer applies.
            let scope = if response.by_client_region && subnet.source_prefix() > 0 {
                answers.zones.region_scope(client)
            } else {
                0
            };
            edns.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                subnet.addr(),
                subnet.source_prefix(),
                scope,
            )));
        }
        builder_edns = edns;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = response.code;
        metadata.authoritative = response.code != ResponseCode::Refused;
        metadata.recursion_available = false;
        let builder = MessageResponseBuilder::new(&request.queries, builder_edns.as_ref());
        let message = builder.build(
            metadata,
            response.answers.iter(),
            response.authority.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        response_handle.send_response(message).await
    };
    match result {
        Ok(info) => {
            tally.count(&info);
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

/// Where an answer is encoded, for the socket's task to send: left empty when encoding
/// fails.
#[derive(Clone)]
pub(super) struct Encoded {
    bytes: Arc<std::sync::Mutex<Vec<u8>>>,
    /// UDP answers are limited to what the client offers; TCP ones are not.
    udp: bool,
}

impl Encoded {
    pub(crate) fn udp() -> Self {
        Self { bytes: Arc::default(), udp: true }
    }

    pub(crate) fn tcp() -> Self {
        Self { bytes: Arc::default(), udp: false }
    }

    /// The answer, leaving this empty.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.bytes.lock().expect("not poisoned"))
    }

    /// Swaps the buffer with `other` (reuses buffers).
    pub(super) fn swap(&self, other: &mut Vec<u8>) {
        std::mem::swap(&mut *self.bytes.lock().expect("not poisoned"), other);
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Encoded {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_server::proto::rr::Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let mut bytes = self.bytes.lock().expect("not poisoned");
        bytes.clear();
        let mut encoder = BinEncoder::new(&mut bytes);
        // Without EDNS the client takes 512 bytes (RFC 1035 4.2.1); what does not fit is
        // left out and TC set.
        if self.udp {
            encoder.set_max_size(response.edns().map_or(512, Edns::max_payload));
        }
        let emitted = response.destructive_emit(&mut encoder);
        if emitted.is_err() {
            // Half an answer (a header of zeros) is not DNS.
            bytes.clear();
        }
        Ok(emitted?)
    }
}

/// Answers one query's bytes into `answer` (left empty when nothing is to be sent).
pub(super) async fn answer_query(
    answers: &Answers,
    query: &[u8],
    src: SocketAddr,
    transport: Transport,
    answer: &Encoded,
    tally: &mut Tally,
) {
    let code = match wire::screen(query) {
        Screen::Drop => return,
        Screen::Reject(code) => code,
        Screen::Parse => match Request::from_bytes(query.to_vec(), src, transport) {
            Ok(request) => {
                respond(answers, &request, answer.clone(), tally).await;
                if !answer.bytes.lock().expect("not poisoned").is_empty() {
                    return;
                }
                ResponseCode::ServFail
            }
            Err(_) => ResponseCode::FormErr,
        },
    };
    wire::header_only(query, code, &mut answer.bytes.lock().expect("not poisoned"));
    tally.count_code(code);
}
