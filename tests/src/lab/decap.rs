//! `lb decap attach eth0` on a lab host (a backend of ipip and gue VIPs), detached again
//! when dropped.

use std::process::Command;

use anyhow::{Result, ensure};

use super::{Netns, lb_bin};

pub struct Decap {
    netns: String,
}

impl Decap {
    pub fn attach(ns: &Netns) -> Result<Self> {
        let decap = Decap { netns: ns.path() };
        decap.lb(&["decap", "attach", "eth0"])?;
        Ok(decap)
    }

    /// `lb ARGS` in the namespace (nsenter: `ip netns exec` would remount bpffs, and the
    /// pinned attachment would go with it).
    fn lb(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("nsenter").arg(format!("--net={}", self.netns)).arg(lb_bin()).args(args).output()?;
        ensure!(out.status.success(), "lb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        if let Err(e) = self.lb(&["decap", "detach", "eth0"]) {
            eprintln!("decap detach in {}: {e:#}", self.netns);
        }
    }
}

/// [`Decap::attach`] on every backend of `lab`.
pub fn decap_on_backends(lab: &super::Lab) -> Result<Vec<Decap>> {
    lab.backends.iter().map(|b| Decap::attach(&b.ns)).collect()
}
