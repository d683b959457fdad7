//! `lb run` as a process of the lab: started in the balancer namespace, its log kept, stopped on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::*;

/// The `lb run` process inside the lab's balancer namespace.
pub struct LbProcess {
    child: Child,
    /// Whether dropping it removes the pins and the config (not after `crash`: the next
    /// controller takes them over).
    owns_pins: bool,
    /// The balancer's namespace, where its admin interface listens.
    netns: String,
    config_path: PathBuf,
    pin_dir: PathBuf,
    log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
}

/// Where `cargo xtask test` put the controller binary.
pub fn lb_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LB_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "LB_BIN={} does not exist (run `cargo xtask build`, or unset LB_BIN)", bin.display());
        return bin;
    }
    let fallback = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/lb"));
    assert!(
        fallback.exists(),
        "no controller binary: set LB_BIN or run `cargo xtask test` (looked for {})",
        fallback.display()
    );
    fallback
}

/// Starts `command` (`nsenter`, `ip netns exec`: whatever enters the namespace) with
/// `lb run --config CONFIG` as its command; its log lines (stderr) come through the
/// receiver as they are written.
pub fn spawn_lb_run(command: &mut Command, config: &Path) -> Result<(Child, mpsc::Receiver<String>)> {
    let mut child = command
        .arg(lb_bin())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting lb")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let (tx, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, log))
}

impl LbProcess {
    pub fn start(lab: &Lab, config: &(impl std::fmt::Display + ?Sized)) -> Result<Self> {
        Self::start_in(&lab.lb, &lab.prefix, lab.pin_dir(), config)
    }

    /// `lb run` in the balancer namespace `ns`, its config written under the name `name`;
    /// `pin_dir` is the config's (removed when this is dropped).
    pub fn start_in(
        ns: &Netns,
        name: &str,
        pin_dir: PathBuf,
        config: &(impl std::fmt::Display + ?Sized),
    ) -> Result<Self> {
        let config_path = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(&config_path, config.to_string())?;
        // nsenter switches only the network namespace: `ip netns exec` would also remount
        // /sys and with it bpffs, hiding the pinned maps.
        let mut command = Command::new("nsenter");
        // If the test process dies without running destructors (a signal), the controller
        // dies with it. (PDEATHSIG follows the spawning *thread*: keep the LbProcess on the
        // thread that started it, as tests do.)
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        command.arg(format!("--net={}", ns.path()));
        let (child, log) = spawn_lb_run(&mut command, &config_path)?;
        let mut lb = Self { child, owns_pins: true, netns: ns.path(), config_path, pin_dir, log, lines: Vec::new() };
        lb.wait_for(" ready", Duration::from_secs(60))?;
        Ok(lb)
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.lines.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(_) => {
                    let status = match self.child.try_wait() {
                        Ok(Some(status)) => format!("it exited ({status})"),
                        _ => "it is still running".to_owned(),
                    };
                    bail!("lb never logged {needle:?} ({status}); its log:\n{}", self.lines.join("\n"))
                }
            }
        }
    }

    /// The controller's process id (nsenter execs it, so this is `lb` itself).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the config is written.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Log lines read so far (stderr of `lb`); lines not yet waited for are drained first.
    pub fn log(&mut self) -> &[String] {
        while let Ok(line) = self.log.try_recv() {
            self.lines.push(line);
        }
        &self.lines
    }

    /// Kills the controller with SIGKILL, as a crash would, leaving its pins and config for
    /// the next one to adopt.
    pub fn crash(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.owns_pins = false;
        Ok(())
    }

    /// Runs `lb ARGS --config <its config>` in the balancer's namespace (where the admin
    /// interface listens): stdout, or an error with stderr when it fails.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let output = self.cli_command(args).output().context("running lb")?;
        ensure!(output.status.success(), "lb {args:?}: {}", String::from_utf8_lossy(&output.stderr).trim());
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The command [`cli`](Self::cli) runs, for a caller that spawns it and waits itself.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", self.netns)).arg(lb_bin()).args(args);
        command.arg("--config").arg(&self.config_path).stdin(Stdio::null());
        command
    }

    /// Replaces the config and reloads it with SIGHUP.
    pub fn reload(&mut self, config: &(impl std::fmt::Display + ?Sized)) -> Result<()> {
        std::fs::write(&self.config_path, config.to_string())?;
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)?;
        self.wait_for("config applied", Duration::from_secs(30))
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.owns_pins {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
            let _ = std::fs::remove_file(&self.config_path);
        }
    }
}
