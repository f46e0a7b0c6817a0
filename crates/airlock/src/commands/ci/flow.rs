//! What `airlock ci plan` and `airlock ci apply` share: the stacks to act on (the affected set,
//! or `--stack`), and where results go (the forge's comment and statuses, or the terminal).
//! Posting never decides an outcome: a failed post is a warning naming the fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use super::comment::{self, Light};
use super::forge::{Event, Forge, StatusState};
use crate::commands::client::{printable, Client};
use crate::commands::run::{checkout_fingerprint, query_value};
use airlock_core::inputs::InputFile;

/// The repository root: the nearest directory at or above the current one holding airlock.hcl.
pub fn repo_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir()?.canonicalize()?;
    cwd.ancestors()
        .find(|d| d.join(airlock_core::inputs::CONFIG_PATH).is_file())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "no airlock.hcl in {} or its parents: run airlock ci in the repository",
                cwd.display()
            )
        })
}

/// One stack to plan or apply.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// Directory relative to the repository root.
    pub dir: String,
    /// `destroy = true` in airlock.hcl: plan with `-destroy`.
    pub destroy: bool,
}

/// The stacks to act on, in dependency order, and the stacks the change removes.
#[derive(Debug, Default)]
pub struct Targets {
    pub base: Option<String>,
    pub head: Option<String>,
    pub stacks: Vec<Target>,
    pub removed: Vec<comment::Removed>,
}

/// Each stack's `depends_on`, from the checkout's airlock.hcl.
pub fn dependencies(root: &Path) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let path = root.join(airlock_core::inputs::CONFIG_PATH);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = airlock_policy::config::parse(&text, &path.display().to_string())?;
    Ok(config
        .stacks
        .into_iter()
        .map(|s| (s.name, s.depends_on))
        .collect())
}

/// `--stack` names looked up in airlock.hcl.
pub fn explicit_targets(root: &Path, names: &[String]) -> anyhow::Result<Targets> {
    let path = root.join(airlock_core::inputs::CONFIG_PATH);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = airlock_policy::config::parse(&text, &path.display().to_string())?;
    let mut stacks = Vec::new();
    for name in names {
        let Some(block) = config.stack(name) else {
            bail!("airlock.hcl has no stack block {name:?}");
        };
        let Some(dir) = &block.dir else {
            bail!("the stack block {name:?} of airlock.hcl has no dir");
        };
        stacks.push(Target {
            name: name.clone(),
            dir: dir.clone(),
            destroy: false,
        });
    }
    Ok(Targets {
        stacks,
        ..Targets::default()
    })
}

/// A forge to post to (implemented by `forge.rs`).
pub trait Remote {
    fn set_status(
        &self,
        sha: &str,
        context: &str,
        light: Light,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), String>;
    /// Creates or updates the comment starting with `marker`; returns its URL.
    fn upsert_comment(&self, change: u64, marker: &str, body: &str) -> Result<String, String>;
    /// Whether a pending status can be followed by another pending one with a new description
    /// (GitHub). GitLab refuses `pending -> pending`, so there the "planning" status is left
    /// out and the first status is "needs N approvals".
    fn repeats_pending(&self) -> bool;
}

/// What the CI environment says about this job.
#[derive(Debug, Clone, Default)]
pub struct Job {
    /// The pull/merge request (none on a push).
    pub change: Option<u64>,
    /// Its web URL.
    pub change_url: Option<String>,
    /// The commit statuses are set on (the pull request's head, or the pushed commit).
    pub head_sha: Option<String>,
    /// The pull request's base commit (a push's previous tip).
    pub base_sha: Option<String>,
    /// What the CI job runs for (none outside CI).
    pub event: Option<Event>,
    /// Who the CI says wrote or pushed the change request (`github:alice`), author first.
    pub change_authors: Vec<String>,
}

/// Where results go.
pub struct Sink {
    remote: Option<Box<dyn Remote>>,
    pub job: Job,
    /// Posting problems, each with its fix; printed at the end, never changing the exit code.
    pub warnings: Vec<String>,
}

impl Sink {
    /// The terminal only.
    pub fn local() -> Sink {
        Sink {
            remote: None,
            job: Job::default(),
            warnings: Vec::new(),
        }
    }

    /// The forge of this CI job, if any (`print`: the terminal anyway).
    pub fn from_env(print: bool) -> anyhow::Result<Sink> {
        let mut sink = forge_remote()?.map_or_else(Sink::local, |(remote, job)| Sink {
            remote: Some(remote),
            job,
            warnings: Vec::new(),
        });
        if print {
            sink.remote = None;
        }
        Ok(sink)
    }

    pub fn posts(&self) -> bool {
        self.remote.is_some()
    }

    /// Sets the status `airlock/STACK` on `sha`.
    /// `target_url`: where the status's "Details" link goes (the run in the web console).
    pub fn status(
        &mut self,
        sha: Option<&str>,
        stack: &str,
        light: Light,
        description: &str,
        target_url: Option<&str>,
    ) {
        let (Some(remote), Some(sha)) = (&self.remote, sha) else {
            return;
        };
        let description: String = description.chars().take(140).collect();
        if let Err(e) = remote.set_status(
            sha,
            &format!("airlock/{stack}"),
            light,
            &description,
            target_url,
        ) {
            self.warnings
                .push(format!("could not set the status airlock/{stack}: {e}"));
        }
    }

    /// A pending status saying what is in progress, where the forge can replace it by another
    /// pending one afterwards.
    pub fn progress(&mut self, sha: Option<&str>, stack: &str, description: &str) {
        if self.remote.as_ref().is_some_and(|r| r.repeats_pending()) {
            self.status(sha, stack, Light::Pending, description, None);
        }
    }

    /// Posts (or updates) the sticky comment on `change`.
    pub fn comment(&mut self, change: u64, body: &str) -> Option<String> {
        let remote = self.remote.as_ref()?;
        match remote.upsert_comment(change, comment::MARKER, body) {
            Ok(url) => Some(url),
            Err(e) => {
                self.warnings
                    .push(format!("could not post the comment on #{change}: {e}"));
                None
            }
        }
    }

    /// Prints the warnings to stderr.
    pub fn warn(&self) {
        for w in &self.warnings {
            eprintln!("warning: {}", printable(w));
        }
    }
}

/// Appends `markdown` to `$GITHUB_STEP_SUMMARY` when the job has one.
pub fn step_summary(markdown: &str, warnings: &mut Vec<String>) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else {
        return;
    };
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut f| f.write_all(markdown.as_bytes()));
    if let Err(e) = written {
        warnings.push(format!(
            "could not write $GITHUB_STEP_SUMMARY ({}): {e}",
            PathBuf::from(path).display()
        ));
    }
}

/// The web console's page of run `id` on the server `base`, for links.
pub fn run_url(base: &str, id: &str) -> Option<String> {
    let ok = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && (base.starts_with("https://") || base.starts_with("http://"));
    ok.then(|| format!("{}/ui/runs/{id}", base.trim_end_matches('/')))
}

/// The full record of run `id` (`run` of `GET /api/v1/runs/{id}`).
pub fn fetch_run(c: &Client, id: &str) -> anyhow::Result<Value> {
    Ok(c.get(&format!("/api/v1/runs/{id}"))?["run"].clone())
}

/// `git rev-parse HEAD` of the repository.
pub fn git_head(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The stacks the change from the merge base of `base` and `head` affects
/// (`airlock_runner::affected`), in dependency order.
pub fn affected_targets(root: &Path, base: &str, head: &str) -> anyhow::Result<Targets> {
    let set =
        airlock_runner::affected::affected(root, base, head).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Targets {
        base: Some(set.base),
        head: Some(set.head),
        stacks: set
            .stacks
            .into_iter()
            .map(|s| Target {
                name: s.name,
                dir: s.dir,
                destroy: s.destroy,
            })
            .collect(),
        removed: set
            .removed
            .into_iter()
            .map(|r| comment::Removed {
                stack: r.name,
                dir: r.dir,
                declared: r.declared,
            })
            .collect(),
    })
}

impl Remote for Forge {
    fn set_status(
        &self,
        sha: &str,
        context: &str,
        light: Light,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), String> {
        let state = match light {
            Light::Pending => StatusState::Pending,
            Light::Success => StatusState::Success,
            Light::Failure => StatusState::Failure,
            Light::Error => StatusState::Error,
        };
        Forge::set_status(self, sha, context, state, description, target_url)
            .map_err(|e| e.to_string())
    }

    fn upsert_comment(&self, change: u64, marker: &str, body: &str) -> Result<String, String> {
        Forge::upsert_comment(self, change, marker, body).map_err(|e| e.to_string())
    }

    fn repeats_pending(&self) -> bool {
        matches!(self, Forge::GitHub(_))
    }
}

/// The forge of this CI job and what its environment says, if the job runs on one.
fn forge_remote() -> anyhow::Result<Option<(Box<dyn Remote>, Job)>> {
    let env = |k: &str| std::env::var(k).ok();
    let Some(ctx) = Forge::from_env(&env)? else {
        return Ok(None);
    };
    let change_url = ctx.change.and_then(|n| change_url(&ctx.forge, n, &env));
    let job = Job {
        change: ctx.change,
        change_url,
        head_sha: Some(ctx.head_sha),
        base_sha: ctx.base_sha,
        event: Some(ctx.event),
        change_authors: ctx.change_authors,
    };
    Ok(Some((Box::new(ctx.forge), job)))
}

/// The web URL of pull request / merge request `n`, from the CI's variables.
fn change_url(forge: &Forge, n: u64, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let base = match forge {
        Forge::GitHub(_) => format!(
            "{}/{}/pull/{n}",
            env("GITHUB_SERVER_URL")?.trim_end_matches('/'),
            env("GITHUB_REPOSITORY")?
        ),
        Forge::GitLab(_) => format!(
            "{}/-/merge_requests/{n}",
            env("CI_MERGE_REQUEST_PROJECT_URL")
                .or_else(|| env("CI_PROJECT_URL"))?
                .trim_end_matches('/')
        ),
    };
    (base.starts_with("https://") || base.starts_with("http://")).then_some(base)
}

/// The version of `terraform_bin` (`terraform version -json`). A run's fingerprint covers the
/// version that planned it, and `terraform apply` refuses another version's plan, so a job looks
/// for runs made with its own.
pub fn terraform_version(terraform_bin: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new(terraform_bin)
        .args(["version", "-json"])
        .env("CHECKPOINT_DISABLE", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {terraform_bin} version -json"))?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading {terraform_bin} version -json"))?;
    v["terraform_version"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{terraform_bin} version -json names no terraform_version"))
}

/// Who this job is, as runs name their author: the token's user (else the token), and, for a
/// forge login, the verified git ref of its job (`author_ref`): every job a trust logs in shares
/// the trust's user, so the ref tells one pull request's jobs from another's.
pub struct Identity {
    pub user: String,
    pub job_ref: Option<String>,
}

impl Identity {
    /// Whether this identity planned `run` (a `GET /api/v1/runs` entry or a run record).
    pub fn planned(&self, run: &Value) -> bool {
        run["author_user"].as_str() == Some(self.user.as_str())
            && run["author_ref"].as_str() == self.job_ref.as_deref()
    }
}

/// This token's [`Identity`].
pub fn identity(c: &Client) -> anyhow::Result<Identity> {
    let me = c.get("/api/v1/whoami")?;
    let user = me["user"].as_str().filter(|u| !u.is_empty());
    let user = user
        .or(me["id"].as_str())
        .map(str::to_owned)
        .context("the server did not say who this token is")?;
    Ok(Identity {
        user,
        job_ref: me["job_ref"].as_str().map(str::to_owned),
    })
}

/// The checkout's inputs for one stack, and the stack's runs (newest first) with exactly their
/// fingerprint under this job's Terraform version: the only runs a job may report or apply as
/// this checkout's, whatever commit or change request their planner claims.
pub struct ForCheckout {
    pub files: Vec<InputFile>,
    /// `GET /api/v1/runs` entries.
    pub runs: Vec<Value>,
}

/// How many runs with the checkout's fingerprint are listed (newest first).
const SAME_INPUT_RUNS: u32 = 50;

pub fn runs_for_checkout(
    c: &Client,
    root: &Path,
    t: &Target,
    terraform_version: &str,
) -> anyhow::Result<ForCheckout> {
    let (fingerprint, files) = checkout_fingerprint(&root.join(&t.dir), terraform_version)?;
    let listed = c.get(&format!(
        "/api/v1/runs?stack={}&fingerprint={fingerprint}&limit={SAME_INPUT_RUNS}",
        query_value(&t.name)
    ))?;
    let runs = listed["runs"].as_array().cloned().unwrap_or_default();
    Ok(ForCheckout { files, runs })
}

#[cfg(test)]
mod tests {
    use super::{run_url, Identity};

    #[test]
    fn a_job_planned_only_runs_of_its_user_and_its_ref() {
        let job = |job_ref: Option<&str>| Identity {
            user: "trust_1".into(),
            job_ref: job_ref.map(str::to_owned),
        };
        let pr1 = serde_json::json!({"author_user": "trust_1", "author_ref": "refs/pull/1/merge"});
        assert!(job(Some("refs/pull/1/merge")).planned(&pr1));
        assert!(!job(Some("refs/pull/2/merge")).planned(&pr1));
        assert!(!job(None).planned(&pr1));
        let agent = serde_json::json!({"author_user": "trust_1"});
        assert!(job(None).planned(&agent));
        assert!(!job(Some("refs/pull/1/merge")).planned(&agent));
        let other = serde_json::json!({"author_user": "mallory"});
        assert!(!job(None).planned(&other));
    }

    #[test]
    fn run_urls_are_built_only_from_run_ids_and_http_servers() {
        assert_eq!(
            run_url("https://airlock.example/", "run_0a1b").as_deref(),
            Some("https://airlock.example/ui/runs/run_0a1b")
        );
        assert_eq!(run_url("https://a.example", "run_x/../../admin"), None);
        assert_eq!(run_url("https://a.example", ""), None);
        assert_eq!(run_url("file:///etc", "run_1"), None);
    }
}
