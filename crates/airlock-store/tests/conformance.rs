//! Runs the store conformance suite against every engine.

use std::sync::Arc;

use airlock_store::{conformance, SqliteStore, Store};

#[test]
fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("airlock.db")).unwrap());
    conformance::run_all(&store);
}

#[test]
fn sqlite_history_is_immutable_in_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    conformance::writes_and_history(store.as_ref());
    conformance::runs(store.as_ref());
    let conn = rusqlite::Connection::open(&path).unwrap();
    for sql in [
        "DELETE FROM versions",
        "UPDATE versions SET serial = 99",
        "DELETE FROM audit",
        "UPDATE audit SET actor = 'x'",
        "DELETE FROM run_artifacts",
        "UPDATE run_artifacts SET data = x'00'",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("immutable"), "{sql}: {err}");
    }
}

// ---- PostgreSQL ----
//
// These need a server: run them through `scripts/with-postgres.sh`, which starts a throwaway
// PostgreSQL 15 cluster (or passes AIRLOCK_TEST_DATABASE_URL through). Without one they fail:
// a skipped engine would look like a passing one.

use airlock_store::PostgresStore;

fn database_url() -> String {
    match std::env::var("AIRLOCK_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "AIRLOCK_TEST_DATABASE_URL is not set: the PostgreSQL tests need a database. Run them through \
             scripts/with-postgres.sh (e.g. `scripts/with-postgres.sh cargo test -p airlock-store`), which starts a \
             throwaway PostgreSQL 15 cluster, or set AIRLOCK_TEST_DATABASE_URL to a database you may create databases from"
        ),
    }
}

/// The URL with its database name replaced.
fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    format!("{}/{db}{query}", &base[..path])
}

/// A fresh database per test, created from the given URL and dropped when the test ends.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    fn new(test: &str) -> TestDatabase {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let admin_url = database_url();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("airlock_t_{test}_{}_{n}_{nanos}", std::process::id());
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to AIRLOCK_TEST_DATABASE_URL: {e}"));
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .unwrap();
        let url = with_dbname(&admin_url, &name);
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls).unwrap()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ));
        }
    }
}

#[test]
fn postgres_url_rewrite_keeps_everything_but_the_database() {
    assert_eq!(
        with_dbname("postgres://u:p@127.0.0.1:5432/base", "x"),
        "postgres://u:p@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_dbname("postgresql://u@h:1/base?sslmode=disable", "x"),
        "postgresql://u@h:1/x?sslmode=disable"
    );
    assert_eq!(with_dbname("postgres://u@h:1", "x"), "postgres://u@h:1/x");
}

#[test]
fn postgres_conforms() {
    let db = TestDatabase::new("conforms");
    // Through `open`, as the server does: the URL scheme picks the engine.
    assert_eq!(airlock_store::open(&db.url).unwrap().engine(), "postgres");
    conformance::run_all(&Arc::new(PostgresStore::open(&db.url).unwrap()));
}

#[test]
fn postgres_replicas_share_locks_writes_and_audit() {
    let db = TestDatabase::new("replicas");
    let a: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    let b: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::run_replicas(&a, &b);
}

#[test]
fn postgres_replicas_migrate_at_once() {
    let db = TestDatabase::new("migrate");
    let stores: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || PostgresStore::open(&url).map(|_| ()))
        })
        .collect();
    for s in stores {
        s.join().unwrap().unwrap();
    }
    // Reopening applies nothing twice.
    PostgresStore::open(&db.url).unwrap();
    let rows = db
        .client()
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 14, 15, 16, 17]
    );
}

#[test]
fn postgres_history_is_immutable_in_the_schema() {
    let db = TestDatabase::new("immutable");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::writes_and_history(store.as_ref());
    conformance::runs(store.as_ref());
    let mut conn = db.client();
    for sql in [
        "DELETE FROM versions",
        "UPDATE versions SET serial = 99",
        "TRUNCATE versions",
        "DELETE FROM audit",
        "UPDATE audit SET actor = 'x'",
        "TRUNCATE audit",
        "DELETE FROM run_artifacts",
        "UPDATE run_artifacts SET data = '\\x00'",
        "TRUNCATE run_artifacts",
        "TRUNCATE runs CASCADE",
    ] {
        let err = conn.batch_execute(sql).unwrap_err();
        let msg = err
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_else(|| err.to_string());
        assert!(msg.contains("immutable"), "{sql}: {msg}");
    }
    assert_eq!(store.versions("conf/writes").unwrap().len(), 2);
    assert!(store
        .run_artifact("run_conf1", "plan.bin")
        .unwrap()
        .is_some());
}

#[test]
fn postgres_bad_url_is_a_clear_error_without_the_password() {
    let err = match airlock_store::open("postgres://user:s3cret@127.0.0.1:1/db?connect_timeout=2") {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    assert!(err.contains("refused"), "the cause is named: {err}");
    assert!(!err.contains("s3cret"), "{err}");
    let err = match airlock_store::open("postgres://user:s3cret@127.0.0.1:notaport/db") {
        Ok(_) => panic!("accepted a bad port"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("invalid PostgreSQL URL"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// Ends every other connection to `db`'s database from the server side, as a restart or
/// failover would (the store's pool held at least two); how many it ended.
fn end_every_connection(db: &TestDatabase) -> usize {
    let mut admin = db.client();
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .len();
    assert!(killed >= 2, "only {killed} connections were open");
    std::thread::sleep(std::time::Duration::from_millis(200));
    killed
}

#[test]
fn postgres_survives_connections_dropped_by_the_server() {
    let db = TestDatabase::new("reconnect");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::stacks(store.as_ref());
    // Fill the pool with idle connections, then have the server end every one of them, as a
    // restart or failover would.
    conformance::concurrent_locks_have_one_winner(&store);
    end_every_connection(&db);
    // Reads and writes go on, on fresh connections.
    assert!(store.stack("conf/stacks").unwrap().is_some());
    conformance::locks(store.as_ref());
    conformance::writes_and_history(store.as_ref());
}

/// As above, with a write as the first thing after the drop: a transaction sends BEGIN together
/// with its first statement, and a connection found dead there is replaced before anything of
/// the transaction ran, as when BEGIN went alone.
#[test]
fn postgres_writes_survive_connections_dropped_by_the_server() {
    let db = TestDatabase::new("reconnect_write");
    let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&db.url).unwrap());
    conformance::concurrent_locks_have_one_winner(&store);
    let killed = end_every_connection(&db);
    // Writes first, each on the next dead connection from the pool, with a statement already
    // prepared there (so the dead connection shows only at BEGIN + statement), then reads.
    for _ in 0..=killed {
        let released = store
            .unlock(
                "conf/race",
                airlock_store::UnlockBy::Force,
                airlock_store::NewAudit::ok(
                    "test",
                    "lock.force_unlock",
                    Some("conf/race"),
                    serde_json::json!({}),
                ),
            )
            .unwrap();
        assert_eq!(released, airlock_store::UnlockOutcome::NotLocked);
    }
    conformance::locks(store.as_ref());
    conformance::writes_and_history(store.as_ref());
    assert!(store.stack("conf/locks").unwrap().is_some());
}

// ---- migration 0003 on a store that already holds tokens ----

/// Tokens as a store before users held them: the bootstrap admin, a revoked agent whose
/// plan-phase token minted another one, and an approver's run-bound token.
fn legacy_tokens_sql(hash: impl Fn(u8) -> String) -> String {
    let rows = [
        (
            "tok_00000000000000a1",
            "bootstrap-admin",
            "admin",
            "system",
            "NULL",
            "NULL",
            "NULL",
        ),
        (
            "tok_00000000000000b2",
            "bot",
            "agent",
            "bootstrap-admin (tok_00000000000000a1)",
            "9000",
            "5000",
            "NULL",
        ),
        (
            "tok_00000000000000c3",
            "plan for bot",
            "agent",
            "bot (tok_00000000000000b2)",
            "20000",
            "NULL",
            "NULL",
        ),
        (
            "tok_00000000000000d4",
            "plan for plan for bot",
            "agent",
            "plan for bot (tok_00000000000000c3)",
            "30000",
            "NULL",
            "NULL",
        ),
        (
            "tok_00000000000000e5",
            "alice",
            "approver",
            "bootstrap-admin (tok_00000000000000a1)",
            "NULL",
            "NULL",
            "NULL",
        ),
        (
            "tok_00000000000000f6",
            "apply run_x",
            "ci",
            "alice (tok_00000000000000e5)",
            "40000",
            "NULL",
            "'run_x'",
        ),
    ];
    rows.iter()
        .enumerate()
        .map(|(i, (id, name, role, by, exp, rev, run))| {
            format!(
                "INSERT INTO tokens (id, secret_hash, name, role, stacks, created_at, expires_at, revoked_at, created_by, run_id) VALUES ('{id}', {}, '{name}', '{role}', '[]', 1000, {exp}, {rev}, '{by}', {run});\n",
                hash(i as u8)
            )
        })
        .collect()
}

fn check_legacy_tokens_migrated(s: &dyn Store) {
    let t = |id: &str| s.token(id).unwrap().unwrap();
    let admin = t("tok_00000000000000a1");
    assert_eq!(
        (admin.user.as_str(), admin.parent_id.as_deref()),
        ("admin", None)
    );
    assert!(s.user("admin").unwrap().is_some());
    assert_eq!(t("tok_00000000000000b2").user, "tok_00000000000000b2");
    for (id, parent) in [
        ("tok_00000000000000c3", "tok_00000000000000b2"),
        ("tok_00000000000000d4", "tok_00000000000000c3"),
    ] {
        let phase = t(id);
        assert_eq!(phase.parent_id.as_deref(), Some(parent), "{id}");
        assert_eq!(
            phase.user, "tok_00000000000000b2",
            "{id} belongs to its root's user"
        );
        assert_eq!(phase.expires_at, Some(9000), "{id} expires with its root");
        assert_eq!(
            phase.revoked_at,
            Some(5000),
            "{id} is revoked with its root"
        );
    }
    assert_eq!(t("tok_00000000000000e5").user, "tok_00000000000000e5");
    let bound = t("tok_00000000000000f6");
    assert_eq!(bound.parent_id.as_deref(), Some("tok_00000000000000e5"));
    assert_eq!(bound.user, "tok_00000000000000e5");
    assert_eq!((bound.expires_at, bound.revoked_at), (Some(40000), None));
}

#[test]
fn sqlite_migration_gives_existing_tokens_users_and_parents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(include_str!("../migrations/sqlite/0001_init.sql"))
        .unwrap();
    conn.execute_batch(include_str!("../migrations/sqlite/0002_runs.sql"))
        .unwrap();
    conn.execute_batch("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL); INSERT INTO schema_migrations VALUES (1, 0), (2, 0);").unwrap();
    conn.execute_batch(&legacy_tokens_sql(|i| {
        format!("X'{}'", format!("{i:02x}").repeat(32))
    }))
    .unwrap();
    drop(conn);
    check_legacy_tokens_migrated(&SqliteStore::open(&path).unwrap());
}

#[test]
fn postgres_migration_gives_existing_tokens_users_and_parents() {
    let db = TestDatabase::new("legacy");
    let mut c = db.client();
    c.batch_execute(include_str!("../migrations/postgres/0001_init.sql"))
        .unwrap();
    c.batch_execute(include_str!("../migrations/postgres/0002_runs.sql"))
        .unwrap();
    c.batch_execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL); INSERT INTO schema_migrations VALUES (1, 0), (2, 0);").unwrap();
    c.batch_execute(&legacy_tokens_sql(|i| {
        format!("'\\x{}'::bytea", format!("{i:02x}").repeat(32))
    }))
    .unwrap();
    drop(c);
    check_legacy_tokens_migrated(&PostgresStore::open(&db.url).unwrap());
}

/// Migration 0014: a database whose chunks are in the table 0001 created (WITHOUT ROWID, data
/// inline) keeps every chunk and every version when it moves them to a rowid table with a
/// unique hash index, and writes (new and already stored chunks) work on the new table.
#[test]
fn sqlite_migration_0014_keeps_every_chunk_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("airlock.db");
    let written = conformance::histories_sharing_chunks(&SqliteStore::open(&path).unwrap());
    // Put the chunks back into the table as 0001 defines it, and forget 0014.
    let init = include_str!("../migrations/sqlite/0001_init.sql");
    let start = init.find("CREATE TABLE chunks (").unwrap();
    let end = start + init[start..].find(';').unwrap() + 1;
    let old_table = init[start..end].replace("CREATE TABLE chunks", "CREATE TABLE chunks_old");
    assert!(old_table.contains("WITHOUT ROWID"), "{old_table}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let chunks = |conn: &rusqlite::Connection| -> Vec<(Vec<u8>, Vec<u8>, i64)> {
        let mut s = conn
            .prepare("SELECT hash, data, raw_len FROM chunks ORDER BY hash")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let before = chunks(&conn);
    assert!(before.len() > 10, "{} chunks", before.len());
    conn.execute_batch(&format!(
        "BEGIN; {old_table} INSERT INTO chunks_old SELECT hash, data, raw_len FROM chunks; \
         DROP TABLE chunks; ALTER TABLE chunks_old RENAME TO chunks; \
         DELETE FROM schema_migrations WHERE version = 14; COMMIT;"
    ))
    .unwrap();
    let schema = |conn: &rusqlite::Connection| -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'chunks'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(schema(&conn).contains("WITHOUT ROWID"));
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert!(
        !schema(&conn).contains("WITHOUT ROWID"),
        "{}",
        schema(&conn)
    );
    assert_eq!(chunks(&conn), before, "every chunk, byte for byte");
    conformance::histories_read_back(&store, &written);
    // One row per hash: the unique index refuses a second.
    let (hash, data, raw_len) = &before[0];
    let err = conn
        .execute(
            "INSERT INTO chunks (hash, data, raw_len) VALUES (?1, ?2, ?3)",
            rusqlite::params![hash, data, raw_len],
        )
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
}
