//! A token bucket that may go into debt, with time passed in.
//!
//! Contract:
//! - Tokens accrue at the bucket's rate up to its burst, never beyond: an idle sender banks at
//!   most one burst.
//! - A frame may be charged whenever the level is non-negative, whatever its size; the level
//!   then goes negative (debt) and the next frame waits until it is paid back. A 64 KB GSO
//!   frame is therefore shaped by delay and never refused for being larger than the burst, and
//!   the long-run rate is exact for every frame size.
//! - The arithmetic is exact: the level is kept in *fine units* of 1/8 000 000 000 byte, so
//!   a rate of `r` bit/s adds exactly `r` fine units per nanosecond and no rounding drifts.
//! - A zero rate never refills: such a bucket is never ready once in debt (it starts in debt).
//!
//! Why not `governor`: it implements GCRA, which answers "may this cell pass now?" for one
//! limiter. The hierarchy needs a bucket that (1) can be charged past zero (debt) so a frame
//! larger than the burst still goes at the right rate, (2) can be *inspected* without being
//! charged ("is the guarantee bucket non-negative? when will it be?") to choose between own
//! tokens and borrowing, (3) can be charged on one bucket and not another (borrowed bytes hit
//! the ceiling and the host, not the guarantee), (4) reports when it will be ready, for the
//! event loop's timer, and (5) changes rate at run time keeping its level. `governor` keeps its
//! state as one atomic theoretical arrival time, refuses cells above its burst
//! (`InsufficientCapacity`), reads the clock through its own `Clock` trait and has no way to
//! express debt or weighted lending. Those are the core of this shaper, so this small bucket
//! (Firecracker's `TokenBucket` shape, `reduce` → `charge`, with an injected clock) serves
//! better, and keeps the shaper free of atomics and dependencies.

use super::Nanos;
use crate::topology::Rate;

/// Fine units per byte: 8 bits × 10⁹ ns/s, so `r` bit/s is `r` fine units per nanosecond.
pub(crate) const FINE_PER_BYTE: i128 = 8_000_000_000;

/// "Never": the ready time of a bucket that cannot refill.
pub(crate) const NEVER: Nanos = Nanos::MAX;

/// A token bucket with debt, in fine units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Bits per second, i.e. fine units per nanosecond.
    rate: u64,
    /// Largest level, in fine units (the burst).
    cap: i128,
    /// Level at `last`, in fine units; negative is debt.
    level: i128,
    /// When `level` was last brought up to date.
    last: Nanos,
}

impl Bucket {
    /// Build a full bucket (a zero-rate bucket starts in debt and stays there).
    pub(crate) fn new(rate: Rate, burst_bytes: u64, now: Nanos) -> Bucket {
        let rate = rate.bits_per_sec();
        let cap = i128::from(burst_bytes) * FINE_PER_BYTE;
        let level = if rate == 0 { -1 } else { cap };
        let bucket = Bucket {
            rate,
            cap,
            level,
            last: now,
        };
        debug_assert!(bucket.is_valid());
        bucket
    }

    /// Return the burst in bytes.
    pub(crate) fn burst_bytes(&self) -> u64 {
        // cap = burst_bytes × FINE_PER_BYTE, built from a u64: the quotient fits.
        u64::try_from(self.cap / FINE_PER_BYTE).unwrap_or(u64::MAX)
    }

    /// Return the level at `now` in fine units, without changing the bucket.
    pub(crate) fn level_at(&self, now: Nanos) -> i128 {
        let elapsed = now.saturating_sub(self.last);
        // rate < 2⁶⁴ and elapsed < 2⁶⁴, so the product < 2¹²⁸ as u128; as i128 it could
        // overflow only past 2¹²⁷, i.e. after ~584 years at 2⁶³ bit/s: saturate instead.
        let gained =
            i128::try_from(u128::from(self.rate) * u128::from(elapsed)).unwrap_or(i128::MAX);
        self.level.saturating_add(gained).min(self.cap)
    }

    /// Return the level at `now` in whole bytes (rounded towards zero).
    #[cfg(test)]
    pub(crate) fn level_bytes_at(&self, now: Nanos) -> i64 {
        let bytes = self.level_at(now) / FINE_PER_BYTE;
        i64::try_from(bytes).unwrap_or(if bytes < 0 { i64::MIN } else { i64::MAX })
    }

    /// Return true when a frame may be charged at `now` (level non-negative).
    pub(crate) fn is_ready(&self, now: Nanos) -> bool {
        self.level_at(now) >= 0
    }

    /// Return the earliest time ≥ `now` at which the level is non-negative ([`NEVER`] if none).
    pub(crate) fn ready_at(&self, now: Nanos) -> Nanos {
        let level = self.level_at(now);
        if level >= 0 {
            return now;
        }
        if self.rate == 0 {
            return NEVER;
        }
        // Round up: after `wait` ns the level is level + rate × wait ≥ 0.
        let debt = level.unsigned_abs();
        let rate = u128::from(self.rate);
        let wait = debt.div_ceil(rate);
        now.saturating_add(u64::try_from(wait).unwrap_or(NEVER))
    }

    /// Take `bytes` at `now`; the level may go negative (debt).
    pub(crate) fn charge(&mut self, now: Nanos, bytes: u32) {
        self.level = self.level_at(now) - i128::from(bytes) * FINE_PER_BYTE;
        self.last = self.last.max(now);
        debug_assert!(self.is_valid());
    }

    /// Change rate and burst at `now`, keeping the level (clamped to the new burst).
    pub(crate) fn reconfigure(&mut self, rate: Rate, burst_bytes: u64, now: Nanos) {
        self.level = self.level_at(now);
        self.last = self.last.max(now);
        self.rate = rate.bits_per_sec();
        self.cap = i128::from(burst_bytes) * FINE_PER_BYTE;
        self.level = self.level.min(self.cap);
        if self.rate == 0 {
            self.level = self.level.min(-1);
        }
        debug_assert!(self.is_valid());
    }

    /// Check the invariants: level never above the burst, a zero-rate bucket never ready.
    pub(crate) fn is_valid(&self) -> bool {
        self.cap >= 0 && self.level <= self.cap && (self.rate > 0 || self.level < 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbit(n: u64) -> Rate {
        Rate::from_bits_per_sec(n * 1_000_000)
    }

    #[test]
    fn starts_full_and_caps_at_burst() {
        let b = Bucket::new(mbit(8), 1000, 0);
        assert_eq!(b.level_bytes_at(0), 1000);
        assert_eq!(b.level_bytes_at(1_000_000_000), 1000);
        assert_eq!(b.burst_bytes(), 1000);
    }

    #[test]
    fn debt_is_paid_back_exactly() {
        // 8 Mbit/s = 1 byte/µs.
        let mut b = Bucket::new(mbit(8), 1000, 0);
        b.charge(0, 65_536);
        assert_eq!(b.level_bytes_at(0), 1000 - 65_536);
        assert!(!b.is_ready(0));
        let at = b.ready_at(0);
        assert_eq!(at, 64_536_000);
        assert!(b.is_ready(at) && !b.is_ready(at - 1));
    }

    #[test]
    fn ready_rounds_up_sub_nanosecond_rates() {
        // 3 bit/s: one byte takes 8/3 s.
        let mut b = Bucket::new(Rate::from_bits_per_sec(3), 0, 0);
        b.charge(0, 1);
        let at = b.ready_at(0);
        assert_eq!(at, 2_666_666_667);
        assert!(b.is_ready(at) && !b.is_ready(at - 1));
    }

    #[test]
    fn zero_rate_never_ready() {
        let b = Bucket::new(Rate::from_bits_per_sec(0), 1000, 0);
        assert!(!b.is_ready(u64::MAX));
        assert_eq!(b.ready_at(5), NEVER);
    }

    #[test]
    fn reconfigure_keeps_level() {
        let mut b = Bucket::new(mbit(8), 1000, 0);
        b.charge(0, 500);
        b.reconfigure(mbit(80), 200, 0);
        assert_eq!(b.level_bytes_at(0), 200);
        b.charge(0, 400);
        assert_eq!(b.ready_at(0), 20_000); // 200 bytes at 10 bytes/µs
        assert!(b.is_valid());
    }

    #[test]
    fn huge_elapsed_time_saturates() {
        let mut b = Bucket::new(Rate::from_bits_per_sec(9_000_000_000_000_000_000), 10, 0);
        b.charge(0, u32::MAX);
        assert_eq!(b.level_bytes_at(u64::MAX), 10);
    }
}
