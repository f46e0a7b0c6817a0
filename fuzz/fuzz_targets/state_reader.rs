//! The state reader (every state write passes through it) must return a summary or an error,
//! never panic, on any bytes; what it accepts must survive the firewall's own comparisons.
//! Input with a 0xFF byte (never in a state: not UTF-8) is a previous body and a new one: the
//! new body read reusing the previous one's elements must read exactly as it reads alone.
#![no_main]

use std::collections::HashSet;

use airlock_core::state::{ParsedState, StateDiff, StateSummary};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(at) = data.iter().position(|&b| b == 0xff) {
        let (old, new) = (&data[..at], &data[at + 1..]);
        if let Ok(prev) = ParsedState::parse(old.to_vec(), None) {
            let with = ParsedState::parse(new.to_vec(), Some(&prev));
            match (StateSummary::parse(new), with) {
                (Ok(a), Ok(w)) => assert_eq!(&a, w.summary().as_ref()),
                (Err(a), Err(w)) => assert_eq!(a, w),
                (a, w) => panic!("alone {:?}, reusing {:?}", a.is_ok(), w.is_ok()),
            }
        }
    }
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
