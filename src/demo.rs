//! The bundled demo app: a small JSON API shaped like the Next.js app that
//! freshgate was built for, so a newcomer (and the tests and benchmarks) can
//! watch caching and invalidation work without an app of their own.
//!
//! Data lives in memory. Every write bumps the record's `version`, so a client
//! can tell whether it sees its own edit. Like a Next.js API route it answers
//! `Cache-Control: no-store`; freshgate's route rules decide caching.
//!
//! It routes as leniently as Express does by default, so that tests can show
//! what freshgate must do for such apps: case-insensitive, with or without a
//! trailing slash, parameters percent-decoded (`/posts/%39` is post 9), and
//! method overrides on POST (`X-HTTP-Method-Override`, `X-HTTP-Method`,
//! `X-Method-Override`, `?_method=`), as method-override middleware does;
//! and a method in lower case is the one upper-cased, as Werkzeug, Django
//! and Symfony take it.
//!
//! Fault knobs, per request (headers): `x-demo-delay-ms` waits before doing
//! anything (a write commits after it), `x-demo-status` answers a committed
//! write with that status (a 5xx after the commit), `x-demo-hang-ms` waits
//! after committing before answering (a client or proxy may give up first).
//!
//! Routes (`:id` numeric):
//! - `GET|PATCH|DELETE /studio/api/stories/:id`, `POST /studio/api/stories/:id/write`
//! - `GET|PATCH|DELETE /studio/api/chapters/:id`, `GET|PATCH|DELETE /studio/api/scenes/:id`
//! - `GET|POST /community/api/posts`, `GET|PATCH|DELETE /community/api/posts/:postId`
//! - `POST /community/api/posts/:postId/like`, `GET|POST /community/api/posts/:postId/replies`
//! - `GET /knobs/**?cc=&vary=&set_cookie=&etag=&size=&status=&echo=&hdr=` — a
//!   response shaped by its query, with a serial number (and the request
//!   headers named in `echo`, and any `hdr=name:value` header), for testing
//!   HTTP caching semantics
//! - `GET /__stats` — how many requests reached the app (no delay, no cache)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use http::{Response, StatusCode};
use parking_lot::Mutex;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Map, Value};

use crate::admin::respond;

/// Largest request body the demo accepts.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Story,
    Chapter,
    Scene,
    Post,
    Reply,
}

pub struct DemoApp {
    delay: Duration,
    data: Mutex<BTreeMap<(Kind, u64), Map<String, Value>>>,
    next_id: AtomicU64,
    serial: AtomicU64,
    requests: AtomicU64,
    writes: AtomicU64,
    router: matchit::Router<Route>,
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Story,
    StoryWrite,
    Chapter,
    Scene,
    Posts,
    Post,
    Like,
    Replies,
    Knobs,
    Stats,
}

impl DemoApp {
    pub fn new(delay: Duration) -> DemoApp {
        let mut router = matchit::Router::new();
        for (p, r) in [
            ("/studio/api/stories/{id}", Route::Story),
            ("/studio/api/stories/{id}/write", Route::StoryWrite),
            ("/studio/api/chapters/{id}", Route::Chapter),
            ("/studio/api/scenes/{id}", Route::Scene),
            ("/community/api/posts", Route::Posts),
            ("/community/api/posts/{id}", Route::Post),
            ("/community/api/posts/{id}/like", Route::Like),
            ("/community/api/posts/{id}/replies", Route::Replies),
            ("/knobs/{*rest}", Route::Knobs),
            ("/__stats", Route::Stats),
        ] {
            // The table above is fixed; a conflict would be a bug caught by every test.
            router.insert(p, r).expect("demo routes do not conflict");
        }
        let app = DemoApp {
            delay,
            data: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(10_000),
            serial: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            router,
        };
        app.seed();
        app
    }

    fn seed(&self) {
        let mut d = self.data.lock();
        let rec = |v: Value| v.as_object().cloned().unwrap_or_default();
        for s in 1..=10u64 {
            d.insert(
                (Kind::Story, s),
                rec(json!({"id": s, "title": format!("Story {s}"), "content": "", "version": 1})),
            );
            for c in 1..=3u64 {
                let cid = s * 10 + c;
                d.insert((Kind::Chapter, cid), rec(json!({"id": cid, "storyId": s, "title": format!("Chapter {c}"), "version": 1})));
                for n in 1..=3u64 {
                    let sid = cid * 10 + n;
                    d.insert((Kind::Scene, sid), rec(json!({"id": sid, "chapterId": cid, "storyId": s, "text": format!("Scene {n} of chapter {c}"), "version": 1})));
                }
            }
        }
        for p in 1..=20u64 {
            d.insert((Kind::Post, p), rec(json!({"id": p, "title": format!("Post {p}"), "body": "hello", "likes": 0, "version": 1})));
        }
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<Vec<u8>> {
    let mut r = respond(status, "application/json", v.to_string());
    // Like a Next.js API route: the app says "do not store"; freshgate rules decide.
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn not_found() -> Response<Vec<u8>> {
    json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"}))
}

fn bad_request(msg: &str) -> Response<Vec<u8>> {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": msg}))
}

async fn read_json(session: &mut ServerSession) -> Result<Map<String, Value>, &'static str> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err("body too large");
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err("body must be a JSON object"),
    }
}

#[async_trait]
impl ServeHttp for DemoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = effective_method(req);
        let path = req.uri.path().to_string();
        let query = req.uri.query().unwrap_or("").to_string();
        let knob = |name: &str| -> Option<u64> {
            req.headers.get(name)?.to_str().ok()?.trim().parse().ok()
        };
        let (delay, hang) = (knob("x-demo-delay-ms"), knob("x-demo-hang-ms"));
        let status = knob("x-demo-status").and_then(|s| StatusCode::from_u16(s as u16).ok());
        let routed = route_path(&path);
        let Ok(m) = self.router.at(&routed) else {
            return not_found();
        };
        let route = *m.value;
        let id: Option<u64> = m.params.get("id").and_then(|s| pct_decode(s).parse().ok());
        if m.params.get("id").is_some() && id.is_none() {
            return bad_request("id must be a number");
        }
        if matches!(route, Route::Stats) {
            return json_response(
                StatusCode::OK,
                &json!({"requests": self.requests.load(Ordering::Relaxed), "writes": self.writes.load(Ordering::Relaxed)}),
            );
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let is_write = !matches!(method.as_str(), "GET" | "HEAD");
        let body = if is_write {
            match read_json(session).await {
                Ok(b) => b,
                Err(e) => return bad_request(e),
            }
        } else {
            Map::new()
        };
        if is_write {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let id = id.unwrap_or(0);
        let mut resp = self.handle(session, route, &method, id, &path, &query, body);
        if is_write {
            // Committed. What the client hears about it is another matter.
            if let Some(ms) = hang {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if let Some(status) = status {
                *resp.status_mut() = status;
            }
        }
        resp
    }
}

impl DemoApp {
    #[allow(clippy::too_many_arguments)]
    fn handle(
        &self,
        session: &ServerSession,
        route: Route,
        method: &str,
        id: u64,
        path: &str,
        query: &str,
        body: Map<String, Value>,
    ) -> Response<Vec<u8>> {
        match (route, method) {
            (Route::Knobs, "GET" | "HEAD") => self.knobs(session, path, query),
            (Route::Knobs, _) => knob_write(query),
            (Route::Story, _) => self.record(Kind::Story, id, method, body),
            (Route::Chapter, _) => self.record(Kind::Chapter, id, method, body),
            (Route::Scene, _) => self.record(Kind::Scene, id, method, body),
            (Route::Post, _) => self.record(Kind::Post, id, method, body),
            (Route::StoryWrite, "POST") => self.record(Kind::Story, id, "PATCH", body),
            (Route::Posts, "GET" | "HEAD") => self.list(Kind::Post, None),
            (Route::Posts, "POST") => self.create(Kind::Post, None, body),
            (Route::Like, "POST") => self.like(id),
            (Route::Replies, "GET" | "HEAD") => self.list(Kind::Reply, Some(id)),
            (Route::Replies, "POST") => self.create(Kind::Reply, Some(id), body),
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            ),
        }
    }
}

impl DemoApp {
    fn record(
        &self,
        kind: Kind,
        id: u64,
        method: &str,
        body: Map<String, Value>,
    ) -> Response<Vec<u8>> {
        let mut d = self.data.lock();
        match method {
            "GET" | "HEAD" => match d.get(&(kind, id)) {
                Some(r) => json_response(StatusCode::OK, &Value::Object(r.clone())),
                None => not_found(),
            },
            "PATCH" | "PUT" => match d.get_mut(&(kind, id)) {
                Some(r) => {
                    let version = r.get("version").and_then(Value::as_u64).unwrap_or(0);
                    for (k, v) in body {
                        if k != "id" && k != "version" {
                            r.insert(k, v);
                        }
                    }
                    r.insert("version".into(), json!(version + 1));
                    json_response(StatusCode::OK, &Value::Object(r.clone()))
                }
                None => not_found(),
            },
            "DELETE" => match d.remove(&(kind, id)) {
                Some(_) => json_response(StatusCode::OK, &json!({"deleted": id})),
                None => not_found(),
            },
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            ),
        }
    }

    fn list(&self, kind: Kind, parent: Option<u64>) -> Response<Vec<u8>> {
        let d = self.data.lock();
        let items: Vec<Value> = d
            .range((kind, 0)..=(kind, u64::MAX))
            .filter(|(_, r)| {
                parent.is_none_or(|p| r.get("postId").and_then(Value::as_u64) == Some(p))
            })
            .map(|(_, r)| Value::Object(r.clone()))
            .collect();
        json_response(
            StatusCode::OK,
            &json!({"items": items, "count": items.len()}),
        )
    }

    fn create(
        &self,
        kind: Kind,
        parent: Option<u64>,
        mut body: Map<String, Value>,
    ) -> Response<Vec<u8>> {
        let id = self.new_id();
        body.insert("id".into(), json!(id));
        body.insert("version".into(), json!(1));
        if let Some(p) = parent {
            if !self.data.lock().contains_key(&(Kind::Post, p)) {
                return not_found();
            }
            body.insert("postId".into(), json!(p));
        }
        if kind == Kind::Post {
            body.entry("likes").or_insert(json!(0));
        }
        self.data.lock().insert((kind, id), body.clone());
        let mut r = json_response(StatusCode::CREATED, &Value::Object(body));
        let loc = match parent {
            Some(p) => format!("/community/api/posts/{p}/replies"),
            None => format!("/community/api/posts/{id}"),
        };
        if let Ok(v) = http::HeaderValue::from_str(&loc) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        r
    }

    fn like(&self, id: u64) -> Response<Vec<u8>> {
        let mut d = self.data.lock();
        match d.get_mut(&(Kind::Post, id)) {
            Some(r) => {
                let likes = r.get("likes").and_then(Value::as_u64).unwrap_or(0) + 1;
                let version = r.get("version").and_then(Value::as_u64).unwrap_or(0) + 1;
                r.insert("likes".into(), json!(likes));
                r.insert("version".into(), json!(version));
                json_response(StatusCode::OK, &Value::Object(r.clone()))
            }
            None => not_found(),
        }
    }

    /// A response shaped by its query string, for HTTP semantics tests.
    fn knobs(&self, session: &ServerSession, path: &str, query: &str) -> Response<Vec<u8>> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed) + 1;
        let q: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), pct_decode(v)))
            .collect();
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let req = session.req_header();
        let etag = get("etag").map(|e| format!("\"{e}\""));
        if let (Some(etag), Some(inm)) = (&etag, req.headers.get(http::header::IF_NONE_MATCH)) {
            if inm
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
            {
                let mut r = respond(StatusCode::NOT_MODIFIED, "application/json", Vec::new());
                r.headers_mut().remove(http::header::CONTENT_LENGTH);
                set(&mut r, "etag", etag);
                set(&mut r, "cache-control", get("cc").unwrap_or("max-age=60"));
                set(&mut r, "x-serial", &serial.to_string());
                add_headers(&mut r, &q);
                return r;
            }
        }
        let mut varied = Map::new();
        if let Some(v) = get("vary") {
            for name in v.split(',') {
                let val = req
                    .headers
                    .get(name.trim())
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                varied.insert(name.trim().to_ascii_lowercase(), json!(val));
            }
        }
        let size: usize = get("size")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
            .min(64 << 20);
        let hdr = |n: &str| {
            req.headers
                .get(n)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        // `echo=a,b`: the request headers the app saw (all lines, joined).
        let mut echo = Map::new();
        for name in get("echo").into_iter().flat_map(|v| v.split(',')) {
            let vals: Vec<String> = req
                .headers
                .get_all(name.trim())
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            echo.insert(name.trim().to_ascii_lowercase(), json!(vals.join("; ")));
        }
        let mut body = json!({
            "path": path,
            "query": query,
            "serial": serial,
            "varied": varied,
            "echo": echo,
            "host": hdr("host"),
            "forwardedFor": hdr("x-forwarded-for"),
            "forwardedProto": hdr("x-forwarded-proto"),
            "forwardedHost": hdr("x-forwarded-host"),
        })
        .to_string();
        if size > body.len() {
            body.push_str(&" ".repeat(size - body.len()));
        }
        let status = get("status")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        let mut r = respond(status, "application/json", body);
        set(&mut r, "cache-control", get("cc").unwrap_or("max-age=60"));
        set(&mut r, "x-serial", &serial.to_string());
        if let Some(v) = get("vary") {
            set(&mut r, "vary", v);
        }
        if let Some(c) = get("set_cookie") {
            set(&mut r, "set-cookie", c);
        }
        if let Some(e) = &etag {
            set(&mut r, "etag", e);
        }
        if let Some(k) = get("surrogate_key") {
            set(&mut r, "surrogate-key", k);
        }
        if let Some(g) = get("cache_groups") {
            set(&mut r, "cache-groups", g);
        }
        add_headers(&mut r, &q);
        r
    }
}

/// `hdr=name:value` (repeatable): extra response headers, appended.
fn add_headers(r: &mut Response<Vec<u8>>, q: &[(String, String)]) {
    for (_, v) in q.iter().filter(|(k, _)| k == "hdr") {
        if let Some((name, value)) = v.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                r.headers_mut().append(n, v);
            }
        }
    }
}

/// A write to `/knobs/**`: `200 {"ok":true}`, optionally naming RFC 9875
/// groups to invalidate (`cache_group_invalidation=`) or a `location=`.
fn knob_write(query: &str) -> Response<Vec<u8>> {
    let mut r = json_response(StatusCode::OK, &json!({"ok": true}));
    for kv in query.split('&') {
        match kv.split_once('=') {
            Some(("cache_group_invalidation", v)) => {
                set(&mut r, "cache-group-invalidation", &pct_decode(v))
            }
            Some(("location", v)) => set(&mut r, "location", &pct_decode(v)),
            Some(("content_location", v)) => set(&mut r, "content-location", &pct_decode(v)),
            _ => {}
        }
    }
    r
}

/// The method the app acts on: a POST may name another one, as
/// method-override middleware allows.
fn effective_method(req: &pingora::http::RequestHeader) -> String {
    // Upper-cased first, as Werkzeug, Django and Symfony do (a browser
    // sends `fetch(url, {method: "patch"})` as typed).
    let sent = req.method.as_str().to_ascii_uppercase();
    if sent != "POST" {
        return sent;
    }
    let header = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    .iter()
    .find_map(|h| req.headers.get(*h)?.to_str().ok().map(str::to_string));
    let param = req.uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("_method="))
            .map(pct_decode)
    });
    header
        .or(param)
        .map(|m| m.trim().to_ascii_uppercase())
        .unwrap_or(sent)
}

/// The path as an Express router compares it: case-insensitive, a trailing
/// slash ignored.
fn route_path(path: &str) -> String {
    let p = path.to_ascii_lowercase();
    match p.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped.to_string(),
        _ => p,
    }
}

fn set(r: &mut Response<Vec<u8>>, name: &'static str, value: &str) {
    if let Ok(v) = http::HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                // Two hex digits (`from_str_radix` alone takes `+1`).
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(c) => {
                        out.push(c);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
