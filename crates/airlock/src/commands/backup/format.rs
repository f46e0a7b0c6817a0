//! The backup format: the manifest, and one record type per file kind, with their
//! conversions from and to store records.

use std::collections::{BTreeMap, BTreeSet};

use airlock_store::{
    Archive, DriftReportMeta, DriftReportRecord, GrantRecord, OidcTrustRecord, PolicyFile,
    PolicySetRecord, RunRecord, StackRecord, StackSettings, TokenRecord, UserRecord, VersionMeta,
};
use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{hex, unhex32};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Manifest {
    pub(super) format: String,
    pub(super) created_at: String,
    pub(super) source_engine: String,
    pub(super) summary: Summary,
    /// Relative path (always `/`-separated) -> hash and size.
    pub(super) files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(super) struct Summary {
    pub(super) stacks: u64,
    pub(super) versions: u64,
    /// Absent in format 1.
    #[serde(default)]
    pub(super) users: u64,
    pub(super) tokens: u64,
    pub(super) grants: u64,
    pub(super) locks: u64,
    pub(super) runs: u64,
    pub(super) audit_events: u64,
    pub(super) audit_head: String,
    /// Forge trusts, removed ones included (format 4; absent before).
    #[serde(default)]
    pub(super) trusts: u64,
    /// Drift reports (format 4; absent before).
    #[serde(default)]
    pub(super) drift_reports: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FileEntry {
    pub(super) sha256: String,
    pub(super) size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct StackFile {
    pub(super) name: String,
    pub(super) production: bool,
    pub(super) lineage: Option<String>,
    pub(super) settings: StackSettings,
    pub(super) created_at: i64,
    pub(super) versions: Vec<VersionEntry>,
    pub(super) grants: Vec<GrantEntry>,
    pub(super) lock: Option<LockEntry>,
    /// Set for a deleted (archived) stack; absent before stacks could be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) archived: Option<ArchiveEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ArchiveEntry {
    pub(super) at: i64,
    pub(super) by: String,
    pub(super) reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct VersionEntry {
    pub(super) serial: u64,
    pub(super) lineage: String,
    pub(super) sha256: String,
    pub(super) size: u64,
    pub(super) author: String,
    pub(super) lock_id: Option<String>,
    pub(super) run_id: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) restored_from: Option<u64>,
    pub(super) created_at: i64,
    pub(super) file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GrantEntry {
    pub(super) id: String,
    pub(super) addresses: Vec<String>,
    pub(super) reason: String,
    pub(super) created_by: String,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) consumed_at: Option<i64>,
    pub(super) run_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LockEntry {
    pub(super) id: String,
    pub(super) operation: String,
    pub(super) owner_token: String,
    pub(super) owner: String,
    pub(super) created_at: i64,
    pub(super) info_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RunFile {
    pub(super) record: RunRecord,
    pub(super) artifacts: Vec<ArtifactEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ArtifactEntry {
    pub(super) name: String,
    /// The file holding its bytes; none for a tombstone.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) file: String,
    pub(super) sha256: String,
    pub(super) size: u64,
    /// When its bytes were purged (a terminal run's binary plan; format 5): a tombstone, which
    /// carries no bytes, only the name, hash and size it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) purged_at: Option<i64>,
}

impl ArtifactEntry {
    /// The tombstone as the store keeps it (`None` if this entry carries bytes).
    pub(super) fn tombstone(&self) -> Option<airlock_store::ArtifactInfo> {
        self.purged_at.map(|at| airlock_store::ArtifactInfo {
            name: self.name.clone(),
            sha256: self.sha256.clone(),
            len: self.size,
            purged_at: Some(at),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TokenEntry {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) role: String,
    pub(super) stacks: Vec<String>,
    pub(super) created_at: i64,
    pub(super) expires_at: Option<i64>,
    pub(super) revoked_at: Option<i64>,
    pub(super) created_by: String,
    pub(super) run_id: Option<String>,
    /// Absent in format 1 (see `upgrade_v1_tokens`).
    #[serde(default)]
    pub(super) user: String,
    #[serde(default)]
    pub(super) parent_id: Option<String>,
    /// Other stacks whose state a plan-phase token may read; absent when none (and in backups
    /// made before read stacks existed), so the format stays 4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) read_stacks: Vec<String>,
    /// The token that minted it (`tokens.minted_by`), written by every export (`null`: none).
    /// Absent (outer `None`) in backups made before the column: `Backup::load` derives it
    /// from `created_by` as migration 0019 does, and refuses one that disagrees with it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub(super) minted_by: Option<Option<String>>,
    /// Why the server revoked it itself (`Store::revoke_unsafe_mints`); absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) revoked_reason: Option<String>,
    /// The verified git ref of the forge login's job (`TokenRecord::job_ref`); absent when none
    /// (and in backups older than migration 0020).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) job_ref: Option<String>,
    /// SHA-256 of the secret, as the store keeps it: enough to restore working tokens, never
    /// enough to use one.
    pub(super) secret_sha256: String,
}

/// A field that is present, `null` or not (absent is `None` through `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The minters of a backup's tokens, checked and filled in: a token's `minted_by` is the token
/// its `created_by` names as the server wrote it (`airlock_store::minter_id`, migration
/// 0019's rule), derived when absent (older backups), and that token is in the backup; no
/// chain of minters loops; and the audit event that created it (`token.create`,
/// `token.plan_phase`), whose actor is the caller as the server wrote it, names that minter
/// too, so rewriting both `created_by` and `minted_by` means rewriting the audit chain.
/// Returns the problems (an edited backup must not hide who minted a token).
pub(super) fn resolve_minters(
    tokens: &mut [TokenEntry],
    audit: &[airlock_core::audit::AuditRecord],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut created_by_event: BTreeMap<&str, &str> = BTreeMap::new();
    // The user each creating event gave its token (events from before users name none).
    let mut user_by_event: BTreeMap<&str, &str> = BTreeMap::new();
    for e in audit {
        if e.outcome == "ok" && matches!(e.action.as_str(), "token.create" | "token.plan_phase") {
            if let Some(id) = e.detail["token"].as_str() {
                created_by_event.insert(id, e.actor.as_str());
                if let Some(user) = e.detail["user"].as_str() {
                    user_by_event.insert(id, user);
                }
            }
        }
    }
    // The verified ref each forge login gave its token (logins from before refs name none).
    let ref_by_event: BTreeMap<&str, Option<&str>> = audit
        .iter()
        .filter(|e| e.outcome == "ok" && e.action == "oidc.login")
        .filter_map(|e| {
            let id = e.detail["token"].as_str()?;
            let r = e.detail.as_object()?.get("ref")?;
            Some((id, r.as_str()))
        })
        .collect();
    let job_refs: BTreeMap<&str, Option<&str>> = tokens
        .iter()
        .map(|t| (t.id.as_str(), t.job_ref.as_deref()))
        .collect();
    for t in tokens.iter() {
        // A forge job's ref decides which pull request's job a token is (who may withdraw a
        // run, which runs a job reports as its own): it is the login's, or the minter's.
        let want = match &t.parent_id {
            Some(parent) => job_refs.get(parent.as_str()).copied(),
            None => ref_by_event.get(t.id.as_str()).copied(),
        };
        if let Some(want) = want.filter(|w| *w != t.job_ref.as_deref()) {
            problems.push(format!(
                "token {}: its job_ref {:?} is not {want:?}, the ref its forge login (or its minter) gave it; a backup cannot change which job a token is",
                t.id, t.job_ref
            ));
        }
        // Whose a token is decides whose its approvals and plans are: a backup that moved an
        // approver's second token to another user would let one person count as two.
        if let Some(user) = user_by_event.get(t.id.as_str()).filter(|u| **u != t.user) {
            problems.push(format!(
                "token {}: its user {:?} is not {user:?}, the user the audit event that created it gave it; a backup cannot change whose a token is",
                t.id, t.user
            ));
        }
        if let Some(actor) = created_by_event.get(t.id.as_str()) {
            let (by_event, by_record) = (
                airlock_store::minter_id(actor),
                airlock_store::minter_id(&t.created_by),
            );
            if by_event != by_record {
                problems.push(format!(
                    "token {}: its created_by {:?} names minter {} but the audit event that created it was made by {actor:?}; a backup cannot change who minted a token",
                    t.id,
                    t.created_by,
                    by_record.unwrap_or("none"),
                ));
            }
        }
    }
    let ids: BTreeSet<String> = tokens.iter().map(|t| t.id.clone()).collect();
    for t in tokens.iter_mut() {
        let named = airlock_store::minter_id(&t.created_by).map(str::to_owned);
        if let Some(given) = &t.minted_by {
            if *given != named {
                problems.push(format!(
                    "token {}: minted_by {} disagrees with its created_by {:?}, which names {}; a backup cannot change who minted a token",
                    t.id,
                    given.as_deref().unwrap_or("null"),
                    t.created_by,
                    named.as_deref().unwrap_or("no token")
                ));
            }
        }
        if let Some(m) = &named {
            if !ids.contains(m) || *m == t.id {
                problems.push(format!(
                    "token {}: its minter {m} (named by its created_by) is not another token of tokens.json",
                    t.id
                ));
            }
        }
        t.minted_by = Some(named);
    }
    let minter: BTreeMap<String, String> = tokens
        .iter()
        .filter_map(|t| Some((t.id.clone(), t.minted_by.clone().flatten()?)))
        .collect();
    for t in tokens.iter() {
        let mut cursor = minter.get(&t.id);
        let mut steps = 0;
        while let Some(m) = cursor {
            steps += 1;
            if steps > minter.len() {
                problems.push(format!("token {}: its chain of minters loops", t.id));
                break;
            }
            cursor = minter.get(m);
        }
    }
    problems
}

/// The tokens in an order the store can insert them: each minter before what it minted (the
/// `minted_by` foreign key), otherwise as given.
pub(super) fn minters_first(tokens: &[TokenEntry]) -> Vec<&TokenEntry> {
    let by_id: BTreeMap<&str, &TokenEntry> = tokens.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut placed = BTreeSet::new();
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        // The chain above `t`, nearest first, up to what is placed (bounded: loops are refused
        // by `resolve_minters`, and this stops at any token seen twice).
        let mut chain = vec![t];
        let mut cursor = t.minted_by.clone().flatten();
        while let Some(m) = cursor.as_deref().and_then(|m| by_id.get(m)) {
            if placed.contains(m.id.as_str()) || chain.iter().any(|c| c.id == m.id) {
                break;
            }
            chain.push(m);
            cursor = m.minted_by.clone().flatten();
        }
        for c in chain.into_iter().rev() {
            if placed.insert(c.id.as_str()) {
                out.push(c);
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UserEntry {
    pub(super) name: String,
    pub(super) created_at: i64,
    pub(super) created_by: String,
    /// Absent from backups made before users had forge logins: read as none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) forge_logins: Vec<String>,
}

impl UserEntry {
    pub(super) fn from_record(u: &UserRecord) -> UserEntry {
        UserEntry {
            name: u.name.clone(),
            created_at: u.created_at,
            created_by: u.created_by.clone(),
            forge_logins: u.forge_logins.clone(),
        }
    }

    pub(super) fn to_record(&self) -> UserRecord {
        UserRecord {
            name: self.name.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            forge_logins: self.forge_logins.clone(),
        }
    }
}

/// A server policy set as written to `policy_sets.json` (absent from backups made before
/// policy sets existed: read as none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PolicySetEntry {
    pub(super) id: String,
    pub(super) stack_glob: String,
    pub(super) version: i64,
    /// (path, Rego text), sorted by path.
    pub(super) files: Vec<(String, String)>,
    pub(super) sha256: String,
    pub(super) created_at: i64,
    pub(super) created_by: String,
    pub(super) removed_at: Option<i64>,
    pub(super) removed_by: Option<String>,
    pub(super) removed_reason: Option<String>,
}

impl PolicySetEntry {
    pub(super) fn from_record(p: &PolicySetRecord) -> PolicySetEntry {
        PolicySetEntry {
            id: p.id.clone(),
            stack_glob: p.stack_glob.clone(),
            version: p.version,
            files: p
                .files
                .iter()
                .map(|f| (f.path.clone(), f.text.clone()))
                .collect(),
            sha256: p.sha256.clone(),
            created_at: p.created_at,
            created_by: p.created_by.clone(),
            removed_at: p.removed_at,
            removed_by: p.removed_by.clone(),
            removed_reason: p.removed_reason.clone(),
        }
    }

    pub(super) fn to_record(&self) -> PolicySetRecord {
        PolicySetRecord {
            id: self.id.clone(),
            stack_glob: self.stack_glob.clone(),
            version: self.version,
            files: self
                .files
                .iter()
                .map(|(path, text)| PolicyFile {
                    path: path.clone(),
                    text: text.clone(),
                })
                .collect(),
            sha256: self.sha256.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            removed_at: self.removed_at,
            removed_by: self.removed_by.clone(),
            removed_reason: self.removed_reason.clone(),
        }
    }
}

/// A forge trust as written to `oidc_trusts.json` (format 4). Never a signing key: the
/// issuer's private keys stay out of backups, and a restored server makes a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrustEntry {
    pub(super) id: String,
    pub(super) forge: String,
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) repository: String,
    /// Absent on a trust added before trusts were pinned to ids (it matches no job).
    pub(super) repository_id: Option<String>,
    pub(super) owner_id: Option<String>,
    pub(super) git_ref: Option<String>,
    pub(super) environment: Option<String>,
    pub(super) role: String,
    pub(super) stacks: Vec<String>,
    pub(super) lifetime_ms: i64,
    pub(super) created_at: i64,
    pub(super) created_by: String,
    pub(super) removed_at: Option<i64>,
    pub(super) removed_by: Option<String>,
}

impl TrustEntry {
    pub(super) fn from_record(t: &OidcTrustRecord) -> TrustEntry {
        TrustEntry {
            id: t.id.clone(),
            forge: t.forge.clone(),
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            repository: t.repository.clone(),
            repository_id: t.repository_id.clone(),
            owner_id: t.owner_id.clone(),
            git_ref: t.git_ref.clone(),
            environment: t.environment.clone(),
            role: t.role.clone(),
            stacks: t.stacks.clone(),
            lifetime_ms: t.lifetime_ms,
            created_at: t.created_at,
            created_by: t.created_by.clone(),
            removed_at: t.removed_at,
            removed_by: t.removed_by.clone(),
        }
    }

    pub(super) fn to_record(&self) -> OidcTrustRecord {
        OidcTrustRecord {
            id: self.id.clone(),
            forge: self.forge.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            repository: self.repository.clone(),
            repository_id: self.repository_id.clone(),
            owner_id: self.owner_id.clone(),
            git_ref: self.git_ref.clone(),
            environment: self.environment.clone(),
            role: self.role.clone(),
            stacks: self.stacks.clone(),
            lifetime_ms: self.lifetime_ms,
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            removed_at: self.removed_at,
            removed_by: self.removed_by.clone(),
        }
    }
}

/// A drift report as written to `drift_reports.json` (format 4), its JSON kept as the exact
/// text the server stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DriftReportEntry {
    pub(super) id: String,
    pub(super) stack: String,
    pub(super) status: String,
    pub(super) serial: Option<u64>,
    pub(super) drifted: u64,
    pub(super) findings: u64,
    pub(super) reported_by: String,
    pub(super) created_at: i64,
    pub(super) report: String,
}

impl DriftReportEntry {
    pub(super) fn from_record(d: &DriftReportRecord) -> DriftReportEntry {
        let m = &d.meta;
        DriftReportEntry {
            id: m.id.clone(),
            stack: m.stack.clone(),
            status: m.status.clone(),
            serial: m.serial,
            drifted: m.drifted,
            findings: m.findings,
            reported_by: m.reported_by.clone(),
            created_at: m.created_at,
            report: d.report.clone(),
        }
    }

    pub(super) fn to_record(&self) -> DriftReportRecord {
        DriftReportRecord {
            meta: DriftReportMeta {
                id: self.id.clone(),
                stack: self.stack.clone(),
                status: self.status.clone(),
                serial: self.serial,
                drifted: self.drifted,
                findings: self.findings,
                reported_by: self.reported_by.clone(),
                created_at: self.created_at,
            },
            report: self.report.clone(),
        }
    }
}

/// Gives format-1 tokens what the store's migration 0003 gives stored ones (keep the two
/// alike): plan-phase and run-bound tokens get the token named in their `created_by` as
/// parent; every token belongs to its own user (its id), the first-start admin token to
/// `admin`, a derived token to its root's user; derived tokens expire no later than, and are
/// revoked with, their ancestors. Returns the users to create (`admin`, if it is used).
pub(super) fn upgrade_v1_tokens(tokens: &mut [TokenEntry]) -> Vec<UserEntry> {
    let ids: BTreeSet<String> = tokens.iter().map(|t| t.id.clone()).collect();
    for t in tokens.iter_mut() {
        let derived = t.name.starts_with("plan for ") || t.run_id.is_some();
        let named = t
            .created_by
            .strip_suffix(')')
            .and_then(|s| s.get(s.len().saturating_sub(20)..))
            .filter(|id| id.starts_with("tok_") && ids.contains(*id));
        t.parent_id = named.filter(|_| derived).map(str::to_owned);
        t.user = if t.created_by == "system" && t.name == "bootstrap-admin" && t.parent_id.is_none()
        {
            "admin".into()
        } else {
            t.id.clone()
        };
    }
    let by_id: BTreeMap<String, TokenEntry> =
        tokens.iter().map(|t| (t.id.clone(), t.clone())).collect();
    for t in tokens.iter_mut() {
        let mut cursor = t.parent_id.clone();
        let mut seen = BTreeSet::new();
        while let Some(p) = cursor.and_then(|id| by_id.get(&id)) {
            if !seen.insert(p.id.clone()) {
                break;
            }
            t.user = p.user.clone();
            t.expires_at = match (t.expires_at, p.expires_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if t.revoked_at.is_none() {
                t.revoked_at = p.revoked_at;
            }
            cursor = p.parent_id.clone();
        }
    }
    tokens
        .iter()
        .filter(|t| t.user == "admin")
        .map(|t| t.created_at)
        .min()
        .map(|created_at| UserEntry {
            name: "admin".into(),
            created_at,
            created_by: "migration".into(),
            forge_logins: Vec::new(),
        })
        .into_iter()
        .collect()
}

impl VersionEntry {
    pub(super) fn from_meta(v: &VersionMeta, file: String) -> VersionEntry {
        VersionEntry {
            serial: v.serial,
            lineage: v.lineage.clone(),
            sha256: v.sha256.clone(),
            size: v.size,
            author: v.author.clone(),
            lock_id: v.lock_id.clone(),
            run_id: v.run_id.clone(),
            reason: v.reason.clone(),
            restored_from: v.restored_from,
            created_at: v.created_at,
            file,
        }
    }

    pub(super) fn to_meta(&self, stack: &str) -> VersionMeta {
        VersionMeta {
            stack: stack.to_owned(),
            serial: self.serial,
            lineage: self.lineage.clone(),
            sha256: self.sha256.clone(),
            size: self.size,
            author: self.author.clone(),
            lock_id: self.lock_id.clone(),
            run_id: self.run_id.clone(),
            reason: self.reason.clone(),
            restored_from: self.restored_from,
            created_at: self.created_at,
        }
    }
}

impl GrantEntry {
    pub(super) fn from_record(g: &GrantRecord) -> GrantEntry {
        GrantEntry {
            id: g.id.clone(),
            addresses: g.addresses.clone(),
            reason: g.reason.clone(),
            created_by: g.created_by.clone(),
            created_at: g.created_at,
            expires_at: g.expires_at,
            consumed_at: g.consumed_at,
            run_id: g.run_id.clone(),
        }
    }

    pub(super) fn to_record(&self, stack: &str) -> GrantRecord {
        GrantRecord {
            id: self.id.clone(),
            stack: stack.to_owned(),
            addresses: self.addresses.clone(),
            reason: self.reason.clone(),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            consumed_at: self.consumed_at,
            run_id: self.run_id.clone(),
        }
    }
}

impl TokenEntry {
    pub(super) fn from_record(t: &TokenRecord, hash: &[u8; 32]) -> TokenEntry {
        TokenEntry {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role.as_str().to_owned(),
            stacks: t.stacks.clone(),
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            created_by: t.created_by.clone(),
            run_id: t.run_id.clone(),
            user: t.user.clone(),
            parent_id: t.parent_id.clone(),
            read_stacks: t.read_stacks.clone(),
            minted_by: Some(t.minted_by.clone()),
            revoked_reason: t.revoked_reason.clone(),
            job_ref: t.job_ref.clone(),
            secret_sha256: hex(hash),
        }
    }

    pub(super) fn to_record(&self) -> anyhow::Result<(TokenRecord, [u8; 32])> {
        let role = self
            .role
            .parse()
            .map_err(|e: String| anyhow::anyhow!("token {}: {e}", self.id))?;
        let hash = unhex32(&self.secret_sha256)
            .with_context(|| format!("token {}: secret_sha256 is not 64 hex digits", self.id))?;
        Ok((
            TokenRecord {
                id: self.id.clone(),
                name: self.name.clone(),
                role,
                stacks: self.stacks.clone(),
                created_at: self.created_at,
                expires_at: self.expires_at,
                revoked_at: self.revoked_at,
                created_by: self.created_by.clone(),
                run_id: self.run_id.clone(),
                user: self.user.clone(),
                parent_id: self.parent_id.clone(),
                read_stacks: self.read_stacks.clone(),
                minted_by: self.minted_by.clone().flatten(),
                job_ref: self.job_ref.clone(),
                revoked_reason: self.revoked_reason.clone(),
            },
            hash,
        ))
    }
}

impl StackFile {
    pub(super) fn record(&self) -> StackRecord {
        StackRecord {
            name: self.name.clone(),
            production: self.production,
            lineage: self.lineage.clone(),
            settings: self.settings.clone(),
            created_at: self.created_at,
            archived: self.archived.as_ref().map(|a| Archive {
                at: a.at,
                by: a.by.clone(),
                reason: a.reason.clone(),
            }),
        }
    }
}
