//! A bounded property test of the DNS wire path, without a network: a few thousand messages
//! made from valid queries by a seeded PRNG (flipped bits, cuts, several questions, pointers
//! into the header and loops, oversize labels and names, EDNS options with Client Subnet,
//! random bytes), each answered by both paths and over TCP. Invariants: no panic; every answer parses
//! with hickory-proto and echoes the id and opcode with QR set; only runts and responses go
//! unanswered; the fast path's answer is the full path's whenever it answers. The distinct
//! findings are fixed cases in `findings`.

use std::net::SocketAddr;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};

use super::fast;
use super::respond::{Encoded, Tally, answer_query};
use super::zone::Answers;
use super::zone::tests::{RESOLVER, answers};

const MESSAGES: usize = 4000;
const SEED: u64 = 0x1d5_f022;

fn query(name: &str, rtype: RecordType, edns: Option<Edns>) -> Message {
    let mut message = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    message.edns = edns;
    message
}

fn edns(payload: u16, subnet: Option<ClientSubnet>) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    if let Some(subnet) = subnet {
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
    }
    edns
}

/// Valid queries the mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let subnet = ClientSubnet::new("10.1.2.0".parse().unwrap(), 24, 0);
    let mut chaos = query("version.bind.", RecordType::TXT, None);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let mut recursive = query("www.example.test.", RecordType::A, Some(edns(4096, None)));
    recursive.metadata.recursion_desired = true;
    [
        query("www.example.test.", RecordType::A, None),
        query("WWW.example.test.", RecordType::A, Some(edns(1232, None))),
        query("www.example.test.", RecordType::A, Some(edns(1232, Some(subnet)))),
        query("www.example.test.", RecordType::AAAA, None),
        query("big.example.test.", RecordType::TXT, None),
        query("alias.example.test.", RecordType::A, Some(edns(512, None))),
        query("nope.example.test.", RecordType::A, None),
        query("example.test.", RecordType::SOA, None),
        query("example.org.", RecordType::A, None),
        chaos,
        recursive,
    ]
    .iter()
    .map(|m| m.to_vec().unwrap())
    .collect()
}

/// Where the question of `message` (one, starting at 12) ends: after its name and 4 bytes.
fn question_end(message: &[u8]) -> usize {
    let mut at = 12;
    while message[at] != 0 {
        at += 1 + message[at] as usize;
    }
    at + 5
}

fn set_count(message: &mut [u8], at: usize, count: u16) {
    message[at..at + 2].copy_from_slice(&count.to_be_bytes());
}

/// `seed` with the question's name replaced by `name` (raw wire bytes).
fn with_name(seed: &[u8], name: &[u8]) -> Vec<u8> {
    let end = question_end(seed);
    let mut out = seed[..12].to_vec();
    out.extend_from_slice(name);
    out.extend_from_slice(&seed[end - 4..]);
    out
}

fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut message = seed.to_vec();
    match rng.u8(0..10) {
        0 => {
            for _ in 0..rng.usize(1..5) {
                let at = rng.usize(..message.len());
                message[at] ^= 1 << rng.u8(0..8);
            }
        }
        1 => message.truncate(rng.usize(..message.len())),
        2 => {
            // Several questions, often past 512 bytes.
            let end = question_end(&message);
            let question = message[12..end].to_vec();
            let copies = rng.usize(1..40);
            message.truncate(end);
            for _ in 0..copies {
                message.extend_from_slice(&question);
            }
            set_count(&mut message, 4, 1 + copies as u16);
            set_count(&mut message, 10, 0);
        }
        3 => message = with_name(&message, &[0xc0, rng.u8(0..12)]),
        4 => {
            // Pointer loops: to itself, or to a label before it.
            let name: &[u8] = if rng.bool() { &[0xc0, 12] } else { &[1, b'a', 0xc0, 12] };
            message = with_name(&message, name);
        }
        5 => {
            let len = rng.u8(64..=255);
            let mut name = vec![len];
            name.extend((0..len).map(|_| b'a'));
            name.push(0);
            message = with_name(&message, &name);
        }
        6 => {
            // A name of more than 255 bytes, in legal labels.
            let mut name = Vec::new();
            for _ in 0..rng.usize(4..8) {
                name.push(63);
                name.extend([b'x'; 63]);
            }
            name.push(0);
            message = with_name(&message, &name);
        }
        7 => message = edns_options(rng, &message),
        8 => {
            for byte in &mut message[2..12] {
                if rng.bool() {
                    *byte = rng.u8(..);
                }
            }
        }
        _ => message = (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect(),
    }
    message
}

/// The question of `seed` with an OPT record of random options, Client Subnet among them
/// with any family, prefixes and address bytes.
fn edns_options(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut message = seed[..question_end(seed)].to_vec();
    set_count(&mut message, 10, 1);
    let mut options = Vec::new();
    for _ in 0..rng.usize(0..4) {
        let code = if rng.bool() { u16::from(EdnsCode::Subnet) } else { rng.u16(..) };
        let data: Vec<u8> = match code {
            8 => {
                let mut d = vec![0, rng.u8(0..4), rng.u8(..), rng.u8(0..2)];
                d.extend((0..rng.usize(0..20)).map(|_| rng.u8(..)));
                d
            }
            _ => (0..rng.usize(0..20)).map(|_| rng.u8(..)).collect(),
        };
        options.extend_from_slice(&code.to_be_bytes());
        options.extend_from_slice(&(data.len() as u16).to_be_bytes());
        options.extend_from_slice(&data);
    }
    // Root, OPT, UDP size, extended rcode 0, version (mostly 0), flags, options.
    message.extend_from_slice(&[0, 0, 41]);
    message.extend_from_slice(&rng.u16(..).to_be_bytes());
    message.extend_from_slice(&[0, if rng.u8(0..8) == 0 { 1 } else { 0 }, 0, 0]);
    message.extend_from_slice(&(options.len() as u16).to_be_bytes());
    message.extend_from_slice(&options);
    message
}

/// The full path's answer to `bytes` over UDP (empty: nothing sent).
pub(crate) async fn full_path(answers: &Answers, bytes: &[u8]) -> Vec<u8> {
    answer_over(answers, bytes, Protocol::Udp, Encoded::udp()).await
}

async fn answer_over(answers: &Answers, bytes: &[u8], transport: Protocol, out: Encoded) -> Vec<u8> {
    answer_query(answers, bytes, SocketAddr::new(RESOLVER, 5353), transport, &out, &mut Tally::default()).await;
    out.take()
}

/// The fast path's answer, when it gives one.
fn fast_path(answers: &Answers, bytes: &[u8]) -> Option<Vec<u8>> {
    let (mut name, mut out) = (Vec::new(), Vec::new());
    fast::answer(answers, bytes, RESOLVER, &mut name, &mut out).then_some(out)
}

/// Both paths' answers are the same DNS message (hickory may order EDNS bytes its way).
pub(crate) fn assert_same(fast: &[u8], full: &[u8]) {
    let (fast, full) = (Message::from_vec(fast).unwrap(), Message::from_vec(full).unwrap());
    assert_eq!(fast.metadata, full.metadata);
    assert_eq!(fast.queries, full.queries);
    assert_eq!(fast.answers, full.answers);
    assert_eq!(fast.edns.map(|e| e.max_payload()), full.edns.map(|e| e.max_payload()));
    assert!(fast.authorities.is_empty() && fast.additionals.is_empty());
}

/// The invariants every answer (`out`) to `query` keeps.
fn check(query: &[u8], out: &[u8]) {
    if out.is_empty() {
        assert!(query.len() < 12 || query[2] & 0x80 != 0, "no answer to a query: {query:02x?}");
        return;
    }
    let message = Message::from_vec(out).unwrap_or_else(|e| panic!("{e}: answer {out:02x?} to {query:02x?}"));
    assert_eq!(out[..2], query[..2], "id");
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(out[2] & 0x78, query[2] & 0x78, "opcode");
    if u16::from_be_bytes([query[4], query[5]]) != 1 {
        assert_eq!(message.metadata.response_code, ResponseCode::FormErr, "{query:02x?}");
    }
}

#[tokio::test]
async fn random_and_mutated_messages_get_dns_answers() {
    // The fast path's answers and the full path's to the same queries come from two
    // answers that advance alike; the full path's other answers from a third.
    let (fast_answers, compared, others) = (answers(&|i| i != 0), answers(&|i| i != 0), answers(&|i| i != 0));
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut fast_answered = 0;
    for _ in 0..MESSAGES {
        let seed = &seeds[rng.usize(..seeds.len())];
        let message = mutate(&mut rng, seed);
        if let Some(fast) = fast_path(&fast_answers, &message) {
            let full = full_path(&compared, &message).await;
            check(&message, &fast);
            assert_same(&fast, &full);
            fast_answered += 1;
        } else {
            check(&message, &full_path(&others, &message).await);
        }
        check(&message, &answer_over(&others, &message, Protocol::Tcp, Encoded::tcp()).await);
    }
    assert!(fast_answered > 0, "no mutation kept a plain policy query");
}

/// What the campaign found, fixed.
mod findings {
    use super::*;

    async fn answer(message: &[u8]) -> Message {
        let out = full_path(&answers(&|_| true), message).await;
        check(message, &out);
        Message::from_vec(&out).unwrap()
    }

    #[tokio::test]
    async fn several_questions_past_512_bytes_get_formerr() {
        let seed = query("www.example.test.", RecordType::A, None).to_vec().unwrap();
        let end = question_end(&seed);
        let mut message = seed.clone();
        for _ in 0..30 {
            message.extend_from_slice(&seed[12..end]);
        }
        set_count(&mut message, 4, 31);
        assert!(message.len() > 512);
        let answer = answer(&message).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(answer.metadata.id, 0xbeef);
    }

    #[tokio::test]
    async fn a_question_name_pointing_into_the_header_gets_formerr() {
        let seed = query("www.example.test.", RecordType::A, None).to_vec().unwrap();
        for to in 0..12 {
            let answer = answer(&with_name(&seed, &[0xc0, to])).await;
            assert_eq!(answer.metadata.response_code, ResponseCode::FormErr, "pointer to {to}");
            assert!(answer.queries.is_empty(), "the question is not echoed");
        }
    }

    #[tokio::test]
    async fn an_edns_option_longer_than_the_opt_record_gets_formerr_from_both_paths() {
        let mut message = query("www.example.test.", RecordType::A, None).to_vec().unwrap();
        set_count(&mut message, 10, 1);
        // OPT with 11 bytes of data: option 9 says 0x8007 bytes, 7 follow.
        message.extend_from_slice(&[0, 0, 41, 0x44, 0xd0, 0, 0, 0, 0, 0, 11, 0, 9, 0x80, 7]);
        message.extend_from_slice(&[0, 1, 0x18, 0, 0x0a, 1, 2]);
        assert_eq!(fast_path(&answers(&|_| true), &message), None, "the fast path answered");
        assert_eq!(answer(&message).await.metadata.response_code, ResponseCode::FormErr);
    }
}
