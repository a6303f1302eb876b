//! What a config will do, for people editing rules: `freshgate check`
//! warnings and `freshgate explain`.
//!
//! Both work on a validated [`Config`] and answer "what will this config do",
//! without running anything.

use std::fmt::Write as _;

use http::Method;
use pingora::http::RequestHeader;

use crate::bypass;
use crate::canonical::Canonical;
use crate::config::Config;
use crate::invalidation::own_tag;
use crate::methods::{self, Methods};
use crate::rules::sample_path;
use crate::writes;

/// Things that are valid but probably not what the author meant.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let inv = &config.invalidation;
    for t in &inv.targets {
        let Some(sample) = sample_path(&t.pattern) else {
            continue;
        };
        if config
            .routes
            .lookup(&config.paths.route_path(&sample))
            .is_none()
        {
            out.push(format!(
                "purge target {} matches no route rule: only responses the app itself marks \
                 cacheable are stored there (is a route missing, or the pattern wrong?)",
                t.pattern
            ));
        }
    }
    for r in config.routes.rules() {
        if r.ttl.is_none() || !r.enabled {
            continue;
        }
        let Some(sample) = sample_path(&r.pattern) else {
            continue;
        };
        let sample = config.paths.route_path(&sample);
        let purged = !inv.tags_for_read(&sample).iter().all(|t| {
            // Every cached response carries `a:all` and its own URI; anything
            // else comes from a purge target.
            t == crate::invalidation::ALL_TAG || *t == own_tag(&sample)
        });
        if !purged {
            out.push(format!(
                "route {:?} ({}) is cached for {}s but no invalidate rule purges it: only a \
                 write to the very same URI (or its TTL) refreshes it",
                r.name,
                r.pattern,
                r.ttl.map_or(0, |d| d.as_secs())
            ));
        }
    }
    out
}

/// `freshgate explain`: what a request does to the cache under `config`.
/// `request` is `"PATCH /studio/api/scenes/42"` (or a path: `GET`).
pub fn request(config: &Config, request: &str) -> Result<String, String> {
    let request = request.trim();
    let (method, target) = match request.split_once(char::is_whitespace) {
        Some((m, p)) => (m.trim().to_ascii_uppercase(), p.trim()),
        None => ("GET".to_string(), request),
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    if !target.starts_with('/') {
        return Err(format!(
            "{target:?} is not a path; write e.g. 'PATCH /studio/api/scenes/42'"
        ));
    }
    let raw_path = target.split(['?', '#']).next().unwrap_or(target);
    let path = config.paths.route_path(raw_path);
    // The request as the proxy reads it: its methods (an extension method,
    // WebDAV's `MOVE`, may be any rule) and the other readings of its path.
    let request = RequestHeader::build(method.clone(), target.as_bytes(), None)
        .ok()
        .map(|req| Canonical::new(&req, &config.paths, &config.method_override));
    let mut s = String::new();
    let _ = writeln!(s, "{method} {target}");
    if path.as_str() != raw_path {
        let _ = writeln!(s, "  matched as: {path}");
    }
    if let Some(reason) = request.as_ref().and_then(writes::refused) {
        let _ = writeln!(s, "  refused (400): {reason}");
        return Ok(s);
    }
    let others = request.as_ref().map_or(&[][..], |r| &r.other_routes[..]);
    if !others.is_empty() {
        let names: Vec<&str> = others.iter().map(|p| p.as_str()).collect();
        let _ = writeln!(
            s,
            "  apps read this path differently: also as {}. A write plans every reading.",
            names.join(", ")
        );
        let rule = config.routes.lookup(&path);
        if !methods::is_unsafe(&method) && !bypass::readings_agree(config, rule, others) {
            let _ = writeln!(
                s,
                "  not cached: its readings fall under different route rules (one may be \
                 private): detail=ambiguous-path"
            );
            return Ok(s);
        }
    }
    if let Some(r) = &request {
        if r.too_many_readings {
            let _ = writeln!(
                s,
                "  not cached: apps read this path in more ways than are listed, or its \
                 readings are too long together: detail=ambiguous-path"
            );
            return Ok(s);
        }
        if r.too_many_ids {
            let _ = writeln!(
                s,
                "  not cached: apps that parse ids read this path in more ways than are \
                 listed: detail=ambiguous-path"
            );
            return Ok(s);
        }
        if !r.id_routes.is_empty() {
            let names: Vec<&str> = r.id_routes.iter().map(|p| p.as_str()).collect();
            let _ = writeln!(
                s,
                "  apps that parse its ids (numbers, UUIDs) read it also as {}: a read carries \
                 their tags, a write invalidates them.",
                names.join(", ")
            );
            let rule = config.routes.lookup(&path);
            if !methods::is_unsafe(&method)
                && !bypass::id_readings_agree(config, rule, &r.id_routes)
            {
                let _ = writeln!(
                    s,
                    "  not cached: one of them falls under a route rule with other settings: \
                     detail=ambiguous-path"
                );
                return Ok(s);
            }
        }
    }
    match config.routes.lookup(&path) {
        Some(r) => {
            let _ = writeln!(
                s,
                "  route rule: {:?} ({}){}{}",
                r.name,
                r.pattern,
                r.ttl
                    .map(|t| format!(", cached for {}s", t.as_secs()))
                    .unwrap_or_else(|| ", freshness from the app's headers".into()),
                if r.enabled { "" } else { ", DISABLED" }
            );
        }
        None => {
            let _ = writeln!(
                s,
                "  route rule: none (cached only if the app's headers allow it)"
            );
        }
    }
    if !methods::is_unsafe(&method) {
        let rule = config.routes.lookup(&path);
        let ignored = rule.map_or(&config.ignore_cookies[..], |r| &r.ignore_cookies[..]);
        let keyed = rule.map(|r| r.key_cookies.join(", ")).unwrap_or_default();
        let names: Vec<&str> = ignored.iter().map(|c| c.as_str()).collect();
        let _ = writeln!(
            s,
            "  cookies: ignored [{}] (never forwarded on cached reads), keyed [{keyed}]; \
             a request with any other cookie bypasses the cache",
            names.join(", ")
        );
        // Every reading's, as the proxy tags the fill.
        let tags = match &request {
            Some(r) => config.invalidation.tags_for_reads(r.tagged_routes()),
            None => config.invalidation.tags_for_read(&path),
        };
        let _ = writeln!(
            s,
            "  not a write. A response cached for it carries these tags; a write that \
             invalidates any of them makes it a miss:"
        );
        for t in tags {
            let _ = writeln!(s, "    {t}");
        }
        return Ok(s);
    }
    let methods = request
        .as_ref()
        .map(|r| r.methods.clone())
        .unwrap_or_else(|| Methods::only(method.clone()));
    let plan = config.invalidation.plan_write(&methods, &path);
    // As the proxy plans it: every reading of its path, its `Destination`.
    let planned = request.as_ref().map(|r| writes::plan(config, true, r));
    let _ = writeln!(
        s,
        "  always (RFC 9111 section 4.4): its own URI, every query and variant\n    {}",
        own_tag(&path)
    );
    let _ = writeln!(
        s,
        "  also: same-origin Location/Content-Location of the response, and the \
         groups in its Cache-Group-Invalidation header"
    );
    if let Some(p) = &planned {
        let others: Vec<&str> = (p.rules.iter())
            .filter(|name| p.matched && !plan.matched.iter().any(|m| &m.name == *name))
            .map(String::as_str)
            .collect();
        if !others.is_empty() {
            let _ = writeln!(
                s,
                "  rules matched by another reading of its path: {}",
                others.join(", ")
            );
        }
    }
    if !planned
        .as_ref()
        .map_or(!plan.matched.is_empty(), |p| p.matched)
    {
        let _ = writeln!(
            s,
            "  no invalidate rule matches: nothing else is invalidated. If other cached \
             pages show what this write changes, they stay stale until their TTL: add a rule."
        );
    }
    for m in &plan.matched {
        let bound = if m.bound.is_empty() {
            String::new()
        } else {
            format!(
                ", binds {}",
                m.bound
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(s, "  rule {:?} (on {}{bound}):", m.name, m.on);
        for (tag, why) in &m.purges {
            let _ = writeln!(s, "    purges {why}\n      {tag}");
        }
    }
    let tags = planned.map_or(plan.tags, |p| p.tags);
    let _ = writeln!(
        s,
        "  tags invalidated: {}",
        tags.into_iter().collect::<Vec<_>>().join(" ")
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    const CFG: &str = r#"
routes:
  - name: scene
    match: /studio/api/scenes/:id
    ttl: 60s
  - name: story
    match: /studio/api/stories/:id
    ttl: 60s
invalidate:
  - name: scene-write
    on: "[PATCH, DELETE] /studio/api/scenes/:id"
    purge: [/studio/api/scenes/:id, /studio/api/chapters/*]
"#;

    fn cfg() -> Config {
        Config::from_str(CFG, None, &Overrides::default()).unwrap()
    }

    #[test]
    fn warns_about_targets_without_routes_and_routes_without_rules() {
        let w = warnings(&cfg());
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].contains("/studio/api/chapters/*"), "{}", w[0]);
        assert!(w[1].contains("\"story\""), "{}", w[1]);
    }

    #[test]
    fn explains_which_cookies_a_route_ignores_keys_or_bypasses_on() {
        let c = Config::from_str(
            "cache:\n  ignore_cookies: [_ga, \"_hj*\"]\nroutes:\n  - name: me\n    match: /me\n    key:\n      cookies: [session]\n  - name: own\n    match: /own\n    ignore_cookies: [consent]\n",
            None,
            &crate::config::Overrides::default(),
        )
        .unwrap();
        let me = request(&c, "GET /me").unwrap();
        assert!(
            me.contains(
                "cookies: ignored [_ga, _hj*] (never forwarded on cached reads), keyed [session]"
            ),
            "{me}"
        );
        let own = request(&c, "/own").unwrap();
        assert!(own.contains("ignored [consent]"), "{own}");
        let none = request(&c, "/elsewhere").unwrap();
        assert!(none.contains("ignored [_ga, _hj*]"), "{none}");
    }

    #[test]
    fn explains_a_write() {
        let out = request(&cfg(), "PATCH /studio/api/scenes/42").unwrap();
        assert!(out.contains("route rule: \"scene\""), "{out}");
        assert!(out.contains("rule \"scene-write\""), "{out}");
        assert!(out.contains("binds id=42"), "{out}");
        assert!(out.contains("r:/studio/api/scenes/{id}|id=42"), "{out}");
        assert!(
            out.contains("(every path it matches)") || out.contains("whole family"),
            "{out}"
        );
        assert!(out.contains("u:/studio/api/scenes/42"), "{out}");
    }

    #[test]
    fn explains_an_unmatched_write_and_a_read() {
        let out = request(&cfg(), "POST /studio/api/stories/1").unwrap();
        assert!(out.contains("no invalidate rule matches"), "{out}");
        let out = request(&cfg(), "/studio/api/chapters/3").unwrap();
        assert!(out.contains("not a write"), "{out}");
        assert!(out.contains("r:/studio/api/chapters/{_1}"), "{out}");
        assert!(request(&cfg(), "PATCH scenes").is_err());
    }

    #[test]
    fn explains_a_path_apps_read_differently_as_the_proxy_does() {
        let read = request(&cfg(), "GET /studio/api/scenes/42;jsessionid=x").unwrap();
        assert!(read.contains("also as /studio/api/scenes/42."), "{read}");
        assert!(read.contains("not a write"), "{read}");
        assert!(read.contains("r:/studio/api/scenes/{id}|id=42\n"), "{read}");
        // A reading under another rule (none, here): not cached.
        let popped = request(&cfg(), "GET /x/..;/studio/api/scenes/42").unwrap();
        assert!(popped.contains("detail=ambiguous-path"), "{popped}");
        let write = request(&cfg(), "PATCH /studio/api/scenes/42;jsessionid=x").unwrap();
        let tags = write.lines().last().unwrap();
        assert!(tags.contains("r:/studio/api/scenes/{id}|id=42 "), "{tags}");
        assert!(tags.contains("u:/studio/api/scenes/42 "), "{tags}");
        // Matched only through the servlet reading (found by review: it
        // said no rule matched).
        let popped = request(&cfg(), "PATCH /x/..;/studio/api/scenes/42").unwrap();
        assert!(!popped.contains("no invalidate rule matches"), "{popped}");
        assert!(
            popped.contains("another reading of its path: scene-write"),
            "{popped}"
        );
    }
}
