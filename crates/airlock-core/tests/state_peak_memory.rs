//! The state reader's memory while it reads: not only what the summary keeps (see
//! `state_memory.rs`) but everything it holds on the way, measured by counting the heap this
//! test process asks for. A crafted body must be refused before the reader has held more than
//! its budget (64 MiB plus 8 bytes per body byte), whatever shape makes each body byte cost
//! the most: near-empty instances (each read into a record of ~160 bytes before it is
//! checked), a huge index key, many short outputs, many small resources; while a compact
//! state of ordinary instances still reads.
//!
//! One test in this binary: the counter is process-wide.

use airlock_core::state::StateSummary;
use peakmem_alloc::{PeakMemAlloc, PeakMemAllocTrait, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const BUDGET_BASE: usize = 64 * 1024 * 1024;
const BUDGET_PER_BODY_BYTE: usize = 8;

/// Heap bytes held at most while `body` is read, beyond what was held before.
fn peak_while_reading(body: &[u8]) -> (usize, Result<StateSummary, String>) {
    GLOBAL.reset_peak_memory();
    let read = StateSummary::parse(body).map_err(|e| e.to_string());
    (GLOBAL.get_peak_memory(), read)
}

fn state(outputs: &str, resources: &str) -> Vec<u8> {
    format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":1,"lineage":"l","outputs":{{{outputs}}},"resources":[{resources}]}}"#
    )
    .into_bytes()
}

fn resource(name: &str, instances: &str) -> String {
    format!(
        r#"{{"mode":"managed","type":"terraform_data","name":"{name}","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{instances}]}}"#
    )
}

fn repeated(n: usize, item: impl Fn(usize) -> String) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(",")
}

#[test]
fn reading_a_crafted_state_never_holds_more_than_the_readers_budget() {
    let mb = 1_000_000;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "one resource of empty instances",
            state("", &resource("r", &repeated(8 * mb / 3, |_| "{}".into()))),
        ),
        (
            "one resource of instances with only a key",
            state(
                "",
                &resource(
                    "r",
                    &repeated(8 * mb / 18, |i| format!(r#"{{"index_key":{i}}}"#)),
                ),
            ),
        ),
        (
            "an index key that is a huge array",
            state(
                "",
                &resource(
                    "r",
                    &format!(
                        r#"{{"index_key":[{}]}}"#,
                        repeated(8 * mb / 2, |_| "1".into())
                    ),
                ),
            ),
        ),
        (
            "many short outputs",
            state(&repeated(8 * mb / 13, |i| format!(r#""{i:x}":{{}}"#)), ""),
        ),
        (
            "many resources without instances",
            state(
                "",
                &repeated(8 * mb / 110, |i| resource(&format!("r{i:x}"), "")),
            ),
        ),
    ];
    // What Terraform writes, compacted (no indentation): read, not refused.
    let ordinary = state(
        r#""o":{"value":"x","type":"string"}"#,
        &repeated(20, |r| {
            resource(
                &format!("r{r}"),
                &repeated(10_000, |i| {
                    format!(
                        r#"{{"index_key":{i},"schema_version":0,"attributes":{{"id":"{r}-{i}","input":null}},"sensitive_attributes":[]}}"#
                    )
                }),
            )
        }),
    );
    let (peak, read) = peak_while_reading(&ordinary);
    println!(
        "compact ordinary instances: body {} KB, peak {} MB",
        ordinary.len() / 1000,
        peak / 1_000_000
    );
    assert_eq!(
        read.expect("an ordinary state reads").instances.len(),
        200_000
    );

    let mut over = Vec::new();
    for (what, body) in cases {
        let budget = BUDGET_BASE + BUDGET_PER_BODY_BYTE * body.len();
        let (peak, read) = peak_while_reading(&body);
        println!(
            "{what}: body {} KB, peak {} MB (budget {} MB), {}",
            body.len() / 1000,
            peak / 1_000_000,
            budget / 1_000_000,
            match &read {
                Ok(s) => format!("read: {} instances", s.instances.len()),
                Err(e) => format!("refused: {e}"),
            }
        );
        if peak > budget {
            over.push(format!("{what}: {peak} B held, budget {budget} B"));
        }
    }
    assert!(
        over.is_empty(),
        "the reader held more than its budget: {over:#?}"
    );
}
