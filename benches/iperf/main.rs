//! The iperf3 benchmark runner: every figure from netd beside the kernel's bridge + HTB.
//!
//! ```sh
//! sudo -E cargo bench --bench iperf                       # full run (≈ 15 min), README figures
//! sudo -E cargo bench --bench iperf -- --quick            # a few seconds per scenario
//! sudo -E cargo bench --bench iperf -- --scenario guarantee,loans --repeat 5
//! ```
//! For each scenario (see [`scenarios`]) the runner builds the topology twice — with
//! `netd up` and with kernel tools (namespaces, veths, a Linux bridge, IFB + HTB) — drives
//! identical iperf3/ping traffic on both, alternating sides run by run, and reports medians
//! with min–max. Output: a markdown table on stdout, and under `--out DIR/<timestamp>/`
//! `results.json` (every raw figure), `table.md` and `plots/*.svg`.
//!
//! Safety: addresses live only in namespaces this run creates (`nb` + 5 hex digits, then
//! `n-`/`k-` for the netd/kernel side); nothing is configured in the root namespace. Guards
//! tear everything down on success, error, panic, and SIGINT/SIGTERM (the handler only sets
//! a flag; waits notice it and unwind). Never run two runners at once.
//!
//! Files: `proc` (bounded child processes, stop flag), `topo` (one topology for both sides),
//! `netd_side`, `kernel_side`, `bed` (both sides + a traffic driver), `iperf` (iperf3/ping),
//! `measure` (counters, CPU, memory), `scenarios/` (the seven scenarios), `report`
//! (table + JSON), `plot` (SVG).

mod bed;
mod iperf;
mod kernel_side;
mod measure;
mod netd_side;
mod peers;
mod plot;
mod proc;
mod report;
mod scenarios;
mod topo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;

use kernel_side::Offloads;

/// iperf3-driven benchmarks: netd beside the Linux bridge + HTB, measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "iperf", bin_name = "cargo bench --bench iperf --")]
struct Args {
    /// A few seconds per scenario and one repetition (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (comma-separated): throughput, shaped, guarantee, loans, aggressor, latency,
    /// realloc, ratechange, scale, uplink, restart, console, cluster. Default: all.
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Repetitions per side (default 3, 1 with --quick).
    #[arg(long)]
    repeat: Option<u32>,
    /// Where results go (a timestamped directory is made inside).
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// TCP congestion control for both sides (default: the machine's default).
    #[arg(long)]
    cc: Option<String>,
    /// Servers on both sides ask for ECN (`net.ipv4.tcp_ecn=1` in every server namespace;
    /// by default Linux only accepts it).
    #[arg(long)]
    ecn: bool,
    /// Hosts of the cluster scenario, each a namespace with its own netd (default 100; 10
    /// with --quick).
    #[arg(long)]
    cluster_hosts: Option<usize>,
    /// Server counts of the scale scenario (default 10,100,1000; 10,100 with --quick).
    #[arg(long, value_delimiter = ',')]
    scale: Vec<usize>,
    /// Multiply every rate of the shaping scenarios (2–6) by this factor, e.g. 0.3 to see
    /// the shaper where senders and switch are not short of CPU (default 1: the file's rates).
    #[arg(long, default_value_t = 1.0)]
    rate_scale: f64,
    /// An argument for every `netd up` (repeat for several), e.g. `--netd-arg=--datapath-cpu=1`.
    #[arg(long = "netd-arg", allow_hyphen_values = true)]
    netd_args: Vec<String>,
    /// Also run the throughput scenario with a netd of this many data-path threads
    /// (`--datapath-threads`), beside the one-loop netd (default 1: no extra column).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    netd_threads: u8,
    /// Leave out the peer switches (Open vSwitch netdev, vde_switch) even where installed.
    #[arg(long)]
    no_peers: bool,
    /// Run each iperf3 in its own session (its own scheduling group), as a server's
    /// processes are in their own cgroup on a real host.
    #[arg(long)]
    servers_own_session: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Settings every scenario reads.
pub struct Ctx {
    /// Per-run name prefix (`nb` + 5 hex).
    pub prefix: String,
    pub reps: u32,
    pub cc: String,
    /// Servers ask for ECN.
    pub ecn: bool,
    /// Temp dir for generated topology files.
    pub tmp: PathBuf,
    /// This run's output directory.
    pub out_dir: PathBuf,
    /// The repository (for `topology/`).
    pub repo: PathBuf,
    /// `/proc` clock ticks per second.
    pub ticks: f64,
    /// CPUs of the machine.
    pub cpus: f64,
    /// Factor on every rate of the shaping scenarios.
    pub rate_scale: f64,
    /// Offloads of the kernel side's veths that match netd's TAPs (both: csum + TSO/GSO).
    pub tap_offloads: Offloads,
    /// Seconds per throughput run.
    pub tput_secs: f64,
    /// Seconds per shaping run.
    pub shape_secs: f64,
    /// Seconds at the start of a run left out of the figures (TCP ramp-up).
    pub warm: f64,
    /// Pings per RTT measurement.
    pub pings: u32,
    /// Reallocation run: t2 joins after .0 s, stays .1 s, t1 goes on .2 s after.
    pub realloc: (f64, f64, f64),
    pub scale: Vec<usize>,
    pub scale_secs: f64,
    /// Hosts of the cluster scenario.
    pub cluster_hosts: usize,
    /// Run the installed peer switches beside netd in the throughput scenario.
    pub peers: bool,
    /// Extra arguments for `netd up`.
    pub netd_args: Vec<String>,
    /// Data-path threads of the throughput scenario's extra netd (1: none).
    pub netd_threads: u8,
}

fn sh(args: &[&str]) -> String {
    proc::run_args(args, None, Duration::from_secs(10))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e:#})"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<bool> {
    if sh(&["id", "-u"]) != "0" {
        bail!(
            "the runner creates network namespaces, TAPs and qdiscs: run it as root \
             (sudo -E cargo bench --bench iperf)"
        );
    }
    for tool in ["ip", "tc", "iperf3", "ping", "sysctl"] {
        if !proc::has(tool) {
            bail!("`{tool}` is missing (apt-get install iproute2 iperf3 iputils-ping procps)");
        }
    }
    let selected: Vec<String> = if args.scenario.is_empty() {
        scenarios::ALL.iter().map(ToString::to_string).collect()
    } else {
        args.scenario.clone()
    };
    for s in &selected {
        if !scenarios::ALL.contains(&s.as_str()) {
            bail!(
                "unknown scenario {s:?}; known: {}",
                scenarios::ALL.join(", ")
            );
        }
    }
    ctrlc::set_handler(|| {
        eprintln!("\nstopping: tearing down (wait for it)…");
        proc::STOP.store(true, Ordering::SeqCst);
    })
    .context("installing the SIGINT/SIGTERM handler")?;

    let stale: Vec<String> = proc::namespaces_with_prefix("nb")
        .into_iter()
        .filter(|n| n.len() > 7 && n[2..7].chars().all(|c| c.is_ascii_hexdigit()))
        .collect();
    if !stale.is_empty() {
        eprintln!(
            "warning: namespaces from an earlier, killed run exist (not touched): {}",
            stale.join(" ")
        );
    }

    let quick = args.quick;
    if !(args.rate_scale > 0.0 && args.rate_scale <= 10.0) {
        bail!("--rate-scale must be in (0, 10], not {}", args.rate_scale);
    }
    let prefix = proc::run_prefix();
    let stamp = sh(&["date", "+%Y%m%d-%H%M%S"]);
    let out_dir = args.out.join(&stamp);
    std::fs::create_dir_all(out_dir.join("plots"))
        .with_context(|| format!("creating {}", out_dir.display()))?;
    let tmp = std::env::temp_dir().join(format!("netd-bench-{prefix}"));
    std::fs::create_dir_all(&tmp)?;
    let cc = args
        .cc
        .clone()
        .unwrap_or_else(|| sh(&["sysctl", "-n", "net.ipv4.tcp_congestion_control"]));
    // netd's TAPs offer checksum/TSO offload (IFF_VNET_HDR), as a veth does by default, so the
    // like-for-like kernel side keeps veth's defaults (`Offloads::AsTap` remains for comparing
    // against `netd up --no-offload`-style plain frames).
    let tap_offloads = Offloads::Veth;
    proc::SERVERS_OWN_SESSION.store(
        args.servers_own_session,
        std::sync::atomic::Ordering::Relaxed,
    );
    let ctx = Ctx {
        prefix: prefix.clone(),
        reps: args.repeat.unwrap_or(if quick { 1 } else { 3 }).max(1),
        cc,
        ecn: args.ecn,
        tmp: tmp.clone(),
        out_dir: out_dir.clone(),
        repo: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        ticks: measure::clock_ticks(),
        rate_scale: args.rate_scale,
        cpus: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        tap_offloads,
        tput_secs: if quick { 3.0 } else { 8.0 },
        shape_secs: if quick { 3.0 } else { 6.0 },
        warm: if quick { 1.0 } else { 1.5 },
        pings: if quick { 100 } else { 200 },
        // Whole seconds for iperf3's -t.
        realloc: if quick {
            (1.0, 2.0, 1.0)
        } else {
            (2.0, 3.0, 2.0)
        },
        scale: if !args.scale.is_empty() {
            args.scale.clone()
        } else if quick {
            vec![10, 100]
        } else {
            vec![10, 100, 1000]
        },
        scale_secs: if quick { 3.0 } else { 5.0 },
        cluster_hosts: args.cluster_hosts.unwrap_or(if quick { 10 } else { 100 }),
        peers: !args.no_peers,
        netd_args: args.netd_args.clone(),
        netd_threads: args.netd_threads,
    };
    let meta = json!({
        "started": stamp,
        "prefix": prefix,
        "mode": if quick { "quick" } else { "full" },
        "repetitions": ctx.reps,
        "kernel": sh(&["uname", "-r"]),
        "iperf3": sh(&["iperf3", "--version"]).lines().next().unwrap_or("").to_string(),
        "iproute2": sh(&["ip", "-V"]),
        "congestion_control": ctx.cc,
        "ecn": ctx.ecn,
        "netd_args": ctx.netd_args,
        "servers_own_session": args.servers_own_session,
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "cpu_model": std::fs::read_to_string("/proc/cpuinfo").ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string())),
        "kernel_side_offloads_for_shaping": ctx.tap_offloads,
        "shaping_rate_scale": ctx.rate_scale,
        "netd_binary": env!("CARGO_BIN_EXE_netd"),
        "durations_s": {"throughput": ctx.tput_secs, "shaping": ctx.shape_secs, "warm": ctx.warm,
                        "scale": ctx.scale_secs, "realloc": ctx.realloc},
    });
    let header = format!(
        "netd vs Linux bridge + IFB/HTB — {} mode, {} rep(s), shaping rates ×{}; kernel {}, {}, {}, cc {}{}, {} CPUs ({})",
        meta["mode"].as_str().unwrap_or(""),
        ctx.reps,
        ctx.rate_scale,
        meta["kernel"].as_str().unwrap_or(""),
        meta["iperf3"].as_str().unwrap_or(""),
        meta["iproute2"].as_str().unwrap_or(""),
        ctx.cc,
        if ctx.ecn { " with ECN" } else { "" },
        meta["cpus"],
        meta["cpu_model"].as_str().unwrap_or("?"),
    );
    eprintln!(
        "{header}\nrun prefix {prefix}; results in {}",
        out_dir.display()
    );

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut results = serde_json::Map::new();
    let mut ok = true;
    for name in &selected {
        if proc::STOP.load(Ordering::SeqCst) {
            break;
        }
        eprintln!(
            "== {name} ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        // Other work on the machine (a build in another worktree) skews figures: keep a trace.
        let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        // A panic inside a scenario unwinds through its guards (namespaces deleted) to here.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenarios::run(&ctx, name)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("scenario panicked")));
        match outcome {
            Ok(o) => {
                rows.extend(o.rows.iter().cloned());
                let mut v = serde_json::to_value(&o)?;
                v["seconds"] = json!(t.elapsed().as_secs_f64());
                v["loadavg_before"] = json!(load_before.trim());
                v["loadavg_after"] = json!(
                    std::fs::read_to_string("/proc/loadavg")
                        .unwrap_or_default()
                        .trim()
                );
                results.insert(name.clone(), v);
            }
            Err(e) => {
                ok = false;
                eprintln!("error in scenario {name}: {e:#}");
                results.insert(name.clone(), json!({"error": format!("{e:#}")}));
            }
        }
        // Whatever happened, nothing of this run may survive a scenario.
        let left = proc::namespaces_with_prefix(&prefix);
        if !left.is_empty() {
            eprintln!("warning: removing leftover namespaces: {}", left.join(" "));
            proc::delete_namespaces(&prefix);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);

    let table = report::markdown(&header, &rows);
    println!("{table}");
    let doc = json!({ "meta": meta, "rows": rows, "scenarios": results,
                      "seconds": started.elapsed().as_secs_f64() });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    std::fs::write(out_dir.join("table.md"), &table)?;
    eprintln!(
        "wrote {}/results.json, table.md, plots/ ({:.0} s)",
        out_dir.display(),
        started.elapsed().as_secs_f64()
    );
    if proc::STOP.load(Ordering::SeqCst) {
        ok = false;
    }
    Ok(ok)
}
