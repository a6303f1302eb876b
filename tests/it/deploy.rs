//! Deploys (issue 16): a new build of the app on a clean key space, sharing
//! invalidations with the build it replaces.

use crate::util::{client, get, send, Freshgate, Origin, Redis, TEST_CONFIG};

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

#[tokio::test]
async fn a_configmap_update_is_reloaded_through_its_symlinks() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let story = fg.url("/studio/api/stories/2");
    assert_eq!(get(&story).await.x_cache, "BYPASS", "no rule yet");
    // The first update also turns the file into the kubelet's layout.
    let with_story = TEST_CONFIG.replace(
        "routes:\n",
        "routes:\n  - name: story\n    match: /studio/api/stories/:id\n    ttl: 60s\n    override_no_store: true\n",
    );
    fg.swap_config_as_kubernetes(&with_story);
    fg.wait_config("version 2", |v| v["version"] == 2).await;
    // Later updates swap only `..data`: no event names the file itself.
    let with_story_off = with_story.replace(
        "    ttl: 60s\n    override_no_store: true\n",
        "    ttl: 60s\n    override_no_store: true\n    enabled: false\n",
    );
    fg.swap_config_as_kubernetes(&with_story_off);
    fg.wait_config("version 3", |v| v["version"] == 3).await;
    let r = get(&story).await;
    assert!(
        r.cache_status.contains("route-disabled"),
        "{}",
        r.cache_status
    );
    // A bad update is refused and the last good config keeps serving.
    fg.swap_config_as_kubernetes("routes: [oops\n");
    fg.wait_config("the refusal", |v| v["lastReload"]["result"] == "error")
        .await;
    let r = get(&story).await;
    assert!(
        r.cache_status.contains("route-disabled"),
        "{}",
        r.cache_status
    );
}

#[tokio::test]
async fn redis_with_an_acl_user_over_a_unix_socket() {
    use crate::util::{redis_server, Proc};
    let origin = Origin::start(0);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("redis.sock");
    let sock_s = sock.to_str().unwrap();
    // No TCP port, and the default user disabled: only the ACL user gets in.
    let _redis = Proc::spawn(
        "redis-server",
        std::process::Command::new(redis_server()).args([
            "--port",
            "0",
            "--unixsocket",
            sock_s,
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "freshgate",
            "on",
            ">s3cret",
            "~*",
            "&*",
            "+@all",
        ]),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "redis did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let url = format!("unix://{sock_s}?user=freshgate&pass=s3cret");
    let a = Freshgate::start(&origin.url(), Some(&url), TEST_CONFIG);
    let b = Freshgate::start(&origin.url(), Some(&url), TEST_CONFIG);
    a.wait_redis(true).await;
    b.wait_redis(true).await;
    let path = "/knobs/acl?cc=max-age%3D60";
    assert_eq!(a.get_shared(path).await.x_cache, "MISS");
    let on_b = b.get_shared(path).await;
    assert_eq!(on_b.x_cache, "HIT", "{}", on_b.cache_status);
    // A wrong password never reaches Redis: reads pass through, nothing is
    // served from a tier it cannot check.
    let wrong = format!("unix://{sock_s}?user=freshgate&pass=wrong");
    let c = Freshgate::start(&origin.url(), Some(&wrong), TEST_CONFIG);
    c.wait_redis(false).await;
    let r = c.get_shared(path).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.x_cache, "HIT", "{}", r.cache_status);
}
