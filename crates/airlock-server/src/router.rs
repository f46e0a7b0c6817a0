//! Every route, and the permission each one needs, in one place.

use std::sync::Arc;

use airlock_core::Permission;
use axum::routing::{any, delete, get, patch, post};
use axum::Router;

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
    // Run uploads carry the binary plan and its JSON (base64): allow up to the state size limit.
    let max_upload = state.config.max_state_bytes.saturating_mul(3);
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
            post(api::runs::create).layer(axum::extract::DefaultBodyLimit::max(max_upload)),
        )
        .route("/api/v1/runs", get(api::runs::list))
        .route("/api/v1/runs/{id}", get(api::runs::show))
        .route(
            "/api/v1/runs/{id}/artifacts/{name}",
            get(api::runs::artifact),
        )
        .route("/api/v1/runs/{id}/approve", post(api::runs::approve))
        .route("/api/v1/runs/{id}/reject", post(api::runs::reject))
        .route(
            "/api/v1/runs/{id}/finish",
            post(api::runs::finish).layer(axum::extract::DefaultBodyLimit::max(max_upload)),
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
        .with_state(state)
}
