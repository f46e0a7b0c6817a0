//! The incident airlock exists for, replayed on the local test cloud with real resource types
//! and real provider behaviour: a production VPC, subnet, cluster, load balancer, bastion,
//! database (with automated backups) and bucket; a new machine with no local state; an agent
//! token; an old state archive pushed over the current one; `terraform destroy`; a "cleanup"
//! plan that deletes the database hidden among benign changes. Every destructive path is
//! stopped, the stack's history stays intact and every cloud object is still there. Separately,
//! a properly approved run that deletes the database with `delete_automated_backups` at its
//! default: the gate said, before approval, that the backups go with it.

use crate::cloud_provider::PROD_TF;
use crate::support::*;
use crate::testcloud::{apply_on, plan_on, TestCloud};

const STACK: &str = "prod/app";

/// The same stack, "cleaned up": tags on everything (benign) and the database block gone.
fn cleanup_tf() -> String {
    let start = PROD_TF.find("resource \"aws_db_instance\"").unwrap();
    let end = start + PROD_TF[start..].find("\n}\n").unwrap() + 3;
    let without_db = format!("{}{}", &PROD_TF[..start], &PROD_TF[end..]);
    without_db
        .replace(
            "name = \"prod\"\n",
            "name = \"prod\"\n  tags = { Owner = \"platform\" }\n",
        )
        .replace(
            "instance_type = \"t3.micro\"",
            "instance_type = \"t3.small\"",
        )
}

fn production() -> (Team, TestCloud, Workspace) {
    let t = team(STACK);
    let cloud = TestCloud::new();
    let ws = cloud.workspace(&t.s, STACK, PROD_TF);
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    (t, cloud, ws)
}

#[test]
fn incident_replay_every_destructive_path_is_stopped() {
    let t = team(STACK);
    let cloud = TestCloud::new();
    // Production grows over time; its first state is the "old archive" somebody kept.
    let first = PROD_TF
        .split("resource \"aws_ecs_cluster\"")
        .next()
        .unwrap();
    let ws = cloud.workspace(&t.s, STACK, first);
    ws.tf_ok(&t.s.admin, &["init", "-input=false"]);
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    let old_archive = ws.tf_ok(&t.s.admin, &["state", "pull"]);
    ws.write_main(&format!("{}{PROD_TF}", crate::testcloud::PROVIDER_TF));
    ws.tf_ok(&t.s.admin, &["apply", "-auto-approve", "-input=false"]);
    let history = t.s.serials(STACK);
    let inventory = cloud.inventory();
    assert_eq!(inventory.len(), 9, "{inventory:?}"); // 8 resources + the database's automated backups
    assert!(inventory.contains(&"rds_automated_backup\tprod-db".to_string()));

    // 1. A new machine with no local state, holding the agent token: the state is on the
    //    server, so its plan re-creates nothing.
    let machine = cloud.workspace(&t.s, STACK, PROD_TF);
    machine.tf_ok(&t.agent, &["init", "-input=false"]);
    let planned = machine.tf_ok(&t.agent, &["plan", "-input=false", "-no-color"]);
    assert!(planned.contains("No changes"), "{planned}");

    // 2. The agent's `terraform destroy` (and apply): refused at the state lock, before the
    //    provider deletes anything.
    for args in [
        &["destroy", "-auto-approve", "-input=false"][..],
        &["apply", "-auto-approve", "-input=false"],
    ] {
        let err = machine.tf_err(&t.agent, args);
        assert!(
            err.contains("403") || err.contains("Error acquiring the state lock"),
            "{args:?}: {err}"
        );
    }

    // 3. The old archive pushed over the current state (which would make Terraform forget the
    //    database, cluster, load balancer, bastion and bucket): refused, even with -force.
    std::fs::write(machine.path("old.tfstate"), &old_archive).unwrap();
    for args in [
        &["state", "push", "old.tfstate"][..],
        &["state", "push", "-force", "old.tfstate"],
    ] {
        let err = machine.tf_err(&t.agent, args);
        assert!(
            err.contains("403")
                || err.contains("lock")
                || err.contains("lineage")
                || err.contains("serial"),
            "{args:?}: {err}"
        );
    }

    // 4. The "cleanup" plan: benign tags and a bigger bastion, and the database gone. The gate
    //    denies it, naming the database; nobody can approve it; CI cannot apply it.
    machine.write_main(&format!(
        "{}{}",
        crate::testcloud::PROVIDER_TF,
        cleanup_tf()
    ));
    let run = plan_on(&cloud, &t, &machine, &t.agent, STACK);
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["decision"], "deny", "{v}");
    let shown = t.s.ok(&t.approver, &["run", "show", &run]);
    assert!(
        shown.contains("critical-destroy") && shown.contains("aws_db_instance.main"),
        "{shown}"
    );
    assert!(
        shown.contains("protected-delete"),
        "deletion_protection is on: {shown}"
    );
    assert!(shown.contains("BACKUPS DELETED TOO"), "{shown}");
    let out =
        t.s.cli(&t.approver, &["approve", &run, "--confirm-destroy", "1"]);
    assert!(
        !out.status.success() && text(&out).contains("cannot be approved"),
        "{}",
        text(&out)
    );
    let out = apply_on(&cloud, &t, &machine.dir, &t.ci, &run);
    assert!(!out.status.success(), "{}", text(&out));

    // Every destructive path stopped: history intact, every cloud object still there.
    assert_eq!(
        t.s.serials(STACK),
        history,
        "the stack's history is unchanged"
    );
    assert_eq!(cloud.inventory(), inventory, "the cloud is untouched");
    assert_eq!(
        cloud.get("aws_db_instance", "prod-db").unwrap()["deletion_protection"],
        true
    );
}

#[test]
fn incident_approved_database_delete_was_said_to_take_the_backups() {
    let (t, cloud, ws) = production();
    let root = ws.dir.parent().unwrap().to_path_buf();
    std::fs::write(
        root.join("airlock.hcl"),
        "stack \"prod/app\" {\n  dir = \"tf\"\n}\n",
    )
    .unwrap();
    // A reviewed run turns deletion protection off: the gate calls it a weakened protection.
    let unprotected = PROD_TF.replace(
        "deletion_protection       = true",
        "deletion_protection       = false",
    );
    ws.write_main(&format!("{}{unprotected}", crate::testcloud::PROVIDER_TF));
    let run = plan_on(&cloud, &t, &ws, &t.agent, STACK);
    let shown = t.s.ok(&t.approver, &["run", "show", &run]);
    assert!(
        shown.contains("protection-weakened") && shown.contains("deletion_protection turned off"),
        "{shown}"
    );
    t.s.ok(&t.approver, &["approve", &run]);
    let out = apply_on(&cloud, &t, &root, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        cloud.get("aws_db_instance", "prod-db").unwrap()["deletion_protection"],
        false
    );

    // The reviewed removal of the database, declared in airlock.hcl; delete_automated_backups
    // is left at its default. Before anyone approves, the gate says the backups go with it.
    std::fs::write(
        root.join("airlock.hcl"),
        "stack \"prod/app\" {\n  dir = \"tf\"\n}\nallow_destroy \"aws_db_instance.main\" {\n  reason = \"moved to the new cluster\"\n}\n",
    )
    .unwrap();
    let start = unprotected.find("resource \"aws_db_instance\"").unwrap();
    let end = start + unprotected[start..].find("\n}\n").unwrap() + 3;
    ws.write_main(&format!(
        "{}{}{}",
        crate::testcloud::PROVIDER_TF,
        &unprotected[..start],
        &unprotected[end..]
    ));
    let run = plan_on(&cloud, &t, &ws, &t.agent, STACK);
    let v = run_json(&t, &run);
    assert_eq!(v["run"]["status"], "needs_approval", "{v}");
    let shown = t.s.ok(&t.approver, &["run", "show", &run]);
    assert!(shown.contains("declared-destroy"), "{shown}");
    assert!(
        shown.contains("backups-deleted")
            && shown.contains("BACKUPS DELETED TOO")
            && shown.contains("delete_automated_backups = true")
            && shown
                .contains("the provider deletes the automated backups together with the resource"),
        "the gate must say the backups go with the database: {shown}"
    );
    t.s.ok(&t.approver, &["approve", &run, "--confirm-destroy", "1"]);
    let out = apply_on(&cloud, &t, &root, &t.ci, &run);
    assert!(out.status.success(), "{}", text(&out));
    // What the gate said is what happened: the database and its automated backups are gone;
    // the final snapshot is all that remains.
    assert!(cloud.get("aws_db_instance", "prod-db").is_none());
    assert!(cloud.get("rds_automated_backup", "prod-db").is_none());
    assert!(cloud.get("aws_db_snapshot", "prod-db-final").is_some());
}

/// `airlock demo incident` (and `--without-airlock`) end to end: exit 0 only when every step
/// ended as expected; a clear error when the provider is missing; nothing left behind.
#[test]
fn demo_incident_runs_with_and_without_airlock() {
    let provider = crate::testcloud::provider_bin();
    let tmp = tempfile::tempdir().unwrap();
    let demo = |args: &[&str], provider: &std::path::Path| {
        std::process::Command::new(AIRLOCK)
            .args(["demo", "incident"])
            .args(args)
            .env("AIRLOCK_TESTCLOUD_PROVIDER", provider)
            .env("TMPDIR", tmp.path())
            .env_remove("AIRLOCK_URL")
            .env_remove("AIRLOCK_TOKEN")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = demo(&[], &provider);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for expected in [
        "no changes: the state is on the server",
        "stopped: an agent token cannot write state",
        "stopped before the provider deleted anything",
        "airlock's plan gate decided: deny",
        "BACKUPS DELETED TOO",
        "an approver cannot approve it either",
        "all 8 cloud objects are still there",
        "Every step ended as expected.",
    ] {
        assert!(shown.contains(expected), "{expected:?} missing:\n{shown}");
    }
    assert!(!shown.contains("UNEXPECTED"), "{shown}");
    let out = demo(&["--without-airlock"], &provider);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("0 object(s) left")
            && shown.contains("automated backups were deleted with it"),
        "{shown}"
    );
    // Cleaned up after itself.
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the demo left files behind"
    );
    // No provider: a clear error, not a half-run demo.
    let out = demo(
        &[],
        std::path::Path::new("/nonexistent/terraform-provider-aws"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("test cloud provider was not found")
            && text(&out).contains("AIRLOCK_TESTCLOUD_PROVIDER"),
        "{}",
        text(&out)
    );
}
