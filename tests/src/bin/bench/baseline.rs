//! The XDP object of another revision, built from git, for comparisons in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, ensure};

/// The revision before connection-lifecycle state tracking (e8430fe): LRU flow and nat
/// tables, no TCP states.
pub const DEFAULT_REV: &str = "1fbd7e7";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lb-tests lives in the workspace").to_owned()
}

/// The full commit `rev` names.
fn commit_of(root: &Path, rev: &str) -> Result<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .output()
        .context("running git rev-parse")?;
    ensure!(out.status.success(), "no commit {rev}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The object of `rev`'s lb-ebpf, built as aya-build builds it for `lb` (nightly,
/// build-std, BTF) from a copy of that tree (`git archive`, which leaves the repository's
/// worktrees alone) in target/lbn-baseline/COMMIT/, where the build stays as a cache.
pub fn object_of(rev: &str) -> Result<Vec<u8>> {
    let root = workspace_root();
    let commit = commit_of(&root, rev)?;
    let dir = root.join("target").join("lbn-baseline").join(&commit);
    let object = dir.join("target").join("bpfel-unknown-none").join("release").join("lb");
    if !object.exists() {
        let src = dir.join("src");
        if !src.exists() {
            extract(&root, &commit, &dir, &src)?;
        }
        eprintln!("  building the eBPF object of {rev} ({commit}) in {} (cached there)", dir.display());
        build(&src, &dir.join("target"))?;
    }
    std::fs::read(&object).with_context(|| format!("reading {}", object.display()))
}

/// `git archive COMMIT` unpacked at `src` (through a temporary directory, so an
/// interrupted copy is never taken for a whole one).
fn extract(root: &Path, commit: &str, dir: &Path, src: &Path) -> Result<()> {
    let partial = dir.join("src.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    let mut archive = Command::new("git")
        .current_dir(root)
        .args(["archive", commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&partial)
        .stdin(archive.stdout.take().context("git archive's stdout")?)
        .status()
        .context("running tar")?;
    ensure!(archive.wait()?.success() && tar.success(), "could not unpack {commit}");
    std::fs::rename(&partial, src)?;
    Ok(())
}

/// The flags aya-build gives the eBPF crate.
fn build(src: &Path, target_dir: &Path) -> Result<()> {
    let rustflags = ["--cfg=bpf_target_arch=\"x86_64\"", "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    let status = Command::new("rustup")
        .current_dir(src)
        .args(["run", "nightly", "cargo", "build", "--package", "lb-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTUP_TOOLCHAIN")
        .status()
        .context("running cargo for the eBPF object")?;
    ensure!(status.success(), "building the eBPF object in {} failed", src.display());
    Ok(())
}
