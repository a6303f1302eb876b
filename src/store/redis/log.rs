//! The invalidation log in Redis: the clock, each tag's `last_inv`, the
//! fences of writes in flight, and what this replica still owes it.
//!
//! Every key belongs to one Redis run (`run_id`): a restarted Redis starts a
//! new, empty log, and nothing stored under another run is ever read.
//!
//! **Placement.** On one Redis the log's keys begin `fg:2:<run>:` (the 2
//! is the entry format the log began with, frozen since: builds that store
//! entries differently still share one log; what a build tags differently is
//! handled as a rules change, see `config::Config::rules_fingerprint`). On a
//! Redis Cluster they begin `{fg}:2:<run>:`, and monitoring keys
//! `{fg}:mon:`: the hash tag puts them all in one slot, on one master, so each
//! script below touches keys of one slot only, and the run is that master's.
//! Entries carry no hash tag there and spread over the masters; each is
//! checked against the log, so where it lives does not matter to freshness.
//!
//! A tag's value packs two numbers: `fences * FENCE_UNIT + last_inv`. A fenced
//! tag (a write in flight may change what it names) therefore reads as a huge
//! `last_inv`, which makes every entry carrying it invalid — also to a replica
//! of the previous format, which only compares `last_inv <= fetch_seq`. The
//! scripts below change it atomically:
//!
//! - [`FENCE`], before a write is forwarded: `fences += 1`, and a record of the
//!   write (its tags, and a deadline on Redis's clock) in a sorted set, so that
//!   any replica can lift it if its writer never does ([`SWEEP`]).
//! - [`LIFT`], once the write's outcome is known: a new clock value `s`, every
//!   tag's `last_inv = s` (unless the app refused the write), and this write's
//!   fence removed — one step, so no fill that began during the write can be
//!   valid afterwards.
//!
//! Both are idempotent per write id (the sorted set says whether the fence is
//! still held), so a call whose answer was lost can be sent again.

use std::collections::{BTreeSet, HashMap};

use crate::store::clock;

/// Fences are counted in the high bits of a tag's value: clock values stay
/// far below 2^40, and 2^13 fences on one tag still fit Lua's exact integers.
pub(super) const FENCE_UNIT: u64 = 1 << 40;

/// Whether a tag whose value is `v` lets an entry fetched at `fetch_seq` be
/// served: not fenced, and not invalidated after the fetch began.
pub(super) fn allows(v: Option<u64>, fetch_seq: u64) -> bool {
    let v = v.unwrap_or(0);
    v < FENCE_UNIT && v <= fetch_seq
}

pub(super) fn fenced(v: Option<u64>) -> bool {
    v.unwrap_or(0) >= FENCE_UNIT
}

/// Key names. The log's take the prefix of its run ([`Keys::log`]).
pub(super) struct Keys;

impl Keys {
    /// The prefix of the log's keys in run `run`, on a cluster or not.
    pub(super) fn log(run: &str, cluster: bool) -> String {
        format!("{}2:{run}:", Self::side(cluster))
    }
    /// The prefix of monitoring keys (`fg:`, or `{fg}:` on a cluster: the
    /// log's slot). Flags use a key of their own, `fg:flags` (`flags.rs`).
    pub(super) fn side(cluster: bool) -> &'static str {
        if cluster {
            "{fg}:"
        } else {
            "fg:"
        }
    }
    /// A key of the log's slot on a cluster that nothing stores: asking for
    /// it tells whether a node serves that slot (it answers `MOVED` if not).
    pub(super) fn probe() -> &'static str {
        "{fg}:probe"
    }
    /// An entry: the entry format's version (see `entry`), and the run of
    /// the log it is checked against. No hash tag: on a cluster, entries
    /// spread over the masters.
    pub(super) fn entry(run: &str, cache_key: &str) -> String {
        format!("fg:{}:{run}:e:{cache_key}", super::super::entry::VERSION)
    }
    pub(super) fn clock(log: &str) -> String {
        format!("{log}clock")
    }
    pub(super) fn tag(log: &str, tag: &str) -> String {
        format!("{log}i:{tag}")
    }
    pub(super) fn fences(log: &str) -> String {
        format!("{log}fences")
    }
    pub(super) fn fence(log: &str, id: u64) -> String {
        format!("{log}fence:{id}")
    }
    /// Fingerprint (hex) -> when a replica running those rules last said so
    /// (Redis's clock, ms).
    pub(super) fn rules(log: &str) -> String {
        format!("{log}rules")
    }
    /// The run of the Redis process that last held the log, whichever run
    /// that was (see [`HOLDER`]): one key for every run, so that it follows
    /// the data from node to node.
    pub(super) fn holder(cluster: bool) -> String {
        format!("{}holder", Self::side(cluster))
    }
    /// The clock value at which this run's current hold on its log began.
    pub(super) fn floor(log: &str) -> String {
        format!("{log}floor")
    }
    /// The clock value of the last invalidation replica `replica` recorded
    /// (see [`HOLDER`]).
    pub(super) fn marker(log: &str, replica: &str) -> String {
        format!("{log}w:{replica}")
    }
    /// Set by replica `replica` every half its life (`BEAT_TTL`; see
    /// [`HOLDER`]).
    pub(super) fn beat(log: &str, replica: &str) -> String {
        format!("{log}b:{replica}")
    }
    /// The fingerprint of the rules the fleet last ran alone.
    pub(super) fn active_rules(log: &str) -> String {
        format!("{log}rules:active")
    }
    /// Invalidations: `"<seq> <writer's ms>\n<tag>\n..."`.
    pub(super) fn inv_channel(log: &str) -> String {
        format!("{log}inv")
    }
    /// Fences: `"+\n<tag>\n..."` when one is raised, `"-\n..."` when lifted.
    pub(super) fn fence_channel(log: &str) -> String {
        format!("{log}fence")
    }
    /// What replica `replica` publishes to itself to tell that its
    /// subscription still hears the log (see `follow`).
    pub(super) fn heartbeat_channel(log: &str, replica: &str) -> String {
        format!("{log}hb:{replica}")
    }
}

/// KEYS: fences set, this fence's record, then the tags.
/// ARGV: id, deadline from now (ms), tag key TTL (ms), tags ("\n"-joined),
/// fence channel, FENCE_UNIT, the fingerprint of the rules that planned the
/// write. Returns 1, or 0 if the fence was already held. The record keeps
/// the fingerprint on its first line, the tags after it.
pub(super) const FENCE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZADD', KEYS[1], 'NX', now + tonumber(ARGV[2]), ARGV[1]) == 0 then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[7] .. '\n' .. ARGV[4], 'PX', ARGV[3])
for i = 3, #KEYS do
  redis.call('INCRBY', KEYS[i], ARGV[6])
  redis.call('PEXPIRE', KEYS[i], ARGV[3])
end
redis.call('PUBLISH', ARGV[5], '+\n' .. ARGV[4])
return 1
"#;

/// KEYS: clock, fences set, this fence's record, the fleet's active rules,
/// the `a:all` tag's key, this replica's marker (see [`HOLDER`]), then the
/// tags: first the `ARGV[2]` the write fenced, then the ones only its
/// answer named.
/// ARGV: id ("0": none), fenced count, tag key TTL (ms), FENCE_UNIT,
/// invalidate ("1"/"0"), invalidation channel, the writer's ms, all tags
/// ("\n"-joined), fence channel, fenced tags ("\n"-joined), the fingerprint
/// of the rules that planned the write, the `a:all` tag, the marker's TTL
/// (ms).
/// Returns the new clock value (0 when nothing was invalidated).
///
/// `last_inv = s` is a plain SET: `s` is newer than any value in the log.
/// A write planned by other rules than the fleet now runs (it was in flight
/// while the fleet moved on) may have changed what the new rules tag
/// differently: it invalidates everything.
pub(super) const LIFT: &str = r#"
local unit = tonumber(ARGV[4])
local owned = ARGV[1] ~= '0' and redis.call('ZREM', KEYS[2], ARGV[1]) == 1
if owned then redis.call('DEL', KEYS[3]) end
local invalidate = ARGV[5] == '1'
local s = 0
if invalidate then s = redis.call('INCR', KEYS[1]) end
local nf = tonumber(ARGV[2])
for i = 7, #KEYS do
  local mine = owned and (i - 6) <= nf
  if invalidate then
    local fences = math.floor(tonumber(redis.call('GET', KEYS[i]) or '0') / unit)
    if mine and fences > 0 then fences = fences - 1 end
    redis.call('SET', KEYS[i], string.format('%.0f', fences * unit + s), 'PX', ARGV[3])
  elseif mine and tonumber(redis.call('GET', KEYS[i]) or '0') >= unit then
    redis.call('DECRBY', KEYS[i], ARGV[4])
  end
end
local tags = ARGV[8]
if invalidate then
  local active = redis.call('GET', KEYS[4])
  if active and active ~= ARGV[11] then
    local fences = math.floor(tonumber(redis.call('GET', KEYS[5]) or '0') / unit)
    redis.call('SET', KEYS[5], string.format('%.0f', fences * unit + s), 'PX', ARGV[3])
    tags = tags .. '\n' .. ARGV[12]
  end
  redis.call('PUBLISH', ARGV[6], s .. ' ' .. ARGV[7] .. '\n' .. tags)
  redis.call('SET', KEYS[6], s, 'PX', ARGV[13])
end
if owned and nf > 0 then
  redis.call('PUBLISH', ARGV[9], '-\n' .. ARGV[10])
end
return s
"#;

/// [`FENCE`] of one write, then [`LIFT`] of another, in one call: a write
/// whose answer has a body to come hands its tags to a second fence, which
/// must be in the log before the first is lifted (`writes::Answering`).
/// One round trip where the two scripts in turn take two. KEYS: the
/// lift's, then the fence's. ARGV: how many of KEYS are the lift's, how
/// many of the rest of ARGV are the lift's, the lift's ARGV, the fence's
/// ARGV. Returns the lift's answer, or -1 if the fence was already held
/// (nothing lifted: the caller takes the two steps).
pub(super) fn hand_over_script() -> String {
    format!(
        "local function fence(KEYS, ARGV)\n{FENCE}\nend\n\
         local function lift(KEYS, ARGV)\n{LIFT}\nend\n{HAND_OVER}"
    )
}

const HAND_OVER: &str = r#"
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local lk, la, fk, fa = {}, {}, {}, {}
for i = 1, #KEYS do
  if i <= nk then lk[#lk + 1] = KEYS[i] else fk[#fk + 1] = KEYS[i] end
end
for i = 3, #ARGV do
  if i - 2 <= na then la[#la + 1] = ARGV[i] else fa[#fa + 1] = ARGV[i] end
end
if fence(fk, fa) == 0 then
  return -1
end
return lift(lk, la)
"#;

/// Lifts, with invalidation, fences whose deadline passed (their writer died
/// or lost Redis) — everything, when the rules that planned the write are
/// not the fleet's any more. KEYS: clock, fences set. ARGV: key prefix, tag
/// key TTL (ms), FENCE_UNIT, invalidation channel, fence channel, this
/// replica's ms, how many at most, the `a:all` tag. Returns how many it
/// lifted.
pub(super) const SWEEP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
local unit = tonumber(ARGV[3])
local active = redis.call('GET', ARGV[1] .. 'rules:active')
local n = 0
local function invalidate(tag, s, lift)
  local k = ARGV[1] .. 'i:' .. tag
  local fences = math.floor(tonumber(redis.call('GET', k) or '0') / unit)
  if lift and fences > 0 then fences = fences - 1 end
  redis.call('SET', k, string.format('%.0f', fences * unit + s), 'PX', ARGV[2])
end
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  local rec = ARGV[1] .. 'fence:' .. id
  local record = redis.call('GET', rec)
  redis.call('DEL', rec)
  if record then
    local rules, tags = string.match(record, '^([^\n]*)\n(.*)$')
    if not tags then rules, tags = '', record end
    local s = redis.call('INCR', KEYS[1])
    for tag in string.gmatch(tags, '[^\n]+') do
      invalidate(tag, s, true)
    end
    local published = tags
    if active and active ~= rules then
      invalidate(ARGV[8], s, false)
      published = published .. '\n' .. ARGV[8]
    end
    redis.call('PUBLISH', ARGV[4], s .. ' ' .. ARGV[6] .. '\n' .. published)
    redis.call('PUBLISH', ARGV[5], '-\n' .. tags)
    n = n + 1
  end
end
return n
"#;

/// Says this replica runs rules `ARGV[1]` and returns the fingerprints
/// heard from in the last `ARGV[2]` ms (forgetting ones silent for ten
/// times that). KEYS: the rules hash. ARGV: fingerprint, alive ms, hash TTL.
pub(super) const RULES_HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local alive = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local age = now - tonumber(all[i + 1])
  if age > 10 * tonumber(ARGV[2]) or age < -tonumber(ARGV[2]) then
    -- Silent long since, or from before Redis's clock went back.
    redis.call('HDEL', KEYS[1], all[i])
  elseif age <= tonumber(ARGV[2]) then
    table.insert(alive, all[i])
  end
end
return alive
"#;

/// The fleet runs rules `ARGV[1]` alone: if they are not the ones it last
/// ran alone, nothing cached before now can be trusted (its tags are another
/// rule set's, and writes in between were planned by yet other rules), so
/// everything is invalidated — the `a:all` tag every entry carries, its
/// fence count kept. KEYS: active rules key, clock, `a:all`'s tag key. ARGV:
/// fingerprint, tag key TTL (ms), FENCE_UNIT, invalidation channel, this
/// replica's ms, the `a:all` tag. Returns the clock value of the
/// invalidation, or 0 when the rules did not change.
pub(super) const ACTIVATE_RULES: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
local s = redis.call('INCR', KEYS[2])
local unit = tonumber(ARGV[3])
local fences = math.floor(tonumber(redis.call('GET', KEYS[3]) or '0') / unit)
redis.call('SET', KEYS[3], string.format('%.0f', fences * unit + s), 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[4], s .. ' ' .. ARGV[5] .. '\n' .. ARGV[6])
return s
"#;

/// How far the clock moves when a run's log cannot be trusted as it is:
/// more clock values than its replication could ever have lost (see
/// [`HOLDER`]). 32,768 such moves in one run reach half of `FENCE_UNIT`,
/// where the holder script refuses to go on.
pub(super) const HOLDER_GAP: u64 = 1 << 24;

/// How long a replica's beat lives in the log (see [`HOLDER`]). A record
/// outlives the entries it may invalidate by `LIFETIME_MARGIN`, less the
/// time their fill took (at most `MAX_FILL`): a jump, or jumps within one
/// beat, of more than that (40 minutes) expire every beat first.
pub(super) const BEAT_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// For a replica whose beat was set at `beat_at` (`mono_ms`, 0: never),
/// now: whether the beat must still be there (until a minute past half its
/// life, so that the check that sets the next one looks for it too), and
/// whether a new one is due (from half its life on).
pub(super) fn beat_plan(beat_at: u64, now: u64) -> (bool, bool) {
    let since = now.saturating_sub(beat_at);
    let half = BEAT_TTL.as_millis() as u64 / 2;
    let expected = beat_at != 0 && since <= half + 60_000;
    (expected, beat_at == 0 || since >= half)
}
const _: () =
    assert!(clock::MAX_FILL.as_secs() + BEAT_TTL.as_secs() < clock::LIFETIME_MARGIN.as_secs());

/// Run `ARGV[1]` holds the log now. The replica asking saw its clock reach
/// `ARGV[3]`, and recorded an invalidation at clock value `ARGV[4]` (0:
/// none lately), which its marker in the log (KEYS[4], written by [`LIFT`]
/// in the same step) must still show. This run's copy of the log cannot be
/// trusted as it is when the holder key names another run (the process
/// held the log before, another held it meanwhile — a failover and back, a
/// reshard and back, a primary demoted and promoted — and recorded there
/// what this copy lacks; the key came back with the data), when this run's
/// floor is gone, when its clock is below what the replica saw, or when the
/// replica's marker is below its last record (the copy lost records:
/// asynchronous replication, a restore; later increments by others can
/// hide a lost clock value, not a lost marker), or when the replica's beat
/// (KEYS[5]), which it set here and still expects (`ARGV[7]` is 1), is
/// gone: Redis's clock jumped forward (a host's clock stepped), and records
/// expired that entries still alive in replicas' memory need. Then nothing
/// fetched before now is trusted: the clock moves past all of it by
/// `ARGV[2]` (past values the copy may have lost; by 1 after a jump alone),
/// that value is the floor of this hold, and the marker is set again. The
/// beat is set after a jump and when due (`ARGV[9]` is 1, every half its
/// life), never refreshed in between, so that jumps in that time add up.
/// KEYS: holder, clock, floor, marker, beat. ARGV: run, gap, clock seen,
/// last record, the clock's limit, the marker's TTL (ms), beat expected,
/// the beat's TTL (ms), beat due. Returns the floor, and 1 if the beat was
/// set (not while Redis refuses writes). Every replica runs it when it
/// connects and at every check, and adopts the floor. A new log gets a
/// floor too, harmlessly.
pub(super) const HOLDER: &str = r#"
local floor = redis.call('GET', KEYS[3])
local clock = tonumber(redis.call('GET', KEYS[2]) or '0')
local seen = tonumber(ARGV[3])
local recorded = tonumber(ARGV[4])
local lost = recorded > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') < recorded
local jumped = ARGV[7] == '1' and redis.call('EXISTS', KEYS[5]) == 0
local beat = 0
if ARGV[9] == '1' or jumped then
  -- A Redis refusing writes (full, a failed save) must not fail the script.
  local set = redis.pcall('SET', KEYS[5], '1', 'PX', ARGV[8])
  beat = (type(set) == 'table' and set.ok) and 1 or 0
end
local untrusted = redis.call('GET', KEYS[1]) ~= ARGV[1] or not floor or clock < seen or lost
if untrusted or jumped then
  -- A jump alone loses no clock value (the clock key never expires): past
  -- what was read is enough, and spares the clock's limited moves.
  local gap = untrusted and tonumber(ARGV[2]) or 1
  local moved = math.max(clock, seen) + gap
  if moved >= tonumber(ARGV[5]) then
    return redis.error_reply('freshgate: this log clock is near its limit (moved too often): restart this redis')
  end
  local s = string.format('%.0f', moved)
  redis.call('SET', KEYS[2], s)
  redis.call('SET', KEYS[3], s)
  redis.call('SET', KEYS[1], ARGV[1])
  if recorded > 0 then redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[6]) end
  return {tonumber(s), beat}
end
return {tonumber(floor), beat}
"#;

/// What one write still needs recorded.
#[derive(Debug, Clone)]
pub(super) struct OwedWrite {
    /// The tags it fences while in flight.
    pub(super) tags: BTreeSet<String>,
    /// The fingerprint of the rules that planned it.
    pub(super) rules: u64,
    /// The epoch (Redis run) its fence is recorded in, if any.
    pub(super) fenced_in: Option<u64>,
    /// Set once its outcome is known: the lift to record.
    pub(super) end: Option<End>,
}

#[derive(Debug, Clone)]
pub(super) struct End {
    /// Tags only the write's answer named (`Location`, groups).
    pub(super) extra: BTreeSet<String>,
    pub(super) invalidate: bool,
}

/// Writes of this replica that are in flight or not fully recorded. Nothing
/// leaves it unrecorded: a lift leaves it only once Redis has it.
#[derive(Debug, Default)]
pub(super) struct Owed {
    pub(super) writes: HashMap<u64, OwedWrite>,
}

impl Owed {
    /// Whether anything must be recorded in run `epoch` before this replica
    /// may serve from the shared tier: a lift not yet recorded, or a write in
    /// flight whose fence is not in that run.
    pub(super) fn owes(&self, epoch: Option<u64>) -> bool {
        self.writes
            .values()
            .any(|w| w.end.is_some() || w.fenced_in.is_none() || w.fenced_in != epoch)
    }

    /// Writes with something to record in run `epoch`.
    /// Fences come first: a write's answer is fenced again before its
    /// first fence is lifted (a body to come), and recorded after an outage
    /// in another order the two would leave a moment unfenced.
    pub(super) fn due(&self, epoch: u64) -> Vec<(u64, OwedWrite)> {
        let mut due: Vec<_> = self
            .writes
            .iter()
            .filter(|(_, w)| w.end.is_some() || w.fenced_in != Some(epoch))
            .map(|(id, w)| (*id, w.clone()))
            .collect();
        due.sort_by_key(|(_, w)| w.end.is_some());
        due
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_beat_is_looked_for_until_the_check_that_replaces_it_has_looked() {
        let half = BEAT_TTL.as_millis() as u64 / 2;
        let at = 1_000;
        assert_eq!(beat_plan(0, 5), (false, true), "never set");
        assert_eq!(beat_plan(at, at + half - 1), (true, false));
        assert_eq!(
            beat_plan(at, at + half),
            (true, true),
            "replaced, and looked for"
        );
        assert_eq!(beat_plan(at, at + half + 60_000), (true, true));
        assert_eq!(beat_plan(at, at + half + 60_001), (false, true), "stalled");
    }

    use super::*;

    #[test]
    fn a_fence_reads_as_invalid_whatever_the_fetch() {
        assert!(allows(None, 0));
        assert!(allows(Some(7), 7));
        assert!(!allows(Some(8), 7));
        assert!(!allows(Some(FENCE_UNIT + 3), u64::MAX >> 1));
        assert!(fenced(Some(FENCE_UNIT)));
        assert!(!fenced(Some(FENCE_UNIT - 1)));
    }

    #[test]
    fn what_is_owed_depends_on_the_run() {
        let mut o = Owed::default();
        assert!(!o.owes(None));
        let w = |fenced_in, end: Option<End>| OwedWrite {
            tags: BTreeSet::from(["t".to_string()]),
            rules: 7,
            fenced_in,
            end,
        };
        o.writes.insert(1, w(Some(3), None));
        assert!(!o.owes(Some(3)), "fenced in this run, still in flight");
        assert!(o.owes(Some(4)), "a new run has no record of its fence");
        assert_eq!(o.due(4).len(), 1);
        o.writes.insert(
            2,
            w(
                Some(3),
                Some(End {
                    extra: BTreeSet::new(),
                    invalidate: true,
                }),
            ),
        );
        assert!(o.owes(Some(3)), "a lift not yet recorded");
        assert_eq!(o.due(3).len(), 1);
        // In a new run both are due, the fence before the lift, whatever
        // order the map keeps them in.
        for id in 3..40 {
            o.writes.insert(id, w(None, None));
        }
        let due = o.due(4);
        let first_lift = due.iter().position(|(_, w)| w.end.is_some()).unwrap();
        assert!(due[first_lift..].iter().all(|(_, w)| w.end.is_some()));
        assert_eq!(due.len(), 39);
    }
}
