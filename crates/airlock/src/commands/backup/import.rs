//! `backup import`: replays a checked backup into an empty store and compares the result.

use std::collections::BTreeMap;

use airlock_core::audit::{verify_chain, GENESIS};
use airlock_server::oidc;
use airlock_store::{
    blob, LockRecord, RunRecord, StackRecord, StoreError, StoreImport, VersionMeta,
};
use anyhow::{bail, Context};

use super::export::all_audit;
use super::format::{
    minters_first, DriftReportEntry, GrantEntry, PolicySetEntry, TokenEntry, TrustEntry, UserEntry,
};
use super::hex;
use super::verify::Backup;

pub(super) fn ensure_empty(store: &dyn StoreImport) -> anyhow::Result<()> {
    let stacks = store.list_stacks()?.len();
    let tokens = store.token_count()?;
    let events = store.audit_events(0, 1)?.len();
    if stacks + events > 0 || tokens > 0 {
        bail!(
            "refusing to import into a store that is not empty ({stacks} stack(s), {tokens} token(s), audit events: {}); import restores a whole installation into a fresh store: point --data-dir at a new directory or --database-url at a new database, and run the import before starting any server (a server mints a bootstrap token on an empty store)",
            if events > 0 { "yes" } else { "none" }
        );
    }
    Ok(())
}

/// Inserts everything in the backup into `store` verbatim, then marks the forge ID tokens its
/// logins used as used (`mark_used_forge_tokens`); returns how many it marked.
pub(super) fn replay(store: &dyn StoreImport, b: &Backup) -> anyhow::Result<usize> {
    for u in &b.users {
        store
            .import_user(&u.to_record())
            .with_context(|| format!("importing user {}", u.name))?;
    }
    for t in &b.trusts {
        store
            .import_oidc_trust(&t.to_record())
            .with_context(|| format!("importing trust {}", t.id))?;
    }
    for p in &b.policy_sets {
        store
            .import_policy_set(&p.to_record())
            .with_context(|| format!("importing policy set {}", p.id))?;
    }
    for t in minters_first(&b.tokens) {
        let (record, hash) = t.to_record()?;
        store
            .import_token(&record, &hash)
            .with_context(|| format!("importing token {}", t.id))?;
    }
    for s in &b.stacks {
        store
            .import_stack(&s.record())
            .with_context(|| format!("importing stack {}", s.name))?;
        for v in &s.versions {
            let bytes = b.read(&v.file)?;
            store
                .import_version(&v.to_meta(&s.name), &bytes)
                .with_context(|| format!("importing {} serial {}", s.name, v.serial))?;
        }
        for g in &s.grants {
            store
                .import_grant(&g.to_record(&s.name))
                .with_context(|| format!("importing grant {} of {}", g.id, s.name))?;
        }
        if let Some(l) = &s.lock {
            let lock = LockRecord {
                id: l.id.clone(),
                info: b.read(&l.info_file)?,
                operation: l.operation.clone(),
                owner_token: l.owner_token.clone(),
                owner: l.owner.clone(),
                created_at: l.created_at,
            };
            store
                .import_lock(&s.name, &lock)
                .with_context(|| format!("importing the lock of {}", s.name))?;
        }
    }
    for d in &b.drift_reports {
        store
            .import_drift_report(&d.to_record())
            .with_context(|| format!("importing drift report {}", d.id))?;
    }
    for r in &b.runs {
        let mut artifacts = Vec::new();
        let mut tombstones = Vec::new();
        for a in &r.artifacts {
            match a.tombstone() {
                Some(t) => tombstones.push(t),
                None => artifacts.push((a.name.as_str(), b.read(&a.file)?)),
            }
        }
        let refs: Vec<(&str, &[u8])> = artifacts.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        // A terminal run's binary plan with its bytes (an older backup) is stored as a
        // tombstone: the store purges it.
        store
            .import_run(&r.record, &refs, &tombstones)
            .with_context(|| format!("importing run {}", r.record.id))?;
    }
    for r in &b.audit {
        store
            .import_audit(r)
            .with_context(|| format!("importing audit event {}", r.seq))?;
    }
    mark_used_forge_tokens(store, &b.audit)
}

/// A forge ID token logs in once (`forge_token_uses`), but those records are not in backups:
/// they are rebuilt from the verified audit, whose `oidc.login` events name the token each login
/// spent, so a token that logged in before the backup and could still be accepted does not log
/// in again after the restore. Records that the server would already have pruned are skipped.
fn mark_used_forge_tokens(
    store: &dyn StoreImport,
    audit: &[airlock_core::audit::AuditRecord],
) -> anyhow::Result<usize> {
    let prune_before = airlock_store::now_ms() - oidc::USED_TOKEN_KEPT_MS;
    let mut marked = 0;
    for t in audit.iter().filter_map(oidc::UsedForgeToken::of_event) {
        if t.exp_ms < prune_before {
            continue;
        }
        match store.use_forge_token(&t.issuer, &t.jti, t.exp_ms, prune_before) {
            Ok(()) => marked += 1,
            // Named by two events (it cannot log in twice): it is marked either way.
            Err(StoreError::Conflict(_)) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("marking forge ID token {} of {} used", t.jti, t.issuer)
                })
            }
        }
    }
    Ok(marked)
}

/// Differences between what `store` holds and the backup (empty: equal). Version bytes are
/// compared through their hashes, after the store re-hashed every version it holds.
pub(super) fn compare(store: &dyn StoreImport, b: &Backup) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut tokens: Vec<TokenEntry> = store
        .tokens_with_hashes()?
        .iter()
        .map(|(t, h)| TokenEntry::from_record(t, h))
        .collect();
    let mut want_tokens = b.tokens.clone();
    tokens.sort_by(|x, y| x.id.cmp(&y.id));
    want_tokens.sort_by(|x, y| x.id.cmp(&y.id));
    if tokens != want_tokens {
        problems.push(format!(
            "tokens differ ({} stored, {} in the backup)",
            tokens.len(),
            want_tokens.len()
        ));
    }
    let users: Vec<UserEntry> = store
        .list_users()?
        .iter()
        .map(UserEntry::from_record)
        .collect();
    let mut want_users = b.users.clone();
    want_users.sort_by(|x, y| x.name.cmp(&y.name));
    if users != want_users {
        problems.push(format!(
            "users differ ({} stored, {} in the backup)",
            users.len(),
            want_users.len()
        ));
    }
    let sets: Vec<PolicySetEntry> = store
        .policy_sets()?
        .iter()
        .map(PolicySetEntry::from_record)
        .collect();
    let mut want_sets = b.policy_sets.clone();
    want_sets.sort_by(|x, y| {
        (x.created_at, &x.stack_glob, x.version).cmp(&(y.created_at, &y.stack_glob, y.version))
    });
    if sets != want_sets {
        problems.push(format!(
            "server policy sets differ ({} stored, {} in the backup)",
            sets.len(),
            want_sets.len()
        ));
    }
    // Both sides sorted here: the engines' text collations may order equal times differently.
    let mut trusts: Vec<TrustEntry> = store
        .oidc_trusts()?
        .iter()
        .map(TrustEntry::from_record)
        .collect();
    let mut want_trusts = b.trusts.clone();
    trusts.sort_by(|x, y| x.id.cmp(&y.id));
    want_trusts.sort_by(|x, y| x.id.cmp(&y.id));
    if trusts != want_trusts {
        problems.push(format!(
            "trusts differ ({} stored, {} in the backup)",
            trusts.len(),
            want_trusts.len()
        ));
    }
    let mut drift: Vec<DriftReportEntry> = store
        .all_drift_reports()?
        .iter()
        .map(DriftReportEntry::from_record)
        .collect();
    let mut want_drift = b.drift_reports.clone();
    drift.sort_by(|x, y| x.id.cmp(&y.id));
    want_drift.sort_by(|x, y| x.id.cmp(&y.id));
    if drift != want_drift {
        problems.push(format!(
            "drift reports differ ({} stored, {} in the backup)",
            drift.len(),
            want_drift.len()
        ));
    }
    let stored: BTreeMap<String, StackRecord> = store
        .list_stacks()?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    if stored.len() != b.stacks.len() {
        problems.push(format!(
            "{} stack(s) stored, {} in the backup",
            stored.len(),
            b.stacks.len()
        ));
    }
    for s in &b.stacks {
        let Some(rec) = stored.get(&s.name) else {
            problems.push(format!("stack {} is missing", s.name));
            continue;
        };
        if *rec != s.record() {
            problems.push(format!("stack {}: record differs", s.name));
        }
        let versions = store.versions(&s.name)?;
        let want: Vec<VersionMeta> = s.versions.iter().map(|v| v.to_meta(&s.name)).collect();
        if versions != want {
            problems.push(format!(
                "stack {}: versions differ ({} stored, {} in the backup)",
                s.name,
                versions.len(),
                want.len()
            ));
        }
        let mut grants: Vec<GrantEntry> = store
            .grants(&s.name)?
            .iter()
            .map(GrantEntry::from_record)
            .collect();
        let mut want_grants = s.grants.clone();
        grants.sort_by(|x, y| x.id.cmp(&y.id));
        want_grants.sort_by(|x, y| x.id.cmp(&y.id));
        if grants != want_grants {
            problems.push(format!("stack {}: grants differ", s.name));
        }
        let lock = store.current_lock(&s.name)?;
        let same_lock = match (&lock, &s.lock) {
            (None, None) => true,
            (Some(l), Some(w)) => {
                l.id == w.id
                    && l.operation == w.operation
                    && l.owner_token == w.owner_token
                    && l.owner == w.owner
                    && l.created_at == w.created_at
                    && l.info == b.read(&w.info_file)?
            }
            _ => false,
        };
        if !same_lock {
            problems.push(format!("stack {}: lock differs", s.name));
        }
    }
    let mut runs = store.runs(None, u32::MAX)?;
    runs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    let want_runs: Vec<&RunRecord> = b.runs.iter().map(|r| &r.record).collect();
    if runs.iter().collect::<Vec<_>>() != want_runs {
        problems.push(format!(
            "runs differ ({} stored, {} in the backup)",
            runs.len(),
            want_runs.len()
        ));
    }
    for r in &b.runs {
        let names = store.run_artifact_names(&r.record.id)?;
        let want: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
        if names.iter().map(String::as_str).collect::<Vec<_>>() != want {
            problems.push(format!("run {}: artifact names differ", r.record.id));
            continue;
        }
        let infos = store.run_artifact_infos(&r.record.id)?;
        for a in &r.artifacts {
            let info = infos.iter().find(|i| i.name == a.name);
            let purged = info.is_some_and(|i| i.purged_at.is_some());
            let same = match (a.purged_at, purged) {
                // A tombstone is stored as it was.
                (Some(_), _) => info == a.tombstone().as_ref(),
                // A terminal run's binary plan from an older backup: purged on import.
                (None, true) => info.is_some_and(|i| {
                    r.record.status.is_terminal()
                        && (i.sha256.as_str(), i.len) == (a.sha256.as_str(), a.size)
                }),
                (None, false) => {
                    let stored = store.run_artifact(&r.record.id, &a.name)?;
                    stored.as_deref().map(|d| hex(&blob::sha256(d))) == Some(a.sha256.clone())
                }
            };
            if !same {
                problems.push(format!(
                    "run {} artifact {}: content differs",
                    r.record.id, a.name
                ));
            }
        }
    }
    let audit = all_audit(store)?;
    if audit != b.audit {
        problems.push(format!(
            "audit records differ ({} stored, {} in the backup)",
            audit.len(),
            b.audit.len()
        ));
    }
    if let Err((seq, why)) = verify_chain(&audit) {
        problems.push(format!("stored audit chain broken at event {seq}: {why}"));
    }
    let head = audit
        .last()
        .map_or_else(|| GENESIS.to_owned(), |r| r.hash.clone());
    if head != b.manifest.summary.audit_head {
        problems.push(format!(
            "stored audit head {head} differs from the backup's {}",
            b.manifest.summary.audit_head
        ));
    }
    let report = store.verify(None)?;
    for f in report.failures {
        problems.push(format!("stored version does not re-hash: {f}"));
    }
    Ok(problems)
}
