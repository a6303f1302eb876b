//! Bounded consistency: follow the invalidation log over pub/sub into a local
//! map, so a hit costs no round trip to Redis.
//!
//! Every replica applies invalidations and fences as their messages arrive;
//! the writer applies its own invalidation at once (read-your-writes). Another
//! replica may serve the old entry for as long as a message takes to arrive
//! (`freshgate_invalidation_lag_seconds`). While not subscribed, a bounded
//! replica serves nothing from the cache; after (re)subscribing it serves only
//! entries fetched after that moment, so a lost message can never make an
//! entry servable.
//!
//! A subscription can die without a word: a NAT or load balancer that drops
//! an idle connection sends no FIN, and the link the maintainer pings is
//! another connection. So the follower publishes a heartbeat to itself each
//! second, over the link, and gives the subscription up (serving nothing
//! from the cache until it has subscribed again) when none has come back
//! for [`SILENT_AFTER`]: a message can be missed for that long at most.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tracing::{info, warn};

use super::log::Keys;
use super::{RedisTier, PING_EVERY};
use crate::metrics::METRICS;
use crate::store::entry::Tags;
use crate::time::now_millis;

/// A subscription that has not heard its own heartbeat for this long is
/// taken for dead.
pub(super) const SILENT_AFTER: Duration = Duration::from_secs(3);

/// What this replica has heard of one tag.
#[derive(Debug, Clone, Copy)]
struct Heard {
    last_inv: u64,
    /// Fences heard raised and not yet lifted.
    fences: u32,
    at: Instant,
}

/// Bounded mode's view of the log.
#[derive(Default)]
pub(super) struct Followed {
    pub(super) subscribed: AtomicBool,
    map: parking_lot::Mutex<HashMap<String, Heard>>,
}

impl Followed {
    /// Apply `change` to what was heard of each of `tags`, now.
    fn hear(&self, tags: impl IntoIterator<Item = impl Into<String>>, change: impl Fn(&mut Heard)) {
        let now = Instant::now();
        let mut map = self.map.lock();
        for t in tags {
            let h = map.entry(t.into()).or_insert(Heard {
                last_inv: 0,
                fences: 0,
                at: now,
            });
            change(h);
            h.at = now;
        }
    }

    pub(super) fn learn(&self, seq: u64, tags: impl IntoIterator<Item = impl Into<String>>) {
        self.hear(tags, |h| h.last_inv = h.last_inv.max(seq));
    }

    fn fence(&self, raise: bool, tags: impl IntoIterator<Item = impl Into<String>>) {
        // A lift whose raise was missed (subscribed in between) must not
        // leave a count below zero.
        self.hear(tags, |h| {
            h.fences = if raise {
                h.fences + 1
            } else {
                h.fences.saturating_sub(1)
            }
        });
    }

    pub(super) fn valid(&self, fetch_seq: u64, tags: &Tags) -> bool {
        let map = self.map.lock();
        tags.iter().all(|t| {
            map.get(t)
                .is_none_or(|h| h.fences == 0 && h.last_inv <= fetch_seq)
        })
    }

    pub(super) fn fenced(&self, tags: &[String]) -> bool {
        let map = self.map.lock();
        tags.iter()
            .any(|t| map.get(t).is_some_and(|h| h.fences > 0))
    }

    pub(super) fn clear(&self) {
        self.map.lock().clear();
    }

    /// Forget what no entry can need any more: invalidations older than any
    /// entry can be, and fences older than any write may last (their lift
    /// message was lost; the sweep has lifted them in Redis).
    fn prune(&self, inv_ttl: Duration, fence_ttl: Duration) {
        self.map.lock().retain(|_, h| {
            if h.fences > 0 && h.at.elapsed() >= fence_ttl {
                h.fences = 0;
            }
            h.fences > 0 || h.at.elapsed() < inv_ttl
        });
    }
}

impl RedisTier {
    /// Follow the current run's channels into the local map, subscribing
    /// again after a lost connection or a Redis restart. Runs until
    /// `shutdown` turns true.
    pub async fn follow_invalidations(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.follow_once(&mut shutdown).await {
                warn!(error = %e, "invalidation channel lost: bounded mode bypasses the cache until it is back");
            }
            self.followed.subscribed.store(false, Ordering::Release);
            METRICS.invalidation_subscribed.set(0);
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn follow_once(
        &self,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        let Some(link) = self.link.load_full() else {
            return Ok(());
        };
        // The node that holds the log (on a cluster, messages reach every
        // node; this one is as good as any and known to be up).
        let client = redis::Client::open(link.node.clone())?;
        let mut pubsub = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(500)),
            client.get_async_pubsub(),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        let (inv, fence) = (Keys::inv_channel(&link.log), Keys::fence_channel(&link.log));
        let heartbeat = Keys::heartbeat_channel(&link.log, &self.replica_id);
        pubsub.subscribe(&[&inv, &fence, &heartbeat]).await?;
        // What was published before the subscription was not heard: trust
        // only entries fetched from now on. SUBSCRIBE was answered before
        // this read was sent, so every later message reaches us. (The
        // connection could have reached another run's Redis: then the clock
        // read below, on the link, fails or the link changes before the
        // next tick, which ends this subscription.)
        let Some(clock) = self.clock_now(&link).await else {
            return Ok(());
        };
        if self
            .link
            .load()
            .as_ref()
            .is_none_or(|l| l.generation != link.generation)
        {
            // That clock is another run's: it must not become this one's
            // floor.
            return Ok(());
        }
        self.followed.clear();
        self.floor
            .fetch_max(clock, std::sync::atomic::Ordering::AcqRel);
        self.followed.subscribed.store(true, Ordering::Release);
        if self
            .link
            .load()
            .as_ref()
            .is_none_or(|l| l.generation != link.generation)
        {
            // A new link came meanwhile (and reset `subscribed`): this
            // subscription belongs to the old one.
            self.followed.subscribed.store(false, Ordering::Release);
            return Ok(());
        }
        METRICS.invalidation_subscribed.set(1);
        info!(floor = clock, "following invalidations (bounded mode)");
        let mut messages = pubsub.on_message();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    let channel = msg.get_channel_name();
                    if channel == heartbeat {
                        heard = Instant::now();
                        continue;
                    }
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if channel == fence {
                        self.apply_fence(&payload);
                    } else {
                        self.apply_invalidation(&payload);
                    }
                }
                _ = tick.tick() => {
                    let current = self.link.load();
                    if current.as_ref().is_none_or(|l| l.generation != link.generation) {
                        // Redis restarted, or the link was lost (its node
                        // may have fallen silent, and this subscription
                        // with it): subscribe again where the log is now.
                        return Ok(());
                    }
                    if heard.elapsed() >= SILENT_AFTER {
                        // Its connection died unseen, or it reached another
                        // Redis than the link: what it missed is unknown.
                        warn!(silent_for = ?heard.elapsed(), "the invalidation channel fell silent: subscribing again (bounded mode bypasses the cache until then)");
                        return Ok(());
                    }
                    let mut beat = redis::cmd("PUBLISH");
                    beat.arg(&heartbeat).arg(1);
                    self.run::<i64>(&link, "heartbeat", beat).await;
                    self.followed.prune(self.inv_ttl, self.fence_ttl);
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// `"<seq> <published ms>\n<tag>\n<tag>..."` from the lift, sweep and
    /// rules-activation scripts.
    fn apply_invalidation(&self, payload: &str) {
        let mut lines = payload.split('\n');
        let head = lines.next().unwrap_or("");
        let mut nums = head.split(' ').map(|n| n.parse::<u64>().ok());
        let (Some(Some(seq)), Some(Some(sent_ms))) = (nums.next(), nums.next()) else {
            warn!(%head, "malformed invalidation message ignored");
            return;
        };
        self.followed.learn(seq, lines.filter(|t| !t.is_empty()));
        let lag_ms = now_millis().saturating_sub(sent_ms);
        METRICS
            .invalidation_lag_seconds
            .observe(lag_ms as f64 / 1000.0);
    }

    /// `"+\n<tag>..."` (a write in flight) or `"-\n<tag>..."` (its lift).
    fn apply_fence(&self, payload: &str) {
        let mut lines = payload.split('\n');
        let raise = match lines.next() {
            Some("+") => true,
            Some("-") => false,
            other => {
                warn!(head = ?other, "malformed fence message ignored");
                return;
            }
        };
        self.followed.fence(raise, lines.filter(|t| !t.is_empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heard_fences_and_invalidations_decide_validity() {
        let f = Followed::default();
        let tags = vec!["t".to_string()];
        let entry_tags = Tags::new(&tags).unwrap();
        assert!(f.valid(0, &entry_tags));
        f.fence(true, ["t"]);
        assert!(!f.valid(u64::MAX, &entry_tags) && f.fenced(&tags));
        f.learn(9, ["t"]);
        f.fence(false, ["t"]);
        assert!(!f.valid(8, &entry_tags));
        assert!(f.valid(9, &entry_tags));
        f.fence(false, ["t"]);
        assert!(f.valid(9, &entry_tags), "a lift whose raise was missed");
    }
}
