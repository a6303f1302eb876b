//! Hot reload of the config file and feature flags.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::{client, get, send, two_replicas, Freshgate, Origin, BIN, TEST_CONFIG};

/// Requests in a loop until `stop`; returns (sent, failed).
fn background_traffic(
    fg: &Freshgate,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let urls = [
        fg.url("/studio/api/scenes/121"),
        fg.url("/community/api/posts"),
        fg.url("/studio/api/chapters/12"),
    ];
    tokio::spawn(async move {
        let c = client();
        let (mut sent, mut failed) = (0u64, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            for u in &urls {
                sent += 1;
                match c.get(u).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => failed.push(format!("{u}: {}", r.status())),
                    Err(e) => failed.push(format!("{u}: {e}")),
                }
            }
        }
        (sent, failed)
    })
}

fn with_stories_route(base: &str) -> String {
    base.replace(
        "routes:\n",
        "routes:\n  - name: story\n    match: /studio/api/stories/:id\n    ttl: 60s\n    override_no_store: true\n",
    )
}

#[tokio::test]
async fn edits_in_place_and_by_rename_take_effect_while_requests_flow() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = background_traffic(&fg, stop.clone());
    let story = fg.url("/studio/api/stories/1");
    let r = get(&story).await;
    assert_eq!(r.x_cache, "BYPASS", "no rule yet: the app's no-store wins");

    // 1. Write in place: a new route rule.
    fg.write_config(&with_stories_route(TEST_CONFIG));
    fg.wait_config("version 2", |v| v["version"] == 2).await;
    get(&story).await;
    assert_eq!(
        get(&story).await.x_cache,
        "HIT",
        "the new rule caches stories"
    );

    // 2. Temp file + rename: turn the scene route off.
    let scenes_off = with_stories_route(TEST_CONFIG).replace(
        "    match: /studio/api/scenes/:id\n",
        "    match: /studio/api/scenes/:id\n    enabled: false\n",
    );
    fg.rename_config(&scenes_off);
    let cfg = fg.wait_config("version 3", |v| v["version"] == 3).await;
    assert_eq!(cfg["lastReload"]["result"], "success");
    assert_eq!(cfg["lastError"], serde_json::Value::Null);
    let r = get(&fg.url("/studio/api/scenes/121")).await;
    assert_eq!(r.x_cache, "BYPASS");
    assert!(
        r.cache_status.contains("route-disabled"),
        "{}",
        r.cache_status
    );

    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = traffic.await.unwrap();
    assert!(sent > 0);
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {failed:?}",
        failed.len()
    );
    let metrics = get(&fg.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains("freshgate_config_reloads_total{result=\"success\"} 2"),
        "{metrics}"
    );
}

/// The 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> u64 {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i as u64 + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
}

#[tokio::test]
async fn a_bad_edit_changes_nothing_and_is_reported_with_its_line() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let scene = fg.url("/studio/api/scenes/121");
    get(&scene).await;
    assert_eq!(get(&scene).await.x_cache, "HIT");

    let unknown_field = TEST_CONFIG.replacen("    ttl: 60s\n", "    ttl: 60s\n    tll: 5s\n", 1);
    let bad_pattern = TEST_CONFIG.replace(
        "match: /studio/api/chapters/:id",
        "match: studio/api/chapters/:id",
    );
    let wrong_type = TEST_CONFIG.replacen(
        "    override_no_store: true\n",
        "    override_no_store: maybe\n",
        1,
    );
    let syntax = format!("{TEST_CONFIG}  - name: [unclosed\n");
    let cases = [
        (
            "unknown field",
            unknown_field.clone(),
            line_of(&unknown_field, "tll:"),
            "tll",
        ),
        (
            "invalid pattern",
            bad_pattern.clone(),
            line_of(&bad_pattern, "match: studio/"),
            "studio/api/chapters",
        ),
        (
            "wrong type",
            wrong_type.clone(),
            line_of(&wrong_type, "maybe"),
            "bool",
        ),
        (
            "syntax error",
            syntax.clone(),
            syntax.lines().count() as u64,
            "",
        ),
    ];
    let mut previous = serde_json::Value::Null;
    for (i, (what, text, line, mentions)) in cases.iter().enumerate() {
        fg.write_config(text);
        let errors = i as u64 + 1;
        let cfg = fg
            .wait_config(what, |v| {
                v["lastReload"]["result"] == "error" && v["lastError"]["message"] != previous
            })
            .await;
        previous = cfg["lastError"]["message"].clone();
        assert!(
            previous.as_str().unwrap().contains(mentions),
            "{what}: the reason names the problem: {previous}"
        );
        assert_eq!(cfg["version"], 1, "{what}: nothing was swapped in");
        let problem = &cfg["lastError"]["problems"][0];
        assert_eq!(problem["line"], *line, "{what}: {cfg:#}");
        assert!(
            cfg["lastError"]["message"]
                .as_str()
                .unwrap()
                .contains("freshgate.yaml:"),
            "{what}: the message names the file: {cfg:#}"
        );
        // The running config still serves: the entry and its rule are intact.
        assert_eq!(get(&scene).await.x_cache, "HIT", "{what}");
        let metrics = get(&fg.admin_url("/metrics")).await.body;
        assert!(
            metrics.contains(&format!(
                "freshgate_config_reloads_total{{result=\"error\"}} {errors}"
            )),
            "{what}: {metrics}"
        );
        assert!(metrics.contains("freshgate_config_last_reload_successful 0"));
    }
    // A good edit after the bad ones applies.
    fg.write_config(&with_stories_route(TEST_CONFIG));
    fg.wait_config("a good edit", |v| v["version"] == 2).await;
}

#[tokio::test]
async fn a_file_created_anew_is_read_once_its_writer_is_done() {
    // `rm freshgate.yaml; slow-writer > freshgate.yaml`: its creation was
    // read as a finished edit, and the first half ran until the writer
    // closed it (here: every route, no invalidation rule, so a write purged
    // nothing), after dropping the whole cache for it.
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let full = with_stories_route(TEST_CONFIG);
    let cut = full.find("invalidate:").unwrap();
    std::fs::remove_file(&fg.config).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fg.config).unwrap();
        f.write_all(&full.as_bytes()[..cut]).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let half = fg.admin_json("/api/config").await;
        assert_eq!(half["version"], 1, "the half file was read: {half}");
        f.write_all(&full.as_bytes()[cut..]).unwrap();
    }
    let v = fg
        .wait_config("the file, once closed", |v| v["version"] != 1)
        .await;
    assert_eq!(v["version"], 2, "{v}");
    assert_eq!(v["invalidationRules"], 4, "{v}");
}

#[tokio::test]
async fn a_file_linked_into_place_is_read() {
    // `rm F; ln new F`: a creation with no write to wait for.
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let new = fg.config.with_extension("new");
    std::fs::write(&new, with_stories_route(TEST_CONFIG)).unwrap();
    std::fs::remove_file(&fg.config).unwrap();
    std::fs::hard_link(&new, &fg.config).unwrap();
    fg.wait_config("the linked file", |v| v["version"] == 2)
        .await;
}

#[tokio::test]
async fn sighup_reloads_when_file_watching_is_off() {
    let origin = Origin::start(0);
    let fg = Freshgate::start_with_args(&origin.url(), None, TEST_CONFIG, &["--watch", "false"]);
    fg.write_config(&with_stories_route(TEST_CONFIG));
    // Not watching: the edit waits for the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fg.admin_json("/api/config").await["version"], 1);
    fg.proc.signal("HUP");
    fg.wait_config("reloaded by SIGHUP", |v| v["version"] == 2)
        .await;
    let story = fg.url("/studio/api/stories/2");
    get(&story).await;
    assert_eq!(get(&story).await.x_cache, "HIT");
    // The process is still running (SIGHUP's default action would end it).
    assert!(get(&fg.admin_url("/healthz")).await.status == 200);
}

#[tokio::test]
async fn env_overrides_the_file_and_flags_say_where_values_come_from() {
    let origin = Origin::start(0);
    let config = format!("{TEST_CONFIG}flags:\n  prefetch: false\n  invalidation: true\n");
    let fg = Freshgate::start_full(
        &origin.url(),
        None,
        &config,
        &[],
        &[("ENABLE_CACHE_INVALIDATION", "false")],
    );
    let flags = fg.admin_json("/api/flags").await["flags"].clone();
    assert_eq!(flags["invalidation"]["enabled"], false);
    assert_eq!(flags["invalidation"]["source"], "env");
    assert_eq!(flags["prefetch"]["enabled"], false);
    assert_eq!(flags["prefetch"]["source"], "file");
    assert_eq!(flags["cache"]["enabled"], true);
    assert_eq!(flags["cache"]["source"], "default");

    // With the rules off, a write to something unrelated still drops every
    // entry: coarse, never stale.
    let scene = fg.url("/studio/api/scenes/121");
    get(&scene).await;
    assert_eq!(get(&scene).await.x_cache, "HIT");
    let w = send(client().post(fg.url("/knobs/unrelated")).body("{}")).await;
    assert_eq!(w.status, 200);
    assert_eq!(get(&scene).await.x_cache, "MISS");
    let metrics = get(&fg.admin_url("/metrics")).await.body;
    assert!(
        metrics.contains("freshgate_flag_enabled{flag=\"invalidation\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_bad_flag_value_in_the_environment_stops_the_start() {
    let out = std::process::Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:2",
        ])
        .env("ENABLE_PREFETCHING", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ENABLE_PREFETCHING=\"maybe\""), "{err}");
}

#[tokio::test]
async fn kill_switch_passes_everything_through_and_writes_still_count() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let scene = fg.url("/studio/api/scenes/121");
    get(&scene).await;
    assert_eq!(get(&scene).await.x_cache, "HIT");

    let c = client();
    let r = send(
        c.put(fg.admin_url("/api/flags"))
            .header("content-type", "application/json")
            .body(r#"{"cache": false}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["flags"]["cache"]["source"], "runtime");
    let before = origin.requests().await;
    for _ in 0..3 {
        let r = get(&scene).await;
        assert_eq!(r.x_cache, "PASS");
        assert!(r.cache_status.contains("cache-off"), "{}", r.cache_status);
    }
    assert_eq!(
        origin.requests().await,
        before + 3,
        "every read went to the app"
    );
    // A write while the cache is off...
    let w = send(
        c.patch(fg.url("/studio/api/scenes/121"))
            .body(r#"{"text":"written while the cache was off"}"#),
    )
    .await;
    assert_eq!(w.status, 200);
    // ...must not be hidden by the old entry once the cache is back.
    let r = send(
        c.put(fg.admin_url("/api/flags"))
            .header("content-type", "application/json")
            .body(r#"{"cache": null}"#),
    )
    .await;
    assert_eq!(r.json()["flags"]["cache"]["source"], "default");
    let r = get(&scene).await;
    assert_eq!(r.x_cache, "MISS");
    assert_eq!(r.json()["text"], "written while the cache was off");

    let bad = send(
        c.put(fg.admin_url("/api/flags"))
            .header("content-type", "application/json")
            .body(r#"{"cache": "sometimes"}"#),
    )
    .await;
    assert_eq!(bad.status, 400);
    let unknown = send(
        c.put(fg.admin_url("/api/flags"))
            .header("content-type", "application/json")
            .body(r#"{"turbo": true}"#),
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert!(
        unknown.body.contains("debug_panel"),
        "lists the flags: {}",
        unknown.body
    );
}

#[tokio::test]
async fn a_flag_flipped_on_one_replica_reaches_the_other() {
    let origin = Origin::start(0);
    let (_redis, a, b) = two_replicas(&origin, TEST_CONFIG).await;
    let r = a.put_flags(r#"{"cache": false}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["shared"], true);
    let flipped = Instant::now();
    let end = flipped + Duration::from_secs(10);
    loop {
        let f = b.admin_json("/api/flags").await;
        if f["flags"]["cache"]["enabled"] == false {
            assert_eq!(f["flags"]["cache"]["source"], "runtime");
            break;
        }
        assert!(Instant::now() < end, "replica b never saw the flip");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "flag flip seen by the other replica after {:?}",
        flipped.elapsed()
    );
    assert_eq!(get(&b.url("/studio/api/scenes/121")).await.x_cache, "PASS");
}

#[tokio::test]
async fn changing_invalidation_rules_drops_entries_tagged_by_the_old_ones() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let c = client();
    let chapter = fg.url("/studio/api/chapters/12");
    let scene = fg.url("/studio/api/scenes/121");
    get(&chapter).await;
    get(&scene).await;
    assert_eq!(get(&chapter).await.x_cache, "HIT");
    // The rules do not say that a scene write changes its chapter: the
    // chapter entry survives the write (the mistake an operator then fixes).
    let w = send(c.patch(scene.clone()).body(r#"{"text":"x"}"#)).await;
    assert_eq!(w.status, 200);
    assert_eq!(get(&chapter).await.x_cache, "HIT");
    get(&scene).await;
    assert_eq!(get(&scene).await.x_cache, "HIT");

    // A routes-only edit keeps the cache.
    fg.write_config(&TEST_CONFIG.replace("ttl: 60s", "ttl: 61s"));
    fg.wait_config("routes edit", |v| v["version"] == 2).await;
    assert_eq!(
        get(&chapter).await.x_cache,
        "HIT",
        "routes-only edits keep entries"
    );

    // Fixing the rule: the entry cached under the old rules is not served.
    let fixed = TEST_CONFIG.replace("ttl: 60s", "ttl: 61s").replace(
        "    purge: [/studio/api/scenes/:id]\n",
        "    purge: [/studio/api/scenes/:id, /studio/api/chapters/*]\n",
    );
    fg.write_config(&fixed);
    fg.wait_config("rules edit", |v| v["version"] == 3).await;
    assert_eq!(get(&chapter).await.x_cache, "MISS");
    assert_eq!(get(&chapter).await.x_cache, "HIT");
    // And the new rule works.
    let w = send(c.patch(scene.clone()).body(r#"{"text":"y"}"#)).await;
    assert_eq!(w.status, 200);
    assert_eq!(get(&chapter).await.x_cache, "MISS");
}

#[tokio::test]
async fn serve_stale_flag_decides_whether_an_expired_entry_covers_an_outage() {
    let mut origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let url = fg.url("/knobs/stale?cc=max-age%3D1%2C%20stale-if-error%3D300");
    assert_eq!(get(&url).await.x_cache, "MISS");
    origin.proc.signal("KILL");
    origin.proc.wait_exit(Duration::from_secs(5));
    // Let the entry's one second of freshness run out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = get(&url).await;
    assert_eq!(
        (r.status, r.x_cache.as_str()),
        (200, "STALE"),
        "{}",
        r.cache_status
    );

    let f = fg.put_flags(r#"{"serve_stale": false}"#).await;
    assert_eq!(f.status, 200);
    let r = get(&url).await;
    assert_eq!(
        r.status, 502,
        "without serve_stale the outage shows: {}",
        r.x_cache
    );
}

/// Issue 4's load test: a reload every 100 ms for 10 s under traffic (reads
/// and writes), zero failed requests. Run alone (see scripts/test); the
/// figures it prints go to docs/benchmarks.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alone_reload_every_100ms_under_load_fails_no_request() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let a = TEST_CONFIG.to_string();
    // B changes a route TTL and the invalidation rules, so reloads alternate
    // between keeping the cache and dropping it.
    let b = with_stories_route(TEST_CONFIG).replace(
        "    purge: [/studio/api/scenes/:id]\n",
        "    purge: [/studio/api/scenes/:id, /studio/api/chapters/*]\n",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (stop, sent) = (stop.clone(), sent.clone());
        let base = fg.url("");
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut failed = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = 111 + (i + w) % 3;
                let req = match i % 10 {
                    0 => c
                        .patch(format!("{base}/studio/api/scenes/{id}"))
                        .body(format!(r#"{{"text":"w{w}-{i}"}}"#)),
                    1..=3 => c.get(format!("{base}/studio/api/chapters/{}", id / 10)),
                    4 => c.get(format!("{base}/studio/api/stories/1")),
                    _ => c.get(format!("{base}/studio/api/scenes/{id}")),
                };
                sent.fetch_add(1, Ordering::Relaxed);
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            failed
        }));
    }
    // The edits come from their own thread, on time whatever the load.
    let started = Instant::now();
    let path = fg.config.clone();
    let writer = std::thread::spawn(move || {
        let mut writes = 0u64;
        while started.elapsed() < Duration::from_secs(10) {
            writes += 1;
            std::fs::write(&path, if writes % 2 == 0 { &a } else { &b }).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        writes
    });
    let writes = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut failed = Vec::new();
    for w in workers {
        failed.extend(w.await.unwrap());
    }
    let cfg = fg.admin_json("/api/config").await;
    let applied = cfg["version"].as_u64().unwrap() - 1;
    let total = sent.load(Ordering::Relaxed);
    println!(
        "reload load test: {writes} config writes, {applied} reloads applied, \
         {total} requests in {:.1?}, {} failed",
        started.elapsed(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(total > 0);
    // Reloads happened under load (how many depends on the machine's load,
    // which is not asserted), and the last edit is the one in force.
    assert!(applied >= 2, "only {applied} reloads applied: {cfg:#}");
    let last_has_story = writes % 2 == 1;
    fg.wait_config("the last edit", |v| {
        let has_story = v["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "story"));
        has_story == last_has_story && v["lastReload"]["result"] == "success"
    })
    .await;
}

#[tokio::test]
async fn a_reload_that_finds_no_file_says_so_and_keeps_serving() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    std::fs::remove_file(&fg.config).unwrap();
    let r = send(
        client()
            .post(fg.admin_url("/api/reload"))
            .header("content-type", "application/json")
            .body("{}"),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["result"], "unreadable");
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("freshgate.yaml"), "{reason}");
    assert_eq!(r.json()["version"], 1);
    let scene = fg.url("/studio/api/scenes/113");
    get(&scene).await;
    assert_eq!(
        get(&scene).await.x_cache,
        "HIT",
        "the running config serves"
    );
}
