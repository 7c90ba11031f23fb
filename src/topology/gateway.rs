//! A tenant's gateway: its subnet, the address netd answers for in it, and what DHCP hands
//! out; and the checks that tie the tenant's servers to it.
//!
//! Rules ([`check`], run after tenants and servers were validated, errors collected with the
//! rest):
//! - `gateway` is `a.b.c.d/len` like a server's address (not the network or broadcast
//!   address of its prefix); its prefix is the tenant's subnet.
//! - Every server of a tenant with a gateway has an address in that subnet, with the same
//!   prefix length, and not the gateway's own address.
//! - `dns` entries are IPv4 addresses; `dns`, `nat` and a server's `dhcp` need a gateway.
//!
//! So a routed tenant has exactly one subnet, and overlapping subnets within one tenant
//! cannot happen. A tenant without a gateway is a pure L2 domain: its servers' prefixes
//! are their own business (one may hold a /32 beside another's /24), as before.
//!
//! The gateway's MAC is derived from the tenant's name, different from every server's; its
//! port id follows the servers' (see [`super::Topology::ports`]).

use std::net::Ipv4Addr;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Serialize;

use super::file::FileTopology;
use super::validate::{
    ErrorKind, Validator, check_ipv4, check_ipv6, derived_mac, key_segment, quoted,
};
use super::{PortId, Server, Tenant};
use crate::wire::MacAddr;

/// A tenant's gateway: netd's own stack in the tenant's L2 domain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gateway {
    /// The switch port of the gateway.
    pub port: PortId,
    /// The MAC it answers ARP with (derived from the tenant name).
    pub mac: MacAddr,
    /// The gateway's address with the tenant's subnet prefix.
    pub ip: Ipv4Network,
    /// Its IPv6 address with the tenant's IPv6 prefix, if the tenant has IPv6.
    pub ipv6: Option<Ipv6Network>,
    /// DNS servers handed out by DHCP.
    pub dns: Vec<Ipv4Addr>,
}

impl Gateway {
    /// Return the tenant's subnet.
    pub fn subnet(&self) -> Ipv4Network {
        subnet_of(self.ip)
    }
}

/// Return the subnet `net` lies in: its network address with its prefix.
fn subnet_of(net: Ipv4Network) -> Ipv4Network {
    // The network address with the same prefix is always a valid network: never fails.
    Ipv4Network::new(net.network(), net.prefix()).unwrap_or(net)
}

/// Check every tenant's gateway keys against its servers; fill in `tenants[i].gateway` and
/// `nat` (tenants and servers in name order, as validated). Gateway ports are numbered from
/// `first_port` in tenant name order.
pub(super) fn check(
    v: &mut Validator<'_>,
    file: &FileTopology,
    tenants: &mut [Tenant],
    servers: &[Server],
    first_port: u32,
) {
    let server_macs: Vec<MacAddr> = servers.iter().map(|s| s.mac).collect();
    let mut next_port = first_port;
    for tenant in tenants.iter_mut() {
        let Some(raw) = file.tenants.get(&tenant.name) else {
            continue;
        };
        let key = format!("tenants.{}", key_segment(&tenant.name));
        let gateway = raw.gateway.as_deref().and_then(|text| {
            check_ipv4(text)
                .map_err(|kind| v.push(&format!("{key}.gateway"), quoted(Some(text)), kind))
                .ok()
        });
        let ipv6 = raw.gateway6.as_deref().and_then(|text| {
            check_ipv6(text)
                .map_err(|kind| v.push(&format!("{key}.gateway6"), quoted(Some(text)), kind))
                .ok()
        });
        let dns = check_dns(v, &key, raw.dns.as_deref().unwrap_or_default());
        tenant.nat = raw.nat.unwrap_or(false);
        if raw.gateway.is_none() {
            if raw.nat == Some(true) {
                v.push(
                    &format!("{key}.nat"),
                    Some("true".into()),
                    ErrorKind::NeedsGateway,
                );
            }
            if raw.dns.is_some() {
                v.push(&format!("{key}.dns"), None, ErrorKind::NeedsGateway);
            }
            if let Some(text) = &raw.gateway6 {
                let key = format!("{key}.gateway6");
                v.push(&key, quoted(Some(text)), ErrorKind::NeedsGateway);
            }
        }
        let Some(ip) = gateway else { continue };
        let mine: Vec<&Server> = servers.iter().filter(|s| s.tenant == tenant.id).collect();
        check_servers_in_subnet(v, &key, ip, &mine);
        if let Some(ipv6) = ipv6 {
            check_servers_in_subnet6(v, &key, ipv6, &mine);
        }
        tenant.gateway = Some(Gateway {
            port: PortId(next_port),
            mac: gateway_mac(&tenant.name, &server_macs),
            ip,
            ipv6,
            dns,
        });
        next_port += 1;
    }
    check_dhcp(v, file, tenants, servers);
}

/// Parse the `dns` list: IPv4 unicast addresses.
fn check_dns(v: &mut Validator<'_>, key: &str, raw: &[String]) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        match text.parse::<Ipv4Addr>() {
            Ok(addr) if !addr.is_unspecified() && !addr.is_multicast() && !addr.is_broadcast() => {
                out.push(addr);
            }
            _ => v.push(
                &format!("{key}.dns[{i}]"),
                quoted(Some(text)),
                ErrorKind::MalformedIp {
                    reason: "expected an IPv4 unicast address such as 9.9.9.9".into(),
                },
            ),
        }
    }
    out
}

/// Every server of the tenant must be in the gateway's subnet, and not be the gateway.
fn check_servers_in_subnet(
    v: &mut Validator<'_>,
    key: &str,
    gateway: Ipv4Network,
    mine: &[&Server],
) {
    let subnet = subnet_of(gateway);
    for server in mine {
        if server.ip.ip() == gateway.ip() {
            v.push(
                &format!("{key}.gateway"),
                Some(gateway.to_string()),
                ErrorKind::GatewayIsServerAddress {
                    server: server.name.clone(),
                },
            );
        } else if subnet_of(server.ip) != subnet {
            v.push(
                &format!("servers.{}.ip", key_segment(&server.name)),
                Some(server.ip.to_string()),
                ErrorKind::OutsideGatewaySubnet { subnet },
            );
        }
    }
}

/// Every server of the tenant with an IPv6 address has it in the gateway's IPv6 subnet,
/// and not the gateway's own.
fn check_servers_in_subnet6(
    v: &mut Validator<'_>,
    key: &str,
    gateway: Ipv6Network,
    mine: &[&Server],
) {
    let subnet = |net: Ipv6Network| (net.network(), net.prefix());
    for server in mine {
        let Some(ipv6) = server.ipv6 else { continue };
        if ipv6.ip() == gateway.ip() {
            v.push(
                &format!("{key}.gateway6"),
                Some(gateway.to_string()),
                ErrorKind::GatewayIsServerAddress {
                    server: server.name.clone(),
                },
            );
        } else if subnet(ipv6) != subnet(gateway) {
            v.push(
                &format!("servers.{}.ipv6", key_segment(&server.name)),
                Some(ipv6.to_string()),
                ErrorKind::OutsideGatewaySubnet6 {
                    subnet: format!("{}/{}", gateway.network(), gateway.prefix()),
                },
            );
        }
    }
}

/// `dhcp` needs the server's tenant to have a gateway.
fn check_dhcp(v: &mut Validator<'_>, file: &FileTopology, tenants: &[Tenant], servers: &[Server]) {
    for server in servers {
        let dhcp = file.servers.get(&server.name).and_then(|raw| raw.dhcp);
        // Judged by the file: a gateway that is present but invalid has its own error.
        let has_gateway = tenants
            .iter()
            .find(|t| t.id == server.tenant)
            .and_then(|t| file.tenants.get(&t.name))
            .is_some_and(|raw| raw.gateway.is_some());
        if dhcp == Some(true) && !has_gateway {
            v.push(
                &format!("servers.{}.dhcp", key_segment(&server.name)),
                Some("true".into()),
                ErrorKind::NeedsGateway,
            );
        }
    }
}

/// Derive the gateway's MAC from its tenant's name, different from every server's.
fn gateway_mac(tenant: &str, taken: &[MacAddr]) -> MacAddr {
    // Server names cannot hold '/', so no server derives the same MAC from its name.
    let name = format!("gateway/{tenant}");
    (0u32..)
        .map(|attempt| derived_mac(&name, attempt))
        .find(|mac| !taken.contains(mac))
        .unwrap_or(MacAddr([0x02, 0, 0, 0, 0, 1]))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::topology::{PortKind, parse};

    const BASE: &str = r#"
        [host]
        capacity = "1gbit"
        [tenants.acme]
        guaranteed = "300mbit"
        gateway = "10.1.0.1/24"
        nat = true
        dns = ["192.0.2.53", "198.51.100.53"]
        [tenants.blue]
        guaranteed = "300mbit"
        [servers.acme-web]
        tenant = "acme"
        ip = "10.1.0.10/24"
        dhcp = true
        [servers.acme-db]
        tenant = "acme"
        ip = "10.1.0.11/24"
        [servers.blue-web]
        tenant = "blue"
        ip = "10.1.0.10/24"
    "#;

    /// The errors of `BASE` with each `(from, to)` replaced, as (key, kind) pairs.
    fn errors(edits: &[(&str, &str)]) -> Vec<(String, ErrorKind)> {
        let mut text = BASE.to_string();
        for (from, to) in edits {
            assert!(text.contains(from), "{from}");
            text = text.replacen(from, to, 1);
        }
        parse(Path::new("t.toml"), &text)
            .expect_err("invalid")
            .into_iter()
            .map(|e| (e.key, e.kind))
            .collect()
    }

    #[test]
    fn a_gateway_gets_a_port_a_mac_and_its_tenants_servers_a_route() {
        let t = parse(Path::new("t.toml"), BASE).unwrap();
        let acme = t.tenant_by_name("acme").unwrap();
        let gateway = acme.gateway.as_ref().unwrap();
        assert!(acme.nat);
        assert_eq!(gateway.port, PortId(3), "after the three servers");
        assert_eq!(gateway.ip.to_string(), "10.1.0.1/24");
        assert_eq!(gateway.subnet().to_string(), "10.1.0.0/24");
        assert_eq!(gateway.dns.len(), 2);
        assert!(t.servers.iter().all(|s| s.mac != gateway.mac));
        assert!(gateway.mac.is_local() && !gateway.mac.is_multicast());
        let web = t.server_by_name("acme-web").unwrap();
        assert!(web.dhcp);
        assert_eq!(t.router_of(web).ipv4, Some(gateway.ip.ip()));
        assert_eq!(
            t.router_of(t.server_by_name("blue-web").unwrap()).ipv4,
            None
        );
        let kinds: Vec<_> = t.ports().map(|p| (p.id(), p.kind())).collect();
        assert_eq!(kinds.last(), Some(&(PortId(3), PortKind::Gateway)));
        assert_eq!(t.port_id_bound(), 4);
        // Written back and read again, it is the same topology.
        let text = toml::to_string(&t.to_file()).unwrap();
        let again = parse(Path::new("t.toml"), &text).unwrap();
        assert_eq!(again.tenants, t.tenants);
    }

    #[test]
    fn every_gateway_problem_is_reported_at_once_with_its_key() {
        let found = errors(&[
            ("gateway = \"10.1.0.1/24\"", "gateway = \"10.1.0.11/24\""),
            (
                "ip = \"10.1.0.10/24\"\n        dhcp",
                "ip = \"10.2.0.10/24\"\n        dhcp",
            ),
            (
                "guaranteed = \"300mbit\"\n        [servers",
                "guaranteed = \"300mbit\"\n        nat = true\n        dns = [\"9.9.9.9\"]\n        [servers",
            ),
            (
                "tenant = \"blue\"\n        ip = \"10.1.0.10/24\"",
                "tenant = \"blue\"\n        ip = \"10.1.0.10/24\"\n        dhcp = true",
            ),
            ("\"198.51.100.53\"", "\"not-an-address\""),
        ]);
        let has = |key: &str, pred: &dyn Fn(&ErrorKind) -> bool| {
            found.iter().any(|(k, kind)| k == key && pred(kind))
        };
        assert!(
            has(
                "tenants.acme.gateway",
                &|k| matches!(k, ErrorKind::GatewayIsServerAddress { server } if server == "acme-db")
            ),
            "{found:?}"
        );
        assert!(
            has("servers.acme-web.ip", &|k| matches!(
                k,
                ErrorKind::OutsideGatewaySubnet { .. }
            )),
            "{found:?}"
        );
        assert!(
            has("tenants.blue.nat", &|k| *k == ErrorKind::NeedsGateway),
            "{found:?}"
        );
        assert!(
            has("tenants.blue.dns", &|k| *k == ErrorKind::NeedsGateway),
            "{found:?}"
        );
        assert!(
            has("servers.blue-web.dhcp", &|k| *k == ErrorKind::NeedsGateway),
            "{found:?}"
        );
        assert!(
            has("tenants.acme.dns[1]", &|k| matches!(
                k,
                ErrorKind::MalformedIp { .. }
            )),
            "{found:?}"
        );
    }

    #[test]
    fn a_gateway_on_its_network_address_or_another_prefix_is_refused() {
        let found = errors(&[("gateway = \"10.1.0.1/24\"", "gateway = \"10.1.0.0/24\"")]);
        assert_eq!(
            found,
            [("tenants.acme.gateway".into(), ErrorKind::NetworkAddress)]
        );
        let found = errors(&[("ip = \"10.1.0.11/24\"", "ip = \"10.1.0.11/16\"")]);
        assert!(
            found.iter().any(|(k, kind)| k == "servers.acme-db.ip"
                && matches!(kind, ErrorKind::OutsideGatewaySubnet { .. })),
            "{found:?}"
        );
    }
}

#[cfg(test)]
mod ipv6_tests {
    use std::path::Path;

    use crate::topology::parse;
    use crate::topology::validate::ErrorKind;

    const BASE: &str = r#"
        [host]
        capacity = "1gbit"
        [tenants.acme]
        guaranteed = "300mbit"
        gateway = "10.1.0.1/24"
        gateway6 = "fd00:1::1/64"
        [tenants.blue]
        guaranteed = "300mbit"
        [servers.acme-web]
        tenant = "acme"
        ip = "10.1.0.10/24"
        ipv6 = "fd00:1::10/64"
        [servers.acme-db]
        tenant = "acme"
        ip = "10.1.0.11/24"
    "#;

    #[test]
    fn servers_with_ipv6_get_the_ipv6_gateway_as_their_router() {
        let t = parse(Path::new("t.toml"), BASE).unwrap();
        let gateway = t.tenant_by_name("acme").unwrap().gateway.clone().unwrap();
        assert_eq!(gateway.ipv6.unwrap().to_string(), "fd00:1::1/64");
        let web = t.router_of(t.server_by_name("acme-web").unwrap());
        assert_eq!(web.ipv6, Some("fd00:1::1".parse().unwrap()));
        let db = t.router_of(t.server_by_name("acme-db").unwrap());
        assert_eq!(db.ipv6, None, "no IPv6 address, no IPv6 route");
        let text = toml::to_string(&t.to_file()).unwrap();
        assert_eq!(
            parse(Path::new("t.toml"), &text).unwrap().tenants,
            t.tenants
        );
    }

    #[test]
    fn every_ipv6_gateway_problem_is_named() {
        let cases = [
            (
                "ipv6 = \"fd00:1::10/64\"",
                "ipv6 = \"fd00:2::10/64\"",
                "servers.acme-web.ipv6",
            ),
            (
                "gateway6 = \"fd00:1::1/64\"",
                "gateway6 = \"fd00:1::10/64\"",
                "tenants.acme.gateway6",
            ),
            (
                "gateway6 = \"fd00:1::1/64\"",
                "gateway6 = \"10.1.0.1/24\"",
                "tenants.acme.gateway6",
            ),
            (
                "guaranteed = \"300mbit\"\n        [servers",
                "guaranteed = \"300mbit\"\n        gateway6 = \"fd00:3::1/64\"\n        [servers",
                "tenants.blue.gateway6",
            ),
        ];
        for (from, to, key) in cases {
            assert!(BASE.contains(from), "{from}");
            let errors = parse(Path::new("t.toml"), &BASE.replacen(from, to, 1)).unwrap_err();
            assert!(errors.iter().any(|e| e.key == key), "{key}: {errors:#?}");
        }
        let errors = parse(
            Path::new("t.toml"),
            &BASE.replacen("ipv6 = \"fd00:1::10/64\"", "ipv6 = \"fd00:2::10/64\"", 1),
        )
        .unwrap_err();
        assert!(matches!(
            errors[0].kind,
            ErrorKind::OutsideGatewaySubnet6 { .. }
        ));
    }
}
