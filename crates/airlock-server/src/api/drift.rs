//! Drift reports: `airlock drift` uploads the JSON of a refresh-only plan (or the error that
//! kept Terraform from making one); the server reads it itself with `airlock_policy::drift`
//! (it never takes a client's verdict), marks what the stack protects, and stores the report
//! against the state serial the check refreshed. Who may record a report is the route table's
//! `report-drift` (not agents: an "in sync" report clears the stack's drift status). The
//! report's `drift.report` audit event carries the SHA-256 of the stored JSON
//! ([`report_sha256`]), so a backup's report body is bound to the audit chain.

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use airlock_policy::drift::{self, DriftReport};
use airlock_store::{now_ms, DriftState, NewAudit, NewDriftReport, Store};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, store_call};
use crate::auth::{Principal, RequestStack};
use crate::error::{ApiError, ApiResult};
use crate::firewall::protection_reason;
use crate::stacks::existing_stack;
use crate::{tokens, AppState};

/// Most history entries or instances one page holds.
pub const MAX_PAGE: u32 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    /// The state serial the check refreshed (`null`: the stack had no state).
    serial: Option<u64>,
    /// `terraform show -json` of the refresh-only plan, base64.
    plan_json_b64: Option<String>,
    /// Why there is no plan (a provider or refresh error).
    error: Option<String>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(RefusalKind::BadRequest, message)
}

/// The drift status of a stack as the API, `stack show`/`list` and `/metrics` show it.
pub fn status_json(d: Option<&DriftState>) -> Value {
    match d {
        None => json!({"status": "never_checked"}),
        Some(d) => json!({
            "status": d.last.status,
            "drifted_since": d.drifted_since,
            "last_check": d.last.created_at,
            "last_report": d.last.id,
            "serial": d.last.serial,
            "drifted": d.last.drifted,
            "findings": d.last.findings,
        }),
    }
}

/// The SHA-256 (hex) of a drift report's stored JSON, as its `drift.report` audit event records
/// it (`report_sha256`): `backup verify`/`import` check a backup's report body against it.
pub fn report_sha256(report: &str) -> String {
    hex::encode(airlock_store::blob::sha256(report.as_bytes()))
}

/// Every stack's drift state by name (one query for all stacks).
pub fn states_by_stack(st: &dyn Store) -> airlock_store::Result<BTreeMap<String, DriftState>> {
    Ok(st
        .drift_states()?
        .into_iter()
        .map(|d| (d.last.stack.clone(), d))
        .collect())
}

/// `POST /api/v1/stacks/{stack}/drift`: records a drift check.
pub async fn report(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: Upload = parse_body(&body)?;
    drop(body);
    let record = existing_stack(&state, &p, stack.as_str()).await?;
    let mut report: DriftReport =
        match (&req.plan_json_b64, &req.error) {
            (Some(plan), None) => {
                let json = base64::engine::general_purpose::STANDARD
                    .decode(plan)
                    .map_err(|e| bad(format!("plan_json_b64 is not valid base64: {e}")))?;
                drift::read(&json).map_err(|e| bad(format!("drift report refused: {e}")))?
            }
            (None, Some(error)) if !error.trim().is_empty() => DriftReport::unknown(error),
            _ => return Err(bad(
                "a drift report carries either plan_json_b64 (the refresh-only plan's JSON) or \
                 error (why there is none), not both and not neither",
            )),
        };
    for i in &mut report.instances {
        i.protected = i.critical
            || protection_reason(&i.resource_type, &i.address, &record.settings).is_some();
    }
    let status = report.status.as_str();
    let drifted = report.drifted_instances + report.outputs.len() as u64;
    let findings = report.findings.len() as u64;
    let text = serde_json::to_string(&report)
        .map_err(|e| ApiError::Internal(format!("drift report: {e}")))?;
    let id = tokens::random_id("drf_");
    let audit = NewAudit::ok(
        &p.display(),
        "drift.report",
        Some(stack.as_str()),
        json!({"id": id, "status": status, "serial": req.serial, "drifted": drifted, "findings": findings, "report_sha256": report_sha256(&text)}),
    );
    let new = NewDriftReport {
        id,
        status: status.to_owned(),
        serial: req.serial,
        drifted,
        findings,
        reported_by: p.display(),
        report: text,
    };
    let s = stack.to_string();
    let (meta, state_now) = store_call(&state, move |st| {
        let meta = st.add_drift_report(&s, new, audit)?;
        let now = states_by_stack(st)?.remove(&s);
        Ok((meta, now))
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "report": meta,
            "drift": status_json(state_now.as_ref()),
            "summary": summary(&report),
        })),
    ))
}

/// Counts, findings and outputs of a report, without its instance list.
fn summary(r: &DriftReport) -> Value {
    json!({
        "status": r.status,
        "terraform_version": r.terraform_version,
        "drifted_instances": r.drifted_instances,
        "by_type": r.by_type,
        "outputs": r.outputs,
        "findings": r.findings,
        "error": r.error,
        "notes": r.notes,
        "protected": r.instances.iter().filter(|i| i.protected).count(),
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    offset: Option<u32>,
    limit: Option<u32>,
}

impl PageQuery {
    fn bounds(&self, default: u32) -> (u32, u32) {
        (
            self.offset.unwrap_or(0),
            self.limit.unwrap_or(default).clamp(1, MAX_PAGE),
        )
    }
}

/// `GET /api/v1/stacks/{stack}/drift[?offset&limit]`: the status and the history, newest first.
pub async fn status(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    existing_stack(&state, &p, stack.as_str()).await?;
    let (offset, limit) = q.bounds(50);
    let s = stack.to_string();
    let (now, history) = store_call(&state, move |st| {
        Ok((
            states_by_stack(st)?.remove(&s),
            st.drift_reports(&s, offset, limit)?,
        ))
    })
    .await?;
    Ok(Json(json!({
        "stack": stack.as_str(),
        "drift": status_json(now.as_ref()),
        "history": history,
        "offset": offset,
        "limit": limit,
    })))
}

/// `GET /api/v1/stacks/{stack}/drift/{id}[?offset&limit]`: one report, its instances paged.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    Path((_, id)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    existing_stack(&state, &p, stack.as_str()).await?;
    let found = store_call(&state, move |st| st.drift_report(&id)).await?;
    let Some((meta, text)) = found.filter(|(m, _)| m.stack == stack.as_str()) else {
        return Err(ApiError::new(
            RefusalKind::NotFound,
            format!("no such drift report of stack {stack}"),
        ));
    };
    let mut report: DriftReport = serde_json::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("stored drift report: {e}")))?;
    let (offset, limit) = q.bounds(100);
    let listed = report.instances.len();
    let summary = summary(&report);
    let page: Vec<_> = report
        .instances
        .drain(..)
        .skip(offset as usize)
        .take(limit as usize)
        .collect();
    Ok(Json(json!({
        "report": meta,
        "summary": summary,
        "instances": page,
        "listed": listed,
        "offset": offset,
        "limit": limit,
        "age_ms": now_ms() - meta.created_at,
    })))
}
