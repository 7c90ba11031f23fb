//! Configure a server's `eth0` inside its namespace over route netlink ([`super::rtnl`]):
//! MAC, MTU, addresses, default routes, link state. A DHCP server's `eth0` is only brought
//! up: its client configures the rest. Both functions act on the calling thread's namespace.

use super::SERVER_IFNAME;
use super::rtnl::{Rtnl, RtnlError};
use crate::topology::{Routers, Server};

/// Give a fresh `eth0` the server's identity (and default routes via `router`, its tenant's
/// gateway) and bring it and `lo` up.
pub fn configure(server: &Server, router: Routers) -> Result<(), RtnlError> {
    let (mut rtnl, eth0) = open()?;
    apply(&mut rtnl, eth0, server, router)
}

/// Take `eth0` down, remove its addresses (and with them its routes) and configure it again
/// (a changed identity or gateway).
pub fn reconfigure(server: &Server, router: Routers) -> Result<(), RtnlError> {
    let (mut rtnl, eth0) = open()?;
    rtnl.set_up(eth0, false)?;
    rtnl.flush_addresses(eth0)?;
    apply(&mut rtnl, eth0, server, router)
}

/// A netlink socket in this thread's namespace, and the index of its `eth0`.
fn open() -> Result<(Rtnl, u32), RtnlError> {
    let rtnl = Rtnl::open().map_err(|source| RtnlError {
        what: "open a route netlink socket".into(),
        source,
    })?;
    let eth0 = rtnl.index_of(SERVER_IFNAME)?;
    Ok((rtnl, eth0))
}

fn apply(rtnl: &mut Rtnl, eth0: u32, server: &Server, router: Routers) -> Result<(), RtnlError> {
    // The MAC must be set while the link is down; EUI-64 makes the kernel derive the
    // link-local address from the MAC, which is the one the switch's guard allows.
    rtnl.set_identity(eth0, server.mac, server.mtu)?;
    if !server.dhcp {
        rtnl.add_address(eth0, server.ip.into(), false)?;
    }
    if let Some(ipv6) = server.ipv6 {
        // No DAD: the switch already guarantees the address is unique in the tenant.
        rtnl.add_address(eth0, ipv6.into(), true)?;
    }
    rtnl.set_up(eth0, true)?;
    let lo = rtnl.index_of("lo")?;
    rtnl.set_up(lo, true)?;
    if let Some(gateway) = router.ipv4.filter(|_| !server.dhcp) {
        rtnl.add_default_route(eth0, gateway.into())?;
    }
    // The IPv6 address is configured even for a DHCP server (DHCPv4 does not give it).
    if let Some(gateway) = router.ipv6 {
        rtnl.add_default_route(eth0, gateway.into())?;
    }
    Ok(())
}
