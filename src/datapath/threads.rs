//! Past one core: several data-path loops, the ports sharded among them, the host's shaping
//! split among them by the [`Splitter`].
//!
//! Each server's port is **owned** by one loop (its id modulo the thread count): only that
//! loop reads it, so a server's frames keep their order and its lane lives in one shaper.
//! Every other loop holds a write-only handle on the same TAP ([`Port::share`]), so a frame
//! leaves from the loop that read it, with no hand-off between threads. Ports one thread
//! alone may drive (a gateway's stack, the tunnel, the uplink) cannot be shared: a topology
//! with them runs on one loop ([`refusal`]).
//!
//! Each loop has its own [`crate::shaper::Shaper`], so the per-frame path touches no shared
//! state. A coordinator thread runs the [`Splitter`] every [`DEFAULT_EPOCH`] over the loops'
//! published counters ([`Board`]) and posts each loop its slice of every tenant's rates; a
//! loop applies its slice at its next turn. A live change of the rates starts a new
//! *generation*: every loop gets the new rates split equally with the change itself, and the
//! coordinator splits again only once every loop has applied it, so no loop is ever given a
//! slice of rates it does not know yet.
//!
//! With one thread there is no coordinator and nothing here runs on the frame path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{DataPath, Priority, StopHandle, Update, UpdateHandle};
use crate::port::Port;
use crate::shaper::split::{DEFAULT_EPOCH, Splitter};
use crate::shaper::{Nanos, ShaperConfig, Shaping, TenantCounters};
use crate::stats::Stats;
use crate::switch::Switch;
use crate::topology::Topology;

/// The most data-path threads `--datapath-threads` accepts.
pub const MAX_THREADS: usize = 64;

/// How often a loop publishes its counters for the coordinator while it has news (its
/// ordinary publishing cadence, shortened): a quarter of an epoch, so each split reads
/// fresh counters.
pub const PUBLISH_TO_SPLITTER: Nanos = DEFAULT_EPOCH / 4;

/// How often the coordinator copies the summed shaper counters to the shared stats.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Why `topology` cannot run on `threads` data-path loops, if it cannot (one loop runs
/// anything).
pub fn refusal(topology: &Topology, threads: usize) -> Option<String> {
    if threads <= 1 {
        return None;
    }
    let mut parts = Vec::new();
    if topology.tenants.iter().any(|t| t.gateway.is_some()) {
        parts.push("tenant gateways");
    }
    if topology.uplink.is_some() {
        parts.push("an uplink");
    }
    if topology.cluster.is_some() {
        parts.push("hosts (VXLAN)");
    }
    (!parts.is_empty()).then(|| {
        format!(
            "more than one data-path thread serves servers' TAPs only; this topology has {}",
            parts.join(", ")
        )
    })
}

/// Return the thread (of `threads`) that owns port index `index`.
pub fn owner_of(index: usize, threads: usize) -> usize {
    index % threads.max(1)
}

/// What the loops and the coordinator exchange: one slot per loop.
#[derive(Debug)]
pub struct Board {
    slots: Vec<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The loop's host-shaper counters, per tenant of its generation's rates, in their order.
    published: Mutex<Published>,
    /// The slice the coordinator has for the loop next.
    posted: Mutex<Option<Posted>>,
}

/// A loop's counters as it last published them.
#[derive(Debug, Default)]
struct Published {
    generation: u64,
    tenants: Vec<TenantCounters>,
}

/// A loop's slice of the rates, for the generation it was split from.
#[derive(Debug)]
pub struct Posted {
    pub generation: u64,
    pub config: ShaperConfig,
}

impl Board {
    /// A board for `threads` loops.
    pub fn new(threads: usize) -> Board {
        Board {
            slots: (0..threads.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    /// Publish loop `thread`'s counters (it holds the lock for a copy only).
    pub fn publish(
        &self,
        thread: usize,
        generation: u64,
        tenants: impl Iterator<Item = TenantCounters>,
    ) {
        if let Some(slot) = self.slots.get(thread) {
            let mut published = lock(&slot.published);
            published.generation = generation;
            published.tenants.clear();
            published.tenants.extend(tenants);
        }
    }

    /// Take the slice posted for loop `thread`, if any; never waits for the coordinator.
    pub fn take_posted(&self, thread: usize) -> Option<Posted> {
        let slot = self.slots.get(thread)?;
        slot.posted.try_lock().ok()?.take()
    }

    fn post(&self, thread: usize, posted: Posted) {
        if let Some(slot) = self.slots.get(thread) {
            *lock(&slot.posted) = Some(posted);
        }
    }

    /// Every loop's counters, if every loop has published for `generation`.
    fn gather(&self, generation: u64) -> Option<Vec<Vec<TenantCounters>>> {
        self.slots
            .iter()
            .map(|slot| {
                let published = lock(&slot.published);
                (published.generation == generation).then(|| published.tenants.clone())
            })
            .collect()
    }
}

/// The rates being split, shared by the coordinator and the update handle.
#[derive(Debug)]
pub struct Split {
    splitter: Splitter,
    generation: u64,
    stats: Arc<Stats>,
}

impl Split {
    /// Split `host` among `threads`; return the state and each loop's first slice.
    pub fn new(
        host: ShaperConfig,
        threads: usize,
        stats: Arc<Stats>,
    ) -> (Split, Vec<ShaperConfig>) {
        let mut splitter = Splitter::new(host, threads, DEFAULT_EPOCH);
        // A new splitter's counters are all zero: its first split remembers nothing new.
        let first = splitter.initial();
        let split = Split {
            splitter,
            generation: 0,
            stats,
        };
        (split, first)
    }

    /// Start a new generation with rates `host`; return its number and each loop's first
    /// slice (every rate shared equally).
    pub fn rebase(&mut self, host: ShaperConfig) -> (u64, Vec<ShaperConfig>) {
        // The equal shares come from a fresh splitter: this one keeps its counters.
        let first = Splitter::new(host.clone(), self.splitter.threads(), DEFAULT_EPOCH).initial();
        self.splitter.rebase(host);
        self.generation += 1;
        (self.generation, first)
    }

    /// Count into `stats` from now on (counters grown for new ids).
    pub fn set_stats(&mut self, stats: Arc<Stats>) {
        self.stats = stats;
    }
}

/// Runs the splitter every epoch until stopped.
pub struct Coordinator {
    board: Arc<Board>,
    split: Arc<Mutex<Split>>,
    stop: Arc<AtomicBool>,
}

impl Coordinator {
    pub fn new(board: Arc<Board>, split: Arc<Mutex<Split>>, stop: Arc<AtomicBool>) -> Coordinator {
        Coordinator { board, split, stop }
    }

    /// Start the coordinator's thread.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("netd-split".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let epoch = Duration::from_nanos(DEFAULT_EPOCH);
        let mut last_split = Instant::now();
        let mut last_publish = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(epoch.saturating_sub(last_split.elapsed()));
            let elapsed = u64::try_from(last_split.elapsed().as_nanos()).unwrap_or(u64::MAX);
            last_split = Instant::now();
            let mut split = lock(&self.split);
            let Some(counters) = self.board.gather(split.generation) else {
                // A loop has not applied the latest change yet: split once it has.
                continue;
            };
            let generation = split.generation;
            let configs = split.splitter.split_over(&counters, elapsed);
            for (thread, config) in configs.into_iter().enumerate() {
                self.board.post(thread, Posted { generation, config });
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                publish_sums(&split, &counters);
                last_publish = Instant::now();
            }
        }
        // The loops have stopped or are stopping: their last counters are the final ones.
        let split = lock(&self.split);
        if let Some(counters) = self.board.gather(split.generation) {
            publish_sums(&split, &counters);
        }
    }
}

/// Copy each tenant's counters summed over the loops to the shared stats.
fn publish_sums(split: &Split, counters: &[Vec<TenantCounters>]) {
    let tenants = split.splitter.config().tenants.iter().map(|t| t.id);
    for (i, id) in tenants.enumerate() {
        let sum = counters
            .iter()
            .filter_map(|thread| thread.get(i))
            .fold(TenantCounters::default(), |sum, c| sum.plus(c));
        if let Some(gauges) = split.stats.shaper.get(id.index()) {
            gauges.publish(&sum);
        }
    }
}

/// Lock `mutex`, carrying on past a thread that panicked holding it (the data is counters).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| {
        warn!("a data-path thread panicked holding the splitter's board");
        poisoned.into_inner()
    })
}

/// Collects the loops' parts of one update: the ports each removed, handed on in one piece
/// once the last loop has applied its part.
#[derive(Debug, Clone)]
pub struct Joined(Arc<Mutex<FanIn>>);

#[derive(Debug)]
struct FanIn {
    remaining: usize,
    removed: Vec<Box<dyn Port>>,
    done: Option<tokio::sync::oneshot::Sender<Vec<Box<dyn Port>>>>,
}

impl Joined {
    /// One loop has applied its part, removing `removed` (the ports it owned).
    pub fn report(&self, removed: Vec<Box<dyn Port>>) {
        let mut fan_in = lock(&self.0);
        fan_in.removed.extend(removed);
        fan_in.remaining = fan_in.remaining.saturating_sub(1);
        if fan_in.remaining == 0
            && let Some(done) = fan_in.done.take()
        {
            let _ = done.send(std::mem::take(&mut fan_in.removed));
        }
    }
}

/// Give `port` to the loop (of `threads`) that owns it and a write-only handle on it to
/// every other loop, through `give(loop, port, owned)`. Every loop that can get its part
/// gets it; the first failure (a port that cannot be shared, or `give`'s) is returned.
fn deal(
    port: Box<dyn Port>,
    threads: usize,
    mut give: impl FnMut(usize, Box<dyn Port>, bool) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let owner = owner_of(port.id().index(), threads);
    let mut result = Ok(());
    for thread in (0..threads).filter(|&t| t != owner) {
        let handle = port.share().and_then(|handle| {
            handle.ok_or_else(|| {
                std::io::Error::other(format!(
                    "port {} cannot be shared between data-path threads",
                    port.id()
                ))
            })
        });
        let given = handle.and_then(|handle| give(thread, handle, false));
        if result.is_ok() {
            result = given;
        }
    }
    let given = give(owner, port, true);
    result.and(given)
}

/// Cut `update` into one part per loop: the ports each owns, write-only handles on the
/// others, the same switch and counters, and a new generation of split rates.
pub fn split_update(update: Update, threads: usize, split: &Mutex<Split>) -> Vec<Update> {
    let Update {
        remove,
        add,
        switch,
        shaper,
        stats,
        done,
        ..
    } = update;
    let joined = done.map(|done| {
        Joined(Arc::new(Mutex::new(FanIn {
            remaining: threads,
            removed: Vec::new(),
            done: Some(done),
        })))
    });
    let mut parts: Vec<Update> = (0..threads)
        .map(|_| Update {
            remove: remove.clone(),
            switch: switch.clone(),
            stats: stats.clone(),
            joined: joined.clone(),
            ..Update::default()
        })
        .collect();
    for port in add {
        let id = port.id();
        let dealt = deal(port, threads, |thread, port, owned| {
            let part = &mut parts[thread];
            if owned {
                &mut part.add
            } else {
                &mut part.shared
            }
            .push(port);
            Ok(())
        });
        // `refusal` keeps ports that cannot be shared out of a topology with several loops.
        if let Err(err) = dealt {
            warn!(port = %id, cause = %err, "cannot share port");
        }
    }
    let mut split = lock(split);
    if let Some(stats) = &stats {
        split.set_stats(stats.clone());
    }
    if let Some(shaping) = shaper {
        let (generation, first) = split.rebase(shaping.host.clone());
        for (part, host) in parts.iter_mut().zip(first) {
            part.generation = generation;
            part.shaper = Some(Shaping {
                host,
                uplink: shaping.uplink.clone(),
            });
        }
    }
    parts
}

/// The data path's loops before they run, and the coordinator when there are several.
pub struct Group {
    loops: Vec<DataPath>,
    coordinator: Option<Coordinator>,
    handle: UpdateHandle,
    stop: StopHandle,
}

impl Group {
    /// Build `threads` loops for `switch` and `shaping`, owning `ports` between them; return
    /// them and the handle that stops them all.
    pub fn new(
        threads: usize,
        switch: Switch,
        shaping: Shaping,
        ports: Vec<Box<dyn Port>>,
        stats: Arc<Stats>,
    ) -> std::io::Result<(Group, StopHandle)> {
        if threads <= 1 {
            let (datapath, stop) = DataPath::new(switch, shaping, ports, stats)?;
            let handle = datapath.update_handle();
            let group = Group {
                loops: vec![datapath],
                coordinator: None,
                handle,
                stop: stop.clone(),
            };
            return Ok((group, stop));
        }
        let (split, first) = Split::new(shaping.host.clone(), threads, stats.clone());
        let split = Arc::new(Mutex::new(split));
        let board = Arc::new(Board::new(threads));
        let flag = Arc::new(AtomicBool::new(false));
        let mut stop = StopHandle {
            stop: flag.clone(),
            wakers: Vec::new(),
        };
        let mut handle = UpdateHandle {
            loops: Vec::new(),
            split: Some(split.clone()),
        };
        let mut loops = Vec::with_capacity(threads);
        for (thread, host) in first.into_iter().enumerate() {
            let shaping = Shaping {
                host,
                uplink: shaping.uplink.clone(),
            };
            let link = ThreadLink::new(thread, board.clone());
            let (mut datapath, its_stop) =
                DataPath::new(switch.clone(), shaping, Vec::new(), stats.clone())?;
            datapath.join_group(link, flag.clone());
            stop.wakers.extend(its_stop.wakers);
            handle.loops.extend(datapath.update_handle().loops);
            loops.push(datapath);
        }
        let coordinator = Some(Coordinator::new(board, split, flag));
        let mut group = Group {
            loops,
            coordinator,
            handle,
            stop: stop.clone(),
        };
        group.attach(ports)?;
        Ok((group, stop))
    }

    /// Add `ports`, each to the loop that owns it, with write-only handles on it for the
    /// others.
    pub fn attach(&mut self, ports: Vec<Box<dyn Port>>) -> std::io::Result<()> {
        let threads = self.loops.len();
        if threads == 1 {
            return self.loops[0].attach(ports);
        }
        for port in ports {
            deal(port, threads, |thread, port, owned| {
                let datapath = &mut self.loops[thread];
                if owned {
                    datapath.attach(vec![port])
                } else {
                    datapath.attach_shared(vec![port])
                }
            })?;
        }
        Ok(())
    }

    /// Return the handle that sends live changes to every loop.
    pub fn update_handle(&self) -> UpdateHandle {
        self.handle.clone()
    }

    /// Start every loop (loop `k` pinned to CPU `cpu + k` if `cpu` is given) and the
    /// coordinator; return a thread that ends when they all have, with the first error, and
    /// the priority the loops run at. When one loop ends, the others are stopped.
    pub fn spawn(
        self,
        cpu: Option<usize>,
        priority: Option<Priority>,
    ) -> std::io::Result<(JoinHandle<std::io::Result<()>>, Priority)> {
        let stop = self.stop;
        let mut running = Vec::with_capacity(self.loops.len());
        let mut granted = None;
        for (k, datapath) in self.loops.into_iter().enumerate() {
            match datapath.spawn(cpu.map(|c| c + k), priority) {
                Ok((thread, priority)) => {
                    granted.get_or_insert(priority);
                    running.push(thread);
                }
                Err(err) => {
                    stop.stop();
                    for thread in running {
                        let _ = thread.join();
                    }
                    return Err(err);
                }
            }
        }
        let priority = granted.unwrap_or(Priority::Normal);
        let Some(coordinator) = self.coordinator else {
            let only = running
                .pop()
                .ok_or_else(|| std::io::Error::other("no data path"))?;
            return Ok((only, priority));
        };
        let splitting = coordinator.spawn()?;
        let watch = std::thread::Builder::new()
            .name("netd-loops".into())
            .spawn(move || {
                // Any loop ending (stopped, or failed) ends them all.
                while !running.iter().any(JoinHandle::is_finished) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                stop.stop();
                let mut result = Ok(());
                for thread in running {
                    let ended = thread.join().unwrap_or_else(|_| {
                        Err(std::io::Error::other("data path thread panicked"))
                    });
                    if result.is_ok() {
                        result = ended;
                    }
                }
                let _ = splitting.join();
                result
            })?;
        Ok((watch, priority))
    }
}

/// A loop's link to the others: its place on the board and the generation it runs.
#[derive(Debug)]
pub struct ThreadLink {
    pub thread: usize,
    pub board: Arc<Board>,
    pub generation: u64,
}

impl ThreadLink {
    pub fn new(thread: usize, board: Arc<Board>) -> ThreadLink {
        ThreadLink {
            thread,
            board,
            generation: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::TenantId;

    #[test]
    fn ports_are_owned_round_robin_and_one_thread_owns_all() {
        assert_eq!(owner_of(5, 2), 1);
        assert_eq!(owner_of(4, 2), 0);
        assert_eq!(owner_of(7, 1), 0);
        assert_eq!(owner_of(7, 0), 0);
    }

    #[test]
    fn the_coordinator_splits_only_when_every_loop_runs_the_latest_generation() {
        let board = Board::new(2);
        board.publish(0, 0, std::iter::empty());
        assert!(board.gather(0).is_some_and(|c| c.len() == 2));
        board.publish(1, 1, std::iter::empty());
        assert!(board.gather(1).is_none(), "loop 0 is still at generation 0");
        board.publish(0, 1, std::iter::once(TenantCounters::default()));
        assert_eq!(board.gather(1).map(|c| c[0].len()), Some(1));
    }

    fn one_tenant(guaranteed_mbit: u64) -> ShaperConfig {
        let mbit = |n: u64| crate::topology::Rate::from_bits_per_sec(n * 1_000_000);
        ShaperConfig {
            capacity: mbit(1000),
            tenants: vec![crate::shaper::TenantConfig {
                id: TenantId(0),
                guaranteed: mbit(guaranteed_mbit),
                ceiling: mbit(1000),
                weight: 1,
                ports: Vec::new(),
            }],
            queue: Default::default(),
            burst: Default::default(),
        }
    }

    #[test]
    fn a_change_reaches_every_loop_in_a_new_generation_and_is_done_when_all_applied() {
        let stats = Arc::new(Stats::new(2, 1));
        let (split, first) = Split::new(one_tenant(300), 2, stats);
        assert_eq!(first.len(), 2);
        let split = Mutex::new(split);
        let (done, mut applied) = tokio::sync::oneshot::channel();
        let update = Update {
            shaper: Some(Shaping::host_only(one_tenant(500))),
            done: Some(done),
            ..Update::default()
        };
        let parts = split_update(update, 2, &split);
        assert_eq!(parts.len(), 2);
        for part in &parts {
            assert_eq!(part.generation, 1);
            let host = &part.shaper.as_ref().expect("the new rates").host;
            // Each loop starts with half the new guarantee.
            assert_eq!(host.tenants[0].guaranteed.bits_per_sec(), 250_000_000);
        }
        let joined: Vec<Joined> = parts.into_iter().filter_map(|p| p.joined).collect();
        joined[0].report(Vec::new());
        assert!(
            applied.try_recv().is_err(),
            "done before the second loop applied it"
        );
        joined[1].report(Vec::new());
        assert!(applied.try_recv().is_ok_and(|removed| removed.is_empty()));
    }

    #[test]
    fn a_port_goes_to_its_owner_even_when_the_others_cannot_share_it() {
        use crate::port::{MemoryPort, Offload};
        use crate::topology::PortId;
        // A memory port cannot be shared: loops 0 and 1 get nothing, loop 2 (5 mod 3) the
        // port itself, and the failure is reported.
        let (port, _peer) = MemoryPort::pair(PortId(5), Offload::None).expect("a socket pair");
        let mut given = Vec::new();
        let dealt = deal(Box::new(port), 3, |thread, port, owned| {
            given.push((thread, port.id(), owned));
            Ok(())
        });
        assert!(dealt.is_err());
        assert_eq!(given, vec![(2, PortId(5), true)]);
    }

    #[test]
    fn a_posted_slice_is_taken_once() {
        let board = Board::new(1);
        let config = ShaperConfig {
            capacity: crate::topology::Rate::from_bits_per_sec(1_000_000),
            tenants: Vec::new(),
            queue: Default::default(),
            burst: Default::default(),
        };
        board.post(
            0,
            Posted {
                generation: 3,
                config,
            },
        );
        assert_eq!(board.take_posted(0).map(|p| p.generation), Some(3));
        assert!(board.take_posted(0).is_none());
    }
}
