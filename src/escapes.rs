//! Percent-escapes in a path, and which of them each spelling of it
//! decodes: the canonical path (the key, and what the app is sent) decodes
//! only unreserved characters, as RFC 3986 §6.2.2 allows; the route path
//! (rules and tags) decodes every escape a framework decodes in a route
//! parameter. Apart from `canonical.rs`, which says when each is used, so
//! the byte-level rules can be read (and fuzzed) on their own.

use std::borrow::Cow;

/// Decode, for the route path (rules and tags, never the key), the escapes
/// step 1 kept: reserved characters (`%40` is `@`, `%3A` is `:`, `%2B` is
/// `+`) and non-ASCII bytes (`%C3%AB` is `ë`, as a client that sends it raw
/// spells it). Frameworks decode them in route parameters, so the app takes
/// both spellings for one resource: a write through either must purge what
/// a read through the other cached. Folding more than the app only widens a
/// purge. Kept: `%2F` (a slash inside a segment is not a separator),
/// `%25` (decoded, it would start an escape of its own: the route path of a
/// route path is itself) and control characters (`%0A` decoded would put a
/// newline in a tag, and the log separates tags by newlines in Redis). In a pattern, `{` and `}` become matchit's `{{`
/// and `}}`. Bytes that are not UTF-8 once decoded become U+FFFD (which
/// only widens).
pub fn decode_for_routes(path: &str, pattern: bool) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    Cow::Owned(rewrite_escapes(path, |c, out| match c {
        b'/' | b'%' | 0..=0x1F | 0x7F => push_escape(out, c),
        b'{' if pattern => out.extend(b"{{"),
        b'}' if pattern => out.extend(b"}}"),
        c => out.push(c),
    }))
}

/// Decode percent-encoded unreserved characters, upper-case the hex of the
/// other escapes, escape a `%` that starts none; every other byte is left
/// as it is.
pub fn decode_unreserved(path: &str) -> String {
    rewrite_escapes(path, |c, out| {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c);
        } else {
            push_escape(out, c);
        }
    })
}

/// Every escape decoded, as an app is given a segment's value (a `%` that
/// starts no escape is kept, as `%25`).
pub fn decode_all(path: &str) -> String {
    rewrite_escapes(path, |c, out| out.push(c))
}

/// `value` fit to stand as one path segment again (a route path's bound
/// value, for a URL freshgate fetches itself): every byte but RFC 3986's
/// `pchar`s (unreserved, sub-delims, `:`, `@`) escaped, `%` included.
pub fn encode_segment(value: &str) -> Cow<'_, str> {
    let keep = |c: u8| c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&c);
    let b = value.as_bytes();
    // An escape a route path kept (`%2F`, `%25`, controls) stands as it is.
    let escape_at = |i: usize| {
        b[i] == b'%' && i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some()
    };
    if (0..b.len()).all(|i| keep(b[i]) || escape_at(i)) {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(b.len() + 8);
    let mut i = 0;
    while i < b.len() {
        if escape_at(i) {
            out.extend(&b[i..i + 3]);
            i += 3;
            continue;
        }
        if keep(b[i]) {
            out.push(b[i]);
        } else {
            push_escape(&mut out, b[i]);
        }
        i += 1;
    }
    // Only ASCII was written.
    Cow::Owned(String::from_utf8(out).unwrap_or_default())
}

/// `path` with each well-formed escape replaced by what `decoded` writes
/// for its byte, and a `%` that starts none escaped as `%25` (kept, it
/// could start one once a later escape is decoded: `%%3341` would read as
/// `%41` the second time, to freshgate and to lenient decoders alike);
/// every other byte kept. Bytes that are not UTF-8 once written become
/// U+FFFD.
fn rewrite_escapes(path: &str, mut decoded: impl FnMut(u8, &mut Vec<u8>)) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                decoded(h * 16 + l, &mut out);
                i += 3;
                continue;
            }
        }
        if b[i] == b'%' {
            out.extend(b"%25");
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `c` as an escape, its hex upper-cased.
pub fn push_escape(out: &mut Vec<u8>, c: u8) {
    const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.extend([
        b'%',
        HEX_DIGITS[(c >> 4) as usize],
        HEX_DIGITS[(c & 15) as usize],
    ]);
}

/// The byte `%hl` stands for, if `h` and `l` are hex digits.
pub fn escaped_byte(h: u8, l: u8) -> Option<u8> {
    Some(hex(h)? << 4 | hex(l)?)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}
