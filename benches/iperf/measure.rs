//! Measuring: L2 counters of the servers' `eth0`, CPU time, memory, and small statistics.
//!
//! L2 rates come from the same place on both sides: the `eth0` receive counters inside each
//! server's namespace, read from `/proc/thread-self/net/dev` by a thread that entered that
//! namespace (netd's own `kernel::netns::run_in`, so the bench needs no unsafe code). A
//! tenant's L2 rate is the sum over its servers (data one way, ACKs the other: both are
//! frames the tenant sent, and both are charged to it by netd and by HTB alike).
//!
//! Wire bytes, not counter bytes: with offloads on (netd's TAPs and veths alike) a receiver
//! is handed 64 KB GSO super-frames, and `eth0` counts each once, with one set of headers,
//! where the wire (and tc, and netd's shaper) carries one Ethernet/IPv4/TCP header per
//! segment: the raw counters read 66/1514 = 4.4% low. [`Series::wire`] puts those headers
//! back: per sample interval, payload = bytes − [`TCP_HEADERS`] × frames, segments =
//! payload / [`TCP_MSS`], and every segment beyond one per frame adds a header. That is
//! exact for full-sized segments and at most one header per super-frame low otherwise
//! (≤ 0.1%), assuming a namespace receives one kind of traffic in an interval (TCP data, or
//! pure ACKs, which gain nothing), as in every shaping scenario. The shaping runs cross-check
//! the result against the switches' own byte counters (HTB classes, netd's shaper).
//!
//! [`Sampler`] runs one such thread per namespace at a fixed interval (10 ms for shaping
//! runs, 1 ms for the reallocation scenario) against one common epoch, so series from
//! different namespaces line up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Parse `eth0`'s receive bytes and packets out of a `/proc/net/dev` text.
fn parse_dev(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.trim_start().starts_with("eth0:"))?;
    let mut f = line.split(':').nth(1)?.split_whitespace();
    let bytes = f.next()?.parse().ok()?;
    let packets = f.next()?.parse().ok()?;
    Some((bytes, packets))
}

fn read_dev() -> std::io::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    parse_dev(&text).ok_or_else(|| std::io::Error::other("no eth0 in /proc/net/dev"))
}

/// Read `eth0`'s receive (bytes, packets) in namespace `ns` once.
pub fn counters(ns: &str) -> Result<(u64, u64)> {
    netd::kernel::netns::run_in(ns, read_dev).with_context(|| format!("reading eth0 in {ns}"))
}

/// Ethernet (14) + IPv4 (20) + TCP with timestamps (32) header bytes of each TCP segment.
pub const TCP_HEADERS: u64 = 66;
/// TCP payload per segment at the bench servers' MTU of 1500 (1500 − 20 − 32).
pub const TCP_MSS: u64 = 1448;

/// Return the wire bytes of `bytes`/`frames` received in one interval (see the module docs):
/// the counter bytes plus one header for every segment beyond one per frame.
pub fn wire_bytes(bytes: u64, frames: u64) -> u64 {
    let payload = bytes.saturating_sub(TCP_HEADERS * frames);
    let extra_segments = (payload / TCP_MSS).saturating_sub(frames);
    bytes + extra_segments * TCP_HEADERS
}

/// One namespace's `eth0` receive counters over time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    pub ns: String,
    /// Seconds since the sampler's epoch.
    pub t: Vec<f64>,
    /// Wire bytes received since the first sample ([`wire_bytes`] per interval, summed).
    pub wire: Vec<u64>,
    /// The last raw `eth0` (bytes, packets), which the next sample's interval starts from.
    #[serde(skip)]
    last: Option<(u64, u64)>,
}

impl Series {
    /// Append one sample of the raw counters, extending the wire-byte series.
    pub fn push(&mut self, t: f64, bytes: u64, packets: u64) {
        let wire = match (self.last, self.wire.last()) {
            (Some((b, p)), Some(&w)) => {
                w + wire_bytes(bytes.saturating_sub(b), packets.saturating_sub(p))
            }
            _ => 0,
        };
        self.t.push(t);
        self.wire.push(wire);
        self.last = Some((bytes, packets));
    }

    /// Return the wire bytes received by time `t`, linearly interpolated between samples.
    pub fn wire_at(&self, t: f64) -> f64 {
        let i = self.t.partition_point(|&x| x < t);
        if i == 0 {
            return self.wire.first().map_or(0.0, |&b| b as f64);
        }
        if i >= self.t.len() {
            return self.wire.last().map_or(0.0, |&b| b as f64);
        }
        let (t0, t1) = (self.t[i - 1], self.t[i]);
        let (b0, b1) = (self.wire[i - 1] as f64, self.wire[i] as f64);
        if t1 <= t0 {
            return b1;
        }
        b0 + (b1 - b0) * (t - t0) / (t1 - t0)
    }
}

/// Return the L2 wire rate (bits/s) of a group of series over `[a, b]`.
pub fn rate(series: &[&Series], a: f64, b: f64) -> f64 {
    let bytes: f64 = series.iter().map(|s| s.wire_at(b) - s.wire_at(a)).sum();
    bytes * 8.0 / (b - a)
}

/// Sampling threads, one per namespace; [`Sampler::stop`] returns their series.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Series>>,
    epoch: Instant,
}

impl Sampler {
    /// Start sampling every `interval` in each of `namespaces`.
    pub fn start(namespaces: &[String], interval: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let threads = namespaces
            .iter()
            .map(|ns| {
                let (ns, stop) = (ns.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut series = Series {
                        ns: ns.clone(),
                        ..Series::default()
                    };
                    let result = netd::kernel::netns::run_in(&ns, || {
                        let mut s = Series::default();
                        let mut next = Instant::now();
                        // Bounded: the runner always stops the sampler; this is a backstop.
                        let limit = epoch + Duration::from_secs(600);
                        while !stop.load(Ordering::Relaxed) && Instant::now() < limit {
                            let (b, p) = read_dev()?;
                            s.push(epoch.elapsed().as_secs_f64(), b, p);
                            // Fixed schedule (no drift); skip ticks we overslept.
                            next += interval;
                            let now = Instant::now();
                            if next > now {
                                std::thread::sleep(next - now);
                            } else {
                                next = now;
                            }
                        }
                        Ok(s)
                    });
                    match result {
                        Ok(s) => series = Series { ns: series.ns, ..s },
                        Err(e) => eprintln!("warning: sampling {ns}: {e}"),
                    }
                    series
                })
            })
            .collect();
        Sampler {
            stop,
            threads,
            epoch,
        }
    }

    /// Return seconds since the sampler's epoch.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Stop sampling and return one series per namespace, in the order given to `start`.
    pub fn stop(mut self) -> Vec<Series> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

impl Drop for Sampler {
    /// An abandoned sampler (a run that failed) stops its threads too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Clock ticks per second of `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A snapshot of CPU time: a process's (utime + stime) and the machine's busy time, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub process: u64,
    pub machine_busy: u64,
}

impl Cpu {
    /// Read the CPU times now; `pid` is the netd process, if any.
    pub fn read(pid: Option<u32>) -> Cpu {
        let process = pid
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .and_then(|s| {
                // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
                let rest = s.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        let machine_busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?;
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal: busy = all − idle − iowait.
                let total: u64 = v.iter().take(8).sum();
                Some(total - v.get(3)? - v.get(4)?)
            })
            .unwrap_or(0);
        Cpu {
            process,
            machine_busy,
        }
    }

    /// Return (process, machine) CPU seconds between `self` and a later `end`.
    pub fn seconds_until(&self, end: &Cpu, ticks: f64) -> (f64, f64) {
        (
            (end.process.saturating_sub(self.process)) as f64 / ticks,
            (end.machine_busy.saturating_sub(self.machine_busy)) as f64 / ticks,
        )
    }
}

/// Return a `/proc/PID/status` field in kB (e.g. `VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Return the `p`-quantile (0..=1, nearest rank) of `v`.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the first value whose rank (1-based) reaches p × n.
    let n = s.len() as f64;
    let i = (0..s.len())
        .find(|&i| (i + 1) as f64 >= p * n)
        .unwrap_or(s.len() - 1);
    s[i]
}
