//! The store's invariants, written once against [`Sql`]: the audit hash chain (append, and
//! import only extending it), version assembly and verification, the state-write orchestration
//! around the caller's firewall, run creation and transitions, and row mapping for the tables
//! they touch. Engines call these inside their own transactions and add nothing of their own.

use std::cell::RefCell;

use airlock_core::audit::{
    chained_hash, AuditRecord, Position, GENESIS, GLOBAL_CHAIN, SEAL_ACTION,
};
use airlock_core::time::rfc3339;

use crate::blob;
use crate::sql::{params, unique_is_conflict, DbError, Row, Sql};
use crate::*;
use serde_json::json;

pub fn json_col<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A u64 of the API as a BIGINT. Both engines store signed 64-bit integers; a larger value
/// would wrap negative (and sort first) or be dropped, so it is refused before anything is
/// written, on every path (state writes and backup import alike).
pub fn bigint(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Conflict(format!("{what} {v} is too large to store")))
}

// ---- stacks ----

pub const STACK_COLS: &str =
    "id, name, production, lineage, settings, created_at, archived_at, archived_by, archive_reason";

pub fn stack_from_row(r: &Row) -> Result<(i64, StackRecord)> {
    Ok((
        r.i64(0)?,
        StackRecord {
            name: r.text(1)?,
            production: r.bool(2)?,
            lineage: r.opt_text(3)?,
            settings: json_col(&r.text(4)?, "stack settings")?,
            created_at: r.i64(5)?,
            archived: match r.opt_i64(6)? {
                Some(at) => Some(Archive {
                    at,
                    by: r.opt_text(7)?.unwrap_or_default(),
                    reason: r.opt_text(8)?.unwrap_or_default(),
                }),
                None => None,
            },
        },
    ))
}

pub fn stack_row(db: &mut dyn Sql, name: &str) -> Result<Option<(i64, StackRecord)>> {
    db.query_opt(
        &format!("SELECT {STACK_COLS} FROM stacks WHERE name = $1"),
        params![name],
    )?
    .map(|r| stack_from_row(&r))
    .transpose()
}

pub fn require_stack(db: &mut dyn Sql, name: &str) -> Result<(i64, StackRecord)> {
    stack_row(db, name)?.ok_or_else(|| StoreError::NotFound(format!("stack {name}")))
}

/// Locks the stack's row for the rest of the transaction: every transaction that changes a
/// stack (its lock, versions, settings, grants or runs) starts here, so they run one at a time
/// per stack whichever replica they come from.
pub fn lock_stack(db: &mut dyn Sql, name: &str) -> Result<(i64, StackRecord)> {
    let sql = format!(
        "SELECT {STACK_COLS} FROM stacks WHERE name = $1{}",
        db.for_update()
    );
    db.query_opt(&sql, params![name])?
        .map(|r| stack_from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("stack {name}")))
}

/// Like [`lock_stack`], for a change that an archived stack refuses: `Conflict` saying so.
pub fn lock_live_stack(db: &mut dyn Sql, name: &str) -> Result<(i64, StackRecord)> {
    let (id, stack) = lock_stack(db, name)?;
    match stack.refuse_if_archived() {
        Some(refusal) => Err(StoreError::Conflict(refusal.message)),
        None => Ok((id, stack)),
    }
}

// ---- versions ----

pub const VERSION_COLS: &str =
    "serial, lineage, sha256, size, author, lock_id, run_id, reason, restored_from, created_at";

pub fn version_from_row(stack: &str, r: &Row) -> Result<VersionMeta> {
    version_from_row_at(stack, r, 0)
}

/// The version in `r`'s columns from `at` on ([`VERSION_COLS`]).
fn version_from_row_at(stack: &str, r: &Row, at: usize) -> Result<VersionMeta> {
    Ok(VersionMeta {
        stack: stack.to_owned(),
        serial: r.i64(at)? as u64,
        lineage: r.text(at + 1)?,
        sha256: hex::encode(r.bytes(at + 2)?),
        size: r.i64(at + 3)? as u64,
        author: r.text(at + 4)?,
        lock_id: r.opt_text(at + 5)?,
        run_id: r.opt_text(at + 6)?,
        reason: r.opt_text(at + 7)?,
        restored_from: r.opt_i64(at + 8)?.map(|v| v as u64),
        created_at: r.i64(at + 9)?,
    })
}

pub fn current_version_of(
    db: &mut dyn Sql,
    stack_id: i64,
    stack: &str,
) -> Result<Option<VersionMeta>> {
    db.query_opt(
        &format!(
            "SELECT {VERSION_COLS} FROM versions WHERE stack_id = $1 ORDER BY serial DESC LIMIT 1"
        ),
        params![stack_id],
    )?
    .map(|r| version_from_row(stack, &r))
    .transpose()
}

pub fn version(db: &mut dyn Sql, stack: &str, serial: u64) -> Result<Option<VersionMeta>> {
    let (id, _) = require_stack(db, stack)?;
    let Ok(serial) = i64::try_from(serial) else {
        return Ok(None);
    };
    db.query_opt(
        &format!("SELECT {VERSION_COLS} FROM versions WHERE stack_id = $1 AND serial = $2"),
        params![id, serial],
    )?
    .map(|r| version_from_row(stack, &r))
    .transpose()
}

pub fn versions(db: &mut dyn Sql, stack: &str) -> Result<Vec<VersionMeta>> {
    let (id, _) = require_stack(db, stack)?;
    db.query(
        &format!("SELECT {VERSION_COLS} FROM versions WHERE stack_id = $1 ORDER BY serial"),
        params![id],
    )?
    .iter()
    .map(|r| version_from_row(stack, r))
    .collect()
}

/// Reassembles a version from its chunks and checks it against its SHA-256.
pub fn version_bytes_of(db: &mut dyn Sql, stack_id: i64, serial: u64) -> Result<Vec<u8>> {
    let not_found = || StoreError::NotFound(format!("version {serial}"));
    let serial_i = i64::try_from(serial).map_err(|_| not_found())?;
    let row = db
        .query_opt(
            "SELECT sha256, size, chunks FROM versions WHERE stack_id = $1 AND serial = $2",
            params![stack_id, serial_i],
        )?
        .ok_or_else(not_found)?;
    let (sha, size, list) = (row.bytes(0)?, row.i64(1)?, row.bytes(2)?);
    let hashes = blob::parse_chunk_list(&list);
    let stored = db.load_chunks(&hashes)?;
    let mut out = Vec::with_capacity(size.max(0) as usize);
    for h in &hashes {
        let (data, raw_len) = stored.get(&h[..]).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "version {serial}: chunk {} is missing",
                hex::encode(h)
            ))
        })?;
        let raw = blob::decompress(data, (*raw_len).max(0) as usize).map_err(|e| {
            StoreError::Corrupt(format!("version {serial}: chunk {}: {e}", hex::encode(h)))
        })?;
        out.extend_from_slice(&raw);
    }
    if blob::sha256(&out)[..] != sha[..] {
        return Err(StoreError::Corrupt(format!(
            "version {serial}: content does not match its SHA-256"
        )));
    }
    Ok(out)
}

pub fn version_bytes(db: &mut dyn Sql, stack: &str, serial: u64) -> Result<Vec<u8>> {
    let (id, _) = require_stack(db, stack)?;
    version_bytes_of(db, id, serial)
}

/// A state body chunked and hashed (each byte once for the body's SHA-256, once for its
/// chunk's, except in chunks found unchanged since the stack's last write), with the chunks
/// that were not stored yet compressed: the expensive part of a write, done before any
/// transaction starts.
pub struct Prepared<'b> {
    chunks: Vec<blob::Chunk<'b>>,
    /// Chunk `i` compressed, when it was not stored yet (see [`Sql::put_chunks`]).
    compressed: Vec<Option<Vec<u8>>>,
    /// Chunk `i` was stored already (chunks are never deleted).
    present: Vec<bool>,
    sha: Sha<'b>,
    size: i64,
}

/// A prepared body's SHA-256: known, or its [`blob::StateBody`]'s, which may still be being
/// computed on its own thread while the body is chunked and compressed.
enum Sha<'b> {
    Known([u8; 32]),
    Of(&'b blob::StateBody),
}

/// Chunks and hashes `body`; nothing is compressed yet (see [`Prepared::compress_missing`]).
pub fn prepare(body: &[u8]) -> Prepared<'_> {
    prepared(
        blob::split(body),
        Sha::Known(blob::sha256(body)),
        body.len(),
    )
}

/// [`prepare`] for a [`blob::StateBody`] (whose hashing may still run), taking the chunks it shares with `recent` (the
/// stack's last body written through this store, see [`blob::Recent`]) from there: those are
/// stored already (that write stored them, and chunks are never deleted).
pub fn prepare_body<'b>(body: &'b blob::StateBody, recent: Option<&blob::Recent>) -> Prepared<'b> {
    let bytes = body.bytes();
    let (chunks, reused) = blob::split_reusing(bytes, recent);
    let mut p = prepared(chunks, Sha::Of(body), bytes.len());
    p.present = reused;
    p
}

fn prepared<'b>(chunks: Vec<blob::Chunk<'b>>, sha: Sha<'b>, size: usize) -> Prepared<'b> {
    Prepared {
        compressed: chunks.iter().map(|_| None).collect(),
        present: vec![false; chunks.len()],
        chunks,
        sha,
        size: size as i64,
    }
}

/// Raw bytes of new chunks compressed before the transaction (what a typical write changes);
/// beyond it (a first write of a big state), `put_chunks` compresses each remaining chunk as
/// it inserts it, so a write never holds all its compressed chunks at once besides its body.
const PRECOMPRESS_BYTES: usize = 4 * 1024 * 1024;

impl Prepared<'_> {
    /// The body's SHA-256 (waiting for its hashing thread, see [`blob::StateBody::hashing`]).
    fn sha(&self) -> &[u8; 32] {
        match &self.sha {
            Sha::Known(sha) => sha,
            Sha::Of(body) => body.sha256(),
        }
    }

    /// Compresses the chunks `db` does not hold yet, up to [`PRECOMPRESS_BYTES`] of them.
    /// Chunks are never deleted, so what is stored now is stored at commit; `put_chunks`
    /// compresses any other missing one anyway.
    pub fn compress_missing(&mut self, db: &mut dyn Sql) -> Result<()> {
        let unknown: Vec<blob::Chunk<'_>> = self
            .chunks
            .iter()
            .zip(&self.present)
            .filter(|(_, stored)| !**stored)
            .map(|(c, _)| *c)
            .collect();
        let present = db.present_chunks(&unknown)?;
        let mut budget = PRECOMPRESS_BYTES;
        for ((c, z), stored) in self
            .chunks
            .iter()
            .zip(self.compressed.iter_mut())
            .zip(self.present.iter_mut())
        {
            *stored = *stored || present.contains(&c.hash);
            if *stored || z.is_some() || c.raw.len() > budget {
                continue;
            }
            budget -= c.raw.len();
            *z = Some(blob::compress(c.raw));
        }
        Ok(())
    }

    /// The length and hash of each chunk, in order (what [`blob::Recent::new`] takes).
    pub fn chunk_table(&self) -> Vec<(usize, [u8; 32])> {
        self.chunks.iter().map(|c| (c.raw.len(), c.hash)).collect()
    }
}

/// The version row both state writes and imports insert.
struct VersionRow<'a> {
    serial: i64,
    lineage: &'a str,
    author: &'a str,
    lock_id: &'a Option<String>,
    run_id: &'a Option<String>,
    reason: &'a Option<String>,
    restored_from: Option<i64>,
    created_at: i64,
}

fn insert_version(
    db: &mut dyn Sql,
    stack_id: i64,
    p: &Prepared<'_>,
    v: VersionRow<'_>,
    duplicate: impl FnOnce() -> String,
) -> Result<()> {
    // Only the chunks not found stored before the transaction: they cannot have gone since.
    let (chunks, compressed): (Vec<blob::Chunk<'_>>, Vec<Option<Vec<u8>>>) = p
        .chunks
        .iter()
        .zip(&p.compressed)
        .zip(&p.present)
        .filter(|(_, stored)| !**stored)
        .map(|((c, z), _)| (*c, z.clone()))
        .unzip();
    db.put_chunks(&chunks, &compressed)?;
    db.execute(
        "INSERT INTO versions (stack_id, serial, lineage, sha256, size, chunks, author, lock_id, run_id, reason, restored_from, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        params![stack_id, v.serial, v.lineage, &p.sha()[..], p.size, blob::chunk_list(&p.chunks), v.author, v.lock_id, v.run_id, v.reason, v.restored_from, v.created_at],
    )
    .map_err(|e| unique_is_conflict(e, duplicate))?;
    Ok(())
}

/// Checked before any transaction: a serial or `restored_from` a BIGINT cannot hold.
pub fn check_attempt(attempt: &WriteAttempt) -> Result<(i64, Option<i64>)> {
    Ok((
        bigint(attempt.serial, "serial")?,
        attempt
            .restored_from
            .map(|v| bigint(v, "restored_from"))
            .transpose()?,
    ))
}

/// Runs the caller's firewall against the stack's locked state and, if it says so, stores the
/// attempt, consumes the grants it used and appends its audit event, all in `db`'s transaction.
pub fn write_state(
    db: &mut dyn Sql,
    stack: &str,
    attempt: &WriteAttempt,
    p: &Prepared<'_>,
    check: &mut WriteCheck<'_>,
) -> Result<WriteResult> {
    let (serial, restored_from) = check_attempt(attempt)?;
    let (stack_id, record) = lock_stack(db, stack)?;
    if let Some(refusal) = record.refuse_if_archived() {
        return Ok(WriteResult::Refused(refusal));
    }
    let (lock, current) = lock_and_current_version(db, stack_id, stack)?;
    let grants = grants_of(db, stack_id, stack, true)?;
    let decision = {
        // The firewall may load the current bytes through the same transaction.
        let cell = RefCell::new(&mut *db);
        let load_current = || match &current {
            Some(v) => version_bytes_of(&mut **cell.borrow_mut(), stack_id, v.serial),
            None => Err(StoreError::NotFound("no current version".into())),
        };
        let ctx = WriteContext {
            stack: &record,
            lock: lock.as_ref(),
            current: current.as_ref(),
            grants: &grants,
            load_current: &load_current,
            sha256: p.sha(),
        };
        check(&ctx)
    };
    let (consume, audit) = match decision {
        Err(refusal) => return Ok(WriteResult::Refused(refusal)),
        Ok(WriteDecision::Unchanged) => return Ok(WriteResult::Unchanged),
        Ok(WriteDecision::Store {
            consume_grants,
            audit,
        }) => (consume_grants, audit),
    };
    let now = now_ms();
    let row = VersionRow {
        serial,
        lineage: &attempt.lineage,
        author: &attempt.author,
        lock_id: &attempt.lock_id,
        run_id: &attempt.run_id,
        reason: &attempt.reason,
        restored_from,
        created_at: now,
    };
    insert_version(db, stack_id, p, row, || {
        format!("serial {} already exists", attempt.serial)
    })?;
    if record.lineage.is_none() {
        db.execute(
            "UPDATE stacks SET lineage = $2 WHERE id = $1",
            params![stack_id, &attempt.lineage],
        )?;
    }
    for g in &consume {
        db.execute(
            "UPDATE grants SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL",
            params![g, now],
        )?;
    }
    append_stack_audit(db, stack, &audit)?;
    Ok(WriteResult::Stored(attempt.version_meta(
        stack,
        p.sha(),
        now,
    )))
}

/// Inserts one exported version verbatim, after checking its bytes against its metadata.
pub fn import_version(db: &mut dyn Sql, meta: &VersionMeta, p: &Prepared<'_>) -> Result<()> {
    let (stack_id, _) = lock_stack(db, &meta.stack)?;
    let row = VersionRow {
        serial: bigint(meta.serial, "serial")?,
        lineage: &meta.lineage,
        author: &meta.author,
        lock_id: &meta.lock_id,
        run_id: &meta.run_id,
        reason: &meta.reason,
        restored_from: meta
            .restored_from
            .map(|v| bigint(v, "restored_from"))
            .transpose()?,
        created_at: meta.created_at,
    };
    insert_version(db, stack_id, p, row, || {
        format!("stack {} serial {} already exists", meta.stack, meta.serial)
    })
}

/// `Corrupt` unless `bytes` match the SHA-256 and size recorded in `meta`.
pub fn check_import_bytes(meta: &VersionMeta, p: &Prepared<'_>) -> Result<()> {
    if hex::encode(p.sha()) != meta.sha256 || p.size as u64 != meta.size {
        return Err(StoreError::Corrupt(format!(
            "stack {} serial {}: the bytes do not match the recorded SHA-256 and size",
            meta.stack, meta.serial
        )));
    }
    Ok(())
}

// ---- locks and grants ----

pub fn lock_of(db: &mut dyn Sql, stack_id: i64) -> Result<Option<LockRecord>> {
    db.query_opt(
        &format!("SELECT {LOCK_COLS} FROM locks WHERE stack_id = $1"),
        params![stack_id],
    )?
    .map(|r| lock_from_row(&r, 0))
    .transpose()
}

const LOCK_COLS: &str = "lock_id, info, operation, owner_token, owner, created_at";

/// The lock in `r`'s columns from `at` on ([`LOCK_COLS`]).
fn lock_from_row(r: &Row, at: usize) -> Result<LockRecord> {
    Ok(LockRecord {
        id: r.text(at)?,
        info: r.bytes(at + 1)?,
        operation: r.text(at + 2)?,
        owner_token: r.text(at + 3)?,
        owner: r.text(at + 4)?,
        created_at: r.i64(at + 5)?,
    })
}

/// The stack's row and its lock, in one query, for a check outside the transaction that
/// decides (a read: `None` if there is no such stack). Not for a transaction that locks the
/// stack: under READ COMMITTED a statement that waits for a row lock still sees the joined rows
/// of the snapshot it started with, so the lock must be read by a statement after
/// [`lock_stack`] (`conformance::concurrent_locks_have_one_winner` fails otherwise).
pub fn stack_and_lock(
    db: &mut dyn Sql,
    name: &str,
) -> Result<Option<(i64, StackRecord, Option<LockRecord>)>> {
    let stack_cols: Vec<String> = STACK_COLS.split(", ").map(|c| format!("s.{c}")).collect();
    let lock_cols: Vec<String> = LOCK_COLS.split(", ").map(|c| format!("l.{c}")).collect();
    let sql = format!(
        "SELECT {}, {} FROM stacks s LEFT JOIN locks l ON l.stack_id = s.id WHERE s.name = $1",
        stack_cols.join(", "),
        lock_cols.join(", "),
    );
    let Some(r) = db.query_opt(&sql, params![name])? else {
        return Ok(None);
    };
    let (id, stack) = stack_from_row(&r)?;
    let at = stack_cols.len();
    let lock = match r.opt_text(at)? {
        Some(_) => Some(lock_from_row(&r, at)?),
        None => None,
    };
    Ok(Some((id, stack, lock)))
}

/// The stack's lock and current version, in one statement; after [`lock_stack`] (a statement
/// that starts once the stack's row is held sees every change committed before).
fn lock_and_current_version(
    db: &mut dyn Sql,
    stack_id: i64,
    stack: &str,
) -> Result<(Option<LockRecord>, Option<VersionMeta>)> {
    let lock_cols: Vec<String> = LOCK_COLS.split(", ").map(|c| format!("l.{c}")).collect();
    let version_cols: Vec<String> = VERSION_COLS.split(", ").map(|c| format!("v.{c}")).collect();
    let sql = format!(
        "SELECT {}, {} FROM stacks s LEFT JOIN locks l ON l.stack_id = s.id \
         LEFT JOIN (SELECT {VERSION_COLS} FROM versions WHERE stack_id = $1 ORDER BY serial DESC LIMIT 1) v ON 1 = 1 \
         WHERE s.id = $1",
        lock_cols.join(", "),
        version_cols.join(", "),
    );
    let r = db
        .query_opt(&sql, params![stack_id])?
        .ok_or_else(|| StoreError::NotFound(format!("stack {stack}")))?;
    let lock = match r.opt_text(0)? {
        Some(_) => Some(lock_from_row(&r, 0)?),
        None => None,
    };
    let at = lock_cols.len();
    let current = match r.opt_i64(at)? {
        Some(_) => Some(version_from_row_at(stack, &r, at)?),
        None => None,
    };
    Ok((lock, current))
}

const GRANT_COLS: &str =
    "id, addresses, reason, created_by, created_at, expires_at, consumed_at, run_id";

/// Revokes every live token whose `column` (`parent_id`: the tokens minted from token `key`;
/// `user_name`: the tokens of user `key`) is `key`, and every token minted from those, at any
/// depth; one `token.revoke_cascade` audit event names them (none if there were none).
fn revoke_tree(
    db: &mut dyn Sql,
    column: &'static str,
    key: &str,
    now: i64,
    audit: &NewAudit,
) -> Result<()> {
    let mut revoked = db
        .query(
            &format!(
                "WITH RECURSIVE d(id) AS (SELECT id FROM tokens WHERE {column} = $1 UNION SELECT t.id FROM tokens t JOIN d ON t.parent_id = d.id) \
                 UPDATE tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND id IN (SELECT id FROM d) RETURNING id"
            ),
            params![key, now],
        )?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<Vec<String>>>()?;
    if !revoked.is_empty() {
        revoked.sort();
        append_audit(db, &audit.cascade(key, &revoked))?;
    }
    Ok(())
}

pub fn grants_of(
    db: &mut dyn Sql,
    stack_id: i64,
    stack: &str,
    active_only: bool,
) -> Result<Vec<GrantRecord>> {
    let rows = if active_only {
        db.query(
            &format!("SELECT {GRANT_COLS} FROM grants WHERE stack_id = $1 AND consumed_at IS NULL AND expires_at > $2 ORDER BY created_at DESC, id"),
            params![stack_id, now_ms()],
        )?
    } else {
        db.query(
            &format!(
                "SELECT {GRANT_COLS} FROM grants WHERE stack_id = $1 ORDER BY created_at DESC, id"
            ),
            params![stack_id],
        )?
    };
    rows.iter()
        .map(|r| {
            Ok(GrantRecord {
                id: r.text(0)?,
                stack: stack.to_owned(),
                addresses: json_col(&r.text(1)?, "grant addresses")?,
                reason: r.text(2)?,
                created_by: r.text(3)?,
                created_at: r.i64(4)?,
                expires_at: r.i64(5)?,
                consumed_at: r.opt_i64(6)?,
                run_id: r.opt_text(7)?,
            })
        })
        .collect()
}

/// Inserts a grant; `consumed_at` is `None` for a new one. A duplicate id is a `Conflict`.
pub fn insert_grant(db: &mut dyn Sql, g: &GrantRecord, live: bool) -> Result<()> {
    let (stack_id, _) = if live {
        lock_live_stack(db, &g.stack)?
    } else {
        lock_stack(db, &g.stack)?
    };
    db.execute(
        "INSERT INTO grants (id, stack_id, addresses, reason, created_by, created_at, expires_at, consumed_at, run_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        params![&g.id, stack_id, to_json(&g.addresses), &g.reason, &g.created_by, g.created_at, g.expires_at, g.consumed_at, &g.run_id],
    )
    .map_err(|e| unique_is_conflict(e, || format!("grant {} already exists", g.id)))?;
    Ok(())
}

// ---- audit ----

/// The columns of an audit record, in the order `audit_from_row` reads them.
const AUDIT_COLS: &str =
    "seq, at, actor, action, stack, outcome, detail, prev_hash, hash, chain, chain_seq";

/// The chain an event belongs to: its stack's, if the stack exists (a denial may name a stack
/// that does not, and the number of chains stays the number of stacks), else the global one.
fn chain_of(db: &mut dyn Sql, e: &NewAudit) -> Result<String> {
    Ok(match &e.stack {
        Some(name) if stack_row(db, name)?.is_some() => name.clone(),
        _ => GLOBAL_CHAIN.to_owned(),
    })
}

/// Locks `chain`'s head row until commit and returns its (position, hash). Only appends to the
/// same chain take turns here; a stack's appends already hold its stack row. The lock order is
/// stack row, run row, chunks, then chain heads.
fn chain_head(db: &mut dyn Sql, chain: &str) -> Result<(i64, String)> {
    let sql = format!(
        "SELECT seq, hash FROM audit_heads WHERE chain = $1{}",
        db.for_update()
    );
    if let Some(r) = db.query_opt(&sql, params![chain])? {
        return Ok((r.i64(0)?, r.text(1)?));
    }
    create_chain_head(db, chain)?;
    let r = db
        .query_opt(&sql, params![chain])?
        .ok_or_else(|| StoreError::Backend(format!("audit chain {chain:?} has no head row")))?;
    Ok((r.i64(0)?, r.text(1)?))
}

/// A chain's first record: a concurrent first append makes this insert wait, then do nothing.
fn create_chain_head(db: &mut dyn Sql, chain: &str) -> Result<()> {
    db.execute(
        "INSERT INTO audit_heads (chain, seq, hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING",
        params![chain, GENESIS],
    )?;
    Ok(())
}

/// [`chain_head`] and the next global position, taken after the head row is locked (so
/// positions grow in the order a chain's records are appended): one round trip on PostgreSQL.
fn chain_head_and_seq(db: &mut dyn Sql, chain: &str) -> Result<(i64, String, i64)> {
    if let Some(head) = db.lock_audit_head(chain)? {
        return Ok(head);
    }
    create_chain_head(db, chain)?;
    db.lock_audit_head(chain)?
        .ok_or_else(|| StoreError::Backend(format!("audit chain {chain:?} has no head row")))
}

/// Inserts a record; a chained one also moves its chain's head to it (one statement on
/// PostgreSQL). Both statements take the same parameters: `$9` hash, `$10` chain, `$11` position.
const INSERT_AUDIT: &str = "INSERT INTO audit (seq, at, actor, action, stack, outcome, detail, prev_hash, hash, chain, chain_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const ADVANCE_AUDIT_HEAD: &str = "UPDATE audit_heads SET seq = $11, hash = $9 WHERE chain = $10";

fn insert_audit(db: &mut dyn Sql, r: &AuditRecord) -> Result<()> {
    let params = params![
        r.seq,
        &r.at,
        &r.actor,
        &r.action,
        &r.stack,
        &r.outcome,
        r.detail.to_string(),
        &r.prev_hash,
        &r.hash,
        &r.chain,
        r.chain_seq
    ];
    let inserted = if r.chain.is_some() && r.chain_seq.is_some() {
        db.execute_then(INSERT_AUDIT, ADVANCE_AUDIT_HEAD, params)
    } else {
        db.execute(INSERT_AUDIT, params).map(drop)
    };
    inserted
        .map_err(|e| unique_is_conflict(e, || format!("audit record {} already exists", r.seq)))?;
    Ok(())
}

/// Appends an audit event inside the caller's transaction, at the end of its chain (its
/// stack's, or the global one). Appends to different chains, from any replica, do not wait for
/// each other; appends to one chain take turns on its head row until commit, so no chain forks.
pub fn append_audit(db: &mut dyn Sql, e: &NewAudit) -> Result<AuditRecord> {
    let chain = chain_of(db, e)?;
    append_to_chain(db, &chain, e)
}

/// [`append_audit`] in a transaction that holds stack `locked`'s row ([`lock_stack`]): an
/// event about that stack goes to its chain without looking the stack up again.
pub fn append_stack_audit(db: &mut dyn Sql, locked: &str, e: &NewAudit) -> Result<AuditRecord> {
    match e.stack.as_deref() {
        Some(stack) if stack == locked => append_to_chain(db, locked, e),
        _ => append_audit(db, e),
    }
}

fn append_to_chain(db: &mut dyn Sql, chain: &str, e: &NewAudit) -> Result<AuditRecord> {
    let (head_seq, prev_hash, seq) = chain_head_and_seq(db, chain)?;
    let chain_seq = head_seq + 1;
    let at = rfc3339(now_ms());
    let hash = chained_hash(
        &prev_hash,
        Position {
            seq,
            chain,
            chain_seq,
        },
        &at,
        &e.actor,
        &e.action,
        e.stack.as_deref(),
        &e.outcome,
        &e.detail,
    );
    let record = AuditRecord {
        seq,
        chain: Some(chain.to_owned()),
        chain_seq: Some(chain_seq),
        at,
        actor: e.actor.clone(),
        action: e.action.clone(),
        stack: e.stack.clone(),
        outcome: e.outcome.clone(),
        detail: e.detail.clone(),
        prev_hash,
        hash,
    };
    insert_audit(db, &record)?;
    Ok(record)
}

/// Most stack chains one seal names; more wait for the next seal.
const MAX_SEALED_CHAINS: i64 = 1000;

/// Appends a seal to the global chain naming the head of every stack chain that grew since the
/// last seal (at most [`MAX_SEALED_CHAINS`]); `None` when none did. Sealers take turns on the
/// global chain's head, so two replicas sealing at once seal each head once.
pub fn seal_audit(db: &mut dyn Sql) -> Result<Option<AuditRecord>> {
    chain_head(db, GLOBAL_CHAIN)?;
    let rows = db.query(
        "SELECT h.chain, h.seq, h.hash FROM audit_heads h LEFT JOIN audit_sealed s ON s.chain = h.chain \
         WHERE h.chain <> $1 AND h.seq > COALESCE(s.seq, 0) ORDER BY h.chain LIMIT $2",
        params![GLOBAL_CHAIN, MAX_SEALED_CHAINS],
    )?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut heads = serde_json::Map::new();
    for r in &rows {
        let (chain, seq) = (r.text(0)?, r.i64(1)?);
        db.execute(
            "INSERT INTO audit_sealed (chain, seq) VALUES ($1, $2) ON CONFLICT (chain) DO UPDATE SET seq = $2",
            params![&chain, seq],
        )?;
        heads.insert(
            chain,
            serde_json::json!({ "chain_seq": seq, "hash": r.text(2)? }),
        );
    }
    let event = NewAudit {
        actor: "system".into(),
        action: SEAL_ACTION.into(),
        stack: None,
        outcome: "ok".into(),
        detail: serde_json::json!({ "heads": heads }),
    };
    append_to_chain(db, GLOBAL_CHAIN, &event).map(Some)
}

/// Appends an exported record verbatim; `Conflict` unless it extends the stored chains: a
/// legacy record only the legacy chain (before any chained record), a chained record its chain.
pub fn import_audit(db: &mut dyn Sql, r: &AuditRecord) -> Result<()> {
    let last = db
        .query_opt(
            "SELECT seq, chain FROM audit ORDER BY seq DESC LIMIT 1",
            &[],
        )?
        .map(|row| Ok::<_, StoreError>((row.i64(0)?, row.opt_text(1)?)))
        .transpose()?;
    let refuse = |why: String| {
        Err(StoreError::Conflict(format!(
            "audit record {} does not extend the stored chain: {why}",
            r.seq
        )))
    };
    if let Some((last_seq, _)) = &last {
        if r.seq <= *last_seq {
            return refuse(format!(
                "the stored log already reaches position {last_seq}"
            ));
        }
    }
    match (&r.chain, r.chain_seq) {
        (None, None) => {
            let (head_seq, head_hash) = chain_head(db, GLOBAL_CHAIN)?;
            let last_seq = match last {
                Some((_, Some(_))) => {
                    return refuse("a legacy record after chained records".into())
                }
                Some((s, None)) => s,
                None => 0,
            };
            if head_seq != 0 || r.seq != last_seq + 1 || r.prev_hash != head_hash {
                return refuse(format!("the legacy chain's head is {last_seq}"));
            }
        }
        (Some(chain), Some(chain_seq)) => {
            let (head_seq, head_hash) = chain_head(db, chain)?;
            if chain_seq != head_seq + 1 || r.prev_hash != head_hash {
                return refuse(format!("chain {chain:?}'s head is at {head_seq}"));
            }
        }
        _ => return refuse("a chain without a position, or the reverse".into()),
    }
    // Linked is not enough: the record's content must be what its hash covers.
    if r.expected_hash() != r.hash {
        return Err(StoreError::Corrupt(format!(
            "audit record {} does not match its hash",
            r.seq
        )));
    }
    if r.chain.is_none() {
        // The global chain continues the legacy chain: its head follows the legacy head.
        db.execute(
            "UPDATE audit_heads SET hash = $2 WHERE chain = $1",
            params![GLOBAL_CHAIN, &r.hash],
        )?;
    }
    if r.action == SEAL_ACTION {
        for (chain, seq, _) in r.sealed_heads().unwrap_or_default() {
            db.execute(
                "INSERT INTO audit_sealed (chain, seq) VALUES ($1, $2) ON CONFLICT (chain) DO UPDATE SET seq = $2",
                params![&chain, seq],
            )?;
        }
    }
    insert_audit(db, r)?;
    db.audit_seq_at_least(r.seq)
}

/// Runs `each` over every audit record in global order, a page at a time; the caller runs it in
/// one snapshot (`Engine::read_snapshot`: on PostgreSQL a record may commit after one with a
/// higher position, so pages read at different moments could miss it); stops early when
/// `each` returns `false`.
pub fn audit_walk(
    db: &mut dyn Sql,
    each: &mut dyn FnMut(Vec<AuditRecord>) -> Result<bool>,
) -> Result<()> {
    let mut after = 0;
    loop {
        let page = audit_events(db, after, 1000)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = last.seq;
        if !each(page)? {
            return Ok(());
        }
    }
}

pub fn audit_events(db: &mut dyn Sql, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
    db.query(
        &format!("SELECT {AUDIT_COLS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"),
        params![after, i64::from(limit)],
    )?
    .iter()
    .map(audit_from_row)
    .collect()
}

/// An audit record from `SELECT {AUDIT_COLS}`.
fn audit_from_row(r: &Row) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.i64(0)?,
        chain: r.opt_text(9)?,
        chain_seq: r.opt_i64(10)?,
        at: r.text(1)?,
        actor: r.text(2)?,
        action: r.text(3)?,
        stack: r.opt_text(4)?,
        outcome: r.text(5)?,
        detail: json_col(&r.text(6)?, "audit detail")?,
        prev_hash: r.text(7)?,
        hash: r.text(8)?,
    })
}

/// The `WHERE` clause and parameters of an [`AuditFilter`]: only the filters that are set.
fn audit_where(db: &dyn Sql, f: &AuditFilter) -> (String, Vec<crate::sql::Value>) {
    let mut conds: Vec<String> = vec!["TRUE".into()];
    let mut ps: Vec<crate::sql::Value> = Vec::new();
    let add = |ps: &mut Vec<crate::sql::Value>, v: crate::sql::Value| {
        ps.push(v);
        format!("${}", ps.len())
    };
    if let Some(b) = f.before {
        let p = add(&mut ps, b.into());
        conds.push(format!("seq < {p}"));
    }
    // Seals (one a second while stacks are written) are bookkeeping of the chains, not actions
    // anyone took: listings show them only when asked for by action.
    if f.action.is_none() {
        let p = add(&mut ps, SEAL_ACTION.into());
        conds.push(format!("action <> {p}"));
    }
    for (column, value) in [
        ("stack", &f.stack),
        ("action", &f.action),
        ("outcome", &f.outcome),
    ] {
        if let Some(v) = value {
            let p = add(&mut ps, v.into());
            conds.push(format!("{column} = {p}"));
        }
    }
    if let Some(a) = &f.actor {
        let p = add(&mut ps, a.into());
        conds.push(db.contains("actor", &p));
    }
    if let Some(t) = &f.since {
        let p = add(&mut ps, t.into());
        conds.push(format!("at >= {p}"));
    }
    if let Some(t) = &f.until {
        let p = add(&mut ps, t.into());
        conds.push(format!("at < {p}"));
    }
    (conds.join(" AND "), ps)
}

/// Audit events matching `f`, newest first, at most `limit`.
pub fn audit_search(db: &mut dyn Sql, f: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>> {
    let (cond, mut ps) = audit_where(db, f);
    ps.push(i64::from(limit).into());
    let sql = format!(
        "SELECT {AUDIT_COLS} FROM audit WHERE {cond} ORDER BY seq DESC LIMIT ${}",
        ps.len()
    );
    db.query(&sql, &ps)?.iter().map(audit_from_row).collect()
}

/// How many audit events match `f`.
pub fn audit_count(db: &mut dyn Sql, f: &AuditFilter) -> Result<u64> {
    let (cond, ps) = audit_where(db, f);
    let n = db
        .query_opt(&format!("SELECT COUNT(*) FROM audit WHERE {cond}"), &ps)?
        .map(|r| r.i64(0))
        .transpose()?
        .unwrap_or(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

// ---- runs ----

/// A run's artifacts hashed and compressed, before any transaction starts.
pub type PreparedArtifacts<'n> = Vec<(&'n str, [u8; 32], i64, Vec<u8>)>;

pub fn prepare_artifacts<'n>(artifacts: &[(&'n str, &[u8])]) -> PreparedArtifacts<'n> {
    artifacts
        .iter()
        .map(|(n, b)| (*n, blob::sha256(b), b.len() as i64, blob::compress(b)))
        .collect()
}

/// Inserts a run and its artifacts; `audit` is `None` for a backup import, whose history is
/// the imported audit chain. A terminal run's binary plan ([`PLAN_ARTIFACT`]) is stored as a
/// tombstone (a run created `denied` or `no_changes`, or imported terminal with its bytes from
/// an older backup); `tombstones` are the imported ones of purged artifacts.
pub fn insert_run(
    db: &mut dyn Sql,
    run: &RunRecord,
    artifacts: &PreparedArtifacts<'_>,
    tombstones: &[ArtifactInfo],
    audit: Option<&NewAudit>,
) -> Result<()> {
    let record = serde_json::to_string(run).map_err(|e| StoreError::Backend(e.to_string()))?;
    let imported = audit.is_none();
    // Checked before anything is written: only a terminal run's binary plan is a tombstone,
    // and the binary plan is the run's (an import never attaches other bytes to a run).
    for t in tombstones {
        if !run.status.purges(&t.name) || t.purged_at.is_none() {
            return Err(StoreError::Corrupt(format!(
                "run {} ({}): only a terminal run's binary plan ({PLAN_ARTIFACT}) can be a tombstone, not {}",
                run.id,
                run.status.as_str(),
                t.name
            )));
        }
    }
    let planned = artifacts
        .iter()
        .map(|(n, sha, _, _)| (*n, hex::encode(sha)))
        .chain(
            tombstones
                .iter()
                .map(|t| (t.name.as_str(), t.sha256.clone())),
        );
    for (name, sha) in planned {
        if imported && name == PLAN_ARTIFACT && sha != run.plan_sha256 {
            return Err(StoreError::Corrupt(format!(
                "run {}: its binary plan's SHA-256 {sha} is not the run's plan {}",
                run.id, run.plan_sha256
            )));
        }
    }
    // A backup import (no audit of its own) restores runs of archived stacks too.
    let (stack_id, _) = if audit.is_some() {
        lock_live_stack(db, &run.stack)?
    } else {
        lock_stack(db, &run.stack)?
    };
    db.execute(
        "INSERT INTO runs (id, stack_id, status, created_at, record, author_user) VALUES ($1, $2, $3, $4, $5, $6)",
        params![
            &run.id,
            stack_id,
            run.status.as_str(),
            run.created_at,
            record,
            &run.author_user
        ],
    )
    .map_err(|e| unique_is_conflict(e, || format!("run {} already exists", run.id)))?;
    let now = now_ms();
    let mut purged = None;
    for (name, sha, len, data) in artifacts {
        let purge = run.status.purges(name);
        let (data, purged_at) = if purge {
            purged = Some(purged_detail(sha, *len));
            (Vec::new(), Some(now))
        } else {
            (data.clone(), None)
        };
        insert_artifact(db, &run.id, name, sha, *len, data, purged_at)?;
    }
    for t in tombstones {
        let sha = <[u8; 32]>::try_from(hex::decode(&t.sha256).unwrap_or_default().as_slice())
            .map_err(|_| {
                StoreError::Corrupt(format!("run {} artifact {}: not a SHA-256", run.id, t.name))
            })?;
        let len = i64::try_from(t.len).map_err(|_| {
            StoreError::Corrupt(format!(
                "run {} artifact {}: length out of range",
                run.id, t.name
            ))
        })?;
        insert_artifact(db, &run.id, &t.name, &sha, len, Vec::new(), t.purged_at)?;
    }
    if let Some(audit) = audit {
        let mut audit = audit.clone();
        if let (Some(p), Some(detail)) = (purged, audit.detail.as_object_mut()) {
            detail.insert("plan_purged".into(), p);
        }
        append_audit(db, &audit)?;
    }
    Ok(())
}

fn insert_artifact(
    db: &mut dyn Sql,
    run: &str,
    name: &str,
    sha: &[u8; 32],
    len: i64,
    data: Vec<u8>,
    purged_at: Option<i64>,
) -> Result<()> {
    db.execute(
        "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data, purged_at) VALUES ($1, $2, $3, $4, $5, $6)",
        params![run, name, &sha[..], len, data, purged_at],
    )
    .map_err(|e| unique_is_conflict(e, || format!("run {run} has two artifacts named {name}")))?;
    Ok(())
}

/// What a run's audit event says of its purged binary plan.
fn purged_detail(sha: &[u8], len: i64) -> serde_json::Value {
    serde_json::json!({"artifact": PLAN_ARTIFACT, "sha256": hex::encode(sha), "bytes": len})
}

/// Purges run `id`'s binary plan, in the transaction that has just made the run terminal: its
/// bytes go, its tombstone (name, hash, length, purge time) stays; the schema's triggers allow
/// this change and no other. `None` if there was nothing left to purge.
fn purge_plan(db: &mut dyn Sql, id: &str, now: i64) -> Result<Option<serde_json::Value>> {
    let Some(row) = db.query_opt(
        "SELECT sha256, raw_len FROM run_artifacts WHERE run_id = $1 AND name = $2 AND purged_at IS NULL",
        params![id, PLAN_ARTIFACT],
    )?
    else {
        return Ok(None);
    };
    let (sha, len) = (row.bytes(0)?, row.i64(1)?);
    // The freed pages are zeroed (SQLite), not left holding the plan until reused.
    db.erase_freed(true)?;
    let purged = db.execute(
        "UPDATE run_artifacts SET data = $3, purged_at = $4 WHERE run_id = $1 AND name = $2 AND purged_at IS NULL",
        params![id, PLAN_ARTIFACT, Vec::<u8>::new(), now],
    );
    db.erase_freed(false)?;
    purged?;
    Ok(Some(purged_detail(&sha, len)))
}

pub fn put_run_artifact(db: &mut dyn Sql, id: &str, name: &str, bytes: &[u8]) -> Result<()> {
    // The foreign key waits for a transition holding the run's row (PostgreSQL), then checks.
    db.execute(
        "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data) VALUES ($1, $2, $3, $4, $5)",
        params![id, name, &blob::sha256(bytes)[..], bytes.len() as i64, blob::compress(bytes)],
    )
    .map_err(|e| match e {
        DbError::ForeignKey => StoreError::NotFound(format!("run {id}")),
        e => unique_is_conflict(e, || format!("run {id} already has an artifact named {name}")),
    })?;
    Ok(())
}

pub fn run_of(db: &mut dyn Sql, id: &str, for_update: bool) -> Result<Option<RunRecord>> {
    let lock = if for_update { db.for_update() } else { "" };
    db.query_opt(
        &format!("SELECT record FROM runs WHERE id = $1{lock}"),
        params![id],
    )?
    .map(|r| json_col(&r.text(0)?, "run record"))
    .transpose()
}

/// Runs scanned at most by one listing filtered on the records ([`RunFilter::on_records`]);
/// a listing filtered in SQL only (stack, status, or nothing: a backup's export) returns every
/// run up to its limit.
const MAX_RUNS_SCANNED: i64 = 20_000;

/// Runs matching `f`, newest first, at most `limit`: stack and status in SQL, the rest on the
/// records, a page at a time.
pub fn runs_where(db: &mut dyn Sql, f: &RunFilter, limit: u32) -> Result<Vec<RunRecord>> {
    let mut conds = vec!["TRUE".to_owned()];
    let mut ps: Vec<crate::sql::Value> = Vec::new();
    if let Some(name) = &f.stack {
        let (stack_id, _) = require_stack(db, name)?;
        ps.push(stack_id.into());
        conds.push(format!("stack_id = ${}", ps.len()));
    }
    if let Some(status) = f.status {
        ps.push(status.as_str().into());
        conds.push(format!("status = ${}", ps.len()));
    }
    let page: i64 = 500;
    let sql = format!(
        "SELECT record FROM runs WHERE {} ORDER BY created_at DESC, id LIMIT ${} OFFSET ${}",
        conds.join(" AND "),
        ps.len() + 1,
        ps.len() + 2
    );
    let mut out = Vec::new();
    let mut offset = 0;
    let max_scanned = if f.on_records() {
        MAX_RUNS_SCANNED
    } else {
        i64::MAX
    };
    while out.len() < limit as usize && offset < max_scanned {
        let mut p = ps.clone();
        p.push(page.into());
        p.push(offset.into());
        let rows = db.query(&sql, &p)?;
        for r in &rows {
            let run: RunRecord = json_col(&r.text(0)?, "run record")?;
            if f.matches(&run) && out.len() < limit as usize {
                out.push(run);
            }
        }
        if (rows.len() as i64) < page {
            break;
        }
        offset += page;
    }
    Ok(out)
}

pub fn run_artifact(db: &mut dyn Sql, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
    let Some(row) = db.query_opt(
        "SELECT sha256, raw_len, data, purged_at FROM run_artifacts WHERE run_id = $1 AND name = $2",
        params![id, name],
    )?
    else {
        return Ok(None);
    };
    let (sha, raw_len, data) = (row.bytes(0)?, row.i64(1)?, row.bytes(2)?);
    if let Some(at) = row.opt_i64(3)? {
        return Err(StoreError::Purged(format!(
            "run {id}'s artifact {name} was purged at {} (SHA-256 {}, {raw_len} bytes): the run is terminal, so its binary plan can never be applied and is not kept; its plan JSON (which holds the planned values too, sensitive ones in clear, as Terraform writes it) and logs are (airlock run show {id})",
            airlock_core::time::rfc3339(at),
            hex::encode(&sha)
        )));
    }
    let raw = blob::decompress(&data, raw_len.max(0) as usize)
        .map_err(|e| StoreError::Corrupt(format!("run {id} artifact {name}: {e}")))?;
    if blob::sha256(&raw)[..] != sha[..] {
        return Err(StoreError::Corrupt(format!(
            "run {id} artifact {name} does not match its SHA-256"
        )));
    }
    Ok(Some(raw))
}

pub fn run_artifact_names(db: &mut dyn Sql, id: &str) -> Result<Vec<String>> {
    db.query(
        "SELECT name FROM run_artifacts WHERE run_id = $1 ORDER BY name",
        params![id],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

pub fn run_artifact_infos(db: &mut dyn Sql, id: &str) -> Result<Vec<ArtifactInfo>> {
    db.query(
        "SELECT name, sha256, raw_len, purged_at FROM run_artifacts WHERE run_id = $1 ORDER BY name",
        params![id],
    )?
    .iter()
    .map(|r| {
        Ok(ArtifactInfo {
            name: r.text(0)?,
            sha256: hex::encode(r.bytes(1)?),
            len: u64::try_from(r.i64(2)?).unwrap_or(0),
            purged_at: r.opt_i64(3)?,
        })
    })
    .collect()
}

/// Judges and records a run transition: the stack's row, then the run's, are locked; the
/// judgement sees the newest committed run and the stack's current version.
pub fn update_run(db: &mut dyn Sql, id: &str, update: &mut RunUpdate<'_>) -> Result<RunTransition> {
    let not_found = || StoreError::NotFound(format!("run {id}"));
    // A run never moves to another stack, so its stack can be looked up before either lock.
    let stack_name = db
        .query_opt(
            "SELECT s.name FROM runs r JOIN stacks s ON s.id = r.stack_id WHERE r.id = $1",
            params![id],
        )?
        .ok_or_else(not_found)?
        .text(0)?;
    let (stack_id, stack) = lock_stack(db, &stack_name)?;
    if let Some(refusal) = stack.refuse_if_archived() {
        return Ok(Err(refusal));
    }
    let run = run_of(db, id, true)?.ok_or_else(not_found)?;
    let current = current_version_of(db, stack_id, &stack.name)?;
    let revoked = revoked_approvals(db, &run)?;
    let (record, result) = match update(&run, &stack, current.as_ref(), &revoked) {
        Ok((new, audit)) => (Some((new.clone(), audit)), Ok(new)),
        Err(RunRefusal { refusal, record }) => (record.map(|b| *b), Err(refusal)),
    };
    if let Some((new, mut audit)) = record {
        let json = serde_json::to_string(&new).map_err(|e| StoreError::Backend(e.to_string()))?;
        db.execute(
            "UPDATE runs SET status = $2, record = $3 WHERE id = $1",
            params![id, new.status.as_str(), json],
        )?;
        // A terminal run's binary plan can never be applied again: purged with the
        // transition that ends the run, and recorded in its audit event.
        if new.status.is_terminal() {
            if let Some(purged) = purge_plan(db, id, now_ms())? {
                if let Some(detail) = audit.detail.as_object_mut() {
                    detail.insert("plan_purged".into(), purged);
                }
            }
        }
        append_audit(db, &audit)?;
        if new.status == RunStatus::Applying && new.apply_alive_until != run.apply_alive_until {
            if let (Some(token), Some(until)) = (&new.apply_token, new.apply_alive_until) {
                keep_run_token_until(db, id, token, until)?;
            }
        }
        if run.status == RunStatus::Applying && new.status != RunStatus::Applying {
            // A run's removal grant ends with its apply, and its run-bound token (`finish`
            // also revokes it, audited, once this has committed).
            let now = now_ms();
            db.execute(
                "UPDATE grants SET consumed_at = $2 WHERE run_id = $1 AND consumed_at IS NULL",
                params![id, now],
            )?;
            db.execute(
                "UPDATE tokens SET expires_at = $2 WHERE run_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
                params![id, now],
            )?;
        }
    }
    Ok(result)
}

/// An applying run's deadline moved to `until` (`run_rules::keep_alive`): its run-bound token
/// and removal grant expire then, the token no later than the token that minted it (as when it
/// was minted). Set with the record, so the run and its credentials never disagree on whether
/// the apply may go on. (At the start of an apply the token does not exist yet: the handler
/// mints it, and the grant, with the run's deadline.)
fn keep_run_token_until(db: &mut dyn Sql, run: &str, token: &str, until: i64) -> Result<()> {
    let parent_expiry = db
        .query_opt(
            "SELECT p.expires_at FROM tokens t JOIN tokens p ON p.id = t.parent_id WHERE t.id = $1",
            params![token],
        )?
        .map(|r| r.opt_i64(0))
        .transpose()?
        .flatten();
    let token_until = crate::model::no_later_than_minter(Some(until), parent_expiry);
    db.execute(
        "UPDATE tokens SET expires_at = $3 WHERE id = $1 AND run_id = $2",
        params![token, run, token_until],
    )?;
    db.execute(
        "UPDATE grants SET expires_at = $2 WHERE run_id = $1 AND consumed_at IS NULL",
        params![run, until],
    )?;
    Ok(())
}

/// Ids of the tokens of `run`'s approvals that are revoked or gone, read in the transaction
/// that judges the run, their rows locked (PostgreSQL; in id order, after the run's row): a
/// revocation commits before the transition and is seen, or waits for it to commit. Looked up
/// before the transaction, a revocation committed in between let an apply start on an
/// approval that no longer counted.
fn revoked_approvals(db: &mut dyn Sql, run: &RunRecord) -> Result<Vec<String>> {
    let mut ids: Vec<&str> = run.approvals.iter().map(|a| a.by_token.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut revoked = Vec::new();
    for id in ids {
        let row = db.query_opt(
            &format!(
                "SELECT revoked_at FROM tokens WHERE id = $1{}",
                db.for_update()
            ),
            params![id],
        )?;
        let gone = match row {
            None => true,
            Some(r) => r.opt_i64(0)?.is_some(),
        };
        if gone {
            revoked.push(id.to_owned());
        }
    }
    Ok(revoked)
}

// ---- tokens and users ----

const TOKEN_COLS: &str =
    "id, name, role, stacks, created_at, expires_at, revoked_at, created_by, run_id, user_name, parent_id, read_stacks, minted_by, revoked_reason, job_ref";
/// How many columns [`TOKEN_COLS`] names ([`token_from_row`] reads them in order).
const TOKEN_COL_COUNT: usize = 15;

/// The migration that made a token's minter a column (`tokens.minted_by`); the engines fill it
/// for existing rows in its transaction with [`minted_by_backfill`].
pub(crate) const MINTERS_MIGRATION: i64 = 19;

/// The minter a token's `created_by` names as the server wrote it ([`minter_id`], the only
/// reader of that text), if it is another token and `exists` (a missing one ended the chain
/// when it was read from the text too): how tokens written before `minted_by`, or by a server
/// older than it, get their minter.
pub(crate) fn minter_named<'a>(
    id: &str,
    created_by: &'a str,
    exists: impl FnOnce(&str) -> Result<bool>,
) -> Result<Option<&'a str>> {
    match minter_id(created_by).filter(|m| *m != id) {
        Some(m) if exists(m)? => Ok(Some(m)),
        _ => Ok(None),
    }
}

/// Migration 0019's fill, given every token's `(id, created_by)`: `(id, minter)` for each token
/// whose `created_by` names its minter ([`minter_named`]).
pub(crate) fn minted_by_backfill(tokens: &[(String, String)]) -> Vec<(String, String)> {
    let ids: std::collections::HashSet<&str> = tokens.iter().map(|(id, _)| id.as_str()).collect();
    tokens
        .iter()
        .filter_map(|(id, created_by)| {
            let m = minter_named(id, created_by, |m| Ok(ids.contains(m))).ok()??;
            Some((id.clone(), m.to_owned()))
        })
        .collect()
}

fn token_from_row(r: &Row) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.text(0)?,
        name: r.text(1)?,
        role: r.text(2)?.parse().map_err(StoreError::Corrupt)?,
        stacks: json_col(&r.text(3)?, "token stacks")?,
        created_at: r.i64(4)?,
        expires_at: r.opt_i64(5)?,
        revoked_at: r.opt_i64(6)?,
        created_by: r.text(7)?,
        run_id: r.opt_text(8)?,
        user: r.text(9)?,
        parent_id: r.opt_text(10)?,
        read_stacks: json_col(&r.text(11)?, "token read stacks")?,
        minted_by: r.opt_text(12)?,
        revoked_reason: r.opt_text(13)?,
        job_ref: r.opt_text(14)?,
    })
}

fn token_by_id(db: &mut dyn Sql, id: &str, for_update: bool) -> Result<Option<TokenRecord>> {
    let lock = if for_update { db.for_update() } else { "" };
    db.query_opt(
        &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1{lock}"),
        params![id],
    )?
    .map(|r| token_from_row(&r))
    .transpose()
}

fn user_from_row(r: &Row) -> Result<UserRecord> {
    Ok(UserRecord {
        name: r.text(0)?,
        created_at: r.i64(1)?,
        created_by: r.text(2)?,
        forge_logins: Vec::new(),
    })
}

fn user_row(db: &mut dyn Sql, name: &str) -> Result<Option<UserRecord>> {
    let Some(mut user) = db
        .query_opt(
            "SELECT name, created_at, created_by FROM users WHERE name = $1",
            params![name],
        )?
        .map(|r| user_from_row(&r))
        .transpose()?
    else {
        return Ok(None);
    };
    user.forge_logins = forge_logins_of(db, name)?;
    Ok(Some(user))
}

fn forge_logins_of(db: &mut dyn Sql, user: &str) -> Result<Vec<String>> {
    db.query(
        "SELECT login FROM forge_logins WHERE user_name = $1 ORDER BY login",
        params![user],
    )?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

/// Records that `login` (checked again here: every path in goes through this) is `user`'s;
/// a login another user has is a conflict.
fn insert_forge_login(db: &mut dyn Sql, user: &str, login: &str, at: i64, by: &str) -> Result<()> {
    let login = valid_forge_login(login).map_err(StoreError::Corrupt)?;
    db.execute(
        "INSERT INTO forge_logins (login, user_name, created_at, created_by) VALUES ($1, $2, $3, $4)",
        params![&login, user, at, by],
    )
    .map_err(|e| {
        unique_is_conflict(e, || {
            format!("forge login {login} already belongs to another user")
        })
    })?;
    Ok(())
}

const OIDC_KEY_COLUMNS: &str =
    "kid, alg, public_jwk, private_pkcs8, active, created_at, retired_at";

fn oidc_key_from_row(r: &Row) -> Result<OidcKeyRecord> {
    let private = match r.0.get(3) {
        Some(crate::sql::Value::Null) => None,
        _ => Some(SecretBytes(r.bytes(3)?)),
    };
    Ok(OidcKeyRecord {
        kid: r.text(0)?,
        alg: r.text(1)?,
        public_jwk: r.text(2)?,
        private_pkcs8: private,
        created_at: r.i64(5)?,
        retired_at: r.opt_i64(6)?,
    })
}

const OIDC_TRUST_COLUMNS: &str = "id, forge, issuer, audience, repository, git_ref, environment, role, stacks, lifetime_ms, created_at, created_by, removed_at, removed_by, repository_id, owner_id";

/// The trust `id`, locked for this transaction: `NotFound`, or `Conflict` once it is removed
/// (a trust is never changed after that).
fn active_trust_for_update(db: &mut dyn Sql, id: &str) -> Result<OidcTrustRecord> {
    let Some(row) = db.query_opt(
        &format!(
            "SELECT {OIDC_TRUST_COLUMNS} FROM oidc_trusts WHERE id = $1{}",
            db.for_update()
        ),
        params![id],
    )?
    else {
        return Err(StoreError::NotFound(format!("trust {id}")));
    };
    let t = oidc_trust_from_row(&row)?;
    match t.removed_at {
        Some(at) => Err(StoreError::Conflict(format!(
            "trust {id} was removed at {}",
            rfc3339(at)
        ))),
        None => Ok(t),
    }
}

fn oidc_trust_from_row(r: &Row) -> Result<OidcTrustRecord> {
    Ok(OidcTrustRecord {
        id: r.text(0)?,
        forge: r.text(1)?,
        issuer: r.text(2)?,
        audience: r.text(3)?,
        repository: r.text(4)?,
        git_ref: r.opt_text(5)?,
        environment: r.opt_text(6)?,
        role: r.text(7)?,
        stacks: json_col(&r.text(8)?, "trust stacks")?,
        lifetime_ms: r.i64(9)?,
        created_at: r.i64(10)?,
        created_by: r.text(11)?,
        removed_at: r.opt_i64(12)?,
        removed_by: r.opt_text(13)?,
        repository_id: r.opt_text(14)?,
        owner_id: r.opt_text(15)?,
    })
}

const POLICY_SET_COLUMNS: &str = "id, stack_glob, version, files, sha256, created_at, created_by, removed_at, removed_by, removed_reason";

fn policy_set_from_row(r: &Row) -> Result<PolicySetRecord> {
    let files = r.text(3)?;
    Ok(PolicySetRecord {
        id: r.text(0)?,
        stack_glob: r.text(1)?,
        version: r.i64(2)?,
        files: serde_json::from_str(&files)
            .map_err(|e| StoreError::Backend(format!("policy set files: {e}")))?,
        sha256: r.text(4)?,
        created_at: r.i64(5)?,
        created_by: r.text(6)?,
        removed_at: r.opt_i64(7)?,
        removed_by: r.opt_text(8)?,
        removed_reason: r.opt_text(9)?,
    })
}

fn policy_set_row(db: &mut dyn Sql, id: &str) -> Result<Option<PolicySetRecord>> {
    db.query_opt(
        &format!("SELECT {POLICY_SET_COLUMNS} FROM policy_sets WHERE id = $1"),
        params![id],
    )?
    .map(|r| policy_set_from_row(&r))
    .transpose()
}

/// The digest of a policy set's files: `path NUL text NUL` per file, in order.
pub fn policy_set_sha256(files: &[PolicyFile]) -> String {
    let mut bytes = Vec::new();
    for f in files {
        bytes.extend_from_slice(f.path.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(f.text.as_bytes());
        bytes.push(0);
    }
    hex::encode(crate::blob::sha256(&bytes))
}

const DRIFT_COLUMNS: &str =
    "d.id, s.name, d.status, d.serial, d.drifted, d.findings, d.reported_by, d.created_at";

fn drift_from_row(r: &Row) -> Result<DriftReportMeta> {
    Ok(DriftReportMeta {
        id: r.text(0)?,
        stack: r.text(1)?,
        status: r.text(2)?,
        serial: r.opt_i64(3)?.map(|s| s.max(0) as u64),
        drifted: r.i64(4)?.max(0) as u64,
        findings: r.i64(5)?.max(0) as u64,
        reported_by: r.text(6)?,
        created_at: r.i64(7)?,
    })
}

/// Every stack's drift state in one query: its newest report and, when the newest verdict
/// other than `unknown` is `drifted`, the time of the first drifted report after the last
/// in-sync one. Each part is an index range scan of one stack's reports (`drift_reports_stack`),
/// so a `/metrics` scrape costs one statement however many stacks there are. The text follows
/// `SELECT {DRIFT_COLUMNS}`.
const DRIFT_STATES: &str = ", \
       CASE WHEN (SELECT v.status FROM drift_reports v WHERE v.stack_id = s.id AND v.status <> 'unknown' \
                  ORDER BY v.created_at DESC, v.id DESC LIMIT 1) = 'drifted' \
       THEN (SELECT MIN(x.created_at) FROM drift_reports x WHERE x.stack_id = s.id AND x.status = 'drifted' \
             AND x.created_at >= COALESCE((SELECT MAX(y.created_at) FROM drift_reports y \
                                           WHERE y.stack_id = s.id AND y.status = 'in_sync'), x.created_at)) \
       END \
     FROM stacks s \
     JOIN drift_reports d ON d.id = (SELECT l.id FROM drift_reports l WHERE l.stack_id = s.id \
                                     ORDER BY l.created_at DESC, l.id DESC LIMIT 1)";

fn count(db: &mut dyn Sql, sql: &str, params: &[crate::sql::Value]) -> Result<u64> {
    let n = db
        .query_opt(sql, params)?
        .ok_or_else(|| StoreError::Backend("COUNT returned no row".into()))?
        .i64(0)?;
    Ok(n.max(0) as u64)
}

/// The sealed engine interface: connection handling and transactions only. Everything a
/// [`Store`] does is implemented once, below, on top of it.
pub trait Engine: Send + Sync {
    /// Engine name, for logs and `/healthz`.
    const NAME: &'static str;
    /// Runs `f` on a reader (outside a write transaction); `f` may be run again on another
    /// connection if the first one turned out dead, so it must only read.
    fn read<T, F: FnMut(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T>;
    /// Runs `f` in a write transaction and commits if it returns `Ok`.
    fn write<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T>;
    /// [`Engine::write`] for a commit that may be acknowledged before it is on disk: taking and
    /// releasing a state lock. An OS crash can roll such a commit back (never a process crash);
    /// what that can cost is a lock to take again or to release again, never a stored version
    /// or an acknowledged write: a state write re-checks the lock in its own transaction, and
    /// its durable commit makes every commit before it durable too. SQLite defers the sync
    /// (see `sqlite.rs`); other engines commit durably.
    fn write_lock_change<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        self.write(f)
    }
    /// The last body of each stack written through this store (chunks found there are not
    /// hashed again, nor looked up: this store holds them).
    fn recent_bodies(&self) -> &blob::RecentBodies;
    /// Runs `f`, which only reads, so that all its statements see one snapshot, without
    /// holding up writers (SQLite: a read transaction on a reader; PostgreSQL: a
    /// `REPEATABLE READ, READ ONLY` transaction).
    fn read_snapshot<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T>;
}

/// Longest chain of minters read for one token (each was created before what it minted, so
/// chains end; this bounds a corrupt one).
pub(crate) const MAX_MINTER_CHAIN: usize = 32;

/// What minting for `user` is judged on ([`Person::may_receive`]): its parentless tokens,
/// each with its chain of minters, the minting token `minter` and its forge logins.
fn person(db: &mut dyn Sql, user: &str, minter: Option<&str>) -> Result<Person> {
    let tokens = parentless_tokens(db, user)?;
    // A user's tokens share a few minters: each is read once.
    let mut minters = Default::default();
    let mut with_chains = Vec::with_capacity(tokens.len());
    for t in tokens {
        let chain = minter_chain(db, &t, &mut minters)?;
        with_chains.push((t, chain));
    }
    Ok(Person {
        name: user.to_owned(),
        minter: match minter {
            Some(id) => token_by_id(db, id, false)?,
            None => None,
        },
        tokens: with_chains,
        forge_logins: count(
            db,
            "SELECT COUNT(*) FROM forge_logins WHERE user_name = $1",
            params![user],
        )?,
    })
}

/// Every parentless token `user` was ever given (`tokens_of_persons`).
fn parentless_tokens(db: &mut dyn Sql, user: &str) -> Result<Vec<TokenRecord>> {
    db.query(
        &format!("SELECT {TOKEN_COLS} FROM tokens WHERE user_name = $1 AND parent_id IS NULL ORDER BY created_at, id"),
        params![user],
    )?
    .iter()
    .map(token_from_row)
    .collect()
}

/// The tokens that minted `t`: its `minted_by`, that token's, and so on; `Corrupt` past
/// [`MAX_MINTER_CHAIN`] (a loop in a corrupt database). `minters` caches the tokens read.
fn minter_chain(
    db: &mut dyn Sql,
    t: &TokenRecord,
    minters: &mut std::collections::HashMap<String, Option<TokenRecord>>,
) -> Result<Vec<TokenRecord>> {
    let mut chain: Vec<TokenRecord> = Vec::new();
    let mut next = t.minted_by.clone();
    while let Some(id) = next.take() {
        if chain.len() == MAX_MINTER_CHAIN {
            return Err(StoreError::Corrupt(format!(
                "token {}: its minters go on past {MAX_MINTER_CHAIN}",
                t.id
            )));
        }
        let m = match minters.get(&id) {
            Some(m) => m.clone(),
            None => {
                let m = token_by_id(db, &id, false)?;
                minters.insert(id, m.clone());
                m
            }
        };
        if let Some(m) = m {
            next = m.minted_by.clone();
            chain.push(m);
        }
    }
    Ok(chain)
}

/// Who revokes what the scoped-mint rule refuses ([`Store::revoke_unsafe_mints`]).
const UNSAFE_MINT_ACTOR: &str = "system (scoped-mint rule)";

/// [`Store::revoke_unsafe_mints`] for one user, in one transaction: judges each live
/// parentless token as if it were minted now, by its own minter, and revokes what the rule
/// refuses (rule 1: the token; rule 2: the held token it names), until every live one passes.
fn revoke_unsafe_mints_of(db: &mut dyn Sql, user: &str) -> Result<Vec<TokenRecord>> {
    // Lock order as a mint's: token rows (a derived mint locks its parent), then the mint lock.
    db.query(
        &format!(
            "SELECT id FROM tokens WHERE user_name = $1 AND parent_id IS NULL AND revoked_at IS NULL ORDER BY id{}",
            db.for_update()
        ),
        params![user],
    )?;
    db.lock_user_mints(user)?;
    let now = now_ms();
    let live = |t: &TokenRecord| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now);
    let mut revoked = Vec::new();
    loop {
        let person = match person(db, user, None) {
            Ok(p) => p,
            // A chain of minters that loops or runs past the bound (a corrupt database) cannot
            // be judged: the live tokens with such a chain are revoked, and mints for the user
            // stay refused with the error until the database is mended.
            Err(StoreError::Corrupt(_)) => {
                let mut minters = Default::default();
                for t in parentless_tokens(db, user)?.into_iter().filter(|t| live(t)) {
                    if let Err(StoreError::Corrupt(why)) = minter_chain(db, &t, &mut minters) {
                        let reason = format!("its chain of minters cannot be judged: {why}");
                        revoked.push(revoke_unsafe(db, &t, now, &reason, json!({}))?);
                    }
                }
                return Ok(revoked);
            }
            Err(e) => return Err(e),
        };
        let Some((judged, refusal)) = first_refused(&person, now) else {
            return Ok(revoked);
        };
        let target = refusal.held.clone().unwrap_or_else(|| judged.id.clone());
        let (t, _) = person
            .tokens
            .iter()
            .find(|(t, _)| t.id == target)
            .ok_or_else(|| StoreError::Backend(format!("token {target} is not user {user}'s")))?;
        let reason = format!(
            "minted before the scoped-mint rule, which refuses it now (judging {}): {}",
            judged.id, refusal.message
        );
        let detail = json!({"through": refusal.through, "judged": judged.id});
        revoked.push(revoke_unsafe(db, t, now, &reason, detail)?);
    }
}

/// The first of `person`'s live parentless tokens (oldest first) that the scoped-mint rule
/// refuses when judged as if minted now by its own minter, with the refusal.
fn first_refused(person: &Person, now: i64) -> Option<(TokenRecord, MintRefusal)> {
    // Both of the rule's refusals involve a token that another user's scoped admin minted,
    // directly or not: without one among the user's tokens' minters, none is refused (and a
    // user with many tokens is not judged once per token).
    if !person
        .tokens
        .iter()
        .any(|(_, chain)| chain.iter().any(|m| person.is_scoped_other(m)))
    {
        return None;
    }
    let live = |t: &TokenRecord| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now);
    let mut judged = Person {
        minter: None,
        ..person.clone()
    };
    for (t, chain) in person.tokens.iter().filter(|(t, _)| live(t)) {
        judged.minter = chain.first().cloned();
        if let Some(r) = judged.refusal(&t.stacks, now) {
            return Some((t.clone(), r));
        }
    }
    None
}

/// Revokes `t` (and its descendants) for `reason`, audited as `token.revoke_unsafe_mint`
/// naming the token, its user and its minter, with `detail` added.
fn revoke_unsafe(
    db: &mut dyn Sql,
    t: &TokenRecord,
    now: i64,
    reason: &str,
    mut detail: serde_json::Value,
) -> Result<TokenRecord> {
    let n = db.execute(
        "UPDATE tokens SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
        params![&t.id, now, reason],
    )?;
    if n != 1 {
        return Err(StoreError::Backend(format!(
            "token {} was revoked while its user's tokens were locked",
            t.id
        )));
    }
    detail["token"] = json!(t.id);
    detail["user"] = json!(t.user);
    detail["minted_by"] = json!(t.minted_by);
    detail["reason"] = json!(reason);
    let audit = NewAudit::ok(UNSAFE_MINT_ACTOR, "token.revoke_unsafe_mint", None, detail);
    append_audit(db, &audit)?;
    revoke_tree(db, "parent_id", &t.id, now, &audit)?;
    token_by_id(db, &t.id, false)?.ok_or_else(|| StoreError::NotFound(format!("token {}", t.id)))
}

impl<E: Engine> Store for E {
    fn engine(&self) -> &'static str {
        E::NAME
    }

    // --- tokens ---
    fn token_count(&self) -> Result<u64> {
        self.read(|db| count(db, "SELECT COUNT(*) FROM tokens", &[]))
    }

    fn create_token(&self, t: NewToken, audit: NewAudit) -> Result<TokenRecord> {
        self.write(|db| {
            // Lock order: the parent's row (so a concurrent revocation either sees this token
            // or makes this mint fail), then the user's mint lock, then audit.
            let parent = match t.parent_id.as_deref() {
                Some(p) => token_by_id(db, p, true)?,
                None => None,
            };
            let user = parent.as_ref().map_or(t.user.clone(), |p| p.user.clone());
            let now = now_ms();
            // The limit counts the user's tokens of the new one's kind: derived (phase tokens)
            // or parentless (a trust's forge logins), never run-bound ones.
            let recent_minted = match t.mint_limit {
                Some(l) => {
                    db.lock_user_mints(&user)?;
                    let sql = if t.parent_id.is_some() {
                        "SELECT COUNT(*) FROM tokens WHERE user_name = $1 AND parent_id IS NOT NULL AND run_id IS NULL AND created_at > $2"
                    } else {
                        "SELECT COUNT(*) FROM tokens WHERE user_name = $1 AND parent_id IS NULL AND run_id IS NULL AND created_at > $2"
                    };
                    count(db, sql, params![&user, now - l.window_ms])?
                }
                None => 0,
            };
            // The minter is the caller's token, set by the server (never the client); a
            // token that names a minter that does not exist would judge as the operator's.
            // Judging a person reads each of its tokens' minters up to [`MAX_MINTER_CHAIN`]
            // and finds a longer chain corrupt, so no token is minted beyond it: otherwise a
            // scoped admin minting itself 31 tokens in a row, and then one for another user,
            // would make every later mint for that user fail.
            if let Some(m) = t.minted_by.as_deref() {
                let Some(minter) = token_by_id(db, m, false)? else {
                    return Err(StoreError::NotFound(format!(
                        "minting token {m} (a token's minter must be a stored token)"
                    )));
                };
                let above = minter_chain(db, &minter, &mut Default::default())?.len();
                if above + 1 > MAX_MINTER_CHAIN {
                    return Err(StoreError::Forbidden(format!(
                        "token {m} was minted through {above} tokens; a token may lie at most {MAX_MINTER_CHAIN} mints from the operator, so it mints no more: mint from a token closer to the operator"
                    )));
                }
            }
            let user_exists =
                count(db, "SELECT COUNT(*) FROM users WHERE name = $1", params![&user])? > 0;
            // A person's tokens are judged under the user's mint lock (taken once).
            let person = match (&parent, user_exists) {
                (None, true) if is_person(&user) => {
                    if t.mint_limit.is_none() {
                        db.lock_user_mints(&user)?;
                    }
                    Some(person(db, &user, t.minted_by.as_deref())?)
                }
                _ => None,
            };
            let t = t.judge(MintContext {
                parent: parent.as_ref(),
                user_exists,
                recent_minted,
                now,
                person: person.as_ref(),
            })?;
            db.execute(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, created_by, run_id, user_name, parent_id, read_stacks, minted_by, job_ref) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                params![&t.id, &t.secret_hash[..], &t.name, t.role.as_str(), to_json(&t.stacks), now, t.expires_at, &t.created_by, &t.run_id, &t.user, &t.parent_id, to_json(&t.read_stacks), &t.minted_by, &t.job_ref],
            )
            .map_err(|e| unique_is_conflict(e, || format!("token {} already exists", t.id)))?;
            append_audit(db, &audit)?;
            Ok(t.into_record(now))
        })
    }

    fn token_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRecord>> {
        self.read(|db| {
            db.query_opt(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE secret_hash = $1"),
                params![&secret_hash[..]],
            )?
            .map(|r| token_from_row(&r))
            .transpose()
        })
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.read(|db| token_by_id(db, id, false))
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(|db| {
            db.query(
                &format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY created_at, id"),
                &[],
            )?
            .iter()
            .map(token_from_row)
            .collect()
        })
    }

    fn keep_phase_token_until(
        &self,
        id: &str,
        minter: &str,
        from: Option<i64>,
        until: i64,
        audit: NewAudit,
    ) -> Result<Option<TokenRecord>> {
        self.write(|db| {
            // The token's row first: a revocation (which locks it too) commits before this
            // and is seen, or waits for it. A token that expired since it was judged stays
            // expired.
            let now = now_ms();
            let still = token_by_id(db, id, true)?.filter(|t| {
                t.parent_id.as_deref() == Some(minter)
                    && t.run_id.is_none()
                    && t.revoked_at.is_none()
                    && t.expires_at == from
                    && t.expires_at.is_some_and(|e| e > now)
            });
            if still.is_none() {
                return Ok(None);
            }
            let minter_expiry = token_by_id(db, minter, false)?.and_then(|m| m.expires_at);
            let to = crate::model::no_later_than_minter(Some(until), minter_expiry);
            db.execute(
                "UPDATE tokens SET expires_at = $2 WHERE id = $1",
                params![id, to],
            )?;
            append_audit(db, &audit)?;
            token_by_id(db, id, false)
        })
    }

    fn revoke_token(&self, id: &str, audit: NewAudit) -> Result<TokenRecord> {
        self.write(|db| {
            let now = now_ms();
            let n = db.execute(
                "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                params![id, now],
            )?;
            let t = token_by_id(db, id, false)?
                .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
            if n == 1 {
                append_audit(db, &audit)?;
            }
            revoke_tree(db, "parent_id", id, now, &audit)?;
            Ok(t)
        })
    }

    fn revoke_unsafe_mints(&self) -> Result<Vec<TokenRecord>> {
        // A server older than migration 0019 still running beside this one (a rolling
        // upgrade) mints with the minter named only in `created_by`: such tokens get their
        // `minted_by` as the migration gave the others, before anyone is judged.
        let unfilled = self.read(|db| {
            let rows = db.query(
                "SELECT id, created_by FROM tokens WHERE minted_by IS NULL AND created_by LIKE '% (tok%)'",
                &[],
            )?;
            let mut fill = Vec::new();
            for r in &rows {
                let (id, created_by) = (r.text(0)?, r.text(1)?);
                let exists = |m: &str| Ok(token_by_id(db, m, false)?.is_some());
                if let Some(m) = minter_named(&id, &created_by, exists)? {
                    fill.push((id.clone(), m.to_owned()));
                }
            }
            Ok(fill)
        })?;
        if !unfilled.is_empty() {
            self.write(|db| {
                for (id, minter) in &unfilled {
                    db.execute(
                        "UPDATE tokens SET minted_by = $2 WHERE id = $1 AND minted_by IS NULL",
                        params![id, minter],
                    )?;
                }
                Ok(())
            })?;
        }
        let users = self.read(|db| {
            db.query(
                "SELECT DISTINCT user_name FROM tokens WHERE parent_id IS NULL AND revoked_at IS NULL AND user_name IN (SELECT name FROM users) ORDER BY user_name",
                &[],
            )?
            .iter()
            .map(|r| r.text(0))
            .collect::<Result<Vec<String>>>()
        })?;
        let mut revoked = Vec::new();
        for user in users.iter().filter(|u| is_person(u)) {
            // Judged first on a reader: a write transaction (and, on SQLite, its sync) only
            // for the rare user with something to revoke; judged again under the locks there.
            let suspect = self.read(|db| match person(db, user, None) {
                Ok(p) => Ok(first_refused(&p, now_ms()).is_some()),
                Err(StoreError::Corrupt(_)) => Ok(true),
                Err(e) => Err(e),
            })?;
            if suspect {
                revoked.extend(self.write(|db| revoke_unsafe_mints_of(db, user))?);
            }
        }
        Ok(revoked)
    }

    // --- users ---
    fn create_user(&self, u: NewUser, audit: NewAudit) -> Result<UserRecord> {
        self.write(|db| {
            let now = now_ms();
            db.execute(
                "INSERT INTO users (name, created_at, created_by) VALUES ($1, $2, $3)",
                params![&u.name, now, &u.created_by],
            )
            .map_err(|e| unique_is_conflict(e, || format!("user {} already exists", u.name)))?;
            for login in &u.forge_logins {
                insert_forge_login(db, &u.name, login, now, &u.created_by)?;
            }
            append_audit(db, &audit)?;
            let forge_logins = forge_logins_of(db, &u.name)?;
            Ok(UserRecord {
                name: u.name,
                created_at: now,
                created_by: u.created_by,
                forge_logins,
            })
        })
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.read(|db| user_row(db, name))
    }

    fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.read(|db| {
            let mut users = db
                .query(
                    "SELECT name, created_at, created_by FROM users ORDER BY name",
                    &[],
                )?
                .iter()
                .map(user_from_row)
                .collect::<Result<Vec<_>>>()?;
            for r in db.query(
                "SELECT user_name, login FROM forge_logins ORDER BY user_name, login",
                &[],
            )? {
                let (user, login) = (r.text(0)?, r.text(1)?);
                if let Ok(i) = users.binary_search_by(|u| u.name.as_str().cmp(&user)) {
                    users[i].forge_logins.push(login);
                }
            }
            Ok(users)
        })
    }

    fn add_forge_login(&self, user: &str, login: &str, audit: NewAudit) -> Result<UserRecord> {
        let login = valid_forge_login(login).map_err(StoreError::Corrupt)?;
        self.write(|db| {
            let record =
                user_row(db, user)?.ok_or_else(|| StoreError::NotFound(format!("user {user}")))?;
            if record.forge_logins.contains(&login) {
                return Ok(record);
            }
            // A forge login decides approvals on all stacks: judged like a token for all
            // stacks, under the user's mint lock.
            db.lock_user_mints(user)?;
            person(db, user, None)?.may_receive(&[], now_ms())?;
            insert_forge_login(db, user, &login, now_ms(), &audit.actor)?;
            append_audit(db, &audit)?;
            user_row(db, user)?.ok_or_else(|| StoreError::NotFound(format!("user {user}")))
        })
    }

    fn user_by_forge_login(&self, login: &str) -> Result<Option<String>> {
        let login = login.to_ascii_lowercase();
        self.read(|db| {
            db.query_opt(
                "SELECT user_name FROM forge_logins WHERE login = $1",
                params![&login],
            )?
            .map(|r| r.text(0))
            .transpose()
        })
    }

    // --- server policy sets ---
    fn add_policy_set(&self, set: NewPolicySet, audit: NewAudit) -> Result<PolicySetRecord> {
        let mut files = set.files;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let text = serde_json::to_string(&files)
            .map_err(|e| StoreError::Backend(format!("policy set files: {e}")))?;
        let sha256 = policy_set_sha256(&files);
        self.write(|db| {
            let now = now_ms();
            let version = db
                .query_opt(
                    "SELECT COALESCE(MAX(version), 0) FROM policy_sets WHERE stack_glob = $1",
                    params![&set.stack_glob],
                )?
                .map(|r| r.i64(0))
                .transpose()?
                .unwrap_or(0)
                + 1;
            db.execute(
                "UPDATE policy_sets SET removed_at = $2, removed_by = $3, removed_reason = $4 WHERE stack_glob = $1 AND removed_at IS NULL",
                params![
                    &set.stack_glob,
                    now,
                    &set.created_by,
                    format!("replaced by version {version}")
                ],
            )?;
            db.execute(
                &format!("INSERT INTO policy_sets ({POLICY_SET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL)"),
                params![&set.id, &set.stack_glob, version, &text, &sha256, now, &set.created_by],
            )
            .map_err(|e| {
                unique_is_conflict(e, || {
                    format!("policy set {} (or version {version} of {}) already exists", set.id, set.stack_glob)
                })
            })?;
            append_audit(db, &audit)?;
            Ok(PolicySetRecord {
                id: set.id.clone(),
                stack_glob: set.stack_glob.clone(),
                version,
                files: files.clone(),
                sha256: sha256.clone(),
                created_at: now,
                created_by: set.created_by.clone(),
                removed_at: None,
                removed_by: None,
                removed_reason: None,
            })
        })
    }

    fn policy_sets(&self) -> Result<Vec<PolicySetRecord>> {
        self.read(|db| {
            db.query(
                &format!("SELECT {POLICY_SET_COLUMNS} FROM policy_sets ORDER BY created_at, stack_glob, version"),
                &[],
            )?
            .iter()
            .map(policy_set_from_row)
            .collect()
        })
    }

    fn policy_set(&self, id: &str) -> Result<Option<PolicySetRecord>> {
        self.read(|db| policy_set_row(db, id))
    }

    fn remove_policy_set(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        audit: NewAudit,
    ) -> Result<PolicySetRecord> {
        self.write(|db| {
            let Some(mut set) = policy_set_row(db, id)? else {
                return Err(StoreError::NotFound(format!("policy set {id}")));
            };
            if let (Some(at), Some(why)) = (set.removed_at, &set.removed_reason) {
                return Err(StoreError::Conflict(format!(
                    "policy set {id} was already removed at {at} ({why})"
                )));
            }
            let now = now_ms();
            db.execute(
                "UPDATE policy_sets SET removed_at = $2, removed_by = $3, removed_reason = $4 WHERE id = $1",
                params![id, now, by, reason],
            )?;
            append_audit(db, &audit)?;
            set.removed_at = Some(now);
            set.removed_by = Some(by.to_owned());
            set.removed_reason = Some(reason.to_owned());
            Ok(set)
        })
    }

    // --- drift reports ---
    fn add_drift_report(
        &self,
        stack: &str,
        report: NewDriftReport,
        audit: NewAudit,
    ) -> Result<DriftReportMeta> {
        self.write(|db| {
            let (stack_id, _) = lock_live_stack(db, stack)?;
            let current = current_version_of(db, stack_id, stack)?.map(|v| v.serial);
            if current != report.serial {
                let show = |s: Option<u64>| s.map_or("none".to_owned(), |s| s.to_string());
                return Err(StoreError::Conflict(format!(
                    "the drift check refreshed state serial {} but the stack's current serial is {}: the state changed since; check again",
                    show(report.serial),
                    show(current)
                )));
            }
            let serial = report.serial.map(|s| bigint(s, "serial")).transpose()?;
            let now = now_ms();
            db.execute(
                "INSERT INTO drift_reports (id, stack_id, status, serial, drifted, findings, reported_by, created_at, report) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                params![
                    &report.id,
                    stack_id,
                    &report.status,
                    &serial,
                    bigint(report.drifted, "drifted count")?,
                    bigint(report.findings, "findings count")?,
                    &report.reported_by,
                    now,
                    &report.report
                ],
            )
            .map_err(|e| unique_is_conflict(e, || format!("drift report {} already exists", report.id)))?;
            append_audit(db, &audit)?;
            Ok(DriftReportMeta {
                id: report.id.clone(),
                stack: stack.to_owned(),
                status: report.status.clone(),
                serial: report.serial,
                drifted: report.drifted,
                findings: report.findings,
                reported_by: report.reported_by.clone(),
                created_at: now,
            })
        })
    }

    fn drift_reports(&self, stack: &str, offset: u32, limit: u32) -> Result<Vec<DriftReportMeta>> {
        self.read(|db| {
            let (stack_id, _) = require_stack(db, stack)?;
            db.query(
                &format!(
                    "SELECT {DRIFT_COLUMNS} FROM drift_reports d JOIN stacks s ON s.id = d.stack_id \
                     WHERE d.stack_id = $1 ORDER BY d.created_at DESC, d.id DESC LIMIT $2 OFFSET $3"
                ),
                params![stack_id, i64::from(limit), i64::from(offset)],
            )?
            .iter()
            .map(drift_from_row)
            .collect()
        })
    }

    fn drift_report(&self, id: &str) -> Result<Option<(DriftReportMeta, String)>> {
        self.read(|db| {
            db.query_opt(
                &format!(
                    "SELECT {DRIFT_COLUMNS}, d.report FROM drift_reports d JOIN stacks s ON s.id = d.stack_id WHERE d.id = $1"
                ),
                params![id],
            )?
            .map(|r| Ok((drift_from_row(&r)?, r.text(8)?)))
            .transpose()
        })
    }

    fn drift_states(&self) -> Result<Vec<DriftState>> {
        let mut states = self.read(|db| {
            db.query(&format!("SELECT {DRIFT_COLUMNS}{DRIFT_STATES}"), &[])?
                .iter()
                .map(|r| {
                    Ok(DriftState {
                        last: drift_from_row(r)?,
                        drifted_since: r.opt_i64(8)?,
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        // By name, in Rust: the engines' text collations differ.
        states.sort_by(|a, b| a.last.stack.cmp(&b.last.stack));
        Ok(states)
    }

    // --- OIDC issuer keys and trusted forge issuers ---
    fn oidc_keys(&self) -> Result<Vec<OidcKeyRecord>> {
        self.read(|db| {
            db.query(
                &format!("SELECT {OIDC_KEY_COLUMNS} FROM oidc_keys ORDER BY created_at, kid"),
                &[],
            )?
            .iter()
            .map(oidc_key_from_row)
            .collect()
        })
    }

    fn add_oidc_key(
        &self,
        key: NewOidcKey,
        rotate: bool,
        audit: NewAudit,
    ) -> Result<OidcKeyRecord> {
        self.write(|db| {
            let now = now_ms();
            if rotate {
                // The retired key signs nothing again: its private half goes now.
                db.execute(
                    "UPDATE oidc_keys SET active = NULL, retired_at = $1, private_pkcs8 = NULL WHERE active = 1",
                    params![now],
                )?;
            }
            db.execute(
                &format!("INSERT INTO oidc_keys ({OIDC_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, 1, $5, NULL)"),
                params![&key.kid, &key.alg, &key.public_jwk, key.private_pkcs8.0.clone(), now],
            )
            .map_err(|e| {
                unique_is_conflict(e, || "the OIDC issuer already has an active key".into())
            })?;
            append_audit(db, &audit)?;
            Ok(OidcKeyRecord {
                kid: key.kid.clone(),
                alg: key.alg.clone(),
                public_jwk: key.public_jwk.clone(),
                private_pkcs8: Some(key.private_pkcs8.clone()),
                created_at: now,
                retired_at: None,
            })
        })
    }

    fn add_oidc_trust(&self, t: &OidcTrustRecord, audit: NewAudit) -> Result<()> {
        self.write(|db| {
            db.execute(
                &format!("INSERT INTO oidc_trusts ({OIDC_TRUST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL, $13, $14)"),
                params![&t.id, &t.forge, &t.issuer, &t.audience, &t.repository, &t.git_ref, &t.environment, &t.role, to_json(&t.stacks), t.lifetime_ms, t.created_at, &t.created_by, &t.repository_id, &t.owner_id],
            )
            .map_err(|e| unique_is_conflict(e, || format!("trust {} already exists", t.id)))?;
            // The user of the tokens the trust issues: one pipeline identity, whose tokens are
            // counted against one mint limit.
            db.execute(
                "INSERT INTO users (name, created_at, created_by) VALUES ($1, $2, $3)",
                params![&t.id, t.created_at, &t.created_by],
            )
            .map_err(|e| unique_is_conflict(e, || format!("user {} already exists", t.id)))?;
            append_audit(db, &audit)?;
            Ok(())
        })
    }

    fn oidc_trusts(&self) -> Result<Vec<OidcTrustRecord>> {
        self.read(|db| {
            db.query(
                &format!("SELECT {OIDC_TRUST_COLUMNS} FROM oidc_trusts ORDER BY created_at, id"),
                &[],
            )?
            .iter()
            .map(oidc_trust_from_row)
            .collect()
        })
    }

    fn remove_oidc_trust(&self, id: &str, by: &str, audit: NewAudit) -> Result<OidcTrustRecord> {
        self.write(|db| {
            let mut t = active_trust_for_update(db, id)?;
            let now = now_ms();
            db.execute(
                "UPDATE oidc_trusts SET removed_at = $2, removed_by = $3 WHERE id = $1",
                params![id, now, by],
            )?;
            append_audit(db, &audit)?;
            // The trust is the user of the tokens it issued: they, and every token minted from
            // them, end with it (a leaked job token must not outlive the trust it came from).
            revoke_tree(db, "user_name", id, now, &audit)?;
            t.removed_at = Some(now);
            t.removed_by = Some(by.to_owned());
            Ok(t)
        })
    }

    fn pin_oidc_trust(
        &self,
        id: &str,
        repository_id: &str,
        owner_id: &str,
        audit: NewAudit,
    ) -> Result<OidcTrustRecord> {
        self.write(|db| {
            let mut t = active_trust_for_update(db, id)?;
            if let Some(pinned) = &t.repository_id {
                return Err(StoreError::Conflict(format!(
                    "trust {id} is already pinned to repository id {pinned}: to trust another repository, remove it and add a new trust"
                )));
            }
            db.execute(
                "UPDATE oidc_trusts SET repository_id = $2, owner_id = $3 WHERE id = $1",
                params![id, repository_id, owner_id],
            )?;
            append_audit(db, &audit)?;
            t.repository_id = Some(repository_id.to_owned());
            t.owner_id = Some(owner_id.to_owned());
            Ok(t)
        })
    }

    // --- stacks ---
    fn create_stack(
        &self,
        name: &str,
        production: bool,
        settings: StackSettings,
        audit: NewAudit,
    ) -> Result<StackRecord> {
        self.write(|db| {
            if let Some((_, old)) = stack_row(db, name)? {
                return Err(StoreError::Conflict(match old.archived {
                    Some(_) => format!("stack {name} was deleted (archived) and its name stays with its history; choose another name"),
                    None => format!("stack {name} already exists"),
                }));
            }
            let now = now_ms();
            let stack = StackRecord {
                name: name.to_owned(),
                production,
                lineage: None,
                settings,
                created_at: now,
                archived: None,
            };
            insert_stack(db, &stack)?;
            append_audit(db, &audit)?;
            Ok(stack)
        })
    }

    fn stack(&self, name: &str) -> Result<Option<StackRecord>> {
        self.read(|db| Ok(stack_row(db, name)?.map(|(_, s)| s)))
    }

    fn list_stacks(&self) -> Result<Vec<StackRecord>> {
        self.read(|db| {
            db.query(
                &format!("SELECT {STACK_COLS} FROM stacks ORDER BY name"),
                &[],
            )?
            .iter()
            .map(|r| stack_from_row(r).map(|(_, s)| s))
            .collect()
        })
    }

    fn update_stack_settings(
        &self,
        name: &str,
        settings: StackSettings,
        audit: NewAudit,
    ) -> Result<StackRecord> {
        self.write(|db| {
            let (id, mut s) = lock_live_stack(db, name)?;
            db.execute(
                "UPDATE stacks SET settings = $2 WHERE id = $1",
                params![id, to_json(&settings)],
            )?;
            append_audit(db, &audit)?;
            s.settings = settings;
            Ok(s)
        })
    }

    fn archive_stack(
        &self,
        name: &str,
        by: &str,
        reason: &str,
        audit: NewAudit,
    ) -> Result<StackRecord> {
        self.write(|db| {
            let (id, mut s) = lock_live_stack(db, name)?;
            if let Some(held) = lock_of(db, id)? {
                return Err(StoreError::Conflict(format!(
                    "stack {name} is locked by {} (lock {}); a locked stack is in use and is not deleted: unlock it first",
                    held.owner, held.id
                )));
            }
            if let Some(r) = db.query_opt(
                "SELECT id FROM runs WHERE stack_id = $1 AND status = $2 LIMIT 1",
                params![id, RunStatus::Applying.as_str()],
            )? {
                return Err(StoreError::Conflict(format!(
                    "stack {name} has run {} applying; wait for it to finish before deleting the stack",
                    r.text(0)?
                )));
            }
            // Its open runs can never be applied and no transition is recorded on a deleted
            // stack: closed (superseded, their binary plans purged) in this transaction.
            let open = db
                .query(
                    "SELECT id FROM runs WHERE stack_id = $1 AND status IN ($2, $3) ORDER BY created_at, id",
                    params![id, RunStatus::NeedsApproval.as_str(), RunStatus::Approved.as_str()],
                )?
                .iter()
                .map(|r| r.text(0))
                .collect::<Result<Vec<String>>>()?;
            let now = now_ms();
            for run_id in &open {
                let _ = update_run(
                    db,
                    run_id,
                    &mut |run: &RunRecord, _: &StackRecord, _: Option<&VersionMeta>, _: &[String]| {
                        let t = crate::run_rules::stack_deleted(run, now);
                        Ok((t.run, NewAudit::ok(by, &t.action, Some(name), t.detail)))
                    },
                )?;
            }
            let archive = Archive { at: now_ms(), by: by.to_owned(), reason: reason.to_owned() };
            db.execute(
                "UPDATE stacks SET archived_at = $2, archived_by = $3, archive_reason = $4 WHERE id = $1",
                params![id, archive.at, by, reason],
            )?;
            append_audit(db, &audit)?;
            s.archived = Some(archive);
            Ok(s)
        })
    }

    // --- locks ---
    fn lock(&self, stack: &str, lock: NewLock, audit: NewAudit) -> Result<LockOutcome> {
        self.write_lock_change(|db| {
            let (id, _) = lock_live_stack(db, stack)?;
            take_lock(db, stack, id, lock, &audit)
        })
    }

    fn lock_in_place_of(
        &self,
        stack: &str,
        (lock_id, owner_token): (&str, &str),
        lock: NewLock,
        preempt: NewAudit,
        audit: NewAudit,
    ) -> Result<LockOutcome> {
        self.write_lock_change(|db| {
            let (id, _) = lock_live_stack(db, stack)?;
            let released = db.execute(
                "DELETE FROM locks WHERE stack_id = $1 AND lock_id = $2 AND owner_token = $3",
                params![id, lock_id, owner_token],
            )?;
            if released == 1 {
                append_stack_audit(db, stack, &preempt)?;
            }
            take_lock(db, stack, id, lock, &audit)
        })
    }

    fn unlock(&self, stack: &str, by: UnlockBy, audit: NewAudit) -> Result<UnlockOutcome> {
        self.write_lock_change(|db| {
            let (id, _) = lock_stack(db, stack)?;
            // Delete what `by` releases and read the holder only if nothing was. The holder's
            // token is matched here, in the transaction that deletes: checked before it, a lock
            // released and taken again under the same ID meanwhile would go with it.
            let released = match &by {
                UnlockBy::Holder { lock_id, owner_token } => db.query_opt(
                    &format!("DELETE FROM locks WHERE stack_id = $1 AND lock_id = $2 AND owner_token = $3 RETURNING {LOCK_COLS}"),
                    params![id, lock_id, owner_token],
                )?,
                UnlockBy::Id { lock_id, .. } => db.query_opt(
                    &format!("DELETE FROM locks WHERE stack_id = $1 AND lock_id = $2 RETURNING {LOCK_COLS}"),
                    params![id, lock_id],
                )?,
                UnlockBy::Force => db.query_opt(
                    &format!("DELETE FROM locks WHERE stack_id = $1 RETURNING {LOCK_COLS}"),
                    params![id],
                )?,
            };
            let Some(released) = released else {
                return Ok(match lock_of(db, id)? {
                    Some(held) => UnlockOutcome::Mismatch(held),
                    None => UnlockOutcome::NotLocked,
                });
            };
            let held = lock_from_row(&released, 0)?;
            let audit = match &by {
                UnlockBy::Id { token, .. } if held.owner_token != *token => audit.forced(&held),
                _ => audit,
            };
            append_stack_audit(db, stack, &audit)?;
            Ok(UnlockOutcome::Released(held))
        })
    }

    fn current_lock(&self, stack: &str) -> Result<Option<LockRecord>> {
        self.read(|db| match stack_and_lock(db, stack)? {
            Some((_, _, lock)) => Ok(lock),
            None => Err(StoreError::NotFound(format!("stack {stack}"))),
        })
    }

    fn stack_with_lock(&self, name: &str) -> Result<Option<(StackRecord, Option<LockRecord>)>> {
        self.read(|db| Ok(stack_and_lock(db, name)?.map(|(_, s, l)| (s, l))))
    }

    // --- state ---
    fn current_version(&self, stack: &str) -> Result<Option<VersionMeta>> {
        self.read(|db| {
            let (id, _) = require_stack(db, stack)?;
            current_version_of(db, id, stack)
        })
    }

    fn version(&self, stack: &str, serial: u64) -> Result<Option<VersionMeta>> {
        self.read(|db| version(db, stack, serial))
    }

    fn versions(&self, stack: &str) -> Result<Vec<VersionMeta>> {
        self.read(|db| versions(db, stack))
    }

    fn version_bytes(&self, stack: &str, serial: u64) -> Result<Vec<u8>> {
        self.read(|db| version_bytes(db, stack, serial))
    }

    fn write_state(
        &self,
        stack: &str,
        attempt: WriteAttempt,
        check: &mut WriteCheck<'_>,
    ) -> Result<WriteResult> {
        // Chunk, hash and compress the new chunks before any lock is taken: it is the
        // expensive part. Chunks unchanged since this stack's last write through this process
        // are found by comparing bytes.
        let recent = self.recent_bodies().get(stack);
        let mut p = prepare_body(&attempt.body, recent.as_deref());
        drop(recent);
        self.read(|db| p.compress_missing(db))?;
        // The body's hashes ran meanwhile (`blob::StateBody::hashing`); they are waited for
        // here, not under the writer lock, and a body that is not what its client sent is
        // written nowhere.
        attempt
            .body
            .check_content_md5()
            .map_err(StoreError::Invalid)?;
        check_attempt(&attempt)?;
        let result = self.write(|db| write_state(db, stack, &attempt, &p, check))?;
        if let WriteResult::Stored(_) = result {
            let table = p.chunk_table();
            drop(p);
            let body = attempt.body.into_shared();
            self.recent_bodies()
                .remember(stack, blob::Recent::new(body, &table));
        }
        Ok(result)
    }

    // --- removal grants ---
    fn create_grant(&self, stack: &str, g: NewGrant, audit: NewAudit) -> Result<GrantRecord> {
        self.write(|db| {
            let record = g.into_record(stack, now_ms());
            insert_grant(db, &record, true)?;
            append_audit(db, &audit)?;
            Ok(record)
        })
    }

    fn grants(&self, stack: &str) -> Result<Vec<GrantRecord>> {
        self.read(|db| {
            let (id, _) = require_stack(db, stack)?;
            grants_of(db, id, stack, false)
        })
    }

    // --- audit ---
    fn append_audit(&self, event: NewAudit) -> Result<AuditRecord> {
        self.write(|db| append_audit(db, &event))
    }

    fn audit_events(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        self.read(|db| audit_events(db, after, limit))
    }

    fn audit_search(&self, filter: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>> {
        self.read(|db| audit_search(db, filter, limit))
    }

    fn audit_count(&self, filter: &AuditFilter) -> Result<u64> {
        self.read(|db| audit_count(db, filter))
    }

    fn seal_audit(&self) -> Result<Option<AuditRecord>> {
        self.write(seal_audit)
    }

    fn audit_walk(&self, each: &mut dyn FnMut(Vec<AuditRecord>) -> Result<bool>) -> Result<()> {
        self.read_snapshot(|db| audit_walk(db, each))
    }

    // --- governed runs ---
    fn create_run(
        &self,
        run: &RunRecord,
        artifacts: &[(&str, &[u8])],
        audit: NewAudit,
    ) -> Result<()> {
        let artifacts = prepare_artifacts(artifacts);
        self.write(|db| insert_run(db, run, &artifacts, &[], Some(&audit)))
    }

    fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        self.read(|db| run_of(db, id, false))
    }

    fn runs_where(&self, filter: &RunFilter, limit: u32) -> Result<Vec<RunRecord>> {
        self.read(|db| runs_where(db, filter, limit))
    }

    fn run_artifact(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(|db| run_artifact(db, id, name))
    }

    fn run_artifact_names(&self, id: &str) -> Result<Vec<String>> {
        self.read(|db| run_artifact_names(db, id))
    }

    fn run_artifact_infos(&self, id: &str) -> Result<Vec<ArtifactInfo>> {
        self.read(|db| run_artifact_infos(db, id))
    }

    fn expire_overdue_runs(&self, now: i64, page: u32) -> Result<Swept> {
        use crate::run_rules::{
            decided, is_abandoned, is_overdue, Refused, EXPIRY_SWEEPER, RUN_TTL_MS,
        };
        // A run expires RUN_TTL_MS after it is created (`api::runs`): older open runs of live
        // stacks (a deleted stack's runs were closed with it, and none can be recorded on it)
        // are the candidates, with the applying runs (few: one at most per stack, as a rule),
        // read without their records, a page at a time in (created_at, id) order, so runs that
        // cannot be closed never hold the others back; the locked record decides.
        let sql = format!(
            "SELECT r.id, r.created_at FROM runs r JOIN stacks s ON s.id = r.stack_id \
             WHERE s.archived_at IS NULL \
             AND ((r.status IN ('{}', '{}') AND r.created_at < $1) OR r.status = '{}') \
             AND (r.created_at > $2 OR (r.created_at = $2 AND r.id > $3)) \
             ORDER BY r.created_at, r.id LIMIT {}",
            RunStatus::NeedsApproval.as_str(),
            RunStatus::Approved.as_str(),
            RunStatus::Applying.as_str(),
            page.max(1)
        );
        let mut swept = Swept::default();
        let mut after = (i64::MIN, String::new());
        loop {
            let candidates = self.read(|db| {
                db.query(&sql, params![now - RUN_TTL_MS, after.0, &after.1])?
                    .iter()
                    .map(|r| Ok((r.text(0)?, r.i64(1)?)))
                    .collect::<Result<Vec<(String, i64)>>>()
            })?;
            let Some(last) = candidates.last() else {
                return Ok(swept);
            };
            after = (last.1, last.0.clone());
            for (id, _) in candidates {
                // Read first without a lock: most applying runs are alive, and are left so.
                match self.run(&id) {
                    Ok(Some(run)) if !is_overdue(&run, now) && !is_abandoned(&run, now) => continue,
                    _ => {}
                }
                let mut closed = false;
                let outcome = self.update_run(&id, &mut |run, _, _, _| {
                    let why = if is_overdue(run, now) {
                        Refused::Expired
                    } else if is_abandoned(run, now) {
                        Refused::Abandoned
                    } else {
                        // Approved, applied or closed meanwhile, an expiry later than usual,
                        // or an apply whose applier reports.
                        return Err(airlock_core::refusal::Refusal::new(
                            airlock_core::refusal::RefusalKind::Conflict,
                            "not overdue",
                        )
                        .into());
                    };
                    closed = true;
                    decided(Err(why), run, &EXPIRY_SWEEPER, now)
                });
                match outcome {
                    Ok(_) if closed => swept.closed.push(id),
                    Ok(_) | Err(StoreError::NotFound(_)) => {}
                    // One run that cannot be closed (a record that does not decode) is
                    // reported, and the others are closed all the same.
                    Err(e) => swept.failed.push((id, e.to_string())),
                }
            }
        }
    }

    fn purge_plans_of_ended_runs(&self) -> Result<Vec<String>> {
        // Plans not purged are those of open runs, and these leftovers: few rows.
        let candidates = self.read(|db| {
            db.query(
                "SELECT r.id, r.status FROM runs r JOIN run_artifacts a ON a.run_id = r.id WHERE a.name = $1 AND a.purged_at IS NULL",
                params![PLAN_ARTIFACT],
            )?
            .iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?)))
            .collect::<Result<Vec<(String, String)>>>()
        })?;
        let mut purged = Vec::new();
        for (id, status) in candidates {
            if !RunStatus::parse(&status).is_some_and(RunStatus::is_terminal) {
                continue;
            }
            let done = self.write(|db| {
                // Judged again on the locked row: the record is what ended the run.
                let Some(run) = run_of(db, &id, true)? else {
                    return Ok(false);
                };
                if !run.status.is_terminal() {
                    return Ok(false);
                }
                let Some(detail) = purge_plan(db, &id, now_ms())? else {
                    return Ok(false);
                };
                let audit = NewAudit::ok(
                    "system (run retention)",
                    "run.plan_purged",
                    Some(&run.stack),
                    json!({
                        "run": id,
                        "status": run.status.as_str(),
                        "plan_purged": detail,
                        "why": "the run ended on a server older than migration 0018, which kept its binary plan",
                    }),
                );
                append_audit(db, &audit)?;
                Ok(true)
            })?;
            if done {
                purged.push(id);
            }
        }
        Ok(purged)
    }

    fn runs_planned_since(&self, user: &str, since_ms: i64) -> Result<u64> {
        self.read(|db| {
            count(
                db,
                "SELECT COUNT(*) FROM runs WHERE author_user = $1 AND created_at >= $2",
                params![user, since_ms],
            )
        })
    }

    fn put_run_artifact(&self, id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        self.write(|db| put_run_artifact(db, id, name, bytes))
    }

    fn update_run(&self, id: &str, update: &mut RunUpdate<'_>) -> Result<RunTransition> {
        self.write(|db| update_run(db, id, update))
    }

    fn use_forge_token(&self, issuer: &str, jti: &str, exp: i64, prune_before: i64) -> Result<()> {
        self.write(|db| {
            // The table holds only tokens that could still be accepted. Rows another login is
            // pruning are left to it (PostgreSQL's SKIP LOCKED), so concurrent prunes never wait
            // on or deadlock with each other; SQLite's single writer has no such race.
            let skip_locked = match db.for_update() {
                "" => String::new(),
                lock => format!("{lock} SKIP LOCKED"),
            };
            db.execute(
                &format!("DELETE FROM forge_token_uses WHERE (issuer, jti) IN (SELECT issuer, jti FROM forge_token_uses WHERE exp < $1{skip_locked})"),
                params![prune_before],
            )?;
            // The insert is the check: on PostgreSQL a second transaction inserting the same
            // pair waits for the first and then inserts nothing.
            let inserted = db.execute(
                "INSERT INTO forge_token_uses (issuer, jti, exp, used_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                params![issuer, jti, exp, now_ms()],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!(
                    "forge token {jti} of {issuer} was already used"
                )));
            }
            Ok(())
        })
    }
}

/// Takes `lock` on the locked stack row `id` if no lock is held (then records `audit`), else
/// answers the holder: the one step behind [`Store::lock`] and [`Store::lock_in_place_of`].
fn take_lock(
    db: &mut dyn Sql,
    stack: &str,
    id: i64,
    lock: NewLock,
    audit: &NewAudit,
) -> Result<LockOutcome> {
    let record = LockRecord {
        id: lock.id,
        info: lock.info,
        operation: lock.operation,
        owner_token: lock.owner_token,
        owner: lock.owner,
        created_at: now_ms(),
    };
    // Insert first, read the holder only if there is one: with the stack's row held, the one
    // row this insert can conflict with is a lock already held.
    if !insert_lock_if_free(db, id, &record)? {
        let held = lock_of(db, id)?.ok_or_else(|| {
            StoreError::Backend(format!("stack {stack}: lock conflict without a lock"))
        })?;
        return Ok(LockOutcome::Held(held));
    }
    append_stack_audit(db, stack, audit)?;
    Ok(LockOutcome::Acquired)
}

fn insert_stack(db: &mut dyn Sql, s: &StackRecord) -> Result<()> {
    let a = s.archived.as_ref();
    db.execute(
        "INSERT INTO stacks (name, production, lineage, settings, created_at, archived_at, archived_by, archive_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        params![&s.name, s.production, &s.lineage, to_json(&s.settings), s.created_at, a.map(|a| a.at), a.map(|a| a.by.as_str()), a.map(|a| a.reason.as_str())],
    )
    // A replica creating the same stack at the same moment makes this a unique violation.
    .map_err(|e| unique_is_conflict(e, || format!("stack {} already exists", s.name)))?;
    Ok(())
}

/// Inserts the lock unless the stack has one; whether it did.
fn insert_lock_if_free(db: &mut dyn Sql, stack_id: i64, l: &LockRecord) -> Result<bool> {
    let n = db.execute(
        "INSERT INTO locks (stack_id, lock_id, info, operation, owner_token, owner, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (stack_id) DO NOTHING",
        params![stack_id, &l.id, l.info.clone(), &l.operation, &l.owner_token, &l.owner, l.created_at],
    )?;
    Ok(n == 1)
}

fn insert_lock(db: &mut dyn Sql, stack_id: i64, l: &LockRecord) -> Result<()> {
    db.execute(
        "INSERT INTO locks (stack_id, lock_id, info, operation, owner_token, owner, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        params![stack_id, &l.id, l.info.clone(), &l.operation, &l.owner_token, &l.owner, l.created_at],
    )?;
    Ok(())
}

impl<E: Engine> StoreImport for E {
    fn tokens_with_hashes(&self) -> Result<Vec<(TokenRecord, [u8; 32])>> {
        self.read(|db| {
            db.query(
                &format!("SELECT {TOKEN_COLS}, secret_hash FROM tokens ORDER BY created_at, id"),
                &[],
            )?
            .iter()
            .map(|r| {
                // `secret_hash` follows the token's columns.
                let hash =
                    <[u8; 32]>::try_from(r.bytes(TOKEN_COL_COUNT)?.as_slice()).map_err(|_| {
                        StoreError::Corrupt("a token's secret hash is not 32 bytes".into())
                    })?;
                Ok((token_from_row(r)?, hash))
            })
            .collect()
        })
    }

    fn import_stack(&self, s: &StackRecord) -> Result<()> {
        self.write(|db| insert_stack(db, s))
    }

    fn import_version(&self, meta: &VersionMeta, bytes: &[u8]) -> Result<()> {
        let mut p = prepare(bytes);
        check_import_bytes(meta, &p)?;
        self.read(|db| p.compress_missing(db))?;
        self.write(|db| import_version(db, meta, &p))
    }

    fn import_lock(&self, stack: &str, l: &LockRecord) -> Result<()> {
        self.write(|db| {
            let (id, _) = lock_stack(db, stack)?;
            if lock_of(db, id)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "stack {stack} is locked already"
                )));
            }
            insert_lock(db, id, l)
        })
    }

    fn import_token(&self, t: &TokenRecord, secret_hash: &[u8; 32]) -> Result<()> {
        self.write(|db| {
            db.execute(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, revoked_at, created_by, run_id, user_name, parent_id, read_stacks, minted_by, revoked_reason, job_ref) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                params![&t.id, &secret_hash[..], &t.name, t.role.as_str(), to_json(&t.stacks), t.created_at, t.expires_at, t.revoked_at, &t.created_by, &t.run_id, &t.user, &t.parent_id, to_json(&t.read_stacks), &t.minted_by, &t.revoked_reason, &t.job_ref],
            )
            .map_err(|e| match e {
                // The foreign key: a minter is imported before what it minted.
                DbError::ForeignKey => StoreError::NotFound(format!(
                    "token {}: its minting token {} is not stored (import minters first)",
                    t.id,
                    t.minted_by.as_deref().unwrap_or_default()
                )),
                e => unique_is_conflict(e, || format!("token {} already exists", t.id)),
            })?;
            Ok(())
        })
    }

    fn import_user(&self, u: &UserRecord) -> Result<()> {
        self.write(|db| {
            db.execute(
                "INSERT INTO users (name, created_at, created_by) VALUES ($1, $2, $3)",
                params![&u.name, u.created_at, &u.created_by],
            )
            .map_err(|e| unique_is_conflict(e, || format!("user {} already exists", u.name)))?;
            for login in &u.forge_logins {
                insert_forge_login(db, &u.name, login, u.created_at, &u.created_by)?;
            }
            Ok(())
        })
    }

    fn import_policy_set(&self, set: &PolicySetRecord) -> Result<()> {
        if policy_set_sha256(&set.files) != set.sha256 {
            return Err(StoreError::Corrupt(format!(
                "policy set {}: its files do not hash to {}",
                set.id, set.sha256
            )));
        }
        let text =
            serde_json::to_string(&set.files).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.write(|db| {
            db.execute(
                &format!("INSERT INTO policy_sets ({POLICY_SET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
                params![&set.id, &set.stack_glob, set.version, &text, &set.sha256, set.created_at, &set.created_by, set.removed_at, &set.removed_by, &set.removed_reason],
            )
            .map_err(|e| unique_is_conflict(e, || format!("policy set {} already exists", set.id)))?;
            Ok(())
        })
    }

    fn import_oidc_trust(&self, t: &OidcTrustRecord) -> Result<()> {
        self.write(|db| {
            // The trust is the user of its tokens; that user comes with the users.
            if db
                .query_opt("SELECT name FROM users WHERE name = $1", params![&t.id])?
                .is_none()
            {
                return Err(StoreError::NotFound(format!(
                    "user {} (the user of trust {}'s tokens)",
                    t.id, t.id
                )));
            }
            db.execute(
                &format!("INSERT INTO oidc_trusts ({OIDC_TRUST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"),
                params![&t.id, &t.forge, &t.issuer, &t.audience, &t.repository, &t.git_ref, &t.environment, &t.role, to_json(&t.stacks), t.lifetime_ms, t.created_at, &t.created_by, t.removed_at, &t.removed_by, &t.repository_id, &t.owner_id],
            )
            .map_err(|e| unique_is_conflict(e, || format!("trust {} already exists", t.id)))?;
            Ok(())
        })
    }

    fn all_drift_reports(&self) -> Result<Vec<DriftReportRecord>> {
        self.read(|db| {
            db.query(
                &format!(
                    "SELECT {DRIFT_COLUMNS}, d.report FROM drift_reports d JOIN stacks s ON s.id = d.stack_id ORDER BY d.created_at, d.id"
                ),
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(DriftReportRecord {
                    meta: drift_from_row(r)?,
                    report: r.text(8)?,
                })
            })
            .collect()
        })
    }

    fn import_drift_report(&self, d: &DriftReportRecord) -> Result<()> {
        let m = &d.meta;
        if !["in_sync", "drifted", "unknown"].contains(&m.status.as_str()) {
            return Err(StoreError::Corrupt(format!(
                "drift report {}: status {:?} is not in_sync, drifted or unknown",
                m.id, m.status
            )));
        }
        self.write(|db| {
            let (stack_id, _) = lock_stack(db, &m.stack)?;
            // The serial binding: a report names a state the stack had (none: no state yet).
            if let Some(serial) = m.serial {
                let known = i64::try_from(serial).is_ok()
                    && db
                        .query_opt(
                            "SELECT serial FROM versions WHERE stack_id = $1 AND serial = $2",
                            params![stack_id, bigint(serial, "serial")?],
                        )?
                        .is_some();
                if !known {
                    return Err(StoreError::Conflict(format!(
                        "drift report {} names serial {serial} of stack {}, which has no such version",
                        m.id, m.stack
                    )));
                }
            }
            let serial = m.serial.map(|s| bigint(s, "serial")).transpose()?;
            db.execute(
                "INSERT INTO drift_reports (id, stack_id, status, serial, drifted, findings, reported_by, created_at, report) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                params![
                    &m.id,
                    stack_id,
                    &m.status,
                    &serial,
                    bigint(m.drifted, "drifted count")?,
                    bigint(m.findings, "findings count")?,
                    &m.reported_by,
                    m.created_at,
                    &d.report
                ],
            )
            .map_err(|e| unique_is_conflict(e, || format!("drift report {} already exists", m.id)))?;
            Ok(())
        })
    }

    fn import_grant(&self, g: &GrantRecord) -> Result<()> {
        self.write(|db| insert_grant(db, g, false))
    }

    fn import_audit(&self, record: &AuditRecord) -> Result<()> {
        self.write(|db| import_audit(db, record))
    }

    fn import_run(
        &self,
        run: &RunRecord,
        artifacts: &[(&str, &[u8])],
        tombstones: &[ArtifactInfo],
    ) -> Result<()> {
        let artifacts = prepare_artifacts(artifacts);
        self.write(|db| insert_run(db, run, &artifacts, tombstones, None))
    }
}

impl<E: Engine> StoreStats for E {
    fn stored_state_bytes(&self) -> Result<u64> {
        self.read(|db| {
            let chunks = count(
                db,
                "SELECT CAST(COALESCE(SUM(octet_length(data) + 40), 0) AS BIGINT) FROM chunks",
                &[],
            )?;
            let lists = count(
                db,
                "SELECT CAST(COALESCE(SUM(octet_length(chunks) + 120), 0) AS BIGINT) FROM versions",
                &[],
            )?;
            Ok(chunks + lists)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStore;

    /// A write compresses only the chunks the database does not hold yet: after one version
    /// of a 0.8 MB body, the next (one value changed) compresses at most two of its chunks.
    #[test]
    fn the_token_column_count_is_the_columns() {
        assert_eq!(super::TOKEN_COLS.split(',').count(), super::TOKEN_COL_COUNT);
    }

    #[test]
    fn only_new_chunks_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        let doc = |v: &str| -> Vec<u8> {
            (0..40_000)
                .map(|i| format!("{{\"r{i}\":\"{}\"}},", if i == 20_000 { v } else { "same" }))
                .collect::<String>()
                .into_bytes()
        };
        let (a, b) = (doc("one"), doc("two"));
        let compressed = |p: &Prepared<'_>| p.compressed.iter().filter(|z| z.is_some()).count();
        let mut p = prepare(&a);
        store.read(|db| p.compress_missing(db)).unwrap();
        assert_eq!(compressed(&p), p.chunks.len());
        assert!(p.chunks.len() > 5, "{} chunks", p.chunks.len());
        store
            .write(|db| db.put_chunks(&p.chunks, &p.compressed))
            .unwrap();
        let mut q = prepare(&b);
        store.read(|db| q.compress_missing(db)).unwrap();
        assert!(
            (1..=2).contains(&compressed(&q)),
            "{} compressed",
            compressed(&q)
        );
        // A chunk thought stored but missing at insert time is compressed and stored anyway.
        let fresh = tempfile::tempdir().unwrap();
        let other = SqliteStore::open(&fresh.path().join("b.db")).unwrap();
        other
            .write(|db| db.put_chunks(&q.chunks, &q.compressed))
            .unwrap();
        let hashes: Vec<[u8; 32]> = q.chunks.iter().map(|c| c.hash).collect();
        let stored = other.read(|db| db.load_chunks(&hashes)).unwrap();
        let mut joined = Vec::new();
        for c in &q.chunks {
            let (data, raw_len) = &stored[&c.hash[..]];
            joined.extend(blob::decompress(data, *raw_len as usize).unwrap());
        }
        assert_eq!(joined, b);
    }
}
