//! Route rules: which paths a rule covers, and what it says about caching them.
//!
//! Patterns are written as web developers write routes: `/studio/api/scenes/:id`,
//! Next.js folders `/studio/api/scenes/[id]`, `*` for one segment, `**` (or
//! `[...rest]`) for the rest of the path. They compile into one `matchit` radix
//! tree (axum's router), so a lookup costs the same with 5 rules or 500, and
//! when several patterns could match, the most specific wins (static segments
//! beat parameters, parameters beat catch-alls) — the same priority the app's
//! own router uses. Two patterns that are the same route are a config error.
//!
//! Paths are matched as [`RoutePath`]s (see `canonical`): patterns are folded
//! the same way (case, trailing slash) before they enter the tree.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::canonical::{PathPolicy, RoutePath};
use crate::spelling::normalize_path;

/// One route rule, as validated from the config.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub pattern: String,
    /// Lifetime of this route's entries when the app gives none.
    pub ttl: Option<Duration>,
    /// Which of the app's directives `ttl` takes precedence over (see
    /// `storable`). `private`, `Set-Cookie` and `Vary: *` never are.
    pub overrides: CacheOverrides,
    /// The statuses this route may store; `None`: the default set (see
    /// `storable::DEFAULT_STATUSES`).
    pub statuses: Option<Vec<u16>>,
    /// Longest life of a stored 404/410; `None`: `cache.negative_ttl`.
    pub negative_ttl: Option<Duration>,
    /// Lower-case request header names that become part of the cache key.
    pub key_headers: Vec<String>,
    /// Cookie names whose values become part of the cache key.
    pub key_cookies: Vec<String>,
    /// Cookies that never change the answer (`_ga`, `_hj*`): they do not
    /// keep a request from the shared entry, and are not forwarded on
    /// cached reads. The route's `ignore_cookies`, else `cache.ignore_cookies`.
    pub ignore_cookies: Vec<CookieName>,
    pub enabled: bool,
}

/// A route's `override:` list: where its `ttl` beats the app's word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheOverrides {
    /// Store although the app says `no-store` (as Next.js API routes do).
    pub no_store: bool,
    /// Serve without revalidating although the app says `no-cache`.
    pub no_cache: bool,
    /// `ttl` replaces the app's `max-age`, `s-maxage` or `Expires`.
    pub max_age: bool,
}

impl CacheOverrides {
    /// The names `override:` accepts.
    pub const NAMES: &'static [&'static str] = &["no-store", "no-cache", "max-age"];

    /// Add the override called `name`; `false` if there is none by that name.
    pub fn add(&mut self, name: &str) -> bool {
        match name {
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache = true,
            "max-age" => self.max_age = true,
            _ => return false,
        }
        true
    }
}

/// A cookie name, or a simple glob of one (`_hj*`, `*_consent`, `a*b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieName(String);

impl CookieName {
    /// A name or glob: cookie-name characters (RFC 6265 token) and `*`.
    pub fn parse(s: &str) -> Result<CookieName, String> {
        let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
        if s.is_empty() || !s.chars().all(|c| token(c) || c == '*') {
            return Err(format!(
                "{s:?} is not a cookie name or glob (e.g. _ga, _hj*)"
            ));
        }
        if s.chars().all(|c| c == '*') {
            // It would ignore every cookie, sessions included.
            return Err(format!(
                "{s:?} matches every cookie: name the ones to ignore"
            ));
        }
        Ok(CookieName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches (`*`: any run of characters, case-sensitive).
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// `*`-only glob matching in O(len(pattern) · len(text)): the text is a
/// client's cookie name, so no backtracking blow-up.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it has swallowed to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl Rule {
    /// A rule that only names a route: no ttl, nothing keyed or ignored,
    /// enabled (the config fills in the rest).
    pub fn new(name: &str, pattern: &str) -> Rule {
        Rule {
            name: name.to_string(),
            pattern: pattern.to_string(),
            ttl: None,
            overrides: CacheOverrides::default(),
            statuses: None,
            negative_ttl: None,
            key_headers: vec![],
            key_cookies: vec![],
            ignore_cookies: vec![],
            enabled: true,
        }
    }

    /// Whether a request carrying credentials may use this route's cache:
    /// only when the rule names how to key them.
    pub fn keys_authorization(&self) -> bool {
        self.key_headers.iter().any(|h| h == "authorization")
    }

    pub fn keys_cookies(&self) -> bool {
        !self.key_cookies.is_empty() || self.key_headers.iter().any(|h| h == "cookie")
    }

    /// Whether a response cached under `self` would be cached, keyed and
    /// served alike under `other`: every setting but the name and pattern.
    pub fn same_settings(&self, other: &Rule) -> bool {
        self.ttl == other.ttl
            && self.overrides == other.overrides
            && self.statuses == other.statuses
            && self.negative_ttl == other.negative_ttl
            && self.key_headers == other.key_headers
            && self.key_cookies == other.key_cookies
            && self.ignore_cookies == other.ignore_cookies
            && self.enabled == other.enabled
    }

    /// Whether its pattern names one path (no parameter or wildcard: a
    /// segment with text cannot hold one, `to_matchit` refuses it).
    pub fn is_literal(&self) -> bool {
        !self.pattern.contains([':', '[', '*'])
    }
}

/// A pattern that cannot be compiled, with the pattern and the reason.
#[derive(Debug, Clone)]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid route pattern {:?}: {}",
            self.pattern, self.reason
        )
    }
}

/// All route rules compiled into one matcher.
#[derive(Clone, Default)]
pub struct RouteTable {
    rules: Vec<Arc<Rule>>,
    router: matchit::Router<usize>,
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.pattern))
            .finish()
    }
}

impl RouteTable {
    /// The table of `rules`, or each pattern's problem with the index of
    /// its rule (the first of two that match the same paths is kept).
    pub fn new(
        rules: Vec<Rule>,
        paths: &PathPolicy,
    ) -> Result<RouteTable, Vec<(usize, PatternError)>> {
        let mut router = matchit::Router::new();
        let mut errors = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let compiled = match to_matchit(&rule.pattern).and_then(|c| {
                in_canonical_form(&c, paths)?;
                Ok(paths.fold_pattern(&c))
            }) {
                Ok(c) => c,
                Err(reason) => {
                    errors.push((
                        i,
                        PatternError {
                            pattern: rule.pattern.clone(),
                            reason,
                        },
                    ));
                    continue;
                }
            };
            if let Err(e) = router.insert(compiled, i) {
                errors.push((
                    i,
                    PatternError {
                        pattern: rule.pattern.clone(),
                        reason: e.to_string(),
                    },
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RouteTable {
            rules: rules.into_iter().map(Arc::new).collect(),
            router,
        })
    }

    /// The rule that covers `path`, if any.
    pub fn lookup(&self, path: &RoutePath) -> Option<&Arc<Rule>> {
        let m = self.router.at(path.as_str()).ok()?;
        self.rules.get(*m.value)
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }
}

/// Whether a pattern (in matchit syntax) can match requests at all: they
/// are matched in canonical form (see `spelling::normalize_path`), so a
/// pattern whose literal text is not (`/a//b`, `/a/./b`, `/%7Euser`) never
/// would. Refused, with the form to write instead.
pub fn in_canonical_form(matchit: &str, paths: &PathPolicy) -> Result<(), String> {
    let Some(sample) = fill_canonical(matchit, |_| Some("1".to_string())) else {
        return Ok(());
    };
    let canonical = normalize_path(&sample, paths.merge_slashes);
    if canonical != sample {
        return Err(format!(
            "requests are matched in canonical form, so this never matches one ({sample:?} is read as {canonical:?}): write the pattern that way"
        ));
    }
    Ok(())
}

/// A concrete path that `pattern` matches: parameters and wildcards become
/// `1`. Good enough to ask another pattern set "would you match this too?".
pub fn sample_path(pattern: &str) -> Option<String> {
    fill_canonical(&to_matchit(pattern).ok()?, |_| Some("1".to_string()))
}

/// A concrete path from a pattern in matchit syntax: each parameter segment
/// (`{id}`, `{_1}`, `{*rest}`) becomes `value(name)`, escaped braces become
/// braces. `None` when `value` has nothing for a parameter.
pub fn fill_canonical(
    canonical: &str,
    mut value: impl FnMut(&str) -> Option<String>,
) -> Option<String> {
    canonical
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if !seg.starts_with("{{") => value(name),
                _ => Some(seg.replace("{{", "{").replace("}}", "}")),
            },
        )
        .collect::<Option<Vec<_>>>()
        .map(|segs| segs.join("/"))
}

/// Most parameters and wildcards one pattern may have. matchit 0.8 panics
/// past 26 (found by the `patterns` fuzz target); no route has this many.
const MAX_PARAMS: usize = 16;

/// Translate a freshgate pattern into matchit's syntax (`{name}`, `{*rest}`).
pub fn to_matchit(pattern: &str) -> Result<String, String> {
    if !pattern.starts_with('/') {
        return Err("must start with '/'".into());
    }
    let segments: Vec<&str> = pattern[1..].split('/').collect();
    let params = segments
        .iter()
        .filter(|s| s.starts_with([':', '[', '*']))
        .count();
    if params > MAX_PARAMS {
        return Err(format!(
            "{params} parameters and wildcards: at most {MAX_PARAMS}"
        ));
    }
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut wild = 0;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        out.push('/');
        let param = seg
            .strip_prefix(':')
            .or_else(|| seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')));
        if *seg == "**" || param.is_some_and(|p| p.starts_with("...")) {
            if !last {
                return Err(format!(
                    "'{seg}' matches the rest of the path, so it must be the last segment"
                ));
            }
            let name = param.map(|p| p.trim_start_matches("...")).unwrap_or("rest");
            check_name(name)?;
            out.push_str(&format!("{{*{name}}}"));
        } else if *seg == "*" {
            wild += 1;
            out.push_str(&format!("{{_{wild}}}"));
        } else if let Some(name) = param {
            check_name(name)?;
            out.push_str(&format!("{{{name}}}"));
        } else {
            if seg.contains(['*', ':', '[', ']']) {
                return Err(format!(
                    "segment {seg:?} mixes text with a wildcard or parameter"
                ));
            }
            out.push_str(&seg.replace('{', "{{").replace('}', "}}"));
        }
    }
    Ok(out)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "parameter name {name:?} must be letters, digits or '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, pattern: &str) -> Rule {
        Rule::new(name, pattern)
    }

    #[test]
    fn cookie_globs() {
        let g = |p: &str| CookieName::parse(p).unwrap();
        assert!(g("_ga").matches("_ga"));
        assert!(!g("_ga").matches("_gat"));
        assert!(g("_hj*").matches("_hjSession_123"));
        assert!(g("_hj*").matches("_hj"));
        assert!(!g("_hj*").matches("x_hj"));
        assert!(g("*consent").matches("cookie_consent"));
        assert!(g("a*b*c").matches("aXbYc"));
        assert!(!g("a*b*c").matches("aXbY"));
        assert!(!g("session").matches("Session"));
        for bad in ["", "a b", "a;b", "a=b", "*", "**"] {
            assert!(CookieName::parse(bad).is_err(), "{bad:?}");
        }
        // Linear: a long crafted name against a many-star glob.
        let long = "a".repeat(5000);
        assert!(!g("a*a*a*a*a*b").matches(&long));
        assert!(g("*a").matches(&long));
    }

    #[test]
    fn a_pattern_spelled_with_escapes_matches_the_paths_they_decode_to() {
        let p = PathPolicy::default();
        let t = RouteTable::new(
            vec![rule("me", "/users/%40me"), rule("brace", "/a/%7Bx%7D/:id")],
            &p,
        )
        .expect("valid patterns");
        let name = |path: &str| t.lookup(&p.route_path(path)).map(|r| r.name.clone());
        for path in ["/users/@me", "/users/%40me", "/Users/%40ME/"] {
            assert_eq!(name(path).as_deref(), Some("me"), "{path}");
        }
        for path in ["/a/{x}/1", "/a/%7Bx%7D/1", "/a/%7bx%7d/1"] {
            assert_eq!(name(path).as_deref(), Some("brace"), "{path}");
        }
        assert_eq!(name("/users/%2540me"), None);
    }

    #[test]
    fn pattern_forms() {
        assert_eq!(to_matchit("/a/:id").unwrap(), "/a/{id}");
        assert_eq!(to_matchit("/a/[id]/b").unwrap(), "/a/{id}/b");
        assert_eq!(to_matchit("/a/*/b").unwrap(), "/a/{_1}/b");
        assert_eq!(to_matchit("/a/**").unwrap(), "/a/{*rest}");
        assert_eq!(to_matchit("/a/[...slug]").unwrap(), "/a/{*slug}");
        assert!(to_matchit("/a/**/b").is_err());
        assert!(to_matchit("a/b").is_err());
        assert!(to_matchit("/a/x*").is_err());
        // matchit panics past 26 parameters (the fuzzer found it).
        assert!(to_matchit(&"/*".repeat(MAX_PARAMS)).is_ok());
        let many = "/*".repeat(30);
        assert!(to_matchit(&many).unwrap_err().contains("at most 16"));
        assert!(RouteTable::new(vec![rule("r", &many)], &PathPolicy::default()).is_err());
    }

    #[test]
    fn most_specific_rule_wins() {
        let paths = PathPolicy::default();
        let t = RouteTable::new(
            vec![
                rule("posts", "/community/api/posts"),
                rule("post", "/community/api/posts/:postId"),
                rule("replies", "/community/api/posts/:postId/replies"),
                rule("all", "/community/**"),
            ],
            &paths,
        )
        .unwrap();
        let name = |p: &str| t.lookup(&paths.route_path(p)).map(|r| r.name.clone());
        assert_eq!(name("/community/api/posts").as_deref(), Some("posts"));
        assert_eq!(name("/community/api/posts/7").as_deref(), Some("post"));
        assert_eq!(
            name("/community/api/posts/7/replies").as_deref(),
            Some("replies")
        );
        assert_eq!(name("/community/other/x").as_deref(), Some("all"));
        assert_eq!(name("/studio/api/scenes/1"), None);
        // Aliases the app's router folds find the same rule.
        assert_eq!(
            name("/Community/API/posts/7/").as_deref(),
            Some("post"),
            "case and trailing slash"
        );
        assert_eq!(
            name("/community//api/./posts/%37").as_deref(),
            Some("post"),
            "slashes, dot segments, escapes"
        );
    }

    #[test]
    fn patterns_no_request_can_match_are_refused() {
        // Found by the `patterns` fuzz target: `//1` compiled, and matched
        // nothing (requests are matched with `//` merged).
        let paths = PathPolicy::default();
        for p in [
            "//1",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/%7Euser/:id",
            "/a/%41",
        ] {
            let e = RouteTable::new(vec![rule("r", p)], &paths).unwrap_err();
            assert!(
                e[0].1.reason.contains("canonical form"),
                "{p}: {}",
                e[0].1.reason
            );
        }
        for p in ["/", "/a/", "/a/%2F/:id", "/a/:id/**"] {
            assert!(RouteTable::new(vec![rule("r", p)], &paths).is_ok(), "{p}");
        }
        let keep = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert!(RouteTable::new(vec![rule("r", "/a//b")], &keep).is_ok());
    }

    #[test]
    fn a_literal_pattern_names_one_path() {
        for p in ["/sitemap.xml", "/", "/a/b.c/d"] {
            assert!(Rule::new("r", p).is_literal(), "{p}");
        }
        for p in ["/a/:id", "/a/[id]", "/a/*", "/a/**", "/a/[...rest]"] {
            assert!(!Rule::new("r", p).is_literal(), "{p}");
        }
    }

    #[test]
    fn duplicate_routes_are_rejected_with_the_pattern() {
        let e = RouteTable::new(
            vec![rule("a", "/x/:id"), rule("b", "/x/[other]")],
            &PathPolicy::default(),
        )
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, 1);
        assert_eq!(e[0].1.pattern, "/x/[other]");
    }
}
