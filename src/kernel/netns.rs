//! Named network namespaces (`/run/netns/NAME`, the convention `ip netns` uses).
//!
//! Creation and deletion go through iproute2's `ip netns`, which also sets up the shared
//! `/run/netns` mount correctly on every distribution; entering a namespace is done in-process
//! on a short-lived thread so no long-lived netd thread ever leaves the root namespace.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use super::{KernelError, ip_command, sys};

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
    ip_command(&["netns", "add", name], None).map_err(|detail| KernelError::CreateNamespace {
        netns: name.to_string(),
        detail,
    })
}

/// Delete a named namespace (its interfaces go with it once no fd holds them).
pub fn delete(name: &str) -> Result<(), KernelError> {
    ip_command(&["netns", "delete", name], None).map_err(|detail| KernelError::DeleteNamespace {
        netns: name.to_string(),
        detail,
    })
}

/// Delete many named namespaces with one `ip` process (`-force`: past any that fails);
/// return the ones that could not be deleted, with `ip`'s words.
pub fn delete_all(names: &[String]) -> Result<(), KernelError> {
    if names.is_empty() {
        return Ok(());
    }
    let batch: String = names
        .iter()
        .map(|n| format!("netns delete {n}\n"))
        .collect();
    ip_command(&["-force", "-batch", "-"], Some(&batch)).map_err(|detail| {
        KernelError::DeleteNamespace {
            netns: names.join(", "),
            detail,
        }
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
