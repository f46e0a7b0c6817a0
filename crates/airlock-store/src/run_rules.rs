//! The governed-run state machine as pure functions: each transition takes the run as the
//! store's transaction sees it (plus the stack, its current version, who asks, and the time)
//! and returns the new record or a typed refusal. No I/O: the handlers load, call one of these
//! inside `Store::update_run`, and store; the rules are table-tested below.
//!
//! **Invariant (docs/design.md 3):** [`start_apply`] moves a run to `applying` only if the caller's
//! role may apply on the stack, the run is approved by `required_approvals` distinct users other
//! than its author's user for its exact plan hash, it has not expired, the stack is still at the
//! planned (lineage, serial), the stored plan hashes to the approved one, and the checkout's
//! fingerprint equals the reviewed one.

use airlock_core::inputs::{self, InputFile};
use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::time::rfc3339;
use airlock_core::Role;
use serde_json::{json, Value};

use crate::{
    Approval, NewAudit, Rejection, RunRecord, RunRefusal, RunStatus, StackRecord, VersionMeta,
};

/// How long a planned run stays applicable.
pub const RUN_TTL_MS: i64 = 7 * 86_400_000;

/// How often a server closes the open runs past their expiry that nobody touched
/// ([`Store::expire_overdue_runs`](crate::Store::expire_overdue_runs)); any request acting on
/// such a run closes it at once anyway.
pub const EXPIRY_SWEEP_MS: i64 = 10 * 60_000;

/// How many candidate runs an expiry sweep reads at a time.
pub const SWEPT_RUNS: u32 = 1000;

/// Whether `run` is still open but past its expiry: what approve and apply refuse (and record
/// as `expired`), and what the sweep closes.
pub fn is_overdue(run: &RunRecord, now: i64) -> bool {
    run.status.is_open() && now > run.expires_at
}

/// How long an applying run outlives its applier's last report, unless the server is told
/// otherwise (`airlock server --apply-idle-timeout-secs`): then the run is abandoned
/// ([`is_abandoned`]), and its run-bound token and removal grant have expired with it.
pub const APPLY_IDLE_MS: i64 = 60 * 60_000;

/// The longest an apply may take: an applying run is never kept alive past this after its start,
/// so a run-bound token lives at most this long, whoever reports for it.
pub const MAX_APPLY_MS: i64 = 24 * 3_600_000;

/// How long run-bound tokens lived before applies reported (records without
/// `apply_alive_until`): their run counts as abandoned once that has passed.
const APPLY_TOKEN_MS_BEFORE_HEARTBEATS: i64 = 3_600_000;

/// When an applying run is abandoned unless its applier reports before.
pub fn alive_until(run: &RunRecord) -> Option<i64> {
    run.apply_alive_until.or(run
        .apply_started_at
        .map(|t| t.saturating_add(APPLY_TOKEN_MS_BEFORE_HEARTBEATS)))
}

/// Whether `run` applies but its applier has not reported in time: it may have died with
/// Terraform midway, and its run-bound token has expired, so the run can change nothing more.
/// The sweep closes it as `failed` ([`Refused::Abandoned`]).
pub fn is_abandoned(run: &RunRecord, now: i64) -> bool {
    run.status == RunStatus::Applying && alive_until(run).is_some_and(|t| now > t)
}

/// The latest deadline an applying run may have: [`MAX_APPLY_MS`] after its start, and never
/// past `limit` (the expiry of the token that started the apply, which its run-bound token
/// cannot outlive).
fn deadline_cap(run: &RunRecord, limit: Option<i64>, now: i64) -> i64 {
    let cap = run
        .apply_started_at
        .unwrap_or(now)
        .saturating_add(MAX_APPLY_MS);
    limit.map_or(cap, |l| l.min(cap))
}

/// `heartbeat`: the run's own run-bound token reports, at `now`, that its apply goes on. Once a
/// third of the idle time has passed since the run's deadline last moved, it moves to `idle_ms`
/// on (its token's and grant's expiry with it: the store sets them with the record), never past
/// [`deadline_cap`]; `None` when no move is due, so an applier may report often and the run's
/// record and audit log grow only every `idle_ms / 3`.
pub fn keep_alive(
    run: &RunRecord,
    actor: &Actor<'_>,
    idle_ms: i64,
    limit: Option<i64>,
    now: i64,
) -> Result<Option<Transition>, Refused> {
    if actor.run_id != Some(run.id.as_str()) || run.apply_token.as_deref() != Some(actor.token_id) {
        return Err(Refused::NotTheRunToken);
    }
    require(run, run.status == RunStatus::Applying, "applying")?;
    if is_abandoned(run, now) {
        return Err(Refused::Abandoned);
    }
    let current = alive_until(run).unwrap_or(now);
    let Some(until) = renewed(current, idle_ms, deadline_cap(run, limit, now), now) else {
        return Ok(None);
    };
    let mut new = run.clone();
    new.apply_alive_until = Some(until);
    new.updated_at = now;
    Ok(Some(Transition {
        run: new,
        action: "run.apply_alive".into(),
        detail: json!({"run": run.id, "alive_until": until, "apply_token": run.apply_token}),
    }))
}

/// The one renewal rule of a phase whose client reports (an apply's deadline, a plan-phase
/// token's expiry): at `now`, a deadline at `current` moves to `idle_ms` on, never past `cap`,
/// once a third of `idle_ms` has passed since it last moved or when that reaches the cap;
/// `None` when no move is due, so a client may report often and the store and audit log grow
/// only every `idle_ms / 3`.
pub fn renewed(current: i64, idle_ms: i64, cap: i64, now: i64) -> Option<i64> {
    let until = now.saturating_add(idle_ms).min(cap);
    let due = until > current && (until - current >= idle_ms / 3 || until >= cap);
    due.then_some(until)
}

/// Who closes overdue runs in the audit log.
pub const EXPIRY_SWEEPER: Actor<'static> = Actor {
    token_id: "",
    user: "",
    display: "system (run expiry)",
    role: Role::Admin,
    run_id: None,
    job_ref: None,
};

/// Who asks for a transition.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// Token id.
    pub token_id: &'a str,
    /// The token's user: the identity that authors and approves.
    pub user: &'a str,
    /// `name (tok_…)`, as audit events record it.
    pub display: &'a str,
    /// The token's role.
    pub role: Role,
    /// The run the token is bound to, if it is a run-bound apply token.
    pub run_id: Option<&'a str>,
    /// The verified git ref of the forge login the token comes from (`TokenRecord::job_ref`).
    pub job_ref: Option<&'a str>,
}

/// An accepted transition: the new record and the audit event that says what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The run after the transition.
    pub run: RunRecord,
    /// Audit action (`run.approve`, ...).
    pub action: String,
    /// Audit detail.
    pub detail: Value,
}

/// Why a transition is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The run is not in a status the transition starts from (`wanted` says which, in words).
    WrongStatus {
        /// The run's status.
        status: RunStatus,
        /// What the transition needs, e.g. "waiting for approval".
        wanted: &'static str,
    },
    /// The plan gate denied the run: a deny cannot be approved.
    Denied,
    /// The approver is the run's author (same user, or the very token that planned it).
    ApproverIsAuthor,
    /// The approver's user has the forge login the planner claims wrote or pushed the change
    /// request the run was planned for.
    ApproverWroteTheChange {
        /// The approver's forge login among the run's `change_authors`.
        login: String,
    },
    /// A login the planner claims wrote or pushed the change request belongs to no user, so
    /// airlock cannot tell whether an approver is its author: nobody approves until an admin
    /// gives the login to its user.
    UnknownChangeAuthor {
        /// The logins that belong to no user.
        logins: Vec<String>,
    },
    /// The approver's user has approved already.
    AlreadyApproved,
    /// The approver reviewed another plan than the run's (the page or command it approved from
    /// showed a plan hash that is not the run's).
    PlanHashDiffers {
        /// The plan hash the approver saw.
        seen: String,
    },
    /// The run destroys instances and the approver did not confirm their exact number.
    ConfirmDestroy {
        /// Instances the plan destroys.
        destroys: u64,
        /// What the approver confirmed.
        given: Option<u64>,
    },
    /// The run is older than [`RUN_TTL_MS`]; it becomes `expired`.
    Expired,
    /// The stack changed since the plan; the run becomes `superseded`.
    Stale {
        /// Serial of the stack now.
        current_serial: Option<u64>,
    },
    /// Not enough valid approvals.
    TooFewApprovals {
        /// Distinct users other than the author who approved this plan.
        valid: usize,
    },
    /// An approved run has too few approvals now: some were made with tokens revoked since,
    /// or the stack's settings were raised since; the run waits for approval again.
    NoLongerApproved {
        /// The approvals that no longer count (approver token name and id).
        revoked: Vec<String>,
        /// Valid approvals without them.
        valid: usize,
        /// Approvals the run needs now ([`required_approvals`]).
        required: usize,
    },
    /// The stack takes applies from other roles only.
    RoleMayNotApply {
        /// The caller's role.
        role: Role,
        /// The roles the stack takes applies from.
        allowed: Vec<Role>,
    },
    /// The stored plan artifact does not hash to the approved plan (or is missing).
    PlanArtifactDiffers,
    /// The applying checkout's inputs differ from the reviewed ones.
    InputsDiffer {
        /// The checkout's fingerprint.
        fingerprint: String,
        /// Files that differ (when the checkout sent its inputs).
        files: Vec<String>,
    },
    /// Only the run's author may withdraw it.
    NotTheAuthor,
    /// Only the principal applying the run may finish it.
    NotTheApplier,
    /// Only the run's own run-bound token may record its plan check or report for its apply.
    NotTheRunToken,
    /// The plan check names another plan than the run's.
    CheckedAnotherPlan {
        /// The plan hash the check was made of.
        seen: String,
    },
    /// The run's plan check is recorded already.
    PlanCheckedAlready,
    /// The stack protects, since the run was judged, instances the run removes; the run
    /// becomes `superseded`.
    ProtectedSince {
        /// The removed addresses protected now.
        addresses: Vec<String>,
    },
    /// The run applies but its applier did not report in time ([`is_abandoned`]); the run
    /// becomes `failed`.
    Abandoned,
}

impl Refused {
    /// The kind of refusal (and so the HTTP status and exit code).
    pub fn kind(&self) -> RefusalKind {
        match self {
            Refused::Denied
            | Refused::ApproverIsAuthor
            | Refused::ApproverWroteTheChange { .. }
            | Refused::UnknownChangeAuthor { .. }
            | Refused::TooFewApprovals { .. }
            | Refused::NoLongerApproved { .. }
            | Refused::RoleMayNotApply { .. }
            | Refused::NotTheAuthor
            | Refused::NotTheApplier
            | Refused::NotTheRunToken => RefusalKind::Forbidden,
            Refused::ConfirmDestroy { .. } => RefusalKind::BadRequest,
            Refused::PlanHashDiffers { .. } => RefusalKind::Conflict,
            Refused::WrongStatus { .. }
            | Refused::AlreadyApproved
            | Refused::Expired
            | Refused::Stale { .. }
            | Refused::PlanArtifactDiffers
            | Refused::InputsDiffer { .. }
            | Refused::CheckedAnotherPlan { .. }
            | Refused::PlanCheckedAlready
            | Refused::ProtectedSince { .. }
            | Refused::Abandoned => RefusalKind::Conflict,
        }
    }

    /// What to tell the caller, with the next step.
    pub fn message(&self, run: &RunRecord, actor: &Actor<'_>) -> String {
        let id = &run.id;
        match self {
            Refused::WrongStatus { status, wanted } => {
                format!("run {id} is {}, not {wanted}", status.as_str())
            }
            Refused::Denied => format!("approval refused: the plan gate denied run {id}; a deny cannot be approved: change the code (e.g. an allow_destroy declaration, itself reviewed) and plan again"),
            Refused::ApproverIsAuthor => format!("approval refused: user {} planned run {id} and cannot approve it; another approver must", actor.user),
            Refused::ApproverWroteTheChange { login } => format!(
                "approval refused: run {id} was planned for {}, whose author or pusher is {login}, a forge login of user {}; the author of a change cannot approve it; another approver must",
                change_request_words(run),
                actor.user
            ),
            Refused::UnknownChangeAuthor { logins } => format!(
                "approval refused: run {id} was planned for {}, written or pushed by {}, which belong(s) to no airlock user, so airlock cannot tell whether you wrote it; an admin must give each login to its user first (airlock user add-forge-login USER LOGIN)",
                change_request_words(run),
                logins.join(", ")
            ),
            Refused::AlreadyApproved => format!("user {} has already approved run {id}; another approver must", actor.user),
            Refused::PlanHashDiffers { seen } => format!(
                "approval refused: you reviewed plan SHA-256 {} but run {id}'s plan is {}; reload the run and review it again",
                printable_hash(seen),
                run.plan_sha256
            ),
            Refused::ConfirmDestroy { destroys, .. } => format!(
                "run {id} destroys {destroys} instance(s) ({}); confirm with --confirm-destroy {destroys}",
                run.destroys.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ),
            Refused::Expired => format!("run {id} expired at {}; plan again", rfc3339(run.expires_at)),
            Refused::Stale { current_serial } => format!(
                "run {id} was planned against {} but stack {} is now at {}: the plan is stale; a re-plan and a new review are needed",
                serial_words(run.planned_serial),
                run.stack,
                serial_words(*current_serial)
            ),
            Refused::TooFewApprovals { valid } => format!(
                "apply refused: run {id} has {valid} valid approval(s) of its plan by distinct users other than its author; {} required",
                run.required_approvals
            ),
            Refused::NoLongerApproved {
                revoked,
                valid,
                required,
            } => format!(
                "apply refused: run {id} has {valid} valid approval(s) now{} and stack {} requires {required}: the run waits for approval again (another approver must approve it)",
                if revoked.is_empty() {
                    String::new()
                } else {
                    format!(" (those of {} were made with a token revoked since)", revoked.join(", "))
                },
                run.stack
            ),
            Refused::RoleMayNotApply { role, allowed } => format!(
                "apply refused: stack {} takes applies from {} tokens only, not from {} {role} token",
                run.stack,
                allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "),
                article(role.as_str()),
            ),
            Refused::PlanArtifactDiffers => format!("apply refused: the stored plan artifact of run {id} does not match the approved plan (SHA-256 {}); it may have been tampered with", run.plan_sha256),
            Refused::InputsDiffer { fingerprint, files } => {
                // terraform init writes a lock file when none is committed: a fresh checkout
                // lacks the one the planner's had, and planning again would not change that.
                let lock = match files.iter().any(|f| f.ends_with(".terraform.lock.hcl (removed)")) {
                    true => "; this checkout lacks the .terraform.lock.hcl the run was planned with (terraform init writes one when none is committed): commit the lock file, then apply, or plan again",
                    false => "",
                };
                let files = if files.is_empty() {
                    String::new()
                } else {
                    format!("; files that differ: {}", files.iter().take(20).cloned().collect::<Vec<_>>().join(", "))
                };
                format!("apply refused: this checkout's inputs (fingerprint {fingerprint}) differ from the reviewed run's ({}){files}{lock}; the merged code, airlock.hcl or policies are not what was reviewed: plan again", run.fingerprint)
            }
            Refused::NotTheAuthor => format!("withdraw refused: only the author of run {id} ({}) may withdraw it; an approver may reject it instead", run.author),
            Refused::NotTheApplier => format!("only the principal applying run {id} may finish it"),
            Refused::NotTheRunToken => format!("refused: only run {id}'s own run-bound token (the one `airlock apply` received when the apply started) may record its plan check or report for its apply"),
            Refused::CheckedAnotherPlan { seen } => format!(
                "plan check refused: it was made of plan SHA-256 {} but run {id}'s approved plan is {}",
                printable_hash(seen),
                run.plan_sha256
            ),
            Refused::PlanCheckedAlready => format!("plan check refused: run {id}'s plan check is recorded already"),
            Refused::ProtectedSince { addresses } => format!(
                "apply refused: run {id} removes {}, which stack {} protects since the run was judged, so its approvers did not see the removal as one of a protected instance: plan again for a new review",
                addresses.iter().take(20).cloned().collect::<Vec<_>>().join(", "),
                run.stack
            ),
            Refused::Abandoned => format!(
                "run {id} was abandoned: its deadline ({}) passed, because its applier (`airlock apply`) stopped reporting or the apply reached the longest it may take (24 hours after its start, and never past the expiry of the token that started it), so its run-bound token has expired; Terraform may have stopped midway and changed resources that the stack's state does not record, and its state lock may still be held: read the run's log and check the resources, then plan again (`terraform force-unlock LOCK_ID` if the stack stays locked)",
                alive_until(run).map_or_else(|| "unknown".to_owned(), rfc3339)
            ),
        }
    }

    /// The status the run moves to although the request is refused: a run found expired or
    /// stale is marked so, whoever asked, and an approved run whose approvals were revoked
    /// waits for approval again.
    pub fn records(&self) -> Option<RunStatus> {
        match self {
            Refused::Expired => Some(RunStatus::Expired),
            Refused::Stale { .. } | Refused::ProtectedSince { .. } => Some(RunStatus::Superseded),
            Refused::NoLongerApproved { .. } => Some(RunStatus::NeedsApproval),
            Refused::Abandoned => Some(RunStatus::Failed),
            _ => None,
        }
    }
}

/// A client-supplied hash as it may appear in a message: hex only, bounded.
fn printable_hash(seen: &str) -> String {
    if seen.len() <= 64 && seen.bytes().all(|b| b.is_ascii_hexdigit()) {
        seen.to_owned()
    } else {
        "(not a SHA-256)".to_owned()
    }
}

/// "change request #7", as the planner claimed it.
fn change_request_words(run: &RunRecord) -> String {
    run.change_request.map_or("a change request".into(), |n| {
        format!("change request #{n}")
    })
}

/// "serial 4", or "an empty stack".
fn serial_words(serial: Option<u64>) -> String {
    serial.map_or("an empty stack".into(), |s| format!("serial {s}"))
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Refuses a run that is not in a status the transition starts from (`ok` false); `wanted` says
/// which, in words.
fn require(run: &RunRecord, ok: bool, wanted: &'static str) -> Result<(), Refused> {
    if ok {
        Ok(())
    } else {
        Err(Refused::WrongStatus {
            status: run.status,
            wanted,
        })
    }
}

/// Translates a verdict into what `Store::update_run` records: the new run and its audit event,
/// or the refusal (with the expired/superseded record it still writes).
pub fn decided(
    verdict: Result<Transition, Refused>,
    run: &RunRecord,
    actor: &Actor<'_>,
    now: i64,
) -> Result<(RunRecord, NewAudit), RunRefusal> {
    match verdict {
        Ok(t) => {
            let audit = NewAudit::ok(actor.display, &t.action, Some(&run.stack), t.detail);
            Ok((t.run, audit))
        }
        Err(r) => {
            let message = r.message(run, actor);
            let record = r.records().map(|status| {
                let t = closed(run, status, message.clone(), now);
                let audit = NewAudit::ok(actor.display, &t.action, Some(&run.stack), t.detail);
                Box::new((t.run, audit))
            });
            Err(RunRefusal {
                refusal: Refusal::new(r.kind(), message),
                record,
            })
        }
    }
}

/// The run moved to a final `status` with a note saying why.
fn closed(run: &RunRecord, status: RunStatus, note: String, now: i64) -> Transition {
    let mut new = run.clone();
    new.status = status;
    new.updated_at = now;
    if status == RunStatus::Failed {
        new.finished_at = Some(now);
    }
    new.note = Some(note.clone());
    Transition {
        run: new,
        action: format!("run.{}", status.as_str()),
        detail: json!({"run": run.id, "note": note}),
    }
}

/// The status a freshly judged run starts in: a deny is final, a plan that changes nothing
/// has nothing to apply, anything else waits for approval.
pub fn initial_status(decision: &str, changes_anything: bool) -> RunStatus {
    if decision == "deny" {
        RunStatus::Denied
    } else if !changes_anything {
        RunStatus::NoChanges
    } else {
        RunStatus::NeedsApproval
    }
}

/// Whether the stack is still at the (lineage, serial) the run was planned against.
pub fn is_current(run: &RunRecord, stack: &StackRecord, current: Option<&VersionMeta>) -> bool {
    match (current, &run.planned_serial) {
        (None, None) => true,
        (Some(v), Some(serial)) => {
            v.serial == *serial && stack.lineage.as_deref() == run.planned_lineage.as_deref()
        }
        _ => false,
    }
}

/// Expiry, then staleness: shared by approve and apply.
pub fn check_fresh(
    run: &RunRecord,
    stack: &StackRecord,
    current: Option<&VersionMeta>,
    now: i64,
) -> Result<(), Refused> {
    if is_overdue(run, now) {
        return Err(Refused::Expired);
    }
    if !is_current(run, stack, current) {
        return Err(Refused::Stale {
            current_serial: current.map(|v| v.serial),
        });
    }
    Ok(())
}

fn is_author(run: &RunRecord, actor: &Actor<'_>) -> bool {
    run.author_token == actor.token_id || run.author_identity() == actor.user
}

/// The author's user, and, for a run a forge login's job planned, a job of the same verified
/// ref: every job a trust logs in shares the trust's user, so another pull request's job must
/// not close this one's run.
fn is_authors_job(run: &RunRecord, actor: &Actor<'_>) -> bool {
    is_author(run, actor)
        && (run.author_ref.is_none() || run.author_ref.as_deref() == actor.job_ref)
}

/// A forge login the planner claims wrote or pushed the run's change request
/// (`RunRecord::change_authors`), and the user it belongs to when the approval is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeAuthor {
    /// `github:alice`.
    pub login: String,
    /// Its user, if an admin gave it to one.
    pub user: Option<String>,
}

/// Separation of duties for change requests: the users of the claimed authors and pushers may
/// not approve, and an author that belongs to no user blocks every approval (airlock cannot
/// tell whether the approver is them). `authors` are the run's `change_authors`, resolved.
fn check_change_authors(actor: &Actor<'_>, authors: &[ChangeAuthor]) -> Result<(), Refused> {
    if let Some(a) = authors
        .iter()
        .find(|a| a.user.as_deref() == Some(actor.user))
    {
        return Err(Refused::ApproverWroteTheChange {
            login: a.login.clone(),
        });
    }
    let unknown: Vec<String> = authors
        .iter()
        .filter(|a| a.user.is_none())
        .map(|a| a.login.clone())
        .collect();
    if !unknown.is_empty() {
        return Err(Refused::UnknownChangeAuthor { logins: unknown });
    }
    Ok(())
}

/// `approve`: an approver other than the author (and other than the claimed author or pusher
/// of the change request it was planned for, `authors`, all of which must belong to users),
/// once per user, of a run the gate did not deny, confirming the exact number of destroyed
/// instances, while the plan is fresh.
#[allow(clippy::too_many_arguments)]
pub fn approve(
    run: &RunRecord,
    stack: &StackRecord,
    current: Option<&VersionMeta>,
    actor: &Actor<'_>,
    authors: &[ChangeAuthor],
    confirm_destroy: Option<u64>,
    plan_sha256: Option<&str>,
    now: i64,
) -> Result<Transition, Refused> {
    // Runs stored before `denied` existed wait for approval with a deny decision.
    if run.status == RunStatus::Denied || run.decision == "deny" {
        return Err(Refused::Denied);
    }
    require(
        run,
        run.status == RunStatus::NeedsApproval,
        "waiting for approval",
    )?;
    // Identities, not tokens: the author's user (whichever token, phase tokens included,
    // planned it) cannot approve, and each user approves once.
    if is_author(run, actor) {
        return Err(Refused::ApproverIsAuthor);
    }
    check_change_authors(actor, authors)?;
    if run
        .approvals
        .iter()
        .any(|a| a.by_token == actor.token_id || a.user() == actor.user)
    {
        return Err(Refused::AlreadyApproved);
    }
    // An approval is of the plan the approver reviewed: when the client says which one it
    // showed (the console always does), a run whose plan is another is not approved by it.
    if let Some(seen) = plan_sha256 {
        if !seen.eq_ignore_ascii_case(&run.plan_sha256) {
            return Err(Refused::PlanHashDiffers {
                seen: seen.to_owned(),
            });
        }
    }
    let destroys = run.destroys.len() as u64;
    if destroys > 0 && confirm_destroy != Some(destroys) {
        return Err(Refused::ConfirmDestroy {
            destroys,
            given: confirm_destroy,
        });
    }
    check_fresh(run, stack, current, now)?;
    let mut new = run.clone();
    new.approvals.push(Approval {
        by: actor.display.to_owned(),
        by_token: actor.token_id.to_owned(),
        by_user: actor.user.to_owned(),
        at: now,
        plan_sha256: run.plan_sha256.clone(),
    });
    if new.valid_approvers().len() >= required_approvals(&new, stack) {
        new.status = RunStatus::Approved;
    }
    new.updated_at = now;
    // The approver's user too: a backup's approval then names the user the server counted.
    let detail = json!({"run": run.id, "plan_sha256": run.plan_sha256, "user": actor.user, "approvals": new.approvals.len(), "required": new.required_approvals});
    Ok(Transition {
        run: new,
        action: "run.approve".into(),
        detail,
    })
}

/// `reject`: any approver, while the run is open.
pub fn reject(
    run: &RunRecord,
    actor: &Actor<'_>,
    reason: &str,
    now: i64,
) -> Result<Transition, Refused> {
    require(
        run,
        run.status.is_open(),
        "open (it can no longer be rejected)",
    )?;
    let mut new = run.clone();
    new.status = RunStatus::Rejected;
    new.updated_at = now;
    new.rejection = Some(Rejection {
        by: actor.display.to_owned(),
        at: now,
        reason: reason.to_owned(),
    });
    Ok(Transition {
        run: new,
        action: "run.reject".into(),
        detail: json!({"run": run.id, "reason": reason}),
    })
}

/// `withdraw`: the author's user (any of its tokens, an agent's included; for a forge job's run,
/// a job of the same ref), while the run is open.
pub fn withdraw(run: &RunRecord, actor: &Actor<'_>, now: i64) -> Result<Transition, Refused> {
    if !is_authors_job(run, actor) {
        return Err(Refused::NotTheAuthor);
    }
    require(
        run,
        run.status.is_open(),
        "open (it can no longer be withdrawn)",
    )?;
    let mut t = closed(
        run,
        RunStatus::Withdrawn,
        format!("withdrawn by its author, {}", actor.display),
        now,
    );
    t.action = "run.withdraw".into();
    Ok(t)
}

/// Approvals a run needs now: those it was judged to need, or the stack's own setting if an
/// admin raised it since (a run approved under the old rule waits for more).
pub fn required_approvals(run: &RunRecord, stack: &StackRecord) -> usize {
    run.required_approvals
        .max(stack.settings.required_approvals) as usize
}

/// What the applying checkout says about itself.
#[derive(Debug, Clone, Copy)]
pub struct Checkout<'a> {
    /// SHA-256 of the stored plan artifact, as read now (`None`: missing).
    pub stored_plan_sha256: Option<&'a str>,
    /// The checkout's input fingerprint.
    pub fingerprint: &'a str,
    /// The checkout's input files (to name the ones that differ).
    pub inputs: &'a [InputFile],
    /// Ids of the tokens of the run's approvals that have been revoked since: an approval made
    /// with a credential airlock no longer trusts (a stolen approver token, found) does not
    /// count.
    pub revoked_approvals: &'a [String],
    /// Addresses the run removes that the stack did not protect when the run was judged and
    /// protects now (from `RunRecord::unprotected_removals`).
    pub protected_since: &'a [String],
}

/// What a started apply is given.
#[derive(Debug, Clone, Copy)]
pub struct ApplyToken<'a> {
    /// The id of the run-bound token the handler mints when the start succeeds.
    pub id: &'a str,
    /// How long the run outlives its applier's last report ([`keep_alive`]).
    pub idle_ms: i64,
    /// When the token that starts the apply expires: the run-bound token it mints, and so the
    /// run's deadline, never outlives it.
    pub limit: Option<i64>,
}

/// `apply`: the start of an apply (invariant 3, see the module docs).
pub fn start_apply(
    run: &RunRecord,
    stack: &StackRecord,
    current: Option<&VersionMeta>,
    actor: &Actor<'_>,
    checkout: Checkout<'_>,
    token: ApplyToken<'_>,
    now: i64,
) -> Result<Transition, Refused> {
    if !stack.settings.apply_from.contains(&actor.role) {
        return Err(Refused::RoleMayNotApply {
            role: actor.role,
            allowed: stack.settings.apply_from.clone(),
        });
    }
    let valid = run.valid_approvers().len();
    match run.status {
        RunStatus::Approved => {}
        RunStatus::NeedsApproval => return Err(Refused::TooFewApprovals { valid }),
        status => {
            return Err(Refused::WrongStatus {
                status,
                wanted: "approved",
            })
        }
    }
    if valid < run.required_approvals as usize {
        return Err(Refused::TooFewApprovals { valid });
    }
    let trusted = run.valid_approvers_except(checkout.revoked_approvals).len();
    let required = required_approvals(run, stack);
    if trusted < required {
        return Err(Refused::NoLongerApproved {
            revoked: run
                .approvals
                .iter()
                .filter(|a| checkout.revoked_approvals.contains(&a.by_token))
                .map(|a| a.by.clone())
                .collect(),
            valid: trusted,
            required,
        });
    }
    check_fresh(run, stack, current, now)?;
    if !checkout.protected_since.is_empty() {
        return Err(Refused::ProtectedSince {
            addresses: checkout.protected_since.to_vec(),
        });
    }
    if checkout.stored_plan_sha256 != Some(run.plan_sha256.as_str()) {
        return Err(Refused::PlanArtifactDiffers);
    }
    if !checkout.fingerprint.eq_ignore_ascii_case(&run.fingerprint) {
        let files = if checkout.inputs.is_empty() {
            Vec::new()
        } else {
            inputs::differences(&run.inputs, checkout.inputs)
        };
        return Err(Refused::InputsDiffer {
            fingerprint: checkout.fingerprint.to_owned(),
            files,
        });
    }
    let mut new = run.clone();
    new.status = RunStatus::Applying;
    new.applied_by = Some(actor.display.to_owned());
    new.apply_token = Some(token.id.to_owned());
    new.apply_started_at = Some(now);
    new.apply_alive_until = Some(now.saturating_add(token.idle_ms).min(deadline_cap(
        &new,
        token.limit,
        now,
    )));
    new.plan_checked_at = None;
    new.updated_at = now;
    Ok(Transition {
        run: new,
        action: "run.apply_start".into(),
        detail: json!({"run": run.id, "plan_sha256": run.plan_sha256, "apply_token": token.id}),
    })
}

/// Only the principal applying the run (its run-bound token, or the token that started the
/// apply) may finish it.
pub fn may_finish(run: &RunRecord, actor: &Actor<'_>) -> Result<(), Refused> {
    let own =
        actor.run_id == Some(run.id.as_str()) || run.applied_by.as_deref() == Some(actor.display);
    if own {
        Ok(())
    } else {
        Err(Refused::NotTheApplier)
    }
}

/// `finish`: the principal applying the run records the outcome (and the check it made).
pub fn finish(
    run: &RunRecord,
    current: Option<&VersionMeta>,
    actor: &Actor<'_>,
    success: bool,
    plan_check: Option<&str>,
    now: i64,
) -> Result<Transition, Refused> {
    may_finish(run, actor)?;
    require(run, run.status == RunStatus::Applying, "applying")?;
    let mut new = run.clone();
    new.status = if success {
        RunStatus::Applied
    } else {
        RunStatus::Failed
    };
    new.finished_at = Some(now);
    new.updated_at = now;
    if let Some(check) = plan_check {
        new.checks
            .push(format!("apply: {}", printable_check(check)));
    }
    Ok(Transition {
        action: format!("run.{}", new.status.as_str()),
        run: new,
        detail: json!({"run": run.id, "serial": current.map(|v| v.serial)}),
    })
}

/// `plan-check`: the run's own run-bound token records that `terraform show -json` of the
/// approved plan, made by the applier, equals the reviewed plan JSON (`check`, in words). Until
/// it is recorded, the state refuses that token's lock for applying and its writes: `airlock
/// apply` starts `terraform apply` while it checks, and Terraform waits at the state lock (a
/// failed check is reported with `finish`, which ends the run, and the lock is refused).
pub fn plan_checked(
    run: &RunRecord,
    actor: &Actor<'_>,
    plan_sha256: &str,
    check: &str,
    now: i64,
) -> Result<Transition, Refused> {
    if actor.run_id != Some(run.id.as_str()) {
        return Err(Refused::NotTheRunToken);
    }
    require(run, run.status == RunStatus::Applying, "applying")?;
    if run.plan_checked_at.is_some() {
        return Err(Refused::PlanCheckedAlready);
    }
    if !plan_sha256.eq_ignore_ascii_case(&run.plan_sha256) {
        return Err(Refused::CheckedAnotherPlan {
            seen: plan_sha256.to_owned(),
        });
    }
    let mut new = run.clone();
    new.plan_checked_at = Some(now);
    new.updated_at = now;
    new.checks
        .push(format!("apply: {}", printable_check(check)));
    Ok(Transition {
        run: new,
        action: "run.plan_check".into(),
        detail: json!({"run": run.id, "plan_sha256": run.plan_sha256}),
    })
}

/// A check in words as the applier sent it, fit to record: no control characters, bounded.
fn printable_check(check: &str) -> String {
    check
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect()
}

/// After `applied` finished, every other open run of its stack is superseded.
pub fn supersede(run: &RunRecord, applied: &RunRecord, now: i64) -> Result<Transition, Refused> {
    require(run, run.status.is_open() && run.id != applied.id, "open")?;
    Ok(closed(
        run,
        RunStatus::Superseded,
        format!(
            "stack {} changed: run {} was applied; plan again",
            run.stack, applied.id
        ),
        now,
    ))
}

/// Closes an open run of a stack being deleted (archived): nothing can apply it any more, and
/// no transition is recorded on a deleted stack, so it is closed now (its plan purged with it).
pub fn stack_deleted(run: &RunRecord, now: i64) -> Transition {
    closed(
        run,
        RunStatus::Superseded,
        format!("stack {} was deleted; its open runs were closed", run.stack),
        now,
    )
}

/// A user as people know it: the user's name, or the token's name when the token is its own
/// user (`tok_…`) or the run predates users.
fn person(user: &str, display: &str) -> String {
    if user.is_empty() || user.starts_with("tok_") {
        display
            .rsplit_once(" (")
            .map_or(display, |(name, _)| name)
            .to_owned()
    } else {
        user.to_owned()
    }
}

fn words(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// What has to happen next, in words.
pub fn next_step(run: &RunRecord) -> String {
    match run.status {
        RunStatus::Denied => "denied by policy: this run cannot be approved; change the code (e.g. an allow_destroy declaration, itself reviewed) and plan again".into(),
        RunStatus::NeedsApproval if run.decision == "deny" => next_step(&RunRecord {
            status: RunStatus::Denied,
            ..run.clone()
        }),
        RunStatus::NeedsApproval => {
            let confirm = if run.destroys.is_empty() {
                String::new()
            } else {
                format!(" --confirm-destroy {}", run.destroys.len())
            };
            let approvers = run.valid_approvers();
            let missing = (run.required_approvals as usize).saturating_sub(approvers.len()).max(1);
            let mut excluded = vec![person(&run.author_user, &run.author)];
            if !run.change_authors.is_empty() {
                excluded.push(format!(
                    "the users of {} (who wrote or pushed {})",
                    run.change_authors.join(", "),
                    change_request_words(run)
                ));
            }
            for user in approvers {
                let by = run.approvals.iter().find(|a| a.user() == user).map_or("", |a| a.by.as_str());
                let p = person(user, by);
                if !excluded.contains(&p) {
                    excluded.push(p);
                }
            }
            let (n, who) = if missing == 1 {
                ("1 more approval".to_owned(), "an approver")
            } else {
                (format!("{missing} more approvals"), "approvers")
            };
            format!("needs {n} from {who} other than {}: airlock approve {}{confirm}", words(&excluded), run.id)
        }
        RunStatus::Approved => format!("approved: a CI pipeline applies it with `airlock apply {}`", run.id),
        RunStatus::Applying => match alive_until(run) {
            Some(t) => format!("an apply is in progress; if its applier stops reporting, the run is closed as abandoned after {}", rfc3339(t)),
            None => "an apply is in progress".into(),
        },
        RunStatus::NoChanges => "no changes: the stack already matches the code; there is nothing to approve or apply".into(),
        other => format!("{}: nothing more can happen to this run", other.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StackSettings;

    const NOW: i64 = 1_000_000;
    const PLAN: &str = "aa11";

    fn run() -> RunRecord {
        serde_json::from_value(json!({
            "id": "run_1", "stack": "prod/app", "status": "needs_approval",
            "author": "bot (tok_bot)", "author_token": "tok_bot", "author_user": "tok_bot",
            "author_role": "agent", "created_at": NOW - 10, "updated_at": NOW - 10,
            "expires_at": NOW + RUN_TTL_MS, "fingerprint": "f1", "terraform_version": "1.11.0",
            "planned_lineage": "lin", "planned_serial": 4, "git_head": null, "git_base": null,
            "plan_sha256": PLAN, "config_sha256": null, "decision": "review", "report": {},
            "destroys": [], "required_approvals": 1, "approvals": [], "rejection": null,
            "applied_by": null, "apply_token": null, "apply_started_at": null,
            "finished_at": null, "note": null
        }))
        .unwrap()
    }

    fn stack() -> StackRecord {
        StackRecord {
            name: "prod/app".into(),
            production: false,
            lineage: Some("lin".into()),
            settings: StackSettings::defaults(false),
            created_at: 0,
            archived: None,
        }
    }

    fn version(serial: u64) -> VersionMeta {
        VersionMeta {
            stack: "prod/app".into(),
            serial,
            lineage: "lin".into(),
            sha256: "x".into(),
            size: 1,
            author: "a".into(),
            lock_id: None,
            run_id: None,
            reason: None,
            restored_from: None,
            created_at: 0,
        }
    }

    fn actor<'a>(user: &'a str, token: &'a str, role: Role) -> Actor<'a> {
        Actor {
            token_id: token,
            user,
            display: token,
            role,
            run_id: None,
            job_ref: None,
        }
    }

    fn alice() -> Actor<'static> {
        actor("alice", "tok_alice", Role::Approver)
    }

    fn approval(user: &str, token: &str, plan: &str) -> Approval {
        Approval {
            by: format!("{user} ({token})"),
            by_token: token.into(),
            by_user: user.into(),
            at: NOW - 5,
            plan_sha256: plan.into(),
        }
    }

    /// (name, run, who asks, what else the transition takes, expected status or refusal).
    type Case<'a, T> = (&'a str, RunRecord, Actor<'a>, T, Result<RunStatus, Refused>);

    fn approve_as(
        r: &RunRecord,
        a: &Actor<'_>,
        confirm: Option<u64>,
    ) -> Result<RunStatus, Refused> {
        approve(r, &stack(), Some(&version(4)), a, &[], confirm, None, NOW).map(|t| t.run.status)
    }

    #[test]
    fn an_approval_is_bound_to_the_plan_hash_the_approver_saw() {
        let cases: [(&str, Option<&str>, Result<RunStatus, Refused>); 4] = [
            (
                "no hash sent (older clients)",
                None,
                Ok(RunStatus::Approved),
            ),
            ("the run's hash", Some(PLAN), Ok(RunStatus::Approved)),
            (
                "another plan's hash",
                Some("ab12"),
                Err(Refused::PlanHashDiffers {
                    seen: "ab12".into(),
                }),
            ),
            (
                "an empty hash is not the run's",
                Some(""),
                Err(Refused::PlanHashDiffers {
                    seen: String::new(),
                }),
            ),
        ];
        for (name, seen, expected) in cases {
            let got = approve(
                &run(),
                &stack(),
                Some(&version(4)),
                &alice(),
                &[],
                None,
                seen,
                NOW,
            )
            .map(|t| t.run.status);
            assert_eq!(got, expected, "{name}");
        }
        let refusal = Refused::PlanHashDiffers {
            seen: "<script>".into(),
        };
        assert!(!refusal.message(&run(), &alice()).contains('<'));
    }

    #[test]
    fn approval_table() {
        let with = |f: &dyn Fn(&mut RunRecord)| {
            let mut r = run();
            f(&mut r);
            r
        };
        let bob = actor("bob", "tok_bob", Role::Approver);
        let cases: Vec<Case<'_, Option<u64>>> = vec![
            (
                "an approver approves",
                run(),
                alice(),
                None,
                Ok(RunStatus::Approved),
            ),
            (
                "the author's user, another token",
                run(),
                actor("tok_bot", "tok_other", Role::Approver),
                None,
                Err(Refused::ApproverIsAuthor),
            ),
            (
                "the author's very token",
                run(),
                actor("someone", "tok_bot", Role::Approver),
                None,
                Err(Refused::ApproverIsAuthor),
            ),
            (
                "an old run without author_user: its token is its user",
                with(&|r| r.author_user.clear()),
                actor("tok_bot", "tok_2", Role::Admin),
                None,
                Err(Refused::ApproverIsAuthor),
            ),
            (
                "the same user twice",
                with(&|r| {
                    r.required_approvals = 2;
                    r.approvals.push(approval("alice", "tok_a2", PLAN))
                }),
                alice(),
                None,
                Err(Refused::AlreadyApproved),
            ),
            (
                "the same token twice",
                with(&|r| {
                    r.required_approvals = 2;
                    r.approvals.push(approval("x", "tok_alice", PLAN))
                }),
                alice(),
                None,
                Err(Refused::AlreadyApproved),
            ),
            (
                "one of two",
                with(&|r| r.required_approvals = 2),
                alice(),
                None,
                Ok(RunStatus::NeedsApproval),
            ),
            (
                "two of two",
                with(&|r| {
                    r.required_approvals = 2;
                    r.approvals.push(approval("bob", "tok_bob", PLAN))
                }),
                alice(),
                None,
                Ok(RunStatus::Approved),
            ),
            (
                "an approval of another plan does not count",
                with(&|r| {
                    r.required_approvals = 2;
                    r.approvals.push(approval("bob", "tok_bob", "other"))
                }),
                alice(),
                None,
                Ok(RunStatus::NeedsApproval),
            ),
            (
                "an author's stored approval does not count",
                with(&|r| {
                    r.required_approvals = 2;
                    r.approvals.push(approval("tok_bot", "tok_bot", PLAN))
                }),
                bob,
                None,
                Ok(RunStatus::NeedsApproval),
            ),
            (
                "a deny",
                with(&|r| {
                    r.status = RunStatus::Denied;
                    r.decision = "deny".into()
                }),
                alice(),
                None,
                Err(Refused::Denied),
            ),
            (
                "an old deny waiting for approval",
                with(&|r| r.decision = "deny".into()),
                alice(),
                None,
                Err(Refused::Denied),
            ),
            (
                "destroys, unconfirmed",
                with(&|r| r.destroys = vec!["a.b".into(), "a.c".into()]),
                alice(),
                None,
                Err(Refused::ConfirmDestroy {
                    destroys: 2,
                    given: None,
                }),
            ),
            (
                "destroys, wrong count",
                with(&|r| r.destroys = vec!["a.b".into(), "a.c".into()]),
                alice(),
                Some(1),
                Err(Refused::ConfirmDestroy {
                    destroys: 2,
                    given: Some(1),
                }),
            ),
            (
                "destroys, confirmed",
                with(&|r| r.destroys = vec!["a.b".into(), "a.c".into()]),
                alice(),
                Some(2),
                Ok(RunStatus::Approved),
            ),
            (
                "a confirmation of nothing is harmless",
                run(),
                alice(),
                Some(3),
                Ok(RunStatus::Approved),
            ),
            (
                "expired",
                with(&|r| r.expires_at = NOW - 1),
                alice(),
                None,
                Err(Refused::Expired),
            ),
            (
                "stale",
                with(&|r| r.planned_serial = Some(3)),
                alice(),
                None,
                Err(Refused::Stale {
                    current_serial: Some(4),
                }),
            ),
            (
                "another lineage",
                with(&|r| r.planned_lineage = Some("old".into())),
                alice(),
                None,
                Err(Refused::Stale {
                    current_serial: Some(4),
                }),
            ),
            (
                "already approved",
                with(&|r| r.status = RunStatus::Approved),
                alice(),
                None,
                Err(Refused::WrongStatus {
                    status: RunStatus::Approved,
                    wanted: "waiting for approval",
                }),
            ),
            (
                "already applied",
                with(&|r| r.status = RunStatus::Applied),
                alice(),
                None,
                Err(Refused::WrongStatus {
                    status: RunStatus::Applied,
                    wanted: "waiting for approval",
                }),
            ),
            (
                "withdrawn",
                with(&|r| r.status = RunStatus::Withdrawn),
                alice(),
                None,
                Err(Refused::WrongStatus {
                    status: RunStatus::Withdrawn,
                    wanted: "waiting for approval",
                }),
            ),
            (
                "no changes",
                with(&|r| r.status = RunStatus::NoChanges),
                alice(),
                None,
                Err(Refused::WrongStatus {
                    status: RunStatus::NoChanges,
                    wanted: "waiting for approval",
                }),
            ),
        ];
        for (name, r, a, confirm, expected) in cases {
            assert_eq!(approve_as(&r, &a, confirm), expected, "{name}");
        }
    }

    #[test]
    fn the_author_of_a_change_request_cannot_approve_its_run() {
        let mut pr = run();
        pr.change_request = Some(7);
        pr.change_authors = vec!["github:alice".into(), "github:carol".into()];
        let known = |login: &str, user: &str| ChangeAuthor {
            login: login.into(),
            user: Some(user.into()),
        };
        let unknown = |login: &str| ChangeAuthor {
            login: login.into(),
            user: None,
        };
        let bob = actor("bob", "tok_bob", Role::Approver);
        /// (name, who asks, the run's claimed authors resolved, expected).
        type AuthorCase<'a> = (
            &'a str,
            Actor<'a>,
            Vec<ChangeAuthor>,
            Result<RunStatus, Refused>,
        );
        let cases: Vec<AuthorCase<'_>> = vec![
            (
                "no claimed author (a run not planned for a change request)",
                alice(),
                vec![],
                Ok(RunStatus::Approved),
            ),
            (
                "the change request's author",
                alice(),
                vec![
                    known("github:alice", "alice"),
                    known("github:carol", "carol"),
                ],
                Err(Refused::ApproverWroteTheChange {
                    login: "github:alice".into(),
                }),
            ),
            (
                "its pusher",
                alice(),
                vec![known("github:carol", "carol"), known("github:al", "alice")],
                Err(Refused::ApproverWroteTheChange {
                    login: "github:al".into(),
                }),
            ),
            (
                "someone else, every login known",
                bob,
                vec![
                    known("github:alice", "alice"),
                    known("github:carol", "carol"),
                ],
                Ok(RunStatus::Approved),
            ),
            (
                "someone else, a login nobody has",
                bob,
                vec![known("github:alice", "alice"), unknown("github:carol")],
                Err(Refused::UnknownChangeAuthor {
                    logins: vec!["github:carol".into()],
                }),
            ),
            (
                "the author, whose login is known, while another is not: named as the author",
                alice(),
                vec![unknown("github:carol"), known("github:alice", "alice")],
                Err(Refused::ApproverWroteTheChange {
                    login: "github:alice".into(),
                }),
            ),
        ];
        for (name, who, authors, expected) in cases {
            let got = approve(
                &pr,
                &stack(),
                Some(&version(4)),
                &who,
                &authors,
                None,
                None,
                NOW,
            )
            .map(|t| t.run.status);
            assert_eq!(got, expected, "{name}");
            if let Err(r) = &got {
                assert_eq!(r.kind(), RefusalKind::Forbidden, "{name}");
                let msg = r.message(&pr, &who);
                assert!(msg.contains("change request #7"), "{name}: {msg}");
            }
        }
    }

    #[test]
    fn an_approval_records_the_user_and_the_exact_plan() {
        let t = approve(
            &run(),
            &stack(),
            Some(&version(4)),
            &alice(),
            &[],
            None,
            None,
            NOW,
        )
        .unwrap();
        assert_eq!(
            t.run.approvals,
            vec![Approval {
                by: "tok_alice".into(),
                by_token: "tok_alice".into(),
                by_user: "alice".into(),
                at: NOW,
                plan_sha256: PLAN.into()
            }]
        );
        assert_eq!(t.action, "run.approve");
    }

    #[test]
    fn an_empty_stack_is_current_only_for_a_plan_against_an_empty_stack() {
        let mut r = run();
        r.planned_serial = None;
        r.planned_lineage = None;
        assert!(is_current(&r, &stack(), None));
        assert!(!is_current(&r, &stack(), Some(&version(1))));
        assert!(!is_current(&run(), &stack(), None));
        let msg = Refused::Stale {
            current_serial: Some(1),
        }
        .message(&r, &alice());
        assert!(
            msg.contains("planned against an empty stack but stack prod/app is now at serial 1"),
            "{msg}"
        );
    }

    fn approved() -> RunRecord {
        let mut r = run();
        r.status = RunStatus::Approved;
        r.approvals.push(approval("alice", "tok_alice", PLAN));
        r
    }

    /// The checkout of most apply tests: the approved plan stored, the reviewed fingerprint
    /// (`f1`), nothing revoked or protected since.
    fn reviewed() -> Checkout<'static> {
        Checkout {
            stored_plan_sha256: Some(PLAN),
            fingerprint: "f1",
            inputs: &[],
            revoked_approvals: &[],
            protected_since: &[],
        }
    }

    /// What a start gives the apply in most tests: run-bound token `id`, the default idle time.
    fn given(id: &str) -> ApplyToken<'_> {
        ApplyToken {
            id,
            idle_ms: APPLY_IDLE_MS,
            limit: None,
        }
    }

    /// `approved()` applying, started by CI's `pipeline (tok_ci)`.
    fn applying() -> RunRecord {
        let mut r = approved();
        r.status = RunStatus::Applying;
        r.applied_by = Some("pipeline (tok_ci)".into());
        r
    }

    /// The run-bound token of run_1, minted by CI's token.
    fn bound() -> Actor<'static> {
        Actor {
            run_id: Some("run_1"),
            job_ref: None,
            ..actor("tok_ci", "tok_run", Role::Ci)
        }
    }

    /// CI's own token, which started the apply.
    fn applier() -> Actor<'static> {
        Actor {
            display: "pipeline (tok_ci)",
            ..actor("tok_ci", "tok_ci", Role::Ci)
        }
    }

    #[test]
    fn an_apply_lives_while_its_applier_reports_and_no_longer() {
        const IDLE: i64 = 30_000;
        let mut r = applying();
        r.apply_started_at = Some(NOW);
        r.apply_alive_until = Some(NOW + IDLE);
        r.apply_token = Some("tok_run".into());
        let alive = |r: &RunRecord, limit: Option<i64>, at: i64| {
            keep_alive(r, &bound(), IDLE, limit, at).map(|t| t.map(|t| t.run.apply_alive_until))
        };
        // Only the run's own run-bound token reports: not the token that started the apply,
        // nor another run's run-bound token, nor a token bound to this run that is not the one
        // its apply was given.
        let other_run = Actor {
            run_id: Some("run_2"),
            job_ref: None,
            ..bound()
        };
        let not_its_token = Actor {
            token_id: "tok_other",
            ..bound()
        };
        for who in [applier(), other_run, not_its_token] {
            assert_eq!(
                keep_alive(&r, &who, IDLE, None, NOW + 1).map(|t| t.is_some()),
                Err(Refused::NotTheRunToken)
            );
        }
        let done = RunRecord {
            status: RunStatus::Applied,
            ..r.clone()
        };
        assert!(matches!(
            alive(&done, None, NOW + 1),
            Err(Refused::WrongStatus { .. })
        ));
        // A report moves the deadline on by the idle time once a third of it has passed since it
        // last moved; earlier reports change nothing (they write nothing).
        assert_eq!(alive(&r, None, NOW + IDLE / 3 - 1), Ok(None));
        assert_eq!(
            alive(&r, None, NOW + IDLE / 3),
            Ok(Some(Some(NOW + IDLE / 3 + IDLE)))
        );
        let t = keep_alive(&r, &bound(), IDLE, None, NOW + 20_000)
            .unwrap()
            .unwrap();
        assert_eq!(t.run.status, RunStatus::Applying);
        assert_eq!(t.action, "run.apply_alive");
        // Never past the expiry of the token that started the apply ...
        assert_eq!(
            alive(&r, Some(NOW + IDLE + 12_000), NOW + 20_000),
            Ok(Some(Some(NOW + IDLE + 12_000)))
        );
        assert_eq!(alive(&r, Some(NOW + IDLE), NOW + 20_000), Ok(None));
        // ... nor MAX_APPLY_MS after the start, whoever reports: then the run is abandoned.
        let late = NOW + MAX_APPLY_MS - 1_000;
        r.apply_alive_until = Some(late);
        assert_eq!(
            alive(&r, None, late - 500),
            Ok(Some(Some(NOW + MAX_APPLY_MS)))
        );
        r.apply_alive_until = Some(NOW + MAX_APPLY_MS);
        assert_eq!(alive(&r, None, late), Ok(None));
        assert!(!is_abandoned(&r, NOW + MAX_APPLY_MS));
        assert!(is_abandoned(&r, NOW + MAX_APPLY_MS + 1));
        assert_eq!(
            alive(&r, None, NOW + MAX_APPLY_MS + 1),
            Err(Refused::Abandoned)
        );
        // Abandoned, the run fails (its plan is purged with the record) and says what to do.
        let refused = decided(
            Err(Refused::Abandoned),
            &r,
            &EXPIRY_SWEEPER,
            NOW + MAX_APPLY_MS + 1,
        )
        .unwrap_err();
        let (recorded, audit) = *refused.record.unwrap();
        assert_eq!(recorded.status, RunStatus::Failed);
        assert_eq!(recorded.finished_at, Some(NOW + MAX_APPLY_MS + 1));
        assert_eq!(audit.action, "run.failed");
        assert!(
            refused.refusal.message.contains("was abandoned")
                && refused.refusal.message.contains("force-unlock"),
            "{}",
            refused.refusal.message
        );
        // A run applying since before heartbeats lived as long as its token then did.
        r.apply_alive_until = None;
        assert_eq!(alive_until(&r), Some(NOW + 3_600_000));
        assert!(is_abandoned(&r, NOW + 3_600_001));
        // Nothing but an applying run is abandoned.
        assert!(!is_abandoned(&done, NOW + MAX_APPLY_MS * 2));
        // The start's deadline is the idle time on, within the starting token's life.
        let start = |limit| {
            let checkout = reviewed();
            let token = ApplyToken {
                id: "tok_run",
                idle_ms: IDLE,
                limit,
            };
            let ci = actor("tok_ci", "tok_ci", Role::Ci);
            let t = start_apply(
                &approved(),
                &stack(),
                Some(&version(4)),
                &ci,
                checkout,
                token,
                NOW,
            );
            t.unwrap().run.apply_alive_until
        };
        assert_eq!(start(None), Some(NOW + IDLE));
        assert_eq!(start(Some(NOW + 5_000)), Some(NOW + 5_000));
    }

    #[test]
    fn a_stack_setting_raised_after_approval_holds_the_run_back() {
        let mut raised = stack();
        raised.settings.required_approvals = 2;
        let ci = actor("tok_ci", "tok_ci", Role::Ci);
        let checkout = reviewed();
        let refused = Refused::NoLongerApproved {
            revoked: vec![],
            valid: 1,
            required: 2,
        };
        let got = start_apply(
            &approved(),
            &raised,
            Some(&version(4)),
            &ci,
            checkout,
            given("t"),
            NOW,
        );
        assert_eq!(got.map(|t| t.run.status), Err(refused.clone()));
        assert_eq!(refused.records(), Some(RunStatus::NeedsApproval));
        // Waiting again, one more approval is what the raised setting asks.
        let mut waiting = approved();
        waiting.status = RunStatus::NeedsApproval;
        let bob = actor("bob", "tok_bob", Role::Approver);
        let approve_as = |r: &RunRecord, a: &Actor<'_>| {
            approve(r, &raised, Some(&version(4)), a, &[], None, None, NOW).map(|t| t.run)
        };
        let carol = actor("carol", "tok_carol", Role::Approver);
        let mut fresh = run();
        fresh = approve_as(&fresh, &bob).unwrap();
        assert_eq!(fresh.status, RunStatus::NeedsApproval, "one of two");
        assert_eq!(
            approve_as(&fresh, &carol).unwrap().status,
            RunStatus::Approved
        );
        let approved_again = approve_as(&waiting, &bob).unwrap();
        assert_eq!(approved_again.status, RunStatus::Approved);
        let checkout = reviewed();
        let got = start_apply(
            &approved_again,
            &raised,
            Some(&version(4)),
            &ci,
            checkout,
            given("t"),
            NOW,
        );
        assert_eq!(got.map(|t| t.run.status), Ok(RunStatus::Applying));
    }

    #[test]
    fn apply_table() {
        let ci = actor("tok_ci", "tok_ci", Role::Ci);
        let good = Checkout {
            stored_plan_sha256: Some(PLAN),
            fingerprint: "F1",
            inputs: &[],
            revoked_approvals: &[],
            protected_since: &[],
        };
        let alice_revoked = ["tok_alice".to_owned()];
        let db = ["aws_db_instance.main".to_owned()];
        let with = |f: &dyn Fn(&mut RunRecord)| {
            let mut r = approved();
            f(&mut r);
            r
        };
        let cases: Vec<Case<'_, Checkout<'_>>> = vec![
            (
                "approved, same plan, same checkout",
                approved(),
                ci,
                good,
                Ok(RunStatus::Applying),
            ),
            (
                "an agent",
                approved(),
                actor("tok_bot", "tok_bot", Role::Agent),
                good,
                Err(Refused::RoleMayNotApply {
                    role: Role::Agent,
                    allowed: vec![Role::Ci, Role::Admin],
                }),
            ),
            (
                "waiting for approval",
                run(),
                ci,
                good,
                Err(Refused::TooFewApprovals { valid: 0 }),
            ),
            (
                "approved by the author only (old data)",
                with(&|r| r.approvals = vec![approval("tok_bot", "tok_x", PLAN)]),
                ci,
                good,
                Err(Refused::TooFewApprovals { valid: 0 }),
            ),
            (
                "approved for another plan",
                with(&|r| r.approvals[0].plan_sha256 = "bb".into()),
                ci,
                good,
                Err(Refused::TooFewApprovals { valid: 0 }),
            ),
            (
                "two approvals by one user",
                with(&|r| {
                    r.required_approvals = 2;
                    r.approvals.push(approval("alice", "tok_a2", PLAN))
                }),
                ci,
                good,
                Err(Refused::TooFewApprovals { valid: 1 }),
            ),
            (
                "already applied",
                with(&|r| r.status = RunStatus::Applied),
                ci,
                good,
                Err(Refused::WrongStatus {
                    status: RunStatus::Applied,
                    wanted: "approved",
                }),
            ),
            (
                "applying",
                with(&|r| r.status = RunStatus::Applying),
                ci,
                good,
                Err(Refused::WrongStatus {
                    status: RunStatus::Applying,
                    wanted: "approved",
                }),
            ),
            (
                "rejected",
                with(&|r| r.status = RunStatus::Rejected),
                ci,
                good,
                Err(Refused::WrongStatus {
                    status: RunStatus::Rejected,
                    wanted: "approved",
                }),
            ),
            (
                "expired",
                with(&|r| r.expires_at = NOW - 1),
                ci,
                good,
                Err(Refused::Expired),
            ),
            (
                "stale",
                with(&|r| r.planned_serial = Some(2)),
                ci,
                good,
                Err(Refused::Stale {
                    current_serial: Some(4),
                }),
            ),
            (
                "an approval by a token revoked since",
                approved(),
                ci,
                Checkout {
                    revoked_approvals: &alice_revoked,
                    ..good
                },
                Err(Refused::NoLongerApproved {
                    revoked: vec!["alice (tok_alice)".into()],
                    valid: 0,
                    required: 1,
                }),
            ),
            (
                "another approval by a token still valid is enough",
                with(&|r| r.approvals.push(approval("bob", "tok_bob", PLAN))),
                ci,
                Checkout {
                    revoked_approvals: &alice_revoked,
                    ..good
                },
                Ok(RunStatus::Applying),
            ),
            (
                "a removal the stack protects since the run was judged",
                approved(),
                ci,
                Checkout {
                    protected_since: &db,
                    ..good
                },
                Err(Refused::ProtectedSince {
                    addresses: db.to_vec(),
                }),
            ),
            (
                "tampered artifact",
                approved(),
                ci,
                Checkout {
                    stored_plan_sha256: Some("bb"),
                    ..good
                },
                Err(Refused::PlanArtifactDiffers),
            ),
            (
                "missing artifact",
                approved(),
                ci,
                Checkout {
                    stored_plan_sha256: None,
                    ..good
                },
                Err(Refused::PlanArtifactDiffers),
            ),
            (
                "another checkout",
                approved(),
                ci,
                Checkout {
                    fingerprint: "f2",
                    ..good
                },
                Err(Refused::InputsDiffer {
                    fingerprint: "f2".into(),
                    files: vec![],
                }),
            ),
        ];
        for (name, r, a, checkout, expected) in cases {
            let got = start_apply(
                &r,
                &stack(),
                Some(&version(4)),
                &a,
                checkout,
                given("tok_run"),
                NOW,
            )
            .map(|t| t.run.status);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn a_differing_checkout_names_the_files() {
        let mut r = approved();
        r.inputs = vec![InputFile::of("main.tf", b"a"), InputFile::of("x.tf", b"x")];
        let sent = [InputFile::of("main.tf", b"b"), InputFile::of("x.tf", b"x")];
        let checkout = Checkout {
            fingerprint: "f2",
            inputs: &sent,
            ..reviewed()
        };
        let ci = actor("tok_ci", "tok_ci", Role::Ci);
        let got = start_apply(
            &r,
            &stack(),
            Some(&version(4)),
            &ci,
            checkout,
            given("t"),
            NOW,
        );
        assert_eq!(
            got,
            Err(Refused::InputsDiffer {
                fingerprint: "f2".into(),
                files: vec!["main.tf (changed)".into()]
            })
        );
    }

    #[test]
    fn stale_and_expired_refusals_still_record_the_status() {
        let mut r = approved();
        r.planned_serial = Some(2);
        let ci = actor("tok_ci", "tok_ci", Role::Ci);
        let checkout = reviewed();
        let verdict = start_apply(
            &r,
            &stack(),
            Some(&version(4)),
            &ci,
            checkout,
            given("t"),
            NOW,
        );
        let refused = decided(verdict, &r, &ci, NOW).unwrap_err();
        let (recorded, audit) = *refused.record.unwrap();
        assert_eq!(recorded.status, RunStatus::Superseded);
        assert_eq!(audit.action, "run.superseded");
        assert_eq!(refused.refusal.kind, RefusalKind::Conflict);
        let mut r = run();
        r.expires_at = NOW - 1;
        let verdict = approve(
            &r,
            &stack(),
            Some(&version(4)),
            &alice(),
            &[],
            None,
            None,
            NOW,
        );
        let (recorded, _) = *decided(verdict, &r, &alice(), NOW)
            .unwrap_err()
            .record
            .unwrap();
        assert_eq!(recorded.status, RunStatus::Expired);
        // Other refusals record nothing.
        let verdict = approve(
            &r,
            &stack(),
            Some(&version(4)),
            &actor("tok_bot", "tok_bot", Role::Agent),
            &[],
            None,
            None,
            NOW,
        );
        assert!(decided(verdict, &r, &alice(), NOW)
            .unwrap_err()
            .record
            .is_none());
    }

    #[test]
    fn withdraw_and_reject_table() {
        let agent = actor("tok_bot", "tok_bot", Role::Agent);
        let agent_phase = actor("tok_bot", "tok_phase", Role::Agent);
        let other_agent = actor("tok_eve", "tok_eve", Role::Agent);
        let with = |s: RunStatus| {
            let mut r = run();
            r.status = s;
            r
        };
        let cases: Vec<(&str, RunRecord, Actor<'_>, Result<RunStatus, Refused>)> = vec![
            ("the author", run(), agent, Ok(RunStatus::Withdrawn)),
            (
                "the author's user through another token",
                run(),
                agent_phase,
                Ok(RunStatus::Withdrawn),
            ),
            (
                "an approved run",
                with(RunStatus::Approved),
                agent,
                Ok(RunStatus::Withdrawn),
            ),
            (
                "another agent",
                run(),
                other_agent,
                Err(Refused::NotTheAuthor),
            ),
            ("an approver", run(), alice(), Err(Refused::NotTheAuthor)),
            (
                "applying",
                with(RunStatus::Applying),
                agent,
                Err(Refused::WrongStatus {
                    status: RunStatus::Applying,
                    wanted: "open (it can no longer be withdrawn)",
                }),
            ),
            (
                "applied",
                with(RunStatus::Applied),
                agent,
                Err(Refused::WrongStatus {
                    status: RunStatus::Applied,
                    wanted: "open (it can no longer be withdrawn)",
                }),
            ),
            (
                "denied",
                with(RunStatus::Denied),
                agent,
                Err(Refused::WrongStatus {
                    status: RunStatus::Denied,
                    wanted: "open (it can no longer be withdrawn)",
                }),
            ),
        ];
        for (name, r, a, expected) in cases {
            assert_eq!(
                withdraw(&r, &a, NOW).map(|t| t.run.status),
                expected,
                "{name}"
            );
        }
        let t = withdraw(&run(), &agent, NOW).unwrap();
        assert_eq!(t.action, "run.withdraw");
        assert_eq!(
            reject(&run(), &alice(), "no", NOW).map(|t| t.run.status),
            Ok(RunStatus::Rejected)
        );
        assert!(reject(&with(RunStatus::Applied), &alice(), "no", NOW).is_err());
        assert!(reject(&with(RunStatus::Withdrawn), &alice(), "no", NOW).is_err());
    }

    #[test]
    fn finish_and_supersede_table() {
        let (applying, bound) = (applying(), bound());
        let applier = applier();
        let other = actor("tok_ci2", "tok_ci2", Role::Ci);
        let v = version(5);
        assert_eq!(
            finish(&applying, Some(&v), &bound, true, None, NOW).map(|t| t.run.status),
            Ok(RunStatus::Applied)
        );
        assert_eq!(
            finish(&applying, Some(&v), &applier, false, None, NOW).map(|t| t.run.status),
            Ok(RunStatus::Failed)
        );
        assert_eq!(
            finish(&applying, Some(&v), &other, true, None, NOW).map(|t| t.run.status),
            Err(Refused::NotTheApplier)
        );
        assert_eq!(
            finish(&approved(), Some(&v), &bound, true, None, NOW).map(|t| t.run.status),
            Err(Refused::WrongStatus {
                status: RunStatus::Approved,
                wanted: "applying"
            })
        );
        let t = finish(
            &applying,
            Some(&v),
            &bound,
            true,
            Some("same\u{1b}[2J plan"),
            NOW,
        )
        .unwrap();
        assert_eq!(t.run.checks.last().unwrap(), "apply: same[2J plan");

        let mut applied = applying.clone();
        applied.id = "run_done".into();
        for (status, superseded) in [
            (RunStatus::NeedsApproval, true),
            (RunStatus::Approved, true),
            (RunStatus::Applying, false),
            (RunStatus::Applied, false),
            (RunStatus::Withdrawn, false),
            (RunStatus::NoChanges, false),
            (RunStatus::Denied, false),
        ] {
            let mut r = run();
            r.status = status;
            let got = supersede(&r, &applied, NOW).map(|t| t.run.status);
            assert_eq!(got.is_ok(), superseded, "{status:?}");
        }
        assert!(supersede(&applied, &applied, NOW).is_err(), "not itself");
    }

    /// Only the run's own run-bound token records the plan check, once, of the run's own plan,
    /// while the run applies; the applier's other token and another run's token may not.
    #[test]
    fn plan_check_table() {
        let (applying, bound) = (applying(), bound());
        let other_run = Actor {
            run_id: Some("run_2"),
            job_ref: None,
            ..actor("tok_ci", "tok_run2", Role::Ci)
        };
        let applier = applier();
        let t = plan_checked(&applying, &bound, PLAN, "same\u{1b}[2J plan", NOW).unwrap();
        assert_eq!(t.run.plan_checked_at, Some(NOW));
        assert_eq!(t.run.status, RunStatus::Applying);
        assert_eq!(t.run.checks.last().unwrap(), "apply: same[2J plan");
        assert_eq!(t.action, "run.plan_check");
        for who in [&other_run, &applier] {
            assert_eq!(
                plan_checked(&applying, who, PLAN, "", NOW).map(|t| t.run),
                Err(Refused::NotTheRunToken)
            );
        }
        assert_eq!(
            plan_checked(&applying, &bound, "bb22", "", NOW).map(|t| t.run),
            Err(Refused::CheckedAnotherPlan {
                seen: "bb22".into()
            })
        );
        assert_eq!(
            plan_checked(&t.run, &bound, PLAN, "", NOW).map(|t| t.run),
            Err(Refused::PlanCheckedAlready)
        );
        for status in [RunStatus::Approved, RunStatus::Failed, RunStatus::Applied] {
            let mut r = applying.clone();
            r.status = status;
            assert!(
                plan_checked(&r, &bound, PLAN, "", NOW).is_err(),
                "{status:?}"
            );
        }
        // A new apply starts unchecked.
        let started = start_apply(
            &approved(),
            &stack(),
            Some(&version(4)),
            &actor("tok_ci", "tok_ci", Role::Ci),
            reviewed(),
            given("tok_run"),
            NOW,
        )
        .unwrap();
        assert_eq!(started.run.plan_checked_at, None);
    }

    #[test]
    fn initial_status_table() {
        assert_eq!(initial_status("deny", true), RunStatus::Denied);
        assert_eq!(initial_status("deny", false), RunStatus::Denied);
        assert_eq!(initial_status("review", false), RunStatus::NoChanges);
        assert_eq!(initial_status("allow", false), RunStatus::NoChanges);
        assert_eq!(initial_status("review", true), RunStatus::NeedsApproval);
        assert_eq!(initial_status("allow", true), RunStatus::NeedsApproval);
    }

    #[test]
    fn the_next_step_names_who_may_still_approve() {
        let mut r = run();
        r.author = "bot (tok_bot)".into();
        r.required_approvals = 2;
        assert_eq!(
            next_step(&r),
            "needs 2 more approvals from approvers other than bot: airlock approve run_1"
        );
        r.approvals.push(approval("alice", "tok_alice", PLAN));
        assert_eq!(next_step(&r), "needs 1 more approval from an approver other than bot and alice: airlock approve run_1");
        r.required_approvals = 3;
        r.approvals.push(approval("carol", "tok_carol", PLAN));
        r.destroys = vec!["x.y".into()];
        assert_eq!(next_step(&r), "needs 1 more approval from an approver other than bot, alice and carol: airlock approve run_1 --confirm-destroy 1");
        r.author_user = "dave".into();
        r.approvals = vec![];
        assert!(
            next_step(&r).contains("other than dave:"),
            "{}",
            next_step(&r)
        );
        r.change_request = Some(7);
        r.change_authors = vec!["github:erin".into()];
        assert!(
            next_step(&r).contains(
                "other than dave and the users of github:erin (who wrote or pushed change request #7):"
            ),
            "{}",
            next_step(&r)
        );
        r.decision = "deny".into();
        assert!(next_step(&r).starts_with("denied by policy"));
    }

    #[test]
    fn stored_statuses_load_old_and_unknown_alike() {
        for s in RunStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), s);
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        let future: RunStatus = serde_json::from_str("\"paused_by_moon\"").unwrap();
        assert_eq!(future, RunStatus::Unknown);
        assert!(!future.is_open());
        assert_eq!(RunStatus::parse("unknown"), None);
    }
}
