//! The CLI's side of the control socket: find the daemon, send one request, read the answer.
//!
//! Contract: [`discover`] picks the only live daemon under the run directory, or says there
//! is none, or lists them all when there are several; stale socket files are ignored.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

/// Why the CLI could not talk to a daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("No running netd daemon found (no live socket in {0}); is `netd up` running?")]
    NoDaemon(PathBuf),
    #[error("A netd daemon runs, but only root may use its control socket ({}): run this as root (e.g. with sudo)", list(.0).trim())]
    PermissionDenied(Vec<PathBuf>),
    #[error("Several netd daemons are running; pick one with --socket PATH or --topology FILE:\n{}", list(.0))]
    Ambiguous(Vec<PathBuf>),
    #[error("Cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Lost the connection to {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("The daemon at {path} sent an unreadable answer: {line:?}")]
    BadAnswer { path: PathBuf, line: String },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("  {}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Return the live sockets in `dir`, sorted, and those a daemon may serve but this user may
/// not connect to.
pub fn live_sockets(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), Vec::new());
    };
    let (mut live, mut denied) = (Vec::new(), Vec::new());
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        if path.extension().is_none_or(|e| e != "sock") {
            continue;
        }
        match UnixStream::connect(&path) {
            Ok(_) => live.push(path),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => denied.push(path),
            Err(_) => {} // stale
        }
    }
    live.sort();
    denied.sort();
    (live, denied)
}

/// Return the socket of the only live daemon in `dir`.
pub fn discover(dir: &Path) -> Result<PathBuf, ClientError> {
    let (mut live, denied) = live_sockets(dir);
    match live.len() {
        0 if !denied.is_empty() => Err(ClientError::PermissionDenied(denied)),
        0 => Err(ClientError::NoDaemon(dir.to_path_buf())),
        1 => Ok(live.remove(0)),
        _ => Err(ClientError::Ambiguous(live)),
    }
}

/// Send one request and return the daemon's response.
pub fn request(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(request).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|_| ClientError::BadAnswer {
        path: path.to_path_buf(),
        line: answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_ignores_stale_sockets_and_lists_ambiguity() {
        let dir = std::env::temp_dir().join(format!("netd-discover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(discover(&dir), Err(ClientError::NoDaemon(_))));
        let a = std::os::unix::net::UnixListener::bind(dir.join("a.sock")).unwrap();
        drop(std::os::unix::net::UnixListener::bind(dir.join("stale.sock")).unwrap());
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        assert_eq!(discover(&dir).unwrap(), dir.join("a.sock"));
        let _b = std::os::unix::net::UnixListener::bind(dir.join("b.sock")).unwrap();
        let err = discover(&dir).unwrap_err();
        assert!(
            err.to_string().contains("b.sock") && err.to_string().contains("a.sock"),
            "{err}"
        );
        drop(a);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
