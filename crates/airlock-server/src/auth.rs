//! Authentication and authorization, decided in one place before any handler runs.
//!
//! **Invariant:** every route behind this middleware comes from [`crate::router::RouteTable`],
//! registered with its permission in the same call; a method/path pair with no row is refused
//! (default deny). Handlers only add checks that depend on the request body (lock operation,
//! direct-write settings, force-unlock), in `state_backend.rs`.

use std::sync::Arc;

use airlock_core::glob::glob_match;
use airlock_core::refusal::RefusalKind;
use airlock_core::{Role, StackName};
use airlock_store::{now_ms, NewAudit, TokenRecord};
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, RequestExt};
use base64::Engine;

use crate::error::ApiError;
use crate::log::Caller;
use crate::router::{Route, RouteTable};
use crate::{stacks, tokens, AppState};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Token id.
    pub token_id: String,
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Stack globs the token is limited to (empty: all).
    pub stacks: Vec<String>,
    /// Run the token is bound to.
    pub run_id: Option<String>,
    /// The user the token belongs to: the identity that authors runs and approves them.
    pub user: String,
    /// The token that minted this one (phase tokens, which cannot mint tokens themselves).
    pub parent_id: Option<String>,
    /// Other stacks whose state alone this token may read (exact names; plan-phase tokens for
    /// `terraform_remote_state`): see [`Principal::scope_admits`].
    pub read_stacks: Vec<String>,
    /// When the token expires (ms since the epoch), if it does: what it mints ends no later.
    pub expires_at: Option<i64>,
    /// The verified git ref of the forge login the token comes from (`TokenRecord::job_ref`).
    pub job_ref: Option<String>,
}

/// The one request a read stack admits: Terraform's state read (`terraform_remote_state`).
pub const READ_STACK_ROUTE: (&str, &str) = ("GET", "/state/{*stack}");

impl Principal {
    /// `name (tok_…)`, as recorded in audit events and version authors.
    pub fn display(&self) -> String {
        format!("{} ({})", self.name, self.token_id)
    }

    /// Whether the token's scope covers `stack`.
    pub fn may_access(&self, stack: &str) -> bool {
        self.stacks.is_empty() || self.stacks.iter().any(|g| glob_match(g, stack))
    }

    /// Whether the token's scope admits `method` on `route` about `stack`: its stack globs
    /// admit every route (the role decides what it may do there); a read stack admits only
    /// [`READ_STACK_ROUTE`], so no lock, write, run, token, approval or history call reaches it.
    pub fn scope_admits(&self, method: &str, route: &str, stack: &str) -> bool {
        self.may_access(stack)
            || ((method, route) == READ_STACK_ROUTE && self.read_stacks.iter().any(|s| s == stack))
    }

    /// Whether this principal may itself read `stack` now (its role's `read` and its scope):
    /// the bound on the read stacks it may give a plan-phase token.
    pub fn may_read(&self, stack: &str) -> bool {
        self.role.has(airlock_core::Permission::Read) && self.may_access(stack)
    }

    fn from_record(t: TokenRecord) -> Principal {
        Principal {
            token_id: t.id,
            name: t.name,
            role: t.role,
            stacks: t.stacks,
            run_id: t.run_id,
            user: t.user,
            parent_id: t.parent_id,
            read_stacks: t.read_stacks,
            expires_at: t.expires_at,
            job_ref: t.job_ref,
        }
    }

    /// Refuses phase tokens (those minted by another token): they cannot mint tokens, so a
    /// revoked or expired token's access ends with its own.
    pub fn may_mint(&self) -> Result<(), ApiError> {
        match &self.parent_id {
            None => Ok(()),
            Some(parent) => Err(ApiError::new(
                RefusalKind::Forbidden,
                format!(
                    "token {} is a phase token (minted by {parent}) and cannot mint tokens; use the token that started the run",
                    self.token_id
                ),
            )),
        }
    }
}

/// The stack a request is about, validated, when the route names one.
#[derive(Debug, Clone)]
pub struct RequestStack(pub StackName);

/// The token secret a request's `Authorization` header carries (Bearer, or the Basic-auth
/// password), for interfaces that call the API again with the caller's own token (`/mcp`).
pub fn bearer_secret(headers: &axum::http::HeaderMap) -> Option<String> {
    credential_of(headers).ok().flatten()
}

fn credential_of(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(RefusalKind::Unauthenticated, "malformed Authorization header: use Bearer TOKEN or Basic auth with the token as password")
    };
    let value = value.to_str().map_err(|_| bad())?;
    // Auth schemes are case-insensitive (RFC 7235 §2.1).
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("Bearer") {
        return Ok(Some(rest.trim().to_owned()));
    }
    if scheme.eq_ignore_ascii_case("Basic") {
        let b64 = rest;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (_user, password) = decoded.split_once(':').ok_or_else(bad)?;
        return Ok(Some(password.to_owned()));
    }
    Err(bad())
}

/// The stack the route names, validated: the `stack` path parameter as axum's extractor decodes
/// it. Under `/state` the name is the rest of the path as is (Terraform's address), so any
/// percent-encoding there is refused rather than read as another name for a stack.
async fn stack_of(req: &mut Request, route: &str) -> Result<Option<StackName>, ApiError> {
    if !route.contains("stack}") {
        return Ok(None);
    }
    let invalid = |why: &str| {
        ApiError::new(
            RefusalKind::BadRequest,
            format!("invalid stack name: {why}"),
        )
    };
    if route.contains("{*stack}") && req.uri().path().contains('%') {
        return Err(invalid("the state address carries the stack name as is, without percent-encoding (/state/prod/app)"));
    }
    let params = req
        .extract_parts::<RawPathParams>()
        .await
        .map_err(|_| invalid("not UTF-8 once percent-decoded"))?;
    let Some((_, raw)) = params.iter().find(|(name, _)| *name == "stack") else {
        return Ok(None);
    };
    StackName::parse(raw)
        .map(Some)
        .map_err(|e| ApiError::new(RefusalKind::BadRequest, e.to_string()))
}

/// A refusal made before any handler runs, and whether the audit budget left it out of the
/// audit (then it is not logged one by one either: [`crate::log::LeftOut`]).
pub(crate) struct Denial {
    error: ApiError,
    left_out: bool,
}

impl From<ApiError> for Denial {
    fn from(error: ApiError) -> Self {
        Denial {
            error,
            left_out: false,
        }
    }
}

impl IntoResponse for Denial {
    fn into_response(self) -> Response {
        let mut resp = self.error.into_response();
        if self.left_out {
            resp.extensions_mut().insert(crate::log::LeftOut);
        }
        resp
    }
}

impl Denial {
    /// The refusal of a request without a valid credential (`actor`: `unauthenticated`,
    /// `cross-site`, a forge login), audited as a denied `action` within the audit budget
    /// ([`crate::audit_budget`]).
    pub(crate) async fn without_credential(
        state: &Arc<AppState>,
        actor: &str,
        action: &str,
        stack: Option<&str>,
        detail: serde_json::Value,
        error: ApiError,
    ) -> Denial {
        Self::within_budget(
            state,
            crate::audit_budget::Kind::WithoutCredential,
            (actor, action, stack, detail),
            error,
        )
        .await
    }

    /// A refusal audited as a denied `action` within the audit budget of its `kind`.
    pub(crate) async fn within_budget(
        state: &Arc<AppState>,
        kind: crate::audit_budget::Kind,
        (actor, action, stack, detail): (&str, &str, Option<&str>, serde_json::Value),
        error: ApiError,
    ) -> Denial {
        let event = NewAudit::denied(actor, action, stack, detail);
        let audited = crate::audit_budget::audit_refusal(state, kind, event).await;
        Denial {
            error,
            left_out: !audited,
        }
    }
}

/// Audits the refusal of a valid token's request, one by one (no budget: only its holder makes
/// them, and they name who did).
async fn audit_denial(
    state: &Arc<AppState>,
    actor: String,
    stack: Option<String>,
    detail: serde_json::Value,
) {
    let store = Arc::clone(&state.store);
    let _ = tokio::task::spawn_blocking(move || {
        store.append_audit(NewAudit::denied(&actor, "denied", stack.as_deref(), detail))
    })
    .await;
}

/// Why a request is a browser's from another site, if it is (cross-site request forgery): a
/// `Sec-Fetch-Site` other than `same-origin` or `none` (typed or bookmarked), or an `Origin`
/// that is not this server's own ([`own_origin`]; `null` only alongside a same-origin
/// `Sec-Fetch-Site`: under `Referrer-Policy: no-referrer` browsers send `Origin: null` on every
/// POST). Terraform, the CLI and other clients that are not browsers send neither header. A
/// browser that once took a token at a Basic-auth prompt sends it again by itself, with any
/// site's form.
pub fn cross_site(
    headers: &axum::http::HeaderMap,
    config: &crate::ServerConfig,
) -> Option<&'static str> {
    let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if site.is_some_and(|s| s != b"same-origin" && s != b"none") {
        return Some("cross-site request refused (Sec-Fetch-Site is not same-origin)");
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let null_ok = origin == "null" && site == Some(b"same-origin");
        if !null_ok && !own_origin(origin, headers, config) {
            return Some("cross-site request refused (Origin is not this server)");
        }
    }
    None
}

/// Whether `origin` (`scheme://host[:port]`) is this server's: `--public-url`'s, or the `Host`
/// the request was sent to under the scheme browsers reach this server by
/// ([`crate::ServerConfig::scheme`]). Scheme, host and port all count: a page served over
/// plain HTTP on the same host is another origin (a network attacker writes it).
fn own_origin(origin: &str, headers: &axum::http::HeaderMap, config: &crate::ServerConfig) -> bool {
    let public = config.public_url.as_deref().map(crate::mcp::origin_of);
    if public.is_some_and(|p| p.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    match (origin.split_once("://"), host) {
        (Some((scheme, rest)), Some(host)) => {
            scheme.eq_ignore_ascii_case(config.scheme()) && rest.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

/// The refusal of a credential, and the stored token it names when it names one (revoked or
/// expired): `name (id)`.
type Unauthenticated = (ApiError, Option<String>);

/// Looks the secret up and checks expiry and revocation.
pub async fn authenticate(
    state: &Arc<AppState>,
    secret: String,
) -> Result<Principal, Unauthenticated> {
    let hash = tokens::hash_secret(&secret);
    // A cached record that says the token has expired is looked up again: its expiry may have
    // moved since (a phase's reports renew it).
    let cached = state
        .cache
        .token(&hash)
        .filter(|t| t.expires_at.is_none_or(|e| e > now_ms()));
    let record = match cached {
        Some(t) => Some(t),
        None => {
            // Read before the store: a revocation that commits while the store is read clears
            // the cache after this, and the record read before it is then not cached.
            let generation = state.cache.token_generation();
            let store = Arc::clone(&state.store);
            let found = tokio::task::spawn_blocking(move || store.token_by_hash(&hash))
                .await
                .map_err(|e| (ApiError::Internal(e.to_string()), None))?
                .map_err(|e| (ApiError::from(e), None))?;
            if let Some(t) = found.as_ref().filter(|t| t.revoked_at.is_none()) {
                state.cache.put_token(hash, t.clone(), generation);
            }
            found
        }
    };
    let Some(t) = record else {
        return Err((
            ApiError::new(
                RefusalKind::Unauthenticated,
                "unknown token: check AIRLOCK_TOKEN / TF_HTTP_PASSWORD",
            ),
            None,
        ));
    };
    let known = || Some(format!("{} ({})", t.name, t.id));
    if t.revoked_at.is_some() {
        return Err((
            ApiError::new(
                RefusalKind::Unauthenticated,
                format!("token {} ({}) has been revoked", t.name, t.id),
            ),
            known(),
        ));
    }
    if t.expires_at.is_some_and(|e| e <= now_ms()) {
        return Err((
            ApiError::new(
                RefusalKind::Unauthenticated,
                format!(
                    "token {} ({}) has expired; ask an admin for a new one",
                    t.name, t.id
                ),
            ),
            known(),
        ));
    }
    Ok(Principal::from_record(t))
}

/// Authenticates a request's `Authorization` header; a refusal is audited with its reason,
/// within the audit budget. For [`authorize`], and for the routes outside the table that read
/// an optional token (`/metrics`). `method` and `route` are the route table's (bounded text).
pub(crate) async fn authenticate_header(
    state: &Arc<AppState>,
    headers: &axum::http::HeaderMap,
    method: &str,
    route: &str,
    stack: Option<String>,
) -> Result<Principal, Denial> {
    let result = match credential_of(headers) {
        Ok(Some(secret)) => authenticate(state, secret).await,
        Ok(None) => Err((ApiError::new(RefusalKind::Unauthenticated, "authentication required: send the token as Bearer, or as the Basic-auth password (TF_HTTP_PASSWORD)"), None)),
        Err(e) => Err((e, None)),
    };
    match result {
        Ok(p) => Ok(p),
        Err((e, known)) => {
            let reason = match &e {
                ApiError::Refused(r) => r.message.clone(),
                ApiError::Internal(_) => "the token could not be checked".into(),
            };
            let detail = serde_json::json!({"method": method, "route": route, "status": 401, "reason": reason});
            // A stored token's use after its revocation or expiry (a leaked token, say) names
            // it: audited one by one, like a valid token's refusals, never within the budget
            // that anyone's guesses can spend.
            if let Some(token) = known {
                audit_denial(state, token, stack, detail).await;
                return Err(Denial {
                    error: e,
                    left_out: false,
                });
            }
            Err(Denial::without_credential(
                state,
                "unauthenticated",
                "denied",
                stack.as_deref(),
                detail,
                e,
            )
            .await)
        }
    }
}

/// Middleware: authenticate, find the route's row in the table, check role and stack scope; then
/// bound a run upload's body by the caller's role.
///
/// A method the route table does not list for the route is refused first (405), before anyone
/// is authenticated, and audited nowhere: the method is the client's text. Unknown, expired and
/// revoked tokens (and requests without one) get 401, a browser's request from another site
/// 403, each audited within the audit budget ([`crate::audit_budget`]); a valid token that
/// lacks the permission or the stack gets 403, always audited with its reason.
pub async fn authorize(
    State(routes): State<Arc<RouteTable>>,
    Extension(state): Extension<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let mut caller = Caller::default();
    let checked = match check(&state, &routes, &mut req, &mut caller).await {
        Ok((route, role)) if route.upload => bounded_upload(&state, role, req).await,
        Ok(_) => Ok(req),
        Err(e) => {
            state.metrics.denied();
            Err(e.into_response())
        }
    };
    let mut resp = match checked {
        Ok(req) => {
            crate::serve::admitted(req.extensions());
            next.run(req).await
        }
        Err(resp) => resp,
    };
    resp.extensions_mut().insert(caller);
    resp
}

async fn check<'t>(
    state: &Arc<AppState>,
    routes: &'t RouteTable,
    req: &mut Request,
    caller: &mut Caller,
) -> Result<(&'t Route, Role), Denial> {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let Some(row) = routes.find(req.method().as_str(), &route) else {
        return Err(ApiError::new(
            RefusalKind::MethodNotAllowed,
            format!(
                "{} is not supported on {route} (it takes {})",
                crate::log::bounded(req.method().as_str(), crate::log::MAX_METHOD),
                routes.methods_of(&route).join(", ")
            ),
        )
        .into());
    };
    // From here on the method is one of the table's.
    let method = row.method.as_str().to_owned();
    let stack = stack_of(req, &route).await;
    caller.stack = stack
        .as_ref()
        .ok()
        .and_then(|s| s.as_ref())
        .map(|s| s.to_string());
    // A browser's request from another site changes nothing, whatever credential it carries
    // (reads are answered: another site's page cannot read them without CORS, which is off).
    if !matches!(req.method(), &Method::GET | &Method::HEAD) {
        if let Some(why) = cross_site(req.headers(), &state.config) {
            let detail =
                serde_json::json!({"method": method, "route": route, "status": 403, "reason": why});
            return Err(Denial::without_credential(
                state,
                "cross-site",
                "denied",
                caller.stack.as_deref(),
                detail,
                ApiError::new(RefusalKind::Forbidden, why),
            )
            .await);
        }
    }
    let principal =
        authenticate_header(state, req.headers(), &method, &route, caller.stack.clone()).await?;
    caller.actor = Some(principal.display());
    let stack = stack?;
    let refusal = match row.permission {
        p if !principal.role.has(p) => Some(format!(
            "permission denied: {} tokens do not have the {} permission needed for {method} {route}",
            principal.role,
            p.name()
        )),
        _ => match &stack {
            Some(s) if !principal.scope_admits(&method, &route, s.as_str()) => {
                Some(if principal.read_stacks.iter().any(|r| r == s.as_str()) {
                    format!(
                        "permission denied: token {} may only read {s}'s state (GET /state/{s}, for terraform_remote_state), not {method} {route}",
                        principal.name
                    )
                } else {
                    format!(
                        "permission denied: token {} is scoped to stacks {:?}, which do not include {s}",
                        principal.name, principal.stacks
                    )
                })
            }
            _ => None,
        },
    };
    if let Some(message) = refusal {
        audit_denial(
            state,
            principal.display(),
            stack.as_ref().map(|s| s.to_string()),
            serde_json::json!({"method": method, "route": route, "status": 403, "reason": message}),
        )
        .await;
        return Err(ApiError::new(RefusalKind::Forbidden, message).into());
    }
    if let Some(s) = stack {
        req.extensions_mut().insert(RequestStack(s));
    }
    let role = principal.role;
    req.extensions_mut().insert(principal);
    Ok((row, role))
}

/// Reads a run upload (or apply log) only up to the limit of the caller's role: a declared
/// `Content-Length` over it is refused before anything is read, a chunked body as soon as it
/// passes it. Runs after [`check`], so an unauthorized body is never read at all.
async fn bounded_upload(state: &AppState, role: Role, req: Request) -> Result<Request, Response> {
    use axum::body::HttpBody;
    let limit = state.config.run_upload_limit(role);
    let too_large = || {
        ApiError::new(
            RefusalKind::TooLarge,
            format!(
                "upload refused: {role} tokens may upload at most {} MiB here (--max-agent-run-upload-mib / --max-run-upload-mib); a plan this large is better applied by CI from its own checkout",
                limit / (1024 * 1024)
            ),
        )
        .into_response()
    };
    let (parts, body) = req.into_parts();
    // A streamed run upload goes on as a stream, still bounded: its handler reads it as it
    // arrives (and bounds what it decompresses to by the same limit).
    let streamed = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(crate::run_upload::CONTENT_TYPE));
    if streamed {
        if body.size_hint().lower() > limit as u64 {
            return Err(too_large());
        }
        let body = axum::body::Body::new(http_body_util::Limited::new(body, limit));
        return Ok(Request::from_parts(parts, body));
    }
    match stacks::read_body(body, limit).await {
        Ok(bytes) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Err(e) if e.is_too_large() => Err(too_large()),
        Err(e) => Err(e.into_response()),
    }
}
