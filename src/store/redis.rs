//! The shared tier: entries in Redis, seen by every replica.
//!
//! Redis sits on the request path, so this module decides up front how a Redis
//! problem degrades: every call has a tight timeout and no retries, and a
//! circuit breaker stops calling Redis at all after a few consecutive failures.
//! While it is open, [`RedisTier::available`] is false and the proxy passes
//! requests straight through to the app (no 5xx is ever caused by Redis, and no
//! entry is served that an invalidation on another replica might have missed).
//! A background task ([`RedisTier::maintain`]) connects, pings, and closes the
//! breaker again when Redis answers, so recovery needs no operator.
//!
//! Consistency across replicas ([`Consistency`]): in `strict` mode (the
//! default) every hit asks Redis for the `last_inv` of the entry's tags, so a
//! write acknowledged by any replica is never followed by a stale read on any
//! other. In `bounded` mode the invalidation script also PUBLISHes the tags,
//! every replica follows that channel ([`RedisTier::follow_invalidations`])
//! into a local map, and hits are checked against the map with no round trip:
//! another replica may serve the old entry for as long as the message takes to
//! arrive (measured: `freshgate_invalidation_lag_seconds`). The writing
//! replica applies its own invalidation at once. While not subscribed, a
//! bounded replica serves nothing from the cache; after (re)subscribing it
//! trusts only entries fetched after that moment, so a lost message can never
//! make an entry servable.
//!
//! Redis's `run_id` changes on every restart. It is part of every key, and the
//! local epoch bumps when it changes, so entries from before a restart (restored
//! from a snapshot or still in the memory tier) are never served after it: their
//! invalidations may have been lost with the old process.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::{info, warn};

use crate::metrics::METRICS;

/// Consecutive failures that open the breaker.
const TRIP_AFTER: u32 = 3;
/// How long the breaker stays open before requests may try Redis again.
const OPEN_FOR: Duration = Duration::from_secs(1);
/// Tries to record one invalidation (timeouts 1x, 2x, 4x the Redis timeout).
pub const INVALIDATE_ATTEMPTS: u32 = 3;
/// How often the background task checks on Redis.
const PING_EVERY: Duration = Duration::from_millis(250);
/// Hash of runtime flag values (`PUT /api/flags`), shared by all replicas.
const FLAGS_KEY: &str = "fg:flags";
/// Timeout for monitoring reads and writes, which are off the request path.
const SIDE_TIMEOUT: Duration = Duration::from_secs(2);

/// How replicas learn of each other's invalidations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Ask Redis on every hit: never a stale read after an acknowledged write.
    #[default]
    Strict,
    /// Follow invalidations by pub/sub: no round trip per hit; other replicas
    /// may serve the old entry for the message's delivery time.
    Bounded,
}

impl Consistency {
    pub fn parse(s: &str) -> Option<Consistency> {
        match s {
            "strict" => Some(Consistency::Strict),
            "bounded" => Some(Consistency::Bounded),
            _ => None,
        }
    }
}

/// Bounded mode's view of `last_inv`: tag -> (clock value, when learned).
#[derive(Default)]
struct Followed {
    subscribed: AtomicBool,
    last_inv: parking_lot::Mutex<HashMap<String, (u64, std::time::Instant)>>,
}

impl Followed {
    fn learn(&self, seq: u64, tags: impl IntoIterator<Item = impl Into<String>>) {
        let now = std::time::Instant::now();
        let mut map = self.last_inv.lock();
        for t in tags {
            let e = map.entry(t.into()).or_insert((0, now));
            if seq >= e.0 {
                *e = (seq, now);
            }
        }
    }
}

pub struct RedisTier {
    url: String,
    consistency: Consistency,
    followed: Followed,
    timeout: Duration,
    conn: ArcSwapOption<ConnectionManager>,
    /// `run_id` of the Redis process we talk to; part of every key.
    run_id: ArcSwapOption<String>,
    /// Bumps whenever `run_id` changes; memory-tier entries remember it.
    epoch: AtomicU64,
    /// Entries fetched before this clock value are not served: set when Redis
    /// comes back from an outage (see `check_once`).
    floor: AtomicU64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    /// Invalidations that could not be recorded. While any are pending the
    /// tier is unavailable (requests pass through), so nothing they should
    /// have invalidated can be served; the maintainer records them first.
    pending: parking_lot::Mutex<BTreeSet<String>>,
    /// How long a `last_inv` key must outlive the entries it can invalidate.
    inv_ttl: Duration,
    script: redis::Script,
}

/// `KEYS[1]` is the clock, the rest are tags' `last_inv` keys. One atomic step:
/// the new clock value is larger than any `last_inv`, so a plain SET is a max.
/// Then the tags are published (`ARGV[2]` channel, `ARGV[3]` the writer's
/// wall clock in ms, `ARGV[4]` the tags, one per line) for bounded replicas;
/// inside the script, so no replica can see the clock move without the
/// message being on its way.
const INVALIDATE_LUA: &str = r#"
local s = redis.call('INCR', KEYS[1])
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], s, 'PX', ARGV[1])
end
redis.call('PUBLISH', ARGV[2], s .. ' ' .. ARGV[3] .. '\n' .. ARGV[4])
return s
"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RedisTier {
    pub fn new(
        url: String,
        timeout: Duration,
        inv_ttl: Duration,
        consistency: Consistency,
    ) -> RedisTier {
        METRICS.redis_configured.set(1);
        RedisTier {
            consistency,
            followed: Followed::default(),
            pending: parking_lot::Mutex::new(BTreeSet::new()),
            inv_ttl,
            script: redis::Script::new(INVALIDATE_LUA),
            url,
            timeout,
            conn: ArcSwapOption::empty(),
            run_id: ArcSwapOption::empty(),
            epoch: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
    }

    /// True when Redis is connected, identified, and the breaker is closed.
    pub fn available(&self) -> bool {
        self.conn.load().is_some()
            && self.run_id.load().is_some()
            && self.pending.lock().is_empty()
            && now_ms() >= self.open_until_ms.load(Ordering::Relaxed)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn record_failure(&self, op: &'static str, err: &dyn std::fmt::Display) {
        METRICS.store_errors.with_label_values(&["redis", op]).inc();
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= TRIP_AFTER {
            let was_closed = now_ms() >= self.open_until_ms.load(Ordering::Relaxed);
            self.open_until_ms
                .store(now_ms() + OPEN_FOR.as_millis() as u64, Ordering::Relaxed);
            if was_closed {
                warn!(error = %err, "redis unavailable: circuit open, passing requests through");
            }
            METRICS.redis_up.set(0);
        }
    }

    fn record_success(&self) {
        if self.failures.swap(0, Ordering::Relaxed) >= TRIP_AFTER {
            info!("redis reachable again: circuit closed");
        }
        self.open_until_ms.store(0, Ordering::Relaxed);
        METRICS.redis_up.set(1);
    }

    fn key(&self, run_id: &str, cache_key: &str) -> String {
        format!("fg:{}:{}:e:{}", super::entry::VERSION, run_id, cache_key)
    }

    fn clock_key(run_id: &str) -> String {
        format!("fg:{}:{}:clock", super::entry::VERSION, run_id)
    }

    fn inv_key(run_id: &str, tag: &str) -> String {
        format!("fg:{}:{}:i:{}", super::entry::VERSION, run_id, tag)
    }

    fn channel(run_id: &str) -> String {
        format!("fg:{}:{}:inv", super::entry::VERSION, run_id)
    }

    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// Read the clock before a fetch begins; `None` if Redis cannot be used.
    pub async fn clock_now(&self) -> Option<u64> {
        let run_id = self.run_id.load_full()?;
        let v: Option<u64> = self
            .run(
                "clock",
                redis::cmd("GET").arg(Self::clock_key(&run_id)).clone(),
            )
            .await?;
        Some(v.unwrap_or(0))
    }

    /// Whether an entry fetched at `fetch_seq` with `tags` may be served.
    /// `None` (treat as a miss) when Redis cannot answer.
    pub async fn valid(&self, fetch_seq: u64, tags: &[String]) -> Option<bool> {
        if tags.is_empty() {
            return Some(true);
        }
        if fetch_seq < self.floor.load(Ordering::Acquire) {
            return Some(false);
        }
        if self.consistency == Consistency::Bounded {
            if !self.available() || !self.followed.subscribed.load(Ordering::Acquire) {
                return None;
            }
            let map = self.followed.last_inv.lock();
            return Some(
                tags.iter()
                    .all(|t| map.get(t).is_none_or(|(seq, _)| *seq <= fetch_seq)),
            );
        }
        let run_id = self.run_id.load_full()?;
        let mut cmd = redis::cmd("MGET");
        for t in tags {
            cmd.arg(Self::inv_key(&run_id, t));
        }
        let inv: Vec<Option<u64>> = self.run("last_inv", cmd).await?;
        Some(inv.into_iter().all(|i| i.unwrap_or(0) <= fetch_seq))
    }

    /// Record an invalidation of `tags` for every replica.
    ///
    /// Correctness depends on this more than on any read, so it does not give
    /// up at the first timeout: it tries [`INVALIDATE_ATTEMPTS`] times with a
    /// doubling timeout, even while the read breaker is open. If it still
    /// fails, the tags are kept as pending and this replica bypasses the cache
    /// until they are recorded. (Another replica that can still reach Redis
    /// would not know: see docs/architecture.md, "partitions".)
    pub async fn invalidate(&self, tags: &BTreeSet<String>) -> bool {
        if tags.is_empty() {
            return true;
        }
        if let Some(run_id) = self.run_id.load_full() {
            if self.pending.lock().is_empty() {
                let mut timeout = self.timeout;
                for _ in 0..INVALIDATE_ATTEMPTS {
                    if let Some(seq) = self.record(&run_id, tags, timeout).await {
                        // Read-your-writes on this replica, before the
                        // message comes back.
                        self.followed.learn(seq, tags.iter().cloned());
                        return true;
                    }
                    timeout *= 2;
                }
            }
        }
        METRICS.invalidation_failures.inc();
        self.pending.lock().extend(tags.iter().cloned());
        false
    }

    async fn record(
        &self,
        run_id: &str,
        tags: &BTreeSet<String>,
        timeout: Duration,
    ) -> Option<u64> {
        let mut inv = self.script.prepare_invoke();
        inv.key(Self::clock_key(run_id));
        for t in tags {
            inv.key(Self::inv_key(run_id, t));
        }
        inv.arg(self.inv_ttl.as_millis() as u64)
            .arg(Self::channel(run_id))
            .arg(now_ms())
            .arg(
                tags.iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        let mut conn = (*self.conn.load_full()?).clone();
        let res = tokio::time::timeout(timeout, inv.invoke_async::<u64>(&mut conn)).await;
        match res {
            Ok(Ok(s)) => {
                self.record_success();
                Some(s)
            }
            Ok(Err(e)) => {
                self.record_failure("invalidate", &e);
                None
            }
            Err(_) => {
                self.record_failure("invalidate", &"timed out");
                None
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, op: &'static str, cmd: redis::Cmd) -> Option<T> {
        if !self.available() {
            return None;
        }
        let mut conn = (*self.conn.load_full()?).clone();
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        METRICS
            .store_op_seconds
            .with_label_values(&["redis", op])
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(Ok(v)) => {
                self.record_success();
                Some(v)
            }
            Ok(Err(e)) => {
                self.record_failure(op, &e);
                None
            }
            Err(_) => {
                self.record_failure(op, &"timed out");
                None
            }
        }
    }

    /// Fetch an entry's bytes and the epoch they belong to. `None` on a miss
    /// and on any error (an error is a miss, never a failed request).
    pub async fn get(&self, cache_key: &str) -> Option<(Bytes, u64)> {
        let run_id = self.run_id.load_full()?;
        let epoch = self.epoch();
        let v: Option<Vec<u8>> = self
            .run(
                "get",
                redis::cmd("GET").arg(self.key(&run_id, cache_key)).clone(),
            )
            .await?;
        v.map(|v| (Bytes::from(v), epoch))
    }

    pub async fn set(&self, cache_key: &str, value: &[u8], ttl: Duration) -> bool {
        let Some(run_id) = self.run_id.load_full() else {
            return false;
        };
        let ms = ttl.as_millis().max(1000) as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&run_id, cache_key))
            .arg(value)
            .arg("PX")
            .arg(ms);
        self.run::<()>("set", cmd).await.is_some()
    }

    pub async fn delete(&self, cache_key: &str) -> bool {
        let Some(run_id) = self.run_id.load_full() else {
            return false;
        };
        let n: Option<i64> = self
            .run(
                "del",
                redis::cmd("DEL").arg(self.key(&run_id, cache_key)).clone(),
            )
            .await;
        n.unwrap_or(0) > 0
    }

    /// Write runtime flag values (None clears one) for every replica to read.
    /// Flags are not tied to `run_id`: they are operator intent, not cache data.
    pub async fn set_flags(&self, values: &[(&str, Option<bool>)]) -> bool {
        for (name, v) in values {
            let cmd = match v {
                Some(b) => redis::cmd("HSET")
                    .arg(FLAGS_KEY)
                    .arg(*name)
                    .arg(if *b { "true" } else { "false" })
                    .clone(),
                None => redis::cmd("HDEL").arg(FLAGS_KEY).arg(*name).clone(),
            };
            if self.run::<i64>("flags", cmd).await.is_none() {
                return false;
            }
        }
        true
    }

    /// The runtime flag values shared by all replicas; `None` if unreachable.
    pub async fn flags(&self) -> Option<std::collections::HashMap<String, String>> {
        self.run("flags", redis::cmd("HGETALL").arg(FLAGS_KEY).clone())
            .await
    }

    /// Run a monitoring pipeline: a longer timeout than the request path's,
    /// and failures never open the breaker (monitoring data is not worth
    /// turning cache hits into misses for).
    async fn side_query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipe: redis::Pipeline,
    ) -> Option<T> {
        let mut conn = (*self.conn.load_full()?).clone();
        let started = std::time::Instant::now();
        let res = tokio::time::timeout(SIDE_TIMEOUT, pipe.query_async::<T>(&mut conn)).await;
        METRICS
            .store_op_seconds
            .with_label_values(&["redis", op])
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                METRICS.store_errors.with_label_values(&["redis", op]).inc();
                warn!(error = %e, op, "redis monitoring call failed");
                None
            }
            Err(_) => {
                METRICS.store_errors.with_label_values(&["redis", op]).inc();
                None
            }
        }
    }

    /// Add counters to monitoring hashes (`HINCRBY`), each key with its TTL.
    pub async fn monitor_add(
        &self,
        writes: std::collections::HashMap<String, (Vec<(String, u64)>, Duration)>,
    ) -> bool {
        let mut pipe = redis::pipe();
        for (key, (fields, ttl)) in &writes {
            for (field, n) in fields {
                pipe.cmd("HINCRBY").arg(key).arg(field).arg(*n).ignore();
            }
            pipe.cmd("PEXPIRE")
                .arg(key)
                .arg(ttl.as_millis() as u64)
                .ignore();
        }
        self.side_query::<()>("monitor_add", pipe).await.is_some()
    }

    /// Read monitoring hashes, one map per key (empty when missing).
    pub async fn monitor_read(
        &self,
        keys: &[String],
    ) -> Option<Vec<std::collections::HashMap<String, u64>>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGETALL").arg(key);
        }
        self.side_query("monitor_read", pipe).await
    }

    /// Bounded mode: follow the invalidation channel of the current Redis
    /// into the local `last_inv` map, resubscribing after a lost connection or
    /// a Redis restart. Runs until `shutdown` turns true.
    pub async fn follow_invalidations(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.follow_once(&mut shutdown).await {
                warn!(error = %e, "invalidation channel lost: bounded mode bypasses the cache until it is back");
            }
            self.followed.subscribed.store(false, Ordering::Release);
            METRICS.invalidation_subscribed.set(0);
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn follow_once(
        &self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        let Some(run_id) = self.run_id.load_full() else {
            return Ok(());
        };
        let client = redis::Client::open(self.url.as_str())?;
        let mut pubsub = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(500)),
            client.get_async_pubsub(),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        pubsub.subscribe(Self::channel(&run_id)).await?;
        // Invalidations before the subscription were not seen: trust only
        // entries fetched from now on. SUBSCRIBE was answered before this
        // GET was sent, so every later invalidation reaches us.
        let Some(clock) = self.clock_now().await else {
            return Ok(());
        };
        self.floor.fetch_max(clock, Ordering::AcqRel);
        self.followed.subscribed.store(true, Ordering::Release);
        METRICS.invalidation_subscribed.set(1);
        info!(floor = clock, "following invalidations (bounded mode)");
        let mut messages = pubsub.on_message();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let payload: String = msg.get_payload().unwrap_or_default();
                    self.apply_message(&payload);
                }
                _ = tick.tick() => {
                    if self.run_id.load().as_deref() != Some(&*run_id) {
                        return Ok(()); // Redis restarted: a new channel.
                    }
                    self.prune_followed();
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// `"<seq> <published ms>\n<tag>\n<tag>..."` from the invalidation script.
    fn apply_message(&self, payload: &str) {
        let mut lines = payload.split('\n');
        let head = lines.next().unwrap_or("");
        let mut nums = head.split(' ').map(|n| n.parse::<u64>().ok());
        let (Some(Some(seq)), Some(Some(sent_ms))) = (nums.next(), nums.next()) else {
            warn!(%head, "malformed invalidation message ignored");
            return;
        };
        self.followed.learn(seq, lines.filter(|t| !t.is_empty()));
        let lag_ms = now_ms().saturating_sub(sent_ms);
        METRICS
            .invalidation_lag_seconds
            .observe(lag_ms as f64 / 1000.0);
    }

    /// Forget `last_inv` values older than any entry can be.
    fn prune_followed(&self) {
        let ttl = self.inv_ttl;
        self.followed
            .last_inv
            .lock()
            .retain(|_, (_, learned)| learned.elapsed() < ttl);
    }

    /// Keep a connection, watch `run_id`, and close the breaker when Redis
    /// answers. Runs until `shutdown` turns true.
    pub async fn maintain(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.check_once().await;
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                }
            }
        }
    }

    async fn check_once(&self) {
        let conn = match self.conn.load_full() {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => {
                    let c = Arc::new(c);
                    self.conn.store(Some(c.clone()));
                    c
                }
                Err(e) => {
                    self.record_failure("connect", &e);
                    return;
                }
            },
        };
        let mut c = (*conn).clone();
        let info = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(250)),
            redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut c),
        )
        .await;
        let info = match info {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.record_failure("ping", &e),
            Err(_) => return self.record_failure("ping", &"timed out"),
        };
        let Some(run_id) = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().to_string())
        else {
            return self.record_failure("ping", &"INFO has no run_id");
        };
        let known = self.run_id.load_full();
        if known.as_deref() != Some(&run_id) {
            if known.is_some() {
                warn!(%run_id, "redis restarted: treating everything cached before as invalid");
            }
            self.epoch.fetch_add(1, Ordering::AcqRel);
            // The new Redis's clock starts again from zero.
            self.floor.store(0, Ordering::Release);
            self.followed.last_inv.lock().clear();
            self.run_id.store(Some(Arc::new(run_id.clone())));
            // A new Redis holds nothing from before, and the epoch makes the
            // memory tier forget too: pending invalidations are moot.
            self.pending.lock().clear();
        } else {
            let pending: BTreeSet<String> = self.pending.lock().clone();
            if !pending.is_empty() {
                if self
                    .record(&run_id, &pending, self.timeout * 4)
                    .await
                    .is_none()
                {
                    return;
                }
                let mut p = self.pending.lock();
                for t in &pending {
                    p.remove(t);
                }
                info!(tags = pending.len(), "recorded pending invalidations");
            }
        }
        if self.failures.load(Ordering::Relaxed) >= TRIP_AFTER {
            // Back from an outage. A replica may have acknowledged a write
            // whose invalidation it could not record yet; until it does,
            // entries in Redis look valid. Trust nothing fetched before now:
            // move the clock and serve only entries fetched after it.
            let floor: Option<u64> = tokio::time::timeout(
                self.timeout.max(Duration::from_millis(250)),
                redis::cmd("INCR")
                    .arg(Self::clock_key(&run_id))
                    .query_async(&mut c),
            )
            .await
            .ok()
            .and_then(|r| r.ok());
            let Some(floor) = floor else {
                return self.record_failure("ping", &"cannot move the clock after an outage");
            };
            self.floor.fetch_max(floor, Ordering::AcqRel);
            info!(
                floor,
                "entries fetched before the redis outage will not be served"
            );
        }
        self.record_success();
    }

    async fn connect(&self) -> redis::RedisResult<ConnectionManager> {
        let client = redis::Client::open(self.url.as_str())?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0);
        ConnectionManager::new_with_config(client, cfg).await
    }
}
