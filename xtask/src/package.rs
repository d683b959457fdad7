//! `cargo xtask package [--no-build]`: the Debian package. cargo-deb builds it from
//! `[package.metadata.deb]` in lb-userspace/Cargo.toml; the completions and man pages in
//! it are generated here first, by running the built `lb`, into the folder that asset
//! list names (`target/release/deb-assets/`, `target/release/` being cargo-deb's name for
//! the real target directory).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{Workspace, describe, explain, say, status_of};

/// The cargo-deb release the package's metadata is written for (scripts/setup.sh installs it).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Completion scripts: the shell, and the file name the asset list expects.
const COMPLETIONS: [(&str, &str); 3] = [("bash", "lb.bash"), ("zsh", "_lb"), ("fish", "lb.fish")];

/// Builds the package from the `lb` already in the target directory; returns its path.
pub(crate) fn build_deb(ws: &Workspace) -> Result<PathBuf> {
    let lb = ws.lb_bin();
    ensure!(lb.is_file(), "{} is missing: run `cargo xtask build`, or drop --no-build", lb.display());
    check_cargo_deb(ws)?;
    // The example config becomes /etc/lb/lb.toml: a package whose config `lb check` refuses
    // would fail on its first start.
    let config = ws.root.join("config").join("lb.toml");
    run(Command::new(&lb).arg("check").arg("--config").arg(&config))?;
    let assets = ws.target_dir.join("release").join("deb-assets");
    generate_assets(&lb, &assets)?;
    let mut deb = ws.cargo();
    deb.args(["deb", "-p", "lb-userspace", "--no-build", "--output"]).arg(ws.target_dir.join("debian/"));
    say(&format!("packaging: {}", describe(&deb)));
    let output = deb.stderr(Stdio::inherit()).output().with_context(|| format!("starting {}", describe(&deb)))?;
    ensure!(output.status.success(), "{} failed ({})", describe(&deb), explain(output.status));
    // cargo-deb prints the path of what it wrote as its last line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().map(|l| ws.root.join(l.trim())).context("cargo deb printed no path")?;
    ensure!(path.is_file(), "cargo deb said it wrote {}, which is not there", path.display());
    Ok(path)
}

fn check_cargo_deb(ws: &Workspace) -> Result<()> {
    let mut version = ws.cargo();
    version.args(["deb", "--version"]);
    let said = version.output().ok().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    if !said.split_whitespace().any(|word| word == CARGO_DEB_VERSION) {
        bail!("cargo-deb {CARGO_DEB_VERSION} is needed (found {:?}): run `cargo xtask setup`", said.trim());
    }
    Ok(())
}

/// Completions and gzipped man pages from `lb`'s own `completions` and `man` commands,
/// into `dir` (emptied first, so no page of a removed command lingers).
fn generate_assets(lb: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    for (shell, file) in COMPLETIONS {
        let out = File::create(dir.join(file)).with_context(|| format!("creating {}", dir.join(file).display()))?;
        run(Command::new(lb).args(["completions", shell]).stdout(out))?;
    }
    run(Command::new(lb).arg("man").arg(&man))?;
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    pages.sort();
    // Debian policy wants man pages gzipped; -n leaves out name and time, so the same pages
    // give the same bytes.
    run(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))?;
    say(&format!("generated 3 completion scripts and {} man pages in {}", pages.len(), dir.display()));
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = status_of(cmd)?;
    ensure!(status.success(), "{} failed ({})", describe(cmd), explain(status));
    Ok(())
}
