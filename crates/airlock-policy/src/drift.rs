//! Drift: what a refresh-only plan (`terraform plan -refresh-only`, then `show -json`) says
//! changed in the real world since the stored state. Read from `resource_drift` and
//! `output_changes`, never from `-detailed-exitcode` (unreliable in Terraform and OpenTofu).
//!
//! The report carries names only: instance addresses, attribute paths (a sensitive attribute is
//! named by its sensitive path, never below it), and the catalogue's findings, whose messages
//! show only non-sensitive protection booleans and numbers. No attribute value leaves this
//! module. Pure: no I/O, never panics on input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::analysis::protection::{protection_findings, Values};
use crate::analysis::rules;
use crate::catalogue::{self, Class};
use crate::plan::{ChangeKind, ResourceChange};

/// Most drifted instances a report lists in detail; the rest are counted (per type) only.
pub const MAX_INSTANCES: usize = 20_000;
/// Most attribute paths listed per instance.
pub const MAX_ATTRIBUTES: usize = 100;
/// Most findings a report keeps.
pub const MAX_FINDINGS: usize = 1_000;
/// Most characters of an error kept in a report.
pub const MAX_ERROR_CHARS: usize = 8_000;

/// A drifted critical object that is gone from the real world.
pub const CRITICAL_GONE: &str = "drift-critical-gone";

/// The verdict of one drift check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftStatus {
    /// The real world matches the state.
    InSync,
    /// Something changed outside Terraform.
    Drifted,
    /// The check could not tell (provider or refresh error, unreadable plan).
    Unknown,
}

impl DriftStatus {
    /// `in_sync`, `drifted`, `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftStatus::InSync => "in_sync",
            DriftStatus::Drifted => "drifted",
            DriftStatus::Unknown => "unknown",
        }
    }

    /// The inverse of [`DriftStatus::as_str`].
    pub fn parse(s: &str) -> Option<DriftStatus> {
        match s {
            "in_sync" => Some(DriftStatus::InSync),
            "drifted" => Some(DriftStatus::Drifted),
            "unknown" => Some(DriftStatus::Unknown),
            _ => None,
        }
    }
}

/// One instance that changed outside Terraform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftedInstance {
    /// Full address.
    pub address: String,
    /// Resource type.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// `update` (changed) or `delete` (gone), as Terraform's drift actions say.
    pub change: String,
    /// Attribute paths that differ (sensitive ones named at their sensitive path).
    pub attributes: Vec<String>,
    /// Of those, the ones whose values are sensitive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive: Vec<String>,
    /// More attributes differ than [`MAX_ATTRIBUTES`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attributes_truncated: bool,
    /// Critical by the built-in catalogue.
    pub critical: bool,
    /// Protected on this stack (set by the server from its own protection rules).
    #[serde(default)]
    pub protected: bool,
}

/// One root output that changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftedOutput {
    /// Output name.
    pub name: String,
    /// Terraform's actions for it, e.g. `update`.
    pub change: String,
    /// Its value is sensitive.
    pub sensitive: bool,
}

/// A finding about drift (the catalogue's protection rules, one implementation with the gate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftFinding {
    /// Rule id (`protection-weakened`, [`CRITICAL_GONE`]).
    pub rule: String,
    /// The instance.
    pub address: String,
    /// One line; values only for non-sensitive protection booleans and numbers.
    pub message: String,
}

/// What one drift check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftReport {
    /// The verdict.
    pub status: DriftStatus,
    /// The Terraform that made the plan.
    pub terraform_version: Option<String>,
    /// Drifted instances counted (all of them, also those past [`MAX_INSTANCES`]).
    pub drifted_instances: u64,
    /// Drifted instances per resource type (all of them).
    pub by_type: BTreeMap<String, u64>,
    /// The first [`MAX_INSTANCES`] drifted instances, by address.
    pub instances: Vec<DriftedInstance>,
    /// Root outputs that changed.
    pub outputs: Vec<DriftedOutput>,
    /// Findings (at most [`MAX_FINDINGS`]).
    pub findings: Vec<DriftFinding>,
    /// Why the status is unknown.
    pub error: Option<String>,
    /// Facts about the read worth telling.
    pub notes: Vec<String>,
}

impl DriftReport {
    /// A check that could not tell: `error` (cut to [`MAX_ERROR_CHARS`]).
    pub fn unknown(error: &str) -> DriftReport {
        DriftReport {
            status: DriftStatus::Unknown,
            terraform_version: None,
            drifted_instances: 0,
            by_type: BTreeMap::new(),
            instances: Vec::new(),
            outputs: Vec::new(),
            findings: Vec::new(),
            error: Some(cut(error)),
            notes: Vec::new(),
        }
    }
}

/// The error text a report keeps: at most [`MAX_ERROR_CHARS`] characters.
pub fn cut(error: &str) -> String {
    let mut s: String = error.chars().take(MAX_ERROR_CHARS).collect();
    if s.len() < error.len() {
        s.push_str(" …");
    }
    s
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OutputChange {
    actions: Vec<String>,
    before_sensitive: Value,
    after_sensitive: Value,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Doc {
    format_version: Option<String>,
    terraform_version: Option<String>,
    errored: Option<bool>,
    resource_drift: Option<Vec<ResourceChange>>,
    resource_changes: Option<Vec<ResourceChange>>,
    output_changes: Option<BTreeMap<String, OutputChange>>,
}

/// `(major, minor, patch)` of a version string such as `1.11.4` or `0.15.2-beta1`.
fn version_triple(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim_start_matches('v').split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        it.next()??,
        it.next()?.unwrap_or(0),
        it.next().flatten().unwrap_or(0),
    ))
}

/// Reads a refresh-only plan's JSON into a report; `Err` (saying why) when the input is not a
/// readable plan JSON, which a caller records as `unknown`, never as "in sync".
///
/// - `resource_drift` entries count only when their object really differs (Terraform 0.15.2 to
///   1.0.0 listed every instance once anything drifted; 1.0.1 and later list only drifted ones
///   and omit the key when there are none).
/// - A plan without `resource_drift` from a Terraform older than 0.15.2 (which did not write
///   it) cannot tell drift from no drift: `unknown`, saying so.
/// - A refresh-only plan has no resource changes; any that is not a no-op is drift too (some
///   producers put refresh results there).
/// - `errored` plans are `unknown`. `applyable` is not read: Terraform sets it when the refresh
///   changes anything in the state, provider metadata included, which is not drift (observed
///   with Terraform 1.11 on an unchanged object).
pub fn read(plan_json: &[u8]) -> Result<DriftReport, String> {
    let doc: Doc = serde_json::from_slice(plan_json)
        .map_err(|e| format!("the plan JSON is unreadable: {e}"))?;
    if doc.format_version.is_none() && doc.terraform_version.is_none() {
        return Err(
            "not a plan: neither format_version nor terraform_version is set; expected \
                    the JSON output of `terraform show -json PLANFILE`"
                .into(),
        );
    }
    let mut report = DriftReport {
        status: DriftStatus::InSync,
        terraform_version: doc.terraform_version.clone(),
        ..DriftReport::unknown("")
    };
    report.error = None;
    let entries = doc.resource_drift.iter().flatten().chain(
        doc.resource_changes
            .iter()
            .flatten()
            .filter(|rc| rc.kind() != ChangeKind::NoOp && rc.kind() != ChangeKind::Read),
    );
    let mut seen = std::collections::BTreeSet::new();
    for rc in entries {
        if rc.mode != "managed" || !seen.insert((rc.address.clone(), rc.deposed.clone())) {
            continue;
        }
        let Some(instance) = drifted(rc) else {
            continue;
        };
        report.drifted_instances += 1;
        *report.by_type.entry(rc.resource_type.clone()).or_default() += 1;
        for f in findings(rc, &instance) {
            if report.findings.len() < MAX_FINDINGS {
                report.findings.push(f);
            }
        }
        if report.instances.len() < MAX_INSTANCES {
            report.instances.push(instance);
        }
    }
    report.instances.sort_by(|a, b| a.address.cmp(&b.address));
    if report.drifted_instances as usize > report.instances.len() {
        report.notes.push(format!(
            "{} drifted instances; the first {} are listed, all are counted by type",
            report.drifted_instances,
            report.instances.len()
        ));
    }
    for (name, oc) in doc.output_changes.iter().flatten() {
        let kind = ChangeKind::from_actions(&oc.actions);
        if kind == ChangeKind::NoOp {
            continue;
        }
        report.outputs.push(DriftedOutput {
            name: name.clone(),
            change: oc.actions.join(","),
            sensitive: any_true(&oc.before_sensitive) || any_true(&oc.after_sensitive),
        });
    }
    if report.drifted_instances > 0 || !report.outputs.is_empty() {
        report.status = DriftStatus::Drifted;
    }
    if doc.errored == Some(true) {
        report.status = DriftStatus::Unknown;
        report.error = Some(
            "the plan is errored (partial): Terraform could not refresh everything; see its \
             output"
                .into(),
        );
        return Ok(report);
    }
    let old = doc
        .terraform_version
        .as_deref()
        .and_then(version_triple)
        .is_some_and(|v| v < (0, 15, 2));
    if doc.resource_drift.is_none() && report.status == DriftStatus::InSync && old {
        report.status = DriftStatus::Unknown;
        report.error = Some(format!(
            "Terraform {} does not list drift in its plan JSON (resource_drift appeared in \
             0.15.2): this check cannot tell; use a newer Terraform",
            doc.terraform_version.as_deref().unwrap_or("?")
        ));
    }
    Ok(report)
}

fn any_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Array(a) => a.iter().any(any_true),
        Value::Object(o) => o.values().any(any_true),
        _ => false,
    }
}

fn parse(raw: &Option<Box<serde_json::value::RawValue>>) -> Value {
    raw.as_ref()
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null)
}

/// The instance, if its object really changed (or is gone).
fn drifted(rc: &ResourceChange) -> Option<DriftedInstance> {
    use airlock_core::attr_diff::{compare, flatten, mask_paths};
    let c = &rc.change;
    let (before, after) = (parse(&c.before), parse(&c.after));
    let kind = rc.kind();
    if kind == ChangeKind::NoOp || (before == after && !kind.destroys()) {
        return None;
    }
    let mut sensitive_masks = mask_paths(&parse(&c.before_sensitive));
    sensitive_masks.extend(mask_paths(&parse(&c.after_sensitive)));
    let (b, a) = (flatten(&before, &[], &[]), flatten(&after, &[], &[]));
    let mut attributes: Vec<String> = Vec::new();
    let mut sensitive: Vec<String> = Vec::new();
    let mut truncated = b.truncated || a.truncated;
    if !after.is_null() {
        for change in compare(&b, &a) {
            // A path under a sensitive mask is named by the mask (a map key may be secret).
            let masked = sensitive_masks
                .iter()
                .filter(|m| under(&change.path, m))
                .min_by_key(|m| m.len());
            let name = masked.cloned().unwrap_or(change.path);
            let name = if name.is_empty() {
                "(whole object)".to_owned()
            } else {
                name
            };
            if attributes.last() == Some(&name) || attributes.contains(&name) {
                continue;
            }
            if attributes.len() >= MAX_ATTRIBUTES {
                truncated = true;
                break;
            }
            if masked.is_some() {
                sensitive.push(name.clone());
            }
            attributes.push(name);
        }
    }
    Some(DriftedInstance {
        address: rc.address.clone(),
        resource_type: rc.resource_type.clone(),
        change: if kind.destroys() {
            "delete".into()
        } else {
            c.actions.join(",")
        },
        attributes,
        sensitive,
        attributes_truncated: truncated,
        critical: catalogue::entry(&rc.resource_type).is_some_and(|e| e.class == Class::Critical),
        protected: false,
    })
}

/// Whether `path` is `mask` or lies under it.
fn under(path: &str, mask: &str) -> bool {
    mask.is_empty()
        || path == mask
        || (path.starts_with(mask) && matches!(path.as_bytes().get(mask.len()), Some(b'.' | b'[')))
}

/// The catalogue's findings about one drifted instance: a protection weakened outside
/// Terraform (the gate's own rule), or a critical object gone.
fn findings(rc: &ResourceChange, instance: &DriftedInstance) -> Vec<DriftFinding> {
    let Some(entry) = catalogue::entry(&rc.resource_type) else {
        return Vec::new();
    };
    let kind = rc.kind();
    if kind.destroys() {
        if entry.class != Class::Critical {
            return Vec::new();
        }
        return vec![DriftFinding {
            rule: CRITICAL_GONE.into(),
            address: instance.address.clone(),
            message: format!(
                "critical {} ({}) no longer exists outside Terraform: it was deleted behind \
                 Terraform's back",
                rc.resource_type, entry.category
            ),
        }];
    }
    if kind != ChangeKind::Update || entry.protections.is_empty() {
        return Vec::new();
    }
    protection_findings(rc, kind, &entry.protections, &Values::of(rc))
        .into_iter()
        .filter(|f| f.rule == rules::PROTECTION_WEAKENED)
        .map(|f| DriftFinding {
            rule: f.rule,
            address: instance.address.clone(),
            message: format!("{} outside Terraform", f.message),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(drift: &str, outputs: &str, version: &str) -> Vec<u8> {
        format!(
            r#"{{"format_version":"1.2","terraform_version":"{version}","planned_values":{{}},
            {drift}{outputs}"resource_changes":[],"configuration":{{}},"timestamp":"2026-11-24T03:09:32Z",
            "applyable":false,"complete":true,"errored":false}}"#
        )
        .into_bytes()
    }

    const DB_DRIFT: &str = r#""resource_drift":[{"address":"aws_db_instance.main","mode":"managed","type":"aws_db_instance","name":"main","provider_name":"registry.terraform.io/hashicorp/aws","change":{"actions":["update"],"before":{"id":"db-1","deletion_protection":true,"password":"old","tags":{"team":"a"}},"after":{"id":"db-1","deletion_protection":false,"password":"new","tags":{"team":"b"}},"after_unknown":{},"before_sensitive":{"password":true,"tags":{}},"after_sensitive":{"password":true,"tags":{}}}},
        {"address":"aws_s3_bucket.logs","mode":"managed","type":"aws_s3_bucket","name":"logs","provider_name":"registry.terraform.io/hashicorp/aws","change":{"actions":["delete"],"before":{"id":"logs","force_destroy":false},"after":null,"after_unknown":{},"before_sensitive":{},"after_sensitive":false}}],"#;

    fn read_ok(bytes: &[u8]) -> DriftReport {
        read(bytes).unwrap()
    }

    #[test]
    fn drift_is_read_with_names_only_and_protection_findings() {
        let r = read_ok(&plan(DB_DRIFT, "", "1.11.4"));
        assert_eq!(r.status, DriftStatus::Drifted);
        assert_eq!(r.drifted_instances, 2);
        let db = &r.instances[0];
        assert_eq!(db.address, "aws_db_instance.main");
        assert_eq!(
            db.attributes,
            ["deletion_protection", "password", "tags.team"]
        );
        assert_eq!(db.sensitive, ["password"]);
        assert!(db.critical);
        assert_eq!(r.instances[1].change, "delete");
        let text = serde_json::to_string(&r).unwrap();
        for secret in ["\"old\"", "\"new\"", "db-1"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        let rules: Vec<&str> = r.findings.iter().map(|f| f.rule.as_str()).collect();
        assert!(rules.contains(&"protection-weakened"), "{:?}", r.findings);
        let weakened = r
            .findings
            .iter()
            .find(|f| f.rule == "protection-weakened")
            .unwrap();
        assert!(weakened
            .message
            .contains("deletion_protection turned off (true → false)"));
        assert!(weakened.message.contains("outside Terraform"));
    }

    #[test]
    fn no_drift_is_in_sync_and_output_changes_are_drift() {
        assert_eq!(read_ok(&plan("", "", "1.11.4")).status, DriftStatus::InSync);
        let out = r#""output_changes":{"ip":{"actions":["update"],"before":"a","after":"b","after_unknown":false,"before_sensitive":true,"after_sensitive":true},"same":{"actions":["no-op"],"before":1,"after":1}},"#;
        let r = read_ok(&plan("", out, "1.11.4"));
        assert_eq!(r.status, DriftStatus::Drifted);
        assert_eq!(r.outputs.len(), 1);
        assert!(r.outputs[0].sensitive);
        assert!(!serde_json::to_string(&r).unwrap().contains("\"b\""));
    }

    #[test]
    fn older_terraform_formats_are_understood() {
        // 0.15.2 to 1.0.0 listed every instance once anything drifted: unchanged ones are not drift.
        let all = r#""resource_drift":[{"address":"terraform_data.a","mode":"managed","type":"terraform_data","name":"a","change":{"actions":["update"],"before":{"id":"1","input":"x"},"after":{"id":"1","input":"x"}}},{"address":"terraform_data.b","mode":"managed","type":"terraform_data","name":"b","change":{"actions":["update"],"before":{"id":"2","input":"x"},"after":{"id":"2","input":"y"}}}],"#;
        let r = read_ok(&plan(all, "", "1.0.0"));
        assert_eq!(r.drifted_instances, 1);
        assert_eq!(r.instances[0].address, "terraform_data.b");
        assert_eq!(r.instances[0].attributes, ["input"]);
        // Before 0.15.2 there was no resource_drift: never "in sync".
        let r = read_ok(
            br#"{"format_version":"0.1","terraform_version":"0.14.11","resource_changes":[]}"#,
        );
        assert_eq!(r.status, DriftStatus::Unknown);
        assert!(r
            .error
            .unwrap()
            .contains("resource_drift appeared in 0.15.2"));
        // A newer Terraform omits resource_drift when nothing drifted.
        let r = read_ok(
            br#"{"format_version":"1.0","terraform_version":"1.1.9","resource_changes":[]}"#,
        );
        assert_eq!(r.status, DriftStatus::InSync);
    }

    #[test]
    fn errors_and_hostile_input_are_unknown_never_in_sync() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{}",
            br#"{"format_version":"1.2","resource_drift":"x"}"#,
            br#"{"format_version":"1.2","resource_drift":[{"change":{"actions":7}}]}"#,
        ] {
            assert!(read(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let errored = br#"{"format_version":"1.2","terraform_version":"1.11.4","errored":true}"#;
        assert_eq!(read_ok(errored).status, DriftStatus::Unknown);
        // Terraform sets applyable when the refresh changes provider metadata: not drift.
        let applyable = br#"{"format_version":"1.2","terraform_version":"1.11.4","applyable":true,"errored":false}"#;
        assert_eq!(read_ok(applyable).status, DriftStatus::InSync);
        assert!(
            DriftReport::unknown(&"x".repeat(20_000))
                .error
                .unwrap()
                .chars()
                .count()
                <= MAX_ERROR_CHARS + 2
        );
    }

    #[test]
    fn huge_drift_is_counted_and_capped() {
        let entries: Vec<String> = (0..MAX_INSTANCES + 500)
            .map(|i| format!(r#"{{"address":"terraform_data.x[{i}]","mode":"managed","type":"terraform_data","name":"x","change":{{"actions":["update"],"before":{{"input":{i}}},"after":{{"input":-1}}}}}}"#))
            .collect();
        let drift = format!(r#""resource_drift":[{}],"#, entries.join(","));
        let r = read_ok(&plan(&drift, "", "1.11.4"));
        assert_eq!(r.drifted_instances as usize, MAX_INSTANCES + 500);
        assert_eq!(r.instances.len(), MAX_INSTANCES);
        assert_eq!(r.by_type["terraform_data"] as usize, MAX_INSTANCES + 500);
        assert_eq!(r.notes.len(), 1);
    }
}
