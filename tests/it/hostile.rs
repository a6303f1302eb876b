//! Hostile requests and bad input (issue 13): each test is an attack that
//! worked on the old code, over real sockets against a real freshgate and
//! the demo app.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

/// Routes the attacks need, in syntax every build reads (so that each
/// attack can be run against an older build: `FRESHGATE_TEST_BIN`).
const CONFIG: &str = r#"
shutdown:
  grace_period: 0s
  timeout: 1s
routes:
  - name: ttl-plain
    match: /knobs/ttl/**
    ttl: 60s
  - name: by-session
    match: /knobs/session/**
    ttl: 60s
    key:
      cookies: [session]
"#;

/// With what this issue added: short 404s, a short read timeout, explicit
/// overrides, listed statuses.
fn config_with_new_settings() -> String {
    format!(
        "{CONFIG}
  - name: ttl-over
    match: /knobs/over/**
    ttl: 60s
    override: [no-store, no-cache, max-age]
  - name: errors-listed
    match: /knobs/errors-listed/**
    ttl: 60s
    statuses: [200, 503]
cache:
  negative_ttl: 3s
timeouts:
  upstream_read: 1s
"
    )
}

fn setup() -> (Origin, Freshgate) {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, CONFIG);
    (origin, fg)
}

fn setup_new() -> (Origin, Freshgate) {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, &config_with_new_settings());
    (origin, fg)
}

fn body_of(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"))
}

fn header_of<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split_once("\r\n\r\n").map_or(answer, |(h, _)| h);
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn a_host_cannot_spell_another_requests_key() {
    let (_origin, fg) = setup();
    // The attacker's path hides in the Host header: keyed by concatenation,
    // this was the victim's key below, holding the attacker's answer.
    let attack = raw_exchange(
        fg.addr,
        b"GET /knobs/evil HTTP/1.1\r\nHost: victim.example/knobs/page?q=\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw_status(&attack), 400, "{attack}");
    let victim = raw_exchange(
        fg.addr,
        b"GET /knobs/page?q=/knobs/evil HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw_status(&victim), 200, "{victim}");
    assert_eq!(body_of(&victim)["path"], "/knobs/page", "{victim}");

    // Other shapes a Host must not have, and a missing one.
    for host in [
        "a b",
        "victim.example?x",
        "victim.example#x",
        "a:1:2",
        "[::1",
        "x:99999",
    ] {
        let req = format!("GET /knobs/h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(fg.addr, req.as_bytes());
        assert_eq!(raw_status(&answer), 400, "Host {host:?}: {answer}");
        assert!(body_of(&answer)["error"].as_str().unwrap().contains("host"));
    }
    let none = raw_exchange(
        fg.addr,
        b"GET /knobs/h HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw_status(&none), 400, "{none}");
    // HTTP/1.0 may omit it: the app's own host is used.
    let old = raw_exchange(fg.addr, b"GET /knobs/h10 HTTP/1.0\r\n\r\n");
    assert_eq!(raw_status(&old).max(200), 200, "{old}");
    assert!(old.starts_with("HTTP/1."), "{old}");

    // Spellings of one host share one entry, and the app sees the one form.
    let first = raw_exchange(
        fg.addr,
        b"GET /knobs/norm HTTP/1.1\r\nHost: Victim.Example.:80\r\nConnection: close\r\n\r\n",
    );
    let second = raw_exchange(
        fg.addr,
        b"GET /knobs/norm HTTP/1.1\r\nHost: victim.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(body_of(&first)["host"], "victim.example");
    assert_eq!(header_of(&second, "x-cache"), Some("HIT"), "{second}");
    assert_eq!(body_of(&first)["serial"], body_of(&second)["serial"]);
}

#[tokio::test]
async fn errors_are_not_cached_for_everyone() {
    let (_origin, fg) = setup();
    // An error the app marks cacheable (or one a client provokes) must not
    // be what everyone gets next.
    for (path, status) in [
        ("/knobs/err?status=500&cc=max-age%3D600", 500),
        ("/knobs/err?status=400&cc=max-age%3D600", 400),
        ("/knobs/err?status=503&cc=max-age%3D600", 503),
        ("/knobs/ttl/err?status=500", 500),
    ] {
        let a = get(&fg.url(path)).await;
        let b = get(&fg.url(path)).await;
        assert_eq!(a.status, status);
        assert_ne!(a.serial(), b.serial(), "{path}: {}", b.cache_status);
        assert!(
            b.cache_status.contains("detail=status"),
            "{}",
            b.cache_status
        );
    }
}

#[tokio::test]
async fn only_a_route_that_lists_an_error_stores_it() {
    let (_origin, fg) = setup_new();
    let over = fg.url("/knobs/over/err?status=502");
    assert_ne!(get(&over).await.serial(), get(&over).await.serial());
    let listed = fg.url("/knobs/errors-listed/x?status=503");
    let a = get(&listed).await;
    let b = get(&listed).await;
    assert_eq!((a.status, b.x_cache.as_str()), (503, "HIT"));
}

#[tokio::test]
async fn a_missing_resource_is_remembered_briefly() {
    let (_origin, fg) = setup_new();
    // The app says a 404 is good for an hour, the route says a minute:
    // `cache.negative_ttl` (3 s here) bounds both.
    for path in [
        "/knobs/gone?status=404&cc=max-age%3D3600",
        "/knobs/ttl/gone?status=404",
        "/knobs/ttl/gone?status=410",
    ] {
        let url = fg.url(path);
        let a = get(&url).await;
        let b = get(&url).await;
        assert_eq!(b.x_cache, "HIT", "{path}");
        assert_eq!(a.serial(), b.serial());
        tokio::time::sleep(Duration::from_millis(3300)).await;
        let c = get(&url).await;
        assert_ne!(c.serial(), a.serial(), "{path}: still the old 404");
    }
}

#[tokio::test]
async fn a_route_ttl_beats_the_apps_headers_only_where_it_says_so() {
    let (_origin, fg) = setup_new();
    for cc in [
        "no-cache",
        "max-age%3D0",
        "no-cache%2C%20max-age%3D0%2C%20must-revalidate",
    ] {
        // Plain ttl: the app's word wins (asked every time).
        let plain = fg.url(&format!("/knobs/ttl/cc?cc={cc}"));
        let a = get(&plain).await;
        let b = get(&plain).await;
        assert_ne!(a.serial(), b.serial(), "plain ttl, cc={cc}");
        // `override: [no-cache, max-age, ...]`: the route decides.
        let over = fg.url(&format!("/knobs/over/cc?cc={cc}"));
        let a = get(&over).await;
        let b = get(&over).await;
        assert_eq!(b.x_cache, "HIT", "override, cc={cc}");
        assert_eq!(a.serial(), b.serial());
    }
    // The app's own positive freshness wins over a plain ttl.
    let short = fg.url("/knobs/ttl/short?cc=max-age%3D1");
    let a = get(&short).await;
    assert_eq!(get(&short).await.x_cache, "HIT");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_ne!(get(&short).await.serial(), a.serial());
}

#[tokio::test]
async fn invented_methods_share_one_metric_label() {
    let (_origin, fg) = setup();
    let c = client();
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
        send(c.request(method, fg.url("/knobs/m"))).await;
    }
    send(c.get(fg.url("/knobs/m"))).await;
    let metrics = fg
        .metrics_with(&[r#"freshgate_upstream_duration_seconds_count{method="OTHER"} 20"#])
        .await;
    assert!(!metrics.contains("FOO"), "client-chosen label in /metrics");
}

#[tokio::test]
async fn a_keyed_cookie_is_read_as_the_app_reads_it() {
    let (_origin, fg) = setup();
    let url = fg.url("/knobs/session/me?echo=cookie");
    let c = client();
    // `session =bob` (space before `=`): the app reads it as bob's session.
    // Read as "no session", it was stored for every anonymous reader.
    let bob = send(c.get(&url).header("cookie", "session =bob")).await;
    assert!(bob.body.contains("bob"));
    let anonymous = get(&url).await;
    assert!(
        !anonymous.body.contains("bob"),
        "bob's answer served to anyone"
    );
    let bob_again = send(c.get(&url).header("cookie", " session= bob ")).await;
    assert_eq!(bob_again.x_cache, "HIT", "{}", bob_again.cache_status);
    assert_eq!(bob_again.serial(), bob.serial());
    // A cookie neither keyed nor ignored may change the answer: bypassed.
    let themed = send(c.get(&url).header("cookie", "theme=dark; session=bob")).await;
    assert!(
        themed.cache_status.contains("detail=cookie"),
        "{}",
        themed.cache_status
    );
    // Two sessions in one header: apps disagree on which counts. Bypassed.
    let two = send(c.get(&url).header("cookie", "session=bob; session=eve")).await;
    assert!(
        two.cache_status.contains("detail=ambiguous-cookie"),
        "{}",
        two.cache_status
    );
    let two_again = send(c.get(&url).header("cookie", "session=bob; session=eve")).await;
    assert_ne!(two.serial(), two_again.serial());
}

#[tokio::test]
async fn unkeyed_forwarding_headers_never_reach_the_app_on_cached_reads() {
    let (_origin, fg) = setup();
    let c = client();
    let echo = "x-forwarded-prefix,forwarded,x-host,x-original-host,x-forwarded-port,x-forwarded-scheme,x-forwarded-ssl,x-forwarded-host";
    let url = fg.url(&format!("/knobs/fw?echo={echo}"));
    let poisoned = send(
        c.get(&url)
            .header("x-forwarded-prefix", "/evil")
            .header("forwarded", "host=evil.example")
            .header("x-host", "evil.example")
            .header("x-original-host", "evil.example")
            .header("x-forwarded-port", "6666")
            .header("x-forwarded-scheme", "javascript")
            .header("x-forwarded-ssl", "on")
            .header("x-forwarded-host", "evil.example"),
    )
    .await;
    assert!(!poisoned.body.contains("evil"), "{}", poisoned.body);
    assert!(!poisoned.body.contains("6666"), "{}", poisoned.body);
    for (name, seen) in poisoned.json()["echo"].as_object().unwrap() {
        assert_eq!(seen, "", "{name} reached the app");
    }
    // A GET with a body: the app may read it, the key does not hold it.
    let with_body = send(c.get(fg.url("/knobs/body")).body("{\"q\":\"evil\"}")).await;
    assert!(
        with_body.cache_status.contains("detail=request-body"),
        "{}",
        with_body.cache_status
    );
}

/// What the app saw of each field `echo` names ("" when it was absent).
async fn fields_seen(fg: &Freshgate, path: &str, sent: &[(&str, &str)]) -> Vec<(String, String)> {
    let echo: Vec<&str> = sent.iter().map(|(n, _)| *n).collect();
    let mut req = client().get(fg.url(&format!("{path}?echo={}", echo.join(","))));
    for (n, v) in sent {
        req = req.header(*n, *v);
    }
    let seen = send(req).await.json()["echo"].clone();
    echo.iter()
        .map(|n| (n.to_string(), seen[*n].as_str().unwrap_or("?").to_string()))
        .collect()
}

#[tokio::test]
async fn the_fields_freshgate_strips_never_reach_the_app_and_the_others_do() {
    let origin = Origin::start(0);
    let sent = [
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-freshgate-prefetch", "forged"),
        ("x-forwarded-host", "evil.example"),
        ("x-real-ip", "6.6.6.6"),
        ("accept-language", "nl"),
    ];
    let config = format!(
        "{CONFIG}  - name: keyed-host\n    match: /knobs/keyed/**\n    ttl: 60s\n    key:\n      headers: [x-forwarded-host]\n"
    );
    // (path, cache on, peer trusted) -> the fields that reach the app.
    let cases: [(&str, bool, bool, &[&str]); 4] = [
        // A cached read: routing overrides, the marker and every unkeyed
        // claim (also a trusted peer's) go.
        ("/knobs/strip", true, true, &["accept-language"]),
        // A route that keys one of them gets it.
        (
            "/knobs/keyed/a",
            true,
            true,
            &["x-forwarded-host", "accept-language"],
        ),
        // Cache off: a trusted peer's claims pass, the rest still goes.
        (
            "/knobs/strip",
            false,
            true,
            &["x-forwarded-host", "x-real-ip", "accept-language"],
        ),
        // Cache off, a peer that is not trusted: its claims go too.
        ("/knobs/strip", false, false, &["accept-language"]),
    ];
    for (path, cache, trusted, reach) in cases {
        let mut cfg = format!("{config}flags:\n  cache: {cache}\n");
        if !trusted {
            cfg.push_str("trusted_proxies: [10.9.9.9/32]\n");
        }
        let fg = Freshgate::start(&origin.url(), None, &cfg);
        for (name, value) in fields_seen(&fg, path, &sent).await {
            let expected = if reach.contains(&name.as_str()) {
                sent.iter().find(|(n, _)| *n == name).unwrap().1
            } else {
                ""
            };
            assert_eq!(
                value, expected,
                "{name} (cache {cache}, trusted {trusted}, {path})"
            );
        }
    }
}

#[tokio::test]
async fn the_scheme_comes_from_a_trusted_proxy_and_is_keyed() {
    let (origin, fg) = setup();
    let c = client();
    // Loopback is trusted by default: its X-Forwarded-Proto is believed,
    // and http and https answers are kept apart (a redirect to https
    // stored for https clients loops forever).
    let url = fg.url("/knobs/scheme");
    let plain = send(c.get(&url)).await;
    let tls = send(c.get(&url).header("x-forwarded-proto", "https")).await;
    assert_eq!(plain.json()["forwardedProto"], "http");
    assert_eq!(tls.json()["forwardedProto"], "https");
    assert_ne!(plain.serial(), tls.serial(), "one entry for http and https");
    let chain = send(
        c.get(fg.url("/knobs/xff"))
            .header("x-forwarded-for", "203.0.113.7"),
    )
    .await;
    assert_eq!(chain.json()["forwardedFor"], "203.0.113.7, 127.0.0.1");

    // From a peer that is not trusted, freshgate says what it saw itself.
    let untrusting = Freshgate::start(
        &origin.url(),
        None,
        &format!("{CONFIG}\ntrusted_proxies: [10.9.9.9/32]\n"),
    );
    let spoofed = send(
        c.get(untrusting.url("/knobs/scheme2"))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "203.0.113.7"),
    )
    .await;
    assert_eq!(spoofed.json()["forwardedProto"], "http");
    assert_eq!(spoofed.json()["forwardedFor"], "127.0.0.1");
}

#[tokio::test]
async fn a_slow_or_absent_app_gets_a_clear_json_error() {
    let (origin, fg) = setup_new();
    let c = client();
    // `timeouts.upstream_read` is 1 s here; the app takes 3.
    let slow = send(
        c.get(fg.url("/knobs/slow"))
            .header("x-demo-delay-ms", "3000"),
    )
    .await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert_eq!(slow.json()["error"], "the app did not answer in time");
    assert_eq!(slow.headers["cache-control"], "no-store");
    drop(origin);
    let down = get(&fg.url("/knobs/down")).await;
    assert_eq!(down.status, 502, "{}", down.body);
    assert_eq!(down.json()["error"], "the app could not be reached");
}

#[tokio::test]
async fn an_app_named_by_host_name_is_reached_and_a_name_that_does_not_resolve_is_a_502() {
    let origin = Origin::start(0);
    let port = origin.url().rsplit(':').next().unwrap().to_string();
    // A name, as Compose and Kubernetes give the app.
    let named = Freshgate::start(&format!("http://localhost:{port}"), None, CONFIG);
    let ok = get(&named.url("/knobs/named")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // A name that does not resolve (an app container being replaced):
    // pingora resolved the text on each request and panicked, the client
    // got an empty reply. Now a 502 saying so, for reads and writes alike.
    let gone = Freshgate::start(&format!("http://app.invalid:{port}"), None, CONFIG);
    for _ in 0..2 {
        let read = get(&gone.url("/knobs/gone")).await;
        assert_eq!(read.status, 502, "{}", read.body);
        assert_eq!(read.json()["error"], "the app could not be reached");
        let write = send(client().post(gone.url("/community/api/posts/1/like"))).await;
        assert_eq!(write.status, 502, "{}", write.body);
    }
    assert!(!gone.log().contains("panicked"), "{}", gone.log());
}

/// An app that answers GETs on kept-alive connections, reads the first
/// PUT whole and then drops that connection without answering (a worker
/// killed after it committed), and answers later PUTs. Counts the PUTs.
fn app_that_dies_after_the_first_put() -> (SocketAddr, Arc<AtomicUsize>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let puts = Arc::new(AtomicUsize::new(0));
    let seen = puts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut head = String::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        head.push_str(&line);
                        line.clear();
                    }
                    if head.is_empty() {
                        return;
                    }
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    if head.starts_with("PUT") && seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        let _ = socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok",
                    );
                }
            });
        }
    });
    (addr, puts)
}

#[tokio::test]
async fn a_write_is_sent_to_the_app_at_most_once() {
    let (app, puts) = app_that_dies_after_the_first_put();
    let fg = Freshgate::start(&format!("http://{app}"), None, CONFIG);
    let c = client();
    // A read leaves a kept-alive connection to the app in the pool.
    let read = send(c.get(fg.url("/knobs/once"))).await;
    assert_eq!(read.status, 200, "{}", read.body);
    // The PUT goes on it; the app commits and drops the connection.
    // pingora sent an idempotent request again on a new connection: the
    // app saw the write twice and the client was told it succeeded.
    let write = send(c.put(fg.url("/knobs/once")).body("v2")).await;
    assert_eq!(write.status, 502, "{}", write.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        puts.load(Ordering::SeqCst),
        1,
        "the app saw the write more than once"
    );
}

#[tokio::test]
async fn the_tokenless_admin_listener_refuses_other_sites() {
    let (_origin, fg) = setup();
    // DNS rebinding: a page on evil.example, its name pointed at 127.0.0.1.
    let rebound = raw_exchange(
        fg.admin,
        b"GET /api/config HTTP/1.1\r\nHost: evil.example:9090\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw_status(&rebound), 421, "{rebound}");
    // CSRF: a cross-site form post (no JSON content type possible).
    let form = raw_exchange(
        fg.admin,
        b"POST /api/purge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\nConnection: close\r\n\r\nall=true",
    );
    assert_eq!(raw_status(&form), 415, "{form}");
    let cross = raw_exchange(
        fg.admin,
        b"PUT /api/flags HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://evil.example\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"cache\": false}",
    );
    assert_eq!(raw_status(&cross), 403, "{cross}");
    assert!(!cross.to_ascii_lowercase().contains("access-control-allow"));
    // Nothing changed; and the listener's own page and API still work.
    assert_eq!(
        fg.admin_json("/api/flags").await["flags"]["cache"]["enabled"],
        true
    );
    assert_eq!(fg.put_flags(r#"{"cache": true}"#).await.status, 200);
}

#[tokio::test]
async fn a_write_answered_with_a_redirect_is_no_unmatched_write() {
    let (_origin, fg) = setup();
    let c = client();
    // Next.js answers `PATCH /x/` with 308 and changes nothing.
    let moved = send(
        c.patch(fg.url("/knobs/moved/1"))
            .header("x-demo-status", "308")
            .body("{}"),
    )
    .await;
    assert_eq!(moved.status, 308);
    let done = send(c.patch(fg.url("/knobs/done/1")).body("{}")).await;
    assert_eq!(done.status, 200);
    let listed = fg.admin_json("/api/unmatched-writes").await;
    let shapes: Vec<&str> = listed["writes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["example"].as_str())
        .collect();
    assert!(shapes.contains(&"/knobs/done/1"), "{listed}");
    assert!(!shapes.contains(&"/knobs/moved/1"), "{listed}");
}

#[tokio::test]
async fn replicas_starting_with_redis_up_raise_no_redis_alert() {
    let origin = Origin::start(0);
    let (mut redis, a, b) = two_replicas(&origin, CONFIG).await;
    for fg in [&a, &b] {
        let alerts = fg.admin_json("/api/alerts").await;
        let text = alerts.to_string();
        assert!(!text.contains("redis_down"), "{text}");
    }
    // A real outage still raises it (GET /api/monitoring evaluates now).
    redis.stop();
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = a.admin_json("/api/monitoring").await.to_string();
        if m.contains("redis_down") {
            break;
        }
        assert!(std::time::Instant::now() < end, "no redis_down alert: {m}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Nor does /readyz blame a rollout for it (found by the final attack of
    // session 23: "rulesMixed" was true through the outage).
    let ready = a.admin_json("/readyz").await;
    assert_eq!(ready["store"]["redis"], "down", "{ready}");
    assert_eq!(ready["store"]["rulesMixed"], false, "{ready}");
}

/// Found by the final attack of session 22: replicas running different
/// rules for a while (a rollout, or one replica whose file was edited) said
/// "Redis is unreachable" as an error, with Redis answering every call. The
/// fleet does bypass the cache then, and says so as a warning of its own.
#[tokio::test]
async fn a_rollout_of_other_rules_is_not_reported_as_redis_down() {
    let origin = Origin::start(0);
    let (_redis, a, b) = two_replicas(&origin, CONFIG).await;
    a.rename_config(&with_other_rules());
    a.wait_config("the other rules", |v| v["version"] == 2)
        .await;
    // Both bypass while they disagree; past `RULES_MIXED_ALERT_AFTER` (10 s)
    // both raise rules_mixed, and neither raises redis_down.
    for fg in [&a, &b] {
        wait_alert(fg, "rules_mixed", true).await;
    }
    for fg in [&a, &b] {
        let alerts = fg.admin_json("/api/alerts").await.to_string();
        assert!(!alerts.contains("redis_down"), "{alerts}");
        assert_eq!(fg.get_shared("/knobs/ttl/1").await.x_cache, "BYPASS");
        // Still ready (it passes reads through), and /readyz says why the
        // tier is "down".
        let ready = get(&fg.admin_url("/readyz")).await;
        assert_eq!(ready.status, 200);
        assert_eq!(ready.json()["store"]["rulesMixed"], true, "{}", ready.body);
    }
    // One fleet again: the warning clears and caching resumes.
    a.rename_config(CONFIG);
    for fg in [&a, &b] {
        wait_alert(fg, "rules_mixed", false).await;
        // (Settled in the same check that heard the fleet agree, one Redis
        // call later.)
        wait_json_within(
            fg,
            "/readyz",
            "rulesMixed false",
            Duration::from_secs(5),
            |v| v["store"]["rulesMixed"] == false,
        )
        .await;
    }
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while a.get_shared("/knobs/ttl/1").await.x_cache != "HIT" {
        assert!(std::time::Instant::now() < end, "caching never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Found by review helper-67: a replica alone in its fleet still hears its
/// own old rules for `RULES_ALIVE` (4 s) after it reloads, so an alert timed
/// by 3 s was raised on every edit of a lone replica's rules.
#[tokio::test]
async fn a_lone_replica_editing_its_rules_raises_no_alert() {
    let origin = Origin::start(0);
    let redis = Redis::start();
    let a = Freshgate::start(&origin.url(), Some(&redis.url()), CONFIG);
    a.wait_redis(true).await;
    a.rename_config(&with_other_rules());
    a.wait_config("the other rules", |v| v["version"] == 2)
        .await;
    let end = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < end {
        let list = a.admin_json("/api/monitoring").await["alerts"]["list"].to_string();
        assert_eq!(list, "[]", "a lone replica's reload raised an alert");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It settled alone: caching again.
    a.get_shared("/knobs/ttl/2").await;
    assert_eq!(a.get_shared("/knobs/ttl/2").await.x_cache, "HIT");
}

/// `CONFIG` with an invalidation rule: another rules fingerprint.
fn with_other_rules() -> String {
    format!("{CONFIG}invalidate:\n  - on: PATCH /knobs/ttl/:id\n    purge: [/knobs/ttl/:id]\n")
}

/// Poll `/api/monitoring` (which evaluates alerts when asked) until the
/// alert `name` is active, or is not (25 s at most).
async fn wait_alert(fg: &Freshgate, name: &str, active: bool) {
    let what = format!("{name} {}", if active { "active" } else { "inactive" });
    wait_json_within(fg, "/api/monitoring", &what, Duration::from_secs(25), |v| {
        v["alerts"]["list"].to_string().contains(name) == active
    })
    .await;
}

/// What a raw request got: its status (0: none), and whether the answer
/// held more than one response (a smuggled request answered).
fn exchange(fg: &Freshgate, request: &[u8]) -> (u16, usize) {
    let answer = raw_exchange(fg.addr, request);
    (raw_status(&answer), answer.matches("HTTP/1.1 ").count())
}

#[tokio::test]
async fn bad_input_gets_a_4xx_or_passes_through_never_a_panic() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(
        &origin.url(),
        None,
        &format!("{CONFIG}timeouts:\n  client_read: 1s\n"),
    );
    let big = |n: usize| "a".repeat(n);
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "header over 1 MiB",
            format!("GET /knobs/a HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", big(1100 << 10)).into(),
        ),
        (
            "300 header lines",
            format!(
                "GET /knobs/a HTTP/1.1\r\nHost: a\r\n{}Connection: close\r\n\r\n",
                (0..300).map(|i| format!("X-{i}: 1\r\n")).collect::<String>()
            )
            .into(),
        ),
        (
            "a 100 kB target",
            format!("GET /knobs/{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", big(100 << 10)).into(),
        ),
        (
            "bad chunk size",
            b"POST /knobs/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "chunk extension of 100 kB",
            format!("POST /knobs/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1;{}\r\na\r\n0\r\n\r\n", big(100_000)).into(),
        ),
        (
            "two Content-Lengths",
            b"POST /knobs/a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde".to_vec(),
        ),
        (
            "negative Content-Length",
            b"POST /knobs/a HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "Content-Length past u64",
            b"POST /knobs/a HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "target not UTF-8",
            b"GET /knobs/\xff\xfe HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "NUL in a header",
            b"GET /knobs/a HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "space before the colon",
            b"GET /knobs/a HTTP/1.1\r\nHost: a\r\nX-A : b\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "obsolete line folding",
            b"GET /knobs/a HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "a TLS handshake",
            [&b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"[..], &[b'x'; 100]].concat(),
        ),
        (
            "CONNECT",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nConnection: close\r\n\r\n".to_vec(),
        ),
    ];
    for (what, request) in &refused {
        let (status, responses) = exchange(&fg, request);
        assert!((400..500).contains(&status), "{what}: {status}");
        assert_eq!(responses, 1, "{what}");
    }

    // A path apps read in several ways, each reading (params dropped, cut
    // at `;`, the suffix, and theirs) about as long as the path: 5 kB
    // each, past 16 KiB together. Making them all cost 27 ms for 16 kB of
    // crafted segments. A write is refused; a read goes to the app
    // uncached.
    let long = format!("/knobs/{}/a;x/1.json", big(5_000));
    let write = raw_exchange(
        fg.addr,
        format!(
            "PATCH {long} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(
        raw_status(&write),
        400,
        "{}",
        &write[..write.len().min(300)]
    );
    assert!(write.contains("too many ways"), "{write}");
    let read = format!("GET {long} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    for _ in 0..2 {
        let answer = raw_exchange(fg.addr, read.as_bytes());
        assert_eq!(
            raw_status(&answer),
            200,
            "{}",
            &answer[..answer.len().min(300)]
        );
        assert!(
            answer.contains("detail=ambiguous-path"),
            "{}",
            &answer[..answer.len().min(600)]
        );
    }

    // CL + TE (request smuggling): read by Transfer-Encoding alone, then
    // the connection is closed: what follows is never a second request.
    let (status, responses) = exchange(
        &fg,
        b"POST /knobs/a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /knobs/smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!((status, responses), (200, 1), "smuggled request answered");

    // Passed through, keyed by what they mean: a `%` that starts no
    // escape is a `%` (sent as `%25`, so no later decoding makes one of
    // it); an encoded slash is not a separator.
    let stray = raw_exchange(
        fg.addr,
        b"GET /knobs/%zz%4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(body_of(&stray)["path"], "/knobs/%25zz%254", "{stray}");
    let slash = raw_exchange(
        fg.addr,
        b"GET /knobs/x%2f..%2fy HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(body_of(&slash)["path"], "/knobs/x%2F..%2Fy", "{slash}");
    let dots = raw_exchange(
        fg.addr,
        b"GET /knobs/x/%2e%2e/y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(body_of(&dots)["path"], "/knobs/y", "{dots}");

    // A client that stops sending its body is let go after
    // `timeouts.client_read` (1 s here), not held for pingora's 60 s.
    let started = std::time::Instant::now();
    let stalled = raw_exchange_partial(
        fg.addr,
        b"POST /knobs/slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    assert!(started.elapsed() < Duration::from_secs(4), "{stalled:?}");

    // Still serving, and nothing panicked on the way.
    let after = get(&fg.url("/knobs/after")).await;
    assert_eq!(after.status, 200);
    assert!(!fg.log().contains("panicked"), "{}", fg.log());
}

#[tokio::test]
async fn on_a_cookie_keyed_route_the_app_sees_only_the_keyed_cookie() {
    let (_origin, fg) = setup();
    let c = client();
    // `sess%69on` is `session` to a framework that decodes cookie names
    // (PHP): keyed as anonymous, its answer must not be stored for
    // anonymous readers. A cookie the rule neither keys nor ignores
    // bypasses the cache (the app answers that request alone).
    let url = fg.url("/knobs/session/decoded?echo=cookie");
    let sneaky = send(c.get(&url).header("cookie", "sess%69on=mallory")).await;
    assert!(
        sneaky.cache_status.contains("detail=cookie"),
        "{}",
        sneaky.cache_status
    );
    let anonymous = get(&url).await;
    assert!(!anonymous.body.contains("mallory"), "{}", anonymous.body);
    // A cached read carries only the keyed cookie (ignored ones never
    // reach the app: tests/it/cookies.rs).
    let bob = send(c.get(&url).header("cookie", "session=bob")).await;
    assert_eq!(bob.json()["echo"]["cookie"], "session=bob");
}

#[tokio::test]
async fn an_untrusted_peer_states_no_client_facts_on_any_request() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(
        &origin.url(),
        None,
        &format!("{CONFIG}\ntrusted_proxies: []\n"),
    );
    // Not a cached read (a cookie on a route that keys none: bypassed), so
    // the unkeyed-header rule does not apply; the claims go all the same.
    let echo = "x-forwarded-host,x-real-ip,forwarded,x-forwarded-port";
    let r = send(
        client()
            .get(fg.url(&format!("/knobs/claims?echo={echo}")))
            .header("cookie", "a=1")
            .header("x-forwarded-host", "evil.example")
            .header("x-real-ip", "203.0.113.9")
            .header("forwarded", "for=203.0.113.9;host=evil.example")
            .header("x-forwarded-port", "443"),
    )
    .await;
    assert!(
        r.cache_status.contains("detail=cookie"),
        "{}",
        r.cache_status
    );
    for (name, seen) in r.json()["echo"].as_object().unwrap() {
        assert_eq!(seen, "", "{name} reached the app from an untrusted peer");
    }
}

#[tokio::test]
async fn a_refetch_fills_the_entry_of_the_scheme_that_wrote() {
    let origin = Origin::start(0);
    let config = format!("{TEST_CONFIG}flags:\n  prefetch: true\n");
    let fg = Freshgate::start(&origin.url(), None, &config);
    let c = client();
    let post = fg.url("/community/api/posts/5");
    // Behind a TLS load balancer: every request says https.
    let https = |r: reqwest::RequestBuilder| r.header("x-forwarded-proto", "https");
    send(https(c.get(&post))).await;
    assert_eq!(send(https(c.get(&post))).await.x_cache, "HIT");
    send(https(c.post(fg.url("/community/api/posts/5/like")))).await;
    fg.metrics_with(&["freshgate_prefetches_total{result=\"ok\"} 2"])
        .await;
    let after = send(https(c.get(&post))).await;
    assert_eq!(
        after.x_cache, "HIT",
        "the refetch filled another scheme's entry"
    );
    assert_eq!(after.json()["likes"], 1);
}
