//! Quarantine: a port that floods netd with frames it must drop is not read for a while.
//!
//! Why: dropping a hostile frame is cheap, reading it is not (a syscall and a copy on the
//! data path's thread). A server flooding spoofed or malformed frames at 300k frames/s made
//! netd spend most of a core on them, and the other tenants' flows slowed down with it
//! (`tests/floods.rs`, before this: −5% to −16%). The kernel's bridge would have spent that
//! work in the sender's own softirq context, on the sender's CPU.
//!
//! Contract: every frame netd drops because of what its sender did ([`is_hostile`]) counts
//! against its port's budget of [`BUDGET`] per [`WINDOW`]. A port over budget is muted until
//! its window ends: the data path leaves its frames in the TAP, whose queue fills, and the
//! kernel drops the excess in the sender's context. The port recovers by itself; legitimate
//! traffic never comes near the budget (a server's own frames are not dropped), and a
//! sender's hostile frames can only mute the sender. Like a hardware switch's port security
//! in "restrict" mode, with automatic recovery.

use crate::shaper::Nanos;
use crate::stats::DropReason;
use crate::topology::PortId;

/// The accounting window.
pub const WINDOW: Nanos = 100_000_000;
/// Dropped frames a port may cause per window (20 000 per second) before it is muted.
pub const BUDGET: u32 = 2_000;
/// A port muted again right after a mute stays muted twice as long each time, up to this
/// many doublings (100 ms → 1.6 s): a flood that goes on costs netd a budget's worth of
/// reads per 1.6 s, not per 100 ms.
pub const MAX_DOUBLINGS: u32 = 4;

/// Return true for drops the sender caused (and could cause at line rate on purpose), as
/// opposed to netd's own limits on the way out (a full queue, a failed write, a frame too
/// big for its destination). Exhaustive: a new reason must be placed on one side.
pub fn is_hostile(reason: DropReason) -> bool {
    match reason {
        DropReason::Truncated
        | DropReason::Malformed
        | DropReason::Oversized
        | DropReason::UnsupportedEtherType
        | DropReason::SpoofedMac
        | DropReason::SpoofedIpv4
        | DropReason::SpoofedArp
        | DropReason::SpoofedIpv6
        | DropReason::UnknownDestination
        | DropReason::Hairpin
        | DropReason::StormControl
        | DropReason::RogueDhcp => true,
        DropReason::QueueFull
        | DropReason::WriteFailed
        | DropReason::GsoUnsupported
        | DropReason::TooBig => false,
    }
}

/// One port's window.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: Nanos,
    dropped: u32,
    /// Not read before this time (0: not muted).
    muted_until: Nanos,
    /// When the last mute ended, and how many mutes came back to back before it.
    last_mute_end: Nanos,
    repeats: u32,
}

/// The budgets of every port, indexed by `PortId`.
#[derive(Debug, Default)]
pub struct Quarantine {
    ports: Vec<Window>,
    /// How many ports are muted now or were at the last look (to skip the scan when none).
    muted: usize,
    /// The earliest end of a mute (0: none): no port needs looking at before it.
    earliest_end: Nanos,
}

impl Quarantine {
    /// Count one hostile drop from `port` at `now`; return true when it mutes the port.
    pub fn count(&mut self, port: PortId, now: Nanos) -> bool {
        let index = port.index();
        if self.ports.len() <= index {
            self.ports.resize(index + 1, Window::default());
        }
        let window = &mut self.ports[index];
        if window.dropped == 0 || now.saturating_sub(window.start) >= WINDOW {
            window.start = now;
            window.dropped = 0;
        }
        window.dropped = window.dropped.saturating_add(1);
        if window.dropped <= BUDGET || window.muted_until != 0 {
            return false;
        }
        // Over budget within a window of the last mute's end: the flood goes on.
        let again = window.last_mute_end != 0 && now.saturating_sub(window.last_mute_end) <= WINDOW;
        window.repeats = if again {
            (window.repeats + 1).min(MAX_DOUBLINGS)
        } else {
            0
        };
        window.muted_until = window.start + (WINDOW << window.repeats);
        window.last_mute_end = window.muted_until;
        self.muted += 1;
        let until = window.muted_until;
        self.earliest_end = match self.earliest_end {
            0 => until,
            end => end.min(until),
        };
        true
    }

    /// Return true when some port may be muted (cheap: no clock, no lookup).
    pub fn any(&self) -> bool {
        self.muted > 0
    }

    /// Return true while `port` is muted.
    pub fn is_muted(&self, port: PortId, now: Nanos) -> bool {
        self.muted > 0
            && self
                .ports
                .get(port.index())
                .is_some_and(|w| w.muted_until > now)
    }

    /// Lift the mutes that are over; return the earliest end of those still running.
    pub fn release(&mut self, now: Nanos) -> Option<Nanos> {
        if self.muted == 0 {
            return None;
        }
        // A flood keeps a port muted for up to 1.6 s: scan only when a mute may have ended.
        if now < self.earliest_end {
            return Some(self.earliest_end);
        }
        let mut next: Option<Nanos> = None;
        let mut still = 0;
        for window in self.ports.iter_mut().filter(|w| w.muted_until != 0) {
            if window.muted_until <= now {
                window.muted_until = 0;
            } else {
                still += 1;
                next = Some(next.map_or(window.muted_until, |n| n.min(window.muted_until)));
            }
        }
        self.muted = still;
        self.earliest_end = next.unwrap_or(0);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn a_port_over_budget_is_muted_until_its_window_ends_and_then_recovers() {
        let (mut q, port, other) = (Quarantine::default(), PortId(3), PortId(1));
        for i in 0..BUDGET {
            assert!(!q.count(port, 10 * MS + Nanos::from(i)), "muted early");
        }
        assert!(!q.is_muted(port, 20 * MS));
        assert!(q.count(port, 20 * MS), "not muted over budget");
        assert!(q.is_muted(port, 50 * MS));
        assert!(!q.is_muted(other, 50 * MS), "another port was muted");
        assert_eq!(q.release(50 * MS), Some(10 * MS + WINDOW));
        assert!(!q.is_muted(port, 10 * MS + WINDOW));
        assert_eq!(q.release(10 * MS + WINDOW), None);
        // A new window starts afresh.
        assert!(!q.count(port, 10 * MS + WINDOW));
    }

    #[test]
    fn a_flood_that_goes_on_is_muted_longer_each_time_up_to_a_bound() {
        let mut q = Quarantine::default();
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..7 {
            // Over budget at once, as a flood is.
            let start = now;
            while !q.count(PortId(0), now) {
                now += 1;
            }
            let end = q.release(now).expect("muted");
            lengths.push((end - start) / MS);
            now = end;
            assert_eq!(q.release(now), None);
        }
        assert_eq!(lengths, [100, 200, 400, 800, 1600, 1600, 1600]);
        // A quiet spell resets it.
        now += 10 * WINDOW;
        let start = now;
        while !q.count(PortId(0), now) {
            now += 1;
        }
        assert_eq!((q.release(now).expect("muted") - start) / MS, 100);
    }

    #[test]
    fn drops_spread_over_windows_never_mute() {
        let mut q = Quarantine::default();
        let per_window = Nanos::from(BUDGET / 2);
        for w in 0..50 {
            for i in 0..per_window {
                assert!(!q.count(PortId(0), w * WINDOW + i));
            }
        }
    }

    #[test]
    fn only_what_the_sender_did_counts() {
        assert!(is_hostile(DropReason::SpoofedMac));
        assert!(is_hostile(DropReason::StormControl));
        assert!(is_hostile(DropReason::Malformed));
        assert!(!is_hostile(DropReason::QueueFull));
        assert!(!is_hostile(DropReason::TooBig));
    }
}
