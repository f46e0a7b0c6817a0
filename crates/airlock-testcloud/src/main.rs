//! `terraform-provider-aws`: airlock's local test cloud, a real Terraform provider (plugin
//! protocol 6) for tests and `airlock demo incident`. Test-only: it is installed under the
//! source address `hashicorp/aws` through a CLI config `filesystem_mirror`, never published.
//!
//! It implements an AWS-shaped subset — `aws_vpc`, `aws_subnet`, `aws_ecs_cluster`, `aws_lb`,
//! `aws_instance`, `aws_db_instance`, `aws_db_snapshot`, `aws_s3_bucket`, `aws_s3_object` —
//! with AWS's rules that matter to airlock (`src/kinds.rs`): a database with
//! `deletion_protection` refuses deletion; deleting one leaves a final snapshot unless
//! `skip_final_snapshot`; its automated backups exist while `backup_retention_period > 0` and
//! go with it unless `delete_automated_backups = false`; a bucket with objects cannot be deleted
//! without `force_destroy`. Read returns what the cloud holds, and a missing object reads as
//! gone, so changes made behind Terraform's back show as drift.
//!
//! The cloud is a directory (`data_dir` in the provider block, else `$AIRLOCK_TESTCLOUD_DIR`):
//! `DIR/<type>/<id, %-encoded>.json`, one JSON object of attributes per cloud object (see
//! `cloud.rs`); automated backups are `DIR/rds_automated_backup/<db id>.json`. Edit or delete
//! the files directly, or use `terraform-provider-aws cloud list|show|set|delete` (below).
//!
//! Why `tf-provider` and not `tonic` directly: it already implements the go-plugin handshake,
//! AutoMTLS, the broker/stdio/controller services and cty's msgpack values (unknowns
//! included); with `tonic` alone those are a few hundred lines of protocol code before the
//! first resource. Its build script compiles the protocol with `protoc` (Debian's
//! `protobuf-compiler`, installed by `scripts/test-deps.sh`); the `airlock` binary does not
//! depend on this crate, so building airlock needs no `protoc`. Its TLS uses rustls with `ring`
//! only (no second crypto provider to choose between).

mod cloud;
mod kinds;
mod provider;

use cloud::{Cloud, AUTOMATED_BACKUP};
use kinds::Kind;
use std::process::ExitCode;

const USAGE: &str = "\
terraform-provider-aws: airlock's local test cloud (a Terraform provider; test-only)

Terraform starts it as a plugin. By hand, change the cloud behind Terraform's back:
  terraform-provider-aws cloud [--dir DIR] list [TYPE]
  terraform-provider-aws cloud [--dir DIR] show TYPE ID
  terraform-provider-aws cloud [--dir DIR] set TYPE ID ATTRIBUTE VALUE   (VALUE: JSON, else a string)
  terraform-provider-aws cloud [--dir DIR] delete TYPE ID
DIR defaults to $AIRLOCK_TESTCLOUD_DIR.";

fn main() -> ExitCode {
    // Diagnostics carry no Rust backtraces even when RUST_BACKTRACE is set for a test run.
    // Set before any thread exists.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("cloud") => match cli(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("terraform-provider-aws cloud: {e}");
                ExitCode::FAILURE
            }
        },
        None if std::env::var_os("TF_PLUGIN_MAGIC_COOKIE").is_some() => serve(),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("terraform-provider-aws: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tf_provider::serve("aws", provider::TestCloud::default())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terraform-provider-aws: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cli(args: &[String]) -> Result<(), String> {
    let (dir, args) = match args {
        [flag, dir, rest @ ..] if flag == "--dir" => (dir.clone(), rest),
        _ => (
            std::env::var(provider::DIR_ENV).map_err(|_| {
                format!(
                    "no cloud directory: give --dir or set {}",
                    provider::DIR_ENV
                )
            })?,
            args,
        ),
    };
    let cloud = Cloud::new(&dir);
    let check_kind = |kind: &str| {
        if kind == AUTOMATED_BACKUP || Kind::find(kind).is_some() {
            Ok(())
        } else {
            Err(format!("unknown type {kind:?}"))
        }
    };
    let found = |kind: &str, id: &str| {
        cloud
            .get(kind, id)?
            .ok_or_else(|| format!("the cloud holds no {kind} {id:?}"))
    };
    match args {
        [cmd] | [cmd, _] if cmd == "list" => {
            let kinds = match args.get(1) {
                Some(kind) => {
                    check_kind(kind)?;
                    vec![kind.clone()]
                }
                None => cloud.kinds()?,
            };
            for kind in kinds {
                for obj in cloud.list(&kind)? {
                    println!(
                        "{kind}\t{}",
                        obj.get("id").and_then(|v| v.as_str()).unwrap_or("?")
                    );
                }
            }
            Ok(())
        }
        [cmd, kind, id] if cmd == "show" => {
            let obj = found(kind, id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&obj).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        [cmd, kind, id, attr, value] if cmd == "set" => {
            check_kind(kind)?;
            let mut obj = found(kind, id)?;
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.clone()));
            if let Some(kind) = Kind::find(kind) {
                let spec = kind
                    .attr(attr)
                    .ok_or_else(|| format!("{} has no attribute {attr:?}", kind.name))?;
                if spec.name == "id" {
                    return Err(
                        "the id names the object; delete it and create another instead".into(),
                    );
                }
                kinds::check_type(spec, &value)
                    .map_err(|p| format!("{}: {}", p.summary, p.detail))?;
            }
            obj.insert(attr.clone(), value);
            cloud.put(kind, id, &obj)
        }
        [cmd, kind, id] if cmd == "delete" => {
            check_kind(kind)?;
            if cloud.delete(kind, id)? {
                Ok(())
            } else {
                Err(format!("the cloud holds no {kind} {id:?}"))
            }
        }
        _ => Err(format!("unknown command\n{USAGE}")),
    }
}
