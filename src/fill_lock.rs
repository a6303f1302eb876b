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
//! it, within `cache.lock_timeout` in all.

use pingora::cache::key::CacheKey;
use pingora::cache::lock::{CacheKeyLock, CacheLock, LockStatus, Locked, WritePermit};
use std::time::Duration;

/// How many fills a waiter may wait for in turn (pingora's default: 2).
/// Its total wait is bounded by `cache.lock_timeout` whatever this is, so
/// this only keeps a waiter from bypassing while fills are being declined
/// or invalidated one after another.
pub const MAX_WAITS: usize = 16;

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

/// What the waiters of a fill declined for `reason` (freshgate's own
/// "not stored" reasons, see `storable` and the proxy) do: compete again
/// when the next fill may be stored, go to the app each when it will not.
pub fn on_declined(reason: &str) -> LockStatus {
    match reason {
        // A write fenced the fill's tags, or the invalidation clock could
        // not be read: a moment later the same answer is stored.
        "write-in-progress" | "clock-unavailable" => LockStatus::TransientError,
        _ => LockStatus::GiveUp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_compete_again_only_when_the_next_fill_may_be_stored() {
        assert_eq!(on_declined("write-in-progress"), LockStatus::TransientError);
        assert_eq!(on_declined("clock-unavailable"), LockStatus::TransientError);
        for final_word in [
            "private",
            "no-store",
            "status",
            "set-cookie",
            "too-many-tags",
        ] {
            assert_eq!(on_declined(final_word), LockStatus::GiveUp, "{final_word}");
        }
    }
}
