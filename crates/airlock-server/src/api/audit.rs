//! The audit log: list and verify the hash chain.

use std::sync::Arc;

use airlock_core::audit::{verify_chain, GENESIS};
use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::store_call;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::AppState;

#[derive(Deserialize)]
pub struct Page {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

/// `GET /api/v1/audit?after=SEQ&limit=N`. A token scoped to some stacks sees only the events
/// of those stacks; `next_after` is where the next page starts either way.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Query(q): Query<Page>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let events = store_call(&state, move |st| st.audit_events(q.after, limit)).await?;
    let next_after = events.last().map_or(q.after, |e| e.seq);
    let visible: Vec<_> = if p.stacks.is_empty() {
        events
    } else {
        events
            .into_iter()
            .filter(|e| e.stack.as_deref().is_some_and(|s| p.may_access(s)))
            .collect()
    };
    Ok(Json(json!({ "events": visible, "next_after": next_after })))
}

/// `GET /api/v1/audit/verify`: walks the whole chain.
pub async fn verify(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let result = store_call(&state, |st| {
        let mut prev = GENESIS.to_owned();
        let mut after = 0;
        let mut checked = 0u64;
        loop {
            let page = st.audit_events(after, 1000)?;
            let Some(last) = page.last() else { break };
            if let Err((seq, why)) = verify_chain(&page, prev.clone()) {
                return Ok(json!({ "ok": false, "checked": checked, "first_broken": seq, "reason": why }));
            }
            if page.first().is_some_and(|f| f.seq != after + 1) {
                return Ok(json!({ "ok": false, "checked": checked, "first_broken": after + 1, "reason": "a record is missing" }));
            }
            checked += page.len() as u64;
            prev = last.hash.clone();
            after = last.seq;
        }
        Ok(json!({ "ok": true, "checked": checked, "head": prev }))
    })
    .await?;
    Ok(Json(result))
}
