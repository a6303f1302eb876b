//! freshgate on a real Redis Cluster (three masters, started by the test):
//! the invalidation log in one slot on one master, entries spread over all
//! of them, and every replica — whichever node it was pointed at — sees
//! every invalidation. The attack with masters killed and restarted is in
//! `checker` (`no_stale_read_through_a_redis_cluster…`).

use std::time::{Duration, Instant};

use crate::util::{Freshgate, Origin, RedisCluster, TEST_CONFIG};

/// The hash tag of every key of freshgate's log.
pub const LOG_SLOT: &str = "{fg}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_redis_cluster_share_entries_and_every_invalidation() {
    let origin = Origin::start(0);
    let cluster = RedisCluster::start();
    cluster.wait_ok().await;
    let log = cluster.owner_of(LOG_SLOT).await;
    // Each replica is pointed at another node, neither of them the log's.
    let a = Freshgate::start(
        &origin.url(),
        Some(&cluster.url((log + 1) % 3)),
        TEST_CONFIG,
    );
    let b = Freshgate::start(
        &origin.url(),
        Some(&cluster.url((log + 2) % 3)),
        TEST_CONFIG,
    );
    let bounded = format!("{TEST_CONFIG}store:\n  redis:\n    consistency: bounded\n");
    let c = Freshgate::start(&origin.url(), Some(&cluster.url((log + 1) % 3)), &bounded);
    for fg in [&a, &b, &c] {
        fg.wait_redis(true).await;
    }
    c.metrics_with(&["freshgate_invalidation_subscribed 1"])
        .await;

    // What A filled, B finds in the cluster (B has nothing in memory).
    // 24 of the demo app's scenes (ids 111, 121, 131, 211, ...).
    let scenes: Vec<String> = (1..=8)
        .flat_map(|story| (1..=3).map(move |ch| format!("/studio/api/scenes/{}1", story * 10 + ch)))
        .collect();
    for s in &scenes {
        assert_eq!(a.get_shared(s).await.x_cache, "MISS", "{s} on a");
        assert_eq!(b.get_shared(s).await.x_cache, "HIT", "{s} on b, from redis");
    }
    // The entries went to their own masters; the log stayed on one.
    let mut with_entries = 0;
    for node in 0..3 {
        with_entries += usize::from(!cluster.keys(node, "fg:*:e:*").await.is_empty());
        let log_keys = cluster.keys(node, &format!("{LOG_SLOT}*")).await;
        assert_eq!(
            !log_keys.is_empty(),
            node == log,
            "node {node}: {log_keys:?} (the log is on node {log})"
        );
    }
    assert!(
        with_entries >= 2,
        "24 entries all on {with_entries} master(s)"
    );

    // A write through B: A (strict) never serves the old text again, and
    // neither does C (bounded) once the message has reached it.
    let scene = &scenes[2];
    assert_eq!(c.get_shared(scene).await.x_cache, "HIT");
    let w = b.patch_shared(scene, r#"{"text":"written on b"}"#).await;
    assert_eq!(w.status, 200, "{w:?}");
    let on_a = a.get_shared(scene).await;
    assert_eq!(on_a.json()["text"], "written on b", "{on_a:?}");
    assert_ne!(on_a.x_cache, "HIT");
    let started = Instant::now();
    while c.get_shared(scene).await.json()["text"] != "written on b" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the bounded replica never heard of the write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Runtime flags are shared through the cluster too.
    let r = a.put_flags(r#"{"cache": false}"#).await;
    assert_eq!(r.json()["shared"], true, "{}", r.body);
    let started = Instant::now();
    loop {
        let f = b.admin_json("/api/flags").await;
        if f["flags"]["cache"]["enabled"] == false {
            assert_eq!(f["flags"]["cache"]["source"], "runtime");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b never saw the flip: {f:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A master that holds the log again after another did (a failover and
/// back) has the same `run_id` and its old copy of the log, which lacks
/// what was recorded meanwhile: nothing cached in its earlier hold may be
/// served again — by a replica that lived through the moves, nor by one
/// started after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_master_back_after_a_failover_serves_nothing_cached_before() {
    let origin = Origin::start(0);
    let cluster = RedisCluster::with_nodes(4);
    cluster.wait_ok().await;
    let log = cluster.owner_of(LOG_SLOT).await;
    cluster.add_replica(3, log).await;
    let a = Freshgate::start(
        &origin.url(),
        Some(&cluster.url((log + 1) % 3)),
        TEST_CONFIG,
    );
    a.wait_redis(true).await;
    let scene = "/studio/api/scenes/111";
    assert_eq!(a.get_shared(scene).await.x_cache, "MISS");
    assert_eq!(a.get_shared(scene).await.x_cache, "HIT");

    // The replica takes the log over; a write is recorded there.
    cluster.failover_to(3).await;
    assert_eq!(cluster.owner_of(LOG_SLOT).await, 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.wait_redis(true).await;
    let w = a
        .patch_shared(scene, r#"{"text":"after the failover"}"#)
        .await;
    assert_eq!(w.status, 200, "{w:?}");
    a.metrics_with(&["freshgate_owed_invalidations 0"]).await;

    // And back: the first master holds the log again.
    cluster.failover_to(log).await;
    assert_eq!(cluster.owner_of(LOG_SLOT).await, log);
    let b = Freshgate::start(&origin.url(), Some(&cluster.url(log)), TEST_CONFIG);
    for fg in [&a, &b] {
        let started = Instant::now();
        loop {
            let r = fg.get_shared(scene).await;
            assert_ne!(
                r.json()["text"],
                "Scene 1 of chapter 1",
                "the entry from before the write: {r:?}"
            );
            if r.json()["text"] == "after the failover" && r.x_cache != "BYPASS" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "never served from the cache again: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
