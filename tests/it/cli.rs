//! The command line: `check`, the shipped example config, and `run`'s
//! start-up errors.

use std::process::Command;
use std::time::Duration;

use crate::util::{free_port, Proc, BIN, TEST_CONFIG};

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), msg)
}

/// Run the freshgate binary with `args` and collect what it printed.
fn freshgate(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn shipped_config_is_valid() {
    let out = freshgate(&["check", "-c", "config/freshgate.yaml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_reports_file_line_column_and_reason() {
    let (code, msg) = check(
        "listen: 127.0.0.1:8080\nroutes:\n  - name: scene\n    match: /a/:id\n    ttl: [60s\n",
    );
    assert_eq!(code, 1);
    assert!(
        msg.starts_with("FILE:5:") || msg.starts_with("FILE:6:"),
        "{msg}"
    );

    let (code, msg) = check("routes:\n  - name: scene\n    match: /a/:id\n    tll: 60s\n");
    assert_eq!(code, 1);
    assert!(msg.starts_with("FILE:4:"), "{msg}");
    assert!(msg.contains("unknown field `tll`"), "{msg}");

    let (code, msg) = check("routes:\n  - name: scene\n    match: /a/**/b\n");
    assert_eq!(code, 1);
    assert!(msg.starts_with("FILE:3:12:"), "{msg}");
    assert!(msg.contains("must be the last segment"), "{msg}");

    let (code, msg) = check("routes:\n  - name: a\n    match: /a\n    ttl: soon\n");
    assert_eq!(code, 1);
    assert!(msg.starts_with("FILE:4:"), "{msg}");
    assert!(msg.contains("invalid duration"), "{msg}");
}

#[test]
fn out_of_range_values_are_located_errors_not_panics() {
    // Once a panic at start-up (Duration::from_secs_f64 overflow).
    let (code, msg) =
        check("routes:\n  - name: a\n    match: /a\n    ttl: 99999999999999999999s\n");
    assert_eq!(code, 1, "{msg}");
    assert!(msg.starts_with("FILE:4:"), "{msg}");
    assert!(msg.contains("too large"), "{msg}");
    assert!(!msg.contains("panicked"), "{msg}");
    let (code, msg) = check("timeouts:\n  upstream_read: 0s\n");
    assert_eq!(code, 1, "{msg}");
    assert!(
        msg.contains("timeouts.upstream_read must be more than 0"),
        "{msg}"
    );
    let (code, msg) = check("routes:\n  - name: a\n    match: /a\n    ttl: 1m\n    statuses: [200, 206]\n    override: [no-etag]\n");
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("status 206 cannot be stored"), "{msg}");
    assert!(
        msg.contains("\"no-etag\" is not one of no-store, no-cache, max-age"),
        "{msg}"
    );
    let (code, msg) = check("routes:\n  - name: a\n    match: /a\n    override: [no-store]\n");
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("override needs a ttl"), "{msg}");
    let (code, msg) = check("trusted_proxies: [10.0.0.0/33]\n");
    assert_eq!(code, 1, "{msg}");
    assert!(msg.starts_with("FILE:1:"), "{msg}");
}

#[test]
fn check_warns_about_rules_that_do_nothing_but_passes() {
    let (code, msg) = check(
        "routes:\n  - name: story\n    match: /studio/api/stories/:id\n    ttl: 60s\n\
         invalidate:\n  - on: PATCH /studio/api/scenes/:id\n    purge: [/studio/api/scenes/:id]\n",
    );
    assert_eq!(code, 0, "warnings do not fail the check: {msg}");
    assert!(
        msg.contains("warning: purge target /studio/api/scenes/:id matches no route rule"),
        "{msg}"
    );
    assert!(
        msg.contains("warning: route \"story\" (/studio/api/stories/:id) is cached for 60s but no invalidate rule purges it"),
        "{msg}"
    );
}

#[test]
fn explain_prints_rules_tags_and_why() {
    let out = freshgate(&[
        "explain",
        "-c",
        "config/freshgate.yaml",
        "PATCH /studio/api/scenes/42",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("PATCH /studio/api/scenes/42\n"), "{text}");
    assert!(text.contains("route rule: \"scene\""), "{text}");
    assert!(text.contains("u:/studio/api/scenes/42"), "{text}");
    assert!(text.contains("binds id=42"), "{text}");
    assert!(text.contains("|id=42"), "{text}");
    assert!(text.contains("tags invalidated:"), "{text}");

    let out = freshgate(&["explain", "-c", "config/freshgate.yaml", "PATCH nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a path"));
}

/// Found by attack: a replica started from a truncated config file (empty,
/// or only its leading comments) ran on the built-in defaults, the
/// embedded store with no rules, beside a Redis fleet, so its writes
/// invalidated nothing the other replicas served. It must refuse to start.
#[test]
fn run_refuses_a_config_file_without_settings() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("empty.yaml", ""),
        ("comments.yaml", "# freshgate\n# store:\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let admin = format!("127.0.0.1:{}", crate::util::free_port());
        let mut child = Command::new(BIN)
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                &admin,
                "-c",
            ])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "{name} started: {err}"
        );
        assert!(err.contains("the file has no settings"), "{name}: {err}");
    }
}

/// Starts `freshgate run` with `args`, its stderr in `log` (always: these
/// tests read it).
fn start_logged(args: &[String], log: &std::path::Path) -> Proc {
    let child = Command::new(BIN)
        .arg("run")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        name: "freshgate".into(),
    }
}

/// Runs `freshgate run` with `args` and what it printed to stderr, or
/// panics if it is still running after 20 s (a taken address is tried for
/// 10 s). pingora alone retried a taken address for 30 s and then panicked
/// in its service thread, leaving a process that ran on without serving.
fn run_expecting_exit(args: Vec<String>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut p = start_logged(&args, &log);
    let status = p.wait_exit(Duration::from_secs(20));
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("freshgate {args:?} still running: {err}"));
    (status.code(), err)
}

/// `run`'s arguments for these two listeners, with an app nobody serves.
fn listen_args(listen: &str, admin: &str) -> Vec<String> {
    let upstream = format!("http://127.0.0.1:{}", free_port());
    [
        "--listen",
        listen,
        "--admin-listen",
        admin,
        "--upstream",
        &upstream,
    ]
    .map(String::from)
    .to_vec()
}

/// `freshgate ARGS` started with one of its addresses taken, once it is
/// retrying it (it has read its config by then); its stderr is `stderr` in
/// the returned directory.
fn started_waiting(args: &[String]) -> (Proc, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let child = Command::new(BIN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let fg = Proc {
        child,
        name: "freshgate".into(),
    };
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        if log.contains("address in use; trying again") {
            return (fg, dir);
        }
        assert!(std::time::Instant::now() < end, "no retry: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `run`'s arguments (see [`listen_args`]), as `started_waiting` takes them.
fn run_args(listen: &str, admin: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["run".to_string()];
    args.extend(listen_args(listen, admin));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn a_listen_address_in_use_stops_freshgate_at_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let free = || format!("127.0.0.1:{}", free_port());
    // Each case waits out the retries: run them side by side.
    let proxy = std::thread::spawn({
        let args = listen_args(&taken, &free());
        move || run_expecting_exit(args)
    });
    let admin = std::thread::spawn({
        let args = listen_args(&free(), &taken);
        move || run_expecting_exit(args)
    });
    for (role, case) in [("proxy", proxy), ("admin listener", admin)] {
        let (code, err) = case.join().unwrap();
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!("cannot listen on {taken} (the {role})")),
            "{err}"
        );
    }

    // One address for both listeners is a config error, found before either
    // is bound; so is the demo app's on the proxy's.
    let both = free();
    let (code, err) = run_expecting_exit(listen_args(&both, &both));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is where the proxy listens"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["demo", "--origin-listen", &both, "--listen", &both])
        .args([
            "--admin-listen",
            &free(),
            "--upstream",
            &format!("http://{}", free()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on {both} (the proxy): it is the demo app's address"
        )),
        "{err}"
    );
}

#[test]
fn a_listen_address_freed_while_freshgate_waits_is_taken() {
    // A freshgate started while the one before it still drains.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let args = run_args(&addr, &admin, &[]);
    let (_fg, dir) = started_waiting(&args);
    drop(held);
    // The proxy's port is served (502: there is no app).
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while status_of(&addr, "/") != Some(502) {
        assert!(std::time::Instant::now() < end, "the proxy never listened");
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(err.contains("address in use; trying again"), "{err}");
}

/// freshgate waits for its proxy's address (the freshgate before it still
/// draining) while its config file is edited, with a `SIGHUP` after the edit
/// (as a ConfigMap reloader sends) or without, watching the file or not.
/// Returns the config version it runs once it serves: 2 once it has read
/// the edit (given 3 s), else 1.
fn edit_while_freshgate_waits(hangup: bool, watch: bool) -> u64 {
    // Outside the ephemeral range (`free_port`): no outgoing connection
    // takes it between its release and freshgate's next try.
    let addr = format!("127.0.0.1:{}", free_port());
    let held = std::net::TcpListener::bind(&addr).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("freshgate.yaml");
    std::fs::write(&config, TEST_CONFIG).unwrap();
    let path = config.display().to_string();
    let watch = if watch { "true" } else { "false" };
    let args = run_args(&addr, &admin, &["-c", &path, "--watch", watch]);
    let (fg, logs) = started_waiting(&args);
    let log = || std::fs::read_to_string(logs.path().join("stderr")).unwrap_or_default();
    let route = "routes:\n  - name: stories\n    match: /studio/api/stories/:id\n";
    std::fs::write(&config, TEST_CONFIG.replacen("routes:\n", route, 1)).unwrap();
    if hangup {
        fg.signal("HUP");
    }
    drop(held);
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while status_of(&addr, "/") != Some(502) {
        assert!(std::time::Instant::now() < end, "never served: {}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let end = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let version = config_version(&admin);
        if version == Some(2) || std::time::Instant::now() >= end {
            return version.unwrap_or_else(|| panic!("no config version: {}", log()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_sighup_while_freshgate_waits_for_its_address_reloads_once_it_has_started() {
    // SIGHUP's default action ended the process: the reload handler was
    // installed only once pingora ran. Not watching the file: the reload is
    // the signal's.
    assert_eq!(edit_while_freshgate_waits(true, false), 2);
}

#[test]
fn an_edit_while_freshgate_starts_is_read_once_it_has_started() {
    // The file was read before the wait and the watcher started after it:
    // the edit was seen by neither.
    assert_eq!(edit_while_freshgate_waits(false, true), 2);
}

#[test]
fn not_watching_the_file_an_edit_while_freshgate_starts_waits_for_a_reload() {
    // `--watch false`: edits take effect on SIGHUP or `POST /api/reload`.
    assert_eq!(edit_while_freshgate_waits(false, false), 1);
}

#[test]
fn a_sighup_stops_freshgate_when_it_has_no_config_to_reload() {
    // Its default action: closing the terminal of a `freshgate run` without
    // a file, or of the demo app alone (its -c is no proxy's), still stops it.
    use std::os::unix::process::ExitStatusExt;
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let free = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("freshgate.yaml");
    std::fs::write(&config, TEST_CONFIG).unwrap();
    let config = config.display().to_string();
    let run = run_args(&taken, &free, &[]);
    let demo_alone = [
        "demo",
        "--origin-only",
        "--origin-listen",
        &taken,
        "-c",
        &config,
    ]
    .map(String::from)
    .to_vec();
    for args in [run, demo_alone] {
        let (mut fg, logs) = started_waiting(&args);
        fg.signal("HUP");
        let status = fg.wait_exit(Duration::from_secs(10));
        let log = std::fs::read_to_string(logs.path().join("stderr")).unwrap_or_default();
        let status = status.unwrap_or_else(|| panic!("{args:?} still running: {log}"));
        assert_eq!(status.signal(), Some(1), "{args:?}: {log}");
    }
}

/// The running config's version from `GET /api/config` on `admin`.
fn config_version(admin: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /api/config HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["version"].as_u64()
}

/// The status code of a plain `GET path` to `addr`, if it answered.
fn status_of(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[test]
fn nothing_is_held_while_a_taken_address_is_waited_for() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let proxy = format!("127.0.0.1:{}", free_port());
    let args = run_args(&proxy, &admin, &[]);
    let (_fg, dir) = started_waiting(&args);
    // A client would wait on a socket nobody answers.
    let connect = std::net::TcpStream::connect(&proxy);
    assert!(
        connect.is_err(),
        "the proxy's address was held while waiting"
    );
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(err.contains("address in use; trying again"), "{err}");
}

#[test]
fn two_of_our_listeners_on_one_dual_stack_socket_are_an_error_at_once() {
    // `[::]` takes IPv4 too where the host is dual-stack (Linux's default).
    // Outside the ephemeral range (`free_port`): no test's outgoing
    // connection takes it meanwhile.
    let port = free_port();
    if std::net::TcpListener::bind(("::", port)).is_err() {
        eprintln!("no IPv6 on this host: nothing to check");
        return;
    }
    let dual = format!("[::]:{port}");
    let v4 = format!("127.0.0.1:{port}");
    let dual_stack = {
        let _l = std::net::TcpListener::bind(&dual).unwrap();
        std::net::TcpListener::bind(&v4).is_err()
    };
    if !dual_stack {
        eprintln!("IPv6-only [::] here: the two do not meet");
        return;
    }
    let (code, err) = run_expecting_exit(listen_args(&dual, &v4));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on {v4} (the admin listener): it overlaps another of freshgate's listen addresses"
        )),
        "{err}"
    );
    // At once: not after the retries.
    assert!(!err.contains("trying again"), "{err}");
}

#[test]
fn an_upstream_at_freshgates_own_address_is_refused() {
    // Found by attack: every request came back to freshgate, hanging its
    // client and filling the log, while `/readyz` said 200.
    let (code, msg) = check("listen: 0.0.0.0:18999\nupstream: http://localhost:18999\n");
    assert_eq!(code, 1, "{msg}");
    assert!(msg.starts_with("FILE:2:"), "{msg}");
    assert!(msg.contains("every request would come back to it"), "{msg}");
}

#[test]
fn the_demo_app_alone_may_use_the_proxys_address() {
    // `--origin-only` runs no proxy: the image's FRESHGATE_LISTEN (the
    // proxy's address) must not stop the demo app from taking it.
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let _demo = Proc::spawn(
        "demo app",
        Command::new(BIN)
            .current_dir(dir.path())
            .args(["demo", "--origin-only", "--origin-listen", &addr])
            .env("FRESHGATE_LISTEN", &addr),
    );
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while status_of(&addr, "/studio/api/scenes/111") != Some(200) {
        assert!(std::time::Instant::now() < end, "the demo app never served");
        std::thread::sleep(Duration::from_millis(200));
    }
}
