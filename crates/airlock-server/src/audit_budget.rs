//! How many audit records the refusals of requests without a valid credential may write.
//!
//! Anyone who reaches the port can send such requests (no token, a guessed one, a cross-site
//! browser request, a forge login with a made-up ID token), and audit records are kept for good:
//! at 2-3,500 refusals a second of ~360 bytes each, the audit alone filled the disk the state
//! lives on. So these refusals are audited while a budget lasts ([`BURST`] at once, then
//! [`PER_SECOND`] a second, per server process); past it each one is counted
//! (`airlock_unaudited_refusals_total`) and left out of the audit and of the per-request log
//! (the log says how many at most once a second), and one [`ACTION`] event records how many
//! were left out, from when to when, as soon as the budget allows a record again (or at the
//! next audit seal, or when the server stops). Forge logins refused after their ID token's
//! signature verified are within a budget of their own ([`Kind::SignedLogin`]). The refusals of
//! valid tokens (403), and a stored token's use after its revocation or expiry, are audited one
//! by one, without a budget: only a token's holder makes them, and they name who did.

use std::sync::{Arc, Mutex, PoisonError};

use airlock_store::{now_ms, NewAudit};
use serde_json::json;

use crate::log::{self, LogLevel};
use crate::AppState;

/// Refusals audited at once before the budget applies.
pub const BURST: f64 = 100.0;
/// Refusals audited a second, on average, once the burst is spent (each record of refusals left
/// out counts as one).
pub const PER_SECOND: f64 = 10.0;
/// The action of the event recording how many refusals were left out.
pub const ACTION: &str = "audit.unaudited_refusals";
/// Who records them.
const ACTOR: &str = "system (audit budget)";
/// At most one log line a second says how many refusals were left out.
const LOG_EVERY_MS: i64 = 1000;

/// The budget, one per server process.
#[derive(Default)]
pub(crate) struct AuditBudget(Mutex<Bucket>);

#[derive(Default)]
struct Bucket {
    /// Records the budget allows now (below 1 once spent; below 0 after a refusal and the
    /// record of those left out before it took two).
    allowance: f64,
    /// When `allowance` was last brought up to date (`None`: never, the bucket is full).
    at_ms: Option<i64>,
    /// Refusals left out since the last record of them.
    left_out: u64,
    first_ms: i64,
    last_ms: i64,
    /// Refusals left out since the last log line, and when it was written.
    unlogged: u64,
    logged_ms: i64,
}

/// What to do with one refusal.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Audit it, after recording `left_out` if refusals were left out before it.
    Audit { left_out: Option<LeftOut> },
    /// Count it only; `log` is how many were left out since the last log line when one is due.
    LeaveOut { log: Option<u64> },
}

/// Refusals left out of the audit, from `first_ms` to `last_ms`.
#[derive(Debug, PartialEq)]
pub(crate) struct LeftOut {
    pub refusals: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Which budget a refusal is within: refusals of requests without a valid credential, or
/// forge logins refused although their ID token's signature verified (one signed token can be
/// replayed without end, so they have a budget too, but their own: anyone's guesses cannot
/// spend it and hide a real job's refused login).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    WithoutCredential,
    SignedLogin,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::WithoutCredential, Kind::SignedLogin];

    fn refusals(self) -> &'static str {
        match self {
            Kind::WithoutCredential => "refusals of requests without a valid credential",
            Kind::SignedLogin => "refusals of forge logins whose ID token was signed",
        }
    }
}

/// The budgets, one per [`Kind`], per server process.
#[derive(Default)]
pub(crate) struct AuditBudgets {
    without_credential: AuditBudget,
    signed_logins: AuditBudget,
}

impl AuditBudgets {
    fn of(&self, kind: Kind) -> &AuditBudget {
        match kind {
            Kind::WithoutCredential => &self.without_credential,
            Kind::SignedLogin => &self.signed_logins,
        }
    }
}

impl LeftOut {
    /// The audit event that records them.
    fn event(&self, kind: Kind) -> NewAudit {
        NewAudit::ok(
            ACTOR,
            ACTION,
            None,
            json!({
                "refusals": self.refusals,
                "from": airlock_core::time::rfc3339(self.first_ms),
                "to": airlock_core::time::rfc3339(self.last_ms),
                "why": format!("{} past the audit budget ({BURST} at once, then {PER_SECOND} a second) are counted, not audited one by one", kind.refusals()),
            }),
        )
    }
}

impl Bucket {
    fn refill(&mut self, now: i64) {
        let elapsed = self
            .at_ms
            .map_or(f64::INFINITY, |at| (now - at).max(0) as f64);
        self.allowance = (self.allowance + elapsed * PER_SECOND / 1000.0).min(BURST);
        self.at_ms = Some(now);
    }

    fn take_left_out(&mut self) -> Option<LeftOut> {
        (self.left_out > 0).then(|| LeftOut {
            refusals: std::mem::take(&mut self.left_out),
            first_ms: self.first_ms,
            last_ms: self.last_ms,
        })
    }
}

impl AuditBudget {
    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Judges one refusal at `now` (ms).
    pub(crate) fn admit(&self, now: i64) -> Verdict {
        let mut b = self.bucket();
        b.refill(now);
        if b.allowance >= 1.0 {
            let left_out = b.take_left_out();
            b.allowance -= if left_out.is_some() { 2.0 } else { 1.0 };
            return Verdict::Audit { left_out };
        }
        if b.left_out == 0 {
            b.first_ms = now;
        }
        b.left_out += 1;
        b.last_ms = now;
        b.unlogged += 1;
        let log = (now - b.logged_ms >= LOG_EVERY_MS).then(|| {
            b.logged_ms = now;
            std::mem::take(&mut b.unlogged)
        });
        Verdict::LeaveOut { log }
    }

    /// The refusals left out so far, when their record is due: the budget allows one (or the
    /// server is `stopping`).
    pub(crate) fn left_out(&self, now: i64, stopping: bool) -> Option<LeftOut> {
        let mut b = self.bucket();
        b.refill(now);
        if b.left_out == 0 || (b.allowance < 1.0 && !stopping) {
            return None;
        }
        b.allowance -= 1.0;
        b.take_left_out()
    }
}

/// Audits `event`, the refusal of a request without a valid credential, within the budget.
/// False when it was left out (counted, and logged in a line a second at most): then its
/// response is not logged one by one either ([`crate::log::LeftOut`]).
pub(crate) async fn audit_refusal(state: &Arc<AppState>, kind: Kind, event: NewAudit) -> bool {
    match state.audit_budgets.of(kind).admit(now_ms()) {
        Verdict::Audit { left_out } => {
            let store = Arc::clone(&state.store);
            // The refusal stands whether or not its audit event could be written.
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(l) = left_out {
                    store.append_audit(l.event(kind))?;
                }
                store.append_audit(event)
            })
            .await;
            true
        }
        Verdict::LeaveOut { log } => {
            state.metrics.unaudited_refusal();
            if let Some(n) = log.filter(|_| state.config.log_level >= LogLevel::Warn) {
                log::emit(&format!(
                    "{} level=warn event=unaudited_refusals refusals={n} msg=\"{} are past the audit budget: counted (airlock_unaudited_refusals_total), and recorded as one {ACTION} event once the budget allows\"",
                    airlock_core::time::rfc3339(now_ms()),
                    kind.refusals(),
                ));
            }
            false
        }
    }
}

/// Records the refusals left out so far, if the budget allows a record (every audit seal), or
/// whatever it says when the server is `stopping`.
pub(crate) async fn record_left_out(state: &Arc<AppState>, stopping: bool) {
    for kind in Kind::ALL {
        if let Some(l) = state.audit_budgets.of(kind).left_out(now_ms(), stopping) {
            let store = Arc::clone(&state.store);
            let _ = tokio::task::spawn_blocking(move || store.append_audit(l.event(kind))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audited(v: &Verdict) -> bool {
        matches!(v, Verdict::Audit { .. })
    }

    #[test]
    fn anyones_guesses_do_not_spend_the_signed_logins_budget() {
        let budgets = AuditBudgets::default();
        let t0 = 1_000_000;
        let anonymous = budgets.of(Kind::WithoutCredential);
        for _ in 0..1000 {
            anonymous.admit(t0);
        }
        assert!(!audited(&anonymous.admit(t0)));
        let signed = budgets.of(Kind::SignedLogin);
        assert!((0..100).all(|_| audited(&signed.admit(t0))));
        assert!(!audited(&signed.admit(t0)));
        let left = anonymous.left_out(t0, true).expect("counted");
        assert!(left.event(Kind::WithoutCredential).detail["why"]
            .as_str()
            .unwrap()
            .starts_with("refusals of requests without a valid credential"));
    }

    #[test]
    fn a_burst_then_a_few_a_second_are_audited_and_the_rest_counted_once() {
        let budget = AuditBudget::default();
        let t0 = 1_000_000;
        // The burst.
        assert!((0..100).all(|_| audited(&budget.admit(t0))));
        // Past it: left out, logged once a second with how many.
        assert_eq!(budget.admit(t0), Verdict::LeaveOut { log: Some(1) });
        for _ in 0..998 {
            assert_eq!(budget.admit(t0 + 50), Verdict::LeaveOut { log: None });
        }
        assert_eq!(
            budget.admit(t0 + 99),
            Verdict::LeaveOut { log: None },
            "the budget refills one record each 100 ms: none yet"
        );
        // 200 ms on, two records are allowed: this refusal and the record of the 1,000 left out
        // before it.
        assert_eq!(
            budget.admit(t0 + 199),
            Verdict::Audit {
                left_out: Some(LeftOut {
                    refusals: 1000,
                    first_ms: t0,
                    last_ms: t0 + 99,
                })
            }
        );
        assert_eq!(budget.admit(t0 + 200), Verdict::LeaveOut { log: None });
        // Over a minute of a flood of one refusal a millisecond: at most PER_SECOND records a
        // second, each record counts exactly the refusals left out since the one before, and
        // one log line a second.
        let (mut records, mut counted, mut lines) = (0, 1, 0);
        for ms in 201..60_201 {
            match budget.admit(t0 + ms) {
                Verdict::Audit { left_out } => {
                    records += 1;
                    if let Some(l) = left_out {
                        records += 1;
                        assert_eq!(l.refusals, counted);
                        counted = 0;
                    }
                }
                Verdict::LeaveOut { log } => {
                    counted += 1;
                    lines += u64::from(log.is_some());
                }
            }
        }
        assert!(
            records <= 60 * PER_SECOND as u64 + 2,
            "{records} records a minute"
        );
        assert!((59..=61).contains(&lines), "{lines} log lines a minute");
    }

    #[test]
    fn refusals_left_out_are_recorded_when_the_budget_allows_or_at_the_stop() {
        let budget = AuditBudget::default();
        let t0 = 5_000;
        assert_eq!(budget.left_out(t0, false), None, "nothing left out");
        for _ in 0..110 {
            budget.admit(t0);
        }
        assert_eq!(
            budget.left_out(t0, false),
            None,
            "no budget for a record yet"
        );
        let l = budget
            .left_out(t0 + 100, false)
            .expect("a record, a refill later");
        assert_eq!(l.refusals, 10);
        assert_eq!(budget.left_out(t0 + 100, false), None, "recorded once");
        budget.admit(t0 + 100);
        assert_eq!(budget.left_out(t0 + 100, true).map(|l| l.refusals), Some(1));
    }
}
