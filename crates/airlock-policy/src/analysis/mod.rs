//! The rules: each resource change is judged as it streams past, findings accumulate, and
//! [`Analyzer::finish`] turns them into a [`Decision`]. Memory stays bounded: per-change data
//! is handed back to the caller ([`ChangeReport`]) and only a capped list of findings is kept.
//!
//! The module is split along its seams: the result types live here, [`rules`] names the rule
//! identifiers, `analyzer` holds the streaming [`Analyzer`], `protection` the protection-attribute
//! rules (weakened, protected delete) and `words` the text helpers ([`one_line`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::plan::{ChangeKind, PlanInfo};

mod analyzer;
pub(crate) mod protection;
pub mod rules;
mod words;

pub use analyzer::Analyzer;
pub use words::one_line;

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

#[cfg(test)]
mod tests;
