//! Undo (issue 9, item 11): `stack unprotect` and `stack delete` (archiving), through the real
//! CLI, server and terraform.

use crate::support::*;

fn audit_actions(s: &TestServer) -> String {
    s.ok(&s.admin, &["audit", "--format", "json"])
}

#[test]
fn unprotect_removes_a_server_side_rule_admin_only_and_audited() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/app"]);
    s.ok(
        &s.admin,
        &[
            "stack",
            "protect",
            "dev/app",
            "--type",
            "aws_db_instance",
            "--address",
            "module.db.*",
        ],
    );
    let approver = s.token("alice", "approver");
    let out = s.fails(
        &approver,
        &["stack", "unprotect", "dev/app", "--type", "aws_db_instance"],
    );
    assert!(out.contains("permission denied"), "{out}");
    let out = s.fails(
        &s.admin,
        &["stack", "unprotect", "dev/app", "--type", "aws_s3_bucket"],
    );
    assert!(
        out.contains("[\"aws_s3_bucket\"] is not a protection rule of stack dev/app")
            && out.contains("the built-in catalogue stays"),
        "{out}"
    );
    let out = s.ok(
        &s.admin,
        &["stack", "unprotect", "dev/app", "--type", "aws_db_instance"],
    );
    assert!(out.contains("protected types:    -\n"), "{out}");
    assert!(out.contains("protected addresses: module.db.*\n"), "{out}");
    let out = s.ok(
        &s.admin,
        &["stack", "unprotect", "dev/app", "--address", "module.db.*"],
    );
    assert!(out.contains("protected addresses: -\n"), "{out}");
    assert_eq!(audit_actions(&s).matches("\"stack.unprotect\"").count(), 2);
}

const MAIN_TF: &str = "resource \"terraform_data\" \"a\" {\n  input = \"1\"\n}\n";
const LOCK: &str = r#"{"ID":"8f1e8c39-6b9e-4f6c-9d1a-1c0de0000042","Operation":"OperationTypeApply","Info":"","Who":"bob","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;

#[test]
fn delete_archives_the_stack_keeps_its_history_and_refuses_new_work() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/app"]);
    let ws = Workspace::new(&s, "dev/app", MAIN_TF);
    ws.tf_ok(&s.admin, &["init"]);
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    let delete = [
        "stack",
        "delete",
        "dev/app",
        "--reason",
        "moved to prod/app",
    ];

    // Not while locked.
    let (code, body) = raw("LOCK", &s.state_url("dev/app"), &s.admin, LOCK.as_bytes());
    assert_eq!(code, 200, "{body}");
    let out = s.fails(&s.admin, &delete);
    assert!(
        out.contains("is locked by") && out.contains("unlock it first"),
        "{out}"
    );
    let (code, body) = raw("UNLOCK", &s.state_url("dev/app"), &s.admin, LOCK.as_bytes());
    assert_eq!(code, 200, "{body}");
    // Admins only.
    let approver = s.token("alice", "approver");
    assert!(s.fails(&approver, &delete).contains("permission denied"));
    let out = s.fails(&s.admin, &["stack", "delete", "dev/app", "--reason", " "]);
    assert!(
        out.contains("a reason (1-2000 characters) is required"),
        "{out}"
    );

    let out = s.ok(&s.admin, &delete);
    assert!(
        out.starts_with("deleted stack dev/app: archived by"),
        "{out}"
    );
    assert!(audit_actions(&s).contains("\"stack.delete\""));

    // History stays readable.
    assert_eq!(s.serials("dev/app"), [1]);
    let out = s.ok(&s.admin, &["stack", "show", "dev/app"]);
    assert!(
        out.contains("deleted:") && out.contains("(moved to prod/app)"),
        "{out}"
    );
    // Admins see it in the list, marked; others no longer do.
    assert!(s
        .ok(&s.admin, &["stack", "list"])
        .contains("dev/app (deleted)"));
    let reader = s.token("rita", "reader");
    assert!(!s.ok(&reader, &["stack", "list"]).contains("dev/app"));

    // No new state, locks or runs.
    ws.write_main(&MAIN_TF.replace("\"1\"", "\"2\""));
    let out = ws.tf_err(&s.admin, &["apply", "-auto-approve"]);
    assert!(out.contains("lock"), "{out}");
    let (code, body) = raw("LOCK", &s.state_url("dev/app"), &s.admin, LOCK.as_bytes());
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("stack dev/app was deleted on"), "{body}");
    assert_eq!(s.serials("dev/app"), [1]);
    let out = s.fails(
        &s.admin,
        &["stack", "protect", "dev/app", "--type", "x_type"],
    );
    assert!(out.contains("was deleted"), "{out}");
    // The name stays with its history, and a second delete says it is deleted already.
    let out = s.fails(&s.admin, &["stack", "create", "dev/app"]);
    assert!(
        out.contains("was deleted (archived) and its name stays"),
        "{out}"
    );
    assert!(s.fails(&s.admin, &delete).contains("was deleted"));
}
