//! Tags: the strings entries carry and writes invalidate. Each kind has a
//! prefix, so that no kind can spell another, and only this module spells
//! them (a test in `tests/it/layout.rs` holds to that):
//!
//! - `a:all` — every entry, so "purge everything" is one tag, not a scan;
//! - `u:<path>` — one path, every query and variant of it (RFC 9111 §4.4);
//! - `r:<pattern>` / `r:<pattern>|k=v` — a route family, or one bound member;
//! - `k:<name>` — a tag the app named on a response (`Surrogate-Key`, `Cache-Tag`);
//! - `g:<name>` — an RFC 9875 cache group.

use crate::canonical::RoutePath;

use super::Target;

/// Carried by every entry, so "purge everything" is one tag, not a scan.
pub const ALL_TAG: &str = "a:all";

/// The tag of one path, every query and variant of it (RFC 9111 §4.4).
pub fn own_tag(path: &RoutePath) -> String {
    format!("u:{path}")
}

/// A tag the app named on a response (`Surrogate-Key`, `Cache-Tag`).
pub fn key_tag(name: &str) -> String {
    format!("k:{name}")
}

/// An RFC 9875 cache group.
pub fn group_tag(name: &str) -> String {
    format!("g:{name}")
}

/// Every member of a purge target's route family.
pub(super) fn family_tag(t: &Target) -> String {
    format!("r:{}", t.canonical)
}

/// One member of a purge target's family, its parameters bound to `values`.
pub(super) fn bound_tag(t: &Target, values: &[(String, String)]) -> String {
    let mut s = format!("r:{}|", t.canonical);
    for (i, (k, v)) in values.iter().enumerate() {
        if i > 0 {
            s.push('&');
        }
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

/// App-named tags on a cacheable response: `Surrogate-Key` and `Cache-Tag`
/// (space- or comma-separated), and RFC 9875 `Cache-Groups`.
pub fn tags_from_response(headers: &http::HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    for name in ["surrogate-key", "cache-tag"] {
        for v in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            tags.extend(
                v.split([' ', ','])
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(key_tag),
            );
        }
    }
    for v in headers
        .get_all("cache-groups")
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        tags.extend(sf_strings(v).iter().map(|g| group_tag(g)));
    }
    tags
}

/// Groups named by RFC 9875 `Cache-Group-Invalidation` on a write response.
pub fn groups_invalidated(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("cache-group-invalidation")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(sf_strings)
        .map(|g| group_tag(&g))
        .collect()
}

/// The strings of a structured-field list of strings (`"a", "b"`), ignoring
/// parameters. Tokens are accepted too, leniently.
fn sf_strings(v: &str) -> Vec<String> {
    v.split(',')
        .map(|item| item.split(';').next().unwrap_or("").trim())
        .map(|s| s.trim_matches('"').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
