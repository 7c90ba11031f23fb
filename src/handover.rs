//! Upgrades without taking servers off the network: a running netd hands its servers' TAPs
//! and its routers' TUNs to a new netd (`netd up FILE --take-over`) over the control socket.
//!
//! Contract: the TAPs and TUNs never close, so the servers' `eth0` keeps its carrier,
//! addresses and routes, frames sent meanwhile wait in the TAP's queue, and TCP sees at
//! most a pause. Forwarding stops from the moment the old data path lets go of the ports
//! until the new one polls them: the new process has parsed its options and read the
//! topology before it asks, and builds nothing in the kernel in between.
//!
//! Protocol, on one connection to the old daemon's control socket (root only, 0600; the old
//! daemon also checks the peer is root):
//! 1. new → old: the request line `{"cmd":"hand-over"}`.
//! 2. old: takes every port with an fd out of its data path (one live update), then sends a
//!    [`Response`] whose result is an [`Offer`] (running topology, port names, offload, when
//!    forwarding stopped) framed as a 4-byte big-endian length and JSON, then the fds in
//!    messages of at most [`sys::FDS_PER_MESSAGE`], in the offer's port order.
//! 3. new: starts its data path on them and answers `taken\n`, or `abort\n` if it cannot.
//! 4. old: on `taken`, lets go of the kernel state without tearing it down and exits; the
//!    new daemon binds the control socket and the HTTP address once the old one closed the
//!    connection (its exit). On `abort`, a closed connection or [`REPLY_TIMEOUT`], the old
//!    daemon puts the ports back into its data path and carries on.

use std::io::{self, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::control::Response;
use crate::kernel::sys;

/// How long either side waits for the other at each step.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest offer accepted (the running topology of thousands of servers fits easily).
const MAX_OFFER: usize = 64 * 1024 * 1024;

/// A port whose fd is handed over, named as the topology names it (ids are per process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HandedPort {
    /// A server's TAP.
    Server { name: String },
    /// A routed tenant's uplink TUN.
    Uplink { tenant: String },
}

/// What the old daemon hands over besides the fds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// The running state as topology-file TOML (live changes included).
    pub topology: String,
    /// One entry per fd, in the order the fds follow.
    pub ports: Vec<HandedPort>,
    /// Whether the fds carry a virtio-net header (fixed when a TAP was opened).
    pub vnet_header: bool,
    /// `CLOCK_MONOTONIC` µs when the old data path let go of the ports.
    pub stopped_at_usec: u64,
}

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("Cannot reach the running netd at {path} to take over from it")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("The running netd refused the hand-over: {0}")]
    Refused(String),
    #[error("The hand-over broke off")]
    Io(#[from] io::Error),
    #[error("The hand-over broke off: {0}")]
    Protocol(String),
}

/// The new side's end of a hand-over in progress: the offer and its fds.
#[derive(Debug)]
pub struct Taken {
    pub offer: Offer,
    pub fds: Vec<OwnedFd>,
    stream: UnixStream,
}

/// Ask the daemon on `socket` to hand over; return its offer with the fds.
pub fn take(socket: &Path) -> Result<Taken, HandOverError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| HandOverError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    stream.write_all(b"{\"cmd\":\"hand-over\"}\n")?;
    let response: Response = serde_json::from_slice(&read_frame(&mut stream)?)
        .map_err(|e| HandOverError::Protocol(format!("bad offer: {e}")))?;
    if !response.ok {
        return Err(HandOverError::Refused(response.error.unwrap_or_default()));
    }
    let offer: Offer = serde_json::from_value(response.result.unwrap_or_default())
        .map_err(|e| HandOverError::Protocol(format!("bad offer: {e}")))?;
    let mut fds = Vec::with_capacity(offer.ports.len());
    while fds.len() < offer.ports.len() {
        let got = sys::recv_fds(&stream)?;
        if got.is_empty() {
            return Err(HandOverError::Protocol("a message without fds".into()));
        }
        fds.extend(got);
    }
    if fds.len() != offer.ports.len() {
        return Err(HandOverError::Protocol(format!(
            "{} fds for {} ports",
            fds.len(),
            offer.ports.len()
        )));
    }
    Ok(Taken { offer, fds, stream })
}

impl Taken {
    /// Tell the old daemon the ports are taken, and wait until it has exited (its end of the
    /// connection closes with it), so its control socket and HTTP address are free.
    pub fn confirm(mut self) -> io::Result<()> {
        self.stream.write_all(b"taken\n")?;
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the old netd did not exit within {REPLY_TIMEOUT:?}"),
            )),
            Err(err) => Err(err),
        }
    }

    /// Tell the old daemon to carry on with its ports (they are closed here).
    pub fn abort(mut self) {
        let _ = self.stream.write_all(b"abort\n");
    }
}

/// What the new daemon answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Taken,
    /// `abort`, anything else, a closed connection or silence.
    NotTaken,
}

/// The old side: send `response` (an [`Offer`], or a refusal) and, with an offer, `fds` in
/// its port order; then wait for the answer. Blocking: run it off the async runtime.
pub fn give(stream: &mut UnixStream, response: &Response, fds: &[RawFd]) -> io::Result<Answer> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    write_frame(
        stream,
        &serde_json::to_vec(response).map_err(io::Error::other)?,
    )?;
    if !response.ok {
        return Ok(Answer::NotTaken);
    }
    for chunk in fds.chunks(sys::FDS_PER_MESSAGE) {
        sys::send_fds(stream, chunk)?;
    }
    let mut answer = [0u8; 6];
    Ok(match stream.read_exact(&mut answer) {
        Ok(()) if &answer == b"taken\n" => Answer::Taken,
        _ => Answer::NotTaken,
    })
}

/// Write `body` with its 4-byte big-endian length in front.
fn write_frame(stream: &mut UnixStream, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("offer too large"))?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(body)
}

/// Read one frame [`write_frame`] wrote, exactly (never into the fd messages that follow:
/// a read past them would drop their fds).
fn read_frame(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_OFFER {
        return Err(io::Error::other(format!("offer of {len} bytes")));
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok(body)
}
