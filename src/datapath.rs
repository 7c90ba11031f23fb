//! The data path: one event loop moving frames from ports through the switch to ports.
//!
//! Contract: a single thread owns every port; it never blocks on one port (all fds are
//! non-blocking, edge-triggered on epoll via mio), never allocates per frame (one reusable
//! receive buffer), never panics on a frame, and never logs per frame: every frame ends up in
//! a counter, as received, sent, or dropped with a [`DropReason`].
//!
//! Fairness between ports: each readable port is drained at most [`BATCH`] frames per turn,
//! round-robin, so one flooding server cannot monopolise the loop.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, warn};

use crate::port::TapPort;
use crate::stats::{DropReason, Stats};
use crate::switch::{Decision, Switch};
use crate::topology::PortId;

/// Largest frame a read can return: 64 KiB, so oversized frames are seen whole and counted.
pub const MAX_FRAME: usize = 65_536;
/// Frames read from one port before moving on to the next ready port.
pub const BATCH: usize = 64;

const WAKER: Token = Token(usize::MAX);

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

/// The event loop's state.
pub struct DataPath {
    poll: Poll,
    ports: Vec<TapPort>,
    /// Position of each port in `ports`, by `PortId` index.
    slot_of: Vec<Option<usize>>,
    switch: Switch,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    /// Ports known readable (edge seen, not yet drained to `WouldBlock`), by slot.
    ready: Vec<bool>,
    buf: Box<[u8]>,
}

impl DataPath {
    /// Register `ports` with a new poller; return the loop and a handle to stop it.
    pub fn new(
        switch: Switch,
        ports: Vec<TapPort>,
        stats: Arc<Stats>,
    ) -> io::Result<(DataPath, StopHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
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
        Ok((
            DataPath {
                poll,
                ports,
                slot_of,
                switch,
                stats,
                stop,
                ready,
                buf: vec![0u8; MAX_FRAME].into_boxed_slice(),
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

    /// Run until stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let busy = self.ready.iter().any(|&r| r);
            let timeout = if busy {
                Some(std::time::Duration::ZERO)
            } else {
                None
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(slot) => {
                        if let Some(r) = self.ready.get_mut(slot) {
                            *r = true;
                        }
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                debug!("data path stopping");
                return Ok(());
            }
            for slot in 0..self.ports.len() {
                if self.ready[slot] {
                    self.ready[slot] = self.drain(slot);
                }
            }
        }
    }

    /// Read up to [`BATCH`] frames from the port in `slot`; return true if it may have more.
    fn drain(&mut self, slot: usize) -> bool {
        for _ in 0..BATCH {
            let len = match self.ports[slot].read(&mut self.buf) {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // A TAP whose device vanished keeps failing; stop polling it rather than spin.
                    warn!(port = %self.ports[slot].id(), cause = %err, "read failed; port disabled");
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&self.ports[slot].as_raw_fd()));
                    return false;
                }
            };
            let ingress = self.ports[slot].id();
            self.forward(ingress, len);
        }
        true
    }

    /// Count, decide and deliver the frame in `self.buf[..len]` that arrived on `ingress`.
    fn forward(&self, ingress: PortId, len: usize) {
        let frame = &self.buf[..len];
        let tenant = self.switch.tenant_of(ingress);
        let port_counters = &self.stats.ports[ingress.index()];
        let tenant_counters = &self.stats.tenants[tenant.index()];
        port_counters.count_rx(len);
        tenant_counters.count_rx(len);
        match self.switch.decide(ingress, frame) {
            Decision::Unicast(egress) => self.deliver(egress, frame),
            Decision::Flood(tenant) => {
                for &egress in self.switch.tenant_ports(tenant) {
                    if egress != ingress {
                        self.deliver(egress, frame);
                    }
                }
            }
            Decision::Drop(reason) => {
                port_counters.count_drop(reason);
                tenant_counters.count_drop(reason);
            }
        }
    }

    /// Write `frame` to `egress`, counting it as sent or as a write failure on that port.
    fn deliver(&self, egress: PortId, frame: &[u8]) {
        let tenant = self.switch.tenant_of(egress);
        let Some(slot) = self.slot_of.get(egress.index()).copied().flatten() else {
            self.stats.ports[egress.index()].count_drop(DropReason::WriteFailed);
            return;
        };
        match self.ports[slot].write(frame) {
            Ok(()) => {
                self.stats.ports[egress.index()].count_tx(frame.len());
                self.stats.tenants[tenant.index()].count_tx(frame.len());
            }
            Err(_) => {
                self.stats.ports[egress.index()].count_drop(DropReason::WriteFailed);
                self.stats.tenants[tenant.index()].count_drop(DropReason::WriteFailed);
            }
        }
    }
}
