//! Route netlink, spoken directly: the few requests that give a server's `eth0` its
//! identity (MAC, MTU, addresses, default routes, link state).
//!
//! Before this, each server cost one `ip -batch` process: some 3 ms of fork and exec, most
//! of a thousand servers' start-up. A netlink socket belongs to the namespace of the thread
//! that opens it, so [`Rtnl::open`] on a thread inside a server's namespace configures that
//! namespace. Messages are built with `netlink-packet-route`'s types; each request waits for
//! the kernel's acknowledgement, and a refusal comes back as [`RtnlError`]: what was asked,
//! and the kernel's errno.

use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::wire::MacAddr;

/// A request the kernel refused (or that could not be sent): what, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct RtnlError {
    /// The request, in `ip`'s words (e.g. "address add 10.0.0.1/24 dev eth0").
    pub what: String,
    #[source]
    pub source: io::Error,
}

/// A route netlink socket in the namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Return the index of the interface `name` in this namespace.
    pub fn index_of(&self, name: &str) -> Result<u32, RtnlError> {
        nix::net::if_::if_nametoindex(name).map_err(|errno| RtnlError {
            what: format!("find {name}"),
            source: errno.into(),
        })
    }

    /// Set the link's MAC and MTU, and have the kernel derive its IPv6 link-local address
    /// from the MAC (EUI-64). The link must be down for the MAC to change.
    pub fn set_identity(&mut self, index: u32, mac: MacAddr, mtu: u16) -> Result<(), RtnlError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes = vec![
            LinkAttribute::Address(mac.octets().to_vec()),
            LinkAttribute::Mtu(u32::from(mtu)),
            LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
                In6AddrGenMode::Eui64,
            )])]),
        ];
        let what = || format!("link set index {index} address {mac} mtu {mtu} addrgenmode eui64");
        self.request(RouteNetlinkMessage::SetLink(link), 0, what)
    }

    /// Bring the link up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), RtnlError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.change_mask = LinkFlags::Up;
        if up {
            link.header.flags = LinkFlags::Up;
        }
        let state = if up { "up" } else { "down" };
        let what = || format!("link set index {index} {state}");
        self.request(RouteNetlinkMessage::SetLink(link), 0, what)
    }

    /// Add `address` to the link; `nodad` skips IPv6 duplicate address detection.
    pub fn add_address(
        &mut self,
        index: u32,
        address: IpNetwork,
        nodad: bool,
    ) -> Result<(), RtnlError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = address.prefix();
        msg.header.family = family(address.ip());
        msg.attributes = vec![
            AddressAttribute::Local(address.ip()),
            AddressAttribute::Address(address.ip()),
        ];
        if nodad {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        let what = || format!("address add {address} dev index {index}");
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(RouteNetlinkMessage::NewAddress(msg), flags, what)
    }

    /// Remove every address of the link (its routes go with them).
    pub fn flush_addresses(&mut self, index: u32) -> Result<(), RtnlError> {
        let what = || format!("address flush dev index {index}");
        let dump = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .map_err(|source| RtnlError {
                what: what(),
                source,
            })?;
        for msg in dump {
            if let RouteNetlinkMessage::NewAddress(addr) = msg
                && addr.header.index == index
            {
                self.request(RouteNetlinkMessage::DelAddress(addr), 0, what)?;
            }
        }
        Ok(())
    }

    /// Add a default route via `gateway` out of the link, in the main table.
    pub fn add_default_route(&mut self, index: u32, gateway: IpAddr) -> Result<(), RtnlError> {
        let mut route = RouteMessage::default();
        route.header.address_family = family(gateway);
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        let via = match gateway {
            IpAddr::V4(v4) => RouteAddress::Inet(v4),
            IpAddr::V6(v6) => RouteAddress::Inet6(v6),
        };
        route.attributes = vec![RouteAttribute::Gateway(via), RouteAttribute::Oif(index)];
        let what = || format!("route add default via {gateway} dev index {index}");
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.request(RouteNetlinkMessage::NewRoute(route), flags, what)
    }

    /// Send `msg` with `flags` and wait for its acknowledgement.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: impl Fn() -> String,
    ) -> Result<(), RtnlError> {
        let fail = |source| RtnlError {
            what: what(),
            source,
        };
        let seq = self
            .send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .map_err(fail)?;
        loop {
            for reply in self.receive().map_err(fail)? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(err) = reply.payload {
                    return match err.code {
                        None => Ok(()),
                        Some(code) => Err(fail(io::Error::from_raw_os_error(-code.get()))),
                    };
                }
            }
        }
    }

    /// Send a dump request and collect its replies.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            for reply in self.receive()? {
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(err) => {
                        if let Some(code) = err.code {
                            return Err(io::Error::from_raw_os_error(-code.get()));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Send `msg` with `flags`; return its sequence number.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        Ok(self.seq)
    }

    /// Receive one datagram of replies.
    fn receive(&mut self) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let len = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let mut replies = Vec::new();
        let mut at = 0;
        while at < len {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..len])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let size = reply.header.length as usize;
            replies.push(reply);
            if size == 0 {
                break;
            }
            at += size.next_multiple_of(4);
        }
        Ok(replies)
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}
