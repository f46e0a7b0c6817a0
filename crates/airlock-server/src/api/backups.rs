//! Backup verifications: `airlock backup verify --record` reports a verify run here, and the
//! server keeps it as a `backup.verify` audit event (append-only, hash-chained, with who
//! reported it), so `airlock doctor --server` can say when a backup last verified and how old
//! the newest verified export is. Export and verify work on the database and the files
//! directly (they must work with no server), so a report is the only way the server learns of
//! them; it is tied to this server by the backup's audit head, which must be this server's own
//! event.

use std::sync::Arc;

use airlock_core::audit::GENESIS;
use airlock_core::refusal::RefusalKind;
use airlock_core::time::parse_rfc3339_ms;
use airlock_store::NewAudit;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::store_call;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The audit action of a recorded verify run.
pub const VERIFY_ACTION: &str = "backup.verify";

/// What `airlock backup verify` found, as it reports it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Whether the backup verified.
    ok: bool,
    /// SHA-256 of the backup's manifest.json.
    manifest_sha256: String,
    /// When the backup was exported (the manifest's `created_at`, RFC 3339).
    exported_at: String,
    /// The manifest's audit event count and head.
    audit_events: u64,
    audit_head: String,
    /// How many problems verify found.
    problems: u64,
    /// Stacks and versions in the backup.
    stacks: u64,
    versions: u64,
}

fn hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `POST /api/v1/backups/verifications`: records one verify run (all-stacks tokens only: a
/// backup holds every stack). Refused when the backup's audit head is not this server's event
/// of that sequence number (a backup of another server, or altered).
pub async fn record(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Json(v): Json<Verification>,
) -> ApiResult<Json<Value>> {
    if !p.stacks.is_empty() {
        return Err(ApiError::new(
            RefusalKind::Forbidden,
            format!(
                "token {} is scoped to stacks {:?}; a backup holds every stack, so only an \
                 all-stacks token may record its verification",
                p.name, p.stacks
            ),
        ));
    }
    let bad = |m: &str| Err(ApiError::new(RefusalKind::BadRequest, m.to_owned()));
    if !hex64(&v.manifest_sha256) || !hex64(&v.audit_head) {
        return bad("manifest_sha256 and audit_head must be 64 hex digits");
    }
    let Ok(exported_ms) = parse_rfc3339_ms(&v.exported_at) else {
        return bad("exported_at must be an RFC 3339 time");
    };
    let (seq, head) = (v.audit_events, v.audit_head.to_ascii_lowercase());
    let Ok(after) = i64::try_from(seq.saturating_sub(1)) else {
        return bad("audit_events is out of range");
    };
    let event = if seq == 0 {
        None
    } else {
        store_call(&state, move |st| st.audit_events(after, 1))
            .await?
            .into_iter()
            .next()
    };
    let ours = match &event {
        None => seq == 0 && head == GENESIS,
        Some(e) => e.seq == after + 1 && e.hash == head,
    };
    if !ours {
        return Err(ApiError::new(
            RefusalKind::Conflict,
            format!(
                "the backup's audit head (event {seq}, {head}) is not this server's event {seq}: \
                 it is a backup of another server, or it was altered; nothing recorded"
            ),
        ));
    }
    let detail = json!({
        "ok": v.ok,
        "manifest_sha256": v.manifest_sha256.to_ascii_lowercase(),
        "exported_at": exported_ms,
        "audit_events": seq,
        "audit_head": head,
        "problems": v.problems,
        "stacks": v.stacks,
        "versions": v.versions,
    });
    let audit = NewAudit::ok(&p.display(), VERIFY_ACTION, None, detail);
    let record = store_call(&state, move |st| st.append_audit(audit)).await?;
    Ok(Json(json!({ "recorded": record.seq })))
}
