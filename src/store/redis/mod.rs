//! The shared tier: entries in Redis, seen by every replica, and the shared
//! invalidation log (see [`log`]).
//!
//! Redis sits on the request path, so this module decides up front how a Redis
//! problem degrades: reads have a tight timeout and are never retried (a slow
//! read is a miss; fences and invalidations are retried, see [`attempts`]), and a circuit
//! breaker stops calling Redis at all after a few consecutive failures. While
//! the tier is unavailable ([`RedisTier::available`]) the proxy passes
//! requests straight through to the app (no 5xx is ever caused by Redis, and no
//! entry is served that an invalidation on another replica might have missed).
//! A background task ([`RedisTier::maintain`]) connects, pings, records what
//! this replica owes the log, lifts fences whose writer vanished, and closes the
//! breaker again, so recovery needs no operator.
//!
//! **One connection, one Redis run.** A [`Link`] is a connection together with
//! the `run_id` of the Redis process at its other end, learned when it was
//! opened. It never reconnects by itself: when Redis restarts, the link breaks
//! and the maintainer opens a new one (and learns the new run). Every key names
//! its run, every entry in memory remembers the run (epoch) it was fetched
//! under, and every fill remembers the run its clock was read in, so nothing
//! can mix two runs: an entry is only checked against the log of its own run,
//! over a connection to that very process, and a fill whose fetch began under
//! another run is not stored. (An auto-reconnecting client could silently send
//! a check meant for the old run to a new, empty Redis, whose empty log says
//! "nothing was invalidated".)
//!
//! **Nothing a replica owes is dropped** (`log::Owed`): a write's fence and
//! its lift are kept until Redis has recorded them, recorded again in every new
//! run a replica connects to, and while anything is owed the replica serves
//! nothing from the cache and `/readyz` says not ready.
//!
//! Consistency across replicas ([`Consistency`]): in `strict` mode (the
//! default) every hit asks Redis for the entry's tags, so a write acknowledged
//! by any replica is never followed by a stale read on any other. In `bounded`
//! mode replicas follow the log over pub/sub (see `follow`).

mod follow;
mod log;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use tracing::{info, warn};

use self::follow::Followed;
use self::log::{End, Keys, Owed, OwedWrite, FENCE_UNIT};
use super::FillStart;
use crate::invalidation::ALL_TAG;
use crate::metrics::METRICS;
use crate::time::now_millis;

/// Consecutive failures that open the breaker.
const TRIP_AFTER: u32 = 3;
/// How long the breaker stays open before requests may try Redis again.
const OPEN_FOR: Duration = Duration::from_secs(1);
/// Tries to record an invalidation that no fence protects (timeouts 1x, 2x,
/// 4x the Redis timeout). A fence is tried once: the write waits for it.
pub const INVALIDATE_ATTEMPTS: u32 = 3;
/// How often the background task checks on Redis.
const PING_EVERY: Duration = Duration::from_millis(250);
/// A write may open a connection itself (rather than wait for the next
/// check) at most this often.
const CONNECT_AT_MOST_EVERY_MS: u64 = 50;
/// Expired fences lifted per sweep at most.
const SWEEP_BATCH: u32 = 64;
/// A replica's rules heartbeat counts for this long: another fingerprint
/// heard within it means the fleet runs mixed rules. (A replica that has
/// not said its own for half of it stops serving: see `heard_lately`.)
const RULES_ALIVE: Duration = Duration::from_secs(4);
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

/// A connection to one Redis process, and which run of Redis that is.
pub struct Link {
    conn: MultiplexedConnection,
    run: Arc<str>,
    /// Counts the runs this replica has seen; entries remember it.
    pub epoch: u64,
}

/// How phase 2 of a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Recorded,
    /// Not recorded yet (owed). `fence_stands`: its fence is in the run
    /// this replica last reached, so until some replica lifts it nothing
    /// the write changed is served anywhere.
    Owed {
        fence_stands: bool,
    },
}

/// What `INFO` says of Redis's memory.
struct MemoryStats {
    used: u64,
    /// 0: no limit.
    max: u64,
    evicted_keys: u64,
}

impl MemoryStats {
    /// Past 80 % of `maxmemory`, entries (large) stop going to Redis so that
    /// the log (small, but refused with the rest once Redis is full under
    /// `noeviction`) keeps room.
    fn nearly_full(&self) -> bool {
        self.max > 0 && self.used > self.max / 5 * 4
    }
}

/// A monotonic millisecond clock for this process.
fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Timing and bounds of the tier, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Per call on the request path.
    pub timeout: Duration,
    /// How long a tag's `last_inv` must outlive the entries it can invalidate.
    pub inv_ttl: Duration,
    /// How long a fence may stand before any replica lifts it (its writer
    /// lifts it long before, unless it died or lost Redis).
    pub fence_ttl: Duration,
}

pub struct RedisTier {
    url: String,
    consistency: Consistency,
    followed: Followed,
    timeout: Duration,
    inv_ttl: Duration,
    fence_ttl: Duration,
    link: ArcSwapOption<Link>,
    /// Serializes opening links (the maintainer and writes may both try).
    connecting: tokio::sync::Mutex<()>,
    last_connect_ms: AtomicU64,
    /// The run of the last link and its epoch.
    run: parking_lot::Mutex<Option<Arc<str>>>,
    epoch: AtomicU64,
    /// Entries fetched before this clock value are not served: set when Redis
    /// comes back from an outage (see `check_once`) and when bounded mode
    /// (re)subscribes.
    floor: AtomicU64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    /// Counts breaker trips (and evictions); `outage_cleared` catches up once
    /// the maintainer has moved the floor past them (see `check_once`).
    /// Nothing is served meanwhile.
    outage_began: AtomicU64,
    outage_cleared: AtomicU64,
    /// When this replica last said which rules it runs (`mono_ms`).
    last_heartbeat_ms: AtomicU64,
    /// When the tier was last seen available (`mono_ms`; its creation at
    /// first). See `unavailable_for`.
    last_up_ms: AtomicU64,
    /// Redis is close to its `maxmemory`: entries are not written to it,
    /// so the log keeps room (with `noeviction`, a full Redis refuses fences).
    nearly_full: AtomicBool,
    /// Redis's `evicted_keys` when last checked: a rise may have taken a
    /// `last_inv` with it.
    evicted: AtomicU64,
    owed: parking_lot::Mutex<Owed>,
    /// `owed.owes(current epoch)`, kept up to date on every change of
    /// either, so that the request path reads one atomic.
    owing: AtomicBool,
    /// The fingerprint of this replica's rules.
    rules: AtomicU64,
    /// Replicas with other rules are alive (a rollout): serve nothing, and
    /// let every write invalidate everything. True until proven otherwise.
    rules_mixed: AtomicBool,
    /// Held while `set_rules` changes the rules and while `check_rules`
    /// declares them settled, so it cannot settle rules already replaced.
    rules_settling: parking_lot::Mutex<()>,
    /// Not mixed, and the current rules' activation recorded in the current
    /// run: until then this replica serves nothing from the cache.
    rules_ok: AtomicBool,
    fence_script: redis::Script,
    lift_script: redis::Script,
    sweep_script: redis::Script,
    heartbeat_script: redis::Script,
    activate_script: redis::Script,
}

/// Tries for a lift: with its write's fence in `link`'s run, nothing the
/// lift would invalidate can be served until some replica lifts it, so one
/// is enough; without, the lift is the only protection.
fn attempts(fenced_in: Option<u64>, link: &Link) -> u32 {
    if fenced_in == Some(link.epoch) {
        1
    } else {
        INVALIDATE_ATTEMPTS
    }
}

fn joined(tags: &BTreeSet<String>) -> String {
    tags.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

impl RedisTier {
    pub fn new(url: String, limits: Limits, consistency: Consistency) -> RedisTier {
        METRICS.redis_configured.set(1);
        RedisTier {
            url,
            consistency,
            followed: Followed::default(),
            timeout: limits.timeout,
            inv_ttl: limits.inv_ttl,
            fence_ttl: limits.fence_ttl,
            link: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            last_connect_ms: AtomicU64::new(0),
            run: parking_lot::Mutex::new(None),
            epoch: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            outage_began: AtomicU64::new(0),
            outage_cleared: AtomicU64::new(0),
            last_heartbeat_ms: AtomicU64::new(0),
            last_up_ms: AtomicU64::new(mono_ms()),
            nearly_full: AtomicBool::new(false),
            evicted: AtomicU64::new(u64::MAX),
            owed: parking_lot::Mutex::new(Owed::default()),
            owing: AtomicBool::new(false),
            rules: AtomicU64::new(0),
            rules_mixed: AtomicBool::new(true),
            rules_settling: parking_lot::Mutex::new(()),
            rules_ok: AtomicBool::new(false),
            fence_script: redis::Script::new(log::FENCE),
            lift_script: redis::Script::new(log::LIFT),
            sweep_script: redis::Script::new(log::SWEEP),
            heartbeat_script: redis::Script::new(log::RULES_HEARTBEAT),
            activate_script: redis::Script::new(log::ACTIVATE_RULES),
        }
    }

    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// The current link, if connected.
    pub fn link(&self) -> Option<Arc<Link>> {
        self.link.load_full()
    }

    /// True when connected, the breaker is closed, and this replica owes the
    /// current run nothing.
    pub fn available(&self) -> bool {
        self.link.load().is_some()
            && !self.breaker_open()
            && !self.in_outage()
            && !self.owing.load(Ordering::Acquire)
            && self.rules_ok.load(Ordering::Acquire)
            && self.heard_lately()
    }

    /// How long the tier has been unavailable: zero while available, else
    /// the time since the maintainer (every `PING_EVERY`) or a call of this
    /// last saw it available — its creation at first, so the moments before
    /// the first connection are not an outage.
    pub fn unavailable_for(&self) -> Duration {
        let now = mono_ms();
        if self.available() {
            self.last_up_ms.store(now, Ordering::Release);
            return Duration::ZERO;
        }
        Duration::from_millis(now.saturating_sub(self.last_up_ms.load(Ordering::Acquire)))
    }

    /// Whether this replica said which rules it runs, and heard the fleet's,
    /// within half the time after which the others stop counting it: past
    /// that they may act as if it were gone (a replica shutting down, or one
    /// whose checks stall), so it must stop serving and planning by rules.
    fn heard_lately(&self) -> bool {
        mono_ms().saturating_sub(self.last_heartbeat_ms.load(Ordering::Acquire))
            <= RULES_ALIVE.as_millis() as u64 / 2
    }

    fn in_outage(&self) -> bool {
        self.outage_cleared.load(Ordering::Acquire) < self.outage_began.load(Ordering::Acquire)
    }

    /// This replica now runs rules `fingerprint`. Until the maintainer has
    /// checked that no replica runs others and recorded their activation,
    /// it serves nothing from the cache and its writes invalidate
    /// everything.
    pub fn set_rules(&self, fingerprint: u64) {
        // Under the lock `check_rules` decides under: it cannot declare the
        // old rules settled after this.
        let _settle = self.rules_settling.lock();
        if self.rules.swap(fingerprint, Ordering::AcqRel) != fingerprint {
            self.rules_ok.store(false, Ordering::Release);
            self.rules_mixed.store(true, Ordering::Release);
            METRICS.rules_mixed.set(1);
        }
    }

    /// Whether replicas with other rules may be running (a rollout): a
    /// write must then invalidate everything, since what it changed is
    /// tagged by rules this replica does not know.
    pub fn rules_mixed(&self) -> bool {
        self.rules_mixed.load(Ordering::Acquire) || !self.heard_lately()
    }

    /// Whether this replica holds fences or invalidations the shared log
    /// does not have yet (then it must not be called ready).
    pub fn owes(&self) -> bool {
        self.owing.load(Ordering::Acquire)
    }

    /// Change what is owed, and keep `owing` true to it.
    fn owed<R>(&self, change: impl FnOnce(&mut Owed) -> R) -> R {
        let mut owed = self.owed.lock();
        let r = change(&mut owed);
        let epoch = self.link.load().as_ref().map(|l| l.epoch);
        self.owing.store(owed.owes(epoch), Ordering::Release);
        METRICS.owed_invalidations.set(i64::from(owed.owes(epoch)));
        r
    }

    fn breaker_open(&self) -> bool {
        now_millis() < self.open_until_ms.load(Ordering::Relaxed)
    }

    fn record_failure(&self, op: &'static str, err: &dyn std::fmt::Display) {
        METRICS.store_errors.with_label_values(&["redis", op]).inc();
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= TRIP_AFTER {
            let was_closed = !self.breaker_open();
            self.open_until_ms.store(
                now_millis() + OPEN_FOR.as_millis() as u64,
                Ordering::Relaxed,
            );
            if was_closed {
                warn!(error = %err, "redis unavailable: circuit open, passing requests through");
            }
            self.outage_began.fetch_add(1, Ordering::AcqRel);
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

    /// A call on `link` failed: count it, and forget the link if its
    /// connection is gone (it never comes back by itself).
    fn failed(&self, link: &Arc<Link>, op: &'static str, err: Option<&redis::RedisError>) {
        match err {
            Some(e) => {
                self.record_failure(op, e);
                if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() {
                    self.drop_link(link);
                }
            }
            None => self.record_failure(op, &"timed out"),
        }
    }

    fn drop_link(&self, link: &Arc<Link>) {
        if self.is_current(link) {
            self.link.store(None);
            METRICS.redis_up.set(0);
            self.owed(|_| ());
        }
    }

    fn is_current(&self, link: &Arc<Link>) -> bool {
        self.link
            .load()
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, link))
    }

    /// One command on `link` with the request-path timeout, unless the
    /// breaker is open.
    async fn run<T: redis::FromRedisValue>(
        &self,
        link: &Arc<Link>,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Option<T> {
        if self.breaker_open() {
            return None;
        }
        let mut conn = link.conn.clone();
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
                self.failed(link, op, Some(&e));
                None
            }
            Err(_) => {
                self.failed(link, op, None);
                None
            }
        }
    }

    /// A script invocation that correctness depends on (fences, lifts): it
    /// may be tried several times (a doubling timeout), and it is tried even
    /// while the read breaker is open.
    async fn record<T: redis::FromRedisValue>(
        &self,
        link: &Arc<Link>,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
        attempts: u32,
    ) -> Option<T> {
        let mut timeout = self.timeout;
        for _ in 0..attempts {
            let mut conn = link.conn.clone();
            match tokio::time::timeout(timeout, invocation.invoke_async::<T>(&mut conn)).await {
                Ok(Ok(v)) => {
                    self.record_success();
                    return Some(v);
                }
                Ok(Err(e)) => {
                    let gone = e.is_connection_dropped() || e.is_io_error();
                    self.failed(link, op, Some(&e));
                    if gone {
                        return None;
                    }
                }
                Err(_) => self.failed(link, op, None),
            }
            timeout *= 2;
        }
        None
    }

    /// Read the clock, and whether any of `tags` is fenced, before a fetch
    /// begins. `None` when Redis cannot be used: the response is not stored.
    pub async fn fill_start(&self, tags: &[String]) -> Option<FillStart> {
        let link = self.link.load_full()?;
        if !self.available() {
            return None;
        }
        let (seq, fenced) = match self.consistency {
            Consistency::Bounded => (self.clock_now(&link).await?, self.followed.fenced(tags)),
            Consistency::Strict => {
                let mut cmd = redis::cmd("MGET");
                cmd.arg(Keys::clock(&link.run));
                for t in tags {
                    cmd.arg(Keys::tag(&link.run, t));
                }
                let v: Vec<Option<u64>> = self.run(&link, "clock", cmd).await?;
                let seq = v.first().copied().flatten().unwrap_or(0);
                (seq, v.iter().skip(1).any(|v| log::fenced(*v)))
            }
        };
        Some(FillStart {
            seq,
            epoch: link.epoch,
            fenced,
        })
    }

    async fn clock_now(&self, link: &Arc<Link>) -> Option<u64> {
        let v: Option<u64> = self
            .run(
                link,
                "clock",
                redis::cmd("GET").arg(Keys::clock(&link.run)).clone(),
            )
            .await?;
        Some(v.unwrap_or(0))
    }

    /// Whether an entry of run `link` fetched at `fetch_seq` with `tags` may
    /// be served. `None` (treat as a miss) when Redis cannot answer.
    pub async fn valid(&self, link: &Arc<Link>, fetch_seq: u64, tags: &[String]) -> Option<bool> {
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
            return Some(self.followed.valid(fetch_seq, tags));
        }
        let mut cmd = redis::cmd("MGET");
        for t in tags {
            cmd.arg(Keys::tag(&link.run, t));
        }
        let inv: Vec<Option<u64>> = self.run(link, "last_inv", cmd).await?;
        Some(inv.into_iter().all(|v| log::allows(v, fetch_seq)))
    }

    /// A link to record a write on: the current one, or one opened now
    /// rather than at the maintainer's next check (a write must not go
    /// unrecorded for want of a connection attempt).
    async fn link_for_write(&self) -> Option<Arc<Link>> {
        match self.link.load_full() {
            Some(link) => Some(link),
            None => self.connect(true).await,
        }
    }

    /// After `link` failed a write's call: a link to try once more on, if
    /// the failure was its connection dying (Redis restarted, the connection
    /// broke) — opened at once, so the write is recorded in the new run
    /// before it is acknowledged. `None` when Redis merely answered badly or
    /// slowly (no second try: the write waits long enough already).
    async fn second_chance(&self, link: &Arc<Link>) -> Option<Arc<Link>> {
        if self.is_current(link) {
            return None;
        }
        self.connect(false).await
    }

    /// Phase 1 of a write (before it is forwarded): fence `tags` in the
    /// shared log. False when that could not be recorded; the write is then
    /// owed, and this replica bypasses the cache until it is recorded.
    pub async fn begin_write(&self, id: u64, tags: &BTreeSet<String>) -> bool {
        // The rules the proxy planned it by (it plans by the store's).
        let rules = self.rules.load(Ordering::Acquire);
        let mut fenced_in = None;
        let mut link = self.link_for_write().await;
        for second in [false, true] {
            let Some(l) = link.take() else { break };
            if self.fence(&l, id, tags, rules).await {
                fenced_in = Some(l.epoch);
                break;
            }
            if !second {
                link = self.second_chance(&l).await;
            }
        }
        // Owed from now until its lift is recorded. (Entered after the
        // attempt, so that reads do not bypass the cache while a fence that
        // is about to be recorded is on its way.)
        self.owed(|o| {
            o.writes.insert(
                id,
                OwedWrite {
                    tags: tags.clone(),
                    rules,
                    fenced_in,
                    end: None,
                },
            )
        });
        if fenced_in.is_none() {
            METRICS.invalidation_failures.inc();
        }
        fenced_in.is_some()
    }

    /// A write that was never forwarded: nothing to record. (Had its fence
    /// reached Redis after all, unanswered, the sweep lifts it.)
    pub fn forget(&self, id: u64) {
        self.owed(|o| o.writes.remove(&id));
    }

    /// A write given up on without a runtime to lift it from (process
    /// teardown): leave its lift to the maintainer.
    pub fn mark_ended(&self, id: u64) {
        self.owed(|o| {
            if let Some(w) = o.writes.get_mut(&id) {
                w.end.get_or_insert(End {
                    extra: BTreeSet::new(),
                    invalidate: true,
                });
            }
        });
    }

    /// Phase 2 of a write (its outcome known, or given up on): lift its
    /// fence, invalidating its tags and `extra` unless `invalidate` is false.
    /// False when that could not be recorded yet; it stays owed.
    pub async fn end_write(&self, id: u64, extra: BTreeSet<String>, invalidate: bool) -> Ended {
        let (tags, fenced_in, rules) = match self.owed.lock().writes.get(&id) {
            Some(w) => (w.tags.clone(), w.fenced_in, w.rules),
            None => (BTreeSet::new(), None, self.rules.load(Ordering::Acquire)),
        };
        let mut recorded = false;
        let mut link = self.link_for_write().await;
        let mut stands = false;
        for second in [false, true] {
            let Some(l) = link.take() else { break };
            let attempts = attempts(fenced_in, &l);
            if self
                .lift(&l, id, &tags, &extra, invalidate, rules, attempts)
                .await
            {
                recorded = true;
                break;
            }
            // Its fence still protects every replica while its link is the
            // current one in the run it was recorded in: the lift only
            // failed, Redis did not restart (and it is not reachable only
            // through another connection).
            stands = fenced_in == Some(l.epoch) && self.is_current(&l);
            if !second {
                link = self.second_chance(&l).await;
            }
        }
        // Marked ended only when it could not be recorded: reads bypass the
        // cache while anything is owed, and a lift on its way is not owed.
        self.owed(|o| {
            if recorded {
                o.writes.remove(&id);
            } else {
                o.writes
                    .entry(id)
                    .or_insert_with(|| OwedWrite {
                        tags: tags.clone(),
                        rules,
                        fenced_in: None,
                        end: None,
                    })
                    .end = Some(End {
                    extra: extra.clone(),
                    invalidate,
                });
            }
        });
        if recorded {
            return Ended::Recorded;
        }
        METRICS.invalidation_failures.inc();
        // The fence covers what it fenced, not what only the answer named.
        Ended::Owed {
            fence_stands: stands && extra.is_subset(&tags),
        }
    }

    /// Invalidate `tags` now (no write in flight: a purge).
    pub async fn invalidate(&self, tags: &BTreeSet<String>) -> bool {
        if tags.is_empty() {
            return true;
        }
        self.end_write(rand::random::<u64>() | 1, tags.clone(), true)
            .await
            == Ended::Recorded
    }

    async fn fence(&self, link: &Arc<Link>, id: u64, tags: &BTreeSet<String>, rules: u64) -> bool {
        if tags.is_empty() {
            return true;
        }
        let mut inv = self.fence_script.prepare_invoke();
        inv.key(Keys::fences(&link.run))
            .key(Keys::fence(&link.run, id));
        for t in tags {
            inv.key(Keys::tag(&link.run, t));
        }
        inv.arg(id)
            .arg(self.fence_ttl.as_millis() as u64)
            .arg(self.inv_ttl.as_millis() as u64)
            .arg(joined(tags))
            .arg(Keys::fence_channel(&link.run))
            .arg(FENCE_UNIT)
            .arg(format!("{rules:016x}"));
        self.record::<i64>(link, "fence", &inv, 1).await.is_some()
    }

    #[allow(clippy::too_many_arguments)]
    async fn lift(
        &self,
        link: &Arc<Link>,
        id: u64,
        fenced: &BTreeSet<String>,
        extra: &BTreeSet<String>,
        invalidate: bool,
        rules: u64,
        attempts: u32,
    ) -> bool {
        let extra: BTreeSet<String> = extra.difference(fenced).cloned().collect();
        if fenced.is_empty() && (extra.is_empty() || !invalidate) {
            return true;
        }
        let mut inv = self.lift_script.prepare_invoke();
        inv.key(Keys::clock(&link.run))
            .key(Keys::fences(&link.run))
            .key(Keys::fence(&link.run, id))
            .key(Keys::active_rules(&link.run))
            .key(Keys::tag(&link.run, ALL_TAG));
        for t in fenced.iter().chain(&extra) {
            inv.key(Keys::tag(&link.run, t));
        }
        let all: BTreeSet<String> = fenced.union(&extra).cloned().collect();
        inv.arg(id)
            .arg(fenced.len())
            .arg(self.inv_ttl.as_millis() as u64)
            .arg(FENCE_UNIT)
            .arg(if invalidate { "1" } else { "0" })
            .arg(Keys::inv_channel(&link.run))
            .arg(now_millis())
            .arg(joined(&all))
            .arg(Keys::fence_channel(&link.run))
            .arg(joined(fenced))
            .arg(format!("{rules:016x}"))
            .arg(ALL_TAG);
        let Some(s) = self.record::<u64>(link, "invalidate", &inv, attempts).await else {
            return false;
        };
        if invalidate {
            // Read-your-writes on this replica in bounded mode, before the
            // message comes back.
            self.followed.learn(s, all);
        }
        true
    }

    /// Record what this replica owes the log in `link`'s run: lifts not yet
    /// recorded, and fences of writes still in flight that this run has no
    /// record of. True when nothing is owed any more.
    async fn reconcile(&self, link: &Arc<Link>) -> bool {
        let due = self.owed.lock().due(link.epoch);
        self.owed(|_| ());
        if due.is_empty() {
            return true;
        }
        for (id, w) in due {
            if let Some(end) = w.end {
                let attempts = attempts(w.fenced_in, link);
                if !self
                    .lift(
                        link,
                        id,
                        &w.tags,
                        &end.extra,
                        end.invalidate,
                        w.rules,
                        attempts,
                    )
                    .await
                {
                    return false;
                }
                self.owed(|o| o.writes.remove(&id));
                info!(
                    tags = w.tags.len() + end.extra.len(),
                    "recorded an owed invalidation"
                );
                continue;
            }
            if !self.fence(link, id, &w.tags, w.rules).await {
                return false;
            }
            let ended_meanwhile = self.owed(|o| match o.writes.get_mut(&id) {
                Some(w) if w.end.is_none() => {
                    w.fenced_in = Some(link.epoch);
                    false
                }
                _ => true,
            });
            // Its own lift may have run before this fence: lift it again
            // rather than leave it to the sweep.
            if ended_meanwhile {
                self.lift(link, id, &w.tags, &BTreeSet::new(), true, w.rules, 1)
                    .await;
            }
        }
        !self.owes()
    }

    /// Lift fences whose deadline passed (their writer died or lost Redis).
    async fn sweep(&self, link: &Arc<Link>) {
        let mut inv = self.sweep_script.prepare_invoke();
        inv.key(Keys::clock(&link.run))
            .key(Keys::fences(&link.run))
            .arg(Keys::prefix(&link.run))
            .arg(self.inv_ttl.as_millis() as u64)
            .arg(FENCE_UNIT)
            .arg(Keys::inv_channel(&link.run))
            .arg(Keys::fence_channel(&link.run))
            .arg(now_millis())
            .arg(SWEEP_BATCH)
            .arg(ALL_TAG);
        let mut conn = link.conn.clone();
        match tokio::time::timeout(self.timeout * 4, inv.invoke_async::<u64>(&mut conn)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => warn!(
                fences = n,
                "lifted fences whose writer never did (a replica died or lost redis mid-write)"
            ),
            Ok(Err(e)) => self.failed(link, "sweep", Some(&e)),
            Err(_) => self.failed(link, "sweep", None),
        }
    }

    /// Fetch an entry's bytes from `link`'s run. `None` on a miss and on any
    /// error (an error is a miss, never a failed request).
    pub async fn get(&self, link: &Arc<Link>, cache_key: &str) -> Option<Bytes> {
        let v: Option<Vec<u8>> = self
            .run(
                link,
                "get",
                redis::cmd("GET")
                    .arg(Keys::entry(&link.run, cache_key))
                    .clone(),
            )
            .await?;
        v.map(Bytes::from)
    }

    pub async fn set(
        &self,
        link: &Arc<Link>,
        cache_key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> bool {
        if self.nearly_full.load(Ordering::Acquire) {
            return false;
        }
        let ms = ttl.as_millis().max(1000) as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(Keys::entry(&link.run, cache_key))
            .arg(value)
            .arg("PX")
            .arg(ms);
        self.run::<()>(link, "set", cmd).await.is_some()
    }

    pub async fn delete(&self, cache_key: &str) -> bool {
        let Some(link) = self.link.load_full() else {
            return false;
        };
        let n: Option<i64> = self
            .run(
                &link,
                "del",
                redis::cmd("DEL")
                    .arg(Keys::entry(&link.run, cache_key))
                    .clone(),
            )
            .await;
        n.unwrap_or(0) > 0
    }

    /// Write runtime flag values (None clears one) for every replica to read.
    /// Flags are not tied to `run_id`: they are operator intent, not cache data.
    pub async fn set_flags(&self, values: &[(&str, Option<bool>)]) -> bool {
        let Some(link) = self.link.load_full() else {
            return false;
        };
        for (name, v) in values {
            let cmd = match v {
                Some(b) => redis::cmd("HSET")
                    .arg(FLAGS_KEY)
                    .arg(*name)
                    .arg(if *b { "true" } else { "false" })
                    .clone(),
                None => redis::cmd("HDEL").arg(FLAGS_KEY).arg(*name).clone(),
            };
            if self.run::<i64>(&link, "flags", cmd).await.is_none() {
                return false;
            }
        }
        true
    }

    /// The runtime flag values shared by all replicas; `None` if unreachable.
    pub async fn flags(&self) -> Option<std::collections::HashMap<String, String>> {
        let link = self.link.load_full()?;
        self.run(&link, "flags", redis::cmd("HGETALL").arg(FLAGS_KEY).clone())
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
        let mut conn = self.link.load_full()?.conn.clone();
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

    /// Keep a link, record what is owed, lift abandoned fences, and close
    /// the breaker when Redis answers. Runs until `shutdown` turns true.
    pub async fn maintain(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.check_once().await;
            if self.available() {
                self.last_up_ms.store(mono_ms(), Ordering::Release);
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                }
            }
        }
    }

    async fn check_once(&self) {
        let link = match self.link.load_full() {
            Some(l) => l,
            None => match self.connect(false).await {
                Some(l) => l,
                None => return,
            },
        };
        let run = match self.run_id(&link).await {
            Ok(run) => run,
            Err(e) => return self.failed(&link, "ping", e.as_ref()),
        };
        if *run != *link.run {
            // Something between us and Redis (a proxy) now reaches another
            // process: this link's checks would be answered by the wrong log.
            warn!(%run, "redis behind the connection changed: reconnecting");
            self.drop_link(&link);
            return;
        }
        self.sweep(&link).await;
        if !self.reconcile(&link).await {
            return;
        }
        if !self.check_rules(&link).await {
            return;
        }
        if let Some(memory) = self.memory_stats(&link).await {
            // A failed read keeps the last count, so no eviction between two
            // good reads goes unseen. The first count is compared with 0: a
            // replica that starts after an eviction distrusts what it took.
            let before = self.evicted.swap(memory.evicted_keys, Ordering::AcqRel);
            let before = if before == u64::MAX { 0 } else { before };
            if memory.evicted_keys > before {
                // Redis evicted keys to make room (maxmemory with an
                // eviction policy): a `last_inv` may have gone with them. As
                // after an outage, trust nothing fetched before now.
                warn!("redis evicted keys: entries fetched before now will not be served (give freshgate a Redis with maxmemory-policy noeviction)");
                self.outage_began.fetch_add(1, Ordering::AcqRel);
            }
            let full = memory.nearly_full();
            if full != self.nearly_full.swap(full, Ordering::AcqRel) {
                if full {
                    warn!(used = memory.used, max = memory.max, "redis is nearly full: entries are kept in memory only, so the invalidation log keeps room");
                } else {
                    info!("redis has room again: entries are shared again");
                }
            }
        }
        let outage = self.outage_began.load(Ordering::Acquire);
        if self.outage_cleared.load(Ordering::Acquire) < outage {
            // Back from an outage. Another replica may have acknowledged a
            // write whose invalidation it could not record yet; until it
            // does, entries in Redis look valid. Trust nothing fetched before
            // now: move the clock and serve only entries fetched after it.
            let mut conn = link.conn.clone();
            let floor: Option<u64> = tokio::time::timeout(
                self.timeout.max(Duration::from_millis(250)),
                redis::cmd("INCR")
                    .arg(Keys::clock(&link.run))
                    .query_async(&mut conn),
            )
            .await
            .ok()
            .and_then(|r| r.ok());
            let Some(floor) = floor else {
                return self.record_failure("ping", &"cannot move the clock after an outage");
            };
            self.floor.fetch_max(floor, Ordering::AcqRel);
            // Only the trips counted before the floor moved: one during the
            // INCR keeps the replica out until the next check.
            self.outage_cleared.fetch_max(outage, Ordering::AcqRel);
            info!(
                floor,
                "entries fetched before the redis outage will not be served"
            );
        }
        self.record_success();
    }

    /// Say which rules this replica runs, learn whether others run other
    /// rules, and once the fleet runs these alone, record their activation
    /// (which invalidates everything cached if the fleet last ran others).
    /// True when done, false when Redis did not answer.
    async fn check_rules(&self, link: &Arc<Link>) -> bool {
        let rules = self.rules.load(Ordering::Acquire);
        let mine = format!("{rules:016x}");
        let mut beat = self.heartbeat_script.prepare_invoke();
        beat.key(Keys::rules(&link.run))
            .arg(&mine)
            .arg(RULES_ALIVE.as_millis() as u64)
            .arg(self.inv_ttl.as_millis() as u64);
        let Some(alive) = self.record::<Vec<String>>(link, "rules", &beat, 1).await else {
            return false;
        };
        self.last_heartbeat_ms.store(mono_ms(), Ordering::Release);
        let mixed = alive.iter().any(|f| *f != mine);
        if mixed {
            self.rules_ok.store(false, Ordering::Release);
        }
        if mixed && !self.rules_mixed.swap(true, Ordering::AcqRel) {
            warn!(rules = %mine, others = ?alive, "replicas run other rules (a rollout): the cache is bypassed and writes invalidate everything until they agree");
        }
        if mixed {
            METRICS.rules_mixed.set(1);
            return true;
        }
        // Every time, not once: the fleet may have run other rules while
        // this replica could not hear it (one GET when nothing changed).
        {
            let mut activate = self.activate_script.prepare_invoke();
            activate
                .key(Keys::active_rules(&link.run))
                .key(Keys::clock(&link.run))
                .key(Keys::tag(&link.run, crate::invalidation::ALL_TAG))
                .arg(&mine)
                .arg(self.inv_ttl.as_millis() as u64)
                .arg(FENCE_UNIT)
                .arg(Keys::inv_channel(&link.run))
                .arg(now_millis())
                .arg(crate::invalidation::ALL_TAG);
            let Some(s) = self.record::<u64>(link, "rules", &activate, 1).await else {
                return false;
            };
            if s > 0 {
                info!(rules = %mine, "the fleet runs new rules: everything cached before is invalid");
                self.followed.learn(s, [crate::invalidation::ALL_TAG]);
            }
        }
        let _settle = self.rules_settling.lock();
        if self.rules.load(Ordering::Acquire) != rules || !self.is_current(link) {
            // Changed meanwhile: the next check starts over.
            return true;
        }
        if self.rules_mixed.swap(false, Ordering::AcqRel) {
            info!(rules = %mine, "every replica runs these rules: caching again");
        }
        METRICS.rules_mixed.set(0);
        self.rules_ok.store(true, Ordering::Release);
        true
    }

    /// Redis's memory and evictions (`INFO memory`, `INFO stats`); `None`
    /// if they cannot be read.
    async fn memory_stats(&self, link: &Link) -> Option<MemoryStats> {
        let mut conn = link.conn.clone();
        let (memory, stats): (String, String) = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(250)),
            redis::pipe()
                .cmd("INFO")
                .arg("memory")
                .cmd("INFO")
                .arg("stats")
                .query_async(&mut conn),
        )
        .await
        .ok()?
        .ok()?;
        let field = |text: &str, name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(MemoryStats {
            used: field(&memory, "used_memory")?,
            max: field(&memory, "maxmemory").unwrap_or(0),
            evicted_keys: field(&stats, "evicted_keys")?,
        })
    }

    /// Warn when this Redis may evict the invalidation log to make room:
    /// a lost `last_inv` would make an invalidated entry look valid. (Eviction
    /// is also watched for, see `check_once`.)
    async fn check_eviction_policy(&self, link: &Link) {
        let mut conn = link.conn.clone();
        let get = |name: &'static str| {
            let mut conn = conn.clone();
            async move {
                let v: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                v.get(1).cloned()
            }
        };
        let (Some(maxmemory), Some(policy)) =
            (get("maxmemory").await, get("maxmemory-policy").await)
        else {
            // CONFIG may be disabled (managed Redis): nothing to tell.
            return;
        };
        let _ = &mut conn;
        let evicts = maxmemory != "0" && policy != "noeviction";
        METRICS.redis_may_evict.set(i64::from(evicts));
        if evicts {
            warn!(%maxmemory, %policy, "this redis may evict freshgate's invalidation log: use maxmemory-policy noeviction (or no maxmemory); until then every eviction makes freshgate distrust everything cached before it");
        }
    }

    /// `run_id` from `INFO server`: the identity of the Redis process.
    async fn run_id(&self, link: &Link) -> Result<Arc<str>, Option<redis::RedisError>> {
        let mut conn = link.conn.clone();
        let info = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(250)),
            redis::cmd("INFO")
                .arg("server")
                .query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| None)?
        .map_err(Some)?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| Arc::from(s.trim()))
            .ok_or_else(|| {
                Some(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "INFO has no run_id",
                )))
            })
    }

    /// Open a link: connect, learn the run, note a restart. Returns the
    /// current link if another task opened one meanwhile.
    async fn connect(&self, throttle: bool) -> Option<Arc<Link>> {
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(link) = self.link.load_full() {
            return Some(link);
        }
        // Writes that queued behind a failed attempt do not each make
        // another one.
        let last = self.last_connect_ms.load(Ordering::Relaxed);
        if throttle && now_millis().saturating_sub(last) < CONNECT_AT_MOST_EVERY_MS {
            return None;
        }
        self.last_connect_ms.store(now_millis(), Ordering::Relaxed);
        let conn = match self.open_connection().await {
            Ok(c) => c,
            Err(e) => {
                self.record_failure("connect", &e);
                return None;
            }
        };
        let provisional = Link {
            conn,
            run: Arc::from(""),
            epoch: 0,
        };
        let run = match self.run_id(&provisional).await {
            Ok(run) => run,
            Err(e) => {
                match e {
                    Some(e) => self.record_failure("connect", &e),
                    None => self.record_failure("connect", &"timed out"),
                }
                return None;
            }
        };
        let epoch = {
            let mut known = self.run.lock();
            if known.as_deref() != Some(&*run) {
                if known.is_some() {
                    warn!(%run, "redis restarted: treating everything cached before as invalid");
                }
                *known = Some(run.clone());
                // The new run's clock starts again from zero, and what
                // bounded mode heard belongs to the old one.
                self.floor.store(0, Ordering::Release);
                self.followed.subscribed.store(false, Ordering::Release);
                self.followed.clear();
                self.rules_ok.store(false, Ordering::Release);
                self.evicted.store(u64::MAX, Ordering::Release);
                self.epoch.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                self.epoch.load(Ordering::Acquire)
            }
        };
        let link = Arc::new(Link {
            conn: provisional.conn,
            run,
            epoch,
        });
        self.link.store(Some(link.clone()));
        self.owed(|_| ());
        self.check_eviction_policy(&link).await;
        Some(link)
    }

    async fn open_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str())?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout.max(Duration::from_millis(200)) * 8));
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }
}
