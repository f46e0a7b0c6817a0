//! `airlock doctor`: fixture repositories built here, one per verdict, run through the real
//! binary; JSON, SARIF and exit codes checked; `--server` against a real server.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::support::{TestServer, AIRLOCK};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn doctor(dir: &Path, args: &[&str]) -> Output {
    Command::new(AIRLOCK)
        .arg("doctor")
        .arg(dir)
        .args(args)
        .env_remove("AIRLOCK_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json(dir: &Path) -> Value {
    let out = doctor(dir, &["--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn question<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["questions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["id"] == id)
        .unwrap()
}

fn verdict(r: &Value, id: &str) -> String {
    question(r, id)["verdict"].as_str().unwrap().to_owned()
}

/// Whether question `id` has evidence at `file:line` with `rule` whose message contains `text`.
fn has(r: &Value, id: &str, rule: &str, file: &str, line: u64, text: &str) -> bool {
    question(r, id)["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| {
            e["rule"] == rule
                && e["file"] == file
                && e["line"] == line
                && e["message"].as_str().unwrap().contains(text)
        })
}

const FRAGILE_DB: &str = r#"provider "aws" {
  region = "eu-west-1"
}

variable "drop_backups" {
  default = true
}

resource "aws_db_instance" "main" {
  engine                   = "postgres"
  skip_final_snapshot      = true
  delete_automated_backups = var.drop_backups
  backup_retention_period  = 0
}

resource "aws_s3_bucket" "data" {
  bucket        = "data"
  force_destroy = true
}
"#;

const FRAGILE_WORKFLOW: &str = r#"name: deploy
on:
  pull_request:
jobs:
  deploy:
    runs-on: ubuntu-latest
    env:
      AWS_ACCESS_KEY_ID: ${{ secrets.AWS_ACCESS_KEY_ID }}
      AWS_SECRET_ACCESS_KEY: ${{ secrets.AWS_SECRET_ACCESS_KEY }}
    steps:
      - uses: actions/checkout@v4
      - run: terraform init
      - run: |
          terraform apply \
            -auto-approve
"#;

#[test]
fn a_fragile_repository_is_fragile_with_exact_evidence_and_fails_ci() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    write(r, "prod/main.tf", FRAGILE_DB);
    write(r, "prod/terraform.tfstate", "{}");
    write(r, ".github/workflows/deploy.yml", FRAGILE_WORKFLOW);
    // Hostile files: a syntax error, a binary named .tf, a symlink loop; the rest is analysed.
    write(r, "broken/main.tf", "resource \"x\" \"y\" {\n  a = \n");
    std::fs::write(r.join("prod/blob.tf"), b"\x00\xff\xfe binary").unwrap();
    std::os::unix::fs::symlink("..", r.join("prod/loop")).unwrap();

    let report = json(r);
    assert_eq!(report["format"], "airlock-doctor/1");
    for q in [
        "state",
        "who_can_apply",
        "plan_to_apply",
        "visibility",
        "protections",
        "backups",
    ] {
        assert_eq!(
            verdict(&report, q),
            "fragile",
            "{q}: {:#}",
            question(&report, q)
        );
    }
    assert!(has(
        &report,
        "state",
        "state.local",
        "prod/main.tf",
        1,
        "has no backend"
    ));
    assert!(has(
        &report,
        "state",
        "state.file_in_tree",
        "prod/terraform.tfstate",
        0,
        "state lying"
    ));
    let wf = ".github/workflows/deploy.yml";
    assert!(has(
        &report,
        "who_can_apply",
        "apply.on_change_request",
        wf,
        14,
        "pull/merge request"
    ));
    assert!(has(
        &report,
        "who_can_apply",
        "apply.long_lived_keys",
        wf,
        9,
        "AWS_SECRET_ACCESS_KEY"
    ));
    assert!(has(
        &report,
        "plan_to_apply",
        "plan_to_apply.before_merge",
        wf,
        14,
        "before merge"
    ));
    assert!(
        has(
            &report,
            "visibility",
            "visibility.logs_only",
            ".",
            0,
            "neither posted nor checked"
        ) || verdict(&report, "visibility") == "fragile"
    );
    let db = "prod/main.tf";
    assert!(has(
        &report,
        "protections",
        "protect.deletion_protection",
        db,
        9,
        "deletion_protection not set"
    ));
    assert!(has(
        &report,
        "protections",
        "protect.final_snapshot",
        db,
        11,
        "skip_final_snapshot = true"
    ));
    // Resolved through the variable's literal default, and says so.
    assert!(has(
        &report,
        "protections",
        "protect.automated_backups",
        db,
        12,
        "delete_automated_backups = true from var.drop_backups (default at prod/main.tf:6)"
    ));
    assert!(has(
        &report,
        "protections",
        "protect.backup_retention",
        db,
        13,
        "backup_retention_period = 0"
    ));
    assert!(has(
        &report,
        "protections",
        "protect.force_destroy",
        db,
        18,
        "force_destroy = true"
    ));
    assert!(has(
        &report,
        "protections",
        "protect.companion",
        db,
        16,
        "no versioning"
    ));
    assert!(has(
        &report,
        "protections",
        "protect.prevent_destroy",
        db,
        9,
        "prevent_destroy"
    ));
    assert!(has(
        &report,
        "backups",
        "backups.none",
        db,
        9,
        "no independent backup"
    ));
    // Unreadable files are reported with their line; the loop was not followed.
    let errors = report["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["file"] == "broken/main.tf" && e["line"] == 2),
        "{errors:?}"
    );
    assert!(errors.iter().any(
        |e| e["file"] == "prod/blob.tf" && e["message"].as_str().unwrap().contains("not UTF-8")
    ));
    assert_eq!(report["scanned"]["symlinks_skipped"], 1);
    assert!(!report["todo"].as_array().unwrap().is_empty());

    // --fail-on: 3 when a question is at least that bad; text by default; 0 without it.
    let out = doctor(r, &["--fail-on", "fragile"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("1. Where does state live?  FRAGILE (0/2)"),
        "{text}"
    );
    assert!(text.contains("To do, most urgent first:"), "{text}");
    assert_eq!(
        doctor(r, &["--fail-on", "discipline"]).status.code(),
        Some(3)
    );
    let md = doctor(r, &["--format", "markdown"]);
    assert!(String::from_utf8(md.stdout)
        .unwrap()
        .starts_with("# airlock doctor\n"));

    // SARIF 2.1.0: its required structure, one result per non-enforced finding, rules listed.
    let out = doctor(r, &["--format", "sarif"]);
    let sarif: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "airlock doctor");
    let rules: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let results = run["results"].as_array().unwrap();
    assert!(!results.is_empty());
    for res in results {
        assert!(rules.contains(&res["ruleId"].as_str().unwrap()));
        assert!(["error", "warning", "note"].contains(&res["level"].as_str().unwrap()));
        assert!(res["message"]["text"].is_string());
        if let Some(l) = res["locations"][0]["physicalLocation"]["region"]["startLine"].as_u64() {
            assert!(l >= 1);
        }
    }
    // And it is valid against the SARIF 2.1.0 schema (Microsoft's, shipped in
    // @microsoft/jest-sarif), checked by ajv.
    let file = r.join("doctor.sarif");
    std::fs::write(&file, &out.stdout).unwrap();
    let modules = std::env::var("AIRLOCK_TEST_NODE_MODULES").expect(
        "AIRLOCK_TEST_NODE_MODULES is not set: run `. scripts/test-deps.sh` (it installs \
         @microsoft/jest-sarif, the SARIF schema) or scripts/test.sh",
    );
    let script = r#"
        const [modules, file] = process.argv.slice(1);
        const Ajv = require(modules + "/ajv");
        const schema = require(modules + "/@microsoft/jest-sarif/lib/schemas/sarif-2.1.0-rtm.5.json");
        const ajv = new Ajv({ allErrors: true, schemaId: "auto" }); // the schema is draft-04
        ajv.addMetaSchema(require(modules + "/ajv/lib/refs/json-schema-draft-04.json"));
        const ok = ajv.validate(schema, JSON.parse(require("fs").readFileSync(file, "utf8")));
        if (!ok) { console.error(JSON.stringify(ajv.errors, null, 1)); process.exit(1); }
    "#;
    let v = Command::new("node")
        .args(["-e", script, &modules])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "SARIF schema: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    // A broken document is refused by the same check (the check can fail).
    std::fs::write(&file, r#"{"version": "2.1.0", "runs": [{"results": []}]}"#).unwrap();
    let v = Command::new("node")
        .args(["-e", script, &modules])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !v.status.success(),
        "a run without a tool must not validate"
    );
    assert!(results
        .iter()
        .any(|x| x["ruleId"] == "protect.force_destroy"
            && x["level"] == "error"
            && x["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == db
            && x["locations"][0]["physicalLocation"]["region"]["startLine"] == 18));
}

#[test]
fn airlock_ci_init_and_an_airlock_backend_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    let git = |args: &[&str]| {
        assert!(Command::new("git")
            .args(args)
            .current_dir(r)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap()
            .success());
    };
    git(&["init", "-q", "-b", "main"]);
    write(r, "airlock.hcl", "");
    let out = Command::new(AIRLOCK)
        .args(["ci", "init", "github"])
        .current_dir(r)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    write(r, "prod/backend.tf", "terraform {\n  backend \"http\" {\n    address        = \"https://airlock.example/state/prod\"\n    lock_address   = \"https://airlock.example/state/prod\"\n    unlock_address = \"https://airlock.example/state/prod\"\n  }\n}\n");
    // The database's protections come from a module call's literal arguments.
    write(
        r,
        "prod/main.tf",
        r#"module "db" {
  source     = "../modules/db"
  protect    = true
}

resource "aws_backup_plan" "nightly" {
  name = "nightly"
}
"#,
    );
    write(
        r,
        "modules/db/main.tf",
        r#"variable "protect" {}

resource "aws_db_instance" "this" {
  deletion_protection       = var.protect
  skip_final_snapshot       = false
  final_snapshot_identifier = "final"
  delete_automated_backups  = false
  backup_retention_period   = 7
  lifecycle {
    prevent_destroy = true
  }
}
"#,
    );
    let report = json(r);
    for q in [
        "state",
        "who_can_apply",
        "plan_to_apply",
        "visibility",
        "protections",
    ] {
        assert_eq!(
            verdict(&report, q),
            "enforced",
            "{q}: {:#}",
            question(&report, q)
        );
    }
    assert!(has(
        &report,
        "state",
        "state.airlock",
        "prod/backend.tf",
        2,
        "airlock server"
    ));
    let wf = ".github/workflows/airlock.yml";
    let text = std::fs::read_to_string(r.join(wf)).unwrap();
    let apply_line = text
        .lines()
        .position(|l| l.contains("run: airlock ci apply"))
        .unwrap() as u64
        + 1;
    assert!(has(
        &report,
        "who_can_apply",
        "apply.governed",
        wf,
        apply_line,
        "approved runs"
    ));
    assert!(has(
        &report,
        "protections",
        "protect.ok",
        "modules/db/main.tf",
        3,
        "protected"
    ));
    assert!(has(
        &report,
        "protections",
        "protect.ok",
        "modules/db/main.tf",
        3,
        "via module \"db\" at prod/main.tf:1"
    ));
    // A backup plan exists; whether it works cannot be known from the repository.
    assert_eq!(verdict(&report, "backups"), "unknown");
    assert!(has(
        &report,
        "backups",
        "backups.plan_declared",
        "modules/db/main.tf",
        3,
        "cannot be known"
    ));
    assert_eq!(
        doctor(r, &["--fail-on", "discipline"]).status.code(),
        Some(0)
    );

    // The same database with a non-literal argument: unknown, never guessed.
    write(
        r,
        "prod/main.tf",
        "module \"db\" {\n  source  = \"../modules/db\"\n  protect = local.p\n}\n",
    );
    let report = json(r);
    assert_eq!(
        verdict(&report, "protections"),
        "unknown",
        "{:#}",
        question(&report, "protections")
    );
    assert!(has(
        &report,
        "protections",
        "protect.unknown",
        "modules/db/main.tf",
        4,
        "cannot be known"
    ));
}

#[test]
fn gitlab_scripts_s3_terragrunt_and_json_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    write(r, ".gitlab-ci.yml", "stages: [plan, apply]\nplan:\n  stage: plan\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"merge_request_event\"\n  script:\n    - terraform plan -out=tfplan\n    - conftest test tfplan.json\n    - gh pr comment 1 --body-file plan.md\napply:\n  stage: apply\n  when: manual\n  id_tokens:\n    AWS_TOKEN:\n      aud: sts\n  script:\n    - terraform apply tfplan\n");
    write(
        r,
        "live/main.tf.json",
        r#"{"terraform": {"backend": {"s3": {"bucket": "tf-state", "key": "live"}}},
        "resource": {"aws_s3_bucket": {"state": {"bucket": "tf-state"}}}}"#,
    );
    write(r, "units/app/terragrunt.hcl", "include \"root\" {\n  path = find_in_parent_folders(\"root.hcl\")\n}\nterraform {\n  source = \"../../modules//app\"\n}\n");
    write(
        r,
        "root.hcl",
        "remote_state {\n  backend = \"local\"\n  config = {}\n}\n",
    );
    // An apply through an action (found on hashicorp-education/learn-terraform-github-actions).
    write(
        r,
        ".github/workflows/apply.yml",
        "on:\n  push:\n    branches: [main]\njobs:\n  apply:\n    runs-on: ubuntu-latest\n    \
         steps:\n      - uses: dflook/terraform-apply@v1\n        with:\n          path: live\n",
    );
    let report = json(r);
    assert!(has(
        &report,
        "who_can_apply",
        "apply.direct",
        ".github/workflows/apply.yml",
        8,
        "apply action dflook/terraform-apply@v1"
    ));
    assert!(has(
        &report,
        "plan_to_apply",
        "plan_to_apply.action",
        ".github/workflows/apply.yml",
        8,
        "depends on that action"
    ));
    // s3 without lock or encrypt: discipline; the state bucket, declared here without
    // versioning: discipline; the Terragrunt unit inheriting a local backend: fragile.
    assert!(has(
        &report,
        "state",
        "state.s3_settings",
        "live/main.tf.json",
        0,
        "no locking"
    ));
    assert!(has(
        &report,
        "state",
        "state.bucket_versioning",
        "live/main.tf.json",
        0,
        "without versioning"
    ));
    assert!(has(
        &report,
        "state",
        "state.local",
        "root.hcl",
        1,
        "Terragrunt unit units/app"
    ));
    // GitLab: a saved plan applied by hand in another job; plans posted and checked on MRs.
    assert!(has(
        &report,
        "who_can_apply",
        "apply.direct",
        ".gitlab-ci.yml",
        17,
        "when: manual"
    ));
    assert!(has(
        &report,
        "who_can_apply",
        "apply.oidc",
        ".gitlab-ci.yml",
        10,
        "OIDC"
    ));
    assert!(has(
        &report,
        "plan_to_apply",
        "plan_to_apply.saved_plan",
        ".gitlab-ci.yml",
        17,
        "saved plan"
    ));
    assert_eq!(
        verdict(&report, "visibility"),
        "unknown",
        "{:#}",
        question(&report, "visibility")
    );
}

#[test]
fn server_facts_name_tokens_direct_writes_and_what_cannot_be_known() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "prod/app", "--production"]);
    s.ok(&s.admin, &["stack", "create", "dev/app"]);
    let agent = s.token("bot", "agent");
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "main.tf",
        "resource \"terraform_data\" \"x\" {}\n",
    );
    let run = |token: &str| {
        Command::new(AIRLOCK)
            .args(["doctor", "--server", "--format", "json"])
            .arg(tmp.path())
            .env("AIRLOCK_URL", &s.url)
            .env("AIRLOCK_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = run(&s.admin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(has(
        &report,
        "who_can_apply",
        "server.tokens",
        "airlock server",
        0,
        "1 agent"
    ));
    assert!(has(
        &report,
        "who_can_apply",
        "server.no_expiry",
        "airlock server",
        0,
        "never expire"
    ));
    assert!(has(
        &report,
        "who_can_apply",
        "server.direct_writes",
        "airlock server",
        0,
        "stack dev/app: direct state writes open to admin, approver, ci"
    ));
    assert!(has(
        &report,
        "who_can_apply",
        "server.direct_writes",
        "airlock server",
        0,
        "stack prod/app: only admins"
    ));
    assert!(has(
        &report,
        "backups",
        "backups.never_verified",
        "airlock server",
        0,
        "no recorded `airlock backup verify`"
    ));
    assert_eq!(verdict(&report, "backups"), "discipline");
    // A token that may not list tokens: that part is unknown, not an error.
    let report: Value = serde_json::from_slice(&run(&agent).stdout).unwrap();
    assert!(has(
        &report,
        "who_can_apply",
        "server.tokens",
        "airlock server",
        0,
        "cannot be known with this token"
    ));
    // An unknown token is an error: exit 1.
    assert_eq!(run("nope").status.code(), Some(1));

    // A backup exported from the server's database and verified with --record (by the
    // pipeline's ci token; an agent may not record) is what doctor reports next.
    let ci = s.token("nightly", "ci");
    let bk = tmp.path().join("bk");
    let data = s.dir.path().join("data");
    let cli = |token: &str, args: &[&str]| {
        Command::new(AIRLOCK)
            .args(args)
            .env("AIRLOCK_URL", &s.url)
            .env("AIRLOCK_TOKEN", token)
            .output()
            .unwrap()
    };
    let out = cli(
        &ci,
        &[
            "backup",
            "export",
            bk.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = ["backup", "verify", bk.to_str().unwrap(), "--record"];
    assert_eq!(
        cli(&agent, &verify).status.code(),
        Some(2),
        "agents cannot record"
    );
    let out = cli(&ci, &verify);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("recorded on"));
    let report: Value = serde_json::from_slice(&run(&agent).stdout).unwrap();
    assert!(has(
        &report,
        "backups",
        "backups.verified",
        "airlock server",
        0,
        "last succeeded 0 day(s) ago (reported by nightly"
    ));
    assert!(has(
        &report,
        "backups",
        "backups.verified",
        "airlock server",
        0,
        "newest verified export is 0 day(s) old"
    ));
    assert_eq!(
        verdict(&report, "backups"),
        "unknown",
        "the repository's part is still unknown"
    );
    let audit = s.ok(
        &s.admin,
        &["audit", "--action", "backup.verify", "--format", "json"],
    );
    assert!(audit.contains("backup.verify"), "{audit}");

    // A backup of another server is refused (its audit head is not this server's), and
    // nothing is recorded.
    let other = TestServer::start();
    let bk2 = tmp.path().join("bk2");
    let data2 = other.dir.path().join("data");
    assert!(cli(
        &ci,
        &[
            "backup",
            "export",
            bk2.to_str().unwrap(),
            "--data-dir",
            data2.to_str().unwrap()
        ]
    )
    .status
    .success());
    let out = cli(
        &ci,
        &["backup", "verify", bk2.to_str().unwrap(), "--record"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not this server's event"));
}

/// A module library (terraform-aws-modules style): the root is a reusable module (required
/// inputs, no provider, no backend), `examples/` are not live infrastructure. Its state is
/// unknown (its callers keep it), not "fragile"; its resources are judged with their defaults.
#[test]
fn a_module_library_is_not_a_root_module_and_examples_are_not_judged() {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    write(
        r,
        "main.tf",
        "module \"inner\" {\n  source = \"./modules/inner\"\n  name   = var.name\n}\n",
    );
    write(
        r,
        "variables.tf",
        "variable \"name\" {\n  type = string\n}\n",
    );
    write(
        r,
        "modules/inner/main.tf",
        "variable \"name\" {}\nvariable \"deletion_protection\" {\n  default = false\n}\n\
         resource \"aws_db_instance\" \"this\" {\n  identifier          = var.name\n  \
         deletion_protection = var.deletion_protection\n}\n",
    );
    write(
        r,
        "examples/complete/main.tf",
        "provider \"aws\" {}\nresource \"aws_s3_bucket\" \"x\" {\n  force_destroy = true\n}\n",
    );
    let report = json(r);
    assert_eq!(
        verdict(&report, "state"),
        "unknown",
        "{:#}",
        question(&report, "state")
    );
    assert!(has(
        &report,
        "state",
        "state.no_root",
        ".",
        0,
        "no root module found"
    ));
    assert!(has(
        &report,
        "protections",
        "protect.deletion_protection",
        "modules/inner/main.tf",
        7,
        "deletion_protection = false from var.deletion_protection (default at modules/inner/main.tf:3)"
    ));
    let all = report.to_string();
    assert!(
        !all.contains("examples/complete"),
        "examples are not judged: {all}"
    );
}
