//! A virtual server's TAP, held open by netd.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use super::{Offload, Port};
use crate::topology::PortId;

/// One virtual server's TAP: its fd is registered with the data path's poller by reference
/// and closed (removing the TAP) when the port drops.
#[derive(Debug)]
pub struct TapPort {
    id: PortId,
    file: File,
    offload: Offload,
}

impl TapPort {
    /// Wrap a non-blocking TAP file for port `id`, opened with `offload`'s header or not.
    pub fn new(id: PortId, file: File, offload: Offload) -> TapPort {
        TapPort { id, file, offload }
    }
}

impl Port for TapPort {
    fn id(&self) -> PortId {
        self.id
    }

    fn offload(&self) -> Offload {
        self.offload
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    /// Writes to a TAP from several fds of one open file are whole frames each: any thread
    /// may write while its owner reads.
    fn share(&self) -> io::Result<Option<Box<dyn Port>>> {
        let file = self.file.try_clone()?;
        Ok(Some(Box::new(TapPort::new(self.id, file, self.offload))))
    }

    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    #[inline]
    fn write(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file.write(frame)?;
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
