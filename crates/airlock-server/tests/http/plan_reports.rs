//! A plan-phase token lives while the token that minted it reports that the plan goes on
//! (`POST /api/v1/stacks/{stack}/plan-token/{id}/heartbeat`): a plan longer than the token's
//! first lifetime still releases its lock, and nothing the plan runs (which holds the
//! plan-phase token, not its minter) can keep it alive. The minter ends it when the plan is
//! over (`DELETE /api/v1/stacks/{stack}/plan-token/{id}`).

use std::time::Duration;

use airlock_core::Role;
use airlock_server::ServerConfig;
use airlock_store::now_ms;
use serde_json::Value;

use crate::support::*;

const PLAN_TOKEN: &str = "/api/v1/stacks/dev%2Fapp/plan-token";

fn report_path(stack: &str, id: &str) -> String {
    format!(
        "/api/v1/stacks/{}/plan-token/{id}/heartbeat",
        stack.replace('/', "%2F")
    )
}

/// A server whose plan-phase tokens first live `idle_ms`.
fn server(idle_ms: u64) -> Server {
    let s = Server::with_config(ServerConfig {
        plan_idle_timeout: Duration::from_millis(idle_ms),
        ..ServerConfig::default()
    });
    s.stack("dev/app", false);
    s.stack("dev/other", false);
    s
}

async fn mint(s: &Server, by: &Tok) -> (Tok, Value) {
    mint_at(s, by, PLAN_TOKEN).await
}

/// A plan-phase token minted at `path` (a stack's plan-token route).
async fn mint_at(s: &Server, by: &Tok, path: &str) -> (Tok, Value) {
    let r = s.api("POST", path, by, Value::Null).await;
    r.expect(201);
    let v = r.json();
    let t = Tok {
        id: v["token_id"].as_str().expect("token_id").to_owned(),
        secret: v["secret"].as_str().expect("secret").to_owned(),
    };
    (t, v)
}

async fn events(s: &Server, action: &str, token: &str) -> usize {
    s.audit()
        .await
        .iter()
        .filter(|e| e["action"] == action && e["detail"]["token"] == token)
        .count()
}

async fn actions(s: &Server, action: &str) -> usize {
    s.audit()
        .await
        .iter()
        .filter(|e| e["action"] == action)
        .count()
}

#[tokio::test]
async fn a_plans_token_outlives_its_first_lifetime_only_while_its_minter_reports() {
    let s = server(3_000);
    let ci = s.token("ci", Role::Ci, &[], None);
    let (plan, minted) = mint(&s, &ci).await;
    let first = minted["expires_at"].as_i64().expect("expires_at");
    assert!((first - now_ms() - 3_000).abs() < 1_000, "{minted}");
    assert_eq!(minted["heartbeat_ms"], 300);
    let path = report_path("dev/app", &plan.id);
    // A report before a third of the idle time has passed moves nothing and writes nothing.
    let r = s.api("POST", &path, &ci, Value::Null).await;
    r.expect(200);
    assert_eq!(r.json()["alive_until"], first);
    assert_eq!(events(&s, "token.plan_alive", &plan.id).await, 0);
    // Reported every second, the token outlives its first expiry by far.
    let mut last = first;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let r = s.api("POST", &path, &ci, Value::Null).await;
        r.expect(200);
        let until = r.json()["alive_until"].as_i64().expect("alive_until");
        assert!(until > last, "{until} after {last}");
        last = until;
    }
    assert!(now_ms() > first + 1_000);
    s.get_state("dev/app", &plan).await.expect(204);
    // Eight reports at once: one moves the expiry, the others find nothing due.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before = events(&s, "token.plan_alive", &plan.id).await;
    let one = || s.api("POST", &path, &ci, Value::Null);
    let all = tokio::join!(one(), one(), one(), one(), one(), one(), one(), one());
    let answers = [all.0, all.1, all.2, all.3, all.4, all.5, all.6, all.7];
    let untils: Vec<i64> = answers
        .iter()
        .map(|r| {
            r.expect(200);
            r.json()["alive_until"].as_i64().expect("alive_until")
        })
        .collect();
    assert_eq!(events(&s, "token.plan_alive", &plan.id).await, before + 1);
    assert!(untils.iter().all(|u| *u == untils[0]), "{untils:?}");
    // Not reported for longer than the idle time, it has expired, and no report revives it.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    s.get_state("dev/app", &plan).await.expect(401);
    let r = s.api("POST", &path, &ci, Value::Null).await;
    r.expect(410);
    assert!(r.message().contains("expired"), "{}", r.message());
}

#[tokio::test]
async fn only_the_minter_reports_for_a_plans_token_and_never_past_its_own_expiry() {
    let s = server(3_000);
    let ci = s.token("ci", Role::Ci, &[], Some(now_ms() + 4_000));
    let other_ci = s.token("other-ci", Role::Ci, &[], None);
    let agent = s.token("bot", Role::Agent, &[], None);
    let (plan, _) = mint(&s, &ci).await;
    let path = report_path("dev/app", &plan.id);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The attacks: the plan-phase token itself (Terraform, the providers and the checkout's
    // code hold it) keeps itself alive; another CI token or an agent keeps it alive; the
    // minter names it under another stack.
    for (who, at) in [
        (&plan, &path),
        (&other_ci, &path),
        (&agent, &path),
        (&ci, &report_path("dev/other", &plan.id)),
    ] {
        let r = s.api("POST", at, who, Value::Null).await;
        r.expect(403);
        assert!(
            r.message().contains("only the token that minted"),
            "{}",
            r.message()
        );
    }
    assert_eq!(events(&s, "token.plan_alive", &plan.id).await, 0);
    let r = s
        .api(
            "POST",
            &report_path("dev/app", "tok_0000000000000000"),
            &ci,
            Value::Null,
        )
        .await;
    r.expect(404);
    // The minter's report moves the expiry, but not past the minter's own.
    let r = s.api("POST", &path, &ci, Value::Null).await;
    r.expect(200);
    let minter = s.store.token(&ci.id).unwrap().unwrap().expires_at;
    assert_eq!(r.json()["alive_until"].as_i64(), minter);
    // A revoked plan-phase token stays revoked.
    let (revoked, _) = mint(&s, &ci).await;
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", revoked.id),
        &s.admin,
        Value::Null,
    )
    .await
    .expect(200);
    let r = s
        .api(
            "POST",
            &report_path("dev/app", &revoked.id),
            &ci,
            Value::Null,
        )
        .await;
    r.expect(410);
    assert!(r.message().contains("revoked"), "{}", r.message());
    s.get_state("dev/app", &revoked).await.expect(401);
}

#[tokio::test]
async fn only_the_minter_ends_a_plans_token_and_once_ended_it_reads_nothing() {
    let s = server(60_000);
    let ci = s.token("ci", Role::Ci, &[], None);
    let other_ci = s.token("other-ci", Role::Ci, &[], None);
    let agent = s.token("bot", Role::Agent, &[], None);
    let (plan, _) = mint(&s, &ci).await;
    let path = format!("{PLAN_TOKEN}/{}", plan.id);
    // The attacks: another CI token ends a plan it did not start (its lock would then never
    // be released); the plan token ends itself; the minter names it under another stack.
    let elsewhere = format!("/api/v1/stacks/dev%2Fother/plan-token/{}", plan.id);
    for (who, at) in [
        (&other_ci, &path),
        (&agent, &path),
        (&plan, &path),
        (&ci, &elsewhere),
    ] {
        let r = s.api("DELETE", at, who, Value::Null).await;
        r.expect(403);
        assert!(
            r.message().contains("only the token that minted"),
            "{}",
            r.message()
        );
    }
    s.get_state("dev/app", &plan).await.expect(204);
    s.api(
        "DELETE",
        &format!("{PLAN_TOKEN}/tok_0000000000000000"),
        &ci,
        Value::Null,
    )
    .await
    .expect(404);
    s.api("DELETE", &path, &ci, Value::Null).await.expect(200);
    let r = s.get_state("dev/app", &plan).await;
    r.expect(401);
    assert!(r.message().contains("revoked"), "{}", r.message());
    assert_eq!(events(&s, "token.plan_end", &plan.id).await, 1);
    // Ending it again changes nothing; no report brings it back.
    s.api("DELETE", &path, &ci, Value::Null).await.expect(200);
    assert_eq!(events(&s, "token.plan_end", &plan.id).await, 1);
    s.api("POST", &format!("{path}/heartbeat"), &ci, Value::Null)
        .await
        .expect(410);
}

/// A planner that died holding its lock (a killed CI job) leaves a plan lock whose token ends
/// or expires: no one could release it but a person with force-unlock, and every plan of the
/// stack failed at its lock timeout meanwhile. The next lock takes it over; a live planner's
/// lock, and any other operation's lock whose token is dead (a half-done apply), stay.
#[tokio::test]
async fn a_dead_planners_lock_is_taken_over_and_no_other_lock_is() {
    let s = server(60_000);
    let ci = s.token("ci", Role::Ci, &[], None);
    let agent = s.token("bot", Role::Agent, &[], None);
    // A live planner's lock is not taken over.
    let (live, _) = mint(&s, &ci).await;
    s.lock("dev/app", &live, "live-plan", "OperationTypePlan")
        .await
        .expect(200);
    s.lock("dev/app", &agent, "next-plan", "OperationTypePlan")
        .await
        .expect(423);
    // Its planner died; the token was ended (or has expired): the next plan takes the lock.
    s.api(
        "DELETE",
        &format!("{PLAN_TOKEN}/{}", live.id),
        &ci,
        Value::Null,
    )
    .await
    .expect(200);
    s.lock("dev/app", &agent, "next-plan", "OperationTypePlan")
        .await
        .expect(200);
    assert_eq!(actions(&s, "lock.preempt").await, 1);
    let held = s.store.current_lock("dev/app").unwrap().expect("locked");
    assert_eq!(
        (held.id.as_str(), held.owner_token.as_str()),
        ("next-plan", agent.id.as_str())
    );
    let preempt = s
        .audit()
        .await
        .into_iter()
        .find(|e| e["action"] == "lock.preempt")
        .unwrap();
    assert_eq!(preempt["detail"]["preempted_lock"], "live-plan");
    assert_eq!(preempt["detail"]["holder_token"], live.id.as_str());
    assert!(
        preempt["actor"].as_str().unwrap().contains(&agent.id),
        "{preempt}"
    );
    s.unlock("dev/app", &agent, "next-plan", "OperationTypePlan")
        .await
        .expect(200);
    // An expired planner's lock goes too.
    let short = Server::with_config(ServerConfig {
        plan_idle_timeout: Duration::from_millis(1_500),
        ..ServerConfig::default()
    });
    short.stack("dev/app", false);
    let short_ci = short.token("ci", Role::Ci, &[], None);
    let short_agent = short.token("bot", Role::Agent, &[], None);
    let (expiring, _) = mint(&short, &short_ci).await;
    short
        .lock("dev/app", &expiring, "old-plan", "OperationTypePlan")
        .await
        .expect(200);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    short
        .lock("dev/app", &short_agent, "new-plan", "OperationTypePlan")
        .await
        .expect(200);
    assert_eq!(actions(&short, "lock.preempt").await, 1);
    // A dead token's lock for anything but a plan stays for a person to look at.
    let writer = s.token("writer", Role::Admin, &[], None);
    s.lock("dev/app", &writer, "half-done", "OperationTypeApply")
        .await
        .expect(200);
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", writer.id),
        &s.admin,
        Value::Null,
    )
    .await
    .expect(200);
    s.lock("dev/app", &agent, "after-apply", "OperationTypePlan")
        .await
        .expect(423);
    assert_eq!(actions(&s, "lock.preempt").await, 1);
}

/// Terraform never writes state under a plan's lock, and such a lock is taken over once its
/// token dies: a write under one (a client that locks "for planning" and writes) is refused.
#[tokio::test]
async fn no_state_is_written_under_a_plans_lock() {
    let s = server(60_000);
    let writer = s.token("writer", Role::Admin, &[], None);
    s.lock("dev/app", &writer, "a-plan", "OperationTypePlan")
        .await
        .expect(200);
    let r = s.write("dev/app", &writer, Some("a-plan"), &plain(1)).await;
    r.expect(409);
    assert!(r.message().contains("taken for a plan"), "{}", r.message());
    assert!(s.versions("dev/app").is_empty());
    s.unlock("dev/app", &writer, "a-plan", "OperationTypePlan")
        .await
        .expect(200);
    s.locked_write("dev/app", &writer, &plain(1))
        .await
        .expect(200);
}

/// The minter is revoked while its plan runs (an admin cuts off a pipeline): the plan-phase
/// token goes with it, and no report, by anyone, brings either back. A token scoped to another
/// stack cannot reach this stack's report route at all.
#[tokio::test]
async fn a_revoked_minters_plan_token_is_gone_and_other_stacks_tokens_never_reach_it() {
    let s = server(3_000);
    let ci = s.token("ci", Role::Ci, &[], None);
    let (plan, _) = mint(&s, &ci).await;
    let path = report_path("dev/app", &plan.id);
    let elsewhere = s.token("other-ci", Role::Ci, &["dev/other"], None);
    let r = s.api("POST", &path, &elsewhere, Value::Null).await;
    r.expect(403);
    s.api(
        "DELETE",
        &format!("/api/v1/tokens/{}", ci.id),
        &s.admin,
        Value::Null,
    )
    .await
    .expect(200);
    s.get_state("dev/app", &plan).await.expect(401);
    s.api("POST", &path, &ci, Value::Null).await.expect(401);
    let r = s.api("POST", &path, &plan, Value::Null).await;
    r.expect(401);
    assert_eq!(events(&s, "token.plan_alive", &plan.id).await, 0);
}

/// Review (session 14): an agent LOCKed "for planning" with its own long-lived token and never
/// unlocked. Only a run's apply went before it: every plan, direct write and restore of the
/// stack waited for a person to force-unlock it (and the agent could lock again at once). A
/// plan's lock held by a token no planner reports for now lasts the plan idle time; a
/// plan-phase token's lock lives as long as its planner reports.
#[tokio::test]
async fn a_plan_lock_held_past_the_idle_time_by_a_long_lived_token_is_taken_over() {
    let s = server(1_500);
    let ci = s.token("ci", Role::Ci, &[], None);
    let agent = s.token("bot", Role::Agent, &[], None);
    s.lock("dev/app", &agent, "squat", "OperationTypePlan")
        .await
        .expect(200);
    // Within the idle time it holds: the admin's write waits, told when it goes.
    let r = s
        .lock("dev/app", &s.admin, "admin-write", "OperationTypeApply")
        .await;
    r.expect(423);
    assert!(
        s.audit().await.iter().any(|e| e["action"] == "lock"
            && e.to_string()
                .contains("once it is older than the plan idle time")),
        "the refusal says when the lock goes"
    );
    // A planner that reports keeps its plan token's lock past the idle time.
    let (plan, _) = mint_at(&s, &ci, "/api/v1/stacks/dev%2Fother/plan-token").await;
    s.lock("dev/other", &plan, "reported", "OperationTypePlan")
        .await
        .expect(200);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.api(
            "POST",
            &report_path("dev/other", &plan.id),
            &ci,
            Value::Null,
        )
        .await
        .expect(200);
    }
    // 1.8 s on: the agent's lock is taken over, audited; the reported one is not.
    s.lock("dev/app", &s.admin, "admin-write", "OperationTypeApply")
        .await
        .expect(200);
    let held = s.store.current_lock("dev/app").unwrap().expect("locked");
    assert_eq!(held.id, "admin-write");
    let preempt = s
        .audit()
        .await
        .into_iter()
        .find(|e| e["action"] == "lock.preempt")
        .unwrap();
    assert_eq!(preempt["detail"]["holder_token"], agent.id.as_str());
    assert!(
        preempt["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("plan idle time"),
        "{preempt}"
    );
    s.lock("dev/other", &s.admin, "admin-other", "OperationTypeApply")
        .await
        .expect(423);
    assert_eq!(
        s.store.current_lock("dev/other").unwrap().unwrap().id,
        "reported"
    );
}
