//! The Debian package: made by `cargo xtask package --no-build` from the `lb` under test
//! (LB_BIN), in a target directory of the test's own, then unpacked and checked: every file
//! in its place, the control fields, the conffile, the config passing `lb check`, and the
//! unit passing `systemd-analyze verify` against the unpacked tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use lb_tests::lab::lb_bin;

/// Runs `cmd` and returns its stdout; panics with everything it said if it fails.
fn output_of(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{cmd:?}: {}\n{stdout}\n{stderr}", output.status);
    stdout.into_owned()
}

/// The xtask that `cargo xtask test` runs as (LB_XTASK), or the one `cargo xtask` builds.
fn xtask_bin() -> PathBuf {
    let bin = std::env::var_os("LB_XTASK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/xtask")));
    assert!(bin.is_file(), "no xtask at {} (run `cargo xtask test`, or set LB_DEB to a .deb)", bin.display());
    bin
}

/// LB_DEB if set; else a package of LB_BIN made in `scratch`, a target directory holding
/// only a link to it, so tests running side by side never share a file.
fn deb_of_lb_bin(scratch: &Path) -> PathBuf {
    if let Some(deb) = std::env::var_os("LB_DEB") {
        return PathBuf::from(deb);
    }
    let target = scratch.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::os::unix::fs::symlink(lb_bin(), target.join("release/lb")).unwrap();
    output_of(Command::new(xtask_bin()).args(["--no-setup", "package", "--no-build"]).env("CARGO_TARGET_DIR", &target));
    let debs: Vec<PathBuf> = std::fs::read_dir(target.join("debian"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs[0].clone()
}

/// The control fields, `Key: value` per line.
fn control_fields(deb: &Path) -> std::collections::BTreeMap<String, String> {
    let said =
        output_of(Command::new("dpkg-deb").arg("-f").arg(deb).args(["Package", "Version", "Architecture", "Depends"]));
    said.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(key, value)| (key.to_string(), value.trim().to_string()))
        .collect()
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
}

#[test]
fn the_package_installs_the_binary_unit_config_docs_completions_and_man_pages() {
    let scratch = tempfile::tempdir().unwrap();
    let deb = deb_of_lb_bin(scratch.path());
    let root = scratch.path().join("root");
    output_of(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));

    for file in [
        "usr/bin/lb",
        "lib/systemd/system/lb.service",
        "etc/lb/lb.toml",
        "usr/share/doc/lb/README.md",
        "usr/share/doc/lb/ARCHITECTURE.md",
        "usr/share/doc/lb/copyright",
        "usr/share/doc/lb/examples/fleet.toml",
        "usr/share/doc/lb/examples/bird-fleet.conf",
        "usr/share/doc/lb/examples/bird-lb.service",
        "usr/share/bash-completion/completions/lb",
        "usr/share/zsh/vendor-completions/_lb",
        "usr/share/fish/vendor_completions.d/lb.fish",
    ] {
        let meta = std::fs::metadata(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    let packaged_lb = root.join("usr/bin/lb");
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/lb")).unwrap();
    assert!(bash.contains("complete -F _lb"), "{bash}");

    // A gzipped page for every page the packaged `lb` writes, and nothing else.
    let pages = scratch.path().join("pages");
    output_of(Command::new(&packaged_lb).arg("man").arg(&pages));
    let expected: BTreeSet<String> = file_names(&pages).into_iter().map(|p| format!("{p}.gz")).collect();
    let man1 = root.join("usr/share/man/man1");
    assert_eq!(file_names(&man1), expected);
    assert!(expected.contains("lb.1.gz") && expected.contains("lb-run.1.gz"), "{expected:?}");
    for page in &expected {
        assert!(std::fs::read(man1.join(page)).unwrap().starts_with(&[0x1f, 0x8b]), "{page} is not gzipped");
    }

    let fields = control_fields(&deb);
    let arch = output_of(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(fields.get("Package").map(String::as_str), Some("lb"), "{fields:?}");
    assert!(fields["Version"].starts_with(&format!("{}-", env!("CARGO_PKG_VERSION"))), "{fields:?}");
    assert_eq!(fields["Architecture"], arch.trim(), "{fields:?}");
    assert!(fields["Depends"].contains("libc6"), "{fields:?}");
    let control = scratch.path().join("control");
    output_of(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(std::fs::read_to_string(control.join("conffiles")).unwrap().trim(), "/etc/lb/lb.toml");

    output_of(Command::new(&packaged_lb).arg("check").arg("--config").arg(root.join("etc/lb/lb.toml")));
    verify_unit(&root);
}

/// `systemd-analyze verify` of the packaged unit inside the unpacked tree, which also
/// checks that the commands it runs exist there. The standard units it depends on
/// (sysinit.target, network-online.target, ...) are copied in from this host.
fn verify_unit(root: &Path) {
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/lb.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/lb run --config /etc/lb/lb.toml",
        "ExecReload=/usr/bin/lb reload --config /etc/lb/lb.toml",
        "ExecStop=-/usr/bin/lb stop --config /etc/lb/lb.toml",
        "Restart=on-failure",
        "After=network-online.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in the unit:\n{unit}");
    }
    assert!(unit.lines().any(|l| l.starts_with("AmbientCapabilities=") && l.contains("CAP_BPF")), "{unit}");
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(analyze.is_file(), "{} is missing: scripts/setup.sh installs systemd", analyze.display());
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    output_of(Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(root.join("usr/lib/systemd/")));
    let output = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .arg("/lib/systemd/system/lb.service")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // It only warns about a key it can't parse: any word from it is a failure.
    assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", output.status);
}
