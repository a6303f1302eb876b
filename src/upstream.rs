//! The app's address, resolved off the request path.
//!
//! Why not hand pingora the `host:port` text: its `HttpPeer::new` resolves
//! that text on every request, with a blocking `getaddrinfo` on the thread
//! that serves every other request, and panics when the name does not
//! resolve — which it briefly does not while an app container is being
//! replaced (Compose and Kubernetes service names come and go with it). A
//! client then got an empty reply instead of a 502.
//!
//! Here an IP literal is parsed once. A name is looked up on tokio's
//! blocking pool, within the connect timeout: by the first request, then
//! again in the background once its addresses are [`RESOLVE_EVERY`] old
//! (requests meanwhile use the ones they have; a lookup that fails keeps
//! them — the app may well still be there). When connecting to an address
//! fails, the request tries the name's next address (`localhost` is often
//! `::1` first while the app listens on `127.0.0.1`), and once every
//! address failed, the name is looked up again before the next connect (an
//! app container replaced has a new address). A name that never resolved
//! is an upstream error: 502, with the reason in the log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use pingora::{Error, ErrorType, Result};
use tracing::warn;

/// How long a name's addresses are used before it is looked up again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// The app's addresses, as last resolved (see the module's doc).
#[derive(Default)]
pub struct Resolver {
    last: ArcSwapOption<Resolved>,
    /// A background lookup is running: no other starts.
    looking_up: AtomicBool,
}

struct Resolved {
    /// What was resolved: the config's `upstream` (it can be reloaded).
    target: String,
    /// Never empty.
    addrs: Vec<SocketAddr>,
    /// The one connected to (the next, after a connect to it failed).
    current: AtomicUsize,
    /// `None` for an IP literal: it never needs looking up again.
    at: Option<Instant>,
    /// Connecting to every address failed: look the name up again first.
    exhausted: AtomicBool,
}

impl Resolved {
    fn new(target: &str, addrs: Vec<SocketAddr>, at: Option<Instant>) -> Resolved {
        Resolved {
            target: target.to_string(),
            addrs,
            current: AtomicUsize::new(0),
            at,
            exhausted: AtomicBool::new(false),
        }
    }

    fn current(&self) -> SocketAddr {
        self.addrs[self.current.load(Ordering::Acquire) % self.addrs.len()]
    }
}

impl Resolver {
    /// The address to connect to for `target` (`host:port`); a lookup
    /// this request waits for gives up after `within`.
    pub async fn addr(self: &Arc<Self>, target: &str, within: Duration) -> Result<SocketAddr> {
        let last = self.last.load_full().filter(|r| r.target == target);
        if let Some(r) = &last {
            let Some(at) = r.at else {
                return Ok(r.current());
            };
            if !r.exhausted.load(Ordering::Acquire) {
                if at.elapsed() >= RESOLVE_EVERY && !self.looking_up.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    let target = target.to_string();
                    tokio::spawn(async move {
                        me.look_up(&target, within).await.ok();
                        me.looking_up.store(false, Ordering::Release);
                    });
                }
                return Ok(r.current());
            }
        }
        match self.look_up(target, within).await {
            Ok(addr) => Ok(addr),
            Err(e) => match last {
                Some(last) => Ok(last.current()),
                None => Err(e),
            },
        }
    }

    /// Connecting to `addr` for `target` failed: whether the request should
    /// try again (with the name's next address, or after looking it up
    /// again). An IP literal has nothing else to try; after a connect that
    /// `timed_out` only another address is worth the wait.
    pub fn connect_failed(&self, target: &str, addr: SocketAddr, timed_out: bool) -> bool {
        let Some(r) = self.last.load_full().filter(|r| r.target == target) else {
            return false;
        };
        if r.at.is_none() {
            return false;
        }
        let i = r.current.load(Ordering::Acquire) % r.addrs.len();
        if r.addrs[i] != addr {
            // Another request moved on already: try where it moved to.
            return true;
        }
        if i + 1 < r.addrs.len() {
            r.current.store(i + 1, Ordering::Release);
            return true;
        }
        r.current.store(0, Ordering::Release);
        r.exhausted.store(true, Ordering::Release);
        !timed_out
    }

    /// Look `target` up now and keep what it gives; a failure keeps what
    /// there was (and is not retried before [`RESOLVE_EVERY`]).
    async fn look_up(&self, target: &str, within: Duration) -> Result<SocketAddr> {
        let found = resolve(target, within).await;
        let last = self.last.load_full().filter(|r| r.target == target);
        let resolved = match (found, &last) {
            (Ok(r), Some(last)) => {
                // Keep connecting where connecting worked, if it is still listed.
                if let Some(i) = r.addrs.iter().position(|a| *a == last.current()) {
                    r.current.store(i, Ordering::Release);
                }
                r
            }
            (Ok(r), None) => r,
            (Err(e), Some(last)) => {
                warn!(upstream = target, error = %e, "upstream name did not resolve; using its last addresses");
                let kept = Resolved::new(target, last.addrs.clone(), Some(Instant::now()));
                kept.current
                    .store(last.current.load(Ordering::Acquire), Ordering::Release);
                kept
            }
            (Err(e), None) => return Err(e),
        };
        let addr = resolved.current();
        self.last.store(Some(Arc::new(resolved)));
        Ok(addr)
    }
}

/// `target`'s addresses: an IP literal parsed, a name looked up within `within`.
async fn resolve(target: &str, within: Duration) -> Result<Resolved> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(Resolved::new(target, vec![addr], None));
    }
    let failed = |why: String| {
        Error::explain(
            ErrorType::ConnectNoRoute,
            format!("upstream {target:?} did not resolve: {why}"),
        )
        .into_up()
    };
    let addrs: Vec<SocketAddr> = tokio::time::timeout(within, tokio::net::lookup_host(target))
        .await
        .map_err(|_| failed(format!("no answer within {within:?}")))?
        .map_err(|e| failed(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(failed("no address".into()));
    }
    Ok(Resolved::new(target, addrs, Some(Instant::now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITHIN: Duration = Duration::from_secs(5);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_literal_is_parsed_and_a_name_that_does_not_resolve_is_an_upstream_error() {
        let r = Arc::new(Resolver::default());
        assert_eq!(
            r.addr("127.0.0.1:3000", WITHIN).await.unwrap(),
            addr("127.0.0.1:3000")
        );
        assert!(!r.connect_failed("127.0.0.1:3000", addr("127.0.0.1:3000"), false));
        assert_eq!(r.addr("[::1]:80", WITHIN).await.unwrap(), addr("[::1]:80"));
        // RFC 6761: `.invalid` never resolves.
        let e = r.addr("app.invalid:3000", WITHIN).await.unwrap_err();
        assert_eq!(e.esource(), &pingora::ErrorSource::Upstream);
        assert!(e.to_string().contains("app.invalid"), "{e}");
        let local = r.addr("localhost:3000", WITHIN).await.unwrap();
        assert!(local.ip().is_loopback(), "{local}");
    }

    /// As if `target` had been resolved to `addrs`, `age` ago.
    fn resolved(r: &Resolver, target: &str, addrs: &[&str], age: Duration) {
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let addrs = addrs.iter().map(|a| addr(a)).collect();
        r.last
            .store(Some(Arc::new(Resolved::new(target, addrs, Some(at)))));
    }

    #[tokio::test]
    async fn a_failed_connect_moves_on_to_the_next_address_then_looks_up_again() {
        let r = Arc::new(Resolver::default());
        resolved(
            &r,
            "localhost:3000",
            &["[::1]:3000", "127.0.0.1:3000"],
            Duration::ZERO,
        );
        assert_eq!(
            r.addr("localhost:3000", WITHIN).await.unwrap(),
            addr("[::1]:3000")
        );
        assert!(r.connect_failed("localhost:3000", addr("[::1]:3000"), true));
        assert_eq!(
            r.addr("localhost:3000", WITHIN).await.unwrap(),
            addr("127.0.0.1:3000")
        );
        assert!(r.connect_failed("localhost:3000", addr("127.0.0.1:3000"), false));
        // Every address failed: the next connect looks the name up first.
        let last = r.last.load_full().unwrap();
        assert!(last.exhausted.load(Ordering::Acquire));
        r.addr("localhost:3000", WITHIN).await.unwrap();
        let again = r.last.load_full().unwrap();
        assert!(!Arc::ptr_eq(&last, &again), "looked up again");
        assert!(!again.exhausted.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let r = Arc::new(Resolver::default());
        resolved(
            &r,
            "app.invalid:3000",
            &["10.0.0.7:3000"],
            RESOLVE_EVERY * 2,
        );
        // Old: looked up again in the background, the old address meanwhile.
        assert_eq!(
            r.addr("app.invalid:3000", WITHIN).await.unwrap(),
            addr("10.0.0.7:3000")
        );
        // Exhausted: looked up now, which fails; the old address is kept.
        r.last
            .load_full()
            .unwrap()
            .exhausted
            .store(true, Ordering::Release);
        assert_eq!(
            r.addr("app.invalid:3000", WITHIN).await.unwrap(),
            addr("10.0.0.7:3000")
        );
        for _ in 0..100 {
            if !r.looking_up.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !r.looking_up.load(Ordering::Acquire),
            "the background lookup ended"
        );
    }
}
