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
    #[cfg(test)]
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

    /// Return the level at `now` in fine units if non-negative, else 0: the banked tokens.
    pub(crate) fn bank_at(&self, now: Nanos) -> i128 {
        self.level_at(now).max(0)
    }

    /// Return the rate in bits per second.
    pub(crate) fn rate(&self) -> u64 {
        self.rate
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

/// The host's pool of spare tokens: a bucket whose fill rate is the capacity minus the rates
/// *reserved* by tenants repaying their own-token debt.
///
/// A tenant sending on its own tokens pays for the frame from its bank (the positive level of
/// its guarantee bucket) and, beyond that, goes into debt on its guarantee bucket. The bank
/// part is charged to the pool at once: while the tenant was idle the pool already received
/// those tokens and lent them, so using them again must be paid back. The debt part is not
/// charged; instead the tenant *reserves* its guaranteed rate from the pool until its debt is
/// repaid, which takes exactly the same bytes out of the pool, spread over the repayment.
/// Hence guaranteed frames, even coincident 64 KB ones, never make the pool jump into debt
/// (borrowers keep flowing at `capacity − Σ reserved`), and an idle tenant's rate returns to
/// the pool as soon as its last debt is repaid (one frame time), not after a bank refill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pool {
    /// Fill rate before reservations, bits/s.
    capacity: u64,
    /// Σ rates reserved at `last`.
    reserved: u64,
    cap: i128,
    level: i128,
    last: Nanos,
    /// Pending reservation ends `(when, rate)`, latest first (the earliest is at the end).
    ends: Vec<(Nanos, u64)>,
}

impl Pool {
    /// Build a full pool with room for `reservations` pending reservations (one per tenant).
    pub(crate) fn new(capacity: Rate, burst_bytes: u64, now: Nanos, reservations: usize) -> Pool {
        let cap = i128::from(burst_bytes) * FINE_PER_BYTE;
        Pool {
            capacity: capacity.bits_per_sec(),
            reserved: 0,
            cap,
            level: cap,
            last: now,
            ends: Vec::with_capacity(reservations),
        }
    }

    /// Return the burst in bytes.
    pub(crate) fn burst_bytes(&self) -> u64 {
        u64::try_from(self.cap / FINE_PER_BYTE).unwrap_or(u64::MAX)
    }

    /// Return the level `dt` ns after `level` at a fill rate of `capacity − reserved`.
    fn step(&self, level: i128, dt: Nanos, reserved: u64) -> i128 {
        // Both factors < 2⁶⁴ in magnitude: the product fits in i128 (< 2¹²⁷); saturate the sum.
        let slope = i128::from(self.capacity) - i128::from(reserved);
        level.saturating_add(slope * i128::from(dt)).min(self.cap)
    }

    /// Return the level at `now` without changing the pool.
    pub(crate) fn level_at(&self, now: Nanos) -> i128 {
        let (mut t, mut level, mut reserved) = (self.last, self.level, self.reserved);
        for &(end, rate) in self.ends.iter().rev() {
            if end > now {
                break;
            }
            level = self.step(level, end.saturating_sub(t), reserved);
            t = t.max(end);
            reserved -= rate;
        }
        self.step(level, now.saturating_sub(t), reserved)
    }

    /// Return true when a borrowed frame may be charged at `now`.
    pub(crate) fn is_ready(&self, now: Nanos) -> bool {
        self.level_at(now) >= 0
    }

    /// Return the earliest time ≥ `now` at which the level is non-negative ([`NEVER`] if none).
    pub(crate) fn ready_at(&self, now: Nanos) -> Nanos {
        let (mut t, mut level, mut reserved) = (self.last, self.level, self.reserved);
        let mut ends = self.ends.iter().rev().peekable();
        // Catch up to `now`.
        while let Some(&&(end, rate)) = ends.peek() {
            if end > now {
                break;
            }
            level = self.step(level, end.saturating_sub(t), reserved);
            t = t.max(end);
            reserved -= rate;
            ends.next();
        }
        level = self.step(level, now.saturating_sub(t), reserved);
        t = now.max(t);
        // Walk the future reservation ends until the level reaches zero.
        loop {
            if level >= 0 {
                return t;
            }
            let slope = i128::from(self.capacity) - i128::from(reserved);
            let next_end = ends.peek().map(|&&(end, _)| end);
            if slope > 0 {
                // Round up: after `wait` ns the level is ≥ 0.
                let wait = level.unsigned_abs().div_ceil(slope.unsigned_abs());
                let at = t.saturating_add(u64::try_from(wait).unwrap_or(NEVER));
                if next_end.is_none_or(|end| at <= end) {
                    return at;
                }
            }
            let Some(&(end, rate)) = ends.next() else {
                return NEVER;
            };
            level = self.step(level, end.saturating_sub(t), reserved);
            t = t.max(end);
            reserved -= rate;
        }
    }

    /// Bring the pool up to `now`, ending the reservations due.
    pub(crate) fn advance(&mut self, now: Nanos) {
        while let Some(&(end, rate)) = self.ends.last() {
            if end > now {
                break;
            }
            self.level = self.step(self.level, end.saturating_sub(self.last), self.reserved);
            self.last = self.last.max(end);
            self.reserved -= rate;
            self.ends.pop();
        }
        self.level = self.step(self.level, now.saturating_sub(self.last), self.reserved);
        self.last = self.last.max(now);
    }

    /// Take `fine` fine units at `now` (may go into debt).
    pub(crate) fn charge_fine(&mut self, now: Nanos, fine: i128) {
        self.advance(now);
        self.level -= fine;
        debug_assert!(self.is_valid());
    }

    /// Take `bytes` at `now` (may go into debt).
    pub(crate) fn charge(&mut self, now: Nanos, bytes: u32) {
        self.charge_fine(now, i128::from(bytes) * FINE_PER_BYTE);
    }

    /// Reserve `rate` from `now` until `until`.
    pub(crate) fn reserve(&mut self, now: Nanos, rate: u64, until: Nanos) {
        self.advance(now);
        if until <= now || rate == 0 {
            return;
        }
        self.reserved += rate;
        // Keep `ends` sorted latest first; a reservation ending at NEVER stays to the front.
        let at = self.ends.partition_point(|&(end, _)| end > until);
        self.ends.insert(at, (until, rate));
        debug_assert!(self.is_valid());
    }

    /// Change capacity and burst at `now`, dropping every reservation (the caller re-adds
    /// those still due, with the new rates).
    pub(crate) fn reconfigure(&mut self, capacity: Rate, burst_bytes: u64, now: Nanos) {
        self.advance(now);
        self.capacity = capacity.bits_per_sec();
        self.cap = i128::from(burst_bytes) * FINE_PER_BYTE;
        self.level = self.level.min(self.cap);
        self.reserved = 0;
        self.ends.clear();
    }

    /// Make room for `n` pending reservations.
    pub(crate) fn reserve_capacity(&mut self, n: usize) {
        self.ends.reserve(n.saturating_sub(self.ends.len()));
    }

    /// Check the invariants: level ≤ burst; ends sorted; `reserved` = Σ pending rates.
    pub(crate) fn is_valid(&self) -> bool {
        self.level <= self.cap
            && self.ends.windows(2).all(|w| w[0].0 >= w[1].0)
            && self.ends.iter().map(|&(_, r)| u128::from(r)).sum::<u128>()
                == u128::from(self.reserved)
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
    fn pool_fills_at_capacity_minus_reservations() {
        // 8 Mbit/s capacity = 1 byte/µs; a 2 Mbit/s reservation for 1 ms.
        let mut p = Pool::new(mbit(8), 1000, 0, 4);
        p.charge(0, 3000);
        p.reserve(0, 2_000_000, 1_000_000);
        // After 1 ms: −2000 + 750 bytes; then 1 byte/µs: ready 1250 µs later.
        assert_eq!(p.level_at(1_000_000) / FINE_PER_BYTE, -1250);
        assert_eq!(p.ready_at(0), 2_250_000);
        assert_eq!(p.ready_at(1_500_000), 2_250_000);
        assert!(p.is_ready(2_250_000) && !p.is_ready(2_249_999));
        p.advance(1_500_000);
        assert!(p.is_valid() && p.ends.is_empty());
        assert_eq!(p.level_at(10_000_000) / FINE_PER_BYTE, 1000);
    }

    #[test]
    fn pool_ready_waits_for_reservation_end_when_stalled() {
        // Fully reserved until 5 ms: no progress until then.
        let mut p = Pool::new(mbit(8), 1000, 0, 4);
        p.reserve(0, 8_000_000, 5_000_000);
        p.charge(0, 1100);
        assert_eq!(p.ready_at(0), 5_100_000);
        let mut never = Pool::new(mbit(8), 1000, 0, 1);
        never.reserve(0, 9_000_000, NEVER);
        never.charge(0, 1100);
        assert_eq!(never.ready_at(0), NEVER);
    }

    #[test]
    fn huge_elapsed_time_saturates() {
        let mut b = Bucket::new(Rate::from_bits_per_sec(9_000_000_000_000_000_000), 10, 0);
        b.charge(0, u32::MAX);
        assert_eq!(b.level_bytes_at(u64::MAX), 10);
    }
}
