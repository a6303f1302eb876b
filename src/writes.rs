//! A write's passage through freshgate, as policy: what it may change (and
//! so fences before it is forwarded), and what its outcome means for what it
//! invalidates. The proxy (`proxy.rs`) calls these at the two points of a
//! write's life; the store (`Store::begin_write` / `Store::end_write`) keeps
//! the invariant between them.
//!
//! Which outcomes invalidate, and why:
//!
//! | outcome | invalidates | why |
//! |---|---|---|
//! | 1xx (but 101) | not yet | informational: the final answer (and the commit) may still come |
//! | 2xx, 3xx | yes | the app did what was asked (RFC 9111 §4.4) |
//! | 4xx | no | the app refused the request: nothing changed (a write that changes data and then answers 4xx is an app bug) |
//! | 5xx | yes | an error may follow a commit (a crash after the database write, a failing post-commit step) |
//! | no answer | yes, after `writes.timeout` | the client went away (RST), or the app timed out or reset: the app may still commit, so the write stays fenced until it no longer can |
//! | never sent | no | no connection to the app was ever made for it (the app is down): nothing can have changed |

use std::collections::BTreeSet;

use http::header;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::canonical::{Canonical, Destination, PathPolicy, ReadingBytes};
use crate::config::Config;
use crate::host::Host;
use crate::invalidation::{self, ALL_TAG};
use crate::methods::Methods;
use crate::store::WriteFence;

/// The rule name monitoring uses for writes no invalidation rule matched.
pub const UNMATCHED: &str = "(unmatched)";

/// What a write may change, from the request alone.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Fenced while the write is in flight, invalidated after it.
    pub tags: BTreeSet<String>,
    /// The invalidation rules it matched ([`UNMATCHED`] when none, `(all)`
    /// when rules are off).
    pub rules: Vec<String>,
    /// Whether an invalidation rule matched (with rules on).
    pub matched: bool,
    /// The exact paths it purges (its own first), for prefetching.
    pub refetch: Vec<String>,
}

/// What `request` may change under `config`. With the `invalidation` flag
/// off (`rules_on` false) the rules are not trusted: everything.
pub fn plan(config: &Config, rules_on: bool, request: &Canonical) -> Planned {
    if !rules_on {
        return Planned {
            tags: BTreeSet::from([ALL_TAG.to_string()]),
            rules: vec!["(all)".to_string()],
            matched: true,
            refetch: Vec::new(),
        };
    }
    let plan = config
        .invalidation
        .plan_write(&request.methods, &request.route);
    let mut rules: Vec<String> = plan.matched.into_iter().map(|m| m.name).collect();
    let mut tags = plan.tags;
    let mut refetch = plan.refetch;
    // A path some apps read otherwise (`;params`, `\`, an id spelled
    // otherwise) is another path to them: what a write of that one may
    // change too.
    for other in request.tagged_routes().skip(1) {
        let also = config.invalidation.plan_write(&request.methods, other);
        tags.extend(also.tags);
        for name in also.matched.into_iter().map(|m| m.name) {
            if !rules.contains(&name) {
                rules.push(name);
            }
        }
        for path in also.refetch {
            if !refetch.contains(&path) {
                refetch.push(path);
            }
        }
    }
    let matched = !rules.is_empty();
    if rules.is_empty() {
        rules.push(UNMATCHED.to_string());
    }
    // Refused before it reaches the app (`refused`), but planned again
    // under a config reloaded while it was in flight, where its readings
    // may be past a bound they were not past before: anything may change.
    if request.too_many_readings || request.too_many_ids {
        tags.insert(ALL_TAG.to_string());
    }
    match &request.destination {
        // What a write of that path may change: a `MOVE` or `COPY` is a
        // `PUT` there, of whatever the rules say.
        Some(Destination::Paths(spellings)) => {
            let there = Methods {
                any_method: true,
                ..request.methods.clone()
            };
            for d in spellings {
                tags.extend(config.invalidation.plan_write(&there, d).tags);
            }
        }
        Some(Destination::Unreadable) => {
            tags.insert(ALL_TAG.to_string());
        }
        None => {}
    }
    if !refetch.contains(&request.path) {
        refetch.insert(0, request.path.clone());
    }
    Planned {
        tags,
        rules,
        matched,
        refetch,
    }
}

/// Why a request is refused before anything else: a `MOVE`'s `Destination`
/// that apps read differently (or no path can be read from), or more
/// override methods than are listed — a write freshgate could plan only as
/// "everything", which would let one request empty the cache.
pub fn refused(request: &Canonical) -> Option<&'static str> {
    if request.destination == Some(Destination::Unreadable) {
        return Some(
            "a Destination that apps read differently or in too many ways: one field, a plain path or URI",
        );
    }
    // A read of such a path is passed through uncached (`bypass`).
    if request.too_many_readings && request.methods.is_write() {
        return Some("a write to a path that apps read in too many ways");
    }
    if request.too_many_ids && request.methods.is_write() {
        return Some(
            "a write to a path whose ids apps read in too many ways (spell its numbers plainly)",
        );
    }
    request
        .methods
        .unlisted
        .then_some("more method overrides than are read")
}

/// Whether a write answered with `status` invalidates what it planned
/// (`None`: not a final answer yet). See the table above.
pub fn invalidates(status: u16) -> Option<bool> {
    match status {
        // 101 Switching Protocols is a final answer; the others announce one.
        101 => Some(true),
        100..=199 => None,
        400..=499 => Some(false),
        _ => Some(true),
    }
}

/// Tags the app's answer names: its same-origin `Location` and
/// `Content-Location` (RFC 9111 §4.4) and RFC 9875 `Cache-Group-Invalidation`.
/// `host`: the request's validated host (what the app was sent, and what an
/// absolute `Location` of the same origin names, normalised alike).
pub fn answer_tags(
    req: &RequestHeader,
    host: Option<&Host>,
    resp: &ResponseHeader,
    paths: &PathPolicy,
) -> BTreeSet<String> {
    let mut tags = BTreeSet::new();
    for h in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(p) = resp
            .headers
            .get(&h)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| same_origin_path(req, host, v))
        {
            match paths.route_paths(&p, ReadingBytes::NAMED) {
                Some(all) => tags.extend(all.iter().map(invalidation::own_tag)),
                // More readings than are listed: the app named it.
                None => {
                    tags.insert(ALL_TAG.to_string());
                }
            }
        }
    }
    tags.extend(invalidation::groups_invalidated(&resp.headers));
    tags
}

/// A write whose answer has a body still to come when its phase 2 runs
/// (at the answer's header). An app may commit after it sent its status —
/// a streamed or chunked answer, progress written while a bulk write runs —
/// so a fill made while the body streams could read the old data and, with
/// the fence lifted, be stored after the invalidation. Its tags stay fenced
/// under this second fence, taken before the first is lifted, until the
/// body has reached the client whole.
pub struct Answering {
    pub fence: WriteFence,
    /// Paths to refetch once it is lifted (a fill inside a fence is not
    /// stored, so a refetch before would be wasted).
    pub refetch: Vec<String>,
    /// The config its first fence was lifted under (a rules swap before the
    /// body ends adds the new rules' tags).
    pub config: std::sync::Arc<Config>,
    /// The answer's header as the app sent it (the paths it names are
    /// folded again if the config changes before the body ends).
    pub answer: ResponseHeader,
    /// The app answered before it had the write's whole body: it commits
    /// after it answered, when freshgate cannot see. Ended as a write
    /// whose outcome is unknown (invalidated after `writes.timeout`).
    pub early: bool,
}

/// Whether the answer to a write has a body after its header: every
/// answer but one to HEAD, a 1xx, 204 or 304, or one framed by
/// `Content-Length: 0` alone (no `Transfer-Encoding`, which would win).
/// A `101` counts: a tunnel follows (fenced for `writes.timeout`, not until it closes).
pub fn answer_has_body(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    let status = resp.status.as_u16();
    let mut lengths = resp
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .peekable();
    let empty = !resp.headers.contains_key(header::TRANSFER_ENCODING)
        && lengths.peek().is_some()
        && lengths.all(|v| v.as_bytes() == b"0");
    req.method != http::Method::HEAD && !matches!(status, 100 | 102..=199 | 204 | 304) && !empty
}

/// A write between its two phases.
pub struct InFlight {
    pub fence: WriteFence,
    pub planned: Planned,
    /// The config it was planned under (a rules swap before it ends adds the
    /// new rules' tags).
    pub config: std::sync::Arc<Config>,
    /// A connection to the app was made for it: from then on the app may
    /// have it (and commit it), whatever happens next.
    pub reached_app: bool,
}

/// The path of `location` if it points at the same origin as the request
/// (a relative reference is resolved against the request's path, RFC 3986
/// §5.2; the dot segments it leaves are removed when it is canonicalised).
fn same_origin_path(req: &RequestHeader, host: Option<&Host>, location: &str) -> Option<String> {
    let without_query = |l: &str| l.split(['?', '#']).next().unwrap_or(l).to_string();
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(without_query(location));
    }
    let has_scheme = location
        .split_once(':')
        .is_some_and(|(scheme, _)| !scheme.is_empty() && !scheme.contains(['/', '?', '#']));
    if location.is_empty() || location.starts_with(['?', '#']) {
        // The request's own path (RFC 3986 §5.2.2).
        return Some(req.uri.path().to_string());
    }
    if !has_scheme && !location.starts_with("//") {
        let base = req.uri.path();
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        return Some(without_query(&format!("{dir}{location}")));
    }
    let uri: http::Uri = location.parse().ok()?;
    // Both normalised (case, trailing dot), and compared by name only: a
    // port the client or a load balancer kept (`:443` behind TLS) must not
    // hide the origin, and purging a same-named host's path is only wider.
    let named = crate::host::normalize(
        uri.authority()?.as_str(),
        uri.scheme_str().unwrap_or("http"),
    )
    .ok()?;
    (host?.name() == named.name()).then(|| uri.path().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with `yaml`'s rules.
    fn config_of(yaml: &str) -> Config {
        Config::from_str(yaml, None, &crate::config::Overrides::default()).unwrap()
    }

    /// `method path` as the proxy reads it under `config`.
    fn request_under(config: &Config, method: &str, path: &str) -> Canonical {
        let req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        Canonical::new(&req, &config.paths, &config.method_override)
    }

    #[test]
    fn a_write_in_lower_case_or_by_webdav_plans_what_it_may_change() {
        let config = config_of("invalidate:\n  - on: PATCH /posts/:id\n    purge: [/posts]\n");
        let canonical = |method: &str, path: &str, fields: &[(&str, &str)]| {
            let mut req = RequestHeader::build(method, path.as_bytes(), None).unwrap();
            for (n, v) in fields {
                req.append_header(n.to_string(), *v).unwrap();
            }
            Canonical::new(&req, &config.paths, &config.method_override)
        };
        let plan_of = |method: &str, path: &str, fields: &[(&str, &str)]| {
            plan(&config, true, &canonical(method, path, fields))
        };
        // What a cached `GET /posts` carries: a plan purges it if it names any.
        let list_tags = config
            .invalidation
            .tags_for_read(&config.paths.route_path("/posts"));
        let purges_list = |p: &Planned| list_tags.iter().any(|t| p.tags.contains(t));
        // `fetch(url, {method: "patch"})`: the PATCH the app routes it as.
        assert!(purges_list(&plan_of("patch", "/posts/1", &[])));
        assert!(!purges_list(&plan_of("PUT", "/posts/1", &[])));
        // A method no rule can name may be any of them.
        assert!(purges_list(&plan_of("PROPPATCH", "/posts/1", &[])));
        assert!(!purges_list(&plan_of("PROPFIND", "/posts/1", &[])));
        // MOVE and COPY change what `Destination` names.
        let moved = plan_of("MOVE", "/files/a", &[("destination", "http://h/Files/b?x")]);
        let b = invalidation::own_tag(&config.paths.route_path("/files/b"));
        assert!(moved.tags.contains(&b), "{:?}", moved.tags);
        let copied = plan_of("COPY", "/files/a", &[("destination", "/files/c")]);
        assert!(copied
            .tags
            .contains(&invalidation::own_tag(&config.paths.route_path("/files/c"))));
        assert!(!plan_of("DELETE", "/posts/1", &[])
            .tags
            .iter()
            .any(|t| t.contains("files")));
        // What the rules purge for the destination goes too.
        let onto = plan_of("MOVE", "/drafts/1", &[("destination", "http://h/posts/9")]);
        assert!(purges_list(&onto), "{:?}", onto.tags);
        // A destination read as servers read it (raw UTF-8, a space), or
        // not at all: then everything.
        let raw = plan_of("COPY", "/a", &[("destination", "/files/a b")]);
        let spaced = invalidation::own_tag(&config.paths.route_path("/files/a%20b"));
        assert!(raw.tags.contains(&spaced), "{:?}", raw.tags);
        let bad = plan_of("COPY", "/a", &[("destination", "http://[::1")]);
        assert!(bad.tags.contains(ALL_TAG), "{:?}", bad.tags);
        let two = plan_of(
            "COPY",
            "/a",
            &[("destination", "/x"), ("destination", "/y")],
        );
        assert!(two.tags.contains(ALL_TAG), "{:?}", two.tags);
        // Read as apps read it: `//host/path` both ways; spellings apps
        // read differently (`\`, escaped `/`, `\`, `?`, `#`): everything.
        let b = |p: &str| invalidation::own_tag(&config.paths.route_path(p));
        let net = plan_of("MOVE", "/a", &[("destination", "//example.com/files/n")]);
        assert!(net.tags.contains(&b("/files/n")), "{:?}", net.tags);
        assert!(
            net.tags.contains(&b("/example.com/files/n")),
            "{:?}",
            net.tags
        );
        for value in [
            "http://h/files\\m",
            "/files%2fk",
            "/x%5Cy",
            "/what%3F.txt",
            "/a%23b",
            "/files/b;v=2",
            "/files/b%3bv=2",
            "/fi%09les/x",
            "/fi\tles/x",
        ] {
            let p = plan_of("MOVE", "/a", &[("destination", value)]);
            assert!(p.tags.contains(ALL_TAG), "{value}: {:?}", p.tags);
        }
        // A MOVE among more overrides than are listed is still read (some
        // of those listed may move).
        let many: Vec<String> = (0..20).map(|i| format!("M{i}")).collect();
        let hidden = plan_of(
            "POST",
            "/files/src?_method=MOVE",
            &[
                ("x-http-method", &many.join(",")),
                ("destination", "http://["),
            ],
        );
        assert!(hidden.tags.contains(ALL_TAG), "{:?}", hidden.tags);
        // Only a method that may move reads it: not a POST, nor PROPFIND;
        // and an override only on a POST (a GET naming `MOVE` is no MOVE to
        // any middleware, and must not let any client wipe the cache).
        for method in ["POST", "PROPFIND", "PATCH"] {
            let p = plan_of(method, "/a", &[("destination", "http://[")]);
            assert!(!p.tags.contains(ALL_TAG), "{method}");
        }
        // Named by an override on any method (Slim and CakePHP honour them
        // on any), a readable one is planned there; one that is not is
        // refused (400) — planned as everything, any client could empty the
        // cache with one request.
        let readable = [
            ("x-http-method-override", "MOVE"),
            ("destination", "/posts/2"),
        ];
        assert!(purges_list(&plan_of("GET", "/a", &readable)));
        assert!(refused(&canonical("GET", "/a", &readable)).is_none());
        for method in ["GET", "POST", "PUT", "MOVE"] {
            let junk = [("x-http-method-override", "MOVE"), ("destination", "/a;b")];
            assert!(
                refused(&canonical(method, "/a", &junk)).is_some(),
                "{method}"
            );
        }
        assert!(refused(&canonical("MOVE", "/a", &[("destination", "/a/b")])).is_none());
        assert!(refused(&canonical("PATCH", "/a", &[("destination", "/a;b")])).is_none());
        let many: Vec<String> = (0..20).map(|i| format!("M{i}")).collect();
        assert!(refused(&canonical(
            "POST",
            "/a",
            &[("x-http-method", &many.join(","))]
        ))
        .is_some());
        // Only MOVE and COPY have one (RFC 4918): not any unknown method.
        for method in ["FOO", "PROPPATCH", "LOCK"] {
            let p = plan_of(method, "/a", &[("destination", "/a;b")]);
            assert!(!p.tags.contains(ALL_TAG), "{method}");
        }
    }

    #[test]
    fn a_write_through_a_path_with_params_plans_every_reading_of_it() {
        let config = config_of(
            "invalidate:\n  - on: PATCH /posts/:id/title\n    purge: [/feed]\n  - on: PATCH /posts/:id\n    purge: [/posts]\n",
        );
        let tags_of = |path: &str| {
            let request = request_under(&config, "PATCH", path);
            plan(&config, true, &request).tags
        };
        let read = |path: &str| {
            config
                .invalidation
                .tags_for_read(&config.paths.route_path(path))
        };
        let purges =
            |tags: &BTreeSet<String>, path: &str| read(path).iter().any(|t| tags.contains(t));
        // Express reads `;x` as part of the id, a servlet container drops
        // it (and `..;` pops a segment there): both readings are planned.
        for (write, list) in [
            ("/posts/;x/title", "/feed"),
            ("/posts/%3Bx/title", "/feed"),
            ("/posts/1;v=2", "/posts"),
            ("/posts/2/x/..;/..;/1", "/posts"),
        ] {
            let tags = tags_of(write);
            assert!(purges(&tags, list), "{write}: {tags:?}");
        }
        let servlet = tags_of("/posts/1;jsessionid=x");
        assert!(servlet.contains(&invalidation::own_tag(&config.paths.route_path("/posts/1"))));
        // An answer's `Location` with params names both paths too.
        let req = RequestHeader::build("POST", b"/posts", None).unwrap();
        let mut resp = ResponseHeader::build(201, None).unwrap();
        resp.append_header("location", "/posts/7;v=1").unwrap();
        let named = answer_tags(&req, None, &resp, &config.paths);
        for path in ["/posts/7;v=1", "/posts/7"] {
            let own = invalidation::own_tag(&config.paths.route_path(path));
            assert!(named.contains(&own), "{path}: {named:?}");
        }
        // A relative one against a target that is no path (found by review:
        // it panicked cutting params from `é;x`).
        let star = RequestHeader::build("POST", b"*", None).unwrap();
        resp.insert_header("location", "%C3%A9;x").unwrap();
        answer_tags(&star, None, &resp, &config.paths);
    }

    #[test]
    fn a_write_through_an_id_spelled_otherwise_plans_the_value_apps_read() {
        let config = config_of("invalidate:\n  - on: PATCH /posts/:id\n    purge: [/posts/:id]\n");
        let request = |method: &str, path: &str| request_under(&config, method, path);
        let read = |path: &str| {
            config
                .invalidation
                .tags_for_read(&config.paths.route_path(path))
        };
        // Both the own tag and the rule's bound tag of post 7.
        let tags = plan(&config, true, &request("PATCH", "/posts/007")).tags;
        let own_and_bound = read("/posts/7");
        let own_and_bound = own_and_bound
            .iter()
            .filter(|t| t.starts_with("u:") || t.contains('|'));
        for tag in own_and_bound {
            assert!(tags.contains(tag), "{tag}: {tags:?}");
        }
        // An answer's `Location` names the value too.
        let req = RequestHeader::build("POST", b"/posts", None).unwrap();
        let mut resp = ResponseHeader::build(201, None).unwrap();
        resp.append_header("location", "/posts/%2B7").unwrap();
        let named = answer_tags(&req, None, &resp, &config.paths);
        assert!(named.contains(&invalidation::own_tag(&config.paths.route_path("/posts/7"))));
        // Past the bound (six ids with three readings each: 729), a write
        // is refused and a read is not (it is not cached).
        let many = "/posts/012/034/056/012/034/056";
        assert!(refused(&request("PATCH", many)).is_some());
        assert!(request("GET", many).too_many_ids);
        assert_eq!(refused(&request("GET", many)), None);
        assert!(!request("GET", "/posts/012/034/056/012").too_many_ids);
    }

    #[test]
    fn a_path_read_in_too_many_ways_is_refused_to_writes_and_uncached_for_reads() {
        let config = config_of("invalidate:\n  - on: PATCH /files/**\n    purge: [/files/**]\n");
        let request = |method: &str, path: &str| request_under(&config, method, path);
        // Four readings of 5 KB each (params dropped, cut at the `;`, the
        // suffix, and theirs): past a request's bound together.
        let long = format!("/files/{}/a;x/b.json", "s".repeat(5_000));
        let write = request("PATCH", &long);
        assert!(write.too_many_readings);
        assert!(refused(&write).is_some());
        let read = request("GET", &long);
        assert!(read.too_many_readings);
        assert_eq!(refused(&read), None);
        // A GET that an override makes a write is one.
        let mut overridden = RequestHeader::build("GET", long.as_bytes(), None).unwrap();
        overridden.append_header("x-http-method", "DELETE").unwrap();
        let overridden = Canonical::new(&overridden, &config.paths, &config.method_override);
        assert!(refused(&overridden).is_some());
        // Planned again under a reloaded config while in flight: all.
        assert!(plan(&config, true, &write).tags.contains(ALL_TAG));
        assert!(!plan(&config, true, &request("PATCH", "/files/a;x/b.json"))
            .tags
            .contains(ALL_TAG));
        // An answer may name such a path (a redirect to where the client
        // asked): its readings have more room, so it is no "everything".
        let named_by = |location: &str| {
            let req = RequestHeader::build("POST", b"/login", None).unwrap();
            let mut resp = ResponseHeader::build(303, None).unwrap();
            resp.append_header("location", location).unwrap();
            answer_tags(&req, None, &resp, &config.paths)
        };
        let own = |path: &str| invalidation::own_tag(&config.paths.route_path(path));
        let named = named_by(&long);
        assert!(!named.contains(ALL_TAG), "{} tags", named.len());
        assert!(named.contains(&own(&format!("/files/{}/a/b", "s".repeat(5_000)))));
        // Nor when each reading also has an id reading (`007` is 7): 3 KB
        // each, past a request's 16 KiB of id readings, not an answer's.
        let padded = format!("/files/007/{}/a;x/b.json", "s".repeat(3_300));
        assert!(refused(&request("PATCH", &padded)).is_some());
        let named = named_by(&padded);
        assert!(!named.contains(ALL_TAG), "{} tags", named.len());
        assert!(named.contains(&own(&format!("/files/7/{}/a/b", "s".repeat(3_300)))));
    }

    #[test]
    fn which_answers_have_a_body_to_wait_for() {
        let req = |m: &str| RequestHeader::build(m, b"/x", None).unwrap();
        let resp = |status: u16, fields: &[(&str, &str)]| {
            let mut r = ResponseHeader::build(status, None).unwrap();
            for (n, v) in fields {
                r.append_header(n.to_string(), *v).unwrap();
            }
            r
        };
        let patch = req("PATCH");
        assert!(
            answer_has_body(&patch, &resp(200, &[])),
            "unframed: until close"
        );
        assert!(answer_has_body(
            &patch,
            &resp(200, &[("content-length", "2")])
        ));
        assert!(answer_has_body(
            &patch,
            &resp(500, &[("transfer-encoding", "chunked")])
        ));
        assert!(!answer_has_body(
            &patch,
            &resp(200, &[("content-length", "0")])
        ));
        assert!(answer_has_body(
            &patch,
            &resp(
                200,
                &[("content-length", "0"), ("transfer-encoding", "chunked")]
            )
        ));
        assert!(answer_has_body(
            &patch,
            &resp(200, &[("content-length", "0"), ("content-length", "5")])
        ));
        assert!(
            answer_has_body(&patch, &resp(200, &[("content-length", "00")])),
            "odd: wait"
        );
        for status in [204, 304] {
            assert!(!answer_has_body(&patch, &resp(status, &[])), "{status}");
        }
        assert!(answer_has_body(&patch, &resp(101, &[])), "a tunnel follows");
        assert!(!answer_has_body(
            &req("HEAD"),
            &resp(200, &[("content-length", "9")])
        ));
    }

    #[test]
    fn which_answers_invalidate() {
        assert_eq!(
            invalidates(100),
            None,
            "100 Continue comes before the commit"
        );
        assert_eq!(invalidates(103), None);
        assert_eq!(invalidates(101), Some(true), "a final answer");
        assert_eq!(invalidates(200), Some(true));
        assert_eq!(invalidates(204), Some(true));
        assert_eq!(invalidates(303), Some(true));
        assert_eq!(invalidates(400), Some(false));
        assert_eq!(invalidates(404), Some(false));
        assert_eq!(invalidates(409), Some(false));
        assert_eq!(invalidates(500), Some(true), "an error may follow a commit");
        assert_eq!(invalidates(503), Some(true));
        assert_eq!(invalidates(501), Some(true), "raised after a commit too");
    }

    #[test]
    fn the_answer_names_locations_of_this_origin_only() {
        let mut req = RequestHeader::build("POST", b"/a", None).unwrap();
        req.insert_header("host", "app.test").unwrap();
        let mut resp = ResponseHeader::build(201, None).unwrap();
        resp.insert_header("location", "/Posts/%39/").unwrap();
        let relative = answer_tags(
            &RequestHeader::build("POST", b"/a/b/like", None).unwrap(),
            None,
            &{
                let mut r = ResponseHeader::build(303, None).unwrap();
                r.insert_header("location", "../c?x=1").unwrap();
                r
            },
            &PathPolicy::default(),
        );
        assert_eq!(relative, BTreeSet::from(["u:/a/c".to_string()]));
        resp.insert_header("content-location", "http://other.test/x")
            .unwrap();
        resp.insert_header("cache-group-invalidation", "\"g1\"")
            .unwrap();
        let host = crate::host::of_request(&req, "http", "x").ok();
        let tags = answer_tags(&req, host.as_ref(), &resp, &PathPolicy::default());
        assert_eq!(
            tags,
            BTreeSet::from(["u:/posts/9".to_string(), "g:g1".to_string()])
        );
    }

    #[test]
    fn an_absolute_location_matches_the_origin_however_the_client_spelled_it() {
        // The app builds Location from the host it was sent (normalised);
        // the client may have sent `Example.com.:80`.
        let resp = |loc: &str| {
            let mut r = ResponseHeader::build(201, None).unwrap();
            r.insert_header("location", loc).unwrap();
            r
        };
        for sent in [
            "Example.com.:80",
            "example.com",
            "EXAMPLE.COM:",
            "example.com:443",
        ] {
            let mut req = RequestHeader::build("POST", b"/posts", None).unwrap();
            req.insert_header("host", sent).unwrap();
            let host = crate::host::of_request(&req, "http", "x").ok();
            for loc in [
                "http://example.com/posts/10",
                "http://example.com:80/posts/10",
                "https://example.com/posts/10",
            ] {
                let tags = answer_tags(&req, host.as_ref(), &resp(loc), &PathPolicy::default());
                assert_eq!(
                    tags,
                    BTreeSet::from(["u:/posts/10".to_string()]),
                    "{sent} {loc}"
                );
            }
            let other = answer_tags(
                &req,
                host.as_ref(),
                &resp("http://other.example/posts/10"),
                &PathPolicy::default(),
            );
            assert!(other.is_empty());
        }
    }
}
