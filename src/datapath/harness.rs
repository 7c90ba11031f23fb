//! A data path on its own thread over in-memory ports, for tests without root.

use std::time::Duration;

use super::*;
use crate::port::{MemoryPeer, MemoryPort};
use crate::topology::Topology;

/// Long enough for a frame to cross an idle loop on a loaded 2-core machine.
pub(crate) const ARRIVES: Duration = Duration::from_secs(5);
/// How long a port stays silent to count as "received nothing".
pub(crate) const SILENT: Duration = Duration::from_millis(150);

/// A data path running on its own thread over in-memory ports.
pub(crate) struct Loop {
    pub(crate) peers: Vec<Option<MemoryPeer>>,
    pub(crate) stats: Arc<Stats>,
    updates: UpdateHandle,
    stop: StopHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Loop {
    /// Run `topology` with `custom` ports, and a memory port for every other server (with
    /// `offload[port id]`). Peers are indexed by port id.
    pub(crate) fn start(
        topology: &Topology,
        offload: &[Offload],
        custom: Vec<Box<dyn Port>>,
    ) -> Loop {
        let mut ports = custom;
        let mut peers: Vec<Option<MemoryPeer>> = (0..8).map(|_| None).collect();
        for server in &topology.servers {
            if ports.iter().any(|p| p.id() == server.id) {
                continue;
            }
            let (port, peer) = MemoryPort::pair(server.id, offload[server.id.index()]).unwrap();
            ports.push(Box::new(port));
            peers[server.id.index()] = Some(peer);
        }
        let stats = Arc::new(Stats::new(8, 4));
        let (datapath, stop) = DataPath::new(
            Switch::new(topology),
            crate::shaper::Shaping::from_topology(topology),
            ports,
            stats.clone(),
        )
        .unwrap();
        let updates = datapath.update_handle();
        let (thread, _) = datapath.spawn(None, Some(Priority::Normal)).unwrap();
        Loop {
            peers,
            stats,
            updates,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn peer(&self, port: PortId) -> &MemoryPeer {
        self.peers[port.index()]
            .as_ref()
            .expect("a peer for that port")
    }

    /// Wait until `port` counted a drop for `reason`.
    pub(crate) fn wait_drop(&self, port: PortId, reason: DropReason) {
        let deadline = Instant::now() + ARRIVES;
        while self.stats.ports[port.index()].drops(reason) == 0 {
            assert!(
                Instant::now() < deadline,
                "{port}: no {reason} drop counted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Apply `update` and wait for the loop to take it; return the ports it handed back.
    pub(crate) fn apply(&self, mut update: Update) -> Vec<Box<dyn Port>> {
        let (done, applied) = tokio::sync::oneshot::channel();
        update.done = Some(done);
        self.updates.send(update).unwrap();
        applied
            .blocking_recv()
            .expect("the loop applied the update")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
