//! The cache store: what may be served, and where it is kept.
//!
//! - **memory** (always, [`memory`]): entries by cache-key hash, bounded by
//!   bytes. Each entry ends at the end of its usefulness (freshness, stale
//!   windows, and a little time to revalidate with the app's validators),
//!   checked on lookup; an expired entry is a miss and is removed.
//! - **redis** (optional, see [`redis`]): the shared tier. Lookups try memory
//!   first, then Redis, and copy Redis hits into memory; fills write both.
//!
//! The invalidation log ([`log`]: a local [`clock::LocalLog`], or the one in
//! Redis) decides what may be served: an entry only if none of its tags was
//! invalidated after its fetch began and no write in flight fences one of
//! them. Writes go through it in two phases ([`Store::begin_write`] before
//! the write is forwarded, [`Store::end_write`] once its outcome is known),
//! so a write is invalidated whatever happens to it, and no fill that began
//! while it was in flight outlives it. pingora-cache reaches the store
//! through `storage.rs`.
//!
//! Errors never fail a request: a failed lookup is a miss, a failed write just
//! means the response was not stored.

pub mod clock;
pub mod entry;
pub mod log;
mod memory;
pub mod redis;
mod storage;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::CacheMeta;
use pingora::Result;

pub use entry::{DecodeError, Entry, RulesFingerprint, Tags};
pub use log::{Ended, FillStart};

use self::clock::LocalLog;
use self::log::{InvalidationLog, Log, Run};
use self::memory::{Cached, MemoryTier};
use self::redis::RedisTier;
use crate::hit::Prepared;
use crate::metrics::METRICS;

/// How long an entry is kept after it goes stale, so a conditional request to
/// the app (304) can refresh it instead of fetching the whole body again.
const KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(60);

/// Per-request data from the proxy to the miss handler, carried in the
/// response's `CacheMeta` extensions (in memory only, never stored by pingora).
#[derive(Debug, Clone)]
pub struct FillInfo {
    pub fetch_seq: u64,
    /// See [`FillStart::epoch`].
    pub epoch: u64,
    /// The rules that computed `tags`.
    pub rules: RulesFingerprint,
    pub tags: Tags,
    /// When the fetch began ([`FillStart::began`]). The log remembers an
    /// invalidation for `max_ttl` + [`clock::LIFETIME_MARGIN`] and an entry
    /// lives `max_ttl` from when it is stored, so one stored later than the
    /// margin after its fetch began could outlive an invalidation made
    /// while it was fetched (a body trickling in for over an hour): past
    /// [`clock::MAX_FILL`], part of the margin, it is not stored.
    pub began: Instant,
}

/// A write in flight, fenced in the invalidation log by
/// [`Store::begin_write`]. Hand it back to [`Store::end_write`] (or
/// [`Store::end_write_later`]); if it is dropped instead (the request's task
/// ended some other way), it is lifted after the store's write timeout.
#[must_use]
pub struct WriteFence {
    id: u64,
    tags: BTreeSet<String>,
    recorded: bool,
    /// Set until the fence is handed back: who lifts it if it is dropped.
    armed: Option<&'static Store>,
}

impl WriteFence {
    /// Whether the shared log has it (always, without Redis).
    pub fn recorded(&self) -> bool {
        self.recorded
    }

    pub fn tags(&self) -> &BTreeSet<String> {
        &self.tags
    }

    fn disarm(&mut self) -> WriteFence {
        self.armed = None;
        WriteFence {
            id: self.id,
            tags: std::mem::take(&mut self.tags),
            recorded: self.recorded,
            armed: None,
        }
    }
}

impl Drop for WriteFence {
    fn drop(&mut self) {
        if let Some(store) = self.armed {
            let fence = self.disarm();
            store.end_write_later(fence, store.write_timeout);
        }
    }
}

/// What [`Store::hand_over`] did.
pub enum HandOver {
    /// The new fence stands, and the first write ended so.
    Done(WriteFence, Ended),
    /// The new fence could not be recorded: the first is to be ended by
    /// the caller (`extra` is handed back for that). It stands, unless a
    /// one-step hand-over whose answer was lost ran after all — then the
    /// first is lifted and invalidated, and the new fence stands in Redis
    /// (to its deadline), covering the same tags.
    Unfenced {
        fence: WriteFence,
        first: WriteFence,
        extra: BTreeSet<String>,
    },
}

pub struct Store {
    memory: MemoryTier,
    /// What decides whether an entry may be served: a local log, or the one
    /// in Redis that every replica shares.
    log: Log,
    /// No entry is kept longer than this (bounds how long invalidations must be remembered).
    max_ttl: Duration,
    /// The rules in force ([`RulesFingerprint`], kept as its number);
    /// entries tagged under other rules are misses (set at start and by
    /// every config reload).
    rules: AtomicU64,
    /// How long a write may take the app (see `writes.timeout`): a write
    /// whose outcome is unknown is invalidated this long after.
    write_timeout: Duration,
}

impl Store {
    pub fn new(
        memory_max_bytes: u64,
        redis: Option<Arc<RedisTier>>,
        max_ttl: Duration,
        write_timeout: Duration,
    ) -> Store {
        let log = match redis {
            Some(r) => Log::Shared(r),
            None => Log::Local(LocalLog::new(max_ttl)),
        };
        Store {
            memory: MemoryTier::new(memory_max_bytes),
            log,
            max_ttl,
            rules: AtomicU64::new(0),
            write_timeout,
        }
    }

    /// The rules are (now) those of `fingerprint`: nothing tagged under
    /// other rules is served from now on (their tags may not be the ones the
    /// new rules invalidate), and nothing cached before a change is, either
    /// (see [`InvalidationLog::rules_changed`]).
    pub fn set_rules(&self, fingerprint: RulesFingerprint) {
        let before = RulesFingerprint(self.rules.load(Ordering::Acquire));
        self.log.rules_changed(before, fingerprint);
        self.rules.store(fingerprint.0, Ordering::Release);
    }

    /// Whether replicas with other rules may be running: a write must then
    /// invalidate everything.
    pub fn rules_mixed(&self) -> bool {
        self.log.rules_mixed()
    }

    fn same_rules(&self, e: &Entry) -> bool {
        e.rules().0 == self.rules.load(Ordering::Acquire)
    }

    /// Read the invalidation log before a fetch begins, for a response that
    /// will carry `tags` (those known from the request). `None` when it
    /// cannot be read (Redis down): the response must then not be stored.
    pub async fn fill_start(&self, tags: &[String]) -> Option<FillStart> {
        self.log.fill_start(tags).await
    }

    /// Phase 1 of a write, before it is forwarded: from now until it ends,
    /// nothing carrying `tags` is served, and no fill that begins meanwhile
    /// can be served after it ends. See [`WriteFence::recorded`].
    pub async fn begin_write(&'static self, tags: BTreeSet<String>) -> WriteFence {
        let id = rand::random::<u64>() | 1;
        let recorded = self.log.begin_write(id, &tags).await;
        WriteFence {
            id,
            tags,
            recorded,
            armed: Some(self),
        }
    }

    /// Phase 2: the write's outcome is known. Invalidate its tags and
    /// `extra` (tags its answer named) unless `invalidate` is false (the app
    /// refused it), and lift its fence. When that cannot be recorded yet the
    /// write is owed: the store refuses service until it is.
    pub async fn end_write(
        &self,
        mut fence: WriteFence,
        extra: BTreeSet<String>,
        invalidate: bool,
    ) -> Ended {
        let fence = fence.disarm();
        if invalidate {
            METRICS
                .invalidated_tags
                .inc_by((fence.tags.len() + extra.len()) as u64);
        }
        self.log
            .end_write(fence.id, &fence.tags, extra, invalidate)
            .await
    }

    /// Phase 2 of a write whose answer has a body to come: fence `tags` (its
    /// own and its answer's) as a new write, then end `first` as
    /// [`Store::end_write`] does, invalidating — the new fence in the log
    /// before the first is lifted, so no moment between them is unfenced
    /// while the app may still commit. One round trip to Redis where it
    /// can be ([`InvalidationLog::hand_over`]), else the two steps; the
    /// first is left standing when the new fence could not be recorded
    /// ([`HandOver::Unfenced`]: the caller decides).
    pub async fn hand_over(
        &'static self,
        mut first: WriteFence,
        tags: BTreeSet<String>,
        extra: BTreeSet<String>,
    ) -> HandOver {
        let id = rand::random::<u64>() | 1;
        if let Some(ended) = self.log.hand_over(first.id, id, &tags, &extra).await {
            let first = first.disarm();
            METRICS
                .invalidated_tags
                .inc_by((first.tags.len() + extra.len()) as u64);
            let fence = WriteFence {
                id,
                tags,
                recorded: true,
                armed: Some(self),
            };
            return HandOver::Done(fence, ended);
        }
        let recorded = self.log.begin_write(id, &tags).await;
        let fence = WriteFence {
            id,
            tags,
            recorded,
            armed: Some(self),
        };
        if !recorded {
            return HandOver::Unfenced {
                fence,
                first,
                extra,
            };
        }
        HandOver::Done(fence, self.end_write(first, extra, true).await)
    }

    /// How long the app may take to finish a write (`writes.timeout`, as
    /// at start: Redis lifts orphaned fences by it).
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// The write's outcome is unknown (the client or the app went away):
    /// the app may still commit it for up to `after`, so it stays fenced
    /// that long and is then invalidated.
    pub fn end_write_later(&'static self, mut fence: WriteFence, after: Duration) {
        let fence = fence.disarm();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(after).await;
                    self.end_write(fence, BTreeSet::new(), true).await;
                });
            }
            // Only at process teardown: there is no later.
            Err(_) => self.log.end_write_now(fence.id, &fence.tags),
        }
    }

    /// A write that was not forwarded after all (rejected): its fence goes,
    /// invalidating nothing.
    pub fn abandon_write(&self, mut fence: WriteFence) {
        let fence = fence.disarm();
        self.log.abandon_write(fence.id, &fence.tags);
    }

    /// Invalidate `tags` now (a purge; no write in flight). False when it
    /// could not be recorded; the store then refuses service until it is.
    pub async fn invalidate(&self, tags: &BTreeSet<String>) -> bool {
        METRICS.invalidated_tags.inc_by(tags.len() as u64);
        self.log.invalidate(tags).await
    }

    /// Whether this replica holds fences or invalidations that the shared
    /// log does not have yet: it must not be called ready meanwhile.
    pub fn owes(&self) -> bool {
        self.log.owes()
    }

    /// The process is stopping: a write whose record cannot be made now is
    /// refused rather than left owed (see `RedisTier::stopping`).
    pub fn stopping(&self) -> bool {
        self.log.stopping()
    }

    /// The shared tier, when there is one: its log is the store's log,
    /// and lookups try memory first, then its entries (copied into
    /// memory); fills write both.
    pub fn redis(&self) -> Option<&Arc<RedisTier>> {
        match &self.log {
            Log::Shared(r) => Some(r),
            Log::Local(_) => None,
        }
    }

    /// False when a shared tier is configured but cannot be used right now:
    /// the proxy then passes requests through.
    pub fn usable(&self) -> bool {
        self.log.usable()
    }

    /// Entries and bytes in the memory tier, prepared headers included
    /// (expired entries count until a lookup or eviction removes them).
    pub fn memory_usage(&self) -> (u64, u64) {
        self.memory.usage()
    }

    /// Whether `c` belongs to `run` and these rules and is not past its
    /// keeping time (then the invalidation log decides).
    fn current(&self, c: &Cached, run: &Run) -> bool {
        c.epoch == Log::epoch(run) && self.same_rules(&c.entry) && c.keep_until > Instant::now()
    }

    /// A hit from the memory tier alone: the entry's prepared header (see
    /// `hit.rs`) and body, what the proxy needs to answer a fresh hit
    /// without pingora-cache. `servable` is asked before the invalidation
    /// log (with Redis, strict: a round trip), so an entry it declines costs
    /// no check here. `None` (nothing current in memory, not servable, or
    /// the log says no) sends the request down pingora-cache's path, which
    /// looks again and removes what may not be served: nothing is served
    /// here that a lookup would not serve.
    pub async fn memory_hit(
        &self,
        key: &HashBinary,
        servable: impl FnOnce(&Prepared) -> bool,
    ) -> Option<(Arc<Prepared>, Bytes)> {
        let run = self.log.run()?;
        let c = self.memory.get(key)?;
        if !self.current(&c, &run) {
            return None;
        }
        let prepared = self
            .memory
            .prepared(key, &c, |e| Some(Prepared::of(&decode_meta(e).ok()?)))?;
        if !servable(&prepared) || !self.log.valid(&run, &c.entry).await {
            return None;
        }
        METRICS.store_hits.with_label_values(&["memory"]).inc();
        Some((prepared, c.entry.body()))
    }

    async fn find(&self, key: &HashBinary) -> Option<Arc<Cached>> {
        // One hold on the log for the whole lookup: an entry is checked
        // against the run it belongs to, over a connection to that very Redis.
        // None (Redis configured, not reached): nothing in memory is current.
        let run = self.log.run();
        if let Some(c) = self.memory.get(key) {
            // Entries from before a Redis restart or a rules change may have
            // been replaced in Redis by another replica: look there. So may an
            // expired one have been (Redis expires its copy at the same time).
            let current = run.as_ref().is_some_and(|r| self.current(&c, r));
            if current && self.log.valid(run.as_ref()?, &c.entry).await {
                METRICS.store_hits.with_label_values(&["memory"]).inc();
                return Some(c);
            }
            self.memory.remove_copy(key, &c);
            if current {
                // Invalidated: Redis holds the same stale copy.
                return None;
            }
        }
        let run = run?;
        let (redis, link) = (self.redis()?, run.link()?);
        let bytes = redis.get(link, &redis_key(key)).await?;
        let entry = match Entry::decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                // Another version's entry, or corruption: a miss, not a guess.
                tracing::debug!(error = %e, "ignoring undecodable redis entry");
                return None;
            }
        };
        if !self.same_rules(&entry) || !self.log.valid(&run, &entry).await {
            return None;
        }
        METRICS.store_hits.with_label_values(&["redis"]).inc();
        let until = usable_until(&decode_meta(&entry).ok()?);
        let c = Cached::new(entry, link.epoch, keep_until(until, self.max_ttl));
        self.memory.insert(*key, c.clone());
        Some(c)
    }

    /// Store an entry whose fetch began in run `epoch` (0 for a local
    /// log), of use until `until` (see [`usable_until`]).
    async fn put(&self, key: HashBinary, entry: Entry, until: SystemTime, epoch: u64) {
        let keep = keep_until(until, self.max_ttl);
        let ttl = keep.saturating_duration_since(Instant::now());
        if let Some(redis) = self.redis() {
            // Its `fetch_seq` is a clock value of that run: in any other run
            // it would compare with unrelated invalidations.
            let Some(link) = redis.link().filter(|l| l.epoch == epoch) else {
                return;
            };
            redis
                .set(&link, &redis_key(&key), entry.encoded(), ttl)
                .await;
        }
        self.memory.insert(key, Cached::new(entry, epoch, keep));
    }

    async fn remove(&self, key: &HashBinary) -> bool {
        let in_memory = self.memory.remove(key);
        let in_redis = match self.redis() {
            Some(r) => r.delete(&redis_key(key)).await,
            None => false,
        };
        in_memory || in_redis
    }
}

/// The Redis key of a cache key: its hash in hex, as pingora's
/// `CacheKey::combined()` spells it (without hashing the key a second time).
fn redis_key(key: &HashBinary) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(key.len() * 2);
    for b in key {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

pub(super) fn decode_meta(e: &Entry) -> Result<CacheMeta> {
    CacheMeta::deserialize(e.meta_internal(), e.meta_header())
}

/// Until when a response with `meta` is of use: fresh, then its stale
/// windows, then a little time to revalidate.
pub(super) fn usable_until(meta: &CacheMeta) -> SystemTime {
    let stale = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec()) as u64;
    meta.fresh_until() + Duration::from_secs(stale) + KEEP_FOR_REVALIDATION
}

/// When the memory tier lets go of an entry of use until `until`: then, or
/// `max_ttl` from now if sooner.
fn keep_until(until: SystemTime, max_ttl: Duration) -> Instant {
    let left = until
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left.min(max_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::key::CacheHashKey;
    use pingora::cache::CacheKey;

    #[test]
    fn redis_keys_are_the_hex_pingora_names_keys_by() {
        let key = CacheKey::new("/studio/api/scenes/42", "");
        assert_eq!(redis_key(&key.combined_bin()), key.combined());
    }
}
