//! `freshgate warm` (issue 17) against a real freshgate and the demo app:
//! from a list, a sitemap and an id range; progress on a terminal and in
//! plain mode; the summary checked against the app's request counter.

use std::process::Command;

use crate::util::*;

fn warm(fg: &Freshgate, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["warm", "--url", &fg.url("")])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn warm_from_a_list_reports_what_each_path_did() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt");
    // An absolute URL names the Host clients use (here: the proxy's own
    // address, as the tests' GETs send).
    std::fs::write(
        &list,
        format!(
            "# posts and a scene\n/community/api/posts/1\n{}\n/studio/api/scenes/111\n\n/knobs/nostore?cc=no-store\n/knobs/broken?status=500\n",
            fg.url("/community/api/posts/2")
        ),
    )
    .unwrap();
    let list = list.to_str().unwrap();
    let before = origin.requests().await;
    let (code, summary, progress) = warm(&fg, &["--list", list]);
    assert_eq!(code, 1, "a failure is exit 1: {summary}{progress}");
    assert!(
        summary.starts_with("warmed 5 paths: warmed 3, already cached 0, uncacheable 1, failed 1"),
        "{summary}"
    );
    assert!(summary.contains("uncacheable (no-store): 1"), "{summary}");
    assert!(
        summary.contains("failed: /knobs/broken?status=500: status 500"),
        "{summary}"
    );
    // Plain progress lines (not a terminal), ending with the total.
    assert!(progress.contains("warm: 5/5 (warmed 3"), "{progress}");
    assert!(!progress.contains('\r'));
    assert_eq!(origin.requests().await - before, 5);

    // Again: what was warmed is a hit, and does not reach the app.
    let before = origin.requests().await;
    let (_, again, _) = warm(&fg, &["--list", list]);
    assert!(
        again.contains("warmed 0, already cached 3, uncacheable 1, failed 1"),
        "{again}"
    );
    assert_eq!(origin.requests().await - before, 2);
    assert_eq!(get(&fg.url("/community/api/posts/1")).await.x_cache, "HIT");
}

#[tokio::test]
async fn warm_from_a_sitemap_and_an_id_range() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let sitemap = dir.path().join("sitemap.xml");
    std::fs::write(
        &sitemap,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>https://app.example/community/api/posts/3</loc></url>
  <url><loc>https://app.example/community/api/posts/4</loc><lastmod>2026-11-01</lastmod></url>
</urlset>"#,
    )
    .unwrap();
    let (code, summary, _) = warm(&fg, &["--sitemap", sitemap.to_str().unwrap()]);
    assert_eq!(code, 0, "{summary}");
    assert!(summary.contains("warmed 2,"), "{summary}");
    let before = origin.requests().await;
    let (code, summary, _) = warm(
        &fg,
        &[
            "--pattern",
            "/studio/api/scenes/[id]",
            "--ids",
            "111..113",
            "--rate",
            "50",
        ],
    );
    assert_eq!(code, 0, "{summary}");
    assert!(
        summary.starts_with("warmed 3 paths: warmed 3,"),
        "{summary}"
    );
    assert_eq!(origin.requests().await - before, 3);
    // The sitemap's URLs name the Host clients use: app.example.
    let c = client();
    for p in ["/community/api/posts/3", "/community/api/posts/4"] {
        let r = send(c.get(fg.url(p)).header("host", "app.example")).await;
        assert_eq!(r.x_cache, "HIT", "{p}: {}", r.cache_status);
    }
    assert_eq!(get(&fg.url("/studio/api/scenes/112")).await.x_cache, "HIT");
    // A sitemap served over HTTP (by the app, usually).
    let served = ScriptedOrigin::start(|_, _| Scripted {
        status: 200,
        headers: vec![("content-type".into(), "application/xml".into())],
        body: "<urlset><url><loc>http://app.example/community/api/posts/5</loc></url></urlset>"
            .into(),
    });
    let (code, summary, _) = warm(
        &fg,
        &["--sitemap", &format!("{}/sitemap.xml", served.url())],
    );
    assert_eq!(code, 0, "{summary}");
    assert!(
        summary.starts_with("warmed 1 paths: warmed 1,"),
        "{summary}"
    );
    assert_eq!(served.requests(), 1);
    // Bad input: a clear error, exit 2.
    let (code, _, err) = warm(&fg, &["--pattern", "/a/[x]/[y]", "--ids", "1..2"]);
    assert_eq!(code, 2);
    assert!(err.contains("exactly one parameter"), "{err}");
}

#[tokio::test]
async fn warm_draws_a_progress_bar_on_a_terminal() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    // `script` runs it in a pseudo-terminal and copies what it drew.
    let cmd = format!(
        "{BIN} warm --url {} --pattern '/studio/api/scenes/[id]' --ids 121..123",
        fg.url("")
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (util-linux) runs it in a pseudo-terminal");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("\r["), "{shown:?}");
    assert!(
        shown.contains("[##############################] 3/3"),
        "{shown:?}"
    );
    assert!(shown.contains("warmed 3 paths: warmed 3,"), "{shown:?}");
    assert!(
        !shown.contains("warm: 3/3"),
        "plain lines on a terminal: {shown:?}"
    );
}

#[tokio::test]
async fn the_admin_api_warms_in_the_background_and_shows_progress() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let c = client();
    let post = |body: &str| {
        send(
            c.post(fg.admin_url("/api/warm"))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    };
    let started = post(r#"{"pattern": "/studio/api/scenes/[id]", "ids": "131..133"}"#).await;
    assert_eq!(started.status, 202, "{}", started.body);
    assert_eq!(started.json()["total"], 3);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let s = fg.admin_json("/api/warm").await;
        if s["running"] == false {
            break s;
        }
        assert!(std::time::Instant::now() < end, "never finished: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        (status["done"].as_u64(), status["warmed"].as_u64()),
        (Some(3), Some(3)),
        "{status}"
    );
    // Its fetches are freshgate's own, not client traffic.
    let metrics = fg.metrics_with(&["freshgate_build_info"]).await;
    assert!(!metrics.contains(r#"route="scene""#), "{metrics}");
    // Warmed with the Host clients use (warm.host: the listen address).
    assert_eq!(get(&fg.url("/studio/api/scenes/132")).await.x_cache, "HIT");
    // ...and the scheme they use (believed: the fetches carry the marker).
    let https =
        post(r#"{"pattern": "/studio/api/scenes/[id]", "ids": "141..141", "scheme": "https"}"#)
            .await;
    assert_eq!(https.status, 202, "{}", https.body);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fg.admin_json("/api/warm").await["running"] == true {
        assert!(std::time::Instant::now() < end);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tls = send(
        c.get(fg.url("/studio/api/scenes/141"))
            .header("x-forwarded-proto", "https"),
    )
    .await;
    assert_eq!(tls.x_cache, "HIT", "{}", tls.cache_status);
    let bad_rate = post(r#"{"paths": ["/a"], "rate": 1e-30}"#).await;
    assert_eq!(bad_rate.status, 400);
    let paths = post(r#"{"paths": ["/community/api/posts/5", "/knobs/x?cc=no-store"]}"#).await;
    assert_eq!(paths.status, 202);
    let bad = post(r#"{"pattern": "/no/params", "ids": "1..2"}"#).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
}
