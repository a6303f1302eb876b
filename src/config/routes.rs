//! Validation of the `routes:` and `invalidate:` sections: each rule
//! checked, every problem kept, then the tables built (which check the
//! patterns); and which routes each invalidation rule purges.

use std::collections::HashMap;

use super::schema::{RawInvalidate, RawRoute};
use crate::canonical::PathPolicy;
use crate::invalidation::{Invalidation, RawRule};
use crate::rules::{sample_path, CacheOverrides, CookieName, RouteTable, Rule};

/// Cookie names as written in the `ignore_cookies` list at key path `at`.
pub(super) fn cookie_names(
    at: &str,
    list: &[String],
    problem: &mut impl FnMut(&str, String),
) -> Vec<CookieName> {
    list.iter()
        .enumerate()
        .filter_map(|(i, c)| {
            CookieName::parse(c)
                .map_err(|m| problem(&format!("{at}[{i}]"), format!("ignore_cookies: {m}")))
                .ok()
        })
        .collect()
}

/// `routes`: each rule checked, then the table (which checks the patterns).
pub(super) fn validate_routes(
    raw: Vec<RawRoute>,
    default_ignored: &[CookieName],
    paths: &PathPolicy,
    problem: &mut impl FnMut(&str, String),
) -> RouteTable {
    let mut rules = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let at = |key: &str| format!("routes[{i}].{key}");
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problem(
                &at("name"),
                format!("route name {:?} must be non-empty and use only letters, digits, '-' and '_' (it becomes a metric label)", r.name),
            );
        }
        if !names.insert(r.name.clone()) {
            problem(
                &at("name"),
                format!("route name {:?} is used twice", r.name),
            );
        }
        for (j, h) in r.key.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                problem(
                    &at(&format!("key.headers[{j}]")),
                    format!("key.headers: {h:?} is not a valid header name"),
                );
            }
        }
        let mut overrides = CacheOverrides {
            no_store: r.override_no_store,
            ..CacheOverrides::default()
        };
        for (j, o) in r.overrides.iter().enumerate() {
            if !overrides.add(o) {
                problem(
                    &at(&format!("override[{j}]")),
                    format!(
                        "override: {o:?} is not one of {}",
                        CacheOverrides::NAMES.join(", ")
                    ),
                );
            }
        }
        if !r.overrides.is_empty() && r.ttl.is_none() {
            problem(
                &at("override"),
                format!(
                    "route {:?}: override needs a ttl (it says where the ttl beats the app's headers)",
                    r.name
                ),
            );
        }
        for (j, &s) in r.statuses.iter().flatten().enumerate() {
            if !(200..=599).contains(&s) || s == 206 || s == 304 {
                problem(
                    &at(&format!("statuses[{j}]")),
                    format!(
                        "route {:?}: status {s} cannot be stored (200-599, except 206 and 304)",
                        r.name
                    ),
                );
            }
        }
        rules.push(Rule {
            name: r.name,
            pattern: r.pattern,
            ttl: r.ttl.map(|d| d.0),
            overrides,
            statuses: r.statuses,
            negative_ttl: r.negative_ttl.map(|d| d.0),
            key_headers: r
                .key
                .headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ignore_cookies: match &r.ignore_cookies {
                Some(list) => cookie_names(&at("ignore_cookies"), list, problem),
                None => default_ignored.to_vec(),
            },
            key_cookies: r.key.cookies,
            enabled: r.enabled,
        });
    }
    match RouteTable::new(rules, paths) {
        Ok(t) => t,
        Err(errs) => {
            for (i, e) in errs {
                problem(&format!("routes[{i}].match"), e.to_string());
            }
            RouteTable::default()
        }
    }
}

/// `invalidate`: the rules, every problem of every rule.
pub(super) fn validate_invalidation(
    raw: Vec<RawInvalidate>,
    paths: &PathPolicy,
    problem: &mut impl FnMut(&str, String),
) -> Invalidation {
    match Invalidation::new(
        raw.into_iter()
            .map(|r| RawRule {
                name: r.name,
                on: r.on,
                purge: r.purge,
            })
            .collect(),
        paths,
    ) {
        Ok(i) => i,
        Err(errs) => {
            for e in errs {
                problem(&format!("invalidate{}", e.at), e.message);
            }
            Invalidation::default()
        }
    }
}

/// The routes each invalidation rule purges (for monitoring's per-route
/// invalidation counts), by sample paths of its targets.
pub(super) fn purged_routes(
    invalidation: &Invalidation,
    routes: &RouteTable,
    paths: &PathPolicy,
) -> HashMap<String, Vec<String>> {
    invalidation
        .rules
        .iter()
        .map(|r| {
            let mut names: Vec<String> = r
                .purge
                .iter()
                .filter_map(|&ti| sample_path(&invalidation.targets[ti].pattern))
                .filter_map(|p| routes.lookup(&paths.route_path(&p)).map(|r| r.name.clone()))
                .collect();
            names.sort();
            names.dedup();
            (r.name.clone(), names)
        })
        .collect()
}
