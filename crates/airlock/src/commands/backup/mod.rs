//! `airlock backup export|verify|import`: full, independently checkable backups.
//!
//! Export and import work on the database directly (`--data-dir` / `--database-url`, like
//! `airlock server`), not through the HTTP API: a disaster-recovery tool has to work when no
//! server runs, and a backup that restores working tokens needs their secret hashes, which the
//! API never serves. Verify needs neither a server nor a database.
//!
//! A backup directory (format `airlock-backup/5`) holds plain files:
//!
//! ```text
//! manifest.json                        format, time, source engine, counts, audit head, and
//!                                      the SHA-256 and size of every other file
//! users.json                           every user (format 2)
//! policy_sets.json                     every server policy set, removed ones included (absent: none)
//! oidc_trusts.json                     every forge trust, removed ones included (format 4)
//! drift_reports.json                   every drift report with its JSON, oldest first (format 4)
//! tokens.json                          every token with the SHA-256 of its secret (no secrets),
//!                                      its user and its parent token (format 2)
//! audit.jsonl                          the audit log, one record per line, in global order:
//!                                      each record with its chain and position (format 3)
//! stacks/NNNN/stack.json               the stack, its version metadata, grants and lock
//! stacks/NNNN/versions/SERIAL.tfstate  each version's exact bytes
//! stacks/NNNN/lock-info.json           the held lock's info body, verbatim (if locked)
//! runs/NNNN/run.json                   a governed run's record and its artifact list, with
//!                                      the tombstone of a purged binary plan (format 5)
//! runs/NNNN/artifacts/NN.bin           each kept artifact's exact bytes (plan, plan JSON, logs)
//! ```
//!
//! Format 1 (before users) is still read: its tokens get users and parents exactly as the
//! store's migration 0003 gives them (see `upgrade_v1_tokens`), after the files are checked.
//! Format 2 (one audit chain) is still read: its records are the legacy chain, which the
//! global chain continues after import, as migration 0010 does for a stored log. Format 3 was
//! made a new version because an older airlock would drop the records' chain fields and find
//! the chains broken. Format 3 (before trusts and drift reports) is still read: it restores
//! none. Format 4 was made a new version because an older airlock would find two files it does
//! not list and refuse the backup, rather than silently restore without them.
//! Format 5 lists a terminal run's purged binary plan as a tombstone (name, SHA-256, size, purge
//! time; no file), which an older airlock would read as an artifact whose file is missing: a new
//! version, so that it says "unsupported format" instead. Verify accepts a tombstone only of a
//! terminal run's binary plan, hashing to the run's plan, and refuses the bytes of a terminal
//! run's binary plan in format 5 (export never writes them). Format 4 (no tombstones) is still
//! read: a terminal run's binary plan in it is imported as a tombstone, its bytes purged
//! (`Backup::notes` counts them), so a restore never brings back a plan the server purged.
//!
//! The OIDC issuer's private signing keys are never in a backup (a backup is a copy of the
//! data, kept elsewhere; a key there would sign for the clouds that trust the issuer): a
//! restored server makes a new key on its first start with `--public-url`, and clouds fetch
//! the JWKS by issuer URL, so phase tokens keep working. Trusts and drift reports are checked
//! like everything else a restore brings without a person looking: a trust must be one that
//! `airlock trust add` accepts (never approver or admin), a drift report must name a stack and
//! a serial of the backup and hash to the SHA-256 its `drift.report` audit event recorded
//! (`verify.rs`; an event from before that hash is noted, not refused).
//!
//! The one-use records of forge ID tokens (`forge_token_uses`) are not in a backup: import
//! rebuilds them from the `oidc.login` events, which name each login's token (`import.rs`), so a
//! token used before the backup does not log in again after the restore. No format change: the
//! events were always in the audit file.
//!
//! History is append-only, so an export taken while servers run is consistent per stack; the
//! audit chain is read last and covers at least everything exported.
//!
//! The code follows the backup's life: `format` (the files and their records), `export`,
//! `verify` (load, check, replay into a scratch store) and `import` (replay, compare).

use std::process::ExitCode;

use airlock_store::blob;
use anyhow::{bail, Context};
use serde_json::json;

use super::migrate::{open_store, Missing};
use crate::cli::{BackupCommand, OutputFormat};

pub(super) const FORMAT: &str = "airlock-backup/5";
/// The format before run artifact tombstones; read, never written.
pub(super) const FORMAT_V4: &str = "airlock-backup/4";
/// The format before forge trusts and drift reports; read, never written.
pub(super) const FORMAT_V3: &str = "airlock-backup/3";
/// The format before audit chains per stack (one chain); read, never written.
pub(super) const FORMAT_V2: &str = "airlock-backup/2";
/// The format before users; read and upgraded, never written.
pub(super) const FORMAT_V1: &str = "airlock-backup/1";

mod export;
mod format;
mod import;
mod verify;

use export::export;
use import::{compare, ensure_empty, replay};
use verify::{check_manifest_hash, replay_into_scratch, Backup};

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
                    "exported {} stack(s), {} version(s), {} user(s), {} token(s), {} grant(s), {} lock(s), {} run(s), {} trust(s), {} drift report(s), {} audit event(s) to {}\nmanifest.json SHA-256: {manifest_sha} (record it elsewhere to detect a replaced manifest)\n",
                    summary.stacks, summary.versions, summary.users, summary.tokens, summary.grants, summary.locks, summary.runs, summary.trusts, summary.drift_reports, summary.audit_events, dir.display()
                )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify {
            dir,
            manifest_sha256,
            format,
            record,
            url,
            token,
            ca_cert,
        } => {
            let (backup, mut problems) = Backup::load(&dir)?;
            if let Some(want) = manifest_sha256 {
                problems.extend(check_manifest_hash(&dir, &want)?);
            }
            if problems.is_empty() {
                problems = replay_into_scratch(&backup)?;
            }
            let ok = problems.is_empty();
            let notes = backup.notes();
            print(
                format,
                &json!({"ok": ok, "summary": backup.manifest.summary, "problems": problems, "notes": notes}),
                || {
                    let s = &backup.manifest.summary;
                    let mut out = if ok {
                        format!(
                        "backup OK: {} stack(s), {} version(s), {} user(s), {} token(s), {} grant(s), {} lock(s), {} run(s), {} trust(s), {} drift report(s), {} audit event(s), audit head {}; every file matches the manifest, every version its SHA-256, the audit chain verifies, and a replay into a scratch SQLite store compares equal\n",
                        s.stacks, s.versions, s.users, s.tokens, s.grants, s.locks, s.runs, s.trusts, s.drift_reports, s.audit_events, s.audit_head
                    )
                    } else {
                        let mut out = format!("backup BROKEN: {} problem(s)\n", problems.len());
                        for p in &problems {
                            out.push_str(&format!("  {p}\n"));
                        }
                        out
                    };
                    out.push_str(&notes_text(&notes));
                    out
                },
            );
            if record {
                // After the result is printed: a failed report does not hide the verdict.
                let manifest_sha = hex(&blob::sha256(&std::fs::read(dir.join("manifest.json"))?));
                let m = &backup.manifest;
                let client = super::client::Client::new(&crate::cli::ClientArgs {
                    url,
                    token,
                    format: OutputFormat::Json,
                    ca_cert,
                })?;
                client
                    .send(
                        "POST",
                        "/api/v1/backups/verifications",
                        &json!({
                            "ok": ok,
                            "manifest_sha256": manifest_sha,
                            "exported_at": m.created_at,
                            "audit_events": m.summary.audit_events,
                            "audit_head": m.summary.audit_head,
                            "audit_head_seq": backup.audit.last().map_or(0, |r| r.seq),
                            "problems": problems.len(),
                            "stacks": m.summary.stacks,
                            "versions": m.summary.versions,
                        }),
                    )
                    .context("recording the verification on the server")?;
                if format == OutputFormat::Text {
                    crate::out(&format!("recorded on {}\n", client.base()));
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        BackupCommand::Import {
            dir,
            manifest_sha256,
            db,
            format,
        } => {
            let (backup, mut problems) = Backup::load(&dir)?;
            if let Some(want) = manifest_sha256 {
                problems.extend(check_manifest_hash(&dir, &want)?);
            }
            if !problems.is_empty() {
                bail!(
                    "refusing to import a backup that does not verify ({} problem(s)); nothing was written:\n  {}",
                    problems.len(),
                    problems.join("\n  ")
                );
            }
            let store = open_store(&db, Missing::Create)?;
            ensure_empty(store.as_ref())?;
            let marked = replay(store.as_ref(), &backup).context(
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
            let notes = backup.notes();
            print(
                format,
                &json!({"ok": true, "engine": store.engine(), "summary": s, "forge_tokens_marked_used": marked, "notes": notes}),
                || {
                    let mut out = format!(
                    "imported {} stack(s), {} version(s), {} user(s), {} token(s), {} grant(s), {} lock(s), {} run(s), {} trust(s), {} drift report(s), {} audit event(s) into the {} store; it compares equal to the backup (audit head {})\n",
                    s.stacks, s.versions, s.users, s.tokens, s.grants, s.locks, s.runs, s.trusts, s.drift_reports, s.audit_events, store.engine(), s.audit_head
                );
                    if marked > 0 {
                        out.push_str(&format!("{marked} forge ID token(s) that logged in before the backup and have not expired are marked used (each logs in once, restore or not)\n"));
                    }
                    out.push_str(&notes_text(&notes));
                    out
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

fn notes_text(notes: &[String]) -> String {
    notes.iter().map(|n| format!("note: {n}\n")).collect()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
