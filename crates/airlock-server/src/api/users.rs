//! Users (admin only): the people tokens belong to. Approvals and authorship count users, so
//! one person with several tokens is still one approver. An admin can create users and
//! tokens for them, so an admin alone can fake several approvers; `user.create` and
//! `token.create` audit events name the admin who did.

use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use airlock_store::{valid_forge_login, valid_user_name, NewAudit, NewUser};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, store_call};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
    /// Forge logins (`github:alice`): the change requests this user writes or pushes are theirs.
    #[serde(default)]
    forge_logins: Vec<String>,
}

/// Most forge logins one request gives a user.
const MAX_FORGE_LOGINS: usize = 20;

/// The logins checked and lower-cased, each once.
fn forge_logins(logins: &[String]) -> ApiResult<Vec<String>> {
    if logins.len() > MAX_FORGE_LOGINS {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            format!("at most {MAX_FORGE_LOGINS} forge logins at a time"),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for l in logins {
        let l = valid_forge_login(l).map_err(|e| ApiError::new(RefusalKind::BadRequest, e))?;
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

/// A forge login decides approvals on every stack (its user may not approve a run of a change
/// it wrote; a login of no user blocks every approval) and is never taken back, so only an
/// admin token for all stacks gives one: a stack-scoped admin could otherwise give a prod
/// approver's login to a decoy user and let him approve his own change.
fn may_give_forge_logins(p: &Principal) -> ApiResult<()> {
    if p.stacks.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        RefusalKind::Forbidden,
        format!(
            "token {} is scoped to stacks {:?}; forge logins decide approvals on all stacks, so only an admin token for all stacks may give them",
            p.name, p.stacks
        ),
    ))
}

/// `POST /api/v1/users`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.may_mint()?;
    let req: CreateUser = parse_body(&body)?;
    valid_user_name(&req.name).map_err(|e| ApiError::new(RefusalKind::BadRequest, e))?;
    let logins = forge_logins(&req.forge_logins)?;
    if !logins.is_empty() {
        may_give_forge_logins(&p)?;
    }
    let audit = NewAudit::ok(
        &p.display(),
        "user.create",
        None,
        json!({"user": req.name, "forge_logins": logins, "by_user": p.user}),
    );
    let new = NewUser {
        name: req.name,
        created_by: p.display(),
        forge_logins: logins,
    };
    let user = store_call(&state, move |st| st.create_user(new, audit)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "user": user }))))
}

/// `GET /api/v1/users`.
pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let users = store_call(&state, |st| st.list_users()).await?;
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddForgeLogin {
    login: String,
}

/// `POST /api/v1/users/{name}/forge-logins`: gives an existing user a forge login (admin only;
/// a login belongs to one user, and is never taken back here: a mapping that blocks or allows
/// approvals is part of the audit trail).
pub async fn add_forge_login(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    p.may_mint()?;
    may_give_forge_logins(&p)?;
    let req: AddForgeLogin = parse_body(&body)?;
    valid_user_name(&name).map_err(|e| ApiError::new(RefusalKind::BadRequest, e))?;
    let login =
        valid_forge_login(&req.login).map_err(|e| ApiError::new(RefusalKind::BadRequest, e))?;
    let audit = NewAudit::ok(
        &p.display(),
        "user.forge_login",
        None,
        json!({"user": name, "forge_login": login, "by_user": p.user}),
    );
    let detail = json!({"user": name, "forge_login": login});
    let user = super::tokens::judged(&state, &p, "user.forge_login", detail, move |st| {
        st.add_forge_login(&name, &login, audit)
    })
    .await?;
    Ok(Json(json!({ "user": user })))
}
