//! The binary plan reader (zip + tfplan protobuf + prior state) on arbitrary bytes: it returns
//! a plan or an error, never panics, never allocates beyond its member limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = airlock_policy::planfile::PlanFile::parse(data) {
        let _ = plan.matches_json(&plan.changes, &plan.outputs);
    }
});
