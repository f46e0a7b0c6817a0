//! The plan JSON readers on documents crafted to make the server hold far more than it
//! received: a plan JSON is the planner's (an agent's, say), and a JSON value built as a tree
//! takes 16-30 bytes of memory per byte of text (`[0,0,0,...]`). Each reader must hold about
//! what it was given, whatever the shape. The heap this test process asks for is counted (one
//! test in this binary: the counter is process-wide).

use airlock_policy::plan;
use peakmem_alloc::{PeakMemAlloc, PeakMemAllocTrait, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &PeakMemAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const MB: usize = 1024 * 1024;

fn zeros(n: usize) -> String {
    format!("[{}0]", "0,".repeat(n))
}

fn change(extra: &str, actions: &str) -> String {
    format!(
        r#"{{"resource_changes":[{{"address":"t.n","mode":"managed","type":"t","name":"n","provider_name":"p",{extra}"change":{{"actions":{actions}}}}}]}}"#
    )
}

#[test]
fn a_crafted_plan_json_never_makes_a_reader_hold_much_more_than_it() {
    let n = 8 * MB;
    let strings = format!("[{}\"create\"]", "\"create\",".repeat(n / 9));
    let cases: Vec<(&str, String)> = vec![
        (
            "a resource change's huge index",
            change(&format!(r#""index":{},"#, zeros(n)), r#"["create"]"#),
        ),
        (
            "a resource change's huge replace path",
            change(
                &format!(r#""replace_paths":[{}],"#, zeros(n)),
                r#"["update"]"#,
            )
            .replace(
                r#""change":{"actions":["update"]}"#,
                &format!(
                    r#""change":{{"actions":["update"],"replace_paths":[{}]}}"#,
                    zeros(n)
                ),
            ),
        ),
        (
            "a resource change's millions of actions",
            change("", &strings),
        ),
        (
            "an output change's millions of actions",
            format!(r#"{{"output_changes":{{"o":{{"actions":{strings}}}}}}}"#),
        ),
        (
            "millions of output changes",
            format!(
                r#"{{"output_changes":{{{}}}}}"#,
                (0..n / 24)
                    .map(|i| format!(r#""{i:x}":{{"actions":[]}}"#))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "a root variable's huge value",
            format!(r#"{{"variables":{{"v":{{"value":{}}}}}}}"#, zeros(n)),
        ),
        (
            "millions of root variables",
            format!(
                r#"{{"variables":{{{}}}}}"#,
                (0..n / 20)
                    .map(|i| format!(r#""{i:x}":{{"value":1}}"#))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
    ];
    let mut over = Vec::new();
    for (what, doc) in cases {
        let bound = 2 * doc.len() + 16 * MB;
        GLOBAL.reset_peak_memory();
        let changes = plan::read_plan(doc.as_bytes(), |_| {}).map(|i| i.resource_changes);
        let outputs = plan::output_changes(doc.as_bytes()).map(|o| o.len());
        let variables = plan::root_variables(doc.as_bytes()).map(|v| v.len());
        let peak = GLOBAL.get_peak_memory();
        println!(
            "{what}: {} KB, peak {} MB (bound {} MB): changes {:?}, outputs {:?}, variables {:?}",
            doc.len() / 1024,
            peak / MB,
            bound / MB,
            changes.map_err(|e| e.to_string()),
            outputs,
            variables
        );
        if peak > bound {
            over.push(format!("{what}: {peak} B held, bound {bound} B"));
        }
    }
    assert!(over.is_empty(), "{over:#?}");
}
