//! `airlock stack ...` and `airlock backend-config`.

use std::process::ExitCode;

use serde_json::{json, Value};

use super::client::{s, stack_segment, table, time, Client};
use crate::cli::{BackendConfigArgs, ClientArgs, OutputFormat, StackCommand};

fn settings_text(v: &Value) -> String {
    let st = &v["stack"];
    let roles: Vec<String> = st["settings"]["direct_writes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    format!(
        "stack:              {}\nproduction:         {}\nlineage:            {}\ndirect writes:      {}\nrequired approvals: {}\nprotected types:    {}\nprotected addresses:{}\n",
        s(st, "/name"),
        s(st, "/production"),
        s(st, "/lineage"),
        if roles.is_empty() { "nobody".into() } else { roles.join(", ") },
        s(st, "/settings/required_approvals"),
        join(&st["settings"]["protect_types"]),
        {
            let a = join(&st["settings"]["protect_addresses"]);
            format!(" {a}")
        }
    )
}

fn join(v: &Value) -> String {
    let items: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

pub fn run(cmd: StackCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StackCommand::Create {
            stack,
            production,
            client,
        } => {
            let c = Client::new(&client)?;
            let v = c.send(
                "POST",
                "/api/v1/stacks",
                &json!({"name": stack, "production": production}),
            )?;
            c.print(&v, |v| {
                format!(
                    "created stack {}{}\nnext: airlock backend-config {}\n",
                    s(v, "/stack/name"),
                    if production { " (production)" } else { "" },
                    s(v, "/stack/name")
                )
            });
        }
        StackCommand::List(client) => {
            let c = Client::new(&client)?;
            let v = c.get("/api/v1/stacks")?;
            c.print(&v, |v| {
                let rows = v["stacks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|st| {
                        vec![
                            if st.get("archived").is_some_and(|a| !a.is_null()) {
                                format!("{} (deleted)", s(st, "/name"))
                            } else {
                                s(st, "/name")
                            },
                            s(st, "/production"),
                            s(st, "/lineage"),
                            time(st, "/created_at"),
                            super::drift::status_text(&st["drift"]),
                        ]
                    })
                    .collect();
                table(
                    &["STACK", "PRODUCTION", "LINEAGE", "CREATED", "DRIFT"],
                    rows,
                )
            });
        }
        StackCommand::Show { stack, client } => {
            let c = Client::new(&client)?;
            let v = c.get(&format!("/api/v1/stacks/{}", stack_segment(&stack)))?;
            c.print(&v, |v| {
                let mut out = settings_text(v);
                if v["stack"].get("archived").is_some_and(|a| !a.is_null()) {
                    out.push_str(&format!(
                        "deleted:            {} by {} ({}); archived: history only, no new writes, locks or runs\n",
                        time(v, "/stack/archived/at"),
                        s(v, "/stack/archived/by"),
                        s(v, "/stack/archived/reason")
                    ));
                }
                out.push_str(&match v.get("lock").filter(|l| !l.is_null()) {
                    Some(l) => format!(
                        "lock:               {} by {} for {} since {}\n",
                        s(l, "/id"),
                        s(l, "/owner"),
                        s(l, "/operation"),
                        time(l, "/created_at")
                    ),
                    None => "lock:               unlocked\n".into(),
                });
                out.push_str(&match v.get("current").filter(|c| !c.is_null()) {
                    Some(cur) => format!(
                        "current version:    serial {} by {} at {} ({} bytes)\n",
                        s(cur, "/serial"),
                        s(cur, "/author"),
                        time(cur, "/created_at"),
                        s(cur, "/size")
                    ),
                    None => "current version:    none yet\n".into(),
                });
                out.push_str(&format!("instances:          {}\n", s(v, "/instances")));
                out.push_str(&format!(
                    "drift:              {}\n",
                    super::drift::status_text(&v["drift"])
                ));
                let protected: Vec<String> = v["protected"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("  {}  ({})", s(p, "/address"), s(p, "/reason")))
                    .collect();
                out.push_str(&format!("protected instances: {}\n", protected.len()));
                for p in protected {
                    out.push_str(&p);
                    out.push('\n');
                }
                out
            });
        }
        StackCommand::Protect {
            stack,
            types,
            addresses,
            client,
        } => {
            let (c, v) = stack_call(
                &client,
                "POST",
                &stack,
                "protect",
                &json!({"types": types, "addresses": addresses}),
            )?;
            c.print(&v, settings_text);
        }
        StackCommand::Unprotect {
            stack,
            types,
            addresses,
            client,
        } => {
            let (c, v) = stack_call(
                &client,
                "POST",
                &stack,
                "unprotect",
                &json!({"types": types, "addresses": addresses}),
            )?;
            c.print(&v, settings_text);
        }
        StackCommand::Delete {
            stack,
            reason,
            client,
        } => {
            let (c, v) = stack_call(
                &client,
                "POST",
                &stack,
                "archive",
                &json!({"reason": reason}),
            )?;
            c.print(&v, |v| {
                format!(
                    "deleted stack {stack}: archived by {} at {}; its history stays readable (airlock state history {stack}), it takes no new writes, locks or runs, and its name stays taken\n",
                    s(v, "/stack/archived/by"),
                    time(v, "/stack/archived/at"),
                )
            });
        }
        StackCommand::Settings {
            stack,
            direct_writes,
            required_approvals,
            client,
        } => {
            let (c, v) = stack_call(
                &client,
                "PATCH",
                &stack,
                "settings",
                &json!({"direct_writes": direct_writes, "required_approvals": required_approvals}),
            )?;
            c.print(&v, settings_text);
        }
        StackCommand::AllowRemoval {
            stack,
            addresses,
            ttl,
            reason,
            client,
        } => {
            let (c, v) = stack_call(
                &client,
                "POST",
                &stack,
                "grants",
                &json!({"addresses": addresses, "ttl": ttl, "reason": reason}),
            )?;
            c.print(&v, |v| {
                format!(
                    "removal grant {} on {} for {} (single use, expires {})\n",
                    s(v, "/grant/id"),
                    stack,
                    join(&v["grant"]["addresses"]),
                    time(v, "/grant/expires_at")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock backend-config S`: checks the stack exists, then prints the backend block.
pub fn backend_config(args: BackendConfigArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.client)?;
    c.get(&format!("/api/v1/stacks/{}", stack_segment(&args.stack)))?;
    let address = format!("{}/state/{}", c.base(), args.stack);
    if c.format == OutputFormat::Json {
        // A `backend.tf.json` document: Terraform's JSON syntax of the block below.
        let doc = serde_json::json!({"terraform": {"backend": {"http": {
            "address": address,
            "lock_address": address,
            "unlock_address": address,
        }}}});
        crate::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    crate::out(&format!(
        r#"terraform {{
  backend "http" {{
    address        = "{address}"
    lock_address   = "{address}"
    unlock_address = "{address}"
  }}
}}

# Credentials never go in this file. Terraform reads them from the environment:
#   export TF_HTTP_USERNAME=airlock
#   export TF_HTTP_PASSWORD="$AIRLOCK_TOKEN"
"#
    ));
    Ok(ExitCode::SUCCESS)
}

/// Sends `body` to `/api/v1/stacks/{stack}/{what}`; returns the client (for printing) and the
/// answer.
fn stack_call(
    client: &ClientArgs,
    method: &str,
    stack: &str,
    what: &str,
    body: &Value,
) -> anyhow::Result<(Client, Value)> {
    let c = Client::new(client)?;
    let v = c.send(
        method,
        &format!("/api/v1/stacks/{}/{what}", stack_segment(stack)),
        body,
    )?;
    Ok((c, v))
}
