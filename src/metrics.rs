//! Every Prometheus metric freshgate exports, in one registry.
//!
//! Metrics live in a process-wide static because the pieces that update them
//! (pingora's `&'static` storage, the proxy's phases, background tasks) have no
//! common owner to pass a handle through. Labels are route-rule names and other
//! bounded sets, never raw paths or ids.

use std::sync::{LazyLock, OnceLock};

use crate::outcome::Outcome;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// Requests by route rule (`-` without one) and result (hit, miss, ...).
    pub requests: IntCounterVec,
    /// Responses by status class (`2xx`...; `none` when nothing was sent).
    pub responses: IntCounterVec,
    /// Body bytes sent to clients from the cache (hits and stale), by route rule.
    pub cache_served_bytes: IntCounterVec,
    /// Requests that waited for another request's fetch of the same key
    /// (pingora's cache lock) instead of going to the app, by route rule.
    pub coalesced: IntCounterVec,
    /// Bounded mode: time from a write's invalidation to this replica learning of it.
    pub invalidation_lag_seconds: prometheus::Histogram,
    /// Bounded mode: 1 while following the invalidation channel.
    pub invalidation_subscribed: IntGauge,
    /// Operations dropped from the live stream because a reader was slow.
    pub sse_lagged: IntCounter,
    pub request_seconds: HistogramVec,
    pub upstream_seconds: HistogramVec,
    pub store_hits: IntCounterVec,
    pub store_errors: IntCounterVec,
    pub store_op_seconds: HistogramVec,
    /// 1 while the Redis tier is usable (breaker closed), 0 otherwise.
    pub redis_up: IntGauge,
    /// 1 when a Redis tier is configured (so `redis_up == 0` means an outage).
    pub redis_configured: IntGauge,
    pub memory_entries: IntGauge,
    pub memory_bytes: IntGauge,
    pub build_info: IntGaugeVec,
    /// Writes that invalidated, by invalidation rule (`-`: only their own URI).
    pub invalidations: IntCounterVec,
    pub invalidated_tags: IntCounter,
    pub invalidation_failures: IntCounter,
    /// Writes whose answer never reached freshgate (client reset, app
    /// timeout or reset): invalidated after `writes.timeout`.
    pub writes_unanswered: IntCounter,
    /// Writes refused because Redis could not record them: 503 before
    /// forwarding, 502 instead of the app's answer
    /// (`store.redis.on_unrecorded_write: reject`, or while stopping).
    pub writes_rejected: IntCounter,
    /// 1 while this replica holds fences or invalidations the shared log
    /// does not have (it bypasses the cache and reports not ready).
    pub owed_invalidations: IntGauge,
    /// 1 when the Redis tier has a maxmemory and an eviction policy: it may
    /// evict the invalidation log (freshgate then distrusts older entries).
    pub redis_may_evict: IntGauge,
    /// 1 while replicas with other rules may be running (a rollout): the
    /// cache is bypassed and writes invalidate everything.
    pub rules_mixed: IntGauge,
    /// Writes that matched no invalidation rule, by cache route rule (`-`: none).
    pub unmatched_writes: IntCounterVec,
    /// GET/HEAD requests that did not use the cache, by route and reason.
    pub bypasses: IntCounterVec,
    /// Background refetches after writes, by result (`ok`, `error`, `skipped`).
    pub prefetches: IntCounterVec,
    /// Start-up warming requests (`warm:` paths), by result (`ok`, `error`).
    pub warmed: IntCounterVec,
    /// Config reloads by result (`success`, `error`).
    pub config_reloads: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_success_seconds: prometheus::Gauge,
    /// 1 when a flag is on, by flag name.
    pub flag_enabled: IntGaugeVec,
}

/// Includes 0.2 and 2.0: the rollout guide's average and P95 thresholds, so
/// Prometheus' `histogram_quantile` is exact where alerts compare.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "freshgate_requests_total",
                "Proxied requests by route rule and cache result.",
            ),
            &["route", "result"],
        )
        .expect("static metric definition");
        let responses = IntCounterVec::new(
            Opts::new(
                "freshgate_responses_total",
                "Responses to clients by status class (5xx counts towards the error rate).",
            ),
            &["code"],
        )
        .expect("static metric definition");
        let cache_served_bytes = IntCounterVec::new(
            Opts::new(
                "freshgate_cache_served_bytes_total",
                "Response body bytes sent to clients from the cache (hits and stale), by route rule.",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let coalesced = IntCounterVec::new(
            Opts::new(
                "freshgate_coalesced_requests_total",
                "Requests that waited for a concurrent fetch of the same key instead of asking the app.",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let invalidation_lag_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "freshgate_invalidation_lag_seconds",
                "Bounded mode: from a write's invalidation (writer's clock) to this replica applying it.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0,
            ]),
        )
        .expect("static metric definition");
        let invalidation_subscribed = IntGauge::new(
            "freshgate_invalidation_subscribed",
            "Bounded mode: 1 while this replica follows the invalidation channel.",
        )
        .expect("static metric definition");
        let sse_lagged = IntCounter::new(
            "freshgate_admin_stream_dropped_total",
            "Operations a slow live-stream reader (admin page) did not get.",
        )
        .expect("static metric definition");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "freshgate_request_duration_seconds",
                "Time from request to last response byte, by cache result.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["result"],
        )
        .expect("static metric definition");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "freshgate_upstream_duration_seconds",
                "Time spent waiting for the app, by request method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("static metric definition");
        let store_hits = IntCounterVec::new(
            Opts::new(
                "freshgate_store_hits_total",
                "Lookups answered by each store tier.",
            ),
            &["tier"],
        )
        .expect("static metric definition");
        let store_errors = IntCounterVec::new(
            Opts::new(
                "freshgate_store_errors_total",
                "Store operations that failed, by tier and operation.",
            ),
            &["tier", "op"],
        )
        .expect("static metric definition");
        let store_op_seconds = HistogramVec::new(
            HistogramOpts::new(
                "freshgate_store_operation_duration_seconds",
                "Store operation latency by tier.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["tier", "op"],
        )
        .expect("static metric definition");
        let redis_up = IntGauge::new(
            "freshgate_redis_up",
            "1 while the Redis tier is usable (circuit closed).",
        )
        .expect("static metric definition");
        let redis_configured = IntGauge::new(
            "freshgate_redis_configured",
            "1 when the shared Redis tier is configured, 0 for the embedded store.",
        )
        .expect("static metric definition");
        let memory_entries = IntGauge::new(
            "freshgate_memory_entries",
            "Entries in the in-process tier.",
        )
        .expect("static metric definition");
        let memory_bytes = IntGauge::new(
            "freshgate_memory_bytes",
            "Bytes held by the in-process tier.",
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "freshgate_build_info",
                "Always 1; the version is in the label.",
            ),
            &["version"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let invalidations = IntCounterVec::new(
            Opts::new(
                "freshgate_invalidations_total",
                "Writes that invalidated cached responses, by invalidation rule.",
            ),
            &["rule"],
        )
        .expect("static metric definition");
        let invalidated_tags = IntCounter::new(
            "freshgate_invalidated_tags_total",
            "Tags invalidated (the fan-out of writes and purges).",
        )
        .expect("static metric definition");
        let invalidation_failures = IntCounter::new(
            "freshgate_invalidation_failures_total",
            "Invalidations that could not be recorded at once (the cache is bypassed until they are).",
        )
        .expect("static metric definition");
        let writes_unanswered = IntCounter::new(
            "freshgate_writes_unanswered_total",
            "Writes whose answer never reached freshgate (client reset, app timeout or reset): invalidated after writes.timeout.",
        )
        .expect("static metric definition");
        let writes_rejected = IntCounter::new(
            "freshgate_writes_rejected_total",
            "Writes refused because Redis could not record them: 503 before forwarding, 502 instead of the app's answer (on_unrecorded_write: reject, or while stopping).",
        )
        .expect("static metric definition");
        let owed_invalidations = IntGauge::new(
            "freshgate_owed_invalidations",
            "1 while this replica holds fences or invalidations Redis does not have yet (cache bypassed, not ready).",
        )
        .expect("static metric definition");
        let redis_may_evict = IntGauge::new(
            "freshgate_redis_may_evict",
            "1 when Redis has a maxmemory and an eviction policy other than noeviction: it may evict the invalidation log.",
        )
        .expect("static metric definition");
        let rules_mixed = IntGauge::new(
            "freshgate_rules_mixed",
            "1 while replicas with other invalidation rules may be running (a rollout): cache bypassed, every write invalidates everything.",
        )
        .expect("static metric definition");
        let unmatched_writes = IntCounterVec::new(
            Opts::new(
                "freshgate_unmatched_writes_total",
                "Successful writes that matched no invalidation rule, by cache route rule.",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let bypasses = IntCounterVec::new(
            Opts::new(
                "freshgate_bypasses_total",
                "GET/HEAD requests that did not use the cache, by route rule and reason (cookie, authorization, ...).",
            ),
            &["route", "reason"],
        )
        .expect("static metric definition");
        let prefetches = IntCounterVec::new(
            Opts::new(
                "freshgate_prefetches_total",
                "Refetches of purged paths after a write (prefetch flag), by result.",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let warmed = IntCounterVec::new(
            Opts::new(
                "freshgate_warmed_total",
                "Start-up warming fetches of the warm: paths, by result.",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "freshgate_config_reloads_total",
                "Config reload attempts by result (a failed one changes nothing).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let config_last_reload_successful = IntGauge::new(
            "freshgate_config_last_reload_successful",
            "1 if the last config reload attempt succeeded.",
        )
        .expect("static metric definition");
        let config_last_success_seconds = prometheus::Gauge::new(
            "freshgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.",
        )
        .expect("static metric definition");
        let flag_enabled = IntGaugeVec::new(
            Opts::new("freshgate_flag_enabled", "1 when the feature flag is on."),
            &["flag"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(responses.clone()),
            Box::new(cache_served_bytes.clone()),
            Box::new(coalesced.clone()),
            Box::new(sse_lagged.clone()),
            Box::new(invalidation_lag_seconds.clone()),
            Box::new(invalidation_subscribed.clone()),
            Box::new(request_seconds.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(store_hits.clone()),
            Box::new(store_errors.clone()),
            Box::new(store_op_seconds.clone()),
            Box::new(redis_up.clone()),
            Box::new(redis_configured.clone()),
            Box::new(memory_entries.clone()),
            Box::new(memory_bytes.clone()),
            Box::new(build_info.clone()),
            Box::new(invalidations.clone()),
            Box::new(invalidated_tags.clone()),
            Box::new(invalidation_failures.clone()),
            Box::new(writes_unanswered.clone()),
            Box::new(writes_rejected.clone()),
            Box::new(owed_invalidations.clone()),
            Box::new(redis_may_evict.clone()),
            Box::new(rules_mixed.clone()),
            Box::new(unmatched_writes.clone()),
            Box::new(bypasses.clone()),
            Box::new(prefetches.clone()),
            Box::new(warmed.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_reload_successful.clone()),
            Box::new(config_last_success_seconds.clone()),
            Box::new(flag_enabled.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            responses,
            cache_served_bytes,
            coalesced,
            sse_lagged,
            invalidation_lag_seconds,
            invalidation_subscribed,
            request_seconds,
            upstream_seconds,
            store_hits,
            store_errors,
            store_op_seconds,
            redis_up,
            redis_configured,
            memory_entries,
            memory_bytes,
            build_info,
            invalidations,
            invalidated_tags,
            invalidation_failures,
            writes_unanswered,
            writes_rejected,
            owed_invalidations,
            redis_may_evict,
            rules_mixed,
            unmatched_writes,
            bypasses,
            prefetches,
            warmed,
            config_reloads,
            config_last_reload_successful,
            config_last_success_seconds,
            flag_enabled,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// `request_seconds` for requests with `outcome`. Every request observes
/// one: its series is looked up once, not by hashing its label (and taking
/// the vector's lock) each time.
pub fn request_seconds(outcome: Outcome) -> &'static Histogram {
    static BY_OUTCOME: [OnceLock<Histogram>; Outcome::ALL.len()] =
        [const { OnceLock::new() }; Outcome::ALL.len()];
    let slot = match outcome {
        Outcome::Hit => 0,
        Outcome::Miss => 1,
        Outcome::Stale => 2,
        Outcome::Bypass => 3,
        Outcome::Pass => 4,
    };
    BY_OUTCOME[slot].get_or_init(|| {
        METRICS
            .request_seconds
            .with_label_values(&[outcome.label()])
    })
}

/// `responses` for a response with `status`, looked up once per class (as
/// [`request_seconds`]).
pub fn responses(status: u16) -> &'static IntCounter {
    static BY_CLASS: [OnceLock<IntCounter>; CLASSES.len()] =
        [const { OnceLock::new() }; CLASSES.len()];
    let i = class_index(status);
    BY_CLASS[i].get_or_init(|| METRICS.responses.with_label_values(&[CLASSES[i]]))
}

/// A request method as a label: the standard ones by name, anything else
/// `OTHER`. Clients choose the method: as a label it must come from a closed
/// set, or each invented method would add series until the process ends.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// The `responses` label of each status class, in [`class_index`] order.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// `2xx`, `5xx`, ... for a status code; `none` for 0 (nothing was sent).
pub fn status_class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_series_is_the_one_its_label_names() {
        for o in Outcome::ALL {
            let named = METRICS.request_seconds.with_label_values(&[o.label()]);
            let before = named.get_sample_count();
            request_seconds(o).observe(0.001);
            assert_eq!(named.get_sample_count(), before + 1, "{o:?}");
        }
        for status in [0, 101, 200, 304, 404, 503, 999] {
            let named = METRICS.responses.with_label_values(&[status_class(status)]);
            let before = named.get();
            responses(status).inc();
            assert_eq!(named.get(), before + 1, "{status}");
        }
    }
}
