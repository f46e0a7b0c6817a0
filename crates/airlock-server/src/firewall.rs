//! The state firewall (docs/design.md invariant 2): the checks every state write passes, run inside
//! the store's write transaction so that what is checked is what is written.
//!
//! Order matters for the messages users see: who may write, then the lock, then the content
//! (lineage, serial), then what the write would remove.

use std::sync::Arc;

use airlock_core::glob::address_matches;
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
    /// The run the writing token is bound to, if any.
    pub run_id: Option<&'a str>,
}

/// Why an instance of `resource_type` at `address` is protected on the server, if it is: the
/// built-in catalogue, the stack's `protect_types` / `protect_addresses`, and the `protect` of
/// the repository's airlock.hcl as of the last applied run (a resource address covers its
/// instances, a module address everything inside it). The plan gate uses the same
/// function, so it announces every removal the firewall will ask a grant for.
pub fn protection_reason(
    resource_type: &str,
    address: &str,
    settings: &StackSettings,
) -> Option<String> {
    if airlock_policy::catalogue::is_critical_type(resource_type) {
        return Some(format!("critical type {resource_type}"));
    }
    if settings.protect_types.iter().any(|t| t == resource_type) {
        return Some(format!("type {resource_type} is protected in this stack"));
    }
    if let Some(g) = settings
        .protect_addresses
        .iter()
        .find(|g| address_matches(g, address))
    {
        return Some(format!("address matches protected pattern {g}"));
    }
    // The repository's airlock.hcl `protect`, as of the stack's last applied run.
    if settings
        .repository_protect_types
        .iter()
        .any(|t| t == resource_type)
    {
        return Some(format!(
            "type {resource_type} is protected by the repository's airlock.hcl"
        ));
    }
    settings
        .repository_protect_addresses
        .iter()
        .find(|g| address_matches(g, address))
        .map(|g| format!("address matches {g}, protected by the repository's airlock.hcl"))
}

/// The largest serial step one write may take. Terraform adds 1 per persisted snapshot; the
/// bound keeps a hostile write from pushing the serial to 2^63 and bricking the stack (every
/// later write must be greater, and restores write current + 1).
pub const MAX_SERIAL_STEP: u64 = 1_000_000;
/// The largest serial a stack's first version may carry (state migrated from elsewhere keeps
/// its serial).
pub const MAX_FIRST_SERIAL: u64 = 1 << 40;

/// May `principal` write state of this stack outside a run?
pub fn may_write_directly(principal: &Principal, settings: &StackSettings) -> bool {
    principal.role.may_be_granted_direct_writes()
        && settings.direct_writes.contains(&principal.role)
}

/// A write under a plan's lock (`OperationTypePlan`) is refused: Terraform never writes state
/// under one, and a plan's lock whose token has died is taken over by the next locker
/// (`state_backend::is_dead_plan`), so it cannot be what protects a write.
pub fn refuse_under_plan_lock(lock: &airlock_store::LockRecord, stack: &str) -> Option<Refusal> {
    (lock.operation == airlock_core::lockinfo::OPERATION_PLAN).then(|| {
        refuse(
            RefusalKind::Conflict,
            format!("lock {} on {stack} was taken for a plan (OperationTypePlan), which writes no state; lock for the operation that writes", lock.id),
        )
    })
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
                Some(id) if id == lock.id && lock.owner_token == c.principal.token_id => {
                    if let Some(r) = refuse_under_plan_lock(lock, stack) {
                        return Err(r);
                    }
                }
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
    match ctx.current {
        None if c.summary.serial > MAX_FIRST_SERIAL => {
            return Err(refuse(
                RefusalKind::Conflict,
                format!(
                    "serial {} is above {MAX_FIRST_SERIAL}, the largest first serial of a stack",
                    c.summary.serial
                ),
            ));
        }
        None => {}
        Some(current) => {
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
            if c.summary.serial - current.serial > MAX_SERIAL_STEP {
                return Err(refuse(
                    RefusalKind::Conflict,
                    format!(
                        "serial {} jumps more than {MAX_SERIAL_STEP} past the stored serial {} of stack {stack}; Terraform adds 1 per write",
                        c.summary.serial, current.serial
                    ),
                ));
            }
            let old = current_summary(ctx)?;
            let removed = old.removed_in(c.summary);
            if c.run_authorized {
                removed_report = check_run_removals(ctx, c, &removed)?;
            } else {
                (removed_report, consumed) = check_direct_removals(ctx, &removed)?;
            }
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

/// A run's writes may drop only what its plan deletes, forgets or moves away from: exactly the
/// addresses of the run's grant (protected or not). The grant covers every write of the run
/// (Terraform persists intermediate snapshots during a long apply) and is never consumed; it
/// ends with the run (`finish` closes it, and the run-bound token stops writing).
fn check_run_removals(
    ctx: &WriteContext<'_>,
    c: &Candidate<'_>,
    removed: &[&Instance],
) -> Result<Vec<serde_json::Value>, Refusal> {
    let stack = &ctx.stack.name;
    let grant = ctx
        .grants
        .iter()
        .find(|g| g.run_id.is_some() && g.run_id.as_deref() == c.run_id);
    let mut report = Vec::new();
    let mut outside = Vec::new();
    let kept = c.summary.managed_addresses();
    for inst in removed {
        let protection = protection_reason(&inst.resource_type, &inst.address, &ctx.stack.settings);
        // An unprotected instance that keeps its address was replaced or re-identified (a
        // provider may change an id in an update): only protected objects count by identity.
        if protection.is_none() && kept.contains(inst.address.as_str()) {
            continue;
        }
        match grant.filter(|g| g.addresses.contains(&inst.address)) {
            Some(g) => report.push(json!({
                "address": inst.address,
                "protection": protection,
                "grant": g.id,
            })),
            None => outside.push(inst.address.as_str()),
        }
    }
    if outside.is_empty() {
        return Ok(report);
    }
    Err(refuse(
        RefusalKind::Forbidden,
        format!(
            "run {} may remove only the instances its reviewed plan deletes, forgets or moves, and this write removes {} other(s) from stack {stack}: {}",
            c.run_id.unwrap_or("?"),
            outside.len(),
            list(&outside)
        ),
    ))
}

/// A write outside a run may drop a protected instance only under a grant made for it by an
/// approver (`airlock stack allow-removal`); such a grant is consumed by the write. Grants made
/// for runs are never usable here.
#[allow(clippy::type_complexity)]
fn check_direct_removals(
    ctx: &WriteContext<'_>,
    removed: &[&Instance],
) -> Result<(Vec<serde_json::Value>, Vec<String>), Refusal> {
    let stack = &ctx.stack.name;
    let (mut report, mut consumed, mut uncovered) = (Vec::new(), Vec::new(), Vec::new());
    for inst in removed {
        let Some(reason) =
            protection_reason(&inst.resource_type, &inst.address, &ctx.stack.settings)
        else {
            continue;
        };
        let grant = ctx
            .grants
            .iter()
            // Grant addresses are literal: `*` and `?` are legal in for_each keys.
            .find(|g| g.run_id.is_none() && g.addresses.contains(&inst.address));
        match grant {
            Some(g) => {
                if !consumed.contains(&g.id) {
                    consumed.push(g.id.clone());
                }
                report.push(json!({"address": inst.address, "protection": reason, "grant": g.id}));
            }
            None => uncovered.push(format!("{} ({reason})", inst.address)),
        }
    }
    if uncovered.is_empty() {
        return Ok((report, consumed));
    }
    let shown: Vec<&str> = uncovered.iter().map(String::as_str).collect();
    Err(refuse(
        RefusalKind::Forbidden,
        format!(
            "it would remove {} protected instance(s) from stack {stack} without a removal grant: {}. Removing protected instances needs an approved run, or `airlock stack allow-removal {stack} --address ADDR --ttl 1h --reason TEXT` by an approver",
            uncovered.len(),
            list(&shown)
        ),
    ))
}

/// At most 20 items, then "and N more".
fn list(items: &[&str]) -> String {
    let shown: Vec<&str> = items.iter().take(20).copied().collect();
    let more = items.len().saturating_sub(shown.len());
    format!(
        "{}{}",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}
