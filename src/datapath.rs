//! The data path: one event loop moving frames from ports through the switch and the shaper
//! to ports.
//!
//! Contract: a single thread owns every port; it never blocks on one port (all fds are
//! non-blocking, edge-triggered on epoll via mio), never allocates per frame in steady state
//! (buffers come from a [`BufferPool`]), never panics on a frame, and never logs per frame:
//! every frame ends up in a counter, as received, sent, or dropped with a [`DropReason`].
//!
//! Per frame: read → [`Switch::decide`] (guard + forward) → [`Shaper::offer`] charged to the
//! sending tenant → write now, or later when [`Shaper::release`] hands the frame back (a
//! timerfd armed at [`Shaper::next_release`] wakes the loop with sub-millisecond precision).
//!
//! Fairness between ports: each readable port is drained at most [`BATCH`] frames per turn,
//! round-robin, so one flooding server cannot monopolise the loop.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, warn};

use crate::kernel::sys::TimerFd;
use crate::pool::{self, BufferPool};
use crate::port::TapPort;
use crate::shaper::{Admit, Nanos, Shaper, ShaperConfig};
use crate::stats::{DropReason, Stats};
use crate::switch::{Decision, Switch};
use crate::topology::PortId;
use crate::wire::vnet::VnetHeader;

/// Frames read from one port before moving on to the next ready port.
pub const BATCH: usize = 64;
/// How often the shaper's counters are copied out for readers on other threads.
const PUBLISH_EVERY: Nanos = 50_000_000;

const WAKER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);

/// Stops a running data path from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Ask the data path to stop; it exits at its next wake-up, which this triggers.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(err) = self.waker.wake() {
            warn!(cause = %err, "cannot wake the data path");
        }
    }
}

/// A frame that passed the switch and waits for (or just got) the shaper's go.
#[derive(Debug)]
pub struct Pending {
    buf: Vec<u8>,
    len: usize,
    ingress: PortId,
    decision: Decision,
}

/// Everything needed to put a frame on the wire, apart from the shaper (so the shaper can
/// hand frames back to it while being borrowed itself).
struct Egress {
    ports: Vec<TapPort>,
    /// Position of each port in `ports`, by `PortId` index.
    slot_of: Vec<Option<usize>>,
    switch: Switch,
    stats: Arc<Stats>,
    pool: BufferPool,
    /// Bytes of virtio-net header before each frame (0 without offloads).
    vnet_hdr_len: usize,
}

/// The event loop's state.
pub struct DataPath {
    poll: Poll,
    egress: Egress,
    shaper: Shaper<Pending>,
    timer: TimerFd,
    /// When the timer was last armed for, to avoid re-arming it for the same instant.
    timer_target: Option<Nanos>,
    clock: Instant,
    stop: Arc<AtomicBool>,
    /// Ports known readable (edge seen, not yet drained to `WouldBlock`), by slot.
    ready: Vec<bool>,
    /// The read buffer: a large pool buffer.
    rx: Vec<u8>,
    last_publish: Nanos,
}

impl DataPath {
    /// Register `ports` with a new poller; return the loop and a handle to stop it.
    pub fn new(
        switch: Switch,
        shaper: ShaperConfig,
        ports: Vec<TapPort>,
        vnet_hdr_len: usize,
        stats: Arc<Stats>,
    ) -> io::Result<(DataPath, StopHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let timer = TimerFd::new()?;
        poll.registry()
            .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        let mut slot_of = vec![None; switch.port_count()];
        for (slot, port) in ports.iter().enumerate() {
            poll.registry().register(
                &mut SourceFd(&port.as_raw_fd()),
                Token(slot),
                Interest::READABLE,
            )?;
            slot_of[port.id().index()] = Some(slot);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let handle = StopHandle {
            stop: stop.clone(),
            waker,
        };
        let ready = vec![false; ports.len()];
        let mut pool = BufferPool::default();
        let rx = pool.take_large();
        Ok((
            DataPath {
                poll,
                egress: Egress {
                    ports,
                    slot_of,
                    switch,
                    stats,
                    pool,
                    vnet_hdr_len,
                },
                shaper: Shaper::new(shaper, 0),
                timer,
                timer_target: None,
                clock: Instant::now(),
                stop,
                ready,
                rx,
                last_publish: 0,
            },
            handle,
        ))
    }

    /// Start the loop on its own thread.
    pub fn spawn(self) -> io::Result<JoinHandle<io::Result<()>>> {
        std::thread::Builder::new()
            .name("netd-datapath".into())
            .spawn(move || self.run())
    }

    fn now(&self) -> Nanos {
        // u64 nanoseconds last 584 years of uptime.
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Run until stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let busy = self.ready.iter().any(|&r| r);
            let timeout = if busy { Some(Duration::ZERO) } else { None };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    TIMER => {
                        self.timer.clear();
                        self.timer_target = None;
                    }
                    Token(slot) => {
                        if let Some(r) = self.ready.get_mut(slot) {
                            *r = true;
                        }
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                debug!("data path stopping");
                self.publish_shaper_counters();
                return Ok(());
            }
            for slot in 0..self.ready.len() {
                if self.ready[slot] {
                    self.ready[slot] = self.drain(slot);
                }
            }
            let now = self.now();
            let egress = &mut self.egress;
            self.shaper.release(now, |pending| egress.send(pending));
            self.arm_timer(now)?;
            if now.saturating_sub(self.last_publish) >= PUBLISH_EVERY {
                self.publish_shaper_counters();
                self.last_publish = now;
            }
        }
    }

    /// Arm the timer for the shaper's next release, unless it is already armed for it.
    fn arm_timer(&mut self, now: Nanos) -> io::Result<()> {
        if let Some(at) = self.shaper.next_release()
            && self.timer_target != Some(at)
        {
            self.timer
                .arm_after(Duration::from_nanos(at.saturating_sub(now)))?;
            self.timer_target = Some(at);
        }
        Ok(())
    }

    /// Read up to [`BATCH`] frames from the port in `slot`; return true if it may have more.
    fn drain(&mut self, slot: usize) -> bool {
        for _ in 0..BATCH {
            let len = match self.egress.ports[slot].read(&mut self.rx) {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // A TAP whose device vanished keeps failing; stop polling it rather than spin.
                    let port = &self.egress.ports[slot];
                    warn!(port = %port.id(), cause = %err, "read failed; port disabled");
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&port.as_raw_fd()));
                    return false;
                }
            };
            let ingress = self.egress.ports[slot].id();
            self.receive(ingress, len);
        }
        true
    }

    /// Count and decide the frame in `self.rx[..len]` from `ingress` (virtio-net header
    /// included when offloads are on), then offer it to the shaper.
    fn receive(&mut self, ingress: PortId, len: usize) {
        let now = self.now();
        let egress = &mut self.egress;
        let hdr = egress.vnet_hdr_len;
        let tenant = egress.switch.tenant_of(ingress);
        let frame = self.rx.get(hdr..len).unwrap_or_default();
        egress.stats.ports[ingress.index()].count_rx(frame.len());
        egress.stats.tenants[tenant.index()].count_rx(frame.len());
        let vnet = if hdr == 0 {
            Some(VnetHeader::default())
        } else {
            VnetHeader::parse(&self.rx[..len])
        };
        let Some(vnet) = vnet else {
            egress.count_drop(ingress, DropReason::Malformed);
            return;
        };
        let decision = if vnet.is_gso() {
            egress.switch.decide_gso(ingress, frame)
        } else {
            egress.switch.decide(ingress, frame)
        };
        if let Decision::Drop(reason) = decision {
            egress.count_drop(ingress, reason);
            return;
        }
        // The shaper is charged what the frame will be on a wire (a GSO frame's segments
        // each repeat the headers), as tc charges GSO packets.
        let charge = u32::try_from(vnet.wire_bytes(frame)).unwrap_or(u32::MAX);
        // Small frames are copied out so a queued one does not pin 64 KiB; a large one keeps
        // its read buffer and the loop takes a fresh one.
        let buf = if len <= pool::SMALL {
            egress.pool.copy_small(&self.rx[..len])
        } else {
            std::mem::replace(&mut self.rx, egress.pool.take_large())
        };
        let pending = Pending {
            buf,
            len,
            ingress,
            decision,
        };
        match self.shaper.offer(now, tenant, ingress, charge, pending) {
            Admit::Send(pending) => egress.send(pending),
            Admit::Queued => {}
            Admit::Dropped(pending) => {
                egress.count_drop(ingress, DropReason::QueueFull);
                egress.pool.give(pending.buf);
            }
        }
    }

    /// Copy the shaper's per-tenant counters to the shared stats.
    fn publish_shaper_counters(&self) {
        for (i, gauges) in self.egress.stats.shaper.iter().enumerate() {
            let id = crate::topology::TenantId(u32::try_from(i).unwrap_or(u32::MAX));
            gauges.publish(&self.shaper.counters(id));
        }
    }
}

impl Egress {
    /// Deliver a frame the shaper let go, then recycle its buffer.
    fn send(&mut self, pending: Pending) {
        let frame = &pending.buf[..pending.len];
        match pending.decision {
            Decision::Unicast(port) => self.deliver(port, frame),
            Decision::Flood(tenant) => {
                for &port in self.switch.tenant_ports(tenant) {
                    if port != pending.ingress {
                        self.deliver(port, frame);
                    }
                }
            }
            Decision::Drop(_) => {}
        }
        self.pool.give(pending.buf);
    }

    /// Write `frame` (virtio-net header included when offloads are on) to `egress`, counting
    /// it as sent or as a write failure on that port.
    fn deliver(&self, egress: PortId, frame: &[u8]) {
        let l2_len = frame.len().saturating_sub(self.vnet_hdr_len);
        let tenant = self.switch.tenant_of(egress);
        let Some(slot) = self.slot_of.get(egress.index()).copied().flatten() else {
            self.stats.ports[egress.index()].count_drop(DropReason::WriteFailed);
            return;
        };
        match self.ports[slot].write(frame) {
            Ok(()) => {
                self.stats.ports[egress.index()].count_tx(l2_len);
                self.stats.tenants[tenant.index()].count_tx(l2_len);
            }
            Err(_) => {
                self.stats.ports[egress.index()].count_drop(DropReason::WriteFailed);
                self.stats.tenants[tenant.index()].count_drop(DropReason::WriteFailed);
            }
        }
    }

    /// Count a drop on the ingress port and its tenant.
    fn count_drop(&self, ingress: PortId, reason: DropReason) {
        let tenant = self.switch.tenant_of(ingress);
        self.stats.ports[ingress.index()].count_drop(reason);
        self.stats.tenants[tenant.index()].count_drop(reason);
    }
}
