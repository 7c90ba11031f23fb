//! A tenant's gateway: smoltcp's `Interface` attached to the switch as a port.
//!
//! Contract: the gateway answers for its address inside its tenant's L2 domain, and only
//! there: ARP for the gateway address, neighbour discovery for its IPv6 address (when the
//! tenant has `gateway6`), ICMP echo to either (smoltcp's own replies) and DHCPv4 from the
//! tenant's servers ([`dhcp`]: static leases from the topology). It is a
//! [`Port`] without an fd: the switch writes frames into it, the data path calls
//! [`Port::poll`] when smoltcp's next deadline comes (or at once after a write), and reads
//! what smoltcp sent. Exactly one party answers for the gateway address: this one.
//!
//! What it is fed: plain frames of at most the MTU, checksums complete. The port declares
//! [`Offload::None`], so the data path completes partial checksums before a frame gets here
//! and never hands it a GSO super-frame (those are dropped as `gso_unsupported`). Its input
//! queue is bounded ([`RX_QUEUE`]); when smoltcp falls behind, further frames fail to write
//! and are counted as `write_failed` on the gateway's port.
//!
//! Time: the data path's monotonic nanoseconds, given to smoltcp as microseconds.

pub mod dhcp;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{
    DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress,
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address,
};
use tracing::debug;

use crate::port::{Offload, Port};
use crate::shaper::Nanos;
use crate::topology::{DEFAULT_MTU, Gateway, PortId, Server, TenantId, Topology};
use crate::wire::{ETHERNET_HEADER_LEN, MacAddr};

use dhcp::Leases;

/// Frames waiting for smoltcp; beyond this the gateway refuses more (a flood of ARP or
/// pings cannot grow its memory).
pub const RX_QUEUE: usize = 256;
/// Frames smoltcp sent and the data path has not read yet.
const TX_QUEUE: usize = 256;

/// The smoltcp device between the switch and the interface: two bounded frame queues.
#[derive(Debug, Default)]
struct SwitchDevice {
    /// From the switch, for smoltcp.
    rx: VecDeque<Vec<u8>>,
    /// From smoltcp, for the switch.
    tx: VecDeque<Vec<u8>>,
}

impl Device for SwitchDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        (self.tx.len() < TX_QUEUE).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(DEFAULT_MTU) + ETHERNET_HEADER_LEN;
        caps
    }
}

struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}

/// One tenant's gateway port.
pub struct GatewayPort {
    id: PortId,
    address: Ipv4Address,
    iface: Interface,
    device: SwitchDevice,
    sockets: SocketSet<'static>,
    dhcp_socket: SocketHandle,
    leases: Leases,
    /// When smoltcp next needs polling (a neighbour to resolve, a socket to flush).
    next_poll: Option<Nanos>,
}

impl std::fmt::Debug for GatewayPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPort")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl GatewayPort {
    /// Build the gateway port of tenant `tenant` of `topology`, if it has one.
    pub fn of(topology: &Topology, tenant: TenantId) -> Option<GatewayPort> {
        let gateway = topology.tenant_by_id(tenant)?.gateway.as_ref()?;
        Some(GatewayPort::new(gateway, topology.servers_of(tenant)))
    }

    /// Build the gateway `gateway` of a tenant whose servers are `servers`.
    fn new<'s>(gateway: &Gateway, servers: impl Iterator<Item = &'s Server>) -> GatewayPort {
        let mut device = SwitchDevice::default();
        let mac = EthernetAddress(gateway.mac.octets());
        // The seed only varies smoltcp's TCP sequence numbers and ports; the gateway has
        // no TCP socket, so a fixed one will do.
        let config = Config::new(HardwareAddress::Ethernet(mac));
        // Smoltcp's clock starts with the data path's (both count from 0) and only moves on.
        let mut iface = Interface::new(config, &mut device, Instant::ZERO);
        let address = gateway.ip.ip();
        iface.update_ip_addrs(|addrs| {
            // At most three addresses into an empty list: never over capacity.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(address), gateway.ip.prefix()));
            if let Some(ipv6) = gateway.ipv6 {
                // Neighbour discovery and echo for it, from smoltcp, as ARP for IPv4; and the
                // link-local address from the MAC, which hosts expect a router to have.
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(ipv6.ip()), ipv6.prefix()));
                let link_local = gateway.mac.ipv6_link_local();
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(link_local), 64));
            }
        });
        let mut sockets = SocketSet::new(Vec::new());
        let buffer =
            || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1024]);
        let mut socket = udp::Socket::new(buffer(), buffer());
        // Bound to the port only: DISCOVERs come to 255.255.255.255 from 0.0.0.0.
        let _ = socket.bind(DHCP_SERVER_PORT);
        let dhcp_socket = sockets.add(socket);
        GatewayPort {
            id: gateway.port,
            address,
            iface,
            device,
            sockets,
            dhcp_socket,
            leases: Leases::new(gateway, servers),
            next_poll: None,
        }
    }

    /// Answer every DHCP request smoltcp received.
    fn serve_dhcp(&mut self) {
        let socket = self.sockets.get_mut::<udp::Socket>(self.dhcp_socket);
        let mut request = [0u8; 1500];
        while let Ok((len, _meta)) = socket.recv_slice(&mut request) {
            let Ok(packet) = DhcpPacket::new_checked(&request[..len]) else {
                continue;
            };
            let Ok(repr) = DhcpRepr::parse(&packet) else {
                continue;
            };
            // The switch's guard checked `chaddr` is the asking port's own MAC.
            let source = MacAddr(repr.client_hardware_address.0);
            let mut options = [DhcpOption { kind: 0, data: &[] }];
            let Some(reply) = self.leases.answer(source, &repr, &mut options) else {
                continue;
            };
            let mut out = vec![0u8; reply.buffer_len()];
            if reply
                .emit(&mut DhcpPacket::new_unchecked(&mut out[..]))
                .is_err()
            {
                continue;
            }
            let to = IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::BROADCAST), DHCP_CLIENT_PORT);
            let meta = udp::UdpMetadata {
                endpoint: to,
                local_address: Some(IpAddress::Ipv4(self.address)),
                meta: Default::default(),
            };
            if let Err(err) = socket.send_slice(&out, meta) {
                debug!(cause = %err, "DHCP reply not sent");
            }
        }
    }
}

impl Port for GatewayPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn offload(&self) -> Offload {
        Offload::None
    }

    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self
            .device
            .tx
            .pop_front()
            .ok_or(io::ErrorKind::WouldBlock)?;
        let len = frame.len().min(buf.len());
        buf[..len].copy_from_slice(&frame[..len]);
        Ok(len)
    }

    fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.device.rx.len() >= RX_QUEUE {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.device.rx.push_back(frame.to_vec());
        Ok(())
    }

    fn poll_at(&self) -> Option<Nanos> {
        if !self.device.rx.is_empty() {
            return Some(0);
        }
        self.next_poll
    }

    fn poll(&mut self, now: Nanos) {
        let now = instant(now);
        // Process what came in (smoltcp answers ARP and ping itself), answer DHCP, then
        // poll again to send those answers.
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.serve_dhcp();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.next_poll = self.iface.poll_at(now, &self.sockets).map(|at| {
            u64::try_from(at.total_micros())
                .unwrap_or(0)
                .saturating_mul(1000)
        });
    }
}

/// The data path's nanoseconds as smoltcp's time.
fn instant(now: Nanos) -> Instant {
    Instant::from_micros(i64::try_from(now / 1000).unwrap_or(i64::MAX))
}
