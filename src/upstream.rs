//! The app's address, resolved off the request path.
//!
//! Why not hand pingora the `host:port` text: its `HttpPeer::new` resolves
//! that text on every request, with a blocking `getaddrinfo` on the thread
//! that serves every other request, and panics when the name does not
//! resolve — which it briefly does not while an app container is being
//! replaced (Compose and Kubernetes service names come and go with it). A
//! client then got an empty reply instead of a 502.
//!
//! Here an IP literal is parsed once; a name is looked up on tokio's
//! blocking pool, at most once per [`RESOLVE_EVERY`] (one request looks it
//! up again while the others keep the address they have), and when the
//! lookup fails the last address it gave keeps being used (the app may well
//! still be there; if not, connecting fails and the client gets the 502
//! it would have got anyway). A name that never resolved is an upstream
//! error: 502, with the reason in the log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use pingora::{Error, ErrorType, Result};
use tracing::warn;

/// How long a looked-up address is used before the name is looked up again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// The app's address, as last resolved (see the module's doc).
#[derive(Default)]
pub struct Resolver {
    last: ArcSwapOption<Resolved>,
    /// One request is looking the name up again: the others do not.
    looking_up: AtomicBool,
}

struct Resolved {
    /// What was resolved: the config's `upstream` (it can be reloaded).
    target: String,
    addr: SocketAddr,
    /// `None` for an IP literal: it never needs looking up again.
    at: Option<Instant>,
}

impl Resolver {
    /// The address to connect to for `target` (`host:port`).
    pub async fn addr(&self, target: &str) -> Result<SocketAddr> {
        let last = self.last.load_full().filter(|r| r.target == target);
        if let Some(r) = &last {
            let fresh = r.at.is_none_or(|at| at.elapsed() < RESOLVE_EVERY);
            if fresh || self.looking_up.swap(true, Ordering::AcqRel) {
                return Ok(r.addr);
            }
        }
        let found = self.resolve(target).await;
        if last.is_some() {
            self.looking_up.store(false, Ordering::Release);
        }
        match (found, last) {
            (Ok(r), _) => {
                let addr = r.addr;
                self.last.store(Some(Arc::new(r)));
                Ok(addr)
            }
            (Err(e), Some(last)) => {
                warn!(upstream = target, error = %e, "upstream name did not resolve; using its last address");
                // Not again before RESOLVE_EVERY: every request would
                // otherwise wait for a lookup that keeps failing.
                self.last.store(Some(Arc::new(Resolved {
                    target: last.target.clone(),
                    addr: last.addr,
                    at: Some(Instant::now()),
                })));
                Ok(last.addr)
            }
            (Err(e), None) => Err(e),
        }
    }

    async fn resolve(&self, target: &str) -> Result<Resolved> {
        if let Ok(addr) = target.parse::<SocketAddr>() {
            return Ok(Resolved {
                target: target.to_string(),
                addr,
                at: None,
            });
        }
        let failed = |why: String| {
            Error::explain(
                ErrorType::ConnectNoRoute,
                format!("upstream {target:?} did not resolve: {why}"),
            )
            .into_up()
        };
        let mut addrs = tokio::net::lookup_host(target)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let addr = addrs.next().ok_or_else(|| failed("no address".into()))?;
        Ok(Resolved {
            target: target.to_string(),
            addr,
            at: Some(Instant::now()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_literal_is_parsed_and_a_name_that_does_not_resolve_is_an_upstream_error() {
        let r = Resolver::default();
        let addr = r.addr("127.0.0.1:3000").await.unwrap();
        assert_eq!(addr, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(
            r.addr("[::1]:80").await.unwrap(),
            "[::1]:80".parse().unwrap()
        );
        // RFC 6761: `.invalid` never resolves.
        let e = r.addr("app.invalid:3000").await.unwrap_err();
        assert_eq!(e.esource(), &pingora::ErrorSource::Upstream);
        assert!(e.to_string().contains("app.invalid"), "{e}");
        let local = r.addr("localhost:3000").await.unwrap();
        assert!(local.ip().is_loopback(), "{local}");
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_address() {
        let r = Resolver::default();
        let first = r.addr("localhost:3000").await.unwrap();
        // As if it resolved long ago, under the name that now fails.
        r.last.store(Some(Arc::new(Resolved {
            target: "app.invalid:3000".into(),
            addr: first,
            at: Some(Instant::now() - RESOLVE_EVERY * 2),
        })));
        assert_eq!(r.addr("app.invalid:3000").await.unwrap(), first);
        assert!(!r.looking_up.load(Ordering::Acquire));
    }
}
