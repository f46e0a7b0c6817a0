//! Governed runs from the CLI: `airlock plan`, `runs`, `run show`, `approve`, `reject`, `apply`.
//!
//! `plan` and `apply` run terraform through `airlock-runner` with phase-scoped environments:
//! the plan child gets a plan-phase token (read + lock for planning) and never the apply
//! profile; the apply child gets the run-bound token and never the plan profile. The caller's
//! own `AIRLOCK_TOKEN` reaches neither.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::inputs::{self, InputFile, CONFIG_PATH};
use airlock_policy::config::{self, Config, OidcProfile, Phase};
use airlock_policy::planfile::{self, PlanFile};
use airlock_runner::{cli_config, input_files, phase_env, run_streaming, run_streaming_until};
use airlock_server::run_upload;
use anyhow::{bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::client::{printable, s, stack_segment, table, time, Client, ServerRefused};
use crate::cli::{ApplyArgs, ApproveArgs, ClientArgs, PlanArgs, RejectArgs, RunsArgs};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The repository around `dir`: the nearest directory at or above it holding airlock.hcl (its
/// root), with the file's text and parsed content; or `dir` itself when there is none.
struct Repo {
    root: PathBuf,
    config: Option<(PathBuf, String, Config)>,
}

fn find_repo(dir: &Path) -> anyhow::Result<Repo> {
    let Some(root) = dir.ancestors().find(|d| d.join(CONFIG_PATH).is_file()) else {
        return Ok(Repo {
            root: dir.to_path_buf(),
            config: None,
        });
    };
    let path = root.join(CONFIG_PATH);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = config::parse(&text, &path.display().to_string())?;
    Ok(Repo {
        root: root.to_path_buf(),
        config: Some((path, text, cfg)),
    })
}

impl Repo {
    fn oidc(&self, phase: Phase) -> Option<&OidcProfile> {
        self.config.as_ref().and_then(|(_, _, c)| c.oidc_for(phase))
    }

    fn profile(&self, phase: Phase) -> Vec<String> {
        self.config
            .as_ref()
            .map(|(_, _, c)| c.credentials_for(phase).to_vec())
            .unwrap_or_default()
    }
}

/// With an OIDC `profile`, the phase's identity token from `endpoint` (asked with the phase's
/// own airlock token) in a private file, and `env` without inherited cloud credentials plus the
/// variables the clouds read. The returned guard removes the file.
fn with_identity(
    c: &Client,
    endpoint: &str,
    profile: Option<&OidcProfile>,
    stack: &str,
    phase: &str,
    env: &mut Vec<(String, String)>,
) -> anyhow::Result<Option<super::oidc::PhaseIdentity>> {
    let Some(profile) = profile else {
        return Ok(None);
    };
    let identity = super::oidc::phase_identity(c, endpoint, profile, stack, phase)?;
    identity.apply_to(env);
    Ok(Some(identity))
}

/// `dir` relative to the repository root, `/`-separated (`.` for the root itself).
fn relative_dir(root: &Path, dir: &Path) -> String {
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let s = rel.to_string_lossy().replace('\\', "/");
    if s.is_empty() {
        ".".into()
    } else {
        s
    }
}

/// `--stack`, else the config's stack whose `dir` is `dir`.
fn resolve_stack(
    dir: &Path,
    explicit: Option<&str>,
    cfg: Option<&(PathBuf, String, Config)>,
) -> anyhow::Result<String> {
    if let Some(s) = explicit {
        return Ok(s.to_owned());
    }
    let Some((path, _, cfg)) = cfg else {
        bail!(
            "no --stack given and no airlock.hcl found in {} or its parents",
            dir.display()
        );
    };
    let base = path.parent().unwrap_or(Path::new(".")).canonicalize()?;
    for st in &cfg.stacks {
        if let Some(d) = &st.dir {
            if base.join(d).canonicalize().ok().as_deref() == Some(dir) {
                return Ok(st.name.clone());
            }
        }
    }
    bail!(
        "no stack block in {} has dir = {}; pass --stack",
        path.display(),
        dir.display()
    )
}

/// The stacks a plan of `stack` declares it reads: its stack block's `depends_on` in
/// airlock.hcl (block names are the server's stack names). `--read-stack` adds to them; the
/// server refuses any the caller may not read itself.
fn declared_read_stacks(cfg: Option<&(PathBuf, String, Config)>, stack: &str) -> Vec<String> {
    cfg.and_then(|(_, _, c)| c.stack(stack))
        .map(|b| b.depends_on.clone())
        .unwrap_or_default()
}

fn has_http_backend(dir: &Path) -> anyhow::Result<bool> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "tf")
            && std::fs::read_to_string(&p)?.contains("backend \"http\"")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

pub fn terraform(bin: &str, dir: &Path, args: &[String]) -> Command {
    let mut c = Command::new(bin);
    c.current_dir(dir).args(args);
    c
}

/// `terraform show -json PLAN` in `dir` with exactly `env`: the one command behind every plan
/// JSON of a governed run (the planner's, the applier's check, drift).
///
/// `GOGC=400` unless `env` sets `GOGC` or `GOMEMLIMIT`: the process renders one document and
/// exits, so Go's collector only costs CPU there (15 % of its CPU on a 500-resource plan:
/// 171 → 146 ms, `perf stat -r 10`, issue 17), for about a fifth more memory (84 → 100 MB).
/// Never applied to `terraform plan` or `apply`, whose memory is the user's to tune.
pub fn show_json_command(bin: &str, dir: &Path, plan: &Path, env: &[(String, String)]) -> Command {
    let mut c = terraform(
        bin,
        dir,
        &["show".into(), "-json".into(), plan.display().to_string()],
    );
    c.env_clear();
    if !env.iter().any(|(k, _)| k == "GOGC" || k == "GOMEMLIMIT") {
        c.env("GOGC", "400");
    }
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c
}

/// `terraform show -json PLAN` in `dir` with exactly `env`, output captured.
pub fn show_json(
    bin: &str,
    dir: &Path,
    plan: &Path,
    env: &[(String, String)],
) -> anyhow::Result<std::process::Output> {
    show_json_command(bin, dir, plan, env)
        .output()
        .with_context(|| format!("running {bin} show -json {}", plan.display()))
}

/// Whether `dir` is already initialised with the http backend at exactly `state_url` (then a
/// second `terraform init` would change nothing; terraform itself says if providers are missing).
/// `data`: terraform's data directory (`TF_DATA_DIR`, else `dir/.terraform`).
fn initialized_for(data: &Path, state_url: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(data.join("terraform.tfstate")) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    let cfg = &v["backend"]["config"];
    v["backend"]["type"] == "http"
        && ["address", "lock_address", "unlock_address"]
            .iter()
            .all(|k| cfg[*k] == state_url)
}

/// Terraform's data directory for `dir` under `env` (`TF_DATA_DIR`, else `dir/.terraform`).
fn data_dir(dir: &Path, env: &[(String, String)]) -> PathBuf {
    env.iter()
        .find(|(k, _)| k == "TF_DATA_DIR")
        .map_or_else(|| dir.join(".terraform"), |(_, v)| dir.join(v))
}

/// `terraform init` pointed at the stack on this server, unless already done.
fn init(bin: &str, dir: &Path, state_url: &str, env: &[(String, String)]) -> anyhow::Result<()> {
    if initialized_for(&data_dir(dir, env), state_url) {
        return Ok(());
    }
    init_now(bin, dir, state_url, env)
}

/// `terraform init` pointed at the stack on this server.
fn init_now(
    bin: &str,
    dir: &Path,
    state_url: &str,
    env: &[(String, String)],
) -> anyhow::Result<()> {
    let args: Vec<String> = ["init", "-input=false", "-reconfigure"]
        .iter()
        .map(|s| s.to_string())
        .chain(
            ["address", "lock_address", "unlock_address"]
                .iter()
                .map(|k| format!("-backend-config={k}={state_url}")),
        )
        .collect();
    let done =
        run_streaming(terraform(bin, dir, &args), env).with_context(|| format!("running {bin}"))?;
    if !done.status.success() {
        bail!("terraform init failed ({})", done.status);
    }
    Ok(())
}

pub fn stack_position(c: &Client, stack: &str) -> anyhow::Result<(Option<String>, Option<u64>)> {
    let v = c.get(&format!("/api/v1/stacks/{}", stack_segment(stack)))?;
    Ok((
        v["stack"]["lineage"].as_str().map(str::to_owned),
        v["current"]["serial"].as_u64(),
    ))
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The symbol of a change kind, as `airlock check` prints it: `+` create, `~` update, `-/+`
/// replace, `-` destroy.
fn symbol(kind: &str) -> &'static str {
    match kind {
        "create" => "+",
        "update" => "~",
        "delete" => "-",
        "replace" => "-/+",
        "replace-create-first" => "+/-",
        "forget" => "⊘",
        "forget-replace" => "⊘/+",
        "read" => "<=",
        "no-op" => "=",
        _ => "?",
    }
}

/// Renders a run for the terminal: who planned it from what, then destructive changes first.
pub fn run_text(v: &Value) -> String {
    let run = &v["run"];
    let against = match run["planned_serial"].as_u64() {
        Some(serial) => format!("serial {serial}"),
        None => "an empty stack".into(),
    };
    let mut out = format!(
        "run {} on stack {}: {} (decision: {})\nplanned by {} at {} against {against}\n",
        s(run, "/id"),
        s(run, "/stack"),
        s(run, "/status"),
        s(run, "/decision"),
        s(run, "/author"),
        time(run, "/created_at"),
    );
    let accepts_drift = run["plan_mode"].as_str() == Some("refresh-only");
    if accepts_drift {
        out.push_str("ACCEPT DRIFT: a refresh-only plan; applying it records in the state what changed outside Terraform and changes no infrastructure\n");
    }
    // The identity that may not approve it: a token without a user is its own.
    let user = run["author_user"].as_str().unwrap_or_default();
    if !user.is_empty() && run["author_token"].as_str() != Some(user) {
        out.push_str(&format!("author's user: {}\n", s(run, "/author_user")));
    } else {
        out.push_str("author's user: the token itself (it belongs to no user)\n");
    }
    let commit = match run["git_head"].as_str() {
        // The planner reports it; what binds the run to code is the inputs' fingerprint.
        Some(_) => format!("{} (as reported by the planner)", s(run, "/git_head")),
        None => "none recorded (not a git checkout)".into(),
    };
    out.push_str(&format!(
        "commit: {commit}\ndirectory: {} (relative to the airlock.hcl root)\n",
        s(run, "/planned_dir"),
    ));
    if let Some(n) = run["change_request"].as_u64() {
        let url = match run["change_request_url"].as_str() {
            Some(_) => format!(" {}", s(run, "/change_request_url")),
            None => String::new(),
        };
        out.push_str(&format!(
            "change request: #{n}{url} (as reported by the planner)\n"
        ));
    }
    let authors: Vec<String> = run["change_authors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(|l| printable(l).into_owned()))
        .collect();
    if !authors.is_empty() {
        out.push_str(&format!(
            "written or pushed by: {} (as reported by the planner; their users may not approve)\n",
            authors.join(", ")
        ));
    }
    if let Some(current) = v.get("current").and_then(Value::as_bool) {
        out.push_str(if current {
            "still current: the stack has not changed since the plan\n"
        } else {
            "STALE: the stack changed since the plan; it cannot be applied\n"
        });
    }
    if v["plan_file"]["purged_at"].is_i64() {
        out.push_str(&format!(
            "binary plan: purged at {} (SHA-256 {}, {} bytes): the run has ended, so its plan file can never be applied and is not kept; its plan JSON (the planned values too, sensitive ones in clear) and logs are\n",
            time(v, "/plan_file/purged_at"),
            s(v, "/plan_file/sha256"),
            s(v, "/plan_file/bytes"),
        ));
    }
    let policy: Vec<&str> = run["policy_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !policy.is_empty() {
        out.push_str("\nPOLICY WEAKENED by this change (compared with the last applied run):\n");
        for p in policy {
            out.push_str(&format!("  ! {p}\n"));
        }
    }
    let changes: Vec<&Value> = run["report"]["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let destructive: Vec<&&Value> = changes
        .iter()
        .filter(|c| c["destructive"].as_bool() == Some(true))
        .collect();
    if !destructive.is_empty() {
        out.push_str(&match accepts_drift {
            true => format!(
                "\nDROPS FROM THE STATE {} instance(s) deleted outside Terraform:\n",
                destructive.len()
            ),
            false => format!("\nDESTROYS {} instance(s):\n", destructive.len()),
        });
        for c in &destructive {
            out.push_str(&format!(
                "  {} {} ({}){}\n",
                symbol(c["kind"].as_str().unwrap_or_default()),
                s(c, "/address"),
                s(c, "/kind"),
                if c["critical"].as_bool() == Some(true) {
                    "  CRITICAL"
                } else {
                    ""
                }
            ));
        }
    }
    let other: Vec<String> = changes
        .iter()
        .filter(|c| c["destructive"].as_bool() != Some(true) && c["kind"].as_str() != Some("no-op"))
        .map(|c| {
            format!(
                "  {} {} ({})",
                symbol(c["kind"].as_str().unwrap_or_default()),
                s(c, "/address"),
                s(c, "/kind")
            )
        })
        .collect();
    if !other.is_empty() {
        out.push_str(&format!(
            "\nother changes ({}):\n{}\n",
            other.len(),
            other.join("\n")
        ));
    }
    let findings: Vec<String> = run["report"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let at = match f["address"].as_str() {
                Some(_) => format!(" {}", s(f, "/address")),
                None => String::new(),
            };
            format!(
                "  [{}] {}{at}: {}",
                s(f, "/severity"),
                s(f, "/rule"),
                s(f, "/message")
            )
        })
        .collect();
    if !findings.is_empty() {
        out.push_str(&format!("\nfindings:\n{}\n", findings.join("\n")));
    }
    let approvals: Vec<String> = run["approvals"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| format!("{} at {}", s(a, "/by"), time(a, "/at")))
        .collect();
    out.push_str(&format!(
        "\napprovals: {}/{}{}\n",
        approvals.len(),
        s(run, "/required_approvals"),
        if approvals.is_empty() {
            String::new()
        } else {
            format!(" ({})", approvals.join(", "))
        }
    ));
    if let Some(r) = run.get("rejection").filter(|r| !r.is_null()) {
        out.push_str(&format!(
            "rejected by {}: {}\n",
            s(r, "/by"),
            s(r, "/reason")
        ));
    }
    if let Some(n) = run.get("note").and_then(Value::as_str) {
        out.push_str(&format!("note: {n}\n"));
    }
    for c in run["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        out.push_str(&format!("checked: {c}\n"));
    }
    let read: Vec<&str> = run["plan_read_stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !read.is_empty() {
        out.push_str(&format!(
            "plan phase could read the state of: {}\n",
            printable(&read.join(", "))
        ));
    }
    if let Some(next) = v.get("next").and_then(Value::as_str) {
        out.push_str(&format!("next: {next}\n"));
    }
    out
}

/// What one governed plan needs besides the client: `airlock plan`'s arguments, and what
/// `airlock ci plan` adds (the change request the run is for).
pub struct PlanRequest<'a> {
    /// The stack's root module directory.
    pub dir: &'a Path,
    /// The stack (default: the `stack` block of airlock.hcl whose `dir` is `dir`).
    pub stack: Option<&'a str>,
    /// Plan a destroy (`terraform plan -destroy`).
    pub destroy: bool,
    /// Plan to accept drift (`terraform plan -refresh-only`): the apply records in the state
    /// what changed outside Terraform and changes no infrastructure.
    pub refresh_only: bool,
    pub terraform_bin: &'a str,
    /// The planner's claims about where the plan comes from (display and lookup only).
    pub origin: Origin,
    /// Other stacks the plan may read the state of (`--read-stack`), besides the stack block's
    /// `depends_on` (`PlanPhase::prepare` adds those).
    pub read_stacks: &'a [String],
}

/// Where a plan comes from, as the planner reports it: never trusted for anything but display
/// and lookup (the inputs' fingerprint binds a run to code).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The commit (default: `git rev-parse HEAD` of the stack's directory).
    pub head: Option<String>,
    /// The base commit (default: `AIRLOCK_GIT_BASE`).
    pub base: Option<String>,
    /// The pull/merge request number and its web URL.
    pub change_request: Option<u64>,
    pub change_request_url: Option<String>,
    /// Who wrote or pushed it, as forge logins (their users may not approve the run).
    pub change_authors: Vec<String>,
}

/// A run the server created and judged: its answer to the upload (`run`, `summary_markdown`,
/// `next`).
pub struct Planned {
    pub stack: String,
    pub response: Value,
}

impl Planned {
    /// Whether the server's judgement is deny.
    pub fn denied(&self) -> bool {
        self.response["run"]["decision"].as_str() == Some("deny")
    }
}

/// `airlock plan [DIR] [--stack S] [--destroy]`.
pub fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let planned = plan_run(
        &c,
        &PlanRequest {
            dir: &args.dir,
            stack: args.stack.as_deref(),
            destroy: args.destroy,
            refresh_only: args.refresh_only,
            terraform_bin: &args.terraform_bin,
            origin: Origin::default(),
            read_stacks: &args.read_stack,
        },
    )?;
    let (stack, v) = (&planned.stack, &planned.response);
    if let Some(path) = &args.summary_file {
        let md = format!(
            "**airlock run `{}`** on `{stack}`\n\n{}\n\nNext: {}\n",
            s(v, "/run/id"),
            v["summary_markdown"].as_str().unwrap_or_default(),
            s(v, "/next")
        );
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    }
    c.print(v, run_text);
    Ok(if planned.denied() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// The stack directory's kept terraform data directory, locked for this phase, so that `terraform
/// init` runs again only when terraform says it must: it is kept between the plans (and
/// applies) of the directory, outside the checkout (`cli_config::kept_data_dir`). Not in CI
/// (`CI` set, as GitHub Actions and GitLab CI do): a runner's home can outlive the job and
/// serve jobs of other trust (a pull request's, then main's), so each CI phase inits fresh.
fn kept_data_dir(dir: &Path, root: &Path, state_url: &str) -> Option<cli_config::KeptDataDir> {
    let in_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    (!in_ci)
        .then(|| {
            cli_config::kept_data_root(
                std::env::var("XDG_CACHE_HOME").ok().as_deref(),
                std::env::var("HOME").ok().as_deref(),
            )
        })
        .flatten()
        .and_then(|kept_root| {
            let key = Sha256::digest(format!("{}\n{state_url}", dir.display()));
            cli_config::kept_data_dir(&kept_root, root, &hex::encode(key))
        })
}

/// The variables with which terraform installs and runs providers only from where the checkout
/// cannot put them (`airlock_runner::cli_config`), for both phases: the plan phase runs code an
/// agent may have written, and the apply phase runs the reviewed plan, whose provider packages
/// must not come from the checkout's `.terraform` or `terraform.d/plugins` (no run input says
/// what they are). They replace [`cli_config::PLAN_ENV_VARS`] in the phase's environment
/// ([`sealed`]).
fn sealed_env(
    root: &Path,
    work: &Path,
    kept: Option<&cli_config::KeptDataDir>,
) -> anyhow::Result<Vec<(String, String)>> {
    cli_config::plan_env(
        root,
        work,
        std::env::var(cli_config::OPERATOR_CONFIG_VAR)
            .ok()
            .as_deref(),
        std::env::var("TF_PLUGIN_CACHE_DIR").ok().as_deref(),
        kept,
    )
    .map_err(anyhow::Error::msg)
}

/// `env` with `sealed` (from [`sealed_env`]) in place of its own [`cli_config::PLAN_ENV_VARS`].
fn sealed(mut env: Vec<(String, String)>, sealed: &[(String, String)]) -> Vec<(String, String)> {
    env.retain(|(k, _)| !cli_config::PLAN_ENV_VARS.contains(&k.as_str()));
    env.extend(sealed.iter().cloned());
    env
}

/// A stack's plan phase, ready for `terraform plan`: the stack resolved, a plan-phase token
/// minted (agent role, scoped to the stack, the caller's user), terraform's environment without
/// the apply profile, the caller's credentials or a provider the checkout supplies
/// (`phase_env`, `cli_config::plan_env`), and `terraform init` done against the stack. The one
/// preparation behind `airlock plan` and `airlock drift`.
pub struct PlanPhase {
    pub dir: PathBuf,
    repo: Repo,
    pub stack: String,
    pub env: Vec<(String, String)>,
    state_url: String,
    /// Removed however planning ends.
    scratch: Scratch,
    /// The stack directory's kept data directory (`TF_DATA_DIR`), locked for this plan; `None`:
    /// a fresh one in `scratch`.
    kept: Option<cli_config::KeptDataDir>,
    /// The plan phase's cloud identity token file, if airlock.hcl asks for one; removed with
    /// the phase.
    _identity: Option<super::oidc::PhaseIdentity>,
    /// The plan-phase token's id, named in the upload so the run records what it could read.
    plan_token_id: String,
    /// The plan-phase token, reported for while the phase lasts and ended with it (none from a
    /// server that takes no reports).
    _token: Option<PlanToken>,
}

/// A plan-phase token from its mint to the end of its phase: reported for (with the caller's
/// token, which minted it) so that a long plan keeps it, and ended when dropped, however the
/// phase ends (uploaded, failed, or failed to start).
struct PlanToken {
    /// Always there while the token lives: an `Option` so that `drop` stops the reports before
    /// it ends the token.
    reports: Option<Heartbeat>,
    /// The caller's client, and the token's path.
    client: Client,
    path: String,
}

impl Drop for PlanToken {
    /// The plan is over: its reports stop (none still in flight) and its token is revoked, so
    /// what Terraform and the checkout's code held dies with the plan. Best effort and
    /// bounded: a token left behind (the server unreachable, this process killed) expires
    /// within the server's plan idle time.
    fn drop(&mut self) {
        drop(self.reports.take());
        let path = &self.path;
        let ended = self.client.send_raw(
            "DELETE",
            path,
            &[],
            b"",
            64 * 1024,
            Some(Duration::from_secs(5)),
        );
        if !matches!(ended, Ok((200, _))) {
            eprintln!(
                "airlock: could not end this plan's token ({path}); it expires unless reported for"
            );
        }
    }
}

impl PlanPhase {
    pub fn prepare(
        c: &Client,
        dir: &Path,
        stack: Option<&str>,
        terraform_bin: &str,
        read_stacks: &[String],
    ) -> anyhow::Result<PlanPhase> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("{} is not a directory", dir.display()))?;
        let repo = find_repo(&dir)?;
        let stack = resolve_stack(&dir, stack, repo.config.as_ref())?;
        if !has_http_backend(&dir)? {
            bail!("{} has no `backend \"http\"` block; add the block printed by `airlock backend-config {stack}`", dir.display());
        }
        let declared = declared_read_stacks(repo.config.as_ref(), &stack);
        let mut asked = declared.clone();
        for s in read_stacks {
            if !asked.contains(s) {
                asked.push(s.clone());
            }
        }
        let token_path = format!("/api/v1/stacks/{}/plan-token", stack_segment(&stack));
        let plan_token = match c.send("POST", &token_path, &json!({ "read_stacks": asked })) {
            Ok(t) => t,
            // `depends_on` is also the order of stacks that read nothing of each other: a
            // dependency this token may not read (or that the server does not have) is left
            // out, said, and the plan goes on; a `terraform_remote_state` of it then fails
            // with "invalid auth". What `--read-stack` names is never dropped.
            Err(e)
                if !declared.is_empty()
                    && e.downcast_ref::<ServerRefused>()
                        .is_some_and(|r| matches!(r.status, 403 | 422)) =>
            {
                eprintln!(
                    "warning: {stack}'s depends_on ({}) cannot all be read by this plan: {e:#}; planning without them",
                    declared.join(", ")
                );
                c.send("POST", &token_path, &json!({ "read_stacks": read_stacks }))?
            }
            Err(e) => return Err(e),
        };
        let plan_token_id = plan_token["token_id"]
            .as_str()
            .context("the server sent no plan token id")?
            .to_owned();
        let token = plan_token["secret"]
            .as_str()
            .context("the server sent no plan token")?;
        // Reports start at once: `terraform init` may take long too.
        // A server that takes reports ends tokens too.
        let path = format!("{token_path}/{}", stack_segment(&plan_token_id));
        let plan_token_guard = plan_token["heartbeat_ms"].as_u64().map(|ms| {
            let every = Duration::from_millis(ms);
            let reports = Heartbeat::start(
                c.clone(),
                format!("{path}/heartbeat"),
                every,
                Reported::Plan,
            );
            PlanToken {
                reports: Some(reports),
                client: c.clone(),
                path,
            }
        });
        let apply_profile = repo.profile(Phase::Apply);
        let held: Vec<&String> = apply_profile
            .iter()
            .filter(|v| std::env::var_os(v).is_some())
            .collect();
        if !held.is_empty() {
            eprintln!(
                "warning: this environment holds the apply profile's credentials ({}). airlock plan does not pass them to terraform, but whoever holds them can change the cloud without airlock: planning environments (and agents) must hold only plan-phase, read-only credentials",
                held.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        let scratch = Scratch::new()?;
        let work = scratch.0.as_path();
        let state_url = format!("{}/state/{stack}", c.base());
        let kept = kept_data_dir(&dir, &repo.root, &state_url);
        let mut env = sealed(
            phase_env(std::env::vars(), &apply_profile, token),
            &sealed_env(&repo.root, work, kept.as_ref())?,
        );
        // The plan phase's cloud identity, if airlock.hcl asks for one.
        let identity = with_identity(
            &c.with_token(token.to_owned()),
            &format!("/api/v1/stacks/{}/identity-token", stack_segment(&stack)),
            repo.oidc(Phase::Plan),
            &stack,
            "plan",
            &mut env,
        )?;
        init(terraform_bin, &dir, &state_url, &env)?;
        Ok(PlanPhase {
            dir,
            repo,
            stack,
            env,
            state_url,
            scratch,
            kept,
            _identity: identity,
            plan_token_id,
            _token: plan_token_guard,
        })
    }

    /// Runs `terraform ARGS` (a plan) in the phase. When it fails asking for `terraform init`
    /// with a kept data directory (the modules, providers or lock file changed since that
    /// directory's last init), initialises it again and runs once more.
    pub fn run_plan(
        &self,
        terraform_bin: &str,
        args: &[String],
    ) -> anyhow::Result<airlock_runner::Finished> {
        let run = || {
            run_streaming(terraform(terraform_bin, &self.dir, args), &self.env)
                .with_context(|| format!("running {terraform_bin}"))
        };
        let done = run()?;
        let stale = !done.status.success()
            && self.kept.is_some()
            && String::from_utf8_lossy(&done.log).contains("terraform init");
        if !stale {
            return Ok(done);
        }
        eprintln!(
            "airlock: terraform asks for terraform init in this stack's kept plan data directory; running it, then planning again"
        );
        init_now(terraform_bin, &self.dir, &self.state_url, &self.env)?;
        run()
    }

    /// The private scratch directory (outside the checkout) for plan files.
    pub fn work(&self) -> &Path {
        self.scratch.0.as_path()
    }
}

/// Plans one stack with a plan-phase token and uploads the run for the server to judge: the one
/// implementation behind `airlock plan` and `airlock ci plan`.
pub fn plan_run(c: &Client, req: &PlanRequest<'_>) -> anyhow::Result<Planned> {
    let phase = PlanPhase::prepare(c, req.dir, req.stack, req.terraform_bin, req.read_stacks)?;
    let plan_path = phase.work().join("plan.tfplan");
    let mut plan_args: Vec<String> = vec![
        "plan".into(),
        "-input=false".into(),
        "-lock-timeout=120s".into(),
        format!("-out={}", plan_path.display()),
    ];
    if req.destroy {
        plan_args.push("-destroy".into());
    }
    if req.refresh_only {
        plan_args.push("-refresh-only".into());
    }
    let done = phase.run_plan(req.terraform_bin, &plan_args)?;
    if !done.status.success() && !plan_path.is_file() {
        bail!("terraform plan failed ({}) and wrote no plan", done.status);
    }
    upload_plan(c, &phase, &plan_path, req)
}

/// Uploads the plan at `plan_path`, made in `phase` as `req` asked, as a run for the server to
/// judge: the one upload behind `airlock plan`, `airlock ci plan` and `airlock drift --propose`
/// (which uploads the refresh-only plan its check made).
pub fn upload_plan(
    c: &Client,
    phase: &PlanPhase,
    plan_path: &Path,
    req: &PlanRequest<'_>,
) -> anyhow::Result<Planned> {
    let (dir, repo, stack, env) = (&phase.dir, &phase.repo, phase.stack.clone(), &phase.env);
    let work = phase.scratch.0.as_path();
    // `terraform show -json` runs while the metadata and the binary plan are sent; its output
    // follows them in the same upload as it comes, and the server checks the binary meanwhile.
    let show_err = work.join("show.err");
    let mut show = show_json_command(req.terraform_bin, dir, plan_path, env)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&show_err)?)
        .spawn()
        .with_context(|| format!("running {} show -json", req.terraform_bin))?;
    let show_out = show.stdout.take().context("terraform show has no stdout")?;
    let plan_bin = std::fs::read(plan_path)?;
    // The version that made the plan and the state it was made against are in the plan itself
    // (the server checks both again).
    let binary = PlanFile::parse(&plan_bin).map_err(|e| anyhow::anyhow!("{e}"))?;
    let version = binary.terraform_version.clone();
    let (lineage, serial) = binary.planned_against();
    drop(binary);
    let files = input_files(&repo.root, dir).context("listing the run's input files")?;
    let fp = inputs::fingerprint(&version, &files);
    let policies: Vec<Value> = files
        .iter()
        .filter(|f| inputs::is_policy_path(&f.path))
        .map(|f| -> anyhow::Result<Value> {
            let text = std::fs::read_to_string(repo.root.join(&f.path))
                .with_context(|| format!("reading the policy {}", f.path))?;
            Ok(json!({"path": f.path, "text": text}))
        })
        .collect::<anyhow::Result<_>>()?;
    let lockfile = std::fs::read(dir.join(".terraform.lock.hcl")).ok();
    let origin = &req.origin;
    let meta = json!({
        "fingerprint": fp,
        "inputs": files,
        "terraform_version": version,
        "planned_lineage": lineage,
        "planned_serial": serial,
        "planned_dir": relative_dir(&repo.root, dir),
        "policies": policies,
        "git_head": origin.head.clone().or_else(|| git(dir, &["rev-parse", "HEAD"])),
        "git_base": origin.base.clone().or_else(|| std::env::var("AIRLOCK_GIT_BASE").ok()),
        "change_request": origin.change_request,
        "change_request_url": origin.change_request_url,
        "change_authors": origin.change_authors,
        "config": repo.config.as_ref().map(|(_, text, _)| text.clone()),
        "plan_token": phase.plan_token_id,
        // What was asked for; the server reads the mode from the binary and refuses a mismatch.
        "plan_mode": match (req.refresh_only, req.destroy) {
            (true, _) => "refresh-only",
            (false, true) => "destroy",
            (false, false) => "normal",
        },
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let writer = std::thread::spawn(move || -> anyhow::Result<()> {
        let failed = tx.clone();
        let written = (|| -> anyhow::Result<()> {
            let mut w = run_upload::Writer::new(ChannelWriter(tx))?;
            w.part(run_upload::META, &serde_json::to_vec(&meta)?)?;
            w.part(run_upload::PLAN, &plan_bin)?;
            if let Some(l) = &lockfile {
                w.part(run_upload::LOCKFILE, l)?;
            }
            // The server checks the binary plan while the JSON is being made.
            let mut w = w.push()?;
            let mut out = show_out;
            w.part_from(run_upload::PLAN_JSON, &mut out)?;
            let status = show.wait()?;
            if !status.success() {
                let err = std::fs::read_to_string(&show_err).unwrap_or_default();
                bail!("terraform show -json failed ({status}): {err}");
            }
            w.finish()?;
            Ok(())
        })();
        if let Err(e) = &written {
            // The upload stops here, without its end: the server stores nothing.
            let _ = failed.send(Err(std::io::Error::other(e.to_string())));
            let _ = show.kill();
            let _ = show.wait();
        }
        written
    });
    let path = format!("/api/v1/stacks/{}/runs", stack_segment(&stack));
    let sent = c.send_stream(
        &path,
        run_upload::CONTENT_TYPE,
        run_upload::Chunks::new(rx.into_iter()),
    );
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the upload thread panicked"))?;
    match (sent, written) {
        // The server's refusal says most; else a failure to produce the upload (terraform show
        // failed, say) explains a broken request better than the request does.
        (Err(e), _) if e.downcast_ref::<ServerRefused>().is_some() => Err(e),
        (_, Err(e)) => Err(e),
        (sent, Ok(())) => Ok(Planned {
            stack,
            response: sent?,
        }),
    }
}

/// A [`Write`] that hands each write to the request body's reader.
struct ChannelWriter(std::sync::mpsc::SyncSender<std::io::Result<run_upload::Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(Ok(run_upload::Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::other("the upload request ended"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The fingerprint a checkout's inputs for the stack at `dir` have under `terraform_version`,
/// with the files it covers: what `airlock apply` sends, and what `airlock ci` compares runs
/// with.
pub fn checkout_fingerprint(
    dir: &Path,
    terraform_version: &str,
) -> anyhow::Result<(String, Vec<InputFile>)> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} is not a directory", dir.display()))?;
    let repo = find_repo(&dir)?;
    let files = input_files(&repo.root, &dir).context("listing the checkout's input files")?;
    Ok((inputs::fingerprint(terraform_version, &files), files))
}

/// A private scratch directory for plan files, removed when dropped, or by
/// [`remove_scratch_dirs`] when a signal ends airlock while no terraform runs (no drop then).
/// It is outside the checkout (so it never changes the fingerprint), mode 0700 and new: a plan
/// file holds the values of sensitive variables and attributes in clear, and the temporary
/// directory is shared with the machine's other users.
struct Scratch(PathBuf);

/// The scratch directories that exist.
static SCRATCH_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(airlock_server::tokens::random_id("airlock-run-"));
        airlock_store::private::create_private_dir(&dir)
            .with_context(|| format!("creating the scratch directory {}", dir.display()))?;
        if let Ok(mut dirs) = SCRATCH_DIRS.lock() {
            dirs.push(dir.clone());
        }
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Ok(mut dirs) = SCRATCH_DIRS.lock() {
            dirs.retain(|d| d != &self.0);
        }
    }
}

/// Removes the scratch directories that exist (airlock is about to exit on a signal).
pub fn remove_scratch_dirs() {
    if let Ok(dirs) = SCRATCH_DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Percent-encodes a query-string value.
pub fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `airlock runs [--stack S] [--status T] [--author U] [--commit C] [--limit N]`.
pub fn list(args: RunsArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let mut query = vec![format!("limit={}", args.limit)];
    for (name, value) in [
        ("stack", &args.stack),
        ("status", &args.status),
        ("author", &args.author),
        ("commit", &args.commit),
    ] {
        if let Some(v) = value {
            query.push(format!("{name}={}", query_value(v)));
        }
    }
    let v = c.get(&format!("/api/v1/runs?{}", query.join("&")))?;
    c.print(&v, |v| {
        let rows: Vec<Vec<String>> = v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let commit = s(r, "/git_head");
                vec![
                    s(r, "/id"),
                    s(r, "/stack"),
                    s(r, "/status"),
                    s(r, "/decision"),
                    s(r, "/destroys"),
                    format!("{}/{}", s(r, "/approvals"), s(r, "/required_approvals")),
                    s(r, "/author"),
                    commit.chars().take(12).collect(),
                    time(r, "/created_at"),
                ]
            })
            .collect();
        if rows.is_empty() {
            return "no runs match\n".into();
        }
        table(
            &[
                "RUN",
                "STACK",
                "STATUS",
                "DECISION",
                "DESTROYS",
                "APPROVALS",
                "AUTHOR",
                "COMMIT",
                "CREATED",
            ],
            rows,
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// `airlock run show ID`.
pub fn show(id: &str, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(client)?;
    let v = c.get(&format!("/api/v1/runs/{id}"))?;
    c.print(&v, run_text);
    Ok(ExitCode::SUCCESS)
}

/// `airlock run withdraw ID`.
pub fn withdraw(id: &str, client: &ClientArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(client)?;
    let v = c.send("POST", &format!("/api/v1/runs/{id}/withdraw"), &json!({}))?;
    c.print(&v, |v| format!("withdrew run {}\n", s(v, "/run/id")));
    Ok(ExitCode::SUCCESS)
}

/// `airlock approve ID [--confirm-destroy N]`.
pub fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let v = c.send(
        "POST",
        &format!("/api/v1/runs/{}/approve", args.id),
        &json!({"confirm_destroy": args.confirm_destroy}),
    )?;
    c.print(&v, |v| {
        format!(
            "approved run {} ({})\nnext: {}\n",
            s(v, "/run/id"),
            s(v, "/run/status"),
            s(v, "/next")
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// `airlock reject ID --reason T`.
pub fn reject(args: RejectArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let v = c.send(
        "POST",
        &format!("/api/v1/runs/{}/reject", args.id),
        &json!({"reason": args.reason}),
    )?;
    c.print(&v, |v| format!("rejected run {}\n", s(v, "/run/id")));
    Ok(ExitCode::SUCCESS)
}

/// Checks the parts of the binary plan that `terraform apply PLAN` uses instead of the
/// checkout: its backend must be this server's stack, and every embedded configuration file
/// (root module, local and remote modules, as this checkout's own `terraform init` placed them)
/// must be byte for byte this checkout's, with no configuration file of those modules left out.
/// `data`: terraform's data directory, where its `terraform init` installed the modules.
fn embedded_plan_is_this_checkouts(
    plan: &PlanFile,
    dir: &Path,
    data: &Path,
    state_url: &str,
) -> Result<(), String> {
    plan.backend
        .as_ref()
        .ok_or_else(|| "the plan names no backend".to_owned())?
        .check_is(state_url)?;
    embedded_config_is_this_checkouts(plan, dir, data)
}

/// The configuration half of [`embedded_plan_is_this_checkouts`].
fn embedded_config_is_this_checkouts(
    plan: &PlanFile,
    dir: &Path,
    data: &Path,
) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Module {
        #[serde(rename = "Key")]
        key: String,
        #[serde(rename = "Dir")]
        dir: String,
    }
    #[derive(serde::Deserialize)]
    struct Installed {
        #[serde(rename = "Modules")]
        modules: Vec<Module>,
    }
    // What this checkout's own `terraform init` installed (absent: no module calls).
    let manifest: Vec<Module> = match std::fs::read(data.join("modules/modules.json")) {
        Ok(b) => {
            serde_json::from_slice::<Installed>(&b)
                .map_err(|e| format!("{}/modules/modules.json: {e}", data.display()))?
                .modules
        }
        Err(_) => Vec::new(),
    };
    let module_dir = |key: &str| -> Result<PathBuf, String> {
        if key.is_empty() {
            return Ok(dir.to_path_buf());
        }
        manifest
            .iter()
            .find(|m| m.key == key)
            .map(|m| dir.join(&m.dir))
            .ok_or_else(|| format!("the plan embeds module {key:?}, which this checkout's terraform init did not install"))
    };
    let mut dirs = std::collections::BTreeMap::new();
    for (key, file, content) in &plan.module_files {
        let d = module_dir(key)?;
        let path = d.join(file);
        if std::fs::read(&path).ok().as_deref() != Some(content.as_slice()) {
            return Err(format!(
                "the plan's embedded configuration file {} differs from this checkout's (module {key:?}): terraform apply would run configuration nobody reviewed",
                path.display()
            ));
        }
        dirs.entry(d).or_insert_with(Vec::new).push(file.clone());
    }
    for (d, embedded) in &dirs {
        for e in std::fs::read_dir(d).map_err(|e| format!("{}: {e}", d.display()))? {
            let name = e
                .map_err(|e| e.to_string())?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if inputs::is_config_file(&name) && !embedded.contains(&name) {
                return Err(format!(
                    "{} is not in the plan's embedded configuration: the plan was not made from this checkout",
                    d.join(&name).display()
                ));
            }
        }
    }
    if let Some((_, lock)) = plan
        .config_files
        .iter()
        .find(|(p, _)| p == ".terraform.lock.hcl")
    {
        let ours = std::fs::read(dir.join(".terraform.lock.hcl")).ok();
        // A bare embedded lock file stands for a checkout without one.
        let bare_for_none = ours.is_none() && !planfile::lock_file_locks_providers(lock);
        if ours.as_deref() != Some(lock.as_slice()) && !bare_for_none {
            return Err(
                "the plan's embedded .terraform.lock.hcl differs from this checkout's".into(),
            );
        }
    }
    Ok(())
}

/// The parts of a plan JSON that say what an apply does: every resource and output change
/// (with values), and the prior state it applies to.
const PLAN_PARTS: &[&str] = &[
    "terraform_version",
    "variables",
    "resource_changes",
    "resource_drift",
    "output_changes",
    "prior_state",
];

/// Compares what `terraform show -json` says of the plan about to be applied with the plan JSON
/// the server judged and the reviewers read. `None` when they agree; else the parts that differ.
/// A part whose text is the same byte for byte (the usual case: the same Terraform printed both
/// from the same binary) is equal without being parsed into values; any other is compared as
/// values.
fn plan_difference(shown: &[u8], judged: &[u8]) -> anyhow::Result<Option<String>> {
    type Parts<'a> = std::collections::HashMap<String, &'a serde_json::value::RawValue>;
    let shown_parts: Parts =
        serde_json::from_slice(shown).context("reading terraform show -json")?;
    let judged_parts: Parts =
        serde_json::from_slice(judged).context("reading the judged plan JSON")?;
    let value = |raw: Option<&&serde_json::value::RawValue>| -> anyhow::Result<Option<Value>> {
        raw.map(|r| serde_json::from_str(r.get()))
            .transpose()
            .context("reading a plan JSON part")
    };
    let mut differing = Vec::new();
    for k in PLAN_PARTS {
        let (a, b) = (shown_parts.get(*k), judged_parts.get(*k));
        if a.map(|r| r.get()) != b.map(|r| r.get()) && value(a)? != value(b)? {
            differing.push(*k);
        }
    }
    Ok((!differing.is_empty()).then(|| differing.join(", ")))
}

/// `airlock apply ID`: exactly the approved plan, with the run-bound token only.
pub fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let applied = apply_run(&c, &args.id, args.dir.as_deref(), &args.terraform_bin)?;
    c.print(&applied.response, |v| {
        format!("run {} {}\n", s(v, "/run/id"), s(v, "/run/status"))
    });
    Ok(match applied.outcome {
        ApplyOutcome::Applied => ExitCode::SUCCESS,
        ApplyOutcome::Refused(check) => {
            eprintln!("error: {check}");
            ExitCode::from(2)
        }
        ApplyOutcome::Failed => ExitCode::from(1),
    })
}

/// How an apply ended (once the server has started it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Terraform applied the plan.
    Applied,
    /// A check refused the plan before Terraform ran (the message says which).
    Refused(String),
    /// Terraform ran and failed (its log is the run's).
    Failed,
}

/// An apply the server recorded: its answer to `finish` (the run) and the outcome.
pub struct Applied {
    pub response: Value,
    pub outcome: ApplyOutcome,
}

/// Applies exactly the approved plan of run `id` with a run-bound token, after every check:
/// the one implementation behind `airlock apply` and `airlock ci apply`. `dir`: the stack's
/// directory (default: where the run was planned, under the current checkout's root).
pub fn apply_run(
    c: &Client,
    id: &str,
    dir: Option<&Path>,
    terraform_bin: &str,
) -> anyhow::Result<Applied> {
    let run = c.get(&format!("/api/v1/runs/{id}"))?;
    let stack = run["run"]["stack"]
        .as_str()
        .context("run has no stack")?
        .to_owned();
    // The stack's directory: --dir, else where the run was planned, under this checkout's root.
    let (repo, dir) = match dir {
        Some(d) => {
            let dir = d
                .canonicalize()
                .with_context(|| format!("{} is not a directory", d.display()))?;
            (find_repo(&dir)?, dir)
        }
        None => {
            let cwd = std::env::current_dir()?.canonicalize()?;
            let repo = find_repo(&cwd)?;
            let planned = run["run"]["planned_dir"].as_str().unwrap_or(".");
            let dir = repo.root.join(planned);
            let dir = dir.canonicalize().with_context(|| {
                format!(
                    "run {id} was planned in {planned} (relative to the repository root {}), which does not exist here; pass --dir",
                    repo.root.display()
                )
            })?;
            (repo, dir)
        }
    };
    // Every child of the apply phase runs without the plan profile.
    let plan_profile = repo.profile(Phase::Plan);
    // The fingerprint covers the Terraform version the run was planned with; `terraform apply`
    // itself refuses a plan file made by a different version.
    let version = run["run"]["terraform_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let files: Vec<InputFile> =
        input_files(&repo.root, &dir).context("listing the checkout's input files")?;
    let fp = inputs::fingerprint(&version, &files);
    let state_url = format!("{}/state/{stack}", c.base());
    let scratch = Scratch::new()?;
    let plan_path = scratch.0.join("plan.tfplan");
    // Providers are installed and run as in the plan phase, never from the checkout.
    let kept = kept_data_dir(&dir, &repo.root, &state_url);
    let sealed_vars = sealed_env(&repo.root, &scratch.0, kept.as_ref())?;
    let seal = |env| sealed(env, &sealed_vars);
    // While the server starts the apply, the run's plan and its reviewed JSON are fetched and,
    // in a checkout already initialised for this stack, `terraform show -json` reads the plan
    // (with no credential: reading a saved plan needs none). Nothing is trusted before the
    // checks below: the downloaded bytes must be the approved plan, and a failed early show is
    // made again with the run's token.
    let recorded = run["run"]["plan_sha256"].as_str().unwrap_or_default();
    let mut early_env = seal(phase_env(std::env::vars(), &plan_profile, ""));
    // Nor any cloud credential: it configures no provider, and an apply with an OIDC profile
    // never passes inherited ones to terraform.
    early_env.retain(|(k, _)| !super::oidc::CLOUD_CREDENTIAL_VARS.contains(&k.as_str()));
    let (started, early) = std::thread::scope(|scope| {
        let early = scope.spawn(|| -> anyhow::Result<Fetched> {
            let plan_bin = c.get_bytes(&format!("/api/v1/runs/{id}/artifacts/plan.tfplan"))?;
            std::fs::write(&plan_path, &plan_bin)?;
            let ready = hex::encode(Sha256::digest(&plan_bin)) == recorded
                && initialized_for(&data_dir(&dir, &early_env), &state_url);
            let show = ready.then(|| {
                show_json_command(terraform_bin, &dir, &plan_path, &early_env)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            });
            // Its output is read on a thread of its own: it is awaited only once
            // `terraform apply` has started (below).
            let shown = show
                .and_then(Result::ok)
                .map(|child| std::thread::spawn(move || child.wait_with_output()));
            let judged = c.get_bytes(&format!("/api/v1/runs/{id}/artifacts/plan.json"));
            // Read now, checked once the apply has started (below).
            let parsed = PlanFile::parse(&plan_bin).map_err(|e| e.to_string());
            Ok((plan_bin, judged?, shown, parsed))
        });
        let started = c.send(
            "POST",
            &format!("/api/v1/runs/{id}/apply"),
            &json!({"fingerprint": fp, "inputs": files}),
        );
        let early = early
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("fetching the plan panicked")));
        (started, early)
    });
    let started = started?;
    let token = started["token"]
        .as_str()
        .context("the server sent no run token")?
        .to_owned();
    let approved = started["plan_sha256"]
        .as_str()
        .context("the server sent no plan hash")?
        .to_owned();
    // From here on, every outcome is reported to the server with the run-bound token, and the
    // apply reports that it goes on until it has finished.
    let run_client = c.with_token(token.clone());
    let heartbeat = started["heartbeat_ms"].as_u64().map(|ms| {
        let (client, path) = (
            c.with_token(token.clone()),
            format!("/api/v1/runs/{id}/heartbeat"),
        );
        Heartbeat::start(client, path, Duration::from_millis(ms), Reported::Apply)
    });
    // `check`: the check made, when the server has not recorded it through `plan-check`.
    let finish = |success: bool, log: &[u8], check: Option<&str>| {
        run_client.send(
            "POST",
            &format!("/api/v1/runs/{id}/finish"),
            &json!({"success": success, "log_b64": B64.encode(log), "plan_check": check}),
        )
    };
    let (plan_bin, judged, early_show, parsed) = early?;
    let got = hex::encode(Sha256::digest(&plan_bin));
    if got != approved {
        let msg = format!("the downloaded plan (SHA-256 {got}) is not the approved plan ({approved}); refusing to apply");
        finish(
            false,
            msg.as_bytes(),
            Some("plan hash mismatch: not applied"),
        )?;
        bail!(msg);
    }
    let mut env = seal(phase_env(std::env::vars(), &plan_profile, &token));
    // Terraform waits at the state lock for the plan check below: nothing in its environment
    // may skip the lock (`-lock=false` in `TF_CLI_ARGS`) or send it another way than LOCK.
    env.retain(|(k, _)| !LOCK_OVERRIDES.contains(&k.as_str()));
    let mut log = Vec::new();
    let mut check = String::new();
    // Whether the server recorded the passed plan check (`finish` then does not repeat it).
    let mut recorded_check = false;
    let outcome = (|| -> anyhow::Result<bool> {
        // The apply phase's cloud identity (bound to this run and plan), if airlock.hcl asks.
        let _identity = with_identity(
            &run_client,
            &format!("/api/v1/runs/{id}/identity-token"),
            repo.oidc(Phase::Apply),
            &stack,
            "apply",
            &mut env,
        )?;
        let initialized = initialized_for(&data_dir(&dir, &env), &state_url);
        init(terraform_bin, &dir, &state_url, &env)?;
        // `terraform apply PLAN` runs the plan's embedded configuration and writes to the plan's
        // backend, whatever this checkout holds: both must be this checkout's and this server's.
        let embedded_check = || {
            parsed.as_ref().map_err(Clone::clone).and_then(|plan| {
                embedded_plan_is_this_checkouts(plan, &dir, &data_dir(&dir, &env), &state_url)
            })
        };
        let mut embedded = embedded_check();
        if embedded.is_err() && initialized {
            // A checkout initialised for the stack before may lack modules added or moved
            // since (init was skipped): initialise it again and check once more.
            init_now(terraform_bin, &dir, &state_url, &env)?;
            embedded = embedded_check();
        }
        if let Err(e) = embedded {
            check = format!("{e}: not applied");
            log = check.clone().into_bytes();
            return Ok(false);
        }
        // Terraform itself reads the binary about to be applied; it must say what was reviewed.
        // `terraform apply` starts meanwhile and waits at the state lock: the server grants
        // the run-bound token's lock for applying only once this check is recorded (Terraform
        // configures no provider and changes nothing before it holds the lock), and a failed
        // check stops Terraform at once, then ends the run, so the lock is refused.
        let checked = || -> anyhow::Result<Result<String, (String, Vec<u8>)>> {
            let shown = early_show.and_then(|t| t.join().ok()?.ok());
            let show = match shown.filter(|o| o.status.success()) {
                Some(shown) => shown,
                None => show_json(terraform_bin, &dir, &plan_path, &env)?,
            };
            if !show.status.success() {
                let check = "terraform show -json of the approved plan failed: not applied";
                return Ok(Err((check.into(), show.stderr)));
            }
            if let Some(parts) = plan_difference(&show.stdout, &judged)? {
                let check = format!("terraform show -json of the approved plan differs from the reviewed plan JSON in {parts}: not applied");
                return Ok(Err((check.clone(), check.into_bytes())));
            }
            Ok(Ok(format!(
                "terraform show -json of the approved plan equals the reviewed plan JSON ({}), recorded before terraform took the state lock",
                PLAN_PARTS.join(", ")
            )))
        };
        let apply_args: Vec<String> = vec![
            "apply".into(),
            "-input=false".into(),
            "-lock-timeout=120s".into(),
            plan_path.display().to_string(),
        ];
        // The log goes to the server as it grows, so approvers can follow the apply (best
        // effort: the whole log is sent again with `finish`, which is what is kept).
        let mut live = true;
        let mut send_part = |part: &[u8]| {
            for piece in part.chunks(LIVE_LOG_PART) {
                if live {
                    let path = format!("/api/v1/runs/{}/log", id);
                    let body = json!({"log_b64": B64.encode(piece)});
                    live = run_client.send("POST", &path, &body).is_ok();
                }
            }
        };
        let errored = dir.join(ERRORED_STATE);
        let errored_before = read_errored_state(&errored);
        let stop = AtomicBool::new(false);
        let (done, verdict) = std::thread::scope(|scope| {
            let checker = scope.spawn(|| {
                let verdict = checked();
                match &verdict {
                    Ok(Ok(passed)) => {
                        let body = json!({"plan_sha256": approved, "check": passed});
                        let path = format!("/api/v1/runs/{id}/plan-check");
                        // Not recorded, the lock stays refused and Terraform stops by itself
                        // (at its -lock-timeout). It is not killed: the answer may have been
                        // lost after the check was recorded, and Terraform then applies.
                        return Ok(match run_client.send("POST", &path, &body) {
                            Ok(_) => Ok((passed.clone(), true)),
                            Err(e) => Ok((format!("{passed}; recording it failed: {e:#}"), false)),
                        });
                    }
                    // Terraform waits at the lock, which this check will never open.
                    _ => stop.store(true, Ordering::SeqCst),
                }
                verdict.map(|v| v.map(|passed| (passed, false)))
            });
            let done = run_streaming_until(
                terraform(terraform_bin, &dir, &apply_args),
                &env,
                Duration::from_secs(2),
                &mut send_part,
                &stop,
            );
            let verdict = checker
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the plan check panicked")));
            (done, verdict)
        });
        match verdict? {
            Ok((passed, recorded)) => {
                check = passed;
                recorded_check = recorded;
            }
            Err((refused, why)) => {
                check = refused;
                log = why;
                return Ok(false);
            }
        }
        let done = done?;
        log = done.log;
        if !done.status.success() {
            // Terraform applied changes but could not save the state (the server unreachable
            // at the end, say): the state it left is saved now, or the user told how to.
            let left = read_errored_state(&errored);
            if let Some(body) = left.filter(|b| Some(b) != errored_before.as_ref()) {
                let started_from = StartedFrom {
                    run: id,
                    lineage: run["run"]["planned_lineage"].as_str(),
                    serial: run["run"]["planned_serial"].as_u64(),
                };
                let note = save_errored_state(&run_client, &stack, started_from, &errored, &body);
                eprintln!("{note}");
                log.extend_from_slice(format!("\n{note}\n").as_bytes());
            }
        }
        Ok(done.status.success())
    })();
    drop(scratch);
    drop(kept);
    let success = matches!(outcome, Ok(true));
    // The apply is over: no report may cross `finish` (and warn of a refusal after it).
    drop(heartbeat);
    let response = finish(success, &log, (!recorded_check).then_some(check.as_str()))?;
    let outcome = match outcome {
        Ok(true) => ApplyOutcome::Applied,
        Ok(false) if check.ends_with("not applied") => ApplyOutcome::Refused(check),
        Ok(false) => ApplyOutcome::Failed,
        Err(e) => return Err(e),
    };
    Ok(Applied { response, outcome })
}

/// What Terraform writes in its working directory when it applied changes but could not save
/// the state to the backend.
const ERRORED_STATE: &str = "errored.tfstate";

/// How long `airlock apply` keeps trying to save a state Terraform could not save, and how long
/// one request of it may take.
const SAVE_RETRY: Duration = Duration::from_secs(300);
const SAVE_REQUEST: Duration = Duration::from_secs(30);

/// The largest `errored.tfstate` read (the server's default largest state is 256 MiB).
const MAX_ERRORED_STATE: u64 = 1024 * 1024 * 1024;

/// The bytes of `path` if it is a regular file (not a link or a pipe a provisioner left) of at
/// most [`MAX_ERRORED_STATE`] bytes.
fn read_errored_state(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    (meta.is_file() && meta.len() <= MAX_ERRORED_STATE)
        .then(|| std::fs::read(path).ok())
        .flatten()
}

/// The state an apply started from: the run's planned lineage and serial (`airlock apply`
/// starts only a run whose stack is still there), and the run whose own writes may follow it.
#[derive(Debug, Clone, Copy)]
struct StartedFrom<'a> {
    run: &'a str,
    lineage: Option<&'a str>,
    serial: Option<u64>,
}

/// Why one attempt to save Terraform's errored state failed.
enum SaveFailed {
    /// The server could not be reached or failed (5xx): worth another try.
    Again(String),
    /// The server, or the check of what the stack holds now, refused: it will again.
    Refused(String),
}

/// Saves `body`, the state Terraform left in `path` because it could not save it, to `stack`
/// through the state protocol with the run-bound token (so under the same lock rules and
/// firewall as Terraform's own write), trying again for [`SAVE_RETRY`] while the server cannot
/// be reached. Returns what happened, in words for the log: saved, or how to recover by hand.
fn save_errored_state(
    client: &Client,
    stack: &str,
    from: StartedFrom<'_>,
    path: &Path,
    body: &[u8],
) -> String {
    let deadline = Instant::now() + SAVE_RETRY;
    let mut wait = Duration::from_secs(1);
    let mut attempts = 0;
    let sha = hex::encode(Sha256::digest(body));
    let failed = loop {
        attempts += 1;
        match save_state_once(client, stack, from, body) {
            Ok(unlocked) => {
                return format!("airlock: Terraform applied changes but could not save the state; airlock saved the state it left ({}, SHA-256 {sha}) to stack {stack} (attempt {attempts}){}", path.display(), match unlocked {
                    true => " and released the lock".to_owned(),
                    false => format!("; releasing the lock failed: `terraform force-unlock` it once nothing else runs on {stack}"),
                });
            }
            Err(SaveFailed::Again(why)) if Instant::now() + wait < deadline => {
                eprintln!(
                    "airlock: saving {} failed ({why}); trying again in {} s",
                    path.display(),
                    wait.as_secs()
                );
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(15));
            }
            Err(e) => break e,
        }
    };
    let kept = format!(
        "Keep {} (SHA-256 {sha}; a CI job's workspace is deleted when the job ends)",
        path.display()
    );
    match failed {
        SaveFailed::Again(why) => format!("airlock: WARNING: Terraform applied changes that stack {stack}'s state does not record, and the server could not be reached to save the state it left ({why}). {kept} and push it once the server is back: `terraform state push {ERRORED_STATE}` (after `terraform force-unlock LOCK_ID` if the stack stays locked)"),
        SaveFailed::Refused(why) => format!("airlock: WARNING: Terraform applied changes that stack {stack}'s state does not record, and saving the state it left was refused: {why}. {kept}; do not push it before someone has compared it with the stack's state (`airlock state diff`) and understood the refusal"),
    }
}

/// One attempt of [`save_errored_state`]: the lock (a new one, or the one already held when it
/// is this run token's: Terraform's, or an earlier attempt's, which the server lets only its
/// owner write with), the stack's versions, the write, the unlock. `Ok(unlocked)`.
fn save_state_once(
    client: &Client,
    stack: &str,
    from: StartedFrom<'_>,
    body: &[u8],
) -> Result<bool, SaveFailed> {
    const ANSWER: u64 = 16 * 1024 * 1024;
    let state = format!("/state/{stack}");
    let send = |method: &str, path: &str, body: &[u8]| {
        let (code, answer) = client
            .send_raw(
                method,
                path,
                &[("Content-Type", "application/json")],
                body,
                ANSWER,
                Some(SAVE_REQUEST),
            )
            .map_err(|e| SaveFailed::Again(format!("{e:#}")))?;
        let said = || {
            let text = String::from_utf8_lossy(answer.get(..300).unwrap_or(&answer));
            format!("{method} answered {code}: {}", printable(&text))
        };
        match code {
            200..=299 => Ok((code, answer)),
            423 if method == "LOCK" => Ok((code, answer)),
            500..=599 => Err(SaveFailed::Again(said())),
            _ => Err(SaveFailed::Refused(said())),
        }
    };
    let id = airlock_server::tokens::random_id("airlock-save-");
    let info = json!({
        "ID": id,
        "Operation": "OperationTypeApply",
        "Info": "airlock apply: saving the state Terraform could not",
        "Who": "airlock apply",
        "Version": "",
        "Created": airlock_core::time::rfc3339(airlock_store::now_ms()),
        "Path": "",
    });
    let (code, answer) = send("LOCK", &state, info.to_string().as_bytes())?;
    let held = if code == 423 {
        serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v["ID"].as_str().map(str::to_owned))
            .ok_or_else(|| {
                SaveFailed::Refused("the stack is locked by a lock without an ID".into())
            })?
    } else {
        id
    };
    let written = (|| {
        let path = format!("/api/v1/stacks/{}/versions", stack_segment(stack));
        let (_, versions) = send("GET", &path, b"")?;
        let versions: Value = serde_json::from_slice(&versions).map_err(|e| {
            SaveFailed::Refused(format!("the stack's versions could not be read: {e}"))
        })?;
        let body = errored_state_to_write(body, from, &versions)?;
        send("POST", &format!("{state}?ID={}", query_value(&held)), &body).map(|_| ())
    })();
    // A lock this attempt took is released whatever happened; one it found (Terraform's, or an
    // earlier attempt's) once the write is taken, which proves it is this run's.
    let unlocked = if code != 423 || written.is_ok() {
        send("UNLOCK", &state, json!({"ID": held}).to_string().as_bytes()).is_ok()
    } else {
        false
    };
    written.map(|()| unlocked)
}

/// The state Terraform left (`errored`) as it is written over the stack now, given its
/// `versions` (`GET /api/v1/stacks/{stack}/versions`), as `terraform state push` would and
/// more strictly: every version since the one the apply started from must be this run's own
/// (Terraform's snapshots during the apply, an earlier attempt whose answer was lost), else a
/// person compares first. The write takes the next serial, or Terraform's when higher (it
/// counts its failed writes in the serial it exports), the started-from lineage (for a stack
/// the apply found empty: Terraform's, or when it had none yet one derived from the run id, so
/// that a retry writes the same), and keeps every other top-level value as read.
fn errored_state_to_write(
    errored: &[u8],
    from: StartedFrom<'_>,
    versions: &Value,
) -> Result<Vec<u8>, SaveFailed> {
    use serde_json::value::RawValue;
    let refused = |why: String| SaveFailed::Refused(why);
    // Parsed only at the top: every other value is written back byte for byte.
    let mut top: std::collections::BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(errored)
            .map_err(|e| refused(format!("{ERRORED_STATE} is not a state file: {e}")))?;
    let field = |name: &str| {
        top.get(name)
            .and_then(|r| serde_json::from_str::<Value>(r.get()).ok())
    };
    let their_lineage = field("lineage")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let their_serial = field("serial").and_then(|v| v.as_u64()).unwrap_or(0);
    let mut newest: Option<(u64, String)> = None;
    for v in versions["versions"].as_array().into_iter().flatten() {
        let serial = v["serial"].as_u64().unwrap_or(0);
        if from.serial.is_some_and(|s| serial <= s) {
            continue;
        }
        if v["run_id"].as_str() != Some(from.run) {
            let author = printable(v["author"].as_str().unwrap_or("?")).into_owned();
            let start = from
                .serial
                .map_or("no state".to_owned(), |s| format!("serial {s}"));
            return Err(refused(format!("the stack's serial {serial} was written by {author} since this apply started (at {start}), not by run {}", from.run)));
        }
        if newest.as_ref().is_none_or(|(n, _)| serial > *n) {
            newest = Some((serial, v["lineage"].as_str().unwrap_or_default().to_owned()));
        }
    }
    let lineage = match (from.lineage, &newest) {
        (Some(l), _) => l.to_owned(),
        (None, Some((_, l))) => l.clone(),
        (None, None) if !their_lineage.is_empty() => their_lineage.clone(),
        (None, None) => {
            let h = hex::encode(Sha256::digest(format!(
                "airlock lineage of run {}",
                from.run
            )));
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        }
    };
    if !their_lineage.is_empty() && their_lineage != lineage {
        return Err(refused(format!(
            "{ERRORED_STATE} has lineage {their_lineage}, the stack {lineage}"
        )));
    }
    let now = newest.map(|(s, _)| s).or(from.serial).unwrap_or(0);
    let serial = their_serial.max(now + 1);
    let raw = |json: String| RawValue::from_string(json).map_err(|e| refused(e.to_string()));
    top.insert("lineage".into(), raw(Value::from(lineage).to_string())?);
    top.insert("serial".into(), raw(serial.to_string())?);
    serde_json::to_vec(&top).map_err(|e| refused(e.to_string()))
}

/// Reports to the server every `every` that a phase goes on (`POST path`) until dropped: the
/// server keeps the phase's token alive only while its client reports, so a long plan or apply
/// outlives its token's first expiry, and a run whose `airlock apply` died is closed as
/// abandoned.
struct Heartbeat {
    stop: Arc<AtomicBool>,
    /// The reporting thread, joined on drop: no report is still in flight once the phase has
    /// ended (each request is bounded: at most 30 s).
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Which phase a [`Heartbeat`] reports for: what its warnings say.
#[derive(Clone, Copy)]
enum Reported {
    /// `POST /api/v1/runs/{id}/heartbeat`, with the run-bound token.
    Apply,
    /// `POST /api/v1/stacks/{stack}/plan-token/{id}/heartbeat`, with the token that minted the
    /// plan-phase token.
    Plan,
}

impl Reported {
    fn refused(self, code: u16, answer: &[u8]) -> String {
        let why = printable(&String::from_utf8_lossy(
            answer.get(..300).unwrap_or(answer),
        ))
        .into_owned();
        match self {
            Reported::Apply => format!("warning: the server refused this apply's report ({code}: {why}): Terraform's state write at the end will be refused too; keep Terraform's errored.tfstate if it writes one, and see `airlock run show`"),
            Reported::Plan => format!("warning: the server refused this plan's report ({code}: {why}): if the plan outlives its token, Terraform's release of the state lock at its end is refused (an approved apply takes such a lock over)"),
        }
    }

    fn capped(self, deadline: i64) -> String {
        let at = airlock_core::time::rfc3339(deadline);
        match self {
            Reported::Apply => format!("warning: this apply's run is closed at {at} however it reports: the apply reaches the longest it may take (24 hours, and never past the expiry of the token that started it); Terraform's state writes after that will be refused"),
            Reported::Plan => format!("warning: this plan's token expires at {at} however it reports (24 hours after it was minted, and never past the expiry of the token that minted it); Terraform's requests after that will be refused"),
        }
    }
}

impl Heartbeat {
    fn start(client: Client, path: String, every: Duration, what: Reported) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            let mut warned = false;
            while !stopped.load(Ordering::SeqCst) {
                std::thread::sleep(every.min(Duration::from_millis(100)));
                if last.elapsed() < every || stopped.load(Ordering::SeqCst) {
                    continue;
                }
                last = Instant::now();
                // A lost or failed report is made up by the next (the deadline moves once a
                // third of the idle time has passed, and reports come ten times in it).
                let timeout = Some(every.clamp(Duration::from_secs(1), Duration::from_secs(30)));
                let sent = client.send_raw("POST", &path, &[], b"{}", 64 * 1024, timeout);
                let Ok((code, answer)) = sent else { continue };
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                // A refusal is final (the token is gone, or the phase is over): said once,
                // loudly, and no more reports are sent.
                if matches!(code, 401 | 403 | 409 | 410) {
                    eprintln!("{}", what.refused(code, &answer));
                    break;
                }
                let deadline = serde_json::from_slice::<Value>(&answer)
                    .ok()
                    .and_then(|v| v["alive_until"].as_i64());
                let left = deadline.map(|d| d - airlock_store::now_ms());
                if !warned && left.is_some_and(|l| l < 3 * every.as_millis() as i64) {
                    eprintln!("{}", what.capped(deadline.unwrap_or_default()));
                    warned = true;
                }
            }
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Variables that would let `terraform apply` skip the state lock or send it otherwise than as
/// a LOCK to the plan's lock address (`-lock=false` in CLI arguments, the http backend's method
/// and address overrides): removed from the apply's environment.
const LOCK_OVERRIDES: &[&str] = &[
    "TF_CLI_ARGS",
    "TF_CLI_ARGS_apply",
    "TF_HTTP_LOCK_METHOD",
    "TF_HTTP_UNLOCK_METHOD",
    "TF_HTTP_LOCK_ADDRESS",
    "TF_HTTP_UNLOCK_ADDRESS",
];

/// `terraform show -json` of the downloaded plan, started before the apply began: its output.
type EarlyShow = std::thread::JoinHandle<std::io::Result<std::process::Output>>;

/// What `airlock apply` fetches and reads while the server starts the apply: the binary plan,
/// the reviewed plan JSON, the early `show -json` if one could start, and the parsed plan.
type Fetched = (
    Vec<u8>,
    Vec<u8>,
    Option<EarlyShow>,
    Result<PlanFile, String>,
);

/// Largest apply-log part sent while Terraform runs (the server's `MAX_LOG_PART`).
const LIVE_LOG_PART: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::{
        embedded_config_is_this_checkouts, errored_state_to_write, plan_difference, PlanFile,
        SaveFailed, StartedFrom,
    };
    use serde_json::{json, Value};

    #[test]
    fn the_scratch_directory_for_plan_files_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = super::Scratch::new().expect("a scratch directory");
        let mode = std::fs::metadata(&scratch.0)
            .expect("it exists")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "other users of the machine can list or read it"
        );
        let dir = scratch.0.clone();
        drop(scratch);
        assert!(!dir.exists(), "removed when dropped");
        // A signal that ends airlock while no terraform runs drops nothing: the plan files go.
        let scratch = super::Scratch::new().expect("a scratch directory");
        std::fs::write(scratch.0.join("plan.tfplan"), b"plan").expect("written");
        super::remove_scratch_dirs();
        assert!(!scratch.0.exists(), "left behind on a signal");
    }

    /// `airlock apply` refuses a binary plan whose embedded configuration (root module, local
    /// modules, lock file) is not this checkout's, whatever the server accepted.
    #[test]
    fn embedded_configuration_must_be_the_checkouts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("m")).unwrap();
        std::fs::write(
            dir.join("main.tf"),
            "module \"m\" {\n  source = \"./m\"\n}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("m/main.tf"),
            "resource \"terraform_data\" \"x\" {}\n",
        )
        .unwrap();
        let tf = |args: &[&str]| {
            let out = std::process::Command::new("terraform")
                .args(args)
                .current_dir(dir)
                .env("CHECKPOINT_DISABLE", "1")
                .env("TF_CLI_CONFIG_FILE", "/dev/null")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        tf(&["init", "-input=false"]);
        tf(&["plan", "-input=false", "-out=p.tfplan"]);
        let plan = PlanFile::parse(&std::fs::read(dir.join("p.tfplan")).unwrap()).unwrap();
        assert_eq!(
            embedded_config_is_this_checkouts(&plan, dir, &dir.join(".terraform")),
            Ok(())
        );
        // A module file changed after planning.
        std::fs::write(
            dir.join("m/main.tf"),
            "resource \"terraform_data\" \"y\" {}\n",
        )
        .unwrap();
        let e = embedded_config_is_this_checkouts(&plan, dir, &dir.join(".terraform")).unwrap_err();
        assert!(e.contains("m/main.tf"), "{e}");
        // A file the plan does not embed.
        std::fs::write(
            dir.join("m/main.tf"),
            "resource \"terraform_data\" \"x\" {}\n",
        )
        .unwrap();
        std::fs::write(dir.join("extra.tf"), "").unwrap();
        let e = embedded_config_is_this_checkouts(&plan, dir, &dir.join(".terraform")).unwrap_err();
        assert!(e.contains("extra.tf"), "{e}");
    }

    #[test]
    fn show_json_runs_with_a_lazier_collector_unless_the_environment_tunes_go() {
        let gogc = |env: &[(&str, &str)]| {
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let c = super::show_json_command(
                "terraform",
                std::path::Path::new("."),
                std::path::Path::new("p"),
                &env,
            );
            let found: Vec<(String, Option<String>)> = c
                .get_envs()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.map(|v| v.to_string_lossy().into_owned()),
                    )
                })
                .collect();
            found
                .iter()
                .rev()
                .find(|(k, _)| k == "GOGC")
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(gogc(&[("PATH", "/bin")]).as_deref(), Some("400"));
        assert_eq!(gogc(&[("GOGC", "50")]).as_deref(), Some("50"));
        assert_eq!(gogc(&[("GOMEMLIMIT", "1GiB")]), None);
    }

    #[test]
    fn an_errored_state_is_written_as_terraform_state_push_would() {
        // What Terraform leaves: the lineage it read and its serial counting failed writes; a
        // number too long for a float is kept as written.
        let errored = |lineage: &str, serial: u64| {
            format!(
                r#"{{"version": 4, "lineage": "{lineage}", "serial": {serial}, "resources": [{{"n": 123456789012345678901234567890}}]}}"#
            )
        };
        let version = |serial: u64, run: &str| json!({"serial": serial, "lineage": "lin", "run_id": run, "author": format!("apply {run}")});
        let versions = |v: Vec<Value>| json!({ "versions": v });
        let from = |lineage: Option<&'static str>, serial: Option<u64>| StartedFrom {
            run: "run_a",
            lineage,
            serial,
        };
        let written = |e: &str, from: StartedFrom<'_>, v: &Value| {
            errored_state_to_write(e.as_bytes(), from, v)
                .map(|b| {
                    let text = String::from_utf8(b).unwrap();
                    assert!(text.contains("123456789012345678901234567890"), "{text}");
                    serde_json::from_str::<Value>(&text).unwrap()
                })
                .map_err(|f| match f {
                    SaveFailed::Refused(why) | SaveFailed::Again(why) => why,
                })
        };
        // The stack's first state: Terraform had no lineage yet; one derived from the run (a
        // retry writes the same), serial 1.
        let first = written(&errored("", 0), from(None, None), &versions(vec![])).unwrap();
        assert_eq!(first["lineage"].as_str().unwrap().len(), 36, "{first}");
        assert_eq!(first["serial"], 1);
        let derived = written(&errored("", 0), from(None, None), &versions(vec![])).unwrap();
        assert_eq!(
            derived["lineage"], first["lineage"],
            "a retry derives the same"
        );
        // Terraform's own, when it chose one (its read worked, its write did not).
        let chosen = written(
            &errored("tf-lineage", 1),
            from(None, None),
            &versions(vec![]),
        )
        .unwrap();
        assert_eq!(
            (chosen["lineage"].as_str(), chosen["serial"].as_u64()),
            (Some("tf-lineage"), Some(1))
        );
        let again = vec![json!({"serial": 1, "lineage": first["lineage"], "run_id": "run_a"})];
        let retried = written(&errored("", 0), from(None, None), &versions(again)).unwrap();
        assert_eq!(
            (&retried["lineage"], &retried["serial"]),
            (&first["lineage"], &json!(2))
        );
        // Started from serial 4: Terraform's failed write counted 5; taken as 5.
        let before = vec![version(3, "run_x"), version(4, "run_y")];
        let next = written(
            &errored("lin", 5),
            from(Some("lin"), Some(4)),
            &versions(before.clone()),
        )
        .unwrap();
        assert_eq!(
            (next["lineage"].as_str(), next["serial"].as_u64()),
            (Some("lin"), Some(5))
        );
        // The run's own writes since (Terraform's snapshots, a save whose answer was lost) are
        // followed; another's are not: a person compares first.
        let mut own = before.clone();
        own.push(version(5, "run_a"));
        let next = written(
            &errored("lin", 5),
            from(Some("lin"), Some(4)),
            &versions(own),
        )
        .unwrap();
        assert_eq!(next["serial"], 6);
        let mut theirs = before.clone();
        theirs.push(version(5, "run_b"));
        for (e, v, says) in [
            (
                errored("lin", 5),
                versions(theirs),
                "written by apply run_b since this apply started",
            ),
            (
                errored("other", 5),
                versions(before.clone()),
                "has lineage other",
            ),
            ("not json".to_owned(), versions(before), "not a state file"),
        ] {
            let why = written(&e, from(Some("lin"), Some(4)), &v).unwrap_err();
            assert!(why.contains(says), "{why}");
        }
    }

    #[test]
    fn plan_difference_compares_what_an_apply_does() {
        let judged = br#"{"terraform_version":"1.11.4","timestamp":"a","resource_changes":[{"address":"x","change":{"actions":["update"]}}],"output_changes":{},"prior_state":{"values":{}}}"#;
        let same_but_time = br#"{"timestamp":"b","terraform_version":"1.11.4","resource_changes":[{"change":{"actions":["update"]},"address":"x"}],"output_changes":{},"prior_state":{"values":{}}}"#;
        assert_eq!(plan_difference(same_but_time, judged).unwrap(), None);
        let destroy = br#"{"terraform_version":"1.11.4","resource_changes":[{"address":"x","change":{"actions":["delete"]}}],"output_changes":{},"prior_state":{"values":{}}}"#;
        assert_eq!(
            plan_difference(destroy, judged).unwrap().as_deref(),
            Some("resource_changes")
        );
        assert!(plan_difference(b"not json", judged).is_err());
        // Parts are found by their decoded names, and the same value spelled otherwise is equal.
        let escaped_destroy = br#"{"terraform_version":"1.11.4","resource\u005fchanges":[{"address":"x","change":{"actions":["delete"]}}],"output_changes":{},"prior_state":{"values":{}}}"#;
        assert_eq!(
            plan_difference(judged, escaped_destroy).unwrap().as_deref(),
            Some("resource_changes")
        );
        let spaced = br#"{"terraform_version": "1.11.4", "resource_changes": [{"address": "x", "change": {"actions": ["update"]}}], "output_changes": {}, "prior_state": {"values": {}}}"#;
        assert_eq!(plan_difference(spaced, judged).unwrap(), None);
        // A refresh-only plan's effect is its drift: one dropping another instance differs.
        let drops_db = br#"{"terraform_version":"1.11.4","resource_drift":[{"address":"aws_db_instance.main","change":{"actions":["delete"]}}],"output_changes":{},"prior_state":{"values":{}}}"#;
        let drops_lb = br#"{"terraform_version":"1.11.4","resource_drift":[{"address":"aws_lb.front","change":{"actions":["delete"]}}],"output_changes":{},"prior_state":{"values":{}}}"#;
        assert_eq!(
            plan_difference(drops_lb, drops_db).unwrap().as_deref(),
            Some("resource_drift")
        );
    }
}
