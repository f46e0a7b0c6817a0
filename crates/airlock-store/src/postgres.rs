//! The PostgreSQL engine, for several `airlock server` replicas sharing one database. Nothing is
//! held in memory between calls: every stack-mutating transaction starts by locking the stack's
//! row (`SELECT ... FOR UPDATE`) and every audit append locks its chain's head row, so locks,
//! state writes and the audit hash chains stay linearizable across processes.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::postgres::error::SqlState;
use ::postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use ::postgres::{Client, Config, GenericClient, NoTls, Statement};
use bytes::BytesMut;

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
/// Only a unique violation is a duplicate; a foreign-key violation names a missing parent.
fn classify(e: ::postgres::Error) -> DbError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => DbError::Unique,
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => DbError::ForeignKey,
        _ => DbError::Other(e.into()),
    }
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
/// A client or transaction plus the connection's prepared-statement cache, as [`Sql`].
struct Db<'a, C: GenericClient> {
    c: &'a mut C,
    statements: &'a mut HashMap<String, Statement>,
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

fn column(r: &::postgres::Row, i: usize) -> Result<Value> {
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

impl<C: GenericClient> Db<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl<C: GenericClient> Sql for Db<'_, C> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let s = self.statement(sql)?;
        self.c
            .query(&s, &refs(params))?
            .iter()
            .map(|r| {
                Ok(Row((0..r.len())
                    .map(|i| column(r, i))
                    .collect::<Result<_>>()?))
            })
            .collect()
    }

    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let s = self.statement(sql)?;
        self.c.execute(&s, &refs(params)).map_err(classify)
    }

    fn for_update(&self) -> &'static str {
        " FOR UPDATE"
    }

    fn contains(&self, column: &str, param: &str) -> String {
        format!("strpos({column}, {param}) > 0")
    }

    fn next_audit_seq(&mut self) -> Result<i64> {
        let s = self.statement("SELECT nextval('audit_seq')")?;
        Ok(self.c.query_one(&s, &[])?.try_get(0)?)
    }

    /// The head row is locked before the outer query takes a position from the sequence (a
    /// materialized CTE yields its row only once it is locked), as [`Sql::next_audit_seq`]
    /// requires.
    fn lock_audit_head(&mut self, chain: &str) -> Result<Option<(i64, String, i64)>> {
        let s = self.statement(
            "WITH h AS MATERIALIZED (SELECT seq, hash FROM audit_heads WHERE chain = $1 FOR UPDATE) \
             SELECT seq, hash, nextval('audit_seq') FROM h",
        )?;
        match self.c.query_opt(&s, &[&chain])? {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))),
            None => Ok(None),
        }
    }

    fn execute_then(&mut self, first: &str, then: &str, params: &[Value]) -> Result<(), DbError> {
        let s = self.statement(&format!("WITH first AS ({first}) {then}"))?;
        self.c.execute(&s, &refs(params)).map_err(classify)?;
        Ok(())
    }

    fn audit_seq_at_least(&mut self, seq: i64) -> Result<()> {
        self.c.execute(
            "SELECT setval('audit_seq', GREATEST($1, (SELECT last_value FROM audit_seq)))",
            &[&seq],
        )?;
        Ok(())
    }

    fn snapshot(&mut self) -> Result<()> {
        self.c
            .batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        Ok(())
    }

    fn lock_user_mints(&mut self, user: &str) -> Result<()> {
        self.c.execute(
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
        let insert = self.statement("INSERT INTO chunks (hash, data, raw_len) SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::bigint[]) ON CONFLICT DO NOTHING")?;
        self.c.execute(&insert, &[&hashes, &data, &raw_lens])?;
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
        let lookup = self.statement("SELECT hash FROM chunks WHERE hash = ANY($1)")?;
        let mut present = HashSet::new();
        for r in self.c.query(&lookup, &[&hashes])? {
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
        let s = self.statement("SELECT hash, data, raw_len FROM chunks WHERE hash = ANY($1)")?;
        for r in self.c.query(&s, &[&wanted])? {
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
            recent: Default::default(),
        };
        let mut conn = store.pool.get()?;
        migrate(&mut conn.conn().client)?;
        drop(conn);
        Ok(store)
    }

    /// Runs `f` outside a transaction (one statement is one snapshot).
    fn read_with<T>(&self, mut f: impl FnMut(&mut dyn Sql) -> Result<T>) -> Result<T> {
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
    fn write_with<T, F>(&self, mut f: F) -> Result<T>
    where
        F: FnOnce(&mut dyn Sql) -> Result<T>,
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
    F: FnOnce(&mut dyn Sql) -> Result<T>,
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

impl Engine for PostgresStore {
    const NAME: &'static str = "postgres";

    fn recent_bodies(&self) -> &blob::RecentBodies {
        &self.recent
    }

    fn read<T, F: FnMut(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        self.read_with(f)
    }

    fn write<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        self.write_with(f)
    }

    fn read_snapshot<T, F: FnOnce(&mut dyn Sql) -> Result<T>>(&self, f: F) -> Result<T> {
        self.write_with(|db| {
            db.snapshot()?;
            f(db)
        })
    }
}
