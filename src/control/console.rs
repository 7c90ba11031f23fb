//! The operator's console: one web page the HTTP API serves at `/`, with live plots per
//! tenant and drag-and-drop reallocation of guarantees.
//!
//! Contract:
//! - The page and its assets are compiled into the binary (`console/`, with uPlot vendored
//!   as one file); nothing is fetched from elsewhere at run time.
//! - The page holds no data until signed in: `POST /api/login` with the admin token sets an
//!   `HttpOnly`, `SameSite=Strict` session cookie (a secret of its own, made at start, never
//!   the token itself), which authenticates like the bearer token.
//! - [`Feed`]: one task makes a snapshot (status, counters, change log) every
//!   [`FEED_EVERY`] while a page listens, and every open page gets the same snapshot over
//!   server-sent events (`GET /api/events`). The data path never waits for it: the snapshot
//!   reads counters the data path publishes.
//! - A stream ends after [`STREAM_FOR`] (the HTTP layer's connection bound) with a `retry`
//!   hint, and the browser reconnects at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::Serialize;
use tokio::sync::watch;

use super::Control;
use super::journal::ChangeRecord;
use super::report::{StatsReport, Status};

/// How often the feed makes a snapshot (the issue asks for at least four a second).
pub const FEED_EVERY: Duration = Duration::from_millis(250);
/// How long one event stream lasts before the browser reconnects (under the HTTP layer's
/// 60 s connection bound).
pub const STREAM_FOR: Duration = Duration::from_secs(50);
/// The session cookie's name.
pub const COOKIE: &str = "netd_session";

/// The page and its assets: (path under `/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "console/console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/console.js"),
    ),
    (
        "console/console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/console.css"),
    ),
    (
        "console/favicon.svg",
        "image/svg+xml",
        include_bytes!("../../console/favicon.svg"),
    ),
    (
        "console/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/vendor/uPlot.iife.min.js"),
    ),
    (
        "console/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/vendor/uPlot.min.css"),
    ),
];

/// Return true when `path` is the page or one of its assets (served without a session: they
/// hold no data).
pub fn is_asset(path: &str) -> bool {
    FILES
        .iter()
        .any(|(p, _, _)| path.strip_prefix('/') == Some(p))
}

/// Serve the page or asset at `path`.
pub fn asset(path: &str) -> HttpResponse {
    match FILES
        .iter()
        .find(|(p, _, _)| path.strip_prefix('/') == Some(p))
    {
        Some((_, kind, bytes)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
                // The page runs only what it ships, and is never framed by another site.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
                ),
            ],
            *bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The `Set-Cookie` value that signs a browser in with `session`.
pub fn session_cookie(session: &str) -> String {
    format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/")
}

/// The `Set-Cookie` value that signs a browser out.
pub fn expired_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Return the session cookie's value in a `Cookie` header, if there is one.
pub fn cookie_value(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// One snapshot of what the console shows.
#[derive(Debug, Serialize)]
struct Snapshot {
    unix_ms: u64,
    status: Status,
    stats: StatsReport,
    changes: Vec<ChangeRecord>,
}

/// The live feed every open page listens to.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: Arc<watch::Sender<Arc<str>>>,
}

impl Feed {
    /// Start making snapshots of `control` every [`FEED_EVERY`], while anyone listens; the
    /// task ends when the returned feed and its clones are gone.
    pub fn start(control: Arc<Control>) -> Feed {
        let (tx, _) = watch::channel(Arc::<str>::from(""));
        let tx = Arc::new(tx);
        let weak = Arc::downgrade(&tx);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FEED_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(tx) = weak.upgrade() else { return };
                if tx.receiver_count() == 0 {
                    continue;
                }
                let snapshot = Snapshot {
                    unix_ms: super::journal::unix_ms(),
                    status: control.status().await,
                    stats: control.stats_report().await,
                    changes: control.journal.recent(),
                };
                let json = serde_json::to_string(&snapshot).unwrap_or_default();
                tx.send_replace(Arc::from(json));
            }
        });
        Feed { tx }
    }

    /// Answer `GET /api/events`: the snapshots as server-sent events, for [`STREAM_FOR`].
    pub fn events(&self) -> HttpResponse {
        let rx = self.tx.subscribe();
        let until = Instant::now() + STREAM_FOR;
        let stream = futures_util::stream::unfold((rx, true), move |(mut rx, first)| async move {
            if Instant::now() > until {
                return None;
            }
            let data = if first {
                // The hint makes the browser come back at once when the stream ends.
                None
            } else {
                match tokio::time::timeout_at(until.into(), rx.changed()).await {
                    Ok(Ok(())) => Some(rx.borrow_and_update().clone()),
                    _ => return None,
                }
            };
            let event = match data {
                None => Event::default()
                    .retry(Duration::from_millis(300))
                    .comment("netd"),
                Some(json) => Event::default().event("snapshot").data(&*json),
            };
            Some((Ok::<Event, Infallible>(event), (rx, false)))
        });
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others_and_is_http_only_and_strict() {
        assert_eq!(cookie_value("a=1; netd_session=abc; b=2"), Some("abc"));
        assert_eq!(cookie_value("netd_sessionx=abc"), None);
        let set = session_cookie("abc");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    }

    #[test]
    fn the_page_and_its_assets_are_served_and_nothing_else() {
        assert!(is_asset("/"));
        assert!(is_asset("/console/uPlot.iife.min.js"));
        assert!(!is_asset("/api/status"));
        assert!(!is_asset("/console/../Cargo.toml"));
        assert_eq!(asset("/nothing").status(), StatusCode::NOT_FOUND);
    }
}
