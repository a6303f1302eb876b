//! The canonical request: what freshgate takes one request to mean, computed
//! once, and the only input the cache key, route lookup, tag binding and
//! write-rule matching read.
//!
//! Why one value: if the key folded a difference that the tags did not (or
//! the reverse), two spellings of one resource would share an entry but not
//! its invalidations — `GET /posts/%39` stored as `/posts/9` but tagged
//! `postId=%39`, so a like on post 9 left it a hit. Every spelling question is
//! answered here, once, and everything downstream reads the answer.
//!
//! What is folded, in two steps:
//!
//! 1. **The path** ([`Canonical::path`]): the RFC 3986 §6.2.2 equivalences —
//!    percent-encoded unreserved characters decoded (`%39` → `9`, `%7e` → `~`),
//!    the hex of other escapes upper-cased (`%2f` → `%2F`), a `%` that
//!    starts no escape escaped (`%zz` → `%25zz`), dot segments
//!    removed after that decoding (`/a/./b`, `/a/x/../b`, `/a/%2e%2e/b` → `/a/b`)
//!    — and, when `paths.merge_slashes` is on (the default), runs of `/`
//!    merged. **This path is what freshgate forwards to the app**, so the app
//!    can never read a spelling differently from the key: an alias cannot
//!    poison the canonical entry with its own answer.
//! 2. **The route path** ([`RoutePath`]), for route rules, tags and write
//!    rules only: the escapes step 1 kept decoded, but for `%2F` and `%25`
//!    (`%40` is `@`, `%C3%AB` is `ë`: frameworks decode route parameters, so
//!    `/users/%40al` and `/users/@al` are one user to the app), then a
//!    trailing `/` dropped and ASCII case folded,
//!    each when the config says the app's router does so (`paths.ignore_trailing_slash`,
//!    `paths.ignore_case`; both on by default, as Express routes). Folding more
//!    than the app does only merges the invalidations of paths the app keeps
//!    apart (a wider purge, always safe); folding less would leave an alias's
//!    entry out of a purge. It is never forwarded and never in the key: `/Posts/Abc`
//!    and `/posts/abc` are different keys (parameter values keep their case in
//!    the app), sharing their tags.
//!
//! Kept apart: `%2F` (it is not `/`; in the key every reserved escape is
//! kept as sent, so `/a/%40` and `/a/@` are two entries sharing their tags), the query (a key part,
//! its pairs sorted by name with equal names kept in order; never part of a
//! tag, since a write purges every query of a path), and ids spelled
//! otherwise (`/posts/07`, `/posts/7abc`: `parseInt` reads 7): the key keeps
//! them apart, their tags are each value's too ([`Canonical::id_routes`],
//! `ids/`).
//!
//! The methods ([`Methods`]): the request's own and any method override the
//! app may honour (`X-HTTP-Method-Override: PATCH` on a POST, `?_method=PATCH`,
//! or a POST body, which may carry `_method`), so a write is matched against
//! every rule it might be.

use std::collections::HashSet;
use std::fmt;

use pingora::http::RequestHeader;

use crate::escapes;
use crate::ids;
use crate::methods::{self, MethodOverride, Methods};
use crate::spelling::{self, normalize_path, sorted_query};

/// How the app's router compares paths (the `paths:` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathPolicy {
    /// `/a//b` is `/a/b` (folded in the key and in what is forwarded).
    pub merge_slashes: bool,
    /// The app routes `/Studio/x` like `/studio/x` (tags and rules only).
    pub ignore_case: bool,
    /// The app routes `/a/` like `/a` (tags and rules only).
    pub ignore_trailing_slash: bool,
}

impl Default for PathPolicy {
    /// Fold everything: a wider purge is always safe.
    fn default() -> PathPolicy {
        PathPolicy {
            merge_slashes: true,
            ignore_case: true,
            ignore_trailing_slash: true,
        }
    }
}

/// Which way of making route paths this build has: part of the rules
/// fingerprint, so replicas that would tag one request differently (a
/// rolling upgrade across a change here) count as running mixed rules and
/// bypass the cache until one build runs alone. Bumped with every change to
/// what a path's route path is, or what it is read as (2: escapes other
/// than `%2F` and `%25` decoded; 3: a `%` that starts no escape is `%25`;
/// 4: ids spelled otherwise read as their values, `ids/`).
pub const ROUTE_PATH_REVISION: u32 = 4;

/// How many bytes of readings a path may have, of each kind together
/// (its other readings, its id readings), before it counts as read in
/// too many ways ([`PathPolicy::route_paths`]).
#[derive(Debug, Clone, Copy)]
pub struct ReadingBytes {
    pub other: usize,
    pub ids: usize,
}

impl ReadingBytes {
    /// A request's own path and its `Destination`: read on every request
    /// (the work grows with the bytes), and chosen by the client. Past
    /// it, a read is not cached and a write is refused.
    pub const REQUEST: ReadingBytes = ReadingBytes {
        other: spelling::MAX_READING_BYTES,
        ids: ids::MAX_ID_BYTES,
    };
    /// A path an app's answer names (`Location`, `Content-Location`) or
    /// an operator purges: read once per answer or purge, and past it
    /// everything is invalidated, so a redirect to a long path the client
    /// chose (a few KB with `;params` or padded ids) must not reach it.
    /// One crafted for more than 64 readings still does: 80 bytes of
    /// repeated ` ;a\` are enough (architecture.md, "Cache-busting").
    pub const NAMED: ReadingBytes = ReadingBytes {
        other: 256 * 1024,
        ids: 256 * 1024,
    };
}

/// A path as route rules, tags and write rules see it. Only [`PathPolicy`]
/// makes one, so nothing can match a rule against a path it did not fold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoutePath(String);

impl RoutePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoutePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PathPolicy {
    /// The route path of an already canonical path (step 2).
    fn fold(&self, path: &str) -> RoutePath {
        let decoded = escapes::decode_for_routes(path, false);
        let mut p: &str = &decoded;
        if self.ignore_trailing_slash {
            while p.len() > 1 && p.ends_with('/') {
                p = &p[..p.len() - 1];
            }
        }
        RoutePath(if self.ignore_case {
            p.to_ascii_lowercase()
        } else {
            p.to_string()
        })
    }

    /// A parameter's value as it is bound from a route path (for a purge
    /// request that names one): decoded as route paths are, case folded
    /// when they are.
    pub fn fold_value(&self, value: &str) -> String {
        let decoded = escapes::decode_for_routes(value, false);
        if self.ignore_case {
            decoded.to_ascii_lowercase()
        } else {
            decoded.into_owned()
        }
    }

    /// Both steps, for a path that did not come with a request: a
    /// `Location` header, a purge request, a pattern's sample path.
    pub fn route_path(&self, path: &str) -> RoutePath {
        self.fold(&normalize_path(path, self.merge_slashes))
    }

    /// Every route path an app may read `path` as: its [`route_path`]
    /// first, then any [`PathPolicy::other_readings`] and
    /// [`PathPolicy::id_readings`].
    ///
    /// [`route_path`]: PathPolicy::route_path
    /// `None` when it has more than any bound (`bytes`: of each kind of
    /// readings together).
    pub fn route_paths(&self, path: &str, bytes: ReadingBytes) -> Option<Vec<RoutePath>> {
        let path = normalize_path(path, self.merge_slashes);
        let route = self.fold(&path);
        let mut all = self.other_readings(&path, &route, bytes.other)?;
        all.insert(0, route);
        let ids = self.id_readings(&all[0], &all[1..], bytes.ids)?;
        all.extend(ids);
        Some(all)
    }

    /// The route paths apps that parse ids read a path as, beside its
    /// `route` path and its `others` readings ([`ids::id_readings`] of
    /// each: `/scenes/0132` is `/scenes/132` to them); empty for most
    /// paths, `None` for more than [`ids::MAX_ID_READINGS`] or `max_bytes`
    /// in all.
    pub fn id_readings(
        &self,
        route: &RoutePath,
        others: &[RoutePath],
        max_bytes: usize,
    ) -> Option<Vec<RoutePath>> {
        // One path's readings differ from one another and from it.
        let mut found: Vec<String> =
            ids::id_readings(route.as_str(), ids::MAX_ID_READINGS, max_bytes)?;
        if !others.is_empty() {
            let mut seen: HashSet<String> = others.iter().map(|o| o.0.clone()).collect();
            seen.insert(route.0.clone());
            found.retain(|r| seen.insert(r.clone()));
            let mut bytes: usize = found.iter().map(String::len).sum();
            for read in others {
                let room = (ids::MAX_ID_READINGS - found.len())
                    .min(max_bytes.saturating_sub(bytes) / read.0.len().max(1));
                for reading in ids::id_readings(read.as_str(), room, max_bytes)? {
                    if seen.insert(reading.clone()) {
                        bytes += reading.len();
                        found.push(reading);
                    }
                }
            }
        }
        Some(found.into_iter().map(RoutePath).collect())
    }

    /// The route paths other than `route` that apps may read the canonical
    /// `path` as, where apps disagree on it ([`spelling::other_spellings`]);
    /// empty for most paths, `None` for one with too many.
    pub fn other_readings(
        &self,
        path: &str,
        route: &RoutePath,
        max_bytes: usize,
    ) -> Option<Vec<RoutePath>> {
        let mut readings = Vec::new();
        // Not `readings.contains`: comparing each with every other costs
        // the square of their number in whole-path comparisons.
        let mut seen = HashSet::new();
        for spelling in spelling::other_spellings(path, self.merge_slashes, max_bytes)? {
            let reading = self.fold(&spelling);
            if reading != *route && seen.insert(reading.0.clone()) {
                readings.push(reading);
            }
        }
        Some(readings)
    }

    /// A route pattern in matchit syntax as the router must hold it: its
    /// literal text folded like paths are (parameter names are kept).
    pub fn fold_pattern(&self, canonical: &str) -> String {
        let decoded = escapes::decode_for_routes(canonical, true);
        let mut p: &str = &decoded;
        if self.ignore_trailing_slash {
            while p.len() > 1 && p.ends_with('/') {
                p = &p[..p.len() - 1];
            }
        }
        if !self.ignore_case {
            return p.to_string();
        }
        // Lower-case outside `{name}` (`{{` and `}}` are escaped braces).
        let mut out = String::with_capacity(p.len());
        let mut in_param = false;
        let mut chars = p.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if !in_param && chars.peek() == Some(&'{') => {
                    chars.next();
                    out.push_str("{{");
                }
                '}' if !in_param && chars.peek() == Some(&'}') => {
                    chars.next();
                    out.push_str("}}");
                }
                '{' => {
                    in_param = true;
                    out.push(c);
                }
                '}' => {
                    in_param = false;
                    out.push(c);
                }
                c if in_param => out.push(c),
                c => out.push(c.to_ascii_lowercase()),
            }
        }
        out
    }
}

/// One request as freshgate understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// The path in the key, and the one forwarded to the app.
    pub path: String,
    /// The query in key order, `None` when empty. Forwarded as the client
    /// sent it: only the key sorts it.
    pub query: Option<String>,
    /// The path route rules, tags and write rules match.
    pub route: RoutePath,
    /// How other apps read the path, where apps disagree on it
    /// ([`PathPolicy::other_readings`]: `;params`, `\`, `%2F`, a format
    /// suffix): a write plans every reading; a read is cached with every
    /// reading's tags when all fall under its route rule, else not (one may
    /// be private).
    pub other_routes: Vec<RoutePath>,
    /// Its path has more readings than are listed, or more bytes of them
    /// ([`ReadingBytes::REQUEST`]): not cached, and refused if a write (it
    /// could only be planned as "everything").
    pub too_many_readings: bool,
    /// What apps that parse its ids (numbers, UUIDs) read its route paths
    /// as ([`PathPolicy::id_readings`]): the same handler as `route`, so
    /// the same route rule, but maybe another record's spelling. Tags only:
    /// a read carries theirs and a write invalidates them.
    pub id_routes: Vec<RoutePath>,
    /// Its ids have more readings than are listed: not cached, and refused
    /// if a write.
    pub too_many_ids: bool,
    pub methods: Methods,
    /// A write's WebDAV `Destination` (RFC 4918 §10.3): the resource a
    /// `MOVE` or `COPY` creates or replaces.
    pub destination: Option<Destination>,
}

/// Where a write's `Destination` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Its path as route paths, each way apps read it (`//host/path` as
    /// a host and a path, and as a path). Its host is not compared (a tag
    /// names a path on every host: only wider).
    Paths(Vec<RoutePath>),
    /// Two of them, a value apps read differently from one another, or
    /// one freshgate cannot read a path from: anything may change.
    Unreadable,
}

impl Canonical {
    pub fn new(req: &RequestHeader, paths: &PathPolicy, overrides: &MethodOverride) -> Canonical {
        let raw = req.uri.path();
        let path = normalize_path(raw, paths.merge_slashes);
        let route = paths.fold(&path);
        let bytes = ReadingBytes::REQUEST;
        let other_routes = paths.other_readings(&path, &route, bytes.other);
        let too_many_readings = other_routes.is_none();
        let other_routes = other_routes.unwrap_or_default();
        let id_routes = paths.id_readings(&route, &other_routes, bytes.ids);
        let too_many_ids = id_routes.is_none();
        let id_routes = id_routes.unwrap_or_default();
        let query = req.uri.query().map(sorted_query).filter(|q| !q.is_empty());
        let methods = methods::read(req, overrides);
        let destination = if methods.may_move() {
            destination(req, paths)
        } else {
            None
        };
        Canonical {
            methods,
            path,
            query,
            route,
            other_routes,
            too_many_readings,
            id_routes,
            too_many_ids,
            destination,
        }
    }

    /// Every route path whose tags a read carries and a write invalidates:
    /// `route`, `other_routes`, `id_routes`.
    pub fn tagged_routes(&self) -> impl Iterator<Item = &RoutePath> {
        std::iter::once(&self.route)
            .chain(&self.other_routes)
            .chain(&self.id_routes)
    }

    /// Whether the request target to forward differs from the one the
    /// client sent (another path, or absolute-form).
    pub fn rewrites(&self, req: &RequestHeader) -> bool {
        // `forward_target` compared without building it (every request).
        let raw = req.raw_path();
        let Some(rest) = raw.strip_prefix(self.path.as_bytes()) else {
            return true;
        };
        match req.uri.query() {
            Some(q) => rest.strip_prefix(b"?") != Some(q.as_bytes()),
            None => !rest.is_empty(),
        }
    }

    /// The request target to forward: the canonical path and the query as sent.
    pub fn forward_target(&self, req: &RequestHeader) -> String {
        match req.uri.query() {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Whether freshgate can say what `req`'s target names: valid UTF-8, and
/// origin-form (`/path`), absolute-form (`http://host/path`) or `*`.
/// Anything else would be keyed as `/` while the app is sent other bytes.
pub fn target_is_usable(req: &RequestHeader) -> bool {
    let raw = req.raw_path();
    req.raw_path_is_utf8()
        && (raw.starts_with(b"/")
            || raw == b"*"
            || raw
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"http://"))
            || raw
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case(b"https://")))
}

/// `req`'s `Destination`, if it has one, as apps read it — or
/// [`Destination::Unreadable`] where they read it differently from one
/// another: two fields (apps take the first, the last, or both joined), or
/// a value [`read_alike`] doubts. Such values are rare; planning every
/// reading of them is not worth the risk of missing one.
fn destination(req: &RequestHeader, paths: &PathPolicy) -> Option<Destination> {
    let mut values = req.headers.get_all("destination").iter();
    let raw = values.next()?.as_bytes().trim_ascii();
    if values.next().is_some() || !read_alike(raw) {
        return Some(Destination::Unreadable);
    }
    // `//host/path` is a host and a path to most (RFC 3986 §4.2), a path
    // to some (sabre/dav): both.
    let mut readings = vec![destination_path(raw)];
    if raw.starts_with(b"//") {
        readings.push(destination_path(&[b"http:", raw].concat()));
    }
    let mut routes = Vec::new();
    for path in readings {
        let Some(path) = path else {
            return Some(Destination::Unreadable);
        };
        // As the rest of a request's path: every way apps read it (and
        // as bounded: it is the client's).
        match paths.route_paths(&path, ReadingBytes::REQUEST) {
            Some(all) => routes.extend(all),
            None => return Some(Destination::Unreadable),
        }
    }
    Some(Destination::Paths(routes))
}

/// Whether apps read the path of `value` alike: not when it holds a `\`
/// (WHATWG parsers, Node's, read it as `/`), a `;` (Python's `urlparse`
/// cuts `;params` off), a control byte (WHATWG and recent Python parsers
/// drop tabs and line breaks), or any of those, or `/`, `?`, `#`, escaped
/// (Go, sabre/dav, wsgidav decode escapes, some before they parse).
fn read_alike(value: &[u8]) -> bool {
    let differs = |b: u8| b == b'\\' || b == b';' || b.is_ascii_control();
    !value.iter().any(|&b| differs(b))
        && !value.windows(3).any(|w| {
            w[0] == b'%'
                && escapes::escaped_byte(w[1], w[2])
                    .is_some_and(|b| differs(b) || matches!(b, b'/' | b'?' | b'#'))
        })
}

/// The path a `Destination` value names (an absolute URI or an absolute
/// path). Bytes a URI may not hold (non-ASCII, spaces: servers read them
/// anyway) are escaped first; `None` if no path can be read from it.
fn destination_path(value: &[u8]) -> Option<String> {
    let mut escaped = Vec::with_capacity(value.len());
    for &b in value {
        if b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b) {
            escaped.push(b);
        } else {
            escapes::push_escape(&mut escaped, b);
        }
    }
    let uri: http::Uri = std::str::from_utf8(&escaped).ok()?.parse().ok()?;
    let path = uri.path();
    path.starts_with('/').then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::MAX_OVERRIDES;
    use crate::spelling::MAX_READING_BYTES;
    use http::Method;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn canon(uri: &str) -> Canonical {
        Canonical::new(
            &req("GET", uri, &[]),
            &PathPolicy::default(),
            &MethodOverride::default(),
        )
    }

    #[test]
    fn rfc_3986_equivalences_are_folded_in_the_path() {
        for (raw, want) in [
            ("/community/api/posts/%39", "/community/api/posts/9"),
            ("/a/%7euser", "/a/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/a/./b", "/a/b"),
            ("/a/x/../b", "/a/b"),
            ("/a/%2E%2e/b", "/b"),
            ("/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a//b///c", "/a/b/c"),
            ("//", "/"),
            ("/a/", "/a/"),
            ("/a%", "/a%25"),
            ("/a%zz", "/a%25zz"),
            ("/a/%%%3341", "/a/%25%25341"),
            ("/", "/"),
            ("/caf%C3%A9/é", "/caf%C3%A9/é"),
        ] {
            assert_eq!(canon(raw).path, want, "{raw}");
            assert_eq!(normalize_path(want, true), want, "idempotent on {want}");
        }
        assert_eq!(normalize_path("/a//b/", false), "/a//b/");
    }

    #[test]
    fn case_and_trailing_slash_fold_only_the_route_path() {
        let c = canon("/Studio/api/Scenes/42/");
        assert_eq!(c.path, "/Studio/api/Scenes/42/");
        assert_eq!(c.route.as_str(), "/studio/api/scenes/42");
        let strict = PathPolicy {
            merge_slashes: true,
            ignore_case: false,
            ignore_trailing_slash: false,
        };
        assert_eq!(strict.route_path("/Studio/x/").as_str(), "/Studio/x/");
        assert_eq!(canon("/").route.as_str(), "/");
    }

    #[test]
    fn a_path_apps_read_differently_has_each_reading() {
        // Servlet containers drop each segment's params (and `..;` is `..`
        // there); Puma ends the path at the first `;`.
        for (raw, readings) in [
            ("/posts/1;jsessionid=AB12", &["/posts/1"][..]),
            ("/posts;v=2/1;x", &["/posts/1", "/posts"]),
            ("/posts/x/..;/1", &["/posts/1", "/posts"]),
            ("/posts/.;x/1", &["/posts/1", "/posts"]),
            ("/posts/;x/title", &["/posts/title", "/posts"]),
            ("/admin/..;/reports", &["/reports", "/"]),
            ("/posts/1/;x", &["/posts/1"]),
            ("/..;/posts/1", &["/posts/1", "/"]),
            ("/;x", &["/"]),
            // Tomcat keeps `%3B` a `;` (then the route path itself), others
            // decode first.
            ("/posts/1%3bx", &["/posts/1"]),
            ("/a;x/b%3By", &["/a/b;y", "/a/b", "/a"]),
            // WHATWG parsers read `\` as `/`.
            ("/posts\\1", &["/posts/1"]),
            ("/a\\..\\b", &["/b", "/a\\", "/a"]),
            // WHATWG parsers read `//` or `/\\` as a host, then the path.
            ("/\\x/items/1", &["/x/items/1", "/items/1"]),
            ("/\\\\x/items/1", &["/x/items/1", "/items/1"]),
            ("/\\/x/items/1", &["/x/items/1", "/items/1"]),
            // Rails and Spring read a format suffix apart.
            ("/posts/7.json", &["/posts/7"]),
            ("/posts/7.json;x", &["/posts/7.json", "/posts/7"]),
            // Servers that decode before routing read `%2F` as `/`.
            ("/posts/2%2F", &["/posts/2"]),
            ("/posts%2f2", &["/posts/2"]),
            (
                "/posts/x%2F..%2F2",
                &["/posts/2", "/posts/x%2f", "/posts/x"],
            ),
        ] {
            let c = canon(raw);
            let got: Vec<&str> = c.other_routes.iter().map(|r| r.as_str()).collect();
            assert_eq!(got, readings, "{raw}");
            assert!(!got.contains(&c.route.as_str()), "{raw}: {}", c.route);
            assert_eq!(c.path, normalize_path(raw, true), "{raw} keeps its own key");
        }
        // A reading of a reading is one (found by review: Spring drops the
        // params, then the suffix; Rails ignores a trailing `/`).
        for (raw, reading) in [
            ("/posts;x/7.json", "/posts/7"),
            ("/posts/7.json/", "/posts/7"),
            ("/posts/7.json;x/title", "/posts/7"),
            ("/posts/x/..;/7.json", "/posts/7"),
        ] {
            let c = canon(raw);
            assert!(
                c.other_routes.iter().any(|r| r.as_str() == reading),
                "{raw}: {:?}",
                c.other_routes
            );
        }
        for plain in [
            "/posts/1",
            "/a%40b",
            "/x/%3A",
            "/.well-known",
            "/a.b/c",
            "/a/b.",
        ] {
            assert!(canon(plain).other_routes.is_empty(), "{plain}");
        }
        let keep = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        for path in ["//x/items/1", "///x/items/1"] {
            let route = keep.route_path(path);
            let readings = keep
                .other_readings(path, &route, MAX_READING_BYTES)
                .unwrap();
            assert!(readings.contains(&keep.route_path("/items/1")), "{path}");
            assert!(readings.contains(&keep.route_path("/x/items/1")), "{path}");
        }
        let doubled = keep.route_path("/items//1");
        assert_eq!(
            keep.other_readings("/items//1", &doubled, MAX_READING_BYTES)
                .unwrap(),
            [keep.route_path("/items/1")]
        );
        let p = PathPolicy::default();
        let all = p.route_paths("/A/b;x/", ReadingBytes::REQUEST).unwrap();
        assert_eq!(all, [p.route_path("/a/b;x"), p.route_path("/a/b")]);
        // A target that is not a path has no other reading.
        assert!(canon("*").other_routes.is_empty());
    }

    #[test]
    fn spellings_frameworks_decode_alike_share_their_route_path_but_not_their_key() {
        for (a, b) in [
            ("/users/%40alice", "/users/@alice"),
            ("/tags/c%2B%2B", "/tags/c++"),
            ("/t/a%3Ab", "/t/a:b"),
            ("/t/a%3ab", "/t/a:b"),
            ("/u/zo%C3%AB", "/u/zoë"),
            ("/u/ZO%C3%AB/", "/u/zoë"),
            ("/q/a%2Cb", "/q/a,b"),
        ] {
            let (ca, cb) = (canon(a), canon(b));
            assert_eq!(ca.route, cb.route, "{a} and {b}");
            assert_ne!(ca.path, cb.path, "{a} and {b} stay two entries");
        }
        for (a, b) in [
            ("/a%2Fb", "/a/b"),
            ("/a/%2541", "/a/A"),
            ("/a/%2541", "/a/%41"),
            ("/u/x%0Ay", "/u/x"),
        ] {
            assert_ne!(canon(a).route, canon(b).route, "{a} and {b} stay apart");
        }
        assert_eq!(canon("/a%2fb").route.as_str(), "/a%2fb");
        // No control character in a route path: tags are sent newline-separated.
        for raw in ["/u/x%0Ay", "/u/%0d%00%7f%1F"] {
            let route = canon(raw).route;
            assert!(
                !route.as_str().chars().any(|c| c.is_control()),
                "{raw}: {route}"
            );
        }
        // Bytes that are not UTF-8 once decoded: folded together (wider).
        assert_eq!(canon("/x/%FF").route, canon("/x/%FE").route);
        // A route path is its own route path (purges of `Location`s, samples).
        let p = PathPolicy::default();
        for raw in ["/a/%2541", "/a%2Fb/%40", "/x/%FF", "/a/%25%32%35"] {
            let once = canon(raw).route;
            assert_eq!(p.route_path(once.as_str()), once, "{raw}");
        }
    }

    #[test]
    fn a_pattern_matches_the_paths_its_escapes_spell() {
        let p = PathPolicy::default();
        assert_eq!(p.fold_pattern("/users/%40me"), "/users/@me");
        assert_eq!(p.fold_pattern("/a/%7Bx%7D/{id}"), "/a/{{x}}/{id}");
        assert_eq!(p.fold_pattern("/a%2Fb"), "/a%2fb");
    }

    #[test]
    fn patterns_fold_their_text_but_not_parameter_names() {
        let p = PathPolicy::default();
        assert_eq!(
            p.fold_pattern("/Community/api/posts/{postId}/"),
            "/community/api/posts/{postId}"
        );
        assert_eq!(p.fold_pattern("/A{{b}}/{*Rest}"), "/a{{b}}/{*Rest}");
    }

    #[test]
    fn the_query_is_ordered_by_name_only() {
        assert_eq!(sorted_query("b=2&a=1&&a=0"), "a=1&a=0&b=2");
        assert_eq!(canon("/x?b=2&a=1").query.as_deref(), Some("a=1&b=2"));
        assert_eq!(canon("/x?").query, None);
        let c = canon("/x/./y?b=2&a=1");
        assert_eq!(
            c.forward_target(&req("GET", "/x/./y?b=2&a=1", &[])),
            "/x/y?b=2&a=1"
        );
    }

    #[test]
    fn only_targets_that_name_a_path_are_usable() {
        let usable = |t: &[u8]| target_is_usable(&RequestHeader::build("GET", t, None).unwrap());
        assert!(usable(b"/a?b"));
        assert!(usable(b"*"));
        assert!(usable(b"http://app.test/a"));
        assert!(usable(b"HTTPS://app.test/a"));
        assert!(!usable(b"posts/9"));
        assert!(!usable(b"foo:/posts/9"));
        assert!(!usable(b"/a\xff"), "not UTF-8");
        // Absolute-form is forwarded in origin form.
        let r = RequestHeader::build("GET", b"http://app.test/x/./y?q=1", None).unwrap();
        let c = Canonical::new(&r, &PathPolicy::default(), &MethodOverride::default());
        assert!(c.rewrites(&r));
        assert_eq!(c.forward_target(&r), "/x/y?q=1");
        let plain = RequestHeader::build("GET", b"/x/y?q=1", None).unwrap();
        assert!(!c.rewrites(&plain));
        // Whether it rewrites is whether the forwarded target differs.
        for t in [
            "/a",
            "/a?",
            "/a?b=1&a=2",
            "/a/",
            "//a",
            "/a/./b",
            "/a/../b?x",
            "/%61?q",
            "/A",
            "http://h/a",
            "http://h/a?q",
            "http://h",
            "/a?q#f",
            "*",
            "/a%2Fb",
        ] {
            let r = RequestHeader::build("GET", t.as_bytes(), None).unwrap();
            let c = Canonical::new(&r, &PathPolicy::default(), &MethodOverride::default());
            let differs = r.raw_path() != c.forward_target(&r).as_bytes();
            assert_eq!(c.rewrites(&r), differs, "{t}");
        }
    }

    #[test]
    fn method_overrides_make_writes() {
        let o = MethodOverride::default();
        let p = PathPolicy::default();
        let m = |method: &str, uri: &str, h: &[(&str, &str)]| {
            Canonical::new(&req(method, uri, h), &p, &o).methods
        };
        // (A PUT: a POST may be anything, its body may name a method.)
        let patch = m("PUT", "/a", &[("x-http-method-override", "patch")]);
        assert_eq!(patch.overrides, vec![Method::PATCH]);
        assert!(patch.may_be_any_of(&[Method::PATCH]));
        assert!(patch.may_be_any_of(&[Method::PUT]));
        assert!(!patch.may_be_any_of(&[Method::DELETE]));
        assert!(m("POST", "/a?_method=DELETE", &[]).may_be_any_of(&[Method::DELETE]));
        // However the query spells the parameter's name, a GET naming an
        // unsafe method is a write (the query is only skipped when it
        // cannot name it).
        for q in [
            "_method=DELETE",
            "a=1&_method=DELETE",
            "%5Fmethod=DELETE",
            "_meth%6Fd=DELETE",
            "_method=DEL%45TE",
            "_method=DELETE+",
        ] {
            let get = m("GET", &format!("/a?{q}"), &[]);
            assert!(
                get.is_write() && get.may_be_any_of(&[Method::DELETE]),
                "{q}"
            );
        }
        assert!(!m("GET", "/a?method=DELETE&x=_metho", &[]).is_write());
        // A GET that names an unsafe method is not a read to cache.
        assert!(m("GET", "/a", &[("x-method-override", "DELETE")]).is_write());
        assert!(!m("GET", "/a", &[]).is_write());
        // A list: whichever the app takes, it is one of them.
        let list = m("POST", "/a", &[("x-http-method-override", "DELETE, x")]);
        assert!(list.overrides.contains(&Method::DELETE));
        // Too many to list: it may be any.
        let many: Vec<String> = (0..100).map(|i| format!("M{i}")).collect();
        let many = m("GET", "/a", &[("x-http-method", &many.join(","))]);
        assert_eq!(many.overrides.len(), MAX_OVERRIDES);
        assert!(many.is_write() && many.may_be_any_of(&[Method::DELETE]));
        // Any POST body may name one (form, JSON, no content type).
        let body = m("POST", "/a", &[("content-type", "application/json")]);
        assert!(body.any_method && body.may_be_any_of(&[Method::PUT]));
        assert!(!m("PUT", "/a", &[]).may_be_any_of(&[Method::PATCH]));
        // A method in lower case is the one apps upper-case it to, and
        // stays a write whatever it names.
        let lower = m("patch", "/a", &[]);
        assert!(lower.is_write() && lower.may_be_any_of(&[Method::PATCH]));
        assert!(!lower.may_be_any_of(&[Method::DELETE]));
        assert!(m("post", "/a", &[]).any_method);
        assert!(m("get", "/a", &[]).is_write());
        // A write no rule can name (WebDAV) may be any of them.
        for dav in ["MOVE", "COPY", "PROPPATCH", "mkcol"] {
            let w = m(dav, "/a", &[]);
            assert!(w.is_write() && w.may_be_any_of(&[Method::DELETE]), "{dav}");
        }
        // Or whose override names one.
        let moved = m("PUT", "/a", &[("x-http-method-override", "MOVE")]);
        assert!(moved.may_be_any_of(&[Method::DELETE]));
        // Safe extensions stay writes of their own path only.
        for safe in ["PROPFIND", "REPORT", "QUERY"] {
            let w = m(safe, "/a", &[]);
            assert!(
                w.is_write() && !w.may_be_any_of(&[Method::DELETE]),
                "{safe}"
            );
        }
        assert!(!m("DELETE", "/a", &[]).any_method);
        // Switched off by config.
        let none = MethodOverride {
            headers: vec![],
            param: None,
        };
        let off = Canonical::new(
            &req(
                "POST",
                "/a?_method=PUT",
                &[("x-http-method-override", "PUT")],
            ),
            &p,
            &none,
        );
        assert!(!off.methods.may_be_any_of(&[Method::PUT]));
        assert!(!off.methods.any_method);
    }

    /// Properties over generated paths, against the shipped rules.
    mod properties {
        use super::*;
        use crate::config::{Config, Overrides};
        use proptest::prelude::*;

        fn shipped() -> &'static Config {
            static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
            CONFIG.get_or_init(|| {
                Config::from_str(
                    include_str!("../config/freshgate.yaml"),
                    None,
                    &Overrides::default(),
                )
                .expect("the shipped config is valid")
            })
        }

        /// Everything the key, the rules and the tags make of `uri` sent as `method`.
        fn meaning(uri: &str, method: &str) -> (String, Option<String>, Vec<String>, Vec<String>) {
            let config = shipped();
            let r = req(method, uri, &[("host", "app")]);
            let c = Canonical::new(&r, &config.paths, &config.method_override);
            let rule = config.routes.lookup(&c.route).map(|r| r.name.clone());
            let host = crate::host::of_request(&r, "http", "app").unwrap();
            let key = crate::cachekey::primary(&r, &c, "http", &host, None, "");
            let read = config.invalidation.tags_for_read(&c.route);
            let write: Vec<String> = config
                .invalidation
                .plan_write(&c.methods, &c.route)
                .tags
                .into_iter()
                .collect();
            (key, rule, read, write)
        }

        fn segment() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "studio",
                "Studio",
                "api",
                "API",
                "scenes",
                "stories",
                "community",
                "posts",
                "like",
                "write",
                "9",
                "%39",
                "42",
                "%34%32",
                "%2F",
                "%2f",
                "a%20b",
                ".",
                "..",
                "",
                "x",
                "%2E",
                "%2e%2E",
                "%7E",
                "~",
                "%41",
                "a",
            ])
            .prop_map(str::to_string)
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(segment(), 0..7).prop_map(|s| format!("/{}", s.join("/")))
        }

        /// Another spelling of `path` under RFC 3986 §6.2.2 and merged
        /// slashes: the same resource to any server, so the same key.
        fn respell(path: &str, choices: &[u8]) -> String {
            let mut out = String::new();
            let mut k = 0;
            let mut pick = || {
                k += 1;
                choices.get(k % choices.len().max(1)).copied().unwrap_or(0)
            };
            for (i, seg) in path.split('/').enumerate() {
                if i > 0 {
                    out.push('/');
                    match pick() % 4 {
                        1 => out.push_str("./"),
                        2 => out.push_str("zz/../"),
                        3 => out.push('/'),
                        _ => {}
                    }
                }
                let mut rest = seg;
                while let Some(c) = rest.chars().next() {
                    if c == '%' && rest.len() >= 3 {
                        // An escape: flip the case of its hex.
                        let esc = &rest[..3];
                        out.push_str(&if pick() % 2 == 0 {
                            esc.to_ascii_lowercase()
                        } else {
                            esc.to_ascii_uppercase()
                        });
                        rest = &rest[3..];
                        continue;
                    }
                    if c.is_ascii_alphanumeric() && pick() % 3 == 0 {
                        out.push_str(&format!("%{:02X}", c as u8));
                    } else {
                        out.push(c);
                    }
                    rest = &rest[c.len_utf8()..];
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn equal_keys_mean_equal_rules_and_tags(a in path(), b in path(), m in prop::sample::select(vec!["GET", "POST", "PATCH", "DELETE"])) {
                let (ka, ra, ta, wa) = meaning(&a, m);
                let (kb, rb, tb, wb) = meaning(&b, m);
                if ka == kb {
                    prop_assert_eq!(ra, rb);
                    prop_assert_eq!(ta, tb);
                    prop_assert_eq!(wa, wb);
                }
            }

            #[test]
            fn a_respelling_has_the_same_key_rules_and_tags(p in path(), choices in prop::collection::vec(any::<u8>(), 1..32), m in prop::sample::select(vec!["GET", "POST", "PATCH"])) {
                let alias = respell(&p, &choices);
                prop_assert_eq!(meaning(&p, m), meaning(&alias, m), "{} vs {}", p, alias);
            }

            #[test]
            fn canonicalising_twice_changes_nothing(p in path()) {
                let once = normalize_path(&p, true);
                prop_assert_eq!(normalize_path(&once, true), once.clone());
                let route = PathPolicy::default().route_path(&p);
                prop_assert_eq!(PathPolicy::default().route_path(route.as_str()), route);
            }

            /// The app's view: an Express-like router folds case and a
            /// trailing slash too. Any alias of post `id` it routes to the
            /// post carries the tag that a like through any other alias
            /// invalidates.
            #[test]
            fn what_the_app_folds_shares_its_invalidation(
                id in 1u32..100_000,
                upper in prop::collection::vec(any::<bool>(), 6),
                slash in any::<bool>(),
                choices in prop::collection::vec(any::<u8>(), 1..32),
            ) {
                let word = |w: &str, up: bool| if up { w.to_ascii_uppercase() } else { w.to_string() };
                let read = format!(
                    "/{}/{}/posts/{id}{}",
                    word("community", upper[0]),
                    word("api", upper[1]),
                    if slash { "/" } else { "" }
                );
                let like = format!(
                    "/{}/{}/{}/{id}/like",
                    word("community", upper[2]),
                    word("api", upper[3]),
                    word("posts", upper[4]),
                );
                let bound = format!("r:/community/api/posts/{{postId}}|postId={id}");
                let (_, rule, tags, _) = meaning(&respell(&read, &choices), "GET");
                prop_assert_eq!(rule.as_deref(), Some("post"));
                prop_assert!(tags.contains(&bound), "{:?}", tags);
                let (_, _, _, purged) = meaning(&respell(&like, &choices), "POST");
                prop_assert!(purged.contains(&bound), "{:?}", purged);
            }
        }
    }
}
