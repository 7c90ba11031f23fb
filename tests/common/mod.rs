//! Helpers for privileged integration tests: unique names, a daemon guard, namespace exec.
//!
//! Every name a test creates starts with a per-run prefix (`nt` + 5 hex digits), and every
//! guard removes what it made in `Drop`, so a failing or panicking test leaves nothing behind
//! and a leftover from a killed run cannot clash with the next one.
#![allow(dead_code)] // each test binary uses a different subset

pub mod cluster;
pub mod edge;
pub mod iperf;
pub mod tcp;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Fail with a clear message unless we run as root with /dev/net/tun and iproute2.
pub fn require_privileges() {
    // SAFETY-free check: `id -u` avoids unsafe in tests.
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "this test creates network namespaces and TAP devices: run it as root (e.g. `sudo -E cargo test`)"
    );
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "this test needs /dev/net/tun (modprobe tun)"
    );
    for tool in ["ip", "ping"] {
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false),
            "this test needs `{tool}`: run .ci/run or apt-get install iproute2 iputils-ping"
        );
    }
}

/// Return a fresh name prefix, unique per process and call: `nt` + 5 hex digits.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mix = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos)
        .wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503));
    format!("nt{:05x}", mix & 0xfffff)
}

/// Path of the netd binary cargo built for these tests.
pub fn netd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netd"))
}

/// A topology written to a temp file, with `{p}` in the template replaced by a unique prefix.
pub struct TestTopology {
    pub prefix: String,
    pub path: PathBuf,
}

impl TestTopology {
    /// Write `template` (TOML with `{p}` placeholders) under a fresh prefix.
    pub fn new(template: &str) -> TestTopology {
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join("netd-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{prefix}.toml"));
        std::fs::write(&path, template.replace("{p}", &prefix)).unwrap();
        TestTopology { prefix, path }
    }

    /// Return `{prefix}-{name}`, the name a template's `{p}-{name}` became.
    pub fn name(&self, name: &str) -> String {
        format!("{}-{}", self.prefix, name)
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // Whatever happened, leave no namespace of this run behind.
        for ns in namespaces_with_prefix(&self.prefix) {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
    }
}

/// List the named namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Return true when namespace `ns` exists.
pub fn netns_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// Run `cmd` inside namespace `ns`.
pub fn exec(ns: &str, cmd: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("ip netns exec")
}

/// Run a shell command line inside namespace `ns`; return (success, stdout+stderr).
pub fn sh(ns: &str, script: &str) -> (bool, String) {
    let out = exec(ns, &["sh", "-c", script]);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Echo requests the kernel of namespace `ns` received (Icmp InEchos), which background
/// frames (neighbour discovery, multicast) do not move.
pub fn icmp_in_echos(ns: &str) -> u64 {
    let snmp = sh(ns, "cat /proc/net/snmp").1;
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "InEchos")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Ping `target` from `ns` (`count` echo requests, 1 s deadline each); true if any reply came.
pub fn ping(ns: &str, target: &str, count: u32) -> bool {
    exec(
        ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-W",
            "1",
            "-i",
            "0.2",
            target,
        ],
    )
    .status
    .success()
}

/// A running `netd up`; dropping it stops the daemon (SIGTERM, then SIGKILL) and reaps it.
pub struct Daemon {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    rx: Receiver<String>,
    /// The reader thread, done once the daemon's stderr closed.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Start `netd up FILE` with JSON logs and wait until it reports "netd is up".
    pub fn start(topology: &TestTopology, extra: &[&str]) -> Daemon {
        Daemon::start_under(&[], topology, extra)
    }

    /// As [`Daemon::start`], through `wrapper` (see [`Daemon::spawn_under`]).
    pub fn start_under(wrapper: &[&str], topology: &TestTopology, extra: &[&str]) -> Daemon {
        let mut daemon = Daemon::spawn_under(wrapper, topology, extra);
        daemon
            .wait_for("netd is up", Duration::from_secs(30))
            .unwrap_or_else(|| panic!("netd did not come up; its log:\n{}", daemon.log()));
        daemon
    }

    /// Start `netd up FILE` without waiting.
    pub fn spawn(topology: &TestTopology, extra: &[&str]) -> Daemon {
        Daemon::spawn_under(&[], topology, extra)
    }

    /// Start `netd up FILE` without waiting, through `wrapper` (a program and its arguments
    /// that exec netd, e.g. `setpriv` dropping a capability; empty: netd itself).
    pub fn spawn_under(wrapper: &[&str], topology: &TestTopology, extra: &[&str]) -> Daemon {
        Daemon::spawn_full(wrapper, topology, extra, &[])
    }

    /// Start `netd up FILE` without waiting, with `env` added to its environment.
    pub fn spawn_with_env(topology: &TestTopology, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_full(&[], topology, extra, env)
    }

    fn spawn_full(
        wrapper: &[&str],
        topology: &TestTopology,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut args = vec![topology.path.to_string_lossy().into_owned()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::spawn_up(wrapper, &args, env)
    }

    /// Start `netd up ARGS` without waiting (a cluster host's `--etcd URL --host NAME`).
    pub fn spawn_up(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(netd_bin());
                c
            }
            None => Command::new(netd_bin()),
        };
        let mut child = command
            .args(["--log-format", "json", "up"])
            .args(args)
            .envs(env.iter().copied())
            .env("NETD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn netd");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Daemon {
            child: Some(child),
            reader: Some(reader),
            lines,
            rx,
        }
    }

    /// Wait until a log line containing `needle` appears; return it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
        {
            return Some(line.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    /// Return the daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Return everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Send SIGKILL (no teardown: what netd made stays) and wait for exit.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        self.wait_exit();
    }

    /// Send SIGTERM and wait for exit (10 s at most); return the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let child = self.child.as_ref()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        self.wait_exit()
    }

    /// Wait for the daemon to exit (10 s at most, then SIGKILL); return the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // The last lines are in once the reader saw stderr close (netd holds no
                // children that could keep it open).
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After [`Daemon::stop`], return the shutdown drop counters logged for one server.
    pub fn port_drops(&self, server: &str) -> String {
        let log = self.log();
        log.lines()
            .rev()
            .find(|l| {
                l.contains("\"port counters\"") && l.contains(&format!("\"server\":\"{server}\""))
            })
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON log line");
                v["fields"]["drops"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_else(|| panic!("no counters logged for {server}; log:\n{log}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run `netd --topology FILE ARGS` (a control command); return (success, stdout, stderr).
pub fn netd_cli(topology: &TestTopology, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(netd_bin())
        .arg("--topology")
        .arg(&topology.path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run netd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`netd_cli`], but panic unless it succeeds; return stdout.
pub fn netd_ok(topology: &TestTopology, args: &[&str]) -> String {
    let (ok, out, err) = netd_cli(topology, args);
    assert!(ok, "netd {args:?} failed:\n{out}{err}");
    out
}

/// A running daemon's HTTP API: its address and admin token.
pub struct HttpApi {
    pub addr: String,
    pub token: String,
    /// The file the token was read from.
    pub token_file: String,
}

/// Return the HTTP API the daemon logged in "netd is up" (started with `--http`): its
/// address, and the admin token from the file it named.
pub fn http_api(daemon: &mut Daemon) -> HttpApi {
    let line = daemon
        .wait_for("netd is up", Duration::from_secs(1))
        .expect("daemon is up");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    let field = |name: &str| {
        v["fields"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    let token_file = field("http_token");
    let token = std::fs::read_to_string(&token_file)
        .expect("read the token file")
        .trim()
        .to_string();
    HttpApi {
        addr: field("http"),
        token,
        token_file,
    }
}

/// Send a request with the admin token: return (status code, body).
pub fn http(api: &HttpApi, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let authorization = format!("Bearer {}", api.token);
    http_as(&api.addr, Some(&authorization), method, path, body)
}

/// A minimal HTTP/1.1 client sending `authorization` (if any): return (status code, body).
pub fn http_as(
    addr: &str,
    authorization: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP API");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    let authorization = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

/// The `/proc` directory of netd's data-path thread.
pub fn datapath_task(pid: u32) -> std::path::PathBuf {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .map(|t| t.path())
        .find(|t| {
            std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == "netd-datapath")
        })
        .expect("no netd-datapath thread")
}

/// The data-path thread's scheduling policy (0 normal, 1 SCHED_FIFO) and real-time priority.
pub fn datapath_scheduling(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(datapath_task(pid).join("stat")).expect("stat");
    // Fields after the parenthesised name, which may hold spaces; rt_priority and policy are
    // fields 40 and 41 of proc(5); the first field after the name is field 3.
    let rest: Vec<&str> = stat[stat.rfind(')').expect("stat name") + 2..]
        .split(' ')
        .collect();
    (
        rest[41 - 3].parse().expect("policy"),
        rest[40 - 3].parse().expect("rt_priority"),
    )
}

/// A file written for one test, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Write `text` to `path` with permission bits `mode`.
    pub fn create(path: &std::path::Path, text: &str, mode: u32) -> TempFile {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        TempFile(path.to_path_buf())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory made for one test, removed with everything in it when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Create `{temp}/netd-tests/{name}.d`.
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir()
            .join("netd-tests")
            .join(format!("{name}.d"));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The counters of one server's port, from `netd stats --json`.
pub fn port_counters(topology: &TestTopology, server: &str) -> serde_json::Value {
    let stats: serde_json::Value =
        serde_json::from_str(&netd_ok(topology, &["stats", "--json"])).unwrap();
    stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["server"] == server)
        .unwrap_or_else(|| panic!("no port {server} in {stats}"))["counters"]
        .clone()
}
