//! A test bed: the same topology built twice, by netd and by the kernel, side by side.
//!
//! Both stay up for a whole scenario so runs can alternate (netd, kernel, netd, kernel…)
//! without rebuilding; an idle netd costs nothing while the kernel side runs, and the kernel
//! side's HTB flavour and offloads are switched between runs ([`Bed::prepare`]). Dropping the
//! bed stops netd and deletes both sides' namespaces.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::Ctx;
use crate::iperf::{Client, IperfResult, IperfServer, Load, settle};
use crate::kernel_side::KernelBed;
use crate::measure::{Sampler, Series};
use crate::netd_side::NetdBed;
use crate::peers::{Peer, PeerBed};
use crate::proc::sleep;
use crate::report::Side;
use crate::topo::BenchTopo;

/// Both sides of one topology.
pub struct Bed {
    pub topo: BenchTopo,
    pub netd: NetdBed,
    pub kernel: KernelBed,
    /// Peer switches brought up with [`Bed::add_peers`] (throughput only).
    pub peers: Vec<PeerBed>,
    /// A second netd started with `--datapath-priority normal` (`{prefix}m-*`), brought up
    /// with [`Bed::add_netd_normal`] (throughput only).
    pub netd_normal: Option<NetdBed>,
    /// A third netd started with `--datapath-threads` (`{prefix}t-*`), brought up with
    /// [`Bed::add_netd_threads`] (throughput only).
    pub netd_threads: Option<NetdBed>,
}

impl Bed {
    /// Bring `topo` up with netd (`{prefix}n-*`) and with kernel tools (`{prefix}k-*`).
    pub fn up(ctx: &Ctx, topo: &BenchTopo) -> Result<Bed> {
        topo.validate()?;
        let netd = NetdBed::up(topo, &format!("{}n", ctx.prefix), &ctx.tmp, &ctx.netd_args)?;
        let kernel = KernelBed::up(topo, &ctx.prefix, &format!("{}k", ctx.prefix))?;
        let bed = Bed {
            topo: topo.clone(),
            netd,
            kernel,
            peers: Vec::new(),
            netd_normal: None,
            netd_threads: None,
        };
        if ctx.ecn {
            bed.ask_for_ecn()?;
        }
        Ok(bed)
    }

    /// Make every server of both sides ask for ECN on its TCP connections.
    fn ask_for_ecn(&self) -> Result<()> {
        for server in &self.topo.servers {
            for ns in [self.netd.ns(&server.name), self.kernel.ns(&server.name)] {
                let status = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, "sysctl", "-qw", "net.ipv4.tcp_ecn=1"])
                    .status()?;
                if !status.success() {
                    bail!("cannot set net.ipv4.tcp_ecn=1 in {ns}");
                }
            }
        }
        Ok(())
    }

    /// Bring up a second netd whose data path runs at normal priority, unless the first one
    /// already does; return its side (none or one).
    pub fn add_netd_normal(&mut self, ctx: &Ctx) -> Result<Vec<Side>> {
        if self.netd.realtime_priority()? == 0 {
            return Ok(Vec::new());
        }
        let mut args = ctx.netd_args.clone();
        args.push("--datapath-priority=normal".into());
        let bed = NetdBed::up(&self.topo, &format!("{}m", ctx.prefix), &ctx.tmp, &args)?;
        self.netd_normal = Some(bed);
        Ok(vec![Side::NetdNormalPriority])
    }

    /// Bring up a netd with `--datapath-threads` as `--netd-threads` asks (none for 1);
    /// return its side (none or one).
    pub fn add_netd_threads(&mut self, ctx: &Ctx) -> Result<Vec<Side>> {
        if ctx.netd_threads <= 1 {
            return Ok(Vec::new());
        }
        let mut args = ctx.netd_args.clone();
        args.push(format!("--datapath-threads={}", ctx.netd_threads));
        let bed = NetdBed::up(&self.topo, &format!("{}t", ctx.prefix), &ctx.tmp, &args)?;
        self.netd_threads = Some(bed);
        Ok(vec![Side::NetdThreads(ctx.netd_threads)])
    }

    /// Return the netd instance behind `side`, if it is a netd side.
    pub fn netd_of(&self, side: Side) -> Result<&NetdBed> {
        match side {
            Side::Netd => Ok(&self.netd),
            Side::NetdNormalPriority => self
                .netd_normal
                .as_ref()
                .context("netd at normal priority is not up"),
            Side::NetdThreads(_) => self
                .netd_threads
                .as_ref()
                .context("netd with several data-path threads is not up"),
            Side::Kernel(..) | Side::Peer(_) => bail!("{} is not netd", side.label()),
        }
    }

    /// Bring up every installed peer switch on the same topology; return their sides. A
    /// peer that is missing or fails to start is reported and left out, never fatal.
    pub fn add_peers(&mut self, ctx: &Ctx) -> Vec<Side> {
        if !ctx.peers {
            return Vec::new();
        }
        for peer in Peer::ALL {
            if !peer.installed() {
                eprintln!(
                    "  note: {} not installed (apt-get install {}): no column for it",
                    peer.label(),
                    peer.package()
                );
                continue;
            }
            match PeerBed::up(peer, &self.topo, &ctx.prefix, &ctx.tmp) {
                Ok(bed) => self.peers.push(bed),
                Err(e) => eprintln!("  warning: {} did not start: {e:#}", peer.label()),
            }
        }
        self.peers.iter().map(|p| Side::Peer(p.peer)).collect()
    }

    fn peer(&self, peer: Peer) -> Result<&PeerBed> {
        self.peers
            .iter()
            .find(|p| p.peer == peer)
            .with_context(|| format!("{} is not up", peer.label()))
    }

    /// Return the namespace of `server` on `side`.
    pub fn ns(&self, side: Side, server: &str) -> String {
        match side {
            Side::Netd | Side::NetdNormalPriority | Side::NetdThreads(_) => self
                .netd_of(side)
                .map_or_else(|_| "netd-not-up".into(), |n| n.ns(server)),
            Side::Kernel(..) => self.kernel.ns(server),
            // A peer that is not up has no namespaces: commands there fail with a clear error.
            Side::Peer(p) => self
                .peer(p)
                .map_or_else(|_| format!("{p:?}-not-up"), |b| b.ns(server)),
        }
    }

    /// Make `side` ready for a run (the kernel's HTB flavour and offloads).
    pub fn prepare(&mut self, side: Side) -> Result<()> {
        if let Side::Kernel(htb, offloads) = side {
            self.kernel.apply(htb, offloads)?;
        }
        Ok(())
    }

    /// Return the wire bytes each tenant's traffic was charged by `side`'s switch so far
    /// (netd's shaper counters, or the HTB class counters), by tenant index: the switches'
    /// own view, against which the runner cross-checks its L2 figures.
    pub fn switch_bytes(&self, side: Side) -> Result<Vec<u64>> {
        match side {
            Side::Netd | Side::NetdNormalPriority | Side::NetdThreads(_) => {
                let names: Vec<String> = self.topo.tenants.iter().map(|t| t.name.clone()).collect();
                self.netd_of(side)?.charged_bytes(&names)
            }
            Side::Kernel(..) => Ok(self.kernel.class_bytes()),
            Side::Peer(p) => bail!("{} has no per-tenant counters", p.label()),
        }
    }

    /// Return the pid whose CPU time is the switch's own (netd; none for the kernel).
    pub fn pid(&self, side: Side) -> Option<u32> {
        match side {
            Side::Netd | Side::NetdNormalPriority | Side::NetdThreads(_) => {
                self.netd_of(side).ok()?.pid()
            }
            Side::Kernel(..) => None,
            Side::Peer(p) => self.peer(p).ok().and_then(PeerBed::pid),
        }
    }
}

/// One iperf3 client in a shaping run.
#[derive(Debug, Clone)]
pub struct Flow {
    pub from: String,
    pub to: String,
    pub flows: u32,
    /// Seconds after the run's start.
    pub start: f64,
    pub secs: f64,
}

impl Flow {
    /// One TCP flow from `from` to `to`, starting `start` s into the run, lasting `secs`.
    pub fn single(from: &str, to: &str, start: f64, secs: f64) -> Flow {
        Flow {
            from: from.to_string(),
            to: to.to_string(),
            flows: 1,
            start,
            secs,
        }
    }
}

/// What a shaping run measured.
pub struct Driven {
    /// Sampled servers, in the order of `series`.
    pub servers: Vec<String>,
    pub series: Vec<Series>,
    /// One result per flow, in the order given.
    pub iperf: Vec<IperfResult>,
    /// Sampler time at which the run started (flows' `start` is relative to it).
    pub t0: f64,
    /// Sampler time at which each [`Action`] began, in the order given.
    pub marks: Vec<f64>,
}

/// Something done during a run (a live rate change), `at` seconds after its start, after
/// every flow has started.
pub struct Action<'a> {
    pub at: f64,
    pub run: Box<dyn FnMut() -> Result<()> + 'a>,
}

impl Driven {
    /// Return the series of these servers.
    pub fn of(&self, servers: &[String]) -> Vec<&Series> {
        self.servers
            .iter()
            .zip(&self.series)
            .filter(|(s, _)| servers.contains(s))
            .map(|(_, series)| series)
            .collect()
    }

    /// Return tenant `k`'s L2 rate (bits/s) over `[a, b]` (sampler time).
    pub fn tenant_rate(&self, topo: &BenchTopo, k: usize, a: f64, b: f64) -> f64 {
        crate::measure::rate(&self.of(&topo.servers_of(k)), a, b)
    }

    /// Return tenant `k`'s rate in Mbit/s in `bin`-second bins from `t0` (for plots).
    pub fn tenant_curve(&self, topo: &BenchTopo, k: usize, bin: f64) -> Vec<(f64, f64)> {
        let series = self.of(&topo.servers_of(k));
        let end = series
            .iter()
            .filter_map(|s| s.t.last().copied())
            .fold(self.t0, f64::max);
        let mut out = Vec::new();
        let mut t = self.t0;
        while t + bin <= end {
            out.push((
                t + bin / 2.0 - self.t0,
                crate::measure::rate(&series, t, t + bin) / 1e6,
            ));
            t += bin;
        }
        out
    }
}

/// Run `flows` on `side` of `bed`, sampling the `sample` servers' counters every `interval`
/// and doing `actions` at their times while the flows run.
pub fn drive(
    ctx: &Ctx,
    bed: &Bed,
    side: Side,
    flows: &[Flow],
    sample: &[String],
    interval: Duration,
    mut actions: Vec<Action<'_>>,
) -> Result<Driven> {
    let mut servers = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        servers.push(IperfServer::start(&bed.ns(side, &f.to), port(i))?);
    }
    settle()?;
    let namespaces: Vec<String> = sample.iter().map(|s| bed.ns(side, s)).collect();
    let sampler = Sampler::start(&namespaces, interval);
    // Let every sampler thread take its first sample before traffic starts.
    sleep(Duration::from_millis(50))?;
    let t0 = sampler.now();
    let mut order: Vec<usize> = (0..flows.len()).collect();
    order.sort_by(|&a, &b| flows[a].start.total_cmp(&flows[b].start));
    let mut clients: Vec<Option<Client>> = (0..flows.len()).map(|_| None).collect();
    for i in order {
        let f = &flows[i];
        let wait = t0 + f.start - sampler.now();
        if wait > 0.0 {
            sleep(Duration::from_secs_f64(wait))?;
        }
        let load = Load {
            secs: f.secs,
            flows: f.flows,
            udp_len: None,
            cc: ctx.cc.clone(),
        };
        clients[i] = Some(Client::start(
            &bed.ns(side, &f.from),
            &bed.topo.addr(&f.to)?,
            port(i),
            &load,
        )?);
    }
    let mut marks = Vec::with_capacity(actions.len());
    for action in &mut actions {
        let wait = t0 + action.at - sampler.now();
        if wait > 0.0 {
            sleep(Duration::from_secs_f64(wait))?;
        }
        marks.push(sampler.now());
        (action.run)()?;
    }
    let mut iperf = Vec::new();
    for c in clients.into_iter().flatten() {
        iperf.push(c.finish()?);
    }
    sleep(Duration::from_millis(100))?;
    let series = sampler.stop();
    drop(servers);
    Ok(Driven {
        servers: sample.to_vec(),
        series,
        iperf,
        t0,
        marks,
    })
}

/// Return the iperf3 port of the `i`th flow of a run.
pub fn port(i: usize) -> u16 {
    5201 + u16::try_from(i).unwrap_or(0)
}
