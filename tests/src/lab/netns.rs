//! Network namespaces the lab creates, and code run inside them.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context as _, Result, ensure};
use nix::sched::{CloneFlags, setns};

pub fn run_cmd(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd).args(args).output().with_context(|| format!("running {cmd}"))?;
    ensure!(out.status.success(), "{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// A network namespace, deleted (with everything in it) on drop.
pub struct Netns {
    name: String,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A name prefix unique to this process and call: `tag-pid-n`.
pub fn unique_prefix(tag: &str) -> String {
    format!("{tag}-{}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        run_cmd("ip", &["netns", "add", name])?;
        let ns = Self { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_cmd("ip", &all)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(cmd);
        run_cmd("ip", &all)
    }

    /// Runs a command inside the namespace and returns its standard output.
    pub fn output(&self, cmd: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", self.name.as_str()])
            .args(cmd)
            .output()
            .with_context(|| format!("running {}", cmd.join(" ")))?;
        ensure!(
            out.status.success(),
            "{} (in {}): {}",
            cmd.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `program` to be run in this namespace (by `nsenter`, which switches only the network
    /// namespace: `ip netns exec` would also remount /sys and with it bpffs). The process
    /// gets SIGTERM should the thread that spawns it die without running destructors (a
    /// signal): keep its owner on that thread.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        command.arg(format!("--net={}", self.path())).arg(program);
        command
    }

    pub fn sysctl(&self, setting: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", setting])
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let handle = self.spawn(f)?;
        handle.join().map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))
    }

    /// Like [`Self::run`], without waiting.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<JoinHandle<T>> {
        let file = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        Ok(std::thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("entering the namespace");
            f()
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd("ip", &["netns", "del", &self.name]) {
            eprintln!("lab cleanup: {e:#}");
        }
    }
}
