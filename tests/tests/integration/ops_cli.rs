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
