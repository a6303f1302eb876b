//! Deploys (issue 16): a new build of the app on a clean key space, sharing
//! invalidations with the build it replaces.

use crate::util::{client, send, Freshgate, Origin, Redis, TEST_CONFIG};

/// A prerendered page as Next.js sends it: cached for a year.
const PRERENDERED: &str = "/knobs/prerendered?cc=s-maxage%3D31536000";

#[tokio::test]
async fn a_new_namespace_starts_on_a_clean_cache_and_shares_invalidations() {
    let origin = Origin::start(0);
    let redis = Redis::start();
    let replica = |ns: Option<&str>| {
        let args: Vec<&str> = ns.map_or(vec![], |ns| vec!["--namespace", ns]);
        Freshgate::start_with_args(&origin.url(), Some(&redis.url()), TEST_CONFIG, &args)
    };
    let old = replica(Some("build-1"));
    let same = replica(Some("build-1"));
    let new = replica(Some("build-2"));
    for fg in [&old, &same, &new] {
        fg.wait_redis(true).await;
    }
    let before = old.get_shared(PRERENDERED).await;
    assert_eq!(old.get_shared(PRERENDERED).await.x_cache, "HIT");
    // The same build on another replica shares the entry (the control) ...
    let shared = same.get_shared(PRERENDERED).await;
    assert_eq!(shared.x_cache, "HIT", "{}", shared.cache_status);
    // ... the new build does not: its page may have changed.
    let fresh = new.get_shared(PRERENDERED).await;
    assert_eq!(fresh.x_cache, "MISS", "{}", fresh.cache_status);
    assert_ne!(fresh.serial(), before.serial());
    assert_eq!(new.get_shared(PRERENDERED).await.x_cache, "HIT");
    // Both builds serve side by side, and a write through either
    // invalidates what both hold.
    let scene = "/studio/api/scenes/212";
    for fg in [&old, &new] {
        fg.get_shared(scene).await;
        assert_eq!(fg.get_shared(scene).await.x_cache, "HIT");
    }
    let patched = send(
        client()
            .patch(new.url(scene))
            .header("host", "app.test")
            .body(r#"{"text":"written by the new build"}"#),
    )
    .await;
    assert_eq!(patched.status, 200);
    for fg in [&old, &new] {
        let r = fg.get_shared(scene).await;
        assert_ne!(r.x_cache, "HIT", "{}", r.cache_status);
        assert_eq!(r.json()["text"], "written by the new build");
    }
    // A namespace that is not visible ASCII is refused at start.
    let mut bad = std::process::Command::new(crate::util::BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("FRESHGATE_NAMESPACE", "build 3")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = bad.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            bad.kill().unwrap();
            panic!("started with namespace \"build 3\"");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bad.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("cache.namespace"), "{err}");
}
