//! State history: list, show, raw bytes, diff, restore and verify.

use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use airlock_core::state::{Mode, StateDiff};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, store_call};
use crate::auth::{Principal, RequestStack};
use crate::error::{ApiError, ApiResult};
use crate::firewall::protection_reason;
use crate::stacks::{existing_stack, firewalled_write, WriteKindOwned};
use crate::AppState;

/// `GET /api/v1/stacks/{stack}/versions`.
pub async fn history(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
) -> ApiResult<Json<Value>> {
    existing_stack(&state, &p, stack.as_str()).await?;
    let s = stack.to_string();
    let versions = store_call(&state, move |st| st.versions(&s)).await?;
    Ok(Json(json!({ "versions": versions })))
}

/// A version reference: a serial, or `current`.
fn parse_serial(v: &str) -> ApiResult<Option<u64>> {
    if v == "current" {
        return Ok(None);
    }
    v.parse::<u64>().map(Some).map_err(|_| {
        ApiError::new(
            RefusalKind::BadRequest,
            format!("version {v:?} is not a serial number or `current`"),
        )
    })
}

async fn load(
    state: &Arc<AppState>,
    p: &Principal,
    stack: &str,
    version: &str,
) -> ApiResult<(airlock_store::VersionMeta, Vec<u8>)> {
    existing_stack(state, p, stack).await?;
    let meta = load_meta(state, stack, version).await?;
    let (s, serial) = (stack.to_owned(), meta.serial);
    let bytes = store_call(state, move |st| st.version_bytes(&s, serial)).await?;
    Ok((meta, bytes))
}

/// The metadata of `version` (a serial or `current`) of an existing stack.
async fn load_meta(
    state: &Arc<AppState>,
    stack: &str,
    version: &str,
) -> ApiResult<airlock_store::VersionMeta> {
    let serial = parse_serial(version)?;
    let s = stack.to_owned();
    store_call(state, move |st| {
        match serial {
            Some(n) => st.version(&s, n)?,
            None => st.current_version(&s)?,
        }
        .ok_or_else(|| {
            airlock_store::StoreError::NotFound(format!(
                "stack {s} has no version {}",
                serial.map_or("yet".into(), |n| n.to_string())
            ))
        })
    })
    .await
}

/// `GET /api/v1/stacks/{stack}/versions/{serial}?type=T&module=M&offset=N&limit=N`: metadata,
/// instances and outputs (names only). Without `limit`, every instance (matching `type` and
/// `module`, when given); `total` counts the matching ones, so a caller can page.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    Path((_, version)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> ApiResult<Json<Value>> {
    let record = existing_stack(&state, &p, stack.as_str()).await?;
    let meta = load_meta(&state, stack.as_str(), &version).await?;
    // Versions are immutable: their parsed summary is cached by content hash.
    let summary = crate::stacks::version_summary(&state, stack.as_str(), &meta).await?;
    let matching = summary
        .instances
        .iter()
        .filter(|i| {
            q.resource_type
                .as_deref()
                .is_none_or(|t| i.resource_type == t)
        })
        .filter(|i| {
            q.module
                .as_deref()
                .is_none_or(|m| airlock_core::address::render_module_path(&i.addr.module) == m)
        });
    let total = matching.clone().count();
    let instances: Vec<Value> = matching
        .skip(q.offset.unwrap_or(0))
        .take(q.limit.unwrap_or(usize::MAX))
        .map(|i| {
            json!({
                "address": i.address,
                "type": i.resource_type,
                "module": airlock_core::address::render_module_path(&i.addr.module),
                "name": i.addr.name,
                "key": match &i.addr.key {
                    Some(airlock_core::address::InstanceKey::Int(n)) => json!(n),
                    Some(airlock_core::address::InstanceKey::Str(k)) => json!(k),
                    None => Value::Null,
                },
                "mode": if i.mode == Mode::Managed { "managed" } else { "data" },
                "deposed": i.deposed,
                "tainted": i.tainted,
                "protected": if i.mode == Mode::Managed { protection_reason(&i.resource_type, &i.address, &record.settings) } else { None },
            })
        })
        .collect();
    let outputs: Vec<Value> = summary
        .outputs
        .iter()
        .map(|o| json!({"name": o.name, "sensitive": o.sensitive}))
        .collect();
    Ok(Json(
        json!({ "version": meta, "terraform_version": summary.terraform_version, "total": total, "instances": instances, "outputs": outputs }),
    ))
}

/// Filters and a page of `show`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    #[serde(rename = "type")]
    resource_type: Option<String>,
    module: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// `GET /api/v1/stacks/{stack}/versions/{serial}/raw`: the byte-exact original.
pub async fn raw(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    Path((_, version)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (meta, bytes) = load(&state, &p, stack.as_str(), &version).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::ETAG, format!("\"{}\"", meta.sha256)),
        ],
        Body::from(bytes),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: String,
    to: String,
    /// `attributes`: also name each changed attribute with its values (sensitive ones masked).
    detail: Option<String>,
}

/// `GET /api/v1/stacks/{stack}/diff?from=V1&to=V2`.
pub async fn diff(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<Value>> {
    let attributes = match q.detail.as_deref() {
        None => false,
        Some("attributes") => true,
        Some(_) => {
            return Err(ApiError::new(
                RefusalKind::BadRequest,
                "detail must be `attributes` (or left out)",
            ))
        }
    };
    existing_stack(&state, &p, stack.as_str()).await?;
    let (a, b) = (
        load_meta(&state, stack.as_str(), &q.from).await?,
        load_meta(&state, stack.as_str(), &q.to).await?,
    );
    // Both bodies are held while they are compared.
    let _reading = crate::stacks::within_read_budget(&state, a.size + b.size).await?;
    let (s, (sa, sb)) = (stack.to_string(), (a.serial, b.serial));
    let (ab, bb) = store_call(&state, move |st| {
        Ok((st.version_bytes(&s, sa)?, st.version_bytes(&s, sb)?))
    })
    .await?;
    // Two whole states read and compared: off the async runtime (a reader's diffs of large
    // states stalled every other request), their summaries from the cache when it has them.
    let (st, s) = (Arc::clone(&state), stack.to_string());
    let answer = tokio::task::spawn_blocking(move || -> ApiResult<Value> {
        let sa = crate::stacks::summary_of(&st, &s, &a.sha256, &ab)?;
        let sb = crate::stacks::summary_of(&st, &s, &b.sha256, &bb)?;
        Ok(match attributes {
            false => {
                let d = StateDiff::between((&ab, &sa), (&bb, &sb));
                json!({ "from": a.serial, "to": b.serial, "diff": d })
            }
            true => {
                let d = airlock_core::attr_diff::between((&ab, &sa), (&bb, &sb));
                json!({ "from": a.serial, "to": b.serial, "from_version": a, "to_version": b, "attributes": d })
            }
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("diff task failed: {e}")))??;
    Ok(Json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreRequest {
    serial: u64,
    reason: String,
}

/// Rewrites a stored state's serial, keeping everything else.
fn with_serial(bytes: &[u8], serial: u64) -> ApiResult<Vec<u8>> {
    airlock_core::state_serial::replace_serial(bytes, serial)
        .map_err(|e| ApiError::Internal(format!("stored version unreadable: {e}")))
}

/// `POST /api/v1/stacks/{stack}/restore`: writes an old version again as a NEW version.
pub async fn restore(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: RestoreRequest = parse_body(&body)?;
    super::require_reason(&req.reason, " for a restore")?;
    let (old, bytes) = load(&state, &p, stack.as_str(), &req.serial.to_string()).await?;
    let s = stack.to_string();
    let current = store_call(&state, move |st| st.current_version(&s))
        .await?
        .ok_or_else(|| ApiError::new(RefusalKind::Conflict, "stack has no versions"))?;
    if current.sha256 == old.sha256 {
        return Err(ApiError::new(
            RefusalKind::Conflict,
            format!("version {} is already the current version", old.serial),
        ));
    }
    let new_bytes = with_serial(&bytes, current.serial + 1)?;
    let result = firewalled_write(
        &state,
        &p,
        stack.as_str(),
        move || Ok(airlock_store::blob::StateBody::new(new_bytes)),
        WriteKindOwned::Restore {
            from_serial: old.serial,
        },
        Some(req.reason),
    )
    .await?;
    match result {
        airlock_store::WriteResult::Stored(v) => Ok(Json(json!({ "version": v }))),
        _ => Err(ApiError::new(
            RefusalKind::Conflict,
            "nothing was restored: the state changed meanwhile; retry",
        )),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    stack: Option<String>,
}

/// `POST /api/v1/verify`: re-hashes stored versions.
pub async fn verify(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: VerifyRequest = if body.is_empty() {
        VerifyRequest::default()
    } else {
        parse_body(&body)?
    };
    if let Some(s) = &req.stack {
        airlock_core::StackName::parse(s)
            .map_err(|e| ApiError::new(RefusalKind::BadRequest, e.to_string()))?;
        if !p.may_access(s) {
            return Err(ApiError::new(
                RefusalKind::Forbidden,
                format!("token {} is not scoped to stack {s}", p.name),
            ));
        }
        existing_stack(&state, &p, s).await?;
    }
    // A scoped token without --stack verifies the stacks of its scope only.
    let scoped = !p.stacks.is_empty() && req.stack.is_none();
    let report = store_call(&state, move |st| {
        if !scoped {
            return st.verify(req.stack.as_deref());
        }
        let mut total = airlock_store::VerifyReport::default();
        for s in st
            .list_stacks()?
            .into_iter()
            .filter(|s| p.may_access(&s.name))
        {
            let r = st.verify(Some(&s.name))?;
            total.checked += r.checked;
            total.failures.extend(r.failures);
        }
        Ok(total)
    })
    .await?;
    Ok(Json(json!({ "report": report })))
}
