//! `airlock drift`: a refresh-only plan with plan-phase credentials only (the plan-phase token
//! can read and lock for planning, never write state; the apply profile never reaches
//! terraform), read from `resource_drift` and `output_changes` (never `-detailed-exitcode`),
//! and uploaded as a drift report that the server reads itself. A locked stack is skipped, not
//! waited on; a provider or refresh error is reported as `unknown`, never "in sync".

use std::path::Path;
use std::process::ExitCode;

use airlock_policy::drift::{self, DriftReport, DriftStatus};
use base64::Engine;
use serde_json::{json, Value};

use super::client::{printable, s, stack_segment, time, Client, ServerRefused};
use super::run::{
    run_text, show_json, stack_position, upload_plan, Origin, PlanPhase, PlanRequest,
};
use crate::cli::DriftArgs;

/// Exit codes of `airlock drift` (and per stack of `airlock ci drift`).
pub mod code {
    /// In sync.
    pub const IN_SYNC: u8 = 0;
    /// Unknown: terraform or a provider failed; nothing can be said.
    pub const UNKNOWN: u8 = 1;
    /// Skipped: the stack's state is locked.
    pub const SKIPPED: u8 = 2;
    /// Drifted: a human should look (the `review` exit code).
    pub const DRIFTED: u8 = 3;
}

/// What checking one stack came to.
pub enum Checked {
    /// The stack's state was locked (an apply or plan in progress): nothing was checked.
    Skipped { stack: String, note: String },
    /// A report: as read locally, and the server's answer (`None` if it was not recorded, with
    /// why).
    Report {
        stack: String,
        report: Box<DriftReport>,
        recorded: Result<Value, String>,
    },
}

impl Checked {
    pub fn exit_code(&self) -> u8 {
        match self {
            Checked::Skipped { .. } => code::SKIPPED,
            Checked::Report { report, .. } => match report.status {
                DriftStatus::InSync => code::IN_SYNC,
                DriftStatus::Drifted => code::DRIFTED,
                DriftStatus::Unknown => code::UNKNOWN,
            },
        }
    }
}

/// The last lines of terraform's output, without terminal colours: the error a report keeps.
fn error_tail(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    drift::cut(tail.trim())
}

/// Whether terraform failed because the state is locked by someone else.
fn lock_refused(log: &[u8]) -> bool {
    String::from_utf8_lossy(log).contains("Error acquiring the state lock")
}

/// Whether [`check`] proposes a run that accepts the drift it finds.
pub enum Propose<'a> {
    No,
    Yes,
    /// Yes, unless this finds an open run that accepts exactly the drift the check's plan shows
    /// (given that plan's `terraform show -json`): then that run (the server's `run`).
    UnlessOpen(&'a dyn Fn(&[u8]) -> anyhow::Result<Option<Value>>),
}

/// What proposing came to.
pub enum Proposal {
    /// A run proposed now: the server's answer to the upload (`run`, `summary_markdown`, ...).
    New(Value),
    /// An open run already accepts exactly this drift (the run).
    Open(Value),
    /// The server refused the upload: why.
    Refused(String),
}

/// Checks one stack — the one implementation behind `airlock drift` and `airlock ci drift` —
/// and, as `propose` says, when drift is found, uploads the check's own refresh-only plan as a
/// governed run that accepts it.
pub fn check(
    c: &Client,
    dir: &Path,
    stack: Option<&str>,
    terraform_bin: &str,
    read_stacks: &[String],
    propose: Propose<'_>,
) -> anyhow::Result<(Checked, Option<Proposal>)> {
    let phase = PlanPhase::prepare(c, dir, stack, terraform_bin, read_stacks)?;
    let stack = phase.stack.clone();
    let shown = c.get(&format!(
        "/api/v1/stacks/{}?instances=false",
        stack_segment(&stack)
    ))?;
    if let Some(l) = shown.get("lock").filter(|l| !l.is_null()) {
        return Ok((
            Checked::Skipped {
                note: format!(
                    "state locked by {} for {} since {}; not checked (an operation is in progress)",
                    s(l, "/owner"),
                    s(l, "/operation"),
                    time(l, "/created_at")
                ),
                stack,
            },
            None,
        ));
    }
    let (lineage, serial) = stack_position(c, &stack)?;
    let plan_path = phase.work().join("drift.tfplan");
    let args: Vec<String> = vec![
        "plan".into(),
        "-refresh-only".into(),
        "-input=false".into(),
        "-no-color".into(),
        // A lock is not waited on: a stack being changed is skipped.
        "-lock-timeout=0s".into(),
        format!("-out={}", plan_path.display()),
    ];
    let done = phase.run_plan(terraform_bin, &args)?;
    let mut body = json!({ "serial": serial });
    let mut shown_json = Vec::new();
    let report = if !done.status.success() {
        if lock_refused(&done.log) {
            return Ok((
                Checked::Skipped {
                    stack,
                    note: "state locked while checking; not checked (an operation is in progress)"
                        .into(),
                },
                None,
            ));
        }
        let error = format!(
            "terraform plan -refresh-only failed ({}):\n{}",
            done.status,
            error_tail(&done.log)
        );
        body["error"] = json!(error);
        DriftReport::unknown(&error)
    } else {
        let show = show_json(terraform_bin, &phase.dir, &plan_path, &phase.env)?;
        if !show.status.success() {
            let error = format!("terraform show -json failed: {}", error_tail(&show.stderr));
            body["error"] = json!(error);
            DriftReport::unknown(&error)
        } else {
            match drift::read(&show.stdout) {
                Ok(r) => {
                    body["plan_json_b64"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(&show.stdout));
                    shown_json = show.stdout;
                    r
                }
                Err(e) => {
                    body["error"] = json!(e);
                    DriftReport::unknown(&e)
                }
            }
        }
    };
    if stack_position(c, &stack)? != (lineage, serial) {
        anyhow::bail!("the state of {stack} changed while checking for drift; check again");
    }
    let recorded = match c.send(
        "POST",
        &format!("/api/v1/stacks/{}/drift", stack_segment(&stack)),
        &body,
    ) {
        Ok(v) => Ok(v),
        Err(e) => match e.downcast_ref::<ServerRefused>() {
            Some(r) if r.status == 403 => Err(printable(&r.message).into_owned()),
            _ => return Err(e),
        },
    };
    // The same plan the check read, as a run: the server judges it from the binary and its
    // JSON like any upload, and an approver and CI's `airlock apply` do the rest.
    let open = match (&propose, report.status) {
        (Propose::UnlessOpen(find), DriftStatus::Drifted) => find(&shown_json)?,
        _ => None,
    };
    let wanted = !matches!(propose, Propose::No) && report.status == DriftStatus::Drifted;
    let proposed = wanted.then(|| {
        if let Some(run) = open {
            return Proposal::Open(run);
        }
        let req = PlanRequest {
            dir: &phase.dir,
            stack: Some(&stack),
            destroy: false,
            refresh_only: true,
            terraform_bin,
            origin: Origin::default(),
            read_stacks,
        };
        match upload_plan(c, &phase, &plan_path, &req) {
            Ok(p) => Proposal::New(p.response),
            Err(e) => Proposal::Refused(format!("{e:#}")),
        }
    });
    Ok((
        Checked::Report {
            stack,
            report: Box::new(report),
            recorded,
        },
        proposed,
    ))
}

/// One line for a stack's drift status as the API gives it (`stack show`, `stack list`).
pub fn status_text(d: &Value) -> String {
    let when = |p: &str| time(d, p);
    match d["status"].as_str() {
        Some("in_sync") => format!("in sync (checked {})", when("/last_check")),
        Some("drifted") => format!(
            "drifted since {} ({} drifted, {} findings; checked {})",
            when("/drifted_since"),
            s(d, "/drifted"),
            s(d, "/findings"),
            when("/last_check")
        ),
        Some("unknown") => match d.get("drifted_since").and_then(Value::as_i64) {
            Some(_) => format!(
                "unknown (the check at {} failed); drifted since {}",
                when("/last_check"),
                when("/drifted_since")
            ),
            None => format!("unknown (the check at {} failed)", when("/last_check")),
        },
        _ => "never checked".into(),
    }
}

/// The report as text: status, instances (the first 50), outputs, findings, notes.
pub fn report_text(stack: &str, r: &DriftReport) -> String {
    let mut out = format!(
        "{stack}: {}\n",
        match r.status {
            DriftStatus::InSync => "in sync".to_owned(),
            DriftStatus::Drifted => format!(
                "DRIFTED: {} instance(s), {} output(s) changed outside Terraform",
                r.drifted_instances,
                r.outputs.len()
            ),
            DriftStatus::Unknown => "UNKNOWN: the check could not tell".to_owned(),
        }
    );
    if let Some(e) = &r.error {
        for line in e.lines() {
            out.push_str(&format!("  error: {}\n", printable(line)));
        }
    }
    for i in r.instances.iter().take(50) {
        let mark = if i.critical { " [critical]" } else { "" };
        let attrs = if i.attributes.is_empty() {
            String::new()
        } else {
            format!(": {}", i.attributes.join(", "))
        };
        let line = format!("  ~ {} ({}){mark}{attrs}", i.address, i.change);
        out.push_str(&printable(&line));
        out.push('\n');
    }
    if r.instances.len() > 50 {
        out.push_str(&format!(
            "  ... and {} more (airlock drift show)\n",
            r.drifted_instances.saturating_sub(50)
        ));
    }
    for o in &r.outputs {
        let line = format!("  ~ output.{} ({})", o.name, o.change);
        out.push_str(&printable(&line));
        out.push('\n');
    }
    for f in &r.findings {
        let line = format!("  ! {}: {}", f.rule, f.message);
        out.push_str(&printable(&line));
        out.push('\n');
    }
    for n in &r.notes {
        out.push_str(&format!("  note: {}\n", printable(n)));
    }
    out
}

/// `airlock drift [DIR] [--stack S]`.
pub fn run(args: DriftArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let propose = match args.propose {
        true => Propose::Yes,
        false => Propose::No,
    };
    let (checked, proposed) = check(
        &c,
        &args.dir,
        args.stack.as_deref(),
        &args.terraform_bin,
        &args.read_stack,
        propose,
    )?;
    let proposed = proposed.map(|p| match p {
        Proposal::New(v) | Proposal::Open(v) => Ok(v),
        Proposal::Refused(why) => Err(why),
    });
    // A proposal that was asked for and refused is an error; otherwise the check's code.
    let code = match &proposed {
        Some(Err(_)) => code::UNKNOWN,
        _ => checked.exit_code(),
    };
    let v = match &checked {
        Checked::Skipped { stack, note } => json!({"stack": stack, "skipped": note}),
        Checked::Report {
            stack,
            report,
            recorded,
        } => json!({
            "stack": stack,
            "report": report,
            "recorded": recorded.as_ref().ok(),
            "not_recorded": recorded.as_ref().err(),
            "proposed": proposed.as_ref().and_then(|p| p.as_ref().ok()),
            "not_proposed": proposed.as_ref().and_then(|p| p.as_ref().err()),
        }),
    };
    c.print(&v, |_| match &checked {
        Checked::Skipped { stack, note } => format!("{stack}: skipped: {}\n", printable(note)),
        Checked::Report {
            stack,
            report,
            recorded,
        } => {
            let mut out = report_text(stack, report);
            match recorded {
                Ok(v) => out.push_str(&format!(
                    "recorded as {}; status: {}\n",
                    s(v, "/report/id"),
                    status_text(&v["drift"])
                )),
                Err(why) => out.push_str(&format!("not recorded: {why}\n")),
            }
            match &proposed {
                Some(Ok(v)) => out.push_str(&format!(
                    "\nproposed run {} to accept this drift; what its reviewers see:\n{}",
                    s(v, "/run/id"),
                    run_text(v)
                )),
                Some(Err(why)) => out.push_str(&format!("not proposed: {}\n", printable(why))),
                None if args.propose => out.push_str(match report.status {
                    DriftStatus::Unknown => "nothing proposed: the check could not tell\n",
                    _ => "nothing proposed: no drift\n",
                }),
                None => {}
            }
            out
        }
    });
    Ok(ExitCode::from(code))
}
