//! `airlock drift` end to end with real terraform: who may run and record a check, what an
//! error or a lock makes of it, and what the server refuses in a report body.

use base64::Engine;
use serde_json::{json, Value};

use crate::support::{cli_in, raw, text, Team, TestServer, Workspace};

const MAIN: &str = "resource \"terraform_data\" \"a\" {\n  input = \"one\"\n}\n";

/// A stack whose state holds one `terraform_data`, applied by the admin directly, on a server
/// started with `flags`.
fn applied_with(stack: &str, flags: &[&str]) -> (Team, Workspace) {
    let s = TestServer::start_with(flags);
    s.ok(&s.admin, &["stack", "create", stack]);
    let (agent, approver, approver2, ci) = (
        s.token("bot", "agent"),
        s.token("alice", "approver"),
        s.token("bob", "approver"),
        s.token("pipeline", "ci"),
    );
    let t = Team {
        s,
        agent,
        approver,
        approver2,
        ci,
    };
    let ws = Workspace::new(&t.s, stack, MAIN);
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    (t, ws)
}

fn applied(stack: &str) -> (Team, Workspace) {
    applied_with(stack, &[])
}

fn drift(t: &Team, ws: &Workspace, token: &str, stack: &str) -> (Option<i32>, Value, String) {
    let out = cli_in(
        &t.s,
        token,
        &ws.dir,
        &["drift", ".", "--stack", stack, "--format", "json"],
        &[],
    );
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, text(&out))
}

fn api(t: &Team, path: &str) -> Value {
    let (code, body) = raw("GET", &format!("{}{path}", t.s.url), &t.s.admin, b"");
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn an_agent_runs_drift_detection_but_cannot_record_it_or_write() {
    let stack = "dev/drift-agent";
    let (t, ws) = applied(stack);
    let serials = t.s.serials(stack);

    // The agent's check runs (plan-phase token, refresh-only) and finds nothing ...
    let (code, v, out) = drift(&t, &ws, &t.agent, stack);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["report"]["status"], "in_sync", "{out}");
    // ... but an agent's report is not recorded: its "in sync" could hide drift.
    let why = v["not_recorded"].as_str().unwrap_or_default();
    assert!(why.contains("report-drift"), "{out}");
    assert_eq!(t.s.serials(stack), serials, "drift detection wrote state");
    assert!(
        api(&t, &format!("/api/v1/stacks/{}/drift", "dev%2Fdrift-agent"))["history"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The agent's token cannot write the state the check read, nor apply.
    let err = ws.tf_err(
        &t.agent,
        &["apply", "-auto-approve", "-input=false", "-refresh-only"],
    );
    assert!(err.contains("403") || err.contains("lock"), "{err}");
    assert_eq!(t.s.serials(stack), serials);

    // CI records it; the status shows in `stack show`, `stack list` and /metrics.
    let (code, v, out) = drift(&t, &ws, &t.ci, stack);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["recorded"]["drift"]["status"], "in_sync", "{out}");
    assert_eq!(
        v["recorded"]["report"]["serial"],
        json!(serials.last().unwrap())
    );
    let show = t.s.ok(&t.agent, &["stack", "show", stack]);
    assert!(
        show.contains("drift:              in sync (checked "),
        "{show}"
    );
    let list = t.s.ok(&t.agent, &["stack", "list"]);
    assert!(list.contains("in sync (checked "), "{list}");
    let (_, metrics) = raw("GET", &format!("{}/metrics", t.s.url), &t.agent, b"");
    assert!(
        metrics.contains(&format!("airlock_stack_drifted{{stack=\"{stack}\"}} 0")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "airlock_stack_drift_check_age_seconds{{stack=\"{stack}\"}}"
    )));
    // Every report is audited.
    let audit =
        t.s.ok(&t.s.admin, &["audit", "--stack", stack, "--format", "json"]);
    assert!(audit.contains("drift.report"), "{audit}");
    assert_eq!(t.s.serials(stack), serials);
}

#[test]
fn a_terraform_error_is_unknown_and_a_locked_stack_is_skipped() {
    let stack = "dev/drift-error";
    let (t, ws) = applied(stack);
    let seg = "dev%2Fdrift-error";

    // A locked stack (an apply in progress) is skipped at once, nothing recorded.
    let url = t.s.state_url(stack);
    let lock = r#"{"ID":"l-9","Operation":"OperationTypeApply","Info":"","Who":"ci@runner","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
    assert_eq!(raw("LOCK", &url, &t.s.admin, lock.as_bytes()).0, 200);
    let started = std::time::Instant::now();
    let (code, v, out) = drift(&t, &ws, &t.ci, stack);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        v["skipped"]
            .as_str()
            .unwrap()
            .contains("locked by ci@runner"),
        "{out}"
    );
    assert!(started.elapsed().as_secs() < 60, "a lock was waited on");
    raw("UNLOCK", &url, &t.s.admin, lock.as_bytes());
    let history = |t: &Team| api(t, &format!("/api/v1/stacks/{seg}/drift"));
    assert!(history(&t)["history"].as_array().unwrap().is_empty());

    // A configuration terraform cannot refresh: unknown with the error, never in sync.
    ws.write_main(
        "resource \"terraform_data\" \"a\" {\n  input = file(\"${path.module}/gone.txt\")\n}\n",
    );
    let (code, v, out) = drift(&t, &ws, &t.ci, stack);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(v["report"]["status"], "unknown", "{out}");
    let error = v["report"]["error"].as_str().unwrap();
    assert!(error.contains("gone.txt"), "{error}");
    let h = history(&t);
    assert_eq!(h["drift"]["status"], "unknown");
    let id = h["history"][0]["id"].as_str().unwrap();
    let report = api(&t, &format!("/api/v1/stacks/{seg}/drift/{id}"));
    assert!(report["summary"]["error"]
        .as_str()
        .unwrap()
        .contains("gone.txt"));
    let show = t.s.ok(&t.s.admin, &["stack", "show", stack]);
    assert!(
        show.contains("drift:              unknown (the check at "),
        "{show}"
    );
}

#[test]
fn hostile_drift_reports_are_refused_and_change_nothing() {
    let stack = "dev/drift-hostile";
    let (t, _ws) = applied_with(stack, &["--max-run-upload-mib", "1"]);
    let url = format!("{}/api/v1/stacks/dev%2Fdrift-hostile/drift", t.s.url);
    let serial = *t.s.serials(stack).last().unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let in_sync = b64(r#"{"format_version":"1.2","terraform_version":"1.11.4"}"#);
    let post = |token: &str, body: Value| raw("POST", &url, token, body.to_string().as_bytes());

    // Forged "in sync" reports from roles that may not record one.
    for token in [&t.agent, &t.s.token("eve", "reader")] {
        let (code, msg) = post(token, json!({"serial": serial, "plan_json_b64": in_sync}));
        assert_eq!(code, 403, "{msg}");
    }
    for (body, want) in [
        (json!({"serial": serial}), "either plan_json_b64"),
        (
            json!({"serial": serial, "plan_json_b64": in_sync, "error": "x"}),
            "not both",
        ),
        (
            json!({"serial": serial, "error": "  "}),
            "either plan_json_b64",
        ),
        (json!({"serial": serial, "plan_json_b64": "%%%"}), "base64"),
        (
            json!({"serial": serial, "plan_json_b64": b64("{\"resource_drift\": 7")}),
            "unreadable",
        ),
        (
            json!({"serial": serial, "plan_json_b64": b64("{}")}),
            "not a plan",
        ),
        (
            json!({"serial": serial, "plan_json_b64": in_sync, "verdict": "in_sync"}),
            "unknown field",
        ),
        (
            json!({"serial": "7", "plan_json_b64": in_sync}),
            "invalid type",
        ),
    ] {
        let (code, msg) = post(&t.ci, body.clone());
        assert_eq!(code, 400, "{body}: {msg}");
        assert!(msg.contains(want), "{body}: {msg}");
    }
    // A report about another serial than the current one says nothing about the current state.
    for stale in [json!(serial - 1), json!(serial + 1), Value::Null] {
        let (code, msg) = post(&t.ci, json!({"serial": stale, "plan_json_b64": in_sync}));
        assert_eq!(code, 409, "{msg}");
        assert!(msg.contains("check again"), "{msg}");
    }
    // Bodies are bounded like run uploads.
    let huge = "x".repeat(2 * 1024 * 1024);
    let sent = ureq::post(&url)
        .set("Authorization", &format!("Bearer {}", t.ci))
        .send_bytes(huge.as_bytes());
    match sent {
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 413),
        // The server answers 413 from the declared length and closes: the answer may be lost.
        Err(ureq::Error::Transport(_)) => {}
        Ok(r) => panic!("an oversized report was accepted: {}", r.status()),
    }
    let h = api(&t, "/api/v1/stacks/dev%2Fdrift-hostile/drift");
    assert!(h["history"].as_array().unwrap().is_empty(), "{h}");
    // A long error is kept cut, not refused.
    let (code, msg) = post(
        &t.ci,
        json!({"serial": serial, "error": "e".repeat(100_000)}),
    );
    assert_eq!(code, 201, "{msg}");
}
