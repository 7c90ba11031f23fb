//! Kernel plumbing: namespaces, TAPs and their links. All `unsafe` lives in [`sys`].
//!
//! Contract: [`bring_up`] either creates every server's namespace, TAP and address, or
//! nothing: a failure half-way rolls back what it had created. The returned [`Plumbing`] owns
//! the TAP fds; dropping it (or calling [`Plumbing::tear_down`]) closes the TAPs first, which
//! removes them, then deletes the namespaces netd created, and only those.
//!
//! Live changes use the same steps one server at a time: [`Plumbing::add_server`] creates a
//! server's namespace, TAP and link exactly as start-up does (all or nothing, rolled back on
//! failure), [`Plumbing::remove_server`] deletes one namespace once its TAP is closed, and
//! [`relink`] re-applies a changed server's identity (MAC, addresses, MTU) in place.
//!
//! Servers' namespaces and links are made in-process: namespaces as `ip netns` makes them
//! (`netns.rs`), links over route netlink with `netlink-packet-route`'s message types
//! (`rtnl.rs`, `link.rs`). A process per server used to be most of a large start-up. The
//! routed uplink's few per-tenant routers still use `ip -batch` and `nft` (`uplink.rs`).

use std::os::fd::OwnedFd;

pub mod adopt;
mod link;
pub mod netns;
pub mod rtnl;
pub mod sys;
pub mod tunnel;
pub mod uplink;

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};

use tracing::{debug, info, warn};

use crate::port::Offload;
use crate::topology::{PortId, Routers, Server, Topology};

/// Name of each server's interface inside its namespace.
pub const SERVER_IFNAME: &str = "eth0";

/// Why the kernel side of a topology could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netd must run as root (it creates network namespaces and TAP devices)")]
    NotRoot,
    #[error("Cannot open {path}: load the tun module or run where TAP devices are allowed", path = sys::TUN_PATH)]
    NoTunDevice(#[source] std::io::Error),
    #[error("Cannot run `ip` (install iproute2)")]
    NoIpTool(#[source] std::io::Error),
    #[error(
        "Network namespace(s) already exist, refusing to touch them: {}. If a netd that was killed left them, `netd down FILE` removes them",
        .0.join(", ")
    )]
    NamespacesExist(Vec<String>),
    #[error(
        "Cannot adopt what a stopped netd left running, refusing to start: {}. If the topology changed, `netd down FILE` on the old one removes its servers",
        .0.join("; ")
    )]
    CannotAdopt(Vec<String>),
    #[error("Cannot create network namespace {netns:?}: {detail}")]
    CreateNamespace { netns: String, detail: String },
    #[error("Cannot delete network namespace {netns:?}: {detail}")]
    DeleteNamespace { netns: String, detail: String },
    #[error("Cannot create the TAP of server {server:?} in namespace {netns:?}")]
    CreateTap {
        server: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Cannot configure {SERVER_IFNAME} of server {server:?} in namespace {netns:?}: {source}"
    )]
    ConfigureLink {
        server: String,
        netns: String,
        #[source]
        source: rtnl::RtnlError,
    },
    #[error("The uplink needs {what}, which does not exist")]
    UplinkMissing { what: String },
    #[error("Cannot set up the uplink: {detail}")]
    Uplink { detail: String },
    #[error(
        "Cannot open the VXLAN tunnel on {addr} in namespace {netns}: is the host's underlay address configured there?"
    )]
    Underlay {
        addr: std::net::SocketAddrV4,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot share the VXLAN tunnel's or the trunk's socket with a new port")]
    SharedSocket(#[source] std::io::Error),
    #[error("Injected failure after server {0:?} (NETD_FAIL_AFTER_SERVER, debug builds only)")]
    InjectedFailure(String),
}

/// One server's TAP, held open by netd.
#[derive(Debug)]
pub struct ServerTap {
    pub port: PortId,
    pub file: File,
}

/// One routed tenant's uplink TUN, held open by netd.
#[derive(Debug)]
pub struct UplinkTun {
    pub port: PortId,
    pub file: File,
    /// The tenant's gateway MAC, which routed packets come from.
    pub gateway_mac: crate::wire::MacAddr,
}

/// Everything netd created in the kernel for a topology; dropping it removes all of it.
#[derive(Debug, Default)]
pub struct Plumbing {
    taps: Vec<ServerTap>,
    uplinks: Vec<UplinkTun>,
    /// Servers' and routers' namespaces.
    namespaces: Vec<String>,
    /// What the uplink needs in the host's stack, if there is an uplink.
    edge: Option<uplink::Edge>,
    /// Namespaces the start under way adopted from a killed netd rather than created.
    adopted: Vec<String>,
    /// Whether routers are among them (they depend on the uplink's set-up).
    routers_adopted: bool,
    /// The VXLAN tunnel's socket, on a host of a cluster.
    tunnel: Option<std::net::UdpSocket>,
    /// The bridged uplink's trunk socket.
    trunk: Option<OwnedFd>,
}

impl Plumbing {
    /// Hand the TAP files to the data path (namespaces stay owned here for tear-down).
    pub fn take_taps(&mut self) -> Vec<ServerTap> {
        std::mem::take(&mut self.taps)
    }

    /// Return a handle on the tunnel's socket for a (new) tunnel port, on a host of a
    /// cluster.
    pub fn tunnel_socket(&self) -> Option<std::io::Result<std::net::UdpSocket>> {
        self.tunnel.as_ref().map(std::net::UdpSocket::try_clone)
    }

    /// Return a handle on the bridged uplink's trunk socket for a (new) trunk port.
    pub fn trunk_socket(&self) -> Option<std::io::Result<OwnedFd>> {
        self.trunk.as_ref().map(OwnedFd::try_clone)
    }

    /// Hand the uplink TUNs to the data path.
    pub fn take_uplinks(&mut self) -> Vec<UplinkTun> {
        std::mem::take(&mut self.uplinks)
    }

    /// Return the namespaces netd created, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Create one server's namespace, TAP and link (after checking its namespace is free);
    /// on failure remove what was created. The namespace then belongs to this plumbing.
    pub fn add_server(
        &mut self,
        server: &Server,
        router: Routers,
        offload: Offload,
    ) -> Result<ServerTap, KernelError> {
        if netns::exists(&server.netns) {
            return Err(KernelError::NamespacesExist(vec![server.netns.clone()]));
        }
        let file = plumb(server, router, offload)?;
        self.namespaces.push(server.netns.clone());
        Ok(ServerTap {
            port: server.id,
            file,
        })
    }

    /// Create a routed tenant's router (see [`uplink::Edge::add_router`]); it then belongs to
    /// this plumbing.
    pub fn add_router(
        &mut self,
        topology: &Topology,
        tenant: &crate::topology::Tenant,
        offload: Offload,
    ) -> Result<UplinkTun, KernelError> {
        self.router(topology, tenant, offload, false)
    }

    /// Adopt the router a killed netd left for `tenant`, or create it if there is none.
    fn add_or_adopt_router(
        &mut self,
        topology: &Topology,
        tenant: &crate::topology::Tenant,
        offload: Offload,
    ) -> Result<UplinkTun, KernelError> {
        let adopt = netns::exists(&uplink::router_netns(topology, tenant));
        self.router(topology, tenant, offload, adopt)
    }

    /// Create or `adopt` a routed tenant's router; it then belongs to this plumbing.
    fn router(
        &mut self,
        topology: &Topology,
        tenant: &crate::topology::Tenant,
        offload: Offload,
        adopt: bool,
    ) -> Result<UplinkTun, KernelError> {
        let (Some(edge), Some(routed), Some(gateway)) =
            (self.edge.as_mut(), &tenant.uplink, &tenant.gateway)
        else {
            return Err(KernelError::Uplink {
                detail: format!("tenant {:?} is not routed through an uplink", tenant.name),
            });
        };
        let file = if adopt {
            edge.adopt_router(topology, tenant, offload)?
        } else {
            edge.add_router(topology, tenant, offload)?
        };
        let router = uplink::router_netns(topology, tenant);
        if adopt {
            self.adopted.push(router.clone());
            self.routers_adopted = true;
        }
        self.namespaces.push(router);
        Ok(UplinkTun {
            port: routed.port,
            file,
            gateway_mac: gateway.mac,
        })
    }

    /// Let go of what a failed start adopted, leaving it running as it was: its namespaces
    /// are no longer this plumbing's to delete, and neither is the uplink's set-up in the
    /// host's stack when routers depend on it.
    fn release_adopted(&mut self) {
        if self.adopted.is_empty() {
            return;
        }
        let adopted = std::mem::take(&mut self.adopted);
        self.namespaces.retain(|n| !adopted.contains(n));
        if std::mem::take(&mut self.routers_adopted) {
            // Dropping an edge undoes nothing (only `tear_down` does): its set-up stays
            // for the adopted routers. Otherwise it goes with the rest.
            self.edge = None;
        }
    }

    /// Take over what a netd that handed over its fds (see [`crate::handover`]) made for
    /// `topology`: its namespaces and the uplink's set-up, as if this plumbing had made them.
    /// Creates nothing.
    pub fn handed_over(topology: &Topology) -> Plumbing {
        let mut namespaces: Vec<String> =
            topology.servers.iter().map(|s| s.netns.clone()).collect();
        let edge = topology.uplink.as_ref().map(|up| {
            let routed = topology.tenants.iter().filter(|t| t.is_routed());
            namespaces.extend(routed.map(|t| uplink::router_netns(topology, t)));
            uplink::Edge::resume(topology, up)
        });
        let mut plumbing = Plumbing::default();
        plumbing.namespaces = namespaces;
        plumbing.edge = edge;
        plumbing
    }

    /// Let go of everything without tearing it down: the servers and routers go on running
    /// for the netd this one handed them to.
    pub fn release(&mut self) {
        self.taps.clear();
        self.uplinks.clear();
        self.namespaces.clear();
        self.adopted.clear();
        self.routers_adopted = false;
        // Dropping an edge undoes nothing (only `tear_down` does): its set-up stays.
        self.edge = None;
    }

    /// Remove a routed tenant's router (close its TUN first).
    pub fn remove_router(
        &mut self,
        topology: &Topology,
        tenant: &crate::topology::Tenant,
    ) -> Result<(), KernelError> {
        if let Some(edge) = self.edge.as_mut() {
            edge.remove_router(topology, tenant);
        }
        let name = uplink::router_netns(topology, tenant);
        self.namespaces.retain(|n| *n != name);
        netns::delete(&name)
    }

    /// Delete the namespace of a removed server (close its TAP first).
    pub fn remove_server(&mut self, netns: &str) -> Result<(), KernelError> {
        self.namespaces.retain(|n| n != netns);
        netns::delete(netns)
    }

    /// Close the TAPs, then delete the namespaces netd created (one `ip` process for all:
    /// the kernel destroys them and their persistent TAPs in one batch) and undo the
    /// uplink's set-up in the host's stack; log what could not be removed.
    pub fn tear_down(&mut self) {
        // TAP fds pin their namespace; close them first so deleting the name frees it.
        self.taps.clear();
        self.uplinks.clear();
        let names: Vec<String> = self.namespaces.drain(..).rev().collect();
        match netns::delete_all(&names) {
            Ok(()) => debug!(namespaces = names.len(), "deleted namespaces"),
            Err(err) => warn!(cause = %err, "namespace(s) left behind"),
        }
        if let Some(mut edge) = self.edge.take() {
            edge.tear_down();
        }
    }
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        self.tear_down();
    }
}

/// Check that netd runs as root with `/dev/net/tun` and iproute2 at hand.
pub fn check_privileges() -> Result<(), KernelError> {
    if !sys::is_root() {
        return Err(KernelError::NotRoot);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(sys::TUN_PATH)
        .map_err(KernelError::NoTunDevice)?;
    Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .map_err(KernelError::NoIpTool)?;
    Ok(())
}

/// Check, before creating anything, that netd can build this topology on this host.
pub fn preflight(topology: &Topology) -> Result<(), KernelError> {
    check_privileges()?;
    if let Some(up) = &topology.uplink {
        uplink::check(up)?;
    }
    Ok(())
}

/// Remove what a netd that died (SIGKILL, a crash) left of `topology`: the namespaces of its
/// servers that still exist. Return the ones removed; stop at the first that cannot go.
pub fn remove_leftovers(topology: &Topology) -> Result<Vec<String>, KernelError> {
    let mut removed = Vec::new();
    for server in &topology.servers {
        if netns::exists(&server.netns) {
            netns::delete(&server.netns)?;
            removed.push(server.netns.clone());
        }
    }
    removed.extend(uplink::remove_leftovers(topology)?);
    Ok(removed)
}

/// Create every server's namespace and TAP and configure its link, and the uplink's
/// routers; all or nothing.
///
/// Servers and routers whose namespaces a killed netd left are adopted, not created (see
/// [`adopt`]): they keep running, and if the start fails they are left as they were.
///
/// With [`Offload::VnetHeader`], TAPs carry a virtio-net header and offer offloads (see
/// [`sys::open_tap`]).
pub fn bring_up(topology: &Topology, offload: Offload) -> Result<Plumbing, KernelError> {
    preflight(topology)?;
    let adopted = adopt::servers(topology, offload)?;
    let mut plumbing = Plumbing::default();
    if let Err(err) = build(topology, offload, adopted, &mut plumbing) {
        // Dropping `plumbing` removes what this start created; what it adopted goes on.
        plumbing.release_adopted();
        return Err(err);
    }
    info!(
        servers = topology.servers.len(),
        routers = plumbing.uplinks.len(),
        adopted = plumbing.adopted.len(),
        "namespaces, TAPs and routers ready"
    );
    // From here on they are netd's like the rest: a stop removes them.
    plumbing.adopted.clear();
    plumbing.routers_adopted = false;
    Ok(plumbing)
}

/// Plumb or adopt every server, then the uplink and its routers.
fn build(
    topology: &Topology,
    offload: Offload,
    mut adopted: std::collections::HashMap<PortId, File>,
    plumbing: &mut Plumbing,
) -> Result<(), KernelError> {
    // First: a host without its underlay address fails before anything is created.
    if let Some(cluster) = &topology.cluster {
        plumbing.tunnel = Some(tunnel::bind(&cluster.host)?);
    }
    for server in &topology.servers {
        let file = match adopted.remove(&server.id) {
            Some(file) => {
                plumbing.adopted.push(server.netns.clone());
                file
            }
            None => plumb(server, topology.router_of(server), offload)?,
        };
        plumbing.namespaces.push(server.netns.clone());
        plumbing.taps.push(ServerTap {
            port: server.id,
            file,
        });
        // Fault injection for the rollback test: debug builds only, never in a release binary.
        if cfg!(debug_assertions)
            && std::env::var("NETD_FAIL_AFTER_SERVER").is_ok_and(|name| name == server.name)
        {
            return Err(KernelError::InjectedFailure(server.name.clone()));
        }
    }
    let Some(up) = &topology.uplink else {
        return Ok(());
    };
    if up.mode == crate::topology::UplinkMode::Bridged {
        plumbing.trunk = Some(uplink::open_trunk(up)?);
        return Ok(());
    }
    plumbing.edge = Some(uplink::Edge::set_up(topology, up)?);
    for tenant in topology.tenants.iter().filter(|t| t.is_routed()) {
        let tun = plumbing.add_or_adopt_router(topology, tenant, offload)?;
        plumbing.uplinks.push(tun);
    }
    Ok(())
}

/// Create one server's namespace, TAP and link; on failure delete the namespace again.
fn plumb(server: &Server, router: Routers, offload: Offload) -> Result<File, KernelError> {
    netns::create(&server.netns)?;
    // One thread in the namespace opens the TAP and configures its link.
    let result = netns::run_in(&server.netns, || {
        let tap = open_server_tap(offload)?;
        Ok((tap, link::configure(server, router)))
    });
    let result = match result {
        Ok((tap, Ok(()))) => Ok(tap),
        Ok((_, Err(source))) => Err(configure_failed(server, source)),
        Err(source) => Err(KernelError::CreateTap {
            server: server.name.clone(),
            netns: server.netns.clone(),
            source,
        }),
    };
    match result {
        Ok(file) => {
            debug!(server = %server.name, netns = %server.netns, mac = %server.mac, ip = %server.ip, "server plumbed");
            Ok(file)
        }
        Err(err) => {
            // The TAP (if any) closed with `result`; the namespace goes too.
            if let Err(cleanup) = netns::delete(&server.netns) {
                warn!(netns = %server.netns, cause = %cleanup, "namespace left behind");
            }
            Err(err)
        }
    }
}

/// Re-apply a server's identity (MAC, MTU, addresses) to its existing `eth0`, in place.
pub fn relink(server: &Server, router: Routers) -> Result<(), KernelError> {
    let entered = netns::run_in(&server.netns, || Ok(link::reconfigure(server, router)));
    let result = entered.unwrap_or_else(|source| {
        Err(rtnl::RtnlError {
            what: format!("enter namespace {}", server.netns),
            source,
        })
    });
    result.map_err(|source| configure_failed(server, source))
}

fn configure_failed(server: &Server, source: rtnl::RtnlError) -> KernelError {
    KernelError::ConfigureLink {
        server: server.name.clone(),
        netns: server.netns.clone(),
        source,
    }
}

/// Create the server's TAP in the calling thread's namespace and switch off IPv6 duplicate
/// address detection on it: the topology already guarantees unique addresses within a
/// tenant, and DAD would leave the link-local address unusable for the first second or two.
fn open_server_tap(offload: Offload) -> std::io::Result<File> {
    let vnet_hdr_len = offload.vnet_header_len();
    let tap = sys::open_tap(SERVER_IFNAME, vnet_hdr_len)?;
    // Persistent: the TAP goes with the namespace (in one batch at teardown), not with the
    // fd, so closing a thousand of them does not cost a thousand RCU waits.
    sys::set_persist(&tap, true)?;
    let tap = File::from(tap);
    // /proc/sys/net is resolved against the opening thread's namespace: this one.
    let dad = format!("/proc/sys/net/ipv6/conf/{SERVER_IFNAME}/accept_dad");
    if let Err(err) = std::fs::write(&dad, "0") {
        // Kernels without IPv6 have no such file; IPv4 works regardless.
        debug!(path = %dad, cause = %err, "cannot disable DAD");
    }
    Ok(tap)
}

/// Run `ip ARGS` (with `stdin` fed to it when given); on failure return its stderr.
fn ip_command(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    run_tool("ip", args, stdin).map(drop)
}

/// Run `program ARGS` (with `stdin` fed to it when given) in the calling thread's
/// namespace; return its stdout, or on failure its stderr (or why it could not run).
fn run_tool(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("cannot feed {program}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{program} failed: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}
