//! The admin listener: a separate port, loopback by default.
//!
//! Routes:
//! - `GET /healthz` — 200 while the process serves HTTP (liveness).
//! - `GET /readyz`  — 200 with the store state as JSON. freshgate stays ready
//!   while Redis is down, because it then passes requests through to the app:
//!   taking the pod out of rotation would turn a cache outage into an outage.
//! - `GET /metrics` — Prometheus text format.
//! - `POST /api/purge` — invalidate by route pattern, by tag, or everything:
//!   `{"pattern": "/studio/api/scenes/:id", "params": {"id": "42"}}`,
//!   `{"tag": "scene-42"}` (a `Surrogate-Key`/`Cache-Tag` value or an RFC 9875
//!   group), `{"all": true}`. Answers with the tags it invalidated.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use std::collections::BTreeSet;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::invalidation::ALL_TAG;
use crate::metrics::METRICS;
use crate::store::Store;

pub struct Admin {
    pub store: &'static Store,
    pub config: Arc<ArcSwap<Config>>,
    pub started: Arc<std::time::Instant>,
}

/// Largest purge request body accepted.
const MAX_BODY: usize = 64 * 1024;

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
            ("POST", "/api/purge") => self.purge(session).await,
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}

fn json_error(status: StatusCode, msg: impl Into<String>) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        serde_json::json!({ "error": msg.into() }).to_string(),
    )
}

impl Admin {
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
            }
        }
        let req: serde_json::Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
        };
        let config = self.config.load();
        let mut tags = BTreeSet::new();
        if req["all"] == true {
            tags.insert(ALL_TAG.to_string());
        }
        if let Some(tag) = req["tag"].as_str() {
            tags.insert(format!("k:{tag}"));
            tags.insert(format!("g:{tag}"));
        }
        if let Some(pattern) = req["pattern"].as_str() {
            let params: Vec<(String, String)> = req["params"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_string),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            match config.invalidation.tags_for_pattern(pattern, &params) {
                Ok(t) => tags.extend(t),
                Err(e) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        if tags.is_empty() {
            return json_error(
                StatusCode::BAD_REQUEST,
                r#"say what to purge: {"pattern": ..., "params": {...}}, {"tag": ...} or {"all": true}"#,
            );
        }
        let recorded = self.store.invalidate(&tags).await;
        let status = if recorded {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        respond(
            status,
            "application/json",
            serde_json::json!({ "invalidated": tags, "recorded": recorded }).to_string(),
        )
    }
}
