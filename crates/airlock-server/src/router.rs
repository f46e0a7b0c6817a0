//! Every route, and the permission each one needs, in one place.

use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use airlock_core::Permission;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, patch, post};
use axum::{Extension, Router};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::{api, auth, state_backend, AppState};

/// (method, route, permission). A route/method pair missing here is refused (default deny).
/// Handlers of `/state` add body-dependent checks (lock operation, direct writes, force-unlock).
pub const ROUTE_PERMISSIONS: &[(&str, &str, Permission)] = &[
    ("GET", "/state/{*stack}", Permission::Read),
    ("POST", "/state/{*stack}", Permission::Lock),
    ("PUT", "/state/{*stack}", Permission::Lock),
    ("LOCK", "/state/{*stack}", Permission::Lock),
    ("UNLOCK", "/state/{*stack}", Permission::Lock),
    ("GET", "/api/v1/whoami", Permission::Read),
    ("POST", "/api/v1/tokens", Permission::Admin),
    ("GET", "/api/v1/tokens", Permission::Admin),
    ("DELETE", "/api/v1/tokens/{id}", Permission::Admin),
    ("POST", "/api/v1/users", Permission::Admin),
    ("GET", "/api/v1/users", Permission::Admin),
    ("POST", "/api/v1/stacks", Permission::Admin),
    ("GET", "/api/v1/stacks", Permission::Read),
    ("GET", "/api/v1/stacks/{stack}", Permission::Read),
    (
        "PATCH",
        "/api/v1/stacks/{stack}/settings",
        Permission::Admin,
    ),
    ("POST", "/api/v1/stacks/{stack}/protect", Permission::Admin),
    (
        "POST",
        "/api/v1/stacks/{stack}/unprotect",
        Permission::Admin,
    ),
    ("POST", "/api/v1/stacks/{stack}/archive", Permission::Admin),
    ("POST", "/api/v1/stacks/{stack}/grants", Permission::Approve),
    ("GET", "/api/v1/stacks/{stack}/grants", Permission::Read),
    ("GET", "/api/v1/stacks/{stack}/versions", Permission::Read),
    (
        "GET",
        "/api/v1/stacks/{stack}/versions/{serial}",
        Permission::Read,
    ),
    (
        "GET",
        "/api/v1/stacks/{stack}/versions/{serial}/raw",
        Permission::Read,
    ),
    ("GET", "/api/v1/stacks/{stack}/diff", Permission::Read),
    (
        "POST",
        "/api/v1/stacks/{stack}/restore",
        Permission::Restore,
    ),
    ("POST", "/api/v1/verify", Permission::Read),
    (
        "POST",
        "/api/v1/stacks/{stack}/plan-token",
        Permission::CreateRun,
    ),
    ("POST", "/api/v1/stacks/{stack}/runs", Permission::CreateRun),
    ("GET", "/api/v1/runs", Permission::Read),
    ("GET", "/api/v1/runs/{id}", Permission::Read),
    (
        "GET",
        "/api/v1/runs/{id}/artifacts/{name}",
        Permission::Read,
    ),
    ("POST", "/api/v1/runs/{id}/approve", Permission::Approve),
    ("POST", "/api/v1/runs/{id}/reject", Permission::Approve),
    // Whoever may plan may withdraw a run; the handler admits its author's user only.
    ("POST", "/api/v1/runs/{id}/withdraw", Permission::CreateRun),
    ("POST", "/api/v1/runs/{id}/apply", Permission::ApplyRun),
    ("POST", "/api/v1/runs/{id}/finish", Permission::ApplyRun),
    ("GET", "/api/v1/audit", Permission::Read),
    ("GET", "/api/v1/audit/verify", Permission::Read),
];

/// The permission `method` on `route` needs, if the pair is allowed at all.
pub fn permission_for(method: &str, route: &str) -> Option<Permission> {
    ROUTE_PERMISSIONS
        .iter()
        .find(|(m, r, _)| *m == method && *r == route)
        .map(|(_, _, p)| *p)
}

/// Builds the application.
pub fn build(state: Arc<AppState>) -> Router {
    // Run uploads and apply logs are bounded by the uploader's role, after authorization and
    // before a byte of the body is read (`bounded_upload`); the extractor's own limit is then moot.
    let upload = || axum::middleware::from_fn_with_state(Arc::clone(&state), bounded_upload);
    let authed = Router::new()
        .route("/state/{*stack}", any(state_backend::handle))
        .route("/api/v1/whoami", get(api::whoami))
        .route(
            "/api/v1/tokens",
            post(api::tokens::create).get(api::tokens::list),
        )
        .route("/api/v1/tokens/{id}", delete(api::tokens::revoke))
        .route(
            "/api/v1/users",
            post(api::users::create).get(api::users::list),
        )
        .route(
            "/api/v1/stacks",
            post(api::stacks::create).get(api::stacks::list),
        )
        .route("/api/v1/stacks/{stack}", get(api::stacks::show))
        .route(
            "/api/v1/stacks/{stack}/settings",
            patch(api::stacks::settings),
        )
        .route("/api/v1/stacks/{stack}/protect", post(api::stacks::protect))
        .route(
            "/api/v1/stacks/{stack}/unprotect",
            post(api::stacks::unprotect),
        )
        .route("/api/v1/stacks/{stack}/archive", post(api::stacks::archive))
        .route(
            "/api/v1/stacks/{stack}/grants",
            post(api::stacks::create_grant).get(api::stacks::grants),
        )
        .route("/api/v1/stacks/{stack}/versions", get(api::state::history))
        .route(
            "/api/v1/stacks/{stack}/versions/{serial}",
            get(api::state::show),
        )
        .route(
            "/api/v1/stacks/{stack}/versions/{serial}/raw",
            get(api::state::raw),
        )
        .route("/api/v1/stacks/{stack}/diff", get(api::state::diff))
        .route("/api/v1/stacks/{stack}/restore", post(api::state::restore))
        .route("/api/v1/verify", post(api::state::verify))
        .route(
            "/api/v1/stacks/{stack}/plan-token",
            post(api::runs::plan_token),
        )
        .route(
            "/api/v1/stacks/{stack}/runs",
            post(api::runs::create)
                .layer::<_, std::convert::Infallible>(upload())
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/v1/runs", get(api::runs::list))
        .route("/api/v1/runs/{id}", get(api::runs::show))
        .route(
            "/api/v1/runs/{id}/artifacts/{name}",
            get(api::runs::artifact),
        )
        .route("/api/v1/runs/{id}/approve", post(api::runs::approve))
        .route("/api/v1/runs/{id}/reject", post(api::runs::reject))
        .route("/api/v1/runs/{id}/withdraw", post(api::runs::withdraw))
        .route(
            "/api/v1/runs/{id}/finish",
            post(api::runs::finish)
                .layer::<_, std::convert::Infallible>(upload())
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/v1/runs/{id}/apply", post(api::runs::apply))
        .route("/api/v1/audit", get(api::audit::list))
        .route("/api/v1/audit/verify", get(api::audit::verify))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authorize,
        ));
    Router::new()
        .merge(authed)
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::log::log_requests,
        ))
        .with_state(state)
}

/// Reads a run upload (or apply log) only up to the limit of the caller's role: a declared
/// `Content-Length` over it is refused before anything is read, a chunked body as soon as it
/// passes it. Runs after [`auth::authorize`], so an unauthorized body is never read at all.
async fn bounded_upload(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    req: Request,
    next: Next,
) -> Response {
    let limit = state.config.run_upload_limit(principal.role);
    let (parts, body) = req.into_parts();
    let too_large = || {
        ApiError::new(
            RefusalKind::TooLarge,
            format!(
                "upload refused: {} tokens may upload at most {} MiB here (--max-agent-run-upload-mib / --max-run-upload-mib); a plan this large is better applied by CI from its own checkout",
                principal.role,
                limit / (1024 * 1024)
            ),
        )
        .into_response()
    };
    let bytes = match state_backend::read_body(body, limit).await {
        Ok(b) => b,
        Err(e) if e.is_too_large() => return too_large(),
        Err(e) => return e.into_response(),
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}
