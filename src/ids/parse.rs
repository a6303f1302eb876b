//! The parsers `ids` reads a segment with: each a superset of what the
//! apps' own (JavaScript, Python, Ruby, Java, Go, C, PHP, Postgres, MySQL)
//! accept, each giving its value's canonical spelling. Pure functions over
//! one trimmed segment.

use std::borrow::Cow;

/// Whitespace that parsers trim: Unicode's (Python's `strip`, JavaScript's
/// `trim`), every control byte (Java's `trim`), and the BOM JavaScript trims.
pub(super) fn is_space(c: char) -> bool {
    // U+180E was whitespace until Unicode 6.3 (Java 8's `trim` in Spring).
    c <= ' ' || c.is_whitespace() || matches!(c, '\u{FEFF}' | '\u{180E}')
}

/// The canonical decimal of a sign and ASCII digits: no leading zeros, no
/// `+`, and no `-` on zero.
fn canonical_integer(negative: bool, digits: &str) -> String {
    let digits = digits.trim_start_matches('0');
    match (digits.is_empty(), negative) {
        (true, _) => "0".to_string(),
        (false, true) => format!("-{digits}"),
        (false, false) => digits.to_string(),
    }
}

/// `s` without a leading `+` or `-`, and whether it was `-`.
fn sign(s: &str) -> (bool, &str) {
    match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    }
}

/// The whole of `t` as a decimal integer: a sign, digits of any script,
/// `_` between two of them.
pub(super) fn decimal(t: &str) -> Option<String> {
    let (negative, rest) = sign(t);
    // No allocation before a digit: most segments asked are no number.
    let mut digits = String::new();
    let mut after_digit = false;
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(d) = digit_value(c) {
            digits.push(char::from(b'0' + d));
            after_digit = true;
        } else if c == '_' && after_digit && chars.peek().and_then(|&n| digit_value(n)).is_some() {
            after_digit = false;
        } else {
            return None;
        }
    }
    (!digits.is_empty()).then(|| canonical_integer(negative, &digits))
}

/// The integer `t` starts with, whatever follows: a sign and ASCII digits
/// (and, with `underscores`, `_` between two of them, as Ruby's `to_i`).
pub(super) fn leading_integer(t: &str, underscores: bool) -> Option<String> {
    let (negative, rest) = sign(t);
    let b = rest.as_bytes();
    let mut digits = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            digits.push(char::from(b[i]));
        } else if !(underscores
            && b[i] == b'_'
            && i > 0
            && b[i - 1].is_ascii_digit()
            && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            break;
        }
        i += 1;
    }
    (!digits.is_empty()).then(|| canonical_integer(negative, &digits))
}

/// `t` as an integer with a radix prefix, as far as its digits go
/// (`0x84`, `0X84`, `#84` and `&h84` are hex: JavaScript, Python, Go, Java's
/// `decode`, .NET; `0o204`, `0b…`; Ruby's `0d132`), or as octal after a
/// leading `0` (`0204`). Each parser its way: with `underscores`, `_`
/// between digits is skipped and an `8` or `9` makes a leading-zero octal
/// no number (Python, Java's `decode`, Go's `ParseInt(s, 0, …)`); without,
/// `_` ends the digits and octal is read as far as it goes (`parseInt`,
/// C's `strtol(s, 0, 0)`: `0139` is 11). With `any_script`, digits of
/// other scripts and full-width letters count (Java, Python); without,
/// they end the digits. `None` past 128 bits.
pub(super) fn radix(t: &str, underscores: bool, any_script: bool) -> Option<String> {
    let (negative, rest) = sign(t);
    // Python reads any script's 0 as the prefix's (`٠x84` is 132).
    let rest: Cow<str> = match rest.chars().next() {
        Some(c) if any_script && c != '0' && digit_value(c) == Some(0) => {
            Cow::Owned(format!("0{}", &rest[c.len_utf8()..]))
        }
        _ => Cow::Borrowed(rest),
    };
    let lower = rest.get(..2).map(str::to_ascii_lowercase);
    let (base, digits) = match lower.as_deref() {
        Some("0x" | "&h") => (16, &rest[2..]),
        Some("0o") => (8, &rest[2..]),
        Some("0b") => (2, &rest[2..]),
        Some("0d") => (10, &rest[2..]),
        _ if rest.starts_with('#') => (16, &rest[1..]),
        _ if rest.len() > 1 && rest.starts_with('0') => (8, &rest[1..]),
        _ => return None,
    };
    let octal_zero = base == 8 && !rest.starts_with("0o") && !rest.starts_with("0O");
    let mut value: u128 = 0;
    // `strtol` has read the leading `0` itself: `09` is 0 to it.
    let mut any = octal_zero && !underscores;
    // Python and Go allow a `_` straight after `0x`, `0o`, `0b`, and Go
    // after an octal's leading `0` (`0_17` is 15 to `ParseInt(s, 0, …)`).
    let mut underscore_ok = rest.starts_with('0');
    for c in digits.chars() {
        let digit = if any_script {
            any_digit(c, base)
        } else {
            c.to_digit(base)
        };
        match digit {
            Some(d) => {
                value = value
                    .checked_mul(u128::from(base))?
                    .checked_add(u128::from(d))?;
                any = true;
                underscore_ok = true;
            }
            None if c == '_' && underscores && underscore_ok => underscore_ok = false,
            None if octal_zero && underscores && c.is_ascii_digit() => return None,
            None => break,
        }
    }
    any.then(|| canonical_integer(negative, &value.to_string()))
}

/// `c`'s value as a digit in `base`: ASCII, a decimal digit of any script
/// (Python's `int`, Java's `Character.digit`), or a full-width letter
/// (Java's).
fn any_digit(c: char, base: u32) -> Option<u32> {
    let d = c.to_digit(base).or_else(|| digit_value(c).map(u32::from));
    let d = d.or_else(|| match c {
        '\u{FF21}'..='\u{FF3A}' => Some(u32::from(c) - 0xFF21 + 10),
        '\u{FF41}'..='\u{FF5A}' => Some(u32::from(c) - 0xFF41 + 10),
        _ => None,
    });
    d.filter(|&d| d < base)
}

/// The decimal number `t` starts with (a fraction and an exponent read),
/// truncated to an integer as the float an app parses it to is: `None` if
/// it starts with none, or one out of a database integer's range.
pub(super) fn leading_number(t: &str) -> Option<String> {
    let b = t.as_bytes();
    let i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits_from = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let int_end = digits_from(i);
    let mut end = int_end;
    let mut mantissa = int_end > i;
    if b.get(end) == Some(&b'.') {
        let frac_end = digits_from(end + 1);
        mantissa |= frac_end > end + 1;
        end = frac_end;
    }
    if !mantissa {
        return None;
    }
    if matches!(b.get(end), Some(b'e' | b'E')) {
        let mut e = end + 1;
        e += usize::from(matches!(b.get(e), Some(b'+' | b'-')));
        let exp_end = digits_from(e);
        if exp_end > e {
            end = exp_end;
        }
    }
    let value: f64 = t[..end].parse().ok()?;
    let whole = value.trunc();
    // Past 2^64 no database integer holds it.
    (whole.abs() < 1.8446744073709552e19).then(|| format!("{}", whole as i128))
}

/// `s` as a UUID, in its canonical lower-case hyphenated form, read as
/// leniently as Python's `UUID` (Django's `UUIDField`) reads one — which
/// covers Postgres' `uuid` — every `urn:` and `uuid:` removed, then
/// `{`/`}` stripped from both ends and every `-` removed, leaving 32
/// characters of a hex number (a `0x`, a `+`, `_` between digits,
/// surrounding whitespace).
pub(super) fn uuid(s: &str) -> Option<String> {
    // 32 characters are left of it at most: nothing to build below that.
    if s.len() < 32 {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    let bare = lower.replace("urn:", "").replace("uuid:", "");
    let hex: String = bare
        .trim_matches(['{', '}'])
        .chars()
        .filter(|&c| c != '-')
        .collect();
    if hex.chars().count() != 32 {
        return None;
    }
    let t = hex.trim_matches(is_space);
    let t = t.strip_prefix('+').unwrap_or(t);
    let t = match t.strip_prefix("0x") {
        Some(rest) => rest.strip_prefix('_').unwrap_or(rest),
        None => t,
    };
    let mut value: u128 = 0;
    let mut last_digit = false;
    for c in t.chars() {
        // Python's `int` reads decimal digits of any script, hex letters
        // in ASCII only.
        match c.to_digit(16).or_else(|| digit_value(c).map(u32::from)) {
            Some(d) => {
                value = value.checked_mul(16)?.checked_add(u128::from(d))?;
                last_digit = true;
            }
            None if c == '_' && last_digit => last_digit = false,
            None => return None,
        }
    }
    if !last_digit {
        return None;
    }
    let h = format!("{value:032x}");
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// The first code point of each run of ten Unicode decimal digits (general
/// category Nd, Unicode 16 and later: every script's 0, each followed by
/// its 1 to 9). Python's `int` and Java's `parseLong` read them all.
pub(super) const DIGIT_ZEROS: [u32; 77] = [
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66,
    0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
    0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x10D40, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0,
    0x11650, 0x116C0, 0x116D0, 0x116DA, 0x11730, 0x118E0, 0x11950, 0x11BF0, 0x11C50, 0x11D50,
    0x11DA0, 0x11DE0, 0x11F50, 0x16130, 0x16A60, 0x16AC0, 0x16B50, 0x16D70, 0x1CCF0, 0x1D7CE,
    0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E4F0, 0x1E5F1, 0x1E950, 0x1FBF0,
];

/// The value of a decimal digit of any script.
pub(super) fn digit_value(c: char) -> Option<u8> {
    let c = u32::from(c);
    let i = DIGIT_ZEROS
        .partition_point(|&zero| zero <= c)
        .checked_sub(1)?;
    let d = c - DIGIT_ZEROS[i];
    u8::try_from(d).ok().filter(|&d| d < 10)
}
