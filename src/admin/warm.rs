//! `POST /api/warm` and `GET /api/warm`: one warming run at a time, in the
//! background, through freshgate's own listener (see [`crate::warm`]).

use std::sync::Arc;

use http::{Response, StatusCode};
use pingora::protocols::http::ServerSession;

use super::reply::{json_error, read_json, respond};
use super::Admin;

/// One warming run started from the admin API.
pub struct WarmJob {
    total: usize,
    state: Arc<parking_lot::Mutex<crate::warm::Summary>>,
    /// Set however the run ends (a panic included).
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl WarmJob {
    fn running(&self) -> bool {
        !self.finished.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Paths one `POST /api/warm` may fetch at most.
const MAX_WARM: usize = 100_000;

impl Admin {
    /// `POST /api/warm` with `{"paths": [...]}` or `{"pattern": "/x/[id]",
    /// "ids": "1..50"}` (optional `host`, `scheme`, `concurrency`, `rate`):
    /// fetch them through this replica's own listener in the background, as
    /// `freshgate warm` does. One run at a time (409 while one runs);
    /// `GET /api/warm` shows its progress.
    pub(super) async fn start_warm(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = match read_json(session).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let paths = if let Some(list) = body["paths"].as_array() {
            list.iter()
                .map(|p| {
                    p.as_str()
                        .ok_or_else(|| "paths: strings".to_string())
                        .and_then(crate::warm::path_of)
                })
                .collect::<Result<Vec<_>, _>>()
        } else if let (Some(pattern), Some(ids)) = (body["pattern"].as_str(), body["ids"].as_str())
        {
            crate::warm::from_pattern(pattern, ids, MAX_WARM)
        } else {
            Err(r#"expected {"paths": [...]} or {"pattern": "/x/[id]", "ids": "1..50"}"#.into())
        };
        let paths = match paths {
            Ok(p) if p.len() <= MAX_WARM => p,
            Ok(p) => {
                return json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{} paths: at most {MAX_WARM} per run", p.len()),
                )
            }
            Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
        };
        let config = self.live.config();
        let mut job = self.warm.lock();
        if job.as_ref().is_some_and(WarmJob::running) {
            return json_error(StatusCode::CONFLICT, "a warming run is in progress");
        }
        let listen = config.listen;
        let ip = if listen.ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            listen.ip()
        };
        let host = body["host"].as_str().unwrap_or(&config.warm.host);
        let unspecified = crate::host::normalize(host, "http").is_ok_and(|h| {
            h.name()
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified())
        });
        if unspecified {
            return json_error(
                StatusCode::BAD_REQUEST,
                "say which Host clients send (\"host\", or warm.host in the config): it is part of the cache key",
            );
        }
        let rate = match crate::warm::check_rate(body["rate"].as_f64().unwrap_or(0.0)) {
            Ok(r) => r,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
        };
        let options = crate::warm::Options {
            url: format!("http://{}", std::net::SocketAddr::new(ip, listen.port())),
            host: Some(host.to_string()),
            scheme: Some(
                body["scheme"]
                    .as_str()
                    .unwrap_or(config.warm.scheme)
                    .to_string(),
            ),
            concurrency: body["concurrency"].as_u64().unwrap_or(4).clamp(1, 16) as usize,
            rate,
            marker: Some(self.prefetch.marker()),
        };
        let state = Arc::new(parking_lot::Mutex::new(crate::warm::Summary::default()));
        let total = paths.len();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        *job = Some(WarmJob {
            total,
            state: state.clone(),
            finished: finished.clone(),
        });
        tokio::task::spawn_blocking(move || {
            struct Done(Arc<std::sync::atomic::AtomicBool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Release);
                }
            }
            let _done = Done(finished);
            crate::warm::fetch_all(&paths, &options, &state);
        });
        respond(
            StatusCode::ACCEPTED,
            "application/json",
            serde_json::json!({ "total": total }).to_string(),
        )
    }

    /// `GET /api/warm`: the current or last run.
    pub(super) fn warm_json(&self) -> serde_json::Value {
        match &*self.warm.lock() {
            None => serde_json::json!({ "running": false, "total": 0, "done": 0 }),
            Some(job) => {
                let s = job.state.lock().clone();
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                v["total"] = job.total.into();
                v["done"] = s.done().into();
                v["running"] = job.running().into();
                v
            }
        }
    }
}
