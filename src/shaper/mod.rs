//! The per-tenant shaper: a pure state machine with time passed in.
//!
//! Contract (what the data path and the simulations rely on):
//! - Traffic is charged to the **sending** tenant, in the bytes the caller gives (the Ethernet
//!   frame length; the wire bytes for a GSO frame).
//! - For offered loads `dᵢ`, each tenant's **entitlement** is `min(dᵢ, guaranteedᵢ)` plus a
//!   share of the spare (`capacity − Σ min(dⱼ, guaranteedⱼ)`) water-filled among the tenants
//!   wanting more, in proportion to their weights, each capped at `min(dᵢ, ceilingᵢ)`.
//!   Achieved rates follow the entitlement; the hierarchy (see [`hierarchy`]) says how.
//! - A tenant under its guarantee is never held back by borrowers: its frames go on its own
//!   tokens without waiting for the host's.
//! - When a tenant falls idle, the others may use its share within one frame time of its
//!   last frame (plus the drain of its queue, ≤ `max_delay`); when it wakes, its own tokens
//!   are there at once. Idle buckets bank at most one burst, which bounds the disturbance of
//!   a wake-up. Simulated at 1 Gbit/s: ≤ 5 ms to the new split after sleep, ≤ 3 ms after wake.
//! - Inside a tenant, ports (servers) may have their own `guaranteed`/`ceiling`: the same
//!   rules apply among the tenant's ports, within the tenant's entitlement; ports without a
//!   guarantee share what remains equally.
//! - Frames over the entitlement wait in a bounded per-tenant queue ([`QueueLimits`]); an
//!   overflowing frame is dropped, counted and handed back ([`Admit::Dropped`]) so the caller
//!   can recycle its buffer. No item is ever lost or duplicated: every offered item comes back
//!   exactly once, through [`Admit`], [`Shaper::release`] or [`Shaper::reconfigure`].
//! - Parameters can be swapped at run time ([`Shaper::reconfigure`]) keeping queued frames,
//!   token levels and counters; tenants and ports may be added or removed.
//! - No I/O, no clock read, no allocation per frame: queues are pre-sized at configuration.
//!
//! Calling convention (the event loop): for each frame, [`Shaper::offer`]; after a batch of
//! offers and whenever the timer armed for [`Shaper::next_release`] fires, [`Shaper::release`].
//! `now` must never go backwards (a smaller `now` is treated as the latest seen).

mod bucket;
pub mod entitlement;
pub mod hierarchy;
mod queue;
pub mod split;

pub use hierarchy::Shaper;

use crate::topology::{MIN_RATE, PortId, Rate, ShapingParams, TenantId, Topology};

/// Monotonic nanoseconds from an arbitrary origin, injected by the caller.
pub type Nanos = u64;

/// Everything the shaper needs: the host capacity and each tenant's rates.
#[derive(Debug, Clone, PartialEq)]
pub struct ShaperConfig {
    /// Aggregate rate shared among tenants.
    pub capacity: Rate,
    /// Tenants; ids are small dense indices (as in [`Topology::tenants`]).
    pub tenants: Vec<TenantConfig>,
    /// Per-tenant queue bounds.
    pub queue: QueueLimits,
    /// Bucket sizes.
    pub burst: BurstConfig,
}

/// One tenant's rates.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    pub id: TenantId,
    /// Rate always available to the tenant (Σ over tenants ≤ capacity).
    pub guaranteed: Rate,
    /// Maximum rate including borrowed bandwidth (clamped to `[guaranteed, capacity]`, and
    /// to at least [`MIN_RATE`]).
    pub ceiling: Rate,
    /// Share of the spare relative to other borrowers (0 is taken as 1).
    pub weight: u32,
    /// Ports with their own queue; unlisted ports of the tenant share one default lane.
    pub ports: Vec<PortConfig>,
}

/// One port's optional rates inside its tenant's entitlement.
#[derive(Debug, Clone, PartialEq)]
pub struct PortConfig {
    pub id: PortId,
    /// Rate guaranteed to this port out of the tenant's (Σ over ports ≤ tenant's guarantee).
    pub guaranteed: Option<Rate>,
    /// Maximum rate of this port (at least [`MIN_RATE`]).
    pub ceiling: Option<Rate>,
}

/// Bounds of each tenant's queue.
///
/// A frame is admitted when the tenant's queue is empty (a frame is never dropped for being
/// big), or when all of these hold: fewer than `max_frames` queued; queued bytes plus the
/// frame ≤ `max(min_bytes, ceiling × max_delay)`; and either fewer than `min_bytes` queued or
/// the frame's estimated wait is at most `max_delay`. The wait is estimated from the port
/// queue's measured drain rate (bytes sent while its head waited), so the time bound follows
/// the tenant's actual share, whatever it is, and never from a rate above the port's own
/// ceiling. A frame therefore waits at most about `max(max_delay, (min_bytes + 2 frames) /
/// rate)`, which [`crate::topology::MIN_RATE`] bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Queueing delay bound (default 100 ms, as `[host] queue_delay`).
    pub max_delay: Nanos,
    /// The early signals' target: a lane whose estimated wait stays past it gets a mark or
    /// a cut segment (see `hierarchy`). The host's is a quarter of its bound, at most
    /// [`HOST_SIGNAL_TARGET`]; the uplink's a quarter of its bound.
    pub target_delay: Nanos,
    /// Bytes always accepted, so slow tenants can hold a few frames (default 64 KiB).
    pub min_bytes: u32,
    /// Frames per tenant; the queue's pre-sized slots (default 4096).
    pub max_frames: u32,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            // One default for the topology file and the shaper: `[host] queue_delay`'s.
            max_delay: nanos(ShapingParams::default().queue_delay),
            target_delay: host_signal_target(ShapingParams::default().queue_delay),
            min_bytes: 64 * 1024,
            max_frames: 4096,
        }
    }
}

/// The longest early-signal target of the host's shaper (CoDel's 5 ms): a sender that
/// slows down for a mark or one lost segment keeps its queue near it, however far the
/// bound is.
pub const HOST_SIGNAL_TARGET: std::time::Duration = std::time::Duration::from_millis(5);

/// The host shaper's signal target for the bound `queue_delay`.
fn host_signal_target(queue_delay: std::time::Duration) -> Nanos {
    nanos((queue_delay / 4).min(HOST_SIGNAL_TARGET))
}

impl QueueLimits {
    /// Return how long a lane's wait must stay past the target before its first signal
    /// (and the spacing of later ones): four targets.
    pub fn signal_interval(&self) -> Nanos {
        self.target_delay.saturating_mul(4)
    }

    /// Return the byte bound of a tenant with this ceiling: `max(min_bytes, ceiling × max_delay)`.
    pub fn byte_limit(&self, ceiling: Rate) -> u64 {
        u64::from(self.min_bytes).max(bytes_in(ceiling, self.max_delay))
    }
}

/// Bucket sizes: every bucket holds `max(min_bytes, rate × time)`.
///
/// Because buckets may go into debt, any size lets MTU and 64 KB GSO frames through at the
/// configured rate. The burst bounds what an idle sender banks (and so how much a wake-up
/// can disturb others: the pool pays the bank back from the spare) and how much burstiness a
/// sender under its rate absorbs without queueing. The floor of one 64 KiB GSO frame lets a
/// tenant under its guarantee send a GSO frame without waiting, even at a few Mbit/s; at
/// high rates, 1 ms of traffic dominates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstConfig {
    /// Time of traffic at the bucket's rate (default 1 ms).
    pub time: Nanos,
    /// Floor (default 64 KiB: one GSO frame).
    pub min_bytes: u32,
}

impl Default for BurstConfig {
    fn default() -> Self {
        BurstConfig {
            time: nanos(ShapingParams::default().burst),
            min_bytes: 64 * 1024,
        }
    }
}

impl BurstConfig {
    /// Return the burst in bytes of a bucket with this rate.
    pub fn bytes_for(&self, rate: Rate) -> u64 {
        u64::from(self.min_bytes).max(bytes_in(rate, self.time))
    }
}

/// Return a duration in nanoseconds (saturating; topology durations are at most 1 s).
fn nanos(d: std::time::Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Return the bytes `rate` carries in `time` (rounded down, saturating).
fn bytes_in(rate: Rate, time: Nanos) -> u64 {
    // bits/s × ns < 2¹²⁸; / 8·10⁹ gives bytes.
    let bytes = u128::from(rate.bits_per_sec()) * u128::from(time) / 8_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

impl ShaperConfig {
    /// Return this configuration with the capacity and every ceiling raised to at least
    /// [`MIN_RATE`], the rate below which a queued frame could wait for days. Validated
    /// topologies never go below it; this keeps the bound for configs built by hand.
    /// Guarantees may stay lower (even zero): a frame short of guaranteed tokens borrows.
    pub(crate) fn with_rate_floor(mut self) -> ShaperConfig {
        self.capacity = self.capacity.max(MIN_RATE);
        for tenant in &mut self.tenants {
            tenant.ceiling = tenant.ceiling.max(MIN_RATE);
            for port in &mut tenant.ports {
                port.ceiling = port.ceiling.map(|c| c.max(MIN_RATE));
            }
        }
        self
    }

    /// Build the uplink shapers' view of a topology (one per direction, alike): the
    /// uplink's capacity shared among the routed tenants by their uplink rates; their
    /// servers share one lane per tenant. No uplink: no tenants.
    pub fn uplink_from_topology(t: &Topology) -> ShaperConfig {
        let host = ShaperConfig::from_topology(t);
        let tenants = t
            .tenants
            .iter()
            .filter_map(|tenant| {
                let uplink = tenant.uplink.as_ref()?;
                Some(TenantConfig {
                    id: tenant.id,
                    guaranteed: uplink.guaranteed,
                    ceiling: uplink.ceiling,
                    weight: uplink.weight,
                    ports: Vec::new(),
                })
            })
            .collect();
        let queue = match &t.uplink {
            Some(uplink) => QueueLimits {
                max_delay: nanos(uplink.queue_delay),
                target_delay: nanos(uplink.queue_delay / 4),
                ..host.queue
            },
            None => host.queue,
        };
        ShaperConfig {
            capacity: t.uplink.as_ref().map_or(MIN_RATE, |u| u.capacity),
            tenants,
            queue,
            ..host
        }
    }

    /// Build the shaper's view of a topology, with default queue and burst sizes.
    pub fn from_topology(t: &Topology) -> ShaperConfig {
        let tenants = t
            .tenants
            .iter()
            .map(|tenant| TenantConfig {
                id: tenant.id,
                guaranteed: tenant.guaranteed,
                ceiling: tenant.ceiling,
                weight: tenant.weight,
                ports: t
                    .servers_of(tenant.id)
                    .map(|server| PortConfig {
                        id: server.id,
                        guaranteed: server.guaranteed,
                        ceiling: server.ceiling,
                    })
                    .collect(),
            })
            .collect();
        ShaperConfig {
            capacity: t.capacity,
            tenants,
            queue: QueueLimits {
                max_delay: nanos(t.shaping.queue_delay),
                target_delay: host_signal_target(t.shaping.queue_delay),
                ..QueueLimits::default()
            },
            burst: BurstConfig {
                time: nanos(t.shaping.burst),
                ..BurstConfig::default()
            },
        }
    }
}

/// The parameters of every shaper of the data path: the host's (traffic inside tenants)
/// and the uplink's (routed traffic, one shaper per direction, alike).
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    pub host: ShaperConfig,
    pub uplink: ShaperConfig,
}

impl Shaping {
    /// Build every shaper's view of a topology.
    pub fn from_topology(t: &Topology) -> Shaping {
        Shaping {
            host: ShaperConfig::from_topology(t),
            uplink: ShaperConfig::uplink_from_topology(t),
        }
    }

    /// Shaping without an uplink: the host's shaper only.
    pub fn host_only(host: ShaperConfig) -> Shaping {
        let uplink = ShaperConfig {
            capacity: MIN_RATE,
            tenants: Vec::new(),
            ..host.clone()
        };
        Shaping { host, uplink }
    }
}

/// What [`Shaper::offer`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Send the item now.
    Send(T),
    /// The item waits in the tenant's queue; [`Shaper::release`] will hand it back.
    Queued,
    /// The queue is full (or the tenant unknown): the item is handed back, not sent.
    Dropped(T),
}

/// What the caller did with a frame the shaper gave it to tell its sender that the queue
/// is growing ([`Shaper::offer_signalled`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// Marked Congestion Experienced (ECN): it goes on whole, nothing is lost.
    Marked,
    /// One segment was cut off it; what is left is charged this many bytes.
    Cut(u32),
    /// Neither was possible (not TCP, or a single segment): it goes on unchanged. Dropping
    /// it instead would only add losses for senders that do not slow down for them.
    Unable,
}

/// How strong a signal a frame may carry ([`Shaper::offer_signalled`]): an ECN mark loses
/// nothing, so it comes at the signal target; a cut segment must be retransmitted, and
/// BBR does not slow down for one, so it comes only once the wait passes a quarter of the
/// bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Past the signal target: an ECN mark only.
    MarkOnly,
    /// Past a quarter of the bound as well: a mark, or else one segment cut.
    MarkOrCut,
}

/// One tenant's counters (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantCounters {
    /// Frames sent on the tenant's own (guaranteed) tokens.
    pub own_frames: u64,
    /// Bytes sent on the tenant's own tokens.
    pub own_bytes: u64,
    /// Frames sent on tokens borrowed from the host.
    pub borrowed_frames: u64,
    /// Bytes sent on borrowed tokens.
    pub borrowed_bytes: u64,
    /// Frames waiting in the queue now.
    pub queued_frames: u64,
    /// Bytes waiting in the queue now.
    pub queued_bytes: u64,
    /// Frames dropped (queue full).
    pub dropped_frames: u64,
    /// Bytes dropped.
    pub dropped_bytes: u64,
    /// Frames marked Congestion Experienced to slow their sender down.
    pub marked_frames: u64,
    /// Frames that lost a segment to slow their sender down.
    pub cut_frames: u64,
}

impl TenantCounters {
    /// Return all frames sent (own and borrowed).
    pub fn sent_frames(&self) -> u64 {
        self.own_frames + self.borrowed_frames
    }

    /// Return all bytes sent (own and borrowed).
    pub fn sent_bytes(&self) -> u64 {
        self.own_bytes + self.borrowed_bytes
    }

    /// Return these counters and `other`'s added (one tenant over several shapers).
    pub fn plus(self, other: &TenantCounters) -> TenantCounters {
        TenantCounters {
            own_frames: self.own_frames + other.own_frames,
            own_bytes: self.own_bytes + other.own_bytes,
            borrowed_frames: self.borrowed_frames + other.borrowed_frames,
            borrowed_bytes: self.borrowed_bytes + other.borrowed_bytes,
            queued_frames: self.queued_frames + other.queued_frames,
            queued_bytes: self.queued_bytes + other.queued_bytes,
            dropped_frames: self.dropped_frames + other.dropped_frames,
            dropped_bytes: self.dropped_bytes + other.dropped_bytes,
            marked_frames: self.marked_frames + other.marked_frames,
            cut_frames: self.cut_frames + other.cut_frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Server, Tenant};
    use crate::wire::MacAddr;

    fn server(id: u32, tenant: u32, guaranteed: Option<Rate>, ceiling: Option<Rate>) -> Server {
        Server {
            id: PortId(id),
            name: format!("s{id}"),
            tenant: TenantId(tenant),
            mac: MacAddr([2, 0, 0, 0, 0, u8::try_from(id).unwrap()]),
            ip: format!("10.0.0.{}/24", id + 1).parse().unwrap(),
            ipv6: None,
            netns: format!("s{id}"),
            mtu: 1500,
            guaranteed,
            ceiling,
            dhcp: false,
        }
    }

    #[test]
    fn from_topology_maps_tenants_and_servers() {
        let mbit = |n: u64| Rate::from_bits_per_sec(n * 1_000_000);
        let tenant = |id, name: &str, g, c, weight| Tenant {
            id: TenantId(id),
            name: name.to_string(),
            guaranteed: mbit(g),
            ceiling: mbit(c),
            weight,
            broadcast_pps: 1000,
            gateway: None,
            nat: false,
            uplink: None,
            vni: None,
        };
        let topology = Topology {
            name: "t".into(),
            source: Default::default(),
            capacity: mbit(1000),
            shaping: Default::default(),
            uplink: None,
            cluster: None,
            tenants: vec![tenant(0, "a", 300, 1000, 2), tenant(1, "b", 200, 500, 1)],
            servers: vec![
                server(0, 0, Some(mbit(100)), None),
                server(1, 1, None, Some(mbit(50))),
                server(2, 0, None, None),
            ],
        };
        let config = ShaperConfig::from_topology(&topology);
        assert_eq!(config.capacity, mbit(1000));
        assert_eq!(
            config.tenants[0],
            TenantConfig {
                id: TenantId(0),
                guaranteed: mbit(300),
                ceiling: mbit(1000),
                weight: 2,
                ports: vec![
                    PortConfig {
                        id: PortId(0),
                        guaranteed: Some(mbit(100)),
                        ceiling: None
                    },
                    PortConfig {
                        id: PortId(2),
                        guaranteed: None,
                        ceiling: None
                    },
                ],
            }
        );
        assert_eq!(config.tenants[1].ports.len(), 1);
        assert_eq!(config.tenants[1].ports[0].ceiling, Some(mbit(50)));
        let shaper: Shaper<()> = Shaper::new(config, 0);
        assert!(shaper.is_valid());
    }

    #[test]
    fn default_sizes() {
        let g = Rate::from_bits_per_sec(1_000_000_000);
        assert_eq!(BurstConfig::default().bytes_for(g), 125_000);
        assert_eq!(
            BurstConfig::default().bytes_for(Rate::from_bits_per_sec(1_000_000)),
            65_536
        );
        assert_eq!(QueueLimits::default().byte_limit(g), 12_500_000);
        assert_eq!(
            QueueLimits::default().byte_limit(Rate::from_bits_per_sec(1_000_000)),
            65_536
        );
    }
}
