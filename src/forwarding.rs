//! What freshgate tells the app about the client, and which request headers
//! it must not pass on.
//!
//! Two dangers, one module:
//! - **Unkeyed inputs.** A header the app reads to shape its answer
//!   (`X-Forwarded-Host` in an absolute URL, `X-Forwarded-Prefix` in a link)
//!   but that is not in the cache key lets one client store an answer every
//!   other client then gets. Requests that use the cache are forwarded
//!   without them ([`unkeyed`]); a GET with a body bypasses the cache.
//! - **Spoofed client facts.** `X-Forwarded-For` and `X-Forwarded-Proto` are
//!   only as true as whoever set them. They are kept only from a trusted
//!   peer (`trusted_proxies`: by default loopback and private networks, where
//!   a load balancer in front of a sidecar sits); from anyone else, freshgate
//!   states what it saw itself. The scheme is part of the cache key: an app
//!   that redirects `http` to `https` must not have that redirect served to
//!   `https` clients (a redirect loop, cached).

use std::fmt::Write as _;
use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;

use crate::methods::USUAL_OVERRIDE_HEADERS;

/// Headers in which a proxy states facts about the client or the URL it
/// used. Believed only from a trusted peer: from anyone else they are
/// removed from every request (`X-Forwarded-For` and `-Proto` are then
/// replaced by what freshgate saw itself), so that a password-reset link is
/// never built from an attacker's `X-Forwarded-Host`.
pub const CLAIMS: &[&str] = &[
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "x-host",
    "x-original-host",
];

/// Headers that can change what the app answers without being in the
/// cache key: every claim above, also a trusted peer's, and the usual
/// method-override headers (whatever `method_override.headers` says).
/// Removed from requests that use the cache (with the configured
/// method-override headers), unless the route keys them.
pub fn unkeyed<'a>() -> impl Iterator<Item = &'a str> {
    CLAIMS
        .iter()
        .chain(USUAL_OVERRIDE_HEADERS)
        .map(|h| -> &'a str { h })
}

/// Headers with which some frameworks (Symfony, IIS) let the request say
/// which path to route it to: a write could then change another resource
/// than the one its path names and invalidates. Removed from every request.
pub const ROUTING_OVERRIDES: &[&str] = &["x-original-url", "x-rewrite-url"];

/// The field names a message's `Connection` header lists (RFC 9110
/// §7.6.1), lower-cased: meant for the next hop only.
pub fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether `listed` (see [`connection_listed`]) names a field beyond the
/// connection options every client and server use (`close`,
/// `keep-alive`, `te`, `upgrade`).
pub fn beyond_framing(listed: &[String]) -> bool {
    listed
        .iter()
        .any(|t| !matches!(t.as_str(), "close" | "keep-alive" | "te" | "upgrade"))
}

/// Hop-by-hop fields every proxy removes (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Remove the fields `listed` (names a `Connection` header gave).
pub fn strip_listed(resp: &mut pingora::http::ResponseHeader, listed: &[String]) {
    for name in listed {
        resp.remove_header(name.as_str());
    }
}

/// Remove the hop-by-hop fields every proxy removes (not the ones a
/// `Connection` header lists: see [`strip_listed`]).
pub fn strip_standard_hop_by_hop(resp: &mut pingora::http::ResponseHeader) {
    for name in named(&resp.headers, |h| HOP_BY_HOP.contains(&h)) {
        resp.remove_header(&name);
    }
}

/// Remove every field of `req` that `doomed` names (given its lower-case
/// name).
pub fn remove_fields(req: &mut RequestHeader, doomed: impl Fn(&str) -> bool) {
    for name in named(&req.headers, doomed) {
        req.remove_header(&name);
    }
}

/// The field names of `headers` that `doomed` names, found in one pass over
/// the names a message has. Removing by text instead parses each name and
/// looks it up in two maps (values, and the client's spelling): a request is
/// checked against some thirty names and an answer against seven, on every
/// message, and most carry one or none of them.
fn named(headers: &http::HeaderMap, doomed: impl Fn(&str) -> bool) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|name| doomed(name.as_str()))
        .cloned()
        .collect()
}

/// Peers whose forwarding headers are believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl Default for TrustedProxies {
    /// Loopback and private networks (RFC 1918, RFC 4193), as Rails trusts
    /// by default: where a sidecar's load balancer or ingress sits.
    fn default() -> TrustedProxies {
        TrustedProxies(
            [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
            ]
            .iter()
            .map(|n| n.parse().expect("a valid network"))
            .collect(),
        )
    }
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// `10.0.0.0/8` or a single address (`10.1.2.3`, `::1`).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or network (e.g. 10.0.0.0/8)"))
}

/// The scheme the client used to reach us: `https` only when a trusted
/// peer says so in one `X-Forwarded-Proto` value; else `http` (freshgate
/// itself speaks plain HTTP).
pub fn scheme(req: &RequestHeader, peer_trusted: bool) -> &'static str {
    if !peer_trusted {
        return "http";
    }
    let mut values = req.headers.get_all("x-forwarded-proto").iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"https") => "https",
        _ => "http",
    }
}

/// The `X-Forwarded-For` to send: the trusted chain with the peer appended,
/// or only the peer when the chain comes from an untrusted one.
pub fn forwarded_for(
    req: &RequestHeader,
    peer: IpAddr,
    peer_trusted: bool,
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = String::with_capacity(64);
    if peer_trusted {
        for hop in req.headers.get_all(X_FORWARDED_FOR).iter() {
            if let Ok(hop) = hop.to_str() {
                value.push_str(hop);
                value.push_str(", ");
            }
        }
    }
    let _ = write!(value, "{peer}");
    HeaderValue::try_from(value)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn the_default_trusts_loopback_and_private_networks_only() {
        let t = TrustedProxies::default();
        for ip in [
            "127.0.0.1",
            "10.2.3.4",
            "172.20.0.1",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(t.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!t.contains(ip.parse().unwrap()), "{ip}");
        }
        let none = TrustedProxies::new(vec![]);
        assert!(!none.contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn fields_are_removed_in_any_spelling_and_every_value_of_them() {
        let mut r = req(&[
            ("X-Real-IP", "6.6.6.6"),
            ("Accept", "*/*"),
            ("x-client-ip", "6.6.6.6"),
            ("X-Client-IP", "7.7.7.7"),
            ("Forwarded", "for=6.6.6.6"),
            ("Cookie", "a=1"),
        ]);
        remove_fields(&mut r, |h| CLAIMS.contains(&h));
        let mut names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        names.sort();
        assert_eq!(names, ["accept", "cookie"]);
        // The wire form (from the map that keeps the client's spelling) has
        // none of them either.
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let mut wire: Vec<&str> = std::str::from_utf8(&wire)
            .unwrap()
            .split_inclusive("\r\n")
            .collect();
        wire.sort();
        assert_eq!(wire, ["Accept: */*\r\n", "Cookie: a=1\r\n"]);
        // Nothing to remove: nothing changes.
        remove_fields(&mut r, |h| CLAIMS.contains(&h));
        assert_eq!(r.headers.len(), 2);
    }

    #[test]
    fn the_scheme_is_believed_from_trusted_peers_only() {
        let https = req(&[("x-forwarded-proto", "HTTPS")]);
        assert_eq!(scheme(&https, true), "https");
        assert_eq!(scheme(&https, false), "http");
        assert_eq!(scheme(&req(&[]), true), "http");
        assert_eq!(scheme(&req(&[("x-forwarded-proto", "ftp")]), true), "http");
        let two = req(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "http"),
        ]);
        assert_eq!(scheme(&two, true), "http");
    }

    #[test]
    fn a_spoofed_chain_is_replaced() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let chain = req(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            forwarded_for(&chain, peer, true).unwrap(),
            "1.2.3.4, 10.0.0.9"
        );
        assert_eq!(forwarded_for(&chain, peer, false).unwrap(), "10.0.0.9");
        assert_eq!(forwarded_for(&req(&[]), peer, true).unwrap(), "10.0.0.9");
    }

    #[test]
    fn what_connection_lists_goes() {
        let mut r = pingora::http::ResponseHeader::build(200, None).unwrap();
        r.append_header("connection", "X-Private, keep-alive")
            .unwrap();
        r.append_header("connection", "x-other").unwrap();
        r.append_header("x-private", "1").unwrap();
        r.append_header("x-other", "1").unwrap();
        r.append_header("keep-alive", "timeout=5").unwrap();
        r.append_header("x-kept", "1").unwrap();
        let listed = connection_listed(&r.headers);
        strip_listed(&mut r, &listed);
        strip_standard_hop_by_hop(&mut r);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn every_standard_hop_by_hop_field_goes_and_nothing_else() {
        let mut r = pingora::http::ResponseHeader::build(200, None).unwrap();
        r.append_header("x-kept", "1").unwrap();
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            r.append_header(name.to_ascii_uppercase(), "a").unwrap();
            if i % 2 == 0 {
                r.append_header(*name, "b").unwrap();
            }
        }
        r.append_header("x-kept-too", "1").unwrap();
        strip_standard_hop_by_hop(&mut r);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept", "x-kept-too"]);
        // Only some present: only those go.
        let mut r = pingora::http::ResponseHeader::build(200, None).unwrap();
        r.append_header("Connection", "keep-alive").unwrap();
        r.append_header("x-kept", "1").unwrap();
        strip_standard_hop_by_hop(&mut r);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn every_claim_is_also_unkeyed() {
        for c in CLAIMS {
            assert!(unkeyed().any(|u| u == *c), "{c}");
        }
    }

    #[test]
    fn networks_and_addresses_parse() {
        assert!(parse_net("10.0.0.0/8").is_ok());
        assert!(parse_net("10.1.2.3").is_ok());
        assert!(parse_net("::1").is_ok());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }
}
