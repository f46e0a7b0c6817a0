//! The web review console at `/ui/`: server-rendered HTML for runs, approvals, stack history and
//! diffs, and audit, for the people who approve what agents and CI propose.
//!
//! **Invariant:** the console adds no permission of its own. It is a client of the JSON API
//! inside the server ([`crate::inproc`]): every page and every action is an API call with the
//! signed-in token, through the same route table and `auth::authorize`, so what the console shows
//! or does is exactly what that token may read or do over HTTP, and every refusal it shows is the
//! API's message. What it decides itself is only presentation (which buttons look enabled).
//!
//! Sessions are in [`session`]; [`html::esc`] is the only way attacker text reaches a page;
//! every response carries [`security_headers`]; every POST passes [`check_post`] (CSRF token,
//! `Origin` and `Sec-Fetch-Site`).

mod assets;
pub mod html;
mod pages;
mod run;
pub mod session;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::{inproc, AppState};
use html::{esc, Nav};
use session::Session;

/// The Content-Security-Policy of every console response: nothing inline, nothing foreign.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest console form body.
const MAX_FORM: usize = 16 * 1024;
/// Longest token accepted by the sign-in form.
const MAX_TOKEN: usize = 512;
/// Longest reason (rejection, restore): the API's bound, for the forms' `maxlength`.
pub use crate::api::MAX_REASON;

/// The console's routes. They sit outside the API's route table on purpose: they authorize
/// nothing themselves, every one of them acts through the API as the signed-in token.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages::stacks))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{name}", get(assets::serve))
        .route("/ui/stacks/{stack}", get(pages::stack))
        .route("/ui/stacks/{stack}/versions/{serial}", get(pages::version))
        .route("/ui/stacks/{stack}/diff", get(pages::diff))
        .route("/ui/stacks/{stack}/restore", post(pages::restore))
        .route("/ui/stacks/{stack}/unlock", post(pages::force_unlock))
        .route("/ui/runs", get(pages::runs))
        .route("/ui/runs/{id}", get(run::page))
        .route("/ui/runs/{id}/live", get(run::live))
        .route("/ui/runs/{id}/approve", post(run::approve))
        .route("/ui/runs/{id}/reject", post(run::reject))
        .route("/ui/audit", get(pages::audit))
        .layer(DefaultBodyLimit::max(MAX_FORM))
        .layer(axum::middleware::map_response(security_headers))
}

/// Adds the console's security headers to every response (pages, redirects, refusals).
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_SECURITY_POLICY, CSP);
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, header::CACHE_CONTROL, "no-store");
    }
    resp
}

/// A signed-in request: the session and the state to call the API with.
pub struct Ctx {
    state: Arc<AppState>,
    sid: String,
    s: Session,
}

/// Why an API call made from a page did not give what the page needs.
pub enum Fail {
    /// The token is no longer valid (revoked, expired): the session has been ended.
    SignedOut,
    /// The API refused or failed: its status and message.
    Refused(StatusCode, String),
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx
where
    Arc<AppState>: axum::extract::FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::FromRef;
        let state: Arc<AppState> = Arc::from_ref(state);
        let found = session::cookie(&parts.headers, session::COOKIE)
            .and_then(|sid| state.console.get(sid).map(|s| (sid.to_owned(), s)));
        match found {
            Some((sid, s)) => {
                // A signed-in browser's request keeps its connection (see `serve.rs`).
                crate::serve::admitted(&parts.extensions);
                Ok(Ctx { state, sid, s })
            }
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .filter(|p| parts.method == Method::GET && safe_next(p))
                    .unwrap_or("/ui/");
                let to = format!("/ui/login?next={}", html::seg(next));
                Err(Redirect::to(&to).into_response())
            }
        }
    }
}

/// Whether `next` is a console path to return to after sign-in (no open redirect).
fn safe_next(next: &str) -> bool {
    next.starts_with("/ui/")
        && !next.contains("//")
        && !next.contains('\\')
        && next.len() <= 2048
        && next.bytes().all(|b| b.is_ascii_graphic())
}

impl Ctx {
    /// Who is signed in.
    pub fn who(&self) -> &session::Who {
        &self.s.who
    }

    /// The session's CSRF token.
    pub fn csrf(&self) -> &str {
        &self.s.csrf
    }

    /// Calls the API as the signed-in token; `Ok` only for a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<inproc::Reply, Fail> {
        let reply = inproc::call(&self.state, &self.s.token, method, uri, body)
            .await
            .map_err(|e| Fail::Refused(StatusCode::INTERNAL_SERVER_ERROR, e))?;
        if reply.status == StatusCode::UNAUTHORIZED {
            // The API no longer accepts the token: every session signed in with it ends now.
            self.state.console.end_token(&self.s.token);
            return Err(Fail::SignedOut);
        }
        if !reply.status.is_success() {
            let v = reply.json();
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
            return Err(Fail::Refused(reply.status, msg));
        }
        Ok(reply)
    }

    /// `GET uri` as JSON.
    pub async fn get(&self, uri: &str) -> Result<Value, Fail> {
        Ok(self.call(Method::GET, uri, None).await?.json())
    }

    /// The whole document around `body`.
    pub fn page(&self, status: StatusCode, title: &str, body: &str) -> Response {
        let nav = Nav {
            who: Some(format!("{} ({})", self.s.who.name, self.s.who.role)),
            csrf: Some(&self.s.csrf),
        };
        html_response(status, html::shell(title, &nav, body))
    }

    /// The page for a failed API call: sign-in again, or the API's own message.
    pub fn fail(&self, f: Fail) -> Response {
        match f {
            Fail::SignedOut => Redirect::to("/ui/login?ended=1").into_response(),
            Fail::Refused(status, msg) => self.page(
                status,
                "Refused",
                &format!(
                    "<h1>Refused</h1><div class=\"banner error\" id=\"error\">{} <span class=\"why\">(HTTP {})</span></div>",
                    esc(&msg),
                    status.as_u16()
                ),
            ),
        }
    }
}

/// A complete HTML response.
pub fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Refuses a cross-site POST: `Sec-Fetch-Site` must be `same-origin` when a browser sends it
/// (not even `none`: a form is never typed), `Origin` must name this host when sent
/// ([`crate::auth::cross_site`], which the API applies too), and the form's CSRF token must be
/// `expected`.
pub fn check_post(
    state: &AppState,
    headers: &HeaderMap,
    expected: &str,
    given: Option<&str>,
) -> Result<(), String> {
    if let Some(why) = crate::auth::cross_site(headers, &state.config) {
        return Err(why.into());
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() != b"same-origin")
    {
        return Err("cross-site request refused (Sec-Fetch-Site is not same-origin)".into());
    }
    match given {
        Some(g) if !expected.is_empty() && session::same_secret(expected, g) => Ok(()),
        _ => Err("request refused: the form's CSRF token is missing or wrong; reload the page and try again".into()),
    }
}

/// The page for a refused POST (CSRF, bad field): 403 or 400 with the reason.
fn refused_post(status: StatusCode, why: &str, ctx: Option<&Ctx>) -> Response {
    let body = format!(
        "<h1>Refused</h1><div class=\"banner error\" id=\"error\">{}</div>",
        esc(why)
    );
    match ctx {
        Some(c) => c.page(status, "Refused", &body),
        None => html_response(
            status,
            html::shell(
                "Refused",
                &Nav {
                    who: None,
                    csrf: None,
                },
                &body,
            ),
        ),
    }
}

#[derive(Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
    ended: Option<String>,
}

/// `GET /ui/login`: the sign-in form, with a fresh pre-session CSRF cookie.
async fn login_form(State(state): State<Arc<AppState>>, Query(q): Query<LoginQuery>) -> Response {
    let note = if q.ended.is_some() {
        "<div class=\"banner warn\" id=\"ended\">Your session ended: the token was revoked or expired, or the session timed out. Sign in again.</div>"
    } else {
        ""
    };
    login_page(&state, StatusCode::OK, note, q.next.as_deref())
}

fn login_page(state: &AppState, status: StatusCode, note: &str, next: Option<&str>) -> Response {
    let csrf = session::secret();
    let next = next.filter(|n| safe_next(n)).unwrap_or("/ui/");
    let body = format!(
        "<h1>Sign in</h1>{note}<form method=\"post\" action=\"/ui/login\" class=\"action\">\
<input type=\"hidden\" name=\"login_csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"next\" value=\"{}\">\
<label>Token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" maxlength=\"{MAX_TOKEN}\" required></label>\
<button type=\"submit\" id=\"sign-in\">Sign in</button></form>\
<p class=\"why\">Paste an airlock token (shown once when it was made). The console acts with exactly that token's permissions.</p>",
        esc(next)
    );
    let mut resp = html_response(
        status,
        html::shell(
            "Sign in",
            &Nav {
                who: None,
                csrf: None,
            },
            &body,
        ),
    );
    let cookie = session::set_cookie(
        session::LOGIN_COOKIE,
        &csrf,
        state.config.secure_cookies,
        Some(3600),
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    login_csrf: Option<String>,
    next: Option<String>,
}

/// `POST /ui/login`: checks the token through the API (`whoami`) and starts a session.
async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = session::cookie(&headers, session::LOGIN_COOKIE).unwrap_or("");
    if let Err(why) = check_post(&state, &headers, expected, f.login_csrf.as_deref()) {
        return refused_post(StatusCode::FORBIDDEN, &why, None);
    }
    let token = f.token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        let note = "<div class=\"banner error\" id=\"error\">That is not an airlock token.</div>";
        return login_page(&state, StatusCode::BAD_REQUEST, note, f.next.as_deref());
    }
    let reply = match inproc::call(&state, token, Method::GET, "/api/v1/whoami", None).await {
        Ok(r) => r,
        Err(e) => return refused_post(StatusCode::INTERNAL_SERVER_ERROR, &e, None),
    };
    if !reply.status.is_success() {
        let msg = reply.json()["error"]["message"]
            .as_str()
            .unwrap_or("the token was not accepted")
            .to_owned();
        let note = format!(
            "<div class=\"banner error\" id=\"error\">Sign-in refused: {}</div>",
            esc(&msg)
        );
        let mut page = login_page(&state, reply.status, &note, f.next.as_deref());
        if reply.left_out {
            page.extensions_mut().insert(crate::log::LeftOut);
        }
        return page;
    }
    let me = reply.json();
    let role = me["role"]
        .as_str()
        .and_then(|r| r.parse::<airlock_core::Role>().ok())
        .unwrap_or(airlock_core::Role::Reader);
    let who = session::Who {
        name: me["name"].as_str().unwrap_or("?").to_owned(),
        role,
        user: me["user"].as_str().unwrap_or("").to_owned(),
    };
    let Ok(sid) = state.console.start(token.to_owned(), who) else {
        let note = format!(
            "<div class=\"banner error\" id=\"error\">Sign-in refused: this server already holds {} console sessions (the most it keeps); sign out elsewhere or try again when idle sessions expire.</div>",
            session::MAX_SESSIONS
        );
        return login_page(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            &note,
            f.next.as_deref(),
        );
    };
    let next = f.next.as_deref().filter(|n| safe_next(n)).unwrap_or("/ui/");
    let mut resp = Redirect::to(next).into_response();
    let secure = state.config.secure_cookies;
    for c in [
        session::set_cookie(session::COOKIE, &sid, secure, None),
        session::set_cookie(session::LOGIN_COOKIE, "", secure, Some(0)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// A form carrying only the CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /ui/logout`.
async fn logout(ctx: Ctx, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Err(why) = check_post(&ctx.state, &headers, ctx.csrf(), f.csrf.as_deref()) {
        return refused_post(StatusCode::FORBIDDEN, &why, Some(&ctx));
    }
    ctx.state.console.end(&ctx.sid);
    let mut resp = Redirect::to("/ui/login").into_response();
    let c = session::set_cookie(
        session::COOKIE,
        "",
        ctx.state.config.secure_cookies,
        Some(0),
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
