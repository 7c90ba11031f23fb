//! Past one core: one shaper per data-path thread, the host's rates split among them.
//!
//! On a host with many cores, one data-path thread is the ceiling. The design (README, "Past
//! one core") gives each thread a shard of the ports (or one queue of every multi-queue TAP)
//! and its **own** [`Shaper`]: the per-frame path then touches only that thread's state, with
//! no lock and no shared atomic. What must stay global is the promise to each tenant: its
//! guarantee, its weight in the spare and its ceiling hold for the tenant as a whole,
//! wherever its frames happen to be handled.
//!
//! That is this module. Every epoch (1 ms), each thread publishes a snapshot of its
//! per-tenant counters; the [`Splitter`] reads them and gives every thread its slice of each
//! tenant's rates:
//! 1. Each (tenant, thread) pair's demand is its sent rate over the last epoch, plus
//!    [`HEADROOM`], or unbounded when it was *hungry* (frames queued or dropped).
//! 2. The tenants' entitlements are water-filled over the whole capacity from those demands,
//!    exactly as one shaper would share it ([`water_fill`]).
//! 3. Each tenant's entitlement is water-filled among its threads with equal weights: a
//!    thread that needs less keeps what it uses, the hungry ones share the rest.
//! 4. Each thread's config carries, per tenant, that slice as its ceiling (plus a share of
//!    the unclaimed capacity), the guarantee in use in proportion and the unused guarantee
//!    equally, and the thread's capacity is the sum of its slices. The buckets' burst floor
//!    is divided among the threads, so the host as a whole banks what one shaper would.
//!
//! This is the per-core token cache of EyeQ and Carousel in rate form: each thread spends
//! from its own buckets, refilled at the rate the global allocation gives it. Tokens cannot
//! be lent between threads faster than one epoch, which is the cost: a tenant waking on a
//! thread where it was idle starts from that thread's slice (at least its guarantee shared
//! equally among the threads) and has its full share one epoch later. Simulated with 8 and 16
//! threads in `tests/shaper_threads.rs`.

use super::{Nanos, ShaperConfig, TenantCounters};
use crate::topology::Rate;

/// How much room a thread that was not hungry gets above its measured rate, so that a
/// growing sender shows up as hungry within one epoch instead of being held at its past rate.
pub const HEADROOM: f64 = 1.05;

/// The default epoch: how often the splitter runs (1 ms, the shaper's default burst time).
pub const DEFAULT_EPOCH: Nanos = 1_000_000;

/// The smallest burst floor a thread's buckets get: one full-size Ethernet frame.
pub const MIN_BURST_BYTES: u32 = 1514;

/// Splits a host's shaping among data-path threads, epoch by epoch.
#[derive(Debug, Clone)]
pub struct Splitter {
    config: ShaperConfig,
    threads: usize,
    epoch: Nanos,
    /// Previous cumulative counters, `[thread][tenant index]`: (sent bytes, dropped frames).
    last: Vec<Vec<(u64, u64)>>,
}

impl Splitter {
    /// Split `config` among `threads` threads (at least one) every `epoch` ns.
    pub fn new(config: ShaperConfig, threads: usize, epoch: Nanos) -> Splitter {
        let threads = threads.max(1);
        let last = vec![vec![(0, 0); config.tenants.len()]; threads];
        Splitter {
            config,
            threads,
            epoch: epoch.max(1),
            last,
        }
    }

    /// Return the first epoch's configs: every rate shared equally among the threads.
    pub fn initial(&self) -> Vec<ShaperConfig> {
        let idle = vec![vec![TenantCounters::default(); self.config.tenants.len()]; self.threads];
        self.clone().split(&idle)
    }

    /// Read each thread's cumulative counters, `counters[thread][tenant index]` in the order
    /// of the config's tenants, and return each thread's config for the next epoch.
    pub fn split(&mut self, counters: &[Vec<TenantCounters>]) -> Vec<ShaperConfig> {
        let demand = self.demands(counters);
        let claims: Vec<Claim> = self
            .config
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| Claim {
                guaranteed: bps(t.guaranteed),
                ceiling: bps(t.ceiling),
                weight: f64::from(t.weight.max(1)),
                demand: demand.iter().map(|d| d[i]).sum(),
            })
            .collect();
        let capacity = bps(self.config.capacity);
        let entitled = water_fill(capacity, &claims);
        let unclaimed = (capacity - entitled.iter().sum::<f64>()).max(0.0);
        // slices[tenant][thread]
        let slices: Vec<Vec<f64>> = (0..claims.len())
            .map(|i| self.thread_slices(entitled[i], demand.iter().map(|d| d[i])))
            .collect();
        let n = self.threads as f64;
        // The host banks the same burst floor however many threads it has: N threads each
        // banking a full floor would let a waking tenant burst N times over (and repay it
        // over N times as long). A smaller floor costs nothing else: buckets go into debt,
        // so a 64 KB frame still leaves as soon as its bucket is not owing.
        let min_bytes = u32::try_from(self.threads)
            .map_or(1, |threads| self.config.burst.min_bytes / threads)
            .max(MIN_BURST_BYTES);
        (0..self.threads)
            .map(|k| {
                let mut config = self.config.clone();
                config.burst.min_bytes = min_bytes;
                let mut total = unclaimed / n;
                for (i, tenant) in config.tenants.iter_mut().enumerate() {
                    let slice = slices[i][k];
                    let (guaranteed, entitled) = (claims[i].guaranteed, entitled[i]);
                    let fraction = if entitled > 0.0 {
                        slice / entitled
                    } else {
                        0.0
                    };
                    // The guarantee in use follows the slices; the unused rest is kept on
                    // every thread alike, so a tenant under its guarantee never waits for
                    // an epoch wherever its next frame arrives.
                    let in_use = guaranteed.min(entitled);
                    let reserve = (guaranteed - entitled).max(0.0) / n;
                    let room = (claims[i].ceiling - entitled).clamp(0.0, unclaimed) / n;
                    tenant.guaranteed = rate(in_use * fraction + reserve);
                    tenant.ceiling = rate(slice + room);
                    total += slice;
                }
                config.capacity = rate(total);
                config
            })
            .collect()
    }

    /// Return each (thread, tenant) demand in bit/s over the last epoch, and remember the
    /// counters for the next one.
    fn demands(&mut self, counters: &[Vec<TenantCounters>]) -> Vec<Vec<f64>> {
        let seconds = self.epoch as f64 / 1e9;
        self.last
            .iter_mut()
            .enumerate()
            .map(|(k, last)| {
                last.iter_mut()
                    .enumerate()
                    .map(|(i, (sent, dropped))| {
                        let now = counters
                            .get(k)
                            .and_then(|c| c.get(i))
                            .copied()
                            .unwrap_or_default();
                        let sent_now = now.sent_bytes();
                        let hungry = now.queued_frames > 0 || now.dropped_frames > *dropped;
                        let rate = sent_now.saturating_sub(*sent) as f64 * 8.0 / seconds;
                        (*sent, *dropped) = (sent_now, now.dropped_frames);
                        if hungry {
                            f64::INFINITY
                        } else {
                            rate * HEADROOM
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Share one tenant's entitlement among the threads: max-min fair on their demands, and
    /// what no thread claims spread equally, so a frame arriving anywhere finds some room.
    fn thread_slices(&self, entitled: f64, demands: impl Iterator<Item = f64>) -> Vec<f64> {
        let claims: Vec<Claim> = demands
            .map(|demand| Claim {
                guaranteed: 0.0,
                ceiling: f64::INFINITY,
                weight: 1.0,
                demand,
            })
            .collect();
        let mut slices = water_fill(entitled, &claims);
        let left = (entitled - slices.iter().sum::<f64>()).max(0.0) / self.threads as f64;
        for slice in &mut slices {
            *slice += left;
        }
        slices
    }
}

/// One claimant of a water-fill, rates in bit/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Claim {
    pub guaranteed: f64,
    pub ceiling: f64,
    pub weight: f64,
    /// What it would use (`f64::INFINITY` for unbounded).
    pub demand: f64,
}

/// Share `capacity` as the shaper promises (see the module docs of [`super`]): each
/// claimant first gets `min(demand, guaranteed)`, then the spare is filled in proportion to
/// the weights, each capped at `min(demand, ceiling)`.
pub fn water_fill(capacity: f64, claims: &[Claim]) -> Vec<f64> {
    let cap_of = |c: &Claim| c.demand.min(c.ceiling);
    let mut share: Vec<f64> = claims.iter().map(|c| c.demand.min(c.guaranteed)).collect();
    let mut spare = capacity - share.iter().sum::<f64>();
    let mut open: Vec<usize> = (0..claims.len())
        .filter(|&i| cap_of(&claims[i]) > share[i])
        .collect();
    while spare > 1e-9 && !open.is_empty() {
        let level = spare / open.iter().map(|&i| claims[i].weight).sum::<f64>();
        let (full, rest): (Vec<usize>, Vec<usize>) = open
            .iter()
            .partition(|&&i| cap_of(&claims[i]) - share[i] <= level * claims[i].weight);
        if full.is_empty() {
            for &i in &open {
                share[i] += level * claims[i].weight;
            }
            break;
        }
        for &i in &full {
            spare -= cap_of(&claims[i]) - share[i];
            share[i] = cap_of(&claims[i]);
        }
        open = rest;
    }
    share
}

fn bps(rate: Rate) -> f64 {
    rate.bits_per_sec() as f64
}

fn rate(bits_per_sec: f64) -> Rate {
    // Saturating float-to-int conversion: negative and NaN become 0.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Rate::from_bits_per_sec(bits_per_sec.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaper::{BurstConfig, QueueLimits, TenantConfig};
    use crate::topology::TenantId;

    fn mbit(n: u64) -> Rate {
        Rate::from_bits_per_sec(n * 1_000_000)
    }

    fn config() -> ShaperConfig {
        let tenant = |id, g, c, weight| TenantConfig {
            id: TenantId(id),
            guaranteed: mbit(g),
            ceiling: mbit(c),
            weight,
            ports: Vec::new(),
        };
        ShaperConfig {
            capacity: mbit(1000),
            tenants: vec![tenant(0, 300, 1000, 1), tenant(1, 100, 400, 2)],
            queue: QueueLimits::default(),
            burst: BurstConfig::default(),
        }
    }

    fn hungry() -> TenantCounters {
        TenantCounters {
            queued_frames: 1,
            ..TenantCounters::default()
        }
    }

    fn sent(bytes: u64) -> TenantCounters {
        TenantCounters {
            own_bytes: bytes,
            ..TenantCounters::default()
        }
    }

    fn mbit_of(r: Rate) -> f64 {
        r.bits_per_sec() as f64 / 1e6
    }

    #[test]
    fn water_fill_gives_guarantees_then_weights_under_ceilings() {
        let claim = |guaranteed, ceiling, weight| Claim {
            guaranteed,
            ceiling,
            weight,
            demand: f64::INFINITY,
        };
        let got = water_fill(
            1000.0,
            &[claim(300.0, 1000.0, 1.0), claim(100.0, 1000.0, 2.0)],
        );
        assert_eq!(got, vec![500.0, 500.0]);
        let got = water_fill(
            1000.0,
            &[claim(300.0, 1000.0, 1.0), claim(100.0, 400.0, 2.0)],
        );
        assert_eq!(got, vec![600.0, 400.0]);
    }

    #[test]
    fn initial_split_is_even_and_sums_to_the_host() {
        let configs = Splitter::new(config(), 4, DEFAULT_EPOCH).initial();
        assert_eq!(configs.len(), 4);
        let capacity: f64 = configs.iter().map(|c| mbit_of(c.capacity)).sum();
        assert!((capacity - 1000.0).abs() < 0.01, "{capacity}");
        for c in &configs {
            assert!((mbit_of(c.tenants[0].guaranteed) - 75.0).abs() < 0.01);
            assert!((mbit_of(c.tenants[1].guaranteed) - 25.0).abs() < 0.01);
        }
    }

    #[test]
    fn hungry_threads_share_what_a_light_thread_leaves() {
        // Tenant 0 is hungry on threads 0 and 1 and sends 10 Mbit/s on thread 2; tenant 1
        // is hungry on thread 2 only.
        let mut splitter = Splitter::new(config(), 3, DEFAULT_EPOCH);
        let light = sent(1250); // 1250 B in 1 ms = 10 Mbit/s
        let counters = vec![
            vec![hungry(), TenantCounters::default()],
            vec![hungry(), TenantCounters::default()],
            vec![light, hungry()],
        ];
        let configs = splitter.split(&counters);
        // Entitlements: tenant 1 is capped at 400, tenant 0 gets the other 600.
        let slice = |k: usize, t: usize| mbit_of(configs[k].tenants[t].ceiling);
        assert!((slice(2, 0) - 10.5).abs() < 0.01, "{}", slice(2, 0));
        assert!((slice(0, 0) - 294.75).abs() < 0.01, "{}", slice(0, 0));
        assert!((slice(1, 0) - 294.75).abs() < 0.01);
        assert!((slice(2, 1) - 400.0).abs() < 0.01);
        let capacity: f64 = configs.iter().map(|c| mbit_of(c.capacity)).sum();
        assert!((capacity - 1000.0).abs() < 0.01, "{capacity}");
        // The guarantee follows the slice: 300 × 294.75 / 600 on a hungry thread.
        assert!((mbit_of(configs[0].tenants[0].guaranteed) - 147.375).abs() < 0.01);
    }

    #[test]
    fn a_thread_missing_from_the_report_counts_as_idle() {
        let mut splitter = Splitter::new(config(), 2, DEFAULT_EPOCH);
        let configs = splitter.split(&[vec![hungry(), hungry()]]);
        assert_eq!(configs.len(), 2);
        assert!(mbit_of(configs[0].tenants[0].ceiling) > mbit_of(configs[1].tenants[0].ceiling));
    }
}
