//! The gateway in a running data path over in-memory ports: ARP, ping and DHCP as a server
//! sees them, and what it refuses.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use super::*;
use crate::datapath::harness::{ARRIVES, Loop, SILENT};
use crate::stats::DropReason;
use crate::switch::fixtures::*;

const GW_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 254);
const A1_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);

/// Run the fixture topology with acme's gateway as a real [`GatewayPort`].
fn start() -> Loop {
    let topology = with_gateway();
    let port = GatewayPort::of(&topology, ACME).expect("acme has a gateway");
    Loop::start(&topology, &[Offload::None; 8], vec![Box::new(port)])
}

/// An Ethernet frame from `src` to `dst` around a payload `emit` writes.
fn ethernet(
    src: [u8; 6],
    dst: [u8; 6],
    ethertype: EthernetProtocol,
    len: usize,
    emit: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: EthernetAddress(src),
        dst_addr: EthernetAddress(dst),
        ethertype,
    };
    let mut frame = vec![0u8; repr.buffer_len() + len];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    repr.emit(&mut eth);
    emit(eth.payload_mut());
    frame
}

/// An IPv4 packet from `src` to `dst` in a frame, around a payload `emit` writes.
#[allow(clippy::too_many_arguments)] // a frame has that many fields
fn ipv4(
    mac: ([u8; 6], [u8; 6]),
    src: Ipv4Address,
    dst: Ipv4Address,
    protocol: IpProtocol,
    len: usize,
    emit: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: protocol,
        payload_len: len,
        hop_limit: 64,
    };
    ethernet(
        mac.0,
        mac.1,
        EthernetProtocol::Ipv4,
        repr.buffer_len() + len,
        |b| {
            let mut ip = Ipv4Packet::new_unchecked(b);
            repr.emit(&mut ip, &ChecksumCapabilities::default());
            emit(ip.payload_mut());
        },
    )
}

fn arp_request(src_mac: [u8; 6], src_ip: Ipv4Address, target: Ipv4Address) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(src_mac),
        source_protocol_addr: src_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    ethernet(
        src_mac,
        [0xff; 6],
        EthernetProtocol::Arp,
        repr.buffer_len(),
        |b| {
            repr.emit(&mut ArpPacket::new_unchecked(b));
        },
    )
}

fn echo_request(src_mac: [u8; 6], src_ip: Ipv4Address) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data: b"ping the gateway",
    };
    let len = repr.buffer_len();
    ipv4(
        (src_mac, GW_MAC),
        src_ip,
        GW_IP,
        IpProtocol::Icmp,
        len,
        |b| {
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(b),
                &ChecksumCapabilities::default(),
            );
        },
    )
}

/// A DHCP client message from `src_mac` claiming hardware address `chaddr`.
fn dhcp(
    src_mac: [u8; 6],
    chaddr: [u8; 6],
    kind: DhcpMessageType,
    requested: Option<Ipv4Address>,
    server: Option<Ipv4Address>,
) -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: kind,
        transaction_id: 0x1234_5678,
        secs: 0,
        client_hardware_address: EthernetAddress(chaddr),
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: Ipv4Address::UNSPECIFIED,
        server_ip: Ipv4Address::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: false,
        requested_ip: requested,
        client_identifier: Some(EthernetAddress(chaddr)),
        server_identifier: server,
        parameter_request_list: Some(&[1, 3, 6]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    udp_frame(
        src_mac,
        [0xff; 6],
        Ipv4Address::UNSPECIFIED,
        Ipv4Address::BROADCAST,
        (68, 67),
        |len, b| {
            if let Some(b) = b {
                repr.emit(&mut DhcpPacket::new_unchecked(b)).unwrap();
            }
            len.max(repr.buffer_len())
        },
    )
}

/// A UDP datagram in a frame; `payload(0, None)` returns its length, then
/// `payload(len, Some(buffer))` writes it.
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Address,
    dst: Ipv4Address,
    ports: (u16, u16),
    payload: impl Fn(usize, Option<&mut [u8]>) -> usize,
) -> Vec<u8> {
    let len = payload(0, None);
    let repr = UdpRepr {
        src_port: ports.0,
        dst_port: ports.1,
    };
    ipv4(
        (src_mac, dst_mac),
        src,
        dst,
        IpProtocol::Udp,
        repr.header_len() + len,
        |b| {
            repr.emit(
                &mut UdpPacket::new_unchecked(b),
                &src.into(),
                &dst.into(),
                len,
                |p| {
                    payload(len, Some(p));
                },
                &ChecksumCapabilities::default(),
            );
        },
    )
}

/// The DHCP message in a frame, with the IPv4 header's addresses.
fn parse_dhcp(frame: &[u8]) -> (Ipv4Address, DhcpMessageType, Ipv4Address, Vec<u8>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
    let packet = DhcpPacket::new_checked(udp.payload()).unwrap();
    let repr = DhcpRepr::parse(&packet).unwrap();
    let mut summary = Vec::new();
    summary.extend(repr.subnet_mask.map(|m| m.octets()).unwrap_or_default());
    summary.extend(repr.router.map(|r| r.octets()).unwrap_or_default());
    summary.extend(repr.dns_servers.iter().flatten().flat_map(|d| d.octets()));
    assert_eq!(
        repr.lease_duration.is_some(),
        repr.message_type == DhcpMessageType::Offer || repr.message_type == DhcpMessageType::Ack
    );
    (ip.src_addr(), repr.message_type, repr.your_ip, summary)
}

#[test]
fn the_gateway_answers_arp_and_ping_for_its_address_and_only_in_its_tenant() {
    let run = start();
    run.peer(A1)
        .send(&arp_request(A1_MAC, A1_IP, GW_IP))
        .unwrap();
    let reply = run.peer(A1).recv(ARRIVES).expect("an ARP reply");
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        ..
    } = arp
    else {
        panic!("not Ethernet/IPv4 ARP")
    };
    assert_eq!(operation, ArpOperation::Reply);
    assert_eq!(
        (source_hardware_addr.0, source_protocol_addr),
        (GW_MAC, GW_IP)
    );
    // The ARP request was a broadcast: a2 saw it too; nothing reached tenant blue.
    assert!(run.peer(A2).recv(ARRIVES).is_some());

    run.peer(A1).send(&echo_request(A1_MAC, A1_IP)).unwrap();
    let reply = run.peer(A1).recv(ARRIVES).expect("an echo reply");
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let icmp = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
    assert!(matches!(
        icmp,
        Icmpv4Repr::EchoReply {
            ident: 7,
            seq_no: 1,
            ..
        }
    ));
    assert_eq!(
        (eth.src_addr().0, ip.src_addr(), ip.dst_addr()),
        (GW_MAC, GW_IP, A1_IP)
    );

    // Blue has no gateway: its ARP for the same address gets nothing.
    let blue = arp_request(B1_MAC, A1_IP, GW_IP);
    run.peer(B1).send(&blue).unwrap();
    assert!(
        run.peer(B2).recv(ARRIVES).is_some(),
        "blue's broadcast stays in blue"
    );
    for port in [B1, B2, A2] {
        assert_eq!(run.peer(port).recv(SILENT), None, "{port} got a frame");
    }
}

#[test]
fn dhcp_hands_each_server_its_own_lease_from_the_topology() {
    let run = start();
    let discover = dhcp(A1_MAC, A1_MAC, DhcpMessageType::Discover, None, None);
    run.peer(A1).send(&discover).unwrap();
    let offer = run.peer(A1).recv(ARRIVES).expect("an offer");
    let (from, kind, yiaddr, options) = parse_dhcp(&offer);
    assert_eq!((from, kind, yiaddr), (GW_IP, DhcpMessageType::Offer, A1_IP));
    // Mask /24, router the gateway, DNS from the topology.
    assert_eq!(options, [255, 255, 255, 0, 10, 0, 0, 254, 192, 0, 2, 53]);

    let request = dhcp(
        A1_MAC,
        A1_MAC,
        DhcpMessageType::Request,
        Some(A1_IP),
        Some(GW_IP),
    );
    run.peer(A1).send(&request).unwrap();
    let ack = loop {
        let frame = run.peer(A1).recv(ARRIVES).expect("an ack");
        if parse_dhcp(&frame).1 != DhcpMessageType::Offer {
            break frame;
        }
    };
    assert_eq!(parse_dhcp(&ack).1, DhcpMessageType::Ack);
    assert_eq!(parse_dhcp(&ack).2, A1_IP);

    // Asking for another address is refused.
    let other = Ipv4Address::new(10, 0, 0, 2);
    let greedy = dhcp(
        A1_MAC,
        A1_MAC,
        DhcpMessageType::Request,
        Some(other),
        Some(GW_IP),
    );
    run.peer(A1).send(&greedy).unwrap();
    let nak = run.peer(A1).recv(ARRIVES).expect("a nak");
    assert_eq!(parse_dhcp(&nak).1, DhcpMessageType::Nak);
}

#[test]
fn a_dhcp_request_for_another_servers_mac_gets_nothing_and_is_counted() {
    let run = start();
    // a1 asks in a2's name (its frame's source MAC is its own): the switch's guard drops it.
    let stolen = dhcp(A1_MAC, A2_MAC, DhcpMessageType::Discover, None, None);
    run.peer(A1).send(&stolen).unwrap();
    run.wait_drop(A1, DropReason::SpoofedMac);
    assert_eq!(run.peer(A1).recv(SILENT), None);
    // a2 itself still gets its lease.
    run.peer(A2)
        .send(&dhcp(A2_MAC, A2_MAC, DhcpMessageType::Discover, None, None))
        .unwrap();
    let offer = loop {
        let frame = run.peer(A2).recv(ARRIVES).expect("an offer for a2");
        if EthernetFrame::new_checked(&frame[..]).unwrap().src_addr().0 == GW_MAC {
            break frame;
        }
    };
    assert_eq!(parse_dhcp(&offer).2, Ipv4Address::new(10, 0, 0, 2));
}

#[test]
fn a_dhcp_answer_from_a_server_is_dropped_as_rogue() {
    let run = start();
    let rogue = udp_frame(
        A1_MAC,
        [0xff; 6],
        A1_IP,
        Ipv4Address::BROADCAST,
        (67, 68),
        |len, b| {
            if let Some(b) = b {
                b.fill(0);
            }
            len.max(300)
        },
    );
    run.peer(A1).send(&rogue).unwrap();
    run.wait_drop(A1, DropReason::RogueDhcp);
    assert_eq!(run.peer(A2).recv(SILENT), None);
    // And a server without an address may send nothing but DHCP requests.
    let unaddressed = echo_request(A1_MAC, Ipv4Address::UNSPECIFIED);
    run.peer(A1).send(&unaddressed).unwrap();
    run.wait_drop(A1, DropReason::SpoofedIpv4);
}
