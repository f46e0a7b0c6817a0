//! The apply's plan check gates the state lock: `airlock apply` starts `terraform apply` while
//! its own `terraform show -json` of the approved plan is compared with the reviewed plan JSON,
//! and the server grants the run-bound token's lock for applying (and its writes) only once
//! that token recorded the passed check (`POST /api/v1/runs/{id}/plan-check`). Attacks on the
//! gate: a token that never records a check, a token of another run, a check of another plan,
//! `-lock=false`, a finish racing a waiting lock; and the property the gate rests on, shown
//! with real Terraform: `terraform apply PLAN` changes nothing before it holds the lock.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::attacks::{applied_stack, WEB_CHANGED};
use crate::support::*;

const APPLY_LOCK: &str = r#"{"ID":"l-gate","Operation":"OperationTypeApply","Info":"","Who":"ci","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;

/// A reviewed change whose apply runs code on this machine (a `local-exec` provisioner that
/// creates `applied` in the checkout): whether that file exists says whether Terraform applied
/// anything at all.
const WEB_WITH_SIDE_EFFECT: &str = "resource \"terraform_data\" \"db\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 1\n}\nresource \"terraform_data\" \"side\" {\n  input = 1\n  provisioner \"local-exec\" {\n    command = \"touch ${path.module}/applied\"\n  }\n}\n";

/// LOCK for applying with `token`, on a thread: its answer arrives on the channel.
fn lock_in_background(url: &str, token: &str) -> mpsc::Receiver<(u16, String)> {
    let (tx, rx) = mpsc::channel();
    let (url, token) = (url.to_owned(), token.to_owned());
    std::thread::spawn(move || {
        let _ = tx.send(raw("LOCK", &url, &token, APPLY_LOCK.as_bytes()));
    });
    rx
}

fn plan_sha(t: &Team, run: &str) -> Value {
    run_json(t, run)["run"]["plan_sha256"].clone()
}

/// A run of `stack` planned from `ws` by the agent, approved.
fn approved_run(t: &Team, ws: &Workspace, stack: &str) -> String {
    let run = plan(t, ws, &t.agent, stack);
    t.s.ok(&t.approver, &["approve", &run]);
    run
}

/// The lock waits for the check, which only the run's own token records, once, of the run's
/// own plan; then the lock is granted at once. Before it, the token writes nothing.
#[test]
fn a_run_token_locks_for_applying_only_after_its_own_plan_check() {
    let (t, ws) = applied_stack("dev/gate");
    ws.write_main(WEB_CHANGED);
    let run = approved_run(&t, &ws, "dev/gate");
    let token = start_apply_unchecked(&t, &run);
    let url = t.s.state_url("dev/gate");

    // A write before the check is refused before its body is read, lock or not.
    let (code, body) = raw("POST", &format!("{url}?ID=l-gate"), &token, b"{}");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("after its plan check is recorded"), "{body}");

    let waiting = lock_in_background(&url, &token);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        waiting.try_recv().is_err(),
        "the lock was answered before the plan check"
    );
    // The applier's own (not run-bound) token may not record it; nor a check of another plan.
    let (code, body) = record_plan_check(&t, &run, &t.ci, &plan_sha(&t, &run));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("own run-bound token"), "{body}");
    let other = Value::from("ab".repeat(32));
    let (code, body) = record_plan_check(&t, &run, &token, &other);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("approved plan is"), "{body}");
    assert!(
        waiting.try_recv().is_err(),
        "a refused check opened the lock"
    );

    let recorded = Instant::now();
    let (code, body) = record_plan_check(&t, &run, &token, &plan_sha(&t, &run));
    assert_eq!(code, 200, "{body}");
    let (code, body) = waiting.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        recorded.elapsed() < Duration::from_secs(2),
        "{:?}",
        recorded.elapsed()
    );
    let (code, body) = record_plan_check(&t, &run, &token, &plan_sha(&t, &run));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("recorded already"), "{body}");
    let v = run_json(&t, &run);
    assert!(v["run"]["plan_checked_at"].is_i64(), "{v:#}");
    assert!(v["run"]["checks"]
        .to_string()
        .contains("terraform show -json agreed"));
    raw("UNLOCK", &url, &token, APPLY_LOCK.as_bytes());
}

/// Two runs of one stack applying at once: one run's token cannot record the other's check, and
/// one run's recorded check opens the lock to its own token only.
#[test]
fn another_runs_token_cannot_open_the_gate() {
    let (t, ws) = applied_stack("dev/gate2");
    ws.write_main(WEB_CHANGED);
    let a = approved_run(&t, &ws, "dev/gate2");
    let b = approved_run(&t, &ws, "dev/gate2");
    let (token_a, token_b) = (start_apply_unchecked(&t, &a), start_apply_unchecked(&t, &b));
    let (code, body) = record_plan_check(&t, &a, &token_b, &plan_sha(&t, &a));
    assert_eq!(code, 403, "{body}");
    let (code, body) = record_plan_check(&t, &b, &token_b, &plan_sha(&t, &b));
    assert_eq!(code, 200, "{body}");
    let url = t.s.state_url("dev/gate2");
    // Run a's token still may not write (b's check is b's).
    let (code, body) = raw("POST", &format!("{url}?ID=l-gate"), &token_a, b"{}");
    assert_eq!(code, 403, "{body}");
    let (code, body) = raw("LOCK", &url, &token_b, APPLY_LOCK.as_bytes());
    assert_eq!(code, 200, "{body}");
    raw("UNLOCK", &url, &token_b, APPLY_LOCK.as_bytes());
    // A run token's lock on another stack is refused at once, checked or not.
    t.s.ok(&t.s.admin, &["stack", "create", "dev/elsewhere"]);
    let (code, body) = raw(
        "LOCK",
        &t.s.state_url("dev/elsewhere"),
        &token_b,
        APPLY_LOCK.as_bytes(),
    );
    assert!(code == 403 || code == 404, "{code} {body}");
}

/// A check that never comes: the lock is refused (423, which Terraform retries until its
/// -lock-timeout), and real Terraform, holding the approved plan and the run token, changes
/// nothing: the reviewed `local-exec` never runs and no state version is written. A finish
/// (the applier's failed check) racing a waiting lock ends the wait with a 403 at once, and no
/// check is recorded after it.
#[test]
fn without_a_recorded_check_terraform_changes_nothing_and_a_finish_ends_the_wait() {
    let (t, ws) = applied_stack("dev/gate3");
    ws.write_main(WEB_WITH_SIDE_EFFECT);
    let run = approved_run(&t, &ws, "dev/gate3");
    let token = start_apply_unchecked(&t, &run);
    let plan = ureq::get(&format!(
        "{}/api/v1/runs/{run}/artifacts/plan.tfplan",
        t.s.url
    ))
    .set("Authorization", &format!("Bearer {}", t.ci))
    .call()
    .unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut plan.into_reader(), &mut bytes).unwrap();
    std::fs::write(ws.path("approved.tfplan"), bytes).unwrap();
    let versions = t.s.version_count("dev/gate3");

    let started = Instant::now();
    let err = ws.tf_err(
        &token,
        &[
            "apply",
            "-input=false",
            "-lock-timeout=1s",
            "approved.tfplan",
        ],
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the lock was not held back: {:?}",
        started.elapsed()
    );
    assert!(err.contains("Error acquiring the state lock"), "{err}");
    assert!(!ws.path("applied").exists(), "terraform applied: {err}");
    assert_eq!(t.s.version_count("dev/gate3"), versions);

    let waiting = lock_in_background(&t.s.state_url("dev/gate3"), &token);
    std::thread::sleep(Duration::from_millis(500));
    let finished = Instant::now();
    let (code, body) = raw(
        "POST",
        &format!("{}/api/v1/runs/{run}/finish", t.s.url),
        &token,
        br#"{"success":false,"plan_check":"differs: not applied"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = waiting.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("is failed, not applying"), "{body}");
    assert!(finished.elapsed() < Duration::from_secs(3));
    let (code, body) = record_plan_check(&t, &run, &token, &plan_sha(&t, &run));
    assert_ne!(code, 200, "{body}");
    assert!(!ws.path("applied").exists());
}

/// `airlock apply` with `-lock=false` (or a lock sent as GET) slipped in through Terraform's
/// environment, and a reviewed plan JSON that is not what the binary does (swapped in the
/// database): the check fails while Terraform waits at the lock, Terraform is stopped and
/// nothing is applied.
#[test]
fn a_failed_check_stops_terraform_before_it_changes_anything_even_with_lock_false() {
    let (t, ws) = applied_stack("dev/gate4");
    ws.write_main(WEB_WITH_SIDE_EFFECT);
    let other = ws.tf_ok(&t.s.admin, &["show", "-json"]);
    let versions = t.s.version_count("dev/gate4");
    let slipped_in: [&[(&str, &str)]; 2] = [
        &[
            ("TF_CLI_ARGS_apply", "-lock=false"),
            ("TF_CLI_ARGS", "-lock=false"),
        ],
        // A lock sent as GET, which the state answers 200: Terraform takes it as granted.
        &[("TF_HTTP_LOCK_METHOD", "GET")],
    ];
    for env in slipped_in {
        let run = approved_run(&t, &ws, "dev/gate4");
        swap_run_artifact(&t, &run, "plan.json", other.as_bytes());
        let out = cli_in(&t.s, &t.ci, &ws.dir, &["apply", &run, "--dir", "."], env);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {}", text(&out));
        assert!(
            text(&out).contains("differs from the reviewed plan JSON"),
            "{env:?}: {}",
            text(&out)
        );
        assert!(!ws.path("applied").exists(), "{env:?}: terraform applied");
        assert_eq!(run_json(&t, &run)["run"]["status"], "failed");
        assert_eq!(t.s.version_count("dev/gate4"), versions);
    }
}

/// Two replicas on PostgreSQL: a check recorded through one opens the lock waiting on the other
/// (which reads the store again), and until then that replica refuses the token's writes.
#[test]
fn the_gate_holds_across_two_replicas_on_postgres() {
    let db = TestDatabase::new("apply_gate");
    let backing = Backing::Url(db.url.clone());
    let a = TestServer::start_on(&backing, None, &[], &[]);
    let b = TestServer::start_on(&backing, Some(&a.admin), &[], &[]);
    let t = team_on(a, "dev/gate5");
    let ws = Workspace::new(&t.s, "dev/gate5", WEB_CHANGED);
    let run = approved_run(&t, &ws, "dev/gate5");
    let token = start_apply_unchecked(&t, &run);
    let url = b.state_url("dev/gate5");
    let (code, body) = raw("POST", &format!("{url}?ID=l-gate"), &token, b"{}");
    assert_eq!(code, 403, "{body}");
    let waiting = lock_in_background(&url, &token);
    std::thread::sleep(Duration::from_millis(700));
    assert!(waiting.try_recv().is_err(), "replica b did not wait");
    let recorded = Instant::now();
    let (code, body) = record_plan_check(&t, &run, &token, &plan_sha(&t, &run));
    assert_eq!(code, 200, "{body}");
    let (code, body) = waiting.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(recorded.elapsed() < Duration::from_secs(2));
    raw("UNLOCK", &url, &token, APPLY_LOCK.as_bytes());
}
