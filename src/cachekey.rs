//! Cache keys: what makes two requests "the same" for the cache.
//!
//! `scheme://host/normalized-path?sorted-query` plus, when the route rule says
//! so, the values of named request headers and cookies. Normalizing means that
//! `/a/%7euser` and `/a/~user`, or `?b=2&a=1` and `?a=1&b=2`, share an entry
//! (RFC 3986 §6.2.2 equivalences), while anything the app could tell apart
//! stays apart. The request headers a response `Vary`s on are added by pingora
//! as a separate variance hash (see `proxy::cache_vary_filter`).

use pingora::http::RequestHeader;

use crate::rules::Rule;

/// The primary key of a request.
pub fn primary(req: &RequestHeader, default_host: &str, rule: Option<&Rule>) -> String {
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
    key.push_str(&normalize_path(req.uri.path()));
    if let Some(q) = req.uri.query() {
        let q = sorted_query(q);
        if !q.is_empty() {
            key.push('?');
            key.push_str(&q);
        }
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

/// Decode percent-encoded unreserved characters and upper-case the hex of the
/// rest, so equivalent spellings of one path give one key.
pub fn normalize_path(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = h * 16 + l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push(b[i + 1].to_ascii_uppercase() as char);
                    out.push(b[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Query parameters in a stable order; empty pairs dropped.
pub fn sorted_query(q: &str) -> String {
    let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn equivalent_spellings_share_a_key() {
        let a = primary(&req("/a/%7euser?b=2&a=1", &[("host", "App")]), "x", None);
        let b = primary(&req("/a/~user?a=1&b=2", &[("host", "app")]), "x", None);
        assert_eq!(a, b);
        assert_eq!(a, "http://app/a/~user?a=1&b=2");
    }

    #[test]
    fn reserved_escapes_stay_distinct() {
        assert_eq!(normalize_path("/a%2fb"), "/a%2Fb");
        assert_ne!(normalize_path("/a%2fb"), normalize_path("/a/b"));
        assert_eq!(normalize_path("/a%"), "/a%");
        assert_eq!(normalize_path("/a%zz"), "/a%zz");
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
