//! airlock storage. One [`Store`] trait, implemented by SQLite (the embedded default) and
//! PostgreSQL (scale-out). Every mutation that matters appends its audit event in the same
//! transaction, and the state-write path runs the caller's firewall check inside that
//! transaction, so check and write are atomic on either engine.
//!
//! **Invariant:** no method deletes or rewrites a state version or an audit record; the SQLite
//! schema enforces it with triggers as well.

#![deny(clippy::print_stdout, clippy::print_stderr)]
#![deny(missing_docs)]

pub mod blob;
pub mod conformance;
mod core;
pub mod in_place;
mod model;
mod postgres;
pub mod private;
pub mod run_rules;
mod runs;
mod sql;
mod sqlite;

use std::fmt;

pub use core::policy_set_sha256;
pub use model::*;
pub use postgres::PostgresStore;
pub use runs::*;
pub use sqlite::SqliteStore;

use airlock_core::audit::AuditRecord;

/// Errors from a store.
#[derive(Debug)]
pub enum StoreError {
    /// The named thing does not exist.
    NotFound(String),
    /// It exists already, or conflicts with what is stored.
    Conflict(String),
    /// Stored data does not match its hash.
    Corrupt(String),
    /// A rate limit counted in the database is reached (e.g. phase tokens per user).
    LimitReached(String),
    /// The database failed.
    Backend(String),
    /// The caller may not do this (e.g. a stack-scoped admin minting for a person beyond its
    /// scope); the message says why and who may.
    Forbidden(String),
    /// The artifact's bytes were purged (a terminal run's binary plan): it existed, its
    /// tombstone keeps its hash and length, and it will never be served again. The message
    /// names the run, the artifact and when.
    Purged(String),
    /// The input is not what its sender sent or meant (a state body whose MD5 is not its
    /// `Content-MD5`); nothing was stored.
    Invalid(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound(m) => write!(f, "not found: {m}"),
            StoreError::Conflict(m) => write!(f, "conflict: {m}"),
            StoreError::Corrupt(m) => write!(f, "stored data is corrupt: {m}"),
            StoreError::LimitReached(m) => write!(f, "limit reached: {m}"),
            StoreError::Backend(m) => write!(f, "database error: {m}"),
            StoreError::Forbidden(m) => write!(f, "forbidden: {m}"),
            StoreError::Purged(m) => write!(f, "purged: {m}"),
            StoreError::Invalid(m) => write!(f, "invalid: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The firewall callback run inside a state-write transaction.
pub type WriteCheck<'a> =
    dyn FnMut(&WriteContext<'_>) -> Result<WriteDecision, airlock_core::refusal::Refusal> + 'a;

/// Everything airlock persists. Methods block; async callers use `spawn_blocking`.
pub trait Store: Send + Sync {
    /// Engine name, for logs and `/healthz`.
    fn engine(&self) -> &'static str;

    // --- tokens ---
    /// Number of tokens ever created (0 on a fresh store).
    fn token_count(&self) -> Result<u64>;
    /// Creates a token after [`NewToken::judge`] accepts it, inside the same transaction
    /// (the parent and the user's recent derived tokens are read there, so replicas agree).
    fn create_token(&self, token: NewToken, audit: NewAudit) -> Result<TokenRecord>;
    /// Finds a token by the SHA-256 of its secret.
    fn token_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRecord>>;
    /// Finds a token by id.
    fn token(&self, id: &str) -> Result<Option<TokenRecord>>;
    /// Lists all tokens.
    fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Revokes a token and, in the same transaction, every token derived from it (directly or
    /// not); `NotFound` if there is none. Records `audit` when the token itself is revoked now,
    /// and a `token.revoke_cascade` event naming the descendants revoked with it, if any.
    fn revoke_token(&self, id: &str, audit: NewAudit) -> Result<TokenRecord>;
    /// Moves the expiry of the plan-phase token `id` (minted by `minter`, bound to no run) from
    /// `from`, the expiry it was judged with, to `until`, never past its minter's, and records
    /// `audit`, in one transaction. `None`, with nothing written, when the token is no longer
    /// that: revoked, expired, or its expiry moved meanwhile (another report of the same plan
    /// did it).
    fn keep_phase_token_until(
        &self,
        id: &str,
        minter: &str,
        from: Option<i64>,
        until: i64,
        audit: NewAudit,
    ) -> Result<Option<TokenRecord>>;
    /// Judges every live parentless token of every person again with [`Person::may_receive`]
    /// (as [`Person::refusal`]) and revokes each token the rule refuses: tokens a scoped admin
    /// minted before the rule existed, for people with rights beyond its scope. Each is
    /// revoked with its reason (`revoked_reason`), its descendants with it, and a
    /// `token.revoke_unsafe_mint` event naming the token, its user, its minter and why. One
    /// transaction per user, under the user's mint lock and its tokens' row locks, so replicas
    /// running it at once revoke each token once. Idempotent: tokens minted under the rule are
    /// never refused by it, so the server runs it at every start. Before judging, tokens that a
    /// server older than migration 0019 minted beside this one (a rolling upgrade: no
    /// `minted_by`, the minter named in `created_by`) get their minter as the migration gave
    /// the others. Returns what it revoked.
    fn revoke_unsafe_mints(&self) -> Result<Vec<TokenRecord>>;

    // --- users ---
    /// Creates a user; `Conflict` if the name is taken.
    fn create_user(&self, user: NewUser, audit: NewAudit) -> Result<UserRecord>;
    /// Looks a user up.
    fn user(&self, name: &str) -> Result<Option<UserRecord>>;
    /// Lists users by name.
    fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Gives an existing user a forge login (checked with [`valid_forge_login`]); `NotFound`
    /// without the user, `Conflict` if the login is another user's. Adding a login the user
    /// has already is a no-op (no audit event).
    fn add_forge_login(&self, user: &str, login: &str, audit: NewAudit) -> Result<UserRecord>;
    /// The user a forge login (`github:alice`, any case) belongs to.
    fn user_by_forge_login(&self, login: &str) -> Result<Option<String>>;

    // --- stacks ---
    /// Creates a stack; `Conflict` if it exists.
    fn create_stack(
        &self,
        name: &str,
        production: bool,
        settings: StackSettings,
        audit: NewAudit,
    ) -> Result<StackRecord>;
    /// Looks a stack up.
    fn stack(&self, name: &str) -> Result<Option<StackRecord>>;
    /// Lists stacks by name.
    fn list_stacks(&self) -> Result<Vec<StackRecord>>;
    /// Replaces a stack's settings.
    fn update_stack_settings(
        &self,
        name: &str,
        settings: StackSettings,
        audit: NewAudit,
    ) -> Result<StackRecord>;

    /// Deletes a stack by archiving it: its history stays, it refuses new state writes,
    /// locks, runs, grants and settings, and its name stays taken. `Conflict` if it is
    /// archived already, locked, or has a run applying.
    fn archive_stack(
        &self,
        name: &str,
        by: &str,
        reason: &str,
        audit: NewAudit,
    ) -> Result<StackRecord>;

    // --- locks ---
    /// Takes the stack's lock if it is free; `Conflict` if the stack is archived.
    fn lock(&self, stack: &str, lock: NewLock, audit: NewAudit) -> Result<LockOutcome>;
    /// Takes the stack's lock in place of the one `holder` (its lock ID and owner token) holds,
    /// in one transaction: that lock is released only if it is still that holder's (recorded
    /// with `preempt`), then `lock` is taken as [`Store::lock`] takes it (`Held` when another
    /// lock is there by then, as when two take the same lock over at once: one wins).
    fn lock_in_place_of(
        &self,
        stack: &str,
        holder: (&str, &str),
        lock: NewLock,
        preempt: NewAudit,
        audit: NewAudit,
    ) -> Result<LockOutcome>;
    /// Releases the stack's lock as `by` says (whose lock is checked in this transaction).
    /// The audit event is recorded only when a lock is released. `NotFound` if there is no
    /// such stack.
    fn unlock(&self, stack: &str, by: UnlockBy, audit: NewAudit) -> Result<UnlockOutcome>;
    /// The stack's lock, if held.
    fn current_lock(&self, stack: &str) -> Result<Option<LockRecord>>;

    // --- state ---
    /// Metadata of the newest version.
    fn current_version(&self, stack: &str) -> Result<Option<VersionMeta>>;
    /// Metadata of one version.
    fn version(&self, stack: &str, serial: u64) -> Result<Option<VersionMeta>>;
    /// All versions, oldest first.
    fn versions(&self, stack: &str) -> Result<Vec<VersionMeta>>;
    /// The exact bytes of one version, verified against its hash.
    fn version_bytes(&self, stack: &str, serial: u64) -> Result<Vec<u8>>;
    /// Runs `check` inside a transaction and stores the attempt if it says so.
    fn write_state(
        &self,
        stack: &str,
        attempt: WriteAttempt,
        check: &mut WriteCheck<'_>,
    ) -> Result<WriteResult>;
    /// Re-hashes every stored version (of one stack, or all). Engines share this: it only
    /// reads through the trait, and `version_bytes` checks each version against its hash.
    fn verify(&self, stack: Option<&str>) -> Result<VerifyReport> {
        let stacks = match stack {
            Some(s) => vec![s.to_owned()],
            None => self.list_stacks()?.into_iter().map(|s| s.name).collect(),
        };
        let mut report = VerifyReport::default();
        for s in stacks {
            for v in self.versions(&s)? {
                report.checked += 1;
                if let Err(e) = self.version_bytes(&s, v.serial) {
                    report
                        .failures
                        .push(format!("{s} serial {}: {e}", v.serial));
                }
            }
        }
        Ok(report)
    }
    // --- removal grants ---
    /// Creates a removal grant.
    fn create_grant(&self, stack: &str, grant: NewGrant, audit: NewAudit) -> Result<GrantRecord>;
    /// Lists a stack's grants, newest first.
    fn grants(&self, stack: &str) -> Result<Vec<GrantRecord>>;

    // --- audit ---
    /// Appends an event on its own (denials, reads worth recording).
    fn append_audit(&self, event: NewAudit) -> Result<AuditRecord>;
    /// Events with `seq > after`, at most `limit`, in order.
    fn audit_events(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>>;
    /// Events matching `filter`, newest first, at most `limit`.
    fn audit_search(&self, filter: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>>;
    /// How many events match `filter`.
    fn audit_count(&self, filter: &AuditFilter) -> Result<u64>;
    /// Appends a seal naming the head of every stack chain that grew since the last seal (the
    /// server calls it every second; see `airlock_core::audit`); `None` if none grew.
    fn seal_audit(&self) -> Result<Option<AuditRecord>>;
    /// Every event in global order, a page at a time, in one snapshot (for verification and
    /// export: a page read later could otherwise miss a record that committed late); stops
    /// when `each` returns `false`.
    fn audit_walk(&self, each: &mut dyn FnMut(Vec<AuditRecord>) -> Result<bool>) -> Result<()>;

    // --- governed runs ---
    /// Stores a new run and its artifacts (name, bytes); `NotFound` if its stack does not
    /// exist, `Conflict` if the run or an artifact name exists already.
    fn create_run(
        &self,
        run: &RunRecord,
        artifacts: &[(&str, &[u8])],
        audit: NewAudit,
    ) -> Result<()>;
    /// Looks a run up.
    fn run(&self, id: &str) -> Result<Option<RunRecord>>;
    /// Runs, newest first, of one stack or all, at most `limit`.
    fn runs(&self, stack: Option<&str>, limit: u32) -> Result<Vec<RunRecord>> {
        let filter = RunFilter {
            stack: stack.map(str::to_owned),
            ..RunFilter::default()
        };
        self.runs_where(&filter, limit)
    }
    /// Runs matching `filter`, newest first, at most `limit`.
    fn runs_where(&self, filter: &RunFilter, limit: u32) -> Result<Vec<RunRecord>>;
    /// One artifact of a run, verified against its SHA-256: `None` if the run has no artifact
    /// of that name, `Purged` if it had one whose bytes were purged (a terminal run's binary
    /// plan, [`PLAN_ARTIFACT`]; its tombstone is in [`Store::run_artifact_infos`]), `Corrupt`
    /// if the bytes do not match.
    fn run_artifact(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>>;
    /// Adds an artifact to a run (e.g. the apply log); artifacts are never replaced: `Conflict`
    /// if the run has one of that name, `NotFound` if there is no such run.
    fn put_run_artifact(&self, id: &str, name: &str, bytes: &[u8]) -> Result<()>;
    /// Names of a run's artifacts, sorted (purged ones included).
    fn run_artifact_names(&self, id: &str) -> Result<Vec<String>>;
    /// A run's artifacts without their bytes, sorted by name: tombstones of purged ones
    /// (`purged_at` set) included.
    fn run_artifact_infos(&self, id: &str) -> Result<Vec<ArtifactInfo>>;
    /// Purges the binary plan of every terminal run that still holds one, each in its own
    /// transaction with a `run.plan_purged` audit event: runs a server older than migration
    /// 0018 ended beside this one (a rolling upgrade), which purged nothing. The server runs it
    /// at every start. Returns the runs purged.
    fn purge_plans_of_ended_runs(&self) -> Result<Vec<String>>;
    /// Closes every open run past its expiry as a request acting on it would find it
    /// (`expired`, which purges its binary plan), each in its own transaction, audited as the
    /// system's `run.expired`: a run nobody touches again would otherwise keep its plan, and
    /// show as open, for good. It closes the applying runs abandoned by their applier
    /// ([`run_rules::is_abandoned`]) likewise, as `failed` (audited as `run.failed`, with the
    /// note saying so). Candidates are read `page` at a time (the server passes
    /// [`run_rules::SWEPT_RUNS`]), oldest first; a run that cannot be closed is reported in
    /// [`Swept::failed`] and does not stop the others. The server runs it at start and every
    /// [`run_rules::EXPIRY_SWEEP_MS`].
    fn expire_overdue_runs(&self, now: i64, page: u32) -> Result<Swept>;
    /// How many runs `user` planned at or after `since_ms` (runs stored before migration 0016
    /// are not counted).
    fn runs_planned_since(&self, user: &str, since_ms: i64) -> Result<u64>;
    /// Judges and records a transition atomically (the run and its stack are locked). A
    /// transition to a terminal status ([`RunStatus::is_terminal`]) purges the run's binary
    /// plan in the same transaction and says so in the transition's audit detail
    /// (`plan_purged`).
    fn update_run(&self, id: &str, update: &mut RunUpdate<'_>) -> Result<RunTransition>;

    // --- server policy sets ---
    /// Adds a policy set as the next version of its glob; the glob's active set, if any, is
    /// removed in the same transaction ("replaced by version N"). `Conflict` on a duplicate id.
    fn add_policy_set(&self, set: NewPolicySet, audit: NewAudit) -> Result<PolicySetRecord>;
    /// Every policy set, removed ones included, oldest first.
    fn policy_sets(&self) -> Result<Vec<PolicySetRecord>>;
    /// Looks a policy set up.
    fn policy_set(&self, id: &str) -> Result<Option<PolicySetRecord>>;
    /// Stops a set from applying: `NotFound` if there is none, `Conflict` if it was removed.
    fn remove_policy_set(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        audit: NewAudit,
    ) -> Result<PolicySetRecord>;

    // --- drift reports ---
    /// Stores a drift report of a live stack. `Conflict` if the stack is archived, or if the
    /// report's serial is not the stack's current one (checked inside the transaction: a report
    /// about an older state says nothing about the current one).
    fn add_drift_report(
        &self,
        stack: &str,
        report: NewDriftReport,
        audit: NewAudit,
    ) -> Result<DriftReportMeta>;
    /// A stack's reports, newest first: at most `limit`, skipping `offset`.
    fn drift_reports(&self, stack: &str, offset: u32, limit: u32) -> Result<Vec<DriftReportMeta>>;
    /// One report with its JSON.
    fn drift_report(&self, id: &str) -> Result<Option<(DriftReportMeta, String)>>;
    /// The drift status of every stack that has a report, by stack name.
    fn drift_states(&self) -> Result<Vec<DriftState>>;

    // --- OIDC issuer keys and trusted forge issuers ---
    /// Every issuer key, oldest first (the private half only on the active one).
    fn oidc_keys(&self) -> Result<Vec<OidcKeyRecord>>;
    /// Adds the active key. With `rotate`, the active key (if any) is retired and its private
    /// half erased in the same transaction; without, `Conflict` if there is an active key
    /// (another replica made one first).
    fn add_oidc_key(&self, key: NewOidcKey, rotate: bool, audit: NewAudit)
        -> Result<OidcKeyRecord>;
    /// Adds a trusted forge issuer and the user (named by its id) of the tokens it issues;
    /// `Conflict` on a duplicate id.
    fn add_oidc_trust(&self, trust: &OidcTrustRecord, audit: NewAudit) -> Result<()>;
    /// Every trust, removed ones included, oldest first.
    fn oidc_trusts(&self) -> Result<Vec<OidcTrustRecord>>;
    /// Records a trust's removal: `NotFound` if there is none, `Conflict` if already removed.
    fn remove_oidc_trust(&self, id: &str, by: &str, audit: NewAudit) -> Result<OidcTrustRecord>;
    /// Pins a trust added before repository ids were pinned to the forge's ids: `NotFound`,
    /// or `Conflict` if it was removed or is pinned already (other ids are another trust).
    fn pin_oidc_trust(
        &self,
        id: &str,
        repository_id: &str,
        owner_id: &str,
        audit: NewAudit,
    ) -> Result<OidcTrustRecord>;

    // --- one read for a request's checks ---
    /// The stack and its current lock, read together (one query); `None` if the stack does
    /// not exist.
    fn stack_with_lock(&self, name: &str) -> Result<Option<(StackRecord, Option<LockRecord>)>>;

    // --- forge ID tokens already exchanged (one login per token) ---
    /// Records that the forge ID token `(issuer, jti)`, which expires at `exp` (ms), was
    /// exchanged for a login, after deleting the records whose `exp` is before `prune_before`
    /// (ms). `Conflict` if the pair is recorded already: the insert is the check, so of two
    /// replicas recording one token at once exactly one succeeds.
    fn use_forge_token(&self, issuer: &str, jti: &str, exp: i64, prune_before: i64) -> Result<()>;
}

/// Backup import: `airlock backup` reads everything through [`Store`] plus
/// `tokens_with_hashes` and `run_artifact_names`, and restores into an empty store with the
/// `import_*` methods, which insert records verbatim (same serials, hashes, authors, times) and
/// record no audit event of their own: the imported audit chain is the history. The server
/// never sees this trait.
pub trait StoreImport: Store {
    /// Every token with the SHA-256 of its secret (never the secret, which is not stored).
    fn tokens_with_hashes(&self) -> Result<Vec<(TokenRecord, [u8; 32])>>;
    /// Inserts a stack as exported (lineage and creation time included); `Conflict` if it exists.
    fn import_stack(&self, stack: &StackRecord) -> Result<()>;
    /// Inserts one state version verbatim. `Corrupt` if `bytes` do not match `meta`'s SHA-256
    /// and size; `Conflict` if the serial exists.
    fn import_version(&self, meta: &VersionMeta, bytes: &[u8]) -> Result<()>;
    /// Re-creates a held lock verbatim; `Conflict` if the stack is locked.
    fn import_lock(&self, stack: &str, lock: &LockRecord) -> Result<()>;
    /// Inserts a token verbatim (expiry and revocation included) under its secret's hash.
    fn import_token(&self, token: &TokenRecord, secret_hash: &[u8; 32]) -> Result<()>;
    /// Inserts a user verbatim; `Conflict` if it exists.
    fn import_user(&self, user: &UserRecord) -> Result<()>;
    /// Inserts a removal grant verbatim (consumption included).
    fn import_grant(&self, grant: &GrantRecord) -> Result<()>;
    /// Inserts a server policy set verbatim (version and removal included). `Corrupt` if its
    /// files do not hash to its `sha256`; `Conflict` if it exists.
    fn import_policy_set(&self, set: &PolicySetRecord) -> Result<()>;
    /// Appends an audit record verbatim. `Conflict` unless it extends the stored chain: its
    /// `seq` follows the last one and its `prev_hash` is the last one's hash; `Corrupt` unless
    /// its content hashes to its `hash`.
    fn import_audit(&self, record: &AuditRecord) -> Result<()>;
    /// Inserts a run and its artifacts verbatim (status, approvals, times included), and the
    /// tombstones of its purged ones. A terminal run's binary plan is stored as a tombstone
    /// whether it comes as one or with its bytes (an older backup: purged now); `Corrupt` for
    /// a tombstone of anything else (another artifact, an open run's plan), or a binary plan
    /// whose hash is not the run's `plan_sha256`.
    fn import_run(
        &self,
        run: &RunRecord,
        artifacts: &[(&str, &[u8])],
        tombstones: &[ArtifactInfo],
    ) -> Result<()>;
    /// Inserts a trust verbatim (removal and pinned ids included); `NotFound` unless its user
    /// (named by its id) exists, `Conflict` if it exists.
    fn import_oidc_trust(&self, trust: &OidcTrustRecord) -> Result<()>;
    /// Every drift report with its JSON, oldest first.
    fn all_drift_reports(&self) -> Result<Vec<DriftReportRecord>>;
    /// Inserts a drift report verbatim (id and time included) into its stack, archived or not:
    /// `NotFound` without the stack, `Conflict` if its serial is not one of the stack's
    /// versions or its id exists, `Corrupt` for an unknown status.
    fn import_drift_report(&self, report: &DriftReportRecord) -> Result<()>;
}

/// Storage statistics, for the history-size benchmark; the server never sees this trait.
pub trait StoreStats {
    /// Bytes stored for state content: compressed chunks and chunk lists, each with a fixed
    /// per-row overhead.
    fn stored_state_bytes(&self) -> Result<u64>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

enum Opened {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

/// The engine picked by the location's scheme: a `postgres://` / `postgresql://` URL, or a
/// SQLite database file path (`sqlite://PATH` or a bare path).
fn open_engine(location: &str) -> Result<Opened> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Ok(Opened::Postgres(PostgresStore::open(location)?));
    }
    let path = location.strip_prefix("sqlite://").unwrap_or(location);
    Ok(Opened::Sqlite(SqliteStore::open(std::path::Path::new(
        path,
    ))?))
}

/// Opens the store a server was configured with: a `postgres://` / `postgresql://` URL, or a
/// SQLite database file path (`sqlite://PATH` or a bare path).
pub fn open(location: &str) -> Result<std::sync::Arc<dyn Store>> {
    Ok(match open_engine(location)? {
        Opened::Postgres(s) => std::sync::Arc::new(s),
        Opened::Sqlite(s) => std::sync::Arc::new(s),
    })
}

/// Opens a store like [`open`], with the backup import methods.
pub fn open_for_import(location: &str) -> Result<std::sync::Arc<dyn StoreImport>> {
    Ok(match open_engine(location)? {
        Opened::Postgres(s) => std::sync::Arc::new(s),
        Opened::Sqlite(s) => std::sync::Arc::new(s),
    })
}
