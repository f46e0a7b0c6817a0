//! Governed runs: plan-phase tokens, run upload (the server judges the plan itself), review,
//! and the apply handshake that issues a run-bound token. Every transition is decided inside
//! `Store::update_run`, so two approvers or two appliers racing see one consistent run.
//!
//! **Invariant (docs/design.md 3):** a run is applied only if approved by enough approvers, none of
//! them its author; not expired; the stack's (lineage, serial) equals the planned one; the plan
//! artifact's hash equals the approved one; the caller may apply; and, when the caller sends its
//! checkout's fingerprint, it equals the run's.

use std::sync::Arc;

use airlock_core::inputs::{self, InputFile};
use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::state::StateSummary;
use airlock_core::Role;
use airlock_policy::analysis::{ChangeReport, Finding, Severity, Verdict};
use airlock_policy::gate::{
    self, ChangeEntry, GateError, GateInput, GateReport, Observer, PlanSource, ServerPolicySet,
};
use airlock_policy::plan::ChangeKind;
use airlock_policy::planfile::{lock_file_locks_providers, BinaryChange, PlanFile, PlanMode};
use airlock_policy::{config, plan, report};
use airlock_store::run_rules::{self, Actor, Checkout, Refused, Transition};
use airlock_store::{
    now_ms, NewAudit, NewGrant, NewToken, RunFilter, RunRecord, RunStatus, StackRecord,
    TokenRecord, VersionMeta,
};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_body, store_call};
use crate::auth::{Principal, RequestStack};
use crate::error::{ApiError, ApiResult};
use crate::stacks::existing_stack;
use crate::{firewall, run_upload, tokens, AppState};

/// Bounds on the repository policies one run makes the server evaluate.
const MAX_POLICY_FILES: usize = 200;
const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// Artifact names. The binary plan's is the store's: the store purges it when a run ends.
pub use airlock_store::PLAN_ARTIFACT;
pub const PLAN_JSON_ARTIFACT: &str = "plan.json";
const CONFIG_ARTIFACT: &str = "airlock.hcl";
const POLICIES_ARTIFACT: &str = "policies.json";
const LOCKFILE_ARTIFACT: &str = "terraform.lock.hcl";
const SUMMARY_ARTIFACT: &str = "summary.md";
const LOG_ARTIFACT: &str = "apply.log";
/// Parts of the apply log sent while Terraform runs: `apply.log.part.000000`, ... (artifacts are
/// immutable, so the live log is a sequence of them; the log sent at `finish` supersedes it).
const LOG_PART_PREFIX: &str = "apply.log.part.";
/// Most live log parts per run, and the largest part.
pub const MAX_LOG_PARTS: usize = 1000;
/// Largest live log part, in bytes (decoded).
pub const MAX_LOG_PART: usize = 256 * 1024;

fn b64(s: &str, what: &str) -> ApiResult<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| {
            ApiError::new(
                RefusalKind::BadRequest,
                format!("{what} is not valid base64: {e}"),
            )
        })
}

/// Most read stacks one plan-phase token may carry.
pub const MAX_READ_STACKS: usize = 32;

/// `POST /api/v1/stacks/{stack}/plan-token`'s optional body.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PlanTokenRequest {
    /// Other stacks whose state the plan may read (`terraform_remote_state`).
    #[serde(default)]
    read_stacks: Vec<String>,
}

/// The read stacks a plan-phase token of `planned` may be given, judged against its minter
/// `p` (never wider than the minter: docs/design.md invariant 4): at most [`MAX_READ_STACKS`]
/// exact, valid stack names (no globs), not the planned stack, each one `p` may read itself.
/// A refusal names the stack refused (none when the list is too long). Whether each exists is
/// the store's to say (the handler asks next).
pub fn judge_read_stacks(
    p: &Principal,
    planned: &str,
    requested: &[String],
) -> Result<Vec<String>, (Option<String>, Refusal)> {
    let bad = |r: &str, why: String| {
        let shown: String = r.chars().take(80).collect();
        (Some(shown), Refusal::new(RefusalKind::BadRequest, why))
    };
    if requested.len() > MAX_READ_STACKS {
        return Err((None, Refusal::new(RefusalKind::BadRequest, format!(
            "{} read stacks asked for; a plan phase may read at most {MAX_READ_STACKS} other stacks",
            requested.len()
        ))));
    }
    let mut out: Vec<String> = Vec::new();
    for r in requested {
        if r.contains(['*', '?', '[']) {
            return Err(bad(r, format!("read stack {:?} is a pattern: name each stack exactly (globs are not read stacks)", r.chars().take(80).collect::<String>())));
        }
        let name =
            airlock_core::StackName::parse(r).map_err(|e| bad(r, format!("read stack: {e}")))?;
        if name.as_str() == planned {
            return Err(bad(r, format!("read stack {name} is the planned stack itself, which its plan phase reads anyway")));
        }
        if !p.may_read(name.as_str()) {
            return Err((Some(name.to_string()), Refusal::new(RefusalKind::Forbidden, format!(
                "read stack {name} refused: token {} may not read it itself (scoped to {:?}), and a plan-phase token is never wider than the token that mints it; nothing was minted",
                p.name, p.stacks
            ))));
        }
        if !out.iter().any(|o| o == name.as_str()) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// `POST /api/v1/stacks/{stack}/plan-token`: a short-lived token that can read and lock the
/// stack for planning, and nothing else (it holds the agent role, scoped to this stack), and
/// read the state (only) of the read stacks the body names, each one the caller may read.
pub async fn plan_token(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.may_mint()?;
    // No body, `null` or `{}`: no read stacks.
    let req: PlanTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PlanTokenRequest::default()
    } else {
        parse_body::<Option<PlanTokenRequest>>(&body)?.unwrap_or_default()
    };
    existing_stack(&state, &p, stack.as_str()).await?;
    let refused = |at: Option<String>, r: Refusal| {
        let (state, p) = (Arc::clone(&state), p.clone());
        let at = at.unwrap_or_else(|| stack.to_string());
        async move { crate::stacks::deny(&state, &p, &at, "token.plan_phase", r).await }
    };
    let read_stacks = match judge_read_stacks(&p, stack.as_str(), &req.read_stacks) {
        Ok(r) => r,
        Err((at, r)) => return Err(refused(at, r).await),
    };
    for r in &read_stacks {
        let n = r.clone();
        if store_call(&state, move |st| st.stack(&n)).await?.is_none() {
            let why = format!("read stack {r} does not exist; name stacks that exist (`airlock stack list`); nothing was minted");
            return Err(refused(
                Some(r.clone()),
                Refusal::new(RefusalKind::UnknownStack, why),
            )
            .await);
        }
    }
    let g = tokens::generate();
    // Carries the caller's user, dies with the caller's token, and expires no later (the store
    // clamps it); counted against the user's phase-token limit.
    let token = NewToken {
        id: g.id.clone(),
        secret_hash: g.hash,
        name: format!("plan for {}", p.name),
        role: Role::Agent,
        stacks: vec![stack.to_string()],
        // Renewed while the planner reports (`plan_heartbeat`).
        expires_at: Some(now_ms() + state.config.plan_idle_ms()),
        created_by: p.display(),
        run_id: None,
        user: p.user.clone(),
        parent_id: Some(p.token_id.clone()),
        mint_limit: Some(tokens::phase_token_limit(
            p.role,
            state.config.agent_runs_per_hour,
        )),
        read_stacks: read_stacks.clone(),
        minted_by: Some(p.token_id.clone()),
        job_ref: None,
    };
    let audit = NewAudit::ok(
        &p.display(),
        "token.plan_phase",
        Some(stack.as_str()),
        json!({"token": g.id, "user": p.user, "parent": p.token_id, "read_stacks": read_stacks}),
    );
    let record = store_call(&state, move |st| st.create_token(token, audit)).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "token_id": g.id, "secret": g.secret, "expires_at": record.expires_at, "read_stacks": record.read_stacks, "heartbeat_ms": heartbeat_ms(state.config.plan_idle_ms()) }),
        ),
    ))
}

/// A run upload's metadata: everything but the artifacts (the binary plan, its JSON and the
/// lock file), which arrive base64 in the same JSON object (`plan_b64`, `plan_json_b64`,
/// `lockfile_b64`) or as raw parts of a [`run_upload`] stream.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunMeta {
    fingerprint: String,
    /// The files the fingerprint covers; the server recomputes the fingerprint from them.
    inputs: Vec<InputFile>,
    terraform_version: String,
    planned_lineage: Option<String>,
    planned_serial: Option<u64>,
    /// The stack's directory relative to the repository root.
    planned_dir: Option<String>,
    git_head: Option<String>,
    git_base: Option<String>,
    /// The pull/merge request the planner says this is for, and its web URL (display and
    /// lookup only, like `git_head`).
    change_request: Option<u64>,
    change_request_url: Option<String>,
    /// Who the planner says wrote or pushed that change request (`github:alice`), author first;
    /// their users may not approve the run (`run_rules::approve`).
    #[serde(default)]
    change_authors: Vec<String>,
    /// Text of the repository's airlock.hcl, judged with the plan.
    config: Option<String>,
    /// The repository's Rego policies (`policy/**.rego`), judged with the plan.
    #[serde(default)]
    policies: Vec<PolicyFile>,
    /// The planning mode the planner says it used (`normal`, `destroy`, `refresh-only`): a
    /// claim, checked against the binary plan, which alone decides how the run is judged.
    #[serde(default)]
    plan_mode: Option<String>,
    /// The id of the plan-phase token the plan was made with (minted by the uploading token
    /// for this stack): the run records what that token could read besides the stack.
    #[serde(default)]
    plan_token: Option<String>,
}

#[derive(Deserialize, serde::Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    path: String,
    text: String,
}

/// What the run is judged against besides the plan: the repository's policy as uploaded (and
/// tied to the fingerprint) and, for the policy-change report, the last applied run's.
struct JudgeInput {
    config: Option<String>,
    policies: Vec<PolicyFile>,
    previous: Option<(Option<String>, Vec<PolicyFile>)>,
    stack: StackRecord,
    /// The stack's current state, when it has one (to see what changed outside Terraform).
    current_state: Option<Arc<StateSummary>>,
    /// The server's policy sets whose glob matches the stack.
    server_sets: Vec<ServerPolicySet>,
    /// Where the repository's Rego runs (`ServerConfig::rego_evaluator`).
    rego_evaluator: Option<std::path::PathBuf>,
}

/// The configuration embedded in the binary plan (what `terraform apply PLAN` runs, whatever
/// the checkout holds) must be the reviewed inputs: every embedded file of a local module is an
/// input with the same content, and every `.tf`/`.tf.json` input in those modules' directories
/// is embedded. The apply's fingerprint check then ties the inputs to CI's checkout.
fn check_embedded_config(binary: &PlanFile, meta: &RunMeta) -> ApiResult<()> {
    let planned_dir = meta.planned_dir.as_deref().unwrap_or(".");
    let listed: std::collections::BTreeMap<&str, &str> = meta
        .inputs
        .iter()
        .map(|f| (f.path.as_str(), f.sha256.as_str()))
        .collect();
    let mut dirs = std::collections::BTreeSet::new();
    let mut embedded = std::collections::BTreeSet::new();
    for (path, content) in &binary.config_files {
        let repo_path = inputs::join(planned_dir, path);
        let sha = InputFile::of(&repo_path, content).sha256;
        let empty_lock = path == ".terraform.lock.hcl"
            && !listed.contains_key(repo_path.as_str())
            && !lock_file_locks_providers(content);
        if !empty_lock && listed.get(repo_path.as_str()) != Some(&sha.as_str()) {
            return Err(bad(format!(
                "the binary plan's embedded configuration file {repo_path} is not the one listed in the run's inputs: terraform apply would run configuration nobody reviewed"
            )));
        }
        if let Some((dir, _)) = repo_path.rsplit_once('/') {
            dirs.insert(dir.to_owned());
        } else {
            dirs.insert(String::new());
        }
        embedded.insert(repo_path);
    }
    for f in &meta.inputs {
        let (dir, name) = f.path.rsplit_once('/').unwrap_or(("", &f.path));
        if inputs::is_config_file(name) && dirs.contains(dir) && !embedded.contains(&f.path) {
            return Err(bad(format!(
                "input {} is not in the binary plan's embedded configuration: the plan was not made from the listed inputs",
                f.path
            )));
        }
    }
    Ok(())
}

/// The lock file sent with a run (stored as its `terraform.lock.hcl` artifact, what reviewers
/// see) must be byte-equal to the one the binary plan embeds: `terraform apply PLAN` pins
/// providers with the embedded one (which [`check_embedded_config`] ties to the listed input).
fn check_lockfile(binary: &PlanFile, sent: &[u8]) -> ApiResult<()> {
    let embedded = binary
        .config_files
        .iter()
        .find(|(path, _)| path == ".terraform.lock.hcl")
        .map(|(_, content)| content.as_slice());
    match embedded {
        Some(e) if e == sent => Ok(()),
        Some(_) => Err(bad(
            "the terraform.lock.hcl sent is not the lock file the binary plan embeds (the one \
             terraform apply pins providers with): send the checkout's .terraform.lock.hcl \
             the plan was made with",
        )),
        None => Err(bad(
            "a terraform.lock.hcl was sent but the binary plan embeds no lock file",
        )),
    }
}

/// What a reviewer must know first about a refresh-only run (the summary's head line).
pub const ACCEPT_DRIFT: &str = "accept drift: a refresh-only plan. Applying it records in the state what changed outside Terraform (an instance deleted outside Terraform is dropped from the state, counted as destroyed; a changed one is updated) and changes no infrastructure";

fn accept_drift_note(mode: PlanMode) -> Vec<String> {
    match mode {
        PlanMode::RefreshOnly => vec![ACCEPT_DRIFT.to_owned()],
        PlanMode::Normal | PlanMode::Destroy => Vec::new(),
    }
}

/// An API answer about a run: `{"run": RUN, ...rest}`, written straight from the record, so the
/// run's report (its text, [`airlock_store::RawJson`]) is copied, not parsed into values and
/// printed again (`json!({"run": run})` did both on every answer; issue 17).
#[derive(serde::Serialize)]
pub struct WithRun {
    run: RunRecord,
    #[serde(flatten)]
    rest: Value,
}

impl WithRun {
    /// `rest` is a JSON object of the other members.
    fn new(run: RunRecord, rest: Value) -> WithRun {
        WithRun { run, rest }
    }
}

struct Judged {
    verdict: Verdict,
    report: airlock_store::RawJson,
    markdown: String,
    destroys: Vec<String>,
    moved_from: Vec<String>,
    unprotected_removals: Vec<(String, String)>,
    policy_changes: Vec<String>,
    required_approvals: u32,
    checks: Vec<String>,
    /// Whether applying the plan would change anything (a resource or root output change, a
    /// move or an import); a plan that changes nothing has nothing to approve or apply.
    changes_anything: bool,
    /// The binary plan's mode, for the record (`None` for a normal plan).
    plan_mode: Option<String>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(RefusalKind::BadRequest, msg)
}

/// The plan JSON's `output_changes`: name and actions (`plan::output_changes`).
fn json_outputs(plan_json: &[u8]) -> ApiResult<Vec<(String, Vec<String>)>> {
    plan::output_changes(plan_json).map_err(|e| bad(format!("plan JSON: {e}")))
}

/// The plan JSON's `resource_changes`, read as the gate reads plans (values are not kept).
/// Used for a refresh-only plan, whose judged entries are its `resource_drift`.
fn json_resource_changes(plan_json: &[u8]) -> ApiResult<Vec<BinaryChange>> {
    let mut out = Vec::new();
    plan::read_plan_section(plan_json, plan::Section::ResourceChanges, |rc| {
        out.push(BinaryChange::of(&rc))
    })
    .map_err(|e| bad(format!("plan JSON: {e}")))?;
    Ok(out)
}

fn parse_config(text: Option<&str>) -> ApiResult<config::Config> {
    match text {
        Some(text) => {
            config::parse(text, "airlock.hcl").map_err(|e| bad(format!("airlock.hcl: {e}")))
        }
        None => Ok(config::Config::default()),
    }
}

/// What the server does with each judged change besides the gate's own rules: the report's
/// entries and markdown, the binary-plan tie, the run's grant (destroys, moves) and the
/// stack's server-side protections.
struct RunObserver<'a> {
    stack: &'a StackRecord,
    changes: Vec<ChangeEntry>,
    md: report::Markdown,
    listed: Vec<BinaryChange>,
    destroys: Vec<String>,
    moved_from: Vec<String>,
    /// (from, to) of every `moved` instance: the stored object is at `to` in the prior state.
    moves: Vec<(String, String)>,
    server_protected: Vec<(String, String)>,
    /// (type, address) of removals the server does not protect (`RunRecord::unprotected_removals`).
    unprotected: Vec<(String, String)>,
    changes_anything: bool,
    /// The stack's stored state and the binary plan's prior state, to see what changed
    /// outside Terraform.
    states: Option<(Arc<StateSummary>, StateSummary)>,
    /// Findings known before the plan is read (policy weakening).
    before: Vec<Finding>,
    /// The plan is refresh-only: the changes seen are its drift, which the apply records.
    refresh_only: bool,
    /// The plan JSON's prior state: every change must start from it (but a refresh-only
    /// plan's drift entries, which start from the stored objects).
    prior_objects: plan::PriorObjects<'a>,
    /// Addresses the plan imports: their objects are in its prior state, not in the stored one.
    imported: Vec<String>,
    /// The first reason the plan JSON is not a plan Terraform makes (the upload is refused).
    untied: Option<String>,
}

impl RunObserver<'_> {
    /// The plan's prior state is the stack's state refreshed, never more: every object in it is
    /// a stored one at its address, one the plan imports, or a stored one at a new address (a
    /// `moved` block: declared in this plan, or applied already by a destroy plan's refresh; by
    /// its identity, it is no longer at its old address); otherwise the refusal (second). And no
    /// object is in two places: a prior object at X that is the object still stored at Y is a
    /// finding (what the plan does to X it does to Y's object), with Y's protection named.
    fn prior_is_the_stored_state(
        &self,
        stored: &StateSummary,
        prior: &StateSummary,
    ) -> (Vec<Finding>, Option<String>) {
        use airlock_core::state::{Instance, Mode};
        use std::collections::{HashMap, HashSet};
        type ObjectKey<'i> = (&'i str, &'i str, Option<[u8; 32]>, Option<[u8; 32]>);
        fn object(i: &Instance) -> Option<ObjectKey<'_>> {
            let o = &i.object;
            (o.id.is_some() || o.identity.is_some()).then_some((
                i.provider.as_str(),
                i.resource_type.as_str(),
                o.id,
                o.identity,
            ))
        }
        fn managed(s: &StateSummary) -> Vec<&Instance> {
            s.instances
                .iter()
                .filter(|i| i.mode == Mode::Managed)
                .collect()
        }
        fn key(i: &Instance) -> (&str, Option<&str>) {
            (i.address.as_str(), i.deposed.as_deref())
        }
        let (stored, prior) = (managed(stored), managed(prior));
        let stored_keys: HashSet<_> = stored.iter().map(|i| key(i)).collect();
        let prior_keys: HashSet<_> = prior.iter().map(|i| key(i)).collect();
        let mut by_object: HashMap<ObjectKey<'_>, Vec<&Instance>> = HashMap::new();
        for i in &stored {
            if let Some(k) = object(i) {
                by_object.entry(k).or_default().push(i);
            }
        }
        let mut found = Vec::new();
        let mut untied = None;
        for p in &prior {
            let elsewhere: Vec<&Instance> = object(p)
                .and_then(|k| by_object.get(&k))
                .into_iter()
                .flatten()
                .copied()
                .filter(|s| s.address != p.address)
                .collect();
            // The object still at its stored address too.
            let twin = elsewhere.iter().find(|y| prior_keys.contains(&key(y)));
            let at_home = stored_keys.contains(&key(p));
            let imported = p.deposed.is_none() && self.imported.contains(&p.address);
            let moved_here = (!elsewhere.is_empty() && twin.is_none())
                || self.moves.iter().any(|(from, to)| {
                    *to == p.address && stored_keys.contains(&(from.as_str(), p.deposed.as_deref()))
                });
            if !at_home && !imported && !moved_here {
                untied.get_or_insert(format!(
                    "the plan's prior state has {}, which the stack's state does not (the plan neither imports it nor moves it there)",
                    p.address
                ));
                continue;
            }
            if let Some(y) = twin {
                let protected =
                    firewall::protection_reason(&y.resource_type, &y.address, &self.stack.settings)
                        .map(|r| format!(", which the server protects ({r})"))
                        .unwrap_or_default();
                found.push(Finding {
                    rule: "same-object-twice".into(),
                    severity: Severity::Review,
                    address: Some(p.address.clone()),
                    message: format!(
                        "the plan's object at this address is the object stored at {}{protected}: what the plan does here it does to that object",
                        y.address
                    ),
                });
            }
        }
        (found, untied)
    }
}

impl Observer for RunObserver<'_> {
    fn change(&mut self, rc: &plan::ResourceChange, c: &ChangeReport) {
        let settings = &self.stack.settings;
        self.listed.push(BinaryChange::of(rc));
        // A refresh-only plan's judged entries are its drift: they start from the stored
        // objects, not from the prior (refreshed) state.
        if !self.refresh_only {
            if let Err(e) = self.prior_objects.check_before(rc) {
                self.untied.get_or_insert(e);
            }
        }
        if c.import {
            self.imported.push(c.address.clone());
        }
        self.changes_anything |= c.kind != ChangeKind::NoOp || c.moved_from.is_some() || c.import;
        if c.mode == "managed" && c.is_destructive() {
            match firewall::protection_reason(&c.resource_type, &c.address, settings) {
                Some(reason) => self.server_protected.push((c.address.clone(), reason)),
                None => self
                    .unprotected
                    .push((c.resource_type.clone(), c.address.clone())),
            }
            // A deposed object's delete destroys a real object too (left over from a failed
            // create_before_destroy): the run's grant must cover its address.
            if !self.destroys.contains(&c.address) {
                self.destroys.push(c.address.clone());
            }
        }
        if let Some(from) = &c.moved_from {
            match firewall::protection_reason(&c.resource_type, from, settings) {
                Some(reason) => self
                    .server_protected
                    .push((from.clone(), format!("{reason}; moved to {}", c.address))),
                None => self
                    .unprotected
                    .push((c.resource_type.clone(), from.clone())),
            }
            self.moved_from.push(from.clone());
            self.moves.push((from.clone(), c.address.clone()));
        }
        self.changes.extend(ChangeEntry::of(c));
        self.md.change(c);
    }

    fn findings(&mut self) -> Vec<Finding> {
        let stack = self.stack;
        let mut found = std::mem::take(&mut self.before);
        // A stored object that the refresh found gone, replaced or re-identified outside
        // Terraform (or that a forged prior state swapped): the apply's state write will drop
        // it, so reviewers must know, and for a protected one the run's grant must cover it.
        if let Some((stored, prior)) = &self.states {
            for inst in stored.removed_in(prior) {
                // Moved, not gone: the same object at its new address (the grant covers the
                // old one as moved from).
                let moved = self.moves.iter().any(|(from, to)| {
                    *from == inst.address
                        && prior.instances.iter().any(|p| {
                            p.address == *to && p.deposed == inst.deposed && inst.same_object(p)
                        })
                });
                if moved {
                    continue;
                }
                // A refresh-only run already shows (and its grant covers) what it drops.
                if self.refresh_only && self.destroys.contains(&inst.address) {
                    continue;
                }
                let reason = firewall::protection_reason(
                    &inst.resource_type,
                    &inst.address,
                    &stack.settings,
                );
                let what = match &reason {
                    Some(reason) => format!("protected instance ({reason})"),
                    None => "instance".to_owned(),
                };
                // Same address under another provider configuration (`provider = aws.eu`): the
                // object Terraform manages from now on may be another one.
                let reconfigured = prior.instances.iter().find(|p| {
                    p.address == inst.address
                        && p.deposed == inst.deposed
                        && p.provider != inst.provider
                });
                let message = match reconfigured {
                    Some(p) => format!("this {what} changes provider configuration, from {} to {}: the object found there may be another one; applying drops the stored object from the state", inst.provider, p.provider),
                    None => format!("the stored object of this {what} is gone or was replaced outside Terraform (the plan starts from another object there, or none); applying records that it no longer exists"),
                };
                found.push(Finding {
                    rule: "changed-outside-terraform".into(),
                    severity: Severity::Review,
                    address: Some(inst.address.clone()),
                    message,
                });
                // Dropping a protected object from the state needs this run's grant.
                if reason.is_some() && !self.destroys.contains(&inst.address) {
                    self.destroys.push(inst.address.clone());
                }
            }
        }
        match &self.states {
            Some((stored, prior)) => {
                let (more, untied) = self.prior_is_the_stored_state(stored, prior);
                found.extend(more);
                if let Some(e) = untied {
                    self.untied.get_or_insert(e);
                }
            }
            // An empty stack: the plan starts from no object but those it imports.
            None => {
                let extra = self.prior_objects.keys().find(|(address, deposed)| {
                    deposed.is_some() || !self.imported.contains(address)
                });
                if let Some((address, _)) = extra {
                    self.untied.get_or_insert(format!("the plan's prior state has {address}, but the stack has no state (and the plan does not import it)"));
                }
            }
        }
        for (address, reason) in std::mem::take(&mut self.server_protected) {
            found.push(Finding {
                rule: "server-protected".into(),
                severity: Severity::Review,
                address: Some(address),
                message: format!("removes an instance the server protects ({reason}); the apply gets a removal grant only through this run's approvals"),
            });
        }
        if stack.production && !self.destroys.is_empty() {
            // The server knows the stack is production even if the uploaded airlock.hcl does not.
            found.push(Finding {
                rule: "production-destroy".into(),
                severity: Severity::Review,
                address: None,
                message: format!(
                    "{} {} instance(s) on production stack {}",
                    match self.refresh_only {
                        true => "drops from the state (deleted outside Terraform)",
                        false => "destroys",
                    },
                    self.destroys.len(),
                    stack.name
                ),
            });
        }
        found
    }
}

/// The binary's backend is where `terraform apply PLAN` writes state: it must be airlock's http
/// backend for this stack (all three addresses one URL ending in `/state/{stack}`, default
/// workspace). The server cannot know every URL it is reached by (a `Host` header is the
/// uploader's to choose), so the exact URL is checked where it is known and trusted: by
/// `airlock apply`, against the `AIRLOCK_URL` CI uses.
fn check_backend(binary: &PlanFile, stack: &str) -> ApiResult<()> {
    let Some(backend) = &binary.backend else {
        return Err(bad("the binary plan names no backend"));
    };
    let address = backend.get("address").unwrap_or_default();
    if !address.ends_with(&format!("/state/{stack}")) {
        return Err(bad(format!(
            "the binary plan's backend address {address:?} is not a /state/{stack} of airlock: terraform apply would write state elsewhere"
        )));
    }
    backend.check_is(address).map_err(bad)
}

/// Root variables whose planned value is not the configuration's default: they come from
/// outside the code (`-var`, `TF_VAR_*`, or a var file) and decide what the apply does (provider
/// settings, provisioner commands) without showing in the resource changes. Approvers see each
/// one, with its value unless the variable is sensitive.
fn planner_variables(plan_json: &[u8]) -> ApiResult<Vec<Finding>> {
    let variables = plan::root_variables(plan_json).map_err(|e| bad(format!("plan JSON: {e}")))?;
    Ok(variables
        .iter()
        .filter(|v| !v.is_default())
        .map(|v| {
            let shown = if v.sensitive {
                "(sensitive)".to_owned()
            } else {
                v.shown(200)
            };
            Finding {
                rule: "planner-variable".into(),
                severity: Severity::Review,
                address: None,
                message: format!(
                    "variable {} = {shown} comes from the planner (-var, TF_VAR_ or a var file), not the code's default: check it is what the reviewed files say",
                    v.name
                ),
            }
        })
        .collect())
}

/// Room a plan's prior state has beyond twice the stack's state.
const PRIOR_STATE_SLACK: usize = 16 * 1024 * 1024;

/// A plan's prior state is the stack's current state as the plan's refresh saw it (the binary
/// was made against its lineage and serial, `check_binary`), so it is about as large; the
/// server reads it as a state to judge the plan. A planner, an agent included, chooses its
/// bytes, and a plan member inflates to 256 MiB from a small upload: one far larger than the
/// stack's state (twice it, and 16 MiB) is refused before it is read.
fn prior_state_in_proportion(binary: &PlanFile, current: Option<&VersionMeta>) -> ApiResult<()> {
    let stored = current.map_or(0, |v| usize::try_from(v.size).unwrap_or(usize::MAX));
    let limit = stored.saturating_mul(2).saturating_add(PRIOR_STATE_SLACK);
    if binary.prior_state.len() > limit {
        return Err(bad(format!(
            "the binary plan's prior state is {} KB, the stack's state {} KB: a plan's refresh does not grow a state that much (at most twice it and 16 MB here); plan again against the current state",
            binary.prior_state.len() / 1000,
            stored / 1000
        )));
    }
    Ok(())
}

/// The checks on the binary plan alone, made as soon as it has arrived (before its JSON): it
/// parses (its zip members inflating to at most `limit` in all: the uploader's own limit for
/// the whole upload, which a zip inside it would otherwise escape), its plan did not error, it
/// was made against the planned lineage and serial by the claimed Terraform version, from the
/// listed inputs, for this stack's backend.
fn check_binary(
    plan_bin: &[u8],
    limit: usize,
    meta: &RunMeta,
    stack: &StackRecord,
) -> ApiResult<PlanFile> {
    let binary = PlanFile::parse_within(plan_bin, limit).map_err(|e| bad(e.to_string()))?;
    if binary.errored {
        return Err(bad("the binary plan is from a plan that errored; it cannot be applied: fix the error and plan again"));
    }
    if let Some(claimed) = &meta.plan_mode {
        if PlanMode::parse(claimed) != Some(binary.mode) {
            return Err(bad(format!(
                "the binary plan is a {} plan, not the {claimed:?} plan its metadata says: plan again",
                binary.mode.as_str()
            )));
        }
    }
    // A refresh-only plan changes no resource (Terraform makes none): its drift is what the
    // apply records, and that is what the run is judged by.
    if let Some(c) = binary.refresh_only_change() {
        return Err(bad(format!(
            "the binary plan is refresh-only but {} {}: Terraform makes no such plan",
            c.actions.join("+"),
            c.address
        )));
    }
    let prior = binary.planned_against();
    let planned = (meta.planned_lineage.clone(), meta.planned_serial);
    if prior != planned {
        return Err(bad(format!(
            "the binary plan was made against lineage {:?} serial {:?}, not the planned_lineage/planned_serial sent with it ({:?} {:?})",
            prior.0, prior.1, planned.0, planned.1
        )));
    }
    if binary.terraform_version != meta.terraform_version {
        return Err(bad(format!(
            "the binary plan was made by terraform {}, not the terraform_version {} sent with it",
            binary.terraform_version, meta.terraform_version
        )));
    }
    check_embedded_config(&binary, meta)?;
    check_backend(&binary, &stack.name)?;
    Ok(binary)
}

/// Runs the plan gate over the uploaded plan JSON, after proving that the JSON describes the
/// binary plan that will be applied (`binary`, already through [`check_binary`]). The stack's
/// server-side protections, its production flag, the repository's Rego policies and the
/// server's policy sets for the stack all take part; nothing in the upload can lower them.
fn judge(binary: &PlanFile, plan_json: &[u8], input: JudgeInput) -> ApiResult<Judged> {
    let stack = &input.stack;
    let prior = binary.planned_against();
    let variable_findings = planner_variables(plan_json)?;
    let cfg = parse_config(input.config.as_deref())?;
    let stack_cfg = cfg.stack(&stack.name);
    let mut policy_changes = Vec::new();
    if let Some((old_text, old_policies)) = &input.previous {
        let old = parse_config(old_text.as_deref()).unwrap_or_default();
        policy_changes.extend(config::weakening(&old, &cfg, &stack.name));
        for p in old_policies {
            match input.policies.iter().find(|n| n.path == p.path) {
                None => policy_changes.push(format!("removes policy file {}", p.path)),
                Some(n) if n.text != p.text => {
                    policy_changes.push(format!("changes policy file {}", p.path))
                }
                Some(_) => {}
            }
        }
    }
    let rego: Vec<(String, String)> = input
        .policies
        .iter()
        .map(|p| (p.path.clone(), p.text.clone()))
        .collect();
    // The stored state and the plan's prior state, to see what changed outside Terraform. A
    // prior state the server cannot read is refused, not left unchecked (Terraform's reader is
    // more lenient: an unknown key must not switch the comparison off).
    let states = match &input.current_state {
        Some(stored) => Some((
            Arc::clone(stored),
            StateSummary::parse(&binary.prior_state).map_err(|e| {
                bad(format!(
                    "the binary plan's prior state does not read as a state: {e}"
                ))
            })?,
        )),
        None => None,
    };
    let prior_objects =
        plan::prior_objects(plan_json).map_err(|e| bad(format!("plan JSON: {e}")))?;
    let mut observer = RunObserver {
        stack,
        changes: Vec::new(),
        md: report::Markdown::new(),
        listed: Vec::new(),
        destroys: Vec::new(),
        moved_from: Vec::new(),
        moves: Vec::new(),
        server_protected: Vec::new(),
        unprotected: Vec::new(),
        changes_anything: false,
        states,
        before: policy_changes
            .iter()
            .map(|change| Finding {
                rule: "policy-weakened".into(),
                severity: Severity::Review,
                address: None,
                message: format!("this change {change} (compared with the last applied run)"),
            })
            .chain(variable_findings)
            .collect(),
        refresh_only: binary.mode == PlanMode::RefreshOnly,
        prior_objects,
        imported: Vec::new(),
        untied: None,
    };
    let sandboxed = input
        .rego_evaluator
        .clone()
        .map(|exe| crate::rego_sandbox::Sandboxed { exe });
    let gate_input = GateInput {
        config: &cfg,
        stack: stack_cfg,
        rego: &rego,
        rego_runner: match &sandboxed {
            Some(s) => s,
            None => &airlock_policy::rego::InProcess,
        },
        server_sets: &input.server_sets,
        refresh_only: binary.mode == PlanMode::RefreshOnly,
    };
    let decision = gate::judge(PlanSource::Bytes(plan_json), &gate_input, &mut observer).map_err(
        |e| match e {
            GateError::Plan(e) => bad(format!("plan JSON: {e}")),
            e => bad(e.to_string()),
        },
    )?;
    if let Some(e) = observer.untied {
        return Err(bad(format!(
            "the plan JSON is not a plan Terraform makes: {e}; plan again"
        )));
    }
    let mut listed = observer.listed;
    listed.sort();
    let outputs = json_outputs(plan_json)?;
    let changes_anything =
        observer.changes_anything || outputs.iter().any(|(_, actions)| actions != &["no-op"]);
    let tied = match binary.mode {
        // The judged entries are the drift; the resource changes (none) are tied too.
        PlanMode::RefreshOnly => binary
            .matches_json(&json_resource_changes(plan_json)?, &outputs)
            .and_then(|()| binary.matches_json_drift(&listed)),
        PlanMode::Normal | PlanMode::Destroy => binary.matches_json(&listed, &outputs),
    };
    tied.map_err(|e| {
        bad(format!(
            "the plan JSON does not describe the binary plan it was uploaded with: {e}"
        ))
    })?;
    let mut checks = vec![format!(
        "server: the judged plan JSON lists exactly the resource {}and output changes of the binary plan (tfplan protobuf), made by terraform {} against serial {}; its embedded configuration is the listed inputs{}",
        match binary.mode {
            PlanMode::RefreshOnly => "drift (a refresh-only plan: the apply records it in the state and changes no infrastructure), resource changes (none) ",
            PlanMode::Normal | PlanMode::Destroy => "",
        },
        binary.terraform_version,
        prior.1.map_or("none (empty stack)".into(), |s| s.to_string()),
        if binary.remote_modules.is_empty() {
            String::new()
        } else {
            format!(" (remote modules, pinned by their source and version only: {})", binary.remote_modules.join(", "))
        }
    )];
    if !rego.is_empty() {
        checks.push(format!(
            "server: {} repository Rego policy file(s) evaluated",
            rego.len()
        ));
    }
    if !input.server_sets.is_empty() {
        let ids: Vec<&str> = input.server_sets.iter().map(|s| s.id.as_str()).collect();
        checks.push(format!(
            "server: server policy set(s) {} evaluated",
            ids.join(", ")
        ));
    }
    let report = GateReport::new(observer.changes, &decision);
    let report = serde_json::value::to_raw_value(&report)
        .map(airlock_store::RawJson::from)
        .map_err(|e| ApiError::Internal(format!("report JSON: {e}")))?;
    let required = stack
        .settings
        .required_approvals
        .max(stack_cfg.map_or(1, |s| s.required_approvals))
        .max(1);
    // A protected object changed outside Terraform is recorded gone by the apply: that is a
    // change to approve even when the plan lists none.
    let changes_anything = changes_anything || !observer.destroys.is_empty();
    Ok(Judged {
        verdict: decision.verdict,
        markdown: observer
            .md
            .finish(&decision, &accept_drift_note(binary.mode)),
        report,
        destroys: observer.destroys,
        moved_from: observer.moved_from,
        unprotected_removals: observer.unprotected,
        policy_changes,
        required_approvals: required,
        checks,
        changes_anything,
        plan_mode: (binary.mode != PlanMode::Normal).then(|| binary.mode.as_str().to_owned()),
    })
}

/// Checks that the upload's inputs are consistent: the fingerprint is the digest of the listed
/// files, and the airlock.hcl and policies sent are exactly the listed ones.
fn check_inputs(req: &RunMeta) -> ApiResult<()> {
    inputs::validate(&req.inputs).map_err(|e| bad(format!("inputs: {e}")))?;
    if inputs::fingerprint(&req.terraform_version, &req.inputs)
        != req.fingerprint.to_ascii_lowercase()
    {
        return Err(bad(
            "the fingerprint is not the digest of the listed inputs",
        ));
    }
    let listed_config = req.inputs.iter().find(|f| f.path == inputs::CONFIG_PATH);
    let sent_config = req
        .config
        .as_deref()
        .map(|c| InputFile::of(inputs::CONFIG_PATH, c.as_bytes()));
    if listed_config != sent_config.as_ref() {
        return Err(bad("the airlock.hcl sent is not the airlock.hcl listed in the inputs: the run must be judged by the repository's own configuration"));
    }
    // Policies run on the server: bound what an uploader can make it evaluate.
    let policy_bytes: usize = req.policies.iter().map(|p| p.text.len()).sum();
    if req.policies.len() > MAX_POLICY_FILES || policy_bytes > MAX_POLICY_BYTES {
        return Err(bad(format!(
            "at most {MAX_POLICY_FILES} policy files of {} KiB in all are evaluated by the server",
            MAX_POLICY_BYTES / 1024
        )));
    }
    let listed: Vec<&InputFile> = req
        .inputs
        .iter()
        .filter(|f| inputs::is_policy_path(&f.path))
        .collect();
    let mut sent: Vec<InputFile> = req
        .policies
        .iter()
        .map(|p| InputFile::of(&p.path, p.text.as_bytes()))
        .collect();
    sent.sort();
    if listed.len() != sent.len() || listed.iter().zip(&sent).any(|(a, b)| *a != b) {
        return Err(bad("the policy files sent are not the policy/**.rego files listed in the inputs: the run must be judged by all of the repository's policies"));
    }
    if let Some(url) = &req.change_request_url {
        // Shown to approvers as a link: a bounded absolute http(s) URL, nothing a renderer could
        // read as something else.
        if url.len() > 2048
            || !(url.starts_with("https://") || url.starts_with("http://"))
            || url.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(bad(
                "change_request_url must be an http(s) URL of at most 2048 characters without spaces",
            ));
        }
    }
    if let Some(d) = &req.planned_dir {
        if d.len() > 1024
            || d.starts_with('/')
            || d.chars().any(char::is_control)
            || d.split('/').any(|seg| seg == "..")
        {
            return Err(bad(
                "planned_dir must be a relative path inside the repository",
            ));
        }
    }
    Ok(())
}

/// The configuration and policies of the stack's last applied run, if any.
/// The change authors a planner claims, checked and lower-cased, each once.
fn claimed_change_authors(logins: &[String]) -> ApiResult<Vec<String>> {
    if logins.len() > MAX_CHANGE_AUTHORS {
        return Err(bad(format!(
            "at most {MAX_CHANGE_AUTHORS} change_authors (the change request's author and pushers)"
        )));
    }
    let mut out: Vec<String> = Vec::new();
    for login in logins {
        let login = airlock_store::valid_forge_login(login).map_err(bad)?;
        if !out.contains(&login) {
            out.push(login);
        }
    }
    Ok(out)
}

fn previous_policy(
    st: &dyn airlock_store::Store,
    stack: &str,
) -> airlock_store::Result<Option<(Option<String>, Vec<PolicyFile>)>> {
    let applied = RunFilter {
        stack: Some(stack.to_owned()),
        status: Some(RunStatus::Applied),
        ..RunFilter::default()
    };
    let Some(last) = st.runs_where(&applied, 1)?.into_iter().next() else {
        return Ok(None);
    };
    let config = st
        .run_artifact(&last.id, CONFIG_ARTIFACT)?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let policies = st
        .run_artifact(&last.id, POLICIES_ARTIFACT)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Ok(Some((config, policies)))
}

/// Refuses an agent's upload once its user planned the server's `agent_runs_per_hour` runs in
/// the last hour, before the body is read. A run's plan JSON, logs and policies are kept for
/// good (they are what was reviewed; only the binary plan is purged, once the run ends), so an
/// agent uploading without bound would fill the server's disk. Counted from the store, so every replica sees the same runs;
/// uploads in flight at once may pass together (at most as many as are in flight).
async fn agent_within_run_rate(state: &Arc<AppState>, p: &Principal, stack: &str) -> ApiResult<()> {
    if p.role != Role::Agent {
        return Ok(());
    }
    let (user, since) = (p.user.clone(), now_ms() - 3_600_000);
    let planned =
        crate::stacks::blocking(state, move |st| st.runs_planned_since(&user, since)).await??;
    let most = state.config.agent_runs_per_hour;
    if planned < most {
        return Ok(());
    }
    let r = Refusal::new(
        RefusalKind::TooManyRequests,
        format!(
            "{} planned {planned} runs in the last hour: an agent's user plans at most {most} an hour (what a run reviewed is kept for good; the server's --agent-runs-per-hour); try again later, or have a person plan",
            p.user
        ),
    );
    Err(crate::stacks::deny(state, p, stack, "run.create", r).await)
}

/// `POST /api/v1/stacks/{stack}/runs`: uploads a planned run, as a [`run_upload`] stream
/// (`airlock plan`: raw, compressed, checked as it arrives) or as one JSON object with the
/// artifacts in base64. Both go through the same checks, in [`create_run`].
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    req: Request,
) -> ApiResult<(StatusCode, Json<WithRun>)> {
    let media = req.headers().get(header::CONTENT_TYPE).map(|v| {
        let v = v.to_str().unwrap_or("?");
        v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase()
    });
    let record = existing_stack(&state, &p, stack.as_str()).await?;
    agent_within_run_rate(&state, &p, stack.as_str()).await?;
    let (run, markdown) = match media.as_deref() {
        Some(run_upload::CONTENT_TYPE) => {
            let limit = state.config.run_upload_limit(p.role);
            let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(16);
            let (app, principal) = (Arc::clone(&state), p.clone());
            let pipeline = tokio::task::spawn_blocking(move || {
                let chunks =
                    run_upload::Chunks::new(std::iter::from_fn(move || rx.blocking_recv()));
                let reader = run_upload::Reader::new(
                    Box::new(chunks) as Box<dyn std::io::Read + Send>,
                    limit as u64,
                )
                .map_err(|e| upload_error(limit, e))?;
                create_run(&app, &principal, record, Parts::Stream(reader))
            });
            // The body goes to the pipeline as it arrives (the auth layer bounds its size). Once
            // the pipeline has its answer (a refusal before the end), the rest is read and
            // dropped, so that the client, still sending, gets to read the answer.
            let mut body = req.into_body();
            let mut forwarding = true;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let (Ok(data), true) = (frame.into_data(), forwarding) {
                            forwarding = tx.send(Ok(data)).await.is_ok();
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(upload_body_error(&e))).await;
                        break;
                    }
                }
            }
            drop(tx);
            pipeline
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??
        }
        None | Some("application/json") => {
            let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .map_err(|e| bad(format!("could not read the request body: {e}")))?;
            let parts = Parts::json(&body)?;
            drop(body);
            let (app, principal) = (Arc::clone(&state), p.clone());
            tokio::task::spawn_blocking(move || create_run(&app, &principal, record, parts))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??
        }
        Some(other) => {
            return Err(bad(format!(
                "a run upload is {} (what airlock plan sends) or application/json, not {other:?}",
                run_upload::CONTENT_TYPE
            )))
        }
    };
    Ok((
        StatusCode::CREATED,
        Json({
            let rest = json!({ "summary_markdown": markdown, "next": run_rules::next_step(&run) });
            WithRun::new(run, rest)
        }),
    ))
}

/// Why the body of a streamed upload stopped: the size limit (the auth layer bounds it by the
/// caller's role) or the connection.
fn upload_body_error(e: &axum::Error) -> std::io::Error {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = e.source();
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return std::io::Error::other(run_upload::BodyTooLarge);
        }
        source = s.source();
    }
    std::io::Error::other(format!("the upload stopped: {e}"))
}

/// The error of an unreadable [`run_upload`] stream: too large (as an oversized JSON upload is)
/// or malformed. `limit`: the caller's upload limit.
fn upload_error(limit: usize, e: run_upload::UploadError) -> ApiError {
    let mib = limit / (1024 * 1024);
    match e {
        run_upload::UploadError::TooLarge => ApiError::new(
            RefusalKind::TooLarge,
            format!("upload refused: it decompresses to more than the {mib} MiB this token may upload here (--max-agent-run-upload-mib / --max-run-upload-mib)"),
        ),
        run_upload::UploadError::Malformed(m) => bad(format!("run upload: {m}")),
    }
}

/// A run upload's parts, in the order the checks need them.
enum Parts {
    /// A JSON upload, decoded.
    Decoded {
        meta: Option<Box<RunMeta>>,
        plan: Vec<u8>,
        plan_json: Vec<u8>,
        lockfile: Option<Vec<u8>>,
    },
    /// A [`run_upload`] stream, read as the checks go.
    Stream(run_upload::Reader<Box<dyn std::io::Read + Send>>),
}

impl Parts {
    /// A JSON upload: the metadata plus `plan_b64`, `plan_json_b64` and `lockfile_b64`.
    fn json(body: &[u8]) -> ApiResult<Parts> {
        let mut obj: serde_json::Map<String, Value> = parse_body(body)?;
        let mut artifact = |field: &str, required: bool| -> ApiResult<Option<Vec<u8>>> {
            match obj.remove(field) {
                Some(Value::String(s)) => b64(&s, field).map(Some),
                None | Some(Value::Null) if !required => Ok(None),
                None => Err(bad(format!(
                    "invalid request body: missing field `{field}`"
                ))),
                Some(_) => Err(bad(format!(
                    "invalid request body: {field} must be a string"
                ))),
            }
        };
        let plan = artifact("plan_b64", true)?.unwrap_or_default();
        let plan_json = artifact("plan_json_b64", true)?.unwrap_or_default();
        let lockfile = artifact("lockfile_b64", false)?;
        let meta: RunMeta = serde_json::from_value(Value::Object(obj))
            .map_err(|e| bad(format!("invalid request body: {e}")))?;
        Ok(Parts::Decoded {
            meta: Some(Box::new(meta)),
            plan,
            plan_json,
            lockfile,
        })
    }

    fn meta(&mut self, limit: usize) -> ApiResult<RunMeta> {
        match self {
            Parts::Decoded { meta, .. } => meta
                .take()
                .map(|m| *m)
                .ok_or_else(|| ApiError::Internal("the run's metadata was read twice".into())),
            Parts::Stream(r) => {
                let bytes = r
                    .expect(run_upload::META)
                    .map_err(|e| upload_error(limit, e))?;
                parse_body(&bytes)
            }
        }
    }

    fn plan(&mut self, limit: usize) -> ApiResult<Vec<u8>> {
        match self {
            Parts::Decoded { plan, .. } => Ok(std::mem::take(plan)),
            Parts::Stream(r) => r
                .expect(run_upload::PLAN)
                .map_err(|e| upload_error(limit, e)),
        }
    }

    /// The lock file (if any) and the plan JSON, and the end of the upload.
    fn rest(self, limit: usize) -> ApiResult<(Option<Vec<u8>>, Vec<u8>)> {
        match self {
            Parts::Decoded {
                plan_json,
                lockfile,
                ..
            } => Ok((lockfile, plan_json)),
            Parts::Stream(mut r) => {
                let err = |e| upload_error(limit, e);
                let (name, content) = r.next_part().map_err(&err)?;
                let (lockfile, plan_json) = if name == run_upload::LOCKFILE {
                    (
                        Some(content),
                        r.expect(run_upload::PLAN_JSON).map_err(&err)?,
                    )
                } else if name == run_upload::PLAN_JSON {
                    (None, content)
                } else {
                    return Err(bad(format!(
                        "run upload: expected part {} or {}, got {name:?}",
                        run_upload::LOCKFILE,
                        run_upload::PLAN_JSON
                    )));
                };
                r.end().map_err(&err)?;
                Ok((lockfile, plan_json))
            }
        }
    }
}

/// The other stacks the run's plan phase could read, from the server's own records: the
/// uploader's read stacks when a plan-phase token uploads itself, else those of the plan-phase
/// token the upload names, which must be one the uploading token minted for this stack (a
/// name that is not is refused, so no run borrows another's record).
fn plan_read_stacks(
    st: &dyn airlock_store::Store,
    p: &Principal,
    stack: &str,
    plan_token: Option<&str>,
) -> ApiResult<Vec<String>> {
    let Some(id) = plan_token else {
        return Ok(p.read_stacks.clone());
    };
    if id == p.token_id {
        return Ok(p.read_stacks.clone());
    }
    match st.token(id)? {
        Some(t) if tokens::is_plan_token_of(&t, &p.token_id, stack) => Ok(t.read_stacks),
        _ => Err(bad(format!(
            "plan_token {:?} is not a plan-phase token the uploading token minted for {stack}",
            id.chars().take(80).collect::<String>()
        ))),
    }
}

/// Checks, judges and stores one uploaded run; runs on a blocking thread and reads the parts as
/// the checks need them, so a streamed upload's binary plan is checked (and the stack's policy
/// and state looked up) while its JSON is still being made and sent.
fn create_run(
    state: &AppState,
    p: &Principal,
    stack: StackRecord,
    mut parts: Parts,
) -> ApiResult<(RunRecord, String)> {
    let limit = state.config.run_upload_limit(p.role);
    let st = state.store.as_ref();
    let req = parts.meta(limit)?;
    let plan_read_stacks = plan_read_stacks(st, p, &stack.name, req.plan_token.as_deref())?;
    if req.fingerprint.len() != 64 || !req.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("fingerprint must be a hex SHA-256"));
    }
    check_inputs(&req)?;
    let plan_bin = parts.plan(limit)?;
    if plan_bin.is_empty() {
        return Err(bad("the binary plan and its JSON are both required"));
    }
    let binary = check_binary(&plan_bin, limit, &req, &stack)?;
    let previous = previous_policy(st, &stack.name)?;
    let current = st.current_version(&stack.name)?;
    prior_state_in_proportion(&binary, current.as_ref())?;
    // The stack's current state, through the server's summary cache (versions are immutable):
    // one that cannot be read is an error, never a stack without state (the plan's prior state
    // is checked against it).
    let current_state = current
        .map(|v| {
            crate::stacks::summary_for(state, &stack.name, &v.sha256, &|| {
                st.version_bytes(&stack.name, v.serial)
            })
        })
        .transpose()?;
    let server_sets = super::policies::for_stack(st, &stack.name)?;
    let (lockfile, plan_json) = parts.rest(limit)?;
    if plan_json.is_empty() {
        return Err(bad("the binary plan and its JSON are both required"));
    }
    if let Some(l) = &lockfile {
        check_lockfile(&binary, l)?;
    }
    let judged = judge(
        &binary,
        &plan_json,
        JudgeInput {
            config: req.config.clone(),
            policies: req.policies.clone(),
            previous,
            stack: stack.clone(),
            current_state,
            server_sets,
            rego_evaluator: state.config.rego_evaluator.clone(),
        },
    )?;
    let now = now_ms();
    let run = RunRecord {
        id: tokens::random_id("run_"),
        stack: stack.name.clone(),
        status: run_rules::initial_status(judged.verdict.as_str(), judged.changes_anything),
        author: p.display(),
        author_token: p.token_id.clone(),
        author_user: p.user.clone(),
        author_ref: p.job_ref.clone(),
        author_role: p.role.as_str().into(),
        created_at: now,
        updated_at: now,
        expires_at: now + run_rules::RUN_TTL_MS,
        fingerprint: req.fingerprint.to_ascii_lowercase(),
        terraform_version: req.terraform_version,
        planned_lineage: req.planned_lineage,
        planned_serial: req.planned_serial,
        git_head: req.git_head,
        git_base: req.git_base,
        change_request: req.change_request,
        change_request_url: req.change_request_url,
        change_authors: claimed_change_authors(&req.change_authors)?,
        plan_sha256: hex::encode(airlock_store::blob::sha256(&plan_bin)),
        config_sha256: req
            .config
            .as_deref()
            .map(|c| hex::encode(airlock_store::blob::sha256(c.as_bytes()))),
        decision: judged.verdict.as_str().into(),
        report: judged.report,
        destroys: judged.destroys,
        required_approvals: judged.required_approvals,
        approvals: Vec::new(),
        rejection: None,
        applied_by: None,
        apply_token: None,
        apply_started_at: None,
        apply_alive_until: None,
        finished_at: None,
        note: None,
        inputs: req.inputs,
        planned_dir: req.planned_dir,
        moved_from: judged.moved_from,
        unprotected_removals: Some(judged.unprotected_removals),
        policy_changes: judged.policy_changes,
        checks: judged.checks,
        plan_mode: judged.plan_mode,
        plan_checked_at: None,
        plan_read_stacks,
    };
    let audit = NewAudit::ok(
        &p.display(),
        "run.create",
        Some(&stack.name),
        run.created_detail(),
    );
    let markdown = judged.markdown;
    let policies_json = (!req.policies.is_empty())
        .then(|| serde_json::to_vec(&req.policies))
        .transpose()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut artifacts: Vec<(&str, &[u8])> = vec![
        (PLAN_ARTIFACT, &plan_bin),
        (PLAN_JSON_ARTIFACT, &plan_json),
        (SUMMARY_ARTIFACT, markdown.as_bytes()),
    ];
    if let Some(l) = &lockfile {
        artifacts.push((LOCKFILE_ARTIFACT, l));
    }
    if let Some(c) = &req.config {
        artifacts.push((CONFIG_ARTIFACT, c.as_bytes()));
    }
    if let Some(p) = &policies_json {
        artifacts.push((POLICIES_ARTIFACT, p));
    }
    st.create_run(&run, &artifacts, audit)?;
    Ok((run, markdown))
}

/// Who asks, as the run rules see it.
fn actor<'a>(p: &'a Principal, display: &'a str) -> Actor<'a> {
    Actor {
        token_id: &p.token_id,
        user: &p.user,
        display,
        role: p.role,
        run_id: p.run_id.as_deref(),
        job_ref: p.job_ref.as_deref(),
    }
}

/// Runs one transition of the state machine inside `Store::update_run`: the rule decides, the
/// store records (refusals that expire or supersede the run included).
async fn transition<F>(
    state: &Arc<AppState>,
    p: &Principal,
    id: &str,
    author_user: Option<String>,
    rule: F,
) -> ApiResult<RunRecord>
where
    F: FnMut(
            &RunRecord,
            &StackRecord,
            Option<&VersionMeta>,
            &[String],
            &Actor<'_>,
            i64,
        ) -> Result<Transition, Refused>
        + Send
        + 'static,
{
    let (principal, id, mut rule) = (p.clone(), id.to_owned(), rule);
    let result = store_call(state, move |st| {
        let display = principal.display();
        let who = actor(&principal, &display);
        st.update_run(&id, &mut |run, stack, current, revoked| {
            let run = &match &author_user {
                Some(user) => run.with_author_user(user),
                None => run.clone(),
            };
            let now = now_ms();
            run_rules::decided(
                rule(run, stack, current, revoked, &who, now),
                run,
                &who,
                now,
            )
        })
    })
    .await?;
    result.map_err(ApiError::Refused)
}

async fn load_run(state: &Arc<AppState>, p: &Principal, id: &str) -> ApiResult<RunRecord> {
    let i = id.to_owned();
    let run = store_call(state, move |st| st.run(&i))
        .await?
        .ok_or_else(|| ApiError::new(RefusalKind::NotFound, format!("no run {id}")))?;
    if !p.may_access(&run.stack) {
        return Err(ApiError::new(
            RefusalKind::Forbidden,
            format!("token {} is not scoped to stack {}", p.name, run.stack),
        ));
    }
    Ok(run)
}

/// `GET /api/v1/runs/{id}/artifacts/{name}`.
pub async fn artifact(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    // The plan files have routes of their own (`read-plan`); a name that reaches this one
    // spelled otherwise (`plan%2Ejson`) is not served here.
    if PLAN_FILES.contains(&name.as_str()) {
        return Err(ApiError::new(
            RefusalKind::NotFound,
            format!("run {id} has no artifact {name} at this path"),
        ));
    }
    serve_artifact(&state, &p, id, name).await
}

/// The artifacts that hold every root variable's value in clear (Terraform's plan format).
const PLAN_FILES: [&str; 2] = [PLAN_ARTIFACT, PLAN_JSON_ARTIFACT];

/// `GET /api/v1/runs/{id}/artifacts/plan.tfplan` (`read-plan`).
pub async fn plan_binary(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    serve_artifact(&state, &p, id, PLAN_FILES[0].to_owned()).await
}

/// `GET /api/v1/runs/{id}/artifacts/plan.json` (`read-plan`).
pub async fn plan_json(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    serve_artifact(&state, &p, id, PLAN_FILES[1].to_owned()).await
}

async fn serve_artifact(
    state: &Arc<AppState>,
    p: &Principal,
    id: String,
    name: String,
) -> ApiResult<Response> {
    load_run(state, p, &id).await?;
    let (i, n) = (id.clone(), name.clone());
    let bytes = store_call(state, move |st| st.run_artifact(&i, &n))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                RefusalKind::NotFound,
                format!("run {id} has no artifact {name}"),
            )
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::ETAG,
                format!("\"{}\"", hex::encode(airlock_store::blob::sha256(&bytes))),
            ),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// The user who planned `run`. Runs stored before users existed name only the author's token;
/// its user, as migration 0003 assigned it (a phase token has its minter's), is the author.
async fn author_user(state: &Arc<AppState>, run: &RunRecord) -> ApiResult<String> {
    if !run.author_user.is_empty() {
        return Ok(run.author_user.clone());
    }
    let t = run.author_token.clone();
    let found = store_call(state, move |st| st.token(&t)).await?;
    Ok(found.map_or_else(|| run.author_token.clone(), |t| t.user))
}

/// Most change authors (the author and pushers of a change request) a run may claim.
const MAX_CHANGE_AUTHORS: usize = 10;

/// The run's claimed change authors, each with the user its forge login belongs to now.
async fn change_authors(
    state: &Arc<AppState>,
    run: &RunRecord,
) -> ApiResult<Vec<run_rules::ChangeAuthor>> {
    let logins = run.change_authors.clone();
    store_call(state, move |st| {
        logins
            .into_iter()
            .map(|login| {
                let user = st.user_by_forge_login(&login)?;
                Ok(run_rules::ChangeAuthor { login, user })
            })
            .collect()
    })
    .await
}

/// Longest `author` filter accepted.
const MAX_AUTHOR_FILTER: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    stack: Option<String>,
    status: Option<String>,
    author: Option<String>,
    commit: Option<String>,
    change_request: Option<u64>,
    fingerprint: Option<String>,
    limit: Option<u32>,
}

impl ListQuery {
    /// The store filter, after checking every parameter (all bounded).
    fn filter(self) -> ApiResult<RunFilter> {
        if let Some(s) = &self.stack {
            airlock_core::StackName::parse(s).map_err(|e| bad(e.to_string()))?;
        }
        let status = match self.status.as_deref() {
            None => None,
            Some(name) => Some(RunStatus::parse(name).ok_or_else(|| {
                let known: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                bad(format!(
                    "unknown run status {name:?}; one of: {}",
                    known.join(", ")
                ))
            })?),
        };
        if let Some(a) = &self.author {
            if a.is_empty() || a.len() > MAX_AUTHOR_FILTER || a.chars().any(char::is_control) {
                return Err(bad(format!(
                    "author must be a user, token id or token name of 1-{MAX_AUTHOR_FILTER} characters"
                )));
            }
        }
        let commit = match self.commit {
            None => None,
            Some(c) if (4..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(c.to_ascii_lowercase())
            }
            Some(_) => {
                return Err(bad(
                    "commit must be a git commit hash or a prefix of one (4-64 hex characters)",
                ))
            }
        };
        let fingerprint = match self.fingerprint {
            None => None,
            Some(f) if f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(f.to_ascii_lowercase())
            }
            Some(_) => return Err(bad("fingerprint must be a hex SHA-256")),
        };
        Ok(RunFilter {
            stack: self.stack,
            status,
            author: self.author,
            commit,
            change_request: self.change_request,
            fingerprint,
        })
    }
}

/// `GET /api/v1/runs?stack=S&status=T&author=U&commit=C&change_request=N&fingerprint=F&limit=N`:
/// newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let filter = q.filter()?;
    let runs = store_call(&state, move |st| st.runs_where(&filter, limit)).await?;
    let visible: Vec<Value> = runs
        .into_iter()
        .filter(|r| p.may_access(&r.stack))
        .map(|r| json!({"id": r.id, "stack": r.stack, "status": r.status, "decision": r.decision, "author": r.author, "author_user": r.author_identity(), "git_head": r.git_head, "git_base": r.git_base, "change_request": r.change_request, "fingerprint": r.fingerprint, "terraform_version": r.terraform_version, "planned_dir": r.planned_dir, "created_at": r.created_at, "destroys": r.destroys.len(), "approvals": r.valid_approvers().len(), "required_approvals": r.required_approvals}))
        .collect();
    Ok(Json(json!({ "runs": visible })))
}

/// `GET /api/v1/runs/{id}`: the run, and whether it is still current.
pub async fn show(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<WithRun>> {
    let run = load_run(&state, &p, &id).await?;
    let (s, i) = (run.stack.clone(), id.clone());
    let (stack, current, artifacts) = store_call(&state, move |st| {
        Ok((
            st.stack(&s)?,
            st.current_version(&s)?,
            st.run_artifact_infos(&i)?,
        ))
    })
    .await?;
    let current_ok = stack
        .as_ref()
        .is_some_and(|st| run_rules::is_current(&run, st, current.as_ref()));
    let next = run_rules::next_step(&run);
    // What "N approvals" counts and who may never approve, as the run rules decide them.
    let (author, valid) = (run.author_identity(), run.valid_approvers());
    // The binary plan as stored: its tombstone once the run ended (`purged_at`).
    let plan_file = artifacts.iter().find(|a| a.name == PLAN_ARTIFACT).map(
        |a| json!({"name": a.name, "sha256": a.sha256, "bytes": a.len, "purged_at": a.purged_at}),
    );
    let rest = json!({ "current": current_ok, "stack_serial": current.map(|v| v.serial), "next": next, "author_user": author, "valid_approvers": valid, "plan_file": plan_file });
    Ok(Json(WithRun::new(run, rest)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    confirm_destroy: Option<u64>,
    /// The plan hash the approver reviewed; when sent, it must be the run's.
    plan_sha256: Option<String>,
}

/// `POST /api/v1/runs/{id}/approve`.
pub async fn approve(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<WithRun>> {
    let req: ApproveRequest = if body.is_empty() {
        ApproveRequest::default()
    } else {
        parse_body(&body)?
    };
    let loaded = load_run(&state, &p, &id).await?;
    let author = author_user(&state, &loaded).await?;
    // The claims are fixed at upload; the logins' users are looked up now, so an admin who
    // maps a login unblocks (or blocks) the approvals that follow.
    let authors = change_authors(&state, &loaded).await?;
    let run = transition(
        &state,
        &p,
        &id,
        Some(author),
        move |run, stack, current, _, who, now| {
            run_rules::approve(
                run,
                stack,
                current,
                who,
                &authors,
                req.confirm_destroy,
                req.plan_sha256.as_deref(),
                now,
            )
        },
    )
    .await?;
    let next = run_rules::next_step(&run);
    Ok(Json(WithRun::new(run, json!({ "next": next }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectRequest {
    reason: String,
}

/// `POST /api/v1/runs/{id}/reject`.
pub async fn reject(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<WithRun>> {
    let req: RejectRequest = parse_body(&body)?;
    super::require_reason(&req.reason, "")?;
    load_run(&state, &p, &id).await?;
    let run = transition(&state, &p, &id, None, move |run, _, _, _, who, now| {
        run_rules::reject(run, who, &req.reason, now)
    })
    .await?;
    Ok(Json(WithRun::new(run, json!({}))))
}

/// `POST /api/v1/runs/{id}/withdraw`: the author's user (an agent included) withdraws its own
/// open run.
pub async fn withdraw(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<WithRun>> {
    let author = author_user(&state, &load_run(&state, &p, &id).await?).await?;
    let run = transition(&state, &p, &id, Some(author), |run, _, _, _, who, now| {
        run_rules::withdraw(run, who, now)
    })
    .await?;
    Ok(Json(WithRun::new(run, json!({}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    /// The applying checkout's input fingerprint: the merged code must be the reviewed code.
    fingerprint: String,
    /// The checkout's input files, so that a mismatch can name the files that differ.
    #[serde(default)]
    inputs: Vec<InputFile>,
}

/// `POST /api/v1/runs/{id}/apply`: checks invariant 3, moves the run to `applying`, and issues
/// a run-bound token (write this stack while the run applies; expires quickly) plus a removal
/// grant for exactly the instances the plan destroys.
pub async fn apply(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<WithRun>> {
    if body.is_empty() {
        return Err(bad("apply needs the checkout's input fingerprint: {\"fingerprint\": ..., \"inputs\": [...]} (airlock apply sends it)"));
    }
    let req: ApplyRequest = parse_body(&body)?;
    p.may_mint()?;
    let run = load_run(&state, &p, &id).await?;
    // The artifact as stored must still be the one that was planned and approved.
    let (i, name) = (id.clone(), PLAN_ARTIFACT);
    let stored = store_call(&state, move |st| st.run_artifact(&i, name))
        .await
        .ok()
        .flatten()
        .map(|b| hex::encode(airlock_store::blob::sha256(&b)));
    let token = tokens::generate();
    let token_id = token.id.clone();
    let author = author_user(&state, &run).await?;
    let idle_ms = state.config.apply_idle_ms();
    // The run-bound token is minted from the caller's and cannot outlive it.
    let limit = p.expires_at;
    let run = transition(
        &state,
        &p,
        &id,
        Some(author),
        // Approvals made with tokens revoked since do not count (`run_rules::start_apply`):
        // `revoked` is read in the transaction that starts the apply.
        move |run, stack, current, revoked, who, now| {
            // Removals judged unprotected that the stack protects now.
            let protected_since: Vec<String> = run
                .unprotected_removals
                .iter()
                .flatten()
                .filter(|(ty, address)| {
                    firewall::protection_reason(ty, address, &stack.settings).is_some()
                })
                .map(|(_, address)| address.clone())
                .collect();
            let checkout = Checkout {
                stored_plan_sha256: stored.as_deref(),
                fingerprint: &req.fingerprint,
                inputs: &req.inputs,
                revoked_approvals: revoked,
                protected_since: &protected_since,
            };
            let token = run_rules::ApplyToken {
                id: &token_id,
                idle_ms,
                limit,
            };
            run_rules::start_apply(run, stack, current, who, checkout, token, now)
        },
    )
    .await?;
    // The token and grant last as long as the run's applier reports (`heartbeat`).
    let expires_at = run_rules::alive_until(&run).unwrap_or_else(|| now_ms() + idle_ms);
    let new_token = NewToken {
        id: token.id.clone(),
        secret_hash: token.hash,
        name: format!("apply {}", run.id),
        role: Role::Ci,
        stacks: vec![run.stack.clone()],
        expires_at: Some(expires_at),
        created_by: p.display(),
        run_id: Some(run.id.clone()),
        user: p.user.clone(),
        parent_id: Some(p.token_id.clone()),
        // Not rate-limited: each needs an approved run, and failing here would strand the run.
        mint_limit: None,
        read_stacks: Vec::new(),
        minted_by: Some(p.token_id.clone()),
        job_ref: None,
    };
    // What the run's writes may drop: what the plan deletes or forgets, and where it moves
    // instances from. Used by the run-bound token only, for every write until the run finishes.
    let mut may_remove: Vec<String> = run
        .destroys
        .iter()
        .chain(&run.moved_from)
        .cloned()
        .collect();
    may_remove.sort();
    may_remove.dedup();
    let grant = (!may_remove.is_empty()).then(|| NewGrant {
        id: tokens::random_id("grant_"),
        addresses: may_remove,
        reason: format!(
            "run {} approved by {}",
            run.id,
            run.approvals
                .iter()
                .map(|a| a.by.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        created_by: p.display(),
        expires_at,
        run_id: Some(run.id.clone()),
    });
    let (actor, r) = (p.display(), run.clone());
    store_call(&state, move |st| {
        st.create_token(
            new_token,
            NewAudit::ok(
                &actor,
                "token.run_bound",
                Some(&r.stack),
                json!({"run": r.id, "expires_at": expires_at}),
            ),
        )?;
        if let Some(g) = grant {
            let audit = NewAudit::ok(
                &actor,
                "grant.create",
                Some(&r.stack),
                json!({"grant": g.id, "run": r.id, "addresses": g.addresses}),
            );
            st.create_grant(&r.stack, g, audit)?;
        }
        Ok(())
    })
    .await?;
    let rest = json!({
        "token": token.secret,
        "plan_sha256": run.plan_sha256,
        "heartbeat_ms": heartbeat_ms(idle_ms),
    });
    Ok(Json(WithRun::new(run, rest)))
}

/// How often an applier reports (`heartbeat`): ten times in the idle time, so that a few lost
/// reports never end an apply.
fn heartbeat_ms(idle_ms: i64) -> i64 {
    (idle_ms / 10).max(1)
}

/// Token `id`'s record, for the plan-phase token routes (which judge whose it is); 404 if none.
async fn plan_token_record(state: &Arc<AppState>, id: &str) -> ApiResult<TokenRecord> {
    let i = id.to_owned();
    store_call(state, move |st| st.token(&i))
        .await?
        .ok_or_else(|| {
            let shown: String = id.chars().take(80).collect();
            ApiError::new(
                RefusalKind::NotFound,
                format!("no plan-phase token {shown:?}"),
            )
        })
}

/// `POST /api/v1/stacks/{stack}/plan-token/{id}/heartbeat` (the token that minted plan-phase
/// token `id`): the plan goes on. The token's expiry moves on by the server's plan idle time
/// when a third of it has passed (`tokens::keep_plan_alive`; reports in between write
/// nothing), never past a day after its mint nor its minter's expiry, so a plan longer than the
/// token's first lifetime still releases its lock. Terraform's environment holds the
/// plan-phase token, not its minter, so a plan token taken from it cannot keep itself alive.
pub async fn plan_heartbeat(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let idle_ms = state.config.plan_idle_ms();
    let read = plan_token_record(&state, &id).await?;
    let answer = |t: &TokenRecord| {
        Json(json!({
            "token": t.id,
            "alive_until": t.expires_at,
            "heartbeat_ms": heartbeat_ms(idle_ms),
        }))
    };
    // The caller is the minter: its own expiry caps the plan token's.
    let bounds = (idle_ms, p.expires_at);
    let refused = |r| crate::stacks::deny(&state, &p, stack.as_str(), "token.plan_alive", r);
    let judged = tokens::keep_plan_alive(&read, &p.token_id, stack.as_str(), bounds, now_ms());
    let until = match judged {
        Ok(None) => return Ok(answer(&read)),
        Ok(Some(until)) => until,
        Err(r) => return Err(refused(r).await),
    };
    let audit = NewAudit::ok(
        &p.display(),
        "token.plan_alive",
        Some(stack.as_str()),
        json!({"token": read.id, "alive_until": until}),
    );
    let (i, minter, from) = (read.id.clone(), p.token_id.clone(), read.expires_at);
    let moved = store_call(&state, move |st| {
        st.keep_phase_token_until(&i, &minter, from, until, audit)
    })
    .await?;
    match moved {
        Some(t) => Ok(answer(&t)),
        // Moved by another report meanwhile, or revoked: judged again as it is now.
        None => {
            let now = plan_token_record(&state, &id).await?;
            match tokens::keep_plan_alive(&now, &p.token_id, stack.as_str(), bounds, now_ms()) {
                Ok(_) => Ok(answer(&now)),
                Err(r) => Err(refused(r).await),
            }
        }
    }
}

/// `DELETE /api/v1/stacks/{stack}/plan-token/{id}` (the token that minted plan-phase token
/// `id`): the plan is over, so its token is revoked now instead of living out its idle time:
/// what Terraform, the providers and the checkout's code held during the plan dies with it.
/// Ending a token already revoked changes nothing.
pub async fn end_plan_token(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    Path((_, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let read = plan_token_record(&state, &id).await?;
    if let Err(r) = tokens::minted_plan_token(&read, &p.token_id, stack.as_str()) {
        return Err(crate::stacks::deny(&state, &p, stack.as_str(), "token.plan_end", r).await);
    }
    if read.revoked_at.is_none() {
        let audit = NewAudit::ok(
            &p.display(),
            "token.plan_end",
            Some(stack.as_str()),
            json!({"token": read.id}),
        );
        store_call(&state, move |st| st.revoke_token(&read.id, audit)).await?;
        state.cache.forget_tokens();
    }
    Ok(Json(json!({"token": id, "revoked": true})))
}

/// `POST /api/v1/runs/{id}/heartbeat` (`apply-run`, the run's own run-bound token): the apply
/// goes on. The run's deadline, and with it the expiry of its run-bound token and removal
/// grant, moves on by the server's apply idle time when a third of it has passed
/// (`run_rules::keep_alive`; reports in between write nothing), never past
/// `run_rules::MAX_APPLY_MS` after the start nor the expiry of the token that started the
/// apply. A run not reported for past its deadline is abandoned: the sweep closes it as
/// `failed`.
pub async fn heartbeat(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let idle_ms = state.config.apply_idle_ms();
    let read = load_run(&state, &p, &id).await?;
    // The run's deadline never passes the expiry of the token that started the apply (the
    // run-bound token's minter), which the run-bound token cannot outlive.
    let minter = p.parent_id.clone();
    let limit = match minter {
        Some(m) => store_call(&state, move |st| st.token(&m))
            .await?
            .and_then(|t| t.expires_at),
        None => None,
    };
    // Judged first on the record as read, so that the many reports that move nothing take no
    // write transaction; a due one is judged again on the locked record, where a report that
    // finds nothing due any more (another moved the deadline meanwhile) writes nothing: the
    // closure refuses (the transaction rolls back) and `not_due` turns that into the answer.
    let display = p.display();
    let who = actor(&p, &display);
    let answer = |run: &RunRecord| {
        Json(json!({
            "run": run.id,
            "alive_until": run_rules::alive_until(run),
            "heartbeat_ms": heartbeat_ms(idle_ms),
        }))
    };
    match run_rules::keep_alive(&read, &who, idle_ms, limit, now_ms()) {
        Ok(None) => return Ok(answer(&read)),
        Err(r) => return Err(ApiError::new(r.kind(), r.message(&read, &who))),
        Ok(Some(_)) => {}
    }
    let (principal, i) = (p.clone(), id.clone());
    let run = store_call(&state, move |st| {
        let display = principal.display();
        let who = actor(&principal, &display);
        let mut not_due = None;
        let outcome = st.update_run(&i, &mut |run, _, _, _| {
            let now = now_ms();
            match run_rules::keep_alive(run, &who, idle_ms, limit, now) {
                Ok(Some(t)) => run_rules::decided(Ok(t), run, &who, now),
                // Nothing to move: nothing is written.
                Ok(None) => {
                    not_due = Some(run.clone());
                    Err(Refusal::new(RefusalKind::Conflict, "no renewal due").into())
                }
                Err(r) => run_rules::decided(Err(r), run, &who, now),
            }
        })?;
        Ok(match (outcome, not_due) {
            (Err(_), Some(run)) => Ok(run),
            (outcome, _) => outcome,
        })
    })
    .await?
    .map_err(ApiError::Refused)?;
    Ok(answer(&run))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FinishRequest {
    success: bool,
    log_b64: Option<String>,
    /// The check `airlock apply` made before applying, in words.
    plan_check: Option<String>,
}

/// After a run is applied, its `airlock.hcl` is the repository's policy in force: the stack
/// records that file's `protect` rules, so that the state firewall refuses a direct write that
/// drops what the repository protects, as the plan gate refuses a plan that destroys it.
async fn record_repository_protection(
    state: &Arc<AppState>,
    actor: &str,
    run: &RunRecord,
) -> ApiResult<()> {
    let (id, name) = (run.id.clone(), run.stack.clone());
    let config = store_call(state, move |st| st.run_artifact(&id, CONFIG_ARTIFACT)).await?;
    let cfg = parse_config(config.as_deref().map(String::from_utf8_lossy).as_deref())?;
    let stack = store_call(state, move |st| st.stack(&name))
        .await?
        .ok_or_else(|| ApiError::new(RefusalKind::NotFound, format!("no stack {}", run.stack)))?;
    let mut settings = stack.settings.clone();
    settings.repository_protect_types = cfg.protect.types.clone();
    settings.repository_protect_addresses = cfg.protect.addresses.clone();
    if settings == stack.settings {
        return Ok(());
    }
    let audit = NewAudit::ok(
        actor,
        "stack.repository_protect",
        Some(&run.stack),
        json!({"run": run.id, "types": settings.repository_protect_types, "addresses": settings.repository_protect_addresses}),
    );
    let name = run.stack.clone();
    store_call(state, move |st| {
        st.update_stack_settings(&name, settings, audit)
    })
    .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogPart {
    log_b64: String,
}

/// `POST /api/v1/runs/{id}/log`: the next part of the apply log, while the run applies, from the
/// principal applying it (what `finish` admits), so approvers can follow the apply live.
pub async fn log_part(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: LogPart = parse_body(&body)?;
    let bytes = b64(&req.log_b64, "log_b64")?;
    if bytes.len() > MAX_LOG_PART {
        return Err(bad(format!(
            "a log part is at most {MAX_LOG_PART} bytes; send more parts"
        )));
    }
    let run = load_run(&state, &p, &id).await?;
    let display = p.display();
    let who = actor(&p, &display);
    if run.status != RunStatus::Applying {
        return Err(ApiError::new(
            RefusalKind::Conflict,
            format!(
                "run {id} is {}, not applying: its log is complete",
                run.status.as_str()
            ),
        ));
    }
    run_rules::may_finish(&run, &who)
        .map_err(|r| ApiError::new(r.kind(), r.message(&run, &who)))?;
    let i = id.clone();
    let part = store_call(&state, move |st| {
        let n = st
            .run_artifact_names(&i)?
            .iter()
            .filter(|n| n.starts_with(LOG_PART_PREFIX))
            .count();
        if n >= MAX_LOG_PARTS {
            return Ok(None);
        }
        st.put_run_artifact(&i, &format!("{LOG_PART_PREFIX}{n:06}"), &bytes)?;
        Ok(Some(n))
    })
    .await?;
    match part {
        Some(n) => Ok(Json(json!({ "part": n }))),
        None => Err(ApiError::new(
            RefusalKind::Conflict,
            format!("run {id} has {MAX_LOG_PARTS} log parts already; the rest arrives with finish"),
        )),
    }
}

/// `GET /api/v1/runs/{id}/log`: the apply log: the one sent at `finish`, or, while the run
/// applies, the parts received so far (empty before any).
pub async fn log(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    load_run(&state, &p, &id).await?;
    let i = id.clone();
    let log = store_call(&state, move |st| {
        if let Some(full) = st.run_artifact(&i, LOG_ARTIFACT)? {
            return Ok(full);
        }
        let mut out = Vec::new();
        for name in st.run_artifact_names(&i)? {
            if name.starts_with(LOG_PART_PREFIX) {
                out.extend(st.run_artifact(&i, &name)?.unwrap_or_default());
            }
        }
        Ok(out)
    })
    .await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from(log),
    )
        .into_response())
}

/// `POST /api/v1/runs/{id}/finish`: records the outcome and log, revokes the run-bound token,
/// and supersedes every other open run of the stack.
pub async fn finish(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<WithRun>> {
    let req: FinishRequest = parse_body(&body)?;
    let run = load_run(&state, &p, &id).await?;
    let display = p.display();
    // Checked before the log is stored; decided again in the transaction.
    let who = actor(&p, &display);
    run_rules::may_finish(&run, &who)
        .map_err(|r| ApiError::new(r.kind(), r.message(&run, &who)))?;
    if let Some(log) = &req.log_b64 {
        let bytes = b64(log, "log_b64")?;
        let i = id.clone();
        // A second finish must not replace the first log.
        let _ = store_call(&state, move |st| {
            st.put_run_artifact(&i, LOG_ARTIFACT, &bytes)
        })
        .await;
    }
    let run = transition(
        &state,
        &p,
        &id,
        None,
        move |run, _, current, _, who, now| {
            run_rules::finish(
                run,
                current,
                who,
                req.success,
                req.plan_check.as_deref(),
                now,
            )
        },
    )
    .await?;
    let actor = display;
    if let Some(t) = run.apply_token.clone() {
        let audit = NewAudit::ok(
            &actor,
            "token.revoke",
            Some(&run.stack),
            json!({"token": t, "run": run.id}),
        );
        store_call(&state, move |st| st.revoke_token(&t, audit)).await?;
        state.cache.forget_tokens();
    }
    if run.status == RunStatus::Applied {
        record_repository_protection(&state, &actor, &run).await?;
    }
    let (applied, a) = (run.clone(), actor.clone());
    store_call(&state, move |st| {
        // Only the open runs are read (by status, in SQL): not the stack's whole history.
        let mut open = Vec::new();
        for status in [RunStatus::NeedsApproval, RunStatus::Approved] {
            let filter = RunFilter {
                stack: Some(applied.stack.clone()),
                status: Some(status),
                ..RunFilter::default()
            };
            open.extend(st.runs_where(&filter, 500)?);
        }
        for other in open
            .into_iter()
            .filter(|r| r.status.is_open() && r.id != applied.id)
        {
            let _ = st.update_run(&other.id, &mut |r, _, _, _| {
                let who = Actor {
                    token_id: "",
                    user: "",
                    display: &a,
                    role: Role::Ci,
                    run_id: None,
                    job_ref: None,
                };
                let now = now_ms();
                run_rules::decided(run_rules::supersede(r, &applied, now), r, &who, now)
            });
        }
        Ok(())
    })
    .await?;
    Ok(Json(WithRun::new(run, json!({}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanCheckRequest {
    /// SHA-256 of the binary plan the check was made of: the run's approved plan.
    plan_sha256: String,
    /// The check, in words (recorded with the run's checks).
    check: String,
}

/// Wakes this process's state LOCKs that wait for a run's plan check (a wait served by another
/// replica sees the check at its next read of the store).
static PLAN_CHECKED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// `POST /api/v1/runs/{id}/plan-check`: the run's own run-bound token records that `terraform
/// show -json` of the approved plan equals the reviewed plan JSON ([`run_rules::plan_checked`]).
/// Only then does the state take that token's lock for applying (see [`apply_gate`]).
pub async fn plan_check(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let req: PlanCheckRequest = parse_body(&body)?;
    load_run(&state, &p, &id).await?;
    let run = transition(&state, &p, &id, None, move |run, _, _, _, who, now| {
        run_rules::plan_checked(run, who, &req.plan_sha256, &req.check, now)
    })
    .await?;
    PLAN_CHECKED.notify_waiters();
    Ok(Json(json!({
        "run": {"id": run.id, "status": run.status, "plan_checked_at": run.plan_checked_at}
    })))
}

/// Whether a run-bound token may lock its stack for applying, and write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyGate {
    /// Its run applies this stack and the plan check is recorded.
    Open,
    /// Its run applies this stack; the plan check is not recorded (yet).
    Unchecked,
    /// Its run is not applying this stack (finished, failed its check, another stack): why.
    Closed(String),
}

/// How long a run-bound token's LOCK for applying waits for its run's plan check before it is
/// answered 423 (Terraform retries a 423 until its `-lock-timeout`).
const PLAN_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a waiting LOCK reads its run again (for a check recorded through another replica;
/// one recorded through this process wakes it at once).
const PLAN_CHECK_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The gate on run-bound tokens' state locks for applying and writes: their run must be
/// applying this stack and its applier's plan check recorded ([`plan_check`]), as read from
/// the store (so every replica agrees). `wait`: a LOCK waits for the check (at most
/// [`PLAN_CHECK_WAIT`]) while the run applies unchecked; a write never waits.
pub async fn apply_gate(
    state: &Arc<AppState>,
    run_id: &str,
    stack: &str,
    wait: bool,
) -> ApiResult<ApplyGate> {
    let deadline = tokio::time::Instant::now()
        + if wait {
            PLAN_CHECK_WAIT
        } else {
            Default::default()
        };
    loop {
        // Registered before the read, so a check recorded after it wakes this wait.
        let checked = PLAN_CHECKED.notified();
        tokio::pin!(checked);
        checked.as_mut().enable();
        let id = run_id.to_owned();
        let run = store_call(state, move |st| st.run(&id)).await?;
        let gate = match run {
            Some(r) if r.stack == stack && r.status == RunStatus::Applying => {
                if r.plan_checked_at.is_some() {
                    ApplyGate::Open
                } else {
                    ApplyGate::Unchecked
                }
            }
            Some(r) if r.stack == stack => ApplyGate::Closed(format!(
                "run {run_id} is {}, not applying",
                r.status.as_str()
            )),
            _ => ApplyGate::Closed(format!("run {run_id} is not a run of stack {stack}")),
        };
        let now = tokio::time::Instant::now();
        if gate != ApplyGate::Unchecked || now >= deadline {
            return Ok(gate);
        }
        tokio::select! {
            _ = checked => {}
            _ = tokio::time::sleep(PLAN_CHECK_POLL.min(deadline - now)) => {}
        }
    }
}
