//! BIRD 2 as a process of the lab: its own config, control socket and log in a directory
//! of the test's, run in a namespace, killed by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::lab::Netns;

pub struct Bird {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Bird {
    /// Checks `config` (`bird -p`), then runs BIRD on it in `ns`, its files named `name` in
    /// `dir`; returns once its control socket answers.
    pub fn start(ns: &Netns, dir: &Path, name: &str, config: &str) -> Result<Self> {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, config)?;
        check_config(&conf)?;
        let (socket, log) = (dir.join(format!("{name}.ctl")), dir.join(format!("{name}.log")));
        let child = ns
            .command("bird")
            .args(["-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting bird")?;
        let mut bird = Self { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while bird.birdc("show status").is_err() {
            if let Some(status) = bird.child.try_wait()? {
                bail!("bird exited ({status}): {}", bird.log_text());
            }
            ensure!(Instant::now() < deadline, "bird's socket never answered: {}", bird.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(bird)
    }

    /// `birdc -s SOCKET COMMAND`: what it printed.
    pub fn birdc(&self, command: &str) -> Result<String> {
        let out = Command::new("birdc").arg("-s").arg(&self.socket).args(command.split_whitespace()).output()?;
        ensure!(out.status.success(), "birdc {command}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `bird -p -c FILE`: parses the config (and what it includes) without running it.
pub fn check_config(conf: &Path) -> Result<()> {
    let out = Command::new("bird").arg("-p").arg("-c").arg(conf).output().context("running bird -p")?;
    ensure!(out.status.success(), "bird -p -c {}: {}", conf.display(), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The router's BIRD: BGP with BFD (`bfd`: interval in ms, multiplier) to every balancer
/// host (`hosts`, in AS `host_asn`), and every path the hosts announce merged into one ECMP
/// route in the kernel.
pub fn router_config(
    router_id: std::net::Ipv4Addr,
    asn: u32,
    host_asn: u32,
    hosts: &[std::net::Ipv4Addr],
    (bfd_ms, multiplier): (u32, u32),
) -> String {
    let mut text = format!(
        "router id {router_id};\nlog stderr all;\nprotocol device {{ scan time 10; }}\n\
         protocol bfd {{ interface \"eth0\" {{ min rx interval {bfd_ms} ms; min tx interval {bfd_ms} ms; multiplier {multiplier}; }}; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         template bgp balancer {{\n  local {router_id} as {asn};\n  bfd on;\n  \
         connect delay time 1; connect retry time 2; error wait time 1, 2;\n  \
         ipv4 {{ import all; export none; }};\n}}\n"
    );
    for (i, host) in hosts.iter().enumerate() {
        text.push_str(&format!("protocol bgp host{i} from balancer {{ neighbor {host} as {host_asn}; }}\n"));
    }
    text
}
