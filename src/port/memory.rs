//! An in-process port for tests and simulations without root.
//!
//! A [`MemoryPort`] is one end of a `SOCK_DGRAM` Unix socket pair; a test holds the other
//! end, a [`MemoryPeer`], to send frames into the switch and receive what the switch sends
//! out. Datagrams keep frame boundaries, so the port behaves like a TAP: one read is one
//! frame, the fd polls readable while frames wait, and writes fail when the peer is gone.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use super::{Offload, Port};
use crate::topology::PortId;

/// The switch's end of an in-process port.
#[derive(Debug)]
pub struct MemoryPort {
    id: PortId,
    socket: UnixDatagram,
    offload: Offload,
}

/// The test's end of a [`MemoryPort`]: what a virtual server would be.
#[derive(Debug)]
pub struct MemoryPeer {
    socket: UnixDatagram,
}

impl MemoryPort {
    /// Make port `id` and the peer that sends and receives its frames.
    pub fn pair(id: PortId, offload: Offload) -> io::Result<(MemoryPort, MemoryPeer)> {
        let (port, peer) = UnixDatagram::pair()?;
        port.set_nonblocking(true)?;
        Ok((
            MemoryPort {
                id,
                socket: port,
                offload,
            },
            MemoryPeer { socket: peer },
        ))
    }
}

impl Port for MemoryPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn offload(&self) -> Offload {
        self.offload
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.socket.as_raw_fd())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(buf)
    }

    fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        self.socket.send(frame).map(|_| ())
    }
}

impl MemoryPeer {
    /// Send one frame (with the port's header, if it has one) into the switch.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.socket.send(frame).map(|_| ())
    }

    /// Receive the next frame the switch sent out of the port, waiting up to `timeout`;
    /// `None` when none came.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.socket.set_read_timeout(Some(timeout)).ok()?;
        let mut buf = vec![0u8; 70_000];
        let n = self.socket.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }
}
