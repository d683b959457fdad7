//! `lb`: the balancer's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lb_userspace::{config, controller};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP edge load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the XDP program, write the tables, and keep them in sync
    /// (SIGHUP reloads the config; SIGTERM/SIGINT detach and remove the pins).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config without touching the kernel.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(controller::run(config))),
        Command::Check { config } => config::load(&config).map(|c| {
            let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
            println!("{}: ok ({} VIPs, {backends} backends)", config.display(), c.vips.len());
        }).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}
