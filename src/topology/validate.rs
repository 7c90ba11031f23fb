//! Validation: [`FileTopology`] → [`Topology`], collecting every problem.
//!
//! Contract: [`validate`] never stops at the first problem and never panics on user data. It
//! returns either a [`Topology`] that satisfies every rule below, or all the
//! [`ValidationError`]s it found, each naming the file, the key path (`servers.acme-web.mac`),
//! the offending value and an [`ErrorKind`] saying why.
//!
//! Rules:
//! - `[host] capacity` is required; at least one tenant and one server.
//! - Rates parse as tc rates and are at least [`MIN_RATE`] (1 Mbit/s: below it the shaper
//!   could hold a frame for seconds or days, see there). A ceiling is not below its guarantee and a tenant
//!   ceiling is not above the capacity; tenant guarantees sum to at most the capacity. Inside a
//!   tenant, per-server guarantees sum to at most the tenant's guarantee and a per-server ceiling
//!   is not above the tenant's ceiling.
//! - Weights are integers ≥ 1; MTUs are in 1280..=9000 (IPv6's minimum: every server has a
//!   link-local address); `broadcast_pps` is an integer ≥ 1.
//! - MACs are unicast, non-zero and unique host-wide. An absent MAC is derived from the server
//!   name (FNV-1a into `02:xx:xx:xx:xx:xx`, re-hashed with a counter on collision, servers taken
//!   in name order), so it is stable and never collides with a given or derived MAC.
//! - `ip` is `a.b.c.d/len`, not the network or broadcast address of its prefix (for len < 31),
//!   not multicast, unspecified or loopback, and unique within its tenant; tenants may overlap.
//!   `ipv6` likewise, and not link-local (that one is implicit).
//! - Tenant and server names are usable Linux interface names (1..=15 bytes of ASCII letters,
//!   digits, `-`, `_`, `.`, not starting with `-` or `.`); namespace names follow the same
//!   charset with up to 64 bytes, and no two servers share one.
//!
//! Defaults: tenant ceiling = capacity, weight 1, broadcast_pps 1000, netns = server name,
//! MTU 1500.

use std::collections::BTreeMap;
#[cfg(test)]
use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::file::FileTopology;
use super::rate::RateParseError;
use super::{
    DEFAULT_BROADCAST_PPS, DEFAULT_MTU, DEFAULT_WEIGHT, MIN_RATE, PortId, Rate, Server,
    ShapingParams, Tenant, TenantId, Topology,
};
use crate::wire::MacAddr;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Longest namespace name we accept.
pub const MAX_NETNS_LEN: usize = 64;
/// Smallest MTU allowed: IPv6's minimum. Every server's `eth0` gets an IPv6 link-local
/// address, and the kernel refuses IPv6 on a link below 1280 bytes (`netd up` failed with
/// "Address family not supported by protocol" for what `netd check` accepted).
pub const MIN_MTU: u16 = 1280;
/// Largest MTU allowed (jumbo frames).
pub const MAX_MTU: u16 = 9000;

/// A line and column (both 1-based) in the topology file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub col: usize,
}

/// One problem in a topology file: where, what value, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ValidationError {
    /// The topology file.
    pub file: PathBuf,
    /// Line and column, for problems found while reading the TOML.
    pub location: Option<Location>,
    /// Dotted key path, e.g. `servers.acme-web.mac`; empty for whole-file syntax errors.
    pub key: String,
    /// The offending value as written (strings quoted), if there is one.
    pub value: Option<String>,
    /// Why it is wrong.
    pub kind: ErrorKind,
}

impl fmt::Display for ValidationError {
    /// Show `file[:line:col]: key[ = value]: reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(Location { line, col }) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        if let Some(value) = &self.value {
            write!(f, " = {value}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// Why a name cannot be used as an interface or namespace name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    /// The name is empty.
    Empty,
    /// The name has `len` bytes, more than `max`.
    TooLong { len: usize, max: usize },
    /// The name starts with `-` or `.`.
    BadStart(char),
    /// The name holds a character outside `[A-Za-z0-9_.-]`.
    BadChar(char),
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameProblem::Empty => write!(f, "it is empty"),
            NameProblem::TooLong { len, max } => {
                write!(f, "it is {len} bytes long, at most {max} are allowed")
            }
            NameProblem::BadStart(c) => write!(f, "it starts with {c:?}"),
            NameProblem::BadChar(c) => write!(
                f,
                "it contains {c:?}; allowed are ASCII letters, digits, '-', '_' and '.'"
            ),
        }
    }
}

/// Why a topology value is rejected; match on this, not on messages.
///
/// Messages are lower-case: they follow `file: key = value: ` in [`ValidationError`]'s display.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    // Reading the TOML.
    #[error("{message}")]
    Toml { message: String },
    #[error("unknown key, expected {expected}")]
    UnknownKey { expected: String },
    #[error("{message}")]
    WrongType { message: String },

    // Structure.
    #[error("required key is missing")]
    MissingKey,
    #[error("at least one tenant is required")]
    NoTenants,
    #[error("at least one server is required")]
    NoServers,
    #[error("no such tenant in [tenants]")]
    UnknownTenant,
    #[error("too many entries (more than 2^32)")]
    TooMany,

    // Rates.
    #[error("malformed rate: {reason}")]
    MalformedRate { reason: String },
    #[error("rate must be greater than zero")]
    NonPositiveRate,
    #[error(
        "rate is below the minimum {min}: slower, the shaper would hold one 64 KiB frame for over half a second"
    )]
    RateTooLow { min: Rate },
    #[error("ceiling is below the guarantee {guaranteed}")]
    CeilingBelowGuarantee { guaranteed: Rate },
    #[error("ceiling is above the host capacity {capacity}")]
    CeilingAboveCapacity { capacity: Rate },
    #[error("sum of tenant guarantees {sum} exceeds the host capacity {capacity}")]
    GuaranteesExceedCapacity { sum: Rate, capacity: Rate },
    #[error("per-server guarantees of this tenant sum to {sum}, above the tenant's guarantee")]
    ServerGuaranteesExceedTenant { sum: Rate },
    #[error("per-server ceiling is above the tenant's ceiling {ceiling}")]
    ServerCeilingAboveTenant { ceiling: Rate },
    #[error("weight must be an integer from 1 to {}", u32::MAX)]
    InvalidWeight,
    #[error("broadcast_pps must be an integer from 1 to {}", u32::MAX)]
    InvalidBroadcastPps,

    // MACs.
    #[error("malformed MAC address: expected six hex octets like 02:00:00:00:01:0a")]
    MalformedMac,
    #[error("multicast MAC address cannot belong to a server")]
    MulticastMac,
    #[error("all-zero MAC address cannot belong to a server")]
    ZeroMac,
    #[error("MAC address already used by server {other:?}")]
    DuplicateMac { other: String },

    // Addresses.
    #[error("malformed address: {reason}")]
    MalformedIp { reason: String },
    #[error("address is the network address of its prefix")]
    NetworkAddress,
    #[error("address is the broadcast address of its prefix")]
    BroadcastAddress,
    #[error("multicast address cannot belong to a server")]
    MulticastIp,
    #[error("unspecified address cannot belong to a server")]
    UnspecifiedIp,
    #[error("loopback address cannot belong to a server")]
    LoopbackIp,
    #[error("link-local IPv6 address is implicit; configure a global or unique-local one")]
    LinkLocalIpv6,
    #[error("address already used by server {other:?} of the same tenant")]
    DuplicateIp { other: String },

    // Names.
    #[error("not a usable interface name: {0}")]
    InvalidName(NameProblem),
    #[error("not a usable namespace name: {0}")]
    InvalidNetns(NameProblem),
    #[error("namespace already used by server {other:?}")]
    DuplicateNetns { other: String },

    #[error("MTU must be between {MIN_MTU} (IPv6's minimum) and {MAX_MTU}")]
    MtuOutOfRange,

    // Gateways.
    #[error("needs a gateway: set tenants.<name>.gateway")]
    NeedsGateway,
    #[error("gateway address is the address of server {server:?}")]
    GatewayIsServerAddress { server: String },
    #[error(
        "address is outside its tenant's gateway subnet {subnet} (or has another prefix length)"
    )]
    OutsideGatewaySubnet { subnet: Ipv4Network },
    #[error(
        "address is outside its tenant's IPv6 gateway subnet {subnet} (or has another prefix length)"
    )]
    OutsideGatewaySubnet6 { subnet: String },

    // The uplink.
    #[error("needs an uplink: add an [uplink] section")]
    NeedsUplink,
    #[error("ceiling is above the uplink capacity {capacity}")]
    CeilingAboveUplink { capacity: Rate },
    #[error("the tenants' uplink guarantees sum to {sum}, above the uplink capacity")]
    UplinkGuaranteesExceedCapacity { sum: Rate },

    // The bridged uplink.
    #[error("unknown uplink mode, expected \"routed\" or \"bridged\"")]
    UnknownUplinkMode,
    #[error("needs a bridged uplink: [uplink] mode = \"bridged\"")]
    NeedsBridgedUplink,
    #[error("VLAN must be an integer from 1 to 4094")]
    VlanOutOfRange,
    #[error("VLAN already used by tenant {other:?}")]
    DuplicateVlan { other: String },
    #[error(
        "a tenant on a bridged uplink has its gateway upstream, on its VLAN: no gateway, NAT or DHCP here"
    )]
    GatewayOnBridgedUplink,

    // Clusters.
    #[error(
        "this is a cluster topology ([hosts]): `netd check` validates it, `netd push FILE --etcd URL` stores it, and each host runs `netd up --etcd URL --host NAME`"
    )]
    ClusterFile,
    #[error("only a cluster topology has this: add [hosts.<name>] sections")]
    NeedsHosts,
    #[error("not supported in a cluster topology (yet): {what}")]
    NotInCluster { what: &'static str },
    #[error("no such host in [hosts]")]
    UnknownHost,
    #[error("VNI must be an integer from 1 to 16777215 (24 bits)")]
    VniOutOfRange,
    #[error("VNI already used by tenant {other:?}")]
    DuplicateVni { other: String },
    #[error("underlay address is not a usable unicast IPv4 address")]
    UnusableUnderlay,
    #[error("underlay address already used by host {other:?}")]
    DuplicateUnderlay { other: String },
    #[error("underlay MTU must be between {} and {MAX_MTU}", MIN_MTU + crate::topology::cluster::VXLAN_OVERHEAD)]
    UnderlayMtuOutOfRange,
    #[error(
        "MTU is above {max}: a tenant's frames must fit the smallest underlay MTU less {} bytes of VXLAN",
        crate::topology::cluster::VXLAN_OVERHEAD
    )]
    MtuAboveTunnel { max: u16 },
    #[error(
        "sum of the guarantees of the tenants on host {host:?} is {sum}, above its capacity {capacity}"
    )]
    GuaranteesExceedHostCapacity {
        host: String,
        sum: Rate,
        capacity: Rate,
    },
    #[error("ceiling is above the capacity {capacity} of host {host:?}, which runs its servers")]
    CeilingAboveHostCapacity { host: String, capacity: Rate },
    #[error("a cluster topology sets the capacity per host, in [hosts.<name>] capacity")]
    CapacityPerHost,

    #[error("malformed duration: expected a number and a unit such as 5ms, 500us or 0.01s")]
    MalformedDuration,
    #[error("duration must be between {min:?} and {max:?}")]
    DurationOutOfRange { min: Duration, max: Duration },
}

/// Allowed range of `[host] queue_delay`.
pub const QUEUE_DELAY_RANGE: (Duration, Duration) =
    (Duration::from_micros(100), Duration::from_secs(1));
/// Allowed range of `[host] burst`.
pub const BURST_RANGE: (Duration, Duration) =
    (Duration::from_micros(100), Duration::from_millis(100));

/// Parse `5ms`, `500us`, `0.01s`, `2000ns` into a duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        _ => return None,
    };
    let secs = number * scale;
    (0.0..1e9)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

/// Check a parsed file and build the typed model, or return every problem found.
pub fn validate(path: &Path, file: &FileTopology) -> Result<Topology, Vec<ValidationError>> {
    validate_part(path, file, Part::Whole)
}

/// What [`validate_part`] judges: a whole single-host file, or a cluster's (see
/// [`super::cluster`], which adds the rules that span hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// A single-host topology file: no `[hosts]`, `host` or `vni`.
    Whole,
    /// Every server of a cluster at once, for the rules that hold across hosts (names,
    /// MACs, addresses, rates). The capacity rules are the cluster's, per host, so `[host]`
    /// holds no capacity and the one given stands in for it (the largest host's). A
    /// cluster may have no tenants yet (hosts first, customers later).
    Cluster(Option<Rate>),
    /// One host's part of a validated cluster: it may have no tenants or servers yet.
    HostView,
}

impl Part {
    /// True where the host capacity in the file is the one every tenant shares.
    fn has_own_capacity(self) -> bool {
        !matches!(self, Part::Cluster(_))
    }
}

/// [`validate`] for one [`Part`].
pub(super) fn validate_part(
    path: &Path,
    file: &FileTopology,
    part: Part,
) -> Result<Topology, Vec<ValidationError>> {
    let mut v = Validator {
        path,
        errors: file.problems.clone(),
    };
    if part == Part::Whole && !file.hosts.is_empty() {
        // Judged as a single host's, every server's `host` would be wrong: say what it is.
        v.push("hosts", None, ErrorKind::ClusterFile);
        return Err(v.errors);
    }

    // [host]
    let capacity = match (&file.host, part) {
        (host, Part::Cluster(largest)) => {
            if let Some(text) = host.as_ref().and_then(|h| h.capacity.as_deref()) {
                v.push(
                    "host.capacity",
                    quoted(Some(text)),
                    ErrorKind::CapacityPerHost,
                );
            }
            largest
        }
        (None, _) => {
            v.missing("host");
            None
        }
        (Some(host), _) => v.rate("host.capacity", host.capacity.as_deref(), true),
    };
    let defaults = ShapingParams::default();
    let shaping = ShapingParams {
        queue_delay: file
            .host
            .as_ref()
            .and_then(|h| {
                v.duration(
                    "host.queue_delay",
                    h.queue_delay.as_deref(),
                    QUEUE_DELAY_RANGE,
                )
            })
            .unwrap_or(defaults.queue_delay),
        burst: file
            .host
            .as_ref()
            .and_then(|h| v.duration("host.burst", h.burst.as_deref(), BURST_RANGE))
            .unwrap_or(defaults.burst),
    };

    // [tenants.*]
    if file.tenants.is_empty() && !v.reported("tenants") && part == Part::Whole {
        v.push("tenants", None, ErrorKind::NoTenants);
    }
    let mut tenants = Vec::with_capacity(file.tenants.len());
    // Per tenant (in name order): the guarantee and the effective ceiling, when valid.
    let mut limits: Vec<(Option<Rate>, Option<Rate>)> = Vec::with_capacity(file.tenants.len());
    let mut guarantee_sum: u128 = 0;
    for (index, (name, raw)) in file.tenants.iter().enumerate() {
        let key = format!("tenants.{}", key_segment(name));
        v.name(&key, name, MAX_IFNAME_LEN, ErrorKind::InvalidName);
        let guaranteed = v.rate(
            &format!("{key}.guaranteed"),
            raw.guaranteed.as_deref(),
            true,
        );
        let ceiling_key = format!("{key}.ceiling");
        let explicit_ceiling = v.rate(&ceiling_key, raw.ceiling.as_deref(), false);
        if let (Some(g), Some(c)) = (guaranteed, explicit_ceiling)
            && c < g
        {
            let value = quoted(raw.ceiling.as_deref());
            v.push(
                &ceiling_key,
                value,
                ErrorKind::CeilingBelowGuarantee { guaranteed: g },
            );
        }
        if let (Some(cap), Some(c)) = (capacity, explicit_ceiling)
            && c > cap
            && part.has_own_capacity()
        {
            let value = quoted(raw.ceiling.as_deref());
            v.push(
                &ceiling_key,
                value,
                ErrorKind::CeilingAboveCapacity { capacity: cap },
            );
        }
        let weight = match raw.weight {
            None => Some(DEFAULT_WEIGHT),
            Some(w) => match u32::try_from(w) {
                Ok(w) if w >= 1 => Some(w),
                _ => {
                    v.push(
                        &format!("{key}.weight"),
                        Some(w.to_string()),
                        ErrorKind::InvalidWeight,
                    );
                    None
                }
            },
        };
        let broadcast_pps = match raw.broadcast_pps {
            None => Some(DEFAULT_BROADCAST_PPS),
            Some(p) => match u32::try_from(p) {
                Ok(p) if p >= 1 => Some(p),
                _ => {
                    v.push(
                        &format!("{key}.broadcast_pps"),
                        Some(p.to_string()),
                        ErrorKind::InvalidBroadcastPps,
                    );
                    None
                }
            },
        };
        if let Some(g) = guaranteed {
            guarantee_sum += u128::from(g.bits_per_sec());
        }
        let vni = check_vni(&mut v, &key, raw.vni, part);
        let ceiling = match &raw.ceiling {
            Some(_) => explicit_ceiling,
            None => capacity,
        };
        limits.push((guaranteed, ceiling));
        let id = v.id(index, "tenants");
        if let (Some(id), Some(guaranteed), Some(ceiling), Some(weight), Some(broadcast_pps)) =
            (id, guaranteed, ceiling, weight, broadcast_pps)
        {
            tenants.push(Tenant {
                id: TenantId(id),
                name: name.clone(),
                guaranteed,
                ceiling,
                weight,
                broadcast_pps,
                gateway: None, // filled in by gateway::check once servers are known
                nat: false,
                uplink: None, // filled in by uplink::check once gateways are known
                vni,
            });
        }
    }
    if let Some(cap) = capacity
        && guarantee_sum > u128::from(cap.bits_per_sec())
        && part.has_own_capacity()
    {
        let sum = saturating_rate(guarantee_sum);
        v.push(
            "tenants",
            Some(format!("{sum} > {cap}")),
            ErrorKind::GuaranteesExceedCapacity { sum, capacity: cap },
        );
    }

    // [servers.*]
    if file.servers.is_empty() && !v.reported("servers") && part == Part::Whole {
        v.push("servers", None, ErrorKind::NoServers);
    }
    let tenant_index: BTreeMap<&str, usize> = file
        .tenants
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), i))
        .collect();
    let macs = v.macs(file);
    let mut servers = Vec::with_capacity(file.servers.len());
    let mut server_guarantees: Vec<u128> = vec![0; file.tenants.len()];
    // (tenant name, address) → first server using it; overlap across tenants is fine.
    let mut ipv4_owner: BTreeMap<(&str, Ipv4Addr), &str> = BTreeMap::new();
    let mut ipv6_owner: BTreeMap<(&str, Ipv6Addr), &str> = BTreeMap::new();
    let mut netns_owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (index, (name, raw)) in file.servers.iter().enumerate() {
        let key = format!("servers.{}", key_segment(name));
        v.name(&key, name, MAX_IFNAME_LEN, ErrorKind::InvalidName);
        if part == Part::Whole && raw.host.is_some() {
            v.push(
                &format!("{key}.host"),
                quoted(raw.host.as_deref()),
                ErrorKind::NeedsHosts,
            );
        }

        let tenant_key = format!("{key}.tenant");
        let tenant = match raw.tenant.as_deref() {
            None => {
                v.missing(&tenant_key);
                None
            }
            Some(t) => match tenant_index.get(t) {
                Some(&i) => Some(i),
                None => {
                    v.push(&tenant_key, quoted(Some(t)), ErrorKind::UnknownTenant);
                    None
                }
            },
        };
        // Duplicate addresses are judged by the tenant as written, even an unknown one.
        let tenant_name = raw.tenant.as_deref().unwrap_or("");

        let ip_key = format!("{key}.ip");
        let ip = match raw.ip.as_deref() {
            None => {
                v.missing(&ip_key);
                None
            }
            Some(text) => match check_ipv4(text) {
                Ok(net) => match ipv4_owner.get(&(tenant_name, net.ip())) {
                    Some(other) => {
                        let kind = ErrorKind::DuplicateIp {
                            other: other.to_string(),
                        };
                        v.push(&ip_key, quoted(Some(text)), kind);
                        None
                    }
                    None => {
                        ipv4_owner.insert((tenant_name, net.ip()), name);
                        Some(net)
                    }
                },
                Err(kind) => {
                    v.push(&ip_key, quoted(Some(text)), kind);
                    None
                }
            },
        };

        let ipv6_key = format!("{key}.ipv6");
        let ipv6 = match raw.ipv6.as_deref() {
            None => Some(None),
            Some(text) => match check_ipv6(text) {
                Ok(net) => match ipv6_owner.get(&(tenant_name, net.ip())) {
                    Some(other) => {
                        let kind = ErrorKind::DuplicateIp {
                            other: other.to_string(),
                        };
                        v.push(&ipv6_key, quoted(Some(text)), kind);
                        None
                    }
                    None => {
                        ipv6_owner.insert((tenant_name, net.ip()), name);
                        Some(Some(net))
                    }
                },
                Err(kind) => {
                    v.push(&ipv6_key, quoted(Some(text)), kind);
                    None
                }
            },
        };

        let netns_key = format!("{key}.netns");
        let netns = raw.netns.as_deref().unwrap_or(name);
        // A defaulted netns is the server name, already checked (and stricter) above.
        let netns_ok = raw.netns.is_none()
            || v.name(&netns_key, netns, MAX_NETNS_LEN, ErrorKind::InvalidNetns);
        if let Some(other) = netns_owner.get(netns) {
            let kind = ErrorKind::DuplicateNetns {
                other: other.to_string(),
            };
            v.push(&netns_key, quoted(Some(netns)), kind);
        } else {
            netns_owner.insert(netns, name);
        }

        let mtu = match raw.mtu {
            None => Some(DEFAULT_MTU),
            Some(m) => match u16::try_from(m) {
                Ok(m) if (MIN_MTU..=MAX_MTU).contains(&m) => Some(m),
                _ => {
                    v.push(
                        &format!("{key}.mtu"),
                        Some(m.to_string()),
                        ErrorKind::MtuOutOfRange,
                    );
                    None
                }
            },
        };

        let guaranteed_key = format!("{key}.guaranteed");
        let ceiling_key = format!("{key}.ceiling");
        let guaranteed = v.rate(&guaranteed_key, raw.guaranteed.as_deref(), false);
        let ceiling = v.rate(&ceiling_key, raw.ceiling.as_deref(), false);
        if let (Some(g), Some(c)) = (guaranteed, ceiling)
            && c < g
        {
            let value = quoted(raw.ceiling.as_deref());
            v.push(
                &ceiling_key,
                value,
                ErrorKind::CeilingBelowGuarantee { guaranteed: g },
            );
        }
        if let Some(t) = tenant {
            let tenant_ceiling = limits.get(t).and_then(|&(_, c)| c);
            if let (Some(tc), Some(c)) = (tenant_ceiling, ceiling)
                && c > tc
            {
                let value = quoted(raw.ceiling.as_deref());
                v.push(
                    &ceiling_key,
                    value,
                    ErrorKind::ServerCeilingAboveTenant { ceiling: tc },
                );
            }
            if let (Some(sum), Some(g)) = (server_guarantees.get_mut(t), guaranteed) {
                *sum += u128::from(g.bits_per_sec());
            }
        }
        let rates_ok = (raw.guaranteed.is_none() || guaranteed.is_some())
            && (raw.ceiling.is_none() || ceiling.is_some());

        let id = v.id(index, "servers");
        let tenant_id = tenant.and_then(|t| v.id(t, "tenants"));
        let mac = macs.get(name.as_str()).copied();
        if let (Some(id), Some(tenant), Some(mac), Some(ip), Some(ipv6), Some(mtu), true, true) =
            (id, tenant_id, mac, ip, ipv6, mtu, netns_ok, rates_ok)
        {
            servers.push(Server {
                id: PortId(id),
                name: name.clone(),
                tenant: TenantId(tenant),
                mac,
                ip,
                ipv6,
                netns: netns.to_string(),
                mtu,
                guaranteed,
                ceiling,
                dhcp: raw.dhcp.unwrap_or(false),
            });
        }
    }
    let first_gateway_port = u32::try_from(file.servers.len()).unwrap_or(u32::MAX);
    super::gateway::check(&mut v, file, &mut tenants, &servers, first_gateway_port);
    let gateways = tenants.iter().filter(|t| t.gateway.is_some()).count();
    let first_uplink_port = first_gateway_port.saturating_add(u32::try_from(gateways).unwrap_or(0));
    let uplink = super::uplink::check(&mut v, file, &mut tenants, first_uplink_port);
    for ((tenant, raw), (&sum, &(guaranteed, _))) in file
        .tenants
        .iter()
        .zip(server_guarantees.iter().zip(limits.iter()))
    {
        if let Some(g) = guaranteed
            && sum > u128::from(g.bits_per_sec())
        {
            let kind = ErrorKind::ServerGuaranteesExceedTenant {
                sum: saturating_rate(sum),
            };
            let value = quoted(raw.guaranteed.as_deref());
            v.push(
                &format!("tenants.{}.guaranteed", key_segment(tenant)),
                value,
                kind,
            );
        }
    }

    match capacity {
        Some(capacity) if v.errors.is_empty() => Ok(Topology {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            source: path.to_path_buf(),
            capacity,
            shaping,
            tenants,
            servers,
            uplink,
            cluster: None,
        }),
        // No capacity always comes with an error; the guard only avoids an unwrap.
        _ => Err(v.errors),
    }
}

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Check a tenant's `vni`: only in a cluster, 1..=[`MAX_VNI`].
fn check_vni(v: &mut Validator<'_>, tenant_key: &str, raw: Option<i64>, part: Part) -> Option<u32> {
    let n = raw?;
    let key = format!("{tenant_key}.vni");
    if part == Part::Whole {
        v.push(&key, Some(n.to_string()), ErrorKind::NeedsHosts);
        return None;
    }
    match u32::try_from(n) {
        Ok(vni) if (1..=MAX_VNI).contains(&vni) => Some(vni),
        _ => {
            v.push(&key, Some(n.to_string()), ErrorKind::VniOutOfRange);
            None
        }
    }
}

/// Collects errors for one file.
pub(super) struct Validator<'a> {
    pub(super) path: &'a Path,
    pub(super) errors: Vec<ValidationError>,
}

impl Validator<'_> {
    pub(super) fn push(&mut self, key: &str, value: Option<String>, kind: ErrorKind) {
        self.errors.push(ValidationError {
            file: self.path.to_path_buf(),
            location: None,
            key: key.to_string(),
            value,
            kind,
        });
    }

    /// Return true if reading the TOML already reported (and dropped) this key.
    pub(super) fn reported(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key == key)
    }

    /// Report a missing required key, unless it was dropped for having the wrong type.
    pub(super) fn missing(&mut self, key: &str) {
        if !self.reported(key) {
            self.push(key, None, ErrorKind::MissingKey);
        }
    }

    /// Parse an optional or required rate, reporting why it is unusable.
    pub(super) fn rate(&mut self, key: &str, raw: Option<&str>, required: bool) -> Option<Rate> {
        let Some(text) = raw else {
            if required {
                self.missing(key);
            }
            return None;
        };
        let kind = match text.parse::<Rate>() {
            Ok(rate) if rate >= MIN_RATE => return Some(rate),
            Ok(_) => ErrorKind::RateTooLow { min: MIN_RATE },
            Err(RateParseError::NotPositive(_)) => ErrorKind::NonPositiveRate,
            Err(RateParseError::Malformed(_)) => ErrorKind::MalformedRate {
                reason: "expected a number and a tc unit such as 600mbit or 2.5gbit".into(),
            },
            Err(RateParseError::UnknownUnit { unit, .. }) => ErrorKind::MalformedRate {
                reason: format!(
                    "unknown unit {unit:?}; use bit, kbit, mbit, gbit, tbit (bits/s) or bps, kbps, mbps, gbps, tbps (bytes/s)"
                ),
            },
            Err(RateParseError::TooLarge(_)) => ErrorKind::MalformedRate {
                reason: "too large".into(),
            },
        };
        self.push(key, quoted(Some(text)), kind);
        None
    }

    /// Parse an optional duration and check it lies in `range`.
    pub(super) fn duration(
        &mut self,
        key: &str,
        raw: Option<&str>,
        range: (Duration, Duration),
    ) -> Option<Duration> {
        let text = raw?;
        let kind = match parse_duration(text) {
            Some(d) if d >= range.0 && d <= range.1 => return Some(d),
            Some(_) => ErrorKind::DurationOutOfRange {
                min: range.0,
                max: range.1,
            },
            None => ErrorKind::MalformedDuration,
        };
        self.push(key, quoted(Some(text)), kind);
        None
    }

    /// Check a name against the interface/namespace rules; return true if it is usable.
    pub(super) fn name(
        &mut self,
        key: &str,
        name: &str,
        max: usize,
        kind: fn(NameProblem) -> ErrorKind,
    ) -> bool {
        match check_name(name, max) {
            Ok(()) => true,
            Err(problem) => {
                self.push(key, quoted(Some(name)), kind(problem));
                false
            }
        }
    }

    /// Convert an index to an id, reporting the (absurd) case where it does not fit.
    fn id(&mut self, index: usize, table: &str) -> Option<u32> {
        let id = u32::try_from(index).ok();
        if id.is_none() && !self.reported(table) {
            self.push(table, None, ErrorKind::TooMany);
        }
        id
    }

    /// Check the given MACs and derive the missing ones; return each usable server MAC by name.
    fn macs<'f>(&mut self, file: &'f FileTopology) -> BTreeMap<&'f str, MacAddr> {
        let mut by_name = BTreeMap::new();
        let mut owner: BTreeMap<MacAddr, &str> = BTreeMap::new();
        for (name, raw) in &file.servers {
            let Some(text) = raw.mac.as_deref() else {
                continue;
            };
            let key = format!("servers.{}.mac", key_segment(name));
            let kind = match text.parse::<MacAddr>() {
                Err(_) => ErrorKind::MalformedMac,
                Ok(mac) if mac.is_zero() => ErrorKind::ZeroMac,
                Ok(mac) if mac.is_multicast() => ErrorKind::MulticastMac,
                Ok(mac) => match owner.get(&mac) {
                    Some(other) => ErrorKind::DuplicateMac {
                        other: other.to_string(),
                    },
                    None => {
                        owner.insert(mac, name);
                        by_name.insert(name.as_str(), mac);
                        continue;
                    }
                },
            };
            self.push(&key, quoted(Some(text)), kind);
        }
        // Derive after collecting every given MAC, so a derived one avoids them all.
        for (name, raw) in &file.servers {
            if raw.mac.is_some() {
                continue;
            }
            let mut attempt = 0u32;
            let mut mac = derived_mac(name, attempt);
            while owner.contains_key(&mac) {
                // 2^40 candidates against a handful of servers: this ends after a few rounds.
                attempt = attempt.wrapping_add(1);
                mac = derived_mac(name, attempt);
            }
            owner.insert(mac, name);
            by_name.insert(name.as_str(), mac);
        }
        by_name
    }
}

/// Derive a locally administered unicast MAC from a server name; `attempt` > 0 re-hashes.
pub(super) fn derived_mac(name: &str, attempt: u32) -> MacAddr {
    // FNV-1a (64 bit) of the name, then of "#<attempt>" on a collision.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(name.as_bytes());
    if attempt > 0 {
        feed(format!("#{attempt}").as_bytes());
    }
    // FNV-1a barely mixes its last input byte into the high bits, so names differing only at
    // the end ("t1-a", "t1-b") would share a prefix; the murmur3 finalizer spreads them out.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    let h = hash.to_be_bytes();
    // 0x02: U/L bit set (locally administered), I/G bit clear (unicast); never all-zero.
    MacAddr([0x02, h[3], h[4], h[5], h[6], h[7]])
}

/// Show one segment of a key path as TOML would: bare if it can be, quoted otherwise.
pub(crate) fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// Quote a string value as TOML would show it.
pub(super) fn quoted(value: Option<&str>) -> Option<String> {
    value.map(|s| format!("{s:?}"))
}

/// Clamp a sum of rates into a `Rate` for display.
pub(super) fn saturating_rate(bits: u128) -> Rate {
    Rate::from_bits_per_sec(u64::try_from(bits).unwrap_or(u64::MAX))
}

/// Check a name: 1..=max bytes of `[A-Za-z0-9_.-]`, not starting with `-` or `.`.
fn check_name(name: &str, max: usize) -> Result<(), NameProblem> {
    let Some(first) = name.chars().next() else {
        return Err(NameProblem::Empty);
    };
    if name.len() > max {
        return Err(NameProblem::TooLong {
            len: name.len(),
            max,
        });
    }
    // This also rules out "." and "..".
    if first == '-' || first == '.' {
        return Err(NameProblem::BadStart(first));
    }
    match name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(NameProblem::BadChar(c)),
        None => Ok(()),
    }
}

/// Split `addr/len` strictly: both parts present, the length plain decimal digits.
fn split_prefix(text: &str) -> Result<(&str, u8), ErrorKind> {
    let malformed = |reason: &str| ErrorKind::MalformedIp {
        reason: reason.to_string(),
    };
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| malformed("missing the /prefix length"))?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed("the prefix length is not a number"));
    }
    let len = len
        .parse::<u8>()
        .map_err(|_| malformed("the prefix length is out of range"))?;
    Ok((addr, len))
}

/// Parse and check a server's IPv4 address with prefix.
pub(super) fn check_ipv4(text: &str) -> Result<Ipv4Network, ErrorKind> {
    let (addr, len) = split_prefix(text)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| ErrorKind::MalformedIp {
        reason: "not an IPv4 address".into(),
    })?;
    let net = Ipv4Network::new(addr, len).map_err(|_| ErrorKind::MalformedIp {
        reason: "the prefix length must be at most 32".into(),
    })?;
    if addr.is_unspecified() {
        Err(ErrorKind::UnspecifiedIp)
    } else if addr.is_loopback() {
        Err(ErrorKind::LoopbackIp)
    } else if addr.is_multicast() {
        Err(ErrorKind::MulticastIp)
    } else if addr.is_broadcast() {
        Err(ErrorKind::BroadcastAddress)
    } else if len < 31 && addr == net.network() {
        // /31 (RFC 3021) and /32 have no network or broadcast address.
        Err(ErrorKind::NetworkAddress)
    } else if len < 31 && addr == net.broadcast() {
        Err(ErrorKind::BroadcastAddress)
    } else {
        Ok(net)
    }
}

/// Parse and check a server's IPv6 address with prefix.
pub(super) fn check_ipv6(text: &str) -> Result<Ipv6Network, ErrorKind> {
    let (addr, len) = split_prefix(text)?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| ErrorKind::MalformedIp {
        reason: "not an IPv6 address".into(),
    })?;
    let net = Ipv6Network::new(addr, len).map_err(|_| ErrorKind::MalformedIp {
        reason: "the prefix length must be at most 128".into(),
    })?;
    if addr.is_unspecified() {
        Err(ErrorKind::UnspecifiedIp)
    } else if addr.is_loopback() {
        Err(ErrorKind::LoopbackIp)
    } else if addr.is_multicast() {
        Err(ErrorKind::MulticastIp)
    } else if addr.is_unicast_link_local() {
        Err(ErrorKind::LinkLocalIpv6)
    } else {
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use std::mem::discriminant;

    use rstest::rstest;

    use super::*;
    use crate::topology::parse;

    /// A valid topology using every key; each test breaks one thing.
    const BASE: &str = r#"
[host]
capacity = "1gbit"

[tenants.acme]
guaranteed = "600mbit"
ceiling = "1gbit"
weight = 2

[tenants.globex]
guaranteed = "300mbit"

[servers.acme-web]
tenant = "acme"
ip = "10.1.0.10/24"
mac = "02:00:00:00:01:0a"
netns = "acme-web"
ipv6 = "fd00::10/64"
mtu = 1500
guaranteed = "100mbit"
ceiling = "500mbit"

[servers.acme-db]
tenant = "acme"
ip = "10.1.0.11/24"

[servers.globex-web]
tenant = "globex"
ip = "10.1.0.10/24"
"#;

    const PATH: &str = "topology/base.toml";

    fn mbit(n: u64) -> Rate {
        Rate::from_bits_per_sec(n * 1_000_000)
    }

    /// Apply each (from, to) replacement to BASE; every `from` must occur exactly once.
    fn mutate(edits: &[(&str, &str)]) -> String {
        let mut text = BASE.to_string();
        for (from, to) in edits {
            assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
            text = text.replace(from, to);
        }
        text
    }

    fn errors(text: &str) -> Vec<ValidationError> {
        match parse(Path::new(PATH), text) {
            Ok(t) => panic!("expected errors, got {t:#?}"),
            Err(errors) => errors,
        }
    }

    fn topology(text: &str) -> Topology {
        match parse(Path::new(PATH), text) {
            Ok(t) => t,
            Err(errors) => panic!("expected a topology, got {errors:#?}"),
        }
    }

    #[test]
    fn base_is_valid() {
        topology(BASE);
    }

    /// One broken rule gives exactly one error, of that kind, at that key.
    #[rstest]
    // Reading the TOML.
    #[case::unknown_key(&[("mtu = 1500", "mtu = 1500\ncolour = \"blue\"")], "servers.acme-web.colour", ErrorKind::UnknownKey { expected: String::new() })]
    #[case::unknown_table(&[("[host]", "[hostz.x]\ny = 1\n[host]")], "hostz", ErrorKind::UnknownKey { expected: String::new() })]
    #[case::wrong_type(&[("mtu = 1500", "mtu = \"big\"")], "servers.acme-web.mtu", ErrorKind::WrongType { message: String::new() })]
    #[case::wrong_type_string(&[("ip = \"10.1.0.11/24\"", "ip = 10")], "servers.acme-db.ip", ErrorKind::WrongType { message: String::new() })]
    // Structure.
    #[case::missing_host(&[("[host]\ncapacity = \"1gbit\"\n", "")], "host", ErrorKind::MissingKey)]
    #[case::missing_capacity(&[("capacity = \"1gbit\"", "")], "host.capacity", ErrorKind::MissingKey)]
    #[case::missing_tenant_guarantee(&[("guaranteed = \"300mbit\"", "")], "tenants.globex.guaranteed", ErrorKind::MissingKey)]
    #[case::missing_server_tenant(&[("tenant = \"globex\"", "")], "servers.globex-web.tenant", ErrorKind::MissingKey)]
    #[case::missing_server_ip(&[("ip = \"10.1.0.11/24\"", "")], "servers.acme-db.ip", ErrorKind::MissingKey)]
    #[case::unknown_tenant(&[("tenant = \"globex\"", "tenant = \"initech\"")], "servers.globex-web.tenant", ErrorKind::UnknownTenant)]
    // Rates.
    #[case::malformed_capacity(&[("capacity = \"1gbit\"", "capacity = \"fast\"")], "host.capacity", ErrorKind::MalformedRate { reason: String::new() })]
    #[case::unknown_unit(&[("guaranteed = \"300mbit\"", "guaranteed = \"300mb\"")], "tenants.globex.guaranteed", ErrorKind::MalformedRate { reason: String::new() })]
    #[case::malformed_server_rate(&[("guaranteed = \"100mbit\"", "guaranteed = \"lots\"")], "servers.acme-web.guaranteed", ErrorKind::MalformedRate { reason: String::new() })]
    #[case::zero_capacity(&[("capacity = \"1gbit\"", "capacity = \"0gbit\"")], "host.capacity", ErrorKind::NonPositiveRate)]
    #[case::zero_guarantee(&[("guaranteed = \"300mbit\"", "guaranteed = \"0mbit\"")], "tenants.globex.guaranteed", ErrorKind::NonPositiveRate)]
    #[case::negative_ceiling(&[("ceiling = \"1gbit\"", "ceiling = \"-1gbit\"")], "tenants.acme.ceiling", ErrorKind::NonPositiveRate)]
    #[case::zero_server_guarantee(&[("guaranteed = \"100mbit\"", "guaranteed = \"0bit\"")], "servers.acme-web.guaranteed", ErrorKind::NonPositiveRate)]
    #[case::zero_server_ceiling(&[("ceiling = \"500mbit\"", "ceiling = \"0kbit\"")], "servers.acme-web.ceiling", ErrorKind::NonPositiveRate)]
    #[case::one_bit_server_ceiling(&[("ceiling = \"500mbit\"", "ceiling = \"1bit\"")], "servers.acme-web.ceiling", ErrorKind::RateTooLow { min: MIN_RATE })]
    #[case::tenant_ceiling_below_minimum(&[("ceiling = \"1gbit\"", "ceiling = \"999kbit\"")], "tenants.acme.ceiling", ErrorKind::RateTooLow { min: MIN_RATE })]
    #[case::ceiling_below_guarantee(&[("ceiling = \"1gbit\"", "ceiling = \"500mbit\"")], "tenants.acme.ceiling", ErrorKind::CeilingBelowGuarantee { guaranteed: mbit(600) })]
    #[case::ceiling_above_capacity(&[("ceiling = \"1gbit\"", "ceiling = \"2gbit\"")], "tenants.acme.ceiling", ErrorKind::CeilingAboveCapacity { capacity: mbit(1000) })]
    #[case::guarantees_above_capacity(&[("guaranteed = \"300mbit\"", "guaranteed = \"500mbit\"")], "tenants", ErrorKind::GuaranteesExceedCapacity { sum: mbit(1100), capacity: mbit(1000) })]
    #[case::server_guarantees_above_tenant(&[("ip = \"10.1.0.11/24\"", "ip = \"10.1.0.11/24\"\nguaranteed = \"550mbit\"")], "tenants.acme.guaranteed", ErrorKind::ServerGuaranteesExceedTenant { sum: mbit(650) })]
    #[case::server_ceiling_above_tenant(&[("ceiling = \"500mbit\"", "ceiling = \"2gbit\"")], "servers.acme-web.ceiling", ErrorKind::ServerCeilingAboveTenant { ceiling: mbit(1000) })]
    #[case::server_ceiling_below_guarantee(&[("ceiling = \"500mbit\"", "ceiling = \"50mbit\"")], "servers.acme-web.ceiling", ErrorKind::CeilingBelowGuarantee { guaranteed: mbit(100) })]
    #[case::weight_zero(&[("weight = 2", "weight = 0")], "tenants.acme.weight", ErrorKind::InvalidWeight)]
    #[case::weight_negative(&[("weight = 2", "weight = -1")], "tenants.acme.weight", ErrorKind::InvalidWeight)]
    #[case::weight_huge(&[("weight = 2", "weight = 4294967296")], "tenants.acme.weight", ErrorKind::InvalidWeight)]
    #[case::weight_float(&[("weight = 2", "weight = 1.5")], "tenants.acme.weight", ErrorKind::WrongType { message: String::new() })]
    #[case::weight_string(&[("weight = 2", "weight = \"two\"")], "tenants.acme.weight", ErrorKind::WrongType { message: String::new() })]
    // MACs.
    #[case::malformed_mac(&[("02:00:00:00:01:0a", "02:00:00:00:01")], "servers.acme-web.mac", ErrorKind::MalformedMac)]
    #[case::malformed_mac_hex(&[("02:00:00:00:01:0a", "02:00:00:00:01:zz")], "servers.acme-web.mac", ErrorKind::MalformedMac)]
    #[case::multicast_mac(&[("02:00:00:00:01:0a", "01:00:5e:00:00:01")], "servers.acme-web.mac", ErrorKind::MulticastMac)]
    #[case::broadcast_mac(&[("02:00:00:00:01:0a", "ff:ff:ff:ff:ff:ff")], "servers.acme-web.mac", ErrorKind::MulticastMac)]
    #[case::zero_mac(&[("02:00:00:00:01:0a", "00:00:00:00:00:00")], "servers.acme-web.mac", ErrorKind::ZeroMac)]
    // acme-db sorts first, so the second holder of the MAC is acme-web.
    #[case::duplicate_mac(&[("ip = \"10.1.0.11/24\"", "ip = \"10.1.0.11/24\"\nmac = \"02:00:00:00:01:0A\"")], "servers.acme-web.mac", ErrorKind::DuplicateMac { other: "acme-db".into() })]
    #[case::duplicate_mac_across_tenants(&[("[servers.globex-web]", "[servers.globex-web]\nmac = \"02:00:00:00:01:0a\"")], "servers.globex-web.mac", ErrorKind::DuplicateMac { other: "acme-web".into() })]
    // IPv4.
    #[case::ip_without_prefix(&[("10.1.0.11/24", "10.1.0.11")], "servers.acme-db.ip", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ip_prefix_too_long(&[("10.1.0.11/24", "10.1.0.11/33")], "servers.acme-db.ip", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ip_bad_octet(&[("10.1.0.11/24", "10.1.0.300/24")], "servers.acme-db.ip", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ip_empty_prefix(&[("10.1.0.11/24", "10.1.0.11/")], "servers.acme-db.ip", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ip_signed_prefix(&[("10.1.0.11/24", "10.1.0.11/+4")], "servers.acme-db.ip", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ip_is_ipv6(&[("10.1.0.11/24", "fd00::1/64")], "servers.acme-db.ip", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ip_network(&[("10.1.0.11/24", "10.1.0.0/24")], "servers.acme-db.ip", ErrorKind::NetworkAddress)]
    #[case::ip_broadcast(&[("10.1.0.11/24", "10.1.0.255/24")], "servers.acme-db.ip", ErrorKind::BroadcastAddress)]
    #[case::ip_limited_broadcast(&[("10.1.0.11/24", "255.255.255.255/32")], "servers.acme-db.ip", ErrorKind::BroadcastAddress)]
    #[case::ip_multicast(&[("10.1.0.11/24", "224.0.0.5/24")], "servers.acme-db.ip", ErrorKind::MulticastIp)]
    #[case::ip_unspecified(&[("10.1.0.11/24", "0.0.0.0/8")], "servers.acme-db.ip", ErrorKind::UnspecifiedIp)]
    #[case::ip_loopback(&[("10.1.0.11/24", "127.0.0.1/8")], "servers.acme-db.ip", ErrorKind::LoopbackIp)]
    #[case::ip_duplicate(&[("10.1.0.11/24", "10.1.0.10/24")], "servers.acme-web.ip", ErrorKind::DuplicateIp { other: "acme-db".into() })]
    #[case::ip_duplicate_other_prefix(&[("10.1.0.11/24", "10.1.0.10/16")], "servers.acme-web.ip", ErrorKind::DuplicateIp { other: "acme-db".into() })]
    // IPv6.
    #[case::ipv6_without_prefix(&[("fd00::10/64", "fd00::10")], "servers.acme-web.ipv6", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ipv6_prefix_too_long(&[("fd00::10/64", "fd00::10/129")], "servers.acme-web.ipv6", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ipv6_bad(&[("fd00::10/64", "fd00::zz/64")], "servers.acme-web.ipv6", ErrorKind::MalformedIp { reason: String::new() })]
    #[case::ipv6_multicast(&[("fd00::10/64", "ff02::1/64")], "servers.acme-web.ipv6", ErrorKind::MulticastIp)]
    #[case::ipv6_unspecified(&[("fd00::10/64", "::/64")], "servers.acme-web.ipv6", ErrorKind::UnspecifiedIp)]
    #[case::ipv6_loopback(&[("fd00::10/64", "::1/128")], "servers.acme-web.ipv6", ErrorKind::LoopbackIp)]
    #[case::ipv6_link_local(&[("fd00::10/64", "fe80::10/64")], "servers.acme-web.ipv6", ErrorKind::LinkLocalIpv6)]
    #[case::ipv6_duplicate(&[("ip = \"10.1.0.11/24\"", "ip = \"10.1.0.11/24\"\nipv6 = \"fd00::10/48\"")], "servers.acme-web.ipv6", ErrorKind::DuplicateIp { other: "acme-db".into() })]
    // Names.
    #[case::tenant_name_too_long(&[("[tenants.globex]", "[tenants.globex-corporation]"), ("tenant = \"globex\"", "tenant = \"globex-corporation\"")], "tenants.globex-corporation", ErrorKind::InvalidName(NameProblem::TooLong { len: 18, max: 15 }))]
    #[case::server_name_too_long(&[("[servers.globex-web]", "[servers.globex-web-server-1]")], "servers.globex-web-server-1", ErrorKind::InvalidName(NameProblem::TooLong { len: 19, max: 15 }))]
    #[case::server_name_space(&[("[servers.globex-web]", "[servers.\"globex web\"]")], "servers.\"globex web\"", ErrorKind::InvalidName(NameProblem::BadChar(' ')))]
    #[case::server_name_slash(&[("[servers.globex-web]", "[servers.\"globex/web\"]")], "servers.\"globex/web\"", ErrorKind::InvalidName(NameProblem::BadChar('/')))]
    #[case::server_name_non_ascii(&[("[servers.globex-web]", "[servers.\"globéx\"]")], "servers.\"globéx\"", ErrorKind::InvalidName(NameProblem::BadChar('é')))]
    #[case::server_name_dash(&[("[servers.globex-web]", "[servers.-globex]")], "servers.-globex", ErrorKind::InvalidName(NameProblem::BadStart('-')))]
    #[case::server_name_dot(&[("[servers.globex-web]", "[servers.\".globex\"]")], "servers.\".globex\"", ErrorKind::InvalidName(NameProblem::BadStart('.')))]
    #[case::server_name_dotdot(&[("[servers.globex-web]", "[servers.\"..\"]")], "servers.\"..\"", ErrorKind::InvalidName(NameProblem::BadStart('.')))]
    #[case::server_name_empty(&[("[servers.globex-web]", "[servers.\"\"]")], "servers.\"\"", ErrorKind::InvalidName(NameProblem::Empty))]
    #[case::netns_bad_start(&[("netns = \"acme-web\"", "netns = \"-acme\"")], "servers.acme-web.netns", ErrorKind::InvalidNetns(NameProblem::BadStart('-')))]
    #[case::netns_bad_char(&[("netns = \"acme-web\"", "netns = \"acme/web\"")], "servers.acme-web.netns", ErrorKind::InvalidNetns(NameProblem::BadChar('/')))]
    #[case::netns_empty(&[("netns = \"acme-web\"", "netns = \"\"")], "servers.acme-web.netns", ErrorKind::InvalidNetns(NameProblem::Empty))]
    #[case::netns_too_long(&[("netns = \"acme-web\"", "netns = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"")], "servers.acme-web.netns", ErrorKind::InvalidNetns(NameProblem::TooLong { len: 65, max: 64 }))]
    #[case::netns_duplicate(&[("ip = \"10.1.0.11/24\"", "ip = \"10.1.0.11/24\"\nnetns = \"acme-web\"")], "servers.acme-web.netns", ErrorKind::DuplicateNetns { other: "acme-db".into() })]
    #[case::netns_duplicate_of_default(&[("[servers.globex-web]", "[servers.globex-web]\nnetns = \"acme-db\"")], "servers.globex-web.netns", ErrorKind::DuplicateNetns { other: "acme-db".into() })]
    // MTU.
    #[case::mtu_too_small(&[("mtu = 1500", "mtu = 1279")], "servers.acme-web.mtu", ErrorKind::MtuOutOfRange)]
    #[case::mtu_too_large(&[("mtu = 1500", "mtu = 9001")], "servers.acme-web.mtu", ErrorKind::MtuOutOfRange)]
    #[case::mtu_negative(&[("mtu = 1500", "mtu = -1500")], "servers.acme-web.mtu", ErrorKind::MtuOutOfRange)]
    #[case::mtu_huge(&[("mtu = 1500", "mtu = 70000")], "servers.acme-web.mtu", ErrorKind::MtuOutOfRange)]
    #[case::queue_delay_malformed(&[("capacity = \"1gbit\"", "capacity = \"1gbit\"\nqueue_delay = \"5 minutes\"")], "host.queue_delay", ErrorKind::MalformedDuration)]
    #[case::queue_delay_too_long(&[("capacity = \"1gbit\"", "capacity = \"1gbit\"\nqueue_delay = \"2s\"")], "host.queue_delay", ErrorKind::DurationOutOfRange { min: QUEUE_DELAY_RANGE.0, max: QUEUE_DELAY_RANGE.1 })]
    #[case::burst_too_short(&[("capacity = \"1gbit\"", "capacity = \"1gbit\"\nburst = \"10us\"")], "host.burst", ErrorKind::DurationOutOfRange { min: BURST_RANGE.0, max: BURST_RANGE.1 })]
    fn one_rule_one_error(
        #[case] edits: &[(&str, &str)],
        #[case] key: &str,
        #[case] kind: ErrorKind,
    ) {
        let errors = errors(&mutate(edits));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let error = &errors[0];
        assert_eq!(error.key, key, "{error}");
        // Kinds carrying serde's or a parser's wording are matched by variant only.
        let by_variant = matches!(
            kind,
            ErrorKind::UnknownKey { .. }
                | ErrorKind::WrongType { .. }
                | ErrorKind::MalformedRate { .. }
                | ErrorKind::MalformedIp { .. }
        );
        if by_variant {
            assert_eq!(discriminant(&error.kind), discriminant(&kind), "{error}");
        } else {
            assert_eq!(error.kind, kind, "{error}");
        }
        assert_eq!(error.file, Path::new(PATH));
    }

    #[rstest]
    #[case::prefix_31(&[("10.1.0.11/24", "10.1.0.0/31")])]
    #[case::prefix_32(&[("10.1.0.11/24", "10.1.0.11/32")])]
    #[case::mtu_min(&[("mtu = 1500", "mtu = 1280")])]
    #[case::mtu_max(&[("mtu = 1500", "mtu = 9000")])]
    #[case::queue_delay_and_burst(&[("capacity = \"1gbit\"", "capacity = \"1gbit\"\nqueue_delay = \"2.5ms\"\nburst = \"500us\"")])]
    #[case::name_15_bytes(&[("[servers.globex-web]", "[servers.globex-web-srv1]")])]
    #[case::name_dots_underscores(&[("[servers.globex-web]", "[servers.\"globex_web.1\"]")])]
    #[case::netns_64_bytes(&[("netns = \"acme-web\"", "netns = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"")])]
    #[case::guarantees_equal_capacity(&[("guaranteed = \"300mbit\"", "guaranteed = \"400mbit\"")])]
    #[case::ceiling_equals_guarantee(&[("ceiling = \"1gbit\"", "ceiling = \"600mbit\""), ("ceiling = \"500mbit\"", "ceiling = \"100mbit\"")])]
    #[case::byte_units(&[("capacity = \"1gbit\"", "capacity = \"125mbps\"")])]
    #[case::ipv6_global(&[("fd00::10/64", "2001:db8::10/64")])]
    fn edge_values_accepted(#[case] edits: &[(&str, &str)]) {
        topology(&mutate(edits));
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let errors = errors(&mutate(&[("weight = 2", "weight = = 2")]));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let error = &errors[0];
        assert!(matches!(error.kind, ErrorKind::Toml { .. }), "{error}");
        assert_eq!(error.location, Some(Location { line: 8, col: 10 }));
        assert!(
            error.to_string().starts_with("topology/base.toml:8:10: "),
            "{error}"
        );
    }

    #[test]
    fn no_tenants() {
        let text =
            "[host]\ncapacity = \"1gbit\"\n[servers.a]\ntenant = \"t\"\nip = \"10.0.0.1/24\"\n";
        let errors = errors(text);
        let keys: Vec<_> = errors.iter().map(|e| (e.key.as_str(), &e.kind)).collect();
        assert_eq!(
            keys,
            [
                ("tenants", &ErrorKind::NoTenants),
                ("servers.a.tenant", &ErrorKind::UnknownTenant)
            ]
        );
    }

    #[test]
    fn no_servers() {
        let text = "[host]\ncapacity = \"1gbit\"\n[tenants.t]\nguaranteed = \"1mbit\"\n";
        let errors = errors(text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(
            (errors[0].key.as_str(), &errors[0].kind),
            ("servers", &ErrorKind::NoServers)
        );
    }

    #[test]
    fn empty_file_reports_everything_missing() {
        let kinds: Vec<_> = errors("").into_iter().map(|e| (e.key, e.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("host".to_string(), ErrorKind::MissingKey),
                ("tenants".to_string(), ErrorKind::NoTenants),
                ("servers".to_string(), ErrorKind::NoServers),
            ]
        );
    }

    #[test]
    fn collects_every_error_at_once() {
        let text = mutate(&[
            ("mtu = 1500", "mtu = 1\ncolour = \"blue\""),
            ("weight = 2", "weight = 0"),
            ("02:00:00:00:01:0a", "01:00:00:00:00:01"),
            ("10.1.0.11/24", "10.1.0.11/33"),
            ("tenant = \"globex\"", "tenant = \"initech\""),
            ("guaranteed = \"300mbit\"", "guaranteed = \"500mbit\""),
        ]);
        let errors = errors(&text);
        let found: Vec<_> = errors
            .iter()
            .map(|e| (e.key.as_str(), discriminant(&e.kind)))
            .collect();
        let expected = [
            (
                "servers.acme-web.colour",
                ErrorKind::UnknownKey {
                    expected: String::new(),
                },
            ),
            ("servers.acme-web.mtu", ErrorKind::MtuOutOfRange),
            ("tenants.acme.weight", ErrorKind::InvalidWeight),
            ("servers.acme-web.mac", ErrorKind::MulticastMac),
            (
                "servers.acme-db.ip",
                ErrorKind::MalformedIp {
                    reason: String::new(),
                },
            ),
            ("servers.globex-web.tenant", ErrorKind::UnknownTenant),
            (
                "tenants",
                ErrorKind::GuaranteesExceedCapacity {
                    sum: mbit(1100),
                    capacity: mbit(1000),
                },
            ),
        ];
        for (key, kind) in &expected {
            assert!(
                found.contains(&(key, discriminant(kind))),
                "{key}: {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn display_names_file_key_value_and_reason() {
        let multicast = errors(&mutate(&[("02:00:00:00:01:0a", "01:00:5e:00:00:01")]));
        assert_eq!(
            multicast[0].to_string(),
            r#"topology/base.toml: servers.acme-web.mac = "01:00:5e:00:00:01": multicast MAC address cannot belong to a server"#
        );
        let missing = errors(&mutate(&[("ip = \"10.1.0.11/24\"", "")]));
        assert_eq!(
            missing[0].to_string(),
            "topology/base.toml: servers.acme-db.ip: required key is missing"
        );
    }

    #[test]
    fn defaults_applied() {
        let t = topology(BASE);
        assert_eq!(t.name, "base");
        assert_eq!(t.source, Path::new(PATH));
        assert_eq!(t.capacity, mbit(1000));

        let names: Vec<_> = t.tenants.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["acme", "globex"]);
        let globex = t.tenant_by_name("globex").unwrap();
        assert_eq!(globex.id, TenantId(1));
        assert_eq!(globex.guaranteed, mbit(300));
        assert_eq!(globex.ceiling, t.capacity);
        assert_eq!(globex.weight, DEFAULT_WEIGHT);
        assert_eq!(t.tenant(TenantId(0)).weight, 2);

        let names: Vec<_> = t.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["acme-db", "acme-web", "globex-web"]);
        let db = t.server(PortId(0));
        assert_eq!(db.id, PortId(0));
        assert_eq!(db.tenant, TenantId(0));
        assert_eq!(db.netns, "acme-db");
        assert_eq!(db.mtu, DEFAULT_MTU);
        assert_eq!((db.ipv6, db.guaranteed, db.ceiling), (None, None, None));
        assert_eq!(db.ip, "10.1.0.11/24".parse::<Ipv4Network>().unwrap());

        let web = t.server_by_name("acme-web").unwrap();
        assert_eq!(web.mac, "02:00:00:00:01:0a".parse::<MacAddr>().unwrap());
        assert_eq!(
            web.ipv6,
            Some("fd00::10/64".parse::<Ipv6Network>().unwrap())
        );
        assert_eq!(
            (web.guaranteed, web.ceiling),
            (Some(mbit(100)), Some(mbit(500)))
        );
        assert_eq!(t.servers_of(TenantId(1)).count(), 1);
    }

    #[test]
    fn overlapping_ips_across_tenants_accepted() {
        let t = topology(BASE);
        let acme = t.server_by_name("acme-web").unwrap();
        let globex = t.server_by_name("globex-web").unwrap();
        assert_eq!(acme.ip, globex.ip);
        assert_ne!(acme.tenant, globex.tenant);
    }

    #[test]
    fn derived_macs_are_deterministic_unique_local_unicast() {
        let a = topology(BASE);
        let b = topology(BASE);
        assert_eq!(a, b);
        let db = a.server_by_name("acme-db").unwrap().mac;
        let globex = a.server_by_name("globex-web").unwrap().mac;
        assert_eq!(db, derived_mac("acme-db", 0));
        assert_eq!(globex, derived_mac("globex-web", 0));
        let macs: BTreeSet<_> = a.servers.iter().map(|s| s.mac).collect();
        assert_eq!(macs.len(), a.servers.len());
        for mac in [db, globex] {
            assert!(
                mac.is_local() && !mac.is_multicast() && !mac.is_zero(),
                "{mac}"
            );
        }
        // Many similar names still get distinct addresses.
        let many: BTreeSet<_> = (0..10_000)
            .map(|i| derived_mac(&format!("srv{i}"), 0))
            .collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn derived_mac_avoids_given_and_derived_ones() {
        // Give acme-web the MAC acme-db would derive: acme-db must re-hash.
        let taken = derived_mac("acme-db", 0).to_string();
        let t = topology(&mutate(&[("02:00:00:00:01:0a", &taken)]));
        let db = t.server_by_name("acme-db").unwrap().mac;
        assert_eq!(db, derived_mac("acme-db", 1));
        assert_ne!(db.to_string(), taken);
        assert!(db.is_local() && !db.is_multicast());
    }

    #[test]
    fn validate_accepts_an_in_memory_file() {
        let file = FileTopology::from_toml(Path::new(""), BASE).unwrap();
        let t = validate(Path::new(""), &file).unwrap();
        assert_eq!(t.name, "");
        assert_eq!(t.servers.len(), 3);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse(Path::new(PATH), &text);
        }

        #[test]
        fn arbitrary_values_never_panic(
            field in proptest::sample::select(vec![
                "capacity = \"1gbit\"", "weight = 2", "02:00:00:00:01:0a", "10.1.0.11/24",
                "fd00::10/64", "mtu = 1500", "netns = \"acme-web\"", "ceiling = \"500mbit\"",
            ]),
            value in "\\PC{0,30}",
        ) {
            let _ = parse(Path::new(PATH), &BASE.replace(field, &value));
        }
    }

    #[test]
    fn durations_parse_and_reach_the_model() {
        assert_eq!(parse_duration("5ms"), Some(Duration::from_millis(5)));
        assert_eq!(parse_duration("500us"), Some(Duration::from_micros(500)));
        assert_eq!(parse_duration("0.01s"), Some(Duration::from_millis(10)));
        assert_eq!(parse_duration("2000ns"), Some(Duration::from_micros(2)));
        for bad in ["", "5", "ms", "5 ms", "-5ms", "5min"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let text = mutate(&[(
            "capacity = \"1gbit\"",
            "capacity = \"1gbit\"\nqueue_delay = \"2ms\"\nburst = \"3ms\"",
        )]);
        let topology = crate::topology::parse(Path::new(PATH), &text).unwrap();
        assert_eq!(topology.shaping.queue_delay, Duration::from_millis(2));
        assert_eq!(topology.shaping.burst, Duration::from_millis(3));
        let defaults = crate::topology::parse(Path::new(PATH), &mutate(&[])).unwrap();
        assert_eq!(defaults.shaping, ShapingParams::default());
    }
}
