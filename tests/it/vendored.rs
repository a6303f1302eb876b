//! Tests of freshgate's changes to vendored crates, compiled from the vendored
//! file itself: the vendored crates' own test suites need dev-dependencies that
//! are not in freshgate's lock file, so their tests run here instead.

/// pingora-core's write buffer that sends a held response header together with
/// the body after it (`vendor/README.md`).
#[allow(dead_code)] // the vendored crate uses what these tests do not
#[path = "../../vendor/pingora-core/src/protocols/l4/coalesce.rs"]
mod coalesce;
