//! Adopting what a killed netd left behind, so a restart keeps servers on the network.
//!
//! Servers' TAPs are persistent: after a SIGKILL or a panic each server keeps its namespace
//! and its `eth0` (addresses, routes, open sockets), without carrier until a netd attaches.
//! `netd up` on the same topology attaches to those TAPs instead of creating new ones, so a
//! TCP connection open before the crash goes on after the restart.
//!
//! Contract: [`servers`] looks at every server whose namespace exists and either attaches to
//! its TAP or refuses the whole start, naming each server that does not match the topology
//! (not a TAP, held by a running process, another MAC, MTU or address). Looking changes
//! nothing: attaching to a persistent TAP and closing it again leaves it as it was.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::IpAddr;

use super::{KernelError, SERVER_IFNAME, netns, sys};
use crate::port::Offload;
use crate::topology::{PortId, Server, Topology};

/// Attach to the TAP of every server of `topology` whose namespace exists, checking each
/// against the topology; return the attached TAPs by port. All or nothing: one mismatch
/// refuses them all, with every mismatch named.
pub fn servers(
    topology: &Topology,
    offload: Offload,
) -> Result<HashMap<PortId, File>, KernelError> {
    let mut adopted = HashMap::new();
    let mut mismatches = Vec::new();
    for server in topology.servers.iter().filter(|s| netns::exists(&s.netns)) {
        match adopt_server(server, offload) {
            Ok(file) => {
                adopted.insert(server.id, file);
            }
            Err(why) => mismatches.push(format!(
                "server {:?} (namespace {:?}): {why}",
                server.name, server.netns
            )),
        }
    }
    if mismatches.is_empty() {
        Ok(adopted)
    } else {
        Err(KernelError::CannotAdopt(mismatches))
    }
}

/// Attach to `server`'s TAP in its namespace and check it is the server's; say why not.
fn adopt_server(server: &Server, offload: Offload) -> Result<File, String> {
    let vnet = offload.vnet_header_len();
    let (identity, tap) = netns::run_in(&server.netns, || {
        // Look before attaching: TUNSETIFF on a missing name would create a new TAP.
        let identity = sys::interface_identity(SERVER_IFNAME)?;
        let tap = sys::open_tap(SERVER_IFNAME, vnet)?;
        Ok((identity, tap))
    })
    .map_err(|err| match (err.kind(), err.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => format!("it has no {SERVER_IFNAME}"),
        (_, Some(libc::EBUSY)) => format!(
            "its {SERVER_IFNAME} is held by a running process (is another netd running this topology?)"
        ),
        (_, Some(libc::EINVAL)) => format!("its {SERVER_IFNAME} is not a TAP netd made"),
        _ => format!("cannot attach to its {SERVER_IFNAME}: {err}"),
    })?;
    if !sys::is_persistent(&tap).map_err(|err| err.to_string())? {
        return Err(format!("its {SERVER_IFNAME} is not a persistent TAP"));
    }
    let differences = differences(server, &identity);
    if differences.is_empty() {
        Ok(File::from(tap))
    } else {
        Err(differences.join("; "))
    }
}

/// Return how `eth0`'s identity differs from what the topology gives `server`.
fn differences(server: &Server, found: &sys::InterfaceIdentity) -> Vec<String> {
    let mut differences = Vec::new();
    if found.mac != Some(server.mac.octets()) {
        let found = found
            .mac
            .map_or("none".to_string(), |m| crate::wire::MacAddr(m).to_string());
        differences.push(format!("MAC is {found}, the topology says {}", server.mac));
    }
    if found.mtu != u32::from(server.mtu) {
        differences.push(format!(
            "MTU is {}, the topology says {}",
            found.mtu, server.mtu
        ));
    }
    let mut want: Vec<(IpAddr, u8)> = server
        .ipv6
        .iter()
        .map(|ip| (IpAddr::V6(ip.ip()), ip.prefix()))
        .collect();
    if !server.dhcp {
        want.push((IpAddr::V4(server.ip.ip()), server.ip.prefix()));
    }
    // Link-local addresses follow the MAC; a DHCP server's IPv4 address is its client's.
    let mut have: Vec<(IpAddr, u8)> = found
        .addresses
        .iter()
        .filter(|(ip, _)| match ip {
            IpAddr::V4(_) => !server.dhcp,
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        })
        .copied()
        .collect();
    want.sort();
    have.sort();
    if want != have {
        let show = |list: &[(IpAddr, u8)]| {
            let shown: Vec<String> = list.iter().map(|(ip, p)| format!("{ip}/{p}")).collect();
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            }
        };
        differences.push(format!(
            "addresses are {}, the topology says {}",
            show(&have),
            show(&want)
        ));
    }
    differences
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn web() -> Server {
        let t = crate::topology::parse(
            Path::new("t.toml"),
            "[host]\ncapacity = \"1gbit\"\n\
             [tenants.a]\nguaranteed = \"100mbit\"\n\
             [servers.web]\ntenant = \"a\"\nip = \"10.0.0.1/24\"\nipv6 = \"fd00::1/64\"\nmac = \"02:00:00:00:00:01\"\n",
        )
        .expect("valid");
        t.servers[0].clone()
    }

    fn identity_of(server: &Server) -> sys::InterfaceIdentity {
        sys::InterfaceIdentity {
            mac: Some(server.mac.octets()),
            mtu: u32::from(server.mtu),
            addresses: vec![
                (IpAddr::V4(server.ip.ip()), server.ip.prefix()),
                (server.ipv6.expect("v6").ip().into(), 64),
                (server.mac.ipv6_link_local().into(), 64),
            ],
        }
    }

    #[test]
    fn a_matching_interface_has_no_differences() {
        let server = web();
        assert!(differences(&server, &identity_of(&server)).is_empty());
    }

    #[test]
    fn every_difference_is_named() {
        let server = web();
        let mut found = identity_of(&server);
        found.mac = Some([2, 0, 0, 0, 0, 9]);
        found.mtu = 9000;
        found.addresses.remove(0);
        let said = differences(&server, &found).join("; ");
        assert!(said.contains("MAC is 02:00:00:00:00:09"), "{said}");
        assert!(
            said.contains("MTU is 9000, the topology says 1500"),
            "{said}"
        );
        assert!(
            said.contains("addresses are fd00::1/64, the topology says"),
            "{said}"
        );
    }

    #[test]
    fn a_dhcp_servers_ipv4_address_is_its_clients() {
        let mut server = web();
        server.dhcp = true;
        let mut found = identity_of(&server);
        found.addresses[0] = ("10.0.0.77".parse().expect("ip"), 24);
        assert!(differences(&server, &found).is_empty());
    }
}
