//! Server policy sets end to end (issue 10, item 3): an admin installs Rego for `prod/*`; a run
//! that the repository's own airlock.hcl and Rego allow is denied by it; removing the set lets
//! the same change through to review. And the one plan gate: `airlock check --format json` and
//! the stored run report have exactly the fields `docs/check-json-schema.md` documents.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::*;

const ORG_POLICY: &str = "package main\n\ndeny contains msg if {\n  some rc in input.resource_changes\n  \"delete\" in rc.change.actions\n  msg := sprintf(\"%s: nothing is deleted on prod\", [rc.address])\n}\n";

/// The repository's attempt to weaken it: the same package, rules that allow everything.
const REPO_POLICY: &str = "package main\n\ndeny := set()\n\nwarn := set()\n";

/// Field names of the first table after `heading` in docs/check-json-schema.md.
fn documented(heading: &str) -> BTreeSet<String> {
    let doc = include_str!("../../../../docs/check-json-schema.md");
    let start = doc.find(heading).expect(heading) + heading.len();
    let mut fields = BTreeSet::new();
    let rows = doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    for line in rows {
        if let Some(cell) = line.strip_prefix("| `") {
            let cell = &cell[..cell.find(" |").unwrap()];
            fields.extend(cell.split(", ").map(|n| n.trim_matches('`').to_string()));
        }
    }
    fields
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

/// Exactly the documented members, and no plain no-op among the changes.
fn assert_documented(report: &Value) {
    assert_eq!(
        keys(report),
        documented("## Top level"),
        "top level: {report}"
    );
    for c in report["changes"].as_array().unwrap() {
        assert_eq!(keys(c), documented("## `changes[]`"), "{c}");
        assert!(
            c["kind"] != "no-op" || c["import"] == true || !c["moved_from"].is_null(),
            "a plain no-op is listed: {c}"
        );
    }
    for f in report["findings"].as_array().unwrap() {
        assert_eq!(keys(f), documented("## `findings[]`"), "{f}");
    }
}

#[test]
fn a_server_policy_denies_a_run_the_repository_allows_and_both_reports_follow_the_schema() {
    let stack = "prod/web";
    let t = team(stack);
    let ws = Workspace::new(&t.s, stack, &data_resources(2));
    let first = plan(&t, &ws, &t.agent, stack);
    t.s.ok(&t.approver, &["approve", &first]);
    assert!(apply(&t, &ws, &t.ci, &first).status.success());

    // The organisation's policy, with a test file that is not a policy (and would not parse).
    let org = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(org.path().join("rules")).unwrap();
    std::fs::write(org.path().join("rules/no_deletes.rego"), ORG_POLICY).unwrap();
    std::fs::write(
        org.path().join("rules/no_deletes_test.rego"),
        "not rego {{{",
    )
    .unwrap();
    let dir = org.path().to_str().unwrap();
    let refused =
        t.s.cli(&t.approver, &["policy", "add", "--stack", "prod/*", dir]);
    assert!(!refused.status.success(), "{}", text(&refused));
    let added: Value = serde_json::from_str(&t.s.ok(
        &t.s.admin,
        &[
            "policy", "add", "--stack", "prod/*", dir, "--format", "json",
        ],
    ))
    .unwrap();
    let set = added["policy_set"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        added["policy_set"]["files"],
        serde_json::json!(["rules/no_deletes.rego"])
    );
    let listed = t.s.ok(&t.approver, &["policy", "list"]);
    assert!(
        listed.contains(&set) && listed.contains("active"),
        "{listed}"
    );
    let shown = t.s.ok(&t.approver, &["policy", "show", &set]);
    assert!(
        shown.contains("nothing is deleted on prod\", [rc.address])\n}"),
        "{shown}"
    );

    // The repository allows the deletion in airlock.hcl and in its own Rego.
    std::fs::write(
        ws.path("airlock.hcl"),
        "allow_destroy \"terraform_data.r\" {\n  reason = \"scaling down\"\n}\n",
    )
    .unwrap();
    std::fs::create_dir_all(ws.path("policy")).unwrap();
    std::fs::write(ws.path("policy/allow.rego"), REPO_POLICY).unwrap();
    ws.write_main(&data_resources(1));
    let denied = plan(&t, &ws, &t.agent, stack);
    let v = run_json(&t, &denied);
    assert_eq!(v["run"]["status"], "denied", "{v}");
    let report = &v["run"]["report"];
    assert_documented(report);
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["severity"] == "deny")
        .unwrap_or_else(|| panic!("no deny finding: {report}"));
    assert_eq!(finding["rule"], format!("server-rego:{set}:main.deny"));
    assert_eq!(
        finding["message"],
        "terraform_data.r[1]: nothing is deleted on prod"
    );
    assert!(v["run"]["checks"].to_string().contains(&set), "{v}");

    // `airlock check` on the same plan with the repository's policy: not denied, and the
    // same change entries as the server's report (one gate, one set of structs).
    let (code, plan_json) = raw(
        "GET",
        &format!("{}/api/v1/runs/{denied}/artifacts/plan.json", t.s.url),
        &t.s.admin,
        b"",
    );
    assert_eq!(code, 200);
    std::fs::write(ws.path("plan.json"), plan_json).unwrap();
    let out = cli_in(
        &t.s,
        &t.s.admin,
        &ws.dir,
        &[
            "check",
            "plan.json",
            "--policy",
            "policy",
            "--format",
            "json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let local: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_documented(&local);
    assert_ne!(local["decision"], "deny", "{local}");
    assert_eq!(local["changes"], report["changes"]);
    assert_eq!(local["changes"].as_array().unwrap().len(), 1, "{local}");

    // Removed (with a reason, audited), the set no longer judges: the same change waits for
    // review.
    t.s.ok(
        &t.s.admin,
        &["policy", "remove", &set, "--reason", "migrated"],
    );
    let open = plan(&t, &ws, &t.agent, stack);
    let v = run_json(&t, &open);
    assert_eq!(v["run"]["status"], "needs_approval", "{v}");
    assert!(!v.to_string().contains("server-rego:"), "{v}");
    let audit = t.s.ok(&t.s.admin, &["audit", "--format", "json"]);
    assert!(
        audit.contains("policy.add") && audit.contains("policy.remove"),
        "{audit}"
    );
}

/// The one gate keeps `airlock check`'s streaming: without Rego, a 100 MB plan on stdin is
/// judged with memory bounded by the largest change, not the plan.
#[test]
fn check_without_rego_streams_a_plan_far_larger_than_its_memory() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(AIRLOCK)
        .args(["check", "-", "--format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || {
        let (mut total, mut tail) = (0usize, Vec::new());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break (total, String::from_utf8_lossy(&tail).into_owned());
            }
            total += n;
            tail.extend_from_slice(&buf[..n]);
            let keep = tail.len().saturating_sub(4096);
            tail.drain(..keep);
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(br#"{"format_version":"1.2","terraform_version":"1.11.4","resource_changes":["#)
        .unwrap();
    let filler = "x".repeat(4000);
    let changes = 25_000;
    for i in 0..changes {
        let sep = if i == 0 { "" } else { "," };
        write!(
            stdin,
            r#"{sep}{{"address":"terraform_data.r[{i}]","mode":"managed","type":"terraform_data","name":"r","index":{i},"change":{{"actions":["create"],"before":null,"after":{{"input":"{filler}"}}}}}}"#
        )
        .unwrap();
    }
    stdin.flush().unwrap();
    // Everything but the closing brackets is read or in the pipe: the process is still alive.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    stdin.write_all(b"]}").unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let (bytes, tail) = drain.join().unwrap();
    assert!(
        tail.trim_end().ends_with(r#""decision":"allow"}"#),
        "{tail}"
    );
    assert!(
        bytes > changes * 100,
        "every change is listed: {bytes} bytes"
    );
    assert!(
        peak_kb < 64 * 1024,
        "peak memory {peak_kb} kB while checking a 100 MB plan"
    );
}
