//! The memory tier: entries in a quick_cache map keyed by the 128-bit
//! cache-key hash, bounded by *bytes* (a weigher, S3-FIFO eviction), and
//! beside them the decoded headers of the entries hit lately (`hit.rs`).
//!
//! It only keeps: whether an entry may be served is the store's question
//! (its run, its rules, its keeping time, then the invalidation log).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pingora::cache::key::HashBinary;
use quick_cache::Weighter;

use super::entry::Entry;
use crate::hit::Prepared;

/// A guess at the mean entry size, only to presize the tables.
const TYPICAL_ENTRY_BYTES: u64 = 4096;

/// What keeping an entry costs besides its encoding, so that the byte bound
/// bounds memory and not only payload: the `Cached` in its `Arc` (two
/// counts), the map's slot (key, pointer, its own word of bookkeeping), and
/// glibc's header on each of the two allocations (encoding, `Arc`). About
/// 170 B on 64-bit; `scripts/bench-memory` measures the real figure
/// (docs/benchmarks.md, run 8: RSS 1,515 B per 1 KiB entry).
const PER_ENTRY: u64 = (std::mem::size_of::<Cached>()
    + 2 * std::mem::size_of::<usize>()
    + std::mem::size_of::<HashBinary>()
    + std::mem::size_of::<Arc<Cached>>()
    + std::mem::size_of::<usize>()
    + 2 * 16) as u64;

/// An entry as the memory tier keeps it.
pub(super) struct Cached {
    /// Which entry this is, of all ever stored here: a prepared header
    /// belongs to one entry, not to its key.
    id: u64,
    pub entry: Entry,
    /// The run of the log the entry was read or written under (0 for the
    /// local log).
    pub epoch: u64,
    pub keep_until: Instant,
}

impl Cached {
    pub fn new(entry: Entry, epoch: u64, keep_until: Instant) -> Arc<Cached> {
        static IDS: AtomicU64 = AtomicU64::new(1);
        Arc::new(Cached {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            entry,
            epoch,
            keep_until,
        })
    }
}

/// A prepared header and the entry it is of.
#[derive(Clone)]
struct ForEntry {
    entry: u64,
    prepared: Arc<Prepared>,
}

#[derive(Clone)]
struct PreparedWeight;

impl Weighter<HashBinary, ForEntry> for PreparedWeight {
    fn weight(&self, _: &HashBinary, p: &ForEntry) -> u64 {
        p.prepared.weight()
    }
}

#[derive(Clone)]
struct ByWeight;

impl Weighter<HashBinary, Arc<Cached>> for ByWeight {
    fn weight(&self, _: &HashBinary, c: &Arc<Cached>) -> u64 {
        c.entry.encoded().len() as u64 + PER_ENTRY
    }
}

pub(super) struct MemoryTier {
    /// Keyed by pingora's 128-bit key hash (`CacheKey::combined_bin`): a
    /// fixed-size key stored inline, no string to allocate or chase.
    entries: quick_cache::sync::Cache<HashBinary, Arc<Cached>, ByWeight>,
    /// Response headers of entries hit lately, decoded and prepared for
    /// the answer, in a share of the budget of their own: only entries
    /// that are hit pay for one, and a hot set's stay.
    prepared: quick_cache::sync::Cache<HashBinary, ForEntry, PreparedWeight>,
}

impl MemoryTier {
    pub fn new(max_bytes: u64) -> MemoryTier {
        // Prepared headers (about 1 KiB each) get an eighth of the budget.
        let for_prepared = max_bytes / 8;
        let for_entries = max_bytes - for_prepared;
        let estimated_entries = (for_entries / TYPICAL_ENTRY_BYTES).max(1024) as usize;
        MemoryTier {
            entries: quick_cache::sync::Cache::with_weighter(
                estimated_entries,
                for_entries,
                ByWeight,
            ),
            prepared: quick_cache::sync::Cache::with_weighter(
                (for_prepared / 1024).max(1024) as usize,
                for_prepared,
                PreparedWeight,
            ),
        }
    }

    pub fn get(&self, key: &HashBinary) -> Option<Arc<Cached>> {
        self.entries.get(key)
    }

    pub fn insert(&self, key: HashBinary, c: Arc<Cached>) {
        self.entries.insert(key, c);
    }

    pub fn remove(&self, key: &HashBinary) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Remove `c` only if it is still the entry under `key`: a fill may
    /// have replaced it meanwhile.
    pub fn remove_copy(&self, key: &HashBinary, c: &Arc<Cached>) {
        self.entries.remove_if(key, |v| Arc::ptr_eq(v, c));
    }

    /// `c`'s prepared header: the one kept, or `prepare(c)` kept from now.
    pub fn prepared(
        &self,
        key: &HashBinary,
        c: &Cached,
        prepare: impl FnOnce(&Entry) -> Option<Prepared>,
    ) -> Option<Arc<Prepared>> {
        match self.prepared.get(key) {
            Some(p) if p.entry == c.id => Some(p.prepared),
            _ => {
                let prepared = Arc::new(prepare(&c.entry)?);
                let for_entry = ForEntry {
                    entry: c.id,
                    prepared: prepared.clone(),
                };
                self.prepared.insert(*key, for_entry);
                Some(prepared)
            }
        }
    }

    /// Entries and bytes, prepared headers included (expired entries count
    /// until a lookup or eviction removes them).
    pub fn usage(&self) -> (u64, u64) {
        let bytes = self.entries.weight() + self.prepared.weight();
        (self.entries.len() as u64, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_weighs_its_encoding_and_what_keeping_it_costs() {
        let tags = super::super::Tags::new(&["u:/a"]).unwrap();
        let e = Entry::new(1, Default::default(), &tags, b"i", b"h", &[7; 1024]).unwrap();
        let len = e.encoded().len() as u64;
        let c = Cached::new(e, 0, Instant::now());
        let w = ByWeight.weight(&[0; 16], &c);
        assert_eq!(w, len + PER_ENTRY);
        // The bookkeeping is real: well over the old flat 64 bytes.
        assert!((120..400).contains(&PER_ENTRY), "{PER_ENTRY}");
    }
}
