//! Stacks: create, list, show, settings, protection rules, removal grants and deletion
//! (archiving).

use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use airlock_core::time::parse_duration_ms;
use airlock_core::{Role, StackName};
use airlock_store::{now_ms, NewAudit, NewGrant, StackSettings};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, store_call};
use crate::auth::{Principal, RequestStack};
use crate::error::{ApiError, ApiResult};
use crate::firewall::protection_reason;
use crate::stacks::existing_stack;
use crate::{tokens, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateStack {
    name: String,
    #[serde(default)]
    production: bool,
}

/// `POST /api/v1/stacks`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: CreateStack = parse_body(&body)?;
    let name = StackName::parse(&req.name)
        .map_err(|e| ApiError::new(RefusalKind::BadRequest, e.to_string()))?;
    if !p.may_access(name.as_str()) {
        return Err(ApiError::new(
            RefusalKind::Forbidden,
            format!("token {} is not scoped to stack {name}", p.name),
        ));
    }
    let audit = NewAudit::ok(
        &p.display(),
        "stack.create",
        Some(name.as_str()),
        json!({"production": req.production}),
    );
    let n = name.to_string();
    let record = store_call(&state, move |st| {
        st.create_stack(
            &n,
            req.production,
            StackSettings::defaults(req.production),
            audit,
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({ "stack": record }))))
}

/// `GET /api/v1/stacks`: the stacks the token's scope covers; deleted (archived) ones only
/// for admins.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    let (stacks, mut drift) = store_call(&state, |st| {
        Ok((st.list_stacks()?, super::drift::states_by_stack(st)?))
    })
    .await?;
    let visible: Vec<_> = stacks
        .into_iter()
        .filter(|s| p.may_access(&s.name) && (s.archived.is_none() || p.role == Role::Admin))
        .map(|s| {
            let d = super::drift::status_json(drift.remove(&s.name).as_ref());
            let mut v = json!(s);
            v["drift"] = d;
            v
        })
        .collect();
    Ok(Json(json!({ "stacks": visible })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    /// `false`: leave out the instance count and protected instances (no state is read; what
    /// the console's stack list asks for every stack).
    instances: Option<bool>,
}

/// `GET /api/v1/stacks/{stack}[?instances=false]`: settings, lock, current version and
/// protected instances.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    axum::extract::Query(q): axum::extract::Query<ShowQuery>,
) -> ApiResult<Json<Value>> {
    let record = existing_stack(&state, &p, stack.as_str()).await?;
    let s = stack.to_string();
    let read_state = q.instances != Some(false);
    let (lock, current, drift) = store_call(&state, move |st| {
        let drift = super::drift::states_by_stack(st)?.remove(&s);
        let lock = st.current_lock(&s)?;
        let current = st.current_version(&s)?;
        Ok((lock, current, drift))
    })
    .await?;
    // The current version's summary (the one its write left in the cache, as a rule); one that
    // does not read shows no instances.
    let summary = match &current {
        Some(v) if read_state => crate::stacks::version_summary(&state, stack.as_str(), v)
            .await
            .ok(),
        _ => None,
    };
    let mut instances = 0usize;
    let mut protected = Vec::new();
    if let Some(summary) = summary {
        for i in summary
            .instances
            .iter()
            .filter(|i| i.mode == airlock_core::state::Mode::Managed && i.deposed.is_none())
        {
            instances += 1;
            if let Some(reason) = protection_reason(&i.resource_type, &i.address, &record.settings)
            {
                protected.push(json!({"address": i.address, "reason": reason}));
            }
        }
    }
    Ok(Json(
        json!({ "stack": record, "lock": lock, "current": current,
                "drift": super::drift::status_json(drift.as_ref()),
                "instances": if read_state { json!(instances) } else { Value::Null },
                "protected": if read_state { json!(protected) } else { Value::Null } }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsPatch {
    direct_writes: Option<Vec<String>>,
    required_approvals: Option<u32>,
}

/// `PATCH /api/v1/stacks/{stack}/settings`.
pub async fn settings(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: SettingsPatch = parse_body(&body)?;
    let mut settings = existing_stack(&state, &p, stack.as_str()).await?.settings;
    if let Some(roles) = &req.direct_writes {
        let mut parsed = Vec::new();
        for r in roles {
            let role: Role = r
                .parse()
                .map_err(|e: String| ApiError::new(RefusalKind::BadRequest, e))?;
            if !role.may_be_granted_direct_writes() {
                return Err(ApiError::new(RefusalKind::BadRequest, format!("{role} tokens can never write state: not by configuration, not by an admin")));
            }
            if !parsed.contains(&role) {
                parsed.push(role);
            }
        }
        settings.direct_writes = parsed;
    }
    if let Some(n) = req.required_approvals {
        if !(1..=10).contains(&n) {
            return Err(ApiError::new(
                RefusalKind::BadRequest,
                "required_approvals must be between 1 and 10",
            ));
        }
        settings.required_approvals = n;
    }
    save_settings(&state, &p, stack.as_str(), settings, "stack.settings").await
}

async fn save_settings(
    state: &Arc<AppState>,
    p: &Principal,
    stack: &str,
    settings: StackSettings,
    action: &str,
) -> ApiResult<Json<Value>> {
    let audit = NewAudit::ok(
        &p.display(),
        action,
        Some(stack),
        json!({"settings": settings}),
    );
    let s = stack.to_owned();
    let record = store_call(state, move |st| {
        st.update_stack_settings(&s, settings, audit)
    })
    .await?;
    Ok(Json(json!({ "stack": record })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Protect {
    #[serde(default)]
    types: Vec<String>,
    #[serde(default)]
    addresses: Vec<String>,
}

fn valid_rule(s: &str) -> bool {
    !s.is_empty() && s.len() <= 1000 && !s.chars().any(char::is_control)
}

/// The body of `protect` / `unprotect`: at least one rule, each printable and bounded.
fn protection_rules(body: &[u8], verb: &str) -> ApiResult<Protect> {
    let req: Protect = parse_body(body)?;
    if req.types.is_empty() && req.addresses.is_empty() {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            format!("give at least one type or address to {verb}"),
        ));
    }
    if let Some(bad) = req
        .types
        .iter()
        .chain(&req.addresses)
        .find(|s| !valid_rule(s))
    {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            format!("invalid protection rule {bad:?}"),
        ));
    }
    Ok(req)
}

/// `POST /api/v1/stacks/{stack}/protect`: adds protected types or address globs.
pub async fn protect(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req = protection_rules(&body, "protect")?;
    let mut settings = existing_stack(&state, &p, stack.as_str()).await?.settings;
    for t in req.types {
        if !settings.protect_types.contains(&t) {
            settings.protect_types.push(t);
        }
    }
    for a in req.addresses {
        if !settings.protect_addresses.contains(&a) {
            settings.protect_addresses.push(a);
        }
    }
    save_settings(&state, &p, stack.as_str(), settings, "stack.protect").await
}

/// `POST /api/v1/stacks/{stack}/unprotect`: removes server-side protection rules (types or
/// address globs added with `protect`). The built-in catalogue is not a rule of the stack and
/// cannot be removed here.
pub async fn unprotect(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req = protection_rules(&body, "unprotect")?;
    let mut settings = existing_stack(&state, &p, stack.as_str()).await?.settings;
    let missing: Vec<&String> = req
        .types
        .iter()
        .filter(|t| !settings.protect_types.contains(t))
        .chain(
            req.addresses
                .iter()
                .filter(|a| !settings.protect_addresses.contains(a)),
        )
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::new(
            RefusalKind::NotFound,
            format!(
                "{missing:?} {} not a protection rule of stack {stack} (its rules: types {:?}, addresses {:?}); only rules added with `airlock stack protect` can be removed, the built-in catalogue stays",
                if missing.len() == 1 { "is" } else { "are" },
                settings.protect_types,
                settings.protect_addresses
            ),
        ));
    }
    settings.protect_types.retain(|t| !req.types.contains(t));
    settings
        .protect_addresses
        .retain(|a| !req.addresses.contains(a));
    save_settings(&state, &p, stack.as_str(), settings, "stack.unprotect").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Archive {
    reason: String,
}

/// `POST /api/v1/stacks/{stack}/archive`: deletes a stack by archiving it (`airlock stack
/// delete`). Refused while it is locked or a run is applying; see `Store::archive_stack`.
pub async fn archive(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: Archive = parse_body(&body)?;
    if req.reason.trim().is_empty() || req.reason.len() > 2000 {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            "a reason (1-2000 characters) is required to delete a stack",
        ));
    }
    existing_stack(&state, &p, stack.as_str()).await?;
    let audit = NewAudit::ok(
        &p.display(),
        "stack.delete",
        Some(stack.as_str()),
        json!({"reason": req.reason, "archived": true}),
    );
    let (s, by) = (stack.to_string(), p.display());
    let record = store_call(&state, move |st| {
        st.archive_stack(&s, &by, &req.reason, audit)
    })
    .await?;
    Ok(Json(json!({ "stack": record })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGrant {
    addresses: Vec<String>,
    ttl: String,
    reason: String,
}

/// `POST /api/v1/stacks/{stack}/grants`: a one-off removal grant (approvers and admins).
pub async fn create_grant(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: CreateGrant = parse_body(&body)?;
    if req.addresses.is_empty()
        || req.addresses.len() > 1000
        || req.addresses.iter().any(|a| !valid_rule(a))
    {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            "give 1-1000 resource instance addresses",
        ));
    }
    if req.reason.trim().is_empty() || req.reason.len() > 2000 {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            "a reason (1-2000 characters) is required",
        ));
    }
    let ttl = parse_duration_ms(&req.ttl).map_err(|e| ApiError::new(RefusalKind::BadRequest, e))?;
    existing_stack(&state, &p, stack.as_str()).await?;
    let grant = NewGrant {
        id: tokens::random_id("grant_"),
        addresses: req.addresses.clone(),
        reason: req.reason.clone(),
        created_by: p.display(),
        expires_at: now_ms() + ttl,
        run_id: None,
    };
    let audit = NewAudit::ok(
        &p.display(),
        "grant.create",
        Some(stack.as_str()),
        json!({"grant": grant.id, "addresses": req.addresses, "reason": req.reason, "expires_at": grant.expires_at}),
    );
    let s = stack.to_string();
    let record = store_call(&state, move |st| st.create_grant(&s, grant, audit)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "grant": record }))))
}

/// `GET /api/v1/stacks/{stack}/grants`.
pub async fn grants(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
) -> ApiResult<Json<Value>> {
    existing_stack(&state, &p, stack.as_str()).await?;
    let s = stack.to_string();
    let grants = store_call(&state, move |st| st.grants(&s)).await?;
    Ok(Json(json!({ "grants": grants })))
}

/// ` (did you mean NAME?)` when a stack that `p` may see (and that is not deleted) is a likely
/// typo of `name`, otherwise empty. Only names the caller could list are ever suggested.
pub(crate) async fn did_you_mean(state: &Arc<AppState>, p: &Principal, name: &str) -> String {
    let Ok(stacks) = store_call(state, |st| st.list_stacks()).await else {
        return String::new();
    };
    let visible = stacks
        .iter()
        .filter(|s| s.archived.is_none() && p.may_access(&s.name))
        .map(|s| s.name.as_str());
    closest_name(name, visible).map_or_else(String::new, |n| format!(" (did you mean {n}?)"))
}

/// The candidate closest to `name` by edit distance when it is close enough to be a typo: at
/// most 3 edits and at most a third of `name`'s length. Ties go to the first candidate.
pub(crate) fn closest_name<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(name, c);
        if d > 0 && d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// Levenshtein distance over characters (insert, delete, substitute each cost 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_inserts_deletes_and_substitutions() {
        assert_eq!(edit_distance("prod/app", "prod/app"), 0);
        assert_eq!(edit_distance("prod/ap", "prod/app"), 1);
        assert_eq!(edit_distance("prod/apq", "prod/app"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_name_suggests_only_near_misses() {
        let names = ["prod/app", "prod/api", "dev/app"];
        assert_eq!(closest_name("prod/ap", names), Some("prod/app"));
        assert_eq!(closest_name("dev/ap", names), Some("dev/app"));
        assert_eq!(
            closest_name("dev/app", ["dev/app"]),
            None,
            "an exact name is no typo"
        );
        assert_eq!(closest_name("staging/web", names), None);
        assert_eq!(closest_name("a", ["b"]), Some("b"));
        assert_eq!(closest_name("ab", ["cd"]), None);
    }
}
