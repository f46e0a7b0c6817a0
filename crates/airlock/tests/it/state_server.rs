//! The state server end to end: real `airlock server`, real `terraform`, real HTTP.

use crate::support::*;

#[test]
fn init_plan_apply_destroy_and_history() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/app"]);
    let ws = Workspace::new(&s, "dev/app", &data_resources(3));
    ws.tf_ok(&s.admin, &["init"]);
    let plan = ws.tf_ok(&s.admin, &["plan"]);
    assert!(plan.contains("3 to add"), "{plan}");
    assert_eq!(s.version_count("dev/app"), 0, "a plan never writes state");
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    ws.write_main(&data_resources(2));
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    ws.tf_ok(&s.admin, &["destroy", "-auto-approve"]);
    assert_eq!(s.serials("dev/app"), [1, 2, 3]);

    let show = s.ok(&s.admin, &["state", "show", "dev/app", "--version", "1"]);
    assert!(show.contains("terraform_data.r[2]"), "{show}");
    assert!(show.contains("3 instance(s)"), "{show}");
    let diff = s.ok(&s.admin, &["state", "diff", "dev/app", "1", "2"]);
    assert!(
        diff.contains("- terraform_data.r[2]") && diff.contains("0 added, 1 removed"),
        "{diff}"
    );
    // pull --version is byte-exact: it matches what the backend serves terraform, which is
    // what terraform sent (`terraform state pull` adds one newline when printing).
    let pulled = s.cli(&s.admin, &["state", "pull", "dev/app", "--version", "3"]);
    let (code, served) = raw("GET", &s.state_url("dev/app"), &s.admin, b"");
    assert_eq!((code, pulled.stdout.as_slice()), (200, served.as_bytes()));
    let tf_pulled = ws.tf(&s.admin, &["state", "pull"]);
    assert_eq!(tf_pulled.stdout, [served.as_bytes(), b"\n"].concat());
    let verify = s.ok(&s.admin, &["state", "verify"]);
    assert!(
        verify.contains("checked 3 version(s): 0 failure(s)"),
        "{verify}"
    );
    let audit = s.ok(&s.admin, &["audit", "--verify"]);
    assert!(audit.contains("audit chain intact"), "{audit}");
}

#[test]
fn unknown_stack_is_refused_not_empty() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "prod/app"]);
    // backend-config refuses an unknown stack name.
    let out = s.cli(&s.admin, &["backend-config", "prod/ap"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    // A backend pointed at a typo'd stack must not look like an empty state.
    let ws = Workspace::new(&s, "prod/app", &data_resources(1));
    std::fs::write(
        ws.path("backend.tf"),
        std::fs::read_to_string(ws.path("backend.tf"))
            .unwrap()
            .replace("prod/app", "prod/ap"),
    )
    .unwrap();
    let err = ws.tf_err(&s.admin, &["init"]);
    assert!(err.contains("422"), "{err}");
}

#[test]
fn concurrent_applies_with_lock_timeout_both_succeed() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/race"]);
    let a = Workspace::new(
        &s,
        "dev/race",
        "resource \"terraform_data\" \"a\" {\n  input = \"a\"\n}\n",
    );
    a.tf_ok(&s.admin, &["init"]);
    a.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    let b = Workspace::new(
        &s,
        "dev/race",
        "resource \"terraform_data\" \"a\" {\n  input = \"b\"\n}\n",
    );
    b.tf_ok(&s.admin, &["init"]);
    a.write_main("resource \"terraform_data\" \"a\" {\n  input = \"a2\"\n}\n");
    let handles: Vec<_> = [a, b]
        .into_iter()
        .map(|ws| {
            let token = s.admin.clone();
            std::thread::spawn(move || {
                ws.tf(&token, &["apply", "-auto-approve", "-lock-timeout=60s"])
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        s.serials("dev/race"),
        [1, 2, 3],
        "serials consecutive, nothing lost"
    );
}

#[test]
fn lock_conflict_names_the_holder_and_force_unlock_needs_permission() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/locks"]);
    let approver = s.token("alice", "approver");
    let agent = s.token("bot", "agent");
    let ws = Workspace::new(&s, "dev/locks", &data_resources(1));
    ws.tf_ok(&s.admin, &["init"]);
    let holder = r#"{"ID":"holder-1234","Operation":"OperationTypeApply","Info":"ci job 42","Who":"alice@build","Version":"1.11.4","Created":"2025-01-02T03:04:05Z","Path":""}"#;
    let (code, _) = raw(
        "LOCK",
        &s.state_url("dev/locks"),
        &s.admin,
        holder.as_bytes(),
    );
    assert_eq!(code, 200);
    let (code, body) = raw(
        "LOCK",
        &s.state_url("dev/locks"),
        &s.admin,
        br#"{"ID":"other","Operation":"OperationTypeApply"}"#,
    );
    assert_eq!(
        (code, body.as_str()),
        (423, holder),
        "423 with the holder's lock info verbatim"
    );
    let err = ws.tf_err(&s.admin, &["plan"]);
    assert!(
        err.contains("ID=holder-1234"),
        "terraform names the holder: {err}"
    );
    let err = ws.tf_err(&s.admin, &["plan", "-lock-timeout=2s"]);
    assert!(err.contains("holder-1234"), "{err}");

    let err = ws.tf_err(&agent, &["force-unlock", "-force", "holder-1234"]);
    assert!(err.contains("403"), "agent force-unlock refused: {err}");
    let show = s.ok(&s.admin, &["stack", "show", "dev/locks"]);
    assert!(show.contains("holder-1234"), "still locked: {show}");
    let out = ws.tf_ok(&approver, &["force-unlock", "-force", "holder-1234"]);
    assert!(out.contains("successfully unlocked"), "{out}");
    ws.tf_ok(&s.admin, &["plan"]);
    let audit = s.ok(&s.admin, &["audit", "--limit", "1000"]);
    assert!(
        audit.contains("lock.force_unlock") && audit.contains("denied"),
        "{audit}"
    );
}

#[test]
fn state_push_of_old_serial_other_lineage_or_force_is_refused() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/push"]);
    let ws = Workspace::new(&s, "dev/push", &data_resources(2));
    ws.tf_ok(&s.admin, &["init"]);
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    let old = s
        .cli(&s.admin, &["state", "pull", "dev/push", "--version", "1"])
        .stdout;
    std::fs::write(ws.path("old.tfstate"), &old).unwrap();
    ws.write_main(&data_resources(3));
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    let before = s.serials("dev/push");

    // Older serial: terraform itself refuses; with -force, the server refuses.
    ws.tf_err(&s.admin, &["state", "push", "old.tfstate"]);
    let err = ws.tf_err(&s.admin, &["state", "push", "-force", "old.tfstate"]);
    assert!(
        err.contains("409") || err.contains("Failed to persist"),
        "{err}"
    );
    // Another lineage, even with a high serial and -force.
    let mut other: serde_json::Value = serde_json::from_slice(&old).unwrap();
    other["lineage"] = "11111111-2222-3333-4444-555555555555".into();
    other["serial"] = 99.into();
    std::fs::write(
        ws.path("other.tfstate"),
        serde_json::to_vec_pretty(&other).unwrap(),
    )
    .unwrap();
    let err = ws.tf_err(&s.admin, &["state", "push", "-force", "other.tfstate"]);
    assert!(err.contains("409"), "{err}");
    assert_eq!(s.serials("dev/push"), before, "history untouched");
}

#[test]
fn protected_instances_need_a_single_use_removal_grant() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/db"]);
    s.ok(
        &s.admin,
        &[
            "stack",
            "protect",
            "dev/db",
            "--address",
            "terraform_data.db*",
        ],
    );
    let approver = s.token("alice", "approver");
    let ws = Workspace::new(&s, "dev/db", "resource \"terraform_data\" \"db\" {\n  count = 2\n  input = \"x\"\n}\nresource \"terraform_data\" \"web\" {\n  input = \"w\"\n}\n");
    ws.tf_ok(&s.admin, &["init"]);
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    let err = ws.tf_err(&s.admin, &["state", "rm", "terraform_data.db[0]"]);
    assert!(err.contains("403"), "{err}");
    // Unprotected instances may go.
    ws.tf_ok(&s.admin, &["state", "rm", "terraform_data.web"]);
    // A grant from an approver allows exactly one write removing the instance.
    s.ok(
        &approver,
        &[
            "stack",
            "allow-removal",
            "dev/db",
            "--address",
            "terraform_data.db[0]",
            "--ttl",
            "1h",
            "--reason",
            "decommissioned",
        ],
    );
    ws.tf_ok(&s.admin, &["state", "rm", "terraform_data.db[0]"]);
    s.ok(
        &approver,
        &[
            "stack",
            "allow-removal",
            "dev/db",
            "--address",
            "terraform_data.db[0]",
            "--ttl",
            "1h",
            "--reason",
            "only db[0]",
        ],
    );
    let err = ws.tf_err(&s.admin, &["state", "rm", "terraform_data.db[1]"]);
    assert!(
        err.contains("403"),
        "a grant covers only its addresses: {err}"
    );
    // A destroy is a write like any other: the protected instance stays.
    let err = ws.tf_err(&s.admin, &["destroy", "-auto-approve"]);
    assert!(
        err.contains("403") || err.contains("Failed to persist"),
        "{err}"
    );
    let show = s.ok(&s.admin, &["state", "show", "dev/db"]);
    assert!(show.contains("terraform_data.db[1]"), "{show}");
    // Agents cannot create grants.
    let agent = s.token("bot", "agent");
    let out = s.cli(
        &agent,
        &[
            "stack",
            "allow-removal",
            "dev/db",
            "--address",
            "x",
            "--ttl",
            "1h",
            "--reason",
            "r",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn agent_and_reader_tokens_cannot_apply_destroy_or_push() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/agent"]);
    let agent = s.token("bot", "agent");
    let reader = s.token("rita", "reader");
    let ci = s.token("pipeline", "ci");
    let ws = Workspace::new(&s, "dev/agent", &data_resources(2));
    ws.tf_ok(&s.admin, &["init"]);
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    ws.write_main(&data_resources(4));
    // Agents may plan.
    let plan = ws.tf_ok(&agent, &["plan"]);
    assert!(plan.contains("2 to add"), "{plan}");
    for token in [&agent, &reader] {
        for args in [
            &["apply", "-auto-approve"][..],
            &["destroy", "-auto-approve"],
            &["state", "rm", "terraform_data.r[0]"],
        ] {
            let err = ws.tf_err(token, args);
            assert!(
                err.contains("403") || err.contains("Error acquiring the state lock"),
                "{args:?}: {err}"
            );
        }
    }
    let pulled = s.cli(&s.admin, &["state", "pull", "dev/agent"]).stdout;
    std::fs::write(ws.path("pushed.tfstate"), &pulled).unwrap();
    ws.tf_err(&agent, &["state", "push", "-force", "pushed.tfstate"]);
    // -lock=false skips the lock; the write is still refused.
    let err = ws.tf_err(&agent, &["apply", "-auto-approve", "-lock=false"]);
    assert!(err.contains("403"), "{err}");
    assert_eq!(s.serials("dev/agent"), [1], "nothing was written");
    // Production stacks take direct writes from admins only: CI is refused at the lock.
    s.ok(&s.admin, &["stack", "create", "prod/app", "--production"]);
    let prod = Workspace::new(&s, "prod/app", &data_resources(1));
    prod.tf_ok(&ci, &["init"]);
    let err = prod.tf_err(&ci, &["apply", "-auto-approve"]);
    assert!(
        err.contains("403") || err.contains("Error acquiring the state lock"),
        "{err}"
    );
    // The same CI token writes a dev stack, whose settings allow it.
    ws.tf_ok(&ci, &["apply", "-auto-approve"]);
}

#[test]
fn restore_writes_a_new_version_then_apply_works() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/restore"]);
    let approver = s.token("alice", "approver");
    let agent = s.token("bot", "agent");
    let ws = Workspace::new(&s, "dev/restore", &data_resources(3));
    ws.tf_ok(&s.admin, &["init"]);
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    ws.write_main(&data_resources(1));
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    let out = s.cli(
        &agent,
        &[
            "state",
            "restore",
            "dev/restore",
            "--version",
            "1",
            "--reason",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "agents cannot restore");
    let out = s.ok(
        &approver,
        &[
            "state",
            "restore",
            "dev/restore",
            "--version",
            "1",
            "--reason",
            "bad cleanup",
        ],
    );
    assert!(out.contains("as new serial 3"), "{out}");
    assert_eq!(s.serials("dev/restore"), [1, 2, 3]);
    let show = s.ok(&s.admin, &["state", "show", "dev/restore"]);
    assert!(
        show.contains("terraform_data.r[2]")
            && show.contains("restored:  from serial 1: bad cleanup"),
        "{show}"
    );
    // Terraform picks up the restored state: the config with 3 instances has nothing to do.
    ws.write_main(&data_resources(3));
    let plan = ws.tf_ok(&s.admin, &["plan", "-detailed-exitcode"]);
    assert!(plan.contains("No changes"), "{plan}");
    ws.write_main(&data_resources(4));
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    assert_eq!(s.serials("dev/restore"), [1, 2, 3, 4]);
    // Restore is refused while someone else holds the lock.
    raw(
        "LOCK",
        &s.state_url("dev/restore"),
        &s.admin,
        br#"{"ID":"held","Operation":"OperationTypeApply"}"#,
    );
    let out = s.cli(
        &approver,
        &[
            "state",
            "restore",
            "dev/restore",
            "--version",
            "2",
            "--reason",
            "x",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tokens_expire_and_revoke() {
    let s = TestServer::start();
    let out = s.ok(
        &s.admin,
        &[
            "token", "create", "--name", "tmp", "--role", "reader", "--format", "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (id, secret) = (
        v["token"]["id"].as_str().unwrap(),
        v["secret"].as_str().unwrap(),
    );
    assert!(s.ok(secret, &["whoami"]).contains("role reader"));
    let list = s.ok(&s.admin, &["token", "list"]);
    assert!(
        list.contains(id) && !list.contains(secret),
        "secrets never listed: {list}"
    );
    s.ok(&s.admin, &["token", "revoke", id]);
    let out = s.cli(secret, &["whoami"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    // Non-admins cannot mint tokens.
    let approver = s.token("alice", "approver");
    let out = s.cli(
        &approver,
        &["token", "create", "--name", "x", "--role", "admin"],
    );
    assert_eq!(out.status.code(), Some(2));
    // Scoped tokens see only their stacks.
    s.ok(&s.admin, &["stack", "create", "prod/a"]);
    s.ok(&s.admin, &["stack", "create", "dev/a"]);
    let out = s.ok(
        &s.admin,
        &[
            "token", "create", "--name", "scoped", "--role", "ci", "--stack", "dev/*", "--format",
            "json",
        ],
    );
    let scoped = serde_json::from_str::<serde_json::Value>(&out).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let list = s.ok(&scoped, &["stack", "list"]);
    assert!(list.contains("dev/a") && !list.contains("prod/a"), "{list}");
    assert_eq!(
        s.cli(&scoped, &["stack", "show", "prod/a"]).status.code(),
        Some(2)
    );
}
