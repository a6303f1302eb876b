//! A request target's spellings, byte by byte: its path's RFC 3986 §6.2.2
//! normal form (the canonical path: what the key holds and the app is
//! sent), the other paths apps may read it as, and its query in key order.
//! Apart from `canonical.rs`, which says when
//! each is used, like `escapes.rs`, so the byte-level rules can be read
//! (and fuzzed) on their own.

use std::collections::HashSet;

use crate::escapes;

/// Step 1: the RFC 3986 §6.2.2 normal form of a path (plus merged slashes).
/// Idempotent. A path that does not start with `/` (`*`, an authority) is
/// returned as is.
pub fn normalize_path(path: &str, merge_slashes: bool) -> String {
    if !path.starts_with('/') {
        return if path.is_empty() {
            "/".into()
        } else {
            path.into()
        };
    }
    if is_normal(path, merge_slashes) {
        // Most paths: nothing to decode or remove (one copy, not five
        // allocations on every request).
        return path.to_owned();
    }
    rebuild_path(path, merge_slashes)
}

/// [`normalize_path`] the long way, for a path that starts with `/`.
fn rebuild_path(path: &str, merge_slashes: bool) -> String {
    let decoded = escapes::decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let mut ends_with_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => ends_with_slash = last,
            ".." => {
                out.pop();
                ends_with_slash = last;
            }
            "" if last => ends_with_slash = true,
            "" if merge_slashes => {}
            s => {
                out.push(s);
                ends_with_slash = false;
            }
        }
    }
    let mut p = String::with_capacity(decoded.len());
    p.push('/');
    p.push_str(&out.join("/"));
    if ends_with_slash && !out.is_empty() {
        p.push('/');
    }
    p
}

/// The canonical `path` with each segment cut at its first `;` (and at
/// its first `%3B` if `escaped_too`), then dot segments removed and empty
/// segments merged, as servlet containers route it (`..;` is `..`). `None`
/// for a path that does not start with `/`.
fn without_path_params(path: &str, escaped_too: bool) -> Option<String> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_with_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let mut cut = seg.find(';').map_or(*seg, |i| &seg[..i]);
        if escaped_too {
            // Byte by byte: a `str` pattern would set up a searcher for
            // every segment of every reading.
            if let Some(i) = cut.as_bytes().windows(3).position(|w| w == b"%3B") {
                cut = &cut[..i];
            }
        }
        let last = i + 1 == segments.len();
        match cut {
            "." | "" => ends_with_slash = last,
            ".." => {
                kept.pop();
                ends_with_slash = last;
            }
            s => {
                kept.push(s);
                ends_with_slash = false;
            }
        }
    }
    let mut p = format!("/{}", kept.join("/"));
    if ends_with_slash && !kept.is_empty() {
        p.push('/');
    }
    Some(p)
}

/// Whether [`normalize_path`] would return `path` (which starts with `/`)
/// unchanged: no escape to decode or upper-case, no `.` or `..` segment,
/// and, when slashes are merged, no empty segment but the last.
fn is_normal(path: &str, merge_slashes: bool) -> bool {
    if path.contains('%') {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." | ".." => return false,
            "" if merge_slashes && !last => return false,
            _ => {}
        }
    }
    true
}

/// Most readings of one path. Each rule of [`other_spellings`] removes
/// what made a path ambiguous and applies to the whole path, so a path has
/// a handful (no path found has more than a few dozen): a bound against
/// what was not foreseen. A read of a path with more is not cached, a
/// write refused.
pub const MAX_READINGS: usize = 64;

/// Most bytes of the readings of a request's own path (and of its
/// `Destination`), together, as `ids::MAX_ID_BYTES` bounds its id
/// readings. Each reading is about as long as the path and is read again
/// for its own readings, so the work grows with their bytes: a 16 KB path
/// of crafted segments with 48 readings took 27 ms per request without
/// this bound. Real paths have a few readings of a few hundred bytes. A
/// read past it is not cached; a write is refused.
pub const MAX_READING_BYTES: usize = 16 * 1024;

/// The paths other than the canonical `path` itself that apps may read it
/// as, where they disagree on it — each canonical, not folded for routes —
/// or `None` if there are more than [`MAX_READINGS`] or more than
/// `max_bytes` of them ([`MAX_READING_BYTES`] for a request's own path,
/// more for one an answer names: `canonical::ReadingBytes`). Empty for a path
/// without `;`, `%3B`, `\`, `%2F` or a `.` in its last segment (most API
/// paths). The readings are closed under the rules: a reading of a reading
/// is one (`/items;x/1.json/` is `/items/1` to Spring: params dropped, then
/// the suffix, the trailing `/` aside). The rules:
/// - `;params`: Java servlet containers and Spring drop each segment's
///   (`/posts/1;jsessionid=x` is post 1 there, and so is `/posts/x/..;/1`),
///   Tomcat before decoding (`%3B` stays a `;`), others after; Puma
///   (Rails) ends the path at the first `;`; Express and most others keep
///   them (`1;x` is an id).
/// - `\`: WHATWG URL parsers (Remix, SvelteKit, Hono's Node server) read
///   it as `/`, others as a character of the segment.
/// - `%2F`: servers that decode the path before routing read it as `/`
///   (WSGI and ASGI servers, so Django, Flask, FastAPI; Laravel, Symfony;
///   gin, gorilla/mux), others as a character of the segment (Express,
///   Rails, Spring).
/// - a path that starts with `//` or `/\`: a host and a path to WHATWG
///   parsers (`new URL(req.url, base)`), a path to others.
/// - `//` with `merge_slashes: false`: one `/` to servlet containers and
///   Spring.
/// - a format suffix: Rails (`resources` are `/posts/:id(.:format)`) and
///   Spring's suffix patterns route `/posts/7.json` as post 7, others as
///   an id `7.json`.
pub fn other_spellings(path: &str, merge_slashes: bool, max_bytes: usize) -> Option<Vec<String>> {
    closed_readings(path, merge_slashes, MAX_READINGS, max_bytes)
}

/// [`other_spellings`] with at most `max` readings and `max_bytes` of them.
fn closed_readings(
    path: &str,
    merge_slashes: bool,
    max: usize,
    max_bytes: usize,
) -> Option<Vec<String>> {
    // Most paths have none: one pass over them, no allocation.
    let mut found = readings_of(path, merge_slashes);
    if found.is_empty() {
        return Some(Vec::new());
    }
    let mut all = vec![path.to_string()];
    let mut seen = HashSet::from([path.to_string()]);
    let mut bytes = 0;
    let mut next = 0;
    loop {
        for reading in found {
            if seen.insert(reading.clone()) {
                bytes += reading.len();
                if all.len() > max || bytes > max_bytes {
                    return None;
                }
                all.push(reading);
            }
        }
        next += 1;
        let Some(p) = all.get(next) else { break };
        found = readings_of(p, merge_slashes);
    }
    all.remove(0);
    Some(all)
}

/// What each rule of [`other_spellings`] reads `path` as, once.
fn readings_of(path: &str, merge_slashes: bool) -> Vec<String> {
    // Every request asks; most paths have nothing a rule reads.
    if !may_read_otherwise(path, merge_slashes) {
        return Vec::new();
    }
    each_reading_of(path, merge_slashes)
}

/// Whether a rule of [`readings_of`] may apply to `path`: one pass over
/// its bytes for what every rule needs (`\`, `%` of `%2F` and `%3B`, `;`,
/// the `.` of a format suffix, a `//`).
fn may_read_otherwise(path: &str, merge_slashes: bool) -> bool {
    let b = path.as_bytes();
    b.iter().any(|c| matches!(c, b'\\' | b'%' | b';' | b'.'))
        || b.starts_with(b"//")
        || (!merge_slashes && path.contains("//"))
}

fn each_reading_of(path: &str, merge_slashes: bool) -> Vec<String> {
    let mut out = Vec::new();
    for sent in ["\\", "%2F"] {
        if path.contains(sent) {
            out.push(normalize_path(&path.replace(sent, "/"), merge_slashes));
        }
    }
    if path.contains(';') || path.contains("%3B") {
        out.extend(without_path_params(path, false));
        out.extend(without_path_params(path, true));
        let up_to_params = path.split(';').next().unwrap_or_default();
        out.push(normalize_path(up_to_params, merge_slashes));
    }
    // WHATWG parsers read a path that starts with `//` (a `\` is a `/` to
    // them) as a host and a path: `new URL("/\\x/items/1", base)` is
    // `/items/1` on host `x` (Node apps that parse `req.url` so, Qwik City).
    // They skip every `/` and `\` before the host, however many.
    if let Some(after) = path
        .strip_prefix('/')
        .filter(|r| r.starts_with(['/', '\\']))
    {
        let rest = after.trim_start_matches(['/', '\\']);
        let after_host = rest.find(['/', '\\']).map_or("/", |i| &rest[i..]);
        out.push(normalize_path(
            &after_host.replace('\\', "/"),
            merge_slashes,
        ));
    }
    // Servlet containers and Spring merge `//` whatever `merge_slashes`
    // says of the app.
    if !merge_slashes && path.contains("//") {
        out.push(normalize_path(path, true));
    }
    out.extend(without_format(path).map(str::to_string));
    out.retain(|p| p != path);
    out
}

/// `path` without the format suffix of its last segment, a trailing `/`
/// aside (`/posts/7.json` and `/posts/7.json/` are `/posts/7`): `None`
/// when that segment has no `.` after its first character, or nothing
/// after the `.`.
fn without_format(path: &str) -> Option<&str> {
    let trimmed = path.trim_end_matches('/');
    let last = trimmed.rfind('/')? + 1;
    let dot = trimmed[last..].find('.').filter(|&d| d > 0)? + last;
    (dot + 1 < trimmed.len()).then(|| &trimmed[..dot])
}

/// Query pairs ordered by name, pairs with the same name kept in the order
/// sent (apps read `?a=1&a=2` as the list `[1, 2]`); empty pairs dropped.
pub fn sorted_query(q: &str) -> String {
    let pairs = q.split('&');
    let in_order = pairs.clone().all(|p| !p.is_empty())
        && pairs
            .clone()
            .zip(pairs.clone().skip(1))
            .all(|(a, b)| pair_name(a) <= pair_name(b));
    if in_order {
        // Most queries: one pair, or already in order (one copy).
        return q.to_owned();
    }
    sort_pairs(q)
}

/// A query pair's name (`a` of `a=1`).
fn pair_name(pair: &str) -> &str {
    pair.split('=').next().unwrap_or_default()
}

/// [`sorted_query`] the long way.
fn sort_pairs(q: &str) -> String {
    let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    // `sort_by` is stable: equal names keep their order.
    pairs.sort_by(|a, b| pair_name(a).cmp(pair_name(b)));
    pairs.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string of up to `len` characters from `alphabet`.
    fn all_strings(alphabet: &[char], len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn a_path_the_quick_scan_passes_has_no_other_reading() {
        // Every short path from the bytes the rules read and their
        // neighbours: where the scan says no rule applies, none does.
        let alphabet = ['/', 'a', '.', ';', '\\', '%', '2', 'F', 'B', '3'];
        for path in all_strings(&alphabet, 6) {
            let path = format!("/{path}");
            for merge in [true, false] {
                if !may_read_otherwise(&path, merge) {
                    assert_eq!(
                        each_reading_of(&path, merge),
                        Vec::<String>::new(),
                        "{path} (merge_slashes: {merge})"
                    );
                }
            }
        }
        assert!(!may_read_otherwise("/api/posts/1", true));
        assert!(may_read_otherwise("/api/posts/1.json", true));
        assert!(may_read_otherwise("/a//b", false));
        assert!(!may_read_otherwise("/a//b", true));
    }

    #[test]
    fn the_short_cuts_give_what_the_long_way_gives() {
        // Every path of up to six characters over the characters that
        // matter (slashes, dots, escapes, case), both slash policies.
        for tail in all_strings(&['/', '.', 'a', '%', '2', 'e', 'E'], 6) {
            let path = format!("/{tail}");
            for merge in [false, true] {
                assert_eq!(
                    normalize_path(&path, merge),
                    rebuild_path(&path, merge),
                    "{path:?} merge={merge}"
                );
            }
        }
        for q in all_strings(&['a', 'b', '=', '&', '1'], 7) {
            assert_eq!(sorted_query(&q), sort_pairs(&q), "{q:?}");
        }
    }

    #[test]
    fn a_target_that_is_no_path_has_no_path_params_to_drop() {
        // Found by review: cutting `é;x` (a relative `Location` against
        // `*`) at byte 1 panicked.
        assert_eq!(without_path_params("é;x", false), None);
        assert_eq!(
            other_spellings("é;x", true, MAX_READING_BYTES),
            Some(vec!["é".to_string()])
        );
    }

    #[test]
    fn readings_past_their_bytes_are_none() {
        // A path with a `;` and a format suffix has four readings (and
        // theirs), each about as long as the path: at 5 KB each is under
        // the bound, together they are past it.
        let path = |n: usize| format!("/{}/a;x/1.json", "s".repeat(n));
        let readings = other_spellings(&path(2_000), true, MAX_READING_BYTES).unwrap();
        assert!(readings.len() >= 4, "{readings:?}");
        let five = path(5_000);
        let readings = other_spellings(&five, true, usize::MAX).unwrap();
        assert!(readings.iter().all(|r| r.len() < MAX_READING_BYTES));
        assert!(readings.iter().map(String::len).sum::<usize>() > MAX_READING_BYTES);
        assert_eq!(other_spellings(&five, true, MAX_READING_BYTES), None);
    }

    #[test]
    fn escaped_path_params_are_cut_where_they_start() {
        assert_eq!(
            without_path_params("/a%3Bx;y/b%3B/%3B/c", true).as_deref(),
            Some("/a/b/c")
        );
        assert_eq!(
            without_path_params("/a%3Bx;y/b%3B/c", false).as_deref(),
            Some("/a%3Bx/b%3B/c")
        );
    }

    #[test]
    fn readings_past_the_bound_are_none() {
        let path = "/a;x/b\\c%2Fd.e";
        let bytes = MAX_READING_BYTES;
        let all = closed_readings(path, true, MAX_READINGS, bytes).unwrap();
        assert!(all.len() > 2, "{all:?}");
        assert_eq!(closed_readings(path, true, 2, bytes), None);
        assert_eq!(closed_readings(path, true, all.len(), bytes), Some(all));
    }
}
