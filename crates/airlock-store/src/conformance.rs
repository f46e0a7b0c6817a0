//! The store conformance suite: behaviour every engine must have, run by each engine's tests
//! against a fresh, empty store. Panics (it is test code) with the failing check's name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use airlock_core::audit::{verify_chain, ChainVerifier, GENESIS};
use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::Role;
use serde_json::json;

use crate::*;

fn audit(action: &str) -> NewAudit {
    NewAudit::ok("test", action, None, json!({}))
}

fn state(serial: u64, lineage: &str, n: usize) -> Vec<u8> {
    let resources: Vec<_> = (0..n)
        .map(|i| json!({"mode":"managed","type":"terraform_data","name":format!("r{i}"),"provider":"p","instances":[{"attributes":{"id":format!("{i}")}}]}))
        .collect();
    serde_json::to_vec_pretty(&json!({"version":4,"terraform_version":"1.11.4","serial":serial,"lineage":lineage,"outputs":{},"resources":resources,"check_results":null})).unwrap()
}

fn attempt(body: Vec<u8>, serial: u64) -> WriteAttempt {
    WriteAttempt {
        body: crate::blob::StateBody::new(body),
        serial,
        lineage: "lin".into(),
        author: "t".into(),
        lock_id: None,
        run_id: None,
        reason: None,
        restored_from: None,
    }
}

/// Racing calls of one round: exactly one succeeded, and every other was refused as `refused`
/// says.
fn one_won<T: std::fmt::Debug>(
    round: usize,
    results: &[Result<T>],
    refused: impl Fn(&StoreError) -> bool,
) {
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "round {round}: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().err().is_none_or(&refused)),
        "round {round}: {results:?}"
    );
}

fn store_it(_: &WriteContext<'_>) -> Result<WriteDecision, Refusal> {
    Ok(WriteDecision::Store {
        consume_grants: vec![],
        audit: audit("state.write"),
    })
}

/// Every check, in order. Each gets its own stacks, so they may share one store.
pub fn run_all<S: StoreImport + StoreStats + 'static>(engine: &Arc<S>) {
    let store: &Arc<dyn Store> = &(engine.clone() as Arc<dyn Store>);
    stacks(store.as_ref());
    tokens(store.as_ref());
    users(store.as_ref());
    forge_logins(store.as_ref());
    policy_sets(store.as_ref());
    import_user(engine.as_ref());
    engines_agree(engine.as_ref());
    archived_stacks(engine.as_ref());
    derived_tokens(store.as_ref());
    revocation_cascades(store.as_ref());
    mint_limit(store.as_ref());
    locks(store.as_ref());
    releases_are_their_holders(store.as_ref());
    writes_and_history(store.as_ref());
    grants(store.as_ref());
    big_history_dedups(engine.as_ref());
    runs(store.as_ref());
    transitions_see_revoked_approvals(store.as_ref());
    runs_planned_since(store.as_ref());
    run_grants_end_with_the_apply(store.as_ref());
    plan_retention(engine.as_ref());
    concurrent_locks_have_one_winner(store);
    concurrent_writes_are_serialized(store);
    concurrent_run_transitions_have_one_winner(store);
    revocations_and_transitions_are_ordered(store);
    audit_search_filters_newest_first(store.as_ref());
    audit_chain_verifies(store.as_ref());
    import_only_extends_the_chain(engine.as_ref());
    drift_reports(engine.as_ref());
    oidc_keys_and_trusts(store.as_ref());
    trusts_are_pinned_once_and_imports_keep_trusts_and_drift(engine.as_ref());
    forge_token_uses(store.as_ref());
    concurrent_forge_token_uses_have_one_winner(&[store, store]);
    drift_states_of_many_stacks(engine.as_ref());
    minting_for_a_person(store);
    minters_are_a_column(store.as_ref());
    minter_chains_are_bounded_at_mint(store.as_ref());
    // Every token above was minted under the rule: re-judging revokes none.
    assert_eq!(store.revoke_unsafe_mints().unwrap(), []);
    abandoned_applies_fail_and_reported_ones_live(engine.as_ref());
    plan_tokens_live_while_their_minter_reports(store.as_ref());
    // Last: it closes every overdue run the tests above left open.
    overdue_runs_expire(engine.as_ref());
}

/// Creates the user `name` (no forge logins).
fn new_user(s: &dyn Store, name: &str) {
    s.create_user(
        NewUser {
            name: name.into(),
            created_by: "test".into(),
            forge_logins: Vec::new(),
        },
        audit("user.create"),
    )
    .unwrap();
}

/// Creates `stack` and writes its serial 1 (lineage `lin`), where runs are planned.
fn stack_at_serial_1(s: &dyn StoreImport, stack: &str) {
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    s.write_state(stack, attempt(state(1, "lin", 1), 1), &mut store_it)
        .unwrap();
}

/// The expiry sweep closes the open runs past their expiry, as approve and apply would find
/// them (`expired`, plan purged, audited as the system), and nothing else: not an open run
/// before its expiry, not an applying one, not a closed one; a second sweep closes nothing.
pub fn overdue_runs_expire(s: &dyn StoreImport) {
    use crate::run_rules::RUN_TTL_MS;
    let stack = "conf/expiry";
    stack_at_serial_1(s, stack);
    let plan = b"binary plan".to_vec();
    let now = now_ms();
    let old = now - RUN_TTL_MS - 60_000;
    let new_run = |id: &str, status: RunStatus, created_at: i64, expires_at: i64| {
        let mut r = run_record(id, stack, created_at);
        r.status = status;
        r.expires_at = expires_at;
        if status == RunStatus::Applying {
            // Its applier reports: its deadline is ahead, however old the run.
            r.apply_started_at = Some(created_at);
            r.apply_alive_until = Some(now + 60_000);
        }
        r.plan_sha256 = hex::encode(crate::blob::sha256(&plan));
        s.create_run(
            &r,
            &[(PLAN_ARTIFACT, &plan)],
            NewAudit::ok("agent", "run.create", Some(stack), json!({"run": id})),
        )
        .unwrap();
    };
    new_run(
        "run_exp_waiting",
        RunStatus::NeedsApproval,
        old,
        old + RUN_TTL_MS,
    );
    new_run(
        "run_exp_approved",
        RunStatus::Approved,
        old + 1,
        old + 1 + RUN_TTL_MS,
    );
    new_run(
        "run_exp_young",
        RunStatus::NeedsApproval,
        now,
        now + RUN_TTL_MS,
    );
    new_run(
        "run_exp_applying",
        RunStatus::Applying,
        old,
        old + RUN_TTL_MS,
    );
    // Candidates that cannot be closed come first (oldest), read a page of one at a time:
    // they do not hold the overdue runs back.
    new_run(
        "run_exp_later",
        RunStatus::NeedsApproval,
        old - 2,
        now + 60_000,
    );
    new_run(
        "run_exp_later2",
        RunStatus::NeedsApproval,
        old - 1,
        now + 60_000,
    );
    let before = s.audit_events(0, 100_000).unwrap().len();
    let swept = s.expire_overdue_runs(now, 1).unwrap();
    assert_eq!(swept.failed, Vec::<(String, String)>::new());
    let closed = swept.closed;
    for id in ["run_exp_waiting", "run_exp_approved"] {
        assert!(
            closed.iter().any(|c| c == id),
            "{id} not closed: {closed:?}"
        );
        let run = s.run(id).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Expired, "{id}");
        assert!(
            run.note.as_deref().unwrap_or_default().contains("expired"),
            "{id}: {:?}",
            run.note
        );
        assert!(
            matches!(
                s.run_artifact(id, PLAN_ARTIFACT),
                Err(StoreError::Purged(_))
            ),
            "{id}: its plan is purged"
        );
    }
    for (id, status) in [
        ("run_exp_young", RunStatus::NeedsApproval),
        ("run_exp_applying", RunStatus::Applying),
        ("run_exp_later", RunStatus::NeedsApproval),
        ("run_exp_later2", RunStatus::NeedsApproval),
    ] {
        assert!(!closed.iter().any(|c| c == id), "{id} closed");
        assert_eq!(s.run(id).unwrap().unwrap().status, status, "{id}");
        assert_eq!(
            s.run_artifact(id, PLAN_ARTIFACT).unwrap(),
            Some(plan.clone()),
            "{id}"
        );
    }
    let expired = swept_event(s, before, "run.expired", "run_exp_waiting");
    assert!(
        expired.detail["plan_purged"].is_object(),
        "{:?}",
        expired.detail
    );
    verify_chain(&s.audit_events(0, 100_000).unwrap()).unwrap();
    assert_eq!(
        s.expire_overdue_runs(now, crate::run_rules::SWEPT_RUNS)
            .unwrap(),
        Swept::default()
    );
}

/// The one `action` event of run `run` among the audit events after the first `before`, and
/// the sweep recorded it.
fn swept_event(s: &dyn StoreImport, before: usize, action: &str, run: &str) -> AuditRecord {
    let events = s.audit_events(0, 100_000).unwrap();
    let found: Vec<&AuditRecord> = events[before..]
        .iter()
        .filter(|e| e.action == action && e.detail["run"] == run)
        .collect();
    assert_eq!(found.len(), 1, "{:?}", &events[before..]);
    assert_eq!(found[0].actor, crate::run_rules::EXPIRY_SWEEPER.display);
    found[0].clone()
}

/// An applying run lives while its applier reports: a report moves its deadline, and in the
/// same transaction its run-bound token's expiry (never past that of the token that minted it)
/// and its removal grant's. Past its deadline the sweep closes it as `failed` (plan purged,
/// grant consumed, audited as the system); a run still within its deadline is left alone.
pub fn abandoned_applies_fail_and_reported_ones_live(s: &dyn StoreImport) {
    use crate::run_rules::{decided, keep_alive, Actor};
    let stack = "conf/abandon";
    stack_at_serial_1(s, stack);
    let plan = b"binary plan".to_vec();
    let now = now_ms();
    let minter_expiry = now + 300_000;
    s.create_token(
        new_token("tok_abandon_ci", "", None, Some(minter_expiry)),
        audit("token.create"),
    )
    .unwrap();
    s.create_token(
        new_token("tok_abandon_root", "", None, None),
        audit("token.create"),
    )
    .unwrap();
    let applying = |id: &str, alive_until: i64, minter: &str| {
        let mut r = run_record(id, stack, now - 1_000);
        r.status = RunStatus::Applying;
        r.apply_started_at = Some(now - 1_000);
        r.apply_alive_until = Some(alive_until);
        r.apply_token = Some(format!("tok_{id}"));
        r.plan_sha256 = hex::encode(crate::blob::sha256(&plan));
        s.create_run(&r, &[(PLAN_ARTIFACT, &plan)], audit("run.create"))
            .unwrap();
        s.create_token(
            NewToken {
                run_id: Some(id.into()),
                ..new_token(&format!("tok_{id}"), "", Some(minter), Some(alive_until))
            },
            audit("token.run_bound"),
        )
        .unwrap();
        s.create_grant(
            stack,
            NewGrant {
                id: format!("g_{id}"),
                addresses: vec!["x".into()],
                reason: "r".into(),
                created_by: "a".into(),
                expires_at: alive_until,
                run_id: Some(id.into()),
            },
            audit("grant.create"),
        )
        .unwrap();
    };
    applying("run_ab_dead", now + 1, "tok_abandon_ci");
    applying("run_ab_live", now + 1, "tok_abandon_ci");
    applying("run_ab_root", now + 1, "tok_abandon_root");
    // The store sets the run-bound token's expiry to the run's new deadline, never past its
    // minter's, with the transition that moves it (`keep_run_token_until`).
    let idle = 600_000;
    let renew = |run_id: &str| {
        let token_id = format!("tok_{run_id}");
        let bound = Actor {
            token_id: &token_id,
            user: "u",
            display: "apply",
            role: Role::Ci,
            run_id: Some(run_id),
            job_ref: None,
        };
        s.update_run(run_id, &mut |run, _, _, _| {
            let t = keep_alive(run, &bound, idle, None, now).map(Option::unwrap);
            decided(t, run, &bound, now)
        })
        .unwrap()
        .unwrap()
        .apply_alive_until
    };
    let token = |id: &str| s.token(id).unwrap().unwrap();
    // (The handler passes the minter's expiry as the limit; the store clamps all the same.)
    assert_eq!(renew("run_ab_live"), Some(now + idle));
    assert_eq!(token("tok_run_ab_live").expires_at, Some(minter_expiry));
    assert_eq!(renew("run_ab_root"), Some(now + idle));
    assert_eq!(token("tok_run_ab_root").expires_at, Some(now + idle));
    // The dead run's applier stopped reporting: its deadline has passed (set back here), and its
    // token and grant expired with it.
    s.update_run("run_ab_dead", &mut |run, _, _, _| {
        let mut r = run.clone();
        r.apply_alive_until = Some(now - 1);
        Ok((r, audit("test.age")))
    })
    .unwrap()
    .unwrap();
    assert_eq!(token("tok_run_ab_dead").expires_at, Some(now - 1));
    let grant = |id: &str| {
        s.grants(stack)
            .unwrap()
            .into_iter()
            .find(|g| g.id == id)
            .unwrap()
    };
    assert_eq!(grant("g_run_ab_live").expires_at, now + idle);
    assert_eq!(grant("g_run_ab_dead").expires_at, now - 1);
    // The sweep closes the run whose applier went silent, and only it.
    let before = s.audit_events(0, 100_000).unwrap().len();
    let swept = s.expire_overdue_runs(now, 1).unwrap();
    assert_eq!(swept.failed, Vec::<(String, String)>::new());
    assert!(swept.closed.iter().any(|c| c == "run_ab_dead"), "{swept:?}");
    assert!(
        !swept.closed.iter().any(|c| c == "run_ab_live"),
        "{swept:?}"
    );
    let dead = s.run("run_ab_dead").unwrap().unwrap();
    assert_eq!(dead.status, RunStatus::Failed);
    assert_eq!(dead.finished_at, Some(now));
    assert!(
        dead.note
            .as_deref()
            .unwrap_or_default()
            .contains("abandoned"),
        "{:?}",
        dead.note
    );
    assert!(matches!(
        s.run_artifact("run_ab_dead", PLAN_ARTIFACT),
        Err(StoreError::Purged(_))
    ));
    assert!(
        grant("g_run_ab_dead").consumed_at.is_some(),
        "its grant ends"
    );
    swept_event(s, before, "run.failed", "run_ab_dead");
    assert_eq!(
        s.run("run_ab_live").unwrap().unwrap().status,
        RunStatus::Applying
    );
    // Silent past its new deadline, the live run is abandoned too.
    let later = s.expire_overdue_runs(now + idle + 1, 1).unwrap();
    assert!(later.closed.iter().any(|c| c == "run_ab_live"), "{later:?}");
    // Its run-bound token ends with its apply, not at the deadline it had.
    let ended = token("tok_run_ab_live").expires_at.unwrap();
    assert!(ended <= now_ms(), "{ended}");
    verify_chain(&s.audit_events(0, 100_000).unwrap()).unwrap();
}

/// `drift_states` (one query for all stacks) on histories with chosen times, ties included:
/// per stack with reports, archived or not, the newest report (by time, then id) and "drifted
/// since" (the first drifted report not followed by an in-sync one, while the newest verdict
/// other than `unknown` is `drifted`); a stack without reports has no state.
pub fn drift_states_of_many_stacks(s: &dyn StoreImport) {
    let report = |stack: &str, id: &str, status: &str, at: i64| DriftReportRecord {
        meta: DriftReportMeta {
            id: id.into(),
            stack: stack.into(),
            status: status.into(),
            serial: None,
            drifted: u64::from(status == "drifted"),
            findings: 0,
            reported_by: "ci (tok-c)".into(),
            created_at: at,
        },
        report: format!(r#"{{"status":"{status}"}}"#),
    };
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str, i64)],
        Option<(&'static str, Option<i64>)>,
    );
    let cases: [Case; 9] = [
        ("conf/ds-none", &[], None),
        (
            "conf/ds-in-sync",
            &[("drf_ds_a1", "in_sync", 100)],
            Some(("drf_ds_a1", None)),
        ),
        (
            "conf/ds-unknown-keeps",
            &[("drf_ds_b1", "drifted", 100), ("drf_ds_b2", "unknown", 200)],
            Some(("drf_ds_b2", Some(100))),
        ),
        (
            "conf/ds-cleared-then-again",
            &[
                ("drf_ds_c1", "drifted", 100),
                ("drf_ds_c2", "in_sync", 200),
                ("drf_ds_c3", "drifted", 300),
                ("drf_ds_c4", "drifted", 400),
                ("drf_ds_c5", "unknown", 500),
            ],
            Some(("drf_ds_c5", Some(300))),
        ),
        (
            "conf/ds-cleared",
            &[
                ("drf_ds_d1", "drifted", 100),
                ("drf_ds_d2", "unknown", 150),
                ("drf_ds_d3", "in_sync", 200),
            ],
            Some(("drf_ds_d3", None)),
        ),
        (
            "conf/ds-only-unknown",
            &[("drf_ds_e1", "unknown", 100)],
            Some(("drf_ds_e1", None)),
        ),
        // Equal times: the greater id is the newer; a drifted report at the in-sync one's time
        // counts as after it.
        (
            "conf/ds-tie-drifted",
            &[("drf_ds_f1", "in_sync", 100), ("drf_ds_f2", "drifted", 100)],
            Some(("drf_ds_f2", Some(100))),
        ),
        (
            "conf/ds-tie-in-sync",
            &[("drf_ds_g1", "drifted", 100), ("drf_ds_g2", "in_sync", 100)],
            Some(("drf_ds_g2", None)),
        ),
        // Imported out of time order, and archived afterwards: still listed.
        (
            "conf/ds-archived",
            &[
                ("drf_ds_h2", "drifted", 300),
                ("drf_ds_h1", "drifted", 200),
                ("drf_ds_h0", "in_sync", 100),
            ],
            Some(("drf_ds_h2", Some(200))),
        ),
    ];
    for (stack, reports, _) in &cases {
        s.create_stack(
            stack,
            false,
            StackSettings::default(),
            audit("stack.create"),
        )
        .unwrap();
        for (id, status, at) in reports.iter() {
            s.import_drift_report(&report(stack, id, status, *at))
                .unwrap();
        }
    }
    s.archive_stack("conf/ds-archived", "admin", "gone", audit("stack.delete"))
        .unwrap();
    let got: Vec<(String, String, Option<i64>)> = s
        .drift_states()
        .unwrap()
        .into_iter()
        .filter(|d| d.last.stack.starts_with("conf/ds-"))
        .map(|d| (d.last.stack, d.last.id, d.drifted_since))
        .collect();
    let mut want: Vec<(String, String, Option<i64>)> = cases
        .iter()
        .filter_map(|(stack, _, want)| {
            want.map(|(id, since)| (stack.to_string(), id.to_owned(), since))
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "drift_states");
    // The newest report's record is the stored one.
    let state = s
        .drift_states()
        .unwrap()
        .into_iter()
        .find(|d| d.last.stack == "conf/ds-cleared-then-again")
        .unwrap();
    assert_eq!(
        state.last,
        report("conf/ds-cleared-then-again", "drf_ds_c5", "unknown", 500).meta
    );
}

/// Migration 0011 and backups: a trust without repository ids (added before they were pinned)
/// is pinned once, audited; a pinned, removed or unknown trust is not. Import inserts a trust
/// verbatim only with its user, and a drift report only into an existing stack and bound to a
/// serial the stack has.
pub fn trusts_are_pinned_once_and_imports_keep_trusts_and_drift(s: &dyn StoreImport) {
    let legacy = OidcTrustRecord {
        id: "trust_conf_legacy".into(),
        forge: "gitlab".into(),
        issuer: "https://gitlab.com".into(),
        audience: "https://airlock.example".into(),
        repository: "group/proj".into(),
        repository_id: None,
        owner_id: None,
        git_ref: None,
        environment: None,
        role: "agent".into(),
        stacks: vec![],
        lifetime_ms: 3_600_000,
        created_at: 7,
        created_by: "admin".into(),
        removed_at: None,
        removed_by: None,
    };
    s.add_oidc_trust(&legacy, audit("oidc.trust_add")).unwrap();
    let stored = |id: &str| {
        s.oidc_trusts()
            .unwrap()
            .into_iter()
            .find(|t| t.id == id)
            .unwrap()
    };
    assert_eq!(stored(&legacy.id), legacy, "a trust without ids reads back");
    let before = audit_len(s);
    let pinned = s
        .pin_oidc_trust(&legacy.id, "42", "7", audit("oidc.trust_pin"))
        .unwrap();
    assert_eq!(audit_len(s), before + 1, "pinning is audited");
    assert_eq!(
        (pinned.repository_id.as_deref(), pinned.owner_id.as_deref()),
        (Some("42"), Some("7"))
    );
    assert_eq!(stored(&legacy.id), pinned);
    assert!(
        matches!(s.pin_oidc_trust(&legacy.id, "43", "7", audit("oidc.trust_pin")), Err(StoreError::Conflict(m)) if m.contains("already pinned"))
    );
    assert!(matches!(
        s.pin_oidc_trust("trust_conf_none", "1", "1", audit("oidc.trust_pin")),
        Err(StoreError::NotFound(_))
    ));
    let mut removed = legacy.clone();
    removed.id = "trust_conf_removed".into();
    s.add_oidc_trust(&removed, audit("oidc.trust_add")).unwrap();
    s.remove_oidc_trust(&removed.id, "admin", audit("oidc.trust_remove"))
        .unwrap();
    assert!(matches!(
        s.pin_oidc_trust(&removed.id, "1", "1", audit("oidc.trust_pin")),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(stored(&removed.id).repository_id, None);

    // Import: verbatim, removal included, only with its user.
    let mut imported = pinned.clone();
    imported.id = "trust_conf_imported".into();
    imported.removed_at = Some(9);
    imported.removed_by = Some("admin".into());
    assert!(matches!(
        s.import_oidc_trust(&imported),
        Err(StoreError::NotFound(m)) if m.contains("user")
    ));
    s.import_user(&UserRecord {
        name: imported.id.clone(),
        created_at: 7,
        created_by: "admin".into(),
        forge_logins: vec![],
    })
    .unwrap();
    let before = audit_len(s);
    s.import_oidc_trust(&imported).unwrap();
    assert_eq!(audit_len(s), before, "an import appends no audit event");
    assert_eq!(stored(&imported.id), imported);
    assert!(matches!(
        s.import_oidc_trust(&imported),
        Err(StoreError::Conflict(_))
    ));

    // Drift reports: into an existing (even archived) stack, bound to a serial it has.
    let stack = "conf/drift-import";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    s.write_state(stack, attempt(state(3, "lin", 1), 3), &mut store_it)
        .unwrap();
    s.archive_stack(stack, "admin", "gone", audit("stack.delete"))
        .unwrap();
    let report = |id: &str, st: &str, serial: Option<u64>| DriftReportRecord {
        meta: DriftReportMeta {
            id: id.into(),
            stack: st.into(),
            status: "drifted".into(),
            serial,
            drifted: 2,
            findings: 1,
            reported_by: "ci (tok_c)".into(),
            created_at: 11,
        },
        report: r#"{"status":"drifted"}"#.into(),
    };
    assert!(matches!(
        s.import_drift_report(&report("drf_ci1", stack, Some(4))),
        Err(StoreError::Conflict(m)) if m.contains("no such version")
    ));
    assert!(matches!(
        s.import_drift_report(&report("drf_ci1", stack, Some(u64::MAX))),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.import_drift_report(&report("drf_ci1", "conf/nowhere", None)),
        Err(StoreError::NotFound(_))
    ));
    let mut bad = report("drf_ci1", stack, None);
    bad.meta.status = "fine".into();
    assert!(matches!(
        s.import_drift_report(&bad),
        Err(StoreError::Corrupt(_))
    ));
    let good = report("drf_ci1", stack, Some(3));
    s.import_drift_report(&good).unwrap();
    s.import_drift_report(&report("drf_ci2", stack, None))
        .unwrap();
    assert!(matches!(
        s.import_drift_report(&good),
        Err(StoreError::Conflict(_))
    ));
    let all = s.all_drift_reports().unwrap();
    assert!(all.contains(&good), "{all:?}");
    assert_eq!(s.drift_report("drf_ci1").unwrap().unwrap().0, good.meta);
}

/// The OIDC issuer's keys: one active at a time (a second first key is a `Conflict`, so two
/// replicas starting at once keep one); a rotation retires the active key and erases its
/// private half in the same transaction. Trusts: added, listed, removed once, never deleted.
pub fn oidc_keys_and_trusts(s: &dyn Store) {
    let key = |kid: &str| NewOidcKey {
        kid: kid.into(),
        alg: "ES256".into(),
        public_jwk: format!(r#"{{"kid":"{kid}"}}"#),
        private_pkcs8: SecretBytes(vec![1, 2, 3]),
    };
    assert!(s.oidc_keys().unwrap().is_empty());
    s.add_oidc_key(key("k1"), false, audit("oidc.key_create"))
        .unwrap();
    assert!(matches!(
        s.add_oidc_key(key("k2"), false, audit("oidc.key_create")),
        Err(StoreError::Conflict(_))
    ));
    s.add_oidc_key(key("k2"), true, audit("oidc.key_rotate"))
        .unwrap();
    let keys = s.oidc_keys().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0].kid.as_str(), keys[0].private_pkcs8.is_none()),
        ("k1", true)
    );
    assert!(keys[0].retired_at.is_some());
    assert_eq!(keys[1].private_pkcs8, Some(SecretBytes(vec![1, 2, 3])));
    assert!(keys[1].retired_at.is_none());
    assert!(
        !format!("{:?}", keys[1]).contains("[1, 2, 3]"),
        "key bytes in Debug"
    );

    let trust = OidcTrustRecord {
        id: "trust_1".into(),
        forge: "github".into(),
        issuer: "https://token.actions.githubusercontent.com".into(),
        audience: "https://airlock.example".into(),
        repository: "org/repo".into(),
        repository_id: Some("1001".into()),
        owner_id: Some("2002".into()),
        git_ref: Some("refs/heads/main".into()),
        environment: None,
        role: "ci".into(),
        stacks: vec!["prod/*".into()],
        lifetime_ms: 3_600_000,
        created_at: 5,
        created_by: "admin".into(),
        removed_at: None,
        removed_by: None,
    };
    s.add_oidc_trust(&trust, audit("oidc.trust_add")).unwrap();
    assert!(matches!(
        s.add_oidc_trust(&trust, audit("oidc.trust_add")),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.oidc_trusts().unwrap(), std::slice::from_ref(&trust));
    assert!(
        s.user("trust_1").unwrap().is_some(),
        "the trust's tokens need their user"
    );
    let removed = s
        .remove_oidc_trust("trust_1", "admin", audit("oidc.trust_remove"))
        .unwrap();
    assert_eq!(removed.removed_by.as_deref(), Some("admin"));
    assert!(matches!(
        s.remove_oidc_trust("trust_1", "admin", audit("oidc.trust_remove")),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.remove_oidc_trust("trust_x", "admin", audit("oidc.trust_remove")),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.oidc_trusts().unwrap()[0].removed_at, removed.removed_at);
}

/// `audit_search` and `audit_count`: newest first, every filter narrowing, `before` paging.
pub fn audit_search_filters_newest_first(s: &dyn Store) {
    let mut seqs = vec![];
    for (actor, action, stack, denied) in [
        (
            "alice (tok_a)",
            "conf.search.write",
            Some("conf/search"),
            false,
        ),
        (
            "bob-conf-search (tok_b)",
            "conf.search.write",
            Some("conf/search"),
            true,
        ),
        (
            "alice (tok_a)",
            "conf.search.lock",
            Some("conf/search2"),
            false,
        ),
        (
            "alice (tok_a)",
            "conf.search.write",
            Some("conf/search"),
            false,
        ),
    ] {
        let e = if denied {
            NewAudit::denied(actor, action, stack, json!({"reason": "r"}))
        } else {
            NewAudit::ok(actor, action, stack, json!({}))
        };
        seqs.push(s.append_audit(e).unwrap().seq);
    }
    let of = |f: AuditFilter, limit: u32| -> Vec<i64> {
        s.audit_search(&f, limit)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    let stack = |st: &str| AuditFilter {
        stack: Some(st.into()),
        ..AuditFilter::default()
    };
    assert_eq!(
        of(stack("conf/search"), 10),
        [seqs[3], seqs[1], seqs[0]],
        "newest first"
    );
    assert_eq!(of(stack("conf/search"), 2), [seqs[3], seqs[1]], "limit");
    let older = AuditFilter {
        before: Some(seqs[1]),
        ..stack("conf/search")
    };
    assert_eq!(of(older.clone(), 10), [seqs[0]], "before");
    assert_eq!(s.audit_count(&older).unwrap(), 1);
    assert_eq!(s.audit_count(&stack("conf/search")).unwrap(), 3);
    let f = AuditFilter {
        outcome: Some("denied".into()),
        ..stack("conf/search")
    };
    assert_eq!(of(f, 10), [seqs[1]], "outcome");
    let f = AuditFilter {
        action: Some("conf.search.lock".into()),
        ..AuditFilter::default()
    };
    assert_eq!(of(f, 10), [seqs[2]], "action");
    let f = AuditFilter {
        actor: Some("bob-conf-search".into()),
        ..AuditFilter::default()
    };
    assert_eq!(of(f, 10), [seqs[1]], "actor contains");
    let f = AuditFilter {
        actor: Some("%".into()),
        ..AuditFilter::default()
    };
    assert!(of(f, 10).is_empty(), "actor is text, not a pattern");
    let f = AuditFilter {
        until: Some("2000-01-01T00:00:00.000Z".into()),
        ..stack("conf/search")
    };
    assert!(of(f, 10).is_empty(), "until");
    let f = AuditFilter {
        since: Some("2000-01-01T00:00:00.000Z".into()),
        ..stack("conf/search")
    };
    assert_eq!(of(f, 10).len(), 3, "since");
}

pub fn stacks(s: &dyn Store) {
    let st = s
        .create_stack(
            "conf/stacks",
            true,
            StackSettings::defaults(true),
            audit("stack.create"),
        )
        .unwrap();
    assert!(st.production);
    assert_eq!(st.settings.direct_writes, vec![Role::Admin]);
    assert!(matches!(
        s.create_stack("conf/stacks", false, StackSettings::default(), audit("x")),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.stack("conf/stacks").unwrap().unwrap().name, "conf/stacks");
    assert!(s.stack("conf/none").unwrap().is_none());
    let mut settings = st.settings.clone();
    settings.protect_types.push("aws_s3_bucket".into());
    let updated = s
        .update_stack_settings("conf/stacks", settings, audit("stack.settings"))
        .unwrap();
    assert_eq!(updated.settings.protect_types, ["aws_s3_bucket"]);
    assert!(s
        .list_stacks()
        .unwrap()
        .iter()
        .any(|x| x.name == "conf/stacks"));
    assert!(matches!(
        s.current_version("conf/none"),
        Err(StoreError::NotFound(_))
    ));
}

/// A plan-phase token's expiry moves while its minter reports: only from the expiry the report
/// was judged with (so reports sent at once move it once), never past its minter's, and never
/// for a revoked token or another minter; each move is audited in its transaction.
pub fn plan_tokens_live_while_their_minter_reports(s: &dyn Store) {
    let now = now_ms();
    let minter_expiry = now + 300_000;
    for (id, parent, expires_at) in [
        ("tok_pl_ci", None, Some(minter_expiry)),
        ("tok_pl_root", None, None),
        ("tok_pl_plan", Some("tok_pl_ci"), Some(now + 10_000)),
        ("tok_pl_plan2", Some("tok_pl_root"), Some(now + 10_000)),
        ("tok_pl_gone", Some("tok_pl_root"), Some(now - 1)),
    ] {
        s.create_token(new_token(id, "", parent, expires_at), audit("token.create"))
            .unwrap();
    }
    let moved = |id: &str, minter: &str, from: i64, until: i64| {
        let note = NewAudit::ok("ci", "token.plan_alive", None, json!({"token": id}));
        s.keep_phase_token_until(id, minter, Some(from), until, note)
            .unwrap()
            .map(|t| t.expires_at)
    };
    let events = || {
        s.audit_events(0, 100_000)
            .unwrap()
            .iter()
            .filter(|e| e.action == "token.plan_alive")
            .count()
    };
    let before = events();
    // Clamped to the minter's expiry; a minter that never expires leaves it as asked.
    let later = now + 600_000;
    assert_eq!(
        moved("tok_pl_plan", "tok_pl_ci", now + 10_000, later),
        Some(Some(minter_expiry))
    );
    assert_eq!(
        moved("tok_pl_plan2", "tok_pl_root", now + 10_000, later),
        Some(Some(later))
    );
    // Judged on an expiry that has moved since (another report did it), or for another minter:
    // nothing is written.
    assert_eq!(
        moved("tok_pl_plan", "tok_pl_ci", now + 10_000, later + 1),
        None
    );
    assert_eq!(moved("tok_pl_plan2", "tok_pl_ci", later, later + 1), None);
    assert_eq!(
        moved("tok_pl_ci", "tok_pl_root", minter_expiry, later),
        None
    );
    // An expired or revoked token stays as it was, whatever it was judged with.
    assert_eq!(moved("tok_pl_gone", "tok_pl_root", now - 1, later), None);
    s.revoke_token("tok_pl_plan2", audit("token.revoke"))
        .unwrap();
    assert_eq!(moved("tok_pl_plan2", "tok_pl_root", later, later + 1), None);
    let t = s.token("tok_pl_plan2").unwrap().unwrap();
    assert_eq!((t.expires_at, t.revoked_at.is_some()), (Some(later), true));
    assert_eq!(
        s.token("tok_pl_plan").unwrap().unwrap().expires_at,
        Some(minter_expiry)
    );
    assert_eq!(events(), before + 2);
}

/// A token with a fresh random-ish hash: `user` empty means "its own identity".
fn new_token(id: &str, user: &str, parent: Option<&str>, expires_at: Option<i64>) -> NewToken {
    let secret_hash = crate::blob::sha256(id.as_bytes());
    NewToken {
        id: id.into(),
        secret_hash,
        name: id.into(),
        role: if parent.is_some() {
            Role::Agent
        } else {
            Role::Approver
        },
        stacks: vec!["conf/*".into()],
        expires_at,
        created_by: "test".into(),
        run_id: None,
        user: if user.is_empty() && parent.is_none() {
            id.into()
        } else {
            user.into()
        },
        parent_id: parent.map(str::to_owned),
        mint_limit: None,
        read_stacks: Vec::new(),
        minted_by: None,
        job_ref: None,
    }
}

pub fn tokens(s: &dyn Store) {
    let hash = [7u8; 32];
    new_user(s, "alice");
    let t = s
        .create_token(
            NewToken {
                id: "tok-conf".into(),
                secret_hash: hash,
                name: "alice".into(),
                role: Role::Approver,
                stacks: vec!["prod/*".into()],
                expires_at: Some(now_ms() + 60_000),
                created_by: "test".into(),
                run_id: None,
                user: "alice".into(),
                parent_id: None,
                mint_limit: None,
                read_stacks: Vec::new(),
                minted_by: None,
                job_ref: None,
            },
            audit("token.create"),
        )
        .unwrap();
    assert_eq!(t.user, "alice");
    assert_eq!(s.token("tok-conf").unwrap().unwrap(), t);
    assert!(s.token("tok-none").unwrap().is_none());
    assert!(s.token_count().unwrap() >= 1);
    let found = s.token_by_hash(&hash).unwrap().unwrap();
    assert_eq!(found, t);
    assert!(s.token_by_hash(&[8u8; 32]).unwrap().is_none());
    let revoked = s.revoke_token("tok-conf", audit("token.revoke")).unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(s
        .token_by_hash(&hash)
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
    assert!(matches!(
        s.revoke_token("nope", audit("x")),
        Err(StoreError::NotFound(_))
    ));
    assert!(s.list_tokens().unwrap().iter().any(|x| x.id == "tok-conf"));
}

pub fn users(s: &dyn Store) {
    let before = audit_len(s);
    let u = s
        .create_user(
            NewUser {
                name: "conf.carol".into(),
                created_by: "admin (tok-a)".into(),
                forge_logins: Vec::new(),
            },
            NewAudit::ok(
                "admin (tok-a)",
                "user.create",
                None,
                json!({"user": "conf.carol"}),
            ),
        )
        .unwrap();
    assert_eq!(u.name, "conf.carol");
    assert_eq!(s.user("conf.carol").unwrap(), Some(u.clone()));
    assert!(s.user("conf.nobody").unwrap().is_none());
    assert!(s.list_users().unwrap().contains(&u));
    assert_eq!(audit_len(s), before + 1, "user.create is audited");
    assert!(matches!(
        s.create_user(
            NewUser {
                name: "conf.carol".into(),
                created_by: "x".into(),
                forge_logins: Vec::new(),
            },
            audit("user.create")
        ),
        Err(StoreError::Conflict(_))
    ));
    // A token of a user that does not exist is refused; one of an existing user is stored.
    assert!(matches!(
        s.create_token(
            new_token("tok-conf-u1", "conf.nobody", None, None),
            audit("token.create")
        ),
        Err(StoreError::NotFound(_))
    ));
    let t = s
        .create_token(
            new_token("tok-conf-u2", "conf.carol", None, None),
            audit("token.create"),
        )
        .unwrap();
    assert_eq!(t.user, "conf.carol");
    // A token without a user is its own identity: its user is its id.
    let own = s
        .create_token(
            new_token("tok-conf-u3", "", None, None),
            audit("token.create"),
        )
        .unwrap();
    assert_eq!(own.user, "tok-conf-u3");
    // ... and no token may borrow another token's id as its user.
    assert!(matches!(
        s.create_token(
            new_token("tok-conf-u4", "tok-conf-u3", None, None),
            audit("token.create")
        ),
        Err(StoreError::NotFound(_))
    ));
}

/// Server policy sets: versioned per glob (a new version replaces the active one), removal
/// recorded with its reason, never twice, every change audited; the files round-trip.
pub fn policy_sets(s: &dyn Store) {
    let before = audit_len(s);
    let file = |path: &str, text: &str| PolicyFile {
        path: path.into(),
        text: text.into(),
    };
    let new = |id: &str, glob: &str| NewPolicySet {
        id: id.into(),
        stack_glob: glob.into(),
        files: vec![
            file("b.rego", "package main\n"),
            file("a.rego", "package main\n# ünïcode\n"),
        ],
        created_by: "admin (tok-a)".into(),
    };
    let v1 = s
        .add_policy_set(new("pol_conf1", "conf-prod/*"), audit("policy.add"))
        .unwrap();
    assert_eq!((v1.version, v1.is_active()), (1, true));
    assert_eq!(v1.files[0].path, "a.rego", "files are sorted by path");
    assert_eq!(s.policy_set("pol_conf1").unwrap(), Some(v1.clone()));
    let other = s
        .add_policy_set(new("pol_conf2", "conf-dev/*"), audit("policy.add"))
        .unwrap();
    assert_eq!(other.version, 1, "versions count per glob");
    let v2 = s
        .add_policy_set(new("pol_conf3", "conf-prod/*"), audit("policy.add"))
        .unwrap();
    assert_eq!(v2.version, 2);
    let old = s.policy_set("pol_conf1").unwrap().unwrap();
    assert!(!old.is_active());
    assert_eq!(old.removed_reason.as_deref(), Some("replaced by version 2"));
    assert!(matches!(
        s.add_policy_set(new("pol_conf3", "conf-x/*"), audit("policy.add")),
        Err(StoreError::Conflict(_))
    ));
    let removed = s
        .remove_policy_set(
            "pol_conf2",
            "admin (tok-a)",
            "obsolete",
            audit("policy.remove"),
        )
        .unwrap();
    assert_eq!(removed.removed_reason.as_deref(), Some("obsolete"));
    assert_eq!(s.policy_set("pol_conf2").unwrap(), Some(removed));
    assert!(matches!(
        s.remove_policy_set("pol_conf2", "x", "again", audit("policy.remove")),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.remove_policy_set("pol_none", "x", "none", audit("policy.remove")),
        Err(StoreError::NotFound(_))
    ));
    let all = s.policy_sets().unwrap();
    let ids: Vec<&str> = all.iter().map(|p| p.id.as_str()).collect();
    assert!(ids.contains(&"pol_conf1") && ids.contains(&"pol_conf2"));
    let active: Vec<&str> = all
        .iter()
        .filter(|p| p.is_active() && p.id.starts_with("pol_conf"))
        .map(|p| p.id.as_str())
        .collect();
    assert_eq!(active, ["pol_conf3"]);
    assert_eq!(v2.sha256, v1.sha256, "same files, same digest");
    assert_eq!(audit_len(s), before + 4, "adds and the removal are audited");
}

/// Backup import inserts a user verbatim.
pub fn import_user(s: &dyn StoreImport) {
    s.import_user(&UserRecord {
        name: "conf.dave".into(),
        created_at: 5,
        created_by: "imported".into(),
        forge_logins: vec!["github:conf-dave".into()],
    })
    .unwrap();
    let dave = s.user("conf.dave").unwrap().unwrap();
    assert_eq!(dave.created_at, 5);
    assert_eq!(dave.forge_logins, ["github:conf-dave"]);
    assert_eq!(
        s.user_by_forge_login("github:conf-dave")
            .unwrap()
            .as_deref(),
        Some("conf.dave")
    );
}

/// Forge logins: given at creation or added later (audited), lower-cased, one user's only,
/// looked up case-insensitively; bad ones are refused and nothing is stored.
pub fn forge_logins(s: &dyn Store) {
    let before = audit_len(s);
    let u = s
        .create_user(
            NewUser {
                name: "conf.fay".into(),
                created_by: "t".into(),
                forge_logins: vec!["GitHub:Conf-Fay".into(), "gitlab:fay".into()],
            },
            audit("user.create"),
        )
        .unwrap();
    assert_eq!(u.forge_logins, ["github:conf-fay", "gitlab:fay"]);
    assert_eq!(s.user("conf.fay").unwrap(), Some(u.clone()));
    assert!(s.list_users().unwrap().contains(&u));
    assert_eq!(
        s.user_by_forge_login("GITHUB:conf-fay").unwrap().as_deref(),
        Some("conf.fay")
    );
    assert_eq!(s.user_by_forge_login("github:nobody").unwrap(), None);
    // Another user cannot take a login, at creation or later; the refused creation stores nothing.
    assert!(matches!(
        s.create_user(
            NewUser {
                name: "conf.gus".into(),
                created_by: "t".into(),
                forge_logins: vec!["github:CONF-FAY".into()],
            },
            audit("user.create"),
        ),
        Err(StoreError::Conflict(_))
    ));
    assert!(s.user("conf.gus").unwrap().is_none());
    s.create_user(
        NewUser {
            name: "conf.gus".into(),
            created_by: "t".into(),
            forge_logins: Vec::new(),
        },
        audit("user.create"),
    )
    .unwrap();
    assert!(matches!(
        s.add_forge_login("conf.gus", "gitlab:FAY", audit("user.forge_login")),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.add_forge_login("conf.nobody", "gitlab:x", audit("user.forge_login")),
        Err(StoreError::NotFound(_))
    ));
    assert!(s
        .add_forge_login("conf.gus", "bitbucket:gus", audit("user.forge_login"))
        .is_err());
    let gus = s
        .add_forge_login("conf.gus", "github:gus", audit("user.forge_login"))
        .unwrap();
    assert_eq!(gus.forge_logins, ["github:gus"]);
    // Adding a login the user has is a no-op, not audited again.
    s.add_forge_login("conf.gus", "GitHub:Gus", audit("user.forge_login"))
        .unwrap();
    assert_eq!(audit_len(s), before + 3, "two creations and one addition");
}

pub fn derived_tokens(s: &dyn Store) {
    s.create_user(
        NewUser {
            name: "conf.erin".into(),
            created_by: "t".into(),
            forge_logins: Vec::new(),
        },
        audit("user.create"),
    )
    .unwrap();
    let soon = now_ms() + 60_000;
    s.create_token(
        new_token("tok-dv-p", "conf.erin", None, Some(soon)),
        audit("token.create"),
    )
    .unwrap();
    // A derived token belongs to its parent's user: asking for another user is refused.
    let other = new_token("tok-dv-x", "conf.carol", Some("tok-dv-p"), None);
    assert!(matches!(
        s.create_token(other, audit("token.plan_phase")),
        Err(StoreError::Conflict(_))
    ));
    let mut child = new_token("tok-dv-c", "", Some("tok-dv-p"), Some(soon + 3_600_000));
    // Its read stacks (migration 0015) are stored and read back as given, in order.
    child.read_stacks = vec!["conf/net".into(), "conf/db".into()];
    let c = s.create_token(child, audit("token.plan_phase")).unwrap();
    assert_eq!(c.read_stacks, ["conf/net", "conf/db"]);
    assert_eq!(
        c.user, "conf.erin",
        "a derived token carries its parent's user"
    );
    assert_eq!(c.parent_id.as_deref(), Some("tok-dv-p"));
    assert_eq!(c.expires_at, Some(soon), "expiry clamped to the parent's");
    assert_eq!(s.token("tok-dv-c").unwrap().unwrap(), c);
    // A derived token cannot mint.
    assert!(matches!(
        s.create_token(
            new_token("tok-dv-g", "", Some("tok-dv-c"), None),
            audit("token.plan_phase")
        ),
        Err(StoreError::Conflict(_))
    ));
    // A missing parent, and a revoked one, cannot mint.
    assert!(matches!(
        s.create_token(
            new_token("tok-dv-m", "", Some("tok-dv-none"), None),
            audit("x")
        ),
        Err(StoreError::NotFound(_))
    ));
    s.revoke_token("tok-dv-p", audit("token.revoke")).unwrap();
    assert!(matches!(
        s.create_token(
            new_token("tok-dv-r", "", Some("tok-dv-p"), None),
            audit("x")
        ),
        Err(StoreError::Conflict(_))
    ));
    // An expired parent cannot mint either.
    s.create_token(
        new_token("tok-dv-e", "", None, Some(now_ms() - 1)),
        audit("token.create"),
    )
    .unwrap();
    assert!(matches!(
        s.create_token(
            new_token("tok-dv-e1", "", Some("tok-dv-e"), None),
            audit("x")
        ),
        Err(StoreError::Conflict(_))
    ));
}

pub fn revocation_cascades(s: &dyn Store) {
    s.create_token(
        new_token("tok-rc-root", "", None, None),
        audit("token.create"),
    )
    .unwrap();
    for c in ["tok-rc-a", "tok-rc-b"] {
        s.create_token(
            new_token(c, "", Some("tok-rc-root"), None),
            audit("token.plan_phase"),
        )
        .unwrap();
    }
    s.create_token(
        new_token("tok-rc-other", "", None, None),
        audit("token.create"),
    )
    .unwrap();
    let before = s.audit_events(0, 100_000).unwrap().len();
    let r = s
        .revoke_token(
            "tok-rc-root",
            NewAudit::ok(
                "boss (tok-b)",
                "token.revoke",
                None,
                json!({"token": "tok-rc-root"}),
            ),
        )
        .unwrap();
    assert!(r.revoked_at.is_some());
    for c in ["tok-rc-a", "tok-rc-b"] {
        assert!(
            s.token(c).unwrap().unwrap().revoked_at.is_some(),
            "{c} dies with its parent"
        );
    }
    assert!(s
        .token("tok-rc-other")
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
    let events = s.audit_events(0, 100_000).unwrap();
    let new: Vec<_> = events.get(before..).unwrap().to_vec();
    assert_eq!(new.len(), 2, "the revocation and its cascade: {new:?}");
    assert_eq!(new[1].action, "token.revoke_cascade");
    assert_eq!(new[1].actor, "boss (tok-b)");
    assert_eq!(new[1].detail["tokens"], json!(["tok-rc-a", "tok-rc-b"]));
    // Revoking again changes nothing and records nothing.
    s.revoke_token("tok-rc-root", audit("token.revoke"))
        .unwrap();
    assert_eq!(s.audit_events(0, 100_000).unwrap().len(), before + 2);
    verify_chain(&s.audit_events(0, 100_000).unwrap()).unwrap();
}

pub fn mint_limit(s: &dyn Store) {
    s.create_token(new_token("tok-ml-p", "", None, None), audit("token.create"))
        .unwrap();
    let limit = MintLimit {
        max: 3,
        window_ms: 3_600_000,
    };
    for i in 0..3 {
        let mut t = new_token(&format!("tok-ml-{i}"), "", Some("tok-ml-p"), None);
        t.mint_limit = Some(limit);
        s.create_token(t, audit("token.plan_phase")).unwrap();
    }
    let mut t = new_token("tok-ml-3", "", Some("tok-ml-p"), None);
    t.mint_limit = Some(limit);
    assert!(matches!(
        s.create_token(t, audit("token.plan_phase")),
        Err(StoreError::LimitReached(_))
    ));
    assert!(s.token("tok-ml-3").unwrap().is_none());
    // Parentless tokens of one user (a trust's forge logins) are counted apart from the
    // derived ones: the 3 phase tokens above do not use up the logins, the parent does.
    new_user(s, "ml-user");
    s.create_token(
        new_token("tok-ml-u", "ml-user", None, None),
        audit("token.create"),
    )
    .unwrap();
    for i in 0..3 {
        let mut t = new_token(&format!("tok-ml-ud{i}"), "", Some("tok-ml-u"), None);
        t.mint_limit = Some(limit);
        s.create_token(t, audit("token.plan_phase")).unwrap();
    }
    for i in 0..2 {
        let mut t = new_token(&format!("tok-ml-l{i}"), "ml-user", None, None);
        t.mint_limit = Some(limit);
        s.create_token(t, audit("oidc.login")).unwrap();
    }
    let mut t = new_token("tok-ml-l2", "ml-user", None, None);
    t.mint_limit = Some(limit);
    assert!(matches!(
        s.create_token(t, audit("oidc.login")),
        Err(StoreError::LimitReached(_))
    ));
    assert!(s.token("tok-ml-l2").unwrap().is_none());
}

fn new_lock(id: &str) -> NewLock {
    NewLock {
        id: id.into(),
        info: format!(r#"{{"ID":"{id}"}}"#).into_bytes(),
        operation: "OperationTypeApply".into(),
        owner_token: "t".into(),
        owner: "alice".into(),
    }
}

/// `new_lock(id)`'s release by its holder.
fn by_holder(id: &str) -> UnlockBy {
    UnlockBy::Holder {
        lock_id: id.into(),
        owner_token: "t".into(),
    }
}

pub fn locks(s: &dyn Store) {
    s.create_stack(
        "conf/locks",
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    assert_eq!(
        s.lock("conf/locks", new_lock("a"), audit("lock")).unwrap(),
        LockOutcome::Acquired
    );
    match s.lock("conf/locks", new_lock("b"), audit("lock")).unwrap() {
        LockOutcome::Held(h) => {
            assert_eq!(h.id, "a");
            assert_eq!(h.info, br#"{"ID":"a"}"#);
        }
        other => panic!("second lock: {other:?}"),
    }
    // A refused lock or unlock changes nothing and records nothing; the stack and its lock
    // read together agree with `current_lock`.
    let events = s.audit_count(&AuditFilter::default()).unwrap();
    match s
        .unlock("conf/locks", by_holder("b"), audit("unlock"))
        .unwrap()
    {
        UnlockOutcome::Mismatch(h) => assert_eq!(h.id, "a"),
        other => panic!("unlock with another id: {other:?}"),
    }
    assert_eq!(s.audit_count(&AuditFilter::default()).unwrap(), events);
    let (stack, held) = s.stack_with_lock("conf/locks").unwrap().unwrap();
    assert_eq!(stack.name, "conf/locks");
    assert_eq!(held.map(|h| h.id).as_deref(), Some("a"));
    match s
        .unlock("conf/locks", by_holder("a"), audit("unlock"))
        .unwrap()
    {
        UnlockOutcome::Released(h) => {
            assert_eq!(h.id, "a");
            assert_eq!(h.info, br#"{"ID":"a"}"#);
        }
        other => panic!("unlock by its holder: {other:?}"),
    }
    assert_eq!(s.audit_count(&AuditFilter::default()).unwrap(), events + 1);
    assert!(s
        .stack_with_lock("conf/locks")
        .unwrap()
        .unwrap()
        .1
        .is_none());
    assert!(s.stack_with_lock("conf/none").unwrap().is_none());
    assert_eq!(
        s.unlock("conf/locks", by_holder("a"), audit("unlock"))
            .unwrap(),
        UnlockOutcome::NotLocked
    );
    assert_eq!(
        s.unlock("conf/locks", UnlockBy::Force, audit("unlock"))
            .unwrap(),
        UnlockOutcome::NotLocked
    );
    s.lock("conf/locks", new_lock("c"), audit("lock")).unwrap();
    assert!(matches!(
        s.unlock("conf/locks", UnlockBy::Force, audit("unlock"))
            .unwrap(),
        UnlockOutcome::Released(_)
    ));
    assert!(s.current_lock("conf/locks").unwrap().is_none());
    assert!(matches!(
        s.lock("conf/none", new_lock("x"), audit("lock")),
        Err(StoreError::NotFound(_))
    ));
}

/// A release names whose lock it is, and the transaction that deletes checks it: A's release
/// of lock ID X that arrives after X was released and taken again by B (IDs are the clients'
/// choice) releases nothing. A release by ID of a token with the force-unlock permission
/// releases whoever's lock it is, audited as a force-unlock only when it is another's.
pub fn releases_are_their_holders(s: &dyn Store) {
    let stack = "conf/holders";
    s.create_stack(stack, false, StackSettings::default(), audit("x"))
        .unwrap();
    let lock_of = |token: &str| NewLock {
        owner_token: token.into(),
        owner: format!("owner of {token}"),
        ..new_lock("X")
    };
    let release = |token: &str| UnlockBy::Holder {
        lock_id: "X".into(),
        owner_token: token.into(),
    };
    s.lock(stack, lock_of("tok-a"), audit("lock")).unwrap();
    assert!(matches!(
        s.unlock(stack, release("tok-a"), audit("unlock")).unwrap(),
        UnlockOutcome::Released(h) if h.owner_token == "tok-a"
    ));
    s.lock(stack, lock_of("tok-b"), audit("lock")).unwrap();
    let events = audit_len(s);
    // A's stale release: B's lock stays, nothing is recorded.
    match s.unlock(stack, release("tok-a"), audit("unlock")).unwrap() {
        UnlockOutcome::Mismatch(h) => {
            assert_eq!((h.id.as_str(), h.owner_token.as_str()), ("X", "tok-b"))
        }
        other => panic!("a stale release of another token's lock: {other:?}"),
    }
    assert_eq!(s.current_lock(stack).unwrap().unwrap().owner_token, "tok-b");
    assert_eq!(audit_len(s), events);
    // By ID, with the force-unlock permission: B's own lock is a plain unlock...
    let by_id = |token: &str| UnlockBy::Id {
        lock_id: "X".into(),
        token: token.into(),
    };
    let unlock = NewAudit::ok("b", "unlock", Some(stack), json!({}));
    assert!(matches!(
        s.unlock(stack, by_id("tok-b"), unlock).unwrap(),
        UnlockOutcome::Released(h) if h.owner_token == "tok-b"
    ));
    // ...another's is a force-unlock naming the lock and its holder; another ID is a mismatch.
    s.lock(stack, lock_of("tok-b"), audit("lock")).unwrap();
    assert!(matches!(
        s.unlock(stack, UnlockBy::Id { lock_id: "Y".into(), token: "tok-a".into() }, audit("unlock")).unwrap(),
        UnlockOutcome::Mismatch(h) if h.id == "X"
    ));
    let unlock = NewAudit::ok("a", "unlock", Some(stack), json!({}));
    assert!(matches!(
        s.unlock(stack, by_id("tok-a"), unlock).unwrap(),
        UnlockOutcome::Released(h) if h.owner_token == "tok-b"
    ));
    let page = s.audit_search(&AuditFilter::default(), 2).unwrap();
    let actions: Vec<_> = page
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(actions, [("a", "lock.force_unlock"), ("test", "lock")]);
    assert_eq!(
        page[0].detail,
        json!({"lock_id": "X", "holder": "owner of tok-b"})
    );
    assert_eq!(page[0].stack.as_deref(), Some(stack));
    assert!(s.current_lock(stack).unwrap().is_none());
    assert_eq!(
        s.unlock(stack, release("tok-a"), audit("unlock")).unwrap(),
        UnlockOutcome::NotLocked
    );
}

pub fn writes_and_history(s: &dyn Store) {
    let stack = "conf/writes";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    let b1 = state(1, "lin", 3);
    let Ok(WriteResult::Stored(v1)) = s.write_state(stack, attempt(b1.clone(), 1), &mut store_it)
    else {
        panic!("first write")
    };
    assert_eq!(v1.serial, 1);
    assert_eq!(
        s.stack(stack).unwrap().unwrap().lineage.as_deref(),
        Some("lin")
    );
    // The firewall sees the current version and can load its bytes.
    let b2 = state(2, "lin", 2);
    let mut seen = None;
    let r = s
        .write_state(stack, attempt(b2.clone(), 2), &mut |ctx: &WriteContext<
            '_,
        >| {
            seen = Some((ctx.current.map(|v| v.serial), (ctx.load_current)().unwrap()));
            store_it(ctx)
        })
        .unwrap();
    assert!(matches!(r, WriteResult::Stored(_)));
    assert_eq!(seen, Some((Some(1), b1.clone())));
    // Refusals and no-ops store nothing.
    let r = s
        .write_state(
            stack,
            attempt(state(3, "lin", 1), 3),
            &mut |_: &WriteContext<'_>| Err(Refusal::new(RefusalKind::Forbidden, "no")),
        )
        .unwrap();
    assert!(matches!(r, WriteResult::Refused(_)));
    let r = s
        .write_state(stack, attempt(b2.clone(), 2), &mut |_: &WriteContext<
            '_,
        >| {
            Ok(WriteDecision::Unchanged)
        })
        .unwrap();
    assert!(matches!(r, WriteResult::Unchanged));
    // A duplicate serial is a conflict, never an overwrite.
    assert!(matches!(
        s.write_state(stack, attempt(state(2, "lin", 9), 2), &mut store_it),
        Err(StoreError::Conflict(_))
    ));
    let history = s.versions(stack).unwrap();
    assert_eq!(history.iter().map(|v| v.serial).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(s.current_version(stack).unwrap().unwrap().serial, 2);
    assert_eq!(s.version_bytes(stack, 1).unwrap(), b1);
    assert_eq!(s.version_bytes(stack, 2).unwrap(), b2);
    assert!(matches!(
        s.version_bytes(stack, 3),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.version(stack, 1).unwrap().unwrap().sha256,
        hex::encode(crate::blob::sha256(&b1))
    );
    let report = s.verify(Some(stack)).unwrap();
    assert_eq!((report.checked, report.failures.len()), (2, 0));
}

/// Where the engines used to disagree, each now behaves the safe way on both.
pub fn engines_agree(s: &dyn StoreImport) {
    let stack = "conf/agree";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    let grant = |id: &str| NewGrant {
        id: id.into(),
        addresses: vec!["x".into()],
        reason: "r".into(),
        created_by: "a".into(),
        expires_at: now_ms() + 60_000,
        run_id: None,
    };
    // A duplicate id is a conflict (409), never a database error (500): it was one on
    // PostgreSQL and the other on SQLite.
    let first = s
        .create_grant(stack, grant("g-dup"), audit("grant.create"))
        .unwrap();
    let audited = audit_len(s);
    assert!(matches!(
        s.create_grant(stack, grant("g-dup"), audit("grant.create")),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.import_grant(&first),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_stack(
            stack,
            false,
            StackSettings::default(),
            audit("stack.create")
        ),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.import_stack(&s.stack(stack).unwrap().unwrap()),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(audit_len(s), audited, "a refused duplicate is not audited");
    // `restored_from` and serials a BIGINT cannot hold are refused before anything is stored
    // (SQLite stored them wrapped negative, PostgreSQL dropped `restored_from`, import refused).
    let too_big = u64::MAX - 1;
    let mut restore = attempt(state(1, "lin", 1), 1);
    restore.restored_from = Some(too_big);
    assert!(matches!(
        s.write_state(stack, restore, &mut store_it),
        Err(StoreError::Conflict(m)) if m.contains("restored_from")
    ));
    assert!(matches!(
        s.write_state(stack, attempt(state(1, "lin", 1), too_big), &mut store_it),
        Err(StoreError::Conflict(m)) if m.contains("serial")
    ));
    assert!(s.versions(stack).unwrap().is_empty());
    assert!(s.version(stack, too_big).unwrap().is_none());
    assert!(matches!(
        s.version_bytes(stack, too_big),
        Err(StoreError::NotFound(_))
    ));
    let body = state(1, "lin", 1);
    let meta = |serial: u64, restored_from: Option<u64>| VersionMeta {
        stack: stack.into(),
        serial,
        lineage: "lin".into(),
        sha256: hex::encode(crate::blob::sha256(&body)),
        size: body.len() as u64,
        author: "a".into(),
        lock_id: None,
        run_id: None,
        reason: None,
        restored_from,
        created_at: 1,
    };
    assert!(matches!(
        s.import_version(&meta(1, Some(too_big)), &body),
        Err(StoreError::Conflict(m)) if m.contains("restored_from")
    ));
    assert!(matches!(
        s.import_version(&meta(too_big, None), &body),
        Err(StoreError::Conflict(m)) if m.contains("serial")
    ));
    assert!(s.versions(stack).unwrap().is_empty());
    assert_eq!(audit_len(s), audited);
}

/// Deleting a stack archives it: refused while locked or applying; afterwards its history
/// stays readable, every change is refused, the name stays taken, and an import keeps it.
pub fn archived_stacks(s: &dyn StoreImport) {
    let stack = "conf/archived";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    let body = state(1, "lin", 2);
    s.write_state(stack, attempt(body.clone(), 1), &mut store_it)
        .unwrap();
    let delete = || s.archive_stack(stack, "admin", "decommissioned", audit("stack.delete"));
    // Refused while locked ...
    assert_eq!(
        s.lock(stack, new_lock("l1"), audit("lock")).unwrap(),
        LockOutcome::Acquired
    );
    assert!(matches!(delete(), Err(StoreError::Conflict(m)) if m.contains("locked")));
    s.unlock(stack, UnlockBy::Force, audit("unlock")).unwrap();
    // ... and while a run is applying.
    let mut applying = run_record("run-archived-1", stack, 1);
    applying.status = RunStatus::Applying;
    s.create_run(&applying, &[], audit("run.create")).unwrap();
    assert!(matches!(delete(), Err(StoreError::Conflict(m)) if m.contains("applying")));
    s.update_run(
        "run-archived-1",
        &mut |r: &RunRecord, _: &StackRecord, _: Option<&VersionMeta>, _: &[String]| {
            let mut done = r.clone();
            done.status = RunStatus::Failed;
            Ok((done, audit("run.finish")))
        },
    )
    .unwrap()
    .unwrap();
    s.create_run(
        &run_record("run-archived-2", stack, 2),
        &[(PLAN_ARTIFACT, b"open plan")],
        audit("run.create"),
    )
    .unwrap();

    let before = audit_len(s);
    let archived = delete().unwrap();
    assert_eq!(archived.archived.as_ref().unwrap().reason, "decommissioned");
    assert_eq!(
        audit_len(s),
        before + 2,
        "the open run's closing and the deletion are audited"
    );
    // The open run can never be applied: closed with the deletion, its binary plan purged.
    let closed = s.run("run-archived-2").unwrap().unwrap();
    assert_eq!(closed.status, RunStatus::Superseded);
    assert!(closed.note.as_deref().unwrap().contains("was deleted"));
    assert!(matches!(
        s.run_artifact("run-archived-2", PLAN_ARTIFACT),
        Err(StoreError::Purged(_))
    ));
    assert_eq!(s.stack(stack).unwrap().unwrap(), archived);
    assert!(s.list_stacks().unwrap().contains(&archived));
    // History stays readable.
    assert_eq!(s.versions(stack).unwrap().len(), 1);
    assert_eq!(s.version_bytes(stack, 1).unwrap(), body);
    assert_eq!(s.runs(Some(stack), 10).unwrap().len(), 2);
    // Every change is refused, with the reason.
    let refused = |r: Result<(), StoreError>| {
        assert!(
            matches!(&r, Err(StoreError::Conflict(m)) if m.contains("was deleted")),
            "{r:?}"
        )
    };
    assert!(matches!(
        s.write_state(stack, attempt(state(2, "lin", 2), 2), &mut store_it),
        Ok(WriteResult::Refused(r)) if r.message.contains("was deleted")
    ));
    refused(s.lock(stack, new_lock("l2"), audit("lock")).map(|_| ()));
    refused(s.create_run(
        &run_record("run-archived-3", stack, 3),
        &[],
        audit("run.create"),
    ));
    refused(
        s.create_grant(
            stack,
            NewGrant {
                id: "g-archived".into(),
                addresses: vec!["x".into()],
                reason: "r".into(),
                created_by: "a".into(),
                expires_at: now_ms() + 60_000,
                run_id: None,
            },
            audit("grant.create"),
        )
        .map(|_| ()),
    );
    refused(
        s.update_stack_settings(stack, StackSettings::default(), audit("settings"))
            .map(|_| ()),
    );
    refused(delete().map(|_| ()));
    let transition = s
        .update_run(
            "run-archived-2",
            &mut |r: &RunRecord, _: &StackRecord, _: Option<&VersionMeta>, _: &[String]| {
                Ok((r.clone(), audit("run.approve")))
            },
        )
        .unwrap();
    assert!(matches!(transition, Err(r) if r.message.contains("was deleted")));
    // The name stays with its history.
    assert!(matches!(
        s.create_stack(stack, false, StackSettings::default(), audit("stack.create")),
        Err(StoreError::Conflict(m)) if m.contains("deleted")
    ));
    assert_eq!(audit_len(s), before + 2, "refusals change nothing");
    assert_eq!(s.versions(stack).unwrap().len(), 1);
}

pub fn grants(s: &dyn Store) {
    let stack = "conf/grants";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    let g = s
        .create_grant(
            stack,
            NewGrant {
                id: "g1".into(),
                addresses: vec!["aws_db_instance.main".into()],
                reason: "r".into(),
                created_by: "a".into(),
                expires_at: now_ms() + 60_000,
                run_id: None,
            },
            audit("grant.create"),
        )
        .unwrap();
    s.create_grant(
        stack,
        NewGrant {
            id: "g-expired".into(),
            addresses: vec!["x".into()],
            reason: "r".into(),
            created_by: "a".into(),
            expires_at: now_ms() - 1,
            run_id: None,
        },
        audit("grant.create"),
    )
    .unwrap();
    let mut active = Vec::new();
    s.write_state(
        stack,
        attempt(state(1, "lin", 1), 1),
        &mut |ctx: &WriteContext<'_>| {
            active = ctx.grants.iter().map(|g| g.id.clone()).collect();
            Ok(WriteDecision::Store {
                consume_grants: vec![g.id.clone()],
                audit: audit("state.write"),
            })
        },
    )
    .unwrap();
    assert_eq!(
        active,
        ["g1"],
        "only unexpired, unconsumed grants are offered"
    );
    let after = s.grants(stack).unwrap();
    assert!(after
        .iter()
        .find(|x| x.id == "g1")
        .unwrap()
        .consumed_at
        .is_some());
    s.write_state(
        stack,
        attempt(state(2, "lin", 1), 2),
        &mut |ctx: &WriteContext<'_>| {
            assert!(ctx.grants.is_empty(), "a consumed grant is single use");
            store_it(ctx)
        },
    )
    .unwrap();
}

/// A run's removal grant lasts while the run applies and is closed, in the same transaction,
/// when the run leaves `applying`; other runs' grants and one-off grants are untouched.
pub fn run_grants_end_with_the_apply(s: &dyn Store) {
    let stack = "conf/rungrants";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    let grant = |id: &str, run: Option<&str>| NewGrant {
        id: id.into(),
        addresses: vec!["aws_db_instance.main".into()],
        reason: "r".into(),
        created_by: "a".into(),
        expires_at: now_ms() + 60_000,
        run_id: run.map(str::to_owned),
    };
    let mut run = run_record("run_grants1", stack, now_ms());
    run.status = RunStatus::Applying;
    s.create_run(&run, &[], audit("run.create")).unwrap();
    s.create_grant(
        stack,
        grant("g-run", Some("run_grants1")),
        audit("grant.create"),
    )
    .unwrap();
    s.create_grant(
        stack,
        grant("g-other", Some("run_other")),
        audit("grant.create"),
    )
    .unwrap();
    s.create_grant(stack, grant("g-direct", None), audit("grant.create"))
        .unwrap();
    let open = |s: &dyn Store| {
        let mut ids: Vec<String> = s
            .grants(stack)
            .unwrap()
            .into_iter()
            .filter(|g| g.consumed_at.is_none())
            .map(|g| g.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(open(s), ["g-direct", "g-other", "g-run"]);
    s.update_run("run_grants1", &mut |r, _, _, _| {
        let mut new = r.clone();
        new.status = RunStatus::Failed;
        Ok((new, audit("run.failed")))
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        open(s),
        ["g-direct", "g-other"],
        "the finished run's grant is closed"
    );
}

pub fn big_history_dedups<S: Store + StoreStats + ?Sized>(s: &S) {
    let stack = "conf/dedup";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    let before = s.stored_state_bytes().unwrap();
    let base = state(1, "lin", 3000);
    let raw = base.len() as u64;
    for serial in 1..=10u64 {
        let body = String::from_utf8(state(serial, "lin", 3000))
            .unwrap()
            .replace("\"id\": \"1500\"", &format!("\"id\": \"changed-{serial}\""))
            .into_bytes();
        assert!(matches!(
            s.write_state(stack, attempt(body, serial), &mut store_it)
                .unwrap(),
            WriteResult::Stored(_)
        ));
    }
    let grown = s.stored_state_bytes().unwrap() - before;
    assert!(
        grown < raw,
        "10 versions of a {raw}-byte state took {grown} bytes"
    );
}

pub fn concurrent_locks_have_one_winner(s: &Arc<dyn Store>) {
    let stack = "conf/race";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    for round in 0..5 {
        let wins = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (s, wins) = (Arc::clone(s), Arc::clone(&wins));
                std::thread::spawn(move || {
                    if s.lock(stack, new_lock(&format!("r{round}-{i}")), audit("lock"))
                        .unwrap()
                        == LockOutcome::Acquired
                    {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
        s.unlock(stack, UnlockBy::Force, audit("unlock")).unwrap();
    }
}

pub fn concurrent_writes_are_serialized(s: &Arc<dyn Store>) {
    let stack = "conf/serial";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    // Each writer stores current+1 as judged inside the transaction: no serial is lost or doubled.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = Arc::clone(s);
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let next = s
                        .current_version(stack)
                        .unwrap()
                        .map_or(1, |v| v.serial + 1);
                    let _ = s.write_state(
                        stack,
                        attempt(state(next, "lin", 1), next),
                        &mut |ctx: &WriteContext<'_>| {
                            if ctx.current.map_or(0, |v| v.serial) >= next {
                                return Err(Refusal::new(RefusalKind::Conflict, "stale"));
                            }
                            store_it(ctx)
                        },
                    );
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let serials: Vec<u64> = s
        .versions(stack)
        .unwrap()
        .iter()
        .map(|v| v.serial)
        .collect();
    let expected: Vec<u64> = (1..=serials.len() as u64).collect();
    assert_eq!(serials, expected);
}

pub fn audit_chain_verifies(s: &dyn Store) {
    s.append_audit(NewAudit::denied(
        "test",
        "denied",
        Some("conf/x"),
        json!({"why": "test"}),
    ))
    .unwrap();
    let events = s.audit_events(0, 100_000).unwrap();
    assert!(events.len() > 10);
    verify_chain(&events).unwrap();
    let page = s.audit_events(3, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    // A seal names every stack chain's head; a second one has nothing to seal.
    let seal = s
        .seal_audit()
        .unwrap()
        .expect("earlier tests wrote stack events");
    let heads = seal.sealed_heads().unwrap();
    let events = s.audit_events(0, 100_000).unwrap();
    for (chain, at, hash) in &heads {
        let last = events
            .iter()
            .rev()
            .find(|e| e.chain.as_deref() == Some(chain.as_str()))
            .unwrap();
        assert_eq!((last.chain_seq, &last.hash), (Some(*at), hash), "{chain}");
    }
    assert!(!heads.is_empty());
    // Listings leave seals out unless asked for them by action.
    let listed = s.audit_search(&AuditFilter::default(), 100_000).unwrap();
    assert!(
        listed.iter().all(|e| e.action != seal.action),
        "a seal listed"
    );
    let seals = AuditFilter {
        action: Some(seal.action.clone()),
        ..AuditFilter::default()
    };
    assert_eq!(s.audit_search(&seals, 10).unwrap()[0].seq, seal.seq);
    assert!(s.audit_count(&seals).unwrap() >= 1);
    assert_eq!(s.seal_audit().unwrap(), None);
    assert_eq!(walk_verified(s), 0, "nothing unsealed");
}

/// The whole log through `audit_walk`, verified; returns the count of unsealed records.
fn walk_verified(s: &dyn Store) -> u64 {
    let mut v = ChainVerifier::new();
    s.audit_walk(&mut |page| {
        for r in &page {
            v.push(r).unwrap_or_else(|e| panic!("broken: {e:?}"));
        }
        Ok(true)
    })
    .unwrap();
    v.unsealed()
}

/// An import may only extend the stored audit chains: a record that repeats a global position,
/// skips a position of its chain, names another predecessor, or does not hash to itself is
/// refused, and nothing is stored; the one record that does extend it is accepted.
pub fn import_only_extends_the_chain(s: &dyn StoreImport) {
    let events = s.audit_events(0, u32::MAX).unwrap();
    let last = events
        .last()
        .cloned()
        .expect("earlier tests appended events");
    let global = events
        .iter()
        .rev()
        .find(|e| e.chain.as_deref() == Some(""))
        .cloned()
        .expect("earlier tests appended events without a stack");
    let next = |prev: &AuditRecord, seq: i64, actor: &str| {
        let mut r = AuditRecord {
            seq,
            chain: Some(String::new()),
            chain_seq: prev.chain_seq.map(|p| p + 1),
            at: "2026-11-30T22:00:00Z".into(),
            actor: actor.into(),
            action: "imported".into(),
            stack: None,
            outcome: "ok".into(),
            detail: json!({}),
            prev_hash: prev.hash.clone(),
            hash: String::new(),
        };
        r.hash = r.expected_hash();
        r
    };
    let mut legacy = next(&global, last.seq + 1, "legacy");
    (legacy.chain, legacy.chain_seq) = (None, None);
    legacy.hash = legacy.expected_hash();
    let mut skipper = next(&global, last.seq + 1, "skipper");
    skipper.chain_seq = global.chain_seq.map(|p| p + 2);
    skipper.hash = skipper.expected_hash();
    let good = next(&global, last.seq + 1, "importer");
    let mut forged_hash = good.clone();
    forged_hash.actor = "someone else".into();
    let mut wrong_prev = good.clone();
    wrong_prev.prev_hash = GENESIS.to_owned();
    wrong_prev.hash = wrong_prev.expected_hash();
    for (bad, why) in [
        (
            next(&global, last.seq, "rewriter"),
            "repeats the last global position",
        ),
        (skipper, "skips a position of its chain"),
        (legacy, "is a legacy record after chained ones"),
        (wrong_prev, "names another predecessor"),
        (forged_hash, "does not hash to itself"),
    ] {
        assert!(
            matches!(
                s.import_audit(&bad),
                Err(StoreError::Conflict(_)) | Err(StoreError::Corrupt(_))
            ),
            "an imported record that {why} is refused"
        );
    }
    assert_eq!(
        s.audit_events(0, u32::MAX).unwrap(),
        events,
        "nothing was stored"
    );
    s.import_audit(&good).unwrap();
    let after = s.audit_events(0, u32::MAX).unwrap();
    assert_eq!(after.last(), Some(&good));
    verify_chain(&after).unwrap();
}

// ---- governed runs ----

pub(crate) fn run_record(id: &str, stack: &str, created_at: i64) -> RunRecord {
    RunRecord {
        id: id.into(),
        stack: stack.into(),
        status: RunStatus::NeedsApproval,
        author: "agent (tok-agent)".into(),
        author_token: "tok-agent".into(),
        author_user: "tok-agent".into(),
        author_role: "agent".into(),
        author_ref: None,
        created_at,
        updated_at: created_at,
        expires_at: created_at + 3_600_000,
        fingerprint: "f".repeat(64),
        terraform_version: "1.11.4".into(),
        planned_lineage: Some("lin".into()),
        planned_serial: Some(1),
        git_head: Some("abc123".into()),
        git_base: None,
        change_request: None,
        change_request_url: None,
        change_authors: Vec::new(),
        plan_sha256: "0".repeat(64),
        config_sha256: None,
        decision: "review".into(),
        report: RawJson::of(
            &json!({"summary": {"add": 1, "destroy": 1}, "findings": [{"rule": "protected", "address": "aws_db_instance.main"}]}),
        ),
        destroys: vec!["aws_db_instance.main".into()],
        required_approvals: 1,
        approvals: vec![],
        rejection: None,
        applied_by: None,
        apply_token: None,
        apply_started_at: None,
        apply_alive_until: None,
        finished_at: None,
        note: None,
        inputs: Vec::new(),
        planned_dir: None,
        moved_from: Vec::new(),
        unprotected_removals: None,
        policy_changes: Vec::new(),
        checks: Vec::new(),
        plan_mode: None,
        plan_checked_at: None,
        plan_read_stacks: Vec::new(),
    }
}

fn audit_len<S: Store + ?Sized>(s: &S) -> usize {
    s.audit_events(0, u32::MAX).unwrap().len()
}

// The closures return `RunUpdate`'s result, whose refusal carries a whole record.
#[allow(clippy::result_large_err)]
/// `runs_planned_since` counts one user's runs created at or after a time (the server's bound on
/// an agent's runs per hour), whatever their stack or status.
pub fn runs_planned_since(s: &dyn Store) {
    for stack in ["conf/rate-a", "conf/rate-b"] {
        s.create_stack(
            stack,
            false,
            StackSettings::default(),
            audit("stack.create"),
        )
        .unwrap();
    }
    let mut other = run_record("run-rate-other", "conf/rate-a", 5_000);
    other.author_user = "someone-else".into();
    s.create_run(&other, &[], audit("run.create")).unwrap();
    for (i, (stack, at)) in [
        ("conf/rate-a", 1_000),
        ("conf/rate-b", 5_000),
        ("conf/rate-a", 9_000),
    ]
    .into_iter()
    .enumerate()
    {
        let mut run = run_record(&format!("run-rate-{i}"), stack, at);
        run.author_user = "rate-agent".into();
        s.create_run(&run, &[], audit("run.create")).unwrap();
    }
    assert_eq!(s.runs_planned_since("rate-agent", 5_000).unwrap(), 2);
    assert_eq!(s.runs_planned_since("rate-agent", 0).unwrap(), 3);
    assert_eq!(s.runs_planned_since("rate-agent", 9_001).unwrap(), 0);
    assert_eq!(s.runs_planned_since("someone-else", 0).unwrap(), 1);
    assert_eq!(s.runs_planned_since("nobody", 0).unwrap(), 0);
}

/// A transition is given the approvals whose tokens are revoked or gone as of its own
/// transaction (what `run_rules::start_apply` does not count), in token id order.
pub fn transitions_see_revoked_approvals(s: &dyn Store) {
    let stack = "conf/revoked-approvals";
    s.create_stack(stack, false, StackSettings::default(), audit("x"))
        .unwrap();
    for id in ["tok-rv-b", "tok-rv-a", "tok-rv-kept"] {
        s.create_token(new_token(id, "", None, None), audit("token.create"))
            .unwrap();
    }
    let mut run = run_record("run_revoked_approvals", stack, now_ms());
    run.approvals = [
        "tok-rv-b",
        "tok-rv-gone",
        "tok-rv-kept",
        "tok-rv-a",
        "tok-rv-b",
    ]
    .iter()
    .map(|t| Approval {
        by: format!("approver ({t})"),
        by_token: (*t).into(),
        by_user: (*t).into(),
        at: now_ms(),
        plan_sha256: run.plan_sha256.clone(),
    })
    .collect();
    s.create_run(&run, &[], audit("run.create")).unwrap();
    let seen = |s: &dyn Store| {
        let mut seen = None;
        let t = s
            .update_run(&run.id, &mut |_, _, _, revoked: &[String]| {
                seen = Some(revoked.to_vec());
                Err(Refusal::new(RefusalKind::Conflict, "look only").into())
            })
            .unwrap();
        assert!(t.is_err());
        seen.unwrap()
    };
    assert_eq!(seen(s), ["tok-rv-gone"]);
    s.revoke_token("tok-rv-b", audit("token.revoke")).unwrap();
    s.revoke_token("tok-rv-a", audit("token.revoke")).unwrap();
    assert_eq!(seen(s), ["tok-rv-a", "tok-rv-b", "tok-rv-gone"]);
}

pub fn runs(s: &dyn Store) {
    let stack = "conf/runs";
    s.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    s.write_state(stack, attempt(state(1, "lin", 2), 1), &mut store_it)
        .unwrap();
    // Artifacts are binary and byte-exact: every byte value, larger than one compression block.
    let plan: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let plan_json = br#"{"format_version":"1.2","resource_changes":[]}"#.to_vec();
    let base = now_ms();
    let run = run_record("run_conf1", stack, base - 2000);
    let before = audit_len(s);
    s.create_run(
        &run,
        &[("plan.bin", &plan), ("plan.json", &plan_json)],
        NewAudit::ok("agent", "run.create", Some(stack), json!({"run": run.id})),
    )
    .unwrap();
    assert_eq!(
        audit_len(s),
        before + 1,
        "create_run appends its audit event"
    );
    assert_eq!(s.run("run_conf1").unwrap().as_ref(), Some(&run));
    assert!(s.run("run_none").unwrap().is_none());
    assert!(
        matches!(
            s.create_run(&run, &[], audit("x")),
            Err(StoreError::Conflict(_))
        ),
        "a run id is never reused"
    );
    assert!(matches!(
        s.create_run(
            &run_record("run_nostack", "conf/none", base),
            &[],
            audit("x")
        ),
        Err(StoreError::NotFound(_))
    ));
    assert!(s.run("run_nostack").unwrap().is_none());

    // Listing: newest first, per stack or across stacks, limit respected.
    let (mut r2, r3) = (
        run_record("run_conf2", stack, base - 1000),
        run_record("run_conf3", stack, base),
    );
    r2.status = RunStatus::Denied;
    r2.author = "alice laptop (tok-alice)".into();
    r2.author_token = "tok-alice".into();
    r2.author_user = "alice".into();
    r2.git_head = Some("def4567890".into());
    r2.change_request = Some(42);
    r2.change_request_url = Some("https://forge.example/o/r/pull/42".into());
    r2.fingerprint = "e".repeat(64);
    s.create_run(&r2, &[], audit("run.create")).unwrap();
    s.create_run(&r3, &[], audit("run.create")).unwrap();
    let ids = |v: Vec<RunRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.runs(Some(stack), 10).unwrap()),
        ["run_conf3", "run_conf2", "run_conf1"]
    );
    assert_eq!(
        ids(s.runs(Some(stack), 2).unwrap()),
        ["run_conf3", "run_conf2"]
    );
    let all = s.runs(None, 1000).unwrap();
    assert!(
        all.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    assert_eq!(
        ids(all.iter().filter(|r| r.stack == stack).cloned().collect()),
        ["run_conf3", "run_conf2", "run_conf1"]
    );
    assert_eq!(s.runs(None, 2).unwrap(), all[..2]);
    assert!(s.runs(Some("conf/none"), 10).is_err());
    // Filters: status (a column), author (user, token id or token name) and commit prefix
    // (in the record), each bounded by the limit like the rest.
    let only = |f: RunFilter| {
        ids(s
            .runs_where(
                &RunFilter {
                    stack: Some(stack.into()),
                    ..f
                },
                10,
            )
            .unwrap())
    };
    assert_eq!(
        only(RunFilter {
            status: Some(RunStatus::Denied),
            ..RunFilter::default()
        }),
        ["run_conf2"]
    );
    assert_eq!(
        only(RunFilter {
            status: Some(RunStatus::NeedsApproval),
            ..RunFilter::default()
        }),
        ["run_conf3", "run_conf1"]
    );
    assert!(only(RunFilter {
        status: Some(RunStatus::Applied),
        ..RunFilter::default()
    })
    .is_empty());
    for author in ["alice", "tok-alice", "alice laptop"] {
        assert_eq!(
            only(RunFilter {
                author: Some(author.into()),
                ..RunFilter::default()
            }),
            ["run_conf2"],
            "{author}"
        );
    }
    for author in ["alic", "alice laptop (", "%", "agent (tok-agent)"] {
        assert!(
            only(RunFilter {
                author: Some(author.into()),
                ..RunFilter::default()
            })
            .is_empty(),
            "{author}"
        );
    }
    assert_eq!(
        only(RunFilter {
            author: Some("agent".into()),
            ..RunFilter::default()
        }),
        ["run_conf3", "run_conf1"]
    );
    assert_eq!(
        only(RunFilter {
            commit: Some("def4".into()),
            ..RunFilter::default()
        }),
        ["run_conf2"]
    );
    assert_eq!(
        only(RunFilter {
            commit: Some("abc123".into()),
            ..RunFilter::default()
        }),
        ["run_conf3", "run_conf1"]
    );
    assert!(only(RunFilter {
        commit: Some("abc1234".into()),
        ..RunFilter::default()
    })
    .is_empty());
    // The change request and the fingerprint (in the record; the change request is kept).
    assert_eq!(
        only(RunFilter {
            change_request: Some(42),
            ..RunFilter::default()
        }),
        ["run_conf2"]
    );
    assert!(only(RunFilter {
        change_request: Some(4),
        ..RunFilter::default()
    })
    .is_empty());
    assert_eq!(
        only(RunFilter {
            fingerprint: Some("f".repeat(64)),
            ..RunFilter::default()
        }),
        ["run_conf3", "run_conf1"]
    );
    assert_eq!(
        s.run("run_conf2")
            .unwrap()
            .unwrap()
            .change_request_url
            .as_deref(),
        Some("https://forge.example/o/r/pull/42")
    );
    let both = RunFilter {
        status: Some(RunStatus::NeedsApproval),
        commit: Some("abc".into()),
        ..RunFilter::default()
    };
    assert_eq!(ids(s.runs_where(&both, 1).unwrap()), ["run_conf3"]);
    // Other tests of the suite may have left matching runs on their own stacks.
    let ours: Vec<String> = ids(s.runs_where(&both, 100).unwrap())
        .into_iter()
        .filter(|id| id.starts_with("run_conf"))
        .collect();
    assert_eq!(ours, ["run_conf3", "run_conf1"], "across stacks too");

    // Artifacts: exact bytes back, none for an unknown name or run, never replaced.
    assert_eq!(
        s.run_artifact("run_conf1", "plan.bin").unwrap().as_deref(),
        Some(&plan[..])
    );
    assert_eq!(
        s.run_artifact("run_conf1", "plan.json").unwrap(),
        Some(plan_json)
    );
    assert_eq!(s.run_artifact("run_conf1", "apply.log").unwrap(), None);
    assert_eq!(s.run_artifact("run_none", "plan.bin").unwrap(), None);
    s.put_run_artifact("run_conf1", "apply.log", b"").unwrap();
    assert_eq!(
        s.run_artifact("run_conf1", "apply.log").unwrap(),
        Some(vec![]),
        "an empty artifact is stored"
    );
    s.put_run_artifact("run_conf1", "lock.hcl", b"provider \"x\" {}\n")
        .unwrap();
    assert!(matches!(
        s.put_run_artifact("run_conf1", "plan.bin", b"other"),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.put_run_artifact("run_conf1", "apply.log", b"later"),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.run_artifact("run_conf1", "plan.bin").unwrap().as_deref(),
        Some(&plan[..])
    );
    assert_eq!(
        s.run_artifact("run_conf1", "apply.log").unwrap(),
        Some(vec![])
    );
    assert!(matches!(
        s.put_run_artifact("run_none", "plan.bin", b"x"),
        Err(StoreError::NotFound(_))
    ));

    // A transition that is allowed: judged on the locked run, its stack and current version.
    let before = audit_len(s);
    let mut seen = None;
    let t = s
        .update_run(
            "run_conf1",
            &mut |r: &RunRecord, st: &StackRecord, current: Option<&VersionMeta>, _: &[String]| {
                seen = Some((r.status, st.name.clone(), current.map(|v| v.serial)));
                let mut new = r.clone();
                new.status = RunStatus::Approved;
                new.approvals.push(Approval {
                    by: "bob (tok-bob)".into(),
                    by_token: "tok-bob".into(),
                    by_user: "bob".into(),
                    at: base,
                    plan_sha256: r.plan_sha256.clone(),
                });
                new.updated_at = base + 1;
                Ok((
                    new,
                    NewAudit::ok("bob", "run.approve", Some(stack), json!({"run": r.id})),
                ))
            },
        )
        .unwrap();
    assert_eq!(
        seen,
        Some((RunStatus::NeedsApproval, stack.to_owned(), Some(1)))
    );
    let approved = t.unwrap();
    assert_eq!(approved.status, RunStatus::Approved);
    assert_eq!(s.run("run_conf1").unwrap().unwrap(), approved);
    assert_eq!(
        s.runs(Some(stack), 10)
            .unwrap()
            .iter()
            .find(|r| r.id == "run_conf1")
            .unwrap()
            .status,
        RunStatus::Approved
    );
    let events = s.audit_events(0, u32::MAX).unwrap();
    assert_eq!(events.len(), before + 1);
    assert_eq!(
        (
            events[before].action.as_str(),
            events[before].stack.as_deref()
        ),
        ("run.approve", Some(stack))
    );

    // A refusal without a record changes nothing, not even the audit log.
    let before = audit_len(s);
    let t = s
        .update_run(
            "run_conf1",
            &mut |_: &RunRecord, _: &StackRecord, _: Option<&VersionMeta>, _: &[String]| {
                Err(Refusal::new(RefusalKind::Forbidden, "approver is the author").into())
            },
        )
        .unwrap();
    assert_eq!(t.unwrap_err().message, "approver is the author");
    assert_eq!(s.run("run_conf1").unwrap().unwrap(), approved);
    assert_eq!(audit_len(s), before);

    // A refusal with a record is refused, and its status change is recorded all the same.
    let t = s
        .update_run(
            "run_conf1",
            &mut |r: &RunRecord, _: &StackRecord, _: Option<&VersionMeta>, _: &[String]| {
                let mut new = r.clone();
                new.status = RunStatus::Superseded;
                new.note = Some("the stack changed after planning".into());
                Err(RunRefusal {
                    refusal: Refusal::new(RefusalKind::Conflict, "stale plan"),
                    record: Some(Box::new((
                        new,
                        NewAudit::denied(
                            "carol",
                            "run.supersede",
                            Some(stack),
                            json!({"run": r.id}),
                        ),
                    ))),
                })
            },
        )
        .unwrap();
    assert_eq!(t.unwrap_err().kind, RefusalKind::Conflict);
    let superseded = s.run("run_conf1").unwrap().unwrap();
    assert_eq!(
        (superseded.status, superseded.note.as_deref()),
        (
            RunStatus::Superseded,
            Some("the stack changed after planning")
        )
    );
    let events = s.audit_events(0, u32::MAX).unwrap();
    assert_eq!(events.len(), before + 1);
    assert_eq!(
        (
            events[before].action.as_str(),
            events[before].outcome.as_str()
        ),
        ("run.supersede", "denied")
    );
    // The other runs were not touched.
    assert_eq!(s.run("run_conf2").unwrap().unwrap(), r2);

    let mut called = false;
    let r = s.update_run(
        "run_none",
        &mut |r: &RunRecord, _: &StackRecord, _: Option<&VersionMeta>, _: &[String]| {
            called = true;
            Ok((r.clone(), audit("x")))
        },
    );
    assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    assert!(!called);
}

/// `threads` clients, spread over `stores`, each move one run from NeedsApproval to Applying
/// only if it is still NeedsApproval; exactly one of them must win each round. Meanwhile the
/// stack gets a state write and the run an artifact, which take the same row locks.
// The closures return `RunUpdate`'s result, whose refusal carries a whole record.
#[allow(clippy::result_large_err)]
fn race_for_run(stores: &[&Arc<dyn Store>], stack: &str, rounds: usize, threads: usize) {
    let s0 = stores[0];
    s0.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    for round in 0..rounds {
        let id = format!("run_race_{}_{round}", stack.replace('/', "_"));
        s0.create_run(
            &run_record(&id, stack, now_ms()),
            &[("plan.bin", b"plan")],
            audit("run.create"),
        )
        .unwrap();
        let winners = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = Arc::new(std::sync::Barrier::new(threads + 2));
        let mut handles: Vec<_> = (0..threads)
            .map(|i| {
                let s = Arc::clone(stores[i % stores.len()]);
                let (winners, start, id) = (Arc::clone(&winners), Arc::clone(&start), id.clone());
                let stack = stack.to_owned();
                std::thread::spawn(move || {
                    let me = format!("client-{i}");
                    start.wait();
                    let t = s
                        .update_run(
                            &id,
                            &mut |r: &RunRecord,
                                  _: &StackRecord,
                                  _: Option<&VersionMeta>,
                                  _: &[String]| {
                                if r.status != RunStatus::NeedsApproval {
                                    return Err(Refusal::new(
                                        RefusalKind::Conflict,
                                        format!("run is {}", r.status.as_str()),
                                    )
                                    .into());
                                }
                                let mut new = r.clone();
                                new.status = RunStatus::Applying;
                                new.applied_by = Some(me.clone());
                                Ok((
                                    new,
                                    NewAudit::ok(
                                        &me,
                                        "run.apply",
                                        Some(stack.as_str()),
                                        json!({"run": r.id}),
                                    ),
                                ))
                            },
                        )
                        .unwrap();
                    if let Ok(r) = t {
                        winners.lock().unwrap().push((me, r));
                    }
                })
            })
            .collect();
        let (s, start2, id2) = (
            Arc::clone(stores[round % stores.len()]),
            Arc::clone(&start),
            id.clone(),
        );
        handles.push(std::thread::spawn(move || {
            start2.wait();
            s.put_run_artifact(&id2, "apply.log", b"applying").unwrap();
        }));
        let (s, start3, stack3) = (
            Arc::clone(stores[(round + 1) % stores.len()]),
            Arc::clone(&start),
            stack.to_owned(),
        );
        handles.push(std::thread::spawn(move || {
            start3.wait();
            let serial = round as u64 + 1;
            let r = s
                .write_state(
                    &stack3,
                    attempt(state(serial, "lin", 1), serial),
                    &mut store_it,
                )
                .unwrap();
            assert!(matches!(r, WriteResult::Stored(_)), "{r:?}");
        }));
        handles.into_iter().for_each(|t| t.join().unwrap());
        let winners = winners.lock().unwrap().clone();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: winners {:?}",
            winners.iter().map(|w| &w.0).collect::<Vec<_>>()
        );
        let (who, record) = &winners[0];
        assert_eq!(record.applied_by.as_ref(), Some(who));
        for s in stores {
            assert_eq!(s.run(&id).unwrap().as_ref(), Some(record), "round {round}");
            assert_eq!(
                s.run_artifact(&id, "apply.log").unwrap().as_deref(),
                Some(&b"applying"[..])
            );
        }
        let applies = s0
            .audit_events(0, u32::MAX)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "run.apply" && e.detail["run"] == id.as_str())
            .count();
        assert_eq!(applies, 1, "round {round}: one transition, one audit event");
    }
}

pub fn concurrent_run_transitions_have_one_winner(s: &Arc<dyn Store>) {
    race_for_run(&[s], "conf/run-race", 5, 8);
}

/// An approver's token revoked while a transition counts its approval: either the transition
/// sees the revocation, or the revocation is recorded after the transition (the transition
/// locks the approvals' token rows), never a transition that counted a token revoked before it.
pub fn revocations_and_transitions_are_ordered(s: &Arc<dyn Store>) {
    let stack = "conf/revoke-race";
    s.create_stack(stack, false, StackSettings::default(), audit("x"))
        .unwrap();
    for round in 0..40 {
        let (token, id) = (format!("tok-rr-{round}"), format!("run_rr_{round}"));
        s.create_token(new_token(&token, "", None, None), audit("token.create"))
            .unwrap();
        let mut run = run_record(&id, stack, now_ms());
        run.approvals = vec![Approval {
            by: token.clone(),
            by_token: token.clone(),
            by_user: token.clone(),
            at: now_ms(),
            plan_sha256: run.plan_sha256.clone(),
        }];
        s.create_run(&run, &[], audit("run.create")).unwrap();
        let start = Arc::new(std::sync::Barrier::new(2));
        let revoker = {
            let (s, start, token) = (Arc::clone(s), Arc::clone(&start), token.clone());
            std::thread::spawn(move || {
                start.wait();
                let audit = NewAudit::ok("test", "token.revoke", None, json!({"token": token}));
                s.revoke_token(&token, audit).unwrap();
            })
        };
        start.wait();
        let moved = s
            .update_run(&id, &mut |r, _, _, revoked| {
                if !revoked.is_empty() {
                    return Err(Refusal::new(RefusalKind::Conflict, "revoked").into());
                }
                let mut new = r.clone();
                new.status = RunStatus::Rejected;
                Ok((
                    new,
                    NewAudit::ok("test", "run.counted", Some(stack), json!({"run": id})),
                ))
            })
            .unwrap();
        revoker.join().unwrap();
        if moved.is_err() {
            continue;
        }
        let events = s.audit_events(0, u32::MAX).unwrap();
        let seq_of = |action: &str, key: &str, value: &str| {
            events
                .iter()
                .find(|e| e.action == action && e.detail[key] == value)
                .map(|e| e.seq)
                .unwrap()
        };
        let (counted, revoked) = (
            seq_of("run.counted", "run", &id),
            seq_of("token.revoke", "token", &token),
        );
        assert!(
            counted < revoked,
            "round {round}: the transition counted an approval (seq {counted}) whose token was revoked before it (seq {revoked})"
        );
    }
}

// ---- two stores on one database (replicas) ----

/// Runs every two-replica check. `a` and `b` are separate store instances (as two server
/// processes would hold) on the same fresh, empty database.
pub fn run_replicas(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    replicas_share_everything(a.as_ref(), b.as_ref());
    replicas_race_for_locks(a, b);
    replicas_locked_writes_are_linear(a, b);
    replicas_unlocked_writes_are_serialized(a, b);
    replicas_race_for_run_transitions(a, b);
    replicas_audit_chain_verifies(a.as_ref(), b.as_ref());
    concurrent_forge_token_uses_have_one_winner(&[a, b]);
}

/// What one replica writes, the other reads at once: no replica caches anything.
pub fn replicas_share_everything(a: &dyn Store, b: &dyn Store) {
    let stack = "rep/shared";
    a.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    assert!(matches!(
        b.create_stack(stack, false, StackSettings::default(), audit("x")),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        a.lock(stack, new_lock("ra"), audit("lock")).unwrap(),
        LockOutcome::Acquired
    );
    assert!(
        matches!(b.lock(stack, new_lock("rb"), audit("lock")).unwrap(), LockOutcome::Held(h) if h.id == "ra")
    );
    assert!(matches!(
        b.unlock(stack, by_holder("ra"), audit("unlock")).unwrap(),
        UnlockOutcome::Released(_)
    ));
    assert!(a.current_lock(stack).unwrap().is_none());
    let body = state(1, "lin", 2);
    assert!(matches!(
        b.write_state(stack, attempt(body.clone(), 1), &mut store_it)
            .unwrap(),
        WriteResult::Stored(_)
    ));
    assert_eq!(a.version_bytes(stack, 1).unwrap(), body);
    assert_eq!(
        a.stack(stack).unwrap().unwrap().lineage.as_deref(),
        Some("lin")
    );
    assert!(matches!(
        a.write_state(stack, attempt(state(1, "lin", 5), 1), &mut store_it),
        Err(StoreError::Conflict(_))
    ));
}

/// Clients on both replicas LOCK one stack at once: exactly one wins each round, and both
/// replicas then report that winner.
pub fn replicas_race_for_locks(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    let stack = "rep/race";
    a.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    for round in 0..10 {
        let winners = Arc::new(std::sync::Mutex::new(Vec::new()));
        let start = Arc::new(std::sync::Barrier::new(12));
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let s = Arc::clone([a, b][i % 2]);
                let (winners, start) = (Arc::clone(&winners), Arc::clone(&start));
                std::thread::spawn(move || {
                    let id = format!("r{round}-{i}");
                    start.wait();
                    if s.lock(stack, new_lock(&id), audit("lock")).unwrap() == LockOutcome::Acquired
                    {
                        winners.lock().unwrap().push(id);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let winners = winners.lock().unwrap().clone();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(a.current_lock(stack).unwrap().unwrap().id, winners[0]);
        assert_eq!(b.current_lock(stack).unwrap().unwrap().id, winners[0]);
        let loser = [b, a][round % 2];
        assert!(matches!(
            loser
                .unlock(stack, by_holder(&winners[0]), audit("unlock"))
                .unwrap(),
            UnlockOutcome::Released(_)
        ));
    }
}

/// Terraform's cycle (LOCK, read, write serial+1 under the lock, UNLOCK) from many clients
/// alternating between replicas: every write lands, serials are consecutive, the last state
/// holds the last change, and both replicas serve identical history.
pub fn replicas_locked_writes_are_linear(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    let stack = "rep/applies";
    a.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    const CLIENTS: usize = 8;
    const WRITES: usize = 4;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (a, b) = (Arc::clone(a), Arc::clone(b));
            std::thread::spawn(move || {
                for n in 0..WRITES {
                    // Alternate replicas between requests, as a load balancer would.
                    let pick = |k: usize| Arc::clone([&a, &b][(client + n + k) % 2]);
                    let id = format!("c{client}-{n}");
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                    while pick(0).lock(stack, new_lock(&id), audit("lock")).unwrap()
                        != LockOutcome::Acquired
                    {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "client {client} never got the lock"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                    let next = pick(1)
                        .current_version(stack)
                        .unwrap()
                        .map_or(1, |v| v.serial + 1);
                    let body = String::from_utf8(state(next, "lin", 20))
                        .unwrap()
                        .replace("\"id\": \"7\"", &format!("\"id\": \"{id}\""))
                        .into_bytes();
                    let r = pick(2)
                        .write_state(stack, attempt(body, next), &mut |ctx: &WriteContext<'_>| {
                            if ctx.lock.map(|l| l.id.as_str()) != Some(id.as_str()) {
                                return Err(Refusal::new(
                                    RefusalKind::Conflict,
                                    "not the lock holder",
                                ));
                            }
                            if ctx.current.map_or(0, |v| v.serial) + 1 != next {
                                return Err(Refusal::new(RefusalKind::Conflict, "stale serial"));
                            }
                            store_it(ctx)
                        })
                        .unwrap();
                    assert!(
                        matches!(r, WriteResult::Stored(_)),
                        "client {client} write {n}: {r:?}"
                    );
                    assert!(matches!(
                        pick(3)
                            .unlock(stack, by_holder(&id), audit("unlock"))
                            .unwrap(),
                        UnlockOutcome::Released(_)
                    ));
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let total = (CLIENTS * WRITES) as u64;
    let from_a = a.versions(stack).unwrap();
    assert_eq!(
        from_a.iter().map(|v| v.serial).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    assert_eq!(from_a, b.versions(stack).unwrap());
    for v in &from_a {
        assert_eq!(
            a.version_bytes(stack, v.serial).unwrap(),
            b.version_bytes(stack, v.serial).unwrap()
        );
    }
    let report = b.verify(Some(stack)).unwrap();
    assert_eq!((report.checked, report.failures.len()), (total, 0));
    assert!(a.current_lock(stack).unwrap().is_none());
}

/// Writers without locks on both replicas, each judging "current + 1" inside the write
/// transaction: no serial is lost or stored twice.
pub fn replicas_unlocked_writes_are_serialized(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    let stack = "rep/serial";
    a.create_stack(
        stack,
        false,
        StackSettings::default(),
        audit("stack.create"),
    )
    .unwrap();
    let stored = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let s = Arc::clone([a, b][i % 2]);
            let stored = Arc::clone(&stored);
            std::thread::spawn(move || {
                for _ in 0..5 {
                    let next = s
                        .current_version(stack)
                        .unwrap()
                        .map_or(1, |v| v.serial + 1);
                    let r = s.write_state(
                        stack,
                        attempt(state(next, "lin", 1), next),
                        &mut |ctx: &WriteContext<'_>| {
                            if ctx.current.map_or(0, |v| v.serial) >= next {
                                return Err(Refusal::new(RefusalKind::Conflict, "stale"));
                            }
                            store_it(ctx)
                        },
                    );
                    if matches!(r.unwrap(), WriteResult::Stored(_)) {
                        stored.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let serials: Vec<u64> = b
        .versions(stack)
        .unwrap()
        .iter()
        .map(|v| v.serial)
        .collect();
    assert_eq!(
        serials,
        (1..=stored.load(Ordering::SeqCst) as u64).collect::<Vec<_>>()
    );
}

/// Audit appends from both replicas at once, on top of everything above: one chain, no fork,
/// no gap, identical from either replica.
pub fn replicas_audit_chain_verifies(a: &dyn Store, b: &dyn Store) {
    std::thread::scope(|scope| {
        for (i, s) in [a, b, a, b].into_iter().enumerate() {
            scope.spawn(move || {
                for n in 0..10 {
                    s.append_audit(NewAudit::denied(
                        "test",
                        "denied",
                        None,
                        json!({"writer": i, "n": n}),
                    ))
                    .unwrap();
                }
            });
        }
    });
    let events = a.audit_events(0, 1_000_000).unwrap();
    assert_eq!(events, b.audit_events(0, 1_000_000).unwrap());
    assert_eq!(events.first().map(|e| e.seq), Some(1));
    verify_chain(&events).unwrap();
    assert_eq!(events.iter().filter(|e| e.action == "denied").count(), 40);

    // Stack events through both replicas on 4 stacks at once, both sealing meanwhile: each
    // stack's chain is gapless, and after a last seal nothing is unsealed.
    for i in 0..4 {
        a.create_stack(
            &format!("rep/chain-{i}"),
            false,
            StackSettings::default(),
            NewAudit::ok(
                "test",
                "stack.create",
                Some(&format!("rep/chain-{i}")),
                json!({}),
            ),
        )
        .unwrap();
    }
    std::thread::scope(|scope| {
        for (i, s) in [a, b, a, b].into_iter().enumerate() {
            scope.spawn(move || {
                for n in 0..10 {
                    let stack = format!("rep/chain-{i}");
                    s.append_audit(NewAudit::ok("test", "touch", Some(&stack), json!({"n": n})))
                        .unwrap();
                    if n % 3 == 0 {
                        s.seal_audit().unwrap();
                    }
                }
            });
        }
    });
    a.seal_audit().unwrap();
    assert_eq!(walk_verified(b), 0);
    let events = b.audit_events(0, 1_000_000).unwrap();
    for i in 0..4 {
        let chain = format!("rep/chain-{i}");
        let positions: Vec<i64> = events
            .iter()
            .filter(|e| e.chain.as_deref() == Some(chain.as_str()))
            .filter_map(|e| e.chain_seq)
            .collect();
        assert_eq!(positions, (1..=11).collect::<Vec<_>>(), "{chain}");
    }
}

/// Clients on both replicas move one run at once (approval races, double applies): exactly
/// one transition wins each round, and both replicas then serve the winner's record.
pub fn replicas_race_for_run_transitions(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    race_for_run(&[a, b], "rep/run-race", 5, 8);
}

/// Drift reports: tied to the current serial inside the transaction, append-only history paged
/// newest first, "drifted since" surviving `unknown` checks and cleared by an in-sync one,
/// refused on archived stacks, and audited.
pub fn drift_reports(s: &dyn StoreImport) {
    let stack = "conf/drift";
    s.create_stack(stack, true, StackSettings::default(), audit("stack.create"))
        .unwrap();
    let new = |id: &str, status: &str, serial: Option<u64>| NewDriftReport {
        id: id.into(),
        status: status.into(),
        serial,
        drifted: u64::from(status == "drifted"),
        findings: 0,
        reported_by: "ci (tok-c)".into(),
        report: format!(r#"{{"status":"{status}"}}"#),
    };
    let add = |id: &str, status: &str, serial: Option<u64>| {
        // Reports are ordered by time: keep them apart.
        std::thread::sleep(std::time::Duration::from_millis(3));
        s.add_drift_report(stack, new(id, status, serial), audit("drift.report"))
    };
    assert!(s
        .drift_states()
        .unwrap()
        .iter()
        .all(|d| d.last.stack != stack));
    // No state yet: only a report about "no state" is current.
    assert!(
        matches!(add("drf_c0", "in_sync", Some(1)), Err(StoreError::Conflict(m)) if m.contains("changed since"))
    );
    add("drf_c1", "in_sync", None).unwrap();
    s.write_state(stack, attempt(state(1, "lin", 1), 1), &mut store_it)
        .unwrap();
    assert!(matches!(
        add("drf_c2", "drifted", None),
        Err(StoreError::Conflict(_))
    ));
    let before = audit_len(s);
    let first = add("drf_c2", "drifted", Some(1)).unwrap();
    assert_eq!(audit_len(s), before + 1, "every report is audited");
    assert!(matches!(
        add("drf_c2", "drifted", Some(1)),
        Err(StoreError::Conflict(_))
    ));
    add("drf_c3", "unknown", Some(1)).unwrap();
    add("drf_c4", "drifted", Some(1)).unwrap();
    let state_of = || {
        s.drift_states()
            .unwrap()
            .into_iter()
            .find(|d| d.last.stack == stack)
            .unwrap()
    };
    let st = state_of();
    assert_eq!(
        (st.last.id.as_str(), st.drifted_since),
        ("drf_c4", Some(first.created_at))
    );
    add("drf_c5", "unknown", Some(1)).unwrap();
    let st = state_of();
    assert_eq!(st.last.status, "unknown");
    assert_eq!(
        st.drifted_since,
        Some(first.created_at),
        "an unknown check clears nothing"
    );
    add("drf_c6", "in_sync", Some(1)).unwrap();
    assert_eq!(state_of().drifted_since, None);
    let later = add("drf_c7", "drifted", Some(1)).unwrap();
    assert_eq!(state_of().drifted_since, Some(later.created_at));
    // History: newest first, paged.
    let ids = |offset, limit| -> Vec<String> {
        s.drift_reports(stack, offset, limit)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(ids(0, 3), ["drf_c7", "drf_c6", "drf_c5"]);
    assert_eq!(ids(3, 10), ["drf_c4", "drf_c3", "drf_c2", "drf_c1"]);
    let (meta, json) = s.drift_report("drf_c2").unwrap().unwrap();
    assert_eq!((meta, json.as_str()), (first, r#"{"status":"drifted"}"#));
    assert!(s.drift_report("drf_nope").unwrap().is_none());
    assert!(matches!(
        s.drift_reports("conf/none", 0, 1),
        Err(StoreError::NotFound(_))
    ));
    // Archived: history stays, new reports are refused.
    s.archive_stack(stack, "admin", "gone", audit("stack.delete"))
        .unwrap();
    assert!(
        matches!(add("drf_c8", "in_sync", Some(1)), Err(StoreError::Conflict(m)) if m.contains("deleted"))
    );
    assert_eq!(ids(0, 1), ["drf_c7"]);
}

// ---- forge ID tokens already exchanged ----

/// A forge token `(issuer, jti)` is recorded once (`Conflict` after), per issuer; records
/// whose `exp` is before `prune_before` go first, live ones stay.
pub fn forge_token_uses(s: &dyn Store) {
    let now = now_ms();
    let (gh, gl) = ("https://gh.example", "https://gl.example");
    let live = now + 300_000;
    let keep_all = i64::MIN;
    s.use_forge_token(gh, "j1", live, keep_all).unwrap();
    assert!(matches!(
        s.use_forge_token(gh, "j1", live, keep_all),
        Err(StoreError::Conflict(_))
    ));
    // Another issuer's jti space is its own; another jti is another token.
    s.use_forge_token(gl, "j1", live, keep_all).unwrap();
    s.use_forge_token(gh, "j2", live, keep_all).unwrap();
    // Expired records are deleted by the next use that prunes before their exp, not earlier.
    for i in 0..20 {
        s.use_forge_token(gh, &format!("old-{i}"), now - 120_000, keep_all)
            .unwrap();
    }
    s.use_forge_token(gh, "j3", live, now - 120_000).unwrap();
    assert!(
        matches!(
            s.use_forge_token(gh, "old-0", now - 120_000, keep_all),
            Err(StoreError::Conflict(_))
        ),
        "a record whose exp equals prune_before is kept"
    );
    s.use_forge_token(gh, "j4", live, now - 60_000).unwrap();
    for i in 0..20 {
        s.use_forge_token(gh, &format!("old-{i}"), now - 120_000, keep_all)
            .unwrap_or_else(|e| panic!("old-{i} was not pruned: {e}"));
    }
    // The prune left the live records alone.
    for (iss, jti) in [(gh, "j1"), (gl, "j1"), (gh, "j2"), (gh, "j3"), (gh, "j4")] {
        assert!(
            matches!(
                s.use_forge_token(iss, jti, live, now - 60_000),
                Err(StoreError::Conflict(_))
            ),
            "{iss} {jti}"
        );
    }
}

/// Logins with one forge token at once (on one store's connections, or on two replicas), while
/// each also prunes expired records: exactly one records it, every other gets `Conflict` (never
/// a database error), round after round.
pub fn concurrent_forge_token_uses_have_one_winner(stores: &[&Arc<dyn Store>]) {
    let now = now_ms();
    let issuer = format!("https://race-{now}.example");
    for round in 0..10 {
        for i in 0..10 {
            stores[0]
                .use_forge_token(
                    &issuer,
                    &format!("expired-{round}-{i}"),
                    now - 120_000,
                    i64::MIN,
                )
                .unwrap();
        }
        let start = Arc::new(std::sync::Barrier::new(12));
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let s = Arc::clone(stores[i % stores.len()]);
                let (start, issuer) = (Arc::clone(&start), issuer.clone());
                std::thread::spawn(move || {
                    start.wait();
                    s.use_forge_token(
                        &issuer,
                        &format!("job-{round}"),
                        now + 300_000,
                        now - 60_000,
                    )
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        one_won(round, &results, |e| matches!(e, StoreError::Conflict(_)));
    }
}

/// Writes histories whose versions share chunks (two stacks, a big state changed in one place
/// per version, and a version restored by value) and returns every (stack, serial, bytes)
/// written, for [`histories_read_back`] after a migration.
pub fn histories_sharing_chunks(s: &dyn Store) -> Vec<(String, u64, Vec<u8>)> {
    let mut written = Vec::new();
    for stack in ["chunks/a", "chunks/b"] {
        s.create_stack(
            stack,
            false,
            StackSettings::default(),
            audit("stack.create"),
        )
        .unwrap();
        for serial in 1..=4u64 {
            // Serial 4 repeats serial 1's content: every one of its chunks is stored already.
            let changed = if serial == 4 { 1 } else { serial };
            let body = String::from_utf8(state(serial, "lin", 3000))
                .unwrap()
                .replace(
                    "\"id\": \"1500\"",
                    &format!("\"id\": \"{stack}-changed-{changed}\""),
                )
                .into_bytes();
            let r = s
                .write_state(stack, attempt(body.clone(), serial), &mut store_it)
                .unwrap();
            assert!(matches!(r, WriteResult::Stored(_)), "{stack} {serial}");
            written.push((stack.to_owned(), serial, body));
        }
    }
    written
}

/// Every version [`histories_sharing_chunks`] wrote reads back byte for byte and verifies,
/// and a new version sharing their chunks stores and reads back too.
pub fn histories_read_back(s: &dyn Store, written: &[(String, u64, Vec<u8>)]) {
    for (stack, serial, body) in written {
        assert_eq!(
            &s.version_bytes(stack, *serial).unwrap(),
            body,
            "{stack} {serial}"
        );
    }
    let report = s.verify(None).unwrap();
    assert_eq!(
        (report.checked, report.failures),
        (written.len() as u64, vec![])
    );
    let (stack, serial, body) = &written[written.len() - 1];
    let next = String::from_utf8(body.clone())
        .unwrap()
        .replace(
            &format!("\"serial\": {serial}"),
            &format!("\"serial\": {}", serial + 1),
        )
        .replace("\"id\": \"7\"", "\"id\": \"seven\"")
        .into_bytes();
    let r = s
        .write_state(stack, attempt(next.clone(), serial + 1), &mut store_it)
        .unwrap();
    assert!(matches!(r, WriteResult::Stored(_)));
    assert_eq!(s.version_bytes(stack, serial + 1).unwrap(), next);
}

/// [`Person::may_receive`], judged inside the minting transaction: a stack-scoped admin mints
/// only for users wholly within its scope (or itself); a user holding a token it minted is
/// not given a token beyond its scope, nor a forge login; and a scoped admin's mint racing a
/// wider one for the same user never lets both through.
pub fn minting_for_a_person(store: &Arc<dyn Store>) {
    let s = store.as_ref();
    // `by` mints (its minted_by names it, and its created_by, as the server's do); None: the
    // operator.
    let mint = |id: &str, user: &str, stacks: &[&str], by: Option<&str>| {
        let mut t = new_token(id, user, None, None);
        t.stacks = stacks.iter().map(|g| (*g).to_owned()).collect();
        t.created_by = by.map_or_else(
            || "offline (uid 0 on host)".into(),
            |b| format!("minter ({b})"),
        );
        t.minted_by = by.map(str::to_owned);
        s.create_token(t, audit("token.create"))
    };
    new_user(s, "pm-dave");
    mint("tok_pm_root", "pm-dave", &[], None).unwrap();
    mint("tok_pm_dev", "pm-dave", &["pmdev/*"], Some("tok_pm_root")).unwrap();
    // Beyond the scoped admin: a user once given a wider token (revoked now), or a forge login.
    new_user(s, "pm-alice");
    mint("tok_pm_a1", "pm-alice", &["pmprod/*"], Some("tok_pm_root")).unwrap();
    s.revoke_token("tok_pm_a1", audit("token.revoke")).unwrap();
    let r = mint("tok_pm_a2", "pm-alice", &["pmdev/*"], Some("tok_pm_dev"));
    assert!(
        matches!(&r, Err(StoreError::Forbidden(m)) if m.contains("only an admin token for all stacks")),
        "{r:?}"
    );
    assert!(s.token("tok_pm_a2").unwrap().is_none());
    new_user(s, "pm-bob");
    s.add_forge_login("pm-bob", "github:pm-bob", audit("user.forge_login"))
        .unwrap();
    let r = mint("tok_pm_b1", "pm-bob", &["pmdev/*"], Some("tok_pm_dev"));
    assert!(
        matches!(&r, Err(StoreError::Forbidden(m)) if m.contains("forge logins")),
        "{r:?}"
    );
    // Within it: a new user, and the admin's own user (a prod person too).
    new_user(s, "pm-erin");
    mint("tok_pm_e1", "pm-erin", &["pmdev/app"], Some("tok_pm_dev")).unwrap();
    mint("tok_pm_d1", "pm-dave", &["pmprod/*"], None).unwrap();
    mint("tok_pm_d2", "pm-dave", &["pmdev/*"], Some("tok_pm_dev")).unwrap();
    // Erin holds the scoped admin's token: nothing beyond its scope until it is revoked,
    // whoever mints (the operator too).
    for stacks in [&["pmprod/*"][..], &[]] {
        let r = mint("tok_pm_e2", "pm-erin", stacks, None);
        assert!(
            matches!(&r, Err(StoreError::Forbidden(m)) if m.contains("revoke tok_pm_e1 first")),
            "{r:?}"
        );
    }
    let r = s.add_forge_login("pm-erin", "github:pm-erin", audit("user.forge_login"));
    assert!(matches!(r, Err(StoreError::Forbidden(_))), "{r:?}");
    mint("tok_pm_e3", "pm-erin", &["pmdev/web"], Some("tok_pm_root")).unwrap();
    s.revoke_token("tok_pm_e1", audit("token.revoke")).unwrap();
    mint("tok_pm_e2", "pm-erin", &["pmprod/*"], Some("tok_pm_root")).unwrap();
    s.add_forge_login("pm-erin", "github:pm-erin", audit("user.forge_login"))
        .unwrap();
    // A race: the scoped admin's mint and a wider one for one user; one wins, never both.
    for round in 0..8 {
        let name = format!("pm-race-{round}");
        new_user(s, &name);
        let start = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = [("pmdev/*", "tok_pm_dev"), ("pmprod/*", "tok_pm_root")]
            .into_iter()
            .enumerate()
            .map(|(i, (stacks, by))| {
                let (s, start, name) = (Arc::clone(store), Arc::clone(&start), name.clone());
                std::thread::spawn(move || {
                    let mut t = new_token(&format!("tok_pm_r{round}_{i}"), &name, None, None);
                    t.stacks = vec![stacks.to_owned()];
                    t.created_by = format!("minter ({by})");
                    t.minted_by = Some(by.to_owned());
                    start.wait();
                    s.create_token(t, audit("token.create"))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        one_won(round, &results, |e| matches!(e, StoreError::Forbidden(_)));
    }
}

/// The last audit event of `action` that names `run` in its detail.
fn run_event(s: &dyn Store, action: &str, run: &str) -> Option<serde_json::Value> {
    s.audit_events(0, u32::MAX)
        .unwrap()
        .into_iter()
        .rev()
        .find(|e| e.action == action && e.detail["run"] == run)
        .map(|e| e.detail)
}

/// Moves `id` to `status` (a transition as a rule would record it).
fn move_run(s: &dyn Store, id: &str, status: RunStatus) -> RunRecord {
    s.update_run(id, &mut |r: &RunRecord,
                           _: &StackRecord,
                           _: Option<&VersionMeta>,
                           _: &[String]| {
        let mut new = r.clone();
        new.status = status;
        Ok((
            new,
            NewAudit::ok(
                "test",
                &format!("run.{}", status.as_str()),
                Some(&r.stack),
                json!({"run": r.id}),
            ),
        ))
    })
    .unwrap()
    .unwrap()
}

/// Run artifact retention: a run's binary plan (`PLAN_ARTIFACT`) is purged in the transaction
/// that makes the run terminal, whichever terminal status, and in no other; a tombstone keeps
/// its name, SHA-256 and length and the purge time; reading it says `Purged` (not `None`, not
/// `Corrupt`); every other artifact is kept; the transition's audit event records the purge and
/// the chain still verifies. A run created terminal (denied, no changes) stores a tombstone
/// only. An import stores a terminal run's binary plan as a tombstone whether it comes as one
/// or with its bytes, and refuses a tombstone of anything else, or a binary plan that is not
/// the run's. Leaves `run_ret_open` (needs approval, plan kept) and `run_ret_done` (rejected,
/// plan purged) for the schema tests' raw SQL.
pub fn plan_retention(s: &dyn StoreImport) {
    let stack = "conf/retention";
    stack_at_serial_1(s, stack);
    let plan: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let plan_sha = hex::encode(crate::blob::sha256(&plan));
    let plan_json = br#"{"format_version":"1.2"}"#.to_vec();
    let base = now_ms();
    let new_run = |id: &str, status: RunStatus| {
        let mut r = run_record(id, stack, base);
        r.status = status;
        r.plan_sha256 = plan_sha.clone();
        s.create_run(
            &r,
            &[(PLAN_ARTIFACT, &plan), ("plan.json", &plan_json)],
            NewAudit::ok("agent", "run.create", Some(stack), json!({"run": id})),
        )
        .unwrap();
        r
    };
    let purged = |id: &str| -> ArtifactInfo {
        let infos = s.run_artifact_infos(id).unwrap();
        let t = infos
            .iter()
            .find(|a| a.name == PLAN_ARTIFACT)
            .unwrap()
            .clone();
        assert_eq!(
            (t.sha256.as_str(), t.len),
            (plan_sha.as_str(), plan.len() as u64),
            "{id}: the tombstone keeps hash and length"
        );
        assert!(t.purged_at.is_some(), "{id}: purged");
        match s.run_artifact(id, PLAN_ARTIFACT) {
            Err(StoreError::Purged(m)) => {
                assert!(
                    m.contains(id) && m.contains(PLAN_ARTIFACT) && m.contains("purged at"),
                    "{m}"
                )
            }
            other => panic!("{id}: the purged plan reads as {other:?}"),
        }
        assert_eq!(
            s.run_artifact(id, "plan.json").unwrap(),
            Some(plan_json.clone()),
            "{id}: the plan JSON is kept"
        );
        t
    };
    let kept = |id: &str| {
        assert_eq!(
            s.run_artifact(id, PLAN_ARTIFACT).unwrap(),
            Some(plan.clone()),
            "{id}: kept"
        );
        assert!(s
            .run_artifact_infos(id)
            .unwrap()
            .iter()
            .all(|a| a.purged_at.is_none()));
    };

    // Open and applying runs keep their plan; every terminal status purges it, once, with the
    // transition, and its audit event says so.
    new_run("run_ret_open", RunStatus::NeedsApproval);
    kept("run_ret_open");
    for (i, end) in [
        RunStatus::Applied,
        RunStatus::Failed,
        RunStatus::Rejected,
        RunStatus::Superseded,
        RunStatus::Expired,
        RunStatus::Withdrawn,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("run_ret_{i}");
        new_run(&id, RunStatus::NeedsApproval);
        if end == RunStatus::Applied || end == RunStatus::Failed {
            move_run(s, &id, RunStatus::Approved);
            kept(&id);
            move_run(s, &id, RunStatus::Applying);
            kept(&id);
        }
        move_run(s, &id, end);
        let t = purged(&id);
        let detail = run_event(s, &format!("run.{}", end.as_str()), &id).unwrap();
        assert_eq!(
            detail["plan_purged"],
            json!({"artifact": PLAN_ARTIFACT, "sha256": plan_sha, "bytes": plan.len()}),
            "{id}"
        );
        // A later write of the run (none is allowed by the rules, but the store must not
        // purge twice or re-date the tombstone) leaves it as it is.
        move_run(s, &id, end);
        assert_eq!(purged(&id), t);
        assert!(
            run_event(s, &format!("run.{}", end.as_str()), &id).unwrap()["plan_purged"].is_null()
        );
    }
    // A refusal that records a status: superseded purges, back to needs_approval does not.
    new_run("run_ret_stale", RunStatus::Approved);
    new_run("run_ret_revoked", RunStatus::Approved);
    for (id, status) in [
        ("run_ret_stale", RunStatus::Superseded),
        ("run_ret_revoked", RunStatus::NeedsApproval),
    ] {
        let t = s
            .update_run(id, &mut |r: &RunRecord,
                                  _: &StackRecord,
                                  _: Option<&VersionMeta>,
                                  _: &[String]| {
                let mut new = r.clone();
                new.status = status;
                Err(RunRefusal {
                    refusal: Refusal::new(RefusalKind::Conflict, "no"),
                    record: Some(Box::new((
                        new,
                        NewAudit::ok("t", "run.x", Some(stack), json!({"run": id})),
                    ))),
                })
            })
            .unwrap();
        assert!(t.is_err());
    }
    purged("run_ret_stale");
    kept("run_ret_revoked");
    // Created terminal: the plan was judged but is stored as a tombstone only.
    for (id, status) in [
        ("run_ret_denied", RunStatus::Denied),
        ("run_ret_none", RunStatus::NoChanges),
    ] {
        new_run(id, status);
        purged(id);
        assert_eq!(
            run_event(s, "run.create", id).unwrap()["plan_purged"]["sha256"],
            json!(plan_sha)
        );
    }
    new_run("run_ret_done", RunStatus::NeedsApproval);
    move_run(s, "run_ret_done", RunStatus::Rejected);
    // No bytes come back under the purged name.
    assert!(matches!(
        s.put_run_artifact("run_ret_done", PLAN_ARTIFACT, &plan),
        Err(StoreError::Conflict(_))
    ));
    purged("run_ret_done");
    walk_verified(s);

    // Import: a tombstone stays one; a terminal run's bytes (an older backup) are purged.
    let imported = |id: &str, status: RunStatus| {
        let mut r = run_record(id, stack, base);
        r.status = status;
        r.plan_sha256 = plan_sha.clone();
        r
    };
    let tombstone = purged("run_ret_done");
    s.import_run(
        &imported("run_ret_imp1", RunStatus::Applied),
        &[("plan.json", &plan_json)],
        std::slice::from_ref(&tombstone),
    )
    .unwrap();
    assert_eq!(purged("run_ret_imp1"), tombstone, "imported as it was");
    s.import_run(
        &imported("run_ret_imp2", RunStatus::Failed),
        &[(PLAN_ARTIFACT, &plan), ("plan.json", &plan_json)],
        &[],
    )
    .unwrap();
    purged("run_ret_imp2");
    s.import_run(
        &imported("run_ret_imp3", RunStatus::Approved),
        &[(PLAN_ARTIFACT, &plan), ("plan.json", &plan_json)],
        &[],
    )
    .unwrap();
    kept("run_ret_imp3");
    // Attacks: a tombstone for an open run (its apply would fail), a tombstone of the plan
    // JSON (what was reviewed), a tombstone or bytes whose hash is not the run's plan.
    let other = ArtifactInfo {
        sha256: "ab".repeat(32),
        ..tombstone.clone()
    };
    let json_tombstone = ArtifactInfo {
        name: "plan.json".into(),
        ..tombstone.clone()
    };
    // (run, status, artifacts with bytes, tombstones)
    type Import<'a> = (
        &'a str,
        RunStatus,
        Vec<(&'a str, &'a [u8])>,
        Vec<ArtifactInfo>,
    );
    let refused: [Import<'_>; 4] = [
        (
            "run_ret_bad1",
            RunStatus::Approved,
            vec![],
            vec![tombstone.clone()],
        ),
        (
            "run_ret_bad2",
            RunStatus::Applied,
            vec![(PLAN_ARTIFACT, &plan)],
            vec![json_tombstone],
        ),
        ("run_ret_bad3", RunStatus::Applied, vec![], vec![other]),
        (
            "run_ret_bad4",
            RunStatus::Applied,
            vec![(PLAN_ARTIFACT, b"other bytes")],
            vec![],
        ),
    ];
    for (id, status, artifacts, tombstones) in refused {
        let err = s
            .import_run(&imported(id, status), &artifacts, &tombstones)
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{id}: {err}");
        assert!(s.run(id).unwrap().is_none(), "{id}: nothing stored");
    }
}

/// The minter is `minted_by`, never the text of `created_by`: a display text naming a wider
/// token (a token name holding ` (tok_…)`, or an edited row) changes nothing, a minter that is
/// no token is refused, and the record carries the column.
pub fn minters_are_a_column(s: &dyn Store) {
    for name in ["mc-root", "mc-carol", "mc-alice"] {
        new_user(s, name);
    }
    let mint = |id: &str, user: &str, stacks: &[&str], created_by: &str, by: Option<&str>| {
        let mut t = new_token(id, user, None, None);
        t.stacks = stacks.iter().map(|g| (*g).to_owned()).collect();
        t.created_by = created_by.into();
        t.minted_by = by.map(str::to_owned);
        s.create_token(t, audit("token.create"))
    };
    let root = mint("tok_mc_root", "mc-root", &[], "system", None).unwrap();
    assert_eq!(root.minted_by, None);
    let dev = mint(
        "tok_mc_dev",
        "mc-carol",
        &["mcdev/*"],
        "root (tok_mc_root)",
        Some("tok_mc_root"),
    )
    .unwrap();
    assert_eq!(dev.minted_by.as_deref(), Some("tok_mc_root"));
    assert_eq!(s.token("tok_mc_dev").unwrap().unwrap(), dev);
    mint(
        "tok_mc_a1",
        "mc-alice",
        &["mcprod/*"],
        "root (tok_mc_root)",
        Some("tok_mc_root"),
    )
    .unwrap();
    // The scoped admin mints for alice, a prod person, while the text names the root token
    // (as a token named `x (tok_mc_root)` would, were the name last): refused by the column.
    let r = mint(
        "tok_mc_a2",
        "mc-alice",
        &["mcdev/*"],
        "x (tok_mc_dev) (tok_mc_root)",
        Some("tok_mc_dev"),
    );
    assert!(
        matches!(&r, Err(StoreError::Forbidden(m)) if m.contains("tok_mc_dev")),
        "{r:?}"
    );
    // A minter that is no token is refused, nothing stored.
    let r = mint(
        "tok_mc_a3",
        "mc-alice",
        &["mcprod/*"],
        "x (tok_mc_none)",
        Some("tok_mc_none"),
    );
    assert!(
        matches!(&r, Err(StoreError::NotFound(m)) if m.contains("tok_mc_none")),
        "{r:?}"
    );
    assert!(s.token("tok_mc_a3").unwrap().is_none());
    assert!(s
        .list_tokens()
        .unwrap()
        .iter()
        .any(|t| t.id == "tok_mc_dev" && t.minted_by.as_deref() == Some("tok_mc_root")));
}

/// No token is minted beyond the chain of minters a judgement reads: a scoped admin minting
/// itself tokens in a row, then one for another user, is refused at the first mint past the
/// bound, and the other user still receives tokens from anyone the rule allows (before, the
/// long chain made every later mint for that user fail as corrupt).
pub fn minter_chains_are_bounded_at_mint(s: &dyn Store) {
    for name in ["ch-root", "ch-alice", "ch-bob"] {
        new_user(s, name);
    }
    let mint = |id: &str, user: &str, stacks: &[&str], by: Option<&str>| {
        let mut t = new_token(id, user, None, None);
        t.stacks = stacks.iter().map(|g| (*g).to_owned()).collect();
        t.created_by = by.map_or("system".to_owned(), |b| format!("x ({b})"));
        t.minted_by = by.map(str::to_owned);
        s.create_token(t, audit("token.create"))
    };
    mint("tok_ch_root", "ch-root", &[], None).unwrap();
    let mut by = "tok_ch_root".to_owned();
    // Alice's scoped admin tokens, each minted by the one before: the k-th lies k mints from
    // the operator, so the one at the bound still mints nothing more.
    let mut refused = None;
    for k in 1..=crate::core::MAX_MINTER_CHAIN + 1 {
        let id = format!("tok_ch_a{k:02}");
        match mint(&id, "ch-alice", &["chdev/*"], Some(&by)) {
            Ok(_) => by = id,
            Err(e) => {
                refused = Some((k, e));
                break;
            }
        }
    }
    let (k, e) = refused.expect("a chain past the bound is refused");
    assert_eq!(
        k,
        crate::core::MAX_MINTER_CHAIN + 1,
        "refused at the first mint past the bound"
    );
    assert!(
        matches!(&e, StoreError::Forbidden(m) if m.contains("closer to the operator")),
        "{e:?}"
    );
    // The last token alice holds cannot mint for bob past the bound either ...
    let r = mint("tok_ch_bob1", "ch-bob", &["chdev/*"], Some(&by));
    assert!(matches!(&r, Err(StoreError::Forbidden(_))), "{r:?}");
    // ... and bob still receives tokens.
    mint("tok_ch_bob2", "ch-bob", &["chdev/*"], Some("tok_ch_root")).unwrap();
}

/// Every migration of `engine` (`sqlite` or `postgres`) before `version`, each recorded in
/// `schema_migrations`, in order: the database a server that ran them left, for the tests of a
/// later migration (run it with `execute_batch`).
pub fn migrations_before(engine: &str, version: i64) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(engine);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut sql = String::from(
        "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);\n",
    );
    for f in files {
        let v: i64 = f.file_name().unwrap().to_str().unwrap()[..4]
            .parse()
            .unwrap();
        if v < version {
            sql.push_str(&std::fs::read_to_string(&f).unwrap());
            sql.push_str(&format!(
                "\nINSERT INTO schema_migrations VALUES ({v}, 0);\n"
            ));
        }
    }
    sql
}
