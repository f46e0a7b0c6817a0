//! Every route in one table: method, path, permission and handler, written once. The axum router
//! and the authorization lookup ([`RouteTable`], read by `auth::authorize`) are built from the
//! same calls, so a route cannot be served without its permission or listed without being served.

use std::sync::{Arc, OnceLock};

use airlock_core::Permission::{
    self, Admin, ApplyRun, Approve, CreateRun, Lock, Read, ReadPlan, ReportDrift, Restore,
};
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{any, get, on, MethodFilter, MethodRouter};
use axum::{Extension, Router};

use crate::{api, auth, mcp, state_backend, AppState};

/// One row of the route table.
#[derive(Debug, Clone)]
pub struct Route {
    /// The method (Terraform's http backend also sends `LOCK` and `UNLOCK`).
    pub method: Method,
    /// The path as axum matches it: `{stack}` is one percent-encoded segment (`prod%2Fapp`),
    /// `{*stack}` the rest of the path, verbatim (`/state/prod/app`).
    pub path: &'static str,
    /// What the caller's role must hold. Handlers may refuse more, never less.
    pub permission: Permission,
    /// A run upload or apply log: its body is bounded by the caller's role, and read only after
    /// authorization (see `auth::authorize`).
    pub upload: bool,
}

/// The routes behind authorization. A method/path pair missing here is refused (default deny).
#[derive(Debug, Default)]
pub struct RouteTable(Vec<Route>);

impl RouteTable {
    /// Every row, in registration order.
    pub fn routes(&self) -> &[Route] {
        &self.0
    }

    /// The row for `method` on the matched path `path`, if the pair is allowed at all.
    pub fn find(&self, method: &str, path: &str) -> Option<&Route> {
        self.0
            .iter()
            .find(|r| r.method.as_str() == method && r.path == path)
    }

    /// The methods the table allows on the matched path `path`.
    pub fn methods_of(&self, path: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.method.as_str())
            .collect()
    }

    /// The permission `method` on `path` needs, if the pair is allowed at all.
    pub fn permission_for(&self, method: &str, path: &str) -> Option<Permission> {
        self.find(method, path).map(|r| r.permission)
    }
}

/// Registers a handler and its table rows in one call.
#[derive(Default)]
struct Routes {
    router: Router<Arc<AppState>>,
    table: Vec<Route>,
}

impl Routes {
    /// `method` on `path` needs `permission` and is answered by `handler`.
    fn route<H: Handler<T, Arc<AppState>>, T: 'static>(
        self,
        method: Method,
        path: &'static str,
        permission: Permission,
        handler: H,
    ) -> Self {
        let filter = method_filter(&method);
        self.add(path, [(method, permission)], false, on(filter, handler))
    }

    /// Like [`Routes::route`], for a run upload or apply log: the body is bounded by the caller's
    /// role instead of the extractor's fixed limit.
    fn upload<H: Handler<T, Arc<AppState>>, T: 'static>(
        self,
        method: Method,
        path: &'static str,
        permission: Permission,
        handler: H,
    ) -> Self {
        let filter = method_filter(&method);
        let endpoint = on(filter, handler).layer(DefaultBodyLimit::disable());
        self.add(path, [(method, permission)], true, endpoint)
    }

    /// One handler for several methods (Terraform's backend, whose LOCK and UNLOCK axum's method
    /// filters do not know): routed for any method, so the table alone decides which pass.
    fn any<H: Handler<T, Arc<AppState>>, T: 'static>(
        self,
        path: &'static str,
        methods: &[(&str, Permission)],
        handler: H,
    ) -> Self {
        let rows = methods.iter().map(|&(m, p)| {
            let method = Method::from_bytes(m.as_bytes()).expect("a method name is a token");
            (method, p)
        });
        self.add(path, rows, false, any(handler))
    }

    fn add(
        mut self,
        path: &'static str,
        methods: impl IntoIterator<Item = (Method, Permission)>,
        upload: bool,
        endpoint: MethodRouter<Arc<AppState>>,
    ) -> Self {
        for (method, permission) in methods {
            self.table.push(Route {
                method,
                path,
                permission,
                upload,
            });
        }
        // axum merges the method routers of one path, and panics on a method registered twice.
        self.router = self.router.route(path, endpoint);
        self
    }
}

/// axum's filter for a standard method. The table is static, so a wrong one fails every test.
fn method_filter(method: &Method) -> MethodFilter {
    MethodFilter::try_from(method.clone())
        .expect("a standard method (others go through Routes::any)")
}

/// The table: every route behind authorization, one line each.
#[rustfmt::skip]
fn routes() -> Routes {
    use Method as M;
    const GET: M = M::GET;
    const POST: M = M::POST;
    const PATCH: M = M::PATCH;
    const DELETE: M = M::DELETE;
    Routes::default()
        // Terraform's http backend. Its handler adds the checks that depend on the body (lock
        // operation, direct writes, force-unlock).
        .any("/state/{*stack}",
             &[("GET", Read), ("POST", Lock), ("PUT", Lock), ("LOCK", Lock), ("UNLOCK", Lock)],
             state_backend::handle)
        .route(GET,     "/api/v1/whoami",                               Read,      api::whoami)
        .route(POST,    "/api/v1/tokens",                               Admin,     api::tokens::create)
        .route(GET,     "/api/v1/tokens",                               Admin,     api::tokens::list)
        .route(DELETE,  "/api/v1/tokens/{id}",                          Admin,     api::tokens::revoke)
        .route(POST,    "/api/v1/users",                                Admin,     api::users::create)
        .route(GET,     "/api/v1/users",                                Admin,     api::users::list)
        .route(POST,    "/api/v1/users/{name}/forge-logins",            Admin,     api::users::add_forge_login)
        .route(POST,    "/api/v1/stacks",                               Admin,     api::stacks::create)
        .route(GET,     "/api/v1/stacks",                               Read,      api::stacks::list)
        .route(GET,     "/api/v1/stacks/{stack}",                       Read,      api::stacks::show)
        .route(PATCH,   "/api/v1/stacks/{stack}/settings",              Admin,     api::stacks::settings)
        .route(POST,    "/api/v1/stacks/{stack}/protect",               Admin,     api::stacks::protect)
        .route(POST,    "/api/v1/stacks/{stack}/unprotect",             Admin,     api::stacks::unprotect)
        .route(POST,    "/api/v1/stacks/{stack}/archive",               Admin,     api::stacks::archive)
        .route(POST,    "/api/v1/stacks/{stack}/grants",                Approve,   api::stacks::create_grant)
        .route(GET,     "/api/v1/stacks/{stack}/grants",                Read,      api::stacks::grants)
        .route(GET,     "/api/v1/stacks/{stack}/versions",              Read,      api::state::history)
        .route(GET,     "/api/v1/stacks/{stack}/versions/{serial}",     Read,      api::state::show)
        .route(GET,     "/api/v1/stacks/{stack}/versions/{serial}/raw", Read,      api::state::raw)
        .route(GET,     "/api/v1/stacks/{stack}/diff",                  Read,      api::state::diff)
        .route(POST,    "/api/v1/stacks/{stack}/restore",               Restore,   api::state::restore)
        .route(POST,    "/api/v1/verify",                               Read,      api::state::verify)
        .route(POST,    "/api/v1/stacks/{stack}/plan-token",            CreateRun, api::runs::plan_token)
        .route(POST,    "/api/v1/stacks/{stack}/plan-token/{id}/heartbeat", CreateRun, api::runs::plan_heartbeat)
        .route(DELETE,  "/api/v1/stacks/{stack}/plan-token/{id}",       CreateRun, api::runs::end_plan_token)
        .upload(POST,   "/api/v1/stacks/{stack}/runs",                  CreateRun, api::runs::create)
        .route(GET,     "/api/v1/runs",                                 Read,      api::runs::list)
        .route(GET,     "/api/v1/runs/{id}",                            Read,      api::runs::show)
        .route(GET,     "/api/v1/runs/{id}/artifacts/{name}",           Read,      api::runs::artifact)
        // The plan files hold every root variable's value, sensitive ones included.
        .route(GET,     "/api/v1/runs/{id}/artifacts/plan.tfplan",      ReadPlan,  api::runs::plan_binary)
        .route(GET,     "/api/v1/runs/{id}/artifacts/plan.json",        ReadPlan,  api::runs::plan_json)
        .route(POST,    "/api/v1/runs/{id}/approve",                    Approve,   api::runs::approve)
        .route(POST,    "/api/v1/runs/{id}/reject",                     Approve,   api::runs::reject)
        // Whoever may plan may withdraw a run; the handler admits its author's user only.
        .route(POST,    "/api/v1/runs/{id}/withdraw",                   CreateRun, api::runs::withdraw)
        .route(POST,    "/api/v1/runs/{id}/apply",                      ApplyRun,  api::runs::apply)
        .upload(POST,   "/api/v1/runs/{id}/finish",                     ApplyRun,  api::runs::finish)
        // The apply log while Terraform runs (the applier only, checked by the handler).
        .upload(POST,   "/api/v1/runs/{id}/log",                        ApplyRun,  api::runs::log_part)
        .route(POST,    "/api/v1/runs/{id}/heartbeat",                  ApplyRun,  api::runs::heartbeat)
        .route(GET,     "/api/v1/runs/{id}/log",                        Read,      api::runs::log)
        .route(GET,     "/api/v1/audit",                                Read,      api::audit::list)
        .route(GET,     "/api/v1/audit/verify",                         Read,      api::audit::verify)
        // Server policy sets: admins (of all stacks, checked by the handler) change them.
        .route(POST,    "/api/v1/policies",                             Admin,     api::policies::add)
        .route(GET,     "/api/v1/policies",                             Read,      api::policies::list)
        .route(GET,     "/api/v1/policies/{id}",                        Read,      api::policies::show)
        .route(POST,    "/api/v1/policies/{id}/remove",                 Admin,     api::policies::remove)
        // MCP's streamable HTTP transport: each tool call is an in-process API call with the
        // caller's token, so what a tool may do is decided by the rows above (mcp/mod.rs).
        // `airlock backup verify --record` (the CI pipeline or an admin; audited as
        // `backup.verify`, read back by `airlock doctor --server` through /api/v1/audit).
        .route(POST,    "/api/v1/backups/verifications",                ApplyRun,  api::backups::record)
        .route(POST,    "/mcp",                                         Read,      mcp::post)
        .route(GET,     "/mcp",                                         Read,      mcp::not_offered)
        .route(DELETE,  "/mcp",                                         Read,      mcp::not_offered)
        // Drift reports: the server reads the refresh-only plan itself; agents may not record
        // one (an "in sync" report clears the stack's drift status).
        .upload(POST,   "/api/v1/stacks/{stack}/drift",                 ReportDrift, api::drift::report)
        .route(GET,     "/api/v1/stacks/{stack}/drift",                 Read,      api::drift::status)
        .route(GET,     "/api/v1/stacks/{stack}/drift/{id}",            Read,      api::drift::show)
        // OIDC (issue 15): phase identity tokens (the apply one only to the run's own run-bound
        // token while it applies, checked by the handler), key rotation and forge trusts.
        .route(POST,    "/api/v1/stacks/{stack}/identity-token",        CreateRun, api::oidc::plan_identity)
        .route(POST,    "/api/v1/runs/{id}/identity-token",             ApplyRun,  api::oidc::apply_identity)
        .route(POST,    "/api/v1/oidc/rotate",                          Admin,     api::oidc::rotate)
        .route(POST,    "/api/v1/oidc/trusts",                          Admin,     api::oidc::add_trust)
        .route(GET,     "/api/v1/oidc/trusts",                          Admin,     api::oidc::list_trusts)
        .route(POST,    "/api/v1/oidc/trusts/{id}/remove",              Admin,     api::oidc::remove_trust)
        // A trust added before migration 0011 matches no job until pinned to the repository's ids.
        .route(POST,    "/api/v1/oidc/trusts/{id}/pin",                 Admin,     api::oidc::pin_trust)
        // The applier's plan check (its run-bound token only, checked by the rule): until it is
        // recorded, the state refuses that token's lock for applying and its writes.
        .route(POST,    "/api/v1/runs/{id}/plan-check",                 ApplyRun,  api::runs::plan_check)
}

/// The route table, as [`build`] serves and authorizes it.
pub fn table() -> RouteTable {
    RouteTable(routes().table)
}

/// Builds the application: the table's routes behind `auth::authorize`, then the only routes
/// outside it: health and metrics (which reveal no state; stack names with their drift status
/// only to a token that may see those stacks), the OIDC issuer's public documents and the forge login (its
/// credential is a forge-signed token), and the console
/// (`/ui/`, which authorizes nothing itself: it calls the API above with the session's token).
pub fn build(state: Arc<AppState>) -> Router {
    app().layer(Extension(Arc::clone(&state))).with_state(state)
}

/// The application for `state` without the layer that puts `state` in each request's
/// extensions: for `inproc::call`, which puts it there itself.
pub(crate) fn for_inproc(state: Arc<AppState>) -> Router {
    app().with_state(state)
}

/// The application before it is given its state: built once per process (a few dozen routes,
/// their middleware and the path matcher cost ~170 µs to build, and `inproc::call` needs it per
/// call). Its middleware finds the state in the request's extensions ([`build`] puts it there),
/// so nothing cached holds a state, and no reference cycle ties a state to its router.
fn app() -> Router<Arc<AppState>> {
    static APP: OnceLock<Router<Arc<AppState>>> = OnceLock::new();
    APP.get_or_init(|| {
        let Routes { router, table } = routes();
        let authed = router.route_layer(axum::middleware::from_fn_with_state(
            Arc::new(RouteTable(table)),
            auth::authorize,
        ));
        Router::new()
            .merge(authed)
            .merge(crate::console::routes())
            .route("/healthz", get(api::healthz))
            .route("/metrics", get(api::metrics))
            // The OIDC issuer's public documents, and the forge login, whose credential is the CI
            // job's signed ID token (verified by the handler), not an airlock token.
            .route(
                "/.well-known/openid-configuration",
                get(api::oidc::discovery),
            )
            .route("/.well-known/jwks.json", get(api::oidc::jwks))
            .route(
                "/api/v1/oidc/login",
                axum::routing::post(api::oidc::login)
                    .layer(DefaultBodyLimit::max(api::oidc::MAX_LOGIN_BODY)),
            )
            .fallback(api::not_found)
            .layer(axum::middleware::from_fn(crate::log::log_requests))
    })
    .clone()
}
