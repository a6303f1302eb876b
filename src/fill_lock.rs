//! Request coalescing: pingora's cache lock, with freshgate's word on what
//! waiters do when the fill they waited for was not stored.
//!
//! pingora-cache treats every custom "not stored" reason as final
//! (`LockStatus::GiveUp`): every waiter then goes to the app on its own,
//! uncached. That is right when the app said the answer may not be stored
//! (`private`, `no-store`, an error status): the next answer will say the
//! same. It is wrong when the fill was declined only for a moment — a write
//! in flight fences what it fetched, or Redis could not tell the clock —
//! because the next fill will be stored: under write churn behind a real
//! app, waiters became BYPASS requests in bursts. For those reasons the
//! waiters compete again (`TransientError`): one fetches, the rest wait for
//! it, for at most [`MAX_WAITS`] fills and `cache.lock_timeout` in all.

use pingora::cache::key::CacheKey;
use pingora::cache::lock::{CacheKeyLock, CacheLock, LockStatus, Locked, WritePermit};
use std::time::Duration;

use crate::storable::NotStored;

/// How many fills a waiter may wait for in turn (pingora's default: 2),
/// within `cache.lock_timeout` in all. A write in flight usually fences for
/// one trip to the app, so the third or fourth fill is stored; a write
/// whose answer never came fences for `writes.timeout`, and then a waiter
/// must not sit through fill after declined fill for seconds: past this
/// many it goes to the app alone (`Cache-Status: …; detail=lock-retries`).
pub const MAX_WAITS: usize = 4;

/// pingora's [`CacheLock`], with [`on_declined`] deciding what a declined
/// fill tells its waiters.
pub struct FillLock(CacheLock);

impl FillLock {
    /// A lock whose writer is presumed gone after `age_timeout`.
    pub fn new(age_timeout: Duration) -> FillLock {
        FillLock(CacheLock::new(age_timeout))
    }
}

impl CacheKeyLock for FillLock {
    fn lock(&self, key: &CacheKey, stale_writer: bool) -> Locked {
        self.0.lock(key, stale_writer)
    }

    fn release(&self, key: &CacheKey, permit: WritePermit, reason: LockStatus) {
        self.0.release(key, permit, reason)
    }

    fn custom_lock_status(&self, reason: &'static str) -> LockStatus {
        on_declined(reason)
    }
}

/// What the waiters of a fill declined for `reason` (the label of a
/// [`NotStored`], as pingora hands it back) do: compete again when the next
/// fill may be stored (a write fenced this one, the clock could not be
/// read), go to the app each when it will not (the answer said so).
pub fn on_declined(reason: &str) -> LockStatus {
    if NotStored::from_label(reason).is_some_and(NotStored::passes) {
        LockStatus::TransientError
    } else {
        LockStatus::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_compete_again_only_when_the_next_fill_may_be_stored() {
        assert_eq!(on_declined("write-in-progress"), LockStatus::TransientError);
        assert_eq!(on_declined("clock-unavailable"), LockStatus::TransientError);
        // (The labels pingora hands back, spelled out: a renamed label
        // must fail here, not quietly send every waiter to the app.)
        for final_word in NotStored::ALL.into_iter().filter(|r| !r.passes()) {
            let label = final_word.as_str();
            assert_eq!(on_declined(label), LockStatus::GiveUp, "{label}");
        }
        assert_eq!(on_declined("someone else's reason"), LockStatus::GiveUp);
    }
}
