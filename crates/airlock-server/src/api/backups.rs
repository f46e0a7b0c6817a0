//! Backup verifications: `airlock backup verify --record` reports a verify run here, and the
//! server keeps it as a `backup.verify` audit event (append-only, hash-chained, with who
//! reported it), so `airlock doctor --server` can say when a backup last verified and how old
//! the newest verified export is. Export and verify work on the database and the files
//! directly (they must work with no server), so a report is the only way the server learns of
//! them; it is tied to this server by the backup's audit head, which must be this server's own
//! event.
//!
//! The server checks what it can from its own audit log and clock: the head is its event at
//! the reported position; the export time is not in the future (beyond
//! [`MAX_CLOCK_SKEW_MS`]), not before the head event (beyond that skew), and before the event
//! that follows the head (a backup exported at T holds every event before T); `ok` agrees with
//! the problem count. The rest (that the files exist and verify) is what the client reports.

use std::sync::Arc;

use airlock_core::audit::{AuditRecord, GENESIS, SEAL_ACTION};
use airlock_core::refusal::RefusalKind;
use airlock_core::time::{parse_rfc3339_ms, rfc3339};
use airlock_store::{AuditFilter, NewAudit};
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

/// How far the export host's clock may be ahead of the server's (5 minutes): an `exported_at`
/// later than now plus this, or earlier than the head event minus this, is refused.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

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
    /// The head's global position (`seq`); the event count when absent (an older client). On
    /// PostgreSQL positions may have gaps, so the two differ.
    #[serde(default)]
    audit_head_seq: Option<u64>,
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
    if v.ok != (v.problems == 0) {
        return bad("ok must be true exactly when problems is 0");
    }
    let now = airlock_store::now_ms();
    if exported_ms > now + MAX_CLOCK_SKEW_MS {
        return bad(&format!(
            "exported_at {} is in the future (the server's time is {}, clock skew allowed {} s)",
            v.exported_at,
            rfc3339(now),
            MAX_CLOCK_SKEW_MS / 1000
        ));
    }
    let head = v.audit_head.to_ascii_lowercase();
    let seq = v.audit_head_seq.unwrap_or(v.audit_events);
    let (Ok(head_seq), Ok(after)) = (i64::try_from(seq), i64::try_from(seq.saturating_sub(1)))
    else {
        return bad("audit_head_seq is out of range");
    };
    // The head event (none for an empty backup) and the event after it, if any; and how many
    // events this server has up to the head, which is what a backup ending there holds.
    let (events, count) = store_call(&state, move |st| {
        let events = st.audit_events(after, 2)?;
        // Every event, seals included (a backup holds them; a filter without an action leaves
        // them out, as listings do): the other events, then the seals.
        let others = AuditFilter {
            before: Some(head_seq.saturating_add(1)),
            ..AuditFilter::default()
        };
        let seals = AuditFilter {
            action: Some(SEAL_ACTION.to_owned()),
            ..others.clone()
        };
        Ok((events, st.audit_count(&others)? + st.audit_count(&seals)?))
    })
    .await?;
    let mut events = events.into_iter();
    let (event, next) = if seq == 0 {
        (None, events.next())
    } else {
        (events.next(), events.next())
    };
    let ours = match &event {
        None => seq == 0 && head == GENESIS,
        Some(e) => e.seq == head_seq && e.hash == head,
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
    if count != v.audit_events {
        return Err(ApiError::new(
            RefusalKind::Conflict,
            format!(
                "the backup claims {} audit events up to its head (event {seq}), but this \
                 server has {count} events up to it: nothing recorded",
                v.audit_events
            ),
        ));
    }
    let at = |e: &AuditRecord| parse_rfc3339_ms(&e.at).unwrap_or(i64::MAX);
    if let Some(e) = event
        .as_ref()
        .filter(|e| exported_ms + MAX_CLOCK_SKEW_MS < at(e))
    {
        return Err(ApiError::new(
            RefusalKind::Conflict,
            format!(
                "exported_at {} is before the backup's own head event {seq} ({}): the export \
                 time is false; nothing recorded",
                v.exported_at, e.at
            ),
        ));
    }
    if let Some(n) = next.as_ref().filter(|n| at(n) <= exported_ms) {
        return Err(ApiError::new(
            RefusalKind::Conflict,
            format!(
                "a backup exported at {} holds every event before then, but this one ends at \
                 event {seq} and this server's event {} is at {}: the export time or the head is \
                 false; nothing recorded",
                v.exported_at, n.seq, n.at
            ),
        ));
    }
    let detail = json!({
        "ok": v.ok,
        "manifest_sha256": v.manifest_sha256.to_ascii_lowercase(),
        "exported_at": exported_ms,
        "audit_events": seq,
        "audit_head": head,
        "audit_head_seq": seq,
        "problems": v.problems,
        "stacks": v.stacks,
        "versions": v.versions,
    });
    let audit = NewAudit::ok(&p.display(), VERIFY_ACTION, None, detail);
    let record = store_call(&state, move |st| st.append_audit(audit)).await?;
    Ok(Json(json!({ "recorded": record.seq })))
}
