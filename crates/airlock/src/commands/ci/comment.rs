//! The sticky pull-request comment of `airlock ci plan` / `apply`, and the commit status of each
//! stack: pure functions of the server's runs, unit-tested here.
//!
//! The comment is a render of the runs (never of the previous comment), so `ci plan`, its
//! refresh and `ci apply` each rewrite it whole. Every string that comes from a run (addresses,
//! findings, names) is [`text`]-escaped: a resource named `</details>` or `@team` renders as
//! itself and neither closes a tag nor mentions anyone. It always fits in GitHub's 65,536
//! characters: per-stack details are cut first, then the destructive-change list, each with a
//! line saying how much was left out and where all of it is.

use airlock_core::text::disguises;
use serde_json::Value;

/// The hidden first line by which the comment is found again (never by its visible text).
pub const MARKER: &str = "<!-- airlock:ci-plan -->";

/// GitHub refuses comment bodies over this many characters (GitLab's limit is larger).
pub const MAX_CHARS: usize = 65_536;

/// One affected stack's outcome in `airlock ci plan`.
#[derive(Debug, Clone)]
pub enum StackResult {
    /// The server created and judged a run: its record (`run` of the API's answer).
    Run { stack: String, run: Value },
    /// Planning failed before the server judged anything.
    Failed { stack: String, error: String },
}

/// A stack whose directory the change deletes (never planned, never destroyed by this).
#[derive(Debug, Clone)]
pub struct Removed {
    pub stack: String,
    pub dir: String,
    /// Its removal was declared earlier (`destroy = true` at the merge base).
    pub declared: bool,
}

/// One stack's outcome in `airlock ci apply`.
#[derive(Debug, Clone)]
pub struct AppliedLine {
    pub stack: String,
    pub run_id: Option<String>,
    pub ok: bool,
    pub message: String,
}

/// What the comment shows.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The airlock server's URL (for `/ui/runs/ID` links).
    pub server_url: String,
    /// The commit the plans were made for.
    pub head: Option<String>,
    pub stacks: Vec<StackResult>,
    pub removed: Vec<Removed>,
    /// `airlock ci apply`'s outcomes (the "Applied" section), with the merge commit.
    pub applied: Vec<AppliedLine>,
    pub applied_commit: Option<String>,
}

/// A commit status as every forge knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Light {
    Pending,
    Success,
    Failure,
    Error,
}

/// The status of one stack's run: pending while it needs approvals, success once approved
/// (or applied, or nothing to do), failure on a deny or a dead run.
pub fn status_of(run: &Value) -> (Light, String) {
    let status = run["status"].as_str().unwrap_or("unknown");
    if run["decision"].as_str() == Some("deny") {
        return (Light::Failure, "denied by policy".into());
    }
    match status {
        "needs_approval" => {
            let (have, need) = approvals(run);
            let missing = need.saturating_sub(have).max(1);
            (
                Light::Pending,
                format!(
                    "needs {missing} approval{} ({have}/{need})",
                    if missing == 1 { "" } else { "s" }
                ),
            )
        }
        "approved" => (Light::Success, "approved; applied after merge".into()),
        "applying" => (Light::Pending, "applying".into()),
        "applied" => (Light::Success, "applied".into()),
        "no_changes" => (Light::Success, "no changes".into()),
        "rejected" => (Light::Failure, "rejected".into()),
        "superseded" | "expired" | "withdrawn" => (
            Light::Failure,
            format!("{status}: plan again (push, or re-run the job)"),
        ),
        "failed" => (Light::Failure, "the apply failed".into()),
        other => (Light::Error, format!("run status {other}")),
    }
}

/// Distinct approving users other than the author, and the approvals required.
fn approvals(run: &Value) -> (u64, u64) {
    let author = run["author_user"].as_str().unwrap_or_default();
    let mut users: Vec<&str> = run["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            a["by_user"]
                .as_str()
                .filter(|u| !u.is_empty())
                .or_else(|| a["by_token"].as_str())
        })
        .filter(|u| *u != author)
        .collect();
    users.sort_unstable();
    users.dedup();
    (
        users.len() as u64,
        run["required_approvals"].as_u64().unwrap_or(1),
    )
}

/// Text from a run made inert in GitHub/GitLab markdown: HTML and markdown punctuation become
/// character references (decoded only after markdown and HTML are parsed, so they form no tag,
/// code span, link or table cell), a word joiner follows `@` and `#` (no mention, no issue
/// reference), line breaks and control characters become spaces.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '`' | '*' | '_' | '[' | ']' | '(' | ')' | '|' | '\\' | '~' => {
                out.push_str(&format!("&#{};", c as u32));
            }
            '@' | '#' => {
                out.push(c);
                out.push('\u{2060}');
            }
            // Line breaks would end the table row; the rest would disguise what reviewers read.
            c if c == '\n' || c == '\t' || disguises(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `text` inside `<code>`: monospace, still inert.
fn code(s: &str) -> String {
    format!("<code>{}</code>", text(s))
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Lines added while they fit a character budget.
struct Budget {
    left: usize,
}

impl Budget {
    fn take(&mut self, line: &str) -> bool {
        let n = chars(line) + 1;
        if n > self.left {
            return false;
        }
        self.left -= n;
        true
    }
}

const SYMBOLS: [(&str, &str); 5] = [
    ("create", "+"),
    ("update", "~"),
    ("replace", "±"),
    ("delete", "−"),
    ("forget", "⊘"),
];

fn symbol(kind: &str) -> &'static str {
    match kind {
        "create" => "+",
        "update" => "~",
        "replace" | "replace-create-first" | "forget-replace" => "±",
        "delete" => "−",
        "forget" => "⊘",
        "read" => "≤",
        _ => "?",
    }
}

fn count(run: &Value, kind: &str) -> u64 {
    let sum = &run["report"]["summary"];
    match kind {
        "replace" => ["replace", "replace-create-first", "forget-replace"]
            .iter()
            .filter_map(|k| sum[*k].as_u64())
            .sum(),
        k => sum[k].as_u64().unwrap_or(0),
    }
}

fn run_id(run: &Value) -> String {
    run["id"].as_str().unwrap_or("?").to_owned()
}

/// Where all of a run is: the CLI and the web console.
fn see_all(server_url: &str, id: &str) -> String {
    format!(
        "<code>airlock run show {}</code> or {}/ui/runs/{}",
        text(id),
        text(server_url.trim_end_matches('/')),
        text(id)
    )
}

fn verdict_line(r: &StackResult) -> String {
    match r {
        StackResult::Failed { stack, error } => {
            let first: String = error
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            format!(
                "| {} | ⚠️ **error** | plan failed: {} | | |",
                code(stack),
                text(&first)
            )
        }
        StackResult::Run { stack, run } => {
            let decision = run["decision"].as_str().unwrap_or("?");
            let icon = match (decision, run["status"].as_str()) {
                ("deny", _) => "⛔",
                (_, Some("no_changes")) => "⚪",
                (_, Some("approved" | "applied")) => "✅",
                ("review", _) => "🟡",
                _ => "🟢",
            };
            let counts: Vec<String> = SYMBOLS
                .iter()
                .map(|(k, sym)| format!("{sym}{}", count(run, k)))
                .collect();
            let (_, status) = status_of(run);
            format!(
                "| {} | {icon} **{}** | {} | {} | {} |",
                code(stack),
                text(decision),
                text(&status),
                counts.join(" "),
                code(&run_id(run))
            )
        }
    }
}

/// The destructive changes of one run, protected/critical ones first, each with the findings
/// that make it so.
fn destructive_lines(stack: &str, run: &Value) -> Vec<String> {
    let changes: Vec<&Value> = run["report"]["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["destructive"].as_bool() == Some(true))
        .collect();
    let findings: Vec<&Value> = run["report"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut rows: Vec<(bool, String)> = changes
        .iter()
        .map(|c| {
            let address = c["address"].as_str().unwrap_or("?");
            let why: Vec<String> = findings
                .iter()
                .filter(|f| f["address"].as_str() == Some(address))
                .filter(|f| f["severity"].as_str() != Some("info"))
                .map(|f| {
                    format!(
                        "{} {}",
                        code(f["rule"].as_str().unwrap_or("?")),
                        text(&finding_message(f))
                    )
                })
                .collect();
            let protected = c["critical"].as_bool() == Some(true) || !why.is_empty();
            let tag = if c["critical"].as_bool() == Some(true) {
                " **critical**"
            } else if protected {
                " **protected**"
            } else {
                ""
            };
            let mut line = format!(
                "- {} {} {}{tag} ({})",
                symbol(c["kind"].as_str().unwrap_or_default()),
                code(stack),
                code(address),
                text(c["kind"].as_str().unwrap_or("?"))
            );
            if !why.is_empty() {
                line.push_str(": ");
                line.push_str(&why.join("; "));
            }
            (protected, line)
        })
        .collect();
    rows.sort_by_key(|(protected, _)| !*protected);
    rows.into_iter().map(|(_, l)| l).collect()
}

/// A finding's message for a public comment: a variable's value set by the planner is shown to
/// approvers by `airlock run show`, never here (a non-sensitive-marked secret would be posted).
fn finding_message(f: &Value) -> String {
    let message = f["message"].as_str().unwrap_or_default();
    if f["rule"].as_str() == Some("planner-variable") {
        let name = message
            .strip_prefix("variable ")
            .and_then(|m| m.split(' ').next())
            .unwrap_or("?");
        return format!(
            "variable {name} comes from the planner, not the code's default (its value: airlock run show)"
        );
    }
    message.chars().take(500).collect()
}

/// The per-stack details: every change, then every finding.
fn detail_lines(run: &Value) -> Vec<String> {
    let mut out: Vec<String> = run["report"]["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"].as_str() != Some("no-op"))
        .map(|c| {
            format!(
                "- {} {} ({})",
                symbol(c["kind"].as_str().unwrap_or_default()),
                code(c["address"].as_str().unwrap_or("?")),
                text(c["kind"].as_str().unwrap_or("?"))
            )
        })
        .collect();
    out.extend(
        run["report"]["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let at = f["address"]
                    .as_str()
                    .map(|a| format!(" {}", code(a)))
                    .unwrap_or_default();
                format!(
                    "- finding \\[{}\\] {}{at}: {}",
                    text(f["severity"].as_str().unwrap_or("?")),
                    code(f["rule"].as_str().unwrap_or("?")),
                    text(&finding_message(f))
                )
            }),
    );
    out
}

/// Who may approve and the exact command, for an open run.
fn approve_line(stack: &str, run: &Value) -> Option<String> {
    if run["status"].as_str() != Some("needs_approval") || run["decision"].as_str() == Some("deny")
    {
        return None;
    }
    let (have, need) = approvals(run);
    let destroys = run["destroys"].as_array().map_or(0, Vec::len);
    let confirm = if destroys > 0 {
        format!(" --confirm-destroy {destroys}")
    } else {
        String::new()
    };
    Some(format!(
        "- {}: {have}/{need} approvals. An approver of the stack (role approver or admin), not its author {}, runs <code>airlock approve {}{confirm}</code>",
        code(stack),
        code(run["author_user"].as_str().unwrap_or("?")),
        text(&run_id(run)),
    ))
}

/// Renders the comment, always within [`MAX_CHARS`] characters.
pub fn render(r: &Report) -> String {
    let mut head = vec![
        MARKER.to_owned(),
        "### airlock plan".to_owned(),
        String::new(),
    ];
    if let Some(h) = &r.head {
        head.push(format!("Plans for commit {}.", code(h)));
        head.push(String::new());
    }
    if r.stacks.is_empty() && r.removed.is_empty() && r.applied.is_empty() {
        head.push("No stack is affected by this change.".into());
    } else if !r.stacks.is_empty() {
        head.push(
            "| stack | verdict | status | + create ~ update ± replace − delete ⊘ forget | run |"
                .into(),
        );
        head.push("|---|---|---|---|---|".into());
    }
    let verdicts: Vec<String> = r.stacks.iter().map(verdict_line).collect();
    let mut removed = Vec::new();
    for x in &r.removed {
        removed.push(if x.declared {
            format!(
                "> ⚠️ **This removes stack {}**: its directory {} is deleted. Its removal was declared (<code>destroy = true</code>), so a governed destroy run should have emptied it: check with <code>airlock state show</code> before merging.",
                code(&x.stack),
                code(&x.dir)
            )
        } else {
            format!(
                "> ⚠️ **This removes stack {}**: its directory {} is deleted, and nothing is destroyed: its resources stay, unmanaged. To destroy them, keep the directory, set <code>destroy = true</code> in its stack block, merge and apply that destroy run first.",
                code(&x.stack),
                code(&x.dir)
            )
        });
    }
    let approve: Vec<String> = r
        .stacks
        .iter()
        .filter_map(|s| match s {
            StackResult::Run { stack, run } => approve_line(stack, run),
            StackResult::Failed { .. } => None,
        })
        .collect();
    let mut applied = Vec::new();
    if !r.applied.is_empty() {
        applied.push(String::new());
        applied.push(match &r.applied_commit {
            Some(c) => format!("### Applied (merge commit {})", code(c)),
            None => "### Applied".into(),
        });
        applied.push(String::new());
        for a in &r.applied {
            applied.push(format!(
                "- {} {}{}: {}",
                if a.ok { "✅" } else { "❌" },
                code(&a.stack),
                a.run_id
                    .as_ref()
                    .map(|id| format!(" run {}", code(id)))
                    .unwrap_or_default(),
                text(&a.message)
            ));
        }
    }

    // Fixed parts first; then what can be cut, in the order it is cut last.
    let mut out: Vec<String> = Vec::new();
    let mut budget = Budget {
        left: MAX_CHARS - 1_024, // room for the truncation notes
    };
    let push_all = |lines: &[String], out: &mut Vec<String>, budget: &mut Budget| -> usize {
        let mut n = 0;
        for l in lines {
            if !budget.take(l) {
                break;
            }
            out.push(l.clone());
            n += 1;
        }
        n
    };
    push_all(&head, &mut out, &mut budget);
    let shown = push_all(&verdicts, &mut out, &mut budget);
    if shown < verdicts.len() {
        out.push(format!(
            "\n… {} more stacks not shown: <code>airlock runs</code>",
            verdicts.len() - shown
        ));
    }
    let mut tail: Vec<String> = Vec::new();
    if !removed.is_empty() {
        tail.push(String::new());
        tail.extend(removed);
    }
    if !approve.is_empty() {
        tail.push(String::new());
        tail.push("**To approve** (outside CI; then re-run the airlock job or push to refresh this comment and the statuses):".into());
        tail.extend(approve);
    }
    tail.extend(applied);
    push_all(&tail, &mut out, &mut budget);

    // Destructive changes of every stack.
    let runs: Vec<(&str, &Value)> = r
        .stacks
        .iter()
        .filter_map(|s| match s {
            StackResult::Run { stack, run } => Some((stack.as_str(), run)),
            StackResult::Failed { .. } => None,
        })
        .collect();
    let destructive: Vec<(String, Vec<String>)> = runs
        .iter()
        .map(|(stack, run)| (run_id(run), destructive_lines(stack, run)))
        .collect();
    let total: usize = destructive.iter().map(|(_, l)| l.len()).sum();
    if total > 0 {
        let title = format!("\n### Destroys or replaces {total} instance(s)\n");
        if budget.take(&title) {
            out.push(title);
            let mut left_out: Vec<(String, usize)> = Vec::new();
            for (id, lines) in &destructive {
                let n = push_all(lines, &mut out, &mut budget);
                if n < lines.len() {
                    left_out.push((id.clone(), lines.len() - n));
                }
            }
            for (id, n) in left_out {
                out.push(format!(
                    "- … {n} more destructive change(s) of run {} not shown (the comment would exceed {MAX_CHARS} characters): {}",
                    code(&id),
                    see_all(&r.server_url, &id)
                ));
            }
        }
    }

    // Per-stack details, cut first.
    for (stack, run) in &runs {
        let id = run_id(run);
        let lines = detail_lines(run);
        if lines.is_empty() {
            continue;
        }
        let open = format!(
            "\n<details><summary>{}: {} change(s), {} finding(s)</summary>\n",
            code(stack),
            run["report"]["changes"].as_array().map_or(0, Vec::len),
            run["report"]["findings"].as_array().map_or(0, Vec::len)
        );
        let close = "\n</details>".to_owned();
        // The open and close tags, and a note, must fit with at least one line.
        let reserve = chars(&close) + 400;
        if budget.left < chars(&open) + reserve + 1 {
            out.push(format!(
                "\nDetails of {} left out (the comment would exceed {MAX_CHARS} characters): {}",
                code(stack),
                see_all(&r.server_url, &id)
            ));
            continue;
        }
        budget.take(&open);
        out.push(open);
        budget.left -= reserve;
        let n = push_all(&lines, &mut out, &mut budget);
        budget.left += reserve;
        if n < lines.len() {
            let note = format!(
                "- … {} more line(s) left out (the comment would exceed {MAX_CHARS} characters): {}",
                lines.len() - n,
                see_all(&r.server_url, &id)
            );
            budget.take(&note);
            out.push(note);
        }
        budget.take(&close);
        out.push(close);
    }
    let mut body = out.join("\n");
    body.push('\n');
    // The notes are bounded by the reserve; this is a last guard, never expected to cut.
    if chars(&body) > MAX_CHARS {
        body = body.chars().take(MAX_CHARS - 1).collect();
        body.push('\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(
        id: &str,
        changes: Vec<Value>,
        findings: Vec<Value>,
        status: &str,
        decision: &str,
    ) -> Value {
        let deletes = changes.iter().filter(|c| c["kind"] == "delete").count();
        let creates = changes.iter().filter(|c| c["kind"] == "create").count();
        json!({
            "id": id, "status": status, "decision": decision, "author_user": "bot",
            "required_approvals": 1, "approvals": [],
            "destroys": (0..deletes).map(|i| format!("x{i}")).collect::<Vec<_>>(),
            "report": {"changes": changes, "findings": findings,
                       "summary": {"create": creates, "delete": deletes, "update": 0, "replace": 0}},
        })
    }

    fn change(address: &str, kind: &str, critical: bool) -> Value {
        json!({"address": address, "kind": kind, "critical": critical,
               "destructive": kind == "delete" || kind == "replace"})
    }

    #[test]
    fn verdicts_first_then_destructive_protected_first_then_details() {
        let r = Report {
            server_url: "https://airlock.example".into(),
            head: Some("abc123".into()),
            stacks: vec![
                StackResult::Run {
                    stack: "prod/net".into(),
                    run: run(
                        "run_1",
                        vec![
                            change("terraform_data.plain", "delete", false),
                            change("aws_db_instance.main", "delete", true),
                            change("terraform_data.new", "create", false),
                        ],
                        vec![
                            json!({"rule": "critical-destroy", "severity": "review", "address": "aws_db_instance.main", "message": "deletes critical aws_db_instance"}),
                        ],
                        "needs_approval",
                        "review",
                    ),
                },
                StackResult::Failed {
                    stack: "prod/app".into(),
                    error: "terraform plan failed (exit status: 1)\nmore".into(),
                },
            ],
            removed: vec![Removed {
                stack: "old".into(),
                dir: "stacks/old".into(),
                declared: false,
            }],
            ..Report::default()
        };
        let body = render(&r);
        assert!(body.starts_with(MARKER), "{body}");
        let pos = |s: &str| {
            body.find(s)
                .unwrap_or_else(|| panic!("{s} missing:\n{body}"))
        };
        assert!(pos("<code>prod/net</code> | 🟡 **review**") < pos("### Destroys"));
        assert!(body.contains("plan failed: terraform plan failed"));
        assert!(body.contains("This removes stack <code>old</code>"));
        assert!(body.contains("+1 ~0 ±0 −2 ⊘0"), "{body}");
        // Critical first, with the finding that makes it so.
        assert!(
            pos("aws&#95;db&#95;instance.main</code> **critical**")
                < pos("terraform&#95;data.plain</code> (delete)")
        );
        assert!(body.contains("<code>critical-destroy</code> deletes critical"));
        assert!(
            body.contains("<code>airlock approve run&#95;1 --confirm-destroy 2</code>"),
            "{body}"
        );
        assert!(body.contains("not its author <code>bot</code>"));
        assert!(pos("### Destroys") < pos("<details>"));
        assert_eq!(
            status_of(&run("r", vec![], vec![], "needs_approval", "review")),
            (Light::Pending, "needs 1 approval (0/1)".into())
        );
        for (status, decision, light) in [
            ("denied", "deny", Light::Failure),
            ("needs_approval", "deny", Light::Failure),
            ("approved", "review", Light::Success),
            ("applied", "allow", Light::Success),
            ("no_changes", "allow", Light::Success),
            ("applying", "allow", Light::Pending),
            ("rejected", "review", Light::Failure),
            ("superseded", "review", Light::Failure),
            ("expired", "review", Light::Failure),
            ("withdrawn", "review", Light::Failure),
            ("failed", "review", Light::Failure),
            ("from_the_future", "review", Light::Error),
        ] {
            let got = status_of(&run("r", vec![], vec![], status, decision)).0;
            assert_eq!(got, light, "{status}");
        }
    }

    #[test]
    fn a_plan_of_5000_changes_fits_with_a_line_saying_what_was_left_out() {
        let changes: Vec<Value> = (0..5000)
            .map(|i| {
                change(
                    &format!("module.m[\"{i}\"].aws_db_instance.a_long_resource_name_{i}"),
                    if i % 2 == 0 { "delete" } else { "create" },
                    i % 4 == 0,
                )
            })
            .collect();
        let r = Report {
            server_url: "https://airlock.example".into(),
            stacks: vec![StackResult::Run {
                stack: "big".into(),
                run: run("run_big", changes, vec![], "needs_approval", "review"),
            }],
            ..Report::default()
        };
        let body = render(&r);
        let n = body.chars().count();
        assert!(n <= MAX_CHARS, "{n} characters");
        assert!(n > MAX_CHARS - 4_000, "it should use the room it has: {n}");
        assert!(
            body.contains("more destructive change(s) of run <code>run&#95;big</code> not shown"),
            "{body}"
        );
        assert!(body.contains("<code>airlock run show run&#95;big</code> or https://airlock.example/ui/runs/run&#95;big"));
        assert!(body.contains("Details of <code>big</code> left out"));
        // Critical ones first.
        let first = body.find("**critical**").unwrap();
        let plain = body.find("(delete)").unwrap();
        assert!(first < plain);
        // Many stacks with small plans: details cut with the same kind of note, still fitting.
        let stacks: Vec<StackResult> = (0..40)
            .map(|s| StackResult::Run {
                stack: format!("s{s}"),
                run: run(
                    &format!("run_{s}"),
                    (0..300)
                        .map(|i| change(&format!("terraform_data.x{i}"), "create", false))
                        .collect(),
                    vec![],
                    "needs_approval",
                    "allow",
                ),
            })
            .collect();
        let body = render(&Report {
            stacks,
            ..Report::default()
        });
        assert!(body.chars().count() <= MAX_CHARS);
        assert!(body.contains("left out (the comment would exceed 65536 characters)"));
        assert_eq!(
            body.matches("<details>").count(),
            body.matches("</details>").count()
        );
    }

    #[test]
    fn hostile_names_are_neutralised() {
        let evil =
            "aws_s3_bucket.x</details><!-- `rm` @admin #1 [a](http://e) | *b* \u{202e}\n<script>";
        let r = Report {
            stacks: vec![StackResult::Run {
                stack: "s".into(),
                run: run(
                    "run_1",
                    vec![change(evil, "delete", true)],
                    vec![
                        json!({"rule": "rego:main.deny", "severity": "review", "address": evil, "message": "msg </details> @team"}),
                        json!({"rule": "planner-variable", "severity": "review", "address": null, "message": "variable password = \"hunter2\" comes from the planner"}),
                    ],
                    "needs_approval",
                    "review",
                ),
            }],
            ..Report::default()
        };
        let body = render(&r);
        for bad in [
            "</details><",
            "<!-- `",
            "`rm`",
            "@admin",
            "@team",
            " #1 ",
            "[a](",
            "| *b*",
            "<script>",
            "\u{202e}",
            "hunter2",
        ] {
            assert!(!body.contains(bad), "{bad:?} survived:\n{body}");
        }
        assert_eq!(body.matches("<!--").count(), 1, "only the marker");
        assert_eq!(body.matches("</details>").count(), 1);
        assert!(body.contains("@\u{2060}admin"));
        assert!(body.contains("variable password comes from the planner"));
        assert!(text("a\nb").lines().count() == 1);
    }

    #[test]
    fn the_applied_section_says_what_happened() {
        let r = Report {
            stacks: vec![],
            applied: vec![
                AppliedLine {
                    stack: "a".into(),
                    run_id: Some("run_1".into()),
                    ok: true,
                    message: "applied".into(),
                },
                AppliedLine {
                    stack: "b".into(),
                    run_id: None,
                    ok: false,
                    message: "fingerprint differs: re-plan".into(),
                },
            ],
            applied_commit: Some("ff00".into()),
            ..Report::default()
        };
        let body = render(&r);
        assert!(body.contains("### Applied (merge commit <code>ff00</code>)"));
        assert!(body.contains("✅ <code>a</code> run <code>run&#95;1</code>: applied"));
        assert!(body.contains("❌ <code>b</code>: fingerprint differs: re-plan"));
    }
}
