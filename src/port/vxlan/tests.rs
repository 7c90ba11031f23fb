// Test data: patterns of bytes and small counts, cut to width on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::time::Duration;

use super::*;
use crate::wire::vnet::{F_NEEDS_CSUM, GSO_TCPV4};

const VNI: u32 = 1001;
const REMOTE_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb1]);
const LOCAL_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa1]);
const REMOTE_PORT: PortId = PortId(7);

/// A tunnel on 127.0.0.1 whose one remote server (port 7, VNI 1001) is behind `peer`.
fn tunnel(offload: Offload) -> (VxlanPort, UdpSocket, Arc<TunnelCounters>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let peer = UdpSocket::bind("127.0.0.2:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let std::net::SocketAddr::V4(endpoint) = peer.local_addr().unwrap() else {
        unreachable!()
    };
    let mut table = TunnelTable::default();
    table.hosts.insert(*endpoint.ip());
    table.vnis.insert(VNI);
    table.to.insert(REMOTE_PORT, (endpoint, VNI));
    table
        .from
        .insert((*endpoint.ip(), VNI, REMOTE_MAC), REMOTE_PORT);
    let counters = Arc::new(TunnelCounters::default());
    let port = VxlanPort::new(socket, table, offload, counters.clone()).unwrap();
    (port, peer, counters)
}

/// An Ethernet frame from `src` to `dst` with an IPv4/UDP payload of `len` bytes.
fn frame(src: MacAddr, dst: MacAddr, len: usize) -> Vec<u8> {
    let mut f = dst.octets().to_vec();
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((0..len).map(|i| i as u8));
    f
}

fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; VXLAN_HEADER_LEN];
    put_header(&mut d, vni);
    d.extend_from_slice(inner);
    d
}

/// Read one frame from the tunnel, waiting for it to arrive.
fn read(port: &mut VxlanPort) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    for _ in 0..200 {
        match port.read(&mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("nothing read");
}

#[test]
fn a_frame_leaves_as_rfc_7348_vxlan_to_its_servers_host() {
    let (mut port, peer, counters) = tunnel(Offload::None);
    assert_eq!(port.carries(), [REMOTE_PORT]);
    let inner = frame(LOCAL_MAC, REMOTE_MAC, 100);
    port.write_to(REMOTE_PORT, &inner).unwrap();
    port.flush();
    let mut buf = [0u8; 2000];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(
        &buf[..8],
        &[0x08, 0, 0, 0, 0, 0x03, 0xe9, 0],
        "flags, VNI 1001"
    );
    assert_eq!(&buf[8..n], &inner[..]);
    assert_eq!(
        counters
            .tx_datagrams
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        port.write_to(PortId(8), &inner).is_err(),
        "no such remote server"
    );
    assert!(
        port.write(&inner).is_err(),
        "the tunnel needs a destination"
    );
}

/// Receive every datagram waiting at `peer` (which waits at most 2 s for the first).
fn received(peer: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2000];
    while let Ok(n) = peer.recv(&mut buf) {
        got.push(buf[..n].to_vec());
        peer.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
    }
    got
}

#[test]
fn small_frames_to_one_host_are_held_until_the_flush_and_keep_their_order() {
    let (mut port, peer, counters) = tunnel(Offload::None);
    assert!(port.holds_writes());
    // Equal frames join one send; a shorter one closes it; a longer one starts the next.
    let lens = [60, 60, 60, 40, 60, 80, 80];
    let frames: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let mut f = frame(LOCAL_MAC, REMOTE_MAC, len);
            f[14] = i as u8; // which frame, to check the order
            f
        })
        .collect();
    for f in &frames {
        port.write_to(REMOTE_PORT, f).unwrap();
    }
    let inner = |datagrams: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        datagrams
            .into_iter()
            .map(|d| d[VXLAN_HEADER_LEN..].to_vec())
            .collect()
    };
    peer.set_nonblocking(true).unwrap();
    // The shorter fourth frame sent its group; the longer sixth sent the fifth.
    assert_eq!(inner(received(&peer)), frames[..5]);
    port.flush();
    peer.set_nonblocking(false).unwrap();
    assert_eq!(inner(received(&peer)), frames[5..], "the rest at the flush");
    let tx = counters
        .tx_datagrams
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(tx, 7);
    port.flush();
    assert!(received(&peer).is_empty(), "a second flush sends nothing");
}

#[test]
fn held_frames_leave_before_a_super_frame_to_the_same_host() {
    let (mut port, peer, _) = tunnel(Offload::VnetHeader);
    let mut small = vec![0u8; VNET_HDR_LEN];
    small.extend_from_slice(&frame(LOCAL_MAC, REMOTE_MAC, 50));
    port.write_to(REMOTE_PORT, &small).unwrap();
    port.write_to(REMOTE_PORT, &super_frame()).unwrap();
    let got = received(&peer);
    let sizes: Vec<usize> = got.iter().map(|d| d.len() - VXLAN_HEADER_LEN).collect();
    assert_eq!(sizes, [64, 1452, 1452, 1452, 54 + 5000 - 3 * 1398]);
}

#[test]
fn only_its_tenants_servers_on_their_own_host_get_through() {
    let (mut port, peer, counters) = tunnel(Offload::VnetHeader);
    let me = port.socket.local_addr().unwrap();
    let stranger = UdpSocket::bind("127.0.0.3:0").unwrap();
    let good = frame(REMOTE_MAC, LOCAL_MAC, 60);
    stranger.send_to(&vxlan(VNI, &good), me).unwrap();
    peer.send_to(&vxlan(VNI + 1, &good), me).unwrap();
    peer.send_to(
        &vxlan(VNI, &frame(MacAddr([2, 0, 0, 0, 0, 0xee]), LOCAL_MAC, 60)),
        me,
    )
    .unwrap();
    peer.send_to(&[0x08, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3], me)
        .unwrap();
    let mut no_flag = vxlan(VNI, &good);
    no_flag[0] = 0;
    peer.send_to(&no_flag, me).unwrap();
    peer.send_to(&vxlan(VNI, &good), me).unwrap();
    let got = read(&mut port);
    assert_eq!(
        &got[..VNET_HDR_LEN],
        &[0; VNET_HDR_LEN],
        "whole checksums, no GSO"
    );
    assert_eq!(&got[VNET_HDR_LEN..], &good[..]);
    assert_eq!(port.last_ingress(), REMOTE_PORT);
    assert_eq!(counters.drops(TunnelDrop::NotAHost), 1);
    assert_eq!(counters.drops(TunnelDrop::UnknownVni), 1);
    assert_eq!(counters.drops(TunnelDrop::UnknownSender), 1);
    assert_eq!(counters.drops(TunnelDrop::Malformed), 2);
    let mut buf = [0u8; 2000];
    assert_eq!(
        port.read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
}

/// A TCP/IPv4 super-frame from LOCAL to REMOTE with 5000 payload bytes cut at 1398, behind
/// its virtio-net header.
fn super_frame() -> Vec<u8> {
    let mut inner = frame(LOCAL_MAC, REMOTE_MAC, 0);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 1, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 1, 0, 2]);
    inner.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    inner.extend_from_slice(&tcp);
    inner.extend((0..5000).map(|i| (i % 13) as u8));
    let vnet = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        gso_size: 1398,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut with_header = vec![0u8; VNET_HDR_LEN];
    with_header[0] = vnet.flags;
    with_header[1] = vnet.gso_type;
    with_header[4..6].copy_from_slice(&vnet.gso_size.to_le_bytes());
    with_header[6..8].copy_from_slice(&vnet.csum_start.to_le_bytes());
    with_header[8..10].copy_from_slice(&vnet.csum_offset.to_le_bytes());
    with_header.extend_from_slice(&inner);
    with_header
}

#[test]
fn a_super_frame_leaves_as_one_datagram_per_segment() {
    let (mut port, peer, counters) = tunnel(Offload::VnetHeader);
    port.write_to(REMOTE_PORT, &super_frame()).unwrap();
    let mut sizes = Vec::new();
    let mut buf = [0u8; 2000];
    for _ in 0..4 {
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..8], &[0x08, 0, 0, 0, 0, 0x03, 0xe9, 0]);
        sizes.push(n - 8);
    }
    // Each segment: 54 bytes of headers and at most 1398 of payload (the tunnel MTU 1450).
    assert_eq!(sizes, [1452, 1452, 1452, 54 + 5000 - 3 * 1398]);
    assert_eq!(
        counters
            .tx_datagrams
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}

#[test]
fn segments_arriving_together_are_merged_back_into_the_super_frame() {
    use nix::sys::socket::{setsockopt, sockopt};
    // Two tunnels facing each other: `a` sends as LOCAL to REMOTE, `b` takes REMOTE's
    // frames from `a`'s address.
    let (mut a, peer, _) = tunnel(Offload::VnetHeader);
    let b_socket = peer;
    b_socket.set_nonblocking(true).unwrap();
    setsockopt(&b_socket, sockopt::UdpGroSegment, &true).unwrap();
    let std::net::SocketAddr::V4(a_addr) = a.socket.local_addr().unwrap() else {
        unreachable!()
    };
    let mut table = TunnelTable::default();
    table.hosts.insert(*a_addr.ip());
    table.vnis.insert(VNI);
    table.to.insert(PortId(3), (a_addr, VNI));
    table.from.insert((*a_addr.ip(), VNI, LOCAL_MAC), PortId(3));
    let counters = Arc::new(TunnelCounters::default());
    let mut b = VxlanPort::new(b_socket, table, Offload::VnetHeader, counters.clone()).unwrap();
    let sent = super_frame();
    a.write_to(REMOTE_PORT, &sent).unwrap();
    let got = read(&mut b);
    assert_eq!(b.last_ingress(), PortId(3));
    let header = VnetHeader::parse(&got).unwrap();
    assert_eq!((header.gso_type, header.gso_size), (GSO_TCPV4, 1398));
    assert_eq!(got.len(), sent.len(), "one frame, as long as the one sent");
    // The payload came through whole and in order.
    assert_eq!(got[VNET_HDR_LEN + 54..], sent[VNET_HDR_LEN + 54..]);
    assert_eq!(
        counters
            .rx_datagrams
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
}
