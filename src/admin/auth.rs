//! Who may use the admin listener. Token-less (loopback only), a browser on
//! another site must not be able to use it (CSRF, DNS rebinding); with
//! tokens, a constant-time bearer check, the read token for GET only.

use http::{Response, StatusCode};
use pingora::http::RequestHeader;
use subtle::ConstantTimeEq;

use super::reply::json_error;
use crate::config::AdminAuth;

/// Without tokens, the loopback listener's only guard is that a caller
/// must be on the host. A web page the operator has open is: it can make
/// the browser send requests to `127.0.0.1:9090` (CSRF), or point its own
/// domain at 127.0.0.1 and read the answers (DNS rebinding). So, token-less:
/// `Host` must name a loopback address or `localhost` (a rebound domain
/// does not), a request sent by another site is refused (`Origin`,
/// `Sec-Fetch-Site`), and changes need `Content-Type: application/json`,
/// which a cross-site form or simple request cannot send. No CORS headers
/// are ever sent. With a bearer token, none of this is needed: a browser
/// does not attach one on its own.
pub fn refuse_browser_attack(auth: &AdminAuth, req: &RequestHeader) -> Option<Response<Vec<u8>>> {
    if auth.token.is_some() || auth.read_token.is_some() {
        return None;
    }
    let header = |name: &str| {
        req.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
    };
    let host_ok = header("host").is_some_and(is_loopback_authority);
    if !host_ok {
        return Some(json_error(
            StatusCode::MISDIRECTED_REQUEST,
            "Host must be a loopback address or localhost on a listener without a token",
        ));
    }
    let cross_site = header("origin").is_some_and(|o| {
        o.split_once("://")
            .is_none_or(|(_, authority)| !is_loopback_authority(authority))
    }) || header("sec-fetch-site")
        .is_some_and(|s| s == "cross-site" || s == "same-site");
    if cross_site {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            "requests from other sites are refused",
        ));
    }
    let changes = !matches!(req.method, http::Method::GET | http::Method::HEAD);
    let json = header("content-type").is_some_and(|c| {
        c.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    if changes && !json {
        return Some(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "changes need Content-Type: application/json",
        ));
    }
    None
}

/// `127.0.0.1:9090`, `[::1]`, `localhost:9090`: names only this host.
fn is_loopback_authority(authority: &str) -> bool {
    let Ok(host) = crate::host::normalize(authority, "http") else {
        return false;
    };
    let name = host.name();
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Bearer-token check (constant time): the response to send instead, if
/// the request may not proceed.
pub fn refuse(auth: &AdminAuth, req: &RequestHeader) -> Option<Response<Vec<u8>>> {
    if auth.token.is_none() && auth.read_token.is_none() {
        // Loopback only (config validation refuses anything else without a token).
        return None;
    }
    // The page's HTML is public (it holds no data); its API calls are not.
    if req.uri.path() == "/" || auth.open.iter().any(|p| p == req.uri.path()) {
        return None;
    }
    let presented = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let matches = |want: &Option<String>| match (want, presented) {
        (Some(w), Some(p)) => bool::from(w.as_bytes().ct_eq(p.as_bytes())),
        _ => false,
    };
    if matches(&auth.token) {
        return None;
    }
    if matches(&auth.read_token) {
        if matches!(req.method, http::Method::GET | http::Method::HEAD) {
            return None;
        }
        return Some(json_error(
            StatusCode::FORBIDDEN,
            "the read-only token cannot change anything",
        ));
    }
    let mut resp = json_error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer ...)",
    );
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"freshgate admin\""),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/api/flags", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn refused(method: &str, headers: &[(&str, &str)]) -> Option<u16> {
        refuse_browser_attack(&AdminAuth::default(), &req(method, headers))
            .map(|r| r.status().as_u16())
    }

    #[test]
    fn a_browser_on_another_site_cannot_use_a_tokenless_listener() {
        let json = ("content-type", "application/json");
        for host in [
            "127.0.0.1:9090",
            "localhost:9090",
            "LOCALHOST",
            "[::1]:9090",
            "127.1.2.3",
        ] {
            assert_eq!(refused("GET", &[("host", host)]), None, "{host}");
            assert_eq!(refused("PUT", &[("host", host), json]), None, "{host}");
        }
        // DNS rebinding: the attacker's name, resolved to 127.0.0.1.
        assert_eq!(refused("GET", &[("host", "evil.example:9090")]), Some(421));
        assert_eq!(
            refused("GET", &[("host", "localhost.evil.example")]),
            Some(421)
        );
        assert_eq!(refused("GET", &[]), Some(421));
        // CSRF: a form or a simple fetch from a page.
        let host = ("host", "127.0.0.1:9090");
        assert_eq!(refused("POST", &[host]), Some(415));
        assert_eq!(
            refused("POST", &[host, ("content-type", "text/plain")]),
            Some(415)
        );
        assert_eq!(
            refused("POST", &[host, json, ("origin", "https://evil.example")]),
            Some(403)
        );
        assert_eq!(
            refused("POST", &[host, json, ("origin", "null")]),
            Some(403)
        );
        assert_eq!(
            refused("GET", &[host, ("sec-fetch-site", "cross-site")]),
            Some(403)
        );
        // The admin page itself (same origin).
        assert_eq!(
            refused(
                "PUT",
                &[
                    host,
                    json,
                    ("origin", "http://127.0.0.1:9090"),
                    ("sec-fetch-site", "same-origin")
                ]
            ),
            None
        );
        // With a token, the token decides.
        let auth = AdminAuth {
            token: Some("t".into()),
            ..AdminAuth::default()
        };
        assert!(refuse_browser_attack(&auth, &req("POST", &[("host", "admin.svc")])).is_none());
    }
}
