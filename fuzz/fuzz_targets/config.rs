//! The config loader: any text is a config or a located error, never a panic.
#![no_main]

use freshgate::config::{Config, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = Config::from_str(text, None, &Overrides::default()) {
        // Every problem renders (file:line:column: reason).
        let _ = e.to_string();
    }
});
