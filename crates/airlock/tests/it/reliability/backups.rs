//! Backups move a stack's history between engines; verify catches tampering; format 1 still
//! imports.

use serde_json::{json, Value};

use super::{assert_verified, backup_cli, current_lock, dir_arg, history, lock_body, sha256_hex};
use crate::support::*;

// ---- backups move a stack's history between engines ----

#[test]
fn backup_round_trips_sqlite_to_postgres_and_back_and_verify_catches_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut s = TestServer::start_on(&Backing::Dir(data.clone()), None, &[], &[]);
    let admin = s.admin.clone();
    s.ok(&admin, &["stack", "create", "dev/app"]);
    s.ok(&admin, &["stack", "create", "prod/db", "--production"]);
    s.ok(
        &admin,
        &["user", "add-forge-login", "admin", "github:The-Admin"],
    );
    let reader = s.token("auditor", "reader");
    let _spare = s.token("spare", "ci");
    let listed: Value =
        serde_json::from_str(&s.ok(&admin, &["token", "list", "--format", "json"])).unwrap();
    let auditor = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "auditor")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.ok(&admin, &["token", "revoke", &auditor]);
    let ws = Workspace::new(&s, "dev/app", &data_resources(3));
    ws.tf_ok(&admin, &["init"]);
    ws.tf_ok(&admin, &["apply", "-auto-approve"]);
    ws.write_main(&data_resources(5));
    ws.tf_ok(&admin, &["apply", "-auto-approve"]);
    s.ok(
        &admin,
        &[
            "state",
            "restore",
            "dev/app",
            "--version",
            "1",
            "--reason",
            "test restore",
        ],
    );
    s.ok(
        &admin,
        &[
            "stack",
            "allow-removal",
            "dev/app",
            "--address",
            "terraform_data.r[0]",
            "--ttl",
            "1h",
            "--reason",
            "test",
        ],
    );
    // A server policy set, then its next version (the first one retired): both are kept.
    let policies = tmp.path().join("server-policy");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("deny.rego"),
        "package main\n\ndeny contains \"no\" if { false }\n",
    )
    .unwrap();
    s.ok(
        &admin,
        &[
            "policy",
            "add",
            "--stack",
            "prod/*",
            policies.to_str().unwrap(),
        ],
    );
    s.ok(
        &admin,
        &[
            "policy",
            "add",
            "--stack",
            "prod/*",
            policies.to_str().unwrap(),
        ],
    );
    // A governed run (record and artifacts) proposed by an agent, whose plan-phase token may
    // read another stack's state (its read stacks travel with the token).
    let agent = s.token("bot", "agent");
    let planned = std::process::Command::new(AIRLOCK)
        .args([
            "plan",
            ".",
            "--stack",
            "dev/app",
            "--read-stack",
            "prod/db",
            "--format",
            "json",
        ])
        .current_dir(&ws.dir)
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &agent)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let planned: Value = serde_json::from_slice(&planned.stdout)
        .unwrap_or_else(|_| panic!("airlock plan: {}", String::from_utf8_lossy(&planned.stderr)));
    let run_id = planned["run"]["id"].as_str().unwrap().to_owned();
    let (code, _) = raw(
        "LOCK",
        &s.state_url("prod/db"),
        &admin,
        &lock_body("held-over-backup"),
    );
    assert_eq!(code, 200);
    let before = history(&s, "dev/app");
    s.kill();

    // Export from SQLite, verify, import into PostgreSQL.
    let bk = tmp.path().join("backup");
    let (ok, out) = backup_cli(&[
        "backup",
        "export",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "exported 2 stack(s), 3 version(s), 1 user(s), 5 token(s), 1 grant(s), 1 lock(s), 1 run(s)"
        ),
        "{out}"
    );
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(ok && out.contains("backup OK"), "{out}");
    let tokens = std::fs::read_to_string(bk.join("tokens.json")).unwrap();
    assert!(
        !tokens.contains(&admin) && !tokens.contains(&reader),
        "a secret leaked into the backup"
    );
    // Each token's minter travels with it (the admin minted `auditor`): through PostgreSQL and
    // back, byte for byte, below.
    let auditor_entry: Value = serde_json::from_str::<Value>(&tokens)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "auditor")
        .unwrap()
        .clone();
    assert!(
        auditor_entry["minted_by"]
            .as_str()
            .is_some_and(|m| m.starts_with("tok_")),
        "{auditor_entry}"
    );
    let listed: Value = serde_json::from_str(&tokens).unwrap();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["read_stacks"] == json!(["prod/db"])),
        "the plan-phase token's read stacks are backed up: {tokens}"
    );

    let db = TestDatabase::new("backup");
    let (ok, out) = backup_cli(&["migrate", "--database-url", &db.url]);
    assert!(ok && out.contains("postgres"), "{out}");
    let (ok, out) = backup_cli(&["backup", "import", dir_arg(&bk), "--database-url", &db.url]);
    assert!(ok, "{out}");
    let (ok, out) = backup_cli(&["backup", "import", dir_arg(&bk), "--database-url", &db.url]);
    assert!(
        !ok && out.contains("not empty"),
        "a second import is refused: {out}"
    );

    // Straight back out of PostgreSQL: the same files, byte for byte (audit included).
    let bk2 = tmp.path().join("backup2");
    let (ok, out) = backup_cli(&["backup", "export", dir_arg(&bk2), "--database-url", &db.url]);
    assert!(ok, "{out}");

    // The PostgreSQL server serves the same history, locks and tokens (the old secret works),
    // and the audit chain still verifies.
    let pg = TestServer::start_on(&Backing::Url(db.url.clone()), Some(&admin), &[], &[]);
    assert_eq!(history(&pg, "dev/app"), before);
    let users: Value =
        serde_json::from_str(&pg.ok(&admin, &["user", "list", "--format", "json"])).unwrap();
    assert_eq!(
        users["users"][0]["forge_logins"],
        json!(["github:the-admin"]),
        "users keep their forge logins: {users}"
    );
    let sets: Value =
        serde_json::from_str(&pg.ok(&admin, &["policy", "list", "--format", "json"])).unwrap();
    assert_eq!(
        sets.to_string().matches("prod/*").count(),
        2,
        "both versions of the server policy set survive the backup: {sets}"
    );
    assert_eq!(
        current_lock(&pg, "prod/db").as_deref(),
        Some("held-over-backup")
    );
    let (code, _) = raw("GET", &pg.state_url("dev/app"), &reader, b"");
    assert_eq!(code, 401, "the revoked token stays revoked");
    assert_verified(&pg);
    let shown: Value =
        serde_json::from_str(&pg.ok(&admin, &["run", "show", &run_id, "--format", "json"]))
            .unwrap();
    assert_eq!(
        shown["run"]["id"],
        run_id.as_str(),
        "the run came along: {shown}"
    );
    let pulled = pg.cli(&admin, &["state", "pull", "dev/app", "--version", "2"]);
    assert!(pulled.status.success());
    assert_eq!(sha256_hex(&pulled.stdout), before[1].1);
    drop(pg);

    // ... and into a fresh SQLite data dir.
    let data2 = tmp.path().join("data2");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&bk2),
        "--data-dir",
        dir_arg(&data2),
    ]);
    assert!(ok, "{out}");
    let m1: Value =
        serde_json::from_slice(&std::fs::read(bk.join("manifest.json")).unwrap()).unwrap();
    let m2: Value =
        serde_json::from_slice(&std::fs::read(bk2.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m1["files"], m2["files"], "lossless both ways");
    assert_eq!(m1["summary"], m2["summary"]);

    // Tampering is caught: a changed state byte, a changed audit record, an extra file.
    let version = bk.join("stacks/0001/versions/2.tfstate");
    let original = std::fs::read(&version).unwrap();
    let mut tampered = original.clone();
    let i = tampered.iter().position(|b| *b == b'v').unwrap();
    tampered[i] = b'w';
    std::fs::write(&version, &tampered).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(
        !ok && out.contains("backup BROKEN") && out.contains("2.tfstate"),
        "{out}"
    );
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&tmp.path().join("data3")),
    ]);
    assert!(!ok && out.contains("does not verify"), "{out}");
    std::fs::write(&version, &original).unwrap();
    // An edited audit record with a manifest forged to match: the chain itself gives it away.
    let audit_path = bk.join("audit.jsonl");
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let manifest_path = bk.join("manifest.json");
    let manifest = std::fs::read(&manifest_path).unwrap();
    let forged_audit = audit.replacen("\"outcome\":\"ok\"", "\"outcome\":\"denied\"", 1);
    assert_ne!(forged_audit, audit);
    let mut forged: Value = serde_json::from_slice(&manifest).unwrap();
    forged["files"]["audit.jsonl"] =
        json!({"sha256": sha256_hex(forged_audit.as_bytes()), "size": forged_audit.len()});
    std::fs::write(&audit_path, &forged_audit).unwrap();
    std::fs::write(&manifest_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(!ok && out.contains("audit chain broken"), "{out}");
    std::fs::write(&audit_path, &audit).unwrap();
    std::fs::write(&manifest_path, &manifest).unwrap();
    std::fs::write(bk.join("stray.txt"), "x").unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(!ok && out.contains("stray.txt"), "{out}");
    std::fs::remove_file(bk.join("stray.txt")).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(ok, "{out}");
}

/// A backup written before users existed (format `airlock-backup/1`) still verifies and
/// imports; its tokens get users and parents exactly as the store's migration gives them.
#[test]
fn backup_in_format_1_without_users_still_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("v1");
    std::fs::create_dir_all(&bk).unwrap();
    let admin = "tok_00000000000000a1";
    let bot = "tok_00000000000000b2";
    let plan = "tok_00000000000000c3";
    let token = |id: &str, name: &str, role: &str, by: &str, revoked: Option<i64>| {
        json!({"id": id, "name": name, "role": role, "stacks": [], "created_at": 1000,
               "expires_at": null, "revoked_at": revoked, "created_by": by, "run_id": null,
               "secret_sha256": sha256_hex(id.as_bytes())})
    };
    let tokens = serde_json::to_vec(&json!([
        token(admin, "bootstrap-admin", "admin", "system", None),
        token(
            bot,
            "bot",
            "agent",
            &format!("bootstrap-admin ({admin})"),
            Some(5000)
        ),
        token(plan, "plan for bot", "agent", &format!("bot ({bot})"), None),
    ]))
    .unwrap();
    std::fs::write(bk.join("tokens.json"), &tokens).unwrap();
    std::fs::write(bk.join("audit.jsonl"), b"").unwrap();
    let manifest = json!({
        "format": "airlock-backup/1",
        "created_at": "2026-01-01T00:00:00Z",
        "source_engine": "sqlite",
        "summary": {"stacks": 0, "versions": 0, "tokens": 3, "grants": 0, "locks": 0, "runs": 0,
                    "audit_events": 0, "audit_head": "0".repeat(64)},
        "files": {
            "tokens.json": {"sha256": sha256_hex(&tokens), "size": tokens.len()},
            "audit.jsonl": {"sha256": sha256_hex(b""), "size": 0},
        },
    });
    std::fs::write(bk.join("manifest.json"), manifest.to_string()).unwrap();
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(ok && out.contains("backup OK"), "{out}");
    let data = tmp.path().join("data");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    // Read back through a format-2 export.
    let bk2 = tmp.path().join("v2");
    let (ok, out) = backup_cli(&[
        "backup",
        "export",
        dir_arg(&bk2),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    let users: Value =
        serde_json::from_slice(&std::fs::read(bk2.join("users.json")).unwrap()).unwrap();
    assert_eq!(users[0]["name"], "admin", "{users}");
    let tokens: Value =
        serde_json::from_slice(&std::fs::read(bk2.join("tokens.json")).unwrap()).unwrap();
    let by_id = |id: &str| {
        tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(admin)["user"], "admin");
    assert_eq!(by_id(bot)["user"], bot, "each old token is its own user");
    assert_eq!(by_id(plan)["parent_id"], bot);
    assert_eq!(
        by_id(plan)["user"],
        bot,
        "a phase token belongs to its root's user"
    );
    assert_eq!(
        by_id(plan)["revoked_at"],
        5000,
        "a phase token of a revoked token is revoked with it"
    );
}

/// A backup written with one audit chain (format `airlock-backup/2`) still verifies and
/// imports: its records are the legacy chain, which the global chain then continues, so the
/// restored server's new events verify after it. A format-2 backup holding a chained record is
/// refused (an old format cannot carry the new chains).
#[test]
fn backup_in_format_2_with_one_audit_chain_still_imports_and_the_chains_continue_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let s = TestServer::start_on(&Backing::Dir(src.clone()), None, &[], &[]);
    let admin = s.admin.clone();
    s.ok(&s.admin, &["stack", "create", "dev/old"]);
    let (code, _) = raw(
        "LOCK",
        &s.state_url("dev/old"),
        &s.admin,
        &lock_body("old-1"),
    );
    assert_eq!(code, 200);
    let (code, _) = raw(
        "UNLOCK",
        &s.state_url("dev/old"),
        &s.admin,
        &lock_body("old-1"),
    );
    assert_eq!(code, 200);
    let bk = tmp.path().join("bk");
    let (ok, out) = backup_cli(&[
        "backup",
        "export",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&src),
    ]);
    assert!(ok, "{out}");
    drop(s);

    // Rewrite it as format 2 wrote it: the same events as one chain, hashed the old way.
    let mut prev = airlock_core::audit::GENESIS.to_owned();
    let mut lines = String::new();
    let audit = std::fs::read_to_string(bk.join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"chain\""), "format 3 writes the chains");
    let mut chained_line = String::new();
    for (i, line) in audit.lines().enumerate() {
        let mut r: airlock_core::audit::AuditRecord = serde_json::from_str(line).unwrap();
        chained_line = line.to_owned();
        (r.seq, r.chain, r.chain_seq, r.prev_hash) = (i as i64 + 1, None, None, prev.clone());
        r.hash = r.expected_hash();
        prev = r.hash.clone();
        lines.push_str(&serde_json::to_string(&r).unwrap());
        lines.push('\n');
    }
    assert!(!lines.contains("\"chain\""));
    let write_v2 = |audit: &str| {
        std::fs::write(bk.join("audit.jsonl"), audit).unwrap();
        let path = bk.join("manifest.json");
        let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m["format"] = json!("airlock-backup/2");
        m["summary"]["audit_head"] = json!(prev);
        m["summary"]["audit_events"] = json!(audit.lines().count());
        m["files"]["audit.jsonl"] =
            json!({"sha256": sha256_hex(audit.as_bytes()), "size": audit.len()});
        std::fs::write(&path, m.to_string()).unwrap();
    };
    // A chained record in a format-2 backup is refused.
    write_v2(&format!("{lines}{chained_line}\n"));
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(!ok && out.contains("audit chain broken"), "{out}");

    write_v2(&lines);
    let (ok, out) = backup_cli(&["backup", "verify", dir_arg(&bk)]);
    assert!(ok && out.contains("backup OK"), "{out}");
    let data = tmp.path().join("restored");
    let (ok, out) = backup_cli(&[
        "backup",
        "import",
        dir_arg(&bk),
        "--data-dir",
        dir_arg(&data),
    ]);
    assert!(ok, "{out}");
    // The restored server appends chained events after the legacy chain; all of it verifies.
    let r = TestServer::start_on(&Backing::Dir(data), Some(&admin), &[], &[]);
    r.ok(&admin, &["stack", "create", "dev/new"]);
    let (code, _) = raw("LOCK", &r.state_url("dev/old"), &admin, &lock_body("new-1"));
    assert_eq!(code, 200);
    let audit = r.ok(&admin, &["audit", "--verify"]);
    assert!(audit.contains("audit chain intact"), "{audit}");
    let events: Value =
        serde_json::from_str(&r.ok(&admin, &["audit", "--format", "json", "--limit", "1000"]))
            .unwrap();
    let events = events["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e.get("chain").is_none()),
        "the legacy records stay"
    );
    assert!(
        events
            .iter()
            .any(|e| e["chain"] == "dev/old" && e["action"] == "lock"),
        "new events of an old stack go to its chain: {events:?}"
    );
}

/// On PostgreSQL the audit's global positions may have gaps (a rolled-back transaction's
/// number), so a backup's event count is not its head's position: the verification of a real
/// backup of such a server is still recorded (the head's position is sent, the server checks
/// the count up to it, seals included), and a count that does not fit the head is refused.
#[test]
fn a_backup_of_a_postgres_server_with_audit_gaps_records_its_verification() {
    let db = TestDatabase::new("verifygap");
    let s = TestServer::start_on(&Backing::Url(db.url.clone()), None, &[], &[]);
    let admin = s.admin.clone();
    s.ok(&admin, &["stack", "create", "dev/a"]);
    // What a rolled-back append leaves: a position taken from the sequence and never used.
    db.sql("SELECT nextval('audit_seq')");
    s.ok(&admin, &["stack", "create", "dev/b"]);
    // A running server seals its stack chains every second: a backup holds those seals, and
    // the count the server checks must count them too (it once left them out, as listings do).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if !s.audit_of(&admin, "audit.seal").is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no seal");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let tmp = tempfile::tempdir().unwrap();
    let bk = tmp.path().join("bk");
    let (ok, out) = backup_cli(&["backup", "export", dir_arg(&bk), "--database-url", &db.url]);
    assert!(ok, "{out}");
    let audit = std::fs::read_to_string(bk.join("audit.jsonl")).unwrap();
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = events.last().unwrap();
    assert!(
        last["seq"].as_u64().unwrap() > events.len() as u64,
        "the audit has a gap: {} events, the last at {}",
        events.len(),
        last["seq"]
    );
    let out = std::process::Command::new(AIRLOCK)
        .args(["backup", "verify", dir_arg(&bk), "--record"])
        .env("AIRLOCK_URL", &s.url)
        .env("AIRLOCK_TOKEN", &admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The head's real position with a count that does not fit it.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(bk.join("manifest.json")).unwrap()).unwrap();
    let sent = ureq::post(&format!("{}/api/v1/backups/verifications", s.url))
        .set("Authorization", &format!("Bearer {admin}"))
        .send_json(json!({"ok": true, "manifest_sha256": "a".repeat(64),
               "exported_at": manifest["created_at"],
               "audit_events": last["seq"], "audit_head_seq": last["seq"],
               "audit_head": last["hash"], "problems": 0, "stacks": 2, "versions": 0}));
    let (code, body) = match sent {
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        other => panic!("expected a refusal: {other:?}"),
    };
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("events up to its head"), "{body}");
}
