//! The workflow questions: who can apply or destroy, whether the applied plan is the reviewed
//! one, and whether plans and destructive changes are visible before merge. Read from GitHub
//! Actions workflows and GitLab CI files (parsed as YAML, never run) and recognisable scripts;
//! each finding names the exact line.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::scan::{CiFile, CiKind, Repo};
use super::{finding, Finding, QuestionId as Q, Verdict as V};

/// Deepest YAML nesting converted (a workflow is shallow).
const MAX_DEPTH: usize = 64;

/// A YAML node reduced to what the rules read, with its 1-based line.
#[derive(Debug, Clone)]
enum Y {
    Str(String, usize),
    Seq(Vec<Y>),
    Map(Vec<(String, Y)>),
    Null,
}

impl Y {
    fn get(&self, key: &str) -> Option<&Y> {
        match self {
            Y::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self) -> Option<&str> {
        match self {
            Y::Str(s, _) => Some(s),
            _ => None,
        }
    }
    fn line(&self) -> usize {
        match self {
            Y::Str(_, l) => *l,
            Y::Seq(v) => v.first().map_or(0, Y::line),
            Y::Map(m) => m.first().map_or(0, |(_, v)| v.line()),
            Y::Null => 0,
        }
    }
    /// Every string leaf (for "does this mention X").
    fn text(&self) -> String {
        match self {
            Y::Str(s, _) => s.clone(),
            Y::Seq(v) => v.iter().map(Y::text).collect::<Vec<_>>().join("\n"),
            Y::Map(m) => m
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.text()))
                .collect::<Vec<_>>()
                .join("\n"),
            Y::Null => String::new(),
        }
    }
    /// A string or a list of strings, with lines.
    fn lines(&self) -> Vec<(String, usize)> {
        match self {
            Y::Str(s, l) => vec![(s.clone(), *l)],
            Y::Seq(v) => v.iter().flat_map(Y::lines).collect(),
            _ => Vec::new(),
        }
    }
}

fn convert(node: &MarkedYaml, depth: usize) -> Y {
    if depth > MAX_DEPTH {
        return Y::Null;
    }
    let line = node.span.start.line();
    match &node.data {
        YamlData::Value(s) => match s {
            Scalar::Null => Y::Null,
            Scalar::String(s) => Y::Str(s.to_string(), line),
            Scalar::Boolean(b) => Y::Str(b.to_string(), line),
            Scalar::Integer(i) => Y::Str(i.to_string(), line),
            Scalar::FloatingPoint(f) => Y::Str(f.to_string(), line),
        },
        YamlData::Representation(s, _, _) => Y::Str(s.to_string(), line),
        YamlData::Sequence(v) => Y::Seq(v.iter().map(|x| convert(x, depth + 1)).collect()),
        YamlData::Mapping(m) => Y::Map(
            m.iter()
                .map(|(k, v)| {
                    let key = match &k.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Value(Scalar::Boolean(b)) => b.to_string(), // `on:` read as true
                        YamlData::Value(other) => format!("{other:?}"),
                        YamlData::Representation(s, _, _) => s.to_string(),
                        _ => String::new(),
                    };
                    (key, convert(v, depth + 1))
                })
                .collect(),
        ),
        YamlData::Tagged(_, inner) => convert(inner, depth + 1),
        _ => Y::Null,
    }
}

/// One command line of a job, with its file line.
#[derive(Debug, Clone)]
struct Cmd {
    text: String,
    line: usize,
}

/// One CI job, as the rules see it.
#[derive(Debug, Default)]
struct Job {
    file: String,
    name: String,
    line: usize,
    /// Runs for pull/merge requests (before merge).
    on_change_request: bool,
    /// A person must start it (GitLab `when: manual`).
    manual: bool,
    /// A deployment environment (GitHub `environment:`), whose reviewers are set outside the repo.
    environment: bool,
    cmds: Vec<Cmd>,
    /// `uses:` actions with their `with:` text and line.
    actions: Vec<(String, String, usize)>,
    /// Environment / `with` entries: (key, value, line).
    env: Vec<(String, String, usize)>,
    oidc: bool,
}

/// Where the line of a value's text is: the first line at or after `from` whose text contains
/// the first line of `needle` (block scalars start a line after their key).
fn line_of(text: &str, from: usize, needle: &str) -> usize {
    let first = needle
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    if first.is_empty() {
        return from;
    }
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| l.contains(first))
        .map_or(from, |(i, _)| i + 1)
}

/// Splits a run script into command lines (continuations joined), each with its file line.
fn commands(file_text: &str, script: &str, start: usize) -> Vec<Cmd> {
    let base = line_of(file_text, start, script);
    let mut out = Vec::new();
    let mut pending = String::new();
    let mut pending_line = 0;
    for (i, l) in script.lines().enumerate() {
        let t = l.trim();
        if pending.is_empty() {
            pending_line = base + i;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(t);
        if !pending.trim().is_empty() && !pending.trim_start().starts_with('#') {
            out.push(Cmd {
                text: std::mem::take(&mut pending),
                line: pending_line,
            });
        }
        pending.clear();
    }
    if !pending.trim().is_empty() {
        out.push(Cmd {
            text: pending,
            line: pending_line,
        });
    }
    out
}

fn env_entries(y: Option<&Y>, out: &mut Vec<(String, String, usize)>) {
    if let Some(Y::Map(m)) = y {
        for (k, v) in m {
            out.push((k.clone(), v.text(), v.line()));
        }
    }
}

fn has_oidc(permissions: Option<&Y>) -> bool {
    permissions.and_then(|p| p.get("id-token")).and_then(Y::str) == Some("write")
        || permissions.and_then(Y::str) == Some("write-all")
}

fn github_jobs(f: &CiFile, doc: &Y) -> Vec<Job> {
    let on = doc.get("on").or_else(|| doc.get("true"));
    let events: Vec<String> = match on {
        Some(Y::Str(s, _)) => vec![s.clone()],
        Some(Y::Seq(v)) => v
            .iter()
            .filter_map(|x| x.str().map(str::to_owned))
            .collect(),
        Some(Y::Map(m)) => m.iter().map(|(k, _)| k.clone()).collect(),
        _ => Vec::new(),
    };
    let pr_events = events
        .iter()
        .any(|e| e.starts_with("pull_request") || e == "merge_group");
    let mut wf_env = Vec::new();
    env_entries(doc.get("env"), &mut wf_env);
    let wf_oidc = has_oidc(doc.get("permissions"));
    let mut out = Vec::new();
    let Some(Y::Map(jobs)) = doc.get("jobs") else {
        return out;
    };
    for (name, j) in jobs {
        let cond = j.get("if").map(Y::text).unwrap_or_default();
        let excludes_pr = cond.contains("'push'")
            || cond.contains("\"push\"")
            || cond.contains("refs/heads/")
            || cond.contains("!= 'pull_request'")
            || cond.contains("workflow_dispatch");
        let mut job = Job {
            file: f.path.clone(),
            name: name.clone(),
            line: j.line().saturating_sub(1).max(1),
            on_change_request: pr_events && !excludes_pr,
            environment: j.get("environment").is_some(),
            oidc: wf_oidc || has_oidc(j.get("permissions")),
            env: wf_env.clone(),
            ..Job::default()
        };
        env_entries(j.get("env"), &mut job.env);
        if let Some(Y::Seq(steps)) = j.get("steps") {
            for s in steps {
                env_entries(s.get("env"), &mut job.env);
                env_entries(s.get("with"), &mut job.env);
                if let Some(Y::Str(run, l)) = s.get("run") {
                    job.cmds.extend(commands(&f.text, run, *l));
                }
                if let Some(Y::Str(uses, l)) = s.get("uses") {
                    let with = s.get("with").map(Y::text).unwrap_or_default();
                    job.actions.push((uses.clone(), with, *l));
                }
            }
        }
        out.push(job);
    }
    out
}

const GITLAB_RESERVED: &[&str] = &[
    "stages",
    "variables",
    "default",
    "include",
    "workflow",
    "image",
    "services",
    "before_script",
    "after_script",
    "cache",
    "pages",
    "spec",
];

fn gitlab_jobs(f: &CiFile, doc: &Y) -> Vec<Job> {
    let Y::Map(top) = doc else { return Vec::new() };
    let template = |name: &str| top.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut out = Vec::new();
    let mut global_env = Vec::new();
    env_entries(doc.get("variables"), &mut global_env);
    for (name, j) in top {
        if name.starts_with('.')
            || GITLAB_RESERVED.contains(&name.as_str())
            || !matches!(j, Y::Map(_))
        {
            continue;
        }
        // `extends`: keys the job lacks come from its templates (one level, as most files use).
        let parents: Vec<&Y> = match j.get("extends") {
            Some(Y::Str(s, _)) => template(s).into_iter().collect(),
            Some(Y::Seq(v)) => v
                .iter()
                .filter_map(|x| x.str().and_then(template))
                .collect(),
            _ => Vec::new(),
        };
        let key = |k: &str| j.get(k).or_else(|| parents.iter().find_map(|p| p.get(k)));
        let rules = key("rules").map(Y::text).unwrap_or_default();
        let only = key("only").map(Y::text).unwrap_or_default();
        let on_mr = rules.contains("merge_request_event") || only.contains("merge_requests");
        let mut job = Job {
            file: f.path.clone(),
            name: name.clone(),
            line: j.line().saturating_sub(1).max(1),
            on_change_request: on_mr,
            manual: key("when").and_then(Y::str) == Some("manual") || rules.contains("manual"),
            environment: key("environment").is_some(),
            oidc: key("id_tokens").is_some(),
            env: global_env.clone(),
            ..Job::default()
        };
        env_entries(key("variables"), &mut job.env);
        for part in ["before_script", "script"] {
            if let Some(y) = key(part) {
                for (s, l) in y.lines() {
                    job.cmds.extend(commands(&f.text, &s, l));
                }
            }
        }
        out.push(job);
    }
    out
}

fn script_job(f: &CiFile) -> Job {
    Job {
        file: f.path.clone(),
        name: "(script)".to_owned(),
        line: 1,
        cmds: commands(&f.text, &f.text, 1),
        ..Job::default()
    }
}

/// What one command does, as far as these rules care.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// `terraform apply` (or tofu / terragrunt): a saved plan file, `-auto-approve`, destroy.
    Apply {
        plan_file: bool,
        auto: bool,
        destroy: bool,
    },
    /// `terraform plan`, with `-out` or not.
    Plan { out: bool },
    /// `airlock apply` / `airlock ci apply`.
    GovernedApply,
    /// `airlock plan` / `airlock ci plan`.
    GovernedPlan,
    /// A policy check of a plan (`airlock check`, conftest, opa, terraform-compliance, checkov).
    PolicyCheck,
    /// Posting to the pull request (`gh pr comment`, tfcmt).
    Comment,
}

fn classify(cmd: &str) -> Vec<Action> {
    let mut out = Vec::new();
    for part in cmd.split([';', '|', '&']) {
        let words: Vec<&str> = part.split_whitespace().collect();
        let tool = words.iter().position(|w| {
            let base = w.rsplit('/').next().unwrap_or(w);
            matches!(
                base,
                "terraform"
                    | "tofu"
                    | "terragrunt"
                    | "airlock"
                    | "conftest"
                    | "opa"
                    | "terraform-compliance"
                    | "checkov"
                    | "tfcmt"
                    | "gh"
                    | "gitlab-terraform"
            )
        });
        let Some(i) = tool else { continue };
        let base = words[i].rsplit('/').next().unwrap_or(words[i]);
        let args: Vec<&str> = words.get(i + 1..).unwrap_or_default().to_vec();
        let positional: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| !a.starts_with('-'))
            .collect();
        let has = |flag: &str| {
            args.iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        };
        match base {
            "airlock" => match positional.as_slice() {
                ["apply", ..] | ["ci", "apply", ..] => out.push(Action::GovernedApply),
                ["plan", ..] | ["ci", "plan", ..] => out.push(Action::GovernedPlan),
                ["check", ..] => out.push(Action::PolicyCheck),
                _ => {}
            },
            "conftest" | "opa" | "terraform-compliance" | "checkov" => {
                out.push(Action::PolicyCheck)
            }
            "tfcmt" => out.push(Action::Comment),
            "gh" if positional.starts_with(&["pr", "comment"]) => out.push(Action::Comment),
            "gh" => {}
            _ => {
                // terraform / tofu / terragrunt / gitlab-terraform: the subcommand, after
                // global flags and terragrunt's `run-all` / `run --all`.
                let sub: Vec<&str> = positional
                    .iter()
                    .copied()
                    .filter(|w| *w != "run-all" && *w != "run")
                    .collect();
                let destroy_flag = has("-destroy");
                match sub.first().copied() {
                    Some("apply") | Some("apply-all") => out.push(Action::Apply {
                        plan_file: sub.len() > 1,
                        auto: has("-auto-approve")
                            || has("--auto-approve")
                            || base == "gitlab-terraform",
                        destroy: destroy_flag,
                    }),
                    Some("destroy") | Some("destroy-all") => out.push(Action::Apply {
                        plan_file: false,
                        auto: has("-auto-approve")
                            || has("--auto-approve")
                            || base == "gitlab-terraform",
                        destroy: true,
                    }),
                    Some("plan") | Some("plan-all") => out.push(Action::Plan {
                        out: has("-out") || base == "gitlab-terraform",
                    }),
                    _ => {}
                }
            }
        }
    }
    out
}

/// Long-lived cloud credentials by variable or input name.
const LONG_LIVED: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "aws-secret-access-key",
    "ARM_CLIENT_SECRET",
    "GOOGLE_CREDENTIALS",
    "credentials_json",
    "ARM_ACCESS_KEY",
    "creds",
];

/// Every finding about who applies, plan-to-apply and visibility.
pub fn findings(repo: &Repo, config_findings: &[Finding]) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    for f in &repo.ci {
        match f.kind {
            CiKind::Script => jobs.push(script_job(f)),
            CiKind::GitHub | CiKind::GitLab => match MarkedYaml::load_from_str(&f.text) {
                Ok(docs) => {
                    for d in &docs {
                        let y = convert(d, 0);
                        jobs.extend(if f.kind == CiKind::GitHub {
                            github_jobs(f, &y)
                        } else {
                            gitlab_jobs(f, &y)
                        });
                    }
                }
                Err(e) => out.push(finding(
                    Q::WhoCanApply,
                    V::Unknown,
                    "ci.unreadable",
                    &f.path,
                    e.marker().line(),
                    format!("invalid YAML: {}; this file was not analysed", e.info()),
                )),
            },
        }
    }
    let airlock_state = config_findings
        .iter()
        .any(|f| f.evidence.rule == "state.airlock");
    let mut applies = 0usize;
    let mut governed = false;
    let (mut pr_plan, mut pr_comment, mut pr_check) = (false, false, false);
    for job in &jobs {
        let mut plan_out_in_job = false;
        for c in &job.cmds {
            for a in classify(&c.text) {
                let at = |q, v, rule, msg: String| finding(q, v, rule, &job.file, c.line, msg);
                match a {
                    Action::Plan { out } => {
                        plan_out_in_job |= out;
                        pr_plan |= job.on_change_request;
                    }
                    Action::GovernedPlan => {
                        pr_plan |= job.on_change_request;
                        if job.on_change_request {
                            pr_comment = true;
                            pr_check = true;
                            out.push(at(Q::Visibility, V::Enforced, "visibility.governed", format!(
                                "job `{}` plans pull requests as governed runs (`{}`): the plan is judged by the gate and shown on the change request", job.name, c.text.trim()
                            )));
                        }
                    }
                    Action::PolicyCheck => pr_check |= job.on_change_request,
                    Action::Comment => pr_comment |= job.on_change_request,
                    Action::GovernedApply => {
                        governed = true;
                        out.push(at(Q::WhoCanApply, V::Enforced, "apply.governed", format!(
                            "job `{}` applies only approved runs (`{}`): the server decides, not the job", job.name, c.text.trim()
                        )));
                        out.push(at(Q::PlanToApply, V::Enforced, "plan_to_apply.governed", format!(
                            "job `{}`: `{}` applies exactly the reviewed, approved plan and refuses any other", job.name, c.text.trim()
                        )));
                    }
                    Action::Apply {
                        plan_file,
                        auto,
                        destroy,
                    } => {
                        applies += 1;
                        let what = if destroy { "destroy" } else { "apply" };
                        let cmd = super::cut(c.text.trim(), 100);
                        if job.on_change_request {
                            out.push(at(Q::WhoCanApply, V::Fragile, "apply.on_change_request", format!(
                                "job `{}` runs `{cmd}` on pull/merge request events: whoever opens one can {what} before review", job.name
                            )).todo(format!("Stop {job_file} from running terraform {what} on pull requests", job_file = job.file)));
                            out.push(at(Q::PlanToApply, V::Fragile, "plan_to_apply.before_merge", format!(
                                "job `{}` applies before merge: the change is live before anyone approved it", job.name
                            )));
                        } else if destroy && auto && !job.manual {
                            out.push(at(Q::WhoCanApply, V::Fragile, "apply.destroy", format!(
                                "job `{}` runs `{cmd}` unattended: one pipeline run destroys everything the stack manages", job.name
                            )).todo(format!("Remove the unattended destroy from {}", job.file)));
                        } else {
                            let gate = if job.manual {
                                " (started by hand: `when: manual`)"
                            } else if job.environment {
                                " (a deployment environment, whose reviewers are set outside the repository)"
                            } else {
                                ""
                            };
                            out.push(at(Q::WhoCanApply, V::Discipline, "apply.direct", format!(
                                "job `{}` runs `{cmd}` directly{gate}: whoever can change this file or trigger the job can {what}", job.name
                            )).todo("Apply through airlock (`airlock ci init`) so that only approved runs are applied".to_owned()));
                        }
                        if !job.on_change_request {
                            if plan_file && plan_out_in_job && !job.manual {
                                out.push(at(Q::PlanToApply, V::Fragile, "plan_to_apply.same_job", format!(
                                    "job `{}` plans and applies in one job (`{cmd}`): nobody reviews between them", job.name
                                )).todo(format!("Split plan and apply in {} and apply only reviewed plans", job.file)));
                            } else if plan_file {
                                out.push(at(Q::PlanToApply, V::Discipline, "plan_to_apply.saved_plan", format!(
                                    "job `{}` applies a saved plan (`{cmd}`), but nothing ties it to the plan a reviewer saw", job.name
                                )).todo("Bind the applied plan to the reviewed one (airlock governed runs)".to_owned()));
                            } else {
                                out.push(at(Q::PlanToApply, V::Fragile, "plan_to_apply.replan", format!(
                                    "job `{}` re-plans at apply time (`{cmd}`{}): what is applied is not what was reviewed",
                                    job.name, if auto { ", -auto-approve" } else { "" }
                                )).todo(format!("Apply a saved, reviewed plan in {} instead of re-planning", job.file)));
                            }
                        }
                    }
                }
            }
        }
        // Credentials: long-lived keys from secrets, literal keys, OIDC.
        for (k, v, line) in &job.env {
            let from_secret = v.contains("secrets.") || v.starts_with('$');
            if LONG_LIVED.iter().any(|n| k == n) && from_secret {
                out.push(finding(Q::WhoCanApply, V::Discipline, "apply.long_lived_keys", &job.file, *line, format!(
                    "job `{}` gets long-lived cloud credentials ({k}): anyone who can change a workflow can use them", job.name
                )).todo("Replace long-lived cloud keys in CI secrets with OIDC federation".to_owned()));
            }
            if looks_like_aws_key(v) {
                out.push(
                    finding(
                        Q::WhoCanApply,
                        V::Fragile,
                        "apply.key_in_repo",
                        &job.file,
                        *line,
                        format!(
                            "{k} holds what looks like a literal AWS access key in the repository"
                        ),
                    )
                    .todo(format!(
                        "Revoke the key committed in {} and use OIDC",
                        job.file
                    )),
                );
            }
        }
        if job.oidc
            && job.cmds.iter().any(|c| {
                classify(&c.text)
                    .iter()
                    .any(|a| matches!(a, Action::Apply { .. } | Action::GovernedApply))
            })
        {
            out.push(finding(
                Q::WhoCanApply,
                V::Enforced,
                "apply.oidc",
                &job.file,
                job.line,
                format!("job `{}` uses short-lived OIDC credentials", job.name),
            ));
        }
        for (uses, with, line) in &job.actions {
            let u = uses.to_ascii_lowercase();
            // Actions that apply (dflook/terraform-apply, HCP Terraform's apply-run, ...).
            let name = u.split('@').next().unwrap_or("");
            let last = name.rsplit('/').next().unwrap_or("");
            let terraformish = ["terraform", "tfc", "tofu", "terragrunt"]
                .iter()
                .any(|t| name.contains(t));
            if terraformish && (last.contains("apply") || last.contains("destroy")) {
                applies += 1;
                let what = if last.contains("destroy") {
                    "destroy"
                } else {
                    "apply"
                };
                let (v, rule, how) = if job.on_change_request {
                    (
                        V::Fragile,
                        "apply.on_change_request",
                        "on pull/merge request events, before review",
                    )
                } else {
                    (V::Discipline, "apply.direct", "directly")
                };
                out.push(finding(Q::WhoCanApply, v, rule, &job.file, *line, format!(
                    "job `{}` runs the {what} action {uses} {how}: whoever can change this file or trigger the job can {what}", job.name
                )).todo("Apply through airlock (`airlock ci init`) so that only approved runs are applied".to_owned()));
                out.push(finding(Q::PlanToApply, V::Discipline, "plan_to_apply.action", &job.file, *line, format!(
                    "job `{}` applies through {uses}: whether it applies the reviewed plan depends on that action and its settings", job.name
                )));
            }
            if job.on_change_request
                && (u.contains("comment")
                    || u.contains("tfcmt")
                    || (u.contains("github-script") && with.to_ascii_lowercase().contains("plan")))
            {
                pr_comment = true;
                out.push(finding(
                    Q::Visibility,
                    V::Discipline,
                    "visibility.comment",
                    &job.file,
                    *line,
                    format!("job `{}` posts to the pull request ({uses})", job.name),
                ));
            }
        }
    }
    if applies == 0 && !governed {
        let (v, msg) = if airlock_state {
            (V::Unknown, "no CI job applies; state is on an airlock server, whose tokens decide who can apply (run with --server to see them)")
        } else {
            (
                V::Discipline,
                "no CI job applies: apply and destroy run from whichever machine holds credentials",
            )
        };
        let file = ".";
        out.push(
            finding(Q::WhoCanApply, v, "apply.no_ci", file, 0, msg).todo(
                "Apply from CI only, through airlock (`airlock ci init github|gitlab`)".to_owned(),
            ),
        );
        out.push(finding(Q::PlanToApply, if airlock_state { V::Unknown } else { V::Discipline }, "plan_to_apply.no_ci", file, 0,
            "no CI job applies: whether the applied plan is the reviewed one depends on whoever runs terraform"));
    }
    let file = ".";
    match (pr_plan, pr_comment, pr_check) {
        (_, true, true) => {}
        (_, true, false) => out.push(finding(Q::Visibility, V::Discipline, "visibility.no_gate", file, 0,
            "plans are posted to pull requests, but no policy check of the plan gates merge: destructive changes are visible only to reviewers who read them")
            .todo("Gate merge on a plan policy check (`airlock check` / `airlock ci plan`)".to_owned())),
        (true, false, true) => out.push(finding(Q::Visibility, V::Discipline, "visibility.not_posted", file, 0,
            "plans are checked on pull requests but not posted to them: reviewers must open the CI logs to see a destroy")),
        (true, false, false) => out.push(finding(Q::Visibility, V::Fragile, "visibility.logs_only", file, 0,
            "plans run on pull requests but are neither posted nor checked: a destroy shows only in CI logs")
            .todo("Post plans to pull requests and gate merge on a policy check (`airlock ci plan`)".to_owned())),
        (false, _, _) => out.push(finding(Q::Visibility, V::Fragile, "visibility.none", file, 0,
            "no CI job plans pull requests: destructive changes are seen, if at all, in someone's terminal")
            .todo("Plan every pull request in CI and post the plan (`airlock ci init`)".to_owned())),
    }
    out
}

fn looks_like_aws_key(v: &str) -> bool {
    v.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
        w.len() == 20
            && (w.starts_with("AKIA") || w.starts_with("ASIA"))
            && w.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_classified() {
        assert_eq!(
            classify("terraform -chdir=prod apply -auto-approve"),
            [Action::Apply {
                plan_file: false,
                auto: true,
                destroy: false
            }]
        );
        assert_eq!(
            classify("terraform apply tfplan"),
            [Action::Apply {
                plan_file: true,
                auto: false,
                destroy: false
            }]
        );
        assert_eq!(
            classify("tofu destroy -auto-approve"),
            [Action::Apply {
                plan_file: false,
                auto: true,
                destroy: true
            }]
        );
        assert_eq!(
            classify("terragrunt run-all apply --terragrunt-non-interactive"),
            [Action::Apply {
                plan_file: false,
                auto: false,
                destroy: false
            }]
        );
        assert_eq!(
            classify("terraform plan -out=tfplan && terraform show -json tfplan > p.json"),
            [Action::Plan { out: true }]
        );
        assert_eq!(
            classify("AIRLOCK_TOKEN=\"$X\" airlock ci apply"),
            [Action::GovernedApply]
        );
        assert_eq!(classify("airlock check plan.json"), [Action::PolicyCheck]);
        assert_eq!(classify("echo terraform"), []);
        assert_eq!(
            classify("gh pr comment 3 --body-file plan.md"),
            [Action::Comment]
        );
    }

    #[test]
    fn continuations_join_and_lines_are_exact() {
        let file = "jobs:\n  x:\n    steps:\n      - run: |\n          echo hi\n          terraform apply \\\n            -auto-approve\n";
        let cmds = commands(file, "echo hi\nterraform apply \\\n  -auto-approve\n", 4);
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[1].line, 6);
        assert!(cmds[1].text.contains("-auto-approve"));
    }

    #[test]
    fn hostile_yaml_is_bounded() {
        // A billion-laughs document: the loader's alias limit refuses it or it converts bounded.
        let mut y = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_owned()
            } else {
                format!("l{}", i - 1)
            };
            y.push_str(&format!("l{i}: &l{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        if let Ok(d) = MarkedYaml::load_from_str(&y) {
            d.iter().for_each(|x| drop(convert(x, 0)));
        }
        let deep = "a: ".to_owned() + &"[".repeat(10_000);
        if let Ok(d) = MarkedYaml::load_from_str(&deep) {
            d.iter().for_each(|x| drop(convert(x, 0)));
        }
    }
}
