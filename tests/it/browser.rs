//! The admin page in a real headless Chromium, driven over the Chrome
//! DevTools Protocol: it loads, shows hit rate and operations that follow
//! real traffic, toggles a flag and purges through its own buttons. A
//! screenshot is saved under the target directory (`tmp/admin-page.png`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::util::{client, get, send, Freshgate, Origin, Proc, TEST_CONFIG};

fn chromium() -> &'static str {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("chromium is not installed: run ./scripts/test, which installs it");
}

struct Browser {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _proc: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let proc = Proc::spawn(
            "chromium",
            Command::new(chromium()).args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1100",
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ]),
        );
        // With port 0 Chromium picks a free port and writes it here.
        let port_file = profile.path().join("DevToolsActivePort");
        let end = Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<u16>().ok())
            {
                break p;
            }
            assert!(Instant::now() < end, "chromium did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let targets: Value = client()
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (ws, _) = tungstenite::connect(url).expect("DevTools WebSocket");
        Browser {
            ws,
            next_id: 0,
            _proc: proc,
            _profile: profile,
        }
    }

    /// One DevTools command; events that arrive meanwhile are skipped.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().expect("DevTools message");
            let Ok(text) = m.into_text() else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        assert!(
            r["exceptionDetails"].is_null(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Poll `expr` in the page until it is `true` (20 s at most). Errors
    /// count as "not yet": right after `Page.navigate` the old document (or
    /// none) may still be there.
    async fn wait_for(&mut self, what: &str, expr: &str) {
        let end = Instant::now() + Duration::from_secs(20);
        let guarded =
            format!("(() => {{ try {{ return {expr}; }} catch (e) {{ return false; }} }})()");
        while self.eval(&guarded) != json!(true) {
            let body = self.eval("document.body.innerText.slice(0, 1500)");
            assert!(
                Instant::now() < end,
                "the page never showed {what} ({expr}); page text:\n{}",
                body.as_str().unwrap_or("")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn text(&mut self, id: &str) -> String {
        self.eval(&format!("document.getElementById('{id}').textContent"))
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_follows_traffic_toggles_a_flag_and_purges() {
    let origin = Origin::start(0);
    let config = format!("{TEST_CONFIG}flags:\n  debug_panel: true\n");
    let fg = Freshgate::start(&origin.url(), None, &config);
    let page = get(&fg.admin_url("/")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>freshgate admin</title>"));

    let mut b = Browser::launch().await;
    b.call("Page.enable", json!({}));
    b.call("Page.navigate", json!({ "url": fg.admin_url("/") }));
    b.wait_for(
        "the health badge",
        "document.getElementById('health').textContent === 'healthy'",
    )
    .await;
    b.wait_for(
        "the live stream connected",
        "document.getElementById('ops-mode').textContent === 'live'",
    )
    .await;

    // Known traffic: 3 misses, then 7 hits -> 70.0%.
    let (s1, s2, s3) = (
        "/studio/api/scenes/111",
        "/studio/api/scenes/112",
        "/studio/api/scenes/113",
    );
    for p in [s1, s2, s3, s1, s1, s1, s2, s2, s3, s3] {
        assert_eq!(get(&fg.url(p)).await.status, 200);
    }
    b.wait_for(
        "a 70.0% hit rate",
        "document.getElementById('hit-rate').textContent === '70.0%'",
    )
    .await;
    assert_eq!(b.text("requests"), "10 (7 / 3)");
    b.wait_for(
        "7 HIT and 3 MISS operations",
        "document.querySelectorAll('#ops tr[data-op=HIT]').length === 7 && \
         document.querySelectorAll('#ops tr[data-op=MISS]').length === 3",
    )
    .await;

    // Toggle a flag with its checkbox: the server has it, from "runtime".
    b.wait_for(
        "the serve_stale flag checkbox",
        "!!document.getElementById('flag-serve_stale') && document.getElementById('flag-serve_stale').checked",
    )
    .await;
    b.eval("document.getElementById('flag-serve_stale').click()");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let flags = fg.admin_json("/api/flags").await;
        if flags["flags"]["serve_stale"]["enabled"] == false {
            assert_eq!(flags["flags"]["serve_stale"]["source"], "runtime");
            break;
        }
        assert!(Instant::now() < end, "the flag never flipped: {flags}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Purge everything: first a confirmation, then the purge.
    assert_eq!(get(&fg.url(s1)).await.x_cache, "HIT");
    b.eval("document.getElementById('purge-all').click()");
    assert_eq!(
        b.eval("document.getElementById('purge-confirm-row').hidden"),
        json!(false),
        "purging asks for confirmation first"
    );
    assert_eq!(get(&fg.url(s1)).await.x_cache, "HIT", "nothing purged yet");
    b.eval("document.getElementById('purge-confirm').click()");
    b.wait_for(
        "the purge result",
        "document.getElementById('purge-result').textContent.includes('a:all')",
    )
    .await;
    assert_eq!(get(&fg.url(s1)).await.x_cache, "MISS");
    b.wait_for(
        "the PURGE operation",
        "document.querySelectorAll('#ops tr[data-op=PURGE]').length === 1",
    )
    .await;

    // The time-range chart drew bars for the traffic.
    b.eval("document.querySelector('#ranges button[data-range=\"6h\"]').click()");
    b.wait_for(
        "chart bars",
        "document.querySelectorAll('#chart rect').length > 0",
    )
    .await;

    // Warm from the page: a pattern and ids, then the progress it shows.
    b.eval("document.getElementById('warm-pattern').value = '/studio/api/scenes/[id]'");
    b.eval("document.getElementById('warm-ids').value = '211..213'");
    b.eval("document.getElementById('warm-start').click()");
    b.wait_for(
        "the warm summary",
        "document.getElementById('warm-result').textContent === '3/3 done: warmed 3, already cached 0, uncacheable 0, failed 0'",
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('warm-progress').value"),
        json!(3)
    );
    assert_eq!(get(&fg.url("/studio/api/scenes/212")).await.x_cache, "HIT");

    b.eval("window.scrollTo(0, 0)");
    let shot = b.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // Writes through the proxy still work after all that.
    let w = send(client().patch(fg.url(s1)).body("{}")).await;
    assert_eq!(w.status, 200);
}
