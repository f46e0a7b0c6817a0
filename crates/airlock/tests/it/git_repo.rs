//! Shared helpers for tests on real git repositories and `airlock ci`: git with a fixed identity
//! and no user config, files in a work tree, a bare origin with two stacks, and `airlock ci` run
//! with the host's own CI variables blanked.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::support::{cli_in, text, Team};

/// The token the forge stand-in accepts, as a CI job's forge token.
pub const FORGE_TOKEN: &str = "forge-ci-token";

/// `git ARGS` in `dir` with a fixed identity and no global, system or user config (HOME is
/// `dir`, stdin closed); fails the test unless git succeeds and returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .output()
        .expect("running git");
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Writes `content` to `dir/path`, creating its parent directories.
pub fn write(dir: &Path, path: &str, content: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Terraform configuration of one `terraform_data` resource per name (its input is its name).
pub fn resources(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("resource \"terraform_data\" \"{n}\" {{\n  input = \"{n}\"\n}}\n"))
        .collect()
}

/// `airlock.hcl` declaring two stacks, `app` and `net`, in `stacks/app` and `stacks/net`.
pub const TWO_STACKS: &str =
    "stack \"app\" {\n  dir = \"stacks/app\"\n}\n\nstack \"net\" {\n  dir = \"stacks/net\"\n}\n";

/// A bare "origin" with two stacks on `main`, as a forge would hold it, and a developer clone
/// (`work`) that pushes to it; [`Origin::checkout`] makes fresh CI checkouts.
pub struct Origin {
    tmp: tempfile::TempDir,
    pub bare: PathBuf,
    pub work: PathBuf,
}

impl Origin {
    pub fn new() -> Origin {
        let tmp = tempfile::tempdir().unwrap();
        let bare = tmp.path().join("origin.git");
        let work = tmp.path().join("dev");
        std::fs::create_dir_all(&work).unwrap();
        git(
            tmp.path(),
            &["init", "-q", "--bare", "-b", "main", "origin.git"],
        );
        git(&work, &["init", "-q", "-b", "main"]);
        write(&work, "airlock.hcl", TWO_STACKS);
        write(&work, ".gitignore", ".terraform/\n");
        for stack in ["app", "net"] {
            write(
                &work,
                &format!("stacks/{stack}/backend.tf"),
                "terraform {\n  backend \"http\" {}\n}\n",
            );
            write(
                &work,
                &format!("stacks/{stack}/main.tf"),
                &resources(&["base"]),
            );
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "two stacks"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        git(&work, &["push", "-q", "origin", "main"]);
        Origin { tmp, bare, work }
    }

    /// On a new branch `branch` of the developer clone, writes `content` to `path`, commits it
    /// with `message` and pushes the branch; returns the new head commit.
    pub fn push_change(&self, branch: &str, path: &str, content: &str, message: &str) -> String {
        let dev = &self.work;
        git(dev, &["checkout", "-q", "-b", branch]);
        write(dev, path, content);
        git(dev, &["commit", "-q", "-am", message]);
        git(dev, &["push", "-q", "origin", branch]);
        git(dev, &["rev-parse", "HEAD"])
    }

    /// A fresh clone named `name` at `rev`, as a CI job checks out.
    pub fn checkout(&self, name: &str, rev: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        git(
            self.tmp.path(),
            &["clone", "-q", self.bare.to_str().unwrap(), name],
        );
        git(&dir, &["checkout", "-q", rev]);
        dir
    }
}

/// Owned environment pairs from borrowed ones.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `airlock ci ...` outside any CI (whatever the test runner's environment says).
pub fn ci(t: &Team, token: &str, dir: &Path, args: &[&str]) -> Output {
    ci_env(t, token, dir, args, &[])
}

/// `airlock ci ...` with `env` on top of a blanked CI environment: the host's own
/// GITHUB_ACTIONS/GITLAB_CI/GITHUB_STEP_SUMMARY, and who started the host's job
/// (GITHUB_ACTOR/GITLAB_USER_LOGIN), who is no pull request author here.
pub fn ci_env(
    t: &Team,
    token: &str,
    dir: &Path,
    args: &[&str],
    env: &[(String, String)],
) -> Output {
    let mut all: Vec<(&str, &str)> = vec![
        ("GITHUB_ACTIONS", ""),
        ("GITLAB_CI", ""),
        ("GITHUB_STEP_SUMMARY", ""),
        ("GITHUB_ACTOR", ""),
        ("GITLAB_USER_LOGIN", ""),
    ];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cli_in(&t.s, token, dir, args, &all)
}

/// The JSON on `out`'s stdout; fails the test with the output when it is not JSON.
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(out)))
}
