//! Forward: where a guarded frame goes, from static per-tenant tables built from the topology.
//!
//! Contract: nothing crosses tenants. A decision for a frame from a tenant's port names only
//! that tenant or one of its ports: a MAC owned by another tenant's server is
//! `UnknownDestination`, exactly as if nobody owned it. [`ForwardTable::forward`] never
//! panics and never allocates.
//!
//! - Group destinations (I/G bit set: broadcast and multicast) → `Flood(tenant)`; the data
//!   path sends a copy to each of the tenant's ports except the ingress.
//! - A unicast destination owned by the ingress itself → `Drop(Hairpin)`; owned by another
//!   port of the tenant → `Unicast(port)`; otherwise → `Drop(UnknownDestination)`.
//!
//! Lookup structure: each tenant has its own table, a sorted boxed slice of MAC keys (the
//! six octets as a `u64`) with a parallel slice of ports, searched by binary search. Scoping
//! by tenant is structural: another tenant's MACs are not in the table at all. The table is
//! immutable and tiny (a tenant has a handful to a few hundred servers), so it fits in a few
//! cache lines: ~8 integer comparisons for 200 servers, no hashing, no pointer chasing, and
//! no per-frame allocation. A hash map would only pay off for tenants far larger than a
//! host holds.

use crate::stats::DropReason;
use crate::topology::{PortId, TenantId, Topology};
use crate::wire::MacAddr;

use super::Decision;

/// The static forwarding tables of every tenant.
#[derive(Clone, Debug, Default)]
pub(crate) struct ForwardTable {
    /// Indexed by `TenantId`.
    tenants: Box<[TenantTable]>,
}

/// One tenant's ports and its MAC → port table.
#[derive(Clone, Debug, Default)]
struct TenantTable {
    /// The tenant's ports, in port order.
    members: Box<[PortId]>,
    /// MAC keys ([`mac_key`]), sorted ascending.
    macs: Box<[u64]>,
    /// `ports[i]` owns `macs[i]`.
    ports: Box<[PortId]>,
}

impl ForwardTable {
    /// Build the tables of every tenant of `topology`.
    pub(crate) fn new(topology: &Topology) -> ForwardTable {
        // Size by the servers too, so a server can never index past the table.
        let count = topology
            .servers
            .iter()
            .map(|s| s.tenant.index() + 1)
            .chain([topology.tenants.len()])
            .max()
            .unwrap_or(0);
        let mut entries: Vec<Vec<(u64, PortId)>> = vec![Vec::new(); count];
        for server in &topology.servers {
            entries[server.tenant.index()].push((mac_key(server.mac), server.id));
        }
        let tenants = entries
            .into_iter()
            .map(|mut entries| {
                let mut members: Vec<PortId> = entries.iter().map(|&(_, port)| port).collect();
                members.sort_unstable();
                entries.sort_unstable();
                TenantTable {
                    members: members.into(),
                    macs: entries.iter().map(|&(mac, _)| mac).collect(),
                    ports: entries.iter().map(|&(_, port)| port).collect(),
                }
            })
            .collect();
        ForwardTable { tenants }
    }

    /// Return the ports of `tenant`, in port order (empty for an unknown tenant).
    pub(crate) fn members(&self, tenant: TenantId) -> &[PortId] {
        self.tenants
            .get(tenant.index())
            .map_or(&[], |t| &t.members[..])
    }

    /// Return the port of `tenant` that owns `mac`, if any.
    pub(crate) fn lookup(&self, tenant: TenantId, mac: MacAddr) -> Option<PortId> {
        let table = self.tenants.get(tenant.index())?;
        let at = table.macs.binary_search(&mac_key(mac)).ok()?;
        table.ports.get(at).copied()
    }

    /// Decide where a frame from `ingress` (a port of `tenant`) addressed to `dst` goes.
    pub(crate) fn forward(&self, ingress: PortId, tenant: TenantId, dst: MacAddr) -> Decision {
        if dst.is_multicast() {
            return Decision::Flood(tenant);
        }
        match self.lookup(tenant, dst) {
            Some(port) if port == ingress => Decision::Drop(DropReason::Hairpin),
            Some(port) => Decision::Unicast(port),
            None => Decision::Drop(DropReason::UnknownDestination),
        }
    }
}

/// Pack a MAC into the low 48 bits of a `u64`, preserving its order.
fn mac_key(mac: MacAddr) -> u64 {
    let [a, b, c, d, e, f] = mac.octets();
    u64::from_be_bytes([0, 0, a, b, c, d, e, f])
}
