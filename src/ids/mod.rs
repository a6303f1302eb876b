//! An id spelled otherwise: the numbers and UUIDs a path segment names to
//! apps that parse it, so that every spelling of one record shares its tags.
//!
//! An app that routes `/scenes/:id` and parses `id` as an integer reads
//! `/scenes/0132`, `/scenes/+132`, `/scenes/132-my-title` (`parseInt`,
//! Rails' `find`) and `/scenes/%20132` as scene 132: another path to
//! freshgate, the same row to the app. A write through one spelling must
//! invalidate what the others cached, both ways. So each segment that an
//! integer or UUID parser reads as something other than itself has
//! *readings*: the canonical spelling of each value a parser gives it
//! (`132`, lower-case hyphenated UUIDs). A path's id readings are every
//! combination of its segments' (any segment may be the one the app
//! parses, or a slug it compares as text), and a read is tagged, and a
//! write invalidates, as each of them too.
//!
//! Why that meets: if the app reads two spellings `a` and `b` as one value
//! `v`, then `v`'s canonical spelling is among the readings of both (or is
//! one of them), so an entry cached through one carries a tag a write
//! through the other invalidates. A canonical spelling has no readings of
//! its own, so most paths (`/scenes/132`, `/posts/my-title`) cost a look at
//! each segment's first byte and length. The cost of reading every way: a
//! digit-led slug or a UUID has number readings too (`5f3a…` is 5 to
//! `parseInt`), so a write through one also purges what other such
//! spellings of that number cached — wider, never stale.
//!
//! The parsers read as (each reading is a superset of what one parser
//! accepts; a reading no app uses only widens a purge):
//! - decimal: surrounding whitespace (and, as Spring binds a number, inner
//!   whitespace), a sign, leading zeros, `_` between digits and any
//!   Unicode decimal digits (`parseInt`, `Number`, Python's `int`, Java's
//!   `parseLong`, Go's `Atoi`, Rust's `parse`, Postgres);
//! - the integer a segment starts with, the rest ignored (`parseInt`,
//!   Ruby's `to_i` and Rails' `find`, PHP, MySQL's cast, C's `atoi`), with
//!   and without Ruby's `_` between digits;
//! - radix prefixes, as far as their digits go: `0x`, `#`, `&h` (hex to
//!   `Number`, `parseInt`, Python's `int(s, 0)`, Go's `ParseInt(s, 0, …)`,
//!   Java's `Long.decode`, .NET's converters), `0o`, `0b`, Ruby's `0d`;
//!   and a whole segment after a leading `0` as octal (`0132` is 90 to
//!   Go's `ParseInt(s, 0, …)` and `strtol(s, 0, 0)`);
//! - a decimal number with a fraction or exponent, truncated (`Number`
//!   for `1.32e2`, PHP's `(int)`, MySQL's comparison);
//! - a UUID as leniently as Python's `UUID` reads one (Django's
//!   `UUIDField`; Postgres' `uuid` accepts less): upper-case hex, braces,
//!   `urn:` and `uuid:` anywhere, hyphens anywhere or none.
//!
//! Not read (docs/architecture.md, "What is still not promised"): other
//! radixes (an app's own hex or base-36 ids with leading zeros), Java's
//! short UUID groups (`1-1-1-1-1`), .NET's `Guid` forms in parentheses or
//! hex lists, a 16-byte segment Ecto takes as a raw UUID, integers past
//! 2^53 that JavaScript rounds to another, a number rounded rather than
//! truncated, an id at a slug's end (`my-title-132`), `int(float(s))`
//! over underscores or other scripts' digits, and whatever an app does
//! with a value on its own.

use std::borrow::Cow;

use crate::escapes;

mod parse;

use parse::{decimal, digit_value, is_space, leading_integer, leading_number, radix, uuid};

/// Most id readings of one path (beside the path itself). A path has one
/// reading per parsed value of each such segment, multiplied over its
/// segments: a handful for a real path (four ids zero-padded, each of
/// which `strtol` reads as octal too, make 80), more only for one built to
/// cost. A write records a tag per reading: the bound keeps what one
/// request can make the invalidation log hold small.
pub const MAX_ID_READINGS: usize = 128;

/// About the most bytes of one path's id readings, all told (a reading
/// may be a little longer than its segment): each reading is a copy
/// of the path, and its tags are as long (a 128-byte path may have all
/// [`MAX_ID_READINGS`], a 4 KiB one four).
pub const MAX_ID_BYTES: usize = 16 * 1024;

/// The paths other than `path` (a route path: `/`-separated, its escapes
/// but `%2F`, `%25` and control bytes decoded) that apps parsing its ids
/// read it as, at most `max` of them and about `max_bytes` in all
/// ([`MAX_ID_BYTES`] for a request's own path); `None` if there are more.
/// The count is taken segment by segment, before any path is built, and
/// each reading is built once: the work is linear in the path's length
/// and in the bytes made.
pub fn id_readings(path: &str, max: usize, max_bytes: usize) -> Option<Vec<String>> {
    // Most paths: no segment is spelled otherwise, nothing allocated.
    if !path.split('/').any(may_be_spelled_otherwise) {
        return Some(Vec::new());
    }
    let max = max.min(max_bytes / path.len().max(1));
    let mut choices: Vec<(&str, Vec<String>)> = Vec::new();
    let mut count: usize = 1;
    for segment in path.split('/') {
        let readings = if may_be_spelled_otherwise(segment) {
            segment_readings(segment)
        } else {
            Vec::new()
        };
        count = count.saturating_mul(readings.len() + 1);
        if count > max.saturating_add(1) {
            return None;
        }
        choices.push((segment, readings));
    }
    // Combination `k` takes, from each segment, its choice numbered by
    // `k`'s digits in the mixed radix of the segments' choice counts;
    // choice 0 is the segment as sent, so `k = 0` is the path itself.
    let mut paths = Vec::with_capacity(count - 1);
    for k in 1..count {
        let mut p = String::with_capacity(path.len() + 8);
        let mut rest = k;
        for (i, (segment, readings)) in choices.iter().enumerate() {
            let n = readings.len() + 1;
            if i > 0 {
                p.push('/');
            }
            p.push_str(match rest % n {
                0 => segment,
                pick => &readings[pick - 1],
            });
            rest /= n;
        }
        paths.push(p);
    }
    Some(paths)
}

/// Parameter `values` as an operator names them (`id=0132`), with every
/// combination of their readings (scene 132 to the app); `None` past
/// [`MAX_ID_READINGS`].
pub fn every_reading(values: &[(String, String)]) -> Option<Vec<Vec<(String, String)>>> {
    let mut all = vec![Vec::new()];
    for (k, v) in values {
        let mut choices = vec![v.clone()];
        choices.extend(segment_readings(v));
        if all.len() * choices.len() > MAX_ID_READINGS + 1 {
            return None;
        }
        all = all
            .iter()
            .flat_map(|done: &Vec<(String, String)>| {
                choices.iter().map(move |c| {
                    let mut next = done.clone();
                    next.push((k.clone(), c.clone()));
                    next
                })
            })
            .collect();
    }
    Some(all)
}

/// Whether `segment` may have [`segment_readings`]: 32 bytes or more (a
/// UUID's 32 hex digits, however spelled), or, past any leading
/// whitespace, one that is not a plain decimal (`132`, `0`, `-132`) and
/// starts as a number does. A look at a few bytes: a path built of
/// segments that only look like numbers (`-`, `.x`, ` a`) costs no parse.
fn may_be_spelled_otherwise(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.len() >= 32 {
        return true;
    }
    let rest = after_spaces(b);
    let spaced = rest.len() < b.len();
    match rest.first() {
        None => spaced,
        // 16 digits and more: JavaScript reads some as another number.
        Some(b'1'..=b'9') => spaced || !is_plain_decimal(rest),
        Some(b'0') => spaced || rest.len() > 1,
        Some(b'+') => starts_number(&rest[1..]),
        Some(b'-') => spaced || (starts_number(&rest[1..]) && !is_plain_decimal(&rest[1..])),
        Some(b'.') => rest.get(1).is_some_and(u8::is_ascii_digit),
        Some(b'#') => starts_hex(&rest[1..]),
        // `&h` (.NET), or whitespace Spring removes before it.
        Some(b'&') => matches!(rest.get(1), Some(b'h' | b'H')) || starts_hex(&rest[1..]),
        Some(_) => starts_with_wide_digit_or_space(rest),
    }
}

/// `b` past its leading spaces and escaped control bytes (`%09`), as a
/// parser that trims them sees it.
fn after_spaces(mut b: &[u8]) -> &[u8] {
    loop {
        match b {
            // A raw control byte only in a `Location`: a request's path
            // has them escaped.
            [c, rest @ ..] if *c <= b' ' || *c == 0x7F => b = rest,
            [b'%', h, l, rest @ ..]
                if escapes::escaped_byte(*h, *l).is_some_and(|c| c < b' ' || c == 0x7F) =>
            {
                b = rest
            }
            _ => return b,
        }
    }
}

/// Whether what follows a sign may start a number: a digit, a `.`, a
/// radix prefix's `#` or `&`, whitespace Spring removes, or a digit of
/// another script.
fn starts_number(b: &[u8]) -> bool {
    match b.first() {
        Some(c) if c.is_ascii_digit() => true,
        Some(&c) if c <= b' ' || c == 0x7F => true,
        Some(b'.' | b'#' | b'&' | b'%') => true,
        Some(_) => starts_with_wide_digit_or_space(b),
        None => false,
    }
}

/// `[1-9][0-9]*`, under 16 digits: a number spelled as every parser
/// spells and reads it.
fn is_plain_decimal(b: &[u8]) -> bool {
    matches!(b.first(), Some(b'1'..=b'9')) && b.len() < 16 && b.iter().all(u8::is_ascii_digit)
}

/// Whether `b` may start a hex number's digits: a hex digit, whitespace
/// Spring removes first, or a digit or letter of another script (Java).
fn starts_hex(b: &[u8]) -> bool {
    match b.first() {
        Some(c) if c.is_ascii_hexdigit() => true,
        Some(&c) if c <= b' ' || c == b'%' => true,
        Some(_) => starts_with_wide_digit_or_space(b),
        None => false,
    }
}

/// Whether `b` starts with a character beyond ASCII that parsers read
/// as a digit or trim as whitespace.
fn starts_with_wide_digit_or_space(b: &[u8]) -> bool {
    let lead = b.first().map_or(0, |&c| match c {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 0,
    });
    std::str::from_utf8(b.get(..lead).unwrap_or_default())
        .ok()
        .and_then(|s| s.chars().next())
        .is_some_and(|c| {
            is_space(c)
                || digit_value(c).is_some()
                || matches!(c, '\u{FF21}'..='\u{FF26}' | '\u{FF41}'..='\u{FF46}')
        })
}

/// What apps that parse `segment` as an id may read it as, other than
/// itself: each reading once, canonical (see the module's list).
pub fn segment_readings(segment: &str) -> Vec<String> {
    // Apps parse the value they were given, its escapes decoded (a `%09`
    // is a tab to them, which `Number` trims).
    let decoded = if segment.contains('%') {
        Cow::Owned(escapes::decode_all(segment))
    } else {
        Cow::Borrowed(segment)
    };
    let t = decoded.trim_matches(is_space);
    // Spring binds a number after removing every whitespace, inside too.
    let squeezed: Option<String> = t
        .contains(is_space)
        .then(|| t.chars().filter(|&c| !is_space(c)).collect());
    let mut out: Vec<String> = [
        decimal(t),
        leading_integer(t, false),
        leading_integer(t, true),
        radix(t, true, true),
        radix(t, true, false),
        radix(t, false, false),
        leading_number(t),
        squeezed.as_deref().and_then(decimal),
        squeezed.as_deref().and_then(|s| radix(s, true, true)),
        uuid(&decoded),
        uuid(t),
        // `Number(" ")` is 0.
        (t.is_empty() && !decoded.is_empty()).then(|| "0".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    out.sort();
    out.dedup();
    out.retain(|r| r != segment);
    out
}

#[cfg(test)]
mod tests {
    use super::parse::DIGIT_ZEROS;
    use super::*;

    fn readings(s: &str) -> Vec<String> {
        segment_readings(s)
    }

    #[test]
    fn a_number_spelled_otherwise_reads_as_its_plain_spelling() {
        for (spelling, value) in [
            ("0132", "132"),
            ("+132", "132"),
            (" 132 ", "132"),
            ("%09132", "132"),
            ("\u{a0}132", "132"),
            ("132-my-title", "132"),
            ("132.json", "132"),
            ("1_32", "132"),
            ("0x84", "132"),
            ("0X84", "132"),
            ("0o204", "132"),
            ("0b10000100", "132"),
            ("1.32e2", "132"),
            ("132.0", "132"),
            ("132.", "132"),
            ("13.2E1", "132"),
            ("\u{661}\u{663}\u{662}", "132"),
            ("\u{ff11}\u{ff13}\u{ff12}", "132"),
            ("-0", "0"),
            ("-0132", "-132"),
            ("00", "0"),
            (" ", "0"),
            // Found by review: Ruby's `0d`, Java's `#` (`Long.decode`,
            // Spring) and Spring's inner whitespace.
            ("0d132", "132"),
            ("%2384", "132"),
            ("1%2032", "132"),
            ("&H84", "132"),
            // Found by the second review: digits of other scripts after a
            // radix prefix (Java, Python), `parseInt` stopping at `_`,
            // and `strtol` reading octal as far as it goes.
            ("#\u{668}\u{664}", "132"),
            ("0x\u{668}\u{664}", "132"),
            ("0x\u{ff18}\u{ff14}", "132"),
            ("#\u{ff26}\u{ff26}", "255"),
            ("0x8_4", "8"),
            ("0x8_4", "132"),
            ("0132-my-title", "90"),
            // Found by the final attack: `parseInt` and `strtol` stop at a
            // digit of another script, and `strtol` at an 8 or 9.
            ("0x8b\u{661}", "139"),
            ("0x8c\u{ff26}", "140"),
            ("010\u{661}", "8"),
            ("0139", "11"),
            // And the last review's: Python's `int(s, 0)` reads any
            // script's 0 as the prefix's; `strtol` reads `09` as 0.
            ("\u{660}x84", "132"),
            ("\u{ff10}x84", "132"),
            ("09", "0"),
            // Found by the last read: Go's `ParseInt` takes a `_` after
            // an octal's leading `0`.
            ("0_17", "15"),
        ] {
            let r = readings(spelling);
            assert!(r.iter().any(|x| x == value), "{spelling:?}: {r:?}");
        }
        // What parsers disagree on is read every way: parseInt stops at
        // the `.`, Number reads the exponent; Go's ParseInt base 0 and C's
        // strtol read a leading zero as octal.
        assert_eq!(readings("1.32e2"), ["1", "132"]);
        assert_eq!(readings("0132"), ["132", "90"]);
        assert_eq!(readings("0x84"), ["0", "132"]);
        // Go's `ParseInt` refuses `089`; `strtol` reads its `0`.
        assert_eq!(readings("0089"), ["0", "89"]);
    }

    #[test]
    fn a_canonical_spelling_has_no_readings() {
        for s in [
            "132",
            "0",
            "-132",
            "scenes",
            "my-title",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "",
        ] {
            assert_eq!(readings(s), Vec::<String>::new(), "{s:?}");
        }
        // Canonical readings are fixed points: a reading of a reading is
        // nothing new.
        for s in [
            "0132",
            "+7",
            "1.32e2",
            "0x84",
            "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}",
        ] {
            for r in readings(s) {
                if r.bytes().all(|c| c.is_ascii_digit() || c == b'-') {
                    assert_eq!(readings(&r), Vec::<String>::new(), "{s} → {r}");
                }
            }
        }
    }

    #[test]
    fn a_uuid_spelled_otherwise_reads_as_its_canonical_form() {
        let canonical = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        for spelling in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11",
            "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            // Python's `UUID` (found by review): `uuid:`, `urn:`, braces
            // that do not pair, a `0x` inside the 32 characters.
            "uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "urn:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}}",
            // Python's `int` reads other scripts' digits.
            "a\u{660}eebc\u{669}\u{669}-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert!(may_be_spelled_otherwise(spelling), "{spelling}");
            assert_eq!(readings(spelling), [canonical], "{spelling}");
        }
        assert!(readings("0xeebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
            .contains(&"00eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_string()));
        // All digits, no hyphens: a UUID too (found by review).
        let digits = "12345678123412341234123456789012";
        assert!(may_be_spelled_otherwise(digits));
        assert_eq!(readings(digits), ["12345678-1234-1234-1234-123456789012"]);
    }

    #[test]
    fn the_quick_look_misses_no_segment_with_readings() {
        // Every segment of up to 4 characters over the bytes the parsers
        // read: where the first-byte look says none, there are none.
        let alphabet = [
            "0", "1", "+", "-", ".", "e", "x", "_", "a", " ", "%", "9", "{", "#", "&", "h",
            "\u{a0}", "\u{663}", "é", "\t", "\u{ff10}",
        ];
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        for s in all {
            if !may_be_spelled_otherwise(&s) {
                assert_eq!(readings(&s), Vec::<String>::new(), "{s:?}");
            }
        }
    }

    #[test]
    fn a_path_reads_as_every_combination_of_its_segments() {
        let all = id_readings("/stories/07/scenes/+9", MAX_ID_READINGS, MAX_ID_BYTES).unwrap();
        for p in [
            "/stories/7/scenes/9",
            "/stories/07/scenes/9",
            "/stories/7/scenes/+9",
        ] {
            assert!(all.iter().any(|x| x == p), "{p}: {all:?}");
        }
        assert!(!all.iter().any(|x| x == "/stories/07/scenes/+9"));
        assert_eq!(
            id_readings("/studio/api/scenes/132", MAX_ID_READINGS, MAX_ID_BYTES),
            Some(vec![])
        );
    }

    #[test]
    fn a_path_with_more_readings_than_the_bound_is_none_before_it_is_built() {
        assert_eq!(id_readings("/00/00/00", 3, MAX_ID_BYTES), None);
        assert_eq!(
            id_readings("/00/00", 3, MAX_ID_BYTES).map(|v| v.len()),
            Some(3)
        );
        // Thousands of such segments: past the length bound, none built.
        let long = "/+00".repeat(5000);
        assert_eq!(id_readings(&long, MAX_ID_READINGS, MAX_ID_BYTES), None);
        // Found by review: a few ids before thousands of plain segments
        // were built a segment at a time, every partial path copied at
        // each (quadratic). Each reading is one copy now.
        // And all told they are bounded in bytes (found by review: 255
        // readings of 8 KiB): a 2 KiB path may have eight.
        let wide = format!("{}{}", "/00".repeat(6), "/a".repeat(1000));
        assert_eq!(id_readings(&wide, MAX_ID_READINGS, MAX_ID_BYTES), None);
        let few = format!("{}{}", "/00".repeat(3), "/a".repeat(1000));
        assert_eq!(
            id_readings(&few, MAX_ID_READINGS, MAX_ID_BYTES).map(|r| r.len()),
            Some(7)
        );
        // A long path without readings is no concern, however long.
        let slug = format!("/{}", "a".repeat(70_000));
        assert_eq!(
            id_readings(&slug, MAX_ID_READINGS, MAX_ID_BYTES),
            Some(vec![])
        );
    }

    #[test]
    fn digits_of_every_script_have_their_value() {
        for zero in DIGIT_ZEROS {
            for d in 0..10u8 {
                let c = char::from_u32(zero + u32::from(d)).unwrap();
                assert_eq!(digit_value(c), Some(d), "U+{:X}", zero + u32::from(d));
            }
        }
        assert_eq!(digit_value('a'), None);
        assert_eq!(digit_value('/'), None);
        assert!(DIGIT_ZEROS.windows(2).all(|w| w[0] + 10 <= w[1]));
    }
}
