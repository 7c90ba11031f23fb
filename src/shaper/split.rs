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
//!    [`HEADROOM_PERCENT`], or unbounded when it was *hungry* (frames queued or dropped).
//! 2. The tenants' entitlements are water-filled over the whole capacity from those demands,
//!    exactly as one shaper would share it ([`entitlement`], a demand as a cap).
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

use super::entitlement::{Demand, entitlement};
use super::{Nanos, ShaperConfig, TenantCounters};
use crate::topology::Rate;

/// How much room (percent) a thread that was not hungry gets above its measured rate, so
/// that a growing sender shows up as hungry within one epoch instead of being held at its
/// past rate.
pub const HEADROOM_PERCENT: u128 = 5;

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
    /// (Every counter starts at zero, so reading idle counters changes nothing remembered.)
    pub fn initial(&mut self) -> Vec<ShaperConfig> {
        let idle = vec![vec![TenantCounters::default(); self.config.tenants.len()]; self.threads];
        self.split(&idle)
    }

    /// Return the rates being split (as one shaper would have them).
    pub fn config(&self) -> &ShaperConfig {
        &self.config
    }

    /// Return the number of threads split among.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Split `config` from now on, remembering each kept tenant's counters (by id), so the
    /// next epoch's demands stay measured over one epoch.
    pub fn rebase(&mut self, config: ShaperConfig) {
        let last = (0..self.threads)
            .map(|k| {
                config
                    .tenants
                    .iter()
                    .map(|t| {
                        let old = self.config.tenants.iter().position(|o| o.id == t.id);
                        old.and_then(|i| self.last[k].get(i).copied())
                            .unwrap_or((0, 0))
                    })
                    .collect()
            })
            .collect();
        self.last = last;
        self.config = config;
    }

    /// Read each thread's cumulative counters, `counters[thread][tenant index]` in the order
    /// of the config's tenants, and return each thread's config for the next epoch.
    pub fn split(&mut self, counters: &[Vec<TenantCounters>]) -> Vec<ShaperConfig> {
        self.split_over(counters, self.epoch)
    }

    /// [`Splitter::split`] when `elapsed` ns have passed since the last split (a thread
    /// that runs the split wakes a little late, never exactly on the epoch).
    pub fn split_over(
        &mut self,
        counters: &[Vec<TenantCounters>],
        elapsed: Nanos,
    ) -> Vec<ShaperConfig> {
        let demand = self.demands(counters, elapsed.max(1));
        let tenants: Vec<Demand> = self
            .config
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let wants = demand
                    .iter()
                    .fold(0, |sum: u64, d| sum.saturating_add(d[i]));
                Demand {
                    guaranteed: t.guaranteed.bits_per_sec(),
                    ceiling: t.ceiling.bits_per_sec(),
                    weight: t.weight,
                    active: true,
                }
                .capped(wants)
            })
            .collect();
        let capacity = self.config.capacity.bits_per_sec();
        let entitled = entitlement(capacity, &tenants);
        let unclaimed = capacity.saturating_sub(entitled.iter().sum());
        // slices[tenant][thread]
        let slices: Vec<Vec<u64>> = (0..tenants.len())
            .map(|i| self.thread_slices(entitled[i], demand.iter().map(|d| d[i])))
            .collect();
        let n = self.threads as u64;
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
                    let (slice, entitled) = (slices[i][k], entitled[i]);
                    let guaranteed = tenant.guaranteed.bits_per_sec();
                    // The guarantee in use follows the slices; the unused rest is kept on
                    // every thread alike, so a tenant under its guarantee never waits for
                    // an epoch wherever its next frame arrives.
                    let in_use = u128::from(guaranteed.min(entitled)) * u128::from(slice)
                        / u128::from(entitled.max(1));
                    let reserve = guaranteed.saturating_sub(entitled) / n;
                    let room = tenant.ceiling.bits_per_sec().saturating_sub(entitled);
                    let room = room.min(unclaimed) / n;
                    tenant.guaranteed = Rate::from_bits_per_sec(
                        u64::try_from(in_use).unwrap_or(u64::MAX) + reserve,
                    );
                    tenant.ceiling = Rate::from_bits_per_sec(slice.saturating_add(room));
                    total = total.saturating_add(slice);
                }
                config.capacity = Rate::from_bits_per_sec(total);
                config
            })
            .collect()
    }

    /// Return each (thread, tenant) demand in bit/s over the last epoch (`u64::MAX` when
    /// hungry), and remember the counters for the next one.
    fn demands(&mut self, counters: &[Vec<TenantCounters>], elapsed: Nanos) -> Vec<Vec<u64>> {
        let epoch = u128::from(elapsed);
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
                        let bits = u128::from(sent_now.saturating_sub(*sent)) * 8_000_000_000;
                        (*sent, *dropped) = (sent_now, now.dropped_frames);
                        if hungry {
                            u64::MAX
                        } else {
                            let wants = bits * (100 + HEADROOM_PERCENT) / 100 / epoch;
                            u64::try_from(wants).unwrap_or(u64::MAX)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Share one tenant's entitlement among the threads: max-min fair on their demands, and
    /// what no thread claims spread equally, so a frame arriving anywhere finds some room.
    fn thread_slices(&self, entitled: u64, demands: impl Iterator<Item = u64>) -> Vec<u64> {
        let any_thread = Demand {
            guaranteed: 0,
            ceiling: u64::MAX,
            weight: 1,
            active: true,
        };
        let threads: Vec<Demand> = demands.map(|d| any_thread.capped(d)).collect();
        let mut slices = entitlement(entitled, &threads);
        let left = entitled.saturating_sub(slices.iter().sum()) / self.threads as u64;
        for slice in &mut slices {
            *slice += left;
        }
        slices
    }
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
    fn a_rebased_splitter_measures_kept_tenants_from_where_they_were() {
        let mut splitter = Splitter::new(config(), 2, DEFAULT_EPOCH);
        let before = vec![vec![sent(1_000_000), sent(2_000)]; 2];
        splitter.split(&before);
        // The same tenants in the other order, and nothing sent since.
        let mut swapped = config();
        swapped.tenants.reverse();
        splitter.rebase(swapped.clone());
        let after = vec![vec![sent(2_000), sent(1_000_000)]; 2];
        let idle = vec![vec![TenantCounters::default(); 2]; 2];
        assert_eq!(
            splitter.split(&after),
            Splitter::new(swapped, 2, DEFAULT_EPOCH).split(&idle),
            "the counters from before the change must not read as one epoch's sending"
        );
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
