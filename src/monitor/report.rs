//! `/api/metrics`: counters over a time range, grouped, as JSON or CSV.
//!
//! Durations are milliseconds, as in the app team's monitoring API.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use super::series::{entries, Bucket, Kind, Stat};
use super::Scope;
use crate::outcome::Outcome;
use crate::time::rfc3339;

/// `timeRange` values: (name, length, bucket size), seconds.
pub const TIME_RANGES: [(&str, u64, u64); 5] = [
    ("1h", 3600, 60),
    ("6h", 6 * 3600, 300),
    ("24h", 24 * 3600, 900),
    ("7d", 7 * 86_400, 3600),
    ("30d", 30 * 86_400, 6 * 3600),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Route rules (requests, and how often each route was invalidated).
    Route,
    /// `X-Cache` results.
    Result,
    /// Results plus invalidating writes and purges.
    Operation,
    /// Invalidation rules, by the writes they matched.
    Rule,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "route" => Some(GroupBy::Route),
            "result" => Some(GroupBy::Result),
            "operation" => Some(GroupBy::Operation),
            "rule" => Some(GroupBy::Rule),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Route => "route",
            GroupBy::Result => "result",
            GroupBy::Operation => "operation",
            GroupBy::Rule => "rule",
        }
    }
}

/// Sums for one group (or for everything).
#[derive(Debug, Default, Clone)]
pub struct Agg {
    /// Every proxied request: count, errors, latency.
    pub all: Stat,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Times the route's entries were invalidated by writes
    /// (`Kind::Invalidated`): in the summary and by route (none by rule;
    /// writes are in `writes`).
    pub invalidations: u64,
    pub writes: u64,
    pub purges: u64,
}

impl Agg {
    fn add(&mut self, kind: Kind, s: &Stat) {
        match kind {
            Kind::Write => self.writes += s.count,
            Kind::Invalidated => self.invalidations += s.count,
            Kind::Purge => self.purges += s.count,
            _ => {
                self.all.merge(s);
                *self.by_kind.entry(kind.code()).or_default() += s.count;
            }
        }
    }

    fn n(&self, kind: Kind) -> u64 {
        self.by_kind.get(kind.code()).copied().unwrap_or(0)
    }

    pub fn hits(&self) -> u64 {
        self.n(Kind::Request(Outcome::Hit)) + self.n(Kind::Request(Outcome::Stale))
    }

    pub fn misses(&self) -> u64 {
        self.n(Kind::Request(Outcome::Miss))
    }

    /// Hits (and stale hits) over lookups; `None` without lookups.
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.hits() + self.misses();
        (lookups > 0).then(|| self.hits() as f64 / lookups as f64)
    }

    fn json(&self) -> Value {
        json!({
            "requests": self.all.count,
            "hits": self.n(Kind::Request(Outcome::Hit)),
            "misses": self.misses(),
            "stale": self.n(Kind::Request(Outcome::Stale)),
            "bypass": self.n(Kind::Request(Outcome::Bypass)),
            "pass": self.n(Kind::Request(Outcome::Pass)),
            "hitRate": self.hit_rate(),
            "averageDuration": round(self.all.mean_ms()),
            "p95Duration": round(self.all.quantile_ms(0.95)),
            "p99Duration": round(self.all.quantile_ms(0.99)),
            "errors": self.all.errors,
            "errorRate": (self.all.count > 0).then(|| self.all.errors as f64 / self.all.count as f64),
            "invalidations": self.invalidations,
            "writes": self.writes,
            "purges": self.purges,
        })
    }
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// The group a counted (name, kind) falls in, if any.
fn group_of(by: GroupBy, name: &str, kind: Kind) -> Option<String> {
    match by {
        GroupBy::Route => (!matches!(kind, Kind::Write | Kind::Purge)).then(|| name.to_string()),
        GroupBy::Result => kind.is_request().then(|| kind.code().to_string()),
        GroupBy::Rule => (kind == Kind::Write).then(|| name.to_string()),
        GroupBy::Operation => Some(
            match kind {
                Kind::Write => "invalidate",
                Kind::Invalidated => return None,
                k => k.code(),
            }
            .to_string(),
        ),
    }
}

/// Group sums over all buckets, and per bucket.
pub struct Report {
    pub range: &'static str,
    pub by: GroupBy,
    pub scope: Scope,
    pub from: u64,
    pub to: u64,
    pub step: u64,
    pub total: Agg,
    pub groups: BTreeMap<String, Agg>,
    pub series: BTreeMap<u64, (Agg, BTreeMap<String, Agg>)>,
}

impl Report {
    pub fn build(
        range: &'static str,
        by: GroupBy,
        scope: Scope,
        (from, to, step): (u64, u64, u64),
        buckets: &BTreeMap<u64, Bucket>,
    ) -> Report {
        let mut r = Report {
            range,
            by,
            scope,
            from,
            to,
            step,
            total: Agg::default(),
            groups: BTreeMap::new(),
            series: BTreeMap::new(),
        };
        for (t, bucket) in buckets {
            let (bt, bg) = r.series.entry(*t).or_default();
            for (name, kind, s) in entries(bucket) {
                r.total.add(kind, s);
                bt.add(kind, s);
                if let Some(g) = group_of(by, name, kind) {
                    r.groups.entry(g.clone()).or_default().add(kind, s);
                    bg.entry(g).or_default().add(kind, s);
                }
            }
        }
        r
    }

    pub fn json(&self) -> Value {
        let time = |t: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(t));
        let mut groups: Vec<(&String, &Agg)> = self.groups.iter().collect();
        groups.sort_by(|a, b| b.1.all.count.cmp(&a.1.all.count).then(a.0.cmp(b.0)));
        json!({
            "timeRange": self.range,
            "groupBy": self.by.as_str(),
            "scope": self.scope.as_str(),
            "from": time(self.from),
            "to": time(self.to),
            "bucketSeconds": self.step,
            "summary": self.total.json(),
            "groups": groups.iter().map(|(name, a)| {
                let mut v = a.json();
                v["name"] = json!(name);
                v
            }).collect::<Vec<_>>(),
            "series": self.series.iter().map(|(t, (total, groups))| json!({
                "timestamp": time(*t),
                "summary": total.json(),
                "groups": groups.iter().map(|(n, a)| (n.clone(), a.json())).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// One row per (bucket, group), oldest first.
    pub fn csv(&self) -> Result<String, csv::Error> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([
            "timestamp",
            "group",
            "requests",
            "hits",
            "misses",
            "stale",
            "bypass",
            "pass",
            "hit_rate",
            "avg_ms",
            "p95_ms",
            "p99_ms",
            "errors",
            "invalidations",
            "writes",
            "purges",
        ])?;
        for (t, (_, groups)) in &self.series {
            let ts = rfc3339(UNIX_EPOCH + Duration::from_secs(*t));
            for (name, a) in groups {
                w.write_record([
                    ts.clone(),
                    name.clone(),
                    a.all.count.to_string(),
                    a.n(Kind::Request(Outcome::Hit)).to_string(),
                    a.misses().to_string(),
                    a.n(Kind::Request(Outcome::Stale)).to_string(),
                    a.n(Kind::Request(Outcome::Bypass)).to_string(),
                    a.n(Kind::Request(Outcome::Pass)).to_string(),
                    a.hit_rate().map_or(String::new(), |r| format!("{r:.4}")),
                    format!("{:.3}", a.all.mean_ms()),
                    format!("{:.3}", a.all.quantile_ms(0.95)),
                    format!("{:.3}", a.all.quantile_ms(0.99)),
                    a.all.errors.to_string(),
                    a.invalidations.to_string(),
                    a.writes.to_string(),
                    a.purges.to_string(),
                ])?;
            }
        }
        let bytes = w.into_inner().map_err(|e| e.into_error())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::series::update;

    #[test]
    fn groups_and_csv() {
        let mut b = Bucket::new();
        for _ in 0..7 {
            update(&mut b, "scene", Kind::Request(Outcome::Hit), |s| {
                s.observe(1000, false)
            });
        }
        for _ in 0..3 {
            update(&mut b, "scene", Kind::Request(Outcome::Miss), |s| {
                s.observe(30_000, false)
            });
        }
        update(&mut b, "scene", Kind::Invalidated, |s| s.count += 2);
        update(&mut b, "edit-scene", Kind::Write, |s| s.count += 2);
        let buckets = BTreeMap::from([(600, b)]);
        let r = Report::build(
            "1h",
            GroupBy::Route,
            Scope::ThisReplica,
            (0, 3600, 60),
            &buckets,
        );
        assert_eq!(r.total.hit_rate(), Some(0.7));
        assert_eq!(r.groups.len(), 1, "writes are not a route group");
        assert_eq!(r.groups["scene"].invalidations, 2);
        let ops = Report::build(
            "1h",
            GroupBy::Operation,
            Scope::ThisReplica,
            (0, 3600, 60),
            &buckets,
        );
        assert_eq!(ops.groups["invalidate"].writes, 2);
        assert_eq!(ops.groups["hit"].all.count, 7);
        let csv = r.csv().expect("csv");
        let mut rows = csv::Reader::from_reader(csv.as_bytes());
        let row = rows.records().next().expect("a row").expect("parses");
        assert_eq!(&row[1], "scene");
        assert_eq!(&row[8], "0.7000");
    }
}
