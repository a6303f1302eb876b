//! HTTP caching conformance (issue 14): each test names the RFC section it
//! checks, against the demo app's `/knobs` route, which sets the exact
//! headers the query asks for (`hdr=name:value`, `cc=`, `etag=`).

use std::time::{Duration, SystemTime};

use crate::util::*;

fn setup() -> (Origin, Freshgate) {
    let origin = Origin::start(0);
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    (origin, fg)
}

/// `s` percent-encoded for a query value.
fn q(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn http_date(offset_secs: i64) -> String {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs((-offset_secs) as u64)
    };
    httpdate::fmt_http_date(t)
}

#[tokio::test]
async fn rfc9111_4_2_3_an_upstream_age_counts_against_freshness_and_is_served() {
    let (_origin, fg) = setup();
    // Older than its lifetime already: stale on arrival, never a hit.
    let old = fg.url(&format!(
        "/knobs/age-old?cc={}&hdr={}",
        q("max-age=3600"),
        q("age:7200")
    ));
    let a = get(&old).await;
    let b = get(&old).await;
    assert_ne!(a.serial(), b.serial(), "served fresh past its lifetime");
    // Younger: a hit, and its Age includes the age it arrived with.
    let young = fg.url(&format!(
        "/knobs/age-young?cc={}&hdr={}",
        q("max-age=3600"),
        q("age:600")
    ));
    get(&young).await;
    let hit = get(&young).await;
    assert_eq!(hit.x_cache, "HIT");
    assert!(
        hit.age.is_some_and(|a| (600..610).contains(&a)),
        "Age {:?}",
        hit.age
    );
    // An Age that is not a number is ignored (RFC 9111 §5.1).
    let junk = fg.url(&format!(
        "/knobs/age-junk?cc={}&hdr={}",
        q("max-age=3600"),
        q("age:-5")
    ));
    get(&junk).await;
    assert_eq!(get(&junk).await.x_cache, "HIT");
}

/// A scripted origin: `/date/<offset>/expires/<offset>` answers with a
/// `Date` and `Expires` that far (seconds) from now, `/undated` with no
/// `Date` at all, `/conn` with a field it
/// lists in `Connection`; a body that counts its requests.
fn scripted() -> (ScriptedOrigin, Freshgate) {
    let origin = ScriptedOrigin::start(|target, request| {
        let mut headers = vec![("content-type".to_string(), "text/plain".to_string())];
        let parts: Vec<&str> = target.split('/').collect();
        if let ["", "date", d, "expires", e] = parts[..] {
            headers.push(("date".into(), http_date(d.parse().unwrap())));
            headers.push(("expires".into(), http_date(e.parse().unwrap())));
        } else if target.starts_with("/chunked") {
            headers.push(("cache-control".into(), "max-age=60".into()));
            headers.push(("transfer-encoding".into(), "chunked".into()));
            return Scripted {
                status: 200,
                headers,
                body: "x".repeat(50_000),
            };
        } else if target == "/undated" {
            headers.push(("cache-control".into(), "max-age=60".into()));
        } else if target == "/baddate" {
            headers.push(("cache-control".into(), "max-age=60".into()));
            headers.push(("date".into(), "yesterday, around noon".into()));
        } else if target == "/reval" {
            headers.push(("cache-control".into(), "max-age=1".into()));
            headers.push(("etag".into(), "\"1\"".into()));
            headers.push(("date".into(), http_date(0)));
            if request.iter().any(|(n, _)| n == "if-none-match") {
                // Valid, but listing a field for this hop: not stored again.
                headers.push(("connection".into(), "x-hop".into()));
                headers.push(("x-hop".into(), "1".into()));
                return Scripted {
                    status: 304,
                    headers,
                    body: String::new(),
                };
            }
        } else if target == "/conn" {
            headers.push(("cache-control".into(), "max-age=60".into()));
            headers.push(("connection".into(), "x-private, keep-alive".into()));
            headers.push(("x-private".into(), "for the next hop only".into()));
        }
        Scripted {
            status: 200,
            headers,
            body: format!("{target} {:?}", SystemTime::now()),
        }
    });
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    (origin, fg)
}

fn ttl_of(r: &Got) -> i64 {
    r.cache_status
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.split(';').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {:?}", r.cache_status))
}

#[tokio::test]
async fn rfc9111_4_2_1_expires_is_judged_against_the_origins_date() {
    let (origin, fg) = scripted();
    // The origin's clock is an hour fast: Expires − Date is 100 s of life,
    // not the 3,700 s freshgate's own clock would give.
    let fast = fg.url("/date/3600/expires/3700");
    get(&fast).await;
    let hit = get(&fast).await;
    assert_eq!(hit.x_cache, "HIT", "{}", hit.cache_status);
    assert!((95..=100).contains(&ttl_of(&hit)), "{}", hit.cache_status);
    // An hour slow: its Expires is 100 s after its Date, and that Date says
    // it is an hour old already (apparent age, §4.2.3): stale on arrival.
    let slow = fg.url("/date/-3600/expires/-3500");
    get(&slow).await;
    let before = origin.requests();
    get(&slow).await;
    assert_eq!(
        origin.requests(),
        before + 1,
        "served fresh on a slow clock"
    );
    // An Expires in the past (§5.3): never served without asking the app.
    let past = fg.url("/date/0/expires/-60");
    get(&past).await;
    let before = origin.requests();
    get(&past).await;
    assert_eq!(origin.requests(), before + 1);
}

#[tokio::test]
async fn rfc9110_6_6_1_a_hit_carries_the_stored_responses_date() {
    let (_origin, fg) = scripted();
    // The origin's Date is 30 s in the past: a hit 1 s later must still say
    // when the origin made the response, not when freshgate sent it.
    let url = fg.url("/date/-30/expires/3600");
    let miss = get(&url).await;
    let origin_date = miss.headers["date"].to_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = get(&url).await;
    assert_eq!(hit.x_cache, "HIT", "{}", hit.cache_status);
    assert_eq!(hit.headers["date"], origin_date.as_str());
    assert_eq!(hit.headers.get_all("date").iter().count(), 1);
    let served = httpdate::parse_http_date(&origin_date).unwrap();
    let ago = SystemTime::now().duration_since(served).unwrap().as_secs();
    assert!((30..40).contains(&ago), "Date {origin_date} is {ago} s old");
    // An undated response is dated when it arrives, and hits keep that date.
    let undated = fg.url("/undated");
    let miss = get(&undated).await;
    let dated = miss.headers["date"].to_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = get(&undated).await;
    assert_eq!(hit.x_cache, "HIT", "{}", hit.cache_status);
    assert_eq!(hit.headers["date"], dated.as_str());
    // A Date no one can read is replaced on arrival (and kept by hits).
    let bad = fg.url("/baddate");
    let miss = get(&bad).await;
    let dated = miss.headers["date"].to_str().unwrap().to_string();
    assert!(httpdate::parse_http_date(&dated).is_ok(), "{dated}");
    assert_eq!(get(&bad).await.headers["date"], dated.as_str());
    // Revalidated but not stored again: dated by the 304, not the first
    // fetch (the answer carries no Age to tell how old that one is).
    let reval = fg.url("/reval");
    let first = get(&reval).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = get(&reval).await;
    let date = |r: &Got| httpdate::parse_http_date(r.headers["date"].to_str().unwrap()).unwrap();
    assert!(
        date(&second) >= date(&first) + Duration::from_secs(2),
        "{:?} then {:?} ({})",
        first.headers["date"],
        second.headers["date"],
        second.cache_status
    );
    // freshgate's own answers (here a 400 for a bad Host) get a current Date.
    let head = raw_exchange(
        fg.addr,
        b"GET /x HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(raw_status(&head), 400, "{head}");
    let date = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("date: ")
                .or_else(|| l.strip_prefix("Date: "))
        })
        .unwrap_or_else(|| panic!("no Date in {head}"));
    let age = SystemTime::now()
        .duration_since(httpdate::parse_http_date(date.trim()).unwrap())
        .map_or(0, |d| d.as_secs());
    assert!(age < 5, "freshgate's own answer is dated {date}");
}

#[tokio::test]
async fn rfc9110_7_6_1_fields_named_in_connection_are_not_forwarded_or_stored() {
    let (_origin, fg) = setup();
    // Request: the app never sees a field the client listed in Connection.
    let r = send(
        client()
            .get(fg.url("/knobs/conn-req?echo=x-hop"))
            .header("connection", "x-hop")
            .header("x-hop", "secret"),
    )
    .await;
    assert_eq!(r.json()["echo"]["x-hop"], "", "{}", r.body);
    // Response: nor does the client get one the app listed; and such an
    // answer is not stored (what the app meant to share is unclear).
    let (_scripted, fg) = scripted();
    let url = fg.url("/conn");
    for _ in 0..2 {
        let r = get(&url).await;
        assert!(!r.headers.contains_key("x-private"), "{:?}", r.headers);
        assert!(
            r.cache_status.contains("detail=connection-listed"),
            "{}",
            r.cache_status
        );
    }
}

#[tokio::test]
async fn rfc9111_4_3_4_a_304_freshens_the_stored_header_fields() {
    let (_origin, fg) = setup();
    // `x-serial` is the app's counter: the 304 carries a new one.
    let url = fg.url(&format!("/knobs/fresh304?etag=v1&cc={}", q("max-age=1")));
    let first = get(&url).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = get(&url).await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.serial(), first.serial(), "the stored body");
    let from_304 = revalidated.headers["x-serial"].clone();
    assert_ne!(from_304, first.headers["x-serial"], "the 304's field");
    let hit = get(&url).await;
    assert_eq!(hit.x_cache, "HIT");
    assert_eq!(
        hit.headers["x-serial"], from_304,
        "kept in the stored header"
    );
}

#[tokio::test]
async fn a_head_fills_the_entry_and_says_so_truthfully() {
    // A HEAD miss passes through and says so (`detail=head-miss`); a GET in
    // the background fills the entry, so the next HEAD or GET is a hit.
    // Chunked, as Next.js answers: pingora abandoned that fill when the
    // HEAD was the one filling, while Cache-Status said `stored`.
    let (scripted, fg) = scripted();
    let c = client();
    for path in ["/chunked", "/chunked?big=1"] {
        let url = fg.url(path);
        let first = send(c.head(&url)).await;
        assert!(
            first.cache_status.contains("detail=head-miss"),
            "{}",
            first.cache_status
        );
        assert!(
            !first.cache_status.contains("stored"),
            "{}",
            first.cache_status
        );
        let end = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let again = send(c.head(&url)).await;
            if again.x_cache == "HIT" {
                break;
            }
            assert!(
                std::time::Instant::now() < end,
                "{path}: never filled: {}",
                again.cache_status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let before = scripted.requests();
        let full = get(&url).await;
        assert_eq!(
            (full.x_cache.as_str(), full.body.len()),
            ("HIT", 50_000),
            "{path}"
        );
        assert_eq!(scripted.requests(), before);
    }
}

#[tokio::test]
async fn cache_status_ttl_never_exceeds_max_ttl() {
    let origin = Origin::start(0);
    let fg = Freshgate::start(
        &origin.url(),
        None,
        &TEST_CONFIG.replacen("cache:\n", "cache:\n  max_ttl: 3s\n", 1),
    );
    let url = fg.url(&format!("/knobs/long?cc={}", q("max-age=31536000")));
    get(&url).await;
    let hit = get(&url).await;
    assert_eq!(hit.x_cache, "HIT");
    assert!(
        hit.cache_status.contains("ttl=2") || hit.cache_status.contains("ttl=3"),
        "{}",
        hit.cache_status
    );
}

#[tokio::test]
async fn rfc9213_a_targeted_field_takes_precedence_over_cache_control() {
    let origin = Origin::start(0);
    // CDN-Cache-Control is obeyed only when listed (by default, freshgate's
    // own field alone).
    let default = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let ignored = default.url(&format!(
        "/knobs/cdn0?cc=no-store&hdr={}",
        q("cdn-cache-control:max-age=60")
    ));
    get(&ignored).await;
    assert_ne!(
        get(&ignored).await.x_cache,
        "HIT",
        "CDN-Cache-Control obeyed by default"
    );
    let fg = Freshgate::start(
        &origin.url(),
        None,
        &TEST_CONFIG.replacen(
            "cache:\n",
            "cache:\n  targeted_fields: [freshgate-cache-control, cdn-cache-control]\n",
            1,
        ),
    );
    let twice = |path: String| {
        let url = fg.url(&path);
        async move {
            let a = get(&url).await;
            let b = get(&url).await;
            (a, b)
        }
    };
    // CDN-Cache-Control says store, Cache-Control says no-store.
    let (_, b) = twice(format!(
        "/knobs/cdn1?cc=no-store&hdr={}",
        q("cdn-cache-control:max-age=60")
    ))
    .await;
    assert_eq!(b.x_cache, "HIT", "{}", b.cache_status);
    // ...and the other way round, with private too.
    for cdn in ["no-store", "private"] {
        let (a, b) = twice(format!(
            "/knobs/cdn2-{cdn}?hdr={}",
            q(&format!("cdn-cache-control:{cdn}"))
        ))
        .await;
        assert_ne!(a.serial(), b.serial(), "cdn-cache-control: {cdn}");
    }
    // freshgate's own field wins over CDN-Cache-Control, and is not passed on.
    let (a, b) = twice(format!(
        "/knobs/own?cc=no-store&hdr={}&hdr={}",
        q("freshgate-cache-control:max-age=60"),
        q("cdn-cache-control:no-store")
    ))
    .await;
    assert_eq!(b.x_cache, "HIT");
    assert!(!a.headers.contains_key("freshgate-cache-control"));
    assert!(!b.headers.contains_key("freshgate-cache-control"));
    assert_eq!(
        b.headers["cdn-cache-control"], "no-store",
        "for the CDN in front"
    );
}

/// An app that compresses for anyone whose `Accept-Encoding` mentions gzip
/// (as many do, `q=0` or not): `GZ` coded gzip, else `PLAIN`, both cacheable
/// and varying on `Accept-Encoding`.
fn gzip_when_mentioned() -> ScriptedOrigin {
    ScriptedOrigin::start(|_, headers| {
        let gzip = headers
            .iter()
            .any(|(k, v)| k == "accept-encoding" && v.contains("gzip"));
        let mut h = vec![
            ("cache-control".to_string(), "max-age=60".to_string()),
            ("vary".to_string(), "Accept-Encoding".to_string()),
        ];
        if gzip {
            h.push(("content-encoding".into(), "gzip".into()));
        }
        Scripted {
            status: 200,
            headers: h,
            body: if gzip { "GZ".into() } else { "PLAIN".into() },
        }
    })
}

#[tokio::test]
async fn accept_encoding_variants_share_what_they_can() {
    // Vary: Accept-Encoding: one entry per set of accepted codings, not
    // per spelling of it.
    let (origin, fg) = setup();
    let c = client();
    let url = fg.url("/knobs/ae?vary=accept-encoding");
    let first = send(c.get(&url).header("accept-encoding", "gzip, deflate, br")).await;
    assert_eq!(first.x_cache, "MISS");
    let before = origin.requests().await;
    for ae in [
        "br;q=1.0, GZIP, deflate",
        "deflate,gzip , br",
        "gzip, deflate, br, x-unknown",
    ] {
        let r = send(c.get(&url).header("accept-encoding", ae)).await;
        assert_eq!(r.x_cache, "HIT", "{ae}: {}", r.cache_status);
    }
    assert_eq!(origin.requests().await, before);
    assert_ne!(
        send(c.get(&url).header("accept-encoding", "gzip"))
            .await
            .x_cache,
        "HIT"
    );

    // An app that compresses for those who accept it: a gzip body only ever
    // reaches clients that accept gzip, and they keep getting it.
    let scripted = gzip_when_mentioned();
    let fg = Freshgate::start(&scripted.url(), None, TEST_CONFIG);
    let url = fg.url("/x");
    let no_ae = reqwest::Client::builder().no_gzip().build().unwrap();
    assert_eq!(
        send(c.get(&url).header("accept-encoding", "gzip"))
            .await
            .body,
        "GZ"
    );
    for _ in 0..3 {
        assert_eq!(
            send(no_ae.get(&url).header("accept-encoding", "br"))
                .await
                .body,
            "PLAIN"
        );
        let g = send(c.get(&url).header("accept-encoding", "gzip")).await;
        assert_eq!((g.body.as_str(), g.x_cache.as_str()), ("GZ", "HIT"));
    }
}

#[tokio::test]
async fn a_field_listed_in_connection_cannot_poison_a_variant() {
    // pingora drops what the client lists in Connection before the app sees
    // it; keyed or varied with it, the answer would land in the wrong entry.
    let (_origin, fg) = setup();
    let c = client();
    let url = fg.url("/knobs/lang2?vary=accept-language&echo=accept-language");
    let r = send(
        c.get(&url)
            .header("accept-language", "fr")
            .header("connection", "accept-language"),
    )
    .await;
    assert!(
        r.cache_status.contains("detail=connection-listed"),
        "{}",
        r.cache_status
    );
    let fr = send(c.get(&url).header("accept-language", "fr")).await;
    assert_eq!(
        fr.x_cache, "MISS",
        "the French entry was filled by another answer"
    );
    assert_eq!(fr.json()["echo"]["accept-language"], "fr");
}

#[tokio::test]
async fn a_websocket_handshake_keeps_its_upgrade_fields() {
    use std::io::{Read, Write};
    let scripted = ScriptedOrigin::start(|_, _| Scripted {
        status: 101,
        headers: vec![
            ("upgrade".into(), "websocket".into()),
            ("connection".into(), "Upgrade".into()),
            (
                "sec-websocket-accept".into(),
                "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
            ),
        ],
        body: String::new(),
    });
    let fg = Freshgate::start(&scripted.url(), None, TEST_CONFIG);
    let mut s = std::net::TcpStream::connect(fg.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
}

#[tokio::test]
async fn optional_reuse_heuristics_request_directives_and_list_fields() {
    let origin = Origin::start(0);
    let opted_in = TEST_CONFIG.replacen(
        "cache:\n",
        "cache:\n  heuristic_freshness: true\n  request_cache_control: true\n",
        1,
    );
    let off = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let on = Freshgate::start(&origin.url(), None, &opted_in);
    let c = client();
    // RFC 9111 §4.2.2: Last-Modified a day ago, no freshness of its own.
    let lm = format!(
        "/knobs/heur?cc=&hdr={}",
        q(&format!("last-modified:{}", http_date(-86_400)))
    );
    for (fg, stored) in [(&off, false), (&on, true)] {
        let a = get(&fg.url(&lm)).await;
        let b = get(&fg.url(&lm)).await;
        assert_eq!(a.serial() == b.serial(), stored, "{}", b.cache_status);
    }
    // A client's Cache-Control: no-cache / max-age=0 revalidates when
    // honoured; ignored by default.
    for (fg, honoured) in [(&off, false), (&on, true)] {
        let url = fg.url("/knobs/reqcc");
        let first = get(&url).await;
        for cc in ["no-cache", "max-age=0"] {
            let r = send(c.get(&url).header("cache-control", cc)).await;
            assert_eq!(
                r.serial() != first.serial(),
                honoured,
                "{cc}: {}",
                r.cache_status
            );
        }
        let min_fresh = send(c.get(&url).header("cache-control", "min-fresh=3600")).await;
        assert_eq!(min_fresh.x_cache != "HIT", honoured);
        let no_store = send(
            c.get(fg.url("/knobs/reqns"))
                .header("cache-control", "no-store"),
        )
        .await;
        assert_eq!(
            no_store.cache_status.contains("detail=request-no-store"),
            honoured
        );
    }
    // RFC 9111 §4.1: list fields compared by meaning, not bytes.
    let url = off.url("/knobs/lang?vary=accept-language");
    send(c.get(&url).header("accept-language", "en-US,fr;q=0.5")).await;
    let same = send(c.get(&url).header("accept-language", "en-us, fr; q=0.5")).await;
    assert_eq!(same.x_cache, "HIT", "{}", same.cache_status);
    let other = send(c.get(&url).header("accept-language", "fr,en-US;q=0.5")).await;
    assert_ne!(other.x_cache, "HIT");
}

#[tokio::test]
async fn a_writes_invalidation_fields_count_even_when_listed_in_connection() {
    // freshgate is the hop a `Connection`-listed field is for: a write's
    // Cache-Group-Invalidation so listed still invalidates, and then goes.
    let origin = ScriptedOrigin::start(|target, _| {
        let headers: Vec<(String, String)> = if target == "/writer" {
            vec![
                ("cache-group-invalidation".into(), "\"g1\"".into()),
                ("connection".into(), "Cache-Group-Invalidation".into()),
            ]
        } else {
            vec![
                ("cache-control".into(), "max-age=60".into()),
                ("cache-groups".into(), "\"g1\"".into()),
            ]
        };
        Scripted {
            status: 200,
            headers,
            body: format!("{target} {:?}", SystemTime::now()),
        }
    });
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let url = fg.url("/grouped");
    get(&url).await;
    assert_eq!(get(&url).await.x_cache, "HIT");
    let w = send(client().post(fg.url("/writer"))).await;
    assert_eq!(w.status, 200);
    assert!(
        !w.headers.contains_key("cache-group-invalidation"),
        "{:?}",
        w.headers
    );
    assert_eq!(
        get(&url).await.x_cache,
        "MISS",
        "the group was not invalidated"
    );
}

#[tokio::test]
async fn a_create_purges_its_location_however_the_client_spelled_the_host() {
    // RFC 9111 §4.4: the app builds Location from the (normalised) host it
    // was sent; the client wrote `Example.com.:80`. The 404 cached for the
    // new path must go before the 201 is acknowledged.
    let created = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = created.clone();
    let origin = ScriptedOrigin::start(move |target, headers| {
        let is_post = headers.iter().any(|(k, _)| k == "content-length");
        if target == "/posts" && is_post {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            return Scripted {
                status: 201,
                headers: vec![("location".into(), "http://example.com/posts/10".into())],
                body: "{}".into(),
            };
        }
        let exists = seen.load(std::sync::atomic::Ordering::SeqCst);
        Scripted {
            status: if exists { 200 } else { 404 },
            headers: vec![("cache-control".into(), "max-age=60".into())],
            body: if exists { "post 10" } else { "missing" }.into(),
        }
    });
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let c = client();
    let read = || send(c.get(fg.url("/posts/10")).header("host", "example.com"));
    assert_eq!(read().await.status, 404);
    assert_eq!(read().await.x_cache, "HIT");
    let post = send(
        c.post(fg.url("/posts"))
            .header("host", "Example.com.:80")
            .body("{}"),
    )
    .await;
    assert_eq!(post.status, 201);
    assert!(created.load(std::sync::atomic::Ordering::SeqCst));
    let after = read().await;
    assert_eq!(
        (after.status, after.body.as_str()),
        (200, "post 10"),
        "{}",
        after.cache_status
    );
}

#[tokio::test]
async fn a_client_cannot_plant_a_coded_body_in_another_variant() {
    // The app reads `gzip, gzip;q=0` as "gzip" (any mention); freshgate's
    // variant key says it does not accept gzip. The gzip answer must not
    // land where clients that cannot decode it look.
    let origin = gzip_when_mentioned();
    let fg = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let c = reqwest::Client::builder().no_gzip().build().unwrap();
    let url = fg.url("/plant");
    let attack = send(c.get(&url).header("accept-encoding", "gzip, gzip;q=0")).await;
    assert_eq!(attack.body, "GZ");
    assert!(
        attack.cache_status.contains("detail=coding-not-accepted"),
        "{}",
        attack.cache_status
    );
    let victim = send(c.get(&url).header("accept-encoding", "identity")).await;
    assert_eq!(victim.body, "PLAIN");
}

#[tokio::test]
async fn rfc9111_3_5_an_authorized_answer_is_shared_only_when_the_app_says_so() {
    let origin = Origin::start(0);
    let shared = TEST_CONFIG.replacen("cache:\n", "cache:\n  share_authorized: true\n", 1);
    let off = Freshgate::start(&origin.url(), None, TEST_CONFIG);
    let on = Freshgate::start(&origin.url(), None, &shared);
    let c = client();
    let as_user = |url: &str, token: &str| c.get(url).header("authorization", token);
    let public = format!("/knobs/auth-public?cc={}", q("public, max-age=60"));
    let plain = format!("/knobs/auth-plain?cc={}", q("max-age=60"));
    // By default a request with credentials never uses the cache.
    send(as_user(&off.url(&public), "Bearer alice")).await;
    let r = send(as_user(&off.url(&public), "Bearer alice")).await;
    assert!(
        r.cache_status.contains("detail=authorization"),
        "{}",
        r.cache_status
    );
    // Opted in: an answer the app marks `public` is shared between users ...
    let alice = send(as_user(&on.url(&public), "Bearer alice")).await;
    let bob = send(as_user(&on.url(&public), "Bearer bob")).await;
    assert_eq!(bob.x_cache, "HIT", "{}", bob.cache_status);
    assert_eq!(bob.serial(), alice.serial());
    // ... one without `public`, `s-maxage` or `must-revalidate` is not ...
    let alice = send(as_user(&on.url(&plain), "Bearer alice")).await;
    let bob = send(as_user(&on.url(&plain), "Bearer bob")).await;
    assert_ne!(bob.serial(), alice.serial(), "{}", bob.cache_status);
    // ... and an anonymous client's entry is never reused for credentials.
    let anonymous = get(&on.url(&plain)).await;
    assert_eq!(get(&on.url(&plain)).await.serial(), anonymous.serial());
    let carol = send(as_user(&on.url(&plain), "Bearer carol")).await;
    assert_ne!(carol.serial(), anonymous.serial(), "{}", carol.cache_status);
}
