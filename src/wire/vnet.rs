//! The virtio-net header that a TAP opened with `IFF_VNET_HDR` puts before every frame.
//!
//! With TAP offloads on, the kernel hands netd whole TCP/UDP "super-frames" of up to 64 KiB
//! (GSO) with their checksum left for the receiver to fill in, and takes them back the same
//! way; this header says which. netd forwards header and frame untouched between TAPs (both
//! sides agree on offloads), so it only reads the header: to accept frames longer than the
//! MTU when they are GSO, and to charge the shaper for the bytes the frame will be on a wire.
//!
//! Layout (`struct virtio_net_hdr_v1`, little-endian, 12 bytes): flags, gso_type, hdr_len,
//! gso_size, csum_start, csum_offset, num_buffers. Contract: [`VnetHeader::parse`] never
//! panics; a header that makes no sense is `None` and the frame is dropped as malformed.

/// Bytes of the header netd asks the kernel for (`TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 12;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is left to fill.
pub const F_NEEDS_CSUM: u8 = 1;
/// GSO types (`VIRTIO_NET_HDR_GSO_*`), the ECN bit masked off.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// Largest frame a GSO super-frame may be (Ethernet header included).
pub const GSO_MAX_FRAME: usize = 65_535 + 14;

/// The fields of a virtio-net header netd reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    /// One of the `GSO_*` constants (ECN bit removed).
    pub gso_type: u8,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Parse the header at the start of `buf`; `None` if too short or inconsistent.
    pub fn parse(buf: &[u8]) -> Option<VnetHeader> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let header = VnetHeader {
            flags: b[0],
            gso_type: b[1] & !GSO_ECN,
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        };
        let known = matches!(
            header.gso_type,
            GSO_NONE | GSO_TCPV4 | GSO_UDP | GSO_TCPV6 | GSO_UDP_L4
        );
        if !known || (header.is_gso() && header.gso_size == 0) {
            return None;
        }
        Some(header)
    }

    /// Return true for a GSO super-frame (to be cut into `gso_size` segments on a wire).
    pub fn is_gso(&self) -> bool {
        self.gso_type != GSO_NONE
    }

    /// Return the longest frame `frame` becomes on a wire: itself, or for a GSO super-frame
    /// its first segment (headers plus `gso_size` bytes of payload).
    pub fn largest_segment(&self, frame: &[u8]) -> usize {
        if !self.is_gso() {
            return frame.len();
        }
        let headers = self.header_bytes(frame).unwrap_or(0);
        (headers + usize::from(self.gso_size)).min(frame.len())
    }

    /// Return the bytes of Ethernet, IP and L4 headers each segment of a GSO frame repeats
    /// (`None` when the frame is too short to tell).
    fn header_bytes(&self, frame: &[u8]) -> Option<usize> {
        let l4 = usize::from(self.csum_start);
        let l4_header = match self.gso_type {
            GSO_TCPV4 | GSO_TCPV6 => frame.get(l4 + 12).map(|b| usize::from(b >> 4) * 4),
            _ => Some(8),
        };
        l4_header.filter(|&h| h >= 8).map(|h| l4 + h)
    }

    /// Return true when the frame's L4 checksum is left to fill (`F_NEEDS_CSUM`).
    pub fn needs_checksum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// Fill in the checksum a `F_NEEDS_CSUM` frame left partial, as a NIC would: the field
    /// at `csum_start + csum_offset` holds the pseudo-header sum, and the Internet checksum
    /// of everything from `csum_start` on goes there. Return false, changing nothing, when
    /// the offsets do not fit the frame.
    pub fn complete_checksum(&self, frame: &mut [u8]) -> bool {
        let start = usize::from(self.csum_start);
        let field = start + usize::from(self.csum_offset);
        if field + 2 > frame.len() {
            return false;
        }
        let sum = !smoltcp::wire::checksum::data(&frame[start..]);
        // A UDP checksum of zero means "none": RFC 768 sends the all-ones form instead.
        let sum = if sum == 0 { 0xffff } else { sum };
        frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
        true
    }

    /// Return the bytes `frame` (Ethernet header onwards) will occupy on a wire once segmented:
    /// each segment repeats the Ethernet, IP and L4 headers. For a plain frame, its length.
    ///
    /// The header length is taken from the frame itself (L4 header start from `csum_start`,
    /// TCP data offset or UDP's 8 bytes), not from the header's `hdr_len`, which the kernel
    /// fills with the linear part's length rather than the headers'.
    pub fn wire_bytes(&self, frame: &[u8]) -> u64 {
        let len = frame.len() as u64;
        if !self.is_gso() {
            return len;
        }
        let Some(headers) = self.header_bytes(frame) else {
            return len;
        };
        let headers = headers as u64;
        let payload = len.saturating_sub(headers);
        let segments = payload.div_ceil(u64::from(self.gso_size)).max(1);
        len + (segments - 1) * headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(gso_type: u8, gso_size: u16, csum_start: u16) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = F_NEEDS_CSUM;
        h[1] = gso_type;
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&csum_start.to_le_bytes());
        h
    }

    #[test]
    fn plain_frame_costs_its_length() {
        let h = VnetHeader::parse(&[0u8; VNET_HDR_LEN]).unwrap();
        assert!(!h.is_gso());
        assert_eq!(h.wire_bytes(&[0u8; 1514]), 1514);
    }

    #[test]
    fn tcp_gso_frame_costs_its_segments() {
        // Ethernet 14 + IPv4 20 + TCP 32 (timestamps) = 66 bytes of headers; 44 segments of 1448.
        let h = VnetHeader::parse(&header(GSO_TCPV4, 1448, 34)).unwrap();
        let mut frame = vec![0u8; 66 + 44 * 1448];
        frame[34 + 12] = 8 << 4; // data offset: 8 words = 32 bytes
        assert_eq!(h.wire_bytes(&frame), 44 * (66 + 1448));
    }

    #[test]
    fn a_gso_frame_is_as_long_as_its_segments() {
        let h = VnetHeader::parse(&header(GSO_TCPV4, 1448, 34)).unwrap();
        let mut frame = vec![0u8; 66 + 44 * 1448];
        frame[34 + 12] = 8 << 4;
        assert_eq!(h.largest_segment(&frame), 66 + 1448);
        let plain = VnetHeader::default();
        assert_eq!(plain.largest_segment(&frame), frame.len());
    }

    #[test]
    fn rejects_nonsense_and_short_headers() {
        assert!(VnetHeader::parse(&[0u8; 5]).is_none());
        assert!(
            VnetHeader::parse(&header(2, 1448, 34)).is_none(),
            "unknown gso type"
        );
        assert!(
            VnetHeader::parse(&header(GSO_TCPV4, 0, 34)).is_none(),
            "zero gso_size"
        );
        let ecn = VnetHeader::parse(&header(GSO_TCPV4 | 0x80, 1448, 34)).unwrap();
        assert_eq!(ecn.gso_type, GSO_TCPV4);
    }

    #[test]
    fn a_partial_checksum_is_completed_as_a_nic_would() {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Address, UdpPacket, UdpRepr};
        let (src, dst) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let repr = UdpRepr {
            src_port: 5000,
            dst_port: 53,
        };
        let payload = b"a query that needs its checksum";
        let mut udp = vec![0u8; repr.header_len() + payload.len()];
        let mut packet = UdpPacket::new_unchecked(&mut udp);
        repr.emit(
            &mut packet,
            &src.into(),
            &dst.into(),
            payload.len(),
            |p| p.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        let good = udp.clone();
        // What a kernel with checksum offload hands over: the pseudo-header sum only.
        let pseudo = smoltcp::wire::checksum::pseudo_header_v4(
            &src,
            &dst,
            IpProtocol::Udp,
            u32::try_from(udp.len()).unwrap(),
        );
        udp[6..8].copy_from_slice(&pseudo.to_be_bytes());
        let header = VnetHeader {
            flags: F_NEEDS_CSUM,
            csum_start: 0,
            csum_offset: 6,
            ..VnetHeader::default()
        };
        assert!(header.needs_checksum());
        assert!(header.complete_checksum(&mut udp));
        assert_eq!(udp, good);
        assert!(
            UdpPacket::new_checked(&udp[..])
                .unwrap()
                .verify_checksum(&IpAddress::from(src), &IpAddress::from(dst))
        );
        // Offsets past the end change nothing.
        let far = VnetHeader {
            csum_start: u16::try_from(udp.len()).unwrap() - 7,
            csum_offset: 6,
            ..header
        };
        assert!(!far.complete_checksum(&mut udp));
        assert_eq!(udp, good);
    }

    #[test]
    fn never_panics_on_short_frames() {
        let h = VnetHeader::parse(&header(GSO_TCPV6, 1, 60_000)).unwrap();
        for len in 0..100 {
            let _ = h.wire_bytes(&vec![0xff; len]);
        }
    }
}
