//! Fresh hits answered straight from the memory tier, in `request_filter`,
//! before pingora-cache is involved.
//!
//! Why: through pingora-cache a hit pays for its state machine, a cache-lock
//! check, and decoding the stored response header (zstd and parsing) on
//! every request — about half of a hit's CPU next to a bare pingora answer
//! (docs/benchmarks.md). Most hits need none of it: a GET or HEAD for a
//! fresh entry, with no range, no validators to compare and no `Vary`.
//! Those are answered here, from a header the store decodes when an entry
//! is hit and keeps (`Store::memory_hit`, which applies the very checks every lookup
//! applies). Everything else — misses, fills, stale entries, revalidation,
//! conditional and range requests, `Vary`, entries only in Redis — takes
//! pingora-cache's path, which looks the key up again.

use std::sync::OnceLock;
use std::time::SystemTime;

use http::{header, HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};

use pingora::cache::CacheMeta;

use crate::storable;

/// RFC 9211's field, as every hit carries it.
const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// An entry's response header as a fresh hit serves it, made when the entry
/// is hit and kept beside it in the memory tier's own map of prepared
/// headers (see `Store::memory_hit`; evicted on its own, rebuilt if needed):
/// decoded, labelled, and stripped of what is for freshgate alone. A hit
/// then only adds `Age` and `Cache-Status`.
#[derive(Debug)]
pub struct Prepared {
    header: ResponseHeader,
    /// Fresh until then (inclusive, as pingora-cache counts it).
    fresh_until: SystemTime,
    /// What its age counts from (`CacheMeta::epoch`).
    epoch: SystemTime,
    /// Why a hit cannot be served from it (`None`: it can while fresh).
    unservable: Option<&'static str>,
}

impl Prepared {
    pub fn of(meta: &CacheMeta) -> Prepared {
        Prepared::new(
            meta.response_header_copy(),
            meta.fresh_until(),
            meta.epoch(),
        )
    }

    pub fn new(stored: ResponseHeader, fresh_until: SystemTime, epoch: SystemTime) -> Prepared {
        let unservable = unservable(&stored);
        // Without the map of the app's spelling of each field name (HTTP
        // field names are case-insensitive): a copy per hit costs half.
        let mut header =
            ResponseHeader::build_no_case(stored.status, Some(stored.headers.len() + 2))
                .expect("a stored status is valid");
        for (name, value) in stored.headers.iter() {
            let _ = header.append_header(name.clone(), value.clone());
        }
        let _ = header.set_reason_phrase(stored.get_reason_phrase());
        header.set_version(http::Version::HTTP_11);
        // freshgate's own targeted field is for freshgate alone (RFC 9213).
        header.remove_header(storable::OWN_TARGETED_FIELD);
        if header.status == StatusCode::OK {
            // As pingora-cache says of every entry it could serve in ranges.
            let _ = header.insert_header(header::ACCEPT_RANGES, "bytes");
        }
        let _ = header.insert_header("x-cache", "HIT");
        // Held in place for each hit's own values: a hit then replaces two
        // values instead of growing a copied map by two fields (which
        // reallocates the copy).
        let _ = header.insert_header(header::AGE, 0);
        let _ = header.insert_header(CACHE_STATUS, "");
        Prepared {
            header,
            fresh_until,
            epoch,
            unservable,
        }
    }

    /// Bytes it holds, roughly: counted against the memory tier's bound.
    /// Each field costs its name and value plus the map's own slots (hash
    /// index, bucket, case-preserved name): ~96 bytes on 64-bit.
    pub fn weight(&self) -> u64 {
        256 + self
            .header
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().len() * 2 + v.len() + 96) as u64)
            .sum::<u64>()
    }
}

/// Why a stored header needs pingora-cache's path even while fresh:
/// `Vary` (the variant is chosen there), or no single readable
/// `Content-Length` to frame the body by, or a status without a body.
fn unservable(h: &ResponseHeader) -> Option<&'static str> {
    let mut lengths = h.headers.get_all(header::CONTENT_LENGTH).iter();
    let length = lengths
        .next()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if h.headers.contains_key(header::VARY) {
        Some("vary")
    } else if length.is_none() || lengths.next().is_some() {
        Some("unframed")
    } else if matches!(h.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
        || h.status.is_informational()
    {
        Some("no-body")
    } else {
        None
    }
}

/// Request fields that ask for more than "the stored response as it is":
/// a part of it, a comparison with the client's copy, or (when the config
/// lets clients ask) something fresher.
const NEEDS_PINGORA: &[header::HeaderName] = &[
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
];

/// Whether `req` may be answered here, if its entry allows (see
/// [`response`]). `request_cache_control`: clients may ask for fresher
/// than the entry (`cache.request_cache_control`).
pub fn request_allows(req: &RequestHeader, request_cache_control: bool) -> bool {
    matches!(req.method, Method::GET | Method::HEAD)
        && !NEEDS_PINGORA.iter().any(|h| req.headers.contains_key(h))
        && !(request_cache_control
            && (req.headers.contains_key(header::CACHE_CONTROL)
                || req.headers.contains_key(header::PRAGMA)))
}

/// The answer to a request for `stored` at `now`, as pingora-cache would
/// give it on a fresh hit (the stored header, `Age`, freshgate's labels),
/// or `None` when the entry needs pingora-cache: past its freshness, or
/// unservable here (see [`unservable`]).
pub fn response(stored: &Prepared, now: SystemTime) -> Option<ResponseHeader> {
    if !servable(stored, now) {
        return None;
    }
    let age = now.duration_since(stored.epoch).unwrap_or_default();
    let ttl = stored
        .fresh_until
        .duration_since(now)
        .unwrap_or_default()
        .as_secs();
    // Built from its parts, with names known at compile time: pingora's
    // `insert_header` would parse each name again on every hit.
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = stored.header.status;
    parts.version = stored.header.version;
    parts.headers = stored.header.headers.clone();
    parts
        .headers
        .insert(header::AGE, remembered(&AGES, age.as_secs(), |s| s.into()));
    let status = remembered(&STATUSES, ttl, |ttl| {
        HeaderValue::try_from(cache_status(ttl as i64))
            .unwrap_or(HeaderValue::from_static("freshgate; hit"))
    });
    parts.headers.insert(CACHE_STATUS, status);
    let mut resp = ResponseHeader::from(parts);
    resp.set_reason_phrase(stored.header.get_reason_phrase())
        .ok()?;
    Some(resp)
}

/// Whether `stored` can answer a hit here at `now` (see [`response`]).
pub fn servable(stored: &Prepared, now: SystemTime) -> bool {
    stored.unservable.is_none() && stored.fresh_until >= now
}

/// How many seconds of `Age` and of `Cache-Status` ttl have their value
/// made once and shared (an hour: most entries' lifetimes).
const REMEMBERED: usize = 3600;

static AGES: [OnceLock<HeaderValue>; REMEMBERED] = [const { OnceLock::new() }; REMEMBERED];
static STATUSES: [OnceLock<HeaderValue>; REMEMBERED] = [const { OnceLock::new() }; REMEMBERED];

/// The value for `secs` from `made`, made once per second below
/// [`REMEMBERED`]: a copy of a shared value is a reference count, not an
/// allocation and the formatting of a number on every hit.
fn remembered(
    values: &[OnceLock<HeaderValue>],
    secs: u64,
    made: impl Fn(u64) -> HeaderValue,
) -> HeaderValue {
    match usize::try_from(secs).ok().and_then(|i| values.get(i)) {
        Some(v) => v.get_or_init(|| made(secs)).clone(),
        None => made(secs),
    }
}

/// The RFC 9211 `Cache-Status` of a hit with `ttl` seconds of freshness
/// left (negative: stale by that much).
pub fn cache_status(ttl: i64) -> String {
    format!("freshgate; hit; ttl={ttl}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stored(fields: &[(&str, &str)], fresh_for: i64) -> (Prepared, SystemTime) {
        let now = SystemTime::now();
        let mut header = ResponseHeader::build(200, None).unwrap();
        for (n, v) in fields {
            header.append_header(n.to_string(), *v).unwrap();
        }
        let fresh_until = if fresh_for >= 0 {
            now + Duration::from_secs(fresh_for as u64)
        } else {
            now - Duration::from_secs(fresh_for.unsigned_abs())
        };
        let epoch = now - Duration::from_secs(7);
        (Prepared::new(header, fresh_until, epoch), now)
    }

    fn request(method: &str, fields: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/api/posts/1", None).unwrap();
        for (n, v) in fields {
            req.append_header(n.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn only_plain_reads_are_answered_here() {
        assert!(request_allows(&request("GET", &[]), false));
        assert!(request_allows(&request("HEAD", &[]), true));
        assert!(!request_allows(&request("POST", &[]), false));
        for f in [
            "range",
            "if-range",
            "if-none-match",
            "if-modified-since",
            "if-match",
        ] {
            assert!(!request_allows(&request("GET", &[(f, "x")]), false), "{f}");
        }
        let no_cache = request("GET", &[("cache-control", "no-cache")]);
        assert!(
            request_allows(&no_cache, false),
            "ignored unless configured"
        );
        assert!(!request_allows(&no_cache, true));
        assert!(!request_allows(
            &request("GET", &[("pragma", "no-cache")]),
            true
        ));
    }

    #[test]
    fn remembered_values_are_the_ones_made_for_that_second() {
        let values: Vec<OnceLock<HeaderValue>> = (0..60).map(|_| OnceLock::new()).collect();
        let made = |s: u64| HeaderValue::from(s * 10);
        for secs in [0, 1, 59, 0, 60, 10_000, 59, 1] {
            assert_eq!(remembered(&values, secs, made), made(secs), "{secs}");
        }
        assert_eq!(values.iter().filter(|v| v.get().is_some()).count(), 3);
    }

    #[test]
    fn a_fresh_framed_entry_is_answered_with_its_age_and_labels() {
        let (s, now) = stored(
            &[
                ("content-length", "2"),
                ("date", "Mon, 30 Nov 2026 04:00:00 GMT"),
                ("freshgate-cache-control", "max-age=60"),
                // The app's own Age is replaced, not repeated.
                ("age", "100"),
            ],
            30,
        );
        let r = response(&s, now).expect("fresh");
        assert_eq!(r.headers["age"], "7");
        for field in ["age", "cache-status", "x-cache"] {
            assert_eq!(r.headers.get_all(field).iter().count(), 1, "{field}");
        }
        assert_eq!(r.headers["x-cache"], "HIT");
        assert_eq!(r.headers["cache-status"], "freshgate; hit; ttl=30");
        assert_eq!(r.headers["date"], "Mon, 30 Nov 2026 04:00:00 GMT");
        assert_eq!(r.headers["accept-ranges"], "bytes");
        assert!(!r.headers.contains_key("freshgate-cache-control"));
    }

    #[test]
    fn stale_varying_or_unframed_entries_go_to_pingora() {
        let (s, now) = stored(&[("content-length", "2")], -1);
        assert!(response(&s, now).is_none(), "stale");
        let (s, now) = stored(&[("content-length", "2"), ("vary", "accept")], 30);
        assert!(response(&s, now).is_none(), "vary");
        let (s, now) = stored(&[], 30);
        assert!(response(&s, now).is_none(), "no content-length");
        let (s, now) = stored(&[("content-length", "2x")], 30);
        assert!(response(&s, now).is_none(), "unreadable content-length");
        let (s, now) = stored(&[("content-length", "2"), ("content-length", "3")], 30);
        assert!(response(&s, now).is_none(), "two lengths");
    }
}
