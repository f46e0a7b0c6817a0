//! `airlock ci init github|gitlab`: writes the CI workflow of the pull-request workflow into a
//! repository: on pull/merge requests `airlock ci plan`, on pushes to the default branch
//! `airlock ci apply`, with the least CI permissions, the whole history (change detection needs
//! the merge base), terraform from the usual setup, and the airlock binary downloaded from a
//! URL the team hosts and checked against its SHA-256 (airlock publishes no release binaries).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_core::inputs::CONFIG_PATH;
use airlock_runner::git;
use anyhow::{bail, Context};

use crate::cli::{CiInitArgs, Forge};

/// The Terraform version the workflows install. Plan and apply must use the same one: the
/// run's fingerprint covers it.
const TERRAFORM_VERSION: &str = "1.11.4";

const GITHUB_WORKFLOW: &str = r#"# Written by `airlock ci init github` (airlock @VERSION@). Plans every stack a pull request
# affects (`airlock ci plan`: governed runs, one review comment, a commit status per stack) and,
# after merge, applies exactly the reviewed and approved plans (`airlock ci apply`).
#
# No airlock token is stored here: each job logs in with its own OIDC ID token
# (`airlock login --oidc`). Set up once, on the airlock server (admin; it needs --public-url):
#   ids="--repository-id $(gh api repos/OWNER/REPO --jq .id) --owner-id $(gh api repos/OWNER/REPO --jq .owner.id)"
#   airlock trust add github --repository OWNER/REPO $ids --role agent
#   airlock trust add github --repository OWNER/REPO $ids --ref refs/heads/@BRANCH@ \
#     --environment airlock-apply --role ci
# (the ids pin the trust to this repository: one re-created at the same path is not trusted)
# (a pull request's job gets at most agent: it plans; only @BRANCH@ in the environment applies),
# and in GitHub (Settings -> Secrets and variables -> Actions, and Settings -> Environments):
#   secret   AIRLOCK_URL       the airlock server, e.g. https://airlock.example.com
#   environment airlock-apply  with a deployment branch rule allowing only @BRANCH@
#   variable AIRLOCK_BINARY_URL     an https URL of the airlock binary (Linux x86_64) you host
#   variable AIRLOCK_BINARY_SHA256  its SHA-256 (sha256sum airlock): any other binary is refused
# Branch protection can then require the `airlock/STACK` statuses before merge.
name: airlock

on:
  pull_request:
  push:
    branches: [@BRANCH@]

# The least the jobs need: read the code, comment on the pull request, set commit statuses.
permissions:
  contents: read
  pull-requests: write
  statuses: write

env:
  CHECKPOINT_DISABLE: "1"
  # Plan and apply must use the same Terraform: a run's fingerprint covers the version.
  TERRAFORM_VERSION: "@TERRAFORM@"
@DEFAULTS@
jobs:
  plan:
    if: github.event_name == 'pull_request'
    runs-on: ubuntu-latest
    permissions:
      contents: read
      pull-requests: write
      statuses: write
      id-token: write # the job's OIDC ID token, exchanged for a short-lived airlock token
    concurrency:
      group: airlock-plan-${{ github.event.pull_request.number }}
      cancel-in-progress: false
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0 # change detection needs the merge base with the target branch
      - uses: hashicorp/setup-terraform@v3
        with:
          terraform_version: ${{ env.TERRAFORM_VERSION }}
          terraform_wrapper: false
      - name: Install airlock
        env:
          AIRLOCK_BINARY_URL: ${{ vars.AIRLOCK_BINARY_URL }}
          AIRLOCK_BINARY_SHA256: ${{ vars.AIRLOCK_BINARY_SHA256 }}
        run: |
          mkdir -p "$RUNNER_TEMP/airlock-bin"
          curl -fsSL --proto '=https' -o "$RUNNER_TEMP/airlock-bin/airlock" "$AIRLOCK_BINARY_URL"
          echo "$AIRLOCK_BINARY_SHA256  $RUNNER_TEMP/airlock-bin/airlock" | sha256sum -c -
          chmod 0755 "$RUNNER_TEMP/airlock-bin/airlock"
          echo "$RUNNER_TEMP/airlock-bin" >> "$GITHUB_PATH"
      - name: Log in to airlock with the job's OIDC token
        env:
          AIRLOCK_URL: ${{ secrets.AIRLOCK_URL }}
        run: airlock login --oidc --role agent --github-env
      - name: Plan the affected stacks
        env:
          AIRLOCK_URL: ${{ secrets.AIRLOCK_URL }}
          GITHUB_TOKEN: ${{ github.token }}
        run: airlock ci plan

  apply:
    if: github.event_name == 'push'
    runs-on: ubuntu-latest
    environment: airlock-apply
    permissions:
      contents: read
      pull-requests: write
      statuses: write
      id-token: write
    concurrency:
      group: airlock-apply
      cancel-in-progress: false
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0
      - uses: hashicorp/setup-terraform@v3
        with:
          terraform_version: ${{ env.TERRAFORM_VERSION }}
          terraform_wrapper: false
      - name: Install airlock
        env:
          AIRLOCK_BINARY_URL: ${{ vars.AIRLOCK_BINARY_URL }}
          AIRLOCK_BINARY_SHA256: ${{ vars.AIRLOCK_BINARY_SHA256 }}
        run: |
          mkdir -p "$RUNNER_TEMP/airlock-bin"
          curl -fsSL --proto '=https' -o "$RUNNER_TEMP/airlock-bin/airlock" "$AIRLOCK_BINARY_URL"
          echo "$AIRLOCK_BINARY_SHA256  $RUNNER_TEMP/airlock-bin/airlock" | sha256sum -c -
          chmod 0755 "$RUNNER_TEMP/airlock-bin/airlock"
          echo "$RUNNER_TEMP/airlock-bin" >> "$GITHUB_PATH"
      - name: Log in to airlock with the job's OIDC token
        env:
          AIRLOCK_URL: ${{ secrets.AIRLOCK_URL }}
        run: airlock login --oidc --role ci --github-env
      - name: Apply the reviewed plans
        env:
          AIRLOCK_URL: ${{ secrets.AIRLOCK_URL }}
          GITHUB_TOKEN: ${{ github.token }}
        run: airlock ci apply
"#;

const GITLAB_INCLUDE: &str = r#"# Written by `airlock ci init gitlab` (airlock @VERSION@). Plans every stack a merge request
# affects (`airlock ci plan`: governed runs, one review note, a commit status per stack) and,
# after merge, applies exactly the reviewed and approved plans (`airlock ci apply`).
# Include it from .gitlab-ci.yml:
#   include:
#     - local: @INCLUDE@
#
# Set up once (Settings -> CI/CD -> Variables; mask the tokens):
#   AIRLOCK_URL            the airlock server, e.g. https://airlock.example.com (its --public-url)
#   AIRLOCK_GITLAB_TOKEN   a project access token (scope api, role Developer) to post the merge
#                          request note and commit statuses: CI_JOB_TOKEN cannot post notes
#   AIRLOCK_BINARY_URL     an https URL of the airlock binary you host; the image below is
#                          Alpine, so a static build (x86_64-unknown-linux-musl)
#   AIRLOCK_BINARY_SHA256  its SHA-256 (sha256sum airlock): any other binary is refused
# No airlock token is stored: each job logs in with its OIDC ID token (`id_tokens:` below,
# `airlock login --oidc`). On the airlock server (admin), trust the project once:
#   airlock trust add gitlab --repository GROUP/PROJECT --repository-id PROJECT_ID \
#     --owner-id NAMESPACE_ID --role agent
#   airlock trust add gitlab --repository GROUP/PROJECT --repository-id PROJECT_ID \
#     --owner-id NAMESPACE_ID --ref refs/heads/DEFAULT_BRANCH --role ci
# (the project's and its namespace's numeric ids, Settings -> General: they pin the trust to
# this project, so one re-created at the same path is not trusted)
# (a merge request's pipeline gets at most agent: it plans; only the default branch applies).

.airlock:
  image:
    # Plan and apply must use the same Terraform: a run's fingerprint covers the version.
    name: hashicorp/terraform:@TERRAFORM@
    entrypoint: [""]
  id_tokens:
    AIRLOCK_ID_TOKEN:
      aud: $AIRLOCK_URL
  variables:
    GIT_DEPTH: "0" # change detection needs the merge base with the target branch
    CHECKPOINT_DISABLE: "1"
  before_script:
    - wget -q -O /usr/local/bin/airlock "$AIRLOCK_BINARY_URL"
    - echo "$AIRLOCK_BINARY_SHA256  /usr/local/bin/airlock" | sha256sum -c -
    - chmod 0755 /usr/local/bin/airlock
@CD@
airlock-plan:
  extends: .airlock
  stage: test
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
  script:
    - export AIRLOCK_TOKEN="$(airlock login --oidc --role agent)"
    - airlock ci plan

airlock-apply:
  extends: .airlock
  stage: deploy
  resource_group: airlock-apply
  rules:
    - if: $CI_PIPELINE_SOURCE == "push" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
  script:
    - export AIRLOCK_TOKEN="$(airlock login --oidc --role ci)"
    - airlock ci apply
"#;

/// Where the GitLab include file goes, relative to the git root.
const GITLAB_INCLUDE_PATH: &str = ".gitlab/airlock.yml";

/// The branch whose pushes apply: the remote's default branch, else `main`.
fn default_branch(top: &Path) -> String {
    git::run(
        top,
        &["symbolic-ref", "--short", "-q", "refs/remotes/origin/HEAD"],
    )
    .ok()
    .map(|o| String::from_utf8_lossy(&o).trim().to_owned())
    .and_then(|r| r.strip_prefix("origin/").map(str::to_owned))
    .filter(|b| !b.is_empty())
    .unwrap_or_else(|| "main".into())
}

/// A branch name safe to write into YAML unquoted and into a git ref.
fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 200
        && !b.starts_with(['-', '/', '.'])
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'))
}

/// The files to write: (path, content).
fn files(
    forge: Forge,
    top: &Path,
    sub: &str,
    branch: &str,
) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let fill = |t: &str| {
        t.replace("@VERSION@", env!("CARGO_PKG_VERSION"))
            .replace("@TERRAFORM@", TERRAFORM_VERSION)
            .replace("@BRANCH@", branch)
            .replace("@INCLUDE@", GITLAB_INCLUDE_PATH)
    };
    Ok(match forge {
        Forge::Github => {
            let defaults = if sub.is_empty() {
                String::new()
            } else {
                format!(
                    "\n# airlock.hcl is in {sub}: airlock runs there.\ndefaults:\n  run:\n    \
                     working-directory: {sub}\n"
                )
            };
            vec![(
                top.join(".github/workflows/airlock.yml"),
                fill(GITHUB_WORKFLOW).replace("@DEFAULTS@", &defaults),
            )]
        }
        Forge::Gitlab => {
            let cd = if sub.is_empty() {
                String::new()
            } else {
                format!("    - cd {sub} # airlock.hcl is there\n")
            };
            let mut out = vec![(
                top.join(GITLAB_INCLUDE_PATH),
                fill(GITLAB_INCLUDE).replace("@CD@\n", &cd),
            )];
            let main = top.join(".gitlab-ci.yml");
            if !main.exists() {
                out.push((
                    main,
                    format!(
                        "# Written by `airlock ci init gitlab`.\ninclude:\n  - local: \
                         {GITLAB_INCLUDE_PATH}\n"
                    ),
                ));
            }
            out
        }
    })
}

/// Runs `airlock ci init`.
pub fn run(args: CiInitArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("{} is not a directory", args.dir.display()))?;
    let top = git::run(&dir, &["rev-parse", "--show-toplevel"])
        .map_err(|e| anyhow::anyhow!("{} is not in a git repository ({}): run `git init` first, or pass --dir with the repository", dir.display(), e.detail))?;
    let top = PathBuf::from(String::from_utf8_lossy(&top).trim())
        .canonicalize()
        .context("the repository's top directory")?;
    let sub = dir
        .strip_prefix(&top)
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .unwrap_or_default();
    if !sub
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'))
    {
        bail!("the directory {sub:?} inside the repository has characters the workflow cannot quote safely; rename it or run airlock from the repository root");
    }
    let branch = match args.default_branch {
        Some(b) => b,
        None => default_branch(&top),
    };
    if !valid_branch(&branch) {
        bail!("--default-branch {branch:?} is not a plain branch name ([A-Za-z0-9._/-])");
    }
    let files = files(args.forge, &top, &sub, &branch)?;
    let existing: Vec<String> = files
        .iter()
        .filter(|(p, _)| p.exists())
        .map(|(p, _)| p.display().to_string())
        .collect();
    if !existing.is_empty() && !args.force {
        bail!(
            "{} already exist(s); nothing was written. Pass --force to overwrite",
            existing.join(", ")
        );
    }
    for (path, content) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if !dir.join(CONFIG_PATH).is_file() {
        println!(
            "note: {} has no {CONFIG_PATH} yet: add one with a stack block per stack \
             (docs/airlock-hcl.md); airlock ci finds stacks there",
            dir.display()
        );
    }
    match args.forge {
        Forge::Github => println!(
            "next: trust this repository's jobs on the airlock server (airlock trust add github \
             --repository-id ... --owner-id ...: an agent trust, and a ci trust for refs/heads/{branch} in the environment \
             airlock-apply), create the secret AIRLOCK_URL, the environment airlock-apply \
             restricted to {branch}, and the variables AIRLOCK_BINARY_URL and \
             AIRLOCK_BINARY_SHA256; see the comment at the top of the workflow"
        ),
        Forge::Gitlab => {
            if !files.iter().any(|(p, _)| p.ends_with(".gitlab-ci.yml")) {
                println!(
                    "next: add to .gitlab-ci.yml:\n  include:\n    - local: \
                     {GITLAB_INCLUDE_PATH}\n(it uses the stages test and deploy)"
                );
            }
            println!(
                "next: trust this project's jobs on the airlock server (airlock trust add gitlab \
                 --repository-id ... --owner-id ...: an agent trust, and a ci trust for the default branch), create the CI/CD \
                 variables AIRLOCK_URL, AIRLOCK_GITLAB_TOKEN (project access token, api), \
                 AIRLOCK_BINARY_URL and AIRLOCK_BINARY_SHA256; see the comment at the top of \
                 {GITLAB_INCLUDE_PATH}"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
