//! The connection to Redis: a [`Link`]'s connection to the log is bound to
//! the run of Redis it reached and never reconnects by itself
//! (see the module above for why; on a cluster, its second connection, for
//! entries only, does); calls over it; the circuit breaker that stops
//! calling a failing Redis; whether the tier is usable now.

use super::*;

/// How long replicas may be heard running other rules before the
/// `rules_mixed` alert: a replica that reloads alone hears its old rules for
/// `RULES_ALIVE` and a check. Most rollouts end within it too.
pub const RULES_MIXED_ALERT_AFTER: Duration = Duration::from_secs(10);
const _: () = assert!(
    RULES_MIXED_ALERT_AFTER.as_millis() > RULES_ALIVE.as_millis() + 2 * PING_EVERY.as_millis()
);

/// A monotonic millisecond clock for this process.
pub(super) fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl RedisTier {
    /// One command of the log on `link` with the request-path timeout,
    /// unless the breaker is open.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        link: &Arc<Link>,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Option<T> {
        self.call(link, op, cmd, false).await
    }

    /// One command on an entry (or the flags): to its own master on a Redis
    /// Cluster, else like [`Self::run`].
    pub(super) async fn run_data<T: redis::FromRedisValue>(
        &self,
        link: &Arc<Link>,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Option<T> {
        self.call(link, op, cmd, true).await
    }

    pub(super) async fn call<T: redis::FromRedisValue>(
        &self,
        link: &Arc<Link>,
        op: &'static str,
        cmd: redis::Cmd,
        data: bool,
    ) -> Option<T> {
        if self.breaker_open() {
            return None;
        }
        let started = std::time::Instant::now();
        let cluster = link.cluster.as_ref().filter(|_| data);
        let res = match cluster {
            Some(c) => {
                let mut c = c.clone();
                tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut c)).await
            }
            None => {
                let mut conn = link.conn.clone();
                tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await
            }
        };
        METRICS
            .store_op_seconds
            .with_label_values(&["redis", op])
            .observe(started.elapsed().as_secs_f64());
        if cluster.is_some() {
            // An entry is checked against the log before it is served, so
            // its master failing hides no invalidation: a miss, counted,
            // that neither opens nor closes the breaker (which watches the
            // log's master) and leaves the link alone (the cluster
            // connection reconnects by itself).
            return match res {
                Ok(Ok(v)) => Some(v),
                _ => {
                    METRICS.store_errors.with_label_values(&["redis", op]).inc();
                    None
                }
            };
        }
        match res {
            Ok(Ok(v)) => {
                self.count_success();
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
    pub(super) async fn record<T: redis::FromRedisValue>(
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
                    self.count_success();
                    return Some(v);
                }
                Ok(Err(e)) => {
                    // Or the log's slot moved (a cluster's failover, a
                    // reshard): this link will not record it again.
                    let gone =
                        e.is_connection_dropped() || e.is_io_error() || e.redirect_node().is_some();
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

    /// For calls off the request path (identity, the holder script, the
    /// maintainer's reads): the request-path timeout, but at least 250 ms.
    pub(super) fn check_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_millis(250))
    }

    /// For opening a connection: the request-path timeout, but at least
    /// 200 ms.
    pub(super) fn connect_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_millis(200))
    }

    /// True when connected, the breaker is closed, no outage is being
    /// cleared, this replica owes the current run nothing, its rules are
    /// settled fleet-wide, and the rules heartbeat is recent.
    pub fn available(&self) -> bool {
        self.rules_ok.load(Ordering::Acquire) && self.usable_but_for_rules()
    }

    /// Everything `available` asks but settled rules: what Redis and this
    /// replica's link to it decide (unanswered calls leave the link gone,
    /// the breaker open, an outage uncleared, invalidations owed or the
    /// heartbeat old), not what the other replicas run.
    fn usable_but_for_rules(&self) -> bool {
        self.link.load().is_some()
            && !self.breaker_open()
            && !self.in_outage()
            && !self.owing.load(Ordering::Acquire)
            && self.heard_lately()
    }

    /// Unusable only because the last heartbeat heard other replicas run
    /// other rules: a rollout, which Redis has no part in (`/readyz`'s
    /// `rulesMixed`; not while Redis is unreachable, when nothing is heard).
    pub fn only_heard_mixed(&self) -> bool {
        self.usable_but_for_rules() && self.heard_mixed.load(Ordering::Acquire)
    }

    /// How long the tier has been unusable for any reason but a rollout
    /// heard (`only_heard_mixed`): zero while usable, else the time since
    /// the maintainer (every `PING_EVERY`) or a call of this last saw it so
    /// — its creation at first, so the moments before the first connection
    /// are not an outage. Rules that stay unsettled while the fleet agrees
    /// (an activation Redis keeps refusing) count here, not as a rollout.
    pub fn unusable_for(&self) -> Duration {
        since_last(
            &self.last_usable_ms,
            self.available() || self.only_heard_mixed(),
        )
    }

    /// How long the heartbeat has heard other replicas run other rules (a
    /// rollout, or one left behind on old rules) while Redis was otherwise
    /// usable: every replica bypasses the cache meanwhile, though Redis is
    /// fine. A replica's own old rules are heard for `RULES_ALIVE` after it
    /// reloads (see `RULES_MIXED_ALERT_AFTER`).
    pub fn rules_mixed_for(&self) -> Duration {
        since_last(&self.last_agreed_ms, !self.only_heard_mixed())
    }

    /// Whether this replica said which rules it runs, and heard the fleet's,
    /// within half the time after which the others stop counting it: past
    /// that they may act as if it were gone (a replica shutting down, or one
    /// whose checks stall), so it must stop serving and planning by rules.
    pub(super) fn heard_lately(&self) -> bool {
        mono_ms().saturating_sub(self.last_heartbeat_ms.load(Ordering::Acquire))
            <= RULES_ALIVE.as_millis() as u64 / 2
    }

    pub(super) fn in_outage(&self) -> bool {
        self.outage_cleared.load(Ordering::Acquire) < self.outage_began.load(Ordering::Acquire)
    }

    pub(super) fn breaker_open(&self) -> bool {
        mono_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    pub(super) fn count_failure(&self, op: &'static str, err: &dyn std::fmt::Display) {
        METRICS.store_errors.with_label_values(&["redis", op]).inc();
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= TRIP_AFTER {
            let was_closed = !self.breaker_open();
            self.open_until_ms
                .store(mono_ms() + OPEN_FOR.as_millis() as u64, Ordering::Relaxed);
            if was_closed {
                warn!(error = %err, "redis unavailable: circuit open, passing requests through");
            }
            self.outage_began.fetch_add(1, Ordering::AcqRel);
            METRICS.redis_up.set(0);
        }
    }

    pub(super) fn count_success(&self) {
        if self.failures.swap(0, Ordering::Relaxed) >= TRIP_AFTER {
            info!("redis reachable again: circuit closed");
        }
        self.open_until_ms.store(0, Ordering::Relaxed);
        METRICS.redis_up.set(1);
    }

    /// A call on `link` failed: count it, and forget the link if its
    /// connection is gone (it never comes back by itself).
    pub(super) fn failed(
        &self,
        link: &Arc<Link>,
        op: &'static str,
        err: Option<&redis::RedisError>,
    ) {
        match err {
            Some(e) => {
                self.count_failure(op, e);
                // A redirect: the cluster moved the log's slot to another
                // master (a failover, a reshard), whose log is another one.
                if e.is_connection_dropped()
                    || e.is_io_error()
                    || e.is_unrecoverable_error()
                    || e.redirect_node().is_some()
                {
                    self.drop_link(link);
                }
            }
            None => self.count_failure(op, &"timed out"),
        }
    }

    pub(super) fn drop_link(&self, link: &Arc<Link>) {
        if self.is_current(link) {
            self.link.store(None);
            METRICS.redis_up.set(0);
            self.owed(|_| ());
        }
    }

    pub(super) fn is_current(&self, link: &Arc<Link>) -> bool {
        self.link
            .load()
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, link))
    }

    /// Which Redis process `conn` reaches (`run_id`, `INFO server`), and
    /// whether it is a primary and has replicas (`INFO replication`).
    pub(super) async fn identity(
        &self,
        conn: &MultiplexedConnection,
    ) -> Result<Identity, Option<redis::RedisError>> {
        let mut conn = conn.clone();
        let (server, replication): (String, String) = tokio::time::timeout(
            self.check_timeout(),
            redis::pipe()
                .cmd("INFO")
                .arg("server")
                .cmd("INFO")
                .arg("replication")
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| None)?
        .map_err(Some)?;
        let field = |info: &str, name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .map(str::to_string)
        };
        let run = field(&server, "run_id").ok_or_else(|| {
            Some(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "INFO has no run_id",
            )))
        })?;
        Ok(Identity {
            run: Arc::from(run),
            // A missing role (a proxy in between that hides it) counts as
            // not a primary: nothing is trusted that cannot be checked.
            primary: field(&replication, "role").as_deref() == Some("master"),
            // A replica reconnecting right now counts as none, so also a
            // replication stream that ever started (its offset moved).
            replicated: field(&replication, "connected_slaves").is_none_or(|n| n != "0")
                || field(&replication, "master_repl_offset").is_some_and(|n| n != "0"),
        })
    }

    /// Open a link: reach the node that holds the log, learn its run, note
    /// a restart. Returns the current link if another task opened one
    /// meanwhile.
    pub(super) async fn connect(&self, throttle: bool) -> Option<Arc<Link>> {
        let one_at_a_time = self.connecting.lock().await;
        if let Some(link) = self.link.load_full() {
            return Some(link);
        }
        // Writes that queued behind a failed attempt do not each make
        // another one. Only a failed one: a link cut just after it opened
        // must not keep the next write from opening another. On the
        // monotonic clock: a wall clock stepped back (an NTP step, a VM's
        // resume) kept every later write from connecting (session 23's
        // attack).
        let failed = self.last_failed_connect_ms.load(Ordering::Relaxed);
        if throttle && failed != 0 && mono_ms().saturating_sub(failed) < CONNECT_AT_MOST_EVERY_MS {
            return None;
        }
        let (reached, hold_floor) = match self.reach_log().await {
            Ok(r) => r,
            Err(e) => {
                self.last_failed_connect_ms
                    .store(mono_ms(), Ordering::Relaxed);
                match e {
                    Some(e) => self.count_failure("connect", &e),
                    None => self.count_failure("connect", &"timed out"),
                }
                return None;
            }
        };
        let run = reached.run.clone();
        let epoch = {
            let mut known = self.run.lock();
            if known.as_deref() != Some(&*run) {
                if known.is_some() {
                    warn!(%run, "redis restarted: treating everything cached before as invalid");
                }
                *known = Some(run.clone());
                // The new run's clock starts again (at its hold's floor),
                // and what bounded mode heard belongs to the old one.
                self.floor.store(hold_floor, Ordering::Release);
                self.followed.subscribed.store(false, Ordering::Release);
                self.followed.clear();
                self.rules_ok.store(false, Ordering::Release);
                self.evicted.store(u64::MAX, Ordering::Release);
                self.epoch.fetch_add(1, Ordering::AcqRel) + 1
            } else {
                self.epoch.load(Ordering::Acquire)
            }
        };
        // Before the link is used: entries fetched before this run's hold
        // on the log began are not served.
        self.floor.fetch_max(hold_floor, Ordering::AcqRel);
        reached
            .witness
            .clock
            .fetch_max(hold_floor, Ordering::AcqRel);
        *self.witness.lock() = Some((run.clone(), reached.witness.clone()));
        // Bounded mode hears nothing until it subscribes on this link.
        self.followed.subscribed.store(false, Ordering::Release);
        let generation = self.generations.fetch_add(1, Ordering::AcqRel) + 1;
        let link = Arc::new(Link {
            epoch,
            generation,
            ..reached
        });
        self.silent_checks.store(0, Ordering::Release);
        self.link.store(Some(link.clone()));
        self.owed(|_| ());
        // Writes may be waiting to connect: they have their link now.
        drop(one_at_a_time);
        self.check_eviction_policy(&link).await;
        Some(link)
    }

    /// Remember the runtime requests run on (call from the request path).
    /// Links opened from then on have their connection driven there, so a
    /// hit's call to Redis does not hop to another thread and back (on one
    /// core, a context switch each way: 14 % of the CPU of a strict hit).
    pub fn adopt_request_runtime(&self) {
        if self.request_runtime.get().is_none() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let _ = self.request_runtime.set(rt);
            }
        }
    }

    /// A connection to `node`, driven on the request runtime when one is
    /// known (the bool says so).
    pub(super) async fn open_connection(
        &self,
        node: redis::ConnectionInfo,
    ) -> redis::RedisResult<(MultiplexedConnection, bool)> {
        let client = redis::Client::open(node)?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout()))
            .set_response_timeout(Some(self.connect_timeout() * 8));
        let Some(rt) = self.request_runtime.get() else {
            let conn = client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?;
            return Ok((conn, false));
        };
        // The client spawns the connection's driver on the runtime it is
        // called from.
        let opened = rt
            .spawn(async move {
                client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await
            })
            .await
            .map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "connecting task failed",
                    e.to_string(),
                ))
            })?;
        Ok((opened?, true))
    }

    /// Replace `link` by one to the same run whose connection is driven on
    /// the request runtime, once that is known. Nothing else changes: same
    /// Redis process, same epoch; calls under way finish on the old one.
    pub(super) async fn rehome(&self, link: &Arc<Link>) {
        if link.on_request_runtime || self.request_runtime.get().is_none() {
            return;
        }
        let _one_at_a_time = self.connecting.lock().await;
        let Ok((conn, true)) = self.open_connection(link.node.clone()).await else {
            return;
        };
        let moved = Link {
            conn,
            node: link.node.clone(),
            cluster: link.cluster.clone(),
            run: link.run.clone(),
            generation: link.generation,
            witness: link.witness.clone(),
            log: link.log.clone(),
            epoch: link.epoch,
            checks: Default::default(),
            on_request_runtime: true,
        };
        // Only to the same process (a proxy in between may now reach
        // another): the maintainer's next check handles that case.
        let same = self
            .identity(&moved.conn)
            .await
            .is_ok_and(|id| id.run == link.run && id.primary);
        if !same {
            return;
        }
        self.link.compare_and_swap(link, Some(Arc::new(moved)));
    }
}

/// Zero while `holds` (and `last_ms` moves to now), else the time since
/// `last_ms` (`mono_ms`) last saw it hold. The clock is read first and only
/// ever moves forward: the maintainer and an admin call may race here.
fn since_last(last_ms: &AtomicU64, holds: bool) -> Duration {
    let now = mono_ms();
    if holds {
        last_ms.fetch_max(now, Ordering::AcqRel);
        return Duration::ZERO;
    }
    Duration::from_millis(now.saturating_sub(last_ms.load(Ordering::Acquire)))
}
