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
use pingora::cache::cache_control::{CacheControl, DirectiveKey, InterpretCacheControl};
use pingora::cache::filters::calculate_serve_stale_durations;
use pingora::cache::{CacheMeta, CacheMetaDefaults, RespCacheable};
use pingora::http::ResponseHeader;

use crate::rules::Rule;

/// What RFC 9110 §15.1 calls heuristically cacheable, minus `206` (partial
/// content) and the errors `405`, `414` and `501`.
pub const DEFAULT_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 410];

/// Default lifetime of a stored 404 or 410 (`cache.negative_ttl`).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// pingora's defaults without heuristics, used only to read the app's
/// `stale-while-revalidate` / `stale-if-error` windows. Heuristic freshness
/// is freshgate's own and opt-in (`cache.heuristic_freshness`, see
/// `heuristic_lifetime`): heuristics are how caches end up serving stale data.
static NO_HEURISTICS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// The exchange the response came from: when it was asked for and
/// received (by freshgate's clock), and whether the request carried
/// credentials the key does not hold.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// When the request went to the app.
    pub sent: SystemTime,
    /// When the response's header arrived.
    pub received: SystemTime,
    /// The request had an `Authorization` the key does not hold (only with
    /// `cache.share_authorized`: otherwise such a request bypasses).
    pub authorized: bool,
}

/// What the config says about every entry.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<'a> {
    /// Longest life of a 404/410 where the route sets none.
    pub negative_ttl: Duration,
    /// Longest life of anything (`cache.max_ttl`).
    pub max_ttl: Duration,
    /// Targeted cache-control fields (RFC 9213) freshgate obeys, first
    /// present wins: `cache.targeted_fields`.
    pub targeted: &'a [String],
    /// `cache.heuristic_freshness`: a response with `Last-Modified` and no
    /// freshness of its own lives a tenth of its age (RFC 9111 §4.2.2).
    pub heuristic: bool,
}

/// Exactly one `Date` that parses as an HTTP date (RFC 9110 §6.6.1).
pub fn has_valid_date(headers: &http::HeaderMap) -> bool {
    let mut dates = headers.get_all(header::DATE).iter();
    matches!((dates.next(), dates.next()), (Some(d), None) if http_date(Some(d)).is_some())
}

/// RFC 9111 §3.5: the directives that let a shared cache reuse an answer to
/// a request with `Authorization`.
fn shareable_when_authorized(cc: &CacheControl) -> bool {
    cc.public() || cc.has_key("s-maxage") || cc.must_revalidate()
}

/// The longest heuristic lifetime (a tenth of a year-old resource's age
/// would be five weeks).
pub const HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);

/// freshgate's own targeted field: obeyed first, never passed on.
pub const OWN_TARGETED_FIELD: &str = "freshgate-cache-control";

/// The default `cache.targeted_fields`: freshgate's own field only.
/// `CDN-Cache-Control` is opt-in: apps that send it usually purge their CDN
/// through its API, a purge freshgate never sees — obeyed, a long CDN
/// lifetime would keep data fresh here that the app has changed.
pub const DEFAULT_TARGETED: &[&str] = &[OWN_TARGETED_FIELD];

/// Why an answer from the app was not stored: the `Cache-Status` detail
/// (`…; detail=no-store`), and what waiters behind its fill do next (see
/// `fill_lock`). The app's own word first, then freshgate's reasons around
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    SetCookie,
    VaryStar,
    PartialContent,
    Private,
    /// An answer to credentials the app did not say may be shared.
    Authorization,
    /// A status not stored by default or by the route's `statuses:`.
    Status,
    NoStore,
    NoFreshness,
    /// A HEAD miss passes through (a GET fills the entry).
    HeadMiss,
    /// Coded with something the variant's requests do not accept.
    CodingNotAccepted,
    /// The app listed fields in `Connection`: what it meant to share is unclear.
    ConnectionListed,
    /// A write in flight fences the fill's tags: what was fetched may
    /// predate its commit.
    WriteInProgress,
    /// More tags than an entry can hold.
    TooManyTags,
    /// The invalidation clock could not be read (Redis).
    ClockUnavailable,
}

impl NotStored {
    pub const ALL: [NotStored; 14] = [
        NotStored::SetCookie,
        NotStored::VaryStar,
        NotStored::PartialContent,
        NotStored::Private,
        NotStored::Authorization,
        NotStored::Status,
        NotStored::NoStore,
        NotStored::NoFreshness,
        NotStored::HeadMiss,
        NotStored::CodingNotAccepted,
        NotStored::ConnectionListed,
        NotStored::WriteInProgress,
        NotStored::TooManyTags,
        NotStored::ClockUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::PartialContent => "partial-content",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::NoFreshness => "no-freshness",
            NotStored::HeadMiss => "head-miss",
            NotStored::CodingNotAccepted => "coding-not-accepted",
            NotStored::ConnectionListed => "connection-listed",
            NotStored::WriteInProgress => "write-in-progress",
            NotStored::TooManyTags => "too-many-tags",
            NotStored::ClockUnavailable => "clock-unavailable",
        }
    }

    /// The reason a label names (pingora hands `Custom` reasons back as
    /// their labels).
    pub fn from_label(label: &str) -> Option<NotStored> {
        NotStored::ALL.into_iter().find(|r| r.as_str() == label)
    }

    /// Whether the next fill of the same key may well be stored: the
    /// reason is a moment's (a write in flight, Redis), not the answer's.
    pub fn passes(self) -> bool {
        matches!(
            self,
            NotStored::WriteInProgress | NotStored::ClockUnavailable
        )
    }
}

/// Whether `resp` may be stored under `rule`, with what freshness; if not,
/// why (the `Cache-Status` detail).
///
/// Freshness is RFC 9111's: a lifetime (§4.2.1: `s-maxage`, `max-age`, or
/// `Expires − Date`, so an origin clock that runs fast or slow does not
/// matter) against the response's age (§4.2.3: its `Age` and the time the
/// exchange took, or how old its `Date` says it is). The entry's creation is
/// set that far in the past, so the `Age` it is served with and its
/// freshness both count the age it arrived with.
pub fn decide(
    resp: &ResponseHeader,
    rule: Option<&Rule>,
    bounds: Bounds<'_>,
    exchange: Exchange,
) -> Result<RespCacheable, NotStored> {
    if resp.headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    let vary_star = resp
        .headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|n| n.trim() == "*"));
    if vary_star {
        return Err(NotStored::VaryStar);
    }
    let status = resp.status;
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(NotStored::PartialContent);
    }
    // RFC 9213 §2.1: the first targeted field with a valid, non-empty
    // value replaces Cache-Control and Expires altogether.
    let targeted = bounds.targeted.iter().find_map(|name| {
        CacheControl::from_resp_headers_named(name, resp).filter(|c| !c.directives.is_empty())
    });
    let is_targeted = targeted.is_some();
    let cc = targeted.or_else(|| CacheControl::from_resp_headers(resp));
    let expires = !is_targeted && resp.headers.contains_key(header::EXPIRES);
    // Any `private`, also `private="field"` (allowed to be stored without
    // the field, but one user's answer is not worth the risk).
    if cc.as_ref().is_some_and(|c| c.has_key("private")) {
        return Err(NotStored::Private);
    }
    // RFC 9111 §3.5: an answer to a request with credentials is shared only
    // where the app said it may be.
    if exchange.authorized && !cc.as_ref().is_some_and(shareable_when_authorized) {
        return Err(NotStored::Authorization);
    }
    let explicit = cc.as_ref().is_some_and(|c| {
        c.s_maxage().ok().flatten().is_some() || c.max_age().ok().flatten().is_some()
    }) || expires;
    if !status_storable(status.as_u16(), rule, explicit) {
        return Err(NotStored::Status);
    }
    let ttl = rule.and_then(|r| r.ttl);
    let overrides = rule.map(|r| r.overrides).unwrap_or_default();
    if cc.as_ref().is_some_and(CacheControl::no_store) && !(ttl.is_some() && overrides.no_store) {
        return Err(NotStored::NoStore);
    }
    let no_cache = cc.as_ref().is_some_and(CacheControl::no_cache);
    let by_rule =
        ttl.is_some() && (!no_cache || overrides.no_cache) && (!explicit || overrides.max_age);
    let (lifetime, swr, sie) = match ttl {
        // The rule decides the lifetime; stale windows are then the app's
        // no longer: an entry the rule keeps is never served past it.
        Some(ttl) if by_rule => (ttl, 0, 0),
        _ => {
            let lifetime =
                app_lifetime(cc.as_ref(), expires, resp, exchange.received).or_else(|| {
                    bounds
                        .heuristic
                        .then(|| heuristic_lifetime(resp, exchange.received))
                        .flatten()
                });
            let Some(lifetime) = lifetime else {
                return Err(NotStored::NoFreshness);
            };
            // `no-cache`: validated before every use, so never served stale
            // (a stale-while-revalidate window would skip the validation).
            let (swr, sie) = if no_cache {
                (0, 0)
            } else {
                calculate_serve_stale_durations(cc.as_ref(), &NO_HEURISTICS)
            };
            (lifetime, swr, sie)
        }
    };
    let (lifetime, swr, sie) = match status.as_u16() {
        // At most `negative_ttl`, stale windows included.
        404 | 410 => {
            let cap = rule
                .and_then(|r| r.negative_ttl)
                .unwrap_or(bounds.negative_ttl);
            (lifetime.min(cap), 0, 0)
        }
        _ => (lifetime, swr, sie),
    };
    // A route `ttl` is freshgate's own lifetime: the app's `Date` (its
    // clock may run slow) does not shorten it, only the `Age` it reports and
    // the exchange's delay. Never before 1970 (the entry would not encode).
    let age = if by_rule {
        corrected_age(resp, exchange)
    } else {
        initial_age(resp, exchange)
    };
    let since_epoch = exchange
        .received
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let created = exchange.received - age.min(since_epoch);
    // Fresh until its lifetime is used up, and never past `max_ttl` from
    // now (the store drops it then: `Cache-Status: ttl=` must not promise
    // longer). Already stale (`no-cache`, `max-age=0`, an `Expires` in the
    // past, an `Age` beyond its lifetime): stored to be revalidated.
    let fresh_until = (created + lifetime).min(exchange.received + bounds.max_ttl);
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    Ok(RespCacheable::Cacheable(CacheMeta::new(
        fresh_until,
        created,
        swr,
        sie,
        header,
    )))
}

/// The delta-seconds ceiling (RFC 9111 §1.2.2): larger values, and
/// overflows, are taken as 2^31.
const DELTA_MAX: u64 = 1 << 31;

/// The freshness lifetime the app gives `resp` (RFC 9111 §4.2.1): its
/// `s-maxage`, else `max-age`, else (`use_expires`: no targeted field
/// decides) `Expires` minus `Date` (the time it was `received`, without
/// one); `no-cache`, and an invalid or repeated `Expires`, are a lifetime of
/// 0. `None`: no freshness of its own.
fn app_lifetime(
    cc: Option<&CacheControl>,
    use_expires: bool,
    resp: &ResponseHeader,
    received: SystemTime,
) -> Option<Duration> {
    if let Some(d) = cc.and_then(|c| c.fresh_duration()) {
        // `fresh_duration` is zero for `no-cache`.
        return Some(d);
    }
    if !use_expires {
        return None;
    }
    let mut expires = resp.headers.get_all(header::EXPIRES).iter();
    let first = expires.next()?;
    let date = http_date(resp.headers.get(header::DATE)).unwrap_or(received);
    Some(match (http_date(Some(first)), expires.next()) {
        (Some(at), None) => at.duration_since(date).unwrap_or(Duration::ZERO),
        // "MUST interpret invalid date formats ... as representing a time
        // in the past" (§5.3); several values are invalid.
        _ => Duration::ZERO,
    })
}

/// RFC 9111 §4.2.2's heuristic: a tenth of the time since `Last-Modified`
/// (as of `Date`, or when it was `received`), at most [`HEURISTIC_MAX`];
/// only for the statuses heuristically cacheable by default.
fn heuristic_lifetime(resp: &ResponseHeader, received: SystemTime) -> Option<Duration> {
    if !DEFAULT_STATUSES.contains(&resp.status.as_u16()) {
        return None;
    }
    let modified = http_date(resp.headers.get(header::LAST_MODIFIED))?;
    let date = http_date(resp.headers.get(header::DATE)).unwrap_or(received);
    let age = date.duration_since(modified).ok()?;
    Some((age / 10).min(HEURISTIC_MAX))
}

/// Whether a client's own `Cache-Control` asks for more than the stored
/// entry gives (honoured with `cache.request_cache_control: true`):
/// `no-cache`, `max-age` below the entry's `age`, or `min-fresh` above what
/// is left of its freshness. The entry is then revalidated, not served.
/// (`max-stale` is never honoured: freshgate does not serve past freshness
/// on a client's say-so.)
pub fn client_wants_fresher(
    req: &pingora::http::RequestHeader,
    age: Duration,
    fresh_for: Duration,
) -> bool {
    let Some(cc) = CacheControl::from_req_headers(req) else {
        return false;
    };
    let secs = |name: &str| {
        cc.directives
            .get(&DirectiveKey::from_lowercase(name))
            .and_then(|v| v.as_ref())
            .and_then(|v| v.parse_as_delta_seconds().ok())
            .map(|s| Duration::from_secs(s.into()))
    };
    cc.no_cache()
        || secs("max-age").is_some_and(|max| age > max)
        || secs("min-fresh").is_some_and(|min| fresh_for < min)
}

/// How old `resp` already was when it arrived (RFC 9111 §4.2.3): the larger
/// of its apparent age (`received − Date`) and its `Age` plus the time the
/// exchange took.
pub fn initial_age(resp: &ResponseHeader, exchange: Exchange) -> Duration {
    let apparent = http_date(resp.headers.get(header::DATE))
        .and_then(|date| exchange.received.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    apparent
        .max(corrected_age(resp, exchange))
        .min(Duration::from_secs(DELTA_MAX))
}

/// The `Age` the response reports plus the time the exchange took
/// (RFC 9111 §4.2.3 `corrected_age_value`).
fn corrected_age(resp: &ResponseHeader, exchange: Exchange) -> Duration {
    let delay = exchange
        .received
        .duration_since(exchange.sent)
        .unwrap_or(Duration::ZERO);
    Duration::from_secs(age_value(resp)) + delay
}

/// The `Age` field (RFC 9111 §5.1): the first member of the first line; a
/// value that is not a non-negative integer is ignored (0); past 2^31, 2^31.
fn age_value(resp: &ResponseHeader) -> u64 {
    let Some(first) = resp
        .headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
    else {
        return 0;
    };
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    first.parse::<u64>().map_or(DELTA_MAX, |n| n.min(DELTA_MAX))
}

fn http_date(v: Option<&http::HeaderValue>) -> Option<SystemTime> {
    httpdate::parse_http_date(v?.to_str().ok()?.trim()).ok()
}

/// Fields a 304 never replaces in the stored response (RFC 9111 §3.2):
/// how the stored body is framed and encoded, and what was meant for one hop.
const NOT_FRESHENED: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-range",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    // pingora keys variants by it; a changed Vary takes a full response.
    "vary",
    // The entry's tags were indexed when it was stored; a 304 cannot add
    // one (an entry carrying a tag it is not indexed under would miss that
    // tag's purge). New tags come with a full response.
    "surrogate-key",
    "cache-tag",
    "cache-groups",
];

/// The stored response's header freshened by a 304 (RFC 9111 §4.3.4,
/// §3.2): every field the 304 carries replaces the stored one of that
/// name, except [`NOT_FRESHENED`]; the stored status stays, and the stored
/// `Age` and `Date` go (they described the first response).
pub fn freshen(stored: &ResponseHeader, not_modified: &ResponseHeader) -> ResponseHeader {
    let mut out = stored.clone();
    // The stored `Age` and `Date` described the first response; the 304 is
    // the new one (it carries its own, or none: then it is as old as the
    // exchange).
    out.remove_header(&header::AGE);
    out.remove_header(&header::DATE);
    // `keys` yields each name once, however many lines it has.
    for name in not_modified.headers.keys() {
        if NOT_FRESHENED.contains(&name.as_str()) {
            continue;
        }
        out.remove_header(name);
        for v in not_modified.headers.get_all(name) {
            // Valid on the 304, so valid here.
            let _ = out.append_header(name.clone(), v.clone());
        }
    }
    out
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

    #[test]
    fn every_reason_has_its_own_label() {
        let mut labels: Vec<&str> = NotStored::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), NotStored::ALL.len());
        for r in NotStored::ALL {
            assert_eq!(NotStored::from_label(r.as_str()), Some(r));
        }
        assert_eq!(NotStored::from_label("disabled"), None);
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn rule(ttl: Option<u64>, overrides: CacheOverrides) -> Rule {
        Rule {
            ttl: ttl.map(Duration::from_secs),
            overrides,
            ..Rule::new("r", "/r")
        }
    }

    /// Seconds of freshness, or why not stored.
    fn fresh(r: &ResponseHeader, rule: Option<&Rule>) -> Result<u64, NotStored> {
        let now = SystemTime::now();
        match decide(r, rule, BOUNDS, at(now))? {
            // Stored already stale (`no-cache`, `max-age=0`): revalidated
            // with the app on every use.
            RespCacheable::Cacheable(meta) => Ok(meta
                .fresh_until()
                .duration_since(now)
                .map_or(0, |d| d.as_secs())),
            RespCacheable::Uncacheable(_) => unreachable!("decide says why it stores nothing"),
        }
    }

    const TARGETED: &[String] = &[];
    const BOUNDS: Bounds = Bounds {
        negative_ttl: DEFAULT_NEGATIVE_TTL,
        max_ttl: Duration::from_secs(86_400),
        targeted: TARGETED,
        heuristic: false,
    };

    #[test]
    fn heuristic_freshness_only_when_asked_for() {
        let now = SystemTime::now();
        let r = |status: u16| {
            resp(
                status,
                &[
                    ("date", &httpdate::fmt_http_date(now)),
                    (
                        "last-modified",
                        &httpdate::fmt_http_date(now - Duration::from_secs(1000)),
                    ),
                ],
            )
        };
        assert_eq!(fresh(&r(200), None), Err(NotStored::NoFreshness));
        let on = Bounds {
            heuristic: true,
            ..BOUNDS
        };
        let lifetime = |resp: &ResponseHeader| match decide(resp, None, on, at(now)) {
            Ok(RespCacheable::Cacheable(m)) => {
                Ok(m.fresh_until().duration_since(now).unwrap().as_secs())
            }
            Ok(_) => unreachable!("decide says why it stores nothing"),
            Err(e) => Err(e),
        };
        // A tenth of 1000 s (less the part of a second `Date` cannot say).
        assert!(
            matches!(lifetime(&r(200)), Ok(99..=100)),
            "{:?}",
            lifetime(&r(200))
        );
        assert_eq!(lifetime(&r(302)), Err(NotStored::Status));
        let old = resp(200, &[("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT")]);
        assert_eq!(lifetime(&old), Ok(HEURISTIC_MAX.as_secs()));
        assert_eq!(lifetime(&resp(200, &[])), Err(NotStored::NoFreshness));
    }

    #[test]
    fn a_client_may_ask_for_fresher_than_the_entry() {
        let req = |cc: &str| {
            let mut r = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
            r.append_header("cache-control", cc).unwrap();
            r
        };
        let (age, left) = (Duration::from_secs(30), Duration::from_secs(30));
        assert!(client_wants_fresher(&req("no-cache"), age, left));
        assert!(client_wants_fresher(&req("max-age=10"), age, left));
        assert!(!client_wants_fresher(&req("max-age=60"), age, left));
        assert!(client_wants_fresher(&req("min-fresh=60"), age, left));
        assert!(!client_wants_fresher(&req("min-fresh=10"), age, left));
        assert!(!client_wants_fresher(&req("max-stale=600"), age, left));
    }

    #[test]
    fn a_targeted_field_replaces_cache_control_and_expires() {
        // RFC 9213 §2.1.
        let targeted: Vec<String> = vec![OWN_TARGETED_FIELD.into(), "cdn-cache-control".into()];
        let bounds = Bounds {
            targeted: &targeted,
            ..BOUNDS
        };
        let now = SystemTime::now();
        let fresh = |r: &ResponseHeader| match decide(r, None, bounds, at(now)) {
            Ok(RespCacheable::Cacheable(m)) => Ok(m
                .fresh_until()
                .duration_since(now)
                .map_or(0, |d| d.as_secs())),
            Ok(_) => unreachable!("decide says why it stores nothing"),
            Err(e) => Err(e),
        };
        let cdn =
            |cdn: &str, cc: &str| resp(200, &[("cdn-cache-control", cdn), ("cache-control", cc)]);
        assert_eq!(fresh(&cdn("max-age=600", "no-store")), Ok(600));
        assert_eq!(
            fresh(&cdn("no-store", "max-age=600")),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            fresh(&cdn("private", "public, max-age=600")),
            Err(NotStored::Private)
        );
        assert_eq!(fresh(&cdn("no-cache", "max-age=600")), Ok(0));
        // Freshgate's own field comes first.
        let both = resp(
            200,
            &[
                ("freshgate-cache-control", "max-age=30"),
                ("cdn-cache-control", "max-age=600"),
            ],
        );
        assert_eq!(fresh(&both), Ok(30));
        // It replaces Expires too; an empty one is no field.
        let exp = resp(
            200,
            &[
                ("cdn-cache-control", "no-cache"),
                (
                    "expires",
                    &httpdate::fmt_http_date(now + Duration::from_secs(600)),
                ),
            ],
        );
        assert_eq!(fresh(&exp), Ok(0));
        assert_eq!(fresh(&cdn("", "max-age=60")), Ok(60));
        // Not obeyed unless listed (the default lists freshgate's own only).
        assert_eq!(DEFAULT_TARGETED, [OWN_TARGETED_FIELD]);
        assert_eq!(
            decide(&cdn("max-age=600", "no-store"), None, BOUNDS, at(now)).err(),
            Some(NotStored::NoStore)
        );
    }

    #[test]
    fn a_date_is_usable_only_when_single_and_well_formed() {
        let with = |dates: &[&str]| {
            let pairs: Vec<(&str, &str)> = dates.iter().map(|d| ("date", *d)).collect();
            has_valid_date(&resp(200, &pairs).headers)
        };
        assert!(with(&["Sun, 06 Nov 1994 08:49:37 GMT"]));
        assert!(!with(&[]));
        assert!(!with(&["garbage"]));
        assert!(!with(&[
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Mon, 07 Nov 1994 08:49:37 GMT"
        ]));
    }

    #[test]
    fn an_authorized_answer_is_shared_only_where_the_app_says_so() {
        // RFC 9111 §3.5.
        let now = SystemTime::now();
        let authorized = Exchange {
            authorized: true,
            ..at(now)
        };
        let stored = |cc: &str| {
            decide(
                &resp(200, &[("cache-control", cc)]),
                None,
                BOUNDS,
                authorized,
            )
            .map(|c| matches!(c, RespCacheable::Cacheable(_)))
        };
        assert_eq!(stored("max-age=60"), Err(NotStored::Authorization));
        assert_eq!(stored("max-age=60, public"), Ok(true));
        assert_eq!(stored("s-maxage=60"), Ok(true));
        assert_eq!(stored("max-age=60, must-revalidate"), Ok(true));
        assert_eq!(stored("public, private"), Err(NotStored::Private));
        // A targeted field replaces Cache-Control here too.
        let targeted = resp(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("freshgate-cache-control", "max-age=60"),
            ],
        );
        let fields = ["freshgate-cache-control".to_string()];
        let bounds = Bounds {
            targeted: &fields,
            ..BOUNDS
        };
        assert_eq!(
            decide(&targeted, None, bounds, authorized).err(),
            Some(NotStored::Authorization)
        );
        // Without credentials, `public` is not needed.
        assert!(decide(
            &resp(200, &[("cache-control", "max-age=60")]),
            None,
            BOUNDS,
            at(now)
        )
        .is_ok());
    }

    /// An exchange that took no time, received at `now`.
    fn at(now: SystemTime) -> Exchange {
        Exchange {
            sent: now,
            received: now,
            authorized: false,
        }
    }

    #[test]
    fn age_counts_against_freshness() {
        // RFC 9111 §4.2.3, §5.1.
        let with_age = |age: &str| resp(200, &[("cache-control", "max-age=3600"), ("age", age)]);
        assert_eq!(fresh(&with_age("600"), None), Ok(3000));
        assert_eq!(
            fresh(&with_age("7200"), None),
            Ok(0),
            "older than its lifetime"
        );
        assert_eq!(fresh(&with_age("100, 200"), None), Ok(3500), "first member");
        for ignored in ["abc", "-5", "", "1.5", "0x10"] {
            assert_eq!(fresh(&with_age(ignored), None), Ok(3600), "Age {ignored:?}");
        }
        assert_eq!(
            fresh(&with_age("99999999999999999999"), None),
            Ok(0),
            "2^31"
        );
        // The time the exchange took counts too.
        let now = SystemTime::now();
        let slow = Exchange {
            sent: now - Duration::from_secs(100),
            received: now,
            authorized: false,
        };
        let r = resp(200, &[("cache-control", "max-age=3600"), ("age", "600")]);
        let Ok(RespCacheable::Cacheable(m)) = decide(&r, None, BOUNDS, slow) else {
            panic!("not stored");
        };
        assert_eq!(m.fresh_until().duration_since(now).unwrap().as_secs(), 2900);
        // Served with the age it arrived with.
        assert_eq!(m.age().as_secs(), 700);
    }

    #[test]
    fn expires_is_judged_against_the_origins_own_date() {
        // RFC 9111 §4.2.1: Expires − Date, whatever the origin's clock says.
        let now = SystemTime::now();
        let date = |offset: i64| {
            let t = if offset >= 0 {
                now + Duration::from_secs(offset as u64)
            } else {
                now - Duration::from_secs((-offset) as u64)
            };
            httpdate::fmt_http_date(t)
        };
        // A fast origin clock (an hour ahead): 100 s of life, not 3700.
        let fast = resp(200, &[("date", &date(3600)), ("expires", &date(3700))]);
        assert_eq!(fresh(&fast, None), Ok(100));
        // A slow one (an hour behind): its Date makes it an hour old already.
        let slow = resp(200, &[("date", &date(-3600)), ("expires", &date(-3500))]);
        assert_eq!(fresh(&slow, None), Ok(0));
        // In the past, invalid, or repeated: stale.
        let past = resp(200, &[("date", &date(0)), ("expires", &date(-10))]);
        assert_eq!(fresh(&past, None), Ok(0));
        assert_eq!(fresh(&resp(200, &[("expires", "0")]), None), Ok(0));
        let two = resp(200, &[("expires", &date(100)), ("expires", &date(200))]);
        assert_eq!(fresh(&two, None), Ok(0));
        // max-age wins over Expires.
        let both = resp(
            200,
            &[("cache-control", "max-age=50"), ("expires", &date(1000))],
        );
        assert_eq!(fresh(&both, None), Ok(50));
    }

    #[test]
    fn nothing_is_fresh_past_max_ttl() {
        let r = resp(200, &[("cache-control", "max-age=31536000")]);
        assert_eq!(fresh(&r, None), Ok(86_400));
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
            assert_eq!(fresh(&r, None), Err(NotStored::Status), "{status}");
            assert_eq!(
                fresh(&r, Some(&rule(Some(60), ALL))),
                Err(NotStored::Status)
            );
        }
        // Unless the route lists them.
        let mut listed = rule(Some(60), CacheOverrides::default());
        listed.statuses = Some(vec![200, 503]);
        assert_eq!(fresh(&resp(503, &[]), Some(&listed)), Ok(60));
        assert_eq!(
            fresh(&resp(404, &[]), Some(&listed)),
            Err(NotStored::Status)
        );
    }

    #[test]
    fn redirects_with_explicit_freshness_only() {
        let cc = [("cache-control", "max-age=60")];
        assert_eq!(fresh(&resp(302, &cc), None), Ok(60));
        assert_eq!(fresh(&resp(307, &cc), None), Ok(60));
        assert_eq!(
            fresh(&resp(302, &[]), Some(&rule(Some(60), ALL))),
            Err(NotStored::Status)
        );
        assert_eq!(fresh(&resp(301, &[]), Some(&rule(Some(60), ALL))), Ok(60));
        // `no-cache` is no freshness of its own.
        let no_cache = [("cache-control", "no-cache")];
        assert_eq!(
            fresh(&resp(302, &no_cache), Some(&rule(Some(60), ALL))),
            Err(NotStored::Status)
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
        type Says = Result<u64, NotStored>;
        let cases: &[(&str, Says, Says)] = &[
            // (cache-control, with a plain ttl, with every override)
            ("", Ok(300), Ok(300)),
            ("max-age=60", Ok(60), Ok(300)),
            ("s-maxage=30, max-age=60", Ok(30), Ok(300)),
            // 0: stored stale, so every use asks the app first.
            ("max-age=0", Ok(0), Ok(300)),
            ("no-cache", Ok(0), Ok(300)),
            ("no-cache, max-age=0, must-revalidate", Ok(0), Ok(300)),
            ("no-store", Err(NotStored::NoStore), Ok(300)),
            ("must-revalidate", Ok(300), Ok(300)),
            (
                "private, max-age=60",
                Err(NotStored::Private),
                Err(NotStored::Private),
            ),
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
        assert_eq!(fresh(&r, Some(&rule(None, ALL))), Err(NotStored::NoStore));
    }

    #[test]
    fn stale_windows_never_outlive_what_they_qualify() {
        let now = SystemTime::now();
        let meta = |r: &ResponseHeader| match decide(r, None, BOUNDS, at(now)) {
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
    fn a_304_freshens_every_field_but_framing() {
        let stored = resp(
            200,
            &[
                ("content-length", "10"),
                ("etag", "\"v1\""),
                ("x-version", "1"),
                ("x-gone-not", "kept"),
                ("content-encoding", "gzip"),
            ],
        );
        let not_modified = resp(
            304,
            &[
                ("etag", "\"v1\""),
                ("x-version", "2"),
                ("x-new", "a"),
                ("x-new", "b"),
                ("content-length", "0"),
                ("content-encoding", "br"),
            ],
        );
        let h = freshen(&stored, &not_modified);
        assert_eq!(h.status, 200);
        let get = |n: &str| -> Vec<&str> {
            h.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(get("x-version"), ["2"]);
        assert_eq!(get("x-new"), ["a", "b"]);
        assert_eq!(get("x-gone-not"), ["kept"]);
        assert_eq!(get("content-length"), ["10"]);
        assert_eq!(get("content-encoding"), ["gzip"]);
        // Tags stay what the entry is indexed under; Age and Date are the 304's.
        let stored = resp(200, &[("surrogate-key", "a"), ("age", "50"), ("date", "x")]);
        let not_modified = resp(304, &[("surrogate-key", "a b")]);
        let h = freshen(&stored, &not_modified);
        assert_eq!(h.headers["surrogate-key"], "a");
        assert!(h.headers.get("age").is_none() && h.headers.get("date").is_none());
    }

    #[test]
    fn a_route_ttl_is_not_shortened_by_a_slow_origin_clock() {
        let now = SystemTime::now();
        let slow = resp(
            200,
            &[(
                "date",
                &httpdate::fmt_http_date(now - Duration::from_secs(7200)),
            )],
        );
        assert_eq!(
            fresh(&slow, Some(&rule(Some(300), CacheOverrides::default()))),
            Ok(300)
        );
        // An Age so large it would date the entry before 1970 still stores.
        let ancient = resp(
            200,
            &[("cache-control", "max-age=60"), ("age", "2147483647")],
        );
        assert_eq!(fresh(&ancient, None), Ok(0));
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
            Err(NotStored::PartialContent)
        );
    }

    #[test]
    fn no_freshness_no_entry() {
        assert_eq!(fresh(&resp(200, &[]), None), Err(NotStored::NoFreshness));
        assert_eq!(
            fresh(&resp(200, &[("cache-control", "public")]), None),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            fresh(&resp(200, &[("cache-control", "max-age=60")]), None),
            Ok(60)
        );
    }
}
