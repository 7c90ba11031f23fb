//! systemd's service notification protocol (`sd_notify(3)`), without libsystemd.
//!
//! Under a `Type=notify` unit systemd sets `NOTIFY_SOCKET` (a datagram socket: a path, or
//! `@name` in the abstract namespace) and, with `WatchdogSec=`, `WATCHDOG_USEC` (and
//! `WATCHDOG_PID`). netd sends `READY=1` once every server is up, `WATCHDOG=1` at half the
//! watchdog interval while its data path runs, `RELOADING=1` then `READY=1` around a SIGHUP
//! reload, and `STOPPING=1` when it starts tearing down. Outside systemd (no
//! `NOTIFY_SOCKET`) every call is a no-op.
//!
//! The protocol is a handful of `KEY=VALUE` lines per datagram: a crate for it would add
//! a dependency for twenty lines.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where systemd listens for this service's notifications.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notifier {
    /// Address `NOTIFY_SOCKET` when systemd set it; `None` otherwise, or when it is not a
    /// usable socket address.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_str()?;
        let to = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
            None => SocketAddr::from_pathname(path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, to })
    }

    /// Send one notification, e.g. `"READY=1\nSTATUS=serving 4 servers"`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.to)
            .map(|_| ())
    }
}

/// The watchdog interval systemd asked for, if it asked this process (`WATCHDOG_PID`, when
/// set, names the process meant).
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("netd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            to: SocketAddr::from_pathname(&path).unwrap(),
        };
        notifier.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
