//! Sliding-window rates: the counters sampled every [`SAMPLE_EVERY`], differences over the
//! last 100 ms and the last second.
//!
//! Contract: [`RateMeter::rate`] returns bit/s over the newest samples spanning at least the
//! window (or all samples while the daemon is younger than it); ids are stable, and a counter
//! missing from an older sample (a new id) counts from zero.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::stats::Stats;

/// How often the counters are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// The short window.
pub const SHORT: Duration = Duration::from_millis(100);
/// The long window.
pub const LONG: Duration = Duration::from_secs(1);

/// Bytes in and out, per tenant and per port (by id), at one instant.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    tenant_in: Vec<u64>,
    tenant_out: Vec<u64>,
    port_in: Vec<u64>,
    port_out: Vec<u64>,
}

/// Which counter a rate is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meter {
    TenantIn(usize),
    TenantOut(usize),
    PortIn(usize),
    PortOut(usize),
}

/// The last second or so of samples.
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<Sample>,
}

impl RateMeter {
    /// Record the counters now.
    pub fn sample(&mut self, stats: &Stats, at: Instant) {
        let load = |v: &[std::sync::Arc<crate::stats::Counters>], rx: bool| -> Vec<u64> {
            v.iter()
                .map(|c| {
                    let s = if rx { &c.rx_bytes } else { &c.tx_bytes };
                    s.load(std::sync::atomic::Ordering::Relaxed)
                })
                .collect()
        };
        self.samples.push_back(Sample {
            at,
            tenant_in: load(&stats.tenants, true),
            tenant_out: load(&stats.tenants, false),
            port_in: load(&stats.ports, true),
            port_out: load(&stats.ports, false),
        });
        // Keep one sample at least LONG old, so the long window is always covered.
        while self.samples.len() > 2 && self.samples[1].at + LONG <= at {
            self.samples.pop_front();
        }
    }

    /// Return the rate of `meter` over `window`, in bit/s.
    pub fn rate(&self, meter: Meter, window: Duration) -> u64 {
        let Some(last) = self.samples.back() else {
            return 0;
        };
        let first = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at + window <= last.at)
            .or(self.samples.front())
            .unwrap_or(last);
        let secs = last.at.duration_since(first.at).as_secs_f64();
        if secs <= 0.0 {
            return 0;
        }
        let get = |s: &Sample| -> u64 {
            let (v, i) = match meter {
                Meter::TenantIn(i) => (&s.tenant_in, i),
                Meter::TenantOut(i) => (&s.tenant_out, i),
                Meter::PortIn(i) => (&s.port_in, i),
                Meter::PortOut(i) => (&s.port_out, i),
            };
            v.get(i).copied().unwrap_or(0)
        };
        let bytes = get(last).saturating_sub(get(first));
        // Saturating float-to-int: a rate never needs more than 64 bits.
        #[allow(clippy::cast_possible_truncation)]
        let bps = (bytes as f64 * 8.0 / secs) as u64;
        bps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_both_windows() {
        let stats = Stats::new(1, 2);
        let mut meter = RateMeter::default();
        let t0 = Instant::now();
        // Tenant 0 sends 1250 bytes every 50 ms (200 kbit/s) for 2 s, faster (10x) in
        // the last 100 ms.
        for i in 0..=40u32 {
            let bytes = if i > 38 { 12_500 } else { 1250 };
            if i > 0 {
                stats.tenants[0].count_rx(bytes);
            }
            meter.sample(&stats, t0 + SAMPLE_EVERY * i);
        }
        assert_eq!(meter.rate(Meter::TenantIn(0), SHORT), 2_000_000);
        let long = meter.rate(Meter::TenantIn(0), LONG);
        assert_eq!(long, (18 * 1250 + 2 * 12_500) * 8);
        assert_eq!(meter.rate(Meter::TenantIn(1), LONG), 0);
        assert_eq!(
            meter.rate(Meter::PortIn(7), LONG),
            0,
            "unknown ids are zero"
        );
        assert!(meter.samples.len() <= 22);
    }
}
