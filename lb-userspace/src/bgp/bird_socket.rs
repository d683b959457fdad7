//! BIRD's control socket, the one birdc talks to: a command is a line, each reply line
//! starts with a 4-digit code (`-` when more follow, a space on the last one; a line that
//! starts with a space continues the previous code). Codes from 8000 are errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("cannot reach BIRD at {path}: {source} (is bird running with `-s {path}`?)", path = .path.display())]
    Unreachable { path: PathBuf, source: std::io::Error },
    #[error("BIRD at {path} did not answer within {timeout:?}", path = .path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("BIRD refused `{command}`: {reply}")]
    Refused { command: String, reply: String },
    #[error("BIRD's answer to `{command}` ended early")]
    Cut { command: String },
}

/// One command on a fresh connection; the reply's lines without their codes.
pub async fn command(socket: &Path, command: &str, timeout: Duration) -> Result<Vec<String>, BirdError> {
    let timed_out = || BirdError::Timeout { path: socket.to_owned(), timeout };
    tokio::time::timeout(timeout, exchange(socket, command)).await.map_err(|_| timed_out())?
}

async fn exchange(socket: &Path, command: &str) -> Result<Vec<String>, BirdError> {
    let unreachable = |source| BirdError::Unreachable { path: socket.to_owned(), source };
    let stream = UnixStream::connect(socket).await.map_err(unreachable)?;
    let mut stream = BufReader::new(stream);
    // The greeting ("0001 BIRD 2.0.12 ready.") is a reply of its own.
    read_reply(&mut stream, "(greeting)").await?;
    stream.get_mut().write_all(format!("{command}\n").as_bytes()).await.map_err(unreachable)?;
    read_reply(&mut stream, command).await
}

async fn read_reply(stream: &mut BufReader<UnixStream>, command: &str) -> Result<Vec<String>, BirdError> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = stream.read_line(&mut line).await;
        if !matches!(read, Ok(n) if n > 0) {
            return Err(BirdError::Cut { command: command.to_owned() });
        }
        match parse_line(line.trim_end_matches('\n')) {
            Line::More(text) => lines.push(text.to_owned()),
            Line::Last(code, text) if code >= 8000 => {
                return Err(BirdError::Refused { command: command.to_owned(), reply: text.to_owned() });
            }
            Line::Last(_, text) => {
                if !text.is_empty() {
                    lines.push(text.to_owned());
                }
                return Ok(lines);
            }
        }
    }
}

enum Line<'a> {
    More(&'a str),
    Last(u16, &'a str),
}

fn parse_line(line: &str) -> Line<'_> {
    let code = line.get(..4).filter(|c| c.bytes().all(|b| b.is_ascii_digit())).and_then(|c| c.parse().ok());
    match (code, line.as_bytes().get(4)) {
        (Some(code), Some(b' ')) => Line::Last(code, &line[5..]),
        (Some(code), None) => Line::Last(code, ""),
        (Some(_), Some(_)) => Line::More(&line[5..]),
        (None, _) => Line::More(line.strip_prefix(' ').unwrap_or(line)),
    }
}

/// A BGP session of lb's as `show protocols` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The BIRD protocol (`lb_peer1`).
    pub name: String,
    /// BIRD's protocol state: "up" once established, "start" while connecting.
    pub state: String,
    /// The BGP state ("Established", "Active", "Idle", ...) and any error.
    pub info: String,
}

/// lb's BGP sessions (protocols named `lb_` of type BGP) in `show protocols` lines.
pub fn sessions(lines: &[String]) -> Vec<Session> {
    lines
        .iter()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let (&name, &proto, &state) = (words.first()?, words.get(1)?, words.get(3)?);
            (name.starts_with("lb_") && proto == "BGP").then(|| Session {
                name: name.to_owned(),
                state: state.to_owned(),
                info: words.get(5..).map(|w| w.join(" ")).unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake BIRD on a socket in a temp dir: greets, reads a command, answers `reply`.
    async fn fake_bird(reply: &'static str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.ctl");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            stream.get_mut().write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
            let mut command = String::new();
            stream.read_line(&mut command).await.unwrap();
            stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
        });
        (dir, path)
    }

    #[tokio::test]
    async fn a_reply_is_read_to_its_last_line() {
        let (_dir, path) = fake_bird("0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n").await;
        let lines = command(&path, "configure", Duration::from_secs(2)).await.unwrap();
        assert_eq!(lines, vec!["Reading configuration from /etc/bird/bird.conf", "Reconfigured"]);
    }

    #[tokio::test]
    async fn an_error_code_is_a_refusal_with_birds_words() {
        let (_dir, path) =
            fake_bird("0002-Reading configuration\n8002 /var/lib/lb/bird-lb.conf:3:1 syntax error\n").await;
        let e = command(&path, "configure", Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(&e, BirdError::Refused { reply, .. } if reply.contains("syntax error")), "{e}");
    }

    #[tokio::test]
    async fn no_bird_is_unreachable_and_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let e = command(&dir.path().join("none.ctl"), "show status", Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(e, BirdError::Unreachable { .. }) && e.to_string().contains("none.ctl"), "{e}");
    }

    #[test]
    fn sessions_are_lbs_bgp_protocols_with_their_state() {
        let lines: Vec<String> = [
            "Name       Proto      Table      State  Since         Info",
            "device1    Device     ---        up     18:55:21.267  ",
            "lb_vips4   Static     master4    up     18:55:21.267  ",
            "lb_peer1   BGP        ---        up     18:55:22.001  Established   ",
            "lb_peer2   BGP        ---        start  18:55:21.267  Active        Socket: Connection refused",
            "other      BGP        ---        up     18:55:22.001  Established   ",
        ]
        .map(str::to_owned)
        .to_vec();
        let s = sessions(&lines);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].name.as_str(), s[0].state.as_str(), s[0].info.as_str()), ("lb_peer1", "up", "Established"));
        assert_eq!(s[1].info, "Active Socket: Connection refused");
    }
}
