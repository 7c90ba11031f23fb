//! The topology: a validated, typed model of a topology file.
//!
//! Contract: nothing downstream of [`load`]/[`validate()`] ever sees the raw file form
//! ([`file::FileTopology`]); a [`Topology`] value always satisfies every rule the validator
//! checks (unique MACs, unique IPs within a tenant, guarantees within capacity, valid names...).
//! Tenants and servers are kept in name order; [`TenantId`] and [`PortId`] index into them.

pub mod file;
pub mod rate;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Serialize;

pub use rate::Rate;
pub use validate::{ValidationError, validate};

use crate::wire::MacAddr;

/// Index of a tenant in [`Topology::tenants`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
pub struct TenantId(pub u32);

/// Index of a server (and of its switch port) in [`Topology::servers`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
pub struct PortId(pub u32);

impl TenantId {
    /// Return the index into [`Topology::tenants`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl PortId {
    /// Return the index into [`Topology::servers`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// Default MTU of a server's interface.
pub const DEFAULT_MTU: u16 = 1500;
/// Default weight of a tenant when sharing loaned bandwidth.
pub const DEFAULT_WEIGHT: u32 = 1;

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
    /// Tenants, sorted by name; `TenantId(i)` is `tenants[i]`.
    pub tenants: Vec<Tenant>,
    /// Servers, sorted by name; `PortId(i)` is `servers[i]`.
    pub servers: Vec<Server>,
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
            queue_delay: std::time::Duration::from_millis(5),
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
}

impl Topology {
    /// Return the tenant with this id.
    pub fn tenant(&self, id: TenantId) -> &Tenant {
        &self.tenants[id.index()]
    }

    /// Return the server behind this port.
    pub fn server(&self, id: PortId) -> &Server {
        &self.servers[id.index()]
    }

    /// Return the tenant with this name, if any.
    pub fn tenant_by_name(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// Return the server with this name, if any.
    pub fn server_by_name(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Return the servers of one tenant.
    pub fn servers_of(&self, tenant: TenantId) -> impl Iterator<Item = &Server> {
        self.servers.iter().filter(move |s| s.tenant == tenant)
    }
}

/// Why a topology file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("Cannot read topology file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

/// Read, parse and validate a topology file.
pub fn load(path: &Path) -> Result<Topology, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text).map_err(LoadError::Invalid)
}

/// Parse and validate topology text; `path` names the source in errors and gives the name.
pub fn parse(path: &Path, text: &str) -> Result<Topology, Vec<ValidationError>> {
    let file = file::FileTopology::from_toml(path, text).map_err(|e| vec![e])?;
    validate(path, &file)
}
