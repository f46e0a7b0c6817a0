//! airlock as an OIDC issuer, and the forge issuers it trusts.
//!
//! Issuer: one active ES256 key in the store (generated on first use, `airlock oidc rotate`
//! retires it and erases its private half); discovery and JWKS at `--public-url`; phase identity
//! tokens whose `sub` (`stack:S:run_phase:P`) is what cloud trust policies match. Forge logins:
//! a GitHub Actions or GitLab CI ID token, verified against the JWKS of an issuer an admin
//! configured (`jose`), judged against the trusts ([`judge_login`]), becomes a short-lived
//! airlock token. The rules are pure functions here; `api/oidc.rs` only translates.

pub mod jose;

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_core::Role;
use airlock_store::{
    NewAudit, NewOidcKey, OidcKeyRecord, OidcTrustRecord, SecretBytes, Store, StoreError,
};
use serde_json::{json, Map, Value};

use jose::{SigningKey, VerifyingKey};

/// Longest life of an identity token airlock issues (seconds).
pub const MAX_TOKEN_TTL_S: i64 = 3600;
/// A retired key stays in the JWKS this long after its retirement (milliseconds): every token
/// it signed has expired by then, with a margin for clock skew.
pub const RETIRED_KEY_GRACE_MS: i64 = (MAX_TOKEN_TTL_S + 300) * 1000;
/// How long after `airlock apply` moved a run to applying its apply-phase token may be issued.
pub const APPLY_TOKEN_WINDOW_MS: i64 = 5 * 60 * 1000;
/// Clock skew allowed when judging a forge token's times (seconds).
pub const LEEWAY_S: i64 = 30;
/// Longest lifetime of an airlock token a forge login issues (GitHub-hosted jobs end at 6 h).
pub const MAX_LOGIN_LIFETIME_MS: i64 = 6 * 3600 * 1000;
/// A forge's discovery document or JWKS: connect, read and whole-request bound.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest discovery document or JWKS read.
pub const MAX_FETCH_BYTES: u64 = 64 * 1024;
/// How long fetched forge keys are used.
pub const JWKS_CACHE: Duration = Duration::from_secs(600);
/// A failed fetch is repeated no sooner than this (a down issuer is not hammered).
pub const FETCH_RETRY: Duration = Duration::from_secs(10);

/// The OIDC parts of the server's state.
#[derive(Default)]
pub struct Oidc {
    signing: Mutex<Option<Arc<SigningKey>>>,
    forge_keys: Mutex<HashMap<String, Fetched>>,
    /// Per trusted issuer, held while its keys are fetched (single flight).
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

enum Fetched {
    Keys(Instant, Arc<Vec<VerifyingKey>>),
    Failed(Instant, String),
}

/// The issuer URL: `--public-url` without a trailing slash.
pub fn issuer_url(public_url: &str) -> String {
    public_url.trim_end_matches('/').to_owned()
}

/// Adds the first key unless the store has an active one (another replica may add it at the
/// same moment: the store's unique `active` column lets one win).
pub fn ensure_key(store: &dyn Store) -> Result<(), StoreError> {
    if store.oidc_keys()?.iter().any(|k| k.retired_at.is_none()) {
        return Ok(());
    }
    match add_key(store, false, "airlock server") {
        Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Generates and stores a new active key (retiring the active one with `rotate`).
pub fn add_key(store: &dyn Store, rotate: bool, by: &str) -> Result<OidcKeyRecord, StoreError> {
    let g = jose::generate_es256().map_err(|e| StoreError::Backend(e.0))?;
    let audit = NewAudit::ok(
        by,
        if rotate {
            "oidc.key_rotate"
        } else {
            "oidc.key_create"
        },
        None,
        json!({"kid": g.kid}),
    );
    store.add_oidc_key(
        NewOidcKey {
            kid: g.kid,
            alg: "ES256".into(),
            public_jwk: g.public_jwk.to_string(),
            private_pkcs8: SecretBytes(g.pkcs8),
        },
        rotate,
        audit,
    )
}

/// The keys the JWKS serves at `now`: the active one and those retired less than
/// [`RETIRED_KEY_GRACE_MS`] ago.
pub fn jwks(keys: &[OidcKeyRecord], now_ms: i64) -> Value {
    let served: Vec<Value> = keys
        .iter()
        .filter(|k| {
            k.retired_at
                .is_none_or(|at| now_ms - at < RETIRED_KEY_GRACE_MS)
        })
        .filter_map(|k| serde_json::from_str(&k.public_jwk).ok())
        .collect();
    json!({ "keys": served })
}

/// The discovery document of `issuer`.
pub fn discovery(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid"],
        "claims_supported": ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "airlock_stack",
            "airlock_run_phase", "airlock_run_id", "airlock_plan_sha256", "airlock_principal"],
    })
}

impl Oidc {
    /// Signs `claims` with the store's active key (creating the first one if there is none).
    /// Blocking: call from `spawn_blocking`.
    pub fn sign(&self, store: &dyn Store, claims: &Value) -> Result<(String, String), StoreError> {
        let keys = store.oidc_keys()?;
        let active = match keys.into_iter().find(|k| k.retired_at.is_none()) {
            Some(k) => k,
            None => {
                ensure_key(store)?;
                store
                    .oidc_keys()?
                    .into_iter()
                    .find(|k| k.retired_at.is_none())
                    .ok_or_else(|| StoreError::Backend("no active OIDC key".into()))?
            }
        };
        let key = {
            let mut cached = self.signing.lock().unwrap_or_else(|p| p.into_inner());
            match cached.as_ref() {
                Some(k) if k.kid() == active.kid => Arc::clone(k),
                _ => {
                    let pkcs8 = active.private_pkcs8.as_ref().ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "active OIDC key {} has no private key",
                            active.kid
                        ))
                    })?;
                    let k = Arc::new(
                        SigningKey::from_pkcs8(&active.kid, &pkcs8.0)
                            .map_err(|e| StoreError::Corrupt(e.0))?,
                    );
                    *cached = Some(Arc::clone(&k));
                    k
                }
            }
        };
        let jwt = key.sign(claims).map_err(|e| StoreError::Backend(e.0))?;
        Ok((jwt, key.kid().to_owned()))
    }

    /// The keys of a trusted forge issuer: cached for [`JWKS_CACHE`], fetched again when a
    /// token names a `kid` the cache lacks (at most every [`FETCH_RETRY`]). One fetch per
    /// issuer at a time (on a blocking thread): concurrent logins wait for its result rather
    /// than fetching too, so unauthenticated requests cannot multiply outbound fetches.
    pub async fn forge_keys(
        &self,
        issuer: &str,
        kid: Option<&str>,
    ) -> Result<Arc<Vec<VerifyingKey>>, String> {
        if let Some(known) = self.cached_keys(issuer, kid) {
            return known;
        }
        let flight = {
            let mut f = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(f.entry(issuer.to_owned()).or_default())
        };
        let _only_fetch = flight.lock().await;
        // The fetch we waited for may have answered this login already.
        if let Some(known) = self.cached_keys(issuer, kid) {
            return known;
        }
        let i = issuer.to_owned();
        let fetched = tokio::task::spawn_blocking(move || fetch_jwks(&i))
            .await
            .map_err(|e| format!("fetching {issuer}'s keys failed: {e}"))
            .and_then(|r| r)
            .map(Arc::new);
        let mut cache = self.forge_keys.lock().unwrap_or_else(|p| p.into_inner());
        match &fetched {
            Ok(keys) => cache.insert(
                issuer.to_owned(),
                Fetched::Keys(Instant::now(), Arc::clone(keys)),
            ),
            Err(e) => cache.insert(
                issuer.to_owned(),
                Fetched::Failed(Instant::now(), e.clone()),
            ),
        };
        fetched
    }

    /// The cached answer for `issuer`, unless a fetch is due: none yet, the keys are older
    /// than [`JWKS_CACHE`], or `kid` is unknown and the last fetch older than [`FETCH_RETRY`].
    fn cached_keys(
        &self,
        issuer: &str,
        kid: Option<&str>,
    ) -> Option<Result<Arc<Vec<VerifyingKey>>, String>> {
        let cache = self.forge_keys.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(issuer)? {
            Fetched::Keys(at, keys) => {
                let knows = kid.is_some_and(|k| keys.iter().any(|v| v.kid() == k));
                (at.elapsed() < JWKS_CACHE && (knows || at.elapsed() < FETCH_RETRY))
                    .then(|| Ok(Arc::clone(keys)))
            }
            Fetched::Failed(at, e) => (at.elapsed() < FETCH_RETRY).then(|| Err(e.clone())),
        }
    }
}

/// The claims of a phase identity token.
pub struct PhaseToken<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `aud`.
    pub audience: &'a str,
    /// The stack.
    pub stack: &'a str,
    /// `plan` or `apply`.
    pub phase: &'a str,
    /// The user the caller's token belongs to.
    pub principal: &'a str,
    /// The run (apply).
    pub run_id: Option<&'a str>,
    /// The approved plan's SHA-256 (apply).
    pub plan_sha256: Option<&'a str>,
    /// Lifetime, seconds (clamped to [`MAX_TOKEN_TTL_S`]).
    pub ttl_s: i64,
    /// Now, seconds.
    pub now_s: i64,
    /// `jti`.
    pub jti: &'a str,
}

/// The `sub` trust policies match: `stack:prod/app:run_phase:apply`.
pub fn phase_subject(stack: &str, phase: &str) -> String {
    format!("stack:{stack}:run_phase:{phase}")
}

impl PhaseToken<'_> {
    /// The claims.
    pub fn claims(&self) -> Value {
        let exp = self.now_s + self.ttl_s.clamp(60, MAX_TOKEN_TTL_S);
        let mut c = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": phase_subject(self.stack, self.phase),
            "iat": self.now_s,
            "nbf": self.now_s,
            "exp": exp,
            "jti": self.jti,
            "airlock_stack": self.stack,
            "airlock_run_phase": self.phase,
            "airlock_principal": self.principal,
        });
        if let Some(id) = self.run_id {
            c["airlock_run_id"] = json!(id);
        }
        if let Some(sha) = self.plan_sha256 {
            c["airlock_plan_sha256"] = json!(sha);
        }
        c
    }
}

/// An audience a client may ask for: 1 to 300 printable characters.
pub fn valid_audience(a: &str) -> bool {
    !a.trim().is_empty() && a.len() <= 300 && !a.chars().any(char::is_control)
}

/// The default issuer of a forge.
pub fn default_issuer(forge: &str) -> Option<&'static str> {
    match forge {
        "github" => Some("https://token.actions.githubusercontent.com"),
        "gitlab" => Some("https://gitlab.com"),
        _ => None,
    }
}

/// An issuer airlock may fetch keys from: `https://HOST[:PORT][/path]`, or `http` on a loopback
/// host (a local test issuer); no query, fragment or credentials.
pub fn valid_issuer(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| {
            let r = url.strip_prefix("http://")?;
            let host = r.split(['/', ':']).next()?;
            ["127.0.0.1", "localhost", "[::1]"]
                .contains(&host)
                .then_some(r)
        })
        .ok_or_else(|| {
            format!("issuer {url:?} must be an https:// URL (http:// only on a loopback host)")
        })?;
    if rest.is_empty()
        || url.len() > 300
        || rest.contains(['?', '#', '@', ' '])
        || url.ends_with('/')
        || url.chars().any(char::is_control)
    {
        return Err(format!(
            "issuer {url:?} is not a plain URL without a trailing slash, query or credentials"
        ));
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

fn get_bounded(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, String> {
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(s, _) => format!("{url} answered {s}"),
        ureq::Error::Transport(t) => format!("{url}: {t}"),
    })?;
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_FETCH_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("{url}: {e}"))?;
    if body.len() as u64 > MAX_FETCH_BYTES {
        return Err(format!("{url} sent more than {MAX_FETCH_BYTES} bytes"));
    }
    Ok(body)
}

/// Fetches an issuer's JWKS through its discovery document. The JWKS must be on the issuer's
/// own origin, so a configured issuer can send us nowhere else; no redirect is followed.
pub fn fetch_jwks(issuer: &str) -> Result<Vec<VerifyingKey>, String> {
    valid_issuer(issuer)?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(FETCH_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .redirects(0)
        .build();
    let doc = get_bounded(
        &agent,
        &format!("{issuer}/.well-known/openid-configuration"),
    )?;
    let doc: Value = serde_json::from_slice(&doc)
        .map_err(|_| format!("{issuer}'s discovery document is not JSON"))?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(format!(
            "{issuer}'s discovery document names another issuer"
        ));
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{issuer}'s discovery document has no jwks_uri"))?;
    if origin(jwks_uri) != origin(issuer) || !jwks_uri.starts_with(origin(issuer)) {
        return Err(format!(
            "{issuer}'s jwks_uri {jwks_uri:?} is not on the issuer's origin"
        ));
    }
    let jwks = get_bounded(&agent, jwks_uri)?;
    jose::parse_jwks(&jwks).map_err(|e| format!("{issuer}: {e}"))
}

/// What a forge login grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginGrant {
    /// The trust that matched (and the user of the token).
    pub trust_id: String,
    /// The role issued.
    pub role: Role,
    /// Its stack globs.
    pub stacks: Vec<String>,
    /// Its lifetime.
    pub lifetime_ms: i64,
    /// The job's `sub`, for the audit and the token's name.
    pub subject: String,
    /// The job's full git ref, read the forge's way (see [`job`]): the token's `job_ref`.
    pub git_ref: Option<String>,
}

fn claim<'a>(c: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    c.get(k).and_then(Value::as_str)
}

/// A forge id claim (the forges send decimal strings; a JSON integer is read as its decimal).
fn id_claim(c: &Map<String, Value>, k: &str) -> Option<String> {
    match c.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        _ => None,
    }
}

/// A forge's immutable id as a trust pins it: 1 to 20 decimal digits.
pub fn valid_forge_id(id: &str) -> bool {
    (1..=20).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// The names of a forge's id claims: (repository, owner).
pub fn id_claim_names(forge: &str) -> (&'static str, &'static str) {
    match forge {
        "gitlab" => ("project_id", "namespace_id"),
        _ => ("repository_id", "repository_owner_id"),
    }
}

fn plain(v: &str, max: usize) -> bool {
    !v.is_empty() && v.len() <= max && !v.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// What every stored trust must be, whether an admin adds it or a backup brings it: a known
/// forge, an issuer airlock may fetch keys from, an audience, a repository path, decimal ids
/// (when pinned; a trust added before ids were pinned has none and matches no job), a full
/// ref, the ci, agent or reader role (ci only with a ref: approving and administering stay
/// with people), valid stack globs, a lifetime of 1 minute to 6 hours.
pub fn check_trust(t: &OidcTrustRecord) -> Result<(), String> {
    if !t.id.starts_with(airlock_store::TRUST_ID_PREFIX) || !plain(&t.id, 100) {
        return Err(format!("trust id {:?} is not trust_…", t.id));
    }
    if default_issuer(&t.forge).is_none() {
        return Err(format!("forge {:?}: use github or gitlab", t.forge));
    }
    valid_issuer(&t.issuer)?;
    if !valid_audience(&t.audience) {
        return Err("audience must be 1-300 printable characters".into());
    }
    if !plain(&t.repository, 200) || !t.repository.contains('/') {
        return Err(format!(
            "repository {:?} must be the forge's path, e.g. org/repo",
            t.repository
        ));
    }
    let (repo_claim, owner_claim) = id_claim_names(&t.forge);
    for (what, claim, id) in [
        ("repository id", repo_claim, &t.repository_id),
        ("owner id", owner_claim, &t.owner_id),
    ] {
        if id.as_deref().is_some_and(|i| !valid_forge_id(i)) {
            return Err(format!(
                "{what} {:?} must be the forge's numeric `{claim}`",
                id.as_deref().unwrap_or_default()
            ));
        }
    }
    if t.repository_id.is_some() != t.owner_id.is_some() {
        return Err("a trust pins both the repository id and the owner id, or neither".into());
    }
    if let Some(r) = &t.git_ref {
        if !plain(r, 250) || !r.starts_with("refs/") {
            return Err(format!(
                "ref {r:?} must be a full ref, e.g. refs/heads/main"
            ));
        }
    }
    if t.environment
        .as_deref()
        .is_some_and(|e| e.is_empty() || e.len() > 200 || e.chars().any(char::is_control))
    {
        return Err("environment must be 1-200 printable characters".into());
    }
    let role: Role = t.role.parse()?;
    match role {
        Role::Ci if t.git_ref.is_none() => {
            return Err("the ci role (which applies) needs --ref: only the configured ref (the default branch, e.g. refs/heads/main) may get it".into())
        }
        Role::Ci | Role::Agent | Role::Reader => {}
        other => {
            return Err(format!("a CI job may get the ci, agent or reader role, never {other}: approving and administering stay with people"))
        }
    }
    if role.as_str() != t.role {
        return Err(format!(
            "role {:?} is not written as airlock writes it",
            t.role
        ));
    }
    if let Some(g) = t.stacks.iter().find(|g| !crate::valid_glob(g)) {
        return Err(format!("invalid stack glob {g:?}"));
    }
    if !(60_000..=MAX_LOGIN_LIFETIME_MS).contains(&t.lifetime_ms) {
        return Err("lifetime must be between 1m and 6h".into());
    }
    Ok(())
}

/// The job facts a trust judges, read the forge's way: repository, full ref, environment,
/// whether it is capped at `agent` (it may run for a pull/merge request: see [`job`]), and the
/// prefix its `sub` must have.
struct Job<'a> {
    repository: Option<&'a str>,
    /// The repository's and its owner's immutable ids (see [`id_claim`]).
    repository_id: Option<String>,
    owner_id: Option<String>,
    git_ref: Option<String>,
    environment: Option<&'a str>,
    capped: bool,
    sub_prefix: Option<String>,
}

/// GitLab pipeline sources whose jobs may get `ci`: a push, a person running the pipeline
/// (web UI or API), a schedule. Anything else (merge requests, child and multi-project
/// pipelines, trigger tokens, chat, sources GitLab adds later) is capped: an allow-list, like
/// GitHub's events.
const GITLAB_CI_SOURCES: [&str; 4] = ["push", "web", "api", "schedule"];

/// GitHub events whose jobs may get `ci`; unknown or missing events are capped.
const GITHUB_CI_EVENTS: [&str; 7] = [
    "push",
    "workflow_dispatch",
    "schedule",
    "merge_group",
    "release",
    "deployment",
    "repository_dispatch",
];

fn job<'a>(forge: &str, c: &'a Map<String, Value>) -> Job<'a> {
    match forge {
        "gitlab" => {
            let repository = claim(c, "project_path");
            let git_ref = match (claim(c, "ref_type"), claim(c, "ref")) {
                (Some("branch"), Some(r)) => Some(format!("refs/heads/{r}")),
                (Some("tag"), Some(r)) => Some(format!("refs/tags/{r}")),
                _ => None,
            };
            Job {
                repository,
                repository_id: id_claim(c, "project_id"),
                owner_id: id_claim(c, "namespace_id"),
                git_ref,
                environment: claim(c, "environment"),
                // An allow-list of sources, and a ref GitLab itself protects.
                capped: claim(c, "pipeline_source").is_none_or(|s| !GITLAB_CI_SOURCES.contains(&s))
                    || claim(c, "ref_protected") != Some("true"),
                sub_prefix: repository.map(|r| format!("project_path:{r}:")),
            }
        }
        _ => {
            let repository = claim(c, "repository");
            Job {
                repository,
                repository_id: id_claim(c, "repository_id"),
                owner_id: id_claim(c, "repository_owner_id"),
                git_ref: claim(c, "ref").map(str::to_owned),
                environment: claim(c, "environment"),
                // Unknown or missing events are capped: the cap fails closed.
                capped: claim(c, "event_name").is_none_or(|e| !GITHUB_CI_EVENTS.contains(&e)),
                sub_prefix: repository.map(|r| format!("repo:{r}:")),
            }
        }
    }
}

fn rank(r: Role) -> u8 {
    match r {
        Role::Ci => 3,
        Role::Agent => 2,
        _ => 1,
    }
}

/// Judges a verified forge token's claims against the active trusts of its issuer. The
/// signature, `iss` and times are checked before; this checks `aud`, `sub`, the trust's
/// conditions, and the roles: a pull/merge-request job (a capped one, see [`job`]) never
/// matches a `ci` trust, only trusts of a plan-capable role or less, and `want` (the role asked
/// for) must be within what matched.
pub fn judge_login(
    trusts: &[OidcTrustRecord],
    claims: &Map<String, Value>,
    want: Option<Role>,
) -> Result<LoginGrant, String> {
    let sub = claim(claims, "sub").ok_or("the token has no `sub`")?;
    let mut reasons = Vec::new();
    let mut best: Option<(Role, &OidcTrustRecord)> = None;
    for t in trusts.iter().filter(|t| t.removed_at.is_none()) {
        let j = job(&t.forge, claims);
        let why = if !jose::has_audience(claims, &t.audience) {
            Some(format!("the token's aud is not {:?}", t.audience))
        } else if j.repository != Some(t.repository.as_str()) {
            Some(format!(
                "repository {:?} is not {:?}",
                j.repository.unwrap_or("(none)"),
                t.repository
            ))
        } else if t.repository_id.is_none() {
            Some(format!(
                "it was added before trusts were pinned to the repository's id, so it matches no job until an admin pins it: airlock trust pin {} --repository-id ID --owner-id ID (the forge's `{}` and `{}`)",
                t.id,
                id_claim_names(&t.forge).0,
                id_claim_names(&t.forge).1
            ))
        } else if j.repository_id != t.repository_id || j.owner_id != t.owner_id {
            let (repo_claim, owner_claim) = id_claim_names(&t.forge);
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
            Some(format!(
                "{repo_claim} {} and {owner_claim} {} are not the pinned {} and {}: the repository at {:?} is not the one trusted (deleted and re-created, or its owner renamed and the name taken); if it moved legitimately, remove the trust and add one with the new ids",
                show(&j.repository_id),
                show(&j.owner_id),
                show(&t.repository_id),
                show(&t.owner_id),
                t.repository
            ))
        } else if j.sub_prefix.as_deref().is_none_or(|p| !sub.starts_with(p)) {
            Some(format!(
                "sub {sub:?} does not belong to repository {:?}",
                t.repository
            ))
        } else if t
            .git_ref
            .as_ref()
            .is_some_and(|r| j.git_ref.as_ref() != Some(r))
        {
            Some(format!(
                "ref {:?} is not {:?}",
                j.git_ref.as_deref().unwrap_or("(none)"),
                t.git_ref.as_deref().unwrap_or_default()
            ))
        } else if t
            .environment
            .as_deref()
            .is_some_and(|e| j.environment != Some(e))
        {
            Some(format!(
                "environment {:?} is not {:?}",
                j.environment.unwrap_or("(none)"),
                t.environment.as_deref().unwrap_or_default()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            reasons.push(format!("trust {}: {why}", t.id));
            continue;
        }
        let Ok(role) = t.role.parse::<Role>() else {
            continue;
        };
        // A trust grants its role or nothing: a capped job does not match a ci trust (which
        // would otherwise hand it agent on the ci trust's stacks, e.g. prod/*); it needs a
        // trust of its own (the agent trust for pull requests).
        if j.capped && role == Role::Ci {
            reasons.push(format!(
                "trust {}: grants ci, which a job of a pull/merge request (or of a GitHub event, GitLab pipeline source or unprotected GitLab ref that may not apply) never gets",
                t.id
            ));
            continue;
        }
        if best.is_none_or(|(r, _)| rank(role) > rank(r)) {
            best = Some((role, t));
        }
    }
    let Some((role, t)) = best else {
        return Err(if reasons.is_empty() {
            "no trust is configured for this issuer".into()
        } else {
            format!("no trust matches this job: {}", reasons.join("; "))
        });
    };
    let role = match want {
        None => role,
        Some(w)
            if w == role || (rank(w) < rank(role) && matches!(w, Role::Agent | Role::Reader)) =>
        {
            w
        }
        Some(Role::Ci) if job(&t.forge, claims).capped => {
            return Err(
                "a job of a pull/merge request (or of a GitHub event, GitLab pipeline source or unprotected GitLab ref that may not apply) gets at most a plan-capable role (agent), never ci".into(),
            )
        }
        Some(w) => return Err(format!("this job may get at most the {role} role, not {w}")),
    };
    Ok(LoginGrant {
        trust_id: t.id.clone(),
        role,
        stacks: t.stacks.clone(),
        lifetime_ms: t.lifetime_ms.clamp(60_000, MAX_LOGIN_LIFETIME_MS),
        subject: sub.to_owned(),
        git_ref: job(&t.forge, claims).git_ref,
    })
}

/// Longest `jti` a forge ID token may carry (GitHub's and GitLab's are 36-character UUIDs).
pub const MAX_JTI_LEN: usize = 128;
/// How long after a forge token's `exp` the record of its use is kept (ms): the leeway
/// [`jose::check_times`] allows, plus a margin for replicas whose clocks differ, so that no
/// replica still accepts a token whose record another one has pruned.
pub const USED_TOKEN_KEPT_MS: i64 = (LEEWAY_S + 300) * 1000;

/// What makes a verified forge token single-use: its `jti` and its `exp` (ms). The `jti` is
/// required (GitHub and GitLab put one in every ID token) and must be 1 to [`MAX_JTI_LEN`]
/// characters, none of them control characters.
pub fn single_use(claims: &Map<String, Value>) -> Result<(&str, i64), String> {
    let jti = match claims.get("jti") {
        None => return Err("the token has no `jti` (GitHub and GitLab set one on every ID token), so it could not be used only once".into()),
        Some(v) => v.as_str().ok_or("the token's `jti` is not a string")?,
    };
    if jti.is_empty() || jti.len() > MAX_JTI_LEN || jti.chars().any(char::is_control) {
        return Err(format!(
            "the token's `jti` must be 1 to {MAX_JTI_LEN} printable characters"
        ));
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or("the token has no whole-number `exp`")?;
    Ok((jti, exp.saturating_mul(1000)))
}

/// The key of a successful `oidc.login` audit event that names the forge ID token the login
/// used ([`UsedForgeToken`]): the one-use records are not in backups, and `backup import`
/// rebuilds them from these events.
pub const LOGIN_ID_TOKEN: &str = "id_token";

/// A forge ID token a login used: the row `Store::use_forge_token` inserts, and what the
/// login's audit event names under [`LOGIN_ID_TOKEN`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedForgeToken {
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `jti` (checked by [`single_use`]).
    pub jti: String,
    /// The token's `exp`, in ms.
    pub exp_ms: i64,
}

impl UsedForgeToken {
    /// As the `oidc.login` event records it.
    pub fn to_json(&self) -> Value {
        json!({"iss": self.issuer, "jti": self.jti, "exp_ms": self.exp_ms})
    }

    /// The token a successful `oidc.login` event names; `None` for any other record, and for
    /// a login recorded before the events named their token.
    pub fn of_event(r: &airlock_core::audit::AuditRecord) -> Option<UsedForgeToken> {
        if r.action != "oidc.login" || r.outcome != "ok" {
            return None;
        }
        let t = r.detail.get(LOGIN_ID_TOKEN)?;
        let jti = t.get("jti")?.as_str()?;
        if jti.is_empty() || jti.len() > MAX_JTI_LEN || jti.chars().any(char::is_control) {
            return None;
        }
        Some(UsedForgeToken {
            issuer: t.get("iss")?.as_str()?.to_owned(),
            jti: jti.to_owned(),
            exp_ms: t.get("exp_ms")?.as_i64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_event_names_its_id_token_and_only_a_successful_login_counts() {
        let used = UsedForgeToken {
            issuer: "https://token.actions.githubusercontent.com".into(),
            jti: "0f6e1b1c-2d3e-4f50-8a9b-0c1d2e3f4a5b".into(),
            exp_ms: 1_800_000_000_000,
        };
        let event =
            |action: &str, outcome: &str, id_token: Value| airlock_core::audit::AuditRecord {
                seq: 1,
                chain: Some(String::new()),
                chain_seq: Some(1),
                at: "2026-12-01T00:00:00Z".into(),
                actor: "forge login".into(),
                action: action.into(),
                stack: None,
                outcome: outcome.into(),
                detail: json!({"trust": "trust_ci", LOGIN_ID_TOKEN: id_token}),
                prev_hash: String::new(),
                hash: String::new(),
            };
        let ok = |t: Value| UsedForgeToken::of_event(&event("oidc.login", "ok", t));
        assert_eq!(ok(used.to_json()), Some(used.clone()));
        assert_eq!(
            UsedForgeToken::of_event(&event("oidc.login", "denied", used.to_json())),
            None
        );
        assert_eq!(
            UsedForgeToken::of_event(&event("token.create", "ok", used.to_json())),
            None
        );
        // Recorded before events named the token, or hostile: nothing to mark.
        for bad in [
            Value::Null,
            json!({"iss": used.issuer, "jti": used.jti}),
            json!({"iss": used.issuer, "jti": used.jti, "exp_ms": "1800000000000"}),
            json!({"iss": 7, "jti": used.jti, "exp_ms": 1}),
            json!({"iss": used.issuer, "jti": "", "exp_ms": 1}),
            json!({"iss": used.issuer, "jti": "x".repeat(MAX_JTI_LEN + 1), "exp_ms": 1}),
            json!({"iss": used.issuer, "jti": "a\nb", "exp_ms": 1}),
        ] {
            assert_eq!(ok(bad.clone()), None, "{bad}");
        }
    }

    fn trust(role: &str, git_ref: Option<&str>) -> OidcTrustRecord {
        OidcTrustRecord {
            id: format!("trust_{role}"),
            forge: "github".into(),
            issuer: "https://token.actions.githubusercontent.com".into(),
            audience: "https://airlock.example".into(),
            repository: "org/repo".into(),
            repository_id: Some("1001".into()),
            owner_id: Some("2002".into()),
            git_ref: git_ref.map(str::to_owned),
            environment: None,
            role: role.into(),
            stacks: vec!["prod/*".into()],
            lifetime_ms: 3_600_000,
            created_at: 0,
            created_by: "admin".into(),
            removed_at: None,
            removed_by: None,
        }
    }

    fn gh(event: &str, git_ref: &str) -> Map<String, Value> {
        json!({"sub": format!("repo:org/repo:ref:{git_ref}"), "aud": "https://airlock.example",
               "repository": "org/repo", "repository_id": "1001", "repository_owner_id": "2002",
               "ref": git_ref, "event_name": event})
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn the_default_branch_push_gets_ci_and_a_pull_request_at_most_agent() {
        let trusts = [trust("ci", Some("refs/heads/main")), trust("agent", None)];
        let g = judge_login(&trusts, &gh("push", "refs/heads/main"), None).unwrap();
        assert_eq!((g.role, g.trust_id.as_str()), (Role::Ci, "trust_ci"));
        // pull_request_target runs on the base ref: the event caps it.
        let pr = gh("pull_request_target", "refs/heads/main");
        assert_eq!(judge_login(&trusts, &pr, None).unwrap().role, Role::Agent);
        let e = judge_login(&trusts, &pr, Some(Role::Ci)).unwrap_err();
        assert!(e.contains("at most a plan-capable role"), "{e}");
        let other = gh("push", "refs/heads/feature");
        assert_eq!(
            judge_login(&trusts, &other, None).unwrap().role,
            Role::Agent
        );
        assert!(judge_login(&trusts, &other, Some(Role::Ci)).is_err());
        assert!(judge_login(&trusts, &other, Some(Role::Admin)).is_err());
        assert_eq!(
            judge_login(&trusts, &other, Some(Role::Reader))
                .unwrap()
                .role,
            Role::Reader
        );
    }

    #[test]
    fn a_capped_job_never_matches_a_ci_trust() {
        // Only a ci trust: a pull_request_target job on main gets nothing (not agent on the
        // ci trust's stacks), and the refusal says why.
        let only_ci = [trust("ci", Some("refs/heads/main"))];
        let prt = gh("pull_request_target", "refs/heads/main");
        let e = judge_login(&only_ci, &prt, None).unwrap_err();
        assert!(e.contains("grants ci"), "{e}");
        // With an agent trust too, that one is matched, whatever the order.
        let mut pr_trust = trust("agent", None);
        pr_trust.stacks = vec!["dev/*".into()];
        for trusts in [
            [only_ci[0].clone(), pr_trust.clone()],
            [pr_trust.clone(), only_ci[0].clone()],
        ] {
            let g = judge_login(&trusts, &prt, None).unwrap();
            assert_eq!((g.role, g.stacks), (Role::Agent, vec!["dev/*".to_owned()]));
        }
    }

    #[test]
    fn conditions_audience_and_subject_must_all_hold() {
        let trusts = [trust("ci", Some("refs/heads/main"))];
        let mut c = gh("push", "refs/heads/main");
        c.insert("aud".into(), json!("https://elsewhere"));
        assert!(judge_login(&trusts, &c, None).unwrap_err().contains("aud"));
        let mut c = gh("push", "refs/heads/main");
        c.insert("repository".into(), json!("org/other"));
        assert!(judge_login(&trusts, &c, None)
            .unwrap_err()
            .contains("repository"));
        let mut c = gh("push", "refs/heads/main");
        c.insert("sub".into(), json!("repo:evil/repo:ref:refs/heads/main"));
        assert!(judge_login(&trusts, &c, None).unwrap_err().contains("sub"));
        let mut env = trust("ci", Some("refs/heads/main"));
        env.environment = Some("production".into());
        assert!(judge_login(&[env], &gh("push", "refs/heads/main"), None)
            .unwrap_err()
            .contains("environment"));
        let mut removed = trust("ci", Some("refs/heads/main"));
        removed.removed_at = Some(1);
        assert!(judge_login(&[removed], &gh("push", "refs/heads/main"), None).is_err());
    }

    #[test]
    fn a_trust_matches_only_its_pinned_ids_and_an_unpinned_one_nothing() {
        let trusts = [trust("ci", Some("refs/heads/main"))];
        let push = gh("push", "refs/heads/main");
        assert_eq!(judge_login(&trusts, &push, None).unwrap().role, Role::Ci);
        for (k, v) in [
            ("repository_id", json!("9999")),
            ("repository_owner_id", json!("9999")),
            ("repository_id", Value::Null),
            ("repository_id", json!(1001.5)),
        ] {
            let mut c = push.clone();
            c.insert(k.into(), v.clone());
            let e = judge_login(&trusts, &c, None).unwrap_err();
            assert!(e.contains("not the pinned"), "{k}={v}: {e}");
        }
        let mut c = push.clone();
        c.remove("repository_owner_id");
        assert!(judge_login(&trusts, &c, None).is_err());
        // An integer claim is read as its decimal.
        let mut c = push.clone();
        c.insert("repository_id".into(), json!(1001));
        assert!(judge_login(&trusts, &c, None).is_ok());
        // GitLab's claims are project_id and namespace_id.
        let mut gl = trust("agent", None);
        gl.forge = "gitlab".into();
        let job = |project: &str| {
            json!({"sub": "project_path:org/repo:ref_type:branch:ref:main", "aud": "https://airlock.example",
                   "project_path": "org/repo", "project_id": project, "namespace_id": "2002",
                   "ref": "main", "ref_type": "branch", "pipeline_source": "push"})
            .as_object()
            .unwrap()
            .clone()
        };
        assert!(judge_login(std::slice::from_ref(&gl), &job("1001"), None).is_ok());
        assert!(judge_login(std::slice::from_ref(&gl), &job("1002"), None).is_err());
        // A trust added before ids were pinned matches nothing, and says how to pin it.
        let mut legacy = trust("ci", Some("refs/heads/main"));
        legacy.repository_id = None;
        legacy.owner_id = None;
        let e = judge_login(&[legacy], &push, None).unwrap_err();
        assert!(
            e.contains("airlock trust pin trust_ci --repository-id"),
            "{e}"
        );
    }

    #[test]
    fn a_stored_trust_is_checked_by_one_rule() {
        let ok = trust("ci", Some("refs/heads/main"));
        assert_eq!(check_trust(&ok), Ok(()));
        let mut unpinned = ok.clone();
        unpinned.repository_id = None;
        unpinned.owner_id = None;
        assert_eq!(
            check_trust(&unpinned),
            Ok(()),
            "a legacy trust may be stored"
        );
        type Spoil = fn(&mut OidcTrustRecord);
        let bad: [(&str, Spoil); 10] = [
            ("never admin", |t| t.role = "admin".into()),
            ("never approver", |t| t.role = "approver".into()),
            ("needs --ref", |t| t.git_ref = None),
            ("https", |t| t.issuer = "http://example.com".into()),
            ("numeric", |t| t.repository_id = Some("12a".into())),
            ("or neither", |t| t.owner_id = None),
            ("glob", |t| t.stacks = vec!["Prod/**/".into()]),
            ("lifetime", |t| t.lifetime_ms = 7 * 3_600_000),
            ("forge", |t| t.forge = "bitbucket".into()),
            ("trust_", |t| t.id = "tok_x".into()),
        ];
        for (want, spoil) in bad {
            let mut t = ok.clone();
            spoil(&mut t);
            let e = check_trust(&t).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn issuers_are_https_or_loopback_and_the_jwks_stays_on_their_origin() {
        assert!(valid_issuer("https://token.actions.githubusercontent.com").is_ok());
        assert!(valid_issuer("http://127.0.0.1:8080").is_ok());
        for bad in [
            "http://example.com",
            "https://a/?x",
            "https://u@a",
            "https://a/",
            "ftp://a",
            "https://",
        ] {
            assert!(valid_issuer(bad).is_err(), "{bad}");
        }
        assert_eq!(origin("https://a.b:1/x/y"), "https://a.b:1");
        assert_eq!(origin("https://a.b"), "https://a.b");
    }

    #[test]
    fn the_jwks_keeps_a_retired_key_until_its_tokens_expired() {
        let key = |kid: &str, retired_at| OidcKeyRecord {
            kid: kid.into(),
            alg: "ES256".into(),
            public_jwk: format!(r#"{{"kid":"{kid}"}}"#),
            private_pkcs8: None,
            created_at: 0,
            retired_at,
        };
        let keys = [key("old", Some(1_000)), key("new", None)];
        assert_eq!(
            jwks(&keys, 1_000 + RETIRED_KEY_GRACE_MS - 1)["keys"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            jwks(&keys, 1_000 + RETIRED_KEY_GRACE_MS)["keys"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
