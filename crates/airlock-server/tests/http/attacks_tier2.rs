//! Adversarial review of the console (tier 2): attacks that work today, each a test that fails
//! until it is fixed.

use airlock_core::Role;
use airlock_server::console::session::MAX_SESSIONS;
use axum::body::Body;
use axum::http::header;

use crate::support::*;

const HOST: &str = "airlock.test";

fn session_cookie(r: &Resp) -> Option<String> {
    r.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("airlock_session="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

/// A sign-in POST as a same-origin browser. The pre-session CSRF check is a double submit
/// (cookie = field), so any equal pair passes: no GET of the form is needed.
async fn sign_in(s: &Server, secret: &str) -> Resp {
    let body = format!("token={secret}&login_csrf=x&next=%2Fui%2F");
    s.send(
        request("POST", "/ui/login", Auth::None)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, format!("http://{HOST}"))
            .header("sec-fetch-site", "same-origin")
            .header(header::COOKIE, "airlock_login=x")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap(),
    )
    .await
}

async fn page(s: &Server, cookie: &str) -> Resp {
    s.send(
        request("GET", "/ui/", Auth::None)
            .header(header::HOST, HOST)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await
}

/// ATTACK (agent or reader token): console sessions are one process-wide LRU of
/// `MAX_SESSIONS`, with no bound per token. Any token that can sign in (an agent's, a reader's)
/// signs in `MAX_SESSIONS` times and every approver is signed out, again and again: the
/// approvals the console exists for are denied. Expected: one token's sign-ins evict only that
/// token's own sessions (a per-token or per-user cap), never another user's.
#[tokio::test]
async fn attacks_tier2_an_agent_token_cannot_sign_every_approver_out_of_the_console() {
    let s = Server::new();
    s.stack("dev/app", false);
    let approver = s.role_token(Role::Approver);
    let agent = s.role_token(Role::Agent);

    let r = sign_in(&s, &approver.secret).await;
    r.expect(303);
    let approver_cookie = session_cookie(&r).expect("approver session");
    page(&s, &approver_cookie).await.expect(200);

    for i in 0..MAX_SESSIONS {
        let r = sign_in(&s, &agent.secret).await;
        assert_eq!(r.status, 303, "agent sign-in {i}");
    }
    let r = page(&s, &approver_cookie).await;
    assert_eq!(
        r.status,
        200,
        "the approver was signed out by {MAX_SESSIONS} sign-ins of an agent token (redirected to {:?})",
        r.headers.get(header::LOCATION)
    );
}

/// `value="…"` of the first input named `name` in `html`.
fn field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// ATTACK (stale page / TOCTOU): the console's Force-unlock form is not bound to the lock the
/// page showed. It sends Terraform's empty-body force-unlock, which releases whatever lock is
/// held when the click arrives. An approver who saw a stale plan lock of an agent and clicks
/// Force-unlock after CI has taken the lock for an apply releases CI's apply lock: the apply's
/// state write then fails (the lock is no longer held) and what it created is left unrecorded.
/// Expected: the form carries the shown lock's ID and a lock with another ID is not released
/// (as `terraform force-unlock LOCK_ID` requires the ID, and Approve is bound to the plan hash).
#[tokio::test]
async fn attacks_tier2_console_force_unlock_releases_only_the_lock_the_page_showed() {
    let s = Server::new();
    s.stack("dev/app", false);
    let approver = s.role_token(Role::Approver);
    let agent = s.role_token(Role::Agent);
    let ci = s.role_token(Role::Ci);

    // The page shows a plan lock held by the agent.
    let shown = fresh_id("agent-plan");
    s.lock("dev/app", &agent, &shown, "OperationTypePlan")
        .await
        .expect(200);
    let r = sign_in(&s, &approver.secret).await;
    r.expect(303);
    let cookie = session_cookie(&r).expect("session");
    let page = s
        .send(
            request("GET", "/ui/stacks/dev%2Fapp", Auth::None)
                .header(header::HOST, HOST)
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    page.expect(200);
    let html = page.text();
    assert!(html.contains("/ui/stacks/dev%2Fapp/unlock"), "{html}");
    let csrf = field(&html, "csrf").expect("csrf");
    let lock_field = field(&html, "lock_id");

    // Meanwhile the agent's plan ends and CI takes the lock to apply.
    s.unlock("dev/app", &agent, &shown, "OperationTypePlan")
        .await
        .expect(200);
    let applying = fresh_id("ci-apply");
    s.lock("dev/app", &ci, &applying, "OperationTypeApply")
        .await
        .expect(200);

    // The approver clicks the Force-unlock button of the page they loaded.
    let mut body = format!("csrf={csrf}");
    if let Some(id) = &lock_field {
        body.push_str(&format!("&lock_id={id}"));
    }
    let clicked = s
        .send(
            request("POST", "/ui/stacks/dev%2Fapp/unlock", Auth::None)
                .header(header::HOST, HOST)
                .header(header::ORIGIN, format!("http://{HOST}"))
                .header("sec-fetch-site", "same-origin")
                .header(header::COOKIE, &cookie)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    let now = s.api_get("/api/v1/stacks/dev%2Fapp").await;
    assert_eq!(
        now["lock"]["id"].as_str(),
        Some(applying.as_str()),
        "the page showed lock {shown} (form field lock_id: {lock_field:?}); the click released CI's apply lock {applying}: {now:#}"
    );
    // The approver is told why, with the lock now held.
    assert_eq!(clicked.status, 409);
    let told = clicked.text();
    assert!(
        told.contains("not released") && told.contains(&applying),
        "{told}"
    );
    // A page showing the current lock releases it, audited as a force-unlock.
    let html = s
        .send(
            request("GET", "/ui/stacks/dev%2Fapp", Auth::None)
                .header(header::HOST, HOST)
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .text();
    assert_eq!(field(&html, "lock_id").as_deref(), Some(applying.as_str()));
    s.send(
        request("POST", "/ui/stacks/dev%2Fapp/unlock", Auth::None)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, format!("http://{HOST}"))
            .header("sec-fetch-site", "same-origin")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}&lock_id={applying}")))
            .unwrap(),
    )
    .await
    .expect(303);
    assert!(s.api_get("/api/v1/stacks/dev%2Fapp").await["lock"].is_null());
    assert!(s
        .audit()
        .await
        .iter()
        .any(|e| e["action"] == "lock.force_unlock"
            && e["outcome"] == "ok"
            && e["actor"].as_str().is_some_and(|a| a.contains("approver"))));
}
