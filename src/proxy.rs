//! The request path: freshgate's `ProxyHttp` implementation.
//!
//! Read this file top to bottom to follow one request. The callbacks appear in
//! the order pingora calls them:
//!
//! 1. `request_filter` takes the config snapshot this request will use and
//!    the request's canonical form (see `canonical`): the one path and method
//!    set that the key, route rules, tags and write rules all read.
//!    It also decides whether the cache may be used at all (`may_use_cache`:
//!    GET/HEAD, `cache` flag on, route enabled, no credentials the rule does
//!    not key, store usable) and answers a fresh memory hit itself (`hit`).
//! 2. `request_cache_filter` then enables pingora-cache for the rest;
//!    anything that may not use the cache goes straight to the app.
//! 3. `cache_key_callback` / `cache_vary_filter` build the key: scheme, host,
//!    normalized path, sorted query, the rule's keyed headers and cookies, and
//!    the request headers the response `Vary`s on.
//! 4. On a miss, `upstream_peer` + `upstream_request_filter` forward the request
//!    with its canonical path (with `X-Forwarded-*`, without headers that would
//!    change the response without being part of the key).
//!    Just before, `proxy_upstream_filter` consults the invalidation log: a
//!    read notes the clock (what it stores is stale once any of its tags is
//!    invalidated later), a write *fences* what it may change (see `writes`
//!    and `Store::begin_write`).
//! 5. `response_cache_filter` decides whether the app's answer may be stored
//!    (RFC 9111 plus the safety rules), and with which freshness.
//! 6. `response_filter` ends a write with its final answer: invalidates what
//!    it changed and lifts its fence (before the client hears back) and, with
//!    the `prefetch` flag, starts refetching the exact paths it purged (see
//!    `prefetch`); then labels every response with `X-Cache` and
//!    `Cache-Status`.
//! 7. `logging` counts it (freshgate's own background fetches are not
//!    client traffic: not counted), and ends a write whose answer never came
//!    (the client or the app went away): it stays fenced while the app may
//!    still commit it, then is invalidated.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use http::{header, Method, StatusCode};
use pingora::cache::key::CacheHashKey;
use pingora::cache::lock::CacheKeyLockImpl;
use pingora::cache::{
    CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::Peer;

use crate::bypass::{self, Bypass};
use crate::cachekey;
use crate::canonical::{self, Canonical};
use crate::config::{Config, UnrecordedWrite};
use crate::fill_lock;
use crate::flags::Flag;
use crate::forwarding;
use crate::hit;
use crate::host::{self, Host};
use crate::invalidation;
use crate::metrics::{self, method_label, METRICS};
use crate::monitor::series::Kind;
use crate::monitor::{Event, Monitor};
use crate::outcome::Outcome;
use crate::prefetch::{self, Prefetcher};
use crate::reload::LiveConfig;
use crate::rules::Rule;
use crate::storable::{self, NotStored};
use crate::store::{Ended, FillInfo, FillStart, HandOver, Store, Tags};
use crate::upstream::Resolver;
use crate::writes::{self, Answering, InFlight};
use tracing::warn;

/// How long a connection to the app may wait in the pool: under common
/// app servers' keep-alive timeouts (Node: 5 s; gunicorn: 2 s is its
/// shortest default).
const UPSTREAM_IDLE: Duration = Duration::from_millis(1500);

pub struct Proxy {
    pub live: Arc<LiveConfig>,
    pub monitor: Arc<Monitor>,
    pub store: &'static Store,
    pub lock: &'static CacheKeyLockImpl,
    pub prefetch: Arc<Prefetcher>,
    /// The app's address, resolved off the request path.
    pub upstream: Arc<Resolver>,
}

pub struct Ctx {
    config: Arc<Config>,
    /// What the request means; set by `request_filter`, before anything else.
    request: Option<Canonical>,
    /// The host it names, validated and normalised (set with `request`).
    host: Option<Host>,
    /// The scheme the client used (see `forwarding::scheme`); keyed.
    scheme: &'static str,
    /// Whether the peer is a trusted proxy (its forwarding headers believed).
    peer_trusted: bool,
    rule: Option<Arc<Rule>>,
    /// The cache may be used (a GET/HEAD with no reason to bypass it).
    use_cache: bool,
    /// The cache key, once built (see `cache_key_callback`).
    key: Option<CacheKey>,
    /// Why a GET/HEAD skipped the cache before lookup.
    bypass: Option<Bypass>,
    /// Why the app's response was not stored.
    not_stored: Option<NotStored>,
    /// The app's 304 to a revalidation, to freshen the stored header with.
    /// Boxed, as `write` is: both are rare, and a `Ctx` is moved with every
    /// request's future (which pingora boxes whole, several KB, per request).
    not_modified: Option<Box<ResponseHeader>>,
    /// That 304's Date, for the answer when the result is not stored.
    revalidated_date: Option<http::HeaderValue>,
    /// Fields a write's answer listed in `Connection`: removed once the
    /// write has been ended with them.
    hop_listed: Vec<String>,
    outcome: Outcome,
    /// When `request_filter` began (not `new_ctx`: that may run before a
    /// keep-alive connection's next request arrives).
    started: Option<Instant>,
    upstream_started: Option<Instant>,
    /// Connects tried again (see `fail_to_connect`).
    connect_retries: u8,
    /// A miss: the invalidation log, read before the fetch went to the app,
    /// and the tags the request alone gives the response.
    fill: Option<FillStart>,
    read_tags: Vec<String>,
    /// A write, from before it is forwarded until its outcome is known.
    write: Option<Box<InFlight>>,
    /// A write whose answer's body is still being forwarded, fenced until
    /// it has been (see `writes::Answering`).
    answering: Option<Box<Answering>>,
    /// Made by freshgate itself — a refetch or warming fetch (see
    /// `prefetch`) or pingora's stale-while-revalidate refresh — not by a
    /// client: not counted as client traffic.
    background: bool,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    /// None. pingora's default adds a response-compression module, disabled,
    /// that is still built and called for every request; freshgate does not
    /// compress (the app's encoding is stored as sent, keyed by its `Vary`).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            config: self.live.config(),
            request: None,
            host: None,
            scheme: "http",
            peer_trusted: false,
            rule: None,
            use_cache: false,
            key: None,
            bypass: None,
            not_stored: None,
            not_modified: None,
            revalidated_date: None,
            hop_listed: Vec::new(),
            outcome: Outcome::Pass,
            started: None,
            upstream_started: None,
            connect_retries: 0,
            fill: None,
            read_tags: Vec::new(),
            write: None,
            answering: None,
            background: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // new_ctx may run before a keep-alive connection's next request arrives;
        // take the config that is current now.
        ctx.config = self.live.config();
        ctx.started = Some(Instant::now());
        ctx.key = None;
        // Slow clients hold a connection only so long per stalled read or
        // write (the request header itself: see docs/reliability.md).
        let timeouts = ctx.config.timeouts;
        let downstream = session.as_downstream_mut();
        downstream.set_read_timeout(Some(timeouts.client_read));
        downstream.set_write_timeout(Some(timeouts.client_write));
        ctx.peer_trusted = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .is_some_and(|a| ctx.config.trusted_proxies.contains(a.ip()));
        ctx.background = session.subrequest_ctx.is_some()
            || self
                .prefetch
                .is_refetch(session.req_header().headers.get(prefetch::HEADER));
        if !ctx.peer_trusted && !ctx.background {
            // Gone from the request itself, so that a background refresh
            // made from it (stale-while-revalidate) reads the same scheme.
            session.req_header_mut().remove_header("x-forwarded-proto");
        }
        let req = session.req_header();
        // A refetch, warming fetch or background refresh states the scheme
        // of the request it refills (it comes from loopback, which need not
        // be trusted, or is a copy of a request already read).
        ctx.scheme = forwarding::scheme(req, ctx.peer_trusted || ctx.background);
        if !canonical::target_is_usable(req) {
            // Not valid UTF-8 (RFC 9112 §3.2 targets are ASCII), or neither
            // origin-form, absolute-form nor `*`: the app and the key could
            // not agree on what it names.
            respond_bad_request(session, "invalid request target").await?;
            return Ok(true);
        }
        match host::of_request(req, ctx.scheme, &ctx.config.upstream.host) {
            Ok(host) => ctx.host = Some(host),
            Err(e) => {
                respond_bad_request(session, &e.to_string()).await?;
                return Ok(true);
            }
        }
        let req = session.req_header();
        let request = Canonical::new(req, &ctx.config.paths, &ctx.config.method_override);
        if let Some(reason) = writes::refused(&request) {
            // Forwarded, it could only be planned as "everything": a 400
            // changes nothing, where that would let one request empty the
            // cache.
            respond_bad_request(session, reason).await?;
            return Ok(true);
        }
        ctx.rule = ctx.config.routes.lookup(&request.route).cloned();
        ctx.request = Some(request);
        ctx.use_cache = self.may_use_cache(session.req_header(), ctx);
        if ctx.use_cache && self.answer_fresh_hit(session, ctx).await? {
            return Ok(true);
        }
        Ok(false)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if !ctx.use_cache {
            return Ok(());
        }
        let mut overrides = pingora::cache::CacheOptionOverrides::default();
        overrides.wait_timeout = Some(ctx.config.lock_timeout);
        overrides.max_lock_retries = Some(fill_lock::MAX_WAITS);
        session
            .cache
            .enable(self.store, None, None, Some(self.lock), Some(overrides));
        session
            .cache
            .set_max_file_size_bytes(ctx.config.max_object_bytes as usize);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        // Built already when `answer_fresh_hit` looked for a fresh hit.
        if let Some(key) = ctx.key.take() {
            return Ok(key);
        }
        let Some(request) = &ctx.request else {
            return Error::e_explain(ErrorType::InternalError, "no canonical request");
        };
        let Some(host) = &ctx.host else {
            return Error::e_explain(ErrorType::InternalError, "no validated host");
        };
        let primary = cachekey::primary(
            session.req_header(),
            request,
            ctx.scheme,
            host,
            ctx.rule.as_deref(),
            &ctx.config.namespace,
        );
        let mut key = CacheKey::new(primary, "");
        // Hashed once: pingora-cache hashes a key (BLAKE2b over all of it)
        // each time it asks for the hash — to look up, lock, unlock and
        // store — four or more times for a miss. The override is that same
        // hash, so every lookup finds what it found before.
        key.set_primary_bin_override(key.primary_bin());
        Ok(key)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut pingora::cache::storage::HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<pingora::cache::ForcedFreshness>> {
        // With `cache.request_cache_control`, a client may ask for fresher
        // than the entry (it is then revalidated with the app).
        if is_fresh && ctx.config.request_cache_control {
            let fresh_for = meta
                .fresh_until()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if storable::client_wants_fresher(session.req_header(), meta.age(), fresh_for) {
                return Ok(Some(pingora::cache::ForcedFreshness::ForceExpired));
            }
        }
        Ok(None)
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Ctx) {
        if session.req_header().method != Method::HEAD {
            session.cache.cache_miss();
            return;
        }
        // A HEAD does not fill the entry itself: its client reads no body,
        // and pingora 0.9 abandons the fill of a chunked answer when the
        // downstream is done (the entry was reported stored and never was).
        // It passes through as a HEAD, and the entry is filled by a GET in
        // the background (as other caches do), where that GET carries all
        // the key needs: no keyed headers or cookies, and no credentials
        // (an anonymous GET would fill the anonymous entry, not this one).
        session
            .cache
            .disable(NoCacheReason::Custom(NotStored::HeadMiss.as_str()));
        ctx.not_stored = Some(NotStored::HeadMiss);
        let keyless = ctx
            .rule
            .as_ref()
            .is_none_or(|r| r.key_headers.is_empty() && r.key_cookies.is_empty())
            && !cachekey::unkeyed_authorization(session.req_header(), ctx.rule.as_deref());
        if let (true, Some(host), Some(request)) = (keyless, &ctx.host, &ctx.request) {
            let target = request.forward_target(session.req_header());
            self.prefetch
                .refetch(host.as_str(), ctx.scheme, vec![target]);
        }
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<pingora::cache::key::HashBinary> {
        let mut names: Vec<String> = meta
            .headers()
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return None;
        }
        names.sort();
        names.dedup();
        let mut vb = VarianceBuilder::new();
        for name in names {
            if name == "accept-encoding" {
                let v = cachekey::accept_encoding_variance(&req.headers);
                vb.add_owned_name_value(name, v.into_bytes());
                continue;
            }
            if name == "cookie" {
                // The cookies the app was sent (keyed ones only, unless the
                // rule keys the whole header): ignored ones (`_ga`, different
                // for every visitor) must not make a variant per visitor.
                let rule = ctx.rule.as_deref();
                let whole = rule.is_some_and(|r| r.key_headers.iter().any(|h| h == "cookie"));
                let v = if whole {
                    cachekey::vary_value(&name, req.headers.get_all(header::COOKIE).iter())
                } else {
                    rule.and_then(|r| cachekey::keyed_cookie_header(req, r))
                        .unwrap_or_default()
                        .into_bytes()
                };
                vb.add_owned_name_value(name, v);
                continue;
            }
            let value = cachekey::vary_value(&name, req.headers.get_all(name.as_str()).iter());
            vb.add_owned_name_value(name, value);
        }
        vb.finalize()
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(request) = &ctx.request else {
            return Ok(true);
        };
        if request.methods.is_write() {
            return Box::pin(self.begin_write(session, ctx)).await;
        }
        // The log is read *before* the fetch begins: any invalidation after
        // this point makes what we are about to store unservable.
        if session.cache.enabled() {
            // Every reading's: a write through any of them purges it.
            ctx.read_tags = ctx
                .config
                .invalidation
                .tags_for_reads(request.tagged_routes());
            ctx.fill = self.store.fill_start(&ctx.read_tags).await;
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.upstream_started = Some(Instant::now());
        let timeouts = ctx.config.timeouts;
        let addr = (self.upstream)
            .addr(&ctx.config.upstream.addr, timeouts.upstream_connect)
            .await?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(timeouts.upstream_connect);
        // Pooled connections are closed before the app's own keep-alive
        // timer can (Node's, Next.js's, is 5 s): a write sent on a connection
        // the app is closing is not sent again (see `error_while_proxy`).
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        peer.options.read_timeout = Some(if ctx.write.is_some() {
            // Past this the write's answer is given up on (and the write
            // invalidated once the app can no longer commit it).
            self.store.write_timeout()
        } else {
            timeouts.upstream_read
        });
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The app named by a host name with several addresses: the next one
        // (see `upstream`), at most twice per request, and not after a
        // connect that timed out (the client has waited long enough).
        // Whatever the error (refused, no route, an address this host cannot
        // use), nothing was sent to the app, so a write may try again too.
        let at_once = e.etype() != &ErrorType::ConnectTimedout;
        if ctx.connect_retries < 2 {
            if let Some(addr) = peer.address().as_inet() {
                let target = &ctx.config.upstream.addr;
                if (self.upstream).connect_failed(target, *addr, at_once) {
                    ctx.connect_retries += 1;
                    e.set_retry(true);
                }
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // pingora sends an idempotent request again when a reused connection
        // to the app fails mid-exchange. A write may have been applied by
        // then: a PUT or DELETE done twice answers differently (a DELETE's
        // second answer is a 404), and a GET that names POST in an override
        // is not idempotent at all. A write is sent once, as a POST is.
        let is_write =
            ctx.write.is_some() || ctx.request.as_ref().is_some_and(|r| r.methods.is_write());
        if is_write
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(write) = &mut ctx.write {
            write.reached_app = true;
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let xff = forwarding::forwarded_for(upstream, addr.ip(), ctx.peer_trusted)
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "x-forwarded-for", e))?;
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header("x-forwarded-proto", ctx.scheme)?;
        // The host the key holds, in the same normalised form (also when
        // the client sent an absolute-form target, forwarded in origin form).
        if let Some(host) = &ctx.host {
            upstream.insert_header(header::HOST, host.as_str())?;
        }
        let cached = session.cache.enabled();
        let rule = ctx.rule.as_deref();
        let keyed = |h: &str| rule.is_some_and(|r| r.key_headers.iter().any(|k| k == h));
        let overrides = &ctx.config.method_override.headers;
        forwarding::remove_fields(upstream, |h| {
            // The refetch marker carries a secret: the app has no use for it.
            h == prefetch::HEADER
                || forwarding::ROUTING_OVERRIDES.contains(&h)
                || (!ctx.peer_trusted && forwarding::CLAIMS.contains(&h))
                // What the app reads to answer must be in the key, or absent.
                || (cached
                    && (forwarding::unkeyed().any(|u| u == h) || overrides.iter().any(|o| o == h))
                    && !keyed(h))
        });
        if cached {
            // Only the keyed cookies reach the app (ignored ones never
            // may shape an answer stored for everyone).
            if upstream.headers.contains_key(header::COOKIE) && !keyed("cookie") {
                match rule.and_then(|r| cachekey::keyed_cookie_header(upstream, r)) {
                    Some(only_keyed) => {
                        upstream.insert_header(header::COOKIE, only_keyed)?;
                    }
                    None => {
                        upstream.remove_header(&header::COOKIE);
                    }
                }
            }
        }
        // The app is sent the path the key and the rules were computed from,
        // in origin form, so it cannot read an alias differently from them.
        if let Some(request) = ctx.request.as_ref().filter(|r| r.rewrites(upstream)) {
            let target = request.forward_target(upstream);
            match target.parse::<http::Uri>() {
                Ok(uri) => upstream.set_uri(uri),
                Err(e) => {
                    return Error::e_explain(
                        ErrorType::InvalidHTTPHeader,
                        format!("canonical target {target:?}: {e}"),
                    )
                }
            }
        }
        Ok(())
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let received = SystemTime::now();
        let exchange = storable::Exchange {
            sent: ctx
                .upstream_started
                .map_or(received, |t| received - t.elapsed()),
            received,
            authorized: cachekey::unkeyed_authorization(session.req_header(), ctx.rule.as_deref()),
        };
        let bounds = storable::Bounds {
            negative_ttl: ctx.config.negative_ttl,
            max_ttl: ctx.config.max_ttl,
            targeted: &ctx.config.targeted_fields,
            heuristic: ctx.config.heuristic_freshness,
        };
        let freshened = ctx
            .not_modified
            .take()
            .map(|not_modified| storable::freshen(resp, &not_modified));
        let resp = freshened.as_ref().unwrap_or(resp);
        let varies_on_coding = resp
            .headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding"));
        if varies_on_coding
            && !cachekey::coding_fits_variant(&session.req_header().headers, &resp.headers)
        {
            ctx.not_stored = Some(NotStored::CodingNotAccepted);
        }
        let decided = match ctx.not_stored {
            Some(reason) => Err(reason),
            None => storable::decide(resp, ctx.rule.as_deref(), bounds, exchange),
        }
        .and_then(|c| {
            match (c, ctx.fill) {
                // What it fetched may predate the commit of a write in flight.
                (RespCacheable::Cacheable(_), Some(fill)) if fill.fenced => {
                    Err(NotStored::WriteInProgress)
                }
                (RespCacheable::Cacheable(mut meta), Some(fill)) => {
                    let mut tags = ctx.read_tags.clone();
                    tags.extend(invalidation::tags_from_response(&resp.headers));
                    // Stored without one of them, it would miss its purge.
                    let tags = Tags::new(&tags).map_err(|_| NotStored::TooManyTags)?;
                    meta.extensions_mut().insert(FillInfo {
                        fetch_seq: fill.seq,
                        epoch: fill.epoch,
                        rules: ctx.config.rules_fingerprint,
                        tags,
                        began: fill.began,
                    });
                    Ok(RespCacheable::Cacheable(meta))
                }
                (RespCacheable::Cacheable(_), None) => Err(NotStored::ClockUnavailable),
                (other, _) => Ok(other),
            }
        });
        match decided {
            Ok(c) => Ok(c),
            Err(reason) => {
                ctx.not_stored = Some(reason);
                Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(
                    reason.as_str(),
                )))
            }
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(t) = ctx.upstream_started {
            METRICS
                .upstream_seconds
                .with_label_values(&[method_label(&session.req_header().method)])
                .observe(t.elapsed().as_secs_f64());
        }
        // Before it is stored or sent on: what the app meant for this hop.
        // Not on a 1xx: a 101's `Upgrade` and `Connection` are the handshake.
        if !resp.status.is_informational() {
            let listed = forwarding::connection_listed(&resp.headers);
            if forwarding::beyond_framing(&listed) {
                // The app said some of its fields are for this hop only;
                // what it stored would not be what it meant to share.
                ctx.not_stored = Some(NotStored::ConnectionListed);
            }
            forwarding::strip_standard_hop_by_hop(resp);
            if !storable::has_valid_date(&resp.headers) {
                // RFC 9110 §6.6.1: a response without a (usable) Date is
                // dated when it arrives, so hits say when it was made, not
                // when served, and never pass on a Date no one can read.
                resp.insert_header(header::DATE, httpdate::fmt_http_date(SystemTime::now()))?;
            }
            if ctx.write.is_some() {
                // This hop is freshgate: a write's answer may carry what it
                // invalidates (`Location`, `Cache-Group-Invalidation`) in a
                // field it lists. Read by `end_write` first, then removed.
                ctx.hop_listed = listed;
            } else {
                forwarding::strip_listed(resp, &listed);
            }
        }
        if resp.status == StatusCode::NOT_MODIFIED && session.cache.enabled() {
            // A revalidation: pingora merges only a few of its fields into
            // the stored response; `response_cache_filter` merges them all.
            ctx.not_modified = Some(Box::new(resp.clone()));
            ctx.revalidated_date = resp.headers.get(header::DATE).cloned();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(invalidate) = writes::invalidates(resp.status.as_u16()) {
            if let Some(write) = ctx.write.take() {
                // An answer before the whole write was read from the client:
                // the app cannot have committed what it has not received.
                let early = !session.is_body_done();
                ctx.answering =
                    Box::pin(self.end_write(session, resp, ctx, *write, invalidate, early))
                        .await?
                        .map(Box::new);
            }
        }
        forwarding::strip_listed(resp, &std::mem::take(&mut ctx.hop_listed));
        if matches!(session.cache.phase(), CachePhase::RevalidatedNoCache(_)) {
            // Validated just now but not stored again: pingora sends the old
            // entry's header, merging only a few of the 304's fields; its
            // Date is the 304's, or the client would take it for as old as
            // the first fetch (it carries no Age).
            if let Some(date) = ctx.revalidated_date.take() {
                resp.insert_header(header::DATE, date)?;
            }
        }
        // freshgate's own targeted field is for freshgate alone (RFC 9213):
        // a cache further down must not take it as addressed to it.
        resp.remove_header(storable::OWN_TARGETED_FIELD);
        let (outcome, status) = describe(session, ctx);
        ctx.outcome = outcome;
        resp.insert_header("x-cache", outcome.as_str())?;
        resp.insert_header("cache-status", status)?;
        Ok(())
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        // Only entries past their freshness get here: invalidated entries are
        // never found by a lookup, so this is staleness in time only, within
        // the window the app's `stale-while-revalidate` / `stale-if-error`
        // allows (pingora checks the window). `None` is
        // stale-while-revalidate: the client gets the stale entry at once and
        // a background request (through these same callbacks, so its fill
        // reads the invalidation clock first) refreshes it.
        self.live.flags.get(Flag::ServeStale, &ctx.config.flags)
            && error.is_none_or(|e| e.esource() == &pingora::ErrorSource::Upstream)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> pingora::proxy::FailToProxy {
        // Before the client hears of the failure: a write that never reached
        // the app must be lifted before the client's next request arrives.
        self.end_unanswered_write(session, Some(e), ctx).await;
        let code = failure_status(e);
        if code > 0 {
            if let Err(e) = respond_failure(session, code, e).await {
                warn!(error = %e, "failed to send an error response downstream");
            }
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // The write path's futures are boxed here and in the filters (writes
        // are rare): in place they made every request's `logging` future,
        // which pingora boxes and copies, 5 KB (benchmarks.md, Run 20).
        if let Some(answering) = ctx.answering.take() {
            Box::pin(self.end_answer(*answering, session.req_header(), e, ctx)).await;
        }
        if ctx.write.is_some() {
            Box::pin(self.end_unanswered_write(session, e, ctx)).await;
        }
        if ctx.background {
            // Counted by their own metrics (`freshgate_prefetches_total`,
            // `freshgate_warmed_total`): as client requests they would lower
            // the reported hit rate.
            return;
        }
        let route = ctx.rule.as_ref().map(|r| r.name.as_str()).unwrap_or("-");
        let label = ctx.outcome.label();
        let elapsed = ctx.started.map_or(Duration::ZERO, |t| t.elapsed());
        // With an error and nothing written, pingora answered 502 (or dropped
        // the connection): either way an error to the client.
        let status = match (session.response_written(), e) {
            (Some(r), _) => r.status.as_u16(),
            (None, Some(_)) => 502,
            (None, None) => 0,
        };
        METRICS.requests.with_label_values(&[route, label]).inc();
        if let Some(reason) = ctx.bypass {
            // Which cookie (or credential, or setting) costs a route its hits.
            METRICS
                .bypasses
                .with_label_values(&[route, reason.as_str()])
                .inc();
        }
        if ctx.outcome.from_cache() {
            METRICS
                .cache_served_bytes
                .with_label_values(&[route])
                .inc_by(session.body_bytes_sent() as u64);
        }
        // Waited behind the cache lock and did not fetch itself: served by
        // another request's trip to the app.
        if session.cache.lock_duration().is_some() && !session.cache.upstream_used() {
            METRICS.coalesced.with_label_values(&[route]).inc();
        }
        metrics::responses(status).inc();
        metrics::request_seconds(ctx.outcome).observe(elapsed.as_secs_f64());
        if self.live.flags.get(Flag::Monitoring, &ctx.config.flags) {
            let req = session.req_header();
            self.monitor.observe(Event {
                op: ctx.outcome.as_str(),
                kind: Kind::Request(ctx.outcome),
                name: route,
                method: &req.method,
                path: req.uri.path(),
                status,
                duration: elapsed,
                tags: None,
            });
        }
    }
}

impl Proxy {
    /// Whether the cache may be used for this request at all (GET/HEAD,
    /// `cache` flag on, no bypass: see `bypass`); sets `ctx.bypass` when not.
    fn may_use_cache(&self, req: &RequestHeader, ctx: &mut Ctx) -> bool {
        let Some(request) = &ctx.request else {
            return false;
        };
        // A GET that names an unsafe method in an override is a write to the
        // app: never answered from the cache.
        if !matches!(req.method, Method::GET | Method::HEAD) || request.methods.is_write() {
            return false;
        }
        if !self.live.flags.get(Flag::Cache, &ctx.config.flags) {
            ctx.bypass = Some(Bypass::CacheOff);
            return false;
        }
        if request.too_many_readings
            || request.too_many_ids
            || !bypass::readings_agree(&ctx.config, ctx.rule.as_ref(), &request.other_routes)
            || !bypass::id_readings_agree(&ctx.config, ctx.rule.as_ref(), &request.id_routes)
        {
            ctx.bypass = Some(Bypass::AmbiguousPath);
            return false;
        }
        ctx.bypass = bypass::decide(req, ctx.rule.as_deref(), &ctx.config, self.store.usable());
        if ctx.bypass == Some(Bypass::Cookie)
            && self.live.flags.get(Flag::Monitoring, &ctx.config.flags)
        {
            let rule = ctx.rule.as_deref();
            let ignored = rule.map_or(&ctx.config.ignore_cookies[..], |r| &r.ignore_cookies[..]);
            self.monitor
                .count_bypassing_cookies(&cachekey::unknown_cookies(req, rule, ignored));
        }
        ctx.bypass.is_none()
    }

    /// Answer a fresh hit from the memory tier without pingora-cache (see
    /// `hit`). False: the request takes pingora-cache's path (a miss, a
    /// stale or `Vary`ing entry, a conditional or range request, …).
    async fn answer_fresh_hit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // freshgate's own refreshes must reach the app.
        if ctx.background
            || !hit::request_allows(session.req_header(), ctx.config.request_cache_control)
        {
            return Ok(false);
        }
        let key = self.cache_key_callback(session, ctx)?;
        let found = self
            .store
            .memory_hit(&key.combined_bin(), |stored| {
                hit::servable(stored, SystemTime::now())
            })
            .await;
        // Fresh as of now, after the invalidation log's answer (with Redis,
        // a round trip later), as pingora-cache judges it after its lookup.
        let answer = found.and_then(|(stored, body)| {
            hit::response(&stored, SystemTime::now()).map(|resp| (resp, body))
        });
        let Some((resp, body)) = answer else {
            // pingora-cache asks for it next: built once per request.
            ctx.key = Some(key);
            return Ok(false);
        };
        ctx.outcome = Outcome::Hit;
        let header_only = session.req_header().method == Method::HEAD;
        // A client that leaves mid-answer is the client's doing (as on
        // pingora-cache's hit path): no 500, no error response to write.
        session
            .write_response_header(Box::new(resp), header_only)
            .await
            .map_err(|e| e.into_down())?;
        if !header_only {
            session
                .write_response_body(Some(body), true)
                .await
                .map_err(|e| e.into_down())?;
        }
        Ok(true)
    }

    /// A write whose answer never reached `response_filter` (pingora failed
    /// the request, or it ended some other way): end it now if it never
    /// reached the app, else keep it fenced while the app may still commit.
    async fn end_unanswered_write(&self, session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
        let Some(write) = ctx.write.take() else {
            return;
        };
        if !write.reached_app {
            // No connection to the app was ever made for it: nothing can
            // have changed.
            self.store
                .end_write(write.fence, BTreeSet::new(), false)
                .await;
            return;
        }
        // The client reset the connection, or the app timed out or reset
        // it: the app may still commit the write until `writes.timeout` has
        // passed. Fenced until then, then invalidated.
        METRICS.writes_unanswered.inc();
        warn!(
            path = session.req_header().uri.path(),
            error = ?e.map(|e| e.to_string()),
            "a write's answer never came: its targets stay uncacheable until writes.timeout, then are invalidated"
        );
        self.store
            .end_write_later(write.fence, self.store.write_timeout());
    }

    /// What `request` may change under `config`, as freshgate must plan it
    /// now: by the rules, unless they are off or replicas with other rules
    /// may be running (they tag what they cache by those): then everything.
    fn plan_write(&self, config: &Config, request: &Canonical) -> writes::Planned {
        let rules_on =
            self.live.flags.get(Flag::Invalidation, &config.flags) && !self.store.rules_mixed();
        writes::plan(config, rules_on, request)
    }

    /// Whether a write Redis cannot record is refused rather than owed:
    /// by `on_unrecorded_write: reject`, and always once the process is
    /// stopping (an owed record would end with it, unrecorded).
    fn rejects_unrecorded(&self, config: &Config) -> bool {
        self.store.stopping()
            || config
                .redis
                .as_ref()
                .is_some_and(|r| r.on_unrecorded_write == UnrecordedWrite::Reject)
    }

    /// Phase 1 of a write, before it is forwarded: fence what it may change
    /// (see `writes`). With `on_unrecorded_write: reject` (or once the
    /// process is stopping), a write whose fence Redis could not record is
    /// answered 503 instead of forwarded.
    async fn begin_write(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(request) = &ctx.request else {
            return Ok(true);
        };
        // The newest rules, not the request's snapshot: a fill that starts
        // after a rules swap is tagged by the new rules (and the request is
        // read again if its path policy changed with them).
        let config = self.live.config();
        let planned = if Arc::ptr_eq(&config, &ctx.config) {
            self.plan_write(&config, request)
        } else {
            self.plan_write(
                &config,
                &Canonical::new(session.req_header(), &config.paths, &config.method_override),
            )
        };
        let fence = self.store.begin_write(planned.tags.clone()).await;
        if !fence.recorded() {
            if self.rejects_unrecorded(&config) {
                self.store.abandon_write(fence);
                METRICS.writes_rejected.inc();
                let body = br#"{"error":"the cache cannot record this write right now; it was not sent to the app. Retry."}"#;
                let mut resp = ResponseHeader::build(StatusCode::SERVICE_UNAVAILABLE, Some(4))?;
                resp.insert_header(header::CONTENT_TYPE, "application/json")?;
                resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
                resp.insert_header(header::RETRY_AFTER, "1")?;
                resp.insert_header("x-cache", "PASS")?;
                session.set_keepalive(None);
                session.write_response_header(Box::new(resp), false).await?;
                session
                    .write_response_body(Some(bytes::Bytes::from_static(body)), true)
                    .await?;
                return Ok(false);
            }
            warn!(
                path = session.req_header().uri.path(),
                "write forwarded before its fence was recorded: the cache is bypassed until it is"
            );
        }
        // A client that closes its side after sending the write still gets
        // the answer, and the write is ended by it (not abandoned midway).
        session.as_downstream_mut().set_abort_on_close(false);
        ctx.write = Some(Box::new(InFlight {
            fence,
            planned,
            config,
            reached_app: false,
        }));
        Ok(true)
    }

    /// Phase 2: the app answered the write with a final status. Invalidate
    /// what it changed (unless the app refused it) and lift its fence before
    /// the client hears back, so no read that follows can see the old data;
    /// when a body follows, the same tags stay fenced until it has been
    /// forwarded (the `Answering` returned, ended by `end_answer`).
    /// With `on_unrecorded_write: reject` (or once the process is
    /// stopping), a write whose invalidation cannot be recorded while no
    /// fence of it stands is not acknowledged: the client gets an error
    /// (the outcome is unknown to it), not the app's answer.
    async fn end_write(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &Ctx,
        write: InFlight,
        invalidate: bool,
        early: bool,
    ) -> Result<Option<Answering>> {
        let req = session.req_header();
        let config = self.live.config();
        let mut extra = BTreeSet::new();
        if invalidate {
            extra = writes::answer_tags(req, ctx.host.as_ref(), resp, &config.paths);
            extra.extend(self.replanned(&config, &write.config, req));
        }
        let started = Instant::now();
        let tags = write.fence.tags().len() + extra.len();
        // Taken before the first fence is lifted: no moment between them is
        // unfenced while the app may still commit — while the answer's body
        // streams, or the write's own body is still being forwarded.
        let (body_fence, ended) = if invalidate && (early || writes::answer_has_body(req, resp)) {
            let mut fenced = write.fence.tags().clone();
            fenced.extend(extra.iter().cloned());
            let (fence, ended) = match self.store.hand_over(write.fence, fenced, extra).await {
                HandOver::Done(fence, ended) => (fence, ended),
                HandOver::Unfenced {
                    fence,
                    first,
                    extra,
                } => {
                    if self.rejects_unrecorded(&config) {
                        // Unrecorded, it fences nothing on other replicas
                        // while the body streams: not acknowledged, as an
                        // unrecorded first fence (both fences, dropped, stay
                        // until `writes.timeout`).
                        METRICS.writes_rejected.inc();
                        return Error::e_explain(
                            NOT_ACKNOWLEDGED,
                            "the write's answer cannot be fenced while it streams: not acknowledged",
                        );
                    }
                    (fence, self.store.end_write(first, extra, true).await)
                }
            };
            if resp.status == StatusCode::SWITCHING_PROTOCOLS {
                // A tunnel may stay open for ever: fenced for as long as
                // any write whose end is unknown (other replicas' sweeps
                // would drop a longer fence anyway), then invalidated.
                self.store
                    .end_write_later(fence, self.store.write_timeout());
                (None, ended)
            } else {
                (Some(fence), ended)
            }
        } else {
            (
                None,
                self.store.end_write(write.fence, extra, invalidate).await,
            )
        };
        let recorded = ended == Ended::Recorded;
        if let Ended::Owed { fence_stands } = ended {
            warn!(
                path = req.uri.path(),
                "invalidation not recorded yet: the cache is bypassed until it is"
            );
            if self.rejects_unrecorded(&config) && invalidate && !fence_stands {
                METRICS.writes_rejected.inc();
                return Error::e_explain(
                    NOT_ACKNOWLEDGED,
                    "the write's invalidation cannot be recorded: not acknowledged",
                );
            }
        }
        if !invalidate {
            return Ok(None);
        }
        let planned = write.planned;
        // A redirect (Next.js answers `PATCH /x/` with 308) invalidated like
        // any answer but changed nothing the app reports: not a success to
        // count, list as unmatched, or refetch after.
        let succeeded = resp.status.is_success();
        self.count_write(ctx, req, &planned, succeeded);
        let mut refetch = Vec::new();
        if recorded
            && succeeded
            && self.live.flags.get(Flag::Prefetch, &config.flags)
            && self.live.flags.get(Flag::Cache, &config.flags)
        {
            // Only now: a refetch must begin after the invalidation is
            // recorded, so that the clock it reads makes its fill current
            // (and after the body's fence, or its fill is not stored).
            refetch = planned.refetch;
            if body_fence.is_none() {
                self.refetch(&config, ctx, std::mem::take(&mut refetch));
            }
        }
        if self.live.flags.get(Flag::Monitoring, &config.flags) {
            self.monitor.count(Kind::Write, &planned.rules);
            // The write's own route, and every route its rules purge.
            let mut routes: Vec<&str> = ctx.rule.iter().map(|r| r.name.as_str()).collect();
            for r in &planned.rules {
                if let Some(names) = config.purged_routes.get(r) {
                    routes.extend(names.iter().map(String::as_str));
                }
            }
            routes.sort_unstable();
            routes.dedup();
            self.monitor.count(Kind::Invalidated, &routes);
            self.monitor.operation(Event {
                op: "INVALIDATE",
                kind: Kind::Write,
                name: &planned.rules.join(","),
                method: &req.method,
                path: req.uri.path(),
                status: resp.status.as_u16(),
                duration: started.elapsed(),
                tags: Some(tags),
            });
        }
        Ok(body_fence.map(|fence| Answering {
            fence,
            refetch,
            config,
            // As the app sent it: `response_filter` strips fields it listed
            // in `Connection`, a `Location` among them.
            answer: resp.clone(),
            early,
        }))
    }

    /// What the rules in `config` say a write planned under `planned_under`
    /// changed, when they are other rules (a reload while it was in flight):
    /// those tags go too. Empty when the rules are the same.
    fn replanned(
        &self,
        config: &Arc<Config>,
        planned_under: &Arc<Config>,
        req: &RequestHeader,
    ) -> BTreeSet<String> {
        if Arc::ptr_eq(config, planned_under) {
            return BTreeSet::new();
        }
        let request = Canonical::new(req, &config.paths, &config.method_override);
        self.plan_write(config, &request).tags
    }

    /// The body of a write's answer has been forwarded (or not: `e`). Lift
    /// the fence that covered it, invalidating once more; when the body was
    /// cut off, or the app answered before it had the write's body, the app
    /// may still be committing, so it stays fenced for `writes.timeout`, as
    /// any write whose outcome is unknown.
    async fn end_answer(
        &self,
        answering: Answering,
        req: &RequestHeader,
        e: Option<&Error>,
        ctx: &Ctx,
    ) {
        if e.is_some() || answering.early {
            self.store
                .end_write_later(answering.fence, self.store.write_timeout());
            return;
        }
        let config = self.live.config();
        // The paths its answer named, folded again when the config (how
        // paths fold) changed while the body streamed.
        let mut extra = self.replanned(&config, &answering.config, req);
        if !Arc::ptr_eq(&config, &answering.config) {
            extra.extend(writes::answer_tags(
                req,
                ctx.host.as_ref(),
                &answering.answer,
                &config.paths,
            ));
        }
        let ended = self.store.end_write(answering.fence, extra, true).await;
        if ended == Ended::Recorded && !answering.refetch.is_empty() {
            self.refetch(&config, ctx, answering.refetch);
        }
    }

    /// Invalidation metrics of a write that invalidated; a successful one
    /// that matched no rule is listed where stale data comes from.
    fn count_write(
        &self,
        ctx: &Ctx,
        req: &RequestHeader,
        planned: &writes::Planned,
        succeeded: bool,
    ) {
        if !planned.matched && succeeded {
            let route = ctx.rule.as_ref().map(|r| r.name.as_str());
            let path = ctx
                .request
                .as_ref()
                .map_or(req.uri.path(), |r| r.path.as_str());
            self.live.unmatched.note(&req.method, path, route);
            METRICS
                .unmatched_writes
                .with_label_values(&[route.unwrap_or("-")])
                .inc();
        }
        for name in &planned.rules {
            let label = if name == writes::UNMATCHED {
                "-"
            } else {
                name.as_str()
            };
            METRICS.invalidations.with_label_values(&[label]).inc();
        }
    }

    /// Refetch what a write purged: the exact paths it names, its own
    /// first, where a route rule caches them for everyone (no keyed headers
    /// or cookies: a refetch carries no client's).
    fn refetch(&self, config: &Config, ctx: &Ctx, mut paths: Vec<String>) {
        let Some(host) = &ctx.host else {
            return;
        };
        paths.retain(|p| {
            config
                .routes
                .lookup(&config.paths.route_path(p))
                .is_some_and(|r| r.enabled && r.key_headers.is_empty() && r.key_cookies.is_empty())
        });
        self.prefetch.refetch(host.as_str(), ctx.scheme, paths);
    }
}

/// freshgate's own refusal to acknowledge a write the app has answered
/// (`end_write`): a 502 whose reason, the error's context, tells the client
/// its write's outcome is unknown, not that the app's answer was unreadable.
const NOT_ACKNOWLEDGED: ErrorType = ErrorType::Custom("write not acknowledged");

/// The status a failed request is answered with (0: none, the client is
/// gone): pingora's choice, except that the app not answering in time is a
/// 504 rather than a 502.
fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        t if *t == NOT_ACKNOWLEDGED => 502,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &pingora::ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            pingora::ErrorSource::Upstream => 502,
            pingora::ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            pingora::ErrorSource::Internal | pingora::ErrorSource::Unset => 500,
        },
    }
}

/// A failure's answer: its status and a JSON body saying whose fault it
/// was, never stored (`Cache-Control: no-store`).
async fn respond_failure(session: &mut Session, code: u16, e: &Error) -> Result<()> {
    let reason = match code {
        // pingora wraps a filter's error in one naming the peer
        // (`more_context`): the reason is the innermost error's.
        502 if *e.etype() == NOT_ACKNOWLEDGED => e
            .root_cause()
            .downcast_ref::<Error>()
            .and_then(|root| root.context.as_ref())
            .map_or("the write was not acknowledged", |c| c.as_str()),
        504 => "the app did not answer in time",
        502 if matches!(
            e.etype(),
            ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute
        ) =>
        {
            "the app could not be reached"
        }
        502 => "the app's answer could not be read",
        400..=499 => "bad request",
        _ => "freshgate could not handle this request",
    };
    respond_json_error(
        session,
        code,
        serde_json::json!({ "error": reason, "status": code }),
    )
    .await
}

/// An answer freshgate gives itself: `code`, a JSON `body`, never stored
/// (`Cache-Control: no-store`), and the connection closed after it (what
/// follows a failed or misframed request cannot be trusted).
async fn respond_json_error(
    session: &mut Session,
    code: u16,
    body: serde_json::Value,
) -> Result<()> {
    let body = body.to_string();
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session
        .as_downstream_mut()
        .write_error_response(resp, bytes::Bytes::from(body))
        .await
}

/// Answer a request freshgate cannot make sense of with 400 and a JSON
/// reason, and close the connection (what follows may be misframed).
async fn respond_bad_request(session: &mut Session, reason: &str) -> Result<()> {
    let body = serde_json::json!({ "error": format!("bad request: {reason}") });
    respond_json_error(session, 400, body).await
}

/// The `X-Cache` outcome and the RFC 9211 `Cache-Status` value.
fn describe(session: &Session, ctx: &Ctx) -> (Outcome, String) {
    const NAME: &str = "freshgate";
    let ttl = |s: &Session| -> i64 {
        let meta = s.cache.cache_meta();
        let now = SystemTime::now();
        match meta.fresh_until().duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    };
    if let Some(reason) = ctx.bypass {
        // The kill switch passes everything through untouched.
        let outcome = if reason == Bypass::CacheOff {
            Outcome::Pass
        } else {
            Outcome::Bypass
        };
        return (
            outcome,
            format!("{NAME}; fwd=bypass; detail={}", reason.as_str()),
        );
    }
    match session.cache.phase() {
        CachePhase::Hit => (Outcome::Hit, hit::cache_status(ttl(session))),
        CachePhase::Stale | CachePhase::StaleUpdating => {
            (Outcome::Stale, hit::cache_status(ttl(session)))
        }
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => (
            Outcome::Hit,
            format!("{NAME}; fwd=stale; fwd-status=304; ttl={}", ttl(session)),
        ),
        CachePhase::Miss => (Outcome::Miss, format!("{NAME}; fwd=uri-miss; stored")),
        CachePhase::Expired => (Outcome::Miss, format!("{NAME}; fwd=stale; stored")),
        CachePhase::Disabled(reason) => {
            let is_write = ctx.request.as_ref().is_some_and(|r| r.methods.is_write());
            if is_write || !matches!(session.req_header().method, Method::GET | Method::HEAD) {
                return (Outcome::Pass, format!("{NAME}; fwd=method"));
            }
            let detail =
                ctx.not_stored
                    .map(NotStored::as_str)
                    .unwrap_or(match reason {
                        NoCacheReason::ResponseTooLarge
                        | NoCacheReason::PredictedResponseTooLarge => "too-large",
                        NoCacheReason::NeverEnabled => "disabled",
                        // Waited behind another request's fill, then went alone.
                        NoCacheReason::CacheLockGiveUp => "fill-not-stored",
                        NoCacheReason::CacheLockTimeout => "lock-timeout",
                        NoCacheReason::CacheLockRetryLimit => "lock-retries",
                        _ => "uncacheable",
                    });
            (
                Outcome::Bypass,
                format!("{NAME}; fwd=uri-miss; detail={detail}"),
            )
        }
        _ => (Outcome::Bypass, format!("{NAME}; fwd=bypass")),
    }
}
