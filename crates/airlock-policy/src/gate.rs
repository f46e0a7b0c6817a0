//! The one plan gate. `airlock check` and the server's judgement of uploaded runs both call
//! [`judge`]: the built-in rules, the repository's `airlock.hcl` and Rego, and the server's own
//! Rego policy sets, into one [`Decision`]; the report both write is [`GateReport`]
//! (`docs/check-json-schema.md`), serialised from these structs and nowhere else.
//!
//! Without Rego the plan streams (memory bounded by the largest change); Rego needs the whole
//! plan as its input, so with any Rego the plan is held in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::io::BufRead;

use serde::Serialize;

use crate::analysis::{Analyzer, ChangeReport, Decision, Finding, Severity};
use crate::config::{Config, StackConfig};
use crate::plan::{self, PlanError, PlanInfo, ResourceChange};
use crate::rego::{RegoError, RegoPolicies, RegoRunner};

/// Version of the JSON report schema (`docs/check-json-schema.md`).
pub const SCHEMA_VERSION: u32 = 1;
/// At most this many files in one server policy set.
pub const MAX_SET_FILES: usize = 200;
/// At most this many bytes of Rego (all files together) in one server policy set.
pub const MAX_SET_BYTES: usize = 1024 * 1024;
/// Prefix of the rule id of a finding from a server policy set: `server-rego:<set>:<rule>`.
pub const SERVER_REGO_PREFIX: &str = "server-rego:";

/// A Rego policy set installed on the server (`airlock policy add`) for the stacks its glob
/// matches. Evaluated in its own engine: nothing the repository sends can redefine its rules.
#[derive(Debug, Clone)]
pub struct ServerPolicySet {
    /// The set's id, named in its findings' rule ids.
    pub id: String,
    /// `(file name, Rego source)` pairs.
    pub files: Vec<(String, String)>,
}

/// Everything a plan is judged against besides the plan itself.
pub struct GateInput<'c> {
    /// The repository's `airlock.hcl` (or the defaults).
    pub config: &'c Config,
    /// The `stack` block of `config` the plan belongs to.
    pub stack: Option<&'c StackConfig>,
    /// The repository's Rego policies, `(file name, source)`; empty for none.
    pub rego: &'c [(String, String)],
    /// Where the repository's Rego runs: it is the planner's text (see [`crate::rego`]).
    pub rego_runner: &'c dyn RegoRunner,
    /// The server's policy sets whose glob matches the stack.
    pub server_sets: &'c [ServerPolicySet],
    /// The plan is a refresh-only plan (as its binary says): its `resource_drift` is what an
    /// apply records, judged as the changes ([`Analyzer::accepting_drift`]).
    pub refresh_only: bool,
}

/// Where the plan JSON comes from.
pub enum PlanSource<'a> {
    /// Already in memory (the server's upload).
    Bytes(&'a [u8]),
    /// A stream (a file, stdin, `terraform show -json`): read as it comes when no Rego runs.
    Stream(&'a mut dyn BufRead),
}

/// What a caller does with each judged change, and the findings it adds of its own (the
/// server's protections, say) before the decision is made.
pub trait Observer {
    /// One resource change as read, and the gate's report on it.
    fn change(&mut self, rc: &ResourceChange, report: &ChangeReport);
    /// Findings to add once every change has been seen.
    fn findings(&mut self) -> Vec<Finding> {
        Vec::new()
    }
}

/// Why a plan could not be judged at all (a judged plan is a [`Decision`], never an error).
#[derive(Debug)]
pub enum GateError {
    /// The plan JSON does not read.
    Plan(PlanError),
    /// The repository's Rego (`set` is `None`) or a server set does not load or evaluate.
    Rego {
        /// The server set's id, or `None` for the repository's policies.
        set: Option<String>,
        /// What went wrong.
        error: RegoError,
    },
    /// A server policy set exceeds [`MAX_SET_FILES`] or [`MAX_SET_BYTES`].
    TooLarge(String),
    /// Reading the plan failed.
    Io(std::io::Error),
}

impl fmt::Display for GateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateError::Plan(e) => write!(f, "{e}"),
            GateError::Rego { set: None, error } => write!(f, "{error}"),
            GateError::Rego {
                set: Some(id),
                error,
            } => write!(f, "server policy set {id}: {error}"),
            GateError::TooLarge(m) => write!(f, "{m}"),
            GateError::Io(e) => write!(f, "reading the plan: {e}"),
        }
    }
}

impl std::error::Error for GateError {}

/// Checks the bounds of one server policy set: at most [`MAX_SET_FILES`] files of
/// [`MAX_SET_BYTES`] in all, and at least one file.
pub fn check_set_size(files: &[(String, String)]) -> Result<(), GateError> {
    let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();
    if files.is_empty() || files.len() > MAX_SET_FILES || bytes > MAX_SET_BYTES {
        return Err(GateError::TooLarge(format!(
            "a policy set holds 1 to {MAX_SET_FILES} .rego files of at most {} KiB in all (this one: {} file(s), {} bytes)",
            MAX_SET_BYTES / 1024,
            files.len(),
            bytes
        )));
    }
    Ok(())
}

/// Judges one plan: reads it (streaming when no Rego runs), hands every change to `observer`,
/// evaluates the repository's Rego and every server policy set, and decides.
///
/// **Invariant:** a server set's findings keep their severity whatever the repository's
/// configuration or Rego says: each set runs in its own engine, and no `airlock.hcl` setting
/// lowers a finding added here.
pub fn judge(
    source: PlanSource<'_>,
    input: &GateInput<'_>,
    observer: &mut dyn Observer,
) -> Result<Decision, GateError> {
    // Load every server set before reading the plan: a set that does not parse is an error
    // whatever the plan. Sets are then evaluated where the repository's policies are
    // (`input.rego_runner`: on the server, a child process with bounded memory): the plan's
    // text is the planner's, and an engine holds ~27 times its size.
    for set in input.server_sets {
        check_set_size(&set.files)?;
        RegoPolicies::load(&set.files).map_err(|error| GateError::Rego {
            set: Some(set.id.clone()),
            error,
        })?;
    }
    let mut analyzer = Analyzer::new(input.config, input.stack);
    let section = match input.refresh_only {
        true => {
            analyzer = analyzer.accepting_drift();
            plan::Section::ResourceDrift
        }
        false => plan::Section::ResourceChanges,
    };
    let mut on_change = |rc: ResourceChange| {
        let report = analyzer.change(&rc);
        observer.change(&rc, &report);
    };
    let needs_text = !input.rego.is_empty() || !input.server_sets.is_empty();
    let mut owned = Vec::new();
    let (info, text): (PlanInfo, Option<String>) = match source {
        PlanSource::Stream(reader) if !needs_text => (
            plan::read_plan_section(reader, section, &mut on_change).map_err(GateError::Plan)?,
            None,
        ),
        source => {
            let bytes: &[u8] = match source {
                PlanSource::Bytes(b) => b,
                PlanSource::Stream(reader) => {
                    reader.read_to_end(&mut owned).map_err(GateError::Io)?;
                    &owned
                }
            };
            let info =
                plan::read_plan_section(bytes, section, &mut on_change).map_err(GateError::Plan)?;
            let text = needs_text
                .then(|| plan::plan_text(bytes).map(|(t, _)| t))
                .transpose()
                .map_err(GateError::Plan)?;
            (info, text)
        }
    };
    drop(owned);
    for f in observer.findings() {
        analyzer.add_finding(f);
    }
    if let Some(text) = &text {
        if !input.rego.is_empty() {
            let found = input
                .rego_runner
                .run(input.rego, text)
                .map_err(|error| GateError::Rego { set: None, error })?;
            for f in found {
                analyzer.add_finding(f);
            }
        }
        for set in input.server_sets {
            let id = &set.id;
            let found =
                input
                    .rego_runner
                    .run(&set.files, text)
                    .map_err(|error| GateError::Rego {
                        set: Some(id.clone()),
                        error,
                    })?;
            for f in found {
                let rule = f.rule.strip_prefix("rego:").unwrap_or(&f.rule);
                analyzer.add_finding(Finding {
                    rule: format!("{SERVER_REGO_PREFIX}{id}:{rule}"),
                    ..f
                });
            }
        }
    }
    Ok(analyzer.finish(info))
}

/// One element of the report's `changes[]` (keys in alphabetical order).
#[derive(Debug, Clone, Serialize)]
pub struct ChangeEntry {
    /// Terraform's `action_reason`.
    pub action_reason: Option<String>,
    /// Terraform's `change.actions`.
    pub actions: Vec<String>,
    /// Resource instance address.
    pub address: String,
    /// Critical type (catalogue or `protect`).
    pub critical: bool,
    /// Deposed object key.
    pub deposed: Option<String>,
    /// Deletes, replaces or forgets an existing object.
    pub destructive: bool,
    /// `change.importing` is set.
    pub import: bool,
    /// Classification of `actions`.
    pub kind: &'static str,
    /// `managed` or `data`.
    pub mode: String,
    /// `previous_address` of a `moved` block.
    pub moved_from: Option<String>,
    /// The action reason in words, then each finding's message for this change.
    pub reasons: Vec<String>,
    /// Attributes forcing the replacement.
    pub replace_paths: Vec<String>,
    /// The most severe finding for this change.
    pub severity: Option<&'static str>,
    /// Resource type.
    #[serde(rename = "type")]
    pub resource_type: String,
}

impl ChangeEntry {
    /// The entry for a change, or `None` for a plain no-op (the report does not list those).
    pub fn of(c: &ChangeReport) -> Option<Self> {
        c.is_interesting().then(|| ChangeEntry {
            action_reason: c.action_reason.clone(),
            actions: c.actions.clone(),
            address: c.address.clone(),
            critical: c.critical,
            deposed: c.deposed.clone(),
            destructive: c.is_destructive(),
            import: c.import,
            kind: c.kind.as_str(),
            mode: c.mode.clone(),
            moved_from: c.moved_from.clone(),
            reasons: c.reasons.clone(),
            replace_paths: c.replace_paths.clone(),
            severity: c.severity.map(Severity::as_str),
            resource_type: c.resource_type.clone(),
        })
    }
}

/// One element of `findings[]`.
#[derive(Debug, Clone, Serialize)]
pub struct FindingEntry {
    /// Resource or module address, `None` for plan-wide findings.
    pub address: Option<String>,
    /// One line.
    pub message: String,
    /// Rule id.
    pub rule: String,
    /// `deny`, `review` or `info`.
    pub severity: &'static str,
}

/// The report's `plan` object.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    /// `applyable`.
    pub applyable: Option<bool>,
    /// `complete`.
    pub complete: Option<bool>,
    /// `errored`.
    pub errored: Option<bool>,
    /// `format_version`.
    pub format_version: Option<String>,
    /// Entries of `resource_changes` read.
    pub resource_changes: usize,
    /// `terraform_version`.
    pub terraform_version: Option<String>,
}

/// Every member of the report after `changes[]`, in alphabetical order (`decision` happens to
/// be first alphabetically; the streaming writer puts it after `changes[]` all the same).
#[derive(Debug, Clone, Serialize)]
pub struct ReportTail {
    /// `allow`, `review` or `deny`.
    pub decision: &'static str,
    /// Most severe first, at most 1,000.
    pub findings: Vec<FindingEntry>,
    /// `deny`, `review`, `info` counts before the cap.
    pub findings_by_severity: BTreeMap<&'static str, u64>,
    /// Findings beyond the cap.
    pub findings_omitted: u64,
    /// Facts about the plan document.
    pub plan: PlanEntry,
    /// The `stack` block the plan was judged as.
    pub stack: Option<String>,
    /// Counts per kind plus `import`, `move`, `total`, `destroyed`, `existing`.
    pub summary: BTreeMap<&'static str, u64>,
    /// Input oddities that did not stop the read.
    pub warnings: Vec<String>,
}

impl ReportTail {
    /// The members for a decision.
    pub fn of(d: &Decision) -> Self {
        let mut summary = d.summary.by_kind.clone();
        summary.insert("import", d.summary.import);
        summary.insert("move", d.summary.moved);
        summary.insert("total", d.summary.total);
        summary.insert("destroyed", d.summary.destroyed);
        summary.insert("existing", d.summary.existing);
        ReportTail {
            decision: d.verdict.as_str(),
            findings: d
                .findings
                .iter()
                .map(|f| FindingEntry {
                    address: f.address.clone(),
                    message: f.message.clone(),
                    rule: f.rule.clone(),
                    severity: f.severity.as_str(),
                })
                .collect(),
            findings_by_severity: d.summary.findings_by_severity.clone(),
            findings_omitted: d.findings_omitted,
            plan: PlanEntry {
                applyable: d.plan.applyable,
                complete: d.plan.complete,
                errored: d.plan.errored,
                format_version: d.plan.format_version.clone(),
                resource_changes: d.plan.resource_changes,
                terraform_version: d.plan.terraform_version.clone(),
            },
            stack: d.stack.clone(),
            summary,
            warnings: d.plan.warnings.iter().map(ToString::to_string).collect(),
        }
    }
}

/// The whole report, as the server stores it with a run (`airlock check --format json` writes
/// the same members, streaming `changes[]`).
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Every change except plain no-ops, in document order.
    pub changes: Vec<ChangeEntry>,
    /// The rest.
    #[serde(flatten)]
    pub tail: ReportTail,
}

impl GateReport {
    /// The report of a decision and the changes listed while judging it.
    pub fn new(changes: Vec<ChangeEntry>, d: &Decision) -> Self {
        GateReport {
            schema_version: SCHEMA_VERSION,
            changes,
            tail: ReportTail::of(d),
        }
    }
}

/// An [`Observer`] that keeps the report's change entries.
#[derive(Default)]
pub struct Collect(pub Vec<ChangeEntry>);

impl Observer for Collect {
    fn change(&mut self, _: &ResourceChange, report: &ChangeReport) {
        self.0.extend(ChangeEntry::of(report));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::Verdict;
    use std::collections::BTreeSet;

    const PLAN: &str = r#"{"format_version":"1.2","terraform_version":"1.11.4","planned_values":{},
      "resource_changes":[
       {"address":"terraform_data.a","mode":"managed","type":"terraform_data","name":"a",
        "change":{"actions":["delete"],"before":{"input":"secret-ish"},"after":null}},
       {"address":"terraform_data.n","mode":"managed","type":"terraform_data","name":"n",
        "change":{"actions":["no-op"],"before":{},"after":{}}}]}"#;

    const DENY_DELETES: &str = r#"package main
deny contains msg if {
  some rc in input.resource_changes
  "delete" in rc.change.actions
  msg := sprintf("%s is deleted", [rc.address])
}
"#;
    const ALLOW_ALL: &str = "package main\n\ndeny := set()\nwarn := set()\n";

    fn run(
        config: &Config,
        rego: &[(String, String)],
        sets: &[ServerPolicySet],
    ) -> (Decision, GateReport) {
        let input = GateInput {
            config,
            stack: None,
            rego,
            rego_runner: &crate::rego::InProcess,
            server_sets: sets,
            refresh_only: false,
        };
        let mut seen = Collect::default();
        let d = judge(PlanSource::Bytes(PLAN.as_bytes()), &input, &mut seen).unwrap();
        let report = GateReport::new(seen.0, &d);
        (d, report)
    }

    fn set(text: &str) -> ServerPolicySet {
        ServerPolicySet {
            id: "pol_1".into(),
            files: vec![("org.rego".into(), text.into())],
        }
    }

    #[test]
    fn server_set_findings_are_named_and_kept_whatever_the_repository_says() {
        // The repository's Rego defines the same package and rules, allowing everything, and
        // its airlock.hcl is as loose as it gets: the server set's deny still decides.
        let loose = crate::config::parse(
            "mass_destruction {\n  max_count = 1000\n  max_percent = 100\n}\nallow_destroy \"terraform_data.a\" {\n  reason = \"fine\"\n}\n",
            "airlock.hcl",
        )
        .unwrap();
        let repo = vec![("policy/allow.rego".to_string(), ALLOW_ALL.to_string())];
        let (d, report) = run(&loose, &repo, &[set(DENY_DELETES)]);
        assert_eq!(d.verdict, Verdict::Deny);
        let f = d
            .findings
            .iter()
            .find(|f| f.severity == Severity::Deny)
            .unwrap();
        assert_eq!(f.rule, "server-rego:pol_1:main.deny");
        assert_eq!(f.message, "terraform_data.a is deleted");
        assert_eq!(report.tail.decision, "deny");
        // Without the server set the same plan is allowed.
        let (d, _) = run(&loose, &repo, &[]);
        assert_eq!(d.verdict, Verdict::Allow);
    }

    #[test]
    fn a_broken_set_is_an_error_naming_it_and_sizes_are_bounded() {
        let e = judge(
            PlanSource::Bytes(PLAN.as_bytes()),
            &GateInput {
                config: &Config::default(),
                stack: None,
                rego: &[],
                rego_runner: &crate::rego::InProcess,
                server_sets: &[set("package main\n deny {{{")],
                refresh_only: false,
            },
            &mut Collect::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("server policy set pol_1:"), "{e}");
        let many: Vec<(String, String)> = (0..=MAX_SET_FILES)
            .map(|i| (format!("{i}.rego"), "package main\n".to_string()))
            .collect();
        assert!(check_set_size(&many).is_err());
        assert!(check_set_size(&[]).is_err());
        let big = vec![("a.rego".to_string(), "#".repeat(MAX_SET_BYTES + 1))];
        assert!(check_set_size(&big).is_err());
        assert!(check_set_size(&many[..MAX_SET_FILES]).is_ok());
    }

    /// A refresh-only plan (as Terraform 1.11 writes its JSON: no `resource_changes`): the
    /// database was deleted outside Terraform, the load balancer's protection turned off.
    const REFRESH_ONLY: &str = r#"{"format_version":"1.2","terraform_version":"1.11.4","planned_values":{},
      "resource_drift":[
       {"address":"aws_db_instance.main","mode":"managed","type":"aws_db_instance","name":"main",
        "change":{"actions":["delete"],"before":{"identifier":"prod-db","deletion_protection":true,"delete_automated_backups":true,"backup_retention_period":7},"after":null,"before_sensitive":{},"after_sensitive":false}},
       {"address":"aws_lb.front","mode":"managed","type":"aws_lb","name":"front",
        "change":{"actions":["update"],"before":{"name":"front","enable_deletion_protection":true},"after":{"name":"front","enable_deletion_protection":false},"after_unknown":{},"before_sensitive":{},"after_sensitive":{}}}],
      "output_changes":{},"applyable":true,"complete":true,"errored":false}"#;

    #[test]
    fn a_refresh_only_plan_is_judged_by_its_drift_with_the_same_rules() {
        let judge_drift = |config: &Config, refresh_only: bool| {
            let mut c = Collect::default();
            let input = GateInput {
                config,
                stack: None,
                rego: &[],
                rego_runner: &crate::rego::InProcess,
                server_sets: &[],
                refresh_only,
            };
            let d = judge(PlanSource::Bytes(REFRESH_ONLY.as_bytes()), &input, &mut c).unwrap();
            (d, c.0)
        };
        // Read as a normal plan, it changes nothing.
        let (d, changes) = judge_drift(&Config::default(), false);
        assert_eq!(d.verdict, Verdict::Allow);
        assert!(changes.is_empty());
        // Read as what it is: dropping the database from the state is destroying it there.
        let (d, changes) = judge_drift(&Config::default(), true);
        assert_eq!(d.verdict, Verdict::Deny);
        let rules: BTreeSet<&str> = d.findings.iter().map(|f| f.rule.as_str()).collect();
        assert_eq!(
            rules,
            BTreeSet::from(["critical-destroy", "protection-weakened"]),
            "{:?}",
            d.findings
        );
        let db = d
            .findings
            .iter()
            .find(|f| f.rule == "critical-destroy")
            .unwrap();
        assert!(
            db.message.starts_with(
                "drops from the state (deleted outside Terraform) critical aws_db_instance"
            ),
            "{}",
            db.message
        );
        let lb = d
            .findings
            .iter()
            .find(|f| f.rule == "protection-weakened")
            .unwrap();
        assert!(lb.message.ends_with("outside Terraform"), "{}", lb.message);
        assert_eq!(changes.len(), 2);
        assert!(changes
            .iter()
            .any(|c| c.address == "aws_db_instance.main" && c.destructive));
        assert_eq!(d.summary.destroyed, 1);
        // Declared in the reviewed airlock.hcl, as a destroy would be: review.
        let cfg = crate::config::parse(
            "allow_destroy \"aws_db_instance.main\" {\n  reason = \"deleted by hand in the incident; restored elsewhere\"\n}\n",
            "airlock.hcl",
        )
        .unwrap();
        let (d, _) = judge_drift(&cfg, true);
        assert_eq!(d.verdict, Verdict::Review);
        assert!(d.findings.iter().any(|f| f.rule == "declared-destroy"));
    }

    #[test]
    fn streaming_and_in_memory_sources_give_the_same_report() {
        let input = GateInput {
            config: &Config::default(),
            stack: None,
            rego: &[],
            rego_runner: &crate::rego::InProcess,
            server_sets: &[],
            refresh_only: false,
        };
        let mut a = Collect::default();
        let da = judge(PlanSource::Bytes(PLAN.as_bytes()), &input, &mut a).unwrap();
        let mut b = Collect::default();
        let mut reader = PLAN.as_bytes();
        let db = judge(PlanSource::Stream(&mut reader), &input, &mut b).unwrap();
        let (a, b) = (GateReport::new(a.0, &da), GateReport::new(b.0, &db));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }

    /// Field names of the first markdown table after `heading` in the schema document.
    fn documented(heading: &str) -> BTreeSet<String> {
        let doc = include_str!("../../../docs/check-json-schema.md");
        let start = doc.find(heading).unwrap() + heading.len();
        let mut fields = BTreeSet::new();
        let rows = doc[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'));
        for line in rows {
            let Some(cell) = line.strip_prefix("| `") else {
                continue;
            };
            let cell = &cell[..cell.find(" |").unwrap()];
            for name in cell.split(", ") {
                fields.insert(name.trim_matches('`').to_string());
            }
        }
        fields
    }

    fn keys(v: &serde_json::Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    /// The report's members are exactly the documented ones; plain no-ops are not listed.
    pub(crate) fn assert_matches_schema(v: &serde_json::Value) {
        assert_eq!(keys(v), documented("## Top level"), "top level");
        for c in v["changes"].as_array().unwrap() {
            assert_eq!(keys(c), documented("## `changes[]`"), "changes[]");
            assert!(
                c["kind"] != "no-op" || c["import"] == true || !c["moved_from"].is_null(),
                "a plain no-op is listed: {c}"
            );
        }
        for f in v["findings"].as_array().unwrap() {
            assert_eq!(keys(f), documented("## `findings[]`"), "findings[]");
        }
    }

    #[test]
    fn the_report_has_exactly_the_documented_fields() {
        let (_, report) = run(&Config::default(), &[], &[set(DENY_DELETES)]);
        let v = serde_json::to_value(&report).unwrap();
        assert_matches_schema(&v);
        assert_eq!(v["changes"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert!(!v.to_string().contains("secret-ish"));
    }
}
