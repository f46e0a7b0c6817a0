//! Records the store reads and writes. Times are Unix milliseconds.

use airlock_core::Role;
use serde::{Deserialize, Serialize};

/// Per-stack settings, stored as JSON so new settings need no migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StackSettings {
    /// Roles that may write state outside a run (never agent or reader).
    pub direct_writes: Vec<Role>,
    /// Approvals a run needs before it may be applied.
    pub required_approvals: u32,
    /// Resource types protected in this stack on top of the built-in catalogue.
    pub protect_types: Vec<String>,
    /// Address globs protected in this stack.
    pub protect_addresses: Vec<String>,
    /// Roles that may apply approved runs (production default: CI only).
    pub apply_from: Vec<Role>,
    /// Resource types the repository's `airlock.hcl` protects, as of the stack's last applied
    /// run (recorded by the server, never set by a client): the firewall honours them too.
    pub repository_protect_types: Vec<String>,
    /// Address globs the repository's `airlock.hcl` protects, as of the last applied run.
    pub repository_protect_addresses: Vec<String>,
}

impl StackSettings {
    /// Defaults: production stacks take direct writes from admins only and need two approvals.
    pub fn defaults(production: bool) -> StackSettings {
        StackSettings {
            direct_writes: if production {
                vec![Role::Admin]
            } else {
                vec![Role::Admin, Role::Approver, Role::Ci]
            },
            required_approvals: if production { 2 } else { 1 },
            protect_types: Vec::new(),
            protect_addresses: Vec::new(),
            repository_protect_types: Vec::new(),
            repository_protect_addresses: Vec::new(),
            apply_from: if production {
                vec![Role::Ci]
            } else {
                vec![Role::Ci, Role::Admin]
            },
        }
    }
}

impl Default for StackSettings {
    fn default() -> Self {
        StackSettings::defaults(false)
    }
}

/// A stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackRecord {
    /// Stack name.
    pub name: String,
    /// Whether the stack is marked production.
    pub production: bool,
    /// Lineage set by the first state write.
    pub lineage: Option<String>,
    /// Settings.
    pub settings: StackSettings,
    /// Creation time.
    pub created_at: i64,
    /// Set when the stack was deleted: it is archived, never removed. Its history stays
    /// readable; it takes no new state writes, locks, runs, grants or settings; its name
    /// stays taken, so a new stack can never be mistaken for the old one's history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived: Option<Archive>,
}

/// When, by whom and why a stack was deleted (archived).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Archive {
    /// Time of the deletion (ms since the epoch).
    pub at: i64,
    /// Who deleted it.
    pub by: String,
    /// Why.
    pub reason: String,
}

impl StackRecord {
    /// The refusal for a change to an archived stack, if this one is.
    pub fn refuse_if_archived(&self) -> Option<airlock_core::refusal::Refusal> {
        self.archived.as_ref().map(|a| {
            airlock_core::refusal::Refusal::new(
                airlock_core::refusal::RefusalKind::Conflict,
                format!(
                    "stack {} was deleted on {} by {} ({}): it is archived, its history stays readable (`airlock state history {}`), but it takes no new state writes, locks or runs; use another stack name",
                    self.name,
                    airlock_core::time::rfc3339(a.at),
                    a.by,
                    a.reason,
                    self.name
                ),
            )
        })
    }
}

/// Metadata of one immutable state version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionMeta {
    /// Stack name.
    pub stack: String,
    /// Serial (unique within the stack).
    pub serial: u64,
    /// Lineage.
    pub lineage: String,
    /// SHA-256 of the exact bytes, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Token name and id of the writer.
    pub author: String,
    /// Lock ID the write was made under.
    pub lock_id: Option<String>,
    /// Run that produced it, if any.
    pub run_id: Option<String>,
    /// Why it was written, for restores.
    pub reason: Option<String>,
    /// Serial this version restores, for restores.
    pub restored_from: Option<u64>,
    /// Write time.
    pub created_at: i64,
}

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockRecord {
    /// Lock ID chosen by the client.
    pub id: String,
    /// The lock-info body exactly as sent.
    #[serde(skip)]
    pub info: Vec<u8>,
    /// Operation from the lock info.
    pub operation: String,
    /// Token id of the holder.
    pub owner_token: String,
    /// Display name of the holder.
    pub owner: String,
    /// When it was taken.
    pub created_at: i64,
}

/// A new lock request.
#[derive(Debug, Clone)]
pub struct NewLock {
    /// Lock ID.
    pub id: String,
    /// Verbatim lock-info body.
    pub info: Vec<u8>,
    /// Operation.
    pub operation: String,
    /// Token id of the requester.
    pub owner_token: String,
    /// Display name of the requester.
    pub owner: String,
}

/// Result of a lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock is now held by the requester.
    Acquired,
    /// Someone holds it already.
    Held(LockRecord),
}

/// How an unlock identifies the lock, and whose release it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockBy {
    /// Its holder releases lock `lock_id`: released only while token `owner_token` holds it
    /// (`Mismatch` with the holder otherwise: another lock, or this ID held by another token).
    Holder {
        /// The lock's ID (Terraform's lock info `ID`).
        lock_id: String,
        /// The releasing token, which must be the holder's.
        owner_token: String,
    },
    /// Token `token`, which has the force-unlock permission, releases lock `lock_id` whoever
    /// holds it: its own lock is released as by [`UnlockBy::Holder`], under the audit event
    /// given; another holder's is a force-unlock, audited [`NewAudit::forced`].
    Id {
        /// The lock's ID.
        lock_id: String,
        /// The releasing token.
        token: String,
    },
    /// Unconditional release (force-unlock).
    Force,
}

/// Result of an unlock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockOutcome {
    /// The lock was released.
    Released(LockRecord),
    /// There was no lock.
    NotLocked,
    /// A different lock is held.
    Mismatch(LockRecord),
}

/// An API token (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// Public identifier.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Stack globs it is scoped to; empty = all stacks.
    pub stacks: Vec<String>,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// Who created it.
    pub created_by: String,
    /// Run the token is bound to (run-bound apply tokens).
    pub run_id: Option<String>,
    /// The user the token belongs to: approvals and authorship count users, not tokens. A
    /// token created without a user is its own identity (user = its id, `tok_…`).
    pub user: String,
    /// The token that minted this one (phase tokens); revoking the parent revokes it.
    pub parent_id: Option<String>,
    /// Other stacks whose state (`GET /state/{stack}` only) the token may read: exact names,
    /// given to a plan-phase token for `terraform_remote_state` (migration 0015).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_stacks: Vec<String>,
    /// The token whose caller minted this one (`tokens.minted_by`, migration 0019): set by the
    /// server from the authenticated caller, never from a request's body; none for the
    /// operator's offline `airlock token create`, the bootstrap token and forge logins.
    pub minted_by: Option<String>,
    /// Why the server revoked this token itself ([`crate::Store::revoke_unsafe_mints`]); none
    /// when it is live or an admin revoked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// The git ref of the job a forge login was made for, verified with its ID token
    /// (`tokens.job_ref`, migration 0020), inherited by the tokens minted from it; none for
    /// every other token. A trust's jobs share its user: the ref tells their runs apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_ref: Option<String>,
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Public identifier.
    pub id: String,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Human name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Stack globs.
    pub stacks: Vec<String>,
    /// Expiry time.
    pub expires_at: Option<i64>,
    /// Creator.
    pub created_by: String,
    /// Bound run.
    pub run_id: Option<String>,
    /// Owner: an existing user, or the token's own id for a machine token without one. A
    /// derived token always belongs to its parent's user (the store enforces it).
    pub user: String,
    /// Parent token (phase tokens): the derived token dies with it and expires no later.
    pub parent_id: Option<String>,
    /// Other stacks whose state the token may read (exact names; plan-phase tokens only, each
    /// checked against the minter by the server before it asks the store).
    pub read_stacks: Vec<String>,
    /// The authenticated caller's token (the server's mints), none for the operator, the
    /// bootstrap and forge logins; the store refuses one that names no stored token.
    pub minted_by: Option<String>,
    /// See [`TokenRecord::job_ref`]: a forge login's verified ref, or its minter's.
    pub job_ref: Option<String>,
    /// Limit on tokens of this kind (derived, or parentless) per user, counted in the database
    /// so replicas agree.
    pub mint_limit: Option<MintLimit>,
}

/// At most `max` tokens of one kind (derived, or parentless) per user within `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintLimit {
    /// Tokens allowed in the window.
    pub max: u64,
    /// Window length.
    pub window_ms: i64,
}

/// A person that tokens belong to, created by an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Unique name.
    pub name: String,
    /// Creation time.
    pub created_at: i64,
    /// Who created it (token name and id).
    pub created_by: String,
    /// Forge identities (`github:alice`, `gitlab:alice`, lower case), sorted: the pull
    /// requests whose author (as the CI job claims it) is one of them are this user's changes.
    #[serde(default)]
    pub forge_logins: Vec<String>,
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Name, validated with [`valid_user_name`].
    pub name: String,
    /// Creator.
    pub created_by: String,
    /// Forge logins, each checked with [`valid_forge_login`].
    pub forge_logins: Vec<String>,
}

/// The forges whose logins users can carry (the forges `airlock ci` runs on).
pub const FORGES: &[&str] = &["github", "gitlab"];

/// Checks and normalizes a forge login `FORGE:LOGIN` (FORGE one of [`FORGES`]; LOGIN 1-100
/// characters of `a-z 0-9 . _ - [ ]`, GitHub's and GitLab's user names, `[bot]` suffixes
/// included), lower-cased, since both forges compare user names case-insensitively.
pub fn valid_forge_login(login: &str) -> Result<String, String> {
    let lower = login.to_ascii_lowercase();
    let ok = match lower.split_once(':') {
        Some((forge, name)) => {
            FORGES.contains(&forge)
                && !name.is_empty()
                && name.len() <= 100
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-[]".contains(&b))
        }
        None => false,
    };
    if ok {
        Ok(lower)
    } else {
        Err(format!(
            "invalid forge login {:?}: use FORGE:LOGIN with FORGE one of {} and LOGIN 1-100 characters of a-z, 0-9, '.', '_', '-', '[', ']' (e.g. github:alice)",
            login.chars().take(120).collect::<String>(),
            FORGES.join(", ")
        ))
    }
}

/// Prefix of token ids, and so of the implicit user of a token created without one; no
/// explicit user may take a name with it.
pub const TOKEN_ID_PREFIX: &str = "tok_";
/// The prefix of an OIDC trust's id, the user of the tokens its logins get.
pub const TRUST_ID_PREFIX: &str = "trust_";

/// Checks a user name: 1-64 characters of `a-z A-Z 0-9 . _ - @`, not starting with `tok_`
/// (reserved for tokens that are their own identity) or `trust_` (OIDC trusts). Printable by
/// construction.
pub fn valid_user_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
    {
        return Err(format!(
            "invalid user name {name:?}: use 1-64 characters of a-z, A-Z, 0-9, '.', '_', '-', '@'"
        ));
    }
    if name.starts_with(TOKEN_ID_PREFIX) {
        return Err(format!(
            "invalid user name {name:?}: names starting with {TOKEN_ID_PREFIX} are reserved for token ids"
        ));
    }
    // A CI job's login tokens belong to their trust (user = the trust's id): a user of that
    // name would share the trust's login limit and identity.
    if name.starts_with(TRUST_ID_PREFIX) {
        return Err(format!(
            "invalid user name {name:?}: names starting with {TRUST_ID_PREFIX} are reserved for OIDC trusts"
        ));
    }
    Ok(())
}

/// What a store reads inside the token-creating transaction, for [`NewToken::judge`].
#[derive(Debug, Clone, Copy)]
pub struct MintContext<'a> {
    /// The parent token, if the new token names one and it exists.
    pub parent: Option<&'a TokenRecord>,
    /// Whether the new token's user exists as a user record.
    pub user_exists: bool,
    /// Tokens of the new token's kind (derived, or parentless), not run-bound, of its user,
    /// created within the mint limit's window.
    pub recent_minted: u64,
    /// The transaction's time.
    pub now: i64,
    /// The person a parentless token is minted for (none for a derived token, or a token that
    /// is its own identity): judged by [`Person::may_receive`].
    pub person: Option<&'a Person>,
}

/// What the store knows of a user a parentless token is minted for, read in the minting
/// transaction under the user's mint lock (so two mints for one user are judged one after
/// the other, on every engine and replica).
#[derive(Debug, Clone)]
pub struct Person {
    /// The user's name.
    pub name: String,
    /// The admin token that mints (the new token's `minted_by`): none for the operator
    /// (`airlock token create` offline, the bootstrap) and forge logins.
    pub minter: Option<TokenRecord>,
    /// Every parentless token the user was ever given (live, revoked or expired), each with
    /// the tokens that minted it: its minter, the minter's minter, and so on (whoever holds one
    /// of them may have been handed its secret). Derived tokens lie within their parent's scope.
    pub tokens: Vec<(TokenRecord, Vec<TokenRecord>)>,
    /// How many forge logins the user has.
    pub forge_logins: u64,
}

/// Whether a user is a person tokens are minted for by name ([`Person::may_receive`] judges
/// those): every user but a forge trust's pipeline identity, whose tokens only its trust's
/// logins mint ([`valid_user_name`] keeps its prefix out of every name a token names).
pub fn is_person(user: &str) -> bool {
    !user.starts_with(TRUST_ID_PREFIX)
}

/// The token that minted a token, from its `created_by` as the server records a caller
/// (`NAME (tok_…)`: the id is last, whatever the name holds). None for the operator's
/// `offline (…)`, the bootstrap's `system` and a forge login's `oidc login via …`. Since
/// migration 0019 the minter is the column `minted_by`; this reads only old data: the
/// migration's fill and backups made before the column (and checks newer ones against it).
pub fn minter_id(created_by: &str) -> Option<&str> {
    let (_, id) = created_by.strip_suffix(')')?.rsplit_once(" (")?;
    (id.starts_with(TOKEN_ID_PREFIX) && !id.contains([' ', '(', ')'])).then_some(id)
}

impl Person {
    /// The rule for minting a token for a person, its one home:
    /// 1. an admin token scoped to stacks S mints only for its own user, or for a user all of
    ///    whose tokens ever (revoked and expired ones too) lie within S and who has no forge
    ///    login;
    /// 2. no token beyond S is minted for a user holding a live token that another user's
    ///    admin token scoped to S minted (directly, or through tokens it minted): whoever holds
    ///    that admin token could act as, and spend the per-user limits of, a person with rights
    ///    beyond S. It is revoked first.
    ///
    /// `stacks` is the new token's scope (empty: all stacks, as for a forge login, which
    /// decides approvals everywhere).
    pub fn may_receive(&self, stacks: &[String], now: i64) -> Result<(), crate::StoreError> {
        match self.refusal(stacks, now) {
            Some(r) => Err(crate::StoreError::Forbidden(r.message)),
            None => Ok(()),
        }
    }

    /// Whether `m` is an admin token scoped to stacks that belongs to another user: the only
    /// kind of minter the rule restricts.
    pub fn is_scoped_other(&self, m: &TokenRecord) -> bool {
        !m.stacks.is_empty() && m.user != self.name
    }

    /// [`Person::may_receive`]'s verdict as data: which token the rule objects to, so the
    /// server can revoke what was minted before the rule existed
    /// ([`crate::Store::revoke_unsafe_mints`]).
    pub fn refusal(&self, stacks: &[String], now: i64) -> Option<MintRefusal> {
        use airlock_core::glob::within_scope;
        let forbidden = |message: String, held: Option<&TokenRecord>, through: &TokenRecord| {
            Some(MintRefusal {
                held: held.map(|t| t.id.clone()),
                through: through.id.clone(),
                message,
            })
        };
        let scoped_other = |m: &&TokenRecord| self.is_scoped_other(m);
        if let Some(m) = self.minter.as_ref().filter(scoped_other) {
            let beyond = self
                .tokens
                .iter()
                .find(|(t, _)| !within_scope(&m.stacks, &t.stacks));
            let why = match beyond {
                Some((t, _)) => Some(format!(
                    "was given token {} for {}",
                    t.id,
                    scope_text(&t.stacks)
                )),
                None if self.forge_logins > 0 => {
                    Some("has forge logins, which decide approvals on all stacks".to_owned())
                }
                None => None,
            };
            if let Some(why) = why {
                return forbidden(format!(
                    "token {} ({}) is an admin scoped to stacks {:?}: it mints only for its own user and for users whose every token lies within that scope; user {} {why}, so only an admin token for all stacks may mint for {}",
                    m.name, m.id, m.stacks, self.name, self.name
                ), None, m);
            }
        }
        let live = |t: &TokenRecord| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now);
        let held = self
            .tokens
            .iter()
            .filter(|(t, _)| live(t))
            .find_map(|(t, chain)| {
                chain
                    .iter()
                    .filter(scoped_other)
                    .find(|m| !within_scope(&m.stacks, stacks))
                    .map(|m| (t, m))
            });
        if let Some((t, m)) = held {
            let wanted = if stacks.is_empty() {
                "rights on all stacks".to_owned()
            } else {
                format!("a token for stacks {stacks:?}")
            };
            return forbidden(format!(
                "user {} holds live token {} ({}), minted through {} ({}), user {}'s admin token scoped to stacks {:?}; whoever holds that could act as, and spend the per-user limits of, {} with rights beyond that scope: revoke {} first (`airlock token revoke {}`), then give {} {wanted}",
                self.name, t.id, scope_text(&t.stacks), m.name, m.id, m.user, m.stacks, self.name, t.id, t.id, self.name
            ), Some(t), m);
        }
        None
    }
}

/// Why [`Person::refusal`] refuses a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRefusal {
    /// Rule 2: the live token the user holds that must be revoked first. None for rule 1: the
    /// token being judged is the one refused.
    pub held: Option<String>,
    /// The scoped admin token (another user's) the refusal is about: the minter (rule 1), or
    /// the one in the held token's chain of minters (rule 2).
    pub through: String,
    /// The refusal, for the caller (a 403's message; a revocation's reason).
    pub message: String,
}

/// `stacks ["dev/*"]`, or `all stacks` for an empty scope.
fn scope_text(stacks: &[String]) -> String {
    if stacks.is_empty() {
        "all stacks".to_owned()
    } else {
        format!("stacks {stacks:?}")
    }
}

/// A removal grant: permission for one state write to drop specific instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantRecord {
    /// Identifier.
    pub id: String,
    /// Stack.
    pub stack: String,
    /// Exact instance addresses the grant covers.
    pub addresses: Vec<String>,
    /// Why.
    pub reason: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// When a write consumed it.
    pub consumed_at: Option<i64>,
    /// Run it was created from.
    pub run_id: Option<String>,
}

/// A grant to create.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// Identifier.
    pub id: String,
    /// Instance addresses.
    pub addresses: Vec<String>,
    /// Why.
    pub reason: String,
    /// Creator.
    pub created_by: String,
    /// Expiry time.
    pub expires_at: i64,
    /// Run.
    pub run_id: Option<String>,
}

/// An audit event to append (the store assigns seq, time and hashes).
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// Who acted.
    pub actor: String,
    /// What happened.
    pub action: String,
    /// Stack concerned.
    pub stack: Option<String>,
    /// `ok` or `denied`.
    pub outcome: String,
    /// Detail (no secrets).
    pub detail: serde_json::Value,
}

impl NewAudit {
    /// A successful action.
    pub fn ok(
        actor: &str,
        action: &str,
        stack: Option<&str>,
        detail: serde_json::Value,
    ) -> NewAudit {
        NewAudit {
            actor: actor.to_owned(),
            action: action.to_owned(),
            stack: stack.map(str::to_owned),
            outcome: "ok".into(),
            detail,
        }
    }

    /// The `token.revoke_cascade` event a store records with a revocation that also revoked
    /// the tokens derived from it: same actor, naming each revoked descendant.
    pub fn cascade(&self, parent: &str, revoked: &[String]) -> NewAudit {
        NewAudit::ok(
            &self.actor,
            "token.revoke_cascade",
            None,
            serde_json::json!({"parent": parent, "tokens": revoked}),
        )
    }

    /// The `lock.force_unlock` event a store records instead of this one when an
    /// [`UnlockBy::Id`] release finds `held`, another token's lock: same actor and stack,
    /// naming the lock released and its holder.
    pub fn forced(&self, held: &LockRecord) -> NewAudit {
        NewAudit::ok(
            &self.actor,
            "lock.force_unlock",
            self.stack.as_deref(),
            serde_json::json!({"lock_id": held.id, "holder": held.owner}),
        )
    }

    /// A refused action.
    pub fn denied(
        actor: &str,
        action: &str,
        stack: Option<&str>,
        detail: serde_json::Value,
    ) -> NewAudit {
        NewAudit {
            outcome: "denied".into(),
            ..NewAudit::ok(actor, action, stack, detail)
        }
    }
}

/// Which audit events `Store::audit_search` returns; every field set narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events with `seq < before`.
    pub before: Option<i64>,
    /// Only events of this stack.
    pub stack: Option<String>,
    /// Only events with this action, e.g. `state.write`, `denied`.
    pub action: Option<String>,
    /// Only `ok` or `denied` events.
    pub outcome: Option<String>,
    /// Only events whose actor contains this text (a token name, id or user).
    pub actor: Option<String>,
    /// Only events at or after this RFC 3339 time (as `rfc3339` formats it).
    pub since: Option<String>,
    /// Only events before this RFC 3339 time.
    pub until: Option<String>,
}

/// A state write the firewall is asked to judge.
#[derive(Debug, Clone)]
pub struct WriteAttempt {
    /// Exact bytes, with their SHA-256.
    pub body: crate::blob::StateBody,
    /// Serial read from the body.
    pub serial: u64,
    /// Lineage read from the body.
    pub lineage: String,
    /// Writer (token name and id).
    pub author: String,
    /// `?ID=` of the request.
    pub lock_id: Option<String>,
    /// Run the write belongs to.
    pub run_id: Option<String>,
    /// Reason (restores).
    pub reason: Option<String>,
    /// Restored serial (restores).
    pub restored_from: Option<u64>,
}

/// What the firewall sees, read inside the write transaction.
pub struct WriteContext<'a> {
    /// The stack.
    pub stack: &'a StackRecord,
    /// Its lock, if held.
    pub lock: Option<&'a LockRecord>,
    /// Its current version.
    pub current: Option<&'a VersionMeta>,
    /// Unconsumed, unexpired grants of the stack.
    pub grants: &'a [GrantRecord],
    /// Loads the current version's bytes (only if the firewall needs them).
    pub load_current: &'a dyn Fn() -> Result<Vec<u8>, crate::StoreError>,
    /// SHA-256 of the attempt's body, computed once by the store.
    pub sha256: &'a [u8; 32],
}

/// The firewall's verdict on a write.
#[derive(Debug, Clone)]
pub enum WriteDecision {
    /// Store it as a new version, consuming these grants, recording this audit event.
    Store {
        /// Grants consumed by the write.
        consume_grants: Vec<String>,
        /// Audit event for the write.
        audit: NewAudit,
    },
    /// Identical re-send of the current version: store nothing.
    Unchanged,
}

/// Result of a write.
#[derive(Debug, Clone)]
pub enum WriteResult {
    /// Stored as a new version.
    Stored(VersionMeta),
    /// Nothing stored (identical re-send).
    Unchanged,
    /// Refused by the firewall.
    Refused(airlock_core::refusal::Refusal),
}

/// Outcome of re-hashing stored versions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Versions checked.
    pub checked: u64,
    /// Versions whose bytes do not match their hash, or could not be read.
    pub failures: Vec<String>,
}

// The records a store returns for what it just created: one place for both engines.

impl NewToken {
    /// The record of this token as created at `now`.
    pub fn into_record(self, now: i64) -> TokenRecord {
        TokenRecord {
            id: self.id,
            name: self.name,
            role: self.role,
            stacks: self.stacks,
            created_at: now,
            expires_at: self.expires_at,
            revoked_at: None,
            created_by: self.created_by,
            run_id: self.run_id,
            user: self.user,
            parent_id: self.parent_id,
            read_stacks: self.read_stacks,
            minted_by: self.minted_by,
            revoked_reason: None,
            job_ref: self.job_ref,
        }
    }

    /// The one home of the ownership and derivation rules, run by every engine inside the
    /// transaction that stores the token. A derived token must have a live parent that is not
    /// itself derived, belongs to the parent's user, expires no later than the parent, and
    /// counts against the user's mint limit. Any other token belongs to an existing user (a
    /// person's is judged by [`Person::may_receive`]: who may mint for whom) or is its own
    /// identity (user = its id).
    pub fn judge(mut self, ctx: MintContext<'_>) -> Result<NewToken, crate::StoreError> {
        use crate::StoreError;
        let Some(parent_id) = self.parent_id.clone() else {
            if self.user == self.id {
                return self.within_mint_limit(&ctx);
            }
            if ctx.user_exists {
                if is_person(&self.user) {
                    let person = ctx.person.ok_or_else(|| {
                        StoreError::Backend(format!(
                            "user {} was not read before minting",
                            self.user
                        ))
                    })?;
                    person.may_receive(&self.stacks, ctx.now)?;
                }
                return self.within_mint_limit(&ctx);
            }
            return Err(StoreError::NotFound(format!(
                "user {:?}; create it first with `airlock user create {}`",
                self.user, self.user
            )));
        };
        let parent = ctx
            .parent
            .ok_or_else(|| StoreError::NotFound(format!("parent token {parent_id}")))?;
        if parent.revoked_at.is_some() || parent.expires_at.is_some_and(|e| e <= ctx.now) {
            return Err(StoreError::Conflict(format!(
                "token {parent_id} is revoked or expired and cannot mint tokens"
            )));
        }
        if parent.parent_id.is_some() {
            return Err(StoreError::Conflict(format!(
                "token {parent_id} is a phase token; phase tokens cannot mint tokens"
            )));
        }
        if !self.user.is_empty() && self.user != parent.user {
            return Err(StoreError::Conflict(format!(
                "a token derived from {parent_id} belongs to its user {}, not {}",
                parent.user, self.user
            )));
        }
        self.user = parent.user.clone();
        // A phase token is its minter's job's, whatever the request said.
        self.job_ref = parent.job_ref.clone();
        self.expires_at = no_later_than_minter(self.expires_at, parent.expires_at);
        self.within_mint_limit(&ctx)
    }

    /// The mint limit: at most `max` tokens of this kind (derived: phase tokens; parentless:
    /// e.g. a trust's forge logins) per user within the window.
    fn within_mint_limit(self, ctx: &MintContext<'_>) -> Result<NewToken, crate::StoreError> {
        if let Some(limit) = self.mint_limit {
            if ctx.recent_minted >= limit.max {
                let (kind, why) = if self.parent_id.is_some() {
                    ("phase tokens", "plans are being started")
                } else {
                    ("tokens", "are being issued")
                };
                return Err(crate::StoreError::LimitReached(format!(
                    "user {} has minted {} {kind} in the last {} minutes, the limit; wait, or ask why so many {why}",
                    self.user,
                    ctx.recent_minted,
                    limit.window_ms / 60_000
                )));
            }
        }
        Ok(self)
    }
}

impl NewGrant {
    /// The record of this grant on `stack` as created at `now`.
    pub fn into_record(self, stack: &str, now: i64) -> GrantRecord {
        GrantRecord {
            id: self.id,
            stack: stack.to_owned(),
            addresses: self.addresses,
            reason: self.reason,
            created_by: self.created_by,
            created_at: now,
            expires_at: self.expires_at,
            consumed_at: None,
            run_id: self.run_id,
        }
    }
}

impl WriteAttempt {
    /// The metadata of this attempt stored as a version of `stack` at `now`.
    pub fn version_meta(&self, stack: &str, sha256: &[u8; 32], now: i64) -> VersionMeta {
        VersionMeta {
            stack: stack.to_owned(),
            serial: self.serial,
            lineage: self.lineage.clone(),
            sha256: hex::encode(sha256),
            size: self.body.bytes().len() as u64,
            author: self.author.clone(),
            lock_id: self.lock_id.clone(),
            run_id: self.run_id.clone(),
            reason: self.reason.clone(),
            restored_from: self.restored_from,
            created_at: now,
        }
    }
}

/// One file of a server policy set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyFile {
    /// File name, relative to the uploaded directory.
    pub path: String,
    /// Rego source.
    pub text: String,
}

/// A server-side Rego policy set: evaluated on every run of a stack its glob matches, in
/// addition to (and never weakened by) the repository's own policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetRecord {
    /// `pol_…`.
    pub id: String,
    /// Stack glob (`prod/*`).
    pub stack_glob: String,
    /// 1 for the first set of the glob, then one more per `add`.
    pub version: i64,
    /// The Rego files, sorted by path.
    pub files: Vec<PolicyFile>,
    /// SHA-256 over the files (`path NUL text NUL`, in order), hex.
    pub sha256: String,
    /// Creation time.
    pub created_at: i64,
    /// Who added it (token name and id).
    pub created_by: String,
    /// When it stopped applying (removed, or replaced by a newer version of its glob).
    pub removed_at: Option<i64>,
    /// Who removed it.
    pub removed_by: Option<String>,
    /// Why (the `--reason`, or `replaced by version N`).
    pub removed_reason: Option<String>,
}

impl PolicySetRecord {
    /// Whether the set still applies.
    pub fn is_active(&self) -> bool {
        self.removed_at.is_none()
    }
}

/// A policy set to add.
#[derive(Debug, Clone)]
pub struct NewPolicySet {
    /// `pol_…`.
    pub id: String,
    /// Stack glob.
    pub stack_glob: String,
    /// The Rego files.
    pub files: Vec<PolicyFile>,
    /// Who adds it.
    pub created_by: String,
}

/// A drift report to store: what one refresh-only check of a stack found. The store keeps the
/// report's JSON as given (the server builds it) and the columns that status and history need.
#[derive(Debug, Clone)]
pub struct NewDriftReport {
    /// `drf_…`.
    pub id: String,
    /// `in_sync`, `drifted` or `unknown`.
    pub status: String,
    /// The state serial the check refreshed (`None`: the stack had no state).
    pub serial: Option<u64>,
    /// Drifted instances and outputs.
    pub drifted: u64,
    /// Findings (protections weakened, critical objects gone).
    pub findings: u64,
    /// Who reported it (token name and id).
    pub reported_by: String,
    /// The whole report, JSON.
    pub report: String,
}

/// A stored drift report, without its JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftReportMeta {
    /// `drf_…`.
    pub id: String,
    /// The stack.
    pub stack: String,
    /// `in_sync`, `drifted` or `unknown`.
    pub status: String,
    /// The state serial the check refreshed.
    pub serial: Option<u64>,
    /// Drifted instances and outputs.
    pub drifted: u64,
    /// Findings.
    pub findings: u64,
    /// Who reported it.
    pub reported_by: String,
    /// When.
    pub created_at: i64,
}

/// A stack's drift status: its newest report and, while it is drifted, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftState {
    /// The newest report.
    pub last: DriftReportMeta,
    /// The time of the first `drifted` report after the last `in_sync` one, if the newest
    /// verdict that was not `unknown` is `drifted`.
    pub drifted_since: Option<i64>,
}

/// Secret bytes (a private signing key): never printed, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(<redacted>)")
    }
}

/// A drift report as stored, with its JSON: what backups carry (see
/// [`crate::StoreImport::import_drift_report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftReportRecord {
    /// The columns.
    pub meta: DriftReportMeta,
    /// The whole report, JSON.
    pub report: String,
}

/// A signing key of airlock's OIDC issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcKeyRecord {
    /// Key id (`kid`).
    pub kid: String,
    /// JOSE algorithm (`ES256`).
    pub alg: String,
    /// The public key as a JWK (JSON text), as served in the JWKS.
    pub public_jwk: String,
    /// The private key (PKCS#8), kept only while the key is active.
    pub private_pkcs8: Option<SecretBytes>,
    /// Creation time.
    pub created_at: i64,
    /// When a rotation retired it (it signs nothing after).
    pub retired_at: Option<i64>,
}

/// A key to add (see [`crate::Store::add_oidc_key`]).
#[derive(Debug, Clone)]
pub struct NewOidcKey {
    /// Key id.
    pub kid: String,
    /// JOSE algorithm.
    pub alg: String,
    /// Public JWK (JSON text).
    pub public_jwk: String,
    /// Private key (PKCS#8).
    pub private_pkcs8: SecretBytes,
}

/// A forge OIDC issuer whose CI job tokens may be exchanged for an airlock token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcTrustRecord {
    /// `trust_…`; also the user of the tokens it issues.
    pub id: String,
    /// `github` or `gitlab`.
    pub forge: String,
    /// The forge's issuer URL (`iss`, exact).
    pub issuer: String,
    /// The audience the job's token must carry.
    pub audience: String,
    /// `org/repo` (GitHub `repository`, GitLab `project_path`), exact.
    pub repository: String,
    /// The repository's immutable id (GitHub `repository_id`, GitLab `project_id`), decimal;
    /// none only on a trust added before ids were pinned (it matches no job until pinned).
    pub repository_id: Option<String>,
    /// Its owner's immutable id (GitHub `repository_owner_id`, GitLab `namespace_id`).
    pub owner_id: Option<String>,
    /// The ref the job must run on (`refs/heads/main`), exact; none: any ref.
    pub git_ref: Option<String>,
    /// The deployment environment the job must run in, exact; none: any.
    pub environment: Option<String>,
    /// The role issued (ci, agent or reader).
    pub role: String,
    /// Stack globs of the issued token (empty: all).
    pub stacks: Vec<String>,
    /// Lifetime of the issued token, in milliseconds.
    pub lifetime_ms: i64,
    /// Creation time.
    pub created_at: i64,
    /// Who added it.
    pub created_by: String,
    /// When it was removed.
    pub removed_at: Option<i64>,
    /// Who removed it.
    pub removed_by: Option<String>,
}

/// The expiry of a token minted from a token that expires at `minter`: never later (a minted
/// token dies with its minter), at mint (derived tokens in [`NewToken::judge`], tokens minted
/// through the API by the server's `POST /api/v1/tokens`) and whenever its expiry moves (an
/// apply's run-bound token, `core::keep_run_token_until`).
pub fn no_later_than_minter(own: Option<i64>, minter: Option<i64>) -> Option<i64> {
    match (own, minter) {
        (Some(own), Some(m)) => Some(own.min(m)),
        (own, m) => own.or(m),
    }
}
