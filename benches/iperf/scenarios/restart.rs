//! Scenario `restart` (issue 11): how long servers are off the network when netd is killed
//! and started again at once, for each server count of `--scale`.
//!
//! netd runs N servers; `s0` sends a UDP probe to `s1` every millisecond and a TCP
//! connection `s0` → `s1` is open (both made by this runner in the servers' namespaces, so
//! they live in the servers' stacks, not in netd). Then SIGKILL, and `netd up` on the same
//! topology, which adopts the servers' TAPs. Figures:
//! - kill → "netd is up": the time the restart takes;
//! - forwarding gap: the longest time between two probes arriving at `s1`, target ≤ 1 s
//!   (issue 11: "forwarding back within 1 s of the kill when restarted at once");
//! - TCP connections kept: the connection still delivers both ways after the restart (1 = yes).
//!
//! Then upgrades: `netd up FILE --take-over` while one TCP flow (iperf3) runs `s0` → `s1`
//! beside the probe and the quiet connection. Figures: the forwarding gap seen by the probe
//! and the one netd logs (old data path lets go → new one polls), target < 50 ms (issue 11);
//! whether the flow and the connection survived; the flow's retransmits.
//!
//! The kernel has no column here: a bridge is not a process that can be killed; its "gap" is
//! nil by construction, which is the point of adopting rather than re-creating.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;

use crate::Ctx;
use crate::iperf::{Client, IperfServer, Load, settle};
use crate::netd_side::NetdBed;
use crate::proc::{check_stop, sleep};
use crate::report::{Figures, Side, Target};
use crate::scenarios::Outcome;
use crate::topo::BenchTopo;

const NAME: &str = "11 restart";
const PROBE_PORT: u16 = 7101;
const TCP_PORT: u16 = 7102;
const IPERF_PORT: u16 = 7103;
const PROBE_EVERY: Duration = Duration::from_millis(1);

/// Run the scenario for `ctx.scale` sizes.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let (mut out, mut fig) = (Outcome::default(), Figures::new(ctx.tap_offloads));
    for &n in &ctx.scale {
        check_stop()?;
        let topo = BenchTopo::generated(100_000_000_000, (n / 10).max(1), n.min(10));
        let mut netd = NetdBed::up(&topo, &format!("{}r", ctx.prefix), &ctx.tmp, &ctx.netd_args)?;
        let timeout = Duration::from_secs(60 + n as u64 / 5);
        let target: SocketAddr = format!("{}:{PROBE_PORT}", topo.addr("s1")?).parse()?;
        for rep in 0..ctx.reps {
            check_stop()?;
            let probe = Probe::start(&netd.ns("s0"), &netd.ns("s1"), target)?;
            let mut tcp = TcpPair::open(&netd.ns("s0"), &netd.ns("s1"), target.ip().to_string())?;
            sleep(Duration::from_millis(500))?;
            let restart = netd.kill_and_restart(timeout)?;
            sleep(Duration::from_secs(1))?;
            let gap = probe.finish()?;
            let kept = tcp.still_delivers();
            eprintln!(
                "  {NAME} N={n} rep {rep}: kill → up {:.0} ms, forwarding gap {:.0} ms, {}/{} probes, TCP {}",
                restart.as_secs_f64() * 1e3,
                gap.longest.as_secs_f64() * 1e3,
                gap.received,
                gap.sent,
                if kept { "kept" } else { "LOST" }
            );
            fig.add(
                &format!("N={n}: kill → netd up"),
                Side::Netd,
                restart.as_secs_f64() * 1e3,
            );
            fig.add(
                &format!("N={n}: forwarding gap"),
                Side::Netd,
                gap.longest.as_secs_f64() * 1e3,
            );
            fig.add(
                &format!("N={n}: TCP connection kept"),
                Side::Netd,
                f64::from(u8::from(kept)),
            );
            out.runs.push(json!({
                "scenario": NAME, "servers": n, "rep": rep,
                "kill_to_up_ms": restart.as_secs_f64() * 1e3,
                "gap_ms": gap.longest.as_secs_f64() * 1e3,
                "probes_sent": gap.sent, "probes_received": gap.received,
                "tcp_kept": kept,
            }));
        }
        upgrades(ctx, &topo, &mut netd, n, &mut fig, &mut out)?;
        out.rows
            .push(fig.row(NAME, &format!("N={n}: kill → netd up"), "ms", None));
        out.rows.push(fig.row(
            NAME,
            &format!("N={n}: forwarding gap"),
            "ms",
            Some(Target::AtMost(1000.0)),
        ));
        out.rows.push(fig.row(
            NAME,
            &format!("N={n}: TCP connection kept"),
            "of 1",
            Some(Target::AtLeast(1.0)),
        ));
        for (metric, unit, target) in [
            (
                "upgrade: forwarding gap (probe)",
                "ms",
                Some(Target::AtMost(50.0)),
            ),
            (
                "upgrade: forwarding gap (netd's log)",
                "ms",
                Some(Target::AtMost(50.0)),
            ),
            (
                "upgrade: iperf3 flow and TCP connection kept",
                "of 1",
                Some(Target::AtLeast(1.0)),
            ),
            ("upgrade: iperf3 retransmits", "segments", None),
        ] {
            out.rows
                .push(fig.row(NAME, &format!("N={n}: {metric}"), unit, target));
        }
    }
    Ok(out)
}

/// Upgrade `netd` (`--take-over`) while one TCP flow runs `s0` → `s1` at full speed beside the
/// probe and a quiet TCP connection; record the gaps and whether every connection survived.
fn upgrades(
    ctx: &Ctx,
    topo: &BenchTopo,
    netd: &mut NetdBed,
    n: usize,
    fig: &mut Figures,
    out: &mut Outcome,
) -> Result<()> {
    let timeout = Duration::from_secs(60 + n as u64 / 5);
    let target: SocketAddr = format!("{}:{PROBE_PORT}", topo.addr("s1")?).parse()?;
    let secs = if ctx.reps > 1 { 6.0 } else { 4.0 };
    for rep in 0..ctx.reps {
        check_stop()?;
        let _server = IperfServer::start(&netd.ns("s1"), IPERF_PORT)?;
        settle()?;
        let load = Load {
            secs,
            flows: 1,
            udp_len: None,
            cc: ctx.cc.clone(),
        };
        let flow = Client::start(&netd.ns("s0"), &topo.addr("s1")?, IPERF_PORT, &load)?;
        let probe = Probe::start(&netd.ns("s0"), &netd.ns("s1"), target)?;
        let mut tcp = TcpPair::open(&netd.ns("s0"), &netd.ns("s1"), target.ip().to_string())?;
        sleep(Duration::from_secs_f64(secs / 2.0))?;
        let logged = netd.take_over(timeout)?;
        let gap = probe.finish()?;
        let flow = flow.finish();
        let kept = tcp.still_delivers() && flow.is_ok();
        let retransmits = flow.as_ref().ok().and_then(|f| f.retransmits).unwrap_or(0);
        let goodput = flow.as_ref().map_or(0.0, |f| f.goodput_bps);
        eprintln!(
            "  {NAME} N={n} upgrade rep {rep}: gap {:.1} ms (probe), {:.1} ms (netd), TCP {}, iperf3 {:.2} Gbit/s, {retransmits} retransmits{}",
            gap.longest.as_secs_f64() * 1e3,
            logged.as_secs_f64() * 1e3,
            if kept { "kept" } else { "LOST" },
            goodput / 1e9,
            flow.as_ref()
                .err()
                .map(|e| format!(" ({e:#})"))
                .unwrap_or_default(),
        );
        let metric = |m: &str| format!("N={n}: upgrade: {m}");
        fig.add(
            &metric("forwarding gap (probe)"),
            Side::Netd,
            gap.longest.as_secs_f64() * 1e3,
        );
        fig.add(
            &metric("forwarding gap (netd's log)"),
            Side::Netd,
            logged.as_secs_f64() * 1e3,
        );
        fig.add(
            &metric("iperf3 flow and TCP connection kept"),
            Side::Netd,
            f64::from(u8::from(kept)),
        );
        fig.add(
            &metric("iperf3 retransmits"),
            Side::Netd,
            retransmits as f64,
        );
        out.runs.push(json!({
            "scenario": NAME, "servers": n, "rep": rep, "upgrade": true,
            "gap_probe_ms": gap.longest.as_secs_f64() * 1e3,
            "gap_logged_ms": logged.as_secs_f64() * 1e3,
            "kept": kept, "retransmits": retransmits, "goodput_bps": goodput,
        }));
    }
    Ok(())
}

/// What the probe saw.
struct Gap {
    longest: Duration,
    sent: u64,
    received: u64,
}

/// A UDP datagram every [`PROBE_EVERY`] from one namespace to another, with the arrival
/// times at the receiver.
struct Probe {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<u64>,
    receiver: JoinHandle<Vec<Instant>>,
}

impl Probe {
    fn start(from: &str, to: &str, target: SocketAddr) -> Result<Probe> {
        let rx = netd::kernel::netns::run_in(to, || UdpSocket::bind(target))
            .with_context(|| format!("probe receiver in {to}"))?;
        let tx = netd::kernel::netns::run_in(from, || UdpSocket::bind("0.0.0.0:0"))
            .with_context(|| format!("probe sender in {from}"))?;
        rx.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let sending = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !sending.load(Ordering::Relaxed) {
                // Unreachable while netd is down is expected: keep probing.
                if tx.send_to(&sent.to_be_bytes(), target).is_ok() {
                    sent += 1;
                }
                std::thread::sleep(PROBE_EVERY);
            }
            sent
        });
        let receiving = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 64];
            while !receiving.load(Ordering::Relaxed) {
                if rx.recv(&mut buf).is_ok() {
                    arrivals.push(Instant::now());
                }
            }
            arrivals
        });
        Ok(Probe {
            stop,
            sender,
            receiver,
        })
    }

    fn finish(self) -> Result<Gap> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("probe sender panicked"))?;
        let arrivals = self
            .receiver
            .join()
            .map_err(|_| anyhow::anyhow!("probe receiver panicked"))?;
        let longest = arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .context("fewer than two probes arrived")?;
        Ok(Gap {
            longest,
            sent,
            received: arrivals.len() as u64,
        })
    }
}

/// A TCP connection between two servers, held by this runner.
struct TcpPair {
    client: TcpStream,
    server: TcpStream,
}

impl TcpPair {
    fn open(from: &str, to: &str, ip: String) -> Result<TcpPair> {
        let address: SocketAddr = format!("{ip}:{TCP_PORT}").parse()?;
        let listener = netd::kernel::netns::run_in(to, || TcpListener::bind(address))?;
        let client = netd::kernel::netns::run_in(from, || {
            TcpStream::connect_timeout(&address, Duration::from_secs(5))
        })
        .context("TCP connect")?;
        let (server, _) = listener.accept()?;
        for s in [&client, &server] {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
        }
        Ok(TcpPair { client, server })
    }

    /// True when a message still goes both ways.
    fn still_delivers(&mut self) -> bool {
        let echo = |from: &mut TcpStream, to: &mut TcpStream| {
            let mut got = [0u8; 5];
            from.write_all(b"after").is_ok() && to.read_exact(&mut got).is_ok() && &got == b"after"
        };
        let (client, server) = (&mut self.client, &mut self.server);
        echo(client, server) && echo(server, client)
    }
}
