//! The admin listener's access control.

use crate::util::{client, free_port, get, send, Freshgate, Origin, BIN, TEST_CONFIG};

const TOKEN: &str = "test-admin-token-0123456789";
const READ_TOKEN: &str = "test-read-token-0123456789";

#[tokio::test]
async fn tokens_guard_the_admin_api_and_the_read_token_cannot_mutate() {
    let origin = Origin::start(0);
    let config = format!("{TEST_CONFIG}admin:\n  open: [/healthz, /metrics]\n");
    let fg = Freshgate::start_full(
        &origin.url(),
        None,
        &config,
        &[],
        &[
            ("FRESHGATE_ADMIN_TOKEN", TOKEN),
            ("FRESHGATE_ADMIN_READ_TOKEN", READ_TOKEN),
        ],
    );
    let c = client();
    // Open by configuration.
    assert_eq!(get(&fg.admin_url("/healthz")).await.status, 200);
    assert_eq!(get(&fg.admin_url("/metrics")).await.status, 200);
    // Everything else needs a token.
    let r = get(&fg.admin_url("/api/config")).await;
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("www-authenticate"));
    let wrong = send(c.get(fg.admin_url("/api/config")).bearer_auth("nope")).await;
    assert_eq!(wrong.status, 401);
    let ok = send(c.get(fg.admin_url("/api/config")).bearer_auth(TOKEN)).await;
    assert_eq!(ok.status, 200);
    let read = send(c.get(fg.admin_url("/api/flags")).bearer_auth(READ_TOKEN)).await;
    assert_eq!(read.status, 200);
    // Monitoring endpoints: 401 without a token, 200 with the read token.
    for path in [
        "/api/monitoring",
        "/api/alerts",
        "/api/metrics?timeRange=1h",
        "/api/operations",
        "/api/operations/stream",
    ] {
        assert_eq!(get(&fg.admin_url(path)).await.status, 401, "{path}");
        if path.ends_with("/stream") {
            // Endless by design: the status line is enough.
            let r = c
                .get(fg.admin_url(path))
                .bearer_auth(READ_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
            continue;
        }
        let r = send(c.get(fg.admin_url(path)).bearer_auth(READ_TOKEN)).await;
        assert_eq!(r.status, 200, "{path}");
    }
    // The page's HTML is not secret, but it is off unless debug_panel is on.
    assert_eq!(get(&fg.admin_url("/")).await.status, 404);

    // Nothing mutating is reachable without the full token.
    let mutations = [
        ("PUT", "/api/flags", r#"{"cache": false}"#),
        ("POST", "/api/purge", r#"{"all": true}"#),
        ("POST", "/api/reload", ""),
    ];
    for (method, path, body) in mutations {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let none = send(c.request(m.clone(), fg.admin_url(path)).body(body)).await;
        assert_eq!(none.status, 401, "{method} {path} without a token");
        let ro = send(
            c.request(m.clone(), fg.admin_url(path))
                .bearer_auth(READ_TOKEN)
                .body(body),
        )
        .await;
        assert_eq!(ro.status, 403, "{method} {path} with the read token");
    }
    // The flag was not flipped by the refused requests...
    let flags = send(c.get(fg.admin_url("/api/flags")).bearer_auth(TOKEN)).await;
    assert_eq!(flags.json()["flags"]["cache"]["enabled"], true);
    // ...and the full token can.
    let flip = send(
        c.put(fg.admin_url("/api/flags"))
            .bearer_auth(TOKEN)
            .body(r#"{"cache": false}"#),
    )
    .await;
    assert_eq!(flip.status, 200);
    assert_eq!(flip.json()["flags"]["cache"]["enabled"], false);
}

#[test]
fn an_exposed_admin_listener_without_a_token_is_refused() {
    let port = free_port();
    let out = std::process::Command::new(BIN)
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--admin-listen",
            &format!("0.0.0.0:{port}"),
        ])
        .env_remove("FRESHGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set admin.token"), "{err}");
}
