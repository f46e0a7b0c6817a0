//! An applying run lives while its `airlock apply` reports (`POST /api/v1/runs/{id}/heartbeat`):
//! an apply longer than its run-bound token's first lifetime still writes its state, and a run
//! whose applier died is closed as abandoned, its token and plan gone. Real server, real
//! Terraform; the server's apply idle time is set to seconds so that both happen in a test.
//! And a state Terraform applied but could not save (the server gone at the end) is saved by
//! `airlock apply` once the server is back, not lost with the CI job's workspace.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// One `terraform_data` whose creation takes `secs` seconds (a `local-exec` provisioner).
fn slow_resource(secs: u32) -> String {
    format!(
        "resource \"terraform_data\" \"slow\" {{\n  input = \"v1\"\n  provisioner \"local-exec\" {{\n    command = \"sleep {secs}\"\n  }}\n}}\n"
    )
}

/// `airlock apply RUN` in the workspace, in the background, its stderr into `stderr`.
fn spawn_apply(t: &Team, ws: &Workspace, run: &str, stderr: Stdio) -> std::process::Child {
    cli_command(&t.s, &t.ci, &ws.dir, &["apply", run, "--dir", "."])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Waits (up to 60 s) until Terraform holds the lock for run `run` and applies: the run applies
/// and its plan check is recorded.
fn wait_until_applying(t: &Team, run: &str) {
    wait_for_run(t, run, "the apply did not get going", |r| {
        r["status"] == "applying" && !r["plan_checked_at"].is_null()
    });
}

/// `stack show STACK --format json`, as the admin.
fn stack_show(s: &TestServer, stack: &str) -> Value {
    serde_json::from_str(&s.ok(&s.admin, &["stack", "show", stack, "--format", "json"])).unwrap()
}

/// A team on a server whose applying runs outlive their applier's last report by `idle` seconds,
/// and an approved run of `main_tf` on `stack`.
fn approved_run(idle: &str, stack: &str, main_tf: &str) -> (Team, Workspace, String) {
    let t = team_on(
        TestServer::start_with(&["--apply-idle-timeout-secs", idle]),
        stack,
    );
    let ws = Workspace::new(&t.s, stack, main_tf);
    let run = plan_approved(&t, &ws, stack);
    (t, ws, run)
}

/// The agent plans the workspace on `stack` and an approver approves it: the run's id.
fn plan_approved(t: &Team, ws: &Workspace, stack: &str) -> String {
    let run = plan(t, ws, &t.agent, stack);
    t.s.ok(&t.approver, &["approve", &run]);
    run
}

/// A team on a fresh server whose store (in a directory of `tmp`) a restart can reuse.
fn restartable_team(tmp: &tempfile::TempDir, stack: &str) -> (Backing, Team) {
    let backing = Backing::Dir(tmp.path().join("data"));
    let t = team_on(TestServer::start_on(&backing, None, &[], &[]), stack);
    (backing, t)
}

/// Waits (up to 60 s) until `done` holds for run `run`'s record, and returns it.
fn wait_for_run(t: &Team, run: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = run_json(t, run);
        if done(&v["run"]) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Before heartbeats, a run-bound token expired a fixed time after the start: an apply running
/// longer (a database or cluster can take an hour) had its state write refused, and the
/// resources it created were recorded nowhere. Here the token's first lifetime is 3 s and
/// Terraform takes 10 s: the applier's reports keep the run and its token alive, the state is
/// written, and the renewals are audited.
#[test]
fn an_apply_longer_than_its_tokens_first_lifetime_writes_its_state() {
    let stack = "dev/long";
    let (t, ws, run) = approved_run("3", stack, &slow_resource(10));
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(run_json(&t, &run)["run"]["status"], "applied");
    assert!(
        !t.s.serials(stack).is_empty(),
        "the apply's state is written"
    );
    let renewals = t.s.audit_of(&t.s.admin, "run.apply_alive");
    assert!(
        renewals.len() >= 2,
        "the deadline moved on while Terraform ran: {renewals:?}"
    );
    for r in &renewals {
        assert_eq!(r["detail"]["run"], run.as_str(), "{r}");
    }
}

/// The applier dies midway (its `airlock apply` and Terraform are killed, as when a CI runner
/// is lost). Its run-bound token expires with the run's deadline, and the sweep closes the run
/// as failed, saying it was abandoned and what to check; its binary plan is purged. Reports for
/// it from any token but its own run-bound one are refused.
#[test]
fn an_apply_whose_applier_died_is_closed_as_abandoned() {
    let stack = "dev/lost";
    let (t, ws, run) = approved_run("2", stack, &slow_resource(20));
    let mut applier = spawn_apply(&t, &ws, &run, Stdio::null());
    wait_until_applying(&t, &run);
    std::thread::sleep(Duration::from_millis(500));
    // The runner is lost: Terraform (its own process group) and airlock apply die at once.
    let _ = Command::new("pkill")
        .args(["-KILL", "-P", &applier.id().to_string(), "terraform"])
        .status();
    applier.kill().unwrap();
    applier.wait().unwrap();

    let v = wait_for_run(&t, &run, "the abandoned run was not closed", |r| {
        r["status"] == "failed"
    });
    let note = v["run"]["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("was abandoned") && note.contains("stopped reporting"),
        "{note}"
    );
    let failed = t.s.audit_of(&t.s.admin, "run.failed");
    let event = failed
        .iter()
        .find(|e| e["detail"]["run"] == run.as_str())
        .unwrap_or_else(|| panic!("no run.failed event: {failed:?}"));
    assert_eq!(event["actor"], "system (run expiry)", "{event}");
    assert!(event["detail"]["plan_purged"].is_object(), "{event}");
    let (code, _) = raw(
        "GET",
        &format!("{}/api/v1/runs/{run}/artifacts/plan.tfplan", t.s.url),
        &t.s.admin,
        b"",
    );
    assert_eq!(code, 410, "its plan is purged");
    // Only the run's own run-bound token reports for it: not the token that started the apply,
    // nor an agent.
    let heartbeat = |token: &str| {
        raw(
            "POST",
            &format!("{}/api/v1/runs/{run}/heartbeat", t.s.url),
            token,
            b"{}",
        )
    };
    let (code, body) = heartbeat(&t.ci);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("run-bound token"), "{body}");
    let (code, body) = heartbeat(&t.agent);
    assert_eq!(code, 403, "{body}");
    // Nothing was written for the lost apply.
    assert_eq!(t.s.serials(stack), Vec::<u64>::new());
}

/// Applies `run` while the server goes away (killed once Terraform holds the lock) and stays
/// away past Terraform's own retries (until Terraform has written errored.tfstate), then comes
/// back on the same address and store. Returns how `airlock apply` ended and what it printed.
fn apply_while_the_server_restarts(
    t: &mut Team,
    ws: &Workspace,
    run: &str,
    stack: &str,
    backing: &Backing,
) -> (std::process::ExitStatus, String) {
    let (admin, addr) = (t.s.admin.clone(), t.s.addr());
    let log = ws.dir.join("../apply.log");
    let mut applier = spawn_apply(t, ws, run, std::fs::File::create(&log).unwrap().into());
    wait_until_applying(t, run);
    // Terraform holds the lock (it took it after the plan check), and runs the provisioner.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stack_show(&t.s, stack)["lock"].is_null() {
        assert!(
            Instant::now() < deadline,
            "Terraform did not lock the stack"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.s.kill();
    let errored = ws.dir.join("errored.tfstate");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !errored.exists() {
        assert!(
            Instant::now() < deadline,
            "Terraform left no errored.tfstate"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t.s = TestServer::start_on(backing, Some(&admin), &["--listen", &addr], &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = applier.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "airlock apply did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

/// What the state, the lock, the run and its log say after `airlock apply` saved the state
/// Terraform could not: the stack records `resource`, is not locked, and the run failed (as
/// Terraform did) with a log that says what airlock did.
fn assert_saved(t: &Team, run: &str, stack: &str, resource: &str, printed: &str) -> Value {
    assert!(
        printed.contains("airlock saved the state it left"),
        "{printed}"
    );
    let (code, state) = raw("GET", &t.s.state_url(stack), &t.s.admin, b"");
    assert_eq!(code, 200, "{state}");
    let state: Value = serde_json::from_str(&state).unwrap();
    let names: Vec<&str> = state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(names.contains(&resource), "{state}");
    let shown = stack_show(&t.s, stack);
    assert!(shown["lock"].is_null(), "{shown}");
    let v = run_json(t, run);
    assert_eq!(v["run"]["status"], "failed", "{v}");
    let (code, run_log) = raw(
        "GET",
        &format!("{}/api/v1/runs/{run}/log", t.s.url),
        &t.s.admin,
        b"",
    );
    assert_eq!(code, 200);
    assert!(
        run_log.contains("airlock saved the state it left"),
        "{run_log}"
    );
    state
}

/// The server goes away while Terraform applies (a restart, a network cut) and stays away past
/// Terraform's own retries: Terraform applied the change but could not save the state, and
/// left it in errored.tfstate, which a CI job's workspace loses when the job ends. `airlock
/// apply` saves it once the server is back (with the run-bound token, under Terraform's lock,
/// through the firewall) and releases the lock. Here the stack had no state: Terraform's has no
/// lineage yet, and the saved one gets one.
#[test]
fn a_state_terraform_could_not_save_is_saved_once_the_server_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = "dev/blip";
    let (backing, mut t) = restartable_team(&tmp, stack);
    let ws = Workspace::new(&t.s, stack, &slow_resource(3));
    let run = plan_approved(&t, &ws, stack);
    let (status, printed) = apply_while_the_server_restarts(&mut t, &ws, &run, stack, &backing);
    assert!(!status.success(), "Terraform failed: {printed}");
    let state = assert_saved(&t, &run, stack, "slow", &printed);
    assert_eq!(state["lineage"].as_str().map(str::len), Some(36), "{state}");
}

/// The same on a stack with a state: the saved state follows it (same lineage, the next serial),
/// and Terraform reads it as its own: a new plan of the same code changes nothing.
#[test]
fn a_state_terraform_could_not_save_over_an_existing_one_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let stack = "dev/blip2";
    let (backing, mut t) = restartable_team(&tmp, stack);
    let base = "resource \"terraform_data\" \"base\" {\n  input = \"a\"\n}\n";
    let ws = Workspace::new(&t.s, stack, base);
    let first = plan_approved(&t, &ws, stack);
    let out = apply(&t, &ws, &t.ci, &first);
    assert!(out.status.success(), "{}", text(&out));
    let before: Value =
        serde_json::from_str(&raw("GET", &t.s.state_url(stack), &t.s.admin, b"").1).unwrap();
    ws.write_main(&format!("{base}{}", slow_resource(3)));
    let run = plan_approved(&t, &ws, stack);
    let (status, printed) = apply_while_the_server_restarts(&mut t, &ws, &run, stack, &backing);
    assert!(!status.success(), "Terraform failed: {printed}");
    let state = assert_saved(&t, &run, stack, "slow", &printed);
    assert_eq!(state["lineage"], before["lineage"]);
    assert_eq!(
        state["serial"].as_u64(),
        before["serial"].as_u64().map(|s| s + 1)
    );
    let again = plan(&t, &ws, &t.agent, stack);
    assert_eq!(run_json(&t, &again)["run"]["status"], "no_changes");
}

/// A run whose Terraform fails for another reason (a provisioner that fails) leaves the
/// errored.tfstate that was in the checkout before (planned with it: it is an input) alone:
/// nothing is saved from it.
#[test]
fn an_errored_state_older_than_the_apply_is_not_saved() {
    let stack = "dev/old-errored";
    let failing = "resource \"terraform_data\" \"x\" {\n  provisioner \"local-exec\" {\n    command = \"exit 3\"\n  }\n}\n";
    let t = team(stack);
    let ws = Workspace::new(&t.s, stack, failing);
    let planted =
        r#"{"version": 4, "lineage": "", "serial": 0, "resources": [{"name": "planted"}]}"#;
    std::fs::write(ws.dir.join("errored.tfstate"), planted).unwrap();
    let run = plan_approved(&t, &ws, stack);
    let out = apply(&t, &ws, &t.ci, &run);
    let printed = text(&out);
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("exit status 3"),
        "Terraform ran and failed: {printed}"
    );
    assert!(
        !printed.contains("airlock saved") && !printed.contains("airlock: WARNING"),
        "{printed}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.dir.join("errored.tfstate")).unwrap(),
        planted
    );
    let (_, state) = raw("GET", &t.s.state_url(stack), &t.s.admin, b"");
    assert!(!state.contains("planted"), "{state}");
}

/// Reports sent at once, when a move of the deadline is due, move it once: the run's record and
/// the audit log grow once per third of the idle time however often a token holder reports.
#[test]
fn reports_sent_at_once_move_the_deadline_once() {
    let stack = "dev/burst";
    let (t, _ws, run) = approved_run("3", stack, &slow_resource(1));
    let token = start_apply(&t, &run);
    // A third of the idle time on, a move is due.
    std::thread::sleep(Duration::from_millis(1_200));
    let url = format!("{}/api/v1/runs/{run}/heartbeat", t.s.url);
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let sent: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| raw("POST", &url, &token, b"{}")))
            .collect();
        sent.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (code, body) in &answers {
        assert_eq!(*code, 200, "{body}");
    }
    let moved = t.s.audit_of(&t.s.admin, "run.apply_alive");
    assert_eq!(moved.len(), 1, "{moved:?}");
    // `airlock run show` says until when the run waits for its applier.
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(
        shown.contains("if its applier stops reporting, the run is closed as abandoned after"),
        "{shown}"
    );
}
