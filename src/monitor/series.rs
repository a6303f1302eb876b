//! Counters over time: what the proxy did, per minute, by name and kind.
//!
//! A bucket maps a name (a route rule, an invalidation rule) to one [`Stat`]
//! per [`Kind`]. Latency is kept as a fixed-bound histogram, so buckets from
//! different minutes and different replicas merge by adding numbers (which is
//! what Redis `HINCRBY` does), and percentiles are read from the merged
//! histogram. The price is resolution: a percentile is interpolated inside
//! its bucket (bounds below), which is plenty to tell 50 ms from 2 s.
//!
//! [`Series`] keeps minute buckets for a day and folds older ones into hour
//! buckets kept for 30 days, so memory is bounded by (names x kinds x 2,160).

use std::collections::{BTreeMap, HashMap};

use crate::outcome::Outcome;

/// Upper bounds of the latency buckets, in microseconds; one more bucket
/// catches everything above the last.
pub const LATENCY_BOUNDS_US: [u64; 20] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 300_000, 500_000,
    750_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000, 5_000_000, 10_000_000, 30_000_000,
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

pub const MINUTE: u64 = 60;
pub const HOUR: u64 = 3600;
/// Minute buckets cover this much; older minutes are folded into hours.
pub const MINUTES_KEPT: u64 = 24 * HOUR;
/// Hour buckets cover this much.
pub const HOURS_KEPT: u64 = 30 * 24 * HOUR;

/// What a counted event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Proxied requests, by route rule, with their `X-Cache` result.
    Request(Outcome),
    /// A write whose answer invalidated (any final status but 4xx; writes
    /// left unanswered are not counted), by the invalidation rule it matched
    /// (`(unmatched)` when none did, `(all)` when rules are off or mixed).
    Write,
    /// A route's entries were invalidated by a write (its own route and the
    /// routes its rules purge), by route rule; admin purges count only as
    /// `Purge`.
    Invalidated,
    /// An admin purge.
    Purge,
}

pub const KINDS: [Kind; 8] = [
    Kind::Request(Outcome::Hit),
    Kind::Request(Outcome::Miss),
    Kind::Request(Outcome::Stale),
    Kind::Request(Outcome::Bypass),
    Kind::Request(Outcome::Pass),
    Kind::Write,
    Kind::Invalidated,
    Kind::Purge,
];

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Request(o) => o.label(),
            Kind::Write => "write",
            Kind::Invalidated => "invalidated",
            Kind::Purge => "purge",
        }
    }

    pub fn from_code(s: &str) -> Option<Kind> {
        KINDS.iter().copied().find(|k| k.code() == s)
    }

    /// A proxied request (as opposed to an invalidation event).
    pub fn is_request(self) -> bool {
        matches!(self, Kind::Request(_))
    }

    /// Its place in [`KINDS`] (and in a bucket's stats).
    fn index(self) -> usize {
        match self {
            Kind::Request(o) => o as usize,
            Kind::Write => Outcome::ALL.len(),
            Kind::Invalidated => Outcome::ALL.len() + 1,
            Kind::Purge => Outcome::ALL.len() + 2,
        }
    }
}

/// Counts for one (bucket, name, kind).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stat {
    pub count: u64,
    /// Responses with a 5xx status.
    pub errors: u64,
    pub sum_us: u64,
    /// Latency histogram (empty until a duration is observed).
    pub latency: Vec<u64>,
}

impl Stat {
    pub fn observe(&mut self, micros: u64, error: bool) {
        self.count += 1;
        self.errors += u64::from(error);
        self.sum_us += micros;
        if self.latency.is_empty() {
            self.latency = vec![0; LATENCY_BUCKETS];
        }
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < micros);
        self.latency[i] += 1;
    }

    pub fn merge(&mut self, other: &Stat) {
        self.count += other.count;
        self.errors += other.errors;
        self.sum_us += other.sum_us;
        if !other.latency.is_empty() {
            if self.latency.is_empty() {
                self.latency = vec![0; LATENCY_BUCKETS];
            }
            for (a, b) in self.latency.iter_mut().zip(&other.latency) {
                *a += b;
            }
        }
    }

    /// Mean latency in milliseconds (0 without observations).
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64 / 1000.0
        }
    }

    /// The `q` quantile of latency in milliseconds, interpolated linearly
    /// inside its histogram bucket; 0 without observations.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.latency.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let lo = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
                // Above the last bound there is no upper edge: report the bound.
                let hi = LATENCY_BOUNDS_US.get(i).copied().unwrap_or(lo);
                let frac = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return (lo as f64 + frac * (hi - lo) as f64) / 1000.0;
            }
            below += n;
        }
        LATENCY_BOUNDS_US[LATENCY_BOUNDS_US.len() - 1] as f64 / 1000.0
    }
}

/// One time bucket: name -> stats by kind.
pub type Bucket = HashMap<String, [Stat; KINDS.len()]>;

/// Add `f` applied to the (name, kind) stat of `bucket`.
pub fn update(bucket: &mut Bucket, name: &str, kind: Kind, f: impl FnOnce(&mut Stat)) {
    // Look up by &str first: the common case allocates nothing.
    if let Some(stats) = bucket.get_mut(name) {
        f(&mut stats[kind.index()]);
        return;
    }
    let mut stats: [Stat; KINDS.len()] = Default::default();
    f(&mut stats[kind.index()]);
    bucket.insert(name.to_string(), stats);
}

pub fn merge_bucket(into: &mut Bucket, from: &Bucket) {
    for (name, stats) in from {
        let dst = into.entry(name.clone()).or_default();
        for (d, s) in dst.iter_mut().zip(stats) {
            d.merge(s);
        }
    }
}

/// Iterate the non-empty (name, kind, stat) of a bucket.
pub fn entries(bucket: &Bucket) -> impl Iterator<Item = (&str, Kind, &Stat)> {
    bucket.iter().flat_map(|(name, stats)| {
        KINDS
            .iter()
            .zip(stats.iter())
            .filter(|(_, s)| s.count > 0)
            .map(move |(k, s)| (name.as_str(), *k, s))
    })
}

/// Minute buckets for a day, then hour buckets for a month.
#[derive(Debug, Default)]
pub struct Series {
    minutes: BTreeMap<u64, Bucket>,
    hours: BTreeMap<u64, Bucket>,
}

impl Series {
    /// The bucket for unix time `t` (seconds); prunes as time moves on.
    pub fn at(&mut self, t: u64) -> &mut Bucket {
        let start = t - t % MINUTE;
        if !self.minutes.contains_key(&start) {
            self.prune(start);
        }
        self.minutes.entry(start).or_default()
    }

    fn prune(&mut self, now: u64) {
        let keep_from = now.saturating_sub(MINUTES_KEPT);
        while let Some(entry) = self.minutes.first_entry() {
            if *entry.key() >= keep_from {
                break;
            }
            let (t, bucket) = entry.remove_entry();
            merge_bucket(self.hours.entry(t - t % HOUR).or_default(), &bucket);
        }
        let keep_hours_from = now.saturating_sub(HOURS_KEPT);
        while let Some(entry) = self.hours.first_entry() {
            if *entry.key() >= keep_hours_from {
                break;
            }
            entry.remove();
        }
    }

    /// Buckets re-cut to `step` seconds, for `[from, to)`.
    pub fn query(&self, from: u64, to: u64, step: u64) -> BTreeMap<u64, Bucket> {
        let mut out: BTreeMap<u64, Bucket> = BTreeMap::new();
        for (t, b) in self.hours.range(from - from % HOUR..to) {
            merge_bucket(out.entry(t - t % step).or_default(), b);
        }
        for (t, b) in self.minutes.range(from - from % MINUTE..to) {
            merge_bucket(out.entry(t - t % step).or_default(), b);
        }
        out
    }

    /// Take the minute buckets out (the pending deltas of a flush to Redis)
    /// and drop the hour buckets: once flushed, Redis holds the history.
    pub fn take(&mut self) -> BTreeMap<u64, Bucket> {
        self.hours.clear();
        std::mem::take(&mut self.minutes)
    }

    /// Put buckets back (a flush that failed).
    pub fn restore(&mut self, buckets: BTreeMap<u64, Bucket>) {
        for (t, b) in buckets {
            merge_bucket(self.minutes.entry(t).or_default(), &b);
        }
    }
}

// === the Redis encoding: one hash per bucket, one field per number ===
//
// Field names are `kind|name|what` where `what` is `n` (count), `e` (errors),
// `s` (sum of microseconds) or `l<i>` (latency bucket i). The name sits in
// the middle, so it may contain `|`.

pub fn fields(bucket: &Bucket) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (name, kind, s) in entries(bucket) {
        let f = |what: &str| format!("{}|{name}|{what}", kind.code());
        out.push((f("n"), s.count));
        if s.errors > 0 {
            out.push((f("e"), s.errors));
        }
        if s.sum_us > 0 {
            out.push((f("s"), s.sum_us));
        }
        for (i, &n) in s.latency.iter().enumerate() {
            if n > 0 {
                out.push((f(&format!("l{i}")), n));
            }
        }
    }
    out
}

/// Parse fields written by [`fields`] (unknown ones are skipped: a newer
/// replica may write more).
pub fn from_fields(fields: &HashMap<String, u64>) -> Bucket {
    let mut bucket = Bucket::new();
    for (field, &v) in fields {
        let Some((kind, rest)) = field.split_once('|') else {
            continue;
        };
        let Some((name, what)) = rest.rsplit_once('|') else {
            continue;
        };
        let Some(kind) = Kind::from_code(kind) else {
            continue;
        };
        update(&mut bucket, name, kind, |s| match what {
            "n" => s.count += v,
            "e" => s.errors += v,
            "s" => s.sum_us += v,
            l => {
                if let Some(i) = l
                    .strip_prefix('l')
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < LATENCY_BUCKETS)
                {
                    if s.latency.is_empty() {
                        s.latency = vec![0; LATENCY_BUCKETS];
                    }
                    s.latency[i] += v;
                }
            }
        });
    }
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut s = Stat::default();
        for _ in 0..95 {
            s.observe(800, false); // (500, 1000] µs
        }
        for _ in 0..5 {
            s.observe(2_500_000, true); // (2 s, 3 s]
        }
        assert_eq!(s.count, 100);
        assert_eq!(s.errors, 5);
        let p50 = s.quantile_ms(0.5);
        assert!(p50 > 0.5 && p50 <= 1.0, "p50 {p50}");
        let p99 = s.quantile_ms(0.99);
        assert!(p99 > 2000.0 && p99 <= 3000.0, "p99 {p99}");
        assert!((s.mean_ms() - (95.0 * 0.8 + 5.0 * 2500.0) / 100.0).abs() < 1e-9);
    }

    #[test]
    fn redis_fields_round_trip() {
        let mut b = Bucket::new();
        update(&mut b, "a|b", Kind::Request(Outcome::Hit), |s| {
            s.observe(1234, false)
        });
        update(&mut b, "a|b", Kind::Request(Outcome::Miss), |s| {
            s.observe(50_000, true)
        });
        update(&mut b, "rule", Kind::Write, |s| s.count += 3);
        let map: HashMap<String, u64> = fields(&b).into_iter().collect();
        assert_eq!(from_fields(&map), b);
    }

    #[test]
    fn old_minutes_fold_into_hours_and_queries_see_both() {
        let mut s = Series::default();
        let t0 = 1_000 * HOUR;
        update(s.at(t0), "r", Kind::Request(Outcome::Hit), |s| {
            s.observe(100, false)
        });
        update(s.at(t0 + 61), "r", Kind::Request(Outcome::Hit), |s| {
            s.observe(100, false)
        });
        // A day later the first minutes are folded into their hour.
        let later = t0 + MINUTES_KEPT + 2 * MINUTE;
        update(s.at(later), "r", Kind::Request(Outcome::Miss), |s| {
            s.observe(100, false)
        });
        assert_eq!(s.minutes.len(), 1);
        assert_eq!(s.hours.len(), 1);
        let all = s.query(t0, later + 1, HOURS_KEPT);
        let b = all.values().next().expect("one bucket");
        assert_eq!(b["r"][Kind::Request(Outcome::Hit).index()].count, 2);
        // `entries` and the Redis copy pair KINDS with stats by position.
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(k.index(), i, "{k:?}");
        }
        assert_eq!(b["r"][Kind::Request(Outcome::Miss).index()].count, 1);
    }
}
