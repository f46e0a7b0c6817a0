//! The pull-request workflow end to end: real git repositories and clones, real terraform, a
//! real airlock server: `airlock ci plan` on a pull request, approval by a second person with
//! the CLI, the refresh, the merge, `airlock ci apply` of exactly the reviewed run, and a merge
//! that brings in another change refused with the re-plan message.

use std::path::PathBuf;

use serde_json::Value;

use crate::forge::ForgeStandIn;
use crate::git_repo::{
    ci, ci_env, git, json_of, resources, vars, write, Origin, FORGE_TOKEN, TWO_STACKS,
};
use crate::support::{team, text, Team};

fn run_status(t: &Team, id: &str) -> Value {
    serde_json::from_str(&t.s.ok(&t.s.admin, &["run", "show", id, "--format", "json"])).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    GitHub,
    GitLab,
}

/// The CI environment of one forge, as its runners set it, pointed at the stand-in.
struct Forge {
    kind: Kind,
    f: ForgeStandIn,
    events: tempfile::TempDir,
}

impl Forge {
    fn new(kind: Kind) -> Forge {
        Forge {
            kind,
            f: ForgeStandIn::start(FORGE_TOKEN),
            events: tempfile::tempdir().unwrap(),
        }
    }

    fn summary(&self) -> PathBuf {
        self.events.path().join("step-summary.md")
    }

    /// A pull/merge request job for change `n` with head `head` onto `base`.
    fn pull_request(&self, n: u64, head: &str, base: &str) -> Vec<(String, String)> {
        match self.kind {
            Kind::GitHub => {
                let event = self.events.path().join(format!("pr{n}.json"));
                let payload = serde_json::json!({"pull_request": {"number": n, "head": {"sha": head}, "base": {"sha": base}}});
                std::fs::write(&event, payload.to_string()).unwrap();
                vars(&[
                    ("GITHUB_ACTIONS", "true"),
                    ("GITHUB_REPOSITORY", "acme/infra"),
                    ("GITHUB_EVENT_NAME", "pull_request"),
                    ("GITHUB_EVENT_PATH", event.to_str().unwrap()),
                    ("GITHUB_SHA", "3333333333333333333333333333333333333333"),
                    ("GITHUB_REF", &format!("refs/pull/{n}/merge")),
                    ("GITHUB_API_URL", &self.f.url_github()),
                    ("GITHUB_SERVER_URL", "https://github.example"),
                    ("GITHUB_TOKEN", FORGE_TOKEN),
                    ("GITHUB_STEP_SUMMARY", self.summary().to_str().unwrap()),
                ])
            }
            Kind::GitLab => vars(&[
                ("GITLAB_CI", "true"),
                ("CI_PROJECT_ID", "42"),
                ("CI_PROJECT_URL", "https://gitlab.example/acme/infra"),
                ("CI_MERGE_REQUEST_IID", &n.to_string()),
                ("CI_COMMIT_SHA", head),
                ("CI_MERGE_REQUEST_DIFF_BASE_SHA", base),
                ("CI_API_V4_URL", &self.f.url_gitlab()),
                ("AIRLOCK_GITLAB_TOKEN", FORGE_TOKEN),
            ]),
        }
    }

    /// A push of `merge` (previous tip `before`) to the default branch.
    fn push(&self, merge: &str, before: &str) -> Vec<(String, String)> {
        match self.kind {
            Kind::GitHub => {
                let event = self.events.path().join(format!("push-{merge}.json"));
                let payload = serde_json::json!({"before": before, "after": merge, "repository": {"default_branch": "main"}});
                std::fs::write(&event, payload.to_string()).unwrap();
                vars(&[
                    ("GITHUB_ACTIONS", "true"),
                    ("GITHUB_REPOSITORY", "acme/infra"),
                    ("GITHUB_EVENT_NAME", "push"),
                    ("GITHUB_EVENT_PATH", event.to_str().unwrap()),
                    ("GITHUB_SHA", merge),
                    ("GITHUB_REF", "refs/heads/main"),
                    ("GITHUB_API_URL", &self.f.url_github()),
                    ("GITHUB_SERVER_URL", "https://github.example"),
                    ("GITHUB_TOKEN", FORGE_TOKEN),
                ])
            }
            Kind::GitLab => vars(&[
                ("GITLAB_CI", "true"),
                ("CI_PROJECT_ID", "42"),
                ("CI_PROJECT_URL", "https://gitlab.example/acme/infra"),
                ("CI_COMMIT_SHA", merge),
                ("CI_COMMIT_BEFORE_SHA", before),
                ("CI_COMMIT_BRANCH", "main"),
                ("CI_DEFAULT_BRANCH", "main"),
                ("CI_API_V4_URL", &self.f.url_gitlab()),
                ("AIRLOCK_GITLAB_TOKEN", FORGE_TOKEN),
            ]),
        }
    }

    /// The bodies of the comments (notes) on change `n`.
    fn comments(&self, n: u64) -> Vec<String> {
        let state = self.f.state();
        let (list, key) = match self.kind {
            Kind::GitHub => (&state["github"]["comments"], "issue"),
            Kind::GitLab => (&state["gitlab"]["notes"], "iid"),
        };
        list.as_array()
            .unwrap()
            .iter()
            .filter(|c| c[key].as_u64() == Some(n))
            .map(|c| c["body"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The statuses `context` of `sha`, oldest first: (state, description).
    fn statuses(&self, sha: &str, context: &str) -> Vec<(String, String)> {
        let state = self.f.state();
        let (list, name, st) = match self.kind {
            Kind::GitHub => (&state["github"]["statuses"], "context", "state"),
            Kind::GitLab => (&state["gitlab"]["statuses"], "name", "status"),
        };
        list.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["sha"] == sha && s[name] == context)
            .map(|s| {
                (
                    s[st].as_str().unwrap().to_owned(),
                    s["description"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The "Details" link of the latest status `context` of `sha`.
    fn status_url(&self, sha: &str, context: &str) -> Option<String> {
        let state = self.f.state();
        let (list, name) = match self.kind {
            Kind::GitHub => (&state["github"]["statuses"], "context"),
            Kind::GitLab => (&state["gitlab"]["statuses"], "name"),
        };
        list.as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s["sha"] == sha && s[name] == context)
            .and_then(|s| s["target_url"].as_str().map(str::to_owned))
    }

    fn failure(&self) -> &str {
        match self.kind {
            Kind::GitHub => "failure",
            Kind::GitLab => "failed",
        }
    }
}

/// The whole workflow on one forge: two stacks, a pull request that changes one, `ci plan` with
/// change detection, approval with the CLI by a second person, the job re-run, the merge and
/// `ci apply`; then a merge that brings in another change, refused.
fn pull_request_workflow(kind: Kind) {
    crate::support::terraform_bin();
    let forge = Forge::new(kind);
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    let origin = Origin::new();
    let dev = &origin.work;
    let base = git(dev, &["rev-parse", "HEAD"]);

    // A pull request that changes one stack.
    let pr_head = origin.push_change(
        "pr1",
        "stacks/app/main.tf",
        &resources(&["base", "added"]),
        "app: add a resource",
    );

    // The pull-request job: a fresh checkout, an agent-role token (plan and propose only).
    let pr = origin.checkout("ci-pr1", &pr_head);
    let env = forge.pull_request(7, &pr_head, &base);
    let out = ci_env(&t, &t.agent, &pr, &["ci", "plan", "--format", "json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json_of(&out);
    let stacks = v["stacks"].as_array().unwrap();
    assert_eq!(stacks.len(), 1, "only the changed stack: {v:#}");
    assert_eq!(stacks[0]["stack"], "app");
    assert_eq!(stacks[0]["status"], "needs_approval");
    let run = stacks[0]["run"].as_str().unwrap().to_owned();
    let shown = run_status(&t, &run);
    assert_eq!(shown["run"]["git_head"], pr_head.as_str());
    assert_eq!(shown["run"]["git_base"].as_str().map(str::len), Some(40));
    assert_eq!(shown["run"]["change_request"], 7);
    let url = match kind {
        Kind::GitHub => "https://github.example/acme/infra/pull/7",
        Kind::GitLab => "https://gitlab.example/acme/infra/-/merge_requests/7",
    };
    assert_eq!(shown["run"]["change_request_url"], url);
    let text_show = t.s.ok(&t.approver, &["run", "show", &run]);
    assert!(
        text_show.contains(&format!(
            "change request: #7 {url} (as reported by the planner)"
        )),
        "{text_show}"
    );
    let comments = forge.comments(7);
    assert_eq!(comments.len(), 1, "one comment");
    assert!(
        comments[0].starts_with("<!-- airlock:ci-plan -->"),
        "{}",
        comments[0]
    );
    let escaped_run = run.replace('_', "&#95;");
    assert!(
        comments[0].contains(&format!("airlock approve {escaped_run}")),
        "{}",
        comments[0]
    );
    // GitLab cannot move a pending status to another pending one: no "planning" there.
    let needs = ("pending".to_owned(), "needs 1 approval (0/1)".to_owned());
    let expected = match kind {
        Kind::GitHub => vec![("pending".to_owned(), "planning".to_owned()), needs],
        Kind::GitLab => vec![needs],
    };
    assert_eq!(forge.statuses(&pr_head, "airlock/app"), expected);
    assert!(forge.statuses(&pr_head, "airlock/net").is_empty());
    assert_eq!(
        forge.status_url(&pr_head, "airlock/app"),
        Some(format!("{}/ui/runs/{run}", t.s.url))
    );
    if kind == Kind::GitHub {
        let summary = std::fs::read_to_string(forge.summary()).unwrap();
        assert!(summary.contains(&escaped_run), "{summary}");
    }

    // A second person approves with the CLI; re-running the job reuses the approved run (no new
    // plan, no approval lost), updates the same comment and turns the status green.
    t.s.ok(&t.approver, &["approve", &run]);
    let out = ci_env(&t, &t.agent, &pr, &["ci", "plan", "--format", "json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v["stacks"][0]["run"], run.as_str());
    assert_eq!(
        forge.statuses(&pr_head, "airlock/app").last().unwrap().0,
        "success"
    );
    let comments = forge.comments(7);
    assert_eq!(comments.len(), 1, "updated in place");
    assert!(
        comments[0].contains("approved; applied after merge"),
        "{}",
        comments[0]
    );

    // Not before merge: ci apply in the pull request's job refuses, even with a ci token.
    let out = ci_env(&t, &t.ci, &pr, &["ci", "apply"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("runs on pushes to the default branch only"),
        "{}",
        text(&out)
    );
    assert_eq!(run_status(&t, &run)["run"]["status"], "approved");

    // Merge with the same content: ci apply applies exactly the reviewed run.
    git(dev, &["checkout", "-q", "main"]);
    git(dev, &["merge", "-q", "--no-ff", "-m", "Merge pr1", "pr1"]);
    git(dev, &["push", "-q", "origin", "main"]);
    let merge = git(dev, &["rev-parse", "HEAD"]);
    let main = origin.checkout("ci-main1", &merge);
    let env = forge.push(&merge, &base);
    let out = ci_env(&t, &t.ci, &main, &["ci", "apply", "--format", "json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v["stacks"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["stacks"][0]["run"], run.as_str(), "{v:#}");
    assert_eq!(v["stacks"][0]["ok"], true, "{v:#}");
    assert_eq!(run_status(&t, &run)["run"]["status"], "applied");
    let serials = t.s.serials("app");
    assert_eq!(serials.len(), 1, "one state version written: {serials:?}");
    assert!(t.s.serials("net").is_empty());
    let comments = forge.comments(7);
    assert_eq!(comments.len(), 1, "still one comment");
    assert!(
        comments[0].contains("### Applied (merge commit")
            && comments[0].contains(&format!(
                "✅ <code>app</code> run <code>{escaped_run}</code>: applied run"
            )),
        "{}",
        comments[0]
    );
    assert_eq!(
        forge.statuses(&merge, "airlock/app").last().unwrap().0,
        "success"
    );

    // A second pull request, planned at a first push, then pushed again: the earlier run is
    // withdrawn.
    git(dev, &["checkout", "-q", "-b", "pr2"]);
    write(
        dev,
        "stacks/app/main.tf",
        &resources(&["base", "added", "first-try"]),
    );
    git(dev, &["commit", "-q", "-am", "app: a first try"]);
    git(dev, &["push", "-q", "origin", "pr2"]);
    let first_head = git(dev, &["rev-parse", "HEAD"]);
    let first = origin.checkout("ci-pr2-first", &first_head);
    let env = forge.pull_request(8, &first_head, &merge);
    let out = ci_env(
        &t,
        &t.agent,
        &first,
        &["ci", "plan", "--format", "json"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run2_first = json_of(&out)["stacks"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();
    // Reviewed; meanwhile main gets another change to the same stack.
    write(
        dev,
        "stacks/app/main.tf",
        &resources(&["base", "added", "second"]),
    );
    git(dev, &["commit", "-q", "-am", "app: a second resource"]);
    git(dev, &["push", "-q", "origin", "pr2"]);
    let pr2_head = git(dev, &["rev-parse", "HEAD"]);
    let pr2 = origin.checkout("ci-pr2", &pr2_head);
    let env = forge.pull_request(8, &pr2_head, &merge);
    let out = ci_env(
        &t,
        &t.agent,
        &pr2,
        &["ci", "plan", "--format", "json"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run2 = json_of(&out)["stacks"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(run_status(&t, &run2_first)["run"]["status"], "withdrawn");
    t.s.ok(&t.approver, &["approve", &run2]);
    git(dev, &["checkout", "-q", "main"]);
    write(dev, "stacks/app/extra.tf", &resources(&["sneaked"]));
    git(dev, &["add", "-A"]);
    git(dev, &["commit", "-q", "-m", "main: another change"]);
    git(dev, &["merge", "-q", "--no-ff", "-m", "Merge pr2", "pr2"]);
    git(dev, &["push", "-q", "origin", "main"]);
    let merge2 = git(dev, &["rev-parse", "HEAD"]);
    let main2 = origin.checkout("ci-main2", &merge2);
    let env = forge.push(&merge2, &merge);
    let out = ci_env(&t, &t.ci, &main2, &["ci", "apply"], &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("the merge brought in other changes; re-plan")
            && said.contains("stacks/app/extra.tf")
            && said.contains(&run2),
        "{said}"
    );
    assert_eq!(run_status(&t, &run2)["run"]["status"], "approved");
    assert_eq!(t.s.serials("app"), serials, "nothing applied");
    let comments = forge.comments(8);
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].contains("❌ <code>app</code>") && comments[0].contains("re-plan"),
        "{}",
        comments[0]
    );
    assert_eq!(
        forge.statuses(&merge2, "airlock/app").last().unwrap().0,
        forge.failure()
    );
    assert_eq!(forge.comments(7).len(), 1);
    forge.f.assert_no_violations();
}

#[test]
fn a_reviewed_pull_request_is_applied_after_merge_and_a_merge_with_other_changes_is_refused_github()
{
    pull_request_workflow(Kind::GitHub);
}

#[test]
fn a_reviewed_merge_request_is_applied_after_merge_and_a_merge_with_other_changes_is_refused_gitlab(
) {
    pull_request_workflow(Kind::GitLab);
}

/// A run's commit and pull request are its planner's claims. A run planned from other content
/// that claims the pull request's head commit (an uncommitted edit keeps `HEAD`), even once
/// approved by mistake, never turns the pull request's status green and is never applied for
/// the merged code.
/// Review (session 14): the inputs do not fix a plan (variables given on the command line,
/// data sources, the planner's environment are the planner's), and `ci plan` reused the newest
/// run for the checkout's inputs whoever planned it: another agent planned the pull request's
/// own checkout its own way, and its run was reported (and approved) as the pull request's
/// plan. Now a job reports only runs its own identity planned.
#[test]
fn another_identitys_run_for_the_same_inputs_is_never_shown_as_the_pull_requests_plan() {
    crate::support::terraform_bin();
    let t = team("app");
    let origin = Origin::new();
    let head = origin.push_change(
        "pr",
        "stacks/app/main.tf",
        &resources(&["base", "added"]),
        "app: add a resource",
    );
    let mallory = t.s.token("mallory", "agent");
    let theirs = origin.checkout("mallory", &head);
    let run_of = |out: &std::process::Output| -> String {
        assert_eq!(out.status.code(), Some(0), "{}", text(out));
        json_of(out)["stacks"][0]["run"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let planned = |token: &str, dir: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["ci", "plan", "--stack", "app", "--format", "json"];
        args.extend(extra);
        run_of(&ci(&t, token, dir, &args))
    };
    // Mallory plans the pull request's exact checkout first: the same fingerprint.
    let forged = planned(&mallory, &theirs, &[]);
    let pr = origin.checkout("ci-pr", &head);
    let honest = planned(&t.agent, &pr, &[]);
    assert_ne!(honest, forged, "the pull request's job planned its own run");
    assert_eq!(
        run_status(&t, &honest)["run"]["fingerprint"],
        run_status(&t, &forged)["run"]["fingerprint"]
    );
    // A newer run of Mallory's for the same inputs, approved: still not the pull request's.
    let out = crate::support::cli_in(
        &t.s,
        &mallory,
        &theirs.join("stacks/app"),
        &["plan", ".", "--stack", "app", "--format", "json"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let newer = json_of(&out)["run"]["id"].as_str().unwrap().to_owned();
    t.s.ok(&t.approver, &["approve", &newer]);
    assert_eq!(planned(&t.agent, &pr, &["--refresh"]), honest);
    // A re-run of the pull request's job reuses its own run.
    assert_eq!(planned(&t.agent, &pr, &[]), honest);
}

#[test]
fn a_run_claiming_the_pull_requests_commit_counts_only_if_its_inputs_are_the_checkouts() {
    crate::support::terraform_bin();
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    let origin = Origin::new();
    let dev = &origin.work;
    let head = origin.push_change(
        "pr",
        "stacks/app/main.tf",
        &resources(&["base", "added"]),
        "app: add a resource",
    );
    let pr = origin.checkout("ci-pr", &head);
    let out = ci(
        &t,
        &t.agent,
        &pr,
        &["ci", "plan", "--stack", "app", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let honest = json_of(&out)["stacks"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();

    // Another agent plans other content at the same commit (HEAD unchanged).
    let mallory = t.s.token("mallory", "agent");
    let evil = origin.checkout("evil", &head);
    write(
        &evil,
        "stacks/app/main.tf",
        &resources(&["base", "added", "backdoor"]),
    );
    let out = ci(
        &t,
        &mallory,
        &evil,
        &["ci", "plan", "--stack", "app", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let forged = json_of(&out)["stacks"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(run_status(&t, &forged)["run"]["git_head"], head.as_str());
    t.s.ok(&t.approver, &["approve", &forged]);

    // The refresh in the pull request's checkout reports the run for its inputs, not the newer
    // approved one.
    let out = ci(
        &t,
        &t.agent,
        &pr,
        &[
            "ci",
            "plan",
            "--refresh",
            "--stack",
            "app",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v["stacks"][0]["run"], honest.as_str(), "{v:#}");
    assert_eq!(v["stacks"][0]["commit_status"], "pending", "{v:#}");
    // When no run is for the checkout's inputs (here the checkout moved on), none counts.
    write(
        &pr,
        "stacks/app/main.tf",
        &resources(&["base", "added", "moved"]),
    );
    let out = ci(
        &t,
        &t.agent,
        &pr,
        &[
            "ci",
            "plan",
            "--refresh",
            "--stack",
            "app",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v["stacks"][0]["commit_status"], "error", "{v:#}");
    assert!(
        v["stacks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no run of stack app for this checkout's inputs"),
        "{v:#}"
    );
    git(&pr, &["checkout", "--", "stacks/app/main.tf"]);

    // After merge, only the run for the merged inputs counts: it is not approved, so nothing
    // is applied, and the approved forged run is not touched.
    git(dev, &["checkout", "-q", "main"]);
    git(dev, &["merge", "-q", "--no-ff", "-m", "Merge pr", "pr"]);
    git(dev, &["push", "-q", "origin", "main"]);
    let main = origin.checkout("ci-main", &git(dev, &["rev-parse", "HEAD"]));
    let out = ci(&t, &t.ci, &main, &["ci", "apply", "--stack", "app"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "run {honest} for these inputs is not approved yet"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(run_status(&t, &forged)["run"]["status"], "approved");
    assert!(t.s.serials("app").is_empty(), "nothing applied");
}

/// The forge refusing every request (a token without the workflow's permissions) neither hides
/// the plan's result nor changes the exit code: the job says what to fix.
#[test]
fn forge_refusals_are_warnings_naming_the_fix_and_never_change_the_outcome() {
    crate::support::terraform_bin();
    let forge = Forge::new(Kind::GitHub);
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    let origin = Origin::new();
    let dev = &origin.work;
    let base = git(dev, &["rev-parse", "HEAD"]);
    let head = origin.push_change(
        "pr",
        "stacks/net/main.tf",
        &resources(&["base", "added"]),
        "net: add a resource",
    );
    let pr = origin.checkout("ci-pr", &head);
    forge.f.fail_next("GET", ".*", 100, 403, &[]);
    forge.f.fail_next("POST", ".*", 100, 403, &[]);
    let env = forge.pull_request(3, &head, &base);
    let out = ci_env(&t, &t.agent, &pr, &["ci", "plan"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("net: needs 1 approval"), "{said}");
    assert!(
        said.contains("warning: could not set the status airlock/net")
            && said.contains("warning: could not post the comment on #3")
            && said.contains("permission"),
        "{said}"
    );
    assert!(forge.comments(3).is_empty());
}

/// `destroy = true` on a stack block plans that stack with `-destroy` (judged and confirmed like
/// any destroy); a deleted stack directory is reported prominently and never planned.
#[test]
fn a_declared_removal_plans_a_destroy_and_a_deleted_directory_is_reported_not_destroyed() {
    crate::support::terraform_bin();
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    let origin = Origin::new();
    let dev = &origin.work;

    // net gets state: a reviewed change, merged and applied.
    git(dev, &["checkout", "-q", "-b", "net1"]);
    write(dev, "stacks/net/main.tf", &resources(&["base", "added"]));
    git(dev, &["commit", "-q", "-am", "net: add"]);
    git(dev, &["push", "-q", "origin", "net1"]);
    let pr = origin.checkout("ci-net1", &git(dev, &["rev-parse", "HEAD"]));
    let out = ci(
        &t,
        &t.agent,
        &pr,
        &["ci", "plan", "--base", "main", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = json_of(&out)["stacks"][0]["run"]
        .as_str()
        .unwrap()
        .to_owned();
    t.s.ok(&t.approver, &["approve", &run]);
    git(dev, &["checkout", "-q", "main"]);
    git(dev, &["merge", "-q", "--no-ff", "-m", "Merge net1", "net1"]);
    git(dev, &["push", "-q", "origin", "main"]);
    let main = origin.checkout("ci-main1", &git(dev, &["rev-parse", "HEAD"]));
    let out = ci(&t, &t.ci, &main, &["ci", "apply"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Declaring net's removal plans its destruction.
    git(dev, &["checkout", "-q", "-b", "retire"]);
    write(
        dev,
        "airlock.hcl",
        &TWO_STACKS.replace(
            "dir = \"stacks/net\"\n",
            "dir = \"stacks/net\"\n  destroy = true\n",
        ),
    );
    git(dev, &["commit", "-q", "-am", "retire net"]);
    git(dev, &["push", "-q", "origin", "retire"]);
    let pr = origin.checkout("ci-retire", &git(dev, &["rev-parse", "HEAD"]));
    let out = ci(
        &t,
        &t.agent,
        &pr,
        &["ci", "plan", "--base", "main", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json_of(&out);
    let names: Vec<&str> = v["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stack"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["net"], "{v:#}");
    let destroy = v["stacks"][0]["run"].as_str().unwrap().to_owned();
    let shown = run_status(&t, &destroy);
    assert_eq!(
        shown["run"]["destroys"].as_array().unwrap().len(),
        2,
        "{shown:#}"
    );
    assert!(
        v["comment"]
            .as_str()
            .unwrap()
            .contains("--confirm-destroy 2"),
        "{v:#}"
    );

    // Deleting a stack's directory (without a declaration) is reported, and nothing is planned.
    git(dev, &["checkout", "-q", "main"]);
    git(dev, &["checkout", "-q", "-b", "drop-app"]);
    git(dev, &["rm", "-q", "-r", "stacks/app"]);
    git(dev, &["commit", "-q", "-m", "drop app"]);
    git(dev, &["push", "-q", "origin", "drop-app"]);
    let pr = origin.checkout("ci-drop", &git(dev, &["rev-parse", "HEAD"]));
    let out = ci(&t, &t.agent, &pr, &["ci", "plan", "--base", "main"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("**This removes stack <code>app</code>**")
            && said.contains("nothing is destroyed"),
        "{said}"
    );
    let runs =
        t.s.ok(&t.s.admin, &["runs", "--stack", "app", "--format", "json"]);
    let runs: Value = serde_json::from_str(&runs).unwrap();
    assert!(runs["runs"].as_array().unwrap().is_empty(), "never planned");
}

/// A real plan of 5,000 changes with hostile `for_each` keys: the posted comment fits GitHub's
/// limit with a note saying what was left out, and the keys are inert.
#[test]
fn a_5000_change_plan_with_hostile_keys_posts_a_comment_that_fits_and_is_inert() {
    crate::support::terraform_bin();
    let forge = Forge::new(Kind::GitHub);
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    let origin = Origin::new();
    let dev = &origin.work;
    let base = git(dev, &["rev-parse", "HEAD"]);
    git(dev, &["checkout", "-q", "-b", "big"]);
    write(
        dev,
        "stacks/app/main.tf",
        r##"resource "terraform_data" "many" {
  count = 5000
  input = count.index
}

resource "terraform_data" "evil" {
  for_each = toset(["</details><!--", "@admin", "`rm -rf`", "[x](https://e.example)", "#1 | *b*"])
  input    = each.key
}
"##,
    );
    git(dev, &["commit", "-q", "-am", "app: many"]);
    git(dev, &["push", "-q", "origin", "big"]);
    let head = git(dev, &["rev-parse", "HEAD"]);
    let pr = origin.checkout("ci-big", &head);
    let env = forge.pull_request(9, &head, &base);
    let out = ci_env(&t, &t.agent, &pr, &["ci", "plan"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let comments = forge.comments(9);
    assert_eq!(comments.len(), 1);
    let body = &comments[0];
    let n = body.chars().count();
    assert!(n <= 65_536, "{n} characters");
    assert!(
        body.contains("line(s) left out (the comment would exceed 65536 characters)")
            && body.contains("/ui/runs/run&#95;"),
        "{body}"
    );
    assert!(body.contains("@\u{2060}admin"));
    for bad in ["@admin", "</details><!--", "`rm -rf`", "[x](", "| *b*"] {
        assert!(!body.contains(bad), "{bad:?} survived");
    }
    assert_eq!(
        body.matches("<details>").count(),
        body.matches("</details>").count()
    );
    forge.f.assert_no_violations();
}

/// `ci apply` goes in dependency order and never applies a stack after one it depends on was
/// not applied.
#[test]
fn a_stack_is_not_applied_when_one_it_depends_on_was_not() {
    crate::support::terraform_bin();
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    let origin = Origin::new();
    let dev = &origin.work;
    write(
        dev,
        "airlock.hcl",
        &TWO_STACKS.replace(
            "dir = \"stacks/app\"\n",
            "dir = \"stacks/app\"\n  depends_on = [\"net\"]\n",
        ),
    );
    git(dev, &["commit", "-q", "-am", "app depends on net"]);
    git(dev, &["push", "-q", "origin", "main"]);
    git(dev, &["checkout", "-q", "-b", "both"]);
    for stack in ["app", "net"] {
        write(
            dev,
            &format!("stacks/{stack}/main.tf"),
            &resources(&["base", "more"]),
        );
    }
    git(dev, &["commit", "-q", "-am", "change both"]);
    git(dev, &["push", "-q", "origin", "both"]);
    let pr = origin.checkout("ci-both", &git(dev, &["rev-parse", "HEAD"]));
    let out = ci(
        &t,
        &t.agent,
        &pr,
        &["ci", "plan", "--base", "main", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v = json_of(&out);
    let order: Vec<&str> = v["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stack"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["net", "app"], "dependency order");
    // Only app is approved.
    t.s.ok(
        &t.approver,
        &["approve", v["stacks"][1]["run"].as_str().unwrap()],
    );
    git(dev, &["checkout", "-q", "main"]);
    git(dev, &["merge", "-q", "--no-ff", "-m", "Merge both", "both"]);
    git(dev, &["push", "-q", "origin", "main"]);
    let main = origin.checkout("ci-main", &git(dev, &["rev-parse", "HEAD"]));
    let out = ci(&t, &t.ci, &main, &["ci", "apply"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("net: NOT APPLIED: run")
            && said.contains("is not approved yet")
            && said.contains("app: NOT APPLIED: it depends on net, which was not applied"),
        "{said}"
    );
    assert!(t.s.serials("app").is_empty() && t.s.serials("net").is_empty());
}
