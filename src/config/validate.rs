//! Validation: a raw config becomes a [`Config`] snapshot, or the list of
//! *every* problem in it, each located at its key path (`locate`). One
//! function per section, each handed the problem collector; the rules'
//! sections are in `routes`, the listeners' in `listeners`, monitoring's
//! in `monitoring`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::listeners::{validate_listeners, Listeners};
use super::locate::{from_file, Spans};
use super::monitoring::validate_monitoring;
use super::routes::{cookie_names, purged_routes, validate_invalidation, validate_routes};
use super::schema::*;
use super::*;
use crate::canonical::{PathPolicy, ROUTE_PATH_REVISION};
use crate::forwarding::{self, TrustedProxies};
use crate::methods::MethodOverride;
use crate::store::redis::Consistency;
use crate::store::RulesFingerprint;

/// The largest `cache.max_object_size`: an entry, header included, must
/// stay below 4 GiB (see `store::entry`).
const MAX_OBJECT_LIMIT: u64 = 2 << 30;

/// The longest `cache.namespace` (a build id or a commit hash fits easily).
const MAX_NAMESPACE: usize = 128;

/// A namespace is visible ASCII, at most [`MAX_NAMESPACE`] bytes (it is
/// part of every key and shown in logs).
fn check_namespace(ns: &str) -> Result<(), String> {
    if ns.len() > MAX_NAMESPACE {
        return Err(format!(
            "cache.namespace: {} bytes, at most {MAX_NAMESPACE}",
            ns.len()
        ));
    }
    if let Some(c) = ns.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "cache.namespace: {c:?} is not allowed (visible ASCII only): {ns:?}"
        ));
    }
    Ok(())
}

pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    path: Option<&Path>,
    ov: &Overrides,
) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    // Parsed for positions only when there is a problem to locate.
    let spans = std::cell::OnceCell::new();
    // `at`: the key path the problem is about (`routes[2].match`); empty
    // when the value did not come from the file (a command-line override).
    let mut problem = |at: &str, message: String| {
        let (line, column) = spans.get_or_init(|| Spans::of(text)).find(at);
        problems.push(Problem {
            line,
            column,
            message,
        });
    };

    let namespace = ov
        .namespace
        .clone()
        .or(raw.cache.namespace.clone())
        .unwrap_or_default();
    if let Err(m) = check_namespace(&namespace) {
        problem(from_file(&ov.namespace, "cache.namespace"), m);
    }
    let Listeners {
        listen,
        admin_listen,
        admin_auth,
        upstream,
    } = validate_listeners(&raw, ov, &mut problem);
    let redis = validate_redis(raw.store.redis.as_ref(), ov, &mut problem);
    let write_timeout = raw.writes.timeout.map_or(DEFAULT_WRITE_TIMEOUT, |d| d.0);
    if write_timeout.is_zero() {
        problem(
            "writes.timeout",
            "writes.timeout must be more than 0".into(),
        );
    }

    let defaults = PathPolicy::default();
    let paths = PathPolicy {
        merge_slashes: raw.paths.merge_slashes.unwrap_or(defaults.merge_slashes),
        ignore_case: raw.paths.ignore_case.unwrap_or(defaults.ignore_case),
        ignore_trailing_slash: raw
            .paths
            .ignore_trailing_slash
            .unwrap_or(defaults.ignore_trailing_slash),
    };
    let method_override = validate_method_override(raw.method_override, &mut problem);

    // Tags come from the invalidation rules and how paths are folded; route
    // TTLs, keys and `enabled` do not change what a write invalidates.
    // `max_ttl` too: it bounds how long `last_inv` is kept, so an entry
    // stored under a longer one could outlive its invalidations.
    // And how overrides are read: replicas that read them differently plan
    // the same write differently. And freshgate's own version: another
    // version may tag or plan the same write differently, so replicas of two
    // versions in one fleet (a rolling upgrade) count as mixed rules (the
    // cache is bypassed until one version runs alone); the version number
    // is not bumped with every build, so the revision of how route paths
    // are made is in it too.
    // (`max_ttl` joins it in `rules_fingerprint`: a reload keeps the
    // running one, see `Config::beside`.)
    let rules_basis = hash_of(&format!(
        "{:?} {:?} {:?} {} {}",
        raw.invalidate,
        paths,
        method_override,
        env!("CARGO_PKG_VERSION"),
        ROUTE_PATH_REVISION,
    ));
    let max_ttl = raw.cache.max_ttl.map(|d| d.0).unwrap_or(DEFAULT_MAX_TTL);
    let default_ignored = cookie_names(
        "cache.ignore_cookies",
        raw.cache.ignore_cookies.as_deref().unwrap_or_default(),
        &mut problem,
    );
    let routes = validate_routes(raw.routes, &default_ignored, &paths, &mut problem);
    let invalidation = validate_invalidation(raw.invalidate, &paths, &mut problem);
    let monitoring = validate_monitoring(raw.monitoring, &mut problem);
    let warm = validate_warm(raw.warm, listen, &mut problem);
    let targeted_fields =
        validate_targeted_fields(raw.cache.targeted_fields.as_deref(), &mut problem);
    let trusted_proxies = validate_trusted_proxies(raw.trusted_proxies, &mut problem);
    let timeouts = validate_timeouts(raw.timeouts, &mut problem);
    let purged_routes = purged_routes(&invalidation, &routes, &paths);
    let max_object_bytes = raw
        .cache
        .max_object_size
        .map(|s| s.0)
        .unwrap_or(DEFAULT_MAX_OBJECT_BYTES);
    if max_object_bytes > MAX_OBJECT_LIMIT {
        problem(
            "cache.max_object_size",
            format!("cache.max_object_size is at most 2GiB (an entry is addressed with 32-bit offsets), not {max_object_bytes} bytes"),
        );
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        source: path.map(Path::to_path_buf),
        listen,
        upstream,
        admin_listen,
        admin_auth,
        memory_max_bytes: raw
            .store
            .memory
            .max_size
            .map(|s| s.0)
            .unwrap_or(DEFAULT_MEMORY_BYTES),
        redis,
        max_object_bytes,
        lock_timeout: raw
            .cache
            .lock_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(3)),
        grace_period: raw
            .shutdown
            .grace_period
            .map(|d| d.0)
            .unwrap_or(DEFAULT_GRACE_PERIOD),
        shutdown_timeout: raw
            .shutdown
            .timeout
            .map(|d| d.0)
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
        routes,
        invalidation,
        max_ttl,
        negative_ttl: raw
            .cache
            .negative_ttl
            .map(|d| d.0)
            .unwrap_or(crate::storable::DEFAULT_NEGATIVE_TTL),
        targeted_fields,
        heuristic_freshness: raw.cache.heuristic_freshness.unwrap_or(false),
        ignore_cookies: default_ignored,
        request_cache_control: raw.cache.request_cache_control.unwrap_or(false),
        share_authorized: raw.cache.share_authorized.unwrap_or(false),
        namespace,
        flags: raw.flags,
        rules_fingerprint: rules_fingerprint(rules_basis, max_ttl),
        rules_basis,
        monitoring,
        purged_routes,
        warm,
        text_hash: hash_of(text),
        paths,
        method_override,
        write_timeout,
        trusted_proxies,
        timeouts,
    })
}

/// `store.redis`, as given or overridden.
fn validate_redis(
    raw: Option<&RawRedis>,
    ov: &Overrides,
    problem: &mut impl FnMut(&str, String),
) -> Option<RedisConfig> {
    let redis_url = ov.redis.clone().or(raw.and_then(|r| r.url.clone()));
    if redis_url.is_none() && raw.is_some() {
        problem(
            "store.redis",
            "store.redis needs a url (or --redis / FRESHGATE_REDIS)".into(),
        );
    }
    redis_url.map(|url| {
        if !(url.starts_with("redis://") || url.starts_with("unix://")) {
            problem(
                from_file(&ov.redis, "store.redis.url"),
                format!("store.redis.url {url:?} must start with redis:// or unix://"),
            );
        }
        let timeout = ov
            .redis_timeout
            .or(raw.and_then(|r| r.timeout).map(|d| d.0))
            .unwrap_or(DEFAULT_REDIS_TIMEOUT);
        if timeout.is_zero() {
            problem(
                from_file(&ov.redis_timeout, "store.redis.timeout"),
                "store.redis.timeout must be more than 0".into(),
            );
        }
        let consistency = match raw.and_then(|r| r.consistency.as_deref()) {
            None => Consistency::Strict,
            Some(c) => Consistency::parse(c).unwrap_or_else(|| {
                problem(
                    "store.redis.consistency",
                    format!("store.redis.consistency {c:?}: use strict or bounded"),
                );
                Consistency::Strict
            }),
        };
        let on_unrecorded_write = match raw.and_then(|r| r.on_unrecorded_write.as_deref()) {
            None | Some("pass") => UnrecordedWrite::Pass,
            Some("reject") => UnrecordedWrite::Reject,
            Some(other) => {
                problem(
                    "store.redis.on_unrecorded_write",
                    format!("store.redis.on_unrecorded_write {other:?}: use pass or reject"),
                );
                UnrecordedWrite::Pass
            }
        };
        RedisConfig {
            url,
            timeout,
            consistency,
            on_unrecorded_write,
        }
    })
}

/// `warm`: where the warmer sends its requests.
fn validate_warm(raw: RawWarm, listen: SocketAddr, problem: &mut impl FnMut(&str, String)) -> Warm {
    let warm = Warm {
        host: raw.host.unwrap_or_else(|| listen.to_string()),
        scheme: match raw.scheme.as_deref() {
            None | Some("http") => "http",
            Some("https") => "https",
            Some(other) => {
                problem(
                    "warm.scheme",
                    format!("warm.scheme {other:?} must be http or https"),
                );
                "http"
            }
        },
        paths: raw.paths,
    };
    if crate::host::normalize(&warm.host, "http").is_err() {
        problem(
            "warm.host",
            format!(
                "warm.host {:?} is not a host name (e.g. app.example.com)",
                warm.host
            ),
        );
    }
    if warm.paths.len() > MAX_WARM_PATHS {
        problem(
            "warm.paths",
            format!("warm.paths may list at most {MAX_WARM_PATHS} paths"),
        );
    }
    for (i, p) in warm.paths.iter().enumerate() {
        if !p.starts_with('/') || p.contains(char::is_whitespace) {
            problem(
                &format!("warm.paths[{i}]"),
                format!("warm path {p:?} must start with / and contain no spaces"),
            );
        }
    }
    warm
}

/// `cache.targeted_fields` (RFC 9213), lower-cased.
fn validate_targeted_fields(
    raw: Option<&[String]>,
    problem: &mut impl FnMut(&str, String),
) -> Vec<String> {
    let targeted_fields: Vec<String> = match raw {
        None => crate::storable::DEFAULT_TARGETED
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(list) => list.iter().map(|s| s.to_ascii_lowercase()).collect(),
    };
    for (i, f) in targeted_fields.iter().enumerate() {
        let reserved = ["cache-control", "expires", "pragma"].contains(&f.as_str());
        if http::HeaderName::from_bytes(f.as_bytes()).is_err() || reserved {
            problem(
                &format!("cache.targeted_fields[{i}]"),
                format!("cache.targeted_fields: {f:?} is not a targeted field name (e.g. cdn-cache-control)"),
            );
        }
    }
    targeted_fields
}

/// `trusted_proxies`: the peers whose forwarding headers are believed.
fn validate_trusted_proxies(
    raw: Option<Vec<String>>,
    problem: &mut impl FnMut(&str, String),
) -> TrustedProxies {
    match raw {
        None => TrustedProxies::default(),
        Some(list) => TrustedProxies::new(
            list.iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    forwarding::parse_net(n)
                        .map_err(|m| {
                            problem(
                                &format!("trusted_proxies[{i}]"),
                                format!("trusted_proxies: {m}"),
                            )
                        })
                        .ok()
                })
                .collect(),
        ),
    }
}

/// `timeouts`: each more than zero.
fn validate_timeouts(t: RawTimeouts, problem: &mut impl FnMut(&str, String)) -> Timeouts {
    let timeouts = Timeouts {
        upstream_connect: t.upstream_connect.map_or(DEFAULT_UPSTREAM_CONNECT, |d| d.0),
        upstream_read: t.upstream_read.map_or(DEFAULT_UPSTREAM_READ, |d| d.0),
        client_read: t.client_read.map_or(DEFAULT_CLIENT_TIMEOUT, |d| d.0),
        client_write: t.client_write.map_or(DEFAULT_CLIENT_TIMEOUT, |d| d.0),
    };
    for (name, d) in [
        ("upstream_connect", timeouts.upstream_connect),
        ("upstream_read", timeouts.upstream_read),
        ("client_read", timeouts.client_read),
        ("client_write", timeouts.client_write),
    ] {
        if d.is_zero() {
            problem(
                &format!("timeouts.{name}"),
                format!("timeouts.{name} must be more than 0"),
            );
        }
    }
    timeouts
}

/// Fields that cannot be method-override headers: freshgate sets them on the
/// request to the app or reads them itself (the refetch marker), or the
/// request cannot do without them.
const NOT_AN_OVERRIDE: &[&str] = &[
    "host",
    "authorization",
    crate::prefetch::HEADER,
    "x-forwarded-for",
    "x-forwarded-proto",
    "cookie",
    "connection",
    "content-length",
    "transfer-encoding",
];

fn validate_method_override(
    raw: RawMethodOverride,
    problem: &mut impl FnMut(&str, String),
) -> MethodOverride {
    let defaults = MethodOverride::default();
    let headers = match raw.headers {
        None => defaults.headers,
        Some(hs) => hs
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| match http::HeaderName::from_bytes(h.as_bytes()) {
                // A request to the app is sent without its override headers
                // when it uses the cache: not without its host or framing.
                Ok(name) if NOT_AN_OVERRIDE.contains(&name.as_str()) => {
                    problem(
                        &format!("method_override.headers[{i}]"),
                        format!(
                            "method_override.headers: {h:?} is a field freshgate sets or \
                             the message needs; it cannot carry a method override"
                        ),
                    );
                    None
                }
                Ok(name) => Some(name),
                Err(_) => {
                    problem(
                        &format!("method_override.headers[{i}]"),
                        format!("method_override.headers: {h:?} is not a valid header name"),
                    );
                    None
                }
            })
            .collect(),
    };
    let param = match raw.param {
        None => defaults.param,
        Some(p) if p.is_empty() => None,
        Some(p) => Some(p),
    };
    MethodOverride { headers, param }
}

/// The rules fingerprint of rules hashed to `basis` (`Config::rules_basis`)
/// run with entries that live at most `max_ttl`.
pub fn rules_fingerprint(basis: u64, max_ttl: Duration) -> RulesFingerprint {
    RulesFingerprint(hash_of(&format!("{basis} {}", max_ttl.as_millis())))
}

/// A stable-enough hash (SipHash with fixed keys): the same text gives the
/// same value in every replica running the same build.
pub fn hash_of(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}
