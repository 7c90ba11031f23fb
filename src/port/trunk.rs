//! The bridged uplink's trunk: the host's interface towards the provider, attached by an
//! `AF_PACKET` socket, carrying each tenant's L2 domain on its own VLAN.
//!
//! To the switch the trunk is one port per tenant with a VLAN ([`Port::carries`]), of kind
//! [`crate::port::PortKind::Trunk`]. On the way in, the kernel has taken the 802.1Q tag
//! off and gives it in the packet's auxiliary data: the VLAN names the tenant's port, and a
//! frame without a tag, or on a VLAN of no tenant, is dropped and counted. On the way out
//! the tag is inserted after the MAC addresses (and a virtio-net header's offsets moved
//! past it), so GSO super-frames leave whole and the NIC, or the kernel, segments them.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Offload, Port};
use crate::kernel::sys;
use crate::stats::TrunkCounters;
use crate::topology::{PortId, Topology};
use crate::wire::vnet::{VNET_HDR_LEN, VnetHeader};

/// Bytes of an 802.1Q tag.
const TAG_LEN: usize = 4;

/// Each tenant's VLAN and port on the trunk, from one topology.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkTable {
    by_vlan: HashMap<u16, PortId>,
    by_port: HashMap<PortId, u16>,
}

impl TrunkTable {
    /// The table of `topology`'s bridged uplink (empty without one).
    pub fn new(topology: &Topology) -> TrunkTable {
        let mut table = TrunkTable::default();
        for tenant in &topology.tenants {
            if let Some((port, vlan)) = tenant.uplink.as_ref().and_then(|u| Some((u.port, u.vlan?)))
            {
                table.by_vlan.insert(vlan, port);
                table.by_port.insert(port, vlan);
            }
        }
        table
    }

    /// Return the tenants' trunk ports, in order.
    pub fn ports(&self) -> Vec<PortId> {
        let mut ports: Vec<PortId> = self.by_port.keys().copied().collect();
        ports.sort_unstable();
        ports
    }
}

/// The trunk's end of the switch.
#[derive(Debug)]
pub struct TrunkPort {
    fd: OwnedFd,
    table: TrunkTable,
    id: PortId,
    counters: Arc<TrunkCounters>,
    last: PortId,
    /// Where a frame gets its tag on the way out.
    out: Vec<u8>,
}

impl TrunkPort {
    /// The trunk over `fd` (from [`sys::open_trunk`] with a [`VNET_HDR_LEN`] header) for the
    /// tenants in `table`; `None` when no tenant has a VLAN.
    pub fn new(fd: OwnedFd, table: TrunkTable, counters: Arc<TrunkCounters>) -> Option<TrunkPort> {
        let id = table.ports().first().copied()?;
        Some(TrunkPort {
            fd,
            table,
            id,
            counters,
            last: id,
            out: Vec::with_capacity(crate::pool::LARGE + TAG_LEN),
        })
    }
}

impl Port for TrunkPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn offload(&self) -> Offload {
        Offload::VnetHeader
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn carries(&self) -> Vec<PortId> {
        self.table.ports()
    }

    fn last_ingress(&self) -> PortId {
        self.last
    }

    /// Read the next frame on a tenant's VLAN, behind its virtio-net header.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let (len, vlan) = sys::recv_trunk(&self.fd, buf)?;
            let Some(vlan) = vlan else {
                self.counters.untagged.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match self.table.by_vlan.get(&vlan) {
                Some(&port) => {
                    self.last = port;
                    return Ok(len);
                }
                None => {
                    self.counters.unknown_vlan.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn write(&mut self, _frame: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the trunk needs the tenant (VLAN) a frame goes to",
        ))
    }

    /// Tag a frame (virtio-net header first) with `to`'s VLAN and send it.
    fn write_to(&mut self, to: PortId, frame: &[u8]) -> io::Result<()> {
        let Some(&vlan) = self.table.by_port.get(&to) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such VLAN"));
        };
        let vnet = VnetHeader::parse(frame).ok_or(io::ErrorKind::InvalidData)?;
        let l2 = frame
            .get(VNET_HDR_LEN..)
            .ok_or(io::ErrorKind::InvalidData)?;
        if l2.len() < 14 {
            return Err(io::ErrorKind::InvalidData.into());
        }
        self.out.clear();
        self.out.extend_from_slice(&frame[..VNET_HDR_LEN]);
        // The checksum and the headers start 4 bytes later behind the tag.
        let shift = |at: usize, out: &mut Vec<u8>| {
            let v = u16::from_le_bytes([out[at], out[at + 1]]);
            if v != 0 {
                let moved = v.saturating_add(u16::try_from(TAG_LEN).unwrap_or(0));
                out[at..at + 2].copy_from_slice(&moved.to_le_bytes());
            }
        };
        if vnet.needs_checksum() {
            shift(6, &mut self.out);
        }
        shift(2, &mut self.out);
        self.out.extend_from_slice(&l2[..12]);
        self.out.extend_from_slice(&[0x81, 0x00]);
        self.out.extend_from_slice(&vlan.to_be_bytes());
        self.out.extend_from_slice(&l2[12..]);
        nix::unistd::write(&self.fd, &self.out)?;
        Ok(())
    }
}
