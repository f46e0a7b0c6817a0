//! The PostgreSQL engine, for several `airlock server` replicas sharing one database. Nothing is
//! held in memory between calls: every stack-mutating transaction starts by locking the stack's
//! row (`SELECT ... FOR UPDATE`) and every audit append locks its chain's head row, so locks,
//! state writes and the audit hash chains stay linearizable across processes.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Config, Error as PgError, NoTls, Row as PgRow, Statement};

use crate::blob;
use crate::core::Engine;
use crate::sql::{DbError, Row, Sql, Value};
use crate::*;

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (2, include_str!("../migrations/postgres/0002_runs.sql")),
    (3, include_str!("../migrations/postgres/0003_users.sql")),
    (
        4,
        include_str!("../migrations/postgres/0004_archived_stacks.sql"),
    ),
    (
        5,
        include_str!("../migrations/postgres/0005_policy_sets.sql"),
    ),
    (
        6,
        include_str!("../migrations/postgres/0006_forge_logins.sql"),
    ),
    (
        7,
        include_str!("../migrations/postgres/0007_drift_reports.sql"),
    ),
    (8, include_str!("../migrations/postgres/0008_oidc.sql")),
    (
        10,
        include_str!("../migrations/postgres/0010_audit_chains.sql"),
    ),
    (
        11,
        include_str!("../migrations/postgres/0011_trust_ids.sql"),
    ),
    (
        13,
        include_str!("../migrations/postgres/0013_forge_token_uses.sql"),
    ),
    (
        14,
        include_str!("../migrations/postgres/0014_chunks_rowid.sql"),
    ),
    (
        15,
        include_str!("../migrations/postgres/0015_token_read_stacks.sql"),
    ),
    (
        16,
        include_str!("../migrations/postgres/0016_runs_author_user.sql"),
    ),
    (
        17,
        include_str!("../migrations/postgres/0017_tokens_of_persons.sql"),
    ),
    (
        18,
        include_str!("../migrations/postgres/0018_run_artifact_retention.sql"),
    ),
    (
        19,
        include_str!("../migrations/postgres/0019_token_minters.sql"),
    ),
    (20, include_str!("../migrations/postgres/0020_job_refs.sql")),
];

/// Transaction-scoped advisory lock keys ("airlock" in ASCII, then a number). Being
/// transaction-scoped, a replica that dies mid-transaction never leaves one held.
const MIGRATION_LOCK: i64 = 0x6169_726c_6f63_6b01;
// 0x6169_726c_6f63_6b02 was the audit lock every append took until commit (before migration 0010).
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
    recent: blob::RecentBodies,
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Backend(describe(&e))
    }
}

/// The server's own message and SQLSTATE for database errors (the client's `Display` says only
/// "db error"), the cause chain for the rest. The server's DETAIL is left out: it can echo key
/// values, such as a token's secret hash.
fn describe(e: &PgError) -> String {
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
/// Only a unique violation is a duplicate; a foreign-key violation names a missing parent.
fn classify(e: PgError) -> DbError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => DbError::Unique,
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => DbError::ForeignKey,
        _ => DbError::Other(e.into()),
    }
}

// ---- connections ----

/// One connection: the async client (`tokio-postgres`), its socket's I/O (`io`), the
/// single-threaded runtime whose driver waits for that socket during each call, and the
/// statements prepared on it (each is prepared once per connection, which saves a round trip
/// on every later use). This is what the sync `postgres` client does; owning the async client
/// lets a transaction's `BEGIN` travel in the same round trip as its first statement (see
/// [`Db`]).
struct Conn {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    /// Polled together with each call, on the caller's thread, as the sync client does (no
    /// task to schedule and wake); `None` once it ended, which also closes `client`.
    io: Option<Io>,
    statements: HashMap<String, Statement>,
}

type Io = Pin<Box<dyn Future<Output = std::result::Result<(), PgError>> + Send>>;

/// Runs `call` to completion on `rt`, driving the connection's I/O meanwhile.
fn drive<T>(rt: &tokio::runtime::Runtime, io: &mut Option<Io>, call: impl Future<Output = T>) -> T {
    let mut call = pin!(call);
    rt.block_on(std::future::poll_fn(|cx| {
        // The call first, so that a request it queues is sent by the I/O poll right after.
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        if let Some(c) = io.as_mut() {
            if c.as_mut().poll(cx).is_ready() {
                // Ended (closed, or an error): dropping it fails the calls still waiting.
                *io = None;
            }
        }
        call.as_mut().poll(cx)
    }))
}

impl Conn {
    /// Connects; the error says why, without the URL (which may hold a password).
    fn open(config: &Config) -> std::result::Result<Conn, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start the connection's I/O driver: {e}"))?;
        let (client, connection) = rt
            .block_on(config.connect(NoTls))
            .map_err(|e| describe(&e))?;
        Ok(Conn {
            rt,
            client,
            io: Some(Box::pin(connection)),
            statements: HashMap::new(),
        })
    }

    fn statement(&mut self, sql: &str) -> std::result::Result<Statement, PgError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = drive(&self.rt, &mut self.io, self.client.prepare(sql))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn simple(&mut self, sql: &str) -> std::result::Result<(), PgError> {
        drive(&self.rt, &mut self.io, self.client.batch_execute(sql))
    }

    fn is_closed(&self) -> bool {
        self.io.is_none() || self.client.is_closed()
    }

    /// Whether the connection still answers a no-op query within [`LIVENESS_PROBE`].
    fn answers(&mut self) -> bool {
        let probe = tokio::time::timeout(LIVENESS_PROBE, self.client.simple_query(""));
        drive(&self.rt, &mut self.io, probe).is_ok_and(|r| r.is_ok())
    }
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
                if conn.is_closed() {
                    st.open -= 1;
                    continue;
                }
                return Ok(Pooled {
                    pool: self,
                    conn: Some(conn),
                    in_transaction: false,
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
        let mut pooled = Pooled {
            pool: self,
            conn: None,
            in_transaction: false,
        };
        pooled.connect()?;
        Ok(pooled)
    }

    /// Gives up one connection slot (its connection is gone).
    fn release_slot(&self) {
        self.lock_state().open -= 1;
        self.freed.notify_one();
    }
}

/// A connection on loan; returned to the pool (or dropped if broken) when it goes out of scope.
/// `conn` is `None` only after its slot was given up (a failed reconnect). `in_transaction`:
/// a transaction was begun and not yet ended; a connection dropped so (a panic in the middle
/// of a transaction) is closed, never handed out again with that transaction open.
struct Pooled<'p> {
    pool: &'p Pool,
    conn: Option<Conn>,
    in_transaction: bool,
}

impl Pooled<'_> {
    fn conn(&mut self) -> Result<&mut Conn> {
        self.conn.as_mut().ok_or_else(|| {
            StoreError::Backend("the database connection was lost and could not be reopened".into())
        })
    }

    /// Opens a connection in this loan's slot (held by the caller); on failure the slot is
    /// given up.
    fn connect(&mut self) -> Result<()> {
        match Conn::open(&self.pool.config) {
            Ok(c) => {
                self.conn = Some(c);
                Ok(())
            }
            Err(e) => {
                self.pool.release_slot();
                Err(StoreError::Backend(format!(
                    "cannot connect to PostgreSQL: {e}"
                )))
            }
        }
    }

    /// Replaces a dead connection with a new one in the same slot.
    fn reconnect(&mut self) -> Result<()> {
        self.conn = None;
        self.connect()
    }

    /// After an error: whether the connection itself is gone (checked with a round trip).
    fn is_dead(&mut self) -> bool {
        self.conn
            .as_mut()
            .is_none_or(|c| c.is_closed() || !c.answers())
    }

    /// Closes a dead connection instead of returning it to the pool.
    fn discard(mut self) {
        if self.conn.take().is_some() {
            self.pool.release_slot();
        }
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut st = self.pool.lock_state();
            if conn.is_closed() || self.in_transaction {
                st.open -= 1;
            } else {
                st.idle.push(conn);
            }
            drop(st);
            self.pool.freed.notify_one();
        }
    }
}

/// A connection on loan as [`Sql`], inside a transaction or not. In a transaction, `BEGIN` is
/// not sent on its own: it waits in `begin` and goes out in the same round trip as the first
/// statement (pipelined: the server runs them in order), which saves one round trip per
/// transaction. On a connection that is idle (the pool holds no other kind: a transaction
/// ends with COMMIT or ROLLBACK, or its connection is dropped) `BEGIN` fails only with the
/// connection itself; then whatever the server ran of the pair was never committed, and the
/// statement is sent again, with `BEGIN`, on a new connection in the same pool slot, as a
/// `BEGIN` sent alone was retried. (Were `BEGIN` to fail on a live connection, the statement
/// behind it would have run on its own; the caller gets the error either way.)
struct Db<'a, 'p> {
    conn: &'a mut Pooled<'p>,
    begin: Option<&'static str>,
}

/// Whether `sql` is a plain `SELECT` (row locks and sequence numbers aside, it changes no
/// data): the only kind of statement sent in the same round trip as its transaction's `BEGIN`.
fn writes_nothing(sql: &str) -> bool {
    let head = sql.trim_start().get(..7).unwrap_or_default();
    head.eq_ignore_ascii_case("SELECT ")
}

/// What a statement returns: its rows, or how many rows it changed.
enum Out {
    Rows(Vec<PgRow>),
    Count(u64),
}

impl Db<'_, '_> {
    /// Runs one prepared statement (prepared first if this connection has not seen `sql`),
    /// behind the pending `BEGIN` if there is one. The outer error: no connection to run it
    /// on; the inner one: the statement's own.
    fn run(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        rows: bool,
    ) -> Result<std::result::Result<Out, PgError>> {
        let mut reconnects = 0;
        loop {
            let conn = self.conn.conn()?;
            let statement = match conn.statement(sql) {
                Ok(s) => s,
                // Dead before the transaction began: as below.
                Err(_)
                    if self.begin.is_some() && conn.is_closed() && reconnects < MAX_CONNECTIONS =>
                {
                    reconnects += 1;
                    self.conn.reconnect()?;
                    continue;
                }
                Err(e) => return Ok(Err(e)),
            };
            let Conn { rt, client, io, .. } = conn;
            let client = &*client;
            let call = async {
                if rows {
                    client.query(&statement, params).await.map(Out::Rows)
                } else {
                    client.execute(&statement, params).await.map(Out::Count)
                }
            };
            let Some(begin) = self.begin else {
                return Ok(drive(rt, io, call));
            };
            // `BEGIN` and the statement are separate protocol messages: were `BEGIN` to fail on
            // a live connection, the statement sent with it would run outside any transaction,
            // committed on its own. Only a statement that writes nothing travels with it; a
            // transaction that starts with a write sends `BEGIN` alone first.
            let ran = if writes_nothing(sql) {
                let (began, out) = drive(rt, io, async {
                    tokio::join!(client.batch_execute(begin), call)
                });
                began.map(|()| out)
            } else {
                drive(rt, io, client.batch_execute(begin)).map(|()| drive(rt, io, call))
            };
            match ran {
                Ok(out) => {
                    self.begin = None;
                    self.conn.in_transaction = true;
                    return Ok(out);
                }
                // The connection was gone before the server answered BEGIN: whatever it ran
                // of BEGIN and the statement was never committed.
                Err(_) if (io.is_none() || client.is_closed()) && reconnects < MAX_CONNECTIONS => {
                    reconnects += 1;
                    self.conn.reconnect()?;
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    fn rows(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<PgRow>> {
        match self.run(sql, params, true)?? {
            Out::Rows(r) => Ok(r),
            Out::Count(_) => unreachable!("a query returns rows"),
        }
    }

    fn count(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        match self.run(sql, params, false)?.map_err(classify)? {
            Out::Count(n) => Ok(n),
            Out::Rows(_) => unreachable!("an execute returns a count"),
        }
    }

    fn row_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<PgRow>> {
        let mut rows = self.rows(sql, params)?;
        if rows.len() > 1 {
            return Err(StoreError::Backend(format!(
                "expected at most one row, got {}",
                rows.len()
            )));
        }
        Ok(rows.pop())
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(v) => v.to_sql(ty, out),
            Value::Bytes(v) => v.to_sql(ty, out),
            Value::Bool(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn column(r: &PgRow, i: usize) -> Result<Value> {
    let ty = r.columns()[i].type_();
    Ok(if *ty == Type::INT8 {
        r.try_get::<_, Option<i64>>(i)?
            .map_or(Value::Null, Value::Int)
    } else if *ty == Type::INT4 {
        r.try_get::<_, Option<i32>>(i)?
            .map_or(Value::Null, |v| Value::Int(v.into()))
    } else if *ty == Type::BOOL {
        r.try_get::<_, Option<bool>>(i)?
            .map_or(Value::Null, Value::Bool)
    } else if *ty == Type::BYTEA {
        r.try_get::<_, Option<Vec<u8>>>(i)?
            .map_or(Value::Null, Value::Bytes)
    } else {
        r.try_get::<_, Option<String>>(i)?
            .map_or(Value::Null, Value::Text)
    })
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Sql for Db<'_, '_> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.rows(sql, &refs(params))?
            .iter()
            .map(|r| {
                Ok(Row((0..r.len())
                    .map(|i| column(r, i))
                    .collect::<Result<_>>()?))
            })
            .collect()
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        self.count(sql, &refs(params))
    }

    fn for_update(&self) -> &'static str {
        " FOR UPDATE"
    }

    fn contains(&self, column: &str, param: &str) -> String {
        format!("strpos({column}, {param}) > 0")
    }

    fn next_audit_seq(&mut self) -> Result<i64> {
        match self.row_opt("SELECT nextval('audit_seq')", &[])? {
            Some(r) => Ok(r.try_get(0)?),
            None => Err(StoreError::Backend("nextval returned no row".into())),
        }
    }

    /// The head row is locked before the outer query takes a position from the sequence (a
    /// materialized CTE yields its row only once it is locked), as [`Sql::next_audit_seq`]
    /// requires.
    fn lock_audit_head(&mut self, chain: &str) -> Result<Option<(i64, String, i64)>> {
        let r = self.row_opt(
            "WITH h AS MATERIALIZED (SELECT seq, hash FROM audit_heads WHERE chain = $1 FOR UPDATE) \
             SELECT seq, hash, nextval('audit_seq') FROM h",
            &[&chain],
        )?;
        match r {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))),
            None => Ok(None),
        }
    }

    fn execute_then(&mut self, first: &str, then: &str, params: &[Value]) -> Result<(), DbError> {
        self.count(&format!("WITH first AS ({first}) {then}"), &refs(params))?;
        Ok(())
    }

    fn audit_seq_at_least(&mut self, seq: i64) -> Result<()> {
        self.count(
            "SELECT setval('audit_seq', GREATEST($1, (SELECT last_value FROM audit_seq)))",
            &[&seq],
        )?;
        Ok(())
    }

    /// Before the first statement, the pending `BEGIN` itself becomes the snapshot's.
    fn snapshot(&mut self) -> Result<()> {
        if self.begin.is_some() {
            self.begin = Some("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
            return Ok(());
        }
        self.count(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            &[],
        )?;
        Ok(())
    }

    fn lock_user_mints(&mut self, user: &str) -> Result<()> {
        self.count(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&USER_MINT_LOCK_CLASS, &user],
        )?;
        Ok(())
    }

    /// At most one round trip for the lookup and one for the insert, whatever the number of
    /// chunks; a chunk not compressed beforehand is compressed only if it is missing. Only
    /// those are looked up: a chunk compressed beforehand was missing then and is inserted as
    /// it is (`ON CONFLICT DO NOTHING` if another write stored it since), so a typical small
    /// write, whose one chunk is new, inserts without a lookup.
    fn put_chunks(
        &mut self,
        chunks: &[blob::Chunk<'_>],
        compressed: &[Option<Vec<u8>>],
    ) -> Result<()> {
        let unknown: Vec<blob::Chunk<'_>> = chunks
            .iter()
            .zip(compressed)
            .filter(|(_, z)| z.is_none())
            .map(|(c, _)| blob::Chunk {
                hash: c.hash,
                raw: c.raw,
            })
            .collect();
        let present = if unknown.is_empty() {
            HashSet::new()
        } else {
            self.present_chunks(&unknown)?
        };
        let (mut hashes, mut data, mut raw_lens) = (Vec::new(), Vec::new(), Vec::new());
        let mut done = HashSet::new();
        for (c, z) in chunks.iter().zip(compressed) {
            if present.contains(&c.hash) || !done.insert(c.hash) {
                continue;
            }
            hashes.push(&c.hash[..]);
            data.push(match z {
                Some(z) => Cow::Borrowed(&z[..]),
                None => Cow::Owned(blob::compress(c.raw)),
            });
            raw_lens.push(c.raw.len() as i64);
        }
        if hashes.is_empty() {
            return Ok(());
        }
        let data: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
        self.count("INSERT INTO chunks (hash, data, raw_len) SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::bigint[]) ON CONFLICT DO NOTHING", &[&hashes, &data, &raw_lens])?;
        Ok(())
    }

    /// One round trip, whatever the number of chunks.
    fn present_chunks(&mut self, chunks: &[blob::Chunk<'_>]) -> Result<HashSet<[u8; 32]>> {
        let hashes: Vec<&[u8]> = chunks
            .iter()
            .map(|c| &c.hash[..])
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut present = HashSet::new();
        for r in self.rows("SELECT hash FROM chunks WHERE hash = ANY($1)", &[&hashes])? {
            let h: Vec<u8> = r.try_get(0)?;
            if let Ok(h) = <[u8; 32]>::try_from(h) {
                present.insert(h);
            }
        }
        Ok(present)
    }

    /// One round trip for all the chunks of a version.
    fn load_chunks(&mut self, hashes: &[[u8; 32]]) -> Result<crate::sql::StoredChunks> {
        let wanted: Vec<&[u8]> = hashes
            .iter()
            .map(|h| &h[..])
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut stored = HashMap::with_capacity(wanted.len());
        for r in self.rows(
            "SELECT hash, data, raw_len FROM chunks WHERE hash = ANY($1)",
            &[&wanted],
        )? {
            stored.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
        }
        Ok(stored)
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`) and applies pending
    /// migrations.
    pub fn open(url: &str) -> Result<PostgresStore> {
        // The parser's message never repeats the URL, which may hold a password.
        let config: Config = url.parse().map_err(|e: PgError| {
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
            recent: Default::default(),
        };
        let mut pooled = store.pool.get()?;
        let conn = pooled.conn()?;
        drive(&conn.rt, &mut conn.io, migrate(&mut conn.client))?;
        drop(pooled);
        Ok(store)
    }

    /// Runs `f` outside a transaction (one statement is one snapshot).
    fn read_with<T>(&self, mut f: impl FnMut(&mut dyn Sql) -> Result<T>) -> Result<T> {
        let mut retries = 0;
        loop {
            let mut pooled = self.pool.get()?;
            match f(&mut Db {
                conn: &mut pooled,
                begin: None,
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
    /// committed before the lock was granted. A connection that died while idle is replaced
    /// before anything of the transaction ran (see [`Db`]); once `BEGIN` succeeded, a lost
    /// connection is an error for the caller: the server rolls the transaction back, except
    /// when COMMIT itself was in flight, whose outcome only a re-read can tell.
    fn write_with<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut dyn Sql) -> Result<T>,
    {
        let mut pooled = self.pool.get()?;
        let mut db = Db {
            conn: &mut pooled,
            begin: Some("BEGIN"),
        };
        let out = f(&mut db);
        if db.begin.is_some() {
            // `f` sent no statement, so no transaction was begun.
            return out;
        }
        let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = pooled
            .conn()
            .and_then(|c| c.simple(end).map_err(StoreError::from));
        // COMMIT and ROLLBACK end the transaction even when they fail (a lost connection is
        // closed and not reused).
        pooled.in_transaction = false;
        match (out, ended) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            // A connection that could not roll back is not handed out again.
            (Err(e), Err(_)) => {
                pooled.discard();
                Err(e)
            }
        }
    }
}

async fn migrate(client: &mut tokio_postgres::Client) -> Result<()> {
    let tx = client.transaction().await?;
    // Replicas starting together: the first applies the migrations, the others wait here and
    // then find them applied.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)").await?;
    for (version, sql) in MIGRATIONS {
        let done: bool = tx
            .query_one(
                "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE version = $1)",
                &[version],
            )
            .await?
            .try_get(0)?;
        if !done {
            tx.batch_execute(sql).await?;
            if *version == crate::core::MINTERS_MIGRATION {
                fill_minters(&tx).await?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &now_ms()],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Migration 0019's fill of `tokens.minted_by` (see `core::minted_by_backfill`).
async fn fill_minters(tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
    let tokens = tx
        .query("SELECT id, created_by FROM tokens", &[])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<std::result::Result<Vec<(String, String)>, PgError>>()?;
    for (id, minter) in crate::core::minted_by_backfill(&tokens) {
        tx.execute(
            "UPDATE tokens SET minted_by = $2 WHERE id = $1",
            &[&id, &minter],
        )
        .await?;
    }
    Ok(())
}

impl Engine for PostgresStore {
    const NAME: &'static str = "postgres";

    fn recent_bodies(&self) -> &blob::RecentBodies {
        &self.recent
    }

    fn read<T, F: FnMut(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        crate::in_place::refuse_if_active("a round trip to PostgreSQL")?;
        self.read_with(f)
    }

    fn write<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        crate::in_place::refuse_if_active("a round trip to PostgreSQL")?;
        self.write_with(f)
    }

    fn read_snapshot<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        crate::in_place::refuse_if_active("a round trip to PostgreSQL")?;
        self.write_with(|db| {
            db.snapshot()?;
            f(db)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a plain read rides with `BEGIN`: a write sent with it would commit on its own were
    /// `BEGIN` to fail.
    #[test]
    fn only_reads_travel_with_begin() {
        for read in [
            "SELECT id FROM stacks WHERE name = $1 FOR UPDATE",
            "  select 1",
        ] {
            assert!(writes_nothing(read), "{read}");
        }
        for write in [
            "INSERT INTO tokens VALUES ($1)",
            "UPDATE stacks SET archived_at = $1",
            "DELETE FROM locks WHERE stack_id = $1 RETURNING info",
            "WITH moved AS (UPDATE audit_head SET seq = seq + 1 RETURNING seq) SELECT seq FROM moved",
            "SELECTx",
            "",
        ] {
            assert!(!writes_nothing(write), "{write}");
        }
    }

    fn database_url() -> String {
        std::env::var("AIRLOCK_TEST_DATABASE_URL")
            .expect("AIRLOCK_TEST_DATABASE_URL is not set: run under scripts/with-postgres.sh")
    }

    /// In place (`crate::in_place`), every call is refused before it reaches the database: each
    /// is a round trip, which a caller's thread must not wait for.
    #[test]
    fn calls_in_place_are_refused_before_a_round_trip() {
        let store = PostgresStore::connect(database_url().parse().unwrap()).unwrap();
        assert!(crate::in_place::run(|| store.read(|db| db.query("SELECT 1", &[]))).is_none());
        assert!(crate::in_place::run(|| store.write(|db| db.query("SELECT 1", &[]))).is_none());
        assert!(crate::in_place::run(|| {
            store.write_lock_change(|db| db.query("SELECT 1", &[]))
        })
        .is_none());
        assert!(
            crate::in_place::run(|| store.read_snapshot(|db| db.query("SELECT 1", &[]))).is_none()
        );
        assert_eq!(store.read(|db| db.query("SELECT 1", &[])).unwrap().len(), 1);
    }

    /// A panic in the middle of a transaction (a bug in a store call, caught by the server's
    /// task) must not hand the connection out again with that transaction open: the next
    /// caller's pipelined BEGIN would only warn, and its COMMIT would commit the half-done work.
    #[test]
    fn a_transaction_cut_short_by_a_panic_is_not_left_open_in_the_pool() {
        let url = database_url();
        let app = format!("airlock-panic-test-{}", std::process::id());
        let mut config: Config = url.parse().unwrap();
        config.application_name(&app);
        let store = PostgresStore::connect(config).unwrap();
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write_with(|db| {
                db.execute("SELECT pg_advisory_xact_lock(4242)", &[])?;
                panic!("a bug in the middle of a transaction");
                #[allow(unreachable_code)]
                Ok(())
            })
        }));
        assert!(cut.is_err());
        let mut admin = ::postgres::Client::connect(&url, NoTls).unwrap();
        let open: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
                &[&app],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            open, 0,
            "a connection of the pool was left inside the cut transaction"
        );
        // The store goes on, on a fresh connection.
        let n: Vec<Row> = store
            .write_with(|db| db.query("SELECT pg_try_advisory_xact_lock(4242)", &[]))
            .unwrap();
        assert!(
            n[0].bool(0).unwrap(),
            "the cut transaction's lock is still held"
        );
    }
}
