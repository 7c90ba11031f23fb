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
/// TUN: IP packets, no Ethernet header.
const IFF_TUN: libc::c_short = 0x0001;
/// TAP (Ethernet frames) rather than TUN (IP packets).
const IFF_TAP: libc::c_short = 0x0002;
/// No 4-byte packet-information prefix on each frame.
const IFF_NO_PI: libc::c_short = 0x1000;
/// Prefix each frame with a virtio-net header (offload metadata).
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 208, unsigned int)`: which offloads the reader accepts.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 203, int)`: keep the device when its last fd closes.
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// `_IOR('T', 210, unsigned int)`: read the device's name and flags back.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// The device outlives its last fd (set by [`TUNSETPERSIST`]).
const IFF_PERSIST: libc::c_short = 0x0800;
/// `_IOW('T', 216, int)`: size of the virtio-net header.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `TUN_F_*`: checksum offload, TCP segmentation offload (v4, v6, ECN), UDP segmentation (v4, v6).
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;
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
///
/// With `vnet_hdr_len = Some(n)`, every frame read or written is prefixed by an `n`-byte
/// virtio-net header and the TAP offers checksum, TSO and (where the kernel has it) USO
/// offload, so the kernel passes 64 KiB GSO frames; with `None`, frames are plain Ethernet.
pub fn open_tap(name: &str, vnet_hdr_len: Option<usize>) -> io::Result<OwnedFd> {
    open_device(name, IFF_TAP, vnet_hdr_len)
}

/// [`open_tap`] for a TUN: IP packets without an Ethernet header (the virtio-net header's
/// offsets then count from the IP header).
pub fn open_tun(name: &str, vnet_hdr_len: Option<usize>) -> io::Result<OwnedFd> {
    open_device(name, IFF_TUN, vnet_hdr_len)
}

/// Open a TUN or TAP (`mode`) device; see [`open_tap`].
fn open_device(
    name: &str,
    mode: libc::c_short,
    vnet_hdr_len: Option<usize>,
) -> io::Result<OwnedFd> {
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

    let mut flags = mode | IFF_NO_PI;
    if vnet_hdr_len.is_some() {
        flags |= IFF_VNET_HDR;
    }
    let mut ifr = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags,
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
    if let Some(len) = vnet_hdr_len {
        let len =
            libc::c_int::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `fd` is our TAP fd; TUNSETVNETHDRSZ reads one int through the pointer; checked.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &len) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // USO arrived in Linux 6.2; older kernels refuse the flags, so fall back without them.
        if set_offload(&fd, base | TUN_F_USO4 | TUN_F_USO6).is_err() {
            set_offload(&fd, base)?;
        }
    }
    Ok(fd)
}

/// Make the TUN/TAP behind `fd` persistent (`on`): closing its last fd then leaves the
/// device in place, and it goes with its namespace instead. Deleting a namespace destroys
/// all its devices in one batch, where closing non-persistent TAPs unregisters them one by
/// one (a network-wide RCU wait each: ~20 ms per server).
pub fn set_persist(fd: &OwnedFd, on: bool) -> io::Result<()> {
    // SAFETY: `fd` is our TUN/TAP fd; TUNSETPERSIST takes the flag by value; checked.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, libc::c_ulong::from(on)) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Return true when the TUN/TAP behind `fd` is persistent (see [`set_persist`]).
pub fn is_persistent(fd: &OwnedFd) -> io::Result<bool> {
    let mut ifr = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: `fd` is our TUN/TAP fd; TUNGETIFF writes one ifreq into `ifr`, which is as
    // large as the kernel's; checked.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &mut ifr) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ifr.flags & IFF_PERSIST != 0)
}

/// Tell the TAP which offloads netd accepts on frames it reads.
fn set_offload(fd: &OwnedFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: `fd` is our TAP fd; TUNSETOFFLOAD takes the flags by value; checked.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Return `CLOCK_MONOTONIC` in microseconds (0 if the clock cannot be read, which Linux
/// never does).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec we own for the call; CLOCK_MONOTONIC always exists;
    // the return value is checked.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if ret != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1000
}

/// What an interface is in the calling thread's namespace: MAC, MTU and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceIdentity {
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Every address with its prefix length, link-local ones included.
    pub addresses: Vec<(std::net::IpAddr, u8)>,
}

/// `struct ifreq` with an int in the union (`ifr_mtu`).
#[repr(C)]
struct IfReqInt {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

/// Read interface `name`'s identity in the calling thread's namespace (`getifaddrs` and
/// `SIOCGIFMTU`, the calls `ip` makes through netlink); `NotFound` when there is no such
/// interface.
pub fn interface_identity(name: &str) -> io::Result<InterfaceIdentity> {
    let mut identity = InterfaceIdentity {
        mac: None,
        mtu: interface_mtu(name)?,
        addresses: Vec::new(),
    };
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list it allocates into `list`; checked; freed below.
    if unsafe { libc::getifaddrs(&mut list) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed; its name
        // is a NUL-terminated string and its address pointers are null or valid sockaddrs of
        // the family they carry, as getifaddrs(3) guarantees.
        unsafe {
            let ifa = &*entry;
            if std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
                && !ifa.ifa_addr.is_null()
            {
                read_ifaddr(ifa, &mut identity);
            }
            entry = ifa.ifa_next;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(identity)
}

/// Add what one `getifaddrs` entry says (MAC, or an address with its prefix) to `identity`.
///
/// # Safety
/// `ifa.ifa_addr` is non-null, and it and `ifa.ifa_netmask` (if non-null) point to sockaddrs
/// of the family `ifa.ifa_addr` carries.
unsafe fn read_ifaddr(ifa: &libc::ifaddrs, identity: &mut InterfaceIdentity) {
    // SAFETY: per this function's contract.
    unsafe {
        let netmask = ifa.ifa_netmask;
        match i32::from((*ifa.ifa_addr).sa_family) {
            libc::AF_PACKET => {
                let ll = &*ifa.ifa_addr.cast::<libc::sockaddr_ll>();
                if ll.sll_halen == 6 {
                    let mut mac = [0; 6];
                    mac.copy_from_slice(&ll.sll_addr[..6]);
                    identity.mac = Some(mac);
                }
            }
            libc::AF_INET => {
                let ip = (*ifa.ifa_addr.cast::<libc::sockaddr_in>()).sin_addr.s_addr;
                let prefix = if netmask.is_null() {
                    32
                } else {
                    (*netmask.cast::<libc::sockaddr_in>())
                        .sin_addr
                        .s_addr
                        .count_ones()
                };
                let ip = std::net::Ipv4Addr::from(u32::from_be(ip));
                identity
                    .addresses
                    .push((ip.into(), u8::try_from(prefix).unwrap_or(u8::MAX)));
            }
            libc::AF_INET6 => {
                let ip = (*ifa.ifa_addr.cast::<libc::sockaddr_in6>())
                    .sin6_addr
                    .s6_addr;
                let prefix = if netmask.is_null() {
                    128
                } else {
                    let mask = (*netmask.cast::<libc::sockaddr_in6>()).sin6_addr.s6_addr;
                    mask.iter().map(|b| b.count_ones()).sum()
                };
                let ip = std::net::Ipv6Addr::from(ip);
                identity
                    .addresses
                    .push((ip.into(), u8::try_from(prefix).unwrap_or(u8::MAX)));
            }
            _ => {}
        }
    }
}

/// Return interface `name`'s MTU in the calling thread's namespace.
fn interface_mtu(name: &str) -> io::Result<u32> {
    if name.is_empty() || name.len() > IFNAMSIZ_MAX || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("Bad interface name {name:?}"),
        ));
    }
    // SAFETY: plain socket(2) call; the fd is checked and owned below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd from socket(2); nothing else owns it.
    let socket = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let mut ifr = IfReqInt {
        name: [0; libc::IFNAMSIZ],
        value: 0,
        _pad: [0; 20],
    };
    for (dst, src) in ifr.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `socket` is our fd; SIOCGIFMTU reads the NUL-terminated name and writes one int
    // into `ifr`, which is as large as the kernel's ifreq; checked.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFMTU, &mut ifr) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::ENODEV) {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface {name:?}"))
        } else {
            err
        });
    }
    Ok(u32::try_from(ifr.value).unwrap_or(0))
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

/// Pin the calling thread to CPU `cpu` (for the data path: it stops migrating between cores
/// and sharing one with the servers' busiest process).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond the largest CPU number the kernel accepts"),
        ));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set, a valid value of this plain C struct.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (checked above), so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed;
    // the return value is checked.
    let ret = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run the calling thread under `SCHED_FIFO` at `priority` (1–99): it then runs whenever it
/// is runnable, ahead of every ordinary (CFS) task, as the kernel's own softirq forwarding does.
pub fn set_current_thread_fifo(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: pid 0 is the calling thread (Linux applies the policy per thread); `param` is a
    // valid sched_param; the kernel range-checks the priority; the return value is checked.
    let ret = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Return the calling thread to the normal time-sharing policy (`SCHED_OTHER`).
pub fn set_current_thread_normal() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param (priority 0 is the
    // only one SCHED_OTHER accepts); the return value is checked.
    let ret = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Let a write to a closed pipe end the process quietly, as it does for `cat` or `ls`
/// (Rust ignores `SIGPIPE`, so `println!` would panic on `netd status | head -1`). Only
/// for the short-lived CLI commands: the daemon keeps ignoring it, so a control client that
/// hangs up mid-answer costs an error, not the daemon.
pub fn exit_quietly_on_broken_pipe() {
    // SAFETY: `signal` with a valid signal number and `SIG_DFL` changes no memory; it is
    // called at start-up, before any thread that could be writing exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Return the CPUs the calling thread may run on (its affinity mask), in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set, a valid value of this plain C struct.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a writable cpu_set_t of the size passed;
    // the return value is checked.
    let ret =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` < CPU_SETSIZE, so CPU_ISSET reads inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
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

/// Most fds one `SCM_RIGHTS` message carries here (the kernel's `SCM_MAX_FD` is 253).
pub const FDS_PER_MESSAGE: usize = 250;

/// Send `fds` (at most [`FDS_PER_MESSAGE`]) over the Unix stream `socket` as one message of
/// one byte with `SCM_RIGHTS`; the receiver gets its own copies, ours stay open.
pub fn send_fds(socket: &impl AsRawFd, fds: &[std::os::fd::RawFd]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    if fds.len() > FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one message",
        ));
    }
    let byte = [b'F'];
    let iov = [io::IoSlice::new(&byte)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receive one message [`send_fds`] sent on `socket` (blocking); return its fds, owned and
/// close-on-exec. An error if the peer closed, or the kernel cut fds off.
pub fn recv_fds(socket: &impl AsRawFd) -> io::Result<Vec<OwnedFd>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; FDS_PER_MESSAGE]);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut raw = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            raw.extend(fds);
        }
    }
    let (bytes, truncated) = (msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC));
    // SAFETY: the kernel just installed each of these fds in this process for us (SCM_RIGHTS);
    // nothing else knows or owns them.
    let owned: Vec<OwnedFd> = raw
        .into_iter()
        .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        .collect();
    if bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection",
        ));
    }
    if truncated {
        return Err(io::Error::other("fds were cut off (MSG_CTRUNC)"));
    }
    Ok(owned)
}

/// The size of a socket option or address structure `T`, as the kernel takes it.
fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// `SOL_PACKET` options and structures of `<linux/if_packet.h>` for the bridged uplink's trunk.
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_VNET_HDR_SZ: libc::c_int = 24;
const PACKET_MR_PROMISC: libc::c_ushort = 1;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;

/// `struct packet_mreq`.
#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [u8; 8],
}

/// `struct tpacket_auxdata`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// Set an `int` socket option.
fn set_int_option(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed; `fd` is an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            socklen::<libc::c_int>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Open the bridged uplink's trunk: an `AF_PACKET` socket bound to interface `ifindex`
/// (non-blocking), promiscuous, every frame with a virtio-net header of `vnet_hdr_len`
/// bytes, the VLAN tag the kernel took off given in the auxiliary data, and without the
/// frames it sends itself.
pub fn open_trunk(ifindex: u32, vnet_hdr_len: usize) -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    let fd = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::EthAll,
    )?;
    let sol = libc::SOL_PACKET;
    let header = libc::c_int::try_from(vnet_hdr_len).map_err(|_| io::ErrorKind::InvalidInput)?;
    set_int_option(&fd, sol, PACKET_VNET_HDR_SZ, header)?;
    set_int_option(&fd, sol, PACKET_AUXDATA, 1)?;
    set_int_option(&fd, sol, PACKET_IGNORE_OUTGOING, 1)?;
    let index = libc::c_int::try_from(ifindex).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are plain integers.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::c_ushort::try_from(libc::AF_PACKET).unwrap_or_default();
    addr.sll_protocol = u16::try_from(libc::ETH_P_ALL).unwrap_or_default().to_be();
    addr.sll_ifindex = index;
    // SAFETY: `addr` is a valid sockaddr_ll of the size passed; `fd` is an open socket.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            socklen::<libc::sockaddr_ll>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mreq = PacketMreq {
        mr_ifindex: index,
        mr_type: PACKET_MR_PROMISC,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    // SAFETY: `mreq` is a valid packet_mreq of the size passed; `fd` is an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            sol,
            PACKET_ADD_MEMBERSHIP,
            std::ptr::from_ref(&mreq).cast(),
            socklen::<PacketMreq>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Receive one frame from a trunk opened by [`open_trunk`] into `buf`; return its length
/// and the VLAN id the kernel took off it, if it had one.
pub fn recv_trunk(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Option<u16>)> {
    // Room for one cmsghdr and a tpacket_auxdata, aligned for both.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points at `buf` and `control`, both alive and of the lengths given.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = usize::try_from(n).unwrap_or(0);
    let mut vlan = None;
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of cmsgs; CMSG_* walk
    // them within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == PACKET_AUXDATA {
                let aux: TpacketAuxdata = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                    vlan = Some(aux.tp_vlan_tci & 0x0fff);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((len, vlan))
}
