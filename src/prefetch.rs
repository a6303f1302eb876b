//! Prefetching: after a write invalidated them, fetch the exact paths it
//! purged again in the background, so the next reader (typically the writer,
//! refreshing to see their edit) hits instead of waiting for the app.
//!
//! A refetch is a plain GET to freshgate's own listener: it goes through the
//! whole request path — route rules, bypass rules, the cache lock (it
//! coalesces with a reader asking at the same moment), and the invalidation
//! clock read *after* the write's invalidation was recorded, so what it stores
//! is the new data. It carries no client credentials, so it only ever fills
//! shared entries. Only paths a route rule caches are refetched; families
//! (`/chapters/*`) are not, since their members are unknown.
//!
//! Warming (`warm:` in the config) uses the same path once at start: it
//! fetches a configured list of paths so the first readers after a deploy hit.
//!
//! Bounded: at most [`CONCURRENT`] refetches run at once; more are skipped
//! (counted), never queued; warming waits its turn instead. These requests
//! are marked with a per-process secret header so that they are not counted
//! as client traffic (they would otherwise lower the hit rate the monitoring
//! reports); the proxy strips it before the app.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::METRICS;

/// Refetches in flight at most (each holds one blocking thread).
pub const CONCURRENT: usize = 4;
/// A refetch that takes longer is abandoned (the app is slow; a reader will
/// fetch it anyway).
const TIMEOUT: Duration = Duration::from_secs(10);
/// The header that marks a refetch; its value is the process's random secret.
pub const HEADER: &str = "x-freshgate-prefetch";

pub struct Prefetcher {
    /// Where freshgate's own proxy listener can be reached.
    target: SocketAddr,
    secret: String,
    permits: Arc<Semaphore>,
    agent: ureq::Agent,
}

impl Prefetcher {
    /// `listen`: the proxy's listen address (an unspecified address is
    /// reached over loopback).
    pub fn new(listen: SocketAddr) -> Prefetcher {
        let ip = match listen.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        Prefetcher {
            target: SocketAddr::new(ip, listen.port()),
            secret: format!("{:032x}", rand::rng().random::<u128>()),
            permits: Arc::new(Semaphore::new(CONCURRENT)),
            agent,
        }
    }

    /// The header (and its secret value) that marks a request as this
    /// process's own (a refetch or warming fetch): not client traffic, and
    /// its `X-Forwarded-Proto` believed.
    pub fn marker(&self) -> (String, String) {
        (HEADER.to_string(), self.secret.clone())
    }

    /// Whether a request is one of this process's refetches.
    pub fn is_refetch(&self, value: Option<&http::HeaderValue>) -> bool {
        value.is_some_and(|v| v.as_bytes() == self.secret.as_bytes())
    }

    /// Refetch `paths` in the background, with the write's `host` and
    /// `scheme` (both part of the cache key). A path that finds every permit
    /// taken is skipped.
    pub fn refetch(&self, host: &str, scheme: &str, paths: Vec<String>) {
        for path in paths {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                METRICS.prefetches.with_label_values(&["skipped"]).inc();
                continue;
            };
            self.fetch(host, scheme, &path, permit, &METRICS.prefetches);
        }
    }

    /// Fetch `paths` once, at most [`CONCURRENT`] at a time (waiting for a
    /// permit rather than skipping: warming is a one-off list).
    pub async fn warm(&self, host: &str, scheme: &str, paths: &[String]) {
        for path in paths {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            self.fetch(host, scheme, path, permit, &METRICS.warmed);
        }
    }

    /// Whether the proxy listener accepts connections (it starts beside the
    /// service that warms).
    pub async fn listening(&self) -> bool {
        tokio::net::TcpStream::connect(self.target).await.is_ok()
    }

    /// One GET through our own listener on a blocking thread, counted in
    /// `counter` by result; `permit` is released when it ends. Its
    /// `X-Forwarded-Proto` is believed by the proxy because it carries the
    /// secret (whatever `trusted_proxies` says of loopback).
    fn fetch(
        &self,
        host: &str,
        scheme: &str,
        path: &str,
        permit: OwnedSemaphorePermit,
        counter: &'static IntCounterVec,
    ) {
        let url = format!("http://{}{}", self.target, path);
        let req = self
            .agent
            .get(&url)
            .header(HEADER, &self.secret)
            .header("host", host)
            .header("x-forwarded-proto", scheme)
            // The variant browsers look up, for answers that vary on it.
            .header("accept-encoding", crate::warm::BROWSER_ACCEPT_ENCODING);
        tokio::task::spawn_blocking(move || {
            let result = req.call().and_then(|mut resp| {
                // Read it all: the fill completes with the body.
                std::io::copy(&mut resp.body_mut().as_reader(), &mut std::io::sink())?;
                Ok(resp.status())
            });
            let label = match result {
                Ok(s) if s.is_success() => "ok",
                Ok(_) => "error",
                Err(e) => {
                    tracing::debug!(%url, error = %e, "refetch failed");
                    "error"
                }
            };
            counter.with_label_values(&[label]).inc();
            drop(permit);
        });
    }
}
