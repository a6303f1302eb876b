//! The background maintainer: connects, pings, records what this replica
//! owes the log, checks the fleet's rules and Redis's memory and eviction
//! policy, and sweeps fences whose writer vanished.

use super::*;

/// What `INFO` says of Redis's memory.
pub(super) struct MemoryStats {
    used: u64,
    /// 0: no limit.
    max: u64,
    evicted_keys: u64,
}

impl MemoryStats {
    /// Past 80 % of `maxmemory`, entries (large) stop going to Redis so that
    /// the log (small, but refused with the rest once Redis is full under
    /// `noeviction`) keeps room.
    pub(super) fn nearly_full(&self) -> bool {
        self.max > 0 && self.used > self.max / 5 * 4
    }
}

impl RedisTier {
    /// Keep a link, record what is owed, lift abandoned fences, and close
    /// the breaker when Redis answers. Once `shutdown` turns true it goes
    /// on until the runtime is torn down: an owed record is held nowhere
    /// else, and while it is missing other replicas may serve what its write
    /// changed; and requests still in flight are served from the cache.
    pub async fn maintain(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        // Told at once, not after a check under way (seconds, when Redis
        // does not answer): from then on a write it cannot record is
        // refused rather than acknowledged.
        let tier = self.clone();
        let mut told = shutdown;
        tokio::spawn(async move {
            while !*told.borrow() {
                if told.changed().await.is_err() {
                    break;
                }
            }
            tier.stopping.store(true, Ordering::Release);
        });
        let mut waiting = false;
        loop {
            self.check_once().await;
            // Moves the clocks `redis_down` and `rules_mixed` are timed by.
            self.unusable_for();
            self.rules_mixed_for();
            if self.stopping() && self.owes() != waiting {
                waiting = !waiting;
                if waiting {
                    warn!("stopping with invalidations not recorded in redis yet: still trying until the shutdown timeout ends (other replicas may serve what those writes changed until then)");
                } else {
                    info!("stopping: every owed invalidation is recorded");
                }
            }
            tokio::time::sleep(PING_EVERY).await;
        }
    }

    pub(super) async fn check_once(&self) {
        let link = match self.link.load_full() {
            Some(l) => l,
            None => match self.connect(false).await {
                Some(l) => l,
                None => return,
            },
        };
        let identity = match self.identity(&link.conn).await {
            Ok(id) => id,
            Err(e) => {
                // A node that died without closing its connections (a host
                // lost, a partition) answers nothing and never breaks the
                // link: give it up after a few silent checks, so that the
                // next link can find the log where it is now.
                if e.is_none()
                    && self.silent_checks.fetch_add(1, Ordering::AcqRel) + 1 >= SILENT_CHECKS
                {
                    warn!("redis has not answered for several checks: reconnecting");
                    self.drop_link(&link);
                }
                return self.failed(&link, "ping", e.as_ref());
            }
        };
        self.silent_checks.store(0, Ordering::Release);
        link.witness.replicated.fetch_or(
            identity.replicated || link.cluster.is_some(),
            Ordering::AcqRel,
        );
        if !identity.primary {
            // A demoted primary still answers reads, from a log no replica
            // writes to any more: find the log where it is now.
            warn!("redis is no longer a primary: reconnecting");
            self.drop_link(&link);
            return;
        }
        if identity.run != link.run {
            // Something between us and Redis (a proxy) now reaches another
            // process: this link's checks would be answered by the wrong log.
            warn!(run = %identity.run, "redis behind the connection changed: reconnecting");
            self.drop_link(&link);
            return;
        }
        // Every check, not only when connecting: another replica may have
        // found this run's log untrustworthy (or this one may now), and
        // moved its floor.
        match self.hold_floor(&link).await {
            Ok(floor) => {
                link.witness.clock.fetch_max(floor, Ordering::AcqRel);
                // Only for the run this replica uses now (a connect may
                // have moved it to another meanwhile).
                if link.epoch == self.epoch.load(Ordering::Acquire)
                    && self.is_current(&link)
                    && self.floor.fetch_max(floor, Ordering::AcqRel) < floor
                {
                    warn!(floor, "redis's log was held by another run, lost records or its clock jumped: entries fetched before now will not be served");
                }
            }
            Err(e) => return self.failed(&link, "holder", e.as_ref()),
        }
        self.rehome(&link).await;
        self.sweep(&link).await;
        if !self.reconcile(&link).await {
            return;
        }
        if !self.check_rules(&link).await {
            return;
        }
        if let Some(memory) = self.memory_stats(&link).await {
            // A failed read keeps the last count, so no eviction between two
            // good reads goes unseen. The first count is compared with 0: a
            // replica that starts after an eviction distrusts what it took.
            let before = self.evicted.swap(memory.evicted_keys, Ordering::AcqRel);
            let before = if before == u64::MAX { 0 } else { before };
            if memory.evicted_keys > before {
                // Redis evicted keys to make room (maxmemory with an
                // eviction policy): a `last_inv` may have gone with them. As
                // after an outage, trust nothing fetched before now.
                warn!("redis evicted keys: entries fetched before now will not be served (give freshgate a Redis with maxmemory-policy noeviction)");
                self.outage_began.fetch_add(1, Ordering::AcqRel);
            }
            let full = memory.nearly_full();
            if full != self.nearly_full.swap(full, Ordering::AcqRel) {
                if full {
                    warn!(used = memory.used, max = memory.max, "redis is nearly full: entries are kept in memory only, so the invalidation log keeps room");
                } else {
                    info!("redis has room again: entries are shared again");
                }
            }
        }
        let outage = self.outage_began.load(Ordering::Acquire);
        if self.outage_cleared.load(Ordering::Acquire) < outage {
            // Back from an outage. Another replica may have acknowledged a
            // write whose invalidation it could not record yet; until it
            // does, entries in Redis look valid. Trust nothing fetched before
            // now: move the clock and serve only entries fetched after it.
            let mut conn = link.conn.clone();
            let floor: Option<u64> = tokio::time::timeout(
                self.check_timeout(),
                redis::cmd("INCR")
                    .arg(Keys::clock(&link.log))
                    .query_async(&mut conn),
            )
            .await
            .ok()
            .and_then(|r| r.ok());
            let Some(floor) = floor else {
                return self.count_failure("ping", &"cannot move the clock after an outage");
            };
            self.floor.fetch_max(floor, Ordering::AcqRel);
            // Only the trips counted before the floor moved: one during the
            // INCR keeps the replica out until the next check.
            self.outage_cleared.fetch_max(outage, Ordering::AcqRel);
            info!(
                floor,
                "entries fetched before the redis outage will not be served"
            );
        }
        self.count_success();
    }

    /// Say which rules this replica runs, learn whether others run other
    /// rules, and once the fleet runs these alone, record their activation
    /// (which invalidates everything cached if the fleet last ran others).
    /// True when done, false when Redis did not answer.
    pub(super) async fn check_rules(&self, link: &Arc<Link>) -> bool {
        let rules = self.rules.load(Ordering::Acquire);
        let mine = format!("{rules:016x}");
        let mut beat = self.heartbeat_script.prepare_invoke();
        beat.key(Keys::rules(&link.log))
            .arg(&mine)
            .arg(RULES_ALIVE.as_millis() as u64)
            .arg(self.inv_ttl.as_millis() as u64);
        let Some(alive) = self.record::<Vec<String>>(link, "rules", &beat, 1).await else {
            return false;
        };
        self.last_heartbeat_ms.store(mono_ms(), Ordering::Release);
        let mixed = alive.iter().any(|f| *f != mine);
        self.heard_mixed.store(mixed, Ordering::Release);
        if mixed {
            self.rules_ok.store(false, Ordering::Release);
        }
        if mixed && !self.rules_mixed.swap(true, Ordering::AcqRel) {
            warn!(rules = %mine, others = ?alive, "replicas run other rules (a rollout): the cache is bypassed and writes invalidate everything until they agree");
        }
        if mixed {
            METRICS.rules_mixed.set(1);
            return true;
        }
        // Every time, not once: the fleet may have run other rules while
        // this replica could not hear it (one GET when nothing changed).
        {
            let mut activate = self.activate_script.prepare_invoke();
            activate
                .key(Keys::active_rules(&link.log))
                .key(Keys::clock(&link.log))
                .key(Keys::tag(&link.log, crate::invalidation::ALL_TAG))
                .arg(&mine)
                .arg(self.inv_ttl.as_millis() as u64)
                .arg(FENCE_UNIT)
                .arg(Keys::inv_channel(&link.log))
                .arg(now_millis())
                .arg(crate::invalidation::ALL_TAG);
            let Some(s) = self.record::<u64>(link, "rules", &activate, 1).await else {
                return false;
            };
            if s > 0 {
                info!(rules = %mine, "the fleet runs new rules: everything cached before is invalid");
                self.followed.learn(s, [crate::invalidation::ALL_TAG]);
            }
        }
        let _settle = self.rules_settling.lock();
        if self.rules.load(Ordering::Acquire) != rules || !self.is_current(link) {
            // Changed meanwhile: the next check starts over.
            return true;
        }
        if self.rules_mixed.swap(false, Ordering::AcqRel) {
            info!(rules = %mine, "every replica runs these rules: caching again");
        }
        METRICS.rules_mixed.set(0);
        self.rules_ok.store(true, Ordering::Release);
        true
    }

    /// Redis's memory and evictions (`INFO memory`, `INFO stats`); `None`
    /// if they cannot be read.
    pub(super) async fn memory_stats(&self, link: &Link) -> Option<MemoryStats> {
        let mut conn = link.conn.clone();
        let (memory, stats): (String, String) = tokio::time::timeout(
            self.check_timeout(),
            redis::pipe()
                .cmd("INFO")
                .arg("memory")
                .cmd("INFO")
                .arg("stats")
                .query_async(&mut conn),
        )
        .await
        .ok()?
        .ok()?;
        let field = |text: &str, name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(MemoryStats {
            used: field(&memory, "used_memory")?,
            max: field(&memory, "maxmemory").unwrap_or(0),
            evicted_keys: field(&stats, "evicted_keys")?,
        })
    }

    /// Warn when this Redis may evict the invalidation log to make room:
    /// a lost `last_inv` would make an invalidated entry look valid. (Eviction
    /// is also watched for, see `check_once`.)
    pub(super) async fn check_eviction_policy(&self, link: &Link) {
        let mut conn = link.conn.clone();
        let get = |name: &'static str| {
            let mut conn = conn.clone();
            let limit = self.check_timeout();
            async move {
                let mut cmd = redis::cmd("CONFIG");
                cmd.arg("GET").arg(name);
                let query = cmd.query_async::<Vec<String>>(&mut conn);
                let v = tokio::time::timeout(limit, query).await.ok()?.ok()?;
                v.get(1).cloned()
            }
        };
        let (Some(maxmemory), Some(policy)) =
            (get("maxmemory").await, get("maxmemory-policy").await)
        else {
            // CONFIG may be disabled (managed Redis): nothing to tell.
            return;
        };
        let _ = &mut conn;
        let evicts = maxmemory != "0" && policy != "noeviction";
        METRICS.redis_may_evict.set(i64::from(evicts));
        if evicts {
            warn!(%maxmemory, %policy, "this redis may evict freshgate's invalidation log: use maxmemory-policy noeviction (or no maxmemory); until then every eviction makes freshgate distrust everything cached before it");
        }
    }
}
