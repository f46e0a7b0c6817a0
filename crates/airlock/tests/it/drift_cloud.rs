//! Drift on the local test cloud (a real provider installed as `hashicorp/aws`): objects
//! changed and deleted behind Terraform's back are reported by `airlock drift`, a weakened
//! protection is a finding, `airlock ci drift` keeps one forge issue per drifted stack (GitHub
//! and GitLab) and closes it when the drift clears, a provider error is `unknown`, and nothing is ever written.

use serde_json::Value;

use crate::forge::ForgeStandIn;
use crate::support::{cli_in, raw, team, text, Team, Workspace};
use crate::testcloud::TestCloud;

const STACK: &str = "prod/db";

const DB_TF: &str = r#"
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
  ami           = "ami-0abc1234"
  instance_type = "t3.micro"
}
output "db_class" {
  value = aws_db_instance.main.instance_class
}
"#;

/// A stack on the cloud, applied by the admin; the repository root holds airlock.hcl.
fn applied(cloud: &TestCloud) -> (Team, Workspace) {
    let t = team(STACK);
    let ws = cloud.workspace(&t.s, STACK, DB_TF);
    std::fs::write(
        ws.dir.parent().unwrap().join("airlock.hcl"),
        format!("stack \"{STACK}\" {{\n  dir = \"tf\"\n}}\n"),
    )
    .unwrap();
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    (t, ws)
}

fn drift(t: &Team, ws: &Workspace, cloud: &TestCloud, token: &str) -> (Option<i32>, Value, String) {
    let env = cloud.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = cli_in(
        &t.s,
        token,
        &ws.dir,
        &["drift", ".", "--stack", STACK, "--format", "json"],
        &env,
    );
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, text(&out))
}

/// Which forge's scheduled job `ci_drift` runs as.
#[derive(Clone, Copy)]
enum On {
    GitHub,
    GitLab,
}

fn ci_drift(
    t: &Team,
    ws: &Workspace,
    cloud: &TestCloud,
    f: &ForgeStandIn,
) -> (Option<i32>, String) {
    ci_drift_on(On::GitHub, t, ws, cloud, f, &[])
}

fn ci_drift_on(
    on: On,
    t: &Team,
    ws: &Workspace,
    cloud: &TestCloud,
    f: &ForgeStandIn,
    extra: &[&str],
) -> (Option<i32>, String) {
    let root = ws.dir.parent().unwrap();
    let events = tempfile::tempdir().unwrap();
    const SHA: &str = "2222222222222222222222222222222222222222";
    let mut env: Vec<(String, String)> = match on {
        On::GitHub => f.github_push_env(
            events.path(),
            "acme/infra",
            "main",
            "main",
            "1111111111111111111111111111111111111111",
            SHA,
        ),
        On::GitLab => f.gitlab_schedule_env("42", "main", SHA),
    };
    env.extend(cloud.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let args: Vec<&str> = ["ci", "drift"].iter().chain(extra).copied().collect();
    let out = cli_in(&t.s, &t.ci, root, &args, &env);
    (out.status.code(), text(&out))
}

fn issues(f: &ForgeStandIn) -> Vec<Value> {
    f.state()["github"]["issues"].as_array().unwrap().clone()
}

#[test]
fn drift_appears_is_reported_with_findings_and_clears_with_one_forge_issue() {
    let cloud = TestCloud::new();
    let (t, ws) = applied(&cloud);
    let f = ForgeStandIn::start("ghs_drift_ci");
    let serials = t.s.serials(STACK);

    let (code, v, out) = drift(&t, &ws, &cloud, &t.ci);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["report"]["status"], "in_sync", "{out}");
    let (code, out) = ci_drift(&t, &ws, &cloud, &f);
    assert_eq!(code, Some(0), "{out}");
    assert!(issues(&f).is_empty(), "no issue while in sync");

    // Behind Terraform's back: the database loses its protection, the bastion is deleted.
    cloud.set("aws_db_instance", "prod-db", "deletion_protection", "false");
    cloud.set(
        "aws_db_instance",
        "prod-db",
        "instance_class",
        "db.t3.large",
    );
    let bastion = cloud.ids("aws_instance").pop().unwrap();
    cloud.delete("aws_instance", &bastion);

    // An agent's check sees it, records nothing and changes nothing.
    let (code, v, out) = drift(&t, &ws, &cloud, &t.agent);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        v["not_recorded"].as_str().unwrap().contains("report-drift"),
        "{out}"
    );
    assert_eq!(t.s.serials(STACK), serials, "drift detection wrote state");
    assert_eq!(
        cloud.get("aws_db_instance", "prod-db").unwrap()["deletion_protection"],
        false,
        "drift detection changed the cloud"
    );

    // CI's check is recorded: instances, attribute names, the finding, the output; no value.
    let (code, v, out) = drift(&t, &ws, &cloud, &t.ci);
    assert_eq!(code, Some(3), "{out}");
    let r = &v["report"];
    assert_eq!(r["status"], "drifted");
    assert_eq!(r["drifted_instances"], 2, "{out}");
    let db = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == "aws_db_instance.main")
        .unwrap();
    let attrs: Vec<&str> = db["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        attrs.contains(&"deletion_protection") && attrs.contains(&"instance_class"),
        "{attrs:?}"
    );
    assert_eq!(db["critical"], true);
    let gone = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"] == "aws_instance.bastion")
        .unwrap();
    assert_eq!(gone["change"], "delete");
    let findings = r["findings"].to_string();
    assert!(
        findings.contains("deletion_protection turned off (true → false) outside Terraform"),
        "{findings}"
    );
    assert_eq!(r["outputs"][0]["name"], "db_class", "{out}");
    // The report (what the server stores and shows) names, never values; terraform's own
    // output on the terminal shows them, as `terraform plan` does.
    let recorded = v.to_string();
    assert!(
        !recorded.contains("correct-horse") && !recorded.contains("db.t3.large"),
        "a value leaked: {recorded}"
    );
    assert_eq!(v["recorded"]["drift"]["status"], "drifted");
    let show = t.s.ok(&t.s.admin, &["stack", "show", STACK]);
    assert!(
        show.contains("drift:              drifted since "),
        "{show}"
    );
    let (_, metrics) = raw("GET", &format!("{}/metrics", t.s.url), &t.s.admin, b"");
    assert!(
        metrics.contains(&format!("airlock_stack_drifted{{stack=\"{STACK}\"}} 1")),
        "{metrics}"
    );

    // The scheduled job opens one issue, and updates (never duplicates) it.
    let (code, out) = ci_drift(&t, &ws, &cloud, &f);
    assert_eq!(code, Some(3), "{out}");
    let (code, out) = ci_drift(&t, &ws, &cloud, &f);
    assert_eq!(code, Some(3), "{out}");
    let all = issues(&f);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["state"], "open");
    let body = all[0]["body"].as_str().unwrap();
    assert!(
        body.contains("deletion&#95;protection") && body.contains("aws&#95;instance.bastion"),
        "{body}"
    );
    assert!(
        !body.contains("correct-horse") && !body.contains("db.t3.large"),
        "{body}"
    );

    // Reconciled by a reviewed apply (here the admin's, on a non-production stack): in sync,
    // and the issue closes.
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    let (code, out) = ci_drift(&t, &ws, &cloud, &f);
    assert_eq!(code, Some(0), "{out}");
    let all = issues(&f);
    assert_eq!(
        (all.len(), all[0]["state"].as_str()),
        (1, Some("closed")),
        "{all:#?}"
    );
    let show = t.s.ok(&t.s.admin, &["stack", "show", STACK]);
    assert!(show.contains("drift:              in sync"), "{show}");
    f.assert_no_violations();
}

#[test]
fn a_provider_error_is_unknown_never_in_sync() {
    let cloud = TestCloud::new();
    let (t, ws) = applied(&cloud);
    // The cloud's record of the database is unreadable: the provider fails the refresh.
    let file = cloud.dir.join("aws_db_instance").join("prod-db.json");
    assert!(file.is_file(), "{}", file.display());
    std::fs::write(&file, "{ not json").unwrap();
    let (code, v, out) = drift(&t, &ws, &cloud, &t.ci);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(v["report"]["status"], "unknown", "{out}");
    assert!(v["report"]["error"]
        .as_str()
        .unwrap()
        .contains("terraform plan -refresh-only failed"));
    assert_eq!(v["recorded"]["drift"]["status"], "unknown");
}

/// The same scheduled job on GitLab: one issue opened by the project access token's user,
/// updated (never duplicated) while the drift lasts, closed when the stack is in sync; a
/// person's issue carrying the marker is left alone; a garbled answer fails the job clearly and
/// a create whose answer was lost is found, not re-posted.
#[test]
fn on_gitlab_drift_opens_one_issue_updates_it_and_closes_it() {
    let cloud = TestCloud::new();
    let (t, ws) = applied(&cloud);
    let f = ForgeStandIn::start("glpat_drift_ci");
    f.gitlab_member_only_of(&f.token, &["42"]);
    let gitlab_issues = || f.state()["gitlab"]["issues"].as_array().unwrap().clone();
    // A person's issue with the stack's marker pasted in.
    f.add_user("token-of-mallory", "mallory");
    let pasted = "<!-- airlock:drift:prod/db -->\nI copied airlock's marker";
    ureq::post(&format!("{}/projects/42/issues", f.url_gitlab()))
        .set("PRIVATE-TOKEN", "token-of-mallory")
        .send_json(serde_json::json!({"title": "mine", "description": pasted}))
        .unwrap();

    let (code, out) = ci_drift_on(On::GitLab, &t, &ws, &cloud, &f, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("GitHub only"), "{out}");
    assert_eq!(gitlab_issues().len(), 1, "no issue while in sync");

    cloud.set("aws_db_instance", "prod-db", "deletion_protection", "false");
    // A garbled answer to the listing: a clear error, exit 1, and no issue opened blindly.
    f.answer_next("GET", r"/projects/42/issues$", 200, &[], "<html>");
    let (code, out) = ci_drift_on(On::GitLab, &t, &ws, &cloud, &f, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("prod/db: forge: listing the integration's open issues: the forge answered something that is not JSON"),
        "{out}"
    );
    assert_eq!(gitlab_issues().len(), 1);
    // The create takes effect but its answer is lost (a 502): looked for, found, not re-posted.
    f.fail_after_next("POST", r"/projects/42/issues$", 1, 502);
    let (code, out) = ci_drift_on(On::GitLab, &t, &ws, &cloud, &f, &[]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("prod/db: issue: https://gitlab.example/project-42/-/issues/2"),
        "{out}"
    );
    let bastion = cloud.ids("aws_instance").pop().unwrap();
    cloud.delete("aws_instance", &bastion);
    let (code, out) = ci_drift_on(On::GitLab, &t, &ws, &cloud, &f, &[]);
    assert_eq!(code, Some(3), "{out}");
    let all = gitlab_issues();
    assert_eq!(all.len(), 2, "opened once: {all:#?}");
    let ours = &all[1];
    assert_eq!(
        (ours["state"].as_str(), ours["author"]["username"].as_str()),
        (Some("opened"), Some("project_1_bot"))
    );
    let body = ours["description"].as_str().unwrap();
    assert!(
        body.starts_with("<!-- airlock:drift:prod/db -->")
            && body.contains("deletion&#95;protection")
            && body.contains("aws&#95;instance.bastion"),
        "updated while the drift lasts: {body}"
    );
    assert!(!body.contains("correct-horse"), "{body}");

    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    let (code, out) = ci_drift_on(On::GitLab, &t, &ws, &cloud, &f, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("prod/db: closed: "), "{out}");
    let all = gitlab_issues();
    let states: Vec<_> = all
        .iter()
        .map(|i| (i["iid"].as_u64().unwrap(), i["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(1, "opened"), (2, "closed")], "{all:#?}");
    assert_eq!(
        all[0]["description"], pasted,
        "the person's issue untouched"
    );
    assert!(
        !f.requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path.ends_with("/issues/1")),
        "no request edited the person's issue"
    );
    f.assert_no_violations();
}

/// `airlock ci drift --propose`: the scheduled job proposes a run that accepts the drift and
/// links it from the issue; the next job links the same run for the same drift instead of
/// proposing again; drift that changes gets a new run and the old one is named as accepting
/// drift the stack no longer has, as is every open one when the stack is in sync again. Nothing
/// is applied.
#[test]
fn ci_drift_proposes_one_run_per_drift_and_names_stale_ones() {
    let cloud = TestCloud::new();
    let (t, ws) = applied(&cloud);
    let f = ForgeStandIn::start("ghs_drift_propose");
    let serials = t.s.serials(STACK);
    let propose = |cloud: &TestCloud| ci_drift_on(On::GitHub, &t, &ws, cloud, &f, &["--propose"]);
    let run_after = |out: &str, what: &str| -> String {
        out.split(what)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {what:?} in {out}"))
            .to_owned()
    };
    let md = |id: &str| id.replace('_', "&#95;");
    let refresh_only_runs = || -> Vec<String> {
        let (code, body) = raw(
            "GET",
            &format!(
                "{}/api/v1/runs?stack={}",
                t.s.url,
                STACK.replace('/', "%2F")
            ),
            &t.s.admin,
            b"",
        );
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let bastion = cloud.ids("aws_instance").pop().unwrap();

    cloud.set("aws_instance", &bastion, "instance_type", "t3.large");
    let (code, out) = propose(&cloud);
    assert_eq!(code, Some(3), "{out}");
    let first = run_after(&out, "proposed run ");
    assert!(
        out.contains(&format!(
            "proposed run {first} accepts this drift (needs_approval"
        )),
        "{out}"
    );
    let r = &crate::support::run_json(&t, &first)["run"];
    assert_eq!(r["plan_mode"], "refresh-only", "{r:#}");
    let body = issues(&f)[0]["body"].as_str().unwrap().to_owned();
    assert!(
        body.contains(&format!(
            "**Accept this drift**: run {} (needs&#95;approval, proposed by this check)",
            md(&first)
        )),
        "{body}"
    );

    // The same drift the next time: the same run, linked again; nothing new proposed.
    let (code, out) = propose(&cloud);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains(&format!("open run {first} accepts this drift")),
        "{out}"
    );
    assert_eq!(refresh_only_runs(), std::slice::from_ref(&first));
    let all = issues(&f);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0]["body"].as_str().unwrap().contains(&format!(
            "run {} (needs&#95;approval, proposed by an earlier check",
            md(&first)
        )),
        "{all:#?}"
    );

    // The drift changes: its reviewers saw other values, so a new run; the first is stale.
    cloud.set("aws_instance", &bastion, "instance_type", "t3.xlarge");
    let (code, out) = propose(&cloud);
    assert_eq!(code, Some(3), "{out}");
    let second = run_after(&out, "proposed run ");
    assert_ne!(second, first, "{out}");
    assert!(
        out.contains(&format!(
            "run {first} accepts drift the stack no longer has: reject it"
        )),
        "{out}"
    );
    let body = issues(&f)[0]["body"].as_str().unwrap().to_owned();
    assert!(
        body.contains(&format!("run {} (needs&#95;approval", md(&second))),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "Run {} accepts drift this stack no longer has",
            md(&first)
        )),
        "{body}"
    );

    // Put back by hand: in sync, the issue closes naming both open runs as stale, and nothing
    // is proposed.
    cloud.set("aws_instance", &bastion, "instance_type", "t3.micro");
    let (code, out) = propose(&cloud);
    assert_eq!(code, Some(0), "{out}");
    for id in [&first, &second] {
        assert!(
            out.contains(&format!("run {id} accepts drift the stack no longer has")),
            "{out}"
        );
    }
    let all = issues(&f);
    assert_eq!(
        (all.len(), all[0]["state"].as_str()),
        (1, Some("closed")),
        "{all:#?}"
    );
    let body = all[0]["body"].as_str().unwrap();
    assert!(body.contains("is in sync again"), "{body}");
    for id in [&first, &second] {
        assert!(
            body.contains(&format!("Run {} accepts drift", md(id))),
            "{body}"
        );
    }
    assert_eq!(refresh_only_runs().len(), 2);
    assert_eq!(t.s.serials(STACK), serials, "proposing wrote state");
    f.assert_no_violations();
}
