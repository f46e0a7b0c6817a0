//! The local test cloud provider itself, driven by real terraform: AWS's rules that matter to
//! airlock (protections refuse deletes, final snapshots, automated backups, non-empty buckets),
//! drift made behind Terraform's back, and hostile configuration values.

use crate::support::text;
use crate::testcloud::TestCloud;

/// The production stack of the incident replay, with local state.
pub const PROD_TF: &str = r#"
resource "aws_vpc" "main" {
  cidr_block = "10.0.0.0/16"
  tags       = { Name = "prod" }
}
resource "aws_subnet" "a" {
  vpc_id     = aws_vpc.main.id
  cidr_block = "10.0.1.0/24"
}
resource "aws_ecs_cluster" "app" {
  name = "prod"
}
resource "aws_lb" "web" {
  name    = "prod-web"
  subnets = [aws_subnet.a.id]
}
resource "aws_instance" "bastion" {
  ami           = "ami-0abc1234"
  instance_type = "t3.micro"
  subnet_id     = aws_subnet.a.id
}
resource "aws_db_instance" "main" {
  identifier                = "prod-db"
  engine                    = "postgres"
  instance_class            = "db.t3.micro"
  password                  = "correct-horse"
  deletion_protection       = true
  final_snapshot_identifier = "prod-db-final"
  backup_retention_period   = 7
}
resource "aws_s3_bucket" "assets" {
  bucket = "prod-assets"
}
resource "aws_s3_object" "index" {
  bucket  = aws_s3_bucket.assets.bucket
  key     = "index.html"
  content = "hello"
}
"#;

fn ok(cloud: &TestCloud, dir: &std::path::Path, args: &[&str]) -> String {
    let out = cloud.tf(dir, args);
    assert!(out.status.success(), "terraform {args:?}: {}", text(&out));
    text(&out)
}

fn fails(cloud: &TestCloud, dir: &std::path::Path, args: &[&str]) -> String {
    let out = cloud.tf(dir, args);
    assert!(
        !out.status.success(),
        "terraform {args:?} succeeded: {}",
        text(&out)
    );
    text(&out)
}

fn state_id(cloud: &TestCloud, dir: &std::path::Path, address: &str) -> String {
    let out = ok(cloud, dir, &["state", "show", "-no-color", address]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("id "))
        .expect("an id line");
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn testcloud_applies_refreshes_and_refuses_like_aws() {
    let cloud = TestCloud::new();
    let dir = cloud.local_dir(PROD_TF);
    ok(&cloud, &dir, &["apply", "-auto-approve", "-no-color"]);
    for kind in [
        "aws_vpc",
        "aws_subnet",
        "aws_ecs_cluster",
        "aws_lb",
        "aws_instance",
        "aws_db_instance",
        "aws_s3_bucket",
        "aws_s3_object",
        "rds_automated_backup",
    ] {
        assert_eq!(cloud.ids(kind).len(), 1, "{kind}");
    }
    assert!(ok(&cloud, &dir, &["plan", "-no-color", "-detailed-exitcode"]).contains("No changes"));

    // Drift made behind Terraform's back: a changed attribute, a deleted object.
    cloud.set("aws_db_instance", "prod-db", "deletion_protection", "false");
    let bastion = state_id(&cloud, &dir, "aws_instance.bastion");
    cloud.delete("aws_instance", &bastion);
    let refresh = ok(&cloud, &dir, &["plan", "-refresh-only", "-no-color"]);
    assert!(
        refresh.contains("deletion_protection") && refresh.contains("true -> false"),
        "{refresh}"
    );
    assert!(
        refresh.contains("aws_instance.bastion has been deleted"),
        "{refresh}"
    );
    cloud.set("aws_db_instance", "prod-db", "deletion_protection", "true");

    // The database refuses deletion while protected (the cloud's value counts); the rest goes.
    let out = fails(&cloud, &dir, &["destroy", "-auto-approve", "-no-color"]);
    assert!(out.contains("Cannot delete protected DB Instance"), "{out}");
    assert!(cloud.get("aws_db_instance", "prod-db").is_some());
    assert!(cloud.get("rds_automated_backup", "prod-db").is_some());
    assert!(cloud.ids("aws_vpc").is_empty() && cloud.ids("aws_s3_bucket").is_empty());

    // Protection off (a reviewed change), then delete: a final snapshot stays, the automated
    // backups go with the instance (delete_automated_backups defaults to true, as on AWS).
    let unprotected = PROD_TF.replace(
        "deletion_protection       = true",
        "deletion_protection       = false",
    );
    std::fs::write(
        dir.join("main.tf"),
        format!("{}{unprotected}", crate::testcloud::PROVIDER_TF),
    )
    .unwrap();
    ok(&cloud, &dir, &["apply", "-auto-approve", "-no-color"]);
    ok(&cloud, &dir, &["destroy", "-auto-approve", "-no-color"]);
    assert!(cloud.get("aws_db_instance", "prod-db").is_none());
    assert_eq!(
        cloud.get("aws_db_snapshot", "prod-db-final").unwrap()["db_instance_identifier"],
        "prod-db"
    );
    assert!(
        cloud.get("rds_automated_backup", "prod-db").is_none(),
        "automated backups deleted with the instance"
    );
}

#[test]
fn testcloud_keeps_what_aws_keeps() {
    let cloud = TestCloud::new();
    let tf = r#"
resource "aws_db_instance" "keep" {
  identifier               = "keep-db"
  engine                   = "postgres"
  instance_class           = "db.t3.micro"
  skip_final_snapshot      = true
  delete_automated_backups = false
}
resource "aws_s3_bucket" "b" {
  bucket = "full-bucket"
}
resource "aws_s3_object" "o" {
  bucket  = aws_s3_bucket.b.bucket
  key     = "data/a b.txt"
  content = "x"
}
"#;
    let dir = cloud.local_dir(tf);
    ok(&cloud, &dir, &["apply", "-auto-approve", "-no-color"]);
    assert_eq!(cloud.ids("aws_s3_object"), ["full-bucket/data/a b.txt"]);
    // An object Terraform forgets stays in the bucket: the bucket cannot go without force_destroy.
    ok(&cloud, &dir, &["state", "rm", "aws_s3_object.o"]);
    let out = fails(&cloud, &dir, &["destroy", "-auto-approve", "-no-color"]);
    assert!(out.contains("BucketNotEmpty"), "{out}");
    assert!(cloud.get("aws_s3_bucket", "full-bucket").is_some());
    // No final snapshot (skipped); automated backups retained (delete_automated_backups = false).
    assert!(cloud.get("aws_db_instance", "keep-db").is_none());
    assert!(cloud.ids("aws_db_snapshot").is_empty());
    assert_eq!(
        cloud.get("rds_automated_backup", "keep-db").unwrap()["status"],
        "retained"
    );
    // With force_destroy, the bucket goes with its objects.
    let forced = tf.replace(
        "bucket = \"full-bucket\"",
        "bucket = \"full-bucket\"\n  force_destroy = true",
    );
    std::fs::write(
        dir.join("main.tf"),
        format!("{}{forced}", crate::testcloud::PROVIDER_TF),
    )
    .unwrap();
    ok(
        &cloud,
        &dir,
        &[
            "apply",
            "-auto-approve",
            "-no-color",
            "-target=aws_s3_bucket.b",
        ],
    );
    ok(&cloud, &dir, &["destroy", "-auto-approve", "-no-color"]);
    assert!(cloud.ids("aws_s3_bucket").is_empty() && cloud.ids("aws_s3_object").is_empty());
}

#[test]
fn testcloud_hostile_values_get_diagnostics_not_panics() {
    let cloud = TestCloud::new();
    let huge = "x".repeat(100_000);
    let cases: Vec<(String, &str)> = vec![
        ("resource \"aws_vpc\" \"v\" {\n  cidr_block = \"10.0.0.1/33\"\n}\n".into(), "invalid CIDR block"),
        ("resource \"aws_vpc\" \"v\" {\n  cidr_block = \"10.0.0.7/16\"\n}\n".into(), "host bits"),
        ("resource \"aws_vpc\" \"v\" {\n  cidr_block = \"not a cidr\"\n}\n".into(), "invalid CIDR block"),
        (format!("resource \"aws_s3_bucket\" \"b\" {{\n  bucket = \"{huge}\"\n}}\n"), "too long"),
        ("resource \"aws_s3_bucket\" \"b\" {\n  bucket = \"../../etc\"\n}\n".into(), "invalid bucket name"),
        ("resource \"aws_db_instance\" \"d\" {\n  identifier = \"Prod_DB\"\n  engine = \"postgres\"\n  instance_class = \"x\"\n  backup_retention_period = 99\n}\n".into(), "invalid identifier"),
        ("resource \"aws_db_instance\" \"d\" {\n  identifier = \"db\"\n  engine = \"postgres\"\n  instance_class = \"x\"\n  backup_retention_period = 1.5\n}\n".into(), "did not match any variant"),
        ("resource \"aws_subnet\" \"s\" {\n  vpc_id = \"vpc-0000\"\n  cidr_block = \"10.0.1.0/24\"\n}\n".into(), "InvalidVpcID.NotFound"),
    ];
    for (tf, expected) in cases {
        let dir = cloud.local_dir(&tf);
        let out = fails(&cloud, &dir, &["apply", "-auto-approve", "-no-color"]);
        assert!(
            out.contains(expected),
            "{expected:?} not in:\n{}",
            &out[..out.len().min(3000)]
        );
        assert!(
            !out.contains("panicked") && !out.contains("stack backtrace"),
            "{out}"
        );
    }
    // Nothing was created by any of them.
    assert!(
        cloud.ids("aws_vpc").is_empty()
            && cloud.ids("aws_s3_bucket").is_empty()
            && cloud.ids("aws_db_instance").is_empty()
    );
    // A hand edit of the wrong type is reported on refresh, not passed to Terraform.
    let dir = cloud.local_dir("resource \"aws_vpc\" \"v\" {\n  cidr_block = \"10.1.0.0/16\"\n}\n");
    ok(&cloud, &dir, &["apply", "-auto-approve", "-no-color"]);
    let id = cloud.ids("aws_vpc").remove(0);
    let file = cloud.dir.join("aws_vpc").join(format!("{id}.json"));
    let edited = std::fs::read_to_string(&file).unwrap().replace(
        "\"enable_dns_hostnames\": false",
        "\"enable_dns_hostnames\": \"maybe\"",
    );
    std::fs::write(&file, edited).unwrap();
    let out = fails(&cloud, &dir, &["plan", "-no-color"]);
    assert!(
        out.contains("has a bad value") && out.contains("enable_dns_hostnames"),
        "{out}"
    );
    std::fs::write(&file, "{ not json").unwrap();
    let out = fails(&cloud, &dir, &["plan", "-no-color"]);
    assert!(out.contains("not a JSON object"), "{out}");
}
