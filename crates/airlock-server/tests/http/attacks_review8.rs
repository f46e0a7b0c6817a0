//! Adversarial review "review8": the state firewall, tokens minted from tokens and the consoles,
//! attacked with a valid low-privilege credential. Each test is one attack; a test marked
//! `#[ignore = "lead fixes"]` is a hole in code this review does not touch.

use airlock_core::Role;
use serde_json::json;

use crate::support::*;

/// A forge login decides approvals on every stack (the author of a change request may not
/// approve its run, and a login that belongs to no user blocks every approval), and is never
/// taken back. The attack: an admin of `dev/*` only gives `github:bob` (not yet mapped) to a
/// decoy user, so the change requests bob writes for prod resolve to the decoy, and bob
/// approves his own prod change; or gives an existing user a login that is not theirs.
#[tokio::test]
async fn a_stack_scoped_admin_cannot_give_forge_logins() {
    let s = Server::new();
    let dev_admin = s.token("dev-admin", Role::Admin, &["dev/*"], None);
    s.user("bob");
    let r = s
        .api(
            "POST",
            "/api/v1/users",
            &dev_admin,
            json!({"name": "decoy", "forge_logins": ["github:bob"]}),
        )
        .await;
    r.expect(403);
    assert!(r.message().contains("all stacks"), "{}", r.message());
    // A user without logins is what a scoped admin needs for its approver tokens.
    s.api(
        "POST",
        "/api/v1/users",
        &dev_admin,
        json!({"name": "decoy"}),
    )
    .await
    .expect(201);
    for user in ["decoy", "bob"] {
        s.api(
            "POST",
            &format!("/api/v1/users/{user}/forge-logins"),
            &dev_admin,
            json!({"login": "github:bob"}),
        )
        .await
        .expect(403);
    }
    assert_eq!(s.store.user_by_forge_login("github:bob").unwrap(), None);
    // The admin of all stacks still gives it to bob.
    s.api(
        "POST",
        "/api/v1/users/bob/forge-logins",
        &s.admin,
        json!({"login": "github:bob"}),
    )
    .await
    .expect(200);
    assert_eq!(
        s.store
            .user_by_forge_login("github:bob")
            .unwrap()
            .as_deref(),
        Some("bob")
    );
}
