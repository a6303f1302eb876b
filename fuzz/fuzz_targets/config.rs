//! The config loader: any text is a config or a located error, never a panic,
//! and a location is a place in the text.
#![no_main]

use freshgate::config::{Config, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::from_str(text, None, &Overrides::default()) {
        // Every problem renders (file:line:column: reason).
        let _ = e.to_string();
        // A line is one of the text's (or just past its end, where a parser
        // reports an unexpected end), a column counts from 1. YAML breaks
        // lines at CR LF, LF and a lone CR.
        let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 2;
        for p in &e.problems {
            assert!(p.line.is_none_or(|l| (1..=lines).contains(&l)), "{p:?} of {lines} lines");
            assert!(p.column.is_none_or(|c| c >= 1), "{p:?}");
        }
    }
});
