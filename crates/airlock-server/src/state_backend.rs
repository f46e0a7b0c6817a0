//! `/state/{stack}`: Terraform's `http` backend (GET, POST/PUT, LOCK, UNLOCK), exactly as
//! Terraform's http backend protocol describes (see docs/design.md). Every write goes through
//! [`crate::firewall::check_write`] inside the store's write transaction.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_core::lockinfo::{LockInfo, MAX_LOCK_INFO_LEN};
use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::Permission;
use airlock_store::blob::StateBody;
use airlock_store::{
    LockOutcome, LockRecord, NewAudit, NewLock, StackRecord, UnlockBy, UnlockOutcome, WriteResult,
};
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use serde_json::json;

use crate::api::runs::{apply_gate, ApplyGate};
use crate::auth::{Principal, RequestStack};
use crate::error::{ApiError, ApiResult};
use crate::firewall;
use crate::stacks::{
    blocking, deny, existing_stack, existing_stack_with_lock, firewalled_write, on_existing_stack,
    read_body, short, WriteKindOwned,
};
use crate::AppState;

/// May `principal` take a write lock on / write `stack`? Run-bound tokens: only while their run
/// is applying, on its stack, once its plan check is recorded ([`apply_gate`]). Everyone else:
/// the stack's direct-write settings.
pub async fn may_write(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &StackRecord,
) -> ApiResult<bool> {
    match &principal.run_id {
        None => Ok(firewall::may_write_directly(principal, &stack.settings)),
        Some(run_id) => Ok(apply_gate(state, run_id, &stack.name, false).await? == ApplyGate::Open),
    }
}

/// Whether `holder` is a plan's lock (`OperationTypePlan`) taken by a token that may never
/// write the stack (not run-bound, and its role not granted direct writes there; a token since
/// deleted counts as such).
fn is_plan_of_a_non_writer(
    st: &dyn airlock_store::Store,
    holder: &LockRecord,
    settings: &airlock_store::StackSettings,
) -> airlock_store::Result<bool> {
    if holder.operation != airlock_core::lockinfo::OPERATION_PLAN {
        return Ok(false);
    }
    Ok(match st.token(&holder.owner_token)? {
        None => true,
        Some(t) => {
            t.run_id.is_none()
                && !(t.role.may_be_granted_direct_writes()
                    && settings.direct_writes.contains(&t.role))
        }
    })
}

/// Whether `holder` is a plan's lock (`OperationTypePlan`) that no live planner holds at `now`:
/// its token is revoked, expired or gone, or it is not a plan-phase token (whose planner keeps
/// it alive by reporting: `tokens::keep_plan_alive`) and the lock is older than the plan idle
/// time `idle_ms`. No one can release it but a force-unlock, and it protects nothing (no state
/// is written under a plan's lock: `firewall::check_write`). Such is the lock of a planner that
/// died holding it (a killed CI job: its plan-phase token expires within the plan idle time, or
/// was ended), or of a long-lived token that locked and never unlocked (an agent's raw LOCK:
/// held without end, it blocked every plan, direct write and restore of the stack).
fn is_dead_plan(
    st: &dyn airlock_store::Store,
    holder: &LockRecord,
    now: i64,
    idle_ms: i64,
) -> airlock_store::Result<bool> {
    if holder.operation != airlock_core::lockinfo::OPERATION_PLAN {
        return Ok(false);
    }
    Ok(match st.token(&holder.owner_token)? {
        None => true,
        Some(t) => {
            let reported = t.parent_id.is_some() && t.run_id.is_none();
            t.revoked_at.is_some()
                || t.expires_at.is_some_and(|e| e <= now)
                || (!reported && holder.created_at.saturating_add(idle_ms) <= now)
        }
    })
}

/// Takes the lock `new` on `stack` in place of `holder`, a lock that protects nothing (`why`),
/// in one store transaction: that lock only, by its ID and holder's token (if it was released
/// meanwhile, or another took it over first, the lock is taken or refused as any other),
/// audited `lock.preempt` with the reason and whose lock it was.
fn lock_over(
    st: &dyn airlock_store::Store,
    stack: &str,
    holder: &LockRecord,
    new: NewLock,
    (actor, detail, why): (&str, &serde_json::Value, &str),
) -> airlock_store::Result<LockOutcome> {
    let preempt = NewAudit::ok(
        actor,
        "lock.preempt",
        Some(stack),
        json!({"preempted_lock": holder.id, "holder": holder.owner, "holder_token": holder.owner_token, "operation": holder.operation, "reason": why}),
    );
    let audit = NewAudit::ok(actor, "lock", Some(stack), detail.clone());
    st.lock_in_place_of(
        stack,
        (&holder.id, &holder.owner_token),
        new,
        preempt,
        audit,
    )
}

/// Why a dead planner's lock is taken over (the audit's `reason`).
const DEAD_PLAN: &str = "a plan's lock whose token is revoked, expired or gone, or held past the plan idle time by a token no planner reports for";

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

/// What makes a Terraform write's [`StateBody`], for [`firewalled_write`] to run off the
/// runtime: its SHA-256 (the version's hash) and, when Terraform sent `Content-MD5`, its MD5,
/// computed in one pass on a thread of their own while the state is read, chunked and
/// compressed (`StateBody::hashing`); the store checks the MD5 against the header before its
/// transaction. The header itself is checked here, before any byte is hashed.
fn hash_and_check_md5(
    headers: &HeaderMap,
    body: Vec<u8>,
) -> ApiResult<impl FnOnce() -> ApiResult<StateBody> + Send + 'static> {
    let sent = headers
        .get("content-md5")
        .map(|v| {
            let digest = v.to_str().ok().and_then(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .ok()
            });
            digest
                .and_then(|d| <[u8; 16]>::try_from(d).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        RefusalKind::BadRequest,
                        "Content-MD5 header is not the base64 of an MD5 digest (16 bytes)",
                    )
                })
        })
        .transpose()?;
    Ok(move || Ok(StateBody::hashing(body, sent)))
}

async fn write(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    lock_id: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let (record, held) = existing_stack_with_lock(state, principal, stack).await?;
    refuse_before_reading(state, principal, &record, held, lock_id).await?;
    let body = read_body(body, state.config.max_state_bytes).await?;
    let body = hash_and_check_md5(headers, body)?;
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
/// stack at all; does it hold the lock it names, `held` as read with the stack) is refused
/// before a byte of the body is read,
/// parsed or hashed. The firewall decides again inside the write transaction; this only spares
/// the server the work of a write that cannot succeed.
async fn refuse_before_reading(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &StackRecord,
    held: Option<LockRecord>,
    lock_id: Option<&str>,
) -> ApiResult<()> {
    let name = stack.name.clone();
    // The messages are the firewall's, so a refusal reads the same whichever check made it.
    if !may_write(state, principal, stack).await? {
        let r = if principal.run_id.is_some() {
            Refusal::new(
                RefusalKind::Forbidden,
                "state write refused: this run-bound token may write only while its run is applying and after its plan check is recorded",
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
    let refusal = match held {
        None => Refusal::new(
            RefusalKind::Conflict,
            format!("state write refused: stack {name} is not locked; writes must hold the lock (configure lock_address and unlock_address: `airlock backend-config {name}` prints them)"),
        ),
        Some(l) if lock_id == Some(l.id.as_str()) && l.owner_token == principal.token_id => {
            match firewall::refuse_under_plan_lock(&l, &name) {
                None => return Ok(()),
                Some(r) => r,
            }
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
    // A refusal of the body is told only once the stack is known to exist (an unknown stack's
    // refusal, or its creation with `--auto-create-stacks`, comes first).
    let read = read_body(body, MAX_LOCK_INFO_LEN).await.and_then(|body| {
        LockInfo::parse(&body)
            .map(|info| (info, body))
            .map_err(|e| ApiError::new(RefusalKind::BadRequest, format!("lock refused: {e}")))
    });
    let (info, body) = match read {
        Ok(read) => read,
        Err(e) => {
            existing_stack(state, principal, stack).await?;
            return Err(e);
        }
    };
    let outcome = if let (false, Some(run_id)) = (info.is_plan_only(), &principal.run_id) {
        let record = existing_stack(state, principal, stack).await?;
        // A run-bound token locks for applying only once its applier's plan check is recorded:
        // `airlock apply` starts Terraform while it checks, and Terraform waits here (before
        // it configures a provider or changes anything). Not recorded in time: 423, which
        // Terraform retries until its -lock-timeout; run not applying: 403, which stops it.
        let why = match apply_gate(state, run_id, stack, true).await? {
            ApplyGate::Open => None,
            ApplyGate::Unchecked => Some((RefusalKind::Locked, format!("lock refused: run {run_id} has not recorded its plan check (`terraform show -json` of the approved plan equals the reviewed plan JSON); the run-bound token locks for applying only after it"))),
            ApplyGate::Closed(why) => Some((RefusalKind::Forbidden, format!("lock refused: {why}; its run-bound token may lock stack {stack} for applying only while the run applies, after its plan check"))),
        };
        if let Some((kind, reason)) = why {
            let locked = kind == RefusalKind::Locked;
            let denied = deny(
                state,
                principal,
                stack,
                "lock",
                Refusal::new(kind, reason.clone()),
            )
            .await;
            if !locked {
                return Err(denied);
            }
            // Terraform reads a 423's body as the holder's lock info and prints its ID (and
            // retries only while that ID is not empty).
            let info = json!({"ID": "airlock-plan-check-pending", "Operation": info.operation, "Who": "airlock", "Info": reason});
            let mut resp = locked_response(info.to_string().into_bytes());
            if let ApiError::Refused(r) = denied {
                resp.extensions_mut().insert(crate::log::RefusalNote {
                    code: crate::error::code_of(r.kind),
                    reason: r.message,
                });
            }
            return Ok(resp);
        }
        take_for_applying(state, principal, &record, info, body).await?
    } else {
        // One store call when the stack exists: its settings and the lock.
        let (info, body) = (&info, &body);
        on_existing_stack(state, principal, stack, || {
            take(state, principal, stack, info, body)
        })
        .await?
    };
    match outcome {
        LockOutcome::Acquired => {
            state.metrics.lock();
            Ok(StatusCode::OK.into_response())
        }
        LockOutcome::Held(holder) => {
            state.metrics.lock_conflict();
            // Terraform prints the holder's lock info from the body; the audit and the server
            // log say who holds it too.
            // A plan's lock goes by itself once its token has ended, or its idle time passed.
            let plan = if holder.operation == airlock_core::lockinfo::OPERATION_PLAN {
                " (a plan's lock: the next lock takes it over once its token expires or is revoked, or, for a token no planner reports for, once it is older than the plan idle time)"
            } else {
                ""
            };
            let reason = format!(
                "lock refused: stack {stack} is locked by {} (lock {}, {}, since {}); wait for it, or `terraform force-unlock {}` if its holder is gone{plan}",
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

/// The lock `info` (sent as `body`) asks `principal` to take, and its audit's detail.
fn new_lock(principal: &Principal, info: &LockInfo, body: Vec<u8>) -> (NewLock, serde_json::Value) {
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
    let detail = json!({"lock_id": info.id, "operation": info.operation, "who": info.who});
    (new, detail)
}

/// Takes the lock for a token that is not applying a run (a plan's lock, or a direct writer's),
/// in one store call with the read of the stack's settings; `None` if there is no such stack.
/// A lock for writing needs the stack's direct-write grant for the token's role.
async fn take(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    info: &LockInfo,
    body: &[u8],
) -> ApiResult<Option<LockOutcome>> {
    let (new, detail) = new_lock(principal, info, body.to_vec());
    let (s, p, plan_only) = (stack.to_owned(), principal.clone(), info.is_plan_only());
    let idle_ms = state.config.plan_idle_ms();
    let taken = short(state, move |st| {
        let Some(record) = st.stack(&s)? else {
            return Ok(None);
        };
        if !plan_only && !firewall::may_write_directly(&p, &record.settings) {
            return Ok(Some(None));
        }
        let audit = NewAudit::ok(&p.display(), "lock", Some(&s), detail.clone());
        let outcome = st.lock(&s, new.clone(), audit)?;
        let dead = match &outcome {
            LockOutcome::Held(holder) => {
                is_dead_plan(st, holder, airlock_store::now_ms(), idle_ms)?
            }
            _ => false,
        };
        Ok::<_, airlock_store::StoreError>(Some(Some((outcome, dead))))
    })
    .await??;
    // A dead planner's lock is taken over: otherwise every plan and direct write of the stack
    // waited for a person to force-unlock it. Off the runtime: a second store call.
    let taken = match taken {
        Some(Some((LockOutcome::Held(holder), true))) => {
            let (s, actor) = (stack.to_owned(), principal.display());
            let (new, detail) = new_lock(principal, info, body.to_vec());
            let outcome = blocking(state, move |st| {
                lock_over(st, &s, &holder, new, (&actor, &detail, DEAD_PLAN))
            })
            .await??;
            Some(Some(outcome))
        }
        Some(Some((outcome, _))) => Some(Some(outcome)),
        Some(None) => Some(None),
        None => None,
    };
    match taken {
        None => Ok(None),
        Some(Some(outcome)) => Ok(Some(outcome)),
        Some(None) => {
            let r = Refusal::new(
                RefusalKind::Forbidden,
                format!(
                    "lock refused: a {} token may lock stack {stack} only for planning (OperationTypePlan), and this lock is for {:?}. This token cannot change this stack's state: propose the change with `airlock plan` for human review instead",
                    principal.role, info.operation
                ),
            );
            Err(deny(state, principal, stack, "lock", r).await)
        }
    }
}

/// Takes the lock for a run-bound token applying its run (its gate is open).
async fn take_for_applying(
    state: &Arc<AppState>,
    principal: &Principal,
    record: &StackRecord,
    info: LockInfo,
    body: Vec<u8>,
) -> ApiResult<LockOutcome> {
    let (new, detail) = new_lock(principal, &info, body);
    let (s, actor) = (record.name.clone(), principal.display());
    // An approved run's apply goes before a plan of a token that can never write this stack
    // (an agent's, a reader's): such a lock protects no write, and held without end (an agent
    // that never unlocks) it would make every approved run fail at its lock timeout. The plan
    // it served is stale once the apply writes, which the serial checks refuse later anyway.
    // A dead planner's lock goes too, whoever planned.
    let settings = record.settings.clone();
    let idle_ms = state.config.plan_idle_ms();
    blocking(state, move |st| {
        let first = st.lock(
            &s,
            new.clone(),
            NewAudit::ok(&actor, "lock", Some(&s), detail.clone()),
        )?;
        let LockOutcome::Held(holder) = &first else {
            return Ok(first);
        };
        let why = if is_plan_of_a_non_writer(st, holder, &settings)? {
            "an approved run's apply goes before a plan of a token that may never write this stack"
        } else if is_dead_plan(st, holder, airlock_store::now_ms(), idle_ms)? {
            DEAD_PLAN
        } else {
            return Ok(first);
        };
        lock_over(st, &s, holder, new, (&actor, &detail, why))
    })
    .await?
    .map_err(Into::into)
}

async fn unlock(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    body: Body,
) -> ApiResult<Response> {
    let body = read_body(body, MAX_LOCK_INFO_LEN).await?;
    // A refusal of the body is told only once the stack is known to exist (an unknown stack's
    // refusal, or its creation with `--auto-create-stacks`, comes first).
    let by = match unlock_by(principal, &body) {
        Ok(by) => by,
        Err((r, audited)) => {
            existing_stack(state, principal, stack).await?;
            return Err(match audited {
                Some(action) => deny(state, principal, stack, action, r).await,
                None => ApiError::Refused(r),
            });
        }
    };
    // One store call when the stack exists: the release, whose transaction checks the holder.
    let outcome = on_existing_stack(state, principal, stack, || {
        release(state, principal, stack, &by)
    })
    .await?;
    match outcome {
        UnlockOutcome::Released(_) | UnlockOutcome::NotLocked => Ok(StatusCode::OK.into_response()),
        UnlockOutcome::Mismatch(holder) => match &by {
            // The ID named is another token's lock, and this token may not force it.
            UnlockBy::Holder { lock_id, .. } if *lock_id == holder.id => {
                let r = Refusal::new(RefusalKind::Forbidden, format!("unlock refused: the lock on {stack} belongs to {}; only its holder, an approver or an admin may release it", holder.owner));
                Err(deny(state, principal, stack, "unlock", r).await)
            }
            _ => Ok(locked_response(holder.info)),
        },
    }
}

/// What an UNLOCK body asks, for `principal`: its own lock's release by ID ([`UnlockBy::Holder`]);
/// with the force-unlock permission, the release of whoever's lock has that ID
/// ([`UnlockBy::Id`]), or of any lock with an empty body (Terraform's force-unlock,
/// hashicorp/terraform#28421). A refusal comes with the action it is audited under, if it is.
fn unlock_by(
    principal: &Principal,
    body: &[u8],
) -> Result<UnlockBy, (Refusal, Option<&'static str>)> {
    let may_force = principal.role.has(Permission::ForceUnlock);
    if body.iter().all(u8::is_ascii_whitespace) {
        if !may_force {
            let r = Refusal::new(
                RefusalKind::Forbidden,
                format!("force-unlock refused: {} tokens do not have the force-unlock permission (admins and approvers do)", principal.role),
            );
            return Err((r, Some("lock.force_unlock")));
        }
        return Ok(UnlockBy::Force);
    }
    let info = LockInfo::parse(body).map_err(|e| {
        (
            Refusal::new(RefusalKind::BadRequest, format!("unlock refused: {e}")),
            None,
        )
    })?;
    let (lock_id, token) = (info.id, principal.token_id.clone());
    Ok(if may_force {
        UnlockBy::Id { lock_id, token }
    } else {
        UnlockBy::Holder {
            lock_id,
            owner_token: token,
        }
    })
}

/// Releases `stack`'s lock as `by` says, audited `unlock` (or `lock.force_unlock`: an empty
/// body, or the store's when the ID is another holder's); `None` if there is no such stack.
async fn release(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    by: &UnlockBy,
) -> ApiResult<Option<UnlockOutcome>> {
    let action = if *by == UnlockBy::Force {
        "lock.force_unlock"
    } else {
        "unlock"
    };
    let (s, actor, by) = (stack.to_owned(), principal.display(), by.clone());
    match short(state, move |st| {
        st.unlock(
            &s,
            by.clone(),
            NewAudit::ok(&actor, action, Some(&s), json!({})),
        )
    })
    .await?
    {
        Ok(outcome) => Ok(Some(outcome)),
        Err(airlock_store::StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
