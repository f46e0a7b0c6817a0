//! `airlock ci drift`, for a scheduled pipeline: checks every stack of airlock.hcl (or the
//! given ones) with `airlock drift`'s one implementation, and keeps ONE issue per drifted stack
//! on the forge: opened when drift appears, updated while it lasts, closed when a check finds
//! the stack in sync. It never applies. With `--propose`, a drifted stack also gets a run that
//! accepts the drift (the check's own refresh-only plan, judged and reviewed like any run), linked
//! from the issue; an open one from the same inputs at the same state is linked, not proposed again.

use std::path::Path;
use std::process::ExitCode;

use airlock_policy::drift::{DriftReport, DriftStatus};
use anyhow::Context;

use super::comment::text;
use super::flow;
use super::forge::Forge;
use crate::cli::CiDriftArgs;
use crate::commands::client::{printable, Client};
use crate::commands::drift::{check, code, report_text, Checked, Proposal, Propose};
use crate::commands::run::query_value;
use serde_json::Value;

/// Drifted instances listed in an issue (the rest are counted).
const ISSUE_INSTANCES: usize = 100;

/// The hidden marker of a stack's issue (one HTML comment; `-` encoded, since `--` may not
/// appear inside one).
pub fn marker(stack: &str) -> String {
    format!("<!-- airlock:drift:{} -->", stack.replace('-', "%2D"))
}

/// The issue's markdown: every string from the report through `comment::text` (character
/// references, so never inside code spans, where they would show verbatim).
pub fn issue_body(
    stack: &str,
    r: &DriftReport,
    report_id: Option<&str>,
    proposal: Option<&Proposal>,
    stale: &[&Value],
) -> String {
    let mut out = format!(
        "**airlock: {} has drifted**: {} instance(s) and {} output(s) changed outside Terraform.\n\n\
         airlock never applies drift. Review it, then change the code to match, put the \
         infrastructure back with a reviewed run, or accept the drift into the state with a \
         reviewed refresh-only run. This issue closes when a check finds the stack in sync.\n\n",
        text(stack),
        r.drifted_instances,
        r.outputs.len()
    );
    if !r.findings.is_empty() {
        out.push_str("**Findings**\n\n");
        for f in &r.findings {
            out.push_str(&format!("- {}: {}\n", text(&f.rule), text(&f.message)));
        }
        out.push('\n');
    }
    if !r.instances.is_empty() {
        out.push_str("| instance | change | attributes |\n|---|---|---|\n");
        for i in r.instances.iter().take(ISSUE_INSTANCES) {
            let mark = if i.protected { " (protected)" } else { "" };
            out.push_str(&format!(
                "| {}{mark} | {} | {} |\n",
                text(&i.address),
                text(&i.change),
                text(&i.attributes.join(", "))
            ));
        }
        let more = r.drifted_instances.saturating_sub(ISSUE_INSTANCES as u64);
        if more > 0 {
            out.push_str(&format!("\n… and {more} more.\n"));
        }
    }
    for o in &r.outputs {
        out.push_str(&format!(
            "\n- output {}: {}",
            text(&o.name),
            text(&o.change)
        ));
    }
    if let Some(p) = proposal {
        out.push_str(&format!("\n\n{}", proposal_markdown(p)));
    }
    for run in stale {
        out.push_str(&format!("\n\n{}", stale_markdown(run)));
    }
    if let Some(id) = report_id {
        out.push_str(&format!(
            "\n\nReport {} (airlock stack show {}; GET /api/v1/stacks/…/drift/{}).\n",
            text(id),
            text(stack),
            text(id)
        ));
    }
    out
}

/// `airlock ci drift [--stack S]...`.
pub fn run(args: CiDriftArgs) -> anyhow::Result<ExitCode> {
    let root = flow::repo_root()?;
    let names = if args.stacks.is_empty() {
        all_stacks(&root)?
    } else {
        args.stacks.clone()
    };
    let targets = flow::explicit_targets(&root, &names)?;
    let c = Client::new(&args.client)?;
    let env = |k: &str| std::env::var(k).ok();
    let forge: Option<Forge> = match Forge::from_env(&env)? {
        _ if args.print => None,
        ctx => ctx.map(|ctx| ctx.forge),
    };
    // With --propose: this job's Terraform version (for the inputs' fingerprint) and its own
    // identity (only its own earlier proposals are linked again).
    let proposer = match args.propose {
        true => Some((
            flow::terraform_version(&args.terraform_bin)?,
            flow::identity(&c)?,
        )),
        false => None,
    };
    let (mut failed, mut drifted) = (false, false);
    for t in &targets.stacks {
        let checked = (|| {
            // With --propose: the open runs accepting drift of this stack from these inputs.
            let open = match &proposer {
                Some((version, me)) => open_drift_runs(&c, &root, t, version, me)?,
                None => Vec::new(),
            };
            let find = |shown: &[u8]| accepting(&open, shown);
            let propose = match args.propose {
                true => Propose::UnlessOpen(&find),
                false => Propose::No,
            };
            let dir = root.join(&t.dir);
            let (checked, proposal) =
                check(&c, &dir, Some(&t.name), &args.terraform_bin, &[], propose)?;
            anyhow::Ok((checked, proposal, open))
        })();
        let (checked, proposal, open) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                eprintln!("{}: error: {e:#}", t.name);
                failed = true;
                continue;
            }
        };
        match &checked {
            Checked::Skipped { stack, note } => {
                println!("{stack}: skipped: {}", printable(note));
            }
            Checked::Report {
                stack,
                report,
                recorded,
            } => {
                print!("{}", report_text(stack, report));
                let proposal = proposal.as_ref();
                if let Some(p) = proposal {
                    println!("{stack}: {}", printable(&proposal_line(p)));
                    if matches!(p, Proposal::Refused(_)) {
                        failed = true;
                    }
                }
                // Open runs accepting drift that is no longer what the stack has (it cleared,
                // or changed since): applied, they would record drift that does not exist.
                let linked = proposal.and_then(proposed_run).map(|r| &r["id"]);
                let stale: Vec<&Value> = match report.status {
                    DriftStatus::Unknown => Vec::new(),
                    _ => open
                        .iter()
                        .map(|(run, _)| run)
                        .filter(|run| Some(&run["id"]) != linked)
                        .collect(),
                };
                for run in &stale {
                    println!("{stack}: {}", printable(&stale_line(run)));
                }
                let id = recorded
                    .as_ref()
                    .ok()
                    .and_then(|v| v["report"]["id"].as_str());
                if let Err(why) = recorded {
                    eprintln!("{stack}: not recorded: {why}");
                    failed = true;
                }
                if let Some(f) = &forge {
                    let posted = match report.status {
                        DriftStatus::Drifted => f
                            .upsert_issue(
                                &marker(stack),
                                &format!("airlock: drift in {stack}"),
                                &issue_body(stack, report, id, proposal, &stale),
                            )
                            .map(|url| Some(format!("issue: {url}"))),
                        DriftStatus::InSync => f
                            .close_issue(&marker(stack), &in_sync_comment(stack, &stale))
                            .map(|url| url.map(|u| format!("closed: {u}"))),
                        // An unknown check says nothing: the issue stays as it is.
                        DriftStatus::Unknown => Ok(None),
                    };
                    match posted {
                        Ok(Some(line)) => println!("{stack}: {}", printable(&line)),
                        Ok(None) => {}
                        Err(e) => {
                            eprintln!("{stack}: forge: {e}");
                            failed = true;
                        }
                    }
                }
            }
        }
        match checked.exit_code() {
            code::DRIFTED => drifted = true,
            code::UNKNOWN => failed = true,
            _ => {}
        }
    }
    Ok(ExitCode::from(if failed {
        code::UNKNOWN
    } else if drifted {
        code::DRIFTED
    } else {
        code::IN_SYNC
    }))
}

/// The run a proposal names.
fn proposed_run(p: &Proposal) -> Option<&Value> {
    match p {
        Proposal::New(answer) => Some(&answer["run"]),
        Proposal::Open(run) => Some(run),
        Proposal::Refused(_) => None,
    }
}

/// One line for the job's log.
fn proposal_line(p: &Proposal) -> String {
    let Some(r) = proposed_run(p) else {
        return match p {
            Proposal::Refused(why) => format!("not proposed: {why}"),
            _ => String::new(),
        };
    };
    let id = r["id"].as_str().unwrap_or("?");
    format!(
        "{} run {id} accepts this drift ({}{}): an approver runs airlock approve {id}, then airlock apply applies it",
        if matches!(p, Proposal::New(_)) { "proposed" } else { "open" },
        r["status"].as_str().unwrap_or("?"),
        decision(r),
    )
}

/// The issue's paragraph about it.
fn proposal_markdown(p: &Proposal) -> String {
    let Some(r) = proposed_run(p) else {
        let why = match p {
            Proposal::Refused(why) => why.as_str(),
            _ => "",
        };
        return format!(
            "**No run accepting this drift could be proposed**: {}",
            text(why)
        );
    };
    let denied = r["status"] == "denied" || r["decision"] == "deny";
    let what = if denied {
        "was **denied by the plan gate** (the run says why; accepting this drift needs a reviewed code change first)"
    } else {
        "records in the state what changed outside Terraform and changes no infrastructure; an approver reviews it (`airlock run show`, `airlock approve`), then it is applied like any run (`airlock apply`)"
    };
    format!(
        "**Accept this drift**: run {} ({}, {}) {what}.",
        text(r["id"].as_str().unwrap_or("?")),
        text(r["status"].as_str().unwrap_or("?")),
        match p {
            Proposal::New(_) => "proposed by this check",
            _ => "proposed by an earlier check of the same code at the same state, for exactly this drift",
        },
    )
}

fn decision(r: &Value) -> String {
    match r["decision"].as_str() {
        Some(d) => format!(", gate: {d}"),
        None => String::new(),
    }
}

fn stale_line(run: &Value) -> String {
    let id = run["id"].as_str().unwrap_or("?");
    format!("run {id} accepts drift the stack no longer has: reject it (airlock reject {id})")
}

fn stale_markdown(run: &Value) -> String {
    format!(
        "Run {} accepts drift this stack no longer has; applied, it would record drift that does not exist: reject it.",
        text(run["id"].as_str().unwrap_or("?"))
    )
}

/// The comment that closes a stack's issue.
fn in_sync_comment(stack: &str, stale: &[&Value]) -> String {
    let mut out = format!(
        "**airlock: {} is in sync again**; the drift reported here has cleared.",
        text(stack)
    );
    for run in stale {
        out.push(' ');
        out.push_str(&stale_markdown(run));
    }
    out
}

/// The open runs of `t` (waiting for approval, approved, or denied by the gate) that `me`
/// proposed from this checkout's inputs at the stack's current state to accept drift, each with
/// its reviewed plan JSON. Only this job's own identity: the server ties a plan JSON's drift to
/// the binary's addresses and actions, not its values (only `airlock apply`'s own `terraform
/// show -json` proves those), so a run another identity uploaded is never vouched for as one an
/// earlier check proposed.
fn open_drift_runs(
    c: &Client,
    root: &Path,
    t: &flow::Target,
    version: &str,
    me: &flow::Identity,
) -> anyhow::Result<Vec<(Value, Value)>> {
    let mut open = Vec::new();
    for r in flow::runs_for_checkout(c, root, t, version)?.runs {
        if !matches!(
            r["status"].as_str(),
            Some("needs_approval" | "approved" | "denied")
        ) || !me.planned(&r)
        {
            continue;
        }
        let id = query_value(r["id"].as_str().unwrap_or_default());
        let full = c.get(&format!("/api/v1/runs/{id}"))?;
        if full["run"]["plan_mode"] != "refresh-only" || full["current"] != true {
            continue;
        }
        let reviewed = c.get_bytes(&format!("/api/v1/runs/{id}/artifacts/plan.json"))?;
        let reviewed: Value = serde_json::from_slice(&reviewed)
            .with_context(|| format!("reading run {id}'s plan JSON"))?;
        open.push((full["run"].clone(), reviewed));
    }
    Ok(open)
}

/// The run of `open` that accepts exactly the drift in `shown` (the check's `terraform show
/// -json`: the same `resource_drift` and `output_changes`, values and all), if any: proposing
/// another would only repeat it. A run accepting other drift is not it (its reviewers saw other
/// values).
fn accepting(open: &[(Value, Value)], shown: &[u8]) -> anyhow::Result<Option<Value>> {
    let shown: Value = serde_json::from_slice(shown).context("reading terraform show -json")?;
    Ok(open
        .iter()
        .find(|(_, reviewed)| {
            ["resource_drift", "output_changes"]
                .iter()
                .all(|k| reviewed.get(k) == shown.get(k))
        })
        .map(|(run, _)| run.clone()))
}

/// Every stack block of airlock.hcl that names a directory.
fn all_stacks(root: &Path) -> anyhow::Result<Vec<String>> {
    let path = root.join(airlock_core::inputs::CONFIG_PATH);
    let source =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = airlock_policy::config::parse(&source, &path.display().to_string())?;
    Ok(config
        .stacks
        .into_iter()
        .filter(|s| s.dir.is_some())
        .map(|s| s.name)
        .collect())
}
