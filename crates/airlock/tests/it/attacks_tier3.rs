//! Adversarial review of tier 3, with the real binary and real terraform (the in-process
//! attacks are in `airlock-server`'s `tests/http/attacks_tier3.rs`): each test is an attack,
//! failing until it is fixed.

use base64::Engine;
use serde_json::{json, Value};

use crate::attacks::{applied_stack, forged_upload, upload, WEB_CHANGED};
use crate::support::*;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// ATTACK (an agent's run upload): the `terraform.lock.hcl` part (or `lockfile_b64`) is stored
/// as the run's artifact without being compared to the lock file the binary plan embeds (what
/// `terraform apply PLAN` pins providers with) or to the input list's hash of it, so the run
/// shows reviewers a lock file that is not the plan's, here locking a provider the plan never
/// uses. Expected: 400 unless the part is byte-equal to the binary plan's embedded lock file
/// (and to its listed input).
#[test]
fn attacks_tier3_a_runs_lock_file_artifact_is_the_one_its_binary_plan_embeds() {
    let (t, ws) = applied_stack("dev/lockpart");
    ws.write_main(WEB_CHANGED);
    ws.tf_ok(&t.s.admin, &["plan", "-out=p.tfplan"]);
    let mut body = forged_upload(&t, &ws, "dev/lockpart", "p.tfplan", "p.tfplan");
    let fake = "provider \"registry.terraform.io/evil/backdoor\" {\n  version = \"6.6.6\"\n  hashes = [\"h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n}\n";
    body["lockfile_b64"] = json!(B64.encode(fake));
    let (code, text) = upload(&t, &t.agent, "dev/lockpart", &body);
    if code == 201 {
        let run: Value = serde_json::from_str(&text).unwrap();
        let id = run["run"]["id"].as_str().unwrap();
        let (code, stored) = raw(
            "GET",
            &format!("{}/api/v1/runs/{id}/artifacts/terraform.lock.hcl", t.s.url),
            &t.s.admin,
            b"",
        );
        panic!("run {id} was stored with a lock file its plan does not embed (artifact GET {code}: {stored:?})");
    }
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("not the lock file the binary plan embeds"),
        "refused for another reason: {text}"
    );
}
