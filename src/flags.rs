//! Feature flags: what each one does, and where its value comes from.
//!
//! Every flag has four layers; the first one that is set wins:
//!
//! 1. **runtime** — `PUT /api/flags` on the admin listener. With Redis, the
//!    flip is written to Redis ([`share`]) and every replica picks it up
//!    within a second ([`Flags::follow`]); without Redis it is local to this
//!    process.
//! 2. **env** — read once at start: the rollout guide's names
//!    (`ENABLE_CACHE_INVALIDATION`, ...) and `FRESHGATE_<FLAG>` for all.
//! 3. **file** — the `flags:` section of the YAML, hot-reloaded with it.
//! 4. **default**.
//!
//! Reads are lock-free (an atomic per flag for the runtime layer, the config
//! snapshot for the file layer): the proxy checks `cache` and `invalidation`
//! on every request.
//!
//! What turning a flag off does to data safety is documented in
//! `docs/configuration.md`; in short, no flag can make freshgate serve data
//! older than an acknowledged write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::config::FileFlags;
use crate::store::redis::RedisTier;

/// Hash of runtime flag values (`PUT /api/flags`), shared by all replicas.
const SHARED_KEY: &str = "fg:flags";

/// How often a replica reads the runtime flags from Redis: a flip on any
/// replica reaches all of them well within a second.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Kill switch. Off: no lookups, no fills; every request goes to the app.
    /// Writes are still recorded as invalidations, so turning the cache back
    /// on never serves an entry that a write made while it was off made stale.
    Cache,
    /// Off: the invalidation rules are not consulted; every successful write
    /// invalidates everything instead. Never stale, but a low hit rate.
    Invalidation,
    /// Warm entries again after the writes that invalidated them.
    Prefetch,
    /// Record recent operations and time series for the monitoring API.
    Monitoring,
    /// Serve the admin web page.
    DebugPanel,
    /// Serve an expired (never an invalidated) entry when the app fails, as
    /// far as the app's `stale-if-error`/`stale-while-revalidate` allow.
    ServeStale,
}

pub const ALL: [Flag; 6] = [
    Flag::Cache,
    Flag::Invalidation,
    Flag::Prefetch,
    Flag::Monitoring,
    Flag::DebugPanel,
    Flag::ServeStale,
];

impl Flag {
    pub fn name(self) -> &'static str {
        match self {
            Flag::Cache => "cache",
            Flag::Invalidation => "invalidation",
            Flag::Prefetch => "prefetch",
            Flag::Monitoring => "monitoring",
            Flag::DebugPanel => "debug_panel",
            Flag::ServeStale => "serve_stale",
        }
    }

    pub fn from_name(name: &str) -> Option<Flag> {
        ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn default_value(self) -> bool {
        // The admin page is for operators who ask for it (rollout guide:
        // "only for admins"). Prefetching sends the app extra requests after
        // every write: opted into once the hit rate is watched, as the
        // rollout guide's "Day 3: enable prefetching" did.
        !matches!(self, Flag::DebugPanel | Flag::Prefetch)
    }

    /// The names the app team's rollout guide already uses.
    fn legacy_env(self) -> Option<&'static str> {
        match self {
            Flag::Invalidation => Some("ENABLE_CACHE_INVALIDATION"),
            Flag::Prefetch => Some("ENABLE_PREFETCHING"),
            Flag::Monitoring => Some("ENABLE_CACHE_MONITORING"),
            Flag::DebugPanel => Some("ENABLE_CACHE_DEBUG_PANEL"),
            Flag::Cache | Flag::ServeStale => None,
        }
    }

    pub fn env_name(self) -> String {
        format!("FRESHGATE_{}", self.name().to_ascii_uppercase())
    }

    /// Variants are declared in the order of [`ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

/// What the file's `flags:` section says of `f`, if anything.
fn in_file(file: &FileFlags, f: Flag) -> Option<bool> {
    match f {
        Flag::Cache => file.cache,
        Flag::Invalidation => file.invalidation,
        Flag::Prefetch => file.prefetch,
        Flag::Monitoring => file.monitoring,
        Flag::DebugPanel => file.debug_panel,
        Flag::ServeStale => file.serve_stale,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Runtime,
    Env,
    File,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Runtime => "runtime",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
        }
    }
}

/// A bad flag value in the environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("{name}={value:?}: expected true or false (also 1/0, yes/no, on/off)")]
    NotABool { name: String, value: String },
    #[error("{a}={a_value:?} and {b}={b_value:?} disagree; set one of them")]
    Conflict {
        a: String,
        a_value: String,
        b: String,
        b_value: String,
    },
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Write runtime values (None clears one) to Redis for every replica to
/// read. False when Redis could not take them all.
pub async fn share(redis: &RedisTier, changes: &[(Flag, Option<bool>)]) -> bool {
    let fields: Vec<(&str, Option<&str>)> = changes
        .iter()
        .map(|(f, v)| (f.name(), v.map(|b| if b { "true" } else { "false" })))
        .collect();
    redis.hash_set("flags", SHARED_KEY, &fields).await
}

/// Runtime values are stored as 0 = unset, 1 = off, 2 = on.
const UNSET: u8 = 0;

fn encode(v: Option<bool>) -> u8 {
    match v {
        None => UNSET,
        Some(false) => 1,
        Some(true) => 2,
    }
}

fn decode(v: u8) -> Option<bool> {
    match v {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// The env and runtime layers; the file layer lives in each config snapshot.
#[derive(Debug, Default)]
pub struct Flags {
    env: [Option<bool>; ALL.len()],
    runtime: [AtomicU8; ALL.len()],
}

impl Flags {
    /// Read the env layer from `lookup` (the process environment in `main`).
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Flags, Vec<EnvError>> {
        let mut flags = Flags::default();
        let mut errors = Vec::new();
        for f in ALL {
            let mut found: Option<(String, String, bool)> = None;
            let names = [Some(f.env_name()), f.legacy_env().map(str::to_string)];
            for name in names.into_iter().flatten() {
                let Some(value) = lookup(&name) else { continue };
                let Some(b) = parse_bool(&value) else {
                    errors.push(EnvError::NotABool { name, value });
                    continue;
                };
                match &found {
                    Some((a, a_value, prev)) if *prev != b => errors.push(EnvError::Conflict {
                        a: a.clone(),
                        a_value: a_value.clone(),
                        b: name,
                        b_value: value,
                    }),
                    Some(_) => {}
                    None => found = Some((name, value, b)),
                }
            }
            flags.env[f.index()] = found.map(|(_, _, b)| b);
        }
        if errors.is_empty() {
            Ok(flags)
        } else {
            Err(errors)
        }
    }

    /// The value in force, given the current config file's `flags:`.
    pub fn get(&self, f: Flag, file: &FileFlags) -> bool {
        self.resolve(f, file).0
    }

    pub fn resolve(&self, f: Flag, file: &FileFlags) -> (bool, Source) {
        let i = f.index();
        if let Some(v) = decode(self.runtime[i].load(Ordering::Acquire)) {
            return (v, Source::Runtime);
        }
        if let Some(v) = self.env[i] {
            return (v, Source::Env);
        }
        if let Some(v) = in_file(file, f) {
            return (v, Source::File);
        }
        (f.default_value(), Source::Default)
    }

    /// Set (Some) or clear (None) a runtime value. Returns whether it changed.
    pub fn set_runtime(&self, f: Flag, v: Option<bool>) -> bool {
        self.runtime[f.index()].swap(encode(v), Ordering::AcqRel) != encode(v)
    }

    /// Replace the whole runtime layer with what Redis holds (shared flips).
    pub fn replace_runtime(&self, values: &HashMap<String, String>) -> Vec<Flag> {
        let mut changed = Vec::new();
        for f in ALL {
            let v = values.get(f.name()).and_then(|s| parse_bool(s));
            if self.set_runtime(f, v) {
                changed.push(f);
            }
        }
        changed
    }

    /// Follow runtime flips made on any replica (shared in Redis) until
    /// `shutdown`. While Redis is unreachable the last known values stay.
    pub async fn follow(
        &self,
        redis: &RedisTier,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Some(values) = redis.hash_get("flags", SHARED_KEY).await {
                for f in self.replace_runtime(&values) {
                    tracing::info!(flag = f.name(), "runtime flag changed on another replica");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Every flag with its value and where it came from, for the admin API.
    pub fn describe(&self, file: &FileFlags) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for f in ALL {
            let (value, source) = self.resolve(f, file);
            out.insert(
                f.name().to_string(),
                serde_json::json!({ "enabled": value, "source": source.as_str() }),
            );
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn layers_runtime_env_file_default() {
        let cfg = Config::from_str(
            "flags:\n  prefetch: false\n  invalidation: false\n",
            None,
            &Overrides::default(),
        )
        .unwrap();
        let flags = Flags::from_env(env(&[("ENABLE_CACHE_INVALIDATION", "true")])).unwrap();
        assert_eq!(
            flags.resolve(Flag::Cache, &cfg.flags),
            (true, Source::Default)
        );
        assert_eq!(
            flags.resolve(Flag::Prefetch, &cfg.flags),
            (false, Source::File)
        );
        assert_eq!(
            flags.resolve(Flag::Invalidation, &cfg.flags),
            (true, Source::Env)
        );
        flags.set_runtime(Flag::Invalidation, Some(false));
        assert_eq!(
            flags.resolve(Flag::Invalidation, &cfg.flags),
            (false, Source::Runtime)
        );
        flags.set_runtime(Flag::Invalidation, None);
        assert_eq!(
            flags.resolve(Flag::Invalidation, &cfg.flags),
            (true, Source::Env)
        );
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = Flags::from_env(env(&[("ENABLE_PREFETCHING", "maybe")])).unwrap_err();
        assert!(e[0].to_string().contains("ENABLE_PREFETCHING=\"maybe\""));
        let e = Flags::from_env(env(&[
            ("FRESHGATE_PREFETCH", "off"),
            ("ENABLE_PREFETCHING", "true"),
        ]))
        .unwrap_err();
        assert!(matches!(e[0], EnvError::Conflict { .. }), "{e:?}");
        let ok = Flags::from_env(env(&[("FRESHGATE_CACHE", "0")])).unwrap();
        assert_eq!(ok.env[Flag::Cache.index()], Some(false));
    }

    #[test]
    fn runtime_layer_follows_redis() {
        let flags = Flags::default();
        let mut m = HashMap::new();
        m.insert("cache".to_string(), "false".to_string());
        assert_eq!(flags.replace_runtime(&m), vec![Flag::Cache]);
        assert_eq!(flags.replace_runtime(&m), vec![]);
        assert_eq!(flags.replace_runtime(&HashMap::new()), vec![Flag::Cache]);
    }
}
