//! Token secrets: 256 random bits shown once; the store keeps only their SHA-256.

use airlock_core::refusal::{Refusal, RefusalKind};
use airlock_core::Role;
use airlock_store::{MintLimit, TokenRecord};
use sha2::{Digest, Sha256};

/// Tokens of one kind a pipeline identity may be given per hour, across all replicas (counted
/// in the database): a forge trust's logins (all of a trust's logins share its user), and the
/// plan-phase tokens of a user minting with a token of any role but agent. A monorepo's CI
/// plans every affected stack of every change, and a scheduled `airlock ci drift` every stack,
/// under one identity; 1,000 an hour still bounds a runaway loop.
pub const PIPELINE_LIMIT: MintLimit = MintLimit {
    max: 1_000,
    window_ms: 3_600_000,
};

/// The plan-phase token limit for a user minting with a token of `role`: an agent's user
/// `agent_per_hour` (the server's `--agent-runs-per-hour`, 60 by default: as many runs as it may
/// upload, so a runaway or hostile agent mints no more than it could use), any other
/// [`PIPELINE_LIMIT`]. Counted over all of the user's phase tokens, whichever role minted them.
/// Run-bound apply tokens are not limited: each needs an approved run.
pub fn phase_token_limit(role: Role, agent_per_hour: u64) -> MintLimit {
    match role {
        Role::Agent => MintLimit {
            max: agent_per_hour,
            window_ms: 3_600_000,
        },
        Role::Admin | Role::Approver | Role::Ci | Role::Reader => PIPELINE_LIMIT,
    }
}

/// Longest a plan-phase token lives, however long its planner reports: a day after its mint,
/// the longest an apply goes on too (`run_rules::MAX_APPLY_MS`).
pub const MAX_PLAN_MS: i64 = airlock_store::run_rules::MAX_APPLY_MS;

/// Whether `t` is a plan-phase token that the token `minter` minted for `stack`: derived from
/// it, bound to no run, scoped to that stack alone.
pub fn is_plan_token_of(t: &TokenRecord, minter: &str, stack: &str) -> bool {
    t.parent_id.as_deref() == Some(minter) && t.run_id.is_none() && t.stacks == [stack]
}

/// Refuses unless `t` is a plan-phase token `minter` minted for `stack`: only that token
/// reports for it or ends it.
pub fn minted_plan_token(t: &TokenRecord, minter: &str, stack: &str) -> Result<(), Refusal> {
    if is_plan_token_of(t, minter, stack) {
        return Ok(());
    }
    Err(Refusal::new(
        RefusalKind::Forbidden,
        format!("token {} is not a plan-phase token this token minted for {stack}: only the token that minted a plan's token reports for it or ends it", t.id),
    ))
}

/// The token `minter` reports at `now` that the plan its plan-phase token `t` serves on `stack`
/// goes on: the expiry `t` moves to, `idle_ms` on, once a third of `idle_ms` has passed since
/// it last moved (`None`: no move due, so a planner may report often and the store and audit
/// log grow only every `idle_ms / 3`); never past [`MAX_PLAN_MS`] after its mint nor past
/// `limit`, the minter's own expiry (which the store enforces too). Only the minter reports:
/// Terraform's environment (the providers, whatever the checkout runs during the plan) holds
/// the plan-phase token itself, which therefore cannot keep itself alive.
pub fn keep_plan_alive(
    t: &TokenRecord,
    minter: &str,
    stack: &str,
    (idle_ms, limit): (i64, Option<i64>),
    now: i64,
) -> Result<Option<i64>, Refusal> {
    minted_plan_token(t, minter, stack)?;
    if t.revoked_at.is_some() {
        return Err(Refusal::new(
            RefusalKind::Gone,
            format!("plan-phase token {} has been revoked", t.id),
        ));
    }
    let Some(current) = t.expires_at else {
        return Ok(None);
    };
    if current <= now {
        return Err(Refusal::new(
            RefusalKind::Gone,
            format!("plan-phase token {} has expired: reports keep a plan's token alive only while it lives; plan again", t.id),
        ));
    }
    let cap = t.created_at.saturating_add(MAX_PLAN_MS);
    let cap = limit.map_or(cap, |l| l.min(cap));
    Ok(airlock_store::run_rules::renewed(
        current, idle_ms, cap, now,
    ))
}

/// Prefix that makes airlock secrets recognisable to secret scanners.
pub const SECRET_PREFIX: &str = "airlock_";

/// A freshly generated token: public id and secret.
pub struct Generated {
    /// Public identifier (`tok_` + 16 hex).
    pub id: String,
    /// The secret, shown once.
    pub secret: String,
    /// SHA-256 of the secret, stored.
    pub hash: [u8; 32],
}

/// Random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The OS RNG failing is unrecoverable for a server that mints credentials.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut b).expect("the operating system's random number generator failed");
    b
}

/// A random identifier with a prefix, e.g. `grant_3f2a...`.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(random_bytes::<8>()))
}

/// Generates a new token.
pub fn generate() -> Generated {
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(random_bytes::<32>()));
    Generated {
        id: random_id("tok_"),
        hash: hash_secret(&secret),
        secret,
    }
}

/// The stored hash of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const IDLE: i64 = 3_600_000;

    /// A plan-phase token `tok_ci` minted for `dev/app` at `NOW`, living an idle time.
    fn plan_token() -> TokenRecord {
        TokenRecord {
            id: "tok_plan".into(),
            name: "plan for ci".into(),
            role: Role::Agent,
            stacks: vec!["dev/app".into()],
            created_at: NOW,
            expires_at: Some(NOW + IDLE),
            revoked_at: None,
            created_by: "ci (tok_ci)".into(),
            run_id: None,
            user: "tok_ci".into(),
            parent_id: Some("tok_ci".into()),
            read_stacks: Vec::new(),
            minted_by: Some("tok_ci".into()),
            job_ref: None,
            revoked_reason: None,
        }
    }

    #[test]
    fn a_plans_token_lives_while_its_minter_reports_and_no_longer() {
        let t = plan_token();
        let alive = |t: &TokenRecord, who: &str, stack: &str, limit, now| {
            keep_plan_alive(t, who, stack, (IDLE, limit), now)
        };
        // The attacks: the plan-phase token (what Terraform and the checkout's code hold)
        // reports for itself; another token, or the minter for another stack; a run-bound
        // token of the same minter.
        for (who, stack) in [
            ("tok_plan", "dev/app"),
            ("tok_other", "dev/app"),
            ("tok_ci", "dev/other"),
        ] {
            let r = alive(&t, who, stack, None, NOW + IDLE / 2).unwrap_err();
            assert_eq!(
                r.kind,
                RefusalKind::Forbidden,
                "{who} {stack}: {}",
                r.message
            );
        }
        let bound = TokenRecord {
            run_id: Some("run_1".into()),
            ..plan_token()
        };
        assert_eq!(
            alive(&bound, "tok_ci", "dev/app", None, NOW)
                .unwrap_err()
                .kind,
            RefusalKind::Forbidden
        );
        // Nothing is due before a third of the idle time has passed: reports write nothing.
        assert_eq!(
            alive(&t, "tok_ci", "dev/app", None, NOW + IDLE / 3 - 1),
            Ok(None)
        );
        assert_eq!(
            alive(&t, "tok_ci", "dev/app", None, NOW + IDLE / 3),
            Ok(Some(NOW + IDLE / 3 + IDLE))
        );
        // A token that has expired or was revoked is not brought back.
        assert_eq!(
            alive(&t, "tok_ci", "dev/app", None, NOW + IDLE)
                .unwrap_err()
                .kind,
            RefusalKind::Gone
        );
        let revoked = TokenRecord {
            revoked_at: Some(NOW),
            ..plan_token()
        };
        assert_eq!(
            alive(&revoked, "tok_ci", "dev/app", None, NOW + 1)
                .unwrap_err()
                .kind,
            RefusalKind::Gone
        );
        // Never past a day after the mint, nor past the minter's expiry: at the cap, nothing
        // more is due (no write every report).
        let late = TokenRecord {
            expires_at: Some(NOW + MAX_PLAN_MS - 60_000),
            ..plan_token()
        };
        assert_eq!(
            alive(
                &late,
                "tok_ci",
                "dev/app",
                None,
                NOW + MAX_PLAN_MS - 120_000
            ),
            Ok(Some(NOW + MAX_PLAN_MS))
        );
        let capped = TokenRecord {
            expires_at: Some(NOW + MAX_PLAN_MS),
            ..plan_token()
        };
        assert_eq!(
            alive(&capped, "tok_ci", "dev/app", None, NOW + MAX_PLAN_MS - 1),
            Ok(None)
        );
        let minter_ends = Some(NOW + IDLE + 5_000);
        assert_eq!(
            alive(&t, "tok_ci", "dev/app", minter_ends, NOW + IDLE / 2),
            Ok(Some(NOW + IDLE + 5_000))
        );
        let at_minter = TokenRecord {
            expires_at: minter_ends,
            ..plan_token()
        };
        assert_eq!(
            alive(&at_minter, "tok_ci", "dev/app", minter_ends, NOW + IDLE),
            Ok(None)
        );
    }
}
