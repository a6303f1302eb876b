//! freshgate: a caching reverse proxy (sidecar) built on pingora.
//!
//! It sits in front of one web app, caches GET/HEAD responses in an in-process
//! tier and optionally in Redis (shared by replicas), and passes everything
//! else through. The architecture and the reasons for it are in
//! `docs/architecture.md`.
//!
//! # Layout
//! - [`config`]: YAML schema → validated, immutable [`config::Config`].
//! - [`reload`]: the live config + flags, hot reload (file watch, SIGHUP).
//! - [`flags`]: feature flags (kill switch, invalidation, ...) and their layers.
//! - [`rules`]: route patterns (`/studio/api/scenes/:id`) compiled to one matcher.
//! - [`proxy`]: the request path, pingora's `ProxyHttp` — start reading here.
//! - [`hit`]: fresh hits answered from the memory tier, before pingora-cache.
//! - [`canonical`]: what a request means: the one path and method set that
//!   the key, route rules, tags and write rules all use.
//! - [`escapes`]: percent-escapes in a path, and which each spelling decodes.
//! - [`methods`]: which methods the app may execute for a request (overrides).
//! - [`spelling`]: a request target's normal form, the other paths apps may
//!   read it as (`;params`, `\`), and its query in key order.
//! - [`host`]: the host a request names, validated and normalised (it is keyed).
//! - [`ids`]: the numbers and UUIDs a path's segments name to apps that
//!   parse them (`/scenes/0132` is scene 132), so every spelling shares tags.
//! - [`forwarding`]: client facts told to the app; headers never passed on.
//! - [`upstream`]: the app's address, resolved off the request path.
//! - [`bypass`]: why a read does not use the cache (one typed reason).
//! - [`cachekey`]: what makes two requests the same for the cache.
//! - [`storable`]: which of the app's answers may be stored, and how long.
//! - [`invalidation`]: invalidation rules → tags; what a write makes stale.
//! - [`writes`]: a write's two phases: what it fences, which outcomes invalidate.
//! - [`prefetch`]: refetching what a write purged, so the next read hits.
//! - [`fill_lock`]: request coalescing: what waiters do when a fill is not stored.
//! - [`store`]: what may be served (the invalidation log) and where it is kept
//!   (memory, Redis), and pingora-cache's `Storage` over it.
//! - [`metrics`]: every Prometheus metric, one registry.
//! - [`monitor`]: counters over time, alerts, recent operations (admin API/page).
//! - [`admin`]: the admin listener: health, `/metrics`, the admin API and page.
//! - [`explain`]: what a config will do, without running it: `freshgate check`
//!   warnings and `freshgate explain`.
//! - [`warm`]: `freshgate warm`, filling the cache through a running freshgate.
//! - [`analyze`]: `freshgate analyze`, a terminal report from the admin API.
//! - [`health`]: `freshgate health`, the container's health check.
//! - [`demo`]: the bundled demo app, for newcomers, tests and benchmarks.
//! - [`time`]: wall-clock formats (RFC 3339, Unix seconds and milliseconds).
//! - [`outcome`]: what happened to one request (`X-Cache`, metric label, monitor kind).
//! - [`app`]: wiring of the pingora server and its services.
//! - [`listen`]: the listen addresses, bound before pingora does (start-up errors).
//! - [`cli`]: the command line.

#![forbid(unsafe_code)]

pub mod admin;
pub mod analyze;
pub mod app;
pub mod bypass;
pub mod cachekey;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod demo;
pub mod escapes;
pub mod explain;
pub mod fill_lock;
pub mod flags;
pub mod forwarding;
pub mod health;
pub mod hit;
pub mod host;
pub mod ids;
pub mod invalidation;
pub mod listen;
pub mod methods;
pub mod metrics;
pub mod monitor;
pub mod outcome;
pub mod prefetch;
pub mod proxy;
pub mod reload;
pub mod rules;
pub mod spelling;
pub mod storable;
pub mod store;
pub mod time;
pub mod upstream;
pub mod warm;
pub mod writes;
