//! The host a request names: validated and normalised once, like its path
//! (see `canonical`), because it is part of the cache key.
//!
//! Why validate: pingora accepts any visible bytes in `Host`, `/` and `?`
//! included. Keyed unchecked, `Host: victim.example/page?q=` with path `/evil`
//! spelled the same key as the victim's `GET /page?q=/evil` — an attacker's
//! answer served to the victim. A host here is exactly RFC 3986's
//! `host [ ":" port ]` (reg-name, IPv4 or bracketed IPv6), and anything else is
//! a 400 (RFC 9112 §3.2: as is a missing `Host` in HTTP/1.1, or several).
//!
//! Normalised (RFC 3986 §6.2.2–6.2.3), so spellings of one host share an
//! entry and the app is sent the same form the key holds: ASCII lower case,
//! one trailing dot dropped (`example.com.`), an empty or default port dropped
//! (`:80` for http, `:443` for https), leading zeros in the port dropped, and
//! IPv6 literals in their compressed form (`[0:0::1]` → `[::1]`).
//!
//! With an absolute-form target (`GET http://a.example/x`), the target's
//! authority is the host and `Host` is ignored (RFC 9112 §3.2.2).

use std::fmt::{self, Write as _};
use std::net::Ipv6Addr;

use http::Version;
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;

/// Longest host accepted, port excluded: a DNS name is at most 253
/// characters; a little slack for a trailing dot.
const MAX_NAME: usize = 255;

/// A valid, normalised `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host(String);

impl Host {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name or address without the port (IPv6 without brackets).
    pub fn name(&self) -> &str {
        match self.0.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => self.0.split(':').next().unwrap_or_default(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a request's host was refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// An HTTP/1.1 request without `Host`.
    Missing,
    /// More than one `Host` field line.
    Several,
    /// Not `host[:port]` as RFC 3986 spells it; carries what was sent.
    Invalid(String),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Missing => f.write_str("no Host header"),
            HostError::Several => f.write_str("more than one Host header"),
            HostError::Invalid(raw) => write!(f, "invalid host {raw:?}"),
        }
    }
}

impl std::error::Error for HostError {}

/// The host `req` names, normalised for `scheme` (`http` or `https`). An
/// HTTP/1.0 request without one is for `default` (the upstream's host).
pub fn of_request(req: &RequestHeader, scheme: &str, default: &str) -> Result<Host, HostError> {
    // HTTP/1 absolute-form keeps its authority in the raw target (pingora
    // has checked that `Host`, if sent, is byte-equal to it); HTTP/2's
    // `:authority` is the URI's.
    if let RawTargetAuthority::Absolute { authority, .. } = raw_target_authority(req.raw_path()) {
        return match std::str::from_utf8(authority) {
            Ok(a) => normalize(a, scheme),
            Err(_) => Err(HostError::Invalid(
                String::from_utf8_lossy(authority).into_owned(),
            )),
        };
    }
    if let Some(authority) = req.uri.authority() {
        return normalize(authority.as_str(), scheme);
    }
    let mut lines = req.headers.get_all(http::header::HOST).iter();
    match (lines.next(), lines.next()) {
        (Some(_), Some(_)) => Err(HostError::Several),
        (Some(v), None) => match v.to_str() {
            Ok(s) => normalize(s, scheme),
            Err(_) => Err(HostError::Invalid(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )),
        },
        (None, _) if req.version == Version::HTTP_10 || req.version == Version::HTTP_09 => {
            normalize(default, scheme)
        }
        (None, _) => Err(HostError::Missing),
    }
}

/// `raw` as a normalised host, or why it is not one.
pub fn normalize(raw: &str, scheme: &str) -> Result<Host, HostError> {
    let invalid = || HostError::Invalid(raw.to_string());
    let (name, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or_else(invalid)?;
        // IPv6 only: IPvFuture (`[v1.x]`) names nothing an app serves.
        let ip: Ipv6Addr = literal.parse().map_err(|_| invalid())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(invalid)?),
        };
        (Name::V6(ip), port)
    } else {
        let (name, port) = match raw.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (raw, None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        // No empty label (`..`, `.a`, `a..b`, `a..`): no name has one, and
        // `a..` would otherwise read as `a.`, which reads as `a` (the fuzzer
        // found both: a normalised host must normalise to itself).
        let empty_label = name.starts_with('.') || name.ends_with('.') || name.contains("..");
        if name.is_empty() || name.len() > MAX_NAME || empty_label || !is_reg_name(name) {
            return Err(invalid());
        }
        (Name::Reg(name), port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(n) if n == default_port(scheme) => None,
                // Its digits without leading zeros: the number as written.
                Ok(0) => Some("0"),
                Ok(_) => Some(p.trim_start_matches('0')),
                Err(_) => return Err(invalid()),
            }
        }
        Some(_) => return Err(invalid()),
    };
    // Built in one allocation: this runs on every request.
    let mut host = String::with_capacity(raw.len() + 2);
    match name {
        Name::V6(ip) => {
            let _ = write!(host, "[{ip}]");
        }
        Name::Reg(name) => {
            host.push_str(name);
            host.make_ascii_lowercase();
        }
    }
    if let Some(p) = port {
        host.push(':');
        host.push_str(p);
    }
    Ok(Host(host))
}

/// A host's name part, checked, before it is written in normal form.
enum Name<'a> {
    V6(Ipv6Addr),
    Reg(&'a str),
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// RFC 3986 `reg-name` (which includes IPv4 addresses): unreserved,
/// sub-delims and well-formed percent-escapes.
fn is_reg_name(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(raw: &str) -> Result<String, HostError> {
        normalize(raw, "http").map(|h| h.0)
    }

    #[test]
    fn spellings_of_one_host_normalise_alike() {
        for raw in [
            "example.com",
            "Example.COM",
            "example.com.",
            "example.com:80",
            "example.com:",
            "EXAMPLE.com.:0080",
        ] {
            assert_eq!(host(raw).unwrap(), "example.com", "{raw}");
        }
        assert_eq!(host("example.com:8080").unwrap(), "example.com:8080");
        assert_eq!(host("example.com:08080").unwrap(), "example.com:8080");
        assert_eq!(host("example.com:00000").unwrap(), "example.com:0");
        assert_eq!(host("example.com:0").unwrap(), "example.com:0");
        assert_eq!(
            host("example.com:065535").unwrap_err(),
            HostError::Invalid("example.com:065535".into())
        );
        assert!(host("example.com:65536").is_err());
        assert_eq!(host("127.0.0.1:3000").unwrap(), "127.0.0.1:3000");
        assert_eq!(host("[0:0::1]:80").unwrap(), "[::1]");
        assert_eq!(normalize("[::1]:8080", "http").unwrap().name(), "::1");
        assert_eq!(
            normalize("A.example:81", "http").unwrap().name(),
            "a.example"
        );
        assert_eq!(host("[::FFFF:1.2.3.4]").unwrap(), "[::ffff:1.2.3.4]");
        assert_eq!(
            normalize("example.com:443", "https").unwrap().0,
            "example.com"
        );
        assert_eq!(
            normalize("example.com:80", "https").unwrap().0,
            "example.com:80"
        );
    }

    #[test]
    fn anything_that_could_reach_into_the_path_is_refused() {
        for raw in [
            "victim.example/knobs/page?q=",
            "victim.example?x",
            "victim.example#x",
            "a b",
            "a\\b",
            "user@victim.example",
            "",
            ".",
            "..",
            ".a",
            "a..b",
            "++..",
            "a..:80",
            ":80",
            "example.com:http",
            "example.com:65536",
            "example.com:123456",
            "example.com:-1",
            "a:1:2",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[v1.abc]",
            "[example.com]",
            "a%zz",
            "a%",
            "é.example",
        ] {
            assert!(
                matches!(host(raw), Err(HostError::Invalid(ref s)) if s == raw),
                "{raw:?} -> {:?}",
                host(raw)
            );
        }
        assert!(host(&"a".repeat(MAX_NAME + 1)).is_err());
        assert!(host(&"a".repeat(MAX_NAME)).is_ok());
    }

    fn req(raw: &[u8], version: Version, hosts: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", raw, None).unwrap();
        r.set_version(version);
        for h in hosts {
            r.append_header("host", *h).unwrap();
        }
        r
    }

    #[test]
    fn the_request_host_comes_from_the_target_then_host_then_default() {
        let of = |r: &RequestHeader| of_request(r, "http", "app.internal:3000").map(|h| h.0);
        assert_eq!(
            of(&req(b"/x", Version::HTTP_11, &["A.example"])).unwrap(),
            "a.example"
        );
        assert_eq!(
            of(&req(
                b"http://b.example/x",
                Version::HTTP_11,
                &["a.example"]
            ))
            .unwrap(),
            "b.example"
        );
        assert_eq!(
            of(&req(b"/x", Version::HTTP_10, &[])).unwrap(),
            "app.internal:3000"
        );
        assert_eq!(
            of(&req(b"/x", Version::HTTP_11, &[])),
            Err(HostError::Missing)
        );
        assert_eq!(
            of(&req(b"/x", Version::HTTP_11, &["a.example", "b.example"])),
            Err(HostError::Several)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// What normalises, normalises to itself, and holds nothing that
            /// could reach into the path (the fuzzer's property, in every
            /// test run).
            #[test]
            fn a_normalised_host_is_a_fixed_point(raw in "[a-zA-Z0-9.:\\[\\]%/?#@_~-]{0,24}") {
                if let Ok(h) = normalize(&raw, "http") {
                    let again = normalize(h.as_str(), "http");
                    prop_assert_eq!(again, Ok(h.clone()));
                    prop_assert!(!h.as_str().contains(['/', '?', '#', '@']));
                }
            }
        }
    }
}
