//! Software segmentation: a GSO super-frame cut into the frames a NIC's TSO or USO would
//! put on the wire, for a port that cannot take super-frames whole (the VXLAN tunnel: each
//! segment travels in its own datagram).
//!
//! Contract: [`segment`] never panics on any bytes. Each segment repeats the super-frame's
//! headers with its own lengths; IPv4 gets consecutive IDs and a new header checksum; TCP
//! gets its sequence number advanced, FIN and PSH only on the last segment and CWR only on
//! the first (as Linux's `tcp_gso_segment`); and every TCP or UDP checksum is computed in
//! full, whatever partial sum the sender left (the segments go to a wire, not to a kernel
//! that would finish them). Supported: TCP over IPv4 and IPv6 (no extension headers) and
//! UDP segmentation offload; UFO's IP fragmentation is refused.

use smoltcp::wire::{IpProtocol, checksum};

use super::vnet::{GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VnetHeader};

const ETHERNET_HEADER_LEN: usize = 14;
const IPV6_HEADER_LEN: usize = 40;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a super-frame cannot be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// A kind of GSO or a header layout this does not cut (UFO, IPv6 extension headers).
    Unsupported,
    /// Its headers disagree with its GSO description or with themselves.
    Malformed,
}

/// Where the segments went: `count` of them, `stride` bytes apart in the output (each
/// segment with its room in front); every one is `stride` long but the last, `last` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub stride: usize,
    pub last: usize,
}

/// Cut the super-frame `frame` (an Ethernet frame described by `vnet`) into segments of at
/// most `vnet.gso_size` payload bytes, each written to `out` (cleared first) after `room`
/// zero bytes for the caller's own header.
pub fn segment(
    vnet: &VnetHeader,
    frame: &[u8],
    room: usize,
    out: &mut Vec<u8>,
) -> Result<Segments, SegmentError> {
    let layout = Layout::of(vnet, frame)?;
    let payload = frame.get(layout.headers..).ok_or(SegmentError::Malformed)?;
    let mss = usize::from(vnet.gso_size);
    let count = payload.len().div_ceil(mss).max(1);
    out.clear();
    out.reserve(count * (room + layout.headers + mss));
    // (A super-frame of headers only is one segment of headers only.)
    for i in 0..count {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let start = out.len();
        out.resize(start + room, 0);
        out.extend_from_slice(&frame[..layout.headers]);
        out.extend_from_slice(chunk);
        let seg = &mut out[start + room..];
        layout.fix(seg, i, i + 1 == count, mss)?;
    }
    let stride = if count > 1 {
        room + layout.headers + mss
    } else {
        out.len()
    };
    let last = out.len() - stride * (count - 1);
    Ok(Segments {
        count,
        stride,
        last,
    })
}

/// Cut the last segment off the TCP super-frame `frame` (described by `vnet`), in place:
/// the sender will retransmit that one segment rather than the whole frame. Return the
/// frame's new length, or `None` (nothing changed) if it is not a TCP super-frame of at
/// least two segments, or its last segment carries FIN.
///
/// The lengths are fixed (IPv4 total length and header checksum, IPv6 payload length) and
/// the TCP checksum too: a partial one holds the pseudo-header's sum over the new length,
/// as the kernel's segmentation expects; a complete one is computed again.
pub fn cut_last_segment(vnet: &VnetHeader, frame: &mut [u8]) -> Option<usize> {
    let layout = Layout::of(vnet, frame).ok().filter(|l| l.tcp)?;
    let payload = frame.len().checked_sub(layout.headers)?;
    let mss = usize::from(vnet.gso_size);
    if mss == 0 || payload <= mss || frame[layout.l4 + 13] & TCP_FIN != 0 {
        return None;
    }
    let last = payload - (payload.div_ceil(mss) - 1) * mss;
    let len = frame.len() - last;
    let seg = &mut frame[..len];
    let ip = &mut seg[ETHERNET_HEADER_LEN..];
    if layout.ipv4 {
        let total = u16::try_from(len - ETHERNET_HEADER_LEN).ok()?;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[10..12].fill(0);
        let sum = !checksum::data(&ip[..layout.l4 - ETHERNET_HEADER_LEN]);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    } else {
        let payload = u16::try_from(len - layout.l4).ok()?;
        ip[4..6].copy_from_slice(&payload.to_be_bytes());
    }
    let pseudo = layout.pseudo_header(seg, len - layout.l4).ok()?;
    let l4 = &mut seg[layout.l4..];
    if vnet.needs_checksum() {
        l4[16..18].copy_from_slice(&pseudo.to_be_bytes());
    } else {
        l4[16..18].fill(0);
        let sum = !checksum::combine(&[pseudo, checksum::data(l4)]);
        l4[16..18].copy_from_slice(&sum.to_be_bytes());
    }
    Some(len)
}

/// Mark the IP packet in Ethernet frame `frame` Congestion Experienced if its sender
/// negotiated ECN (ECT(0) or ECT(1)); return false, changing nothing, if it did not (or the
/// frame is not IP). An IPv4 header checksum is fixed; no transport checksum covers the bits.
pub fn mark_congestion_experienced(frame: &mut [u8]) -> bool {
    const CE: u8 = 0b11;
    let Some(ethertype) = frame.get(12..14) else {
        return false;
    };
    match ethertype {
        [0x08, 0x00] => {
            let Some(ip) = frame.get_mut(ETHERNET_HEADER_LEN..) else {
                return false;
            };
            let header_len = usize::from(ip.first().copied().unwrap_or(0) & 0x0f) * 4;
            if header_len < 20 || ip.len() < header_len || matches!(ip[1] & CE, 0 | CE) {
                return false;
            }
            ip[1] |= CE;
            ip[10..12].fill(0);
            let sum = !checksum::data(&ip[..header_len]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            true
        }
        [0x86, 0xdd] => {
            // The traffic class spans bytes 0 and 1; its ECN bits are bits 4 and 5 of byte 1.
            let Some(byte) = frame.get_mut(ETHERNET_HEADER_LEN + 1) else {
                return false;
            };
            if matches!((*byte >> 4) & CE, 0 | CE) {
                return false;
            }
            *byte |= CE << 4;
            true
        }
        _ => false,
    }
}

/// Where a super-frame's headers are.
#[derive(Debug, Clone, Copy)]
struct Layout {
    ipv4: bool,
    /// Offset of the transport header.
    l4: usize,
    /// Bytes of all headers (Ethernet, IP, transport).
    headers: usize,
    tcp: bool,
}

impl Layout {
    fn of(vnet: &VnetHeader, frame: &[u8]) -> Result<Layout, SegmentError> {
        let tcp = match vnet.gso_type {
            GSO_TCPV4 | GSO_TCPV6 => true,
            GSO_UDP_L4 => false,
            _ => return Err(SegmentError::Unsupported),
        };
        let ethertype = frame.get(12..14).ok_or(SegmentError::Malformed)?;
        let ipv4 = match ethertype {
            [0x08, 0x00] => true,
            [0x86, 0xdd] => false,
            _ => return Err(SegmentError::Unsupported),
        };
        let l4 = usize::from(vnet.csum_start);
        let ip_header = if ipv4 {
            let ihl = frame
                .get(ETHERNET_HEADER_LEN)
                .ok_or(SegmentError::Malformed)?
                & 0x0f;
            usize::from(ihl) * 4
        } else {
            IPV6_HEADER_LEN
        };
        if l4 != ETHERNET_HEADER_LEN + ip_header {
            // IPv6 extension headers, or a csum_start that is not the transport header.
            return Err(if ipv4 {
                SegmentError::Malformed
            } else {
                SegmentError::Unsupported
            });
        }
        let protocol = if ipv4 {
            frame.get(ETHERNET_HEADER_LEN + 9)
        } else {
            frame.get(ETHERNET_HEADER_LEN + 6)
        };
        let wanted: u8 = if tcp { 6 } else { 17 };
        if protocol != Some(&wanted) {
            return Err(SegmentError::Malformed);
        }
        let l4_header = if tcp {
            let offset = frame.get(l4 + 12).ok_or(SegmentError::Malformed)? >> 4;
            usize::from(offset) * 4
        } else {
            8
        };
        if l4_header < 8 || frame.len() < l4 + l4_header {
            return Err(SegmentError::Malformed);
        }
        Ok(Layout {
            ipv4,
            l4,
            headers: l4 + l4_header,
            tcp,
        })
    }

    /// Fix segment `i`'s headers (`seg` holds its headers and payload).
    fn fix(&self, seg: &mut [u8], i: usize, last: bool, mss: usize) -> Result<(), SegmentError> {
        let len = seg.len();
        let ip = &mut seg[ETHERNET_HEADER_LEN..];
        if self.ipv4 {
            let total =
                u16::try_from(len - ETHERNET_HEADER_LEN).map_err(|_| SegmentError::Malformed)?;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            // IDs wrap: segment i takes the i-th next one, modulo 2^16.
            let step = u16::try_from(i & 0xffff).unwrap_or(0);
            let id = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(step);
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ip[10..12].fill(0);
            let header_len = self.l4 - ETHERNET_HEADER_LEN;
            let sum = !checksum::data(&ip[..header_len]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
        } else {
            let payload = u16::try_from(len - self.l4).map_err(|_| SegmentError::Malformed)?;
            ip[4..6].copy_from_slice(&payload.to_be_bytes());
        }
        let l4_len = len - self.l4;
        let pseudo = self.pseudo_header(seg, l4_len)?;
        let l4 = &mut seg[self.l4..];
        if self.tcp {
            let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            // Sequence numbers wrap: the offset is taken modulo 2^32.
            let offset = u32::try_from((i * mss) & 0xffff_ffff).unwrap_or(0);
            let seq = seq.wrapping_add(offset);
            l4[4..8].copy_from_slice(&seq.to_be_bytes());
            if !last {
                l4[13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                l4[13] &= !TCP_CWR;
            }
            l4[16..18].fill(0);
            let sum = !checksum::combine(&[pseudo, checksum::data(l4)]);
            l4[16..18].copy_from_slice(&sum.to_be_bytes());
        } else {
            let udp_len = u16::try_from(l4_len).map_err(|_| SegmentError::Malformed)?;
            l4[4..6].copy_from_slice(&udp_len.to_be_bytes());
            l4[6..8].fill(0);
            let sum = !checksum::combine(&[pseudo, checksum::data(l4)]);
            // A UDP checksum of zero means "none": send its other form.
            let sum = if sum == 0 { 0xffff } else { sum };
            l4[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        Ok(())
    }

    /// The pseudo-header sum of a segment whose transport part is `l4_len` bytes.
    fn pseudo_header(&self, seg: &[u8], l4_len: usize) -> Result<u16, SegmentError> {
        let protocol = if self.tcp {
            IpProtocol::Tcp
        } else {
            IpProtocol::Udp
        };
        let len = u32::try_from(l4_len).map_err(|_| SegmentError::Malformed)?;
        let ip = &seg[ETHERNET_HEADER_LEN..];
        if self.ipv4 {
            let addr =
                |at: usize| std::net::Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
            Ok(checksum::pseudo_header_v4(
                &addr(12),
                &addr(16),
                protocol,
                len,
            ))
        } else {
            let addr = |at: usize| {
                let octets: [u8; 16] = ip[at..at + 16].try_into().unwrap_or([0; 16]);
                std::net::Ipv6Addr::from(octets)
            };
            Ok(checksum::pseudo_header_v6(
                &addr(8),
                &addr(24),
                protocol,
                len,
            ))
        }
    }
}

#[cfg(test)]
mod tests;
