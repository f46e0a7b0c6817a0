//! airlock's HTTP server: the Terraform `http` state backend (`/state/{stack}`) guarded by the
//! state firewall, and the JSON API (`/api/v1/...`) used by the CLI.
//!
//! **API boundary:** [`router::build`] is the whole HTTP surface; [`serve`] runs it.

#![deny(missing_docs)]

mod api;
mod auth;
mod cache;
mod error;
pub mod firewall;
mod metrics;
pub mod router;
mod state_backend;
pub mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use airlock_store::Store;

pub use auth::Principal;

/// Server settings, already merged from defaults, environment and flags by the binary.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted state body, in bytes.
    pub max_state_bytes: usize,
    /// Create unknown stacks on first use (sandboxes only).
    pub auto_create_stacks: bool,
    /// The externally visible base URL, used in `backend-config` output.
    pub public_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_state_bytes: 256 * 1024 * 1024,
            auto_create_stacks: false,
            public_url: None,
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
}

impl AppState {
    /// Builds the shared state.
    pub fn new(store: Arc<dyn Store>, config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            store,
            config,
            cache: cache::Caches::default(),
            metrics: metrics::Metrics::default(),
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

/// Serves the router on `listener` until `shutdown` resolves. Plain HTTP unless `tls` is given.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    tls: Option<TlsFiles>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router::build(state).layer(axum::middleware::from_fn(request_deadline));
    match tls {
        None => {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
        Some(files) => tls_serve(listener, app, &files, shutdown).await,
    }
}

/// How long one request may take from its headers to its response, in seconds, unless
/// `AIRLOCK_REQUEST_TIMEOUT_SECS` says otherwise. It bounds what a client that sends headers
/// and then stalls (or trickles its body) can hold; each connection is its own task, so such a
/// client never delays anyone else meanwhile.
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;

fn request_timeout() -> std::time::Duration {
    static TIMEOUT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        let secs = std::env::var("AIRLOCK_REQUEST_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS);
        std::time::Duration::from_secs(secs)
    })
}

/// Answers 408 when a request (reading its body included) outlives [`request_timeout`].
/// Dropping the handler's future abandons the work; a store call already running finishes or
/// rolls back on its own, atomically.
async fn request_deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let limit = request_timeout();
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

async fn tls_serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    files: &TlsFiles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
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
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            conn = listener.accept() => match conn { Ok(c) => c, Err(_) => continue },
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let Ok(stream) = stream else { return };
            let svc =
                hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
                    app,
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let mut req = req.map(axum::body::Body::new);
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        req
                    },
                ));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
