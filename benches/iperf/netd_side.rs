//! The netd side: `netd up` on a bench topology, as a guard.
//!
//! [`NetdBed::up`] renders the topology into a temp file with every namespace named
//! `{prefix}n-{server}`, starts the release `netd` cargo built for this bench, and waits for
//! its "netd is up" log line (the start-up time). Dropping the bed sends SIGTERM, waits for
//! netd's own tear-down, kills it if it hangs, and finally deletes any namespace left under
//! the prefix, so nothing survives a failed or interrupted run.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{self, check_stop};
use crate::topo::BenchTopo;

/// A running `netd up`.
pub struct NetdBed {
    ns_prefix: String,
    file: PathBuf,
    /// Arguments to `netd up` after the file.
    extra: Vec<String>,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    /// From spawning netd to its "netd is up" line.
    pub startup: Duration,
}

impl NetdBed {
    /// Start netd on `topo` with namespaces `{ns_prefix}-{server}`; wait until it is up.
    /// `extra` goes to `netd up` as given (e.g. `--datapath-cpu 1`).
    pub fn up(topo: &BenchTopo, ns_prefix: &str, dir: &Path, extra: &[String]) -> Result<NetdBed> {
        let text = topo.to_toml(|s| format!("{ns_prefix}-{s}"));
        // 1000 servers take netd a while (two `ip` processes per server).
        let timeout = Duration::from_secs(60 + topo.servers.len() as u64 / 5);
        NetdBed::up_text(&text, ns_prefix, dir, extra, timeout)
    }

    /// Start netd on topology `text` (its namespaces named `{ns_prefix}-…` by the caller),
    /// written to `{dir}/{ns_prefix}.toml`; wait until it is up.
    pub fn up_text(
        text: &str,
        ns_prefix: &str,
        dir: &Path,
        extra: &[String],
        timeout: Duration,
    ) -> Result<NetdBed> {
        let file = dir.join(format!("{ns_prefix}.toml"));
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        let mut bed = NetdBed {
            ns_prefix: ns_prefix.to_string(),
            file,
            extra: extra.to_vec(),
            child: None,
            lines: Arc::new(Mutex::new(Vec::new())),
            startup: Duration::ZERO,
        };
        bed.startup = bed.start(timeout)?;
        Ok(bed)
    }

    /// Spawn `netd up` on this bed's file and wait until it is up; return how long it took.
    fn start(&mut self, timeout: Duration) -> Result<Duration> {
        self.start_with(timeout, &[])
    }

    /// [`NetdBed::start`] with `more` arguments to `netd up`.
    fn start_with(&mut self, timeout: Duration, more: &[&str]) -> Result<Duration> {
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_netd"))
            .args(["--log-format", "json", "up"])
            .arg(&self.file)
            .args(&self.extra)
            .args(more)
            .env("NETD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Own process group: a terminal Ctrl-C reaches the runner, which stops netd in order.
            .process_group(0)
            .spawn()
            .context("cannot start netd")?;
        let stderr = child.stderr.take().context("netd stderr")?;
        let (tx, rx) = channel();
        let sink = self.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        self.wait_up(&rx, timeout)?;
        Ok(start.elapsed())
    }

    /// Upgrade: start a second netd with `--take-over`, wait until it is up and the old one
    /// has exited; return the forwarding gap the new one logged.
    pub fn take_over(&mut self, timeout: Duration) -> Result<Duration> {
        let mut old = self.child.take().context("netd is not running")?;
        self.lines.lock().map(|mut l| l.clear()).ok();
        let started = self.start_with(timeout, &["--take-over"]);
        let old_exit = old.wait().context("waiting for the old netd")?;
        started?;
        if !old_exit.success() {
            bail!("the old netd exited with {old_exit} after the hand-over");
        }
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("took the ports over"))
            .with_context(|| format!("no hand-over logged:\n{log}"))?;
        let value: serde_json::Value = serde_json::from_str(line)?;
        let gap_ms = value["fields"]["gap_ms"]
            .as_f64()
            .context("no gap_ms in the hand-over line")?;
        Ok(Duration::from_secs_f64(gap_ms / 1e3))
    }

    /// SIGKILL netd (no tear-down: its servers stay) and start it again at once on the same
    /// topology, which adopts them; return the time from the kill to "netd is up".
    pub fn kill_and_restart(&mut self, timeout: Duration) -> Result<Duration> {
        let mut child = self.child.take().context("netd is not running")?;
        let killed_at = Instant::now();
        child.kill().context("SIGKILL netd")?;
        child.wait().context("reaping netd")?;
        self.start(timeout)?;
        Ok(killed_at.elapsed())
    }

    fn wait_up(&mut self, rx: &Receiver<String>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_stop()?;
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.contains("netd is up") => return Ok(()),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("netd exited during start-up; its log:\n{}", self.log())
                }
            }
            if Instant::now() > deadline {
                bail!("netd not up within {timeout:?}; its log:\n{}", self.log());
            }
        }
    }

    /// Return the namespace of bench server `server`.
    pub fn ns(&self, server: &str) -> String {
        format!("{}-{server}", self.ns_prefix)
    }

    /// Return the data-path thread's real-time priority now, 0 at normal priority (`netd
    /// stats`: `datapath.realtime_priority`).
    pub fn realtime_priority(&self) -> Result<u64> {
        self.stats()?["datapath"]["realtime_priority"]
            .as_u64()
            .context("no datapath.realtime_priority in netd stats")
    }

    /// Return netd's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Return the wire bytes netd's shaper let each tenant send so far (own + borrowed
    /// tokens), in the order of `tenants`; read through `netd stats --json`.
    pub fn charged_bytes(&self, tenants: &[String]) -> Result<Vec<u64>> {
        let stats = self.stats()?;
        let of = |name: &str| -> Option<u64> {
            let t = stats["tenants"]
                .as_array()?
                .iter()
                .find(|t| t["tenant"] == name)?;
            Some(t["shaper"]["own_bytes"].as_u64()? + t["shaper"]["borrowed_bytes"].as_u64()?)
        };
        tenants
            .iter()
            .map(|n| of(n).with_context(|| format!("no shaper counters for tenant {n}")))
            .collect()
    }

    /// Return the frames netd has written to its ports so far (every tenant's `tx_frames`).
    pub fn forwarded_frames(&self) -> Result<u64> {
        self.stats()?["tenants"]
            .as_array()
            .context("no tenants in netd stats")?
            .iter()
            .map(|t| t["counters"]["tx_frames"].as_u64().context("no tx_frames"))
            .sum()
    }

    /// Return `netd stats --json`, parsed.
    fn stats(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.cli(&["stats", "--json"])?).context("parsing netd stats --json")
    }

    /// Run a control command (`netd --topology FILE ARGS…`) against this daemon; return
    /// its standard output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_netd"))
            .arg("--topology")
            .arg(&self.file)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run netd {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "netd {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Return everything netd logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Stop netd (SIGTERM, its own tear-down, SIGKILL after `grace`); delete leftovers.
    pub fn down(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        eprintln!("warning: netd did not stop within {grace:?}: killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        // netd removes its namespaces itself; this catches a killed or crashed netd.
        proc::delete_namespaces(&format!("{}-", self.ns_prefix));
        let _ = std::fs::remove_file(&self.file);
    }
}

impl Drop for NetdBed {
    fn drop(&mut self) {
        self.down(Duration::from_secs(120));
    }
}
