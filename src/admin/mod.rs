//! The admin listener: a separate port, loopback by default.
//!
//! Access: on loopback without tokens, anyone who can connect (the pod or
//! host). Bound anywhere else, `admin.token` (or `FRESHGATE_ADMIN_TOKEN`) is
//! required by config validation, and every endpoint except `admin.open`
//! (default `[/healthz]`) and the page's static HTML needs
//! `Authorization: Bearer <token>`; `admin.read_token` allows GET endpoints
//! only (401 without a valid token, 403 for the read token on a mutating
//! endpoint). Comparison is constant-time.
//!
//! Routes:
//! - `GET /` — the admin page (only while the `debug_panel` flag is on). Its
//!   HTML holds no data; it calls the API below with the token the user types.
//! - `GET /healthz` — 200 while the process serves HTTP (liveness).
//! - `GET /readyz`  — 200 with the store state as JSON. freshgate stays ready
//!   while Redis is down, because it then passes requests through to the app:
//!   taking the pod out of rotation would turn a cache outage into an outage.
//!   It is 503 while the replica holds fences or invalidations of its writes
//!   that Redis has not recorded (other replicas could serve what they changed),
//!   and once a shutdown signal arrived (`"draining": true`).
//! - `GET /metrics` — Prometheus text format.
//! - `GET /api/monitoring` — health, hit rate and latency over the alert
//!   window, active alerts and their history (the app team's shape).
//! - `GET /api/alerts` — active alerts and their history.
//! - `GET /api/metrics?timeRange=1h|6h|24h|7d|30d&groupBy=route|result|operation|rule&format=json|csv`
//!   — counters over time, from all replicas when Redis is configured.
//! - `GET /api/operations?limit=N` — the most recent cache operations;
//!   `GET /api/operations/stream` — the same, live, as Server-Sent Events.
//! - `POST /api/purge` — invalidate by route pattern, by tag, or everything:
//!   `{"pattern": "/studio/api/scenes/:id", "params": {"id": "42"}}`,
//!   `{"tag": "scene-42"}` (a `Surrogate-Key`/`Cache-Tag` value or an RFC 9875
//!   group), `{"all": true}`. Answers with the tags it invalidated.
//! - `GET /api/config` — the running config: version, hash, last reload and
//!   its error (file, line, column, reason), settings that need a restart.
//! - `GET /api/unmatched-writes` — successful writes no invalidation rule
//!   matched, by method and path shape, most frequent first: where stale
//!   data comes from.
//! - `POST /api/reload` — re-read the config file now (as `SIGHUP` does):
//!   `applied`, `unchanged`, `rejected` (422, the located problems) or
//!   `unreadable` (422: no file, unreadable, or empty; the reason).
//! - `GET /api/bypassed-cookies` — requests bypassed for their cookies, and
//!   the cookie names that made them, most frequent first (candidates for
//!   `ignore_cookies`, if they never change an answer).
//! - `POST /api/warm` — fill the cache in the background from
//!   `{"paths": [...]}` or `{"pattern": "/x/[id]", "ids": "1..50"}`, as
//!   `freshgate warm` does; `GET /api/warm` — its progress and summary.
//! - `GET /api/flags`, `PUT /api/flags` — flags with their source; runtime
//!   flips (`{"cache": false}`, `null` clears), shared through Redis.

mod auth;
mod reply;
mod stream;
mod warm;

use self::auth::{refuse, refuse_browser_attack};
pub use self::reply::respond;
use self::reply::{json_error, json_ok, query_param, read_json};
pub use self::warm::WarmJob;

use std::sync::Arc;

use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use crate::flags::{parse_bool, Flag, ALL};
use crate::metrics::METRICS;
use crate::monitor::alerts::{Severity, State};
use crate::monitor::report::{GroupBy, Report, TIME_RANGES};
use crate::monitor::series::Kind;
use crate::monitor::{Event, Monitor};
use crate::reload::{LiveConfig, Reloaded};
use crate::store::redis::RULES_MIXED_ALERT_AFTER;
use crate::store::Store;
use crate::time::rfc3339;

pub struct Admin {
    pub store: &'static Store,
    pub live: Arc<LiveConfig>,
    pub monitor: Arc<Monitor>,
    pub started: Instant,
    /// The `POST /api/warm` run, current or last.
    pub warm: parking_lot::Mutex<Option<WarmJob>>,
    /// Marks the warm run's fetches as freshgate's own.
    pub prefetch: Arc<crate::prefetch::Prefetcher>,
}

/// The admin page: one file, no build step, embedded in the binary.
const PAGE: &str = include_str!("page.html");

#[async_trait]
impl HttpServerApp for Admin {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "admin: bad request");
                return None;
            }
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let streaming = http.req_header().method == http::Method::GET
            && http.req_header().uri.path() == "/api/operations/stream";
        let config = self.live.config();
        let refusal = refuse_browser_attack(&config.admin_auth, http.req_header())
            .or_else(|| refuse(&config.admin_auth, http.req_header()));
        let response = match refusal {
            Some(refusal) => refusal,
            None if streaming => {
                stream::operations(&self.monitor, http, shutdown.clone()).await;
                return None;
            }
            None => self.response(&mut http).await,
        };
        let (parts, body) = response.into_parts();
        let header: ResponseHeader = parts.into();
        if http.write_response_header(Box::new(header)).await.is_err() {
            return None;
        }
        if !body.is_empty() && http.write_response_body(body.into(), true).await.is_err() {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}

impl Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        let config = self.live.config();
        match (method.as_str(), path.as_str()) {
            ("GET", "/") => {
                if self.live.flags.get(Flag::DebugPanel, &config.flags) {
                    let mut r = respond(StatusCode::OK, "text/html; charset=utf-8", PAGE);
                    r.headers_mut().insert(
                        http::header::CONTENT_SECURITY_POLICY,
                        http::HeaderValue::from_static(
                            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:",
                        ),
                    );
                    r
                } else {
                    respond(
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "The admin page is off. Turn on the debug_panel flag: `flags: {debug_panel: true}` \
                         in the config, ENABLE_CACHE_DEBUG_PANEL=true, or PUT /api/flags {\"debug_panel\": true}.\n",
                    )
                }
            }
            ("GET", "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
            ("GET", "/readyz") => {
                let (entries, bytes) = self.store.memory_usage();
                let tier = self.store.redis();
                let redis = tier.map(|r| if r.available() { "up" } else { "down" });
                // Why "down" while Redis answers: a rollout (every replica
                // bypasses until they run the same rules).
                let rules_mixed = tier.map(|r| r.only_heard_mixed());
                // A replica holding fences or invalidations the shared log
                // does not have must not take traffic: other replicas may
                // serve what its writes changed until it records them. (Redis
                // merely being down keeps it ready: it passes reads through.)
                let owes = self.store.owes();
                METRICS.owed_invalidations.set(i64::from(owes));
                let draining = DRAINING.load(std::sync::atomic::Ordering::Relaxed);
                let body = serde_json::json!({
                    "ready": !owes && !draining,
                    "draining": draining,
                    "uptimeSeconds": self.started.elapsed().as_secs(),
                    "store": {
                        "memory": { "entries": entries, "bytes": bytes },
                        "redis": redis,
                        "mode": if redis.is_some() { "redis" } else { "embedded" },
                        "owesInvalidations": owes,
                        "rulesMixed": rules_mixed,
                    }
                });
                let status = if owes || draining {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                respond(status, "application/json", body.to_string())
            }
            ("GET", "/metrics") => {
                let (entries, bytes) = self.store.memory_usage();
                METRICS.memory_entries.set(entries as i64);
                METRICS.memory_bytes.set(bytes as i64);
                self.live.export_flags();
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    METRICS.render(),
                )
            }
            ("POST", "/api/purge") => self.purge(session).await,
            ("POST", "/api/warm") => self.start_warm(session).await,
            ("GET", "/api/warm") => json_ok(self.warm_json()),
            ("GET", "/api/bypassed-cookies") => json_ok(self.monitor.bypassing_cookies()),
            ("GET", "/api/config") => json_ok(self.live.status_json()),
            ("POST", "/api/reload") => self.reload().await,
            ("GET", "/api/flags") => json_ok(self.flags_json()),
            ("GET", "/api/unmatched-writes") => json_ok(serde_json::json!({
                "writes": self.live.unmatched.list(),
            })),
            ("PUT", "/api/flags") => self.put_flags(session).await,
            ("GET", "/api/monitoring") => json_ok(self.monitoring_json()),
            ("GET", "/api/alerts") => json_ok(serde_json::json!({
                "active": self.monitor.active_alerts(),
                "history": self.monitor.alert_history(),
            })),
            ("GET", "/api/operations") => {
                let limit = query_param(&query, "limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(100);
                json_ok(serde_json::json!({
                    "replica": self.monitor.replica(),
                    "operations": self.monitor.operations(limit),
                }))
            }
            ("GET", "/api/metrics") => self.metrics_over_time(&query).await,
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}

/// Set once a shutdown signal arrived: `/readyz` answers 503 so that load
/// balancers stop sending new requests while the replica still serves them.
static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The process is shutting down (see `app`): readiness fails from now on.
pub fn start_draining() {
    DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// How long Redis must have been unusable before `redis_down` is raised:
/// longer than a start-up's first connection and rules handshake, or a
/// single failed call, takes.
const REDIS_DOWN_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// Conditions that raise alerts besides traffic thresholds.
pub fn alert_state(store: &Store, live: &LiveConfig) -> State {
    let redis = store.redis();
    State {
        redis_down: redis.is_some_and(|r| r.unusable_for() >= REDIS_DOWN_AFTER),
        rules_mixed: redis.is_some_and(|r| r.rules_mixed_for() >= RULES_MIXED_ALERT_AFTER),
        reload_failed: live.last_reload_error(),
    }
}

impl Admin {
    /// `GET /api/monitoring`: evaluated now, so what it says is current.
    fn monitoring_json(&self) -> serde_json::Value {
        let config = self.live.config();
        let enabled = self.live.flags.get(Flag::Monitoring, &config.flags);
        self.monitor.set_config(&config.monitoring);
        if enabled {
            self.monitor.evaluate(&self.alert_state());
        }
        let window = self.monitor.window(config.monitoring.window);
        let active = self.monitor.active_alerts();
        let count = |sev: Severity| active.iter().filter(|a| a.severity == sev).count();
        serde_json::json!({
            "healthy": count(Severity::Critical) == 0 && count(Severity::Error) == 0,
            "timestamp": rfc3339(SystemTime::now()),
            "replica": self.monitor.replica(),
            "monitoring": enabled,
            "window": humantime::format_duration(config.monitoring.window).to_string(),
            "summary": {
                "hitRate": window.hit_rate().unwrap_or(0.0),
                "averageDuration": window.all.mean_ms(),
                "p95Duration": window.all.quantile_ms(0.95),
                "p99Duration": window.all.quantile_ms(0.99),
                "totalHits": window.hits,
                "totalMisses": window.misses,
                "totalRequests": window.all.count,
                "errorRate": window.error_rate().unwrap_or(0.0),
            },
            "alerts": {
                "total": active.len(),
                "critical": count(Severity::Critical),
                "error": count(Severity::Error),
                "warning": count(Severity::Warning),
                "list": active,
            },
            "history": self.monitor.alert_history(),
        })
    }

    fn alert_state(&self) -> State {
        alert_state(self.store, &self.live)
    }

    /// `GET /api/metrics`: counters over a time range, grouped, JSON or CSV.
    async fn metrics_over_time(&self, query: &str) -> Response<Vec<u8>> {
        let range = query_param(query, "timeRange").unwrap_or_else(|| "1h".into());
        let Some(&(range, length, step)) = TIME_RANGES.iter().find(|r| r.0 == range) else {
            let known: Vec<&str> = TIME_RANGES.iter().map(|r| r.0).collect();
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("timeRange {range:?}: use one of {}", known.join(", ")),
            );
        };
        let group = query_param(query, "groupBy").unwrap_or_else(|| "route".into());
        let Some(by) = GroupBy::parse(&group) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("groupBy {group:?}: use route, result, operation or rule"),
            );
        };
        let format = query_param(query, "format").unwrap_or_else(|| "json".into());
        if format != "json" && format != "csv" {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("format {format:?}: use json or csv"),
            );
        }
        let now = crate::time::now_secs();
        let to = now - now % step + step;
        let from = to - length;
        let (buckets, scope) = self.monitor.buckets(from, to, step).await;
        let report = Report::build(range, by, scope, (from, to, step), &buckets);
        if format == "json" {
            return json_ok(report.json());
        }
        match report.csv() {
            Ok(csv) => {
                let mut r = respond(StatusCode::OK, "text/csv; charset=utf-8", csv);
                if let Ok(v) = http::HeaderValue::from_str(&format!(
                    "attachment; filename=\"freshgate-{range}-{group}.csv\""
                )) {
                    r.headers_mut().insert(http::header::CONTENT_DISPOSITION, v);
                }
                r
            }
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let live = self.live.clone();
        let outcome = tokio::task::spawn_blocking(move || live.reload("admin API")).await;
        let mut reason = None;
        let (status, result) = match outcome {
            Ok(Reloaded::Applied) => (StatusCode::OK, "applied"),
            Ok(Reloaded::Unchanged) => (StatusCode::OK, "unchanged"),
            Ok(Reloaded::Unreadable(why)) => {
                reason = Some(why);
                (StatusCode::UNPROCESSABLE_ENTITY, "unreadable")
            }
            Ok(Reloaded::Rejected(_)) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
        };
        let mut body = self.live.status_json();
        body["result"] = result.into();
        if let Some(why) = reason {
            body["reason"] = why.into();
        }
        respond(status, "application/json", body.to_string())
    }

    fn flags_json(&self) -> serde_json::Value {
        let config = self.live.config();
        serde_json::json!({
            "flags": self.live.flags.describe(&config.flags),
            "shared": self.store.redis().is_some(),
        })
    }

    /// `PUT /api/flags` with `{"cache": false, "prefetch": null}`: set or
    /// (with null) clear runtime values. With Redis, the values are written
    /// there first so every replica follows; if Redis cannot take them,
    /// nothing changes (a local-only flip would be undone by the next sync).
    async fn put_flags(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = match read_json(session).await {
            Ok(v) => v,
            Err(resp) => return resp,
        };
        let Some(obj) = req.as_object().filter(|o| !o.is_empty()) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                r#"send an object of flags, e.g. {"cache": false}; null clears a runtime value"#,
            );
        };
        let mut changes = Vec::new();
        for (name, v) in obj {
            let Some(flag) = Flag::from_name(name) else {
                let known: Vec<&str> = ALL.iter().map(|f| f.name()).collect();
                return json_error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown flag {name:?}; flags are {}", known.join(", ")),
                );
            };
            let value = match v {
                serde_json::Value::Null => None,
                serde_json::Value::Bool(b) => Some(*b),
                serde_json::Value::String(s) if parse_bool(s).is_some() => parse_bool(s),
                other => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        format!("flag {name:?}: expected true, false or null, got {other}"),
                    )
                }
            };
            changes.push((flag, value));
        }
        if let Some(redis) = self.store.redis() {
            if !crate::flags::share(redis, &changes).await {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Redis is unavailable: runtime flags are shared through it, nothing changed",
                );
            }
        }
        for (flag, value) in changes {
            if self.live.flags.set_runtime(flag, value) {
                tracing::info!(flag = flag.name(), value = ?value, "flag set at run time");
            }
        }
        json_ok(self.flags_json())
    }

    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = match read_json(session).await {
            Ok(v) => v,
            Err(resp) => return resp,
        };
        let config = self.live.config();
        let params: Vec<(String, String)> = req["params"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        (k.clone(), v)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let pattern = req["pattern"].as_str().map(|p| (p, &params[..]));
        let tags =
            match config
                .invalidation
                .purge_tags(req["all"] == true, req["tag"].as_str(), pattern)
            {
                Ok(tags) => tags,
                Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
            };
        let started = Instant::now();
        let recorded = self.store.invalidate(&tags).await;
        if self.live.flags.get(Flag::Monitoring, &config.flags) {
            self.monitor.count(Kind::Purge, &["-"]);
            let what = req["pattern"]
                .as_str()
                .or(req["tag"].as_str())
                .unwrap_or("(everything)");
            self.monitor.operation(Event {
                op: "PURGE",
                kind: Kind::Purge,
                name: "-",
                method: &http::Method::POST,
                path: what,
                status: if recorded { 200 } else { 503 },
                duration: started.elapsed(),
                tags: Some(tags.len()),
            });
        }
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
