//! `airlock state history|show|pull|diff|restore|verify`.

use std::process::ExitCode;

use serde_json::{json, Value};

use super::client::{s, stack_segment, table, time, Client};
use crate::cli::StateCommand;

fn list(v: &Value, key: &str) -> Vec<String> {
    v["diff"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

pub fn run(cmd: StateCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StateCommand::History { stack, client } => {
            let c = Client::new(&client)?;
            let v = c.get(&format!(
                "/api/v1/stacks/{}/versions",
                stack_segment(&stack)
            ))?;
            c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        let note = match x["restored_from"].as_u64() {
                            Some(from) => format!("restore of {from}: {}", s(x, "/reason")),
                            None => String::new(),
                        };
                        vec![
                            s(x, "/serial"),
                            time(x, "/created_at"),
                            s(x, "/author"),
                            s(x, "/size"),
                            s(x, "/run_id"),
                            s(x, "/sha256").chars().take(12).collect(),
                            note,
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    // An empty table reads like a failure; say what the next write will be.
                    return format!(
                        "{stack}: no versions yet (the first `terraform apply` or `airlock apply` writes serial 1)\n"
                    );
                }
                table(
                    &["SERIAL", "TIME", "AUTHOR", "BYTES", "RUN", "SHA256", "NOTE"],
                    rows,
                )
            });
        }
        StateCommand::Show {
            stack,
            version,
            client,
        } => {
            let c = Client::new(&client)?;
            let ver = version.map_or("current".into(), |v| v.to_string());
            let v = c.get(&format!(
                "/api/v1/stacks/{}/versions/{ver}",
                stack_segment(&stack)
            ))?;
            c.print(&v, |v| {
                let m = &v["version"];
                let mut out = format!(
                    "stack:     {}\nserial:    {}\nlineage:   {}\nauthor:    {}\nrun:       {}\ntime:      {}\nsha256:    {}\nterraform: {}\n",
                    s(m, "/stack"),
                    s(m, "/serial"),
                    s(m, "/lineage"),
                    s(m, "/author"),
                    s(m, "/run_id"),
                    time(m, "/created_at"),
                    s(m, "/sha256"),
                    s(v, "/terraform_version")
                );
                if let Some(from) = m["restored_from"].as_u64() {
                    out.push_str(&format!("restored:  from serial {from}: {}\n", s(m, "/reason")));
                }
                let rows: Vec<Vec<String>> = v["instances"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        let mut flags = Vec::new();
                        if i["tainted"].as_bool() == Some(true) {
                            flags.push("tainted".to_owned());
                        }
                        if let Some(d) = i["deposed"].as_str() {
                            flags.push(format!("deposed {d}"));
                        }
                        if let Some(p) = i["protected"].as_str() {
                            flags.push(format!("protected: {p}"));
                        }
                        vec![s(i, "/address"), flags.join("; ")]
                    })
                    .collect();
                out.push_str(&format!("\n{} instance(s):\n", rows.len()));
                out.push_str(&table(&["ADDRESS", "NOTES"], rows));
                let outputs: Vec<String> = v["outputs"].as_array().into_iter().flatten().map(|o| if o["sensitive"].as_bool() == Some(true) { format!("{} (sensitive)", s(o, "/name")) } else { s(o, "/name") }).collect();
                out.push_str(&format!("\noutputs: {}\n", if outputs.is_empty() { "-".into() } else { outputs.join(", ") }));
                out
            });
        }
        StateCommand::Pull {
            stack,
            version,
            client,
        } => {
            let c = Client::new(&client)?;
            let ver = version.map_or("current".into(), |v| v.to_string());
            let bytes = c.get_bytes(&format!(
                "/api/v1/stacks/{}/versions/{ver}/raw",
                stack_segment(&stack)
            ))?;
            crate::out_bytes(&bytes);
        }
        StateCommand::Diff {
            stack,
            from,
            to,
            client,
        } => {
            let c = Client::new(&client)?;
            let v = c.get(&format!(
                "/api/v1/stacks/{}/diff?from={from}&to={to}",
                stack_segment(&stack)
            ))?;
            c.print(&v, |v| {
                let mut out = format!("{stack}: serial {from} -> {to}\n");
                for (sign, key) in [("+", "added"), ("-", "removed"), ("~", "changed")] {
                    for a in list(v, key) {
                        out.push_str(&format!("{sign} {a}\n"));
                    }
                }
                for o in list(v, "outputs_changed") {
                    out.push_str(&format!("~ output.{o}\n"));
                }
                out.push_str(&format!(
                    "{} added, {} removed, {} changed\n",
                    list(v, "added").len(),
                    list(v, "removed").len(),
                    list(v, "changed").len()
                ));
                out
            });
        }
        StateCommand::Restore {
            stack,
            version,
            reason,
            client,
        } => {
            let c = Client::new(&client)?;
            let v = c.send(
                "POST",
                &format!("/api/v1/stacks/{}/restore", stack_segment(&stack)),
                &json!({"serial": version, "reason": reason}),
            )?;
            c.print(&v, |v| {
                format!(
                    "restored serial {version} of {stack} as new serial {}\n",
                    s(v, "/version/serial")
                )
            });
        }
        StateCommand::Verify { stack, client } => {
            let c = Client::new(&client)?;
            let v = c.send("POST", "/api/v1/verify", &json!({"stack": stack}))?;
            let failures = v["report"]["failures"].as_array().map_or(0, Vec::len);
            c.print(&v, |v| {
                let mut out = format!(
                    "checked {} version(s): {failures} failure(s)\n",
                    s(v, "/report/checked")
                );
                for f in v["report"]["failures"].as_array().into_iter().flatten() {
                    out.push_str(&format!("  {}\n", f.as_str().unwrap_or_default()));
                }
                out
            });
            if failures > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
