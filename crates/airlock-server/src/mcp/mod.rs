//! The Model Context Protocol for AI agents: JSON-RPC 2.0 over MCP's streamable HTTP transport
//! at `/mcp` (and, through the `airlock mcp` bridge, over stdio). Agents read, judge plans and
//! propose runs; no tool approves, applies, writes state or changes settings.
//!
//! **Invariant:** the tools a caller is offered are derived from its identity: a tool is listed
//! and callable iff the caller's role holds the permission of every API route it calls, read from
//! `router::table()`, and only routes needing `Read` or `CreateRun` can ever back a tool
//! ([`tools::PROPOSAL_PERMISSIONS`]). Every call goes through `inproc::call` with the caller's own
//! token, so MCP adds no permission of its own. Tests: `http::mcp`, `it::mcp`.
//!
//! Stateless: every POST carries the bearer token and is answered on its own, so there is no
//! `Mcp-Session-Id` (nothing would live in a session that the token does not already decide),
//! and no server-to-client stream (GET and DELETE answer 405, as the transport allows).

mod tools;

use std::sync::Arc;

use airlock_store::NewAudit;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

pub use tools::{offered, Tool, PROPOSAL_PERMISSIONS, TOOLS};

use crate::auth::Principal;
use crate::AppState;

/// Protocol revisions served through the `initialize` handshake, newest first. A client asking
/// for another one is answered with the newest (the spec's negotiation); one that then does not
/// speak it disconnects. The stateless 2026-07-28 envelope (`server/discover`) is not served:
/// clients that probe for it fall back to the handshake on the "method not found" answer.
pub const PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The largest JSON-RPC message accepted (a `check_plan` carries a plan JSON inline).
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// The header the `airlock mcp` bridge sends: its caller may use the tools that run in the
/// agent's checkout (`propose_change`), which the bridge runs itself after the server allowed
/// and audited the call.
pub const BRIDGE_HEADER: &str = "airlock-mcp-bridge";

/// The longest error text a tool result carries, in characters.
const MAX_ERROR_CHARS: usize = 2000;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;

/// What a tool call is made by: the authenticated caller, its secret (for `inproc::call`) and the
/// transport it came through.
pub struct Caller {
    /// The authenticated token.
    pub principal: Principal,
    /// Its secret, sent again with each in-process API call.
    pub secret: String,
    /// Whether the stdio bridge relays the call (it runs the local tools).
    pub bridge: bool,
}

fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Answers one JSON-RPC message: `None` for notifications and responses (nothing to answer).
pub async fn handle(state: &Arc<AppState>, caller: &Caller, msg: Value) -> Option<Value> {
    let Value::Object(obj) = msg else {
        let why = if msg.is_array() {
            "batches are not supported (removed from MCP in 2025-06-18): send one message per request"
        } else {
            "a JSON-RPC message is a JSON object"
        };
        return Some(error(Value::Null, INVALID_REQUEST, why));
    };
    let id = obj.get("id").cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(error(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "jsonrpc must be \"2.0\"",
        ));
    }
    let Some(method) = obj.get("method") else {
        // A response to a request of ours: we send none, so there is nothing to match it with.
        return None;
    };
    let Some(id) = id else {
        // A notification (`notifications/initialized`, `notifications/cancelled`, ...): every
        // request is answered on its own, so none changes anything here.
        return None;
    };
    if !(id.is_string() || id.is_i64() || id.is_u64()) {
        return Some(error(
            Value::Null,
            INVALID_REQUEST,
            "id must be a string or an integer",
        ));
    }
    let Some(method) = method.as_str() else {
        return Some(error(id, INVALID_REQUEST, "method must be a string"));
    };
    let params = obj.get("params").cloned().unwrap_or(json!({}));
    if !params.is_object() {
        return Some(error(id, INVALID_PARAMS, "params must be an object"));
    }
    Some(match method {
        "initialize" => result(id, initialize(&params)),
        "ping" => result(id, json!({})),
        "tools/list" => {
            let list: Vec<Value> = offered(caller.principal.role, caller.bridge)
                .map(Tool::listing)
                .collect();
            result(id, json!({ "tools": list }))
        }
        "tools/call" => match call(state, caller, &params).await {
            Ok(r) => result(id, r),
            Err(message) => error(id, INVALID_PARAMS, message),
        },
        other => error(
            id,
            METHOD_NOT_FOUND,
            format!("method {other:?} is not served: airlock offers initialize, ping, tools/list and tools/call"),
        ),
    })
}

fn initialize(params: &Value) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked
        .filter(|v| PROTOCOL_VERSIONS.contains(v))
        .unwrap_or(PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "airlock", "title": "airlock", "version": env!("CARGO_PKG_VERSION")},
        "instructions": tools::INSTRUCTIONS,
    })
}

/// `tools/call`: a tool the caller is offered, run, and audited (tool and stack, never the
/// arguments). A tool that fails answers an `isError` result, so the session goes on; an unknown
/// or unoffered tool is a protocol error (-32602), as the specification says.
async fn call(state: &Arc<AppState>, caller: &Caller, params: &Value) -> Result<Value, String> {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .ok_or("tools/call needs the tool's name")?;
    let args = params.get("arguments").cloned().unwrap_or(json!({}));
    let p = &caller.principal;
    let Some(tool) = TOOLS.iter().find(|t| t.name == name) else {
        audit(state, p, name, None, "denied", caller.bridge).await;
        return Err(format!(
            "unknown tool {:?}: tools/list names the tools this token may use",
            truncate(name, 100)
        ));
    };
    if !offered(p.role, caller.bridge).any(|t| t.name == name) {
        audit(state, p, name, None, "denied", caller.bridge).await;
        let why = if tool.local && !caller.bridge {
            "it runs terraform in the agent's checkout: `airlock mcp` (stdio) offers it".to_owned()
        } else {
            format!("{} tokens do not hold the permissions it needs", p.role)
        };
        return Err(format!("tool {name} is not offered to this token: {why}"));
    }
    let mut ctx = tools::Ctx::new(state, caller, tool);
    let outcome = if args.is_object() {
        tools::run(&mut ctx, args).await
    } else {
        Err("arguments must be a JSON object".into())
    };
    // A local tool is run by the bridge once this answers: what is recorded here is only that
    // the server authorized a caller that declared itself the stdio bridge (a header any client
    // can send) to plan locally; whether a plan ran shows in the run's own audit events.
    let outcome_name = match (&outcome, tool.local) {
        (Ok(_), true) => LOCAL_AUTHORIZED,
        (Ok(_), false) => "ok",
        (Err(_), _) => "error",
    };
    audit(
        state,
        p,
        name,
        ctx.stack.as_deref(),
        outcome_name,
        caller.bridge,
    )
    .await;
    Ok(match outcome {
        Ok(structured) => {
            let text = serde_json::to_string_pretty(&structured).unwrap_or_default();
            json!({"content": [{"type": "text", "text": text}], "structuredContent": structured, "isError": false})
        }
        // An error may quote the caller's input: bounded, whatever the input.
        Err(message) => {
            let text = truncate(&message, MAX_ERROR_CHARS);
            json!({"content": [{"type": "text", "text": text}], "isError": true})
        }
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// The audit result of a local tool the server let the caller run.
const LOCAL_AUTHORIZED: &str =
    "authorized for a local plan by the stdio bridge (client-declared; no run is created here)";

/// One audit event per tool call: `mcp.tool` with the tool, its outcome and the transport.
async fn audit(
    state: &Arc<AppState>,
    p: &Principal,
    tool: &str,
    stack: Option<&str>,
    outcome: &str,
    bridge: bool,
) {
    let detail = json!({
        "tool": truncate(tool, 100),
        "result": outcome,
        "transport": if bridge { "stdio" } else { "http" },
    });
    let event = if outcome == "denied" {
        NewAudit::denied(&p.display(), "mcp.tool", stack, detail)
    } else {
        NewAudit::ok(&p.display(), "mcp.tool", stack, detail)
    };
    let store = Arc::clone(&state.store);
    let _ = tokio::task::spawn_blocking(move || store.append_audit(event)).await;
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// Whether a browser's `Origin` may call: only the server's own public origin
/// (`--public-url`). A DNS-rebinding page has another origin; clients that are not browsers send
/// none. Without a public URL, no browser origin is admitted.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let own = state.config.public_url.as_deref().map(origin_of);
    if own.as_deref() == Some(origin) && !origin.is_empty() {
        return Ok(());
    }
    Err(format!(
        "Origin {:?} may not call /mcp: only the server's own origin (--public-url) may, to stop DNS-rebinding pages",
        truncate(origin, 200)
    ))
}

/// `scheme://host[:port]` of a URL.
pub(crate) fn origin_of(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.find("://") {
        Some(i) => {
            let rest = url.get(i + 3..).unwrap_or_default();
            let host = rest.split('/').next().unwrap_or_default();
            format!("{}{host}", url.get(..i + 3).unwrap_or_default())
        }
        None => url.to_owned(),
    }
}

/// `POST /mcp`: one JSON-RPC message in, its answer out as `application/json` (202 without a
/// body for notifications and responses).
pub async fn post(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    // The message (at most `MAX_MESSAGE`) is read before any refusal: a refusal sent while part
    // of the body is still on its way closes the connection, and a client that sends its next
    // request on it (the SDK's fallback from `server/discover` to `initialize` does) sees the
    // server hang up without an answer.
    let bytes = match crate::stacks::read_body(body, MAX_MESSAGE).await {
        Ok(b) => b,
        Err(e) => {
            let status = if e.is_too_large() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let message = format!("message refused: at most {MAX_MESSAGE} bytes per message");
            return json_response(status, &error(Value::Null, INVALID_REQUEST, message));
        }
    };
    if let Err(why) = origin_allowed(&state, &parts.headers) {
        return json_response(
            StatusCode::FORBIDDEN,
            &error(Value::Null, INVALID_REQUEST, why),
        );
    }
    if let Some(v) = parts.headers.get("mcp-protocol-version") {
        let v = v.to_str().unwrap_or_default();
        if !PROTOCOL_VERSIONS.contains(&v) {
            let message = format!(
                "unsupported MCP-Protocol-Version {:?}; this server speaks {}",
                truncate(v, 50),
                PROTOCOL_VERSIONS.join(", ")
            );
            return json_response(
                StatusCode::BAD_REQUEST,
                &error(Value::Null, INVALID_REQUEST, message),
            );
        }
    }
    let accepts_json = parts.headers.get_all(header::ACCEPT).iter().all(|v| {
        let v = v.to_str().unwrap_or_default();
        v.contains("application/json") || v.contains("*/*") || v.contains("application/*")
    });
    if !accepts_json {
        return json_response(
            StatusCode::NOT_ACCEPTABLE,
            &error(
                Value::Null,
                INVALID_REQUEST,
                "this server answers application/json: accept it",
            ),
        );
    }
    let msg: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &error(Value::Null, PARSE_ERROR, format!("not JSON: {e}")),
            )
        }
    };
    let Some(secret) = crate::auth::bearer_secret(&parts.headers) else {
        // authorize let the request in, so a credential was there.
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let caller = Caller {
        principal,
        secret,
        bridge: parts.headers.contains_key(BRIDGE_HEADER),
    };
    match handle(&state, &caller, msg).await {
        Some(answer) => {
            let status = match answer.pointer("/error/code").and_then(Value::as_i64) {
                Some(PARSE_ERROR | INVALID_REQUEST) => StatusCode::BAD_REQUEST,
                _ => StatusCode::OK,
            };
            json_response(status, &answer)
        }
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// `GET` and `DELETE /mcp`: no server-initiated stream and no session to end.
pub async fn not_offered() -> Response {
    let mut resp = (
        StatusCode::METHOD_NOT_ALLOWED,
        Body::from("airlock's MCP endpoint answers POST only: no SSE stream, no sessions"),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(
            origin_of("https://airlock.example.com/"),
            "https://airlock.example.com"
        );
        assert_eq!(
            origin_of("http://10.0.0.1:8080/x/y"),
            "http://10.0.0.1:8080"
        );
    }
}
