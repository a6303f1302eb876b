//! Configuration: the YAML schema, loading with located errors, and the
//! validated, immutable [`Config`] snapshot the rest of freshgate reads.
//!
//! The pipeline is parse → validate-all → snapshot. Parsing (serde with
//! `deny_unknown_fields`, [`schema`]) catches syntax, unknown keys and wrong
//! types with the parser's own line and column; validation ([`validate`])
//! then checks meaning (addresses, URLs, route patterns) and collects *every*
//! problem, each located at its key path (`locate`), so one run of `freshgate check`
//! shows all of them. The snapshot knows nothing of how it is swapped
//! (`reload`) or how flags are layered (`flags`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::canonical::PathPolicy;
use crate::forwarding::TrustedProxies;
use crate::invalidation::Invalidation;
use crate::methods::MethodOverride;
use crate::rules::{CookieName, RouteTable};
use crate::store::redis::Consistency;
use crate::store::RulesFingerprint;

mod listeners;
mod locate;
mod monitoring;
mod routes;
pub mod schema;
mod validate;

pub(crate) use listeners::same_socket;
pub use monitoring::{default_thresholds, Metric, MonitoringConfig, Severity, Threshold};
pub use schema::{json_schema, parse_duration, parse_size, Dur, FileFlags, RawConfig, Size};
pub use validate::hash_of;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3000";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// 256 MiB: enough for a sidecar's hot set, small beside a Node.js app.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Bodies above this stream through uncached (also bounds one entry in Redis).
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 8 * 1024 * 1024;
/// Redis is on the request path: a slow answer must become a miss quickly.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// Time to keep serving after SIGTERM/SIGINT so a load balancer can take the
/// pod out of rotation, then time for in-flight requests to finish. Together
/// they stay well below Kubernetes' default `terminationGracePeriodSeconds` (30).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// The longest any entry is kept, whatever the app's headers say.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the app may take to finish a write (nginx's default upstream
/// read timeout).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The app is on the same host or pod: a connection takes microseconds, and
/// one that does not come in 2 s is not coming.
pub const DEFAULT_UPSTREAM_CONNECT: Duration = Duration::from_secs(2);
/// A read the app has not answered in 30 s is answered 504 (nginx waits 60 s;
/// an API read that slow is a fault, and a client waiting on it holds a
/// connection).
pub const DEFAULT_UPSTREAM_READ: Duration = Duration::from_secs(30);
/// Slow clients (slowloris on bodies, slow readers) hold a connection at
/// most this long per stalled read or write.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The validated configuration. Immutable: a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for error messages and the admin API.
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub admin_listen: SocketAddr,
    pub admin_auth: AdminAuth,
    pub memory_max_bytes: u64,
    pub redis: Option<RedisConfig>,
    pub max_object_bytes: u64,
    pub lock_timeout: Duration,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub routes: RouteTable,
    pub invalidation: Invalidation,
    /// `cache.max_ttl`: no entry lives longer, whatever the app says.
    pub max_ttl: Duration,
    /// Longest life of a stored 404/410 where a route sets none.
    pub negative_ttl: Duration,
    /// Lower-case names, in precedence order (see `storable`).
    pub targeted_fields: Vec<String>,
    /// `cache.ignore_cookies`: for paths no route rule covers (rules carry
    /// their own copy, or their own list).
    pub ignore_cookies: Vec<CookieName>,
    pub heuristic_freshness: bool,
    pub request_cache_control: bool,
    /// `cache.share_authorized` (see `storable::decide`).
    pub share_authorized: bool,
    /// `cache.namespace` or `FRESHGATE_NAMESPACE`: part of every key
    /// (empty: none). Not part of `rules_fingerprint`: replicas of two
    /// builds share invalidations during a rolling update, not entries.
    pub namespace: String,
    /// The `flags:` section (one layer of [`crate::flags::Flags`]).
    pub flags: FileFlags,
    /// Hash of what decides tags and write plans (invalidation rules, path
    /// folding, the `max_ttl` the store runs with, method override,
    /// freshgate's version): entries
    /// are only served under the rules that tagged them, so a rules edit can
    /// never leave an entry without a tag that the new rules would invalidate.
    pub rules_fingerprint: RulesFingerprint,
    /// The same hash without `max_ttl` (see [`Config::beside`]).
    rules_basis: u64,
    /// Hash of the whole file text, to tell versions apart in the admin API.
    pub text_hash: u64,
    pub monitoring: MonitoringConfig,
    /// Invalidation rule name -> the route rules its purge targets fall
    /// under (for "how often is this route invalidated" in the monitoring).
    pub purged_routes: HashMap<String, Vec<String>>,
    pub warm: Warm,
    /// How paths are folded for keys, rules and tags (see `canonical`).
    pub paths: PathPolicy,
    pub method_override: MethodOverride,
    /// See [`DEFAULT_WRITE_TIMEOUT`] and `writes.timeout`.
    pub write_timeout: Duration,
    pub trusted_proxies: TrustedProxies,
    pub timeouts: Timeouts,
}

/// The `timeouts:` section, defaults applied (see the `DEFAULT_*` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub upstream_connect: Duration,
    pub upstream_read: Duration,
    pub client_read: Duration,
    pub client_write: Duration,
}

/// Paths to fetch through the cache once freshgate has started, so that the
/// first readers after a deploy hit (see `crate::prefetch`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Warm {
    /// The `Host` the warming requests carry: it is part of the cache key, so
    /// it must be the one clients send.
    pub host: String,
    /// `http` or `https`: the scheme clients use (also part of the key):
    /// `https` behind a TLS load balancer.
    pub scheme: &'static str,
    pub paths: Vec<String>,
}

/// Warming is a start-up burst: bounded so a config cannot make it a flood.
const MAX_WARM_PATHS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` to connect to.
    pub addr: String,
    /// The `Host` the app expects when the client sent none.
    pub host: String,
}

/// Who may use the admin listener. Without tokens (loopback only), anyone
/// who can connect; with them, `Authorization: Bearer <token>` except on the
/// `open` paths. The read token allows GET only.
#[derive(Clone, Default)]
pub struct AdminAuth {
    pub token: Option<String>,
    pub read_token: Option<String>,
    pub open: Vec<String>,
}

impl fmt::Debug for AdminAuth {
    // Never print the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("read_token", &self.read_token.as_ref().map(|_| "<set>"))
            .field("open", &self.open)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub url: String,
    pub timeout: Duration,
    pub consistency: Consistency,
    pub on_unrecorded_write: UnrecordedWrite,
}

/// What to do with a write whose fence cannot be recorded in Redis (this
/// replica cannot reach it) before it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnrecordedWrite {
    /// Forward it: the app stays writable through a Redis outage. This
    /// replica bypasses the cache until the write is recorded; another
    /// replica that still reaches Redis may serve what the write changed
    /// until then (docs/architecture.md, "partitions").
    #[default]
    Pass,
    /// Answer 503 without forwarding it: no replica can serve stale data,
    /// and writes fail while this replica cannot reach Redis.
    Reject,
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub redis: Option<String>,
    pub redis_timeout: Option<Duration>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub admin_read_token: Option<String>,
    pub namespace: Option<String>,
}

/// One problem in a config file, located where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// A config that could not be loaded: the file and every problem found in it.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (p.line, p.column) {
                (Some(l), Some(c)) => write!(f, "{}:{}:{}: {}", self.file, l, c, p.message)?,
                (Some(l), None) => write!(f, "{}:{}: {}", self.file, l, p.message)?,
                _ => write!(f, "{}: {}", self.file, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Whether a config file's text is an empty document: nothing, comments,
/// markers (what a truncated write can leave). `{}` is not: it asks for
/// the defaults.
pub fn has_no_settings(text: &str) -> bool {
    is_empty_document(serde_yaml::from_str(text).ok().as_ref())
}

/// The same, of text already parsed (`None`: a syntax error).
fn is_empty_document(document: Option<&serde_yaml::Value>) -> bool {
    document.is_some_and(serde_yaml::Value::is_null)
}

/// The key paths (`store.redis`, `routes[3]`) written with no value: what
/// a file cut short after a key leaves (`store:\n  redis:\n` would mean
/// "no Redis"). No setting of freshgate's means anything by `null`.
fn keys_without_value(value: &serde_yaml::Value, path: &str, found: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (key, value) in map {
                let key = match key {
                    serde_yaml::Value::String(k) => k.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let path = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                keys_without_value(value, &path, found);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                keys_without_value(item, &format!("{path}[{i}]"), found);
            }
        }
        serde_yaml::Value::Tagged(tagged) => keys_without_value(&tagged.value, path, found),
        serde_yaml::Value::Null if !path.is_empty() => found.push(path.to_string()),
        _ => {}
    }
}

impl Config {
    /// Read and validate a config file, then apply command-line overrides.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Config::from_str("", None, overrides);
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            problems: vec![Problem {
                line: None,
                column: None,
                message: format!("cannot read file: {e}"),
            }],
        })?;
        Config::from_str(&text, Some(path), overrides)
    }

    /// Parse and validate YAML text. Without a file, an empty text gives the
    /// built-in defaults; a file that is an empty document (nothing but
    /// comments, perhaps), or that writes a key with no value, is refused.
    pub fn from_str(
        text: &str,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".to_string());
        // A syntax error is reported by the typed parse below, located.
        let document = serde_yaml::from_str::<serde_yaml::Value>(text).ok();
        if path.is_some() && is_empty_document(document.as_ref()) {
            // A file truncated by a deploy, or written in place while it
            // was read, can be left empty or with only its leading
            // comments. The defaults it would stand for are the embedded
            // store and no rules: a replica of a Redis fleet would serve,
            // and invalidate, apart from the others, and they would keep
            // what its writes changed. A reload keeps the running config
            // (`reload.rs`).
            return Err(ConfigError {
                file,
                problems: vec![Problem {
                    line: None,
                    column: None,
                    message: "the file has no settings (truncated?); write `{}` to run on the \
                              built-in defaults"
                        .to_string(),
                }],
            });
        }
        let mut empty = Vec::new();
        if let Some(document) = &document {
            keys_without_value(document, "", &mut empty);
        }
        if !empty.is_empty() {
            let spans = locate::Spans::of(text);
            let problems = empty
                .iter()
                .map(|key| {
                    let (line, column) = spans.find(key);
                    Problem {
                        line,
                        column,
                        message: format!(
                            "{key} has no value (a file cut short?): give one or remove the key"
                        ),
                    }
                })
                .collect();
            return Err(ConfigError { file, problems });
        }
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let message = locate::strip_location(&e.to_string());
                let (line, column) = locate::refine_location(
                    text,
                    e.location().map(|l| (l.line(), l.column())),
                    &message,
                );
                ConfigError {
                    file: file.clone(),
                    problems: vec![Problem {
                        line,
                        column,
                        message,
                    }],
                }
            })?
        };
        validate::validate(raw, text, path, overrides)
            .map_err(|problems| ConfigError { file, problems })
    }

    /// This config, read by a reload, as it runs beside `running`: with
    /// `running`'s `cache.max_ttl`, which is read at start only (it sizes
    /// how long the store keeps entries and remembers invalidations, see
    /// `store::clock`), and the rules fingerprint that goes with it. A
    /// fingerprint of the file's value would tell the fleet that this
    /// replica runs the same rules as one started with that value, while
    /// its store still keeps entries, or forgets invalidations, by the old
    /// one: a replica that forgets a tag's invalidation before the other's
    /// entry expires would make that entry valid again.
    pub fn beside(mut self, running: &Config) -> Config {
        self.max_ttl = running.max_ttl;
        self.rules_fingerprint = validate::rules_fingerprint(self.rules_basis, self.max_ttl);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file() {
        let c = Config::from_str("", None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.upstream.addr, "127.0.0.1:3000");
        assert!(c.redis.is_none());
    }

    /// Found by attack: a replica started from a truncated file ran on the
    /// defaults (the embedded store, no rules) beside a Redis fleet, so its
    /// writes invalidated nothing the other replicas served.
    #[test]
    fn a_file_without_settings_is_refused_not_read_as_the_defaults() {
        let path = Some(Path::new("f.yaml"));
        let ov = Overrides::default();
        for text in [
            "",
            "\n  \n",
            "# freshgate\n# store:\n---\n",
            "--- # freshgate\n",
            "%YAML 1.2\n---\n",
            "\u{feff}",
        ] {
            let e = Config::from_str(text, path, &ov).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("f.yaml: the file has no settings"),
                "{text:?}: {e}"
            );
        }
        // Cut short after a key: `redis:` would have meant "no Redis".
        let e =
            Config::from_str("listen: 127.0.0.1:1234\nstore:\n  redis:\n", path, &ov).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.yaml:3:3: store.redis has no value (a file cut short?): give one or remove the key"
        );
        let e = Config::from_str(
            "store:\nroutes:\n  - name: a\n    match: /a\n  -\n",
            path,
            &ov,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("f.yaml:1:1: store has no value"), "{e}");
        assert!(e.contains("routes[1] has no value"), "{e}");
        let defaults = Config::from_str("{}\n", path, &ov).unwrap();
        assert!(defaults.redis.is_none());
        let c = Config::from_str("# a comment\nlisten: 127.0.0.1:1234\n", path, &ov).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1234");
    }

    #[test]
    fn syntax_error_is_located() {
        let text = "listen: 127.0.0.1:8080\nroutes:\n  - name: a\n    match: [\n";
        let e =
            Config::from_str(text, Some(Path::new("f.yaml")), &Overrides::default()).unwrap_err();
        assert_eq!(e.file, "f.yaml");
        assert!(e.problems[0].line.is_some(), "{e}");
    }

    #[test]
    fn unknown_field_names_the_field_and_line() {
        let text = "listen: 127.0.0.1:8080\nlistne: x\n";
        let e = Config::from_str(text, None, &Overrides::default()).unwrap_err();
        assert_eq!(e.problems[0].line, Some(2));
        assert!(e.problems[0].message.contains("listne"), "{e}");
    }

    #[test]
    fn warm_paths_are_checked_and_the_host_defaults_to_the_listen_address() {
        let ok = "listen: 127.0.0.1:8080\nwarm:\n  paths: [/a, /b?page=2]\n";
        let c = Config::from_str(ok, None, &Overrides::default()).unwrap();
        assert_eq!(c.warm.host, "127.0.0.1:8080");
        assert_eq!(c.warm.paths, vec!["/a", "/b?page=2"]);
        let bad = "warm:\n  host: app.example.com\n  paths:\n    - /ok\n    - nope\n";
        let e = Config::from_str(bad, None, &Overrides::default()).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].line, Some(5), "{e}");
        assert!(e.problems[0].message.contains("\"nope\""), "{e}");
    }

    #[test]
    fn all_semantic_errors_are_collected() {
        let text =
            "listen: nonsense\nupstream: ftp://x\nroutes:\n  - name: a\n    match: /a/**/b\n";
        let e = Config::from_str(text, None, &Overrides::default()).unwrap_err();
        assert_eq!(e.problems.len(), 3, "{e}");
        assert_eq!(e.problems[0].line, Some(1));
        assert_eq!(e.problems[1].line, Some(2));
        assert_eq!(e.problems[2].line, Some(5));
    }

    #[test]
    fn a_problem_is_located_at_the_value_not_at_a_comment_naming_it() {
        // The comment names the same bad value first; the error points at
        // the key's line. A `#` inside a value is not a comment.
        let text = "# was: upstream: ftp://x\nroutes:\n  - name: a # the first\n    match: /a/**/b\nupstream: ftp://x\n";
        let e = Config::from_str(text, None, &Overrides::default()).unwrap_err();
        let lines: Vec<_> = e.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![Some(5), Some(4)], "{e}");
        use locate::without_comment as code;
        assert_eq!(code("upstream: x # old: y"), "upstream: x ");
        assert_eq!(code("# all of it"), "");
        assert_eq!(code("purge: [/a#b]"), "purge: [/a#b]");
        assert_eq!(code(r#"on: "x # y" # z"#), r#"on: "x # y" "#);
    }

    #[test]
    fn a_problem_is_located_at_its_key_not_at_the_first_text_like_it() {
        // `timeout` is written first under store.redis, and route b's
        // pattern is also route a's: each error points at its own key.
        let text = "store:\n  redis:\n    url: redis://127.0.0.1:6379\n    timeout: 50ms\n\
                    writes:\n  timeout: 0s\n\
                    routes:\n  - name: a\n    match: /a/:id\n  - name: a\n    match: /a/:id\n\
                    warm:\n  paths: [/ok, nope]\n";
        let e = Config::from_str(text, None, &Overrides::default()).unwrap_err();
        let at: Vec<_> = e
            .problems
            .iter()
            .map(|p| (p.line, p.column, p.message.split(' ').next().unwrap()))
            .collect();
        assert_eq!(
            at,
            vec![
                (Some(6), Some(12), "writes.timeout"),
                (Some(10), Some(11), "route"),
                (Some(11), Some(12), "invalid"),
                (Some(13), Some(16), "warm"),
            ],
            "{e}"
        );
        // A missing key: at the mapping that lacks it.
        let e = Config::from_str(
            "store:\n  redis:\n    timeout: 5s\n",
            None,
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(e.problems[0].line, Some(2), "{e}");
    }

    #[test]
    fn a_value_from_the_command_line_is_not_located_in_the_file() {
        let ov = Overrides {
            upstream: Some("ftp://x".into()),
            ..Default::default()
        };
        // The file says the same wrong thing: it is not what is in force.
        let e = Config::from_str("upstream: ftp://x\n", None, &ov).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!((e.problems[0].line, e.problems[0].column), (None, None));
    }

    #[test]
    fn every_problem_of_an_invalidation_rule_is_reported() {
        let text = "invalidate:\n  - on: PATCH /a/:id/**/b\n    purge: [/c/**/d]\n";
        let e = Config::from_str(text, None, &Overrides::default()).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert_eq!(e.problems[0].line, Some(2), "{e}");
        assert_eq!(e.problems[1].line, Some(3), "{e}");
    }

    #[test]
    fn a_reload_keeps_the_running_max_ttl_and_its_fingerprint() {
        let load = |text: &str| Config::from_str(text, None, &Overrides::default()).unwrap();
        let rules = "invalidate:\n  - on: PATCH /a/:id\n    purge: [/a/:id]\n";
        let short = load(&format!("cache:\n  max_ttl: 1h\n{rules}"));
        let long = load(&format!("cache:\n  max_ttl: 2h\n{rules}"));
        assert_ne!(
            short.rules_fingerprint, long.rules_fingerprint,
            "replicas started with two max_ttl run different rules"
        );
        let reloaded = long.beside(&short);
        assert_eq!(reloaded.max_ttl, Duration::from_secs(3600));
        assert_eq!(reloaded.rules_fingerprint, short.rules_fingerprint);
        // Other rules still change it.
        let other =
            load("cache:\n  max_ttl: 2h\ninvalidate:\n  - on: PATCH /b/:id\n    purge: [/b/:id]\n");
        assert_ne!(
            other.beside(&short).rules_fingerprint,
            short.rules_fingerprint
        );
        // The same value spelled otherwise (or left to its default) is the same.
        let default = load(rules);
        let spelled = load(&format!("cache:\n  max_ttl: 1d\n{rules}"));
        assert_eq!(default.rules_fingerprint, spelled.rules_fingerprint);
    }

    #[test]
    fn a_namespace_is_visible_ascii_and_the_environment_wins() {
        let c = Config::from_str(
            "cache:\n  namespace: build-41\n",
            None,
            &Overrides::default(),
        );
        assert_eq!(c.unwrap().namespace, "build-41");
        let ov = Overrides {
            namespace: Some("build-42".into()),
            ..Default::default()
        };
        let c = Config::from_str("cache:\n  namespace: build-41\n", None, &ov).unwrap();
        assert_eq!(c.namespace, "build-42");
        let d = Config::from_str("", None, &Overrides::default()).unwrap();
        assert_eq!(d.namespace, "");
        assert_eq!(
            c.rules_fingerprint, d.rules_fingerprint,
            "two builds side by side are not a rules change"
        );
        for bad in ["\"a b\"", "\"a\\nb\"", &"x".repeat(129)] {
            let e = Config::from_str(&format!("cache:\n  namespace: {bad}\n"), None, &ov);
            let ov_bad = Overrides {
                namespace: Some(bad.trim_matches('"').replace("\\n", "\n")),
                ..Default::default()
            };
            assert!(e.is_ok(), "the override wins over the file");
            let e = Config::from_str("", None, &ov_bad).unwrap_err();
            assert!(e.problems[0].message.contains("cache.namespace"), "{e}");
        }
    }

    #[test]
    fn the_committed_schema_is_the_generated_one() {
        let committed = include_str!("../../docs/freshgate.schema.json");
        assert!(
            committed == json_schema(),
            "docs/freshgate.schema.json is out of date: \
             cargo run -- schema > docs/freshgate.schema.json"
        );
    }

    #[test]
    fn overrides_win() {
        let ov = Overrides {
            listen: Some("127.0.0.1:9999".into()),
            redis: Some("redis://127.0.0.1:1/0".into()),
            ..Default::default()
        };
        let c = Config::from_str("listen: 127.0.0.1:1234\n", None, &ov).unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert!(c.redis.is_some());
    }

    #[test]
    fn paths_writes_and_method_override_sections() {
        let text = "paths:\n  ignore_case: false\nmethod_override:\n  headers: [X-Tunnel-Method]\n  param: \"\"\nwrites:\n  timeout: 5s\n";
        let c = Config::from_str(text, None, &Overrides::default()).unwrap();
        assert!(!c.paths.ignore_case && c.paths.merge_slashes);
        assert_eq!(c.method_override.headers, vec!["x-tunnel-method"]);
        assert_eq!(c.method_override.param, None);
        assert_eq!(c.write_timeout, Duration::from_secs(5));
        let d = Config::from_str("", None, &Overrides::default()).unwrap();
        assert_ne!(
            c.rules_fingerprint, d.rules_fingerprint,
            "folding decides tags: entries of the other policy are not served"
        );
        for field in [
            "Host",
            "x-forwarded-for",
            "content-length",
            "cookie",
            "authorization",
            "x-freshgate-prefetch",
        ] {
            let text = format!("method_override:\n  headers: [x-http-method, {field}]\n");
            let e = Config::from_str(&text, None, &Overrides::default()).unwrap_err();
            assert!(
                e.problems[0]
                    .message
                    .contains("cannot carry a method override"),
                "{e}"
            );
            assert_eq!(e.problems[0].line, Some(2), "{e}");
        }
        let bad = "store:\n  redis:\n    url: redis://x:1/0\n    on_unrecorded_write: maybe\n";
        let e = Config::from_str(bad, None, &Overrides::default()).unwrap_err();
        assert_eq!(e.problems[0].line, Some(4), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("8 parsecs").is_err());
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for huge in ["99999999999999999999s", "10000000000000000000s", "36501d"] {
            assert!(
                parse_duration(huge).unwrap_err().contains("too large"),
                "{huge}"
            );
        }
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn an_object_size_an_entry_cannot_hold_is_refused() {
        let ok = Config::from_str(
            "cache:\n  max_object_size: 2GiB\n",
            None,
            &Overrides::default(),
        );
        assert_eq!(ok.unwrap().max_object_bytes, 2 << 30);
        let e = Config::from_str(
            "cache:\n  max_object_size: 3GiB\n",
            None,
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.problems[0].message.contains("at most 2GiB"), "{e}");
        assert_eq!(e.problems[0].line, Some(2), "{e}");
    }
}
