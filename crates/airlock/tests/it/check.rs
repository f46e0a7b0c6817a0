//! `airlock check` end to end: real `terraform` (built-in `terraform_data` only, local backend,
//! temp dirs) produces the plans; the real binary judges them. Provider plans (AWS, GCP, Azure)
//! are built here as JSON. A missing terraform fails these tests; it never skips them.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};

const AIRLOCK: &str = env!("CARGO_BIN_EXE_airlock");

fn terraform() -> String {
    let bin = std::env::var("AIRLOCK_TEST_TERRAFORM").unwrap_or_else(|_| "terraform".into());
    match Command::new(&bin).arg("version").output() {
        Ok(o) if o.status.success() => bin,
        _ => panic!(
            "`{bin}` was not found or does not run: the airlock check tests need the real \
             Terraform binary (1.11.x) on PATH (or AIRLOCK_TEST_TERRAFORM)"
        ),
    }
}

/// Runs terraform in `dir`; `ok` says whether a failure is expected.
fn tf(dir: &Path, args: &[&str], ok: bool) -> Output {
    let rc = dir.join(".terraformrc");
    if !rc.exists() {
        std::fs::write(&rc, "").unwrap();
    }
    let out = Command::new(terraform())
        .args(args)
        .current_dir(dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("TF_CLI_CONFIG_FILE", &rc)
        .env_remove("TF_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if ok {
        assert!(
            out.status.success(),
            "terraform {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A Terraform root module in a temp dir: apply `before`, then plan `after` into plan.bin and
/// plan.json.
struct Planned {
    dir: tempfile::TempDir,
}

impl Planned {
    fn new(
        files: &[(&str, &str)],
        after: &[(&str, &str)],
        plan_args: &[&str],
        prepare: &[&[&str]],
    ) -> Planned {
        let dir = tempfile::tempdir().unwrap();
        let write = |files: &[(&str, &str)]| {
            for (name, text) in files {
                let p = dir.path().join(name);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
        };
        write(files);
        tf(dir.path(), &["init", "-no-color"], true);
        tf(dir.path(), &["apply", "-auto-approve", "-no-color"], true);
        for extra in prepare {
            tf(dir.path(), extra, true);
        }
        write(after);
        let mut args = vec!["plan", "-no-color", "-out=plan.bin"];
        args.extend_from_slice(plan_args);
        let expect_ok = !plan_args.contains(&"#errored");
        args.retain(|a| *a != "#errored");
        tf(dir.path(), &args, expect_ok);
        let show = tf(dir.path(), &["show", "-json", "plan.bin"], true);
        std::fs::write(dir.path().join("plan.json"), &show.stdout).unwrap();
        Planned { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// One plan that shows every terraform_data scenario at once (generated once per test run).
fn scenarios() -> &'static Planned {
    static PLAN: OnceLock<Planned> = OnceLock::new();
    PLAN.get_or_init(|| {
        let before = r#"
resource "terraform_data" "a" { input = "a" }
resource "terraform_data" "b" { input = "b" }
resource "terraform_data" "c" {
  count = 3
  input = count.index
}
resource "terraform_data" "e" {
  for_each = toset(["x", "y"])
  input    = each.key
}
resource "terraform_data" "d" { triggers_replace = "1" }
resource "terraform_data" "cbd" {
  triggers_replace = "1"
  lifecycle { create_before_destroy = true }
}
resource "terraform_data" "f" { input = "f" }
resource "terraform_data" "g" { input = "g" }
resource "terraform_data" "h" { input = "h" }
resource "terraform_data" "r" { input = "r" }
resource "terraform_data" "secret" { input = sensitive("hunter2-old-secret") }
module "m" { source = "./m" }
"#;
        let after = r#"
resource "terraform_data" "b" { input = "b" }
resource "terraform_data" "c" {
  count = 1
  input = count.index
}
resource "terraform_data" "e" {
  for_each = toset(["x"])
  input    = each.key
}
resource "terraform_data" "d" { triggers_replace = "2" }
resource "terraform_data" "cbd" {
  triggers_replace = "2"
  lifecycle { create_before_destroy = true }
}
resource "terraform_data" "f" { input = "f" }
resource "terraform_data" "g" { input = "g" }
resource "terraform_data" "h2" { input = "h" }
moved {
  from = terraform_data.h
  to   = terraform_data.h2
}
removed {
  from = terraform_data.r
  lifecycle { destroy = false }
}
resource "terraform_data" "secret" { input = sensitive("hunter2-new-secret") }
resource "terraform_data" "new" { input = "new" }
"#;
        Planned::new(
            &[
                ("main.tf", before),
                (
                    "m/main.tf",
                    "resource \"terraform_data\" \"inner\" { input = \"inner\" }\n",
                ),
            ],
            &[("main.tf", after)],
            &["-replace=terraform_data.g"],
            &[&["taint", "-no-color", "terraform_data.f"]],
        )
    })
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn airlock(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(AIRLOCK);
    cmd.arg("check")
        .args(args)
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .env_remove("AIRLOCK_TERRAFORM_BIN")
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", dir.join(".terraformrc"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = match stdin {
        Some(bytes) => {
            use std::io::Write;
            cmd.stdin(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let mut pipe = child.stdin.take().unwrap();
            let bytes = bytes.to_vec();
            let writer = std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap();
            out
        }
        None => cmd.stdin(Stdio::null()).output().unwrap(),
    };
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check_json(dir: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--format", "json"]);
    let run = airlock(dir, &all, None);
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr));
    (run.code, v)
}

fn change<'v>(report: &'v Value, address: &str) -> &'v Value {
    report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == address)
        .unwrap_or_else(|| panic!("{address} not listed in {report:#}"))
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(
        r#""terraform_version":"[^"]*""#,
        r#""terraform_version":"[TF]""#,
    );
    s.add_filter(r"Terraform: `[^`]*`", "Terraform: `[TF]`");
    s.add_filter(r"/tmp/[A-Za-z0-9._/-]+", "[TMP]");
    s.set_prepend_module_to_snapshot(true);
    s
}

// ---------------------------------------------------------------- real terraform plans

#[test]
fn check_classifies_every_terraform_data_scenario() {
    let p = scenarios();
    let (code, r) = check_json(p.path(), &["plan.json"]);
    // 9 of 15 instances destroyed is over the default mass-destruction share (25%).
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["decision"], "review");
    let expect = [
        (
            "terraform_data.a",
            "delete",
            Some("delete_because_no_resource_config"),
        ),
        (
            "terraform_data.c[1]",
            "delete",
            Some("delete_because_count_index"),
        ),
        (
            "terraform_data.c[2]",
            "delete",
            Some("delete_because_count_index"),
        ),
        (
            "terraform_data.e[\"y\"]",
            "delete",
            Some("delete_because_each_key"),
        ),
        (
            "terraform_data.d",
            "replace",
            Some("replace_because_cannot_update"),
        ),
        (
            "terraform_data.cbd",
            "replace-create-first",
            Some("replace_because_cannot_update"),
        ),
        (
            "terraform_data.f",
            "replace",
            Some("replace_because_tainted"),
        ),
        ("terraform_data.g", "replace", Some("replace_by_request")),
        ("terraform_data.h2", "no-op", None),
        (
            "terraform_data.r",
            "forget",
            Some("delete_because_no_resource_config"),
        ),
        (
            "module.m.terraform_data.inner",
            "delete",
            Some("delete_because_no_resource_config"),
        ),
        ("terraform_data.new", "create", None),
        ("terraform_data.secret", "update", None),
    ];
    for (address, kind, reason) in expect {
        let c = change(&r, address);
        assert_eq!(c["kind"], kind, "{address}: {c:#}");
        assert_eq!(c["action_reason"].as_str(), reason, "{address}: {c:#}");
    }
    assert_eq!(
        change(&r, "terraform_data.d")["replace_paths"],
        json!(["triggers_replace"])
    );
    assert_eq!(
        change(&r, "terraform_data.cbd")["actions"],
        json!(["create", "delete"])
    );
    assert_eq!(
        change(&r, "terraform_data.h2")["moved_from"],
        "terraform_data.h"
    );
    assert!(
        r["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["address"] != "terraform_data.b"),
        "plain no-ops are counted, not listed"
    );
    let s = &r["summary"];
    assert_eq!(
        (
            s["delete"].as_u64(),
            s["replace"].as_u64(),
            s["replace-create-first"].as_u64()
        ),
        (Some(5), Some(3), Some(1))
    );
    assert_eq!(
        (
            s["forget"].as_u64(),
            s["create"].as_u64(),
            s["move"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    let rules: Vec<&str> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    for rule in [
        "module-removed",
        "instance-key-removed",
        "replace-requested",
        "tainted-replace",
        "forget",
        "mass-destruction",
    ] {
        assert!(rules.contains(&rule), "{rule} missing from {rules:?}");
    }
}

#[test]
fn check_reads_the_binary_plan_through_terraform_show() {
    let p = scenarios();
    let (code, from_json) = check_json(p.path(), &["plan.json"]);
    let (code_bin, from_bin) = check_json(p.path(), &["plan.bin"]);
    assert_eq!((code, code_bin), (0, 0));
    assert_eq!(from_json, from_bin);
    let run = airlock(
        p.path(),
        &["plan.bin", "--terraform-bin", "no-such-terraform-xyz"],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("binary plan file") && run.stderr.contains("no-such-terraform-xyz"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_never_prints_sensitive_values() {
    let p = scenarios();
    for format in ["text", "markdown", "json", "sarif"] {
        let run = airlock(p.path(), &["plan.json", "--format", format], None);
        assert_eq!(run.code, 0);
        assert!(
            !run.stdout.contains("hunter2") && !run.stderr.contains("hunter2"),
            "{format}"
        );
        assert!(
            !run.stdout.contains("\u{1b}["),
            "no colour when stdout is not a terminal"
        );
    }
}

#[test]
fn check_snapshots_of_every_format() {
    let p = scenarios();
    let settings = settings();
    settings.bind(|| {
        let text = airlock(p.path(), &["plan.json"], None);
        insta::assert_snapshot!("check_text_terraform_data", text.stdout);
        let md = airlock(p.path(), &["plan.json", "--format", "markdown"], None);
        insta::assert_snapshot!("check_markdown_terraform_data", md.stdout);
        let json = airlock(p.path(), &["plan.json", "--format", "json"], None);
        let v: Value = serde_json::from_str(&json.stdout).unwrap();
        insta::assert_snapshot!(
            "check_json_terraform_data",
            serde_json::to_string_pretty(&v).unwrap()
        );
        let sarif = airlock(p.path(), &["plan.json", "--format", "sarif"], None);
        insta::assert_snapshot!("check_sarif_terraform_data", sarif.stdout);
    });
}

#[test]
fn check_production_stack_reviews_any_destroy_and_fail_on_review_exits_3() {
    let p = scenarios();
    let cfg = p.path().join("prod.hcl");
    std::fs::write(
        &cfg,
        "stack \"prod/app\" {\n  dir = \".\"\n  production = true\n}\nmass_destruction {\n  max_count = 1000\n  max_percent = 100\n}\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, r) = check_json(p.path(), &["plan.json", "--config", cfg]);
    assert_eq!((code, r["decision"].as_str()), (0, Some("review")));
    assert_eq!(r["stack"], "prod/app");
    assert_eq!(r["findings"][0]["rule"], "production-destroy", "{r:#}");
    let reviews = r["findings_by_severity"]["review"].as_u64();
    assert_eq!(reviews, Some(9), "one per destroyed instance");
    let run = airlock(
        p.path(),
        &["plan.json", "--config", cfg, "--fail-on", "review"],
        None,
    );
    assert_eq!(run.code, 3, "{}", run.stdout);
    let run = airlock(
        p.path(),
        &["plan.json", "--config", cfg, "--stack", "nope"],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("stack \"nope\" is not declared"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_protect_addresses_deny_and_allow_destroy_turns_it_into_review() {
    let p = scenarios();
    let cfg = p.path().join("protect.hcl");
    std::fs::write(
        &cfg,
        "protect {\n  addresses = [\"terraform_data.a\", \"module.m\"]\n}\n",
    )
    .unwrap();
    let (code, r) = check_json(p.path(), &["plan.json", "--config", cfg.to_str().unwrap()]);
    assert_eq!((code, r["decision"].as_str()), (2, Some("deny")));
    assert_eq!(change(&r, "terraform_data.a")["critical"], true);
    assert_eq!(
        change(&r, "module.m.terraform_data.inner")["severity"],
        "deny"
    );
    std::fs::write(
        &cfg,
        "protect {\n  addresses = [\"terraform_data.a\", \"module.m\"]\n}\n\
         allow_destroy \"terraform_data.a\" {\n  reason = \"replaced by b\"\n}\n\
         allow_destroy \"module.m\" {\n  reason = \"module retired\"\n}\n",
    )
    .unwrap();
    let (code, r) = check_json(p.path(), &["plan.json", "--config", cfg.to_str().unwrap()]);
    assert_eq!((code, r["decision"].as_str()), (0, Some("review")));
    assert!(change(&r, "terraform_data.a")["reasons"]
        .to_string()
        .contains("replaced by b"));
}

#[test]
fn check_mass_destruction_threshold_from_config() {
    let p = scenarios();
    let cfg = p.path().join("mass.hcl");
    std::fs::write(&cfg, "mass_destruction {\n  max_count = 3\n}\n").unwrap();
    let (code, r) = check_json(p.path(), &["plan.json", "--config", cfg.to_str().unwrap()]);
    assert_eq!((code, r["decision"].as_str()), (0, Some("review")));
    assert!(r["findings"].to_string().contains("mass-destruction"));
}

#[test]
fn check_config_errors_name_file_and_line() {
    let p = scenarios();
    let cfg = p.path().join("bad.hcl");
    std::fs::write(
        &cfg,
        "stack \"a\" {\n  dir = \"x\"\n}\n\nallow_destroy \"x\" {\n  reson = \"typo\"\n}\n",
    )
    .unwrap();
    let run = airlock(
        p.path(),
        &["plan.json", "--config", cfg.to_str().unwrap()],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("bad.hcl:6: unknown attribute `reson`"),
        "{}",
        run.stderr
    );
}

#[test]
fn check_rego_policies_deny_and_warn() {
    let p = scenarios();
    let dir = p.path().join("policy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("no_forget.rego"),
        "package main\n\ndeny contains msg if {\n  some rc in input.resource_changes\n  rc.change.actions == [\"forget\"]\n  msg := sprintf(\"%s must not be forgotten\", [rc.address])\n}\n\nwarn contains \"plans are reviewed\" if { true }\n",
    )
    .unwrap();
    let (code, r) = check_json(p.path(), &["plan.json", "--policy", dir.to_str().unwrap()]);
    assert_eq!((code, r["decision"].as_str()), (2, Some("deny")));
    let findings = r["findings"].to_string();
    assert!(
        findings.contains("terraform_data.r must not be forgotten"),
        "{findings}"
    );
    assert!(findings.contains("rego:main.warn"));
    std::fs::write(dir.join("broken.rego"), "package main\ndeny contains {{{\n").unwrap();
    let run = airlock(
        p.path(),
        &["plan.json", "--policy", dir.to_str().unwrap()],
        None,
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("broken.rego"), "{}", run.stderr);
}

#[test]
fn check_errored_plan_with_prevent_destroy() {
    let before = "resource \"terraform_data\" \"p\" {\n  triggers_replace = \"1\"\n  lifecycle { prevent_destroy = true }\n}\n";
    let after = "resource \"terraform_data\" \"p\" {\n  triggers_replace = \"2\"\n  lifecycle { prevent_destroy = true }\n}\n";
    let p = Planned::new(
        &[("main.tf", before)],
        &[("main.tf", after)],
        &["#errored"],
        &[],
    );
    let (code, r) = check_json(p.path(), &["plan.json"]);
    assert_eq!(r["plan"]["errored"], true, "{r:#}");
    assert_eq!(change(&r, "terraform_data.p")["kind"], "replace");
    assert_eq!((code, r["decision"].as_str()), (0, Some("review")));
    assert!(r["findings"].to_string().contains("plan-errored"));
}

#[test]
fn check_reads_stdin_with_bom_and_wrapper_noise() {
    let p = scenarios();
    let json = std::fs::read(p.path().join("plan.json")).unwrap();
    let mut noisy = b"\xEF\xBB\xBF[command]/usr/bin/terraform show -json plan.bin\n".to_vec();
    noisy.extend_from_slice(&json);
    noisy.extend_from_slice(b"\n::set-output name=exitcode::0\n");
    let run = airlock(p.path(), &["-", "--format", "json"], Some(&noisy));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("skipped 1 non-JSON line"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("after the plan JSON"), "{}", run.stderr);
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in String::from_utf8(json).unwrap().encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    let run = airlock(p.path(), &["-", "--format", "json"], Some(&utf16));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("UTF-16"));
}

// ---------------------------------------------------------------- provider fixture plans

fn rc(address: &str, ty: &str, actions: &[&str], before: Value, after: Value) -> Value {
    json!({
        "address": address, "mode": "managed", "type": ty,
        "name": address.rsplit('.').next().unwrap(),
        "provider_name": format!("registry.terraform.io/hashicorp/{}", ty.split('_').next().unwrap()),
        "change": {"actions": actions, "before": before, "after": after,
                   "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}}
    })
}

fn plan_of(changes: Vec<Value>) -> String {
    json!({"format_version": "1.2", "terraform_version": "1.11.4", "planned_values": {"root_module": {}},
           "resource_changes": changes, "configuration": {}, "errored": false})
    .to_string()
}

fn provider_plan() -> String {
    let mut db = rc(
        "module.data.aws_db_instance.main",
        "aws_db_instance",
        &["delete"],
        json!({"identifier": "prod", "password": "hunter2-db-password", "deletion_protection": false,
               "skip_final_snapshot": true, "delete_automated_backups": true}),
        Value::Null,
    );
    db["change"]["before_sensitive"] = json!({"password": true});
    plan_of(vec![
        db,
        rc(
            "aws_s3_bucket.logs",
            "aws_s3_bucket",
            &["update"],
            json!({"force_destroy": false}),
            json!({"force_destroy": true}),
        ),
        rc(
            "google_container_cluster.gke",
            "google_container_cluster",
            &["delete"],
            json!({"deletion_protection": true}),
            Value::Null,
        ),
        rc(
            "google_sql_database_instance.main",
            "google_sql_database_instance",
            &["delete", "create"],
            json!({"name": "a", "settings": [{"deletion_protection_enabled": true}]}),
            json!({"name": "b", "settings": [{"deletion_protection_enabled": true}]}),
        ),
        rc(
            "azurerm_key_vault.kv",
            "azurerm_key_vault",
            &["update"],
            json!({"purge_protection_enabled": true, "soft_delete_retention_days": 90}),
            json!({"purge_protection_enabled": false, "soft_delete_retention_days": 7}),
        ),
        rc(
            "azurerm_storage_account.sa",
            "azurerm_storage_account",
            &["create"],
            Value::Null,
            json!({"name": "sa"}),
        ),
        rc(
            "aws_iam_role.ci",
            "aws_iam_role",
            &["delete"],
            json!({}),
            Value::Null,
        ),
    ])
}

#[test]
fn check_provider_plan_denies_critical_destruction_and_flags_protections() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plan.json"), provider_plan()).unwrap();
    let (code, r) = check_json(dir.path(), &["plan.json"]);
    assert_eq!((code, r["decision"].as_str()), (2, Some("deny")));
    let db = change(&r, "module.data.aws_db_instance.main");
    assert_eq!(db["critical"], true);
    let reasons = db["reasons"].to_string();
    assert!(
        reasons.contains("skip_final_snapshot = true")
            && reasons.contains("delete_automated_backups = true"),
        "{reasons}"
    );
    assert!(change(&r, "aws_s3_bucket.logs")["reasons"]
        .to_string()
        .contains("force_destroy turned on"));
    let gke = change(&r, "google_container_cluster.gke")["reasons"].to_string();
    assert!(gke.contains("provider will refuse"), "{gke}");
    let kv = change(&r, "azurerm_key_vault.kv")["reasons"].to_string();
    assert!(
        kv.contains("purge_protection_enabled turned off")
            && kv.contains("soft_delete_retention_days shortened (90 → 7)"),
        "{kv}"
    );
    assert_eq!(
        change(&r, "azurerm_storage_account.sa")["severity"],
        Value::Null
    );
    assert_eq!(change(&r, "aws_iam_role.ci")["critical"], false);
    let dir_path = dir.path();
    settings().bind(|| {
        let text = airlock(dir_path, &["plan.json"], None);
        insta::assert_snapshot!("check_text_providers", text.stdout);
        let md = airlock(dir_path, &["plan.json", "--format", "markdown"], None);
        insta::assert_snapshot!("check_markdown_providers", md.stdout);
    });
    for format in ["text", "markdown", "json", "sarif"] {
        let run = airlock(dir.path(), &["plan.json", "--format", format], None);
        assert_eq!(run.code, 2);
        assert!(!run.stdout.contains("hunter2"), "{format}");
    }
}

#[test]
fn check_declared_provider_destruction_is_review() {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan_of(vec![rc(
        "aws_dynamodb_table.t",
        "aws_dynamodb_table",
        &["delete"],
        json!({}),
        Value::Null,
    )]);
    std::fs::write(dir.path().join("plan.json"), plan).unwrap();
    std::fs::write(
        dir.path().join("airlock.hcl"),
        "allow_destroy \"aws_dynamodb_table.t\" {\n  reason = \"data exported\"\n}\n",
    )
    .unwrap();
    // ./airlock.hcl is picked up without --config.
    let (code, r) = check_json(dir.path(), &["plan.json"]);
    assert_eq!((code, r["decision"].as_str()), (0, Some("review")));
    assert_eq!(r["findings"][0]["rule"], "declared-destroy");
}

#[test]
fn check_markdown_is_capped_with_an_explicit_truncation_line() {
    let dir = tempfile::tempdir().unwrap();
    let changes = (0..5000)
        .map(|i| {
            rc(
                &format!("module.fleet.aws_instance.worker_number[{i}]"),
                "aws_instance",
                &["delete"],
                json!({}),
                Value::Null,
            )
        })
        .collect();
    std::fs::write(dir.path().join("plan.json"), plan_of(changes)).unwrap();
    let run = airlock(dir.path(), &["plan.json", "--format", "markdown"], None);
    assert_eq!(run.code, 0);
    assert!(run.stdout.chars().count() <= 60_000);
    assert!(run.stdout.contains("**Truncated:**"));
    assert!(run.stdout.contains("mass-destruction"));
}

// ---------------------------------------------------------------- hostile input

#[test]
fn check_hostile_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let full = provider_plan();
    let deep = format!(
        "{{\"planned_values\":{}{}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "the input is empty"),
        ("truncated", full.as_bytes()[..full.len() / 2].to_vec(), "truncated"),
        ("state", br#"{"version":4,"serial":1,"lineage":"x","resources":[]}"#.to_vec(), "Terraform state file"),
        ("notjson", b"hello world\n".to_vec(), "no JSON object"),
        ("array", b"[1,2]".to_vec(), "no JSON object"),
        ("wrongtype", br#"{"planned_values":{},"resource_changes":[{"address":"a","change":{"actions":"delete"}}]}"#.to_vec(), "invalid type"),
        ("hugenumber", br#"{"planned_values":{},"resource_changes":[{"address":"a","action_reason":1e999999}]}"#.to_vec(), "number out of range"),
        ("deep", deep.into_bytes(), "nesting is too deep"),
        ("zip", b"PK\x03\x04garbage".to_vec(), "terraform"),
    ];
    for (name, bytes, text) in cases {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, &bytes).unwrap();
        let run = airlock(dir.path(), &[path.to_str().unwrap()], None);
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        assert!(run.stderr.contains(text), "{name}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{name}: {}", run.stderr);
        let run = airlock(dir.path(), &["-"], Some(&bytes));
        assert_eq!(run.code, 1, "{name} on stdin: {}", run.stderr);
    }
    let run = airlock(dir.path(), &["missing.json"], None);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("missing.json"));
}
