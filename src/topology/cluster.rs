//! Cluster topologies: one file, many hosts.
//!
//! A file with `[hosts.<name>]` sections is a cluster topology: each server names the host
//! that runs it (`host = "a"`), and each tenant has a VXLAN network identifier (`vni`,
//! derived from its name when absent) that carries its L2 domain between hosts.
//!
//! Contract:
//! - [`validate`] judges the whole cluster at once and reports every problem together:
//!   the single-host rules across every server (names, MACs, addresses, rates: one tenant's
//!   addresses are unique across hosts), and the cluster's own (hosts and their underlay
//!   addresses, servers on unknown hosts, VNIs, the guarantees of each host's tenants within
//!   that host's capacity, server MTUs within the tunnel's).
//! - A valid [`Cluster`] keeps its file with every derived value made explicit (MACs, VNIs,
//!   MTUs): [`Cluster::to_toml`] is what `netd push` stores, and every host derives the same
//!   values from it.
//! - [`Cluster::view`] is one host's part as a [`Topology`] the daemon runs like a
//!   single-host one: that host's capacity, the tenants with servers there, those servers,
//!   and (in [`ClusterView`]) the servers of those tenants on the other live hosts.
//!
//! Model of rates: each host shapes what its own ports send and receive, with its own
//! capacity. A tenant's guarantee and ceiling hold on each host that runs one of its
//! servers (traffic between hosts is shaped on both ends like local traffic).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Serialize;

use super::file::{FileHost, FileTopology};
use super::validate::{
    ErrorKind, MAX_MTU, MAX_VNI, MIN_MTU, Part, ValidationError, Validator, key_segment, quoted,
    saturating_rate, validate_part,
};
use super::{PortId, Rate, TenantId, Topology};
use crate::wire::MacAddr;

/// Bytes VXLAN adds to a tenant's frame on the underlay: outer IPv4 (20), UDP (8), VXLAN (8)
/// and the inner Ethernet header (14), which the tenant's MTU does not count.
pub const VXLAN_OVERHEAD: u16 = 50;
/// The underlay MTU of a host that does not set one.
pub const DEFAULT_UNDERLAY_MTU: u16 = 1500;
/// The UDP port of VXLAN (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;

/// One host of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    pub name: String,
    /// Its tunnel endpoint: VXLAN datagrams come from and go to this address.
    pub underlay: Ipv4Addr,
    /// The namespace standing in for its own network stack (tests); `None`: netd's own.
    pub netns: Option<String>,
    /// What its shaper shares out.
    pub capacity: Rate,
    /// Its underlay MTU.
    pub mtu: u16,
    /// A VXLAN endpoint netd does not run there: alive without a lease.
    pub external: bool,
}

/// A server that runs on another host, as this host's switch sees it: a port behind the
/// tunnel, guarded like a local server's (its frames must carry its own addresses).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemoteServer {
    pub id: PortId,
    pub name: String,
    pub tenant: TenantId,
    /// The host that runs it, and that host's tunnel endpoint.
    pub host: String,
    pub underlay: Ipv4Addr,
    pub mac: MacAddr,
    pub ip: Ipv4Network,
    pub ipv6: Option<Ipv6Network>,
    pub mtu: u16,
}

/// One host's part of a cluster, beside what it runs itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterView {
    /// This host.
    pub host: Host,
    /// Every other host of the cluster, live or not.
    pub peers: Vec<Host>,
    /// The servers of this host's tenants on the other live hosts, by name.
    pub remote: Vec<RemoteServer>,
}

impl ClusterView {
    /// Return the peer whose tunnel endpoint is `addr`, if it is one.
    pub fn peer_at(&self, addr: Ipv4Addr) -> Option<&Host> {
        self.peers.iter().find(|h| h.underlay == addr)
    }
}

/// A validated cluster topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// The file stem it was read from (`lab` for `lab.toml`).
    pub name: String,
    /// Where it was read from, for errors.
    pub source: PathBuf,
    /// Every host, by name.
    pub hosts: Vec<Host>,
    /// The file with every derived value explicit.
    file: FileTopology,
}

/// Validate a cluster topology file (one with `[hosts]`).
pub fn validate(path: &Path, file: &FileTopology) -> Result<Cluster, Vec<ValidationError>> {
    let mut v = Validator {
        path,
        errors: Vec::new(),
    };
    let hosts = check_hosts(&mut v, file);
    let tunnel_mtu = hosts
        .iter()
        .map(|h| h.mtu)
        .min()
        .unwrap_or(DEFAULT_UNDERLAY_MTU)
        .saturating_sub(VXLAN_OVERHEAD);
    refuse_single_host_keys(&mut v, file);
    check_placement(&mut v, file, tunnel_mtu);
    let vnis = assign_vnis(&mut v, file);
    check_host_capacities(&mut v, file, &hosts);

    // The single-host rules, over every server at once.
    let mut merged = file.clone();
    merged.hosts.clear();
    for server in merged.servers.values_mut() {
        server.host = None;
        server.mtu = server.mtu.or(Some(i64::from(tunnel_mtu)));
    }
    let largest = hosts.iter().map(|h| h.capacity).max();
    let mut errors = match validate_part(path, &merged, Part::Cluster(largest)) {
        Ok(topology) => {
            // Both in name order: the validated servers line up with the file's.
            for ((_, server), validated) in merged.servers.iter_mut().zip(&topology.servers) {
                server.mac = Some(validated.mac.to_string());
            }
            Vec::new()
        }
        Err(errors) => errors,
    };
    errors.append(&mut v.errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    for (name, server) in &mut merged.servers {
        server.host = file.servers[name].host.clone();
    }
    for (name, tenant) in &mut merged.tenants {
        tenant.vni = vnis.get(name).map(|&n| i64::from(n));
    }
    merged.hosts = file.hosts.clone();
    merged.problems.clear();
    Ok(Cluster {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        source: path.to_path_buf(),
        hosts,
        file: merged,
    })
}

/// Read host `host`'s part of a stored cluster topology ([`Cluster::to_json`]): every host
/// (for the tunnel endpoints), the tenants that have a server on `host`, and every server
/// of those tenants, on any host, validated as a cluster of its own. A part is all a host
/// needs, and a hundredth of a 100-host cluster to validate: every host reads the stored
/// topology at each change, and `netd push` validated the whole already.
pub fn host_part(path: &Path, json: &str, host: &str) -> Result<Cluster, Vec<ValidationError>> {
    let file = stored_file(path, json)?;
    let on = |s: &super::file::FileServer| s.host.as_deref() == Some(host);
    let tenants: BTreeSet<&str> = file
        .servers
        .values()
        .filter(|s| on(s))
        .filter_map(|s| s.tenant.as_deref())
        .collect();
    let mine = |t: Option<&str>| t.is_some_and(|t| tenants.contains(t));
    let part = FileTopology {
        host: file.host.clone(),
        hosts: file.hosts.clone(),
        tenants: file
            .tenants
            .iter()
            .filter(|(name, _)| tenants.contains(name.as_str()))
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect(),
        servers: file
            .servers
            .iter()
            .filter(|(_, s)| mine(s.tenant.as_deref()))
            .map(|(name, s)| (name.clone(), s.clone()))
            .collect(),
        ..FileTopology::default()
    };
    validate(path, &part)
}

/// Read a whole stored cluster topology ([`Cluster::to_json`]), validated.
pub fn from_json(path: &Path, json: &str) -> Result<Cluster, Vec<ValidationError>> {
    let file = stored_file(path, json)?;
    validate(path, &file)
}

/// Read the file form of a stored cluster topology, unvalidated.
fn stored_file(path: &Path, json: &str) -> Result<FileTopology, Vec<ValidationError>> {
    serde_json::from_str(json).map_err(|e| {
        vec![ValidationError {
            file: path.to_path_buf(),
            location: None,
            key: String::new(),
            value: None,
            kind: ErrorKind::Toml {
                message: format!("the stored topology is not netd's JSON: {e}"),
            },
        }]
    })
}

/// Read a cluster topology from TOML text (a file).
pub fn parse(path: &Path, text: &str) -> Result<Cluster, Vec<ValidationError>> {
    let file = FileTopology::from_toml(path, text).map_err(|e| vec![e])?;
    validate(path, &file)
}

impl Cluster {
    /// Return the host with this name, if any.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Return the file form with every derived value explicit, as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.file).unwrap_or_default()
    }

    /// Return the stored form: the file with every derived value explicit, as compact
    /// JSON (what `netd push` writes to etcd; each host reads it back with
    /// [`host_part`], about twenty times faster than TOML).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.file).unwrap_or_default()
    }

    /// Return how many servers each host runs, by host name.
    pub fn servers_per_host(&self) -> BTreeMap<&str, usize> {
        let mut count: BTreeMap<&str, usize> =
            self.hosts.iter().map(|h| (h.name.as_str(), 0)).collect();
        for server in self.file.servers.values() {
            if let Some(n) = server.host.as_deref().and_then(|h| count.get_mut(h)) {
                *n += 1;
            }
        }
        count
    }

    /// Return every tenant's name with its guarantee and ceiling as written.
    pub fn tenants(&self) -> impl Iterator<Item = (&str, Option<&str>, Option<&str>)> {
        self.file
            .tenants
            .iter()
            .map(|(name, t)| (name.as_str(), t.guaranteed.as_deref(), t.ceiling.as_deref()))
    }

    /// Return host `me`'s part: the topology it runs, with the servers of its tenants on
    /// the hosts for which `alive` is true (and on external hosts) as remote servers. Ids are numbered afresh: the
    /// daemon renumbers against what it runs ([`Topology::with_ids_from`]).
    pub fn view(
        &self,
        me: &str,
        alive: impl Fn(&str) -> bool,
    ) -> Result<Topology, Vec<ValidationError>> {
        let Some(host) = self.host(me).filter(|h| !h.external) else {
            let error = ValidationError {
                file: self.source.clone(),
                location: None,
                key: format!("hosts.{}", key_segment(me)),
                value: None,
                kind: ErrorKind::UnknownHost,
            };
            return Err(vec![error]);
        };
        let on = |s: &super::file::FileServer, h: &str| s.host.as_deref() == Some(h);
        let local_tenants: BTreeSet<&str> = self
            .file
            .servers
            .values()
            .filter(|s| on(s, me))
            .filter_map(|s| s.tenant.as_deref())
            .collect();
        let part = FileTopology {
            host: Some(FileHost {
                capacity: Some(host.capacity.to_string()),
                ..self.file.host.clone().unwrap_or_default()
            }),
            tenants: self
                .file
                .tenants
                .iter()
                .filter(|(name, _)| local_tenants.contains(name.as_str()))
                .map(|(name, t)| (name.clone(), t.clone()))
                .collect(),
            servers: self
                .file
                .servers
                .iter()
                .filter(|(_, s)| on(s, me))
                .map(|(name, s)| {
                    let mut s = s.clone();
                    s.host = None;
                    (name.clone(), s)
                })
                .collect(),
            ..FileTopology::default()
        };
        let mut topology = validate_part(&self.source, &part, Part::HostView)?;
        topology.name.clone_from(&self.name);
        // No file to write live changes back to: the cluster's state is in the store.
        topology.source = PathBuf::new();
        let mut next = u32::try_from(topology.port_id_bound()).unwrap_or(u32::MAX);
        let mut remote = Vec::new();
        for (name, s) in &self.file.servers {
            let (Some(on_host), Some(tenant)) = (s.host.as_deref(), s.tenant.as_deref()) else {
                continue;
            };
            let external = self.host(on_host).is_some_and(|h| h.external);
            if on_host == me || !(alive(on_host) || external) || !local_tenants.contains(tenant) {
                continue;
            }
            if let Some(server) = self.remote_server(name, s, &topology, PortId(next)) {
                remote.push(server);
                next = next.saturating_add(1);
            }
        }
        topology.cluster = Some(ClusterView {
            host: host.clone(),
            peers: self
                .hosts
                .iter()
                .filter(|h| h.name != me)
                .cloned()
                .collect(),
            remote,
        });
        Ok(topology)
    }

    /// Build the remote-server entry of a validated file's server (`None` cannot happen:
    /// every value was checked).
    fn remote_server(
        &self,
        name: &str,
        s: &super::file::FileServer,
        topology: &Topology,
        id: PortId,
    ) -> Option<RemoteServer> {
        let host = self.host(s.host.as_deref()?)?;
        Some(RemoteServer {
            id,
            name: name.to_string(),
            tenant: topology.tenant_by_name(s.tenant.as_deref()?)?.id,
            host: host.name.clone(),
            underlay: host.underlay,
            mac: s.mac.as_deref()?.parse().ok()?,
            ip: s.ip.as_deref()?.parse().ok()?,
            ipv6: match s.ipv6.as_deref() {
                Some(text) => Some(text.parse().ok()?),
                None => None,
            },
            mtu: u16::try_from(s.mtu?).ok()?,
        })
    }
}

/// Check `[hosts.*]`; return the valid hosts.
fn check_hosts(v: &mut Validator<'_>, file: &FileTopology) -> Vec<Host> {
    let mut hosts = Vec::new();
    let mut underlay_owner: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for (name, raw) in &file.hosts {
        let key = format!("hosts.{}", key_segment(name));
        let name_ok = v.name(
            &key,
            name,
            super::validate::MAX_NETNS_LEN,
            ErrorKind::InvalidName,
        );
        let underlay_key = format!("{key}.underlay");
        let underlay = match raw.underlay.as_deref() {
            None => {
                v.missing(&underlay_key);
                None
            }
            Some(text) => match text.parse::<Ipv4Addr>() {
                Err(_) => {
                    let kind = ErrorKind::MalformedIp {
                        reason: "expected an IPv4 address such as 192.0.2.1".into(),
                    };
                    v.push(&underlay_key, quoted(Some(text)), kind);
                    None
                }
                Ok(addr) if !usable_underlay(addr) => {
                    v.push(
                        &underlay_key,
                        quoted(Some(text)),
                        ErrorKind::UnusableUnderlay,
                    );
                    None
                }
                Ok(addr) => match underlay_owner.insert(addr, name) {
                    Some(other) => {
                        let kind = ErrorKind::DuplicateUnderlay {
                            other: other.to_string(),
                        };
                        v.push(&underlay_key, quoted(Some(text)), kind);
                        None
                    }
                    None => Some(addr),
                },
            },
        };
        let netns_ok = raw.netns.as_deref().is_none_or(|ns| {
            v.name(
                &format!("{key}.netns"),
                ns,
                super::validate::MAX_NETNS_LEN,
                ErrorKind::InvalidNetns,
            )
        });
        let capacity = v.rate(&format!("{key}.capacity"), raw.capacity.as_deref(), true);
        let min = MIN_MTU + VXLAN_OVERHEAD;
        let mtu = match raw.mtu {
            None => Some(DEFAULT_UNDERLAY_MTU),
            Some(m) => match u16::try_from(m) {
                Ok(m) if (min..=MAX_MTU).contains(&m) => Some(m),
                _ => {
                    let kind = ErrorKind::UnderlayMtuOutOfRange;
                    v.push(&format!("{key}.mtu"), Some(m.to_string()), kind);
                    None
                }
            },
        };
        if let (true, Some(underlay), true, Some(capacity), Some(mtu)) =
            (name_ok, underlay, netns_ok, capacity, mtu)
        {
            hosts.push(Host {
                name: name.clone(),
                underlay,
                netns: raw.netns.clone(),
                capacity,
                mtu,
                external: raw.external.unwrap_or(false),
            });
        }
    }
    hosts
}

/// True for an address a host can send VXLAN from and receive it on.
fn usable_underlay(addr: Ipv4Addr) -> bool {
    !(addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback())
}

/// Refuse what only a single host has: its uplink and gateways (not across hosts yet).
fn refuse_single_host_keys(v: &mut Validator<'_>, file: &FileTopology) {
    if file.uplink.is_some() {
        let what = "an uplink";
        v.push("uplink", None, ErrorKind::NotInCluster { what });
    }
    for (name, t) in &file.tenants {
        let key = format!("tenants.{}", key_segment(name));
        let present = [
            ("gateway", t.gateway.is_some()),
            ("gateway6", t.gateway6.is_some()),
            ("nat", t.nat.is_some()),
            ("dns", t.dns.is_some()),
            ("uplink", t.uplink.is_some()),
        ];
        for (field, _) in present.iter().filter(|(_, set)| *set) {
            let what = "gateways and uplinks";
            v.push(
                &format!("{key}.{field}"),
                None,
                ErrorKind::NotInCluster { what },
            );
        }
    }
    for (name, s) in &file.servers {
        if s.dhcp.is_some() {
            let key = format!("servers.{}.dhcp", key_segment(name));
            let what = "DHCP (it needs a gateway)";
            v.push(&key, None, ErrorKind::NotInCluster { what });
        }
    }
}

/// Check that every server names a known host and fits the tunnel's MTU.
fn check_placement(v: &mut Validator<'_>, file: &FileTopology, tunnel_mtu: u16) {
    for (name, s) in &file.servers {
        let key = format!("servers.{}", key_segment(name));
        match s.host.as_deref() {
            None => v.missing(&format!("{key}.host")),
            Some(host) if !file.hosts.contains_key(host) => {
                v.push(
                    &format!("{key}.host"),
                    quoted(Some(host)),
                    ErrorKind::UnknownHost,
                );
            }
            Some(_) => {}
        }
        // An MTU out of every range is the single-host rule's to report.
        if let Some(mtu) = s.mtu
            && mtu > i64::from(tunnel_mtu)
            && mtu <= i64::from(MAX_MTU)
        {
            let kind = ErrorKind::MtuAboveTunnel { max: tunnel_mtu };
            v.push(&format!("{key}.mtu"), Some(mtu.to_string()), kind);
        }
    }
}

/// Check the given VNIs are unique and derive the missing ones; return each tenant's.
fn assign_vnis(v: &mut Validator<'_>, file: &FileTopology) -> BTreeMap<String, u32> {
    let mut owner: BTreeMap<u32, &str> = BTreeMap::new();
    let mut by_tenant = BTreeMap::new();
    for (name, t) in &file.tenants {
        // Out of range is the single-host rule's to report.
        let Some(vni) = t.vni.and_then(|n| u32::try_from(n).ok()) else {
            continue;
        };
        if !(1..=MAX_VNI).contains(&vni) {
            continue;
        }
        match owner.insert(vni, name) {
            Some(other) => {
                let key = format!("tenants.{}.vni", key_segment(name));
                let kind = ErrorKind::DuplicateVni {
                    other: other.to_string(),
                };
                v.push(&key, Some(vni.to_string()), kind);
            }
            None => {
                by_tenant.insert(name.clone(), vni);
            }
        }
    }
    // Derived after every given one, so a derived VNI avoids them all.
    for (name, t) in &file.tenants {
        if t.vni.is_some() {
            continue;
        }
        let mut attempt = 0u32;
        let mut vni = derived_vni(name, attempt);
        while owner.contains_key(&vni) {
            attempt = attempt.wrapping_add(1);
            vni = derived_vni(name, attempt);
        }
        owner.insert(vni, name);
        by_tenant.insert(name.clone(), vni);
    }
    by_tenant
}

/// Derive a VNI (1..=2^24-1) from a tenant name; `attempt` > 0 re-hashes.
fn derived_vni(name: &str, attempt: u32) -> u32 {
    let mac = super::validate::derived_mac(&format!("vni:{name}"), attempt).octets();
    let vni = u32::from_be_bytes([0, mac[3], mac[4], mac[5]]);
    if vni == 0 { 1 } else { vni }
}

/// Check each host's tenants: their guarantees within the host's capacity, and their
/// explicit ceilings too. (Values that do not parse are the single-host rules' to report.)
fn check_host_capacities(v: &mut Validator<'_>, file: &FileTopology, hosts: &[Host]) {
    for host in hosts {
        let tenants: BTreeSet<&str> = file
            .servers
            .values()
            .filter(|s| s.host.as_deref() == Some(host.name.as_str()))
            .filter_map(|s| s.tenant.as_deref())
            .collect();
        let mut sum: u128 = 0;
        for name in &tenants {
            let Some(t) = file.tenants.get(*name) else {
                continue;
            };
            let parse = |raw: Option<&str>| raw.and_then(|text| text.parse::<Rate>().ok());
            if let Some(g) = parse(t.guaranteed.as_deref()) {
                sum += u128::from(g.bits_per_sec());
            }
            if let Some(c) = parse(t.ceiling.as_deref())
                && c > host.capacity
            {
                let key = format!("tenants.{}.ceiling", key_segment(name));
                let kind = ErrorKind::CeilingAboveHostCapacity {
                    host: host.name.clone(),
                    capacity: host.capacity,
                };
                v.push(&key, quoted(t.ceiling.as_deref()), kind);
            }
        }
        if sum > u128::from(host.capacity.bits_per_sec()) {
            let key = format!("hosts.{}.capacity", key_segment(&host.name));
            let kind = ErrorKind::GuaranteesExceedHostCapacity {
                host: host.name.clone(),
                sum: saturating_rate(sum),
                capacity: host.capacity,
            };
            v.push(&key, Some(format!("\"{}\"", host.capacity)), kind);
        }
    }
}

#[cfg(test)]
mod tests;
