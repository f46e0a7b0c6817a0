//! The protection-attribute rules: a protection turned off or weakened by an update or a
//! replacement, and a delete that the provider will refuse because the protection is on.

use serde_json::Value;

use super::words::verb;
use super::{rules, Finding, Severity};
use crate::catalogue::{ProtectRule, Protection};
use crate::plan::{ChangeKind, ResourceChange};

/// The parsed values a protection rule needs (only built for catalogue types).
pub(crate) struct Values {
    before: Option<Value>,
    after: Option<Value>,
    after_unknown: Value,
    before_sensitive: Value,
    after_sensitive: Value,
}

impl Values {
    pub(crate) fn of(rc: &ResourceChange) -> Values {
        let parse = |r: &Option<Box<serde_json::value::RawValue>>| -> Option<Value> {
            r.as_ref()
                .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
                .filter(|v| !v.is_null())
        };
        let c = &rc.change;
        Values {
            before: parse(&c.before),
            after: parse(&c.after),
            after_unknown: parse(&c.after_unknown).unwrap_or(Value::Null),
            before_sensitive: parse(&c.before_sensitive).unwrap_or(Value::Null),
            after_sensitive: parse(&c.after_sensitive).unwrap_or(Value::Null),
        }
    }
}

/// Follows a protection path; a list step takes the first element (blocks are lists).
fn lookup<'v>(root: &'v Value, p: &Protection) -> Option<&'v Value> {
    let mut v = root;
    for step in p.steps() {
        while let Value::Array(items) = v {
            v = items.first()?;
        }
        v = v.as_object()?.get(step)?;
    }
    while let Value::Array(items) = v {
        v = items.first()?;
    }
    Some(v)
}

/// Whether the sensitivity (or unknown) map marks this path or one of its parents `true`.
fn marked(map: &Value, p: &Protection) -> bool {
    let mut v = map;
    for step in p.steps() {
        while let Value::Array(items) = v {
            match items.first() {
                Some(first) => v = first,
                None => return false,
            }
        }
        match v {
            Value::Bool(b) => return *b,
            Value::Object(o) => match o.get(step) {
                Some(next) => v = next,
                None => return false,
            },
            _ => return false,
        }
    }
    fn any_true(v: &Value) -> bool {
        match v {
            Value::Bool(b) => *b,
            Value::Array(a) => a.iter().any(any_true),
            _ => false,
        }
    }
    any_true(v)
}

fn protective(rule: ProtectRule, v: Option<&Value>) -> bool {
    let v = v.unwrap_or(&Value::Null);
    match rule {
        ProtectRule::True => v.as_bool() == Some(true),
        ProtectRule::False => v.as_bool() != Some(true),
        ProtectRule::Positive => v.as_f64().is_some_and(|n| n > 0.0),
        ProtectRule::NoShrink => v.as_f64().is_some_and(|n| n > 0.0),
        ProtectRule::Set => match v {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        },
        ProtectRule::Equals(want) => v.as_str() == Some(want),
        ProtectRule::NotEquals(bad) => v.as_str() != Some(bad),
    }
}

/// `name = value` when the value may be shown (boolean or number, not sensitive).
fn shown(p: &Protection, v: Option<&Value>, sensitive: bool) -> String {
    match v {
        _ if sensitive => format!("{} (sensitive)", p.attribute),
        Some(Value::Bool(b)) => format!("{} = {b}", p.attribute),
        Some(Value::Number(n)) => format!("{} = {n}", p.attribute),
        Some(Value::Null) | None => format!("{} unset", p.attribute),
        Some(_) => p.attribute.to_string(),
    }
}

pub(super) fn already_off(protections: &[Protection], v: &Values) -> Vec<String> {
    let Some(before) = &v.before else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for p in protections {
        // Only the "dangerous when true" switches say something clear about a delete.
        if p.rule == ProtectRule::False {
            let value = lookup(before, p);
            if !protective(p.rule, value) && !out.iter().any(|o| o.starts_with(p.attribute)) {
                out.push(shown(p, value, marked(&v.before_sensitive, p)));
            }
        }
    }
    out
}

pub(crate) fn protection_findings(
    rc: &ResourceChange,
    kind: ChangeKind,
    protections: &[Protection],
    v: &Values,
) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    let Some(before) = &v.before else {
        return out;
    };
    for p in protections {
        let was = lookup(before, p);
        let was_on = protective(p.rule, was);
        let sens_before = marked(&v.before_sensitive, p);
        // A delete (or a replace's destroy) of an object whose protection is on fails at apply.
        if kind.destroys() && p.blocks_delete && was_on && rc.deposed.is_none() {
            out.push(Finding {
                rule: rules::PROTECTED_DELETE.into(),
                severity: Severity::Review,
                address: Some(rc.address.clone()),
                message: format!(
                    "{} while its prior state has {}: the provider will refuse at apply; turn the \
                     protection off in a reviewed change first",
                    verb(kind),
                    match p.rule {
                        ProtectRule::Equals(want) => format!("{} = {want}", p.attribute),
                        _ => shown(p, was, sens_before),
                    }
                ),
            });
        }
        // A delete that takes the resource's backups with it: nothing to restore from after.
        if kind.destroys() && p.deletes_backups && !was_on && rc.deposed.is_none() {
            out.push(Finding {
                rule: rules::BACKUPS_DELETED.into(),
                severity: Severity::Review,
                address: Some(rc.address.clone()),
                message: format!(
                    "BACKUPS DELETED TOO: {} while its prior state has {}: the provider deletes \
                     the automated backups together with the resource, so no point-in-time \
                     restore remains (only a final snapshot, if one is taken); keep them by \
                     setting {} in a reviewed change first",
                    verb(kind),
                    shown(p, was, sens_before),
                    match p.rule {
                        ProtectRule::False => format!("{} = false", p.attribute),
                        _ => format!("{} back", p.attribute),
                    }
                ),
            });
        }
        let Some(after) = &v.after else { continue };
        if !matches!(
            kind,
            ChangeKind::Update | ChangeKind::ReplaceDestroyFirst | ChangeKind::ReplaceCreateFirst
        ) || done.contains(&p.attribute)
        {
            continue;
        }
        // Unknown until apply: the value Terraform sets then is not in the plan (and a plan
        // file can mark any value unknown), so a protection that is on may be turned off
        // without any reviewer reading it.
        if marked(&v.after_unknown, p) {
            if was_on {
                done.push(p.attribute);
                out.push(Finding {
                    rule: rules::PROTECTION_WEAKENED.into(),
                    severity: Severity::Review,
                    address: Some(rc.address.clone()),
                    message: format!(
                        "protection may be weakened: {} is known only after apply, while its prior state has {}; review what sets it",
                        p.attribute,
                        shown(p, was, sens_before)
                    ),
                });
            }
            continue;
        }
        let now = lookup(after, p);
        let sens = sens_before || marked(&v.after_sensitive, p);
        let weakened = match p.rule {
            ProtectRule::Positive | ProtectRule::NoShrink => {
                let (b, a) = (
                    was.and_then(Value::as_f64),
                    now.and_then(Value::as_f64).or(Some(0.0)),
                );
                matches!((b, a), (Some(b), Some(a)) if a < b)
            }
            _ => was_on && !protective(p.rule, now),
        };
        if weakened {
            done.push(p.attribute);
            let how = match p.rule {
                ProtectRule::True => "turned off".to_string(),
                ProtectRule::False => "turned on".to_string(),
                ProtectRule::Positive if now.and_then(Value::as_f64).unwrap_or(0.0) <= 0.0 => {
                    "dropped to zero".to_string()
                }
                ProtectRule::Positive | ProtectRule::NoShrink => "shortened".to_string(),
                ProtectRule::Set => "cleared".to_string(),
                ProtectRule::Equals(want) => format!("no longer {want}"),
                ProtectRule::NotEquals(bad) => format!("set to {bad}"),
            };
            let values = match (was, now) {
                (
                    Some(Value::Bool(_) | Value::Number(_)),
                    Some(Value::Bool(_) | Value::Number(_)),
                ) if !sens => {
                    format!(
                        " ({} → {})",
                        was.map(Value::to_string).unwrap_or_default(),
                        now.map(Value::to_string).unwrap_or_default()
                    )
                }
                _ => String::new(),
            };
            out.push(Finding {
                rule: rules::PROTECTION_WEAKENED.into(),
                severity: Severity::Review,
                address: Some(rc.address.clone()),
                message: format!("protection weakened: {} {how}{values}", p.attribute),
            });
        }
    }
    out
}
