//! Minting for a person: a stack-scoped admin mints only for its own user and for users whose
//! every token lies within its scope and who has no forge login; no token
//! beyond a scoped admin's scope is minted for a user who holds a live token it minted
//! (`airlock_store::Person::may_receive`). Each attack succeeded on main and is refused since;
//! the legitimate mints still work.

use airlock_core::Role;
use airlock_store::now_ms;
use serde_json::{json, Value};

use crate::support::*;

const DEV_RUN: &str = "/api/v1/runs/run_dev/approve";

/// A token minted through the API, with its secret.
fn minted(r: &Resp) -> Tok {
    let v = r.json();
    Tok {
        id: v["token"]["id"].as_str().expect("token id").to_owned(),
        secret: v["secret"].as_str().expect("secret").to_owned(),
    }
}

async fn mint(s: &Server, by: &Tok, user: &str, role: &str, stacks: &[&str]) -> Resp {
    s.api(
        "POST",
        "/api/v1/tokens",
        by,
        json!({"name": format!("{role} for {user}"), "role": role, "stacks": stacks, "user": user}),
    )
    .await
}

/// `dave`, the admin of `dev/*` (a token the admin of all stacks gave him).
async fn dave_dev_admin(s: &Server) -> Tok {
    s.api("POST", "/api/v1/users", &s.admin, json!({"name": "dave"}))
        .await
        .expect(201);
    minted(
        mint(s, &s.admin, "dave", "admin", &["dev/*"])
            .await
            .expect(201),
    )
}

/// A run of `dev/app` by `carol` that needs two approvals from two people.
fn dev_run_needing_two(s: &Server) {
    s.stack("dev/app", false);
    let now = now_ms();
    let run: airlock_store::RunRecord = serde_json::from_value(json!({
        "id": "run_dev", "stack": "dev/app", "status": "needs_approval",
        "author": "carol (tok_carol)", "author_token": "tok_carol", "author_user": "carol",
        "author_role": "agent", "created_at": now, "updated_at": now,
        "expires_at": now + 3_600_000, "fingerprint": "f".repeat(64),
        "terraform_version": "1.11.4", "plan_sha256": "0".repeat(64), "decision": "allow",
        "report": {}, "destroys": [], "required_approvals": 2, "approvals": [],
    }))
    .unwrap();
    s.store
        .create_run(
            &run,
            &[("plan.tfplan", b"plan")],
            airlock_store::NewAudit::ok("test", "run.create", Some("dev/app"), json!({})),
        )
        .unwrap();
}

fn denied_mints(audit: &[Value], action: &str, user: &str) -> usize {
    audit
        .iter()
        .filter(|e| {
            e["outcome"] == "denied" && e["action"] == action && e["detail"]["user"] == user
        })
        .count()
}

/// The attack: the admin of `dev/*` mints an approver token for `alice`, a prod approver, and
/// approves a dev run that needs two people as itself and as `alice`: one person is two
/// approvers, and the audit names alice for an approval she never gave. The same token would
/// author runs as alice and spend her per-user limits (phase tokens, console sessions).
#[tokio::test]
async fn a_scoped_admin_cannot_mint_for_a_person_beyond_its_scope() {
    let s = Server::new();
    dev_run_needing_two(&s);
    let dev_admin = dave_dev_admin(&s).await;
    let dave = minted(
        mint(&s, &dev_admin, "dave", "approver", &["dev/*"])
            .await
            .expect(201),
    );
    s.api("POST", "/api/v1/users", &s.admin, json!({"name": "alice"}))
        .await
        .expect(201);
    mint(&s, &s.admin, "alice", "approver", &["prod/*"])
        .await
        .expect(201);
    for role in ["approver", "agent", "reader", "admin"] {
        let r = mint(&s, &dev_admin, "alice", role, &["dev/*"]).await;
        r.expect(403);
        let m = r.message();
        assert!(
            m.contains("user alice was given token")
                && m.contains("only an admin token for all stacks may mint for alice"),
            "{m}"
        );
    }
    s.api("POST", DEV_RUN, &dave, json!({})).await.expect(200);
    let run = s.store.run("run_dev").unwrap().unwrap();
    assert_eq!(run.approvals.len(), 1, "dave alone is one approver");
    assert_eq!(format!("{:?}", run.status), "NeedsApproval");
    // Each refusal is audited, naming the admin and the user.
    let audit = s.audit().await;
    assert_eq!(denied_mints(&audit, "token.create", "alice"), 4);
    assert!(audit.iter().any(|e| e["outcome"] == "denied"
        && e["actor"].as_str().unwrap().contains(&dev_admin.id)
        && e["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("admin scoped to stacks")));
    assert!(!audit.iter().any(|e| e["outcome"] == "ok"
        && e["action"] == "token.create"
        && e["detail"]["user"] == "alice"
        && e["actor"].as_str().unwrap().contains(&dev_admin.id)));
    // A revoked or expired token still counts: alice acted beyond dev/* with it.
    let s2 = Server::new();
    let dev_admin = dave_dev_admin(&s2).await;
    s2.user("alice");
    let old = s2.token_of(Some("alice"), "old", Role::Approver, &["prod/*"], None);
    s2.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", old.id),
        &s2.admin,
        Value::Null,
    )
    .await
    .expect(200);
    s2.user("ann");
    s2.token_of(Some("ann"), "gone", Role::Approver, &[], Some(now_ms() - 1));
    for user in ["alice", "ann"] {
        mint(&s2, &dev_admin, user, "approver", &["dev/*"])
            .await
            .expect(403);
    }
}

/// The attack: a user with a forge login (mapped by the admin of all stacks) has no token yet;
/// the admin of `dev/*` mints for it, and acts as the person whose change requests are theirs.
#[tokio::test]
async fn a_scoped_admin_cannot_mint_for_a_user_with_forge_logins() {
    let s = Server::new();
    let dev_admin = dave_dev_admin(&s).await;
    s.api(
        "POST",
        "/api/v1/users",
        &s.admin,
        json!({"name": "bob", "forge_logins": ["github:bob"]}),
    )
    .await
    .expect(201);
    let r = mint(&s, &dev_admin, "bob", "approver", &["dev/*"]).await;
    r.expect(403);
    assert!(r.message().contains("has forge logins"), "{}", r.message());
    // A trust's pipeline identity is no user name a token can name (refused before the rule).
    mint(&s, &dev_admin, "trust_0123456789abcdef", "ci", &["dev/*"])
        .await
        .expect(400);
    // The admin of all stacks mints for bob.
    mint(&s, &s.admin, "bob", "approver", &["dev/*"])
        .await
        .expect(201);
}

/// The attack, the other way round: the admin of `dev/*` mints for `erin`, a new user wholly
/// within `dev/*` (allowed), and keeps the secret. Later the admin of all stacks makes erin a
/// prod approver, or maps her forge login: the dev admin's token would then act as, and spend
/// the limits of, a prod person. Refused until the dev admin's tokens for erin are revoked
/// (an admin token the dev admin gave her, and what it minted for her, included).
#[tokio::test]
async fn a_person_holding_a_scoped_admins_token_is_not_widened_until_it_is_revoked() {
    let s = Server::new();
    let dev_admin = dave_dev_admin(&s).await;
    s.api("POST", "/api/v1/users", &dev_admin, json!({"name": "erin"}))
        .await
        .expect(201);
    let erin_dev = minted(
        mint(&s, &dev_admin, "erin", "approver", &["dev/*"])
            .await
            .expect(201),
    );
    // An admin token within dev/* for erin, and what it mints for erin herself.
    let erin_admin = minted(
        mint(&s, &dev_admin, "erin", "admin", &["dev/app"])
            .await
            .expect(201),
    );
    let erin_self = minted(
        mint(&s, &erin_admin, "erin", "agent", &["dev/app"])
            .await
            .expect(201),
    );
    for scope in [&["prod/*"][..], &[], &["dev/*", "prod/*"]] {
        let r = mint(&s, &s.admin, "erin", "approver", scope).await;
        r.expect(403);
        let m = r.message();
        assert!(
            m.contains("user erin holds live token") && m.contains("first (`airlock token revoke"),
            "{m}"
        );
    }
    let r = s
        .api(
            "POST",
            "/api/v1/users/erin/forge-logins",
            &s.admin,
            json!({"login": "github:erin"}),
        )
        .await;
    r.expect(403);
    assert!(
        r.message().contains("rights on all stacks"),
        "{}",
        r.message()
    );
    assert_eq!(s.store.user_by_forge_login("github:erin").unwrap(), None);
    let audit = s.audit().await;
    assert_eq!(denied_mints(&audit, "token.create", "erin"), 3);
    assert_eq!(denied_mints(&audit, "user.forge_login", "erin"), 1);
    // Within the scopes of the dev admins' tokens, the admin of all stacks still mints for
    // erin; beyond erin's own admin token's scope too, as she holds that one herself, but
    // not beyond dave's: he minted it, and may have kept its secret.
    mint(&s, &s.admin, "erin", "reader", &["dev/app"])
        .await
        .expect(201);
    mint(&s, &s.admin, "erin", "reader", &["dev/web"])
        .await
        .expect(201);
    // Each of the dev admin's tokens for erin stands in the way until revoked.
    for t in [&erin_dev, &erin_admin, &erin_self] {
        mint(&s, &s.admin, "erin", "approver", &["prod/*"])
            .await
            .expect(403);
        s.api(
            "DELETE",
            &format!("/api/v1/tokens/{}", t.id),
            &s.admin,
            Value::Null,
        )
        .await
        .expect(200);
    }
    mint(&s, &s.admin, "erin", "approver", &["prod/*"])
        .await
        .expect(201);
    s.api(
        "POST",
        "/api/v1/users/erin/forge-logins",
        &s.admin,
        json!({"login": "github:erin"}),
    )
    .await
    .expect(200);
    // Erin is now beyond dev/*: the dev admin no longer mints for her.
    mint(&s, &dev_admin, "erin", "approver", &["dev/*"])
        .await
        .expect(403);
}

/// What stays allowed: the admin of all stacks mints for anyone; a scoped admin mints for
/// users wholly within its scope (new ones included, whoever created them) and for its own
/// user, even when that user holds rights beyond the scope.
#[tokio::test]
async fn scoped_admins_still_mint_for_their_people_and_themselves() {
    let s = Server::new();
    dev_run_needing_two(&s);
    let dev_admin = dave_dev_admin(&s).await;
    // Dave is also a prod approver; he still mints dev tokens for himself.
    mint(&s, &s.admin, "dave", "approver", &["prod/*"])
        .await
        .expect(201);
    let dave = minted(
        mint(&s, &dev_admin, "dave", "approver", &["dev/*"])
            .await
            .expect(201),
    );
    // Frank: created by the admin of all stacks, given a dev token by it; and gina, a new user
    // the dev admin creates.
    s.api("POST", "/api/v1/users", &s.admin, json!({"name": "frank"}))
        .await
        .expect(201);
    mint(&s, &s.admin, "frank", "reader", &["dev/web"])
        .await
        .expect(201);
    let frank = minted(
        mint(&s, &dev_admin, "frank", "approver", &["dev/app"])
            .await
            .expect(201),
    );
    s.api("POST", "/api/v1/users", &dev_admin, json!({"name": "gina"}))
        .await
        .expect(201);
    mint(&s, &dev_admin, "gina", "agent", &["dev/*"])
        .await
        .expect(201);
    // Two people approve the dev run.
    s.api("POST", DEV_RUN, &dave, json!({})).await.expect(200);
    s.api("POST", DEV_RUN, &frank, json!({})).await.expect(200);
    let run = s.store.run("run_dev").unwrap().unwrap();
    assert_eq!(run.approvals.len(), 2);
    // The admin of all stacks mints anything for anyone within the rule.
    s.user("harry");
    mint(&s, &s.admin, "harry", "approver", &[])
        .await
        .expect(201);
    mint(&s, &s.admin, "dave", "approver", &[])
        .await
        .expect(201);
}
