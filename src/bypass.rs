//! Why a GET or HEAD does not use the cache: one typed reason, decided
//! before anything is looked up. Pure policy over the request, its route
//! rule and the config; the proxy reports it (`X-Cache: BYPASS`, or `PASS`
//! for the kill switch; `Cache-Status: ...; detail=`;
//! `freshgate_bypasses_total{reason}`).

use std::sync::Arc;

use http::header;
use pingora::http::RequestHeader;

use crate::cachekey::{self, CookieProblem};
use crate::canonical::RoutePath;
use crate::config::Config;
use crate::forwarding;
use crate::rules::Rule;

/// Why a read bypasses the cache. `as_str` is what operators see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// The `cache` flag (the kill switch) is off: reported as PASS.
    CacheOff,
    /// The route rule says `enabled: false`.
    RouteDisabled,
    /// Apps read the path differently (`;params`, `\`) and its route rule
    /// is not certain (`Canonical::other_routes`), or they read it in too
    /// many ways; or they read its ids as another rule's paths, or in too
    /// many ways (`Canonical::id_routes`).
    AmbiguousPath,
    /// Credentials the key does not hold (`cache.share_authorized` off).
    Authorization,
    /// A cookie neither ignored nor keyed: it may be a session.
    Cookie,
    /// A keyed cookie sent twice.
    AmbiguousCookie,
    /// A body the app may read and the key does not hold.
    RequestBody,
    /// A field the client lists in `Connection` beyond framing.
    ConnectionListed,
    /// The client's `Cache-Control: no-store` (`cache.request_cache_control`).
    RequestNoStore,
    /// The shared tier cannot be trusted now (`Store::usable`: Redis
    /// unreachable, the breaker open, writes owed, the fleet's rules mixed).
    StoreUnavailable,
}

impl Bypass {
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::CacheOff => "cache-off",
            Bypass::RouteDisabled => "route-disabled",
            Bypass::AmbiguousPath => "ambiguous-path",
            Bypass::Authorization => "authorization",
            Bypass::Cookie => "cookie",
            Bypass::AmbiguousCookie => "ambiguous-cookie",
            Bypass::RequestBody => "request-body",
            Bypass::ConnectionListed => "connection-listed",
            Bypass::RequestNoStore => "request-no-store",
            Bypass::StoreUnavailable => "store-unavailable",
        }
    }
}

/// Whether a read whose path apps read differently (`others`: its other
/// readings, `Canonical::other_routes`) may use the cache: when every
/// reading falls under its own route rule `rule` (the same settings, none
/// private) — or under none while `rule` is a literal pattern naming this
/// very path (`/sitemap.xml`, whose format reading is `/sitemap`). Its entry
/// then carries every reading's tags.
pub fn readings_agree(config: &Config, rule: Option<&Arc<Rule>>, others: &[RoutePath]) -> bool {
    let literal = rule.is_some_and(|r| r.is_literal());
    others
        .iter()
        .all(|route| match (config.routes.lookup(route), rule) {
            (None, None) => true,
            (None, Some(_)) => literal,
            (Some(other), Some(rule)) => Arc::ptr_eq(other, rule),
            (Some(_), None) => false,
        })
}

/// Whether a read whose ids apps parse otherwise (`ids`:
/// `Canonical::id_routes`) may use the cache under its route rule `rule`.
/// The app routes it to the handler `rule` covers (its router compares
/// text), but that handler serves the record a reading names: where a
/// reading falls under another rule with other settings (`/reports/02024`
/// and a literal `/reports/2024` rule that is disabled or keyed by
/// cookies), that rule's word would be bypassed. A reading under no rule
/// is no concern (`/api/0.6/node/5` reads as `/api/0/node/5` too).
pub fn id_readings_agree(config: &Config, rule: Option<&Arc<Rule>>, ids: &[RoutePath]) -> bool {
    ids.iter()
        .all(|route| match (config.routes.lookup(route), rule) {
            (None, _) => true,
            (Some(other), Some(rule)) => other.same_settings(rule),
            (Some(_), None) => false,
        })
}

/// Why `req` (a GET or HEAD, the `cache` flag on) must not use the cache,
/// if it must not. `store_usable`: whether the store can be trusted now.
pub fn decide(
    req: &RequestHeader,
    rule: Option<&Rule>,
    config: &Config,
    store_usable: bool,
) -> Option<Bypass> {
    if rule.is_some_and(|r| !r.enabled) {
        return Some(Bypass::RouteDisabled);
    }
    // With `cache.share_authorized`, such a request has entries of its own,
    // stored only where the app says they may be shared (RFC 9111 §3.5).
    if cachekey::unkeyed_authorization(req, rule) && !config.share_authorized {
        return Some(Bypass::Authorization);
    }
    let ignored = rule.map_or(&config.ignore_cookies[..], |r| &r.ignore_cookies[..]);
    match cachekey::cookie_problem(req, rule, ignored) {
        Some(CookieProblem::Unknown) => return Some(Bypass::Cookie),
        Some(CookieProblem::Ambiguous) => return Some(Bypass::AmbiguousCookie),
        None => {}
    }
    // The app may read a GET's body (search APIs do): the answer would
    // depend on something the key does not hold.
    let has_body = req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        return Some(Bypass::RequestBody);
    }
    // A field the client lists in `Connection` is removed before the app
    // sees it (pingora does), while the key and the variant key (`Vary`)
    // are computed with it: the answer would be stored for requests it does
    // not fit. Browsers list no fields.
    if forwarding::beyond_framing(&forwarding::connection_listed(&req.headers)) {
        return Some(Bypass::ConnectionListed);
    }
    if !store_usable {
        return Some(Bypass::StoreUnavailable);
    }
    // RFC 9111 §5.2.1.5: nothing of this exchange may be stored.
    if config.request_cache_control
        && pingora::cache::cache_control::CacheControl::from_req_headers(req)
            .is_some_and(|c| c.no_store())
    {
        return Some(Bypass::RequestNoStore);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/a", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn config(text: &str) -> Config {
        Config::from_str(text, None, &Overrides::default()).unwrap()
    }

    fn honoured_config() -> Config {
        config("cache:\n  request_cache_control: true\n")
    }

    #[test]
    fn an_id_reading_under_a_rule_with_other_settings_is_not_cached() {
        let c = config(
            "routes:\n  - name: r2024\n    match: /reports/2024\n    enabled: false\n  - name: reports\n    match: /reports/:year\n    ttl: 60s\n  - name: node\n    match: /api/0.6/node/:id\n    ttl: 60s\n",
        );
        let agree = |path: &str| {
            let r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
            let request = crate::canonical::Canonical::new(&r, &c.paths, &c.method_override);
            let rule = c.routes.lookup(&request.route);
            id_readings_agree(&c, rule, &request.id_routes)
        };
        // The disabled literal's year, spelled otherwise.
        assert!(!agree("/reports/02024"));
        assert!(!agree("/reports/%2B2024"));
        assert!(agree("/reports/02025"));
        assert!(agree("/reports/2024"));
        // A literal segment that reads as a number: its readings fall
        // under no rule, and it stays cached.
        assert!(agree("/api/0.6/node/5"));
    }

    #[test]
    fn each_reason_in_its_order() {
        let c = config("cache:\n  ignore_cookies: [_ga]\n");
        let why = |h: &[(&str, &str)]| decide(&req(h), None, &c, true);
        assert_eq!(why(&[]), None);
        assert_eq!(why(&[("cookie", "_ga=1")]), None, "ignored cookie");
        assert_eq!(why(&[("cookie", "sid=1")]), Some(Bypass::Cookie));
        assert_eq!(
            why(&[("authorization", "Bearer x")]),
            Some(Bypass::Authorization)
        );
        assert_eq!(
            why(&[("authorization", "Bearer x"), ("cookie", "sid=1")]),
            Some(Bypass::Authorization),
            "credentials are named first"
        );
        assert_eq!(why(&[("content-length", "3")]), Some(Bypass::RequestBody));
        assert_eq!(why(&[("content-length", "0")]), None);
        assert_eq!(
            why(&[("transfer-encoding", "chunked")]),
            Some(Bypass::RequestBody)
        );
        assert_eq!(
            why(&[("connection", "x-user"), ("x-user", "bob")]),
            Some(Bypass::ConnectionListed)
        );
        assert_eq!(why(&[("connection", "keep-alive")]), None);
        assert_eq!(
            why(&[("cache-control", "no-store")]),
            None,
            "ignored by default"
        );
        assert_eq!(
            decide(&req(&[]), None, &c, false),
            Some(Bypass::StoreUnavailable)
        );
        let honoured = config("cache:\n  request_cache_control: true\n");
        assert_eq!(
            decide(
                &req(&[("cache-control", "no-store")]),
                None,
                &honoured,
                true
            ),
            Some(Bypass::RequestNoStore)
        );
        // When several apply, the first in this order is the one reported.
        assert_eq!(
            why(&[("cookie", "sid=1"), ("content-length", "3")]),
            Some(Bypass::Cookie)
        );
        assert_eq!(
            why(&[
                ("content-length", "3"),
                ("connection", "x-user"),
                ("x-user", "b")
            ]),
            Some(Bypass::RequestBody)
        );
        assert_eq!(
            decide(
                &req(&[("connection", "x-user"), ("x-user", "b")]),
                None,
                &c,
                false
            ),
            Some(Bypass::ConnectionListed)
        );
        assert_eq!(
            decide(
                &req(&[("cache-control", "no-store")]),
                None,
                &honoured_config(),
                false
            ),
            Some(Bypass::StoreUnavailable)
        );
        let shared = config("cache:\n  share_authorized: true\n");
        assert_eq!(
            decide(&req(&[("authorization", "Bearer x")]), None, &shared, true),
            None
        );
    }

    #[test]
    fn a_rule_can_disable_key_or_ignore() {
        let c = config("");
        let off = Rule {
            enabled: false,
            ..Rule::new("off", "/a")
        };
        assert_eq!(
            decide(&req(&[]), Some(&off), &c, true),
            Some(Bypass::RouteDisabled)
        );
        let keyed = Rule {
            key_headers: vec!["authorization".into()],
            key_cookies: vec!["sid".into()],
            ..Rule::new("me", "/a")
        };
        let h = [("authorization", "Bearer x"), ("cookie", "sid=1")];
        assert_eq!(decide(&req(&h), Some(&keyed), &c, true), None);
        assert_eq!(
            decide(&req(&[("cookie", "sid=1; sid=2")]), Some(&keyed), &c, true),
            Some(Bypass::AmbiguousCookie)
        );
    }
}
