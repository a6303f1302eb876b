//! Test harness: real processes on ephemeral loopback ports.
//!
//! Every test starts what it needs — the demo app, one or more freshgate
//! processes (the real binary, `CARGO_BIN_EXE_freshgate`), a real
//! `redis-server` — and everything is stopped when its handle drops.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

pub const BIN: &str = env!("CARGO_BIN_EXE_freshgate");

/// The binary the freshgate proxies run: this build's, unless
/// `FRESHGATE_TEST_BIN` names another (to run today's attacks against an
/// older build; the demo app always comes from this one).
fn proxy_bin() -> String {
    std::env::var("FRESHGATE_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// A loopback port for a test process to listen on.
///
/// Ports come from below the kernel's ephemeral range, so no outgoing
/// connection and no `bind(:0)` elsewhere can take one, and each is handed out
/// once per test run. Asking the kernel for a free ephemeral port instead
/// (bind `:0`, close, pass the number on) races on a loaded machine: two
/// processes could be given the same number, the second fail to bind, and the
/// readiness probe connect to the first one — a test then talks to another
/// test's process (seen on CI as a 404 from someone else's admin listener).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // (first port, how many, where this process starts): fixed for the run.
    static RANGE: OnceLock<(u32, u32, u32)> = OnceLock::new();
    let &(start, span, offset) = RANGE.get_or_init(|| {
        let (start, span) = test_port_range();
        // A pid-dependent start, so two test binaries run by hand at the same
        // time do not walk the same sequence.
        (start, span, (std::process::id() * 97) % span)
    });
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (start + (offset + i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {start}..{}", start + span);
}

/// Up to 10 000 ports just below the ephemeral range (Linux default
/// 32768..60999), or above it when it starts too low.
fn test_port_range() -> (u32, u32) {
    let range: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let (low, high) = match range[..] {
        [l, h] => (l, h),
        _ => (32_768, 60_999),
    };
    if low >= 11_024 {
        (low - 10_000, 10_000)
    } else {
        (high + 1, (65_535 - high).clamp(1, 10_000))
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        Proc::spawn_logging(name, cmd, None)
    }

    /// Spawn with its stderr written to `log` (unless `FRESHGATE_TEST_LOG`
    /// asks for it on the terminal).
    pub fn spawn_logging(name: &str, cmd: &mut Command, log: Option<&std::path::Path>) -> Proc {
        let stderr = match log {
            _ if std::env::var_os("FRESHGATE_TEST_LOG").is_some() => Stdio::inherit(),
            Some(path) => std::fs::File::create(path).map_or(Stdio::null(), Stdio::from),
            None => Stdio::null(),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn signal(&self, sig: &str) {
        // Quietly: the process may have exited already.
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }

    /// Wait for the process to exit, up to `limit`. Returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("TERM");
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn wait_port(addr: SocketAddr, proc: &mut Proc) -> bool {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if port_open(addr) {
            return true;
        }
        if let Ok(Some(_)) = proc.child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// The bundled demo app, alone.
pub struct Origin {
    pub addr: SocketAddr,
    pub proc: Proc,
}

impl Origin {
    pub fn start(delay_ms: u64) -> Origin {
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut proc = Proc::spawn(
                "demo app",
                Command::new(BIN).args([
                    "demo",
                    "--origin-only",
                    "--origin-listen",
                    &addr.to_string(),
                    "--delay-ms",
                    &delay_ms.to_string(),
                ]),
            );
            if wait_port(addr, &mut proc) {
                return Origin { addr, proc };
            }
        }
        panic!("demo app did not start");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kill the app and start a new one on the same address (its data is
    /// new too): an app that was down and came back.
    pub fn restart(&mut self) {
        self.proc.signal("KILL");
        self.proc.wait_exit(Duration::from_secs(5));
        let addr = self.addr.to_string();
        let mut proc = Proc::spawn(
            "demo app",
            Command::new(BIN).args(["demo", "--origin-only", "--origin-listen", &addr]),
        );
        assert!(wait_port(self.addr, &mut proc), "demo app did not restart");
        self.proc = proc;
    }

    /// Requests that reached the app so far.
    pub async fn requests(&self) -> u64 {
        let v: serde_json::Value = reqwest::get(format!("{}/__stats", self.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["requests"].as_u64().unwrap()
    }
}

/// A real redis-server on an ephemeral port, without persistence.
pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis::stopped();
        r.restart();
        r
    }

    /// A port for a Redis that is not running yet (`restart` starts it):
    /// replicas can be started before it, as when Redis is down at deploy.
    pub fn stopped() -> Redis {
        Redis {
            port: free_port(),
            proc: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(5));
        }
    }

    /// A connection of the test's own to this Redis.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        // The client's default 500 ms response timeout is too short for a
        // loaded 2-core CI runner.
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .unwrap()
    }

    /// How many times Redis has run `command` (from `INFO commandstats`).
    pub async fn calls(&self, command: &str) -> u64 {
        let mut con = self.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Freeze the process (SIGSTOP): connections stay open, nothing answers,
    /// as with a hung Redis or a network partition.
    pub fn pause(&self) {
        if let Some(p) = &self.proc {
            p.signal("STOP");
        }
    }

    pub fn resume(&self) {
        if let Some(p) = &self.proc {
            p.signal("CONT");
        }
    }

    /// Start (again) on the same port: a new process, a new `run_id`, no data.
    pub fn restart(&mut self) {
        self.stop();
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let mut proc = Proc::spawn(
            "redis-server",
            Command::new(redis_server()).args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]),
        );
        assert!(
            wait_port(addr, &mut proc),
            "redis-server did not start on {addr}"
        );
        self.proc = Some(proc);
    }
}

/// A real Redis Cluster: three masters (no replicas) on ephemeral ports,
/// without persistence. A node killed and started again keeps its place in
/// the cluster (its `nodes.conf`) and its slots, and loses its data, as a
/// master restarted without persistence does.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    /// Each node's cluster bus port (by default its port + 10,000, which
    /// may be in the ephemeral range: a reconnecting client could take it
    /// while the node is down).
    bus_ports: Vec<u16>,
    procs: Vec<Option<Proc>>,
    /// Which nodes are in the cluster.
    members: parking_lot::Mutex<Vec<bool>>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Three masters.
    pub fn start() -> RedisCluster {
        RedisCluster::with_nodes(3)
    }

    /// Three masters, and `nodes - 3` nodes that are not in the cluster
    /// yet (see `add_replica`).
    pub fn with_nodes(nodes: usize) -> RedisCluster {
        let mut c = RedisCluster {
            ports: (0..nodes).map(|_| free_port()).collect(),
            bus_ports: (0..nodes).map(|_| free_port()).collect(),
            procs: (0..nodes).map(|_| None).collect(),
            members: parking_lot::Mutex::new((0..nodes).map(|i| i < 3).collect()),
            dir: tempfile::tempdir().unwrap(),
        };
        for i in 0..nodes {
            c.restart(i);
        }
        let nodes: Vec<String> = c.ports[..3]
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new(redis_program("redis-cli"))
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        c
    }

    /// Make node `node` (not in the cluster yet) a replica of master
    /// `master`, and wait until it has synced.
    pub async fn add_replica(&self, node: usize, master: usize) {
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut self.connection(master).await)
            .await
            .unwrap();
        let out = Command::new(redis_program("redis-cli"))
            .args(["--cluster", "add-node"])
            .arg(format!("127.0.0.1:{}", self.ports[node]))
            .arg(format!("127.0.0.1:{}", self.ports[master]))
            .args(["--cluster-slave", "--cluster-master-id", &id])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster add-node: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for _ in 0..400 {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut self.connection(node).await)
                .await
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                self.members.lock()[node] = true;
                self.wait_ok().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {node} never synced with {master}");
    }

    /// `CLUSTER FAILOVER` on replica `node`: it and its master swap roles,
    /// without data loss (the master stops until the replica has caught
    /// up). Waits until `node` is a master serving its slots.
    pub async fn failover_to(&self, node: usize) {
        let replication = |i: usize| async move {
            redis::cmd("INFO")
                .arg("replication")
                .query_async::<String>(&mut self.connection(i).await)
                .await
                .unwrap_or_default()
        };
        let before = replication(node).await;
        let master_port: u16 = before
            .lines()
            .find_map(|l| l.strip_prefix("master_port:")?.trim().parse().ok())
            .expect("a replica knows its master");
        let master = self.ports.iter().position(|p| *p == master_port).unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut self.connection(node).await)
            .await
            .unwrap();
        // Done when both agree: the replica leads, its master follows.
        for _ in 0..400 {
            if replication(node).await.contains("role:master")
                && replication(master).await.contains("role:slave")
            {
                self.wait_ok().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {node} never took over from {master}");
    }

    /// The URL of node `i` (any node leads freshgate to the others).
    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i])
    }

    pub fn stop(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.signal("KILL");
            p.wait_exit(Duration::from_secs(5));
        }
    }

    /// Start node `i` (again): a new process, a new `run_id`, no data.
    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        let port = self.ports[i];
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conf = self.dir.path().join(format!("nodes-{port}.conf"));
        let mut proc = Proc::spawn(
            "redis-server (cluster)",
            Command::new(redis_server())
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                .args(["--cluster-port", &self.bus_ports[i].to_string()])
                .arg("--cluster-config-file")
                .arg(&conf)
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(self.dir.path()),
        );
        assert!(
            wait_port(addr, &mut proc),
            "redis-server did not start on {addr}"
        );
        self.procs[i] = Some(proc);
    }

    async fn connection(&self, i: usize) -> redis::aio::MultiplexedConnection {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        redis::Client::open(self.url(i))
            .unwrap()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .unwrap()
    }

    /// Wait until every node says the cluster is whole again.
    pub async fn wait_ok(&self) {
        for _ in 0..400 {
            let mut ok = 0;
            let members = self.members.lock().clone();
            let running: Vec<usize> = (0..self.ports.len())
                .filter(|i| self.procs[*i].is_some() && members[*i])
                .collect();
            for &i in &running {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut self.connection(i).await)
                    .await
                    .unwrap_or_default();
                ok += usize::from(info.contains("cluster_state:ok"));
            }
            if ok == running.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the cluster never became whole");
    }

    /// The node that serves `key` (the others answer MOVED).
    pub async fn owner_of(&self, key: &str) -> usize {
        for i in 0..self.ports.len() {
            let r: redis::RedisResult<i64> = redis::cmd("EXISTS")
                .arg(key)
                .query_async(&mut self.connection(i).await)
                .await;
            if r.is_ok() {
                return i;
            }
        }
        panic!("no node serves {key}");
    }

    /// Keys on node `i` whose name matches `pattern`.
    pub async fn keys(&self, i: usize, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut self.connection(i).await)
            .await
            .unwrap()
    }
}

pub fn redis_server() -> String {
    redis_program("redis-server")
}

fn redis_program(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run ./scripts/test, which installs it");
}

/// libfaketime, preloaded into a process to move its wall clock: the
/// offset is read from the file named by `FAKETIME_TIMESTAMP_FILE` on every
/// call (`FAKETIME_NO_CACHE`); the monotonic clock is left alone, as an NTP
/// step or a VM's resume leaves it.
pub fn faketime_env(offset_file: &std::path::Path) -> Vec<(&'static str, String)> {
    let lib = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|arch| arch.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is not installed: run ./scripts/test, which installs it")
        });
    vec![
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
    ]
}

/// A freshgate process.
pub struct Freshgate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub proc: Proc,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

/// Route rules most tests use, in the shipped config's style.
pub const TEST_CONFIG: &str = r#"
shutdown:
  grace_period: 0s
  timeout: 1s
cache:
  max_object_size: 64KiB
routes:
  - name: scene
    match: /studio/api/scenes/:id
    ttl: 60s
    override_no_store: true
  - name: posts
    match: /community/api/posts
    ttl: 60s
    override_no_store: true
  - name: post
    match: /community/api/posts/:postId
    ttl: 60s
    override_no_store: true
  - name: per-user
    match: /knobs/per-user/**
    key:
      headers: [authorization]
  - name: off
    match: /knobs/off/**
    enabled: false
  - name: chapter
    match: /studio/api/chapters/:id
    ttl: 60s
    override_no_store: true
invalidate:
  - name: scene-write
    on: "[PATCH, DELETE] /studio/api/scenes/:id"
    purge: [/studio/api/scenes/:id]
  - name: post-like
    on: POST /community/api/posts/:postId/like
    purge: [/community/api/posts/:postId, /community/api/posts]
  - name: post-create
    on: POST /community/api/posts
    purge: [/community/api/posts]
  - name: post-write
    on: "[PATCH, PUT, DELETE] /community/api/posts/:postId"
    purge: [/community/api/posts/:postId, /community/api/posts]
"#;

impl Freshgate {
    pub fn start(upstream: &str, redis: Option<&str>, config: &str) -> Freshgate {
        Freshgate::start_with_args(upstream, redis, config, &[])
    }

    pub fn start_with_args(
        upstream: &str,
        redis: Option<&str>,
        config: &str,
        extra: &[&str],
    ) -> Freshgate {
        Freshgate::start_full(upstream, redis, config, extra, &[])
    }

    /// Start with extra arguments and environment variables.
    pub fn start_full(
        upstream: &str,
        redis: Option<&str>,
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Freshgate {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freshgate.yaml");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .unwrap();
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut cmd = Command::new(proxy_bin());
            cmd.args(["run", "-c"])
                .arg(&path)
                .args([
                    "--listen",
                    &addr.to_string(),
                    "--admin-listen",
                    &admin.to_string(),
                ])
                .args(["--upstream", upstream])
                .args(extra)
                .envs(env.iter().copied());
            if let Some(r) = redis {
                // 100 ms (the default) is tight for a 2-core CI runner that
                // runs many processes at once: one slow answer would turn a
                // hit into a miss and fail a test for the machine's sake.
                // Outage tests stop Redis, which fails fast either way.
                cmd.args(["--redis", r, "--redis-timeout", "1s"]);
            }
            let mut proc =
                Proc::spawn_logging("freshgate", &mut cmd, Some(&dir.path().join("stderr.log")));
            if wait_port(addr, &mut proc) && wait_port(admin, &mut proc) {
                return Freshgate {
                    addr,
                    admin,
                    proc,
                    config: path,
                    _dir: dir,
                };
            }
        }
        panic!("freshgate did not start");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// What the process has written to stderr so far (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// GET `path` as a load balancer in front of several replicas would send
    /// it: the same `Host` for all of them (the host is part of the key).
    pub async fn get_shared(&self, path: &str) -> Got {
        send(client().get(self.url(path)).header("host", "app.test")).await
    }

    /// A PATCH of `path` with `body`, as `get_shared` asks for it.
    pub async fn patch_shared(&self, path: &str, body: &str) -> Got {
        send(
            client()
                .patch(self.url(path))
                .header("host", "app.test")
                .body(body.to_string()),
        )
        .await
    }

    /// Replace the config file in place (truncate and write, as `>` does).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// Replace the config the way the kubelet updates a mounted ConfigMap:
    /// the file is a symlink through `..data` to a versioned directory, and
    /// an update writes a new directory and renames a new `..data` link over
    /// the old one — the file's own path never changes. The first call turns
    /// the plain file into that layout.
    pub fn swap_config_as_kubernetes(&self, text: &str) {
        use std::os::unix::fs::symlink;
        let dir = self.config.parent().unwrap();
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let version = format!("..{stamp}");
        std::fs::create_dir(dir.join(&version)).unwrap();
        std::fs::write(dir.join(&version).join("freshgate.yaml"), text).unwrap();
        symlink(&version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        if !self.config.is_symlink() {
            let link = dir.join("freshgate.yaml.link");
            symlink("..data/freshgate.yaml", &link).unwrap();
            std::fs::rename(&link, &self.config).unwrap();
        }
    }

    /// Replace the config file the way editors do: write a temp file in the
    /// same directory, then rename it over the original.
    pub fn rename_config(&self, text: &str) {
        let tmp = self.config.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// `PUT /api/flags` with `body` (JSON, e.g. `{"cache": false}`).
    pub async fn put_flags(&self, body: &str) -> Got {
        send(
            client()
                .put(self.admin_url("/api/flags"))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        get(&self.admin_url(path)).await.json()
    }

    /// `/metrics` once it contains every one of `needles` (10 s at most).
    /// Request counters are updated in pingora's logging phase, which runs
    /// just *after* the client has the response: poll rather than race it.
    pub async fn metrics_with(&self, needles: &[&str]) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let text = get(&self.admin_url("/metrics")).await.body;
            if needles.iter().all(|n| text.contains(n)) {
                return text;
            }
            assert!(
                Instant::now() < end,
                "metrics never showed {needles:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Poll `/api/config` until `pred` holds (10 s at most).
    pub async fn wait_config(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.admin_json("/api/config").await;
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "config never reached: {what}; last: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Wait until `/readyz` reports Redis up (or down): the tier connects in
    /// the background.
    pub async fn wait_redis(&self, up: bool) {
        let want = if up { "up" } else { "down" };
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(r) = reqwest::get(self.admin_url("/readyz")).await {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if v["store"]["redis"] == want {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis never reported {want}");
    }
}

/// Two freshgate replicas sharing a fresh `redis-server`, both connected.
pub async fn two_replicas(origin: &Origin, config: &str) -> (Redis, Freshgate, Freshgate) {
    let redis = Redis::start();
    let a = Freshgate::start(&origin.url(), Some(&redis.url()), config);
    let b = Freshgate::start(&origin.url(), Some(&redis.url()), config);
    a.wait_redis(true).await;
    b.wait_redis(true).await;
    (redis, a, b)
}

/// Poll a JSON admin endpoint until `pred` holds (10 s at most).
pub async fn wait_json(
    fg: &Freshgate,
    path: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_json_within(fg, path, what, Duration::from_secs(10), pred).await
}

/// Poll a JSON admin endpoint until `pred` holds (`within` at most).
pub async fn wait_json_within(
    fg: &Freshgate,
    path: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + within;
    loop {
        let v = fg.admin_json(path).await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < end, "{path} never showed {what}: {v:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one key of this run's log matching `pattern` (`fg:2:*:floor`).
pub async fn log_key(con: &mut redis::aio::MultiplexedConnection, pattern: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys.into_iter().next().unwrap()
}

/// One response, reduced to what the tests look at.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub x_cache: String,
    pub cache_status: String,
    pub age: Option<u64>,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn serial(&self) -> u64 {
        self.json()["serial"]
            .as_u64()
            .expect("a knobs response has a serial")
    }
}

/// `(id, version)` of each item a collection answer lists.
pub fn listed_versions(v: &serde_json::Value) -> Vec<(u64, u64)> {
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some((i["id"].as_u64()?, i["version"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn send(req: reqwest::RequestBuilder) -> Got {
    let r = req.send().await.expect("request failed");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let status = r.status().as_u16();
    let x_cache = h("x-cache");
    let cache_status = h("cache-status");
    let age = r
        .headers()
        .get("age")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let headers = r.headers().clone();
    let body = r.text().await.unwrap_or_default();
    Got {
        status,
        x_cache,
        cache_status,
        age,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Got {
    send(client().get(url)).await
}

/// A TCP gate in front of another port (Redis): it refuses connections
/// until opened, and can be shut again, cutting every connection through it.
/// What a replica sees when only its own path to Redis is down.
pub struct Gate {
    pub port: u16,
    target: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
    /// Connections that sent `SUBSCRIBE` pass nothing on, either way, and
    /// stay open: a NAT that dropped an idle connection without a word.
    mute_subscribers: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Gate {
    /// A closed gate to `target` (nothing listens on its port yet).
    pub fn closed(target: u16) -> Gate {
        Gate {
            port: free_port(),
            target,
            open: Default::default(),
            conns: Default::default(),
            mute_subscribers: Default::default(),
        }
    }

    /// From now on, Redis subscriptions through the gate hear nothing (and
    /// their connections stay open).
    pub fn mute_subscribers(&self) {
        self.mute_subscribers
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Start listening and forwarding.
    pub fn open(&self) {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("gate port");
        listener.set_nonblocking(true).unwrap();
        self.open.store(true, Ordering::SeqCst);
        let (open, conns, target) = (self.open.clone(), self.conns.clone(), self.target);
        let mute = self.mute_subscribers.clone();
        std::thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let mut held = conns.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                let subscriber = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                for (mut from, mut to, upstream) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (server, client, false),
                ] {
                    let (mute, subscriber) = (mute.clone(), subscriber.clone());
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n @ 1..) = from.read(&mut buf) {
                            let data = &buf[..n];
                            if upstream
                                && data
                                    .windows(9)
                                    .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                            {
                                subscriber.store(true, Ordering::SeqCst);
                            }
                            if subscriber.load(Ordering::SeqCst) && mute.load(Ordering::SeqCst) {
                                continue;
                            }
                            if to.write_all(data).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }

    /// Cut every connection through the gate, and keep listening: a
    /// Redis restart or a NAT's reset, with Redis reachable at once.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Stop listening and cut every connection through the gate.
    pub fn close(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut();
        // The listener goes with its thread's next loop.
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

/// How a client leaves after sending a request.
#[derive(Debug, Clone, Copy)]
pub enum Leave {
    /// Closes its side (FIN), as a browser tab that is closed may.
    Fin,
    /// Resets the connection (RST), as a killed process does.
    Reset,
}

/// Send one HTTP/1.1 request over a raw socket and leave at once, without
/// reading the answer.
pub fn send_and_leave(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    leave: Leave,
) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: app.test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send");
    // Let the proxy read the whole request before the client goes.
    std::thread::sleep(Duration::from_millis(50));
    match leave {
        Leave::Fin => {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        Leave::Reset => {
            // SO_LINGER 0: close sends RST.
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER");
        }
    }
    drop(s);
}

/// GET `url` from the app directly (no freshgate) until `done` holds, 10 s
/// at most: the write reached the app and was committed.
pub async fn until_app(url: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(url).await;
        if serde_json::from_str(&r.body).is_ok_and(|v| done(&v)) {
            return;
        }
        assert!(Instant::now() < end, "the app never showed it: {}", r.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Send `request` as raw bytes over a new connection and read until the
/// server closes it (or 5 s pass): the whole answer as text. For requests
/// an HTTP client library would refuse to send.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 answer (0 when there was none).
pub fn raw_status(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Send `request` (a request cut short) and wait, without sending more,
/// until the server answers or closes (20 s at most): what it sent.
pub fn raw_exchange_partial(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::Read;
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One response a [`ScriptedOrigin`] sends: status line code, header lines
/// exactly as given, and a body (its `Content-Length` is added, unless the
/// headers say `transfer-encoding: chunked`: then it is sent in chunks).
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

type Script = dyn Fn(&str, &[(String, String)]) -> Scripted + Send + Sync;

/// A request's head as a test origin reads it: the request line and the
/// fields (names lower-cased). `None` once the connection is closed.
pub fn read_head(reader: &mut impl std::io::BufRead) -> Option<(String, Vec<(String, String)>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            return Some((line, headers));
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
}

/// An origin that answers every request with what `script` returns for its
/// target and header lines, byte for byte — for headers a real server would
/// rewrite (`Date`, `Connection`). Counts the requests it answered.
pub struct ScriptedOrigin {
    pub addr: SocketAddr,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ScriptedOrigin {
    pub fn start(
        script: impl Fn(&str, &[(String, String)]) -> Scripted + Send + Sync + 'static,
    ) -> ScriptedOrigin {
        use std::io::BufReader;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (count, script): (_, std::sync::Arc<Script>) =
            (requests.clone(), std::sync::Arc::new(script));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (count, script) = (count.clone(), script.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    while let Some((line, headers)) = read_head(&mut reader) {
                        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let r = script(&target, &headers);
                        let mut out = format!("HTTP/1.1 {} X\r\n", r.status);
                        for (k, v) in &r.headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        let chunked = r
                            .headers
                            .iter()
                            .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
                        if r.status != 304 && r.status != 101 && !chunked {
                            out.push_str(&format!("content-length: {}\r\n", r.body.len()));
                        }
                        out.push_str("\r\n");
                        if chunked {
                            for piece in r.body.as_bytes().chunks(4096) {
                                out.push_str(&format!("{:x}\r\n", piece.len()));
                                out.push_str(std::str::from_utf8(piece).unwrap_or_default());
                                out.push_str("\r\n");
                            }
                            out.push_str("0\r\n\r\n");
                        } else {
                            out.push_str(&r.body);
                        }
                        if conn.write_all(out.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ScriptedOrigin { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}
