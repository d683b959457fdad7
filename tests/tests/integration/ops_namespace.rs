//! `lb run` under `ip netns exec`, which gives it a private /sys and so a bpffs of its own
//! that ends with it: lb says so at start, and `lb stop` says the program goes with it
//! (as it does) instead of claiming it stays attached. And `lb xdp-pass`, which gives a
//! veth peer the XDP program it needs, as the README tells users to.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use lb_tests::lab::{Netns, lb_bin, require_root, require_tools, spawn_lb_run, unique_prefix, xdp_programs};
use lb_userspace::api::client::AdminClient;
use lb_userspace::config::AdminConfig;

/// A controller started with `ip netns exec`, killed (by its PID) and its files removed on drop.
struct NetnsExecLb {
    child: Child,
    config: std::path::PathBuf,
    pin_dir: std::path::PathBuf,
    log: mpsc::Receiver<String>,
}

impl NetnsExecLb {
    fn start(ns: &Netns, iface: &str) -> Result<Self> {
        let config = std::env::temp_dir().join(format!("{}.toml", ns.name()));
        let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/{}", ns.name()));
        std::fs::write(
            &config,
            format!("[balancer]\ninterfaces = [\"{iface}\"]\npin_dir = \"{}\"\n", pin_dir.display()),
        )?;
        let (child, log) = spawn_lb_run(Command::new("ip").args(["netns", "exec", ns.name()]), &config)?;
        Ok(Self { child, config, pin_dir, log })
    }

    /// The log lines up to the first one containing `needle`.
    fn log_until(&self, needle: &str) -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.log.recv_timeout(left).with_context(|| format!("no {needle:?} in {lines:#?}"))?;
            let found = line.contains(needle);
            lines.push(line);
            if found {
                return Ok(lines);
            }
        }
    }

    fn wait_for_exit(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("lb did not exit after `lb stop`");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for NetnsExecLb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

#[test]
fn under_ip_netns_exec_lb_warns_and_stop_tells_the_truth() -> Result<()> {
    require_root();
    require_tools();
    let ns = Netns::new(&unique_prefix("lop-ns"))?;
    ns.ip(&["link", "add", "lopa", "type", "veth", "peer", "name", "lopb"])?;
    ns.ip(&["link", "set", "lopa", "up"])?;
    ns.ip(&["link", "set", "lopb", "up"])?;
    let mut lb = NetnsExecLb::start(&ns, "lopa")?;
    let log = lb.log_until(" ready")?;
    assert!(log.iter().any(|l| l.contains("private to this process's mount namespace")), "{log:#?}");
    assert_eq!(xdp_programs(&ns, "lopa")?.len(), 1);

    let said = ns.run(|| AdminClient::new(&AdminConfig::default()).stop(false, Duration::from_secs(15)))??;
    assert!(said.contains("the program is detached as the controller ends"), "{said}");
    lb.wait_for_exit()?;
    assert_eq!(xdp_programs(&ns, "lopa")?, Vec::<u64>::new(), "what `lb stop` said is what happened");
    Ok(())
}

/// Runs `lb args` in `ns`'s network namespace only (as the README says to); its stdout.
fn lb_in(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = Command::new("nsenter").arg(format!("--net={}", ns.path())).arg(lb_bin()).args(args).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "lb {args:?}: {}", stderr.trim());
    anyhow::ensure!(!stderr.contains("warning"), "lb {args:?}: {stderr}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn xdp_pass_attaches_to_a_veth_peer_beyond_the_command_and_detaches() -> Result<()> {
    require_root();
    require_tools();
    let ns = Netns::new(&unique_prefix("lop-pass"))?;
    ns.ip(&["link", "add", "lopc", "type", "veth", "peer", "name", "lopd"])?;
    ns.ip(&["link", "set", "lopc", "up"])?;
    ns.ip(&["link", "set", "lopd", "up"])?;
    // The pin `lb xdp-pass attach` makes, named after the namespace's inode: removed even
    // if the test fails half-way.
    let netns = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(ns.path())?);
    let pin = RemovedOnDrop(format!("/sys/fs/bpf/lb-xdp-pass-{netns}-lopd").into());
    for round in 0..3 {
        let said = lb_in(&ns, &["xdp-pass", "attach", "lopd"])?;
        assert!(said.starts_with("xdp_pass attached to lopd"), "{said}");
        assert_eq!(xdp_programs(&ns, "lopd")?.len(), 1, "round {round}: attached after `lb` exited");
        assert!(pin.0.exists(), "{} missing", pin.0.display());
        assert!(lb_in(&ns, &["xdp-pass", "attach", "lopd"]).is_err(), "attached twice");
        lb_in(&ns, &["xdp-pass", "detach", "lopd"])?;
        assert_eq!(xdp_programs(&ns, "lopd")?, Vec::<u64>::new(), "round {round}: detached");
    }
    Ok(())
}

struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
