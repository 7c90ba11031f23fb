//! Guard: anti-spoofing. A frame leaves its port only if every source address in it is the
//! port's own.
//!
//! Contract: [`check`] never panics and never allocates, whatever the bytes; it returns the
//! checked Ethernet frame, or the [`DropReason`] of the first rule the frame breaks:
//!
//! 1. Length: under 14 bytes is `Truncated`; over the port's `max_frame_len` is `Oversized`.
//! 2. The Ethernet source must be the port's MAC (`SpoofedMac`), before anything else is read.
//!    A trusted port (gateway, uplink: netd's own or the host's) stops here, needing only an
//!    EtherType the switch carries; the rules below are for servers' ports.
//! 3. By EtherType; anything but IPv4, ARP and IPv6 (802.1Q/802.1ad tags, LLDP, 802.3 length
//!    fields...) is `UnsupportedEtherType`:
//!    - IPv4: version 4 and consistent header/total lengths (`Malformed`), all present
//!      (`Truncated`); never a DHCP server's answer, UDP 67 → 68 (`RogueDhcp`); a DHCP
//!      request, UDP 68 → 67, names the port's MAC as its client (`SpoofedMac`; too short
//!      to hold one: `Malformed`); source the port's IPv4, or `0.0.0.0` only for a DHCP
//!      request (`SpoofedIpv4`).
//!    - ARP: Ethernet/IPv4 with lengths 6/4, operation request or reply (`Malformed`), all
//!      present (`Truncated`); sender MAC the port's, sender IP the port's or `0.0.0.0` for
//!      RFC 5227 probes (`SpoofedArp`).
//!    - IPv6: version 6 (`Malformed`), payload present (`Truncated`); then the rules below,
//!      all `SpoofedIpv6`, with `Malformed` for ND messages or options that do not parse.
//!
//! IPv6 rules. The port owns its link-local address (derived from its MAC, as the kernel
//! does) and its configured global address, if any; a server without one gets link-local only.
//! - The source must be an address the port owns, or `::`. A `::` source is accepted only
//!   for what a node sends before it owns an address: a DAD neighbour solicitation
//!   (RFC 4862 §5.4.2) for an address the port owns (so no server can fake a collision and
//!   stop another's DAD), and an MLD report (RFC 3810 §5.2.13) behind its one Hop-by-Hop
//!   header (the Router Alert MLD requires).
//! - Neighbour Discovery (ICMPv6 directly after the IPv6 header): Router Advertisements and
//!   Redirects are refused outright (a server is not a router; this stops rogue RAs); a
//!   Neighbour Advertisement's target must be owned by the port; every Source/Target
//!   Link-Layer Address option in RS/NS/NA must be exactly 8 octets and carry the port's MAC.
//! - Extension headers: ND checks do not walk extension-header chains. Receivers accept ND
//!   only with hop limit 255 (RFC 4861 §6.1.2, §7.1.1), and ND is never sent behind
//!   extension headers in practice (RFC 6980 forbids fragmenting it), so an IPv6 packet with
//!   hop limit 255 whose next header is an extension header is refused: it can only be an
//!   attempt to hide ND from these checks (the RA-Guard evasion of RFC 7113). With any other
//!   hop limit, receivers ignore whatever ND it may carry, so it passes unexamined.
//!
//! Not checked here: checksums (the receiving kernel verifies them; a bad one hurts only
//! the sender), destinations (the forward step's job), and IPv4 payloads beyond the UDP
//! ports above (an ICMP redirect from a server can mislead only its own tenant).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::stats::DropReason;
use crate::topology::{PortKind, PortSpec, Server, TenantId};
use crate::wire::{
    ArpHardware, ArpOperation, ArpPacket, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpPacket,
    ETHERNET_HEADER_LEN, EthernetFrame, EthernetProtocol, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
    Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet, Ipv6ExtHeader, Ipv6Packet, MacAddr,
    NdiscOptionType, NdiscOptions,
};

/// Bytes of an ARP packet before its addresses: hardware/protocol type and length, operation.
const ARP_FIXED_LEN: usize = 8;
/// ICMPv6 type of an MLDv1 report (RFC 2710); smoltcp names only the MLDv2 one.
const MLDV1_REPORT: u8 = 131;
/// Hop limit that Neighbour Discovery messages must carry to be accepted (RFC 4861).
const ND_HOP_LIMIT: u8 = 255;
/// Bytes of a UDP header.
const UDP_HEADER_LEN: usize = 8;

/// What the guard knows about one port: its kind, the addresses it owns and its frame size
/// limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortFacts {
    /// How far the port's frames are trusted: a server's fully checked, the others' only for
    /// length, source MAC and EtherType ([`check_trusted`]).
    pub kind: PortKind,
    /// The server's MAC: the only Ethernet source, ARP sender and ND link-layer address.
    pub mac: MacAddr,
    /// The server's IPv4 address.
    pub ipv4: Ipv4Addr,
    /// The server's configured global IPv6 address, if any.
    pub ipv6: Option<Ipv6Addr>,
    /// The link-local IPv6 address the kernel derives from `mac`.
    pub ipv6_link_local: Ipv6Addr,
    /// Longest frame accepted, Ethernet header included (MTU + 14; raised later for GSO).
    pub max_frame_len: usize,
    /// The tenant whose L2 domain the port belongs to.
    pub tenant: TenantId,
}

impl PortFacts {
    /// Gather the facts about one port of the topology.
    pub(crate) fn new(port: PortSpec<'_>) -> PortFacts {
        match port {
            PortSpec::Server(server) => PortFacts::of_server(server),
            // A server of another host: checked as if its TAP were here.
            PortSpec::Remote(remote) => PortFacts {
                kind: PortKind::Remote,
                mac: remote.mac,
                ipv4: remote.ip.ip(),
                ipv6: remote.ipv6.map(|net| net.ip()),
                ipv6_link_local: remote.mac.ipv6_link_local(),
                max_frame_len: usize::from(remote.mtu) + ETHERNET_HEADER_LEN,
                tenant: remote.tenant,
            },
            PortSpec::Gateway(tenant, gateway) => PortFacts {
                kind: PortKind::Gateway,
                mac: gateway.mac,
                ipv4: gateway.ip.ip(),
                ipv6: None,
                ipv6_link_local: gateway.mac.ipv6_link_local(),
                max_frame_len: usize::from(crate::topology::DEFAULT_MTU) + ETHERNET_HEADER_LEN,
                tenant: tenant.id,
            },
            // Routed packets the kernel hands back, sent on from the gateway's MAC; any
            // server MTU of the tenant, so the largest allowed. (A bridged uplink's trunk
            // has no MAC of its own: its frames come from the whole upstream network.)
            PortSpec::Uplink(tenant, _) => PortFacts {
                kind: port.kind(),
                mac: port.mac(),
                ipv4: Ipv4Addr::UNSPECIFIED,
                ipv6: None,
                ipv6_link_local: Ipv6Addr::UNSPECIFIED,
                max_frame_len: usize::from(crate::topology::validate::MAX_MTU)
                    + ETHERNET_HEADER_LEN,
                tenant: tenant.id,
            },
        }
    }

    /// Gather the facts about the port of `server`.
    fn of_server(server: &Server) -> PortFacts {
        PortFacts {
            kind: PortKind::Server,
            mac: server.mac,
            ipv4: server.ip.ip(),
            ipv6: server.ipv6.map(|net| net.ip()),
            ipv6_link_local: server.mac.ipv6_link_local(),
            max_frame_len: usize::from(server.mtu) + ETHERNET_HEADER_LEN,
            tenant: server.tenant,
        }
    }

    /// Return true if `addr` is one of the port's own IPv6 addresses (never `::`).
    fn owns_ipv6(&self, addr: Ipv6Addr) -> bool {
        addr == self.ipv6_link_local || Some(addr) == self.ipv6
    }
}

/// Check one frame read from `port`; return its checked Ethernet view or why to drop it.
pub(crate) fn check<'a>(
    port: &PortFacts,
    frame: &'a [u8],
) -> Result<EthernetFrame<&'a [u8]>, DropReason> {
    check_with_limit(port, frame, port.max_frame_len)
}

/// [`check`] with another length limit: a GSO super-frame may exceed the MTU (its segments
/// will not), up to `max_len` bytes.
pub(crate) fn check_with_limit<'a>(
    port: &PortFacts,
    frame: &'a [u8],
    max_len: usize,
) -> Result<EthernetFrame<&'a [u8]>, DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
    if frame.len() > max_len {
        return Err(DropReason::Oversized);
    }
    let src = MacAddr::from(eth.src_addr());
    if port.kind == PortKind::Trunk {
        // Any station upstream, but never a group address (the switch's own check that it
        // is not one of the tenant's servers comes next, in the switch).
        return if src.is_multicast() {
            Err(DropReason::SpoofedMac)
        } else {
            check_trusted(eth)
        };
    }
    if src != port.mac {
        return Err(DropReason::SpoofedMac);
    }
    if !matches!(port.kind, PortKind::Server | PortKind::Remote) {
        return check_trusted(eth);
    }
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => check_ipv4(port, eth.payload())?,
        EthernetProtocol::Arp => check_arp(port, eth.payload())?,
        EthernetProtocol::Ipv6 => check_ipv6(port, eth.payload())?,
        _ => return Err(DropReason::UnsupportedEtherType),
    }
    Ok(eth)
}

/// Check a frame from a trusted port (netd's own gateway, the host's routing): it may
/// speak for other addresses (ARP replies for the gateway, routed packets from anywhere), so
/// only what the switch itself relies on is checked: length and source MAC (done by the
/// caller) and an EtherType the tenant's L2 domain carries.
fn check_trusted(eth: EthernetFrame<&[u8]>) -> Result<EthernetFrame<&[u8]>, DropReason> {
    match eth.ethertype() {
        EthernetProtocol::Ipv4 | EthernetProtocol::Arp | EthernetProtocol::Ipv6 => Ok(eth),
        _ => Err(DropReason::UnsupportedEtherType),
    }
}

/// Check an IPv4 packet (with any Ethernet padding after it).
fn check_ipv4(port: &PortFacts, payload: &[u8]) -> Result<(), DropReason> {
    if payload.len() < IPV4_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    // The fixed header is present, so its getters are in bounds; `check_len` then covers
    // options and payload before anything beyond the fixed header is read.
    let ip = Ipv4Packet::new_unchecked(payload);
    let header_len = ip.header_len();
    if ip.version() != 4
        || usize::from(header_len) < IPV4_HEADER_LEN
        || u16::from(header_len) > ip.total_len()
    {
        return Err(DropReason::Malformed);
    }
    // With the layout consistent, the only failure left is a frame shorter than total_len.
    ip.check_len().map_err(|_| DropReason::Truncated)?;
    let ports = udp_ports(&ip);
    // A server answering DHCP would hand its tenant's servers addresses and routes.
    if ports == Some((DHCP_SERVER_PORT, DHCP_CLIENT_PORT)) {
        return Err(DropReason::RogueDhcp);
    }
    let dhcp_request = ports == Some((DHCP_CLIENT_PORT, DHCP_SERVER_PORT));
    // The gateway hands a lease to the MAC a request names: it must be the port's own.
    if dhcp_request {
        check_dhcp_client(port, ip.payload())?;
    }
    let src = ip.src_addr();
    // Before it has an address, a server may only ask DHCP for one.
    if src == port.ipv4 || (src.is_unspecified() && dhcp_request) {
        Ok(())
    } else {
        Err(DropReason::SpoofedIpv4)
    }
}

/// Return the UDP source and destination ports of an IPv4 packet whose length was checked,
/// if it carries the start of a UDP datagram.
fn udp_ports(ip: &Ipv4Packet<&[u8]>) -> Option<(u16, u16)> {
    if ip.next_header() != IpProtocol::Udp || ip.frag_offset() != 0 {
        return None;
    }
    let udp = ip.payload();
    let port = |at: usize| Some(u16::from_be_bytes([*udp.get(at)?, *udp.get(at + 1)?]));
    Some((port(0)?, port(2)?))
}

/// Check the client hardware address of a DHCP request (the UDP datagram in `udp`): the
/// port's MAC (`SpoofedMac`), present (`Malformed`).
fn check_dhcp_client(port: &PortFacts, udp: &[u8]) -> Result<(), DropReason> {
    let dhcp = udp.get(UDP_HEADER_LEN..).unwrap_or_default();
    let packet = DhcpPacket::new_checked(dhcp).map_err(|_| DropReason::Malformed)?;
    if MacAddr::from(packet.client_hardware_address()) == port.mac {
        Ok(())
    } else {
        Err(DropReason::SpoofedMac)
    }
}

/// Check an ARP packet.
fn check_arp(port: &PortFacts, payload: &[u8]) -> Result<(), DropReason> {
    if payload.len() < ARP_FIXED_LEN {
        return Err(DropReason::Truncated);
    }
    // The fixed part is present, so the type, length and operation getters are in bounds;
    // `check_len` then covers the addresses, whose offsets depend on the lengths.
    let arp = ArpPacket::new_unchecked(payload);
    if arp.hardware_type() != ArpHardware::Ethernet
        || arp.protocol_type() != EthernetProtocol::Ipv4
        || arp.hardware_len() != 6
        || arp.protocol_len() != 4
    {
        return Err(DropReason::Malformed);
    }
    arp.check_len().map_err(|_| DropReason::Truncated)?;
    // RARP and InARP operations have no use on a virtual L2 segment.
    if !matches!(arp.operation(), ArpOperation::Request | ArpOperation::Reply) {
        return Err(DropReason::Malformed);
    }
    let sender_ip = arp.source_protocol_addr();
    if arp.source_hardware_addr() == port.mac.octets()
        && (sender_ip == port.ipv4.octets() || sender_ip == Ipv4Addr::UNSPECIFIED.octets())
    {
        Ok(())
    } else {
        Err(DropReason::SpoofedArp)
    }
}

/// Check an IPv6 packet (with any Ethernet padding after it).
fn check_ipv6(port: &PortFacts, payload: &[u8]) -> Result<(), DropReason> {
    if payload.len() < IPV6_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    // The fixed header is present, so its getters are in bounds; `check_len` then covers
    // the payload before `payload()` is called.
    let ip = Ipv6Packet::new_unchecked(payload);
    if ip.version() != 6 {
        return Err(DropReason::Malformed);
    }
    ip.check_len().map_err(|_| DropReason::Truncated)?;
    let src = ip.src_addr();
    if src.is_unspecified() {
        return check_unspecified_source(port, ip.next_header(), ip.payload());
    }
    if !port.owns_ipv6(src) {
        return Err(DropReason::SpoofedIpv6);
    }
    match ip.next_header() {
        IpProtocol::Icmpv6 => check_icmpv6(port, ip.payload()),
        next if ip.hop_limit() == ND_HOP_LIMIT && is_extension_header(next) => {
            Err(DropReason::SpoofedIpv6)
        }
        _ => Ok(()),
    }
}

/// Check a packet from `::`: only a DAD solicitation or an MLD report may come from there.
fn check_unspecified_source(
    port: &PortFacts,
    next_header: IpProtocol,
    body: &[u8],
) -> Result<(), DropReason> {
    match next_header {
        IpProtocol::Icmpv6 => {
            if body.first() != Some(&u8::from(Icmpv6Message::NeighborSolicit)) {
                return Err(DropReason::SpoofedIpv6);
            }
            let ns = Icmpv6Packet::new_checked(body).map_err(|_| DropReason::Malformed)?;
            if !port.owns_ipv6(ns.target_addr()) {
                return Err(DropReason::SpoofedIpv6);
            }
            check_nd_options(port, ns.payload())
        }
        IpProtocol::HopByHop => {
            let hbh = Ipv6ExtHeader::new_checked(body).map_err(|_| DropReason::Malformed)?;
            // The length field counts 8-octet units beyond the first 8; `new_checked`
            // guarantees the whole header is in `body`.
            let icmp_at = (usize::from(hbh.header_len()) + 1) * 8;
            let icmp_type = body.get(icmp_at).copied();
            let is_report = icmp_type == Some(MLDV1_REPORT)
                || icmp_type == Some(u8::from(Icmpv6Message::MldReport));
            if hbh.next_header() == IpProtocol::Icmpv6 && is_report {
                Ok(())
            } else {
                Err(DropReason::SpoofedIpv6)
            }
        }
        _ => Err(DropReason::SpoofedIpv6),
    }
}

/// Check an ICMPv6 message from an address the port owns: the Neighbour Discovery rules.
fn check_icmpv6(port: &PortFacts, body: &[u8]) -> Result<(), DropReason> {
    let Some(&msg_type) = body.first() else {
        return Err(DropReason::Malformed);
    };
    match Icmpv6Message::from(msg_type) {
        Icmpv6Message::RouterAdvert | Icmpv6Message::Redirect => Err(DropReason::SpoofedIpv6),
        Icmpv6Message::NeighborAdvert => {
            let na = Icmpv6Packet::new_checked(body).map_err(|_| DropReason::Malformed)?;
            if !port.owns_ipv6(na.target_addr()) {
                return Err(DropReason::SpoofedIpv6);
            }
            check_nd_options(port, na.payload())
        }
        Icmpv6Message::NeighborSolicit | Icmpv6Message::RouterSolicit => {
            let nd = Icmpv6Packet::new_checked(body).map_err(|_| DropReason::Malformed)?;
            check_nd_options(port, nd.payload())
        }
        _ => Ok(()),
    }
}

/// Check the options of an ND message: every link-layer address in them is the port's MAC.
fn check_nd_options(port: &PortFacts, options: &[u8]) -> Result<(), DropReason> {
    for option in NdiscOptions::new(options) {
        let option = option.map_err(|_| DropReason::Malformed)?;
        match option.option_type() {
            NdiscOptionType::SourceLinkLayerAddr | NdiscOptionType::TargetLinkLayerAddr => {
                // On Ethernet these options are exactly 8 octets (RFC 2464 §6); a longer
                // one would hide bytes that receivers might read differently.
                if option.data_len() != 1 {
                    return Err(DropReason::Malformed);
                }
                if option.link_layer_addr().as_bytes() != port.mac.octets() {
                    return Err(DropReason::SpoofedIpv6);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Return true for the IPv6 extension headers of the IANA registry (RFC 7045 §2).
fn is_extension_header(next: IpProtocol) -> bool {
    // Hop-by-Hop, Routing, Fragment, ESP, AH, Destination Options, Mobility, HIP, Shim6,
    // and the two experimental values.
    matches!(
        u8::from(next),
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

#[cfg(test)]
mod tests {
    //! The anti-spoof matrix. Patched fixtures keep their now-stale checksums: the guard
    //! never reads checksums, so only the patched field decides.

    use rstest::rstest;

    use super::*;
    use crate::switch::fixtures::*;
    use crate::topology::PortId;
    use DropReason::*;

    fn facts(port: PortId) -> PortFacts {
        PortFacts::new(PortSpec::Server(topology().server(port)))
    }

    fn check_from(port: PortId, frame: &[u8]) -> Result<(), DropReason> {
        check(&facts(port), frame).map(|_| ())
    }

    fn v6(addr: &str) -> [u8; 16] {
        addr.parse::<Ipv6Addr>().unwrap().octets()
    }

    /// Append `bytes` to an IPv6 fixture's payload (an extra ND option, say).
    fn with_appended(frame: &[u8], bytes: &[u8]) -> Vec<u8> {
        let mut out = frame.to_vec();
        out.extend_from_slice(bytes);
        let len = u16::try_from(out.len() - 14 - 40).unwrap();
        patched(&out, at::IPV6_PAYLOAD_LEN, &len.to_be_bytes())
    }

    /// Put a Destination Options header (PadN only) between an IPv6 fixture's header and
    /// its payload, and set the hop limit.
    fn behind_dest_opts(frame: &[u8], hop_limit: u8) -> Vec<u8> {
        let mut out = frame[..at::ICMPV6].to_vec();
        out.extend_from_slice(&[frame[at::IPV6_NEXT_HEADER], 0, 1, 4, 0, 0, 0, 0]);
        out.extend_from_slice(&frame[at::ICMPV6..]);
        let len = u16::try_from(out.len() - 14 - 40).unwrap();
        let out = patched(&out, at::IPV6_PAYLOAD_LEN, &len.to_be_bytes());
        let out = patched(&out, at::IPV6_NEXT_HEADER, &[60]);
        patched(&out, at::IPV6_HOP_LIMIT, &[hop_limit])
    }

    #[rstest]
    #[case::arp_request(&ARP_REQUEST)]
    #[case::arp_reply(&ARP_REPLY)]
    #[case::arp_probe_from_zero(&ARP_PROBE)]
    #[case::ipv4_icmp(&IPV4_ICMP)]
    #[case::ipv4_udp(&IPV4_UDP)]
    #[case::ipv4_tcp(&IPV4_TCP)]
    #[case::dhcp_discover_from_zero(&DHCP_DISCOVER)]
    #[case::nd_neighbour_solicitation(&NDP_NS)]
    #[case::nd_neighbour_advertisement(&NDP_NA)]
    #[case::ipv6_global_icmp(&IPV6_GLOBAL)]
    #[case::ipv6_global_udp(&IPV6_GLOBAL_UDP)]
    #[case::dad_ns_from_unspecified(&DAD_NS)]
    #[case::mld_report_from_unspecified(&MLD_REPORT_DAD)]
    #[case::router_solicitation(&ROUTER_SOLICIT)]
    fn legitimate_frames_pass(#[case] frame: &[u8]) {
        assert_eq!(check_from(A1, frame), Ok(()));
    }

    #[rstest]
    #[case::eth_src_same_tenant(&ARP_REQUEST, at::ETH_SRC, &A2_MAC, SpoofedMac)]
    #[case::eth_src_other_tenant(&IPV4_UDP, at::ETH_SRC, &B1_MAC, SpoofedMac)]
    #[case::eth_src_on_nd(&NDP_NS, at::ETH_SRC, &A2_MAC, SpoofedMac)]
    #[case::eth_src_broadcast(&IPV4_UDP, at::ETH_SRC, &[0xff; 6], SpoofedMac)]
    #[case::eth_src_before_ethertype(&patched(&IPV4_UDP, at::ETHERTYPE, &[0x81, 0]), at::ETH_SRC, &A2_MAC, SpoofedMac)]
    #[case::ipv4_src_neighbour(&IPV4_ICMP, at::IPV4_SRC, &[10, 0, 0, 2], SpoofedIpv4)]
    #[case::ipv4_src_unassigned(&IPV4_TCP, at::IPV4_SRC, &[10, 0, 0, 3], SpoofedIpv4)]
    #[case::ipv4_src_broadcast(&IPV4_UDP, at::IPV4_SRC, &[255; 4], SpoofedIpv4)]
    #[case::dhcp_from_other_address(&DHCP_DISCOVER, at::IPV4_SRC, &[10, 0, 0, 3], SpoofedIpv4)]
    #[case::dhcp_for_a_neighbours_mac(&DHCP_DISCOVER, at::DHCP_CHADDR, &A2_MAC, SpoofedMac)]
    #[case::dhcp_for_another_tenants_mac(&DHCP_DISCOVER, at::DHCP_CHADDR, &B1_MAC, SpoofedMac)]
    #[case::arp_sender_mac(&ARP_REQUEST, at::ARP_SHA, &A2_MAC, SpoofedArp)]
    #[case::arp_sender_mac_other_tenant(&ARP_REPLY, at::ARP_SHA, &B1_MAC, SpoofedArp)]
    #[case::arp_sender_ip_poisoning(&ARP_REPLY, at::ARP_SPA, &[10, 0, 0, 2], SpoofedArp)]
    #[case::arp_sender_ip_gateway(&ARP_REQUEST, at::ARP_SPA, &[10, 0, 0, 254], SpoofedArp)]
    #[case::arp_probe_sender_mac(&ARP_PROBE, at::ARP_SHA, &A2_MAC, SpoofedArp)]
    #[case::ipv6_src_global(&IPV6_GLOBAL, at::IPV6_SRC, &v6("fd00::2"), SpoofedIpv6)]
    #[case::ipv6_src_unassigned(&IPV6_GLOBAL_UDP, at::IPV6_SRC, &v6("fd00::99"), SpoofedIpv6)]
    #[case::ipv6_src_link_local(&NDP_NS, at::IPV6_SRC, &v6("fe80::ff:fe00:2"), SpoofedIpv6)]
    #[case::ipv6_src_multicast(&IPV6_GLOBAL, at::IPV6_SRC, &v6("ff02::1"), SpoofedIpv6)]
    #[case::ipv6_src_unspecified_udp(&IPV6_GLOBAL_UDP, at::IPV6_SRC, &v6("::"), SpoofedIpv6)]
    #[case::ipv6_src_unspecified_echo(&IPV6_GLOBAL, at::IPV6_SRC, &v6("::"), SpoofedIpv6)]
    #[case::na_target_neighbour(&NDP_NA, at::ND_TARGET, &v6("fe80::ff:fe00:2"), SpoofedIpv6)]
    #[case::na_target_global(&NDP_NA, at::ND_TARGET, &v6("fd00::2"), SpoofedIpv6)]
    #[case::ns_source_lla(&NDP_NS, at::NS_NA_OPTION + 2, &A2_MAC, SpoofedIpv6)]
    #[case::na_target_lla(&NDP_NA, at::NS_NA_OPTION + 2, &B1_MAC, SpoofedIpv6)]
    #[case::rs_source_lla(&ROUTER_SOLICIT, at::RS_OPTION + 2, &A2_MAC, SpoofedIpv6)]
    #[case::router_advertisement(&ROUTER_ADVERT, at::ETH_SRC, &A1_MAC, SpoofedIpv6)]
    #[case::router_advertisement_from_global(&ROUTER_ADVERT, at::IPV6_SRC, &v6("fd00::1"), SpoofedIpv6)]
    #[case::router_advertisement_from_unspecified(&ROUTER_ADVERT, at::IPV6_SRC, &v6("::"), SpoofedIpv6)]
    #[case::redirect(&NDP_NA, at::ICMPV6, &[137], SpoofedIpv6)]
    #[case::dad_for_neighbours_address(&DAD_NS, at::ND_TARGET, &v6("fd00::2"), SpoofedIpv6)]
    #[case::dad_for_other_link_local(&DAD_NS, at::ND_TARGET, &v6("fe80::ff:fe00:2"), SpoofedIpv6)]
    #[case::na_from_unspecified(&DAD_NS, at::ICMPV6, &[136], SpoofedIpv6)]
    #[case::rs_from_unspecified(&ROUTER_SOLICIT, at::IPV6_SRC, &v6("::"), SpoofedIpv6)]
    #[case::hbh_echo_from_unspecified(&MLD_REPORT_DAD, at::ICMPV6 + 8, &[128], SpoofedIpv6)]
    #[case::hbh_udp_from_unspecified(&MLD_REPORT_DAD, at::ICMPV6, &[17], SpoofedIpv6)]
    #[case::mld_query_from_unspecified(&MLD_REPORT_DAD, at::ICMPV6 + 8, &[130], SpoofedIpv6)]
    fn spoofed_frames_drop(
        #[case] frame: &[u8],
        #[case] offset: usize,
        #[case] bytes: &[u8],
        #[case] reason: DropReason,
    ) {
        assert_eq!(check_from(A1, &patched(frame, offset, bytes)), Err(reason));
    }

    #[rstest]
    #[case::ipv4_version(&IPV4_UDP, 14, &[0x65], Malformed)]
    #[case::ipv4_ihl_below_minimum(&IPV4_UDP, 14, &[0x44], Malformed)]
    #[case::ipv4_ihl_beyond_total(&IPV4_UDP, 14, &[0x4f], Malformed)]
    #[case::ipv4_total_below_header(&IPV4_UDP, at::IPV4_TOTAL_LEN, &[0, 19], Malformed)]
    #[case::ipv4_total_beyond_frame(&IPV4_UDP, at::IPV4_TOTAL_LEN, &[0, 33], Truncated)]
    #[case::ipv4_options_beyond_frame(&patched(&IPV4_UDP, 14, &[0x4f]), at::IPV4_TOTAL_LEN, &[0, 60], Truncated)]
    #[case::arp_hardware_type(&ARP_REQUEST, 14, &[0, 6], Malformed)]
    #[case::arp_protocol_type(&ARP_REQUEST, 16, &[0x86, 0xdd], Malformed)]
    #[case::arp_hardware_len(&ARP_REQUEST, 18, &[8], Malformed)]
    #[case::arp_protocol_len(&ARP_REQUEST, 19, &[16], Malformed)]
    #[case::arp_rarp_operation(&ARP_REQUEST, at::ARP_OPER, &[0, 3], Malformed)]
    #[case::ipv6_version(&IPV6_GLOBAL, 14, &[0x40], Malformed)]
    #[case::ipv6_payload_beyond_frame(&IPV6_GLOBAL, at::IPV6_PAYLOAD_LEN, &[0, 17], Truncated)]
    #[case::icmpv6_empty(&NDP_NS, at::IPV6_PAYLOAD_LEN, &[0, 0], Malformed)]
    #[case::ns_shorter_than_target(&NDP_NS, at::IPV6_PAYLOAD_LEN, &[0, 20], Malformed)]
    #[case::dad_ns_shorter_than_target(&DAD_NS, at::IPV6_PAYLOAD_LEN, &[0, 20], Malformed)]
    #[case::na_shorter_than_target(&NDP_NA, at::IPV6_PAYLOAD_LEN, &[0, 8], Malformed)]
    #[case::nd_option_zero_length(&NDP_NS, at::NS_NA_OPTION + 1, &[0], Malformed)]
    #[case::nd_option_overrun(&NDP_NS, at::NS_NA_OPTION + 1, &[2], Malformed)]
    #[case::nd_option_cut_short(&NDP_NA, at::IPV6_PAYLOAD_LEN, &[0, 28], Malformed)]
    #[case::hbh_beyond_payload(&MLD_REPORT_DAD, at::ICMPV6 + 1, &[9], Malformed)]
    #[case::vlan_8021q(&IPV4_UDP, at::ETHERTYPE, &[0x81, 0x00], UnsupportedEtherType)]
    #[case::vlan_8021ad(&IPV4_UDP, at::ETHERTYPE, &[0x88, 0xa8], UnsupportedEtherType)]
    #[case::lldp(&ARP_REQUEST, at::ETHERTYPE, &[0x88, 0xcc], UnsupportedEtherType)]
    #[case::rarp(&ARP_REQUEST, at::ETHERTYPE, &[0x80, 0x35], UnsupportedEtherType)]
    #[case::ieee_8023_length(&ARP_REQUEST, at::ETHERTYPE, &[0x00, 0x1c], UnsupportedEtherType)]
    fn broken_frames_drop(
        #[case] frame: &[u8],
        #[case] offset: usize,
        #[case] bytes: &[u8],
        #[case] reason: DropReason,
    ) {
        assert_eq!(check_from(A1, &patched(frame, offset, bytes)), Err(reason));
    }

    #[test]
    fn a_dhcp_request_too_short_to_name_its_client_is_malformed() {
        // UDP 68 → 67 with 100 bytes of DHCP: less than the fixed part holding `chaddr`.
        let mut short = DHCP_DISCOVER[..14 + 20 + 8 + 100].to_vec();
        short[at::IPV4_TOTAL_LEN..at::IPV4_TOTAL_LEN + 2].copy_from_slice(&128u16.to_be_bytes());
        assert_eq!(check_from(A1, &short), Err(Malformed));
    }

    #[test]
    fn every_nd_option_is_checked_not_just_the_first() {
        let mut foreign = vec![1, 1];
        foreign.extend_from_slice(&A2_MAC);
        assert_eq!(
            check_from(A1, &with_appended(&NDP_NS, &foreign)),
            Err(SpoofedIpv6)
        );
        let mut own = vec![2, 1];
        own.extend_from_slice(&A1_MAC);
        assert_eq!(check_from(A1, &with_appended(&NDP_NA, &own)), Ok(()));
    }

    #[test]
    fn link_layer_option_longer_than_ethernet_is_malformed() {
        // A 16-octet SLLA whose first six octets are the port's MAC.
        let frame = with_appended(&ROUTER_SOLICIT, &[0; 8]);
        let frame = patched(&frame, at::RS_OPTION + 1, &[2]);
        assert_eq!(check_from(A1, &frame), Err(Malformed));
    }

    #[test]
    fn dad_with_a_nonce_option_passes() {
        // Linux's enhanced DAD adds a Nonce option (RFC 7527, type 14).
        let frame = with_appended(&DAD_NS, &[14, 1, 1, 2, 3, 4, 5, 6]);
        assert_eq!(check_from(A1, &frame), Ok(()));
    }

    #[test]
    fn dad_for_the_link_local_address_passes() {
        let frame = patched(&DAD_NS, at::ND_TARGET, &v6("fe80::ff:fe00:1"));
        assert_eq!(check_from(A1, &frame), Ok(()));
    }

    #[test]
    fn nd_hidden_behind_extension_headers_at_hop_limit_255_drops() {
        assert_eq!(
            check_from(A1, &behind_dest_opts(&ROUTER_ADVERT, 255)),
            Err(SpoofedIpv6)
        );
        // Even an innocent payload: the guard does not walk the chain to find out.
        assert_eq!(
            check_from(A1, &behind_dest_opts(&IPV6_GLOBAL_UDP, 255)),
            Err(SpoofedIpv6)
        );
        let fragment = patched(&behind_dest_opts(&NDP_NA, 255), at::IPV6_NEXT_HEADER, &[44]);
        assert_eq!(check_from(A1, &fragment), Err(SpoofedIpv6));
    }

    #[test]
    fn extension_headers_below_hop_limit_255_pass_unexamined() {
        // Receivers ignore ND whose hop limit is not 255, so there is nothing to guard.
        assert_eq!(
            check_from(A1, &behind_dest_opts(&ROUTER_ADVERT, 64)),
            Ok(())
        );
        assert_eq!(
            check_from(A1, &behind_dest_opts(&IPV6_GLOBAL_UDP, 64)),
            Ok(())
        );
        // And a transport header straight after IPv6 at 255 (GTSM, RFC 5082) is fine.
        let gtsm = patched(&IPV6_GLOBAL_UDP, at::IPV6_HOP_LIMIT, &[255]);
        assert_eq!(check_from(A1, &gtsm), Ok(()));
    }

    #[test]
    fn port_without_ipv6_passes_only_link_local_and_dad() {
        let from_a2 = |frame: &[u8], src: &str| {
            let frame = patched(frame, at::ETH_SRC, &A2_MAC);
            patched(&frame, at::IPV6_SRC, &v6(src))
        };
        let global = from_a2(&IPV6_GLOBAL_UDP, "fd00::2");
        assert_eq!(check_from(A2, &global), Err(SpoofedIpv6));
        let link_local = from_a2(&IPV6_GLOBAL_UDP, "fe80::ff:fe00:2");
        assert_eq!(check_from(A2, &link_local), Ok(()));
        let ns = patched(
            &from_a2(&NDP_NS, "fe80::ff:fe00:2"),
            at::NS_NA_OPTION + 2,
            &A2_MAC,
        );
        assert_eq!(check_from(A2, &ns), Ok(()));
        let dad = from_a2(&DAD_NS, "::");
        assert_eq!(
            check_from(A2, &dad),
            Err(SpoofedIpv6),
            "target fd00::1 is a1's"
        );
        let dad = patched(&dad, at::ND_TARGET, &v6("fe80::ff:fe00:2"));
        assert_eq!(check_from(A2, &dad), Ok(()));
    }

    #[test]
    fn same_addresses_pass_on_another_tenants_port() {
        // b1 has a1's IPv4 and IPv6 addresses in its own tenant; only the MAC differs.
        for frame in [&IPV4_UDP[..], &ARP_REPLY, &IPV6_GLOBAL, &DAD_NS] {
            let frame = patched(frame, at::ETH_SRC, &B1_MAC);
            let frame = if frame[at::ETHERTYPE..at::ETHERTYPE + 2] == [0x08, 0x06] {
                patched(&frame, at::ARP_SHA, &B1_MAC)
            } else {
                frame
            };
            assert_eq!(check_from(B1, &frame), Ok(()));
            assert_eq!(check_from(A1, &frame), Err(SpoofedMac));
        }
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        for frame in [
            &ARP_REQUEST[..],
            &IPV4_UDP,
            &NDP_NS,
            &DAD_NS,
            &MLD_REPORT_DAD,
        ] {
            let mut padded = frame.to_vec();
            padded.resize(frame.len().max(60), 0);
            padded.extend_from_slice(&[0xee; 4]);
            assert_eq!(check_from(A1, &padded), Ok(()));
        }
    }

    #[test]
    fn length_limits_follow_the_port_mtu() {
        // A 1514-byte frame (MTU 1500) passes; one byte more is Oversized, before anything
        // else is read.
        let mut max = IPV4_UDP.to_vec();
        max.resize(1514, 0);
        let max = patched(&max, at::IPV4_TOTAL_LEN, &1500u16.to_be_bytes());
        assert_eq!(check_from(A1, &max), Ok(()));
        let mut over = max.clone();
        over.push(0);
        assert_eq!(check_from(A1, &over), Err(Oversized));
        assert_eq!(check_from(A1, &[0xff; 1515]), Err(Oversized));
        // b2 has MTU 9000.
        assert_eq!(facts(B2).max_frame_len, 9014);
        let mut jumbo = patched(&IPV4_UDP, at::ETH_SRC, &B2_MAC);
        jumbo.resize(9014, 0);
        let jumbo = patched(&jumbo, at::IPV4_TOTAL_LEN, &9000u16.to_be_bytes());
        let jumbo = patched(&jumbo, at::IPV4_SRC, &[10, 0, 0, 2]);
        assert_eq!(check_from(B2, &jumbo), Ok(()));
        let mut over = jumbo;
        over.push(0);
        assert_eq!(check_from(B2, &over), Err(Oversized));
    }

    #[test]
    fn shorter_than_an_ethernet_header_is_truncated() {
        for len in 0..14 {
            assert_eq!(check_from(A1, &ARP_REQUEST[..len]), Err(Truncated));
        }
    }

    #[test]
    fn facts_come_from_the_server() {
        let a1 = facts(A1);
        assert_eq!(a1.mac, MacAddr(A1_MAC));
        assert_eq!(a1.ipv4, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(a1.ipv6, Some("fd00::1".parse().unwrap()));
        assert_eq!(
            a1.ipv6_link_local,
            "fe80::ff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(a1.max_frame_len, 1514);
        assert_eq!(a1.tenant, ACME);
        assert_eq!(facts(A2).ipv6, None);
        assert!(a1.owns_ipv6(a1.ipv6_link_local) && !a1.owns_ipv6(Ipv6Addr::UNSPECIFIED));
    }
}
