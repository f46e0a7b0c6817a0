//! Identities (issue 8, items 7-9): users own tokens; phase tokens carry their minter's user,
//! die with it, expire no later, cannot mint, and are rate-limited per user; a scoped admin
//! sees and revokes only tokens within its scope.

use airlock_core::Role;
use airlock_store::now_ms;
use axum::body::Body;
use serde_json::{json, Value};

use crate::support::*;

const PLAN_TOKEN: &str = "/api/v1/stacks/dev%2Fapp/plan-token";

fn tok(r: &Resp) -> Tok {
    let v = r.json();
    Tok {
        id: v["token_id"].as_str().expect("token_id").to_owned(),
        secret: v["secret"].as_str().expect("secret").to_owned(),
    }
}

#[tokio::test]
async fn a_phase_token_cannot_mint_and_dies_with_its_parent() {
    let s = Server::new();
    s.stack("dev/app", false);
    let agent = s.token("bot", Role::Agent, &[], None);
    let r = s.api("POST", PLAN_TOKEN, &agent, Value::Null).await;
    r.expect(201);
    let phase = tok(&r);
    // The attack: a plan-phase token mints the next one, forever.
    let r = s.api("POST", PLAN_TOKEN, &phase, Value::Null).await;
    r.expect(403);
    assert!(r.message().contains("phase token"), "{}", r.message());
    s.get_state("dev/app", &phase).await.expect(204);
    let who = s
        .call(
            "GET",
            "/api/v1/whoami",
            Auth::Bearer(&phase.secret),
            Body::empty(),
        )
        .await;
    assert_eq!(who.json()["parent"], agent.id.as_str());
    // The attack: the agent's token is revoked, its plan-phase token keeps working.
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", agent.id),
        &s.admin,
        Value::Null,
    )
    .await
    .expect(200);
    let r = s.get_state("dev/app", &phase).await;
    r.expect(401);
    assert!(r.message().contains("revoked"), "{}", r.message());
    let cascade: Vec<Value> = s
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "token.revoke_cascade")
        .collect();
    assert_eq!(cascade.len(), 1, "{cascade:?}");
    assert_eq!(cascade[0]["detail"]["parent"], agent.id.as_str());
    assert_eq!(cascade[0]["detail"]["tokens"], json!([phase.id]));
}

#[tokio::test]
async fn a_phase_token_expires_no_later_than_its_parent() {
    let s = Server::new();
    s.stack("dev/app", false);
    let parent_expiry = now_ms() + 120_000;
    let agent = s.token("bot", Role::Agent, &[], Some(parent_expiry));
    let r = s.api("POST", PLAN_TOKEN, &agent, Value::Null).await;
    r.expect(201);
    let expires = r.json()["expires_at"].as_i64().expect("expires_at");
    assert_eq!(expires, parent_expiry, "clamped to the parent's expiry");
    let phase = tok(&r);
    let listed = s.store.token(&phase.id).unwrap().unwrap();
    assert_eq!(listed.expires_at, Some(parent_expiry));
    assert_eq!(listed.parent_id.as_deref(), Some(agent.id.as_str()));
}

/// A time-limited admin token minted tokens with no expiry (or a later one): `expires_at` came
/// from the request alone, so a token given for an afternoon left behind tokens that live
/// forever. Expected: every token a token mints expires no later than its minter (as phase
/// tokens do), the answer says so when it clamped, and the audit records the clamped expiry.
#[tokio::test]
async fn a_time_limited_admin_mints_no_token_that_outlives_it() {
    let s = Server::new();
    s.user("alice");
    let ends = now_ms() + 2 * 3_600_000;
    let admin = s.token_of(Some("alice"), "afternoon", Role::Admin, &[], Some(ends));
    for (ttl, expected) in [(None, Some(ends)), (Some("30d"), Some(ends))] {
        let r = s
            .api(
                "POST",
                "/api/v1/tokens",
                &admin,
                json!({"name": "forever", "role": "ci", "ttl": ttl}),
            )
            .await;
        r.expect(201);
        let v = r.json();
        assert_eq!(
            v["token"]["expires_at"].as_i64(),
            expected,
            "ttl {ttl:?}: {v}"
        );
        let minted = v["token"]["id"].as_str().unwrap();
        assert_eq!(s.store.token(minted).unwrap().unwrap().expires_at, expected);
        let note = v["note"].as_str().unwrap_or_else(|| panic!("no note: {v}"));
        assert!(note.contains("expires no later than"), "{note}");
        let created: Vec<Value> = s
            .audit()
            .await
            .into_iter()
            .filter(|e| e["action"] == "token.create" && e["detail"]["token"] == minted)
            .collect();
        assert_eq!(created.len(), 1, "{created:?}");
        assert_eq!(created[0]["detail"]["expires_at"].as_i64(), expected);
    }
    // Within the minter's life: as asked, without a note.
    let r = s
        .api(
            "POST",
            "/api/v1/tokens",
            &admin,
            json!({"name": "short", "role": "ci", "ttl": "1h"}),
        )
        .await;
    r.expect(201);
    let v = r.json();
    let at = v["token"]["expires_at"].as_i64().unwrap();
    assert!(at < ends && at > now_ms() + 3_500_000, "{v}");
    assert!(v["note"].is_null(), "{v}");
    // A token without an expiry mints without one.
    let r = s
        .api(
            "POST",
            "/api/v1/tokens",
            &s.admin,
            json!({"name": "service", "role": "ci"}),
        )
        .await;
    r.expect(201);
    assert!(r.json()["token"]["expires_at"].is_null(), "{:?}", r);
}

#[tokio::test]
async fn phase_tokens_are_rate_limited_per_user_not_per_token() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.user("robot");
    let a = s.token_of(Some("robot"), "bot-a", Role::Agent, &[], None);
    let b = s.token_of(Some("robot"), "bot-b", Role::Agent, &[], None);
    for i in 0..60 {
        let t = if i % 2 == 0 { &a } else { &b };
        s.api("POST", PLAN_TOKEN, t, Value::Null).await.expect(201);
    }
    for t in [&a, &b] {
        let r = s.api("POST", PLAN_TOKEN, t, Value::Null).await;
        r.expect(429);
        assert!(r.message().contains("robot"), "{}", r.message());
        assert!(r.message().contains("limit"), "{}", r.message());
    }
    // Another user is not affected.
    let other = s.token("other-bot", Role::Agent, &[], None);
    s.api("POST", PLAN_TOKEN, &other, Value::Null)
        .await
        .expect(201);
}

/// A pipeline plans every affected stack of a change and checks every stack for drift under
/// one identity: its limit is not an agent's 60 an hour (a monorepo's CI failed at the 61st
/// stack), but it is still a limit. An agent's is the operator's to set (pull-request jobs log
/// in as agents).
#[tokio::test]
async fn a_pipelines_plan_tokens_have_a_limit_of_their_own() {
    let s = Server::with_config(airlock_server::ServerConfig {
        agent_runs_per_hour: 5,
        ..airlock_server::ServerConfig::default()
    });
    s.stack("dev/app", false);
    let ci = s.token("pipeline", Role::Ci, &[], None);
    for _ in 0..airlock_server::tokens::PIPELINE_LIMIT.max {
        s.api("POST", PLAN_TOKEN, &ci, Value::Null)
            .await
            .expect(201);
    }
    let r = s.api("POST", PLAN_TOKEN, &ci, Value::Null).await;
    r.expect(429);
    assert!(r.message().contains("1000 phase tokens"), "{}", r.message());
    let agent = s.token("bot", Role::Agent, &[], None);
    for _ in 0..5 {
        s.api("POST", PLAN_TOKEN, &agent, Value::Null)
            .await
            .expect(201);
    }
    let r = s.api("POST", PLAN_TOKEN, &agent, Value::Null).await;
    r.expect(429);
    assert!(r.message().contains("5 phase tokens"), "{}", r.message());
}

#[tokio::test]
async fn a_scoped_admin_sees_and_revokes_only_tokens_within_its_scope() {
    let s = Server::new();
    let dev_admin = s.token("dev-admin", Role::Admin, &["dev/*"], None);
    let dev_ci = s.token("dev-ci", Role::Ci, &["dev/app"], None);
    let prod_ci = s.token("prod-ci", Role::Ci, &["prod/*"], None);
    let everywhere_reader = s.token("reader", Role::Reader, &[], None);
    let r = s
        .api("GET", "/api/v1/tokens", &dev_admin, Value::Null)
        .await;
    r.expect(200);
    let ids: Vec<String> = r.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.contains(&dev_ci.id) && ids.contains(&dev_admin.id),
        "{ids:?}"
    );
    for hidden in [&s.admin, &prod_ci, &everywhere_reader] {
        assert!(!ids.contains(&hidden.id), "{} listed: {ids:?}", hidden.id);
    }
    // The attack: the dev/* admin revokes the global admin.
    for victim in [&s.admin, &prod_ci, &everywhere_reader] {
        let r = s
            .api(
                "DELETE",
                &format!("/api/v1/tokens/{}", victim.id),
                &dev_admin,
                Value::Null,
            )
            .await;
        r.expect(403);
        assert!(r.message().contains("scope"), "{}", r.message());
    }
    s.api("GET", "/api/v1/tokens", &s.admin, Value::Null)
        .await
        .expect(200);
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", dev_ci.id),
        &dev_admin,
        Value::Null,
    )
    .await
    .expect(200);
    // The unscoped admin sees them all.
    let all = s.api("GET", "/api/v1/tokens", &s.admin, Value::Null).await;
    assert_eq!(all.json()["tokens"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn users_are_created_by_admins_with_printable_names_and_audited() {
    let s = Server::new();
    let r = s
        .api("POST", "/api/v1/users", &s.admin, json!({"name": "alice"}))
        .await;
    r.expect(201);
    assert_eq!(r.json()["user"]["name"], "alice");
    s.api("POST", "/api/v1/users", &s.admin, json!({"name": "alice"}))
        .await
        .expect(409);
    for bad in [
        "",
        "a b",
        "evil\u{1b}[31m",
        "line\nbreak",
        "tok_0123456789abcdef",
        &"x".repeat(65),
    ] {
        let r = s
            .api("POST", "/api/v1/users", &s.admin, json!({"name": bad}))
            .await;
        r.expect(400);
    }
    let approver = s.role_token(Role::Approver);
    s.api("POST", "/api/v1/users", &approver, json!({"name": "bob"}))
        .await
        .expect(403);
    s.api("GET", "/api/v1/users", &approver, Value::Null)
        .await
        .expect(403);
    let listed = s.api("GET", "/api/v1/users", &s.admin, Value::Null).await;
    let names: Vec<String> = listed.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alice"]);

    // Human roles need a user; it must exist; machine roles default to their own identity.
    let r = s
        .api(
            "POST",
            "/api/v1/tokens",
            &s.admin,
            json!({"name": "a1", "role": "approver"}),
        )
        .await;
    r.expect(400);
    assert!(r.message().contains("--user"), "{}", r.message());
    s.api(
        "POST",
        "/api/v1/tokens",
        &s.admin,
        json!({"name": "a1", "role": "approver", "user": "nobody"}),
    )
    .await
    .expect(404);
    let r = s
        .api(
            "POST",
            "/api/v1/tokens",
            &s.admin,
            json!({"name": "a1", "role": "approver", "user": "alice"}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.json()["token"]["user"], "alice");
    let r = s
        .api(
            "POST",
            "/api/v1/tokens",
            &s.admin,
            json!({"name": "ci", "role": "ci"}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.json()["token"]["user"], r.json()["token"]["id"]);

    let audit = s.audit().await;
    let created = audit
        .iter()
        .find(|e| e["action"] == "user.create" && e["detail"]["user"] == "alice")
        .expect("user.create audited");
    assert!(
        created["actor"].as_str().unwrap().contains(&s.admin.id),
        "{created}"
    );
    assert!(audit
        .iter()
        .any(|e| e["action"] == "token.create" && e["detail"]["user"] == "alice"));
}

#[tokio::test]
async fn a_run_stored_before_users_existed_is_judged_by_its_author_tokens_user() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.user("alice");
    s.user("bob");
    let alice = s.token_of(Some("alice"), "alice", Role::Approver, &[], None);
    let bob = s.token_of(Some("bob"), "bob", Role::Approver, &[], None);
    let r = s.api("POST", PLAN_TOKEN, &alice, Value::Null).await;
    r.expect(201);
    let phase = tok(&r);
    // A run as stored before upgrade: no author_user, authored by alice's plan-phase token.
    let now = now_ms();
    let run: airlock_store::RunRecord = serde_json::from_value(json!({
        "id": "run_legacy", "stack": "dev/app", "status": "needs_approval",
        "author": format!("plan for alice ({})", phase.id), "author_token": phase.id,
        "author_role": "agent", "created_at": now, "updated_at": now,
        "expires_at": now + 3_600_000, "fingerprint": "f".repeat(64),
        "terraform_version": "1.11.4", "plan_sha256": "0".repeat(64), "decision": "allow",
        "report": {}, "destroys": [], "required_approvals": 1, "approvals": [],
    }))
    .expect("a run record without the identity fields still loads");
    s.store
        .create_run(
            &run,
            &[("plan.tfplan", b"plan")],
            airlock_store::NewAudit::ok("test", "run.create", Some("dev/app"), json!({})),
        )
        .unwrap();
    let r = s
        .api("POST", "/api/v1/runs/run_legacy/approve", &alice, json!({}))
        .await;
    r.expect(403);
    assert!(
        r.message().contains("user alice planned"),
        "{}",
        r.message()
    );
    s.api("POST", "/api/v1/runs/run_legacy/approve", &bob, json!({}))
        .await
        .expect(200);
    let stored = s.store.run("run_legacy").unwrap().unwrap();
    assert_eq!(stored.author_user, "alice");
    assert_eq!(stored.approvals[0].by_user, "bob");
}

/// Forge logins: admins give them at creation or later; each is checked, lower-cased, one
/// user's only; bad ones are refused with nothing stored.
#[tokio::test]
async fn users_carry_forge_logins_that_only_admins_give() {
    let s = Server::new();
    let r = s
        .api(
            "POST",
            "/api/v1/users",
            &s.admin,
            json!({"name": "alice", "forge_logins": ["GitHub:Alice", "github:alice", "gitlab:al"]}),
        )
        .await;
    r.expect(201);
    assert_eq!(
        r.json()["user"]["forge_logins"],
        json!(["github:alice", "gitlab:al"])
    );
    s.api("POST", "/api/v1/users", &s.admin, json!({"name": "bob"}))
        .await
        .expect(201);
    for bad in [
        "alice",
        "github:",
        "bitbucket:alice",
        "github:a b",
        "github:evil\u{1b}[31m",
        "github:<script>",
        &format!("github:{}", "x".repeat(101)),
    ] {
        let r = s
            .api(
                "POST",
                "/api/v1/users/bob/forge-logins",
                &s.admin,
                json!({"login": bad}),
            )
            .await;
        r.expect(400);
        assert!(!r.text().contains('\u{1b}'), "{}", r.text());
        s.api(
            "POST",
            "/api/v1/users",
            &s.admin,
            json!({"name": "carol", "forge_logins": [bad]}),
        )
        .await
        .expect(400);
    }
    // A login is one user's: bob cannot take alice's, in any case.
    s.api(
        "POST",
        "/api/v1/users/bob/forge-logins",
        &s.admin,
        json!({"login": "GITHUB:alice"}),
    )
    .await
    .expect(409);
    s.api(
        "POST",
        "/api/v1/users",
        &s.admin,
        json!({"name": "carol", "forge_logins": ["gitlab:AL"]}),
    )
    .await
    .expect(409);
    s.api(
        "POST",
        "/api/v1/users/nobody/forge-logins",
        &s.admin,
        json!({"login": "github:nobody"}),
    )
    .await
    .expect(404);
    let approver = s.role_token(Role::Approver);
    s.api(
        "POST",
        "/api/v1/users/bob/forge-logins",
        &approver,
        json!({"login": "github:bob"}),
    )
    .await
    .expect(403);
    let r = s
        .api(
            "POST",
            "/api/v1/users/bob/forge-logins",
            &s.admin,
            json!({"login": "github:Bob"}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.json()["user"]["forge_logins"], json!(["github:bob"]));
    let listed = s.api("GET", "/api/v1/users", &s.admin, Value::Null).await;
    let users: Vec<(Value, Value)> = listed.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["name"].clone(), u["forge_logins"].clone()))
        .collect();
    assert_eq!(
        users,
        [
            (json!("alice"), json!(["github:alice", "gitlab:al"])),
            (json!("bob"), json!(["github:bob"])),
        ]
    );
}
