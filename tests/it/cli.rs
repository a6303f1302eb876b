//! The command line: `check`, and the shipped example config.

use std::process::Command;

use crate::util::BIN;

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
