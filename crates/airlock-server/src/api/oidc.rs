//! The OIDC issuer's endpoints (discovery, JWKS, phase identity tokens, key rotation) and forge
//! logins (trusts, and the exchange of a CI job's ID token for an airlock token). The rules are
//! in `crate::oidc`; these handlers translate, and audit every issue and every refusal.

use std::sync::Arc;

use airlock_core::refusal::RefusalKind;
use airlock_core::time::parse_duration_ms;
use airlock_core::Role;
use airlock_store::{
    now_ms, MintLimit, NewAudit, NewToken, OidcTrustRecord, RunStatus, StoreError,
};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::tokens::within_scope;
use super::{parse_body, store_call};
use crate::audit_budget::Kind as Budget;
use crate::auth::{Denial, Principal, RequestStack};
use crate::error::{ApiError, ApiResult};
use crate::oidc::{self, jose, PhaseToken};
use crate::stacks::{blocking, existing_stack};
use crate::{tokens, AppState};

/// Airlock tokens one trust may issue per hour (counted in the database, like phase tokens): a
/// busy repository's jobs, with a bound on a leaked or replayed forge token's use.
const LOGIN_LIMIT: MintLimit = crate::tokens::PIPELINE_LIMIT;

fn issuer(state: &AppState) -> ApiResult<String> {
    state
        .config
        .public_url
        .as_deref()
        .map(oidc::issuer_url)
        .ok_or_else(|| {
            ApiError::new(
                RefusalKind::NotFound,
                "this server is not an OIDC issuer: start it with --public-url (the issuer URL clouds fetch the JWKS from)",
            )
        })
}

/// Appends a denied audit event and returns the refusal.
async fn refuse(
    state: &Arc<AppState>,
    actor: &str,
    action: &str,
    stack: Option<&str>,
    kind: RefusalKind,
    message: String,
) -> ApiError {
    let (actor, action, stack, msg) = (
        actor.to_owned(),
        action.to_owned(),
        stack.map(str::to_owned),
        message.clone(),
    );
    let status = crate::error::status_of(kind).as_u16();
    let _ = blocking(state, move |st| {
        st.append_audit(NewAudit::denied(
            &actor,
            &action,
            stack.as_deref(),
            json!({"reason": msg, "status": status}),
        ))
    })
    .await;
    ApiError::new(kind, message)
}

/// `GET /.well-known/openid-configuration`.
pub async fn discovery(State(state): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    Ok(Json(oidc::discovery(&issuer(&state)?)))
}

/// `GET /.well-known/jwks.json`: the active key and the retired keys whose tokens may still
/// be valid.
pub async fn jwks(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    issuer(&state)?;
    let keys = store_call(&state, |st| st.oidc_keys()).await?;
    Ok((
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(oidc::jwks(&keys, now_ms())),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityRequest {
    audience: String,
    ttl_seconds: Option<i64>,
}

async fn issue(
    state: &Arc<AppState>,
    p: &Principal,
    req: IdentityRequest,
    stack: &str,
    phase: &'static str,
    run: Option<(&str, &str)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let iss = issuer(state)?;
    let action = format!("oidc.{phase}_token");
    if !oidc::valid_audience(&req.audience) {
        return Err(refuse(
            state,
            &p.display(),
            &action,
            Some(stack),
            RefusalKind::BadRequest,
            "audience must be 1-300 printable characters (AWS: sts.amazonaws.com)".into(),
        )
        .await);
    }
    let ttl = req.ttl_seconds.unwrap_or(oidc::MAX_TOKEN_TTL_S);
    if !(60..=oidc::MAX_TOKEN_TTL_S).contains(&ttl) {
        return Err(refuse(
            state,
            &p.display(),
            &action,
            Some(stack),
            RefusalKind::BadRequest,
            format!(
                "ttl_seconds must be between 60 and {}",
                oidc::MAX_TOKEN_TTL_S
            ),
        )
        .await);
    }
    // Nothing revokes an identity token once signed: it ends no later than the token that
    // asked for it, and one with under a minute left (the shortest identity token) gets none.
    let now = now_ms();
    let ttl = match p.expires_at {
        None => ttl,
        Some(ends) => {
            let left = ends.div_euclid(1000) - now.div_euclid(1000);
            if left < 60 {
                return Err(refuse(
                    state,
                    &p.display(),
                    &action,
                    Some(stack),
                    RefusalKind::Forbidden,
                    format!(
                        "token {} expires in under a minute; an identity token lives at least a minute and never longer than the token that asks for it",
                        p.name
                    ),
                )
                .await);
            }
            ttl.min(left)
        }
    };
    let jti = tokens::random_id("jti_");
    let claims = PhaseToken {
        issuer: &iss,
        audience: &req.audience,
        stack,
        phase,
        principal: &p.user,
        run_id: run.map(|r| r.0),
        plan_sha256: run.map(|r| r.1),
        ttl_s: ttl,
        now_s: now.div_euclid(1000),
        jti: &jti,
    }
    .claims();
    let audit = NewAudit::ok(
        &p.display(),
        &action,
        Some(stack),
        json!({"jti": jti, "sub": claims["sub"], "aud": claims["aud"], "exp": claims["exp"], "run": run.map(|r| r.0)}),
    );
    let st = Arc::clone(state);
    let c = claims.clone();
    let (jwt, kid) = blocking(state, move |store| -> airlock_store::Result<_> {
        let signed = st.oidc.sign(store, &c)?;
        store.append_audit(audit)?;
        Ok(signed)
    })
    .await??;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"token": jwt, "kid": kid, "sub": claims["sub"], "expires_at": claims["exp"].as_i64().unwrap_or(0) * 1000}),
        ),
    ))
}

/// `POST /api/v1/stacks/{stack}/identity-token`: a plan-phase identity token for the stack.
pub async fn plan_identity(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Extension(RequestStack(stack)): Extension<RequestStack>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: IdentityRequest = parse_body(&body)?;
    if p.run_id.is_some() {
        return Err(refuse(&state, &p.display(), "oidc.plan_token", Some(stack.as_str()), RefusalKind::Forbidden,
            "a run-bound token gets the apply-phase identity token (POST /api/v1/runs/ID/identity-token), not a plan-phase one".into()).await);
    }
    // A deleted (archived) stack's cloud role stays out of reach, as its other writes do.
    if let Some(r) = existing_stack(&state, &p, stack.as_str())
        .await?
        .refuse_if_archived()
    {
        return Err(refuse(
            &state,
            &p.display(),
            "oidc.plan_token",
            Some(stack.as_str()),
            r.kind,
            r.message,
        )
        .await);
    }
    issue(&state, &p, req, stack.as_str(), "plan", None).await
}

/// `POST /api/v1/runs/{id}/identity-token`: the apply-phase identity token, only to the run's
/// own run-bound token, while the run applies, within [`oidc::APPLY_TOKEN_WINDOW_MS`] of the
/// start of its apply. Bound to the run and its approved plan's SHA-256.
pub async fn apply_identity(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let req: IdentityRequest = parse_body(&body)?;
    let i = id.clone();
    let run = store_call(&state, move |st| st.run(&i))
        .await?
        .ok_or_else(|| ApiError::new(RefusalKind::NotFound, format!("no run {id}")))?;
    let now = now_ms();
    let why = if p.run_id.as_deref() != Some(run.id.as_str())
        || run.apply_token.as_deref() != Some(p.token_id.as_str())
    {
        Some(format!("only run {id}'s own run-bound token (minted when airlock apply started it) gets its apply-phase identity token"))
    } else if run.status != RunStatus::Applying {
        Some(format!("run {id} is {:?}, not applying: an apply-phase identity token is issued only while the run applies", run.status))
    } else if run
        .apply_started_at
        .is_none_or(|at| now - at > oidc::APPLY_TOKEN_WINDOW_MS)
    {
        Some(format!("run {id} started applying more than {} minutes ago; its apply-phase identity token is issued only right after the start", oidc::APPLY_TOKEN_WINDOW_MS / 60_000))
    } else {
        None
    };
    if let Some(why) = why {
        return Err(refuse(
            &state,
            &p.display(),
            "oidc.apply_token",
            Some(&run.stack),
            RefusalKind::Forbidden,
            why,
        )
        .await);
    }
    issue(
        &state,
        &p,
        req,
        &run.stack,
        "apply",
        Some((&run.id, &run.plan_sha256)),
    )
    .await
}

/// `POST /api/v1/oidc/rotate` (admin of all stacks): a new active key; the old one signs no
/// more (its private half is erased) and leaves the JWKS when its tokens have expired.
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    all_stacks_admin(&p)?;
    let by = p.display();
    let key = store_call(&state, move |st| oidc::add_key(st, true, &by)).await?;
    Ok(Json(json!({
        "kid": key.kid,
        "note": format!("the previous key signs nothing more and stays in the JWKS for {} minutes, until every token it signed has expired", oidc::RETIRED_KEY_GRACE_MS / 60_000),
    })))
}

fn all_stacks_admin(p: &Principal) -> ApiResult<()> {
    p.may_mint()?;
    if !p.stacks.is_empty() {
        return Err(ApiError::new(RefusalKind::Forbidden, format!("token {} is scoped to {:?}; OIDC keys are server-wide: use an admin token for all stacks", p.name, p.stacks)));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTrust {
    forge: String,
    repository: String,
    repository_id: Option<String>,
    owner_id: Option<String>,
    git_ref: Option<String>,
    environment: Option<String>,
    role: String,
    #[serde(default)]
    stacks: Vec<String>,
    issuer: Option<String>,
    audience: Option<String>,
    lifetime: Option<String>,
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(RefusalKind::BadRequest, m)
}

/// How an admin finds a repository's ids (for the refusal that asks for them).
fn where_ids_are(forge: &str, repository: &str) -> String {
    let (repo_claim, owner_claim) = oidc::id_claim_names(forge);
    let lookup = match forge {
        "gitlab" => format!(
            "glab api projects/{} | jq '.id, .namespace.id'",
            repository.replace('/', "%2F")
        ),
        _ => format!("gh api repos/{repository} --jq '.id, .owner.id'"),
    };
    format!("the forge's immutable ids (the job token's `{repo_claim}` and `{owner_claim}`; e.g. `{lookup}`)")
}

/// `POST /api/v1/oidc/trusts` (admin): trust a forge's CI jobs of one repository, pinned to
/// its immutable ids (a path alone can be re-registered by someone else).
pub async fn add_trust(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    p.may_mint()?;
    let req: AddTrust = parse_body(&body)?;
    let default_issuer = oidc::default_issuer(&req.forge)
        .ok_or_else(|| bad(format!("forge {:?}: use github or gitlab", req.forge)))?;
    let (Some(repository_id), Some(owner_id)) = (req.repository_id, req.owner_id) else {
        return Err(bad(format!(
            "give --repository-id and --owner-id: a trust is pinned to {}, so a repository re-created at the same path by someone else is not trusted",
            where_ids_are(&req.forge, &req.repository)
        )));
    };
    let audience = match req.audience {
        Some(a) => a,
        None => state
            .config
            .public_url
            .as_deref()
            .map(oidc::issuer_url)
            .ok_or_else(|| {
                bad("give --audience, or start the server with --public-url (the default audience)")
            })?,
    };
    let lifetime_ms = match req.lifetime.as_deref() {
        None => 3_600_000,
        Some(l) => parse_duration_ms(l).map_err(bad)?,
    };
    let trust = OidcTrustRecord {
        id: tokens::random_id(airlock_store::TRUST_ID_PREFIX),
        issuer: req.issuer.unwrap_or_else(|| default_issuer.to_owned()),
        forge: req.forge,
        audience,
        repository: req.repository,
        repository_id: Some(repository_id),
        owner_id: Some(owner_id),
        git_ref: req.git_ref,
        environment: req.environment,
        // As airlock writes it; a name that is no role is refused by `check_trust`.
        role: req
            .role
            .parse::<Role>()
            .map_or(req.role, |r| r.as_str().to_owned()),
        stacks: req.stacks,
        lifetime_ms,
        created_at: now_ms(),
        created_by: p.display(),
        removed_at: None,
        removed_by: None,
    };
    oidc::check_trust(&trust).map_err(bad)?;
    if !within_scope(&p.stacks, &trust.stacks) {
        return Err(ApiError::new(RefusalKind::Forbidden, format!("token {} is scoped to {:?}; a trust cannot reach beyond it (requested {:?}, none meaning all stacks)", p.name, p.stacks, trust.stacks)));
    }
    let audit = NewAudit::ok(
        &p.display(),
        "oidc.trust_add",
        None,
        serde_json::to_value(&trust).unwrap_or_default(),
    );
    let t = trust.clone();
    store_call(&state, move |st| st.add_oidc_trust(&t, audit)).await?;
    Ok((StatusCode::CREATED, Json(json!({"trust": trust}))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinTrust {
    repository_id: String,
    owner_id: String,
}

/// `POST /api/v1/oidc/trusts/{id}/pin` (admin): pins a trust added before trusts were pinned
/// to the repository's ids (until then it matches no job). Once: other ids are another trust.
pub async fn pin_trust(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    p.may_mint()?;
    let req: PinTrust = parse_body(&body)?;
    let trusts = store_call(&state, |st| st.oidc_trusts()).await?;
    let t = trusts
        .iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::new(RefusalKind::NotFound, format!("no trust {id}")))?;
    if !within_scope(&p.stacks, &t.stacks) {
        return Err(ApiError::new(
            RefusalKind::Forbidden,
            format!("trust {id} reaches beyond token {}'s stacks", p.name),
        ));
    }
    let mut pinned = t.clone();
    pinned.repository_id = Some(req.repository_id.clone());
    pinned.owner_id = Some(req.owner_id.clone());
    oidc::check_trust(&pinned).map_err(|e| {
        bad(format!(
            "{e}; pin it to {}",
            where_ids_are(&t.forge, &t.repository)
        ))
    })?;
    let by = p.display();
    let audit = NewAudit::ok(
        &by,
        "oidc.trust_pin",
        None,
        json!({"trust": id, "repository": t.repository, "repository_id": req.repository_id, "owner_id": req.owner_id}),
    );
    let t = store_call(&state, move |st| {
        st.pin_oidc_trust(&id, &req.repository_id, &req.owner_id, audit)
    })
    .await?;
    Ok(Json(json!({"trust": t})))
}

/// `GET /api/v1/oidc/trusts` (admin): the trusts within the token's stacks, as for adding and
/// removing one (an admin of `dev/*` does not read the repositories that reach `prod/*`).
pub async fn list_trusts(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    let trusts: Vec<OidcTrustRecord> = store_call(&state, |st| st.oidc_trusts())
        .await?
        .into_iter()
        .filter(|t| within_scope(&p.stacks, &t.stacks))
        .collect();
    Ok(Json(json!({"trusts": trusts})))
}

/// `POST /api/v1/oidc/trusts/{id}/remove` (admin).
pub async fn remove_trust(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    p.may_mint()?;
    let trusts = store_call(&state, |st| st.oidc_trusts()).await?;
    if let Some(t) = trusts.iter().find(|t| t.id == id) {
        if !within_scope(&p.stacks, &t.stacks) {
            return Err(ApiError::new(
                RefusalKind::Forbidden,
                format!("trust {id} reaches beyond token {}'s stacks", p.name),
            ));
        }
    }
    let (by, i) = (p.display(), id.clone());
    let audit = NewAudit::ok(&by, "oidc.trust_remove", None, json!({"trust": id}));
    let t = store_call(&state, move |st| st.remove_oidc_trust(&i, &by, audit)).await?;
    // The tokens the trust issued were revoked with it: none may stay cached as valid.
    state.cache.forget_tokens();
    Ok(Json(json!({"trust": t})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
    role: Option<String>,
}

/// A claimed value from a token not yet verified, bounded and printable, for the audit.
fn claimed(v: Option<&Value>) -> String {
    let s = v.and_then(Value::as_str).unwrap_or("(none)");
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Largest forge login body (413 past it): read before any credential is checked, so kept
/// small; twice [`jose::MAX_TOKEN_BYTES`], so a token somewhat over that is still refused by
/// `jose::decode` saying why.
pub const MAX_LOGIN_BODY: usize = 2 * jose::MAX_TOKEN_BYTES;

/// `POST /api/v1/oidc/login` (no airlock token: the forge's ID token is the credential).
pub async fn login(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), Denial> {
    let req: Login = parse_body(&body)?;
    let unauth = RefusalKind::Unauthenticated;
    let action = "oidc.login";
    let token = match jose::decode(req.token.trim()) {
        Ok(t) => t,
        Err(e) => {
            return Err(refuse_login(
                &state,
                "forge login",
                (
                    unauth,
                    format!("forge token refused: {e}"),
                    Budget::WithoutCredential,
                ),
            )
            .await)
        }
    };
    let (iss, sub) = (
        claimed(token.claims.get("iss")),
        claimed(token.claims.get("sub")),
    );
    let actor = format!("forge login (claimed iss {iss}, sub {sub})");
    let want = match req.role.as_deref().map(str::parse::<Role>).transpose() {
        Ok(w) => w,
        Err(e) => return Err(bad(e).into()),
    };
    let trusts: Vec<OidcTrustRecord> = store_call(&state, |st| st.oidc_trusts())
        .await?
        .into_iter()
        .filter(|t| t.removed_at.is_none() && t.issuer == iss)
        .collect();
    if trusts.is_empty() {
        return Err(refuse_login(&state, &actor, (unauth, format!("forge token refused: issuer {iss:?} is not trusted (an admin adds it with `airlock trust add`)"), Budget::WithoutCredential)).await);
    }
    // The signature with the issuer's keys, the token's times, the trusts' judgement, then one
    // login per ID token (recorded only once it is signed, in time and trusted, so a refused
    // token cannot spend a real job's jti; and before anything is minted): any failure is one
    // audited refusal.
    let judged = async {
        let keys = state
            .oidc
            .forge_keys(&iss, token.kid.as_deref())
            .await
            .map_err(|e| {
                (
                    unauth,
                    format!("the issuer's keys could not be fetched: {e}"),
                    Budget::WithoutCredential,
                )
            })?;
        let claims = token
            .verify(&keys)
            .map_err(|e| (unauth, e.to_string(), Budget::WithoutCredential))?;
        // Signed by the issuer from here on.
        jose::check_times(&claims, now_ms() / 1000, oidc::LEEWAY_S)
            .map_err(|e| (unauth, e.to_string(), Budget::SignedLogin))?;
        let grant = oidc::judge_login(&trusts, &claims, want).map_err(|e| {
            let kind = if e.contains("role") {
                RefusalKind::Forbidden
            } else {
                unauth
            };
            (kind, e, Budget::SignedLogin)
        })?;
        match use_once(&state, &iss, &claims).await {
            Ok(Ok(used)) => Ok(Ok((grant, used))),
            Ok(Err(e)) => Err((unauth, e, Budget::SignedLogin)),
            // The store failed: an internal error, not a refusal.
            Err(e) => Ok(Err(e)),
        }
    }
    .await;
    let (grant, used) = match judged {
        Ok(judged) => judged.map_err(Denial::from)?,
        Err((kind, e, budget)) => {
            return Err(refuse_login(
                &state,
                &actor,
                (kind, format!("forge token refused: {e}"), budget),
            )
            .await)
        }
    };
    let g = tokens::generate();
    let expires_at = now_ms() + grant.lifetime_ms;
    let name: String = format!("ci {}", grant.subject).chars().take(100).collect();
    let new = NewToken {
        id: g.id.clone(),
        secret_hash: g.hash,
        name,
        role: grant.role,
        stacks: grant.stacks.clone(),
        expires_at: Some(expires_at),
        created_by: format!("oidc login via {}", grant.trust_id),
        run_id: None,
        // The trust's user: one pipeline identity, its logins counted against one limit.
        user: grant.trust_id.clone(),
        parent_id: None,
        mint_limit: Some(LOGIN_LIMIT),
        read_stacks: Vec::new(),
        // A forge login: no token minted it.
        minted_by: None,
        job_ref: grant.git_ref.clone(),
    };
    // The event names the ID token it spent, so a restore can mark it used again.
    let mut detail = json!({"trust": grant.trust_id, "sub": grant.subject, "ref": grant.git_ref, "role": grant.role, "token": g.id, "expires_at": expires_at});
    detail[oidc::LOGIN_ID_TOKEN] = used.to_json();
    let audit = NewAudit::ok(
        &format!("forge login ({iss}, sub {})", grant.subject),
        action,
        None,
        detail,
    );
    store_call(&state, move |st| st.create_token(new, audit)).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"token_id": g.id, "secret": g.secret, "role": grant.role, "stacks": grant.stacks, "expires_at": expires_at, "trust": grant.trust_id}),
        ),
    ))
}

/// A forge login's refusal, audited as a denied `oidc.login`. Its request carries no valid
/// airlock credential (anyone can send one, with any claims), so the event is within an audit
/// budget, and its reason, which may quote the token, is cut to 1 KiB. `budget`: the
/// anonymous one before the ID token's signature verified, the signed logins' one after (a
/// real job's refused login, or a replayed token, is not hidden by anyone's guesses).
async fn refuse_login(
    state: &Arc<AppState>,
    actor: &str,
    (kind, message, budget): (RefusalKind, String, Budget),
) -> Denial {
    let status = crate::error::status_of(kind).as_u16();
    let detail = json!({"reason": crate::log::bounded(&message, 1024), "status": status});
    let error = ApiError::new(kind, message);
    Denial::within_budget(state, budget, (actor, "oidc.login", None, detail), error).await
}

/// Records a verified forge token's `(iss, jti)` as used, in the store, so it logs in once
/// whichever replica it reaches (the insert is the check). `Ok(Err(why))` when the token has no
/// usable `jti` or was used already; a store failure is an `Err`.
async fn use_once(
    state: &Arc<AppState>,
    iss: &str,
    claims: &serde_json::Map<String, Value>,
) -> ApiResult<Result<oidc::UsedForgeToken, String>> {
    let (jti, exp_ms) = match oidc::single_use(claims) {
        Ok(u) => u,
        Err(e) => return Ok(Err(e)),
    };
    let used = oidc::UsedForgeToken {
        issuer: iss.to_owned(),
        jti: jti.to_owned(),
        exp_ms,
    };
    let (i, j) = (iss.to_owned(), jti.to_owned());
    let prune_before = now_ms() - oidc::USED_TOKEN_KEPT_MS;
    match blocking(state, move |st| st.use_forge_token(&i, &j, exp_ms, prune_before)).await? {
        Ok(()) => Ok(Ok(used)),
        Err(StoreError::Conflict(_)) => Ok(Err(format!(
            "this ID token (jti {jti:?}) was already used for a login; each login needs a fresh ID token (GitHub Actions: `airlock login --oidc` asks the runner for a new one every time; GitLab CI: one `id_tokens:` entry per login)"
        ))),
        Err(e) => Err(e.into()),
    }
}
