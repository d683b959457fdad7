//! The `lb` commands as a user runs them in a shell: output piped into a reader that
//! stops early (`lb status | head`) ends the command quietly, never with a panic.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use lb_tests::lab::lb_bin;

/// A fake controller on loopback answering every request with 200 and `body`, for as
/// long as the test runs; returns the config naming it.
fn fake_controller(body: &'static str) -> std::path::PathBuf {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = std::env::temp_dir().join(format!("lop-cli-{}-{}.toml", std::process::id(), body.len()));
    std::fs::write(&config, format!("[admin]\nlisten = \"{}\"\n", listener.local_addr().unwrap())).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.read(&mut [0; 1024]);
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    config
}

/// Runs `lb args` with its stdout a pipe nobody reads from any more; returns how it ended
/// and its stderr.
fn run_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(lb_bin()).args(args).stdout(writer).stderr(Stdio::piped()).output().unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn commands_writing_into_a_closed_pipe_end_quietly() {
    let config = fake_controller("{\"generation\": 1}\n");
    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lb.toml");
    let config_arg = config.to_str().unwrap();
    let cases: [&[&str]; 4] = [
        &["check", "--config", good],
        &["status", "--json", "--config", config_arg],
        &["reload", "--config", config_arg],
        &["drain", "--config", config_arg, "web", "10.0.1.1:80"],
    ];
    for args in cases {
        let (status, stderr) = run_into_closed_pipe(args);
        // 0, or killed by SIGPIPE as `cat` or `ls` are (the shell says 141).
        let quiet = status.success() || status.signal() == Some(nix::sys::signal::Signal::SIGPIPE as i32);
        assert!(quiet && !stderr.contains("panicked"), "lb {args:?}: {status:?}\n{stderr}");
    }
    std::fs::remove_file(config).unwrap();
}

/// `lb stop --detach` with no controller answering detaches what the config's `pin_dir`
/// holds, except for a DNS vantage point's config (no interfaces): it has no pins, and the
/// directory may be another balancer's on the same host.
#[test]
fn stop_detach_of_a_vantage_point_without_a_controller_leaves_the_pin_dir_alone() {
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/lop-wstop-{}", std::process::id()));
    std::fs::create_dir_all(&pins).expect("creating a directory on bpffs (run as root, bpffs mounted)");
    // A port nobody listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = std::env::temp_dir().join(format!("lop-wstop-{}.toml", std::process::id()));
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\n[balancer]\npin_dir = \"{}\"\n[dns]\nlisten = [\"127.0.0.1:{port}\"]\n",
        pins.display()
    );
    std::fs::write(&config, text).unwrap();
    let output = Command::new(lb_bin()).args(["stop", "--detach", "--config"]).arg(&config).output().unwrap();
    let left = pins.exists();
    let _ = std::fs::remove_dir(&pins);
    std::fs::remove_file(&config).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.contains("nothing pinned to detach"), "{:?}: {stderr}", output.status);
    assert!(left, "stop --detach removed {}", pins.display());
}
