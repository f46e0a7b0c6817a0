//! `airlock server`: binds the port and loads the certificate, then opens the store,
//! bootstraps the first admin token and serves HTTP(S).

use std::process::ExitCode;
use std::sync::Arc;

use airlock_core::Role;
use airlock_server::{tokens, AppState, LogLevel, ServerConfig, TlsFiles};
use airlock_store::{NewAudit, NewToken, NewUser, Store};
use anyhow::Context;

use crate::cli::{DatabaseArgs, LogLevelArg, ServerArgs};

pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    // Everything that can fail for reasons outside the store (the port, the certificate) is
    // done first: a failed first start must not mint, and so burn, the only admin token.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen / AIRLOCK_LISTEN); nothing was created",
                args.listen
            )
        })?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }
            .load()
            .context("loading the TLS certificate and key (--tls-cert, --tls-key)")?,
        ),
        _ => None,
    };
    let public_url = args.public_url.as_deref().map(public_url).transpose()?;
    let store = open_store(&DatabaseArgs {
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
    })?;
    bootstrap_admin(store.as_ref())?;
    // Tokens a scoped admin minted, before the scoped-mint rule, for people beyond its scope
    // still impersonate them: judged again at every start (idempotent), revoked, and named.
    let revoked = store
        .revoke_unsafe_mints()
        .context("judging tokens minted before the scoped-mint rule")?;
    for t in &revoked {
        crate::out(&format!(
            "warning: revoked token {} ({:?}, user {}, minted by {}): {}\n",
            t.id,
            t.name,
            t.user,
            t.minted_by.as_deref().unwrap_or("the operator"),
            t.revoked_reason.as_deref().unwrap_or_default()
        ));
    }
    // Runs that a server older than migration 0018 ended kept their binary plans.
    let purged = store
        .purge_plans_of_ended_runs()
        .context("purging the binary plans of ended runs")?;
    if !purged.is_empty() {
        crate::out(&format!(
            "note: purged the binary plans of {} run(s) an older server ended: {}\n",
            purged.len(),
            purged.join(", ")
        ));
    }
    // With --public-url the server is an OIDC issuer: its first key is made now (kept in the
    // store; a restored backup carries none, so a restored server makes a new one here).
    if let Some(url) = &public_url {
        airlock_server::oidc::ensure_key(store.as_ref()).context("creating the OIDC issuer key")?;
        crate::out(&format!(
            "OIDC issuer {url} (JWKS {url}/.well-known/jwks.json)\n"
        ));
    }
    // Trusts from before migration 0011 match no job until pinned: say so where it is seen.
    let unpinned: Vec<String> = store
        .oidc_trusts()
        .context("reading the forge trusts")?
        .into_iter()
        .filter(|t| t.removed_at.is_none() && t.repository_id.is_none())
        .map(|t| format!("{} ({} {})", t.id, t.forge, t.repository))
        .collect();
    if !unpinned.is_empty() {
        crate::out(&format!(
            "warning: {} trust(s) are not pinned to their repository's ids and refuse every CI login until an admin pins them (airlock trust pin TRUST_ID --repository-id ID --owner-id ID): {}\n",
            unpinned.len(),
            unpinned.join(", ")
        ));
    }
    const MIB: usize = 1024 * 1024;
    let secs = std::time::Duration::from_secs;
    let config = ServerConfig {
        max_state_bytes: args.max_state_mib.saturating_mul(MIB),
        max_agent_run_upload_bytes: args.max_agent_run_upload_mib.saturating_mul(MIB),
        max_run_upload_bytes: args.max_run_upload_mib.saturating_mul(MIB),
        header_read_timeout: secs(args.header_read_timeout_secs),
        body_read_timeout: secs(args.body_read_timeout_secs),
        request_timeout: secs(args.request_timeout_secs),
        apply_idle_timeout: secs(args.apply_idle_timeout_secs),
        plan_idle_timeout: secs(args.plan_idle_timeout_secs),
        agent_runs_per_hour: args.agent_runs_per_hour,
        state_read_budget_mib: args.state_read_budget_mib,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        auto_create_stacks: args.auto_create_stacks,
        secure_cookies: tls.is_some()
            || public_url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://")),
        public_url,
        log_level: match args.log_level {
            LogLevelArg::Off => LogLevel::Off,
            LogLevelArg::Error => LogLevel::Error,
            LogLevelArg::Warn => LogLevel::Warn,
            LogLevelArg::Info => LogLevel::Info,
        },
        // This very binary, even once a package upgrade has replaced the file on disk.
        rego_evaluator: Some(match std::path::Path::new("/proc/self/exe") {
            p if p.exists() => p.to_path_buf(),
            _ => std::env::current_exe()?,
        }),
    };
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    crate::out(&format!("listening on {scheme}://{addr}\n"));
    // Keep one handle to the store outside the runtime: the last one must be dropped after the
    // runtime is gone, because closing a sync PostgreSQL client inside it panics.
    let keep_store = Arc::clone(&store);
    let served = runtime.block_on(async move {
        let state = AppState::new(store, config);
        airlock_server::serve(state, listener, tls, shutdown_signal())
            .await
            .context("serving")
    });
    drop(runtime);
    drop(keep_store);
    served?;
    Ok(ExitCode::SUCCESS)
}

/// Opens (creating if needed) the store named by `--data-dir` or `--database-url`.
pub fn open_store(db: &DatabaseArgs) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &db.database_url {
        Some(url) => airlock_store::open(url).context("opening the database")?,
        None => {
            airlock_store::private::create_private_dir_all(&db.data_dir)
                .with_context(|| format!("creating data dir {}", db.data_dir.display()))?;
            let path = db.data_dir.join("airlock.db");
            airlock_store::open(&path.to_string_lossy())
                .with_context(|| format!("opening {}", path.display()))?
        }
    })
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
            forge_logins: Vec::new(),
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
        read_stacks: Vec::new(),
        minted_by: None,
        job_ref: None,
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

/// `--public-url`, checked: an `http://` or `https://` URL with a host, printable, without
/// query or fragment; returned without a trailing `/`.
fn public_url(url: &str) -> anyhow::Result<String> {
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url.len() <= 2048
        && !url.contains(['?', '#'])
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        anyhow::bail!(
            "--public-url {url:?} is not a base URL: give the scheme and host people use, e.g. https://airlock.example.com"
        );
    }
    // Browsers leave a scheme's default port out of `Origin`: a URL that names it would never
    // be this server's origin, and every browser's POST would be refused as cross-site.
    let authority = rest
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default();
    let default = if url.starts_with("https://") {
        ":443"
    } else {
        ":80"
    };
    if authority.ends_with(default) {
        anyhow::bail!(
            "--public-url {url:?} names its scheme's default port {}: leave it out (browsers never send it in Origin, so the console would refuse every form as cross-site)",
            &default[1..]
        );
    }
    Ok(url.to_owned())
}
