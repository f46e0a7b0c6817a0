//! What an airlock server reports, as findings: tokens by role, admins, tokens without expiry,
//! stacks whose direct writes are open. The binary fetches the facts with the caller's token
//! (`GET /api/v1/tokens`, `/api/v1/stacks`); this module only judges them.

use airlock_core::Role;

use super::{finding, Finding, QuestionId as Q, Verdict as V};

/// The evidence file named for server facts.
pub const SERVER: &str = "airlock server";

/// Most admins before their number is itself a finding.
pub const MAX_ADMINS: usize = 3;

/// One live token (not revoked, not expired, not derived from another).
#[derive(Debug, Clone)]
pub struct TokenFact {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Expiry, ms since the epoch.
    pub expires_at: Option<i64>,
}

/// One stack's settings.
#[derive(Debug, Clone)]
pub struct StackFact {
    /// Its name.
    pub name: String,
    /// Production or not.
    pub production: bool,
    /// Roles whose own token may write state outside a run.
    pub direct_writes: Vec<Role>,
    /// Roles that may apply approved runs.
    pub apply_from: Vec<Role>,
}

/// One recorded `airlock backup verify` run (the `backup.verify` audit event).
#[derive(Debug, Clone)]
pub struct VerifyFact {
    /// When it was recorded, ms since the epoch.
    pub at: i64,
    /// Who reported it (the server records what that client claims; see `api/backups.rs`).
    pub actor: String,
    /// Whether the backup verified.
    pub ok: bool,
    /// When the verified backup was exported, ms since the epoch.
    pub exported_at: i64,
}

/// A recorded verification older than this is itself a finding.
pub const MAX_VERIFY_AGE_DAYS: i64 = 7;

/// What the server told us; `Err` where the token may not ask (and why).
#[derive(Debug, Clone)]
pub struct Facts {
    /// Now, ms since the epoch (ages are computed against it).
    pub now: i64,
    /// Recorded verify runs, newest first, or why they could not be read.
    pub verifications: Result<Vec<VerifyFact>, String>,
    /// The server's URL.
    pub url: String,
    /// Live tokens, or why they could not be listed.
    pub tokens: Result<Vec<TokenFact>, String>,
    /// Stacks, or why they could not be listed.
    pub stacks: Result<Vec<StackFact>, String>,
}

/// Findings from the server's facts.
pub fn findings(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let at = |q, v, rule, msg: String| finding(q, v, rule, SERVER, 0, msg);
    match &f.tokens {
        Err(why) => out.push(at(
            Q::WhoCanApply,
            V::Unknown,
            "server.tokens",
            format!("tokens of {}: {why}", f.url),
        )),
        Ok(tokens) => {
            let count = |r: Role| tokens.iter().filter(|t| t.role == r).count();
            let by_role: Vec<String> = [
                Role::Admin,
                Role::Approver,
                Role::Ci,
                Role::Agent,
                Role::Reader,
            ]
            .into_iter()
            .map(|r| format!("{} {}", count(r), r.as_str()))
            .collect();
            out.push(at(
                Q::WhoCanApply,
                V::Enforced,
                "server.tokens",
                format!(
                    "{} live token(s) on {}: {}; agents and readers can never write state or apply",
                    tokens.len(),
                    f.url,
                    by_role.join(", ")
                ),
            ));
            let admins = count(Role::Admin);
            if admins > MAX_ADMINS {
                out.push(at(Q::WhoCanApply, V::Discipline, "server.admins", format!(
                    "{admins} admin tokens: each can write production state directly and change every setting"
                )).todo(format!("Reduce the admin tokens to at most {MAX_ADMINS} (`airlock token revoke`)")));
            }
            let forever: Vec<&str> = tokens
                .iter()
                .filter(|t| {
                    t.expires_at.is_none()
                        && matches!(t.role, Role::Admin | Role::Approver | Role::Ci)
                })
                .map(|t| t.name.as_str())
                .collect();
            if !forever.is_empty() {
                out.push(
                    at(
                        Q::WhoCanApply,
                        V::Discipline,
                        "server.no_expiry",
                        format!(
                            "{} admin/approver/ci token(s) never expire: {}",
                            forever.len(),
                            super::cut(&forever.join(", "), 200)
                        ),
                    )
                    .todo(
                        "Give write-capable tokens an expiry (`airlock token create --expires-in`)"
                            .to_owned(),
                    ),
                );
            }
        }
    }
    match &f.stacks {
        Err(why) => out.push(at(
            Q::WhoCanApply,
            V::Unknown,
            "server.stacks",
            format!("stacks of {}: {why}", f.url),
        )),
        Ok(stacks) => {
            for s in stacks {
                let roles =
                    |v: &[Role]| v.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ");
                let open: Vec<&Role> = s
                    .direct_writes
                    .iter()
                    .filter(|r| **r != Role::Admin)
                    .collect();
                if s.production && !open.is_empty() {
                    out.push(at(Q::WhoCanApply, V::Fragile, "server.direct_writes", format!(
                        "production stack {}: direct state writes open to {} (not only admins): apply and destroy from a terminal reach it",
                        s.name, roles(&s.direct_writes)
                    )).todo(format!("Close direct writes on production stack {} (`airlock stack settings {} --direct-writes admin`)", s.name, s.name)));
                } else if !open.is_empty() {
                    out.push(at(
                        Q::WhoCanApply,
                        V::Discipline,
                        "server.direct_writes",
                        format!(
                            "stack {}: direct state writes open to {}",
                            s.name,
                            roles(&s.direct_writes)
                        ),
                    ));
                } else {
                    out.push(at(Q::WhoCanApply, V::Enforced, "server.direct_writes", format!(
                        "stack {}: only admins write state directly; applies go through approved runs ({})",
                        s.name, roles(&s.apply_from)
                    )));
                }
                if s.production && s.apply_from.iter().any(|r| *r != Role::Ci) {
                    out.push(at(
                        Q::PlanToApply,
                        V::Discipline,
                        "server.apply_from",
                        format!(
                            "production stack {}: approved runs may be applied by {} (not only CI)",
                            s.name,
                            roles(&s.apply_from)
                        ),
                    ));
                } else {
                    out.push(at(Q::PlanToApply, V::Enforced, "server.governed", format!(
                        "stack {}: `airlock apply` applies only approved runs, exactly the reviewed plan", s.name
                    )));
                }
            }
        }
    }
    let days = |ms: i64| (f.now - ms).max(0) / 86_400_000;
    match &f.verifications {
        Err(why) => out.push(at(
            Q::Backups,
            V::Unknown,
            "backups.verify_unknown",
            format!("recorded backup verifications of {}: {why}", f.url),
        )),
        Ok(v) => {
            let last_ok = v.iter().find(|x| x.ok);
            let newer_failure = v.first().filter(|x| !x.ok);
            match (last_ok, newer_failure) {
                (_, Some(fail)) => out.push(at(Q::Backups, V::Fragile, "backups.verify_failed", format!(
                    "the newest recorded `airlock backup verify` ({} day(s) ago, reported by {}) FAILED: the newest backup does not restore",
                    days(fail.at), fail.actor
                )).todo("Fix the failing backup: `airlock backup export` a fresh one and `airlock backup verify --record` it".to_owned())),
                (None, None) => out.push(at(Q::Backups, V::Discipline, "backups.never_verified", format!(
                    "{} has no recorded `airlock backup verify`: whether its backups restore is not known (verify runs are recorded only with --record)",
                    f.url
                )).todo("Export airlock's data regularly and check each export with `airlock backup verify --record`".to_owned())),
                (Some(ok), None) => {
                    let (age, export_age) = (days(ok.at), days(ok.exported_at));
                    let v = if age > MAX_VERIFY_AGE_DAYS || export_age > MAX_VERIFY_AGE_DAYS { V::Discipline } else { V::Enforced };
                    let mut x = at(Q::Backups, v, "backups.verified", format!(
                        "`airlock backup verify` last succeeded {age} day(s) ago (reported by {}: the server checked the backup's audit head and export time against its own log, the rest is that client's claim); the newest verified export is {export_age} day(s) old",
                        ok.actor
                    ));
                    if v == V::Discipline {
                        x = x.todo(format!("Export and verify airlock's backups at least every {MAX_VERIFY_AGE_DAYS} days"));
                    }
                    out.push(x);
                }
            }
        }
    }
    out.push(at(Q::Backups, V::Unknown, "backups.export_unknown",
        "exports the server was not told about (never verified with --record) cannot be known: export reads the database directly".to_owned()));
    out
}
