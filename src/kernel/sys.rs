//! The raw system calls netd needs: the only `unsafe` code in the crate.
//!
//! Each function wraps one syscall (or one ioctl), checks its return value, and hands back an
//! owned, safe value (`OwnedFd`, `()`) so no raw fd escapes this file unowned.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// `_IOW('T', 202, int)` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// TAP (Ethernet frames) rather than TUN (IP packets).
const IFF_TAP: libc::c_short = 0x0002;
/// No 4-byte packet-information prefix on each frame.
const IFF_NO_PI: libc::c_short = 0x1000;
/// Longest interface name the kernel accepts, without the NUL.
pub const IFNAMSIZ_MAX: usize = libc::IFNAMSIZ - 1;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    // The kernel's ifreq union is 24 bytes; pad so the ioctl never reads past our struct.
    _pad: [u8; 22],
}

/// Open [`TUN_PATH`] non-blocking and attach it to a new TAP named `name` in the calling
/// thread's network namespace. The TAP lives as long as the returned fd.
pub fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() > IFNAMSIZ_MAX || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("Bad interface name {name:?}"),
        ));
    }
    let fd: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(TUN_PATH)?
        .into();

    let mut ifr = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    for (dst, src) in ifr.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `fd` is the /dev/net/tun fd we own; `ifr` is a valid, NUL-terminated ifreq that
    // outlives the call; the return value is checked.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Move the calling thread into the network namespace `ns` refers to.
///
/// Only call this on a thread netd spawned for the purpose (see `netns::run_in`): the thread
/// stays in that namespace until it exits.
pub fn enter_netns(ns: &OwnedFd) -> io::Result<()> {
    // SAFETY: `ns` is an open namespace fd we own; CLONE_NEWNET restricts it to a netns; checked.
    let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Return true when the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A non-blocking monotonic timerfd: the data path's sub-millisecond wake-up for the shaper
/// (epoll's own timeout only has millisecond resolution).
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    /// Create a disarmed timer.
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: plain syscall with constant flags; the returned fd is checked and owned below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd from timerfd_create; nothing else owns it.
        Ok(TimerFd(unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw)
        }))
    }

    /// Fire once after `delay` (a zero delay fires after 1 ns, since zero would disarm).
    pub fn arm_after(&self, delay: std::time::Duration) -> io::Result<()> {
        let nanos = delay.as_nanos().max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(nanos / 1_000_000_000).unwrap_or(libc::time_t::MAX),
                // < 1e9, always fits.
                tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `self.0` is our timerfd; `spec` is a valid itimerspec; old value not requested.
        let ret =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consume the expiration count so edge-triggered polling sees the next expiry.
    pub fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: `count` is 8 writable bytes, the size a timerfd read requires; errors
        // (EAGAIN when nothing expired) are deliberately ignored.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}
