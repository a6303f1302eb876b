//! Hot configuration: the live config snapshot and flags, and how a new file
//! replaces them.
//!
//! [`LiveConfig`] is what the proxy and the admin listener share. A reload (file
//! change, `SIGHUP`, or `POST /api/reload`) reads the whole file, parses and
//! validates all of it, and only then swaps the snapshot in with `arc-swap`:
//! a request keeps the snapshot it started with, and no request ever sees half
//! a config. A file that does not validate changes nothing; its problems are
//! logged with file:line:column, counted in `/metrics` and shown by
//! `GET /api/config`.
//!
//! What a reload does to the cache: entries carry the fingerprint of the
//! rules that tagged them (`invalidate:`, path folding, the method override,
//! freshgate's version, and the `cache.max_ttl` the store runs with), and
//! the store serves only entries with the current fingerprint. Editing any
//! of the first four therefore makes everything cached before a miss (an
//! edit may add the very rule whose absence made something stale); editing
//! only `routes:` or `flags:` keeps the cache. Listen addresses, the admin
//! listener, the store, `cache.max_ttl`, `writes.timeout`, shutdown timing
//! and `warm` are read at start only: a reload that changes them is applied
//! for everything else and reports them under `restartRequired`; the live
//! snapshot keeps the running `cache.max_ttl` (`Config::beside`), so that
//! the fleet sees the value this replica's store runs with.
//!
//! The file is watched, and `SIGHUP` held, from before its first read
//! ([`Triggers`]): an edit while freshgate starts is not missed. The watcher
//! watches the file's *directory*, so editors that write a temp file and
//! rename it over the original, and Kubernetes ConfigMap volumes (which swap
//! a `..data` symlink), are seen as well as writes in place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::json;
use tracing::{error, info, warn};

use crate::config::{hash_of, Config, ConfigError, Overrides};
use crate::flags::{Flags, ALL};
use crate::invalidation::UnmatchedWrites;
use crate::metrics::METRICS;
use crate::store::Store;

/// Events closer together than this are one edit (editors write in steps)...
const SETTLE: Duration = Duration::from_millis(50);
/// ...but a steady stream of edits still reloads at least this often.
const SETTLE_AT_MOST: Duration = Duration::from_millis(250);

/// The configuration in force, with its flags, the writes no rule covered
/// and the reload status: what the proxy and the admin listener share.
pub struct LiveConfig {
    config: ArcSwap<Config>,
    pub flags: Flags,
    /// Writes no rule covered (runtime observations, kept across reloads).
    pub unmatched: UnmatchedWrites,
    overrides: Overrides,
    store: &'static Store,
    status: Mutex<Status>,
}

struct Status {
    /// Successful loads so far (1 = the config the process started with).
    version: u64,
    loaded_at: SystemTime,
    last_attempt: Option<(SystemTime, bool)>,
    last_error: Option<(SystemTime, ConfigError)>,
    /// Text hash of the last rejected file, so one bad edit is reported once.
    rejected_hash: Option<u64>,
    restart_required: Vec<&'static str>,
}

/// What a reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The file is the one already running (or already rejected).
    Unchanged,
    /// There is no file to read, or it cannot be read, or it is empty: the
    /// running config stays (mid-swap a file can be briefly absent; a later
    /// event reloads it). The reason, for the admin API.
    Unreadable(String),
    Applied,
    Rejected(ConfigError),
}

impl LiveConfig {
    pub fn new(
        config: Config,
        flags: Flags,
        overrides: Overrides,
        store: &'static Store,
    ) -> LiveConfig {
        store.set_rules(config.rules_fingerprint);
        METRICS.config_last_reload_successful.set(1);
        METRICS
            .config_last_success_seconds
            .set(crate::time::unix_secs_f64(SystemTime::now()));
        LiveConfig {
            config: ArcSwap::from_pointee(config),
            flags,
            unmatched: UnmatchedWrites::default(),
            overrides,
            store,
            status: Mutex::new(Status {
                version: 1,
                loaded_at: SystemTime::now(),
                last_attempt: None,
                last_error: None,
                rejected_hash: None,
                restart_required: Vec::new(),
            }),
        }
    }

    /// The current snapshot; hold it for the whole request.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn source(&self) -> Option<PathBuf> {
        self.config.load().source.clone()
    }

    /// Re-read the file and swap it in if it is valid and different.
    pub fn reload(&self, trigger: &str) -> Reloaded {
        let Some(path) = self.source() else {
            return Reloaded::Unreadable(
                "no config file: freshgate runs on built-in defaults".into(),
            );
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                // Mid-swap (ConfigMap, rename) the file can be briefly absent;
                // a later event reloads it. Say so without counting an error.
                warn!(file = %path.display(), error = %e, "config file not readable; keeping the running config");
                return Reloaded::Unreadable(format!("{}: {e}", path.display()));
            }
        };
        if crate::config::has_no_settings(&text) {
            // A truncated read, or a file emptied by mistake (nothing left
            // but comments, perhaps): an empty config would silently drop
            // every rule. Never swap that in; a later event reloads it.
            warn!(file = %path.display(), "config file has no settings; keeping the running config");
            return Reloaded::Unreadable(format!(
                "{}: no settings (an empty config would drop every rule)",
                path.display()
            ));
        }
        let hash = hash_of(&text);
        let old = self.config.load_full();
        {
            let st = self.status.lock();
            if hash == old.text_hash || st.rejected_hash == Some(hash) {
                return Reloaded::Unchanged;
            }
        }
        let now = SystemTime::now();
        match Config::from_str(&text, Some(&path), &self.overrides) {
            Ok(new) => {
                let restart_required = needs_restart(&old, &new);
                let new = new.beside(&old);
                let rules_changed = new.rules_fingerprint != old.rules_fingerprint;
                let fingerprint = new.rules_fingerprint;
                // The store first: writes planned by the new rules must find
                // it already distrusting the fleet's agreement on rules.
                if rules_changed {
                    self.store.set_rules(fingerprint);
                }
                self.config.store(Arc::new(new));
                let mut st = self.status.lock();
                st.version += 1;
                st.loaded_at = now;
                st.last_attempt = Some((now, true));
                st.rejected_hash = None;
                st.restart_required = restart_required.clone();
                METRICS.config_reloads.with_label_values(&["success"]).inc();
                METRICS.config_last_reload_successful.set(1);
                METRICS
                    .config_last_success_seconds
                    .set(crate::time::unix_secs_f64(now));
                info!(
                    file = %path.display(),
                    trigger,
                    version = st.version,
                    rules_changed,
                    "config reloaded"
                );
                if !restart_required.is_empty() {
                    warn!(fields = ?restart_required, "config reloaded, but these settings take effect only after a restart");
                }
                Reloaded::Applied
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    error!(trigger, "config rejected, the running config stays: {line}");
                }
                let mut st = self.status.lock();
                st.last_attempt = Some((now, false));
                st.rejected_hash = Some(hash);
                st.last_error = Some((now, e.clone()));
                METRICS.config_reloads.with_label_values(&["error"]).inc();
                METRICS.config_last_reload_successful.set(0);
                Reloaded::Rejected(e)
            }
        }
    }

    /// `GET /api/config`.
    pub fn status_json(&self) -> serde_json::Value {
        let c = self.config.load();
        let st = self.status.lock();
        let last_error = st.last_error.as_ref().map(|(at, e)| {
            json!({
                "at": crate::time::rfc3339(*at),
                "file": e.file,
                "problems": e.problems.iter().map(|p| json!({
                    "line": p.line, "column": p.column, "message": p.message,
                })).collect::<Vec<_>>(),
                "message": e.to_string(),
            })
        });
        json!({
            "version": st.version,
            "hash": format!("{:016x}", c.text_hash),
            "rulesFingerprint": c.rules_fingerprint.to_string(),
            "file": c.source.as_ref().map(|p| p.display().to_string()),
            "loadedAt": crate::time::rfc3339(st.loaded_at),
            "lastReload": st.last_attempt.map(|(at, ok)| json!({
                "at": crate::time::rfc3339(at),
                "result": if ok { "success" } else { "error" },
            })),
            "lastError": last_error,
            "restartRequired": st.restart_required,
            "routes": c.routes.rules().iter().map(|r| json!({
                "name": r.name, "match": r.pattern, "enabled": r.enabled,
                "ttlSeconds": r.ttl.map(|t| t.as_secs()),
            })).collect::<Vec<_>>(),
            "invalidationRules": c.invalidation.rules.len(),
        })
    }

    /// Why the last reload was rejected, while the old config is serving.
    pub fn last_reload_error(&self) -> Option<String> {
        let st = self.status.lock();
        match (st.last_attempt, &st.last_error) {
            (Some((_, false)), Some((_, e))) => Some(e.to_string()),
            _ => None,
        }
    }

    /// Publish flag states as gauges (called when `/metrics` is scraped).
    pub fn export_flags(&self) {
        let c = self.config.load();
        for f in ALL {
            METRICS
                .flag_enabled
                .with_label_values(&[f.name()])
                .set(i64::from(self.flags.get(f, &c.flags)));
        }
    }
}

/// Settings that are read once at start.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.listen != new.listen {
        v.push("listen");
    }
    if old.admin_listen != new.admin_listen {
        v.push("admin.listen");
    }
    let redis = |c: &Config| {
        c.redis
            .as_ref()
            .map(|r| (r.url.clone(), r.timeout, r.consistency))
    };
    if redis(old) != redis(new) || old.memory_max_bytes != new.memory_max_bytes {
        v.push("store");
    }
    if old.max_ttl != new.max_ttl {
        v.push("cache.max_ttl");
    }
    if old.grace_period != new.grace_period || old.shutdown_timeout != new.shutdown_timeout {
        v.push("shutdown");
    }
    if old.write_timeout != new.write_timeout {
        // Redis lifts a fence no replica lifted after twice this, set at start.
        v.push("writes.timeout");
    }
    if old.warm != new.warm {
        // Warming is a start-up step.
        v.push("warm");
    }
    v
}

/// Set by every `SIGHUP` once [`Triggers::start`] has run; [`watch`] reads
/// it once, for those that came before it listened.
static HANGUP_BEFORE_WATCH: LazyLock<Arc<AtomicBool>> = LazyLock::new(Default::default);

/// What [`watch`] reloads on, set up before the config file is first read,
/// so that nothing done to it after that read goes unseen while freshgate
/// starts (it can wait seconds for a listen address an old replica holds):
/// the watch of the file's directory, its events queued until `watch`
/// runs; and `SIGHUP`, whose default action would end the process, held
/// until `watch` takes it over (a ConfigMap reloader sends one).
pub struct Triggers {
    /// None when not watching; the error is told by `watch`, once the
    /// config has been found good (a path that does not exist is the
    /// config's error, not a watch's).
    files: Option<notify::Result<(WatchedFile, Events)>>,
}

type WatchedFile = notify::RecommendedWatcher;
type Events = tokio::sync::mpsc::UnboundedReceiver<()>;

impl Triggers {
    /// For a process that will run the proxy on the config file at `path`
    /// (`freshgate demo` on its bundled config too); anything else keeps
    /// `SIGHUP`'s default action, so that closing its terminal stops it.
    /// The file is watched when `watch_files`.
    pub fn start(path: &Path, watch_files: bool) -> Triggers {
        let flag = HANGUP_BEFORE_WATCH.clone();
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, flag) {
            warn!(error = %e, "cannot catch SIGHUP during start-up: one now stops freshgate");
        }
        let files = watch_files.then(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            start_watcher(path, tx).map(|w| (w, rx))
        });
        Triggers { files }
    }
}

/// Reload on changes in the config file's directory and on `SIGHUP`, until
/// `shutdown` turns true: first on a `SIGHUP` held since [`Triggers::start`]
/// and on the file events queued since then.
pub async fn watch(
    live: Arc<LiveConfig>,
    triggers: Triggers,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    // Kept alive for as long as we watch; dropping it stops the OS watch.
    let (_watcher, mut rx) = match triggers.files {
        Some(Ok((w, rx))) => (Some(w), Some(rx)),
        Some(Err(e)) => {
            let file = live.source().unwrap_or_default();
            warn!(file = %file.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            (None, None)
        }
        None => (None, None),
    };
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(e) => {
            // Held by `Triggers::start`, SIGHUP would be dropped unsaid.
            warn!(error = %e, "cannot listen for SIGHUP: reload with POST /api/reload or by editing the watched file");
            None
        }
    };
    let mut first = HANGUP_BEFORE_WATCH
        .swap(false, Ordering::Relaxed)
        .then_some("SIGHUP");
    loop {
        let trigger = match first.take() {
            Some(t) => t,
            None => tokio::select! {
                Some(()) = async { match rx.as_mut() { Some(r) => r.recv().await, None => None } } => {
                    let rx = rx.as_mut().expect("an event came from it");
                    // Let the edit finish: swallow events until the directory is quiet.
                    let until = tokio::time::Instant::now() + SETTLE_AT_MOST;
                    while tokio::time::Instant::now() < until {
                        match tokio::time::timeout(SETTLE, rx.recv()).await {
                            Ok(Some(())) => continue,
                            _ => break,
                        }
                    }
                    "file change"
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
                _ = shutdown.changed() => return,
            },
        };
        let live = live.clone();
        // File IO and YAML parsing are blocking work.
        let _ = tokio::task::spawn_blocking(move || live.reload(trigger)).await;
    }
}

fn start_watcher(
    path: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        let ours = |p: &PathBuf| {
            let n = p.file_name();
            n == name.as_deref() || n == Some(std::ffi::OsStr::new("..data"))
        };
        let any_ours = ev.paths.iter().any(ours);
        // A finished write (close after writing), a file moved into place
        // (temp file + rename, the ConfigMap's `..data` symlink swap), a new
        // symlink or hard link. Not each data write, nor a new file or a
        // removal (`rm F; slow-writer > F`): a half-written file must not be
        // read, and what replaces a removed file is reported when it is whole.
        use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
        use notify::EventKind;
        let complete = match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Metadata(_)) => any_ours,
            // Moved away: what takes its place says when it is whole.
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => false,
            // Both names, the new one last.
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                ev.paths.last().is_some_and(ours)
            }
            EventKind::Modify(ModifyKind::Name(_)) => any_ours,
            EventKind::Create(_) => any_ours && ev.paths.iter().any(|p| came_whole(p)),
            // Events were lost (the kernel's queue overflowed): look again
            // (an unchanged file changes nothing).
            _ => ev.need_rescan(),
        };
        if complete {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether a file just created at `path` came whole: a symlink, or a hard
/// link to a file that exists elsewhere (`ln new F`); not a file a writer
/// has just opened, whose close after writing is reported.
fn came_whole(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink() || m.nlink() > 1)
}
