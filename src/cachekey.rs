//! Cache keys: what makes two requests "the same" for the cache.
//!
//! Scheme, normalised host (see `host`), canonical path and query-by-name
//! (see `canonical`) and, when the route rule says so, the values of named
//! request headers and cookies. The path and query are the request's
//! [`Canonical`] form, the same value its tags and rules are computed from:
//! `/a/%7euser` and `/a/~user`, or `?b=2&a=1` and `?a=1&b=2`, share an entry
//! (and the app is sent the canonical path). The request headers a response
//! `Vary`s on are added by pingora as a separate variance hash (see
//! `proxy::cache_vary_filter`).
//!
//! The key is a sequence of labelled fields, one per line. No field can
//! spell another: host, path and query are validated before (no line breaks,
//! no `/` or `?` in a host), and header and cookie values are escaped
//! (`%`, `,`, controls and non-ASCII bytes as `%XX`), so two requests share a
//! key only if every field is equal — a client cannot choose another
//! request's key.

use pingora::http::RequestHeader;

use crate::canonical::Canonical;
use crate::host::Host;
use crate::rules::{CookieName, Rule};

/// The primary key of a request, for `scheme` and its validated `host`, in
/// `namespace` (`cache.namespace`; empty: none, and no key changes).
pub fn primary(
    req: &RequestHeader,
    canonical: &Canonical,
    scheme: &str,
    host: &Host,
    rule: Option<&Rule>,
    namespace: &str,
) -> String {
    let mut key = String::with_capacity(96);
    if !namespace.is_empty() {
        // Visible ASCII (config validation): it cannot contain the newline
        // that ends it, and no scheme starts with `ns=`.
        key.push_str("ns=");
        key.push_str(namespace);
        key.push('\n');
    }
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(host.as_str());
    key.push_str(&canonical.path);
    if let Some(q) = &canonical.query {
        key.push('?');
        key.push_str(q);
    }
    if let Some(rule) = rule {
        for h in &rule.key_headers {
            key.push_str("\nh:");
            key.push_str(h);
            key.push('=');
            for v in req.headers.get_all(h.as_str()) {
                escape_into(&mut key, v.as_bytes());
                key.push(',');
            }
        }
        for c in &rule.key_cookies {
            key.push_str("\nc:");
            key.push_str(c);
            // Absent and empty (`session=`) are apart.
            if let Cookie::One(v) = cookie(req, c) {
                key.push('=');
                escape_into(&mut key, v.as_bytes());
            }
        }
    }
    if unkeyed_authorization(req, rule) {
        // Answers to requests with credentials live apart: only those the
        // app marked shareable are stored there (`storable::decide`), and an
        // anonymous answer is never reused for them (RFC 9111 §3.5).
        key.push_str("\na:shared");
    }
    key
}

/// The request carries `Authorization` and its route does not key it.
pub fn unkeyed_authorization(req: &RequestHeader, rule: Option<&Rule>) -> bool {
    req.headers.contains_key(http::header::AUTHORIZATION)
        && !rule.is_some_and(Rule::keys_authorization)
}

/// Bytes other than visible ASCII, and the escape and list characters
/// themselves, as `%XX`: distinct values stay distinct (no lossy UTF-8),
/// and a value cannot contain the separator of the next.
fn escape_into(out: &mut String, value: &[u8]) {
    for &b in value {
        if (b.is_ascii_graphic() && b != b'%' && b != b',') || b == b' ' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Codings the `Accept-Encoding` part of a variant key distinguishes.
const CODINGS: &[&str] = &["br", "deflate", "gzip", "identity", "zstd"];

/// The `Accept-Encoding` part of a variant key (a response that says
/// `Vary: Accept-Encoding`): not the request's exact string — every
/// spelling would get its own copy — but the codings it accepts among the
/// common ones (`gzip, deflate, br` and `br;q=1, GZIP, deflate` share an
/// entry). It depends on the request alone, so lookups and fills always
/// agree, and an entry is only ever served to requests that accept exactly
/// what the request that filled it accepted.
pub fn accept_encoding_variance(accept: &http::HeaderMap) -> String {
    CODINGS
        .iter()
        .filter(|c| accepts(accept, c))
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// The request fields whose values are case-insensitive lists of tokens:
/// for `Vary`, `en-US,fr;q=0.5` and `en-us, fr;q=0.5` are the same request.
const CASELESS_LISTS: &[&str] = &["accept", "accept-language", "accept-charset"];

/// A varied request field's value as the variant key holds it: for the
/// fields in [`CASELESS_LISTS`], members trimmed and lower-cased; any other
/// field byte for byte (lines joined by `,`), since its syntax is unknown.
pub fn vary_value<'a>(name: &str, lines: impl Iterator<Item = &'a http::HeaderValue>) -> Vec<u8> {
    let raw: Vec<u8> = lines
        .flat_map(|v| v.as_bytes().iter().copied().chain([b',']))
        .collect();
    if !CASELESS_LISTS.contains(&name) {
        return raw;
    }
    String::from_utf8_lossy(&raw)
        .split(',')
        .map(|m| m.trim().to_ascii_lowercase().replace(' ', ""))
        .filter(|m| !m.is_empty())
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// Whether `resp` may be stored under the `Accept-Encoding` variant of the
/// request it answers: every coding its `Content-Encoding` applied is one
/// the variant key says the request accepts. The app reads the header its
/// own way (`gzip, gzip;q=0`, a byte that is not text): a body it coded
/// against freshgate's reading would otherwise sit in a variant for clients
/// that cannot decode it.
pub fn coding_fits_variant(req: &http::HeaderMap, resp: &http::HeaderMap) -> bool {
    resp.get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .all(|c| CODINGS.contains(&c.as_str()) && accepts(req, &c))
}

/// Whether `Accept-Encoding` allows `coding` (RFC 9110 §12.5.3): listed with
/// q > 0, or covered by `*` with q > 0; `identity` unless excluded.
fn accepts(headers: &http::HeaderMap, coding: &str) -> bool {
    let mut star: Option<bool> = None;
    let mut own: Option<bool> = None;
    for value in headers.get_all(http::header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            return coding == "identity";
        };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q_positive = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .all(|q| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0));
            if name == coding {
                own = Some(q_positive);
            } else if name == "*" {
                star = Some(q_positive);
            }
        }
    }
    match (own, star) {
        (Some(ok), _) => ok,
        (None, Some(ok)) => ok,
        // Not mentioned (or no Accept-Encoding): identity is acceptable,
        // a coding the client did not ask for is not.
        (None, None) => coding == "identity",
    }
}

/// What a request's `Cookie` header says of one cookie name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cookie<'a> {
    Absent,
    One(&'a str),
    /// Sent more than once, or in a header that is not text: apps differ on
    /// which one they read (the first, the last), so no key can be sure to
    /// name the one the app uses. Such a request bypasses the cache.
    Ambiguous,
}

/// The cookie `name` in `req`, parsed as servers parse RFC 6265 headers:
/// pairs split on `;`, names and values trimmed of whitespace.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Cookie<'a> {
    let mut found = Cookie::Absent;
    for line in req.headers.get_all(http::header::COOKIE) {
        let Ok(line) = line.to_str() else {
            return Cookie::Ambiguous;
        };
        for pair in line.split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            if k.trim() != name {
                continue;
            }
            if found != Cookie::Absent {
                return Cookie::Ambiguous;
            }
            found = Cookie::One(v.trim());
        }
    }
    found
}

/// The `Cookie` header to forward on a read that uses the cache under a
/// route keyed by cookies: only the keyed pairs, as the key read them
/// (`None`: none of them). The app must not see a cookie the key does not
/// hold — `sess%69on=x`, which some frameworks decode to `session`, or a
/// locale cookie — or it could answer one user's way into everyone's entry.
pub fn keyed_cookie_header(req: &RequestHeader, rule: &Rule) -> Option<String> {
    let pairs: Vec<String> = rule
        .key_cookies
        .iter()
        .filter_map(|c| match cookie(req, c) {
            Cookie::One(v) => Some(format!("{c}={v}")),
            _ => None,
        })
        .collect();
    (!pairs.is_empty()).then(|| pairs.join("; "))
}

/// The names of the request's cookie pairs, trimmed (empty ones
/// included); `None` when a `Cookie` line is not text or a pair has no `=`
/// (no name can be told apart).
fn cookie_names(req: &RequestHeader) -> Option<Vec<&str>> {
    let mut names = Vec::new();
    for line in req.headers.get_all(http::header::COOKIE) {
        for pair in line.to_str().ok()?.split(';') {
            if pair.trim().is_empty() {
                continue;
            }
            names.push(pair.split_once('=')?.0.trim());
        }
    }
    Some(names)
}

/// Whether `name` is one the app is sent (keyed) or never reads (ignored).
fn known(name: &str, rule: Option<&Rule>, ignored: &[CookieName]) -> bool {
    rule.is_some_and(|r| r.key_cookies.iter().any(|k| k == name))
        || ignored.iter().any(|g| g.matches(name))
}

/// The names of the request's cookies that are neither ignored nor keyed:
/// what keeps it from the cache (at most 8, for the monitoring tally).
pub fn unknown_cookies(
    req: &RequestHeader,
    rule: Option<&Rule>,
    ignored: &[CookieName],
) -> Vec<String> {
    let mut out: Vec<String> = cookie_names(req)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.is_empty() && !known(n, rule, ignored))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out.truncate(8);
    out
}

/// What about a request's cookies keeps it from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieProblem {
    /// A cookie neither ignored nor keyed: it may be a session.
    Unknown,
    /// A keyed cookie sent twice: which one the app reads is unknown.
    Ambiguous,
}

/// Whether the request's cookies keep it from the cache: a cookie neither
/// `ignored` nor keyed by `rule`, or a keyed one sent twice. A `Cookie`
/// header that is not text counts as an unknown cookie.
pub fn cookie_problem(
    req: &RequestHeader,
    rule: Option<&Rule>,
    ignored: &[CookieName],
) -> Option<CookieProblem> {
    if !req.headers.contains_key(http::header::COOKIE) {
        return None;
    }
    if rule.is_some_and(|r| r.key_headers.iter().any(|h| h == "cookie")) {
        return None; // the whole header is in the key
    }
    let readable = cookie_names(req);
    if !readable.is_some_and(|names| names.iter().all(|n| known(n, rule, ignored))) {
        return Some(CookieProblem::Unknown);
    }
    let ambiguous = rule.is_some_and(|r| {
        r.key_cookies
            .iter()
            .any(|c| cookie(req, c) == Cookie::Ambiguous)
    });
    ambiguous.then_some(CookieProblem::Ambiguous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::PathPolicy;
    use crate::methods::MethodOverride;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn primary(req: &RequestHeader, rule: Option<&Rule>) -> String {
        let c = Canonical::new(req, &PathPolicy::default(), &MethodOverride::default());
        let host = crate::host::of_request(req, "http", "h").unwrap();
        super::primary(req, &c, "http", &host, rule, "")
    }

    fn rule(headers: &[&str], cookies: &[&str]) -> Rule {
        Rule {
            key_headers: headers.iter().map(|s| s.to_string()).collect(),
            key_cookies: cookies.iter().map(|s| s.to_string()).collect(),
            ..Rule::new("r", "/me")
        }
    }

    #[test]
    fn a_namespace_is_a_key_space_of_its_own() {
        let r = req("/a", &[("host", "h")]);
        let c = Canonical::new(&r, &PathPolicy::default(), &MethodOverride::default());
        let host = crate::host::of_request(&r, "http", "h").unwrap();
        let key = |ns: &str| super::primary(&r, &c, "http", &host, None, ns);
        assert_eq!(key(""), "http://h/a", "no namespace: keys unchanged");
        assert_eq!(key("b41"), "ns=b41\nhttp://h/a");
        assert_ne!(key("b41"), key("b42"));
    }

    #[test]
    fn equivalent_spellings_share_a_key() {
        let a = primary(&req("/a/%7euser?b=2&a=1", &[("host", "App.:80")]), None);
        let b = primary(&req("/a/~user?a=1&b=2", &[("host", "app")]), None);
        assert_eq!(a, b);
        assert_eq!(a, "http://app/a/~user?a=1&b=2");
    }

    #[test]
    fn reserved_escapes_case_and_repeated_names_stay_distinct() {
        let key = |uri: &str| primary(&req(uri, &[("host", "h")]), None);
        assert_eq!(key("/a%2fb"), "http://h/a%2Fb");
        assert_ne!(key("/a%2fb"), key("/a/b"));
        assert_ne!(key("/Posts/Abc"), key("/posts/abc"));
        assert_ne!(key("/x?a=1&a=2"), key("/x?a=2&a=1"));
    }

    #[test]
    fn keyed_headers_and_cookies_separate_users() {
        let rule = rule(&["authorization"], &["session"]);
        let key = |auth: &str, cookie: &str| {
            primary(
                &req(
                    "/me",
                    &[("host", "h"), ("authorization", auth), ("cookie", cookie)],
                ),
                Some(&rule),
            )
        };
        let a = key("Bearer a", "x=1; session=s1");
        assert_ne!(a, key("Bearer b", "session=s1"));
        assert_ne!(a, key("Bearer a", "session=s2"));
        assert_eq!(a, key("Bearer a", "session=s1; y=2"));
        assert_eq!(a, key("Bearer a", " session = s1 ;y=2"));
        assert_ne!(key("Bearer a", "x=1"), key("Bearer a", "session="));
    }

    #[test]
    fn only_ignored_or_keyed_cookies_share_an_entry() {
        let ignored: Vec<CookieName> = ["_ga", "_hj*", "consent"]
            .iter()
            .map(|c| CookieName::parse(c).unwrap())
            .collect();
        let keyed = rule(&[], &["session"]);
        let why =
            |c: &str, r: Option<&Rule>| cookie_problem(&req("/", &[("cookie", c)]), r, &ignored);
        assert_eq!(why("_ga=GA1.2.3; _hjSession_1=x; consent=yes", None), None);
        assert_eq!(why("_ga=1; theme=dark", None), Some(CookieProblem::Unknown));
        assert_eq!(
            why("_ga=1; session=bob", None),
            Some(CookieProblem::Unknown)
        );
        assert_eq!(why("_ga=1; session=bob", Some(&keyed)), None);
        assert_eq!(
            why("session=a; session=b; _ga=1", Some(&keyed)),
            Some(CookieProblem::Ambiguous)
        );
        assert_eq!(why("justavalue", None), Some(CookieProblem::Unknown));
        assert_eq!(why("_ga=1;", None), None);
        assert_eq!(cookie_problem(&req("/", &[]), None, &ignored), None);
        // Nothing ignored by default.
        assert_eq!(
            cookie_problem(&req("/", &[("cookie", "_ga=1")]), None, &[]),
            Some(CookieProblem::Unknown)
        );
    }

    #[test]
    fn only_keyed_cookies_are_forwarded() {
        let rule = rule(&[], &["session", "lang"]);
        let forwarded = |c: &str| keyed_cookie_header(&req("/", &[("cookie", c)]), &rule);
        assert_eq!(
            forwarded("sess%69on=evil; session=bob; theme=dark").as_deref(),
            Some("session=bob")
        );
        assert_eq!(
            forwarded("lang = fr ; session=bob").as_deref(),
            Some("session=bob; lang=fr")
        );
        assert_eq!(forwarded("theme=dark"), None);
    }

    #[test]
    fn no_value_can_spell_another_field() {
        let rule = rule(&["x-a", "x-b"], &[]);
        let key = |hs: &[(&str, &str)]| {
            let mut all = vec![("host", "h")];
            all.extend_from_slice(hs);
            primary(&req("/me", &all), Some(&rule))
        };
        assert_ne!(key(&[("x-a", "1,2")]), key(&[("x-a", "1"), ("x-a", "2")]));
        // Distinct non-UTF-8 bytes stay distinct.
        let raw = |b: &[u8]| {
            let mut r = req("/me", &[("host", "h")]);
            r.append_header("x-a", http::HeaderValue::from_bytes(b).unwrap())
                .unwrap();
            primary(&r, Some(&rule))
        };
        assert_ne!(raw(b"\xff"), raw(b"\xfe"));
        assert_ne!(raw(b"%FF"), raw(b"\xff"));
    }

    #[test]
    fn accept_encoding_is_reduced_to_the_codings_accepted() {
        let v = |a: Option<&str>| {
            let mut h = http::HeaderMap::new();
            if let Some(a) = a {
                h.insert(http::header::ACCEPT_ENCODING, a.parse().unwrap());
            }
            accept_encoding_variance(&h)
        };
        let firefox = v(Some("gzip, deflate, br"));
        assert_eq!(firefox, "br,deflate,gzip,identity");
        for same in [
            "br;q=1.0, GZIP, deflate",
            "deflate,gzip , br",
            "gzip, deflate, br, foo",
        ] {
            assert_eq!(v(Some(same)), firefox, "{same}");
        }
        assert_ne!(v(Some("gzip, deflate, br, zstd")), firefox);
        assert_eq!(v(None), "identity");
        assert_eq!(v(Some("gzip;q=0")), "identity");
        assert_eq!(v(Some("identity;q=0, gzip")), "gzip");
        assert_eq!(v(Some("*")), "br,deflate,gzip,identity,zstd");
        assert_eq!(v(Some("*;q=0")), "");
    }

    #[test]
    fn a_coded_body_fits_only_a_variant_that_accepts_it() {
        let h = |pairs: &[(&str, &[u8])]| {
            let mut m = http::HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(v).unwrap(),
                );
            }
            m
        };
        let gz = h(&[("content-encoding", b"gzip")]);
        assert!(coding_fits_variant(
            &h(&[("accept-encoding", b"gzip, br")]),
            &gz
        ));
        // Read differently by the app (negotiator takes the best q).
        assert!(!coding_fits_variant(
            &h(&[("accept-encoding", b"gzip, gzip;q=0")]),
            &gz
        ));
        assert!(!coding_fits_variant(
            &h(&[("accept-encoding", b"gzip, \xe9")]),
            &gz
        ));
        assert!(!coding_fits_variant(&h(&[]), &gz));
        assert!(coding_fits_variant(&h(&[]), &h(&[])));
        assert!(!coding_fits_variant(
            &h(&[("accept-encoding", b"*")]),
            &h(&[("content-encoding", b"x-custom")])
        ));
    }

    #[test]
    fn list_fields_vary_by_meaning_others_by_bytes() {
        let v = |name: &str, vals: &[&str]| {
            let vals: Vec<http::HeaderValue> = vals.iter().map(|v| v.parse().unwrap()).collect();
            vary_value(name, vals.iter())
        };
        assert_eq!(
            v("accept-language", &["en-US,fr;q=0.5"]),
            v("accept-language", &["en-us, fr; q=0.5"])
        );
        assert_eq!(
            v("accept-language", &["en", "fr"]),
            v("accept-language", &["en,fr"])
        );
        assert_ne!(
            v("accept-language", &["en,fr"]),
            v("accept-language", &["fr,en"])
        );
        assert_ne!(v("x-custom", &["A, b"]), v("x-custom", &["a,b"]));
    }

    #[test]
    fn cookies_are_read_as_servers_read_them() {
        // What `cookie` finds, as `Some(value)`, `None` (absent) or "?" (ambiguous).
        let c = |v: &str| match cookie(&req("/", &[("cookie", v)]), "session") {
            Cookie::One(v) => Some(v.to_string()),
            Cookie::Absent => None,
            Cookie::Ambiguous => Some("?".to_string()),
        };
        let one = |v: &str| Some(v.to_string());
        assert_eq!(c("session=a"), one("a"));
        assert_eq!(c("x=1;session =a"), one("a"));
        assert_eq!(c("x=1;  session= a "), one("a"));
        assert_eq!(c("x=1"), None);
        assert_eq!(c("sessionx=1; xsession=2"), None);
        assert_eq!(c("session=a; session=b"), one("?"));
        assert_eq!(c("session=a; session =a"), one("?"));
        let two = req("/", &[("cookie", "session=a"), ("cookie", "session=b")]);
        assert_eq!(cookie(&two, "session"), Cookie::Ambiguous);
        let mut bin = req("/", &[]);
        bin.append_header(
            "cookie",
            http::HeaderValue::from_bytes(b"session=\xff").unwrap(),
        )
        .unwrap();
        assert_eq!(cookie(&bin, "session"), Cookie::Ambiguous);
    }
}
