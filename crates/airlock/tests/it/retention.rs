//! Run artifact retention end to end: a terminal run's binary plan (`plan.tfplan`, the whole
//! prior state and every planned value) is purged with the transition that ends the run, and
//! nobody downloads it again; its JSON, logs and hash stay; backups carry its tombstone between
//! engines, and an older backup that still holds the bytes is purged on import. Real `airlock
//! server`, real `terraform` (`terraform_data` only).

use std::path::Path;

use serde_json::{json, Value};

use crate::support::*;

/// `GET /api/v1/runs/RUN/artifacts/NAME` as `token`: status and body bytes.
fn download(s: &TestServer, token: &str, run: &str, name: &str) -> (u16, Vec<u8>) {
    let url = format!("{}/api/v1/runs/{run}/artifacts/{name}", s.url);
    let r = match ureq::get(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let status = r.status();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes).unwrap();
    (status, bytes)
}

/// The binary plan of `run` is gone for everyone: 410 with a message naming the run, the
/// artifact and when, for those who may read plans; refused as before for the others.
fn assert_purged(s: &TestServer, run: &str, readers: &[&str], others: &[&str]) {
    for token in readers {
        let (code, body) = download(s, token, run, "plan.tfplan");
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 410, "{run}: {body}");
        assert!(
            body.contains(run) && body.contains("plan.tfplan") && body.contains("purged at"),
            "{body}"
        );
        let (code, _) = download(s, token, run, "plan.json");
        assert_eq!(code, 200, "{run}: the reviewed plan JSON stays");
    }
    for token in others {
        let (code, _) = download(s, token, run, "plan.tfplan");
        assert!(code == 401 || code == 403, "{run}: {code}");
    }
}

/// The last audit event of `action` about `run`, as the admin reads it.
fn audit_event(s: &TestServer, action: &str, run: &str) -> Value {
    let events = s.audit_of(&s.admin, action);
    events
        .iter()
        .find(|e| e["detail"]["run"] == run)
        .unwrap_or_else(|| panic!("no {action} of {run}: {events:?}"))
        .clone()
}

/// Plan, approve, apply: the binary is purged once the run is applied (410 for admin, approver
/// and CI; the agent and reader are refused as before; the run-bound token is revoked); its
/// JSON, hash and log stay, `run show` and the audit say so, and the run cannot be applied
/// again. A run whose apply failed, a withdrawn run and a rejected run are purged likewise; an
/// open run's binary is served until it ends, and while it applies its own run-bound token
/// downloads it.
#[test]
fn a_terminal_runs_binary_plan_is_purged_and_nobody_downloads_it_again() {
    let t = team("dev/keep");
    let reader = t.s.token("auditor", "reader");
    let admin = t.s.admin.clone();
    let ws = Workspace::new(&t.s, "dev/keep", &data_resources(2));
    let run = plan(&t, &ws, &t.agent, "dev/keep");
    t.s.ok(&t.approver, &["approve", &run]);
    let (code, binary) = download(&t.s, &admin, &run, "plan.tfplan");
    assert_eq!(code, 200, "an approved run's plan is served");
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    let shown = run_json(&t, &run);
    assert_eq!(shown["run"]["status"], "applied");
    assert_purged(
        &t.s,
        &run,
        &[&admin, &t.approver, &t.ci],
        &[&t.agent, &reader],
    );
    // What was applied stays identifiable by hash.
    let sha = shown["run"]["plan_sha256"].as_str().unwrap();
    assert_eq!(shown["plan_file"]["sha256"], sha);
    assert_eq!(shown["plan_file"]["bytes"], binary.len());
    assert!(shown["plan_file"]["purged_at"].is_i64(), "{shown}");
    let show = t.s.ok(&admin, &["run", "show", &run]);
    assert!(
        show.contains("binary plan: purged at") && show.contains(sha),
        "{show}"
    );
    let (code, log) = raw(
        "GET",
        &format!("{}/api/v1/runs/{run}/log", t.s.url),
        &admin,
        b"",
    );
    assert!(code == 200 && !log.is_empty(), "the apply log stays");
    // The purge is in the transition's audit event, and the chain verifies.
    let event = audit_event(&t.s, "run.applied", &run);
    assert_eq!(
        event["detail"]["plan_purged"],
        json!({"artifact": "plan.tfplan", "sha256": sha, "bytes": binary.len()})
    );
    let verified = t.s.ok(&admin, &["audit", "--verify"]);
    assert!(verified.contains("audit chain intact"), "{verified}");
    // Applying it again fails on its status, clearly, not on a missing file.
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(
        !out.status.success() && text(&out).contains("applied"),
        "{}",
        text(&out)
    );

    // An apply that fails: while it applies, its run-bound token downloads the plan (the
    // apply needs it); once it failed, the plan is purged and the token revoked.
    ws.write_main(&data_resources(3));
    let failed = plan(&t, &ws, &t.agent, "dev/keep");
    t.s.ok(&t.approver, &["approve", &failed]);
    let run_token = start_apply(&t, &failed);
    assert_eq!(download(&t.s, &run_token, &failed, "plan.tfplan").0, 200);
    let (code, body) = raw(
        "POST",
        &format!("{}/api/v1/runs/{failed}/finish", t.s.url),
        &run_token,
        br#"{"success": false, "log_b64": ""}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(run_json(&t, &failed)["run"]["status"], "failed");
    assert_purged(
        &t.s,
        &failed,
        &[&admin, &t.approver, &t.ci],
        &[&run_token, &t.agent, &reader],
    );
    // A failed run is planned again, never re-applied.
    let (code, body) = start_apply_answer(&t, &failed);
    assert!(code == 409 && body.contains("failed"), "{code} {body}");

    // Withdrawn by its author, rejected by an approver: purged with the transition.
    let withdrawn = plan(&t, &ws, &t.agent, "dev/keep");
    assert_eq!(download(&t.s, &admin, &withdrawn, "plan.tfplan").0, 200);
    t.s.ok(&t.agent, &["run", "withdraw", &withdrawn]);
    assert_purged(&t.s, &withdrawn, &[&admin, &t.approver], &[&t.agent]);
    assert!(audit_event(&t.s, "run.withdraw", &withdrawn)["detail"]["plan_purged"].is_object());
    let rejected = plan(&t, &ws, &t.agent, "dev/keep");
    t.s.ok(&t.approver, &["reject", &rejected, "--reason", "not now"]);
    assert_purged(&t.s, &rejected, &[&admin, &t.approver], &[&t.agent]);
    let runs = t.s.ok(&admin, &["runs", "--stack", "dev/keep"]);
    assert!(runs.contains(&rejected) && runs.contains(&run), "{runs}");
    let verified = t.s.ok(&admin, &["audit", "--verify"]);
    assert!(verified.contains("audit chain intact"), "{verified}");
}

/// Exports the server data in `data` to the backup `bk`, which verifies.
fn export_verified(data: &Path, bk: &Path) {
    let (ok, out) = backup_cli(&["backup", "export", dir_arg(bk), "--data-dir", dir_arg(data)]);
    assert!(ok, "{out}");
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(bk)]);
    assert!(ok && out.contains("backup OK"), "{out}");
}

/// A team on `stack` on a server whose store is the directory `data` of `tmp` (exported once
/// the server is killed), and a workspace of `n` `terraform_data` on the stack.
fn team_on_disk(
    tmp: &tempfile::TempDir,
    stack: &str,
    n: usize,
) -> (std::path::PathBuf, Team, Workspace) {
    let data = tmp.path().join("data");
    let t = team_on(
        TestServer::start_on(&Backing::Dir(data.clone()), None, &[], &[]),
        stack,
    );
    let ws = Workspace::new(&t.s, stack, &data_resources(n));
    (data, t, ws)
}

/// The forged backup `bk` (`what`) does not verify, saying `says`, and is not imported into
/// `into`.
fn refused(bk: &Path, into: &Path, says: &str, what: &str) {
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(bk)]);
    assert!(!ok && out.contains(says), "{what}: {out}");
    let (ok, out) = backup_cli(&["backup", "import", dir_arg(bk), "--data-dir", dir_arg(into)]);
    assert!(!ok && out.contains("does not verify"), "{what}: {out}");
}

/// The artifact entry `name` of the run file `rel` of backup `bk`.
fn entry(bk: &Path, rel: &str, name: &str) -> Value {
    let v: Value = serde_json::from_slice(&std::fs::read(bk.join(rel)).unwrap()).unwrap();
    v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap()
        .clone()
}

/// Edits the artifact entry `name` of run file `rel` (the manifest follows, as whoever can write
/// the backup would make it).
fn forge_entry(bk: &Path, rel: &str, name: &str, edit: impl Fn(&mut Value)) {
    forge_backup_file(bk, rel, |v| {
        for a in v["artifacts"].as_array_mut().unwrap() {
            if a["name"] == name {
                edit(a);
            }
        }
    });
}

/// Backups carry a purged plan as a tombstone (name, SHA-256, size, purge time; no bytes), from
/// SQLite to PostgreSQL and back, exactly; verify refuses a tombstone re-given bytes, one whose
/// hash is not the run's plan, and an open run's plan made a tombstone; a format-4 backup whose
/// applied run still carries its binary plan verifies with a note and imports with the plan
/// purged.
#[test]
fn tombstones_survive_backups_and_an_older_backup_is_purged_on_import() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mut t, ws) = team_on_disk(&tmp, "dev/bk", 2);
    let admin = t.s.admin.clone();
    let applied = plan(&t, &ws, &t.agent, "dev/bk");
    t.s.ok(&t.approver, &["approve", &applied]);
    let (_, binary) = download(&t.s, &admin, &applied, "plan.tfplan");
    let out = apply(&t, &ws, &t.ci, &applied);
    assert!(out.status.success(), "{}", text(&out));
    ws.write_main(&data_resources(3));
    let open = plan(&t, &ws, &t.agent, "dev/bk");
    let (code, open_binary) = download(&t.s, &admin, &open, "plan.tfplan");
    assert_eq!(code, 200);
    t.s.kill();

    let bk = tmp.path().join("backup");
    export_verified(&data, &bk);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(bk.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "airlock-backup/5");
    let (applied_rel, open_rel) = ("runs/0001/run.json", "runs/0002/run.json");
    let tombstone = entry(&bk, applied_rel, "plan.tfplan");
    assert_eq!(tombstone["sha256"], sha256_hex(&binary), "{tombstone}");
    assert_eq!(tombstone["size"], binary.len());
    assert!(tombstone["purged_at"].is_i64() && tombstone.get("file").is_none());
    assert!(entry(&bk, open_rel, "plan.tfplan")["file"].is_string());
    let backed_up = std::fs::read_dir(bk.join("runs/0001/artifacts")).unwrap();
    for f in backed_up {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert_ne!(bytes, binary, "the purged plan's bytes are in no file");
    }

    // Attacks on the backup, each on its own copy: verify refuses, import refuses.
    let file = "runs/0001/artifacts/99.bin";
    // (what, what verify says, the forgery)
    type Attack<'a> = (&'a str, &'a str, Box<dyn Fn(&Path) + 'a>);
    let attacks: [Attack<'_>; 4] = [
        (
            "bytes re-attached to the tombstone",
            "carries bytes",
            Box::new(|b: &Path| {
                put_backup_file(b, file, &binary);
                forge_entry(b, applied_rel, "plan.tfplan", |a| {
                    a["file"] = json!(file);
                    a.as_object_mut().unwrap().remove("purged_at");
                });
            }),
        ),
        (
            "other bytes, the tombstone's hash rewritten to theirs",
            "is not the run's plan",
            Box::new(|b: &Path| {
                forge_entry(b, applied_rel, "plan.tfplan", |a| {
                    a["sha256"] = json!(sha256_hex(b"other"));
                });
            }),
        ),
        (
            "the plan JSON made a tombstone",
            "only a terminal run's binary plan",
            Box::new(|b: &Path| {
                forge_entry(b, applied_rel, "plan.json", |a| {
                    a["purged_at"] = json!(1);
                    a.as_object_mut().unwrap().remove("file");
                });
            }),
        ),
        (
            "an open run's plan made a tombstone",
            "only a terminal run's binary plan",
            Box::new(|b: &Path| {
                forge_entry(b, open_rel, "plan.tfplan", |a| {
                    a["purged_at"] = json!(1);
                    a.as_object_mut().unwrap().remove("file");
                });
            }),
        ),
    ];
    for (i, (what, says, forge)) in attacks.iter().enumerate() {
        let copy = tmp.path().join(format!("forged{i}"));
        copy_dir(&bk, &copy);
        forge(&copy);
        refused(
            &copy,
            &tmp.path().join(format!("forged-data{i}")),
            says,
            what,
        );
    }

    // SQLite -> PostgreSQL -> SQLite: the tombstone comes back exactly.
    let db = TestDatabase::new("retention");
    let (ok, out) = backup_cli(&["migrate", "--database-url", &db.url]);
    assert!(ok, "{out}");
    let (ok, out) = backup_cli(&["backup", "import", dir_arg(&bk), "--database-url", &db.url]);
    assert!(ok, "{out}");
    // Straight back out, before a server adds audit events (a refused download is one).
    let bk2 = tmp.path().join("backup2");
    let (ok, out) = backup_cli(&["backup", "export", dir_arg(&bk2), "--database-url", &db.url]);
    assert!(ok, "{out}");
    let pg = TestServer::start_on(&Backing::Url(db.url.clone()), Some(&admin), &[], &[]);
    assert_purged(&pg, &applied, &[&admin], &[]);
    assert_eq!(
        download(&pg, &admin, &open, "plan.tfplan"),
        (200, open_binary)
    );
    drop(pg);
    let data2 = tmp.path().join("data2");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&bk2),
        "--data-dir",
        dir_arg(&data2),
    ]);
    assert!(ok, "{out}");
    let m2: Value =
        serde_json::from_slice(&std::fs::read(bk2.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"], m2["files"], "lossless both ways");
    assert_eq!(entry(&bk2, applied_rel, "plan.tfplan"), tombstone);

    // A format-4 backup (before tombstones) whose applied run still holds its binary plan:
    // verified with a note, imported with the plan purged (its hash and size kept).
    let old = tmp.path().join("backup-v4");
    copy_dir(&bk, &old);
    put_backup_file(&old, file, &binary);
    forge_entry(&old, applied_rel, "plan.tfplan", |a| {
        a["file"] = json!(file);
        a.as_object_mut().unwrap().remove("purged_at");
    });
    let mpath = old.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["format"] = json!("airlock-backup/4");
    std::fs::write(&mpath, m.to_string()).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&old)]);
    assert!(ok && out.contains("carry their binary plan"), "{out}");
    let data3 = tmp.path().join("data3");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&old),
        "--data-dir",
        dir_arg(&data3),
    ]);
    assert!(ok && out.contains("carry their binary plan"), "{out}");
    let restored = TestServer::start_on(&Backing::Dir(data3), Some(&admin), &[], &[]);
    assert_purged(&restored, &applied, &[&admin], &[]);
    let shown: Value =
        serde_json::from_str(&restored.ok(&admin, &["run", "show", &applied, "--format", "json"]))
            .unwrap();
    assert_eq!(shown["plan_file"]["sha256"], sha256_hex(&binary));
    assert_eq!(shown["plan_file"]["bytes"], binary.len());
    let verified = restored.ok(&admin, &["audit", "--verify"]);
    assert!(verified.contains("audit chain intact"), "{verified}");
}

/// A run that a server older than migration 0018 ended (in a rolling upgrade: its status
/// written, its binary plan kept) is exported as a tombstone, so the backup verifies; the next
/// start of this server purges the bytes, audited.
#[test]
fn a_run_an_older_server_ended_is_backed_up_as_a_tombstone_and_purged_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mut t, ws) = team_on_disk(&tmp, "dev/old", 1);
    let backing = Backing::Dir(data.clone());
    let run = plan(&t, &ws, &t.agent, "dev/old");
    let admin = t.s.admin.clone();
    let (_, binary) = download(&t.s, &admin, &run, "plan.tfplan");
    t.s.kill();
    let conn = rusqlite::Connection::open(data.join("airlock.db")).unwrap();
    conn.execute(
        "UPDATE runs SET status = 'rejected', record = json_set(record, '$.status', 'rejected') WHERE id = ?1",
        [&run],
    )
    .unwrap();
    drop(conn);

    let bk = tmp.path().join("backup");
    export_verified(&data, &bk);
    let tombstone = entry(&bk, "runs/0001/run.json", "plan.tfplan");
    assert!(
        tombstone["purged_at"].is_i64() && tombstone.get("file").is_none(),
        "{tombstone}"
    );
    assert_eq!(tombstone["sha256"], sha256_hex(&binary));

    let s = TestServer::start_on(&backing, Some(&admin), &[], &[]);
    let (code, _) = download(&s, &admin, &run, "plan.tfplan");
    assert_eq!(code, 410, "purged at start");
    assert_eq!(
        audit_event(&s, "run.plan_purged", &run)["detail"]["status"],
        "rejected"
    );
}

/// A run nobody approves, applies or withdraws before its expiry is closed by the server's
/// sweep (at start, then every ten minutes), not only when a request next touches it: it is
/// `expired`, its binary plan purged (410), audited as the system's `run.expired`. A run before
/// its expiry is left alone.
#[test]
fn a_run_nobody_touches_after_its_expiry_is_closed_and_its_plan_purged() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mut t, ws) = team_on_disk(&tmp, "dev/stale", 1);
    let backing = Backing::Dir(data.clone());
    let old = plan(&t, &ws, &t.agent, "dev/stale");
    let young = plan(&t, &ws, &t.agent, "dev/stale");
    let admin = t.s.admin.clone();
    t.s.kill();
    // Eight days pass for the first run (the TTL is seven).
    let conn = rusqlite::Connection::open(data.join("airlock.db")).unwrap();
    let week = 8 * 86_400_000i64;
    conn.execute(
        "UPDATE runs SET created_at = created_at - ?2, record = json_set(json_set(record, '$.created_at', json_extract(record, '$.created_at') - ?2), '$.expires_at', json_extract(record, '$.expires_at') - ?2) WHERE id = ?1",
        rusqlite::params![&old, week],
    )
    .unwrap();
    drop(conn);

    let s = TestServer::start_on(&backing, Some(&admin), &[], &[]);
    let status = |run: &str| -> String {
        let v: Value =
            serde_json::from_str(&s.ok(&admin, &["run", "show", run, "--format", "json"])).unwrap();
        v["run"]["status"].as_str().unwrap_or_default().to_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status(&old) != "expired" {
        assert!(
            std::time::Instant::now() < deadline,
            "the overdue run was not closed: {}",
            status(&old)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, _) = download(&s, &admin, &old, "plan.tfplan");
    assert_eq!(code, 410, "purged with the expiry");
    let event = audit_event(&s, "run.expired", &old);
    assert_eq!(event["actor"], "system (run expiry)", "{event}");
    assert!(event["detail"]["plan_purged"].is_object(), "{event}");
    assert_eq!(status(&young), "needs_approval");
    let (code, _) = download(&s, &admin, &young, "plan.tfplan");
    assert_eq!(code, 200, "a run before its expiry keeps its plan");
}

/// ATTACK (whoever can write a backup): an approval added to a run record of the backup, so that
/// the restored run is applied unreviewed (an apply counts the record's approvals). Verify, and
/// so import, refuse an approval that is not a `run.approve` event of that run by that approver
/// and user: one whose user was changed, one copied from another run, and one approval
/// doubled. The genuine backup verifies.
#[test]
fn an_approval_a_backup_adds_to_a_run_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mut t, ws) = team_on_disk(&tmp, "dev/appr", 1);
    let approved = plan(&t, &ws, &t.agent, "dev/appr");
    t.s.ok(&t.approver, &["approve", &approved]);
    let waiting = plan(&t, &ws, &t.agent, "dev/appr");
    t.s.kill();
    let bk = tmp.path().join("backup");
    export_verified(&data, &bk);
    let (approved_rel, waiting_rel) = ("runs/0001/run.json", "runs/0002/run.json");
    let run = |rel: &str| -> Value {
        serde_json::from_slice(&std::fs::read(bk.join(rel)).unwrap()).unwrap()
    };
    assert_eq!(run(approved_rel)["record"]["id"], approved.as_str());
    assert_eq!(run(waiting_rel)["record"]["id"], waiting.as_str());
    let approval = run(approved_rel)["record"]["approvals"][0].clone();
    assert!(approval["by"].is_string(), "{approval}");
    let plan_of_waiting = run(waiting_rel)["record"]["plan_sha256"].clone();
    // (what, which run file, the edit)
    type Forgery<'a> = (&'a str, &'a str, Box<dyn Fn(&mut Value) + 'a>);
    let forgeries: [Forgery<'_>; 3] = [
        (
            "the approval's user changed (one person would count as two)",
            approved_rel,
            Box::new(|v: &mut Value| {
                v["record"]["approvals"][0]["by_user"] = json!("someone-else");
            }),
        ),
        (
            "the approver's approval copied to the waiting run",
            waiting_rel,
            Box::new(|v: &mut Value| {
                let mut a = approval.clone();
                a["plan_sha256"] = plan_of_waiting.clone();
                v["record"]["approvals"] = json!([a]);
                v["record"]["status"] = json!("approved");
            }),
        ),
        (
            "the approval doubled",
            approved_rel,
            Box::new(|v: &mut Value| {
                v["record"]["approvals"]
                    .as_array_mut()
                    .unwrap()
                    .push(approval.clone());
            }),
        ),
    ];
    for (i, (what, rel, edit)) in forgeries.iter().enumerate() {
        let copy = tmp.path().join(format!("forged{i}"));
        copy_dir(&bk, &copy);
        forge_backup_file(&copy, rel, |v| edit(v));
        let into = tmp.path().join(format!("forged-data{i}"));
        refused(
            &copy,
            &into,
            "is not a run.approve event of the audit chain",
            what,
        );
    }
}

/// What the gate judged of a run, and who planned it, are bound to its `run.create` event: a
/// backup that turns a judged run into another (its decision, what it destroys, the inputs it
/// was planned from, the approvals it needs) or gives it another author (who could then approve
/// it) does not verify. A backup whose events come from an older server (fewer keys, runs from
/// before users) still verifies.
#[test]
fn a_backup_cannot_change_what_a_run_is_or_who_planned_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, mut t, ws) = team_on_disk(&tmp, "dev/judged", 1);
    let waiting = plan(&t, &ws, &t.agent, "dev/judged");
    let approved = plan(&t, &ws, &t.agent, "dev/judged");
    t.s.ok(&t.approver, &["approve", &approved]);
    t.s.kill();
    let bk = tmp.path().join("backup");
    export_verified(&data, &bk);
    let rel = "runs/0001/run.json";
    let read = |rel: &str| -> Value {
        serde_json::from_slice(&std::fs::read(bk.join(rel)).unwrap()).unwrap()
    };
    assert_eq!(read(rel)["record"]["id"], waiting.as_str());
    let approver_user = read("runs/0002/run.json")["record"]["approvals"][0]["by_user"].clone();
    assert!(approver_user.is_string(), "{approver_user}");
    let decision = read(rel)["record"]["decision"].as_str().unwrap().to_owned();
    type Forgery<'a> = (&'a str, &'a str, Box<dyn Fn(&mut Value) + 'a>);
    let forgeries: [Forgery<'_>; 6] = [
        (
            "the gate's decision changed",
            "decision",
            Box::new(|v: &mut Value| {
                let other = if decision == "deny" { "review" } else { "deny" };
                v["record"]["decision"] = json!(other);
            }),
        ),
        (
            "an instance it destroys added (or hidden)",
            "destroys",
            Box::new(|v: &mut Value| {
                v["record"]["destroys"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("aws_db_instance.prod"));
            }),
        ),
        (
            "the inputs it was planned from changed",
            "fingerprint",
            Box::new(|v: &mut Value| v["record"]["fingerprint"] = json!("0".repeat(64))),
        ),
        (
            "the approvals it needs lowered",
            "required_approvals",
            Box::new(|v: &mut Value| v["record"]["required_approvals"] = json!(0)),
        ),
        (
            "the approver made its author's user, so that its real author may approve it",
            "user",
            Box::new(|v: &mut Value| v["record"]["author_user"] = approver_user.clone()),
        ),
        (
            "its author user emptied, so that the one of its token counts",
            "user",
            Box::new(|v: &mut Value| v["record"]["author_user"] = json!("")),
        ),
    ];
    for (i, (what, key, edit)) in forgeries.iter().enumerate() {
        let copy = tmp.path().join(format!("forged{i}"));
        copy_dir(&bk, &copy);
        forge_backup_file(&copy, rel, |v| edit(v));
        let into = tmp.path().join(format!("forged-data{i}"));
        refused(&copy, &into, key, what);
        refused(&copy, &into, "differ from its run.create event", what);
    }
    // An older server's backup: its run.create events hold only the first keys, and its runs
    // name no author user. It verifies and imports.
    let old = tmp.path().join("older");
    copy_dir(&bk, &old);
    rewrite_backup_audit(&old, |r| {
        if r.action == "run.create" {
            let keep = ["run", "decision", "destroys", "plan_sha256", "fingerprint"];
            r.detail
                .as_object_mut()
                .unwrap()
                .retain(|k, _| keep.contains(&k.as_str()));
        }
    });
    for rel in [rel, "runs/0002/run.json"] {
        forge_backup_file(&old, rel, |v| v["record"]["author_user"] = json!(""));
    }
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&old)]);
    assert!(ok && out.contains("backup OK"), "{out}");
}
