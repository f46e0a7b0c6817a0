//! The embedded SQLite engine: one file under the data dir, WAL, foreign keys on. One writer
//! connection (SQLite serializes writers anyway; `BEGIN IMMEDIATE` makes the firewall check and
//! the write one atomic step) and a small pool of reader connections. Connection handling,
//! durability and error classification only: the store itself is `core`.
//!
//! Durability (group commit): SQLite runs with `synchronous=NORMAL`, so a commit appends its
//! frames to the WAL file without waiting for the disk, and [`SqliteStore::write`] returns
//! only after an `fdatasync` of the WAL file that started after its commit. The sync runs
//! outside the writer lock, and one sync covers every commit before it: while one request waits
//! for the disk, the next transactions run, and concurrent commits share one sync. What a
//! caller is told is committed is on disk, as with `synchronous=FULL`. The difference: another
//! request can read a commit before its sync completes (for the length of one sync); an OS
//! crash or power loss in that window rolls that commit back, unacknowledged to its writer.
//! A crash of the process alone loses nothing: the frames are in the OS's cache.
//!
//! Taking and releasing a state lock ([`Engine::write_lock_change`]) does not wait for its
//! sync: the commit is in the WAL before the reply, and a background thread syncs it after
//! [`LAZY_SYNC_DELAY`] unless another commit's sync has covered it by then (in a
//! lock + write + unlock cycle, the write's sync covers the lock, and the next cycle's write
//! the unlock: one sync per cycle instead of three). An OS crash within that window can roll
//! back a lock (its holder's state write is then refused: the write re-checks the lock in its
//! own transaction) or an unlock (the stack is locked again, and its holder or an admin
//! unlocks it). A state write is never acknowledged before it, and everything before it, is
//! on disk.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use crate::core::Engine;
use crate::sql::{DbError, Row, Sql, Value};
use crate::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_runs.sql")),
    (3, include_str!("../migrations/sqlite/0003_users.sql")),
    (
        4,
        include_str!("../migrations/sqlite/0004_archived_stacks.sql"),
    ),
    (5, include_str!("../migrations/sqlite/0005_policy_sets.sql")),
    (
        6,
        include_str!("../migrations/sqlite/0006_forge_logins.sql"),
    ),
    (
        7,
        include_str!("../migrations/sqlite/0007_drift_reports.sql"),
    ),
    (8, include_str!("../migrations/sqlite/0008_oidc.sql")),
    (
        10,
        include_str!("../migrations/sqlite/0010_audit_chains.sql"),
    ),
    (11, include_str!("../migrations/sqlite/0011_trust_ids.sql")),
    (
        13,
        include_str!("../migrations/sqlite/0013_forge_token_uses.sql"),
    ),
    (
        14,
        include_str!("../migrations/sqlite/0014_chunks_rowid.sql"),
    ),
    (
        15,
        include_str!("../migrations/sqlite/0015_token_read_stacks.sql"),
    ),
    (
        16,
        include_str!("../migrations/sqlite/0016_runs_author_user.sql"),
    ),
    (
        17,
        include_str!("../migrations/sqlite/0017_tokens_of_persons.sql"),
    ),
    (
        18,
        include_str!("../migrations/sqlite/0018_run_artifact_retention.sql"),
    ),
    (
        19,
        include_str!("../migrations/sqlite/0019_token_minters.sql"),
    ),
    (20, include_str!("../migrations/sqlite/0020_job_refs.sql")),
];
// Enough idle readers for a burst of concurrent GETs without reopening connections.
const MAX_IDLE_READERS: usize = 32;

/// How long the background thread waits before syncing a lock change nobody has synced
/// (a state write that follows syncs it sooner, and the background sync is then a no-op).
pub const LAZY_SYNC_DELAY: Duration = Duration::from_millis(20);

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    sync: Arc<Syncer>,
    recent: crate::blob::RecentBodies,
}

/// Group commit: which commits are on disk, and the background sync of lock changes.
struct Syncer {
    /// The WAL file's path.
    wal_path: std::path::PathBuf,
    /// Commits made so far, counted under the writer lock (so in WAL order).
    committed: AtomicU64,
    /// Commits known to be on disk.
    synced: AtomicU64,
    /// The WAL file, opened for syncing it; held while a sync runs.
    wal: Mutex<Option<std::fs::File>>,
    /// The highest commit the background thread must sync, and whether the store is closed.
    lazy: Mutex<(u64, bool)>,
    wake: Condvar,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Only a unique or primary-key violation is a duplicate; a foreign-key violation names a
/// missing parent; other constraints (NOT NULL, CHECK, the immutability triggers) are errors.
fn classify(e: rusqlite::Error) -> DbError {
    use rusqlite::ffi;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => DbError::Unique,
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => DbError::ForeignKey,
            _ => DbError::Other(e.into()),
        },
        _ => DbError::Other(e.into()),
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_handler(Some(busy))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
    )?;
    Ok(conn)
}

/// Waits for a database lock another connection or process holds (`airlock backup import`, a
/// `sqlite3` shell, a checkpoint), backing off as SQLite's `busy_timeout` does, ~10 s in all. In
/// a call run in place, never: the call is refused (`crate::in_place`) and run off the runtime.
fn busy(count: std::ffi::c_int) -> bool {
    const DELAYS_MS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
    const TOTAL_MS: u64 = 10_000;
    if crate::in_place::active() {
        let _ = crate::in_place::refuse("waiting for a database lock");
        return false;
    }
    let n = usize::try_from(count).unwrap_or(0);
    let delay = DELAYS_MS.get(n).copied().unwrap_or(100);
    let spent: u64 =
        DELAYS_MS.iter().take(n).sum::<u64>() + 100 * (n.saturating_sub(DELAYS_MS.len()) as u64);
    if spent + delay > TOTAL_MS {
        return false;
    }
    std::thread::sleep(Duration::from_millis(delay));
    true
}

/// SQLite's automatic checkpoint size (its default), in WAL pages.
const CHECKPOINT_PAGES: std::ffi::c_int = 1000;

/// Set when a commit run in place reached [`CHECKPOINT_PAGES`] and left its checkpoint to the
/// next commit made off the runtime; until then no lock change runs in place. Shared by the
/// stores of a process (one, but for tests): a stray flag costs one call run in the pool.
static CHECKPOINT_DUE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The writer's WAL hook, in place of SQLite's own automatic checkpoint (a passive checkpoint
/// once the WAL holds [`CHECKPOINT_PAGES`], after the commit, on the committing thread), except
/// in a call run in place: a checkpoint writes the database file and syncs it, which a
/// runtime thread must not wait for.
fn checkpoint_hook(wal: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    if crate::in_place::active() {
        if pages >= CHECKPOINT_PAGES {
            CHECKPOINT_DUE.store(true, Ordering::Release);
        }
        return Ok(());
    }
    // Cleared by any commit off the runtime: it checkpoints now if the WAL is still long (and
    // if another connection has checkpointed meanwhile, nothing is due).
    CHECKPOINT_DUE.store(false, Ordering::Release);
    if pages >= CHECKPOINT_PAGES {
        // As SQLite's own hook: the commit has happened whatever the checkpoint does, and one
        // that cannot finish now (readers) is tried again at the next commit.
        let _ = wal.checkpoint();
    }
    Ok(())
}

/// SQL is written with `$N` placeholders; SQLite's own spelling is `?N`.
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(match self {
            Value::Null => Borrowed(ValueRef::Null),
            Value::Int(v) => Borrowed(ValueRef::Integer(*v)),
            Value::Text(v) => Borrowed(ValueRef::Text(v.as_bytes())),
            Value::Bytes(v) => Borrowed(ValueRef::Blob(v)),
            Value::Bool(v) => Borrowed(ValueRef::Integer(i64::from(*v))),
        })
    }
}

/// A connection (or the writer's open transaction) as [`Sql`].
struct Lite<'c>(&'c Connection);

impl Sql for Lite<'_> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let mut stmt = self.0.prepare_cached(&placeholders(sql))?;
        let n = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get_ref(i)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(v) => Value::Int(v),
                    ValueRef::Real(v) => Value::Int(v as i64),
                    ValueRef::Text(v) => Value::Text(String::from_utf8_lossy(v).into_owned()),
                    ValueRef::Blob(v) => Value::Bytes(v.to_vec()),
                });
            }
            out.push(Row(row));
        }
        Ok(out)
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let mut stmt = self
            .0
            .prepare_cached(&placeholders(sql))
            .map_err(classify)?;
        stmt.execute(rusqlite::params_from_iter(params))
            .map(|n| n as u64)
            .map_err(classify)
    }

    fn for_update(&self) -> &'static str {
        ""
    }

    fn erase_freed(&mut self, on: bool) -> Result<()> {
        self.0.pragma_update(None, "secure_delete", on)?;
        Ok(())
    }

    fn contains(&self, column: &str, param: &str) -> String {
        format!("instr({column}, {param}) > 0")
    }

    fn next_audit_seq(&mut self) -> Result<i64> {
        let r = self.query_opt("SELECT COALESCE(MAX(seq), 0) + 1 FROM audit", &[])?;
        r.map_or(Ok(1), |r| r.i64(0))
    }

    fn audit_seq_at_least(&mut self, _seq: i64) -> Result<()> {
        Ok(())
    }

    fn snapshot(&mut self) -> Result<()> {
        Ok(()) // `read_snapshot` opens a read transaction instead
    }

    fn lock_user_mints(&mut self, _user: &str) -> Result<()> {
        Ok(())
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    /// The file (and its `-wal` and `-shm` files) is made 0600, its directory 0700 if this
    /// creates it: it holds the full state, secrets included.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        crate::private::private_database(path)
            .map_err(|e| StoreError::Backend(format!("making {} private: {e}", path.display())))?;
        let mut writer = open_conn(path)?;
        writer.wal_hook(Some(checkpoint_hook));
        migrate(&mut writer)?;
        let mut wal_path = path.to_owned().into_os_string();
        wal_path.push("-wal");
        let sync = Arc::new(Syncer {
            wal_path: wal_path.into(),
            committed: AtomicU64::new(1),
            synced: AtomicU64::new(0),
            wal: Mutex::new(None),
            lazy: Mutex::new((0, false)),
            wake: Condvar::new(),
        });
        // The migrations' commits.
        sync.sync_to(1)?;
        let background = Arc::clone(&sync);
        std::thread::Builder::new()
            .name("airlock-sqlite-sync".into())
            .spawn(move || background.run_lazy())
            .map_err(|e| StoreError::Backend(format!("starting the sync thread: {e}")))?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            sync,
            recent: Default::default(),
        })
    }

    /// An idle reader connection, or a new one (not in place: opening one reads the schema).
    /// In place, a read runs (WAL readers never wait for the writer) unless an earlier step of
    /// the call was refused.
    fn reader(&self) -> Result<Connection> {
        crate::in_place::check()?;
        if let Some(c) = self.readers.lock().map_err(|_| poisoned())?.pop() {
            return Ok(c);
        }
        crate::in_place::refuse_if_active("opening a database connection")?;
        open_conn(&self.path)
    }

    /// Commits `f`'s transaction; returns its result and the commit's number. In place (see
    /// [`crate::in_place`]), only when the writer is free.
    fn commit<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<(T, u64)> {
        let in_place = crate::in_place::active();
        let mut conn = if in_place {
            let conn = match self.writer.try_lock() {
                Ok(c) => c,
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(crate::in_place::refuse("waiting for the writer"))
                }
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(poisoned()),
            };
            if CHECKPOINT_DUE.load(Ordering::Acquire) {
                return Err(crate::in_place::refuse("a checkpoint that is due"));
            }
            conn
        } else {
            self.writer.lock().map_err(|_| poisoned())?
        };
        // In place, another process's write lock is refused by `busy`, before any change.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if in_place {
            crate::in_place::committing("a lock change")?;
        }
        let out = f(&mut Lite(&tx))?;
        tx.commit()?;
        Ok((out, self.sync.committed.fetch_add(1, Ordering::AcqRel) + 1))
    }
}

impl Syncer {
    /// Returns once commit number `seq` is on disk: syncs the WAL file unless a sync that
    /// started after that commit has completed. Commits are appended to the WAL in the order
    /// they are counted, so one sync covers every commit counted before it started.
    fn sync_to(&self, seq: u64) -> Result<()> {
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let mut wal = self.wal.lock().map_err(|_| poisoned())?;
        if self.synced.load(Ordering::Acquire) >= seq {
            return Ok(()); // another request's sync covered it while this one waited
        }
        let upto = self.committed.load(Ordering::Acquire);
        let path = &self.wal_path;
        let io =
            |e: std::io::Error| StoreError::Backend(format!("syncing {}: {e}", path.display()));
        // SQLite keeps the WAL file while a connection is open (the writer always is); should
        // it ever be replaced, sync the file that is there now.
        let current = std::fs::metadata(path).map_err(io)?;
        let same = |f: &std::fs::File| {
            use std::os::unix::fs::MetadataExt;
            f.metadata()
                .is_ok_and(|m| m.ino() == current.ino() && m.dev() == current.dev())
        };
        if !wal.as_ref().is_some_and(same) {
            *wal = Some(std::fs::File::open(path).map_err(io)?);
        }
        if let Some(f) = wal.as_ref() {
            f.sync_data().map_err(io)?;
        }
        self.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Asks the background thread to sync commit `seq`.
    fn sync_later(&self, seq: u64) {
        if let Ok(mut lazy) = self.lazy.lock() {
            lazy.0 = lazy.0.max(seq);
            self.wake.notify_one();
        }
    }

    /// The background thread: syncs lazily committed lock changes [`LAZY_SYNC_DELAY`] after
    /// they were asked for (unless a sync covered them meanwhile), until the store closes.
    fn run_lazy(&self) {
        let Ok(mut lazy) = self.lazy.lock() else {
            return;
        };
        loop {
            let (want, closed) = *lazy;
            if want > self.synced.load(Ordering::Acquire) {
                drop(lazy);
                if !closed {
                    std::thread::sleep(LAZY_SYNC_DELAY);
                }
                // A failed sync is tried again after the delay, and by every synced commit
                // (each syncs the whole WAL).
                if self.sync_to(want).is_err() && closed {
                    return;
                }
                let Ok(l) = self.lazy.lock() else {
                    return;
                };
                lazy = l;
                continue;
            }
            if closed {
                return;
            }
            lazy = match self.wake.wait(lazy) {
                Ok(l) => l,
                Err(_) => return,
            };
        }
    }
}

impl Drop for SqliteStore {
    /// Syncs what is committed and stops the background thread.
    fn drop(&mut self) {
        let last = self.sync.committed.load(Ordering::Acquire);
        let _ = self.sync.sync_to(last);
        if let Ok(mut lazy) = self.sync.lazy.lock() {
            lazy.1 = true;
            self.sync.wake.notify_one();
        }
    }
}

impl Engine for SqliteStore {
    const NAME: &'static str = "sqlite";

    fn read<T, F: FnMut(&mut dyn Sql) -> Result<T>>(&self, mut f: F) -> Result<T> {
        let conn = self.reader()?;
        let out = f(&mut Lite(&conn));
        let mut pool = self.readers.lock().map_err(|_| poisoned())?;
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    fn read_snapshot<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        let conn = self.reader()?;
        // A deferred transaction that only reads: in WAL mode, one snapshot, writers go on.
        let out = match conn.unchecked_transaction() {
            Ok(tx) => {
                let out = f(&mut Lite(&tx));
                drop(tx); // rolls back: it wrote nothing
                out
            }
            Err(e) => Err(e.into()),
        };
        let mut pool = self.readers.lock().map_err(|_| poisoned())?;
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    fn write<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        crate::in_place::refuse_if_active("a durable write (it waits for its sync)")?;
        let (out, seq) = self.commit(f)?;
        // Durable before anyone is told (see the module documentation).
        self.sync.sync_to(seq)?;
        Ok(out)
    }

    fn write_lock_change<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        let (out, seq) = self.commit(f)?;
        self.sync.sync_later(seq);
        Ok(out)
    }

    fn recent_bodies(&self) -> &crate::blob::RecentBodies {
        &self.recent
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
            if *version == crate::core::MINTERS_MIGRATION {
                fill_minters(&tx)?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                rusqlite::params![version, now_ms()],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

/// Migration 0019's fill of `tokens.minted_by` (see `core::minted_by_backfill`).
fn fill_minters(tx: &Connection) -> Result<()> {
    let tokens = tx
        .prepare("SELECT id, created_by FROM tokens")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, String)>>>()?;
    for (id, minter) in crate::core::minted_by_backfill(&tokens) {
        tx.execute(
            "UPDATE tokens SET minted_by = ?2 WHERE id = ?1",
            rusqlite::params![id, minter],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Only unique violations are duplicates: a NOT NULL violation is a database error, not a
    /// conflict (SQLite used to map every constraint violation to `Conflict`).
    #[test]
    fn only_unique_violations_are_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        store
            .write(|db| {
                let insert = "INSERT INTO users (name, created_at, created_by) VALUES ($1, $2, $3)";
                db.execute(insert, crate::sql::params!["u", 1, "t"])?;
                assert!(matches!(
                    db.execute(insert, crate::sql::params!["u", 1, "t"]),
                    Err(DbError::Unique)
                ));
                let null: Option<String> = None;
                assert!(matches!(
                    db.execute(insert, crate::sql::params!["v", 1, null]),
                    Err(DbError::Other(StoreError::Backend(_)))
                ));
                assert!(matches!(
                    db.execute(
                        "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data) VALUES ($1, $2, $3, $4, $5)",
                        crate::sql::params!["nope", "a", &b"x"[..], 1, &b"x"[..]]
                    ),
                    Err(DbError::ForeignKey)
                ));
                Ok(())
            })
            .unwrap();
    }

    /// Inserts a user row: a commit that changes something.
    fn insert_user(db: &mut dyn Sql, name: &str) -> Result<()> {
        db.execute(
            "INSERT INTO users (name, created_at, created_by) VALUES ($1, $2, $3)",
            crate::sql::params![name, 1, "t"],
        )?;
        Ok(())
    }

    /// `write` returns only once its commit is synced (group commit: see the module docs).
    #[test]
    fn writes_return_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let before = store.sync.committed.load(Ordering::Acquire);
                        store
                            .write(|db| insert_user(db, &format!("u{t}-{i}")))
                            .unwrap();
                        // This write's commit is numbered above `before`, and synced.
                        assert!(store.sync.synced.load(Ordering::Acquire) > before);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            store.sync.synced.load(Ordering::Acquire),
            store.sync.committed.load(Ordering::Acquire)
        );
    }

    /// A lock change is acknowledged before its sync; the next synced write covers it, or the
    /// background thread syncs it; closing the store syncs everything committed.
    #[test]
    fn lock_changes_are_synced_by_the_next_write_or_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        // In the background, within the delay and one sync.
        store.write_lock_change(|db| insert_user(db, "a")).unwrap();
        let seq = store.sync.committed.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while store.sync.synced.load(Ordering::Acquire) < seq {
            assert!(std::time::Instant::now() < deadline, "never synced");
            std::thread::sleep(Duration::from_millis(5));
        }
        // By the next synced write: it returns with both on disk.
        store.write_lock_change(|db| insert_user(db, "b")).unwrap();
        store.write(|db| insert_user(db, "c")).unwrap();
        let seq = store.sync.committed.load(Ordering::Acquire);
        assert!(store.sync.synced.load(Ordering::Acquire) >= seq);
        // At close.
        store.write_lock_change(|db| insert_user(db, "d")).unwrap();
        let sync = Arc::clone(&store.sync);
        let seq = sync.committed.load(Ordering::Acquire);
        drop(store);
        assert!(sync.synced.load(Ordering::Acquire) >= seq);
    }

    /// In place (`crate::in_place`), reads and a lock change run while the writer is free; a
    /// lock change never waits for a busy writer, and a durable write never runs: the call
    /// is refused, having changed nothing, for the caller to run off its thread.
    #[test]
    fn calls_in_place_never_wait_for_the_writer_or_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
        let users = |store: &SqliteStore| {
            store
                .read(|db| db.query("SELECT name FROM users ORDER BY name", &[]))
                .unwrap()
                .iter()
                .map(|r| r.text(0).unwrap())
                .collect::<Vec<_>>()
        };
        // No idle reader yet: opening one (file, pragmas, schema) is not done in place.
        let ran = crate::in_place::run(|| store.read(|db| db.query("SELECT 1", &[])));
        assert!(ran.is_none());
        store.read(|db| db.query("SELECT 1", &[])).unwrap();
        // Free writer, an idle reader: a read and one lock change run in place.
        let ran = crate::in_place::run(|| {
            let before = store.read(|db| db.query("SELECT 1", &[])).map(|r| r.len());
            (
                before.unwrap(),
                store.write_lock_change(|db| insert_user(db, "a")),
            )
        });
        assert!(matches!(ran, Some((1, Ok(())))), "{ran:?}");
        // A durable write is refused before it starts.
        let ran = crate::in_place::run(|| store.write(|db| insert_user(db, "b")));
        assert!(ran.is_none());
        // A busy writer: the lock change is refused at once, not waited for.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                store
                    .write(|db| {
                        insert_user(db, "c")?;
                        held_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        Ok(())
                    })
                    .unwrap()
            })
        };
        held_rx.recv().unwrap();
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        let attempt = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let ran =
                    crate::in_place::run(|| store.write_lock_change(|db| insert_user(db, "d")));
                ran_tx.send(ran.is_none()).unwrap();
            })
        };
        let refused = ran_rx.recv_timeout(Duration::from_secs(10));
        release_tx.send(()).unwrap();
        attempt.join().unwrap();
        assert_eq!(refused, Ok(true), "the lock change waited for the writer");
        holder.join().unwrap();
        assert_eq!(users(&store), ["a", "c"], "a refused call changed nothing");
    }

    /// In place, another process's (here another connection's) write lock is not waited for:
    /// the call is refused at once; off the runtime it is waited for, as with `busy_timeout`.
    #[test]
    fn calls_in_place_never_wait_for_another_connections_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let ran = crate::in_place::run(|| store.write_lock_change(|db| insert_user(db, "a")));
        assert!(ran.is_none(), "{ran:?}");
        let waiting = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || store.write_lock_change(|db| insert_user(db, "b")))
        };
        std::thread::sleep(Duration::from_millis(200));
        other.execute_batch("COMMIT").unwrap();
        waiting.join().unwrap().unwrap();
        let names = store
            .read(|db| db.query("SELECT name FROM users", &[]))
            .unwrap();
        assert_eq!(names.len(), 1, "the refused call changed nothing");
    }

    /// A commit run in place never runs SQLite's automatic checkpoint (it writes the database
    /// file and syncs it): it leaves it due, the next lock change in place is refused, and the
    /// next commit off the runtime checkpoints.
    #[test]
    fn calls_in_place_never_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = SqliteStore::open(&path).unwrap();
        let wal_frames = || {
            let len = std::fs::metadata(dir.path().join("a.db-wal")).map_or(0, |m| m.len());
            len.saturating_sub(32) / (4096 + 24)
        };
        store
            .write(|db| {
                db.execute("CREATE TABLE filler (b BLOB)", &[])?;
                Ok(())
            })
            .unwrap();
        // Fill the WAL to just under the checkpoint size with commits off the runtime.
        while wal_frames() < (CHECKPOINT_PAGES as u64) - 20 {
            store
                .write(|db| {
                    db.execute("INSERT INTO filler (b) VALUES (zeroblob(8 * 4096))", &[])?;
                    Ok(())
                })
                .unwrap();
        }
        let db_size = || std::fs::metadata(&path).unwrap().len();
        let before = db_size();
        let mut refused = false;
        for i in 0..200 {
            match crate::in_place::run(|| {
                store.write_lock_change(|db| insert_user(db, &format!("u{i}")))
            }) {
                Some(r) => r.unwrap(),
                None => {
                    refused = true;
                    break;
                }
            }
            assert_eq!(db_size(), before, "a call in place checkpointed");
        }
        assert!(
            refused,
            "no lock change in place was refused while a checkpoint was due"
        );
        store
            .write_lock_change(|db| insert_user(db, "off"))
            .unwrap();
        assert!(
            db_size() > before,
            "the commit off the runtime did not checkpoint"
        );
        let ran = crate::in_place::run(|| store.write_lock_change(|db| insert_user(db, "again")));
        assert!(matches!(ran, Some(Ok(()))), "{ran:?}");
    }

    #[test]
    fn placeholders_are_rewritten() {
        assert_eq!(placeholders("a = $1 AND b = $12"), "a = ?1 AND b = ?12");
    }

    /// Listing every run (what a backup's export does) returns every run, past the bound on
    /// runs scanned for a listing filtered on the records (a backup of a busy server kept only
    /// the newest 20,000 runs, silently).
    #[test]
    fn listing_every_run_returns_runs_past_the_scan_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        let audit = NewAudit::ok("t", "stack.create", Some("t/many"), serde_json::json!({}));
        store
            .create_stack("t/many", false, StackSettings::default(), audit)
            .unwrap();
        let n = 20_005;
        store
            .write(|db| {
                for i in 0..n {
                    let run = crate::conformance::run_record(&format!("run_{i:05}"), "t/many", i);
                    db.execute(
                        "INSERT INTO runs (id, stack_id, status, created_at, record, author_user) VALUES ($1, (SELECT id FROM stacks WHERE name = 't/many'), $2, $3, $4, $5)",
                        crate::sql::params![&run.id, run.status.as_str(), i, serde_json::to_string(&run).unwrap(), &run.author_user],
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let all = store.runs(None, u32::MAX).unwrap();
        assert_eq!(all.len(), n as usize);
        assert_eq!(
            all.last().unwrap().id,
            "run_00000",
            "the oldest is there too"
        );
        assert_eq!(
            store.runs(Some("t/many"), u32::MAX).unwrap().len(),
            n as usize
        );
        // A listing filtered on the records stays bounded.
        let by_author = RunFilter {
            author: Some("nobody".into()),
            ..RunFilter::default()
        };
        assert!(store.runs_where(&by_author, u32::MAX).unwrap().is_empty());
    }

    /// A purged binary plan leaves no copy in the database file: the pages it freed are zeroed
    /// (`secure_delete` for the purge), not kept in the free list until reused.
    #[test]
    fn a_purged_plan_leaves_no_copy_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = SqliteStore::open(&path).unwrap();
        let audit =
            |a: &str| NewAudit::ok("t", a, Some("t/purge"), serde_json::json!({"run": "run_p"}));
        store
            .create_stack(
                "t/purge",
                false,
                StackSettings::default(),
                audit("stack.create"),
            )
            .unwrap();
        // Incompressible (xorshift), so zstd keeps it as it is and its bytes can be found.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let plan: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let run = crate::conformance::run_record("run_p", "t/purge", now_ms());
        store
            .create_run(&run, &[(PLAN_ARTIFACT, &plan)], audit("run.create"))
            .unwrap();
        let marker = &plan[150_000..150_064];
        let in_file = || {
            let conn = Connection::open(&path).unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            let bytes = std::fs::read(&path).unwrap();
            bytes.windows(marker.len()).any(|w| w == marker)
        };
        assert!(in_file(), "the plan is in the file before the purge");
        store
            .update_run(
                "run_p",
                &mut |r: &RunRecord, _: &StackRecord, _: Option<&VersionMeta>, _: &[String]| {
                    let mut new = r.clone();
                    new.status = RunStatus::Rejected;
                    Ok((new, audit("run.reject")))
                },
            )
            .unwrap()
            .unwrap();
        assert!(matches!(
            store.run_artifact("run_p", PLAN_ARTIFACT),
            Err(StoreError::Purged(_))
        ));
        assert!(!in_file(), "no byte of the purged plan is left in the file");
    }

    /// A run that a server older than migration 0018 ended (its status written, its binary
    /// plan kept) loses its plan at the next start, audited, and only a terminal run does.
    #[test]
    fn plans_of_runs_an_older_server_ended_are_purged_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        let audit = |a: &str| NewAudit::ok("t", a, Some("t/old"), serde_json::json!({}));
        store
            .create_stack(
                "t/old",
                false,
                StackSettings::default(),
                audit("stack.create"),
            )
            .unwrap();
        for id in ["run_ended", "run_open"] {
            let run = crate::conformance::run_record(id, "t/old", now_ms());
            store
                .create_run(&run, &[(PLAN_ARTIFACT, b"plan")], audit("run.create"))
                .unwrap();
        }
        // What an older server's rejection wrote: the status, nothing purged.
        store
            .write(|db| {
                db.execute(
                    "UPDATE runs SET status = 'rejected', record = json_set(record, '$.status', 'rejected') WHERE id = 'run_ended'",
                    &[],
                )?;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            store
                .run_artifact("run_ended", PLAN_ARTIFACT)
                .unwrap()
                .as_deref(),
            Some(&b"plan"[..])
        );
        assert_eq!(store.purge_plans_of_ended_runs().unwrap(), ["run_ended"]);
        assert!(matches!(
            store.run_artifact("run_ended", PLAN_ARTIFACT),
            Err(StoreError::Purged(_))
        ));
        assert!(store
            .run_artifact("run_open", PLAN_ARTIFACT)
            .unwrap()
            .is_some());
        let events = store.audit_events(0, u32::MAX).unwrap();
        let e = events
            .iter()
            .find(|e| e.action == "run.plan_purged")
            .unwrap();
        assert_eq!(e.detail["run"], "run_ended");
        assert_eq!(
            store.purge_plans_of_ended_runs().unwrap(),
            Vec::<String>::new()
        );
    }
}
