//! Configure a server's `eth0` inside its namespace: MAC, MTU, addresses, default route,
//! link state. A DHCP server's `eth0` is only brought up: its client configures the rest.

use std::fmt::Write;

use super::{KernelError, SERVER_IFNAME, ip_command};
use crate::topology::{Routers, Server};

/// Render the iproute2 batch that gives `eth0` the server's identity (and default routes
/// via `router`, its tenant's gateway) and brings it and `lo` up.
fn batch(server: &Server, router: Routers) -> String {
    let mut cmds = String::new();
    // The MAC must be set while the link is down; `eui64` makes the kernel derive the
    // link-local address from the MAC, which is the one the switch's guard allows.
    let _ = writeln!(
        cmds,
        "link set dev {SERVER_IFNAME} address {} mtu {} addrgenmode eui64",
        server.mac, server.mtu
    );
    if !server.dhcp {
        let _ = writeln!(cmds, "address add {} dev {SERVER_IFNAME}", server.ip);
    }
    if let Some(ipv6) = server.ipv6 {
        // nodad: the switch already guarantees the address is unique in the tenant.
        let _ = writeln!(cmds, "address add {ipv6} dev {SERVER_IFNAME} nodad");
    }
    let _ = writeln!(cmds, "link set dev {SERVER_IFNAME} up");
    let _ = writeln!(cmds, "link set dev lo up");
    if let Some(router) = router.ipv4.filter(|_| !server.dhcp) {
        let _ = writeln!(cmds, "route add default via {router} dev {SERVER_IFNAME}");
    }
    // The IPv6 address is configured even for a DHCP server (DHCPv4 does not give it).
    if let Some(router) = router.ipv6 {
        let _ = writeln!(
            cmds,
            "route add default via inet6 {router} dev {SERVER_IFNAME}"
        );
    }
    cmds
}

/// Apply [`batch`] inside the server's namespace with one `ip` process.
pub fn configure(server: &Server, router: Routers) -> Result<(), KernelError> {
    let cmds = batch(server, router);
    ip_command(&["-n", &server.netns, "-batch", "-"], Some(&cmds)).map_err(|detail| {
        KernelError::ConfigureLink {
            server: server.name.clone(),
            netns: server.netns.clone(),
            detail,
        }
    })
}

/// Take `eth0` down, flush its addresses (and with them its routes) and apply [`batch`]
/// again (a changed identity or gateway).
pub fn reconfigure(server: &Server, router: Routers) -> Result<(), KernelError> {
    let cmds = format!(
        "link set dev {SERVER_IFNAME} down\naddress flush dev {SERVER_IFNAME}\n{}",
        batch(server, router)
    );
    ip_command(&["-n", &server.netns, "-batch", "-"], Some(&cmds)).map_err(|detail| {
        KernelError::ConfigureLink {
            server: server.name.clone(),
            netns: server.netns.clone(),
            detail,
        }
    })
}
