//! Token management (admin only): create (secret shown once), list, revoke.
//!
//! **Invariant:** a stack-scoped admin sees and revokes only tokens whose scope lies within
//! its own ([`within_scope`]; a token for all stacks is outside every scoped admin's scope),
//! and mints only for people wholly within it (the store judges that: [`judged`]).
//! Every human token belongs to a user, so approvals count people, not tokens. A minted token
//! expires no later than the token that minted it ([`no_later_than_minter`]).

use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use airlock_core::time::parse_duration_ms;
use airlock_core::Role;
use airlock_store::{no_later_than_minter, now_ms, valid_user_name, NewAudit, NewToken};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, store_call};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::{tokens, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: String,
    #[serde(default)]
    stacks: Vec<String>,
    ttl: Option<String>,
    /// The user the token belongs to; required for admin and approver tokens. A ci, agent or
    /// reader token without one is its own identity.
    user: Option<String>,
}

/// Validates a stack glob: stack-name characters plus `*` and `?`.
pub fn valid_glob(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 200
        && g.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*?".contains(&b))
}

/// Does every stack `requested` covers fall inside `scope`? (The one rule, in `airlock_core`:
/// the store judges minting for a person with it too.)
pub use airlock_core::glob::within_scope;

/// `POST /api/v1/tokens`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.may_mint()?;
    let req: CreateToken = parse_body(&body)?;
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            "token name must be 1-100 printable characters",
        ));
    }
    let role: Role = req
        .role
        .parse()
        .map_err(|e: String| ApiError::new(RefusalKind::BadRequest, e))?;
    if let Some(bad) = req.stacks.iter().find(|g| !valid_glob(g)) {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            format!("invalid stack glob {bad:?}: use stack-name characters and *, e.g. prod/*"),
        ));
    }
    if !within_scope(&p.stacks, &req.stacks) {
        return Err(ApiError::new(
            RefusalKind::Forbidden,
            format!(
                "token {} is scoped to stacks {:?}; it cannot create a token beyond that scope (requested: {:?}, where none means all stacks)",
                p.name, p.stacks, req.stacks
            ),
        ));
    }
    let asked = req
        .ttl
        .as_deref()
        .map(parse_duration_ms)
        .transpose()
        .map_err(|e| ApiError::new(RefusalKind::BadRequest, e))?
        .map(|d| now_ms() + d);
    // A minted token dies with its minter, as phase tokens do: a longer life (or none) asked
    // of a time-limited token is clamped to its own expiry, and the answer says so.
    let expires_at = no_later_than_minter(asked, p.expires_at);
    let note = match p.expires_at {
        Some(ends) if expires_at != asked => Some(format!(
            "the token expires no later than the token that minted it ({}, at {}): a token never outlives its minter; mint from a token without an expiry for a longer life",
            p.name,
            airlock_core::time::rfc3339(ends)
        )),
        _ => None,
    };
    let generated = tokens::generate();
    let user = match (req.user, role) {
        (Some(u), _) => {
            valid_user_name(&u).map_err(|e| ApiError::new(RefusalKind::BadRequest, e))?;
            u
        }
        (None, Role::Admin | Role::Approver) => {
            return Err(ApiError::new(
                RefusalKind::BadRequest,
                format!("a {role} token must belong to a user, so that one person counts as one approver: add --user NAME (create it with `airlock user create NAME`)"),
            ))
        }
        (None, _) => generated.id.clone(),
    };
    let new = NewToken {
        id: generated.id.clone(),
        secret_hash: generated.hash,
        name: name.clone(),
        role,
        stacks: req.stacks.clone(),
        expires_at,
        created_by: p.display(),
        run_id: None,
        user: user.clone(),
        parent_id: None,
        mint_limit: None,
        read_stacks: Vec::new(),
        // The authenticated caller, never the body (`CreateToken` refuses unknown fields).
        minted_by: Some(p.token_id.clone()),
        job_ref: None,
    };
    let audit = NewAudit::ok(
        &p.display(),
        "token.create",
        None,
        json!({"token": generated.id, "name": name, "role": role, "stacks": req.stacks, "expires_at": expires_at, "user": user, "by_user": p.user}),
    );
    let detail = json!({"token": generated.id, "role": role, "stacks": req.stacks, "user": user});
    let record = judged(&state, &p, "token.create", detail, move |st| {
        st.create_token(new, audit)
    })
    .await?;
    let mut created = json!({ "token": record, "secret": generated.secret });
    if let Some(note) = note {
        created["note"] = json!(note);
    }
    Ok((StatusCode::CREATED, Json(created)))
}

/// A store call that may be refused for whom it gives rights to ([`airlock_store::Person`]:
/// minting for a person, giving a person a forge login): such a refusal (403) is audited as a
/// denied `action` by `p`, with `detail` and the reason, like the router's refusals.
pub async fn judged<T: Send + 'static>(
    state: &Arc<AppState>,
    p: &Principal,
    action: &str,
    mut detail: Value,
    f: impl FnOnce(&dyn airlock_store::Store) -> airlock_store::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let result = store_call(state, f).await;
    if let Err(ApiError::Refused(r)) = &result {
        if r.kind == RefusalKind::Forbidden {
            detail["reason"] = json!(r.message);
            detail["status"] = json!(403);
            let denied = NewAudit::denied(&p.display(), action, None, detail);
            // The refusal stands whether or not its audit event could be written.
            let _ = store_call(state, move |st| st.append_audit(denied)).await;
        }
    }
    result
}

/// `GET /api/v1/tokens` (hashes never leave the store): only tokens within the caller's scope.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    let mut tokens = store_call(&state, |st| st.list_tokens()).await?;
    tokens.retain(|t| within_scope(&p.stacks, &t.stacks));
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /api/v1/tokens/{id}`: revokes the token and every token derived from it. A
/// scoped admin may revoke only tokens within its scope; others look absent to it.
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let lookup = id.clone();
    let target = store_call(&state, move |st| st.token(&lookup)).await?;
    match target {
        Some(t) if within_scope(&p.stacks, &t.stacks) => {}
        Some(_) => {
            return Err(ApiError::new(
                RefusalKind::Forbidden,
                format!(
                    "token {} is scoped to stacks {:?}; it cannot revoke token {id}, whose scope lies outside that",
                    p.name, p.stacks
                ),
            ))
        }
        None => return Err(ApiError::new(RefusalKind::NotFound, format!("token {id}"))),
    }
    let audit = NewAudit::ok(&p.display(), "token.revoke", None, json!({"token": id}));
    let record = store_call(&state, move |st| st.revoke_token(&id, audit)).await?;
    state.cache.forget_tokens();
    Ok(Json(json!({ "token": record })))
}
