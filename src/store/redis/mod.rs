//! The shared tier: entries in Redis, seen by every replica, and the shared
//! invalidation log (see [`log`]).
//!
//! Redis sits on the request path, so this module decides up front how a Redis
//! problem degrades: reads have a tight timeout and are never retried (a slow
//! read is a miss; an invalidation no fence protects is retried, a fence is
//! tried once, again on a new link if the connection died, see `writes`), and a circuit
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
//!
//! Files: this one holds the tier, reads and fills; `link` the connection,
//! calls over it and the breaker; `cluster` reaching the log's node (on a
//! Redis Cluster, the master of its slot); `writes` a write's fence and lift;
//! `log` the keys and scripts of the shared log; `checks` strict hits' batched
//! checks; `follow` the bounded-mode follower; `maintain` the background
//! maintainer; `side` hashes that other modules (flags, monitoring) name and
//! keep in Redis.

mod checks;
mod cluster;
mod follow;
mod link;
mod log;
mod maintain;
mod side;
mod writes;

pub use self::link::RULES_MIXED_ALERT_AFTER;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use tracing::{info, warn};

use self::follow::Followed;
use self::link::mono_ms;
use self::log::{End, Keys, Owed, OwedWrite, FENCE_UNIT};
use super::entry::Tags;
use super::log::{Ended, FillStart};
use super::RulesFingerprint;
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
/// Checks in a row that Redis leaves unanswered before its link is given up.
const SILENT_CHECKS: u32 = 4;
/// A write may open a connection itself (rather than wait for the next
/// check), but no sooner than this after a failed attempt.
const CONNECT_AT_MOST_EVERY_MS: u64 = 50;
/// Expired fences lifted per sweep at most.
const SWEEP_BATCH: u32 = 64;
/// A replica's rules heartbeat counts for this long: another fingerprint
/// heard within it means the fleet runs mixed rules. (A replica that has
/// not said its own for half of it stops serving: see `heard_lately`.)
const RULES_ALIVE: Duration = Duration::from_secs(4);
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

/// A connection to the Redis process that holds the log, and which run of
/// Redis that is.
pub struct Link {
    conn: MultiplexedConnection,
    /// Where `conn` goes: the configured Redis, or on a Redis Cluster the
    /// master serving the log's slot.
    node: redis::ConnectionInfo,
    /// On a Redis Cluster: a connection that routes each entry (and the
    /// flags) to the master of its slot, following the cluster as it
    /// changes. Entries need no pinning (each is checked against the log),
    /// the log does: it only ever goes over `conn`.
    cluster: Option<ClusterConnection>,
    run: Arc<str>,
    /// Counts the links this replica opened (a rehomed link keeps its
    /// link's): the bounded follower subscribes again when it changes.
    generation: u64,
    /// What this replica saw of this run's log (shared by its links to the
    /// run).
    witness: Arc<Witness>,
    /// The prefix of the log's keys in this run (see `log::Keys`).
    log: Arc<str>,
    /// Counts the runs this replica has seen; entries remember it.
    pub epoch: u64,
    /// Strict hits' checks waiting to go to this Redis together.
    checks: checks::Checks,
    /// Its connection is driven on the runtime requests run on.
    on_request_runtime: bool,
}

/// What this replica saw of one Redis run's log, for `log::HOLDER` to
/// compare the log with, and whether the run's node ever had replicas.
#[derive(Default)]
pub(super) struct Witness {
    /// The highest clock value read or written.
    clock: AtomicU64,
    /// The clock value of this replica's last recorded invalidation, and
    /// when (`mono_ms`): its marker in the log must show it.
    recorded: AtomicU64,
    recorded_at_ms: AtomicU64,
    /// When (`mono_ms`) this replica last set its beat in the log (0: never).
    beat_at_ms: AtomicU64,
    /// Replicas followed the node (a cluster's master, a Sentinel primary):
    /// a failover could promote one that lacks its latest records. Once
    /// seen, kept for the run (a replica reconnecting reads as none).
    replicated: AtomicBool,
}

/// Which Redis process a connection reaches (see `RedisTier::identity`).
pub(super) struct Identity {
    run: Arc<str>,
    /// It is a primary (`role:master`): a demoted one still answers reads,
    /// from a log no replica writes to any more.
    primary: bool,
    /// Replicas follow it (a cluster's master, a Sentinel primary): a
    /// failover could promote one that lacks its latest records.
    replicated: bool,
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
    /// The cluster's nodes last seen (empty unless on a Redis Cluster):
    /// tried after `url` when connecting, so the log's master is found
    /// while the node `url` names is down.
    nodes: parking_lot::Mutex<Vec<redis::ConnectionInfo>>,
    consistency: Consistency,
    followed: Followed,
    timeout: Duration,
    inv_ttl: Duration,
    fence_ttl: Duration,
    link: ArcSwapOption<Link>,
    /// Serializes opening links (the maintainer and writes may both try).
    connecting: tokio::sync::Mutex<()>,
    /// The runtime requests run on, once one has been seen (see
    /// `adopt_request_runtime`).
    request_runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// When an attempt to connect last failed (`mono_ms`; 0: never).
    last_failed_connect_ms: AtomicU64,
    /// The run of the last link and its epoch.
    run: parking_lot::Mutex<Option<Arc<str>>>,
    epoch: AtomicU64,
    /// Entries fetched before this clock value are not served: set when Redis
    /// comes back from an outage (see `check_once`) and when bounded mode
    /// (re)subscribes.
    floor: AtomicU64,
    failures: AtomicU32,
    /// The maintainer's checks in a row that timed out.
    silent_checks: AtomicU32,
    /// Until when the breaker is open (`mono_ms`).
    open_until_ms: AtomicU64,
    /// Counts breaker trips (and evictions); `outage_cleared` catches up once
    /// the maintainer has moved the floor past them (see `check_once`).
    /// Nothing is served meanwhile.
    outage_began: AtomicU64,
    outage_cleared: AtomicU64,
    /// When this replica last said which rules it runs (`mono_ms`).
    last_heartbeat_ms: AtomicU64,
    /// The clocks of `unusable_for` and `rules_mixed_for` (`mono_ms`).
    last_usable_ms: AtomicU64,
    last_agreed_ms: AtomicU64,
    /// The last heartbeat heard another fingerprint than this replica's.
    heard_mixed: AtomicBool,
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
    /// The process is stopping (the maintainer heard the shutdown): what
    /// cannot be recorded now may never be, so nothing more may be owed.
    stopping: AtomicBool,
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
    hand_over_script: redis::Script,
    sweep_script: redis::Script,
    heartbeat_script: redis::Script,
    activate_script: redis::Script,
    holder_script: redis::Script,
    /// Counts the links opened (see `Link::generation`).
    generations: AtomicU64,
    /// The witness of the run last reached (its links share it).
    witness: parking_lot::Mutex<Option<(Arc<str>, Arc<Witness>)>>,
    /// Names this replica's marker in the log (see `log::HOLDER`).
    replica_id: String,
}

impl RedisTier {
    pub fn new(url: String, limits: Limits, consistency: Consistency) -> RedisTier {
        METRICS.redis_configured.set(1);
        RedisTier {
            url,
            nodes: Default::default(),
            consistency,
            followed: Followed::default(),
            timeout: limits.timeout,
            inv_ttl: limits.inv_ttl,
            fence_ttl: limits.fence_ttl,
            link: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            request_runtime: std::sync::OnceLock::new(),
            last_failed_connect_ms: AtomicU64::new(0),
            run: parking_lot::Mutex::new(None),
            epoch: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            silent_checks: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            outage_began: AtomicU64::new(0),
            outage_cleared: AtomicU64::new(0),
            last_heartbeat_ms: AtomicU64::new(0),
            last_usable_ms: AtomicU64::new(mono_ms()),
            heard_mixed: AtomicBool::new(false),
            last_agreed_ms: AtomicU64::new(mono_ms()),
            nearly_full: AtomicBool::new(false),
            evicted: AtomicU64::new(u64::MAX),
            owed: parking_lot::Mutex::new(Owed::default()),
            owing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            rules: AtomicU64::new(0),
            rules_mixed: AtomicBool::new(true),
            rules_settling: parking_lot::Mutex::new(()),
            rules_ok: AtomicBool::new(false),
            fence_script: redis::Script::new(log::FENCE),
            lift_script: redis::Script::new(log::LIFT),
            hand_over_script: redis::Script::new(&log::hand_over_script()),
            sweep_script: redis::Script::new(log::SWEEP),
            heartbeat_script: redis::Script::new(log::RULES_HEARTBEAT),
            activate_script: redis::Script::new(log::ACTIVATE_RULES),
            holder_script: redis::Script::new(log::HOLDER),
            generations: AtomicU64::new(0),
            witness: Default::default(),
            replica_id: format!("{:016x}", rand::random::<u64>()),
        }
    }

    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// The current link, if connected.
    pub fn link(&self) -> Option<Arc<Link>> {
        self.link.load_full()
    }

    /// This replica now runs rules `fingerprint`. Until the maintainer has
    /// checked that no replica runs others and recorded their activation,
    /// it serves nothing from the cache and its writes invalidate
    /// everything.
    pub fn set_rules(&self, RulesFingerprint(fingerprint): RulesFingerprint) {
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

    /// Whether the process is stopping: a write this replica cannot record
    /// now must not be acknowledged as if it could record it later.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
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

    /// Read the clock, and whether any of `tags` is fenced, before a fetch
    /// begins. `None` when Redis cannot be used: the response is not stored.
    pub async fn fill_start(&self, tags: &[String]) -> Option<FillStart> {
        let link = self.link.load_full()?;
        if !self.available() {
            return None;
        }
        let began = std::time::Instant::now();
        let (seq, fenced) = match self.consistency {
            Consistency::Bounded => (self.clock_now(&link).await?, self.followed.fenced(tags)),
            Consistency::Strict => {
                let mut cmd = redis::cmd("MGET");
                cmd.arg(Keys::clock(&link.log));
                for t in tags {
                    cmd.arg(Keys::tag(&link.log, t));
                }
                let v: Vec<Option<u64>> = self.run(&link, "clock", cmd).await?;
                let seq = v.first().copied().flatten().unwrap_or(0);
                self.saw_clock(&link, seq);
                (seq, v.iter().skip(1).any(|v| log::fenced(*v)))
            }
        };
        Some(FillStart {
            seq,
            epoch: link.epoch,
            fenced,
            began,
        })
    }

    async fn clock_now(&self, link: &Arc<Link>) -> Option<u64> {
        let v: Option<u64> = self
            .run(
                link,
                "clock",
                redis::cmd("GET").arg(Keys::clock(&link.log)).clone(),
            )
            .await?;
        let seq = v.unwrap_or(0);
        self.saw_clock(link, seq);
        Some(seq)
    }

    /// Note that `link`'s run showed clock value `seq` (see `Witness`).
    fn saw_clock(&self, link: &Link, seq: u64) {
        link.witness.clock.fetch_max(seq, Ordering::AcqRel);
    }

    /// Whether an entry of run `link` fetched at `fetch_seq` with `tags` may
    /// be served. `None` (treat as a miss) when Redis cannot answer.
    pub async fn valid(
        self: &Arc<Self>,
        link: &Arc<Link>,
        fetch_seq: u64,
        tags: &Tags,
    ) -> Option<bool> {
        // The floor first: it holds for every entry, also one without tags
        // (every entry freshgate stores carries `a:all`; one without any was
        // written by something else).
        if fetch_seq < self.floor.load(Ordering::Acquire) {
            return Some(false);
        }
        if tags.is_empty() {
            return Some(true);
        }
        if self.consistency == Consistency::Bounded {
            if !self.available() || !self.followed.subscribed.load(Ordering::Acquire) {
                return None;
            }
            return Some(self.followed.valid(fetch_seq, tags));
        }
        self.check(link, tags, fetch_seq).await
    }

    /// Fetch an entry's bytes from `link`'s run. `None` on a miss and on any
    /// error (an error is a miss, never a failed request).
    pub async fn get(&self, link: &Arc<Link>, cache_key: &str) -> Option<Bytes> {
        let v: Option<Vec<u8>> = self
            .run_data(
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
        self.run_data::<()>(link, "set", cmd).await.is_some()
    }

    pub async fn delete(&self, cache_key: &str) -> bool {
        let Some(link) = self.link.load_full() else {
            return false;
        };
        let n: Option<i64> = self
            .run_data(
                &link,
                "del",
                redis::cmd("DEL")
                    .arg(Keys::entry(&link.run, cache_key))
                    .clone(),
            )
            .await;
        n.unwrap_or(0) > 0
    }
}
