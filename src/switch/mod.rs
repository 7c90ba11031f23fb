//! Switch: the pure per-frame decision of an isolated, multi-tenant L2 switch.
//!
//! Contract:
//! - [`Switch::decide`] never panics and never allocates, whatever the bytes and whatever
//!   the ingress port; it does no I/O and keeps no state, so one `Switch` can serve every
//!   data-path thread at once.
//! - Nothing crosses tenants: a frame from a tenant's port is delivered, flooded or dropped
//!   within that tenant only.
//! - Every drop names its [`DropReason`], for the data path to count.
//!
//! A decision is [`guard`] (anti-spoofing: every source address in the frame is the port's
//! own) then [`forward`] (the tenant's static MAC table; group addresses flood the tenant).
//! The switch is immutable and built whole from a [`Topology`]; the control plane replaces
//! it whole when the topology changes.

mod forward;
mod guard;

#[cfg(test)]
mod fixtures;

use crate::stats::DropReason;
use crate::topology::{PortId, TenantId, Topology};
use crate::wire::MacAddr;

use forward::ForwardTable;
use guard::PortFacts;

/// The decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it to this port (always another port of the sender's tenant).
    Unicast(PortId),
    /// Send a copy to every port of this tenant except the ingress.
    Flood(TenantId),
    /// Drop it and count the reason.
    Drop(DropReason),
}

/// An immutable switch: per-port facts for the guard and per-tenant tables for forwarding.
#[derive(Clone, Debug)]
pub struct Switch {
    /// Indexed by `PortId`.
    ports: Box<[PortFacts]>,
    table: ForwardTable,
}

impl Switch {
    /// Build the switch for every server of `topology`, one port each.
    pub fn new(topology: &Topology) -> Switch {
        let ports = topology
            .servers
            .iter()
            .enumerate()
            .map(|(i, server)| {
                debug_assert_eq!(server.id.index(), i, "PortId(i) is servers[i]");
                PortFacts::new(server)
            })
            .collect();
        Switch {
            ports,
            table: ForwardTable::new(topology),
        }
    }

    /// Decide what to do with one frame read from `ingress`.
    ///
    /// A port this switch does not know (say, one removed by a topology change while its
    /// frame was in flight) owns no address, so its frames drop as `SpoofedMac`.
    pub fn decide(&self, ingress: PortId, frame: &[u8]) -> Decision {
        let Some(port) = self.ports.get(ingress.index()) else {
            return Decision::Drop(DropReason::SpoofedMac);
        };
        match guard::check(port, frame) {
            Ok(eth) => self
                .table
                .forward(ingress, port.tenant, MacAddr::from(eth.dst_addr())),
            Err(reason) => Decision::Drop(reason),
        }
    }

    /// Return all ports of a tenant, in port order (the caller skips the ingress port when
    /// flooding); empty for a tenant without servers or unknown to this switch.
    pub fn tenant_ports(&self, tenant: TenantId) -> &[PortId] {
        self.table.members(tenant)
    }

    /// Return the tenant of a port.
    ///
    /// # Panics
    /// If `port` is not a port of this switch (`port.index() >= self.port_count()`).
    pub fn tenant_of(&self, port: PortId) -> TenantId {
        self.ports[port.index()].tenant
    }

    /// Return the number of ports; `PortId(0)..PortId(port_count)` are this switch's ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }
}
