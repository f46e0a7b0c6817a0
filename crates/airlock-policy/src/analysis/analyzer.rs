//! [`Analyzer`]: judges each resource change as it streams past and turns the findings into a
//! [`Decision`].

use std::collections::BTreeMap;

use super::protection::{already_off, protection_findings, Values};
use super::words::{one_line, reason_in_words, render_path, verb};
use super::{rules, ChangeReport, Decision, Finding, Severity, Summary, Verdict, MAX_FINDINGS};
use crate::catalogue::{self, Class};
use crate::config::{self, Config, StackConfig};
use crate::plan::{ChangeKind, PlanInfo, ResourceChange};

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
    /// The changes are a refresh-only plan's drift, which an apply records in the state
    /// ([`Analyzer::accepting_drift`]).
    drift: bool,
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
            drift: false,
        }
    }

    /// Judges the changes as drift that a refresh-only apply accepts into the state: the same
    /// rules as for a plan, in the state's terms. A drifted delete drops the instance from the
    /// state, which is judged as destroying it there (`critical-destroy` unless `allow_destroy`
    /// declares it, production and mass-destruction rules alike); a protection weakened outside
    /// Terraform is `protection-weakened`. The rules about what a provider does when it deletes
    /// (`protected-delete`, `backups-deleted`) do not apply: accepting drift calls no provider.
    pub fn accepting_drift(mut self) -> Self {
        self.drift = true;
        self
    }

    /// The verb for a change of `kind` in a finding's message.
    fn verb(&self, kind: ChangeKind) -> &'static str {
        if self.drift && kind.destroys() {
            "drops from the state (deleted outside Terraform)"
        } else {
            verb(kind)
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
            let verb = self.verb(kind);
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
            let drift = self.drift;
            found.extend(
                protection_findings(rc, kind, &e.protections, v)
                    .into_iter()
                    .filter(|f| !drift || f.rule == rules::PROTECTION_WEAKENED)
                    .map(|f| match drift {
                        true => Finding {
                            message: format!("{} outside Terraform", f.message),
                            ..f
                        },
                        false => f,
                    }),
            );
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
                    message: format!("{} in production stack \"{}\"", self.verb(kind), stack.name),
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
