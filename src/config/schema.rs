//! The YAML schema: raw types that mirror the file, as serde reads them
//! (`deny_unknown_fields`: a typo is an error, not a silently ignored key),
//! the units (`Dur`, `Size`), and the JSON Schema derived from them.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

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

/// The `flags:` section of the YAML.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq, Hash, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileFlags {
    pub cache: Option<bool>,
    pub invalidation: Option<bool>,
    pub prefetch: Option<bool>,
    pub monitoring: Option<bool>,
    pub debug_panel: Option<bool>,
    pub serve_stale: Option<bool>,
}
