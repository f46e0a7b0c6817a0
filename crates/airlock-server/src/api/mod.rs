//! `/api/v1`: the JSON API used by the CLI. One module per noun.

pub mod audit;
pub mod backups;
pub mod drift;
pub mod oidc;
pub mod policies;
pub mod runs;
pub mod stacks;
pub mod state;
pub mod tokens;
pub mod users;

use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::stacks::blocking;
use crate::AppState;

/// `GET /api/v1/whoami`.
pub async fn whoami(Extension(p): Extension<Principal>) -> Json<Value> {
    Json(
        json!({ "id": p.token_id, "name": p.name, "role": p.role, "kind": p.role.kind(), "stacks": p.stacks, "run_id": p.run_id, "user": p.user, "parent": p.parent_id, "read_stacks": p.read_stacks, "job_ref": p.job_ref }),
    )
}

/// `GET /healthz`: the store answers.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match blocking(&state, |st| st.token_count()).await {
        Ok(Ok(_)) => (
            StatusCode::OK,
            Json(json!({"status": "ok", "engine": state.store.engine()})),
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable"})),
        )
            .into_response(),
    }
}

/// `GET /metrics` in the Prometheus text format. Without a token: the server's counters and
/// how many stacks have drifted, nothing that names a stack (a monitoring port is often reachable
/// by more people than the API). With a token (Bearer, as Prometheus' `authorization` sends it):
/// also the per-stack drift gauges of the stacks that token may see. A token that does not
/// authenticate is refused and audited like any other request's.
pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let principal = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(_) => {
            match crate::auth::authenticate_header(&state, &headers, "GET", "/metrics", None).await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    state.metrics.denied();
                    return e.into_response();
                }
            }
        }
    };
    let mut text = state.metrics.render();
    // Drift; an unavailable store leaves these out rather than failing the scrape.
    if let Ok(Ok(mut drift)) = blocking(&state, |st| st.drift_states()).await {
        text.push_str(&crate::metrics::render_drift_counts(&drift));
        if let Some(p) = principal {
            drift.retain(|d| p.may_access(&d.last.stack));
            text.push_str(&crate::metrics::render_drift(
                &drift,
                airlock_store::now_ms(),
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Anything else. Under `/state` a 404 would read to Terraform as "no state yet" (an address
/// with an empty stack name would plan to create everything), so there it is a 400.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    if uri.path() == "/state" || uri.path().starts_with("/state/") {
        return ApiError::new(
            RefusalKind::BadRequest,
            "invalid stack name: the state backend address is /state/STACK, e.g. /state/prod/network",
        );
    }
    ApiError::new(RefusalKind::NotFound, "no such route")
}

/// Parses a JSON request body into `T` with a clear error (axum's `Json` rejection is terse).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            RefusalKind::BadRequest,
            format!("invalid request body: {e}"),
        )
    })
}

/// Longest reason a person gives (a rejection, a restore).
pub const MAX_REASON: usize = 2000;

/// The one rule for a reason a person gives: 1 to [`MAX_REASON`] characters, not blank.
/// `for_what` ends the message (" for a restore").
pub fn require_reason(reason: &str, for_what: &str) -> ApiResult<()> {
    if reason.trim().is_empty() || reason.len() > MAX_REASON {
        return Err(ApiError::new(
            RefusalKind::BadRequest,
            format!("a reason (1-{MAX_REASON} characters) is required{for_what}"),
        ));
    }
    Ok(())
}

/// Runs a store call and converts both error layers.
pub async fn store_call<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&dyn airlock_store::Store) -> airlock_store::Result<T> + Send + 'static,
) -> ApiResult<T> {
    Ok(blocking(state, f).await??)
}
