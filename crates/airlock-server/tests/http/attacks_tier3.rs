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
    // Milliseconds, as `airlock backup export` writes it: truncated to the second, "now" could
    // be before this test's own first event, and an empty backup then is consistent.
    airlock_core::time::rfc3339(airlock_store::now_ms())
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

/// REFUSED (a ci token): the real current head with an export time before that head event
/// (beyond the 5 min clock skew) is a false export time; the same report exported now is
/// recorded, so the checks refuse only what contradicts the server's own log.
#[tokio::test]
async fn attacks_tier3_a_backup_verification_exported_before_its_head_is_refused() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let events = s.audit().await;
    let last = events.last().expect("an event");
    let (seq, head) = (
        last["seq"].as_u64().unwrap(),
        last["hash"].as_str().unwrap(),
    );
    let r = s
        .api(
            "POST",
            "/api/v1/backups/verifications",
            &ci,
            verification(seq, head, "2026-01-01T00:00:00Z"),
        )
        .await;
    r.expect(409);
    assert!(
        r.text().contains("before the backup's own head event"),
        "{r:?}"
    );
    s.api(
        "POST",
        "/api/v1/backups/verifications",
        &ci,
        verification(seq, head, &rfc3339_now()),
    )
    .await
    .expect(200);
}

fn trust(repo: &str, stacks: &[&str]) -> Value {
    json!({"forge": "github", "repository": repo, "repository_id": "1001", "owner_id": "2002", "role": "agent", "stacks": stacks,
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
/// `prod/app`, a reader none at all, a stack name cannot inject into `sub`, and a TTL above
/// the maximum is refused.
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
    // `sub` is `stack:NAME:run_phase:PHASE`: a stack name with `:` would forge another
    // subject (`dev:run_phase:apply`); stack names are [a-z0-9._-] segments, so it is a 400.
    let r = s
        .api(
            "POST",
            "/api/v1/stacks/dev%3Arun_phase%3Aapply/identity-token",
            &dev_agent,
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
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
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.message().contains("current serial"), "{r:?}");
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
    assert_eq!(r.status, 409, "{r:?}");
    assert!(s.api_get("/api/v1/stacks/dev%2Fapp/drift").await["history"]
        .as_array()
        .unwrap()
        .is_empty());
}

fn forge_trust(
    id: &str,
    forge: &str,
    role: &str,
    git_ref: Option<&str>,
    stacks: &[&str],
) -> airlock_store::OidcTrustRecord {
    airlock_store::OidcTrustRecord {
        id: id.into(),
        forge: forge.into(),
        issuer: "https://forge.example".into(),
        audience: "https://airlock.example".into(),
        repository: "org/repo".into(),
        repository_id: Some("1001".into()),
        owner_id: Some("2002".into()),
        git_ref: git_ref.map(str::to_owned),
        environment: None,
        role: role.into(),
        stacks: stacks.iter().map(|s| (*s).to_owned()).collect(),
        lifetime_ms: 3_600_000,
        created_at: 0,
        created_by: "admin".into(),
        removed_at: None,
        removed_by: None,
    }
}

fn claims(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// ATTACK (a GitLab pipeline that is not a push to main): for GitHub, an unknown or missing
/// `event_name` counts as a pull request (an allowlist, fails closed), but for GitLab only
/// `merge_request_event` and `external_pull_request_event` do (a denylist): a child pipeline
/// (`parent_pipeline`, which is what an MR pipeline's `trigger: include:` child gets), a
/// multi-project `pipeline`, `chat` or any source GitLab adds later gets `ci` whenever the ref
/// matches, and a ref GitLab itself marks unprotected (`ref_protected: "false"`) is not looked
/// at. Expected: the GitLab cap is an allowlist (push, web, schedule, ...) like GitHub's, and a
/// `ci` grant needs `ref_protected: "true"`.
#[test]
fn attacks_tier3_a_gitlab_job_of_an_unlisted_pipeline_source_is_capped_like_github() {
    let trusts = [forge_trust(
        "t_ci",
        "gitlab",
        "ci",
        Some("refs/heads/main"),
        &[],
    )];
    let job = |source: &str, protected: &str| {
        claims(
            json!({"sub": "project_path:org/repo:ref_type:branch:ref:main", "aud": "https://airlock.example",
            "project_path": "org/repo", "project_id": "1001", "namespace_id": "2002", "ref": "main", "ref_type": "branch", "ref_protected": protected,
            "pipeline_source": source}),
        )
    };
    // The baseline: a push to protected main gets ci (passes today).
    let push = airlock_server::oidc::judge_login(&trusts, &job("push", "true"), None).unwrap();
    assert_eq!(push.role, Role::Ci);
    let mut got = Vec::new();
    for (source, protected) in [
        ("parent_pipeline", "true"),
        ("pipeline", "true"),
        ("some_future_source", "true"),
        ("push", "false"),
    ] {
        let g = airlock_server::oidc::judge_login(&trusts, &job(source, protected), None);
        if g.as_ref().is_ok_and(|g| g.role == Role::Ci) {
            got.push(format!("{source} (ref_protected {protected})"));
        }
    }
    assert!(got.is_empty(), "these GitLab jobs got the ci role: {got:?}");
}

/// ATTACK, design question (a pull-request-triggered job on the base ref: `pull_request_target`,
/// `issue_comment`, `workflow_run`): with a `ci` trust for `refs/heads/main` on `prod/*` and an
/// `agent` trust for pull requests on `dev/*`, the job is capped to agent *through the ci
/// trust*, so it gets agent on `prod/*` (prod plans, prod locks, prod plan-phase cloud
/// credentials), not the `dev/*` the admin gave pull requests. Expected: a trust whose role the
/// cap lowers does not compete with a trust granting that role outright (or a capped trust
/// does not match at all).
#[test]
fn attacks_tier3_a_pull_request_job_gets_the_stacks_of_the_pull_request_trust() {
    let trusts = [
        forge_trust("t_ci", "github", "ci", Some("refs/heads/main"), &["prod/*"]),
        forge_trust("t_pr", "github", "agent", None, &["dev/*"]),
    ];
    let prt = claims(
        json!({"sub": "repo:org/repo:ref:refs/heads/main", "aud": "https://airlock.example",
        "repository": "org/repo", "repository_id": "1001", "repository_owner_id": "2002", "ref": "refs/heads/main", "event_name": "pull_request_target"}),
    );
    let g = airlock_server::oidc::judge_login(&trusts, &prt, None).unwrap();
    assert_eq!(g.role, Role::Agent);
    assert_eq!(
        (g.trust_id.as_str(), g.stacks.clone()),
        ("t_pr", vec!["dev/*".to_owned()]),
        "a pull_request_target job got agent on {:?} through trust {}",
        g.stacks,
        g.trust_id
    );
}

/// REFUSED (passes today): a GitLab-shaped token never matches a GitHub trust of the same
/// issuer (and the reverse), whatever its `sub` says.
#[test]
fn attacks_tier3_a_token_of_one_forge_never_matches_a_trust_of_the_other() {
    let gh = [forge_trust("t_gh", "github", "agent", None, &[])];
    let gl = [forge_trust("t_gl", "gitlab", "agent", None, &[])];
    let gitlab_token = claims(
        json!({"sub": "project_path:org/repo:ref_type:branch:ref:main",
        "aud": "https://airlock.example", "project_path": "org/repo", "project_id": "1001",
        "namespace_id": "2002", "ref": "main", "ref_type": "branch", "pipeline_source": "push"}),
    );
    let github_token = claims(json!({"sub": "repo:org/repo:ref:refs/heads/main",
        "aud": "https://airlock.example", "repository": "org/repo", "repository_id": "1001",
        "repository_owner_id": "2002", "ref": "refs/heads/main", "event_name": "push"}));
    assert!(airlock_server::oidc::judge_login(&gh, &gitlab_token, None).is_err());
    assert!(airlock_server::oidc::judge_login(&gl, &github_token, None).is_err());
    // A GitHub token whose sub names the repository but whose `repository` claim is another.
    let mut mixed = github_token.clone();
    mixed.insert("repository".into(), json!("org/repo2"));
    assert!(airlock_server::oidc::judge_login(&gh, &mixed, None).is_err());
    // Asking for a role above the match is refused, never granted.
    for want in [Role::Ci, Role::Approver, Role::Admin] {
        assert!(
            airlock_server::oidc::judge_login(&gh, &github_token, Some(want)).is_err(),
            "{want}"
        );
    }
}

/// A forge OIDC issuer on a loopback port (a plain HTTP/1.1 thread serving its discovery
/// document and JWKS) with an ES256 key made by `jose` (the key, not airlock's verifier, is
/// all that is shared), and the signing half to mint its job tokens.
struct Forge {
    url: String,
    key: airlock_server::oidc::jose::SigningKey,
}

fn forge() -> Forge {
    use std::io::{BufRead, BufReader, Write};
    let g = airlock_server::oidc::jose::generate_es256().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/.well-known/jwks.json")});
    let jwks = json!({"keys": [g.public_jwk]});
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                    break;
                }
            }
            let body = if line.contains("openid-configuration") {
                discovery.to_string()
            } else {
                jwks.to_string()
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let key = airlock_server::oidc::jose::SigningKey::from_pkcs8(&g.kid, &g.pkcs8).unwrap();
    Forge { url, key }
}

impl Forge {
    /// A GitHub job token of a push to `refs/heads/main` of org/repo, valid for 5 minutes.
    fn push_token(&self, jti: &str) -> String {
        let now = airlock_store::now_ms() / 1000;
        self.key
            .sign(&json!({"iss": self.url, "aud": "https://airlock.example", "sub": "repo:org/repo:ref:refs/heads/main",
                "repository": "org/repo", "repository_id": "1001", "repository_owner_id": "2002", "ref": "refs/heads/main", "event_name": "push",
                "iat": now, "nbf": now, "exp": now + 300, "jti": jti}))
            .unwrap()
    }
}

/// ATTACK (one leaked or replayed forge token, e.g. from a job log): `oidc/login` counts a
/// trust's logins against `LOGIN_LIMIT` (1000 an hour, "a bound on a leaked or replayed forge
/// token's use"), but the store counts only *derived* tokens (`parent_id IS NOT NULL`) and a
/// login token has no parent, so the bound never applies: one forge token, valid for minutes,
/// mints airlock ci tokens without end (each valid for the trust's lifetime, up to 6 h).
/// Expected: the 1001st login of a trust within the hour is refused (better still: one forge
/// token, by its `jti`, is exchanged once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_tier3_one_forge_token_does_not_mint_airlock_tokens_without_bound() {
    let s = issuer_server();
    let f = forge();
    s.api(
        "POST",
        "/api/v1/oidc/trusts",
        &s.admin,
        json!({"forge": "github", "repository": "org/repo", "repository_id": "1001", "owner_id": "2002", "git_ref": "refs/heads/main",
               "role": "ci", "issuer": f.url, "audience": "https://airlock.example"}),
    )
    .await
    .expect(201);
    let leaked = f.push_token("jti-leaked");
    let login = |token: String| {
        s.send(
            request("POST", "/api/v1/oidc/login", Auth::None)
                .header(axum::http::header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(json!({"token": token}).to_string()))
                .unwrap(),
        )
    };
    let first = login(leaked).await;
    first.expect(201);
    assert_eq!(first.json()["role"], "ci");
    let mut minted = 1;
    while minted <= 1000 {
        // A fresh jti each time: a replayed token is refused outright now
        // (`attacks_tier3_a_forge_token_logs_in_once`); the limit still bounds the logins.
        let r = login(f.push_token(&format!("jti-{minted}"))).await;
        if r.status != 201 {
            break;
        }
        minted += 1;
    }
    assert!(
        minted <= 1000,
        "one forge token was exchanged for {minted} airlock ci tokens within the hour"
    );
}

/// ATTACK (a recorded verification that contradicts itself): `ok: true` with `problems: 3` is
/// recorded as a verified backup; the server keeps the client's verdict next to the count that
/// refutes it. Expected: 400 unless `ok` is `problems == 0`.
#[tokio::test]
async fn attacks_tier3_a_backup_verification_ok_with_problems_is_refused() {
    let s = Server::new();
    s.stack("dev/app", false);
    let ci = s.role_token(Role::Ci);
    let events = s.audit().await;
    let last = events.last().expect("an event");
    let mut v = verification(
        last["seq"].as_u64().unwrap(),
        last["hash"].as_str().unwrap(),
        &rfc3339_now(),
    );
    v["problems"] = json!(3);
    let r = s.api("POST", "/api/v1/backups/verifications", &ci, v).await;
    assert!(
        r.status.is_client_error(),
        "a verification with ok: true and 3 problems was recorded: {r:?}"
    );
}

/// ATTACK (repo-jacking): a trust names the repository by its path only, so after `org` is
/// renamed or deleted, whoever registers `org` again and creates `repo` gets jobs whose tokens
/// match (GitHub's own guidance is to pin `repository_owner_id`/`repository_id`; GitLab's
/// `namespace_id`/`project_id`). Two jobs of the same path with different repository ids both
/// get `ci`. Expected: a trust pins the ids (given at `trust add`; learning them at the first
/// login would trust whoever logs in first) and a token with other ids is refused; a trust
/// added before ids were pinned matches nothing until an admin pins it.
#[test]
fn attacks_tier3_a_trust_is_pinned_to_the_repository_not_just_its_name() {
    let trusts = [forge_trust(
        "t_ci",
        "github",
        "ci",
        Some("refs/heads/main"),
        &[],
    )];
    let job = |id: &str| {
        claims(
            json!({"sub": "repo:org/repo:ref:refs/heads/main", "aud": "https://airlock.example",
            "repository": "org/repo", "repository_id": id, "repository_owner_id": "2002",
            "ref": "refs/heads/main", "event_name": "push"}),
        )
    };
    let first = airlock_server::oidc::judge_login(&trusts, &job("1001"), None);
    let squatter = airlock_server::oidc::judge_login(&trusts, &job("9999"), None);
    assert!(first.is_ok());
    assert!(
        squatter.is_err(),
        "repository ids 1001 and 9999 both log in to the same trust as {:?}",
        squatter.map(|g| g.role)
    );
    // A token without the id claims is refused too, and a trust without pinned ids (one added
    // before they were pinned) matches no job at all.
    let mut no_ids = job("1001");
    no_ids.remove("repository_id");
    assert!(airlock_server::oidc::judge_login(&trusts, &no_ids, None).is_err());
    let mut legacy = trusts[0].clone();
    legacy.repository_id = None;
    legacy.owner_id = None;
    let e = airlock_server::oidc::judge_login(&[legacy], &job("1001"), None).unwrap_err();
    assert!(e.contains("airlock trust pin"), "{e}");
}

/// ATTACK (an admin adding or pinning a trust): a trust without ids, with ids that are not the
/// forge's numbers, or pinned a second time to other ids (which is another repository) is
/// refused; a trust added before ids were pinned is refused at login, audited, until an admin
/// pins it, and then logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_tier3_trusts_are_added_pinned_and_an_unpinned_trust_refuses_logins() {
    let s = issuer_server();
    let f = forge();
    let body = |ids: Value| {
        let mut b = json!({"forge": "github", "repository": "org/repo", "git_ref": "refs/heads/main",
                           "role": "ci", "issuer": f.url, "audience": "https://airlock.example"});
        for (k, v) in ids.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for ids in [
        json!({}),
        json!({"repository_id": "1001"}),
        json!({"repository_id": "1001", "owner_id": "org"}),
        json!({"repository_id": "-1", "owner_id": "2002"}),
        json!({"repository_id": "", "owner_id": "2002"}),
    ] {
        let r = s
            .api("POST", "/api/v1/oidc/trusts", &s.admin, body(ids.clone()))
            .await;
        assert_eq!(r.status, 400, "{ids}: {r:?}");
    }
    // A trust as migration 0011 leaves one added before it: no ids.
    let legacy = airlock_store::OidcTrustRecord {
        issuer: f.url.clone(),
        repository_id: None,
        owner_id: None,
        ..forge_trust("trust_legacy", "github", "ci", Some("refs/heads/main"), &[])
    };
    s.store
        .add_oidc_trust(
            &legacy,
            airlock_store::NewAudit::ok("admin", "oidc.trust_add", None, json!({})),
        )
        .unwrap();
    let login = || {
        s.send(
            request("POST", "/api/v1/oidc/login", Auth::None)
                .header(axum::http::header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(
                    json!({"token": f.push_token("jti-legacy")}).to_string(),
                ))
                .unwrap(),
        )
    };
    let r = login().await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.message().contains("airlock trust pin trust_legacy"),
        "{r:?}"
    );
    let denied = s.denials().await;
    assert!(
        denied
            .iter()
            .any(|d| d["action"] == "oidc.login" && d.to_string().contains("trust pin")),
        "the refusal is audited: {denied:?}"
    );
    let pin = |ids: Value| {
        s.api(
            "POST",
            "/api/v1/oidc/trusts/trust_legacy/pin",
            &s.admin,
            ids,
        )
    };
    pin(json!({"repository_id": "10x", "owner_id": "2002"}))
        .await
        .expect(400);
    let ci = s.role_token(Role::Ci);
    let r = s
        .api(
            "POST",
            "/api/v1/oidc/trusts/trust_legacy/pin",
            &ci,
            json!({"repository_id": "1001", "owner_id": "2002"}),
        )
        .await;
    assert_eq!(r.status, 403, "{r:?}");
    pin(json!({"repository_id": "1001", "owner_id": "2002"}))
        .await
        .expect(200);
    login().await.expect(201);
    // Pinned once: other ids are another repository, so another trust.
    let r = pin(json!({"repository_id": "9999", "owner_id": "2002"})).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        s.audit()
            .await
            .iter()
            .any(|e| e["action"] == "oidc.trust_pin"),
        "pinning is audited"
    );
}

/// ATTACK (a job token that leaked, e.g. from a compromised runner): the admin's response is
/// `airlock trust remove`, but on this commit the tokens the trust issued (user = the trust)
/// stay valid for their whole lifetime (up to 6 h), and a token used just before the removal
/// also sits in the server's token cache, which only a token revocation clears. Expected: 401
/// right after the removal, for a token that was in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_tier3_removing_a_trust_ends_the_tokens_it_issued_at_once() {
    let s = issuer_server();
    let f = forge();
    let added = s
        .api(
            "POST",
            "/api/v1/oidc/trusts",
            &s.admin,
            json!({"forge": "github", "repository": "org/repo", "repository_id": "1001", "owner_id": "2002", "git_ref": "refs/heads/main",
                   "role": "ci", "issuer": f.url, "audience": "https://airlock.example"}),
        )
        .await;
    added.expect(201);
    let trust = added.json()["trust"]["id"].as_str().unwrap().to_owned();
    let r = s
        .send(
            request("POST", "/api/v1/oidc/login", Auth::None)
                .header(axum::http::header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(
                    json!({"token": f.push_token("jti-1")}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    r.expect(201);
    let secret = r.json()["secret"].as_str().unwrap().to_owned();
    let use_it = || {
        s.call(
            "GET",
            "/api/v1/stacks",
            Auth::Bearer(&secret),
            axum::body::Body::empty(),
        )
    };
    use_it().await.expect(200);
    s.api(
        "POST",
        &format!("/api/v1/oidc/trusts/{trust}/remove"),
        &s.admin,
        json!({}),
    )
    .await
    .expect(200);
    let after = use_it().await;
    assert_eq!(
        after.status, 401,
        "the token issued by removed trust {trust} still works: {after:?}"
    );
}

/// A forge issuer whose every answer takes `delay` (one thread per connection), counting the
/// discovery documents it served.
fn slow_forge(
    delay: std::time::Duration,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let g = airlock_server::oidc::jose::generate_es256().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let discovery =
        json!({"issuer": url, "jwks_uri": format!("{url}/.well-known/jwks.json")}).to_string();
    let jwks = json!({"keys": [g.public_jwk]}).to_string();
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&served);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (discovery, jwks, count) = (discovery.clone(), jwks.clone(), count.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                std::thread::sleep(delay);
                let body = if line.contains("openid-configuration") {
                    count.fetch_add(1, Ordering::SeqCst);
                    discovery
                } else {
                    jwks
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (url, served)
}

/// ATTACK (unauthenticated): `oidc/login` fetches a trusted issuer's JWKS on a cache miss with
/// no single flight: every concurrent login that misses (the first ones, every one after the
/// 10-minute expiry, and every one naming an unknown `kid` 10 s after the last fetch) makes
/// its own outbound fetch on its own blocking thread, for up to 2 × 5 s. 32 concurrent
/// requests with a forged token (any key, any kid) make the server fetch the forge's
/// discovery document 32 times; thousands hold the blocking pool every store call also waits
/// on. Expected: one fetch per issuer in flight, the other logins wait for its result.
#[test]
fn attacks_tier3_concurrent_logins_make_one_jwks_fetch_per_issuer() {
    let s = issuer_server();
    let (url, served) = slow_forge(std::time::Duration::from_millis(300));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(s.api(
        "POST",
        "/api/v1/oidc/trusts",
        &s.admin,
        json!({"forge": "github", "repository": "org/repo", "repository_id": "1001", "owner_id": "2002", "role": "agent",
               "issuer": url, "audience": "https://airlock.example"}),
    ))
    .expect(201);
    // Signed by a key the issuer never published, under a kid it does not have.
    let stranger = airlock_server::oidc::jose::generate_es256().unwrap();
    let key =
        airlock_server::oidc::jose::SigningKey::from_pkcs8(&stranger.kid, &stranger.pkcs8).unwrap();
    let now = airlock_store::now_ms() / 1000;
    let forged = key
        .sign(
            &json!({"iss": url, "aud": "https://airlock.example", "sub": "repo:org/repo:x",
            "repository": "org/repo", "event_name": "push", "iat": now, "exp": now + 300}),
        )
        .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..32 {
            let (s, forged) = (&s, forged.clone());
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let r = rt.block_on(
                    s.send(
                        request("POST", "/api/v1/oidc/login", Auth::None)
                            .header(axum::http::header::CONTENT_TYPE, "application/json")
                            .body(axum::body::Body::from(json!({"token": forged}).to_string()))
                            .unwrap(),
                    ),
                );
                assert_eq!(r.status, 401, "{r:?}");
            });
        }
    });
    let fetched = served.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        fetched <= 2,
        "32 unauthenticated logins with a forged token made {fetched} fetches of the issuer's discovery document"
    );
}

// ---- one login per forge ID token (its `jti`), across replicas ----

/// A server trusting `f`'s push jobs of org/repo on refs/heads/main with `ci`.
async fn trusting(f: &Forge) -> Server {
    let s = issuer_server();
    s.api(
        "POST",
        "/api/v1/oidc/trusts",
        &s.admin,
        json!({"forge": "github", "repository": "org/repo", "repository_id": "1001", "owner_id": "2002",
               "git_ref": "refs/heads/main", "role": "ci", "issuer": f.url, "audience": "https://airlock.example"}),
    )
    .await
    .expect(201);
    s
}

async fn forge_login(s: &Server, token: &str, role: Option<&str>) -> Resp {
    s.send(
        request("POST", "/api/v1/oidc/login", Auth::None)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(
                json!({"token": token, "role": role}).to_string(),
            ))
            .unwrap(),
    )
    .await
}

impl Forge {
    /// [`Forge::push_token`] with `changes` merged into its claims (a `null` removes one).
    fn push_token_with(&self, changes: Value) -> String {
        let now = airlock_store::now_ms() / 1000;
        let mut c = json!({"iss": self.url, "aud": "https://airlock.example", "sub": "repo:org/repo:ref:refs/heads/main",
            "repository": "org/repo", "repository_id": "1001", "repository_owner_id": "2002",
            "ref": "refs/heads/main", "event_name": "push",
            "iat": now, "nbf": now, "exp": now + 300, "jti": "jti-default"});
        for (k, v) in changes.as_object().unwrap() {
            match v {
                Value::Null => c.as_object_mut().unwrap().remove(k),
                v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        self.key.sign(&c).unwrap()
    }
}

/// ATTACK (a job's ID token read from a log line, an artifact or a compromised step): the token
/// logs in again and again until it expires (GitHub: minutes; GitLab: the job's lifetime),
/// each time minting a fresh airlock ci token. Expected: the second login with the same token
/// is refused (401, audited, saying to request a fresh ID token); the job's next token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_tier3_a_forge_token_logs_in_once() {
    let f = forge();
    let s = trusting(&f).await;
    let token = f.push_token("jti-seen-in-a-log");
    forge_login(&s, &token, None).await.expect(201);
    let replay = forge_login(&s, &token, None).await;
    assert_eq!(
        replay.status, 401,
        "the same forge ID token logged in twice: {replay:?}"
    );
    let m = replay.message();
    assert!(
        m.contains("already used") && m.contains("fresh ID token"),
        "{m}"
    );
    let denied = s.denials().await;
    assert!(
        denied.iter().any(|e| e["action"] == "oidc.login"
            && e["detail"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("already used"))),
        "the replay is not audited: {denied:?}"
    );
    // Asking for another role changes nothing: the token is spent.
    forge_login(&s, &token, Some("agent")).await.expect(401);
    // The job's next ID token (a new jti) logs in.
    forge_login(&s, &f.push_token("jti-next-request"), None)
        .await
        .expect(201);
}

/// ATTACK (a replay racing the job itself): 16 logins with one ID token at once. Were the
/// check a read before the insert, several could pass it together. Expected: exactly one 201.
#[test]
fn attacks_tier3_concurrent_logins_with_one_forge_token_have_one_winner() {
    let f = forge();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(trusting(&f));
    // The issuer's keys cached first: the race is on the store, not the fetch.
    rt.block_on(forge_login(&s, &f.push_token("jti-warm-up"), None))
        .expect(201);
    for round in 0..3 {
        let token = f.push_token(&format!("jti-raced-{round}"));
        let start = std::sync::Barrier::new(16);
        let statuses: Vec<u16> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let (s, token, start) = (&s, token.clone(), &start);
                    scope.spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        start.wait();
                        rt.block_on(forge_login(s, &token, None)).status.as_u16()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            statuses.iter().filter(|&&c| c == 201).count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|&c| c == 201 || c == 401),
            "{statuses:?}"
        );
    }
}

/// REFUSED (and must stay so): a token that fails any check before the trust's judgement
/// carries a real job's `jti` (an attacker who saw the jti, not the token, or who holds a
/// token the trust refuses): it must not spend that jti, or anyone could lock a job out.
/// Unsigned, signed by another key, expired, not yet valid, another repository, a pull
/// request job: all refused, and the real job's token still logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_tier3_a_refused_token_does_not_spend_a_real_jobs_jti() {
    let f = forge();
    let s = trusting(&f).await;
    let jti = "jti-of-the-real-job";
    let now = airlock_store::now_ms() / 1000;
    let stranger = airlock_server::oidc::jose::generate_es256().unwrap();
    let other_key =
        airlock_server::oidc::jose::SigningKey::from_pkcs8(f.key.kid(), &stranger.pkcs8).unwrap();
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = json!({"iss": f.url, "aud": "https://airlock.example", "sub": "repo:org/repo:ref:refs/heads/main",
        "repository": "org/repo", "ref": "refs/heads/main", "event_name": "push",
        "iat": now, "nbf": now, "exp": now + 300, "jti": jti});
    let attempts: Vec<(&str, String, Option<&str>, u16)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": f.key.kid()})),
                b64(claims.clone())
            ),
            None,
            401,
        ),
        ("another key under the forge's kid", other_key.sign(&claims).unwrap(), None, 401),
        (
            "expired",
            f.push_token_with(json!({"jti": jti, "iat": now - 900, "nbf": now - 900, "exp": now - 600})),
            None,
            401,
        ),
        (
            "not yet valid",
            f.push_token_with(json!({"jti": jti, "nbf": now + 600})),
            None,
            401,
        ),
        (
            "another repository",
            f.push_token_with(json!({"jti": jti, "repository": "org/other", "sub": "repo:org/other:ref:refs/heads/main"})),
            None,
            401,
        ),
        (
            "a pull request job (on the base branch), which the ci trust never matches",
            f.push_token_with(json!({"jti": jti, "event_name": "pull_request_target"})),
            Some("ci"),
            401,
        ),
    ];
    for (name, token, role, want) in &attempts {
        let r = forge_login(&s, token, *role).await;
        assert_eq!(r.status.as_u16(), *want, "{name}: {r:?}");
    }
    let real = forge_login(&s, &f.push_token(jti), None).await;
    assert_eq!(
        real.status, 201,
        "a refused token spent the real job's jti: {real:?}"
    );
}

/// ATTACK (a token that cannot be recorded): without a `jti` a token could not be spent, so
/// it would log in without bound. GitHub and GitLab set `jti` on every ID token (their
/// documented standard claims), so a token without one, or with one that is not a bounded
/// string, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_tier3_a_forge_token_without_a_usable_jti_is_refused() {
    let f = forge();
    let s = trusting(&f).await;
    for (name, jti) in [
        ("none", Value::Null),
        ("empty", json!("")),
        ("a number", json!(7)),
        ("oversized", json!("j".repeat(129))),
        ("control characters", json!("jti\n1")),
    ] {
        let token = f.push_token_with(json!({ "jti": jti }));
        let first = forge_login(&s, &token, None).await;
        assert_eq!(first.status, 401, "jti {name}: {first:?}");
        assert!(first.message().contains("jti"), "jti {name}: {first:?}");
    }
    // The longest accepted jti.
    forge_login(&s, &f.push_token(&"j".repeat(128)), None)
        .await
        .expect(201);
}

/// The record of a used token lives as long as the token could be accepted (its `exp`, the
/// leeway, and a margin for replicas' clocks), then a later login prunes it: the table holds
/// only live tokens. A record still within the leeway is kept (its token would still verify).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_tier3_used_forge_tokens_are_pruned_once_they_expired() {
    let f = forge();
    let s = trusting(&f).await;
    let now = airlock_store::now_ms();
    let leeway_ms = airlock_server::oidc::LEEWAY_S * 1000;
    let keep_all = i64::MIN;
    s.store
        .use_forge_token(&f.url, "long-expired", now - 3_600_000, keep_all)
        .unwrap();
    s.store
        .use_forge_token(&f.url, "in-the-leeway", now - leeway_ms / 2, keep_all)
        .unwrap();
    forge_login(&s, &f.push_token("jti-prunes"), None)
        .await
        .expect(201);
    assert!(
        s.store
            .use_forge_token(&f.url, "long-expired", now - 3_600_000, keep_all)
            .is_ok(),
        "an hour-old record was not pruned by the next login"
    );
    assert!(
        matches!(
            s.store
                .use_forge_token(&f.url, "in-the-leeway", now - leeway_ms / 2, keep_all),
            Err(airlock_store::StoreError::Conflict(_))
        ),
        "a record whose token is still accepted (within the leeway) was pruned"
    );
}
