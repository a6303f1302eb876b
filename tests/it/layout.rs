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
        "tooling",
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
    ("time", "config", "a leaf"),
];

/// Files longer than [`LONG`] lines (tests excluded), and why.
const LONG: usize = 500;
const LONG_FILES: &[(&str, &str)] = &[
    (
        "proxy.rs",
        "the request path in one file, pingora's callbacks in the order they run; \
         its policy lives in storable, cachekey, forwarding, writes",
    ),
    (
        "demo.rs",
        "the demo app: every route and fault knob in one place for newcomers (not product code)",
    ),
    (
        "store/mod.rs",
        "not yet split: the tier trait and the invalidation-log trait (issue 18)",
    ),
    (
        "config/validate.rs",
        "one pass over the whole file; per-section functions are next (issue 18)",
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

/// Top-level module → the top-level modules its code names as `crate::x`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let from = top_module(&file);
        let text = std::fs::read_to_string(&file).unwrap();
        let code = without_comments(code_of(&text));
        let deps = graph.entry(from.clone()).or_default();
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

#[test]
fn layering_rules_hold() {
    let graph = imports();
    let broken: Vec<String> = FORBIDDEN
        .iter()
        .filter(|(from, to, _)| graph.get(*from).is_some_and(|d| d.contains(*to)))
        .map(|(from, to, why)| format!("{from} imports {to} ({why})"))
        .collect();
    assert!(broken.is_empty(), "{broken:#?}");
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
    // Every `src/...` path the README and the architecture doc name exists.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    for (doc, text) in [
        ("README.md", &readme),
        ("docs/architecture.md", &architecture),
    ] {
        for (i, _) in text.match_indices("`src/") {
            let path: String = text[i + 1..].chars().take_while(|c| *c != '`').collect();
            if !root.join(&path).exists() {
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
