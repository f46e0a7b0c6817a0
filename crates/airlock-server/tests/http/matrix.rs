//! Every route × every role against docs/design.md's matrix, the table itself, default deny, and
//! token scope.

use std::collections::BTreeSet;

use airlock_core::{Permission, Role};
use airlock_server::router::table;
use axum::body::Body;
use axum::http::header;
use serde_json::{json, Value};

use crate::support::*;

pub(crate) const STATE: &str = "/state/{*stack}";

/// docs/design.md's roles matrix, verbatim: (permission, [admin, approver, ci, agent, reader]).
/// "apply approved run" and "write state outside a run" carry footnote 1 (per-stack settings
/// may switch them off); the lock row carries footnote 2 (agents: planning only).
const DESIGN_MATRIX: [(Permission, [bool; 5]); 11] = [
    (Permission::Read, [true, true, true, true, true]),
    (Permission::Lock, [true, true, true, true, false]),
    (Permission::CreateRun, [true, true, true, true, false]),
    (Permission::Approve, [true, true, false, false, false]),
    (Permission::ApplyRun, [true, false, true, false, false]),
    (Permission::WriteState, [true, false, false, false, false]),
    (Permission::Restore, [true, true, false, false, false]),
    (Permission::ForceUnlock, [true, true, false, false, false]),
    (Permission::Admin, [true, false, false, false, false]),
    (Permission::ReportDrift, [true, true, true, false, false]),
    (Permission::ReadPlan, [true, true, true, false, false]),
];

#[test]
fn roles_carry_exactly_the_design_matrix() {
    for (perm, row) in DESIGN_MATRIX {
        for (role, expected) in Role::ALL.into_iter().zip(row) {
            assert_eq!(role.has(perm), expected, "{role} / {perm:?}");
        }
    }
    for p in [
        Permission::Approve,
        Permission::ApplyRun,
        Permission::WriteState,
        Permission::Restore,
        Permission::ForceUnlock,
        Permission::Admin,
        Permission::ReportDrift,
        Permission::ReadPlan,
    ] {
        assert!(!Role::Agent.has(p), "agents never hold {p:?}");
        assert!(!Role::Reader.has(p), "readers never hold {p:?}");
    }
    assert!(!Role::Agent.may_be_granted_direct_writes());
    assert!(!Role::Reader.may_be_granted_direct_writes());
}

/// Who may call each route of the state backend and the admin/API surface, per docs/design.md.
fn design_allows(method: &str, route: &str) -> Option<[bool; 5]> {
    const ALL: [bool; 5] = [true; 5];
    const LOCKERS: [bool; 5] = [true, true, true, true, false];
    const ADMIN: [bool; 5] = [true, false, false, false, false];
    const REVIEWERS: [bool; 5] = [true, true, false, false, false];
    const APPLIERS: [bool; 5] = [true, false, true, false, false];
    Some(match (method, route) {
        ("GET", STATE) => ALL,
        // Writes need the lock first; who may actually write is the stack's direct_writes,
        // checked by the firewall (never agents or readers).
        ("POST" | "PUT" | "LOCK" | "UNLOCK", STATE) => LOCKERS,
        ("GET", "/api/v1/whoami") => ALL,
        (_, "/api/v1/tokens" | "/api/v1/tokens/{id}" | "/api/v1/users") => ADMIN,
        ("POST", "/api/v1/users/{name}/forge-logins") => ADMIN,
        ("POST", "/api/v1/stacks") => ADMIN,
        ("PATCH", "/api/v1/stacks/{stack}/settings") => ADMIN,
        ("POST", "/api/v1/stacks/{stack}/protect" | "/api/v1/stacks/{stack}/unprotect") => ADMIN,
        // Deleting (archiving) a stack.
        ("POST", "/api/v1/stacks/{stack}/archive") => ADMIN,
        ("POST", "/api/v1/stacks/{stack}/grants") => REVIEWERS,
        // Recording a backup verification: the pipeline (ci) or an admin.
        ("POST", "/api/v1/backups/verifications") => APPLIERS,
        ("POST", "/api/v1/stacks/{stack}/restore") => REVIEWERS,
        ("GET", "/api/v1/stacks" | "/api/v1/stacks/{stack}") => ALL,
        ("GET", "/api/v1/stacks/{stack}/grants") => ALL,
        ("GET", "/api/v1/stacks/{stack}/versions") => ALL,
        ("GET", "/api/v1/stacks/{stack}/versions/{serial}") => ALL,
        ("GET", "/api/v1/stacks/{stack}/versions/{serial}/raw") => ALL,
        ("GET", "/api/v1/stacks/{stack}/diff") => ALL,
        ("POST", "/api/v1/verify") => ALL,
        ("GET", "/api/v1/audit" | "/api/v1/audit/verify") => ALL,
        // Governed runs: "create run (plan)", "approve / reject run", "apply approved run".
        ("POST", "/api/v1/stacks/{stack}/plan-token" | "/api/v1/stacks/{stack}/runs") => LOCKERS,
        // Reporting for and ending a plan-phase token: the token that minted it (the handler).
        ("POST", "/api/v1/stacks/{stack}/plan-token/{id}/heartbeat") => LOCKERS,
        ("DELETE", "/api/v1/stacks/{stack}/plan-token/{id}") => LOCKERS,
        // A run's plan files hold its variables' values (docs/design.md footnote 4).
        (
            "GET",
            "/api/v1/runs/{id}/artifacts/plan.tfplan" | "/api/v1/runs/{id}/artifacts/plan.json",
        ) => [true, true, true, false, false],
        ("GET", r) if r.starts_with("/api/v1/runs") => ALL,
        ("POST", "/api/v1/runs/{id}/approve" | "/api/v1/runs/{id}/reject") => REVIEWERS,
        // Withdrawing one's own run needs what planning it needed (the author's user only).
        ("POST", "/api/v1/runs/{id}/withdraw") => LOCKERS,
        (
            "POST",
            "/api/v1/runs/{id}/apply" | "/api/v1/runs/{id}/finish" | "/api/v1/runs/{id}/log",
        ) => APPLIERS,
        // Server policy sets: admins change them; everyone may read what governs the runs.
        ("POST", "/api/v1/policies" | "/api/v1/policies/{id}/remove") => ADMIN,
        ("GET", "/api/v1/policies" | "/api/v1/policies/{id}") => ALL,
        _ => return None,
    })
}

fn permission_for(method: &str, route: &str) -> Option<Permission> {
    table().permission_for(method, route)
}

#[test]
fn the_route_table_matches_the_design_matrix() {
    let mut seen = BTreeSet::new();
    let table = table();
    for r in table.routes() {
        let (method, route, perm) = (r.method.as_str(), r.path, r.permission);
        assert!(
            seen.insert((method, route)),
            "{method} {route} is listed twice"
        );
        assert_eq!(permission_for(method, route), Some(perm));
        if let Some(expected) = design_allows(method, route) {
            for (role, allowed) in Role::ALL.into_iter().zip(expected) {
                assert_eq!(
                    role.has(perm),
                    allowed,
                    "{role} on {method} {route} ({perm:?})"
                );
            }
        }
        // Whatever routes are added, an agent never reaches one that needs these.
        if matches!(
            perm,
            Permission::Approve
                | Permission::ApplyRun
                | Permission::WriteState
                | Permission::Restore
                | Permission::ForceUnlock
                | Permission::Admin
                | Permission::ReportDrift
                | Permission::ReadPlan
        ) {
            assert!(!Role::Agent.has(perm), "{method} {route}");
        }
    }
    // Every route docs/design.md's state backend and admin surface needs is in the table.
    for (method, route) in [
        ("GET", STATE),
        ("POST", STATE),
        ("PUT", STATE),
        ("LOCK", STATE),
        ("UNLOCK", STATE),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/{id}"),
        ("POST", "/api/v1/stacks"),
        ("PATCH", "/api/v1/stacks/{stack}/settings"),
        ("POST", "/api/v1/stacks/{stack}/protect"),
        ("POST", "/api/v1/stacks/{stack}/unprotect"),
        ("POST", "/api/v1/stacks/{stack}/archive"),
        ("POST", "/api/v1/stacks/{stack}/grants"),
        ("POST", "/api/v1/stacks/{stack}/restore"),
        ("GET", "/api/v1/audit"),
    ] {
        assert!(
            permission_for(method, route).is_some(),
            "{method} {route} missing"
        );
    }
    // DELETE of state is never allowed (Terraform never sends it; history is append-only).
    assert_eq!(permission_for("DELETE", STATE), None);
}

/// A server with `dev/app` and `prod/app` at serial 1, and one token per role.
async fn fixture() -> (Server, Vec<(Role, Tok)>) {
    let s = Server::new();
    for stack in ["dev/app", "prod/app"] {
        s.stack(stack, false);
        s.locked_write(stack, &s.admin, &plain(1)).await.expect(200);
    }
    let tokens = Role::ALL
        .into_iter()
        .map(|r| (r, s.role_token(r)))
        .collect();
    (s, tokens)
}

/// A concrete request for a table row, on `stack`.
pub(crate) fn concrete(
    s: &Server,
    method: &str,
    route: &str,
    stack: &str,
    n: usize,
) -> (String, Vec<u8>) {
    let encoded = stack.replace('/', "%2F");
    let mut path = route
        .replace("{*stack}", stack)
        .replace("{stack}", &encoded)
        .replace("{serial}", "1");
    if route == "/api/v1/tokens/{id}" {
        let victim = s.token(&format!("victim-{n}"), Role::Reader, &[], None);
        path = path.replace("{id}", &victim.id);
    }
    // Routes added later: any placeholder gets a plausible value.
    while let (Some(a), Some(b)) = (path.find('{'), path.find('}')) {
        path.replace_range(a..=b, "1");
    }
    if route.ends_with("/diff") {
        path.push_str("?from=1&to=1");
    }
    let body = match (method, route) {
        ("POST" | "PUT", STATE) => plain(2),
        ("LOCK", STATE) => lock_info(&format!("matrix-{n}"), "OperationTypePlan").into_bytes(),
        ("UNLOCK", STATE) => lock_info("nobody-holds-this", "OperationTypePlan").into_bytes(),
        ("POST", "/api/v1/tokens") => json!({"name": format!("m{n}"), "role": "reader"})
            .to_string()
            .into_bytes(),
        ("POST", "/api/v1/users") => json!({"name": format!("m{n}")}).to_string().into_bytes(),
        ("POST", "/api/v1/users/{name}/forge-logins") => json!({"login": format!("github:m{n}")})
            .to_string()
            .into_bytes(),
        ("POST", "/api/v1/stacks") => json!({"name": format!("{stack}-new-{n}")})
            .to_string()
            .into_bytes(),
        ("PATCH", _) => json!({"required_approvals": 1}).to_string().into_bytes(),
        // The admin protects x_type, then unprotects it.
        ("POST", r) if r.ends_with("/protect") || r.ends_with("/unprotect") => {
            json!({"types": ["x_type"]}).to_string().into_bytes()
        }
        // An empty reason: authorized, then refused, so dev/app stays live for the other rows
        // (deletion itself is tested in stacks.rs).
        ("POST", r) if r.ends_with("/archive") => json!({"reason": ""}).to_string().into_bytes(),
        ("POST", r) if r.ends_with("/grants") => {
            json!({"addresses": ["a.b"], "ttl": "1h", "reason": "matrix"})
                .to_string()
                .into_bytes()
        }
        ("POST", r) if r.ends_with("/restore") => json!({"serial": 1, "reason": "matrix"})
            .to_string()
            .into_bytes(),
        ("POST", "/api/v1/verify") => json!({"stack": stack}).to_string().into_bytes(),
        ("POST", "/api/v1/policies") => json!({"stack_glob": format!("matrix-{n}/*"), "files": [{"path": "p.rego", "text": "package main\n"}]})
            .to_string()
            .into_bytes(),
        ("POST", "/api/v1/policies/{id}/remove") => json!({"reason": "matrix"}).to_string().into_bytes(),
        ("POST", "/api/v1/backups/verifications") => json!({"ok": true, "manifest_sha256": "0".repeat(64),
            "exported_at": "2026-01-01T00:00:00Z", "audit_events": 0, "audit_head": "0".repeat(64),
            "problems": 0, "stacks": 0, "versions": 0}).to_string().into_bytes(),
        ("GET", _) => Vec::new(),
        _ => b"{}".to_vec(),
    };
    (path, body)
}

/// The status a role holding the route's permission gets for [`concrete`]'s request, for
/// the routes this suite knows.
fn expected_ok(method: &str, route: &str, role: Role) -> Option<u16> {
    Some(match (method, route) {
        ("GET", STATE) => 200,
        // Not locked: 409 for roles in the stack's direct_writes; the firewall refuses agents
        // with a 403 that names the write, not the route's permission.
        ("POST" | "PUT", STATE) if role == Role::Agent => 403,
        ("POST" | "PUT", STATE) => 409,
        ("LOCK" | "UNLOCK", STATE) => 200,
        ("POST", "/api/v1/tokens" | "/api/v1/stacks" | "/api/v1/users") => 201,
        ("POST", "/api/v1/stacks/{stack}/grants") => 201,
        // serial 1 is already current.
        ("POST", "/api/v1/stacks/{stack}/restore") => 409,
        ("POST", "/api/v1/stacks/{stack}/archive") => 400,
        ("POST", "/api/v1/policies") => 201,
        // The placeholder ids name no set, no user.
        ("POST", "/api/v1/users/{name}/forge-logins") => 404,
        ("POST", "/api/v1/policies/{id}/remove") | ("GET", "/api/v1/policies/{id}") => 404,
        // Run routes get placeholder ids and bodies: only authorization is checked for them.
        (_, r) if r.contains("/runs") || r.contains("/plan-token") => return None,
        (m, r) if design_allows(m, r).is_some() => 200,
        _ => return None,
    })
}

#[tokio::test]
async fn every_route_for_every_role_follows_the_table() {
    let (s, tokens) = fixture().await;
    let mut n = 0;
    let table = table();
    for r in table.routes() {
        let (method, route, perm) = (r.method.as_str(), r.path, r.permission);
        for (role, tok) in &tokens {
            n += 1;
            let (path, body) = concrete(&s, method, route, "dev/app", n);
            let denials_before = s.denials().await.len();
            let req = request(method, &path, Auth::Bearer(&tok.secret))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap();
            let r = s.send(req).await;
            let what = format!("{role} {method} {path}");
            if role.has(perm) {
                assert_ne!(r.status, 401, "{what}: {r:?}");
                if r.status == 403 {
                    assert!(
                        !r.message().starts_with("permission denied"),
                        "{what} refused by the table: {r:?}"
                    );
                }
                if let Some(status) = expected_ok(method, route, *role) {
                    assert_eq!(r.status.as_u16(), status, "{what}: {r:?}");
                }
                if method == "LOCK" && r.status == 200 {
                    let id = format!("matrix-{n}");
                    s.unlock("dev/app", tok, &id, "OperationTypePlan")
                        .await
                        .expect(200);
                }
            } else {
                assert_eq!(r.status, 403, "{what}: {r:?}");
                assert_eq!(r.json()["error"]["code"], "forbidden");
                let msg = r.message();
                assert!(
                    msg.contains(&format!("the {} permission", perm.name()))
                        && msg.contains(role.as_str()),
                    "{what}: the refusal must name the role and the permission: {msg}"
                );
                let denials = s.denials().await;
                assert_eq!(denials.len(), denials_before + 1, "{what} is audited");
                let last = denials.last().unwrap();
                assert!(last["actor"].as_str().unwrap().contains(&tok.id));
                assert_no_secret(&r.text(), &[tok]);
            }
        }
    }
    // Nothing a refused request asked for happened.
    assert_eq!(s.versions("dev/app"), [1]);
    assert!(s.store.current_lock("dev/app").unwrap().is_none());
    let stacks: Vec<String> = s
        .store
        .list_stacks()
        .unwrap()
        .into_iter()
        .map(|st| st.name)
        .collect();
    assert_eq!(
        stacks.len(),
        3,
        "only the admin created a stack: {stacks:?}"
    );
}

#[tokio::test]
async fn methods_missing_from_the_table_are_refused_even_for_admins() {
    let (s, _) = fixture().await;
    let routes: BTreeSet<&str> = table().routes().iter().map(|r| r.path).collect();
    let mut n = 1000;
    for route in routes {
        for method in [
            "GET", "POST", "PUT", "PATCH", "DELETE", "LOCK", "UNLOCK", "OPTIONS", "HEAD",
        ] {
            if permission_for(method, route).is_some()
                || (method == "HEAD" && permission_for("GET", route).is_some())
            {
                continue;
            }
            n += 1;
            let (path, _) = concrete(&s, "GET", route, "dev/app", n);
            let r = s
                .call(method, &path, Auth::Bearer(&s.admin.secret), b"{}".to_vec())
                .await;
            assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        }
    }
    // `/state` is routed for any method; the table is what refuses DELETE.
    let r = s
        .call(
            "DELETE",
            "/state/dev/app",
            Auth::Bearer(&s.admin.secret),
            Body::empty(),
        )
        .await;
    r.expect(405);
    assert!(r.message().contains("not supported"), "{}", r.message());
    assert_eq!(s.versions("dev/app"), [1]);
    assert!(s.store.stack("dev/app").unwrap().is_some());
}

#[tokio::test]
async fn a_token_scoped_to_dev_is_refused_on_prod() {
    let (s, _) = fixture().await;
    for role in Role::ALL {
        let scoped = s.token(&format!("dev-{role}"), role, &["dev/*"], None);
        let mut n = 2000;
        for r in table().routes() {
            let (method, route, perm) = (r.method.as_str(), r.path, r.permission);
            if !route.contains("stack}") || !role.has(perm) {
                continue;
            }
            n += 1;
            let (path, body) = concrete(&s, method, route, "prod/app", n);
            let r = s
                .call(method, &path, Auth::Bearer(&scoped.secret), body)
                .await;
            assert_eq!(r.status, 403, "{role} {method} {path}: {r:?}");
            assert!(r.message().contains("scoped"), "{}", r.message());
            // The same request on dev/app passes authorization.
            n += 1;
            let (path, body) = concrete(&s, method, route, "dev/app", n);
            let r = s
                .call(method, &path, Auth::Bearer(&scoped.secret), body)
                .await;
            assert_ne!(r.status, 401, "{role} {method} {path}: {r:?}");
            if r.status == 403 {
                assert!(
                    !r.message().contains("scoped"),
                    "{role} {method} {path}: {r:?}"
                );
            }
            if method == "LOCK" && r.status == 200 {
                let id = format!("matrix-{n}");
                s.unlock("dev/app", &scoped, &id, "OperationTypePlan")
                    .await
                    .expect(200);
            }
        }
        // Stack-less routes that name a stack in the body check the scope too.
        let me = &scoped;
        if role == Role::Admin {
            s.api("POST", "/api/v1/stacks", me, json!({"name": "prod/new"}))
                .await
                .expect(403);
            s.api("POST", "/api/v1/stacks", me, json!({"name": "dev/new"}))
                .await
                .expect(201);
        }
        s.api("POST", "/api/v1/verify", me, json!({"stack": "prod/app"}))
            .await
            .expect(403);
        let listed = s
            .call(
                "GET",
                "/api/v1/stacks",
                Auth::Bearer(&me.secret),
                Body::empty(),
            )
            .await;
        listed.expect(200);
        let names: Vec<String> = listed.json()["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| st["name"].as_str().unwrap().to_owned())
            .collect();
        assert!(names.iter().all(|n| n.starts_with("dev/")), "{names:?}");
    }
    assert!(s.store.stack("prod/new").unwrap().is_none());
    assert_eq!(s.versions("prod/app"), [1]);
}

/// The router and the table come from the same calls (`router::routes`), so a routed pair
/// without a row cannot exist; what remains to prove is that every row is served, behind the
/// authorization middleware, and that nothing else is served without a token.
#[tokio::test]
async fn every_row_of_the_table_is_served_behind_authorization() {
    let (s, _) = fixture().await;
    for (n, r) in table().routes().iter().enumerate() {
        let (method, route) = (r.method.as_str(), r.path);
        let (path, body) = concrete(&s, method, route, "dev/app", 3000 + n);
        // No token: the middleware answers 401 before any handler (an unrouted path would be
        // 404, or 400 under /state).
        let r = s.call(method, &path, Auth::None, body).await;
        assert_eq!(r.status, 401, "{method} {path} without a token: {r:?}");
        assert_eq!(
            r.json()["error"]["code"],
            "unauthenticated",
            "{method} {path}"
        );
    }
    // Outside the middleware: only health and metrics.
    for path in ["/healthz", "/metrics"] {
        s.call("GET", path, Auth::None, Body::empty())
            .await
            .expect(200);
    }
    for path in ["/api/v1/nothing", "/api", "/"] {
        let r = s.call("GET", path, Auth::None, Body::empty()).await;
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
}

#[tokio::test]
async fn a_scoped_admin_cannot_mint_a_token_beyond_its_scope() {
    let (s, _) = fixture().await;
    let dev_admin = s.token("dev-admin", Role::Admin, &["dev/*"], None);
    for stacks in [
        json!([]),
        json!(["*"]),
        json!(["prod/*"]),
        json!(["dev/*", "prod/app"]),
        json!(["d*"]),
        json!(["dev*"]),
    ] {
        let r = s
            .api(
                "POST",
                "/api/v1/tokens",
                &dev_admin,
                json!({"name": "escape", "role": "admin", "stacks": stacks}),
            )
            .await;
        assert_eq!(r.status, 403, "stacks {stacks}: {r:?}");
        assert!(r.message().contains("scope"), "{}", r.message());
    }
    for stacks in [
        json!(["dev/*"]),
        json!(["dev/app"]),
        json!(["dev/a*", "dev/x"]),
    ] {
        let r = s
            .api(
                "POST",
                "/api/v1/tokens",
                &dev_admin,
                json!({"name": "within", "role": "ci", "stacks": stacks}),
            )
            .await;
        assert_eq!(r.status, 201, "stacks {stacks}: {r:?}");
    }
    let listed = s.store.list_tokens().unwrap();
    assert!(
        listed.iter().all(|t| t.name != "escape"),
        "no token escaped the scope"
    );
}

#[tokio::test]
async fn scoped_tokens_see_and_verify_only_their_stacks() {
    let s = Server::new();
    s.stack("dev/app", false);
    s.stack("prod/app", true);
    let admin = s.role_token(Role::Admin);
    for stack in ["dev/app", "prod/app"] {
        s.lock(stack, &admin, &fresh_id("lock"), "OperationTypeApply")
            .await
            .expect(200);
    }
    let dev_reader = s.token("dev-reader", Role::Reader, &["dev/*"], None);
    let r = s
        .api("GET", "/api/v1/audit?limit=1000", &dev_reader, Value::Null)
        .await;
    r.expect(200);
    let events = r.json()["events"].as_array().unwrap().clone();
    assert!(events.iter().any(|e| e["stack"] == "dev/app"), "{events:?}");
    assert!(
        events.iter().all(|e| e["stack"] == "dev/app"),
        "a dev/* token saw other stacks' events: {events:?}"
    );
    assert!(r.json()["next_before"].as_i64().unwrap() > 0);
    // The unscoped admin sees everything.
    let all = s
        .api("GET", "/api/v1/audit?limit=1000", &admin, Value::Null)
        .await;
    assert!(all.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["stack"] == "prod/app"));
}
