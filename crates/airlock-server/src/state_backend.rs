//! `/state/{stack}`: Terraform's `http` backend (GET, POST/PUT, LOCK, UNLOCK), exactly as
//! Terraform's http backend protocol describes (see docs/design.md). Every write goes through
//! [`crate::firewall::check_write`] inside the store's write transaction.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_core::lockinfo::{LockInfo, MAX_LOCK_INFO_LEN};
use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::state::StateSummary;
use airlock_core::Permission;
use airlock_store::{
    LockOutcome, NewAudit, NewLock, StackRecord, StackSettings, Store, UnlockBy, UnlockOutcome,
    WriteAttempt, WriteResult,
};
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use http_body_util::BodyExt;
use md5::{Digest, Md5};
use serde_json::json;

use crate::auth::{Principal, RequestStack};
use crate::error::{ApiError, ApiResult};
use crate::firewall::{self, Candidate, WriteKind};
use crate::AppState;

/// Runs a blocking store call off the async runtime.
pub async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&dyn Store) -> T + Send + 'static,
) -> ApiResult<T> {
    let store = Arc::clone(&state.store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))
}

/// Loads the stack, creating it when the server runs with `--auto-create-stacks`.
pub async fn existing_stack(
    state: &Arc<AppState>,
    principal: &Principal,
    name: &str,
) -> ApiResult<StackRecord> {
    let n = name.to_owned();
    if let Some(s) = blocking(state, move |st| st.stack(&n)).await?? {
        return Ok(s);
    }
    if !state.config.auto_create_stacks {
        let hint = crate::api::stacks::did_you_mean(state, principal, name).await;
        let r = Refusal::new(
            RefusalKind::UnknownStack,
            format!("stack {name} does not exist{hint}; create it with `airlock stack create {name}` (airlock never creates stacks implicitly, so a typo cannot look like an empty stack)"),
        );
        return Err(deny(state, principal, name, "stack.unknown", r).await);
    }
    let (n, actor) = (name.to_owned(), principal.display());
    let created = blocking(state, move |st| {
        st.create_stack(
            &n,
            false,
            StackSettings::defaults(false),
            NewAudit::ok(
                &actor,
                "stack.create",
                Some(&n),
                json!({"auto_created": true}),
            ),
        )
    })
    .await?;
    match created {
        Ok(s) => Ok(s),
        // Another request created it first.
        Err(airlock_store::StoreError::Conflict(_)) => {
            let n = name.to_owned();
            blocking(state, move |st| st.stack(&n))
                .await??
                .ok_or_else(|| ApiError::Internal("stack vanished".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// May `principal` take a write lock on / write `stack`? Run-bound tokens: only while their run
/// is applying, on its stack. Everyone else: the stack's direct-write settings.
pub async fn may_write(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &StackRecord,
) -> ApiResult<bool> {
    match &principal.run_id {
        None => Ok(firewall::may_write_directly(principal, &stack.settings)),
        Some(run_id) => run_is_applying(state, run_id, &stack.name).await,
    }
}

/// Whether `run_id` is a run of `stack` that is applying right now.
async fn run_is_applying(state: &Arc<AppState>, run_id: &str, stack: &str) -> ApiResult<bool> {
    let (id, s) = (run_id.to_owned(), stack.to_owned());
    let run = blocking(state, move |st| st.run(&id)).await??;
    Ok(run.is_some_and(|r| r.stack == s && r.status == airlock_store::RunStatus::Applying))
}

async fn deny(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    action: &str,
    r: Refusal,
) -> ApiError {
    let (actor, stack_name, action, msg) = (
        principal.display(),
        stack.to_owned(),
        action.to_owned(),
        r.message.clone(),
    );
    let status = crate::error::status_of(r.kind).as_u16();
    let _ = blocking(state, move |st| {
        st.append_audit(NewAudit::denied(
            &actor,
            &action,
            Some(&stack_name),
            json!({ "reason": msg, "status": status }),
        ))
    })
    .await;
    ApiError::Refused(r)
}

/// The single handler behind `/state/{*stack}`; the method picks the operation.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let headers = req.headers().clone();
    let result = match method.as_str() {
        "GET" => read(&state, &principal, stack.as_str()).await,
        "POST" | "PUT" => {
            write(
                &state,
                &principal,
                stack.as_str(),
                query.get("ID").map(String::as_str),
                &headers,
                req.into_body(),
            )
            .await
        }
        "LOCK" => lock(&state, &principal, stack.as_str(), req.into_body()).await,
        "UNLOCK" => unlock(&state, &principal, stack.as_str(), req.into_body()).await,
        _ => Err(ApiError::new(
            RefusalKind::MethodNotAllowed,
            format!("{method} is not supported on /state"),
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Reads a request body of at most `limit` bytes. A declared `Content-Length` over the limit is
/// refused before anything is read.
pub(crate) async fn read_body(body: Body, limit: usize) -> ApiResult<Vec<u8>> {
    use axum::body::HttpBody;
    let too_large = || {
        ApiError::new(
            RefusalKind::TooLarge,
            format!("request body is larger than the {limit}-byte limit"),
        )
    };
    if body.size_hint().lower() > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Err(too_large());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ApiError::new(
            RefusalKind::BadRequest,
            format!("could not read the request body: {e}"),
        )),
    }
}

async fn read(state: &Arc<AppState>, principal: &Principal, stack: &str) -> ApiResult<Response> {
    // One trip to the store: the stack must exist, then its current version.
    let s = stack.to_owned();
    let found = blocking(state, move |st| match st.stack(&s)? {
        Some(_) => st.current_version(&s).map(Some),
        None => Ok(None),
    })
    .await??;
    let current = match found {
        Some(current) => current,
        // Unknown stack: refused, or created with --auto-create-stacks.
        None => {
            existing_stack(state, principal, stack).await?;
            None
        }
    };
    let Some(current) = current else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let bytes = match state.cache.bytes(&current.sha256) {
        Some(b) => b,
        None => {
            let (s, serial) = (stack.to_owned(), current.serial);
            let b = axum::body::Bytes::from(
                blocking(state, move |st| st.version_bytes(&s, serial)).await??,
            );
            state.cache.put_bytes(&current.sha256, b.clone());
            b
        }
    };
    state.metrics.read();
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(bytes),
    )
        .into_response())
}

fn check_md5(headers: &HeaderMap, body: &[u8]) -> ApiResult<()> {
    let Some(v) = headers.get("content-md5") else {
        return Ok(());
    };
    let sent = v
        .to_str()
        .ok()
        .and_then(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()
        })
        .ok_or_else(|| {
            ApiError::new(
                RefusalKind::BadRequest,
                "Content-MD5 header is not valid base64",
            )
        })?;
    if sent[..] != Md5::digest(body)[..] {
        return Err(ApiError::new(RefusalKind::BadRequest, "Content-MD5 does not match the body: the request was corrupted in transit; nothing was stored"));
    }
    Ok(())
}

/// Parses (or fetches from cache) the summary of the version with this hash.
fn summary_for(
    state: &AppState,
    sha: &str,
    load: &dyn Fn() -> Result<Vec<u8>, airlock_store::StoreError>,
) -> Result<Arc<StateSummary>, Refusal> {
    if let Some(s) = state.cache.summary(sha) {
        return Ok(s);
    }
    let bytes = load().map_err(|e| {
        Refusal::new(
            RefusalKind::Conflict,
            format!("could not read the current version: {e}"),
        )
    })?;
    let summary = StateSummary::parse(&bytes).map(Arc::new).map_err(|e| {
        Refusal::new(
            RefusalKind::Conflict,
            format!("the stored current version is unreadable: {e}"),
        )
    })?;
    state.cache.put_summary(sha, Arc::clone(&summary));
    Ok(summary)
}

/// Stores a state body through the firewall. Shared by Terraform writes and restores.
pub async fn firewalled_write(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    body: Vec<u8>,
    kind: WriteKindOwned,
    reason: Option<String>,
) -> ApiResult<WriteResult> {
    // Callers have refused unknown stacks; the store reads the stack again in its transaction.
    let run_authorized = match &principal.run_id {
        Some(run_id) => run_is_applying(state, run_id, stack).await?,
        None => false,
    };
    if principal.run_id.is_some() && !run_authorized {
        let r = Refusal::new(
            RefusalKind::Forbidden,
            "state write refused: this run-bound token may write only while its run is applying"
                .to_owned(),
        );
        return Err(deny(state, principal, stack, "state.write", r).await);
    }
    let summary = Arc::new(StateSummary::parse(&body).map_err(|e| {
        ApiError::new(RefusalKind::BadRequest, format!("state write refused: {e}"))
    })?);
    let sha = hex::encode(airlock_store::blob::sha256(&body));
    let size = body.len();
    let attempt = WriteAttempt {
        serial: summary.serial,
        lineage: summary.lineage.clone(),
        author: principal.display(),
        lock_id: match &kind {
            WriteKindOwned::Backend { lock_id } => lock_id.clone(),
            WriteKindOwned::Restore { .. } => None,
        },
        run_id: principal.run_id.clone(),
        reason,
        restored_from: match kind {
            WriteKindOwned::Restore { from_serial } => Some(from_serial),
            WriteKindOwned::Backend { .. } => None,
        },
        body,
    };
    let (st, p, s, sum, sha2) = (
        Arc::clone(state),
        principal.clone(),
        stack.to_owned(),
        Arc::clone(&summary),
        sha.clone(),
    );
    let result = blocking(state, move |store| {
        let k = match &kind {
            WriteKindOwned::Backend { lock_id } => WriteKind::Backend {
                lock_id: lock_id.as_deref(),
            },
            WriteKindOwned::Restore { from_serial } => WriteKind::Restore {
                from_serial: *from_serial,
            },
        };
        let candidate = Candidate {
            principal: &p,
            kind: k,
            summary: &sum,
            sha256: &sha2,
            size,
            run_authorized,
            run_id: p.run_id.as_deref(),
        };
        let current = |ctx: &airlock_store::WriteContext<'_>| match ctx.current {
            Some(v) => summary_for(&st, &v.sha256, ctx.load_current),
            None => Err(Refusal::new(RefusalKind::Conflict, "no current version")),
        };
        store.write_state(&s, attempt, &mut |ctx| {
            firewall::check_write(ctx, &candidate, &current)
        })
    })
    .await??;
    match &result {
        WriteResult::Stored(_) => {
            state.metrics.write();
            state.cache.put_summary(&sha, summary);
        }
        WriteResult::Refused(r) => {
            state.metrics.write_refused();
            return Err(deny(state, principal, stack, "state.write", r.clone()).await);
        }
        WriteResult::Unchanged => {}
    }
    Ok(result)
}

/// Owned form of [`WriteKind`], to cross into the blocking task.
pub enum WriteKindOwned {
    /// Terraform write with its `?ID=`.
    Backend {
        /// Lock ID.
        lock_id: Option<String>,
    },
    /// Restore of an old serial.
    Restore {
        /// Serial restored.
        from_serial: u64,
    },
}

async fn write(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    lock_id: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let record = existing_stack(state, principal, stack).await?;
    refuse_before_reading(state, principal, &record, lock_id).await?;
    let body = read_body(body, state.config.max_state_bytes).await?;
    check_md5(headers, &body)?;
    let kind = WriteKindOwned::Backend {
        lock_id: lock_id.map(str::to_owned),
    };
    match firewalled_write(state, principal, stack, body, kind, None).await? {
        WriteResult::Stored(v) => Ok((
            StatusCode::OK,
            axum::Json(json!({"serial": v.serial, "sha256": v.sha256})),
        )
            .into_response()),
        _ => Ok(StatusCode::OK.into_response()),
    }
}

/// Authorize before work: what can be refused without the body (may this token write this
/// stack at all; does it hold the lock it names) is refused before a byte of the body is read,
/// parsed or hashed. The firewall decides again inside the write transaction; this only spares
/// the server the work of a write that cannot succeed.
async fn refuse_before_reading(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &StackRecord,
    lock_id: Option<&str>,
) -> ApiResult<()> {
    let name = stack.name.clone();
    // The messages are the firewall's, so a refusal reads the same whichever check made it.
    if !may_write(state, principal, stack).await? {
        let r = if principal.run_id.is_some() {
            Refusal::new(
                RefusalKind::Forbidden,
                "state write refused: this run-bound token may write only while its run is applying",
            )
        } else {
            let allowed: Vec<&str> = stack
                .settings
                .direct_writes
                .iter()
                .map(|r| r.as_str())
                .collect();
            Refusal::new(
                RefusalKind::Forbidden,
                format!(
                    "state write refused: {} tokens may not write state of stack {name} directly (direct writes allowed to: {}); propose the change with `airlock plan` for review",
                    principal.role,
                    if allowed.is_empty() { "nobody".to_owned() } else { allowed.join(", ") }
                ),
            )
        };
        return Err(deny(state, principal, &name, "state.write", r).await);
    }
    let n = name.clone();
    let held = blocking(state, move |st| st.current_lock(&n)).await??;
    let refusal = match held {
        None => Refusal::new(
            RefusalKind::Conflict,
            format!("state write refused: stack {name} is not locked; writes must hold the lock (configure lock_address and unlock_address: `airlock backend-config {name}` prints them)"),
        ),
        Some(l) if lock_id == Some(l.id.as_str()) && l.owner_token == principal.token_id => {
            return Ok(())
        }
        Some(l) if lock_id == Some(l.id.as_str()) => Refusal::new(
            RefusalKind::Locked,
            format!(
                "state write refused: the lock on {name} belongs to {}, not to this token",
                l.owner
            ),
        ),
        Some(l) => Refusal::new(
            RefusalKind::Locked,
            format!(
                "state write refused: stack {name} is locked by {} (lock {}), and this write does not carry that lock ID",
                l.owner, l.id
            ),
        ),
    };
    Err(deny(state, principal, &name, "state.write", refusal).await)
}

fn locked_response(info: Vec<u8>) -> Response {
    (
        StatusCode::LOCKED,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(info),
    )
        .into_response()
}

async fn lock(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    body: Body,
) -> ApiResult<Response> {
    let record = existing_stack(state, principal, stack).await?;
    let body = read_body(body, MAX_LOCK_INFO_LEN).await?;
    let info = LockInfo::parse(&body)
        .map_err(|e| ApiError::new(RefusalKind::BadRequest, format!("lock refused: {e}")))?;
    if !info.is_plan_only() && !may_write(state, principal, &record).await? {
        let r = Refusal::new(
            RefusalKind::Forbidden,
            format!(
                "lock refused: a {} token may lock stack {stack} only for planning (OperationTypePlan), and this lock is for {:?}. This token cannot change this stack's state: propose the change with `airlock plan` for human review instead",
                principal.role, info.operation
            ),
        );
        return Err(deny(state, principal, stack, "lock", r).await);
    }
    let new = NewLock {
        id: info.id.clone(),
        info: body,
        operation: info.operation.clone(),
        owner_token: principal.token_id.clone(),
        owner: if info.who.is_empty() {
            principal.display()
        } else {
            format!("{} via {}", info.who, principal.display())
        },
    };
    let (s, actor, detail) = (
        stack.to_owned(),
        principal.display(),
        json!({"lock_id": info.id, "operation": info.operation, "who": info.who}),
    );
    let outcome = blocking(state, move |st| {
        st.lock(&s, new, NewAudit::ok(&actor, "lock", Some(&s), detail))
    })
    .await??;
    match outcome {
        LockOutcome::Acquired => {
            state.metrics.lock();
            Ok(StatusCode::OK.into_response())
        }
        LockOutcome::Held(holder) => {
            state.metrics.lock_conflict();
            // Terraform prints the holder's lock info from the body; the audit and the server
            // log say who holds it too.
            let reason = format!(
                "lock refused: stack {stack} is locked by {} (lock {}, {}, since {}); wait for it, or `terraform force-unlock {}` if its holder is gone",
                holder.owner,
                holder.id,
                holder.operation,
                airlock_core::time::rfc3339(holder.created_at),
                holder.id
            );
            let denied = deny(
                state,
                principal,
                stack,
                "lock",
                Refusal::new(RefusalKind::Locked, reason),
            )
            .await;
            let mut resp = locked_response(holder.info);
            if let ApiError::Refused(r) = denied {
                resp.extensions_mut().insert(crate::log::RefusalNote {
                    code: crate::error::code_of(r.kind),
                    reason: r.message,
                });
            }
            Ok(resp)
        }
    }
}

async fn unlock(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    body: Body,
) -> ApiResult<Response> {
    existing_stack(state, principal, stack).await?;
    let body = read_body(body, MAX_LOCK_INFO_LEN).await?;
    let may_force = principal.role.has(Permission::ForceUnlock);
    let by = if body.iter().all(u8::is_ascii_whitespace) {
        // Terraform's force-unlock sends an empty body (hashicorp/terraform#28421).
        if !may_force {
            let r = Refusal::new(
                RefusalKind::Forbidden,
                format!("force-unlock refused: {} tokens do not have the force-unlock permission (admins and approvers do)", principal.role),
            );
            return Err(deny(state, principal, stack, "lock.force_unlock", r).await);
        }
        UnlockBy::Force
    } else {
        let info = LockInfo::parse(&body)
            .map_err(|e| ApiError::new(RefusalKind::BadRequest, format!("unlock refused: {e}")))?;
        let s = stack.to_owned();
        if let Some(held) = blocking(state, move |st| st.current_lock(&s)).await?? {
            if held.id == info.id && held.owner_token != principal.token_id && !may_force {
                let r = Refusal::new(RefusalKind::Forbidden, format!("unlock refused: the lock on {stack} belongs to {}; only its holder, an approver or an admin may release it", held.owner));
                return Err(deny(state, principal, stack, "unlock", r).await);
            }
        }
        UnlockBy::Id(info.id)
    };
    let action = if by == UnlockBy::Force {
        "lock.force_unlock"
    } else {
        "unlock"
    };
    let (s, actor) = (stack.to_owned(), principal.display());
    let outcome = blocking(state, move |st| {
        st.unlock(&s, by, NewAudit::ok(&actor, action, Some(&s), json!({})))
    })
    .await??;
    match outcome {
        UnlockOutcome::Released(_) | UnlockOutcome::NotLocked => Ok(StatusCode::OK.into_response()),
        UnlockOutcome::Mismatch(holder) => Ok(locked_response(holder.info)),
    }
}
