// Test data: patterns of bytes, cut to width on purpose.
#![allow(clippy::cast_possible_truncation)]

use super::*;
use crate::wire::segment::{Segments, segment};
use crate::wire::vnet::VnetHeader;

/// An IPv4/TCP super-frame (12 bytes of TCP options) with `payload` bytes.
fn super_frame(payload: usize, flags: u8) -> (VnetHeader, Vec<u8>) {
    let mut f = vec![0u8; 14 + 20 + 32];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xb1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xa1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[14 + 4..14 + 6].copy_from_slice(&[0x12, 0x34]);
    f[14 + 6] = 0x40;
    f[14 + 8] = 64;
    f[14 + 9] = 6;
    f[14 + 12..14 + 16].copy_from_slice(&[10, 1, 0, 1]);
    f[14 + 16..14 + 20].copy_from_slice(&[10, 1, 0, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[38..42].copy_from_slice(&0xffff_ff00_u32.to_be_bytes());
    f[42..46].copy_from_slice(&77u32.to_be_bytes());
    f[46] = 8 << 4;
    f[47] = flags;
    f[48..50].copy_from_slice(&512u16.to_be_bytes());
    f[54..66].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]); // NOP NOP timestamps
    f.extend((0..payload).map(|i| (i % 241) as u8));
    let vnet = VnetHeader {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        gso_size: 1386,
        csum_start: 34,
        csum_offset: 16,
    };
    (vnet, f)
}

fn cut(vnet: &VnetHeader, frame: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Segments {
        count,
        stride,
        last,
    } = segment(vnet, frame, 0, &mut out).unwrap();
    (0..count)
        .map(|i| {
            let len = if i + 1 == count { last } else { stride };
            out[i * stride..i * stride + len].to_vec()
        })
        .collect()
}

/// Merge `segs` from the first as the tunnel does; return the frames it makes, each with
/// its virtio-net header.
fn merge_all(segs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut i = 0;
    while i < segs.len() {
        let mut buf = vec![0u8; 70_000];
        let mut len = segs[i].len();
        buf[..len].copy_from_slice(&segs[i]);
        let Some(mut merge) = Merge::start(&segs[i]) else {
            let mut plain = vec![0u8; VNET_HDR_LEN];
            plain.extend_from_slice(&segs[i]);
            frames.push(plain);
            i += 1;
            continue;
        };
        i += 1;
        while i < segs.len() && merge.push(&mut buf, &mut len, &segs[i]) {
            i += 1;
        }
        let mut header = [0u8; VNET_HDR_LEN];
        merge.finish(&mut buf[..len], &mut header);
        let mut frame = header.to_vec();
        frame.extend_from_slice(&buf[..len]);
        frames.push(frame);
    }
    frames
}

#[test]
fn segments_merge_back_into_the_super_frame_they_were_cut_from() {
    let (vnet, frame) = super_frame(10 * 1386 + 500, ACK | PSH);
    let segs = cut(&vnet, &frame);
    let merged = merge_all(&segs);
    assert_eq!(merged.len(), 1, "one super-frame");
    let header = VnetHeader::parse(&merged[0]).unwrap();
    assert_eq!(
        (header.gso_type, header.gso_size, header.csum_start),
        (GSO_TCPV4, 1386, 34)
    );
    assert!(header.needs_checksum());
    let l2 = &merged[0][VNET_HDR_LEN..];
    assert_eq!(l2.len(), frame.len());
    assert_eq!(l2[47], ACK | PSH, "PSH of the last segment");
    // Cut again, it gives exactly the segments that came.
    assert_eq!(cut(&header, l2), segs);
}

#[test]
fn a_corrupt_segment_is_not_merged_but_passed_on_as_it_came() {
    let (vnet, frame) = super_frame(4 * 1386, ACK);
    let mut segs = cut(&vnet, &frame);
    let bad = segs[2].len() - 1;
    segs[2][bad] ^= 0xff;
    let merged = merge_all(&segs);
    let sizes: Vec<_> = merged
        .iter()
        .map(|f| VnetHeader::parse(f).unwrap().is_gso())
        .collect();
    assert_eq!(
        sizes,
        [true, false, false],
        "[s0+s1], s2 alone, s3 alone (it cannot start after a gap)"
    );
    assert_eq!(&merged[1][VNET_HDR_LEN..], &segs[2][..]);
}

#[test]
fn only_the_same_flow_in_order_is_merged() {
    let (vnet, frame) = super_frame(3 * 1386, ACK);
    let segs = cut(&vnet, &frame);
    // Out of order: s0, s2 cannot follow.
    let merged = merge_all(&[segs[0].clone(), segs[2].clone()]);
    assert_eq!(merged.len(), 2);
    // Another flow (other port) cannot follow.
    let (_, other) = super_frame(3 * 1386, ACK);
    let mut other = other;
    other[34..36].copy_from_slice(&40001u16.to_be_bytes());
    let other_segs = cut(&vnet, &other);
    assert_eq!(
        merge_all(&[segs[0].clone(), other_segs[1].clone()]).len(),
        2
    );
    // A segment with PSH closes the merge.
    let (_, pushed) = super_frame(1386, ACK | PSH);
    let p = cut(&vnet, &pushed);
    assert_eq!(merge_all(&[p[0].clone(), segs[1].clone()]).len(), 2);
    // A lone segment stays a plain frame.
    let one = merge_all(&segs[..1]);
    assert_eq!(&one[0][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(&one[0][VNET_HDR_LEN..], &segs[0][..]);
}

#[test]
fn what_is_not_tcp_over_ipv4_is_never_merged() {
    let (vnet, frame) = super_frame(2 * 1386, ACK);
    let segs = cut(&vnet, &frame);
    let mut syn = segs[0].clone();
    syn[47] |= 0x02;
    assert!(Merge::start(&syn).is_none());
    assert!(Merge::start(&segs[0][..40]).is_none());
    assert!(Merge::start(&[]).is_none());
    let mut padded = segs[1].clone();
    padded.push(0);
    assert!(
        Merge::start(&padded).is_none(),
        "length disagrees with the IPv4 header"
    );
}

proptest::proptest! {
    #[test]
    fn merging_never_panics(
        first in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        second in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
    ) {
        let mut buf = vec![0u8; 500];
        let mut len = first.len();
        buf[..len].copy_from_slice(&first);
        if let Some(mut merge) = Merge::start(&first) {
            merge.push(&mut buf, &mut len, &second);
            let mut header = [0u8; VNET_HDR_LEN];
            merge.finish(&mut buf[..len], &mut header);
        }
    }
}
