//! The adversarial review's attacks on governed runs, each replayed with the real server and
//! real terraform: the applied plan is the reviewed plan, the repository's policy is the one
//! enforced, a run's grant is that run's only and lasts its whole apply, a run writes only what
//! its plan changes, serials cannot brick a stack, restores are exact.

use std::path::Path;

use airlock_core::inputs::{self, InputFile};
use base64::Engine;
use serde_json::{json, Value};

use crate::support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

const DB_AND_WEB: &str = "resource \"terraform_data\" \"db\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 1\n}\n";
pub(crate) const WEB_CHANGED: &str = "resource \"terraform_data\" \"db\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 2\n}\n";

/// A stack holding `db` and `web`, applied directly by the admin.
pub(crate) fn applied_stack(stack: &str) -> (Team, Workspace) {
    let t = team(stack);
    let ws = Workspace::new(&t.s, stack, DB_AND_WEB);
    ws.tf_ok(&t.s.admin, &["init"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve"]);
    (t, ws)
}

fn stack_serial(t: &Team, stack: &str) -> Option<u64> {
    let v: Value =
        serde_json::from_str(&t.s.ok(&t.s.admin, &["stack", "show", stack, "--format", "json"]))
            .unwrap();
    v["current"]["serial"].as_u64()
}

/// The upload `airlock plan` would make from `ws`, with the binary of one plan file and the
/// JSON of another.
pub(crate) fn forged_upload(
    t: &Team,
    ws: &Workspace,
    stack: &str,
    bin: &str,
    json_of: &str,
) -> Value {
    let show = ws.tf_ok(&t.s.admin, &["show", "-json", json_of]);
    let version: Value = serde_json::from_str(&show).unwrap();
    let version = version["terraform_version"].as_str().unwrap().to_owned();
    let mut files: Vec<InputFile> = ["backend.tf", "main.tf", ".terraform.lock.hcl"]
        .iter()
        .filter(|f| ws.path(f).is_file())
        .map(|f| InputFile::of(f, &std::fs::read(ws.path(f)).unwrap()))
        .collect();
    files.sort();
    json!({
        "fingerprint": inputs::fingerprint(&version, &files),
        "inputs": files,
        "terraform_version": version,
        "planned_lineage": history_json(t, stack)["versions"][0]["lineage"],
        "planned_serial": stack_serial(t, stack),
        "plan_b64": B64.encode(std::fs::read(ws.path(bin)).unwrap()),
        "plan_json_b64": B64.encode(show.as_bytes()),
    })
}

pub(crate) fn upload(t: &Team, token: &str, stack: &str, body: &Value) -> (u16, String) {
    raw(
        "POST",
        &format!(
            "{}/api/v1/stacks/{}/runs",
            t.s.url,
            stack.replace('/', "%2F")
        ),
        token,
        body.to_string().as_bytes(),
    )
}

/// Item 1: the JSON of a harmless update uploaded with the binary of `plan -destroy`.
#[test]
fn json_of_one_plan_with_the_binary_of_another_is_refused() {
    let (t, ws) = applied_stack("dev/swap");
    ws.write_main(WEB_CHANGED);
    ws.tf_ok(&t.s.admin, &["plan", "-out=harmless.tfplan"]);
    ws.tf_ok(&t.s.admin, &["plan", "-destroy", "-out=destroy.tfplan"]);
    let forged = forged_upload(&t, &ws, "dev/swap", "destroy.tfplan", "harmless.tfplan");
    let (code, body) = upload(&t, &t.agent, "dev/swap", &forged);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("does not describe the binary plan"), "{body}");
    // The honest pair is accepted, and the run records the check that tied them.
    let honest = forged_upload(&t, &ws, "dev/swap", "harmless.tfplan", "harmless.tfplan");
    let (code, body) = upload(&t, &t.agent, "dev/swap", &honest);
    assert_eq!(code, 201, "{body}");
    let run: Value = serde_json::from_str(&body).unwrap();
    assert!(run["run"]["checks"][0]
        .as_str()
        .unwrap()
        .contains("binary plan"));
    // A binary planned against another serial than the one claimed is refused too.
    let mut stale = honest.clone();
    stale["planned_serial"] = json!(stack_serial(&t, "dev/swap").unwrap() + 1);
    let (code, body) = upload(&t, &t.agent, "dev/swap", &stale);
    assert_eq!(code, 400, "{body}");
}

/// Beyond the list: `terraform apply PLAN` runs the configuration embedded in the plan, not the
/// checkout's. An agent plans from a configuration with a `local-exec` provisioner (code that
/// would run on CI with the apply credentials) and uploads it with the clean checkout's inputs.
#[test]
fn a_plan_made_from_other_configuration_than_its_inputs_is_refused() {
    let (t, ws) = applied_stack("dev/embedded");
    ws.write_main("resource \"terraform_data\" \"db\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 2\n  provisioner \"local-exec\" {\n    command = \"echo pwned > /tmp/airlock-pwned\"\n  }\n}\n");
    ws.tf_ok(&t.s.admin, &["plan", "-out=evil.tfplan"]);
    ws.write_main(WEB_CHANGED);
    let forged = forged_upload(&t, &ws, "dev/embedded", "evil.tfplan", "evil.tfplan");
    let (code, body) = upload(&t, &t.agent, "dev/embedded", &forged);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("embedded configuration"), "{body}");
}

/// Item 1, apply side: the stored plan JSON is swapped for another plan's (someone with
/// database access); `airlock apply` asks terraform what the binary does and refuses.
#[test]
fn apply_refuses_a_binary_that_is_not_the_reviewed_json() {
    let (t, ws) = applied_stack("dev/showcheck");
    ws.write_main(WEB_CHANGED);
    let run = plan(&t, &ws, &t.agent, "dev/showcheck");
    t.s.ok(&t.approver, &["approve", &run]);
    ws.tf_ok(&t.s.admin, &["plan", "-out=other.tfplan", "-refresh=false"]);
    std::fs::remove_file(ws.path("other.tfplan")).unwrap();
    let other = ws.tf_ok(&t.s.admin, &["show", "-json"]);
    swap_run_artifact(&t, &run, "plan.json", other.as_bytes());
    let out = apply(&t, &ws, &t.ci, &run);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("differs from the reviewed plan JSON"),
        "{}",
        text(&out)
    );
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["status"], "failed");
    assert_eq!(
        history_json(&t, "dev/showcheck")["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

fn write_repo_file(ws: &Workspace, rel: &str, text: &str) {
    let root = ws.dir.parent().unwrap();
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const STRICT: &str = "stack \"dev/policy\" {\n  dir = \"tf\"\n}\nprotect {\n  addresses = [\"terraform_data.db\"]\n}\n";

/// Item 2: the policy judged is the repository's. The stack lives in `tf/` under the repository
/// root (where airlock.hcl is); CI applies from the root.
#[test]
fn the_repository_policy_is_the_enforced_policy() {
    let (t, ws) = applied_stack("dev/policy");
    let root = ws.dir.parent().unwrap().to_path_buf();
    write_repo_file(&ws, "airlock.hcl", STRICT);
    // A first reviewed run under the strict policy, applied from the checkout root.
    ws.write_main(WEB_CHANGED);
    let run = plan(&t, &ws, &t.agent, "dev/policy");
    t.s.ok(&t.approver, &["approve", &run]);
    let out = cli_in(&t.s, &t.ci, &root, &["apply", &run], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The applied airlock.hcl is now the policy in force for the state firewall too: even an
    // admin's direct `state rm` of what it protects needs a grant.
    let err = ws.tf_err(&t.s.admin, &["state", "rm", "terraform_data.db"]);
    assert!(err.contains("403"), "{err}");
    let why = t.s.ok(&t.s.admin, &["why", "dev/policy"]);
    assert!(why.contains("repository's airlock.hcl"), "{why}");
    // The agent weakens airlock.hcl in its checkout and plans the destruction of db.
    write_repo_file(
        &ws,
        "airlock.hcl",
        &format!("{STRICT}allow_destroy \"terraform_data.db\" {{\n  reason = \"cleanup\"\n}}\n"),
    );
    ws.write_main("resource \"terraform_data\" \"web\" {\n  input = 2\n}\n");
    let run = plan(&t, &ws, &t.agent, "dev/policy");
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["decision"], "review");
    assert_eq!(
        v["run"]["policy_changes"],
        json!(["adds allow_destroy for terraform_data.db"])
    );
    let shown = t.s.ok(&t.approver, &["run", "show", &run]);
    assert!(shown.contains("POLICY"), "{shown}");
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "1"]);
    // CI's checkout holds the repository's strict airlock.hcl: the apply is refused, naming it.
    write_repo_file(&ws, "airlock.hcl", STRICT);
    let out = cli_in(&t.s, &t.ci, &root, &["apply", &run], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("airlock.hcl (changed)"),
        "{}",
        text(&out)
    );
    assert_eq!(
        history_json(&t, "dev/policy")["versions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // An upload whose airlock.hcl is not the one its inputs list is refused.
    let mut body = forged_upload_with_config(&t, &ws, "dev/policy");
    body["config"] = json!("stack \"dev/policy\" {\n  dir = \"tf\"\n}\n");
    let (code, msg) = upload(&t, &t.agent, "dev/policy", &body);
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("airlock.hcl"), "{msg}");
}

fn forged_upload_with_config(t: &Team, ws: &Workspace, stack: &str) -> Value {
    ws.tf_ok(&t.s.admin, &["plan", "-out=p.tfplan"]);
    let mut body = forged_upload(t, ws, stack, "p.tfplan", "p.tfplan");
    body["config"] = json!(STRICT);
    body
}

/// Item 2: the repository's Rego policies judge governed runs, and server-side protection
/// (`airlock stack protect`) makes a destroy at least `review`, whatever the repository says.
#[test]
fn repository_rego_and_server_protection_judge_runs() {
    let (t, ws) = applied_stack("dev/rego");
    t.s.ok(
        &t.s.admin,
        &[
            "stack",
            "protect",
            "dev/rego",
            "--address",
            "terraform_data.db",
        ],
    );
    ws.write_main("resource \"terraform_data\" \"web\" {\n  input = 1\n}\n");
    let run = plan(&t, &ws, &t.agent, "dev/rego");
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["decision"], "review", "{v}");
    assert!(v.to_string().contains("server-protected"), "{v}");
    write_repo_file(
        &ws,
        "policy/no_web_change.rego",
        "package main\n\ndeny contains msg if {\n  some rc in input.resource_changes\n  rc.change.actions[_] == \"delete\"\n  msg := sprintf(\"%s may not be deleted\", [rc.address])\n}\n",
    );
    write_repo_file(
        &ws,
        "airlock.hcl",
        "stack \"dev/rego\" {\n  dir = \"tf\"\n}\n",
    );
    let run = plan(&t, &ws, &t.agent, "dev/rego");
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["decision"], "deny", "{v}");
    assert!(v.to_string().contains("may not be deleted"), "{v}");
}

/// Items 5 and 6: a run's grant covers every write of that run during a long apply (Terraform
/// persists intermediate snapshots) and nobody else's write, during or after the run.
#[test]
fn a_runs_grant_is_that_runs_only_and_lasts_its_whole_apply() {
    let stack = "dev/long";
    let t = team(stack);
    t.s.ok(
        &t.s.admin,
        &["stack", "protect", stack, "--address", "terraform_data.db*"],
    );
    // db_slow depends on db_fast, so it is destroyed first and slowly (longer than Terraform's
    // 20 s persist interval); db_fast's destroy then triggers an intermediate snapshot without
    // db_slow, and the final write removes db_fast.
    let slow = "resource \"terraform_data\" \"db_slow\" {\n  input = terraform_data.db_fast.id\n  provisioner \"local-exec\" {\n    when    = destroy\n    command = \"sleep 22\"\n  }\n}\nresource \"terraform_data\" \"db_fast\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 1\n}\n";
    let ws = Workspace::new(&t.s, stack, slow);
    ws.tf_ok(&t.s.admin, &["init"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve"]);
    // Destroy-time provisioners of removed resources run from a `removed` block.
    // web's quick update starts Terraform's persist clock (its first state update).
    ws.write_main("resource \"terraform_data\" \"web\" {\n  input = 2\n}\nremoved {\n  from = terraform_data.db_slow\n  lifecycle {\n    destroy = true\n  }\n  provisioner \"local-exec\" {\n    when    = destroy\n    command = \"sleep 22\"\n  }\n}\n");
    let run = plan(&t, &ws, &t.agent, stack);
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "2"]);
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    let h = history_json(&t, stack);
    let by_run = h["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["run_id"] == run.as_str())
        .count();
    assert!(
        by_run >= 2,
        "an intermediate snapshot was written during the apply: {h}"
    );
    // After the run, its grant is closed: no later write can use it.
    let (code, grants) = raw(
        "GET",
        &format!("{}/api/v1/stacks/dev%2Flong/grants", t.s.url),
        &t.s.admin,
        b"",
    );
    assert_eq!(code, 200, "{grants}");
    let grants: Value = serde_json::from_str(&grants).unwrap();
    let grants = grants["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1);
    assert!(
        !grants[0]["consumed_at"].is_null(),
        "the run's grant is closed: {grants:?}"
    );
}

/// Item 5: an admin's plain `state rm` cannot use a run's grant while the run applies.
#[test]
fn a_direct_write_cannot_use_a_runs_grant() {
    let (t, ws) = applied_stack("dev/steal");
    t.s.ok(
        &t.s.admin,
        &[
            "stack",
            "protect",
            "dev/steal",
            "--address",
            "terraform_data.db",
        ],
    );
    ws.write_main("resource \"terraform_data\" \"web\" {\n  input = 1\n}\n");
    let run = plan(&t, &ws, &t.agent, "dev/steal");
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "1"]);
    start_apply(&t, &run);
    let err = ws.tf_err(&t.s.admin, &["state", "rm", "terraform_data.db"]);
    assert!(err.contains("403"), "{err}");
    assert_eq!(
        history_json(&t, "dev/steal")["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

fn locked_write(t: &Team, stack: &str, body: &str) -> (u16, String) {
    let url = t.s.state_url(stack);
    let lock = r#"{"ID":"l-1","Operation":"OperationTypeApply","Info":"","Who":"t","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
    let (code, msg) = raw("LOCK", &url, &t.s.admin, lock.as_bytes());
    assert_eq!(code, 200, "{msg}");
    let out = raw(
        "POST",
        &format!("{url}?ID=l-1"),
        &t.s.admin,
        body.as_bytes(),
    );
    raw("UNLOCK", &url, &t.s.admin, lock.as_bytes());
    out
}

/// Item 11: one write with serial 2^63-1 made every later write and every restore fail.
#[test]
fn serial_jumps_are_bounded() {
    let t = team("dev/serial");
    let state = |serial: u64| {
        format!(
            r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"00000000-0000-0000-0000-000000000001","outputs":{{}},"resources":[]}}"#
        )
    };
    let (code, msg) = locked_write(&t, "dev/serial", &state(i64::MAX as u64));
    assert_eq!(code, 409, "{msg}");
    let (code, msg) = locked_write(&t, "dev/serial", &state(5));
    assert_eq!(code, 200, "{msg}");
    let (code, msg) = locked_write(&t, "dev/serial", &state(i64::MAX as u64));
    assert_eq!(code, 409, "{msg}");
    let (code, msg) = locked_write(&t, "dev/serial", &state(6));
    assert_eq!(code, 200, "{msg}");
}

/// Item 12: a restore reproduces the old version's bytes except the serial.
#[test]
fn restore_is_byte_exact() {
    let t = team("dev/restore");
    let body = |serial: u64| {
        format!("{{\"version\":4,\"terraform_version\":\"1.11.4\",\"serial\":{serial},\"lineage\":\"00000000-0000-0000-0000-000000000002\",\n \"outputs\":{{\"big\":{{\"value\":123456789012345678901234567890.12345678901234567890,\"type\":\"number\"}},\"e\":{{\"value\":1e400,\"type\":\"number\"}}}},\"resources\":[]}}\n")
    };
    assert_eq!(locked_write(&t, "dev/restore", &body(1)).0, 200);
    assert_eq!(
        locked_write(&t, "dev/restore", &body(2).replace("1e400", "2")).0,
        200
    );
    t.s.ok(
        &t.s.admin,
        &[
            "state",
            "restore",
            "dev/restore",
            "--version",
            "1",
            "--reason",
            "undo",
        ],
    );
    let (code, current) = raw("GET", &t.s.state_url("dev/restore"), &t.s.admin, b"");
    assert_eq!(code, 200);
    assert_eq!(current, body(3));
}

/// Not an attack: a stack in a subdirectory is applied from the checkout root by default.
#[test]
fn apply_defaults_to_the_planned_directory() {
    let (t, ws) = applied_stack("dev/subdir");
    write_repo_file(
        &ws,
        "airlock.hcl",
        "stack \"dev/subdir\" {\n  dir = \"tf\"\n}\n",
    );
    ws.write_main(WEB_CHANGED);
    let run = plan(&t, &ws, &t.agent, "dev/subdir");
    assert_eq!(run_json(&t, &run)["run"]["planned_dir"], "tf");
    t.s.ok(&t.approver, &["approve", &run]);
    let root: &Path = ws.dir.parent().unwrap();
    let out = cli_in(&t.s, &t.ci, root, &["apply", &run], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(run_json(&t, &run)["run"]["checks"]
        .to_string()
        .contains("terraform show -json of the approved plan equals"));
}

/// Malformed and hostile run uploads: each gets a 400 that says what is wrong, and no run is
/// stored.
#[test]
fn hostile_run_uploads_get_a_clear_400() {
    let (t, ws) = applied_stack("dev/hostile");
    ws.write_main(WEB_CHANGED);
    ws.tf_ok(&t.s.admin, &["plan", "-out=p.tfplan"]);
    let good = forged_upload(&t, &ws, "dev/hostile", "p.tfplan", "p.tfplan");
    let mutate = |f: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            mutate(&|b| b["plan_b64"] = json!(B64.encode(b"not a zip"))),
            "not a zip archive",
        ),
        (
            mutate(&|b| b["plan_b64"] = json!(B64.encode(b"PK\x03\x04\x00\x00"))),
            "binary plan",
        ),
        (mutate(&|b| b["plan_b64"] = json!("%%%")), "base64"),
        (
            mutate(&|b| b["plan_json_b64"] = json!(B64.encode(b"{\"resource_changes\": 5}"))),
            "plan JSON",
        ),
        (
            mutate(&|b| b["fingerprint"] = json!("0".repeat(64))),
            "digest of the listed inputs",
        ),
        (
            mutate(&|b| {
                let mut files = b["inputs"].as_array().unwrap().clone();
                files.reverse();
                b["inputs"] = json!(files);
            }),
            "sorted",
        ),
        (
            mutate(&|b| b["inputs"][0]["path"] = json!("/etc/passwd")),
            "relative path",
        ),
        (
            mutate(&|b| {
                b["policies"] = json!((0..201)
                    .map(|i| json!({"path": format!("policy/p{i}.rego"), "text": "package main"}))
                    .collect::<Vec<_>>());
            }),
            "policy files",
        ),
        (
            mutate(&|b| b["policies"] = json!([{"path": "policy/x.rego", "text": "package main"}])),
            "policy files sent are not",
        ),
        (
            mutate(&|b| b["planned_dir"] = json!("/abs")),
            "relative path",
        ),
        (mutate(&|b| b["surprise"] = json!(1)), "unknown field"),
        // The change request's URL is shown to approvers as a link.
        (
            mutate(&|b| b["change_request_url"] = json!("javascript:alert(1)")),
            "change_request_url must be an http(s) URL",
        ),
        (
            mutate(&|b| b["change_request_url"] = json!("https://e.example/a b")),
            "change_request_url must be an http(s) URL",
        ),
        (
            mutate(&|b| {
                b["change_request_url"] = json!(format!("https://e.example/{}", "a".repeat(3000)))
            }),
            "change_request_url must be an http(s) URL",
        ),
        (mutate(&|b| b["change_request"] = json!(-1)), "expected u64"),
        (
            mutate(&|b| {
                // A claimed version that is not the binary's, with a consistent fingerprint.
                let files: Vec<InputFile> = serde_json::from_value(b["inputs"].clone()).unwrap();
                b["terraform_version"] = json!("1.99.0");
                b["fingerprint"] = json!(inputs::fingerprint("1.99.0", &files));
            }),
            "made by terraform",
        ),
    ];
    for (body, want) in cases {
        let (code, msg) = upload(&t, &t.agent, "dev/hostile", &body);
        assert_eq!(code, 400, "{want}: {msg}");
        assert!(msg.contains(want), "{want}: {msg}");
    }
    let runs = t.s.ok(
        &t.s.admin,
        &["runs", "--stack", "dev/hostile", "--format", "json"],
    );
    let runs: Value = serde_json::from_str(&runs).unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "nothing stored");
}

/// Review finding: the plan's `tfconfig/modules.json` is read by Terraform with Go's
/// case-insensitive decoder (last duplicate wins). An agent marked its local module "remote"
/// for airlock (`"Source"`) while Terraform kept `"source": "./m"`, so the module's embedded
/// files, with a `local-exec` provisioner, went unchecked. The manifest is now read strictly.
#[test]
fn a_manifest_that_terraform_reads_differently_is_refused() {
    let t = team("dev/manifest");
    let ws = Workspace::new(
        &t.s,
        "dev/manifest",
        "module \"m\" {\n  source = \"./m\"\n}\n",
    );
    std::fs::create_dir_all(ws.path("m")).unwrap();
    let clean = "resource \"terraform_data\" \"x\" {\n  input = 1\n}\n";
    std::fs::write(ws.path("m/main.tf"), format!("{clean}resource \"terraform_data\" \"y\" {{\n  provisioner \"local-exec\" {{\n    command = \"env > /tmp/airlock-pwned\"\n  }}\n}}\n")).unwrap();
    ws.tf_ok(&t.s.admin, &["init"]);
    ws.tf_ok(&t.s.admin, &["plan", "-out=evil.tfplan"]);
    std::fs::write(ws.path("m/main.tf"), clean).unwrap();
    let script = r#"
import json, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
zin = zipfile.ZipFile(src)
zout = zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED)
for item in zin.infolist():
    data = zin.read(item.filename)
    if item.filename == "tfconfig/modules.json":
        text = data.decode()
        text = text.replace('"Source": "./m"', '"Source": "registry.terraform.io/acme/m/null", "source": "./m"')
        data = text.encode()
    zout.writestr(item, data)
zout.close()
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(ws.path("evil.tfplan"))
        .arg(ws.path("forged.tfplan"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut files: Vec<InputFile> = ["backend.tf", "main.tf", "m/main.tf"]
        .iter()
        .map(|f| InputFile::of(f, &std::fs::read(ws.path(f)).unwrap()))
        .collect();
    files.sort();
    let mut body = forged_upload(&t, &ws, "dev/manifest", "forged.tfplan", "evil.tfplan");
    body["inputs"] = json!(files);
    body["fingerprint"] = json!(inputs::fingerprint(
        body["terraform_version"].as_str().unwrap(),
        &files
    ));
    let (code, msg) = upload(&t, &t.agent, "dev/manifest", &body);
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("modules.json"), "{msg}");
    // Without the manifest trick, the module's changed file is caught as unreviewed configuration.
    body["plan_b64"] = json!(B64.encode(std::fs::read(ws.path("evil.tfplan")).unwrap()));
    let (code, msg) = upload(&t, &t.agent, "dev/manifest", &body);
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("embedded configuration"), "{msg}");
}

/// Review finding: `terraform apply PLAN` writes state to the backend stored in the plan. An
/// agent planned against its own endpoint (serving a copy of the state), so the apply's writes
/// would bypass the firewall and history. The server refuses a backend that is not an airlock
/// `/state/{stack}`; it cannot know every URL it is reached by (the `Host` header is the
/// uploader's), so an endpoint with the same path passes it, and `airlock apply` refuses it
/// against the URL CI trusts, before Terraform runs.
#[test]
fn a_plan_against_another_backend_is_refused() {
    let t = team("dev/elsewhere");
    let evil = TestServer::start();
    evil.ok(&evil.admin, &["stack", "create", "dev/elsewhere"]);
    t.s.ok(&t.s.admin, &["stack", "create", "dev/other"]);
    let ws = Workspace::new(&evil, "dev/elsewhere", DB_AND_WEB);
    ws.tf_ok(&evil.admin, &["init"]);
    ws.tf_ok(&evil.admin, &["plan", "-out=p.tfplan"]);
    let mut body = forged_upload(&t, &ws, "dev/elsewhere", "p.tfplan", "p.tfplan");
    body["planned_lineage"] = json!(null);
    body["planned_serial"] = json!(null);
    // Another stack's path is refused by the server, whatever Host the upload claims.
    let (code, msg) = upload(&t, &t.agent, "dev/other", &body);
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("backend"), "{msg}");
    // The same path on another server passes the server, and CI refuses it.
    let (code, msg) = upload(&t, &t.agent, "dev/elsewhere", &body);
    assert_eq!(code, 201, "{msg}");
    let run: Value = serde_json::from_str(&msg).unwrap();
    let run = run["run"]["id"].as_str().unwrap().to_owned();
    t.s.ok(&t.approver, &["approve", &run]);
    // Every file under the stack's directory is an input and the forged upload listed no plan
    // file: CI's checkout has none.
    std::fs::remove_file(ws.path("p.tfplan")).unwrap();
    let out = apply(&t, &ws, &t.ci, &run);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("backend address"), "{}", text(&out));
    assert_eq!(
        evil.version_count("dev/elsewhere"),
        0,
        "nothing reached the other endpoint"
    );
    assert_eq!(t.s.version_count("dev/elsewhere"), 0);
}

/// Review finding: variables set by the planner (`TF_VAR_*`, `-var`) decide what the apply does
/// (a provisioner command, a provider endpoint) without showing in the resource changes.
/// Approvers now see every variable that is not the code's default, and the run needs review.
#[test]
fn planner_variables_are_shown_to_approvers() {
    let t = team("dev/vars");
    let ws = Workspace::new(
        &t.s,
        "dev/vars",
        "variable \"region\" {\n  default = \"eu-west-1\"\n}\nresource \"terraform_data\" \"notify\" {\n  input = var.region\n}\n",
    );
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &["plan", ".", "--stack", "dev/vars", "--format", "json"],
        &[("TF_VAR_region", "x; id > /tmp/pwned #")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"]["decision"], "review", "{v}");
    let shown = t.s.ok(
        &t.approver,
        &["run", "show", v["run"]["id"].as_str().unwrap()],
    );
    assert!(
        shown.contains("variable region = \"x; id > /tmp/pwned #\""),
        "{shown}"
    );
}

/// Real configurations have outputs, and the plan JSON's `output_changes` entries are changes
/// themselves (`{"actions": [...]}`, not wrapped in `change`). A plan with outputs is governed
/// end to end, a plan that changes only an output has something to approve, and the reviewed
/// JSON's output changes must be the binary's: one hidden from it is refused.
#[test]
fn plans_with_outputs_are_governed_and_their_output_changes_are_tied_to_the_binary() {
    let config = |value: &str| format!("{DB_AND_WEB}output \"web\" {{\n  value = {value}\n}}\n");
    let t = team("dev/outputs");
    let ws = Workspace::new(&t.s, "dev/outputs", &config("terraform_data.web.output"));
    let run = plan(&t, &ws, &t.agent, "dev/outputs");
    assert_eq!(run_json(&t, &run)["run"]["status"], "needs_approval");
    t.s.ok(&t.approver, &["approve", &run]);
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));

    // Only the output changes: a run with something to approve.
    ws.write_main(&config("\"v2\""));
    let run = plan(&t, &ws, &t.agent, "dev/outputs");
    assert_eq!(run_json(&t, &run)["run"]["status"], "needs_approval");

    // The same plan with the output change hidden from the reviewed JSON.
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["plan", "-out=out.tfplan"]);
    let mut forged = forged_upload(&t, &ws, "dev/outputs", "out.tfplan", "out.tfplan");
    let shown = B64
        .decode(forged["plan_json_b64"].as_str().unwrap())
        .unwrap();
    let mut shown: Value = serde_json::from_slice(&shown).unwrap();
    assert_eq!(shown["output_changes"]["web"]["actions"], json!(["update"]));
    shown["output_changes"] = json!({});
    forged["plan_json_b64"] = json!(B64.encode(shown.to_string()));
    let (code, body) = upload(&t, &t.agent, "dev/outputs", &forged);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("does not describe the binary plan"), "{body}");
}

/// Review (session 14): Terraform plans every change from the plan's prior state, but applies a
/// delete with the change's own `before` (the provider is told to delete that object), and the
/// server tied only addresses and actions of the binary's changes to the JSON. An agent whose
/// plan deletes `web` rewrote the binary's `before` to carry `db`'s id: reviewers read "delete
/// web", and the apply deleted `db`'s object. Each forgery below is refused, or shown.
#[test]
fn a_plan_whose_changes_do_not_start_from_its_prior_state_is_refused() {
    let (t, ws) = applied_stack("dev/before");
    let state: Value = serde_json::from_str(&ws.tf_ok(&t.s.admin, &["show", "-json"])).unwrap();
    let id = |name: &str| -> String {
        let resources = state["values"]["root_module"]["resources"]
            .as_array()
            .unwrap();
        let r = resources.iter().find(|r| r["name"] == name).unwrap();
        r["values"]["id"].as_str().unwrap().to_owned()
    };
    let (db, web) = (id("db"), id("web"));
    assert_eq!(db.len(), web.len(), "ids are UUIDs: {db} {web}");
    ws.write_main("resource \"terraform_data\" \"db\" {\n  input = 1\n}\n");
    ws.tf_ok(&t.s.admin, &["plan", "-out=honest.tfplan"]);
    // Rewrites the plan file's members: `tfplan` (the changes), `tfstate` (the prior state).
    let script = r#"
import json, sys, zipfile
src, dst, what, old, new = sys.argv[1:6]
zin = zipfile.ZipFile(src)
zout = zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED)
for item in zin.infolist():
    data = zin.read(item.filename)
    if item.filename == "tfplan" and what in ("changes", "both"):
        assert old.encode() in data
        data = data.replace(old.encode(), new.encode())
    if item.filename == "tfstate" and what in ("state", "both"):
        assert old.encode() in data
        data = data.replace(old.encode(), new.encode())
    if item.filename == "tfstate" and what == "unknown-key":
        state = json.loads(data)
        state["bogus"] = 1
        data = json.dumps(state).encode()
    if item.filename == "tfstate" and what == "ghost":
        state = json.loads(data)
        ghost = json.loads(json.dumps([r for r in state["resources"] if r["name"] == "db"][0]))
        ghost["name"] = "ghost"
        state["resources"].append(ghost)
        data = json.dumps(state).encode()
    zout.writestr(item, data)
zout.close()
"#;
    t.s.ok(
        &t.s.admin,
        &[
            "stack",
            "protect",
            "dev/before",
            "--address",
            "terraform_data.db",
        ],
    );
    let forge_from = |source: &str, what: &str| -> Value {
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(ws.path(&format!("{source}.tfplan")))
            .arg(ws.path(&format!("{what}.tfplan")))
            .args([what, &web, &db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = format!("{what}.tfplan");
        forged_upload(&t, &ws, "dev/before", &file, &file)
    };
    let forge = |what: &str| forge_from("honest", what);
    let refused = |what: &str, says: &str| {
        let (code, body) = upload(&t, &t.agent, "dev/before", &forge(what));
        assert_eq!(code, 400, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body}");
    };
    // The delete of `web` carries `db`'s id; the prior state is untouched.
    refused(
        "changes",
        "terraform_data.web starts from another object than the plan's prior state",
    );
    // A prior state the server cannot read (Terraform's reader ignores the unknown key) no
    // longer switches off the comparison with the stored state.
    refused("unknown-key", "prior state does not read");
    // An object the stack's state does not have, in the prior state.
    refused(
        "ghost",
        "prior state has terraform_data.ghost, which the stack's state does not",
    );
    // Both forged alike: the JSON is consistent, but the object the plan starts from at `web`
    // is not the stored one. Reviewers are told, though `web` is not protected.
    let (code, body) = upload(&t, &t.agent, "dev/before", &forge("both"));
    assert_eq!(code, 201, "{body}");
    let run: Value = serde_json::from_str(&body).unwrap();
    let findings = run["run"]["report"]["findings"].as_array().unwrap().clone();
    assert!(
        findings
            .iter()
            .any(|f| f["rule"] == "changed-outside-terraform"
                && f["address"] == "terraform_data.web"),
        "{findings:?}"
    );
    // And what it does at `web` it does to `db`'s protected object, which is still at `db`.
    assert!(
        findings.iter().any(|f| f["rule"] == "same-object-twice"
            && f["address"] == "terraform_data.web"
            && f["message"]
                .as_str()
                .unwrap()
                .contains("stored at terraform_data.db, which the server protects")),
        "{findings:?}"
    );
    // A refresh-only plan (accepting drift writes its prior state) adds no object either.
    ws.tf_ok(
        &t.s.admin,
        &["plan", "-refresh-only", "-out=refresh.tfplan"],
    );
    let (code, body) = upload(&t, &t.agent, "dev/before", &forge_from("refresh", "ghost"));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("prior state has terraform_data.ghost, which the stack's state does not"),
        "{body}"
    );
    // The honest plan is accepted, with no such finding.
    let honest = forged_upload(&t, &ws, "dev/before", "honest.tfplan", "honest.tfplan");
    let (code, body) = upload(&t, &t.agent, "dev/before", &honest);
    assert_eq!(code, 201, "{body}");
    let run: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !run["run"]["report"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "changed-outside-terraform"),
        "{body}"
    );
}

/// The prior-state check on genuine plans: a destroy plan whose configuration moves an object
/// (Terraform's refresh before the destroy applies the move, so the deletes name no previous
/// address) and a plan that imports an object are accepted.
#[test]
fn destroy_plans_with_a_pending_move_and_imports_start_from_their_prior_state() {
    let (t, ws) = applied_stack("dev/genuine");
    ws.write_main("resource \"terraform_data\" \"db2\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 1\n}\nmoved {\n  from = terraform_data.db\n  to   = terraform_data.db2\n}\n");
    ws.tf_ok(&t.s.admin, &["plan", "-destroy", "-out=destroy.tfplan"]);
    let body = forged_upload(&t, &ws, "dev/genuine", "destroy.tfplan", "destroy.tfplan");
    let (code, answer) = upload(&t, &t.agent, "dev/genuine", &body);
    assert_eq!(code, 201, "{answer}");
    ws.write_main("resource \"terraform_data\" \"db\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 1\n}\nresource \"terraform_data\" \"found\" {\n}\nimport {\n  to = terraform_data.found\n  id = \"0f8fad5b-d9cb-469f-a165-70867728950e\"\n}\n");
    ws.tf_ok(&t.s.admin, &["plan", "-out=import.tfplan"]);
    let body = forged_upload(&t, &ws, "dev/genuine", "import.tfplan", "import.tfplan");
    let (code, answer) = upload(&t, &t.agent, "dev/genuine", &body);
    assert_eq!(code, 201, "{answer}");
    assert!(!answer.contains("same-object-twice"), "{answer}");
}
