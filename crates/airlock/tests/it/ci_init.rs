//! `airlock ci init github|gitlab`: the files it writes, validated by GitHub's own workflow
//! parser (`@actions/workflow-parser`, installed by scripts/test-deps.sh) and read back as YAML;
//! it never overwrites without `--force`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::git_repo::git;
use crate::support::{text, AIRLOCK};

/// Loads the parser's JSON schema files (it imports them without an import attribute, as
/// bundlers allow and Node does not).
const HOOKS: &str = r#"export async function load(url, context, next) {
  if (url.endsWith(".json")) return next(url, { ...context, importAttributes: { type: "json" } });
  return next(url, context);
}
"#;

/// Prints `{"errors": [...], "doc": <the YAML as JSON>}` for the file in argv[2]; argv[3] is
/// `github` (validate with GitHub's workflow parser) or `yaml` (parse only).
const CHECK: &str = r#"import { register } from "node:module";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
register(pathToFileURL(process.env.HOOKS).href);
const nm = process.env.AIRLOCK_TEST_NODE_MODULES;
const YAML = (await import(pathToFileURL(`${nm}/yaml/dist/index.js`).href)).default;
const content = readFileSync(process.argv[2], "utf8");
let errors = [];
if (process.argv[3] === "github") {
  const wp = await import(pathToFileURL(`${nm}/@actions/workflow-parser/dist/index.js`).href);
  const parsed = wp.parseWorkflow({ name: "airlock.yml", content }, new wp.NoOperationTraceWriter());
  errors = parsed.context.errors.getErrors().map((e) => e.message);
  if (errors.length === 0) {
    const t = await wp.convertWorkflowTemplate(parsed.context, parsed.value);
    errors = (t.errors ?? []).map((e) => e.Message ?? String(e));
  }
}
console.log(JSON.stringify({ errors, doc: YAML.parse(content) }));
"#;

fn node_modules() -> String {
    std::env::var("AIRLOCK_TEST_NODE_MODULES").expect(
        "AIRLOCK_TEST_NODE_MODULES is not set: run `. scripts/test-deps.sh` (it installs \
         @actions/workflow-parser) or scripts/test.sh",
    )
}

/// Validates `file` (`github`: with GitHub's parser; `yaml`: YAML only); returns the YAML as
/// JSON after asserting there is no error.
fn check(file: &Path, kind: &str) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("hooks.mjs"), HOOKS).unwrap();
    std::fs::write(tmp.path().join("check.mjs"), CHECK).unwrap();
    let out = Command::new("node")
        .arg(tmp.path().join("check.mjs"))
        .arg(file)
        .arg(kind)
        .env("AIRLOCK_TEST_NODE_MODULES", node_modules())
        .env("HOOKS", tmp.path().join("hooks.mjs"))
        .stdin(Stdio::null())
        .output()
        .expect("node runs");
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], json!([]), "{}", file.display());
    v["doc"].clone()
}

fn init(dir: &Path, args: &[&str]) -> Output {
    Command::new(AIRLOCK)
        .args(["ci", "init"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn repo() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("repo");
    std::fs::create_dir(&path).unwrap();
    git(&path, &["init", "-q", "-b", "main"]);
    std::fs::write(path.join("airlock.hcl"), "").unwrap();
    (tmp, path)
}

#[test]
fn github_workflow_is_valid_and_least_privilege() {
    let (_tmp, path) = repo();
    let out = init(&path, &["github"]);
    assert!(out.status.success(), "{}", text(&out));
    let file = path.join(".github/workflows/airlock.yml");
    assert!(text(&out).contains(&format!("wrote {}", file.display())));
    let doc = check(&file, "github");
    assert_eq!(
        doc["on"],
        json!({"pull_request": null, "push": {"branches": ["main"]}})
    );
    assert_eq!(
        doc["permissions"],
        json!({"contents": "read", "pull-requests": "write", "statuses": "write"})
    );
    let plan = &doc["jobs"]["plan"];
    let apply = &doc["jobs"]["apply"];
    assert_eq!(plan["if"], "github.event_name == 'pull_request'");
    assert_eq!(apply["if"], "github.event_name == 'push'");
    assert_eq!(apply["environment"], "airlock-apply");
    for (job, command, role) in [
        (plan, "airlock ci plan", "agent"),
        (apply, "airlock ci apply", "ci"),
    ] {
        // No stored airlock token: the job's OIDC ID token, exchanged for one (issue 15).
        assert_eq!(
            job["permissions"],
            json!({"contents": "read", "pull-requests": "write", "statuses": "write", "id-token": "write"})
        );
        let steps = job["steps"].as_array().unwrap();
        assert_eq!(steps[0]["uses"], "actions/checkout@v4");
        assert_eq!(steps[0]["with"]["fetch-depth"], 0);
        assert_eq!(steps[1]["uses"], "hashicorp/setup-terraform@v3");
        assert_eq!(steps[1]["with"]["terraform_wrapper"], false);
        assert!(steps[2]["run"].as_str().unwrap().contains("sha256sum -c -"));
        let login = &steps[steps.len() - 2];
        assert_eq!(
            login["run"],
            format!("airlock login --oidc --role {role} --github-env")
        );
        assert_eq!(login["env"]["AIRLOCK_URL"], "${{ secrets.AIRLOCK_URL }}");
        let last = steps.last().unwrap();
        assert_eq!(last["run"], command);
        assert!(last["env"].get("AIRLOCK_TOKEN").is_none());
        assert!(!doc.to_string().contains("secrets.AIRLOCK_TOKEN"));
        assert_eq!(last["env"]["AIRLOCK_URL"], "${{ secrets.AIRLOCK_URL }}");
        assert_eq!(last["env"]["GITHUB_TOKEN"], "${{ github.token }}");
    }
    assert!(doc.get("defaults").is_none());

    // Never overwrites without --force; nothing is written then.
    std::fs::write(&file, "# mine\n").unwrap();
    let out = init(&path, &["github"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("already exist(s); nothing was written. Pass --force to overwrite"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# mine\n");
    let out = init(&path, &["github", "--force", "--default-branch", "trunk"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc = check(&file, "github");
    assert_eq!(doc["on"]["push"]["branches"], json!(["trunk"]));

    // A branch name that would inject YAML is refused.
    let out = init(
        &path,
        &["github", "--force", "--default-branch", "main]\n  x: [y"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is not a plain branch name"));
}

#[test]
fn github_workflow_runs_where_airlock_hcl_is_and_follows_the_default_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = tmp.path().join("origin");
    std::fs::create_dir(&origin).unwrap();
    git(&origin, &["init", "-q", "-b", "trunk"]);
    std::fs::create_dir(origin.join("infra")).unwrap();
    std::fs::write(origin.join("infra/airlock.hcl"), "").unwrap();
    git(&origin, &["add", "-A"]);
    git(
        &origin,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-qm",
            "x",
        ],
    );
    git(
        tmp.path(),
        &["clone", "-q", origin.to_str().unwrap(), "clone"],
    );
    let clone = tmp.path().join("clone");
    let out = init(&clone.join("infra"), &["github"]);
    assert!(out.status.success(), "{}", text(&out));
    let doc = check(&clone.join(".github/workflows/airlock.yml"), "github");
    assert_eq!(
        doc["defaults"],
        json!({"run": {"working-directory": "infra"}})
    );
    assert_eq!(doc["on"]["push"]["branches"], json!(["trunk"]));
}

#[test]
fn gitlab_include_and_errors() {
    let (_tmp, path) = repo();
    let out = init(&path, &["gitlab"]);
    assert!(out.status.success(), "{}", text(&out));
    let main = check(&path.join(".gitlab-ci.yml"), "yaml");
    assert_eq!(main["include"], json!([{"local": ".gitlab/airlock.yml"}]));
    let doc = check(&path.join(".gitlab/airlock.yml"), "yaml");
    assert_eq!(doc[".airlock"]["variables"]["GIT_DEPTH"], "0");
    assert_eq!(
        doc[".airlock"]["id_tokens"],
        json!({"AIRLOCK_ID_TOKEN": {"aud": "$AIRLOCK_URL"}})
    );
    assert_eq!(
        doc[".airlock"]["image"],
        json!({"name": "hashicorp/terraform:1.11.4", "entrypoint": [""]})
    );
    assert_eq!(
        doc["airlock-plan"]["rules"],
        json!([{"if": "$CI_PIPELINE_SOURCE == \"merge_request_event\""}])
    );
    assert_eq!(
        doc["airlock-plan"]["script"],
        json!([
            "export AIRLOCK_TOKEN=\"$(airlock login --oidc --role agent)\"",
            "airlock ci plan"
        ])
    );
    assert_eq!(
        doc["airlock-apply"]["rules"],
        json!([{"if": "$CI_PIPELINE_SOURCE == \"push\" && $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}])
    );
    assert_eq!(
        doc["airlock-apply"]["script"],
        json!([
            "export AIRLOCK_TOKEN=\"$(airlock login --oidc --role ci)\"",
            "airlock ci apply"
        ])
    );
    assert_eq!(doc["airlock-apply"]["resource_group"], "airlock-apply");

    // An existing .gitlab-ci.yml is never touched: the line to add is printed.
    let (_tmp2, other) = repo();
    std::fs::write(other.join(".gitlab-ci.yml"), "stages: [test, deploy]\n").unwrap();
    let out = init(&other, &["gitlab"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out)
        .contains("next: add to .gitlab-ci.yml:\n  include:\n    - local: .gitlab/airlock.yml"));
    assert_eq!(
        std::fs::read_to_string(other.join(".gitlab-ci.yml")).unwrap(),
        "stages: [test, deploy]\n"
    );

    // Outside a git repository.
    let plain = tempfile::tempdir().unwrap();
    let out = init(plain.path(), &["github"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("is not in a git repository"),
        "{}",
        text(&out)
    );
    assert!(!plain.path().join(".github").exists());
}
