//! Invalidation: a write acknowledged is never followed by a stale read.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::{client, get, send, two_replicas, Freshgate, Origin, TEST_CONFIG};

#[tokio::test]
async fn an_edit_is_seen_on_the_next_read() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let url = fg.url("/studio/api/scenes/131");
    get(&url).await;
    assert_eq!(get(&url).await.x_cache, "HIT");
    let patched = send(client().patch(&url).body(r#"{"text":"edited"}"#)).await;
    assert_eq!(patched.status, 200);
    let after = get(&url).await;
    assert_eq!(after.x_cache, "MISS");
    assert_eq!(after.json()["text"], "edited");
    assert_eq!(after.json()["version"], 2);
    assert_eq!(get(&url).await.x_cache, "HIT", "and it is cached again");
    // Another scene was not touched.
    let other = fg.url("/studio/api/scenes/132");
    get(&other).await;
    send(client().patch(&url).body(r#"{"text":"again"}"#)).await;
    assert_eq!(get(&other).await.x_cache, "HIT");
}

#[tokio::test]
async fn a_like_invalidates_the_post_and_the_collection() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let post = fg.url("/community/api/posts/7");
    let list = fg.url("/community/api/posts");
    let other = fg.url("/community/api/posts/8");
    for u in [&post, &list, &other] {
        get(u).await;
        assert_eq!(get(u).await.x_cache, "HIT");
    }
    let liked = send(client().post(fg.url("/community/api/posts/7/like"))).await;
    assert_eq!(liked.json()["likes"], 1);
    let p = get(&post).await;
    assert_eq!(p.x_cache, "MISS");
    assert_eq!(p.json()["likes"], 1);
    let l = get(&list).await;
    assert_eq!(l.x_cache, "MISS");
    let seven = l.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == 7)
        .cloned()
        .unwrap();
    assert_eq!(seven["likes"], 1);
    assert_eq!(
        get(&other).await.x_cache,
        "HIT",
        "post 8 is bound out by :postId"
    );
}

#[tokio::test]
async fn a_write_invalidates_its_own_uri_without_any_rule_and_is_counted() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let url = fg.url("/studio/api/chapters/11");
    get(&url).await;
    get(&fg.url("/studio/api/chapters/11?view=full")).await;
    assert_eq!(get(&url).await.x_cache, "HIT");
    send(client().patch(&url).body(r#"{"title":"t2"}"#)).await;
    let after = get(&url).await;
    assert_eq!(after.x_cache, "MISS");
    assert_eq!(after.json()["title"], "t2");
    assert_eq!(
        get(&fg.url("/studio/api/chapters/11?view=full"))
            .await
            .x_cache,
        "MISS",
        "every query of the path"
    );
    let metrics = get(&fg.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains(r#"freshgate_unmatched_writes_total{route="chapter"} 1"#),
        "{metrics}"
    );
    // And listed, by path shape, on the admin API.
    send(
        client()
            .patch(fg.url("/studio/api/chapters/12"))
            .body(r#"{"title":"t3"}"#),
    )
    .await;
    let listed = get(&fg.admin_url("/api/unmatched-writes")).await.json();
    let w = &listed["writes"][0];
    assert_eq!(w["method"], "PATCH");
    assert_eq!(w["shape"], "/studio/api/chapters/:id");
    assert_eq!(w["route"], "chapter");
    assert_eq!(w["count"], 2);
    assert_eq!(w["example"], "/studio/api/chapters/12");
    assert_eq!(listed["writes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn failed_writes_invalidate_nothing() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let url = fg.url("/studio/api/scenes/133");
    get(&url).await;
    let bad = send(client().patch(&url).body("not json")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(get(&url).await.x_cache, "HIT");
}

#[tokio::test]
async fn location_and_content_location_are_invalidated() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let a = fg.url("/knobs/loc/a");
    let b = fg.url("/knobs/loc/b");
    get(&a).await;
    get(&b).await;
    send(
        client().post(
            fg.url("/knobs/w?location=%2Fknobs%2Floc%2Fa&content_location=%2Fknobs%2Floc%2Fb"),
        ),
    )
    .await;
    assert_eq!(get(&a).await.x_cache, "MISS");
    assert_eq!(get(&b).await.x_cache, "MISS");
    // Another origin's Location is ignored.
    get(&a).await;
    send(client().post(fg.url("/knobs/w?location=http%3A%2F%2Fother.example%2Fknobs%2Floc%2Fa")))
        .await;
    assert_eq!(get(&a).await.x_cache, "HIT");
}

#[tokio::test]
async fn cache_groups_and_surrogate_keys() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let grouped = fg.url("/knobs/g1?cache_groups=%22scenes%22");
    let other = fg.url("/knobs/g2?cache_groups=%22posts%22");
    get(&grouped).await;
    get(&other).await;
    assert_eq!(get(&grouped).await.x_cache, "HIT");
    send(client().post(fg.url("/knobs/w?cache_group_invalidation=%22scenes%22"))).await;
    assert_eq!(
        get(&grouped).await.x_cache,
        "MISS",
        "RFC 9875 group invalidated"
    );
    assert_eq!(get(&other).await.x_cache, "HIT");
}

/// These two race tests are heavy (thousands of requests through debug
/// builds on 2 cores): `scripts/test` runs them alone, one at a time.
///
/// The stale-set race checker: writers like posts and record, after each
/// acknowledged write, the version it produced; readers note the versions
/// acknowledged *before* they send a read and check the read shows at least
/// those, for single posts and for the collection that contains them.
struct Checker {
    done: Vec<AtomicU64>,
    reads: AtomicUsize,
    violations: AtomicUsize,
}

const POSTS: u64 = 4;

async fn race(urls: Vec<String>, reads_wanted: usize, limit: Duration) -> (usize, usize) {
    let chk = Arc::new(Checker {
        done: (0..=POSTS).map(|_| AtomicU64::new(0)).collect(),
        reads: AtomicUsize::new(0),
        violations: AtomicUsize::new(0),
    });
    let deadline = Instant::now() + limit;
    let mut tasks = Vec::new();
    for w in 0..3 {
        let (chk, urls) = (chk.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut i = w;
            while chk.reads.load(Ordering::Relaxed) < reads_wanted && Instant::now() < deadline {
                i += 1;
                let p = 1 + (i as u64 % POSTS);
                let base = &urls[i % urls.len()];
                let r = c
                    .post(format!("{base}/community/api/posts/{p}/like"))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if let Some(ver) = v["version"].as_u64() {
                            chk.done[p as usize].fetch_max(ver, Ordering::SeqCst);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    for r in 0..6 {
        let (chk, urls) = (chk.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut i = r;
            while chk.reads.load(Ordering::Relaxed) < reads_wanted && Instant::now() < deadline {
                i += 1;
                let base = &urls[i % urls.len()];
                let before: Vec<u64> = chk.done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
                let p = 1 + (i as u64 % POSTS);
                let collection = i % 3 == 0;
                let url = if collection {
                    format!("{base}/community/api/posts")
                } else {
                    format!("{base}/community/api/posts/{p}")
                };
                let Ok(resp) = c.get(url).send().await else {
                    continue;
                };
                let Ok(v) = resp.json::<serde_json::Value>().await else {
                    continue;
                };
                let seen: Vec<(u64, u64)> = if collection {
                    crate::util::listed_versions(&v)
                } else {
                    vec![(p, v["version"].as_u64().unwrap_or(0))]
                };
                for (id, ver) in seen {
                    if id <= POSTS && ver < before[id as usize] {
                        chk.violations.fetch_add(1, Ordering::Relaxed);
                    }
                }
                chk.reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "race: {} reads, {} violations in {:?}",
        chk.reads.load(Ordering::Relaxed),
        chk.violations.load(Ordering::Relaxed),
        started.elapsed()
    );
    (
        chk.reads.load(Ordering::Relaxed),
        chk.violations.load(Ordering::Relaxed),
    )
}

/// The same rules without the `invalidate:` section: invalidation switched off.
fn without_invalidation() -> String {
    TEST_CONFIG.split("invalidate:").next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_an_acknowledged_write_embedded() {
    let origin = Origin::start(2);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let (reads, violations) = race(vec![fg.url("")], 10_000, Duration::from_secs(300)).await;
    assert!(reads >= 10_000, "only {reads} reads");
    assert_eq!(violations, 0, "stale reads after acknowledged writes");

    // The checker can fail: the same load with invalidation off must catch stale reads.
    let off = Freshgate::start(&origin.url(), None, &without_invalidation());
    let (reads, violations) = race(vec![off.url("")], 2_000, Duration::from_secs(60)).await;
    assert!(reads > 0);
    assert!(
        violations > 0,
        "the checker found no stale read with invalidation off ({reads} reads)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_read_after_an_acknowledged_write_across_replicas() {
    let origin = Origin::start(2);
    let (_redis, a, b) = two_replicas(&origin, TEST_CONFIG).await;
    let (reads, violations) =
        race(vec![a.url(""), b.url("")], 10_000, Duration::from_secs(300)).await;
    assert!(reads >= 10_000, "only {reads} reads");
    assert_eq!(
        violations, 0,
        "stale reads after acknowledged writes, across replicas"
    );
}

#[tokio::test]
async fn purge_api_by_pattern_tag_and_everything() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let c = client();
    let purge = |body: &'static str| {
        let c = c.clone();
        let url = fg.admin_url("/api/purge");
        async move {
            send(
                c.post(url)
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await
        }
    };
    let s1 = fg.url("/studio/api/scenes/141");
    let s2 = fg.url("/studio/api/scenes/142");
    let keyed = fg.url("/knobs/sk?surrogate_key=story-7%20scene-9");
    for u in [&s1, &s2, &keyed] {
        get(u).await;
        assert_eq!(get(u).await.x_cache, "HIT");
    }
    let r = purge(r#"{"pattern": "/studio/api/scenes/:id", "params": {"id": "141"}}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("id=141"),
        "answers with what it invalidated: {}",
        r.body
    );
    assert_eq!(get(&s1).await.x_cache, "MISS");
    assert_eq!(get(&s2).await.x_cache, "HIT");

    assert_eq!(purge(r#"{"tag": "scene-9"}"#).await.status, 200);
    assert_eq!(get(&keyed).await.x_cache, "MISS", "Surrogate-Key purge");

    assert_eq!(purge(r#"{"all": true}"#).await.status, 200);
    assert_eq!(get(&s1).await.x_cache, "MISS");
    assert_eq!(get(&s2).await.x_cache, "MISS");

    assert_eq!(purge("nonsense").await.status, 400);
    assert_eq!(purge(r#"{"pattern": "/a/**/b"}"#).await.status, 400);
    assert_eq!(purge("{}").await.status, 400);
}

#[tokio::test]
async fn with_prefetch_a_write_refetches_what_it_purged_so_the_next_read_hits() {
    let origin = Origin::start(0);
    let config = format!("{TEST_CONFIG}flags:\n  prefetch: true\n");
    let fg = Freshgate::start(&origin.url(), None, &config);
    let post = fg.url("/community/api/posts/7");
    let list = fg.url("/community/api/posts");
    for u in [&post, &list] {
        get(u).await;
        assert_eq!(get(u).await.x_cache, "HIT");
    }
    let app_before = origin.requests().await;
    let liked = send(client().post(fg.url("/community/api/posts/7/like"))).await;
    assert_eq!(liked.json()["likes"], 1);
    // Both exact paths the rule purges are fetched again, in the background.
    fg.metrics_with(&["freshgate_prefetches_total{result=\"ok\"} 2"])
        .await;
    let p = get(&post).await;
    assert_eq!(p.x_cache, "HIT", "refetched after the write");
    assert_eq!(p.json()["likes"], 1, "with the write's effect");
    let l = get(&list).await;
    assert_eq!(l.x_cache, "HIT");
    let seven = l.json()["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == 7).cloned())
        .expect("post 7 is listed");
    assert_eq!(seven["likes"], 1);
    assert_eq!(
        origin.requests().await - app_before,
        3,
        "the write and one refetch per purged path reached the app"
    );
    // Refetches are not client traffic: the only misses are the first reads.
    let metrics = fg
        .metrics_with(&["freshgate_requests_total{result=\"hit\",route=\"post\"} 2"])
        .await;
    assert!(
        metrics.contains("freshgate_requests_total{result=\"miss\",route=\"post\"} 1"),
        "{metrics}"
    );

    // Switched off at run time: the next write refetches nothing.
    let put = fg.put_flags(r#"{"prefetch": false}"#).await;
    assert_eq!(put.status, 200, "{}", put.body);
    send(client().post(fg.url("/community/api/posts/7/like"))).await;
    let p = get(&post).await;
    assert_eq!(p.x_cache, "MISS");
    assert_eq!(p.json()["likes"], 2);
    assert!(fg
        .metrics_with(&["freshgate_prefetches_total{result=\"ok\"} 2"])
        .await
        .contains("freshgate_prefetches_total{result=\"ok\"} 2\n"));
}

#[tokio::test]
async fn warm_paths_are_cached_once_freshgate_has_started() {
    let origin = Origin::start(0);
    let config =
        format!("{TEST_CONFIG}warm:\n  paths: [/community/api/posts/3, /studio/api/scenes/111]\n");
    let fg = Freshgate::start(&origin.url(), None, &config);
    fg.metrics_with(&["freshgate_warmed_total{result=\"ok\"} 2"])
        .await;
    for p in ["/community/api/posts/3", "/studio/api/scenes/111"] {
        assert_eq!(get(&fg.url(p)).await.x_cache, "HIT", "{p}");
    }
    assert_eq!(
        origin.requests().await,
        2,
        "only the warming fetches reached the app"
    );
}
