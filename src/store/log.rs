//! The invalidation log's contract: what decides whether an entry may be
//! served, and how a write reaches it (docs/architecture.md §2).
//!
//! Two logs keep it: [`LocalLog`] in one process, and the Redis tier
//! ([`RedisTier`]) for replicas that share a cache. [`Log`] is the one a
//! store was started with (`Store::new` picks it); the store asks the log
//! only through [`InvalidationLog`], so this file is the one place that
//! tells the two logs apart after that. (The shared *entry* tier is another matter: the store reads
//! and writes entries in Redis itself, over the link of the log's run.)
//!
//! Static dispatch (an enum, not `dyn`): `valid` runs on every hit, and a
//! boxed future per hit is an allocation the hit path does not need.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::clock::LocalLog;
use super::entry::{Entry, RulesFingerprint};
use super::redis::{Link, RedisTier};
use crate::invalidation;

/// What a fill learned from the invalidation log when its fetch began.
#[derive(Debug, Clone, Copy)]
pub struct FillStart {
    /// The clock: the entry is stale once any of its tags is invalidated
    /// later than this.
    pub seq: u64,
    /// The run of the log the clock belongs to (0 for a local log): the
    /// entry is stored only if the run is still the same when the fetch ends.
    pub epoch: u64,
    /// A write in flight fences one of the fill's tags: what it fetches may
    /// predate the write's commit, so it is not stored.
    pub fenced: bool,
    /// When, before the clock was read: a fill that takes longer than
    /// `clock::MAX_FILL` is not stored (see `FillInfo::began`).
    pub began: std::time::Instant,
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

/// A log that decides what may be served. Entries are checked against the
/// run of the log they were fetched in ([`InvalidationLog::Run`]); writes
/// go through it in two phases (fence, then invalidate and lift).
#[allow(async_fn_in_trait)] // statically dispatched in this crate only
pub trait InvalidationLog {
    /// One lookup's hold on the log: an entry is checked against the run
    /// it belongs to, through this very hold (a Redis run can be replaced
    /// by another while the lookup waits).
    type Run;

    /// The run in force, or `None` when the log cannot be read now.
    fn run(&self) -> Option<Self::Run>;

    /// Which run `run` is (0 for the local log, whose run never changes).
    fn epoch(run: &Self::Run) -> u64;

    /// Read the clock, and whether any of `tags` is fenced, before a fetch
    /// begins. `None` when the log cannot be read: nothing is stored then.
    async fn fill_start(&self, tags: &[String]) -> Option<FillStart>;

    /// Whether `entry`, of run `run`, may be served: none of its tags was
    /// invalidated after its fetch began, none is fenced, and it is above
    /// the floor. False also when the log cannot answer.
    async fn valid(&self, run: &Self::Run, entry: &Entry) -> bool;

    /// Phase 1 of write `id`: fence `tags`. False when the shared log
    /// could not record the fence (see `WriteFence::recorded`).
    async fn begin_write(&self, id: u64, tags: &BTreeSet<String>) -> bool;

    /// Phase 2: invalidate the write's tags and `extra` (unless
    /// `invalidate` is false), then lift its fence.
    async fn end_write(
        &self,
        id: u64,
        tags: &BTreeSet<String>,
        extra: BTreeSet<String>,
        invalidate: bool,
    ) -> Ended;

    /// [`begin_write`] of write `to`, then [`end_write`] of write `from`
    /// (invalidating), in one step where the log can take it. `None` where
    /// it cannot, or failed: nothing is then known to be recorded, and the
    /// caller takes the two steps (each is idempotent per write id; a
    /// one-step call that ran late, on a replaced connection, can only
    /// leave a fence without owner, which the sweep lifts).
    ///
    /// [`begin_write`]: InvalidationLog::begin_write
    /// [`end_write`]: InvalidationLog::end_write
    async fn hand_over(
        &self,
        _from: u64,
        _to: u64,
        _tags: &BTreeSet<String>,
        _extra: &BTreeSet<String>,
    ) -> Option<Ended> {
        None
    }

    /// Phase 2 with nothing left to wait on (process teardown): invalidate
    /// and lift as soon as the log allows.
    fn end_write_now(&self, id: u64, tags: &BTreeSet<String>);

    /// A write that was not forwarded after all: lift its fence and
    /// invalidate nothing.
    fn abandon_write(&self, id: u64, tags: &BTreeSet<String>);

    /// Invalidate `tags` now (a purge). False when it could not be recorded.
    async fn invalidate(&self, tags: &BTreeSet<String>) -> bool;

    /// The rules changed from `from` (0: none yet) to `to`.
    fn rules_changed(&self, from: RulesFingerprint, to: RulesFingerprint);

    /// Whether replicas with other rules may be running: a write must then
    /// invalidate everything.
    fn rules_mixed(&self) -> bool;

    /// Whether this replica holds fences or invalidations the log does not
    /// have yet (it must not be called ready meanwhile).
    fn owes(&self) -> bool;

    /// Whether the process is stopping: a write that cannot be recorded now
    /// is refused rather than left owed.
    fn stopping(&self) -> bool;

    /// False when the log cannot be used right now: requests pass through.
    fn usable(&self) -> bool;
}

impl InvalidationLog for LocalLog {
    type Run = ();

    fn run(&self) -> Option<()> {
        Some(())
    }

    fn epoch(_: &()) -> u64 {
        0
    }

    async fn fill_start(&self, tags: &[String]) -> Option<FillStart> {
        Some(FillStart {
            seq: self.now(),
            epoch: 0,
            fenced: self.fenced(tags.iter().map(String::as_str)),
            began: std::time::Instant::now(),
        })
    }

    async fn valid(&self, _: &(), entry: &Entry) -> bool {
        LocalLog::valid(self, entry.fetch_seq(), entry.tag_names())
    }

    async fn begin_write(&self, _id: u64, tags: &BTreeSet<String>) -> bool {
        self.fence(tags);
        true
    }

    async fn end_write(
        &self,
        _id: u64,
        tags: &BTreeSet<String>,
        extra: BTreeSet<String>,
        invalidate: bool,
    ) -> Ended {
        if invalidate {
            LocalLog::invalidate(self, extra.difference(tags));
        }
        self.lift(tags, invalidate);
        Ended::Recorded
    }

    fn end_write_now(&self, _id: u64, tags: &BTreeSet<String>) {
        self.lift(tags, true);
    }

    fn abandon_write(&self, _id: u64, tags: &BTreeSet<String>) {
        self.lift(tags, false);
    }

    async fn invalidate(&self, tags: &BTreeSet<String>) -> bool {
        LocalLog::invalidate(self, tags);
        true
    }

    /// Everything cached before a change is invalidated at once: writes in
    /// between were planned by other rules, and these may be the rules of
    /// an earlier time (a revert).
    fn rules_changed(&self, from: RulesFingerprint, to: RulesFingerprint) {
        if from != RulesFingerprint::default() && from != to {
            LocalLog::invalidate(self, [&invalidation::ALL_TAG.to_string()]);
        }
    }

    fn rules_mixed(&self) -> bool {
        false
    }

    fn owes(&self) -> bool {
        false
    }

    fn stopping(&self) -> bool {
        false
    }

    fn usable(&self) -> bool {
        true
    }
}

impl InvalidationLog for Arc<RedisTier> {
    type Run = Arc<Link>;

    fn run(&self) -> Option<Arc<Link>> {
        self.adopt_request_runtime();
        self.link()
    }

    fn epoch(link: &Arc<Link>) -> u64 {
        link.epoch
    }

    async fn fill_start(&self, tags: &[String]) -> Option<FillStart> {
        self.adopt_request_runtime();
        RedisTier::fill_start(self, tags).await
    }

    async fn valid(&self, link: &Arc<Link>, entry: &Entry) -> bool {
        RedisTier::valid(self, link, entry.fetch_seq(), &entry.tags())
            .await
            .unwrap_or(false)
    }

    async fn begin_write(&self, id: u64, tags: &BTreeSet<String>) -> bool {
        self.adopt_request_runtime();
        RedisTier::begin_write(self, id, tags).await
    }

    /// The fence in Redis knows its tags: only `extra` travels.
    async fn end_write(
        &self,
        id: u64,
        _tags: &BTreeSet<String>,
        extra: BTreeSet<String>,
        invalidate: bool,
    ) -> Ended {
        RedisTier::end_write(self, id, extra, invalidate).await
    }

    async fn hand_over(
        &self,
        from: u64,
        to: u64,
        tags: &BTreeSet<String>,
        extra: &BTreeSet<String>,
    ) -> Option<Ended> {
        self.adopt_request_runtime();
        RedisTier::hand_over(self, from, to, tags, extra).await
    }

    fn end_write_now(&self, id: u64, _tags: &BTreeSet<String>) {
        self.mark_ended(id);
    }

    fn abandon_write(&self, id: u64, _tags: &BTreeSet<String>) {
        self.forget(id);
    }

    async fn invalidate(&self, tags: &BTreeSet<String>) -> bool {
        RedisTier::invalidate(self, tags).await
    }

    /// The tier settles a change fleet-wide once every replica runs the
    /// new rules, and serves nothing until then.
    fn rules_changed(&self, _from: RulesFingerprint, to: RulesFingerprint) {
        self.set_rules(to);
    }

    fn rules_mixed(&self) -> bool {
        RedisTier::rules_mixed(self)
    }

    fn owes(&self) -> bool {
        RedisTier::owes(self)
    }

    fn stopping(&self) -> bool {
        RedisTier::stopping(self)
    }

    fn usable(&self) -> bool {
        self.available()
    }
}

/// The log a store was started with.
pub enum Log {
    Local(LocalLog),
    Shared(Arc<RedisTier>),
}

/// A lookup's hold on [`Log`]'s run.
pub enum Run {
    Local,
    Shared(Arc<Link>),
}

impl Run {
    /// The Redis link of a shared run: entries are read over it, so an
    /// entry and the log that checks it come from the same Redis.
    pub fn link(&self) -> Option<&Arc<Link>> {
        match self {
            Run::Local => None,
            Run::Shared(link) => Some(link),
        }
    }
}

/// `$call` on whichever log `$log` is, bound as `$l` (the two arms are the
/// same text over two types).
macro_rules! on_either {
    ($log:expr, $l:ident => $call:expr) => {
        match $log {
            Log::Local($l) => $call,
            Log::Shared($l) => $call,
        }
    };
}

impl InvalidationLog for Log {
    type Run = Run;

    fn run(&self) -> Option<Run> {
        match self {
            Log::Local(l) => l.run().map(|()| Run::Local),
            Log::Shared(r) => r.run().map(Run::Shared),
        }
    }

    fn epoch(run: &Run) -> u64 {
        match run {
            Run::Local => LocalLog::epoch(&()),
            Run::Shared(link) => <Arc<RedisTier>>::epoch(link),
        }
    }

    async fn fill_start(&self, tags: &[String]) -> Option<FillStart> {
        on_either!(self, log => InvalidationLog::fill_start(log, tags).await)
    }

    async fn valid(&self, run: &Run, entry: &Entry) -> bool {
        match (self, run) {
            (Log::Local(l), Run::Local) => InvalidationLog::valid(l, &(), entry).await,
            (Log::Shared(r), Run::Shared(link)) => InvalidationLog::valid(r, link, entry).await,
            // A hold on another log than this one: not ours to vouch for.
            _ => false,
        }
    }

    async fn begin_write(&self, id: u64, tags: &BTreeSet<String>) -> bool {
        on_either!(self, log => InvalidationLog::begin_write(log, id, tags).await)
    }

    async fn end_write(
        &self,
        id: u64,
        tags: &BTreeSet<String>,
        extra: BTreeSet<String>,
        invalidate: bool,
    ) -> Ended {
        on_either!(self, log => InvalidationLog::end_write(log, id, tags, extra, invalidate).await)
    }

    async fn hand_over(
        &self,
        from: u64,
        to: u64,
        tags: &BTreeSet<String>,
        extra: &BTreeSet<String>,
    ) -> Option<Ended> {
        on_either!(self, log => InvalidationLog::hand_over(log, from, to, tags, extra).await)
    }

    fn end_write_now(&self, id: u64, tags: &BTreeSet<String>) {
        on_either!(self, log => log.end_write_now(id, tags))
    }

    fn abandon_write(&self, id: u64, tags: &BTreeSet<String>) {
        on_either!(self, log => log.abandon_write(id, tags))
    }

    async fn invalidate(&self, tags: &BTreeSet<String>) -> bool {
        on_either!(self, log => InvalidationLog::invalidate(log, tags).await)
    }

    fn rules_changed(&self, from: RulesFingerprint, to: RulesFingerprint) {
        on_either!(self, log => log.rules_changed(from, to))
    }

    fn rules_mixed(&self) -> bool {
        on_either!(self, log => InvalidationLog::rules_mixed(log))
    }

    fn owes(&self) -> bool {
        on_either!(self, log => InvalidationLog::owes(log))
    }

    fn stopping(&self) -> bool {
        on_either!(self, log => InvalidationLog::stopping(log))
    }

    fn usable(&self) -> bool {
        on_either!(self, log => log.usable())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Tags;
    use super::*;
    use std::time::Duration;

    /// The futures of a local log never wait: poll them once.
    fn now<F: std::future::Future>(f: F) -> F::Output {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(f).poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("a local log's call waited"),
        }
    }

    fn entry(fetch_seq: u64, tags: &[&str]) -> Entry {
        Entry::new(
            fetch_seq,
            RulesFingerprint(1),
            &Tags::new(tags).unwrap(),
            b"",
            b"",
            b"body",
        )
        .unwrap()
    }

    fn set(tags: &[&str]) -> BTreeSet<String> {
        tags.iter().map(|t| t.to_string()).collect()
    }

    /// The contract, through `Log` as the store holds it: a write fences its
    /// tags until it ends, then what was fetched before is invalid and what
    /// is fetched after is valid; an abandoned write invalidates nothing.
    #[test]
    fn a_write_fences_then_invalidates_and_an_abandoned_one_does_not() {
        let log = Log::Local(LocalLog::new(Duration::from_secs(60)));
        let run = log.run().unwrap();
        let before = now(log.fill_start(&["u:/a".into()])).unwrap();
        let old = entry(before.seq, &["u:/a", "a:all"]);
        assert!(now(log.valid(&run, &old)));

        let tags = set(&["u:/a"]);
        assert!(now(log.begin_write(7, &tags)));
        assert!(!now(log.valid(&run, &old)), "fenced while in flight");
        assert!(now(log.fill_start(&["u:/a".into()])).unwrap().fenced);
        assert_eq!(
            now(log.end_write(7, &tags, set(&["u:/b"]), true)),
            Ended::Recorded
        );
        assert!(!now(log.valid(&run, &old)), "invalidated by the write");
        assert!(!now(log.valid(&run, &entry(before.seq, &["u:/b"]))));
        let after = now(log.fill_start(&["u:/a".into()])).unwrap();
        assert!(!after.fenced);
        assert!(now(log.valid(&run, &entry(after.seq, &["u:/a"]))));

        let kept = entry(after.seq, &["u:/c"]);
        let tags = set(&["u:/c"]);
        assert!(now(log.begin_write(9, &tags)));
        log.abandon_write(9, &tags);
        assert!(
            now(log.valid(&run, &kept)),
            "an abandoned write invalidates nothing"
        );
    }

    #[test]
    fn a_rules_change_invalidates_everything_but_the_first_rules_do_not() {
        let log = Log::Local(LocalLog::new(Duration::from_secs(60)));
        let run = log.run().unwrap();
        let seq = now(log.fill_start(&[])).unwrap().seq;
        let e = entry(seq, &[invalidation::ALL_TAG, "u:/a"]);
        log.rules_changed(RulesFingerprint(0), RulesFingerprint(5));
        log.rules_changed(RulesFingerprint(5), RulesFingerprint(5));
        assert!(now(log.valid(&run, &e)));
        log.rules_changed(RulesFingerprint(5), RulesFingerprint(6));
        assert!(!now(log.valid(&run, &e)));
    }

    #[test]
    fn a_local_log_is_always_usable_and_owes_nothing() {
        let log = Log::Local(LocalLog::new(Duration::from_secs(60)));
        assert!(log.usable() && !log.owes() && !log.stopping() && !log.rules_mixed());
        assert_eq!(Log::epoch(&log.run().unwrap()), 0);
    }
}
