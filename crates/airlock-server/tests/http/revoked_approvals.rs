//! An approval made with a token revoked before the apply starts does not count, however the
//! revocation and the apply interleave.

use airlock_core::Role;
use airlock_store::{NewAudit, RunRecord};
use serde_json::{json, Value};

use crate::console::put_run_with;
use crate::support::*;

/// A run on `stack` awaiting one approval, whose stored plan artifact is the planned one.
fn approvable_run(s: &Server, id: &str, stack: &str) {
    let plan = json!({"format_version": "1.2", "resource_changes": [{
        "address": "terraform_data.a", "mode": "managed", "type": "terraform_data", "name": "a",
        "change": {"actions": ["update"], "before": {"input": "old"}, "after": {"input": "new"},
                   "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}}}]});
    let binary = format!("plan of {id}").into_bytes();
    let draft = format!("{id}-draft");
    put_run_with(
        s,
        &draft,
        stack,
        0,
        "author",
        &plan,
        &[],
        json!({"planned_serial": null, "planned_lineage": null}),
    );
    let mut run: RunRecord = s.store.run(&draft).unwrap().expect("draft");
    run.id = id.to_owned();
    run.plan_sha256 = hex::encode(airlock_store::blob::sha256(&binary));
    let plan = serde_json::to_vec(&plan).unwrap();
    s.store
        .create_run(
            &run,
            &[("plan.json", &plan), ("plan.tfplan", &binary)],
            NewAudit::ok("test", "run.create", Some(stack), json!({"run": id})),
        )
        .expect("create run");
}

/// The approver's token is revoked while CI applies the run it approved. Either the apply
/// starts first (its `run.apply_start` precedes the revocation in the audit log) or it is
/// refused: the approval was looked up outside the transaction that starts the apply, so a
/// revocation committed in between started an apply on an approval that no longer counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_revoked_while_the_apply_starts_never_counts_after_its_revocation() {
    let s = Server::new();
    let ci = s.role_token(Role::Ci);
    let (mut applied, mut refused) = (0, 0);
    for round in 0..60 {
        let (stack, id) = (format!("dev/race{round}"), format!("run_race{round}"));
        s.stack(&stack, false);
        approvable_run(&s, &id, &stack);
        let approver = s.role_token(Role::Approver);
        s.api(
            "POST",
            &format!("/api/v1/runs/{id}/approve"),
            &approver,
            json!({}),
        )
        .await
        .expect(200);
        let (revoke_uri, apply_uri) = (
            format!("/api/v1/tokens/{}", approver.id),
            format!("/api/v1/runs/{id}/apply"),
        );
        let (revoke, apply) = tokio::join!(
            s.api("DELETE", &revoke_uri, &s.admin, json!(null)),
            s.api("POST", &apply_uri, &ci, json!({"fingerprint": "f1"})),
        );
        revoke.expect(200);
        if apply.status != 200 {
            assert!(
                apply.message().contains("revoked"),
                "round {round}: {apply:?}"
            );
            refused += 1;
            continue;
        }
        applied += 1;
        let audit = s.audit().await;
        let seq_of = |pred: &dyn Fn(&Value) -> bool| {
            audit
                .iter()
                .find(|e| pred(e))
                .and_then(|e| e["seq"].as_i64())
                .expect("event")
        };
        let started = seq_of(&|e| e["action"] == "run.apply_start" && e["detail"]["run"] == id);
        let revoked =
            seq_of(&|e| e["action"] == "token.revoke" && e["detail"]["token"] == approver.id);
        assert!(
            started < revoked,
            "round {round}: the apply started (audit seq {started}) after the approver's token was revoked (seq {revoked})"
        );
    }
    eprintln!("{applied} applies started before the revocation, {refused} refused after it");
}
