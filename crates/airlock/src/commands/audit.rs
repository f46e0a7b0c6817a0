//! `airlock audit [--verify]` and `airlock whoami`.

use std::process::ExitCode;

use super::client::{s, table, Client};
use crate::cli::{AuditArgs, ClientArgs};

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    if args.verify {
        let v = c.get("/api/v1/audit/verify")?;
        let ok = v["ok"].as_bool() == Some(true);
        c.print(&v, |v| {
            if ok {
                format!(
                    "audit chain intact: {} event(s), head {}\n",
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
    let v = c.get(&format!(
        "/api/v1/audit?after={}&limit={}",
        args.after, args.limit
    ))?;
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
