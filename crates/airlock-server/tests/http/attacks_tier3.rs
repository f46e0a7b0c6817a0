//! Adversarial review of tier 3 (OIDC issuer and trusts, drift reports, recorded backup
//! verifications): each test is an attack; the ones marked ATTACK fail until it is fixed, the
//! ones marked REFUSED pass today and pin the refusal.

use airlock_core::audit::GENESIS;
use airlock_core::Role;
use airlock_server::ServerConfig;
use base64::Engine;
use serde_json::{json, Value};

use crate::support::*;

fn rfc3339_now() -> String {
    // Seconds precision is enough: the server parses RFC 3339.
    let secs = airlock_store::now_ms() / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn verification(events: u64, head: &str, exported_at: &str) -> Value {
    json!({"ok": true, "manifest_sha256": "a".repeat(64), "exported_at": exported_at,
           "audit_events": events, "audit_head": head, "problems": 0, "stacks": 1, "versions": 1})
}

/// ATTACK (a ci token, all stacks): `audit_events: 0` with the genesis head is accepted as
/// "this server's backup" on any server, whatever its history, so CI records a verified backup
/// "exported now" that it never exported or verified, and `airlock doctor --server` reports
/// the backups as verified. Expected: a backup exported at T holds every event before T; an
/// empty audit is only this server's when it had no events at `exported_at`.
#[tokio::test]
async fn attacks_tier3_a_backup_verification_with_the_genesis_head_of_a_busy_server_is_refused() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    assert!(!s.audit().await.is_empty(), "the server has history");
    let r = s
        .api(
            "POST",
            "/api/v1/backups/verifications",
            &ci,
            verification(0, GENESIS, &rfc3339_now()),
        )
        .await;
    assert!(
        r.status.is_client_error(),
        "a verification of an empty backup 'exported now' was recorded for a server with history: {r:?}"
    );
}

/// ATTACK (a ci token): `exported_at` is not checked against the clock or the audit head, so
/// a verification of a backup "exported" in 2099 (with the real current head, which the token
/// can read) is recorded, and the doctor's "age of the newest verified export" never grows.
/// Expected: an export time in the future (beyond clock skew) is refused.
#[tokio::test]
async fn attacks_tier3_a_backup_verification_exported_in_the_future_is_refused() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let events = s.audit().await;
    let last = events.last().expect("an event");
    let r = s
        .api(
            "POST",
            "/api/v1/backups/verifications",
            &ci,
            verification(
                last["seq"].as_u64().unwrap(),
                last["hash"].as_str().unwrap(),
                "2099-01-01T00:00:00Z",
            ),
        )
        .await;
    assert!(
        r.status.is_client_error(),
        "a backup exported in 2099 was recorded as verified: {r:?}"
    );
}

fn trust(repo: &str, stacks: &[&str]) -> Value {
    json!({"forge": "github", "repository": repo, "role": "agent", "stacks": stacks,
           "issuer": "https://token.actions.githubusercontent.com", "audience": "https://airlock.example"})
}

/// ATTACK (an admin scoped to `dev/*`): `GET /api/v1/oidc/trusts` lists every trust, with the
/// repositories, refs and environments that reach `prod/*`, although adding or removing such a
/// trust is refused to this token. Expected: a scoped admin sees only trusts within its scope.
#[tokio::test]
async fn attacks_tier3_a_scoped_admin_lists_only_the_trusts_within_its_stacks() {
    let s = Server::new();
    s.api(
        "POST",
        "/api/v1/oidc/trusts",
        &s.admin,
        trust("org/prod-infra", &["prod/*"]),
    )
    .await
    .expect(201);
    let dev_admin = s.token("dev-admin", Role::Admin, &["dev/*"], None);
    s.api(
        "POST",
        "/api/v1/oidc/trusts",
        &dev_admin,
        trust("org/dev", &["dev/*"]),
    )
    .await
    .expect(201);
    // The scope is enforced on add: pinned here.
    s.api(
        "POST",
        "/api/v1/oidc/trusts",
        &dev_admin,
        trust("org/x", &["prod/*"]),
    )
    .await
    .expect(403);
    let r = s
        .call(
            "GET",
            "/api/v1/oidc/trusts",
            Auth::Bearer(&dev_admin.secret),
            axum::body::Body::empty(),
        )
        .await;
    r.expect(200);
    let text = r.text();
    assert!(text.contains("org/dev"), "{text}");
    assert!(
        !text.contains("org/prod-infra"),
        "an admin of dev/* reads the trust of prod/*: {text}"
    );
}

fn issuer_server() -> Server {
    Server::with_config(ServerConfig {
        public_url: Some("https://airlock.example".into()),
        ..ServerConfig::default()
    })
}

/// ATTACK (an agent token): a deleted (archived) stack refuses every change, but
/// `POST /stacks/{stack}/identity-token` still signs a plan-phase identity token for it, so
/// the cloud role of a stack that no longer exists stays reachable for an hour per call.
/// Expected: 409, as for every other write to an archived stack.
#[tokio::test]
async fn attacks_tier3_no_plan_identity_token_for_a_deleted_stack() {
    let s = issuer_server();
    s.stack("dev/app", false);
    let agent = s.role_token(Role::Agent);
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/archive",
        &s.admin,
        json!({"reason": "decommissioned"}),
    )
    .await
    .expect(200);
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/identity-token",
            &agent,
            json!({"audience": "sts.amazonaws.com"}),
        )
        .await;
    assert!(
        r.status.is_client_error(),
        "a plan-phase identity token was signed for the deleted stack dev/app: {r:?}"
    );
}

/// REFUSED (passes today): a token scoped to `dev/*` gets no plan-phase identity token for
/// `prod/app`, a reader none at all, and a run-bound token no plan-phase one.
#[tokio::test]
async fn attacks_tier3_identity_tokens_stay_within_scope_and_role() {
    let s = issuer_server();
    s.stack("dev/app", false);
    s.stack("prod/app", true);
    let dev_agent = s.token("dev-agent", Role::Agent, &["dev/*"], None);
    let reader = s.role_token(Role::Reader);
    let body = json!({"audience": "sts.amazonaws.com"});
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/identity-token",
        &dev_agent,
        body.clone(),
    )
    .await
    .expect(201);
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/prod%2Fapp/identity-token",
            &dev_agent,
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/identity-token",
            &reader,
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    // A longer lifetime than the maximum is refused, not clamped silently.
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/identity-token",
            &dev_agent,
            json!({"audience": "sts.amazonaws.com", "ttl_seconds": 86_400}),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
}

/// REFUSED (passes today): a drift report is bound to the current serial (an "in sync" report
/// of serial u64::MAX is a 409, not a 500 or a stored report) and a deleted stack takes none.
#[tokio::test]
async fn attacks_tier3_drift_reports_are_bound_to_the_serial_and_a_live_stack() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let plan = json!({"format_version": "1.2", "terraform_version": "1.11.4",
                      "resource_drift": [], "output_changes": {}});
    let b64 = base64::engine::general_purpose::STANDARD.encode(plan.to_string());
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/drift",
            &ci,
            json!({"serial": u64::MAX, "plan_json_b64": b64}),
        )
        .await;
    assert!(r.status.is_client_error(), "{r:?}");
    s.api(
        "POST",
        "/api/v1/stacks/dev%2Fapp/archive",
        &s.admin,
        json!({"reason": "decommissioned"}),
    )
    .await
    .expect(200);
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%2Fapp/drift",
            &ci,
            json!({"serial": null, "error": "refresh failed"}),
        )
        .await;
    assert!(r.status.is_client_error(), "{r:?}");
    assert!(s.api_get("/api/v1/stacks/dev%2Fapp/drift").await["history"]
        .as_array()
        .unwrap()
        .is_empty());
}
