//! Small wording items a newcomer noticed (issue 9, item 13): `state history` of a stack with
//! no versions says so, a stack-name typo gets "did you mean" (from the CLI and from the
//! Terraform state backend, which still answers 422), and Rego findings name their resource.

use serde_json::json;

use crate::support::*;

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[port]");
    s.add_filter(r"/tmp/[A-Za-z0-9._/-]+", "[TMP]");
    s
}

#[test]
fn history_of_a_stack_without_versions_says_so() {
    let s = TestServer::start();
    s.ok(&s.admin, &["stack", "create", "dev/empty"]);
    let out = s.ok(&s.admin, &["state", "history", "dev/empty"]);
    settings().bind(|| insta::assert_snapshot!("history_without_versions", out));
    // JSON stays an empty list for scripts.
    assert_eq!(s.history_json("dev/empty")["versions"], json!([]));
}

#[test]
fn a_stack_name_typo_gets_did_you_mean_for_names_the_caller_may_see() {
    let s = TestServer::start();
    for name in ["prod/app", "prod/web", "team-b/secret"] {
        s.ok(&s.admin, &["stack", "create", name]);
    }
    let out = s.fails(&s.admin, &["state", "history", "prod/ap"]);
    settings().bind(|| insta::assert_snapshot!("did_you_mean_cli", out));
    // Nothing close: no guess.
    let out = s.fails(&s.admin, &["state", "history", "staging/web"]);
    assert!(!out.contains("did you mean"), "{out}");
    // The state backend keeps its 422 and carries the hint in the body.
    let (code, body) = raw("GET", &s.state_url("prod/ap"), &s.admin, b"");
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("(did you mean prod/app?)"), "{body}");
    // A name the caller may not see is never suggested: prod2/ap is one edit from prod/ap,
    // the admin is told about it, a token scoped to prod/* is not.
    s.ok(&s.admin, &["stack", "create", "prod2/ap"]);
    let out = s.fails(&s.admin, &["state", "history", "prod/ap"]);
    assert!(out.contains("(did you mean prod/app?)"), "{out}");
    s.ok(
        &s.admin,
        &["stack", "delete", "prod/app", "--reason", "test"],
    );
    let out = s.fails(&s.admin, &["state", "history", "prod/ap"]);
    assert!(out.contains("(did you mean prod2/ap?)"), "{out}");
    let scoped = {
        let out = s.ok(
            &s.admin,
            &[
                "token", "create", "--name", "scoped", "--role", "agent", "--stack", "prod/*",
                "--format", "json",
            ],
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let out = s.fails(&scoped, &["state", "history", "prod/ap"]);
    assert!(
        out.contains("does not exist") && !out.contains("did you mean"),
        "{out}"
    );
}

#[test]
fn rego_findings_show_the_resource_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let change = |address: &str, actions: &[&str]| {
        json!({"address": address, "mode": "managed", "type": "terraform_data",
               "name": address.rsplit('.').next().unwrap(),
               "change": {"actions": actions, "before": {}, "after": null,
                          "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}}})
    };
    let plan = json!({"format_version": "1.2", "terraform_version": "1.11.4",
        "resource_changes": [change("terraform_data.db", &["delete"]),
                             change("terraform_data.web", &["delete"])],
        "configuration": {}, "errored": false});
    std::fs::write(dir.join("plan.json"), plan.to_string()).unwrap();
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    // `address` as a string, `resource` as the resource change itself.
    std::fs::write(
        dir.join("policy/deletes.rego"),
        "package main\n\n\
         deny contains {\"msg\": \"databases are never deleted\", \"address\": rc.address} if {\n  \
           some rc in input.resource_changes\n  rc.name == \"db\"\n  rc.change.actions == [\"delete\"]\n}\n\n\
         warn contains {\"msg\": \"a delete\", \"resource\": rc} if {\n  \
           some rc in input.resource_changes\n  rc.name == \"web\"\n}\n",
    )
    .unwrap();
    for format in ["text", "markdown"] {
        let out = offline_cli(
            &[
                "check",
                dir.join("plan.json").to_str().unwrap(),
                "--policy",
                dir.join("policy").to_str().unwrap(),
                "--format",
                format,
            ],
            &[("NO_COLOR", "1")],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        let findings: String = shown
            .lines()
            .filter(|l| l.contains("rego:"))
            .map(|l| format!("{l}\n"))
            .collect();
        settings().bind(|| insta::assert_snapshot!(format!("rego_findings_{format}"), findings));
    }
}
