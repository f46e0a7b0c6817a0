//! `airlock ci plan`: a governed run per affected stack (exactly as `airlock plan` makes one),
//! a commit status per stack, and the sticky comment; `--refresh` re-reads the runs instead
//! (after an approval) and updates both. Outside CI the comment is printed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use super::comment::{self, Light, Report, StackResult};
use super::flow::{self, Sink, Target};
use crate::cli::{CiPlanArgs, OutputFormat};
use crate::commands::client::{s, Client};
use crate::commands::run::{plan_run, query_value, Origin, PlanRequest};

/// Runs `airlock ci plan`.
pub fn run(args: CiPlanArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let root = flow::repo_root()?;
    let mut sink = Sink::from_env(args.print)?;
    let targets = if args.stacks.is_empty() {
        let base = args.base.clone().or_else(|| sink.job.base_sha.clone()).context(
            "no base to compare with: pass --base REF (e.g. --base main); in CI the pull request's base commit is used",
        )?;
        flow::affected_targets(&root, &base, "HEAD")?
    } else {
        flow::explicit_targets(&root, &args.stacks)?
    };
    let version = flow::terraform_version(&args.terraform_bin)?;
    let head = sink
        .job
        .head_sha
        .clone()
        .or_else(|| targets.head.clone())
        .or_else(|| flow::git_head(&root));
    let planner = Planner {
        c: &c,
        root: &root,
        terraform_bin: &args.terraform_bin,
        version: &version,
        origin: Origin {
            head: head.clone(),
            base: sink.job.base_sha.clone().or_else(|| targets.base.clone()),
            change_request: sink.job.change,
            change_request_url: sink.job.change_url.clone(),
            change_authors: sink.job.change_authors.clone(),
        },
        me: flow::identity(&c)?,
    };
    let results: Vec<StackResult> = targets
        .stacks
        .iter()
        .map(|t| {
            let result = if args.refresh {
                planner.refresh(t)
            } else {
                sink.progress(head.as_deref(), &t.name, "planning");
                planner.plan(t)
            };
            let (light, description) = light_of(&result);
            let url = match &result {
                StackResult::Run { run, .. } => {
                    flow::run_url(c.base(), run["id"].as_str().unwrap_or_default())
                }
                StackResult::Failed { .. } => None,
            };
            sink.status(
                head.as_deref(),
                &t.name,
                light,
                &description,
                url.as_deref(),
            );
            result
        })
        .collect();
    let report = Report {
        server_url: c.base().to_owned(),
        head: head.clone(),
        stacks: results,
        removed: targets.removed.clone(),
        ..Report::default()
    };
    let body = comment::render(&report);
    let mut posted = None;
    if sink.posts() {
        match sink.job.change {
            Some(n) => posted = sink.comment(n, &body),
            None => sink.warnings.push(
                "this job's event names no pull/merge request: the comment is printed instead of posted".into(),
            ),
        }
    }
    let mut warnings = std::mem::take(&mut sink.warnings);
    flow::step_summary(&body, &mut warnings);
    sink.warnings = warnings;
    let printed_only = !sink.posts() || sink.job.change.is_none();
    print_outcome(&c, &report, &body, posted.as_deref(), printed_only);
    sink.warn();
    Ok(ExitCode::from(exit_code(&report.stacks)))
}

/// What planning a stack needs besides the stack.
struct Planner<'a> {
    c: &'a Client,
    root: &'a Path,
    terraform_bin: &'a str,
    /// The job's Terraform version (runs are looked up by the fingerprint under it).
    version: &'a str,
    /// The planner's claims recorded with each run.
    origin: Origin,
    /// This job's identity (`flow::identity`): only its own runs stand for this checkout's plan.
    me: flow::Identity,
}

impl Planner<'_> {
    /// Reuses an open, current run for exactly the checkout's inputs, else plans the stack
    /// through `airlock plan`'s own code.
    fn plan(&self, t: &Target) -> StackResult {
        match self.existing_run(t) {
            Ok(Some(found)) if reusable(&found) => {
                eprintln!(
                    "airlock ci plan: stack {}: run {} is for exactly these inputs and still current; reusing it",
                    t.name,
                    s(&found, "/run/id")
                );
                return StackResult::Run {
                    stack: t.name.clone(),
                    run: found["run"].clone(),
                };
            }
            Ok(_) => {}
            Err(e) => eprintln!(
                "warning: could not look for an existing run of stack {}: {e:#}",
                t.name
            ),
        }
        eprintln!("airlock ci plan: planning stack {} in {}", t.name, t.dir);
        let planned = plan_run(
            self.c,
            &PlanRequest {
                dir: &self.root.join(&t.dir),
                stack: Some(&t.name),
                destroy: t.destroy,
                refresh_only: false,
                terraform_bin: self.terraform_bin,
                origin: self.origin.clone(),
                read_stacks: &[],
            },
        );
        match planned {
            Ok(p) => {
                if let Some(n) = self.origin.change_request {
                    withdraw_older(self.c, &t.name, n, &p.response["run"]);
                }
                StackResult::Run {
                    stack: t.name.clone(),
                    run: p.response["run"].clone(),
                }
            }
            Err(e) => StackResult::Failed {
                stack: t.name.clone(),
                error: format!("{e:#}"),
            },
        }
    }

    /// For `--refresh`: the newest run for the checkout's inputs, never a new plan.
    fn refresh(&self, t: &Target) -> StackResult {
        match self.existing_run(t) {
            Ok(Some(found)) => StackResult::Run {
                stack: t.name.clone(),
                run: found["run"].clone(),
            },
            Ok(None) => StackResult::Failed {
                stack: t.name.clone(),
                error: format!(
                    "no run of stack {} for this checkout's inputs: run airlock ci plan",
                    t.name
                ),
            },
            Err(e) => StackResult::Failed {
                stack: t.name.clone(),
                error: format!("{e:#}"),
            },
        }
    }

    /// The newest run of the stack for exactly the checkout's inputs that this job's identity
    /// planned (whatever commit or pull request it claims), as `GET /api/v1/runs/{id}` shows it
    /// (`run`, `current`). Another identity's run for the same inputs is never shown as this
    /// checkout's plan: the inputs do not fix a plan (variables given on the command line,
    /// data sources, the planner's environment are the planner's), so an agent could plan the
    /// pull request's checkout its own way and have its plan stand in for the pull request's.
    fn existing_run(&self, t: &Target) -> anyhow::Result<Option<Value>> {
        let found = flow::runs_for_checkout(self.c, self.root, t, self.version)?;
        let mine = found.runs.iter().find(|r| self.me.planned(r));
        match mine.and_then(|r| r["id"].as_str()) {
            Some(id) => Ok(Some(self.c.get(&format!("/api/v1/runs/{id}"))?)),
            None => Ok(None),
        }
    }
}

/// Withdraws the open runs of `stack` that this job's identity planned earlier for change
/// request `n` with other inputs (earlier pushes), so approvers see only the current plan. A
/// run someone else planned claiming this change request is left alone (the server lets only
/// a run's author withdraw it); a failure is a warning.
fn withdraw_older(c: &Client, stack: &str, n: u64, new: &Value) {
    let listed = match c.get(&format!(
        "/api/v1/runs?stack={}&change_request={n}&limit=50",
        query_value(stack)
    )) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("warning: could not list the earlier runs of stack {stack}: {e:#}");
            return;
        }
    };
    for r in listed["runs"].as_array().into_iter().flatten() {
        let older = r["id"] != new["id"]
            && r["fingerprint"] != new["fingerprint"]
            && r["author_user"] == new["author_user"]
            && r["author_ref"] == new["author_ref"]
            && matches!(r["status"].as_str(), Some("needs_approval" | "approved"));
        if !older {
            continue;
        }
        let id = r["id"].as_str().unwrap_or_default();
        match c.send("POST", &format!("/api/v1/runs/{id}/withdraw"), &json!({})) {
            Ok(_) => eprintln!(
                "airlock ci plan: withdrew run {id} of stack {stack} (planned for an earlier push of #{n})"
            ),
            Err(e) => eprintln!("warning: could not withdraw the earlier run {id}: {e:#}"),
        }
    }
}

/// An open run for the checkout's inputs that the stack has not moved past: planning again would
/// only make the reviewers' approvals start over.
fn reusable(found: &Value) -> bool {
    matches!(
        found["run"]["status"].as_str(),
        Some("needs_approval" | "approved")
    ) && found["current"] == true
}

fn light_of(r: &StackResult) -> (Light, String) {
    match r {
        StackResult::Run { run, .. } => comment::status_of(run),
        StackResult::Failed { error, .. } => (
            Light::Error,
            error.lines().next().unwrap_or("failed").to_owned(),
        ),
    }
}

/// 1 if any stack failed to plan, else 2 if any plan is denied, else 0 (allowed or in review).
fn exit_code(results: &[StackResult]) -> u8 {
    let failed = results
        .iter()
        .any(|r| matches!(r, StackResult::Failed { .. }));
    let denied = results.iter().any(|r| match r {
        StackResult::Run { run, .. } => run["decision"].as_str() == Some("deny"),
        StackResult::Failed { .. } => false,
    });
    if failed {
        1
    } else if denied {
        2
    } else {
        0
    }
}

/// Prints the outcome: the comment itself when it was not posted (`printed_only`), else a line
/// per stack; with `--format json`, both.
fn print_outcome(
    c: &Client,
    report: &Report,
    body: &str,
    posted: Option<&str>,
    printed_only: bool,
) {
    let stacks: Vec<Value> = report
        .stacks
        .iter()
        .map(|r| {
            let (light, description) = light_of(r);
            match r {
                StackResult::Run { stack, run } => json!({
                    "stack": stack, "run": run["id"], "status": run["status"],
                    "decision": run["decision"], "commit_status": format!("{light:?}").to_lowercase(),
                    "description": description,
                }),
                StackResult::Failed { stack, error } => json!({
                    "stack": stack, "error": error,
                    "commit_status": "error", "description": description,
                }),
            }
        })
        .collect();
    let removed: Vec<Value> = report
        .removed
        .iter()
        .map(|r| json!({"stack": r.stack, "dir": r.dir, "declared": r.declared}))
        .collect();
    let v = json!({"stacks": stacks, "removed": removed, "comment_url": posted, "comment": body});
    c.print(&v, |v| {
        if printed_only || c.format == OutputFormat::Json {
            return body.to_owned();
        }
        let mut out = String::new();
        for st in v["stacks"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{}: {} ({})\n",
                s(st, "/stack"),
                s(st, "/description"),
                if st["run"].is_null() {
                    "no run".to_owned()
                } else {
                    s(st, "/run")
                }
            ));
        }
        for r in v["removed"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "this removes stack {} (directory {} deleted)\n",
                s(r, "/stack"),
                s(r, "/dir")
            ));
        }
        if let Some(url) = v["comment_url"].as_str() {
            out.push_str(&format!("comment: {url}\n"));
        }
        out
    });
}
