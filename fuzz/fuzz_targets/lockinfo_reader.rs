//! The lock-info reader (every LOCK and UNLOCK body) must return lock info or an error, never
//! panic; an accepted ID is always non-empty printable ASCII (it is echoed in messages).
#![no_main]

use airlock_core::lockinfo::LockInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = LockInfo::parse(data) {
        assert!(!info.id.is_empty() && info.id.len() <= 256);
        assert!(info.id.bytes().all(|b| b.is_ascii_graphic()));
        let _ = info.is_plan_only();
    }
});
