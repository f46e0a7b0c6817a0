//! The firewall sees the objects Terraform sees (issue 8, items 3 and 4), with real terraform:
//! replacing a protected instance destroys it, and a state body Go reads differently from
//! airlock cannot slip a protected instance out.

use crate::support::*;

const MAIN_TF: &str = "resource \"terraform_data\" \"db\" {\n  input = \"x\"\n}\nresource \"terraform_data\" \"web\" {\n  input = \"w\"\n}\n";

/// `dev/db` with `terraform_data.db` protected by address, applied.
fn protected_stack(s: &TestServer) -> Workspace {
    s.ok(&s.admin, &["stack", "create", "dev/db"]);
    s.ok(
        &s.admin,
        &[
            "stack",
            "protect",
            "dev/db",
            "--address",
            "terraform_data.db",
        ],
    );
    let ws = Workspace::new(s, "dev/db", MAIN_TF);
    ws.tf_ok(&s.admin, &["init"]);
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    ws
}

fn allow_removal(s: &TestServer, address: &str) {
    let approver = s.token("alice", "approver");
    s.ok(
        &approver,
        &[
            "stack",
            "allow-removal",
            "dev/db",
            "--address",
            address,
            "--ttl",
            "1h",
            "--reason",
            "planned replacement",
        ],
    );
}

/// `terraform_data.db`'s id in the stored state.
fn db_id(s: &TestServer) -> String {
    let (code, body) = raw("GET", &s.state_url("dev/db"), &s.admin, b"");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "db")
        .map(|r| {
            r["instances"][0]["attributes"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .unwrap()
}

#[test]
fn replacing_a_protected_instance_needs_a_grant() {
    let s = TestServer::start();
    let ws = protected_stack(&s);
    let (id, serials) = (db_id(&s), s.serials("dev/db"));

    // -replace destroys the object: the address stays, the id changes.
    let err = ws.tf_err(
        &s.admin,
        &["apply", "-auto-approve", "-replace=terraform_data.db"],
    );
    assert!(
        err.contains("403") || err.contains("Failed to persist"),
        "{err}"
    );
    assert!(err.contains("terraform_data.db"), "{err}");
    assert_eq!(
        s.serials("dev/db"),
        serials,
        "the refused write stored nothing"
    );
    assert_eq!(db_id(&s), id);

    // taint + apply: tainting keeps the object (allowed), the apply replaces it (refused).
    ws.tf_ok(&s.admin, &["taint", "terraform_data.db"]);
    let serials = s.serials("dev/db");
    let err = ws.tf_err(&s.admin, &["apply", "-auto-approve"]);
    assert!(
        err.contains("403") || err.contains("Failed to persist"),
        "{err}"
    );
    assert_eq!(s.serials("dev/db"), serials);
    assert_eq!(db_id(&s), id);

    // Replacing an unprotected instance needs nothing.
    ws.tf_ok(&s.admin, &["untaint", "terraform_data.db"]);
    ws.tf_ok(
        &s.admin,
        &["apply", "-auto-approve", "-replace=terraform_data.web"],
    );

    // With a grant, the replacement goes through and the grant is spent.
    allow_removal(&s, "terraform_data.db");
    ws.tf_ok(
        &s.admin,
        &["apply", "-auto-approve", "-replace=terraform_data.db"],
    );
    assert_ne!(db_id(&s), id);
    let err = ws.tf_err(
        &s.admin,
        &["apply", "-auto-approve", "-replace=terraform_data.db"],
    );
    assert!(
        err.contains("403") || err.contains("Failed to persist"),
        "{err}"
    );
}

#[test]
fn create_before_destroy_replacement_needs_a_grant() {
    let s = TestServer::start();
    let ws = protected_stack(&s);
    ws.write_main(&MAIN_TF.replace(
        "input = \"x\"\n",
        "input = \"x\"\n  lifecycle {\n    create_before_destroy = true\n  }\n",
    ));
    ws.tf_ok(&s.admin, &["apply", "-auto-approve"]);
    let id = db_id(&s);
    let err = ws.tf_err(
        &s.admin,
        &["apply", "-auto-approve", "-replace=terraform_data.db"],
    );
    assert!(
        err.contains("403") || err.contains("Failed to persist"),
        "{err}"
    );
    assert_eq!(db_id(&s), id);
}

#[test]
fn a_case_variant_key_cannot_orphan_a_protected_instance() {
    let s = TestServer::start();
    let ws = protected_stack(&s);
    let (code, body) = raw("GET", &s.state_url("dev/db"), &s.admin, b"");
    assert_eq!(code, 200);
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let serial = v["serial"].as_u64().unwrap();
    v["serial"] = (serial + 1).into();
    // Go's encoding/json reads "Name" as `name` and keeps the last: Terraform would see
    // terraform_data.db_orphan, and plan to create terraform_data.db anew.
    let text = serde_json::to_string_pretty(&v).unwrap().replace(
        "\"name\": \"db\",",
        "\"name\": \"db\",\n      \"Name\": \"db_orphan\",",
    );
    assert!(text.contains("db_orphan"));
    let lock = r#"{"ID":"8f1e8c39-6b9e-4f6c-9d1a-1c0de0000001","Operation":"OperationTypeApply","Info":"","Who":"mallory","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
    let (code, body) = raw("LOCK", &s.state_url("dev/db"), &s.admin, lock.as_bytes());
    assert_eq!(code, 200, "{body}");
    let url = format!(
        "{}?ID=8f1e8c39-6b9e-4f6c-9d1a-1c0de0000001",
        s.state_url("dev/db")
    );
    let (code, body) = raw("POST", &url, &s.admin, text.as_bytes());
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("case variant of \\\"name\\\"") || body.contains("case variant"),
        "{body}"
    );
    let (code, body) = raw("UNLOCK", &s.state_url("dev/db"), &s.admin, lock.as_bytes());
    assert_eq!(code, 200, "{body}");
    // Terraform still sees the database: nothing to create.
    let plan = ws.tf_ok(&s.admin, &["plan", "-detailed-exitcode"]);
    assert!(plan.contains("No changes"), "{plan}");
}
