//! The HTTP API (`netd up --http 127.0.0.1:PORT`): Prometheus metrics, JSON status and
//! counters, and the same changes as the CLI.
//!
//! Contract: it listens on loopback only unless the operator explicitly allows a public
//! address ([`check_addr`]). Every endpoint is a thin wrapper over [`Control`], so the
//! answers are the socket's: the same JSON [`Response`], the same validation errors.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /metrics` | | Prometheus text |
//! | `GET /api/status` | | [`super::report::Status`] |
//! | `GET /api/stats` | | [`super::report::StatsReport`] |
//! | `GET /api/topology` | | the running state as topology TOML (text) |
//! | `POST /api/reload` | | what changed |
//! | `POST /api/set-rate` | `{"tenant":"acme","guaranteed":"200mbit"}` | what changed |
//! | `POST /api/add-tenant` | `{"name":"x","tenant":{"guaranteed":"10mbit"}}` | what changed |
//! | `POST /api/remove-tenant` | `{"name":"x"}` | what changed |
//! | `POST /api/add-server` | `{"name":"s","server":{"tenant":"x","ip":"10.0.0.5/24"}}` | what changed |
//! | `POST /api/remove-server` | `{"name":"s"}` | what changed |
//!
//! Errors answer 400 with `{"ok":false,"error":"..."}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};

use super::{Change, Control, ControlError, Request, Response};

/// Refuse a non-loopback address unless `allow_public`.
pub fn check_addr(addr: SocketAddr, allow_public: bool) -> Result<(), ControlError> {
    if addr.ip().is_loopback() || allow_public {
        Ok(())
    } else {
        Err(ControlError::PublicAddress(addr))
    }
}

/// Build the API's routes over `control`.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
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
        .with_state(control)
}

/// Serve `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(control).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
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
) -> HttpResponse {
    answer(
        control
            .handle(Request::Reload, &format!("http {peer}"))
            .await,
    )
}

async fn change(
    State(control): State<Arc<Control>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(kind): Path<String>,
    body: axum::body::Bytes,
) -> HttpResponse {
    let mut value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(err) => return malformed(&err.to_string()),
    };
    let Some(object) = value.as_object_mut() else {
        return malformed("expected a JSON object");
    };
    object.insert("change".into(), serde_json::Value::String(kind.clone()));
    let change: Change = match serde_json::from_value(value) {
        Ok(c) => c,
        Err(err) => return malformed(&format!("{kind}: {err}")),
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

fn malformed(message: &str) -> HttpResponse {
    answer(Response {
        ok: false,
        result: None,
        error: Some(format!("Malformed request: {message}")),
    })
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
}
