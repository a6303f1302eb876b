//! Faults under load (issue 13): two replicas sharing one Redis, readers
//! and a writer through both, while Redis is paused (SIGSTOP), slowed
//! (`CLIENT PAUSE`), killed and restarted empty; then the app hangs, fails,
//! resets connections, goes down and comes back.
//!
//! What must hold: no request fails because of Redis (reads and writes pass
//! through to the app); no read returns a version older than a write
//! acknowledged before it began; caching resumes once Redis is back; app
//! faults give a 502/504 with a JSON body, or the stale entry where the app's
//! `stale-if-error` allows it.
//!
//! Runs alone (`scripts/test`: names starting `no_stale_read`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

const POSTS: u64 = 4;
const PHASES: [&str; 6] = [
    "steady",
    "redis paused",
    "after the pause",
    "redis slowed",
    "redis killed",
    "redis restarted empty",
];

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    phase: AtomicUsize,
    /// Per post, the newest acknowledged version.
    done: Vec<AtomicU64>,
    reads: AtomicUsize,
    writes: AtomicUsize,
    hits: [AtomicUsize; PHASES.len()],
    failures: parking_lot::Mutex<Vec<String>>,
    stale: parking_lot::Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        let phase = PHASES[self.phase.load(Ordering::Relaxed)];
        self.failures.lock().push(format!("{phase}: {what}"));
    }
}

fn start_load(load: &Arc<Load>, bases: [String; 2]) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for r in 0..4usize {
        let (load, bases) = (load.clone(), bases.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut i = r;
            while !load.stop.load(Ordering::Relaxed) {
                i += 1;
                let p = 1 + (i as u64 % POSTS);
                let floor = load.done[p as usize].load(Ordering::Acquire);
                let url = format!("{}/community/api/posts/{p}", bases[i % 2]);
                match c.get(&url).header("host", "app.test").send().await {
                    Err(e) => load.fail(format!("GET {url}: {e}")),
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let hit = resp.headers().get("x-cache").is_some_and(|v| v == "HIT");
                        let body: serde_json::Value = resp.json().await.unwrap_or_default();
                        if status != 200 {
                            load.fail(format!("GET {url}: {status} {body}"));
                        } else if let Some(v) = body["version"].as_u64() {
                            if v < floor {
                                load.stale
                                    .lock()
                                    .push(format!("{url}: version {v} < {floor}"));
                            }
                            if hit {
                                load.hits[load.phase.load(Ordering::Relaxed)]
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        load.reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let (load, bases) = (load.clone(), bases.clone());
    tasks.push(tokio::spawn(async move {
        let c = client();
        let mut i = 0usize;
        while !load.stop.load(Ordering::Relaxed) {
            i += 1;
            let p = 1 + (i as u64 % POSTS);
            let url = format!("{}/community/api/posts/{p}", bases[i % 2]);
            let sent = c
                .patch(&url)
                .header("host", "app.test")
                .body(format!(r#"{{"title":"t{i}"}}"#))
                .send()
                .await;
            match sent {
                Err(e) => load.fail(format!("PATCH {url}: {e}")),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    match body["version"].as_u64() {
                        Some(v) if status == 200 => {
                            load.done[p as usize].fetch_max(v, Ordering::AcqRel);
                            load.writes.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => load.fail(format!("PATCH {url}: {status} {body}")),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }));
    tasks
}

/// `CLIENT PAUSE` Redis for `ms`: every command waits (a slow Redis).
async fn slow_down(redis: &Redis, ms: u64) {
    if let Ok(client) = redis::Client::open(redis.url()) {
        if let Ok(mut con) = client.get_multiplexed_async_connection().await {
            let _: Result<(), _> = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(ms)
                .arg("ALL")
                .query_async(&mut con)
                .await;
        }
    }
}

#[tokio::test]
async fn no_stale_read_through_redis_and_app_faults_under_load() {
    let config = format!("{TEST_CONFIG}timeouts:\n  upstream_read: 1s\n");
    let mut origin = Origin::start(0);
    let (mut redis, a, b) = two_replicas(&origin, &config).await;
    let load = Arc::new(Load {
        done: (0..=POSTS).map(|_| AtomicU64::new(0)).collect(),
        ..Load::default()
    });
    let tasks = start_load(&load, [a.url(""), b.url("")]);
    let phase = |n: usize| load.phase.store(n, Ordering::Relaxed);
    let sleep = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));

    sleep(2000).await;
    phase(1);
    redis.pause();
    sleep(2000).await;
    redis.resume();
    phase(2);
    sleep(2000).await;
    phase(3);
    for _ in 0..5 {
        slow_down(&redis, 300).await;
        sleep(400).await;
    }
    phase(4);
    redis.stop();
    sleep(2000).await;
    phase(5);
    redis.restart();
    // Caching resumes: hits again, within 20 s.
    let end = Instant::now() + Duration::from_secs(20);
    while load.hits[5].load(Ordering::Relaxed) < 20 && Instant::now() < end {
        sleep(200).await;
    }
    sleep(1000).await;
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let hits: Vec<usize> = load
        .hits
        .iter()
        .map(|h| h.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "faults under load: {} reads, {} writes; hits by phase {:?}",
        load.reads.load(Ordering::Relaxed),
        load.writes.load(Ordering::Relaxed),
        PHASES.iter().zip(&hits).collect::<Vec<_>>()
    );
    let failures = load.failures.lock().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let stale = load.stale.lock().clone();
    assert!(
        stale.is_empty(),
        "{} stale: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    assert!(load.writes.load(Ordering::Relaxed) > 20);
    assert!(hits[0] > 0, "no hits before the faults: {hits:?}");
    assert!(
        hits[5] >= 20,
        "caching did not resume after Redis came back: {hits:?}"
    );

    // --- The app's faults (Redis up again), through replica a. ---
    let c = client();
    let sie = a.url("/knobs/sie?cc=max-age%3D1%2C%20stale-if-error%3D300");
    let kept = a.url("/knobs/kept");
    let first = get(&sie).await;
    get(&kept).await;
    assert_eq!(get(&kept).await.x_cache, "HIT");
    // 5xx: passed on, never stored.
    let e1 = get(&a.url("/knobs/fails?status=503")).await;
    let e2 = get(&a.url("/knobs/fails?status=503")).await;
    assert_eq!((e1.status, e2.status), (503, 503));
    assert_ne!(e1.serial(), e2.serial());
    sleep(1200).await;

    // Hanging (SIGSTOP): a fresh entry is still a hit, a miss is a 504
    // after `timeouts.upstream_read`, an expired entry whose app allows
    // stale-if-error is served stale.
    origin.proc.signal("STOP");
    assert_eq!(get(&kept).await.x_cache, "HIT");
    let hung = send(c.get(a.url("/knobs/hung"))).await;
    assert_eq!(hung.status, 504, "{}", hung.body);
    assert_eq!(hung.json()["error"], "the app did not answer in time");
    let stale = get(&sie).await;
    assert_eq!(
        (stale.status, stale.x_cache.as_str()),
        (200, "STALE"),
        "{}",
        stale.cache_status
    );
    assert_eq!(stale.serial(), first.serial());
    origin.proc.signal("CONT");

    // Resetting every connection: 502 with a JSON body.
    let resetter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in resetter.incoming().flatten() {
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let in_front_of_resetter = Freshgate::start(&format!("http://{reset_addr}"), None, &config);
    let reset = get(&in_front_of_resetter.url("/knobs/r")).await;
    assert_eq!(reset.status, 502, "{}", reset.body);
    assert!(reset.json()["error"].as_str().is_some());

    // Down: 502 "could not be reached"; stale-if-error still serves.
    origin.proc.signal("KILL");
    origin.proc.wait_exit(Duration::from_secs(5));
    let down = get(&a.url("/knobs/down")).await;
    assert_eq!(down.status, 502, "{}", down.body);
    assert_eq!(down.json()["error"], "the app could not be reached");
    assert_eq!(get(&sie).await.x_cache, "STALE");

    // Back: answers and caching resume.
    origin.restart();
    let back = a.url("/knobs/back");
    assert_eq!(get(&back).await.status, 200);
    assert_eq!(get(&back).await.x_cache, "HIT");
}
