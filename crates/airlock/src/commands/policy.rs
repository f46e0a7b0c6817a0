//! `airlock policy`: server-side Rego policy sets per stack glob (admin). The files are read
//! here with the same rule as `airlock check --policy` (every `.rego` under the directory,
//! except `_test.rego`); the server refuses a set that does not load.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};

use super::check::load_policies;
use super::client::{s, table, time, Client};
use crate::cli::PolicyCommand;

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Add {
            stack_glob,
            dir,
            client,
        } => {
            let c = Client::new(&client)?;
            let mut files = Vec::new();
            for (path, text) in load_policies(&dir)? {
                // Paths relative to DIR: the set does not depend on where it was uploaded from.
                let relative = std::path::Path::new(&path)
                    .strip_prefix(&dir)
                    .with_context(|| format!("{path} is not under {}", dir.display()))?
                    .to_string_lossy()
                    .replace('\\', "/");
                files.push(json!({"path": relative, "text": text}));
            }
            let v = c.send(
                "POST",
                "/api/v1/policies",
                &json!({"stack_glob": stack_glob, "files": files}),
            )?;
            c.print(&v, |v| {
                format!(
                    "added policy set {} (version {} for stacks matching {}, {} file(s), sha256 {})\n",
                    s(v, "/policy_set/id"),
                    s(v, "/policy_set/version"),
                    s(v, "/policy_set/stack_glob"),
                    v.pointer("/policy_set/files")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len),
                    s(v, "/policy_set/sha256"),
                )
            });
        }
        PolicyCommand::List(client) => {
            let c = Client::new(&client)?;
            let v = c.get("/api/v1/policies")?;
            c.print(&v, |v| {
                let rows = v["policy_sets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        vec![
                            s(p, "/id"),
                            s(p, "/stack_glob"),
                            s(p, "/version"),
                            if p["active"] == true {
                                "active".into()
                            } else {
                                format!("removed: {}", s(p, "/removed_reason"))
                            },
                            p["files"].as_array().map_or(0, Vec::len).to_string(),
                            time(p, "/created_at"),
                            s(p, "/created_by"),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "STACKS",
                        "VERSION",
                        "STATUS",
                        "FILES",
                        "CREATED",
                        "CREATED BY",
                    ],
                    rows,
                )
            });
        }
        PolicyCommand::Show { id, client } => {
            let c = Client::new(&client)?;
            let v = c.get(&format!("/api/v1/policies/{id}"))?;
            c.print(&v, |v| {
                let p = &v["policy_set"];
                let mut out = format!(
                    "policy set {} · version {} for stacks matching {}\ncreated {} by {}\nsha256 {}\n",
                    s(p, "/id"),
                    s(p, "/version"),
                    s(p, "/stack_glob"),
                    time(p, "/created_at"),
                    s(p, "/created_by"),
                    s(p, "/sha256"),
                );
                if p["active"] != true {
                    out.push_str(&format!(
                        "REMOVED {} by {}: {}\n",
                        time(p, "/removed_at"),
                        s(p, "/removed_by"),
                        s(p, "/removed_reason")
                    ));
                }
                for f in p["files"].as_array().into_iter().flatten() {
                    // The text arrives made printable; its line breaks and tabs are safe.
                    let text = s(f, "/text").replace("\\u{a}", "\n").replace("\\u{9}", "\t");
                    out.push_str(&format!("\n--- {}\n{}\n", s(f, "/path"), text));
                }
                out
            });
        }
        PolicyCommand::Remove { id, reason, client } => {
            let c = Client::new(&client)?;
            let v = c.send(
                "POST",
                &format!("/api/v1/policies/{id}/remove"),
                &json!({ "reason": reason }),
            )?;
            c.print(&v, |v| {
                format!(
                    "removed policy set {} (stacks matching {}): {}\n",
                    s(v, "/policy_set/id"),
                    s(v, "/policy_set/stack_glob"),
                    s(v, "/policy_set/removed_reason")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock __rego-eval`: evaluates the job on stdin (`airlock_policy::rego::read_job`) and prints
/// its outcome, after limiting this process to the sandbox's memory and CPU: the server runs a
/// repository's Rego (the planner's text) only this way (`airlock-server`'s `rego_sandbox`).
pub fn rego_eval() -> anyhow::Result<ExitCode> {
    use std::io::{Read, Write};

    use airlock_policy::rego::{self, RegoError, RegoRunner};
    use rustix::process::{setrlimit, Resource, Rlimit};
    for (resource, limit) in [
        (Resource::As, rego::SANDBOX_MEMORY_BYTES),
        (Resource::Cpu, rego::SANDBOX_CPU_SECONDS),
    ] {
        let limit = Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        };
        setrlimit(resource, limit).context("limiting the Rego evaluator")?;
    }
    let mut job = Vec::new();
    std::io::stdin().read_to_end(&mut job)?;
    let outcome = match rego::read_job(&job) {
        Ok((files, text)) => rego::InProcess.run(&files, text),
        Err(e) => Err(RegoError::Eval(format!("the job does not read: {e}"))),
    };
    std::io::stdout().write_all(rego::write_outcome(&outcome).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
