//! Forward: where a guarded frame goes, from static per-tenant tables built from the topology.
//! Entries may be ports of any kind (servers, the tenant's gateway, its uplink).
//!
//! Routed tenants (a gateway and an uplink): an IPv4 packet a server sends to the gateway's
//! MAC for an address other than the gateway's goes to the tenant's uplink port (the host's
//! kernel routes it on); a packet the uplink port hands back goes to the server owning its
//! destination address (the data path writes that server's MAC into it). The uplink port is
//! reached only by routing: it owns no MAC here and floods never reach it.
//!
//! Contract: nothing crosses tenants. A decision for a frame from a tenant's port names only
//! that tenant or one of its ports: a MAC owned by another tenant's server is
//! `UnknownDestination`, exactly as if nobody owned it. [`ForwardTable::forward`] never
//! panics and never allocates.
//!
//! - Group destinations (I/G bit set: broadcast and multicast) → `Flood(tenant)`; the data
//!   path sends a copy to each of the tenant's flood members except the ingress: every local
//!   port, and one remote server per other host of the cluster (head-end replication: that
//!   host floods its own servers, and never floods back over the tunnel).
//! - A frame from a remote server (over the tunnel) for another remote server →
//!   `Drop(UnknownDestination)`: each host delivers only to its own ports.
//! - Bridged uplink: a tenant's VLAN of the trunk is a flood member that owns no MAC; a
//!   unicast frame for a MAC no port here owns goes there (upstream: the provider's router
//!   and machines), and a frame from it claiming one of this host's ports' MACs is
//!   `SpoofedMac`.
//! - A unicast destination owned by the ingress itself → `Drop(Hairpin)`; owned by another
//!   port of the tenant → `Unicast(tenant, port)`; otherwise → `Drop(UnknownDestination)`.
//!
//! Lookup structure: each tenant has its own table, a sorted boxed slice of MAC keys (the
//! six octets as a `u64`) with a parallel slice of ports, searched by binary search. Scoping
//! by tenant is structural: another tenant's MACs are not in the table at all. The table is
//! immutable and tiny (a tenant has a handful to a few hundred servers), so it fits in a few
//! cache lines: ~8 integer comparisons for 200 servers, no hashing, no pointer chasing, and
//! no per-frame allocation. A hash map would only pay off for tenants far larger than a
//! host holds.

use std::net::Ipv4Addr;

use crate::stats::DropReason;
use crate::topology::{PortId, PortKind, PortSpec, TenantId, Topology};
use crate::wire::{EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN, Ipv4Packet, MacAddr};

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
    /// The ports a flood reaches, in port order (see [`ForwardTable::members`]).
    members: Box<[PortId]>,
    /// `members` without the remote servers: where a flood that came over the tunnel goes.
    local: Box<[PortId]>,
    /// The tenant's remote servers (ports on other hosts), sorted.
    remote: Box<[PortId]>,
    /// MAC keys ([`mac_key`]), sorted ascending.
    macs: Box<[u64]>,
    /// `ports[i]` owns `macs[i]`.
    ports: Box<[PortId]>,
    /// Where routed packets go, for a tenant with a gateway and an uplink.
    routes: Option<Routes>,
    /// Its VLAN of the bridged uplink's trunk: where frames for MACs no port here owns go.
    trunk: Option<PortId>,
}

/// A routed tenant's gateway, uplink and server addresses.
#[derive(Clone, Debug)]
struct Routes {
    gateway_port: PortId,
    gateway_ip: Ipv4Addr,
    uplink_port: PortId,
    /// Server addresses (as `u32`), sorted ascending.
    addresses: Box<[u32]>,
    /// `servers[i]` owns `addresses[i]`.
    servers: Box<[PortId]>,
}

impl ForwardTable {
    /// Build the tables of every tenant of `topology`.
    pub(crate) fn new(topology: &Topology) -> ForwardTable {
        // Size by the servers too, so a server can never index past the table.
        let count = topology
            .ports()
            .map(|p| p.tenant().index() + 1)
            .chain([topology.tenant_id_bound()])
            .max()
            .unwrap_or(0);
        let mut entries: Vec<Vec<(u64, PortId)>> = vec![Vec::new(); count];
        let mut members: Vec<Vec<PortId>> = vec![Vec::new(); count];
        let mut remote: Vec<Vec<PortId>> = vec![Vec::new(); count];
        // (tenant, remote host) pairs that have a flood member already.
        let mut hosts_reached = std::collections::BTreeSet::new();
        let mut trunks: Vec<Option<PortId>> = vec![None; count];
        for port in topology.ports().filter(|p| p.kind() != PortKind::Uplink) {
            let tenant = port.tenant().index();
            if port.kind() == PortKind::Trunk {
                // No MAC of its own: reached by floods and by what no port here owns.
                trunks[tenant] = Some(port.id());
                members[tenant].push(port.id());
                continue;
            }
            entries[tenant].push((mac_key(port.mac()), port.id()));
            match port {
                // Head-end replication: one copy per host, which floods its own servers.
                PortSpec::Remote(r) => {
                    remote[tenant].push(port.id());
                    if hosts_reached.insert((tenant, r.underlay)) {
                        members[tenant].push(port.id());
                    }
                }
                _ => members[tenant].push(port.id()),
            }
        }
        let mut routes = routes(topology, count);
        let tenants = entries
            .into_iter()
            .zip(members.into_iter().zip(remote))
            .zip(routes.drain(..).zip(trunks))
            .map(
                |((mut entries, (mut members, mut remote)), (routes, trunk))| {
                    members.sort_unstable();
                    remote.sort_unstable();
                    entries.sort_unstable();
                    let local: Vec<PortId> = members
                        .iter()
                        .copied()
                        .filter(|p| remote.binary_search(p).is_err())
                        .collect();
                    TenantTable {
                        members: members.into(),
                        local: local.into(),
                        remote: remote.into(),
                        macs: entries.iter().map(|&(mac, _)| mac).collect(),
                        ports: entries.iter().map(|&(_, port)| port).collect(),
                        routes,
                        trunk,
                    }
                },
            )
            .collect();
        ForwardTable { tenants }
    }

    /// Decide where a guarded frame from `ingress` (a port of `tenant`, of `kind`) goes.
    pub(crate) fn decide(
        &self,
        ingress: PortId,
        kind: PortKind,
        tenant: TenantId,
        eth: &EthernetFrame<&[u8]>,
    ) -> Decision {
        if kind == PortKind::Uplink {
            return self.routed_down(tenant, eth);
        }
        // Upstream may not speak for this host's own ports.
        if kind == PortKind::Trunk && self.lookup(tenant, MacAddr::from(eth.src_addr())).is_some() {
            return Decision::Drop(DropReason::SpoofedMac);
        }
        match self.forward(ingress, tenant, MacAddr::from(eth.dst_addr())) {
            // A host delivers what comes over the tunnel to its own ports only: another
            // host's server is that host's to reach (and a relay would double its frames).
            Decision::Unicast(_, to) if kind == PortKind::Remote && self.is_remote(tenant, to) => {
                Decision::Drop(DropReason::UnknownDestination)
            }
            Decision::Unicast(tenant, to) => self
                .routed_up(tenant, to, eth)
                .unwrap_or(Decision::Unicast(tenant, to)),
            other => other,
        }
    }

    /// A frame for the tenant's gateway port that the gateway must route: an IPv4 packet for
    /// another address goes to the uplink port instead.
    fn routed_up(
        &self,
        tenant: TenantId,
        to: PortId,
        eth: &EthernetFrame<&[u8]>,
    ) -> Option<Decision> {
        let routes = self.tenants.get(tenant.index())?.routes.as_ref()?;
        if to != routes.gateway_port || eth.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let dst = ipv4_destination(eth.payload())?;
        (dst != routes.gateway_ip).then_some(Decision::Unicast(tenant, routes.uplink_port))
    }

    /// A packet routed back to the tenant: to the server owning its destination address.
    fn routed_down(&self, tenant: TenantId, eth: &EthernetFrame<&[u8]>) -> Decision {
        let unknown = Decision::Drop(DropReason::UnknownDestination);
        let Some(routes) = self
            .tenants
            .get(tenant.index())
            .and_then(|t| t.routes.as_ref())
        else {
            return unknown;
        };
        if eth.ethertype() != EthernetProtocol::Ipv4 {
            return Decision::Drop(DropReason::UnsupportedEtherType);
        }
        let Some(dst) = ipv4_destination(eth.payload()) else {
            return Decision::Drop(DropReason::Truncated);
        };
        match routes.addresses.binary_search(&u32::from(dst)) {
            Ok(at) => Decision::Unicast(tenant, routes.servers[at]),
            Err(_) => unknown,
        }
    }

    /// Return true if `port` is one of `tenant`'s remote servers.
    pub(crate) fn is_remote(&self, tenant: TenantId, port: PortId) -> bool {
        self.tenants
            .get(tenant.index())
            .is_some_and(|t| t.remote.binary_search(&port).is_ok())
    }

    /// Return the ports a flood of `tenant` reaches, in port order (empty for an unknown
    /// tenant): every local port, and one remote server per other host (that host floods
    /// its own servers).
    pub(crate) fn members(&self, tenant: TenantId) -> &[PortId] {
        self.tenants
            .get(tenant.index())
            .map_or(&[], |t| &t.members[..])
    }

    /// Return the ports a flood of `tenant` from a port of `kind` reaches: what came over
    /// the tunnel goes to this host's ports only (the sending host replicated it to every
    /// other host itself, and a relay would double it).
    pub(crate) fn flood_members(&self, tenant: TenantId, kind: PortKind) -> &[PortId] {
        match self.tenants.get(tenant.index()) {
            Some(t) if kind == PortKind::Remote => &t.local[..],
            Some(t) => &t.members[..],
            None => &[],
        }
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
            Some(port) => Decision::Unicast(tenant, port),
            None => match self.trunk(tenant) {
                // Upstream owns every other address (its router, its machines).
                Some(trunk) if trunk != ingress => Decision::Unicast(tenant, trunk),
                _ => Decision::Drop(DropReason::UnknownDestination),
            },
        }
    }

    /// Return the tenant's VLAN of the bridged uplink's trunk, if it has one.
    pub(crate) fn trunk(&self, tenant: TenantId) -> Option<PortId> {
        self.tenants.get(tenant.index()).and_then(|t| t.trunk)
    }
}

/// Return the routes of every tenant (indexed by tenant id, `count` long).
fn routes(topology: &Topology, count: usize) -> Vec<Option<Routes>> {
    let mut out = vec![None; count];
    for port in topology.ports() {
        let PortSpec::Uplink(tenant, uplink) = port else {
            continue;
        };
        let Some(gateway) = &tenant.gateway else {
            continue;
        };
        let mut servers: Vec<(u32, PortId)> = topology
            .servers_of(tenant.id)
            .map(|s| (u32::from(s.ip.ip()), s.id))
            .collect();
        servers.sort_unstable();
        out[tenant.id.index()] = Some(Routes {
            gateway_port: gateway.port,
            gateway_ip: gateway.ip.ip(),
            uplink_port: uplink.port,
            addresses: servers.iter().map(|&(ip, _)| ip).collect(),
            servers: servers.iter().map(|&(_, port)| port).collect(),
        });
    }
    out
}

/// Return the destination of the IPv4 packet in `payload`, if it holds a whole header.
fn ipv4_destination(payload: &[u8]) -> Option<Ipv4Addr> {
    (payload.len() >= IPV4_HEADER_LEN).then(|| Ipv4Packet::new_unchecked(payload).dst_addr())
}

/// Pack a MAC into the low 48 bits of a `u64`, preserving its order.
fn mac_key(mac: MacAddr) -> u64 {
    let [a, b, c, d, e, f] = mac.octets();
    u64::from_be_bytes([0, 0, a, b, c, d, e, f])
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;
    use crate::switch::fixtures::*;
    use crate::topology::Server;
    use Decision::{Flood, Unicast};
    use DropReason::{Hairpin, UnknownDestination};

    fn table() -> ForwardTable {
        ForwardTable::new(&topology())
    }

    #[rstest]
    #[case::unicast_within_tenant(A1, ACME, A2_MAC, Unicast(ACME, A2))]
    #[case::unicast_back(A2, ACME, A1_MAC, Unicast(ACME, A1))]
    #[case::unicast_within_other_tenant(B1, BLUE, B2_MAC, Unicast(BLUE, B2))]
    #[case::to_other_tenants_server(A1, ACME, B1_MAC, Decision::Drop(UnknownDestination))]
    #[case::to_other_tenants_server_back(B2, BLUE, A2_MAC, Decision::Drop(UnknownDestination))]
    #[case::broadcast(A1, ACME, [0xff; 6], Flood(ACME))]
    #[case::broadcast_other_tenant(B2, BLUE, [0xff; 6], Flood(BLUE))]
    #[case::ipv6_multicast(A1, ACME, [0x33, 0x33, 0, 0, 0, 1], Flood(ACME))]
    #[case::ipv6_solicited_node(B1, BLUE, [0x33, 0x33, 0xff, 0, 1, 2], Flood(BLUE))]
    #[case::ipv4_multicast(A2, ACME, [0x01, 0x00, 0x5e, 0, 0, 0xfb], Flood(ACME))]
    #[case::group_bit_of_a_server_mac(A1, ACME, [0x03, 0, 0, 0, 0, 2], Flood(ACME))]
    #[case::hairpin(A1, ACME, A1_MAC, Decision::Drop(Hairpin))]
    #[case::hairpin_other_tenant(B2, BLUE, B2_MAC, Decision::Drop(Hairpin))]
    #[case::unknown_mac(A1, ACME, [2, 0, 0, 0, 0, 0x99], Decision::Drop(UnknownDestination))]
    #[case::zero_mac(A1, ACME, [0; 6], Decision::Drop(UnknownDestination))]
    #[case::tenant_without_servers(A1, IDLE, A2_MAC, Decision::Drop(UnknownDestination))]
    #[case::unknown_tenant(A1, TenantId(99), A2_MAC, Decision::Drop(UnknownDestination))]
    fn forwards(
        #[case] ingress: PortId,
        #[case] tenant: TenantId,
        #[case] dst: [u8; 6],
        #[case] expected: Decision,
    ) {
        assert_eq!(table().forward(ingress, tenant, MacAddr(dst)), expected);
    }

    #[test]
    fn members_are_the_tenants_ports_in_order() {
        let table = table();
        assert_eq!(table.members(ACME), [A1, A2]);
        assert_eq!(table.members(BLUE), [B1, B2]);
        assert_eq!(table.members(IDLE), []);
        assert_eq!(table.members(TenantId(99)), []);
    }

    #[test]
    fn a_flood_reaches_each_other_host_once_and_one_from_the_tunnel_stays_here() {
        let text = r#"
[hosts.a]
underlay = "192.0.2.1"
capacity = "1gbit"
[hosts.b]
underlay = "192.0.2.2"
capacity = "1gbit"
[tenants.t]
guaranteed = "1mbit"
[servers.a1]
tenant = "t"
host = "a"
ip = "10.0.0.1/24"
[servers.b1]
tenant = "t"
host = "b"
ip = "10.0.0.2/24"
[servers.b2]
tenant = "t"
host = "b"
ip = "10.0.0.3/24"
"#;
        let cluster =
            crate::topology::cluster::parse(std::path::Path::new("c.toml"), text).unwrap();
        let a = cluster.view("a", |_| true).unwrap();
        let id = |name: &str| {
            let remote = &a.cluster.as_ref().unwrap().remote;
            a.server_by_name(name)
                .map(|s| s.id)
                .or_else(|| remote.iter().find(|r| r.name == name).map(|r| r.id))
                .unwrap()
        };
        let t = a.tenants[0].id;
        let table = ForwardTable::new(&a);
        // Host b once (by b1), not once per server; both of b's servers are reachable.
        assert_eq!(table.members(t), [id("a1"), id("b1")]);
        assert_eq!(
            table.lookup(t, a.cluster.as_ref().unwrap().remote[1].mac),
            Some(id("b2"))
        );
        assert_eq!(
            table.flood_members(t, PortKind::Server),
            [id("a1"), id("b1")]
        );
        assert_eq!(table.flood_members(t, PortKind::Remote), [id("a1")]);
    }

    #[test]
    fn mac_key_packs_the_octets_in_order() {
        assert_eq!(mac_key(MacAddr([1, 2, 3, 4, 5, 6])), 0x0102_0304_0506);
        assert_eq!(mac_key(MacAddr::BROADCAST), 0xffff_ffff_ffff);
        assert!(mac_key(MacAddr([0, 0, 0, 0, 1, 0])) > mac_key(MacAddr([0, 0, 0, 0, 0, 0xff])));
    }

    #[test]
    fn empty_topology_has_no_tables() {
        let mut topology = topology();
        topology.servers.clear();
        topology.tenants.clear();
        let table = ForwardTable::new(&topology);
        assert_eq!(table.members(ACME), []);
        assert_eq!(
            table.forward(A1, ACME, MacAddr(A2_MAC)),
            Decision::Drop(UnknownDestination)
        );
    }

    /// Build a topology with these (tenant, MAC) servers, dropping repeated MACs.
    fn random_topology(servers: Vec<(u32, [u8; 6])>) -> Topology {
        let mut topology = topology();
        let template = topology.servers[0].clone();
        let mut seen = HashSet::new();
        topology.servers = servers
            .into_iter()
            .map(|(tenant, mut mac)| {
                mac[0] &= 0xfe; // unicast, as the validator guarantees
                (tenant, mac)
            })
            .filter(|&(_, mac)| seen.insert(mac))
            .enumerate()
            .map(|(i, (tenant, mac))| Server {
                id: PortId(u32::try_from(i).unwrap()),
                tenant: TenantId(tenant),
                mac: MacAddr(mac),
                ..template.clone()
            })
            .collect();
        topology
    }

    proptest! {
        #[test]
        fn every_mac_is_found_in_its_own_tenant_only(
            servers in prop::collection::vec((0u32..5, any::<[u8; 6]>()), 1..64)
        ) {
            // Tenant ids 3 and 4 exist only through servers: the table must size by them too.
            let topology = random_topology(servers);
            let table = ForwardTable::new(&topology);
            for server in &topology.servers {
                for tenant in (0..6).map(TenantId) {
                    let expected = (tenant == server.tenant).then_some(server.id);
                    prop_assert_eq!(table.lookup(tenant, server.mac), expected);
                }
                let members = table.members(server.tenant);
                prop_assert!(members.contains(&server.id) && members.is_sorted());
                prop_assert_eq!(
                    table.forward(server.id, server.tenant, server.mac),
                    Decision::Drop(Hairpin)
                );
            }
            let total: usize = (0..6).map(|t| table.members(TenantId(t)).len()).sum();
            prop_assert_eq!(total, topology.servers.len());
        }
    }
}
