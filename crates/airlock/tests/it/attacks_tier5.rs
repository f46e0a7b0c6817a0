//! Review 5: attacks on this session's new work (issue 17), against the real server, real
//!
//! 1. The apply's plan check gates the state lock (`h/perf-runs3`). The gate holds only if
//!    `terraform apply PLAN` asks this server for the lock with the LOCK method before it
//!    changes anything. The http backend's `lock_method` is part of the backend configuration
//!    embedded in the plan (the plan author's `terraform init -backend-config=lock_method=GET`,
//!    nothing in the checkout) and defaults from `TF_HTTP_LOCK_METHOD`; `PlanBackend::check_is`
//!    pinned only the three addresses. With `GET`, Terraform "locks" by reading the state (200)
//!    and applies at once (three holes found, fixed: the lock and unlock methods, credentials and
//!    certificate checks are pinned, `TF_HTTP_*` overrides removed from the apply's environment):
//!    `a_plan_whose_backend_bypasses_the_lock_gate_or_the_run_identity_is_refused`,
//!    `tf_http_lock_method_in_the_environment_skips_the_gate` (a race the apply would win when
//!    `terraform show` is slow: made deterministic with a `terraform` whose `show` sleeps 4 s).
//!    Holds: `airlock_apply_killed_before_its_check_leaves_terraform_locked_out`.
//! 2. Forge-token records after a restore: a rewritten `oidc.login` event un-spends its token
//!    unless the exported manifest hash is given; import could not take it, now it does and
//!    refuses the rewrite, writing nothing (in
//!    `it::oidc::a_forge_token_used_before_a_backup_is_refused_after_the_restore`).
//! 3. `ci drift --propose`: `drift_decoy::*` (an agent's run with a value-forged JSON was
//!    linked as "proposed by an earlier check ... for exactly this drift"; now only the job's
//!    own identity's runs are linked).
//! 4. `state diff` (`h/perf-write3`): `state_diff_shows_a_change_between_colliding_contents`
//!    (fixed by comparing content bytes, not fingerprints).
//! 5. Review 6: a plan's prior state, which the server reads as a state, is the planner's to
//!    choose and inflates to 256 MiB from a small upload:
//!    `a_plan_whose_prior_state_is_far_larger_than_the_stacks_is_refused_before_it_is_read`.
//! 6. The repository's Rego is the planner's text and the server evaluated it in its own
//!    process, where regorus aborts on an allocation it cannot make (`numbers.range(0, 1e12)`,
//!    a `sprintf` width of 1e12):
//!    one agent upload stopped the server.
//!    `a_repository_policy_that_would_abort_the_server_stops_only_its_evaluator`.
//! 7. Review (session 14): server policy sets ran in the server's own process on the planner's
//!    plan text, where the engine holds ~27 times the text: a 20 MiB key of `[{},{},…]` (a few
//!    KB compressed) made the server hold 590 MB, per set, per upload. They now run in the
//!    child evaluator too: `a_server_policy_set_never_holds_an_uploads_plan_in_the_server`.

use crate::attacks::{applied_stack, forged_upload, upload};
use crate::support::*;

/// A change whose apply runs code on this machine: `applied` in the checkout says Terraform
/// applied something.
const WITH_SIDE_EFFECT: &str = "resource \"terraform_data\" \"db\" {\n  input = 1\n}\nresource \"terraform_data\" \"web\" {\n  input = 1\n}\nresource \"terraform_data\" \"side\" {\n  input = 1\n  provisioner \"local-exec\" {\n    command = \"touch ${path.module}/applied\"\n  }\n}\n";

/// The agent's upload of `stack` whose binary plan was made after `terraform init
/// -backend-config=SETTING` (the agent's own data directory: nothing in the checkout changes),
/// as `airlock plan` would send it: the server's answer.
fn upload_planned_with(t: &Team, ws: &Workspace, stack: &str, setting: &str) -> (u16, String) {
    ws.write_main(WITH_SIDE_EFFECT);
    ws.tf_ok(
        &t.s.admin,
        &[
            "init",
            "-reconfigure",
            &format!("-backend-config={setting}"),
        ],
    );
    ws.tf_ok(&t.s.admin, &["plan", "-out=../evil.tfplan"]);
    let body = forged_upload(t, ws, stack, "../evil.tfplan", "../evil.tfplan");
    let answer = upload(t, &t.agent, stack, &body);
    ws.tf_ok(&t.s.admin, &["init", "-reconfigure"]);
    answer
}

/// A `terraform` that takes 4 s longer for `show` (a large plan, slow provider schemas): the
/// gate must not depend on which of the check and the apply is faster.
fn slow_show_terraform(ws: &Workspace) -> String {
    let path = ws.path("../slow-show-terraform");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ \"$1\" = show ]; then sleep 4; fi\nexec {} \"$@\"\n",
            terraform_bin()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// The apply's plan check gates the state LOCK, and the apply talks to the state as its run:
/// a plan whose embedded backend locks with GET (Terraform would "lock" by reading the state
/// and apply at once, before any check), carries its own credentials (the apply would lock as
/// that identity), or skips certificate checks, is refused at upload; nothing is applied.
#[test]
fn a_plan_whose_backend_bypasses_the_lock_gate_or_the_run_identity_is_refused() {
    let stack = "dev/r5get";
    let (t, ws) = applied_stack(stack);
    // The agent's own token embedded as the backend's password: the apply would lock as it.
    let embedded = format!("password={}", t.agent);
    for (setting, said) in [
        ("lock_method=GET", "lock_method is \\\"GET\\\", not LOCK"),
        (embedded.as_str(), "sets password"),
        (
            "skip_cert_verification=true",
            "skip_cert_verification = true",
        ),
    ] {
        let (code, body) = upload_planned_with(&t, &ws, stack, setting);
        assert_eq!(code, 400, "{setting}: {body}");
        assert!(body.contains(said), "{setting}: {body}");
    }
    assert!(!ws.path("applied").exists());
}

/// The environment route `TF_CLI_ARGS` was closed for: `TF_HTTP_LOCK_METHOD=GET` in the CI's
/// environment (the plan leaves `lock_method` unset, so Terraform takes the default from it).
#[test]
fn tf_http_lock_method_in_the_environment_skips_the_gate() {
    let stack = "dev/r5env";
    let (t, ws) = applied_stack(stack);
    ws.write_main(WITH_SIDE_EFFECT);
    let run = plan(&t, &ws, &t.agent, stack);
    t.s.ok(&t.approver, &["approve", &run]);
    let other = ws.tf_ok(&t.s.admin, &["show", "-json"]);
    swap_run_artifact(&t, &run, "plan.json", other.as_bytes());
    let tf = slow_show_terraform(&ws);
    let out = cli_in(
        &t.s,
        &t.ci,
        &ws.dir,
        &["apply", &run, "--dir", ".", "--terraform-bin", &tf],
        &[("TF_HTTP_LOCK_METHOD", "GET")],
    );
    assert!(
        text(&out).contains("differs from the reviewed plan JSON"),
        "{}",
        text(&out)
    );
    assert!(
        !ws.path("applied").exists(),
        "terraform applied before the failed check: {}",
        text(&out)
    );
}

/// `airlock apply` killed (SIGKILL: no chance to stop its child) after `terraform apply`
/// started and before the plan check is recorded: the orphaned Terraform keeps asking for the
/// lock, which stays refused (423) while the run is unchecked, so it applies nothing and writes
/// no state. (Its `terraform` records its pid so the test can end the orphan.)
#[test]
fn airlock_apply_killed_before_its_check_leaves_terraform_locked_out() {
    let stack = "dev/r5kill";
    let (t, ws) = applied_stack(stack);
    ws.write_main(WITH_SIDE_EFFECT);
    let run = plan(&t, &ws, &t.agent, stack);
    t.s.ok(&t.approver, &["approve", &run]);
    let versions = t.s.version_count(stack);
    let pids = ws.path("../pids");
    let tf = ws.path("../pid-terraform");
    std::fs::write(
        &tf,
        format!(
            "#!/bin/sh\necho \"$$ $1\" >> {}\nif [ \"$1\" = show ]; then sleep 30; fi\nexec {} \"$@\"\n",
            pids.display(),
            terraform_bin()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut child = cli_command(
        &t.s,
        &t.ci,
        &ws.dir,
        &["apply", &run, "--dir", ".", "--terraform-bin"],
    )
    .arg(&tf)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    // Wait until `terraform apply` has started (its pid is recorded), then a little more.
    let started = std::time::Instant::now();
    let apply_pid = loop {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.ends_with(" apply")) {
            break l.split(' ').next().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "terraform apply never started: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    // The orphan keeps trying; for 12 s (past the server's 10 s long poll) nothing is applied.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let orphan_alive = std::path::Path::new(&format!("/proc/{apply_pid}")).exists();
    for l in std::fs::read_to_string(&pids).unwrap().lines() {
        let pid = l.split(' ').next().unwrap();
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .status();
    }
    assert!(
        orphan_alive,
        "the orphaned terraform apply was expected to still wait"
    );
    assert!(
        !ws.path("applied").exists(),
        "the orphaned terraform applied"
    );
    assert_eq!(t.s.version_count(stack), versions);
    let r = &run_json(&t, &run)["run"];
    assert_eq!(r["status"], "applying", "{r:#}");
    assert!(r["plan_checked_at"].is_null(), "{r:#}");
}

/// Part 3: `airlock ci drift --propose` links "the open run accepting exactly this drift"
/// instead of proposing one. The rule compares the run's reviewed plan JSON with the check's
/// own `terraform show -json`; the server ties a JSON to its binary by addresses and actions,
/// not values. An agent uploads a refresh-only run whose binary accepts other drift (planned
/// while the bastion was t3.xlarge) with the JSON of the real drift (t3.large), from the
/// checkout's own inputs at the current state.
mod drift_decoy {
    use serde_json::{json, Value};

    use crate::attacks::{forged_upload, upload};
    use crate::forge::ForgeStandIn;
    use crate::support::*;
    use crate::testcloud::TestCloud;

    const STACK: &str = "prod/decoy";
    const DB_TF: &str = "resource \"aws_instance\" \"bastion\" {\n  ami           = \"ami-0abc1234\"\n  instance_type = \"t3.micro\"\n}\n";

    fn ci_drift_propose(t: &Team, ws: &Workspace, cloud: &TestCloud, f: &ForgeStandIn) -> String {
        let root = ws.dir.parent().unwrap();
        let events = tempfile::tempdir().unwrap();
        let mut env = f.github_push_env(
            events.path(),
            "acme/infra",
            "main",
            "main",
            "1111111111111111111111111111111111111111",
            "2222222222222222222222222222222222222222",
        );
        env.extend(cloud.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        text(&cli_in(
            &t.s,
            &t.ci,
            root,
            &["ci", "drift", "--propose"],
            &env,
        ))
    }

    #[test]
    fn ci_drift_links_an_agents_run_whose_binary_accepts_other_drift() {
        let cloud = TestCloud::new();
        let t = team(STACK);
        let ws = cloud.workspace(&t.s, STACK, DB_TF);
        let root = ws.dir.parent().unwrap().to_owned();
        std::fs::write(
            root.join("airlock.hcl"),
            format!("stack \"{STACK}\" {{\n  dir = \"tf\"\n}}\n"),
        )
        .unwrap();
        ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
        ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
        let bastion = cloud.ids("aws_instance").pop().unwrap();
        cloud.set("aws_instance", &bastion, "instance_type", "\"t3.xlarge\"");
        ws.tf_ok(
            &t.s.admin,
            &["plan", "-refresh-only", "-out=../other.tfplan"],
        );
        cloud.set("aws_instance", &bastion, "instance_type", "\"t3.large\"");
        ws.tf_ok(
            &t.s.admin,
            &["plan", "-refresh-only", "-out=../real.tfplan"],
        );
        let mut body = forged_upload(&t, &ws, STACK, "../other.tfplan", "../real.tfplan");
        // The inputs `airlock plan` lists for this checkout (airlock.hcl included).
        let files = airlock_runner::input_files(&root, &ws.dir).unwrap();
        let version = body["terraform_version"].as_str().unwrap().to_owned();
        body["fingerprint"] = json!(airlock_core::inputs::fingerprint(&version, &files));
        body["inputs"] = json!(files);
        body["planned_dir"] = json!("tf");
        body["plan_mode"] = json!("refresh-only");
        body["config"] = json!(std::fs::read_to_string(root.join("airlock.hcl")).unwrap());
        let (code, answer) = upload(&t, &t.agent, STACK, &body);
        assert_eq!(code, 201, "the server refused the decoy: {answer}");
        let decoy: Value = serde_json::from_str(&answer).unwrap();
        let decoy = decoy["run"]["id"].as_str().unwrap().to_owned();
        assert_eq!(run_json(&t, &decoy)["run"]["plan_mode"], "refresh-only");

        let f = ForgeStandIn::start("ghs_decoy");
        let out = ci_drift_propose(&t, &ws, &cloud, &f);
        let issue = f.state()["github"]["issues"][0]["body"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            !out.contains(&format!("open run {decoy}")),
            "ci drift linked the agent's run, whose binary accepts t3.xlarge, as accepting this drift (t3.large):\n{out}\nissue:\n{issue}"
        );
    }
}

/// Part 4 (`h/perf-write3`): `state diff` on main compares 64-bit SipHash fingerprints with fixed
/// keys; perf-write3's pair of attribute objects, found offline, has one fingerprint. Two
/// versions that change one into the other, written through the real server, must show the
/// change. Fails on main; passes once perf-write3 (byte comparison) is merged.
#[test]
fn state_diff_shows_a_change_between_colliding_contents() {
    let s = TestServer::start();
    let stack = "dev/r5diff";
    s.ok(&s.admin, &["stack", "create", stack]);
    let url = s.state_url(stack);
    let version = |serial: u64, attrs: &str| {
        format!(
            r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"r5-lineage","outputs":{{}},"resources":[{{"mode":"managed","type":"terraform_data","name":"x","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{{"schema_version":0,"attributes":{attrs},"sensitive_attributes":[]}}]}}]}}"#
        )
    };
    let lock = r#"{"ID":"r5-diff","Operation":"OperationTypeApply","Info":"","Who":"admin","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
    for (serial, attrs) in [
        (1, r#"{"id":"f16ee43520d7deb0"}"#),
        (2, r#"{"id":"078b0bdccb407dcd"}"#),
    ] {
        let (code, body) = raw("LOCK", &url, &s.admin, lock.as_bytes());
        assert_eq!(code, 200, "{body}");
        let (code, body) = raw(
            "POST",
            &format!("{url}?ID=r5-diff"),
            &s.admin,
            version(serial, attrs).as_bytes(),
        );
        assert_eq!(code, 200, "{body}");
        raw("UNLOCK", &url, &s.admin, lock.as_bytes());
    }
    let diff = s.ok(&s.admin, &["state", "diff", stack, "1", "2"]);
    assert!(
        diff.contains("terraform_data.x") && !diff.contains("0 changed"),
        "the change of terraform_data.x is hidden:\n{diff}"
    );
}

/// An agent's plan file whose prior state was rewritten to be far larger than the stack's state
/// (here a 20 MB output; a crafted one makes the reader build hundreds of bytes per byte, and a
/// plan member inflates to 256 MiB from a small upload) is refused at upload, before the server
/// reads the prior state as a state; no run is stored.
#[test]
fn a_plan_whose_prior_state_is_far_larger_than_the_stacks_is_refused_before_it_is_read() {
    let stack = "dev/prior";
    let (t, ws) = applied_stack(stack);
    ws.write_main(crate::attacks::WEB_CHANGED);
    ws.tf_ok(&t.s.admin, &["plan", "-out=../honest.tfplan"]);
    let rewrite = ws.path("../rewrite.py");
    std::fs::write(
        &rewrite,
        "import json, sys, zipfile\n\
         src, dst = sys.argv[1], sys.argv[2]\n\
         with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', zipfile.ZIP_DEFLATED) as zout:\n\
         \x20   for item in zin.infolist():\n\
         \x20       data = zin.read(item.filename)\n\
         \x20       if item.filename == 'tfstate':\n\
         \x20           st = json.loads(data)\n\
         \x20           st.setdefault('outputs', {})['pad'] = {'value': 'p' * 20000000, 'type': 'string'}\n\
         \x20           data = json.dumps(st).encode()\n\
         \x20       zout.writestr(item.filename, data)\n",
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .arg(&rewrite)
        .arg(ws.path("../honest.tfplan"))
        .arg(ws.path("../padded.tfplan"))
        .output()
        .expect("python3 (installed with the test dependencies)");
    assert!(out.status.success(), "{}", text(&out));
    let body = forged_upload(&t, &ws, stack, "../padded.tfplan", "../padded.tfplan");
    let (code, answer) = upload(&t, &t.agent, stack, &body);
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer.contains("prior state") && answer.contains("does not grow a state"),
        "{answer}"
    );
    let runs =
        t.s.ok(&t.s.admin, &["runs", "--stack", stack, "--format", "json"]);
    assert!(!runs.contains("run_"), "{runs}");
    // The same plan as Terraform wrote it is taken.
    let body = forged_upload(&t, &ws, stack, "../honest.tfplan", "../honest.tfplan");
    let (code, answer) = upload(&t, &t.agent, stack, &body);
    assert_eq!(code, 201, "{answer}");
}

/// A planner's repository Rego that asks for terabytes at once (regorus aborts the process it
/// runs in when an allocation fails, so it took the whole server down with it; here a `sprintf`
/// width, which the engine's own bounds do not catch) is run by a child evaluator with bounded
/// memory: the plan is refused with why, no run is stored, and the server goes on serving; the
/// same checkout with a sane policy plans.
#[test]
fn a_repository_policy_that_would_abort_the_server_stops_only_its_evaluator() {
    let stack = "dev/rego-bomb";
    let (t, ws) = applied_stack(stack);
    ws.write_main(crate::attacks::WEB_CHANGED);
    std::fs::create_dir_all(ws.path("policy")).unwrap();
    std::fs::write(
        ws.path("policy/bomb.rego"),
        "package main\n\ndeny contains msg if {\n  msg := sprintf(\"%0999999999999d\", [1])\n}\n",
    )
    .unwrap();
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &["plan", ".", "--stack", stack],
        &[],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("was stopped before the Rego finished"),
        "{}",
        text(&out)
    );
    let runs =
        t.s.ok(&t.s.admin, &["runs", "--stack", stack, "--format", "json"]);
    assert!(!runs.contains("run_"), "{runs}");
    // The server is still up, and the same checkout with a sane policy plans.
    std::fs::write(
        ws.path("policy/bomb.rego"),
        "package main\n\nwarn contains msg if {\n  some rc in input.resource_changes\n  rc.address == \"terraform_data.web\"\n  msg := \"web changes\"\n}\n",
    )
    .unwrap();
    let run = plan(&t, &ws, &t.agent, stack);
    let shown =
        t.s.ok(&t.s.admin, &["run", "show", &run, "--format", "json"]);
    assert!(shown.contains("web changes"), "{shown}");
}

/// The server's resident memory and its peak since the last reset, in KiB; the reset.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_server_policy_set_never_holds_an_uploads_plan_in_the_server() {
    let stack = "dev/set-bomb";
    let (t, ws) = applied_stack(stack);
    let set = ws.path("set");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(
        set.join("web.rego"),
        "package main\n\nwarn contains msg if {\n  some rc in input.resource_changes\n  rc.address == \"terraform_data.web\"\n  msg := \"web changes\"\n}\n",
    )
    .unwrap();
    t.s.ok(
        &t.s.admin,
        &["policy", "add", "--stack", "dev/*", set.to_str().unwrap()],
    );
    ws.write_main(crate::attacks::WEB_CHANGED);
    ws.tf_ok(&t.s.admin, &["plan", "-out=web.tfplan"]);
    let mut body = forged_upload(&t, &ws, stack, "web.tfplan", "web.tfplan");
    // 12 MiB of empty objects under a key Terraform does not write.
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut plan: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&b64, body["plan_json_b64"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    plan["zjunk"] = serde_json::Value::Array(vec![serde_json::json!({}); 4 << 20]);
    body["plan_json_b64"] = base64::Engine::encode(&b64, plan.to_string()).into();
    let pid = t.s.pid();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (before, _) = rss_kib(pid);
    let (code, answer) = upload(&t, &t.agent, stack, &body);
    let (_, peak) = rss_kib(pid);
    assert_eq!(code, 201, "{answer}");
    assert!(
        answer.contains("web changes"),
        "the set judged the plan: {answer}"
    );
    // The upload itself (12 MiB, base64 in a JSON body here) and its reading are held; an
    // engine over it (~27 times) is not.
    let grown_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 150,
        "the server grew by {grown_mib} MiB for a 12 MiB plan"
    );
}

/// A state v4 document of about `mib` MiB: terraform_data instances with a padded input.
fn state_of_mib(mib: usize, serial: u64) -> String {
    let pad = "x".repeat(900);
    let resources: Vec<String> = (0..mib * 1024)
        .map(|i| {
            format!(
                r#"{{"mode":"managed","type":"terraform_data","name":"r{i}","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{{"schema_version":0,"attributes":{{"id":"id-{i}","input":"{pad}{serial}","output":null,"triggers_replace":null}},"sensitive_attributes":[]}}]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"00000000-0000-0000-0000-00000000000a","outputs":{{}},"resources":[{}]}}"#,
        resources.join(",")
    )
}

/// Review (session 14): a reader's diffs of a large state, many at once, each held both
/// versions and their summaries: 16 diffs of a 24 MB state took a server from 220 MB to 985
/// MB. The diffs now read within the server's budget of state reads (`--state-read-budget-mib`),
/// and wait their turn past it. Measured as the server's peak memory under 8 diffs at once,
/// against a server whose budget holds them all, in one run.
#[test]
fn many_diffs_of_a_large_state_wait_for_the_read_budget() {
    let grown = |budget: &str| -> u64 {
        let s = TestServer::start_with(&["--state-read-budget-mib", budget]);
        let t = team_on(s, "dev/large");
        let url = t.s.state_url("dev/large");
        let lock = r#"{"ID":"l-1","Operation":"OperationTypeApply","Info":"","Who":"t","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":""}"#;
        for serial in [1, 2] {
            let (code, msg) = raw("LOCK", &url, &t.s.admin, lock.as_bytes());
            assert_eq!(code, 200, "{msg}");
            let body = state_of_mib(16, serial);
            let (code, msg) = raw(
                "POST",
                &format!("{url}?ID=l-1"),
                &t.s.admin,
                body.as_bytes(),
            );
            assert_eq!(code, 200, "{msg}");
            raw("UNLOCK", &url, &t.s.admin, lock.as_bytes());
        }
        let reader = t.s.token("reader", "reader");
        let pid = t.s.pid();
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        let (before, _) = rss_kib(pid);
        let diff = format!("{}/api/v1/stacks/dev%2Flarge/diff?from=1&to=2", t.s.url);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    let (code, body) = raw("GET", &diff, &reader, b"");
                    assert_eq!(code, 200, "{}", &body[..body.len().min(300)]);
                });
            }
        });
        let (_, peak) = rss_kib(pid);
        peak.saturating_sub(before) / 1024
    };
    let unbounded = grown("4096");
    let bounded = grown("64");
    eprintln!("8 diffs of a 16 MiB state: +{bounded} MiB within a 64 MiB budget, +{unbounded} MiB within 4 GiB");
    assert!(
        bounded * 2 < unbounded,
        "8 diffs of a 16 MiB state: the server grew by {bounded} MiB within a 64 MiB read budget, by {unbounded} MiB within 4 GiB"
    );
}
