//! Ports: the switch's end of each virtual server's TAP.
//!
//! Contract: a port reads and writes whole Ethernet frames without blocking; `read` returns
//! `WouldBlock` when the server has sent nothing more. The fd is registered with the data
//! path's poller by reference and closed (removing the TAP) when the port drops.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use crate::topology::PortId;

/// One virtual server's TAP, held open by netd.
#[derive(Debug)]
pub struct TapPort {
    id: PortId,
    file: File,
}

impl TapPort {
    /// Wrap a non-blocking TAP file for port `id`.
    pub fn new(id: PortId, file: File) -> TapPort {
        TapPort { id, file }
    }

    /// Return the port's id.
    pub fn id(&self) -> PortId {
        self.id
    }

    /// Read one frame into `buf`; a frame longer than `buf` is truncated by the kernel.
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write one whole frame.
    #[inline]
    pub fn write(&self, frame: &[u8]) -> io::Result<()> {
        let n = (&self.file).write(frame)?;
        if n == frame.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to TAP",
            ))
        }
    }
}

impl AsRawFd for TapPort {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
