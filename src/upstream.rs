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
//! blocking pool, within the connect timeout: while a request waits only
//! when nothing is known of it yet (one lookup at a time, in a task of its
//! own, and a failed one answered from memory for [`RETRY_AFTER`]),
//! otherwise in the background once its addresses are [`RESOLVE_EVERY`]
//! old, or [`RETRY_AFTER`] after connecting to each of them failed (an app
//! container replaced has a new address); requests meanwhile use the
//! addresses there are, and a lookup that fails keeps them (the app may
//! well still be there). A connect that failed other than by timing out is
//! tried again with the name's next address (`localhost` is often `::1`
//! first while the app listens on `127.0.0.1`). A name that never resolved
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

/// How soon a name is looked up again after a lookup, however it went,
/// when connecting to its addresses failed or it has none yet: an app
/// that is down must not turn every request into a DNS query.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The app's addresses, as last resolved (see the module's doc).
#[derive(Default)]
pub struct Resolver {
    last: ArcSwapOption<Resolved>,
    /// A background lookup is running: no other starts.
    looking_up: AtomicBool,
    /// Lookups a request waits for (a name not resolved yet) go one at a time.
    first: tokio::sync::Mutex<Option<Failed>>,
}

struct Resolved {
    /// What was resolved: the config's `upstream` (it can be reloaded).
    target: String,
    /// Never empty.
    addrs: Vec<SocketAddr>,
    /// The one connected to (the next, after a connect to it failed).
    current: AtomicUsize,
    /// When it was looked up; `None` for an IP literal, never looked up.
    at: Option<Instant>,
    /// Connecting to every address failed: look the name up again.
    exhausted: AtomicBool,
}

/// A name not resolved yet whose last lookup failed.
struct Failed {
    target: String,
    at: Instant,
    /// What the failed lookup said.
    message: String,
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

    /// Whether the name is due another lookup.
    fn due(&self) -> bool {
        self.at.is_some_and(|at| {
            let age = at.elapsed();
            age >= RESOLVE_EVERY || (age >= RETRY_AFTER && self.exhausted.load(Ordering::Acquire))
        })
    }
}

impl Resolver {
    /// The address to connect to for `target` (`host:port`). Only a name
    /// not resolved yet is looked up while the request waits (within
    /// `within`, one lookup at a time, and not again for [`RETRY_AFTER`]
    /// after one failed); otherwise the request takes the address there is
    /// and a lookup that is due runs in the background.
    pub async fn addr(self: &Arc<Self>, target: &str, within: Duration) -> Result<SocketAddr> {
        if let Some(r) = self.known(target) {
            if r.due() && !self.looking_up.swap(true, Ordering::AcqRel) {
                let me = self.clone();
                let target = target.to_string();
                tokio::spawn(async move {
                    me.look_up(&target, within).await.ok();
                    me.looking_up.store(false, Ordering::Release);
                });
            }
            return Ok(r.current());
        }
        // In a task of its own: a client that leaves does not cancel the
        // lookup (nor its remembered failure) for the requests behind it.
        let me = self.clone();
        let name = target.to_string();
        match tokio::spawn(async move { me.first_look_up(&name, within).await }).await {
            Ok(found) => found,
            Err(e) => Err(unresolved(target, format!("lookup task ended: {e}"))),
        }
    }

    /// The lookup of a name not resolved yet, one at a time.
    async fn first_look_up(&self, target: &str, within: Duration) -> Result<SocketAddr> {
        let mut failed = self.first.lock().await;
        // Resolved while this request waited its turn.
        if let Some(r) = self.known(target) {
            return Ok(r.current());
        }
        if let Some(f) = failed.as_ref() {
            if f.target == target && f.at.elapsed() < RETRY_AFTER {
                let again = Error::explain(ErrorType::ConnectNoRoute, f.message.clone());
                return Err(again.into_up());
            }
        }
        match self.look_up(target, within).await {
            Ok(addr) => {
                *failed = None;
                Ok(addr)
            }
            Err(error) => {
                *failed = Some(Failed {
                    target: target.to_string(),
                    at: Instant::now(),
                    message: error
                        .context
                        .as_ref()
                        .map(|c| c.as_str().to_string())
                        .unwrap_or_default(),
                });
                Err(error)
            }
        }
    }

    fn known(&self, target: &str) -> Option<Arc<Resolved>> {
        self.last.load_full().filter(|r| r.target == target)
    }

    /// Connecting to `addr` for `target` failed: whether the request should
    /// try again, with the name's next address. Only a connect that failed
    /// `at_once` (refused, no route, an address this host cannot use) is
    /// tried again: after one that timed out the client has waited long
    /// enough. Once every address failed, the name is looked up again (in
    /// the background, see [`Resolver::addr`]).
    pub fn connect_failed(&self, target: &str, addr: SocketAddr, at_once: bool) -> bool {
        let Some(r) = self.known(target).filter(|r| r.at.is_some()) else {
            return false;
        };
        let i = r.current.load(Ordering::Acquire) % r.addrs.len();
        if r.addrs[i] != addr {
            // Another request moved on already: try where it moved to.
            return at_once;
        }
        if i + 1 < r.addrs.len() {
            r.current.store(i + 1, Ordering::Release);
            return at_once;
        }
        r.current.store(0, Ordering::Release);
        r.exhausted.store(true, Ordering::Release);
        false
    }

    /// Look `target` up now and keep what it gives; a failure keeps what
    /// there was (and counts as a lookup: the next is not due before
    /// [`RETRY_AFTER`] or [`RESOLVE_EVERY`]).
    async fn look_up(&self, target: &str, within: Duration) -> Result<SocketAddr> {
        let found = resolve(target, within).await;
        let last = self.known(target);
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
    let failed = |why: String| unresolved(target, why);
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

/// The error of a name that does not resolve: the app could not be reached (502).
fn unresolved(target: &str, why: String) -> Box<Error> {
    Error::explain(
        ErrorType::ConnectNoRoute,
        format!("upstream {target:?} did not resolve: {why}"),
    )
    .into_up()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short: `.invalid` fails at once where DNS answers, and a resolver
    /// that does not answer must not hold a test up.
    const WITHIN: Duration = Duration::from_millis(500);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// As if `target` had been resolved to `addrs`, `age` ago.
    fn resolved(r: &Resolver, target: &str, addrs: &[&str], age: Duration) {
        let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let addrs = addrs.iter().map(|a| addr(a)).collect();
        r.last
            .store(Some(Arc::new(Resolved::new(target, addrs, Some(at)))));
    }

    /// Until no background lookup runs (or 5 s).
    async fn settled(r: &Resolver) {
        for _ in 0..250 {
            if !r.looking_up.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("a background lookup did not end");
    }

    #[tokio::test]
    async fn a_literal_is_parsed_and_a_name_that_does_not_resolve_is_an_upstream_error() {
        let r = Arc::new(Resolver::default());
        let literal = r.addr("127.0.0.1:3000", WITHIN).await.unwrap();
        assert_eq!(literal, addr("127.0.0.1:3000"));
        assert!(!r.connect_failed("127.0.0.1:3000", literal, true));
        assert_eq!(r.addr("[::1]:80", WITHIN).await.unwrap(), addr("[::1]:80"));
        // RFC 6761: `.invalid` never resolves.
        let e = r.addr("app.invalid:3000", WITHIN).await.unwrap_err();
        assert_eq!(e.esource(), &pingora::ErrorSource::Upstream);
        assert!(e.to_string().contains("app.invalid"), "{e}");
        // Not looked up again at once: the same answer, from memory.
        let at = r.first.lock().await.as_ref().map(|f| f.at);
        let again = r.addr("app.invalid:3000", WITHIN).await.unwrap_err();
        assert_eq!(again.to_string(), e.to_string());
        assert_eq!(r.first.lock().await.as_ref().map(|f| f.at), at);
    }

    #[tokio::test]
    async fn a_failed_connect_moves_on_to_the_next_address_then_the_name_is_due() {
        let r = Arc::new(Resolver::default());
        let (v6, v4) = (addr("[::1]:3000"), addr("127.0.0.1:3000"));
        resolved(
            &r,
            "app.invalid:3000",
            &["[::1]:3000", "127.0.0.1:3000"],
            RETRY_AFTER,
        );
        assert_eq!(r.addr("app.invalid:3000", WITHIN).await.unwrap(), v6);
        // Refused at once: the request tries the next address.
        assert!(r.connect_failed("app.invalid:3000", v6, true));
        assert_eq!(r.addr("app.invalid:3000", WITHIN).await.unwrap(), v4);
        // The last one too: no retry; the name is due another lookup.
        assert!(!r.connect_failed("app.invalid:3000", v4, true));
        let last = r.known("app.invalid:3000").unwrap();
        assert!(last.due());
        // The next request starts it in the background and connects meanwhile.
        assert_eq!(r.addr("app.invalid:3000", WITHIN).await.unwrap(), v6);
        settled(&r).await;
        // It failed: the addresses are kept, and not due again for a while.
        let after = r.known("app.invalid:3000").unwrap();
        assert!(!Arc::ptr_eq(&last, &after), "looked up again");
        assert_eq!(after.addrs, last.addrs);
        assert!(!after.due());
    }

    #[tokio::test]
    async fn a_timed_out_connect_is_not_tried_again() {
        let r = Arc::new(Resolver::default());
        resolved(
            &r,
            "app.invalid:3000",
            &["10.0.0.7:3000", "10.0.0.8:3000"],
            Duration::ZERO,
        );
        assert!(!r.connect_failed("app.invalid:3000", addr("10.0.0.7:3000"), false));
        // The next request takes the next address all the same.
        assert_eq!(
            r.addr("app.invalid:3000", WITHIN).await.unwrap(),
            addr("10.0.0.8:3000")
        );
    }

    #[tokio::test]
    async fn a_name_is_looked_up_again_every_few_seconds_in_the_background() {
        let r = Arc::new(Resolver::default());
        resolved(&r, "localhost:3000", &["10.0.0.7:3000"], RESOLVE_EVERY * 2);
        // Old: this request keeps the old address; the lookup runs beside it.
        assert_eq!(
            r.addr("localhost:3000", WITHIN).await.unwrap(),
            addr("10.0.0.7:3000")
        );
        settled(&r).await;
        let now = r.addr("localhost:3000", WITHIN).await.unwrap();
        assert!(now.ip().is_loopback(), "{now}");
    }
}
