//! The event loop over in-memory ports: forwarding, isolation, counters, live updates,
//! offload conversion and deadline ports, all without root.

use std::time::Duration;

use super::harness::{ARRIVES, Loop, SILENT};
use super::*;
use crate::port::MemoryPort;
use crate::switch::fixtures::*;
use crate::wire::vnet::{F_NEEDS_CSUM, GSO_TCPV4};

/// `frame` (from a1) as sent by a2: its MAC, ARP sender and IPv4 source.
fn from_a2(frame: &[u8]) -> Vec<u8> {
    let frame = patched(frame, at::ETH_SRC, &A2_MAC);
    if frame[at::ETHERTYPE..at::ETHERTYPE + 2] == [0x08, 0x06] {
        let frame = patched(&frame, at::ARP_SHA, &A2_MAC);
        patched(&frame, at::ARP_SPA, &[10, 0, 0, 2])
    } else {
        frame
    }
}

#[test]
fn frames_reach_their_tenants_ports_only_and_every_drop_is_counted() {
    let run = Loop::start(&topology(), &[Offload::None; 4], Vec::new());
    // Unicast within the tenant.
    run.peer(A1).send(&IPV4_ICMP).unwrap();
    assert_eq!(run.peer(A2).recv(ARRIVES).as_deref(), Some(&IPV4_ICMP[..]));
    // Broadcast: the tenant's other port, not the sender, not the other tenant.
    run.peer(A1).send(&ARP_REQUEST).unwrap();
    assert_eq!(
        run.peer(A2).recv(ARRIVES).as_deref(),
        Some(&ARP_REQUEST[..])
    );
    // To another tenant's MAC: nowhere, counted.
    run.peer(A1)
        .send(&patched(&IPV4_ICMP, at::ETH_DST, &B2_MAC))
        .unwrap();
    run.wait_drop(A1, DropReason::UnknownDestination);
    // Spoofed by a2 as a1: dropped, counted on a2 and its tenant.
    run.peer(A2).send(&IPV4_ICMP).unwrap();
    run.wait_drop(A2, DropReason::SpoofedMac);
    assert!(run.stats.tenants[ACME.index()].drops(DropReason::SpoofedMac) >= 1);
    for port in [A1, B1, B2] {
        assert_eq!(run.peer(port).recv(SILENT), None, "{port} got a frame");
    }
    let a1 = run.stats.ports[A1.index()].snapshot();
    let a2 = run.stats.ports[A2.index()].snapshot();
    assert_eq!((a1.rx_frames, a2.tx_frames), (3, 2));
    assert_eq!(run.stats.tenants[BLUE.index()].snapshot().rx_frames, 0);
}

#[test]
fn live_updates_add_and_remove_ports_between_batches() {
    let full = topology();
    let mut without_a2 = full.clone();
    without_a2.servers.retain(|s| s.id != A2);
    let mut run = Loop::start(&without_a2, &[Offload::None; 4], Vec::new());
    run.peer(A1).send(&IPV4_ICMP).unwrap();
    run.wait_drop(A1, DropReason::UnknownDestination);

    let (port, peer) = MemoryPort::pair(A2, Offload::None).unwrap();
    let removed = run.apply(Update {
        add: vec![Box::new(port)],
        switch: Some(Switch::new(&full)),
        shaper: Some(crate::shaper::Shaping::from_topology(&full)),
        ..Update::default()
    });
    assert!(removed.is_empty());
    run.peers[A2.index()] = Some(peer);
    run.peer(A1).send(&IPV4_ICMP).unwrap();
    assert_eq!(run.peer(A2).recv(ARRIVES).as_deref(), Some(&IPV4_ICMP[..]));

    let removed = run.apply(Update {
        remove: vec![A2],
        switch: Some(Switch::new(&without_a2)),
        shaper: Some(crate::shaper::Shaping::from_topology(&without_a2)),
        ..Update::default()
    });
    assert_eq!(removed.iter().map(|p| p.id()).collect::<Vec<_>>(), [A2]);
    drop(removed);
    run.peer(A1).send(&IPV4_ICMP).unwrap();
    let deadline = Instant::now() + ARRIVES;
    while run.stats.ports[A1.index()].drops(DropReason::UnknownDestination) < 2 {
        assert!(
            Instant::now() < deadline,
            "the removed port still got frames"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The other ports were never disturbed.
    run.peer(B1)
        .send(&patched(
            &patched(&IPV4_UDP, at::ETH_SRC, &B1_MAC),
            at::ETH_DST,
            &B2_MAC,
        ))
        .unwrap();
    assert!(run.peer(B2).recv(ARRIVES).is_some());
}

/// A virtio-net header asking for the checksum at `csum_start + csum_offset`.
fn needs_csum(csum_start: u16, csum_offset: u16) -> [u8; VNET_HDR_LEN] {
    let mut header = [0u8; VNET_HDR_LEN];
    header[0] = F_NEEDS_CSUM;
    header[6..8].copy_from_slice(&csum_start.to_le_bytes());
    header[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    header
}

#[test]
fn frames_are_converted_between_ports_with_and_without_offloads() {
    // a1 speaks virtio-net headers (a TAP with offloads), a2 plain frames.
    let offloads = [
        Offload::VnetHeader,
        Offload::None,
        Offload::None,
        Offload::None,
    ];
    let run = Loop::start(&topology(), &offloads, Vec::new());
    // A UDP frame whose checksum a1's kernel left to the NIC: a2 gets it complete.
    const UDP_CSUM: usize = 14 + 20 + 6;
    let checksum = [IPV4_UDP[UDP_CSUM], IPV4_UDP[UDP_CSUM + 1]];
    assert_ne!(checksum, [0, 0], "the fixture has its checksum");
    let pseudo = smoltcp::wire::checksum::pseudo_header_v4(
        &smoltcp::wire::Ipv4Address::new(10, 0, 0, 1),
        &smoltcp::wire::Ipv4Address::new(10, 0, 0, 2),
        smoltcp::wire::IpProtocol::Udp,
        u32::try_from(IPV4_UDP.len() - 34).unwrap(),
    );
    let partial = patched(&IPV4_UDP, UDP_CSUM, &pseudo.to_be_bytes());
    let mut sent = needs_csum(34, 6).to_vec();
    sent.extend_from_slice(&partial);
    run.peer(A1).send(&sent).unwrap();
    assert_eq!(run.peer(A2).recv(ARRIVES).as_deref(), Some(&IPV4_UDP[..]));

    // a2's plain broadcast reaches a1 behind an empty header.
    let request = from_a2(&ARP_REQUEST);
    run.peer(A2).send(&request).unwrap();
    let got = run.peer(A1).recv(ARRIVES).expect("a1 got a2's broadcast");
    assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
    assert_eq!(&got[VNET_HDR_LEN..], &request[..]);

    // A GSO super-frame cannot go to a port without offloads: dropped there, counted.
    let mut gso = needs_csum(34, 16);
    gso[1] = GSO_TCPV4;
    gso[4..6].copy_from_slice(&1448u16.to_le_bytes());
    let mut big = IPV4_TCP.to_vec();
    big.resize(3000, 0);
    let total = u16::try_from(3000 - 14).unwrap().to_be_bytes();
    big[at::IPV4_TOTAL_LEN..at::IPV4_TOTAL_LEN + 2].copy_from_slice(&total);
    let mut sent = gso.to_vec();
    sent.extend_from_slice(&big);
    run.peer(A1).send(&sent).unwrap();
    run.wait_drop(A2, DropReason::GsoUnsupported);
    assert_eq!(run.peer(A2).recv(SILENT), None);
}

/// A port without an fd that, some time after each frame written to it, answers with
/// `answer`: it needs the loop to call `poll` first at once (to learn the time), then at
/// the deadline it sets.
#[derive(Debug)]
struct LateAnswer {
    id: PortId,
    answer: Vec<u8>,
    delay: Nanos,
    /// A frame came in and the answer's time is not set yet.
    heard: bool,
    answer_at: Option<Nanos>,
    outbox: Option<Vec<u8>>,
    answered_at: Arc<std::sync::Mutex<Vec<Nanos>>>,
}

impl Port for LateAnswer {
    fn id(&self) -> PortId {
        self.id
    }

    fn offload(&self) -> Offload {
        Offload::None
    }

    fn fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.outbox.take().ok_or(io::ErrorKind::WouldBlock)?;
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }

    fn write(&mut self, _frame: &[u8]) -> io::Result<()> {
        self.heard = true;
        Ok(())
    }

    fn poll_at(&self) -> Option<Nanos> {
        if self.heard { Some(0) } else { self.answer_at }
    }

    fn poll(&mut self, now: Nanos) {
        if std::mem::take(&mut self.heard) {
            self.answer_at = Some(now + self.delay);
        } else if self.answer_at.is_some_and(|at| at <= now) {
            self.answer_at = None;
            self.outbox = Some(self.answer.clone());
            self.answered_at.lock().unwrap().push(now);
        }
    }
}

#[test]
fn a_port_without_an_fd_is_driven_by_its_deadline() {
    let answered_at = Arc::new(std::sync::Mutex::new(Vec::new()));
    let late = LateAnswer {
        id: A2,
        answer: from_a2(&ARP_REQUEST),
        delay: 30_000_000,
        heard: false,
        answer_at: None,
        outbox: None,
        answered_at: answered_at.clone(),
    };
    // a2's I/O is the late answerer; the switch guards its answer as a2's.
    let run = Loop::start(&topology(), &[Offload::None; 4], vec![Box::new(late)]);
    let sent = Instant::now();
    run.peer(A1).send(&IPV4_ICMP).unwrap();
    let got = run.peer(A1).recv(ARRIVES).expect("the answer came");
    let waited = sent.elapsed();
    assert_eq!(got, from_a2(&ARP_REQUEST));
    assert!(
        waited >= Duration::from_millis(30),
        "answered after {waited:?}"
    );
    assert_eq!(answered_at.lock().unwrap().len(), 1);
}

/// Issue 11: a 9000-byte frame from a server with MTU 9000 reached one with MTU 1280.
#[test]
fn a_frame_longer_than_the_destinations_mtu_is_dropped_there_and_counted() {
    let run = Loop::start(&topology(), &[Offload::None; 4], Vec::new());
    // b2 (MTU 9000) → b1 (MTU 1500): 9000 bytes of IPv4/UDP from b2's own addresses.
    let mut jumbo = patched(&IPV4_UDP, at::ETH_SRC, &B2_MAC);
    jumbo = patched(&jumbo, at::ETH_DST, &B1_MAC);
    jumbo = patched(&jumbo, at::IPV4_SRC, &[10, 0, 0, 2]);
    jumbo.resize(9000 + 14, 0);
    let total = u16::try_from(9000).unwrap().to_be_bytes();
    jumbo[at::IPV4_TOTAL_LEN..at::IPV4_TOTAL_LEN + 2].copy_from_slice(&total);
    run.peer(B2).send(&jumbo).unwrap();
    run.wait_drop(B1, DropReason::TooBig);
    assert_eq!(run.peer(B1).recv(SILENT), None);
    // A frame that fits still goes.
    let fits = &jumbo[..1500 + 14];
    let mut fits = fits.to_vec();
    let total = u16::try_from(1500).unwrap().to_be_bytes();
    fits[at::IPV4_TOTAL_LEN..at::IPV4_TOTAL_LEN + 2].copy_from_slice(&total);
    run.peer(B2).send(&fits).unwrap();
    assert_eq!(run.peer(B1).recv(ARRIVES).map(|f| f.len()), Some(1514));
}

/// A memory port for `id` handed to the loop, and its peer.
fn memory_port(id: PortId) -> (Box<dyn Port>, crate::port::MemoryPeer) {
    let (port, peer) = MemoryPort::pair(id, Offload::None).unwrap();
    (Box::new(port), peer)
}

#[test]
fn routed_packets_go_up_through_the_uplink_and_come_down_to_the_server_owning_the_address() {
    let topology = with_uplink();
    let (gateway, gateway_peer) = memory_port(GW);
    let (uplink, uplink_peer) = memory_port(UP);
    let run = Loop::start(&topology, &[Offload::None; 4], vec![gateway, uplink]);
    // a1 → the internet, through its gateway's MAC: the uplink takes it as it is.
    let to_internet = patched(&IPV4_ICMP, at::ETH_DST, &GW_MAC);
    let to_internet = patched(&to_internet, at::IPV4_DST, &[192, 0, 2, 1]);
    run.peer(A1).send(&to_internet).unwrap();
    assert_eq!(uplink_peer.recv(ARRIVES).as_deref(), Some(&to_internet[..]));
    // a1 → the gateway's own address: the gateway answers it, the uplink never sees it.
    let to_gateway = patched(&IPV4_ICMP, at::ETH_DST, &GW_MAC);
    let to_gateway = patched(&to_gateway, at::IPV4_DST, &[10, 0, 0, 254]);
    run.peer(A1).send(&to_gateway).unwrap();
    assert_eq!(gateway_peer.recv(ARRIVES), Some(to_gateway));
    // A broadcast reaches the gateway, never the uplink.
    run.peer(A1).send(&ARP_REQUEST).unwrap();
    assert!(gateway_peer.recv(ARRIVES).is_some());
    assert!(run.peer(A2).recv(ARRIVES).is_some());
    assert_eq!(uplink_peer.recv(SILENT), None, "a flood reached the uplink");
    // The internet → a2: the uplink's frame (destination MAC left zero) reaches a2 with a2's MAC.
    let from_internet = patched(&IPV4_ICMP, at::ETH_DST, &[0; 6]);
    let from_internet = patched(&from_internet, at::ETH_SRC, &GW_MAC);
    let from_internet = patched(&from_internet, at::IPV4_SRC, &[192, 0, 2, 1]);
    uplink_peer.send(&from_internet).unwrap();
    let got = run
        .peer(A2)
        .recv(ARRIVES)
        .expect("a2 gets the routed packet");
    assert_eq!(got, patched(&from_internet, at::ETH_DST, &A2_MAC));
    // To an address no server of the tenant owns: dropped and counted on the uplink port.
    let nobody = patched(&from_internet, at::IPV4_DST, &[10, 0, 0, 99]);
    uplink_peer.send(&nobody).unwrap();
    run.wait_drop(UP, DropReason::UnknownDestination);
    // b1 has the same address as a1 but no route: blue's frames to acme's gateway go nowhere.
    let from_b1 = patched(&to_internet, at::ETH_SRC, &B1_MAC);
    run.peer(B1).send(&from_b1).unwrap();
    run.wait_drop(B1, DropReason::UnknownDestination);
    assert_eq!(uplink_peer.recv(SILENT), None, "blue reached acme's uplink");
    // Upload and download were charged to acme on the uplink's shapers, not the host's.
    let deadline = Instant::now() + ARRIVES;
    loop {
        let up = run.stats.upload[ACME.index()].snapshot();
        let down = run.stats.download[ACME.index()].snapshot();
        if up.own_bytes + up.borrowed_bytes > 0 && down.own_bytes + down.borrowed_bytes > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uplink shapers charged nothing: {up:?} {down:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
