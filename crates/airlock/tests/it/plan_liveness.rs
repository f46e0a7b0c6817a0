//! A plan-phase token lives while its `airlock plan` reports (with the token that minted it):
//! a plan longer than the token's first lifetime (one queued behind a long apply's lock, a big
//! stack's refresh) still takes and releases the stack's lock, and the token is ended when the
//! plan is over. Real server, real Terraform; the server's plan idle time is set to seconds so
//! that this happens in a test.

use std::time::{Duration, Instant};

use crate::support::*;

/// A team on `stack` of server `s`, and a workspace of one `terraform_data` on it.
fn team_with_a_resource(s: TestServer, stack: &str) -> (Team, Workspace) {
    let t = team_on(s, stack);
    let ws = Workspace::new(&t.s, stack, &data_resources(1));
    (t, ws)
}

const HELD: &str = r#"{"ID":"held-by-an-apply","Operation":"OperationTypeApply","Info":"","Who":"ci@runner","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;

/// Before reports, a plan-phase token expired a fixed hour after its mint: a plan that waited
/// longer for the lock (Terraform retries it for `-lock-timeout`) or planned longer failed on
/// its next state request, and left its lock behind. Here the token's first lifetime is 3 s and
/// the stack stays locked by another holder for 8 s: the plan waits, gets the lock, plans,
/// releases it and is uploaded.
#[test]
fn a_plan_waiting_longer_than_its_tokens_first_lifetime_still_plans_and_unlocks() {
    let stack = "dev/queued";
    let (t, ws) = team_with_a_resource(
        TestServer::start_with(&["--plan-idle-timeout-secs", "3"]),
        stack,
    );
    let url = t.s.state_url(stack);
    let (code, body) = raw("LOCK", &url, &t.s.admin, HELD.as_bytes());
    assert_eq!(code, 200, "{body}");
    let (u, admin) = (url.clone(), t.s.admin.clone());
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(8));
        raw("UNLOCK", &u, &admin, HELD.as_bytes())
    });
    let started = Instant::now();
    let run = plan(&t, &ws, &t.agent, stack);
    assert!(started.elapsed() > Duration::from_secs(8));
    assert_eq!(holder.join().unwrap().0, 200);
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(shown.contains("needs_approval"), "{shown}");
    let stack_json: serde_json::Value =
        serde_json::from_str(&t.s.ok(&t.s.admin, &["stack", "show", stack, "--format", "json"]))
            .unwrap();
    assert!(
        stack_json["lock"].is_null(),
        "the plan released its lock: {stack_json}"
    );
    let renewals: Vec<_> =
        t.s.audit_of(&t.s.admin, "token.plan_alive")
            .into_iter()
            .filter(|e| e["outcome"] == "ok")
            .collect();
    assert!(
        renewals.len() >= 2,
        "the token lived on while Terraform waited: {renewals:?}"
    );
    // The plan over, its token is ended rather than left to expire.
    let ended = t.s.audit_of(&t.s.admin, "token.plan_end");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0]["detail"]["token"], renewals[0]["detail"]["token"]);
    let plan_token =
        t.s.token_where("id", ended[0]["detail"]["token"].as_str().unwrap());
    assert!(!plan_token["revoked_at"].is_null(), "{plan_token}");
}

/// A plan that fails before Terraform plans (here `terraform init` cannot install a provider)
/// still ends the plan-phase token it was given: nothing holds a live token once
/// `airlock plan` has returned.
#[test]
fn a_plan_that_fails_to_start_ends_its_token() {
    let stack = "dev/broken";
    let t = team_on(TestServer::start(), stack);
    let ws = Workspace::new(
        &t.s,
        stack,
        "terraform {\n  required_providers {\n    nope = { source = \"example.invalid/x/nope\" }\n  }\n}\n",
    );
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &["plan", ".", "--stack", stack],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let minted = t.s.audit_of(&t.s.admin, "token.plan_phase");
    let ended = t.s.audit_of(&t.s.admin, "token.plan_end");
    assert_eq!((minted.len(), ended.len()), (1, 1), "{minted:?} {ended:?}");
    assert_eq!(ended[0]["detail"]["token"], minted[0]["detail"]["token"]);
}

/// A CI job killed while Terraform planned (a lost runner) leaves the stack locked by its plan,
/// with a plan-phase token nobody reports for. Before, every later plan failed at its lock
/// timeout until a person force-unlocked the stack. Once that token has expired (here after
/// 2 s), the next `airlock plan` takes the lock over, audited, and plans.
#[test]
fn a_plan_lock_left_by_a_killed_job_is_taken_over_once_its_token_has_expired() {
    let stack = "dev/orphan";
    let (t, ws) = team_with_a_resource(
        TestServer::start_with(&["--plan-idle-timeout-secs", "2"]),
        stack,
    );
    // What the killed job's `airlock plan` and Terraform did before they died.
    let mint = format!("{}/api/v1/stacks/dev%2Forphan/plan-token", t.s.url);
    let (code, body) = raw("POST", &mint, &t.ci, b"{}");
    assert_eq!(code, 201, "{body}");
    let secret = serde_json::from_str::<serde_json::Value>(&body).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let orphan = r#"{"ID":"orphan","Operation":"OperationTypePlan","Info":"","Who":"ci@lost-runner","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
    let (code, body) = raw("LOCK", &t.s.state_url(stack), &secret, orphan.as_bytes());
    assert_eq!(code, 200, "{body}");
    std::thread::sleep(Duration::from_millis(2_500));
    let run = plan(&t, &ws, &t.agent, stack);
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(shown.contains("needs_approval"), "{shown}");
    let preempted = t.s.audit_of(&t.s.admin, "lock.preempt");
    assert_eq!(preempted.len(), 1, "{preempted:?}");
    assert_eq!(preempted[0]["detail"]["preempted_lock"], "orphan");
}

/// A pipeline that may write the stack (ci, on a stack that is not production) died while
/// planning: its plan lock is not one of a token that may never write, but its token is dead
/// (revoked here), so an approved run's apply takes the lock over rather than failing at its
/// lock timeout, and says why.
#[test]
fn an_approved_apply_takes_over_the_plan_lock_of_a_dead_writer() {
    let stack = "dev/lostci";
    let (t, ws) = team_with_a_resource(TestServer::start(), stack);
    let run = plan(&t, &ws, &t.agent, stack);
    t.s.ok(&t.approver, &["approve", &run]);
    let lost = t.s.token("lost-pipeline", "ci");
    let who: serde_json::Value =
        serde_json::from_str(&t.s.ok(&lost, &["whoami", "--format", "json"])).unwrap();
    let url = t.s.state_url(stack);
    let plan_lock = r#"{"ID":"lost-plan","Operation":"OperationTypePlan","Info":"","Who":"ci@lost","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
    assert_eq!(raw("LOCK", &url, &lost, plan_lock.as_bytes()).0, 200);
    let run_token = start_apply(&t, &run);
    let apply_lock = r#"{"ID":"the-apply","Operation":"OperationTypeApply","Info":"","Who":"ci","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
    // While the pipeline's token lives, its plan lock protects its own writes to come.
    assert_eq!(raw("LOCK", &url, &run_token, apply_lock.as_bytes()).0, 423);
    t.s.ok(
        &t.s.admin,
        &["token", "revoke", who["id"].as_str().unwrap()],
    );
    let (code, body) = raw("LOCK", &url, &run_token, apply_lock.as_bytes());
    assert_eq!(code, 200, "{body}");
    let preempted = t.s.audit_of(&t.s.admin, "lock.preempt");
    assert_eq!(preempted.len(), 1, "{preempted:?}");
    assert_eq!(preempted[0]["detail"]["preempted_lock"], "lost-plan");
    assert!(
        preempted[0]["detail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("revoked, expired or gone")),
        "{preempted:?}"
    );
}
