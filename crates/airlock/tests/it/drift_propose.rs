//! `airlock drift --propose` (issue 14): drift accepted into the state through an ordinary
//! governed run, on the local test cloud. The server reads the planning mode from the binary
//! plan, judges the drift with the gate's own rules (dropping a critical database from the
//! state is destroying it there), ties the JSON's drift to the binary's, and the run's removal
//! grant covers exactly what the reviewed plan drops. The apply changes no infrastructure.

use serde_json::{json, Value};

use crate::attacks::{forged_upload, upload};
use crate::support::{cli_in, raw, run_json, start_apply, team, text, Team, Workspace};
use crate::testcloud::{apply_on, TestCloud};

const STACK: &str = "prod/data";

const TF: &str = r#"
resource "aws_db_instance" "main" {
  identifier              = "prod-db"
  engine                  = "postgres"
  instance_class          = "db.t3.micro"
  password                = "correct-horse"
  deletion_protection     = true
  skip_final_snapshot     = true
  backup_retention_period = 7
}
resource "aws_instance" "bastion" {
  ami                     = "ami-0abc1234"
  instance_type           = "t3.micro"
  disable_api_termination = true
}
"#;

const HCL: &str = "stack \"prod/data\" {\n  dir = \"tf\"\n}\n";
const DECLARED: &str = "allow_destroy \"aws_db_instance.main\" {\n  reason = \"deleted by hand during the incident; restored from a snapshot as prod-db-2\"\n}\n";

/// The stack applied by the admin, then changed behind Terraform's back: the database deleted,
/// the bastion's termination protection turned off and its size changed.
fn drifted(cloud: &TestCloud) -> (Team, Workspace, String) {
    let t = team(STACK);
    let ws = cloud.workspace(&t.s, STACK, TF);
    write_hcl(&ws, HCL);
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    let bastion = cloud.ids("aws_instance").pop().unwrap();
    cloud.delete("aws_db_instance", "prod-db");
    cloud.set("aws_instance", &bastion, "disable_api_termination", "false");
    cloud.set("aws_instance", &bastion, "instance_type", "\"t3.large\"");
    (t, ws, bastion)
}

fn write_hcl(ws: &Workspace, text: &str) {
    std::fs::write(ws.dir.parent().unwrap().join("airlock.hcl"), text).unwrap();
}

fn env(cloud: &TestCloud) -> Vec<(&'static str, String)> {
    cloud.env()
}

/// `airlock drift . --stack S EXTRA...` as `token`: exit code and all output.
fn drift(
    t: &Team,
    ws: &Workspace,
    cloud: &TestCloud,
    token: &str,
    extra: &[&str],
) -> (Option<i32>, String) {
    let env = env(cloud);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec!["drift", ".", "--stack", STACK];
    args.extend(extra);
    let out = cli_in(&t.s, token, &ws.dir, &args, &env);
    (out.status.code(), text(&out))
}

fn proposed_json(t: &Team, ws: &Workspace, cloud: &TestCloud, token: &str) -> (Option<i32>, Value) {
    let env = env(cloud);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = cli_in(
        &t.s,
        token,
        &ws.dir,
        &[
            "drift",
            ".",
            "--stack",
            STACK,
            "--propose",
            "--format",
            "json",
        ],
        &env,
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("drift --propose output: {}", text(&out)));
    (out.status.code(), v)
}

fn state_addresses(t: &Team) -> Vec<String> {
    let (code, body) = raw("GET", &t.s.state_url(STACK), &t.s.admin, b"");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<String> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}.{}",
                r["type"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

/// The console's page for `run`, signed in with `token` (as a browser would: the login form's
/// cookie and CSRF field, then the session cookie).
fn console_run_page(t: &Team, token: &str, run: &str) -> String {
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let cookie = |r: &ureq::Response, name: &str| -> String {
        r.all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .and_then(|c| c.split(';').next())
            .unwrap_or_else(|| panic!("no {name} cookie"))
            .to_owned()
    };
    let page = agent.get(&format!("{}/ui/login", t.s.url)).call().unwrap();
    let login = cookie(&page, "airlock_login");
    let html = page.into_string().unwrap();
    let csrf = html
        .split("name=\"login_csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("login_csrf field")
        .to_owned();
    let signed = match agent
        .post(&format!("{}/ui/login", t.s.url))
        .set("Cookie", &login)
        .send_form(&[("token", token), ("login_csrf", &csrf), ("next", "/ui/")])
    {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("sign-in: {e}"),
    };
    assert_eq!(signed.status(), 303, "sign-in");
    let session = cookie(&signed, "airlock_session");
    agent
        .get(&format!("{}/ui/runs/{run}", t.s.url))
        .set("Cookie", &session)
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

#[test]
fn drift_is_proposed_by_an_agent_approved_applied_by_ci_and_the_cloud_is_untouched() {
    let cloud = TestCloud::new();
    let (t, ws, bastion) = drifted(&cloud);
    let serials = t.s.serials(STACK);

    // Without a declaration, dropping the critical database from the state is denied, as
    // destroying it would be; the run exists and says why.
    let (code, v) = proposed_json(&t, &ws, &cloud, &t.agent);
    assert_eq!(code, Some(3), "{v:#}");
    let denied = &v["proposed"]["run"];
    assert_eq!(denied["status"], "denied", "{v:#}");
    assert_eq!(denied["plan_mode"], "refresh-only");
    let findings = denied["report"]["findings"].to_string();
    assert!(
        findings.contains("critical-destroy")
            && findings.contains(
                "drops from the state (deleted outside Terraform) critical aws_db_instance"
            ),
        "{findings}"
    );

    // Declared in the reviewed airlock.hcl: a run waiting for approval, the drift shown with
    // the dropped database first.
    write_hcl(&ws, &format!("{HCL}{DECLARED}"));
    let env_ = env(&cloud);
    let envs: Vec<(&str, &str)> = env_.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &["drift", ".", "--stack", STACK, "--propose"],
        &envs,
    );
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(3), "{shown}");
    assert!(
        shown.contains("not recorded"),
        "an agent records no report: {shown}"
    );
    let run = shown
        .split("proposed run ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id: {shown}"))
        .to_owned();
    assert!(
        shown.contains("ACCEPT DRIFT: a refresh-only plan"),
        "{shown}"
    );
    let review = &shown[shown.find("proposed run ").unwrap()..];
    let drops = review
        .find("DROPS FROM THE STATE 1 instance(s)")
        .expect(review);
    let db = review
        .find("- aws_db_instance.main (delete)  CRITICAL")
        .expect(review);
    let other = review
        .find("~ aws_instance.bastion (update)")
        .expect(review);
    assert!(
        drops < db && db < other,
        "the dropped database comes first: {shown}"
    );
    assert!(
        shown.contains("disable_api_termination turned off (true → false) outside Terraform"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("airlock approve {run} --confirm-destroy 1")),
        "{shown}"
    );
    let r = &run_json(&t, &run)["run"];
    assert_eq!(r["status"], "needs_approval", "{r:#}");
    assert_eq!(r["destroys"], json!(["aws_db_instance.main"]));
    assert!(r["checks"][0].as_str().unwrap().contains("drift"), "{r:#}");
    assert_eq!(t.s.serials(STACK), serials, "proposing wrote state");
    // The console shows it as accepting drift, with the drift as its changes.
    let page = console_run_page(&t, &t.approver, &run);
    assert!(page.contains("id=\"accept-drift\""), "{page}");
    assert!(
        page.contains("Dropped from the state (deleted outside Terraform) (1)"),
        "{page}"
    );
    assert!(page.contains("All changes (2)"), "{page}");
    // MCP explains it as accepting drift (the summary says so too).
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "explain_run", "arguments": {"run_id": run}}});
    let (code, body) = raw(
        "POST",
        &format!("{}/mcp", t.s.url),
        &t.agent,
        call.to_string().as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("it accepts drift (a refresh-only plan")
            && body.contains("dropping 1 instance(s) deleted outside Terraform"),
        "{body}"
    );

    // An agent proposes; it never approves or applies.
    let out =
        t.s.cli(&t.agent, &["approve", &run, "--confirm-destroy", "1"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("approve"), "{}", text(&out));
    let out = apply_on(&cloud, &t, &ws.dir, &t.agent, &run);
    assert!(!out.status.success(), "{}", text(&out));
    // An approver confirms what is dropped, as for a destroy.
    let out = t.s.cli(&t.approver, &["approve", &run]);
    assert!(text(&out).contains("--confirm-destroy 1"), "{}", text(&out));
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "1"]);

    // CI applies: the state now matches the cloud, and the cloud is exactly as it was.
    let cloud_before = cloud.inventory();
    let bastion_before = cloud.get("aws_instance", &bastion).unwrap();
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(run_json(&t, &run)["run"]["status"], "applied");
    assert!(
        run_json(&t, &run)["run"]["checks"]
            .to_string()
            .contains("resource_drift"),
        "airlock apply compared the drift"
    );
    assert_eq!(
        cloud.inventory(),
        cloud_before,
        "accepting drift changed the cloud"
    );
    assert_eq!(cloud.get("aws_instance", &bastion).unwrap(), bastion_before);
    assert_eq!(state_addresses(&t), ["aws_instance.bastion"]);
    let (code, body) = raw("GET", &t.s.state_url(STACK), &t.s.admin, b"");
    assert_eq!(code, 200);
    assert!(
        body.contains("t3.large"),
        "the state records the drifted size"
    );
    assert_eq!(t.s.serials(STACK).len(), serials.len() + 1);

    // The next check is in sync; nothing left to propose.
    let (code, out) = drift(&t, &ws, &cloud, &t.ci, &["--propose"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("in sync") && out.contains("nothing proposed: no drift"),
        "{out}"
    );
    // A refresh-only run whose refresh finds nothing has nothing to approve.
    let envs = env(&cloud);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &[
            "plan",
            ".",
            "--stack",
            STACK,
            "--refresh-only",
            "--format",
            "json",
        ],
        &envs,
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"]["status"], "no_changes", "{v:#}");
    assert_eq!(v["run"]["plan_mode"], "refresh-only");
}

/// The attacks, each against the real server with real plans of the drifted cloud.
#[test]
fn refresh_only_runs_are_judged_from_the_binary_and_bound_to_it() {
    let cloud = TestCloud::new();
    let (t, ws, _) = drifted(&cloud);
    ws.tf_ok(&t.s.admin, &["plan", "-refresh-only", "-out=ro.tfplan"]);
    ws.tf_ok(&t.s.admin, &["plan", "-out=normal.tfplan"]);

    // `airlock check` on the binary judges it as the server does: by its drift.
    let envs = env(&cloud);
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = cli_in(&t.s, &t.agent, &ws.dir, &["check", "ro.tfplan"], &envs);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("drops from the state (deleted outside Terraform)"),
        "{}",
        text(&out)
    );

    // The metadata's mode is a claim: a normal binary claimed refresh-only, or the reverse, is
    // refused.
    let mut claimed = forged_upload(&t, &ws, STACK, "normal.tfplan", "normal.tfplan");
    claimed["plan_mode"] = json!("refresh-only");
    let (code, body) = upload(&t, &t.agent, STACK, &claimed);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("is a normal plan, not the \\\"refresh-only\\\""),
        "{body}"
    );
    let mut claimed = forged_upload(&t, &ws, STACK, "ro.tfplan", "ro.tfplan");
    claimed["plan_mode"] = json!("normal");
    let (code, body) = upload(&t, &t.agent, STACK, &claimed);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("is a refresh-only plan"), "{body}");

    // The JSON of the normal plan (which recreates the database) with the refresh-only binary
    // (which drops it from the state), and the reverse: neither describes its binary.
    for (bin, json_of) in [
        ("ro.tfplan", "normal.tfplan"),
        ("normal.tfplan", "ro.tfplan"),
    ] {
        let swapped = forged_upload(&t, &ws, STACK, bin, json_of);
        let (code, body) = upload(&t, &t.agent, STACK, &swapped);
        assert_eq!(code, 400, "{bin} with the JSON of {json_of}: {body}");
        assert!(body.contains("does not describe the binary plan"), "{body}");
    }

    // The refresh-only JSON edited to hide the dropped database, or to show it as an update.
    let honest = forged_upload(&t, &ws, STACK, "ro.tfplan", "ro.tfplan");
    let plan_json = |body: &Value| -> Value {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(body["plan_json_b64"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice(&b).unwrap()
    };
    let with_json = |body: &Value, j: &Value| -> Value {
        use base64::Engine;
        let mut b = body.clone();
        b["plan_json_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(j.to_string()));
        b
    };
    let original = plan_json(&honest);
    let mut hidden = original.clone();
    hidden["resource_drift"]
        .as_array_mut()
        .unwrap()
        .retain(|d| d["address"] != "aws_db_instance.main");
    let mut disguised = original.clone();
    for d in disguised["resource_drift"].as_array_mut().unwrap() {
        if d["address"] == "aws_db_instance.main" {
            d["change"]["actions"] = json!(["update"]);
        }
    }
    for (what, j) in [("hidden", hidden), ("disguised", disguised)] {
        let (code, body) = upload(&t, &t.agent, STACK, &with_json(&honest, &j));
        assert_eq!(code, 400, "{what}: {body}");
        assert!(
            body.contains("drift") && body.contains("aws_db_instance.main"),
            "{what}: {body}"
        );
    }

    // The honest upload, with no mode claimed: judged from the binary as drift to accept.
    let (code, body) = upload(&t, &t.agent, STACK, &honest);
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    let run = created["run"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["run"]["plan_mode"], "refresh-only");
    assert_eq!(
        created["run"]["status"], "denied",
        "no allow_destroy: {body}"
    );
    assert!(
        created["summary_markdown"]
            .as_str()
            .unwrap()
            .contains("accept drift: a refresh-only plan"),
        "{body}"
    );
    assert!(t
        .s
        .fails(&t.approver, &["approve", &run, "--confirm-destroy", "1"])
        .contains("denied"));
}

/// The apply's state write may drop exactly what the reviewed refresh-only plan drops: the
/// run-bound token dropping the bastion as well is refused by the state firewall.
#[test]
fn a_refresh_only_apply_that_drops_more_than_reviewed_is_refused() {
    let cloud = TestCloud::new();
    let (t, ws, _) = drifted(&cloud);
    write_hcl(&ws, &format!("{HCL}{DECLARED}"));
    let (code, v) = proposed_json(&t, &ws, &cloud, &t.agent);
    assert_eq!(code, Some(3), "{v:#}");
    let run = v["proposed"]["run"]["id"].as_str().unwrap().to_owned();
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "1"]);
    let token = start_apply(&t, &run);

    let url = t.s.state_url(STACK);
    let (code, current) = raw("GET", &url, &t.s.admin, b"");
    assert_eq!(code, 200);
    let current: Value = serde_json::from_str(&current).unwrap();
    let write = |keep: &[&str]| -> (u16, String) {
        let mut state = current.clone();
        state["serial"] = json!(current["serial"].as_u64().unwrap() + 1);
        state["resources"]
            .as_array_mut()
            .unwrap()
            .retain(|r| keep.contains(&r["name"].as_str().unwrap()));
        let lock = r#"{"ID":"l-run","Operation":"OperationTypeApply","Info":"","Who":"ci","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
        let (code, msg) = raw("LOCK", &url, &token, lock.as_bytes());
        assert_eq!(code, 200, "{msg}");
        let out = raw(
            "POST",
            &format!("{url}?ID=l-run"),
            &token,
            state.to_string().as_bytes(),
        );
        raw("UNLOCK", &url, &token, lock.as_bytes());
        out
    };
    let (code, body) = write(&[]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("may remove only the instances its reviewed plan deletes")
            && body.contains("aws_instance.bastion"),
        "{body}"
    );
    assert_eq!(
        state_addresses(&t),
        ["aws_db_instance.main", "aws_instance.bastion"]
    );
    // What the reviewed plan drops, and nothing more, is within the grant.
    let (code, body) = write(&["bastion"]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(state_addresses(&t), ["aws_instance.bastion"]);
}

/// The server ties the drift's addresses and actions to the binary; the values reviewers read
/// are tied by `airlock apply`, which compares Terraform's own `show -json` of the approved plan
/// with the reviewed JSON, `resource_drift` included: a JSON that hides a protection turned off
/// outside Terraform is approved, then refused before Terraform applies anything.
#[test]
fn drift_values_edited_in_the_reviewed_json_are_refused_at_apply() {
    let cloud = TestCloud::new();
    let t = team(STACK);
    let ws = cloud.workspace(&t.s, STACK, TF);
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    let bastion = cloud.ids("aws_instance").pop().unwrap();
    cloud.set("aws_instance", &bastion, "disable_api_termination", "false");
    cloud.set("aws_instance", &bastion, "instance_type", "\"t3.large\"");
    // Outside the checkout, so that the plan file is not one of the run's inputs.
    ws.tf_ok(&t.s.admin, &["plan", "-refresh-only", "-out=../ro.tfplan"]);
    let honest = forged_upload(&t, &ws, STACK, "../ro.tfplan", "../ro.tfplan");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut j: Value = serde_json::from_slice(
        &b64.decode(honest["plan_json_b64"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    for d in j["resource_drift"].as_array_mut().unwrap() {
        d["change"]["after"]["disable_api_termination"] = json!(true);
    }
    let mut edited = honest.clone();
    edited["plan_json_b64"] = json!(b64.encode(j.to_string()));
    let (code, body) = upload(&t, &t.agent, STACK, &edited);
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert!(
        !created["run"]["report"]
            .to_string()
            .contains("protection-weakened"),
        "the edited JSON hides the finding: {body}"
    );
    let run = created["run"]["id"].as_str().unwrap().to_owned();
    t.s.ok(&t.approver, &["approve", &run]);
    let serials = t.s.serials(STACK);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("differs from the reviewed plan JSON in resource_drift"),
        "{}",
        text(&out)
    );
    assert_eq!(t.s.serials(STACK), serials, "nothing was applied");
    assert_eq!(run_json(&t, &run)["run"]["status"], "failed");
}

/// An agent proposes accepting drift through MCP (`propose_change` with `refresh_only`): the
/// same governed run as `airlock drift --propose`, judged from the binary (the critical
/// database it drops from the state is denied without an `allow_destroy` declaration).
#[test]
fn an_agent_proposes_accepting_drift_through_mcp() {
    let cloud = TestCloud::new();
    let (t, ws, _) = drifted(&cloud);
    let serials = t.s.serials(STACK);
    let root = ws.dir.parent().unwrap();
    let call = json!([{"tool": "propose_change", "args": {"dir": "tf", "stack": STACK, "refresh_only": true}}]);
    let v = crate::mcp::sdk_with_env("stdio", &t.s, &t.agent, root, &call, &env(&cloud));
    let p = &v["calls"][0];
    assert_eq!(p["isError"], false, "{p}");
    let p = &p["structured"];
    assert_eq!(p["plan_mode"], "refresh-only", "{p}");
    assert_eq!(p["decision"], "deny", "{p}");
    assert!(p["approve_command"].is_null(), "{p}");
    assert!(
        p["findings"].to_string().contains("critical-destroy"),
        "{p}"
    );
    let r = &run_json(&t, p["run_id"].as_str().unwrap())["run"];
    assert_eq!(r["plan_mode"], "refresh-only", "{r:#}");
    assert_eq!(t.s.serials(STACK), serials, "proposing wrote state");
}
