// Test data: patterns of bytes and small counts, cut to width on purpose.
#![allow(clippy::cast_possible_truncation)]

use proptest::prelude::*;
use smoltcp::wire::{EthernetFrame, IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

use super::*;
use crate::wire::vnet::F_NEEDS_CSUM;

const SRC4: [u8; 4] = [10, 1, 0, 1];
const DST4: [u8; 4] = [10, 1, 0, 2];

/// An Ethernet + IPv4 + TCP super-frame (32-byte TCP header) with `payload` bytes, its TCP
/// checksum field holding only a partial sum as a TAP leaves it.
fn tcp4(payload: usize, flags: u8) -> (VnetHeader, Vec<u8>) {
    let mut f = vec![0u8; 14 + 20 + 32];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[4..6].copy_from_slice(&0xfffe_u16.to_be_bytes()); // the IDs wrap
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&SRC4);
    ip[16..20].copy_from_slice(&DST4);
    let tcp = &mut f[34..66];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&0xffff_f000_u32.to_be_bytes()); // the sequence wraps
    tcp[12] = 8 << 4;
    tcp[13] = flags;
    tcp[16..18].copy_from_slice(&[0x12, 0x34]); // a partial sum, to be replaced
    f.extend((0..payload).map(|i| (i % 251) as u8));
    let vnet = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    (vnet, f)
}

fn segments(out: &[u8], s: Segments, room: usize) -> Vec<&[u8]> {
    (0..s.count)
        .map(|i| {
            let len = if i + 1 == s.count { s.last } else { s.stride };
            &out[i * s.stride + room..i * s.stride + len]
        })
        .collect()
}

#[test]
fn a_tcp4_super_frame_becomes_valid_wire_segments() {
    let (vnet, frame) = tcp4(3 * 1448 + 100, 0x18 | TCP_FIN | TCP_CWR);
    let mut out = Vec::new();
    let s = segment(&vnet, &frame, 8, &mut out).unwrap();
    assert_eq!(s.count, 4);
    assert_eq!(s.stride, 8 + 66 + 1448);
    assert_eq!(s.last, 8 + 66 + 100);
    let segs = segments(&out, s, 8);
    let mut expected_seq = 0xffff_f000_u32;
    let mut payload = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        assert!(
            out[i * s.stride..i * s.stride + 8].iter().all(|&b| b == 0),
            "room stays zero"
        );
        let eth = EthernetFrame::new_checked(*seg).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum(), "segment {i}: IPv4 checksum");
        assert_eq!(usize::from(ip.total_len()), seg.len() - 14);
        assert_eq!(ip.ident(), 0xfffe_u16.wrapping_add(i as u16));
        assert!(ip.dont_frag());
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let (src, dst) = (
            IpAddress::from(ip.src_addr()),
            IpAddress::from(ip.dst_addr()),
        );
        assert!(tcp.verify_checksum(&src, &dst), "segment {i}: TCP checksum");
        assert_eq!(tcp.seq_number().0 as u32, expected_seq);
        expected_seq = expected_seq.wrapping_add(tcp.payload().len() as u32);
        let last = i + 1 == segs.len();
        assert_eq!(tcp.fin(), last, "FIN only on the last");
        assert_eq!(tcp.psh(), last, "PSH only on the last");
        assert!(tcp.ack());
        assert_eq!(tcp.header_len(), 32);
        payload.extend_from_slice(tcp.payload());
    }
    assert_eq!(payload, frame[66..]);
    // CWR only on the first.
    assert_eq!(segs[0][34 + 13] & TCP_CWR, TCP_CWR);
    assert!(segs[1..].iter().all(|s| s[34 + 13] & TCP_CWR == 0));
}

#[test]
fn a_tcp6_super_frame_becomes_valid_wire_segments() {
    let (_, v4) = tcp4(2 * 1448, 0x10);
    let mut f = vec![0u8; 14 + 40];
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[14 + 6] = 6;
    f[14 + 7] = 64;
    f[14 + 8..14 + 24].copy_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    f[14 + 24..14 + 40].copy_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&v4[34..]);
    let vnet = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV6,
        gso_size: 1448,
        csum_start: 54,
        csum_offset: 16,
    };
    let mut out = Vec::new();
    let s = segment(&vnet, &f, 0, &mut out).unwrap();
    assert_eq!((s.count, s.last), (2, 54 + 32 + 1448));
    for seg in segments(&out, s, 0) {
        let eth = EthernetFrame::new_checked(seg).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(usize::from(ip.payload_len()), seg.len() - 54);
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let (src, dst) = (
            IpAddress::from(ip.src_addr()),
            IpAddress::from(ip.dst_addr()),
        );
        assert!(tcp.verify_checksum(&src, &dst));
    }
}

#[test]
fn a_udp_super_frame_becomes_datagrams_with_their_own_lengths_and_checksums() {
    let (_, v4) = tcp4(0, 0);
    let mut f = v4[..34].to_vec();
    f[14 + 9] = 17;
    f.extend_from_slice(&[0x13, 0x88, 0x14, 0x51, 0, 0, 0, 0]);
    f.extend((0..2500).map(|i| (i % 7) as u8));
    let vnet = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 6,
    };
    let mut out = Vec::new();
    let s = segment(&vnet, &f, 0, &mut out).unwrap();
    assert_eq!((s.count, s.stride, s.last), (3, 42 + 1000, 42 + 500));
    for seg in segments(&out, s, 0) {
        let ip = Ipv4Packet::new_checked(&seg[14..]).unwrap();
        assert!(ip.verify_checksum());
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(usize::from(udp.len()), seg.len() - 34);
        let (src, dst) = (
            IpAddress::from(ip.src_addr()),
            IpAddress::from(ip.dst_addr()),
        );
        assert!(udp.verify_checksum(&src, &dst));
    }
}

#[test]
fn what_cannot_be_cut_is_refused() {
    let (vnet, frame) = tcp4(3000, 0x10);
    let mut out = Vec::new();
    let ufo = VnetHeader {
        gso_type: crate::wire::vnet::GSO_UDP,
        ..vnet
    };
    assert_eq!(
        segment(&ufo, &frame, 0, &mut out),
        Err(SegmentError::Unsupported)
    );
    let wrong_start = VnetHeader {
        csum_start: 30,
        ..vnet
    };
    assert_eq!(
        segment(&wrong_start, &frame, 0, &mut out),
        Err(SegmentError::Malformed)
    );
    let mut udp_said_tcp = frame.clone();
    udp_said_tcp[14 + 9] = 17;
    assert_eq!(
        segment(&vnet, &udp_said_tcp, 0, &mut out),
        Err(SegmentError::Malformed)
    );
    assert_eq!(
        segment(&vnet, &frame[..40], 0, &mut out),
        Err(SegmentError::Malformed)
    );
}

#[test]
fn cutting_the_last_segment_leaves_a_super_frame_of_the_others() {
    let (vnet, frame) = tcp4(3 * 1448 + 100, 0x18);
    let mut cut = frame.clone();
    let len = cut_last_segment(&vnet, &mut cut).unwrap();
    assert_eq!(len, 66 + 3 * 1448, "the 100-byte tail is gone");
    let cut = &cut[..len];
    let eth = EthernetFrame::new_checked(cut).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(usize::from(ip.total_len()), len - 14);
    // The partial checksum is the pseudo-header's sum over the new TCP length.
    let pseudo = checksum::pseudo_header_v4(
        &SRC4.into(),
        &DST4.into(),
        IpProtocol::Tcp,
        (len - 34) as u32,
    );
    assert_eq!(cut[34 + 16..34 + 18], pseudo.to_be_bytes());
    // Segmented, it gives exactly the original's first three segments' payloads and sequence.
    let (mut whole, mut rest) = (Vec::new(), Vec::new());
    let s_whole = segment(&vnet, &frame, 0, &mut whole).unwrap();
    let s_cut = segment(&vnet, cut, 0, &mut rest).unwrap();
    assert_eq!(s_cut.count, 3);
    for (a, b) in segments(&whole, s_whole, 0)
        .iter()
        .zip(segments(&rest, s_cut, 0))
    {
        assert_eq!(a[34 + 4..34 + 8], b[34 + 4..34 + 8], "sequence numbers");
        assert_eq!(a[66..], b[66..], "payload");
    }
}

#[test]
fn a_complete_checksum_is_computed_again_when_a_segment_is_cut() {
    let (vnet, mut frame) = tcp4(2 * 1448 + 1, 0x10);
    let vnet = VnetHeader { flags: 0, ..vnet };
    let len = cut_last_segment(&vnet, &mut frame).unwrap();
    let ip = Ipv4Packet::new_checked(&frame[14..len]).unwrap();
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    let (src, dst) = (
        IpAddress::from(ip.src_addr()),
        IpAddress::from(ip.dst_addr()),
    );
    assert!(tcp.verify_checksum(&src, &dst));
}

#[test]
fn what_has_no_segment_to_spare_is_not_cut() {
    let (vnet, frame) = tcp4(3000, 0x10);
    let refused = |vnet: VnetHeader, frame: &[u8]| {
        let mut copy = frame.to_vec();
        cut_last_segment(&vnet, &mut copy).is_none() && copy == frame
    };
    assert!(refused(vnet, &tcp4(3000, 0x10 | TCP_FIN).1), "FIN");
    assert!(refused(vnet, &tcp4(1448, 0x10).1), "one segment");
    let udp = VnetHeader {
        gso_type: GSO_UDP_L4,
        ..vnet
    };
    assert!(refused(udp, &frame), "not TCP");
    assert!(refused(VnetHeader::default(), &frame), "not GSO");
    assert!(refused(vnet, &frame[..50]), "truncated");
}

#[test]
fn only_an_ecn_capable_packet_is_marked_congestion_experienced() {
    let (_, frame) = tcp4(100, 0x10);
    let mark = |tos: u8| {
        let mut f = frame.clone();
        f[15] = tos;
        let marked = mark_congestion_experienced(&mut f);
        let ip = Ipv4Packet::new_unchecked(&f[14..]);
        (marked, f[15], ip.verify_checksum() || !marked)
    };
    assert_eq!(mark(0b10), (true, 0b11, true), "ECT(0)");
    assert_eq!(mark(0xb9), (true, 0xbb, true), "ECT(1), DSCP kept");
    assert_eq!(mark(0b00), (false, 0b00, true), "not ECT");
    assert_eq!(mark(0b11), (false, 0b11, true), "already CE");
    let mut v6 = vec![0u8; 14 + 40];
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    v6[14] = 0x60;
    v6[15] = 0x20; // traffic class 0x02: ECT(0)
    assert!(mark_congestion_experienced(&mut v6));
    assert_eq!(v6[15], 0x30);
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert!(!mark_congestion_experienced(&mut arp));
    assert!(!mark_congestion_experienced(&mut frame[..15].to_vec()));
}

proptest! {
    #[test]
    fn cutting_and_marking_never_panic(
        gso_type in prop::sample::select(vec![GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 0]),
        gso_size in 0u16..3000,
        csum_start in 0u16..100,
        flags in 0u8..2,
        mut frame in prop::collection::vec(any::<u8>(), 0..6000),
    ) {
        let vnet = VnetHeader { flags, gso_type, gso_size, csum_start, csum_offset: 16 };
        let before = frame.len();
        if let Some(len) = cut_last_segment(&vnet, &mut frame) {
            prop_assert!(len < before);
        }
        mark_congestion_experienced(&mut frame);
    }

    #[test]
    fn segmenting_never_panics(
        gso_type in prop::sample::select(vec![GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 2, 3]),
        gso_size in 1u16..3000,
        csum_start in 0u16..100,
        frame in prop::collection::vec(any::<u8>(), 0..6000),
    ) {
        let vnet = VnetHeader { flags: F_NEEDS_CSUM, gso_type, gso_size, csum_start, csum_offset: 16 };
        let mut out = Vec::new();
        if let Ok(s) = segment(&vnet, &frame, 8, &mut out) {
            prop_assert_eq!(s.stride * (s.count - 1) + s.last, out.len());
        }
    }
}
