//! `airlock token create|list|revoke` and `airlock user create|list`.

use std::process::ExitCode;

use serde_json::json;

use airlock_core::time::parse_duration_ms;
use airlock_core::Role;
use airlock_server::tokens;
use airlock_store::{now_ms, valid_user_name, NewAudit, NewToken, NewUser};
use serde_json::Value;

use super::client::{print_as, printable, s, table, time, Client};
use crate::cli::{DatabaseArgs, OutputFormat, TokenCommand, UserCommand};

pub fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            stacks,
            ttl,
            user,
            data_dir,
            database_url,
            client,
        } => {
            if data_dir.is_some() || database_url.is_some() {
                let db = DatabaseArgs {
                    data_dir: data_dir.unwrap_or_default(),
                    database_url,
                };
                let v = create_offline(&db, name, &role, stacks, ttl, user)?;
                print_created(client.format, &v);
                return Ok(ExitCode::SUCCESS);
            }
            let c = Client::new(&client)?;
            let mut body = json!({"name": name, "role": role, "stacks": stacks, "ttl": ttl});
            if let Some(u) = user {
                body["user"] = json!(u);
            }
            let v = c.send("POST", "/api/v1/tokens", &body)?;
            print_created(c.format, &v);
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
                let mut out = table(
                    &["ID", "NAME", "USER", "ROLE", "STACKS", "EXPIRES", "STATUS"],
                    rows,
                );
                // Why the server revoked a token itself (the scoped-mint rule, at start).
                for t in v["tokens"].as_array().into_iter().flatten() {
                    if t["revoked_reason"].is_string() {
                        out.push_str(&format!(
                            "{} was revoked by the server: {}\n",
                            s(t, "/id"),
                            s(t, "/revoked_reason")
                        ));
                    }
                }
                out
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

fn print_created(format: OutputFormat, v: &Value) {
    print_as(format, v, |v| {
        let mut out = format!(
            "created token {} ({}, user {}, role {}, expires {})\nsecret (shown once): {}\n",
            s(v, "/token/name"),
            s(v, "/token/id"),
            s(v, "/token/user"),
            s(v, "/token/role"),
            time(v, "/token/expires_at"),
            s(v, "/secret")
        );
        // The server clamped the expiry to the minting token's.
        if v["note"].is_string() {
            out.push_str(&format!("note: {}\n", s(v, "/note")));
        }
        out
    });
}

/// Who an offline command acted as, for the audit log: the local account, not a token.
fn offline_actor() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or_else(
        |_| std::env::var("USER").unwrap_or_else(|_| "?".into()),
        |m| m.uid().to_string(),
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map_or_else(|_| "unknown host".into(), |h| h.trim().to_owned());
    format!("offline (uid {uid} on {host})")
}

/// `token create --data-dir D | --database-url U`: mints a token in the store itself, for when
/// no admin token is left. Whoever can open the database owns the server anyway; the event is
/// audited with the local account.
fn create_offline(
    db: &DatabaseArgs,
    name: String,
    role: &str,
    stacks: Vec<String>,
    ttl: Option<String>,
    user: Option<String>,
) -> anyhow::Result<Value> {
    let role: Role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let name = name.trim().to_owned();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        anyhow::bail!("token name must be 1-100 printable characters");
    }
    if let Some(bad) = stacks.iter().find(|g| !airlock_server::valid_glob(g)) {
        anyhow::bail!("invalid stack glob {bad:?}: use stack-name characters and *, e.g. prod/*");
    }
    let expires_at = ttl
        .as_deref()
        .map(parse_duration_ms)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?
        .map(|d| now_ms() + d);
    let generated = tokens::generate();
    let user = match (user, role) {
        (Some(u), _) => {
            valid_user_name(&u).map_err(|e| anyhow::anyhow!(e))?;
            u
        }
        (None, Role::Admin | Role::Approver) => anyhow::bail!(
            "a {role} token must belong to a user: add --user NAME (the first admin is `admin`)"
        ),
        (None, _) => generated.id.clone(),
    };
    if db.database_url.is_none() && !db.data_dir.join("airlock.db").exists() {
        anyhow::bail!(
            "no airlock database in {}: pass the --data-dir the server runs with",
            db.data_dir.display()
        );
    }
    let store = super::server::open_store(db)?;
    let actor = offline_actor();
    if user != generated.id {
        match store.create_user(
            NewUser {
                name: user.clone(),
                created_by: actor.clone(),
                forge_logins: Vec::new(),
            },
            NewAudit::ok(
                &actor,
                "user.create",
                None,
                json!({"user": user, "offline": true}),
            ),
        ) {
            Ok(_) | Err(airlock_store::StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let new = NewToken {
        id: generated.id.clone(),
        secret_hash: generated.hash,
        name: name.clone(),
        role,
        stacks: stacks.clone(),
        expires_at,
        created_by: actor.clone(),
        run_id: None,
        user: user.clone(),
        parent_id: None,
        mint_limit: None,
        read_stacks: Vec::new(),
        // The operator: no token minted it.
        minted_by: None,
        job_ref: None,
    };
    let audit = NewAudit::ok(
        &actor,
        "token.create",
        None,
        json!({"token": generated.id, "name": name, "role": role, "stacks": stacks, "expires_at": expires_at, "user": user, "offline": true}),
    );
    let record = store.create_token(new, audit)?;
    Ok(json!({ "token": record, "secret": generated.secret }))
}

/// A user's forge logins, as the server sent them (printable).
fn forge_logins(user: &Value) -> Vec<String> {
    user["forge_logins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(|l| printable(l).into_owned()))
        .collect()
}

/// " (forge logins: github:alice)", or nothing.
fn logins_words(user: &Value) -> String {
    let logins = forge_logins(user);
    if logins.is_empty() {
        String::new()
    } else {
        format!(" (forge logins: {})", logins.join(", "))
    }
}

pub fn run_user(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Create {
            name,
            forge_logins,
            client,
        } => {
            let c = Client::new(&client)?;
            let body = json!({ "name": name, "forge_logins": forge_logins });
            let v = c.send("POST", "/api/v1/users", &body)?;
            c.print(&v, |v| {
                format!(
                    "created user {}{}\n",
                    s(v, "/user/name"),
                    logins_words(&v["user"])
                )
            });
        }
        UserCommand::AddForgeLogin {
            name,
            login,
            client,
        } => {
            let c = Client::new(&client)?;
            valid_user_name(&name).map_err(|e| anyhow::anyhow!(e))?;
            let uri = format!("/api/v1/users/{name}/forge-logins");
            let v = c.send("POST", &uri, &json!({ "login": login }))?;
            c.print(&v, |v| {
                format!("user {}{}\n", s(v, "/user/name"), logins_words(&v["user"]))
            });
        }
        UserCommand::List(client) => {
            let c = Client::new(&client)?;
            let v = c.get("/api/v1/users")?;
            c.print(&v, |v| {
                let rows = v["users"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|u| {
                        vec![
                            s(u, "/name"),
                            time(u, "/created_at"),
                            s(u, "/created_by"),
                            forge_logins(u).join(" "),
                        ]
                    })
                    .collect();
                table(&["NAME", "CREATED", "CREATED BY", "FORGE LOGINS"], rows)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
