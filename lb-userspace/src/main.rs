//! `lb`: the balancer's command line.

mod cli_docs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand};
use lb_userspace::api::client::AdminClient;
use lb_userspace::api::{flows, status};
use lb_userspace::{capture, config, control};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP edge load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the XDP program (or adopt the one an earlier `lb run` left attached),
    /// write the tables and keep them in sync. SIGHUP reloads the config; SIGTERM/SIGINT
    /// end the controller and leave the program forwarding; `lb stop --detach` removes it.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config without touching the kernel.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the running balancer: VIPs, their priority level, backends and counters. With
    /// more than 10 VIPs, a line per VIP (`--vip NAME` or `--full` for the backends).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// The status as JSON (as the admin API's /v1/status).
        #[arg(long)]
        json: bool,
        /// Only this VIP, with its backends.
        #[arg(long, value_name = "NAME")]
        vip: Option<String>,
        /// Every VIP with its backends, however many there are.
        #[arg(long, conflicts_with = "vip")]
        full: bool,
    },
    /// Capture packets as the XDP program sees them and as it sends them (after the rewrite,
    /// with the verdict and the backend), as pcapng; run as root on the balancer host.
    /// Capture is switched off again when it ends (count, duration, Ctrl-C or SIGTERM).
    Capture {
        /// The running balancer's config (for its pin directory and VIP names).
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
        /// Where the pcapng goes; `-` for standard output (`lb capture -w - | tcpdump -r -`).
        #[arg(short = 'w', long = "write", value_name = "FILE|-", default_value = "-")]
        write: PathBuf,
        /// Only packets of this VIP.
        #[arg(long, value_name = "NAME")]
        vip: Option<String>,
        /// Only packets of this client (to a VIP from it, or a nat reply to it).
        #[arg(long, value_name = "IP")]
        client: Option<std::net::IpAddr>,
        /// Only packets sent to (or, in nat, replies from) this backend.
        #[arg(long, value_name = "ADDR:PORT")]
        backend: Option<SocketAddr>,
        /// Stop after this many packets (each one is written twice: in and out).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<f64>,
    },
    /// List the flow table: each flow's client, VIP, backend, mode, state, age, idle time and
    /// nat port, at most `--limit` of them (and how many more match).
    Flows {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this VIP's flows.
        #[arg(long, value_name = "NAME")]
        vip: Option<String>,
        /// Only the flows on this backend.
        #[arg(long, value_name = "ADDR:PORT")]
        backend: Option<std::net::SocketAddr>,
        /// Only this client: an address, address:port or prefix (10.0.0.0/24, fd00::/64).
        #[arg(long, value_name = "ADDR[:PORT]|PREFIX")]
        client: Option<flows::ClientFilter>,
        /// Rows at most (the controller gives at most 100000).
        #[arg(long, default_value_t = flows::DEFAULT_LIMIT)]
        limit: usize,
        /// The list as JSON (as the admin API's /v1/flows).
        #[arg(long)]
        json: bool,
    },
    /// Reload the running balancer's config file; a bad file is refused and the running
    /// config stays.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop sending new flows to a backend of a VIP; its existing flows stay. With
    /// `--timeout`, wait until its open connections in the VIP are gone (exit 0) or the
    /// timeout passes (exit 1, with the connections left).
    Drain {
        #[command(flatten)]
        admin: AdminArgs,
        vip: String,
        /// The backend's address:port.
        backend: SocketAddr,
        /// How long to wait for its open connections to end, e.g. `30s`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// End the running controller; the program stays attached and forwarding with its
    /// pinned maps unless `--detach`.
    Stop {
        #[command(flatten)]
        admin: AdminArgs,
        /// Also detach the program from every interface and remove its pins (done here
        /// when no controller is running).
        #[arg(long)]
        detach: bool,
    },
    /// Attach (or detach) a program that passes every packet to an interface: on veth, the
    /// peer of an interface the balancer sends from needs one (see the README).
    XdpPass {
        #[command(subcommand)]
        action: XdpPassAction,
    },
    /// On a backend of ipip and gue VIPs: attach (or detach) `xdp_decap`, which strips the
    /// outer headers of encapsulated packets to this host and passes the inner packet on.
    Decap {
        #[command(subcommand)]
        action: DecapAction,
    },
    /// Print the commands that set a backend of an ipip or gue VIP up: the kernel's tunnel
    /// devices (or `lb decap attach`), the VIP on loopback, rp_filter and arp_ignore.
    BackendSetup {
        #[arg(long, short, default_value = "/etc/lb/lb.toml")]
        config: PathBuf,
        /// The VIP's name.
        vip: String,
    },
    /// Send new flows to a drained backend again.
    Undrain {
        #[command(flatten)]
        admin: AdminArgs,
        vip: String,
        backend: String,
    },
    /// Set the share of a DNS policy record's answers sent to its backups while a primary
    /// is up: 1 is the manual failover switch, 0 sends none; `config` goes back to the
    /// configured ratio.
    Trickle {
        #[command(flatten)]
        admin: AdminArgs,
        /// The record's name, e.g. www.example.com.
        name: String,
        /// A or AAAA.
        #[arg(value_name = "TYPE")]
        rtype: String,
        /// 0..=1, or `config`.
        ratio: String,
    },
    /// Move this whole host's traffic away (`drain`) or back (`undrain`) through its BGP
    /// announcements, as `[bgp.drain]` says (MED, AS-path prepend or withdrawal).
    Host {
        #[command(subcommand)]
        action: HostAction,
    },
    /// Print the completion script of a shell (the package installs them).
    #[command(hide = true)]
    Completions { shell: cli_docs::Shell },
    /// Write the man pages (lb.1 and one per command: lb-run.1, ...) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Subcommand)]
enum XdpPassAction {
    /// Attach `xdp_pass` in driver mode, pinned under /sys/fs/bpf so it stays.
    Attach { iface: String },
    /// Detach what `attach` attached.
    Detach { iface: String },
}

#[derive(Subcommand)]
enum DecapAction {
    /// Attach `xdp_decap` (driver mode, else generic), pinned under /sys/fs/bpf so it stays;
    /// replaces one attached before.
    Attach {
        iface: String,
        /// The balancers' `balancer.gue_port`.
        #[arg(long, default_value_t = 6080)]
        gue_port: u16,
        /// The outer destinations to decapsulate (repeatable); default: every address of
        /// the host now (attach again after adding one).
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<std::net::IpAddr>,
    },
    /// Detach what `attach` attached.
    Detach { iface: String },
}

#[derive(Subcommand)]
enum HostAction {
    /// Make this host's routes less preferred (or withdraw them) and report the open
    /// connections left; with `--timeout`, wait until none is left (exit 0) or the timeout
    /// passes (exit 1).
    Drain {
        #[command(flatten)]
        admin: AdminArgs,
        /// How long to wait for the open connections to end, e.g. `60s`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Announce this host's routes as usual again.
    Undrain {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach the running controller: its config's `[admin]` section.
#[derive(clap::Args)]
struct AdminArgs {
    #[arg(long, short, default_value = "/etc/lb/lb.toml")]
    config: PathBuf,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::new(&config::load_control(&self.config)?.admin))
    }
}

/// Makes one admin call and prints what the controller said.
fn say(admin: &AdminArgs, method: &str, path: &str) -> anyhow::Result<()> {
    print!("{}", admin.client()?.call(method, path)?);
    Ok(())
}

/// `lb drain`: drains the backend, then waits for its open connections if asked to.
fn drain(admin: &AdminArgs, vip: &str, backend: SocketAddr, timeout: Option<Duration>) -> anyhow::Result<()> {
    let client = admin.client()?;
    print!("{}", client.call("POST", &format!("/v1/vips/{vip}/backends/{backend}/drain"))?);
    let Some(timeout) = timeout else { return Ok(()) };
    let waited = lb_userspace::api::drain::wait_drained(|| client.status(), vip, backend, timeout)?;
    println!("drained: no open connection left on {backend} in VIP {vip} after {:.1} s", waited.as_secs_f64());
    Ok(())
}

/// `lb host drain|undrain`: prints the host's state and the connections left; a drain
/// with `timeout` waits for them to end.
fn host(action: &HostAction) -> anyhow::Result<()> {
    let (admin, path, timeout) = match action {
        HostAction::Drain { admin, timeout } => (admin, "/v1/host/drain", *timeout),
        HostAction::Undrain { admin } => (admin, "/v1/host/undrain", None),
    };
    let client = admin.client()?;
    let report: lb_userspace::api::bgp::HostReport = serde_json::from_str(&client.call("POST", path)?)?;
    print!("{}", report.line());
    let Some(timeout) = timeout else { return Ok(()) };
    let waited = lb_userspace::api::drain::wait_host_drained(|| client.status(), timeout)?;
    println!("drained: no open connection left on this host after {:.1} s", waited.as_secs_f64());
    Ok(())
}

/// `lb stop`: asks the controller to end (and detach), and waits until it has; with
/// `--detach` and no controller running, detaches what is pinned itself.
fn stop(admin: &AdminArgs, detach: bool) -> anyhow::Result<()> {
    let control = config::load_control(&admin.config)?;
    let client = AdminClient::new(&control.admin);
    // With --detach, a controller with [bgp] first waits for its routes to go (at most
    // bgp.stop_timeout + bgp.stop_settle, each at most 30 s).
    let within = std::time::Duration::from_secs(if detach { 75 } else { 15 });
    // A DNS vantage point has no pins of its own, and the (default) pin directory may be
    // another balancer's on the same host.
    let has_pins = control.has_packet_path();
    match client.stop(detach, within) {
        Ok(said) => {
            print!("{said}");
            let deadline = std::time::Instant::now() + within;
            while detach && has_pins && control.balancer.pin_dir.exists() {
                anyhow::ensure!(std::time::Instant::now() < deadline, "the controller did not remove its pins");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Ok(())
        }
        Err(e) if detach && !has_pins && e.is::<lb_userspace::api::client::NotRunning>() => {
            eprintln!("lb: no controller answered ({e:#}); a DNS vantage point has nothing pinned to detach");
            Ok(())
        }
        Err(e) if detach && e.is::<lb_userspace::api::client::NotRunning>() => {
            eprintln!(
                "lb: no controller answered ({e:#}); detaching what is pinned under {}",
                control.balancer.pin_dir.display()
            );
            lb_userspace::dataplane::Dataplane::detach_pinned(&control.balancer.pin_dir)
        }
        Err(e) => Err(e),
    }
}

/// `lb decap attach`: the host's addresses unless some are given.
fn decap_attach(iface: &str, gue_port: u16, addresses: Vec<std::net::IpAddr>) -> anyhow::Result<()> {
    use lb_userspace::dataplane::{Dataplane, DecapConfig, host_addresses};
    let addresses = if addresses.is_empty() { host_addresses()? } else { addresses };
    let config = DecapConfig { gue_port, addresses };
    let pin = Dataplane::attach_decap_pinned(iface, &config)?;
    let listed: Vec<String> = config.addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "xdp_decap attached to {iface} (pinned at {}): gue port {gue_port}, to {}",
        pin.display(),
        listed.join(", ")
    );
    Ok(())
}

/// Logs go to stderr, at `RUST_LOG`'s levels (default info).
/// `lb capture`: the summary line goes to standard error, the packets may be on stdout.
fn capture_packets(args: &capture::CaptureArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let summary = runtime.block_on(capture::run(args))?;
    eprintln!("lb capture: {summary}");
    Ok(())
}

fn init_logging() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // hickory-server logs every DNS request at info; only what RUST_LOG asks for by name.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("hickory")) {
        filter = filter.add_directive("hickory_server=warn".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    // `lb capture` keeps SIGPIPE ignored too: a reader that goes away (`| tcpdump -c 5`)
    // must end it through its write error, which switches capture off.
    if !matches!(cli.command, Command::Run { .. } | Command::Capture { .. }) {
        // Rust ignores SIGPIPE, so printing into a closed pipe (`lb status | head`) would
        // panic; a command that only prints ends as other tools do instead. The
        // controller keeps ignoring it: its sockets report a closed peer as an error.
        // SAFETY: no other thread runs yet, and SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Run { config } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(control::run(config))),
        Command::Check { config } => config::load(&config)
            .map(|c| {
                let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
                let dns = c.dns.as_ref().map_or(String::new(), |d| {
                    let policies: usize = d.zones.iter().map(|z| z.policies.len()).sum();
                    format!(", DNS: {} zones, {policies} policy records, {} targets", d.zones.len(), d.targets.len())
                });
                let bgp =
                    c.bgp.as_ref().map_or(String::new(), |b| format!(", BGP: AS {}, {} peers", b.asn, b.peers.len()));
                println!("{}: ok ({} VIPs, {backends} backends{dns}{bgp})", config.display(), c.vips.len());
            })
            .map_err(anyhow::Error::from),
        Command::Status { admin, json, vip, full } => admin.client().and_then(|c| {
            let view = match (&vip, full) {
                (Some(name), _) => status::View::Vip(name),
                (None, true) => status::View::Full,
                (None, false) => status::View::Auto,
            };
            match (json, &vip) {
                (true, None) => print!("{}", c.call("GET", "/v1/status")?),
                (true, Some(name)) => print!("{}", serde_json::to_string(&c.status()?.only_vip(name)?)?),
                (false, _) => print!("{}", status::render(&c.status()?, view)?),
            }
            Ok(())
        }),
        Command::Capture { config, write, vip, client, backend, count, duration } => {
            let duration = duration.map(std::time::Duration::from_secs_f64);
            let args = capture::CaptureArgs { config, write, vip, client, backend, count, duration };
            capture_packets(&args)
        }
        Command::Flows { admin, vip, backend, client, limit, json } => admin.client().and_then(|c| {
            let query = flows::FlowQuery { vip, backend, client, limit: Some(limit) };
            let said = c.call("GET", &flows::path(&query))?;
            print!("{}", if json { said } else { flows::table(&serde_json::from_str(&said)?) });
            Ok(())
        }),
        Command::Reload { admin } => say(&admin, "POST", "/v1/reload"),
        Command::Drain { admin, vip, backend, timeout } => drain(&admin, &vip, backend, timeout),
        Command::Stop { admin, detach } => stop(&admin, detach),
        Command::XdpPass { action: XdpPassAction::Attach { iface } } => {
            lb_userspace::dataplane::Dataplane::attach_pass_pinned(&iface).map(|pin| {
                println!("xdp_pass attached to {iface} (pinned at {})", pin.display());
                if lb_userspace::dataplane::pins_are_private() {
                    eprintln!("lb: warning: {}", lb_userspace::dataplane::PRIVATE_PINS_ADVICE);
                }
            })
        }
        Command::XdpPass { action: XdpPassAction::Detach { iface } } => {
            lb_userspace::dataplane::Dataplane::detach_pass_pinned(&iface)
                .map(|()| println!("xdp_pass detached from {iface}"))
        }
        Command::Decap { action: DecapAction::Attach { iface, gue_port, addresses } } => {
            decap_attach(&iface, gue_port, addresses)
        }
        Command::Decap { action: DecapAction::Detach { iface } } => {
            lb_userspace::dataplane::Dataplane::detach_decap_pinned(&iface)
                .map(|()| println!("xdp_decap detached from {iface}"))
        }
        Command::BackendSetup { config, vip } => config::load(&config).map_err(anyhow::Error::from).and_then(|c| {
            print!("{}", lb_userspace::backend_setup::commands(&c, &vip)?);
            Ok(())
        }),
        Command::Undrain { admin, vip, backend } => {
            say(&admin, "POST", &format!("/v1/vips/{vip}/backends/{backend}/undrain"))
        }
        Command::Trickle { admin, name, rtype, ratio } => admin.client().and_then(|c| {
            let path = format!("/v1/dns/policies/{name}/{rtype}/trickle");
            let said = match ratio.as_str() {
                "config" => c.call("DELETE", &path)?,
                r => {
                    let r: f64 = r.parse().map_err(|_| anyhow::anyhow!("{r:?} is not a ratio 0..=1 or `config`"))?;
                    c.call("POST", &format!("{path}?ratio={r}"))?
                }
            };
            print!("{said}");
            Ok(())
        }),
        Command::Host { action } => host(&action),
        Command::Completions { shell } => {
            cli_docs::completions(Cli::command(), shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Man { dir } => cli_docs::man_pages(Cli::command(), &dir).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `lb` command line of the systemd unit in config/ is one this binary accepts.
    #[test]
    fn the_systemd_unit_runs_commands_that_exist() {
        let unit = include_str!("../../config/lb.service");
        let commands: Vec<Vec<&str>> = unit
            .lines()
            .filter_map(|l| l.split_once('=').filter(|(key, _)| key.starts_with("Exec")))
            .map(|(_, line)| line.trim_start_matches('-').split_whitespace().collect())
            .collect();
        assert_eq!(commands.len(), 4, "{unit}");
        for words in commands {
            assert_eq!(words[0], "/usr/bin/lb");
            Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{words:?}: {e}"));
        }
    }
}
