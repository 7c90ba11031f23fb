//! The CLI as a shell user meets it: pipes, errors, help. No root needed.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

fn netd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netd"))
}

/// Issue 11: `netd check topology/demo.toml | head -1` panicked with "failed printing to
/// stdout: Broken pipe" and exit 101.
#[test]
fn a_closed_pipe_ends_the_cli_quietly_like_any_unix_tool() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // `head` already exited
    let out = netd()
        .args(["check", "topology/demo.toml"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// Issue 11: "Cannot read topology file X" must say why, and a huge file is refused early.
#[test]
fn check_says_why_it_cannot_read_and_bounds_the_file_size() {
    let out = netd()
        .args(["check", "no/such/file.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("No such file or directory"), "{stderr}");
    let out = netd().args(["check", "/dev/zero"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("larger than 16777216 bytes"), "{stderr}");
}

/// Issue 11, item 8: `--http localhost:9180` was refused.
#[test]
fn http_takes_a_host_name_as_well_as_an_address() {
    for (addr, ok) in [
        ("localhost:9180", true),
        ("127.0.0.1:9180", true),
        ("[::1]:9180", true),
        ("no-port", false),
    ] {
        // `--help` after the options parses them and stops there: nothing starts.
        let out = netd()
            .args(["up", "topology/demo.toml", "--http", addr, "--help"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{addr}: {stderr}");
    }
}
