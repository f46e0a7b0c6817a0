//! The embedded SQLite engine: one file under the data dir, WAL, `synchronous=FULL`, foreign
//! keys on. One writer connection (SQLite serializes writers anyway; `BEGIN IMMEDIATE` makes
//! the firewall check and the write one atomic step) and a small pool of reader connections.

use std::path::Path;
use std::sync::Mutex;

use airlock_core::audit::{chain_hash, AuditRecord, GENESIS};
use airlock_core::time::rfc3339;
use airlock_core::Role;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::blob;
use crate::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_runs.sql")),
    (3, include_str!("../migrations/sqlite/0003_users.sql")),
];
// Enough idle readers for a burst of concurrent GETs without reopening connections.
const MAX_IDLE_READERS: usize = 32;

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        backend(e)
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
    )?;
    Ok(conn)
}

impl SqliteStore {
    /// Inserts a run and its artifacts; `audit` is `None` for a backup import, whose history
    /// is the imported audit chain.
    fn insert_run(
        &self,
        run: &RunRecord,
        artifacts: &[(&str, &[u8])],
        audit: Option<&NewAudit>,
    ) -> Result<()> {
        let record = serde_json::to_string(run).map_err(|e| StoreError::Backend(e.to_string()))?;
        let compressed: Vec<(&str, [u8; 32], usize, Vec<u8>)> = artifacts
            .iter()
            .map(|(n, b)| (*n, blob::sha256(b), b.len(), blob::compress(b)))
            .collect();
        self.write(|tx| {
            let (stack_id, _) = require_stack(tx, &run.stack)?;
            tx.execute(
                "INSERT INTO runs (id, stack_id, status, created_at, record) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run.id, stack_id, run.status.as_str(), run.created_at, record],
            )
            .map_err(|e| constraint_is_conflict(e, || format!("run {} already exists", run.id)))?;
            for (name, sha, len, data) in &compressed {
                tx.execute(
                    "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![run.id, name, &sha[..], *len as i64, data],
                )
                .map_err(|e| constraint_is_conflict(e, || format!("run {} has two artifacts named {name}", run.id)))?;
            }
            if let Some(audit) = audit {
                append_audit_tx(tx, audit)?;
            }
            Ok(())
        })
    }

    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut writer = open_conn(path)?;
        migrate(&mut writer)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.readers.lock().map_err(|_| poisoned())?.pop() {
            Some(c) => c,
            None => open_conn(&self.path)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().map_err(|_| poisoned())?;
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().map_err(|_| poisoned())?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn poisoned() -> StoreError {
    StoreError::Backend("a database connection lock was poisoned by an earlier panic".into())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, now_ms()],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

// ---- row mapping ----

fn json_col<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn stack_row(conn: &Connection, name: &str) -> Result<Option<(i64, StackRecord)>> {
    let row = conn
        .query_row(
            "SELECT id, name, production, lineage, settings, created_at FROM stacks WHERE name = ?1",
            [name],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?, r.get::<_, Option<String>>(3)?, r.get::<_, String>(4)?, r.get::<_, i64>(5)?)),
        )
        .optional()?;
    row.map(|(id, name, production, lineage, settings, created_at)| {
        Ok((
            id,
            StackRecord {
                name,
                production,
                lineage,
                settings: json_col(&settings, "stack settings")?,
                created_at,
            },
        ))
    })
    .transpose()
}

fn require_stack(conn: &Connection, name: &str) -> Result<(i64, StackRecord)> {
    stack_row(conn, name)?.ok_or_else(|| StoreError::NotFound(format!("stack {name}")))
}

const VERSION_COLS: &str =
    "serial, lineage, sha256, size, author, lock_id, run_id, reason, restored_from, created_at";

fn version_from_row(stack: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionMeta> {
    Ok(VersionMeta {
        stack: stack.to_owned(),
        serial: r.get::<_, i64>(0)? as u64,
        lineage: r.get(1)?,
        sha256: hex::encode(r.get::<_, Vec<u8>>(2)?),
        size: r.get::<_, i64>(3)? as u64,
        author: r.get(4)?,
        lock_id: r.get(5)?,
        run_id: r.get(6)?,
        reason: r.get(7)?,
        restored_from: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
        created_at: r.get(9)?,
    })
}

fn current_version_of(
    conn: &Connection,
    stack_id: i64,
    stack: &str,
) -> Result<Option<VersionMeta>> {
    Ok(conn
        .query_row(
            &format!("SELECT {VERSION_COLS} FROM versions WHERE stack_id = ?1 ORDER BY serial DESC LIMIT 1"),
            [stack_id],
            |r| version_from_row(stack, r),
        )
        .optional()?)
}

fn lock_of(conn: &Connection, stack_id: i64) -> Result<Option<LockRecord>> {
    Ok(conn
        .query_row(
            "SELECT lock_id, info, operation, owner_token, owner, created_at FROM locks WHERE stack_id = ?1",
            [stack_id],
            |r| Ok(LockRecord { id: r.get(0)?, info: r.get(1)?, operation: r.get(2)?, owner_token: r.get(3)?, owner: r.get(4)?, created_at: r.get(5)? }),
        )
        .optional()?)
}

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRecord, String, String)> {
    Ok((
        TokenRecord {
            id: r.get(0)?,
            name: r.get(1)?,
            role: Role::Reader, // replaced below once the text is parsed
            stacks: Vec::new(),
            created_at: r.get(4)?,
            expires_at: r.get(5)?,
            revoked_at: r.get(6)?,
            created_by: r.get(7)?,
            run_id: r.get(8)?,
            user: r.get(9)?,
            parent_id: r.get(10)?,
        },
        r.get(2)?,
        r.get(3)?,
    ))
}

fn token_by_id(conn: &Connection, id: &str) -> Result<Option<TokenRecord>> {
    conn.query_row(
        &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1"),
        [id],
        token_from_row,
    )
    .optional()?
    .map(finish_token)
    .transpose()
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        name: r.get(0)?,
        created_at: r.get(1)?,
        created_by: r.get(2)?,
    })
}

fn user_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM users WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )?)
}

fn finish_token((mut t, role, stacks): (TokenRecord, String, String)) -> Result<TokenRecord> {
    t.role = role.parse().map_err(StoreError::Corrupt)?;
    t.stacks = json_col(&stacks, "token stacks")?;
    Ok(t)
}

const TOKEN_COLS: &str =
    "id, name, role, stacks, created_at, expires_at, revoked_at, created_by, run_id, user_name, parent_id";

fn grant_from_row(stack: &str, r: &rusqlite::Row<'_>) -> rusqlite::Result<(GrantRecord, String)> {
    Ok((
        GrantRecord {
            id: r.get(0)?,
            stack: stack.to_owned(),
            addresses: Vec::new(),
            reason: r.get(2)?,
            created_by: r.get(3)?,
            created_at: r.get(4)?,
            expires_at: r.get(5)?,
            consumed_at: r.get(6)?,
            run_id: r.get(7)?,
        },
        r.get(1)?,
    ))
}

const GRANT_COLS: &str =
    "id, addresses, reason, created_by, created_at, expires_at, consumed_at, run_id";

fn grants_of(
    conn: &Connection,
    stack_id: i64,
    stack: &str,
    active_only: bool,
) -> Result<Vec<GrantRecord>> {
    let sql = if active_only {
        format!("SELECT {GRANT_COLS} FROM grants WHERE stack_id = ?1 AND consumed_at IS NULL AND expires_at > ?2 ORDER BY created_at DESC, id")
    } else {
        format!("SELECT {GRANT_COLS} FROM grants WHERE stack_id = ?1 AND ?2 = ?2 ORDER BY created_at DESC, id")
    };
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params![stack_id, now_ms()], |r| grant_from_row(stack, r))?;
    rows.map(|row| {
        let (mut g, addrs) = row?;
        g.addresses = json_col(&addrs, "grant addresses")?;
        Ok(g)
    })
    .collect()
}

fn append_audit_tx(conn: &Connection, e: &NewAudit) -> Result<AuditRecord> {
    let (prev_seq, prev_hash): (i64, String) = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, GENESIS.to_owned()));
    let seq = prev_seq + 1;
    let at = rfc3339(now_ms());
    let hash = chain_hash(
        &prev_hash,
        seq,
        &at,
        &e.actor,
        &e.action,
        e.stack.as_deref(),
        &e.outcome,
        &e.detail,
    );
    conn.execute(
        "INSERT INTO audit (seq, at, actor, action, stack, outcome, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![seq, at, e.actor, e.action, e.stack, e.outcome, e.detail.to_string(), prev_hash, hash],
    )?;
    Ok(AuditRecord {
        seq,
        at,
        actor: e.actor.clone(),
        action: e.action.clone(),
        stack: e.stack.clone(),
        outcome: e.outcome.clone(),
        detail: e.detail.clone(),
        prev_hash,
        hash,
    })
}

fn run_of(conn: &Connection, id: &str) -> Result<Option<RunRecord>> {
    let record: Option<String> = conn
        .query_row("SELECT record FROM runs WHERE id = ?1", [id], |r| r.get(0))
        .optional()?;
    record.map(|r| json_col(&r, "run record")).transpose()
}

/// Maps a constraint violation (unique key, foreign key) to `Conflict` with `what`.
fn constraint_is_conflict(e: rusqlite::Error, what: impl FnOnce() -> String) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(what())
        }
        e => backend(e),
    }
}

fn version_bytes_of(conn: &Connection, stack_id: i64, serial: u64) -> Result<Vec<u8>> {
    let (sha, size, list): (Vec<u8>, i64, Vec<u8>) = conn
        .query_row(
            "SELECT sha256, size, chunks FROM versions WHERE stack_id = ?1 AND serial = ?2",
            params![stack_id, serial as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("version {serial}")))?;
    let mut out = Vec::with_capacity(size.max(0) as usize);
    let mut stmt = conn.prepare_cached("SELECT data, raw_len FROM chunks WHERE hash = ?1")?;
    for h in blob::parse_chunk_list(&list) {
        let (data, raw_len): (Vec<u8>, i64) = stmt
            .query_row([&h[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "version {serial}: chunk {} is missing",
                    hex::encode(h)
                ))
            })?;
        let raw = blob::decompress(&data, raw_len.max(0) as usize).map_err(|e| {
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

impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn token_count(&self) -> Result<u64> {
        self.read(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    fn create_token(&self, t: NewToken, audit: NewAudit) -> Result<TokenRecord> {
        self.write(|tx| {
            let now = now_ms();
            let parent = t.parent_id.as_deref().map(|p| token_by_id(tx, p)).transpose()?.flatten();
            let user = parent.as_ref().map_or(t.user.as_str(), |p| p.user.as_str());
            let recent_derived = match t.mint_limit {
                Some(l) => tx.query_row(
                    "SELECT COUNT(*) FROM tokens WHERE user_name = ?1 AND parent_id IS NOT NULL AND run_id IS NULL AND created_at > ?2",
                    params![user, now - l.window_ms],
                    |r| r.get::<_, i64>(0),
                )? as u64,
                None => 0,
            };
            let ctx = MintContext { parent: parent.as_ref(), user_exists: user_exists(tx, user)?, recent_derived, now };
            let t = t.judge(ctx)?;
            tx.execute(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, created_by, run_id, user_name, parent_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![t.id, &t.secret_hash[..], t.name, t.role.as_str(), serde_json::to_string(&t.stacks).unwrap_or_default(), now, t.expires_at, t.created_by, t.run_id, t.user, t.parent_id],
            )
            .map_err(|e| constraint_is_conflict(e, || format!("token {} already exists", t.id)))?;
            append_audit_tx(tx, &audit)?;
            Ok(t.into_record(now))
        })
    }

    fn token_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRecord>> {
        self.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {TOKEN_COLS} FROM tokens WHERE secret_hash = ?1"
            ))?
            .query_row([&secret_hash[..]], token_from_row)
            .optional()?
            .map(finish_token)
            .transpose()
        })
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.read(|c| token_by_id(c, id))
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {TOKEN_COLS} FROM tokens ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([], token_from_row)?;
            rows.map(|r| finish_token(r?)).collect()
        })
    }

    fn revoke_token(&self, id: &str, audit: NewAudit) -> Result<TokenRecord> {
        self.write(|tx| {
            let now = now_ms();
            let n = tx.execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )?;
            let t = token_by_id(tx, id)?.ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
            if n == 1 {
                append_audit_tx(tx, &audit)?;
            }
            let mut stmt = tx.prepare(
                "WITH RECURSIVE d(id) AS (SELECT id FROM tokens WHERE parent_id = ?1 UNION SELECT t.id FROM tokens t JOIN d ON t.parent_id = d.id) \
                 UPDATE tokens SET revoked_at = ?2 WHERE revoked_at IS NULL AND id IN (SELECT id FROM d) RETURNING id",
            )?;
            let mut cascaded = stmt
                .query_map(params![id, now], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            if !cascaded.is_empty() {
                cascaded.sort();
                append_audit_tx(tx, &audit.cascade(id, &cascaded))?;
            }
            Ok(t)
        })
    }

    fn create_user(&self, u: NewUser, audit: NewAudit) -> Result<UserRecord> {
        self.write(|tx| {
            let now = now_ms();
            tx.execute(
                "INSERT INTO users (name, created_at, created_by) VALUES (?1, ?2, ?3)",
                params![u.name, now, u.created_by],
            )
            .map_err(|e| constraint_is_conflict(e, || format!("user {} already exists", u.name)))?;
            append_audit_tx(tx, &audit)?;
            Ok(UserRecord {
                name: u.name,
                created_at: now,
                created_by: u.created_by,
            })
        })
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT name, created_at, created_by FROM users WHERE name = ?1",
                [name],
                user_from_row,
            )
            .optional()?)
        })
    }

    fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT name, created_at, created_by FROM users ORDER BY name")?;
            let rows = stmt.query_map([], user_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    fn create_stack(
        &self,
        name: &str,
        production: bool,
        settings: StackSettings,
        audit: NewAudit,
    ) -> Result<StackRecord> {
        self.write(|tx| {
            if stack_row(tx, name)?.is_some() {
                return Err(StoreError::Conflict(format!("stack {name} already exists")));
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO stacks (name, production, settings, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, production, serde_json::to_string(&settings).unwrap_or_default(), now],
            )?;
            append_audit_tx(tx, &audit)?;
            Ok(StackRecord { name: name.to_owned(), production, lineage: None, settings, created_at: now })
        })
    }

    fn stack(&self, name: &str) -> Result<Option<StackRecord>> {
        self.read(|c| Ok(stack_row(c, name)?.map(|(_, s)| s)))
    }

    fn list_stacks(&self) -> Result<Vec<StackRecord>> {
        self.read(|c| {
            let names: Vec<String> = c
                .prepare("SELECT name FROM stacks ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            names
                .iter()
                .map(|n| require_stack(c, n).map(|(_, s)| s))
                .collect()
        })
    }

    fn update_stack_settings(
        &self,
        name: &str,
        settings: StackSettings,
        audit: NewAudit,
    ) -> Result<StackRecord> {
        self.write(|tx| {
            let (id, mut s) = require_stack(tx, name)?;
            tx.execute(
                "UPDATE stacks SET settings = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(&settings).unwrap_or_default()],
            )?;
            append_audit_tx(tx, &audit)?;
            s.settings = settings;
            Ok(s)
        })
    }

    fn lock(&self, stack: &str, lock: NewLock, audit: NewAudit) -> Result<LockOutcome> {
        self.write(|tx| {
            let (id, _) = require_stack(tx, stack)?;
            if let Some(held) = lock_of(tx, id)? {
                return Ok(LockOutcome::Held(held));
            }
            tx.execute(
                "INSERT INTO locks (stack_id, lock_id, info, operation, owner_token, owner, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, lock.id, lock.info, lock.operation, lock.owner_token, lock.owner, now_ms()],
            )?;
            append_audit_tx(tx, &audit)?;
            Ok(LockOutcome::Acquired)
        })
    }

    fn unlock(&self, stack: &str, by: UnlockBy, audit: NewAudit) -> Result<UnlockOutcome> {
        self.write(|tx| {
            let (id, _) = require_stack(tx, stack)?;
            let Some(held) = lock_of(tx, id)? else {
                return Ok(UnlockOutcome::NotLocked);
            };
            if let UnlockBy::Id(want) = &by {
                if *want != held.id {
                    return Ok(UnlockOutcome::Mismatch(held));
                }
            }
            tx.execute("DELETE FROM locks WHERE stack_id = ?1", [id])?;
            append_audit_tx(tx, &audit)?;
            Ok(UnlockOutcome::Released(held))
        })
    }

    fn current_lock(&self, stack: &str) -> Result<Option<LockRecord>> {
        self.read(|c| {
            let (id, _) = require_stack(c, stack)?;
            lock_of(c, id)
        })
    }

    fn current_version(&self, stack: &str) -> Result<Option<VersionMeta>> {
        self.read(|c| {
            let (id, _) = require_stack(c, stack)?;
            current_version_of(c, id, stack)
        })
    }

    fn version(&self, stack: &str, serial: u64) -> Result<Option<VersionMeta>> {
        self.read(|c| {
            let (id, _) = require_stack(c, stack)?;
            Ok(c.query_row(
                &format!("SELECT {VERSION_COLS} FROM versions WHERE stack_id = ?1 AND serial = ?2"),
                params![id, serial as i64],
                |r| version_from_row(stack, r),
            )
            .optional()?)
        })
    }

    fn versions(&self, stack: &str) -> Result<Vec<VersionMeta>> {
        self.read(|c| {
            let (id, _) = require_stack(c, stack)?;
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLS} FROM versions WHERE stack_id = ?1 ORDER BY serial"
            ))?;
            let rows = stmt.query_map([id], |r| version_from_row(stack, r))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    fn version_bytes(&self, stack: &str, serial: u64) -> Result<Vec<u8>> {
        self.read(|c| {
            let (id, _) = require_stack(c, stack)?;
            version_bytes_of(c, id, serial)
        })
    }

    fn write_state(
        &self,
        stack: &str,
        attempt: WriteAttempt,
        check: &mut WriteCheck<'_>,
    ) -> Result<WriteResult> {
        // Chunk, hash and compress before taking the write lock: it is the expensive part.
        let chunks = blob::split(&attempt.body);
        let compressed: Vec<Vec<u8>> = chunks.iter().map(|c| blob::compress(c.raw)).collect();
        let sha = blob::sha256(&attempt.body);
        // SQLite integers are i64: a larger serial would be stored negative and sort first,
        // hiding the version it names. Refused, as on PostgreSQL.
        let serial = i64::try_from(attempt.serial).map_err(|_| {
            StoreError::Conflict(format!("serial {} is too large to store", attempt.serial))
        })?;
        self.write(|tx| {
            let (stack_id, record) = require_stack(tx, stack)?;
            let lock = lock_of(tx, stack_id)?;
            let current = current_version_of(tx, stack_id, stack)?;
            let grants = grants_of(tx, stack_id, stack, true)?;
            let load_current = || match &current {
                Some(v) => version_bytes_of(tx, stack_id, v.serial),
                None => Err(StoreError::NotFound("no current version".into())),
            };
            let ctx = WriteContext { stack: &record, lock: lock.as_ref(), current: current.as_ref(), grants: &grants, load_current: &load_current };
            let (consume, audit) = match check(&ctx) {
                Err(refusal) => return Ok(WriteResult::Refused(refusal)),
                Ok(WriteDecision::Unchanged) => return Ok(WriteResult::Unchanged),
                Ok(WriteDecision::Store { consume_grants, audit }) => (consume_grants, audit),
            };
            let mut put = tx.prepare_cached("INSERT OR IGNORE INTO chunks (hash, data, raw_len) VALUES (?1, ?2, ?3)")?;
            for (c, z) in chunks.iter().zip(&compressed) {
                put.execute(params![&c.hash[..], z, c.raw.len() as i64])?;
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO versions (stack_id, serial, lineage, sha256, size, chunks, author, lock_id, run_id, reason, restored_from, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    stack_id,
                    serial,
                    attempt.lineage,
                    &sha[..],
                    attempt.body.len() as i64,
                    blob::chunk_list(&chunks),
                    attempt.author,
                    attempt.lock_id,
                    attempt.run_id,
                    attempt.reason,
                    attempt.restored_from.map(|v| v as i64),
                    now
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    StoreError::Conflict(format!("serial {} already exists", attempt.serial))
                }
                e => backend(e),
            })?;
            if record.lineage.is_none() {
                tx.execute("UPDATE stacks SET lineage = ?2 WHERE id = ?1", params![stack_id, attempt.lineage])?;
            }
            for g in &consume {
                tx.execute("UPDATE grants SET consumed_at = ?2 WHERE id = ?1 AND consumed_at IS NULL", params![g, now])?;
            }
            append_audit_tx(tx, &audit)?;
            Ok(WriteResult::Stored(attempt.version_meta(stack, &sha, now)))
        })
    }

    fn stored_state_bytes(&self) -> Result<u64> {
        self.read(|c| {
            let chunks: i64 = c.query_row(
                "SELECT COALESCE(SUM(LENGTH(data) + 40), 0) FROM chunks",
                [],
                |r| r.get(0),
            )?;
            let lists: i64 = c.query_row(
                "SELECT COALESCE(SUM(LENGTH(chunks) + 120), 0) FROM versions",
                [],
                |r| r.get(0),
            )?;
            Ok((chunks + lists) as u64)
        })
    }

    fn create_grant(&self, stack: &str, g: NewGrant, audit: NewAudit) -> Result<GrantRecord> {
        self.write(|tx| {
            let (stack_id, _) = require_stack(tx, stack)?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO grants (id, stack_id, addresses, reason, created_by, created_at, expires_at, run_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![g.id, stack_id, serde_json::to_string(&g.addresses).unwrap_or_default(), g.reason, g.created_by, now, g.expires_at, g.run_id],
            )?;
            append_audit_tx(tx, &audit)?;
            Ok(g.into_record(stack, now))
        })
    }

    fn grants(&self, stack: &str) -> Result<Vec<GrantRecord>> {
        self.read(|c| {
            let (id, _) = require_stack(c, stack)?;
            grants_of(c, id, stack, false)
        })
    }

    fn append_audit(&self, event: NewAudit) -> Result<AuditRecord> {
        self.write(|tx| append_audit_tx(tx, &event))
    }

    fn audit_events(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, at, actor, action, stack, outcome, detail, prev_hash, hash FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, String>(8)?,
                ))
            })?;
            rows.map(|row| {
                let (seq, at, actor, action, stack, outcome, detail, prev_hash, hash) = row?;
                Ok(AuditRecord { seq, at, actor, action, stack, outcome, detail: json_col(&detail, "audit detail")?, prev_hash, hash })
            })
            .collect()
        })
    }

    fn audit_search(&self, filter: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT seq, at, actor, action, stack, outcome, detail, prev_hash, hash FROM audit WHERE {SQLITE_AUDIT_FILTER} ORDER BY seq DESC LIMIT ?8"
            ))?;
            let f = filter;
            let rows = stmt.query_map(
                params![f.before, f.stack, f.action, f.outcome, f.actor, f.since, f.until, limit],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, String>(8)?,
                    ))
                },
            )?;
            rows.map(|row| {
                let (seq, at, actor, action, stack, outcome, detail, prev_hash, hash) = row?;
                Ok(AuditRecord { seq, at, actor, action, stack, outcome, detail: json_col(&detail, "audit detail")?, prev_hash, hash })
            })
            .collect()
        })
    }

    fn audit_count(&self, filter: &AuditFilter) -> Result<u64> {
        self.read(|c| {
            let f = filter;
            let n: i64 = c.query_row(
                &format!("SELECT COUNT(*) FROM audit WHERE {SQLITE_AUDIT_FILTER}"),
                params![f.before, f.stack, f.action, f.outcome, f.actor, f.since, f.until],
                |r| r.get(0),
            )?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    // --- governed runs ---
    fn create_run(
        &self,
        run: &RunRecord,
        artifacts: &[(&str, &[u8])],
        audit: NewAudit,
    ) -> Result<()> {
        self.insert_run(run, artifacts, Some(&audit))
    }

    fn run(&self, id: &str) -> Result<Option<RunRecord>> {
        self.read(|c| run_of(c, id))
    }

    fn runs_where(&self, f: &RunFilter, limit: u32) -> Result<Vec<RunRecord>> {
        self.read(|c| {
            let stack_id = match &f.stack {
                Some(name) => Some(require_stack(c, name)?.0),
                None => None,
            };
            // The author is the user, the token id, or the token name (`author` is "name (id)").
            let records: Vec<String> = c
                .prepare(
                    "SELECT record FROM runs WHERE (?1 IS NULL OR stack_id = ?1) AND (?2 IS NULL OR status = ?2) \
                     AND (?3 IS NULL OR json_extract(record, '$.author_user') = ?3 OR json_extract(record, '$.author_token') = ?3 \
                          OR substr(json_extract(record, '$.author'), 1, length(?3) + 2) = ?3 || ' (') \
                     AND (?4 IS NULL OR substr(json_extract(record, '$.git_head'), 1, length(?4)) = ?4) \
                     ORDER BY created_at DESC, id LIMIT ?5",
                )?
                .query_map(
                    params![stack_id, f.status.map(RunStatus::as_str), f.author, f.commit, limit],
                    |r| r.get(0),
                )?
                .collect::<rusqlite::Result<_>>()?;
            records.iter().map(|r| json_col(r, "run record")).collect()
        })
    }

    fn run_artifact(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(|c| {
            let row: Option<(Vec<u8>, i64, Vec<u8>)> = c
                .query_row("SELECT sha256, raw_len, data FROM run_artifacts WHERE run_id = ?1 AND name = ?2", params![id, name], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            row.map(|(sha, len, data)| {
                let raw = blob::decompress(&data, len.max(0) as usize).map_err(|e| StoreError::Corrupt(format!("run {id} artifact {name}: {e}")))?;
                if blob::sha256(&raw)[..] != sha[..] {
                    return Err(StoreError::Corrupt(format!("run {id} artifact {name} does not match its SHA-256")));
                }
                Ok(raw)
            })
            .transpose()
        })
    }

    fn put_run_artifact(&self, id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let (sha, data) = (blob::sha256(bytes), blob::compress(bytes));
        self.write(|tx| {
            tx.execute(
                "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, &sha[..], bytes.len() as i64, data],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                    StoreError::NotFound(format!("run {id}"))
                }
                e => constraint_is_conflict(e, || format!("run {id} already has an artifact named {name}")),
            })?;
            Ok(())
        })
    }

    fn update_run(&self, id: &str, update: &mut RunUpdate<'_>) -> Result<RunTransition> {
        self.write(|tx| {
            let run = run_of(tx, id)?.ok_or_else(|| StoreError::NotFound(format!("run {id}")))?;
            let (stack_id, stack) = require_stack(tx, &run.stack)?;
            let current = current_version_of(tx, stack_id, &run.stack)?;
            let (record, result) = match update(&run, &stack, current.as_ref()) {
                Ok((new, audit)) => (Some((new.clone(), audit)), Ok(new)),
                Err(RunRefusal { refusal, record }) => (record.map(|b| *b), Err(refusal)),
            };
            if let Some((new, audit)) = record {
                let json =
                    serde_json::to_string(&new).map_err(|e| StoreError::Backend(e.to_string()))?;
                tx.execute(
                    "UPDATE runs SET status = ?2, record = ?3 WHERE id = ?1",
                    params![id, new.status.as_str(), json],
                )?;
                append_audit_tx(tx, &audit)?;
                if run.status == RunStatus::Applying && new.status != RunStatus::Applying {
                    // A run's removal grant ends with its apply.
                    tx.execute(
                        "UPDATE grants SET consumed_at = ?2 WHERE run_id = ?1 AND consumed_at IS NULL",
                        params![id, crate::now_ms()],
                    )?;
                }
            }
            Ok(result)
        })
    }

    // --- backup import ---
    fn tokens_with_hashes(&self) -> Result<Vec<(TokenRecord, [u8; 32])>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {TOKEN_COLS}, secret_hash FROM tokens ORDER BY created_at, id"
            ))?;
            let rows =
                stmt.query_map([], |r| Ok((token_from_row(r)?, r.get::<_, Vec<u8>>(11)?)))?;
            rows.map(|row| {
                let (t, hash) = row?;
                let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
                    StoreError::Corrupt("a token's secret hash is not 32 bytes".into())
                })?;
                Ok((finish_token(t)?, hash))
            })
            .collect()
        })
    }

    fn import_stack(&self, s: &StackRecord) -> Result<()> {
        self.write(|tx| {
            if stack_row(tx, &s.name)?.is_some() {
                return Err(StoreError::Conflict(format!("stack {} already exists", s.name)));
            }
            tx.execute(
                "INSERT INTO stacks (name, production, lineage, settings, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.name, s.production, s.lineage, serde_json::to_string(&s.settings).unwrap_or_default(), s.created_at],
            )?;
            Ok(())
        })
    }

    fn import_version(&self, meta: &VersionMeta, bytes: &[u8]) -> Result<()> {
        let sha = blob::sha256(bytes);
        if hex::encode(sha) != meta.sha256 || bytes.len() as u64 != meta.size {
            return Err(StoreError::Corrupt(format!(
                "stack {} serial {}: the bytes do not match the recorded SHA-256 and size",
                meta.stack, meta.serial
            )));
        }
        let serial = i64::try_from(meta.serial).map_err(|_| {
            StoreError::Conflict(format!("serial {} is too large to store", meta.serial))
        })?;
        let restored_from = meta
            .restored_from
            .map(i64::try_from)
            .transpose()
            .map_err(|_| StoreError::Conflict("restored_from is too large to store".into()))?;
        let chunks = blob::split(bytes);
        let compressed: Vec<Vec<u8>> = chunks.iter().map(|c| blob::compress(c.raw)).collect();
        self.write(|tx| {
            let (stack_id, _) = require_stack(tx, &meta.stack)?;
            let mut put = tx.prepare_cached("INSERT OR IGNORE INTO chunks (hash, data, raw_len) VALUES (?1, ?2, ?3)")?;
            for (c, z) in chunks.iter().zip(&compressed) {
                put.execute(params![&c.hash[..], z, c.raw.len() as i64])?;
            }
            tx.execute(
                "INSERT INTO versions (stack_id, serial, lineage, sha256, size, chunks, author, lock_id, run_id, reason, restored_from, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![stack_id, serial, meta.lineage, &sha[..], bytes.len() as i64, blob::chunk_list(&chunks), meta.author, meta.lock_id, meta.run_id, meta.reason, restored_from, meta.created_at],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    StoreError::Conflict(format!("stack {} serial {} already exists", meta.stack, meta.serial))
                }
                e => backend(e),
            })?;
            Ok(())
        })
    }

    fn import_lock(&self, stack: &str, l: &LockRecord) -> Result<()> {
        self.write(|tx| {
            let (id, _) = require_stack(tx, stack)?;
            if lock_of(tx, id)?.is_some() {
                return Err(StoreError::Conflict(format!("stack {stack} is locked already")));
            }
            tx.execute(
                "INSERT INTO locks (stack_id, lock_id, info, operation, owner_token, owner, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, l.id, l.info, l.operation, l.owner_token, l.owner, l.created_at],
            )?;
            Ok(())
        })
    }

    fn import_token(&self, t: &TokenRecord, secret_hash: &[u8; 32]) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, revoked_at, created_by, run_id, user_name, parent_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![t.id, &secret_hash[..], t.name, t.role.as_str(), serde_json::to_string(&t.stacks).unwrap_or_default(), t.created_at, t.expires_at, t.revoked_at, t.created_by, t.run_id, t.user, t.parent_id],
            )
            .map_err(|e| constraint_is_conflict(e, || format!("token {} already exists", t.id)))?;
            Ok(())
        })
    }

    fn import_user(&self, u: &UserRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO users (name, created_at, created_by) VALUES (?1, ?2, ?3)",
                params![u.name, u.created_at, u.created_by],
            )
            .map_err(|e| constraint_is_conflict(e, || format!("user {} already exists", u.name)))?;
            Ok(())
        })
    }

    fn import_grant(&self, g: &GrantRecord) -> Result<()> {
        self.write(|tx| {
            let (stack_id, _) = require_stack(tx, &g.stack)?;
            tx.execute(
                "INSERT INTO grants (id, stack_id, addresses, reason, created_by, created_at, expires_at, consumed_at, run_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![g.id, stack_id, serde_json::to_string(&g.addresses).unwrap_or_default(), g.reason, g.created_by, g.created_at, g.expires_at, g.consumed_at, g.run_id],
            )?;
            Ok(())
        })
    }

    fn import_audit(&self, r: &AuditRecord) -> Result<()> {
        self.write(|tx| {
            let (head_seq, head_hash): (i64, String) = tx
                .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?
                .unwrap_or((0, GENESIS.to_owned()));
            if r.seq != head_seq + 1 || r.prev_hash != head_hash {
                return Err(StoreError::Conflict(format!("audit record {} does not extend the stored chain (head is {head_seq})", r.seq)));
            }
            tx.execute(
                "INSERT INTO audit (seq, at, actor, action, stack, outcome, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![r.seq, r.at, r.actor, r.action, r.stack, r.outcome, r.detail.to_string(), r.prev_hash, r.hash],
            )?;
            Ok(())
        })
    }

    fn run_artifact_names(&self, id: &str) -> Result<Vec<String>> {
        self.read(|c| {
            let names = c
                .prepare("SELECT name FROM run_artifacts WHERE run_id = ?1 ORDER BY name")?
                .query_map([id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(names)
        })
    }

    fn import_run(&self, run: &RunRecord, artifacts: &[(&str, &[u8])]) -> Result<()> {
        self.insert_run(run, artifacts, None)
    }
    // --- end backup import ---
}

/// The `WHERE` clause of an [`AuditFilter`]: parameters ?1..?7 in the struct's field order, a
/// NULL parameter matching everything.
const SQLITE_AUDIT_FILTER: &str = "(?1 IS NULL OR seq < ?1) AND (?2 IS NULL OR stack = ?2) AND (?3 IS NULL OR action = ?3) AND (?4 IS NULL OR outcome = ?4) AND (?5 IS NULL OR instr(actor, ?5) > 0) AND (?6 IS NULL OR at >= ?6) AND (?7 IS NULL OR at < ?7)";
