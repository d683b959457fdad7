//! Project tasks: `cargo xtask <setup|build|lint|run|test|bench|demo|drill>`.
//!
//! Every task except `setup` itself runs `scripts/setup.sh` first (idempotent: on a machine
//! that has everything it passes straight through), then drives cargo from the workspace
//! root. The eBPF crate (`lb-ebpf`) is never built here directly: `lb-userspace`'s build.rs
//! builds it for the BPF target through aya-build and embeds the object in `lb`.

use std::{
    ffi::OsString,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, run, test, benchmark and demo the edge load balancer"
)]
struct Cli {
    /// Skip scripts/setup.sh (for a machine already set up, or a build as a non-root user).
    #[arg(long, global = true)]
    no_setup: bool,
    #[command(subcommand)]
    task: Task,
}

/// Arguments handed on as they are (after `--`, or anything that follows the task).
#[derive(Args)]
struct PassThrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    args: Vec<OsString>,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing needs (root; idempotent): apt packages,
    /// rust-src for nightly, bpf-linker, bpffs.
    Setup,
    /// Build the controller `lb` (with the XDP program embedded) in release mode.
    Build,
    /// Formatting and lints as policy: `cargo fmt --check`, clippy on the host crates and
    /// on the XDP program for its BPF target, warnings as errors. Part of `test`.
    Lint,
    /// Build, then run `lb run --config config/lb.toml ARGS...` (no default config if ARGS
    /// name one with --config).
    Run(PassThrough),
    /// Lint, build, then run every test in the workspace (`cargo test --release --workspace
    /// ARGS`) with LB_BIN pointing at the built `lb`. Needs root.
    Test(PassThrough),
    /// Run the benchmarks (`lb-bench` from lb-tests) with ARGS.
    Bench(PassThrough),
    /// Build, then run the self-contained demo lab (`lb-demo` from lb-tests) with ARGS.
    Demo(PassThrough),
    /// Build, then run the fault drill (`lb-drill` from lb-tests) with ARGS.
    Drill(PassThrough),
}

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::exit(1);
        }
    }
}

/// Runs a task; returns the exit code to leave with.
fn run(cli: Cli) -> Result<i32> {
    let ws = Workspace::locate()?;
    let setup_first = !cli.no_setup;
    match cli.task {
        Task::Setup => {
            ws.setup()?;
            say("setup done");
            Ok(0)
        }
        Task::Build => {
            if setup_first {
                ws.setup()?;
            }
            ws.build_release()?;
            say(&format!("built {}", ws.lb_bin().display()));
            Ok(0)
        }
        Task::Run(PassThrough { args }) => {
            if setup_first {
                ws.setup()?;
            }
            ws.build_release()?;
            let lb = ws.lb_bin();
            let mut cmd = Command::new(&lb);
            cmd.arg("run");
            if !names_config(&args) {
                let config = ws.root.join("config").join("lb.toml");
                if !config.is_file() {
                    bail!("{} not found: pass one with `cargo xtask run -- --config FILE`", config.display());
                }
                cmd.arg("--config").arg(config);
            }
            cmd.args(&args);
            say(&format!("running {}", describe(&cmd)));
            // Replace this process, so signals reach `lb` and its exit status is ours.
            let err = cmd.exec();
            Err(err).with_context(|| format!("executing {}", lb.display()))
        }
        Task::Lint => {
            if setup_first {
                ws.setup()?;
            }
            ws.lint()?;
            say("lint passed");
            Ok(0)
        }
        Task::Test(PassThrough { args }) => {
            if !is_root() {
                bail!(
                    "the tests need root (they create network namespaces, attach XDP programs and pin maps \
                     under /sys/fs/bpf): run `cargo xtask test` as root"
                );
            }
            if setup_first {
                ws.setup()?;
            }
            ws.lint()?;
            ws.build_release()?;
            let mut cmd = ws.cargo();
            cmd.args(["test", "--release", "--workspace"]).args(&args).env("LB_BIN", ws.lb_bin());
            say(&format!("testing (LB_BIN={}): {}", ws.lb_bin().display(), describe(&cmd)));
            let (status, totals) = run_counting_tests(&mut cmd)?;
            if !status.success() {
                say(&format!("tests failed ({})", explain(status)));
            }
            // One closing line over all test binaries (cargo's own last line is usually a
            // doc-test run with nothing in it).
            println!("{} passed, {} failed", totals.passed, totals.failed);
            Ok(exit_code(status))
        }
        Task::Bench(PassThrough { args }) => {
            if setup_first {
                ws.setup()?;
            }
            let mut cmd = ws.lb_tests_bin("lb-bench", &args);
            say(&format!("benchmarking: {}", describe(&cmd)));
            Ok(exit_code(status_of(&mut cmd)?))
        }
        Task::Demo(PassThrough { args }) => ws.run_lab_program(setup_first, "lb-demo", &args, "starting the demo lab"),
        Task::Drill(PassThrough { args }) => {
            ws.run_lab_program(setup_first, "lb-drill", &args, "starting the fault drill")
        }
    }
}

struct Workspace {
    root: PathBuf,
    target_dir: PathBuf,
}

impl Workspace {
    /// Builds, then runs a lab program of lb-tests with LB_BIN set.
    fn run_lab_program(&self, setup_first: bool, bin: &str, args: &[std::ffi::OsString], what: &str) -> Result<i32> {
        if setup_first {
            self.setup()?;
        }
        self.build_release()?;
        let mut cmd = self.lb_tests_bin(bin, args);
        cmd.env("LB_BIN", self.lb_bin());
        say(&format!("{what}: {}", describe(&cmd)));
        Ok(exit_code(status_of(&mut cmd)?))
    }

    fn locate() -> Result<Self> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .with_context(|| format!("{} has no parent directory", manifest_dir.display()))?
            .to_path_buf();
        if !root.join("Cargo.toml").is_file() {
            bail!("no Cargo.toml in {}, the workspace root this xtask was built in", root.display());
        }
        // Honour a target directory moved by the environment, as cargo does.
        let target_dir = ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
            .iter()
            .find_map(|var| std::env::var_os(var).filter(|v| !v.is_empty()))
            .map(|dir| {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() { dir } else { std::env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or(dir) }
            })
            .unwrap_or_else(|| root.join("target"));
        Ok(Self { root, target_dir })
    }

    /// The controller binary a release build leaves behind.
    fn lb_bin(&self) -> PathBuf {
        self.target_dir.join("release").join("lb")
    }

    /// `cargo run --release` of one of lb-tests' programs with `args`.
    fn lb_tests_bin(&self, name: &str, args: &[OsString]) -> Command {
        let mut cmd = self.cargo();
        cmd.args(["run", "--release", "-p", "lb-tests", "--bin", name, "--"]).args(args);
        cmd
    }

    /// cargo (the same one that started us), run from the workspace root.
    fn cargo(&self) -> Command {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&self.root);
        cmd
    }

    fn setup(&self) -> Result<()> {
        let script = self.root.join("scripts").join("setup.sh");
        say("setting up (scripts/setup.sh)");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).current_dir(&self.root);
        let status = status_of(&mut cmd)?;
        if !status.success() {
            bail!("{} failed ({})", script.display(), explain(status));
        }
        Ok(())
    }

    /// `cargo fmt --check`, then clippy with warnings as errors: the host crates, and the
    /// XDP program for its BPF target (as aya's own xtask lints its eBPF crates).
    fn lint(&self) -> Result<()> {
        let mut fmt = self.cargo();
        fmt.args(["fmt", "--all", "--", "--check"]);
        let mut host = self.cargo();
        host.args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--exclude",
            "lb-ebpf",
            "--",
            "-D",
            "warnings",
        ]);
        let mut ebpf = Command::new("rustup");
        ebpf.args(["run", "nightly", "cargo", "clippy", "--release", "-p", "lb-ebpf", "-Z", "build-std=core"])
            .args(["--target", "bpfel-unknown-none", "--target-dir"])
            .arg(self.target_dir.join("bpfel-lint"))
            .args(["--", "-D", "warnings"])
            .current_dir(&self.root);
        // The host toolchain's settings must not reach the nightly one.
        for var in
            ["CARGO", "RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"]
        {
            ebpf.env_remove(var);
        }
        for (what, mut cmd) in [("formatting", fmt), ("clippy (host)", host), ("clippy (lb-ebpf, bpfel)", ebpf)] {
            say(&format!("lint, {what}: {}", describe(&cmd)));
            let status = status_of(&mut cmd)?;
            if !status.success() {
                bail!("lint failed: {what} ({}); `cargo fmt --all` fixes formatting", explain(status));
            }
        }
        Ok(())
    }

    /// `cargo build --release` of the default members; lb-userspace's build.rs builds and
    /// embeds the XDP program.
    fn build_release(&self) -> Result<()> {
        let mut cmd = self.cargo();
        cmd.args(["build", "--release"]);
        say(&format!("building: {}", describe(&cmd)));
        let status = status_of(&mut cmd)?;
        if !status.success() {
            bail!("cargo build --release failed ({})", explain(status));
        }
        let lb = self.lb_bin();
        if !lb.is_file() {
            bail!("the build succeeded but {} is missing", lb.display());
        }
        Ok(())
    }
}

/// Do the user's arguments to `lb run` already name a config file?
fn names_config(args: &[OsString]) -> bool {
    args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == "--config" || a.starts_with("--config=")
    })
}

fn status_of(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status().with_context(|| format!("starting {}", describe(cmd)))
}

#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    /// Adds the counts of a libtest summary line (`test result: ok. 7 passed; 0 failed; ...`).
    fn add_summary(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if let [.., count, kind] = words.as_slice() {
                match (*kind, count.parse::<u64>()) {
                    ("passed", Ok(n)) => self.passed += n,
                    ("failed", Ok(n)) => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// Runs `cmd`, echoing its standard output while adding up the test summaries in it.
fn run_counting_tests(cmd: &mut Command) -> Result<(ExitStatus, TestTotals)> {
    use std::io::{BufRead as _, BufReader};
    let mut child =
        cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("starting {}", describe(cmd)))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut totals = TestTotals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        totals.add_summary(&line);
    }
    Ok((child.wait()?, totals))
}

/// The exit code that reports `status` to our caller (128 + signal for a killed child).
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

fn explain(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    // Show `cargo` rather than the full path of the toolchain's cargo.
    let program = if program.file_name().is_some_and(|n| n == "cargo") {
        "cargo".to_string()
    } else {
        program.display().to_string()
    };
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Effective uid 0, read from /proc (no libc dependency needed for one number).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(argv: &[&str]) -> Vec<String> {
        let cli = Cli::try_parse_from(std::iter::once("xtask").chain(argv.iter().copied())).unwrap();
        let args = match cli.task {
            Task::Run(PassThrough { args })
            | Task::Test(PassThrough { args })
            | Task::Bench(PassThrough { args })
            | Task::Demo(PassThrough { args })
            | Task::Drill(PassThrough { args }) => args,
            Task::Setup | Task::Build | Task::Lint => Vec::new(),
        };
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn adds_up_libtest_summaries() {
        let mut totals = TestTotals::default();
        totals.add_summary(
            "test result: ok. 45 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.07s",
        );
        totals.add_summary("test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        totals.add_summary("test something ... ok");
        assert_eq!(totals, TestTotals { passed: 49, failed: 2 });
    }

    #[test]
    fn forwards_arguments_after_the_separator_verbatim() {
        assert_eq!(
            args_of(&["test", "--", "-p", "lb-tests", "--", "--nocapture"]),
            ["-p", "lb-tests", "--", "--nocapture"]
        );
        assert_eq!(args_of(&["test", "-p", "lb-tests", "failover"]), ["-p", "lb-tests", "failover"]);
        assert_eq!(args_of(&["run", "--", "--config", "x.toml"]), ["--config", "x.toml"]);
        assert_eq!(args_of(&["bench"]), Vec::<String>::new());
        assert_eq!(args_of(&["drill", "--", "--quick"]), ["--quick"]);
        assert!(Cli::try_parse_from(["xtask", "--no-setup", "build"]).unwrap().no_setup);
        assert!(Cli::try_parse_from(["xtask", "test", "--no-setup"]).unwrap().no_setup);
    }

    #[test]
    fn notices_a_config_given_to_lb_run() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(names_config(&os(&["--config", "a.toml"])));
        assert!(names_config(&os(&["-v", "--config=a.toml"])));
        assert!(!names_config(&os(&["-v"])));
    }
}
