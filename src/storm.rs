//! Storm control: a per-port limit on broadcast/multicast frames, in packets per second.
//!
//! Contract: every port has a GCRA limiter (the `governor` crate) allowing its tenant's
//! `broadcast_pps` frames per second with a burst of [`burst_for`] frames; the data path asks
//! [`StormControl::allow`] before flooding a frame and drops (and counts) the excess. Limits
//! count packets, not bytes: what hurts in a storm is the per-frame work of copying a frame
//! to every port of the tenant. Unicast is never limited here (the shaper does that).
//!
//! Reconfiguring keeps the state of every port whose limit did not change, so a change to
//! one tenant does not reset another's limiter; allocation happens only then, never per frame.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::switch::Switch;
use crate::topology::PortId;

type Limiter<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Return the burst allowed at `pps` frames/s: a tenth of a second's worth, at least 10
/// (enough for the ARP/ND chatter of a server coming up) and at most `pps`.
pub fn burst_for(pps: u32) -> u32 {
    (pps / 10).max(10).min(pps).max(1)
}

/// One limiter per port, indexed by `PortId`.
pub struct StormControl<C: Clock = DefaultClock> {
    clock: C,
    /// `(pps, limiter)` per port id; `None` for ids without a port.
    ports: Vec<Option<(u32, Limiter<C>)>>,
}

impl<C: Clock> std::fmt::Debug for StormControl<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits: Vec<Option<u32>> = self.ports.iter().map(|p| p.as_ref().map(|p| p.0)).collect();
        f.debug_struct("StormControl")
            .field("pps", &limits)
            .finish()
    }
}

impl StormControl<DefaultClock> {
    /// Build limiters for every port of `switch`, on the monotonic clock.
    pub fn new(switch: &Switch) -> StormControl {
        StormControl::with_clock(switch, DefaultClock::default())
    }
}

impl<C: Clock + Clone> StormControl<C> {
    /// Build limiters for every port of `switch` on `clock`.
    pub fn with_clock(switch: &Switch, clock: C) -> StormControl<C> {
        let mut storm = StormControl {
            clock,
            ports: Vec::new(),
        };
        storm.update(switch);
        storm
    }

    /// Follow a new switch: keep the limiters whose port and limit are unchanged, create
    /// the others, drop those of removed ports.
    pub fn update(&mut self, switch: &Switch) {
        let mut old = std::mem::take(&mut self.ports);
        self.ports = (0..switch.port_count())
            .map(|i| {
                let port = PortId(u32::try_from(i).unwrap_or(u32::MAX));
                switch.tenant_of(port)?; // no such port: no limiter
                let pps = switch.broadcast_pps(port);
                match old.get_mut(i).and_then(Option::take) {
                    Some((kept, limiter)) if kept == pps => Some((pps, limiter)),
                    _ => Some((pps, self.limiter(pps))),
                }
            })
            .collect();
    }

    fn limiter(&self, pps: u32) -> Limiter<C> {
        let rate = NonZeroU32::new(pps).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst_for(pps)).unwrap_or(NonZeroU32::MIN);
        RateLimiter::direct_with_clock(
            Quota::per_second(rate).allow_burst(burst),
            self.clock.clone(),
        )
    }

    /// Return true if `port` may flood one more broadcast/multicast frame now.
    #[inline]
    pub fn allow(&self, port: PortId) -> bool {
        match self.ports.get(port.index()) {
            Some(Some((_, limiter))) => limiter.check().is_ok(),
            // A port without a limiter is not one of the switch's: let the switch drop it.
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;
    use crate::switch::fixtures::{A1, A2, topology};

    fn switch_with_pps(pps: u32) -> Switch {
        let mut t = topology();
        for tenant in &mut t.tenants {
            tenant.broadcast_pps = pps;
        }
        Switch::new(&t)
    }

    fn allowed(storm: &StormControl<FakeRelativeClock>, port: PortId, n: u32) -> u32 {
        u32::try_from((0..n).filter(|_| storm.allow(port)).count()).unwrap()
    }

    #[test]
    fn bursts_then_limits_to_the_rate_per_port() {
        let clock = FakeRelativeClock::default();
        let storm = StormControl::with_clock(&switch_with_pps(1000), clock.clone());
        // The burst (100) goes at once, then nothing more at the same instant.
        assert_eq!(allowed(&storm, A1, 500), 100);
        // Ports are independent.
        assert_eq!(allowed(&storm, A2, 500), 100);
        // One second later: 1000 more (the burst cap bounds what accrues to 100).
        clock.advance(Duration::from_millis(50));
        assert_eq!(allowed(&storm, A1, 500), 50);
        clock.advance(Duration::from_secs(1));
        assert_eq!(allowed(&storm, A1, 500), 100);
    }

    #[test]
    fn update_keeps_unchanged_limiters_and_follows_new_limits() {
        let clock = FakeRelativeClock::default();
        let mut storm = StormControl::with_clock(&switch_with_pps(1000), clock.clone());
        assert_eq!(allowed(&storm, A1, 500), 100);
        storm.update(&switch_with_pps(1000));
        assert_eq!(allowed(&storm, A1, 10), 0, "state kept: still exhausted");
        storm.update(&switch_with_pps(50));
        assert_eq!(allowed(&storm, A1, 100), 10, "new limit, fresh burst");
        assert!(
            storm.allow(PortId(99)),
            "unknown ports are left to the switch"
        );
    }

    #[test]
    fn burst_is_a_tenth_of_a_second_within_bounds() {
        assert_eq!(burst_for(1000), 100);
        assert_eq!(burst_for(50), 10);
        assert_eq!(burst_for(3), 3);
        assert_eq!(burst_for(1), 1);
    }
}
