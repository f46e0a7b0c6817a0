//! The audit log: list and verify the hash chain.

use std::sync::Arc;

use airlock_core::audit::{AuditRecord, ChainVerifier, GENESIS};
use airlock_core::refusal::RefusalKind;
use airlock_core::time::{parse_rfc3339_ms, rfc3339};
use airlock_store::AuditFilter;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::store_call;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

#[derive(Deserialize)]
pub struct Page {
    after: Option<i64>,
    before: Option<i64>,
    limit: Option<u32>,
    stack: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// Most events one page returns.
const MAX_LIMIT: u32 = 1000;
/// Most pages a stack-scoped token's listing reads to fill its page.
const MAX_SCOPED_PAGES: usize = 20;

/// `GET /api/v1/audit?limit=N&before=SEQ&stack=S&action=A&outcome=ok|denied&actor=TEXT&since=T&until=T`:
/// the newest matching events first, filtered in the store; `more` counts the matching events
/// older than the page (`null` for a stack-scoped token, which sees only the events of its
/// stacks), `next_before` is where the next page starts. Times are RFC 3339.
/// With `after=SEQ` instead: the events after SEQ in chain order, unfiltered (`next_after`).
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Query(q): Query<Page>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    if let Some(after) = q.after {
        let events = store_call(&state, move |st| st.audit_events(after, limit)).await?;
        let next_after = events.last().map_or(after, |e| e.seq);
        let visible: Vec<_> = events.into_iter().filter(|e| visible_to(&p, e)).collect();
        return Ok(Json(json!({ "events": visible, "next_after": next_after })));
    }
    let mut filter = filter_of(q)?;
    let scoped = !p.stacks.is_empty();
    let (events, more) = store_call(&state, move |st| {
        let mut out = Vec::new();
        for _ in 0..MAX_SCOPED_PAGES {
            let page = st.audit_search(&filter, limit)?;
            let full = page.len() == limit as usize;
            if let Some(last) = page.last() {
                filter.before = Some(last.seq);
            }
            let wanted = limit as usize - out.len();
            out.extend(page.into_iter().filter(|e| visible_to(&p, e)).take(wanted));
            if !full || out.len() == limit as usize {
                break;
            }
        }
        if let Some(last) = out.last() {
            filter.before = Some(last.seq);
        }
        let more = if scoped {
            None
        } else {
            Some(st.audit_count(&filter)?)
        };
        Ok((out, more))
    })
    .await?;
    let next_before = events.last().map(|e| e.seq);
    Ok(Json(
        json!({ "events": events, "more": more, "next_before": next_before }),
    ))
}

/// A stack-scoped token sees only the events of its stacks.
fn visible_to(p: &Principal, e: &AuditRecord) -> bool {
    p.stacks.is_empty() || e.stack.as_deref().is_some_and(|s| p.may_access(s))
}

fn filter_of(q: Page) -> ApiResult<AuditFilter> {
    let time = |t: Option<String>, name: &str| {
        t.map(|t| {
            parse_rfc3339_ms(&t)
                .map(rfc3339)
                .map_err(|e| ApiError::new(RefusalKind::BadRequest, format!("{name}: {e}")))
        })
        .transpose()
    };
    if let Some(o) = q.outcome.as_deref() {
        if !matches!(o, "ok" | "denied") {
            return Err(ApiError::new(
                RefusalKind::BadRequest,
                format!("outcome must be ok or denied, not {o:?}"),
            ));
        }
    }
    let bounded = |v: Option<String>, name: &str| match v {
        Some(v) if v.len() > 256 => Err(ApiError::new(
            RefusalKind::BadRequest,
            format!("{name} is longer than 256 bytes"),
        )),
        v => Ok(v.filter(|v| !v.is_empty())),
    };
    Ok(AuditFilter {
        before: q.before,
        stack: bounded(q.stack, "stack")?,
        action: bounded(q.action, "action")?,
        outcome: q.outcome,
        actor: bounded(q.actor, "actor")?,
        since: time(q.since, "since")?,
        until: time(q.until, "until")?,
    })
}

/// `GET /api/v1/audit/verify`: walks the whole log in one snapshot and checks every chain
/// (`ChainVerifier`): links, positions, hashes, and that each seal's heads are there.
/// `unsealed` counts the stack-chain records after the last seal (sealed within a second).
pub async fn verify(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let result = store_call(&state, |st| {
        let mut v = ChainVerifier::new();
        let mut head = GENESIS.to_owned();
        let mut broken = None;
        st.audit_walk(&mut |page| {
            for r in &page {
                if let Err(b) = v.push(r) {
                    broken = Some(b);
                    return Ok(false);
                }
                head = r.hash.clone();
            }
            Ok(true)
        })?;
        Ok(match broken {
            Some((seq, why)) => {
                json!({ "ok": false, "checked": v.checked(), "first_broken": seq, "reason": why })
            }
            None => {
                json!({ "ok": true, "checked": v.checked(), "head": head, "unsealed": v.unsealed() })
            }
        })
    })
    .await?;
    Ok(Json(result))
}
