//! Wiring: builds the pingora server from a validated [`Config`] and runs it.
//!
//! Services, each on its own runtime: the proxy, the admin listener, the Redis
//! maintainer (when Redis is configured) and, in bounded mode, its follower;
//! background tasks for monitoring, config reload (with a config file), flag sync (with Redis)
//! and start-up warming; and, for `freshgate demo`, the demo app.
//!
//! Shutdown comes from SIGTERM or SIGINT (both graceful): keep accepting
//! and serving for `shutdown.grace_period` while `/readyz` says "draining"
//! (the load balancer takes the replica out), then close the listeners and
//! give requests in flight `shutdown.timeout`. A second signal cuts the first
//! phase short.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tracing::info;

use crate::admin::Admin;
use crate::config::{Config, Overrides};
use crate::demo::DemoApp;
use crate::fill_lock::FillLock;
use crate::flags::{Flag, Flags};
use crate::listen::ListenError;
use crate::monitor::Monitor;
use crate::prefetch::Prefetcher;
use crate::proxy::Proxy;
use crate::reload::{LiveConfig, Triggers};
use crate::store::redis::{Consistency, Limits, RedisTier};
use crate::store::Store;

/// The demo app to run beside the proxy (or alone).
pub struct Demo {
    pub listen: SocketAddr,
    pub delay: Duration,
    pub origin_only: bool,
}

/// Everything `run` needs, validated by `main`.
pub struct Setup {
    pub config: Config,
    pub flags: Flags,
    /// Command-line values, re-applied on every reload.
    pub overrides: Overrides,
    /// What reloads the config file: set up by `main` before it read the
    /// file; none without a file (and for the demo app alone).
    pub reload: Option<Triggers>,
    pub demo: Option<Demo>,
}

pub fn run(setup: Setup) -> Result<(), ListenError> {
    let Setup {
        config,
        flags,
        overrides,
        reload,
        demo,
    } = setup;
    let origin_only = demo.as_ref().is_some_and(|d| d.origin_only);
    let mut listeners = Vec::new();
    if let Some(d) = &demo {
        listeners.push(("demo app", d.listen));
    }
    if !origin_only {
        listeners.push(("proxy", config.listen));
        listeners.push(("admin listener", config.admin_listen));
    }
    crate::listen::claim(&listeners, config.grace_period)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let grace = config.grace_period;
    let conf = ServerConf {
        threads,
        // pingora closes the listeners as soon as the shutdown signal
        // returns, then waits this long for requests in flight: our
        // `shutdown.timeout`, in whole seconds rounded up (a 500ms timeout
        // must not become none). (`TermOrInt` keeps serving for the grace
        // period before it returns.)
        grace_period_seconds: Some(config.shutdown_timeout.as_secs_f64().ceil() as u64),
        // Then the runtimes are dropped (whatever still runs is cancelled).
        graceful_shutdown_timeout_seconds: Some(1),
        // Enough idle connections to the app for a busy sidecar.
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    if let Some(d) = &demo {
        let mut svc = Service::new(
            "demo app".to_string(),
            HttpServer::new_app(DemoApp::new(d.delay)),
        );
        svc.add_tcp(&d.listen.to_string());
        server.add_service(svc);
        info!(listen = %d.listen, delay_ms = d.delay.as_millis() as u64, "demo app");
        if d.origin_only {
            // No proxy, no config to reload: `main` holds no SIGHUP for it.
            debug_assert!(reload.is_none(), "SIGHUP held with nothing to reload");
            server.run(RunArgs {
                shutdown_signal: Box::new(TermOrInt { grace }),
            });
            return Ok(());
        }
    }

    let monitor_redis;
    let redis = config.redis.as_ref().map(|r| {
        let limits = Limits {
            timeout: r.timeout,
            inv_ttl: config.max_ttl + crate::store::clock::LIFETIME_MARGIN,
            // Its writer lifts a fence within twice the write timeout (an
            // answer given up on waits one more); past that, any replica may.
            fence_ttl: config.write_timeout * 2 + Duration::from_secs(5),
        };
        Arc::new(RedisTier::new(r.url.clone(), limits, r.consistency))
    });
    let store: &'static Store = Box::leak(Box::new(Store::new(
        config.memory_max_bytes,
        redis.clone(),
        config.max_ttl,
        config.write_timeout,
    )));
    let lock: &'static CacheKeyLockImpl = Box::leak(Box::new(FillLock::new(config.lock_timeout)));
    monitor_redis = redis.clone();
    if let Some(tier) = redis {
        if tier.consistency() == Consistency::Bounded {
            server.add_service(background_service(
                "invalidation follower",
                InvalidationFollower(tier.clone()),
            ));
        }
        server.add_service(background_service("redis", RedisMaintainer(tier)));
    }
    let has_redis = config.redis.is_some();

    let listen = config.listen;
    let admin_listen = config.admin_listen;
    info!(%listen, upstream = %config.upstream.addr, admin = %admin_listen,
        store = if config.redis.is_some() { "redis" } else { "embedded" }, "freshgate starting");
    let monitor = Arc::new(Monitor::new(
        crate::monitor::replica_name(listen.port()),
        config.monitoring.clone(),
        monitor_redis,
    ));
    let live = Arc::new(LiveConfig::new(config, flags, overrides, store));
    server.add_service(background_service(
        "monitor",
        MonitorLoop {
            monitor: monitor.clone(),
            live: live.clone(),
            store,
        },
    ));
    if let Some(triggers) = reload {
        server.add_service(background_service(
            "config watcher",
            ConfigWatcher {
                live: live.clone(),
                triggers: parking_lot::Mutex::new(Some(triggers)),
            },
        ));
    }
    if has_redis {
        server.add_service(background_service(
            "flag sync",
            FlagSync {
                live: live.clone(),
                store,
            },
        ));
    }

    let prefetch = Arc::new(Prefetcher::new(listen));
    server.add_service(background_service(
        "warmer",
        Warmer {
            prefetch: prefetch.clone(),
            live: live.clone(),
            store,
        },
    ));
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy {
            live: live.clone(),
            monitor: monitor.clone(),
            store,
            lock,
            prefetch: prefetch.clone(),
            upstream: Default::default(),
        },
        "proxy",
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);

    let mut admin = Service::new(
        "admin".to_string(),
        Admin {
            store,
            live,
            monitor,
            started: std::time::Instant::now(),
            warm: Default::default(),
            prefetch,
        },
    );
    admin.add_tcp(&admin_listen.to_string());
    server.add_service(admin);

    server.run(RunArgs {
        shutdown_signal: Box::new(TermOrInt { grace }),
    });
    info!("freshgate stopped");
    Ok(())
}

struct ConfigWatcher {
    live: Arc<LiveConfig>,
    /// Taken by the one `start` pingora makes.
    triggers: parking_lot::Mutex<Option<Triggers>>,
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(triggers) = self.triggers.lock().take() else {
            return;
        };
        crate::reload::watch(self.live.clone(), triggers, shutdown).await;
    }
}

/// Follows runtime flag flips made on any replica (stored in Redis).
struct FlagSync {
    live: Arc<LiveConfig>,
    store: &'static Store,
}

#[async_trait]
impl BackgroundService for FlagSync {
    async fn start(&self, shutdown: ShutdownWatch) {
        if let Some(redis) = self.store.redis() {
            self.live.flags.follow(redis, shutdown).await;
        }
    }
}

/// How often a replica adds its counters to the fleet-wide ones in Redis.
const MONITOR_FLUSH_EVERY: Duration = Duration::from_secs(5);

/// How long warming waits for the proxy listener, then for the Redis tier.
const WARM_WAIT: Duration = Duration::from_secs(10);

/// Checks `ready` every 50 ms until it holds (true) or `limit` has passed.
async fn poll_until<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut ready: impl FnMut() -> F,
) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if ready().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetches the config's `warm:` paths once, when the proxy listener is up.
struct Warmer {
    prefetch: Arc<Prefetcher>,
    live: Arc<LiveConfig>,
    store: &'static Store,
}

#[async_trait]
impl BackgroundService for Warmer {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let config = self.live.config();
        if config.warm.paths.is_empty() || !self.live.flags.get(Flag::Cache, &config.flags) {
            return;
        }
        if !poll_until(WARM_WAIT, || self.prefetch.listening()).await {
            tracing::warn!("not warming: the proxy listener did not come up within 10 s");
            return;
        }
        // With Redis, fetches made before the tier connects pass through
        // uncached: give it the same time to come up (then warm regardless).
        poll_until(WARM_WAIT, || async { self.store.usable() }).await;
        info!(paths = config.warm.paths.len(), host = %config.warm.host, "warming");
        self.prefetch
            .warm(&config.warm.host, config.warm.scheme, &config.warm.paths)
            .await;
    }
}

/// Evaluates alerts every `monitoring.evaluate_every` and flushes counters
/// to Redis, following config reloads.
struct MonitorLoop {
    monitor: Arc<Monitor>,
    live: Arc<LiveConfig>,
    store: &'static Store,
}

#[async_trait]
impl BackgroundService for MonitorLoop {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_flush = std::time::Instant::now();
        loop {
            let config = self.live.config();
            self.monitor.set_config(&config.monitoring);
            if self.live.flags.get(Flag::Monitoring, &config.flags) {
                let (raised, cleared) = self
                    .monitor
                    .evaluate(&crate::admin::alert_state(self.store, &self.live));
                if raised + cleared > 0 {
                    info!(raised, cleared, "alerts changed");
                }
            }
            if last_flush.elapsed() >= MONITOR_FLUSH_EVERY {
                self.monitor.flush().await;
                last_flush = std::time::Instant::now();
            }
            let tick = config.monitoring.evaluate_every.min(MONITOR_FLUSH_EVERY);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => {
                    // What was counted since the last flush still reaches Redis.
                    self.monitor.flush().await;
                    return;
                }
            }
        }
    }
}

struct InvalidationFollower(Arc<RedisTier>);

#[async_trait]
impl BackgroundService for InvalidationFollower {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.clone().follow_invalidations(shutdown).await;
    }
}

struct RedisMaintainer(Arc<RedisTier>);

#[async_trait]
impl BackgroundService for RedisMaintainer {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.clone().maintain(shutdown).await;
    }
}

/// Pingora treats SIGINT as "stop now"; for a sidecar both SIGTERM (Kubernetes)
/// and SIGINT (Ctrl-C, `docker stop` variants) should drain gracefully.
/// SIGTERM or SIGINT, reported to pingora only after `grace`: until then
/// the replica keeps accepting (a load balancer still sends to it until it
/// sees `/readyz` fail or the endpoint removed).
struct TermOrInt {
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for TermOrInt {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            // Without signal handlers we can only wait forever; the process
            // still stops on SIGKILL.
            std::future::pending::<()>().await;
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        crate::admin::start_draining();
        info!(
            grace_ms = self.grace.as_millis() as u64,
            "shutdown: still serving (readyz: draining), then closing the listeners"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.grace) => {}
            _ = term.recv() => info!("second signal: closing the listeners now"),
            _ = int.recv() => info!("second signal: closing the listeners now"),
        }
        ShutdownSignal::GracefulTerminate
    }
}
