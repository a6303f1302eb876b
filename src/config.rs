//! Configuration: the YAML schema, loading with located errors, and the
//! validated, immutable [`Config`] snapshot the rest of freshgate reads.
//!
//! The pipeline is parse → validate-all → snapshot. Parsing (serde with
//! `deny_unknown_fields`) catches syntax, unknown keys and wrong types with the
//! parser's own line and column; validation then checks meaning (addresses,
//! URLs, route patterns) and collects *every* problem, each located by finding
//! the offending value in the file text, so one run of `freshgate check` shows
//! all of them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::canonical::{MethodOverride, PathPolicy};
use crate::flags::FileFlags;
use crate::forwarding::{self, TrustedProxies};
use crate::invalidation::{Invalidation, RawRule};
use crate::monitor::alerts::{default_thresholds, Metric, MonitoringConfig, Severity, Threshold};
use crate::rules::{sample_path, CacheOverrides, CookieName, RouteTable, Rule};
use crate::store::redis::Consistency;

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

// === raw schema: mirrors the YAML ===

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub invalidate: Vec<RawInvalidate>,
    #[serde(default)]
    pub flags: FileFlags,
    #[serde(default)]
    pub monitoring: RawMonitoring,
    #[serde(default)]
    pub warm: RawWarm,
    #[serde(default)]
    pub paths: RawPaths,
    #[serde(default)]
    pub method_override: RawMethodOverride,
    #[serde(default)]
    pub writes: RawWrites,
    /// Peers whose `X-Forwarded-For`/`-Proto` are believed (addresses or
    /// networks); default: loopback and private networks.
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
}

/// `timeouts:` — how long freshgate waits on each side.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Connecting to the app.
    pub upstream_connect: Option<Dur>,
    /// The app's answer to a read (between two reads of its response);
    /// writes wait `writes.timeout`.
    pub upstream_read: Option<Dur>,
    /// The client, between two reads of its request body.
    pub client_read: Option<Dur>,
    /// The client, to take each write of the response.
    pub client_write: Option<Dur>,
}

/// `writes:` — how writes (anything but GET/HEAD/OPTIONS/TRACE) are handled.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWrites {
    /// How long the app may take to answer a write; also how long a write
    /// whose answer freshgate never saw keeps its targets uncacheable.
    pub timeout: Option<Dur>,
}

/// `paths:` — how the app's router compares paths (see `canonical`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    pub merge_slashes: Option<bool>,
    pub ignore_case: Option<bool>,
    pub ignore_trailing_slash: Option<bool>,
}

/// `method_override:` — where the app reads a method override.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMethodOverride {
    /// Header names; `[]` for none.
    pub headers: Option<Vec<String>>,
    /// Query (and form body) parameter; `""` for none.
    pub param: Option<String>,
}

/// `warm:` — paths fetched through the cache once at start.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawWarm {
    pub host: Option<String>,
    /// `http` (default) or `https`.
    #[schemars(extend("enum" = ["http", "https"]))]
    pub scheme: Option<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

/// `monitoring:` — alert thresholds and what the admin API keeps.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMonitoring {
    pub window: Option<Dur>,
    pub evaluate_every: Option<Dur>,
    pub min_requests: Option<u64>,
    pub operations: Option<usize>,
    #[serde(default)]
    pub alerts: RawAlerts,
}

/// Each metric given replaces that metric's default levels.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    /// Fractions, alert when below.
    pub hit_rate: Option<RawLevels<f64>>,
    /// Alert when above.
    pub p95: Option<RawLevels<Dur>>,
    pub average: Option<RawLevels<Dur>>,
    /// Fractions, alert when above.
    pub error_rate: Option<RawLevels<f64>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLevels<T> {
    pub critical: Option<T>,
    pub error: Option<T>,
    pub warning: Option<T>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInvalidate {
    pub name: Option<String>,
    /// `[PATCH, DELETE] /studio/api/scenes/:id`, `POST /a`, or just `/a` (any write).
    pub on: String,
    pub purge: Vec<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    /// Bearer token for every admin endpoint (prefer `FRESHGATE_ADMIN_TOKEN`).
    pub token: Option<String>,
    /// Bearer token for read-only (GET) endpoints only.
    pub read_token: Option<String>,
    /// Paths that need no token, e.g. `[/healthz, /metrics]`.
    pub open: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    #[serde(default)]
    pub memory: RawMemory,
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    /// Bytes, or a size such as `256MiB`.
    pub max_size: Option<Size>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// Required here unless given with `--redis` / `FRESHGATE_REDIS`.
    pub url: Option<String>,
    pub timeout: Option<Dur>,
    /// `strict` (default) or `bounded`.
    #[schemars(extend("enum" = ["strict", "bounded"]))]
    pub consistency: Option<String>,
    /// `pass` (default) or `reject`: a write whose fence cannot be recorded.
    #[schemars(extend("enum" = ["pass", "reject"]))]
    pub on_unrecorded_write: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub max_object_size: Option<Size>,
    /// How long concurrent misses on one key wait for the first fetch.
    pub lock_timeout: Option<Dur>,
    /// No entry is kept longer than this, whatever the app says.
    pub max_ttl: Option<Dur>,
    /// Longest life of a stored 404/410 where a route sets none.
    pub negative_ttl: Option<Dur>,
    /// Targeted cache-control fields obeyed, first present wins (RFC 9213).
    pub targeted_fields: Option<Vec<String>>,
    /// RFC 9111 §4.2.2 heuristic freshness from Last-Modified (off).
    pub heuristic_freshness: Option<bool>,
    /// Honour a client's own Cache-Control (no-cache, max-age, min-fresh)
    /// by revalidating (off).
    pub request_cache_control: Option<bool>,
    /// Cookies that never change any answer (routes may say otherwise).
    pub ignore_cookies: Option<Vec<String>>,
    /// Share answers to requests with `Authorization` when the app marks
    /// them `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5; off).
    pub share_authorized: Option<bool>,
    /// A key space of its own, e.g. the app's build id: a deploy that sets a
    /// new one starts on a clean cache without a purge.
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    pub grace_period: Option<Dur>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub pattern: String,
    pub ttl: Option<Dur>,
    /// Shorthand for `override: [no-store]`.
    #[serde(default)]
    pub override_no_store: bool,
    /// Which of the app's directives `ttl` beats: `no-store`, `no-cache`,
    /// `max-age`.
    #[serde(rename = "override", default)]
    #[schemars(extend("items" = { "enum": ["no-store", "no-cache", "max-age"] }))]
    pub overrides: Vec<String>,
    /// Statuses that may be stored (replaces the default set).
    pub statuses: Option<Vec<u16>>,
    /// Longest life of a stored 404/410 (else `cache.negative_ttl`).
    pub negative_ttl: Option<Dur>,
    /// Cookies that never change this route's answers (names or globs);
    /// replaces `cache.ignore_cookies` for the route.
    pub ignore_cookies: Option<Vec<String>>,
    #[serde(default)]
    pub key: RawKey,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub cookies: Vec<String>,
}

/// The JSON Schema of the YAML (`freshgate schema`, committed as
/// `docs/freshgate.schema.json`), derived from the types the loader reads.
/// It checks shape (keys, types, units); what needs the whole file
/// (patterns, addresses, cross-references) only `freshgate check` sees.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(RawConfig);
    schema.insert("title".into(), "freshgate configuration".into());
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is JSON");
    text.push('\n');
    text
}

/// A duration written as `90s`, `250ms`, `5m`, `1h`.
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": r"^\s*[0-9]+(\.[0-9]*)?\s*(ms|s|m|h|d)\s*$",
            "description": "A duration: 250ms, 30s, 5m, 1h, 1d (at most 100 years)",
        })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// A byte size written as a number or `64KiB`, `8MiB`, `1GiB` (also kB/MB/GB).
#[derive(Debug, Clone, Copy)]
pub struct Size(pub u64);

impl JsonSchema for Size {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Size".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                {
                    "type": "string",
                    "pattern": r"^\s*[0-9]+\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)?\s*$",
                },
            ],
            "description": "Bytes, or a size such as 64KiB, 8MiB, 1GiB (also kB, MB, GB)",
        })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(Size(n)),
            Either::S(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 30s, 5m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m, h or d"
            ))
        }
    };
    // 1e20 s, or more digits than f64 holds: an error, not a panic (nor
    // an overflow later, when it is added to a point in time).
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("duration {s:?} is too large (at most 100 years)")),
    }
}

/// The longest duration a config may say: far beyond any use, far below
/// what `SystemTime` arithmetic can hold.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 65536, 64KiB, 8MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "invalid size {s:?}: unit must be B, KiB, MiB, GiB, kB, MB or GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

// === validated snapshot ===

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
    pub max_lifetime: Duration,
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
    /// Hash of the invalidation rules: entries are only served
    /// under the rules that tagged them, so a rules edit can never leave an
    /// entry without a tag that the new rules would invalidate.
    pub rules_fingerprint: u64,
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

    /// Parse and validate YAML text. An empty text gives the built-in defaults.
    pub fn from_str(
        text: &str,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let file = path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<defaults>".to_string());
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let message = strip_location(&e.to_string());
                let (line, column) =
                    refine_location(text, e.location().map(|l| (l.line(), l.column())), &message);
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
        validate(raw, text, path, overrides).map_err(|problems| ConfigError { file, problems })
    }
}

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

/// yaml_serde appends " at line L column C"; we print the location up front.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The parser locates a bad value inside a list item at the item's start;
/// when the message quotes the value, point at the value itself.
fn refine_location(
    text: &str,
    parser: Option<(usize, usize)>,
    message: &str,
) -> (Option<usize>, Option<usize>) {
    let quoted = message
        .split_once('"')
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(q, _)| q);
    if let (Some((line, _)), Some(q)) = (parser, quoted) {
        for (i, l) in text.lines().enumerate().skip(line.saturating_sub(1)) {
            if let Some(col) = l.find(q) {
                return (Some(i + 1), Some(col + 1));
            }
        }
    }
    match parser {
        Some((l, c)) => (Some(l), Some(c)),
        None => (None, None),
    }
}

/// Find where `needle` is written in the file, to locate a semantic error.
fn locate(text: &str, needle: &str) -> (Option<usize>, Option<usize>) {
    if needle.is_empty() {
        return (None, None);
    }
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(needle) {
            return (Some(i + 1), Some(col + 1));
        }
    }
    (None, None)
}

fn validate_monitoring(
    raw: RawMonitoring,
    problem: &mut impl FnMut(&str, String),
) -> MonitoringConfig {
    let d = MonitoringConfig::default();
    let mut m = MonitoringConfig {
        window: raw.window.map_or(d.window, |x| x.0),
        evaluate_every: raw.evaluate_every.map_or(d.evaluate_every, |x| x.0),
        min_requests: raw.min_requests.unwrap_or(d.min_requests),
        operations: raw.operations.unwrap_or(d.operations),
        thresholds: Vec::new(),
    };
    if m.window < Duration::from_secs(1) {
        problem("window", "monitoring.window must be at least 1s".into());
    }
    if m.evaluate_every < Duration::from_millis(100) {
        problem(
            "evaluate_every",
            "monitoring.evaluate_every must be at least 100ms".into(),
        );
    }
    if m.operations > 100_000 {
        problem(
            "operations",
            "monitoring.operations must be at most 100000 (it is kept in memory)".into(),
        );
    }
    let a = raw.alerts;
    let fraction = |l: RawLevels<f64>| (l.critical, l.error, l.warning);
    let seconds = |l: RawLevels<Dur>| {
        (
            l.critical.map(|d| d.0.as_secs_f64()),
            l.error.map(|d| d.0.as_secs_f64()),
            l.warning.map(|d| d.0.as_secs_f64()),
        )
    };
    let given = [
        (Metric::HitRate, a.hit_rate.map(fraction)),
        (Metric::P95, a.p95.map(seconds)),
        (Metric::Average, a.average.map(seconds)),
        (Metric::ErrorRate, a.error_rate.map(fraction)),
    ];
    for (metric, levels) in given {
        let Some((critical, error, warning)) = levels else {
            m.thresholds.extend(
                default_thresholds()
                    .into_iter()
                    .filter(|t| t.metric == metric),
            );
            continue;
        };
        for (severity, value) in [
            (Severity::Critical, critical),
            (Severity::Error, error),
            (Severity::Warning, warning),
        ] {
            let Some(value) = value else { continue };
            let is_rate = matches!(metric, Metric::HitRate | Metric::ErrorRate);
            if is_rate && !(0.0..=1.0).contains(&value) {
                problem(
                    metric.name(),
                    format!(
                        "monitoring.alerts.{}: {value} is not a fraction between 0 and 1 (0.7 means 70%)",
                        metric.name()
                    ),
                );
            }
            m.thresholds.push(Threshold {
                metric,
                severity,
                value,
            });
        }
    }
    m
}

fn validate(
    raw: RawConfig,
    text: &str,
    path: Option<&Path>,
    ov: &Overrides,
) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut problem = |needle: &str, message: String| {
        let (line, column) = locate(text, needle);
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
        problem(&namespace, m);
    }
    let listen_s = ov
        .listen
        .clone()
        .or(raw.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen = parse_addr(&listen_s, "listen").unwrap_or_else(|m| {
        problem(&listen_s, m);
        fallback_addr()
    });
    let admin_s = ov
        .admin_listen
        .clone()
        .or(raw.admin.listen)
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
    let admin_listen = parse_addr(&admin_s, "admin.listen").unwrap_or_else(|m| {
        problem(&admin_s, m);
        fallback_addr()
    });
    let admin_auth = AdminAuth {
        token: ov.admin_token.clone().or(raw.admin.token.clone()),
        read_token: ov.admin_read_token.clone().or(raw.admin.read_token.clone()),
        open: raw
            .admin
            .open
            .clone()
            .unwrap_or_else(|| vec!["/healthz".to_string()]),
    };
    for (name, t) in [
        ("admin.token", &admin_auth.token),
        ("admin.read_token", &admin_auth.read_token),
    ] {
        if t.as_ref().is_some_and(|t| t.len() < 16) {
            problem(
                name.trim_start_matches("admin."),
                format!("{name} is shorter than 16 characters: use a long random value"),
            );
        }
    }
    if !admin_listen.ip().is_loopback() && admin_auth.token.is_none() {
        problem(
            &admin_s,
            format!(
                "admin.listen {admin_listen} is reachable from other hosts: set admin.token \
                 (or FRESHGATE_ADMIN_TOKEN), or listen on 127.0.0.1"
            ),
        );
    }
    let upstream_s = ov
        .upstream
        .clone()
        .or(raw.upstream)
        .unwrap_or_else(|| DEFAULT_UPSTREAM.into());
    let upstream = parse_upstream(&upstream_s).unwrap_or_else(|m| {
        problem(&upstream_s, m);
        Upstream {
            addr: String::new(),
            host: String::new(),
        }
    });

    let redis_url = ov
        .redis
        .clone()
        .or(raw.store.redis.as_ref().and_then(|r| r.url.clone()));
    if redis_url.is_none() && raw.store.redis.is_some() {
        problem(
            "redis",
            "store.redis needs a url (or --redis / FRESHGATE_REDIS)".into(),
        );
    }
    let redis = redis_url.map(|url| {
        if !(url.starts_with("redis://") || url.starts_with("unix://")) {
            problem(
                &url,
                format!("store.redis.url {url:?} must start with redis:// or unix://"),
            );
        }
        let timeout = ov
            .redis_timeout
            .or(raw
                .store
                .redis
                .as_ref()
                .and_then(|r| r.timeout)
                .map(|d| d.0))
            .unwrap_or(DEFAULT_REDIS_TIMEOUT);
        if timeout.is_zero() {
            problem("timeout", "store.redis.timeout must be more than 0".into());
        }
        let consistency = match raw
            .store
            .redis
            .as_ref()
            .and_then(|r| r.consistency.as_deref())
        {
            None => Consistency::Strict,
            Some(c) => Consistency::parse(c).unwrap_or_else(|| {
                problem(
                    c,
                    format!("store.redis.consistency {c:?}: use strict or bounded"),
                );
                Consistency::Strict
            }),
        };
        let on_unrecorded_write = match raw
            .store
            .redis
            .as_ref()
            .and_then(|r| r.on_unrecorded_write.as_deref())
        {
            None | Some("pass") => UnrecordedWrite::Pass,
            Some("reject") => UnrecordedWrite::Reject,
            Some(other) => {
                problem(
                    other,
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
    });
    let write_timeout = raw.writes.timeout.map_or(DEFAULT_WRITE_TIMEOUT, |d| d.0);
    if write_timeout.is_zero() {
        problem("timeout", "writes.timeout must be more than 0".into());
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
    // the same write differently.
    let rules_fingerprint = hash_of(&format!(
        "{:?} {:?} {:?} {:?}",
        raw.invalidate, paths, raw.cache.max_ttl, method_override
    ));
    let cookie_names = |list: &[String], problem: &mut dyn FnMut(&str, String)| {
        list.iter()
            .filter_map(|c| {
                CookieName::parse(c)
                    .map_err(|m| problem(c, format!("ignore_cookies: {m}")))
                    .ok()
            })
            .collect::<Vec<_>>()
    };
    let default_ignored = cookie_names(
        raw.cache.ignore_cookies.as_deref().unwrap_or_default(),
        &mut problem,
    );
    let mut rules = Vec::new();
    let mut names = std::collections::HashSet::new();
    for r in raw.routes {
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problem(
                &r.name,
                format!("route name {:?} must be non-empty and use only letters, digits, '-' and '_' (it becomes a metric label)", r.name),
            );
        }
        if !names.insert(r.name.clone()) {
            problem(&r.name, format!("route name {:?} is used twice", r.name));
        }
        for h in &r.key.headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                problem(h, format!("key.headers: {h:?} is not a valid header name"));
            }
        }
        let mut overrides = CacheOverrides {
            no_store: r.override_no_store,
            ..CacheOverrides::default()
        };
        for o in &r.overrides {
            if !overrides.add(o) {
                problem(
                    o,
                    format!(
                        "override: {o:?} is not one of {}",
                        CacheOverrides::NAMES.join(", ")
                    ),
                );
            }
        }
        if !r.overrides.is_empty() && r.ttl.is_none() {
            problem(
                &r.name,
                format!(
                    "route {:?}: override needs a ttl (it says where the ttl beats the app's headers)",
                    r.name
                ),
            );
        }
        for &s in r.statuses.iter().flatten() {
            if !(200..=599).contains(&s) || s == 206 || s == 304 {
                problem(
                    &s.to_string(),
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
                Some(list) => cookie_names(list, &mut problem),
                None => default_ignored.clone(),
            },
            key_cookies: r.key.cookies,
            enabled: r.enabled,
        });
    }
    let routes = match RouteTable::new(rules, &paths) {
        Ok(t) => t,
        Err(errs) => {
            for e in errs {
                problem(&e.pattern, e.to_string());
            }
            RouteTable::default()
        }
    };

    let invalidation = match Invalidation::new(
        raw.invalidate
            .into_iter()
            .map(|r| RawRule {
                name: r.name,
                on: r.on,
                purge: r.purge,
            })
            .collect(),
        &paths,
    ) {
        Ok(i) => i,
        Err(errs) => {
            for e in errs {
                problem(&e.at, e.message);
            }
            Invalidation::default()
        }
    };

    let monitoring = validate_monitoring(raw.monitoring, &mut problem);
    let warm = Warm {
        host: raw.warm.host.unwrap_or_else(|| listen.to_string()),
        scheme: match raw.warm.scheme.as_deref() {
            None | Some("http") => "http",
            Some("https") => "https",
            Some(other) => {
                problem(
                    other,
                    format!("warm.scheme {other:?} must be http or https"),
                );
                "http"
            }
        },
        paths: raw.warm.paths,
    };
    if crate::host::normalize(&warm.host, "http").is_err() {
        problem(
            "host",
            format!(
                "warm.host {:?} is not a host name (e.g. app.example.com)",
                warm.host
            ),
        );
    }
    if warm.paths.len() > MAX_WARM_PATHS {
        problem(
            "warm",
            format!("warm.paths may list at most {MAX_WARM_PATHS} paths"),
        );
    }
    for p in &warm.paths {
        if !p.starts_with('/') || p.contains(char::is_whitespace) {
            problem(
                p,
                format!("warm path {p:?} must start with / and contain no spaces"),
            );
        }
    }
    let targeted_fields: Vec<String> = match &raw.cache.targeted_fields {
        None => crate::storable::DEFAULT_TARGETED
            .iter()
            .map(|s| s.to_string())
            .collect(),
        Some(list) => list.iter().map(|s| s.to_ascii_lowercase()).collect(),
    };
    for f in &targeted_fields {
        let reserved = ["cache-control", "expires", "pragma"].contains(&f.as_str());
        if http::HeaderName::from_bytes(f.as_bytes()).is_err() || reserved {
            problem(
                f,
                format!("cache.targeted_fields: {f:?} is not a targeted field name (e.g. cdn-cache-control)"),
            );
        }
    }
    let trusted_proxies = match raw.trusted_proxies {
        None => TrustedProxies::default(),
        Some(list) => TrustedProxies::new(
            list.iter()
                .filter_map(|n| {
                    forwarding::parse_net(n)
                        .map_err(|m| problem(n, format!("trusted_proxies: {m}")))
                        .ok()
                })
                .collect(),
        ),
    };
    let t = raw.timeouts;
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
            problem(name, format!("timeouts.{name} must be more than 0"));
        }
    }
    let purged_routes = invalidation
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
        .collect();

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
        max_object_bytes: raw
            .cache
            .max_object_size
            .map(|s| s.0)
            .unwrap_or(DEFAULT_MAX_OBJECT_BYTES),
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
        max_lifetime: raw.cache.max_ttl.map(|d| d.0).unwrap_or(DEFAULT_MAX_TTL),
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
        rules_fingerprint,
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

fn validate_method_override(
    raw: RawMethodOverride,
    problem: &mut impl FnMut(&str, String),
) -> MethodOverride {
    let defaults = MethodOverride::default();
    let headers = match raw.headers {
        None => defaults.headers,
        Some(hs) => hs
            .into_iter()
            .filter_map(|h| match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => Some(name.as_str().to_string()),
                Err(_) => {
                    problem(
                        &h,
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

/// A stable-enough hash (SipHash with fixed keys): the same text gives the
/// same value in every replica running the same build.
pub fn hash_of(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

fn fallback_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn parse_addr(s: &str, what: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{what} {s:?} is not an address such as 127.0.0.1:8080"))
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        format!(
            "upstream {s:?} must be an http:// URL (freshgate speaks plain HTTP/1.1 to the app)"
        )
    })?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        return Err(format!(
            "upstream {s:?} must be http://HOST:PORT with no path"
        ));
    }
    let addr = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok(Upstream {
        addr,
        host: hostport.to_string(),
    })
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
        let committed = include_str!("../docs/freshgate.schema.json");
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
}
