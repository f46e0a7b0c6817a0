//! Server-side Rego policy sets (`airlock policy add --stack GLOB DIR`): an all-stacks admin
//! installs a set of `.rego` files for a stack glob; the plan gate evaluates every active set
//! whose glob matches a run's stack, in its own engine, in addition to the repository's policy,
//! which cannot weaken it. A new set for a glob is its next version and replaces the active
//! one; removal keeps the set (and its reason). Every change is audited.

use std::sync::Arc;

use airlock_core::glob::glob_match;
use airlock_core::refusal::RefusalKind;
use airlock_policy::gate::{self, ServerPolicySet};
use airlock_policy::rego::RegoPolicies;
use airlock_store::{NewAudit, NewPolicySet, PolicyFile, PolicySetRecord};
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

/// Longest stack glob and file path accepted.
const MAX_GLOB: usize = 256;
const MAX_PATH: usize = 512;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSet {
    stack_glob: String,
    files: Vec<PolicyFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveSet {
    reason: String,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(RefusalKind::BadRequest, msg)
}

/// A set applies across stacks, so only a token for all stacks may change them.
fn all_stacks_admin(p: &Principal) -> ApiResult<()> {
    if p.stacks.is_empty() {
        Ok(())
    } else {
        Err(ApiError::new(
            RefusalKind::Forbidden,
            format!(
                "token {} is scoped to {}; server policies apply across stacks, so only an admin token for all stacks may change them",
                p.token_id,
                p.stacks.join(", ")
            ),
        ))
    }
}

/// Refuses a set that would not load or that exceeds the bounds: what is stored always runs.
fn validate(req: &AddSet) -> ApiResult<()> {
    let glob = &req.stack_glob;
    if glob.is_empty() || glob.len() > MAX_GLOB || glob.chars().any(char::is_control) {
        return Err(bad(format!(
            "stack_glob must be 1-{MAX_GLOB} characters without control characters"
        )));
    }
    let files: Vec<(String, String)> = req
        .files
        .iter()
        .map(|f| (f.path.clone(), f.text.clone()))
        .collect();
    gate::check_set_size(&files).map_err(|e| bad(e.to_string()))?;
    let mut paths = std::collections::BTreeSet::new();
    for f in &req.files {
        if f.path.len() > MAX_PATH
            || f.path.chars().any(char::is_control)
            || !f.path.ends_with(".rego")
            || f.path.ends_with("_test.rego")
            || !paths.insert(f.path.as_str())
        {
            return Err(bad(format!(
                "policy file {:?}: each file is a distinct .rego path (not *_test.rego) of at most {MAX_PATH} characters",
                f.path
            )));
        }
    }
    RegoPolicies::load(&files).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// The set as listed: everything but the file texts.
fn summary(s: &PolicySetRecord) -> Value {
    json!({
        "id": s.id,
        "stack_glob": s.stack_glob,
        "version": s.version,
        "active": s.is_active(),
        "files": s.files.iter().map(|f| &f.path).collect::<Vec<_>>(),
        "sha256": s.sha256,
        "created_at": s.created_at,
        "created_by": s.created_by,
        "removed_at": s.removed_at,
        "removed_by": s.removed_by,
        "removed_reason": s.removed_reason,
    })
}

/// The active sets whose glob matches `stack`, oldest first: what the plan gate evaluates.
pub fn for_stack(
    st: &dyn airlock_store::Store,
    stack: &str,
) -> airlock_store::Result<Vec<ServerPolicySet>> {
    Ok(st
        .policy_sets()?
        .into_iter()
        .filter(|s| s.is_active() && glob_match(&s.stack_glob, stack))
        .map(|s| ServerPolicySet {
            id: s.id,
            files: s.files.into_iter().map(|f| (f.path, f.text)).collect(),
        })
        .collect())
}

/// `POST /api/v1/policies`: adds a set as the next version of its glob.
pub async fn add(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    all_stacks_admin(&p)?;
    let req: AddSet = parse_body(&body)?;
    drop(body);
    validate(&req)?;
    let id = tokens::random_id("pol_");
    let files = req.files.len();
    let audit = NewAudit::ok(
        &p.display(),
        "policy.add",
        None,
        json!({"policy_set": id, "stack_glob": req.stack_glob, "files": files, "sha256": airlock_store::policy_set_sha256(&sorted(&req.files))}),
    );
    let new = NewPolicySet {
        id,
        stack_glob: req.stack_glob,
        files: req.files,
        created_by: p.display(),
    };
    let set = store_call(&state, move |st| st.add_policy_set(new, audit)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "policy_set": summary(&set) })),
    ))
}

fn sorted(files: &[PolicyFile]) -> Vec<PolicyFile> {
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// `GET /api/v1/policies`: every set, removed ones included, without file texts.
pub async fn list(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let sets = store_call(&state, |st| st.policy_sets()).await?;
    let sets: Vec<Value> = sets.iter().map(summary).collect();
    Ok(Json(json!({ "policy_sets": sets })))
}

/// `GET /api/v1/policies/{id}`: one set with its files.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let lookup = id.clone();
    let set = store_call(&state, move |st| st.policy_set(&lookup))
        .await?
        .ok_or_else(|| ApiError::new(RefusalKind::NotFound, format!("no policy set {id}")))?;
    let mut v = summary(&set);
    v["files"] = json!(set.files);
    Ok(Json(json!({ "policy_set": v })))
}

/// `POST /api/v1/policies/{id}/remove`: stops a set from applying (kept, with the reason).
pub async fn remove(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    all_stacks_admin(&p)?;
    let req: RemoveSet = parse_body(&body)?;
    if req.reason.trim().is_empty() || req.reason.len() > 2000 {
        return Err(bad(
            "a reason (1-2000 characters) is required to remove a policy set",
        ));
    }
    let audit = NewAudit::ok(
        &p.display(),
        "policy.remove",
        None,
        json!({"policy_set": id, "reason": req.reason}),
    );
    let by = p.display();
    let set = store_call(&state, move |st| {
        st.remove_policy_set(&id, &by, &req.reason, audit)
    })
    .await?;
    Ok(Json(json!({ "policy_set": summary(&set) })))
}
