//! `airlock token create|list|revoke` and `airlock user create|list`.

use std::process::ExitCode;

use serde_json::json;

use super::client::{s, table, time, Client};
use crate::cli::{TokenCommand, UserCommand};

pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            stacks,
            ttl,
            user,
            client,
        } => {
            let c = Client::new(&client)?;
            let mut body = json!({"name": name, "role": role, "stacks": stacks, "ttl": ttl});
            if let Some(u) = user {
                body["user"] = json!(u);
            }
            let v = c.send("POST", "/api/v1/tokens", &body)?;
            c.print(&v, |v| {
                format!(
                    "created token {} ({}, user {}, role {}, expires {})\nsecret (shown once): {}\n",
                    s(v, "/token/name"),
                    s(v, "/token/id"),
                    s(v, "/token/user"),
                    s(v, "/token/role"),
                    time(v, "/token/expires_at"),
                    s(v, "/secret")
                )
            });
        }
        TokenCommand::List(client) => {
            let c = Client::new(&client)?;
            let v = c.get("/api/v1/tokens")?;
            c.print(&v, |v| {
                let rows = v["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let status = if !t["revoked_at"].is_null() {
                            "revoked"
                        } else {
                            "active"
                        };
                        vec![
                            s(t, "/id"),
                            s(t, "/name"),
                            s(t, "/user"),
                            s(t, "/role"),
                            t["stacks"].as_array().map_or("*".into(), |a| {
                                if a.is_empty() {
                                    "*".into()
                                } else {
                                    a.iter()
                                        .map(|x| x.as_str().unwrap_or(""))
                                        .collect::<Vec<_>>()
                                        .join(",")
                                }
                            }),
                            time(t, "/expires_at"),
                            status.into(),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "NAME", "USER", "ROLE", "STACKS", "EXPIRES", "STATUS"],
                    rows,
                )
            });
        }
        TokenCommand::Revoke { id, client } => {
            let c = Client::new(&client)?;
            let v = c.send("DELETE", &format!("/api/v1/tokens/{id}"), &json!({}))?;
            c.print(&v, |v| {
                format!(
                    "revoked token {} ({})\n",
                    s(v, "/token/name"),
                    s(v, "/token/id")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_user(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Create { name, client } => {
            let c = Client::new(&client)?;
            let v = c.send("POST", "/api/v1/users", &json!({ "name": name }))?;
            c.print(&v, |v| format!("created user {}\n", s(v, "/user/name")));
        }
        UserCommand::List(client) => {
            let c = Client::new(&client)?;
            let v = c.get("/api/v1/users")?;
            c.print(&v, |v| {
                let rows = v["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| vec![s(u, "/name"), time(u, "/created_at"), s(u, "/created_by")])
                    .collect();
                table(&["NAME", "CREATED", "CREATED BY"], rows)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
