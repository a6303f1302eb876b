//! A write's two phases against the shared log: the fence recorded before
//! the write is forwarded, the lift (and invalidation) once its outcome is
//! known, what is owed while Redis cannot record them, and the reconciling
//! of owed records in every new run.

use super::*;

/// Tries for a lift: with its write's fence in `link`'s run, nothing the
/// lift would invalidate can be served until some replica lifts it, so one
/// is enough; without, the lift is the only protection.
pub(super) fn attempts(fenced_in: Option<u64>, link: &Link) -> u32 {
    if fenced_in == Some(link.epoch) {
        1
    } else {
        INVALIDATE_ATTEMPTS
    }
}

/// A script's keys and arguments.
pub(super) struct Call {
    keys: Vec<String>,
    args: Vec<String>,
}

impl Call {
    fn invocation<'a>(&self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        for a in &self.args {
            inv.arg(a);
        }
        inv
    }
}

pub(super) fn joined(tags: &BTreeSet<String>) -> String {
    tags.iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

impl RedisTier {
    /// How long a replica's marker lives in the log: twice as long as it
    /// is asked about (see `hold_floor`), so a live one never expires.
    pub(super) fn marker_ttl_ms(&self) -> u64 {
        self.inv_ttl.as_millis() as u64 * 2
    }

    /// A link to record a write on: the current one, or one opened now
    /// rather than at the maintainer's next check (a write must not go
    /// unrecorded for want of a connection attempt).
    pub(super) async fn link_for_write(&self) -> Option<Arc<Link>> {
        match self.link.load_full() {
            Some(link) => Some(link),
            None => self.connect(true).await,
        }
    }

    /// After `link` failed a write's call: a link to try once more on, if
    /// the failure dropped the link (connection gone, Redis restarted, or on
    /// a cluster the log's slot moved) — opened at once, so the write is recorded in the new run
    /// before it is acknowledged. `None` when Redis merely answered badly or
    /// slowly (no second try: the write waits long enough already).
    pub(super) async fn second_chance(&self, link: &Arc<Link>) -> Option<Arc<Link>> {
        if self.is_current(link) {
            return None;
        }
        self.connect(false).await
    }

    /// Phase 1 of a write (before it is forwarded): fence `tags` in the
    /// shared log. False when that could not be recorded; the write is then
    /// owed, and this replica bypasses the cache until it is recorded.
    pub async fn begin_write(&self, id: u64, tags: &BTreeSet<String>) -> bool {
        // The rules the proxy planned it by (it plans by the store's).
        let rules = self.rules.load(Ordering::Acquire);
        let mut fenced_in = None;
        let mut link = self.link_for_write().await;
        for second in [false, true] {
            let Some(l) = link.take() else { break };
            if self.fence(&l, id, tags, rules).await {
                fenced_in = Some(l.epoch);
                break;
            }
            if !second {
                link = self.second_chance(&l).await;
            }
        }
        // Owed from now until its lift is recorded. (Entered after the
        // attempt, so that reads do not bypass the cache while a fence that
        // is about to be recorded is on its way.)
        self.owed(|o| {
            o.writes.insert(
                id,
                OwedWrite {
                    tags: tags.clone(),
                    rules,
                    fenced_in,
                    end: None,
                },
            )
        });
        if fenced_in.is_none() {
            METRICS.invalidation_failures.inc();
        }
        fenced_in.is_some()
    }

    /// A write that was never forwarded: nothing to record. (Had its fence
    /// reached Redis after all, unanswered, the sweep lifts it.)
    pub fn forget(&self, id: u64) {
        self.owed(|o| o.writes.remove(&id));
    }

    /// A write given up on without a runtime to lift it from (process
    /// teardown): leave its lift to the maintainer.
    pub fn mark_ended(&self, id: u64) {
        self.owed(|o| {
            if let Some(w) = o.writes.get_mut(&id) {
                w.end.get_or_insert(End {
                    extra: BTreeSet::new(),
                    invalidate: true,
                });
            }
        });
    }

    /// Phase 2 of a write (its outcome known, or given up on): lift its
    /// fence, invalidating its tags and `extra` unless `invalidate` is false.
    /// False when that could not be recorded yet; it stays owed.
    pub async fn end_write(&self, id: u64, extra: BTreeSet<String>, invalidate: bool) -> Ended {
        let (tags, fenced_in, rules) = match self.owed.lock().writes.get(&id) {
            Some(w) => (w.tags.clone(), w.fenced_in, w.rules),
            None => (BTreeSet::new(), None, self.rules.load(Ordering::Acquire)),
        };
        let mut recorded = false;
        let mut link = self.link_for_write().await;
        let mut stands = false;
        for second in [false, true] {
            let Some(l) = link.take() else { break };
            let attempts = attempts(fenced_in, &l);
            if self
                .lift(&l, id, &tags, &extra, invalidate, rules, attempts)
                .await
            {
                recorded = true;
                break;
            }
            // Its fence still protects every replica while its link is the
            // current one in the run it was recorded in: the lift only
            // failed, Redis did not restart (and it is not reachable only
            // through another connection). Not when the log's node has
            // replicas (a cluster's master, a Sentinel primary): it may be
            // failing over right now (an unanswered lift is what that looks
            // like), and the promoted replica may lack the fence.
            stands = fenced_in == Some(l.epoch)
                && self.is_current(&l)
                && !l.witness.replicated.load(Ordering::Acquire);
            if !second {
                link = self.second_chance(&l).await;
            }
        }
        // Marked ended only when it could not be recorded: reads bypass the
        // cache while anything is owed, and a lift on its way is not owed.
        self.owed(|o| {
            if recorded {
                o.writes.remove(&id);
            } else {
                o.writes
                    .entry(id)
                    .or_insert_with(|| OwedWrite {
                        tags: tags.clone(),
                        rules,
                        fenced_in: None,
                        end: None,
                    })
                    .end = Some(End {
                    extra: extra.clone(),
                    invalidate,
                });
            }
        });
        if recorded {
            return Ended::Recorded;
        }
        METRICS.invalidation_failures.inc();
        // The fence covers what it fenced, not what only the answer named.
        Ended::Owed {
            fence_stands: stands && extra.is_subset(&tags),
        }
    }

    /// Invalidate `tags` now (no write in flight: a purge).
    pub async fn invalidate(&self, tags: &BTreeSet<String>) -> bool {
        if tags.is_empty() {
            return true;
        }
        self.end_write(rand::random::<u64>() | 1, tags.clone(), true)
            .await
            == Ended::Recorded
    }

    pub(super) async fn fence(
        &self,
        link: &Arc<Link>,
        id: u64,
        tags: &BTreeSet<String>,
        rules: u64,
    ) -> bool {
        if tags.is_empty() {
            return true;
        }
        let call = self.fence_call(link, id, tags, rules);
        let inv = call.invocation(&self.fence_script);
        self.record::<i64>(link, "fence", &inv, 1).await.is_some()
    }

    /// [`log::FENCE`]'s keys and arguments for write `id`.
    fn fence_call(&self, link: &Link, id: u64, tags: &BTreeSet<String>, rules: u64) -> Call {
        let mut keys = vec![Keys::fences(&link.log), Keys::fence(&link.log, id)];
        keys.extend(tags.iter().map(|t| Keys::tag(&link.log, t)));
        let args = vec![
            id.to_string(),
            self.fence_ttl.as_millis().to_string(),
            self.inv_ttl.as_millis().to_string(),
            joined(tags),
            Keys::fence_channel(&link.log),
            FENCE_UNIT.to_string(),
            format!("{rules:016x}"),
        ];
        Call { keys, args }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn lift(
        &self,
        link: &Arc<Link>,
        id: u64,
        fenced: &BTreeSet<String>,
        extra: &BTreeSet<String>,
        invalidate: bool,
        rules: u64,
        attempts: u32,
    ) -> bool {
        let extra: BTreeSet<String> = extra.difference(fenced).cloned().collect();
        if fenced.is_empty() && (extra.is_empty() || !invalidate) {
            return true;
        }
        let (call, all) = self.lift_call(link, id, fenced, &extra, invalidate, rules);
        let inv = call.invocation(&self.lift_script);
        let Some(s) = self.record::<u64>(link, "invalidate", &inv, attempts).await else {
            return false;
        };
        self.lifted(link, s, all, invalidate);
        true
    }

    /// [`log::LIFT`]'s keys and arguments for write `id` (`extra`: tags
    /// its answer named that it did not fence), and every tag it names.
    fn lift_call(
        &self,
        link: &Link,
        id: u64,
        fenced: &BTreeSet<String>,
        extra: &BTreeSet<String>,
        invalidate: bool,
        rules: u64,
    ) -> (Call, BTreeSet<String>) {
        let mut keys = vec![
            Keys::clock(&link.log),
            Keys::fences(&link.log),
            Keys::fence(&link.log, id),
            Keys::active_rules(&link.log),
            Keys::tag(&link.log, ALL_TAG),
            Keys::marker(&link.log, &self.replica_id),
        ];
        keys.extend(fenced.iter().chain(extra).map(|t| Keys::tag(&link.log, t)));
        let all: BTreeSet<String> = fenced.union(extra).cloned().collect();
        let args = vec![
            id.to_string(),
            fenced.len().to_string(),
            self.inv_ttl.as_millis().to_string(),
            FENCE_UNIT.to_string(),
            if invalidate { "1" } else { "0" }.to_string(),
            Keys::inv_channel(&link.log),
            now_millis().to_string(),
            joined(&all),
            Keys::fence_channel(&link.log),
            joined(fenced),
            format!("{rules:016x}"),
            ALL_TAG.to_string(),
            self.marker_ttl_ms().to_string(),
        ];
        (Call { keys, args }, all)
    }

    /// A lift recorded at clock value `s` (0: it invalidated nothing).
    fn lifted(&self, link: &Link, s: u64, all: BTreeSet<String>, invalidate: bool) {
        self.saw_clock(link, s);
        if s > 0 {
            link.witness.recorded.fetch_max(s, Ordering::AcqRel);
            link.witness
                .recorded_at_ms
                .store(mono_ms(), Ordering::Release);
        }
        if invalidate {
            // Read-your-writes on this replica in bounded mode, before the
            // message comes back.
            self.followed.learn(s, all);
        }
    }

    /// A write whose answer has a body to come: fence `tags` as write `to`
    /// and end write `from` as [`RedisTier::end_write`] does (invalidating
    /// its tags and `extra`), in one call ([`log::hand_over_script`]) —
    /// the second fence is in the log before the first is lifted, as when
    /// the two are called in turn, one round trip sooner. Taken only in the
    /// plain case: `from` fenced in the current run and both recorded at
    /// once. `None` when it was not taken or failed; nothing is then known
    /// to be recorded (the call may have run: both steps are idempotent
    /// per write id), and the caller takes the two steps.
    pub async fn hand_over(
        &self,
        from: u64,
        to: u64,
        tags: &BTreeSet<String>,
        extra: &BTreeSet<String>,
    ) -> Option<Ended> {
        let link = self.link.load_full()?;
        let (fenced, rules_from) = match self.owed.lock().writes.get(&from) {
            Some(w) if w.fenced_in == Some(link.epoch) && w.end.is_none() => {
                (w.tags.clone(), w.rules)
            }
            _ => return None,
        };
        if tags.is_empty() || fenced.is_empty() {
            return None;
        }
        let rules = self.rules.load(Ordering::Acquire);
        let extra: BTreeSet<String> = extra.difference(&fenced).cloned().collect();
        let (lift, all) = self.lift_call(&link, from, &fenced, &extra, true, rules_from);
        let fence = self.fence_call(&link, to, tags, rules);
        let mut inv = self.hand_over_script.prepare_invoke();
        inv.arg(lift.keys.len()).arg(lift.args.len());
        for k in lift.keys.iter().chain(&fence.keys) {
            inv.key(k);
        }
        for a in lift.args.iter().chain(&fence.args) {
            inv.arg(a);
        }
        let s = self.record::<i64>(&link, "hand-over", &inv, 1).await?;
        let s = u64::try_from(s).ok()?;
        self.owed(|o| {
            o.writes.remove(&from);
            o.writes.insert(
                to,
                OwedWrite {
                    tags: tags.clone(),
                    rules,
                    fenced_in: Some(link.epoch),
                    end: None,
                },
            );
        });
        self.lifted(&link, s, all, true);
        Some(Ended::Recorded)
    }

    /// Record what this replica owes the log in `link`'s run: lifts not yet
    /// recorded, and fences of writes still in flight that this run has no
    /// record of. True when nothing is owed any more.
    pub(super) async fn reconcile(&self, link: &Arc<Link>) -> bool {
        let due = self.owed.lock().due(link.epoch);
        self.owed(|_| ());
        if due.is_empty() {
            return true;
        }
        for (id, w) in due {
            if let Some(end) = w.end {
                let attempts = attempts(w.fenced_in, link);
                if !self
                    .lift(
                        link,
                        id,
                        &w.tags,
                        &end.extra,
                        end.invalidate,
                        w.rules,
                        attempts,
                    )
                    .await
                {
                    return false;
                }
                self.owed(|o| o.writes.remove(&id));
                info!(
                    tags = w.tags.len() + end.extra.len(),
                    "recorded an owed invalidation"
                );
                continue;
            }
            if !self.fence(link, id, &w.tags, w.rules).await {
                return false;
            }
            let ended_meanwhile = self.owed(|o| match o.writes.get_mut(&id) {
                Some(w) if w.end.is_none() => {
                    w.fenced_in = Some(link.epoch);
                    false
                }
                _ => true,
            });
            // Its own lift may have run before this fence: lift it again
            // rather than leave it to the sweep.
            if ended_meanwhile {
                self.lift(link, id, &w.tags, &BTreeSet::new(), true, w.rules, 1)
                    .await;
            }
        }
        !self.owes()
    }

    /// Lift fences whose deadline passed (their writer died or lost Redis).
    pub(super) async fn sweep(&self, link: &Arc<Link>) {
        let mut inv = self.sweep_script.prepare_invoke();
        inv.key(Keys::clock(&link.log))
            .key(Keys::fences(&link.log))
            .arg(&*link.log)
            .arg(self.inv_ttl.as_millis() as u64)
            .arg(FENCE_UNIT)
            .arg(Keys::inv_channel(&link.log))
            .arg(Keys::fence_channel(&link.log))
            .arg(now_millis())
            .arg(SWEEP_BATCH)
            .arg(ALL_TAG);
        let mut conn = link.conn.clone();
        match tokio::time::timeout(self.timeout * 4, inv.invoke_async::<u64>(&mut conn)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => warn!(
                fences = n,
                "lifted fences whose writer never did (a replica died or lost redis mid-write)"
            ),
            Ok(Err(e)) => self.failed(link, "sweep", Some(&e)),
            Err(_) => self.failed(link, "sweep", None),
        }
    }
}
