//! Reliability: tries to lose data. Two replicas on one PostgreSQL under 32 concurrent real
//! `terraform apply` runs and a lock race; SIGKILL during acknowledged writes on SQLite and
//! PostgreSQL; a table of hostile HTTP input; backups moved between engines. Everything talks
//! to loopback only and is bounded in count and time.
//!
//! One file per scenario: `replicas` (a, b), `crash` (c), `hostile_http` (d), `backups` and
//! `private_files`; the helpers they share are here.

mod backups;
mod crash;
mod hostile_http;
mod private_files;
mod replicas;

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

// ---- small helpers ----

/// A small deterministic PRNG (xorshift64*), seeded from the clock and printed, so a failing
/// run can be reproduced with AIRLOCK_TEST_SEED.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock(what: &str) -> Rng {
        let seed = std::env::var("AIRLOCK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            })
            | 1;
        eprintln!("{what}: AIRLOCK_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .build()
}

/// One request; `Err` only when no HTTP response came back (connection refused or cut).
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let req = agent
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"));
    match req.send_bytes(body) {
        Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

fn lock_body(id: &str) -> Vec<u8> {
    format!(r#"{{"ID":"{id}","Operation":"OperationTypeApply","Info":"","Who":"test@reliability","Version":"1.11.4","Created":"2026-11-24T03:09:07.006165048Z","Path":""}}"#).into_bytes()
}

/// A state v4 body with `n` resources of some padding, so writes take a little while.
fn state_body(lineage: &str, serial: u64, n: usize, pad: usize) -> Vec<u8> {
    let resources: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "mode": "managed", "type": "terraform_data", "name": format!("r{i}"),
                "provider": "provider[\"terraform.io/builtin/terraform\"]",
                "instances": [{"schema_version": 0, "attributes": {"id": format!("id-{i}"), "input": {"value": format!("s{serial}-{}", "x".repeat(pad)), "type": "string"}}}]
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": lineage,
        "outputs": {}, "resources": resources, "check_results": null
    }))
    .unwrap()
}

fn stack_segment(stack: &str) -> String {
    stack.replace('/', "%2F")
}

/// (serial, sha256) of every stored version, oldest first.
fn history(s: &TestServer, stack: &str) -> Vec<(u64, String)> {
    let (code, body) = raw(
        "GET",
        &format!("{}/api/v1/stacks/{}/versions", s.url, stack_segment(stack)),
        &s.admin,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["serial"].as_u64().unwrap(),
                x["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn current_lock(s: &TestServer, stack: &str) -> Option<String> {
    let (code, body) = raw(
        "GET",
        &format!("{}/api/v1/stacks/{}", s.url, stack_segment(stack)),
        &s.admin,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["lock"]["id"].as_str().map(str::to_owned)
}

fn assert_verified(s: &TestServer) {
    let verify = s.ok(&s.admin, &["state", "verify"]);
    assert!(verify.contains(" 0 failure(s)"), "{verify}");
    let audit = s.ok(&s.admin, &["audit", "--verify"]);
    assert!(audit.contains("audit chain intact"), "{audit}");
}
