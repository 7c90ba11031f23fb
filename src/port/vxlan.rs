//! The VXLAN tunnel (RFC 7348): one UDP socket on the host's underlay address, port 4789,
//! carrying every tenant's frames to and from the cluster's other hosts.
//!
//! To the switch the tunnel is many ports, one per remote server ([`Port::carries`]), each
//! guarded like a local server's port: so isolation and anti-spoofing hold across hosts by
//! the same rules as on one host. The tunnel itself checks what only it can see, before the
//! switch: a datagram must come from a cluster host, carry the VNI of one of this host's
//! tenants, and an inner source MAC of one of that tenant's servers on that very host.
//! Anything else is counted ([`TunnelDrop`]) and dropped. Forwarding entries come from the
//! topology: there is no learning.
//!
//! Encapsulation is done here rather than by a kernel `vxlan` device: the outer source
//! address is needed for the checks above, and a kernel device hides it. A GSO super-frame
//! is cut into wire segments in software ([`crate::wire::segment`]) and handed to the kernel
//! as one UDP GSO send (`UDP_SEGMENT`): one system call for up to 64 KiB of segments.
//! Small frames to one host (a TCP receiver's ACKs) are held until the loop's turn ends
//! and leave together the same way ([`Held`]): each send costs the sender a system call and
//! the receiver a wake-up, whatever its size.

use std::collections::{HashMap, HashSet};
use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, sendmsg};

use super::{Offload, Port};
use crate::stats::{TunnelCounters, TunnelDrop};
use crate::topology::{PortId, Topology};
use crate::wire::MacAddr;
use crate::wire::coalesce::Merge;
use crate::wire::segment::{SegmentError, segment};
use crate::wire::vnet::{VNET_HDR_LEN, VnetHeader};

/// Bytes of a VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The "VNI present" flag of a VXLAN header.
const FLAG_VNI: u8 = 0x08;
/// The largest UDP payload one send may carry (the kernel refuses more, GSO or not).
const MAX_SEND: usize = 65_507;
/// The most datagrams one UDP GSO send may carry (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;

/// Where remote servers are and who may send for them, from one topology.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelTable {
    /// Each remote server's host endpoint and its tenant's VNI.
    to: HashMap<PortId, (SocketAddrV4, u32)>,
    /// (host underlay, VNI, inner source MAC) → the remote server sending.
    from: HashMap<(Ipv4Addr, u32, MacAddr), PortId>,
    /// Every cluster host's underlay address.
    hosts: HashSet<Ipv4Addr>,
    /// The VNIs of this host's tenants.
    vnis: HashSet<u32>,
}

impl TunnelTable {
    /// Build the table of `topology`'s cluster view (empty for a single host); remote
    /// hosts listen on `port`.
    pub fn new(topology: &Topology, port: u16) -> TunnelTable {
        let mut table = TunnelTable::default();
        let Some(cluster) = &topology.cluster else {
            return table;
        };
        table.hosts = cluster.peers.iter().map(|h| h.underlay).collect();
        table.vnis = topology.tenants.iter().filter_map(|t| t.vni).collect();
        for remote in &cluster.remote {
            let Some(vni) = topology.tenant_by_id(remote.tenant).and_then(|t| t.vni) else {
                continue;
            };
            let endpoint = SocketAddrV4::new(remote.underlay, port);
            table.to.insert(remote.id, (endpoint, vni));
            table
                .from
                .insert((remote.underlay, vni, remote.mac), remote.id);
        }
        table
    }

    /// Return the remote servers' ports, in order.
    pub fn ports(&self) -> Vec<PortId> {
        let mut ports: Vec<PortId> = self.to.keys().copied().collect();
        ports.sort_unstable();
        ports
    }

    /// Judge a datagram's outer source, VNI and inner source MAC: the remote server it
    /// comes from, or why to drop it.
    fn sender(&self, from: Ipv4Addr, vni: u32, mac: MacAddr) -> Result<PortId, TunnelDrop> {
        if !self.hosts.contains(&from) {
            return Err(TunnelDrop::NotAHost);
        }
        if !self.vnis.contains(&vni) {
            return Err(TunnelDrop::UnknownVni);
        }
        self.from
            .get(&(from, vni, mac))
            .copied()
            .ok_or(TunnelDrop::UnknownSender)
    }
}

/// The tunnel's end of the switch.
#[derive(Debug)]
pub struct VxlanPort {
    socket: UdpSocket,
    table: TunnelTable,
    /// The first remote server's port: the tunnel's name in logs.
    id: PortId,
    offload: Offload,
    counters: Arc<TunnelCounters>,
    /// The remote server the last frame read came from.
    last: PortId,
    /// Where a frame is encapsulated (and a super-frame segmented) on its way out.
    out: Vec<u8>,
    /// What one receive brought: with UDP GRO, several datagrams of one sender.
    batch: Batch,
    /// Small datagrams waiting to leave together.
    held: Held,
}

/// Datagrams to one host held back to leave in one UDP GSO send: all of one length but the
/// last, which may be shorter (and then closes the send), as `UDP_SEGMENT` requires.
#[derive(Debug)]
struct Held {
    buf: Vec<u8>,
    to: SocketAddrV4,
    /// The length of each datagram but the last.
    stride: usize,
    count: usize,
}

impl Held {
    fn new() -> Held {
        Held {
            buf: Vec::with_capacity(MAX_SEND),
            to: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            stride: 0,
            count: 0,
        }
    }

    /// Return true if a datagram of `len` bytes to `to` may join the held ones.
    fn takes(&self, to: SocketAddrV4, len: usize) -> bool {
        self.count == 0
            || (to == self.to
                && len <= self.stride
                && self.count < MAX_SEGMENTS
                && self.buf.len() + len <= MAX_SEND)
    }

    /// Append the datagram `header` + `frame` to `to`; return its range in the buffer.
    fn push(&mut self, to: SocketAddrV4, header: &[u8], frame: &[u8]) -> std::ops::Range<usize> {
        if self.count == 0 {
            self.to = to;
            self.stride = header.len() + frame.len();
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(header);
        self.buf.extend_from_slice(frame);
        self.count += 1;
        start..self.buf.len()
    }

    /// Forget the datagram at `range`, the last pushed.
    fn pop(&mut self, range: std::ops::Range<usize>) {
        self.buf.truncate(range.start);
        self.count -= 1;
    }

    /// Return true when no further datagram may join: the last one was shorter.
    fn closed(&self) -> bool {
        self.count > 0 && self.buf.len() < self.count * self.stride
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }
}

/// Datagrams received at once (UDP GRO: the kernel hands over up to 64 KiB of datagrams
/// from one sender, all `size` long but the last), read one frame at a time.
#[derive(Debug)]
struct Batch {
    buf: Vec<u8>,
    len: usize,
    /// Where the next datagram starts.
    at: usize,
    size: usize,
    from: Ipv4Addr,
    /// Room for the GRO control message.
    control: Vec<u8>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            buf: vec![0; MAX_SEND + 1024],
            len: 0,
            at: 0,
            size: 0,
            from: Ipv4Addr::UNSPECIFIED,
            control: nix::cmsg_space!(i32),
        }
    }

    /// Take the next datagram, if any is left.
    fn next(&mut self) -> Option<&[u8]> {
        if self.at >= self.len {
            return None;
        }
        let end = (self.at + self.size.max(1)).min(self.len);
        let datagram = &self.buf[self.at..end];
        self.at = end;
        Some(datagram)
    }

    /// Put the datagram just taken back (it starts the next frame).
    fn unread(&mut self, len: usize) {
        self.at -= len;
    }

    /// Receive the next batch from `fd`.
    fn receive(&mut self, fd: RawFd) -> io::Result<()> {
        use nix::sys::socket::{ControlMessageOwned, recvmsg};
        let mut iov = [io::IoSliceMut::new(&mut self.buf)];
        let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut self.control), MsgFlags::empty())
            .map_err(io::Error::from)?;
        let mut size = msg.bytes;
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(n) = cmsg {
                    size = usize::try_from(n).unwrap_or(msg.bytes);
                }
            }
        }
        self.from = msg.address.map_or(Ipv4Addr::UNSPECIFIED, |a| a.ip());
        self.len = msg.bytes;
        self.size = size;
        self.at = 0;
        Ok(())
    }

    /// Return how many datagrams the batch holds.
    fn datagrams(&self) -> usize {
        self.len.div_ceil(self.size.max(1))
    }
}

impl VxlanPort {
    /// The tunnel over `socket` (bound to the underlay address, non-blocking) for the
    /// remote servers in `table`; `None` when there are none.
    pub fn new(
        socket: UdpSocket,
        table: TunnelTable,
        offload: Offload,
        counters: Arc<TunnelCounters>,
    ) -> Option<VxlanPort> {
        let id = table.ports().first().copied()?;
        Some(VxlanPort {
            socket,
            table,
            id,
            offload,
            counters,
            last: id,
            out: Vec::with_capacity(2 * MAX_SEND),
            batch: Batch::new(),
            held: Held::new(),
        })
    }

    /// Take the next datagram of the batch that passes the tunnel's checks: the remote
    /// server it comes from and its inner frame's extent in the batch.
    fn next_frame(&mut self) -> Option<(PortId, std::ops::Range<usize>)> {
        loop {
            let from = self.batch.from;
            let start = self.batch.at;
            let datagram = self.batch.next()?;
            if datagram.len() < VXLAN_HEADER_LEN + 14 || datagram[0] & FLAG_VNI == 0 {
                self.counters.count_drop(TunnelDrop::Malformed);
                continue;
            }
            let vni = u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]);
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&datagram[VXLAN_HEADER_LEN + 6..VXLAN_HEADER_LEN + 12]);
            match self.table.sender(from, vni, MacAddr(mac)) {
                Ok(port) => {
                    return Some((port, start + VXLAN_HEADER_LEN..start + datagram.len()));
                }
                Err(reason) => self.counters.count_drop(reason),
            }
        }
    }

    /// Send the held datagrams, counting them as errors if the kernel refuses.
    fn send_held(&mut self) {
        let held = &self.held;
        if held.count > 0 {
            let fd = self.socket.as_raw_fd();
            let sent = send_datagrams(fd, &held.buf, held.to, held.count, held.stride);
            // Each frame was already counted as written; the tunnel counts what failed.
            let _ = self.count_sent(held.count, held.buf.len(), sent);
        }
        self.held.clear();
    }

    /// Count `count` datagrams of `len` bytes as sent, or as errors; hand `sent` back.
    fn count_sent(&self, count: usize, len: usize, sent: io::Result<()>) -> io::Result<()> {
        match &sent {
            Ok(()) => self.counters.count_tx(count, len),
            Err(_) => {
                self.counters
                    .tx_errors
                    .fetch_add(count as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        sent
    }
}

/// Send `buf`, which holds `count` datagrams `stride` bytes apart (the last one shorter or
/// equal), to `endpoint` on the UDP socket `fd`: as few UDP GSO sends as the kernel allows.
fn send_datagrams(
    fd: RawFd,
    buf: &[u8],
    endpoint: SocketAddrV4,
    count: usize,
    stride: usize,
) -> io::Result<()> {
    let addr = SockaddrIn::from(endpoint);
    let per_send = (MAX_SEND / stride.max(1)).clamp(1, MAX_SEGMENTS);
    let size = u16::try_from(stride).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut at = 0;
    let mut left = count;
    while left > 0 {
        let n = left.min(per_send);
        let end = if n == left {
            buf.len()
        } else {
            at + n * stride
        };
        let iov = [IoSlice::new(&buf[at..end])];
        let gso = [ControlMessage::UdpGsoSegments(&size)];
        let cmsgs: &[ControlMessage<'_>] = if n > 1 { &gso } else { &[] };
        sendmsg(fd, &iov, cmsgs, MsgFlags::empty(), Some(&addr)).map_err(io::Error::from)?;
        at = end;
        left -= n;
    }
    Ok(())
}

/// Write a VXLAN header for `vni` into `header` (8 bytes).
fn put_header(header: &mut [u8], vni: u32) {
    header.fill(0);
    header[0] = FLAG_VNI;
    header[4..8].copy_from_slice(&(vni << 8).to_be_bytes());
}

impl Port for VxlanPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn offload(&self) -> Offload {
        self.offload
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.socket.as_raw_fd())
    }

    fn carries(&self) -> Vec<PortId> {
        self.table.ports()
    }

    fn last_ingress(&self) -> PortId {
        self.last
    }

    /// Read the next frame that passes the tunnel's checks: consecutive segments of one
    /// TCP flow from one remote server merged into a super-frame when the port takes them
    /// ([`Merge`]), else one datagram's inner frame, behind an empty virtio-net header.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let header = self.offload.header_len();
        let (port, first) = loop {
            if let Some(found) = self.next_frame() {
                break found;
            }
            self.batch.receive(self.socket.as_raw_fd())?;
            self.counters
                .count_rx(self.batch.datagrams(), self.batch.len);
        };
        self.last = port;
        let mut len = header + first.len();
        let room = buf
            .get_mut(header..len)
            .ok_or(io::ErrorKind::InvalidInput)?;
        room.copy_from_slice(&self.batch.buf[first.clone()]);
        let merge = (header == VNET_HDR_LEN)
            .then(|| Merge::start(&self.batch.buf[first]))
            .flatten();
        let Some(mut merge) = merge else {
            buf[..header].fill(0);
            return Ok(len);
        };
        let mut frame_len = len - header;
        while let Some((next, range)) = self.next_frame() {
            let taken = range.len() + VXLAN_HEADER_LEN;
            let segment = &self.batch.buf[range];
            if next != port || !merge.push(&mut buf[header..], &mut frame_len, segment) {
                self.batch.unread(taken);
                break;
            }
        }
        len = header + frame_len;
        let (head, frame) = buf.split_at_mut(header);
        merge.finish(&mut frame[..frame_len], head);
        Ok(len)
    }

    fn write(&mut self, _frame: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the tunnel needs the remote server a frame goes to",
        ))
    }

    /// Encapsulate a frame for remote server `to` and send it to its host; a super-frame
    /// is segmented first, a partial checksum completed.
    fn write_to(&mut self, to: PortId, frame: &[u8]) -> io::Result<()> {
        let Some(&(endpoint, vni)) = self.table.to.get(&to) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such remote server",
            ));
        };
        let header = self.offload.header_len();
        let (vnet, l2) = if header == 0 {
            (VnetHeader::default(), frame)
        } else {
            let vnet = VnetHeader::parse(frame).ok_or(io::ErrorKind::InvalidData)?;
            (vnet, frame.get(VNET_HDR_LEN..).unwrap_or_default())
        };
        if vnet.is_gso() {
            // Whatever was held goes first: frames to one host keep their order.
            self.send_held();
            let layout = segment(&vnet, l2, VXLAN_HEADER_LEN, &mut self.out).map_err(|e| {
                let kind = match e {
                    SegmentError::Unsupported => io::ErrorKind::Unsupported,
                    SegmentError::Malformed => io::ErrorKind::InvalidData,
                };
                io::Error::from(kind)
            })?;
            for i in 0..layout.count {
                let at = i * layout.stride;
                put_header(&mut self.out[at..at + VXLAN_HEADER_LEN], vni);
            }
            let fd = self.socket.as_raw_fd();
            let sent = send_datagrams(fd, &self.out, endpoint, layout.count, layout.stride);
            return self.count_sent(layout.count, self.out.len(), sent);
        }
        let mut header = [0; VXLAN_HEADER_LEN];
        put_header(&mut header, vni);
        if !self.held.takes(endpoint, header.len() + l2.len()) {
            self.send_held();
        }
        let range = self.held.push(endpoint, &header, l2);
        let inner = &mut self.held.buf[range.start + VXLAN_HEADER_LEN..range.end];
        if vnet.needs_checksum() && !vnet.complete_checksum(inner) {
            self.held.pop(range);
            return Err(io::ErrorKind::InvalidData.into());
        }
        if self.held.closed() {
            self.send_held();
        }
        Ok(())
    }

    fn holds_writes(&self) -> bool {
        true
    }

    fn flush(&mut self) {
        self.send_held();
    }
}

#[cfg(test)]
mod tests;
