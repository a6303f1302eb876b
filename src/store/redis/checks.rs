//! Strict mode's validity checks of concurrent hits, sent to Redis as one
//! `MGET`.
//!
//! A strict hit asks Redis when each of its entry's tags was last
//! invalidated, the log's floor, and, while it must be there, whether this
//! replica's beat still is (see `log::HOLDER`). Sent one by one,
//! every hit is a command for Redis to parse and answer and a trip through
//! the client, and concurrent hits mostly ask for the same keys (`a:all`,
//! their route's family). So checks queue on
//! their link: while one batch is in flight the next gathers, and goes as
//! one `MGET` of the distinct tags when the first is answered, after the
//! requests ready to run have had their turn (`gather`). There is no
//! timer: a lone hit waits for nothing but its own round trip.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::link::mono_ms;
use super::log::{self, Keys};
use super::{Link, RedisTier};
use crate::store::entry::Tags;

/// How many times a batch lets the ready requests run before it goes.
const GATHER_ROUNDS: usize = 4;

/// One hit's check: whether nothing of `tags` was invalidated (or is
/// fenced) after `fetch_seq`. `None` when Redis could not say.
struct Pending {
    tags: Tags,
    fetch_seq: u64,
    reply: oneshot::Sender<Option<bool>>,
}

/// The checks waiting on one link.
#[derive(Default)]
pub(super) struct Checks {
    state: parking_lot::Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: Vec<Pending>,
    /// A batch is on its way: what arrives meanwhile waits for the next.
    sending: bool,
}

impl RedisTier {
    /// Whether an entry fetched at `fetch_seq` with `tags` may be served,
    /// by `link`'s run of the log, checked with the other hits' checks.
    pub(super) async fn check(
        self: &Arc<Self>,
        link: &Arc<Link>,
        tags: &Tags,
        fetch_seq: u64,
    ) -> Option<bool> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut state = link.checks.state.lock();
            state.queue.push(Pending {
                tags: tags.clone(),
                fetch_seq,
                reply,
            });
            !std::mem::replace(&mut state.sending, true)
        };
        if lead {
            tokio::spawn(self.clone().send_checks(link.clone()));
        }
        answer.await.ok().flatten()
    }

    /// Let the requests that are ready run first (tokio polls I/O too),
    /// for as long as that adds checks to the queue (at most
    /// [`GATHER_ROUNDS`] times), so that their checks join this batch
    /// rather than wait for the next: on a busy thread one round trip to
    /// Redis is then paid by about every connection's hit instead of a
    /// third of them (20 → 62 hits per `MGET` at 64 connections, +12 %
    /// strict hits per second; docs/benchmarks.md Run 10). No timer: on an
    /// idle thread the first yield returns at once and adds nothing. Later
    /// is never staler: a check sent after a hit arrived sees every write
    /// acknowledged before it.
    async fn gather(&self, link: &Link) {
        let mut queued = link.checks.state.lock().queue.len();
        for _ in 0..GATHER_ROUNDS {
            tokio::task::yield_now().await;
            let now = link.checks.state.lock().queue.len();
            if now == queued {
                return;
            }
            queued = now;
        }
    }

    /// Send the queued checks, a batch at a time, until none are left.
    async fn send_checks(self: Arc<Self>, link: Arc<Link>) {
        let mut sender = Sender {
            checks: &link.checks,
            done: false,
        };
        loop {
            self.gather(&link).await;
            let batch = {
                let mut state = link.checks.state.lock();
                if state.queue.is_empty() {
                    state.sending = false;
                    sender.done = true;
                    return;
                }
                std::mem::take(&mut state.queue)
            };
            let mut distinct: Vec<&str> = batch.iter().flat_map(|p| p.tags.iter()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            let mut cmd = redis::cmd("MGET");
            for t in &distinct {
                cmd.arg(Keys::tag(&link.log, t));
            }
            // And the log's floor: one another replica raised (a log that
            // lost records) counts from this very check, not from this
            // replica's next maintenance check.
            cmd.arg(Keys::floor(&link.log));
            // And this replica's beat, while it must be there (`log::beat_plan`):
            // gone, Redis's clock jumped forward and expired records that
            // entries in memory still need. A maintenance check finds that
            // and moves the floor (`log::HOLDER`); until then the log
            // vouches for nothing. Set and no longer looked for (no new beat
            // for 16 minutes: checks stalled, or Redis refused writes), a
            // jump would go unseen: the next check declares an outage, and
            // nothing is vouched for until then, nor until the outage is
            // cleared (a hit that was let through before it began).
            let beat_at = link.witness.beat_at_ms.load(Ordering::Acquire);
            let (beat, _) = log::beat_plan(beat_at, mono_ms());
            let beat_lapsed = (beat_at != 0 && !beat) || self.in_outage();
            if beat {
                cmd.arg(Keys::beat(&link.log, &self.replica_id));
            }
            let asked = distinct.len() + 1 + usize::from(beat);
            let inv: Option<Vec<Option<u64>>> = if beat_lapsed {
                None
            } else {
                self.run(&link, "last_inv", cmd)
                    .await
                    .filter(|inv: &Vec<Option<u64>>| inv.len() == asked)
            };
            let answers: Vec<Option<bool>> = batch
                .iter()
                .map(|p| {
                    let inv = inv.as_ref()?;
                    if beat && inv[asked - 1].is_none() {
                        return None;
                    }
                    // Missing, it was lost (a flush, a restore): the holder
                    // script puts it back at its next check; until then the
                    // log vouches for nothing.
                    let Some(floor) = inv[distinct.len()] else {
                        return Some(false);
                    };
                    Some(
                        p.fetch_seq >= floor
                            && p.tags.iter().all(|t| {
                                distinct
                                    .binary_search(&t)
                                    .is_ok_and(|i| log::allows(inv[i], p.fetch_seq))
                            }),
                    )
                })
                .collect();
            for (p, answer) in batch.into_iter().zip(answers) {
                // The hit may have gone (its client left): nothing to tell.
                let _ = p.reply.send(answer);
            }
        }
    }
}

/// The one sender of a link's checks. Dropped before it is done (its runtime
/// shut down under it), it leaves no sender marked, which would hold every
/// later check on the link forever: the checks it leaves behind are answered
/// "cannot say" (a miss) and the next check starts a sender again.
struct Sender<'a> {
    checks: &'a Checks,
    done: bool,
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut state = self.checks.state.lock();
            state.sending = false;
            state.queue.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(checks: &Checks) -> oneshot::Receiver<Option<bool>> {
        let (reply, answer) = oneshot::channel();
        let mut state = checks.state.lock();
        state.queue.push(Pending {
            tags: Tags::new(&["a:all"]).unwrap(),
            fetch_seq: 1,
            reply,
        });
        state.sending = true;
        answer
    }

    #[test]
    fn a_sender_dropped_before_it_is_done_frees_the_link() {
        let checks = Checks::default();
        let mut answer = queued(&checks);
        drop(Sender {
            checks: &checks,
            done: false,
        });
        let state = checks.state.lock();
        assert!(!state.sending && state.queue.is_empty());
        // The waiting check hears "cannot say" (a miss), not nothing ever.
        assert!(matches!(
            answer.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }

    #[test]
    fn a_sender_that_finished_leaves_the_next_one_alone() {
        let checks = Checks::default();
        let _answer = queued(&checks);
        drop(Sender {
            checks: &checks,
            done: true,
        });
        let state = checks.state.lock();
        assert!(state.sending && state.queue.len() == 1);
    }
}
