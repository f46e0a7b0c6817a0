//! The web console at `/ui/`, in process: every console route for every role (the console adds
//! no permission: what a role may do through it is what the API lets it do), security headers,
//! sessions (sign-in, sign-out, revocation, expiry of the token), CSRF and cross-site requests,
//! hostile text from plans and state, and the approve form bound to the plan hash.
//! The same flows in a real browser: `crates/airlock/tests/it/console.rs`.

use airlock_core::Role;
use airlock_server::console::CSP;
use airlock_store::{now_ms, NewAudit, RunRecord};
use axum::body::Body;
use axum::http::header;
use serde_json::{json, Value};

use crate::support::*;

const HOST: &str = "airlock.test";
const PLAN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// A browser with one session: its cookie and the CSRF token the pages carry.
pub(crate) struct Browser<'a> {
    s: &'a Server,
    cookie: String,
    csrf: String,
}

/// `value="…"` of the input named `name` in `html`.
fn field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The `name=value` of a `Set-Cookie` named `name`.
fn set_cookie(r: &Resp, name: &str) -> Option<String> {
    r.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A same-origin form POST, as a browser sends one from a console page.
async fn post_as(s: &Server, uri: &str, cookie: &str, body: String) -> Resp {
    s.send(
        request("POST", uri, Auth::None)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, format!("{}://{HOST}", s.scheme))
            .header("sec-fetch-site", "same-origin")
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

async fn sign_in<'a>(s: &'a Server, token: &Tok) -> Browser<'a> {
    try_sign_in(s, &token.secret)
        .await
        .unwrap_or_else(|r| panic!("sign-in failed: {r:?}"))
}

pub(crate) async fn try_sign_in<'a>(s: &'a Server, secret: &str) -> Result<Browser<'a>, Resp> {
    let page = s.call("GET", "/ui/login", Auth::None, Body::empty()).await;
    page.expect(200);
    let login = set_cookie(&page, "airlock_login").expect("login cookie");
    let login = login.split(';').next().unwrap().to_owned();
    let csrf = field(&page.text(), "login_csrf").expect("login csrf field");
    let r = post_as(
        s,
        "/ui/login",
        &login,
        form(&[("token", secret), ("login_csrf", &csrf), ("next", "/ui/")]),
    )
    .await;
    if r.status != 303 {
        return Err(r);
    }
    let session = set_cookie(&r, "airlock_session").expect("session cookie");
    let cookie = session.split(';').next().unwrap().to_owned();
    let mut b = Browser {
        s,
        cookie,
        csrf: String::new(),
    };
    let home = b.get("/ui/").await;
    home.expect(200);
    b.csrf = field(&home.text(), "csrf").expect("csrf in the page");
    Ok(b)
}

impl Browser<'_> {
    pub(crate) async fn get(&self, uri: &str) -> Resp {
        self.s
            .send(
                request("GET", uri, Auth::None)
                    .header(header::HOST, HOST)
                    .header(header::COOKIE, &self.cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
    }

    /// Posts `pairs` plus this session's CSRF token.
    async fn post(&self, uri: &str, pairs: &[(&str, &str)]) -> Resp {
        let mut all = pairs.to_vec();
        all.push(("csrf", &self.csrf));
        post_as(self.s, uri, &self.cookie, form(&all)).await
    }
}

/// A run waiting for approval on `stack` (at serial `serial`), authored by `author_user`, with
/// `plan` as its plan JSON. Stored directly: the console reads it through the API like any run.
pub(crate) fn put_run(
    s: &Server,
    id: &str,
    stack: &str,
    serial: u64,
    author_user: &str,
    plan: &Value,
    destroys: &[&str],
) {
    put_run_with(s, id, stack, serial, author_user, plan, destroys, json!({}));
}

/// [`put_run`] with `extra` fields of the run record replaced.
#[allow(clippy::too_many_arguments)]
pub(crate) fn put_run_with(
    s: &Server,
    id: &str,
    stack: &str,
    serial: u64,
    author_user: &str,
    plan: &Value,
    destroys: &[&str],
    extra: Value,
) {
    let changes: Vec<Value> = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rc| {
            let actions = rc["change"]["actions"].clone();
            let destructive = actions.as_array().unwrap().iter().any(|a| a == "delete");
            json!({"address": rc["address"], "actions": actions, "type": rc["type"], "destructive": destructive,
                   "critical": false, "reasons": [], "mode": "managed", "kind": "update", "severity": null})
        })
        .collect();
    let mut record = json!({
        "id": id, "stack": stack, "status": "needs_approval",
        "author": format!("{author_user} (tok_author)"), "author_token": "tok_author", "author_user": author_user,
        "author_role": "agent", "created_at": now_ms(), "updated_at": now_ms(),
        "expires_at": now_ms() + 3_600_000, "fingerprint": "f1", "terraform_version": "1.11.4",
        "planned_lineage": LINEAGE, "planned_serial": serial, "git_head": "0123456789abcdef", "git_base": null,
        "plan_sha256": PLAN, "config_sha256": null, "decision": "review",
        "report": {"changes": changes, "findings": [{"rule": "destroy", "severity": "high", "message": "deletes <b>things</b>", "address": null}], "summary": {"delete": destroys.len()}},
        "destroys": destroys, "required_approvals": 1, "approvals": [], "rejection": null,
        "applied_by": null, "apply_token": null, "apply_started_at": null,
        "finished_at": null, "note": null
    });
    for (k, v) in extra.as_object().unwrap() {
        record[k] = v.clone();
    }
    let run: RunRecord = serde_json::from_value(record).unwrap();
    let bytes = serde_json::to_vec(plan).unwrap();
    s.store
        .create_run(
            &run,
            &[("plan.json", &bytes)],
            NewAudit::ok("test", "run.create", Some(stack), json!({"run": id})),
        )
        .expect("create run");
}

fn plan_of(changes: &[(&str, &str, Value, Value)]) -> Value {
    let rcs: Vec<Value> = changes
        .iter()
        .map(|(addr, action, before, after)| {
            json!({"address": addr, "mode": "managed", "type": "terraform_data", "name": "x",
                   "change": {"actions": [action], "before": before, "after": after,
                              "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}}})
        })
        .collect();
    json!({"format_version": "1.2", "resource_changes": rcs})
}

fn simple_plan() -> Value {
    plan_of(&[(
        "terraform_data.a",
        "delete",
        json!({"id": "1", "input": "old"}),
        Value::Null,
    )])
}

/// A server with `dev/app` at serial 1, one locked stack, and a run waiting for approval.
async fn fixture() -> Server {
    let s = Server::new();
    s.stack("dev/app", false);
    s.locked_write("dev/app", &s.admin, &plain(1))
        .await
        .expect(200);
    s.locked_write("dev/app", &s.admin, &plain(2))
        .await
        .expect(200);
    s
}

#[tokio::test]
async fn every_console_route_for_every_role_follows_the_api() {
    let s = fixture().await;
    for (n, role) in Role::ALL.into_iter().enumerate() {
        let tok = s.role_token(role);
        let b = sign_in(&s, &tok).await;
        let run = format!("run_read{n}");
        // Each admin or approver restores a version below: runs are planned against the current one.
        let cur = *s.versions("dev/app").last().unwrap();
        put_run(
            &s,
            &run,
            "dev/app",
            cur,
            "tok_author",
            &simple_plan(),
            &["terraform_data.a"],
        );
        // Reading: every role may read, so every page answers.
        for page in [
            "/ui/".to_owned(),
            "/ui/stacks/dev%2Fapp".into(),
            "/ui/stacks/dev%2Fapp/versions/1".into(),
            "/ui/stacks/dev%2Fapp/diff?from=1&to=2".into(),
            "/ui/runs".into(),
            "/ui/runs?stack=dev%2Fapp&status=needs_approval".into(),
            "/ui/runs?change_request=12".into(),
            format!("/ui/runs/{run}"),
            format!("/ui/runs/{run}/live"),
            "/ui/audit".into(),
            "/ui/audit?outcome=denied".into(),
        ] {
            b.get(&page).await.expect(200);
        }
        let may_review = matches!(role, Role::Admin | Role::Approver);
        let refused = if may_review { 303 } else { 403 };
        // Approve and reject: the API's Approve permission, and its message when refused.
        let r = b
            .post(
                &format!("/ui/runs/{run}/approve"),
                &[("plan_sha256", PLAN), ("confirm_destroy", "1")],
            )
            .await;
        r.expect(refused);
        if !may_review {
            assert!(r.text().contains("approve"), "{role}: {}", r.text());
            assert!(r.text().contains("id=\"error\""), "{role}");
        }
        let run2 = format!("run_rej{n}");
        put_run(&s, &run2, "dev/app", cur, "tok_author", &simple_plan(), &[]);
        b.post(&format!("/ui/runs/{run2}/reject"), &[("reason", "no")])
            .await
            .expect(refused);
        // Restore and force-unlock: the API's restore and the backend's force-unlock rules.
        let r = b
            .post(
                "/ui/stacks/dev%2Fapp/restore",
                &[("serial", "1"), ("reason", "back")],
            )
            .await;
        r.expect(refused);
        let holder = s.role_token(Role::Ci);
        let held = fresh_id("held");
        s.lock("dev/app", &holder, &held, "OperationTypeApply")
            .await
            .expect(200);
        b.post("/ui/stacks/dev%2Fapp/unlock", &[("lock_id", &held)])
            .await
            .expect(refused);
        if !may_review {
            s.tf("UNLOCK", "/state/dev/app", &s.admin, b"")
                .await
                .expect(200);
        }
        let status = s.store.run(&run).unwrap().unwrap().status;
        assert_eq!(
            status.as_str(),
            if may_review {
                "approved"
            } else {
                "needs_approval"
            },
            "{role}"
        );
    }
    // The stack list asks for each stack without reading its state.
    let light = s.api_get("/api/v1/stacks/dev%2Fapp?instances=false").await;
    assert!(light["instances"].is_null() && light["current"]["serial"].is_u64());
    assert_eq!(s.api_get("/api/v1/stacks/dev%2Fapp").await["instances"], 2);
    // Without a session, every page and action sends the browser to sign in, and shows nothing.
    for (method, uri) in [
        ("GET", "/ui/"),
        ("GET", "/ui/runs/run_read0"),
        ("GET", "/ui/stacks/dev%2Fapp/diff?from=1&to=2"),
        ("GET", "/ui/audit"),
        ("POST", "/ui/runs/run_read0/approve"),
        ("POST", "/ui/stacks/dev%2Fapp/restore"),
    ] {
        let r = s.call(method, uri, Auth::None, Body::empty()).await;
        r.expect(303);
        let to = r.headers[header::LOCATION].to_str().unwrap();
        assert!(to.starts_with("/ui/login"), "{uri} → {to}");
    }
    // A bearer token is not a session: the console reads only its cookie.
    s.call(
        "GET",
        "/ui/audit",
        Auth::Bearer(&s.admin.secret),
        Body::empty(),
    )
    .await
    .expect(303);
}

#[tokio::test]
async fn a_scoped_token_sees_only_its_stacks_through_the_console() {
    let s = fixture().await;
    s.stack("prod/db", true);
    s.locked_write("prod/db", &s.admin, &plain(1))
        .await
        .expect(200);
    put_run(
        &s,
        "run_prod",
        "prod/db",
        1,
        "tok_author",
        &simple_plan(),
        &[],
    );
    let scoped = s.token("dev-only", Role::Approver, &["dev/*"], None);
    let b = sign_in(&s, &scoped).await;
    let home = b.get("/ui/").await;
    assert!(home.text().contains("dev/app") && !home.text().contains("prod/db"));
    for uri in [
        "/ui/runs/run_prod",
        "/ui/stacks/prod%2Fdb",
        "/ui/stacks/prod%2Fdb/diff?from=1&to=1",
    ] {
        let r = b.get(uri).await;
        r.expect(403);
        assert!(r.text().contains("prod/db"), "{uri}: {}", r.text());
    }
    b.post("/ui/runs/run_prod/approve", &[("plan_sha256", PLAN)])
        .await
        .expect(403);
}

#[tokio::test]
async fn every_console_response_carries_the_security_headers_and_no_inline_code() {
    let s = fixture().await;
    put_run(&s, "run_h", "dev/app", 2, "tok_author", &simple_plan(), &[]);
    let b = sign_in(&s, &s.admin).await;
    let page = b.get("/ui/runs/run_h").await;
    let css = b
        .get(&format!("/ui/assets/console.css?v={}", "whatever"))
        .await;
    let responses = vec![
        s.call("GET", "/ui/login", Auth::None, Body::empty()).await,
        s.call("GET", "/ui/", Auth::None, Body::empty()).await,
        b.get("/ui/").await,
        b.get("/ui/runs/no_such_run").await,
        b.get("/ui/stacks/BAD%20NAME").await,
        post_as(&s, "/ui/logout", &b.cookie, "csrf=wrong".into()).await,
        css,
        page,
    ];
    for r in &responses {
        let h = |k: &str| r.headers.get(k).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(h("content-security-policy").as_deref(), Some(CSP), "{r:?}");
        assert_eq!(h("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(h("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(h("referrer-policy").as_deref(), Some("no-referrer"));
        let html = r.text();
        if h("content-type").is_some_and(|c| c.starts_with("text/html")) {
            assert_eq!(h("cache-control").as_deref(), Some("no-store"));
            for (i, _) in html.match_indices("<script") {
                assert!(
                    html[i..i + 60].contains(" src=\"/ui/assets/"),
                    "inline script"
                );
            }
            assert!(
                !html.contains(" style=") && !html.contains("<style"),
                "inline style"
            );
            assert!(!html.contains(" onclick=") && !html.contains(" onload="));
        }
    }
    assert!(CSP.contains("script-src 'self'") && CSP.contains("frame-ancestors 'none'"));
    assert_eq!(responses[6].status, 200);
    assert!(responses[6].headers[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(responses[3].status, 404);
    assert_eq!(responses[4].status, 400);
}

#[tokio::test]
async fn sessions_are_strict_cookies_and_end_with_sign_out_revocation_and_expiry() {
    let s = fixture().await;
    let tok = s.role_token(Role::Approver);
    let page = s.call("GET", "/ui/login", Auth::None, Body::empty()).await;
    let login = set_cookie(&page, "airlock_login").unwrap();
    assert!(
        login.contains("HttpOnly")
            && login.contains("SameSite=Strict")
            && login.contains("Path=/ui")
    );
    assert!(!login.contains("Secure"), "plain HTTP here");

    // Sign-in refuses a wrong token with the API's reason, and starts no session.
    let r = try_sign_in(&s, "airlock_not-a-token")
        .await
        .err()
        .expect("refused");
    r.expect(401);
    assert!(set_cookie(&r, "airlock_session").is_none());
    assert!(r.text().contains("Sign-in refused"));

    // Sign-out ends the session: the same cookie no longer reads anything.
    let b = sign_in(&s, &tok).await;
    b.post("/ui/logout", &[]).await.expect(303);
    let r = b.get("/ui/audit").await;
    r.expect(303);

    // Revoking the token ends every session signed in with it, at the next request.
    let b1 = sign_in(&s, &tok).await;
    let b2 = sign_in(&s, &tok).await;
    assert_ne!(b1.cookie, b2.cookie, "a fresh session id per sign-in");
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", tok.id),
        &s.admin,
        json!({}),
    )
    .await
    .expect(200);
    let r = b1.get("/ui/").await;
    r.expect(303);
    assert_eq!(r.headers[header::LOCATION], "/ui/login?ended=1");
    for b in [&b1, &b2] {
        let r = b.get("/ui/").await;
        r.expect(303);
        let to = r.headers[header::LOCATION].to_str().unwrap();
        assert!(to.starts_with("/ui/login"), "{to}");
        // And stays ended (not only the first request after the revocation).
        b.get("/ui/runs").await.expect(303);
    }

    // A token that expires ends its sessions when it does.
    let short = s.token("short", Role::Reader, &[], Some(now_ms() + 1_500));
    let b = sign_in(&s, &short).await;
    b.get("/ui/").await.expect(200);
    tokio::time::sleep(std::time::Duration::from_millis(1_700)).await;
    b.get("/ui/").await.expect(303);

    // Under TLS the cookies are Secure.
    let tls = Server::with_config(airlock_server::ServerConfig {
        secure_cookies: true,
        ..Default::default()
    });
    let page = tls
        .call("GET", "/ui/login", Auth::None, Body::empty())
        .await;
    assert!(set_cookie(&page, "airlock_login")
        .unwrap()
        .contains("; Secure"));
    let b = sign_in(&tls, &tls.admin).await;
    assert!(!b.cookie.is_empty());
}

#[tokio::test]
async fn cross_site_and_tokenless_posts_are_refused_and_change_nothing() {
    let s = fixture().await;
    put_run(
        &s,
        "run_c",
        "dev/app",
        2,
        "tok_author",
        &simple_plan(),
        &["terraform_data.a"],
    );
    let b = sign_in(&s, &s.admin).await;
    let approve = form(&[("plan_sha256", PLAN), ("confirm_destroy", "1")]);
    // (what, extra headers, body)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String);
    let cases: Vec<Case<'_>> = vec![
        ("no CSRF token", vec![], approve.clone()),
        ("a wrong CSRF token", vec![], format!("{approve}&csrf=0000")),
        (
            "Sec-Fetch-Site cross-site",
            vec![("sec-fetch-site", "cross-site".into())],
            format!("{approve}&csrf={}", b.csrf),
        ),
        (
            "another Origin",
            vec![("origin", "http://evil.example".into())],
            format!("{approve}&csrf={}", b.csrf),
        ),
        (
            "a null Origin",
            vec![("origin", "null".into())],
            format!("{approve}&csrf={}", b.csrf),
        ),
    ];
    for (name, headers, body) in cases {
        let mut req = request("POST", "/ui/runs/run_c/approve", Auth::None)
            .header(header::HOST, HOST)
            .header(header::COOKIE, &b.cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let r = s.send(req.body(Body::from(body)).unwrap()).await;
        assert_eq!(r.status, 403, "{name}: {}", r.text());
        assert!(r.text().contains("refused"), "{name}");
    }
    assert_eq!(
        s.store.run("run_c").unwrap().unwrap().status.as_str(),
        "needs_approval"
    );
    // Sign-in is CSRF-safe too: without the pre-session cookie's token, or cross-site.
    let r = post_as(&s, "/ui/login", "", form(&[("token", &s.admin.secret)])).await;
    r.expect(403);
    let page = s.call("GET", "/ui/login", Auth::None, Body::empty()).await;
    let login = set_cookie(&page, "airlock_login").unwrap();
    let login = login.split(';').next().unwrap();
    let csrf = field(&page.text(), "login_csrf").unwrap();
    let r = s
        .send(
            request("POST", "/ui/login", Auth::None)
                .header(header::HOST, HOST)
                .header("sec-fetch-site", "cross-site")
                .header(header::COOKIE, login)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form(&[
                    ("token", &s.admin.secret),
                    ("login_csrf", &csrf),
                ])))
                .unwrap(),
        )
        .await;
    r.expect(403);
    // After sign-in, `next` never leaves the console (no open redirect).
    let page = s.call("GET", "/ui/login", Auth::None, Body::empty()).await;
    let login = set_cookie(&page, "airlock_login").unwrap();
    let csrf = field(&page.text(), "login_csrf").unwrap();
    for next in [
        "//evil.example/",
        "https://evil.example/",
        "/ui//evil",
        "/api/v1/tokens",
    ] {
        let r = post_as(
            &s,
            "/ui/login",
            login.split(';').next().unwrap(),
            form(&[
                ("token", &s.admin.secret),
                ("login_csrf", &csrf),
                ("next", next),
            ]),
        )
        .await;
        r.expect(303);
        assert_eq!(r.headers[header::LOCATION], "/ui/", "{next}");
    }
}

#[tokio::test]
async fn hostile_input_is_bounded_and_answered_clearly() {
    let s = fixture().await;
    put_run(
        &s,
        "run_b",
        "dev/app",
        2,
        "tok_author",
        &simple_plan(),
        &["terraform_data.a"],
    );
    let b = sign_in(&s, &s.admin).await;
    // An oversized form body.
    let big = "x".repeat(100_000);
    let r = b.post("/ui/runs/run_b/reject", &[("reason", &big)]).await;
    assert_eq!(r.status, 413, "{r:?}");
    // Fields out of bounds.
    let r = b
        .post("/ui/runs/run_b/reject", &[("reason", &"y".repeat(2001))])
        .await;
    r.expect(400);
    let r = b
        .post("/ui/runs/run_b/approve", &[("plan_sha256", "<script>")])
        .await;
    r.expect(400);
    assert!(!r.text().contains("<script>"));
    let r = b
        .post(
            "/ui/runs/run_b/approve",
            &[("plan_sha256", PLAN), ("confirm_destroy", "one")],
        )
        .await;
    r.expect(400);
    let r = b
        .post(
            "/ui/stacks/dev%2Fapp/restore",
            &[("serial", "x"), ("reason", "r")],
        )
        .await;
    r.expect(400);
    // Bad names and references in URLs.
    b.get("/ui/stacks/..%2F..").await.expect(400);
    b.get("/ui/stacks/dev%2Fapp/diff?from=1&to=%3Cscript%3E")
        .await
        .expect(400);
    b.get("/ui/stacks/dev%2Fapp/versions/99").await.expect(404);
    let r = b.get("/ui/runs?status=%3Cb%3Enope").await;
    r.expect(400);
    b.get("/ui/runs?change_request=%3Cb%3E").await.expect(400);
    assert!(r.text().contains("&lt;b&gt;nope") && !r.text().contains("<b>nope"));
    // The API's attribute-level diff takes only the detail it knows.
    for q in ["detail=nope", "detail=attributes&extra=1"] {
        let uri = format!("/api/v1/stacks/dev%2Fapp/diff?from=1&to=2&{q}");
        s.call("GET", &uri, Auth::Bearer(&s.admin.secret), Body::empty())
            .await
            .expect(400);
    }
    // A form that is not a form.
    let r = post_as(&s, "/ui/runs/run_b/approve", &b.cookie, "%%%".into()).await;
    assert!(r.status.is_client_error());
    assert_eq!(
        s.store.run("run_b").unwrap().unwrap().status.as_str(),
        "needs_approval"
    );
}

#[tokio::test]
async fn approval_is_bound_to_the_plan_hash_and_the_destroy_count_and_never_to_the_author() {
    let s = fixture().await;
    s.user("alice");
    let alice = s.token_of(Some("alice"), "alice-laptop", Role::Approver, &[], None);
    put_run(
        &s,
        "run_x",
        "dev/app",
        2,
        "alice",
        &simple_plan(),
        &["terraform_data.a"],
    );
    // The author's user sees a disabled Approve button, with why, and a forced POST is refused.
    let a = sign_in(&s, &alice).await;
    let page = a.get("/ui/runs/run_x").await.text();
    assert!(page.contains("id=\"approve-button\" disabled"), "{page}");
    assert!(page.contains("You planned this run"));
    let r = a
        .post(
            "/ui/runs/run_x/approve",
            &[("plan_sha256", PLAN), ("confirm_destroy", "1")],
        )
        .await;
    r.expect(403);
    assert!(
        r.text().contains("planned run run_x and cannot approve it"),
        "{}",
        r.text()
    );

    // An agent reads the run, with the reason it cannot approve.
    let agent = s.role_token(Role::Agent);
    let g = sign_in(&s, &agent).await;
    let page = g.get("/ui/runs/run_x").await.text();
    assert!(page.contains("can read runs but never approve"));

    let approver = s.role_token(Role::Approver);
    let b = sign_in(&s, &approver).await;
    let page = b.get("/ui/runs/run_x").await.text();
    assert!(
        page.contains("id=\"approve-button\">"),
        "enabled for another approver"
    );
    assert_eq!(field(&page, "plan_sha256").as_deref(), Some(PLAN));
    // Another plan's hash: the page showed something else than the run now holds.
    let other = "f".repeat(64);
    let r = b
        .post(
            "/ui/runs/run_x/approve",
            &[("plan_sha256", &other), ("confirm_destroy", "1")],
        )
        .await;
    r.expect(409);
    assert!(r.text().contains("reload the run and review it again"));
    // The destroy count must be typed, exactly.
    for typed in ["", "2"] {
        let r = b
            .post(
                "/ui/runs/run_x/approve",
                &[("plan_sha256", PLAN), ("confirm_destroy", typed)],
            )
            .await;
        r.expect(400);
        assert!(r.text().contains("destroys 1 instance"), "{}", r.text());
    }
    assert_eq!(
        s.store.run("run_x").unwrap().unwrap().status.as_str(),
        "needs_approval"
    );
    let r = b
        .post(
            "/ui/runs/run_x/approve",
            &[("plan_sha256", PLAN), ("confirm_destroy", "1")],
        )
        .await;
    r.expect(303);
    assert_eq!(r.headers[header::LOCATION], "/ui/runs/run_x?done=approved");
    let page = b.get("/ui/runs/run_x?done=approved").await.text();
    assert!(page.contains("Your approval was recorded"));
    assert!(page.contains(PLAN));
    assert!(
        page.contains("1 valid of 1 required"),
        "counted as the run rules count"
    );
    let run = s.store.run("run_x").unwrap().unwrap();
    assert_eq!(run.status.as_str(), "approved");
    assert_eq!(run.approvals[0].plan_sha256, PLAN);
}

/// A run planned for a pull request shows who wrote it; their user's approval is refused with
/// why, and while a claimed login belongs to no user, everyone's is.
#[tokio::test]
async fn the_console_names_a_pull_requests_writers_and_refuses_their_approval() {
    let s = fixture().await;
    s.user("alice");
    s.store
        .add_forge_login(
            "alice",
            "github:alice",
            NewAudit::ok("test", "user.forge_login", None, json!({})),
        )
        .unwrap();
    let alice = s.token_of(Some("alice"), "alice-laptop", Role::Approver, &[], None);
    let pr = |id: &str, logins: &[&str]| {
        put_run_with(
            &s,
            id,
            "dev/app",
            2,
            "pipeline",
            &simple_plan(),
            &[],
            json!({"change_request": 7, "change_authors": logins}),
        );
    };
    pr("run_pr", &["github:alice"]);
    let a = sign_in(&s, &alice).await;
    let page = a.get("/ui/runs/run_pr").await.text();
    assert!(
        page.contains("#7, written or pushed by github:alice"),
        "{page}"
    );
    let r = a
        .post("/ui/runs/run_pr/approve", &[("plan_sha256", PLAN)])
        .await;
    r.expect(403);
    assert!(
        r.text()
            .contains("github:alice, a forge login of user alice"),
        "{}",
        r.text()
    );
    pr("run_pr2", &["github:carol"]);
    let r = a
        .post("/ui/runs/run_pr2/approve", &[("plan_sha256", PLAN)])
        .await;
    r.expect(403);
    assert!(
        r.text().contains("belong(s) to no airlock user"),
        "{}",
        r.text()
    );
    for id in ["run_pr", "run_pr2"] {
        assert_eq!(
            s.store.run(id).unwrap().unwrap().status.as_str(),
            "needs_approval"
        );
    }
}

/// Attacker text in a plan: resource keys, values, RTL overrides and a 1 MB string.
#[tokio::test]
async fn attacker_text_from_plans_and_state_renders_inert() {
    let s = fixture().await;
    let xss = "<script>alert(1)</script>";
    let img = "\"><img src=x onerror=alert(2)>";
    let rtl = "safe\u{202E}txt.exe";
    let huge = "A".repeat(1_000_000);
    let plan = json!({"format_version": "1.2", "resource_changes": [
        {"address": format!("terraform_data.x[\"{xss}\"]"), "module_address": format!("module.m{img}"), "type": "terraform_data", "name": "x",
         "change": {"actions": ["update"], "before": {"input": img, "tags": {rtl: "v"}}, "after": {"input": huge, "password": "hunter2", "tags": {rtl: xss}},
                    "after_unknown": {"id": true}, "before_sensitive": {}, "after_sensitive": {"password": true}}}
    ]});
    put_run(&s, "run_xss", "dev/app", 2, "tok_author", &plan, &[]);
    let b = sign_in(&s, &s.admin).await;
    let r = b.get("/ui/runs/run_xss").await;
    r.expect(200);
    let html = r.text();
    for raw in [
        "<script>alert",
        "<img src=x",
        "\u{202E}",
        "<b>things</b>",
        "hunter2",
    ] {
        assert!(!html.contains(raw), "{raw:?} reached the page raw");
    }
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("safe\\u{202E}txt.exe"));
    assert!(html.contains("(sensitive)") && html.contains("(known after apply)"));
    assert!(
        html.contains("show all 1000002 characters"),
        "the 1 MB value, cut"
    );
    assert!(html.len() < 3_000_000, "page size {}", html.len());

    // The same in state: a for_each key and values, and a sensitive attribute, in the diff.
    let st = |serial: u64, v: &str| {
        json!({"version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": LINEAGE, "outputs": {},
            "resources": [{"mode": "managed", "type": "terraform_data", "name": "x", "each": "map",
                "provider": "provider[\"terraform.io/builtin/terraform\"]",
                "instances": [{"index_key": xss, "schema_version": 0,
                    "attributes": {"id": "1", "input": v, "secret": format!("s3cret-{serial}")},
                    "sensitive_attributes": [[{"type": "get_attr", "value": "secret"}]]}]}]})
        .to_string()
        .into_bytes()
    };
    s.locked_write("dev/app", &s.admin, &st(3, img))
        .await
        .expect(200);
    s.locked_write("dev/app", &s.admin, &st(4, rtl))
        .await
        .expect(200);
    let r = b.get("/ui/stacks/dev%2Fapp/diff?from=3&to=4").await;
    r.expect(200);
    let html = r.text();
    assert!(html.contains("1 changed"), "{html}");
    assert!(html.contains("input"));
    for raw in ["<script>alert", "<img src=x", "\u{202E}", "s3cret"] {
        assert!(!html.contains(raw), "{raw:?} reached the diff page raw");
    }
    assert!(html.contains("safe\\u{202E}txt.exe"));
    let page = b.get("/ui/stacks/dev%2Fapp/versions/4").await.text();
    assert!(!page.contains("<script>alert") && page.contains("&lt;script&gt;"));
}

#[tokio::test]
async fn a_ten_thousand_change_plan_is_paged() {
    let s = fixture().await;
    let changes: Vec<(String, Value)> = (0..10_000)
        .map(|i| (format!("terraform_data.n[{i}]"), json!({"input": i})))
        .collect();
    let plan = plan_of(
        &changes
            .iter()
            .map(|(a, v)| (a.as_str(), "create", Value::Null, v.clone()))
            .collect::<Vec<_>>(),
    );
    put_run(&s, "run_big", "dev/app", 2, "tok_author", &plan, &[]);
    let b = sign_in(&s, &s.admin).await;
    let page = b.get("/ui/runs/run_big").await.text();
    assert!(page.contains("All changes (10000)") && page.contains("page 1 of 100"));
    assert!(page.contains("terraform_data.n[99]") && !page.contains("terraform_data.n[100]"));
    let last = b.get("/ui/runs/run_big?page=100").await.text();
    assert!(last.contains("terraform_data.n[9999]") && !last.contains("terraform_data.n[9899]"));
    // Out-of-range pages are clamped.
    let far = b.get("/ui/runs/run_big?page=999999").await.text();
    assert!(far.contains("page 100 of 100"));
}

/// The apply log while a run applies: only its applier sends parts, only while it applies, each
/// bounded; anyone who may read the run reads them, and the console shows them.
#[tokio::test]
async fn the_live_apply_log_comes_only_from_the_applier_while_it_applies() {
    let s = fixture().await;
    let ci = s.role_token(Role::Ci);
    let other_ci = s.token("other-ci", Role::Ci, &[], None);
    let display = format!("ci ({})", ci.id);
    put_run_with(
        &s,
        "run_live",
        "dev/app",
        2,
        "tok_author",
        &simple_plan(),
        &[],
        json!({"status": "applying", "applied_by": display, "apply_alive_until": 1_900_000_000_000i64}),
    );
    put_run(
        &s,
        "run_open",
        "dev/app",
        2,
        "tok_author",
        &simple_plan(),
        &[],
    );
    let part = |text: &str| json!({"log_b64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text)});
    let send = |tok: &Tok, run: &str, body: Value| {
        let (tok, run) = (tok.clone(), run.to_owned());
        let s = &s;
        async move {
            s.api("POST", &format!("/api/v1/runs/{run}/log"), &tok, body)
                .await
        }
    };
    send(
        &ci,
        "run_live",
        part("line one <script>alert(1)</script>\n"),
    )
    .await
    .expect(200);
    send(&ci, "run_live", part("line two\n")).await.expect(200);
    // Not the applier, not a CI token, not an applying run, too big, not base64.
    let r = send(&other_ci, "run_live", part("forged")).await;
    r.expect(403);
    assert!(
        r.message().contains("only the principal applying"),
        "{}",
        r.message()
    );
    send(&s.role_token(Role::Approver), "run_live", part("x"))
        .await
        .expect(403);
    send(&s.role_token(Role::Agent), "run_live", part("x"))
        .await
        .expect(403);
    send(&ci, "run_open", part("x")).await.expect(409);
    let big = "x".repeat(300 * 1024);
    send(&ci, "run_live", part(&big)).await.expect(400);
    send(&ci, "run_live", json!({"log_b64": "%%%"}))
        .await
        .expect(400);
    // Readers read the parts in order; the console shows them as text.
    let r = s
        .call(
            "GET",
            "/api/v1/runs/run_live/log",
            Auth::Bearer(&s.role_token(Role::Reader).secret),
            Body::empty(),
        )
        .await;
    r.expect(200);
    assert_eq!(r.text(), "line one <script>alert(1)</script>\nline two\n");
    let b = sign_in(&s, &s.role_token(Role::Reader)).await;
    let live = b.get("/ui/runs/run_live/live").await;
    live.expect(200);
    assert_eq!(live.json()["status"], "applying");
    assert!(live.json()["log"].as_str().unwrap().contains("line two"));
    let page = b.get("/ui/runs/run_live").await.text();
    assert!(page.contains("line one &lt;script&gt;") && !page.contains("<script>alert"));
    // Until when it waits for its applier.
    assert!(
        page.contains(
            "id=\"alive-until\">2030-03-17T17:46:40.000Z (the run is closed as abandoned"
        ),
        "{page}"
    );
}

/// A run whose plan phase could read other stacks (`terraform_remote_state`) says which, so a
/// reviewer knows where values of the plan may come from.
#[tokio::test]
async fn the_run_page_names_the_stacks_its_plan_could_read() {
    let s = fixture().await;
    put_run_with(
        &s,
        "run_reads",
        "dev/app",
        2,
        "pipeline",
        &simple_plan(),
        &[],
        json!({"plan_read_stacks": ["dev/net", "<b>x</b>"]}),
    );
    put_run(
        &s,
        "run_plain",
        "dev/app",
        2,
        "pipeline",
        &simple_plan(),
        &[],
    );
    let a = sign_in(&s, &s.admin).await;
    let page = a.get("/ui/runs/run_reads").await.text();
    assert!(
        page.contains(
            "its plan could read the state of <a href=\"/ui/stacks/dev%2Fnet\">dev/net</a>, "
        ),
        "{page}"
    );
    assert!(
        page.contains("&lt;b&gt;x&lt;/b&gt;") && !page.contains("<b>x"),
        "{page}"
    );
    let page = a.get("/ui/runs/run_plain").await.text();
    assert!(!page.contains("id=\"read-stacks\""), "{page}");
}

/// A terminal run's binary plan is purged with the transition that ends the run: the API answers
/// 410 Gone (naming the run, the artifact and when) to everyone, admins included, while the plan
/// JSON is still served; the run shows its tombstone (`plan_file`) and the console page says
/// "purged". An open run's plan is served as before.
#[tokio::test]
async fn a_terminal_runs_binary_plan_is_gone_and_the_console_says_so() {
    let s = fixture().await;
    let cur = *s.versions("dev/app").last().unwrap();
    let binary = b"PK\x03\x04 a plan with the value hunter2-in-the-plan".to_vec();
    for id in ["run_kept", "run_gone"] {
        put_run(&s, id, "dev/app", cur, "tok_author", &simple_plan(), &[]);
        s.store
            .put_run_artifact(id, airlock_store::PLAN_ARTIFACT, &binary)
            .unwrap();
    }
    s.store
        .update_run(
            "run_gone",
            &mut |r: &RunRecord,
                  _: &airlock_store::StackRecord,
                  _: Option<&airlock_store::VersionMeta>,
                  _: &[String]| {
                let mut new = r.clone();
                new.status = airlock_store::RunStatus::Rejected;
                Ok((
                    new,
                    NewAudit::ok("t", "run.reject", Some("dev/app"), json!({"run": r.id})),
                ))
            },
        )
        .unwrap()
        .unwrap();
    let approver = s.role_token(Role::Approver);
    async fn get(s: &Server, id: &str, what: &str, tok: &Tok) -> Resp {
        let uri = format!("/api/v1/runs/{id}{what}");
        s.call("GET", &uri, Auth::Bearer(&tok.secret), Body::empty())
            .await
    }
    let kept = get(&s, "run_kept", "/artifacts/plan.tfplan", &s.admin).await;
    assert_eq!(
        (kept.status.as_u16(), kept.body.clone()),
        (200, binary.clone())
    );
    for tok in [&s.admin, &approver, &s.role_token(Role::Ci)] {
        let gone = get(&s, "run_gone", "/artifacts/plan.tfplan", tok).await;
        assert_eq!(gone.status.as_u16(), 410, "{}", gone.text());
        let v = gone.json();
        assert_eq!(v["error"]["code"], "gone");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("run_gone") && m.contains("plan.tfplan") && m.contains("purged at"),
            "{m}"
        );
        assert!(
            !gone.text().contains("hunter2-in-the-plan"),
            "no byte of it"
        );
    }
    let json_file = get(&s, "run_gone", "/artifacts/plan.json", &s.admin).await;
    assert_eq!(
        json_file.status.as_u16(),
        200,
        "the reviewed plan JSON stays"
    );
    let shown = get(&s, "run_gone", "", &approver).await.json();
    assert!(shown["plan_file"]["purged_at"].is_i64(), "{shown}");
    assert_eq!(
        shown["plan_file"]["sha256"],
        airlock_store::blob::sha256(&binary)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert!(get(&s, "run_kept", "", &approver).await.json()["plan_file"]["purged_at"].is_null());
    let b = sign_in(&s, &approver).await;
    let page = b.get("/ui/runs/run_gone").await;
    assert_eq!(page.status.as_u16(), 200);
    assert!(page.text().contains("purged at"), "{}", page.text());
    let page = b.get("/ui/runs/run_kept").await;
    assert!(page.text().contains("kept ("), "{}", page.text());
}
