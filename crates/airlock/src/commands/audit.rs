//! `airlock audit [--verify]`, `airlock why STACK` and `airlock whoami`.

use std::process::ExitCode;

use airlock_core::time::{parse_duration_ms, parse_rfc3339_ms, rfc3339};
use airlock_store::now_ms;
use serde_json::{json, Value};

use super::client::{s, table, Client};
use crate::cli::{AuditArgs, AuditOutcome, ClientArgs, OutputFormat, WhyArgs};

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    if args.verify {
        let v = c.get("/api/v1/audit/verify")?;
        let ok = v["ok"].as_bool() == Some(true);
        c.print(&v, |v| {
            if ok {
                let unsealed = match v["unsealed"].as_u64() {
                    Some(n) if n > 0 => format!(
                        " ({n} stack-chain event(s) after the last seal; the server seals every second)"
                    ),
                    _ => String::new(),
                };
                format!(
                    "audit chain intact: {} event(s), head {}{unsealed}\n",
                    s(v, "/checked"),
                    s(v, "/head")
                )
            } else {
                format!(
                    "audit chain BROKEN at event {}: {}\n",
                    s(v, "/first_broken"),
                    s(v, "/reason")
                )
            }
        });
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let v = c.get(&list_query(&args)?)?;
    c.print(&v, |v| {
        let rows = v["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                vec![
                    s(e, "/seq"),
                    s(e, "/at"),
                    s(e, "/actor"),
                    s(e, "/action"),
                    s(e, "/stack"),
                    s(e, "/outcome"),
                    e["detail"].to_string().chars().take(120).collect(),
                ]
            })
            .collect();
        table(
            &[
                "SEQ", "TIME", "ACTOR", "ACTION", "STACK", "OUTCOME", "DETAIL",
            ],
            rows,
        )
    });
    if let (Some(before), OutputFormat::Text) = (v["next_before"].as_i64(), c.format) {
        match v["more"].as_u64() {
            Some(0) => {}
            Some(n) => eprintln!(
                "{n} more older event(s): use --before {before} (and --limit N, at most 1000) to see them"
            ),
            None if v["events"].as_array().map_or(0, Vec::len) == args.limit as usize => {
                eprintln!("older events may exist: use --before {before} to see them")
            }
            None => {}
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `/api/v1/audit` query of `airlock audit`'s flags.
fn list_query(args: &AuditArgs) -> anyhow::Result<String> {
    let mut q = format!("/api/v1/audit?limit={}", args.limit);
    if let Some(after) = args.after {
        q.push_str(&format!("&after={after}"));
        return Ok(q);
    }
    let now = now_ms();
    let outcome = args.outcome.map(|o| match o {
        AuditOutcome::Ok => "ok".to_owned(),
        AuditOutcome::Denied => "denied".to_owned(),
    });
    let params = [
        ("before", args.before.map(|b| b.to_string())),
        ("stack", args.stack.clone()),
        ("action", args.action.clone()),
        ("outcome", outcome),
        ("actor", args.actor.clone()),
        (
            "since",
            args.since
                .as_deref()
                .map(|t| time_arg(t, now, "--since"))
                .transpose()?,
        ),
        (
            "until",
            args.until
                .as_deref()
                .map(|t| time_arg(t, now, "--until"))
                .transpose()?,
        ),
    ];
    for (k, v) in params {
        if let Some(v) = v {
            q.push_str(&format!("&{k}={}", query_value(&v)));
        }
    }
    Ok(q)
}

/// `--since`/`--until`: RFC 3339, a date, or a duration before `now`; as RFC 3339.
fn time_arg(t: &str, now: i64, flag: &str) -> anyhow::Result<String> {
    let ms = match parse_duration_ms(t) {
        Ok(d) => now - d,
        Err(_) => parse_rfc3339_ms(t)
            .map_err(|e| anyhow::anyhow!("{flag}: {e}, or a duration ago such as 30m, 1h, 7d"))?,
    };
    Ok(rfc3339(ms))
}

/// Percent-encodes a query parameter value.
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/:".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `airlock why STACK`: the latest refusal on a stack, in full.
pub fn why(args: WhyArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let v = c.get(&format!(
        "/api/v1/audit?limit=1&outcome=denied&stack={}",
        query_value(&args.stack)
    ))?;
    let event = v["events"].get(0).cloned().unwrap_or(Value::Null);
    let out = json!({"stack": args.stack, "refusal": event});
    c.print(&out, |v| {
        let e = &v["refusal"];
        if e.is_null() {
            return format!(
                "no refusal is recorded for stack {} (see `airlock audit --stack {}` for its events)\n",
                s(v, "/stack"),
                s(v, "/stack")
            );
        }
        let mut text = format!(
            "latest refusal on stack {} (audit event {}):\n  time:    {}\n  actor:   {}\n  action:  {}\n",
            s(v, "/stack"),
            s(e, "/seq"),
            s(e, "/at"),
            s(e, "/actor"),
            s(e, "/action"),
        );
        if !e["detail"]["method"].is_null() {
            text.push_str(&format!(
                "  request: {} {}\n",
                s(e, "/detail/method"),
                s(e, "/detail/route")
            ));
        }
        if !e["detail"]["status"].is_null() {
            text.push_str(&format!("  status:  {}\n", s(e, "/detail/status")));
        }
        text.push_str(&format!("  reason:  {}\n", s(e, "/detail/reason")));
        text
    });
    Ok(ExitCode::SUCCESS)
}

pub fn whoami(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args)?;
    let v = c.get("/api/v1/whoami")?;
    c.print(&v, |v| {
        format!(
            "{} ({}), role {}, kind {}\n",
            s(v, "/name"),
            s(v, "/id"),
            s(v, "/role"),
            s(v, "/kind")
        )
    });
    Ok(ExitCode::SUCCESS)
}
