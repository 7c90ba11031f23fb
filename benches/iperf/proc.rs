//! Child processes with time limits, the run-wide stop flag, and name prefixes.
//!
//! Contract: every process the runner starts is bounded in time ([`Proc::wait`] kills it at
//! its deadline) and is killed and reaped when its [`Proc`] guard drops, so a failing or
//! interrupted run leaves no iperf3, ping or netd behind. Children get their own process
//! group, so a Ctrl-C in the terminal reaches only the runner, which then tears down in order
//! (netd first asked to stop, then namespaces deleted) instead of everything dying at once.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// Set by the SIGINT/SIGTERM handler; every wait loop polls it.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Return an error once a stop was requested, so `?` unwinds and the guards clean up.
pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted (SIGINT/SIGTERM): cleaning up");
    }
    Ok(())
}

/// Sleep for `d`, waking early (with an error) when a stop is requested.
pub fn sleep(d: Duration) -> Result<()> {
    let deadline = Instant::now() + d;
    loop {
        check_stop()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// Return true when `tool` is on the PATH.
pub fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Return a fresh per-run name prefix: `nb` + 5 hex digits (7 characters).
pub fn run_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos);
    format!("nb{:05x}", mix & 0xfffff)
}

/// Build `ip netns exec NS ARGS...`.
pub fn ns_cmd(ns: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    cmd
}

/// Set once at start-up by `--servers-own-session`: see [`workload_cmd`].
pub static SERVERS_OWN_SESSION: AtomicBool = AtomicBool::new(false);

/// Build the command for a server's own workload (iperf3) in `ns`: [`ns_cmd`], or with
/// `--servers-own-session` the same under `setsid`, so each process is its own session and
/// thus its own scheduling group (autogroup), as a server's processes are in their own
/// cgroup on a real host, instead of sharing one group with the switch and the runner.
pub fn workload_cmd(ns: &str, args: &[&str]) -> Command {
    if !SERVERS_OWN_SESSION.load(Ordering::Relaxed) {
        return ns_cmd(ns, args);
    }
    let mut cmd = Command::new("setsid");
    cmd.args(["ip", "netns", "exec", ns]).args(args);
    cmd
}

/// A running child, killed and reaped on drop; its output is collected by reader threads.
pub struct Proc {
    what: String,
    child: Option<Child>,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

impl Proc {
    /// Start `cmd` (stdin closed unless `input` is given, stdout/stderr captured).
    pub fn spawn(mut cmd: Command, what: &str, input: Option<&str>) -> Result<Proc> {
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        // Own process group (a terminal Ctrl-C reaches only the runner, which stops children
        // in order); not for `setsid`, which must not lead a group or it forks, leaving the
        // pid we kill without its child.
        if cmd.get_program() != "setsid" {
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        // Readers first: a child that writes while we feed it must not block on a full pipe.
        let out = reader(child.stdout.take());
        let err = reader(child.stderr.take());
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take())
            && let Err(e) = stdin.write_all(text.as_bytes())
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).with_context(|| format!("cannot feed {what}"));
        }
        Ok(Proc {
            what: what.to_string(),
            child: Some(child),
            out,
            err,
        })
    }

    /// Wait at most `timeout` (killing the child then, or at a stop request); return its
    /// status and output.
    pub fn wait(self, timeout: Duration) -> Result<Output> {
        self.wait_inner(timeout, true)
    }

    fn wait_inner(mut self, timeout: Duration, interruptible: bool) -> Result<Output> {
        let mut child = self.child.take().expect("waited once");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            let stopping = interruptible && STOP.load(Ordering::SeqCst);
            if Instant::now() > deadline || stopping {
                let _ = child.kill();
                let _ = child.wait();
                if stopping {
                    check_stop()?;
                }
                bail!("{} did not finish within {:?}: killed", self.what, timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = self.out.take().map(|h| h.join().unwrap_or_default());
        let stderr = self.err.take().map(|h| h.join().unwrap_or_default());
        Ok(Output {
            status,
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run `cmd` to completion within `timeout`; fail with its stderr when it exits non-zero.
pub fn run(cmd: Command, what: &str, input: Option<&str>, timeout: Duration) -> Result<String> {
    let out = Proc::spawn(cmd, what, input)?.wait(timeout)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a program with arguments within `timeout`; see [`run`].
pub fn run_args(args: &[&str], input: Option<&str>, timeout: Duration) -> Result<String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    run(cmd, &args.join(" "), input, timeout)
}

/// List the named namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Delete every namespace whose name starts with `prefix` (one `ip -batch` process).
pub fn delete_namespaces(prefix: &str) {
    let names = namespaces_with_prefix(prefix);
    if names.is_empty() {
        return;
    }
    let batch: String = names
        .iter()
        .map(|n| format!("netns delete {n}\n"))
        .collect();
    // Clean-up runs to the end even after a stop request (it is what the request is for).
    // `-force` keeps going past a failing line; the deadline covers 1000+ namespaces.
    let mut cmd = Command::new("ip");
    cmd.args(["-force", "-batch", "-"]);
    let result = Proc::spawn(cmd, "ip netns delete", Some(&batch))
        .and_then(|p| p.wait_inner(Duration::from_secs(300), false));
    match result {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "warning: deleting namespaces {prefix}*: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => eprintln!("warning: deleting namespaces {prefix}*: {err:#}"),
    }
}
