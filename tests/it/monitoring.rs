//! The monitoring API, alerts, metrics over time, recent operations and the
//! live stream, checked against known traffic over real sockets.

use std::time::{Duration, Instant};

use crate::util::{client, get, send, two_replicas, wait_json, Freshgate, Origin, TEST_CONFIG};

/// Alerts evaluated often and on little traffic, so tests see them move.
fn config() -> String {
    format!(
        "{TEST_CONFIG}monitoring:\n  window: 10m\n  evaluate_every: 100ms\n  min_requests: 10\n"
    )
}

async fn gets(fg: &Freshgate, paths: &[&str]) {
    for p in paths {
        let r = get(&fg.url(p)).await;
        assert_eq!(r.status, 200, "GET {p}");
    }
}

#[tokio::test]
async fn monitoring_counts_known_traffic_and_alerts_raise_and_clear() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, &config());
    let (a, b, c) = (
        "/studio/api/scenes/111",
        "/studio/api/scenes/112",
        "/studio/api/scenes/113",
    );
    // 3 misses, then 7 hits.
    gets(&fg, &[a, b, c, a, a, a, b, b, c, c]).await;
    let m = wait_json(&fg, "/api/monitoring", "10 requests", |v| {
        v["summary"]["totalRequests"] == 10
    })
    .await;
    assert_eq!(m["summary"]["totalHits"], 7);
    assert_eq!(m["summary"]["totalMisses"], 3);
    assert_eq!(m["summary"]["hitRate"], 0.7);
    assert!(m["summary"]["averageDuration"].as_f64().unwrap() > 0.0);
    assert_eq!(m["healthy"], true);
    // 70% is the warning threshold itself: not below it.
    assert_eq!(m["alerts"]["total"], 0, "{m:#}");
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));

    // Three more misses: 7 / 13 = 54% < 70% -> warning (still healthy).
    gets(
        &fg,
        &[
            "/studio/api/scenes/121",
            "/studio/api/scenes/122",
            "/studio/api/scenes/123",
        ],
    )
    .await;
    let m = wait_json(&fg, "/api/monitoring", "a hit-rate warning", |v| {
        v["alerts"]["warning"] == 1
    })
    .await;
    assert_eq!(m["healthy"], true, "a warning does not make it unhealthy");
    let alert = &m["alerts"]["list"][0];
    assert_eq!(alert["name"], "hit_rate");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["threshold"], 0.7);
    assert!(alert["clearedAt"].is_null());

    // Thirteen hits: 20 / 26 = 77% -> cleared, and kept in the history.
    for _ in 0..13 {
        gets(&fg, &["/studio/api/scenes/121"]).await;
    }
    let m = wait_json(&fg, "/api/monitoring", "the warning cleared", |v| {
        v["alerts"]["total"] == 0 && v["summary"]["totalRequests"] == 26
    })
    .await;
    let h = &m["history"][0];
    assert_eq!(h["name"], "hit_rate");
    assert!(
        h["raisedAt"].is_string() && h["clearedAt"].is_string(),
        "{h}"
    );
    let alerts = fg.admin_json("/api/alerts").await;
    assert_eq!(alerts["active"].as_array().unwrap().len(), 0);
    assert_eq!(alerts["history"].as_array().unwrap().len(), 1);

    // The app failing: 6 of 32 responses are 5xx (19% > 5%) -> critical.
    for _ in 0..6 {
        let r = get(&fg.url("/knobs/broken?status=503")).await;
        assert_eq!(r.status, 503);
    }
    let m = wait_json(&fg, "/api/monitoring", "an error-rate alert", |v| {
        v["alerts"]["critical"] == 1
    })
    .await;
    assert_eq!(m["healthy"], false);
    let critical: Vec<_> = m["alerts"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["severity"] == "critical")
        .collect();
    assert_eq!(critical[0]["name"], "error_rate");
    // The same numbers in Prometheus, for the alert rules in deploy/.
    fg.metrics_with(&["freshgate_responses_total{code=\"5xx\"} 6"])
        .await;
}

#[tokio::test]
async fn metrics_over_time_operations_and_the_live_stream() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, &config());
    let c = client();

    // Subscribe to the live stream before any traffic.
    let mut stream = c
        .get(fg.admin_url("/api/operations/stream"))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );

    let scene = "/studio/api/scenes/111";
    for _ in 0..5 {
        gets(&fg, &[scene]).await; // 1 miss, 4 hits
    }
    let w = send(c.patch(fg.url(scene)).body(r#"{"text":"edited"}"#)).await;
    assert_eq!(w.status, 200);
    gets(&fg, &[scene]).await; // miss after the write
                               // A request is listed by pingora's logging phase, after its answer has
                               // gone: wait until all eight are, so the purge is listed after them.
    wait_json(&fg, "/api/operations?limit=20", "8 operations", |v| {
        v["operations"].as_array().is_some_and(|o| o.len() == 8)
    })
    .await;
    let p = send(
        c.post(fg.admin_url("/api/purge"))
            .header("content-type", "application/json")
            .body(r#"{"all": true}"#),
    )
    .await;
    assert_eq!(p.status, 200);

    // The stream saw the first request (a MISS) as it happened.
    let end = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains("\"op\":\"MISS\"") {
        assert!(Instant::now() < end, "no operation on the stream: {seen:?}");
        match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("stream ended early: {other:?}; got {seen:?}"),
        }
    }
    assert!(seen.contains("event: operation"), "{seen}");
    drop(stream);

    // Route view: 6 GETs (4 hits, 2 misses) and the PATCH, one invalidation.
    let by_route = wait_json(&fg, "/api/metrics?timeRange=1h&groupBy=route", "7", |v| {
        v["summary"]["requests"] == 7
    })
    .await;
    assert_eq!(by_route["scope"], "this replica");
    assert_eq!(by_route["bucketSeconds"], 60);
    let scene_group = &by_route["groups"][0];
    assert_eq!(scene_group["name"], "scene");
    assert_eq!(scene_group["hits"], 4);
    assert_eq!(scene_group["misses"], 2);
    assert_eq!(scene_group["pass"], 1);
    assert_eq!(scene_group["invalidations"], 1);
    assert_eq!(scene_group["hitRate"].as_f64().unwrap(), 4.0 / 6.0);
    assert!(!by_route["series"].as_array().unwrap().is_empty());

    let by_op = fg
        .admin_json("/api/metrics?timeRange=6h&groupBy=operation")
        .await;
    let group = |name: &str| {
        by_op["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no group {name}: {by_op:#}"))
    };
    assert_eq!(group("hit")["requests"], 4);
    assert_eq!(group("invalidate")["writes"], 1);
    assert_eq!(group("purge")["purges"], 1);

    // Long ranges read the same counters in coarser buckets.
    let week = fg.admin_json("/api/metrics?timeRange=7d").await;
    assert_eq!(week["summary"]["requests"], 7);
    assert_eq!(week["bucketSeconds"], 3600);

    // CSV parses, and its rows add up to the same traffic.
    let csv_resp = get(&fg.admin_url("/api/metrics?timeRange=1h&groupBy=route&format=csv")).await;
    assert_eq!(csv_resp.status, 200);
    assert!(csv_resp.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let mut reader = csv::Reader::from_reader(csv_resp.body.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (mut requests, mut hits) = (0u64, 0u64);
    for row in reader.records() {
        let row = row.expect("a well-formed CSV row");
        assert_eq!(&row[col("group")], "scene");
        requests += row[col("requests")].parse::<u64>().unwrap();
        hits += row[col("hits")].parse::<u64>().unwrap();
    }
    assert_eq!((requests, hits), (7, 4));

    // Bad parameters say what is allowed.
    let bad = get(&fg.admin_url("/api/metrics?timeRange=2h")).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("1h, 6h, 24h, 7d, 30d"), "{}", bad.body);
    assert_eq!(
        get(&fg.admin_url("/api/metrics?groupBy=x")).await.status,
        400
    );

    // Recent operations, newest first.
    let ops = fg.admin_json("/api/operations?limit=20").await;
    let list: Vec<(String, String)> = ops["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["op"].as_str().unwrap().to_string(),
                o["route"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(list[0], ("PURGE".into(), "-".into()), "{list:?}");
    assert!(
        list.contains(&("INVALIDATE".into(), "scene-write".into())),
        "{list:?}"
    );
    assert_eq!(list.iter().filter(|(op, _)| op == "HIT").count(), 4);
    assert_eq!(list.last().unwrap().0, "MISS");
    assert_eq!(ops["operations"][0]["replica"], ops["replica"]);
    let two = fg.admin_json("/api/operations?limit=2").await;
    assert_eq!(two["operations"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn metrics_over_time_add_up_across_replicas_through_redis() {
    let origin = Origin::start(0);
    let (_redis, a, b) = two_replicas(&origin, &config()).await;
    let scene = "/studio/api/scenes/111";
    assert_eq!(a.get_shared(scene).await.x_cache, "MISS");
    for _ in 0..3 {
        assert_eq!(b.get_shared(scene).await.x_cache, "HIT");
    }
    // B adds its counts to Redis every few seconds; A reads the fleet's.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = a
            .admin_json("/api/metrics?timeRange=1h&groupBy=result")
            .await;
        assert_eq!(v["scope"], "all replicas");
        if v["summary"]["requests"] == 4 {
            assert_eq!(v["summary"]["hits"], 3);
            assert_eq!(v["summary"]["misses"], 1);
            assert_eq!(v["summary"]["hitRate"], 0.75);
            break;
        }
        assert!(Instant::now() < end, "fleet totals never reached 4: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each replica's own view stays its own.
    let own = a.admin_json("/api/monitoring").await;
    assert_eq!(own["summary"]["totalRequests"], 1);
}

#[tokio::test]
async fn the_monitoring_flag_turns_counting_off_and_on() {
    let origin = Origin::start(0);
    let cfg = format!("{}flags:\n  monitoring: false\n", config());
    let fg = Freshgate::start(&origin.url(), None, &cfg);
    gets(&fg, &["/studio/api/scenes/111", "/studio/api/scenes/111"]).await;
    // Prometheus still counts (it is how the flag's cost is compared)...
    fg.metrics_with(&["freshgate_requests_total{result=\"hit\",route=\"scene\"} 1"])
        .await;
    // ...the monitoring API does not.
    let m = fg.admin_json("/api/monitoring").await;
    assert_eq!(m["monitoring"], false);
    assert_eq!(m["summary"]["totalRequests"], 0);
    assert_eq!(
        fg.admin_json("/api/operations").await["operations"],
        serde_json::json!([])
    );
    let on = fg.put_flags(r#"{"monitoring": true}"#).await;
    assert_eq!(on.status, 200);
    gets(&fg, &["/studio/api/scenes/111"]).await;
    wait_json(&fg, "/api/monitoring", "one counted hit", |v| {
        v["monitoring"] == true && v["summary"]["totalHits"] == 1
    })
    .await;
}

/// `promtool` is the Prometheus project's own checker; `./scripts/test`
/// installs it (Debian package `prometheus`).
fn promtool() -> &'static str {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("promtool is not installed: run ./scripts/test, which installs it");
}

fn run_promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn promtool_finds_nothing_to_fix_in_metrics_and_alert_rules() {
    let origin = Origin::start(0);
    let (_redis, a, _b) = two_replicas(&origin, &config()).await;
    // Every family with samples: hit, miss, write, purge, upstream time.
    let scene = "/studio/api/scenes/111";
    a.get_shared(scene).await;
    a.get_shared(scene).await;
    send(client().patch(a.url(scene)).body("{}")).await;
    send(
        client()
            .post(a.admin_url("/api/purge"))
            .header("content-type", "application/json")
            .body(r#"{"all":true}"#),
    )
    .await;
    let text = a
        .metrics_with(&["freshgate_requests_total{result=\"pass\""])
        .await;
    let (ok, out) = run_promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );

    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
    let (ok, out) = run_promtool(&["check", "rules", rules], None);
    assert!(ok, "promtool check rules:\n{out}");
    let tests = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts_test.yml"
    );
    let (ok, out) = run_promtool(&["test", "rules", tests], None);
    assert!(ok, "promtool test rules:\n{out}");

    // The Grafana dashboard's queries parse too: promtool checks them as
    // recording rules, with Grafana's variables filled in.
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/freshgate-dashboard.json"
    )))
    .unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut n = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            n += 1;
            rules.push_str(&format!(
                "      - record: dashboard:query{n}\n        expr: {}\n",
                serde_json::Value::String(expr)
            ));
        }
    }
    assert!(n >= 10, "the dashboard has its panels");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let (ok, out) = run_promtool(&["check", "rules", file.to_str().unwrap()], None);
    assert!(ok, "dashboard queries:\n{out}\n{rules}");
}

#[tokio::test]
async fn analyze_reports_routes_writes_and_recommendations() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, &config());
    // The collection is read once and invalidated by three likes.
    gets(&fg, &["/community/api/posts"]).await;
    for _ in 0..3 {
        let r = send(client().post(fg.url("/community/api/posts/1/like"))).await;
        assert_eq!(r.status, 200);
    }
    // A write no rule covers.
    send(client().patch(fg.url("/studio/api/chapters/11")).body("{}")).await;
    wait_json(
        &fg,
        "/api/metrics?timeRange=1h&groupBy=rule",
        "4 writes",
        |v| v["summary"]["writes"] == 4,
    )
    .await;

    let admin = format!("http://{}", fg.admin);
    let out = std::process::Command::new(crate::util::BIN)
        .args(["analyze", "--admin", &admin, "--time-range", "1h"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("hit rate by route"), "{text}");
    assert!(
        text.contains("post-like") && text.contains("3 writes"),
        "top invalidating writes: {text}"
    );
    assert!(text.contains("PATCH   /studio/api/chapters/:id"), "{text}");
    assert!(
        text.contains(
            "route \"posts\" is invalidated more often than it is read (3 invalidations, 1 reads)"
        ),
        "{text}"
    );
    assert!(
        text.contains("1 write shape(s) matched no invalidation rule"),
        "{text}"
    );
}

#[tokio::test]
async fn analyze_says_when_the_admin_api_wants_a_token() {
    let origin = Origin::start(0);
    let token = "analyze-test-token-0123456789";
    let fg = Freshgate::start_full(
        &origin.url(),
        None,
        TEST_CONFIG,
        &[],
        &[("FRESHGATE_ADMIN_TOKEN", token)],
    );
    let admin = format!("http://{}", fg.admin);
    let run = |env_token: Option<&str>| {
        let mut cmd = std::process::Command::new(crate::util::BIN);
        cmd.args(["analyze", "--admin", &admin, "--time-range", "6h"])
            .env_remove("FRESHGATE_ADMIN_TOKEN");
        if let Some(t) = env_token {
            cmd.env("FRESHGATE_ADMIN_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let refused = run(None);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    let ok = run(Some(token));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(text.contains("no traffic in this time range"), "{text}");
}
