//! The invalidation clock and, per tag, the clock value of its last
//! invalidation (`last_inv`), for the embedded store.
//!
//! The invariant (docs/architecture.md §2): an entry may be served only if
//! none of its tags was invalidated after its fetch began, i.e. iff
//! `last_inv[t] <= fetch_seq` for every tag `t` of the entry.
//!
//! `last_inv` must never forget a tag while an entry that carries it may still
//! be served. Two mechanisms make the map bounded without breaking that:
//! - a time bound: an entry lives at most `max_lifetime`, so a `last_inv`
//!   older than that (plus a margin for the fetch itself) can no longer matter;
//! - a size bound: when a tag is evicted for space, `floor` rises to its value,
//!   and a tag that is not in the map counts as invalidated at `floor`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Tags remembered at most (each costs ~100 bytes).
const MAX_TAGS: u64 = 2_000_000;
/// Added to `max_lifetime` for the time a fetch may take before it is stored.
pub const LIFETIME_MARGIN: Duration = Duration::from_secs(3600);

pub struct LocalClock {
    clock: AtomicU64,
    floor: Arc<AtomicU64>,
    last_inv: moka::sync::Cache<String, u64>,
}

impl LocalClock {
    pub fn new(max_lifetime: Duration) -> LocalClock {
        let floor = Arc::new(AtomicU64::new(0));
        let f = floor.clone();
        let last_inv = moka::sync::Cache::builder()
            .max_capacity(MAX_TAGS)
            .time_to_live(max_lifetime + LIFETIME_MARGIN)
            .eviction_listener(move |_k, v: u64, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    f.fetch_max(v, Ordering::AcqRel);
                }
            })
            .build();
        LocalClock {
            // Starts at 1 so that 0 can mean "no clock read" in entries.
            clock: AtomicU64::new(1),
            floor,
            last_inv,
        }
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
        for t in tags {
            self.last_inv
                .entry_by_ref(t)
                .and_upsert_with(|old| old.map_or(s, |e| (*e.value()).max(s)));
        }
        s
    }

    /// Whether an entry fetched at `fetch_seq` with `tags` may be served.
    pub fn valid(&self, fetch_seq: u64, tags: &[String]) -> bool {
        let floor = self.floor.load(Ordering::Acquire);
        tags.iter().all(|t| match self.last_inv.get(t) {
            Some(inv) => inv <= fetch_seq,
            None => floor <= fetch_seq,
        })
    }

    pub fn tags_remembered(&self) -> u64 {
        self.last_inv.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidated_after_fetch_began_is_invalid() {
        let c = LocalClock::new(Duration::from_secs(60));
        let tags = vec!["a".to_string(), "b".to_string()];
        let fetch = c.now();
        assert!(c.valid(fetch, &tags));
        c.invalidate([&"b".to_string()]);
        assert!(
            !c.valid(fetch, &tags),
            "b was invalidated after the fetch began"
        );
        let refetch = c.now();
        assert!(
            c.valid(refetch, &tags),
            "a fetch that began after it is fine"
        );
        assert!(
            c.valid(fetch, &["c".to_string()]),
            "other tags are untouched"
        );
    }

    #[test]
    fn racing_writes_never_move_last_inv_backwards() {
        let c = LocalClock::new(Duration::from_secs(60));
        let t = "x".to_string();
        let s1 = c.invalidate([&t]);
        let s2 = c.invalidate([&t]);
        assert!(s2 > s1);
        assert!(!c.valid(s2 - 1, std::slice::from_ref(&t)));
        assert!(c.valid(s2, std::slice::from_ref(&t)));
    }
}
