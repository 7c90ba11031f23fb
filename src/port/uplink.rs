//! A routed tenant's uplink port: the TUN in the tenant's router namespace, through which
//! its routed IP packets go to and come from the host's kernel.
//!
//! The switch speaks Ethernet and the TUN speaks IP, so the port translates, in place and
//! without copying the payload:
//! - read: the IP packet lands after room for an Ethernet header, which the port fills in
//!   (source: the gateway's MAC, as a router's would be; destination: zero, for the data path
//!   to set to the server the switch routes the packet to);
//! - write: the Ethernet header is skipped (the packet goes out with `writev`).
//!
//! With a virtio-net header, its offsets count from the Ethernet header on the switch's
//! side and from the IP header on the TUN's: the port moves `csum_start` and `hdr_len` by
//! the 14 bytes between them, so GSO super-frames and partial checksums pass both ways.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use super::{Offload, Port};
use crate::topology::PortId;
use crate::wire::vnet::VNET_HDR_LEN;
use crate::wire::{ETHERNET_HEADER_LEN, MacAddr};

/// Where `hdr_len` (2 bytes, little-endian) and `csum_start` sit in a virtio-net header.
const HDR_LEN_AT: usize = 2;
const CSUM_START_AT: usize = 6;
/// EtherTypes by IP version.
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
/// The Ethernet header's length, as an offset shift.
const ETH_SHIFT: i32 = 14;

/// One routed tenant's TUN, held open by netd (closing it removes the TUN).
#[derive(Debug)]
pub struct UplinkPort {
    id: PortId,
    file: File,
    offload: Offload,
    /// The tenant's gateway MAC: the source of every frame the port hands the switch.
    gateway_mac: MacAddr,
}

impl UplinkPort {
    /// Wrap a non-blocking TUN file for port `id`, opened with `offload`'s header or not.
    pub fn new(id: PortId, file: File, offload: Offload, gateway_mac: MacAddr) -> UplinkPort {
        UplinkPort {
            id,
            file,
            offload,
            gateway_mac,
        }
    }
}

/// Move the offsets of the virtio-net header in `header` by `delta` bytes (saturating: an
/// offset that would not fit makes a frame the kernel or the switch drops as malformed).
fn shift_offsets(header: &mut [u8], delta: i32) {
    for at in [HDR_LEN_AT, CSUM_START_AT] {
        let old = i32::from(u16::from_le_bytes([header[at], header[at + 1]]));
        if old == 0 {
            continue; // "not given": stays so
        }
        let new = u16::try_from((old + delta).max(0)).unwrap_or(u16::MAX);
        header[at..at + 2].copy_from_slice(&new.to_le_bytes());
    }
}

impl Port for UplinkPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn offload(&self) -> Offload {
        self.offload
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    /// Read one packet as `[header][Ethernet][IP packet]`.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let hdr = self.offload.header_len();
        let room = buf
            .get_mut(ETHERNET_HEADER_LEN..)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let n = self.file.read(room)?;
        if n < hdr {
            // Never from a TUN set up with this header; cut, the switch drops it.
            return Ok(n);
        }
        // [gap 14][vnet][ip] → [vnet][eth 14][ip]
        buf.copy_within(ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + hdr, 0);
        if hdr == VNET_HDR_LEN {
            shift_offsets(&mut buf[..hdr], ETH_SHIFT);
        }
        let version = buf.get(hdr + ETHERNET_HEADER_LEN).map_or(0, |b| b >> 4);
        let eth = &mut buf[hdr..hdr + ETHERNET_HEADER_LEN];
        eth[..6].fill(0);
        eth[6..12].copy_from_slice(&self.gateway_mac.octets());
        eth[12..].copy_from_slice(if version == 6 {
            &ETHERTYPE_IPV6
        } else {
            &ETHERTYPE_IPV4
        });
        Ok(n + ETHERNET_HEADER_LEN)
    }

    /// Write `[header][Ethernet][IP packet]` as `[header][IP packet]`.
    fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        let hdr = self.offload.header_len();
        let packet = frame
            .get(hdr + ETHERNET_HEADER_LEN..)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let mut header = [0u8; VNET_HDR_LEN];
        header[..hdr].copy_from_slice(&frame[..hdr]);
        if hdr == VNET_HDR_LEN {
            shift_offsets(&mut header, -ETH_SHIFT);
        }
        let parts = [IoSlice::new(&header[..hdr]), IoSlice::new(packet)];
        let n = self.file.write_vectored(&parts)?;
        if n == hdr + packet.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to the uplink TUN",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    /// An uplink port over a datagram socket pair standing in for the TUN.
    fn port(offload: Offload) -> (UplinkPort, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(ours));
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        (UplinkPort::new(PortId(7), file, offload, mac), theirs)
    }

    const IPV4: [u8; 24] = [
        0x45, 0, 0, 24, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 10, 192, 0, 2, 1, 0, 1, 0, 2,
    ];

    #[test]
    fn a_packet_read_gets_an_ethernet_header_from_the_gateway_and_moved_offsets() {
        let (mut port, tun) = port(Offload::VnetHeader);
        let mut vnet = [0u8; VNET_HDR_LEN];
        vnet[0] = 1; // needs checksum
        vnet[HDR_LEN_AT] = 28;
        vnet[CSUM_START_AT] = 20;
        tun.send(&[&vnet[..], &IPV4[..]].concat()).unwrap();
        let mut buf = vec![0u8; 2048];
        let n = port.read(&mut buf).unwrap();
        assert_eq!(n, VNET_HDR_LEN + ETHERNET_HEADER_LEN + IPV4.len());
        assert_eq!(
            buf[CSUM_START_AT], 34,
            "csum_start now counts the Ethernet header"
        );
        assert_eq!(buf[HDR_LEN_AT], 42);
        let eth = &buf[VNET_HDR_LEN..VNET_HDR_LEN + ETHERNET_HEADER_LEN];
        assert_eq!(eth, [0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        assert_eq!(&buf[VNET_HDR_LEN + ETHERNET_HEADER_LEN..n], IPV4);
    }

    #[test]
    fn a_frame_written_leaves_as_its_ip_packet_with_offsets_moved_back() {
        let (mut port, tun) = port(Offload::VnetHeader);
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame[CSUM_START_AT] = 34;
        frame.extend_from_slice(&[0xaa; ETHERNET_HEADER_LEN]);
        frame.extend_from_slice(&IPV4);
        port.write(&frame).unwrap();
        let mut got = [0u8; 256];
        let n = tun.recv(&mut got).unwrap();
        assert_eq!(n, VNET_HDR_LEN + IPV4.len());
        assert_eq!(got[CSUM_START_AT], 20);
        assert_eq!(got[HDR_LEN_AT], 0, "an offset not given stays unset");
        assert_eq!(&got[VNET_HDR_LEN..n], IPV4);
    }

    #[test]
    fn plain_packets_and_short_frames() {
        let (mut port, tun) = port(Offload::None);
        tun.send(&IPV4).unwrap();
        let mut buf = vec![0u8; 2048];
        let n = port.read(&mut buf).unwrap();
        assert_eq!(&buf[ETHERNET_HEADER_LEN..n], IPV4);
        assert!(
            port.write(&[0u8; 5]).is_err(),
            "shorter than an Ethernet header"
        );
        assert!(port.read(&mut [0u8; 4]).is_err(), "no room for a header");
    }
}
