//! Receive coalescing: consecutive wire segments of one TCP/IPv4 flow merged back into one
//! super-frame, as the kernel's GRO does, so that what the tunnel receives as many
//! datagrams reaches a server's TAP as one write (with a virtio-net header saying how to
//! cut it again, if ever it must be).
//!
//! Contract: never panics on any bytes; merges only what GRO would (same addresses,
//! ports, TTL, TOS, acknowledgement, window and options; consecutive sequence numbers; all
//! segments but the last exactly as long as the first; nothing but ACK set before the last,
//! which may add PSH or FIN); and only segments whose IPv4 and TCP checksums are correct,
//! since the merged frame's checksum is left for the receiving kernel to trust. Anything
//! else is passed on as it came, one frame per segment.

use smoltcp::wire::{IpProtocol, checksum};

use super::vnet::{F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN};

const ETH: usize = 14;
const IP: usize = ETH;
const TCP: usize = ETH + 20;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

/// A super-frame being built from segments.
#[derive(Debug, Clone, Copy)]
pub struct Merge {
    /// Every segment's payload but the last's.
    gso_size: usize,
    /// The sequence number the next segment must start at.
    next_seq: u32,
    /// Bytes of headers (Ethernet, IPv4, TCP with options).
    headers: usize,
    segments: usize,
    /// No segment may follow: the last was short, or carried PSH or FIN.
    closed: bool,
}

/// Return the TCP header length of a mergeable segment, or `None`.
fn mergeable(seg: &[u8]) -> Option<usize> {
    let ip = seg.get(IP..TCP)?;
    let tcp = seg.get(TCP..TCP + 20)?;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    let flags = tcp[13];
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    let shape_ok = seg[12..14] == [0x08, 0x00]
        && ip[0] == 0x45
        && ip[9] == 6
        && fragment == 0
        && ETH + total == seg.len()
        && tcp_len >= 20
        && seg.len() > TCP + tcp_len
        && flags & !(PSH | FIN) == ACK;
    (shape_ok && checksums_ok(seg, tcp_len)).then_some(tcp_len)
}

/// True if the segment's IPv4 header and TCP checksums are correct.
fn checksums_ok(seg: &[u8], _tcp_len: usize) -> bool {
    if checksum::data(&seg[IP..TCP]) != 0xffff {
        return false;
    }
    let addr = |at: usize| std::net::Ipv4Addr::new(seg[at], seg[at + 1], seg[at + 2], seg[at + 3]);
    let Ok(len) = u32::try_from(seg.len() - TCP) else {
        return false;
    };
    let pseudo = checksum::pseudo_header_v4(&addr(IP + 12), &addr(IP + 16), IpProtocol::Tcp, len);
    checksum::combine(&[pseudo, checksum::data(&seg[TCP..])]) == 0xffff
}

fn seq(seg: &[u8]) -> u32 {
    u32::from_be_bytes([seg[TCP + 4], seg[TCP + 5], seg[TCP + 6], seg[TCP + 7]])
}

impl Merge {
    /// Start a merge with `seg`, already copied whole to the front of the merged frame;
    /// `None` if it cannot start one (it goes on alone).
    pub fn start(seg: &[u8]) -> Option<Merge> {
        let tcp_len = mergeable(seg)?;
        let headers = TCP + tcp_len;
        let payload = seg.len() - headers;
        let flags = seg[TCP + 13];
        Some(Merge {
            gso_size: payload,
            next_seq: seq(seg).wrapping_add(u32::try_from(payload).ok()?),
            headers,
            segments: 1,
            closed: flags & (PSH | FIN) != 0,
        })
    }

    /// Append `seg` to the merged frame `merged` (which grows by its payload) if it
    /// continues it; return whether it did.
    pub fn push(&mut self, merged: &mut [u8], merged_len: &mut usize, seg: &[u8]) -> bool {
        if self.closed || mergeable(seg) != Some(self.headers - TCP) {
            return false;
        }
        let first = &merged[..self.headers];
        let same = first[..12] == seg[..12]                       // MACs
            && first[IP + 1] == seg[IP + 1]                        // TOS
            && (first[IP + 6] & 0x40) == (seg[IP + 6] & 0x40)      // DF
            && first[IP + 8..IP + 10] == seg[IP + 8..IP + 10]      // TTL, protocol
            && first[IP + 12..IP + 20] == seg[IP + 12..IP + 20]    // addresses
            && first[TCP..TCP + 4] == seg[TCP..TCP + 4]            // ports
            && first[TCP + 8..TCP + 13] == seg[TCP + 8..TCP + 13]  // ack, data offset
            && first[TCP + 14..TCP + 16] == seg[TCP + 14..TCP + 16] // window
            && first[TCP + 20..] == seg[TCP + 20..self.headers]; // options
        let payload = &seg[self.headers..];
        if !same || seq(seg) != self.next_seq || payload.len() > self.gso_size {
            return false;
        }
        let Some(room) = merged.get_mut(*merged_len..*merged_len + payload.len()) else {
            return false;
        };
        room.copy_from_slice(payload);
        *merged_len += payload.len();
        self.next_seq = self
            .next_seq
            .wrapping_add(u32::try_from(payload.len()).unwrap_or(0));
        self.segments += 1;
        let flags = seg[TCP + 13];
        merged[TCP + 13] |= flags & (PSH | FIN);
        self.closed = payload.len() < self.gso_size || flags & (PSH | FIN) != 0;
        true
    }

    /// Finish the merged frame `merged` (complete): fix its lengths and checksums and write
    /// the virtio-net header for it into `header` ([`VNET_HDR_LEN`] bytes): a super-frame
    /// with its TCP checksum left to fill, or a plain frame if only one segment came.
    pub fn finish(&self, merged: &mut [u8], header: &mut [u8]) {
        header.fill(0);
        if self.segments == 1 || header.len() < VNET_HDR_LEN {
            return;
        }
        let total = u16::try_from(merged.len() - ETH).unwrap_or(u16::MAX);
        merged[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
        merged[IP + 10..IP + 12].fill(0);
        let sum = !checksum::data(&merged[IP..TCP]);
        merged[IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
        // A partial checksum holds the pseudo-header's sum, for the receiver to finish.
        let addr = |at: usize| {
            std::net::Ipv4Addr::new(merged[at], merged[at + 1], merged[at + 2], merged[at + 3])
        };
        let len = u32::try_from(merged.len() - TCP).unwrap_or(0);
        let pseudo =
            checksum::pseudo_header_v4(&addr(IP + 12), &addr(IP + 16), IpProtocol::Tcp, len);
        merged[TCP + 16..TCP + 18].copy_from_slice(&pseudo.to_be_bytes());
        header[0] = F_NEEDS_CSUM;
        header[1] = GSO_TCPV4;
        let le = |v: usize| u16::try_from(v).unwrap_or(u16::MAX).to_le_bytes();
        header[2..4].copy_from_slice(&le(self.headers));
        header[4..6].copy_from_slice(&le(self.gso_size));
        header[6..8].copy_from_slice(&le(TCP));
        header[8..10].copy_from_slice(&le(16));
    }
}

#[cfg(test)]
mod tests;
