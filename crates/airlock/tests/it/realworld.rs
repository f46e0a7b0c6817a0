//! What real configurations do, through the real governed flow: `airlock plan` (agent),
//! `airlock approve` (approver), `airlock apply` (CI), then a second change planned and applied,
//! and the state afterwards. Outputs, variables and tfvars files, local modules, `count` and
//! `for_each` with awkward keys, `moved`/`removed`/`import` blocks, replacements, `check`
//! blocks, data sources, sensitive values, unicode, empty plans and destroys.

use serde_json::Value;

use crate::support::*;
use crate::testcloud::{apply_on, plan_on, TestCloud};

/// Approves `run` as an approver (confirming its destroys) and applies it as CI; returns the
/// run as `run show` has it afterwards.
fn approve_and_apply(t: &Team, ws: &Workspace, run: &str) -> Value {
    approve(t, run);
    let out = apply(t, ws, &t.ci, run);
    assert!(out.status.success(), "apply {run}: {}", text(&out));
    let v = run_json(t, run);
    assert_eq!(v["run"]["status"], "applied", "{v}");
    v
}

fn approve(t: &Team, run: &str) {
    let v = run_json(t, run);
    assert_eq!(v["run"]["status"], "needs_approval", "{v}");
    let destroys = v["run"]["destroys"]
        .as_array()
        .map_or(0, Vec::len)
        .to_string();
    t.s.ok(
        &t.approver,
        &["approve", run, "--confirm-destroy", &destroys],
    );
}

/// Plans as the agent, approves and applies: the governed flow a change takes.
fn governed(t: &Team, ws: &Workspace, stack: &str) -> Value {
    let run = plan(t, ws, &t.agent, stack);
    approve_and_apply(t, ws, &run)
}

/// The stack's current state, as Terraform would read it.
fn state(t: &Team, stack: &str) -> Value {
    let (code, body) = raw("GET", &t.s.state_url(stack), &t.s.admin, b"");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Every resource instance address in a state (`module.m.type.name["key"]`), sorted.
fn addresses(state: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for r in state["resources"].as_array().unwrap() {
        if r["mode"] != "managed" {
            continue;
        }
        let base = match r["module"].as_str() {
            Some(m) => format!(
                "{m}.{}.{}",
                r["type"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            ),
            None => format!(
                "{}.{}",
                r["type"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            ),
        };
        for i in r["instances"].as_array().unwrap() {
            out.push(match &i["index_key"] {
                Value::Null => base.clone(),
                Value::Number(n) => format!("{base}[{n}]"),
                Value::String(s) => format!("{base}[{}]", serde_json::to_string(s).unwrap()),
                k => panic!("index key {k}"),
            });
        }
    }
    out.sort();
    out
}

/// The `output` attribute of a terraform_data instance in a state.
fn data_output(state: &Value, module: Option<&str>, name: &str, key: Option<&Value>) -> Value {
    let r = state["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name && r["module"].as_str() == module)
        .unwrap_or_else(|| panic!("{name} not in {state}"));
    let i = r["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| key.is_none_or(|k| &i["index_key"] == k))
        .unwrap();
    i["attributes"]["output"]["value"].clone()
}

#[test]
fn outputs_plain_sensitive_changed_alone_and_removed() {
    let t = team("dev/outputs");
    let v1 = r#"
variable "name" {
  default = "web"
}
resource "terraform_data" "a" {
  input = var.name
}
output "plain" {
  value = terraform_data.a.output
}
output "secret" {
  value     = "s3cr3t-${var.name}"
  sensitive = true
}
output "object" {
  value = { name = var.name, ports = [80, 443] }
}
"#;
    let ws = Workspace::new(&t.s, "dev/outputs", v1);
    governed(&t, &ws, "dev/outputs");
    let s = state(&t, "dev/outputs");
    assert_eq!(s["outputs"]["plain"]["value"], "web");
    assert_eq!(s["outputs"]["secret"]["value"], "s3cr3t-web");
    assert_eq!(s["outputs"]["secret"]["sensitive"], true);
    assert_eq!(s["outputs"]["object"]["value"]["ports"][1], 443);

    // Only outputs change: a run to review, applied.
    let v2 = v1
        .replace(
            "value = terraform_data.a.output",
            "value = \"${terraform_data.a.output}-2\"",
        )
        .replace("s3cr3t-", "rotated-");
    ws.write_main(&v2);
    let run = plan(&t, &ws, &t.agent, "dev/outputs");
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(
        !shown.contains("rotated-web"),
        "a sensitive output's value is shown: {shown}"
    );
    approve_and_apply(&t, &ws, &run);
    let s = state(&t, "dev/outputs");
    assert_eq!(s["outputs"]["plain"]["value"], "web-2");
    assert_eq!(s["outputs"]["secret"]["value"], "rotated-web");

    // Removing outputs (one sensitive) is a change too.
    let v3 = "variable \"name\" {\n  default = \"web\"\n}\nresource \"terraform_data\" \"a\" {\n  input = var.name\n}\n";
    ws.write_main(v3);
    governed(&t, &ws, "dev/outputs");
    let s = state(&t, "dev/outputs");
    assert_eq!(s["outputs"], serde_json::json!({}), "{s}");
    assert_eq!(data_output(&s, None, "a", None), "web");
}

#[test]
fn variables_from_defaults_terraform_tfvars_and_auto_tfvars() {
    let t = team("dev/vars");
    let main_tf = r#"
variable "env" {
  type = string
}
variable "size" {
  type    = number
  default = 1
}
variable "labels" {
  type    = map(string)
  default = { team = "core" }
}
resource "terraform_data" "r" {
  count = var.size
  input = "${var.env}-${count.index}-${var.labels["team"]}"
}
"#;
    let ws = Workspace::new(&t.s, "dev/vars", main_tf);
    std::fs::write(ws.path("terraform.tfvars"), "env = \"dev\"\n").unwrap();
    std::fs::write(ws.path("size.auto.tfvars"), "size = 2\n").unwrap();
    std::fs::write(
        ws.path("labels.auto.tfvars.json"),
        r#"{"labels": {"team": "edge"}}"#,
    )
    .unwrap();
    governed(&t, &ws, "dev/vars");
    let s = state(&t, "dev/vars");
    assert_eq!(
        addresses(&s),
        ["terraform_data.r[0]", "terraform_data.r[1]"]
    );
    assert_eq!(data_output(&s, None, "r", Some(&1.into())), "dev-1-edge");

    // The second change comes from a tfvars file alone.
    std::fs::write(ws.path("size.auto.tfvars"), "size = 3\n").unwrap();
    governed(&t, &ws, "dev/vars");
    let s = state(&t, "dev/vars");
    assert_eq!(addresses(&s).len(), 3);
    assert_eq!(data_output(&s, None, "r", Some(&2.into())), "dev-2-edge");
}

/// A variable file is a run input: an approved plan is not applied from a checkout whose
/// `terraform.tfvars` or `*.auto.tfvars` differs from the reviewed one, nor from one that
/// gained a new `*.auto.tfvars`.
#[test]
fn attack_an_approved_plan_is_not_applied_after_a_tfvars_change() {
    let t = team("dev/tfvars");
    let main_tf = "variable \"env\" {\n  type = string\n}\nvariable \"n\" {\n  default = 1\n}\nresource \"terraform_data\" \"r\" {\n  count = var.n\n  input = var.env\n}\n";
    let ws = Workspace::new(&t.s, "dev/tfvars", main_tf);
    std::fs::write(ws.path("terraform.tfvars"), "env = \"dev\"\n").unwrap();
    let run = plan(&t, &ws, &t.agent, "dev/tfvars");
    approve(&t, &run);
    for (file, body) in [
        ("terraform.tfvars", "env = \"prod\"\n"),
        ("extra.auto.tfvars", "n = 5\n"),
        ("extra.auto.tfvars.json", "{\"n\": 5}"),
    ] {
        let before = std::fs::read(ws.path(file)).ok();
        std::fs::write(ws.path(file), body).unwrap();
        let out = apply(&t, &ws, &t.ci, &run);
        assert!(
            !out.status.success() && text(&out).contains(file),
            "applied with a changed {file}: {}",
            text(&out)
        );
        match before {
            Some(b) => std::fs::write(ws.path(file), b).unwrap(),
            None => std::fs::remove_file(ws.path(file)).unwrap(),
        }
    }
    assert_eq!(run_json(&t, &run)["run"]["status"], "approved");
    approve_and_apply_approved(&t, &ws, &run);
    assert_eq!(
        data_output(&state(&t, "dev/tfvars"), None, "r", Some(&0.into())),
        "dev"
    );
}

fn approve_and_apply_approved(t: &Team, ws: &Workspace, run: &str) {
    let out = apply(t, ws, &t.ci, run);
    assert!(out.status.success(), "apply {run}: {}", text(&out));
    assert_eq!(run_json(t, run)["run"]["status"], "applied");
}

#[test]
fn nested_local_modules_for_each_keys_moved_and_removed_blocks() {
    let t = team("dev/modules");
    let root_v1 = r#"
module "net" {
  source = "./modules/net"
  names  = ["a b", "ünï", "q\"uote", "br[0]"]
}
resource "terraform_data" "old" {
  input = "o"
}
resource "terraform_data" "gone" {
  input = "g"
}
output "leaves" {
  value = module.net.leaves
}
"#;
    let ws = Workspace::new(&t.s, "dev/modules", root_v1);
    let net = ws.path("modules/net");
    std::fs::create_dir_all(net.join("inner")).unwrap();
    std::fs::write(
        net.join("main.tf"),
        r#"
variable "names" {
  type = list(string)
}
resource "terraform_data" "sub" {
  for_each = toset(var.names)
  input    = each.key
}
module "inner" {
  source = "./inner"
  n      = length(var.names)
}
output "leaves" {
  value = module.inner.ids
}
"#,
    )
    .unwrap();
    std::fs::write(
        net.join("inner/main.tf"),
        "variable \"n\" {\n  type = number\n}\nresource \"terraform_data\" \"leaf\" {\n  count = var.n\n  input = count.index\n}\noutput \"ids\" {\n  value = terraform_data.leaf[*].output\n}\n",
    )
    .unwrap();
    governed(&t, &ws, "dev/modules");
    let s = state(&t, "dev/modules");
    let addrs = addresses(&s);
    for a in [
        r#"module.net.terraform_data.sub["a b"]"#,
        r#"module.net.terraform_data.sub["q\"uote"]"#,
        r#"module.net.terraform_data.sub["br[0]"]"#,
        r#"module.net.terraform_data.sub["ünï"]"#,
        "module.net.module.inner.terraform_data.leaf[3]",
        "terraform_data.old",
        "terraform_data.gone",
    ] {
        assert!(addrs.contains(&a.to_string()), "{a} not in {addrs:?}");
    }
    assert_eq!(
        s["outputs"]["leaves"]["value"],
        serde_json::json!([0, 1, 2, 3])
    );

    // moved (a rename), removed without destroy (forget), a key dropped and one added.
    let root_v2 = r#"
module "net" {
  source = "./modules/net"
  names  = ["ünï", "q\"uote", "br[0]", "c\\d"]
}
moved {
  from = terraform_data.old
  to   = terraform_data.renamed
}
resource "terraform_data" "renamed" {
  input = "o"
}
removed {
  from = terraform_data.gone
  lifecycle {
    destroy = false
  }
}
output "leaves" {
  value = module.net.leaves
}
"#;
    ws.write_main(root_v2);
    let run = plan(&t, &ws, &t.agent, "dev/modules");
    let v = run_json(&t, &run);
    // The destroyed key and the forgotten instance are both confirmed.
    assert_eq!(v["run"]["destroys"].as_array().unwrap().len(), 2, "{v}");
    approve_and_apply(&t, &ws, &run);
    let addrs = addresses(&state(&t, "dev/modules"));
    assert!(
        addrs.contains(&"terraform_data.renamed".to_string()),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&r#"module.net.terraform_data.sub["c\\d"]"#.to_string()),
        "{addrs:?}"
    );
    for gone in [
        "terraform_data.old",
        "terraform_data.gone",
        r#"module.net.terraform_data.sub["a b"]"#,
    ] {
        assert!(
            !addrs.contains(&gone.to_string()),
            "{gone} still in {addrs:?}"
        );
    }
}

#[test]
fn no_changes_then_a_destroy_of_the_whole_stack() {
    let t = team("dev/empty");
    let ws = Workspace::new(
        &t.s,
        "dev/empty",
        &format!(
            "{}output \"inputs\" {{\n  value = terraform_data.r[*].output\n}}\noutput \"secret\" {{\n  value     = \"x\"\n  sensitive = true\n}}\n",
            data_resources(2)
        ),
    );
    governed(&t, &ws, "dev/empty");
    let run = plan(&t, &ws, &t.agent, "dev/empty");
    assert_eq!(run_json(&t, &run)["run"]["status"], "no_changes");
    let out = t.s.cli(&t.approver, &["approve", &run]);
    assert!(!out.status.success(), "{}", text(&out));

    // The stack's removal, declared in airlock.hcl (`airlock ci` plans it with -destroy; by
    // hand, `airlock plan --destroy`).
    std::fs::write(
        ws.dir.parent().unwrap().join("airlock.hcl"),
        "stack \"dev/empty\" {\n  dir     = \"tf\"\n  destroy = true\n}\n",
    )
    .unwrap();
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &[
            "plan",
            ".",
            "--stack",
            "dev/empty",
            "--destroy",
            "--format",
            "json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = v["run"]["id"].as_str().unwrap();
    assert_eq!(
        run_json(&t, run)["run"]["destroys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    approve_and_apply(&t, &ws, run);
    let s = state(&t, "dev/empty");
    assert!(addresses(&s).is_empty(), "{s}");
    assert_eq!(s["outputs"], serde_json::json!({}), "{s}");
}

#[test]
fn sensitive_values_nonsensitive_unicode_and_check_blocks() {
    let t = team("dev/unicode");
    let v1 = r#"
variable "password" {
  type      = string
  sensitive = true
  default   = "hunter2-pässwörd"
}
resource "terraform_data" "café" {
  input = "naïve ☃ 日本語 \u202e"
}
resource "terraform_data" "secret" {
  input = var.password
}
resource "terraform_data" "keys" {
  for_each = { "日本" = 1, "ключ" = 2, "emoji 🚀" = 3 }
  input    = each.value
}
output "length" {
  value = nonsensitive(length(var.password))
}
check "healthy" {
  assert {
    condition     = terraform_data.café.output != ""
    error_message = "empty"
  }
}
"#;
    let ws = Workspace::new(&t.s, "dev/unicode", v1);
    let run = plan(&t, &ws, &t.agent, "dev/unicode");
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(
        !shown.contains("hunter2"),
        "a sensitive value is shown: {shown}"
    );
    approve_and_apply(&t, &ws, &run);
    let s = state(&t, "dev/unicode");
    let addrs = addresses(&s);
    assert!(
        addrs.contains(&"terraform_data.café".to_string()),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&r#"terraform_data.keys["emoji 🚀"]"#.to_string()),
        "{addrs:?}"
    );
    assert_eq!(
        data_output(&s, None, "café", None),
        "naïve ☃ 日本語 \u{202e}"
    );
    assert_eq!(s["outputs"]["length"]["value"], 16);

    // Second change: a key renamed, the secret changed, a failing check (a warning only).
    let v2 = v1
        .replace("\"ключ\" = 2", "\"ключ2\" = 2")
        .replace("hunter2-pässwörd", "hunter3")
        .replace("!= \"\"", "== \"\"");
    ws.write_main(&v2);
    let run = plan(&t, &ws, &t.agent, "dev/unicode");
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(
        !shown.contains("hunter3"),
        "a sensitive value is shown: {shown}"
    );
    approve_and_apply(&t, &ws, &run);
    let s = state(&t, "dev/unicode");
    assert!(addresses(&s).contains(&r#"terraform_data.keys["ключ2"]"#.to_string()));
    assert_eq!(s["outputs"]["length"]["value"], 7);
    assert_eq!(data_output(&s, None, "secret", None), "hunter3");
}

#[test]
fn replace_triggered_by_and_create_before_destroy_replacements() {
    let t = team("dev/replace");
    let v1 = r#"
resource "terraform_data" "version" {
  input = "1"
}
resource "terraform_data" "app" {
  input = "app"
  lifecycle {
    replace_triggered_by = [terraform_data.version]
    create_before_destroy = true
  }
}
resource "terraform_data" "cbd" {
  triggers_replace = "a"
  lifecycle {
    create_before_destroy = true
  }
}
"#;
    let ws = Workspace::new(&t.s, "dev/replace", v1);
    governed(&t, &ws, "dev/replace");
    let before = state(&t, "dev/replace");
    let id = |s: &Value, name: &str| -> String {
        s["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["instances"][0]["attributes"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let v2 = v1
        .replace("input = \"1\"", "input = \"2\"")
        .replace("\"a\"", "\"b\"");
    ws.write_main(&v2);
    let run = plan(&t, &ws, &t.agent, "dev/replace");
    approve_and_apply(&t, &ws, &run);
    let after = state(&t, "dev/replace");
    // `version` is updated in place; `app` is replaced because it changed, `cbd` because its
    // trigger did, each created before the old one is destroyed.
    assert_eq!(id(&before, "version"), id(&after, "version"));
    for name in ["app", "cbd"] {
        assert_ne!(
            id(&before, name),
            id(&after, name),
            "{name} was not replaced"
        );
    }
    assert_eq!(addresses(&after).len(), 3);
}

#[test]
fn import_blocks_and_lifecycle_on_the_test_cloud() {
    let cloud = TestCloud::new();
    // A bucket made outside Terraform's stack (by someone's local state).
    let local =
        cloud.local_dir("resource \"aws_s3_bucket\" \"b\" {\n  bucket = \"legacy-assets\"\n}\n");
    let out = cloud.tf(
        &local,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = team("dev/cloud");
    let v1 = r#"
import {
  to = aws_s3_bucket.assets
  id = "legacy-assets"
}
resource "aws_s3_bucket" "assets" {
  bucket = "legacy-assets"
  tags   = { owner = "platform" }
}
resource "aws_db_instance" "db" {
  identifier          = "main"
  engine              = "postgres"
  instance_class      = "db.t3.micro"
  password            = "correct horse"
  deletion_protection = true
  lifecycle {
    ignore_changes = [tags]
  }
}
output "db_password" {
  value     = aws_db_instance.db.password
  sensitive = true
}
"#;
    let ws = cloud.workspace(&t.s, "dev/cloud", v1);
    let run = plan_on(&cloud, &t, &ws, &t.agent, "dev/cloud");
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(
        !shown.contains("correct horse"),
        "a sensitive value is shown: {shown}"
    );
    approve(&t, &run);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(run_json(&t, &run)["run"]["status"], "applied");
    let s = state(&t, "dev/cloud");
    assert_eq!(
        addresses(&s),
        ["aws_db_instance.db", "aws_s3_bucket.assets"]
    );
    assert_eq!(
        cloud.get("aws_s3_bucket", "legacy-assets").unwrap()["tags"]["owner"],
        "platform"
    );

    // Second change: the imported bucket's tags change, the ignored tags of the database do not
    // make a change, the password rotates.
    let v2 = v1
        .replace("owner = \"platform\"", "owner = \"web\"")
        .replace(
            "lifecycle {\n    ignore_changes = [tags]\n  }",
            "tags = { x = \"y\" }\n  lifecycle {\n    ignore_changes = [tags]\n  }",
        )
        .replace("correct horse", "battery staple");
    ws.write_main(&format!("{}{v2}", crate::testcloud::PROVIDER_TF));
    let run = plan_on(&cloud, &t, &ws, &t.agent, "dev/cloud");
    approve(&t, &run);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    let s = state(&t, "dev/cloud");
    assert_eq!(s["outputs"]["db_password"]["value"], "battery staple");
    assert_eq!(
        cloud.get("aws_s3_bucket", "legacy-assets").unwrap()["tags"]["owner"],
        "web"
    );
}

/// The agent plans `dev/app` in `app` with `--read-stack dev/net`; the run's id.
fn plan_reading_net(t: &Team, app: &Workspace) -> String {
    let out = cli_in(
        &t.s,
        &t.agent,
        &app.dir,
        &[
            "plan",
            ".",
            "--stack",
            "dev/app",
            "--read-stack",
            "dev/net",
            "--format",
            "json",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A drift check of a stack that reads another's outputs: its plan phase reads the stacks named
/// with `--read-stack` (or the stack block's `depends_on`), as `airlock plan`'s does; without
/// them the check cannot refresh and says so (unknown, Terraform's "invalid auth").
#[test]
fn a_drift_check_reads_the_stacks_it_names() {
    let t = team("dev/net");
    t.s.ok(&t.s.admin, &["stack", "create", "dev/app"]);
    let net = Workspace::new(
        &t.s,
        "dev/net",
        "resource \"terraform_data\" \"vpc\" {\n  input = \"vpc-1\"\n}\noutput \"vpc_id\" {\n  value = terraform_data.vpc.output\n}\n",
    );
    governed(&t, &net, "dev/net");
    let app = Workspace::new(
        &t.s,
        "dev/app",
        &format!(
            "data \"terraform_remote_state\" \"net\" {{\n  backend = \"http\"\n  config = {{\n    address = \"{}\"\n  }}\n}}\nresource \"terraform_data\" \"app\" {{\n  input = data.terraform_remote_state.net.outputs.vpc_id\n}}\n",
            t.s.state_url("dev/net")
        ),
    );
    let run = plan_reading_net(&t, &app);
    approve_and_apply(&t, &app, &run);
    let drift = |extra: &[&str]| {
        let mut args = vec!["drift", ".", "--stack", "dev/app", "--format", "json"];
        args.extend(extra);
        let out = cli_in(&t.s, &t.ci, &app.dir, &args, &[]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), v, text(&out))
    };
    let (code, v, out) = drift(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(v["report"]["status"], "unknown", "{out}");
    assert!(
        v["report"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid auth")),
        "{out}"
    );
    let (code, v, out) = drift(&["--read-stack", "dev/net"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(v["report"]["status"], "in_sync", "{out}");
}

/// `terraform_remote_state` reading another airlock stack through the http backend, with no
/// credential in the configuration: the plan phase's token may read the state (only) of the
/// stacks the plan declares (`--read-stack`, or the stack block's `depends_on`), each one the
/// planner may read itself; the run records them; CI applies the saved plan with the run-bound
/// token alone, which cannot read the other stack (Terraform reads the data source at plan
/// time and keeps its result in the plan). What is not declared stays refused.
#[test]
fn a_remote_state_data_source_of_another_stack_is_read_by_the_plan_phase_it_was_declared_for() {
    let t = team("dev/net");
    for stack in ["dev/app", "prod/net"] {
        t.s.ok(&t.s.admin, &["stack", "create", stack]);
    }
    let net_tf = |vpc: &str| {
        format!("resource \"terraform_data\" \"vpc\" {{\n  input = \"{vpc}\"\n}}\noutput \"vpc_id\" {{\n  value = terraform_data.vpc.output\n}}\n")
    };
    let net = Workspace::new(&t.s, "dev/net", &net_tf("vpc-1"));
    governed(&t, &net, "dev/net");
    let app_tf = |stack: &str| {
        format!(
            r#"
data "terraform_remote_state" "net" {{
  backend = "http"
  config = {{
    address = "{}"
  }}
}}
resource "terraform_data" "app" {{
  input = data.terraform_remote_state.net.outputs.vpc_id
}}
"#,
            t.s.state_url(stack)
        )
    };
    let app = Workspace::new(&t.s, "dev/app", &app_tf("dev/net"));
    let plan_app = |token: &str, extra: &[&str]| {
        let mut args = vec!["plan", ".", "--stack", "dev/app", "--format", "json"];
        args.extend(extra);
        cli_in(&t.s, token, &app.dir, &args, &[])
    };
    let no_runs = || {
        let runs = t.s.ok(
            &t.s.admin,
            &["runs", "--stack", "dev/app", "--format", "json"],
        );
        assert!(!runs.contains("run_"), "{runs}");
    };

    // Not declared: the plan phase is scoped to the planned stack (Terraform: "invalid auth").
    let out = plan_app(&t.agent, &[]);
    assert!(
        !out.status.success() && text(&out).contains("invalid auth"),
        "{}",
        text(&out)
    );
    no_runs();

    // Declared with --read-stack (no airlock.hcl): planned, approved, applied by CI.
    let out = plan_app(&t.agent, &["--read-stack", "dev/net"]);
    assert!(out.status.success(), "{}", text(&out));
    let run = serde_json::from_slice::<Value>(&out.stdout).unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        run_json(&t, &run)["run"]["plan_read_stacks"],
        serde_json::json!(["dev/net"])
    );
    let shown = t.s.ok(&t.s.admin, &["run", "show", &run]);
    assert!(
        shown.contains("plan phase could read the state of: dev/net"),
        "{shown}"
    );
    let minted = t.s.ok(
        &t.s.admin,
        &["audit", "--action", "token.plan_phase", "--format", "json"],
    );
    let minted: Value = serde_json::from_str(&minted).unwrap();
    assert!(
        minted["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["stack"] == "dev/app"
                && e["detail"]["read_stacks"] == serde_json::json!(["dev/net"])),
        "{minted}"
    );
    // Refusals on dev/net so far (the undeclared plan's read): the apply adds none, so
    // Terraform applied the saved plan without reading dev/net again.
    let net_denials = || {
        let v: Value = serde_json::from_str(&t.s.ok(
            &t.s.admin,
            &[
                "audit", "--stack", "dev/net", "--limit", "500", "--format", "json",
            ],
        ))
        .unwrap();
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["outcome"] == "denied")
            .count()
    };
    let denied_before = net_denials();
    assert!(
        denied_before >= 1,
        "the undeclared read was refused and audited"
    );
    approve_and_apply(&t, &app, &run);
    assert_eq!(
        data_output(&state(&t, "dev/app"), None, "app", None),
        "vpc-1"
    );
    assert_eq!(
        net_denials(),
        denied_before,
        "the apply did not try to read dev/net"
    );

    // Declared by airlock.hcl's depends_on: the next plan reads the new value without a flag.
    net.write_main(&net_tf("vpc-2"));
    governed(&t, &net, "dev/net");
    let root = app.dir.parent().unwrap();
    std::fs::write(
        root.join("airlock.hcl"),
        "stack \"dev/net\" {\n  dir = \"net\"\n}\nstack \"dev/app\" {\n  dir        = \"tf\"\n  depends_on = [\"dev/net\"]\n}\n",
    )
    .unwrap();
    let run = plan(&t, &app, &t.agent, "dev/app");
    assert_eq!(
        run_json(&t, &run)["run"]["plan_read_stacks"],
        serde_json::json!(["dev/net"])
    );
    approve_and_apply(&t, &app, &run);
    assert_eq!(
        data_output(&state(&t, "dev/app"), None, "app", None),
        "vpc-2"
    );

    // A read stack the planner may not read itself: refused, naming it; nothing is minted.
    let scoped = {
        let out = t.s.ok(
            &t.s.admin,
            &[
                "token", "create", "--name", "dev-bot", "--role", "agent", "--stack", "dev/*",
                "--format", "json",
            ],
        );
        serde_json::from_str::<Value>(&out).unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    app.write_main(&app_tf("prod/net"));
    let out = plan_app(&scoped, &["--read-stack", "prod/net"]);
    assert!(
        !out.status.success() && text(&out).contains("read stack prod/net refused"),
        "{}",
        text(&out)
    );
    // A glob is refused too.
    let out = plan_app(&scoped, &["--read-stack", "prod/*"]);
    assert!(
        !out.status.success() && text(&out).contains("pattern"),
        "{}",
        text(&out)
    );
    // The configuration reads a stack it did not declare (dev/net is declared): refused.
    let out = plan_app(&t.agent, &[]);
    assert!(
        !out.status.success() && text(&out).contains("invalid auth"),
        "{}",
        text(&out)
    );
    let runs: Value = serde_json::from_str(&t.s.ok(
        &t.s.admin,
        &["runs", "--stack", "dev/app", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{runs}");

    // depends_on also orders stacks that read nothing of each other: a dependency the planner
    // may not read is left out with a warning, and a plan that does not read it goes on.
    std::fs::write(
        root.join("airlock.hcl"),
        "stack \"prod/net\" {\n  dir = \"pnet\"\n}\nstack \"dev/app\" {\n  dir        = \"tf\"\n  depends_on = [\"prod/net\"]\n}\n",
    )
    .unwrap();
    app.write_main("resource \"terraform_data\" \"app\" {\n  input = \"standalone\"\n}\n");
    let out = plan_app(&scoped, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("warning: dev/app's depends_on (prod/net) cannot all be read"),
        "{}",
        text(&out)
    );
    let run = serde_json::from_slice::<Value>(&out.stdout).unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(run_json(&t, &run)["run"]["plan_read_stacks"].is_null());
}

/// A monorepo: `airlock.hcl` at the repository root, the stack in a subdirectory, its modules
/// shared from outside it (`../modules/...`, one calling another). A change to a shared module
/// is a change of the stack; an approved plan is not applied after the shared module changed.
#[test]
fn a_monorepo_stack_with_shared_modules_outside_its_directory() {
    let t = team("dev/mono");
    let ws = Workspace::new(
        &t.s,
        "dev/mono",
        "module \"label\" {\n  source = \"../modules/label\"\n  name   = \"api\"\n}\nresource \"terraform_data\" \"svc\" {\n  input = module.label.id\n}\noutput \"id\" {\n  value = module.label.id\n}\n",
    );
    let root = ws.dir.parent().unwrap().to_path_buf();
    std::fs::write(
        root.join("airlock.hcl"),
        "stack \"dev/mono\" {\n  dir = \"tf\"\n}\n",
    )
    .unwrap();
    let modules = root.join("modules");
    std::fs::create_dir_all(modules.join("label")).unwrap();
    std::fs::create_dir_all(modules.join("util")).unwrap();
    std::fs::write(
        modules.join("label/main.tf"),
        "variable \"name\" {}\nmodule \"fmt\" {\n  source = \"../util\"\n  parts  = [\"acme\", var.name]\n}\nresource \"terraform_data\" \"l\" {\n  input = module.fmt.joined\n}\noutput \"id\" {\n  value = terraform_data.l.output\n}\n",
    )
    .unwrap();
    let util = |sep: &str| {
        std::fs::write(
            modules.join("util/main.tf"),
            format!("variable \"parts\" {{}}\noutput \"joined\" {{\n  value = join(\"{sep}\", var.parts)\n}}\n"),
        )
        .unwrap()
    };
    util("-");
    governed(&t, &ws, "dev/mono");
    let s = state(&t, "dev/mono");
    assert_eq!(s["outputs"]["id"]["value"], "acme-api");

    util("_");
    let run = plan(&t, &ws, &t.agent, "dev/mono");
    let inputs = run_json(&t, &run)["run"]["inputs"].to_string();
    assert!(inputs.contains("modules/util/main.tf"), "{inputs}");
    approve(&t, &run);
    util(".");
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(
        !out.status.success() && text(&out).contains("modules/util/main.tf"),
        "applied with another shared module: {}",
        text(&out)
    );
    util("_");
    approve_and_apply_approved(&t, &ws, &run);
    let s = state(&t, "dev/mono");
    assert_eq!(s["outputs"]["id"]["value"], "acme_api");
    assert_eq!(data_output(&s, None, "svc", None), "acme_api");
}

/// A replacement whose destroy fails leaves a deposed object in the state (the run fails); the
/// next run destroys it. (On the test cloud: Terraform skips destroy-time provisioners under
/// `create_before_destroy`, so `terraform_data` cannot fail a destroy.)
#[test]
fn a_failed_destroy_leaves_a_deposed_object_that_the_next_run_removes() {
    let cloud = TestCloud::new();
    let t = team("dev/deposed");
    let tf = |ami: &str| {
        format!(
            "resource \"aws_instance\" \"web\" {{\n  ami                     = \"{ami}\"\n  instance_type           = \"t3.micro\"\n  disable_api_termination = true\n  lifecycle {{\n    create_before_destroy = true\n  }}\n}}\n"
        )
    };
    let ws = cloud.workspace(&t.s, "dev/deposed", &tf("ami-1"));
    let run = plan_on(&cloud, &t, &ws, &t.agent, "dev/deposed");
    approve(&t, &run);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    let first = cloud.ids("aws_instance");

    // A new image: the new instance is created, the old one refuses termination.
    ws.write_main(&format!("{}{}", crate::testcloud::PROVIDER_TF, tf("ami-2")));
    let run = plan_on(&cloud, &t, &ws, &t.agent, "dev/deposed");
    approve(&t, &run);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(run_json(&t, &run)["run"]["status"], "failed");
    let s = state(&t, "dev/deposed");
    let instances = s["resources"][0]["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{s}");
    assert!(instances.iter().any(|i| i["deposed"].is_string()), "{s}");

    // Someone lifts the protection in the console; the next run destroys the deposed object.
    cloud.set(
        "aws_instance",
        &first[0],
        "disable_api_termination",
        "false",
    );
    let run = plan_on(&cloud, &t, &ws, &t.agent, "dev/deposed");
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["destroys"].as_array().unwrap().len(), 1, "{v}");
    approve(&t, &run);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    let s = state(&t, "dev/deposed");
    let instances = s["resources"][0]["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{s}");
    assert!(instances[0]["deposed"].is_null(), "{s}");
    assert_eq!(cloud.ids("aws_instance").len(), 1);
}

/// Moves into and out of modules (with for_each keys), and a whole module forgotten.
#[test]
fn moves_into_modules_and_a_forgotten_module() {
    let t = team("dev/refactor");
    let v1 = r#"
resource "terraform_data" "web" {
  for_each = toset(["blue", "green"])
  input    = each.key
}
module "legacy" {
  source = "./legacy"
}
"#;
    let ws = Workspace::new(&t.s, "dev/refactor", v1);
    std::fs::create_dir_all(ws.path("legacy")).unwrap();
    std::fs::write(
        ws.path("legacy/main.tf"),
        "resource \"terraform_data\" \"old\" {\n  count = 2\n  input = count.index\n}\n",
    )
    .unwrap();
    std::fs::create_dir_all(ws.path("web")).unwrap();
    std::fs::write(ws.path("web/main.tf"), "variable \"colors\" {}\nresource \"terraform_data\" \"server\" {\n  for_each = toset(var.colors)\n  input    = each.key\n}\n").unwrap();
    governed(&t, &ws, "dev/refactor");

    let v2 = r#"
module "web" {
  source = "./web"
  colors = ["blue", "green"]
}
moved {
  from = terraform_data.web["blue"]
  to   = module.web.terraform_data.server["blue"]
}
moved {
  from = terraform_data.web["green"]
  to   = module.web.terraform_data.server["green"]
}
removed {
  from = module.legacy
  lifecycle {
    destroy = false
  }
}
"#;
    ws.write_main(v2);
    std::fs::remove_dir_all(ws.path("legacy")).unwrap();
    let run = plan(&t, &ws, &t.agent, "dev/refactor");
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["moved_from"].as_array().unwrap().len(), 2, "{v}");
    approve_and_apply(&t, &ws, &run);
    assert_eq!(
        addresses(&state(&t, "dev/refactor")),
        [
            r#"module.web.terraform_data.server["blue"]"#,
            r#"module.web.terraform_data.server["green"]"#
        ]
    );
}

/// Refactoring protected cloud resources: a database renamed with `moved` and a bucket moved
/// into a module are moves, not destroys, and go through. (The server used to call each moved
/// object "gone or replaced outside Terraform" and ask to confirm its destruction.)
#[test]
fn moving_protected_cloud_resources() {
    let cloud = TestCloud::new();
    let t = team("dev/cloudmv");
    let v1 = r#"
resource "aws_db_instance" "db" {
  identifier     = "orders"
  engine         = "postgres"
  instance_class = "db.t3.micro"
}
resource "aws_s3_bucket" "b" {
  bucket = "orders-assets"
}
"#;
    let ws = cloud.workspace(&t.s, "dev/cloudmv", v1);
    let run = plan_on(&cloud, &t, &ws, &t.agent, "dev/cloudmv");
    approve(&t, &run);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));

    std::fs::create_dir_all(ws.path("storage")).unwrap();
    std::fs::write(
        ws.path("storage/main.tf"),
        "resource \"aws_s3_bucket\" \"b\" {\n  bucket = \"orders-assets\"\n}\n",
    )
    .unwrap();
    let v2 = r#"
resource "aws_db_instance" "orders" {
  identifier     = "orders"
  engine         = "postgres"
  instance_class = "db.t3.micro"
}
moved {
  from = aws_db_instance.db
  to   = aws_db_instance.orders
}
module "storage" {
  source = "./storage"
}
moved {
  from = aws_s3_bucket.b
  to   = module.storage.aws_s3_bucket.b
}
"#;
    ws.write_main(&format!("{}{v2}", crate::testcloud::PROVIDER_TF));
    let run = plan_on(&cloud, &t, &ws, &t.agent, "dev/cloudmv");
    let v = run_json(&t, &run);
    // Moving a protected instance is for review (the server protects it at its old address),
    // but nothing is destroyed and nothing changed outside Terraform.
    assert_eq!(v["run"]["destroys"], serde_json::json!([]), "{v}");
    let rules: Vec<&str> = v["run"]["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    assert!(!rules.contains(&"changed-outside-terraform"), "{v}");
    approve(&t, &run);
    let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        addresses(&state(&t, "dev/cloudmv")),
        ["aws_db_instance.orders", "module.storage.aws_s3_bucket.b"]
    );
    assert!(cloud.get("aws_db_instance", "orders").is_some());
}

/// Instance keys Terraform quotes and escapes (newline, tab, backslash, template sequences,
/// the empty string, a digit string), names with dashes and non-ASCII letters, and a second
/// change that drops some of them.
#[test]
fn hostile_instance_keys_and_names() {
    let t = team("dev/keys");
    let keys = r#"["line\nbreak", "tab\there", "back\\slash", "$${not}", "%%{nor}", "", "0", "a.b", "🚀"]"#;
    let tf = |keys: &str| {
        format!(
            r#"
module "netz-ü" {{
  source = "./m"
  keys   = {keys}
}}
resource "terraform_data" "with-dash" {{
  for_each = toset({keys})
  input    = each.key
}}
output "größe" {{
  value = length(module.netz-ü.keys)
}}
"#
        )
    };
    let ws = Workspace::new(&t.s, "dev/keys", &tf(keys));
    std::fs::create_dir_all(ws.path("m")).unwrap();
    std::fs::write(
        ws.path("m/main.tf"),
        "variable \"keys\" {}\nresource \"terraform_data\" \"k\" {\n  for_each = toset(var.keys)\n  input    = each.key\n}\noutput \"keys\" {\n  value = keys(terraform_data.k)\n}\n",
    )
    .unwrap();
    governed(&t, &ws, "dev/keys");
    let s = state(&t, "dev/keys");
    assert_eq!(s["outputs"]["größe"]["value"], 9);
    let addrs = addresses(&s);
    assert_eq!(addrs.len(), 18, "{addrs:?}");
    assert!(
        addrs.contains(&r#"module.netz-ü.terraform_data.k["line\nbreak"]"#.to_string()),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&r#"terraform_data.with-dash["0"]"#.to_string()),
        "{addrs:?}"
    );

    let fewer = r#"["tab\there", "", "0"]"#;
    ws.write_main(&tf(fewer));
    let run = plan(&t, &ws, &t.agent, "dev/keys");
    assert_eq!(
        run_json(&t, &run)["run"]["destroys"]
            .as_array()
            .unwrap()
            .len(),
        12
    );
    approve_and_apply(&t, &ws, &run);
    let s = state(&t, "dev/keys");
    assert_eq!(addresses(&s).len(), 6);
    assert_eq!(s["outputs"]["größe"]["value"], 3);
}

/// A stack whose configuration is only outputs (no resources): its first run creates state
/// with outputs alone; the next changes one.
#[test]
fn a_stack_of_outputs_only() {
    let t = team("dev/consts");
    let ws = Workspace::new(
        &t.s,
        "dev/consts",
        "output \"region\" {\n  value = \"eu-west-1\"\n}\noutput \"cidrs\" {\n  value = { a = \"10.0.0.0/16\" }\n}\n",
    );
    governed(&t, &ws, "dev/consts");
    let s = state(&t, "dev/consts");
    assert_eq!(s["outputs"]["region"]["value"], "eu-west-1");
    ws.write_main("output \"region\" {\n  value = \"eu-central-1\"\n}\n");
    governed(&t, &ws, "dev/consts");
    let s = state(&t, "dev/consts");
    assert_eq!(s["outputs"]["region"]["value"], "eu-central-1");
    assert!(s["outputs"].get("cidrs").is_none(), "{s}");
}

/// An ephemeral input variable (Terraform 1.10+) is not stored in the plan: the plan phase and
/// the apply phase each take it from their own environment (`TF_VAR_...`), as CI sets it.
#[test]
fn an_ephemeral_variable_is_given_to_plan_and_apply() {
    let t = team("dev/ephemeral");
    let witness = t.s.dir.path().join("applied-with");
    let ws = Workspace::new(
        &t.s,
        "dev/ephemeral",
        &format!(
            "variable \"deploy_key\" {{\n  type      = string\n  ephemeral = true\n}}\nresource \"terraform_data\" \"x\" {{\n  input = \"a\"\n  provisioner \"local-exec\" {{\n    command     = \"printf %s \\\"$KEY\\\" > {}\"\n    environment = {{ KEY = var.deploy_key }}\n  }}\n}}\n",
            witness.display()
        ),
    );
    let out = cli_in(
        &t.s,
        &t.agent,
        &ws.dir,
        &["plan", ".", "--stack", "dev/ephemeral", "--format", "json"],
        &[("TF_VAR_deploy_key", "plan-time")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = v["run"]["id"].as_str().unwrap().to_owned();
    let json =
        t.s.ok(&t.s.admin, &["run", "show", &run, "--format", "json"]);
    assert!(!json.contains("plan-time"), "{json}");
    approve(&t, &run);
    let out = cli_in(
        &t.s,
        &t.ci,
        &ws.dir,
        &["apply", &run, "--dir", "."],
        &[("TF_VAR_deploy_key", "apply-time")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&witness).unwrap(), "apply-time");
}

/// The pull-request flow (`airlock ci plan` on the pull request, approval, `airlock ci apply`
/// after merge, with the forge stand-in as GitHub) for a stack with a shared module outside its
/// directory, a tfvars file and outputs; then pull requests that change only the tfvars file and
/// only the shared module, each found by change detection, reviewed and applied.
#[test]
fn pull_requests_changing_tfvars_and_a_shared_module_are_reviewed_and_applied() {
    use crate::forge::ForgeStandIn;
    use crate::git_repo::{ci_env, git, json_of, write, Origin, FORGE_TOKEN};
    let forge = ForgeStandIn::start(FORGE_TOKEN);
    let events = tempfile::tempdir().unwrap();
    let t = team("app");
    t.s.ok(&t.s.admin, &["stack", "create", "net"]);
    let origin = Origin::new();
    let dev = &origin.work;
    let app_tf = "variable \"env\" {}\nmodule \"label\" {\n  source = \"../../modules/label\"\n  name   = var.env\n}\nresource \"terraform_data\" \"svc\" {\n  input = module.label.id\n}\noutput \"id\" {\n  value = module.label.id\n}\noutput \"token\" {\n  value     = \"t-${var.env}\"\n  sensitive = true\n}\n";
    let label = |sep: &str| {
        format!(
            "variable \"name\" {{}}\noutput \"id\" {{\n  value = \"acme{sep}${{var.name}}\"\n}}\n"
        )
    };
    let mut n = 0;
    // One pull request: `files` changed on a branch, `ci plan`, approval, merge, `ci apply`.
    let mut review_and_merge = |files: &[(&str, String)]| {
        n += 1;
        let base = git(dev, &["rev-parse", "HEAD"]);
        git(dev, &["checkout", "-q", "-b", &format!("pr{n}")]);
        for (path, content) in files {
            write(dev, path, content);
        }
        git(dev, &["add", "-A"]);
        git(dev, &["commit", "-q", "-m", &format!("change {n}")]);
        git(dev, &["push", "-q", "origin", &format!("pr{n}")]);
        let head = git(dev, &["rev-parse", "HEAD"]);
        let pr = origin.checkout(&format!("ci-pr{n}"), &head);
        let env = forge.github_pr_env(events.path(), "acme/infra", n, &head, &base);
        let out = ci_env(&t, &t.agent, &pr, &["ci", "plan", "--format", "json"], &env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v = json_of(&out);
        let stacks = v["stacks"].as_array().unwrap();
        assert_eq!(stacks.len(), 1, "only app is affected: {v:#}");
        assert_eq!(stacks[0]["stack"], "app", "{v:#}");
        let run = stacks[0]["run"].as_str().unwrap().to_owned();
        approve(&t, &run);
        git(dev, &["checkout", "-q", "main"]);
        git(
            dev,
            &[
                "merge",
                "-q",
                "--no-ff",
                "-m",
                &format!("Merge pr{n}"),
                &format!("pr{n}"),
            ],
        );
        git(dev, &["push", "-q", "origin", "main"]);
        let merge = git(dev, &["rev-parse", "HEAD"]);
        let main = origin.checkout(&format!("ci-main{n}"), &merge);
        let env = forge.github_push_env(events.path(), "acme/infra", "main", "main", &base, &merge);
        let out = ci_env(&t, &t.ci, &main, &["ci", "apply", "--format", "json"], &env);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v = json_of(&out);
        assert_eq!(v["stacks"][0]["run"], run.as_str(), "{v:#}");
        assert_eq!(run_json(&t, &run)["run"]["status"], "applied");
    };
    review_and_merge(&[
        ("stacks/app/main.tf", app_tf.to_owned()),
        ("stacks/app/terraform.tfvars", "env = \"dev\"\n".to_owned()),
        ("modules/label/main.tf", label("-")),
    ]);
    let s = state(&t, "app");
    assert_eq!(s["outputs"]["id"]["value"], "acme-dev");
    assert_eq!(s["outputs"]["token"]["value"], "t-dev");
    review_and_merge(&[(
        "stacks/app/terraform.tfvars",
        "env = \"stage\"\n".to_owned(),
    )]);
    assert_eq!(state(&t, "app")["outputs"]["id"]["value"], "acme-stage");
    review_and_merge(&[("modules/label/main.tf", label("_"))]);
    let s = state(&t, "app");
    assert_eq!(s["outputs"]["id"]["value"], "acme_stage");
    assert_eq!(data_output(&s, None, "svc", None), "acme_stage");
    forge.assert_no_violations();
}

/// JSON configuration (`*.tf.json`, as generators write it) with `terraform.tfvars.json` and an
/// override file, planned and applied from the repository root (`airlock plan DIR`, `airlock
/// apply RUN --dir DIR`), with a file Terraform ignores (a dot file) beside them.
#[test]
fn json_configuration_override_files_and_planning_from_the_repository_root() {
    let t = team("dev/json");
    let ws = Workspace::new(&t.s, "dev/json", "");
    std::fs::remove_file(ws.path("main.tf")).unwrap();
    let root = ws.dir.parent().unwrap().to_path_buf();
    std::fs::write(
        root.join("airlock.hcl"),
        "stack \"dev/json\" {\n  dir = \"tf\"\n}\n",
    )
    .unwrap();
    let main = |n: u32| {
        serde_json::json!({
            "variable": {"env": {"type": "string"}},
            "resource": {"terraform_data": {"gen": {"count": n, "input": "${var.env}-${count.index}"}}},
            "output": {"first": {"value": "${terraform_data.gen[0].output}"}}
        })
        .to_string()
    };
    std::fs::write(ws.path("main.tf.json"), main(2)).unwrap();
    std::fs::write(ws.path("terraform.tfvars.json"), r#"{"env": "json"}"#).unwrap();
    std::fs::write(
        ws.path("env_override.tf"),
        "variable \"env\" {\n  default = \"ignored\"\n}\n",
    )
    .unwrap();
    std::fs::write(
        ws.path(".disabled.tf"),
        "this is not HCL and Terraform never reads it\n",
    )
    .unwrap();
    let plan_root = |t: &Team| -> String {
        let out = cli_in(
            &t.s,
            &t.agent,
            &root,
            &["plan", "tf", "--format", "json"],
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["run"]["id"].as_str().unwrap().to_owned()
    };
    let apply_root = |t: &Team, run: &str| {
        approve(t, run);
        let out = cli_in(&t.s, &t.ci, &root, &["apply", run, "--dir", "tf"], &[]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(run_json(t, run)["run"]["status"], "applied");
    };
    let run = plan_root(&t);
    apply_root(&t, &run);
    let s = state(&t, "dev/json");
    assert_eq!(s["outputs"]["first"]["value"], "json-0");
    assert_eq!(addresses(&s).len(), 2);
    std::fs::write(ws.path("main.tf.json"), main(3)).unwrap();
    let run = plan_root(&t);
    apply_root(&t, &run);
    assert_eq!(addresses(&state(&t, "dev/json")).len(), 3);
}

/// A create whose provisioner fails leaves a tainted instance (the run fails); the next run
/// replaces it.
#[test]
fn a_failed_provisioner_taints_and_the_next_run_replaces() {
    let t = team("dev/taint");
    let tf = |cmd: &str| {
        format!("resource \"terraform_data\" \"boot\" {{\n  input = \"b\"\n  provisioner \"local-exec\" {{\n    command = \"{cmd}\"\n  }}\n}}\n")
    };
    let ws = Workspace::new(&t.s, "dev/taint", &tf("exit 3"));
    let run = plan(&t, &ws, &t.agent, "dev/taint");
    approve(&t, &run);
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(run_json(&t, &run)["run"]["status"], "failed");
    let s = state(&t, "dev/taint");
    assert_eq!(
        s["resources"][0]["instances"][0]["status"], "tainted",
        "{s}"
    );

    ws.write_main(&tf("true"));
    let run = plan(&t, &ws, &t.agent, "dev/taint");
    let v = run_json(&t, &run);
    assert_eq!(
        v["run"]["destroys"],
        serde_json::json!(["terraform_data.boot"]),
        "{v}"
    );
    approve_and_apply(&t, &ws, &run);
    let s = state(&t, "dev/taint");
    assert!(s["resources"][0]["instances"][0]["status"].is_null(), "{s}");
}

/// Splitting a stack: a database forgotten by one stack (`removed`, `destroy = false`) and
/// imported by another (`import`), both governed; the object itself is untouched.
#[test]
fn a_protected_database_handed_from_one_stack_to_another() {
    let cloud = TestCloud::new();
    let t = team("dev/old");
    t.s.ok(&t.s.admin, &["stack", "create", "dev/new"]);
    let db = "resource \"aws_db_instance\" \"db\" {\n  identifier          = \"billing\"\n  engine              = \"postgres\"\n  instance_class      = \"db.t3.micro\"\n  deletion_protection = true\n}\n";
    let old = cloud.workspace(
        &t.s,
        "dev/old",
        &format!("{db}resource \"aws_s3_bucket\" \"logs\" {{\n  bucket = \"old-logs\"\n}}\n"),
    );
    let governed_on = |ws: &Workspace, stack: &str| -> Value {
        let run = plan_on(&cloud, &t, ws, &t.agent, stack);
        let v = run_json(&t, &run);
        approve(&t, &run);
        let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(run_json(&t, &run)["run"]["status"], "applied");
        v
    };
    governed_on(&old, "dev/old");
    let created = cloud.get("aws_db_instance", "billing").unwrap();

    let forget = "removed {\n  from = aws_db_instance.db\n  lifecycle {\n    destroy = false\n  }\n}\nresource \"aws_s3_bucket\" \"logs\" {\n  bucket = \"old-logs\"\n}\n";
    old.write_main(&format!("{}{forget}", crate::testcloud::PROVIDER_TF));
    let v = governed_on(&old, "dev/old");
    assert_eq!(v["run"]["decision"], "review", "{v}");
    assert_eq!(addresses(&state(&t, "dev/old")), ["aws_s3_bucket.logs"]);

    let new = cloud.workspace(
        &t.s,
        "dev/new",
        &format!("import {{\n  to = aws_db_instance.db\n  id = \"billing\"\n}}\n{db}"),
    );
    governed_on(&new, "dev/new");
    assert_eq!(addresses(&state(&t, "dev/new")), ["aws_db_instance.db"]);
    assert_eq!(cloud.get("aws_db_instance", "billing").unwrap(), created);
}

/// Marking an existing output sensitive (same value) is a change Terraform applies (the state
/// records the output as sensitive from then on); the run must not be `no_changes`.
#[test]
fn marking_an_output_sensitive_is_applied() {
    let t = team("dev/mark");
    let ws = Workspace::new(
        &t.s,
        "dev/mark",
        "output \"dsn\" {\n  value = \"postgres://db\"\n}\n",
    );
    governed(&t, &ws, "dev/mark");
    assert_eq!(
        state(&t, "dev/mark")["outputs"]["dsn"]["sensitive"],
        serde_json::Value::Null
    );
    ws.write_main("output \"dsn\" {\n  value     = \"postgres://db\"\n  sensitive = true\n}\n");
    governed(&t, &ws, "dev/mark");
    assert_eq!(state(&t, "dev/mark")["outputs"]["dsn"]["sensitive"], true);
}

/// Provider aliases: a module given an aliased provider, and a protected database moved from
/// the default provider configuration to an aliased one (same cloud: nothing is replaced, but
/// the state records the new provider address). The finding used to say the database was "gone
/// or replaced outside Terraform".
#[test]
fn provider_aliases_and_a_protected_resource_changing_provider_configuration() {
    let cloud = TestCloud::new();
    let t = team("dev/alias");
    let v1 = r#"
provider "aws" {
  alias = "eu"
}
resource "aws_db_instance" "db" {
  identifier     = "ledger"
  engine         = "postgres"
  instance_class = "db.t3.micro"
}
module "store" {
  source    = "./store"
  providers = { aws = aws.eu }
}
"#;
    let ws = cloud.workspace(&t.s, "dev/alias", v1);
    std::fs::create_dir_all(ws.path("store")).unwrap();
    std::fs::write(
        ws.path("store/main.tf"),
        "terraform {\n  required_providers {\n    aws = { source = \"hashicorp/aws\" }\n  }\n}\nresource \"aws_s3_bucket\" \"b\" {\n  bucket = \"ledger-exports\"\n}\n",
    )
    .unwrap();
    let governed_on = |stack: &str| -> Value {
        let run = plan_on(&cloud, &t, &ws, &t.agent, stack);
        let v = run_json(&t, &run);
        approve(&t, &run);
        let out = apply_on(&cloud, &t, &ws.dir, &t.ci, &run);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(run_json(&t, &run)["run"]["status"], "applied");
        v
    };
    governed_on("dev/alias");
    let s = state(&t, "dev/alias");
    assert_eq!(
        addresses(&s),
        ["aws_db_instance.db", "module.store.aws_s3_bucket.b"]
    );

    let v2 = v1.replace(
        "  instance_class = \"db.t3.micro\"\n",
        "  instance_class = \"db.t3.micro\"\n  provider       = aws.eu\n",
    );
    ws.write_main(&format!("{}{v2}", crate::testcloud::PROVIDER_TF));
    // The server cannot tell whether the object under the other provider configuration is the
    // same one (another region or account may hold the same id): the stored object leaving is
    // confirmed like a destroy, and the finding says why.
    let v = governed_on("dev/alias");
    assert_eq!(
        v["run"]["destroys"],
        serde_json::json!(["aws_db_instance.db"]),
        "{v}"
    );
    let finding = v["run"]["report"]["findings"][0]["message"]
        .as_str()
        .unwrap();
    assert!(finding.contains("changes provider configuration, from provider[\"registry.terraform.io/hashicorp/aws\"] to provider[\"registry.terraform.io/hashicorp/aws\"].eu"), "{finding}");
    let s = state(&t, "dev/alias");
    let db = s["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "db")
        .unwrap();
    assert!(db["provider"].as_str().unwrap().ends_with(".eu"), "{db}");
    assert!(cloud.get("aws_db_instance", "ledger").is_some());
}

/// A sensitive root variable (a provider credential given as `TF_VAR_...` by the person who
/// plans) is in the plan files Terraform writes: `plan.tfplan` and the `variables` of `terraform
/// show -json`, in clear. It never reaches the state, so a reader or an agent, who may read the
/// stack's state and runs, must not be able to download the run's plan files and take it.
#[test]
fn attack_an_agent_cannot_take_a_sensitive_variable_from_a_runs_plan_files() {
    let t = team("dev/creds");
    let ws = Workspace::new(
        &t.s,
        "dev/creds",
        "variable \"vault_token\" {\n  type      = string\n  sensitive = true\n}\nresource \"terraform_data\" \"x\" {\n  input = length(var.vault_token) > 0\n}\n",
    );
    let secret = "hvs.approvers-own-vault-token";
    let out = cli_in(
        &t.s,
        &t.approver,
        &ws.dir,
        &["plan", ".", "--stack", "dev/creds", "--format", "json"],
        &[("TF_VAR_vault_token", secret)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let run = serde_json::from_slice::<Value>(&out.stdout).unwrap()["run"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reader = t.s.token("auditor", "reader");
    for token in [&t.agent, &reader] {
        for name in ["plan.tfplan", "plan.json"] {
            let (code, body) = raw(
                "GET",
                &format!("{}/api/v1/runs/{run}/artifacts/{name}", t.s.url),
                token,
                b"",
            );
            assert!(!body.contains(secret), "{name} gives the secret away");
            assert_eq!(code, 403, "{name} is served to a reader or agent");
        }
        // Nor spelled otherwise, to reach the route of the other artifacts.
        let (code, body) = raw(
            "GET",
            &format!("{}/api/v1/runs/{run}/artifacts/plan%2Ejson", t.s.url),
            token,
            b"",
        );
        assert!(!body.contains(secret) && code == 404, "{code} {body}");
        let shown = t.s.ok(token, &["run", "show", &run, "--format", "json"]);
        assert!(!shown.contains(secret), "{shown}");
    }
    // Those who review and apply still have the plan: an approver's view, CI's apply.
    let (code, _) = raw(
        "GET",
        &format!("{}/api/v1/runs/{run}/artifacts/plan.json", t.s.url),
        &t.approver2,
        b"",
    );
    assert_eq!(code, 200);
    t.s.ok(&t.approver2, &["approve", &run]);
    let out = apply(&t, &ws, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!state(&t, "dev/creds").to_string().contains(secret));
}

/// A NUL character in an instance key and in an output value (Terraform accepts both; a string
/// PostgreSQL's text and jsonb cannot hold) goes through the governed flow on both engines.
#[test]
fn a_nul_character_in_a_key_and_an_output_on_sqlite_and_postgresql() {
    let db = TestDatabase::new("realworld_nul");
    for s in [
        TestServer::start(),
        TestServer::start_on(&Backing::Url(db.url.clone()), None, &[], &[]),
    ] {
        let t = team_on(s, "dev/nul");
        let tf = |keys: &str| {
            format!("resource \"terraform_data\" \"k\" {{\n  for_each = toset({keys})\n  input    = each.key\n}}\noutput \"o\" {{\n  value = \"x\\u0000y\"\n}}\n")
        };
        let ws = Workspace::new(&t.s, "dev/nul", &tf(r#"["a\u0000b", "c"]"#));
        governed(&t, &ws, "dev/nul");
        let s = state(&t, "dev/nul");
        assert_eq!(s["outputs"]["o"]["value"], "x\u{0}y");
        assert!(
            addresses(&s).contains(&"terraform_data.k[\"a\\u0000b\"]".to_string()),
            "{:?}",
            addresses(&s)
        );
        ws.write_main(&tf(r#"["c"]"#));
        governed(&t, &ws, "dev/nul");
        assert_eq!(
            addresses(&state(&t, "dev/nul")),
            ["terraform_data.k[\"c\"]"]
        );
        let audit = t.s.ok(&t.s.admin, &["audit", "--verify"]);
        assert!(!audit.is_empty());
    }
}

/// Module instances: `for_each` and `count` on module calls (`module.env["eu west"]...`,
/// `module.shard[1]...`), a whole module instance moved to another key, one removed.
#[test]
fn module_for_each_count_and_moves_between_module_instances() {
    let t = team("dev/modinst");
    let tf = |envs: &str, shards: u32, moved: &str| {
        format!(
            "module \"env\" {{\n  for_each = toset({envs})\n  source   = \"./m\"\n  name     = each.key\n}}\nmodule \"shard\" {{\n  count  = {shards}\n  source = \"./m\"\n  name   = \"shard-${{count.index}}\"\n}}\n{moved}output \"names\" {{\n  value = {{ for k, m in module.env : k => m.name }}\n}}\n"
        )
    };
    let ws = Workspace::new(
        &t.s,
        "dev/modinst",
        &tf(r#"["eu west", "us\"east", "ap[1]"]"#, 2, ""),
    );
    std::fs::create_dir_all(ws.path("m")).unwrap();
    std::fs::write(
        ws.path("m/main.tf"),
        "variable \"name\" {}\nresource \"terraform_data\" \"r\" {\n  for_each = toset([\"a\", \"b c\"])\n  input    = \"${var.name}/${each.key}\"\n}\noutput \"name\" {\n  value = var.name\n}\n",
    )
    .unwrap();
    governed(&t, &ws, "dev/modinst");
    let addrs = addresses(&state(&t, "dev/modinst"));
    assert_eq!(addrs.len(), 10, "{addrs:?}");
    assert!(
        addrs.contains(&r#"module.env["us\"east"].terraform_data.r["b c"]"#.to_string()),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&r#"module.shard[1].terraform_data.r["a"]"#.to_string()),
        "{addrs:?}"
    );

    // "eu west" renamed "eu-west" by a moved block; one shard less (destroyed).
    let moved = "moved {\n  from = module.env[\"eu west\"]\n  to   = module.env[\"eu-west\"]\n}\n";
    ws.write_main(&tf(r#"["eu-west", "us\"east", "ap[1]"]"#, 1, moved));
    let run = plan(&t, &ws, &t.agent, "dev/modinst");
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["moved_from"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["run"]["destroys"].as_array().unwrap().len(), 2, "{v}");
    approve_and_apply(&t, &ws, &run);
    let s = state(&t, "dev/modinst");
    let addrs = addresses(&s);
    assert_eq!(addrs.len(), 8, "{addrs:?}");
    assert!(
        addrs.contains(&r#"module.env["eu-west"].terraform_data.r["b c"]"#.to_string()),
        "{addrs:?}"
    );
    assert_eq!(s["outputs"]["names"]["value"]["eu-west"], "eu-west", "{s}");
}

/// A repository that does not commit `.terraform.lock.hcl`: the plan's `terraform init` writes
/// one into the planner's checkout (an input of the run); CI's fresh checkout has none. The
/// apply refuses; "plan again" alone would loop (CI's plan writes one again), so the message
/// says to commit the lock file. Once it is committed, the run applies.
#[test]
fn a_lock_file_that_is_not_committed() {
    let cloud = TestCloud::new();
    let t = team("dev/nolock");
    let tf = "resource \"aws_s3_bucket\" \"b\" {\n  bucket = \"nolock\"\n}\n";
    let ws = cloud.workspace(&t.s, "dev/nolock", tf);
    let run = plan_on(&cloud, &t, &ws, &t.agent, "dev/nolock");
    assert!(ws.path(".terraform.lock.hcl").is_file());
    approve(&t, &run);
    // CI's checkout: the committed files only.
    let ci_dir = tempfile::tempdir().unwrap();
    for f in ["main.tf", "backend.tf"] {
        std::fs::copy(ws.path(f), ci_dir.path().join(f)).unwrap();
    }
    let out = apply_on(&cloud, &t, ci_dir.path(), &t.ci, &run);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(".terraform.lock.hcl (removed)")
            && text(&out).contains("commit the lock file"),
        "{}",
        text(&out)
    );
    assert_eq!(run_json(&t, &run)["run"]["status"], "approved");
    std::fs::copy(
        ws.path(".terraform.lock.hcl"),
        ci_dir.path().join(".terraform.lock.hcl"),
    )
    .unwrap();
    let out = apply_on(&cloud, &t, ci_dir.path(), &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert!(cloud.get("aws_s3_bucket", "nolock").is_some());
}

/// The apply's run-bound token reads no other stack. A `terraform_remote_state` whose address is
/// unknown when planning is read by Terraform only at apply time, so that apply is refused the
/// read ("invalid auth"), fails, and the run says so; the other stack is untouched. (Why the
/// apply token does not inherit the run's read stacks: ARCHITECTURE.md, *Read stacks*.)
#[test]
fn a_remote_state_read_deferred_to_the_apply_is_refused_to_the_run_token() {
    let t = team("dev/net");
    t.s.ok(&t.s.admin, &["stack", "create", "dev/app"]);
    let net = Workspace::new(
        &t.s,
        "dev/net",
        "resource \"terraform_data\" \"vpc\" {\n  input = \"vpc-1\"\n}\noutput \"vpc_id\" {\n  value = terraform_data.vpc.output\n}\n",
    );
    governed(&t, &net, "dev/net");
    let net_history = t.s.ok(&t.s.admin, &["state", "history", "dev/net"]);
    let app_tf = format!(
        r#"
resource "terraform_data" "suffix" {{
  input = "net"
}}
data "terraform_remote_state" "net" {{
  backend = "http"
  config = {{
    address = "{}/state/dev/${{terraform_data.suffix.output}}"
  }}
}}
resource "terraform_data" "app" {{
  input = data.terraform_remote_state.net.outputs.vpc_id
}}
"#,
        t.s.url
    );
    let app = Workspace::new(&t.s, "dev/app", &app_tf);
    let run = plan_reading_net(&t, &app);
    approve(&t, &run);
    let out = apply(&t, &app, &t.ci, &run);
    assert!(
        !out.status.success() && text(&out).contains("invalid auth"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("data.terraform_remote_state.net: Reading..."),
        "refused at the deferred read: {}",
        text(&out)
    );
    assert_eq!(run_json(&t, &run)["run"]["status"], "failed");
    assert_eq!(
        t.s.ok(&t.s.admin, &["state", "history", "dev/net"]),
        net_history
    );
}
