//! `airlock check`: reads a plan (file, stdin, or a binary plan through `terraform show -json`),
//! streams it through the policy crate's rules, prints the report and maps the decision to the
//! exit code: 0 allow (or review), 1 error, 2 deny, 3 review with `--fail-on review`.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use airlock_policy::analysis::{ChangeReport, Decision, Verdict};
use airlock_policy::config::{self, Config};
use airlock_policy::gate::{self, GateError, GateInput, Observer, PlanSource};
use airlock_policy::plan::{PlanError, ResourceChange};
use airlock_policy::rego::RegoError;
use airlock_policy::report;
use anyhow::{bail, Context};

use crate::cli::{CheckArgs, CheckFormat, FailOn};

/// Read buffer for plans: big enough to amortise syscalls, small next to the 64 MiB budget.
const READ_BUFFER: usize = 256 * 1024;

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (config, config_name) = load_config(args.config.as_deref())?;
    let stack = pick_stack(&config, args.stack.as_deref(), &config_name)?;
    let rego = match &args.policy {
        Some(dir) => load_policies(dir)?,
        None => Vec::new(),
    };
    let color = args.format == CheckFormat::Text
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());

    let input = GateInput {
        config: &config,
        stack,
        rego: &rego,
        rego_runner: &airlock_policy::rego::InProcess,
        server_sets: &[],
        refresh_only: refresh_only(&args.plan)?,
    };
    let mut out = Output::new(args.format, color);
    // Without Rego the plan streams through the gate; Rego makes the gate hold it in memory.
    let decision = with_plan(&args, |reader| {
        gate::judge(PlanSource::Stream(reader), &input, &mut out).map_err(|e| match e {
            GateError::Plan(e) => plan_error(e, source_name(&args.plan)),
            GateError::Rego { error, .. } => match &args.policy {
                Some(dir) => anyhow::anyhow!("{error} ({})", dir.display()),
                None => anyhow::anyhow!("{error}"),
            },
            e => anyhow::anyhow!("{e}"),
        })
    })?;
    let warnings: Vec<String> = decision
        .plan
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    out.finish(&decision, &warnings, &artifact_name(&args.plan))?;
    Ok(match decision.verdict {
        Verdict::Deny => ExitCode::from(2),
        Verdict::Review if args.fail_on == Some(FailOn::Review) => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    })
}

/// `--config`, else `./airlock.hcl` when present, else the built-in defaults.
fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
    let path: PathBuf = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let default = PathBuf::from("airlock.hcl");
            if !default.is_file() {
                return Ok((Config::default(), "(built-in defaults)".into()));
            }
            default
        }
    };
    let name = path.display().to_string();
    let source = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the airlock configuration {name}"))?;
    let config = config::parse(&source, &name)?;
    Ok((config, name))
}

fn pick_stack<'c>(
    config: &'c Config,
    wanted: Option<&str>,
    config_name: &str,
) -> anyhow::Result<Option<&'c config::StackConfig>> {
    match wanted {
        Some(name) => match config.stack(name) {
            Some(s) => Ok(Some(s)),
            None => {
                let known: Vec<&str> = config.stacks.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "stack \"{name}\" is not declared in {config_name} (declared: {}); add a \
                     `stack \"{name}\" {{ ... }}` block or pass one of those",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            }
        },
        None if config.stacks.len() == 1 => Ok(config.stacks.first()),
        None => {
            if config.stacks.len() > 1 {
                eprintln!(
                    "warning: {config_name} declares {} stacks; pass --stack to apply a stack's \
                     rules (production, approvals)",
                    config.stacks.len()
                );
            }
            Ok(None)
        }
    }
}

/// Every `.rego` file under `dir` (recursively, sorted), except `_test.rego` files, as
/// `(path, source)`; none at all is an error.
pub fn load_policies(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d)
            .with_context(|| format!("reading the policy directory {}", d.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rego")
                && !path.to_string_lossy().ends_with("_test.rego")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    let sources = files
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .map(|s| (p.display().to_string(), s))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if sources.is_empty() {
        bail!("{} ({})", RegoError::NoPolicies, dir.display());
    }
    Ok(sources)
}

fn is_binary_plan(path: &str) -> anyhow::Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path).with_context(|| format!("opening the plan {path}"))?;
    let n = f.read(&mut magic)?;
    Ok(n == 4 && &magic == b"PK\x03\x04")
}

fn source_name(plan: &str) -> &str {
    if plan == "-" {
        "stdin"
    } else {
        plan
    }
}

/// Opens the plan (stdin, a JSON file, or a binary plan through `terraform show -json`) and
/// hands it to `read` as a stream.
/// Whether `plan` is a binary refresh-only plan (its own `ui_mode` says so): then, as on the
/// server, its drift is what an apply records and what is judged.
fn refresh_only(plan: &str) -> anyhow::Result<bool> {
    if plan == "-" || !is_binary_plan(plan)? {
        return Ok(false);
    }
    let bytes = std::fs::read(plan).with_context(|| format!("reading the plan {plan}"))?;
    Ok(airlock_policy::planfile::PlanFile::parse(&bytes)
        .is_ok_and(|p| p.mode == airlock_policy::planfile::PlanMode::RefreshOnly))
}

fn with_plan<T>(
    args: &CheckArgs,
    read: impl FnOnce(&mut dyn BufRead) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if args.plan == "-" {
        let stdin = std::io::stdin().lock();
        return read(&mut BufReader::with_capacity(READ_BUFFER, stdin));
    }
    if is_binary_plan(&args.plan)? {
        return with_terraform_show(args, read);
    }
    let file = File::open(&args.plan).with_context(|| format!("opening the plan {}", args.plan))?;
    read(&mut BufReader::with_capacity(READ_BUFFER, file))
}

/// Runs `terraform show -json PLAN` in the current directory (the plan's root module, already
/// initialised) and hands its stdout to `read`.
fn with_terraform_show<T>(
    args: &CheckArgs,
    read: impl FnOnce(&mut dyn BufRead) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let bin = &args.terraform_bin;
    let mut child = Command::new(bin)
        .args(["show", "-json", "-no-color"])
        .arg(&args.plan)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "{} is a binary plan file, and running `{bin} show -json` on it failed; install \
                 {bin}, set --terraform-bin/AIRLOCK_TERRAFORM_BIN, or pass the JSON instead",
                args.plan
            )
        })?;
    let stderr = child.stderr.take();
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let stdout = child.stdout.take().context("terraform stdout")?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, stdout);
    let result = read(&mut reader);
    drop(reader);
    let status = child.wait()?;
    let stderr = drain.join().unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "`{bin} show -json {}` failed ({status}); run it in the plan's root module after \
             `{bin} init`:\n{}",
            args.plan,
            tail.join("\n")
        );
    }
    result
}

fn plan_error(e: PlanError, source: &str) -> anyhow::Error {
    anyhow::anyhow!("{source}: {e}")
}

fn artifact_name(plan: &str) -> String {
    if plan == "-" {
        "plan.json".into()
    } else {
        plan.replace('\\', "/")
    }
}

/// Writes the chosen format: changes as they stream (text, JSON) or at the end.
struct Output {
    format: CheckFormat,
    color: bool,
    stdout: std::io::BufWriter<std::io::Stdout>,
    first: bool,
    markdown: report::Markdown,
    failed: Option<std::io::Error>,
}

impl Observer for Output {
    fn change(&mut self, _: &ResourceChange, report: &ChangeReport) {
        Output::change(self, report);
    }
}

impl Output {
    fn new(format: CheckFormat, color: bool) -> Self {
        let mut out = Output {
            format,
            color,
            stdout: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            first: true,
            markdown: report::Markdown::new(),
            failed: None,
        };
        if format == CheckFormat::Json {
            out.write(&report::json::open());
        }
        out
    }

    fn write(&mut self, s: &str) {
        if self.failed.is_none() {
            if let Err(e) = self.stdout.write_all(s.as_bytes()) {
                self.failed = Some(e);
            }
        }
    }

    fn change(&mut self, c: &ChangeReport) {
        match self.format {
            CheckFormat::Text => {
                if let Some(line) = report::text::change(c, self.color) {
                    self.write(&line);
                }
            }
            CheckFormat::Json => {
                if let Some(piece) = report::json::change(c, self.first) {
                    self.first = false;
                    self.write(&piece);
                }
            }
            CheckFormat::Markdown => self.markdown.change(c),
            CheckFormat::Sarif => {}
        }
    }

    fn finish(&mut self, d: &Decision, warnings: &[String], artifact: &str) -> anyhow::Result<()> {
        let tail = match self.format {
            CheckFormat::Text => report::text::footer(d, self.color),
            CheckFormat::Json => report::json::close(d),
            CheckFormat::Markdown => {
                let md = std::mem::take(&mut self.markdown);
                md.finish(d, warnings)
            }
            CheckFormat::Sarif => report::sarif(d, artifact, env!("CARGO_PKG_VERSION")),
        };
        self.write(&tail);
        let flushed = self.stdout.flush();
        match self.failed.take().map(Err).unwrap_or(flushed) {
            Ok(()) => Ok(()),
            // A closed pipe (`airlock check plan.json | head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(e).context("writing the report"),
        }
    }
}
