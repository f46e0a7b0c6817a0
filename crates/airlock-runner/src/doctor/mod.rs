//! `airlock doctor`: answers the six questions every Terraform team should be able to answer
//! (where state lives, who can apply, what happens between plan and apply, how visible
//! destructive changes are, how critical resources are protected, whether backups work) from a
//! repository read without executing anything in it, and from facts an airlock server reports.
//!
//! [`scan`] reads the repository (bounded, symbolic links never followed); [`terraform`] judges
//! state, protections and backups from the configuration (critical types and their protection
//! attributes from `airlock_policy::catalogue`, the plan gate's list); [`workflows`] judges who
//! applies and how from CI files; [`server`] turns what the server reports into findings;
//! [`render`] writes text, markdown, JSON and SARIF. Results are data: every finding has a
//! verdict, a file and line, and a fix.

use std::path::Path;

use serde::Serialize;

pub mod config;
pub mod render;
pub mod scan;
pub mod server;
pub mod terraform;
pub mod workflows;

/// How an answer holds: from best to worst (the order is the [`Ord`], so a question's verdict is
/// the `max` of its findings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The workflow or the server enforces it.
    Enforced,
    /// It cannot be known from here.
    Unknown,
    /// It holds only while people are careful.
    Discipline,
    /// Nothing stops the failure.
    Fragile,
}

impl Verdict {
    /// The word used in reports and `--fail-on`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Enforced => "enforced",
            Verdict::Unknown => "unknown",
            Verdict::Discipline => "discipline",
            Verdict::Fragile => "fragile",
        }
    }

    /// The score shown per question: 2 enforced, 1 discipline, 0 fragile, none when unknown.
    pub fn score(self) -> Option<u8> {
        match self {
            Verdict::Enforced => Some(2),
            Verdict::Discipline => Some(1),
            Verdict::Fragile => Some(0),
            Verdict::Unknown => None,
        }
    }
}

/// The six questions, in the essay's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionId {
    /// Where state lives.
    State,
    /// Who can run apply or destroy.
    WhoCanApply,
    /// What happens between plan and execution.
    PlanToApply,
    /// How visible destructive changes are.
    Visibility,
    /// Protections for critical resources.
    Protections,
    /// Whether backups work.
    Backups,
}

impl QuestionId {
    /// Every question, in order.
    pub const ALL: [QuestionId; 6] = [
        QuestionId::State,
        QuestionId::WhoCanApply,
        QuestionId::PlanToApply,
        QuestionId::Visibility,
        QuestionId::Protections,
        QuestionId::Backups,
    ];

    /// The JSON id.
    pub fn as_str(self) -> &'static str {
        match self {
            QuestionId::State => "state",
            QuestionId::WhoCanApply => "who_can_apply",
            QuestionId::PlanToApply => "plan_to_apply",
            QuestionId::Visibility => "visibility",
            QuestionId::Protections => "protections",
            QuestionId::Backups => "backups",
        }
    }

    /// The question as asked.
    pub fn title(self) -> &'static str {
        match self {
            QuestionId::State => "Where does state live?",
            QuestionId::WhoCanApply => "Who can run apply or destroy?",
            QuestionId::PlanToApply => "What happens between plan and execution?",
            QuestionId::Visibility => "How visible are destructive changes?",
            QuestionId::Protections => "What protects critical resources?",
            QuestionId::Backups => "Do backups actually work?",
        }
    }

    /// What to do when the answer is not `enforced`.
    pub fn fix(self) -> &'static str {
        match self {
            QuestionId::State => {
                "Keep every root module's state on an airlock server (`airlock backend-config \
                 STACK > backend.tf`): remote, locked, versioned, and every write checked by the \
                 firewall; delete state files from the tree and list `*.tfstate*` in .gitignore."
            }
            QuestionId::WhoCanApply => {
                "Let only CI apply, and only approved runs: `airlock ci init github|gitlab` writes \
                 a workflow that plans on pull requests and applies with `airlock ci apply` after \
                 merge; give people read or agent tokens, use OIDC instead of long-lived cloud \
                 keys, and give tokens an expiry."
            }
            QuestionId::PlanToApply => {
                "Apply exactly the reviewed plan: governed runs (`airlock plan` uploads it, \
                 approvers `airlock approve`, CI `airlock apply` applies that plan after merge and \
                 refuses any other)."
            }
            QuestionId::Visibility => {
                "Post every plan to its pull request and gate merge on a policy check of the plan \
                 (`airlock ci plan` does both: one sticky comment, destructive changes first, a \
                 required `airlock/STACK` status)."
            }
            QuestionId::Protections => {
                "For each critical resource set the protection attributes listed (deletion \
                 protection on, final snapshots kept, automated backups retained, versioning on, \
                 `force_destroy` off) and `lifecycle { prevent_destroy = true }`; airlock's plan \
                 gate then denies plans that weaken or destroy them."
            }
            QuestionId::Backups => {
                "Back up databases independently of the instance (AWS Backup, GCP Backup and DR, \
                 Azure Backup) and test restores; back up airlock itself with `airlock backup \
                 export` and check each export with `airlock backup verify`."
            }
        }
    }
}

/// One piece of evidence: where, what, and how it bears on the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Evidence {
    /// File relative to the repository root (`airlock server` for server facts).
    pub file: String,
    /// 1-based line; 0 when the file has no line for it (JSON configuration, a whole file).
    pub line: usize,
    /// What was found.
    pub message: String,
    /// What this finding means for the question.
    pub verdict: Verdict,
    /// A stable rule id (`state.local`, `apply.auto_approve`, ...), for SARIF and filtering.
    pub rule: &'static str,
}

/// One question answered.
#[derive(Debug, Clone, Serialize)]
pub struct Question {
    /// Which question.
    pub id: QuestionId,
    /// The question as asked.
    pub title: &'static str,
    /// The worst finding's verdict (`unknown` with no finding).
    pub verdict: Verdict,
    /// 2 enforced, 1 discipline, 0 fragile; `None` for unknown.
    pub score: Option<u8>,
    /// Every finding, worst first.
    pub evidence: Vec<Evidence>,
    /// The concrete fix.
    pub fix: &'static str,
}

/// The whole answer.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The JSON format's version (see the README's `airlock doctor` section).
    pub format: &'static str,
    /// The six questions in order.
    pub questions: Vec<Question>,
    /// What to do first, worst first.
    pub todo: Vec<String>,
    /// Files that could not be analysed (syntax errors, binaries, oversized), with line.
    pub errors: Vec<Evidence>,
    /// What was read.
    pub scanned: scan::Counts,
}

/// The JSON format identifier.
pub const FORMAT: &str = "airlock-doctor/1";

/// A finding before it is sorted into its question.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The question it answers.
    pub question: QuestionId,
    /// The evidence.
    pub evidence: Evidence,
    /// The one-line to-do item, when the finding needs action.
    pub todo: Option<String>,
}

/// Builds a finding.
pub fn finding(
    question: QuestionId,
    verdict: Verdict,
    rule: &'static str,
    file: &str,
    line: usize,
    message: impl Into<String>,
) -> Finding {
    Finding {
        question,
        evidence: Evidence {
            file: file.to_owned(),
            line,
            message: message.into(),
            verdict,
            rule,
        },
        todo: None,
    }
}

impl Finding {
    /// Adds the to-do line this finding asks for.
    pub fn todo(mut self, text: impl Into<String>) -> Self {
        self.todo = Some(text.into());
        self
    }
}

/// Examines the repository at `root` (and the server's facts, when given).
pub fn examine(root: &Path, server: Option<&server::Facts>) -> Report {
    let repo = scan::scan(root);
    let mut findings = terraform::findings_at(&repo, Some(root));
    findings.extend(workflows::findings(&repo, &findings));
    if let Some(facts) = server {
        findings.extend(server::findings(facts));
    } else {
        findings.push(finding(
            QuestionId::Backups,
            Verdict::Unknown,
            "backups.server_unknown",
            ".",
            0,
            "whether airlock's own backups are exported and verified cannot be known from the \
             repository; run with --server and a token to ask the server",
        ));
    }
    assemble(findings, repo.errors.clone(), repo.counts)
}

/// Sorts findings into the six questions, each with its worst verdict, and the to-do list.
pub fn assemble(findings: Vec<Finding>, errors: Vec<Evidence>, scanned: scan::Counts) -> Report {
    let mut questions = Vec::new();
    let mut todo: Vec<(Verdict, usize, String)> = Vec::new();
    for (qi, id) in QuestionId::ALL.into_iter().enumerate() {
        let mut evidence: Vec<Evidence> = Vec::new();
        let mut seen: std::collections::HashSet<&Evidence> = std::collections::HashSet::new();
        for f in findings.iter().filter(|f| f.question == id) {
            if seen.insert(&f.evidence) {
                evidence.push(f.evidence.clone());
            }
            if let Some(t) = &f.todo {
                if !todo.iter().any(|(_, _, x)| x == t) {
                    todo.push((f.evidence.verdict, qi, t.clone()));
                }
            }
        }
        evidence.sort_by(|a, b| {
            b.verdict
                .cmp(&a.verdict)
                .then_with(|| a.file.cmp(&b.file))
                .then(a.line.cmp(&b.line))
        });
        let verdict = evidence
            .iter()
            .map(|e| e.verdict)
            .max()
            .unwrap_or(Verdict::Unknown);
        questions.push(Question {
            id,
            title: id.title(),
            verdict,
            score: verdict.score(),
            evidence,
            fix: id.fix(),
        });
    }
    // Worst first, then in the questions' order; at most 10 (the rest is in the evidence).
    todo.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let todo = todo
        .into_iter()
        .filter(|(v, _, _)| *v >= Verdict::Discipline)
        .map(|(_, _, t)| t)
        .take(10)
        .collect();
    Report {
        format: FORMAT,
        questions,
        todo,
        errors,
        scanned,
    }
}

/// `s` cut to at most `max` characters, with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
