//! The invalidation clock and, per tag, the clock value of its last
//! invalidation (`last_inv`), for the embedded store.
//!
//! The invariant (docs/architecture.md §2): an entry may be served only if
//! none of its tags was invalidated after its fetch began, i.e. iff
//! `last_inv[t] <= fetch_seq` for every tag `t` of the entry.
//!
//! `last_inv` must never forget a tag while an entry that carries it may still
//! be served. Two mechanisms make the map bounded without breaking that:
//! - a time bound: an entry lives at most `max_ttl`, so a `last_inv`
//!   older than that (plus a margin for the fetch itself) can no longer matter;
//! - a size bound: when a tag is evicted for space, `floor` rises to its value,
//!   and a tag that is not in the map counts as invalidated at `floor`.
//!
//! Writes in flight *fence* their tags ([`LocalLog::fence`]): while a tag is
//! fenced no entry carrying it is valid, whenever it was fetched, because the
//! app may commit the write at any moment. Lifting the fence
//! ([`LocalLog::lift`]) records the invalidation first and then removes the
//! fence, so every fill that began during the write is older than the new
//! `last_inv`. Fences live in their own small map: the evicting `last_inv`
//! map must never drop one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, UnitWeighter};

/// Tags remembered at most (each costs ~100 bytes).
const MAX_TAGS: usize = 2_000_000;
/// Added to `max_ttl` for the time a fetch may take before it is stored.
pub const LIFETIME_MARGIN: Duration = Duration::from_secs(3600);
/// A fill that took longer is not stored. Shorter than the margin: the rest
/// covers a jump of Redis's clock that expires records early (see the
/// Redis log's `BEAT_TTL`).
pub const MAX_FILL: Duration = Duration::from_secs(20 * 60);

/// The last invalidation of one tag.
#[derive(Clone, Copy)]
struct Inv {
    seq: u64,
    at: Instant,
}

/// Raises `floor` to the value of every tag evicted for space, *before* the
/// tag leaves the map: a reader that no longer finds the tag then reads the
/// raised floor (it reads `floor` after its lookup, see [`LocalLog::valid`]).
#[derive(Clone)]
struct RaiseFloor(Arc<AtomicU64>);

impl quick_cache::Lifecycle<String, Inv> for RaiseFloor {
    type RequestState = ();
    fn begin_request(&self) {}
    fn before_evict(&self, _: &mut (), _tag: &String, inv: &mut Inv) {
        self.0.fetch_max(inv.seq, Ordering::AcqRel);
    }
}

/// The embedded store's invalidation log: the clock, each tag's
/// `last_inv`, the floor, and the fences of writes in flight.
pub struct LocalLog {
    clock: AtomicU64,
    floor: Arc<AtomicU64>,
    /// Expiry is checked on read (an expired value counts as absent); the
    /// size bound evicts expired tags first in practice, as nobody reads them.
    last_inv: Cache<String, Inv, UnitWeighter, DefaultHashBuilder, RaiseFloor>,
    remember_for: Duration,
    /// Tag -> writes in flight that fence it.
    fences: parking_lot::Mutex<HashMap<String, u32>>,
    /// `fences.len()`, readable without the lock: usually 0.
    fenced: AtomicUsize,
}

impl LocalLog {
    pub fn new(max_ttl: Duration) -> LocalLog {
        LocalLog::with_limits(max_ttl + LIFETIME_MARGIN, MAX_TAGS)
    }

    fn with_limits(remember_for: Duration, max_tags: usize) -> LocalLog {
        let floor = Arc::new(AtomicU64::new(0));
        let last_inv = Cache::with(
            max_tags,
            max_tags as u64,
            UnitWeighter,
            DefaultHashBuilder::default(),
            RaiseFloor(floor.clone()),
        );
        LocalLog {
            // Starts at 1 so that 0 can mean "no clock read" in entries.
            clock: AtomicU64::new(1),
            floor,
            last_inv,
            remember_for,
            fences: parking_lot::Mutex::new(HashMap::new()),
            fenced: AtomicUsize::new(0),
        }
    }

    /// A write that may change what `tags` name is about to be forwarded:
    /// nothing carrying them is valid until [`LocalLog::lift`].
    pub fn fence<'a>(&self, tags: impl IntoIterator<Item = &'a String>) {
        let mut f = self.fences.lock();
        for t in tags {
            *f.entry(t.clone()).or_insert(0) += 1;
        }
        self.fenced.store(f.len(), Ordering::Release);
    }

    /// The write that fenced `tags` is over: invalidate them (unless the
    /// app refused it) and only then drop its fence. Returns the clock value
    /// of the invalidation, if any.
    pub fn lift<'a>(
        &self,
        tags: impl IntoIterator<Item = &'a String> + Clone,
        invalidate: bool,
    ) -> Option<u64> {
        // A reader checks the fence before `last_inv`: once it no longer
        // sees the fence, it sees the new value.
        let s = invalidate.then(|| self.invalidate(tags.clone()));
        let mut f = self.fences.lock();
        for t in tags {
            if let Some(n) = f.get_mut(t.as_str()) {
                *n -= 1;
                if *n == 0 {
                    f.remove(t.as_str());
                }
            }
        }
        self.fenced.store(f.len(), Ordering::Release);
        s
    }

    /// Whether a write in flight fences any of `tags`.
    pub fn fenced<'a>(&self, tags: impl IntoIterator<Item = &'a str>) -> bool {
        if self.fenced.load(Ordering::Acquire) == 0 {
            return false;
        }
        let f = self.fences.lock();
        tags.into_iter().any(|t| f.contains_key(t))
    }

    /// Read the clock before a fetch begins.
    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::Acquire)
    }

    /// Record an invalidation of `tags`; returns its clock value.
    pub fn invalidate<'a>(&self, tags: impl IntoIterator<Item = &'a String>) -> u64 {
        // The increment and the stores are not one atomic step, so a reader
        // could read the new clock before `last_inv` is written. That is safe:
        // such a reader's fetch starts after the app committed the write (the
        // write's response is what triggered this), so what it stores is fresh.
        let s = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        let now = Instant::now();
        for t in tags {
            if !self.raise(t, s, now) {
                // Never observed (the map would have to drop the tag's
                // placeholder under us), but if it were: invalidating
                // everything older is always safe.
                self.floor.fetch_max(s, Ordering::AcqRel);
            }
        }
        s
    }

    /// `last_inv[tag] = max(last_inv[tag], s)`, atomically per tag.
    fn raise(&self, tag: &str, s: u64, now: Instant) -> bool {
        for _ in 0..3 {
            let raise = |_: &String, inv: &mut Inv| {
                inv.seq = inv.seq.max(s);
                inv.at = now;
                EntryAction::Retain(())
            };
            let recorded = match self.last_inv.entry(tag, None, raise) {
                EntryResult::Retained(()) => true,
                // Fails only if the placeholder was dropped from the map
                // meanwhile: then look again.
                EntryResult::Vacant(slot) => slot.insert(Inv { seq: s, at: now }).is_ok(),
                _ => false,
            };
            if recorded {
                return true;
            }
        }
        false
    }

    /// Whether an entry fetched at `fetch_seq` with `tags` may be served.
    pub fn valid<'a>(
        &self,
        fetch_seq: u64,
        tags: impl IntoIterator<Item = &'a str, IntoIter: Clone>,
    ) -> bool {
        let tags = tags.into_iter();
        if self.fenced(tags.clone()) {
            return false;
        }
        tags.into_iter().all(|t| match self.last_inv.get(t) {
            // The clock is read only for a tag that was invalidated: a hit
            // on an entry whose tags never were reads none.
            Some(inv) if inv.at.elapsed() < self.remember_for => inv.seq <= fetch_seq,
            // Evicted (or never invalidated): `floor`, read only now, after
            // the lookup — read before it, it could predate the eviction of
            // this very tag. Expired: older than every entry still alive.
            _ => self.floor.load(Ordering::Acquire) <= fetch_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(tags: &[String]) -> impl Iterator<Item = &str> + Clone {
        tags.iter().map(String::as_str)
    }

    #[test]
    fn invalidated_after_fetch_began_is_invalid() {
        let c = LocalLog::new(Duration::from_secs(60));
        let tags = vec!["a".to_string(), "b".to_string()];
        let fetch = c.now();
        assert!(c.valid(fetch, strs(&tags)));
        c.invalidate([&"b".to_string()]);
        assert!(
            !c.valid(fetch, strs(&tags)),
            "b was invalidated after the fetch began"
        );
        let refetch = c.now();
        assert!(
            c.valid(refetch, strs(&tags)),
            "a fetch that began after it is fine"
        );
        assert!(c.valid(fetch, ["c"]), "other tags are untouched");
    }

    #[test]
    fn racing_writes_never_move_last_inv_backwards() {
        let c = LocalLog::new(Duration::from_secs(60));
        let t = "x".to_string();
        let s1 = c.invalidate([&t]);
        let s2 = c.invalidate([&t]);
        assert!(s2 > s1);
        assert!(!c.valid(s2 - 1, [t.as_str()]));
        assert!(c.valid(s2, [t.as_str()]));
    }

    #[test]
    fn a_tag_evicted_for_space_still_invalidates_older_entries() {
        let c = LocalLog::with_limits(Duration::from_secs(60), 100);
        let fetch = c.now();
        let tags: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        for t in &tags {
            c.invalidate([t]);
        }
        assert!(c.last_inv.len() <= 100, "the map is bounded");
        // Whichever tags were evicted, none may make the old fetch valid.
        for t in &tags {
            assert!(!c.valid(fetch, [t.as_str()]), "{t}");
        }
        assert!(
            c.valid(c.now(), strs(&tags)),
            "a fetch after all of them is fine"
        );
    }

    #[test]
    fn evictions_racing_with_reads_never_validate_an_older_fetch() {
        // A small map, so that every tag is evicted soon after it is
        // recorded, while readers check fetches that began just before each
        // recent invalidation: whether a reader finds the tag or the raised
        // floor, such a fetch must never be valid.
        const TAGS: usize = 100_000;
        let c = LocalLog::with_limits(Duration::from_secs(60), 32);
        let tags: Vec<String> = (0..TAGS).map(|i| format!("t{i}")).collect();
        let seqs: Vec<AtomicU64> = (0..TAGS).map(|_| AtomicU64::new(0)).collect();
        let recorded = AtomicU64::new(0);
        let stale = AtomicU64::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for (i, t) in tags.iter().enumerate() {
                    seqs[i].store(c.invalidate([t]), Ordering::Release);
                    recorded.store(i as u64 + 1, Ordering::Release);
                }
            });
            scope.spawn(|| {
                let mut k = 0u64;
                loop {
                    let n = recorded.load(Ordering::Acquire);
                    if n as usize == TAGS {
                        break;
                    }
                    k = k.wrapping_add(1);
                    let Some(i) = n.checked_sub(1 + k % 8) else {
                        continue;
                    };
                    let fetch = seqs[i as usize].load(Ordering::Acquire) - 1;
                    if c.valid(fetch, [tags[i as usize].as_str()]) {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        });
        assert_eq!(stale.load(Ordering::Relaxed), 0, "stale validations");
    }

    #[test]
    fn a_fenced_tag_is_invalid_until_lifted_and_fills_during_the_fence_stay_invalid() {
        let c = LocalLog::new(Duration::from_secs(60));
        let tags = vec!["t".to_string(), "u".to_string()];
        let before = c.now();
        c.fence(&tags[..1]);
        assert!(
            !c.valid(before, strs(&tags)),
            "an entry from before the write"
        );
        let during = c.now();
        assert!(
            !c.valid(during, strs(&tags)),
            "a fill that began during the write"
        );
        // Two writes on one tag: the first lift leaves the second's fence.
        c.fence(&tags[..1]);
        c.lift(&tags[..1], true);
        assert!(
            !c.valid(c.now(), strs(&tags)),
            "still fenced by the second write"
        );
        c.lift(&tags[..1], true);
        assert!(
            !c.valid(during, strs(&tags)),
            "began before the lift: stale"
        );
        assert!(
            c.valid(c.now(), strs(&tags)),
            "begins after the lift: fresh"
        );
        assert!(c.valid(before, strs(&tags[1..])), "other tags untouched");
    }

    #[test]
    fn a_refused_write_lifts_its_fence_without_invalidating() {
        let c = LocalLog::new(Duration::from_secs(60));
        let tags = vec!["t".to_string()];
        let before = c.now();
        c.fence(&tags);
        assert!(!c.valid(before, strs(&tags)));
        assert_eq!(c.lift(&tags, false), None);
        assert!(c.valid(before, strs(&tags)), "the app changed nothing");
    }

    #[test]
    fn an_expired_invalidation_counts_as_the_floor() {
        let c = LocalLog::with_limits(Duration::from_millis(20), 100);
        let t = "x".to_string();
        let fetch = c.now();
        c.invalidate([&t]);
        assert!(!c.valid(fetch, [t.as_str()]));
        std::thread::sleep(Duration::from_millis(30));
        // Only entries younger than `remember_for` exist by then, and this
        // fetch is not one of them; what matters is that the map forgets.
        assert!(c.valid(fetch, [t.as_str()]));
    }
}
