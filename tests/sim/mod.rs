//! A deterministic simulator for the shaper: a simulated clock, seeded sources, 1 ms bins.
//!
//! Sources are greedy (closed loop: keep `depth` frames queued, like a sender with a window)
//! or open loop (CBR or Poisson at a given rate, over-entitlement frames are dropped by the
//! queue bounds). The clock jumps to the next event: a source's arrival or the shaper's
//! `next_release()`. Every offered item is tracked until it comes back exactly once.
//!
//! Bounded by construction: the clock never passes [`Sim::horizon`] (default
//! [`DEFAULT_HORIZON`]); an event after it panics with the time it wanted instead of growing
//! the 1 ms bins towards it, so a run's memory is at most `horizon / 1 ms` bins per source.

#![allow(dead_code)] // each test binary uses a different part of the harness
#![allow(clippy::cast_possible_truncation)] // indices, bins and times of a short simulation

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use netd::shaper::{Admit, Nanos, PortConfig, Shaper, ShaperConfig, TenantConfig};
use netd::topology::{PortId, Rate, TenantId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub const MS: Nanos = 1_000_000;
pub const SEC: Nanos = 1_000_000_000;
/// How far a simulation may run: far beyond any scenario (the longest runs 12 s) and any
/// frame's wait at [`netd::topology::MIN_RATE`] (~1.6 s), yet only 60 000 bins per source.
pub const DEFAULT_HORIZON: Nanos = 60 * SEC;

pub fn mbit(n: u64) -> Rate {
    Rate::from_bits_per_sec(n * 1_000_000)
}

pub fn gbit(n: u64) -> Rate {
    Rate::from_bits_per_sec(n * 1_000_000_000)
}

/// A tenant config without ports.
pub fn tenant(id: u32, guaranteed: Rate, ceiling: Rate, weight: u32) -> TenantConfig {
    TenantConfig {
        id: TenantId(id),
        guaranteed,
        ceiling,
        weight,
        ports: Vec::new(),
    }
}

/// A port config.
pub fn port(id: u32, guaranteed: Option<Rate>, ceiling: Option<Rate>) -> PortConfig {
    PortConfig {
        id: PortId(id),
        guaranteed,
        ceiling,
    }
}

/// How much a source offers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Demand {
    /// Closed loop: keep this many frames queued (infinite demand).
    Greedy(u32),
    /// Constant bit rate (bits/s).
    Cbr(u64),
    /// Poisson arrivals at this mean rate (bits/s).
    Poisson(u64),
}

/// Frame sizes of a source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    Fixed(u32),
    /// Uniform in `[lo, hi]`.
    Uniform(u32, u32),
}

/// One traffic source.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub tenant: u32,
    pub port: u32,
    pub size: Size,
    pub demand: Demand,
    /// Intervals `[from, to)` in which the source is on.
    pub on: Vec<(Nanos, Nanos)>,
}

impl Source {
    /// A source on for the whole run.
    pub fn new(tenant: u32, port: u32, size: Size, demand: Demand) -> Source {
        Source {
            tenant,
            port,
            size,
            demand,
            on: vec![(0, Nanos::MAX)],
        }
    }

    /// The same source, on only within `on`.
    pub fn during(mut self, on: Vec<(Nanos, Nanos)>) -> Source {
        self.on = on;
        self
    }

    fn active(&self, now: Nanos) -> bool {
        self.on.iter().any(|&(a, b)| a <= now && now < b)
    }

    /// The first on-time ≥ `t`, if any.
    fn next_on(&self, t: Nanos) -> Option<Nanos> {
        self.on
            .iter()
            .filter(|&&(_, b)| t < b)
            .map(|&(a, _)| a.max(t))
            .min()
    }
}

/// What the shaper queues: enough to check that it comes back once and when.
#[derive(Debug)]
pub struct Item {
    pub source: u32,
    pub bytes: u32,
    pub born: Nanos,
    pub seq: u64,
}

#[derive(Debug, Default, Clone)]
struct SourceState {
    outstanding: u32,
    blocked: bool,
    /// Fractional arrival clock for open-loop sources.
    clock: f64,
}

/// The simulation.
pub struct Sim {
    pub shaper: Shaper<Item>,
    pub config: ShaperConfig,
    pub sources: Vec<Source>,
    state: Vec<SourceState>,
    heap: BinaryHeap<Reverse<(Nanos, u32)>>,
    rng: ChaCha20Rng,
    pub now: Nanos,
    /// Bytes sent per source per 1 ms bin.
    pub bins: Vec<Vec<u64>>,
    /// Bytes offered per source per 1 ms bin.
    pub offered_bins: Vec<Vec<u64>>,
    pub offered: u64,
    pub sent: u64,
    pub dropped: u64,
    pub evicted: u64,
    /// `seen[seq]`: the item came back (sent, dropped or evicted).
    seen: Vec<bool>,
    /// Queueing delay of each sent item, per source (if recorded).
    pub delays: Vec<Vec<Nanos>>,
    pub record_delays: bool,
    /// Check `is_valid()` after every step (slow: for property tests).
    pub check_every_step: bool,
    /// The clock never passes this: an event later than it panics.
    pub horizon: Nanos,
    released: Vec<Item>,
    refill: Vec<u32>,
}

impl Sim {
    /// Build a simulation starting at time 0.
    pub fn new(config: ShaperConfig, sources: Vec<Source>, seed: u64) -> Sim {
        let n = sources.len();
        let mut sim = Sim {
            shaper: Shaper::new(config.clone(), 0),
            config,
            state: vec![SourceState::default(); n],
            heap: BinaryHeap::new(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            now: 0,
            bins: vec![Vec::new(); n],
            offered_bins: vec![Vec::new(); n],
            offered: 0,
            sent: 0,
            dropped: 0,
            evicted: 0,
            seen: Vec::new(),
            delays: vec![Vec::new(); n],
            record_delays: false,
            check_every_step: false,
            horizon: DEFAULT_HORIZON,
            released: Vec::new(),
            refill: Vec::new(),
            sources,
        };
        for s in 0..n {
            if let Some(at) = sim.sources[s].next_on(0) {
                sim.state[s].clock = at as f64;
                sim.heap.push(Reverse((at, s as u32)));
            }
        }
        sim
    }

    fn frame_bytes(&mut self, s: usize) -> u32 {
        match self.sources[s].size {
            Size::Fixed(b) => b,
            Size::Uniform(lo, hi) => self.rng.random_range(lo..=hi),
        }
    }

    fn record(&mut self, item: Item) {
        let s = item.source as usize;
        add_to_bin(&mut self.bins[s], self.now, item.bytes);
        if self.record_delays {
            self.delays[s].push(self.now - item.born);
        }
        self.sent += 1;
        self.mark(&item);
    }

    fn mark(&mut self, item: &Item) {
        let seen = &mut self.seen[item.seq as usize];
        assert!(!*seen, "item {} came back twice", item.seq);
        *seen = true;
    }

    /// Offer one frame of source `s`; return false when it was dropped.
    fn offer(&mut self, s: usize) -> bool {
        let bytes = self.frame_bytes(s);
        add_to_bin(&mut self.offered_bins[s], self.now, bytes);
        let src = &self.sources[s];
        let item = Item {
            source: s as u32,
            bytes,
            born: self.now,
            seq: self.offered,
        };
        self.offered += 1;
        self.seen.push(false);
        let (tenant, port) = (TenantId(src.tenant), PortId(src.port));
        match self.shaper.offer(self.now, tenant, port, bytes, item) {
            Admit::Send(item) => {
                self.record(item);
                true
            }
            Admit::Queued => {
                self.state[s].outstanding += 1;
                true
            }
            Admit::Dropped(item) => {
                self.dropped += 1;
                self.mark(&item);
                false
            }
        }
    }

    /// Greedy source: offer until `depth` frames wait (or one is dropped).
    fn fill(&mut self, s: usize) {
        let Demand::Greedy(depth) = self.sources[s].demand else {
            return;
        };
        if !self.sources[s].active(self.now) {
            return;
        }
        // Bound the frames offered at one instant (a huge burst sends many at once).
        for _ in 0..100_000 {
            if self.state[s].outstanding >= depth || self.state[s].blocked {
                return;
            }
            if !self.offer(s) {
                self.state[s].blocked = true;
            }
        }
        panic!("greedy source {s} never queued");
    }

    /// An arrival (open loop) or a switch-on (greedy) of source `s`.
    fn fire(&mut self, s: usize) {
        match self.sources[s].demand {
            Demand::Greedy(_) => {
                self.state[s].blocked = false;
                self.fill(s);
                // Wake again at the next on-interval start.
                let end = self.sources[s]
                    .on
                    .iter()
                    .find(|&&(a, b)| a <= self.now && self.now < b)
                    .map(|&(_, b)| b);
                if let Some(next) = end.and_then(|b| self.sources[s].next_on(b)) {
                    self.heap.push(Reverse((next, s as u32)));
                }
            }
            Demand::Cbr(bps) | Demand::Poisson(bps) => {
                if self.sources[s].active(self.now) {
                    self.offer(s);
                }
                let mean = f64::from(self.frame_mean(s)) * 8e9 / bps as f64;
                let gap = if matches!(self.sources[s].demand, Demand::Poisson(_)) {
                    let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
                    -u.ln() * mean
                } else {
                    mean
                };
                let st = &mut self.state[s];
                st.clock = st.clock.max(self.now as f64) + gap;
                let t = st.clock.ceil() as Nanos;
                if let Some(next) = self.sources[s].next_on(t) {
                    if next > t {
                        self.state[s].clock = next as f64;
                    }
                    self.heap.push(Reverse((next.max(self.now), s as u32)));
                }
            }
        }
    }

    fn frame_mean(&self, s: usize) -> u32 {
        match self.sources[s].size {
            Size::Fixed(b) => b,
            Size::Uniform(lo, hi) => lo / 2 + hi / 2,
        }
    }

    /// Run the clock up to `end` (events at `end` are not processed).
    pub fn run_until(&mut self, end: Nanos) {
        loop {
            let next_src = self.heap.peek().map(|Reverse((t, _))| *t);
            let next_rel = self.shaper.next_release();
            let Some(t) = [next_src, next_rel].into_iter().flatten().min() else {
                break;
            };
            if t >= end {
                break;
            }
            self.advance_to(t);
            self.step();
        }
        self.advance_to(end);
    }

    /// Move the clock to `t` (never back), refusing to pass the horizon.
    fn advance_to(&mut self, t: Nanos) {
        assert!(
            t <= self.horizon,
            "simulated time would pass the horizon: {t} ns > {} ns (a frame held that long?)",
            self.horizon
        );
        self.now = self.now.max(t);
    }

    fn step(&mut self) {
        while let Some(&Reverse((t, s))) = self.heap.peek() {
            if t > self.now {
                break;
            }
            self.heap.pop();
            self.fire(s as usize);
        }
        let mut released = std::mem::take(&mut self.released);
        self.shaper.release(self.now, |item| released.push(item));
        let mut refill = std::mem::take(&mut self.refill);
        for item in released.drain(..) {
            let s = item.source as usize;
            self.state[s].outstanding -= 1;
            self.state[s].blocked = false;
            refill.push(item.source);
            self.record(item);
        }
        refill.sort_unstable();
        refill.dedup();
        for s in refill.drain(..) {
            self.fill(s as usize);
        }
        self.released = released;
        self.refill = refill;
        if self.check_every_step {
            assert!(self.shaper.is_valid(), "invalid at {}", self.now);
        }
    }

    /// Swap the configuration now; count the evicted items.
    pub fn reconfigure(&mut self, config: ShaperConfig) {
        let evicted = self.shaper.reconfigure(config.clone(), self.now);
        for item in evicted {
            self.state[item.source as usize].outstanding -= 1;
            self.evicted += 1;
            self.mark(&item);
        }
        self.config = config;
        assert!(self.shaper.is_valid());
    }

    /// Switch source `s` off for good.
    pub fn stop_source(&mut self, s: usize) {
        self.sources[s].on.clear();
    }

    /// The ideal per tenant and per source for the sources on at `from`, taking as demand
    /// of open-loop sources what they actually offered in `[from, to)` (a Poisson source's
    /// 1 s mean strays from its nominal rate by ~1/√frames).
    pub fn ideal_measured(&self, from: Nanos, to: Nanos) -> (Vec<f64>, Vec<f64>) {
        let sources = with_measured_demand(&self.sources, from, to, |s| {
            sum_bins(&self.offered_bins[s], from, to)
        });
        ideal(&self.config, &sources, from)
    }

    /// Bytes source `s` offered in bins `[from, to)`.
    pub fn offered_bytes(&self, s: usize, from: Nanos, to: Nanos) -> u64 {
        sum_bins(&self.offered_bins[s], from, to)
    }

    /// Stop every source and release what is queued; then check nothing was lost.
    pub fn drain(&mut self) {
        self.heap.clear();
        for s in &mut self.sources {
            s.on.clear();
        }
        while let Some(t) = self.shaper.next_release() {
            assert!(t < Nanos::MAX, "queued frames can never leave");
            self.advance_to(t);
            self.step();
        }
        assert!(self.shaper.is_valid());
        assert_eq!(self.offered, self.sent + self.dropped + self.evicted);
        assert!(self.seen.iter().all(|&s| s), "an item never came back");
    }

    /// Bytes sent by source `s` in bins `[from, to)` (times in ns, multiples of 1 ms).
    pub fn source_bytes(&self, s: usize, from: Nanos, to: Nanos) -> u64 {
        sum_bins(&self.bins[s], from, to)
    }

    /// Bytes sent by tenant `t` in `[from, to)`.
    pub fn tenant_bytes(&self, t: u32, from: Nanos, to: Nanos) -> u64 {
        (0..self.sources.len())
            .filter(|&s| self.sources[s].tenant == t)
            .map(|s| self.source_bytes(s, from, to))
            .sum()
    }

    /// Rate of tenant `t` in `[from, to)`, bits/s.
    pub fn tenant_rate(&self, t: u32, from: Nanos, to: Nanos) -> f64 {
        self.tenant_bytes(t, from, to) as f64 * 8e9 / (to - from) as f64
    }

    /// Rate of source `s` in `[from, to)`, bits/s.
    pub fn source_rate(&self, s: usize, from: Nanos, to: Nanos) -> f64 {
        self.source_bytes(s, from, to) as f64 * 8e9 / (to - from) as f64
    }
}

fn add_to_bin(bins: &mut Vec<u64>, now: Nanos, bytes: u32) {
    let bin = (now / MS) as usize;
    if bins.len() <= bin {
        bins.resize(bin + 1, 0);
    }
    bins[bin] += u64::from(bytes);
}

fn sum_bins(bins: &[u64], from: Nanos, to: Nanos) -> u64 {
    let (a, b) = ((from / MS) as usize, (to / MS) as usize);
    bins[a.min(bins.len())..b.min(bins.len())].iter().sum()
}

/// The ideal entitlement: `min(d, g)` first, then the spare water-filled by weight, each
/// capped at `min(d, c)`. Rates in bits/s as f64; `(g, c, w, d)` per claimant.
pub fn water_fill(capacity: f64, claims: &[(f64, f64, f64, f64)]) -> Vec<f64> {
    let mut share: Vec<f64> = claims.iter().map(|&(g, _, _, d)| d.min(g)).collect();
    let mut spare = capacity - share.iter().sum::<f64>();
    let mut open: Vec<usize> = (0..claims.len())
        .filter(|&i| claims[i].3.min(claims[i].1) > share[i])
        .collect();
    while spare > 1e-9 && !open.is_empty() {
        let weights: f64 = open.iter().map(|&i| claims[i].2).sum();
        let level = spare / weights;
        let capped: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| claims[i].3.min(claims[i].1) - share[i] <= level * claims[i].2)
            .collect();
        if capped.is_empty() {
            for &i in &open {
                share[i] += level * claims[i].2;
            }
            break;
        }
        for &i in &capped {
            let room = claims[i].3.min(claims[i].1) - share[i];
            share[i] += room;
            spare -= room;
        }
        open.retain(|i| !capped.contains(i));
    }
    share
}

/// Demand of each source in bits/s (greedy = infinite), summed per tenant/port by the caller.
pub fn demand_of(source: &Source) -> f64 {
    match source.demand {
        Demand::Greedy(_) => f64::INFINITY,
        Demand::Cbr(b) | Demand::Poisson(b) => b as f64,
    }
}

/// The two-level ideal: per tenant, then per port inside (ports listed in the config get
/// their own rates, the others share the default lane as one claimant). Returns per-tenant
/// rates and per-source rates (sources of one port split that port's rate by demand
/// water-filling with equal weights).
pub fn ideal(config: &ShaperConfig, sources: &[Source], now: Nanos) -> (Vec<f64>, Vec<f64>) {
    let cap = config.capacity.bits_per_sec() as f64;
    let active: Vec<bool> = sources.iter().map(|s| s.active(now)).collect();
    // Lanes: (tenant index, port id or None for the default lane).
    let lane_of = |t: &TenantConfig, port: u32| t.ports.iter().position(|p| p.id == PortId(port));
    let mut tenant_claims = Vec::new();
    let mut lane_claims: Vec<Vec<(f64, f64, f64, f64)>> = Vec::new();
    for t in &config.tenants {
        let g = (t.guaranteed.bits_per_sec() as f64).min(cap);
        let c = (t.ceiling.bits_per_sec() as f64).min(cap).max(g);
        let mut lanes = vec![(0.0, f64::INFINITY, 1.0, 0.0)];
        for p in &t.ports {
            lanes.push((
                p.guaranteed.map_or(0.0, |r| r.bits_per_sec() as f64),
                p.ceiling.map_or(f64::INFINITY, |r| r.bits_per_sec() as f64),
                1.0,
                0.0,
            ));
        }
        for (s, src) in sources.iter().enumerate() {
            if src.tenant == t.id.0 && active[s] {
                let lane = lane_of(t, src.port).map_or(0, |i| i + 1);
                lanes[lane].3 += demand_of(src);
            }
        }
        let d: f64 = lanes.iter().map(|l| l.3.min(l.1)).sum();
        tenant_claims.push((g, c, f64::from(t.weight.max(1)), d));
        lane_claims.push(lanes);
    }
    let tenants = water_fill(cap, &tenant_claims);
    let mut per_source = vec![0.0; sources.len()];
    for (ti, t) in config.tenants.iter().enumerate() {
        let lanes = water_fill(tenants[ti], &lane_claims[ti]);
        for (li, &lane_rate) in lanes.iter().enumerate() {
            let members: Vec<usize> = (0..sources.len())
                .filter(|&s| {
                    sources[s].tenant == t.id.0
                        && active[s]
                        && lane_of(t, sources[s].port).map_or(0, |i| i + 1) == li
                })
                .collect();
            let claims: Vec<_> = members
                .iter()
                .map(|&s| (0.0, f64::INFINITY, 1.0, demand_of(&sources[s])))
                .collect();
            let split = water_fill(lane_rate, &claims);
            for (k, &s) in members.iter().enumerate() {
                per_source[s] = split[k];
            }
        }
    }
    (tenants, per_source)
}

/// `sources` with each open-loop one's demand taken as what it offered in `[from, to)`,
/// `offered(source index)` bytes (a Poisson source's 1 s mean strays from its nominal rate
/// by ~1/√frames).
pub fn with_measured_demand(
    sources: &[Source],
    from: Nanos,
    to: Nanos,
    offered: impl Fn(usize) -> u64,
) -> Vec<Source> {
    let mut sources = sources.to_vec();
    for (s, src) in sources.iter_mut().enumerate() {
        if let Demand::Cbr(_) | Demand::Poisson(_) = src.demand {
            let bits_per_sec = offered(s) as f64 * 8e9 / (to - from) as f64;
            src.demand = Demand::Cbr(bits_per_sec as u64);
        }
    }
    sources
}

/// Check every tenant's rate, `rate_of(tenant id)`, against `want` (in the config's tenant
/// order) within `tol` percent, and the work conservation (≥ 99%) when the ideal fills the
/// capacity; print each figure and return the worst error.
pub fn check_against_ideal(
    name: &str,
    config: &ShaperConfig,
    want: &[f64],
    rate_of: impl Fn(u32) -> f64,
    tol: f64,
) -> f64 {
    let mut worst: f64 = 0.0;
    let mut total = 0.0;
    for (i, t) in config.tenants.iter().enumerate() {
        let got = rate_of(t.id.0);
        total += got;
        let err = error_pct(got, want[i]);
        println!(
            "{name}: tenant {:>3} ideal {:>14.0} got {:>14.0} bit/s  err {err:.3}%",
            t.id.0, want[i], got
        );
        worst = worst.max(err);
        assert!(
            err <= tol,
            "{name}: tenant {} got {got:.0} bit/s, ideal {:.0} ({err:.3}% > {tol}%)",
            t.id.0,
            want[i]
        );
    }
    let cap = config.capacity.bits_per_sec() as f64;
    if want.iter().sum::<f64>() >= cap * 0.999 {
        let conservation = total / cap * 100.0;
        println!("{name}: work conservation {conservation:.3}%");
        assert!(
            conservation >= 99.0,
            "{name}: work conservation {conservation:.2}%"
        );
    }
    println!("{name}: worst error {worst:.3}%");
    worst
}

/// Relative error of `achieved` against `ideal`, in percent.
pub fn error_pct(achieved: f64, ideal: f64) -> f64 {
    if ideal == 0.0 {
        if achieved == 0.0 { 0.0 } else { 100.0 }
    } else {
        (achieved - ideal).abs() / ideal * 100.0
    }
}
