//! What of the app's answers may be stored, and for how long: the policy
//! `proxy::response_cache_filter` applies, as one pure function.
//!
//! RFC 9111 decides, plus safety rules no config overrides:
//! - never stored: `Set-Cookie` (one user's session), `Cache-Control: private`,
//!   `Vary: *`, `206` (pingora stores whole bodies only);
//! - **statuses**: by default only what RFC 9110 §15.1 lets a cache store
//!   without being told (200, 203, 204, 300, 301, 308, 404, 410), and other
//!   2xx/3xx only when the app gives them explicit freshness. Never another
//!   4xx or 5xx: an error stored for everyone is a denial of service any
//!   client can provoke (`?x=` + a 400, a 500 during a deploy). A route's
//!   `statuses:` replaces that set;
//! - **404/410** live at most `negative_ttl` (route, else `cache.negative_ttl`):
//!   a missing resource is often created moments later, and only a create that
//!   names it (`Location`) purges the 404 — a short life bounds the rest;
//! - **a route's `ttl`** is the lifetime when the app gives none. It takes
//!   precedence over what the app does say only where the route lists it in
//!   `override:` — `no-store` (store although the app says not to),
//!   `no-cache` (serve without revalidating although the app says to
//!   revalidate every time), `max-age` (replace the app's own freshness:
//!   `max-age`, `s-maxage`, `Expires`, `max-age=0` included). Without them, the
//!   app's word wins: `no-cache` or `max-age=0` is stored already stale, so
//!   every use is revalidated with the app.

use std::time::{Duration, SystemTime};

use http::{header, StatusCode};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora::cache::{CacheMeta, CacheMetaDefaults, RespCacheable};
use pingora::http::ResponseHeader;

use crate::rules::Rule;

/// What RFC 9110 §15.1 calls heuristically cacheable, minus `206` (partial
/// content) and the errors `405`, `414` and `501`.
pub const DEFAULT_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 410];

/// Default lifetime of a stored 404 or 410 (`cache.negative_ttl`).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// No heuristic freshness: without explicit freshness from the app (or a
/// rule's TTL) nothing is stored. Heuristics are how caches end up serving
/// stale data.
static NO_HEURISTICS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// Whether `resp` may be stored under `rule`, with what freshness; if not,
/// why (the `Cache-Status` detail). `negative_ttl` is the config's default
/// for routes that set none.
pub fn decide(
    resp: &ResponseHeader,
    rule: Option<&Rule>,
    negative_ttl: Duration,
    now: SystemTime,
) -> Result<RespCacheable, &'static str> {
    if resp.headers.contains_key(header::SET_COOKIE) {
        return Err("set-cookie");
    }
    let vary_star = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|n| n.trim() == "*"));
    if vary_star {
        return Err("vary-star");
    }
    let status = resp.status;
    if status == StatusCode::PARTIAL_CONTENT {
        return Err("partial-content");
    }
    let cc = CacheControl::from_resp_headers(resp);
    // Any `private`, also `private="field"` (allowed to be stored without
    // the field, but one user's answer is not worth the risk).
    if cc.as_ref().is_some_and(|c| c.has_key("private")) {
        return Err("private");
    }
    let explicit = cc.as_ref().is_some_and(|c| {
        c.s_maxage().ok().flatten().is_some() || c.max_age().ok().flatten().is_some()
    }) || resp.headers.contains_key(header::EXPIRES);
    if !status_storable(status.as_u16(), rule, explicit) {
        return Err("status");
    }
    let ttl = rule.and_then(|r| r.ttl);
    let overrides = rule.map(|r| r.overrides).unwrap_or_default();
    if cc.as_ref().is_some_and(CacheControl::no_store) && !(ttl.is_some() && overrides.no_store) {
        return Err("no-store");
    }
    let no_cache = cc.as_ref().is_some_and(CacheControl::no_cache);
    let explicit = cc.as_ref().is_some_and(|c| {
        c.s_maxage().ok().flatten().is_some() || c.max_age().ok().flatten().is_some()
    }) || resp.headers.contains_key(header::EXPIRES);
    let (fresh_until, swr, sie) = match ttl {
        // The rule decides the lifetime; stale windows are then the app's
        // no longer: an entry the rule keeps is never served past it.
        Some(ttl) if (!no_cache || overrides.no_cache) && (!explicit || overrides.max_age) => {
            (now + ttl, 0, 0)
        }
        _ => {
            let Some(until) = app_freshness(cc.as_ref(), resp, now) else {
                return Err("no-freshness");
            };
            // `no-cache`: validated before every use, so never served stale
            // (a stale-while-revalidate window would skip the validation).
            let (swr, sie) = if no_cache {
                (0, 0)
            } else {
                calculate_serve_stale_durations(cc.as_ref(), &NO_HEURISTICS)
            };
            (until, swr, sie)
        }
    };
    let (fresh_until, swr, sie) = match status.as_u16() {
        // At most `negative_ttl`, stale windows included.
        404 | 410 => {
            let cap = rule.and_then(|r| r.negative_ttl).unwrap_or(negative_ttl);
            (fresh_until.min(now + cap), 0, 0)
        }
        _ => (fresh_until, swr, sie),
    };
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    Ok(RespCacheable::Cacheable(CacheMeta::new(
        fresh_until,
        now,
        swr,
        sie,
        header,
    )))
}

/// Until when the app says `resp` is fresh, if it says: `s-maxage`, else
/// `max-age`, else `Expires` (RFC 9111 §4.2.1); `no-cache` is "already
/// stale". As pingora computes it, without its no-store check (an override
/// may have lifted that) and without heuristics.
fn app_freshness(
    cc: Option<&CacheControl>,
    resp: &ResponseHeader,
    now: SystemTime,
) -> Option<SystemTime> {
    let from_cc = cc.and_then(|c| c.fresh_duration()).map(|d| {
        if d.is_zero() {
            now - Duration::from_secs(1)
        } else {
            now + d
        }
    });
    from_cc.or_else(|| calculate_expires_header_time(resp))
}

/// Whether a `status` answer may be stored at all under `rule` (see the
/// module comment); `explicit`: the app gave it freshness of its own.
pub fn status_storable(status: u16, rule: Option<&Rule>, explicit: bool) -> bool {
    if let Some(listed) = rule.and_then(|r| r.statuses.as_deref()) {
        return listed.contains(&status);
    }
    DEFAULT_STATUSES.contains(&status)
        || (explicit && (200..400).contains(&status) && status != 206 && status != 304)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::CacheOverrides;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn rule(ttl: Option<u64>, overrides: CacheOverrides) -> Rule {
        Rule {
            name: "r".into(),
            pattern: "/r".into(),
            ttl: ttl.map(Duration::from_secs),
            overrides,
            statuses: None,
            negative_ttl: None,
            key_headers: vec![],
            key_cookies: vec![],
            enabled: true,
        }
    }

    /// Seconds of freshness, or why not stored.
    fn fresh(r: &ResponseHeader, rule: Option<&Rule>) -> Result<u64, &'static str> {
        let now = SystemTime::now();
        match decide(r, rule, DEFAULT_NEGATIVE_TTL, now)? {
            // Stored already stale (`no-cache`, `max-age=0`): revalidated
            // with the app on every use.
            RespCacheable::Cacheable(meta) => Ok(meta
                .fresh_until()
                .duration_since(now)
                .map_or(0, |d| d.as_secs())),
            RespCacheable::Uncacheable(_) => Err("uncacheable"),
        }
    }

    const ALL: CacheOverrides = CacheOverrides {
        no_store: true,
        no_cache: true,
        max_age: true,
    };

    #[test]
    fn errors_are_not_stored_for_everyone() {
        for status in [400, 401, 403, 405, 414, 429, 500, 501, 502, 503] {
            let r = resp(status, &[("cache-control", "max-age=600")]);
            assert_eq!(fresh(&r, None), Err("status"), "{status}");
            assert_eq!(fresh(&r, Some(&rule(Some(60), ALL))), Err("status"));
        }
        // Unless the route lists them.
        let mut listed = rule(Some(60), CacheOverrides::default());
        listed.statuses = Some(vec![200, 503]);
        assert_eq!(fresh(&resp(503, &[]), Some(&listed)), Ok(60));
        assert_eq!(fresh(&resp(404, &[]), Some(&listed)), Err("status"));
    }

    #[test]
    fn redirects_with_explicit_freshness_only() {
        let cc = [("cache-control", "max-age=60")];
        assert_eq!(fresh(&resp(302, &cc), None), Ok(60));
        assert_eq!(fresh(&resp(307, &cc), None), Ok(60));
        assert_eq!(
            fresh(&resp(302, &[]), Some(&rule(Some(60), ALL))),
            Err("status")
        );
        assert_eq!(fresh(&resp(301, &[]), Some(&rule(Some(60), ALL))), Ok(60));
        // `no-cache` is no freshness of its own.
        let no_cache = [("cache-control", "no-cache")];
        assert_eq!(
            fresh(&resp(302, &no_cache), Some(&rule(Some(60), ALL))),
            Err("status")
        );
    }

    #[test]
    fn not_found_lives_briefly() {
        let r = rule(Some(300), CacheOverrides::default());
        assert_eq!(fresh(&resp(404, &[]), Some(&r)), Ok(10));
        assert_eq!(fresh(&resp(410, &[]), Some(&r)), Ok(10));
        assert_eq!(
            fresh(&resp(404, &[("cache-control", "max-age=3600")]), None),
            Ok(10)
        );
        let mut own = r.clone();
        own.negative_ttl = Some(Duration::from_secs(2));
        assert_eq!(fresh(&resp(404, &[]), Some(&own)), Ok(2));
        assert_eq!(fresh(&resp(200, &[]), Some(&own)), Ok(300));
    }

    #[test]
    fn the_apps_word_wins_unless_the_rule_overrides_it() {
        let plain = rule(Some(300), CacheOverrides::default());
        type Says = Result<u64, &'static str>;
        let cases: &[(&str, Says, Says)] = &[
            // (cache-control, with a plain ttl, with every override)
            ("", Ok(300), Ok(300)),
            ("max-age=60", Ok(60), Ok(300)),
            ("s-maxage=30, max-age=60", Ok(30), Ok(300)),
            // 0: stored stale, so every use asks the app first.
            ("max-age=0", Ok(0), Ok(300)),
            ("no-cache", Ok(0), Ok(300)),
            ("no-cache, max-age=0, must-revalidate", Ok(0), Ok(300)),
            ("no-store", Err("no-store"), Ok(300)),
            ("must-revalidate", Ok(300), Ok(300)),
            ("private, max-age=60", Err("private"), Err("private")),
        ];
        for (cc, plain_says, overridden_says) in cases {
            let r = resp(200, &[("cache-control", cc)]);
            assert_eq!(fresh(&r, Some(&plain)), *plain_says, "plain, {cc:?}");
            assert_eq!(
                fresh(&r, Some(&rule(Some(300), ALL))),
                *overridden_says,
                "overridden, {cc:?}"
            );
        }
        // Each override covers only what it names.
        let only_no_store = rule(
            Some(300),
            CacheOverrides {
                no_store: true,
                ..CacheOverrides::default()
            },
        );
        let r = resp(200, &[("cache-control", "no-store")]);
        assert_eq!(fresh(&r, Some(&only_no_store)), Ok(300));
        let r = resp(200, &[("cache-control", "no-store, max-age=0")]);
        assert_eq!(fresh(&r, Some(&only_no_store)), Ok(0));
        let r = resp(200, &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]);
        assert_eq!(fresh(&r, Some(&plain)), Ok(0));
        // Without a rule ttl, overrides mean nothing.
        let r = resp(200, &[("cache-control", "no-store")]);
        assert_eq!(fresh(&r, Some(&rule(None, ALL))), Err("no-store"));
    }

    #[test]
    fn stale_windows_never_outlive_what_they_qualify() {
        let now = SystemTime::now();
        let meta = |r: &ResponseHeader| match decide(r, None, DEFAULT_NEGATIVE_TTL, now) {
            Ok(RespCacheable::Cacheable(m)) => m,
            other => panic!("not stored: {other:?}"),
        };
        // Whether it may be served stale a second after its freshness ends.
        let stale_ok = |m: &CacheMeta| {
            let t = m.fresh_until() + Duration::from_secs(1);
            (m.serve_stale_while_revalidate(t), m.serve_stale_if_error(t))
        };
        let swr = "max-age=60, stale-while-revalidate=600, stale-if-error=600";
        assert_eq!(
            stale_ok(&meta(&resp(200, &[("cache-control", swr)]))),
            (true, true)
        );
        assert_eq!(
            stale_ok(&meta(&resp(404, &[("cache-control", swr)]))),
            (false, false)
        );
        let nc = "no-cache, stale-while-revalidate=600";
        assert_eq!(
            stale_ok(&meta(&resp(200, &[("cache-control", nc)]))),
            (false, false)
        );
    }

    #[test]
    fn never_overridden() {
        for h in [
            ("set-cookie", "s=1"),
            ("vary", "accept, *"),
            ("cache-control", "private"),
            ("cache-control", "private=\"x-user\", max-age=60"),
        ] {
            assert!(fresh(&resp(200, &[h]), Some(&rule(Some(60), ALL))).is_err());
        }
        assert_eq!(
            fresh(&resp(206, &[]), Some(&rule(Some(60), ALL))),
            Err("partial-content")
        );
    }

    #[test]
    fn no_freshness_no_entry() {
        assert_eq!(fresh(&resp(200, &[]), None), Err("no-freshness"));
        assert_eq!(
            fresh(&resp(200, &[("cache-control", "public")]), None),
            Err("no-freshness")
        );
        assert_eq!(
            fresh(&resp(200, &[("cache-control", "max-age=60")]), None),
            Ok(60)
        );
    }
}
