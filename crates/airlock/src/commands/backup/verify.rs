//! `backup verify`: reads a backup back, checks it against itself and its manifest, and replays
//! it into a scratch store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use airlock_core::audit::{verify_chain, AuditRecord, GENESIS};
use airlock_store::{blob, private, RunRecord, SqliteStore, StoreImport, PLAN_ARTIFACT};
use anyhow::{bail, Context};

use super::format::{
    resolve_minters, upgrade_v1_tokens, ArtifactEntry, DriftReportEntry, Manifest, PolicySetEntry,
    RunFile, StackFile, Summary, TokenEntry, TrustEntry, UserEntry,
};
use super::import::{compare, replay};
use super::{hex, FORMAT, FORMAT_V1, FORMAT_V2, FORMAT_V3, FORMAT_V4};

/// A backup read back and checked against itself. Version bytes stay on disk.
pub(super) struct Backup {
    pub(super) root: PathBuf,
    pub(super) manifest: Manifest,
    pub(super) users: Vec<UserEntry>,
    pub(super) policy_sets: Vec<PolicySetEntry>,
    pub(super) tokens: Vec<TokenEntry>,
    pub(super) stacks: Vec<StackFile>,
    pub(super) runs: Vec<RunFile>,
    pub(super) audit: Vec<AuditRecord>,
    /// Format 4; none before.
    pub(super) trusts: Vec<TrustEntry>,
    /// Format 4; none before.
    pub(super) drift_reports: Vec<DriftReportEntry>,
}

impl Backup {
    pub(super) fn read(&self, rel: &str) -> anyhow::Result<Vec<u8>> {
        std::fs::read(self.root.join(rel)).with_context(|| format!("reading {rel}"))
    }

    /// Reads and checks everything that needs no store: every file against the manifest,
    /// every version against its recorded SHA-256, the audit chain, the counts. Returns the
    /// backup and the problems found; an error means it could not be read at all.
    pub(super) fn load(dir: &Path) -> anyhow::Result<(Backup, Vec<String>)> {
        let manifest_bytes = std::fs::read(dir.join("manifest.json")).with_context(|| {
            format!(
                "reading {}/manifest.json (is this an airlock backup directory?)",
                dir.display()
            )
        })?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .context("manifest.json is not a valid airlock backup manifest")?;
        let v1 = manifest.format == FORMAT_V1;
        let one_chain = v1 || manifest.format == FORMAT_V2;
        let v4 = manifest.format == FORMAT || manifest.format == FORMAT_V4;
        if !v4 && manifest.format != FORMAT_V3 && !one_chain {
            bail!(
                "unsupported backup format {:?} (this airlock reads {FORMAT}, {FORMAT_V4}, {FORMAT_V3}, {FORMAT_V2} and {FORMAT_V1})",
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
        // Backups made before server policy sets existed have none.
        let policy_sets: Vec<PolicySetEntry> = if manifest.files.contains_key("policy_sets.json") {
            serde_json::from_slice(&parse("policy_sets.json")?)
                .context("policy_sets.json is not valid")?
        } else {
            Vec::new()
        };
        for p in &policy_sets {
            if airlock_store::policy_set_sha256(&p.to_record().files) != p.sha256 {
                bail!(
                    "policy set {}: its files do not hash to its recorded SHA-256",
                    p.id
                );
            }
        }
        // Trusts and drift reports came with format 4; older backups have none.
        let (trusts, drift_reports): (Vec<TrustEntry>, Vec<DriftReportEntry>) = if v4 {
            (
                serde_json::from_slice(&parse("oidc_trusts.json")?)
                    .context("oidc_trusts.json is not valid")?,
                serde_json::from_slice(&parse("drift_reports.json")?)
                    .context("drift_reports.json is not valid")?,
            )
        } else {
            (Vec::new(), Vec::new())
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
            policy_sets,
            tokens,
            stacks,
            runs,
            audit,
            trusts,
            drift_reports,
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
                if let Some(problem) = backup.retention_problem(&r.record, a) {
                    problems.push(problem);
                    continue;
                }
                if a.purged_at.is_some() {
                    // A tombstone: no bytes to check (`retention_problem` checked the rest).
                    continue;
                }
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

        // 4. Trusts and drift reports are what the server could have stored (see
        // `trust_and_drift_problems`).
        problems.extend(backup.trust_and_drift_problems());

        // 5. The audit chain verifies from genesis and ends at the recorded head.
        if let Err((seq, why)) = verify_chain(&backup.audit) {
            problems.push(format!("audit chain broken at event {seq}: {why}"));
        }
        if let Some(r) = backup.audit.iter().find(|r| one_chain && r.chain.is_some()) {
            let (seq, why) = (
                r.seq,
                "a chained record in a backup of a single-chain format",
            );
            problems.push(format!("audit chain broken at event {seq}: {why}"));
        }

        // 6. The counts match the manifest.
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
        // 7. Every token's minter is the one its created_by names, and in the backup.
        problems.extend(resolve_minters(&mut backup.tokens, &backup.audit));
        // 8. Every approval a run carries is an audited act.
        problems.extend(unaudited_approvals(&backup.runs, &backup.audit));
        // 9. Every run is what its run.create event says was planned, judged and by whom.
        problems.extend(unaudited_runs(&backup.runs, &backup.tokens, &backup.audit));
        Ok((backup, problems))
    }

    /// What a valid backup leaves unverified or unrestored, because its audit events were
    /// written by an airlock that did not record it yet: drift reports whose `drift.report`
    /// event has no `report_sha256` (their bodies are not bound to the chain), and forge logins
    /// whose `oidc.login` event names no ID token (`import` cannot mark those tokens used).
    /// What is wrong with `a`, an artifact of `run`, as run artifact retention sees it: a
    /// tombstone only in format 5, only of a terminal run's binary plan, and without a file; a
    /// binary plan (bytes or tombstone) only the run's own (its `plan_sha256`); and in format
    /// 5, never the bytes of a terminal run's binary plan (the server purged them; a backup
    /// cannot bring them back).
    fn retention_problem(&self, run: &RunRecord, a: &ArtifactEntry) -> Option<String> {
        let (id, status) = (&run.id, run.status.as_str());
        let tombstone = a.purged_at.is_some();
        if tombstone && self.manifest.format != FORMAT {
            return Some(format!(
                "run {id} artifact {}: a tombstone in a {} backup (tombstones came with {FORMAT})",
                a.name, self.manifest.format
            ));
        }
        if tombstone && !run.status.purges(&a.name) {
            return Some(format!(
                "run {id} artifact {}: a tombstone of the {status} run's {}, but only a terminal run's binary plan ({PLAN_ARTIFACT}) is ever purged",
                a.name, a.name
            ));
        }
        if tombstone && !a.file.is_empty() {
            return Some(format!(
                "run {id} artifact {}: a tombstone that names a file ({})",
                a.name, a.file
            ));
        }
        if a.name == PLAN_ARTIFACT && a.sha256 != run.plan_sha256 {
            return Some(format!(
                "run {id} artifact {}: SHA-256 {} is not the run's plan {}",
                a.name, a.sha256, run.plan_sha256
            ));
        }
        if !tombstone && run.status.purges(&a.name) && self.manifest.format == FORMAT {
            return Some(format!(
                "run {id} artifact {}: the {status} run's binary plan carries bytes, but a terminal run's binary plan is purged and {FORMAT} lists it as a tombstone",
                a.name
            ));
        }
        None
    }

    /// Binary plans of terminal runs that this (older) backup carries with their bytes: the
    /// import stores them as tombstones.
    pub(super) fn plans_purged_on_import(&self) -> usize {
        self.runs
            .iter()
            .flat_map(|r| r.artifacts.iter().map(move |a| (r.record.status, a)))
            .filter(|(status, a)| status.purges(&a.name) && a.purged_at.is_none())
            .count()
    }

    pub(super) fn notes(&self) -> Vec<String> {
        let events = |action: &str, key: &str| {
            self.audit
                .iter()
                .filter(|r| r.outcome == "ok" && r.action == action && r.detail.get(key).is_none())
                .collect::<Vec<_>>()
        };
        let unhashed: BTreeSet<&str> = events("drift.report", "report_sha256")
            .iter()
            .filter_map(|r| r.detail.get("id").and_then(serde_json::Value::as_str))
            .collect();
        let unhashed = self
            .drift_reports
            .iter()
            .filter(|d| unhashed.contains(d.id.as_str()))
            .count();
        let logins = events("oidc.login", airlock_server::oidc::LOGIN_ID_TOKEN).len();
        let mut notes = Vec::new();
        if unhashed > 0 {
            notes.push(format!(
                "{unhashed} drift report(s) were recorded before drift.report audit events carried the report's SHA-256: their stack, status, serial, counts and time are checked against the audit, their bodies (which instances drifted, the findings) are not"
            ));
        }
        let purged = self.plans_purged_on_import();
        if purged > 0 {
            notes.push(format!(
                "{purged} terminal run(s) carry their binary plan ({PLAN_ARTIFACT}): it can never be applied again, so an import keeps its name, SHA-256 and size as a tombstone and purges its bytes"
            ));
        }
        if logins > 0 {
            notes.push(format!(
                "{logins} forge login(s) were recorded before oidc.login audit events named the ID token: a restore cannot mark those tokens used, so one that has not expired yet could log in once more"
            ));
        }
        notes
    }

    pub(super) fn computed_summary(&self) -> Summary {
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
            trusts: self.trusts.len() as u64,
            drift_reports: self.drift_reports.len() as u64,
        }
    }

    /// A backup is restored without a person looking at it, so what it brings must be what the
    /// server itself could have stored: every trust passes the rule `airlock trust add` applies
    /// (`oidc::check_trust`: never approver or admin, ci only with a ref, ...) and its tokens'
    /// user is in the backup; every drift report names a stack of the backup and a serial that
    /// stack has (or none), a known status, and JSON. Ids are unique. And each is the record
    /// its audit event committed with (the chain is verified separately): a trust is what its
    /// `oidc.trust_add` event (and `oidc.trust_pin`, for ids pinned later) says, and removed if
    /// an `oidc.trust_remove` event says so; a drift report is what its `drift.report` event
    /// says, at that event's time, its body hashing to the event's `report_sha256` (when the
    /// event has one: see `notes`). Adding or reviving a trust, an "in sync" report that hides
    /// drift, or an edited body, then means rewriting the audit chain, whose head the server
    /// recorded (`backup verify --record`) and the manifest's printed SHA-256 pins.
    fn trust_and_drift_problems(&self) -> Vec<String> {
        use serde_json::{json, Value};
        let mut problems = Vec::new();
        let users: BTreeSet<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        let mut added = std::collections::BTreeMap::new();
        let mut pinned = std::collections::BTreeMap::new();
        let mut removed = BTreeSet::new();
        let mut reported = std::collections::BTreeMap::new();
        for r in self.audit.iter().filter(|r| r.outcome == "ok") {
            let id = |k: &str| r.detail.get(k).and_then(Value::as_str).map(str::to_owned);
            match r.action.as_str() {
                "oidc.trust_add" => added.extend(id("id").map(|i| (i, &r.detail))),
                "oidc.trust_pin" => pinned.extend(id("trust").map(|i| {
                    (
                        i,
                        (
                            r.detail["repository_id"].clone(),
                            r.detail["owner_id"].clone(),
                        ),
                    )
                })),
                "oidc.trust_remove" => removed.extend(id("trust")),
                "drift.report" => reported.extend(id("id").map(|i| (i, r))),
                _ => {}
            }
        }
        let mut ids = BTreeSet::new();
        for t in &self.trusts {
            match added.get(&t.id) {
                None => problems.push(format!(
                    "trust {}: no oidc.trust_add audit event added it (a trust comes only from `airlock trust add`)",
                    t.id
                )),
                Some(detail) => {
                    let mut want = serde_json::to_value(t.to_record()).unwrap_or_default();
                    let mut said = (*detail).clone();
                    for k in ["removed_at", "removed_by", "repository_id", "owner_id"] {
                        for v in [&mut want, &mut said] {
                            if let Some(o) = v.as_object_mut() {
                                o.remove(k);
                            }
                        }
                    }
                    let ids_said = match pinned.get(&t.id) {
                        Some(p) => p.clone(),
                        None => (
                            detail.get("repository_id").cloned().unwrap_or(Value::Null),
                            detail.get("owner_id").cloned().unwrap_or(Value::Null),
                        ),
                    };
                    if want != said || ids_said != (json!(t.repository_id), json!(t.owner_id)) {
                        problems.push(format!(
                            "trust {}: differs from what its audit events say it is (role, stacks, repository, ids, ...)",
                            t.id
                        ));
                    }
                }
            }
            if removed.contains(&t.id) && t.removed_at.is_none() {
                problems.push(format!(
                    "trust {}: an oidc.trust_remove audit event removed it, but the backup has it active",
                    t.id
                ));
            }
            if !ids.insert(t.id.as_str()) {
                problems.push(format!("trust {}: listed twice", t.id));
            }
            if let Err(e) = airlock_server::oidc::check_trust(&t.to_record()) {
                problems.push(format!(
                    "trust {}: refused, the server would never have stored it: {e}",
                    t.id
                ));
            }
            if !users.contains(t.id.as_str()) {
                problems.push(format!(
                    "trust {}: its tokens' user {} is not in users.json",
                    t.id, t.id
                ));
            }
        }
        let stacks: std::collections::BTreeMap<String, BTreeSet<u64>> = self
            .stacks
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.versions.iter().map(|v| v.serial).collect(),
                )
            })
            .collect();
        let mut ids = BTreeSet::new();
        for d in &self.drift_reports {
            if !ids.insert(d.id.as_str()) {
                problems.push(format!("drift report {}: listed twice", d.id));
            }
            let Some(serials) = stacks.get(&d.stack) else {
                problems.push(format!(
                    "drift report {}: names stack {:?}, which is not in the backup",
                    d.id, d.stack
                ));
                continue;
            };
            if d.serial.is_some_and(|s| !serials.contains(&s)) {
                problems.push(format!(
                    "drift report {}: names serial {} of {}, which the backup does not hold (a report is bound to the state it checked)",
                    d.id,
                    d.serial.unwrap_or_default(),
                    d.stack
                ));
            }
            match reported.get(&d.id) {
                None => problems.push(format!(
                    "drift report {}: no drift.report audit event recorded it",
                    d.id
                )),
                Some(r) => {
                    let at = airlock_core::time::parse_rfc3339_ms(&r.at).unwrap_or(i64::MIN);
                    if r.stack.as_deref() != Some(d.stack.as_str())
                        || r.detail.get("status") != Some(&json!(d.status))
                        || r.detail.get("serial") != Some(&json!(d.serial))
                        || r.detail.get("drifted") != Some(&json!(d.drifted))
                        || r.detail.get("findings") != Some(&json!(d.findings))
                        || at.abs_diff(d.created_at) > 5 * 60 * 1000
                    {
                        problems.push(format!(
                            "drift report {}: differs from what its drift.report audit event says (stack, status, serial, counts or time)",
                            d.id
                        ));
                    }
                    // The body (which instances drifted, the findings): bound by the SHA-256
                    // the event carries; an older event without it is noted (`notes`).
                    match r.detail.get("report_sha256") {
                        None => {}
                        Some(h) if h.as_str() == Some(&airlock_server::drift_report_sha256(&d.report)) => {}
                        Some(_) => problems.push(format!(
                            "drift report {}: its body (the drifted instances and findings) is not the one its drift.report audit event recorded (the SHA-256 differs): the report was edited after the server stored it",
                            d.id
                        )),
                    }
                }
            }
            if !["in_sync", "drifted", "unknown"].contains(&d.status.as_str()) {
                problems.push(format!(
                    "drift report {}: status {:?} is not in_sync, drifted or unknown",
                    d.id, d.status
                ));
            }
            if serde_json::from_str::<serde_json::Value>(&d.report).map_or(true, |v| !v.is_object())
            {
                problems.push(format!(
                    "drift report {}: its report is not a JSON object",
                    d.id
                ));
            }
        }
        // The other way round (format 4, which carries drift reports): every report a
        // drift.report event recorded about a state this backup holds is in it (export keeps
        // exactly those), so the newest cannot be left out to make an older "in sync" one the
        // stack's status.
        let carries_drift = self.manifest.format == FORMAT || self.manifest.format == FORMAT_V4;
        for (id, r) in reported.iter().filter(|_| carries_drift) {
            let serial = r.detail.get("serial").and_then(Value::as_u64);
            let stack = r.stack.as_deref().unwrap_or_default();
            if super::export::holds_state(&stacks, stack, serial) && !ids.contains(id.as_str()) {
                problems.push(format!(
                    "drift report {id} of {stack}: recorded by its drift.report audit event (seq {}), but not in the backup",
                    r.seq
                ));
            }
        }
        // And in the order they were recorded: a stack's status is its newest report by time,
        // so a report re-timed past a later one would change it.
        let mut recorded: Vec<(&str, i64, i64, &str)> = self
            .drift_reports
            .iter()
            .filter_map(|d| {
                reported
                    .get(&d.id)
                    .map(|r| (d.stack.as_str(), r.seq, d.created_at, d.id.as_str()))
            })
            .collect();
        recorded.sort();
        for w in recorded.windows(2) {
            if w[0].0 == w[1].0 && w[0].2 > w[1].2 {
                problems.push(format!(
                    "drift report {}: dated after {}, which its stack's audit chain recorded later",
                    w[0].3, w[1].3
                ));
            }
        }
        problems
    }
}

pub(super) fn list_files(
    root: &Path,
    dir: &Path,
    out: &mut BTreeSet<String>,
) -> anyhow::Result<()> {
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

/// A SQLite store in a temporary directory, removed when dropped.
pub(super) struct Scratch {
    pub(super) dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The problem, if any, with `manifest.json` against the SHA-256 printed at export.
pub(super) fn check_manifest_hash(dir: &Path, want: &str) -> anyhow::Result<Option<String>> {
    let want = want.trim().to_ascii_lowercase();
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--manifest-sha256 must be the 64 hex digits `airlock backup export` printed, not {want:?}");
    }
    let got = hex(&blob::sha256(&std::fs::read(dir.join("manifest.json"))?));
    Ok((got != want).then(|| {
        format!("manifest.json has SHA-256 {got}, not the {want} recorded at export: the manifest was replaced (or this is another backup)")
    }))
}

pub(super) fn replay_into_scratch(b: &Backup) -> anyhow::Result<Vec<String>> {
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

/// The runs whose record says otherwise than the `run.create` event that created it: its
/// author (the event's actor and its token; the backup's user of that token), its stack, and
/// every key of the event's detail, derived again from the record
/// ([`RunRecord::created_detail`]: the gate's decision, the plan, the inputs, what it destroys,
/// the planning mode, policy changes, read stacks, author user and approvals needed). The server
/// writes the record and the event in one transaction, so a backup that turns a denied run into
/// one awaiting approval, swaps its plan for one the gate never judged, hides what it destroys,
/// lowers the approvals it needs or names another author rewrites the audit chain too (what
/// only its anchors catch). Keys an older server did not put in the event are not compared; a
/// run needs exactly one such event.
fn unaudited_runs(runs: &[RunFile], tokens: &[TokenEntry], audit: &[AuditRecord]) -> Vec<String> {
    let mut created: std::collections::HashMap<&str, Vec<&AuditRecord>> = Default::default();
    for e in audit
        .iter()
        .filter(|e| e.action == "run.create" && e.outcome == "ok")
    {
        if let Some(run) = e.detail["run"].as_str() {
            created.entry(run).or_default().push(e);
        }
    }
    let user_of: std::collections::HashMap<&str, &str> = tokens
        .iter()
        .map(|t| (t.id.as_str(), t.user.as_str()))
        .collect();
    let mut problems = Vec::new();
    for RunFile { record: r, .. } in runs {
        let events = created.get(r.id.as_str()).map_or(&[][..], Vec::as_slice);
        let [e] = events else {
            problems.push(format!(
                "run {}: the audit chain holds {} run.create events of it, not one",
                r.id,
                events.len()
            ));
            continue;
        };
        let derived = r.created_detail();
        let mut differing: Vec<String> = e
            .detail
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| derived.get(k.as_str()).is_some_and(|d| d != *v))
            .map(|(k, _)| k.clone())
            .collect();
        if e.stack.as_deref() != Some(r.stack.as_str()) {
            differing.push("stack".into());
        }
        // Runs stored before users existed name no author user (it is their token's).
        let other_user = !r.author_user.is_empty()
            && user_of
                .get(r.author_token.as_str())
                .is_some_and(|u| *u != r.author_user);
        if e.actor != r.author
            || !e.actor.ends_with(&format!(" ({})", r.author_token))
            || other_user
        {
            differing.push("author".into());
        }
        if !differing.is_empty() {
            problems.push(format!(
                "run {}: its {} differ from its run.create event in the audit chain",
                r.id,
                differing.join(", ")
            ));
        }
    }
    problems
}

/// Step 8: every approval a run's record carries is a `run.approve` event of that run by that
/// approver (for that plan, where the event names it; older ones did not), one event per
/// approval. The server writes both in one transaction, so an approval added to a backup's run
/// record without the act (the one edit that would let a restored run be applied unreviewed:
/// the apply counts the record's approvals) means rewriting the audit chain too.
fn unaudited_approvals(runs: &[RunFile], audit: &[AuditRecord]) -> Vec<String> {
    // Per (run, approver): each event's plan and user, where it names them (older servers'
    // events name no user, the first ones no plan).
    type Named<'a> = (Option<&'a str>, Option<&'a str>);
    let mut events: std::collections::HashMap<(&str, &str), Vec<Named<'_>>> = Default::default();
    for e in audit
        .iter()
        .filter(|e| e.action == "run.approve" && e.outcome == "ok")
    {
        if let Some(run) = e.detail["run"].as_str() {
            events
                .entry((run, e.actor.as_str()))
                .or_default()
                .push((e.detail["plan_sha256"].as_str(), e.detail["user"].as_str()));
        }
    }
    let mut problems = Vec::new();
    for r in runs {
        for a in &r.record.approvals {
            let approved = events.get_mut(&(r.record.id.as_str(), a.by.as_str()));
            let found = approved.and_then(|named| {
                let at = named.iter().position(|(plan, user)| {
                    plan.is_none_or(|p| p == a.plan_sha256) && user.is_none_or(|u| u == a.by_user)
                })?;
                Some(named.swap_remove(at))
            });
            if found.is_none() {
                problems.push(format!(
                    "run {}: its approval by {} (user {}, plan {}) is not a run.approve event of the audit chain",
                    r.record.id, a.by, a.by_user, a.plan_sha256
                ));
            }
        }
    }
    problems
}
