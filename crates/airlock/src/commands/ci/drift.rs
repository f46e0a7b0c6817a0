//! `airlock ci drift`, for a scheduled pipeline: checks every stack of airlock.hcl (or the
//! given ones) with `airlock drift`'s one implementation, and keeps ONE issue per drifted stack
//! on the forge: opened when drift appears, updated while it lasts, closed when a check finds
//! the stack in sync. It never plans a change and never applies.

use std::path::Path;
use std::process::ExitCode;

use airlock_policy::drift::{DriftReport, DriftStatus};
use anyhow::Context;

use super::comment::text;
use super::flow;
use super::forge::Forge;
use crate::cli::CiDriftArgs;
use crate::commands::client::{printable, Client};
use crate::commands::drift::{check_stack, code, report_text, Checked};

/// Drifted instances listed in an issue (the rest are counted).
const ISSUE_INSTANCES: usize = 100;

/// The hidden marker of a stack's issue (one HTML comment; `-` encoded, since `--` may not
/// appear inside one).
pub fn marker(stack: &str) -> String {
    format!("<!-- airlock:drift:{} -->", stack.replace('-', "%2D"))
}

/// The issue's markdown: every string from the report through `comment::text` (character
/// references, so never inside code spans, where they would show verbatim).
pub fn issue_body(stack: &str, r: &DriftReport, report_id: Option<&str>) -> String {
    let mut out = format!(
        "**airlock: {} has drifted**: {} instance(s) and {} output(s) changed outside Terraform.\n\n\
         airlock never applies drift. Review it, then change the code to match, or put the \
         infrastructure back with a reviewed run. This issue closes when a check finds the stack \
         in sync.\n\n",
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
    let (mut failed, mut drifted) = (false, false);
    for t in &targets.stacks {
        let checked = match check_stack(&c, &root.join(&t.dir), Some(&t.name), &args.terraform_bin)
        {
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
                                &issue_body(stack, report, id),
                            )
                            .map(|url| Some(format!("issue: {url}"))),
                        DriftStatus::InSync => f
                            .close_issue(
                                &marker(stack),
                                &format!(
                                    "**airlock: {} is in sync again**; the drift reported here has cleared.",
                                    text(stack)
                                ),
                            )
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
