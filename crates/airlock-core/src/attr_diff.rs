//! Attribute-level differences, for people reviewing a change: a plan's before/after of one
//! resource, or one instance between two stored state versions. Values are flattened to leaf
//! paths (`tags.Name`, `ingress[0].cidr_blocks[1]`, `tags["a b"]`); sensitive leaves are
//! masked before anything else sees them and unknown-after-apply leaves are marked.
//!
//! Bounded: at most [`MAX_LEAVES`] leaves per value (the rest is reported as truncated), JSON
//! nesting as serde_json bounds it. No I/O, never panics on input.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::state::{StateDiff, StateSummary, ValueSpans};

/// Most leaves read from one value.
pub const MAX_LEAVES: usize = 5_000;

/// Most changed instances whose attributes a version diff details (the rest are named only).
pub const MAX_DETAILED_INSTANCES: usize = 1_000;

/// One leaf as a reviewer may see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "json", rename_all = "snake_case")]
pub enum Leaf {
    /// Absent on this side.
    Absent,
    /// Marked sensitive: never shown.
    Sensitive,
    /// Known only after apply.
    Unknown,
    /// The value, as JSON text (strings quoted).
    Value(String),
}

/// A flattened value: path → leaf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flat {
    /// Leaves by path.
    pub leaves: BTreeMap<String, Leaf>,
    /// Whether [`MAX_LEAVES`] cut the value short.
    pub truncated: bool,
}

/// One attribute that differs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttrChange {
    /// Leaf path.
    pub path: String,
    /// Before.
    pub before: Leaf,
    /// After.
    pub after: Leaf,
}

/// `.key` for identifiers, `["key"]` otherwise (and at the root, `key`).
fn push_key(path: &str, key: &str) -> String {
    let ident = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ident {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    } else {
        let quoted = serde_json::to_string(key).unwrap_or_else(|_| "\"?\"".into());
        format!("{path}[{quoted}]")
    }
}

fn push_index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Whether `path` is `mask` or lies under it (the empty mask covers everything).
fn under(path: &str, mask: &str) -> bool {
    mask.is_empty()
        || path == mask
        || (path.starts_with(mask) && matches!(path.as_bytes().get(mask.len()), Some(b'.' | b'[')))
}

fn walk(v: &Value, path: String, out: &mut Flat) {
    if out.leaves.len() >= MAX_LEAVES {
        out.truncated = true;
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                walk(v, push_key(&path, k), out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                walk(v, push_index(&path, i), out);
            }
        }
        leaf => {
            out.leaves.insert(path, Leaf::Value(leaf.to_string()));
        }
    }
}

/// Flattens `value`, marks `unknown` paths, then masks `sensitive` paths.
pub fn flatten(value: &Value, sensitive: &[String], unknown: &[String]) -> Flat {
    let mut out = Flat::default();
    // A null object (before a create, after a delete) has no attributes.
    if !value.is_null() {
        walk(value, String::new(), &mut out);
    }
    for u in unknown {
        out.leaves.retain(|p, _| !under(p, u));
        out.leaves.insert(u.clone(), Leaf::Unknown);
    }
    for s in sensitive {
        let mut hit = false;
        for (p, leaf) in out.leaves.iter_mut() {
            if under(p, s) {
                *leaf = Leaf::Sensitive;
                hit = true;
            }
        }
        if !hit && !s.is_empty() {
            out.leaves.insert(s.clone(), Leaf::Sensitive);
        }
    }
    out
}

/// The paths where a plan's mirror mask (`after_unknown`, `before_sensitive`, ...) is `true`.
pub fn mask_paths(mirror: &Value) -> Vec<String> {
    fn go(v: &Value, path: String, out: &mut Vec<String>) {
        if out.len() >= MAX_LEAVES {
            return;
        }
        match v {
            Value::Bool(true) => out.push(path),
            Value::Object(m) => {
                for (k, v) in m {
                    go(v, push_key(&path, k), out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    go(v, push_index(&path, i), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    go(mirror, String::new(), &mut out);
    out
}

/// The paths a state instance's `sensitive_attributes` names. Anything this reader does not
/// understand masks the whole object (fail closed).
pub fn state_sensitive_paths(raw: &str) -> Vec<String> {
    let everything = || vec![String::new()];
    let Ok(Value::Array(paths)) = serde_json::from_str::<Value>(raw) else {
        return everything();
    };
    let mut out = Vec::new();
    for p in paths {
        let Value::Array(steps) = p else {
            return everything();
        };
        let mut path = String::new();
        for step in steps {
            let value = step.get("value");
            path = match (step.get("type").and_then(Value::as_str), value) {
                (Some("get_attr"), Some(Value::String(k))) => push_key(&path, k),
                (Some("index"), Some(v)) => match v.get("value").unwrap_or(v) {
                    Value::String(k) => push_key(&path, k),
                    Value::Number(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
                        Some(i) => push_index(&path, i),
                        None => return everything(),
                    },
                    _ => return everything(),
                },
                _ => return everything(),
            };
        }
        out.push(path);
    }
    out
}

/// The leaves that differ between `before` and `after`, in path order.
pub fn compare(before: &Flat, after: &Flat) -> Vec<AttrChange> {
    let mut out = Vec::new();
    let paths: std::collections::BTreeSet<&String> =
        before.leaves.keys().chain(after.leaves.keys()).collect();
    for p in paths {
        let b = before.leaves.get(p).cloned().unwrap_or(Leaf::Absent);
        let a = after.leaves.get(p).cloned().unwrap_or(Leaf::Absent);
        // Two masked leaves are equal here: whether a sensitive value changed is not shown
        // (the instance is still listed as changed).
        if b != a {
            out.push(AttrChange {
                path: p.clone(),
                before: b,
                after: a,
            });
        }
    }
    out
}

/// One instance's attributes in a version diff.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceChange {
    /// The instance (with ` (deposed KEY)` for deposed objects), as [`StateDiff`] names it.
    pub address: String,
    /// The attributes that differ (for an added or removed instance: all of them).
    pub attributes: Vec<AttrChange>,
    /// Whether a bound cut the attributes short.
    pub truncated: bool,
}

/// What changed between two versions, attribute by attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VersionDiff {
    /// Instances only in the newer version.
    pub added: Vec<InstanceChange>,
    /// Instances only in the older version.
    pub removed: Vec<InstanceChange>,
    /// Instances in both whose content differs.
    pub changed: Vec<InstanceChange>,
    /// Root outputs that differ (path = output name).
    pub outputs: Vec<AttrChange>,
    /// Instances past [`MAX_DETAILED_INSTANCES`], named without attributes.
    pub omitted: usize,
}

/// The flattened attributes of one instance of a parsed body.
fn flat_of(body: &str, spans: &ValueSpans) -> Flat {
    let value = spans
        .value
        .clone()
        .and_then(|r| body.get(r))
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .unwrap_or(Value::Null);
    let sensitive = match spans.sensitive.clone().and_then(|r| body.get(r)) {
        Some(raw) => state_sensitive_paths(raw),
        None => Vec::new(),
    };
    flatten(&value, &sensitive, &[])
}

fn key_of(i: &crate::state::Instance) -> String {
    match &i.deposed {
        Some(d) => format!("{} (deposed {d})", i.address),
        None => i.address.clone(),
    }
}

/// Attribute-level diff of two versions: `old`/`new` are the bodies their summaries were parsed
/// from (the summaries locate each value; only the instances that differ are read).
pub fn between(old: (&[u8], &StateSummary), new: (&[u8], &StateSummary)) -> VersionDiff {
    let ob = std::str::from_utf8(old.0).unwrap_or("");
    let nb = std::str::from_utf8(new.0).unwrap_or("");
    let d = StateDiff::between(old, new);
    let index = |s: &StateSummary| -> BTreeMap<String, ValueSpans> {
        s.instances
            .iter()
            .map(|i| (key_of(i), i.spans.clone()))
            .collect()
    };
    let (oi, ni) = (index(old.1), index(new.1));
    let mut out = VersionDiff::default();
    let mut budget = MAX_DETAILED_INSTANCES;
    let mut detail = |addr: &String, before: Option<&ValueSpans>, after: Option<&ValueSpans>| {
        if budget == 0 {
            return None;
        }
        budget -= 1;
        let empty = Flat::default();
        let b = before.map(|s| flat_of(ob, s));
        let a = after.map(|s| flat_of(nb, s));
        let (bf, af) = (b.as_ref().unwrap_or(&empty), a.as_ref().unwrap_or(&empty));
        Some(InstanceChange {
            address: addr.clone(),
            attributes: compare(bf, af),
            truncated: bf.truncated || af.truncated,
        })
    };
    for (list, target) in [
        (&d.added, &mut out.added),
        (&d.removed, &mut out.removed),
        (&d.changed, &mut out.changed),
    ] {
        for addr in list {
            match detail(addr, oi.get(addr), ni.get(addr)) {
                Some(c) => target.push(c),
                None => {
                    target.push(InstanceChange {
                        address: addr.clone(),
                        attributes: Vec::new(),
                        truncated: true,
                    });
                    out.omitted += 1;
                }
            }
        }
    }
    let outputs = |s: &StateSummary, body: &str| -> BTreeMap<String, Leaf> {
        s.outputs
            .iter()
            .map(|o| {
                let leaf = if o.sensitive {
                    Leaf::Sensitive
                } else {
                    let v = o
                        .spans
                        .value
                        .clone()
                        .and_then(|r| body.get(r))
                        .unwrap_or("null");
                    Leaf::Value(
                        serde_json::from_str::<Value>(v)
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    )
                };
                (o.name.clone(), leaf)
            })
            .collect()
    };
    let (oo, no) = (outputs(old.1, ob), outputs(new.1, nb));
    for name in &d.outputs_changed {
        let before = oo.get(name).cloned().unwrap_or(Leaf::Absent);
        let after = no.get(name).cloned().unwrap_or(Leaf::Absent);
        out.outputs.push(AttrChange {
            path: name.clone(),
            before,
            after,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(s: &str) -> Leaf {
        Leaf::Value(s.into())
    }

    #[test]
    fn flattens_masks_and_marks_unknowns() {
        let value = json!({"id": "x", "tags": {"Name": "a", "a b": "c"}, "rules": [{"port": 22}], "password": "hunter2", "empty": []});
        let f = flatten(
            &value,
            &["password".into()],
            &["arn".into(), "rules[0]".into()],
        );
        let got: Vec<(&str, &Leaf)> = f.leaves.iter().map(|(k, v)| (k.as_str(), v)).collect();
        assert_eq!(
            got,
            vec![
                ("arn", &Leaf::Unknown),
                ("empty", &v("[]")),
                ("id", &v("\"x\"")),
                ("password", &Leaf::Sensitive),
                ("rules[0]", &Leaf::Unknown),
                ("tags.Name", &v("\"a\"")),
                ("tags[\"a b\"]", &v("\"c\"")),
            ]
        );
        assert!(!format!("{f:?}").contains("hunter2"));
    }

    #[test]
    fn state_sensitive_paths_are_read_and_fail_closed() {
        let raw = r#"[[{"type":"get_attr","value":"password"}],[{"type":"get_attr","value":"tags"},{"type":"index","value":{"value":"secret key","type":"string"}}],[{"type":"get_attr","value":"l"},{"type":"index","value":{"value":2,"type":"number"}}]]"#;
        assert_eq!(
            state_sensitive_paths(raw),
            vec!["password", "tags[\"secret key\"]", "l[2]"]
        );
        for bad in ["{", "[[{\"type\":\"weird\"}]]", "[1]", "\"x\""] {
            assert_eq!(state_sensitive_paths(bad), vec![String::new()], "{bad}");
        }
        let f = flatten(&json!({"a": 1, "b": {"c": 2}}), &[String::new()], &[]);
        assert!(f.leaves.values().all(|l| *l == Leaf::Sensitive));
    }

    #[test]
    fn compare_lists_only_differences_and_sensitive_stays_masked() {
        let before = flatten(&json!({"a": 1, "b": "x", "s": "old"}), &["s".into()], &[]);
        let after = flatten(&json!({"a": 1, "c": true, "s": "new"}), &["s".into()], &[]);
        let c = compare(&before, &after);
        assert_eq!(
            c,
            vec![
                AttrChange {
                    path: "b".into(),
                    before: v("\"x\""),
                    after: Leaf::Absent
                },
                AttrChange {
                    path: "c".into(),
                    before: Leaf::Absent,
                    after: v("true")
                },
            ]
        );
    }

    #[test]
    fn leaves_are_bounded() {
        let big = Value::Array((0..(MAX_LEAVES + 10)).map(|i| json!(i)).collect());
        let f = flatten(&big, &[], &[]);
        assert_eq!(f.leaves.len(), MAX_LEAVES);
        assert!(f.truncated);
    }

    fn state(serial: u64, pw: &str, name: &str) -> String {
        json!({"version": 4, "terraform_version": "1.11.0", "serial": serial, "lineage": "l-1",
            "outputs": {"o": {"value": name, "type": "string"}, "k": {"value": pw, "type": "string", "sensitive": true}},
            "resources": [{"mode": "managed", "type": "terraform_data", "name": "a",
                "provider": "provider[\"terraform.io/builtin/terraform\"]",
                "instances": [{"schema_version": 0, "attributes": {"id": "1", "input": name, "pw": pw},
                    "sensitive_attributes": [[{"type": "get_attr", "value": "pw"}]]}]}]})
        .to_string()
    }

    #[test]
    fn version_diff_names_changed_attributes_and_never_shows_sensitive_ones() {
        let (a, b) = (state(1, "s3cret", "one"), state(2, "t0p", "<two>"));
        let (sa, sb) = (
            StateSummary::parse(a.as_bytes()).unwrap(),
            StateSummary::parse(b.as_bytes()).unwrap(),
        );
        let d = between((a.as_bytes(), &sa), (b.as_bytes(), &sb));
        assert_eq!(d.changed.len(), 1);
        assert_eq!(
            d.changed[0].attributes,
            vec![AttrChange {
                path: "input".into(),
                before: v("\"one\""),
                after: v("\"<two>\"")
            }]
        );
        let all = format!("{d:?}");
        assert!(!all.contains("s3cret") && !all.contains("t0p"), "{all}");
        assert_eq!(d.outputs.len(), 2);
        assert!(d
            .outputs
            .iter()
            .any(|o| o.path == "k" && o.before == Leaf::Sensitive));
    }
}
