//! The web console in a real browser: Debian's chromium, headless, driven by `playwright-core`
//! (`crates/airlock/tests/console/review.mjs`), against a real server with a run an agent planned
//! with real terraform. The script signs in as each user, reviews, approves with the destroy
//! count, checks XSS payloads stay text and cross-site posts are refused; this test applies the
//! run as CI in between. Screenshots go to `target/console-artifacts/`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::support::*;

/// `$name`, or a failure saying how to get it (never a skip).
fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the browser tests need playwright-core and chromium; run \
             `. scripts/test-deps.sh` first (scripts/test.sh does), which installs them and exports it"
        ),
    }
}

/// Where screenshots go: `target/console-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("console-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Terraform code whose resource keys and values carry XSS payloads and an RTL override, and
/// (with `slow`) a resource whose creation takes seconds, so the apply can be watched live.
fn hostile_main(gone: usize, input: &str, slow: usize) -> String {
    format!(
        r#"
resource "terraform_data" "slow" {{
  count = {slow}
  provisioner "local-exec" {{
    command = "echo applying slowly; sleep 6"
  }}
}}
resource "terraform_data" "keep" {{
  for_each = toset(["<script>alert(1)</script>", "\"><img src=x onerror=alert(2)>", "safe\u202etxt.exe"])
  input    = "{input}"
}}

resource "terraform_data" "gone" {{
  count = {gone}
  input = "gone-${{count.index}}"
}}
"#
    )
}

/// Runs the browser script for one phase; panics with its output when it fails.
fn browse(phase: &str, env: &[(&str, &str)]) {
    let modules = required_env("AIRLOCK_TEST_NODE_MODULES");
    let chromium = required_env("AIRLOCK_TEST_CHROMIUM");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/review.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(phase)
        .env("AIRLOCK_TEST_NODE_MODULES", modules)
        .env("AIRLOCK_TEST_CHROMIUM", chromium)
        .env("CONSOLE_ARTIFACTS", artifacts_dir())
        .envs(env.iter().copied())
        .output()
        .expect("running node (needed for the browser tests)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "browser phase {phase} failed:\n{text}"
    );
    assert!(text.contains(&format!("phase {phase}: ok")), "{text}");
}

#[test]
fn an_approver_reviews_and_approves_an_agents_destructive_run_in_a_real_browser() {
    let t = team("dev/web");
    // Applied first by an admin: three hostile keys and two instances the run will destroy.
    let ws = Workspace::new(&t.s, "dev/web", &hostile_main(2, "v1", 0));
    ws.tf_ok(&t.s.admin, &["init"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve"]);
    // The agent's change: destroys the two, and changes every value to an XSS payload.
    ws.write_main(&hostile_main(
        0,
        "<script>alert(3)</script> safe\\u202etxt.exe",
        1,
    ));
    let run = plan(&t, &ws, &t.agent, "dev/web");
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["status"], "needs_approval");
    assert_eq!(v["run"]["destroys"].as_array().unwrap().len(), 2);

    // A run alice planned herself, on another stack: she must see Approve disabled.
    t.s.ok(&t.s.admin, &["stack", "create", "dev/own"]);
    let own_ws = Workspace::new(&t.s, "dev/own", &data_resources(1));
    let own = plan(&t, &own_ws, &t.approver, "dev/own");

    let env = [
        ("AIRLOCK_URL", t.s.url.as_str()),
        ("RUN", run.as_str()),
        ("OWN_RUN", own.as_str()),
        ("STACK", "dev/web"),
        ("AGENT_TOKEN", t.agent.as_str()),
        ("AUTHOR_TOKEN", t.approver.as_str()),
        ("APPROVER_TOKEN", t.approver2.as_str()),
    ];
    browse("review", &env);
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["status"], "approved", "approved in the browser");
    assert_eq!(v["run"]["approvals"][0]["by_user"], "bob");
    assert_eq!(
        v["run"]["approvals"][0]["plan_sha256"], v["run"]["plan_sha256"],
        "the approval is of the plan the page showed"
    );
    assert_eq!(
        run_json(&t, &own)["run"]["status"],
        "needs_approval",
        "the cross-site posts changed nothing"
    );

    // CI applies exactly the approved plan while the approver watches the log grow on the page;
    // then the page shows the run applied, with its whole log.
    let ci = Command::new(AIRLOCK)
        .args(["apply", &run, "--dir", "."])
        .current_dir(&ws.dir)
        .env("AIRLOCK_URL", &t.s.url)
        .env("AIRLOCK_TOKEN", &t.ci)
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    browse("live", &env);
    let out = ci.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    browse("applied", &env);
    let shots = artifacts_dir();
    for shot in [
        "run-review.png",
        "run-live.png",
        "run-page.png",
        "diff-page.png",
    ] {
        let meta = std::fs::metadata(shots.join(shot)).expect(shot);
        assert!(meta.len() > 10_000, "{shot} is a real screenshot");
    }
    println!("console screenshots: {}", shots.display());
}
