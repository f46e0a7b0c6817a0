//! The JSON API called from inside the server, for the interfaces that are clients of it (the MCP
//! endpoint at `/mcp`, the console at `/ui/`). A call is an ordinary request with the caller's own
//! bearer token, sent through the same router: the same `auth::authorize`, route table, handlers,
//! audit and request log as a request from outside. So an interface built on it adds no
//! permission of its own and can do nothing its caller's token could not do over HTTP.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use tower::ServiceExt;

use crate::{router, AppState};

/// The largest response body an in-process call reads (raw state versions can be large; a
/// caller that needs more pages through the API as any client would).
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Percent-encodes `s` as one URI path segment or query value: everything but RFC 3986's
/// unreserved characters (stack names carry `/`, which must stay inside one segment). Used by
/// the interfaces that build API URIs and links from names (console, MCP).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What an in-process API call answered.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, as sent.
    pub body: Bytes,
    /// The refusal was left out of the audit by its budget (`audit_budget`): a page that shows
    /// it is not logged one by one either.
    pub left_out: bool,
}

impl Reply {
    /// The body as JSON (`Value::Null` for an empty or non-JSON body).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Sends `method uri` (path and query, e.g. `/api/v1/runs?stack=app`) with `token` as the bearer
/// credential and `body` as a JSON body, through the server's own router (built once per
/// process, given `state` per call: `router::for_inproc`).
pub async fn call(
    state: &Arc<AppState>,
    token: &str,
    method: Method,
    uri: &str,
    body: Option<&serde_json::Value>,
) -> Result<Reply, String> {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(serde_json::to_vec(v).map_err(|e| e.to_string())?)
        }
        None => Body::empty(),
    };
    let mut req = req
        .body(body)
        .map_err(|e| format!("bad in-process request: {e}"))?;
    req.extensions_mut().insert(Arc::clone(state));
    let resp = router::for_inproc(Arc::clone(state))
        .oneshot(req)
        .await
        .map_err(|e| format!("in-process request failed: {e}"))?;
    let status = resp.status();
    let left_out = resp.extensions().get::<crate::log::LeftOut>().is_some();
    let body = axum::body::to_bytes(resp.into_body(), MAX_RESPONSE)
        .await
        .map_err(|e| format!("in-process response unreadable: {e}"))?;
    Ok(Reply {
        status,
        body,
        left_out,
    })
}
