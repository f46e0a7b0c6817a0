//! The small SQL surface both engines implement, so the store's invariants are written once
//! (in `core`) against it. An engine supplies only what differs between databases: running a
//! statement, classifying its errors, locking statements, and bulk chunk I/O. SQL is written
//! once with `$N` placeholders (SQLite's engine rewrites them to `?N`) and types kept to
//! BIGINT, TEXT, BYTEA/BLOB and BOOLEAN, which map the same way on both.

use crate::{Result, StoreError};

/// One parameter or column value.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value::Bytes(v.to_vec())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        v.as_deref().into()
    }
}
impl From<&Option<i64>> for Value {
    fn from(v: &Option<i64>) -> Self {
        (*v).into()
    }
}

/// Builds a parameter list: `params![a, b]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::sql::Value::from($v)),*] };
}
pub(crate) use params;

/// One result row.
pub struct Row(pub Vec<Value>);

fn wrong(i: usize, want: &str, got: &Value) -> StoreError {
    StoreError::Backend(format!("column {i}: expected {want}, found {got:?}"))
}

impl Row {
    fn at(&self, i: usize) -> Result<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| StoreError::Backend(format!("no column {i}")))
    }
    pub fn i64(&self, i: usize) -> Result<i64> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            v => Err(wrong(i, "an integer", v)),
        }
    }
    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.i64(i).map(Some),
        }
    }
    pub fn text(&self, i: usize) -> Result<String> {
        match self.at(i)? {
            Value::Text(v) => Ok(v.clone()),
            v => Err(wrong(i, "text", v)),
        }
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
    pub fn bytes(&self, i: usize) -> Result<Vec<u8>> {
        match self.at(i)? {
            Value::Bytes(v) => Ok(v.clone()),
            v => Err(wrong(i, "bytes", v)),
        }
    }
    /// SQLite stores booleans as integers.
    pub fn bool(&self, i: usize) -> Result<bool> {
        match self.at(i)? {
            Value::Bool(v) => Ok(*v),
            Value::Int(v) => Ok(*v != 0),
            v => Err(wrong(i, "a boolean", v)),
        }
    }
}

/// A failed statement, classified the same way on both engines: only a unique (or primary
/// key) violation is a duplicate; a foreign-key violation names a missing parent; anything
/// else (NOT NULL, CHECK, an immutability trigger, I/O) is a database error.
#[derive(Debug)]
pub enum DbError {
    Unique,
    ForeignKey,
    Other(StoreError),
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unique => StoreError::Backend("unexpected unique violation".into()),
            DbError::ForeignKey => StoreError::Backend("unexpected foreign-key violation".into()),
            DbError::Other(e) => e,
        }
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        DbError::Other(e)
    }
}

/// Maps a unique violation to `Conflict` with `what`; anything else as [`DbError`] says.
pub fn unique_is_conflict(e: DbError, what: impl FnOnce() -> String) -> StoreError {
    match e {
        DbError::Unique => StoreError::Conflict(what()),
        e => e.into(),
    }
}

/// Stored chunks by hash: (compressed data, raw length).
pub type StoredChunks = std::collections::HashMap<Vec<u8>, (Vec<u8>, i64)>;

/// A connection or transaction of one engine.
pub trait Sql {
    /// Runs a query and returns every row.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Runs a statement and returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError>;

    /// Text appended to a `SELECT` of the row a transaction is about to change, to lock it
    /// (`FOR UPDATE` on PostgreSQL; empty on SQLite, whose single writer serializes anyway).
    fn for_update(&self) -> &'static str;
    /// A condition true when text column `column` contains parameter `param` (`$N`) as plain
    /// text, case-sensitively (`instr` on SQLite, `strpos` on PostgreSQL).
    fn contains(&self, column: &str, param: &str) -> String;
    /// The next global audit position: a sequence on PostgreSQL (so appends to different
    /// chains need not take turns; a rolled-back transaction leaves a gap), one past the last
    /// record on SQLite (whose single writer serializes appends anyway).
    fn next_audit_seq(&mut self) -> Result<i64>;
    /// After an import of a record at `seq`: later positions come after it.
    fn audit_seq_at_least(&mut self, seq: i64) -> Result<()>;
    /// Makes the rest of this transaction read one snapshot (its first statement; see
    /// `Engine::read_snapshot`, which SQLite implements with a read transaction instead).
    fn snapshot(&mut self) -> Result<()>;
    /// Serializes one user's token mints until commit, so a mint limit counted in the
    /// database holds across replicas (a no-op on SQLite's single writer).
    fn lock_user_mints(&mut self, user: &str) -> Result<()>;
    /// While `on`, content this connection deletes or frees is overwritten with zeros where
    /// the engine can (SQLite's `secure_delete`), so a purged binary plan does not stay in the
    /// database file's free pages; PostgreSQL leaves dead rows to VACUUM (a no-op there).
    fn erase_freed(&mut self, _on: bool) -> Result<()> {
        Ok(())
    }

    /// Locks audit chain `chain`'s head row until commit and returns its (position, hash) and
    /// the next global audit position ([`Sql::next_audit_seq`], taken after the lock); `None`
    /// when the chain has no head row yet. PostgreSQL answers in one round trip.
    fn lock_audit_head(&mut self, chain: &str) -> Result<Option<(i64, String, i64)>> {
        let sql = format!(
            "SELECT seq, hash FROM audit_heads WHERE chain = $1{}",
            self.for_update()
        );
        let Some(r) = self.query_opt(&sql, params![chain])? else {
            return Ok(None);
        };
        let head = (r.i64(0)?, r.text(1)?);
        Ok(Some((head.0, head.1, self.next_audit_seq()?)))
    }

    /// Runs statement `first`, then `then`, with the same parameters (each uses those it
    /// names). `then` must not depend on what `first` changed: PostgreSQL runs both as one
    /// statement (`WITH first AS (...) then`), in one snapshot and one round trip.
    fn execute_then(&mut self, first: &str, then: &str, params: &[Value]) -> Result<(), DbError> {
        self.execute(first, params)?;
        self.execute(then, params)?;
        Ok(())
    }

    /// Runs a query expected to return at most one row.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Stores content chunks that are not stored yet. `compressed[i]` is chunk `i` already
    /// compressed, or `None` when it was stored when the write was prepared: such a chunk is
    /// compressed here only if it is missing after all, so a chunk is compressed at most once
    /// and only when it is new.
    fn put_chunks(
        &mut self,
        chunks: &[crate::blob::Chunk<'_>],
        compressed: &[Option<Vec<u8>>],
    ) -> Result<()> {
        let present = self.present_chunks(chunks)?;
        let mut done = std::collections::HashSet::new();
        for (c, z) in chunks.iter().zip(compressed) {
            if present.contains(&c.hash) || !done.insert(c.hash) {
                continue;
            }
            let data = match z {
                Some(z) => z.clone(),
                None => crate::blob::compress(c.raw),
            };
            self.execute(
                "INSERT INTO chunks (hash, data, raw_len) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                params![&c.hash[..], data, c.raw.len() as i64],
            )?;
        }
        Ok(())
    }

    /// Which of these chunks are stored already.
    fn present_chunks(
        &mut self,
        chunks: &[crate::blob::Chunk<'_>],
    ) -> Result<std::collections::HashSet<[u8; 32]>> {
        let mut out = std::collections::HashSet::new();
        for c in chunks {
            if !out.contains(&c.hash)
                && self
                    .query_opt("SELECT 1 FROM chunks WHERE hash = $1", params![&c.hash[..]])?
                    .is_some()
            {
                out.insert(c.hash);
            }
        }
        Ok(out)
    }

    /// The stored (compressed data, raw length) of each distinct chunk hash that exists.
    fn load_chunks(&mut self, hashes: &[[u8; 32]]) -> Result<StoredChunks> {
        let mut out = std::collections::HashMap::with_capacity(hashes.len());
        for h in hashes {
            if out.contains_key(&h[..]) {
                continue;
            }
            if let Some(r) = self.query_opt(
                "SELECT data, raw_len FROM chunks WHERE hash = $1",
                params![&h[..]],
            )? {
                out.insert(h.to_vec(), (r.bytes(0)?, r.i64(1)?));
            }
        }
        Ok(out)
    }
}
