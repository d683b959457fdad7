//! What the server decides from a query's raw bytes before hickory's parser sees them, and
//! the header-only answer it gives when it cannot answer the question.
//!
//! A question name with a compression pointer gets FORMERR: with one question (RFC 9619),
//! its name is the first in the message, so there is no earlier name for a pointer to
//! reach (RFC 1035 4.1.4); the pointer lands in the header or in the name's own bytes.
//! hickory follows such pointers and echoes the question's original bytes, which do not
//! decode in the response.

use hickory_server::proto::op::ResponseCode;

pub const HEADER: usize = 12;
/// RFC 1035 3.1: a name is at most 255 bytes in wire format.
const MAX_NAME: usize = 255;

/// What to do with a query's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Shorter than a header, or a response: nothing is sent back.
    Drop,
    /// Answered with this code and the header alone.
    Reject(ResponseCode),
    /// One question with a plain name: for the parser.
    Parse,
}

pub fn screen(query: &[u8]) -> Screen {
    if query.len() < HEADER || query[2] & 0x80 != 0 {
        return Screen::Drop;
    }
    if u16::from_be_bytes([query[4], query[5]]) != 1 || !plain_name_at(query, HEADER) {
        return Screen::Reject(ResponseCode::FormErr);
    }
    Screen::Parse
}

/// Whether a name without compression pointers or extended label types, at most 255 bytes,
/// starts at `at` (its labels are then inside `message`).
fn plain_name_at(message: &[u8], mut at: usize) -> bool {
    let start = at;
    loop {
        let Some(&len) = message.get(at) else { return false };
        if len & 0xc0 != 0 {
            return false;
        }
        at += 1 + usize::from(len);
        if at - start > MAX_NAME {
            return false;
        }
        if len == 0 {
            return true;
        }
    }
}

/// The answer that carries only a header: the query's id, opcode and RD, QR set, `code`, no
/// records. For queries whose question cannot be echoed, and for answers that could not be
/// encoded.
pub fn header_only(query: &[u8], code: ResponseCode, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&query[..2]);
    // Opcode (0x78) and RD (0x01) of the query's first flag byte.
    out.push(0x80 | (query[2] & 0x79));
    out.push((u16::from(code) & 0x0f) as u8);
    out.extend_from_slice(&[0; 8]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_only() {
        let mut message = vec![0; HEADER];
        message.extend_from_slice(b"\x03www\x07example\x00\x00\x01\x00\x01");
        assert!(plain_name_at(&message, HEADER));
        // A pointer into the header, to itself, an extended label type, a cut name.
        for name in [&b"\xc0\x02"[..], b"\x01a\xc0\x0c", b"\x41a\x00", b"\x05ab"] {
            let mut bad = vec![0; HEADER];
            bad.extend_from_slice(name);
            assert!(!plain_name_at(&bad, HEADER), "{name:?}");
        }
        let mut long = vec![0; HEADER];
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.push(0);
        assert!(!plain_name_at(&long, HEADER), "321 bytes");
    }

    #[test]
    fn header_only_echoes_id_opcode_and_rd() {
        // id 0xbeef, opcode NOTIFY (4), RD and AD set, 2 questions.
        let query = [0xbe, 0xef, 0x21, 0x20, 0, 2, 0, 0, 0, 0, 0, 0, 1, 2, 3];
        let mut out = Vec::new();
        header_only(&query, ResponseCode::FormErr, &mut out);
        assert_eq!(out, [0xbe, 0xef, 0xa1, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
