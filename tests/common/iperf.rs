//! iperf3 inside namespaces: a server guard and a JSON-parsed client run.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;

/// An `iperf3 -s` running in a namespace; killed on drop.
pub struct IperfServer {
    child: Child,
}

impl IperfServer {
    /// Start an iperf3 server in `ns` on `port`, and give it a moment to listen.
    pub fn start(ns: &str, port: u16) -> IperfServer {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "iperf3", "-s", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn iperf3 -s (apt-get install iperf3)");
        std::thread::sleep(Duration::from_millis(300));
        IperfServer { child }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `iperf3 -s -1 -J` in a namespace, for one connection on `bind:port`; killed on drop.
pub struct OneShotServer {
    child: Option<Child>,
}

impl OneShotServer {
    /// Start it and give it a moment to listen.
    pub fn start(ns: &str, bind: &str, port: u16) -> OneShotServer {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "iperf3", "-s", "-1", "-J", "-B", bind])
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn iperf3 -s (apt-get install iperf3)");
        std::thread::sleep(Duration::from_millis(300));
        OneShotServer { child: Some(child) }
    }

    /// Wait (10 s at most) for its one test; return the address its client came from.
    pub fn client_address(mut self) -> String {
        let mut child = self.child.take().expect("a server");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("iperf3 server");
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        json["start"]["connected"][0]["remote_host"]
            .as_str()
            .unwrap_or("(no connection)")
            .to_string()
    }
}

impl Drop for OneShotServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The parts of `iperf3 -J` output the tests read.
#[derive(Debug, Deserialize)]
pub struct IperfReport {
    pub end: IperfEnd,
    #[serde(default)]
    pub intervals: Vec<IperfInterval>,
}

#[derive(Debug, Deserialize)]
pub struct IperfEnd {
    pub sum_received: Option<IperfSum>,
    pub sum_sent: Option<IperfSum>,
}

#[derive(Debug, Deserialize)]
pub struct IperfInterval {
    pub sum: IperfSum,
}

#[derive(Debug, Deserialize, Clone)]
pub struct IperfSum {
    pub bits_per_second: f64,
    #[serde(default)]
    pub retransmits: Option<u64>,
    #[serde(default)]
    pub start: f64,
    #[serde(default)]
    pub end: f64,
}

impl IperfReport {
    /// Receiver goodput in bit/s.
    pub fn received_bps(&self) -> f64 {
        self.end
            .sum_received
            .as_ref()
            .map(|s| s.bits_per_second)
            .unwrap_or(0.0)
    }
}

/// Start `iperf3 -c target` from `ns` for `secs` seconds (omitting the first `omit`).
pub fn client(ns: &str, target: &str, port: u16, secs: u32, omit: u32, flows: u32) -> Child {
    client_with(ns, target, port, secs, omit, flows, false)
}

/// [`client`], the server sending when `reverse` (`-R`).
pub fn client_with(
    ns: &str,
    target: &str,
    port: u16,
    secs: u32,
    omit: u32,
    flows: u32,
    reverse: bool,
) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-J", "-c", target])
        .args([
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-O",
            &omit.to_string(),
        ])
        .args(["-P", &flows.to_string(), "--connect-timeout", "3000"])
        .args(reverse.then_some("-R"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iperf3 -c")
}

/// Wait for a client and parse its report.
pub fn report(child: Child) -> IperfReport {
    let out = child.wait_with_output().expect("wait for iperf3");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "iperf3 output is not a report ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Run one 2-second TCP flow from namespace `client` to `addr`, served by an iperf3 server
/// in namespace `server` (stopped when the flow ends, or the test fails); return its
/// goodput in bit/s, or panic with iperf3's words.
pub fn tcp_flow(client: &str, server: &str, addr: &str) -> f64 {
    let _server = IperfServer::start(server, 5201);
    let (ok, out) = super::sh(
        client,
        &format!("timeout 20 iperf3 -c {addr} -p 5201 -t 2 -J"),
    );
    assert!(ok, "iperf3 {client} → {addr}: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}
