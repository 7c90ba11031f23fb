//! The routed uplink in the kernel: one router namespace per routed tenant between the
//! tenant's uplink port and the host's own stack.
//!
//! ```text
//!  switch ── uplink port (TUN "gw0") ─┐                     ┌─ [uplink] interface ── provider
//!                                     │ router namespace    │ host's stack ([uplink] netns)
//!                                     └─ "uplink0" ══ veth ═╧═ "ndXXXXXXXX"
//! ```
//!
//! Why a namespace per tenant rather than a VRF: tenants' private subnets may overlap, and
//! a namespace keeps each tenant's routes *and connection tracking* apart by construction
//! (with VRFs in one namespace, two tenants' identical flows would share conntrack entries
//! unless every rule also set zones), and namespaces are what netd already creates and
//! removes for servers. The cost is one more hop through a veth, which keeps GSO.
//!
//! - Router namespace `TOPOLOGY.TENANT.router`: `gw0` (the TUN netd holds, no address: no ARP,
//!   netd's gateway stays the only one answering for the gateway address), route to the
//!   tenant's subnet via `gw0`, default route via the host's end of the veth, IPv4 forwarding.
//!   A `nat = true` tenant masquerades to its veth address there, and nothing from outside
//!   may open a connection inwards.
//! - Host's stack: the veth's end with a `/30` from 169.254.0.0/16 (by tenant id), forwarding
//!   on it and on the uplink interface (the latter's old value restored at exit), a route to
//!   each public tenant's subnet via its router, and one nftables table (`netd_XXXXXXXX`, by
//!   topology name) that drops what tenants send to the host itself and masquerades what
//!   NAT tenants send out of the uplink interface to the uplink's address. Nothing else of
//!   the host is touched.
//!
//! Deleting a router namespace removes its veth and with it the host's routes through it;
//! [`Edge::tear_down`] removes the table and restores forwarding.

use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv4Addr;

use tracing::{debug, warn};

use super::{KernelError, ip_command, netns, run_tool, sys};
use crate::port::Offload;
use crate::topology::{Tenant, Topology, Uplink};

/// The TUN inside a router namespace (netd's uplink port for the tenant).
pub const ROUTER_TUN: &str = "gw0";
/// The router namespace's end of its veth towards the host's stack.
pub const ROUTER_UPLINK: &str = "uplink0";
/// Tenant ids above this have no transfer `/30` left in 169.254.0.0/16.
const MAX_TENANT_ID: u32 = (1 << 14) - 1;

/// Return the router namespace of a routed tenant.
pub fn router_netns(topology: &Topology, tenant: &Tenant) -> String {
    format!("{}.{}.router", topology.name, tenant.name)
}

/// Return the host's end of a tenant's veth: `nd` and a hash of topology and tenant names
/// (10 bytes, within IFNAMSIZ, stable across restarts so leftovers can be found).
fn host_veth(topology: &Topology, tenant: &Tenant) -> String {
    format!(
        "nd{:08x}",
        fnv1a(&format!("{}/{}", topology.name, tenant.name))
    )
}

/// Return the nftables table netd keeps in the host's stack for a topology.
fn nft_table(topology: &Topology) -> String {
    format!("netd_{:08x}", fnv1a(&topology.name))
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Return the (host, router) addresses of a tenant's veth: the `/30` number `id` of
/// 169.254.0.0/16.
fn transfer_addresses(tenant: &Tenant) -> Result<(Ipv4Addr, Ipv4Addr), KernelError> {
    if tenant.id.0 > MAX_TENANT_ID {
        return Err(KernelError::Uplink {
            detail: format!(
                "tenant {:?} has id {}: no transfer address left (at most {MAX_TENANT_ID})",
                tenant.name, tenant.id.0
            ),
        });
    }
    let base = u32::from(Ipv4Addr::new(169, 254, 0, 0)) + tenant.id.0 * 4;
    Ok((Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)))
}

/// Check that the uplink's namespace and interface exist (and that nftables is at hand).
pub fn check(uplink: &Uplink) -> Result<(), KernelError> {
    if let Some(ns) = &uplink.netns
        && !netns::exists(ns)
    {
        return Err(KernelError::UplinkMissing {
            what: format!("namespace {ns:?} ([uplink] netns)"),
        });
    }
    let mut args = netns_args(uplink.netns.as_deref());
    args.extend(["link", "show", "dev", &uplink.interface]);
    if let Err(detail) = ip_command(&args, None) {
        let what = match &uplink.netns {
            Some(ns) => format!("interface {:?} in namespace {ns:?}", uplink.interface),
            None => format!("interface {:?}", uplink.interface),
        };
        return Err(if detail.contains("does not exist") {
            KernelError::UplinkMissing {
                what: format!("{what} ([uplink] interface)"),
            }
        } else {
            KernelError::Uplink {
                detail: format!("cannot look up {what}: {detail}"),
            }
        });
    }
    run_tool("nft", &["--version"], None)
        .map(drop)
        .map_err(|detail| KernelError::Uplink {
            detail: format!("{detail} (install nftables)"),
        })
}

/// Open the bridged uplink's trunk on `[uplink] interface` (in `[uplink] netns`): an
/// `AF_PACKET` socket with virtio-net headers (see [`crate::port::TrunkPort`]).
pub fn open_trunk(uplink: &crate::topology::Uplink) -> Result<std::os::fd::OwnedFd, KernelError> {
    let interface = uplink.interface.clone();
    let open = move || {
        let index = nix::net::if_::if_nametoindex(interface.as_str())?;
        super::sys::open_trunk(index, crate::wire::vnet::VNET_HDR_LEN)
    };
    let opened = match &uplink.netns {
        Some(ns) => netns::run_in(ns, open),
        None => open(),
    };
    opened.map_err(|e| KernelError::Uplink {
        detail: format!("cannot attach the trunk on {:?}: {e}", uplink.interface),
    })
}

/// `ip` arguments that run a command in `netns` (none: netd's own namespace).
fn netns_args(netns: Option<&str>) -> Vec<&str> {
    netns.map_or_else(Vec::new, |ns| vec!["-n", ns])
}

/// Run `f` in `netns` (none: here, on the calling thread).
fn in_netns<R: Send>(
    netns: Option<&str>,
    f: impl FnOnce() -> std::io::Result<R> + Send,
) -> std::io::Result<R> {
    match netns {
        Some(ns) => netns::run_in(ns, f),
        None => f(),
    }
}

/// Write an IPv4 sysctl under `/proc/sys/net/ipv4/` in `netns`; return its old value.
fn sysctl(netns: Option<&str>, key: &str, value: &str) -> Result<String, KernelError> {
    let path = format!("/proc/sys/net/ipv4/{key}");
    in_netns(netns, || {
        let old = std::fs::read_to_string(&path)?;
        std::fs::write(&path, value)?;
        Ok(old.trim().to_string())
    })
    .map_err(|err| KernelError::Uplink {
        detail: format!("cannot set {path} to {value}: {err}"),
    })
}

/// Run `nft -f -` with `script` in `netns`.
fn nft(netns: Option<&str>, script: &str) -> Result<(), KernelError> {
    in_netns(netns, || {
        run_tool("nft", &["-f", "-"], Some(script))
            .map(drop)
            .map_err(std::io::Error::other)
    })
    .map_err(|err| KernelError::Uplink {
        detail: format!("nft failed: {err}"),
    })
}

/// What netd set up in the host's stack for the uplink; [`Edge::tear_down`] undoes it.
#[derive(Debug)]
pub struct Edge {
    netns: Option<String>,
    interface: String,
    table: String,
    /// The uplink interface's `forwarding` before netd set it.
    forwarding_before: String,
    /// The host's veth ends of the routed tenants, and whether each is NAT (masqueraded out
    /// of the uplink).
    veths: Vec<(String, bool)>,
}

impl Edge {
    /// Enable forwarding on the uplink interface, remembering its old value in the table
    /// (a killed netd's table, if one is left, knows the value from before that netd).
    pub fn set_up(topology: &Topology, uplink: &Uplink) -> Result<Edge, KernelError> {
        let netns = uplink.netns.as_deref();
        let table = nft_table(topology);
        let left_behind = stored_forwarding(netns, &table);
        let key = format!("conf/{}/forwarding", uplink.interface);
        let current = sysctl(netns, &key, "1")?;
        let edge = Edge {
            netns: uplink.netns.clone(),
            interface: uplink.interface.clone(),
            table,
            forwarding_before: left_behind.unwrap_or(current),
            // The routers a killed netd left keep their rules while the start adopts them,
            // and after it if it fails.
            veths: existing_router_veths(topology),
        };
        if let Err(err) = edge.write_table() {
            let _ = sysctl(netns, &key, &edge.forwarding_before);
            return Err(err);
        }
        Ok(edge)
    }

    /// Take over the router a killed netd left for `tenant`: attach to its persistent TUN and
    /// put its veth back into the table. Touches nothing inside the router, so connections
    /// through it (NAT state included) go on.
    pub fn adopt_router(
        &mut self,
        topology: &Topology,
        tenant: &Tenant,
        offload: Offload,
    ) -> Result<File, KernelError> {
        let router = router_netns(topology, tenant);
        let refuse = |why: String| {
            KernelError::CannotAdopt(vec![format!(
                "router of tenant {:?} (namespace {router:?}): {why}",
                tenant.name
            )])
        };
        let vnet = offload.vnet_header_len();
        let tun = netns::run_in(&router, || {
            // Look first: TUNSETIFF on a missing name would create a new TUN.
            sys::interface_identity(ROUTER_TUN)?;
            let tun = sys::open_tun(ROUTER_TUN, vnet)?;
            Ok((sys::is_persistent(&tun)?, tun))
        });
        let tun = match tun {
            Ok((true, tun)) => tun,
            Ok((false, _)) => return Err(refuse(format!("its {ROUTER_TUN} is not persistent"))),
            Err(err) => return Err(refuse(format!("cannot attach to its {ROUTER_TUN}: {err}"))),
        };
        let veth = host_veth(topology, tenant);
        if let Err(err) = in_netns(self.netns.as_deref(), || sys::interface_identity(&veth)) {
            return Err(refuse(format!("the host's end of its veth, {veth}: {err}")));
        }
        if !self.veths.iter().any(|(v, _)| *v == veth) {
            self.veths.push((veth, tenant.nat));
            self.write_table()?;
        }
        debug!(tenant = %tenant.name, netns = %router, "router adopted");
        Ok(File::from(tun))
    }

    /// The edge a netd that handed over its fds left running for `topology`: nothing is
    /// changed; the uplink's old forwarding comes from the table's comment.
    pub fn resume(topology: &Topology, uplink: &Uplink) -> Edge {
        let netns = uplink.netns.as_deref();
        let table = nft_table(topology);
        let forwarding_before = stored_forwarding(netns, &table).unwrap_or_else(|| {
            warn!(%table, "the uplink's old forwarding is not recorded; a stop will set 0");
            "0".to_string()
        });
        Edge {
            netns: uplink.netns.clone(),
            interface: uplink.interface.clone(),
            table,
            forwarding_before,
            veths: existing_router_veths(topology),
        }
    }

    /// Create a routed tenant's router namespace, TUN, veth, routes and NAT; return the TUN
    /// (with `offload`'s header or not). All or nothing: on failure the namespace goes again.
    pub fn add_router(
        &mut self,
        topology: &Topology,
        tenant: &Tenant,
        offload: Offload,
    ) -> Result<File, KernelError> {
        let router = router_netns(topology, tenant);
        netns::create(&router)?;
        let plumbed = self.plumb_router(topology, tenant, &router, offload);
        if plumbed.is_err() {
            // Whatever was made of it goes as a removed tenant's router does.
            self.remove_router(topology, tenant);
            if let Err(cleanup) = netns::delete(&router) {
                warn!(netns = %router, cause = %cleanup, "namespace left behind");
            }
        }
        plumbed
    }

    fn plumb_router(
        &mut self,
        topology: &Topology,
        tenant: &Tenant,
        router: &str,
        offload: Offload,
    ) -> Result<File, KernelError> {
        let gateway = tenant.gateway.as_ref().ok_or_else(|| KernelError::Uplink {
            detail: format!("tenant {:?} has no gateway to route", tenant.name),
        })?;
        let vnet = offload.vnet_header_len();
        // Persistent, like servers' TAPs: a killed netd leaves the router running and the next
        // one attaches to it again (see `adopt_router`).
        let tun = netns::run_in(router, || {
            let tun = sys::open_tun(ROUTER_TUN, vnet)?;
            sys::set_persist(&tun, true)?;
            Ok(tun)
        })
        .map(File::from)
        .map_err(|err| KernelError::Uplink {
            detail: format!("cannot create the TUN in {router:?}: {err}"),
        })?;
        let (host_ip, router_ip) = transfer_addresses(tenant)?;
        let veth = host_veth(topology, tenant);
        let subnet = gateway.subnet();
        let mut host = format!(
            "link add {veth} type veth peer name {ROUTER_UPLINK} netns {router}\n\
             address add {host_ip}/30 dev {veth}\n\
             link set {veth} up\n"
        );
        if !tenant.nat {
            let _ = writeln!(host, "route add {subnet} via {router_ip} dev {veth}");
        }
        let mtu = topology
            .servers_of(tenant.id)
            .map(|s| s.mtu)
            .max()
            .unwrap_or(crate::topology::DEFAULT_MTU);
        let inside = format!(
            "link set lo up\n\
             link set {ROUTER_TUN} mtu {mtu} up\n\
             address add {router_ip}/30 dev {ROUTER_UPLINK}\n\
             link set {ROUTER_UPLINK} up\n\
             route add {subnet} dev {ROUTER_TUN}\n\
             route add default via {host_ip}\n"
        );
        let ip = |netns: Option<&str>, batch: &str| {
            let mut args = netns_args(netns);
            args.extend(["-batch", "-"]);
            ip_command(&args, Some(batch)).map_err(|detail| KernelError::Uplink {
                detail: format!("routing of tenant {:?}: {detail}", tenant.name),
            })
        };
        ip(self.netns.as_deref(), &host)?;
        ip(Some(router), &inside)?;
        sysctl(Some(router), "ip_forward", "1")?;
        sysctl(
            self.netns.as_deref(),
            &format!("conf/{veth}/forwarding"),
            "1",
        )?;
        if tenant.nat {
            nft(Some(router), &router_nat_rules())?;
        }
        self.veths.push((veth, tenant.nat));
        self.write_table()?;
        debug!(tenant = %tenant.name, netns = %router, %subnet, nat = tenant.nat, "router plumbed");
        Ok(tun)
    }

    /// Remove a removed tenant's veth (with it the host's routes through it) and its rules
    /// (its namespace is deleted by the caller).
    pub fn remove_router(&mut self, topology: &Topology, tenant: &Tenant) {
        let veth = host_veth(topology, tenant);
        delete_link(self.netns.as_deref(), &veth);
        self.veths.retain(|(v, _)| *v != veth);
        if let Err(err) = self.write_table() {
            warn!(cause = %err, "cannot update the uplink's nftables table");
        }
    }

    /// Replace the host's nftables table: nothing from a tenant's veth reaches the host's
    /// own stack (tenants reach the outside through it, never the host itself), and NAT
    /// tenants are masqueraded out of the uplink.
    fn write_table(&self) -> Result<(), KernelError> {
        let table = &self.table;
        // Declaring then deleting makes the replacement atomic whether it existed or not.
        // The comment keeps what `tear_down` restores for a netd that restarts after a kill.
        let mut script = format!(
            "table ip {table}\ndelete table ip {table}\n\
             table ip {table} {{\n  comment \"{FORWARDING_BEFORE}{}\"\n}}\n",
            self.forwarding_before
        );
        let quoted = |nat_only: bool| -> Vec<String> {
            self.veths
                .iter()
                .filter(|(_, nat)| *nat || !nat_only)
                .map(|(v, _)| format!("\"{v}\""))
                .collect()
        };
        let (all, nat) = (quoted(false), quoted(true));
        if all.is_empty() {
            return nft(self.netns.as_deref(), &script);
        }
        let _ = write!(
            script,
            "table ip {table} {{\n\
               chain input {{\n\
                 type filter hook input priority filter; policy accept;\n\
                 iifname {{ {} }} drop\n\
               }}\n",
            all.join(", ")
        );
        if !nat.is_empty() {
            let _ = write!(
                script,
                "  chain postrouting {{\n\
                     type nat hook postrouting priority srcnat; policy accept;\n\
                     iifname {{ {} }} oifname \"{}\" masquerade\n\
                   }}\n",
                nat.join(", "),
                self.interface
            );
        }
        script.push_str("}\n");
        nft(self.netns.as_deref(), &script)
    }

    /// Remove the veths, the table, and restore the uplink interface's forwarding.
    pub fn tear_down(&mut self) {
        // A deleted namespace frees its veth only when the kernel gets round to destroying
        // it; deleting the host's end removes both ends (and the routes) now.
        for (veth, _) in std::mem::take(&mut self.veths) {
            delete_link(self.netns.as_deref(), &veth);
        }
        let table = &self.table;
        if let Err(err) = nft(
            self.netns.as_deref(),
            &format!("table ip {table}\ndelete table ip {table}\n"),
        ) {
            warn!(cause = %err, "nftables table left behind");
        }
        let key = format!("conf/{}/forwarding", self.interface);
        if let Err(err) = sysctl(self.netns.as_deref(), &key, &self.forwarding_before) {
            warn!(cause = %err, "cannot restore forwarding on the uplink");
        }
    }
}

/// Marks the uplink interface's old `forwarding` value in the table's comment.
const FORWARDING_BEFORE: &str = "forwarding-before=";

/// Return the uplink interface's `forwarding` from before netd, as a killed netd's table in
/// `netns` remembers it (none when there is no such table).
fn stored_forwarding(netns: Option<&str>, table: &str) -> Option<String> {
    let listing = in_netns(netns, || {
        run_tool("nft", &["list", "table", "ip", table], None).map_err(std::io::Error::other)
    })
    .ok()?;
    let value = listing.split(FORWARDING_BEFORE).nth(1)?.split('"').next()?;
    // Only what `sysctl` can have read back: a small number.
    (!value.is_empty() && value.len() <= 3 && value.bytes().all(|b| b.is_ascii_digit()))
        .then(|| value.to_string())
}

/// The host's veth ends of the routed tenants whose router namespace exists (left by a
/// killed netd, or handed over), and whether each is NAT.
fn existing_router_veths(topology: &Topology) -> Vec<(String, bool)> {
    topology
        .tenants
        .iter()
        .filter(|t| t.is_routed() && netns::exists(&router_netns(topology, t)))
        .map(|t| (host_veth(topology, t), t.nat))
        .collect()
}

/// Delete interface `name` in `netns` if it exists (a veth: both ends go).
fn delete_link(netns: Option<&str>, name: &str) {
    let mut args = netns_args(netns);
    args.extend(["link", "del", "dev", name]);
    if let Err(detail) = ip_command(&args, None)
        && !detail.contains("Cannot find device")
    {
        warn!(link = name, %detail, "cannot delete a veth of the uplink");
    }
}

/// A NAT tenant's router: masquerade what leaves towards the host, and let in only what
/// answers a connection from inside.
fn router_nat_rules() -> String {
    format!(
        "table ip netd {{\n\
           chain postrouting {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             oifname \"{ROUTER_UPLINK}\" masquerade\n\
           }}\n\
           chain forward {{\n\
             type filter hook forward priority filter; policy accept;\n\
             ct state established,related accept\n\
             iifname \"{ROUTER_UPLINK}\" drop\n\
           }}\n\
         }}\n"
    )
}

/// Remove what a killed netd left of a topology's uplink: its router namespaces and its
/// nftables table, and restore the uplink interface's forwarding. Return the namespaces
/// removed.
pub fn remove_leftovers(topology: &Topology) -> Result<Vec<String>, KernelError> {
    let mut removed = Vec::new();
    let Some(uplink) = &topology.uplink else {
        return Ok(removed);
    };
    let host_exists = uplink.netns.as_deref().is_none_or(netns::exists);
    for tenant in topology.tenants.iter().filter(|t| t.is_routed()) {
        let router = router_netns(topology, tenant);
        if netns::exists(&router) {
            netns::delete(&router)?;
            removed.push(router);
        }
        if host_exists {
            delete_link(uplink.netns.as_deref(), &host_veth(topology, tenant));
        }
    }
    if host_exists {
        let table = nft_table(topology);
        if let Some(before) = stored_forwarding(uplink.netns.as_deref(), &table) {
            let key = format!("conf/{}/forwarding", uplink.interface);
            sysctl(uplink.netns.as_deref(), &key, &before)?;
        }
        // Absent already is fine: declaring it first makes the delete succeed.
        let _ = nft(
            uplink.netns.as_deref(),
            &format!("table ip {table}\ndelete table ip {table}\n"),
        );
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn names_fit_the_kernel_and_addresses_pair_up_per_tenant() {
        let text = "[host]\ncapacity = \"1gbit\"\n[uplink]\ninterface = \"eth1\"\ncapacity = \"1gbit\"\n\
                    [tenants.acme]\nguaranteed = \"1mbit\"\ngateway = \"10.1.0.1/24\"\n\
                    [servers.a1]\ntenant = \"acme\"\nip = \"10.1.0.10/24\"\n";
        let topology = crate::topology::parse(Path::new("demo.toml"), text).unwrap();
        let acme = &topology.tenants[0];
        assert_eq!(router_netns(&topology, acme), "demo.acme.router");
        let veth = host_veth(&topology, acme);
        assert!(
            veth.len() <= sys::IFNAMSIZ_MAX && veth.starts_with("nd"),
            "{veth}"
        );
        assert_eq!(
            transfer_addresses(acme).unwrap(),
            (Ipv4Addr::new(169, 254, 0, 1), Ipv4Addr::new(169, 254, 0, 2))
        );
        let mut far = acme.clone();
        far.id.0 = 300;
        assert_eq!(
            transfer_addresses(&far).unwrap().1,
            Ipv4Addr::new(169, 254, 4, 178)
        );
        far.id.0 = MAX_TENANT_ID + 1;
        assert!(transfer_addresses(&far).is_err());
        assert!(nft_table(&topology).starts_with("netd_"));
    }
}
