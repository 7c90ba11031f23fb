//! The control socket: a Unix socket, one JSON [`Request`] per line, one [`Response`] line
//! back per request.
//!
//! Contract: the daemon keeps serving whatever clients do. A request line longer than
//! [`Limits::max_request`] gets an error and the connection is closed (the stream cannot be
//! resynchronised); a malformed line gets an error and the connection stays usable; a client
//! that sends nothing for [`Limits::read_timeout`] is disconnected; at most
//! [`Limits::max_clients`] connections are served at once, and one more is told the daemon
//! is busy and closed, so no client can block another or the data path.
//!
//! The socket file is mode 0600 (root only) in a directory created if needed. [`bind`]
//! refuses a path a live daemon answers on and replaces a stale file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::{Control, ControlError, Request, Response};

/// Default directory of daemons' sockets.
pub const RUN_DIR: &str = "/run/netd";

/// Return the socket directory: `$NETD_RUN_DIR` or [`RUN_DIR`].
pub fn run_dir() -> PathBuf {
    std::env::var_os("NETD_RUN_DIR").map_or_else(|| PathBuf::from(RUN_DIR), PathBuf::from)
}

/// Return the default socket of the daemon running topology `name`.
pub fn socket_path(name: &str) -> PathBuf {
    run_dir().join(format!("{name}.sock"))
}

/// Bounds that keep one client from hurting the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line, newline included.
    pub max_request: usize,
    /// Connections served at once.
    pub max_clients: usize,
    /// Longest wait for a request line (and for writing a response).
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 64 * 1024,
            max_clients: 16,
            read_timeout: Duration::from_secs(5),
        }
    }
}

/// Listen on `path`: create its directory, refuse if a live daemon answers there, replace a
/// stale socket file, and make the socket mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let listen_err = |source| ControlError::Listen {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning(path.to_path_buf()));
        }
        debug!(path = %path.display(), "replacing a stale control socket");
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    let listener = UnixListener::bind(path).map_err(listen_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(listener)
}

/// Serve `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, control: Arc<Control>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_clients));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!(cause = %err, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let control = control.clone();
                tokio::spawn(async move {
                    connection(stream, &control, limits).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let busy = Response::failure(format!(
                        "Busy: {} control connections are open already; try again",
                        limits.max_clients
                    ));
                    let mut stream = stream;
                    let _ =
                        tokio::time::timeout(limits.read_timeout, write_line(&mut stream, &busy))
                            .await;
                });
            }
        }
    }
}

/// Name the peer for the logs: `socket uid=0 pid=1234`.
fn origin(stream: &UnixStream) -> String {
    match stream.peer_cred() {
        Ok(cred) => format!(
            "socket uid={} pid={}",
            cred.uid(),
            cred.pid().map_or("?".to_string(), |p| p.to_string())
        ),
        Err(_) => "socket".to_string(),
    }
}

async fn write_line(
    stream: &mut (impl AsyncWriteExt + Unpin),
    response: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).unwrap_or_default();
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.flush().await
}

/// Read requests from one client until it closes, misbehaves or times out.
async fn connection(stream: UnixStream, control: &Control, limits: Limits) {
    let origin = origin(&stream);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let limit = u64::try_from(limits.max_request).unwrap_or(u64::MAX);
        let read = tokio::time::timeout(
            limits.read_timeout,
            (&mut reader).take(limit).read_until(b'\n', &mut line),
        )
        .await;
        let reply = match read {
            Err(_) => {
                debug!(origin, "control client timed out");
                let timeout = Response::failure(format!(
                    "Timed out: no complete request within {:?}",
                    limits.read_timeout
                ));
                let _ = tokio::time::timeout(limits.read_timeout, write_line(&mut write, &timeout))
                    .await;
                return;
            }
            Ok(Err(err)) => {
                debug!(origin, cause = %err, "control client read failed");
                return;
            }
            Ok(Ok(0)) => return,
            Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() >= limits.max_request => {
                info!(
                    origin,
                    limit = limits.max_request,
                    "oversized control request refused"
                );
                let err = Response::failure(format!(
                    "Request too large: more than {} bytes without a newline",
                    limits.max_request
                ));
                let _ =
                    tokio::time::timeout(limits.read_timeout, write_line(&mut write, &err)).await;
                return;
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(line.trim_ascii()) {
                Ok(Request::HandOver) => {
                    // The fds go over this very connection, without the line framing.
                    match reader.into_inner().reunite(write) {
                        Ok(stream) => control.hand_over(stream, &origin).await,
                        Err(err) => warn!(origin, cause = %err, "hand-over: bad connection"),
                    }
                    return;
                }
                Ok(request) => control.handle(request, &origin).await,
                Err(err) => {
                    info!(origin, cause = %err, "malformed control request refused");
                    Response::failure(format!("Malformed request: {err}"))
                }
            },
        };
        match tokio::time::timeout(limits.read_timeout, write_line(&mut write, &reply)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_one_json_line() {
        let r: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
        let r: Request = serde_json::from_str(
            r#"{"cmd":"apply","change":{"change":"set-rate","tenant":"acme","guaranteed":"200mbit"}}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Apply {
                change: Box::new(super::super::Change::SetRate {
                    tenant: "acme".into(),
                    guaranteed: Some("200mbit".into()),
                    ceiling: None,
                    weight: None,
                    uplink: false,
                })
            }
        );
        for bad in [
            r#"{"cmd":"explode"}"#,
            r#"{"cmd":"apply"}"#,
            r#"{"cmd":"apply","change":{"change":"set-rate","tenant":"a","bogus":1}}"#,
            "[1,2",
            "",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
        // Server fragments are checked like a topology file: unknown keys are refused.
        assert!(
            serde_json::from_str::<Request>(
                r#"{"cmd":"apply","change":{"change":"add-server","name":"x","server":{"colour":"red"}}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn bind_replaces_stale_sockets_and_refuses_live_ones() {
        let dir = std::env::temp_dir().join(format!("netd-sock-test-{}", std::process::id()));
        let path = dir.join("sub").join("t.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let live = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            assert!(matches!(bind(&path), Err(ControlError::AlreadyRunning(_))));
            drop(live);
            // The file remains, but nobody listens: stale, replaced.
            assert!(path.exists());
            bind(&path).unwrap();
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}
