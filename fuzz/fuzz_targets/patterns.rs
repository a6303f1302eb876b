//! The route pattern compiler and matcher: any patterns compile or are
//! refused with a reason; any path looks up without a panic, and a pattern's
//! own sample path finds a rule.
#![no_main]

use std::sync::Arc;

use freshgate::canonical::PathPolicy;
use freshgate::rules::{sample_path, RouteTable, Rule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (Vec<String>, Vec<String>)| {
    let (patterns, paths) = input;
    let rules: Vec<Rule> = patterns
        .iter()
        .take(16)
        .enumerate()
        .map(|(i, p)| Rule::new(&format!("r{i}"), p))
        .collect();
    let policy = PathPolicy::default();
    let Ok(table) = RouteTable::new(rules.clone(), &policy) else {
        return;
    };
    for path in paths.iter().take(16) {
        let _ = table.lookup(&policy.route_path(path));
    }
    for rule in &rules {
        if let Some(sample) = sample_path(&rule.pattern) {
            let found: Option<&Arc<Rule>> = table.lookup(&policy.route_path(&sample));
            assert!(found.is_some(), "{:?}: its sample {sample:?} finds no rule", rule.pattern);
        }
    }
});
