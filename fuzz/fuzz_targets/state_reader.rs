//! The state reader (every state write passes through it) must return a summary or an error,
//! never panic, on any bytes; what it accepts must survive the firewall's own comparisons.
#![no_main]

use std::collections::HashSet;

use airlock_core::state::{StateDiff, StateSummary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(summary) = StateSummary::parse(data) {
        assert_eq!(summary.version, 4);
        let _ = summary.managed_addresses();
        // A state compared with itself loses nothing.
        assert!(summary.removed_in(&summary).is_empty());
        // Nor does a diff with itself show a change.
        let d = StateDiff::between((data, &summary), (data, &summary));
        assert!(d.added.is_empty() && d.removed.is_empty() && d.changed.is_empty());
        assert!(d.outputs_changed.is_empty());
        // Renderings are unambiguous: one (address, deposed) per structured identity.
        let mut rendered = HashSet::new();
        let mut structured = HashSet::new();
        for i in &summary.instances {
            assert_eq!(
                rendered.insert((i.address.clone(), i.deposed.clone())),
                structured.insert((i.addr.clone(), i.deposed.clone()))
            );
        }
    }
});
