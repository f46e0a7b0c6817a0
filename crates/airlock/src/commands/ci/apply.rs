//! `airlock ci apply`: after a merge, for each stack the merge affects, the approved run whose
//! inputs' fingerprint is the merged checkout's, applied exactly as `airlock apply` applies it.
//! Nothing else is ever applied: no run for these inputs, a run not approved, superseded, or
//! reviewed with other inputs (the merge brought in other changes) fails the stack with the
//! reason. The outcome goes to the pull request's sticky comment ("Applied") and the statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;

use airlock_core::inputs::InputFile;
use serde_json::{json, Value};

use super::comment::{self, AppliedLine, Light, Report, StackResult};
use super::flow::{self, Sink, Target};
use super::forge::Event;
use crate::cli::CiApplyArgs;
use crate::commands::client::{printable, Client};
use crate::commands::run::{apply_run, checkout_fingerprint, query_value, ApplyOutcome};

/// How many of a stack's newest runs are read to say why none is for the checkout's inputs.
const RUNS_SEARCHED: u32 = 50;

/// What to do for one stack.
enum Choice {
    /// Apply this approved run (its list entry).
    Apply(Value),
    /// Nothing to do, successfully (already applied, no changes).
    Done(Option<Value>, String),
    /// Refused: no applicable run, with the reason and the run it is about, if any.
    Refuse(Option<Value>, String),
}

/// Runs `airlock ci apply`.
pub fn run(args: CiApplyArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let root = flow::repo_root()?;
    let mut sink = Sink::from_env(false)?;
    // In CI, only what was merged is applied: a push to the default branch.
    match &sink.job.event {
        None | Some(Event::Push { default: true, .. }) => {}
        Some(Event::Push { branch, .. }) => anyhow::bail!(
            "airlock ci apply runs on pushes to the default branch only, not to {branch:?}: applies are of merged code"
        ),
        Some(other) => anyhow::bail!(
            "airlock ci apply runs on pushes to the default branch only, not on {other:?}: applies are of merged code"
        ),
    }
    let targets = if args.stacks.is_empty() {
        let base = args
            .base
            .clone()
            .or_else(|| sink.job.base_sha.clone())
            .unwrap_or_else(|| "HEAD^1".to_owned());
        flow::affected_targets(&root, &base, "HEAD")?
    } else {
        flow::explicit_targets(&root, &args.stacks)?
    };
    let version = flow::terraform_version(&args.terraform_bin)?;
    let merge = sink
        .job
        .head_sha
        .clone()
        .or_else(|| targets.head.clone())
        .or_else(|| flow::git_head(&root));
    // (the pull request the run claims, the outcome)
    let mut outcomes: Vec<(Option<u64>, AppliedLine)> = Vec::new();
    let mut errored = false;
    // A stack is not applied after one it depends on was not (dependency order).
    let depends_on = flow::dependencies(&root)?;
    let mut not_applied: BTreeSet<String> = BTreeSet::new();
    for t in &targets.stacks {
        let blocked: Vec<&String> = depends_on
            .get(&t.name)
            .into_iter()
            .flatten()
            .filter(|d| not_applied.contains(*d))
            .collect();
        let choice = if blocked.is_empty() {
            choose(&c, &root, t, &version)
        } else {
            Ok(Choice::Refuse(
                None,
                format!(
                    "it depends on {}, which was not applied in this job: fix that and re-run the job",
                    blocked.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ))
        };
        let (run, ok, message) = match choice {
            Err(e) => {
                errored = true;
                (None, false, format!("{e:#}"))
            }
            Ok(Choice::Done(run, why)) => (run, true, why),
            Ok(Choice::Refuse(run, why)) => (run, false, why),
            Ok(Choice::Apply(run)) => {
                let id = run["id"].as_str().unwrap_or_default().to_owned();
                sink.progress(merge.as_deref(), &t.name, &format!("applying run {id}"));
                eprintln!("airlock ci apply: applying run {id} to stack {}", t.name);
                let (ok, message) = match apply_run(
                    &c,
                    &id,
                    Some(&root.join(&t.dir)),
                    &args.terraform_bin,
                ) {
                    Ok(done) => match done.outcome {
                        ApplyOutcome::Applied => (true, format!("applied run {id}")),
                        ApplyOutcome::Refused(check) => (false, check),
                        ApplyOutcome::Failed => {
                            errored = true;
                            (
                                false,
                                format!("terraform apply failed: see its log with airlock run show {id}"),
                            )
                        }
                    },
                    Err(e) => {
                        errored = true;
                        (false, format!("{e:#}"))
                    }
                };
                (Some(run), ok, message)
            }
        };
        let url = run
            .as_ref()
            .and_then(|r| flow::run_url(c.base(), r["id"].as_str().unwrap_or_default()));
        sink.status(
            merge.as_deref(),
            &t.name,
            if ok { Light::Success } else { Light::Failure },
            &message,
            url.as_deref(),
        );
        if !ok {
            not_applied.insert(t.name.clone());
        }
        let change = run.as_ref().and_then(|r| r["change_request"].as_u64());
        let run_id = run
            .as_ref()
            .and_then(|r| r["id"].as_str())
            .map(str::to_owned);
        outcomes.push((
            change,
            AppliedLine {
                stack: t.name.clone(),
                run_id,
                ok,
                message,
            },
        ));
    }

    // Each pull request's sticky comment: its runs as they are now, and the "Applied" section.
    let mut by_change: BTreeMap<u64, Vec<&AppliedLine>> = BTreeMap::new();
    for (change, line) in &outcomes {
        if let Some(n) = change {
            by_change.entry(*n).or_default().push(line);
        }
    }
    let mut summary = String::new();
    for (n, lines) in &by_change {
        let stacks: Vec<StackResult> = lines
            .iter()
            .filter_map(|line| {
                let run = flow::fetch_run(&c, line.run_id.as_deref()?).ok()?;
                Some(StackResult::Run {
                    stack: line.stack.clone(),
                    run,
                })
            })
            .collect();
        let report = Report {
            server_url: c.base().to_owned(),
            head: None,
            stacks,
            removed: Vec::new(),
            applied: lines.iter().map(|l| (*l).clone()).collect(),
            applied_commit: merge.clone(),
        };
        let body = comment::render(&report);
        if sink.posts() {
            sink.comment(*n, &body);
        }
        summary.push_str(&body);
    }
    // Stacks whose outcome belongs to no pull request (no run at all): the job summary only.
    let orphans: Vec<AppliedLine> = outcomes
        .iter()
        .filter(|o| o.0.is_none())
        .map(|o| o.1.clone())
        .collect();
    if !orphans.is_empty() || by_change.is_empty() {
        summary.push_str(&comment::render(&Report {
            server_url: c.base().to_owned(),
            removed: targets.removed.clone(),
            applied: orphans,
            applied_commit: merge.clone(),
            ..Report::default()
        }));
    }
    let mut warnings = std::mem::take(&mut sink.warnings);
    flow::step_summary(&summary, &mut warnings);
    sink.warnings = warnings;

    let lines: Vec<Value> = outcomes
        .iter()
        .map(|(n, l)| json!({"stack": l.stack, "run": l.run_id, "ok": l.ok, "message": l.message, "change_request": n}))
        .collect();
    let removed: Vec<Value> = targets
        .removed
        .iter()
        .map(|r| json!({"stack": r.stack, "dir": r.dir, "declared": r.declared}))
        .collect();
    c.print(
        &json!({"merge_commit": merge, "stacks": lines, "removed": removed}),
        |_| {
            let mut out = String::new();
            for (_, l) in &outcomes {
                out.push_str(&format!(
                    "{}: {} {}\n",
                    printable(&l.stack),
                    if l.ok { "ok:" } else { "NOT APPLIED:" },
                    printable(&l.message)
                ));
            }
            for r in &targets.removed {
                out.push_str(&format!(
                    "this removes stack {} (directory {} deleted): nothing was destroyed\n",
                    printable(&r.stack),
                    printable(&r.dir)
                ));
            }
            if outcomes.is_empty() {
                out.push_str("no stack is affected by this commit: nothing to apply\n");
            }
            out
        },
    );
    sink.warn();
    let refused = outcomes.iter().any(|o| !o.1.ok);
    Ok(ExitCode::from(if errored {
        1
    } else if refused {
        2
    } else {
        0
    }))
}

/// The run to apply for the stack, chosen by the merged checkout's inputs alone (a run's
/// commit and pull request are its planner's claims), or why there is none.
fn choose(c: &Client, root: &Path, t: &Target, version: &str) -> anyhow::Result<Choice> {
    let mine = flow::runs_for_checkout(c, root, t, version)?;
    let id = |r: &Value| r["id"].as_str().unwrap_or("?").to_owned();
    if let Some(r) = mine.runs.iter().find(|r| r["status"] == "approved") {
        return Ok(Choice::Apply(r.clone()));
    }
    if let Some(r) = mine.runs.first() {
        let (run, i) = (Some(r.clone()), id(r));
        let status = r["status"].as_str().unwrap_or("unknown");
        return Ok(match status {
            "applied" => Choice::Done(run, format!("run {i} for these inputs is already applied")),
            "no_changes" => Choice::Done(run, format!("run {i} for these inputs changes nothing")),
            "needs_approval" => Choice::Refuse(
                run,
                format!(
                    "run {i} for these inputs is not approved yet ({}/{} approvals): an approver runs airlock approve {i}, then re-run this job",
                    r["approvals"], r["required_approvals"]
                ),
            ),
            "applying" => Choice::Refuse(run, format!("an apply of run {i} is in progress")),
            "superseded" => Choice::Refuse(
                run,
                format!("run {i} for these inputs is superseded (the stack changed after it was planned): re-plan on a pull request"),
            ),
            other => Choice::Refuse(
                run,
                format!("the newest run for these inputs, {i}, is {other}: re-plan on a pull request"),
            ),
        });
    }
    // No run for these inputs: the stack's newest runs say why.
    let listed = c.get(&format!(
        "/api/v1/runs?stack={}&limit={RUNS_SEARCHED}",
        query_value(&t.name)
    ))?;
    let runs: Vec<&Value> = listed["runs"].as_array().into_iter().flatten().collect();
    for r in &runs {
        let theirs = r["terraform_version"].as_str().unwrap_or_default();
        if theirs != version
            && r["fingerprint"].as_str()
                == Some(checkout_fingerprint(&root.join(&t.dir), theirs)?.0.as_str())
        {
            return Ok(Choice::Refuse(
                Some((*r).clone()),
                format!(
                    "run {} is for these inputs but was planned with Terraform {theirs}, and this job runs {version}: use the same Terraform version for plan and apply",
                    id(r)
                ),
            ));
        }
    }
    let newest = runs
        .iter()
        .find(|r| matches!(r["status"].as_str(), Some("approved" | "needs_approval")))
        .or(runs.first());
    let Some(r) = newest else {
        return Ok(Choice::Refuse(
            None,
            format!(
                "no run of stack {} for these inputs: plan it on a pull request (airlock ci plan) and have it approved",
                t.name
            ),
        ));
    };
    let i = id(r);
    let full = flow::fetch_run(c, &i)?;
    let theirs: Vec<InputFile> = serde_json::from_value(full["inputs"].clone()).unwrap_or_default();
    let mut differ: Vec<&str> = mine
        .files
        .iter()
        .filter(|f| !theirs.contains(f))
        .chain(theirs.iter().filter(|f| !mine.files.contains(f)))
        .map(|f| f.path.as_str())
        .collect();
    differ.sort_unstable();
    differ.dedup();
    let shown: Vec<&str> = differ.iter().copied().take(10).collect();
    let more = differ.len().saturating_sub(shown.len());
    Ok(Choice::Refuse(
        Some((*r).clone()),
        format!(
            "no run for the merged inputs: run {i} ({}) was reviewed with other inputs ({}{}): the merge brought in other changes; re-plan on a pull request",
            r["status"].as_str().unwrap_or("?"),
            if shown.is_empty() { "the Terraform version".to_owned() } else { format!("differing: {}", shown.join(", ")) },
            if more > 0 { format!(" and {more} more") } else { String::new() },
        ),
    ))
}
