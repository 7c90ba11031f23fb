//! Ports: the switch's ends of whatever carries a tenant's frames.
//!
//! A port is known to two layers. The **switch** knows its [`PortKind`] (from the topology):
//! which tenant it serves and how far its frames are trusted. The **data path** knows its
//! I/O, through the [`Port`] trait: how to read and write whole Ethernet frames, whether
//! they carry a virtio-net header ([`Offload`]), and whether the port is driven by an fd the
//! loop polls or by a deadline it keeps.
//!
//! Contract of every [`Port`]: `read` returns one whole frame or `WouldBlock` (never blocks);
//! `write` takes one whole frame or fails; neither panics on any bytes. The frame is
//! prefixed by the port's virtio-net header when its offload says so.
//!
//! Implementations:
//! - [`TapPort`]: a virtual server's TAP (fd), with offloads when opened with `IFF_VNET_HDR`;
//! - [`UplinkPort`]: a routed tenant's TUN towards the host's kernel (fd), translating
//!   between IP packets and the switch's Ethernet frames;
//! - [`MemoryPort`]: an in-process port over a datagram socket pair (fd), whose other end a
//!   test holds ([`MemoryPeer`]): the event loop and live updates run without root;
//! - [`VxlanPort`]: the VXLAN tunnel to a cluster's other hosts (fd): one port of the data
//!   path that is many switch ports, one per remote server ([`Port::carries`]);
//! - [`TrunkPort`]: the bridged uplink's NIC by `AF_PACKET` (fd): one switch port per
//!   tenant's VLAN.
//!
//! A port without an fd is driven by a deadline: the loop calls [`Port::poll`] when
//! [`Port::poll_at`] comes, and reads the port after every frame it writes to it.

mod memory;
mod tap;
pub mod trunk;
mod uplink;
pub mod vxlan;

use std::fmt::Debug;
use std::io;
use std::os::fd::RawFd;

pub use memory::{MemoryPeer, MemoryPort};
pub use tap::TapPort;
pub use trunk::{TrunkPort, TrunkTable};
pub use uplink::UplinkPort;
pub use vxlan::{TunnelTable, VxlanPort};

use crate::kernel::Plumbing;
use crate::shaper::Nanos;
use crate::stats::Stats;
pub use crate::topology::PortKind;
use crate::topology::cluster::VXLAN_PORT;
use crate::topology::{PortId, Topology};
use crate::wire::vnet::VNET_HDR_LEN;

/// What a port's frames carry besides the Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// Plain frames of at most the MTU, checksums complete.
    None,
    /// A virtio-net header of [`VNET_HDR_LEN`] bytes before each frame: GSO super-frames and
    /// partial checksums may come and go (a TAP with `IFF_VNET_HDR` and offloads on).
    VnetHeader,
}

impl Offload {
    /// [`Offload::VnetHeader`] when `vnet_header`, else [`Offload::None`].
    pub fn with_header(vnet_header: bool) -> Offload {
        if vnet_header {
            Offload::VnetHeader
        } else {
            Offload::None
        }
    }

    /// The virtio-net header length to open a TAP or TUN with (`None`: plain frames).
    pub fn vnet_header_len(self) -> Option<usize> {
        (self != Offload::None).then_some(self.header_len())
    }

    /// Return the bytes before each frame.
    pub fn header_len(self) -> usize {
        match self {
            Offload::None => 0,
            Offload::VnetHeader => VNET_HDR_LEN,
        }
    }
}

/// Build the ports that carry many switch ports over one socket each, the VXLAN tunnel
/// and the bridged uplink's trunk, for `topology`, over copies of the sockets `plumbing`
/// holds. A port none of whose switch ports exists is left out.
pub fn shared_ports(
    topology: &Topology,
    plumbing: &Plumbing,
    offload: Offload,
    stats: &Stats,
) -> io::Result<Vec<Box<dyn Port>>> {
    let mut ports: Vec<Box<dyn Port>> = Vec::new();
    if let Some(socket) = plumbing.tunnel_socket() {
        let table = TunnelTable::new(topology, VXLAN_PORT);
        let tunnel = VxlanPort::new(socket?, table, offload, stats.tunnel.clone());
        ports.extend(tunnel.map(|p| Box::new(p) as Box<dyn Port>));
    }
    if let Some(fd) = plumbing.trunk_socket() {
        let trunk = TrunkPort::new(fd?, TrunkTable::new(topology), stats.trunk.clone());
        ports.extend(trunk.map(|p| Box::new(p) as Box<dyn Port>));
    }
    Ok(ports)
}

/// Return the ids under which the data path knows `topology`'s shared ports (see
/// [`shared_ports`]), if their switch ports differ from `new`'s: they must be built anew.
pub fn shared_ports_to_replace(topology: &Topology, new: &Topology) -> Option<Vec<PortId>> {
    let (tunnel, trunk) = (
        TunnelTable::new(topology, VXLAN_PORT),
        TrunkTable::new(topology),
    );
    if tunnel == TunnelTable::new(new, VXLAN_PORT) && trunk == TrunkTable::new(new) {
        return None;
    }
    Some(
        tunnel
            .ports()
            .into_iter()
            .take(1)
            .chain(trunk.ports().into_iter().take(1))
            .collect(),
    )
}

/// The I/O of one port, as the data path drives it.
pub trait Port: Debug + Send {
    /// Return the port's id (its key in the switch, the shaper and the counters).
    fn id(&self) -> PortId;

    /// Return what the port's frames carry besides the Ethernet frame.
    fn offload(&self) -> Offload;

    /// Return the fd the loop polls for readability; `None` for a port driven by a deadline.
    fn fd(&self) -> Option<RawFd>;

    /// Read one frame (with its header, see [`Port::offload`]) into `buf`; `WouldBlock` when
    /// there is none. A frame longer than `buf` is cut.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Write one whole frame (with its header, see [`Port::offload`]).
    fn write(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Return the switch ports this port carries: its own id for most; a trunk (the VXLAN
    /// tunnel) carries one per remote server.
    fn carries(&self) -> Vec<PortId> {
        vec![self.id()]
    }

    /// Return the switch port the frame last read came in on (a trunk's come from many).
    fn last_ingress(&self) -> PortId {
        self.id()
    }

    /// Write one whole frame to switch port `to`, one of those this port carries.
    fn write_to(&mut self, to: PortId, frame: &[u8]) -> io::Result<()> {
        let _ = to;
        self.write(frame)
    }

    /// Return true if [`Port::write_to`] may hold frames back to send them together, so the
    /// loop must call [`Port::flush`] before it waits.
    fn holds_writes(&self) -> bool {
        false
    }

    /// Send the frames held back; the port counts what the kernel refuses.
    fn flush(&mut self) {}

    /// For a port without an fd: when its timers next need [`Port::poll`], if ever.
    fn poll_at(&self) -> Option<Nanos> {
        None
    }

    /// Let a port without an fd run its timers at `now`; it may have frames to read after.
    /// The data path also reads such a port after every frame it writes to it.
    fn poll(&mut self, _now: Nanos) {}

    /// Return a second handle on the same device, for another data-path thread to write to
    /// (only the thread that owns the port reads it); `None` for a port whose state only
    /// one thread may drive (a gateway's stack, the tunnel's held writes).
    fn share(&self) -> io::Result<Option<Box<dyn Port>>> {
        Ok(None)
    }
}
