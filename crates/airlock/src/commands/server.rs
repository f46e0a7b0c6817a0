//! `airlock server`: opens the store, bootstraps the first admin token, serves HTTP(S).

use std::process::ExitCode;
use std::sync::Arc;

use airlock_core::Role;
use airlock_server::{tokens, AppState, ServerConfig, TlsFiles};
use airlock_store::{NewAudit, NewToken, NewUser, Store};
use anyhow::Context;

use crate::cli::ServerArgs;

pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let store: Arc<dyn Store> = match &args.database_url {
        Some(url) => airlock_store::open(url).context("opening the database")?,
        None => {
            airlock_store::private::create_private_dir_all(&args.data_dir)
                .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
            let path = args.data_dir.join("airlock.db");
            airlock_store::open(&path.to_string_lossy())
                .with_context(|| format!("opening {}", path.display()))?
        }
    };
    bootstrap_admin(store.as_ref())?;
    const MIB: usize = 1024 * 1024;
    let secs = std::time::Duration::from_secs;
    let config = ServerConfig {
        max_state_bytes: args.max_state_mib.saturating_mul(MIB),
        max_agent_run_upload_bytes: args.max_agent_run_upload_mib.saturating_mul(MIB),
        max_run_upload_bytes: args.max_run_upload_mib.saturating_mul(MIB),
        header_read_timeout: secs(args.header_read_timeout_secs),
        body_read_timeout: secs(args.body_read_timeout_secs),
        request_timeout: secs(args.request_timeout_secs),
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        auto_create_stacks: args.auto_create_stacks,
        public_url: None,
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Keep one handle to the store outside the runtime: the last one must be dropped after the
    // runtime is gone, because closing a sync PostgreSQL client inside it panics.
    let keep_store = Arc::clone(&store);
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        crate::out(&format!("listening on {scheme}://{addr}\n"));
        let state = AppState::new(store, config);
        airlock_server::serve(state, listener, tls, shutdown_signal())
            .await
            .context("serving")?;
        anyhow::Ok(())
    });
    drop(runtime);
    drop(keep_store);
    served?;
    Ok(ExitCode::SUCCESS)
}

/// On an empty store, mints the first admin token and prints it once.
fn bootstrap_admin(store: &dyn Store) -> anyhow::Result<()> {
    if store.token_count()? > 0 {
        return Ok(());
    }
    // The first admin is a user like any other, so its approvals count as one person.
    match store.create_user(
        NewUser {
            name: "admin".into(),
            created_by: "system".into(),
        },
        NewAudit::ok(
            "system",
            "user.create",
            None,
            serde_json::json!({"user": "admin", "bootstrap": true}),
        ),
    ) {
        Ok(_) | Err(airlock_store::StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let g = tokens::generate();
    let token = NewToken {
        id: g.id.clone(),
        secret_hash: g.hash,
        name: "bootstrap-admin".into(),
        role: Role::Admin,
        stacks: vec![],
        expires_at: None,
        created_by: "system".into(),
        run_id: None,
        user: "admin".into(),
        parent_id: None,
        mint_limit: None,
    };
    store.create_token(token, NewAudit::ok("system", "token.create", None, serde_json::json!({"token": g.id, "name": "bootstrap-admin", "role": "admin", "bootstrap": true})))?;
    crate::out(&format!(
        "created the first admin token {} (shown once; store it in a secret manager):\nadmin token: {}\nuse it with: export AIRLOCK_TOKEN={}\n",
        g.id, g.secret, g.secret
    ));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
