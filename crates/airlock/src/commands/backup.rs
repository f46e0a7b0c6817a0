//! `airlock backup export|verify|import`: full, independently checkable backups.
//!
//! Export and import work on the database directly (`--data-dir` / `--database-url`, like
//! `airlock server`), not through the HTTP API: a disaster-recovery tool has to work when no
//! server runs, and a backup that restores working tokens needs their secret hashes, which the
//! API never serves. Verify needs neither a server nor a database.
//!
//! A backup directory (format `airlock-backup/2`) holds plain files:
//!
//! ```text
//! manifest.json                        format, time, source engine, counts, audit head, and
//!                                      the SHA-256 and size of every other file
//! users.json                           every user (format 2)
//! tokens.json                          every token with the SHA-256 of its secret (no secrets),
//!                                      its user and its parent token (format 2)
//! audit.jsonl                          the audit chain, one record per line, in order
//! stacks/NNNN/stack.json               the stack, its version metadata, grants and lock
//! stacks/NNNN/versions/SERIAL.tfstate  each version's exact bytes
//! stacks/NNNN/lock-info.json           the held lock's info body, verbatim (if locked)
//! runs/NNNN/run.json                   a governed run's record and its artifact list
//! runs/NNNN/artifacts/NN.bin           each artifact's exact bytes (plan, plan JSON, logs)
//! ```
//!
//! Format 1 (before users) is still read: its tokens get users and parents exactly as the
//! store's migration 0003 gives them (see `upgrade_v1_tokens`), after the files are checked.
//!
//! History is append-only, so an export taken while servers run is consistent per stack; the
//! audit chain is read last and covers at least everything exported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use airlock_core::audit::{verify_chain, AuditRecord, GENESIS};
use airlock_store::{
    blob, private, Archive, GrantRecord, LockRecord, RunRecord, SqliteStore, StackRecord,
    StackSettings, StoreImport, TokenRecord, UserRecord, VersionMeta,
};
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::migrate::{open_store, Missing};
use crate::cli::{BackupCommand, OutputFormat};

const FORMAT: &str = "airlock-backup/2";
/// The format before users; read and upgraded, never written.
const FORMAT_V1: &str = "airlock-backup/1";
const AUDIT_PAGE: u32 = 1000;

pub fn run(cmd: BackupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BackupCommand::Export { dir, db, format } => {
            let store = open_store(&db, Missing::Refuse)?;
            let summary = export(store.as_ref(), &dir)?;
            let manifest_sha = hex(&blob::sha256(&std::fs::read(dir.join("manifest.json"))?));
            print(
                format,
                &json!({"dir": dir, "summary": summary, "manifest_sha256": manifest_sha}),
                || {
                    format!(
                    "exported {} stack(s), {} version(s), {} user(s), {} token(s), {} grant(s), {} lock(s), {} run(s), {} audit event(s) to {}\nmanifest.json SHA-256: {manifest_sha} (record it elsewhere to detect a replaced manifest)\n",
                    summary.stacks, summary.versions, summary.users, summary.tokens, summary.grants, summary.locks, summary.runs, summary.audit_events, dir.display()
                )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify {
            dir,
            manifest_sha256,
            format,
        } => {
            let (backup, mut problems) = Backup::load(&dir)?;
            if let Some(want) = manifest_sha256 {
                problems.extend(check_manifest_hash(&dir, &want)?);
            }
            if problems.is_empty() {
                problems = replay_into_scratch(&backup)?;
            }
            let ok = problems.is_empty();
            print(
                format,
                &json!({"ok": ok, "summary": backup.manifest.summary, "problems": problems}),
                || {
                    let s = &backup.manifest.summary;
                    if ok {
                        format!(
                        "backup OK: {} stack(s), {} version(s), {} user(s), {} token(s), {} grant(s), {} lock(s), {} run(s), {} audit event(s), audit head {}; every file matches the manifest, every version its SHA-256, the audit chain verifies, and a replay into a scratch SQLite store compares equal\n",
                        s.stacks, s.versions, s.users, s.tokens, s.grants, s.locks, s.runs, s.audit_events, s.audit_head
                    )
                    } else {
                        let mut out = format!("backup BROKEN: {} problem(s)\n", problems.len());
                        for p in &problems {
                            out.push_str(&format!("  {p}\n"));
                        }
                        out
                    }
                },
            );
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        BackupCommand::Import { dir, db, format } => {
            let (backup, problems) = Backup::load(&dir)?;
            if !problems.is_empty() {
                bail!(
                    "refusing to import a backup that does not verify ({} problem(s)), first: {}",
                    problems.len(),
                    problems[0]
                );
            }
            let store = open_store(&db, Missing::Create)?;
            ensure_empty(store.as_ref())?;
            replay(store.as_ref(), &backup).context(
                "import failed part-way; the target store is now partly filled: drop it (or use a fresh data dir) before trying again",
            )?;
            let problems = compare(store.as_ref(), &backup)?;
            if !problems.is_empty() {
                bail!(
                    "imported, but the store does not compare equal to the backup: {}",
                    problems.join("; ")
                );
            }
            let s = &backup.manifest.summary;
            print(
                format,
                &json!({"ok": true, "engine": store.engine(), "summary": s}),
                || {
                    format!(
                    "imported {} stack(s), {} version(s), {} user(s), {} token(s), {} grant(s), {} lock(s), {} run(s), {} audit event(s) into the {} store; it compares equal to the backup (audit head {})\n",
                    s.stacks, s.versions, s.users, s.tokens, s.grants, s.locks, s.runs, s.audit_events, store.engine(), s.audit_head
                )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print(format: OutputFormat, value: &serde_json::Value, text: impl FnOnce() -> String) {
    match format {
        OutputFormat::Json => crate::out(&format!(
            "{}\n",
            serde_json::to_string_pretty(value).unwrap_or_default()
        )),
        OutputFormat::Text => crate::out(&text()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

// ---- the format ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Manifest {
    format: String,
    created_at: String,
    source_engine: String,
    summary: Summary,
    /// Relative path (always `/`-separated) -> hash and size.
    files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
struct Summary {
    stacks: u64,
    versions: u64,
    /// Absent in format 1.
    #[serde(default)]
    users: u64,
    tokens: u64,
    grants: u64,
    locks: u64,
    runs: u64,
    audit_events: u64,
    audit_head: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileEntry {
    sha256: String,
    size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StackFile {
    name: String,
    production: bool,
    lineage: Option<String>,
    settings: StackSettings,
    created_at: i64,
    versions: Vec<VersionEntry>,
    grants: Vec<GrantEntry>,
    lock: Option<LockEntry>,
    /// Set for a deleted (archived) stack; absent before stacks could be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    archived: Option<ArchiveEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ArchiveEntry {
    at: i64,
    by: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VersionEntry {
    serial: u64,
    lineage: String,
    sha256: String,
    size: u64,
    author: String,
    lock_id: Option<String>,
    run_id: Option<String>,
    reason: Option<String>,
    restored_from: Option<u64>,
    created_at: i64,
    file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct GrantEntry {
    id: String,
    addresses: Vec<String>,
    reason: String,
    created_by: String,
    created_at: i64,
    expires_at: i64,
    consumed_at: Option<i64>,
    run_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LockEntry {
    id: String,
    operation: String,
    owner_token: String,
    owner: String,
    created_at: i64,
    info_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunFile {
    record: RunRecord,
    artifacts: Vec<ArtifactEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ArtifactEntry {
    name: String,
    file: String,
    sha256: String,
    size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenEntry {
    id: String,
    name: String,
    role: String,
    stacks: Vec<String>,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    created_by: String,
    run_id: Option<String>,
    /// Absent in format 1 (see `upgrade_v1_tokens`).
    #[serde(default)]
    user: String,
    #[serde(default)]
    parent_id: Option<String>,
    /// SHA-256 of the secret, as the store keeps it: enough to restore working tokens, never
    /// enough to use one.
    secret_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct UserEntry {
    name: String,
    created_at: i64,
    created_by: String,
}

impl UserEntry {
    fn from_record(u: &UserRecord) -> UserEntry {
        UserEntry {
            name: u.name.clone(),
            created_at: u.created_at,
            created_by: u.created_by.clone(),
        }
    }

    fn to_record(&self) -> UserRecord {
        UserRecord {
            name: self.name.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
        }
    }
}

/// Gives format-1 tokens what the store's migration 0003 gives stored ones (keep the two
/// alike): plan-phase and run-bound tokens get the token named in their `created_by` as
/// parent; every token belongs to its own user (its id), the first-start admin token to
/// `admin`, a derived token to its root's user; derived tokens expire no later than, and are
/// revoked with, their ancestors. Returns the users to create (`admin`, if it is used).
fn upgrade_v1_tokens(tokens: &mut [TokenEntry]) -> Vec<UserEntry> {
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
        })
        .into_iter()
        .collect()
}

impl VersionEntry {
    fn from_meta(v: &VersionMeta, file: String) -> VersionEntry {
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

    fn to_meta(&self, stack: &str) -> VersionMeta {
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
    fn from_record(g: &GrantRecord) -> GrantEntry {
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

    fn to_record(&self, stack: &str) -> GrantRecord {
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
    fn from_record(t: &TokenRecord, hash: &[u8; 32]) -> TokenEntry {
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
            secret_sha256: hex(hash),
        }
    }

    fn to_record(&self) -> anyhow::Result<(TokenRecord, [u8; 32])> {
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
            },
            hash,
        ))
    }
}

impl StackFile {
    fn record(&self) -> StackRecord {
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

// ---- export ----

/// Writes files under the backup directory and remembers their hashes for the manifest.
struct Writer {
    root: PathBuf,
    files: BTreeMap<String, FileEntry>,
}

impl Writer {
    fn put(&mut self, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
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

    fn put_json<T: Serialize>(&mut self, rel: &str, value: &T) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(value)?;
        bytes.push(b'\n');
        self.put(rel, &bytes)
    }
}

fn all_audit(store: &dyn StoreImport) -> anyhow::Result<Vec<AuditRecord>> {
    let mut out: Vec<AuditRecord> = Vec::new();
    loop {
        let after = out.last().map_or(0, |r| r.seq);
        let page = store.audit_events(after, AUDIT_PAGE)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

fn export(store: &dyn StoreImport, dir: &Path) -> anyhow::Result<Summary> {
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
    for (i, run) in runs.into_iter().enumerate() {
        let base = format!("runs/{:04}", i + 1);
        let mut artifacts = Vec::new();
        for (j, name) in store.run_artifact_names(&run.id)?.into_iter().enumerate() {
            let bytes = store
                .run_artifact(&run.id, &name)?
                .with_context(|| format!("run {} artifact {name} vanished", run.id))?;
            let file = format!("{base}/artifacts/{:02}.bin", j + 1);
            w.put(&file, &bytes)?;
            artifacts.push(ArtifactEntry {
                name,
                file,
                sha256: hex(&blob::sha256(&bytes)),
                size: bytes.len() as u64,
            });
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

    // Last: the chain then covers at least every write exported above.
    let audit = all_audit(store)?;
    let mut lines = Vec::new();
    for r in &audit {
        serde_json::to_writer(&mut lines, r)?;
        lines.push(b'\n');
    }
    w.put("audit.jsonl", &lines)?;
    summary.audit_events = audit.len() as u64;
    summary.audit_head = audit
        .last()
        .map_or_else(|| GENESIS.to_owned(), |r| r.hash.clone());

    let manifest = Manifest {
        format: FORMAT.into(),
        created_at: airlock_core::time::rfc3339(airlock_store::now_ms()),
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

// ---- load and check ----

/// A backup read back and checked against itself. Version bytes stay on disk.
struct Backup {
    root: PathBuf,
    manifest: Manifest,
    users: Vec<UserEntry>,
    tokens: Vec<TokenEntry>,
    stacks: Vec<StackFile>,
    runs: Vec<RunFile>,
    audit: Vec<AuditRecord>,
}

impl Backup {
    fn read(&self, rel: &str) -> anyhow::Result<Vec<u8>> {
        std::fs::read(self.root.join(rel)).with_context(|| format!("reading {rel}"))
    }

    /// Reads and checks everything that needs no store: every file against the manifest,
    /// every version against its recorded SHA-256, the audit chain, the counts. Returns the
    /// backup and the problems found; an error means it could not be read at all.
    fn load(dir: &Path) -> anyhow::Result<(Backup, Vec<String>)> {
        let manifest_bytes = std::fs::read(dir.join("manifest.json")).with_context(|| {
            format!(
                "reading {}/manifest.json (is this an airlock backup directory?)",
                dir.display()
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .context("manifest.json is not a valid airlock backup manifest")?;
        let v1 = manifest.format == FORMAT_V1;
        if manifest.format != FORMAT && !v1 {
            bail!(
                "unsupported backup format {:?} (this airlock reads {FORMAT} and {FORMAT_V1})",
                manifest.format
            );
        }
        let mut problems = Vec::new();

        // 1. Every listed file is present and re-hashes; nothing unlisted is there.
        for (rel, entry) in &manifest.files {
            if rel
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
            {
                problems.push(format!("manifest lists an unsafe path {rel:?}"));
                continue;
            }
            match std::fs::read(dir.join(rel)) {
                Ok(bytes) => {
                    if bytes.len() as u64 != entry.size
                        || hex(&blob::sha256(&bytes)) != entry.sha256
                    {
                        problems.push(format!(
                            "{rel}: content does not match the manifest's SHA-256 and size"
                        ));
                    }
                }
                Err(e) => {
                    problems.push(format!("{rel}: listed in the manifest but unreadable: {e}"))
                }
            }
        }
        let mut on_disk = BTreeSet::new();
        list_files(dir, dir, &mut on_disk)?;
        for rel in on_disk {
            if rel != "manifest.json" && !manifest.files.contains_key(&rel) {
                problems.push(format!("{rel}: present but not listed in the manifest"));
            }
        }

        // 2. Parse the listed records.
        let parse = |rel: &str| -> anyhow::Result<Vec<u8>> {
            if !manifest.files.contains_key(rel) {
                bail!("{rel} is not listed in the manifest");
            }
            std::fs::read(dir.join(rel)).with_context(|| format!("reading {rel}"))
        };
        let tokens: Vec<TokenEntry> =
            serde_json::from_slice(&parse("tokens.json")?).context("tokens.json is not valid")?;
        let users: Vec<UserEntry> = if v1 {
            Vec::new()
        } else {
            serde_json::from_slice(&parse("users.json")?).context("users.json is not valid")?
        };
        let mut audit = Vec::new();
        for (n, line) in parse("audit.jsonl")?.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let r: AuditRecord = serde_json::from_slice(line)
                .with_context(|| format!("audit.jsonl line {} is not an audit record", n + 1))?;
            audit.push(r);
        }
        let mut stacks = Vec::new();
        for rel in manifest
            .files
            .keys()
            .filter(|k| k.starts_with("stacks/") && k.ends_with("/stack.json"))
        {
            let s: StackFile = serde_json::from_slice(&parse(rel)?)
                .with_context(|| format!("{rel} is not valid"))?;
            stacks.push(s);
        }
        let mut runs = Vec::new();
        for rel in manifest
            .files
            .keys()
            .filter(|k| k.starts_with("runs/") && k.ends_with("/run.json"))
        {
            let r: RunFile = serde_json::from_slice(&parse(rel)?)
                .with_context(|| format!("{rel} is not valid"))?;
            runs.push(r);
        }
        let backup = Backup {
            root: dir.to_owned(),
            manifest,
            users,
            tokens,
            stacks,
            runs,
            audit,
        };

        // 3. Every version's bytes match its recorded SHA-256 and size; serials increase.
        for s in &backup.stacks {
            if let Err(e) = airlock_core::StackName::parse(&s.name) {
                problems.push(format!("stack name {:?} is not valid: {e}", s.name));
            }
            let mut last: Option<u64> = None;
            for v in &s.versions {
                if last.is_some_and(|l| v.serial <= l) {
                    problems.push(format!(
                        "{} serial {}: serials are not increasing",
                        s.name, v.serial
                    ));
                }
                last = Some(v.serial);
                if !backup.manifest.files.contains_key(&v.file) {
                    problems.push(format!(
                        "{} serial {}: {} is not listed in the manifest",
                        s.name, v.serial, v.file
                    ));
                    continue;
                }
                match backup.read(&v.file) {
                    Ok(bytes)
                        if bytes.len() as u64 == v.size
                            && hex(&blob::sha256(&bytes)) == v.sha256 => {}
                    Ok(_) => problems.push(format!(
                        "{} serial {}: bytes do not match the version's recorded SHA-256",
                        s.name, v.serial
                    )),
                    Err(e) => problems.push(format!("{} serial {}: {e:#}", s.name, v.serial)),
                }
            }
            if let Some(l) = &s.lock {
                if !backup.manifest.files.contains_key(&l.info_file) {
                    problems.push(format!(
                        "{}: lock info file {} is not listed in the manifest",
                        s.name, l.info_file
                    ));
                }
            }
        }

        for r in &backup.runs {
            for a in &r.artifacts {
                if !backup.manifest.files.contains_key(&a.file) {
                    problems.push(format!(
                        "run {}: artifact {} is not listed in the manifest",
                        r.record.id, a.file
                    ));
                    continue;
                }
                match backup.read(&a.file) {
                    Ok(bytes)
                        if bytes.len() as u64 == a.size
                            && hex(&blob::sha256(&bytes)) == a.sha256 => {}
                    Ok(_) => problems.push(format!(
                        "run {} artifact {}: bytes do not match its recorded SHA-256",
                        r.record.id, a.name
                    )),
                    Err(e) => {
                        problems.push(format!("run {} artifact {}: {e:#}", r.record.id, a.name))
                    }
                }
            }
        }

        // 4. The audit chain verifies from genesis and ends at the recorded head.
        if backup.audit.first().is_some_and(|r| r.seq != 1) {
            problems.push("audit chain does not start at event 1".into());
        }
        if let Err((seq, why)) = verify_chain(&backup.audit, GENESIS.to_owned()) {
            problems.push(format!("audit chain broken at event {seq}: {why}"));
        }

        // 5. The counts match the manifest.
        let actual = backup.computed_summary();
        if actual != backup.manifest.summary {
            problems.push(format!(
                "the manifest's summary {:?} does not match the files {:?}",
                backup.manifest.summary, actual
            ));
        }
        let mut backup = backup;
        if v1 {
            backup.users = upgrade_v1_tokens(&mut backup.tokens);
        }
        Ok((backup, problems))
    }

    fn computed_summary(&self) -> Summary {
        Summary {
            stacks: self.stacks.len() as u64,
            versions: self.stacks.iter().map(|s| s.versions.len() as u64).sum(),
            users: self.users.len() as u64,
            tokens: self.tokens.len() as u64,
            grants: self.stacks.iter().map(|s| s.grants.len() as u64).sum(),
            locks: self.stacks.iter().filter(|s| s.lock.is_some()).count() as u64,
            runs: self.runs.len() as u64,
            audit_events: self.audit.len() as u64,
            audit_head: self
                .audit
                .last()
                .map_or_else(|| GENESIS.to_owned(), |r| r.hash.clone()),
        }
    }
}

fn list_files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.insert(rel.join("/"));
        }
    }
    Ok(())
}

// ---- replay and compare ----

fn ensure_empty(store: &dyn StoreImport) -> anyhow::Result<()> {
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

/// Inserts everything in the backup into `store` verbatim.
fn replay(store: &dyn StoreImport, b: &Backup) -> anyhow::Result<()> {
    for u in &b.users {
        store
            .import_user(&u.to_record())
            .with_context(|| format!("importing user {}", u.name))?;
    }
    for t in &b.tokens {
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
    for r in &b.runs {
        let mut artifacts = Vec::new();
        for a in &r.artifacts {
            artifacts.push((a.name.as_str(), b.read(&a.file)?));
        }
        let refs: Vec<(&str, &[u8])> = artifacts.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        store
            .import_run(&r.record, &refs)
            .with_context(|| format!("importing run {}", r.record.id))?;
    }
    for r in &b.audit {
        store
            .import_audit(r)
            .with_context(|| format!("importing audit event {}", r.seq))?;
    }
    Ok(())
}

/// Differences between what `store` holds and the backup (empty: equal). Version bytes are
/// compared through their hashes, after the store re-hashed every version it holds.
fn compare(store: &dyn StoreImport, b: &Backup) -> anyhow::Result<Vec<String>> {
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
        for a in &r.artifacts {
            let stored = store.run_artifact(&r.record.id, &a.name)?;
            if stored.as_deref().map(|d| hex(&blob::sha256(d))) != Some(a.sha256.clone()) {
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
    if let Err((seq, why)) = verify_chain(&audit, GENESIS.to_owned()) {
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

/// A SQLite store in a temporary directory, removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The problem, if any, with `manifest.json` against the SHA-256 printed at export.
fn check_manifest_hash(dir: &Path, want: &str) -> anyhow::Result<Option<String>> {
    let want = want.trim().to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--manifest-sha256 must be the 64 hex digits `airlock backup export` printed, not {want:?}");
    }
    let got = hex(&blob::sha256(&std::fs::read(dir.join("manifest.json"))?));
    Ok((got != want).then(|| {
        format!("manifest.json has SHA-256 {got}, not the {want} recorded at export: the manifest was replaced (or this is another backup)")
    }))
}

fn replay_into_scratch(b: &Backup) -> anyhow::Result<Vec<String>> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let scratch = Scratch {
        dir: std::env::temp_dir().join(format!(
            "airlock-backup-verify-{}-{nanos}",
            std::process::id()
        )),
    };
    private::create_private_dir(&scratch.dir)
        .with_context(|| format!("creating scratch dir {}", scratch.dir.display()))?;
    let store: Arc<dyn StoreImport> = Arc::new(
        SqliteStore::open(&scratch.dir.join("airlock.db")).context("opening the scratch store")?,
    );
    if let Err(e) = replay(store.as_ref(), b) {
        return Ok(vec![format!("replay into a scratch store failed: {e:#}")]);
    }
    let problems = compare(store.as_ref(), b)?;
    drop(store);
    Ok(problems)
}
