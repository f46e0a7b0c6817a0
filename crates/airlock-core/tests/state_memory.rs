//! `ParsedState::approx_bytes` is what the server's cache of recent states (384 MiB in all)
//! bounds memory by, so a state a client crafts must not hold more than it says. What it holds
//! is bounded below by the body and the heap blocks of the summary's instances (their vector
//! and every string and module path they own), counted from the summary itself; states shaped
//! to hold many strings per body byte must stay under `approx_bytes`.

use std::sync::Arc;

use airlock_core::address::{InstanceKey, ModuleStep};
use airlock_core::state::{Instance, ParsedState};

fn key_bytes(k: &Option<InstanceKey>) -> usize {
    match k {
        Some(InstanceKey::Str(s)) => s.capacity(),
        _ => 0,
    }
}

/// Heap bytes the instances certainly hold (a lower bound: allocator overhead, elements and
/// outputs are not counted).
fn held_by_instances(instances: &Vec<Instance>) -> usize {
    instances.capacity() * std::mem::size_of::<Instance>()
        + instances
            .iter()
            .map(|i| {
                i.address.capacity()
                    + i.resource_type.capacity()
                    + i.provider.capacity()
                    + i.deposed.as_ref().map_or(0, String::capacity)
                    + i.addr.resource_type.capacity()
                    + i.addr.name.capacity()
                    + key_bytes(&i.addr.key)
                    + i.addr.module.capacity() * std::mem::size_of::<ModuleStep>()
                    + i.addr
                        .module
                        .iter()
                        .map(|m| m.name.capacity() + key_bytes(&m.key))
                        .sum::<usize>()
            })
            .sum::<usize>()
}

fn state(resources: &[String]) -> Vec<u8> {
    format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":1,"lineage":"l","outputs":{{}},"resources":[{}]}}"#,
        resources.join(",")
    )
    .into_bytes()
}

fn resource(module: &str, name: &str, instances: &[String]) -> String {
    let module = if module.is_empty() {
        String::new()
    } else {
        format!(r#""module":"{module}","#)
    };
    format!(
        r#"{{{module}"mode":"managed","type":"terraform_data","name":"{name}","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{}]}}"#,
        instances.join(",")
    )
}

/// Live heap bytes the parsed state holds (body included), and what it says it holds.
fn measure(body: Vec<u8>) -> (usize, usize) {
    let parsed = ParsedState::parse(Arc::new(body), None).expect("a valid state");
    let held = parsed.body().len() + held_by_instances(&parsed.summary().instances);
    (held, parsed.approx_bytes())
}

#[test]
fn approx_bytes_is_not_below_what_a_crafted_state_holds() {
    // An ordinary state (short keys), long for_each keys (each held in the address and in
    // the key), and a long module path on many small instances (held in the address and in
    // every instance's module path).
    let ordinary = state(
        &(0..200)
            .map(|r| {
                resource(
                    "",
                    &format!("r{r}"),
                    &(0..10)
                        .map(|i| format!(r#"{{"index_key":{i},"schema_version":0,"attributes":{{"id":"{r}-{i}","input":null}}}}"#))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>(),
    );
    let key = "k".repeat(4000);
    let long_keys = state(&[resource(
        "",
        "r",
        &(0..2000)
            .map(|i| format!(r#"{{"index_key":"{key}{i}","attributes":{{}}}}"#))
            .collect::<Vec<_>>(),
    )]);
    let module = format!(r#"module.m[\"{}\"]"#, "x".repeat(3000));
    let long_modules = state(&[resource(
        &module,
        "r",
        &(0..5000)
            .map(|i| format!(r#"{{"index_key":{i},"attributes":{{}}}}"#))
            .collect::<Vec<_>>(),
    )]);
    let mut short = Vec::new();
    for (what, body) in [
        ("ordinary", ordinary),
        ("long for_each keys", long_keys),
        ("long module path", long_modules),
    ] {
        let len = body.len();
        let (held, said) = measure(body);
        println!("{what}: body {len} B, holds {held} B, approx_bytes {said} B");
        if said < held {
            short.push(format!(
                "{what}: holds {held} B, approx_bytes says {said} B"
            ));
        }
    }
    assert!(short.is_empty(), "approx_bytes under-counts: {short:#?}");
}

/// A body read reusing a previous one reads exactly as it reads alone (same summary, or both
/// refused), on the shapes an attacker would try against the reuse: a previous element
/// repeated, elements reordered past the in-order look with long shared starts (the prefix
/// index and its candidate bound), a previous element's bytes inside a string of another
/// element, at a non-element position (inside `outputs`) and moved by a shorter or longer
/// preamble (spans), and a body the previous one was refused for.
#[test]
fn a_read_reusing_a_previous_body_reads_as_alone_on_hostile_shapes() {
    let pad = "p".repeat(300);
    let el = |name: &str, id: &str| {
        format!(
            r#"{{"mode":"managed","type":"terraform_data","name":"x{pad}","module":"module.{name}","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{{"attributes":{{"id":"{id}","input":{{"value":"{id}"}}}}}}]}}"#
        )
    };
    let els: Vec<String> = (0..12)
        .map(|k| el(&format!("m{k}"), &format!("id{k}")))
        .collect();
    let doc = |pre: &str, resources: &[String], outputs: &str| {
        format!(
            r#"{{"version":4,{pre}"serial":1,"lineage":"l","outputs":{{{outputs}}},"resources":[{}]}}"#,
            resources.join(",")
        )
        .into_bytes()
    };
    let old = doc("", &els, "");
    let mut reversed = els.clone();
    reversed.reverse();
    let mut swapped = els.clone();
    swapped.swap(0, 11);
    swapped[5] = el("m5", "changed");
    let escaped = serde_json::to_string(&els[3]).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("repeated", doc("", &[els[0].clone(), els[0].clone()], "")),
        ("reversed", doc("", &reversed, "")),
        ("swapped and one changed", doc("", &swapped, "")),
        (
            "shifted by a preamble",
            doc(r#""terraform_version":"1.11.4","#, &els, ""),
        ),
        (
            "inside a string",
            doc(
                "",
                &[format!(
                    r#"{{"mode":"managed","type":"terraform_data","name":"s","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{{"attributes":{{"id":{escaped}}}}}]}}"#
                )],
                "",
            ),
        ),
        (
            "in outputs",
            doc("", &els[..2], &format!(r#""o":{{"value":{}}}"#, els[4])),
        ),
        ("truncated", doc("", &els, "")[..old.len() - 40].to_vec()),
        (
            "one duplicated at the end",
            doc("", &[els.clone(), vec![els[2].clone()]].concat(), ""),
        ),
    ];
    let prev = ParsedState::parse(old, None).expect("the previous body reads");
    for (what, body) in cases {
        let alone = airlock_core::state::StateSummary::parse(&body);
        let reusing = ParsedState::parse(body, Some(&prev));
        match (&alone, &reusing) {
            (Ok(a), Ok(r)) => assert_eq!(a, r.summary().as_ref(), "{what}"),
            (Err(_), Err(_)) => {}
            _ => panic!("{what}: alone {alone:?}, reusing {reusing:?}"),
        }
        if let Ok(r) = reusing {
            println!("{what}: {} element(s) reused", r.reused_elements());
            // Read again reusing this one (a chain of reuses).
            let again = ParsedState::parse(r.body().to_vec(), Some(&r)).unwrap();
            assert_eq!(again.summary(), r.summary(), "{what} (chained)");
        }
    }
}

/// A state whose instances would take far more memory than its body (a long module path over
/// many near-empty instances: every instance holds its own copies) is refused as it is read,
/// before the summary holds more than the reader's budget (64 MiB and 8 bytes per body byte),
/// whether its elements are parsed or reused from a previous body that had room for them.
#[test]
fn a_state_whose_instances_would_take_far_more_memory_than_its_body_is_refused() {
    let module = format!(r#"module.m[\"{}\"]"#, "x".repeat(3000));
    let heavy = resource(
        &module,
        "r",
        &(0..30_000)
            .map(|i| format!(r#"{{"index_key":{i},"attributes":{{}}}}"#))
            .collect::<Vec<_>>(),
    );
    let body = state(std::slice::from_ref(&heavy));
    for refused in [
        airlock_core::state::StateSummary::parse(&body).map(|_| ()),
        ParsedState::parse(Arc::new(body.clone()), None).map(|_| ()),
    ] {
        let e = refused.expect_err("a 1 MB body holding ~300 MB of instances");
        assert!(e.to_string().contains("memory"), "{e}");
    }
    // The same element in a body with room for it (a large output) reads; the body without
    // that room, reusing it, is refused like the body read alone.
    let padded = format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":1,"lineage":"l","outputs":{{"pad":{{"value":"{}","type":"string"}}}},"resources":[{heavy}]}}"#,
        "p".repeat(40_000_000)
    )
    .into_bytes();
    let previous = ParsedState::parse(Arc::new(padded), None).expect("room for it");
    let reusing = ParsedState::parse(Arc::new(body), Some(&previous)).map(|p| p.reused_elements());
    let e = reusing.expect_err("refused while reusing");
    assert!(e.to_string().contains("memory"), "{e}");
}
