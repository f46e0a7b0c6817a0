//! Server policy sets over the API: only an admin for all stacks adds or removes one; a set
//! that does not load, exceeds the bounds or names test files is refused; versions per glob;
//! every change audited.

use airlock_core::Role;
use serde_json::{json, Value};

use crate::support::*;

const DENY: &str = "package main\n\ndeny contains \"no\" if { false }\n";

fn set(glob: &str, files: &[(&str, &str)]) -> Value {
    let files: Vec<Value> = files
        .iter()
        .map(|(p, t)| json!({"path": p, "text": t}))
        .collect();
    json!({"stack_glob": glob, "files": files})
}

#[tokio::test]
async fn admins_version_list_show_and_remove_policy_sets_with_audit() {
    let s = Server::new();
    let admin = s.role_token(Role::Admin);
    let r = s
        .api(
            "POST",
            "/api/v1/policies",
            &admin,
            set("prod/*", &[("org.rego", DENY)]),
        )
        .await;
    r.expect(201);
    let first = r.json()["policy_set"].clone();
    assert_eq!(first["version"], 1);
    assert_eq!(first["active"], true);
    let id1 = first["id"].as_str().unwrap().to_owned();
    assert!(id1.starts_with("pol_"), "{id1}");
    let r = s
        .api(
            "POST",
            "/api/v1/policies",
            &admin,
            set("prod/*", &[("b.rego", DENY), ("a.rego", DENY)]),
        )
        .await;
    r.expect(201);
    let second = r.json()["policy_set"].clone();
    assert_eq!(second["version"], 2);
    assert_eq!(second["files"], json!(["a.rego", "b.rego"]));
    let id2 = second["id"].as_str().unwrap().to_owned();

    // A reader sees the sets (what governs its runs) but may not change them.
    let reader = s.role_token(Role::Reader);
    let listed = s
        .call(
            "GET",
            "/api/v1/policies",
            Auth::Bearer(&reader.secret),
            axum::body::Body::empty(),
        )
        .await;
    listed.expect(200);
    let sets = listed.json()["policy_sets"].as_array().unwrap().clone();
    assert_eq!(sets.len(), 2);
    let old = sets.iter().find(|p| p["id"] == id1.as_str()).unwrap();
    assert_eq!(old["active"], false);
    assert_eq!(old["removed_reason"], "replaced by version 2");
    assert!(old.get("text").is_none() && !listed.text().contains("deny contains"));
    let shown = s.api_get(&format!("/api/v1/policies/{id2}")).await;
    assert_eq!(shown["policy_set"]["files"][0]["text"], DENY);
    // Removal needs a reason, happens once, and keeps the set.
    let path = format!("/api/v1/policies/{id2}/remove");
    s.api("POST", &path, &admin, json!({"reason": " "}))
        .await
        .expect(400);
    s.api("POST", &path, &reader, json!({"reason": "x"}))
        .await
        .expect(403);
    let r = s
        .api("POST", &path, &admin, json!({"reason": "moved to OPA"}))
        .await;
    r.expect(200);
    assert_eq!(r.json()["policy_set"]["removed_reason"], "moved to OPA");
    s.api("POST", &path, &admin, json!({"reason": "again"}))
        .await
        .expect(409);
    s.api(
        "POST",
        "/api/v1/policies/pol_nope/remove",
        &admin,
        json!({"reason": "x"}),
    )
    .await
    .expect(404);
    let active: Vec<Value> = s.api_get("/api/v1/policies").await["policy_sets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["active"] == true)
        .cloned()
        .collect();
    assert!(active.is_empty(), "{active:?}");

    let actions: Vec<String> = s
        .audit()
        .await
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("policy."))
        })
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["policy.add", "policy.add", "policy.remove"]);
}

#[tokio::test]
async fn sets_that_would_not_run_or_exceed_the_bounds_are_refused() {
    let s = Server::new();
    let admin = s.role_token(Role::Admin);
    let refused = |body: Value| {
        let s = &s;
        let admin = &admin;
        async move {
            let r = s.api("POST", "/api/v1/policies", admin, body).await;
            r.expect(400);
            r.message()
        }
    };
    let m = refused(set("prod/*", &[("bad.rego", "package main\n deny {{{")])).await;
    assert!(m.contains("bad.rego"), "{m}");
    let m = refused(set("prod/*", &[])).await;
    assert!(m.contains("200"), "{m}");
    let many: Vec<(String, String)> = (0..201)
        .map(|i| (format!("p{i}.rego"), "package main\n".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    refused(set("prod/*", &many)).await;
    let big = format!("package main\n#{}\n", "x".repeat(1024 * 1024));
    refused(set("prod/*", &[("big.rego", &big)])).await;
    refused(set("prod/*", &[("p_test.rego", DENY)])).await;
    refused(set("prod/*", &[("p.rego", DENY), ("p.rego", DENY)])).await;
    refused(set("", &[("p.rego", DENY)])).await;
    assert!(s.api_get("/api/v1/policies").await["policy_sets"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_scoped_admin_cannot_change_server_policies() {
    let s = Server::new();
    let scoped = s.token("dev-admin", Role::Admin, &["dev/*"], None);
    let r = s
        .api(
            "POST",
            "/api/v1/policies",
            &scoped,
            set("dev/*", &[("p.rego", DENY)]),
        )
        .await;
    r.expect(403);
    assert!(r.message().contains("all stacks"), "{}", r.message());
}
