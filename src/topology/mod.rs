//! The topology: a validated, typed model of a topology file.
//!
//! Contract: nothing downstream of [`load`]/[`validate()`] ever sees the raw file form
//! ([`file::FileTopology`]); a [`Topology`] value always satisfies every rule the validator
//! checks (unique MACs, unique IPs within a tenant, guarantees within capacity, valid names...).
//! Tenants and servers are kept in name order.
//!
//! Ids: [`TenantId`] and [`PortId`] are the keys the shaper, the switch, the data path's port
//! table and the counters use. [`validate()`] numbers a fresh topology densely in name order
//! (`id == index`), but a running daemon keeps ids stable for its whole life: a tenant or
//! server keeps its id across changes, and new ones get fresh ids, appended after every id
//! ever used (see [`crate::control`], which renumbers each validated change with
//! [`Topology::with_ids_from`]). So an id is **not** an index into [`Topology::tenants`] or
//! [`Topology::servers`]: look objects up with [`Topology::tenant`] and [`Topology::server`].

pub mod cluster;
pub mod file;
pub mod gateway;
pub mod rate;
pub mod uplink;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Serialize;

pub use cluster::{Cluster, ClusterView, Host, RemoteServer};
pub use gateway::Gateway;
pub use rate::{MIN_RATE, Rate};
pub use uplink::{TenantUplink, UPLINK_QUEUE_DELAY, Uplink, UplinkMode};
pub use validate::{ValidationError, validate};

use crate::wire::MacAddr;

/// A tenant's stable id (dense from 0 in a fresh topology; see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
pub struct TenantId(pub u32);

/// A server's (and its switch port's) stable id (dense from 0 in a fresh topology).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
pub struct PortId(pub u32);

impl TenantId {
    /// Return the id as an index into per-tenant tables (counters, shaper slots).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl PortId {
    /// Return the id as an index into per-port tables (counters, switch ports).
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// What a port is to the switch: the tenant(s) it serves and the guard policy it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// A virtual server's TAP: one tenant, full anti-spoofing (only its own MAC and IPs).
    Server,
    /// A tenant's gateway (netd's own stack): one tenant, trusted to answer for the
    /// gateway's address (ARP replies, ICMP, DHCP answers, router advertisements).
    Gateway,
    /// A tenant's side of the routed uplink: one tenant, trusted (the host's routing).
    Uplink,
    /// A server on another host of the cluster, reached over VXLAN: one tenant, checked as
    /// a server's port (its frames must carry that server's own addresses).
    Remote,
    /// A tenant's VLAN on the bridged uplink's trunk: one tenant, its upstream network
    /// (any source MAC but its own servers'; unknown destinations go there).
    Trunk,
}

impl PortKind {
    /// Return the name used in logs, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Server => "server",
            PortKind::Gateway => "gateway",
            PortKind::Uplink => "uplink",
            PortKind::Remote => "remote",
            PortKind::Trunk => "trunk",
        }
    }
}

/// One port of the switch, as the topology defines it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PortSpec<'a> {
    /// A virtual server's TAP.
    Server(&'a Server),
    /// A tenant's gateway.
    Gateway(&'a Tenant, &'a Gateway),
    /// A routed tenant's side of the uplink.
    Uplink(&'a Tenant, &'a TenantUplink),
    /// A server of another host, behind the VXLAN tunnel.
    Remote(&'a RemoteServer),
}

impl PortSpec<'_> {
    /// Return the port's id.
    pub fn id(&self) -> PortId {
        match self {
            PortSpec::Server(server) => server.id,
            PortSpec::Gateway(_, gateway) => gateway.port,
            PortSpec::Uplink(_, uplink) => uplink.port,
            PortSpec::Remote(remote) => remote.id,
        }
    }

    /// Return the tenant the port serves.
    pub fn tenant(&self) -> TenantId {
        match self {
            PortSpec::Server(server) => server.tenant,
            PortSpec::Remote(remote) => remote.tenant,
            PortSpec::Gateway(tenant, _) | PortSpec::Uplink(tenant, _) => tenant.id,
        }
    }

    /// Return the port's kind.
    pub fn kind(&self) -> PortKind {
        match self {
            PortSpec::Server(_) => PortKind::Server,
            PortSpec::Gateway(..) => PortKind::Gateway,
            PortSpec::Uplink(_, uplink) if uplink.vlan.is_some() => PortKind::Trunk,
            PortSpec::Uplink(..) => PortKind::Uplink,
            PortSpec::Remote(_) => PortKind::Remote,
        }
    }

    /// Return the MAC the port's frames come from: the server's, or the gateway's for the
    /// gateway and for the uplink (whose frames are routed packets the gateway sends on).
    /// The switch reaches an uplink port by routing, never by this MAC.
    pub fn mac(&self) -> MacAddr {
        match self {
            PortSpec::Server(server) => server.mac,
            PortSpec::Remote(remote) => remote.mac,
            PortSpec::Gateway(_, gateway) => gateway.mac,
            PortSpec::Uplink(tenant, _) => {
                tenant.gateway.as_ref().map_or(MacAddr([0; 6]), |g| g.mac)
            }
        }
    }
}

/// Default MTU of a server's interface.
pub const DEFAULT_MTU: u16 = 1500;
/// Default weight of a tenant when sharing loaned bandwidth.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Default storm-control limit: broadcast/multicast frames per second from each port.
pub const DEFAULT_BROADCAST_PPS: u32 = 1000;

/// A validated topology.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    /// Topology name: the file stem (`demo` for `topology/demo.toml`).
    pub name: String,
    /// Where it was read from (empty for topologies built in memory).
    pub source: PathBuf,
    /// Aggregate rate the shaper shares out.
    pub capacity: Rate,
    /// Queue and burst sizes of the shaper.
    pub shaping: ShapingParams,
    /// Tenants, sorted by name.
    pub tenants: Vec<Tenant>,
    /// Servers, sorted by name.
    pub servers: Vec<Server>,
    /// Where routed tenants leave the host, if anywhere.
    pub uplink: Option<Uplink>,
    /// This host's part of a cluster: the other hosts and the servers they run for this
    /// host's tenants. `None` for a single-host topology.
    pub cluster: Option<ClusterView>,
}

/// The shaper's time constants, from `[host] queue_delay` and `[host] burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShapingParams {
    /// Longest a frame waits in its tenant's queue before newer frames are dropped.
    pub queue_delay: std::time::Duration,
    /// Each bucket's size as time at its rate (never below one 64 KiB GSO frame).
    pub burst: std::time::Duration,
}

impl Default for ShapingParams {
    fn default() -> Self {
        ShapingParams {
            // A TAP orphans the sender's skbs, so TCP gets no backpressure (no TSQ) and its
            // bursts land here. Measured (two BBR flows borrowing at 600/360 Mbit/s): a 5 ms
            // bound dropped 11% of t2's bytes as 64 KB super-frames (~4000 retransmits/s),
            // 20 ms dropped none, and the standing queue (ping through it) was ~4.4 ms with
            // either: TCP, not this bound, sets it. But 16 BBR flows of one tenant keep their
            // cwnd floor (3 super-frames each, ~3 MB) queued whatever the signals: with 20 ms
            // they lost ~3700 segments per 6 s, with 100 ms 13 (`scripts/shaper-probe
            // aggressor`). Senders that heed a mark or one lost segment stay near the
            // signal target (5 ms, `shaper::HOST_SIGNAL_TARGET`), far below this bound.
            queue_delay: std::time::Duration::from_millis(100),
            burst: std::time::Duration::from_millis(1),
        }
    }
}

/// A customer: an isolated L2 domain with a guaranteed rate, a ceiling and a weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub guaranteed: Rate,
    /// Maximum rate including borrowed bandwidth; defaults to the host capacity.
    pub ceiling: Rate,
    /// Share of loaned bandwidth relative to other borrowers; at least 1.
    pub weight: u32,
    /// Storm control: broadcast/multicast frames per second accepted from each of its ports.
    pub broadcast_pps: u32,
    /// The tenant's gateway, if it has a subnet with one.
    pub gateway: Option<Gateway>,
    /// Its private subnet leaves with source NAT (else its addresses are public).
    pub nat: bool,
    /// Its uplink port and rates: a tenant with a gateway, on a host with an uplink.
    pub uplink: Option<TenantUplink>,
    /// Its VXLAN network identifier, in a cluster topology.
    pub vni: Option<u32>,
}

impl Tenant {
    /// True for a tenant routed through the host's kernel (a router namespace and a TUN);
    /// a tenant on a bridged uplink is not.
    pub fn is_routed(&self) -> bool {
        self.uplink.as_ref().is_some_and(|u| u.vlan.is_none())
    }
}

/// A server's default routers (its tenant's gateway), per address family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Routers {
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
}

/// A virtual server: one namespace, one TAP, one switch port.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    pub id: PortId,
    pub name: String,
    pub tenant: TenantId,
    /// Unicast MAC of the server's `eth0` (given, or derived from the name).
    pub mac: MacAddr,
    /// IPv4 address with prefix.
    pub ip: Ipv4Network,
    /// Optional global IPv6 address with prefix; link-local is always allowed.
    pub ipv6: Option<Ipv6Network>,
    /// Network namespace name (defaults to the server name).
    pub netns: String,
    pub mtu: u16,
    /// Optional per-server guarantee inside the tenant's entitlement.
    pub guaranteed: Option<Rate>,
    /// Optional per-server ceiling inside the tenant's entitlement.
    pub ceiling: Option<Rate>,
    /// `eth0` comes up without an address: the server asks the gateway by DHCP.
    pub dhcp: bool,
}

impl Topology {
    /// Return the tenant with this id.
    ///
    /// # Panics
    /// If no tenant has this id.
    pub fn tenant(&self, id: TenantId) -> &Tenant {
        self.tenant_by_id(id)
            .unwrap_or_else(|| panic!("no tenant with id {}", id.0))
    }

    /// Return the server behind this port.
    ///
    /// # Panics
    /// If no server has this id.
    pub fn server(&self, id: PortId) -> &Server {
        self.servers
            .iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("no server with id {}", id.0))
    }

    /// Return one more than the largest tenant id (the length of per-tenant tables).
    pub fn tenant_id_bound(&self) -> usize {
        self.tenants
            .iter()
            .map(|t| t.id.index() + 1)
            .max()
            .unwrap_or(0)
    }

    /// Return one more than the largest port id, of any kind (the length of per-port tables).
    pub fn port_id_bound(&self) -> usize {
        self.ports().map(|p| p.id().index() + 1).max().unwrap_or(0)
    }

    /// Renumber a freshly validated topology against `running`: tenants and servers that
    /// `running` has (same name; for a server, also the same namespace) keep their ids; new
    /// ones get fresh ids from `next_tenant` and `next_port`, which are advanced.
    ///
    /// A server whose namespace changed is a new server (a new TAP, so a new port).
    pub fn with_ids_from(
        mut self,
        running: &Topology,
        next_tenant: &mut u32,
        next_port: &mut u32,
    ) -> Topology {
        let mut tenant_map = std::collections::BTreeMap::new();
        for t in &mut self.tenants {
            let id = match running.tenant_by_name(&t.name) {
                Some(old) => old.id,
                None => {
                    let id = TenantId(*next_tenant);
                    *next_tenant += 1;
                    id
                }
            };
            tenant_map.insert(t.id, id);
            t.id = id;
            // A gateway keeps its port while its tenant has one; a new one gets a fresh port.
            if let Some(gateway) = &mut t.gateway {
                let kept = running
                    .tenant_by_name(&t.name)
                    .and_then(|old| old.gateway.as_ref());
                gateway.port = kept.map_or_else(|| fresh_port(next_port), |old| old.port);
            }
            // Likewise the uplink port.
            if let Some(uplink) = &mut t.uplink {
                let kept = running
                    .tenant_by_name(&t.name)
                    .and_then(|old| old.uplink.as_ref());
                uplink.port = kept.map_or_else(|| fresh_port(next_port), |old| old.port);
            }
        }
        for s in &mut self.servers {
            s.tenant = tenant_map[&s.tenant];
            s.id = match running.server_by_name(&s.name) {
                Some(old) if old.netns == s.netns => old.id,
                _ => fresh_port(next_port),
            };
        }
        // A remote server keeps its port while it stays on the same host.
        if let Some(cluster) = &mut self.cluster {
            for r in &mut cluster.remote {
                r.tenant = tenant_map[&r.tenant];
                let kept = running
                    .cluster
                    .as_ref()
                    .and_then(|c| c.remote.iter().find(|o| o.name == r.name))
                    .filter(|old| old.host == r.host);
                r.id = kept.map_or_else(|| fresh_port(next_port), |old| old.id);
            }
        }
        self
    }

    /// Return the file form of this topology: every value explicit (MACs included), so it
    /// validates back to the same topology (ids aside) and can be written as TOML.
    pub fn to_file(&self) -> file::FileTopology {
        file::FileTopology {
            host: Some(file::FileHost {
                capacity: Some(self.capacity.to_string()),
                queue_delay: Some(format!("{}us", self.shaping.queue_delay.as_micros())),
                burst: Some(format!("{}us", self.shaping.burst.as_micros())),
            }),
            tenants: self
                .tenants
                .iter()
                .map(|t| {
                    let tenant = file::FileTenant {
                        guaranteed: Some(t.guaranteed.to_string()),
                        ceiling: Some(t.ceiling.to_string()),
                        weight: Some(i64::from(t.weight)),
                        broadcast_pps: Some(i64::from(t.broadcast_pps)),
                        gateway: t.gateway.as_ref().map(|g| g.ip.to_string()),
                        gateway6: t
                            .gateway
                            .as_ref()
                            .and_then(|g| g.ipv6.map(|n| n.to_string())),
                        nat: t.nat.then_some(true),
                        dns: t
                            .gateway
                            .as_ref()
                            .filter(|g| !g.dns.is_empty())
                            .map(|g| g.dns.iter().map(ToString::to_string).collect()),
                        // Only what the file set: the rest follows the tenant's own rates.
                        uplink: t
                            .uplink
                            .as_ref()
                            .map(|u| file::FileRates {
                                guaranteed: u.set.guaranteed.then(|| u.guaranteed.to_string()),
                                ceiling: u.set.ceiling.then(|| u.ceiling.to_string()),
                                weight: u.set.weight.then(|| i64::from(u.weight)),
                            })
                            .filter(|r| *r != file::FileRates::default()),
                        vni: t.vni.map(i64::from),
                        vlan: t.uplink.as_ref().and_then(|u| u.vlan).map(i64::from),
                    };
                    (t.name.clone(), tenant)
                })
                .collect(),
            servers: self
                .servers
                .iter()
                .map(|s| {
                    let server = file::FileServer {
                        tenant: Some(self.tenant(s.tenant).name.clone()),
                        ip: Some(s.ip.to_string()),
                        mac: Some(s.mac.to_string()),
                        netns: Some(s.netns.clone()),
                        ipv6: s.ipv6.map(|n| n.to_string()),
                        mtu: Some(i64::from(s.mtu)),
                        guaranteed: s.guaranteed.map(|r| r.to_string()),
                        ceiling: s.ceiling.map(|r| r.to_string()),
                        dhcp: s.dhcp.then_some(true),
                        host: None,
                    };
                    (s.name.clone(), server)
                })
                .collect(),
            uplink: self.uplink.as_ref().map(|u| file::FileUplink {
                interface: Some(u.interface.clone()),
                netns: u.netns.clone(),
                capacity: Some(u.capacity.to_string()),
                mode: (u.mode == UplinkMode::Bridged).then(|| "bridged".to_string()),
                queue_delay: Some(format!("{}us", u.queue_delay.as_micros())),
            }),
            hosts: std::collections::BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    /// Return the tenant with this id, if any.
    pub fn tenant_by_id(&self, id: TenantId) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id == id)
    }

    /// Return the tenant with this name, if any.
    pub fn tenant_by_name(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// Return the server with this name, if any.
    pub fn server_by_name(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Return every port of the switch: one per server, then one per tenant gateway, then
    /// one per tenant uplink, then one per remote server.
    pub fn ports(&self) -> impl Iterator<Item = PortSpec<'_>> {
        let remote = self
            .cluster
            .iter()
            .flat_map(|c| c.remote.iter().map(PortSpec::Remote));
        let gateways = self
            .tenants
            .iter()
            .filter_map(|t| t.gateway.as_ref().map(|g| PortSpec::Gateway(t, g)));
        let uplinks = self
            .tenants
            .iter()
            .filter_map(|t| t.uplink.as_ref().map(|u| PortSpec::Uplink(t, u)));
        self.servers
            .iter()
            .map(PortSpec::Server)
            .chain(gateways)
            .chain(uplinks)
            .chain(remote)
    }

    /// Return the default routers of a server: its tenant's gateway addresses, IPv6 only
    /// for a server with an IPv6 address.
    pub fn router_of(&self, server: &Server) -> Routers {
        let gateway = self
            .tenant_by_id(server.tenant)
            .and_then(|t| t.gateway.as_ref());
        Routers {
            ipv4: gateway.map(|g| g.ip.ip()),
            ipv6: gateway
                .and_then(|g| g.ipv6)
                .filter(|_| server.ipv6.is_some())
                .map(|net| net.ip()),
        }
    }

    /// Return the servers of one tenant.
    pub fn servers_of(&self, tenant: TenantId) -> impl Iterator<Item = &Server> {
        self.servers.iter().filter(move |s| s.tenant == tenant)
    }
}

/// Take the next fresh port id.
fn fresh_port(next_port: &mut u32) -> PortId {
    let id = PortId(*next_port);
    *next_port += 1;
    id
}

/// Why a topology file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("Cannot read topology file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Topology file {path} is larger than {MAX_TOPOLOGY_BYTES} bytes: not a topology")]
    TooLarge { path: PathBuf },
    #[error("{}", format_errors(.0))]
    Invalid(Vec<ValidationError>),
}

fn format_errors(errors: &[ValidationError]) -> String {
    let mut out = format!(
        "Invalid topology ({} problem{}):",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        out.push_str("\n  - ");
        out.push_str(&e.to_string());
    }
    out
}

/// The largest topology file read (16 MiB: a hundred thousand servers fit many times over).
pub const MAX_TOPOLOGY_BYTES: u64 = 16 * 1024 * 1024;

/// Read, parse and validate a topology file (at most [`MAX_TOPOLOGY_BYTES`]).
pub fn load(path: &Path) -> Result<Topology, LoadError> {
    let text = read_text(path)?;
    parse(path, &text).map_err(LoadError::Invalid)
}

/// Read a topology file's text, refusing one larger than [`MAX_TOPOLOGY_BYTES`].
pub fn read_text(path: &Path) -> Result<String, LoadError> {
    use std::io::Read;
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = String::new();
    // One byte past the bound tells a file at the bound from a larger one (or /dev/zero).
    file.take(MAX_TOPOLOGY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_TOPOLOGY_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// A topology file of either form.
#[derive(Debug, Clone)]
pub enum AnyTopology {
    /// A single host's (no `[hosts]`).
    Single(Topology),
    /// A cluster's (with `[hosts]`).
    Cluster(Cluster),
}

/// Read, parse and validate a topology file of either form (`netd check`).
pub fn load_any(path: &Path) -> Result<AnyTopology, LoadError> {
    let text = read_text(path)?;
    let file =
        file::FileTopology::from_toml(path, &text).map_err(|e| LoadError::Invalid(vec![e]))?;
    if file.hosts.is_empty() {
        validate(path, &file).map(AnyTopology::Single)
    } else {
        cluster::validate(path, &file).map(AnyTopology::Cluster)
    }
    .map_err(LoadError::Invalid)
}

/// Parse and validate topology text; `path` names the source in errors and gives the name.
pub fn parse(path: &Path, text: &str) -> Result<Topology, Vec<ValidationError>> {
    let file = file::FileTopology::from_toml(path, text).map_err(|e| vec![e])?;
    validate(path, &file)
}
