//! airlock's HTTP server: the Terraform `http` state backend (`/state/{stack}`) guarded by the
//! state firewall, the JSON API (`/api/v1/...`) used by the CLI, and the web console (`/ui/`),
//! a client of that API.
//!
//! **API boundary:** [`router::build`] is the whole HTTP surface; [`serve`] runs it.

#![deny(missing_docs)]
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod api;
mod audit_budget;
mod auth;
mod cache;
pub mod console;
mod error;
pub mod firewall;
pub mod inproc;
mod log;
pub mod mcp;
mod metrics;
pub mod oidc;
mod rego_sandbox;
pub mod router;
pub mod run_upload;
mod serve;
mod stacks;
mod state_backend;
pub mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::Role;
use airlock_store::Store;

pub use api::drift::report_sha256 as drift_report_sha256;
pub use api::tokens::valid_glob;
pub use auth::Principal;
pub use log::LogLevel;

/// Server settings, already merged from defaults, environment and flags by the binary.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted state body, in bytes.
    pub max_state_bytes: usize,
    /// Largest run upload (binary plan and plan JSON, base64) from an agent token, in bytes.
    /// Agents are the least trusted uploaders, and every run is stored for good.
    pub max_agent_run_upload_bytes: usize,
    /// Largest run upload or apply log from any other role, in bytes.
    pub max_run_upload_bytes: usize,
    /// How long a connection may take to deliver a complete request header (idle keep-alive
    /// connections and the TLS handshake included) before the server closes it.
    pub header_read_timeout: Duration,
    /// How long a request body may stall (no data at all) before the request fails.
    pub body_read_timeout: Duration,
    /// How long one request may take, from its header to its response.
    pub request_timeout: Duration,
    /// Most connections open at once; past it, the connection that has waited longest for a
    /// request header (or for the body of a request not yet authenticated) is closed to make
    /// room.
    pub max_connections: usize,
    /// Create unknown stacks on first use (sandboxes only).
    pub auto_create_stacks: bool,
    /// The externally visible base URL, used in `backend-config` output.
    pub public_url: Option<String>,
    /// What the server logs on stderr (refusals by default).
    pub log_level: LogLevel,
    /// Mark console cookies `Secure` (the server, or the proxy in front of it, serves TLS): also
    /// the scheme browsers reach the server by ([`ServerConfig::scheme`]).
    pub secure_cookies: bool,
    /// The `airlock` executable whose `__rego-eval` runs a repository's Rego (the planner's
    /// text) in a child process with bounded memory and CPU (`rego_sandbox`); `None` runs it in
    /// this process, where a hostile policy can abort the server (tests, embedders).
    pub rego_evaluator: Option<std::path::PathBuf>,
    /// How long an applying run outlives its applier's last report (`airlock apply` reports
    /// every tenth of it): then the run is closed as abandoned, and its run-bound token and
    /// removal grant have expired (`run_rules::keep_alive`).
    pub apply_idle_timeout: Duration,
    /// How long a plan-phase token outlives its planner's last report (`airlock plan` reports
    /// every tenth of it, with the token that minted it): its first lifetime, and what each
    /// report renews, up to a day (`tokens::keep_plan_alive`).
    pub plan_idle_timeout: Duration,
    /// Runs an agent's user may plan an hour, on every replica (uploads refused with 429 past
    /// it: what a run reviewed is kept for good), and plan-phase tokens it may mint
    /// (`tokens::phase_token_limit`). Pull-request jobs logged in through an `agent` trust are
    /// such a user: a monorepo whose changes plan many stacks raises it.
    pub agent_runs_per_hour: u64,
    /// MiB of stored state bodies the JSON API reads whole at once, all requests together
    /// (`stacks::within_read_budget`: a diff holds both versions and their summaries): past it,
    /// reads wait their turn, so many at once of a large state do not run the server out of
    /// memory. A read larger than the whole budget runs alone.
    pub state_read_budget_mib: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_state_bytes: 256 * 1024 * 1024,
            max_agent_run_upload_bytes: 64 * 1024 * 1024,
            max_run_upload_bytes: 768 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(15),
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            max_connections: 1024,
            auto_create_stacks: false,
            public_url: None,
            log_level: LogLevel::Warn,
            secure_cookies: false,
            rego_evaluator: None,
            apply_idle_timeout: Duration::from_millis(
                airlock_store::run_rules::APPLY_IDLE_MS as u64,
            ),
            plan_idle_timeout: Duration::from_secs(3600),
            agent_runs_per_hour: 60,
            state_read_budget_mib: 1024,
        }
    }
}

/// `d` in milliseconds, at least 1.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

impl ServerConfig {
    /// [`ServerConfig::apply_idle_timeout`] in milliseconds, at least 1.
    pub fn apply_idle_ms(&self) -> i64 {
        millis(self.apply_idle_timeout)
    }

    /// [`ServerConfig::plan_idle_timeout`] in milliseconds, at least 1.
    pub fn plan_idle_ms(&self) -> i64 {
        millis(self.plan_idle_timeout)
    }

    /// The scheme browsers reach this server by, for its own origin (`auth::cross_site`):
    /// `https` when it serves TLS or sits behind a TLS proxy named by an `https://` public URL
    /// (when its cookies are `Secure`), `http` otherwise.
    pub fn scheme(&self) -> &'static str {
        if self.secure_cookies {
            "https"
        } else {
            "http"
        }
    }

    /// Largest run upload (or apply log) a token of `role` may send, in bytes.
    pub fn run_upload_limit(&self, role: Role) -> usize {
        match role {
            Role::Agent => self.max_agent_run_upload_bytes,
            _ => self.max_run_upload_bytes,
        }
    }
}

/// Shared state of every handler.
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Settings.
    pub config: ServerConfig,
    cache: cache::Caches,
    metrics: metrics::Metrics,
    audit_budgets: audit_budget::AuditBudgets,
    /// The budget of [`ServerConfig::state_read_budget_mib`], one permit a MiB.
    state_reads: tokio::sync::Semaphore,
    /// The web console's sessions (in this process's memory).
    pub console: console::session::Sessions,
    /// The OIDC issuer's key cache and the trusted forges' keys.
    pub oidc: oidc::Oidc,
}

impl AppState {
    /// Builds the shared state.
    pub fn new(store: Arc<dyn Store>, config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            store,
            state_reads: tokio::sync::Semaphore::new(config.state_read_budget_mib.max(1) as usize),
            config,
            cache: cache::Caches::default(),
            metrics: metrics::Metrics::default(),
            audit_budgets: audit_budget::AuditBudgets::default(),
            console: console::session::Sessions::default(),
            oidc: oidc::Oidc::default(),
        })
    }
}

/// TLS certificate and key files (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// A loaded TLS certificate and key, ready to serve: loaded before the server creates anything,
/// so a bad certificate fails the start before the first admin token is minted.
#[derive(Clone)]
pub struct Tls(tokio_rustls::TlsAcceptor);

impl TlsFiles {
    /// Reads and checks the certificate chain and key.
    pub fn load(&self) -> std::io::Result<Tls> {
        tls_acceptor(self).map(Tls)
    }
}

/// Serves the router on `listener` until `shutdown` resolves. Plain HTTP unless `tls` is given.
/// Connections are bounded in number and in patience (see `serve.rs`).
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    tls: Option<Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let c = &state.config;
    let limits = serve::Limits {
        header_read_timeout: c.header_read_timeout,
        body_read_timeout: c.body_read_timeout,
        request_timeout: c.request_timeout,
        max_connections: c.max_connections,
    };
    let app = router::build(Arc::clone(&state)).layer(axum::middleware::from_fn_with_state(
        c.request_timeout,
        request_deadline,
    ));
    let tls = tls.map(|t| t.0);
    let sealer = tokio::spawn(seal_audit_every(Arc::clone(&state), SEAL_INTERVAL));
    let sweeping = Arc::new(tokio::sync::Mutex::new(()));
    // Often enough that an abandoned apply is closed within its idle time again.
    let sweep_ms = airlock_store::run_rules::EXPIRY_SWEEP_MS.min(c.apply_idle_ms());
    let sweeper = tokio::spawn(expire_runs_every(
        Arc::clone(&state),
        Duration::from_millis(sweep_ms as u64),
        Arc::clone(&sweeping),
    ));
    let served = serve::run(listener, app, tls, limits, shutdown).await;
    sealer.abort();
    sweeper.abort();
    // A sweep already running finishes first, so the last seal covers what it recorded.
    let _done = sweeping.lock().await;
    // A last seal, so a clean stop leaves every stack chain sealed (and the count of refusals
    // the audit budget left out recorded).
    audit_budget::record_left_out(&state, true).await;
    seal_audit_once(&state).await;
    served
}

/// How often each replica seals the stack chains' heads into the global audit chain: the
/// window in which dropping the newest records of a stack chain would go unnoticed.
pub const SEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Seals the audit chains every `every` (see `Store::seal_audit`); replicas doing it at once
/// take turns in the store and seal each head once.
async fn seal_audit_every(state: Arc<AppState>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Refusals the audit budget left out are on record within a second of a flood's end.
        audit_budget::record_left_out(&state, false).await;
        seal_audit_once(&state).await;
    }
}

async fn seal_audit_once(state: &Arc<AppState>) {
    let store = Arc::clone(&state.store);
    let outcome = tokio::task::spawn_blocking(move || store.seal_audit()).await;
    // A failed seal is retried at the next tick; the records stay in their chains meanwhile.
    if let Ok(Err(e)) = outcome {
        if state.config.log_level >= LogLevel::Warn {
            log::emit(&format!(
                "level=warn msg=\"sealing the audit chains failed\" error={}",
                log::quote(&e.to_string())
            ));
        }
    }
}

/// Closes the open runs past their expiry and the abandoned applies (`Store::expire_overdue_runs`)
/// at start and every `every`: replicas doing it at once close each run once (each is judged on its locked row).
/// `sweeping` is held while a sweep runs.
async fn expire_runs_every(
    state: Arc<AppState>,
    every: Duration,
    sweeping: Arc<tokio::sync::Mutex<()>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let held = Arc::clone(&sweeping).lock_owned().await;
        let store = Arc::clone(&state.store);
        let now = airlock_store::now_ms();
        let outcome = tokio::task::spawn_blocking(move || {
            let swept = store.expire_overdue_runs(now, airlock_store::run_rules::SWEPT_RUNS);
            drop(held);
            swept
        })
        .await;
        // A failed sweep is retried at the next tick; a request acting on an overdue run
        // closes it meanwhile.
        let level = state.config.log_level;
        match outcome {
            Ok(Ok(swept)) => {
                if !swept.closed.is_empty() && level >= LogLevel::Info {
                    log::emit(&format!(
                        "level=info msg=\"closed runs past their expiry or abandoned\" runs={}",
                        log::quote(&swept.closed.join(","))
                    ));
                }
                let failed = if level >= LogLevel::Warn {
                    &swept.failed[..]
                } else {
                    &[]
                };
                for (run, error) in failed {
                    log::emit(&format!(
                        "level=warn msg=\"closing a run past its expiry failed\" run={} error={}",
                        log::quote(run),
                        log::quote(error)
                    ));
                }
            }
            Ok(Err(e)) if level >= LogLevel::Warn => {
                log::emit(&format!(
                    "level=warn msg=\"closing runs past their expiry failed\" error={}",
                    log::quote(&e.to_string())
                ));
            }
            _ => {}
        }
    }
}

/// Answers 408 when a request (reading its body included) outlives the request timeout.
/// Dropping the handler's future abandons the work; a store call already running finishes or
/// rolls back on its own, atomically.
async fn request_deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error::error_response(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &format!(
                "the server gave up on this request after {} s (a stalled or very slow client?)",
                limit.as_secs()
            ),
        ),
    }
}

fn tls_acceptor(files: &TlsFiles) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| invalid("reading --tls-cert", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("reading --tls-cert", &e))?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| invalid("reading --tls-key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("TLS certificate/key", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
