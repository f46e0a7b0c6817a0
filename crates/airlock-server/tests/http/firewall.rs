//! The state firewall (docs/design.md invariant 2) and the lock rules by operation.

use airlock_core::Role;
use airlock_store::{now_ms, NewAudit, NewGrant};
use serde_json::{json, Value};

use crate::support::*;

const DB: (&str, &str) = ("aws_db_instance", "main");
const APP: (&str, &str) = ("terraform_data", "app");

/// `dev/app` at serial 1 with a database and an app instance.
async fn with_db(s: &Server) {
    s.stack("dev/app", false);
    s.locked_write("dev/app", &s.admin, &state(1, LINEAGE, &[DB, APP]))
        .await
        .expect(200);
}

/// The last denied audit event.
async fn last_denial(s: &Server) -> Value {
    s.denials().await.pop().expect("a denial was audited")
}

#[tokio::test]
async fn write_with_the_right_id_but_anothers_lock_is_423() {
    let s = Server::new();
    s.stack("dev/app", false);
    let alice = s.token("alice", Role::Ci, &[], None);
    let bob = s.token("bob", Role::Ci, &[], None);
    s.lock("dev/app", &alice, "L-alice", "OperationTypeApply")
        .await
        .expect(200);
    let r = s.write("dev/app", &bob, Some("L-alice"), &plain(1)).await;
    r.expect(423);
    assert!(r.message().contains("not to this token"), "{}", r.message());
    assert!(s.versions("dev/app").is_empty());
    let d = last_denial(&s).await;
    assert_eq!(
        (d["action"].as_str(), d["stack"].as_str()),
        (Some("state.write"), Some("dev/app"))
    );
    assert!(d["actor"].as_str().unwrap().contains(&bob.id));
    // The holder may.
    s.write("dev/app", &alice, Some("L-alice"), &plain(1))
        .await
        .expect(200);
}

#[tokio::test]
async fn another_lineage_is_409_and_stores_nothing() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.locked_write("dev/app", &s.admin, &plain(1))
        .await
        .expect(200);
    // `terraform state push -force` of another stack's state: a higher serial does not help.
    let r = s
        .locked_write(
            "dev/app",
            &s.admin,
            &state(99, "00000000-0000-0000-0000-000000000000", &[APP]),
        )
        .await;
    r.expect(409);
    assert!(r.message().contains("lineage"), "{}", r.message());
    assert_eq!(s.versions("dev/app"), [1]);
    assert_eq!(last_denial(&s).await["action"], "state.write");
}

#[tokio::test]
async fn serial_not_greater_is_409() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.locked_write("dev/app", &s.admin, &plain(5))
        .await
        .expect(200);
    for serial in [5, 4, 0] {
        // Different content, so not an identical re-send: an older archive pushed back.
        let body = state(serial, LINEAGE, &[("terraform_data", "old")]);
        let r = s.locked_write("dev/app", &s.admin, &body).await;
        r.expect(409);
        assert!(r.message().contains("serial"), "{}", r.message());
    }
    assert_eq!(s.versions("dev/app"), [5]);
    s.locked_write("dev/app", &s.admin, &plain(6))
        .await
        .expect(200);
    assert_eq!(s.versions("dev/app"), [5, 6]);
}

#[tokio::test]
async fn removing_a_critical_instance_needs_a_single_use_grant_even_for_an_admin() {
    assert!(airlock_policy::catalogue::is_critical_type(
        "aws_db_instance"
    ));
    let s = Server::new();
    with_db(&s).await;
    let without_db = state(2, LINEAGE, &[APP]);
    let r = s.locked_write("dev/app", &s.admin, &without_db).await;
    r.expect(403);
    assert!(
        r.message().contains("aws_db_instance.main"),
        "{}",
        r.message()
    );
    assert!(r.message().contains("removal grant"), "{}", r.message());
    assert_eq!(s.versions("dev/app"), [1], "a 403 stores nothing");
    let d = last_denial(&s).await;
    assert_eq!(d["action"], "state.write");
    assert!(d["detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("aws_db_instance.main"));

    // Readers, agents and CI may not grant removals.
    for role in [Role::Reader, Role::Agent, Role::Ci] {
        let t = s.role_token(role);
        let r = s
            .api(
                "POST",
                "/api/v1/stacks/dev%2Fapp/grants",
                &t,
                json!({"addresses": ["aws_db_instance.main"], "ttl": "1h", "reason": "x"}),
            )
            .await;
        r.expect(403);
    }
    let approver = s.role_token(Role::Approver);
    let g = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/grants",
            &approver,
            json!({"addresses": ["aws_db_instance.main"], "ttl": "1h", "reason": "decommissioned; snapshot taken"}),
        )
        .await;
    g.expect(201);
    let grant_id = g.json()["grant"]["id"].as_str().unwrap().to_owned();

    s.locked_write("dev/app", &s.admin, &without_db)
        .await
        .expect(200);
    assert_eq!(s.versions("dev/app"), [1, 2]);
    let grants = s.api_get("/api/v1/stacks/dev%2Fapp/grants").await;
    let g = grants["grants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == grant_id.as_str())
        .unwrap()
        .clone();
    assert!(!g["consumed_at"].is_null(), "the grant is consumed: {g}");
    let write = s
        .audit()
        .await
        .into_iter()
        .rfind(|e| e["action"] == "state.write" && e["outcome"] == "ok")
        .unwrap();
    assert_eq!(write["detail"]["grants_consumed"], json!([grant_id]));

    // Single use: the database comes back, and removing it again is refused.
    s.locked_write("dev/app", &s.admin, &state(3, LINEAGE, &[DB, APP]))
        .await
        .expect(200);
    s.locked_write("dev/app", &s.admin, &state(4, LINEAGE, &[APP]))
        .await
        .expect(403);
    assert_eq!(s.versions("dev/app"), [1, 2, 3]);
}

#[tokio::test]
async fn a_grant_covers_only_its_addresses() {
    let s = Server::new();
    s.stack("dev/app", false);
    let two_dbs = [DB, ("aws_db_instance", "replica"), APP];
    s.locked_write("dev/app", &s.admin, &state(1, LINEAGE, &two_dbs))
        .await
        .expect(200);
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/grants",
        &s.admin,
        json!({"addresses": ["aws_db_instance.replica"], "ttl": "1h", "reason": "x"}),
    )
    .await
    .expect(201);
    let r = s
        .locked_write("dev/app", &s.admin, &state(2, LINEAGE, &[APP]))
        .await;
    r.expect(403);
    assert!(r.message().contains("aws_db_instance.main"));
    assert!(!r.message().contains("aws_db_instance.replica ("));
    // The refused write consumed nothing: the replica alone may go.
    s.locked_write("dev/app", &s.admin, &state(2, LINEAGE, &[DB, APP]))
        .await
        .expect(200);
    assert_eq!(s.versions("dev/app"), [1, 2]);
}

#[tokio::test]
async fn an_expired_grant_is_ignored() {
    let s = Server::new();
    with_db(&s).await;
    s.store
        .create_grant(
            "dev/app",
            NewGrant {
                id: "grant_expired".into(),
                addresses: vec!["aws_db_instance.main".into()],
                reason: "too late".into(),
                created_by: "test".into(),
                expires_at: now_ms() - 1_000,
                run_id: None,
            },
            NewAudit::ok("test", "grant.create", Some("dev/app"), json!({})),
        )
        .unwrap();
    s.locked_write("dev/app", &s.admin, &state(2, LINEAGE, &[APP]))
        .await
        .expect(403);
    assert_eq!(s.versions("dev/app"), [1]);
}

#[tokio::test]
async fn bad_grant_requests_are_400() {
    let s = Server::new();
    s.stack("dev/app", false);
    for body in [
        json!({"addresses": [], "ttl": "1h", "reason": "x"}),
        json!({"addresses": ["a.b"], "ttl": "forever", "reason": "x"}),
        json!({"addresses": ["a.b"], "ttl": "0s", "reason": "x"}),
        json!({"addresses": ["a.b"], "ttl": "1h", "reason": " "}),
        json!({"addresses": ["a.b"], "ttl": "1h"}),
        json!({"addresses": ["a\nb"], "ttl": "1h", "reason": "x"}),
        json!({"addresses": ["a.b"], "ttl": "1h", "reason": "x", "extra": 1}),
    ] {
        let r = s
            .api(
                "POST",
                "/api/v1/stacks/dev%2Fapp/grants",
                &s.admin,
                body.clone(),
            )
            .await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    // Unknown stack: 422, like everywhere.
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fnope/grants",
        &s.admin,
        json!({"addresses": ["a.b"], "ttl": "1h", "reason": "x"}),
    )
    .await
    .expect(422);
}

#[tokio::test]
async fn stack_protection_by_type_and_by_address_glob() {
    let s = Server::new();
    s.stack("dev/app", false);
    let all = [
        ("terraform_data", "a"),
        ("module.net.aws_vpc", "main"),
        ("module.net.aws_subnet", "a"),
        ("random_pet", "name"),
    ];
    s.locked_write("dev/app", &s.admin, &state(1, LINEAGE, &all))
        .await
        .expect(200);
    // Unprotected: a plain removal is fine.
    s.locked_write("dev/app", &s.admin, &state(2, LINEAGE, &all[..3]))
        .await
        .expect(200);
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/protect",
        &s.admin,
        json!({"types": ["terraform_data"], "addresses": ["module.net.*"]}),
    )
    .await
    .expect(200);
    let shown = s.api_get("/api/v1/stacks/dev%2Fapp").await;
    assert_eq!(shown["protected"].as_array().unwrap().len(), 3, "{shown}");

    let r = s
        .locked_write("dev/app", &s.admin, &state(3, LINEAGE, &all[1..3]))
        .await;
    r.expect(403);
    assert!(r.message().contains("terraform_data.a"), "{}", r.message());
    let r = s
        .locked_write("dev/app", &s.admin, &state(3, LINEAGE, &all[..2]))
        .await;
    r.expect(403);
    assert!(
        r.message().contains("module.net.aws_subnet.a") && r.message().contains("module.net.*"),
        "{}",
        r.message()
    );
    assert_eq!(s.versions("dev/app"), [1, 2]);
    // Adding and changing protected instances needs nothing.
    s.locked_write(
        "dev/app",
        &s.admin,
        &state(
            3,
            LINEAGE,
            &[all[0], all[1], all[2], ("module.net.aws_vpc", "b")],
        ),
    )
    .await
    .expect(200);
}

/// A state of `terraform_data` resources, each (module path, name, instance keys); no keys is
/// one unkeyed instance.
fn keyed_state(serial: u64, resources: &[(&str, &str, &[&str])]) -> Vec<u8> {
    let resources: Vec<Value> = resources
        .iter()
        .map(|(module, name, keys)| {
            let instances: Vec<Value> = if keys.is_empty() {
                vec![json!({"schema_version": 0, "attributes": {"id": name}})]
            } else {
                keys.iter()
                    .map(|k| json!({"index_key": k, "schema_version": 0, "attributes": {"id": k}}))
                    .collect()
            };
            let mut r = json!({"mode": "managed", "type": "terraform_data", "name": name,
                "provider": "provider[\"terraform.io/builtin/terraform\"]",
                "instances": instances});
            if !module.is_empty() {
                r["module"] = json!(module);
            }
            r
        })
        .collect();
    let doc = json!({
        "version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": LINEAGE,
        "outputs": {}, "resources": resources
    });
    serde_json::to_vec_pretty(&doc).unwrap()
}

#[tokio::test]
async fn a_protected_module_covers_its_count_and_for_each_instances_and_keys_hold_any_text() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let all: [(&str, &str, &[&str]); 4] = [
        ("module.db[0]", "counted", &[]),
        ("module.db[\"eu\"].module.inner[1]", "deep", &[]),
        ("", "logs", &["a[b", "plain"]),
        ("module.dbx[0]", "other", &[]),
    ];
    s.locked_write("dev/app", &ci, &keyed_state(1, &all))
        .await
        .expect(200);
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/protect",
        &s.admin,
        json!({"addresses": ["module.db", "terraform_data.logs"]}),
    )
    .await
    .expect(200);
    for (dropped, kept) in [
        (
            "module.db[0].terraform_data.counted",
            keyed_state(2, &[all[1], all[2], all[3]]),
        ),
        (
            "module.db[\"eu\"].module.inner[1].terraform_data.deep",
            keyed_state(2, &[all[0], all[2], all[3]]),
        ),
        (
            "terraform_data.logs[\"a[b\"]",
            keyed_state(2, &[all[0], all[1], ("", "logs", &["plain"]), all[3]]),
        ),
    ] {
        let r = s.locked_write("dev/app", &ci, &kept).await;
        r.expect(403);
        assert!(
            r.message().contains(dropped) && r.message().contains("removal grant"),
            "{dropped}: {}",
            r.message()
        );
    }
    assert_eq!(s.versions("dev/app"), [1]);
    // What the patterns do not name goes without a grant.
    s.locked_write("dev/app", &ci, &keyed_state(2, &all[..3]))
        .await
        .expect(200);
}

#[tokio::test]
async fn agents_and_readers_cannot_lock_for_anything_but_planning() {
    let s = Server::new();
    s.stack("dev/app", false);
    let agent = s.role_token(Role::Agent);
    let reader = s.role_token(Role::Reader);
    for op in [
        "OperationTypeApply",
        "OperationTypeRefresh",
        "state-push",
        "state-rm",
        "state-mv",
        "taint",
        "",
        "operationtypeplan",
    ] {
        let r = s.lock("dev/app", &agent, "a1", op).await;
        r.expect(403);
        assert!(
            r.message().contains("only for planning"),
            "{op}: {}",
            r.message()
        );
        let r = s.lock("dev/app", &reader, "r1", op).await;
        r.expect(403);
        assert!(r.message().contains("lock"), "{}", r.message());
        assert!(s.store.current_lock("dev/app").unwrap().is_none());
    }
    let d = last_denial(&s).await;
    assert_eq!(d["outcome"], "denied");
    // A reader cannot lock at all (the matrix gives it no lock permission).
    s.lock("dev/app", &reader, "r1", "OperationTypePlan")
        .await
        .expect(403);
    // An agent may plan: LOCK, GET, UNLOCK.
    s.lock("dev/app", &agent, "a1", "OperationTypePlan")
        .await
        .expect(200);
    s.get_state("dev/app", &agent).await.expect(204);
    // But even holding the lock, it cannot write (e.g. apply with -lock=false after a plan lock).
    let r = s.write("dev/app", &agent, Some("a1"), &plain(1)).await;
    r.expect(403);
    assert!(
        r.message().contains("agent tokens may not write"),
        "{}",
        r.message()
    );
    assert!(s.versions("dev/app").is_empty());
    s.unlock("dev/app", &agent, "a1", "OperationTypePlan")
        .await
        .expect(200);
    let lock_denials = s
        .denials()
        .await
        .into_iter()
        .filter(|e| e["action"] == "lock")
        .count();
    assert_eq!(lock_denials, 8);
}

#[tokio::test]
async fn production_stacks_take_direct_writes_from_admins_only_until_settings_say_otherwise() {
    let s = Server::new();
    s.stack("prod/app", true);
    let ci = s.role_token(Role::Ci);
    let approver = s.role_token(Role::Approver);
    for t in [&ci, &approver] {
        s.lock("prod/app", t, "x", "OperationTypeApply")
            .await
            .expect(403);
        s.lock("prod/app", t, "x", "OperationTypePlan")
            .await
            .expect(200);
        s.write("prod/app", t, Some("x"), &plain(1))
            .await
            .expect(403);
        s.unlock("prod/app", t, "x", "OperationTypePlan")
            .await
            .expect(200);
    }
    assert!(s.versions("prod/app").is_empty());
    s.locked_write("prod/app", &s.admin, &plain(1))
        .await
        .expect(200);

    // Agents and readers can never be named.
    for role in ["agent", "reader"] {
        s.api(
            "PATCH",
            "/api/v1/stacks/prod%2Fapp/settings",
            &s.admin,
            json!({"direct_writes": ["admin", role]}),
        )
        .await
        .expect(400);
    }
    s.api(
        "PATCH",
        "/api/v1/stacks/prod%2Fapp/settings",
        &s.admin,
        json!({"direct_writes": ["admin", "ci"]}),
    )
    .await
    .expect(200);
    s.locked_write("prod/app", &ci, &plain(2)).await.expect(200);
    // An admin left out of direct_writes cannot write either.
    s.api(
        "PATCH",
        "/api/v1/stacks/prod%2Fapp/settings",
        &s.admin,
        json!({"direct_writes": ["ci"]}),
    )
    .await
    .expect(200);
    s.lock("prod/app", &s.admin, "y", "OperationTypeApply")
        .await
        .expect(403);
    assert_eq!(s.versions("prod/app"), [1, 2]);
}

#[tokio::test]
async fn restore_writes_a_new_version_and_is_refused_while_someone_else_holds_the_lock() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.locked_write("dev/app", &s.admin, &plain(1))
        .await
        .expect(200);
    s.locked_write("dev/app", &s.admin, &state(2, LINEAGE, &[APP]))
        .await
        .expect(200);
    let approver = s.role_token(Role::Approver);
    let ci = s.role_token(Role::Ci);
    s.lock("dev/app", &ci, "busy", "OperationTypeApply")
        .await
        .expect(200);
    let body = json!({"serial": 1, "reason": "roll back"});
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/restore",
        &approver,
        body.clone(),
    )
    .await
    .expect(423);
    s.unlock("dev/app", &ci, "busy", "OperationTypeApply")
        .await
        .expect(200);
    let r = s
        .api("POST", "/api/v1/stacks/dev%2Fapp/restore", &approver, body)
        .await;
    r.expect(200);
    assert_eq!(r.json()["version"]["serial"], 3);
    assert_eq!(r.json()["version"]["restored_from"], 1);
    assert_eq!(s.versions("dev/app"), [1, 2, 3]);
    let restored = s.get_state("dev/app", &ci).await;
    let v: Value = serde_json::from_slice(&restored.body).unwrap();
    assert_eq!(v["serial"], 3);
    assert_eq!(v["lineage"], LINEAGE);
    // Restoring the version that is current is a conflict; a missing one is 404.
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/restore",
        &approver,
        json!({"serial": 3, "reason": "again"}),
    )
    .await
    .expect(409);
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/restore",
        &approver,
        json!({"serial": 42, "reason": "nope"}),
    )
    .await
    .expect(404);
}

#[tokio::test]
async fn a_restore_that_drops_a_critical_instance_needs_a_grant_too() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.locked_write("dev/app", &s.admin, &state(1, LINEAGE, &[APP]))
        .await
        .expect(200);
    s.locked_write("dev/app", &s.admin, &state(2, LINEAGE, &[DB, APP]))
        .await
        .expect(200);
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/restore",
            &s.admin,
            json!({"serial": 1, "reason": "swap in an old archive"}),
        )
        .await;
    r.expect(403);
    assert!(r.message().contains("aws_db_instance.main"));
    assert_eq!(s.versions("dev/app"), [1, 2]);
}

#[tokio::test]
async fn every_refused_write_is_audited_as_denied_and_leaves_history_alone() {
    let s = Server::new();
    with_db(&s).await;
    let agent = s.role_token(Role::Agent);
    let before = s.denials().await.len();
    s.write("dev/app", &s.admin, None, &plain(2))
        .await
        .expect(409);
    s.locked_write("dev/app", &s.admin, &state(2, LINEAGE, &[APP]))
        .await
        .expect(403);
    s.locked_write("dev/app", &s.admin, &state(1, LINEAGE, &[APP]))
        .await
        .expect(409);
    s.lock("dev/app", &agent, "z", "OperationTypeApply")
        .await
        .expect(403);
    s.tf("UNLOCK", "/state/dev/app", &agent, b"")
        .await
        .expect(403);
    let denials = s.denials().await;
    assert_eq!(denials.len() - before, 5, "{denials:#?}");
    for d in &denials[before..] {
        assert_eq!(d["stack"], "dev/app");
        assert!(d["detail"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()));
    }
    assert_eq!(s.versions("dev/app"), [1]);
    let verify = s.api_get("/api/v1/audit/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// A state whose one resource has `for_each` instances with these keys.
fn for_each_state(serial: u64, ty: &str, keys: &[&str]) -> Vec<u8> {
    let instances: Vec<Value> = keys
        .iter()
        .map(|k| json!({"index_key": k, "schema_version": 0, "attributes": {"id": k}}))
        .collect();
    let doc = json!({
        "version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": LINEAGE,
        "outputs": {},
        "resources": [{"mode": "managed", "type": ty, "name": "db",
            "provider": "provider[\"registry.terraform.io/hashicorp/aws\"]",
            "instances": instances}]
    });
    serde_json::to_vec_pretty(&doc).unwrap()
}

#[tokio::test]
async fn a_grant_address_is_literal_not_a_pattern() {
    // `for_each` keys are arbitrary strings: `*` and `?` are legal in them. A grant for the
    // instance keyed "*" must not cover every instance of the resource.
    let s = Server::new();
    s.stack("dev/app", false);
    s.locked_write(
        "dev/app",
        &s.admin,
        &for_each_state(1, "aws_db_instance", &["*", "prod", "a"]),
    )
    .await
    .expect(200);
    for address in [r#"aws_db_instance.db["*"]"#, r#"aws_db_instance.db["?"]"#] {
        s.api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/grants",
            &s.admin,
            json!({"addresses": [address], "ttl": "1h", "reason": "drop one key"}),
        )
        .await
        .expect(201);
    }
    let r = s
        .locked_write(
            "dev/app",
            &s.admin,
            &for_each_state(2, "aws_db_instance", &[]),
        )
        .await;
    r.expect(403);
    assert!(
        r.message().contains(r#"aws_db_instance.db["prod"]"#)
            && r.message().contains(r#"aws_db_instance.db["a"]"#),
        "{}",
        r.message()
    );
    assert_eq!(s.versions("dev/app"), [1]);
    // Exactly the granted instance may go.
    s.locked_write(
        "dev/app",
        &s.admin,
        &for_each_state(2, "aws_db_instance", &["prod", "a"]),
    )
    .await
    .expect(200);
}

// The firewall must see the state Terraform sees (issue 8, items 3 and 4). Terraform reads state
// with Go's encoding/json: keys match case-insensitively (with Unicode folding) and the last
// duplicate wins; so these bodies are written by hand.

const AWS: &str = r#"provider[\"registry.terraform.io/hashicorp/aws\"]"#;

/// A state whose `resources` array is the given JSON text.
fn raw_state(serial: u64, resources: &[String]) -> Vec<u8> {
    format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"{LINEAGE}","outputs":{{}},"resources":[{}],"check_results":null}}"#,
        resources.join(",")
    )
    .into_bytes()
}

/// One managed resource; `extra` is spliced into the resource object, `instances` is JSON.
fn raw_resource(ty: &str, name: &str, extra: &str, instances: &str) -> String {
    format!(
        r#"{{"mode":"managed","type":"{ty}","name":"{name}"{extra},"provider":"{AWS}","instances":[{instances}]}}"#
    )
}

/// `dev/app` at serial 1 holding the protected `aws_db_instance.main` (id `db-1`).
async fn with_raw_db(s: &Server) {
    s.stack("dev/app", false);
    let db = raw_resource(
        "aws_db_instance",
        "main",
        "",
        r#"{"schema_version":0,"attributes":{"id":"db-1"}}"#,
    );
    s.locked_write("dev/app", &s.admin, &raw_state(1, &[db]))
        .await
        .expect(200);
}

#[tokio::test]
async fn keys_terraform_reads_differently_are_refused() {
    let s = Server::new();
    with_raw_db(&s).await;
    let inst = r#"{"schema_version":0,"attributes":{"id":"db-1"}}"#;
    let cases = [
        // Go: "Name" matches `name`, the last one wins: Terraform sees aws_db_instance.orphan.
        raw_resource("aws_db_instance", "main", r#","Name":"orphan""#, inst),
        raw_resource("aws_db_instance", "main", r#","NAME":"orphan""#, inst),
        raw_resource("aws_db_instance", "main", r#","name":"orphan""#, inst),
        // U+212A KELVIN SIGN folds to "k"; U+017F LONG S folds to "s".
        raw_resource(
            "aws_db_instance",
            "main",
            "",
            r#"{"schema_version":0,"attributes":{"id":"db-1"},"index_\u212aey":"x"}"#,
        ),
        raw_resource(
            "aws_db_instance",
            "main",
            "",
            r#"{"schema_version":0,"attributes":{"id":"db-1"},"ſtatus":"tainted"}"#,
        ),
        raw_resource("aws_db_instance", "main", r#","Mode":"data""#, inst),
        raw_resource("aws_db_instance", "main", r#","whatever":1"#, inst),
        raw_resource(
            "aws_db_instance",
            "main",
            "",
            r#"{"schema_version":0,"attributes":{"id":"db-1"},"Deposed":"00000001"}"#,
        ),
    ];
    for (i, r) in cases.iter().enumerate() {
        let resp = s
            .locked_write(
                "dev/app",
                &s.admin,
                &raw_state(2 + i as u64, std::slice::from_ref(r)),
            )
            .await;
        resp.expect(400);
        assert!(resp.message().contains("key"), "{r}: {}", resp.message());
    }
    // At the top level: "reſources" is `resources` to Go, and empties the state.
    let db = raw_resource("aws_db_instance", "main", "", inst);
    let mut body = String::from_utf8(raw_state(20, &[db])).unwrap();
    body.insert_str(body.len() - 1, r#","reſources":[]"#);
    s.locked_write("dev/app", &s.admin, body.as_bytes())
        .await
        .expect(400);
    // In an output: "Value" replaces `value`.
    let body = String::from_utf8(raw_state(
        20,
        &[raw_resource("aws_db_instance", "main", "", inst)],
    ))
    .unwrap()
    .replace(
        r#""outputs":{}"#,
        r#""outputs":{"o":{"value":"a","type":"string","Value":"b"}}"#,
    );
    s.locked_write("dev/app", &s.admin, body.as_bytes())
        .await
        .expect(400);
    assert_eq!(s.versions("dev/app"), [1]);
}

#[tokio::test]
async fn a_resource_named_like_an_instance_key_is_refused() {
    let s = Server::new();
    s.stack("dev/app", false);
    let keyed = raw_resource(
        "aws_db_instance",
        "main",
        r#","each":"map""#,
        r#"{"index_key":"k","schema_version":0,"attributes":{"id":"db-1"}}"#,
    );
    s.locked_write("dev/app", &s.admin, &raw_state(1, &[keyed]))
        .await
        .expect(200);
    // Rendered as a string, this is `aws_db_instance.main["k"]` too; to Terraform it is
    // another resource, and the keyed database is gone.
    let odd = raw_resource(
        "aws_db_instance",
        r#"main[\"k\"]"#,
        "",
        r#"{"schema_version":0,"attributes":{"id":"db-1"}}"#,
    );
    let r = s
        .locked_write("dev/app", &s.admin, &raw_state(2, &[odd]))
        .await;
    r.expect(400);
    assert!(r.message().contains("name"), "{}", r.message());
    for module in [
        r#""module":"module.a.b","#,
        r#""module":"module.a[\"k\"]x","#,
        r#""module":"module.a[01]","#,
        r#""module":"module.a.aws_db_instance","#,
    ] {
        let body = String::from_utf8(raw_state(
            2,
            &[raw_resource(
                "aws_db_instance",
                "main",
                "",
                r#"{"index_key":"k","schema_version":0,"attributes":{"id":"db-1"}}"#,
            )],
        ))
        .unwrap()
        .replacen(r#"{"mode""#, &format!(r#"{{{module}"mode""#), 1);
        let r = s.locked_write("dev/app", &s.admin, body.as_bytes()).await;
        r.expect(400);
        assert!(r.message().contains("module"), "{module}: {}", r.message());
    }
    assert_eq!(s.versions("dev/app"), [1]);
}

#[tokio::test]
async fn providers_terraform_would_drop_or_merge_are_refused_and_a_changed_provider_is_a_removal() {
    let s = Server::new();
    with_raw_db(&s).await;
    let inst = r#"{"schema_version":0,"attributes":{"id":"db-1"}}"#;
    // Terraform silently skips a resource whose provider address does not parse.
    for provider in [
        "",
        "aws",
        "provider.aws",
        r#"provider[\"a b\"]"#,
        r#"provider[\"registry.terraform.io/hashicorp/aws\"].x.y"#,
    ] {
        let r = format!(
            r#"{{"mode":"managed","type":"aws_db_instance","name":"main","provider":"{provider}","instances":[{inst}]}}"#
        );
        let resp = s
            .locked_write("dev/app", &s.admin, &raw_state(2, &[r]))
            .await;
        resp.expect(400);
        assert!(
            resp.message().contains("provider"),
            "{provider}: {}",
            resp.message()
        );
    }
    // Two entries for one resource: Terraform keeps the last entry's provider for both.
    let west = format!(
        r#"{{"mode":"managed","type":"aws_db_instance","name":"main","provider":"{AWS}.west","instances":[]}}"#
    );
    let r = s
        .locked_write(
            "dev/app",
            &s.admin,
            &raw_state(
                2,
                &[raw_resource("aws_db_instance", "main", "", inst), west],
            ),
        )
        .await;
    r.expect(400);
    assert!(r.message().contains("more than once"), "{}", r.message());
    // The same object under another provider configuration is a removal.
    let moved = format!(
        r#"{{"mode":"managed","type":"aws_db_instance","name":"main","provider":"{AWS}.west","instances":[{inst}]}}"#
    );
    let r = s
        .locked_write("dev/app", &s.admin, &raw_state(2, &[moved]))
        .await;
    r.expect(403);
    assert!(
        r.message().contains("aws_db_instance.main"),
        "{}",
        r.message()
    );
    assert_eq!(s.versions("dev/app"), [1]);
}

#[tokio::test]
async fn a_replaced_or_deposed_protected_object_is_a_removal() {
    let s = Server::new();
    with_raw_db(&s).await;
    let db = |insts: &str| raw_resource("aws_db_instance", "main", "", insts);
    // An in-place update keeps the object: no grant needed.
    s.locked_write(
        "dev/app",
        &s.admin,
        &raw_state(
            2,
            &[db(
                r#"{"schema_version":0,"attributes":{"id":"db-1","size":2}}"#,
            )],
        ),
    )
    .await
    .expect(200);
    // `-replace`: the address stays, the object is new.
    let r = s
        .locked_write(
            "dev/app",
            &s.admin,
            &raw_state(
                3,
                &[db(r#"{"schema_version":0,"attributes":{"id":"db-2"}}"#)],
            ),
        )
        .await;
    r.expect(403);
    assert!(
        r.message().contains("aws_db_instance.main"),
        "{}",
        r.message()
    );
    // create_before_destroy: the old object is deposed, a new one is current.
    let deposed = db(
        r#"{"schema_version":0,"attributes":{"id":"db-2"}},{"deposed":"0a1b2c3d","schema_version":0,"attributes":{"id":"db-1"}}"#,
    );
    s.locked_write(
        "dev/app",
        &s.admin,
        &raw_state(3, std::slice::from_ref(&deposed)),
    )
    .await
    .expect(403);
    // A resource identity (Terraform 1.12) that changes is a new object too.
    let with_identity = |serial, ident: &str| {
        raw_state(
            serial,
            &[db(&format!(
                r#"{{"schema_version":0,"attributes":{{"id":"db-1"}},"identity_schema_version":0,"identity":{ident}}}"#
            ))],
        )
    };
    s.locked_write("dev/app", &s.admin, &with_identity(3, r#"{"arn":"a"}"#))
        .await
        .expect(200);
    s.locked_write("dev/app", &s.admin, &with_identity(4, r#"{"arn":"b"}"#))
        .await
        .expect(403);
    assert_eq!(s.versions("dev/app"), [1, 2, 3]);

    // With a grant the deposing write passes; the deposed object then vanishing is a removal too.
    let grant = json!({"addresses": ["aws_db_instance.main"], "ttl": "1h", "reason": "replace"});
    let grants_path = "/api/v1/stacks/dev%2Fapp/grants";
    s.api("POST", grants_path, &s.admin, grant.clone())
        .await
        .expect(201);
    let deposed = db(
        r#"{"schema_version":0,"attributes":{"id":"db-2"},"identity_schema_version":0,"identity":{"arn":"c"}},{"deposed":"0a1b2c3d","schema_version":0,"attributes":{"id":"db-1"},"identity_schema_version":0,"identity":{"arn":"a"}}"#,
    );
    s.locked_write("dev/app", &s.admin, &raw_state(4, &[deposed]))
        .await
        .expect(200);
    let done = raw_state(
        5,
        &[db(
            r#"{"schema_version":0,"attributes":{"id":"db-2"},"identity_schema_version":0,"identity":{"arn":"c"}}"#,
        )],
    );
    let r = s.locked_write("dev/app", &s.admin, &done).await;
    r.expect(403);
    assert!(
        r.message().contains("aws_db_instance.main"),
        "{}",
        r.message()
    );
    s.api("POST", grants_path, &s.admin, grant)
        .await
        .expect(201);
    s.locked_write("dev/app", &s.admin, &done).await.expect(200);
    assert_eq!(s.versions("dev/app"), [1, 2, 3, 4, 5]);
}
