//! The hot path of the UDP server: a plain query for a policy record (one question, class
//! IN, A or AAAA, at most an EDNS OPT record without Client Subnet) is answered straight
//! from its bytes: the header and question are copied, the answer records appended with a
//! compression pointer to the question's name. It is the answer the full path (hickory's
//! parser and encoder, `server::respond`) gives for the same query, which the tests check;
//! anything else, or an answer that would not fit, goes the full path.

use std::net::IpAddr;

use hickory_server::proto::rr::RecordType;

use super::respond::MAX_UDP_PAYLOAD;
use super::zone::Answers;

const HEADER: usize = 12;
const TYPE_OPT: u16 = 41;
const OPTION_CLIENT_SUBNET: u16 = 8;
/// An A answer: name pointer, type, class, TTL, length, address.
const A_RECORD: usize = 2 + 2 + 2 + 4 + 2 + 4;
const AAAA_RECORD: usize = A_RECORD + 12;
const OPT_RECORD: usize = 11;

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// What the hot path needs from a query.
struct PlainQuery {
    flags: u16,
    /// Where the question ends.
    question_end: usize,
    rtype: RecordType,
    /// The UDP size the client offered, when it sent EDNS.
    offered: Option<u16>,
}

/// Reads `query` as a plain policy query; `None` for anything else. `name` receives the
/// question's name in lowercase wire format.
fn parse(query: &[u8], name: &mut Vec<u8>) -> Option<PlainQuery> {
    let flags = be16(query, 2)?;
    // QR clear, opcode QUERY; one question, no answer or authority, at most the OPT record.
    if flags & 0xf800 != 0 || be16(query, 4)? != 1 || be16(query, 6)? != 0 || be16(query, 8)? != 0 {
        return None;
    }
    let additional = be16(query, 10)?;
    if additional > 1 {
        return None;
    }
    name.clear();
    let mut at = HEADER;
    loop {
        let len = *query.get(at)? as usize;
        // No compression in a question; names are at most 255 bytes.
        if len & 0xc0 != 0 || name.len() + 1 + len > 255 {
            return None;
        }
        name.push(len as u8);
        name.extend(query.get(at + 1..at + 1 + len)?.iter().map(u8::to_ascii_lowercase));
        at += 1 + len;
        if len == 0 {
            break;
        }
    }
    let rtype = match be16(query, at)? {
        1 => RecordType::A,
        28 => RecordType::AAAA,
        _ => return None,
    };
    if be16(query, at + 2)? != 1 {
        return None;
    }
    let question_end = at + 4;
    let mut offered = None;
    at = question_end;
    if additional == 1 {
        // Root owner name, type OPT, class = UDP size, TTL = extended rcode, version (0), flags.
        if *query.get(at)? != 0 || be16(query, at + 1)? != TYPE_OPT || *query.get(at + 6)? != 0 {
            return None;
        }
        offered = Some(be16(query, at + 3)?);
        let options_len = be16(query, at + 9)? as usize;
        let mut option = at + OPT_RECORD;
        at = option + options_len;
        while option < at {
            if be16(query, option)? == OPTION_CLIENT_SUBNET {
                return None;
            }
            option += 4 + be16(query, option + 2)? as usize;
        }
        // An option running past the record's data: hickory's parser refuses it (FORMERR).
        if option != at {
            return None;
        }
    }
    (at == query.len()).then_some(PlainQuery { flags, question_end, rtype, offered })
}

/// Answers `query` into `out` when it is a plain policy query whose answer fits; returns
/// whether it did (`out` is then the whole response).
pub fn answer(answers: &Answers, query: &[u8], client: IpAddr, name: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    let Some(plain) = parse(query, name) else { return false };
    let Some(record) = answers.zones.policy_by_wire_name(name, plain.rtype) else { return false };
    let limit = plain.offered.map_or(512, |o| o.clamp(512, MAX_UDP_PAYLOAD)) as usize;
    let per_record = if plain.rtype == RecordType::A { A_RECORD } else { AAAA_RECORD };
    let most = plain.question_end + record.policy.primary.len().max(1) * per_record + OPT_RECORD;
    if most > limit {
        return false;
    }
    let choice = answers.choose(record.index, answers.zones.client_region(client));
    out.clear();
    out.extend_from_slice(&query[..plain.question_end]);
    // QR and AA set; RD and CD copied; RA, AD, TC clear; NOERROR.
    let response_flags = 0x8000 | 0x0400 | (plain.flags & 0x0100) | (plain.flags & 0x0010);
    out[2..4].copy_from_slice(&response_flags.to_be_bytes());
    out[6..8].copy_from_slice(&(choice.addresses.len() as u16).to_be_bytes());
    out[10..12].copy_from_slice(&u16::from(plain.offered.is_some()).to_be_bytes());
    for address in &choice.addresses {
        // The owner is the question's name, at offset 12.
        out.extend_from_slice(&[0xc0, HEADER as u8]);
        out.extend_from_slice(&u16::from(plain.rtype).to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&record.ttl.to_be_bytes());
        match address {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    if plain.offered.is_some() {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&(limit as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    true
}

#[cfg(test)]
mod tests {
    use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_server::proto::rr::Name;
    use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsOption};

    use super::*;
    use crate::dns::wire_fuzz::{assert_same, full_path};
    use crate::dns::zone::tests::{RESOLVER, answers};

    fn query(name: &str, rtype: RecordType, edns: Option<u16>, flags: impl Fn(&mut Message)) -> Vec<u8> {
        let mut message = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        message.edns = edns.map(|payload| {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            edns
        });
        flags(&mut message);
        message.to_vec().unwrap()
    }

    #[tokio::test]
    async fn plain_policy_queries_get_the_full_paths_answer() {
        // Two answers built per case from one state: the counters advance the same way.
        for up in [&(|_| true) as &dyn Fn(usize) -> bool, &|i| i != 0] {
            let (fast_answers, full_answers) = (answers(up), answers(up));
            let cases = [
                query("www.example.test.", RecordType::A, None, |_| {}),
                query("WWW.Example.TEST.", RecordType::A, Some(4096), |_| {}),
                query("www.example.test.", RecordType::A, Some(100), |m| m.metadata.recursion_desired = true),
                query("www.example.test.", RecordType::A, Some(1232), |m| m.metadata.checking_disabled = true),
            ];
            for bytes in cases {
                let (mut name, mut out) = (Vec::new(), Vec::new());
                assert!(answer(&fast_answers, &bytes, RESOLVER, &mut name, &mut out), "took the full path");
                assert_same(&out, &full_path(&full_answers, &bytes).await);
            }
        }
    }

    #[test]
    fn anything_else_takes_the_full_path() {
        let all_up = answers(&|_| true);
        let with_subnet = {
            let mut message = Message::new(1, MessageType::Query, OpCode::Query);
            message.add_query(Query::query(Name::from_ascii("www.example.test.").unwrap(), RecordType::A));
            let mut edns = Edns::new();
            edns.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new("10.1.2.0".parse().unwrap(), 24, 0)));
            message.edns = Some(edns);
            message.to_vec().unwrap()
        };
        let mut trailing = query("www.example.test.", RecordType::A, None, |_| {});
        trailing.push(0);
        let cases = [
            query("www.example.test.", RecordType::AAAA, None, |_| {}),
            query("ns1.example.test.", RecordType::A, None, |_| {}),
            query("nope.example.test.", RecordType::A, None, |_| {}),
            query("www.example.test.", RecordType::A, None, |m| m.metadata.op_code = OpCode::Notify),
            query("www.example.test.", RecordType::A, None, |m| m.metadata.message_type = MessageType::Response),
            with_subnet,
            trailing,
            vec![0xbe, 0xef, 1],
        ];
        for bytes in cases {
            let (mut name, mut out) = (Vec::new(), Vec::new());
            assert!(!answer(&all_up, &bytes, RESOLVER, &mut name, &mut out), "{bytes:?}");
        }
        let mut version_one = query("www.example.test.", RecordType::A, Some(1232), |_| {});
        let opt_ttl = version_one.len() - 6;
        version_one[opt_ttl + 1] = 1;
        let (mut name, mut out) = (Vec::new(), Vec::new());
        assert!(
            !answer(&all_up, &version_one, RESOLVER, &mut name, &mut out),
            "EDNS version 1 gets BADVERS from the full path"
        );
    }
}
