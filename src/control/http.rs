//! The HTTP API (`netd up --http 127.0.0.1:PORT`): Prometheus metrics, JSON status and
//! counters, and the same changes as the CLI.
//!
//! Contract:
//! - It listens on loopback only unless the operator explicitly allows a public address
//!   ([`check_addr`]).
//! - Every request is authenticated, loopback included: `Authorization: Bearer TOKEN` with the
//!   admin token, or the metrics token for `GET /metrics` only (see [`super::auth`]). Anything
//!   else answers 401 (no or unknown token) or 403 (metrics token elsewhere) and changes
//!   nothing.
//! - It is bounded like the control socket ([`HttpLimits`]): at most `max_connections` at
//!   once (one more is answered 503 and closed), request headers within `header_timeout`, a
//!   body of at most `max_body` bytes within `body_timeout` (else 413 or 408), one request
//!   per connection, and no connection lives longer than `connection_time`.
//! - Every endpoint is a thin wrapper over [`Control`], so the answers are the socket's: the
//!   same JSON [`Response`], the same validation errors; errors of the HTTP layer itself are
//!   the same JSON shape.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /metrics` | | Prometheus text |
//! | `GET /api/status` | | [`super::report::Status`] |
//! | `GET /api/stats` | | [`super::report::StatsReport`] |
//! | `GET /api/topology` | | the running state as topology TOML (text) |
//! | `POST /api/reload` | optional `{"prune":true}` | what changed |
//! | `POST /api/set-rate` | `{"tenant":"acme","guaranteed":"200mbit"}` | what changed |
//! | `POST /api/add-tenant` | `{"name":"x","tenant":{"guaranteed":"10mbit"}}` | what changed |
//! | `POST /api/remove-tenant` | `{"name":"x"}` | what changed |
//! | `POST /api/add-server` | `{"name":"s","server":{"tenant":"x","ip":"10.0.0.5/24"}}` | what changed |
//! | `POST /api/remove-server` | `{"name":"s"}` | what changed |
//! | `POST /api/set-rates` | `{"rates":[{"tenant":"a","guaranteed":"100mbit"},…]}` | what changed (one change) |
//! | `GET /api/changes` | | the change log: who changed what, when ([`super::journal`]) |
//! | `GET /` and `/console/…` | | the console page and its assets (no data; no session needed) |
//! | `GET /api/session` | | `{"signed_in":…}` (no session needed) |
//! | `POST /api/login` | `{"token":"…"}` | the console's session cookie |
//! | `POST /api/logout` | | an expired cookie |
//! | `GET /api/events` | | server-sent events: a snapshot every 250 ms ([`super::console`]) |
//!
//! A browser authenticates with the session cookie instead of the token; then (and for
//! the login itself) a state-changing request must be JSON and carry this host's own
//! `Origin`, or it is refused with 403: nothing another site makes a browser send passes.
//!
//! Errors answer 400 with `{"ok":false,"error":"..."}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request as HttpRequest, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::auth::{Access, HttpAuth};
use super::console::{self, Feed};
use super::{Change, Control, ControlError, Request, Response};

/// Bounds that keep one client from hurting the daemon.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest wait for a request's headers.
    pub header_timeout: Duration,
    /// Longest wait for a request's body.
    pub body_timeout: Duration,
    /// Largest request body.
    pub max_body: usize,
    /// Longest a connection may live, whatever it does.
    pub connection_time: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            max_body: 64 * 1024,
            connection_time: Duration::from_secs(60),
        }
    }
}

/// Refuse a non-loopback address unless `allow_public`.
pub fn check_addr(addr: SocketAddr, allow_public: bool) -> Result<(), ControlError> {
    if addr.ip().is_loopback() || allow_public {
        Ok(())
    } else {
        Err(ControlError::PublicAddress(addr))
    }
}

/// What the gate in front of every route needs.
#[derive(Debug, Clone)]
struct Gate {
    auth: HttpAuth,
    limits: HttpLimits,
}

/// Build the API's routes over `control`, behind authentication and the body bounds.
pub fn router(control: Arc<Control>, auth: HttpAuth, limits: HttpLimits) -> Router {
    let feed = Feed::start(control.clone());
    let gate_state = Arc::new(Gate { auth, limits });
    Router::new()
        .route("/", get(|| async { console::asset("/") }))
        .route(
            "/console/{file}",
            get(|Path(file): Path<String>| async move { console::asset(&format!("/console/{file}")) }),
        )
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/session", get(session_state))
        .route("/api/events", get(move || async move { feed.events() }))
        .route(
            "/api/changes",
            get(|s: State<Arc<Control>>| read(s, Request::Changes)),
        )
        .route("/metrics", get(metrics))
        .route(
            "/api/status",
            get(|s: State<Arc<Control>>| read(s, Request::Status)),
        )
        .route(
            "/api/stats",
            get(|s: State<Arc<Control>>| read(s, Request::Stats)),
        )
        .route("/api/topology", get(topology))
        .route("/api/reload", post(reload))
        .route("/api/{change}", post(change))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "No such endpoint") })
        .layer(middleware::from_fn_with_state(gate_state.clone(), gate))
        .layer(axum::Extension(gate_state))
        .with_state(control)
}

/// `POST /api/login` `{"token":"…"}`: the admin token buys the console's session cookie.
async fn login(
    axum::Extension(gate): axum::Extension<Arc<Gate>>,
    body: axum::body::Bytes,
) -> HttpResponse {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Login {
        token: String,
    }
    let login: Login = match serde_json::from_slice(&body) {
        Ok(login) => login,
        Err(err) => return malformed(&format!("login: {err}")),
    };
    if !gate.auth.is_admin(login.token.trim()) {
        return error(StatusCode::UNAUTHORIZED, "Wrong token");
    }
    (
        [(
            header::SET_COOKIE,
            console::session_cookie(gate.auth.session()),
        )],
        axum::Json(Response::ok("signed in")),
    )
        .into_response()
}

/// `GET /api/session`: whether this browser is signed in (so the page can ask without an
/// error).
async fn session_state(
    axum::Extension(gate): axum::Extension<Arc<Gate>>,
    headers: axum::http::HeaderMap,
) -> HttpResponse {
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(console::cookie_value);
    let signed_in = gate.auth.cookie_access(cookie) == Access::Admin;
    answer(Response::ok(serde_json::json!({ "signed_in": signed_in })))
}

/// `POST /api/logout`: forget the session cookie.
async fn logout() -> HttpResponse {
    (
        [(header::SET_COOKIE, console::expired_cookie())],
        axum::Json(Response::ok("signed out")),
    )
        .into_response()
}

/// Serve `listener` until the task is dropped, within `limits`.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(cause = %err, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: say so without reading anything, and close.
            debug!(%peer, "HTTP connection refused: too many open");
            let _ = stream.try_write(BUSY);
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: HttpRequest<_>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                tower::Service::call(&mut router.clone(), request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            if tokio::time::timeout(limits.connection_time, connection)
                .await
                .is_err()
            {
                debug!(%peer, "HTTP connection cut: open too long");
            }
            drop(permit);
        });
    }
}

/// The answer to a connection over the cap (written before reading its request).
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 66\r\nConnection: close\r\n\r\n{\"ok\":false,\"error\":\"Busy: too many HTTP connections; try again\"}\n";

/// Authenticate, refuse cross-site requests, then read the body within the bounds, before
/// any route sees the request.
async fn gate(State(gate): State<Arc<Gate>>, request: HttpRequest, next: Next) -> HttpResponse {
    let headers = request.headers();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let metrics_only = method == Method::GET && path == "/metrics";
    // The page and its assets hold no data; signing in needs the token in the body.
    let public = (method == Method::GET && (console::is_asset(&path) || path == "/api/session"))
        || (method == Method::POST && path == "/api/login");
    // A browser sends the cookie by itself (the bearer token it never does): only a
    // cookie-authenticated or public state-changing request can be a cross-site one.
    let access = match authorization {
        Some(_) => gate.auth.access(authorization),
        None => gate.auth.cookie_access(
            headers
                .get(header::COOKIE)
                .and_then(|v| v.to_str().ok())
                .and_then(console::cookie_value),
        ),
    };
    let browser = authorization.is_none() && (public || access == Access::Admin);
    if browser
        && method != Method::GET
        && method != Method::HEAD
        && let Err(why) = same_origin_json(headers)
    {
        return error(StatusCode::FORBIDDEN, why);
    }
    match access {
        _ if public => {}
        Access::Admin => {}
        Access::Metrics if metrics_only => {}
        Access::Metrics => {
            return error(
                StatusCode::FORBIDDEN,
                "The metrics token grants GET /metrics only",
            );
        }
        Access::None => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "Authentication required: send Authorization: Bearer TOKEN (the admin token is in the file netd logged as http_token)",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            return response;
        }
    }
    let limits = gate.limits;
    let (parts, body) = request.into_parts();
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("Request too large: at most {} bytes", limits.max_body),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return too_large();
    }
    let read = axum::body::to_bytes(body, limits.max_body);
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "Timed out reading the request body",
            );
        }
    };
    next.run(HttpRequest::from_parts(parts, Body::from(bytes)))
        .await
}

/// Check a browser's state-changing request: a JSON body (a cross-site form cannot send one
/// without a preflight) and an `Origin` that is this very host.
fn same_origin_json(headers: &axum::http::HeaderMap) -> Result<(), &'static str> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json {
        return Err(
            "Refused: a change from a browser must be JSON (Content-Type: application/json)",
        );
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) if origin == format!("http://{host}") => Ok(()),
        _ => Err("Refused: cross-origin request (the Origin header must be this console's own)"),
    }
}

/// An error of the HTTP layer, in the API's JSON shape.
fn error(code: StatusCode, message: &str) -> HttpResponse {
    (code, axum::Json(Response::failure(message))).into_response()
}

fn answer(response: Response) -> HttpResponse {
    let code = if response.ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    (code, axum::Json(response)).into_response()
}

async fn metrics(State(control): State<Arc<Control>>) -> HttpResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        control.metrics().await,
    )
        .into_response()
}

async fn topology(State(control): State<Arc<Control>>) -> HttpResponse {
    (
        [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
        control.topology_toml().await,
    )
        .into_response()
}

async fn read(State(control): State<Arc<Control>>, request: Request) -> HttpResponse {
    answer(control.handle(request, "http").await)
}

async fn reload(
    State(control): State<Arc<Control>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> HttpResponse {
    /// The optional body of `POST /api/reload`.
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Options {
        #[serde(default)]
        prune: bool,
    }
    let options = if body.iter().all(u8::is_ascii_whitespace) {
        Options::default()
    } else {
        match serde_json::from_slice::<Options>(&body) {
            Ok(options) => options,
            Err(err) => return malformed(&format!("reload: {err}")),
        }
    };
    let request = Request::Reload {
        prune: options.prune,
    };
    answer(control.handle(request, &format!("http {peer}")).await)
}

async fn change(
    State(control): State<Arc<Control>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(kind): Path<String>,
    body: axum::body::Bytes,
) -> HttpResponse {
    let change = match parse_change(&kind, &body) {
        Ok(change) => change,
        Err(message) => return malformed(&message),
    };
    answer(
        control
            .handle(
                Request::Apply {
                    change: Box::new(change),
                },
                &format!("http {peer}"),
            )
            .await,
    )
}

/// Parse the body of `POST /api/{kind}` into a [`Change`]: the JSON object of the change's
/// fields, its kind taken from the path.
pub fn parse_change(kind: &str, body: &[u8]) -> Result<Change, String> {
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let Some(object) = value.as_object_mut() else {
        return Err("expected a JSON object".into());
    };
    object.insert("change".into(), serde_json::Value::String(kind.to_string()));
    serde_json::from_value(value).map_err(|err| format!("{kind}: {err}"))
}

fn malformed(message: &str) -> HttpResponse {
    error(
        StatusCode::BAD_REQUEST,
        &format!("Malformed request: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        assert!(check_addr("127.0.0.1:9000".parse().unwrap(), false).is_ok());
        assert!(check_addr("[::1]:9000".parse().unwrap(), false).is_ok());
        let public: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        let err = check_addr(public, false).unwrap_err();
        assert!(err.to_string().contains("0.0.0.0:9000"), "{err}");
        assert!(check_addr(public, true).is_ok());
    }

    #[test]
    fn the_busy_answer_is_well_formed_json_over_http() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let answer: Response = serde_json::from_str(body).unwrap();
        assert!(!answer.ok && answer.error.unwrap().starts_with("Busy"));
    }
}
