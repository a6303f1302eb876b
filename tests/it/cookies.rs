//! Browser traffic (issue 17): cookies that never change an answer —
//! analytics, consent — do not keep a request from the shared entry, and
//! never reach the app on cached reads; any other cookie still bypasses.

use crate::util::*;

const CONFIG: &str = r#"
shutdown:
  grace_period: 0s
  timeout: 1s
cache:
  ignore_cookies: [_ga, _gid, "_hj*", consent]
routes:
  - name: public
    match: /knobs/public/**
    ttl: 60s
  - name: mine
    match: /knobs/mine/**
    ttl: 60s
    key:
      cookies: [session]
  - name: strict
    match: /knobs/strict/**
    ttl: 60s
    ignore_cookies: []
"#;

const BROWSER: &str = "_ga=GA1.2.1234.5678; _gid=GA1.2.99; _hjSessionUser_42=eyJpZCI6; consent=yes";

#[tokio::test]
async fn analytics_cookies_share_the_entry_and_never_reach_the_app() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, CONFIG);
    let c = client();
    let url = fg.url("/knobs/public/page?echo=cookie");
    // The first browser request fills the shared entry: the app does not
    // see its cookies, so the entry cannot be shaped by them.
    let first = send(c.get(&url).header("cookie", BROWSER)).await;
    assert_eq!(first.x_cache, "MISS", "{}", first.cache_status);
    assert_eq!(first.json()["echo"]["cookie"], "");
    // Another browser, and a client without cookies: the same entry.
    let other = send(
        c.get(&url)
            .header("cookie", "_ga=GA1.2.1; _hjIncludedInSample=1"),
    )
    .await;
    assert_eq!(other.x_cache, "HIT");
    assert_eq!(get(&url).await.x_cache, "HIT");
    assert_eq!(other.serial(), first.serial());

    // One cookie that is not ignored (it may be a session): bypassed, and
    // counted by route and reason.
    let session = send(
        c.get(&url)
            .header("cookie", format!("{BROWSER}; theme=dark")),
    )
    .await;
    assert!(
        session.cache_status.contains("detail=cookie"),
        "{}",
        session.cache_status
    );
    assert!(
        session.body.contains("theme=dark"),
        "the app sees a bypassed request whole"
    );
    fg.metrics_with(&[r#"freshgate_bypasses_total{reason="cookie",route="public"} 1"#])
        .await;

    // A route that ignores none (its own `ignore_cookies: []`).
    let strict = send(c.get(fg.url("/knobs/strict/x")).header("cookie", "_ga=1")).await;
    assert!(
        strict.cache_status.contains("detail=cookie"),
        "{}",
        strict.cache_status
    );
}

#[tokio::test]
async fn vary_cookie_does_not_split_an_entry_per_visitor() {
    // Django answers with Vary: Cookie: the variant is what the app was
    // sent (no ignored cookies), not each visitor's _ga.
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, CONFIG);
    let c = client();
    let url = fg.url("/knobs/public/vary?vary=cookie");
    send(c.get(&url).header("cookie", "_ga=GA1.1")).await;
    let other = send(c.get(&url).header("cookie", "_ga=GA1.2; consent=no")).await;
    assert_eq!(other.x_cache, "HIT", "{}", other.cache_status);
}

#[tokio::test]
async fn a_keyed_cookie_and_ignored_ones_together() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, CONFIG);
    let c = client();
    let url = fg.url("/knobs/mine/profile?echo=cookie");
    let bob = send(
        c.get(&url)
            .header("cookie", format!("{BROWSER}; session=bob")),
    )
    .await;
    assert_eq!(bob.x_cache, "MISS");
    assert_eq!(
        bob.json()["echo"]["cookie"],
        "session=bob",
        "only the keyed cookie"
    );
    let bob_again = send(c.get(&url).header("cookie", "session=bob; _ga=GA1.9")).await;
    assert_eq!(bob_again.x_cache, "HIT");
    let eve = send(
        c.get(&url)
            .header("cookie", format!("{BROWSER}; session=eve")),
    )
    .await;
    assert_eq!(eve.x_cache, "MISS", "another user's entry");
    assert_eq!(eve.json()["echo"]["cookie"], "session=eve");
}
