//! The admin listener: a separate port, loopback by default.
//!
//! Routes:
//! - `GET /healthz` — 200 while the process serves HTTP (liveness).
//! - `GET /readyz`  — 200 with the store state as JSON. freshgate stays ready
//!   while Redis is down, because it then passes requests through to the app:
//!   taking the pod out of rotation would turn a cache outage into an outage.
//! - `GET /metrics` — Prometheus text format.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::METRICS;
use crate::store::Store;

pub struct Admin {
    pub store: &'static Store,
    pub started: Arc<std::time::Instant>,
}

pub fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
            ("GET", "/readyz") => {
                let (entries, bytes) = self.store.memory_usage();
                let redis = self
                    .store
                    .redis()
                    .map(|r| if r.available() { "up" } else { "down" });
                let body = serde_json::json!({
                    "ready": true,
                    "uptimeSeconds": self.started.elapsed().as_secs(),
                    "store": {
                        "memory": { "entries": entries, "bytes": bytes },
                        "redis": redis,
                        "mode": if redis.is_some() { "redis" } else { "embedded" },
                    }
                });
                respond(StatusCode::OK, "application/json", body.to_string())
            }
            ("GET", "/metrics") => {
                let (entries, bytes) = self.store.memory_usage();
                METRICS.memory_entries.set(entries as i64);
                METRICS.memory_bytes.set(bytes as i64);
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    METRICS.render(),
                )
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}
