//! The hierarchy: host capacity → tenants → ports, with guarantees first and the spare lent
//! by weight.
//!
//! Contract: a tenant under its guarantee sends without waiting for the host or for any
//! borrower; the spare is shared among backlogged tenants in proportion to their weights,
//! each capped by its ceiling; the same holds among a tenant's ports within what the tenant
//! sends. Every queued item leaves exactly once, in FIFO order within its port.
//!
//! # Algorithm
//!
//! Buckets (see [`super::bucket`]: debt allowed, idle ones bank at most one burst):
//! - each tenant has a **guarantee** bucket (rate `guaranteed`) and a **ceiling** bucket
//!   (rate `ceiling`);
//! - the host has a **pool** of spare tokens ([`Pool`]) that fills at `capacity` minus the
//!   guaranteed rates currently *reserved* (below);
//! - each port with its own rates has a guarantee/ceiling pair inside its tenant (a missing
//!   guarantee means none, a missing ceiling means no limit of its own).
//!
//! A tenant with a non-empty queue is *backlogged*; it may send its next frame
//! - **on its own tokens** when its guarantee and ceiling buckets are non-negative, without
//!   looking at the pool: guaranteed traffic never waits for the host or for borrowers. The
//!   frame is charged to the guarantee and ceiling buckets. Of the pool, it takes the part
//!   paid from the tenant's bank (tokens it saved while idle, which the pool meanwhile lent
//!   out), and it *reserves* the tenant's guaranteed rate until the rest, the guarantee's
//!   debt, is repaid. A backlogged tenant is thus always in debt and reserves exactly its
//!   guarantee; an idle one releases it one frame time after its last frame. Coincident
//!   guaranteed GSO frames therefore do not knock the pool into debt. HTB-style charging of
//!   whole own frames to the host makes the host oscillate below zero by the size of the
//!   coincident guaranteed frames, a debt repaid only from the spare, i.e. at the rate of a
//!   tenant that just fell idle when Σ guaranteed ≈ capacity. In the simulations both
//!   variants met the 10 ms bound, so the reservation is a margin for small idle shares
//!   next to many GSO senders rather than a measured win;
//! - **on borrowed tokens** when the pool and its ceiling bucket are non-negative. The frame
//!   is charged to the ceiling bucket and the pool (not the guarantee: borrowing must not eat
//!   the tenant's own tokens).
//!
//! [`Shaper::release`] runs two phases at `now`: first every backlogged tenant sends on its own
//! tokens while it can (so guarantees are served first), then, while the pool is
//! non-negative, the borrower to serve is chosen by **start-time fair queuing** (SFQ, Goyal et
//! al.) on borrowed bytes: each tenant keeps a finish tag `F`; the candidate start tag is
//! `S = max(V, F)`, the eligible tenant (ceiling and port ready) with the smallest `S` sends,
//! then `F = S + bytes / weight` and the virtual time `V = S`. A tenant served only within
//! its guarantee never advances `F`, so the spare alone is split by weight. Clamping at `V`
//! means an idle or ceiling-capped tenant cannot bank credit and rush the others later.
//!
//! Why this gives the entitlement: own-token sends of a backlogged tenant run at exactly its
//! guarantee; the pool fills at `capacity − Σ own rates` and borrowers send whenever it is
//! non-negative, so borrowers together get the spare (work conservation); SFQ splits it in
//! proportion to weight among the tenants that can take it, and a tenant stopped by its
//! ceiling or by its demand leaves its part to the others: weighted max-min fairness, i.e.
//! the water-filling of the spare. A frame offered to a tenant with an empty queue goes at
//! once if it could have been released at `now` and no one else is due (the next-release
//! time is after `now`), so an under-guarantee tenant sees no queueing delay.
//!
//! Bounds: over any interval the total sent is at most `capacity × length` plus the pool's
//! burst plus, per tenant, its guarantee burst and one frame. A tenant waking up spends its
//! bank at once; the pool pays that back from the spare, so borrowers lose at most that bank
//! (measured: ≤ 3 ms of disturbance at 1 Gbit/s with 64 KiB banks).
//!
//! Inside a tenant, the frame to send (whichever kind of token pays for it) is taken from its
//! ports' lanes by the same rule one level down: a lane under its own guarantee (and ceiling)
//! first, else the lane with the smallest SFQ start tag (weight 1) among lanes under their
//! ceiling. Unlisted ports share a default lane.
//!
//! Inside a lane, **sparse flows go first** (the idea of fq_codel's new-flow list): a small
//! frame (≤ [`SPARSE_MAX_BYTES`]) of a flow with nothing queued in its tenant joins the lane's
//! `sparse` list, served before its bulk list, so a ping, a DNS query or a TCP handshake
//! does not wait behind its own tenant's 64 KB bulk frames. No flow is reordered: a frame
//! goes sparse only when no frame of its flow bucket is queued anywhere in the tenant, and
//! the sparse list drains first. Tokens are charged exactly as before; only the order inside
//! one tenant's lane changes.
//!
//! **Early signals** ([`Shaper::offer_signalled`]): a bulk frame queued while its lane's
//! wait is past a target ([`QueueLimits::target_delay`], far below the delay bound) may be
//! handed back to the caller to mark (ECN), and once the wait is past a quarter of the
//! bound as well, to cut one segment from ([`super::Allowed`]): a mark costs the sender
//! nothing, a cut segment a retransmission. Signals come after the wait has been past the
//! target for an interval (four targets), then up to twice per interval while it stays
//! there (CoDel's
//! control law, Nichols and Jacobson, capped). A TCP sender thus slows down on one mark or
//! one lost segment before the queue reaches its bound, where a whole 64 KB super-frame (44
//! segments) would go.
//!
//! Cost: `offer` is O(ports of the tenant); each released frame is O(backlogged tenants +
//! ports of the sending tenant); no allocation except in `new` and `reconfigure`.

use super::bucket::{Bucket, FINE_PER_BYTE, NEVER, Pool};
use super::queue::{Arena, Fifo, NO_FLOW};
use super::{
    Admit, Allowed, Nanos, PortConfig, QueueLimits, ShaperConfig, Signalled, TenantConfig,
    TenantCounters,
};
use crate::topology::{PortId, Rate, TenantId};

/// No slot / not backlogged.
const NONE: u32 = u32::MAX;

/// Flow buckets per tenant: how many flows can be told apart when deciding "sparse".
const FLOW_BUCKETS: u16 = 1024;
/// The largest frame (charged bytes) that may take a lane's sparse list: MTU-sized frames
/// and smaller, never a GSO super-frame.
pub const SPARSE_MAX_BYTES: u32 = 2048;

/// Fixed point of SFQ tags: a frame of `b` bytes at weight `w` advances its tag by
/// `(b << TAG_SHIFT) / w`. `b < 2³²` so one step is < 2⁶⁴ and a u128 tag never overflows.
const TAG_SHIFT: u32 = 32;

/// Return the SFQ tag step of `bytes` at `weight`.
fn tag_step(bytes: u32, weight: u32) -> u128 {
    (u128::from(bytes) << TAG_SHIFT) / u128::from(weight.max(1))
}

/// A port's queue inside its tenant, with its optional rates.
#[derive(Debug)]
struct Lane {
    port: Option<PortId>,
    guarantee: Option<Bucket>,
    ceiling: Option<Bucket>,
    /// SFQ finish tag of this lane's bytes sent beyond its own guarantee.
    tag: u128,
    /// Bulk list.
    fifo: Fifo,
    /// Frames of flows that had nothing queued: sent before `fifo`.
    sparse: Fifo,
    /// When the lane's senders are next told to slow down with a mark.
    marks: Signals,
    /// When with a cut segment: the same law on its own target and interval.
    cuts: Signals,
}

/// How full a queue is for a frame offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// It waits no longer than the signal target.
    Fits,
    /// It waits longer than the target, within the bound.
    Congested,
    /// It waits longer than a quarter of the bound too (the cut target), within it.
    Deep,
    /// Over a bound: it is dropped.
    Full,
}

/// The n-th signal of a spell comes `interval / √n` after the one before, up to this n:
/// signals at most twice per interval. CoDel's law unbounded made 16 BBR flows of one
/// tenant (which do not slow down for a lost segment) retransmit 15 062 segments in 6 s,
/// against 3 445 with the cap; one CUBIC or BBR flow per tenant signalled as often either
/// way (measured with iperf3 on this VM, `guarantee` and `aggressor` set-ups).
const MAX_ESCALATION: u32 = 4;

/// When a lane's senders are next told to slow down, by CoDel's control law: once the wait
/// has stayed past the target for an interval, then after `interval / √n` for the n-th
/// signal (n at most [`MAX_ESCALATION`]), until the wait is back under the target.
#[derive(Debug, Clone, Copy, Default)]
struct Signals {
    /// Since when the wait has been past the target; `None` while it is not.
    above_since: Option<Nanos>,
    /// Signals given since then.
    count: u32,
    next: Nanos,
}

impl Signals {
    /// Record a bulk frame's room at `now`; return true if it is to carry a signal.
    fn due(&mut self, room: Room, now: Nanos, interval: Nanos) -> bool {
        match room {
            Room::Fits => {
                self.above_since = None;
                self.count = 0;
                return false;
            }
            // Dropped at the bound: the wait is still past the target, the spell goes on.
            Room::Full => return false,
            Room::Congested | Room::Deep => {}
        }
        let since = *self.above_since.get_or_insert(now);
        if now < since.saturating_add(interval) || now < self.next {
            return false;
        }
        self.count = self.count.saturating_add(1);
        // Precision is irrelevant here: a few ns either way.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let gap = (interval as f64 / f64::from(self.count.min(MAX_ESCALATION)).sqrt()) as Nanos;
        self.next = now.saturating_add(gap);
        true
    }
}

impl Lane {
    fn new(config: Option<&PortConfig>, burst: &super::BurstConfig, now: Nanos) -> Lane {
        let bucket = |rate: Option<Rate>| rate.map(|r| Bucket::new(r, burst.bytes_for(r), now));
        Lane {
            port: config.map(|c| c.id),
            guarantee: bucket(config.and_then(|c| c.guaranteed)),
            ceiling: bucket(config.and_then(|c| c.ceiling)),
            tag: 0,
            fifo: Fifo::default(),
            sparse: Fifo::default(),
            marks: Signals::default(),
            cuts: Signals::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.fifo.is_empty() && self.sparse.is_empty()
    }

    /// Update rates in place, keeping levels, tag and queue.
    fn reconfigure(&mut self, config: &PortConfig, burst: &super::BurstConfig, now: Nanos) {
        let update = |bucket: &mut Option<Bucket>, rate: Option<Rate>| match (bucket.as_mut(), rate)
        {
            (Some(b), Some(r)) => b.reconfigure(r, burst.bytes_for(r), now),
            (_, r) => *bucket = r.map(|r| Bucket::new(r, burst.bytes_for(r), now)),
        };
        update(&mut self.guarantee, config.guaranteed);
        update(&mut self.ceiling, config.ceiling);
    }

    /// Return when this lane's ceiling allows a frame.
    fn ready_at(&self, now: Nanos) -> Nanos {
        self.ceiling.as_ref().map_or(now, |c| c.ready_at(now))
    }

    fn under_ceiling(&self, now: Nanos) -> bool {
        self.ceiling.as_ref().is_none_or(|c| c.is_ready(now))
    }

    fn under_guarantee(&self, now: Nanos) -> bool {
        self.guarantee.as_ref().is_some_and(|g| g.is_ready(now))
    }

    fn is_valid(&self) -> bool {
        self.guarantee.as_ref().is_none_or(Bucket::is_valid)
            && self.ceiling.as_ref().is_none_or(Bucket::is_valid)
    }
}

/// Normalized tenant rates: guarantee ≤ capacity, guarantee ≤ ceiling ≤ capacity.
fn tenant_rates(config: &TenantConfig, capacity: Rate) -> (Rate, Rate) {
    let guaranteed = config.guaranteed.min(capacity);
    let ceiling = config.ceiling.min(capacity).max(guaranteed);
    (guaranteed, ceiling)
}

/// One tenant: its buckets, lanes, queue and counters.
#[derive(Debug)]
struct Tenant<T> {
    id: TenantId,
    weight: u32,
    guarantee: Bucket,
    ceiling: Bucket,
    /// SFQ finish tag of the tenant's borrowed bytes.
    tag: u128,
    /// SFQ virtual time among this tenant's lanes.
    lane_vtime: u128,
    /// `lanes[0]` is the default lane (unlisted ports); the others follow `config.ports`.
    lanes: Vec<Lane>,
    arena: Arena<T>,
    /// Queued frames per flow bucket (both lists, all lanes).
    flows: Vec<u32>,
    queued_bytes: u64,
    byte_limit: u64,
    limits: QueueLimits,
    counters: TenantCounters,
    /// Index in [`Shaper::backlogged`], or [`NONE`].
    backlog_pos: u32,
}

impl<T> Tenant<T> {
    fn new(config: &TenantConfig, shaper: &ShaperConfig, now: Nanos) -> Tenant<T> {
        let (guaranteed, ceiling) = tenant_rates(config, shaper.capacity);
        let burst = &shaper.burst;
        let mut lanes = Vec::with_capacity(config.ports.len() + 1);
        lanes.push(Lane::new(None, burst, now));
        lanes.extend(config.ports.iter().map(|p| Lane::new(Some(p), burst, now)));
        Tenant {
            id: config.id,
            weight: config.weight.max(1),
            guarantee: Bucket::new(guaranteed, burst.bytes_for(guaranteed), now),
            ceiling: Bucket::new(ceiling, burst.bytes_for(ceiling), now),
            tag: 0,
            lane_vtime: 0,
            lanes,
            arena: Arena::with_capacity(shaper.queue.max_frames),
            flows: vec![0; usize::from(FLOW_BUCKETS)],
            queued_bytes: 0,
            byte_limit: shaper.queue.byte_limit(ceiling),
            limits: shaper.queue,
            counters: TenantCounters::default(),
            backlog_pos: NONE,
        }
    }

    /// Take new rates, keeping levels, tags, queued frames and counters.
    fn reconfigure(&mut self, config: &TenantConfig, shaper: &ShaperConfig, now: Nanos) {
        let (guaranteed, ceiling) = tenant_rates(config, shaper.capacity);
        let burst = &shaper.burst;
        self.weight = config.weight.max(1);
        self.guarantee
            .reconfigure(guaranteed, burst.bytes_for(guaranteed), now);
        self.ceiling
            .reconfigure(ceiling, burst.bytes_for(ceiling), now);
        self.limits = shaper.queue;
        self.byte_limit = shaper.queue.byte_limit(ceiling);
        self.arena.grow_to(shaper.queue.max_frames);

        let mut old = std::mem::take(&mut self.lanes);
        let mut lanes = Vec::with_capacity(config.ports.len() + 1);
        lanes.push(old.swap_remove(0));
        for port in &config.ports {
            let lane = match old.iter().position(|l| l.port == Some(port.id)) {
                Some(i) => {
                    let mut lane = old.swap_remove(i);
                    lane.reconfigure(port, burst, now);
                    lane
                }
                None => Lane::new(Some(port), burst, now),
            };
            lanes.push(lane);
        }
        // Frames of removed ports keep their order at the tail of the default lane (sparse
        // ones in its sparse list, still ahead of the rest of their flows).
        for mut lane in old {
            self.arena.append(&mut lanes[0].sparse, &mut lane.sparse);
            self.arena.append(&mut lanes[0].fifo, &mut lane.fifo);
        }
        self.lanes = lanes;
    }

    /// Return the signal a bulk frame joining `lane` with `room` may carry now, if one is
    /// due: marks and cuts each keep their own clock, marks on the signal target, cuts on a
    /// quarter of the bound (a cut costs a retransmission, and BBR does not slow down for
    /// one: an early cut would only add losses).
    fn signal_due(&mut self, lane: usize, room: Room, now: Nanos) -> Option<Allowed> {
        let limits = &self.limits;
        let l = &mut self.lanes[lane];
        let mark = l.marks.due(room, now, limits.signal_interval());
        let past_cut_target = match room {
            Room::Congested => Room::Fits,
            other => other,
        };
        let cut = l.cuts.due(past_cut_target, now, limits.max_delay);
        match (mark, cut) {
            (_, true) => Some(Allowed::MarkOrCut),
            (true, false) => Some(Allowed::MarkOnly),
            (false, false) => None,
        }
    }

    fn queued_frames(&self) -> u32 {
        self.arena.used()
    }

    /// Return the earliest time a lane's ceiling lets a queued frame go ([`NEVER`] if empty).
    fn lanes_ready_at(&self, now: Nanos) -> Nanos {
        self.lanes
            .iter()
            .filter(|l| !l.is_empty())
            .map(|l| l.ready_at(now))
            .min()
            .unwrap_or(NEVER)
    }

    /// Return when this tenant can next send, given the host's ready time.
    fn ready_at(&self, now: Nanos, host_at: Nanos) -> Nanos {
        let tokens = self.guarantee.ready_at(now).min(host_at);
        tokens
            .max(self.ceiling.ready_at(now))
            .max(self.lanes_ready_at(now))
    }

    fn can_own(&self, now: Nanos) -> bool {
        self.guarantee.is_ready(now) && self.ceiling.is_ready(now)
    }

    /// Choose the lane to send from: under its guarantee first, else smallest SFQ start tag.
    fn pick_lane(&self, now: Nanos) -> Option<(usize, bool)> {
        let mut best: Option<(usize, u128)> = None;
        for (i, lane) in self.lanes.iter().enumerate() {
            if lane.is_empty() || !lane.under_ceiling(now) {
                continue;
            }
            if lane.under_guarantee(now) {
                return Some((i, true));
            }
            let start = lane.tag.max(self.lane_vtime);
            if best.is_none_or(|(_, s)| start < s) {
                best = Some((i, start));
            }
        }
        best.map(|(i, _)| (i, false))
    }

    /// Pop the head of `lane` and charge the lane's buckets; return the item and its size.
    fn pop_lane(&mut self, lane: usize, lane_own: bool, now: Nanos) -> (T, u32) {
        let l = &mut self.lanes[lane];
        let list = if l.sparse.is_empty() {
            &mut l.fifo
        } else {
            &mut l.sparse
        };
        let popped = self.arena.pop_flow(list);
        // `pick_lane` only returns non-empty lanes.
        let (item, bytes, flow) = popped.expect("picked lane is not empty");
        if let Some(n) = self.flows.get_mut(usize::from(flow)) {
            *n -= 1;
        }
        self.queued_bytes -= u64::from(bytes);
        charge_lane(l, &mut self.lane_vtime, lane_own, bytes, now);
        (item, bytes)
    }

    /// Return the lane of `port` (the default lane if the port is not listed).
    fn lane_of(&self, port: PortId) -> usize {
        self.lanes
            .iter()
            .position(|l| l.port == Some(port))
            .unwrap_or(0)
    }

    /// Check counters against the lanes (O(ports)); `deep` also walks the queues.
    fn is_valid(&self, deep: bool) -> bool {
        let frames: u64 = self
            .lanes
            .iter()
            .map(|l| u64::from(l.fifo.frames()) + u64::from(l.sparse.frames()))
            .sum();
        let bytes: u64 = self
            .lanes
            .iter()
            .map(|l| l.fifo.bytes() + l.sparse.bytes())
            .sum();
        let in_flows: u64 = self.flows.iter().map(|&n| u64::from(n)).sum();
        let shallow = self.guarantee.is_valid()
            && self.ceiling.is_valid()
            && self.weight >= 1
            && self.lanes.iter().all(Lane::is_valid)
            && frames == u64::from(self.arena.used())
            && in_flows <= frames
            && bytes == self.queued_bytes
            && (self.backlog_pos == NONE) == (frames == 0);
        shallow
            && (!deep
                || (self.arena.is_valid()
                    && self.lanes.iter().all(|l| {
                        self.arena.fifo_is_valid(&l.fifo) && self.arena.fifo_is_valid(&l.sparse)
                    })))
    }
}

/// Charge a lane's buckets for a frame; `lane_own` frames go on the lane's guarantee, the
/// others advance its SFQ tag.
fn charge_lane(lane: &mut Lane, vtime: &mut u128, lane_own: bool, bytes: u32, now: Nanos) {
    if let Some(c) = lane.ceiling.as_mut() {
        c.charge(now, bytes);
    }
    if lane_own {
        if let Some(g) = lane.guarantee.as_mut() {
            g.charge(now, bytes);
        }
    } else {
        let start = lane.tag.max(*vtime);
        lane.tag = start + tag_step(bytes, 1);
        *vtime = start;
    }
}

/// Charge and count a frame sent on the tenant's own tokens: guarantee and ceiling buckets;
/// the host pool for the part paid from the tenant's bank, and a reservation of the
/// guaranteed rate from the pool while the rest (the guarantee's debt) is repaid.
fn charge_own<T>(host: &mut Pool, t: &mut Tenant<T>, bytes: u32, now: Nanos) {
    let bank = t.guarantee.bank_at(now);
    t.guarantee.charge(now, bytes);
    t.ceiling.charge(now, bytes);
    host.charge_fine(now, bank.min(i128::from(bytes) * FINE_PER_BYTE));
    reserve_debt(host, &t.guarantee, now);
    t.counters.own_frames += 1;
    t.counters.own_bytes += u64::from(bytes);
}

/// Charge and count a frame sent on borrowed tokens: the tenant's ceiling and the host pool.
/// Its SFQ tag is the caller's to advance (the queue and the express path differ there).
fn charge_borrowed<T>(host: &mut Pool, t: &mut Tenant<T>, bytes: u32, now: Nanos) {
    t.ceiling.charge(now, bytes);
    host.charge(now, bytes);
    t.counters.borrowed_frames += 1;
    t.counters.borrowed_bytes += u64::from(bytes);
}

/// How far into debt a sparse frame may take its tenant's buckets (and the host pool) to go
/// at once: a 64 KiB super-frame and a half. A saturating tenant's buckets owe at most the
/// super-frame just sent, so its ping or handshake goes out at once instead of waiting out
/// that debt (0.5 ms at 1 Gbit/s; its p99 was 1.1 ms); a flood of sparse frames stops here.
const EXPRESS_DEBT: i128 = 96 * 1024;

/// Send a sparse frame of `bytes` on `lane` of tenant `t` at once if its buckets owe no more
/// than [`EXPRESS_DEBT`]: on its own tokens if its guarantee is ready (as any frame), else as
/// a borrowed frame (SFQ tag and all) if the host pool owes no more than that either. Only
/// earlier, never charged less. Return false to queue it instead.
fn express<T>(
    host: &mut Pool,
    vtime: &u128,
    t: &mut Tenant<T>,
    lane: usize,
    bytes: u32,
    now: Nanos,
) -> bool {
    // Levels are in fine units (see `bucket`).
    let within = |level: i128| level >= -EXPRESS_DEBT * FINE_PER_BYTE;
    let l = &t.lanes[lane];
    let lane_ok = l.ceiling.as_ref().is_none_or(|c| within(c.level_at(now)));
    if !lane_ok || !within(t.ceiling.level_at(now)) {
        return false;
    }
    let lane_own = l.under_guarantee(now);
    if t.guarantee.is_ready(now) {
        // A guarantee in debt has its rate reserved from the pool already: only a ready one
        // may charge (and reserve) again, as on the usual path.
        charge_own(host, t, bytes, now);
    } else if within(host.level_at(now)) {
        // Its bytes count towards the tenant's share of the spare (its finish tag), but the
        // virtual time stays the borrowers' own: moved to this tenant's tag, it would take
        // from the others the credit they have (5:3 loans came out 1.7% off).
        t.tag = t.tag.max(*vtime) + tag_step(bytes, t.weight);
        charge_borrowed(host, t, bytes, now);
    } else {
        return false;
    }
    charge_lane(&mut t.lanes[lane], &mut t.lane_vtime, lane_own, bytes, now);
    true
}

/// Reserve the guarantee's rate from the pool until its debt is repaid (if in debt).
fn reserve_debt(host: &mut Pool, guarantee: &Bucket, now: Nanos) {
    if !guarantee.is_ready(now) {
        host.reserve(now, guarantee.rate(), guarantee.ready_at(now));
    }
}

/// The per-tenant shaper. `T` is the caller's queued item (e.g. a pooled buffer handle).
#[derive(Debug)]
pub struct Shaper<T> {
    config: ShaperConfig,
    host: Pool,
    tenants: Vec<Tenant<T>>,
    /// `TenantId.0` → index in `tenants`, or [`NONE`].
    slot_of: Vec<u32>,
    /// Slots of tenants with queued frames (any order).
    backlogged: Vec<u32>,
    /// SFQ virtual time among borrowing tenants.
    vtime: u128,
    /// A lower bound on the next release time; `None` when nothing is queued.
    next: Option<Nanos>,
    /// Latest `now` seen.
    clock: Nanos,
    /// Frames offered for tenants not in the configuration.
    unknown_drops: u64,
}

impl<T> Shaper<T> {
    /// Build a shaper with full buckets at `now`.
    pub fn new(config: ShaperConfig, now: Nanos) -> Self {
        let config = config.with_rate_floor();
        let capacity = config.capacity;
        let mut shaper = Shaper {
            host: Pool::new(
                capacity,
                config.burst.bytes_for(capacity),
                now,
                config.tenants.len(),
            ),
            tenants: Vec::new(),
            slot_of: Vec::new(),
            backlogged: Vec::new(),
            vtime: 0,
            next: None,
            clock: now,
            unknown_drops: 0,
            config: ShaperConfig {
                tenants: Vec::new(),
                ..config.clone()
            },
        };
        let evicted = shaper.reconfigure(config, now);
        debug_assert!(evicted.is_empty());
        shaper
    }

    /// Return the configuration in force.
    pub fn config(&self) -> &ShaperConfig {
        &self.config
    }

    fn slot(&self, tenant: TenantId) -> Option<usize> {
        match self.slot_of.get(tenant.index()) {
            Some(&slot) if slot != NONE => Some(slot as usize),
            _ => None,
        }
    }

    /// Offer one frame of `bytes` from `port` of `tenant`: send now, queue, or drop (queue full).
    pub fn offer(
        &mut self,
        now: Nanos,
        tenant: TenantId,
        port: PortId,
        bytes: u32,
        item: T,
    ) -> Admit<T> {
        self.offer_flow(now, tenant, port, bytes, item, None)
    }

    /// [`Shaper::offer`] for a frame of flow `flow` (a hash, see `wire::flow`): a small frame
    /// of a flow with nothing queued goes ahead of its lane's bulk frames.
    pub fn offer_flow(
        &mut self,
        now: Nanos,
        tenant: TenantId,
        port: PortId,
        bytes: u32,
        item: T,
        flow: Option<u32>,
    ) -> Admit<T> {
        let no_signals: Option<fn(&mut T, Allowed) -> Signalled> = None;
        self.offer_with(now, tenant, port, bytes, item, flow, no_signals)
    }

    /// [`Shaper::offer_flow`] with early congestion signals: when a bulk frame joins a
    /// queue whose wait has been past the target long enough (see the module's "Early
    /// signals"), it is handed to `signal` first, which marks it, cuts a segment off it, or
    /// leaves it (a frame that is not TCP: it is queued as it is; only the bound drops).
    #[allow(clippy::too_many_arguments)] // offer_flow's, and the signal
    pub fn offer_signalled(
        &mut self,
        now: Nanos,
        tenant: TenantId,
        port: PortId,
        bytes: u32,
        item: T,
        flow: Option<u32>,
        signal: impl FnOnce(&mut T, Allowed) -> Signalled,
    ) -> Admit<T> {
        self.offer_with(now, tenant, port, bytes, item, flow, Some(signal))
    }

    #[allow(clippy::too_many_arguments)]
    fn offer_with(
        &mut self,
        now: Nanos,
        tenant: TenantId,
        port: PortId,
        mut bytes: u32,
        mut item: T,
        flow: Option<u32>,
        signal: Option<impl FnOnce(&mut T, Allowed) -> Signalled>,
    ) -> Admit<T> {
        let now = self.tick(now);
        let Some(slot) = self.slot(tenant) else {
            self.unknown_drops += 1;
            return Admit::Dropped(item);
        };
        let nobody_due = self.next.is_none_or(|next| next > now);
        let host_ready = self.host.is_ready(now);
        let t = &mut self.tenants[slot];
        let lane = t.lane_of(port);

        if t.queued_frames() == 0 && t.ceiling.is_ready(now) && t.lanes[lane].under_ceiling(now) {
            let lane_own = t.lanes[lane].under_guarantee(now);
            if t.guarantee.is_ready(now) {
                // Own tokens: never wait for the host or for borrowers.
                charge_own(&mut self.host, t, bytes, now);
                charge_lane(&mut t.lanes[lane], &mut t.lane_vtime, lane_own, bytes, now);
                return Admit::Send(item);
            }
            if host_ready && nobody_due {
                // Borrow: the host has tokens and no queued frame is due, so no one is passed.
                let start = t.tag.max(self.vtime);
                t.tag = start + tag_step(bytes, t.weight);
                self.vtime = start;
                charge_borrowed(&mut self.host, t, bytes, now);
                charge_lane(&mut t.lanes[lane], &mut t.lane_vtime, lane_own, bytes, now);
                return Admit::Send(item);
            }
        }

        // FLOW_BUCKETS ≤ u16::MAX = NO_FLOW, so a bucket always fits and is never NO_FLOW.
        let bucket = flow.and_then(|h| u16::try_from(h % u32::from(FLOW_BUCKETS)).ok());
        let sparse =
            bytes <= SPARSE_MAX_BYTES && bucket.is_some_and(|b| t.flows[usize::from(b)] == 0);
        if sparse && express(&mut self.host, &self.vtime, t, lane, bytes, now) {
            return Admit::Send(item);
        }
        // `room` also checks the frame count against the arena, so an admitted push fits.
        let room = t.room(lane, bytes, now, sparse);
        if let Some(signal) = signal
            && !sparse
            && let Some(allowed) = t.signal_due(lane, room, now)
        {
            match signal(&mut item, allowed) {
                Signalled::Marked => t.counters.marked_frames += 1,
                Signalled::Cut(left) => {
                    bytes = left;
                    t.counters.cut_frames += 1;
                }
                Signalled::Unable => {}
            }
        }
        let admitted = room != Room::Full;
        let l = &mut t.lanes[lane];
        let list = if sparse { &mut l.sparse } else { &mut l.fifo };
        let pushed = if admitted {
            t.arena
                .push_flow(list, item, bytes, now, bucket.unwrap_or(NO_FLOW))
        } else {
            Err(item)
        };
        if let Err(item) = pushed {
            t.counters.dropped_frames += 1;
            t.counters.dropped_bytes += u64::from(bytes);
            return Admit::Dropped(item);
        }
        t.queued_bytes += u64::from(bytes);
        if let Some(b) = bucket {
            t.flows[usize::from(b)] += 1;
        }
        if t.backlog_pos == NONE {
            t.backlog_pos = u32::try_from(self.backlogged.len()).unwrap_or(NONE);
            self.backlogged.push(u32::try_from(slot).unwrap_or(NONE));
        }
        let ready = t.ready_at(now, self.host.ready_at(now));
        self.next = Some(self.next.map_or(ready, |next| next.min(ready)));
        debug_assert!(self.tenants[slot].is_valid(false));
        Admit::Queued
    }

    /// Release every queued item whose tokens have arrived, in order, through `send`.
    pub fn release(&mut self, now: Nanos, mut send: impl FnMut(T)) {
        let now = self.tick(now);
        // Phase 1: own tokens. Borrowed sends below only lower ceilings, so no tenant can
        // become able to send on its own tokens later in this call.
        let mut i = 0;
        while i < self.backlogged.len() {
            let slot = self.backlogged[i] as usize;
            let t = &mut self.tenants[slot];
            while t.can_own(now) {
                let Some((lane, lane_own)) = t.pick_lane(now) else {
                    break;
                };
                let (item, bytes) = t.pop_lane(lane, lane_own, now);
                charge_own(&mut self.host, t, bytes, now);
                send(item);
                if t.queued_frames() == 0 {
                    break;
                }
            }
            if self.tenants[slot].queued_frames() == 0 {
                self.unlist(slot);
            } else {
                i += 1;
            }
        }
        // Phase 2: borrowing, by SFQ on borrowed bytes / weight.
        while self.host.is_ready(now) {
            let mut best: Option<(usize, u128)> = None;
            for &slot in &self.backlogged {
                let t = &self.tenants[slot as usize];
                if !t.ceiling.is_ready(now) {
                    continue;
                }
                let start = t.tag.max(self.vtime);
                if best.is_some_and(|(_, s)| start >= s) {
                    continue;
                }
                if t.lanes
                    .iter()
                    .any(|l| !l.is_empty() && l.under_ceiling(now))
                {
                    best = Some((slot as usize, start));
                }
            }
            let Some((slot, start)) = best else {
                break;
            };
            let t = &mut self.tenants[slot];
            let Some((lane, lane_own)) = t.pick_lane(now) else {
                break; // unreachable: checked above
            };
            let (item, bytes) = t.pop_lane(lane, lane_own, now);
            t.tag = start + tag_step(bytes, t.weight);
            self.vtime = start;
            charge_borrowed(&mut self.host, t, bytes, now);
            send(item);
            if t.queued_frames() == 0 {
                self.unlist(slot);
            }
        }
        self.next = self.exact_next(now);
    }

    /// When the next queued item may go (None when nothing is queued): arm a timer for it.
    ///
    /// The time may be early (then [`Shaper::release`] sends nothing and computes the next);
    /// it is never late. `Some(u64::MAX)` means queued frames can never go (zero rates).
    pub fn next_release(&self) -> Option<Nanos> {
        self.next
    }

    /// Swap parameters at `now`, keeping queued frames, token levels, tags and counters.
    ///
    /// Tenants are matched by id and ports by id; a removed port's frames move to its
    /// tenant's default lane. Returns the items queued for removed tenants (their counters
    /// go with them): the caller recycles them.
    pub fn reconfigure(&mut self, config: ShaperConfig, now: Nanos) -> Vec<T> {
        let now = self.tick(now);
        let config = config.with_rate_floor();
        let capacity = config.capacity;
        self.host
            .reconfigure(capacity, config.burst.bytes_for(capacity), now);
        self.host.reserve_capacity(config.tenants.len());
        let mut old: Vec<Option<Tenant<T>>> = std::mem::take(&mut self.tenants)
            .into_iter()
            .map(Some)
            .collect();
        let old_slot_of = std::mem::take(&mut self.slot_of);
        let mut tenants = Vec::with_capacity(config.tenants.len());
        for tc in &config.tenants {
            let existing = old_slot_of
                .get(tc.id.index())
                .and_then(|&slot| old.get_mut(slot as usize))
                .and_then(Option::take);
            tenants.push(match existing {
                Some(mut t) => {
                    t.reconfigure(tc, &config, now);
                    t
                }
                None => Tenant::new(tc, &config, now),
            });
        }
        let mut evicted = Vec::new();
        for mut t in old.into_iter().flatten() {
            for lane in &mut t.lanes {
                t.arena
                    .drain(&mut lane.sparse, |item, _| evicted.push(item));
                t.arena.drain(&mut lane.fifo, |item, _| evicted.push(item));
            }
        }

        let max_id = tenants.iter().map(|t| t.id.index() + 1).max().unwrap_or(0);
        self.slot_of = vec![NONE; max_id];
        self.backlogged.clear();
        for (slot, t) in tenants.iter_mut().enumerate() {
            let slot = u32::try_from(slot).unwrap_or(NONE);
            self.slot_of[t.id.index()] = slot;
            t.backlog_pos = NONE;
            if t.queued_frames() > 0 {
                t.backlog_pos = u32::try_from(self.backlogged.len()).unwrap_or(NONE);
                self.backlogged.push(slot);
            }
        }
        // Reservations are rebuilt with the new guaranteed rates.
        for t in &tenants {
            reserve_debt(&mut self.host, &t.guarantee, now);
        }
        self.tenants = tenants;
        self.config = config;
        self.next = self.exact_next(now);
        debug_assert!(self.is_valid());
        evicted
    }

    /// Return a snapshot of one tenant's counters (zeros for an unknown tenant).
    pub fn counters(&self, tenant: TenantId) -> TenantCounters {
        self.slot(tenant)
            .map_or_else(TenantCounters::default, |slot| {
                let t = &self.tenants[slot];
                TenantCounters {
                    queued_frames: u64::from(t.queued_frames()),
                    queued_bytes: t.queued_bytes,
                    ..t.counters
                }
            })
    }

    /// Return how many frames were offered for tenants not in the configuration.
    pub fn unknown_drops(&self) -> u64 {
        self.unknown_drops
    }

    /// Return the host pool's burst in bytes (part of what the total may exceed capacity by).
    pub fn host_burst_bytes(&self) -> u64 {
        self.host.burst_bytes()
    }

    /// Check every invariant (walks all queues: for tests and `debug_assert!` off the hot path).
    pub fn is_valid(&self) -> bool {
        let backlog_ok = self.backlogged.iter().enumerate().all(|(pos, &slot)| {
            self.tenants
                .get(slot as usize)
                .is_some_and(|t| t.backlog_pos as usize == pos && t.queued_frames() > 0)
        });
        let slots_ok = self.tenants.iter().enumerate().all(|(slot, t)| {
            self.slot_of.get(t.id.index()) == Some(&u32::try_from(slot).unwrap_or(NONE))
                || self.config.tenants.iter().filter(|c| c.id == t.id).count() > 1
        });
        // The cached next release is a lower bound: never later than the exact one.
        let next_ok = match (self.next, self.exact_next(self.clock)) {
            (None, None) => true,
            (Some(cached), Some(exact)) => cached <= exact,
            _ => false,
        };
        self.host.is_valid()
            && backlog_ok
            && slots_ok
            && next_ok
            && self.tenants.iter().all(|t| t.is_valid(true))
    }

    /// Return the exact earliest time a queued frame can go, `None` when nothing is queued.
    fn exact_next(&self, now: Nanos) -> Option<Nanos> {
        let host_at = self.host.ready_at(now);
        self.backlogged
            .iter()
            .map(|&slot| self.tenants[slot as usize].ready_at(now, host_at))
            .min()
    }

    /// Remove a tenant whose queue emptied from the backlog list.
    fn unlist(&mut self, slot: usize) {
        let pos = self.tenants[slot].backlog_pos as usize;
        self.tenants[slot].backlog_pos = NONE;
        self.backlogged.swap_remove(pos);
        if let Some(&moved) = self.backlogged.get(pos) {
            self.tenants[moved as usize].backlog_pos = u32::try_from(pos).unwrap_or(NONE);
        }
    }

    /// Advance the clock; a `now` earlier than one already seen counts as that one.
    fn tick(&mut self, now: Nanos) -> Nanos {
        debug_assert!(
            now >= self.clock,
            "time went backwards: {now} < {}",
            self.clock
        );
        self.clock = self.clock.max(now);
        self.clock
    }
}

impl<T> Tenant<T> {
    /// Return how full the queue is for a frame of `bytes` on `lane` at `now`: over a bound
    /// ([`Room::Full`]), or its estimated wait against the signal target (a quarter of the
    /// delay bound, CoDel's 5 ms of its 20).
    fn room(&self, lane: usize, bytes: u32, now: Nanos, sparse: bool) -> Room {
        let frames = self.queued_frames();
        if frames == 0 {
            return Room::Fits; // never drop a frame for being big
        }
        if frames >= self.limits.max_frames.min(self.arena.capacity()) {
            return Room::Full;
        }
        if self.queued_bytes + u64::from(bytes) > self.byte_limit {
            return Room::Full;
        }
        // A sparse frame goes ahead of the lane's bulk list: the bulk list's wait is not its.
        if sparse || self.queued_bytes < u64::from(self.limits.min_bytes) {
            return Room::Fits;
        }
        let l = &self.lanes[lane];
        let fifo = &l.fifo;
        let queued = fifo.bytes() + u64::from(bytes);
        // A lane never drains faster than its own ceiling. Before any of its frames has left
        // there is no measured rate, and the tenant's byte bound follows the tenant's
        // ceiling: without this, a port capped far below its tenant filled it (issue 15).
        if let Some(ceiling) = &l.ceiling
            && time_to_send(queued, ceiling.rate()) > u128::from(self.limits.max_delay)
        {
            return Room::Full;
        }
        // Time bound: estimate this frame's wait as the lane's queued bytes over the lane's
        // drain rate, measured as the bytes that were ahead of the head frame (all sent
        // since) over the head's sojourn. The head's sojourn alone lags by one queue length
        // (a queue admitting while its head has waited < 5 ms holds ~5 ms of *arrivals*).
        let Some((since, ahead)) = self.arena.head(fifo) else {
            return Room::Fits;
        };
        let sojourn = now.saturating_sub(since);
        let measured = if ahead == 0 || sojourn == 0 {
            u128::from(sojourn)
        } else {
            // (bytes < 2⁶⁴) × (ns < 2⁶⁴) < 2¹²⁸: no overflow in u128.
            u128::from(queued) * u128::from(sojourn) / u128::from(ahead)
        };
        // One head's sojourn can fool that estimate: a head that waited out the debt of a
        // super-frame sent just before it arrived (so not "ahead") makes the rate look a
        // tenth of what it is, and a 5 ms queue look like 40 (measured: every tail drop of
        // a 200 Mbit/s tenant's TCP flow). A backlogged tenant drains at least at its
        // guarantee, shared by its backlogged lanes: the wait at that rate is a bound. (Only
        // a wait past the target needs it: the usual frame skips the scan of the lanes.)
        let bound = u128::from(self.limits.max_delay);
        let target = u128::from(self.limits.target_delay);
        let wait = if measured <= target {
            measured
        } else {
            let lanes = self.lanes.iter().filter(|l| !l.is_empty()).count().max(1);
            let floor = self.guarantee.rate() / u64::try_from(lanes).unwrap_or(u64::MAX);
            measured.min(time_to_send(queued, floor))
        };
        if wait > bound {
            Room::Full
        } else if wait > bound / 4 {
            Room::Deep
        } else if wait > target {
            Room::Congested
        } else {
            Room::Fits
        }
    }
}

/// Return the nanoseconds `bytes` take at `rate_bps` (a zero rate takes for ever).
fn time_to_send(bytes: u64, rate_bps: u64) -> u128 {
    // bytes × 8·10⁹ < 2⁶⁴ × 2³³: no overflow in u128.
    (u128::from(bytes) * 8_000_000_000)
        .checked_div(u128::from(rate_bps))
        .unwrap_or(u128::MAX)
}

#[cfg(test)]
mod tests {
    use super::super::{BurstConfig, QueueLimits};
    use super::*;

    const MS: Nanos = 1_000_000;

    fn mbit(n: u64) -> Rate {
        Rate::from_bits_per_sec(n * 1_000_000)
    }

    fn tenant(id: u32, g: u64, c: u64, weight: u32) -> TenantConfig {
        TenantConfig {
            id: TenantId(id),
            guaranteed: mbit(g),
            ceiling: mbit(c),
            weight,
            ports: Vec::new(),
        }
    }

    fn config(capacity: u64, tenants: Vec<TenantConfig>) -> ShaperConfig {
        ShaperConfig {
            capacity: mbit(capacity),
            tenants,
            queue: QueueLimits::default(),
            burst: BurstConfig {
                time: MS,
                min_bytes: 3028,
            },
        }
    }

    #[test]
    fn under_guarantee_sends_at_once_even_with_host_in_debt() {
        let mut s = Shaper::new(
            config(
                100,
                vec![
                    tenant(0, 50, 100, 1),
                    tenant(1, 10, 100, 1),
                    tenant(2, 10, 100, 1),
                ],
            ),
            0,
        );
        // Tenants 1 and 2 empty the host pool by borrowing, and keep a backlog.
        let mut sent = 0;
        for i in 0..200 {
            for t in [1, 2] {
                if let Admit::Send(_) = s.offer(0, TenantId(t), PortId(0), 1500, i) {
                    sent += 1;
                }
            }
        }
        s.release(0, |_| sent += 1);
        assert!(sent > 0 && !s.host.is_ready(0));
        assert!(s.counters(TenantId(1)).queued_frames > 0);
        assert_eq!(
            s.offer(0, TenantId(0), PortId(0), 1500, 999),
            Admit::Send(999)
        );
        assert!(s.is_valid());
    }

    #[test]
    fn queued_frames_leave_in_order_and_once() {
        let mut s = Shaper::new(config(10, vec![tenant(0, 10, 10, 1)]), 0);
        let mut out = Vec::new();
        for i in 0..20u32 {
            match s.offer(0, TenantId(0), PortId(0), 1500, i) {
                Admit::Send(i) => out.push(i),
                Admit::Queued => {}
                Admit::Dropped(_) => panic!("dropped"),
            }
        }
        let mut now = 0;
        while let Some(next) = s.next_release() {
            assert!(next > now);
            now = next;
            s.release(now, |i| out.push(i));
            assert!(s.is_valid());
        }
        assert_eq!(out, (0..20).collect::<Vec<_>>());
        // 10 Mbit/s = 1.25 B/µs; the 3028-byte burst lets 3 frames go at once (the third
        // into debt: 3028 − 4500 = −1472 B), then the debt and 16 more frames are paid off.
        assert_eq!(now, 1472 * 800 + 16 * 1_200_000);
        let c = s.counters(TenantId(0));
        assert_eq!((c.sent_frames(), c.queued_frames), (20, 0));
    }

    /// Release everything queued, in order of release; return (item, release time).
    fn release_all(s: &mut Shaper<u32>) -> Vec<(u32, Nanos)> {
        let mut out = Vec::new();
        while let Some(now) = s.next_release() {
            s.release(now, |i| out.push((i, now)));
            assert!(s.is_valid());
        }
        out
    }

    #[test]
    fn a_small_frame_of_an_idle_flow_goes_ahead_of_its_tenants_bulk_frames() {
        let mut s = Shaper::new(config(1000, vec![tenant(0, 1000, 1000, 1)]), 0);
        const BULK: Option<u32> = Some(7);
        const PING: Option<u32> = Some(8);
        // A bulk flow: 64 KB super-frames, 20 of them queued (~10 ms at 1 Gbit/s).
        let mut queued = Vec::new();
        for i in 0..21 {
            match s.offer_flow(0, TenantId(0), PortId(0), 65_536, i, BULK) {
                Admit::Queued => queued.push(i),
                Admit::Send(_) => {}
                Admit::Dropped(_) => panic!("{i} dropped"),
            }
        }
        assert!(queued.len() >= 18, "{queued:?}");
        // A ping of another flow arrives behind them: the buckets owe one super-frame, so
        // it goes at once, charged as usual.
        assert_eq!(
            s.offer_flow(0, TenantId(0), PortId(0), 98, 100, PING),
            Admit::Send(100)
        );
        // A flood of small frames of new flows goes at once only until the buckets owe
        // EXPRESS_DEBT; the rest wait in the sparse list, still ahead of the bulk.
        let mut sparse_queued = Vec::new();
        for i in 200..260 {
            match s.offer_flow(0, TenantId(0), PortId(0), 2048, i, Some(i)) {
                Admit::Queued => sparse_queued.push(i),
                Admit::Send(_) => {}
                Admit::Dropped(_) => panic!("{i} dropped"),
            }
        }
        // (What the bucket banked before the first super-frame, plus EXPRESS_DEBT.)
        let sent_at_once = 60 - sparse_queued.len();
        assert!(
            (2..60).contains(&sent_at_once),
            "{sent_at_once} went at once"
        );
        let out = release_all(&mut s);
        let (first, rest) = out.split_at(sparse_queued.len());
        let first: Vec<u32> = first.iter().map(|&(i, _)| i).collect();
        assert_eq!(first, sparse_queued, "the small frames are the next out");
        // They waited for the tokens of the frames already sent (their debt), not for the
        // 20 queued ahead of them: one 64 KB frame is 0.52 ms at 1 Gbit/s.
        assert!(out[sparse_queued.len() - 1].1 < 2 * MS, "{out:?}");
        let bulk: Vec<u32> = rest.iter().map(|&(i, _)| i).collect();
        assert_eq!(bulk, queued, "bulk stays in order");
    }

    /// Run tenant 0 (guarantee 500 of a 1000 Mbit/s host, ceiling 1000) greedy for 200 ms
    /// with a small frame of a new flow every `sparse_every`; return its Mbit/s.
    fn greedy_with_small_frames(sparse_every: Nanos) -> f64 {
        let mut s = Shaper::new(config(1000, vec![tenant(0, 500, 1000, 1)]), 0);
        let (mut sent, mut queued, mut now, mut flow) = (0u64, 0usize, 0, 1000u32);
        while now < 200 * MS {
            s.release(now, |bytes: u32| {
                sent += u64::from(bytes);
                queued -= 1;
            });
            let mut offer = |bytes: u32, flow: u32, queued: &mut usize| match s.offer_flow(
                now,
                TenantId(0),
                PortId(0),
                bytes,
                bytes,
                Some(flow),
            ) {
                Admit::Send(b) => sent += u64::from(b),
                Admit::Queued => *queued += 1,
                Admit::Dropped(_) => {}
            };
            while queued < 4 {
                offer(65_536, 1, &mut queued);
            }
            if now % sparse_every == 0 {
                flow += 1;
                offer(66, flow, &mut queued);
            }
            assert!(s.is_valid());
            now += MS / 10;
        }
        sent as f64 * 8.0 / 0.2 / 1e6
    }

    #[test]
    fn small_frames_going_at_once_leave_a_tenant_its_loans() {
        let without = greedy_with_small_frames(Nanos::MAX);
        let with = greedy_with_small_frames(MS / 5);
        assert!(without > 950.0 && without < 1050.0, "{without} Mbit/s");
        // Sent at once past its guarantee's debt, each small frame used to reserve the
        // guarantee from the pool again, and the tenant stopped borrowing (537 Mbit/s).
        assert!(
            (with - without).abs() < 0.02 * without,
            "{with} vs {without} Mbit/s"
        );
    }

    #[test]
    fn a_flow_never_overtakes_itself_and_big_or_unhashed_frames_stay_in_line() {
        let mut s = Shaper::new(config(1000, vec![tenant(0, 1000, 1000, 1)]), 0);
        let mut queued = Vec::new();
        let mut offer = |s: &mut Shaper<u32>, bytes: u32, i: u32, flow: Option<u32>| match s
            .offer_flow(0, TenantId(0), PortId(0), bytes, i, flow)
        {
            Admit::Queued => queued.push(i),
            Admit::Send(_) => {}
            Admit::Dropped(_) => panic!("{i} dropped"),
        };
        for i in 0..5 {
            offer(&mut s, 65_536, i, Some(1));
        }
        // Flow 1 has frames queued: its small frame must not pass them.
        offer(&mut s, 66, 10, Some(1));
        // Another flow's super-frame, and a frame with no flow, are not "sparse" either.
        offer(&mut s, 65_536, 11, Some(2));
        offer(&mut s, 66, 12, None);
        // Small frames of a third, idle flow go at once (the buckets owe one super-frame),
        // in their order.
        offer(&mut s, 66, 13, Some(3));
        offer(&mut s, 66, 14, Some(3));
        assert!(!queued.contains(&13) && !queued.contains(&14), "{queued:?}");
        let order: Vec<u32> = release_all(&mut s).into_iter().map(|(i, _)| i).collect();
        assert_eq!(order, queued, "the rest in arrival order");
        assert!(queued.contains(&10) && queued.contains(&12), "{queued:?}");
    }

    #[test]
    fn the_wait_past_its_target_for_an_interval_signals_then_at_most_twice_an_interval() {
        let mut signals = Signals::default();
        let interval = 20 * MS;
        assert!(
            !signals.due(Room::Congested, 0, interval),
            "not yet an interval"
        );
        assert!(!signals.due(Room::Congested, 19 * MS, interval));
        assert!(signals.due(Room::Congested, 20 * MS, interval), "the first");
        assert!(!signals.due(Room::Congested, 39 * MS, interval));
        assert!(
            signals.due(Room::Congested, 40 * MS, interval),
            "interval / √1"
        );
        // interval / √2 ≈ 14.1 ms, then / √3 ≈ 11.5 ms, then never under / √4 = 10 ms.
        assert!(!signals.due(Room::Congested, 54 * MS, interval));
        assert!(signals.due(Room::Congested, 55 * MS, interval));
        assert!(signals.due(Room::Congested, 67 * MS, interval));
        assert!(signals.due(Room::Congested, 77 * MS, interval));
        assert!(
            !signals.due(Room::Congested, 86 * MS, interval),
            "capped at 10 ms"
        );
        assert!(signals.due(Room::Congested, 87 * MS, interval));
        // Under the target once: the spell ends, and the next waits an interval again.
        assert!(!signals.due(Room::Fits, 88 * MS, interval));
        assert!(!signals.due(Room::Congested, 100 * MS, interval));
        assert!(signals.due(Room::Congested, 120 * MS, interval));
        assert!(
            !signals.due(Room::Full, 200 * MS, interval),
            "a dropped frame is no signal"
        );
    }

    /// Offer a 64 KB frame to a 100 Mbit/s tenant every 2 ms (2.6 × its rate) for 400 ms,
    /// with `signal` asked as the shaper decides; return what each offer did, the times the
    /// signal was asked and what it was allowed to be.
    fn overload(signal: Signalled) -> (Vec<&'static str>, Vec<(Nanos, Allowed)>, TenantCounters) {
        let mut s = Shaper::new(config(1000, vec![tenant(0, 100, 100, 1)]), 0);
        let (mut admits, mut asked) = (Vec::new(), Vec::new());
        for i in 0..200u32 {
            let now = u64::from(i) * 2 * MS;
            s.release(now, |_| {});
            let admit = s.offer_signalled(
                now,
                TenantId(0),
                PortId(0),
                65_536,
                i,
                None,
                |_: &mut u32, allowed| {
                    asked.push((now, allowed));
                    signal
                },
            );
            admits.push(match admit {
                Admit::Send(_) => "send",
                Admit::Queued => "queued",
                Admit::Dropped(_) => "dropped",
            });
        }
        (admits, asked, s.counters(TenantId(0)))
    }

    #[test]
    fn a_growing_queue_asks_for_an_early_signal_and_counts_what_was_done() {
        let (_, asked, counters) = overload(Signalled::Cut(64_000));
        assert!(asked.len() >= 3, "{asked:?}");
        // The queue passes the 5 ms target within a few frames: the first signal comes an
        // interval (20 ms) after that, a mark only; marks never come closer than 10 ms.
        assert!(asked[0].0 >= 20 * MS, "{asked:?}");
        assert_eq!(asked[0].1, Allowed::MarkOnly, "{asked:?}");
        let spaced = |kind: Allowed, gap: Nanos| {
            let times: Vec<Nanos> = asked.iter().filter(|a| a.1 == kind).map(|a| a.0).collect();
            times.windows(2).all(|w| w[1] - w[0] >= gap)
        };
        assert!(spaced(Allowed::MarkOnly, 10 * MS), "{asked:?}");
        // Cuts wait for a quarter of the 100 ms bound, an interval of 100 ms, and then
        // never come closer than 50 ms.
        let cuts: Vec<Nanos> = asked
            .iter()
            .filter(|a| a.1 == Allowed::MarkOrCut)
            .map(|a| a.0)
            .collect();
        assert!(!cuts.is_empty() && cuts[0] >= 100 * MS, "{asked:?}");
        assert!(spaced(Allowed::MarkOrCut, 50 * MS), "{asked:?}");
        assert_eq!(counters.cut_frames, asked.len() as u64);
        let (_, asked, counters) = overload(Signalled::Marked);
        assert_eq!(counters.marked_frames, asked.len() as u64);
    }

    #[test]
    fn a_frame_that_cannot_carry_a_signal_is_treated_as_without_signals() {
        let (signalled, asked, counters) = overload(Signalled::Unable);
        assert!(!asked.is_empty());
        assert_eq!((counters.marked_frames, counters.cut_frames), (0, 0));
        let mut s = Shaper::new(config(1000, vec![tenant(0, 100, 100, 1)]), 0);
        let plain: Vec<&str> = (0..200u32)
            .map(|i| {
                let now = u64::from(i) * 2 * MS;
                s.release(now, |_| {});
                match s.offer_flow(now, TenantId(0), PortId(0), 65_536, i, None) {
                    Admit::Send(_) => "send",
                    Admit::Queued => "queued",
                    Admit::Dropped(_) => "dropped",
                }
            })
            .collect();
        assert_eq!(signalled, plain);
        assert!(plain.contains(&"dropped"), "the bound still drops");
    }

    #[test]
    fn big_frame_goes_into_debt() {
        let mut s = Shaper::new(config(10, vec![tenant(0, 10, 10, 1)]), 0);
        assert_eq!(
            s.offer(0, TenantId(0), PortId(0), 65_536, 1),
            Admit::Send(1)
        );
        assert_eq!(s.offer(0, TenantId(0), PortId(0), 65_536, 2), Admit::Queued);
        // Debt of 65 536 − 3028 bytes at 1.25 bytes/µs.
        assert_eq!(s.next_release(), Some((65_536 - 3028) * 800));
    }

    #[test]
    fn removed_tenant_items_come_back() {
        let mut s = Shaper::new(
            config(10, vec![tenant(0, 5, 10, 1), tenant(1, 5, 10, 1)]),
            0,
        );
        let queued = (0..10)
            .filter(|&i| s.offer(0, TenantId(1), PortId(0), 1500, i) == Admit::Queued)
            .count();
        assert!(queued > 0);
        let evicted = s.reconfigure(config(10, vec![tenant(0, 5, 10, 1)]), MS);
        assert_eq!(evicted.len(), queued);
        assert_eq!(s.next_release(), None);
        assert!(s.is_valid());
    }

    #[test]
    fn unknown_tenant_is_dropped() {
        let mut s = Shaper::new(config(10, vec![tenant(0, 5, 10, 1)]), 0);
        assert_eq!(
            s.offer(0, TenantId(7), PortId(0), 100, 'a'),
            Admit::Dropped('a')
        );
        assert_eq!(s.unknown_drops(), 1);
    }
}
