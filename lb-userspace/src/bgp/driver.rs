//! The task that makes BIRD follow the desired include file: written atomically, then
//! `configure` on the control socket. A failure is logged and retried with backoff; while
//! in sync, BIRD is probed (`show protocols`) so that the status shows it and its sessions.
//! Nothing here touches the packet path.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use super::bird_socket::{self, Session};

/// Backoff of retries: from the first to the last, doubling.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// How often BIRD is probed while in sync.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A control-socket command that takes longer has failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The include file's text, numbered so that a waiter knows when BIRD took it.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub generation: u64,
    pub text: String,
}

/// What the driver knows of BIRD, read by the status.
#[derive(Debug, Clone, Default)]
pub struct DriverState {
    /// The generation BIRD last accepted.
    pub applied: u64,
    pub bird_up: bool,
    pub last_error: Option<String>,
    /// When the next attempt is due, after a failure.
    pub retry_at: Option<Instant>,
    pub configure_failures: u64,
    pub configured: u64,
    pub sessions: Vec<Session>,
}

pub type SharedState = Arc<Mutex<DriverState>>;

pub struct Paths {
    pub socket: PathBuf,
    pub include_file: PathBuf,
}

/// Runs until `desired`'s sender is dropped. Nothing is written before the first change:
/// the channel's initial value is no announcement of the controller's, and writing it
/// would withdraw what an earlier controller left announced.
pub async fn run(paths: Paths, mut desired: watch::Receiver<Desired>, state: SharedState) {
    let mut backoff = RETRY.0;
    let mut dirty = false;
    loop {
        let wait = if dirty {
            let want = desired.borrow_and_update().clone();
            match push(&paths, &want.text).await {
                Ok(sessions) => {
                    dirty = false;
                    backoff = RETRY.0;
                    let mut s = lock(&state);
                    if s.last_error.is_some() {
                        info!(socket = %paths.socket.display(), "BIRD took the announcements again");
                    }
                    s.applied = want.generation;
                    s.bird_up = true;
                    s.configured += 1;
                    s.sessions = sessions;
                    s.last_error = None;
                    s.retry_at = None;
                    PROBE_INTERVAL
                }
                Err(e) => {
                    warn!(retry_in_ms = backoff.as_millis() as u64, "BGP announcements not applied: {e}");
                    let mut s = lock(&state);
                    s.bird_up = e.bird_answered();
                    s.last_error = Some(e.to_string());
                    s.retry_at = Some(Instant::now() + backoff);
                    s.configure_failures += 1;
                    let wait = backoff;
                    backoff = (backoff * 2).min(RETRY.1);
                    wait
                }
            }
        } else {
            probe(&paths.socket, &state, &mut dirty).await;
            if dirty { Duration::ZERO } else { PROBE_INTERVAL }
        };
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
                dirty = true;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A probe in sync; BIRD gone (or restarted) makes the state dirty: configured again.
async fn probe(socket: &Path, state: &SharedState, dirty: &mut bool) {
    match bird_socket::command(socket, "show protocols", COMMAND_TIMEOUT).await {
        Ok(lines) => {
            let mut s = lock(state);
            s.bird_up = true;
            s.sessions = bird_socket::sessions(&lines);
        }
        Err(e) => {
            warn!("BIRD stopped answering: {e}");
            let mut s = lock(state);
            s.bird_up = false;
            s.last_error = Some(e.to_string());
            s.sessions.clear();
            *dirty = true;
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("writing {path}: {source}", path = .path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Bird(#[from] bird_socket::BirdError),
}

impl PushError {
    /// Whether BIRD itself answered (and refused), as opposed to being away.
    fn bird_answered(&self) -> bool {
        use bird_socket::BirdError::{Cut, Refused};
        matches!(self, PushError::Bird(Refused { .. } | Cut { .. }))
    }
}

/// Writes the file and has BIRD read it; returns lb's sessions as BIRD then lists them.
async fn push(paths: &Paths, text: &str) -> Result<Vec<Session>, PushError> {
    write_atomically(&paths.include_file, text)
        .map_err(|source| PushError::File { path: paths.include_file.clone(), source })?;
    bird_socket::command(&paths.socket, "configure", COMMAND_TIMEOUT).await?;
    let lines = bird_socket::command(&paths.socket, "show protocols", COMMAND_TIMEOUT).await?;
    Ok(bird_socket::sessions(&lines))
}

/// BIRD never reads half a file: written beside it, then renamed over it.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let file = std::fs::File::create(&temp)?;
    std::io::Write::write_all(&mut &file, text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

pub fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, DriverState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_replaced_whole_and_its_directory_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb").join("bird-lb.conf");
        write_atomically(&path, "router id 10.0.0.1;\n").unwrap();
        write_atomically(&path, "router id 10.0.0.2;\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "router id 10.0.0.2;\n");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temp file left");
    }

    #[tokio::test]
    async fn without_bird_the_driver_says_so_and_retries_with_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths { socket: dir.path().join("none.ctl"), include_file: dir.path().join("bird-lb.conf") };
        let (tx, rx) = watch::channel(Desired::default());
        let state = SharedState::default();
        let task = tokio::spawn(run(paths, rx, state.clone()));
        tx.send(Desired { generation: 1, text: "# x\n".into() }).unwrap();
        tokio::time::sleep(RETRY.0 * 4).await;
        let s = lock(&state).clone();
        assert!(!s.bird_up && s.applied == 0, "{s:?}");
        assert!(s.last_error.as_deref().is_some_and(|e| e.contains("none.ctl")), "{s:?}");
        // 0.5 s, then 1 s: two attempts at least, and not one per poll.
        assert!((2..=4).contains(&s.configure_failures), "{s:?}");
        assert!(s.retry_at.is_some());
        // The file is written even while BIRD is away: BIRD reads it when it starts.
        assert_eq!(std::fs::read_to_string(dir.path().join("bird-lb.conf")).unwrap(), "# x\n");
        drop(tx);
        task.await.unwrap();
    }
}
