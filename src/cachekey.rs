//! Cache keys: what makes two requests "the same" for the cache.
//!
//! `scheme://host/canonical-path?query-by-name` plus, when the route rule says
//! so, the values of named request headers and cookies. The path and query
//! come from the request's [`Canonical`] form, the same value its tags and
//! rules are computed from: `/a/%7euser` and `/a/~user`, or `?b=2&a=1` and
//! `?a=1&b=2`, share an entry (and the app is sent the canonical path). The
//! request headers a response `Vary`s on are added by pingora as a separate
//! variance hash (see `proxy::cache_vary_filter`).

use pingora::http::RequestHeader;

use crate::canonical::Canonical;
use crate::rules::Rule;

/// The primary key of a request.
pub fn primary(
    req: &RequestHeader,
    canonical: &Canonical,
    default_host: &str,
    rule: Option<&Rule>,
) -> String {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or(default_host)
        .to_ascii_lowercase();
    let mut key = String::with_capacity(64);
    key.push_str("http://");
    key.push_str(&host);
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
                key.push_str(&String::from_utf8_lossy(v.as_bytes()));
                key.push(',');
            }
        }
        for c in &rule.key_cookies {
            key.push_str("\nc:");
            key.push_str(c);
            key.push('=');
            if let Some(v) = cookie(req, c) {
                key.push_str(v);
            }
        }
    }
    key
}

/// The value of cookie `name` in the request, if present.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{MethodOverride, PathPolicy};

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn primary(req: &RequestHeader, default_host: &str, rule: Option<&Rule>) -> String {
        let c = Canonical::new(req, &PathPolicy::default(), &MethodOverride::default());
        super::primary(req, &c, default_host, rule)
    }

    #[test]
    fn equivalent_spellings_share_a_key() {
        let a = primary(&req("/a/%7euser?b=2&a=1", &[("host", "App")]), "x", None);
        let b = primary(&req("/a/~user?a=1&b=2", &[("host", "app")]), "x", None);
        assert_eq!(a, b);
        assert_eq!(a, "http://app/a/~user?a=1&b=2");
    }

    #[test]
    fn reserved_escapes_case_and_repeated_names_stay_distinct() {
        let key = |uri: &str| primary(&req(uri, &[]), "h", None);
        assert_eq!(key("/a%2fb"), "http://h/a%2Fb");
        assert_ne!(key("/a%2fb"), key("/a/b"));
        assert_ne!(key("/Posts/Abc"), key("/posts/abc"));
        assert_ne!(key("/x?a=1&a=2"), key("/x?a=2&a=1"));
    }

    #[test]
    fn keyed_headers_and_cookies_separate_users() {
        let rule = Rule {
            name: "r".into(),
            pattern: "/me".into(),
            ttl: None,
            override_no_store: false,
            key_headers: vec!["authorization".into()],
            key_cookies: vec!["session".into()],
            enabled: true,
        };
        let a = primary(
            &req(
                "/me",
                &[("authorization", "Bearer a"), ("cookie", "x=1; session=s1")],
            ),
            "h",
            Some(&rule),
        );
        let b = primary(
            &req(
                "/me",
                &[("authorization", "Bearer b"), ("cookie", "session=s1")],
            ),
            "h",
            Some(&rule),
        );
        let c = primary(
            &req(
                "/me",
                &[("authorization", "Bearer a"), ("cookie", "session=s2")],
            ),
            "h",
            Some(&rule),
        );
        let a2 = primary(
            &req(
                "/me",
                &[("authorization", "Bearer a"), ("cookie", "session=s1; y=2")],
            ),
            "h",
            Some(&rule),
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, a2);
    }
}
