//! Governed runs as the store keeps them: the record is JSON (so adding a field needs no
//! migration); status, stack and time are also columns for listing. Artifacts (binary plan,
//! plan JSON, lock file, apply log) are immutable, zstd-compressed, addressed by run and name;
//! the one exception is the binary plan of a terminal run, purged to a tombstone (see
//! [`PLAN_ARTIFACT`]).

use airlock_core::refusal::Refusal;
use serde::{Deserialize, Serialize};

use crate::{NewAudit, StackRecord, VersionMeta};

/// A JSON document kept as its text. A run's report lists every change of its plan (a
/// 500-resource plan's is ~300 KB): read as a `serde_json::Value` on every read of the run, it
/// was a third of the server's CPU in a governed run (one tree of maps per read, and each apply
/// reads its run a dozen times; issue 17). Its readers (console, MCP, CLI) parse it when they
/// need it; the store and the API pass the text through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(Box<serde_json::value::RawValue>);

impl RawJson {
    /// The text of `v`.
    pub fn of(v: &serde_json::Value) -> RawJson {
        // A Value always serializes.
        RawJson(serde_json::value::to_raw_value(v).unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("null".to_owned()).expect("null is JSON")
        }))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Parsed.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl From<Box<serde_json::value::RawValue>> for RawJson {
    fn from(raw: Box<serde_json::value::RawValue>) -> RawJson {
        RawJson(raw)
    }
}

/// The same text (the store writes what it read, so a document equals itself after a round
/// trip).
impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

/// Where a run is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Planned, waiting for approvals.
    NeedsApproval,
    /// Approved by enough approvers.
    Approved,
    /// An apply is in progress.
    Applying,
    /// Applied.
    Applied,
    /// The apply failed.
    Failed,
    /// Rejected by an approver.
    Rejected,
    /// The stack changed after planning; a new plan is needed.
    Superseded,
    /// Too old to apply.
    Expired,
    /// The plan gate denied it: it cannot be approved (runs stored before this status existed
    /// say `needs_approval` with decision `deny`).
    Denied,
    /// The plan changes nothing: there is nothing to approve or apply.
    NoChanges,
    /// Withdrawn by its author.
    Withdrawn,
    /// A status this version does not know (written by a newer one): shown, never acted on.
    #[serde(other)]
    Unknown,
}

impl RunStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::NeedsApproval => "needs_approval",
            RunStatus::Approved => "approved",
            RunStatus::Applying => "applying",
            RunStatus::Applied => "applied",
            RunStatus::Failed => "failed",
            RunStatus::Rejected => "rejected",
            RunStatus::Superseded => "superseded",
            RunStatus::Expired => "expired",
            RunStatus::Denied => "denied",
            RunStatus::NoChanges => "no_changes",
            RunStatus::Withdrawn => "withdrawn",
            RunStatus::Unknown => "unknown",
        }
    }

    /// Every status this version knows, in lifecycle order.
    pub const ALL: [RunStatus; 11] = [
        RunStatus::NeedsApproval,
        RunStatus::Approved,
        RunStatus::Applying,
        RunStatus::Applied,
        RunStatus::Failed,
        RunStatus::Rejected,
        RunStatus::Superseded,
        RunStatus::Expired,
        RunStatus::Denied,
        RunStatus::NoChanges,
        RunStatus::Withdrawn,
    ];

    /// The status named `name` (as [`RunStatus::as_str`] writes it).
    pub fn parse(name: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the run can still move towards an apply.
    pub fn is_open(self) -> bool {
        matches!(self, RunStatus::NeedsApproval | RunStatus::Approved)
    }

    /// Whether a run in this status keeps no bytes of its artifact `name`: the binary plan
    /// ([`PLAN_ARTIFACT`]) of a terminal run, the one artifact ever purged.
    pub fn purges(self, name: &str) -> bool {
        name == PLAN_ARTIFACT && self.is_terminal()
    }

    /// Whether nothing more can happen to the run: no rule moves it out of this status
    /// (`run_rules`: only an open run is approved, rejected, withdrawn, superseded or started,
    /// and only an applying one finishes; a failed run is planned again, never re-applied).
    /// Its binary plan is purged when it gets here. `Unknown` (a newer version's status) is
    /// not terminal: this version never acts on it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Applied
                | RunStatus::Failed
                | RunStatus::Rejected
                | RunStatus::Superseded
                | RunStatus::Expired
                | RunStatus::Denied
                | RunStatus::NoChanges
                | RunStatus::Withdrawn
        )
    }
}

/// What an expiry sweep did ([`crate::Store::expire_overdue_runs`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// The runs it closed (as `expired`, or as `failed` when abandoned while applying), oldest
    /// first.
    pub closed: Vec<String>,
    /// The runs it could not close, with the error.
    pub failed: Vec<(String, String)>,
}

/// The binary plan's artifact name (`terraform plan -out`: a zip holding the whole prior state
/// and every planned value, sensitive ones included). It is what an apply downloads, and the
/// one artifact that is not kept for good: in the transaction that makes a run terminal, its
/// bytes are purged and a tombstone (name, SHA-256, length, purge time) stays, so what was
/// applied remains identifiable by hash. The database's triggers allow that change and no other
/// (migration 0018).
pub const PLAN_ARTIFACT: &str = "plan.tfplan";

/// What is stored of one artifact, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    /// Name (`plan.tfplan`, `plan.json`, `apply.log`, ...).
    pub name: String,
    /// SHA-256 of its bytes (lowercase hex); a tombstone keeps it.
    pub sha256: String,
    /// Length of its bytes; a tombstone keeps it.
    pub len: u64,
    /// When its bytes were purged (ms); `None` while they are kept.
    pub purged_at: Option<i64>,
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Approver (token name and id).
    pub by: String,
    /// Approver's token id.
    pub by_token: String,
    /// Approver's user: one user is one approver, however many tokens it holds. Empty in
    /// runs stored before users existed (see [`Approval::user`]).
    #[serde(default)]
    pub by_user: String,
    /// When.
    pub at: i64,
    /// SHA-256 of the binary plan that was approved.
    pub plan_sha256: String,
}

/// A rejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Who.
    pub by: String,
    /// When.
    pub at: i64,
    /// Why.
    pub reason: String,
}

/// A run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Identifier (`run_` + hex).
    pub id: String,
    /// Stack.
    pub stack: String,
    /// Lifecycle position.
    pub status: RunStatus,
    /// Who planned it (token name and id).
    pub author: String,
    /// Author's token id (never allowed to approve).
    pub author_token: String,
    /// Author's user (the user of the token that planned it, phase tokens included), never
    /// allowed to approve. Empty in runs stored before users existed (see [`RunRecord::author_identity`]).
    #[serde(default)]
    pub author_user: String,
    /// The verified git ref of the forge login whose job planned it (`TokenRecord::job_ref`
    /// of the author token); none for any other planner and in runs stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_ref: Option<String>,
    /// Author's role name (agent, ci, ...).
    pub author_role: String,
    /// Created.
    pub created_at: i64,
    /// Last transition.
    pub updated_at: i64,
    /// Not applicable after this time.
    pub expires_at: i64,
    /// SHA-256 over the stack's inputs.
    pub fingerprint: String,
    /// Terraform version that planned it.
    pub terraform_version: String,
    /// Lineage of the state planned against (None: empty stack).
    pub planned_lineage: Option<String>,
    /// Serial of the state planned against (None: empty stack).
    pub planned_serial: Option<u64>,
    /// Git commit of the checkout, when known.
    pub git_head: Option<String>,
    /// Git base commit, when known.
    pub git_base: Option<String>,
    /// The pull/merge request the planner says the run was planned for (`airlock ci plan`).
    /// Like `git_head`, a claim of the planner, used for display and lookup only: what binds a
    /// run to code is the inputs' fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_request: Option<u64>,
    /// The forge's web URL of that change request (a claim, as `change_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_request_url: Option<String>,
    /// Who the planner says wrote or pushed that change request: forge logins
    /// (`github:alice`), the change request's author first. A claim, as `change_request`: the
    /// users these logins belong to may not approve the run, and while one belongs to no user
    /// nobody may (see `run_rules::approve`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub change_authors: Vec<String>,
    /// SHA-256 of the binary plan artifact.
    pub plan_sha256: String,
    /// SHA-256 of the `airlock.hcl` the plan was judged with, if any.
    pub config_sha256: Option<String>,
    /// The gate's verdict: allow, review, deny.
    pub decision: String,
    /// The gate's JSON report (summary, changes, findings).
    pub report: RawJson,
    /// Managed instances the plan destroys or forgets.
    pub destroys: Vec<String>,
    /// Approvals needed.
    pub required_approvals: u32,
    /// Approvals given.
    pub approvals: Vec<Approval>,
    /// Rejection, if rejected.
    pub rejection: Option<Rejection>,
    /// Who applied it.
    pub applied_by: Option<String>,
    /// Run-bound apply token id (revoked when the apply ends).
    pub apply_token: Option<String>,
    /// When the apply started.
    pub apply_started_at: Option<i64>,
    /// While the run applies: when it is abandoned unless its applier reports before (each
    /// `POST /api/v1/runs/{id}/heartbeat` moves it on; see [`crate::run_rules::keep_alive`]).
    /// Its run-bound token and removal grant expire then too. `None` in records from before
    /// heartbeats ([`crate::run_rules::alive_until`] reads those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_alive_until: Option<i64>,
    /// When the apply ended.
    pub finished_at: Option<i64>,
    /// Why it was superseded, failed or expired.
    pub note: Option<String>,
    /// The input files the fingerprint covers (paths relative to the repository root).
    #[serde(default)]
    pub inputs: Vec<airlock_core::inputs::InputFile>,
    /// Directory of the stack's root module, relative to the repository root.
    #[serde(default)]
    pub planned_dir: Option<String>,
    /// Addresses the plan moves instances away from (`moved` blocks): the run's writes may drop them.
    #[serde(default)]
    pub moved_from: Vec<String>,
    /// (resource type, address) of the removals (destroys, moves away) that the server did not
    /// protect when it judged the run: one protected since holds the apply back (the approvers
    /// never saw it as protected). `None` in runs stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unprotected_removals: Option<Vec<(String, String)>>,
    /// How the reviewed change loosens the policy it is judged by (shown to approvers first).
    #[serde(default)]
    pub policy_changes: Vec<String>,
    /// The checks that tied what is applied to what was reviewed, in words, as they were made.
    #[serde(default)]
    pub checks: Vec<String>,
    /// The binary plan's planning mode when it is not a normal plan: `destroy`, or
    /// `refresh-only` (a run that accepts drift: its apply records in the state what changed
    /// outside Terraform and changes no infrastructure). Read by the server from the binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_mode: Option<String>,
    /// When the applier's run-bound token recorded that `terraform show -json` of the approved
    /// plan equals the reviewed plan JSON (`POST /api/v1/runs/{id}/plan-check`). Until then the
    /// run-bound token may neither lock the stack for applying nor write it: `terraform apply`
    /// starts while the check runs and waits at the state lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_checked_at: Option<i64>,
    /// The other stacks whose state the run's plan phase could read (its plan-phase token's
    /// read stacks, for `terraform_remote_state`), as the server recorded them from that token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_read_stacks: Vec<String>,
}

// Identities for runs stored before users existed: each token was its own user then, and the
// migration named each such user after its token's id, so the token id stands in for the user.

impl Approval {
    /// The user who gave this approval.
    pub fn user(&self) -> &str {
        if self.by_user.is_empty() {
            &self.by_token
        } else {
            &self.by_user
        }
    }
}

impl RunRecord {
    /// The detail of the `run.create` event that records this run, written with it in one
    /// transaction: what the gate judged, of which plan and inputs, for whom, and what it needs.
    /// `airlock backup verify` derives it again from a backup's record and compares every key
    /// the event holds (an older server's events hold fewer), so a backup cannot change what a
    /// run is or who planned it without rewriting the audit chain. `destroys_sha256` binds the
    /// destroyed addresses without copying a long list into the log.
    pub fn created_detail(&self) -> serde_json::Value {
        let destroys = serde_json::to_vec(&self.destroys).unwrap_or_default();
        serde_json::json!({
            "run": self.id,
            "decision": self.decision,
            "destroys": self.destroys.len(),
            "destroys_sha256": hex::encode(crate::blob::sha256(&destroys)),
            "plan_sha256": self.plan_sha256,
            "fingerprint": self.fingerprint,
            "policy_changes": self.policy_changes,
            "plan_mode": self.plan_mode,
            "plan_read_stacks": self.plan_read_stacks,
            "user": self.author_user,
            "required_approvals": self.required_approvals,
            "author_ref": self.author_ref,
        })
    }

    /// The user who planned the run.
    pub fn author_identity(&self) -> &str {
        if self.author_user.is_empty() {
            &self.author_token
        } else {
            &self.author_user
        }
    }

    /// This run with its author's user set, if it was stored before users existed (the
    /// server looks the author token's user up: for a phase token, its minter's user).
    pub fn with_author_user(&self, user: &str) -> RunRecord {
        let mut run = self.clone();
        if run.author_user.is_empty() {
            run.author_user = user.to_owned();
        }
        run
    }

    /// Distinct users other than the author who approved exactly this run's plan: what
    /// "N approvals" counts.
    pub fn valid_approvers(&self) -> Vec<&str> {
        self.valid_approvers_except(&[])
    }

    /// [`RunRecord::valid_approvers`] without the approvals made with the tokens `revoked`
    /// (ids of tokens revoked since they approved).
    pub fn valid_approvers_except(&self, revoked: &[String]) -> Vec<&str> {
        let mut users: Vec<&str> = self
            .approvals
            .iter()
            .filter(|a| a.plan_sha256 == self.plan_sha256 && a.user() != self.author_identity())
            .filter(|a| !revoked.contains(&a.by_token))
            .map(Approval::user)
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }
}

/// A transition, judged inside the store's transaction: given the run, its stack, the stack's
/// current version and the ids of the tokens of the run's approvals that are revoked (or gone)
/// as of this transaction, return the new record and its audit event, or a refusal (which the
/// store may still record when the refusal says the run must change status, see
/// [`RunTransition`]).
pub type RunUpdate<'a> = dyn FnMut(
        &RunRecord,
        &StackRecord,
        Option<&VersionMeta>,
        &[String],
    ) -> Result<(RunRecord, NewAudit), RunRefusal>
    + 'a;

/// A refused transition, optionally with a status change to record anyway (e.g. a stale run
/// becomes `superseded` while its apply is refused).
#[derive(Debug, Clone)]
pub struct RunRefusal {
    /// What to tell the caller.
    pub refusal: Refusal,
    /// Record this instead (status change and its audit event), if any.
    pub record: Option<Box<(RunRecord, NewAudit)>>,
}

impl From<Refusal> for RunRefusal {
    fn from(refusal: Refusal) -> Self {
        RunRefusal {
            refusal,
            record: None,
        }
    }
}

/// Outcome of [`crate::Store::update_run`].
pub type RunTransition = Result<RunRecord, Refusal>;

/// Which runs [`crate::Store::runs_where`] lists; `None` fields match every run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only this stack's runs (`NotFound` if there is no such stack).
    pub stack: Option<String>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only runs planned by this user, token id, or token name.
    pub author: Option<String>,
    /// Only runs whose commit (`git_head`) starts with this (lowercase hex).
    pub commit: Option<String>,
    /// Only runs planned for this change request (as the planner claims).
    pub change_request: Option<u64>,
    /// Only runs with this inputs' fingerprint (lowercase hex).
    pub fingerprint: Option<String>,
}

impl RunFilter {
    /// Whether a condition is matched on the records rather than in SQL (author, commit,
    /// change request, fingerprint): a listing then scans records that may not match.
    pub fn on_records(&self) -> bool {
        self.author.is_some()
            || self.commit.is_some()
            || self.change_request.is_some()
            || self.fingerprint.is_some()
    }

    /// Whether `run` passes the author and commit filters (the store filters stack and status
    /// in SQL). The author is the run's user, its token id, or its token name (`author` is
    /// "name (id)").
    pub fn matches(&self, run: &RunRecord) -> bool {
        let author_ok = self.author.as_deref().is_none_or(|a| {
            run.author_identity() == a
                || run.author_token == a
                || run
                    .author
                    .strip_prefix(a)
                    .is_some_and(|rest| rest.starts_with(" ("))
        });
        let commit_ok = self.commit.as_deref().is_none_or(|c| {
            run.git_head
                .as_deref()
                .is_some_and(|h| h.to_ascii_lowercase().starts_with(c))
        });
        let change_ok = self
            .change_request
            .is_none_or(|n| run.change_request == Some(n));
        let fingerprint_ok = self
            .fingerprint
            .as_deref()
            .is_none_or(|f| run.fingerprint == f);
        author_ok && commit_ok && change_ok && fingerprint_ok
    }
}
