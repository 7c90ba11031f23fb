//! Named network namespaces (`/run/netns/NAME`, the convention `ip netns` uses).
//!
//! They are made and removed in-process, the way `ip netns add` and `delete` do it: a
//! thread leaves for a new namespace (`unshare`) and bind-mounts it onto an empty file under
//! `/run/netns`, which is itself a shared mount so that the namespaces are seen from other
//! mount namespaces too. A process per namespace used to cost most of a large start-up.
//! Entering a namespace is done on a short-lived thread, so no long-lived netd thread ever
//! leaves the root namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::{KernelError, sys};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Return the bind-mount path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Return true when a named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Create a named namespace; fails if it already exists.
pub fn create(name: &str) -> Result<(), KernelError> {
    let fail = |what: &str, err: io::Error| KernelError::CreateNamespace {
        netns: name.to_string(),
        detail: format!("{what}: {err}"),
    };
    share_dir().map_err(|e| fail(&format!("making {NETNS_DIR} a shared mount"), e))?;
    let file = path(name);
    // Empty and unreadable until the namespace is mounted on it, as iproute2 makes it.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&file)
        .map_err(|e| fail(&format!("creating {}", file.display()), e))?;
    let mounted = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET)?;
                let own = Path::new("/proc/thread-self/ns/net");
                mount(
                    Some(own),
                    &file,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
            })
            .join()
            .unwrap_or(Err(nix::errno::Errno::EINTR))
    });
    if let Err(errno) = mounted {
        let _ = std::fs::remove_file(&file);
        return Err(fail("mounting a new namespace", errno.into()));
    }
    Ok(())
}

/// Make [`NETNS_DIR`] exist and be a shared mount (a bind mount of itself if need be).
fn share_dir() -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o755).create(NETNS_DIR) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
        _ => {}
    }
    let shared = || {
        let flags = MsFlags::MS_SHARED | MsFlags::MS_REC;
        mount(None::<&str>, NETNS_DIR, Some("none"), flags, None::<&str>)
    };
    match shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: make it one, then shared.
        Err(nix::errno::Errno::EINVAL) => {
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(NETNS_DIR), NETNS_DIR, Some("none"), bind, None::<&str>)?;
            Ok(shared()?)
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Delete a named namespace (its interfaces go with it once no fd holds them).
pub fn delete(name: &str) -> Result<(), KernelError> {
    let file = path(name);
    let unmounted = umount2(&file, MntFlags::MNT_DETACH);
    let removed = std::fs::remove_file(&file);
    let result = match (unmounted, removed) {
        (_, Ok(())) => Ok(()),
        (Err(errno), Err(_)) => Err(io::Error::from(errno)),
        (Ok(()), Err(err)) => Err(err),
    };
    result.map_err(|err| KernelError::DeleteNamespace {
        netns: name.to_string(),
        detail: err.to_string(),
    })
}

/// Delete many named namespaces, going on past any that fails; name those that failed.
pub fn delete_all(names: &[String]) -> Result<(), KernelError> {
    let failed: Vec<String> = names
        .iter()
        .filter_map(|name| delete(name).err())
        .map(|err| err.to_string())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(KernelError::DeleteNamespace {
        netns: names.join(", "),
        detail: failed.join("; "),
    })
}

/// Run `f` on a fresh thread that has entered namespace `name`, and return its result.
pub fn run_in<R: Send>(name: &str, f: impl FnOnce() -> io::Result<R> + Send) -> io::Result<R> {
    let ns: OwnedFd = std::fs::File::open(path(name))?.into();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                sys::enter_netns(&ns)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace worker thread panicked")))
    })
}
