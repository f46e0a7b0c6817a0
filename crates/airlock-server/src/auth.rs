//! Authentication and authorization, decided in one place before any handler runs.
//!
//! **Invariant:** every route has an entry in [`crate::router::ROUTE_PERMISSIONS`]; a request
//! whose route has none is refused (default deny). Handlers only add checks that depend on the
//! request body (lock operation, direct-write settings, force-unlock), in `state_backend.rs`.

use std::sync::Arc;

use airlock_core::glob::glob_match;
use airlock_core::refusal::RefusalKind;
use airlock_core::{Role, StackName};
use airlock_store::{now_ms, NewAudit, TokenRecord};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::error::ApiError;
use crate::log::Caller;
use crate::{tokens, AppState};

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
}

impl Principal {
    /// `name (tok_…)`, as recorded in audit events and version authors.
    pub fn display(&self) -> String {
        format!("{} ({})", self.name, self.token_id)
    }

    /// Whether the token's scope covers `stack`.
    pub fn may_access(&self, stack: &str) -> bool {
        self.stacks.is_empty() || self.stacks.iter().any(|g| glob_match(g, stack))
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

fn credential(req: &Request) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
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

/// Extracts the stack named by the request path, if the route has one.
fn stack_of(req: &Request, route: &str) -> Result<Option<StackName>, ApiError> {
    let raw = if route.starts_with("/state/") {
        req.uri().path().strip_prefix("/state/").map(str::to_owned)
    } else if route.contains("{stack}") {
        // API routes carry the stack percent-encoded in one segment: /api/v1/stacks/prod%2Fapp/...
        let segs: Vec<&str> = req.uri().path().split('/').collect();
        let pos = route.split('/').position(|s| s == "{stack}");
        pos.and_then(|p| segs.get(p))
            .map(|s| percent_decode(s))
            .transpose()?
    } else {
        None
    };
    raw.map(|s| {
        StackName::parse(&s).map_err(|e| ApiError::new(RefusalKind::BadRequest, e.to_string()))
    })
    .transpose()
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i) {
            Some(b'%') => {
                let hexpair = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let v = hexpair
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::new(
                            RefusalKind::BadRequest,
                            "bad percent-encoding in the stack name",
                        )
                    })?;
                out.push(v);
                i += 3;
            }
            Some(&b) => {
                out.push(b);
                i += 1;
            }
            None => break,
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::new(RefusalKind::BadRequest, "stack name is not UTF-8"))
}

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

/// Looks the secret up and checks expiry and revocation.
pub async fn authenticate(state: &Arc<AppState>, secret: String) -> Result<Principal, ApiError> {
    let hash = tokens::hash_secret(&secret);
    let record = match state.cache.token(&hash) {
        Some(t) => Some(t),
        None => {
            let store = Arc::clone(&state.store);
            let found = tokio::task::spawn_blocking(move || store.token_by_hash(&hash))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            if let Some(t) = found.as_ref().filter(|t| t.revoked_at.is_none()) {
                state.cache.put_token(hash, t.clone());
            }
            found
        }
    };
    let Some(t) = record else {
        return Err(ApiError::new(
            RefusalKind::Unauthenticated,
            "unknown token: check AIRLOCK_TOKEN / TF_HTTP_PASSWORD",
        ));
    };
    if t.revoked_at.is_some() {
        return Err(ApiError::new(
            RefusalKind::Unauthenticated,
            format!("token {} ({}) has been revoked", t.name, t.id),
        ));
    }
    if t.expires_at.is_some_and(|e| e <= now_ms()) {
        return Err(ApiError::new(
            RefusalKind::Unauthenticated,
            format!(
                "token {} ({}) has expired; ask an admin for a new one",
                t.name, t.id
            ),
        ));
    }
    Ok(Principal::from_record(t))
}

/// Middleware: authenticate, find the route's permission, check role and stack scope.
///
/// Unknown, expired and revoked tokens (and requests without one) get 401; a valid token that
/// lacks the permission or the stack gets 403. Every refusal is audited with its reason.
pub async fn authorize(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let mut caller = Caller::default();
    let mut resp = match check(&state, &mut req, &mut caller).await {
        Ok(()) => next.run(req).await,
        Err(e) => {
            state.metrics.denied();
            e.into_response()
        }
    };
    resp.extensions_mut().insert(caller);
    resp
}

async fn check(
    state: &Arc<AppState>,
    req: &mut Request,
    caller: &mut Caller,
) -> Result<(), ApiError> {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().as_str().to_owned();
    let stack = stack_of(req, &route);
    caller.stack = stack
        .as_ref()
        .ok()
        .and_then(|s| s.as_ref())
        .map(|s| s.to_string());
    let principal = match credential(req) {
        Ok(Some(secret)) => authenticate(state, secret).await,
        Ok(None) => Err(ApiError::new(RefusalKind::Unauthenticated, "authentication required: send the token as Bearer, or as the Basic-auth password (TF_HTTP_PASSWORD)")),
        Err(e) => Err(e),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => {
            let reason = match &e {
                ApiError::Refused(r) => r.message.clone(),
                ApiError::Internal(_) => "the token could not be checked".into(),
            };
            audit_denial(
                state,
                "unauthenticated".into(),
                caller.stack.clone(),
                serde_json::json!({"method": method, "route": route, "status": 401, "reason": reason}),
            )
            .await;
            return Err(e);
        }
    };
    caller.actor = Some(principal.display());
    let stack = stack?;
    let Some(needed) = crate::router::permission_for(&method, &route) else {
        return Err(ApiError::new(
            RefusalKind::MethodNotAllowed,
            format!("{method} is not supported on {route}"),
        ));
    };
    let refusal = match needed {
        p if !principal.role.has(p) => Some(format!(
            "permission denied: {} tokens do not have the {} permission needed for {method} {route}",
            principal.role,
            p.name()
        )),
        _ => match &stack {
            Some(s) if !principal.may_access(s.as_str()) => Some(format!(
                "permission denied: token {} is scoped to stacks {:?}, which do not include {s}",
                principal.name, principal.stacks
            )),
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
        return Err(ApiError::new(RefusalKind::Forbidden, message));
    }
    if let Some(s) = stack {
        req.extensions_mut().insert(RequestStack(s));
    }
    req.extensions_mut().insert(principal);
    Ok(())
}
