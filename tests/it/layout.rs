//! The source tree's shape (issue 18), read from the files themselves: no
//! module cycle, the layering rules below, no long file without a stated
//! reason, and the maps of the tree (`lib.rs`, the README) naming every
//! module. A newcomer trusts these maps; this keeps them true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Imports that must never appear: `(module, what it must not import, why)`.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "config",
        "flags",
        "the snapshot knows nothing of how flags are layered",
    ),
    (
        "config",
        "reload",
        "the snapshot knows nothing of how it is swapped",
    ),
    (
        "config",
        "monitor",
        "schema types live in config; monitor reads them",
    ),
    (
        "monitor",
        "reload",
        "monitor reads the snapshot it is handed",
    ),
    (
        "explain",
        "proxy",
        "check/explain use the rules, never the request path",
    ),
    ("store", "proxy", "storage is below the request path"),
    ("store", "admin", "storage is below the admin API"),
    ("rules", "store", "rules are pure policy"),
    (
        "invalidation",
        "store",
        "invalidation rules are pure policy",
    ),
];

/// Modules that import nothing from the crate.
const LEAVES: &[&str] = &["time", "outcome"];

/// Files longer than [`LONG`] lines (tests excluded), and why.
const LONG: usize = 500;
const LONG_FILES: &[(&str, &str)] = &[
    (
        "proxy.rs",
        "the request path in one file, pingora's callbacks in the order they run; \
         its policy lives in bypass, storable, cachekey, forwarding, writes",
    ),
    (
        "demo.rs",
        "the demo app: every route and fault knob in one place for newcomers (not product code)",
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code without its unit tests (by convention, a trailing
/// `#[cfg(test)] mod tests`).
fn code_of(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// The code without comment lines: a doc link is not an import.
fn without_comments(code: &str) -> String {
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`store/redis/log.rs` → `store`).
fn top_module(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// A file's module path: `store/redis/log.rs` → `[store, redis, log]`,
/// `store/mod.rs` → `[store]`.
fn module_path(path: &Path) -> Vec<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The top-level modules `super::` paths in `code` reach from `module`
/// (`super::super::entry` from `store/redis/log.rs` is `store`; `super::x`
/// from `store/mod.rs` is the top-level `x`).
fn reached_through_super(module: &[String], code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with("super::") {
            continue; // counted from the chain's start
        }
        let mut rest = &code[i..];
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            up += 1;
            rest = r;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = &module[..module.len().saturating_sub(up)];
        match base.first() {
            Some(top) => out.push(top.clone()),
            None if !name.is_empty() => out.push(name),
            None => {}
        }
    }
    out
}

/// Top-level module → the top-level modules its code names (`crate::x`,
/// or `super::` paths that leave it).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let from = top_module(&file);
        let text = std::fs::read_to_string(&file).unwrap();
        let code = without_comments(code_of(&text));
        let deps = graph.entry(from.clone()).or_default();
        for top in reached_through_super(&module_path(&file), &code) {
            if top != from {
                deps.insert(top);
            }
        }
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != from {
                deps.insert(name);
            }
        }
        // `use crate::{a, b::c}` lists.
        for (i, _) in code.match_indices("crate::{") {
            let rest = &code[i + "crate::{".len()..];
            let list = &rest[..rest.find("};").unwrap_or(rest.len())];
            for item in list.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != from {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn no_module_cycle() {
    let graph = imports();
    // Depth-first search for a back edge, reporting the cycle it closes.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" → "));
        }
    }
}

/// Every module `m` depends on, directly or through others.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, m: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![m.to_string()];
    while let Some(x) = todo.pop() {
        for d in graph.get(&x).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn layering_rules_hold() {
    let graph = imports();
    let mut broken: Vec<String> = FORBIDDEN
        .iter()
        .filter(|(from, to, _)| reachable(&graph, from).contains(*to))
        .map(|(from, to, why)| format!("{from} depends on {to} ({why})"))
        .collect();
    for leaf in LEAVES {
        if let Some(deps) = graph.get(*leaf).filter(|d| !d.is_empty()) {
            broken.push(format!("{leaf} is a leaf but imports {deps:?}"));
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_import_scan_sees_relative_paths() {
    // The scan itself must see what it checks: `super::` chains that leave
    // a top-level module, and the real import it is known to contain.
    let m = |p: &str| p.split('/').map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        reached_through_super(&m("store/redis/log"), "super::super::entry::VERSION"),
        ["store"]
    );
    assert_eq!(
        reached_through_super(&m("store"), "use super::proxy::Ctx;"),
        ["proxy"]
    );
    assert_eq!(
        reached_through_super(&m("proxy"), "use super::*;"),
        Vec::<String>::new()
    );
    let graph = imports();
    assert!(
        graph["proxy"].contains("store") && graph["store"].contains("metrics"),
        "{graph:?}"
    );
}

#[test]
fn long_files_say_why() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap().display().to_string();
        let lines = code_of(&std::fs::read_to_string(&file).unwrap())
            .lines()
            .count();
        let excused = LONG_FILES.iter().any(|(f, _)| *f == rel);
        if lines > LONG && !excused {
            long.push(format!("src/{rel}: {lines} lines"));
        }
        if lines <= LONG && excused {
            long.push(format!(
                "src/{rel}: {lines} lines, no longer long: drop its excuse"
            ));
        }
    }
    for (f, _) in LONG_FILES {
        if !src().join(f).exists() {
            long.push(format!("src/{f}: excused, but there is no such file"));
        }
    }
    assert!(
        long.is_empty(),
        "over {LONG} lines (tests excluded), split or say why in LONG_FILES: {long:#?}"
    );
}

#[test]
fn the_maps_name_every_module() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(modules.len() > 10, "{modules:?}");
    let mut missing = Vec::new();
    for m in &modules {
        if !lib.contains(&format!("[`{m}`]")) {
            missing.push(format!("lib.rs's map lacks {m}"));
        }
        let (file, dir) = (format!("src/{m}.rs"), format!("src/{m}/"));
        if !readme.contains(&file) && !readme.contains(&dir) {
            missing.push(format!("README's layout table lacks {file}"));
        }
        if !src().join(format!("{m}.rs")).exists() && !src().join(m).is_dir() {
            missing.push(format!("lib.rs declares {m}, which has no file"));
        }
    }
    // Every `src/...` path the README and the docs name exists.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![("README.md".to_string(), readme.clone())];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            docs.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    for (doc, text) in &docs {
        for (i, _) in text.match_indices("`src/") {
            let path: String = text[i + 1..].chars().take_while(|c| *c != '`').collect();
            // `src/…` and `src/*.rs` stand for files in general.
            if !path.contains(['…', '*']) && !root.join(&path).exists() {
                missing.push(format!("{doc} names {path}, which does not exist"));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn only_invalidation_tags_spells_tag_prefixes() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src()).unwrap().display().to_string();
        if rel == "invalidation/tags.rs" {
            continue;
        }
        let code = without_comments(code_of(&std::fs::read_to_string(&file).unwrap()));
        // A string literal that starts like a tag (`"k:..."`, `format!("g:{..}")`).
        for prefix in ["\"a:", "\"u:", "\"r:", "\"k:", "\"g:"] {
            if code.contains(prefix) {
                found.push(format!("src/{rel} spells the tag prefix {prefix}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}
