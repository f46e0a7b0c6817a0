//! The airlock.hcl parser must return a config or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = airlock_policy::config::parse(text, "airlock.hcl");
    }
});
