//! Integration tests: one binary (ripgrep style), real processes over real
//! sockets. See `util` for the harness.

mod util;

mod admin;
mod browser;
mod checker;
mod cli;
mod cluster;
mod conformance;
mod cookies;
mod deploy;
mod faults;
mod hostile;
mod hot_reload;
mod invalidation;
mod layout;
mod monitoring;
mod proxy_cache;
mod redis_tier;
mod stale_holes;
mod vendored;
mod warm;
