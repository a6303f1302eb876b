//! Criterion micro-benchmarks of the pieces a request goes through on a
//! hit, one by one, so a change to one of them is measured where it is made
//! (end-to-end figures come from `scripts/bench`, beside nginx and HAProxy):
//!
//! - `canonical`: a request's canonical form (path folding, query order).
//! - `route_lookup/50_rules`: the route table with the shipped rules plus 44
//!   more (50 in all), for a path matched by a parameterised rule.
//! - `cache_key`: the primary key string and its 128-bit hash.
//! - `tags_for_read` / `plan_write`: what a read is tagged with, what a
//!   write fences.
//! - `entry_encode` / `entry_decode`: a 1 KiB entry to and from its stored
//!   form (Redis, and the memory tier's one allocation).
//! - `validity`: an entry checked against the embedded invalidation clock
//!   after 10,000 invalidations of other tags.
//! - `hit_response`: the answer header of a fresh hit from a prepared entry.
//!
//! Run: `cargo bench --bench hit_path` (`-- --quick` for a short run);
//! `cargo test --all-targets` runs each piece briefly.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::Criterion;
use freshgate::canonical::Canonical;
use freshgate::config::{Config, Overrides};
use freshgate::hit::{self, Prepared};
use freshgate::host;
use freshgate::store::clock::LocalLog;
use freshgate::store::{Entry, Tags};
use freshgate::{cachekey, writes};
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheKey;
use pingora::http::{RequestHeader, ResponseHeader};

/// The shipped config with 44 more route rules: 50 in all.
fn config() -> Config {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/freshgate.yaml"
    ))
    .expect("config/freshgate.yaml");
    let mut extra = String::new();
    for i in 0..44 {
        extra.push_str(&format!(
            "  - name: extra{i}\n    match: /api/v{}/resource{i}/:id/items/:item\n    ttl: 1m\n",
            i % 3
        ));
    }
    let text = shipped.replacen("routes:\n", &format!("routes:\n{extra}"), 1);
    let config = Config::from_str(&text, None, &Overrides::default()).expect("valid config");
    assert_eq!(
        config.routes.rules().len(),
        50,
        "the bench measures 50 rules"
    );
    config
}

fn request(path: &str) -> RequestHeader {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
    req.insert_header("host", "app.example.com").unwrap();
    req.insert_header("accept", "application/json").unwrap();
    req
}

fn benches(c: &mut Criterion) {
    let config = config();
    let req = request("/studio/api/scenes/123?b=2&a=1");
    c.bench_function("canonical", |b| {
        b.iter(|| Canonical::new(black_box(&req), &config.paths, &config.method_override))
    });

    // A slug that starts with digits and a zero-padded id: paths with id
    // readings (`ids/`), the cost of the spellings apps read alike.
    for (name, path) in [
        ("canonical/slug", "/community/api/posts/2024-my-first-post"),
        (
            "canonical/padded_ids",
            "/studio/api/stories/007/scenes/0123",
        ),
    ] {
        let req = request(path);
        c.bench_function(name, |b| {
            b.iter(|| Canonical::new(black_box(&req), &config.paths, &config.method_override))
        });
    }

    let canonical = Canonical::new(&req, &config.paths, &config.method_override);
    c.bench_function("route_lookup/50_rules", |b| {
        b.iter(|| config.routes.lookup(black_box(&canonical.route)))
    });

    let rule = config.routes.lookup(&canonical.route).cloned();
    let host = host::of_request(&req, "http", "app.example.com").unwrap();
    c.bench_function("cache_key", |b| {
        b.iter(|| {
            let primary = cachekey::primary(
                black_box(&req),
                &canonical,
                "http",
                &host,
                rule.as_deref(),
                "",
            );
            CacheKey::new(primary, "").combined_bin()
        })
    });

    c.bench_function("tags_for_read", |b| {
        b.iter(|| {
            config
                .invalidation
                .tags_for_read(black_box(&canonical.route))
        })
    });
    let mut patch = request("/studio/api/scenes/123");
    patch.set_method(http::Method::PATCH);
    let write = Canonical::new(&patch, &config.paths, &config.method_override);
    c.bench_function("plan_write", |b| {
        b.iter(|| writes::plan(&config, true, black_box(&write)))
    });

    let tags = config.invalidation.tags_for_read(&canonical.route);
    let entry_tags = Tags::new(&tags).expect("a few tags");
    let (internal, header, body) = (vec![7u8; 48], vec![9u8; 160], vec![b'x'; 1024]);
    c.bench_function("entry_encode", |b| {
        b.iter(|| {
            Entry::new(
                42,
                config.rules_fingerprint,
                black_box(&entry_tags),
                &internal,
                &header,
                &body,
            )
        })
    });
    let entry = Entry::new(
        42,
        config.rules_fingerprint,
        &entry_tags,
        &internal,
        &header,
        &body,
    )
    .expect("small");
    let encoded = entry.encoded().clone();
    c.bench_function("entry_decode", |b| {
        b.iter(|| Entry::decode(black_box(encoded.clone())))
    });

    let clock = LocalLog::new(Duration::from_secs(3600));
    let fetched = clock.now();
    for i in 0..10_000 {
        clock.invalidate([&format!("p:/other/{i}")]);
    }
    c.bench_function("validity", |b| {
        b.iter(|| clock.valid(black_box(fetched), entry.tag_names()))
    });

    let mut stored = ResponseHeader::build(200, None).unwrap();
    for (n, v) in [
        ("content-type", "application/json"),
        ("content-length", "1024"),
        ("cache-control", "public, max-age=60"),
        ("etag", "\"abc\""),
        ("date", "Mon, 30 Nov 2026 04:00:00 GMT"),
    ] {
        stored.insert_header(n, v).unwrap();
    }
    let now = SystemTime::now();
    let prepared = Prepared::new(stored, now + Duration::from_secs(60), now);
    c.bench_function("hit_response", |b| {
        b.iter(|| hit::response(black_box(&prepared), now))
    });
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let mut c = if measuring {
        Criterion::default().configure_from_args()
    } else {
        // `cargo test --all-targets` runs benches with the test harness's
        // flags (`--skip …`), which criterion's command line refuses: each
        // piece is then run briefly, as a smoke test.
        Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(10))
    };
    benches(&mut c);
    c.final_summary();
}
