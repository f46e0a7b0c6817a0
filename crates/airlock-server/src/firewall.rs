//! The state firewall (DESIGN.md invariant 2): the checks every state write passes, run inside
//! the store's write transaction so that what is checked is what is written.
//!
//! Order matters for the messages users see: who may write, then the lock, then the content
//! (lineage, serial), then what the write would remove.

use std::sync::Arc;

use airlock_core::glob::glob_match;
use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::state::{Instance, StateSummary};
use airlock_store::{NewAudit, StackSettings, WriteContext, WriteDecision};
use serde_json::json;

use crate::auth::Principal;

/// How the write reached the server.
pub enum WriteKind<'a> {
    /// Terraform's POST/PUT, with the `?ID=` it sent.
    Backend {
        /// The `?ID=` Terraform sent.
        lock_id: Option<&'a str>,
    },
    /// `airlock state restore`: a server-side write made while nobody else holds the lock.
    Restore {
        /// The serial being restored.
        from_serial: u64,
    },
}

/// One write to judge.
pub struct Candidate<'a> {
    /// Who writes.
    pub principal: &'a Principal,
    /// How.
    pub kind: WriteKind<'a>,
    /// The parsed body.
    pub summary: &'a StateSummary,
    /// SHA-256 of the body, hex.
    pub sha256: &'a str,
    /// Size of the body.
    pub size: usize,
    /// The write belongs to a run that is applying (checked by the caller for run-bound tokens).
    pub run_authorized: bool,
}

/// Why an instance is protected, if it is.
pub fn protection_reason(instance: &Instance, settings: &StackSettings) -> Option<String> {
    if airlock_policy::catalogue::is_critical_type(&instance.resource_type) {
        return Some(format!("critical type {}", instance.resource_type));
    }
    if settings.protect_types.contains(&instance.resource_type) {
        return Some(format!(
            "type {} is protected in this stack",
            instance.resource_type
        ));
    }
    settings
        .protect_addresses
        .iter()
        .find(|g| glob_match(g, &instance.address))
        .map(|g| format!("address matches protected pattern {g}"))
}

/// May `principal` write state of this stack outside a run?
pub fn may_write_directly(principal: &Principal, settings: &StackSettings) -> bool {
    principal.role.may_be_granted_direct_writes()
        && settings.direct_writes.contains(&principal.role)
}

fn refuse(kind: RefusalKind, message: String) -> Refusal {
    Refusal::new(kind, format!("state write refused: {message}"))
}

/// Judges a write. `current_summary` parses (or fetches from cache) the current version.
pub fn check_write(
    ctx: &WriteContext<'_>,
    c: &Candidate<'_>,
    current_summary: &dyn Fn(&WriteContext<'_>) -> Result<Arc<StateSummary>, Refusal>,
) -> Result<WriteDecision, Refusal> {
    let stack = &ctx.stack.name;
    match c.kind {
        WriteKind::Backend { lock_id } => {
            if !c.run_authorized && !may_write_directly(c.principal, &ctx.stack.settings) {
                let allowed: Vec<&str> = ctx
                    .stack
                    .settings
                    .direct_writes
                    .iter()
                    .map(|r| r.as_str())
                    .collect();
                return Err(refuse(
                    RefusalKind::Forbidden,
                    format!(
                        "{} tokens may not write state of stack {stack} directly (direct writes allowed to: {}); propose the change with `airlock plan` for review",
                        c.principal.role,
                        if allowed.is_empty() { "nobody".to_owned() } else { allowed.join(", ") }
                    ),
                ));
            }
            let Some(lock) = ctx.lock else {
                return Err(refuse(
                    RefusalKind::Conflict,
                    format!("stack {stack} is not locked; writes must hold the lock (configure lock_address and unlock_address: `airlock backend-config {stack}` prints them)"),
                ));
            };
            match lock_id {
                Some(id) if id == lock.id && lock.owner_token == c.principal.token_id => {}
                Some(id) if id == lock.id => {
                    return Err(refuse(
                        RefusalKind::Locked,
                        format!(
                            "the lock on {stack} belongs to {}, not to this token",
                            lock.owner
                        ),
                    ));
                }
                _ => {
                    return Err(refuse(
                        RefusalKind::Locked,
                        format!("stack {stack} is locked by {} (lock {}), and this write does not carry that lock ID", lock.owner, lock.id),
                    ));
                }
            }
        }
        WriteKind::Restore { .. } => {
            if let Some(lock) = ctx.lock.filter(|l| l.owner_token != c.principal.token_id) {
                return Err(refuse(
                    RefusalKind::Locked,
                    format!(
                        "stack {stack} is locked by {} (lock {}, {}); restore when it is released",
                        lock.owner, lock.id, lock.operation
                    ),
                ));
            }
        }
    }

    if let Some(lineage) = &ctx.stack.lineage {
        if *lineage != c.summary.lineage {
            return Err(refuse(
                RefusalKind::Conflict,
                format!(
                    "lineage {} does not match stack {stack}'s lineage {lineage}: this state belongs to another stack or was created anew, and would replace this stack's history; pull the current state (`terraform state pull`) and work from it",
                    c.summary.lineage
                ),
            ));
        }
    }

    let mut removed_report = Vec::new();
    let mut consumed = Vec::new();
    if let Some(current) = ctx.current {
        if current.sha256 == c.sha256 {
            return Ok(WriteDecision::Unchanged);
        }
        if c.summary.serial <= current.serial {
            return Err(refuse(
                RefusalKind::Conflict,
                format!(
                    "serial {} is not greater than the stored serial {} of stack {stack}; pull the latest state and re-plan",
                    c.summary.serial, current.serial
                ),
            ));
        }
        let old = current_summary(ctx)?;
        let mut uncovered = Vec::new();
        for inst in old.removed_in(c.summary) {
            let Some(reason) = protection_reason(inst, &ctx.stack.settings) else {
                continue;
            };
            let grant = ctx
                .grants
                .iter()
                // Grant addresses are literal: `*` and `?` are legal in for_each keys.
                .find(|g| g.addresses.contains(&inst.address));
            match grant {
                Some(g) => {
                    if !consumed.contains(&g.id) {
                        consumed.push(g.id.clone());
                    }
                    removed_report.push(
                        json!({"address": inst.address, "protection": reason, "grant": g.id}),
                    );
                }
                None => uncovered.push(format!("{} ({reason})", inst.address)),
            }
        }
        if !uncovered.is_empty() {
            let shown: Vec<&String> = uncovered.iter().take(20).collect();
            let more = uncovered.len().saturating_sub(shown.len());
            return Err(refuse(
                RefusalKind::Forbidden,
                format!(
                    "it would remove {} protected instance(s) from stack {stack} without a removal grant: {}{}. Removing protected instances needs an approved run, or `airlock stack allow-removal {stack} --address ADDR --ttl 1h --reason TEXT` by an approver",
                    uncovered.len(),
                    shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    if more > 0 { format!(" and {more} more") } else { String::new() }
                ),
            ));
        }
    }

    let (action, extra) = match c.kind {
        WriteKind::Backend { lock_id } => ("state.write", json!({ "lock_id": lock_id })),
        WriteKind::Restore { from_serial } => {
            ("state.restore", json!({ "restored_from": from_serial }))
        }
    };
    let detail = json!({
        "serial": c.summary.serial,
        "sha256": c.sha256,
        "size": c.size,
        "removed_protected": removed_report,
        "grants_consumed": consumed,
        "via": extra,
    });
    Ok(WriteDecision::Store {
        consume_grants: consumed,
        audit: NewAudit::ok(&c.principal.display(), action, Some(stack), detail),
    })
}
