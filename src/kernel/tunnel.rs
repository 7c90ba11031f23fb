//! The VXLAN tunnel's socket: UDP port 4789 on this host's underlay address, opened in the
//! namespace that stands for the host's own stack when the topology names one.

use std::net::{SocketAddrV4, UdpSocket};

use nix::sys::socket::{setsockopt, sockopt};

use super::{KernelError, netns};
use crate::topology::Host;
use crate::topology::cluster::VXLAN_PORT;

/// Socket buffers for the tunnel: room for bursts of a few hundred 64 KiB super-frames'
/// segments while the data path is busy elsewhere.
const BUFFER_BYTES: usize = 8 << 20;

/// Open the tunnel's socket on `host`'s underlay address.
pub fn bind(host: &Host) -> Result<UdpSocket, KernelError> {
    let addr = SocketAddrV4::new(host.underlay, VXLAN_PORT);
    let open = move || {
        let socket = UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        // Root may exceed net.core.[rw]mem_max; without CAP_NET_ADMIN keep the default.
        let _ = setsockopt(&socket, sockopt::RcvBufForce, &BUFFER_BYTES);
        let _ = setsockopt(&socket, sockopt::SndBufForce, &BUFFER_BYTES);
        // Datagrams of one sender come up together (the tunnel merges TCP segments back).
        setsockopt(&socket, sockopt::UdpGroSegment, &true)?;
        Ok(socket)
    };
    let opened = match &host.netns {
        Some(ns) => netns::run_in(ns, open),
        None => open(),
    };
    opened.map_err(|source| KernelError::Underlay {
        addr,
        netns: host.netns.clone().unwrap_or_else(|| "netd's own".into()),
        source,
    })
}
