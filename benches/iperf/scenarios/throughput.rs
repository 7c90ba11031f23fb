//! Scenario 1: unshaped throughput between two servers of one tenant.
//!
//! Capacity 100 Gbit/s (far above what this machine moves), one tenant with two servers.
//! Loads: 1 TCP flow, 4 TCP flows, UDP with 64-byte payloads at full speed. Figures are
//! taken over the middle of each run (after `warm`, before the last 0.3 s): receiver goodput
//! (iperf3), frames per second at the receiver's `eth0` (UDP), netd's own CPU and the whole
//! machine's busy CPU per GB of L2 frames moved (both servers' receive counters).
//!
//! Kernel sides: tuned HTB at 100 Gbit/s with the servers' offloads as netd's TAP (the like-
//! for-like column: a bridge whose ports are redirected through an IFB carrying HTB, which
//! is how the kernel shapes per tenant), and the bridge alone with no shaping (the kernel at
//! its fastest, the `netd/bridge` ratio).

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::Ctx;
use crate::bed::Bed;
use crate::iperf::{Client, IperfServer, Load, settle};
use crate::kernel_side::{Htb, Offloads};
use crate::measure::{Cpu, counters, wire_bytes};
use crate::proc::{self, check_stop, ns_cmd, sleep};
use crate::report::{Figures, Side, Target};
use crate::scenarios::Outcome;
use crate::topo::BenchTopo;

const NAME: &str = "1 throughput";

/// Run scenario 1.
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let topo = BenchTopo::generated(100_000_000_000, 1, 2);
    let mut bed = Bed::up(ctx, &topo)?;
    let mut out = Outcome::default();
    out.facts.insert(
        "offloads_netd_tap".into(),
        json!(offload_facts(&bed.netd.ns("s0"))),
    );
    out.facts.insert(
        "netd_realtime_priority".into(),
        json!(bed.netd.realtime_priority()?),
    );
    out.facts.insert(
        "offloads_veth_default".into(),
        json!(offload_facts(&bed.kernel.ns("s0"))),
    );
    let mut sides = vec![Side::Netd];
    // A second netd at normal priority: what the real-time default buys, in the same run.
    sides.extend(bed.add_netd_normal(ctx)?);
    // And one with several data-path loops, when asked (`--netd-threads`).
    sides.extend(bed.add_netd_threads(ctx)?);
    sides.push(Side::Kernel(Htb::Tuned, ctx.tap_offloads));
    if ctx.tap_offloads != Offloads::Veth {
        sides.push(Side::Kernel(Htb::Tuned, Offloads::Veth));
    }
    // The bridge alone, no IFB, no HTB: the kernel's fastest switch, issue 5's reference.
    sides.push(Side::Kernel(Htb::Off, Offloads::Veth));
    // Open vSwitch (netdev datapath) and vde_switch, where installed.
    sides.extend(bed.add_peers(ctx));
    let loads = [
        ("1 TCP flow", 1, None),
        ("4 TCP flows", 4, None),
        ("UDP 64 B", 1, Some(64)),
    ];
    let mut fig = Figures::new(ctx.tap_offloads);
    for rep in 0..ctx.reps {
        for (kind, flows, udp_len) in loads {
            for &side in &sides {
                check_stop()?;
                bed.prepare(side)?;
                if rep == 0 && side == Side::Kernel(Htb::Tuned, Offloads::AsTap) {
                    out.facts
                        .entry("offloads_veth_as_tap")
                        .or_insert_with(|| json!(offload_facts(&bed.kernel.ns("s0"))));
                }
                let load = Load {
                    secs: ctx.tput_secs,
                    flows,
                    udp_len,
                    cc: ctx.cc.clone(),
                };
                let r = one(ctx, &bed, side, &load)?;
                eprintln!(
                    "  {NAME} rep {rep} {kind:<11} {:<40} {:>7.2} Gbit/s {:>8.1} kpps  switch {:.2} / machine {:.2} CPU s/GB",
                    side.label(),
                    r.goodput / 1e9,
                    r.pps / 1e3,
                    r.switch_cpu_per_gb,
                    r.machine_cpu_per_gb
                );
                if udp_len.is_some() {
                    fig.add(&format!("{kind}: received"), side, r.pps / 1e3);
                    if let Some(fps) = r.netd_fps {
                        fig.add(&format!("{kind}: forwarded by netd"), side, fps / 1e3);
                    }
                } else {
                    fig.add(&format!("{kind}: goodput"), side, r.goodput / 1e9);
                }
                if matches!(
                    side,
                    Side::Netd | Side::NetdNormalPriority | Side::NetdThreads(_) | Side::Peer(_)
                ) {
                    // The switch's own process: netd, ovs-vswitchd or vde_switch.
                    fig.add(
                        &format!("{kind}: switch process CPU"),
                        side,
                        r.switch_cpu_per_gb,
                    );
                }
                if matches!(
                    side,
                    Side::Netd | Side::NetdNormalPriority | Side::NetdThreads(_)
                ) && udp_len.is_none()
                {
                    // GB → Gbit: bulk TCP moved per second of one netd core.
                    let per_core = 8.0 / r.switch_cpu_per_gb;
                    fig.add(&format!("{kind}: per netd core"), side, per_core);
                }
                fig.add(&format!("{kind}: machine CPU"), side, r.machine_cpu_per_gb);
                out.runs.push(json!({
                    "scenario": NAME, "rep": rep, "load": kind, "side": side,
                    "goodput_bps": r.goodput, "rx_pps": r.pps, "netd_fps": r.netd_fps,
                    "l2_wire_bytes": r.bytes,
                    "window_s": r.window, "switch_process_cpu_s": r.switch_cpu, "machine_cpu_s": r.machine_cpu,
                    "iperf": r.iperf,
                }));
            }
        }
    }
    for (kind, _, udp) in loads {
        if udp.is_some() {
            out.rows
                .push(fig.row(NAME, &format!("{kind}: received"), "kpps", None));
            out.rows.push(fig.row(
                NAME,
                &format!("{kind}: forwarded by netd"),
                "kfps",
                Some(Target::AtLeast(250.0)),
            ));
        } else {
            out.rows
                .push(fig.row(NAME, &format!("{kind}: goodput"), "Gbit/s", None));
        }
        out.rows
            .push(fig.row(NAME, &format!("{kind}: switch process CPU"), "s/GB", None));
        if udp.is_none() {
            out.rows.push(fig.row(
                NAME,
                &format!("{kind}: per netd core"),
                "Gbit/s per core-s",
                Some(Target::AtLeast(20.0)),
            ));
        }
        out.rows
            .push(fig.row(NAME, &format!("{kind}: machine CPU"), "s/GB", None));
    }
    Ok(out)
}

/// Scenario 1b (issue 5): one tenant shaped to 5 Gbit/s (capacity = guarantee = ceiling),
/// 1 and 4 TCP flows: L2 wire rate against the limit, and TCP retransmits, netd beside tuned
/// HTB at the same rate.
pub fn shaped(ctx: &Ctx) -> Result<Outcome> {
    const NAME: &str = "1b shaped 5G";
    const LIMIT: u64 = 5_000_000_000;
    let topo = BenchTopo::generated(LIMIT, 1, 2);
    let mut bed = Bed::up(ctx, &topo)?;
    let mut out = Outcome::default();
    let sides = [Side::Netd, Side::Kernel(Htb::Tuned, ctx.tap_offloads)];
    let mut fig = Figures::new(ctx.tap_offloads);
    let kinds = [("1 TCP flow", 1), ("4 TCP flows", 4)];
    for rep in 0..ctx.reps {
        for (kind, flows) in kinds {
            for &side in &sides {
                check_stop()?;
                bed.prepare(side)?;
                let load = Load {
                    secs: ctx.tput_secs,
                    flows,
                    udp_len: None,
                    cc: ctx.cc.clone(),
                };
                let r = one(ctx, &bed, side, &load)?;
                let l2 = r.bytes as f64 * 8.0 / r.window;
                let err = (l2 - LIMIT as f64) / LIMIT as f64 * 100.0;
                let retrans = r.iperf.retransmits.unwrap_or(0) as f64;
                eprintln!(
                    "  {NAME} rep {rep} {kind:<11} {:<40} L2 {:>6.3} Gbit/s ({err:+.2}%), goodput {:.2} Gbit/s, {retrans} retransmits",
                    side.label(),
                    l2 / 1e9,
                    r.goodput / 1e9,
                );
                fig.add(&format!("{kind}: L2"), side, l2 / 1e9);
                fig.add(&format!("{kind}: |error|"), side, err.abs());
                fig.add(&format!("{kind}: goodput"), side, r.goodput / 1e9);
                fig.add(&format!("{kind}: retransmits"), side, retrans);
                out.runs.push(json!({
                    "scenario": NAME, "rep": rep, "load": kind, "side": side,
                    "l2_bps": l2, "error_pct": err, "goodput_bps": r.goodput,
                    "window_s": r.window, "iperf": r.iperf,
                }));
            }
        }
    }
    for (kind, _) in kinds {
        out.rows
            .push(fig.row(NAME, &format!("{kind}: L2"), "Gbit/s (want 5)", None));
        out.rows.push(fig.row(
            NAME,
            &format!("{kind}: |error|"),
            "%",
            Some(Target::AtMost(2.0)),
        ));
        out.rows
            .push(fig.row(NAME, &format!("{kind}: goodput"), "Gbit/s", None));
        out.rows
            .push(fig.row(NAME, &format!("{kind}: retransmits"), "segments", None));
    }
    Ok(out)
}

struct One {
    goodput: f64,
    pps: f64,
    /// Frames netd wrote to its ports per second (netd side only).
    netd_fps: Option<f64>,
    bytes: u64,
    window: f64,
    /// CPU seconds of the switch's own process (netd, ovs-vswitchd, vde_switch; 0 for the kernel).
    switch_cpu: f64,
    machine_cpu: f64,
    switch_cpu_per_gb: f64,
    machine_cpu_per_gb: f64,
    iperf: crate::iperf::IperfResult,
}

fn one(ctx: &Ctx, bed: &Bed, side: Side, load: &Load) -> Result<One> {
    let (a, b) = (bed.ns(side, "s0"), bed.ns(side, "s1"));
    let _server = IperfServer::start(&b, 5201)?;
    settle()?;
    let client = Client::start(&a, &bed.topo.addr("s1")?, 5201, load)?;
    sleep(Duration::from_secs_f64(ctx.warm))?;
    let pid = bed.pid(side);
    let forwarded = || match side {
        Side::Netd | Side::NetdNormalPriority | Side::NetdThreads(_) => {
            bed.netd_of(side)?.forwarded_frames().map(Some)
        }
        Side::Kernel(..) | Side::Peer(_) => Ok(None),
    };
    let f0 = forwarded()?;
    let (a0, b0, cpu0, t0) = (counters(&a)?, counters(&b)?, Cpu::read(pid), Instant::now());
    sleep(Duration::from_secs_f64(load.secs - ctx.warm - 0.3))?;
    let (a1, b1, cpu1) = (counters(&a)?, counters(&b)?, Cpu::read(pid));
    let window = t0.elapsed().as_secs_f64();
    let f1 = forwarded()?;
    let iperf = client.finish()?;
    // Wire bytes (GSO super-frames' per-segment headers counted, as in the shaping runs).
    let bytes = wire_bytes(a1.0 - a0.0, a1.1 - a0.1) + wire_bytes(b1.0 - b0.0, b1.1 - b0.1);
    let (switch_cpu, machine_cpu) = cpu0.seconds_until(&cpu1, ctx.ticks);
    let gb = bytes as f64 / 1e9;
    Ok(One {
        goodput: iperf.goodput_bps,
        pps: (b1.1 - b0.1) as f64 / window,
        // Both calls bracket the window (a few ms wider): a rate over the same traffic.
        netd_fps: f0.zip(f1).map(|(f0, f1)| (f1 - f0) as f64 / window),
        bytes,
        window,
        switch_cpu,
        machine_cpu,
        switch_cpu_per_gb: switch_cpu / gb,
        machine_cpu_per_gb: machine_cpu / gb,
        iperf,
    })
}

/// Return the offload lines of `ethtool -k eth0` in `ns` (or why not).
fn offload_facts(ns: &str) -> String {
    match proc::run(
        ns_cmd(ns, &["ethtool", "-k", "eth0"]),
        "ethtool -k",
        None,
        Duration::from_secs(10),
    ) {
        Ok(text) => text
            .lines()
            .filter(|l| {
                [
                    "tx-checksumming:",
                    "scatter-gather:",
                    "tcp-segmentation-offload:",
                    "generic-segmentation-offload:",
                    "generic-receive-offload:",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("unknown ({e:#})"),
    }
}
