//! The shaper past one core, simulated: N data-path threads, each with its own shaper over
//! its shard of the ports, and the `Splitter` re-dividing every tenant's rates among them
//! every 1 ms epoch from the threads' counters (the design in README "Past one core").
//!
//! Each thread is one deterministic `Sim` on the same clock; sources are sharded by port
//! (port `p` on thread `p mod N`). Every scenario runs with 8 and 16 threads and checks each
//! tenant's aggregate over all threads against the single-shaper ideal (`sim::ideal`) within
//! 1%, and work conservation ≥ 99%, as `shaper_sim` does for one thread. Figures are printed
//! (`cargo test --release --test shaper_threads -- --nocapture`).

#![allow(clippy::cast_possible_truncation)] // ports and seeds of a short simulation

mod sim;

use netd::shaper::split::{DEFAULT_EPOCH, Splitter};
use netd::shaper::{BurstConfig, Nanos, QueueLimits, ShaperConfig, TenantConfig};
use sim::{
    Demand, MS, SEC, Sim, Size, Source, check_against_ideal, gbit, ideal, mbit, tenant,
    with_measured_demand,
};

const FRAME: Size = Size::Fixed(1500);
const WARMUP: Nanos = 100 * MS;
const WINDOW: Nanos = 500 * MS;

fn config(capacity_gbit: u64, tenants: Vec<TenantConfig>) -> ShaperConfig {
    ShaperConfig {
        capacity: gbit(capacity_gbit),
        tenants,
        queue: QueueLimits::default(),
        burst: BurstConfig::default(),
    }
}

/// N threads, one `Sim` each, kept in step epoch by epoch.
struct Threads {
    global: ShaperConfig,
    sources: Vec<Source>,
    splitter: Splitter,
    sims: Vec<Sim>,
    /// Source index → (thread, index in that thread's sim).
    place: Vec<(usize, usize)>,
    now: Nanos,
}

impl Threads {
    fn new(global: ShaperConfig, sources: Vec<Source>, threads: usize, seed: u64) -> Threads {
        let mut splitter = Splitter::new(global.clone(), threads, DEFAULT_EPOCH);
        let mut shards: Vec<Vec<Source>> = vec![Vec::new(); threads];
        let mut place = Vec::new();
        for s in &sources {
            let k = s.port as usize % threads;
            place.push((k, shards[k].len()));
            shards[k].push(s.clone());
        }
        let sims = splitter
            .initial()
            .into_iter()
            .zip(shards)
            .enumerate()
            .map(|(k, (cfg, shard))| Sim::new(cfg, shard, seed * 1000 + k as u64))
            .collect();
        Threads {
            global,
            sources,
            splitter,
            sims,
            place,
            now: 0,
        }
    }

    /// Run every thread to `end`, re-splitting the rates at every epoch boundary.
    fn run_until(&mut self, end: Nanos) {
        while self.now < end {
            self.now = (self.now + DEFAULT_EPOCH).min(end);
            for sim in &mut self.sims {
                sim.run_until(self.now);
            }
            if self.now.is_multiple_of(DEFAULT_EPOCH) {
                let counters: Vec<Vec<_>> = self
                    .sims
                    .iter()
                    .map(|sim| {
                        let ids = self.global.tenants.iter().map(|t| t.id);
                        ids.map(|id| sim.shaper.counters(id)).collect()
                    })
                    .collect();
                let configs = self.splitter.split(&counters);
                for (sim, cfg) in self.sims.iter_mut().zip(configs) {
                    sim.reconfigure(cfg);
                }
            }
        }
    }

    fn tenant_rate(&self, t: u32, from: Nanos, to: Nanos) -> f64 {
        self.sims.iter().map(|s| s.tenant_rate(t, from, to)).sum()
    }

    /// Check every tenant's aggregate over `[from, to)` against the single-shaper ideal
    /// (open-loop sources taken at what they offered) within `tol` percent.
    fn check(&self, name: &str, from: Nanos, to: Nanos, tol: f64) -> f64 {
        let sources = with_measured_demand(&self.sources, from, to, |s| {
            let (k, i) = self.place[s];
            self.sims[k].offered_bytes(i, from, to)
        });
        let want = ideal(&self.global, &sources, from).0;
        let name = format!("{name}, {} threads", self.sims.len());
        let rate_of = |t| self.tenant_rate(t, from, to);
        check_against_ideal(&name, &self.global, &want, rate_of, tol)
    }

    fn drain(&mut self) {
        for sim in &mut self.sims {
            sim.drain();
        }
    }
}

/// One source per listed thread: port `tenant × total + k` lands on thread `k`.
fn on_threads(tenant: u32, threads: &[usize], total: usize, demand: Demand) -> Vec<Source> {
    threads
        .iter()
        .map(|&k| {
            let port = tenant as usize * total + k;
            Source::new(tenant, port as u32, FRAME, demand)
        })
        .collect()
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Every tenant greedy on every thread: guarantees first, then the spare by weight.
#[test]
fn spread_tenants_get_guarantees_then_weights() {
    for n in [8, 16] {
        let cfg = config(
            1,
            vec![
                tenant(0, mbit(300), gbit(1), 1),
                tenant(1, mbit(200), gbit(1), 1),
                tenant(2, mbit(100), gbit(1), 2),
                tenant(3, mbit(50), gbit(1), 1),
            ],
        );
        let sources = (0..4)
            .flat_map(|t| on_threads(t, &all(n), n, Demand::Greedy(4)))
            .collect();
        let mut threads = Threads::new(cfg, sources, n, 1);
        threads.run_until(WARMUP + WINDOW);
        threads.check("spread", WARMUP, WARMUP + WINDOW, 1.0);
        threads.drain();
    }
}

/// Tenants on different numbers of threads: one flow on one thread, one on every thread, one
/// light (CBR under its guarantee) on three threads, one at its ceiling on two threads.
#[test]
fn skewed_tenants_keep_their_entitlement() {
    for n in [8, 16] {
        let cfg = config(
            1,
            vec![
                tenant(0, mbit(200), gbit(1), 1),
                tenant(1, mbit(200), gbit(1), 1),
                tenant(2, mbit(100), gbit(1), 1),
                tenant(3, mbit(50), mbit(150), 4),
            ],
        );
        let mut sources = on_threads(0, &[0], n, Demand::Greedy(4));
        sources.extend(on_threads(1, &all(n), n, Demand::Greedy(4)));
        sources.extend(on_threads(2, &[1, 2, 3], n, Demand::Cbr(26_000_000)));
        sources.extend(on_threads(3, &[4, 5], n, Demand::Greedy(4)));
        let mut threads = Threads::new(cfg, sources, n, 2);
        threads.run_until(WARMUP + WINDOW);
        threads.check("skewed", WARMUP, WARMUP + WINDOW, 1.0);
        threads.drain();
    }
}

/// A tenant that was idle wakes on two threads: the new split holds within a few epochs.
#[test]
fn a_waking_tenant_gets_its_share_within_epochs() {
    const WAKE: Nanos = 300 * MS;
    for n in [8, 16] {
        let cfg = config(
            1,
            vec![
                tenant(0, mbit(400), gbit(1), 1),
                tenant(1, mbit(100), gbit(1), 1),
            ],
        );
        let mut sources: Vec<Source> = on_threads(0, &[2, 5], n, Demand::Greedy(4))
            .into_iter()
            .map(|s| s.during(vec![(WAKE, SEC)]))
            .collect();
        sources.extend(on_threads(1, &all(n), n, Demand::Greedy(4)));
        let mut threads = Threads::new(cfg, sources, n, 3);
        threads.run_until(WAKE + 400 * MS);
        threads.check("before wake", WARMUP, WAKE, 1.0);
        threads.check("after wake", WAKE + 100 * MS, WAKE + 400 * MS, 1.0);
        // From the wake on, in 1 ms steps: the first ms after which every 2 ms window of
        // the waking tenant stays within 5% (plus one frame) of its new ideal: 400 + 250.
        let want = 650e6 * 2e-3 / 8.0;
        let ok = |k: u64| {
            let from = WAKE + k * MS;
            let bytes = threads.tenant_rate(0, from, from + 2 * MS) * 2e-3 / 8.0;
            (bytes - want).abs() <= want * 0.05 + 1500.0
        };
        let settle = (0..100).rev().take_while(|&k| ok(k)).last().unwrap_or(100);
        println!("wake, {n} threads: tenant 0 at its new share {settle} ms after waking");
        assert!(settle <= 5, "{n} threads: settled after {settle} ms");
        threads.drain();
    }
}
