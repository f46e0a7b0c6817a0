//! The PostgreSQL engine, for several `airlock server` replicas sharing one database. Nothing is
//! held in memory between calls: every stack-mutating transaction starts by locking the stack's
//! row (`SELECT ... FOR UPDATE`) and every audit append takes one transaction-scoped advisory
//! lock, so locks, state writes and the audit hash chain stay linearizable across processes.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::postgres::error::SqlState;
use ::postgres::types::ToSql;
use ::postgres::{Client, Config, GenericClient, NoTls, Row, Statement, Transaction};
use airlock_core::audit::{chain_hash, AuditRecord, GENESIS};
use airlock_core::time::rfc3339;

use crate::blob;
use crate::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_runs.sql")),
    (3, include_str!("../migrations/postgres/0003_users.sql")),
];

/// Transaction-scoped advisory lock keys ("airlock" in ASCII, then a number). Being
/// transaction-scoped, a replica that dies mid-transaction never leaves one held.
const MIGRATION_LOCK: i64 = 0x6169_726c_6f63_6b01;
const AUDIT_LOCK: i64 = 0x6169_726c_6f63_6b02;
/// Class of the two-key advisory lock that serializes one user's token mints (the second key
/// is a hash of the user name), so a mint limit counted in the database holds across replicas.
const USER_MINT_LOCK_CLASS: i32 = 0x6169_726c;

/// Connections one store opens at most; callers beyond that wait for a free one.
const MAX_CONNECTIONS: usize = 16;
/// How long a caller waits for a free connection before giving up.
const POOL_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection suspected dead gets to answer a no-op query.
const LIVENESS_PROBE: Duration = Duration::from_secs(2);

/// PostgreSQL-backed [`Store`].
pub struct PostgresStore {
    pool: Pool,
}

impl From<::postgres::Error> for StoreError {
    fn from(e: ::postgres::Error) -> Self {
        StoreError::Backend(describe(&e))
    }
}

/// The server's own message and SQLSTATE for database errors (the client's `Display` says only
/// "db error"), the cause chain for the rest. The server's DETAIL is left out: it can echo key
/// values, such as a token's secret hash.
fn describe(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

/// Maps a unique violation to `Conflict` with `what`, anything else to `Backend`.
fn unique_is_conflict(e: ::postgres::Error, what: impl FnOnce() -> String) -> StoreError {
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict(what())
    } else {
        e.into()
    }
}

/// A u64 from the API as a BIGINT; `None` if it cannot be stored (so it cannot exist either).
fn bigint(v: u64) -> Option<i64> {
    i64::try_from(v).ok()
}

// ---- connections ----

/// One connection and the statements prepared on it (each is prepared once per connection,
/// which saves a round trip on every later use).
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

/// A small blocking pool: at most `max` connections, idle ones reused, broken ones dropped.
struct Pool {
    config: Config,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

impl Pool {
    fn lock_state(&self) -> MutexGuard<'_, PoolState> {
        // The state is two plain fields that are never left half-updated: a panic elsewhere
        // while it was locked does not make it wrong.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self) -> Result<Pooled<'_>> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut st = self.lock_state();
        loop {
            if let Some(conn) = st.idle.pop() {
                if conn.client.is_closed() {
                    st.open -= 1;
                    continue;
                }
                return Ok(Pooled {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if st.open < self.max {
                st.open += 1;
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Backend(format!(
                    "all {} database connections stayed busy for {} s; the database may be overloaded or a transaction is stuck",
                    self.max,
                    POOL_WAIT.as_secs()
                )));
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(st);
        match self.config.connect(NoTls) {
            Ok(client) => Ok(Pooled {
                pool: self,
                conn: Some(Conn {
                    client,
                    statements: HashMap::new(),
                }),
            }),
            Err(e) => {
                self.lock_state().open -= 1;
                self.freed.notify_one();
                Err(StoreError::Backend(format!(
                    "cannot connect to PostgreSQL: {}",
                    describe(&e)
                )))
            }
        }
    }
}

/// A connection on loan; returned to the pool (or dropped if broken) when it goes out of scope.
struct Pooled<'p> {
    pool: &'p Pool,
    conn: Option<Conn>,
}

impl Pooled<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a pooled connection is present until it is dropped")
    }

    /// After an error: whether the connection itself is gone (checked with a round trip).
    fn is_dead(&mut self) -> bool {
        let client = &mut self.conn().client;
        client.is_closed() || client.is_valid(LIVENESS_PROBE).is_err()
    }

    /// Closes a dead connection instead of returning it to the pool.
    fn discard(mut self) {
        if self.conn.take().is_some() {
            self.pool.lock_state().open -= 1;
            self.pool.freed.notify_one();
        }
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut st = self.pool.lock_state();
            if conn.client.is_closed() {
                st.open -= 1;
            } else {
                st.idle.push(conn);
            }
            drop(st);
            self.pool.freed.notify_one();
        }
    }
}

/// A client or transaction plus the connection's prepared-statement cache.
struct Db<'a, C: GenericClient> {
    c: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
}

type Params<'p> = [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Db<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, params: &Params<'_>) -> Result<Vec<Row>> {
        let s = self.statement(sql)?;
        Ok(self.c.query(&s, params)?)
    }

    fn query_opt(&mut self, sql: &str, params: &Params<'_>) -> Result<Option<Row>> {
        let s = self.statement(sql)?;
        Ok(self.c.query_opt(&s, params)?)
    }

    fn query_one(&mut self, sql: &str, params: &Params<'_>) -> Result<Row> {
        let s = self.statement(sql)?;
        Ok(self.c.query_one(&s, params)?)
    }

    /// Executes, leaving the error as it is so callers can look at its SQLSTATE.
    fn execute_raw(
        &mut self,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<std::result::Result<u64, ::postgres::Error>> {
        let s = self.statement(sql)?;
        Ok(self.c.execute(&s, params))
    }

    fn execute(&mut self, sql: &str, params: &Params<'_>) -> Result<u64> {
        Ok(self.execute_raw(sql, params)??)
    }
}

type Tx<'a, 't> = Db<'a, Transaction<'t>>;

impl PostgresStore {
    /// Inserts a run and its artifacts; `audit` is `None` for a backup import, whose history
    /// is the imported audit chain.
    fn insert_run(
        &self,
        run: &RunRecord,
        artifacts: &[(&str, &[u8])],
        audit: Option<&NewAudit>,
    ) -> Result<()> {
        let record = serde_json::to_string(run).map_err(|e| StoreError::Backend(e.to_string()))?;
        // Hash and compress before taking any lock: it is the expensive part.
        let compressed: Vec<(&str, [u8; 32], i64, Vec<u8>)> = artifacts
            .iter()
            .map(|(n, b)| (*n, blob::sha256(b), b.len() as i64, blob::compress(b)))
            .collect();
        self.write(|tx| {
            let (stack_id, _) = lock_stack(tx, &run.stack)?;
            tx.execute_raw(
                "INSERT INTO runs (id, stack_id, status, created_at, record) VALUES ($1, $2, $3, $4, $5)",
                &[&run.id, &stack_id, &run.status.as_str(), &run.created_at, &record],
            )?
            .map_err(|e| unique_is_conflict(e, || format!("run {} already exists", run.id)))?;
            for (name, sha, len, data) in &compressed {
                tx.execute_raw(
                    "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data) VALUES ($1, $2, $3, $4, $5)",
                    &[&run.id, name, &&sha[..], len, data],
                )?
                .map_err(|e| {
                    unique_is_conflict(e, || format!("run {} has two artifacts named {name}", run.id))
                })?;
            }
            if let Some(audit) = audit {
                append_audit_tx(tx, audit)?;
            }
            Ok(())
        })
    }

    /// Connects to the database at `url` (`postgres://` or `postgresql://`) and applies pending
    /// migrations.
    pub fn open(url: &str) -> Result<PostgresStore> {
        // The parser's message never repeats the URL, which may hold a password.
        let config: Config = url.parse().map_err(|e: ::postgres::Error| {
            StoreError::Backend(format!("invalid PostgreSQL URL: {}", describe(&e)))
        })?;
        PostgresStore::connect(config)
    }

    /// Connects with an explicit configuration and applies pending migrations.
    pub fn connect(mut config: Config) -> Result<PostgresStore> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("airlock");
        }
        let store = PostgresStore {
            pool: Pool {
                config,
                max: MAX_CONNECTIONS,
                state: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
            },
        };
        let mut conn = store.pool.get()?;
        migrate(&mut conn.conn().client)?;
        drop(conn);
        Ok(store)
    }

    /// Runs `f` outside a transaction (one statement is one snapshot).
    fn read<T>(&self, f: impl Fn(&mut Db<'_, Client>) -> Result<T>) -> Result<T> {
        let mut retries = 0;
        loop {
            let mut pooled = self.pool.get()?;
            let Conn { client, statements } = pooled.conn();
            match f(&mut Db {
                c: client,
                statements,
            }) {
                // Reads are idempotent: one that failed on a connection the server dropped
                // (restart, failover, idle timeout) is run again on another.
                Err(StoreError::Backend(_)) if retries < MAX_CONNECTIONS && pooled.is_dead() => {
                    pooled.discard();
                    retries += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs `f` in a READ COMMITTED transaction and commits if it returns `Ok`. Mutations take
    /// their row locks first (see `lock_stack`), so each statement after that sees every write
    /// committed before the lock was granted.
    fn write<T, F>(&self, mut f: F) -> Result<T>
    where
        F: FnOnce(&mut Db<'_, Transaction<'_>>) -> Result<T>,
    {
        let mut retries = 0;
        loop {
            let mut pooled = self.pool.get()?;
            match in_transaction(pooled.conn(), f) {
                Ok(result) => return result,
                // A connection that died while idle fails at BEGIN, before anything of this
                // write was sent: take another. (Once BEGIN succeeded, a lost connection is an
                // error for the caller: the server rolls the transaction back, except when
                // COMMIT itself was in flight, whose outcome only a re-read can tell.)
                Err((e, unused)) => {
                    if retries < MAX_CONNECTIONS && pooled.is_dead() {
                        pooled.discard();
                        retries += 1;
                        f = unused;
                        continue;
                    }
                    return Err(e.into());
                }
            }
        }
    }
}

/// Runs `f` in a transaction on `conn`; if BEGIN fails, hands `f` back with the error.
fn in_transaction<T, F>(
    conn: &mut Conn,
    f: F,
) -> std::result::Result<Result<T>, (::postgres::Error, F)>
where
    F: FnOnce(&mut Db<'_, Transaction<'_>>) -> Result<T>,
{
    let Conn { client, statements } = conn;
    let mut tx = match client.transaction() {
        Ok(tx) => tx,
        Err(e) => return Err((e, f)),
    };
    let out = match f(&mut Db {
        c: &mut tx,
        statements,
    }) {
        Ok(out) => out,
        Err(e) => return Ok(Err(e)),
    };
    Ok(tx.commit().map(|()| out).map_err(StoreError::from))
}

fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction()?;
    // Replicas starting together: the first applies the migrations, the others wait here and
    // then find them applied.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")?;
    for (version, sql) in MIGRATIONS {
        let done: bool = tx
            .query_one(
                "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = $1)",
                &[version],
            )?
            .try_get(0)?;
        if !done {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &now_ms()],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

// ---- row mapping ----

fn json_col<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

const STACK_COLS: &str = "id, name, production, lineage, settings, created_at";

fn stack_from_row(r: &Row) -> Result<(i64, StackRecord)> {
    let settings: String = r.try_get(4)?;
    Ok((
        r.try_get(0)?,
        StackRecord {
            name: r.try_get(1)?,
            production: r.try_get(2)?,
            lineage: r.try_get(3)?,
            settings: json_col(&settings, "stack settings")?,
            created_at: r.try_get(5)?,
        },
    ))
}

fn stack_row<C: GenericClient>(
    db: &mut Db<'_, C>,
    name: &str,
) -> Result<Option<(i64, StackRecord)>> {
    db.query_opt(
        "SELECT id, name, production, lineage, settings, created_at FROM stacks WHERE name = $1",
        &[&name],
    )?
    .map(|r| stack_from_row(&r))
    .transpose()
}

fn require_stack<C: GenericClient>(db: &mut Db<'_, C>, name: &str) -> Result<(i64, StackRecord)> {
    stack_row(db, name)?.ok_or_else(|| StoreError::NotFound(format!("stack {name}")))
}

/// Locks the stack's row for the rest of the transaction: every transaction that changes a
/// stack (its lock, versions, settings or grants) starts here, so they run one at a time per
/// stack whichever replica they come from.
fn lock_stack(tx: &mut Tx<'_, '_>, name: &str) -> Result<(i64, StackRecord)> {
    tx.query_opt("SELECT id, name, production, lineage, settings, created_at FROM stacks WHERE name = $1 FOR UPDATE", &[&name])?
        .map(|r| stack_from_row(&r))
        .transpose()?
        .ok_or_else(|| StoreError::NotFound(format!("stack {name}")))
}

macro_rules! version_cols {
    () => {
        "serial, lineage, sha256, size, author, lock_id, run_id, reason, restored_from, created_at"
    };
}

fn version_from_row(stack: &str, r: &Row) -> Result<VersionMeta> {
    Ok(VersionMeta {
        stack: stack.to_owned(),
        serial: r.try_get::<_, i64>(0)? as u64,
        lineage: r.try_get(1)?,
        sha256: hex::encode(r.try_get::<_, Vec<u8>>(2)?),
        size: r.try_get::<_, i64>(3)? as u64,
        author: r.try_get(4)?,
        lock_id: r.try_get(5)?,
        run_id: r.try_get(6)?,
        reason: r.try_get(7)?,
        restored_from: r.try_get::<_, Option<i64>>(8)?.map(|v| v as u64),
        created_at: r.try_get(9)?,
    })
}

fn current_version_of<C: GenericClient>(
    db: &mut Db<'_, C>,
    stack_id: i64,
    stack: &str,
) -> Result<Option<VersionMeta>> {
    db.query_opt(
        concat!(
            "SELECT ",
            version_cols!(),
            " FROM versions WHERE stack_id = $1 ORDER BY serial DESC LIMIT 1"
        ),
        &[&stack_id],
    )?
    .map(|r| version_from_row(stack, &r))
    .transpose()
}

fn lock_of<C: GenericClient>(db: &mut Db<'_, C>, stack_id: i64) -> Result<Option<LockRecord>> {
    db.query_opt("SELECT lock_id, info, operation, owner_token, owner, created_at FROM locks WHERE stack_id = $1", &[&stack_id])?
        .map(|r| {
            Ok(LockRecord {
                id: r.try_get(0)?,
                info: r.try_get(1)?,
                operation: r.try_get(2)?,
                owner_token: r.try_get(3)?,
                owner: r.try_get(4)?,
                created_at: r.try_get(5)?,
            })
        })
        .transpose()
}

macro_rules! token_cols {
    () => {
        "id, name, role, stacks, created_at, expires_at, revoked_at, created_by, run_id, user_name, parent_id"
    };
}

fn token_by_id<C: GenericClient>(
    db: &mut Db<'_, C>,
    id: &str,
    for_update: bool,
) -> Result<Option<TokenRecord>> {
    let sql = if for_update {
        concat!(
            "SELECT ",
            token_cols!(),
            " FROM tokens WHERE id = $1 FOR UPDATE"
        )
    } else {
        concat!("SELECT ", token_cols!(), " FROM tokens WHERE id = $1")
    };
    db.query_opt(sql, &[&id])?
        .map(|r| token_from_row(&r))
        .transpose()
}

fn user_from_row(r: &Row) -> Result<UserRecord> {
    Ok(UserRecord {
        name: r.try_get(0)?,
        created_at: r.try_get(1)?,
        created_by: r.try_get(2)?,
    })
}

fn token_from_row(r: &Row) -> Result<TokenRecord> {
    let role: String = r.try_get(2)?;
    let stacks: String = r.try_get(3)?;
    Ok(TokenRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        role: role.parse().map_err(StoreError::Corrupt)?,
        stacks: json_col(&stacks, "token stacks")?,
        created_at: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
        created_by: r.try_get(7)?,
        run_id: r.try_get(8)?,
        user: r.try_get(9)?,
        parent_id: r.try_get(10)?,
    })
}

macro_rules! grant_cols {
    () => {
        "id, addresses, reason, created_by, created_at, expires_at, consumed_at, run_id"
    };
}

fn grants_of<C: GenericClient>(
    db: &mut Db<'_, C>,
    stack_id: i64,
    stack: &str,
    active_only: bool,
) -> Result<Vec<GrantRecord>> {
    let rows = if active_only {
        db.query(
            concat!("SELECT ", grant_cols!(), " FROM grants WHERE stack_id = $1 AND consumed_at IS NULL AND expires_at > $2 ORDER BY created_at DESC, id"),
            &[&stack_id, &now_ms()],
        )?
    } else {
        db.query(
            concat!(
                "SELECT ",
                grant_cols!(),
                " FROM grants WHERE stack_id = $1 ORDER BY created_at DESC, id"
            ),
            &[&stack_id],
        )?
    };
    rows.iter()
        .map(|r| {
            let addresses: String = r.try_get(1)?;
            Ok(GrantRecord {
                id: r.try_get(0)?,
                stack: stack.to_owned(),
                addresses: json_col(&addresses, "grant addresses")?,
                reason: r.try_get(2)?,
                created_by: r.try_get(3)?,
                created_at: r.try_get(4)?,
                expires_at: r.try_get(5)?,
                consumed_at: r.try_get(6)?,
                run_id: r.try_get(7)?,
            })
        })
        .collect()
}

/// Appends an audit event inside the caller's transaction. The advisory lock makes appends
/// from every replica take turns until commit, so the chain never forks; it is taken in its
/// own statement because under READ COMMITTED the next statement's snapshot then includes
/// the previous holder's committed event. (Every transaction takes it last, after any stack
/// row lock, so lock order is always stack row, then chunks, then audit: no deadlock.)
fn append_audit_tx(tx: &mut Tx<'_, '_>, e: &NewAudit) -> Result<AuditRecord> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
    let (prev_seq, prev_hash): (i64, String) =
        match tx.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])? {
            Some(r) => (r.try_get(0)?, r.try_get(1)?),
            None => (0, GENESIS.to_owned()),
        };
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
    let detail = e.detail.to_string();
    tx.execute(
        "INSERT INTO audit (seq, at, actor, action, stack, outcome, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[&seq, &at, &e.actor, &e.action, &e.stack, &e.outcome, &detail, &prev_hash, &hash],
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

fn version_bytes_of<C: GenericClient>(
    db: &mut Db<'_, C>,
    stack_id: i64,
    serial: u64,
) -> Result<Vec<u8>> {
    let not_found = || StoreError::NotFound(format!("version {serial}"));
    let serial_i = bigint(serial).ok_or_else(not_found)?;
    let row = db
        .query_opt(
            "SELECT sha256, size, chunks FROM versions WHERE stack_id = $1 AND serial = $2",
            &[&stack_id, &serial_i],
        )?
        .ok_or_else(not_found)?;
    let (sha, size, list): (Vec<u8>, i64, Vec<u8>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    let hashes = blob::parse_chunk_list(&list);
    let wanted: Vec<&[u8]> = hashes
        .iter()
        .map(|h| &h[..])
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut stored: HashMap<Vec<u8>, (Vec<u8>, i64)> = HashMap::with_capacity(wanted.len());
    for r in db.query(
        "SELECT hash, data, raw_len FROM chunks WHERE hash = ANY($1)",
        &[&wanted],
    )? {
        stored.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
    }
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

/// Stores the chunks the database does not have yet. Only missing chunks cross the wire (a
/// new version of a big state usually differs in one or two), and they are inserted in hash
/// order so concurrent writers of overlapping chunks always wait on each other in the same
/// order and cannot deadlock.
fn put_chunks(
    tx: &mut Tx<'_, '_>,
    chunks: &[blob::Chunk<'_>],
    compressed: &[Vec<u8>],
) -> Result<()> {
    let mut all: Vec<(&[u8; 32], &[u8], i64)> = chunks
        .iter()
        .zip(compressed)
        .map(|(c, z)| (&c.hash, &z[..], c.raw.len() as i64))
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    all.dedup_by(|a, b| a.0 == b.0);
    let hashes: Vec<&[u8]> = all.iter().map(|c| &c.0[..]).collect();
    let present: HashSet<Vec<u8>> = tx
        .query("SELECT hash FROM chunks WHERE hash = ANY($1)", &[&hashes])?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<std::result::Result<_, _>>()?;
    let missing: Vec<_> = all
        .into_iter()
        .filter(|c| !present.contains(&c.0[..]))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let hashes: Vec<&[u8]> = missing.iter().map(|c| &c.0[..]).collect();
    let data: Vec<&[u8]> = missing.iter().map(|c| c.1).collect();
    let raw_lens: Vec<i64> = missing.iter().map(|c| c.2).collect();
    tx.execute(
        "INSERT INTO chunks (hash, data, raw_len) SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::bigint[]) ON CONFLICT DO NOTHING",
        &[&hashes, &data, &raw_lens],
    )?;
    Ok(())
}

impl Store for PostgresStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn token_count(&self) -> Result<u64> {
        self.read(|db| {
            Ok(db
                .query_one("SELECT COUNT(*) FROM tokens", &[])?
                .try_get::<_, i64>(0)? as u64)
        })
    }

    fn create_token(&self, t: NewToken, audit: NewAudit) -> Result<TokenRecord> {
        self.write(|tx| {
            // Lock order: the parent's row (so a concurrent revocation either sees this token
            // or makes this mint fail), then the user's mint lock, then audit.
            let parent = match t.parent_id.as_deref() {
                Some(p) => token_by_id(tx, p, true)?,
                None => None,
            };
            let user = parent.as_ref().map_or(t.user.clone(), |p| p.user.clone());
            let now = now_ms();
            let recent_derived = match t.mint_limit {
                Some(l) => {
                    tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&USER_MINT_LOCK_CLASS, &user])?;
                    tx.query_one(
                        "SELECT COUNT(*) FROM tokens WHERE user_name = $1 AND parent_id IS NOT NULL AND run_id IS NULL AND created_at > $2",
                        &[&user, &(now - l.window_ms)],
                    )?
                    .try_get::<_, i64>(0)? as u64
                }
                None => 0,
            };
            let user_exists: bool = tx
                .query_one("SELECT EXISTS(SELECT 1 FROM users WHERE name = $1)", &[&user])?
                .try_get(0)?;
            let t = t.judge(MintContext { parent: parent.as_ref(), user_exists, recent_derived, now })?;
            tx.execute_raw(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, created_by, run_id, user_name, parent_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[&t.id, &&t.secret_hash[..], &t.name, &t.role.as_str(), &to_json(&t.stacks), &now, &t.expires_at, &t.created_by, &t.run_id, &t.user, &t.parent_id],
            )?
            .map_err(|e| unique_is_conflict(e, || format!("token {} already exists", t.id)))?;
            append_audit_tx(tx, &audit)?;
            Ok(t.into_record(now))
        })
    }

    fn token_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRecord>> {
        self.read(|db| {
            db.query_opt(
                concat!(
                    "SELECT ",
                    token_cols!(),
                    " FROM tokens WHERE secret_hash = $1"
                ),
                &[&&secret_hash[..]],
            )?
            .map(|r| token_from_row(&r))
            .transpose()
        })
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(|db| {
            db.query(
                concat!(
                    "SELECT ",
                    token_cols!(),
                    " FROM tokens ORDER BY created_at, id"
                ),
                &[],
            )?
            .iter()
            .map(token_from_row)
            .collect()
        })
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.read(|db| token_by_id(db, id, false))
    }

    fn revoke_token(&self, id: &str, audit: NewAudit) -> Result<TokenRecord> {
        self.write(|tx| {
            let now = now_ms();
            let n = tx.execute(
                "UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            )?;
            let t = token_by_id(tx, id, false)?
                .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
            if n == 1 {
                append_audit_tx(tx, &audit)?;
            }
            let mut cascaded: Vec<String> = tx
                .query(
                    "WITH RECURSIVE d(id) AS (SELECT id FROM tokens WHERE parent_id = $1 UNION SELECT t.id FROM tokens t JOIN d ON t.parent_id = d.id) \
                     UPDATE tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND id IN (SELECT id FROM d) RETURNING id",
                    &[&id, &now],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
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
            tx.execute_raw(
                "INSERT INTO users (name, created_at, created_by) VALUES ($1, $2, $3)",
                &[&u.name, &now, &u.created_by],
            )?
            .map_err(|e| unique_is_conflict(e, || format!("user {} already exists", u.name)))?;
            append_audit_tx(tx, &audit)?;
            Ok(UserRecord {
                name: u.name,
                created_at: now,
                created_by: u.created_by,
            })
        })
    }

    fn user(&self, name: &str) -> Result<Option<UserRecord>> {
        self.read(|db| {
            db.query_opt(
                "SELECT name, created_at, created_by FROM users WHERE name = $1",
                &[&name],
            )?
            .map(|r| user_from_row(&r))
            .transpose()
        })
    }

    fn list_users(&self) -> Result<Vec<UserRecord>> {
        self.read(|db| {
            db.query(
                "SELECT name, created_at, created_by FROM users ORDER BY name",
                &[],
            )?
            .iter()
            .map(user_from_row)
            .collect()
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
            let exists = || format!("stack {name} already exists");
            if stack_row(tx, name)?.is_some() {
                return Err(StoreError::Conflict(exists()));
            }
            let now = now_ms();
            // A replica creating the same stack at the same moment makes this a unique violation.
            tx.execute_raw(
                "INSERT INTO stacks (name, production, settings, created_at) VALUES ($1, $2, $3, $4)",
                &[&name, &production, &to_json(&settings), &now],
            )?
            .map_err(|e| unique_is_conflict(e, exists))?;
            append_audit_tx(tx, &audit)?;
            Ok(StackRecord { name: name.to_owned(), production, lineage: None, settings, created_at: now })
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
        self.write(|tx| {
            let (id, mut s) = lock_stack(tx, name)?;
            tx.execute(
                "UPDATE stacks SET settings = $2 WHERE id = $1",
                &[&id, &to_json(&settings)],
            )?;
            append_audit_tx(tx, &audit)?;
            s.settings = settings;
            Ok(s)
        })
    }

    fn lock(&self, stack: &str, lock: NewLock, audit: NewAudit) -> Result<LockOutcome> {
        self.write(|tx| {
            let (id, _) = lock_stack(tx, stack)?;
            if let Some(held) = lock_of(tx, id)? {
                return Ok(LockOutcome::Held(held));
            }
            tx.execute(
                "INSERT INTO locks (stack_id, lock_id, info, operation, owner_token, owner, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&id, &lock.id, &lock.info, &lock.operation, &lock.owner_token, &lock.owner, &now_ms()],
            )?;
            append_audit_tx(tx, &audit)?;
            Ok(LockOutcome::Acquired)
        })
    }

    fn unlock(&self, stack: &str, by: UnlockBy, audit: NewAudit) -> Result<UnlockOutcome> {
        self.write(|tx| {
            let (id, _) = lock_stack(tx, stack)?;
            let Some(held) = lock_of(tx, id)? else {
                return Ok(UnlockOutcome::NotLocked);
            };
            if let UnlockBy::Id(want) = &by {
                if *want != held.id {
                    return Ok(UnlockOutcome::Mismatch(held));
                }
            }
            tx.execute("DELETE FROM locks WHERE stack_id = $1", &[&id])?;
            append_audit_tx(tx, &audit)?;
            Ok(UnlockOutcome::Released(held))
        })
    }

    fn current_lock(&self, stack: &str) -> Result<Option<LockRecord>> {
        self.read(|db| {
            let (id, _) = require_stack(db, stack)?;
            lock_of(db, id)
        })
    }

    fn current_version(&self, stack: &str) -> Result<Option<VersionMeta>> {
        self.read(|db| {
            let (id, _) = require_stack(db, stack)?;
            current_version_of(db, id, stack)
        })
    }

    fn version(&self, stack: &str, serial: u64) -> Result<Option<VersionMeta>> {
        self.read(|db| {
            let (id, _) = require_stack(db, stack)?;
            let Some(serial) = bigint(serial) else {
                return Ok(None);
            };
            db.query_opt(
                concat!(
                    "SELECT ",
                    version_cols!(),
                    " FROM versions WHERE stack_id = $1 AND serial = $2"
                ),
                &[&id, &serial],
            )?
            .map(|r| version_from_row(stack, &r))
            .transpose()
        })
    }

    fn versions(&self, stack: &str) -> Result<Vec<VersionMeta>> {
        self.read(|db| {
            let (id, _) = require_stack(db, stack)?;
            db.query(
                concat!(
                    "SELECT ",
                    version_cols!(),
                    " FROM versions WHERE stack_id = $1 ORDER BY serial"
                ),
                &[&id],
            )?
            .iter()
            .map(|r| version_from_row(stack, r))
            .collect()
        })
    }

    fn version_bytes(&self, stack: &str, serial: u64) -> Result<Vec<u8>> {
        self.read(|db| {
            let (id, _) = require_stack(db, stack)?;
            version_bytes_of(db, id, serial)
        })
    }

    fn write_state(
        &self,
        stack: &str,
        attempt: WriteAttempt,
        check: &mut WriteCheck<'_>,
    ) -> Result<WriteResult> {
        // Chunk, hash and compress before taking any lock: it is the expensive part.
        let chunks = blob::split(&attempt.body);
        let compressed: Vec<Vec<u8>> = chunks.iter().map(|c| blob::compress(c.raw)).collect();
        let sha = blob::sha256(&attempt.body);
        let serial = bigint(attempt.serial).ok_or_else(|| {
            StoreError::Conflict(format!("serial {} is too large to store", attempt.serial))
        })?;
        self.write(|tx| {
            let (stack_id, record) = lock_stack(tx, stack)?;
            let lock = lock_of(tx, stack_id)?;
            let current = current_version_of(tx, stack_id, stack)?;
            let grants = grants_of(tx, stack_id, stack, true)?;
            let decision = {
                // The firewall may load the current bytes through the same transaction.
                let cell = RefCell::new(&mut *tx);
                let load_current = || match &current {
                    Some(v) => version_bytes_of(&mut **cell.borrow_mut(), stack_id, v.serial),
                    None => Err(StoreError::NotFound("no current version".into())),
                };
                let ctx = WriteContext { stack: &record, lock: lock.as_ref(), current: current.as_ref(), grants: &grants, load_current: &load_current };
                check(&ctx)
            };
            let (consume, audit) = match decision {
                Err(refusal) => return Ok(WriteResult::Refused(refusal)),
                Ok(WriteDecision::Unchanged) => return Ok(WriteResult::Unchanged),
                Ok(WriteDecision::Store { consume_grants, audit }) => (consume_grants, audit),
            };
            put_chunks(tx, &chunks, &compressed)?;
            let now = now_ms();
            let size = attempt.body.len() as i64;
            let restored_from = attempt.restored_from.and_then(bigint);
            tx.execute_raw(
                "INSERT INTO versions (stack_id, serial, lineage, sha256, size, chunks, author, lock_id, run_id, reason, restored_from, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &stack_id,
                    &serial,
                    &attempt.lineage,
                    &&sha[..],
                    &size,
                    &blob::chunk_list(&chunks),
                    &attempt.author,
                    &attempt.lock_id,
                    &attempt.run_id,
                    &attempt.reason,
                    &restored_from,
                    &now,
                ],
            )?
            .map_err(|e| unique_is_conflict(e, || format!("serial {} already exists", attempt.serial)))?;
            if record.lineage.is_none() {
                tx.execute("UPDATE stacks SET lineage = $2 WHERE id = $1", &[&stack_id, &attempt.lineage])?;
            }
            for g in &consume {
                tx.execute("UPDATE grants SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL", &[g, &now])?;
            }
            append_audit_tx(tx, &audit)?;
            Ok(WriteResult::Stored(attempt.version_meta(stack, &sha, now)))
        })
    }

    fn stored_state_bytes(&self) -> Result<u64> {
        self.read(|db| {
            // Same accounting as the SQLite engine: payload plus a fixed per-row overhead.
            let chunks: i64 = db
                .query_one(
                    "SELECT COALESCE(SUM(octet_length(data) + 40), 0)::BIGINT FROM chunks",
                    &[],
                )?
                .try_get(0)?;
            let lists: i64 = db
                .query_one(
                    "SELECT COALESCE(SUM(octet_length(chunks) + 120), 0)::BIGINT FROM versions",
                    &[],
                )?
                .try_get(0)?;
            Ok((chunks + lists) as u64)
        })
    }

    fn create_grant(&self, stack: &str, g: NewGrant, audit: NewAudit) -> Result<GrantRecord> {
        self.write(|tx| {
            let (stack_id, _) = lock_stack(tx, stack)?;
            let now = now_ms();
            tx.execute_raw(
                "INSERT INTO grants (id, stack_id, addresses, reason, created_by, created_at, expires_at, run_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&g.id, &stack_id, &to_json(&g.addresses), &g.reason, &g.created_by, &now, &g.expires_at, &g.run_id],
            )?
            .map_err(|e| unique_is_conflict(e, || format!("grant {} already exists", g.id)))?;
            append_audit_tx(tx, &audit)?;
            Ok(g.into_record(stack, now))
        })
    }

    fn grants(&self, stack: &str) -> Result<Vec<GrantRecord>> {
        self.read(|db| {
            let (id, _) = require_stack(db, stack)?;
            grants_of(db, id, stack, false)
        })
    }

    fn append_audit(&self, event: NewAudit) -> Result<AuditRecord> {
        self.write(|tx| append_audit_tx(tx, &event))
    }

    fn audit_events(&self, after: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        self.read(|db| {
            db.query(
                "SELECT seq, at, actor, action, stack, outcome, detail, prev_hash, hash FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &i64::from(limit)],
            )?
            .iter()
            .map(|r| {
                let detail: String = r.try_get(6)?;
                Ok(AuditRecord {
                    seq: r.try_get(0)?,
                    at: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    stack: r.try_get(4)?,
                    outcome: r.try_get(5)?,
                    detail: json_col(&detail, "audit detail")?,
                    prev_hash: r.try_get(7)?,
                    hash: r.try_get(8)?,
                })
            })
            .collect()
        })
    }

    fn audit_search(&self, filter: &AuditFilter, limit: u32) -> Result<Vec<AuditRecord>> {
        let f = filter;
        self.read(|db| {
            db.query(
                &format!("SELECT seq, at, actor, action, stack, outcome, detail, prev_hash, hash FROM audit WHERE {POSTGRES_AUDIT_FILTER} ORDER BY seq DESC LIMIT $8"),
                &[&f.before, &f.stack, &f.action, &f.outcome, &f.actor, &f.since, &f.until, &i64::from(limit)],
            )?
            .iter()
            .map(|r| {
                let detail: String = r.try_get(6)?;
                Ok(AuditRecord {
                    seq: r.try_get(0)?,
                    at: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    stack: r.try_get(4)?,
                    outcome: r.try_get(5)?,
                    detail: json_col(&detail, "audit detail")?,
                    prev_hash: r.try_get(7)?,
                    hash: r.try_get(8)?,
                })
            })
            .collect()
        })
    }

    fn audit_count(&self, filter: &AuditFilter) -> Result<u64> {
        let f = filter;
        self.read(|db| {
            let row = db.query_one(
                &format!("SELECT COUNT(*) FROM audit WHERE {POSTGRES_AUDIT_FILTER}"),
                &[
                    &f.before, &f.stack, &f.action, &f.outcome, &f.actor, &f.since, &f.until,
                ],
            )?;
            let n: i64 = row.try_get(0)?;
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
        self.read(|db| {
            db.query_opt("SELECT record FROM runs WHERE id = $1", &[&id])?
                .map(|r| json_col(&r.try_get::<_, String>(0)?, "run record"))
                .transpose()
        })
    }

    fn runs_where(&self, f: &RunFilter, limit: u32) -> Result<Vec<RunRecord>> {
        let limit = i64::from(limit);
        self.read(|db| {
            let stack_id: Option<i64> = match &f.stack {
                Some(name) => Some(require_stack(db, name)?.0),
                None => None,
            };
            // The author is the user, the token id, or the token name (`author` is "name (id)").
            let rows = db.query(
                "SELECT record FROM runs WHERE ($1::BIGINT IS NULL OR stack_id = $1) AND ($2::TEXT IS NULL OR status = $2) \
                 AND ($3::TEXT IS NULL OR record::jsonb->>'author_user' = $3 OR record::jsonb->>'author_token' = $3 \
                      OR left(record::jsonb->>'author', length($3) + 2) = $3 || ' (') \
                 AND ($4::TEXT IS NULL OR left(record::jsonb->>'git_head', length($4)) = $4) \
                 ORDER BY created_at DESC, id LIMIT $5",
                &[&stack_id, &f.status.map(RunStatus::as_str), &f.author, &f.commit, &limit],
            )?;
            rows.iter()
                .map(|r| json_col(&r.try_get::<_, String>(0)?, "run record"))
                .collect()
        })
    }

    fn run_artifact(&self, id: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(|db| {
            let Some(row) = db.query_opt(
                "SELECT sha256, raw_len, data FROM run_artifacts WHERE run_id = $1 AND name = $2",
                &[&id, &name],
            )?
            else {
                return Ok(None);
            };
            let (sha, raw_len, data): (Vec<u8>, i64, Vec<u8>) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let raw = blob::decompress(&data, raw_len.max(0) as usize)
                .map_err(|e| StoreError::Corrupt(format!("run {id} artifact {name}: {e}")))?;
            if blob::sha256(&raw)[..] != sha[..] {
                return Err(StoreError::Corrupt(format!(
                    "run {id} artifact {name} does not match its SHA-256"
                )));
            }
            Ok(Some(raw))
        })
    }

    fn put_run_artifact(&self, id: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let (sha, data) = (blob::sha256(bytes), blob::compress(bytes));
        let raw_len = bytes.len() as i64;
        self.write(|tx| {
            // The foreign key waits for a transition holding the run's row, then checks.
            tx.execute_raw(
                "INSERT INTO run_artifacts (run_id, name, sha256, raw_len, data) VALUES ($1, $2, $3, $4, $5)",
                &[&id, &name, &&sha[..], &raw_len, &data],
            )?
            .map_err(|e| {
                if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
                    StoreError::NotFound(format!("run {id}"))
                } else {
                    unique_is_conflict(e, || {
                        format!("run {id} already has an artifact named {name}")
                    })
                }
            })?;
            Ok(())
        })
    }

    fn update_run(&self, id: &str, update: &mut RunUpdate<'_>) -> Result<RunTransition> {
        self.write(|tx| {
            let not_found = || StoreError::NotFound(format!("run {id}"));
            // Same lock order as every stack mutation: the stack's row, then the run's (then the
            // audit lock). A run never moves to another stack, so its stack can be looked up
            // before either lock is held.
            let stack_name: String = tx
                .query_opt(
                    "SELECT s.name FROM runs r JOIN stacks s ON s.id = r.stack_id WHERE r.id = $1",
                    &[&id],
                )?
                .ok_or_else(not_found)?
                .try_get(0)?;
            let (stack_id, stack) = lock_stack(tx, &stack_name)?;
            // FOR UPDATE reads the newest committed record, whatever was read before the wait.
            let record: String = tx
                .query_opt("SELECT record FROM runs WHERE id = $1 FOR UPDATE", &[&id])?
                .ok_or_else(not_found)?
                .try_get(0)?;
            let run: RunRecord = json_col(&record, "run record")?;
            let current = current_version_of(tx, stack_id, &stack.name)?;
            let (record, result) = match update(&run, &stack, current.as_ref()) {
                Ok((new, audit)) => (Some((new.clone(), audit)), Ok(new)),
                Err(RunRefusal { refusal, record }) => (record.map(|b| *b), Err(refusal)),
            };
            if let Some((new, audit)) = record {
                let json =
                    serde_json::to_string(&new).map_err(|e| StoreError::Backend(e.to_string()))?;
                tx.execute(
                    "UPDATE runs SET status = $2, record = $3 WHERE id = $1",
                    &[&id, &new.status.as_str(), &json],
                )?;
                append_audit_tx(tx, &audit)?;
                if run.status == RunStatus::Applying && new.status != RunStatus::Applying {
                    // A run's removal grant ends with its apply.
                    tx.execute(
                        "UPDATE grants SET consumed_at = $2 WHERE run_id = $1 AND consumed_at IS NULL",
                        &[&id, &crate::now_ms()],
                    )?;
                }
            }
            Ok(result)
        })
    }
    // --- end governed runs ---

    // --- backup import ---
    fn tokens_with_hashes(&self) -> Result<Vec<(TokenRecord, [u8; 32])>> {
        self.read(|db| {
            db.query(
                concat!(
                    "SELECT ",
                    token_cols!(),
                    ", secret_hash FROM tokens ORDER BY created_at, id"
                ),
                &[],
            )?
            .iter()
            .map(|r| {
                let hash: Vec<u8> = r.try_get(11)?;
                let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
                    StoreError::Corrupt("a token's secret hash is not 32 bytes".into())
                })?;
                Ok((token_from_row(r)?, hash))
            })
            .collect()
        })
    }

    fn import_stack(&self, s: &StackRecord) -> Result<()> {
        self.write(|tx| {
            let exists = || format!("stack {} already exists", s.name);
            tx.execute_raw(
                "INSERT INTO stacks (name, production, lineage, settings, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&s.name, &s.production, &s.lineage, &to_json(&s.settings), &s.created_at],
            )?
            .map_err(|e| unique_is_conflict(e, exists))?;
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
        let too_large =
            || StoreError::Conflict(format!("serial {} is too large to store", meta.serial));
        let serial = bigint(meta.serial).ok_or_else(too_large)?;
        let restored_from = match meta.restored_from {
            Some(v) => Some(bigint(v).ok_or_else(too_large)?),
            None => None,
        };
        let chunks = blob::split(bytes);
        let compressed: Vec<Vec<u8>> = chunks.iter().map(|c| blob::compress(c.raw)).collect();
        let size = bytes.len() as i64;
        self.write(|tx| {
            let (stack_id, _) = lock_stack(tx, &meta.stack)?;
            put_chunks(tx, &chunks, &compressed)?;
            tx.execute_raw(
                "INSERT INTO versions (stack_id, serial, lineage, sha256, size, chunks, author, lock_id, run_id, reason, restored_from, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &stack_id,
                    &serial,
                    &meta.lineage,
                    &&sha[..],
                    &size,
                    &blob::chunk_list(&chunks),
                    &meta.author,
                    &meta.lock_id,
                    &meta.run_id,
                    &meta.reason,
                    &restored_from,
                    &meta.created_at,
                ],
            )?
            .map_err(|e| {
                unique_is_conflict(e, || {
                    format!("stack {} serial {} already exists", meta.stack, meta.serial)
                })
            })?;
            Ok(())
        })
    }

    fn import_lock(&self, stack: &str, l: &LockRecord) -> Result<()> {
        self.write(|tx| {
            let (id, _) = lock_stack(tx, stack)?;
            if lock_of(tx, id)?.is_some() {
                return Err(StoreError::Conflict(format!("stack {stack} is locked already")));
            }
            tx.execute(
                "INSERT INTO locks (stack_id, lock_id, info, operation, owner_token, owner, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&id, &l.id, &l.info, &l.operation, &l.owner_token, &l.owner, &l.created_at],
            )?;
            Ok(())
        })
    }

    fn import_token(&self, t: &TokenRecord, secret_hash: &[u8; 32]) -> Result<()> {
        self.write(|tx| {
            tx.execute_raw(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, revoked_at, created_by, run_id, user_name, parent_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[&t.id, &&secret_hash[..], &t.name, &t.role.as_str(), &to_json(&t.stacks), &t.created_at, &t.expires_at, &t.revoked_at, &t.created_by, &t.run_id, &t.user, &t.parent_id],
            )?
            .map_err(|e| unique_is_conflict(e, || format!("token {} already exists", t.id)))?;
            Ok(())
        })
    }

    fn import_user(&self, u: &UserRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute_raw(
                "INSERT INTO users (name, created_at, created_by) VALUES ($1, $2, $3)",
                &[&u.name, &u.created_at, &u.created_by],
            )?
            .map_err(|e| unique_is_conflict(e, || format!("user {} already exists", u.name)))?;
            Ok(())
        })
    }

    fn import_grant(&self, g: &GrantRecord) -> Result<()> {
        self.write(|tx| {
            let (stack_id, _) = lock_stack(tx, &g.stack)?;
            tx.execute_raw(
                "INSERT INTO grants (id, stack_id, addresses, reason, created_by, created_at, expires_at, consumed_at, run_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[&g.id, &stack_id, &to_json(&g.addresses), &g.reason, &g.created_by, &g.created_at, &g.expires_at, &g.consumed_at, &g.run_id],
            )?
            .map_err(|e| unique_is_conflict(e, || format!("grant {} already exists", g.id)))?;
            Ok(())
        })
    }

    fn import_audit(&self, r: &AuditRecord) -> Result<()> {
        self.write(|tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])?;
            let (head_seq, head_hash): (i64, String) =
                match tx.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])? {
                    Some(row) => (row.try_get(0)?, row.try_get(1)?),
                    None => (0, GENESIS.to_owned()),
                };
            if r.seq != head_seq + 1 || r.prev_hash != head_hash {
                return Err(StoreError::Conflict(format!(
                    "audit record {} does not extend the stored chain (head is {head_seq})",
                    r.seq
                )));
            }
            let detail = r.detail.to_string();
            tx.execute(
                "INSERT INTO audit (seq, at, actor, action, stack, outcome, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[&r.seq, &r.at, &r.actor, &r.action, &r.stack, &r.outcome, &detail, &r.prev_hash, &r.hash],
            )?;
            Ok(())
        })
    }

    fn run_artifact_names(&self, id: &str) -> Result<Vec<String>> {
        self.read(|db| {
            db.query(
                "SELECT name FROM run_artifacts WHERE run_id = $1 ORDER BY name",
                &[&id],
            )?
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect()
        })
    }

    fn import_run(&self, run: &RunRecord, artifacts: &[(&str, &[u8])]) -> Result<()> {
        self.insert_run(run, artifacts, None)
    }
    // --- end backup import ---
}

/// The `WHERE` clause of an [`AuditFilter`]: parameters $1..$7 in the struct's field order, a
/// NULL parameter matching everything.
const POSTGRES_AUDIT_FILTER: &str = "($1::bigint IS NULL OR seq < $1) AND ($2::text IS NULL OR stack = $2) AND ($3::text IS NULL OR action = $3) AND ($4::text IS NULL OR outcome = $4) AND ($5::text IS NULL OR strpos(actor, $5) > 0) AND ($6::text IS NULL OR at >= $6) AND ($7::text IS NULL OR at < $7)";
