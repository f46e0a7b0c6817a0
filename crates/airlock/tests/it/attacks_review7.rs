//! Review 7: a fresh attack on the promises governed runs make (the applied plan is the reviewed
//! plan; agents never control execution), holding a low-privilege credential.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::support::*;
use crate::testcloud::{TestCloud, VERSION};

/// Terraform's `h1:` hash of a provider package directory holding one file `name`
/// (`golang.org/x/mod/sumdb/dirhash.Hash1`).
fn h1(name: &str, content: &[u8]) -> String {
    let line = format!("{}  {name}\n", hex::encode(Sha256::digest(content)));
    format!(
        "h1:{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(line.as_bytes()))
    )
}

/// `.terraform/` is not a run input (terraform writes it), so nobody reviews it, and CI's
/// checkout holds whatever the change committed there. An agent commits a provider package in
/// the stack's `.terraform/providers` (a script that records the apply's credentials, then runs
/// the real provider) and lists its hash in `.terraform.lock.hcl` beside the real one: its plan
/// installs the real provider (the plan phase's own data directory and CLI configuration), but
/// `terraform init` in the applying checkout keeps the package it finds there ("Using
/// previously-installed"), as it matches a hash of the lock file. The apply must never run a
/// provider program the checkout supplies.
#[test]
fn a_provider_committed_in_the_checkouts_terraform_directory_never_runs_in_the_apply() {
    let cloud = TestCloud::new();
    let t = team("dev/app");
    let ws = cloud.workspace(
        &t.s,
        "dev/app",
        "resource \"terraform_data\" \"x\" {\n  input = \"a\"\n}\n",
    );
    let env = cloud.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let marker = ws.dir.parent().unwrap().join("PWNED");
    let file = format!("terraform-provider-aws_v{VERSION}");
    let evil = format!(
        "#!/bin/sh\necho \"run token: $TF_HTTP_PASSWORD\" > '{}'\nexec '{}' \"$@\"\n",
        marker.display(),
        cloud.provider.display()
    );
    let pkg = ws.dir.join(format!(
        ".terraform/providers/registry.terraform.io/hashicorp/aws/{VERSION}/linux_amd64"
    ));
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join(&file), &evil).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pkg.join(&file), std::fs::Permissions::from_mode(0o755)).unwrap();
    let real = std::fs::read(&cloud.provider).unwrap();
    // As terraform writes it (hashes sorted), so the plan's init leaves it as it is.
    let mut hashes = [h1(&file, evil.as_bytes()), h1(&file, &real)];
    hashes.sort();
    std::fs::write(
        ws.path(".terraform.lock.hcl"),
        format!(
            "# This file is maintained automatically by \"terraform init\".\n# Manual edits may be lost in future updates.\n\nprovider \"registry.terraform.io/hashicorp/aws\" {{\n  version = \"{VERSION}\"\n  hashes = [\n    \"{}\",\n    \"{}\",\n  ]\n}}\n",
            hashes[0], hashes[1],
        ),
    )
    .unwrap();

    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &["plan", ".", "--stack", "dev/app", "--format", "json"],
        &env,
    );
    assert!(out.status.success(), "plan: {}", text(&out));
    assert!(
        !exists(&marker),
        "the plan phase ran the checkout's provider"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = v["run"]["id"].as_str().unwrap().to_owned();
    t.s.ok(&t.approver, &["approve", &run]);

    let out = cli_in(&t.s, &t.ci, &ws.dir, &["apply", &run, "--dir", "."], &env);
    assert!(
        !exists(&marker),
        "the apply ran a provider program from the checkout's .terraform, which no one reviewed: {}\n{}",
        std::fs::read_to_string(&marker).unwrap_or_default(),
        text(&out)
    );
    assert!(out.status.success(), "apply: {}", text(&out));
    assert_eq!(run_json(&t, &run)["run"]["status"], "applied");
}

/// An approver's token is stolen and approves an agent's run; the theft is found and an admin
/// revokes the token. The approval was made with a credential airlock no longer trusts: it must
/// not carry the run to an apply (CI applies approved runs on its own, `airlock ci apply`).
#[test]
fn an_approval_made_with_a_since_revoked_token_does_not_start_an_apply() {
    let t = team("dev/app");
    let ws = Workspace::new(&t.s, "dev/app", &data_resources(1));
    let run = plan(&t, &ws, &t.agent, "dev/app");
    t.s.ok(&t.approver2, &["approve", &run]);
    let r = run_json(&t, &run);
    assert_eq!(r["run"]["status"], "approved", "{r:#}");
    let stolen = r["run"]["approvals"][0]["by_token"]
        .as_str()
        .unwrap()
        .to_owned();
    t.s.ok(&t.s.admin, &["token", "revoke", &stolen]);

    held_back_until_approved(&t, &ws, &run, "revoked", &t.approver);
}

/// CI's start of `run`'s apply is refused (403, saying `why`) and the run waits for approval
/// again; once `approver` approves, it applies.
fn held_back_until_approved(t: &Team, ws: &Workspace, run: &str, why: &str, approver: &str) {
    let (code, body) = start_apply_answer(t, run);
    assert_eq!(code, 403, "the apply started: {body}");
    assert!(body.contains(why), "{body}");
    assert_eq!(run_json(t, run)["run"]["status"], "needs_approval");
    t.s.ok(approver, &["approve", run]);
    let out = apply(t, ws, &t.ci, run);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(run_json(t, run)["run"]["status"], "applied");
}

/// An agent's run is approved by one approver on a stack that needs one; an admin then raises
/// the stack's required approvals to two (the stack became critical). The approved run, still
/// at the stack's serial, must not apply with one approval: the author picks when it plans,
/// not how many approvals its run needs.
#[test]
fn raising_a_stacks_required_approvals_holds_back_a_run_approved_under_the_old_rule() {
    let t = team("dev/app");
    let ws = Workspace::new(&t.s, "dev/app", &data_resources(1));
    let run = plan(&t, &ws, &t.agent, "dev/app");
    t.s.ok(&t.approver, &["approve", &run]);
    assert_eq!(run_json(&t, &run)["run"]["status"], "approved");
    t.s.ok(
        &t.s.admin,
        &["stack", "settings", "dev/app", "--required-approvals", "2"],
    );
    held_back_until_approved(&t, &ws, &run, "requires 2", &t.approver2);
}

/// The repository's Rego (`policy/**.rego`) is a run input an agent writes, and the server
/// evaluates it in its own process when it judges the run. A policy that asks regorus for a
/// range of 10^14 numbers made it allocate them at once: the allocation fails and the server
/// process aborts; one that loops over 10^9 pairs kept a server thread busy for minutes. Both
/// must be a clear refusal of the upload, and the server must keep serving.
#[test]
fn hostile_repository_rego_is_refused_and_the_server_keeps_serving() {
    let t = team("dev/app");
    let ws = Workspace::new(&t.s, "dev/app", &data_resources(1));
    std::fs::create_dir_all(ws.path("policy")).unwrap();
    for (name, rule) in [
        (
            "alloc.rego",
            "count(numbers.range(1, 100000000000000)) > 0",
        ),
        (
            "spin.rego",
            "some i in numbers.range(1, 90000)\n  some j in numbers.range(1, 90000)\n  i == j + 100000",
        ),
    ] {
        std::fs::write(
            ws.path(&format!("policy/{name}")),
            format!("package main\n\ndeny contains msg if {{\n  {rule}\n  msg := \"never\"\n}}\n"),
        )
        .unwrap();
        let out = cli_in(
            &t.s,
            &t.agent,
            &ws.dir,
            &["plan", ".", "--stack", "dev/app"],
            &[],
        );
        assert!(!out.status.success(), "{name}: {}", text(&out));
        assert!(
            t.s.cli(&t.s.admin, &["whoami"]).status.success(),
            "{name}: the server no longer answers after judging it: {}",
            text(&out)
        );
        assert!(text(&out).contains("Rego"), "{name}: {}", text(&out));
        std::fs::remove_file(ws.path(&format!("policy/{name}"))).unwrap();
    }
}

/// An agent's run destroys an instance nobody protects, and is approved. An admin then protects
/// that type on the stack (`airlock stack protect`). The run's approvers never saw the removal
/// as one of a protected instance, and the run's grant would let its apply remove it anyway:
/// the apply must be refused until a new plan is judged under the new protection.
#[test]
fn protection_added_after_approval_holds_back_the_runs_removal() {
    let t = team("dev/app");
    let ws = Workspace::new(&t.s, "dev/app", &data_resources(1));
    let run = plan(&t, &ws, &t.agent, "dev/app");
    t.s.ok(&t.approver, &["approve", &run]);
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));

    ws.write_main(&data_resources(0));
    let run = plan(&t, &ws, &t.agent, "dev/app");
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "1"]);
    assert_eq!(run_json(&t, &run)["run"]["status"], "approved");
    t.s.ok(
        &t.s.admin,
        &["stack", "protect", "dev/app", "--type", "terraform_data"],
    );
    let fp = run_json(&t, &run)["run"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, body) = raw(
        "POST",
        &format!("{}/api/v1/runs/{run}/apply", t.s.url),
        &t.ci,
        format!(r#"{{"fingerprint":"{fp}"}}"#).as_bytes(),
    );
    assert_eq!(
        code, 409,
        "a removal judged unprotected started after the stack protected it: {body}"
    );
    assert!(body.contains("terraform_data.r[0]"), "{body}");
    assert_eq!(run_json(&t, &run)["run"]["status"], "superseded");
    // Planned again, the removal is judged protected and shown so; approved, it applies.
    let run = plan(&t, &ws, &t.agent, "dev/app");
    let r = run_json(&t, &run);
    assert!(
        r["run"]["report"]["findings"]
            .to_string()
            .contains("server-protected"),
        "{r:#}"
    );
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "1"]);
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
}

/// An agent takes a plan's lock on a stack and never releases it (it may: any token may lock
/// to plan). An approved run's apply must not wait it out and fail (then be re-planned and
/// re-approved, for as long as the agent likes): a plan lock of a token that can never write
/// the stack is taken over by the apply, audited.
#[test]
fn an_agents_plan_lock_held_forever_does_not_fail_an_approved_apply() {
    let t = team("dev/app");
    let ws = Workspace::new(&t.s, "dev/app", &data_resources(1));
    let run = plan(&t, &ws, &t.agent, "dev/app");
    t.s.ok(&t.approver, &["approve", &run]);
    let url = t.s.state_url("dev/app");
    let plan_lock = r#"{"ID":"l-agent-plan","Operation":"OperationTypePlan","Info":"","Who":"agent","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
    let (code, body) = raw("LOCK", &url, &t.agent, plan_lock.as_bytes());
    assert_eq!(code, 200, "{body}");
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(run_json(&t, &run)["run"]["status"], "applied");
    let audit = t.s.ok(
        &t.s.admin,
        &["audit", "--stack", "dev/app", "--format", "json"],
    );
    assert!(
        audit.contains("lock.preempt") && audit.contains("l-agent-plan"),
        "{audit}"
    );
}
