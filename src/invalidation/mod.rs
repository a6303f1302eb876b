//! Invalidation rules: which cached responses a write makes stale.
//!
//! The YAML names route patterns; this module turns them into *tags*, so that
//! a write costs O(number of tags it names), never a walk over the cache:
//!
//! - Every `purge:` target pattern is a tag template. A cached GET gets, for
//!   each target pattern its path matches, a *family* tag (`r:/scenes/{id}`)
//!   and, when the pattern binds parameters, a *bound* tag
//!   (`r:/scenes/{id}|id=42`).
//! - A write that matches an `on:` pattern binds that pattern's parameters and
//!   invalidates, per target, the bound tag when the write binds every
//!   parameter the target names, and the family tag otherwise (a wider purge
//!   is always safe; a narrower one would serve stale data).
//! - Always (RFC 9111 §4.4): a write the app did not refuse (any final
//!   answer but 4xx, see `writes`) invalidates its own path
//!   (`u:` tag, every query and variant of it) and same-origin `Location` /
//!   `Content-Location`.
//! - Tags the app names: `Surrogate-Key` / `Cache-Tag` on responses (`k:`),
//!   RFC 9875 `Cache-Groups` on responses and `Cache-Group-Invalidation` on
//!   write responses (`g:`).
//!
//! The invalidation log (`store::log`: `store::clock` in one process, the
//! Redis tier for a fleet) keeps, per tag, the clock value of its last
//! invalidation, and serves an entry only if none of its tags was invalidated
//! after the entry's fetch began.
//!
//! Reads and writes are matched as [`RoutePath`]s, the one spelling of a path
//! that `canonical` gives every alias of it, and writes by every method the
//! app may execute for them ([`Methods`]: overrides included).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use http::Method;

use crate::canonical::{PathPolicy, ReadingBytes, RoutePath};
use crate::ids;
use crate::methods::Methods;
use crate::rules::{fill_canonical, in_canonical_form, to_matchit, PatternError};

mod tags;
mod unmatched;

use tags::{bound_tag, family_tag};
pub use tags::{group_tag, groups_invalidated, key_tag, own_tag, tags_from_response, ALL_TAG};
pub use unmatched::{Unmatched, UnmatchedWrites};

/// One `invalidate:` rule, compiled.
#[derive(Debug, Clone)]
pub struct InvalidationRule {
    /// Position in the file, for messages and metrics (`rule-3`), or its name.
    pub name: String,
    /// Methods it applies to; empty means every unsafe method.
    pub methods: Vec<Method>,
    pub on: String,
    on_router: matchit::Router<()>,
    /// Indices into [`Invalidation::targets`].
    pub purge: Vec<usize>,
}

/// A purge target pattern: a tag template.
#[derive(Debug, Clone)]
pub struct Target {
    pub pattern: String,
    /// The pattern in matchit syntax: the tag's stable name.
    pub canonical: String,
    /// Named parameters (not `*` wildcards, which widen to the family).
    pub params: Vec<String>,
    router: matchit::Router<()>,
}

/// All invalidation rules of a config.
#[derive(Debug, Clone, Default)]
pub struct Invalidation {
    pub rules: Vec<InvalidationRule>,
    pub targets: Vec<Target>,
    /// How paths are folded; patterns are folded the same way.
    paths: PathPolicy,
}

/// A rule as written, before compilation.
#[derive(Debug, Clone)]
pub struct RawRule {
    pub name: Option<String>,
    pub on: String,
    pub purge: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RuleError {
    /// Where in the `invalidate:` list: `[2].on`, `[2].purge[0]`.
    pub at: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn single(
    pattern: &str,
    paths: &PathPolicy,
) -> Result<(String, matchit::Router<()>), PatternError> {
    let canonical = to_matchit(pattern)
        .and_then(|c| in_canonical_form(&c, paths).map(|()| c))
        .map_err(|reason| PatternError {
            pattern: pattern.to_string(),
            reason,
        })?;
    let mut router = matchit::Router::new();
    router
        .insert(paths.fold_pattern(&canonical), ())
        .map_err(|e| PatternError {
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })?;
    Ok((canonical, router))
}

/// Split `"[PATCH, DELETE] /a/:id"`, `"POST /a"` or `"/a"` into methods and pattern.
fn parse_on(on: &str) -> Result<(Vec<Method>, String), String> {
    let on = on.trim();
    let (methods, rest): (Vec<&str>, &str) = if let Some(r) = on.strip_prefix('[') {
        let (list, rest) = r
            .split_once(']')
            .ok_or_else(|| format!("on: {on:?} opens '[' without closing it"))?;
        (
            list.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect(),
            rest,
        )
    } else if let Some((m, rest)) = on.split_once(char::is_whitespace) {
        (
            m.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect(),
            rest,
        )
    } else {
        (Vec::new(), on)
    };
    let mut out = Vec::new();
    for m in methods {
        let upper = m.to_ascii_uppercase();
        match upper.as_str() {
            "POST" | "PUT" | "PATCH" | "DELETE" => {
                out.push(Method::from_bytes(upper.as_bytes()).map_err(|e| e.to_string())?)
            }
            "*" => {}
            _ => {
                return Err(format!(
                    "on: {m:?} is not a write method (POST, PUT, PATCH, DELETE or *)"
                ))
            }
        }
    }
    Ok((out, rest.trim().to_string()))
}

impl Invalidation {
    pub fn new(raw: Vec<RawRule>, paths: &PathPolicy) -> Result<Invalidation, Vec<RuleError>> {
        let mut inv = Invalidation {
            paths: *paths,
            ..Invalidation::default()
        };
        let mut errors = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let name = r.name.clone().unwrap_or_else(|| format!("rule-{}", i + 1));
            // Every problem of the rule is reported, its targets' too, even
            // when its `on:` is already wrong.
            let on = parse_on(&r.on).and_then(|(methods, pattern)| {
                let (_, router) = single(&pattern, paths).map_err(|e| e.to_string())?;
                Ok((methods, pattern, router))
            });
            if let Err(message) = &on {
                errors.push(RuleError {
                    at: format!("[{i}].on"),
                    message: message.clone(),
                });
            }
            if r.purge.is_empty() {
                errors.push(RuleError {
                    at: format!("[{i}].purge"),
                    message: format!("rule {name:?} has no purge targets"),
                });
            }
            let mut purge = Vec::new();
            for (j, p) in r.purge.iter().enumerate() {
                match inv.target_index(p) {
                    Ok(idx) => purge.push(idx),
                    Err(e) => errors.push(RuleError {
                        at: format!("[{i}].purge[{j}]"),
                        message: e.to_string(),
                    }),
                }
            }
            let Ok((methods, pattern, on_router)) = on else {
                continue;
            };
            inv.rules.push(InvalidationRule {
                name,
                methods,
                on: pattern,
                on_router,
                purge,
            });
        }
        if errors.is_empty() {
            Ok(inv)
        } else {
            Err(errors)
        }
    }

    fn target_index(&mut self, pattern: &str) -> Result<usize, PatternError> {
        let (canonical, router) = single(pattern, &self.paths)?;
        if let Some(i) = self.targets.iter().position(|t| t.canonical == canonical) {
            return Ok(i);
        }
        let params = named_params(&canonical);
        self.targets.push(Target {
            pattern: pattern.to_string(),
            canonical,
            params,
            router,
        });
        Ok(self.targets.len() - 1)
    }

    /// The tags a cached response for `path` belongs to.
    pub fn tags_for_read(&self, path: &RoutePath) -> Vec<String> {
        let mut tags = vec![ALL_TAG.to_string(), own_tag(path)];
        for t in &self.targets {
            if let Ok(m) = t.router.at(path.as_str()) {
                tags.push(family_tag(t));
                if !t.params.is_empty() {
                    let bound: Vec<(String, String)> = t
                        .params
                        .iter()
                        .map(|p| (p.clone(), m.params.get(p).unwrap_or("").to_string()))
                        .collect();
                    tags.push(bound_tag(t, &bound));
                }
            }
        }
        tags
    }

    /// The tags of a cached response read as each of `paths` (a path and
    /// its readings, `Canonical::tagged_routes`), each once.
    pub fn tags_for_reads<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a RoutePath>,
    ) -> Vec<String> {
        let mut paths = paths.into_iter();
        let Some(first) = paths.next() else {
            return Vec::new();
        };
        let mut tags = self.tags_for_read(first);
        for path in paths {
            for tag in self.tags_for_read(path) {
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
        }
        tags
    }

    /// The rules a write matches, with what each invalidates. A rule applies
    /// when the write may be any of its methods (an override may make a POST
    /// a PATCH to the app).
    pub fn plan_write(&self, methods: &Methods, path: &RoutePath) -> WritePlan {
        let mut plan = WritePlan {
            tags: BTreeSet::from([own_tag(path)]),
            matched: Vec::new(),
            refetch: Vec::new(),
        };
        for rule in &self.rules {
            if !methods.may_be_any_of(&rule.methods) {
                continue;
            }
            let Ok(m) = rule.on_router.at(path.as_str()) else {
                continue;
            };
            let bound: Vec<(String, String)> = m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let mut hits = Vec::new();
            for &ti in &rule.purge {
                let t = &self.targets[ti];
                let values: Option<Vec<(String, String)>> = t
                    .params
                    .iter()
                    .map(|p| {
                        bound
                            .iter()
                            .find(|(k, _)| k == p)
                            .map(|(k, v)| (k.clone(), v.clone()))
                    })
                    .collect();
                if let Some(path) = values.as_deref().and_then(|v| concrete_path(t, v)) {
                    if !plan.refetch.contains(&path) {
                        plan.refetch.push(path);
                    }
                }
                let (tag, why) = match values {
                    Some(v) if !t.params.is_empty() => {
                        let desc = v
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        (bound_tag(t, &v), format!("{} with {desc}", t.pattern))
                    }
                    Some(_) => (
                        family_tag(t),
                        format!("{} (every path it matches)", t.pattern),
                    ),
                    None => (
                        family_tag(t),
                        format!(
                            "{} (the whole family: the write does not bind {})",
                            t.pattern,
                            t.params.join(", ")
                        ),
                    ),
                };
                plan.tags.insert(tag.clone());
                hits.push((tag, why));
            }
            plan.matched.push(MatchedRule {
                name: rule.name.clone(),
                on: rule.on.clone(),
                bound,
                purges: hits,
            });
        }
        plan
    }

    /// What an operator's purge names, as tags: everything (`all`), a tag
    /// the app named (as a `Cache-Tag`/`Surrogate-Key` and as an RFC 9875
    /// group, `tag`), and a route pattern with parameter values. An error
    /// names what is wrong: nothing named, or a bad pattern.
    pub fn purge_tags(
        &self,
        all: bool,
        tag: Option<&str>,
        pattern: Option<(&str, &[(String, String)])>,
    ) -> Result<BTreeSet<String>, String> {
        let mut tags = BTreeSet::new();
        if all {
            tags.insert(ALL_TAG.to_string());
        }
        if let Some(tag) = tag {
            tags.insert(key_tag(tag));
            tags.insert(group_tag(tag));
        }
        if let Some((pattern, params)) = pattern {
            let by_pattern = self
                .tags_for_pattern(pattern, params)
                .map_err(|e| e.to_string())?;
            tags.extend(by_pattern);
        }
        if tags.is_empty() {
            return Err(r#"say what to purge: {"pattern": ..., "params": {...}}, {"tag": ...} or {"all": true}"#.into());
        }
        Ok(tags)
    }

    /// Tags for a purge request by pattern with optional parameter values.
    pub fn tags_for_pattern(
        &self,
        pattern: &str,
        params: &[(String, String)],
    ) -> Result<Vec<String>, PatternError> {
        let (canonical, _) = single(pattern, &self.paths)?;
        let target = self.targets.iter().find(|t| t.canonical == canonical);
        let Some(t) = target else {
            // Not a purge target: a concrete path can still be purged through
            // its own-URI tag, once every parameter is given.
            let concrete = fill_canonical(&canonical, |name| {
                params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            });
            if let Some(path) = concrete {
                // Every path apps read it as (`/scenes/0132` is scene 132).
                return Ok(match self.paths.route_paths(&path, ReadingBytes::NAMED) {
                    Some(all) => all.iter().map(own_tag).collect(),
                    None => vec![ALL_TAG.to_string()],
                });
            }
            return Err(PatternError {
                pattern: pattern.to_string(),
                reason: "is not a purge target of any rule, so no cached entry carries its tag"
                    .into(),
            });
        };
        let values: Option<Vec<(String, String)>> = t
            .params
            .iter()
            .map(|p| {
                // As a request's route path spells it (decoded, case folded):
                // `%40alice` purges what `/users/@alice` cached.
                params
                    .iter()
                    .find(|(k, _)| k == p)
                    .map(|(k, v)| (k.clone(), self.paths.fold_value(v)))
            })
            .collect();
        Ok(match values {
            Some(v) if !t.params.is_empty() => ids::every_reading(&v)
                .map(|all| all.iter().map(|v| bound_tag(t, v)).collect())
                .unwrap_or_else(|| vec![family_tag(t)]),
            _ => vec![family_tag(t)],
        })
    }
}

#[derive(Debug, Clone)]
pub struct WritePlan {
    pub tags: BTreeSet<String>,
    pub matched: Vec<MatchedRule>,
    /// The exact paths the matched purge targets name (every segment known:
    /// no wildcard, every parameter bound by the write), which prefetching
    /// can fetch again. Families (`*`, unbound parameters) are not listed.
    pub refetch: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct MatchedRule {
    pub name: String,
    pub on: String,
    pub bound: Vec<(String, String)>,
    /// (tag, human explanation)
    pub purges: Vec<(String, String)>,
}

fn named_params(canonical: &str) -> Vec<String> {
    canonical
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .filter(|s| !s.starts_with('_') && !s.starts_with('*'))
        .map(str::to_string)
        .collect()
}

/// `t` with its parameters replaced by `values`; `None` if a segment stays
/// open (a wildcard, or a parameter without a value).
fn concrete_path(t: &Target, values: &[(String, String)]) -> Option<String> {
    let segments: Option<Vec<Cow<str>>> = t
        .canonical
        .split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                // Bound values are decoded (route paths are): escaped
                // again, or a `?` or `#` in one would end the path.
                Some(name) => values
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| crate::escapes::encode_segment(v)),
                None => Some(Cow::Borrowed(seg)),
            },
        )
        .collect();
    Some(segments?.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(p: &str) -> RoutePath {
        PathPolicy::default().route_path(p)
    }

    fn read(inv: &Invalidation, path: &str) -> Vec<String> {
        inv.tags_for_read(&route(path))
    }

    fn write(inv: &Invalidation, method: Method, path: &str) -> WritePlan {
        inv.plan_write(&Methods::only(method), &route(path))
    }

    #[test]
    fn a_purge_names_what_it_invalidates_or_says_what_is_missing() {
        let inv = rules();
        assert_eq!(
            inv.purge_tags(true, None, None).unwrap(),
            BTreeSet::from([ALL_TAG.to_string()])
        );
        // An app-named tag may have been a Cache-Tag or a Cache-Groups group.
        assert_eq!(
            inv.purge_tags(false, Some("scene-42"), None).unwrap(),
            BTreeSet::from(["g:scene-42".to_string(), "k:scene-42".to_string()])
        );
        let id = [("id".to_string(), "42".to_string())];
        let by_pattern = inv
            .purge_tags(false, None, Some(("/studio/api/scenes/:id", &id)))
            .unwrap();
        // What a read of scene 42 carries is among what the purge names.
        let scene = read(&inv, "/studio/api/scenes/42");
        assert!(scene
            .iter()
            .any(|t| t.starts_with("r:") && by_pattern.contains(t)));
        assert!(!read(&inv, "/studio/api/scenes/43")
            .iter()
            .any(|t| t.starts_with("r:") && by_pattern.contains(t)));
        // A value as typed, escaped or in capitals, names what a read of
        // any spelling of it carries.
        for typed in ["%40Al", "@al", "@AL"] {
            let id = [("id".to_string(), typed.to_string())];
            let by_pattern = inv
                .purge_tags(false, None, Some(("/studio/api/scenes/:id", &id)))
                .unwrap();
            for read_as in ["/studio/api/scenes/@al", "/studio/api/scenes/%40AL"] {
                assert!(
                    read(&inv, read_as)
                        .iter()
                        .any(|t| t.starts_with("r:") && by_pattern.contains(t)),
                    "purge {typed} vs read {read_as}"
                );
            }
        }
        // An id spelled otherwise names the value apps read it as, and
        // a concrete path every path they read it as.
        let padded = [("id".to_string(), "0042".to_string())];
        let by_pattern = inv
            .purge_tags(false, None, Some(("/studio/api/scenes/:id", &padded)))
            .unwrap();
        assert!(scene
            .iter()
            .any(|t| t.starts_with("r:") && by_pattern.contains(t)));
        let by_path = inv.tags_for_pattern("/x/0042", &[]).unwrap();
        assert!(by_path.contains(&own_tag(&route("/x/42"))), "{by_path:?}");
        assert!(inv
            .purge_tags(false, None, None)
            .unwrap_err()
            .contains("say what"));
        assert!(inv
            .purge_tags(false, None, Some(("no-slash", &[])))
            .is_err());
    }

    fn rules() -> Invalidation {
        Invalidation::new(
            vec![
                RawRule {
                    name: None,
                    on: "[PATCH, DELETE] /studio/api/scenes/:id".into(),
                    purge: vec![
                        "/studio/api/scenes/:id".into(),
                        "/studio/api/chapters/*".into(),
                        "/studio/api/stories/[id]".into(),
                    ],
                },
                RawRule {
                    name: Some("like".into()),
                    on: "POST /community/api/posts/:postId/like".into(),
                    purge: vec![
                        "/community/api/posts/:postId".into(),
                        "/community/api/posts".into(),
                    ],
                },
            ],
            &PathPolicy::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_read_carries_family_and_bound_tags() {
        let inv = rules();
        let tags = read(&inv, "/studio/api/scenes/42");
        assert_eq!(
            tags,
            vec![
                "a:all",
                "u:/studio/api/scenes/42",
                "r:/studio/api/scenes/{id}",
                "r:/studio/api/scenes/{id}|id=42"
            ]
        );
        let chapter = read(&inv, "/studio/api/chapters/7");
        assert!(chapter.contains(&"r:/studio/api/chapters/{_1}".to_string()));
    }

    #[test]
    fn a_write_binds_its_parameters_and_widens_what_it_cannot_bind() {
        let inv = rules();
        let plan = write(&inv, Method::PATCH, "/studio/api/scenes/42");
        let tags: Vec<&str> = plan.tags.iter().map(String::as_str).collect();
        assert!(tags.contains(&"r:/studio/api/scenes/{id}|id=42"));
        assert!(tags.contains(&"r:/studio/api/chapters/{_1}"));
        // stories/[id] names `id` and the write binds `id` (the scene's id):
        // same name, so it binds; authors use distinct names to widen.
        assert!(tags.contains(&"r:/studio/api/stories/{id}|id=42"));
        assert!(tags.contains(&"u:/studio/api/scenes/42"));
        // The reads it must invalidate carry the bound tag it names, not
        // only the write's own `u:` tag.
        let scene = read(&inv, "/studio/api/scenes/42");
        assert!(scene.contains(&"r:/studio/api/scenes/{id}|id=42".to_string()));
        let other = read(&inv, "/studio/api/scenes/43");
        assert!(!other
            .iter()
            .any(|t| plan.tags.contains(t) && t.contains("scenes")));
    }

    #[test]
    fn a_write_lists_the_exact_paths_it_purges_for_refetching() {
        let inv = rules();
        let plan = write(&inv, Method::POST, "/community/api/posts/9/like");
        assert_eq!(
            plan.refetch,
            vec!["/community/api/posts/9", "/community/api/posts"]
        );
        // Families (`*`) cannot be listed; bound parameters can.
        let plan = write(&inv, Method::PATCH, "/studio/api/scenes/42");
        assert_eq!(
            plan.refetch,
            vec!["/studio/api/scenes/42", "/studio/api/stories/42"]
        );
        // A value decoded in the route path is escaped again for the URL.
        let plan = write(&inv, Method::PATCH, "/studio/api/scenes/a%3Fb%20%C3%AB@");
        assert_eq!(plan.refetch[0], "/studio/api/scenes/a%3Fb%20%C3%AB@");
        // An escape the route path kept is not escaped twice.
        let plan = write(&inv, Method::PATCH, "/studio/api/scenes/a%2Fb%25");
        assert_eq!(
            plan.refetch[0].to_ascii_uppercase(),
            "/STUDIO/API/SCENES/A%2FB%25"
        );
    }

    #[test]
    fn methods_filter_rules() {
        let inv = rules();
        assert!(write(&inv, Method::POST, "/studio/api/scenes/42")
            .matched
            .is_empty());
        assert_eq!(
            write(&inv, Method::POST, "/community/api/posts/9/like")
                .matched
                .len(),
            1
        );
        let p = write(&inv, Method::POST, "/community/api/posts/9/like");
        assert!(p.tags.contains("r:/community/api/posts/{postId}|postId=9"));
        assert!(p.tags.contains("r:/community/api/posts"));
        assert!(read(&inv, "/community/api/posts").contains(&"r:/community/api/posts".to_string()));
    }

    #[test]
    fn bad_rules_are_reported_with_where_they_are() {
        let e = Invalidation::new(
            vec![RawRule {
                name: None,
                on: "GET /a/:id".into(),
                purge: vec!["/a/**/b".into()],
            }],
            &PathPolicy::default(),
        )
        .unwrap_err();
        // Both of the rule's problems, each with where it is (the bad
        // `on:` no longer hides the bad target).
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].at, "[0].on");
        assert_eq!(e[1].at, "[0].purge[0]");
    }

    #[test]
    fn aliases_of_a_path_carry_and_invalidate_the_same_tags() {
        let inv = rules();
        let want = "r:/community/api/posts/{postId}|postId=9".to_string();
        for alias in [
            "/community/api/posts/%39",
            "/Community/API/posts/9/",
            "/community//api/./posts/x/../9",
        ] {
            assert!(read(&inv, alias).contains(&want), "{alias}");
        }
        for alias in [
            "/community/api/posts/%39/like",
            "/COMMUNITY/api/posts/9/like/",
        ] {
            assert!(
                write(&inv, Method::POST, alias).tags.contains(&want),
                "{alias}"
            );
        }
    }

    #[test]
    fn an_overridden_method_matches_the_rules_of_the_method_it_names() {
        let inv = rules();
        let mut post = Methods::only(Method::POST);
        assert!(inv
            .plan_write(&post, &route("/studio/api/scenes/42"))
            .matched
            .is_empty());
        post.overrides.push(Method::PATCH);
        let plan = inv.plan_write(&post, &route("/studio/api/scenes/42"));
        assert_eq!(plan.matched.len(), 1);
        assert!(plan.tags.contains("r:/studio/api/chapters/{_1}"));
    }

    #[test]
    fn app_named_tags() {
        let mut h = http::HeaderMap::new();
        h.insert("surrogate-key", "scene-42 story-7".parse().unwrap());
        h.insert("cache-groups", "\"scenes\", \"s42\"".parse().unwrap());
        assert_eq!(
            tags_from_response(&h),
            vec!["k:scene-42", "k:story-7", "g:scenes", "g:s42"]
        );
        let mut w = http::HeaderMap::new();
        w.insert("cache-group-invalidation", "\"s42\"".parse().unwrap());
        assert_eq!(groups_invalidated(&w), vec!["g:s42"]);
    }
}
