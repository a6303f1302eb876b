//! The cache store: pingora-cache's [`Storage`] over two tiers.
//!
//! - **memory** (always): a quick_cache map keyed by the 128-bit cache-key
//!   hash, bounded by *bytes* (a weigher, S3-FIFO eviction). Each entry ends
//!   at the end of its usefulness (freshness, stale windows, and a little time
//!   to revalidate with the app's validators), checked on lookup; an expired
//!   entry is a miss and is removed, and unread ones go first on eviction.
//! - **redis** (optional, see [`redis`]): the shared tier. Lookups try memory
//!   first, then Redis, and copy Redis hits into memory; fills write both.
//!
//! The invalidation log (a local [`clock::LocalLog`], or the one in Redis)
//! decides what may be served: an entry only if none of its tags was
//! invalidated after its fetch began and no write in flight fences one of
//! them. Writes go through it in two phases ([`Store::begin_write`] before
//! the write is forwarded, [`Store::end_write`] once its outcome is known),
//! so a write is invalidated whatever happens to it, and no fill that began
//! while it was in flight outlives it.
//!
//! Errors never fail a request: a failed lookup is a miss, a failed write just
//! means the response was not stored.

pub mod clock;
pub mod entry;
pub mod redis;

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};

pub use entry::{DecodeError, Entry, Tags};

use self::clock::LocalLog;
pub use self::redis::Ended;
use self::redis::{Link, RedisTier};
use crate::hit::Prepared;
use crate::invalidation;
use crate::metrics::METRICS;

/// How long an entry is kept after it goes stale, so a conditional request to
/// the app (304) can refresh it instead of fetching the whole body again.
const KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(60);

/// What a fill learned from the invalidation log when its fetch began.
#[derive(Debug, Clone, Copy)]
pub struct FillStart {
    /// The clock: the entry is stale once any of its tags is invalidated
    /// later than this.
    pub seq: u64,
    /// The Redis run the clock belongs to (0 without Redis): the entry is
    /// stored only if the run is still the same when the fetch ends.
    pub epoch: u64,
    /// A write in flight fences one of the fill's tags: what it fetches may
    /// predate the write's commit, so it is not stored.
    pub fenced: bool,
}

/// Per-request data from the proxy to the miss handler, carried in the
/// response's `CacheMeta` extensions (in memory only, never stored by pingora).
#[derive(Debug, Clone, Default)]
pub struct FillInfo {
    pub fetch_seq: u64,
    /// See [`FillStart::epoch`].
    pub epoch: u64,
    /// Fingerprint of the rules that computed `tags`.
    pub rules: u64,
    pub tags: Tags,
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

struct Cached {
    /// Which entry this is, of all ever stored here: a prepared header
    /// (see `prepared`) belongs to one entry, not to its key.
    id: u64,
    entry: Entry,
    /// The Redis run (epoch) the entry was read or written under (0 without Redis).
    epoch: u64,
    keep_until: Instant,
}

impl Cached {
    fn new(entry: Entry, epoch: u64, keep_until: Instant) -> Arc<Cached> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Arc::new(Cached {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            entry,
            epoch,
            keep_until,
        })
    }
}

/// A prepared header (see [`Store::memory_hit`]) and the entry it is of.
#[derive(Clone)]
struct ForEntry {
    entry: u64,
    prepared: Arc<Prepared>,
}

#[derive(Clone)]
struct PreparedWeight;

impl quick_cache::Weighter<HashBinary, ForEntry> for PreparedWeight {
    fn weight(&self, _: &HashBinary, p: &ForEntry) -> u64 {
        p.prepared.weight()
    }
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<HashBinary, Arc<Cached>> for ByWeight {
    fn weight(&self, _: &HashBinary, c: &Arc<Cached>) -> u64 {
        c.entry.weight() as u64
    }
}

/// A guess at the mean entry size, only to presize the memory tier's tables.
const TYPICAL_ENTRY_BYTES: u64 = 4096;

pub struct Store {
    /// Keyed by pingora's 128-bit key hash (`CacheKey::combined_bin`): a
    /// fixed-size key stored inline, no string to allocate or chase.
    memory: quick_cache::sync::Cache<HashBinary, Arc<Cached>, ByWeight>,
    /// Response headers of entries hit lately, decoded and prepared for
    /// the answer (`hit.rs`), in a share of the memory budget of their
    /// own: only entries that are hit pay for one, and a hot set's stay.
    prepared: quick_cache::sync::Cache<HashBinary, ForEntry, PreparedWeight>,
    redis: Option<Arc<RedisTier>>,
    /// The invalidation clock when there is no Redis (with Redis, it lives there
    /// so that every replica shares it).
    local: LocalLog,
    /// No entry is kept longer than this (bounds how long invalidations must be remembered).
    max_ttl: Duration,
    /// Fingerprint of the rules in force; entries tagged under other rules
    /// are misses (set at start and by every config reload).
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
        // Prepared headers (about 1 KiB each) get an eighth of the budget.
        let for_prepared = memory_max_bytes / 8;
        let for_entries = memory_max_bytes - for_prepared;
        let estimated_entries = (for_entries / TYPICAL_ENTRY_BYTES).max(1024) as usize;
        let memory =
            quick_cache::sync::Cache::with_weighter(estimated_entries, for_entries, ByWeight);
        let prepared = quick_cache::sync::Cache::with_weighter(
            (for_prepared / 1024).max(1024) as usize,
            for_prepared,
            PreparedWeight,
        );
        Store {
            memory,
            prepared,
            redis,
            local: LocalLog::new(max_ttl),
            max_ttl,
            rules: AtomicU64::new(0),
            write_timeout,
        }
    }

    /// The rules are (now) those of `fingerprint`: nothing tagged under
    /// other rules is served from now on (their tags may not be the ones the
    /// new rules invalidate), and nothing cached before a change is, either:
    /// writes in between were planned by other rules, and these may be the
    /// rules of an earlier time (a revert). Embedded, everything is
    /// invalidated at once; with Redis, the tier does it fleet-wide once every
    /// replica runs these rules, and serves nothing until then.
    pub fn set_rules(&self, fingerprint: u64) {
        let before = self.rules.load(Ordering::Acquire);
        match &self.redis {
            Some(r) => r.set_rules(fingerprint),
            None if before != 0 && before != fingerprint => {
                self.local.invalidate([&invalidation::ALL_TAG.to_string()]);
            }
            None => {}
        }
        self.rules.store(fingerprint, Ordering::Release);
    }

    /// Whether replicas with other rules may be running: a write must then
    /// invalidate everything.
    pub fn rules_mixed(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.rules_mixed())
    }

    fn same_rules(&self, e: &Entry) -> bool {
        e.rules() == self.rules.load(Ordering::Acquire)
    }

    /// Read the invalidation log before a fetch begins, for a response that
    /// will carry `tags` (those known from the request). `None` when it
    /// cannot be read (Redis down): the response must then not be stored.
    pub async fn fill_start(&self, tags: &[String]) -> Option<FillStart> {
        match &self.redis {
            Some(r) => {
                r.adopt_request_runtime();
                r.fill_start(tags).await
            }
            None => Some(FillStart {
                seq: self.local.now(),
                epoch: 0,
                fenced: self.local.fenced(tags.iter().map(String::as_str)),
            }),
        }
    }

    /// Phase 1 of a write, before it is forwarded: from now until it ends,
    /// nothing carrying `tags` is served, and no fill that begins meanwhile
    /// can be served after it ends. See [`WriteFence::recorded`].
    pub async fn begin_write(&'static self, tags: BTreeSet<String>) -> WriteFence {
        let id = rand::random::<u64>() | 1;
        let recorded = match &self.redis {
            Some(r) => {
                r.adopt_request_runtime();
                r.begin_write(id, &tags).await
            }
            None => {
                self.local.fence(&tags);
                true
            }
        };
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
        match &self.redis {
            Some(r) => r.end_write(fence.id, extra, invalidate).await,
            None => {
                if invalidate {
                    self.local.invalidate(extra.difference(&fence.tags));
                }
                self.local.lift(&fence.tags, invalidate);
                Ended::Recorded
            }
        }
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
            Err(_) => match &self.redis {
                Some(r) => r.mark_ended(fence.id),
                None => {
                    self.local.lift(&fence.tags, true);
                }
            },
        }
    }

    /// A write that was not forwarded after all (rejected): its fence goes,
    /// invalidating nothing.
    pub fn abandon_write(&self, mut fence: WriteFence) {
        let fence = fence.disarm();
        match &self.redis {
            Some(r) => r.forget(fence.id),
            None => {
                self.local.lift(&fence.tags, false);
            }
        }
    }

    /// Invalidate `tags` now (a purge; no write in flight). False when it
    /// could not be recorded; the store then refuses service until it is.
    pub async fn invalidate(&self, tags: &BTreeSet<String>) -> bool {
        METRICS.invalidated_tags.inc_by(tags.len() as u64);
        match &self.redis {
            Some(r) => r.invalidate(tags).await,
            None => {
                self.local.invalidate(tags);
                true
            }
        }
    }

    /// Whether this replica holds fences or invalidations that the shared
    /// log does not have yet: it must not be called ready meanwhile.
    pub fn owes(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.owes())
    }

    /// The process is stopping: a write whose record cannot be made now is
    /// refused rather than left owed (see `RedisTier::stopping`).
    pub fn stopping(&self) -> bool {
        self.redis.as_ref().is_some_and(|r| r.stopping())
    }

    async fn still_valid(&self, link: Option<&Arc<Link>>, e: &Entry) -> bool {
        match (&self.redis, link) {
            (Some(r), Some(link)) => r
                .valid(link, e.fetch_seq(), &e.tags())
                .await
                .unwrap_or(false),
            (Some(_), None) => false,
            (None, _) => self.local.valid(e.fetch_seq(), e.tag_names()),
        }
    }

    pub fn redis(&self) -> Option<&Arc<RedisTier>> {
        self.redis.as_ref()
    }

    /// False when a shared tier is configured but cannot be used right now:
    /// the proxy then passes requests through.
    pub fn usable(&self) -> bool {
        self.redis.as_ref().is_none_or(|r| r.available())
    }

    /// Entries and bytes in the memory tier, prepared headers included
    /// (expired entries count until a lookup or eviction removes them).
    pub fn memory_usage(&self) -> (u64, u64) {
        let bytes = self.memory.weight() + self.prepared.weight();
        (self.memory.len() as u64, bytes)
    }

    /// Whether `c` belongs to this run and these rules and is not past
    /// its keeping time (then the invalidation log decides).
    fn current(&self, c: &Cached, link: Option<&Arc<Link>>) -> bool {
        c.epoch == link.map_or(0, |l| l.epoch)
            && self.same_rules(&c.entry)
            && c.keep_until > Instant::now()
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
        if let Some(r) = &self.redis {
            r.adopt_request_runtime();
        }
        let link = self.redis.as_ref().and_then(|r| r.link());
        let c = self.memory.get(key)?;
        if !self.current(&c, link.as_ref()) {
            return None;
        }
        let prepared = match self.prepared.get(key) {
            Some(p) if p.entry == c.id => p.prepared,
            _ => {
                let prepared = Arc::new(Prepared::of(&decode_meta(&c.entry).ok()?));
                let for_entry = ForEntry {
                    entry: c.id,
                    prepared: prepared.clone(),
                };
                self.prepared.insert(*key, for_entry);
                prepared
            }
        };
        if !servable(&prepared) || !self.still_valid(link.as_ref(), &c.entry).await {
            return None;
        }
        METRICS.store_hits.with_label_values(&["memory"]).inc();
        Some((prepared, c.entry.body()))
    }

    async fn find(&self, key: &HashBinary) -> Option<Arc<Cached>> {
        // One link for the whole lookup: an entry is checked against the log
        // of the run it belongs to, over a connection to that very Redis.
        let link = self.redis.as_ref().and_then(|r| r.link());
        if let Some(c) = self.memory.get(key) {
            // Entries from before a Redis restart or a rules change may have
            // been replaced in Redis by another replica: look there. So may an
            // expired one have been (Redis expires its copy at the same time).
            let current = self.current(&c, link.as_ref());
            if current && self.still_valid(link.as_ref(), &c.entry).await {
                METRICS.store_hits.with_label_values(&["memory"]).inc();
                return Some(c);
            }
            // Only this copy: a fill may have replaced it meanwhile.
            self.memory.remove_if(key, |v| Arc::ptr_eq(v, &c));
            if current {
                // Invalidated: Redis holds the same stale copy.
                return None;
            }
        }
        let redis = self.redis.as_ref()?;
        let link = link?;
        let bytes = redis.get(&link, &redis_key(key)).await?;
        let entry = match Entry::decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                // Another version's entry, or corruption: a miss, not a guess.
                tracing::debug!(error = %e, "ignoring undecodable redis entry");
                return None;
            }
        };
        if !self.same_rules(&entry) || !self.still_valid(Some(&link), &entry).await {
            return None;
        }
        METRICS.store_hits.with_label_values(&["redis"]).inc();
        let meta = decode_meta(&entry).ok()?;
        let c = Cached::new(entry, link.epoch, keep_until(&meta, self.max_ttl));
        self.memory.insert(*key, c.clone());
        Some(c)
    }

    /// Store an entry whose fetch began in run `epoch` (0 without Redis).
    async fn put(&self, key: HashBinary, entry: Entry, meta: &CacheMeta, epoch: u64) {
        let keep = keep_until(meta, self.max_ttl);
        let ttl = keep.saturating_duration_since(Instant::now());
        if let Some(redis) = &self.redis {
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
        let in_memory = self.memory.remove(key).is_some();
        let in_redis = match &self.redis {
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

fn decode_meta(e: &Entry) -> Result<CacheMeta> {
    CacheMeta::deserialize(e.meta_internal(), e.meta_header())
}

fn keep_until(meta: &CacheMeta, max_ttl: Duration) -> Instant {
    let stale = meta
        .stale_while_revalidate_sec()
        .max(meta.stale_if_error_sec()) as u64;
    let until = meta.fresh_until() + Duration::from_secs(stale) + KEEP_FOR_REVALIDATION;
    let left = until
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left.min(max_ttl)
}

#[async_trait]
impl Storage for Store {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(c) = self.find(&key.combined_bin()).await else {
            return Ok(None);
        };
        let meta = decode_meta(&c.entry)?;
        let body = c.entry.body();
        let end = body.len();
        Ok(Some((
            meta,
            Box::new(Hit {
                body,
                done: false,
                start: 0,
                end,
            }),
        )))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (internal, header) = meta.serialize()?;
        // Without the clock value read before the fetch, an entry could not be
        // checked against invalidations: refuse to store it.
        let Some(fill) = meta.extensions().get::<FillInfo>().cloned() else {
            return Error::e_explain(ErrorType::InternalError, "response has no fill info");
        };
        Ok(Box::new(Miss {
            store: self,
            key: key.combined_bin(),
            meta_internal: internal.into(),
            meta_header: header.into(),
            fill,
            body: BytesMut::new(),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if self.remove(&target.key().combined_bin()).await {
            Ok(PurgeOutcome::Purged(None))
        } else {
            Ok(PurgeOutcome::NotFound)
        }
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let k = key.combined_bin();
        let Some(old) = self.find(&k).await else {
            return Ok(false);
        };
        let (internal, header) = meta.serialize()?;
        let Ok(entry) = old.entry.with_meta(&internal, &header) else {
            return Ok(false);
        };
        self.put(k, entry, meta, old.epoch).await;
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start {start} beyond body of {}", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

struct Miss {
    store: &'static Store,
    key: HashBinary,
    meta_internal: Bytes,
    meta_header: Bytes,
    fill: FillInfo,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.body.len();
        // Encoded into a buffer of exactly its length, which the memory
        // tier keeps (the fill's buffer has spare capacity).
        let entry = match Entry::new(
            self.fill.fetch_seq,
            self.fill.rules,
            &self.fill.tags,
            &self.meta_internal,
            &self.meta_header,
            &self.body,
        ) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "entry not stored");
                return Ok(MissFinishType::Created(size));
            }
        };
        let meta = decode_meta(&entry)?;
        self.store
            .put(self.key, entry, &meta, self.fill.epoch)
            .await;
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::CacheKey;

    #[test]
    fn redis_keys_are_the_hex_pingora_names_keys_by() {
        let key = CacheKey::new("/studio/api/scenes/42", "");
        assert_eq!(redis_key(&key.combined_bin()), key.combined());
    }
}
