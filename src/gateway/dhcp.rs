//! The gateway's DHCPv4 server: static leases from the topology.
//!
//! Contract: [`Leases::answer`] answers a DISCOVER with an OFFER and a REQUEST for the
//! client's own lease with an ACK, each carrying the server's address and prefix, the
//! gateway as router, the tenant's DNS servers and [`LEASE_SECS`]; a REQUEST for anything
//! else, or naming this server but the wrong address, gets a NAK; everything else (a client
//! without a lease, RELEASE, DECLINE, INFORM, a REQUEST for another server) gets nothing.
//! Leases are looked up by the request's client hardware address, which the switch's guard
//! has verified to be the asking port's own MAC (a request naming another is dropped as
//! `spoofed_mac` before it gets here), so no server gets another's lease.

use std::collections::BTreeMap;

use ipnetwork::Ipv4Network;
use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpRepr, Ipv4Address};

use crate::topology::{Gateway, Server};
use crate::wire::MacAddr;

/// Lease time handed out; the leases are static, so this only sets how often clients renew.
pub const LEASE_SECS: u32 = 3600;
/// DHCP option 6: domain name servers.
const OPTION_DNS: u8 = 6;

/// The static leases of one tenant, and what every answer carries.
#[derive(Debug, Clone)]
pub struct Leases {
    by_mac: BTreeMap<MacAddr, Ipv4Network>,
    gateway: Ipv4Network,
    /// The DNS option's payload: the servers' addresses back to back.
    dns: Vec<u8>,
}

impl Leases {
    /// Collect the leases of `servers` (those of the gateway's tenant) behind `gateway`.
    pub fn new<'s>(gateway: &Gateway, servers: impl Iterator<Item = &'s Server>) -> Leases {
        Leases {
            by_mac: servers.map(|s| (s.mac, s.ip)).collect(),
            gateway: gateway.ip,
            dns: gateway.dns.iter().flat_map(|a| a.octets()).collect(),
        }
    }

    /// Answer `request` from the port whose MAC is `source`; `None` when there is nothing to
    /// say. `options` is scratch space the reply's options live in.
    pub fn answer<'a>(
        &'a self,
        source: MacAddr,
        request: &DhcpRepr<'_>,
        options: &'a mut [DhcpOption<'a>; 1],
    ) -> Option<DhcpRepr<'a>> {
        let lease = self.by_mac.get(&source).copied();
        let me = self.gateway.ip();
        let kind = match request.message_type {
            DhcpMessageType::Discover => DhcpMessageType::Offer,
            DhcpMessageType::Request => {
                let asked = request.requested_ip.unwrap_or(request.client_ip);
                let for_me = request.server_identifier.is_none_or(|id| id == me);
                match lease {
                    _ if !for_me => return None, // the client chose another server
                    Some(net) if net.ip() == asked => DhcpMessageType::Ack,
                    _ => DhcpMessageType::Nak,
                }
            }
            _ => return None,
        };
        let mut reply = DhcpRepr {
            message_type: kind,
            transaction_id: request.transaction_id,
            secs: 0,
            client_hardware_address: request.client_hardware_address,
            client_ip: Ipv4Address::UNSPECIFIED,
            your_ip: Ipv4Address::UNSPECIFIED,
            server_ip: me,
            router: None,
            subnet_mask: None,
            relay_agent_ip: request.relay_agent_ip,
            broadcast: true,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(me),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        if kind == DhcpMessageType::Nak {
            return Some(reply);
        }
        let net = lease?;
        reply.your_ip = net.ip();
        reply.router = Some(me);
        reply.subnet_mask = Some(net.mask());
        reply.lease_duration = Some(LEASE_SECS);
        reply.renew_duration = Some(LEASE_SECS / 2);
        reply.rebind_duration = Some(LEASE_SECS / 8 * 7);
        if !self.dns.is_empty() {
            options[0] = DhcpOption {
                kind: OPTION_DNS,
                data: &self.dns,
            };
            let options: &'a [DhcpOption<'a>] = options;
            reply.additional_options = options;
        }
        Some(reply)
    }
}
