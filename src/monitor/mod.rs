//! Monitoring: what the cache did recently, in the shapes people read.
//!
//! Prometheus ([`crate::metrics`]) is for machines and fleets; this module
//! keeps what the admin API and page show without a Prometheus server:
//! - counters over time ([`series`]): per-minute buckets by route and kind,
//!   kept a day (then hourly for 30 days); with Redis, every replica adds its
//!   buckets to shared hashes, so `/api/metrics` covers the whole fleet;
//! - alerts ([`alerts`]) evaluated every `monitoring.evaluate_every` over this
//!   replica's last `monitoring.window`, with their history;
//! - a ring of the most recent operations, and a broadcast of each new one
//!   for the admin page's live view (Server-Sent Events).
//!
//! All of it is skipped while the `monitoring` flag is off, which is how its
//! cost on the hit path is measured (docs/benchmarks.md).

pub mod alerts;
pub mod report;
pub mod series;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics;
use crate::outcome::Outcome;
use crate::store::redis::RedisTier;
use crate::time::{now_secs, unix_secs};
use alerts::{Alert, Alerts, MonitoringConfig, State, Window};
use series::{Bucket, Kind, Series};

/// Longest path shown in an operation (paths are user data: keep them short).
const MAX_SHOWN_PATH: usize = 160;
/// How long fleet-wide minute and hour buckets live in Redis.
const MINUTE_KEY_TTL: Duration = Duration::from_secs(series::MINUTES_KEPT + 3600);
const HOUR_KEY_TTL: Duration = Duration::from_secs(series::HOURS_KEPT + 86_400);

/// One recent cache operation, as `/api/operations` lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub seq: u64,
    /// Formatted (RFC 3339) only when listed: most are never read.
    #[serde(serialize_with = "serialize_time")]
    pub timestamp: SystemTime,
    /// `HIT`, `MISS`, `STALE`, `BYPASS`, `PASS`, `INVALIDATE`, `PURGE`.
    pub op: &'static str,
    pub method: Cow<'static, str>,
    /// Route rule (or invalidation rule for writes); `-` for none.
    pub route: String,
    /// The path (without query), shortened.
    pub key: String,
    pub status: u16,
    pub duration_ms: f64,
    #[serde(serialize_with = "serialize_str")]
    pub replica: Arc<str>,
    /// For INVALIDATE and PURGE: how many tags were invalidated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<usize>,
}

fn serialize_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// What one request or write contributes.
pub struct Event<'a> {
    pub op: &'static str,
    pub kind: Kind,
    pub name: &'a str,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub tags: Option<usize>,
}

struct Counters {
    /// This replica's traffic (alerts, the summary, and `/api/metrics`
    /// without Redis).
    local: Series,
    /// Not yet added to Redis (only with Redis).
    pending: Option<Series>,
}

pub struct Monitor {
    replica: Arc<str>,
    counters: Mutex<Counters>,
    ops: Mutex<VecDeque<Operation>>,
    seq: AtomicU64,
    live_ops: broadcast::Sender<Arc<Operation>>,
    alerts: Mutex<Alerts>,
    config: arc_swap::ArcSwap<MonitoringConfig>,
    shared: Option<Arc<RedisTier>>,
    /// Requests bypassed for their cookies, and the cookie names that made
    /// them (neither ignored nor keyed): which cookie costs the hits.
    cookie_bypasses: AtomicU64,
    bypassing_cookies: Mutex<std::collections::HashMap<String, u64>>,
}

/// Cookie names tallied at most (the least seen make room).
const COOKIE_NAMES_KEPT: usize = 200;

/// This replica's name in operations: `host:port` of the proxy listener.
pub fn replica_name(listen_port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "freshgate".into());
    format!("{host}:{listen_port}")
}

/// A standard method's name without a copy (one per request otherwise).
fn method_name(method: &http::Method) -> Cow<'static, str> {
    match metrics::method_label(method) {
        "OTHER" => Cow::Owned(method.as_str().to_owned()),
        name => Cow::Borrowed(name),
    }
}

/// `path` into `out` (emptied first), cut to `MAX_SHOWN_PATH` bytes.
fn shorten_into(path: &str, out: &mut String) {
    out.clear();
    if path.len() <= MAX_SHOWN_PATH {
        out.push_str(path);
        return;
    }
    let mut end = MAX_SHOWN_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&path[..end]);
    out.push('…');
}

impl Monitor {
    pub fn new(
        replica: String,
        config: MonitoringConfig,
        shared: Option<Arc<RedisTier>>,
    ) -> Monitor {
        Monitor {
            replica: replica.into(),
            counters: Mutex::new(Counters {
                local: Series::default(),
                pending: shared.as_ref().map(|_| Series::default()),
            }),
            ops: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
            live_ops: broadcast::channel(256).0,
            alerts: Mutex::new(Alerts::default()),
            config: arc_swap::ArcSwap::from_pointee(config),
            shared,
            cookie_bypasses: AtomicU64::new(0),
            bypassing_cookies: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// A request bypassed the cache for these cookies (client-chosen names:
    /// bounded, and never metric labels).
    pub fn count_bypassing_cookies(&self, names: &[String]) {
        self.cookie_bypasses.fetch_add(1, Ordering::Relaxed);
        let mut seen = self.bypassing_cookies.lock();
        for name in names {
            if !seen.contains_key(name) && seen.len() >= COOKIE_NAMES_KEPT {
                if let Some(least) = seen.iter().min_by_key(|(_, n)| **n).map(|(k, _)| k.clone()) {
                    seen.remove(&least);
                }
            }
            *seen.entry(name.clone()).or_default() += 1;
        }
    }

    /// `GET /api/bypassed-cookies`: most frequent first.
    pub fn bypassing_cookies(&self) -> serde_json::Value {
        let mut names: Vec<(String, u64)> = self
            .bypassing_cookies
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        serde_json::json!({
            "requests": self.cookie_bypasses.load(Ordering::Relaxed),
            "names": names
                .iter()
                .map(|(name, count)| serde_json::json!({ "name": name, "count": count }))
                .collect::<Vec<_>>(),
        })
    }

    pub fn set_config(&self, config: &MonitoringConfig) {
        if **self.config.load() != *config {
            self.config.store(Arc::new(config.clone()));
        }
    }

    pub fn config(&self) -> Arc<MonitoringConfig> {
        self.config.load_full()
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Count one event and add it to the recent operations.
    pub fn observe(&self, e: Event<'_>) {
        let at = SystemTime::now();
        let now = unix_secs(at);
        let micros = e.duration.as_micros() as u64;
        let error = e.status >= 500;
        {
            let mut c = self.counters.lock();
            let observe = |s: &mut series::Stat| {
                if e.kind.is_request() {
                    s.observe(micros, error)
                } else {
                    s.count += 1
                }
            };
            series::update(c.local.at(now), e.name, e.kind, observe);
            if let Some(p) = c.pending.as_mut() {
                series::update(p.at(now), e.name, e.kind, observe);
            }
        }
        self.operation_at(e, at);
    }

    /// Count a kind for several names (the routes a write invalidated).
    pub fn count(&self, kind: Kind, names: &[impl AsRef<str>]) {
        if names.is_empty() {
            return;
        }
        let now = now_secs();
        let mut c = self.counters.lock();
        for name in names {
            let name = name.as_ref();
            series::update(c.local.at(now), name, kind, |s| s.count += 1);
            if let Some(p) = c.pending.as_mut() {
                series::update(p.at(now), name, kind, |s| s.count += 1);
            }
        }
    }

    /// Add to the recent operations (and the live stream) without counting.
    pub fn operation(&self, e: Event<'_>) {
        self.operation_at(e, SystemTime::now());
    }

    fn operation_at(&self, e: Event<'_>, at: SystemTime) {
        let cap = self.config.load().operations;
        if cap == 0 {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let live = {
            let mut ops = self.ops.lock();
            // Once the ring is full its oldest operation is written over,
            // strings included: a request allocates nothing here.
            let mut op = match ops.len() >= cap {
                true => ops.pop_back().expect("a full ring has an oldest"),
                false => Operation {
                    seq: 0,
                    timestamp: at,
                    op: "",
                    method: Cow::Borrowed(""),
                    route: String::new(),
                    key: String::new(),
                    status: 0,
                    duration_ms: 0.0,
                    replica: self.replica.clone(),
                    tags: None,
                },
            };
            op.seq = seq;
            op.timestamp = at;
            op.op = e.op;
            op.method = method_name(e.method);
            op.route.clear();
            op.route.push_str(e.name);
            shorten_into(e.path, &mut op.key);
            op.status = e.status;
            op.duration_ms = e.duration.as_secs_f64() * 1000.0;
            op.tags = e.tags;
            // No subscribers is the normal case: nobody has the page open
            // (and then nothing is copied).
            let live = (self.live_ops.receiver_count() > 0).then(|| Arc::new(op.clone()));
            ops.push_front(op);
            ops.truncate(cap);
            live
        };
        if let Some(op) = live {
            let _ = self.live_ops.send(op);
        }
    }

    /// The most recent operations, newest first (copies: the ring's own
    /// are written over).
    pub fn operations(&self, limit: usize) -> Vec<Operation> {
        self.ops.lock().iter().take(limit).cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Operation>> {
        self.live_ops.subscribe()
    }

    /// This replica's traffic over the last `window`.
    pub fn window(&self, window: Duration) -> Window {
        let now = now_secs();
        let from = now.saturating_sub(window.as_secs().max(1));
        let buckets = self.counters.lock().local.query(from, now + 1, u64::MAX);
        let mut w = Window::default();
        for b in buckets.values() {
            for (_, kind, s) in series::entries(b) {
                if !kind.is_request() {
                    continue;
                }
                w.all.merge(s);
                match kind {
                    Kind::Request(Outcome::Hit) | Kind::Request(Outcome::Stale) => {
                        w.hits += s.count
                    }
                    Kind::Request(Outcome::Miss) => w.misses += s.count,
                    _ => {}
                }
            }
        }
        w
    }

    /// Evaluate alert thresholds now.
    pub fn evaluate(&self, state: &State) -> (usize, usize) {
        let cfg = self.config();
        let w = self.window(cfg.window);
        let conditions = alerts::evaluate(&cfg, &w, state);
        self.alerts.lock().apply(SystemTime::now(), conditions)
    }

    pub fn active_alerts(&self) -> Vec<Alert> {
        self.alerts.lock().active()
    }

    pub fn alert_history(&self) -> Vec<Alert> {
        self.alerts.lock().history()
    }

    /// Buckets of `step` seconds over `[from, to)`: from Redis (all
    /// replicas) when configured and reachable, else this replica's.
    /// The second value says which.
    pub async fn buckets(&self, from: u64, to: u64, step: u64) -> (BTreeMap<u64, Bucket>, Scope) {
        if let Some(redis) = &self.shared {
            // Our own latest counts first, so what we just served is included.
            self.flush().await;
            let hourly = to - from > series::MINUTES_KEPT;
            let (unit, prefix) = if hourly {
                (series::HOUR, "mon:h:")
            } else {
                (series::MINUTE, "mon:m:")
            };
            let starts: Vec<u64> = (from - from % unit..to).step_by(unit as usize).collect();
            let keys: Vec<String> = starts.iter().map(|t| format!("{prefix}{t}")).collect();
            if let Some(maps) = redis.hashes_read(&keys).await {
                let mut out: BTreeMap<u64, Bucket> = BTreeMap::new();
                for (t, map) in starts.iter().zip(maps) {
                    if map.is_empty() {
                        continue;
                    }
                    let b = series::from_fields(&map);
                    series::merge_bucket(out.entry(t - t % step).or_default(), &b);
                }
                return (out, Scope::AllReplicas);
            }
        }
        let out = self.counters.lock().local.query(from, to, step);
        (out, Scope::ThisReplica)
    }

    /// Add the pending counts to Redis (minute and hour hashes). On failure
    /// they stay pending for the next try.
    pub async fn flush(&self) {
        let Some(redis) = &self.shared else {
            return;
        };
        let pending = match self.counters.lock().pending.as_mut() {
            Some(p) => p.take(),
            None => return,
        };
        if pending.is_empty() {
            return;
        }
        let mut writes: HashMap<String, (Vec<(String, u64)>, Duration)> = HashMap::new();
        for (t, bucket) in &pending {
            let fields = series::fields(bucket);
            let hour = t - t % series::HOUR;
            writes
                .entry(format!("mon:h:{hour}"))
                .or_insert_with(|| (Vec::new(), HOUR_KEY_TTL))
                .0
                .extend(fields.iter().cloned());
            writes.insert(format!("mon:m:{t}"), (fields, MINUTE_KEY_TTL));
        }
        if !redis.hashes_add(writes).await {
            if let Some(p) = self.counters.lock().pending.as_mut() {
                p.restore(pending);
            }
        }
    }
}

/// Where `/api/metrics` numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    AllReplicas,
    ThisReplica,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AllReplicas => "all replicas",
            Scope::ThisReplica => "this replica",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(route: &'a str, path: &'a str, method: &'a http::Method) -> Event<'a> {
        Event {
            op: "HIT",
            kind: Kind::Request(Outcome::Hit),
            name: route,
            method,
            path,
            status: 200,
            duration: Duration::from_millis(2),
            tags: None,
        }
    }

    fn monitor(operations: usize) -> Monitor {
        let config = MonitoringConfig {
            operations,
            ..Default::default()
        };
        Monitor::new("host:8080".into(), config, None)
    }

    #[test]
    fn the_ring_keeps_the_newest_and_writes_over_the_oldest_entirely() {
        let m = monitor(3);
        let get = http::Method::GET;
        let long = format!("/{}", "é".repeat(200));
        m.operation(event("a-much-longer-route-name", &long, &get));
        m.operation(event(
            "b",
            "/b",
            &http::Method::from_bytes(b"PURGE").unwrap(),
        ));
        for i in 0..3 {
            m.operation(event("r", &format!("/p/{i}"), &get));
        }
        let ops = m.operations(10);
        let listed: Vec<(u64, &str, &str, &str)> = ops
            .iter()
            .map(|o| (o.seq, o.route.as_str(), o.key.as_str(), &*o.method))
            .collect();
        assert_eq!(
            listed,
            [
                (5, "r", "/p/2", "GET"),
                (4, "r", "/p/1", "GET"),
                (3, "r", "/p/0", "GET")
            ]
        );
        assert!(ops.iter().all(|o| &*o.replica == "host:8080"));
        assert_eq!(m.operations(1).len(), 1);
    }

    #[test]
    fn a_long_path_is_cut_on_a_character_boundary() {
        let m = monitor(1);
        let long = format!("/{}", "é".repeat(200));
        m.operation(event("r", &long, &http::Method::GET));
        let key = m.operations(1)[0].key.clone();
        let shown = key.strip_suffix('…').expect("marked as cut");
        assert!(
            long.starts_with(shown) && shown.len() <= MAX_SHOWN_PATH,
            "{key}"
        );
        assert!(
            shown.len() > MAX_SHOWN_PATH - 2,
            "cut no shorter than needed"
        );
        // The next one, short, leaves nothing of it behind.
        m.operation(event("r", "/s", &http::Method::GET));
        assert_eq!(m.operations(1)[0].key, "/s");
    }
}
