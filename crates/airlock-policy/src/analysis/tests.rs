//! Unit tests of the rules, on hand-written resource changes.

use super::*;
use serde_json::Value;

use crate::config::{self, Config};
use crate::plan::ResourceChange;
use serde_json::json;

fn rc(address: &str, ty: &str, actions: &[&str], before: Value, after: Value) -> ResourceChange {
    let v = json!({
        "address": address, "mode": "managed", "type": ty, "name": "x",
        "change": {"actions": actions, "before": before, "after": after,
                   "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}}
    });
    serde_json::from_value(v).unwrap()
}

fn run(config: &Config, changes: &[ResourceChange]) -> Decision {
    let mut a = Analyzer::new(config, None);
    for c in changes {
        a.change(c);
    }
    a.finish(PlanInfo::default())
}

#[test]
fn a_review_over_the_findings_cap_keeps_a_finding_that_says_why() {
    let config = Config::default();
    let mut a = Analyzer::new(&config, None);
    for i in 0..MAX_FINDINGS + 3 {
        a.add_finding(Finding {
            rule: "note".into(),
            severity: Severity::Info,
            address: Some(format!("a.b[{i}]")),
            message: "informational".into(),
        });
    }
    a.add_finding(Finding {
        rule: "why".into(),
        severity: Severity::Review,
        address: None,
        message: "the reason".into(),
    });
    let d = a.finish(PlanInfo::default());
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(d.findings.len(), MAX_FINDINGS);
    assert_eq!(d.findings[0].rule, "why", "the reason is kept, first");
}

fn rules_of(d: &Decision) -> Vec<&str> {
    d.findings.iter().map(|f| f.rule.as_str()).collect()
}

#[test]
fn deleting_a_critical_resource_is_denied() {
    let d = run(
        &Config::default(),
        &[rc(
            "aws_db_instance.main",
            "aws_db_instance",
            &["delete"],
            json!({"skip_final_snapshot": true}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(rules_of(&d), vec![rules::CRITICAL_DESTROY]);
    assert!(
        d.findings[0].message.contains("skip_final_snapshot = true"),
        "{}",
        d.findings[0].message
    );
}

#[test]
fn every_destroying_kind_of_a_critical_resource_is_denied() {
    for actions in [
        &["delete"][..],
        &["delete", "create"],
        &["create", "delete"],
        &["create", "forget"],
        &["forget", "create"],
    ] {
        let d = run(
            &Config::default(),
            &[rc(
                "google_storage_bucket.b",
                "google_storage_bucket",
                actions,
                json!({}),
                json!({}),
            )],
        );
        assert_eq!(d.verdict, Verdict::Deny, "{actions:?}");
    }
    // Forgetting is not destroying.
    let d = run(
        &Config::default(),
        &[rc(
            "google_storage_bucket.b",
            "google_storage_bucket",
            &["forget"],
            json!({}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(rules_of(&d), vec![rules::FORGET]);
}

#[test]
fn an_allow_destroy_that_matches_nothing_is_reported() {
    let c = config::parse(
        "allow_destroy \"aws_db_instance.typo\" {\n  reason = \"r\"\n}\nallow_destroy \"aws_db_instance.old\" {\n  reason = \"r\"\n}\n",
        "airlock.hcl",
    )
    .unwrap();
    let d = run(
        &c,
        &[rc(
            "aws_db_instance.old",
            "aws_db_instance",
            &["delete"],
            json!({}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Review);
    let unused: Vec<_> = d
        .findings
        .iter()
        .filter(|f| f.rule == rules::UNUSED_DECLARATION)
        .map(|f| f.address.clone().unwrap_or_default())
        .collect();
    assert_eq!(unused, ["aws_db_instance.typo"]);
}

#[test]
fn allow_destroy_turns_deny_into_review() {
    let c = config::parse(
        "allow_destroy \"module.legacy.aws_db_instance.old\" {\n  reason = \"decommissioned\"\n}\n",
        "airlock.hcl",
    )
    .unwrap();
    let d = run(
        &c,
        &[rc(
            "module.legacy.aws_db_instance.old",
            "aws_db_instance",
            &["delete"],
            json!({}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(rules_of(&d), vec![rules::DECLARED_DESTROY]);
    assert!(d.findings[0].message.contains("decommissioned"));
    assert!(d.findings[0].message.contains("line 1"));
}

#[test]
fn protect_rules_make_resources_critical() {
    let c = config::parse(
        "protect {\n types = [\"aws_vpc\"]\n addresses = [\"module.network.*\"]\n}\n",
        "airlock.hcl",
    )
    .unwrap();
    let d = run(
        &c,
        &[rc(
            "aws_vpc.main",
            "aws_vpc",
            &["delete"],
            json!({}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Deny);
    let d = run(
        &c,
        &[rc(
            "module.network.aws_subnet.a[0]",
            "aws_subnet",
            &["delete"],
            json!({}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.findings[0].message.contains("protected by airlock.hcl"));
    let d = run(
        &c,
        &[rc(
            "aws_subnet.a",
            "aws_subnet",
            &["delete"],
            json!({}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Allow);
}

#[test]
fn a_protected_module_covers_its_keyed_instances() {
    let c = config::parse(
        "protect {\n addresses = [\"module.db\", \"terraform_data.logs\"]\n}\n",
        "airlock.hcl",
    )
    .unwrap();
    for address in [
        "module.db[0].terraform_data.counted",
        "module.db[\"eu\"].module.inner[2].terraform_data.x",
        "terraform_data.logs[\"a[b\"]",
    ] {
        let d = run(
            &c,
            &[rc(
                address,
                "terraform_data",
                &["delete"],
                json!({}),
                Value::Null,
            )],
        );
        assert_eq!(d.verdict, Verdict::Deny, "{address}");
        assert_eq!(rules_of(&d), [rules::CRITICAL_DESTROY], "{address}");
    }
    let d = run(
        &c,
        &[rc(
            "module.dbx[0].terraform_data.counted",
            "terraform_data",
            &["delete"],
            json!({}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Allow);
}

#[test]
fn weakened_protections_need_review() {
    let cases = [
        (
            "aws_db_instance",
            json!({"deletion_protection": true}),
            json!({"deletion_protection": false}),
            "deletion_protection turned off (true → false)",
        ),
        (
            "aws_db_instance",
            json!({"skip_final_snapshot": false}),
            json!({"skip_final_snapshot": true}),
            "skip_final_snapshot turned on",
        ),
        (
            "aws_db_instance",
            json!({"delete_automated_backups": false}),
            json!({"delete_automated_backups": true}),
            "delete_automated_backups turned on",
        ),
        (
            "aws_db_instance",
            json!({"backup_retention_period": 7}),
            json!({"backup_retention_period": 0}),
            "backup_retention_period dropped to zero (7 → 0)",
        ),
        (
            "aws_s3_bucket",
            json!({"force_destroy": false}),
            json!({"force_destroy": true}),
            "force_destroy turned on",
        ),
        (
            "aws_kms_key",
            json!({"deletion_window_in_days": 30}),
            json!({"deletion_window_in_days": 7}),
            "deletion_window_in_days shortened (30 → 7)",
        ),
        (
            "azurerm_key_vault",
            json!({"purge_protection_enabled": true}),
            json!({"purge_protection_enabled": false}),
            "purge_protection_enabled turned off",
        ),
        (
            "azurerm_key_vault",
            json!({"soft_delete_retention_days": 90}),
            json!({"soft_delete_retention_days": 7}),
            "soft_delete_retention_days shortened",
        ),
        (
            "google_sql_database_instance",
            json!({"settings": [{"deletion_protection_enabled": true}]}),
            json!({"settings": [{"deletion_protection_enabled": false}]}),
            "settings.deletion_protection_enabled turned off",
        ),
        (
            "google_project",
            json!({"deletion_policy": "PREVENT"}),
            json!({"deletion_policy": "DELETE"}),
            "deletion_policy no longer PREVENT",
        ),
        (
            "aws_instance",
            json!({"disable_api_termination": true}),
            json!({"disable_api_termination": false}),
            "disable_api_termination turned off",
        ),
        (
            "aws_dynamodb_table",
            json!({"point_in_time_recovery": [{"enabled": true}]}),
            json!({"point_in_time_recovery": [{"enabled": false}]}),
            "point_in_time_recovery.enabled turned off",
        ),
    ];
    for (ty, before, after, text) in cases {
        let d = run(
            &Config::default(),
            &[rc(&format!("{ty}.x"), ty, &["update"], before, after)],
        );
        assert_eq!(d.verdict, Verdict::Review, "{ty} {text}");
        assert_eq!(d.findings[0].rule, rules::PROTECTION_WEAKENED);
        assert!(
            d.findings[0].message.contains(text),
            "{} vs {text}",
            d.findings[0].message
        );
    }
    // Strengthening, unchanged, or unknown-after is fine.
    for (before, after) in [
        (
            json!({"deletion_protection": false}),
            json!({"deletion_protection": true}),
        ),
        (
            json!({"deletion_protection": true}),
            json!({"deletion_protection": true}),
        ),
        (
            json!({"backup_retention_period": 7}),
            json!({"backup_retention_period": 14}),
        ),
    ] {
        let d = run(
            &Config::default(),
            &[rc(
                "aws_db_instance.x",
                "aws_db_instance",
                &["update"],
                before,
                after,
            )],
        );
        assert_eq!(d.verdict, Verdict::Allow);
    }
    let mut unknown = rc(
        "aws_db_instance.x",
        "aws_db_instance",
        &["update"],
        json!({"deletion_protection": true}),
        json!({}),
    );
    unknown.change.after_unknown =
        Some(serde_json::value::to_raw_value(&json!({"deletion_protection": true})).unwrap());
    // Known only after apply: reviewers cannot read what the apply sets (and a plan file can
    // mark any value unknown), so it is a finding, not silence.
    let d = run(&Config::default(), &[unknown.clone()]);
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(d.findings[0].rule, rules::PROTECTION_WEAKENED);
    assert!(
        d.findings[0].message.contains("known only after apply"),
        "{:?}",
        d.findings
    );
    // A protection already off before has nothing left to weaken.
    unknown.change.before =
        Some(serde_json::value::to_raw_value(&json!({"deletion_protection": false})).unwrap());
    assert_eq!(run(&Config::default(), &[unknown]).verdict, Verdict::Allow);
}

#[test]
fn sensitive_protection_values_are_not_shown() {
    let mut c = rc(
        "aws_db_instance.x",
        "aws_db_instance",
        &["update"],
        json!({"backup_retention_period": 7}),
        json!({"backup_retention_period": 0}),
    );
    c.change.after_sensitive =
        Some(serde_json::value::to_raw_value(&json!({"backup_retention_period": true})).unwrap());
    let d = run(&Config::default(), &[c]);
    assert_eq!(
        d.findings[0].message,
        "protection weakened: backup_retention_period dropped to zero"
    );
}

#[test]
fn deleting_a_protected_resource_is_flagged_before_apply() {
    let d = run(
        &Config::default(),
        &[rc(
            "google_container_cluster.gke",
            "google_container_cluster",
            &["delete"],
            json!({"deletion_protection": true}),
            Value::Null,
        )],
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(rules_of(&d).contains(&rules::PROTECTED_DELETE));
    let d = run(
        &Config::default(),
        &[rc(
            "aws_lb.front",
            "aws_lb",
            &["delete"],
            json!({"enable_deletion_protection": true}),
            Value::Null,
        )],
    );
    assert_eq!(
        d.verdict,
        Verdict::Review,
        "aws_lb is guarded, not critical"
    );
    assert_eq!(rules_of(&d), vec![rules::PROTECTED_DELETE]);
    assert!(d.findings[0]
        .message
        .contains("enable_deletion_protection = true"));
}

#[test]
fn deleting_a_database_with_its_automated_backups_is_said_loudly() {
    let db = |before: Value| {
        run(
            &Config::default(),
            &[rc(
                "aws_db_instance.main",
                "aws_db_instance",
                &["delete"],
                before,
                Value::Null,
            )],
        )
    };
    // delete_automated_backups at its default (true): the backups go with the database.
    let d = db(
        json!({"deletion_protection": false, "delete_automated_backups": true, "backup_retention_period": 7}),
    );
    assert!(
        rules_of(&d).contains(&rules::BACKUPS_DELETED),
        "{:?}",
        d.findings
    );
    let f = d
        .findings
        .iter()
        .find(|f| f.rule == rules::BACKUPS_DELETED)
        .unwrap();
    assert!(
        f.message.contains("BACKUPS DELETED TOO")
            && f.message.contains("delete_automated_backups = true"),
        "{}",
        f.message
    );
    // Kept (false): no such finding.
    let d = db(json!({"deletion_protection": false, "delete_automated_backups": false}));
    assert!(
        !rules_of(&d).contains(&rules::BACKUPS_DELETED),
        "{:?}",
        d.findings
    );
    // An update is not a delete.
    let d = run(
        &Config::default(),
        &[rc(
            "aws_db_instance.main",
            "aws_db_instance",
            &["update"],
            json!({"delete_automated_backups": true}),
            json!({"delete_automated_backups": true}),
        )],
    );
    assert!(!rules_of(&d).contains(&rules::BACKUPS_DELETED));
}

#[test]
fn mass_destruction_by_count_and_share() {
    let del = |i: usize| {
        rc(
            &format!("terraform_data.d[{i}]"),
            "terraform_data",
            &["delete"],
            json!({}),
            Value::Null,
        )
    };
    let keep = |i: usize| {
        rc(
            &format!("terraform_data.k[{i}]"),
            "terraform_data",
            &["no-op"],
            json!({}),
            json!({}),
        )
    };
    let changes: Vec<_> = (0..21).map(del).chain((0..100).map(keep)).collect();
    let d = run(&Config::default(), &changes);
    assert_eq!(d.verdict, Verdict::Review);
    assert!(rules_of(&d).contains(&rules::MASS_DESTRUCTION));
    assert_eq!(d.summary.destroyed, 21);
    assert_eq!(d.summary.existing, 121);
    let changes: Vec<_> = (0..20).map(del).chain((0..100).map(keep)).collect();
    assert_eq!(run(&Config::default(), &changes).verdict, Verdict::Allow);
    let changes: Vec<_> = (0..4).map(del).chain((0..8).map(keep)).collect();
    let d = run(&Config::default(), &changes);
    assert!(
        rules_of(&d).contains(&rules::MASS_DESTRUCTION),
        "4 of 12 is over 25%"
    );
    let changes: Vec<_> = (0..4).map(del).chain((0..4).map(keep)).collect();
    assert_eq!(
        run(&Config::default(), &changes).verdict,
        Verdict::Allow,
        "small stack"
    );
    let c = config::parse("mass_destruction {\n max_count = 2\n}\n", "airlock.hcl").unwrap();
    let changes: Vec<_> = (0..3).map(del).collect();
    assert_eq!(run(&c, &changes).verdict, Verdict::Review);
}

#[test]
fn production_stacks_review_any_destroy() {
    let c = config::parse("stack \"prod\" {\n production = true\n}\n", "airlock.hcl").unwrap();
    let mut a = Analyzer::new(&c, c.stack("prod"));
    a.change(&rc(
        "terraform_data.a",
        "terraform_data",
        &["delete"],
        json!({}),
        Value::Null,
    ));
    let d = a.finish(PlanInfo::default());
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(rules_of(&d), vec![rules::PRODUCTION_DESTROY]);
    assert_eq!(d.stack.as_deref(), Some("prod"));
}

#[test]
fn signals_are_informational() {
    let mut gone = rc(
        "module.old.terraform_data.a",
        "terraform_data",
        &["delete"],
        json!({}),
        Value::Null,
    );
    gone.action_reason = Some("delete_because_no_module".into());
    gone.module_address = Some("module.old".into());
    let mut key = rc(
        "terraform_data.c[1]",
        "terraform_data",
        &["delete"],
        json!({}),
        Value::Null,
    );
    key.action_reason = Some("delete_because_count_index".into());
    let mut each = rc(
        "terraform_data.e[\"b\"]",
        "terraform_data",
        &["delete"],
        json!({}),
        Value::Null,
    );
    each.action_reason = Some("delete_because_each_key".into());
    let mut req = rc(
        "terraform_data.g",
        "terraform_data",
        &["delete", "create"],
        json!({}),
        json!({}),
    );
    req.action_reason = Some("replace_by_request".into());
    let mut taint = rc(
        "terraform_data.f",
        "terraform_data",
        &["delete", "create"],
        json!({}),
        json!({}),
    );
    taint.action_reason = Some("replace_because_tainted".into());
    let d = run(&Config::default(), &[gone, key, each, req, taint]);
    assert_eq!(d.verdict, Verdict::Allow);
    let mut r = rules_of(&d);
    r.sort();
    assert_eq!(
        r,
        vec![
            rules::INSTANCE_KEY_REMOVED,
            rules::INSTANCE_KEY_REMOVED,
            rules::MODULE_REMOVED,
            rules::REPLACE_REQUESTED,
            rules::TAINTED_REPLACE
        ]
    );
}

#[test]
fn unknown_actions_and_errored_plans_need_review() {
    let d = run(
        &Config::default(),
        &[rc("a.b", "a", &["explode"], json!({}), json!({}))],
    );
    assert_eq!(d.verdict, Verdict::Review);
    let cfg = Config::default();
    let a = Analyzer::new(&cfg, None);
    let d = a.finish(PlanInfo {
        errored: Some(true),
        ..PlanInfo::default()
    });
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(rules_of(&d), vec![rules::PLAN_ERRORED]);
}

#[test]
fn findings_are_capped_but_counted() {
    let changes: Vec<_> = (0..MAX_FINDINGS + 5)
        .map(|i| {
            rc(
                &format!("aws_s3_bucket.b[{i}]"),
                "aws_s3_bucket",
                &["delete"],
                json!({}),
                Value::Null,
            )
        })
        .collect();
    let d = run(&Config::default(), &changes);
    assert_eq!(d.findings.len(), MAX_FINDINGS);
    assert_eq!(
        d.findings_omitted, 6,
        "5 deletes + the mass-destruction finding"
    );
    assert_eq!(
        d.summary.findings_by_severity["deny"],
        MAX_FINDINGS as u64 + 5
    );
    assert_eq!(d.verdict, Verdict::Deny);
}

#[test]
fn replace_paths_and_reasons_are_reported() {
    let mut c = rc(
        "terraform_data.d",
        "terraform_data",
        &["delete", "create"],
        json!({}),
        json!({}),
    );
    c.change.replace_paths = Some(vec![
        vec![json!("triggers_replace")],
        vec![json!("settings"), json!(0), json!("tier")],
    ]);
    c.action_reason = Some("replace_because_cannot_update".into());
    let cfg = Config::default();
    let mut a = Analyzer::new(&cfg, None);
    let r = a.change(&c);
    assert_eq!(
        r.replace_paths,
        vec!["triggers_replace", "settings[0].tier"]
    );
    assert_eq!(
        r.reasons,
        vec!["replaced because an attribute cannot be updated in place"]
    );
    assert_eq!(r.kind, ChangeKind::ReplaceDestroyFirst);
}

#[test]
fn outermost_removed_module_is_reported_once() {
    let gone = |addr: &str, module: &str| {
        let mut c = rc(addr, "terraform_data", &["delete"], json!({}), Value::Null);
        c.action_reason = Some("delete_because_no_resource_config".into());
        c.module_address = Some(module.into());
        c
    };
    let mut kept = rc(
        "module.keep.terraform_data.z",
        "terraform_data",
        &["no-op"],
        json!({}),
        json!({}),
    );
    kept.module_address = Some("module.keep".into());
    let d = run(
        &Config::default(),
        &[
            gone("module.a.terraform_data.x", "module.a"),
            gone("module.a.module.b.terraform_data.y", "module.a.module.b"),
            gone("module.keep.terraform_data.w", "module.keep"),
            kept,
        ],
    );
    let removed: Vec<_> = d
        .findings
        .iter()
        .filter(|f| f.rule == rules::MODULE_REMOVED)
        .map(|f| f.address.clone().unwrap_or_default())
        .collect();
    assert_eq!(removed, vec!["module.a"]);
}
