//! Users (admin only): the people tokens belong to. Approvals and authorship count users, so
//! one person with several tokens is still one approver. An admin can create users and
//! tokens for them, so an admin alone can fake several approvers; `user.create` and
//! `token.create` audit events name the admin who did.

use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use airlock_store::{valid_user_name, NewAudit, NewUser};
use axum::body::Bytes;
use axum::extract::State;
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
    let audit = NewAudit::ok(
        &p.display(),
        "user.create",
        None,
        json!({"user": req.name, "by_user": p.user}),
    );
    let new = NewUser {
        name: req.name,
        created_by: p.display(),
    };
    let user = store_call(&state, move |st| st.create_user(new, audit)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "user": user }))))
}

/// `GET /api/v1/users`.
pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let users = store_call(&state, |st| st.list_users()).await?;
    Ok(Json(json!({ "users": users })))
}
