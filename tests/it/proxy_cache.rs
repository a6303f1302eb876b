//! HTTP caching semantics and safety defaults, embedded store.

use std::time::Duration;

use crate::util::{client, get, send, Freshgate, Origin, TEST_CONFIG};

fn setup() -> (Origin, Freshgate) {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    (origin, fg)
}

#[tokio::test]
async fn miss_then_hit_with_identical_body_and_age() {
    let (origin, fg) = setup();
    let url = fg.url("/knobs/a?cc=max-age%3D60");
    let first = get(&url).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache, "MISS");
    assert!(
        first.cache_status.starts_with("freshgate; fwd=uri-miss"),
        "{}",
        first.cache_status
    );
    let second = get(&url).await;
    assert_eq!(second.x_cache, "HIT");
    assert!(
        second.cache_status.starts_with("freshgate; hit"),
        "{}",
        second.cache_status
    );
    assert_eq!(second.body, first.body, "a hit serves the stored bytes");
    assert_eq!(origin.requests().await, 1, "the hit did not reach the app");
    let age0 = second.age.expect("hits carry Age");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let third = get(&url).await;
    assert_eq!(third.x_cache, "HIT");
    assert!(
        third.age.unwrap() >= age0 + 2,
        "Age grows: {age0} then {:?}",
        third.age
    );
}

#[tokio::test]
async fn query_order_does_not_split_entries() {
    let (_origin, fg) = setup();
    let a = get(&fg.url("/knobs/q?x=1&y=2")).await;
    let b = get(&fg.url("/knobs/q?y=2&x=1")).await;
    assert_eq!(b.x_cache, "HIT");
    assert_eq!(a.serial(), b.serial());
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let (_origin, fg) = setup();
    let url = fg.url("/knobs/v?vary=Accept-Language");
    let c = client();
    let en = send(c.get(&url).header("accept-language", "en")).await;
    let fr = send(c.get(&url).header("accept-language", "fr")).await;
    assert_eq!(en.x_cache, "MISS");
    assert_eq!(fr.x_cache, "MISS", "another variant is not a hit");
    assert_eq!(fr.json()["varied"]["accept-language"], "fr");
    let en2 = send(c.get(&url).header("accept-language", "en")).await;
    let fr2 = send(c.get(&url).header("accept-language", "fr")).await;
    assert_eq!(en2.x_cache, "HIT");
    assert_eq!(en2.json()["varied"]["accept-language"], "en");
    assert_eq!(en2.serial(), en.serial());
    assert_eq!(fr2.x_cache, "HIT");
    assert_eq!(fr2.serial(), fr.serial());
}

#[tokio::test]
async fn vary_star_is_never_stored() {
    let (_origin, fg) = setup();
    let url = fg.url("/knobs/vs?vary=*");
    let a = get(&url).await;
    let b = get(&url).await;
    assert_ne!(b.x_cache, "HIT");
    assert_ne!(a.serial(), b.serial());
}

#[tokio::test]
async fn conditional_request_gets_304_from_cache() {
    let (origin, fg) = setup();
    let url = fg.url("/knobs/etag?etag=v1");
    let full = get(&url).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.headers["etag"], "\"v1\"");
    let c = client();
    let cond = send(c.get(&url).header("if-none-match", "\"v1\"")).await;
    assert_eq!(cond.status, 304);
    assert_eq!(cond.x_cache, "HIT");
    assert!(cond.body.is_empty());
    let other = send(c.get(&url).header("if-none-match", "\"v0\"")).await;
    assert_eq!(
        other.status, 200,
        "a non-matching validator gets the full body"
    );
    assert_eq!(origin.requests().await, 1);
}

#[tokio::test]
async fn stale_entry_is_revalidated_with_the_app() {
    let (origin, fg) = setup();
    let url = fg.url("/knobs/reval?etag=r1&cc=max-age%3D1");
    let first = get(&url).await;
    assert_eq!(first.x_cache, "MISS");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = get(&url).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.x_cache, "HIT", "{}", second.cache_status);
    assert!(
        second.cache_status.contains("fwd-status=304"),
        "{}",
        second.cache_status
    );
    assert_eq!(
        second.serial(),
        first.serial(),
        "the stored body was reused"
    );
    assert_eq!(origin.requests().await, 2);
}

#[tokio::test]
async fn head_is_served_from_the_get_entry() {
    let (origin, fg) = setup();
    let url = fg.url("/knobs/head");
    let g = get(&url).await;
    assert_eq!(g.x_cache, "MISS");
    let h = send(client().head(&url)).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.x_cache, "HIT");
    assert!(h.body.is_empty());
    assert_eq!(origin.requests().await, 1);
    // A HEAD miss passes through and a GET in the background fills the
    // entry: the GET after it is a hit (once the fill is done).
    let url2 = fg.url("/knobs/head2");
    let h2 = send(client().head(&url2)).await;
    assert_eq!(h2.x_cache, "BYPASS");
    assert!(
        h2.cache_status.contains("detail=head-miss"),
        "{}",
        h2.cache_status
    );
    fg.metrics_with(&["freshgate_prefetches_total{result=\"ok\"} 1"])
        .await;
    let g2 = get(&url2).await;
    assert_eq!(g2.x_cache, "HIT");
    assert!(!g2.body.is_empty());
}

#[tokio::test]
async fn oversized_bodies_stream_through_uncached() {
    let (_origin, fg) = setup();
    let url = fg.url("/knobs/big?size=200000");
    let a = get(&url).await;
    let b = get(&url).await;
    assert_eq!(a.body.len(), 200_000);
    assert_eq!(b.body.len(), 200_000);
    assert_ne!(b.x_cache, "HIT");
    assert_ne!(a.serial(), b.serial(), "the second request reached the app");
    let small = fg.url("/knobs/big?size=1000");
    get(&small).await;
    assert_eq!(
        get(&small).await.x_cache,
        "HIT",
        "the limit is about size only"
    );
}

#[tokio::test]
async fn set_cookie_responses_are_never_shared() {
    let (_origin, fg) = setup();
    let url = fg.url("/knobs/login?set_cookie=sid%3Dsecret");
    let alice = get(&url).await;
    assert_eq!(alice.headers["set-cookie"], "sid=secret");
    let bob = get(&url).await;
    assert_ne!(bob.x_cache, "HIT");
    assert_ne!(alice.serial(), bob.serial());
    assert!(
        bob.cache_status.contains("detail=set-cookie"),
        "{}",
        bob.cache_status
    );
}

#[tokio::test]
async fn private_and_no_store_are_not_stored() {
    let (_origin, fg) = setup();
    for cc in [
        "private%2C%20max-age%3D60",
        "no-store",
        "no-cache",
        "max-age%3D0",
    ] {
        let url = fg.url(&format!("/knobs/p?cc={cc}"));
        let a = get(&url).await;
        let b = get(&url).await;
        assert_ne!(b.x_cache, "HIT", "cc={cc}");
        assert_ne!(a.serial(), b.serial(), "cc={cc}");
    }
}

#[tokio::test]
async fn no_heuristic_freshness_without_cache_control() {
    let (_origin, fg) = setup();
    // cc= (empty) sends "Cache-Control: " with nothing usable: not stored.
    let url = fg.url("/knobs/nocc.css?cc=");
    let a = get(&url).await;
    let b = get(&url).await;
    assert_ne!(a.serial(), b.serial());
}

#[tokio::test]
async fn credentials_never_get_a_shared_entry() {
    let (_origin, fg) = setup();
    let url = fg.url("/knobs/shared");
    let public = get(&url).await;
    assert_eq!(get(&url).await.x_cache, "HIT");
    let c = client();
    let auth = send(c.get(&url).header("authorization", "Bearer bob")).await;
    assert_eq!(auth.x_cache, "BYPASS");
    assert_ne!(auth.serial(), public.serial(), "never the shared entry");
    let cookie = send(c.get(&url).header("cookie", "session=bob")).await;
    assert_eq!(cookie.x_cache, "BYPASS");
    assert_ne!(cookie.serial(), public.serial());
}

#[tokio::test]
async fn a_rule_may_key_by_credentials() {
    let (_origin, fg) = setup();
    let url = fg.url("/knobs/per-user/me");
    let c = client();
    let alice = send(c.get(&url).header("authorization", "Bearer alice")).await;
    let bob = send(c.get(&url).header("authorization", "Bearer bob")).await;
    assert_eq!(bob.x_cache, "MISS", "bob does not get alice's entry");
    assert_ne!(alice.serial(), bob.serial());
    let alice2 = send(c.get(&url).header("authorization", "Bearer alice")).await;
    assert_eq!(alice2.x_cache, "HIT");
    assert_eq!(alice2.serial(), alice.serial());
}

#[tokio::test]
async fn rule_ttl_overrides_no_store_from_the_app() {
    let (origin, fg) = setup();
    let url = fg.url("/studio/api/scenes/111");
    let a = get(&url).await;
    assert_eq!(a.headers["cache-control"], "no-store");
    assert_eq!(a.x_cache, "MISS");
    let b = get(&url).await;
    assert_eq!(b.x_cache, "HIT");
    assert_eq!(a.body, b.body);
    assert_eq!(origin.requests().await, 1);
    // Without a rule the app's no-store is obeyed.
    let s1 = get(&fg.url("/studio/api/stories/1")).await;
    assert_eq!(s1.x_cache, "BYPASS");
    assert_eq!(
        get(&fg.url("/studio/api/stories/1")).await.x_cache,
        "BYPASS"
    );
}

#[tokio::test]
async fn disabled_route_bypasses() {
    let (_origin, fg) = setup();
    let url = fg.url("/knobs/off/x");
    get(&url).await;
    let b = get(&url).await;
    assert_eq!(b.x_cache, "BYPASS");
    assert!(b.cache_status.contains("route-disabled"));
}

#[tokio::test]
async fn writes_pass_through_with_body_status_and_headers() {
    let (_origin, fg) = setup();
    let c = client();
    let created = send(
        c.post(fg.url("/community/api/posts"))
            .header("content-type", "application/json")
            .body(r#"{"title":"new","body":"text"}"#),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.x_cache, "PASS");
    assert_eq!(created.json()["title"], "new");
    assert!(created.headers.contains_key("location"));
    let patched = send(
        c.patch(fg.url("/studio/api/scenes/112"))
            .body(r#"{"text":"edited"}"#),
    )
    .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.json()["text"], "edited");
    assert_eq!(patched.json()["version"], 2);
    let bad = send(c.patch(fg.url("/studio/api/scenes/112")).body("not json")).await;
    assert_eq!(bad.status, 400, "the app's own status passes through");
    let missing = send(c.delete(fg.url("/studio/api/scenes/999999"))).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn forwarded_headers_are_added_and_unkeyed_ones_stripped() {
    let (_origin, fg) = setup();
    let r = send(
        client()
            .get(fg.url("/knobs/fwd"))
            .header("x-forwarded-host", "evil.example"),
    )
    .await;
    let j = r.json();
    assert_eq!(j["forwardedFor"], "127.0.0.1");
    assert_eq!(j["forwardedProto"], "http");
    assert_eq!(
        j["forwardedHost"], "",
        "an unkeyed header must not reach the app on a cacheable request"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_result() {
    let (_origin, fg) = setup();
    for _ in 0..3 {
        get(&fg.url("/studio/api/scenes/113")).await;
    }
    fg.metrics_with(&[
        r#"freshgate_requests_total{result="miss",route="scene"} 1"#,
        r#"freshgate_requests_total{result="hit",route="scene"} 2"#,
    ])
    .await;
    assert_eq!(get(&fg.admin_url("/healthz")).await.status, 200);
    let ready = get(&fg.admin_url("/readyz")).await.json();
    assert_eq!(ready["store"]["mode"], "embedded");
}

#[tokio::test]
async fn malformed_requests_get_a_4xx() {
    use std::io::{Read, Write};
    let (_origin, fg) = setup();
    let mut s = std::net::TcpStream::connect(fg.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /knobs/x HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 4"), "got {head:?}");
    // And the proxy is still serving.
    assert_eq!(get(&fg.url("/knobs/x")).await.status, 200);
}

#[tokio::test]
async fn sigterm_keeps_serving_through_the_grace_period_then_drains() {
    let origin = Origin::start(0);
    let config = TEST_CONFIG.replacen(
        "  grace_period: 0s\n  timeout: 1s\n",
        "  grace_period: 2s\n  timeout: 3s\n",
        1,
    );
    let mut fg = Freshgate::start(&origin.url(), None, &config);
    assert_eq!(get(&fg.url("/knobs/bye")).await.status, 200);
    // Still in flight when the listeners close, 2 s after the signal.
    let slow = tokio::spawn(send(
        client()
            .get(fg.url("/knobs/slow"))
            .header("x-demo-delay-ms", "3000"),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    fg.proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // In the grace period: not ready (load balancers stop sending), but a
    // client that still connects is served, on a new connection.
    let ready = get(&fg.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["draining"], true);
    assert_eq!(get(&fg.url("/knobs/during-grace")).await.status, 200);
    // The request in flight is answered after the listeners closed.
    assert_eq!(slow.await.unwrap().status, 200);
    let status = fg
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn concurrent_misses_are_coalesced_into_one_fetch() {
    // A slow app makes the 8 requests overlap the first one's fetch.
    let origin = Origin::start(400);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let url = fg.url("/community/api/posts/7");
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(send(client().get(url.clone()))))
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let body = &replies[0].body;
    for r in &replies {
        assert_eq!(r.status, 200);
        assert_eq!(&r.body, body, "every waiter gets the one fetched body");
    }
    assert_eq!(
        origin.requests().await,
        1,
        "one trip to the app for 8 requests"
    );
    let text = fg
        .metrics_with(&[r#"freshgate_coalesced_requests_total{route="post"} 7"#])
        .await;
    // Bytes from the cache: the 7 waiters' bodies (the fetcher's came from the app).
    let served = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"freshgate_cache_served_bytes_total{route="post"} "#))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .expect("cache bytes counted for the route");
    assert_eq!(served, 7 * body.len());
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    // A slow app, so that the refresh is still running while the stale
    // entry is served.
    let origin = Origin::start(300);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    // max-age=2: the 300 ms the app takes counts towards a response's age
    // (RFC 9111 §4.2.3), so a refreshed entry is fresh for about 1.7 s.
    let url = fg.url("/knobs/swr?cc=max-age%3D2%2C%20stale-while-revalidate%3D60");
    let first = get(&url).await;
    assert_eq!(first.x_cache, "MISS");
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let stale = get(&url).await;
    assert_eq!(stale.x_cache, "STALE", "{}", stale.cache_status);
    // Had it waited for the app, it would carry the new serial.
    assert_eq!(
        stale.serial(),
        first.serial(),
        "the old entry, not the app's"
    );
    // The background request replaces it.
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&url).await;
        if r.x_cache == "HIT" {
            assert!(r.serial() > first.serial(), "refreshed: {}", r.body);
            break;
        }
        assert!(std::time::Instant::now() < end, "never refreshed: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(origin.requests().await, 2, "one fetch, one refresh");
    // The background refresh is not client traffic.
    let m = fg
        .metrics_with(&["freshgate_requests_total{result=\"hit\",route=\"-\"} 1"])
        .await;
    assert!(
        m.contains("freshgate_requests_total{result=\"miss\",route=\"-\"} 1\n"),
        "{m}"
    );

    // Without serve_stale, an expired entry waits for the app like a miss.
    let f = fg.put_flags(r#"{"serve_stale": false}"#).await;
    assert_eq!(f.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_ne!(get(&url).await.x_cache, "STALE");
}

/// Most fresh hits are answered before pingora-cache (`hit.rs`); a
/// conditional request that does not match takes pingora-cache's path to
/// the same entry. Both must answer alike: same fields, same values (Age
/// and the ttl in Cache-Status may tick between them), the same body, and
/// freshgate's own targeted field on neither. A HEAD hit has no body.
#[tokio::test]
async fn a_hit_answered_before_pingora_cache_is_the_hit_pingora_cache_gives() {
    let (origin, fg) = setup();
    let url = fg.url(
        "/knobs/both-paths?cc=max-age%3D60&etag=v1&hdr=freshgate-cache-control:max-age%3D90&hdr=x-app:kept",
    );
    assert_eq!(get(&url).await.x_cache, "MISS");
    let fast = get(&url).await;
    let full = send(client().get(&url).header("if-none-match", "\"other\"")).await;
    assert_eq!(origin.requests().await, 1, "both were hits");
    for r in [&fast, &full] {
        assert_eq!((r.status, r.x_cache.as_str()), (200, "HIT"), "{r:?}");
        assert!(r.cache_status.starts_with("freshgate; hit; ttl="), "{r:?}");
        assert!(!r.headers.contains_key("freshgate-cache-control"), "{r:?}");
        assert_eq!(r.headers["x-app"], "kept");
        assert!(r.age.is_some(), "{r:?}");
    }
    let fields = |r: &crate::util::Got| {
        let mut f: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "age" | "cache-status"))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect();
        f.sort();
        f
    };
    assert_eq!(fields(&fast), fields(&full));
    assert_eq!(fast.body, full.body);

    let head = send(client().head(&url)).await;
    assert_eq!((head.status, head.x_cache.as_str()), (200, "HIT"));
    assert_eq!(
        head.headers["content-length"],
        fast.headers["content-length"]
    );
    assert!(head.body.is_empty());
    // A range and a matching validator still get pingora-cache's answers.
    let part = send(client().get(&url).header("range", "bytes=0-9")).await;
    assert_eq!((part.status, part.body.len()), (206, 10), "{part:?}");
    let same = send(client().get(&url).header("if-none-match", "\"v1\"")).await;
    assert_eq!(same.status, 304, "{same:?}");
    assert_eq!(origin.requests().await, 1);
}

/// Readers that wait behind one fill while a write to the same data is in
/// flight: the fill is not stored (the write fences it). pingora-cache
/// sent every waiter to the app on its own, as BYPASS; they must wait for
/// the next fill instead (one fetch at a time), so that once the write is
/// done the rest are served by one stored fill.
#[tokio::test]
async fn waiters_behind_a_fill_a_write_declined_wait_for_the_next_fill() {
    let origin = Origin::start(300);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let path = "/studio/api/scenes/133";
    let before = origin.requests().await;
    let write = tokio::spawn(send(
        client()
            .patch(fg.url(path))
            .header("host", "app.test")
            .header("x-demo-delay-ms", "300")
            .body(r#"{"text":"written while readers waited"}"#),
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let readers: Vec<_> = (0..10)
        .map(|_| tokio::spawn(send(client().get(fg.url(path)).header("host", "app.test"))))
        .collect();
    let mut replies = Vec::new();
    for r in readers {
        replies.push(r.await.unwrap());
    }
    assert_eq!(write.await.unwrap().status, 200);
    let reads = origin.requests().await - before - 1;
    let served_by_a_fill = replies.iter().filter(|r| r.x_cache == "HIT").count();
    assert!(
        reads <= 6 && served_by_a_fill >= 4,
        "{reads} of 10 readers went to the app, {served_by_a_fill} were served by a stored fill: {:?}",
        replies
            .iter()
            .map(|r| (r.x_cache.as_str(), r.cache_status.as_str()))
            .collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.x_cache == "HIT") {
        assert_eq!(r.json()["text"], "written while readers waited", "{r:?}");
    }
}
