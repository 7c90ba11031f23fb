//! A cluster for the tests, built entirely in namespaces and on loopback: an etcd server
//! (Debian's `etcd`) on 127.0.0.1 with a temporary data dir, an underlay bridge in
//! `{p}-ul`, and one namespace per host (`{p}-h<name>`, address 192.0.2.N/24 on its
//! `eth0`) standing in for that host's own stack. Every netd runs `up --etcd URL --host
//! NAME` with its tunnel in its host's namespace. Everything is removed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, TempDir, exec, netd_bin, sh};

/// Return a TCP port free on loopback now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An etcd server on loopback; stopped and its data dir removed on drop.
pub struct Etcd {
    pub url: String,
    name: String,
    peer: String,
    dir: TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// Start etcd with a fresh data dir named after `prefix`.
    pub fn start(prefix: &str) -> Etcd {
        assert!(
            Command::new("sh")
                .args(["-c", "command -v etcd && command -v etcdctl"])
                .output()
                .is_ok_and(|o| o.status.success()),
            "this test needs etcd and etcdctl: run .ci/run or apt-get install etcd-server etcd-client"
        );
        let (client, peer) = (free_port(), free_port());
        let mut etcd = Etcd {
            url: format!("http://127.0.0.1:{client}"),
            name: format!("{prefix}-etcd"),
            peer: format!("http://127.0.0.1:{peer}"),
            dir: TempDir::new(&format!("{prefix}-etcd")),
            child: None,
        };
        etcd.resume();
        etcd
    }

    /// Start (again) on the same data dir and wait until it answers.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.0.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.0.join("data"))
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer])
            .args(["--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &format!("{}={}", self.name, self.peer)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(self.dir.0.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> bool {
        self.ctl(&["endpoint", "health"]).0
    }

    /// Stop the server (its data stays for [`Etcd::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Run `etcdctl ARGS` against this server; return (success, stdout).
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "--command-timeout", "2s"])
            .args(args)
            .output()
            .expect("run etcdctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The underlay: a bridge in `{p}-ul` and each host's namespace on it.
pub struct Underlay {
    prefix: String,
    namespaces: Vec<String>,
}

impl Underlay {
    /// Build the bridge.
    pub fn new(prefix: &str) -> Underlay {
        let mut underlay = Underlay {
            prefix: prefix.to_string(),
            namespaces: Vec::new(),
        };
        let ul = underlay.bridge_ns();
        underlay.add_ns(&ul);
        let (ok, out) = sh(
            &ul,
            "ip link add br0 type bridge && ip link set br0 up && ip link set lo up",
        );
        assert!(ok, "underlay bridge: {out}");
        underlay
    }

    /// The bridge's namespace.
    pub fn bridge_ns(&self) -> String {
        format!("{}-ul", self.prefix)
    }

    /// The namespace standing for host `name`'s own stack.
    pub fn host_ns(&self, name: &str) -> String {
        format!("{}-h{name}", self.prefix)
    }

    fn add_ns(&mut self, ns: &str) {
        let ok = Command::new("ip").args(["netns", "add", ns]).status();
        assert!(ok.is_ok_and(|s| s.success()), "ip netns add {ns}");
        self.namespaces.push(ns.to_string());
    }

    /// Add a namespace (removed with the underlay), e.g. for a kernel host's server.
    pub fn add_server_ns(&mut self, ns: &str) {
        self.add_ns(ns);
    }

    /// Add host `name` with underlay address `addr` (in 192.0.2.0/24); return its namespace.
    pub fn add_host(&mut self, name: &str, addr: &str) -> String {
        let ns = self.host_ns(name);
        self.add_ns(&ns);
        let ul = self.bridge_ns();
        let port = format!("u{}-{name}", &self.prefix[2..]);
        let (ok, out) = sh(
            &ul,
            &format!(
                "ip link add {port} type veth peer name eth0 netns {ns} && \
                 ip link set {port} master br0 up"
            ),
        );
        assert!(ok, "underlay port for {name}: {out}");
        let (ok, out) = sh(
            &ns,
            &format!("ip addr add {addr}/24 dev eth0 && ip link set eth0 up && ip link set lo up"),
        );
        assert!(ok, "host {name}: {out}");
        ns
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// Store a cluster topology with `netd push`; panic with netd's words if it fails.
pub fn push(etcd: &Etcd, file: &std::path::Path) -> String {
    let (ok, text) = try_push(etcd, file, &[]);
    assert!(ok, "netd push: {text}");
    text
}

/// Run `netd push FILE` with `extra` arguments; return whether it succeeded and its
/// stdout then stderr.
pub fn try_push(etcd: &Etcd, file: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(netd_bin())
        .arg("push")
        .arg(file)
        .args(["--etcd", &etcd.url])
        .args(extra)
        .output()
        .expect("run netd push");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The control socket of host `name`'s netd in this run.
pub fn socket(prefix: &str, name: &str) -> PathBuf {
    std::env::temp_dir()
        .join("netd-tests")
        .join(format!("{prefix}-{name}.sock"))
}

/// Start host `name`'s netd and wait until it is up and follows the store.
pub fn start_host(prefix: &str, etcd: &Etcd, name: &str, lease_ttl: u32) -> Daemon {
    let socket = socket(prefix, name);
    let ttl = lease_ttl.to_string();
    let args = [
        "--etcd",
        &etcd.url,
        "--host",
        name,
        "--lease-ttl",
        &ttl,
        "--socket",
        socket.to_str().unwrap(),
    ];
    let mut daemon = Daemon::spawn_up(&[], &args, &[]);
    daemon
        .wait_for("following the cluster in etcd", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("host {name} did not come up; its log:\n{}", daemon.log()));
    daemon
}

/// Run `netd --socket SOCKET ARGS` against host `name`'s netd; return its stdout.
pub fn host_cli(prefix: &str, name: &str, args: &[&str]) -> String {
    let out = Command::new(netd_bin())
        .arg("--socket")
        .arg(socket(prefix, name))
        .args(args)
        .output()
        .expect("run netd");
    assert!(
        out.status.success(),
        "netd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Host `name`'s counters (`netd stats --json`).
pub fn host_stats(prefix: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&host_cli(prefix, name, &["stats", "--json"])).expect("stats JSON")
}

/// Wait until `check` holds, polling every 50 ms for at most `within`; return how long it
/// took, or `None` if it never did.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send one UDP datagram with `payload` from namespace `ns` to `to` (ADDR:PORT), by bash's
/// /dev/udp (the source is the namespace's own address; `cat` writes it in one write, so
/// it leaves as one datagram).
pub fn send_udp(ns: &str, to: &str, payload: &[u8]) {
    let file = tempfile_path(ns);
    std::fs::write(&file, payload).unwrap();
    let (addr, port) = to.split_once(':').expect("ADDR:PORT");
    let script = format!("cat {} > /dev/udp/{addr}/{port}", file.display());
    let out = exec(ns, &["bash", "-c", &script]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "send from {ns}: {out:?}");
}

fn tempfile_path(ns: &str) -> PathBuf {
    std::env::temp_dir()
        .join("netd-tests")
        .join(format!("{ns}.datagram"))
}

/// Host `name`'s status (`netd status --json`).
pub fn host_status(prefix: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&host_cli(prefix, name, &["status", "--json"])).expect("status JSON")
}
