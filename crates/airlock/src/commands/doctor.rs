//! `airlock doctor [DIR]`: examines a repository (and, with `--server`, the airlock server) and
//! prints the six answers. The judging is `airlock_runner::doctor`; this file fetches the
//! server's facts, prints, and decides the exit code (0, 3 for `--fail-on`, 1 on error).

use std::process::ExitCode;

use airlock_core::Role;
use airlock_runner::doctor::{self, render, server, Verdict};
use anyhow::Context;
use serde_json::Value;

use super::client::{Client, ServerRefused};
use crate::cli::{ClientArgs, DoctorArgs, DoctorFailOn, DoctorFormat, OutputFormat};

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let meta = std::fs::metadata(&args.dir)
        .with_context(|| format!("cannot read {}", args.dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory", args.dir.display());
    }
    let facts = if args.server {
        Some(server_facts(&args).map_err(|e| anyhow::anyhow!("{e:#}"))?)
    } else {
        None
    };
    let report = doctor::examine(&args.dir, facts.as_ref());
    let text = match args.format {
        DoctorFormat::Text => render::text(&report, args.max_evidence),
        DoctorFormat::Markdown => render::markdown(&report, args.max_evidence),
        DoctorFormat::Json => pretty(&render::json(&report)),
        DoctorFormat::Sarif => pretty(&render::sarif(&report)),
    };
    crate::out(&text);
    let threshold = args.fail_on.map(|f| match f {
        DoctorFailOn::Fragile => Verdict::Fragile,
        DoctorFailOn::Discipline => Verdict::Discipline,
    });
    let failed = threshold.is_some_and(|t| report.questions.iter().any(|q| q.verdict >= t));
    Ok(ExitCode::from(if failed {
        crate::exit::REVIEW
    } else {
        crate::exit::OK
    }))
}

fn pretty(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default())
}

/// What the server says; a refusal of one listing (a non-admin token asking for tokens) is a
/// fact ("cannot be known with this token"), not an error. An unreachable server or a token it
/// does not accept is an error.
fn server_facts(args: &DoctorArgs) -> anyhow::Result<server::Facts> {
    let client = Client::new(&ClientArgs {
        url: args.url.clone(),
        token: args.token.clone(),
        format: OutputFormat::Json,
        ca_cert: args.ca_cert.clone(),
    })?;
    let ask = |path: &str| -> anyhow::Result<Result<Value, String>> {
        match client.get(path) {
            Ok(v) => Ok(Ok(v)),
            Err(e) => match e.downcast_ref::<ServerRefused>() {
                Some(r) if r.status == 403 => Ok(Err(format!(
                    "cannot be known with this token ({}); an admin token can list them",
                    r.message
                ))),
                _ => Err(e.context(format!("asking {}{path}", client.base()))),
            },
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let role = |v: &Value| v.as_str().and_then(|s| s.parse::<Role>().ok());
    let tokens = ask("/api/v1/tokens")?.map(|v| {
        v.get("tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| t.get("revoked_at").is_none_or(Value::is_null))
            .filter(|t| t.get("parent_id").is_none_or(Value::is_null))
            .filter(|t| t.get("run_id").is_none_or(Value::is_null))
            .filter(|t| {
                t.get("expires_at")
                    .and_then(Value::as_i64)
                    .is_none_or(|e| e > now)
            })
            .filter_map(|t| {
                Some(server::TokenFact {
                    name: t.get("name")?.as_str()?.to_owned(),
                    role: role(t.get("role")?)?,
                    expires_at: t.get("expires_at").and_then(Value::as_i64),
                })
            })
            .collect()
    });
    let stacks = ask("/api/v1/stacks")?.map(|v| {
        let roles = |s: &Value, k: &str| -> Vec<Role> {
            s.pointer(&format!("/settings/{k}"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(role)
                .collect()
        };
        v.get("stacks")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|s| s.get("archived").is_none_or(Value::is_null))
            .filter_map(|s| {
                Some(server::StackFact {
                    name: s.get("name")?.as_str()?.to_owned(),
                    production: s.get("production")?.as_bool()?,
                    direct_writes: roles(s, "direct_writes"),
                    apply_from: roles(s, "apply_from"),
                })
            })
            .collect()
    });
    let ms = |v: Option<&Value>| match v {
        Some(Value::String(t)) => airlock_core::time::parse_rfc3339_ms(t).ok(),
        Some(other) => other.as_i64(),
        None => None,
    };
    let verifications = ask("/api/v1/audit?action=backup.verify&limit=100")?.map(|v| {
        v.get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some(server::VerifyFact {
                    at: ms(e.get("at"))?,
                    actor: e.get("actor")?.as_str()?.to_owned(),
                    ok: e.pointer("/detail/ok")?.as_bool()?,
                    exported_at: ms(e.pointer("/detail/exported_at"))?,
                })
            })
            .collect()
    });
    Ok(server::Facts {
        now,
        verifications,
        url: client.base().to_owned(),
        tokens,
        stacks,
    })
}
