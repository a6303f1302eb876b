//! Start-up: every listen address (proxy, admin listener, demo app) bound
//! before pingora binds it.
//!
//! pingora retries a taken address for 30 s and then panics inside its
//! service thread, and the process runs on without that listener, its admin
//! port answering `/readyz` with 200. Found here, a taken address is waited
//! for a while (a freshgate just stopped still drains) and is then an error
//! that ends the start, naming the address, our listener's role and the
//! OS's reason (docs/operations.md, Troubleshooting).

use std::net::SocketAddr;
use std::time::Duration;

use tracing::warn;

use crate::config::same_socket;

/// A listen address that cannot be bound: taken by another process, not
/// on this host, or a port this user may not open.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (the {role}): {source}")]
pub struct ListenError {
    pub role: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// How long a taken listen address is tried again before start-up fails,
/// at the least. A freshgate just stopped on this host keeps its listeners
/// for its `shutdown.grace_period`: with the same config, the wait is that
/// plus a few seconds when it is longer.
const LISTEN_RETRY_FOR: Duration = Duration::from_secs(10);

/// Checks `listeners` (role, address) before pingora binds them: two of
/// ours on one socket are an error at once; a taken address is tried again
/// (see `check_listeners`) for `LISTEN_RETRY_FOR`, or `grace_period`
/// and a few seconds when that is longer. From here on, a listener pingora
/// fails to bind ends the process.
pub fn claim(
    listeners: &[(&'static str, SocketAddr)],
    grace_period: Duration,
) -> Result<(), ListenError> {
    // Two of ours on one socket would wait for each other in vain.
    for (i, &(role, addr)) in listeners.iter().enumerate() {
        if let Some(&(other, _)) = listeners[..i].iter().find(|(_, a)| same_socket(*a, addr)) {
            let source = std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("it is the {other}'s address"),
            );
            return Err(ListenError { role, addr, source });
        }
    }
    check_listeners(
        listeners,
        LISTEN_RETRY_FOR.max(grace_period + Duration::from_secs(5)),
    )?;
    exit_if_a_listener_fails();
    Ok(())
}

/// Binds every listen address and holds them all (so that two of ours on
/// one socket are found too), then lets them go for pingora to bind for
/// real. While an address is taken, nothing is held (a client would
/// connect to a socket nobody answers) and all are tried again each second
/// until `retry_for` has passed. An address taken only by another of ours
/// (`[::]` takes IPv4 too on a dual-stack host) is an error at once.
///
/// Should an address be taken in the moment between this check and
/// pingora's bind, pingora's 30 s of retries come back, and
/// [`exit_if_a_listener_fails`] ends the process after them. std sets
/// `SO_REUSEADDR` as pingora does, so an address held only by closing
/// connections passes here as it would there.
fn check_listeners(
    listeners: &[(&'static str, SocketAddr)],
    retry_for: Duration,
) -> Result<(), ListenError> {
    let end = std::time::Instant::now() + retry_for;
    let bind = std::net::TcpListener::bind;
    'again: loop {
        let mut held = Vec::with_capacity(listeners.len());
        for &(role, addr) in listeners {
            let source = match bind(addr) {
                Ok(l) => {
                    held.push(l);
                    continue;
                }
                Err(e) => e,
            };
            if source.kind() != std::io::ErrorKind::AddrInUse {
                return Err(ListenError { role, addr, source });
            }
            // One of ours on its port, and it binds alone: the clash is ours
            // (another process letting it go just now is not ruled out,
            // but then it held the port of one of our own listeners too).
            let ours = held
                .iter()
                .any(|l| l.local_addr().is_ok_and(|a| a.port() == addr.port()));
            drop(held);
            if ours && bind(addr).is_ok() {
                let source = std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "it overlaps another of freshgate's listen addresses",
                );
                return Err(ListenError { role, addr, source });
            }
            if std::time::Instant::now() >= end {
                return Err(ListenError { role, addr, source });
            }
            warn!(%addr, role, "address in use; trying again");
            std::thread::sleep(Duration::from_secs(1));
            continue 'again;
        }
        return Ok(());
    }
}

/// pingora panics in a service's own thread when it cannot bind its
/// listener, and the process runs on without it: exit instead.
fn exit_if_a_listener_fails() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with("Failed to build listeners")) {
            std::process::exit(1);
        }
    }));
}
