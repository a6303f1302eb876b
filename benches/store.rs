//! Hit and invalidation latency of the embedded store with few and with many
//! cached entries: invalidation must not grow with the cache (no walk, no
//! scan), so the two columns should stay close.
//!
//! Run: `cargo bench --bench store` (release profile). Prints one table;
//! figures are recorded in docs/benchmarks.md. It drives the same pingora
//! `Storage` calls the proxy makes (miss handler to fill, lookup + body read
//! to hit), with the tags the shipped config's rules give each path.
//! `BENCH_SIZES=1000,1000000` and `BENCH_OPS=200000` change the sizes and the
//! number of timed operations. `BENCH_REDIS=redis://127.0.0.1:6379` measures
//! the Redis tier instead (entries written through to Redis, the memory tier
//! in front; `BENCH_CONSISTENCY=strict|bounded`): a strict hit includes the
//! MGET of its tags' `last_inv`, a write is two script calls (its fence
//! before it is forwarded, its invalidation and lift after). Use a
//! scratch Redis: the bench writes into it and leaves entries to expire.
//!
//! Beside each row, the same number of reads from a plain `HashMap`: the
//! machine's own cost of touching that much memory at random, which no cache
//! structure avoids. End-to-end figures (HTTP hits and writes through the
//! proxy at 1k and 1M entries) come from `scripts/bench-entries`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use freshgate::config::{Config, Overrides};
use freshgate::store::redis::{Consistency, Limits, RedisTier};
use freshgate::store::{Ended, FillInfo, FillStart, Store, Tags};
use pingora::cache::trace::Span;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;

/// p50, p99 and mean of `timings` (zeros when there are none).
fn summary(timings: &mut [Duration]) -> [Duration; 3] {
    if timings.is_empty() {
        return [Duration::ZERO; 3];
    }
    timings.sort();
    let at = |p: f64| timings[((timings.len() - 1) as f64 * p) as usize];
    let mean = timings.iter().sum::<Duration>() / timings.len() as u32;
    [at(0.5), at(0.99), mean]
}

/// A cheap deterministic PRNG (xorshift): the bench needs spread, not quality.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn path(i: u64) -> String {
    format!("/studio/api/scenes/{i}")
}

/// The floor a memory tier cannot go below on this machine: reads of a plain
/// `HashMap` holding as many values of about an entry's size, at random.
/// What grows here with the entry count is memory latency (CPU caches, TLB),
/// not any cache's algorithm.
fn plain_map_reads(entries: u64, ops: usize) -> [Duration; 3] {
    let map: std::collections::HashMap<u64, Box<[u8]>> = (0..entries)
        .map(|i| (i, vec![i as u8; 800].into_boxed_slice()))
        .collect();
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut reads = Vec::with_capacity(ops);
    for _ in 0..ops {
        let i = rng.next(entries);
        let t = Instant::now();
        let v = map.get(&i).expect("every key was inserted");
        std::hint::black_box((v[0], v[v.len() - 1]));
        reads.push(t.elapsed());
    }
    summary(&mut reads)
}

struct Row {
    entries: u64,
    fill_secs: f64,
    memory_bytes: u64,
    hit: [Duration; 3],
    inv: [Duration; 3],
    plain: [Duration; 3],
    /// Redis only: lookups or invalidations that failed (timeouts).
    failed: u64,
}

/// A connected Redis tier (its background tasks run on the bench runtime).
async fn redis_tier(url: &str, consistency: Consistency) -> Arc<RedisTier> {
    let limits = Limits {
        timeout: Duration::from_secs(1),
        inv_ttl: Duration::from_secs(3600),
        fence_ttl: Duration::from_secs(125),
    };
    let tier = Arc::new(RedisTier::new(url.to_string(), limits, consistency));
    // Never signalled: the tasks end with the process.
    let (stop, watch) = tokio::sync::watch::channel(false);
    std::mem::forget(stop);
    tokio::spawn(tier.clone().maintain(watch.clone()));
    if consistency == Consistency::Bounded {
        tokio::spawn(tier.clone().follow_invalidations(watch));
    }
    for _ in 0..100 {
        if tier.available() && tier.fill_start(&[]).await.is_some() {
            // Let a bounded follower subscribe.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return tier;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Redis at {url} is not reachable");
}

/// The invalidation log read a fill starts with, waiting out a Redis
/// hiccup (a fill needs one).
async fn clock(store: &Store) -> FillStart {
    for _ in 0..500 {
        if let Some(c) = store.fill_start(&[]).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the invalidation clock stayed unreadable for 5 s");
}

async fn measure(config: &Config, redis: Option<Arc<RedisTier>>, entries: u64, ops: usize) -> Row {
    // Room for every entry: this measures lookups, not eviction.
    let store: &'static Store = Box::leak(Box::new(Store::new(
        8 << 30,
        redis,
        Duration::from_secs(3600),
        Duration::from_secs(60),
    )));
    store.set_rules(config.rules_fingerprint);
    let span = Span::inactive().handle();
    let body = Bytes::from(vec![b'x'; 512]);
    // Keys are built per operation from the path, as the proxy builds them per
    // request (a table of a million prebuilt keys would add its own cache
    // misses to the large cache's hits, and not to the small one's).
    let key = |i: u64| CacheKey::new(format!("bench{}", path(i)), "");
    let started = Instant::now();
    for i in 0..entries {
        let now = SystemTime::now();
        let mut meta = CacheMeta::new(
            now + Duration::from_secs(600),
            now,
            0,
            0,
            ResponseHeader::build(200, None).expect("static header"),
        );
        let start = clock(store).await;
        meta.extensions_mut().insert(FillInfo {
            fetch_seq: start.seq,
            epoch: start.epoch,
            rules: config.rules_fingerprint,
            tags: Tags::new(
                &config
                    .invalidation
                    .tags_for_read(&config.paths.route_path(&path(i))),
            )
            .expect("a few tags"),
            began: start.began,
        });
        let mut miss = store
            .get_miss_handler(&key(i), &meta, &span)
            .await
            .expect("miss handler");
        miss.write_body(body.clone(), true).await.expect("write");
        miss.finish().await.expect("finish");
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let (_, memory_bytes) = store.memory_usage();

    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut hits = Vec::with_capacity(ops);
    let mut failed = 0;
    for _ in 0..ops {
        let key = key(rng.next(entries));
        let t = Instant::now();
        let found = store.lookup(&key, &span).await.expect("lookup");
        let Some((_, mut h)) = found else {
            // Redis may time out on a loaded machine, which the proxy treats
            // as a miss; so does this count (reported, not timed).
            failed += 1;
            continue;
        };
        let b = h.read_body().await.expect("body");
        hits.push(t.elapsed());
        std::hint::black_box(b);
    }
    // A scene write under the shipped rules, both phases: fence what it
    // may change (the scene's own URI and bound tags, its chapter and story
    // families) before it is forwarded, invalidate and lift after.
    let mut invs = Vec::with_capacity(ops);
    for _ in 0..ops {
        let p = path(rng.next(entries));
        let plan = config.invalidation.plan_write(
            &freshgate::methods::Methods::only(http::Method::PATCH),
            &config.paths.route_path(&p),
        );
        let t = Instant::now();
        let fence = store.begin_write(plan.tags).await;
        let fenced = fence.recorded();
        if fenced && store.end_write(fence, BTreeSet::new(), true).await == Ended::Recorded {
            invs.push(t.elapsed());
        } else {
            failed += 1;
        }
    }
    // The embedded store neither misses a fresh entry nor fails to record.
    assert!(
        store.redis().is_some() || failed == 0,
        "{failed} embedded-store operations failed"
    );
    Row {
        failed,
        entries,
        fill_secs,
        memory_bytes,
        hit: summary(&mut hits),
        inv: summary(&mut invs),
        plain: plain_map_reads(entries, ops),
    }
}

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    let config = Config::load(
        Some(std::path::Path::new("config/freshgate.yaml")),
        &Overrides::default(),
    )
    .expect("config/freshgate.yaml is valid");
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it: then a small smoke run keeps the code exercised.
    let bench = std::env::args().any(|a| a == "--bench");
    let (sizes, ops) = if bench {
        (
            env_list("BENCH_SIZES", &[1_000, 1_000_000]),
            env_list("BENCH_OPS", &[200_000])[0] as usize,
        )
    } else {
        (vec![1_000], 1_000)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| entries | fill (s) | memory tier (MiB) | hit p50 (µs) | hit p99 (µs) | hit mean (µs) | write: fence + invalidate p50 (µs) | p99 (µs) | mean (µs) | plain HashMap read p50 / p99 (µs) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let redis_url = std::env::var("BENCH_REDIS").ok();
    let consistency = std::env::var("BENCH_CONSISTENCY")
        .ok()
        .map(|c| Consistency::parse(&c).expect("BENCH_CONSISTENCY is strict or bounded"))
        .unwrap_or_default();
    for n in sizes {
        let r = rt.block_on(async {
            let redis = match &redis_url {
                Some(url) => Some(redis_tier(url, consistency).await),
                None => None,
            };
            measure(&config, redis, n, ops).await
        });
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {} | {:.1} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} |",
            r.entries,
            r.fill_secs,
            r.memory_bytes as f64 / (1 << 20) as f64,
            us(r.hit[0]),
            us(r.hit[1]),
            us(r.hit[2]),
            us(r.inv[0]),
            us(r.inv[1]),
            us(r.inv[2]),
            us(r.plain[0]),
            us(r.plain[1]),
        );
        if r.failed > 0 {
            println!(
                "({} entries: {} operations failed on Redis and are not timed)",
                r.entries, r.failed
            );
        }
    }
    let store = match &redis_url {
        Some(_) => format!("Redis tier, {consistency:?} consistency"),
        None => "embedded store".to_string(),
    };
    println!("({ops} timed operations of each kind per size, one thread, {store})");
}
