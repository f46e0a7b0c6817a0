//! `backup export`: writes every store record as files and the manifest last.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use airlock_core::audit::{AuditRecord, GENESIS};
use airlock_store::{blob, now_ms, private, StoreImport};
use anyhow::{bail, Context};
use serde::Serialize;

use super::format::{
    ArchiveEntry, ArtifactEntry, DriftReportEntry, FileEntry, GrantEntry, LockEntry, Manifest,
    PolicySetEntry, RunFile, StackFile, Summary, TokenEntry, TrustEntry, UserEntry, VersionEntry,
};
use super::{hex, FORMAT};

/// Writes files under the backup directory and remembers their hashes for the manifest.
pub(super) struct Writer {
    pub(super) root: PathBuf,
    pub(super) files: BTreeMap<String, FileEntry>,
}

impl Writer {
    pub(super) fn put(&mut self, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            private::create_private_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // A backup holds the full state, secrets included: owner-only, whatever the umask.
        let mut f = private::create_private_file(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        self.files.insert(
            rel.to_owned(),
            FileEntry {
                sha256: hex(&blob::sha256(bytes)),
                size: bytes.len() as u64,
            },
        );
        Ok(())
    }

    pub(super) fn put_json<T: Serialize>(&mut self, rel: &str, value: &T) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value)?;
        bytes.push(b'\n');
        self.put(rel, &bytes)
    }
}

/// The whole audit log, read in one snapshot (see `Store::audit_walk`).
pub(super) fn all_audit(store: &dyn StoreImport) -> anyhow::Result<Vec<AuditRecord>> {
    let mut out: Vec<AuditRecord> = Vec::new();
    store.audit_walk(&mut |page| {
        out.extend(page);
        Ok(true)
    })?;
    Ok(out)
}

pub(super) fn export(store: &dyn StoreImport, dir: &Path) -> anyhow::Result<Summary> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} is not empty; export into a new directory so files of two backups never mix",
                dir.display()
            );
        }
    }
    private::create_private_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut w = Writer {
        root: dir.to_owned(),
        files: BTreeMap::new(),
    };
    let mut summary = Summary::default();

    // Read before the records they name (history is append-only): a trust before the users
    // (its tokens' user). Forge trusts, removed ones too; never the issuer's signing keys.
    // Drift reports are read after the audit (see there).
    let trusts: Vec<TrustEntry> = store
        .oidc_trusts()?
        .iter()
        .map(TrustEntry::from_record)
        .collect();
    summary.trusts = trusts.len() as u64;
    w.put_json("oidc_trusts.json", &trusts)?;

    let tokens: Vec<TokenEntry> = store
        .tokens_with_hashes()?
        .iter()
        .map(|(t, h)| TokenEntry::from_record(t, h))
        .collect();
    summary.tokens = tokens.len() as u64;
    w.put_json("tokens.json", &tokens)?;
    let users: Vec<UserEntry> = store
        .list_users()?
        .iter()
        .map(UserEntry::from_record)
        .collect();
    summary.users = users.len() as u64;
    w.put_json("users.json", &users)?;
    let policy_sets: Vec<PolicySetEntry> = store
        .policy_sets()?
        .iter()
        .map(PolicySetEntry::from_record)
        .collect();
    w.put_json("policy_sets.json", &policy_sets)?;

    let mut serials: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (i, s) in store.list_stacks()?.iter().enumerate() {
        let base = format!("stacks/{:04}", i + 1);
        let mut versions = Vec::new();
        for v in store.versions(&s.name)? {
            let bytes = store.version_bytes(&s.name, v.serial)?;
            let file = format!("{base}/versions/{}.tfstate", v.serial);
            w.put(&file, &bytes)?;
            versions.push(VersionEntry::from_meta(&v, file));
        }
        let grants: Vec<GrantEntry> = store
            .grants(&s.name)?
            .iter()
            .map(GrantEntry::from_record)
            .collect();
        let lock = match store.current_lock(&s.name)? {
            Some(l) => {
                let info_file = format!("{base}/lock-info.json");
                w.put(&info_file, &l.info)?;
                Some(LockEntry {
                    id: l.id,
                    operation: l.operation,
                    owner_token: l.owner_token,
                    owner: l.owner,
                    created_at: l.created_at,
                    info_file,
                })
            }
            None => None,
        };
        serials.insert(s.name.clone(), versions.iter().map(|v| v.serial).collect());
        summary.stacks += 1;
        summary.versions += versions.len() as u64;
        summary.grants += grants.len() as u64;
        summary.locks += u64::from(lock.is_some());
        let file = StackFile {
            name: s.name.clone(),
            production: s.production,
            lineage: s.lineage.clone(),
            settings: s.settings.clone(),
            created_at: s.created_at,
            versions,
            grants,
            lock,
            archived: s.archived.as_ref().map(|a| ArchiveEntry {
                at: a.at,
                by: a.by.clone(),
                reason: a.reason.clone(),
            }),
        };
        w.put_json(&format!("{base}/stack.json"), &file)?;
    }

    // Governed runs, oldest first (a run names its stack, so stacks come first on import).
    let mut runs = store.runs(None, u32::MAX)?;
    runs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    for (i, mut run) in runs.into_iter().enumerate() {
        let base = format!("runs/{:04}", i + 1);
        let mut artifacts = Vec::new();
        for (j, mut info) in store.run_artifact_infos(&run.id)?.into_iter().enumerate() {
            // A terminal run's binary plan is a tombstone even if an older server ended the
            // run and kept the bytes (the next start purges them; verify refuses them).
            if info.purged_at.is_none() && run.status.purges(&info.name) {
                info.purged_at = Some(now_ms());
            }
            let bytes = match info.purged_at {
                Some(_) => None,
                None => match store.run_artifact(&run.id, &info.name) {
                    // Purged since it was listed (the run ended meanwhile): its tombstone now.
                    Err(airlock_store::StoreError::Purged(_)) => {
                        info = store
                            .run_artifact_infos(&run.id)?
                            .into_iter()
                            .find(|i| i.name == info.name)
                            .with_context(|| {
                                format!("run {} artifact {} vanished", run.id, info.name)
                            })?;
                        None
                    }
                    read => Some(read?.with_context(|| {
                        format!("run {} artifact {} vanished", run.id, info.name)
                    })?),
                },
            };
            let Some(bytes) = bytes else {
                artifacts.push(ArtifactEntry {
                    name: info.name,
                    file: String::new(),
                    sha256: info.sha256,
                    size: info.len,
                    purged_at: info.purged_at,
                });
                continue;
            };
            let file = format!("{base}/artifacts/{:02}.bin", j + 1);
            w.put(&file, &bytes)?;
            artifacts.push(ArtifactEntry {
                name: info.name,
                file,
                sha256: hex(&blob::sha256(&bytes)),
                size: bytes.len() as u64,
                purged_at: None,
            });
        }
        if artifacts.iter().any(|a| a.purged_at.is_some()) && !run.status.is_terminal() {
            // The run ended (and its plan was purged, in one transaction) after the listing:
            // its record as of the purge, so the backup never shows an open run's tombstone.
            run = store
                .run(&run.id)?
                .with_context(|| format!("run {} vanished", run.id))?;
        }
        w.put_json(
            &format!("{base}/run.json"),
            &RunFile {
                record: run,
                artifacts,
            },
        )?;
        summary.runs += 1;
    }

    // Last: the chain then covers at least every write exported above. The export time is
    // taken just before it is read, so every event before it is in the backup (the server
    // checks that when this backup's verification is recorded).
    let created_at = airlock_core::time::rfc3339(airlock_store::now_ms());
    let audit = all_audit(store)?;
    let mut lines = Vec::new();
    for r in &audit {
        serde_json::to_writer(&mut lines, r)?;
        lines.push(b'\n');
    }
    w.put("audit.jsonl", &lines)?;
    summary.audit_events = audit.len() as u64;

    // Drift reports after the audit: exactly those its `drift.report` events recorded about a
    // state this backup holds (an exported stack; no serial, or an exported one). A report
    // recorded while the export ran is left out by the same rule `backup verify` applies,
    // so verify can demand every other recorded report (none left out, none re-timed).
    let recorded: BTreeSet<&str> = audit
        .iter()
        .filter(|r| r.outcome == "ok" && r.action == "drift.report")
        .filter_map(|r| r.detail.get("id").and_then(serde_json::Value::as_str))
        .collect();
    let drift: Vec<DriftReportEntry> = store
        .all_drift_reports()?
        .iter()
        .map(DriftReportEntry::from_record)
        .filter(|d| recorded.contains(d.id.as_str()))
        .filter(|d| holds_state(&serials, &d.stack, d.serial))
        .collect();
    summary.drift_reports = drift.len() as u64;
    w.put_json("drift_reports.json", &drift)?;
    summary.audit_head = audit
        .last()
        .map_or_else(|| GENESIS.to_owned(), |r| r.hash.clone());

    let manifest = Manifest {
        format: FORMAT.into(),
        created_at,
        source_engine: store.engine().into(),
        summary: summary.clone(),
        files: std::mem::take(&mut w.files),
    };
    // Written last, under a temporary name first: a directory with a manifest is complete.
    let mut bytes = serde_json::to_vec_pretty(&manifest)?;
    bytes.push(b'\n');
    w.put("manifest.json.tmp", &bytes)?;
    std::fs::rename(dir.join("manifest.json.tmp"), dir.join("manifest.json"))
        .context("renaming the manifest into place")?;
    Ok(summary)
}

/// Whether a backup with these stacks' serials holds the state a drift report of `stack`
/// checked (`serial`, or none for a stack that had no state): the one rule export and verify
/// share for which recorded reports a backup must contain.
pub(super) fn holds_state(
    serials: &BTreeMap<String, BTreeSet<u64>>,
    stack: &str,
    serial: Option<u64>,
) -> bool {
    serials
        .get(stack)
        .is_some_and(|held| serial.is_none_or(|s| held.contains(&s)))
}
