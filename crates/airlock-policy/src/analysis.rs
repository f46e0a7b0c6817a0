//! The rules: each resource change is judged as it streams past, findings accumulate, and
//! [`Analyzer::finish`] turns them into a [`Decision`]. Memory stays bounded: per-change data
//! is handed back to the caller ([`ChangeReport`]) and only a capped list of findings is kept.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::catalogue::{self, Class, ProtectRule, Protection};
use crate::config::{self, Config, StackConfig};
use crate::plan::{ChangeKind, PlanInfo, ResourceChange};

/// At most this many findings are kept in detail; the rest are counted per rule.
pub const MAX_FINDINGS: usize = 1000;

/// What the gate decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Nothing needs a human.
    Allow,
    /// A human other than the author must look (declared destruction, weakened protection, ...).
    Review,
    /// Refused (undeclared destruction of a critical resource, a Rego `deny`).
    Deny,
}

impl Verdict {
    /// `allow`, `review` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Review => "review",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a finding weighs: the verdict it forces at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Worth showing; does not change the verdict.
    Info,
    /// Forces at least `review`.
    Review,
    /// Forces `deny`.
    Deny,
}

impl Severity {
    /// `info`, `review` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Review => "review",
            Severity::Deny => "deny",
        }
    }

    fn verdict(self) -> Verdict {
        match self {
            Severity::Info => Verdict::Allow,
            Severity::Review => Verdict::Review,
            Severity::Deny => Verdict::Deny,
        }
    }
}

/// Rule identifiers, stable across releases (they appear in JSON and SARIF output).
pub mod rules {
    /// A critical resource is destroyed without an `allow_destroy` declaration.
    pub const CRITICAL_DESTROY: &str = "critical-destroy";
    /// A critical resource is destroyed, as declared by `allow_destroy`.
    pub const DECLARED_DESTROY: &str = "declared-destroy";
    /// An `allow_destroy` declaration matches nothing the plan destroys.
    pub const UNUSED_DECLARATION: &str = "unused-allow-destroy";
    /// A protection attribute is turned off or weakened.
    pub const PROTECTION_WEAKENED: &str = "protection-weakened";
    /// A resource is deleted while its protection is on: the apply will fail.
    pub const PROTECTED_DELETE: &str = "protected-delete";
    /// More instances are destroyed than the mass-destruction limits allow.
    pub const MASS_DESTRUCTION: &str = "mass-destruction";
    /// Something is destroyed in a production stack.
    pub const PRODUCTION_DESTROY: &str = "production-destroy";
    /// A whole module call was removed.
    pub const MODULE_REMOVED: &str = "module-removed";
    /// A `count` index or `for_each` key was removed.
    pub const INSTANCE_KEY_REMOVED: &str = "instance-key-removed";
    /// A replacement was requested with `-replace`.
    pub const REPLACE_REQUESTED: &str = "replace-requested";
    /// A tainted object is replaced.
    pub const TAINTED_REPLACE: &str = "tainted-replace";
    /// An object is removed from state without being destroyed.
    pub const FORGET: &str = "forget";
    /// An action list airlock does not know.
    pub const UNKNOWN_ACTION: &str = "unknown-action";
    /// The plan is errored (partial) and cannot be applied.
    pub const PLAN_ERRORED: &str = "plan-errored";
}

/// One thing the gate found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Rule id, e.g. `critical-destroy`, or `rego:deny` for a custom rule.
    pub rule: String,
    /// The verdict it forces at least.
    pub severity: Severity,
    /// Resource address, or a module address, or `None` for the whole plan.
    pub address: Option<String>,
    /// One line, no attribute values except non-sensitive protection booleans and numbers.
    pub message: String,
}

/// What a caller may show about one resource change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeReport {
    /// Resource address.
    pub address: String,
    /// Resource type.
    pub resource_type: String,
    /// `managed` or `data`.
    pub mode: String,
    /// Classification.
    pub kind: ChangeKind,
    /// Terraform's action list, verbatim.
    pub actions: Vec<String>,
    /// Terraform's `action_reason`, verbatim.
    pub action_reason: Option<String>,
    /// Critical by the catalogue or the config's `protect`.
    pub critical: bool,
    /// Address before a `moved` block.
    pub moved_from: Option<String>,
    /// The change imports an existing object.
    pub import: bool,
    /// Deposed object key.
    pub deposed: Option<String>,
    /// Attributes that force the replacement, e.g. `triggers_replace`, `settings[0].tier`.
    pub replace_paths: Vec<String>,
    /// One line per reason: the action reason in words, then the findings about this change.
    pub reasons: Vec<String>,
    /// The most severe finding about this change.
    pub severity: Option<Severity>,
}

impl ChangeReport {
    /// Whether the change destroys or forgets an existing object.
    pub fn is_destructive(&self) -> bool {
        self.kind.removes_from_state() || self.kind == ChangeKind::Unknown
    }

    /// Whether the change is worth listing (not a plain no-op).
    pub fn is_interesting(&self) -> bool {
        self.kind != ChangeKind::NoOp || self.moved_from.is_some() || self.import
    }
}

/// Counts per classification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Changes per kind (`create`, `update`, `replace`, ...), every kind present.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Changes that import an object.
    pub import: u64,
    /// Changes moved from another address.
    pub moved: u64,
    /// All resource changes, data sources included.
    pub total: u64,
    /// Managed instances destroyed (delete or replace).
    pub destroyed: u64,
    /// Managed instances that existed before the plan (the stack's size).
    pub existing: u64,
    /// Findings per severity, counted before the cap.
    pub findings_by_severity: BTreeMap<&'static str, u64>,
}

/// The gate's result: data, never an error.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Counts.
    pub summary: Summary,
    /// Findings, most severe first, at most [`MAX_FINDINGS`].
    pub findings: Vec<Finding>,
    /// Findings not kept because of the cap.
    pub findings_omitted: u64,
    /// Facts about the plan document.
    pub plan: PlanInfo,
    /// The stack the plan was judged as, if any.
    pub stack: Option<String>,
}

/// Judges resource changes one at a time.
pub struct Analyzer<'c> {
    config: &'c Config,
    stack: Option<&'c StackConfig>,
    summary: Summary,
    findings: Vec<Finding>,
    omitted: u64,
    verdict: Verdict,
    /// Per module address (and each ancestor): (instances removed from config, other changes).
    modules: BTreeMap<String, (u64, u64)>,
    /// Which `allow_destroy` declarations matched something the plan destroys (by index).
    declared_used: Vec<bool>,
}

/// Module paths tracked for the module-removed rule; beyond this the rule stays silent.
const MAX_TRACKED_MODULES: usize = 100_000;

const ALL_KINDS: [ChangeKind; 10] = [
    ChangeKind::Create,
    ChangeKind::Update,
    ChangeKind::ReplaceDestroyFirst,
    ChangeKind::ReplaceCreateFirst,
    ChangeKind::Delete,
    ChangeKind::Forget,
    ChangeKind::ForgetReplace,
    ChangeKind::Read,
    ChangeKind::NoOp,
    ChangeKind::Unknown,
];

impl<'c> Analyzer<'c> {
    /// A new analysis; `stack` picks the `stack` block of `config` the plan belongs to.
    pub fn new(config: &'c Config, stack: Option<&'c StackConfig>) -> Self {
        let mut summary = Summary::default();
        for k in ALL_KINDS {
            summary.by_kind.insert(k.as_str(), 0);
        }
        for s in [Severity::Deny, Severity::Review, Severity::Info] {
            summary.findings_by_severity.insert(s.as_str(), 0);
        }
        Analyzer {
            config,
            stack,
            summary,
            findings: Vec::new(),
            omitted: 0,
            verdict: Verdict::Allow,
            modules: BTreeMap::new(),
            declared_used: vec![false; config.allow_destroy.len()],
        }
    }

    /// Adds a finding that did not come from a resource change (e.g. from Rego).
    pub fn add_finding(&mut self, finding: Finding) {
        self.verdict = self.verdict.max(finding.severity.verdict());
        if let Some(n) = self
            .summary
            .findings_by_severity
            .get_mut(finding.severity.as_str())
        {
            *n += 1;
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.omitted += 1;
            // Over the cap, a finding outweighs a lighter one: a verdict is never left without
            // a kept finding that says why.
            if let Some(slot) = self.findings.iter_mut().min_by_key(|f| f.severity) {
                if slot.severity < finding.severity {
                    *slot = finding;
                }
            }
        }
    }

    /// Judges one resource change.
    pub fn change(&mut self, rc: &ResourceChange) -> ChangeReport {
        let kind = rc.kind();
        self.count(rc, kind);
        let mut report = ChangeReport {
            address: rc.address.clone(),
            resource_type: rc.resource_type.clone(),
            mode: rc.mode.clone(),
            kind,
            actions: rc.change.actions.clone(),
            action_reason: rc.action_reason.clone(),
            critical: false,
            moved_from: rc.moved_from().map(str::to_string),
            import: rc.is_import(),
            deposed: rc.deposed.clone(),
            replace_paths: rc
                .change
                .replace_paths
                .iter()
                .flatten()
                .map(|p| render_path(p))
                .collect(),
            reasons: Vec::new(),
            severity: None,
        };
        if let Some(words) = rc.action_reason.as_deref().and_then(reason_in_words) {
            report.reasons.push(words.to_string());
        }
        if !rc.is_managed() {
            return report;
        }
        let entry = catalogue::entry(&rc.resource_type);
        let critical = entry.is_some_and(|e| e.class == Class::Critical)
            || self.config.protects(&rc.resource_type, &rc.address);
        report.critical = critical;
        let mut found: Vec<Finding> = Vec::new();
        // Values are parsed only for catalogue types whose change can weaken or hit a
        // protection: most changes in a big plan are no-ops and creates and skip this.
        let may_matter =
            kind.destroys() || matches!(kind, ChangeKind::Update | ChangeKind::ForgetReplace);
        let values = entry
            .filter(|e| may_matter && !e.protections.is_empty())
            .map(|e| (e, Values::of(rc)));

        // Destruction of a critical resource.
        let destroys = kind.destroys() || kind == ChangeKind::ForgetReplace;
        if destroys {
            for (used, a) in self
                .declared_used
                .iter_mut()
                .zip(&self.config.allow_destroy)
            {
                *used = *used || config::address_matches(&a.address, &rc.address);
            }
        }
        if critical && destroys {
            let what = match entry {
                Some(e) => format!("critical {} ({})", rc.resource_type, e.category),
                None => format!("{} (protected by airlock.hcl)", rc.resource_type),
            };
            let deposed = if rc.deposed.is_some() {
                " deposed object of"
            } else {
                ""
            };
            let mut detail = String::new();
            if let Some((e, v)) = &values {
                let off = already_off(&e.protections, v);
                if !off.is_empty() {
                    detail = format!("; protections already off: {}", off.join(", "));
                }
            }
            let verb = verb(kind);
            match self.config.allowed_destroy(&rc.address) {
                Some(allow) => found.push(Finding {
                    rule: rules::DECLARED_DESTROY.into(),
                    severity: Severity::Review,
                    address: Some(rc.address.clone()),
                    message: format!(
                        "{verb}{deposed} {what}, declared by allow_destroy \"{}\" (airlock.hcl line \
                         {}): {}{detail}",
                        allow.address,
                        allow.line,
                        one_line(&allow.reason)
                    ),
                }),
                None => found.push(Finding {
                    rule: rules::CRITICAL_DESTROY.into(),
                    severity: Severity::Deny,
                    address: Some(rc.address.clone()),
                    message: format!(
                        "{verb}{deposed} {what} without an allow_destroy declaration in \
                         airlock.hcl{detail}"
                    ),
                }),
            }
        }

        // Protections: weakened by an update or replace, or still on for a delete.
        if let Some((e, v)) = &values {
            found.extend(protection_findings(rc, kind, &e.protections, v));
        }

        // Provider-independent signals.
        self.track_module(rc, kind);
        match rc.action_reason.as_deref() {
            Some(r @ ("delete_because_count_index" | "delete_because_each_key")) => {
                found.push(Finding {
                    rule: rules::INSTANCE_KEY_REMOVED.into(),
                    severity: Severity::Info,
                    address: Some(rc.address.clone()),
                    message: if r == "delete_because_count_index" {
                        "count was reduced: this instance's index is removed and it is destroyed"
                            .into()
                    } else {
                        "for_each no longer has this key: the instance is destroyed".into()
                    },
                })
            }
            Some("replace_by_request") => found.push(Finding {
                rule: rules::REPLACE_REQUESTED.into(),
                severity: Severity::Info,
                address: Some(rc.address.clone()),
                message: "replaced because `-replace` asked for it".into(),
            }),
            Some("replace_because_tainted") => found.push(Finding {
                rule: rules::TAINTED_REPLACE.into(),
                severity: Severity::Info,
                address: Some(rc.address.clone()),
                message: "the object is tainted and will be destroyed and recreated".into(),
            }),
            _ => {}
        }
        match kind {
            ChangeKind::Forget => found.push(Finding {
                rule: rules::FORGET.into(),
                severity: Severity::Info,
                address: Some(rc.address.clone()),
                message: "removed from state but not destroyed: Terraform stops managing it".into(),
            }),
            ChangeKind::Unknown => found.push(Finding {
                rule: rules::UNKNOWN_ACTION.into(),
                severity: Severity::Review,
                address: Some(rc.address.clone()),
                message: format!(
                    "unrecognised action list [{}]; check this change by hand",
                    rc.change
                        .actions
                        .iter()
                        .map(|a| one_line(a))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
            _ => {}
        }
        if let Some(stack) = self.stack.filter(|s| s.production) {
            if kind.destroys() {
                found.push(Finding {
                    rule: rules::PRODUCTION_DESTROY.into(),
                    severity: Severity::Review,
                    address: Some(rc.address.clone()),
                    message: format!("{} in production stack \"{}\"", verb(kind), stack.name),
                });
            }
        }

        for f in found {
            report.reasons.push(f.message.clone());
            report.severity = report.severity.max(Some(f.severity));
            self.add_finding(f);
        }
        report
    }

    /// Terraform 1.x reports a removed module call's instances as
    /// `delete_because_no_resource_config` (older versions and OpenTofu may say
    /// `delete_because_no_module`), so a module counts as removed when every change inside it
    /// deletes an instance whose configuration is gone.
    fn track_module(&mut self, rc: &ResourceChange, kind: ChangeKind) {
        let Some(module) = rc.module_address.as_deref().filter(|m| !m.is_empty()) else {
            return;
        };
        let gone = kind == ChangeKind::Delete
            && matches!(
                rc.action_reason.as_deref(),
                Some("delete_because_no_module" | "delete_because_no_resource_config")
            );
        let mut end = 0usize;
        let bytes = module.as_bytes();
        while end < bytes.len() {
            // Ancestors end before each `.module.` separator.
            end = match module.get(end + 1..).and_then(|rest| rest.find(".module.")) {
                Some(i) => end + 1 + i,
                None => bytes.len(),
            };
            let Some(path) = module.get(..end) else { break };
            if !self.modules.contains_key(path) && self.modules.len() >= MAX_TRACKED_MODULES {
                continue;
            }
            let entry = self.modules.entry(path.to_string()).or_insert((0, 0));
            if gone {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }

    fn count(&mut self, rc: &ResourceChange, kind: ChangeKind) {
        let s = &mut self.summary;
        s.total += 1;
        if let Some(n) = s.by_kind.get_mut(kind.as_str()) {
            *n += 1;
        }
        if rc.is_import() {
            s.import += 1;
        }
        if rc.moved_from().is_some() {
            s.moved += 1;
        }
        if rc.is_managed() {
            if kind.destroys() {
                s.destroyed += 1;
            }
            let new = matches!(kind, ChangeKind::Create | ChangeKind::Read)
                || (rc.is_import() && kind == ChangeKind::NoOp);
            let existed = !new;
            if existed && rc.deposed.is_none() {
                s.existing += 1;
            }
        }
    }

    /// Plan-level rules, then the verdict.
    pub fn finish(mut self, plan: PlanInfo) -> Decision {
        // A declaration that matches nothing is a typo or a leftover: say so (it changes nothing).
        let unused: Vec<(String, usize)> = self
            .config
            .allow_destroy
            .iter()
            .zip(&self.declared_used)
            .filter(|(_, used)| !**used)
            .map(|(a, _)| (a.address.clone(), a.line))
            .collect();
        for (address, line) in unused {
            self.add_finding(Finding {
                rule: rules::UNUSED_DECLARATION.into(),
                severity: Severity::Info,
                address: Some(address.clone()),
                message: format!(
                    "allow_destroy \"{address}\" (airlock.hcl line {line}) matches nothing this plan destroys: a typo, or a declaration left over from an earlier change"
                ),
            });
        }
        let modules = std::mem::take(&mut self.modules);
        let removed = |m: &str| {
            modules
                .get(m)
                .is_some_and(|&(gone, other)| gone > 0 && other == 0)
        };
        for (module, (gone, _)) in &modules {
            // Report the outermost removed module only.
            let parent_removed = module
                .rfind(".module.")
                .and_then(|i| module.get(..i))
                .is_some_and(removed);
            if removed(module) && !parent_removed {
                self.add_finding(Finding {
                    rule: rules::MODULE_REMOVED.into(),
                    severity: Severity::Info,
                    address: Some(module.clone()),
                    message: format!(
                        "every instance in the module is destroyed ({gone}): its module call was \
                         removed or emptied"
                    ),
                });
            }
        }
        let limits = self.config.mass_destruction;
        let (destroyed, existing) = (self.summary.destroyed, self.summary.existing);
        let share = if existing > 0 {
            destroyed as f64 * 100.0 / existing as f64
        } else {
            0.0
        };
        let by_count = destroyed > limits.max_count;
        let by_share = existing >= limits.min_instances && share > limits.max_percent;
        if destroyed > 0 && (by_count || by_share) {
            self.add_finding(Finding {
                rule: rules::MASS_DESTRUCTION.into(),
                severity: Severity::Review,
                address: None,
                message: format!(
                    "the plan destroys {destroyed} of {existing} existing instance(s) ({share:.0}%), \
                     above the limit of {} instance(s) or {}% (mass_destruction in airlock.hcl)",
                    limits.max_count, limits.max_percent
                ),
            });
        }
        if plan.errored == Some(true) {
            self.add_finding(Finding {
                rule: rules::PLAN_ERRORED.into(),
                severity: Severity::Review,
                address: None,
                message:
                    "the plan is errored (Terraform reported errors, e.g. prevent_destroy); it \
                          is partial and cannot be applied"
                        .into(),
            });
        }
        let mut findings = self.findings;
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        Decision {
            verdict: self.verdict,
            summary: self.summary,
            findings,
            findings_omitted: self.omitted,
            plan,
            stack: self.stack.map(|s| s.name.clone()),
        }
    }
}

fn verb(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Delete => "deletes",
        ChangeKind::ReplaceDestroyFirst => "replaces (destroys, then creates)",
        ChangeKind::ReplaceCreateFirst => "replaces (creates, then destroys)",
        ChangeKind::ForgetReplace => "forgets and recreates",
        _ => "changes",
    }
}

fn reason_in_words(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "replace_because_tainted" => "replaced because the object is tainted",
        "replace_because_cannot_update" => {
            "replaced because an attribute cannot be updated in place"
        }
        "replace_by_request" => "replaced by request (-replace)",
        "replace_by_triggers" => "replaced by replace_triggered_by",
        "delete_because_no_resource_config" => "its resource block was removed",
        "delete_because_wrong_repetition" => "count/for_each was added or removed",
        "delete_because_count_index" => "its count index is out of range",
        "delete_because_each_key" => "its for_each key was removed",
        "delete_because_no_module" => "its module call was removed",
        "delete_because_no_move_target" => "the target of a moved block does not exist",
        "delete_because_enabled_false" => "its `enabled` meta-argument is false",
        "forgot_because_lifecycle_destroy_in_state"
        | "forgot_because_lifecycle_destroy_in_config" => {
            "lifecycle destroy = false: forgotten, not destroyed"
        }
        "read_because_config_unknown" => "read during apply: its configuration is not known yet",
        "read_because_dependency_pending" => "read during apply: a dependency has pending changes",
        "read_because_check_nested" => "read during apply: nested in a check block",
        _ => return None,
    })
}

/// Renders a replace path such as `["settings", 0, "tier"]` as `settings[0].tier`.
fn render_path(steps: &[Value]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Value::String(s) if out.is_empty() => out.push_str(&one_line(s)),
            Value::String(s) => {
                out.push('.');
                out.push_str(&one_line(s));
            }
            Value::Number(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
            _ => out.push_str("[?]"),
        }
    }
    out
}

/// Keeps untrusted text on one line and short (addresses and reasons come from input).
pub fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}

/// The parsed values a protection rule needs (only built for catalogue types).
struct Values {
    before: Option<Value>,
    after: Option<Value>,
    after_unknown: Value,
    before_sensitive: Value,
    after_sensitive: Value,
}

impl Values {
    fn of(rc: &ResourceChange) -> Values {
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

fn already_off(protections: &[Protection], v: &Values) -> Vec<String> {
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

fn protection_findings(
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
        let Some(after) = &v.after else { continue };
        if !matches!(
            kind,
            ChangeKind::Update | ChangeKind::ReplaceDestroyFirst | ChangeKind::ReplaceCreateFirst
        ) || done.contains(&p.attribute)
            || marked(&v.after_unknown, p)
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use serde_json::json;

    fn rc(
        address: &str,
        ty: &str,
        actions: &[&str],
        before: Value,
        after: Value,
    ) -> ResourceChange {
        let v = json!({
            "address": address, "mode": "managed", "type": ty, "name": "x",
            "change": {"actions": actions, "before": before, "after": after,
                       "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}}
        });
        serde_json::from_value(v).unwrap()
    }

    fn run(config: &Config, changes: &[ResourceChange]) -> Decision {
        let mut a = Analyzer::new(config, None);
        for c in changes {
            a.change(c);
        }
        a.finish(PlanInfo::default())
    }

    #[test]
    fn a_review_over_the_findings_cap_keeps_a_finding_that_says_why() {
        let config = Config::default();
        let mut a = Analyzer::new(&config, None);
        for i in 0..MAX_FINDINGS + 3 {
            a.add_finding(Finding {
                rule: "note".into(),
                severity: Severity::Info,
                address: Some(format!("a.b[{i}]")),
                message: "informational".into(),
            });
        }
        a.add_finding(Finding {
            rule: "why".into(),
            severity: Severity::Review,
            address: None,
            message: "the reason".into(),
        });
        let d = a.finish(PlanInfo::default());
        assert_eq!(d.verdict, Verdict::Review);
        assert_eq!(d.findings.len(), MAX_FINDINGS);
        assert_eq!(d.findings[0].rule, "why", "the reason is kept, first");
    }

    fn rules_of(d: &Decision) -> Vec<&str> {
        d.findings.iter().map(|f| f.rule.as_str()).collect()
    }

    #[test]
    fn deleting_a_critical_resource_is_denied() {
        let d = run(
            &Config::default(),
            &[rc(
                "aws_db_instance.main",
                "aws_db_instance",
                &["delete"],
                json!({"skip_final_snapshot": true}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(rules_of(&d), vec![rules::CRITICAL_DESTROY]);
        assert!(
            d.findings[0].message.contains("skip_final_snapshot = true"),
            "{}",
            d.findings[0].message
        );
    }

    #[test]
    fn every_destroying_kind_of_a_critical_resource_is_denied() {
        for actions in [
            &["delete"][..],
            &["delete", "create"],
            &["create", "delete"],
            &["create", "forget"],
            &["forget", "create"],
        ] {
            let d = run(
                &Config::default(),
                &[rc(
                    "google_storage_bucket.b",
                    "google_storage_bucket",
                    actions,
                    json!({}),
                    json!({}),
                )],
            );
            assert_eq!(d.verdict, Verdict::Deny, "{actions:?}");
        }
        // Forgetting is not destroying.
        let d = run(
            &Config::default(),
            &[rc(
                "google_storage_bucket.b",
                "google_storage_bucket",
                &["forget"],
                json!({}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(rules_of(&d), vec![rules::FORGET]);
    }

    #[test]
    fn an_allow_destroy_that_matches_nothing_is_reported() {
        let c = config::parse(
            "allow_destroy \"aws_db_instance.typo\" {\n  reason = \"r\"\n}\nallow_destroy \"aws_db_instance.old\" {\n  reason = \"r\"\n}\n",
            "airlock.hcl",
        )
        .unwrap();
        let d = run(
            &c,
            &[rc(
                "aws_db_instance.old",
                "aws_db_instance",
                &["delete"],
                json!({}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Review);
        let unused: Vec<_> = d
            .findings
            .iter()
            .filter(|f| f.rule == rules::UNUSED_DECLARATION)
            .map(|f| f.address.clone().unwrap_or_default())
            .collect();
        assert_eq!(unused, ["aws_db_instance.typo"]);
    }

    #[test]
    fn allow_destroy_turns_deny_into_review() {
        let c = config::parse(
            "allow_destroy \"module.legacy.aws_db_instance.old\" {\n  reason = \"decommissioned\"\n}\n",
            "airlock.hcl",
        )
        .unwrap();
        let d = run(
            &c,
            &[rc(
                "module.legacy.aws_db_instance.old",
                "aws_db_instance",
                &["delete"],
                json!({}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Review);
        assert_eq!(rules_of(&d), vec![rules::DECLARED_DESTROY]);
        assert!(d.findings[0].message.contains("decommissioned"));
        assert!(d.findings[0].message.contains("line 1"));
    }

    #[test]
    fn protect_rules_make_resources_critical() {
        let c = config::parse(
            "protect {\n types = [\"aws_vpc\"]\n addresses = [\"module.network.*\"]\n}\n",
            "airlock.hcl",
        )
        .unwrap();
        let d = run(
            &c,
            &[rc(
                "aws_vpc.main",
                "aws_vpc",
                &["delete"],
                json!({}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Deny);
        let d = run(
            &c,
            &[rc(
                "module.network.aws_subnet.a[0]",
                "aws_subnet",
                &["delete"],
                json!({}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(d.findings[0].message.contains("protected by airlock.hcl"));
        let d = run(
            &c,
            &[rc(
                "aws_subnet.a",
                "aws_subnet",
                &["delete"],
                json!({}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Allow);
    }

    #[test]
    fn weakened_protections_need_review() {
        let cases = [
            (
                "aws_db_instance",
                json!({"deletion_protection": true}),
                json!({"deletion_protection": false}),
                "deletion_protection turned off (true → false)",
            ),
            (
                "aws_db_instance",
                json!({"skip_final_snapshot": false}),
                json!({"skip_final_snapshot": true}),
                "skip_final_snapshot turned on",
            ),
            (
                "aws_db_instance",
                json!({"delete_automated_backups": false}),
                json!({"delete_automated_backups": true}),
                "delete_automated_backups turned on",
            ),
            (
                "aws_db_instance",
                json!({"backup_retention_period": 7}),
                json!({"backup_retention_period": 0}),
                "backup_retention_period dropped to zero (7 → 0)",
            ),
            (
                "aws_s3_bucket",
                json!({"force_destroy": false}),
                json!({"force_destroy": true}),
                "force_destroy turned on",
            ),
            (
                "aws_kms_key",
                json!({"deletion_window_in_days": 30}),
                json!({"deletion_window_in_days": 7}),
                "deletion_window_in_days shortened (30 → 7)",
            ),
            (
                "azurerm_key_vault",
                json!({"purge_protection_enabled": true}),
                json!({"purge_protection_enabled": false}),
                "purge_protection_enabled turned off",
            ),
            (
                "azurerm_key_vault",
                json!({"soft_delete_retention_days": 90}),
                json!({"soft_delete_retention_days": 7}),
                "soft_delete_retention_days shortened",
            ),
            (
                "google_sql_database_instance",
                json!({"settings": [{"deletion_protection_enabled": true}]}),
                json!({"settings": [{"deletion_protection_enabled": false}]}),
                "settings.deletion_protection_enabled turned off",
            ),
            (
                "google_project",
                json!({"deletion_policy": "PREVENT"}),
                json!({"deletion_policy": "DELETE"}),
                "deletion_policy no longer PREVENT",
            ),
            (
                "aws_instance",
                json!({"disable_api_termination": true}),
                json!({"disable_api_termination": false}),
                "disable_api_termination turned off",
            ),
            (
                "aws_dynamodb_table",
                json!({"point_in_time_recovery": [{"enabled": true}]}),
                json!({"point_in_time_recovery": [{"enabled": false}]}),
                "point_in_time_recovery.enabled turned off",
            ),
        ];
        for (ty, before, after, text) in cases {
            let d = run(
                &Config::default(),
                &[rc(&format!("{ty}.x"), ty, &["update"], before, after)],
            );
            assert_eq!(d.verdict, Verdict::Review, "{ty} {text}");
            assert_eq!(d.findings[0].rule, rules::PROTECTION_WEAKENED);
            assert!(
                d.findings[0].message.contains(text),
                "{} vs {text}",
                d.findings[0].message
            );
        }
        // Strengthening, unchanged, or unknown-after is fine.
        for (before, after) in [
            (
                json!({"deletion_protection": false}),
                json!({"deletion_protection": true}),
            ),
            (
                json!({"deletion_protection": true}),
                json!({"deletion_protection": true}),
            ),
            (
                json!({"backup_retention_period": 7}),
                json!({"backup_retention_period": 14}),
            ),
        ] {
            let d = run(
                &Config::default(),
                &[rc(
                    "aws_db_instance.x",
                    "aws_db_instance",
                    &["update"],
                    before,
                    after,
                )],
            );
            assert_eq!(d.verdict, Verdict::Allow);
        }
        let mut unknown = rc(
            "aws_db_instance.x",
            "aws_db_instance",
            &["update"],
            json!({"deletion_protection": true}),
            json!({}),
        );
        unknown.change.after_unknown =
            Some(serde_json::value::to_raw_value(&json!({"deletion_protection": true})).unwrap());
        assert_eq!(run(&Config::default(), &[unknown]).verdict, Verdict::Allow);
    }

    #[test]
    fn sensitive_protection_values_are_not_shown() {
        let mut c = rc(
            "aws_db_instance.x",
            "aws_db_instance",
            &["update"],
            json!({"backup_retention_period": 7}),
            json!({"backup_retention_period": 0}),
        );
        c.change.after_sensitive = Some(
            serde_json::value::to_raw_value(&json!({"backup_retention_period": true})).unwrap(),
        );
        let d = run(&Config::default(), &[c]);
        assert_eq!(
            d.findings[0].message,
            "protection weakened: backup_retention_period dropped to zero"
        );
    }

    #[test]
    fn deleting_a_protected_resource_is_flagged_before_apply() {
        let d = run(
            &Config::default(),
            &[rc(
                "google_container_cluster.gke",
                "google_container_cluster",
                &["delete"],
                json!({"deletion_protection": true}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Deny);
        assert!(rules_of(&d).contains(&rules::PROTECTED_DELETE));
        let d = run(
            &Config::default(),
            &[rc(
                "aws_lb.front",
                "aws_lb",
                &["delete"],
                json!({"enable_deletion_protection": true}),
                Value::Null,
            )],
        );
        assert_eq!(
            d.verdict,
            Verdict::Review,
            "aws_lb is guarded, not critical"
        );
        assert_eq!(rules_of(&d), vec![rules::PROTECTED_DELETE]);
        assert!(d.findings[0]
            .message
            .contains("enable_deletion_protection = true"));
    }

    #[test]
    fn mass_destruction_by_count_and_share() {
        let del = |i: usize| {
            rc(
                &format!("terraform_data.d[{i}]"),
                "terraform_data",
                &["delete"],
                json!({}),
                Value::Null,
            )
        };
        let keep = |i: usize| {
            rc(
                &format!("terraform_data.k[{i}]"),
                "terraform_data",
                &["no-op"],
                json!({}),
                json!({}),
            )
        };
        let changes: Vec<_> = (0..21).map(del).chain((0..100).map(keep)).collect();
        let d = run(&Config::default(), &changes);
        assert_eq!(d.verdict, Verdict::Review);
        assert!(rules_of(&d).contains(&rules::MASS_DESTRUCTION));
        assert_eq!(d.summary.destroyed, 21);
        assert_eq!(d.summary.existing, 121);
        let changes: Vec<_> = (0..20).map(del).chain((0..100).map(keep)).collect();
        assert_eq!(run(&Config::default(), &changes).verdict, Verdict::Allow);
        let changes: Vec<_> = (0..4).map(del).chain((0..8).map(keep)).collect();
        let d = run(&Config::default(), &changes);
        assert!(
            rules_of(&d).contains(&rules::MASS_DESTRUCTION),
            "4 of 12 is over 25%"
        );
        let changes: Vec<_> = (0..4).map(del).chain((0..4).map(keep)).collect();
        assert_eq!(
            run(&Config::default(), &changes).verdict,
            Verdict::Allow,
            "small stack"
        );
        let c = config::parse("mass_destruction {\n max_count = 2\n}\n", "airlock.hcl").unwrap();
        let changes: Vec<_> = (0..3).map(del).collect();
        assert_eq!(run(&c, &changes).verdict, Verdict::Review);
    }

    #[test]
    fn production_stacks_review_any_destroy() {
        let c = config::parse("stack \"prod\" {\n production = true\n}\n", "airlock.hcl").unwrap();
        let mut a = Analyzer::new(&c, c.stack("prod"));
        a.change(&rc(
            "terraform_data.a",
            "terraform_data",
            &["delete"],
            json!({}),
            Value::Null,
        ));
        let d = a.finish(PlanInfo::default());
        assert_eq!(d.verdict, Verdict::Review);
        assert_eq!(rules_of(&d), vec![rules::PRODUCTION_DESTROY]);
        assert_eq!(d.stack.as_deref(), Some("prod"));
    }

    #[test]
    fn signals_are_informational() {
        let mut gone = rc(
            "module.old.terraform_data.a",
            "terraform_data",
            &["delete"],
            json!({}),
            Value::Null,
        );
        gone.action_reason = Some("delete_because_no_module".into());
        gone.module_address = Some("module.old".into());
        let mut key = rc(
            "terraform_data.c[1]",
            "terraform_data",
            &["delete"],
            json!({}),
            Value::Null,
        );
        key.action_reason = Some("delete_because_count_index".into());
        let mut each = rc(
            "terraform_data.e[\"b\"]",
            "terraform_data",
            &["delete"],
            json!({}),
            Value::Null,
        );
        each.action_reason = Some("delete_because_each_key".into());
        let mut req = rc(
            "terraform_data.g",
            "terraform_data",
            &["delete", "create"],
            json!({}),
            json!({}),
        );
        req.action_reason = Some("replace_by_request".into());
        let mut taint = rc(
            "terraform_data.f",
            "terraform_data",
            &["delete", "create"],
            json!({}),
            json!({}),
        );
        taint.action_reason = Some("replace_because_tainted".into());
        let d = run(&Config::default(), &[gone, key, each, req, taint]);
        assert_eq!(d.verdict, Verdict::Allow);
        let mut r = rules_of(&d);
        r.sort();
        assert_eq!(
            r,
            vec![
                rules::INSTANCE_KEY_REMOVED,
                rules::INSTANCE_KEY_REMOVED,
                rules::MODULE_REMOVED,
                rules::REPLACE_REQUESTED,
                rules::TAINTED_REPLACE
            ]
        );
    }

    #[test]
    fn unknown_actions_and_errored_plans_need_review() {
        let d = run(
            &Config::default(),
            &[rc("a.b", "a", &["explode"], json!({}), json!({}))],
        );
        assert_eq!(d.verdict, Verdict::Review);
        let cfg = Config::default();
        let a = Analyzer::new(&cfg, None);
        let d = a.finish(PlanInfo {
            errored: Some(true),
            ..PlanInfo::default()
        });
        assert_eq!(d.verdict, Verdict::Review);
        assert_eq!(rules_of(&d), vec![rules::PLAN_ERRORED]);
    }

    #[test]
    fn findings_are_capped_but_counted() {
        let changes: Vec<_> = (0..MAX_FINDINGS + 5)
            .map(|i| {
                rc(
                    &format!("aws_s3_bucket.b[{i}]"),
                    "aws_s3_bucket",
                    &["delete"],
                    json!({}),
                    Value::Null,
                )
            })
            .collect();
        let d = run(&Config::default(), &changes);
        assert_eq!(d.findings.len(), MAX_FINDINGS);
        assert_eq!(
            d.findings_omitted, 6,
            "5 deletes + the mass-destruction finding"
        );
        assert_eq!(
            d.summary.findings_by_severity["deny"],
            MAX_FINDINGS as u64 + 5
        );
        assert_eq!(d.verdict, Verdict::Deny);
    }

    #[test]
    fn replace_paths_and_reasons_are_reported() {
        let mut c = rc(
            "terraform_data.d",
            "terraform_data",
            &["delete", "create"],
            json!({}),
            json!({}),
        );
        c.change.replace_paths = Some(vec![
            vec![json!("triggers_replace")],
            vec![json!("settings"), json!(0), json!("tier")],
        ]);
        c.action_reason = Some("replace_because_cannot_update".into());
        let cfg = Config::default();
        let mut a = Analyzer::new(&cfg, None);
        let r = a.change(&c);
        assert_eq!(
            r.replace_paths,
            vec!["triggers_replace", "settings[0].tier"]
        );
        assert_eq!(
            r.reasons,
            vec!["replaced because an attribute cannot be updated in place"]
        );
        assert_eq!(r.kind, ChangeKind::ReplaceDestroyFirst);
    }

    #[test]
    fn outermost_removed_module_is_reported_once() {
        let gone = |addr: &str, module: &str| {
            let mut c = rc(addr, "terraform_data", &["delete"], json!({}), Value::Null);
            c.action_reason = Some("delete_because_no_resource_config".into());
            c.module_address = Some(module.into());
            c
        };
        let mut kept = rc(
            "module.keep.terraform_data.z",
            "terraform_data",
            &["no-op"],
            json!({}),
            json!({}),
        );
        kept.module_address = Some("module.keep".into());
        let d = run(
            &Config::default(),
            &[
                gone("module.a.terraform_data.x", "module.a"),
                gone("module.a.module.b.terraform_data.y", "module.a.module.b"),
                gone("module.keep.terraform_data.w", "module.keep"),
                kept,
            ],
        );
        let removed: Vec<_> = d
            .findings
            .iter()
            .filter(|f| f.rule == rules::MODULE_REMOVED)
            .map(|f| f.address.clone().unwrap_or_default())
            .collect();
        assert_eq!(removed, vec!["module.a"]);
    }
}
