//! The data path: one event loop moving frames from ports through the switch and the shaper
//! to ports.
//!
//! Contract: a single thread owns every port; it never blocks on one port (all fds are
//! non-blocking, edge-triggered on epoll via mio), never allocates per frame in steady state
//! (buffers come from a [`BufferPool`]), never panics on a frame, and never logs per frame:
//! every frame ends up in a counter, as received, sent, or dropped with a [`DropReason`].
//!
//! Per frame: read → [`Switch::decide`] (guard + forward) → [`Shaper::offer`] charged to the
//! tenant the decision names → write now, or later when [`Shaper::release`] hands the frame
//! back (a timerfd armed at [`Shaper::next_release`] wakes the loop with sub-millisecond
//! precision).
//!
//! Ports ([`Port`]) are of any kind and I/O: an fd the loop polls, or a deadline it keeps
//! (the same timerfd wakes it at the earliest [`Port::poll_at`]). Each port says whether its
//! frames carry a virtio-net header; a frame going between ports that differ is converted
//! ([`convert`]): the header added, or removed after completing a partial checksum. A GSO
//! super-frame cannot go to a port without offloads and is dropped as `gso_unsupported`.
//!
//! Fairness between ports: each readable port is drained at most [`BATCH`] frames per turn,
//! round-robin, so one flooding server cannot monopolise the loop.
//!
//! Broadcast/multicast frames pass [`StormControl`] (packets/s per port) before being offered:
//! the excess is dropped as [`DropReason::StormControl`].
//!
//! Scheduling: the loop's thread runs under `SCHED_FIFO` by default ([`Priority`]). The
//! kernel's bridge forwards in softirq context, ahead of every process; a switch thread at
//! ordinary priority instead waits behind the very servers whose frames it carries (measured:
//! 17–30% of its time runnable but not running during one bulk TCP flow on 2 cores). Like
//! softirq, which hands work left after 2 ms to `ksoftirqd` at normal priority, a real-time
//! loop busy for [`REALTIME_BUDGET`] without a pause steps down to normal priority until it
//! has caught up ([`Overload`]): a flood cannot take a core away from the servers.
//!
//! Live changes: the control plane sends an [`Update`] through an [`UpdateHandle`] (an mpsc
//! channel plus the loop's waker). The loop applies it whole between two batches, so no frame
//! sees half of a change: ports are removed and added, then the switch, the storm limits, the
//! counters and the shaper's parameters are swapped ([`Shaper::reconfigure`] keeps queued
//! frames, tokens and counters, so tenants whose configuration did not change see nothing).

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use tracing::{info, warn};

use crate::kernel::sys::TimerFd;
use crate::pool::{self, BufferPool};
use crate::port::{Offload, Port};
use crate::quarantine::{self, Quarantine};
use crate::shaper::{Admit, Allowed, Nanos, Shaper, Shaping, Signalled};
use crate::stats::{DropReason, Stats};
use crate::storm::StormControl;
use crate::switch::{Decision, Switch};
use crate::topology::{PortId, TenantId};
use crate::wire::segment;
use crate::wire::vnet::{VNET_HDR_LEN, VnetHeader};

/// Frames read from one port before moving on to the next ready port.
pub const BATCH: usize = 64;
/// How long a real-time loop may run without sleeping before it steps down to normal
/// priority: the kernel's softirq budget (`MAX_SOFTIRQ_TIME`, 2 ms).
pub const REALTIME_BUDGET: Duration = Duration::from_millis(2);
/// How often the shaper's counters are copied out for readers on other threads.
const PUBLISH_EVERY: Nanos = 50_000_000;

const WAKER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);

/// How the data-path thread is scheduled against the servers' own processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// As netd itself was started (normally an ordinary thread, sharing cores fairly with the
    /// servers' processes).
    Normal,
    /// `SCHED_FIFO` at this priority (1–99): it runs as soon as a frame or a shaper deadline
    /// is due, ahead of every ordinary task. The kernel's real-time CPU limit
    /// (`kernel.sched_rt_runtime_us`) keeps a share of each core for everything else even
    /// under a flood.
    Realtime(u8),
}

/// What `netd up` asks for when not told: real-time at the lowest priority, so every other
/// real-time thread (the kernel's own among them) keeps precedence.
pub const DEFAULT_PRIORITY: Priority = Priority::Realtime(1);

impl Priority {
    /// The `SCHED_FIFO` level, 0 for normal priority (as `netd stats` reports it).
    pub fn realtime_level(self) -> u64 {
        match self {
            Priority::Normal => 0,
            Priority::Realtime(level) => u64::from(level),
        }
    }

    /// The priority a [`Priority::realtime_level`] stands for (out-of-range levels: normal).
    pub fn from_realtime_level(level: u64) -> Priority {
        match u8::try_from(level) {
            Ok(level @ 1..=99) => Priority::Realtime(level),
            _ => Priority::Normal,
        }
    }

    /// Apply to the calling thread.
    fn apply(self) -> io::Result<()> {
        match self {
            Priority::Normal => Ok(()),
            Priority::Realtime(level) => crate::kernel::sys::set_current_thread_fifo(level),
        }
    }

    /// Check, on a short-lived thread, that this priority can be applied here; nothing else
    /// changes. Lets `netd up` refuse an impossible request before creating anything.
    pub fn check(self) -> io::Result<()> {
        std::thread::spawn(move || self.apply())
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("priority check thread panicked")))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Priority::Normal => f.write_str("normal"),
            Priority::Realtime(level) => write!(f, "realtime:{level}"),
        }
    }
}

impl FromStr for Priority {
    type Err = String;

    /// `normal`, `realtime` (priority 1) or `realtime:N` with N in 1–99.
    fn from_str(s: &str) -> Result<Priority, String> {
        let invalid = || format!("{s:?}: expected normal, realtime or realtime:N (N in 1-99)");
        match s.split_once(':') {
            None if s == "normal" => Ok(Priority::Normal),
            None if s == "realtime" => Ok(DEFAULT_PRIORITY),
            Some(("realtime", level)) => match level.parse::<u8>() {
                Ok(level @ 1..=99) => Ok(Priority::Realtime(level)),
                _ => Err(invalid()),
            },
            _ => Err(invalid()),
        }
    }
}

/// True when the kernel caps real-time threads' CPU time (`sched_rt_runtime_us` is not -1):
/// the condition for making the data path real-time without being asked.
fn realtime_is_capped() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/sched_rt_runtime_us").is_ok_and(|v| v.trim() != "-1")
}

/// Pin and prioritise the calling (data-path) thread; return the priority it got.
///
/// An explicit `priority` must be granted. Without one, [`DEFAULT_PRIORITY`] is tried where
/// the kernel caps real-time CPU time, and the thread stays [`Priority::Normal`] (with a
/// warning) where it is refused, e.g. without `CAP_SYS_NICE` or in a cgroup without
/// real-time CPU time.
fn place_current_thread(cpu: Option<usize>, priority: Option<Priority>) -> io::Result<Priority> {
    if let Some(cpu) = cpu {
        crate::kernel::sys::pin_current_thread(cpu).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("Cannot pin the data path to CPU {cpu}: {err}"),
            )
        })?;
    }
    match priority {
        Some(priority) => priority.apply().map(|()| priority).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("Cannot run the data path at priority {priority}: {err}"),
            )
        }),
        None if !realtime_is_capped() => {
            warn!(
                "kernel.sched_rt_runtime_us is -1 (real-time threads uncapped): \
                 the data path stays at normal priority"
            );
            Ok(Priority::Normal)
        }
        None => match DEFAULT_PRIORITY.apply() {
            Ok(()) => Ok(DEFAULT_PRIORITY),
            Err(err) => {
                warn!(cause = %err, "cannot make the data path real-time; it stays at normal priority");
                Ok(Priority::Normal)
            }
        },
    }
}

/// A priority change the loop must make on its own thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Busy past the budget: run at normal priority.
    StepDown,
    /// Caught up (it found nothing to read): back to real time.
    Restore,
}

/// Decides when a real-time loop has been busy too long to keep its priority.
#[derive(Debug, Default)]
struct Overload {
    /// When the current run of busy turns began (none while the loop keeps finding nothing).
    busy_since: Option<Nanos>,
    stepped_down: bool,
}

impl Overload {
    /// Record one loop turn at `now`: `busy` when a port still had frames waiting, so the
    /// loop will not sleep. Return the change to make, if any.
    fn turn(&mut self, now: Nanos, busy: bool) -> Option<Step> {
        if !busy {
            self.busy_since = None;
            return std::mem::take(&mut self.stepped_down).then_some(Step::Restore);
        }
        let since = *self.busy_since.get_or_insert(now);
        let budget = u64::try_from(REALTIME_BUDGET.as_nanos()).unwrap_or(u64::MAX);
        if !self.stepped_down && now.saturating_sub(since) >= budget {
            self.stepped_down = true;
            return Some(Step::StepDown);
        }
        None
    }
}

/// Stops a running data path (every loop of it) from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
}

impl StopHandle {
    /// Ask the data path to stop; it exits at its next wake-up, which this triggers.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for waker in &self.wakers {
            if let Err(err) = waker.wake() {
                warn!(cause = %err, "cannot wake the data path");
            }
        }
    }
}

/// A live change for the data path, applied whole between two batches.
#[derive(Debug, Default)]
pub struct Update {
    /// Ports to stop polling and hand back (their TAPs close when the caller drops them).
    pub remove: Vec<PortId>,
    /// New ports to poll (their ids must be in `switch`).
    pub add: Vec<Box<dyn Port>>,
    /// The new switch (always given: ports, tenants and storm limits follow it).
    pub switch: Option<Switch>,
    /// The new shapers' parameters, applied with [`Shaper::reconfigure`].
    pub shaper: Option<Shaping>,
    /// Counters grown for new ids ([`Stats::grown`]); existing counters are shared.
    pub stats: Option<Arc<Stats>>,
    /// Told when the update is applied, with the removed ports.
    pub done: Option<tokio::sync::oneshot::Sender<Vec<Box<dyn Port>>>>,
    /// Write-only handles on ports another loop owns ([`threads`]).
    pub shared: Vec<Box<dyn Port>>,
    /// The generation of the shaper's rates in `shaper` ([`threads`]; 0 with one loop).
    pub generation: u64,
    /// Where a loop of several reports its part of the update ([`threads`]).
    pub joined: Option<threads::Joined>,
}

/// Hands [`Update`]s to a running data path (each of its loops) from another thread.
#[derive(Debug, Clone)]
pub struct UpdateHandle {
    loops: Vec<(mpsc::Sender<Update>, Arc<Waker>)>,
    /// The rates being split among the loops, when there are several.
    split: Option<Arc<std::sync::Mutex<threads::Split>>>,
}

impl UpdateHandle {
    /// Queue `update` and wake the loop (every loop its part); give it back if the data
    /// path is gone.
    pub fn send(&self, update: Update) -> Result<(), Box<Update>> {
        let parts = match &self.split {
            Some(split) => threads::split_update(update, self.loops.len(), split),
            None => vec![update],
        };
        let mut failed = None;
        for ((tx, waker), part) in self.loops.iter().zip(parts) {
            match tx.send(part) {
                Ok(()) => {
                    if let Err(err) = waker.wake() {
                        warn!(cause = %err, "cannot wake the data path");
                    }
                }
                Err(err) => {
                    failed.get_or_insert(Box::new(err.0));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Return the number of loops.
    pub fn threads(&self) -> usize {
        self.loops.len()
    }
}

/// A frame that passed the switch and waits for (or just got) the shaper's go.
#[derive(Debug)]
pub struct Pending {
    /// The frame as read, with its ingress port's header.
    buf: Vec<u8>,
    len: usize,
    ingress: PortId,
    /// What the ingress port's frames carry, and the header read with it (so the egress can
    /// judge its size by segment and convert it without parsing again).
    offload: Offload,
    vnet: VnetHeader,
    /// Where it goes; always a forward (the tenant is the one charged).
    decision: Decision,
}

/// Everything needed to put a frame on the wire, apart from the shaper (so the shaper can
/// hand frames back to it while being borrowed itself).
struct Egress {
    ports: Vec<Box<dyn Port>>,
    /// Position of each port in `ports`, by `PortId` index.
    slot_of: Vec<Option<usize>>,
    /// Ports known to have frames to read, by slot: an fd's edge seen and not yet drained to
    /// `WouldBlock`, or a deadline port written to or due.
    ready: Vec<bool>,
    /// Ports this loop reads, by slot; the others are write-only handles on ports another
    /// loop owns ([`threads`]).
    owned: Vec<bool>,
    /// Slots of the ports without an fd (driven by deadlines): the few the loop asks for
    /// their next deadline every turn, instead of asking every port.
    deadline_slots: Vec<usize>,
    /// Slots of the ports written to this turn that hold frames back until a flush.
    held: Vec<usize>,
    switch: Switch,
    stats: Arc<Stats>,
    pool: BufferPool,
    /// Where frames are converted between ports' offloads (a large buffer).
    scratch: Vec<u8>,
}

/// The event loop's state.
pub struct DataPath {
    poll: Poll,
    egress: Egress,
    shapers: Shapers,
    timer: TimerFd,
    /// When the timer was last armed for, to avoid re-arming it for the same instant.
    timer_target: Option<Nanos>,
    clock: Instant,
    stop: Arc<AtomicBool>,
    /// The read buffer: a large pool buffer.
    rx: Vec<u8>,
    last_publish: Nanos,
    /// Frames were read since the last publish: the loop must wake to publish them even if
    /// no further frame comes, or readers would see counters stale until the next frame.
    unpublished: bool,
    storm: StormControl,
    /// Ports muted for flooding netd with frames it drops.
    quarantine: Quarantine,
    /// The frame just received muted its port: stop reading it.
    just_muted: bool,
    updates: mpsc::Receiver<Update>,
    update_handle: UpdateHandle,
    /// The priority the thread was given (set by [`DataPath::spawn`]).
    priority: Priority,
    overload: Overload,
    /// This loop's place among several ([`threads`]); `None` for the only loop.
    link: Option<threads::ThreadLink>,
}

impl DataPath {
    /// Register `ports` with a new poller; return the loop and a handle to stop it.
    pub fn new(
        switch: Switch,
        shaping: Shaping,
        ports: Vec<Box<dyn Port>>,
        stats: Arc<Stats>,
    ) -> io::Result<(DataPath, StopHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let timer = TimerFd::new()?;
        poll.registry()
            .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, updates) = mpsc::channel();
        let update_handle = UpdateHandle {
            loops: vec![(tx, waker.clone())],
            split: None,
        };
        let handle = StopHandle {
            stop: stop.clone(),
            wakers: vec![waker],
        };
        let storm = StormControl::new(&switch);
        let mut pool = BufferPool::default();
        let rx = pool.take_large();
        let scratch = pool.take_large();
        let slot_of = vec![None; switch.port_count()];
        let mut datapath = DataPath {
            poll,
            egress: Egress {
                ports: Vec::with_capacity(ports.len()),
                slot_of,
                ready: Vec::with_capacity(ports.len()),
                owned: Vec::with_capacity(ports.len()),
                deadline_slots: Vec::new(),
                held: Vec::new(),
                switch,
                stats,
                pool,
                scratch,
            },
            shapers: Shapers::new(shaping),
            timer,
            timer_target: None,
            clock: Instant::now(),
            stop,
            rx,
            last_publish: 0,
            unpublished: false,
            storm,
            quarantine: Quarantine::default(),
            just_muted: false,
            updates,
            update_handle,
            priority: Priority::Normal,
            overload: Overload::default(),
            link: None,
        };
        // The same registration as ports added later.
        datapath.attach(ports)?;
        Ok((datapath, handle))
    }

    /// Add `ports` to a data path that does not run yet (`new` does; an upgrade prepares
    /// the loop first and adds the ports it was handed last, so they wait as little as
    /// possible).
    pub fn attach(&mut self, ports: Vec<Box<dyn Port>>) -> io::Result<()> {
        let registry = self.poll.registry();
        for port in ports {
            self.egress.add_port(registry, port, true)?;
        }
        self.egress.deadline_slots = deadline_slots(&self.egress.ports);
        Ok(())
    }

    /// Add write-only handles on ports another loop owns (before the loop runs).
    pub fn attach_shared(&mut self, ports: Vec<Box<dyn Port>>) -> io::Result<()> {
        let registry = self.poll.registry();
        for port in ports {
            self.egress.add_port(registry, port, false)?;
        }
        Ok(())
    }

    /// Make this loop one of several: `link` is its place, `stop` their common flag.
    pub fn join_group(&mut self, link: threads::ThreadLink, stop: Arc<AtomicBool>) {
        self.link = Some(link);
        self.stop = stop;
    }

    /// Return a handle that sends live changes to this data path.
    pub fn update_handle(&self) -> UpdateHandle {
        self.update_handle.clone()
    }

    /// Start the loop on its own thread, pinned to CPU `cpu` if given and scheduled at
    /// `priority` (see [`place_current_thread`] for the default); return the thread and the
    /// priority it runs at. An error, and no thread left running, if the placement fails.
    pub fn spawn(
        mut self,
        cpu: Option<usize>,
        priority: Option<Priority>,
    ) -> io::Result<(JoinHandle<io::Result<()>>, Priority)> {
        let (placed_tx, placed_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("netd-datapath".into())
            .spawn(move || {
                let placed = place_current_thread(cpu, priority);
                let granted = placed.as_ref().ok().copied();
                let _ = placed_tx.send(placed);
                let Some(granted) = granted else {
                    return Ok(());
                };
                self.priority = granted;
                self.publish_priority(granted);
                self.run()
            })?;
        match placed_rx.recv() {
            Ok(Ok(priority)) => Ok((thread, priority)),
            Ok(Err(err)) => {
                let _ = thread.join();
                Err(err)
            }
            Err(_) => Err(io::Error::other("The data path thread died while starting")),
        }
    }

    fn now(&self) -> Nanos {
        // u64 nanoseconds last 584 years of uptime.
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Run until stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let busy = self.readable();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else if self.unpublished {
                let due = self.last_publish.saturating_add(self.publish_every());
                Some(Duration::from_nanos(due.saturating_sub(self.now())))
            } else {
                None
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => woken = true,
                    TIMER => {
                        self.timer.clear();
                        self.timer_target = None;
                    }
                    Token(slot) => {
                        if let Some(r) = self.egress.ready.get_mut(slot) {
                            *r = true;
                        }
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                let step_downs = self
                    .egress
                    .stats
                    .datapath
                    .step_downs
                    .load(Ordering::Relaxed);
                info!(step_downs, "data path stopping");
                self.publish_shaper_counters();
                return Ok(());
            }
            if woken {
                while let Ok(update) = self.updates.try_recv() {
                    self.apply(update);
                }
            }
            if self.link.is_some() {
                self.take_posted_slice();
            }
            if !self.egress.deadline_slots.is_empty() {
                self.poll_deadline_ports(self.now());
            }
            let now = self.now();
            for slot in 0..self.egress.ready.len() {
                // A muted port keeps its frames (and its mark) until its quarantine ends.
                if self.egress.ready[slot] && !self.is_muted(slot, now) {
                    self.egress.ready[slot] = self.drain(slot);
                }
            }
            let now = self.now();
            self.check_overload(now, self.readable());
            // Frames released from the queues change the shaper's counters too.
            self.unpublished |= self.shapers.next_release().is_some();
            self.shapers.release(now, &mut self.egress);
            self.egress.flush_held();
            self.arm_timer(now)?;
            if now.saturating_sub(self.last_publish) >= self.publish_every() {
                self.publish_shaper_counters();
                self.last_publish = now;
                self.unpublished = false;
            }
        }
    }

    /// How often the loop publishes its shaper's counters: to the shared stats, or, as one
    /// loop of several, to the coordinator, which splits the rates every epoch from them.
    fn publish_every(&self) -> Nanos {
        if self.link.is_some() {
            threads::PUBLISH_TO_SPLITTER
        } else {
            PUBLISH_EVERY
        }
    }

    /// Apply the slice of the rates the coordinator posted, if it is for the rates this
    /// loop runs (a slice split before a live change is stale).
    fn take_posted_slice(&mut self) {
        let Some(link) = &self.link else { return };
        let Some(posted) = link.board.take_posted(link.thread) else {
            return;
        };
        if posted.generation != link.generation {
            return;
        }
        let now = self.now();
        let evicted = self.shapers.host.reconfigure(posted.config, now);
        self.egress.drop_evicted(evicted);
        self.timer_target = None;
    }

    /// Publish this loop's host-shaper counters for the coordinator, in the order of its
    /// rates' tenants (the coordinator's order too: one config split).
    fn publish_to_splitter(&self) {
        let Some(link) = &self.link else { return };
        let host = &self.shapers.host;
        let counters = host.config().tenants.iter().map(|t| host.counters(t.id));
        link.board.publish(link.thread, link.generation, counters);
    }

    /// Apply a live change: ports out, ports in, then the new switch, storm limits, counters
    /// and shaper parameters; tell the sender, handing back the removed ports.
    fn apply(&mut self, update: Update) {
        let now = self.now();
        let registry = self.poll.registry();
        let egress = &mut self.egress;
        let mut removed = Vec::with_capacity(update.remove.len());
        for id in update.remove {
            let Some(slot) = egress.slot_of.get(id.index()).copied().flatten() else {
                continue;
            };
            let port = egress.ports.swap_remove(slot);
            egress.ready.swap_remove(slot);
            let owned = egress.owned.swap_remove(slot);
            if let Some(fd) = port.fd().filter(|_| owned) {
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
            for carried in port.carries() {
                if let Some(entry) = egress.slot_of.get_mut(carried.index()) {
                    *entry = None;
                }
            }
            // The last port moved into `slot`: re-register it under its new token.
            if let Some(moved) = egress.ports.get(slot) {
                if let Some(fd) = moved.fd().filter(|_| egress.owned[slot])
                    && let Err(err) =
                        registry.reregister(&mut SourceFd(&fd), Token(slot), Interest::READABLE)
                {
                    warn!(port = %moved.id(), cause = %err, "cannot re-register port");
                }
                for carried in moved.carries() {
                    if let Some(entry) = egress.slot_of.get_mut(carried.index()) {
                        *entry = Some(slot);
                    }
                }
                egress.ready[slot] = egress.owned[slot];
            }
            // A write-only handle closes here; the owner hands the port back.
            if owned {
                removed.push(port);
            }
        }
        if let Some(switch) = update.switch {
            self.storm.update(&switch);
            if egress.slot_of.len() < switch.port_count() {
                egress.slot_of.resize(switch.port_count(), None);
            }
            egress.switch = switch;
        }
        if let Some(stats) = update.stats {
            egress.stats = stats;
        }
        let owned = update.add.into_iter().map(|port| (port, true));
        for (port, owned) in owned.chain(update.shared.into_iter().map(|port| (port, false))) {
            let id = port.id();
            if let Err(err) = egress.add_port(registry, port, owned) {
                warn!(port = %id, cause = %err, "cannot poll new port");
            }
        }
        if let Some(config) = update.shaper {
            if let Some(link) = &mut self.link {
                link.generation = update.generation;
            }
            egress.drop_evicted(self.shapers.reconfigure(config, now));
            self.timer_target = None;
        }
        egress.deadline_slots = deadline_slots(&egress.ports);
        self.publish_shaper_counters();
        if let Some(joined) = update.joined {
            joined.report(removed);
        } else if let Some(done) = update.done {
            let _ = done.send(removed);
        }
    }

    /// Tell readers the priority the thread runs at now.
    fn publish_priority(&self, now: Priority) {
        let gauges = &self.egress.stats.datapath;
        gauges
            .realtime_priority
            .store(now.realtime_level(), Ordering::Relaxed);
    }

    /// Step a real-time loop down to normal priority when it has been busy past
    /// [`REALTIME_BUDGET`], and back up once it finds nothing waiting.
    fn check_overload(&mut self, now: Nanos, busy: bool) {
        let Priority::Realtime(level) = self.priority else {
            return;
        };
        let (result, what, after) = match self.overload.turn(now, busy) {
            None => return,
            Some(Step::StepDown) => {
                let before = self
                    .egress
                    .stats
                    .datapath
                    .step_downs
                    .fetch_add(1, Ordering::Relaxed);
                if before == 0 {
                    warn!(
                        budget_ms = REALTIME_BUDGET.as_millis(),
                        "data path busy without a pause: normal priority until it catches up \
                         (logged once; see step_downs at exit)"
                    );
                }
                (
                    crate::kernel::sys::set_current_thread_normal(),
                    "step down to normal",
                    Priority::Normal,
                )
            }
            Some(Step::Restore) => (
                crate::kernel::sys::set_current_thread_fifo(level),
                "return to real time",
                self.priority,
            ),
        };
        match result {
            Ok(()) => self.publish_priority(after),
            Err(err) => {
                // Do not retry every turn: stay where the thread is, at worst normal priority.
                warn!(cause = %err, "data path cannot {what}; it stays at normal priority");
                let _ = crate::kernel::sys::set_current_thread_normal();
                self.priority = Priority::Normal;
                self.publish_priority(Priority::Normal);
            }
        }
    }

    /// Run the timers of deadline ports that are due; mark them to be read.
    fn poll_deadline_ports(&mut self, now: Nanos) {
        let egress = &mut self.egress;
        for &slot in &egress.deadline_slots {
            let port = &mut egress.ports[slot];
            if port.poll_at().is_some_and(|at| at <= now) {
                port.poll(now);
                egress.ready[slot] = true;
            }
        }
    }

    /// Return true when a port not in quarantine may have frames to read.
    fn readable(&self) -> bool {
        let ready = &self.egress.ready;
        if !self.quarantine.any() {
            // The usual turn: no clock read, no port lookup.
            return ready.iter().any(|&r| r);
        }
        let now = self.now();
        (0..ready.len()).any(|slot| ready[slot] && !self.is_muted(slot, now))
    }

    /// Return true while the port in `slot` is in quarantine.
    fn is_muted(&self, slot: usize, now: Nanos) -> bool {
        // `any` first: the usual turn looks up no port.
        self.quarantine.any() && self.quarantine.is_muted(self.egress.ports[slot].id(), now)
    }

    /// Arm the timer for the shaper's next release, the earliest port deadline or the end of
    /// a quarantine, unless it is already armed for it.
    fn arm_timer(&mut self, now: Nanos) -> io::Result<()> {
        let unmute = self.quarantine.release(now);
        let egress = &self.egress;
        let ports = egress
            .deadline_slots
            .iter()
            .filter_map(|&slot| egress.ports[slot].poll_at());
        let next = ports.chain(self.shapers.next_release()).chain(unmute).min();
        if let Some(at) = next
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
            let port = &mut self.egress.ports[slot];
            let len = match port.read(&mut self.rx) {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // A TAP whose device vanished keeps failing; stop polling it rather than spin.
                    warn!(port = %port.id(), cause = %err, "read failed; port disabled");
                    if let Some(counters) = self.egress.stats.ports.get(port.id().index()) {
                        counters.count_read_error();
                    }
                    if let Some(fd) = port.fd() {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    }
                    return false;
                }
            };
            let (ingress, offload) = (port.last_ingress(), port.offload());
            self.unpublished = true;
            self.receive(ingress, offload, len);
            // Only this port's own frames can mute it, and `hostile` says when one did.
            if std::mem::take(&mut self.just_muted) {
                return true;
            }
        }
        true
    }

    /// Count a drop `ingress` caused against its quarantine budget.
    fn hostile(&mut self, ingress: PortId, reason: DropReason, now: Nanos) {
        // The tunnel carries every remote server: muting it would silence them all. Each
        // host quarantines its own servers.
        if self.egress.switch.kind_of(ingress) == Some(crate::port::PortKind::Remote) {
            return;
        }
        if quarantine::is_hostile(reason) && self.quarantine.count(ingress, now) {
            self.just_muted = true;
            if let Some(counters) = self.egress.stats.ports.get(ingress.index()) {
                counters.count_quarantine();
            }
        }
    }

    /// Count and decide the frame in `self.rx[..len]` from `ingress` (with the port's
    /// virtio-net header when it has one), then offer it to the shaper.
    fn receive(&mut self, ingress: PortId, offload: Offload, len: usize) {
        let now = self.now();
        let egress = &mut self.egress;
        let hdr = offload.header_len();
        let frame = self.rx.get(hdr..len).unwrap_or_default();
        egress.stats.ports[ingress.index()].count_rx(frame.len());
        let vnet = if hdr == 0 {
            Some(VnetHeader::default())
        } else {
            VnetHeader::parse(&self.rx[..len])
        };
        let Some(vnet) = vnet else {
            egress.drop_received(ingress, frame.len(), DropReason::Malformed);
            self.hostile(ingress, DropReason::Malformed, now);
            return;
        };
        let decision = if vnet.is_gso() {
            egress.switch.decide_gso(ingress, frame)
        } else {
            egress.switch.decide(ingress, frame)
        };
        // Counted and charged to the tenant the decision names.
        let tenant = match decision {
            Decision::Unicast(tenant, _) | Decision::Flood(tenant) => tenant,
            Decision::Drop(reason) => {
                egress.drop_received(ingress, frame.len(), reason);
                self.hostile(ingress, reason, now);
                return;
            }
        };
        egress.stats.tenants[tenant.index()].count_rx(frame.len());
        let path = egress.path(ingress, decision);
        if path == Path::Download
            && egress.switch.kind_of(ingress) == Some(crate::port::PortKind::Uplink)
            && let Decision::Unicast(_, to) = decision
        {
            // A routed packet takes the MAC of the server it goes to (the guard passed it,
            // so its Ethernet header is there).
            if let (Some(mac), Some(dst)) =
                (egress.switch.mac_of(to), self.rx.get_mut(hdr..hdr + 6))
            {
                dst.copy_from_slice(&mac.octets());
            }
        }
        let frame = self.rx.get(hdr..len).unwrap_or_default();
        if let Decision::Flood(_) = decision
            && !self.storm.allow(ingress)
        {
            egress.count_drop(ingress, DropReason::StormControl);
            self.hostile(ingress, DropReason::StormControl, now);
            return;
        }
        // The shaper is charged what the frame will be on a wire (a GSO frame's segments
        // each repeat the headers), as tc charges GSO packets.
        let charge = u32::try_from(vnet.wire_bytes(frame)).unwrap_or(u32::MAX);
        // Which conversation it is: a small frame of an idle flow goes ahead of its tenant's
        // bulk frames (see `shaper::hierarchy`).
        let flow = crate::wire::flow::flow_hash(frame);
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
            offload,
            vnet,
            decision,
        };
        // Each shaper keeps a lane per port of the tenant: the sender's, or on the way down
        // the receiving server's.
        let lane = match (path, decision) {
            (Path::Download, Decision::Unicast(_, to)) => to,
            _ => ingress,
        };
        let shaper = self.shapers.of(path);
        match shaper.offer_signalled(now, tenant, lane, charge, pending, flow, signal_congestion) {
            Admit::Send(pending) => egress.send(pending),
            Admit::Queued => {}
            Admit::Dropped(pending) => {
                egress.count_drop(ingress, DropReason::QueueFull);
                egress.pool.give(pending.buf);
            }
        }
    }

    /// Copy the shapers' per-tenant counters to the shared stats (one loop of several
    /// publishes them to the coordinator, which adds them up).
    fn publish_shaper_counters(&self) {
        if self.link.is_some() {
            self.publish_to_splitter();
            return;
        }
        let stats = &self.egress.stats;
        let shapers = &self.shapers;
        for (gauges, shaper) in [
            (&stats.shaper, &shapers.host),
            (&stats.upload, &shapers.upload),
            (&stats.download, &shapers.download),
        ] {
            for (i, gauges) in gauges.iter().enumerate() {
                let id = TenantId(u32::try_from(i).unwrap_or(u32::MAX));
                gauges.publish(&shaper.counters(id));
            }
        }
    }
}

/// Tell the sender of `pending` that its tenant's queue is growing, with the smallest
/// signal it understands: an ECN mark if it negotiated ECN, else one segment cut off a TCP
/// super-frame (it retransmits that one, not the 44 of the whole frame). Anything else is
/// left as it is.
fn signal_congestion(pending: &mut Pending, allowed: Allowed) -> Signalled {
    let header = pending.offload.header_len();
    let Some(frame) = pending.buf.get_mut(header..pending.len) else {
        return Signalled::Unable;
    };
    if segment::mark_congestion_experienced(frame) {
        return Signalled::Marked;
    }
    if allowed == Allowed::MarkOnly {
        return Signalled::Unable;
    }
    let Some(len) = segment::cut_last_segment(&pending.vnet, frame) else {
        return Signalled::Unable;
    };
    pending.len = header + len;
    let charge = pending.vnet.wire_bytes(&frame[..len]);
    Signalled::Cut(u32::try_from(charge).unwrap_or(u32::MAX))
}

/// Which shaper a frame passes: the host's, or the uplink's for its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Between ports of a tenant (servers, its gateway): `[host] capacity`.
    Host,
    /// From a server to the tenant's uplink port: charged to the sending tenant.
    Upload,
    /// From the uplink port to a server: charged to the receiving tenant.
    Download,
}

/// The data path's shapers: the host's and the uplink's two directions.
struct Shapers {
    host: Shaper<Pending>,
    upload: Shaper<Pending>,
    download: Shaper<Pending>,
}

impl Shapers {
    fn new(shaping: Shaping) -> Shapers {
        Shapers {
            host: Shaper::new(shaping.host, 0),
            upload: Shaper::new(shaping.uplink.clone(), 0),
            download: Shaper::new(shaping.uplink, 0),
        }
    }

    fn of(&mut self, path: Path) -> &mut Shaper<Pending> {
        match path {
            Path::Host => &mut self.host,
            Path::Upload => &mut self.upload,
            Path::Download => &mut self.download,
        }
    }

    /// The earliest release of any shaper.
    fn next_release(&self) -> Option<Nanos> {
        [&self.host, &self.upload, &self.download]
            .into_iter()
            .filter_map(Shaper::next_release)
            .min()
    }

    /// Send what every shaper releases at `now`.
    fn release(&mut self, now: Nanos, egress: &mut Egress) {
        for shaper in [&mut self.host, &mut self.upload, &mut self.download] {
            shaper.release(now, |pending| egress.send(pending));
        }
    }

    /// Apply new parameters to every shaper; hand back the frames of removed tenants.
    fn reconfigure(&mut self, shaping: Shaping, now: Nanos) -> Vec<Pending> {
        let mut returned = self.host.reconfigure(shaping.host, now);
        returned.extend(self.upload.reconfigure(shaping.uplink.clone(), now));
        returned.extend(self.download.reconfigure(shaping.uplink, now));
        returned
    }
}

impl Egress {
    /// Return the shaper a frame from `ingress` with this decision passes.
    fn path(&self, ingress: PortId, decision: Decision) -> Path {
        use crate::port::PortKind::{Trunk, Uplink};
        let uplink = |port| matches!(self.switch.kind_of(port), Some(Uplink | Trunk));
        match decision {
            _ if uplink(ingress) => Path::Download,
            Decision::Unicast(_, to) if uplink(to) => Path::Upload,
            _ => Path::Host,
        }
    }

    /// Deliver a frame the shaper let go, then recycle its buffer.
    fn send(&mut self, pending: Pending) {
        match pending.decision {
            Decision::Unicast(tenant, port) => self.deliver(port, tenant, &pending),
            Decision::Flood(tenant) => {
                let ingress = pending.ingress;
                // By index: the member list is the switch's, and delivering needs `self`.
                for i in 0..self.switch.flood_ports(tenant, ingress).len() {
                    let port = self.switch.flood_ports(tenant, ingress)[i];
                    if port != ingress {
                        self.deliver(port, tenant, &pending);
                    }
                }
            }
            Decision::Drop(_) => {}
        }
        self.pool.give(pending.buf);
    }

    /// Write `pending`'s frame to port `to` of `tenant`, converted to that port's offload,
    /// counting it as sent or as dropped on that port.
    fn deliver(&mut self, to: PortId, tenant: TenantId, pending: &Pending) {
        let frame = &pending.buf[..pending.len];
        let l2 = frame
            .get(pending.offload.header_len()..)
            .unwrap_or_default();
        // A port removed while frames to it were queued has no slot (and maybe no tenant).
        let Some(slot) = self.slot_of.get(to.index()).copied().flatten() else {
            if let Some(counters) = self.stats.ports.get(to.index()) {
                counters.count_drop(DropReason::WriteFailed);
            }
            return;
        };
        if self
            .switch
            .max_frame_len(to)
            .is_some_and(|max| pending.vnet.largest_segment(l2) > max)
        {
            self.stats.ports[to.index()].count_drop(DropReason::TooBig);
            self.stats.tenants[tenant.index()].count_drop(DropReason::TooBig);
            return;
        }
        let port = &mut self.ports[slot];
        let converted = convert(pending, port.offload(), &mut self.scratch);
        let written = converted.and_then(|bytes| {
            port.write_to(to, bytes)
                .map_err(|_| DropReason::WriteFailed)
        });
        if port.fd().is_none() {
            self.ready[slot] = true; // a deadline port may answer at once
        }
        if port.holds_writes() && !self.held.contains(&slot) {
            self.held.push(slot);
        }
        match written {
            Ok(()) => {
                self.stats.ports[to.index()].count_tx(l2.len());
                self.stats.tenants[tenant.index()].count_tx(l2.len());
            }
            Err(reason) => {
                self.stats.ports[to.index()].count_drop(reason);
                self.stats.tenants[tenant.index()].count_drop(reason);
            }
        }
    }

    /// Send what ports held back this turn (the tunnel gathers small frames to one host
    /// into one send).
    fn flush_held(&mut self) {
        for slot in self.held.drain(..) {
            if let Some(port) = self.ports.get_mut(slot) {
                port.flush();
            }
        }
    }

    /// Count the frames a shaper handed back from tenants it no longer has as dropped, and
    /// recycle their buffers.
    fn drop_evicted(&mut self, evicted: Vec<Pending>) {
        for pending in evicted {
            self.count_drop(pending.ingress, DropReason::QueueFull);
            self.pool.give(pending.buf);
        }
    }

    /// Count a received frame that is dropped: on the ingress port's tenant too.
    fn drop_received(&self, ingress: PortId, bytes: usize, reason: DropReason) {
        if let Some(tenant) = self.switch.tenant_of(ingress) {
            self.stats.tenants[tenant.index()].count_rx(bytes);
        }
        self.count_drop(ingress, reason);
    }

    /// Poll `port` in a new slot, marked ready (it may hold frames already); or only write
    /// to it, unless `owned`.
    fn add_port(
        &mut self,
        registry: &Registry,
        port: Box<dyn Port>,
        owned: bool,
    ) -> io::Result<()> {
        let slot = self.ports.len();
        if owned {
            register(registry, port.as_ref(), slot)?;
        }
        for id in port.carries() {
            if self.slot_of.len() <= id.index() {
                self.slot_of.resize(id.index() + 1, None);
            }
            self.slot_of[id.index()] = Some(slot);
        }
        self.ports.push(port);
        self.ready.push(owned);
        self.owned.push(owned);
        Ok(())
    }

    /// Count a drop on the ingress port and its tenant.
    fn count_drop(&self, ingress: PortId, reason: DropReason) {
        self.stats.ports[ingress.index()].count_drop(reason);
        // A queued frame of a port removed since has no tenant any more.
        if let Some(tenant) = self.switch.tenant_of(ingress) {
            self.stats.tenants[tenant.index()].count_drop(reason);
        }
    }
}

/// Return the slots of the ports driven by deadlines (those without an fd).
fn deadline_slots(ports: &[Box<dyn Port>]) -> Vec<usize> {
    (0..ports.len())
        .filter(|&slot| ports[slot].fd().is_none())
        .collect()
}

/// Register a port's fd, if it has one, under `slot`.
fn register(registry: &Registry, port: &dyn Port, slot: usize) -> io::Result<()> {
    match port.fd() {
        Some(fd) => registry.register(&mut SourceFd(&fd), Token(slot), Interest::READABLE),
        None => Ok(()),
    }
}

/// Return `pending`'s frame as a port with offload `to` takes it: as it is when the two
/// ports agree, else converted into `out`. A plain frame gets an empty virtio-net header
/// (checksums complete, no GSO); a frame losing its header has its partial checksum
/// completed first, and a GSO super-frame cannot lose it (`GsoUnsupported`: it would need
/// segmenting).
fn convert<'a>(
    pending: &'a Pending,
    to: Offload,
    out: &'a mut [u8],
) -> Result<&'a [u8], DropReason> {
    let frame = &pending.buf[..pending.len];
    match (pending.offload, to) {
        (Offload::None, Offload::VnetHeader) => {
            let len = VNET_HDR_LEN + frame.len();
            let out = out.get_mut(..len).ok_or(DropReason::Oversized)?;
            out[..VNET_HDR_LEN].fill(0);
            out[VNET_HDR_LEN..].copy_from_slice(frame);
            Ok(out)
        }
        (Offload::VnetHeader, Offload::None) => {
            if pending.vnet.is_gso() {
                return Err(DropReason::GsoUnsupported);
            }
            let l2 = &frame[VNET_HDR_LEN..];
            let out = out.get_mut(..l2.len()).ok_or(DropReason::Oversized)?;
            out.copy_from_slice(l2);
            if pending.vnet.needs_checksum() && !pending.vnet.complete_checksum(out) {
                return Err(DropReason::Malformed);
            }
            Ok(out)
        }
        (Offload::None, Offload::None) | (Offload::VnetHeader, Offload::VnetHeader) => Ok(frame),
    }
}

pub mod threads;

#[cfg(test)]
pub(crate) mod harness;
#[cfg(test)]
mod loop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn priority_parses_normal_realtime_and_a_level_and_refuses_the_rest() {
        assert_eq!("normal".parse(), Ok(Priority::Normal));
        assert_eq!("realtime".parse(), Ok(DEFAULT_PRIORITY));
        assert_eq!("realtime:42".parse(), Ok(Priority::Realtime(42)));
        for bad in [
            "",
            "rt",
            "realtime:0",
            "realtime:100",
            "realtime:",
            "normal:1",
        ] {
            let err = bad.parse::<Priority>().unwrap_err();
            assert!(
                err.contains("expected normal, realtime or realtime:N"),
                "{bad}: {err}"
            );
        }
        assert_eq!(Priority::Realtime(7).to_string(), "realtime:7");
        for p in [
            Priority::Normal,
            Priority::Realtime(1),
            Priority::Realtime(99),
        ] {
            assert_eq!(Priority::from_realtime_level(p.realtime_level()), p);
        }
        assert_eq!(Priority::from_realtime_level(100), Priority::Normal);
    }

    #[test]
    fn a_loop_busy_past_the_budget_steps_down_once_and_returns_when_it_catches_up() {
        let mut o = Overload::default();
        assert_eq!(o.turn(0, false), None, "idle: nothing to do");
        assert_eq!(o.turn(10 * MS, true), None);
        assert_eq!(o.turn(11 * MS, true), None, "busy 1 ms: within budget");
        assert_eq!(o.turn(12 * MS, true), Some(Step::StepDown), "busy 2 ms");
        assert_eq!(o.turn(50 * MS, true), None, "steps down once");
        assert_eq!(o.turn(51 * MS, false), Some(Step::Restore), "caught up");
        assert_eq!(o.turn(52 * MS, false), None, "restores once");
    }

    #[test]
    fn a_pause_restarts_the_budget() {
        let mut o = Overload::default();
        assert_eq!(o.turn(0, true), None);
        assert_eq!(o.turn(MS + MS / 2, true), None);
        assert_eq!(
            o.turn(MS + MS / 2 + 1, false),
            None,
            "a pause, never stepped down"
        );
        assert_eq!(o.turn(2 * MS, true), None, "the budget starts again here");
        assert_eq!(o.turn(3 * MS, true), None);
        assert_eq!(o.turn(4 * MS, true), Some(Step::StepDown));
    }
}
