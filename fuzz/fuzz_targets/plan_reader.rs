//! The plan reader and every rule must return data or an error, never panic, on any bytes.
#![no_main]

use airlock_policy::analysis::Analyzer;
use airlock_policy::config::Config;
use airlock_policy::plan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = Config::default();
    let mut analyzer = Analyzer::new(&config, None);
    if let Ok(info) = plan::read_plan(data, |rc| {
        analyzer.change(&rc);
    }) {
        let _ = analyzer.finish(info);
    }
    let _ = plan::plan_text(data);
});
