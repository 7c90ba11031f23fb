//! iperf3 and ping inside namespaces: server guards, bounded clients, parsed results.
//!
//! iperf3 runs with `-J`; only the end summaries are parsed (serde). Every client is bounded
//! by iperf3's own `-t` plus a hard deadline of ours; servers are killed when their guard
//! drops. Congestion control is always passed explicitly (`-C`), so both sides use the same.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::proc::{Proc, ns_cmd, workload_cmd};

/// An `iperf3 -s` in a namespace; killed on drop.
pub struct IperfServer {
    _proc: Proc,
}

impl IperfServer {
    /// Start a server in `ns` on `port` (the caller waits for it to listen, see [`settle`]).
    pub fn start(ns: &str, port: u16) -> Result<IperfServer> {
        let cmd = workload_cmd(ns, &["iperf3", "-s", "-p", &port.to_string()]);
        Ok(IperfServer {
            _proc: Proc::spawn(cmd, "iperf3 -s", None)?,
        })
    }
}

/// Give freshly started servers time to listen.
pub fn settle() -> Result<()> {
    crate::proc::sleep(Duration::from_millis(300))
}

/// What a client sends.
#[derive(Debug, Clone)]
pub struct Load {
    /// Seconds of traffic (`-t`; iperf3 3.12 takes whole seconds, so this is rounded up).
    pub secs: f64,
    /// Parallel flows (`-P`).
    pub flows: u32,
    /// UDP datagrams of this many payload bytes, unlimited rate; TCP when `None`.
    pub udp_len: Option<u32>,
    /// TCP congestion control (`-C`).
    pub cc: String,
}

/// A running `iperf3 -c`.
pub struct Client {
    proc: Proc,
    secs: f64,
}

impl Client {
    /// Start a client in `ns` towards `target:port`.
    pub fn start(ns: &str, target: &str, port: u16, load: &Load) -> Result<Client> {
        Client::start_with(ns, target, port, load, 0.0, false)
    }

    /// [`Client::start`], leaving the first `omit` seconds out of the report (`-O`, whole
    /// seconds) and, with `reverse`, the server sending (`-R`).
    pub fn start_with(
        ns: &str,
        target: &str,
        port: u16,
        load: &Load,
        omit: f64,
        reverse: bool,
    ) -> Result<Client> {
        let omit = format!("{}", omit.ceil());
        let secs = format!("{}", load.secs.ceil());
        let port = port.to_string();
        let flows = load.flows.to_string();
        let mut args = vec![
            "iperf3",
            "-J",
            "-c",
            target,
            "-p",
            &port,
            "-t",
            &secs,
            "-P",
            &flows,
            "--connect-timeout",
            "3000",
            "-O",
            &omit,
        ];
        if reverse {
            args.push("-R");
        }
        let len;
        if let Some(l) = load.udp_len {
            len = l.to_string();
            args.extend(["-u", "-b", "0", "-l", &len]);
        } else {
            args.extend(["-C", &load.cc]);
        }
        Ok(Client {
            proc: Proc::spawn(workload_cmd(ns, &args), "iperf3 -c", None)?,
            secs: load.secs.ceil(),
        })
    }

    /// Wait for the report (deadline: the run's length plus 20 s).
    pub fn finish(self) -> Result<IperfResult> {
        let out = self.proc.wait(Duration::from_secs_f64(self.secs + 20.0))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let report: Report = serde_json::from_str(&text).with_context(|| {
            format!(
                "iperf3 output is not a report: {}\n{}",
                text.chars().take(500).collect::<String>(),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(err) = report.error {
            bail!("iperf3: {err}");
        }
        let end = report.end;
        Ok(IperfResult {
            goodput_bps: end
                .sum_received
                .as_ref()
                .or(end.sum.as_ref())
                .map_or(0.0, |s| s.bits_per_second),
            sent_bps: end.sum_sent.as_ref().map_or(0.0, |s| s.bits_per_second),
            retransmits: end.sum_sent.as_ref().and_then(|s| s.retransmits),
            udp_packets: end.sum.as_ref().and_then(|s| s.packets),
            udp_lost: end.sum.as_ref().and_then(|s| s.lost_packets),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Report {
    #[serde(default)]
    end: End,
    error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct End {
    sum_received: Option<Sum>,
    sum_sent: Option<Sum>,
    /// UDP: the client's summary (with the server's loss figures).
    sum: Option<Sum>,
}

#[derive(Debug, Deserialize)]
struct Sum {
    bits_per_second: f64,
    retransmits: Option<u64>,
    packets: Option<u64>,
    lost_packets: Option<u64>,
}

/// The figures kept from one iperf3 run.
#[derive(Debug, Clone, Serialize)]
pub struct IperfResult {
    /// Receiver goodput (TCP), or the UDP summary rate.
    pub goodput_bps: f64,
    pub sent_bps: f64,
    pub retransmits: Option<u64>,
    pub udp_packets: Option<u64>,
    pub udp_lost: Option<u64>,
}

/// Ping `target` from `ns`: `count` echo requests 10 ms apart; return the RTTs in ms.
pub fn ping(ns: &str, target: &str, count: u32) -> Result<Vec<f64>> {
    let count_s = count.to_string();
    let cmd = ns_cmd(
        ns,
        &[
            "ping", "-n", "-i", "0.01", "-W", "1", "-c", &count_s, target,
        ],
    );
    let out = Proc::spawn(cmd, "ping", None)?
        .wait(Duration::from_secs_f64(f64::from(count) * 0.01 + 10.0))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    if rtts.is_empty() {
        bail!("ping {target} from {ns}: no reply\n{text}");
    }
    Ok(rtts)
}
