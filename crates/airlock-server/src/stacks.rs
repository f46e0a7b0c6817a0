//! Services the state backend (`state_backend.rs`) and the JSON API (`api/`) share: store calls
//! off the async runtime, stack lookup, audited refusals, and the firewalled state write. Neither
//! protocol module owns them, so neither imports the other.

use std::sync::Arc;

use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::state::{ParsedState, StateSummary};
use airlock_store::blob::StateBody;
use airlock_store::{
    LockRecord, NewAudit, StackRecord, StackSettings, Store, WriteAttempt, WriteResult,
};
use axum::body::Body;
use http_body_util::BodyExt;
use serde_json::json;

use crate::auth::Principal;
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

/// Runs a short store call (a few rows read, at most one lock change, nothing durable) in
/// place when the store can finish it without waiting, else like [`blocking`]: on SQLite, a
/// lock + write + unlock cycle makes three of its four store calls without handing them to
/// another thread (`airlock_store::in_place`). `f` may run twice: in place until a step of it
/// would wait, then again from the start off the runtime, so it may only read before its one
/// store change.
pub async fn short<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl Fn(&dyn Store) -> T + Send + 'static,
) -> ApiResult<T> {
    // A panic in place is answered as one in the pool is (a 500), not by dropping the client's
    // connection with the request's task.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        airlock_store::in_place::run(|| f(state.store.as_ref()))
    }))
    .map_err(|_| ApiError::Internal("store task failed: a store call panicked".into()))?;
    match ran {
        Some(out) => Ok(out),
        None => blocking(state, f).await,
    }
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

/// Runs `op`, store work on `stack` that answers `None` when there is no such stack; then the
/// stack is refused as unknown or created (`--auto-create-stacks`, by this request or, racing
/// it, by another) by [`existing_stack`], and `op` runs once more. An existing stack, the
/// common case, costs `op` alone.
pub async fn on_existing_stack<T, Fut>(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    op: impl Fn() -> Fut,
) -> ApiResult<T>
where
    Fut: std::future::Future<Output = ApiResult<Option<T>>>,
{
    if let Some(done) = op().await? {
        return Ok(done);
    }
    existing_stack(state, principal, stack).await?;
    op().await?
        .ok_or_else(|| ApiError::Internal("stack vanished".into()))
}

/// [`existing_stack`] and the stack's current lock, read together (one store call).
pub async fn existing_stack_with_lock(
    state: &Arc<AppState>,
    principal: &Principal,
    name: &str,
) -> ApiResult<(StackRecord, Option<LockRecord>)> {
    on_existing_stack(state, principal, name, || {
        let n = name.to_owned();
        async move { Ok(short(state, move |st| st.stack_with_lock(&n)).await??) }
    })
    .await
}

/// Audits a refusal about `stack` under `action`, and returns it as the response error.
pub async fn deny(
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

/// Reads a request body of at most `limit` bytes. A declared `Content-Length` over the limit is
/// refused before anything is read.
pub async fn read_body(body: Body, limit: usize) -> ApiResult<Vec<u8>> {
    use axum::body::HttpBody;
    let too_large = || {
        ApiError::new(
            RefusalKind::TooLarge,
            format!("request body is larger than the {limit}-byte limit"),
        )
    };
    let declared = body.size_hint().lower();
    if declared > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Err(too_large());
    }
    // One buffer, sized by Content-Length when there is one: the body is held once (collecting
    // the frames, joining them and copying the result held a big body three times).
    let mut out = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                RefusalKind::BadRequest,
                format!("could not read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - out.len() {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The summary of `stack`'s version with this hash: the one last written through this process,
/// or the summary cache's, or parsed from `load` (and cached). Parses a whole state: call it off
/// the async runtime.
pub(crate) fn summary_for(
    state: &AppState,
    stack: &str,
    sha: &str,
    load: &dyn Fn() -> Result<Vec<u8>, airlock_store::StoreError>,
) -> Result<Arc<StateSummary>, Refusal> {
    if let Some(s) = cached_summary(state, stack, sha) {
        return Ok(s);
    }
    let bytes = load().map_err(|e| {
        Refusal::new(
            RefusalKind::Conflict,
            format!("could not read the current version: {e}"),
        )
    })?;
    summary_of(state, stack, sha, &bytes)
}

/// Waits until `bytes` of stored states, and what reading them holds (twice their size in
/// all), fit the server's budget of state reads (`--state-read-budget-mib`; a read larger than
/// the budget takes all of it, and runs alone); the permit is held while they are read. For
/// the JSON API's whole-state reads: many at once of a large state do not run the server out
/// of memory, they wait their turn.
pub(crate) async fn within_read_budget(
    state: &AppState,
    bytes: u64,
) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    let budget = u64::from(state.config.state_read_budget_mib.max(1));
    let want = (2 * bytes.div_ceil(1 << 20)).clamp(1, budget);
    state
        .state_reads
        .acquire_many(u32::try_from(want).unwrap_or(u32::MAX))
        .await
        .map_err(|e| ApiError::Internal(format!("state read budget: {e}")))
}

/// The summary of `stack`'s stored version `v` for the JSON API: the cache's, or read and parsed
/// off the async runtime within the server's budget of state reads ([`within_read_budget`]).
pub(crate) async fn version_summary(
    state: &Arc<AppState>,
    stack: &str,
    v: &airlock_store::VersionMeta,
) -> Result<Arc<StateSummary>, ApiError> {
    if let Some(s) = cached_summary(state, stack, &v.sha256) {
        return Ok(s);
    }
    let _reading = within_read_budget(state, v.size).await?;
    let (st, s, sha, serial) = (
        Arc::clone(state),
        stack.to_owned(),
        v.sha256.clone(),
        v.serial,
    );
    tokio::task::spawn_blocking(move || {
        summary_for(&st, &s, &sha, &|| st.store.version_bytes(&s, serial))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
    .map_err(ApiError::from)
}

fn cached_summary(state: &AppState, stack: &str, sha: &str) -> Option<Arc<StateSummary>> {
    state
        .cache
        .recent_summary(stack, sha)
        .or_else(|| state.cache.summary(sha))
}

/// [`summary_for`] of a version whose bytes are loaded already.
pub(crate) fn summary_of(
    state: &AppState,
    stack: &str,
    sha: &str,
    bytes: &[u8],
) -> Result<Arc<StateSummary>, Refusal> {
    if let Some(s) = cached_summary(state, stack, sha) {
        return Ok(s);
    }
    let summary = StateSummary::parse(bytes).map(Arc::new).map_err(|e| {
        Refusal::new(
            RefusalKind::Conflict,
            format!("the stored version is unreadable: {e}"),
        )
    })?;
    state.cache.put_summary(sha, Arc::clone(&summary));
    Ok(summary)
}

/// Stores a state body through the firewall. Shared by Terraform writes and restores.
/// `body` makes the body's [`StateBody`] (hashing every byte: ~2 ms per MB) and is run, with
/// the state reader (~2.5 ms per MB for a body read without reuse), off the async runtime,
/// in the write's own store call: the runtime's threads never spend milliseconds on a body.
pub async fn firewalled_write(
    state: &Arc<AppState>,
    principal: &Principal,
    stack: &str,
    body: impl FnOnce() -> ApiResult<StateBody> + Send + 'static,
    kind: WriteKindOwned,
    reason: Option<String>,
) -> ApiResult<WriteResult> {
    // Callers have refused unknown stacks; the store reads the stack again in its transaction.
    // A run-bound token writes by its run's gate alone (`api::runs::apply_gate`): the run
    // applies this stack and its applier's plan check is recorded.
    let run_authorized = match &principal.run_id {
        Some(run_id) => {
            crate::api::runs::apply_gate(state, run_id, stack, false).await?
                == crate::api::runs::ApplyGate::Open
        }
        None => false,
    };
    if principal.run_id.is_some() && !run_authorized {
        let r = Refusal::new(
            RefusalKind::Forbidden,
            "state write refused: this run-bound token may write only while its run is applying and after its plan check is recorded"
                .to_owned(),
        );
        return Err(deny(state, principal, stack, "state.write", r).await);
    }
    let (st, p, s) = (Arc::clone(state), principal.clone(), stack.to_owned());
    let (result, parsed) = blocking(state, move |store| -> ApiResult<_> {
        let body = body()?;
        // Read reusing what the stack's last write through this process read, for the
        // resource elements it shares byte for byte: a body and summary this process holds
        // together, never ones read back from the database (see `ParsedState`). A miss costs
        // a full read.
        let previous = st.cache.recent_state(&s);
        let parsed = Arc::new(
            ParsedState::parse(body.shared(), previous.as_deref()).map_err(|e| {
                // Bytes damaged in transit read as a broken state: say what happened.
                match body.check_content_md5() {
                    Err(corrupted) => ApiError::new(RefusalKind::BadRequest, corrupted),
                    Ok(()) => {
                        ApiError::new(RefusalKind::BadRequest, format!("state write refused: {e}"))
                    }
                }
            })?,
        );
        drop(previous);
        st.metrics.elements_reused(parsed.reused_elements());
        let summary = parsed.summary();
        let size = body.bytes().len();
        let attempt = WriteAttempt {
            serial: summary.serial,
            lineage: summary.lineage.clone(),
            author: p.display(),
            lock_id: match &kind {
                WriteKindOwned::Backend { lock_id } => lock_id.clone(),
                WriteKindOwned::Restore { .. } => None,
            },
            run_id: p.run_id.clone(),
            reason,
            restored_from: match kind {
                WriteKindOwned::Restore { from_serial } => Some(from_serial),
                WriteKindOwned::Backend { .. } => None,
            },
            body,
        };
        let current = |ctx: &airlock_store::WriteContext<'_>| match ctx.current {
            Some(v) => summary_for(&st, &s, &v.sha256, ctx.load_current),
            None => Err(Refusal::new(RefusalKind::Conflict, "no current version")),
        };
        // The body's SHA-256 is the store's, computed once with its chunks.
        let result = store.write_state(&s, attempt, &mut |ctx| {
            let sha256 = hex::encode(ctx.sha256);
            let kind = match &kind {
                WriteKindOwned::Backend { lock_id } => WriteKind::Backend {
                    lock_id: lock_id.as_deref(),
                },
                WriteKindOwned::Restore { from_serial } => WriteKind::Restore {
                    from_serial: *from_serial,
                },
            };
            let candidate = Candidate {
                principal: &p,
                kind,
                summary,
                sha256: &sha256,
                size,
                run_authorized,
                run_id: p.run_id.as_deref(),
            };
            firewall::check_write(ctx, &candidate, &current)
        })?;
        Ok((result, parsed))
    })
    .await??;
    match &result {
        WriteResult::Stored(v) => {
            state.metrics.write();
            state.cache.put_recent_state(stack, &v.sha256, parsed);
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
