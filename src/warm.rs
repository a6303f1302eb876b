//! `freshgate warm`: fill the cache ahead of readers, through a running
//! freshgate — so every fill takes the normal request path (route rules,
//! the invalidation clock, the cache lock) and, with Redis, is shared by
//! every replica.
//!
//! What to fetch comes from a URL list, a `sitemap.xml` (a file or a URL on
//! the app), or a route pattern with an id range
//! (`/studio/api/scenes/[id]` with `1..500`). Each answer is sorted by what
//! freshgate's `X-Cache` and `Cache-Status` say: warmed (fetched and
//! stored), already cached, uncacheable (with the bypass reason), failed.
//! Bounded concurrency and an optional rate; a progress bar on a terminal,
//! plain progress lines otherwise; a summary at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The paths (with query) named by a URL list: one per line, absolute URLs
/// or paths; blank lines and `#` comments skipped.
pub fn from_list(text: &str) -> Result<Vec<String>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(path_of)
        .collect()
}

/// The page URLs a sitemap lists (sitemaps.org: `<url><loc>`), escapes
/// resolved. A sitemap index (`<sitemapindex>`) is refused: name one of its
/// sitemaps instead.
pub fn sitemap_urls(xml: &str) -> Result<Vec<String>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut in_url = false;
    // The escaped text of the <loc> being read (entities come as events).
    let mut loc: Option<String> = None;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => match e.name().as_ref() {
                b"sitemapindex" => {
                    return Err("a sitemap index: pass one of the sitemaps it lists".into())
                }
                b"url" => in_url = true,
                // Unprefixed only: not <image:loc> inside the url.
                b"loc" if in_url => loc = Some(String::new()),
                _ => {}
            },
            Ok(Event::Text(t)) => {
                if let Some(l) = loc.as_mut() {
                    l.push_str(&t.decode().map_err(|e| format!("sitemap: {e}"))?);
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(l) = loc.as_mut() {
                    // Literal text: escaped so the final unescape keeps it.
                    let text = t.decode().map_err(|e| format!("sitemap: {e}"))?;
                    l.push_str(&quick_xml::escape::escape(text.as_ref()));
                }
            }
            Ok(Event::GeneralRef(r)) => {
                if let Some(l) = loc.as_mut() {
                    let name = r.decode().map_err(|e| format!("sitemap: {e}"))?;
                    let _ = write!(l, "&{name};");
                }
            }
            Ok(Event::End(e)) => match e.name().as_ref() {
                b"url" => in_url = false,
                b"loc" => {
                    if let Some(l) = loc.take() {
                        let url = quick_xml::escape::unescape(l.trim())
                            .map_err(|e| format!("sitemap: <loc>{l}</loc>: {e}"))?;
                        out.push(url.into_owned());
                    }
                }
                _ => {}
            },
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "sitemap is not XML at byte {}: {e}",
                    reader.error_position()
                ))
            }
        }
    }
    Ok(out)
}

/// The paths a sitemap lists.
pub fn from_sitemap(xml: &str) -> Result<Vec<String>, String> {
    sitemap_urls(xml)?.iter().map(|u| path_of(u)).collect()
}

/// The authority of the first absolute URL among `urls` (`app.example`):
/// the `Host` clients use, when a list or sitemap names it.
pub fn first_authority<'a>(urls: impl IntoIterator<Item = &'a str>) -> Option<String> {
    urls.into_iter()
        .filter_map(|u| u.trim().parse::<http::Uri>().ok())
        .find_map(|u| Some(u.authority()?.as_str().to_string()))
}

/// `pattern` (one parameter: `[id]` or `:id`; a query may follow) filled
/// with every id of the inclusive range `ids` (`1..500`), at most `max`.
pub fn from_pattern(pattern: &str, ids: &str, max: usize) -> Result<Vec<String>, String> {
    let (lo, hi) = ids
        .split_once("..")
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b)
        .ok_or_else(|| format!("ids {ids:?}: expected FIRST..LAST, e.g. 1..500"))?;
    if hi - lo >= max as u64 {
        return Err(format!("ids {ids:?}: at most {max} ids"));
    }
    let (path, query) = match pattern.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pattern, None),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let params: Vec<usize> = segments
        .iter()
        .enumerate()
        .filter(|(_, s)| s.starts_with(':') || (s.starts_with('[') && s.ends_with(']')))
        .map(|(i, _)| i)
        .collect();
    let [param] = params[..] else {
        return Err(format!(
            "pattern {pattern:?} must have exactly one parameter ([id] or :id)"
        ));
    };
    if !path.starts_with('/') || path.contains('*') || segments[param].starts_with("[...") {
        return Err(format!(
            "pattern {pattern:?} must be a path with one parameter"
        ));
    }
    Ok((lo..=hi)
        .map(|id| {
            let mut s = segments.clone();
            let id = id.to_string();
            s[param] = &id;
            match query {
                Some(q) => format!("{}?{q}", s.join("/")),
                None => s.join("/"),
            }
        })
        .collect())
}

/// `http://host/a?b` or `/a?b` → `/a?b`.
pub fn path_of(line: &str) -> Result<String, String> {
    if line.starts_with('/') {
        return Ok(line.to_string());
    }
    let uri: http::Uri = line
        .parse()
        .map_err(|e| format!("{line:?} is not a URL or path: {e}"))?;
    match uri.path_and_query() {
        Some(pq) if uri.scheme().is_some() => Ok(pq.as_str().to_string()),
        _ => Err(format!("{line:?} is not a URL or path")),
    }
}

/// What one fetch did, from freshgate's own headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Warmed,
    AlreadyCached,
    /// Not stored, with why (`Cache-Status` detail).
    Uncacheable(String),
    Failed(String),
}

/// Sort an answer by its status, `X-Cache` and `Cache-Status`.
pub fn classify(status: u16, x_cache: &str, cache_status: &str) -> Outcome {
    if status >= 500 {
        return Outcome::Failed(format!("status {status}"));
    }
    match x_cache {
        "HIT" | "STALE" => Outcome::AlreadyCached,
        "MISS" if cache_status.contains("stored") => Outcome::Warmed,
        _ => Outcome::Uncacheable(
            cache_status
                .split("detail=")
                .nth(1)
                .map(|d| d.split(';').next().unwrap_or(d).trim().to_string())
                .unwrap_or_else(|| x_cache.to_ascii_lowercase()),
        ),
    }
}

/// What a warm run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub warmed: usize,
    pub already_cached: usize,
    /// Reason → count.
    pub uncacheable: BTreeMap<String, usize>,
    pub failed: usize,
    /// The first few failures, for the report.
    pub failures: Vec<String>,
}

impl Summary {
    pub fn done(&self) -> usize {
        self.warmed + self.already_cached + self.uncacheable.values().sum::<usize>() + self.failed
    }

    fn add(&mut self, path: &str, outcome: Outcome) {
        match outcome {
            Outcome::Warmed => self.warmed += 1,
            Outcome::AlreadyCached => self.already_cached += 1,
            Outcome::Uncacheable(why) => *self.uncacheable.entry(why).or_default() += 1,
            Outcome::Failed(why) => {
                self.failed += 1;
                if self.failures.len() < 5 {
                    self.failures.push(format!("{path}: {why}"));
                }
            }
        }
    }

    /// The one-line count, as progress and summary print it.
    pub fn counts(&self) -> String {
        format!(
            "warmed {}, already cached {}, uncacheable {}, failed {}",
            self.warmed,
            self.already_cached,
            self.uncacheable.values().sum::<usize>(),
            self.failed
        )
    }
}

/// How to fetch.
pub struct Options {
    /// freshgate's listener, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The `Host` to send (part of the key: the one clients use).
    pub host: Option<String>,
    /// `X-Forwarded-Proto` to send (`https` behind TLS; believed from a
    /// trusted peer).
    pub scheme: Option<String>,
    pub concurrency: usize,
    /// Requests per second at most; 0: no limit.
    pub rate: f64,
    /// A header every fetch carries: the admin API's warm marks its
    /// fetches as freshgate's own (not client traffic; scheme believed).
    pub marker: Option<(String, String)>,
}

/// The `Accept-Encoding` fetches send: what current browsers send, so a
/// response that varies on it is warmed for the variant browsers look up.
pub const BROWSER_ACCEPT_ENCODING: &str = "gzip, deflate, br, zstd";

/// Fastest and slowest `--rate` accepted (requests per second).
pub const RATE_RANGE: (f64, f64) = (0.01, 100_000.0);

/// Most fetches in flight.
pub const MAX_CONCURRENCY: usize = 64;

/// `rate` if usable: 0 (no limit) or within [`RATE_RANGE`].
pub fn check_rate(rate: f64) -> Result<f64, String> {
    if rate == 0.0 || (rate.is_finite() && rate >= RATE_RANGE.0 && rate <= RATE_RANGE.1) {
        Ok(rate)
    } else {
        Err(format!(
            "rate {rate}: 0 (no limit) or {} to {} per second",
            RATE_RANGE.0, RATE_RANGE.1
        ))
    }
}

/// Fetch every path through freshgate, adding each outcome to `state` as
/// it comes (others may read it meanwhile: progress). Blocks until done.
pub fn fetch_all(paths: &[String], opts: &Options, state: &Mutex<Summary>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let next = AtomicUsize::new(0);
    let slot = Mutex::new(Instant::now());
    let interval = check_rate(opts.rate)
        .ok()
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let base = opts.url.trim_end_matches('/').to_string();
    std::thread::scope(|scope| {
        for _ in 0..opts.concurrency.clamp(1, MAX_CONCURRENCY) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = paths.get(i) else { return };
                if let Some(every) = interval {
                    let at = {
                        let mut s = slot.lock();
                        let at = (*s).max(Instant::now());
                        *s = at + every;
                        at
                    };
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
                let outcome = fetch_one(&agent, &format!("{base}{path}"), opts);
                state.lock().add(path, outcome);
            });
        }
    });
}

fn fetch_one(agent: &ureq::Agent, url: &str, opts: &Options) -> Outcome {
    let mut req = agent
        .get(url)
        .header("accept-encoding", BROWSER_ACCEPT_ENCODING);
    if let Some((name, value)) = &opts.marker {
        req = req.header(name.as_str(), value.as_str());
    }
    if let Some(h) = &opts.host {
        req = req.header("host", h);
    }
    if let Some(s) = &opts.scheme {
        req = req.header("x-forwarded-proto", s);
    }
    match req.call() {
        Ok(mut resp) => {
            let h = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let (x_cache, status) = (h("x-cache"), h("cache-status"));
            let code = resp.status().as_u16();
            // Read it all: the fill completes with the body.
            match std::io::copy(&mut resp.body_mut().as_reader(), &mut std::io::sink()) {
                Ok(_) => classify(code, &x_cache, &status),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// [`fetch_all`], reporting progress on `progress`: a bar redrawn in place
/// when `tty`, a line every tenth otherwise.
pub fn run(paths: &[String], opts: &Options, progress: &mut dyn Write, tty: bool) -> Summary {
    let state = Mutex::new(Summary::default());
    let finished = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Set however fetch_all ends (a panic included), so the
            // progress loop never waits for fetches that will not come.
            struct Done<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Release);
                }
            }
            let _done = Done(&finished);
            fetch_all(paths, opts, &state);
        });
        let total = paths.len();
        let mut last_line = 0;
        let mut shown = false;
        loop {
            let s = state.lock().clone();
            let done = s.done();
            if tty {
                let width = 30;
                let filled = (done * width).checked_div(total).unwrap_or(width);
                let _ = write!(
                    progress,
                    "\r[{}{}] {done}/{total}  {}",
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    s.counts()
                );
                let _ = progress.flush();
                shown = true;
            } else if done == total || done >= last_line + (total / 10).max(1) {
                let _ = writeln!(progress, "warm: {done}/{total} ({})", s.counts());
                last_line = done;
            }
            if done >= total || finished.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if shown {
            let _ = writeln!(progress);
        }
    });
    state.into_inner()
}

/// The summary as printed at the end.
pub fn report(s: &Summary, total: usize) -> String {
    let mut out = format!("warmed {total} paths: {}\n", s.counts());
    for (why, n) in &s.uncacheable {
        let _ = writeln!(out, "  uncacheable ({why}): {n}");
    }
    for f in &s.failures {
        let _ = writeln!(out, "  failed: {f}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_sitemaps_and_id_ranges() {
        assert_eq!(
            from_list("# comment\n/a\n\nhttp://app.example/b?x=1\n").unwrap(),
            ["/a", "/b?x=1"]
        );
        assert!(from_list("not a url").is_err());
        let xml = r#"<?xml version="1.0"?>
            <urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
              <url><loc>https://app.example/posts/1</loc></url>
              <url><loc> https://app.example/search?q=a&amp;page=2 </loc><lastmod>2026-01-01</lastmod></url>
            </urlset>"#;
        assert_eq!(
            from_sitemap(xml).unwrap(),
            ["/posts/1", "/search?q=a&page=2"]
        );
        assert!(from_sitemap("<urlset><url><loc>x</url>").is_err());
        assert_eq!(
            from_pattern("/studio/api/scenes/[id]", "7..9", 100).unwrap(),
            [
                "/studio/api/scenes/7",
                "/studio/api/scenes/8",
                "/studio/api/scenes/9"
            ]
        );
        assert_eq!(
            from_pattern("/p/:id/likes", "1..1", 100).unwrap(),
            ["/p/1/likes"]
        );
        assert!(from_pattern("/p/[a]/[b]", "1..2", 100).is_err());
        assert!(from_pattern("/p", "1..2", 100).is_err());
        assert!(from_pattern("/p/[id]", "9..1", 100).is_err());
        assert!(from_pattern("/p/[id]", "a..b", 100).is_err());
        assert_eq!(
            from_pattern("/p/[id]?full=1", "2..2", 100).unwrap(),
            ["/p/2?full=1"]
        );
        assert!(from_pattern("/p/[id]", "1..101", 100)
            .unwrap_err()
            .contains("at most 100"));
        assert!(from_pattern("/p/[...rest]", "1..2", 100).is_err());
        for bad in [1e-30, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert!(check_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(check_rate(0.0), Ok(0.0));
    }

    #[test]
    fn answers_are_sorted_by_what_freshgate_says() {
        assert_eq!(
            classify(200, "MISS", "freshgate; fwd=uri-miss; stored"),
            Outcome::Warmed
        );
        assert_eq!(
            classify(200, "HIT", "freshgate; hit; ttl=50"),
            Outcome::AlreadyCached
        );
        assert_eq!(
            classify(200, "BYPASS", "freshgate; fwd=uri-miss; detail=no-store"),
            Outcome::Uncacheable("no-store".into())
        );
        assert_eq!(
            classify(200, "PASS", "freshgate; fwd=bypass; detail=cache-off"),
            Outcome::Uncacheable("cache-off".into())
        );
        assert!(matches!(classify(503, "MISS", ""), Outcome::Failed(_)));
    }
}
