//! Criterion: `Shaper::offer` + `Shaper::release` per frame, ns/frame, 3 and 100 tenants;
//! and the cost of one epoch of the multi-thread `Splitter`.
//!
//! Every tenant has one port and saturates: frames of 1514 bytes arrive round-robin over the
//! tenants at 1.2 × the capacity (simulated clock), so the shaper runs as in the data path
//! under overload: most frames are sent on own or borrowed tokens, some wait in the queue and
//! leave through `release`, some are dropped when a queue is full.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use netd::shaper::split::{DEFAULT_EPOCH, Splitter};
use netd::shaper::{
    Admit, BurstConfig, PortConfig, QueueLimits, Shaper, ShaperConfig, TenantConfig, TenantCounters,
};
use netd::topology::{PortId, Rate, TenantId};

const FRAME: u32 = 1514;
const CAPACITY: u64 = 10_000_000_000;

fn config(tenants: u32) -> ShaperConfig {
    let guaranteed = CAPACITY / u64::from(tenants) / 2;
    ShaperConfig {
        capacity: Rate::from_bits_per_sec(CAPACITY),
        tenants: (0..tenants)
            .map(|k| TenantConfig {
                id: TenantId(k),
                guaranteed: Rate::from_bits_per_sec(guaranteed),
                ceiling: Rate::from_bits_per_sec(CAPACITY),
                weight: 1 + k % 3,
                ports: vec![PortConfig {
                    id: PortId(k),
                    guaranteed: None,
                    ceiling: None,
                }],
            })
            .collect(),
        queue: QueueLimits::default(),
        burst: BurstConfig::default(),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("shaper/offer+release");
    group.throughput(Throughput::Elements(1));
    for tenants in [3u32, 100] {
        group.bench_function(format!("{tenants}_tenants"), |b| {
            let mut shaper: Shaper<u64> = Shaper::new(config(tenants), 0);
            // Inter-arrival time of 1514-byte frames at 1.2 × capacity, in picoseconds so
            // integer steps do not round the offered load away.
            let step_ps = u64::from(FRAME) * 8 * 1_000_000_000_000 * 10 / (12 * CAPACITY);
            let (mut i, mut now_ps) = (0u64, 0u64);
            b.iter(|| {
                now_ps += step_ps;
                let t = now_ps / 1000;
                let k = u32::try_from(i % u64::from(tenants)).unwrap_or(0);
                match shaper.offer(t, TenantId(k), PortId(k), FRAME, i) {
                    Admit::Send(x) | Admit::Dropped(x) => {
                        black_box(x);
                    }
                    Admit::Queued => {}
                }
                shaper.release(t, |x| {
                    black_box(x);
                });
                i += 1;
            });
        });
    }
    group.finish();
    bench_split(c);
}

/// The splitter's epoch (past one core): every tenant hungry on every thread, so the
/// water-fills do the most work; one run per epoch (1 ms) is its budget.
fn bench_split(c: &mut Criterion) {
    let mut group = c.benchmark_group("shaper/split");
    for (tenants, threads) in [(100u32, 8usize), (100, 16), (1000, 16)] {
        group.bench_function(format!("{tenants}_tenants_{threads}_threads"), |b| {
            let mut splitter = Splitter::new(config(tenants), threads, DEFAULT_EPOCH);
            let hungry = TenantCounters {
                queued_frames: 1,
                ..TenantCounters::default()
            };
            let counters = vec![vec![hungry; tenants as usize]; threads];
            b.iter(|| black_box(splitter.split(black_box(&counters))));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
