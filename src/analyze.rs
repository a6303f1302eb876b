//! `freshgate analyze`: a report for people in a terminal, from a running
//! freshgate's admin API (what the app team's `cache-analysis` script did):
//! hit rate by route, top misses, top invalidating writes, unmatched writes,
//! active alerts, and recommendations.
//!
//! The report is built from JSON ([`report`]) so it can be tested without
//! a network; [`fetch`] is the thin HTTP part.

use std::fmt::Write as _;

use serde_json::Value;

/// Read-only calls to the admin API. `ureq` is a small blocking client: a
/// CLI that makes four GETs needs no async runtime.
pub fn fetch(admin: &str, range: &str, token: Option<&str>) -> Result<Inputs, String> {
    let base = admin.trim_end_matches('/');
    let get = |path: &str| -> Result<Value, String> {
        let url = format!("{base}{path}");
        let mut req = ureq::get(&url);
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| match e {
            ureq::Error::StatusCode(401) => format!(
                "{url}: 401 — the admin API needs a token (--token or FRESHGATE_ADMIN_TOKEN)"
            ),
            e => format!("{url}: {e}"),
        })?;
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{url}: not JSON: {e}"))
    };
    Ok(Inputs {
        by_route: get(&format!("/api/metrics?timeRange={range}&groupBy=route"))?,
        by_rule: get(&format!("/api/metrics?timeRange={range}&groupBy=rule"))?,
        unmatched: get("/api/unmatched-writes")?,
        monitoring: get("/api/monitoring")?,
        // Older freshgate builds have no such endpoint.
        cookies: get("/api/bypassed-cookies").unwrap_or_default(),
    })
}

/// What the report is made of: four admin API answers.
pub struct Inputs {
    pub by_route: Value,
    pub by_rule: Value,
    pub unmatched: Value,
    pub monitoring: Value,
    pub cookies: Value,
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// Reads (hits + misses + stale) of a route group.
fn reads(g: &Value) -> u64 {
    n(&g["hits"]) + n(&g["misses"]) + n(&g["stale"])
}

pub fn report(i: &Inputs) -> String {
    let mut out = String::new();
    let r = &i.by_route;
    let s = &r["summary"];
    let _ = writeln!(
        out,
        "freshgate analysis: last {} ({}), {} to {}",
        r["timeRange"].as_str().unwrap_or("?"),
        r["scope"].as_str().unwrap_or("?"),
        r["from"].as_str().unwrap_or("?"),
        r["to"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        out,
        "overall: {} requests, hit rate {}, average {:.1} ms, P95 {:.1} ms, P99 {:.1} ms, 5xx {}",
        n(&s["requests"]),
        pct(&s["hitRate"]),
        s["averageDuration"].as_f64().unwrap_or(0.0),
        s["p95Duration"].as_f64().unwrap_or(0.0),
        s["p99Duration"].as_f64().unwrap_or(0.0),
        pct(&s["errorRate"]),
    );
    let empty = Vec::new();
    let routes = r["groups"].as_array().unwrap_or(&empty);

    let _ = writeln!(out, "\nhit rate by route");
    let _ = writeln!(
        out,
        "  {:<24} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>12}",
        "route", "requests", "hits", "misses", "bypass", "hit rate", "p95 ms", "invalidated"
    );
    for g in routes {
        let _ = writeln!(
            out,
            "  {:<24} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9.1} {:>12}",
            g["name"].as_str().unwrap_or("-"),
            n(&g["requests"]),
            n(&g["hits"]),
            n(&g["misses"]),
            n(&g["bypass"]),
            pct(&g["hitRate"]),
            g["p95Duration"].as_f64().unwrap_or(0.0),
            n(&g["invalidations"]),
        );
    }

    let mut misses: Vec<&Value> = routes.iter().filter(|g| n(&g["misses"]) > 0).collect();
    misses.sort_by_key(|g| std::cmp::Reverse(n(&g["misses"])));
    let total_misses = n(&s["misses"]).max(1);
    let _ = writeln!(out, "\ntop misses");
    if misses.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for g in misses.iter().take(10) {
        let _ = writeln!(
            out,
            "  {:<24} {:>8} misses  {:>5.1}% of all misses",
            g["name"].as_str().unwrap_or("-"),
            n(&g["misses"]),
            n(&g["misses"]) as f64 * 100.0 / total_misses as f64
        );
    }

    let mut writes: Vec<&Value> = i.by_rule["groups"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|g| n(&g["writes"]) > 0)
        .collect();
    writes.sort_by_key(|g| std::cmp::Reverse(n(&g["writes"])));
    let _ = writeln!(out, "\ntop invalidating writes (by invalidation rule)");
    if writes.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for g in writes.iter().take(10) {
        let _ = writeln!(
            out,
            "  {:<32} {:>8} writes",
            g["name"].as_str().unwrap_or("-"),
            n(&g["writes"])
        );
    }

    let unmatched = i.unmatched["writes"].as_array().unwrap_or(&empty);
    let _ = writeln!(out, "\nunmatched writes (no invalidation rule covers them)");
    if unmatched.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for w in unmatched.iter().take(10) {
        let _ = writeln!(
            out,
            "  {:<7} {:<40} {:>6}x  route {}",
            w["method"].as_str().unwrap_or("?"),
            w["shape"].as_str().unwrap_or("?"),
            n(&w["count"]),
            w["route"].as_str().unwrap_or("-"),
        );
    }

    let alerts = i.monitoring["alerts"]["list"].as_array().unwrap_or(&empty);
    let _ = writeln!(out, "\nactive alerts (this replica)");
    if alerts.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for a in alerts {
        let _ = writeln!(
            out,
            "  [{}] {}",
            a["severity"].as_str().unwrap_or("?"),
            a["message"].as_str().unwrap_or("?")
        );
    }

    let _ = writeln!(out, "\nrecommendations");
    let recs = recommendations(i);
    if recs.is_empty() {
        let _ = writeln!(out, "  none: nothing stands out");
    }
    for rec in recs {
        let _ = writeln!(out, "  - {rec}");
    }
    out
}

/// Lookups a route needs before its hit rate is worth a remark.
const MIN_LOOKUPS: u64 = 20;

pub fn recommendations(i: &Inputs) -> Vec<String> {
    let mut out = Vec::new();
    let s = &i.by_route["summary"];
    if n(&s["requests"]) == 0 {
        out.push("no traffic in this time range: nothing to analyze yet".to_string());
        return out;
    }
    let empty = Vec::new();
    for g in i.by_route["groups"].as_array().unwrap_or(&empty) {
        let name = g["name"].as_str().unwrap_or("-");
        let (reads, inv) = (reads(g), n(&g["invalidations"]));
        if inv > reads && inv > 0 {
            out.push(format!(
                "route {name:?} is invalidated more often than it is read ({inv} invalidations, \
                 {reads} reads): caching it buys little; check which rules purge it \
                 (`freshgate explain -c FILE 'PATCH ...'`) and bind their parameters so a \
                 write purges one entry instead of the family"
            ));
            continue;
        }
        let lookups = n(&g["hits"]) + n(&g["misses"]) + n(&g["stale"]);
        if let Some(rate) = g["hitRate"].as_f64() {
            if lookups >= MIN_LOOKUPS && rate < 0.7 {
                out.push(format!(
                    "route {name:?} has a {:.0}% hit rate over {lookups} lookups: a longer `ttl`, \
                     warming, or narrower invalidation would raise it",
                    rate * 100.0
                ));
            }
        }
        let gets = lookups + n(&g["bypass"]);
        if gets >= MIN_LOOKUPS && n(&g["bypass"]) * 10 > gets * 3 {
            out.push(format!(
                "route {name:?}: {} of {gets} reads bypass the cache (requests with credentials, \
                 a disabled route, or Redis unavailable); if responses differ per user, name the \
                 header or cookie in the route's `key:` so they can be cached per user",
                n(&g["bypass"])
            ));
        }
        if name == "-" && n(&g["requests"]) * 2 > n(&s["requests"]) {
            out.push(
                "most requests match no route rule: add `routes:` with a `ttl` for the hot paths \
                 (without a rule only responses the app marks cacheable are stored)"
                    .to_string(),
            );
        }
    }
    let bypassed = n(&i.cookies["requests"]);
    if let Some(top) = i.cookies["names"].as_array().and_then(|a| a.first()) {
        let count = n(&top["count"]);
        let name = top["name"].as_str().unwrap_or("").to_ascii_lowercase();
        // A name that looks like a session is never a candidate.
        let session_like = ["sess", "sid", "auth", "token", "jwt", "login", "user"]
            .iter()
            .any(|w| name.contains(w));
        if bypassed >= 10 && count * 2 >= bypassed && !session_like {
            out.push(format!(
                "{count} of {bypassed} requests bypassed for their cookies carry {:?}: if it never \
                 changes a response (analytics, consent), add it to `cache.ignore_cookies` (or a \
                 route's `ignore_cookies`); never a session cookie",
                top["name"].as_str().unwrap_or("")
            ));
        }
    }
    let unmatched = i.unmatched["writes"].as_array().map_or(0, Vec::len);
    if unmatched > 0 {
        out.push(format!(
            "{unmatched} write shape(s) matched no invalidation rule: they refresh only their own \
             URI, so pages that show the same data stay stale until their TTL; add `invalidate:` \
             rules for them"
        ));
    }
    if let Some(err) = s["errorRate"].as_f64().filter(|e| *e > 0.01) {
        out.push(format!(
            "{:.1}% of responses are 5xx: look at the app (freshgate_upstream_duration_seconds) \
             before the cache",
            err * 100.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(groups: Value, writes: Value) -> Inputs {
        Inputs {
            by_route: json!({
                "timeRange": "24h", "scope": "this replica", "from": "a", "to": "b",
                "summary": {"requests": 130, "hits": 50, "misses": 60, "hitRate": 0.45,
                             "averageDuration": 3.0, "p95Duration": 9.0, "p99Duration": 12.0,
                             "errorRate": 0.0},
                "groups": groups,
            }),
            by_rule: json!({"groups": [{"name": "scene-write", "writes": 40}]}),
            unmatched: json!({"writes": writes}),
            monitoring: json!({"alerts": {"list": []}}),
            cookies: json!({"requests": 0, "names": []}),
        }
    }

    #[test]
    fn recommends_ignoring_a_cookie_that_dominates_bypasses() {
        let mut i = inputs(json!([]), json!([]));
        i.cookies = json!({"requests": 40, "names": [
            {"name": "_ga", "count": 38}, {"name": "theme", "count": 2}]});
        let r = recommendations(&i).join("\n");
        assert!(
            r.contains("38 of 40 requests bypassed for their cookies carry \"_ga\""),
            "{r}"
        );
        assert!(r.contains("cache.ignore_cookies"), "{r}");
        i.cookies = json!({"requests": 40, "names": [
            {"name": "a", "count": 15}, {"name": "b", "count": 15}]});
        assert!(!recommendations(&i).join("\n").contains("ignore_cookies"));
        i.cookies = json!({"requests": 40, "names": [{"name": "PHPSESSID", "count": 40}]});
        assert!(!recommendations(&i).join("\n").contains("ignore_cookies"));
    }

    #[test]
    fn recommends_from_the_numbers() {
        let i = inputs(
            json!([
                {"name": "posts", "requests": 30, "hits": 10, "misses": 20, "stale": 0,
                 "bypass": 0, "hitRate": 0.33, "invalidations": 45},
                {"name": "scene", "requests": 100, "hits": 40, "misses": 40, "stale": 0,
                 "bypass": 20, "hitRate": 0.5, "invalidations": 3},
            ]),
            json!([{"method": "PATCH", "shape": "/x/:id", "count": 3, "route": null}]),
        );
        let recs = recommendations(&i);
        assert!(recs[0].contains("\"posts\" is invalidated more often than it is read"));
        assert!(recs[1].contains("\"scene\" has a 50% hit rate over 80 lookups"));
        // 20% bypass is below the 30% worth a remark.
        assert!(!recs.iter().any(|r| r.contains("bypass")), "{recs:?}");
        assert!(recs.iter().any(|r| r.contains("1 write shape(s)")));
        let text = report(&i);
        assert!(text.contains("scene-write"));
        assert!(text.contains("PATCH   /x/:id"));
    }

    #[test]
    fn no_traffic_says_so() {
        let mut i = inputs(json!([]), json!([]));
        i.by_route["summary"]["requests"] = json!(0);
        assert_eq!(recommendations(&i).len(), 1);
    }
}
