//! The state reader (every state write passes through it) must return a summary or an error,
//! never panic, on any bytes; what it accepts must survive the firewall's own comparisons.
#![no_main]

use airlock_core::state::{StateDiff, StateSummary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(summary) = StateSummary::parse(data) {
        assert_eq!(summary.version, 4);
        let _ = summary.managed_addresses();
        let _ = summary.removed_in(&summary);
        let _ = StateDiff::between(&summary, &summary);
    }
});
