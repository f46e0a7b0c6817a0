//! `airlock oidc rotate`, `airlock trust add|list|remove`, `airlock login --oidc`, and the client
//! side of phase identity tokens: the token in a private file and exactly the variables each
//! cloud's SDK reads, for one phase's terraform only ([`PhaseIdentity`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_policy::config::OidcProfile;
use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::client::{s, table, time, Client};
use crate::cli::{LoginArgs, OidcCommand, TrustCommand};

pub fn rotate(cmd: OidcCommand) -> anyhow::Result<ExitCode> {
    let OidcCommand::Rotate(client) = cmd;
    let c = Client::new(&client)?;
    let v = c.send("POST", "/api/v1/oidc/rotate", &json!({}))?;
    c.print(&v, |v| {
        format!("new signing key {}; {}\n", s(v, "/kid"), s(v, "/note"))
    });
    Ok(ExitCode::SUCCESS)
}

pub fn trust(cmd: TrustCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TrustCommand::Add {
            forge,
            repository,
            repository_id,
            owner_id,
            git_ref,
            environment,
            role,
            stacks,
            issuer,
            audience,
            lifetime,
            client,
        } => {
            let c = Client::new(&client)?;
            let v = c.send(
                "POST",
                "/api/v1/oidc/trusts",
                &json!({"forge": forge, "repository": repository, "repository_id": repository_id,
                        "owner_id": owner_id, "git_ref": git_ref,
                        "environment": environment, "role": role, "stacks": stacks,
                        "issuer": issuer, "audience": audience, "lifetime": lifetime}),
            )?;
            c.print(&v, |v| {
                format!(
                    "added trust {}: {} jobs of {} (id {}, owner id {}; issuer {}, audience {}) get the {} role\n",
                    s(v, "/trust/id"),
                    s(v, "/trust/forge"),
                    s(v, "/trust/repository"),
                    s(v, "/trust/repository_id"),
                    s(v, "/trust/owner_id"),
                    s(v, "/trust/issuer"),
                    s(v, "/trust/audience"),
                    s(v, "/trust/role"),
                )
            });
        }
        TrustCommand::List(client) => {
            let c = Client::new(&client)?;
            let v = c.get("/api/v1/oidc/trusts")?;
            c.print(&v, |v| {
                let rows = v["trusts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let stacks = t["stacks"].as_array().map_or(String::new(), |a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        });
                        vec![
                            s(t, "/id"),
                            s(t, "/forge"),
                            s(t, "/repository"),
                            match (t["repository_id"].as_str(), t["owner_id"].as_str()) {
                                (Some(r), Some(o)) => format!("{r}/{o}"),
                                _ => "NOT PINNED (matches no job: airlock trust pin)".into(),
                            },
                            t["git_ref"].as_str().unwrap_or("(any)").to_owned(),
                            t["environment"].as_str().unwrap_or("(any)").to_owned(),
                            s(t, "/role"),
                            if stacks.is_empty() {
                                "*".into()
                            } else {
                                stacks
                            },
                            if t["removed_at"].is_null() {
                                "active".into()
                            } else {
                                format!("removed {}", time(t, "/removed_at"))
                            },
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID",
                        "FORGE",
                        "REPOSITORY",
                        "IDS (REPO/OWNER)",
                        "REF",
                        "ENVIRONMENT",
                        "ROLE",
                        "STACKS",
                        "STATUS",
                    ],
                    rows,
                )
            });
        }
        TrustCommand::Remove { id, client } => {
            let c = Client::new(&client)?;
            let v = c.send(
                "POST",
                &format!("/api/v1/oidc/trusts/{id}/remove"),
                &json!({}),
            )?;
            c.print(&v, |v| format!("removed trust {}\n", s(v, "/trust/id")));
        }
        TrustCommand::Pin {
            id,
            repository_id,
            owner_id,
            client,
        } => {
            let c = Client::new(&client)?;
            let v = c.send(
                "POST",
                &format!("/api/v1/oidc/trusts/{id}/pin"),
                &json!({"repository_id": repository_id, "owner_id": owner_id}),
            )?;
            c.print(&v, |v| {
                format!(
                    "pinned trust {} to {} (id {}, owner id {})\n",
                    s(v, "/trust/id"),
                    s(v, "/trust/repository"),
                    s(v, "/trust/repository_id"),
                    s(v, "/trust/owner_id")
                )
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The CI job's ID token: GitHub Actions' runner is asked for one with `audience`; elsewhere
/// (GitLab's `id_tokens:`) it is read from `token_env`.
fn job_id_token(audience: &str, token_env: &str) -> anyhow::Result<String> {
    let gh = (
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    );
    if let (Ok(url), Ok(bearer)) = gh {
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}audience={}", super::run::query_value(audience));
        let v: Value = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .get(&url)
            .set("Authorization", &format!("bearer {bearer}"))
            .call()
            .context("asking the GitHub Actions runner for an ID token")?
            .into_json()
            .context("the runner's ID token answer is not JSON")?;
        return v["value"]
            .as_str()
            .map(str::to_owned)
            .context("the runner sent no ID token");
    }
    match std::env::var(token_env) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => bail!(
            "no CI ID token: on GitHub Actions give the job `permissions: id-token: write`; on GitLab declare `id_tokens: {token_env}: aud: <the airlock URL>`"
        ),
    }
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    if !args.oidc {
        bail!("airlock login needs --oidc (it exchanges a CI job's ID token); people get tokens from an admin: airlock token create");
    }
    let c = Client::new(&args.client)?;
    let audience = args.audience.clone().unwrap_or_else(|| c.base().to_owned());
    let id_token = job_id_token(&audience, &args.token_env)?;
    let v = c.post_anonymous(
        "/api/v1/oidc/login",
        &json!({"token": id_token, "role": args.role}),
    )?;
    let secret = v["secret"].as_str().context("the server sent no token")?;
    if args.github_env {
        let path = std::env::var("GITHUB_ENV")
            .context("--github-env: GITHUB_ENV is not set (not on GitHub Actions?)")?;
        crate::out(&format!("::add-mask::{secret}\n"));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening $GITHUB_ENV ({path})"))?;
        writeln!(f, "AIRLOCK_TOKEN={secret}").context("writing $GITHUB_ENV")?;
        eprintln!(
            "logged in: {} token {} for {} until {} (AIRLOCK_TOKEN set for the next steps)",
            s(&v, "/role"),
            s(&v, "/token_id"),
            s(&v, "/trust"),
            time(&v, "/expires_at")
        );
    } else {
        c.print(&v, |v| format!("{}\n", s(v, "/secret")));
    }
    Ok(ExitCode::SUCCESS)
}

/// Variables that carry cloud credentials. A phase with an OIDC profile inherits none of them:
/// its SDKs must use the phase's token, not a static key or a role from the caller's shell (the
/// AWS SDK, for one, prefers static keys to a web identity).
pub(crate) const CLOUD_CREDENTIAL_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CREDENTIALS",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "ARM_USE_OIDC",
    "ARM_OIDC_TOKEN_FILE_PATH",
    "ARM_CLIENT_ID",
    "ARM_TENANT_ID",
    "ARM_CLIENT_SECRET",
];

/// One phase's identity token on disk: a private directory (0700) holding the token (0600) and,
/// for GCP, the external-account file; removed when dropped.
pub struct PhaseIdentity {
    dir: PathBuf,
    /// What the phase's children get.
    pub env: Vec<(String, String)>,
}

impl Drop for PhaseIdentity {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Asks the server for a phase identity token (`endpoint`: the stack's or the run's
/// `identity-token`), writes it privately and returns the variables for `profile`.
pub fn phase_identity(
    c: &Client,
    endpoint: &str,
    profile: &OidcProfile,
    stack: &str,
    phase: &str,
) -> anyhow::Result<PhaseIdentity> {
    let v = c
        .send(
            "POST",
            endpoint,
            &json!({"audience": profile.audience, "ttl_seconds": profile.ttl_seconds}),
        )
        .with_context(|| format!("getting the {phase}-phase identity token"))?;
    let token = v["token"]
        .as_str()
        .context("the server sent no identity token")?;
    let dir = std::env::temp_dir().join(airlock_server::tokens::random_id("airlock-oidc-"));
    airlock_store::private::create_private_dir(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // Removed on every error from here on.
    let mut identity = PhaseIdentity {
        dir: dir.clone(),
        env: Vec::new(),
    };
    let token_file = dir.join("token.jwt");
    private_file(&token_file, token.as_bytes())?;
    let file = token_file.display().to_string();
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| env.push((k.to_owned(), v.to_owned()));
    if let Some(arn) = &profile.aws_role_arn {
        let session: String = format!("airlock-{phase}-{}", stack.replace('/', "-"))
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(*c))
            .take(64)
            .collect();
        set("AWS_WEB_IDENTITY_TOKEN_FILE", &file);
        set("AWS_ROLE_ARN", arn);
        set("AWS_ROLE_SESSION_NAME", &session);
    }
    if let Some(provider) = &profile.gcp_workload_provider {
        let mut cred = json!({
            "type": "external_account",
            "audience": provider,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": {"file": file, "format": {"type": "text"}},
        });
        if let Some(sa) = &profile.gcp_service_account {
            cred["service_account_impersonation_url"] = json!(format!(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{sa}:generateAccessToken"
            ));
        }
        let path = dir.join("gcp-external-account.json");
        private_file(&path, cred.to_string().as_bytes())?;
        set(
            "GOOGLE_APPLICATION_CREDENTIALS",
            &path.display().to_string(),
        );
    }
    if let (Some(client), Some(tenant)) = (&profile.azure_client_id, &profile.azure_tenant_id) {
        // The Azure SDKs' variables, and the azurerm provider's.
        set("AZURE_FEDERATED_TOKEN_FILE", &file);
        set("AZURE_CLIENT_ID", client);
        set("AZURE_TENANT_ID", tenant);
        set("ARM_USE_OIDC", "true");
        set("ARM_OIDC_TOKEN_FILE_PATH", &file);
        set("ARM_CLIENT_ID", client);
        set("ARM_TENANT_ID", tenant);
    }
    identity.env = env;
    Ok(identity)
}

impl PhaseIdentity {
    /// `env` (a phase's child environment) without inherited cloud credentials, plus this
    /// phase's.
    pub fn apply_to(&self, env: &mut Vec<(String, String)>) {
        env.retain(|(k, _)| !CLOUD_CREDENTIAL_VARS.contains(&k.as_str()));
        env.extend(self.env.iter().cloned());
    }
}
