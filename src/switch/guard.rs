//! Guard: anti-spoofing. A frame leaves its port only if every source address in it is the
//! port's own.
//!
//! Contract: [`check`] never panics and never allocates, whatever the bytes; it returns the
//! checked Ethernet frame, or the [`DropReason`] of the first rule the frame breaks:
//!
//! 1. Length: under 14 bytes is `Truncated`; over the port's `max_frame_len` is `Oversized`.
//! 2. The Ethernet source must be the port's MAC (`SpoofedMac`), before anything else is read.
//! 3. By EtherType; anything but IPv4, ARP and IPv6 (802.1Q/802.1ad tags, LLDP, 802.3 length
//!    fields...) is `UnsupportedEtherType`:
//!    - IPv4: version 4 and consistent header/total lengths (`Malformed`), all present
//!      (`Truncated`); source the port's IPv4 or `0.0.0.0` for DHCP (`SpoofedIpv4`).
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
//! the sender), destinations (the forward step's job), and IPv4 payloads (a server's own
//! DHCP server or ICMP redirects stay inside its tenant).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::stats::DropReason;
use crate::topology::{Server, TenantId};
use crate::wire::{
    ArpHardware, ArpOperation, ArpPacket, ETHERNET_HEADER_LEN, EthernetFrame, EthernetProtocol,
    IPV4_HEADER_LEN, IPV6_HEADER_LEN, Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv4Packet,
    Ipv6ExtHeader, Ipv6Packet, MacAddr, NdiscOptionType, NdiscOptions,
};

/// Bytes of an ARP packet before its addresses: hardware/protocol type and length, operation.
const ARP_FIXED_LEN: usize = 8;
/// ICMPv6 type of an MLDv1 report (RFC 2710); smoltcp names only the MLDv2 one.
const MLDV1_REPORT: u8 = 131;
/// Hop limit that Neighbour Discovery messages must carry to be accepted (RFC 4861).
const ND_HOP_LIMIT: u8 = 255;

/// What the guard knows about one port: the addresses it owns and its frame size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortFacts {
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
    /// Gather the facts about the port of `server`.
    pub(crate) fn new(server: &Server) -> PortFacts {
        PortFacts {
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
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
    if frame.len() > port.max_frame_len {
        return Err(DropReason::Oversized);
    }
    if MacAddr::from(eth.src_addr()) != port.mac {
        return Err(DropReason::SpoofedMac);
    }
    match eth.ethertype() {
        EthernetProtocol::Ipv4 => check_ipv4(port, eth.payload())?,
        EthernetProtocol::Arp => check_arp(port, eth.payload())?,
        EthernetProtocol::Ipv6 => check_ipv6(port, eth.payload())?,
        _ => return Err(DropReason::UnsupportedEtherType),
    }
    Ok(eth)
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
    let src = ip.src_addr();
    if src == port.ipv4 || src.is_unspecified() {
        Ok(())
    } else {
        Err(DropReason::SpoofedIpv4)
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
